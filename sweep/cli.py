"""The ``sweep`` command line: one subcommand per thing a user does with a sweep.

Every value is parsed and checked before anything runs (sweep/options.py), and every
error a user can cause is printed as one message with its fix and exit status 2, no
traceback. Modules load lazily: ``sweep --help`` and a usage error import no torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from sweep.options import UsageError, boolean, choice, number, number_list, parse, text

# name -> one-line help, shown by ``sweep --help`` and ``sweep NAME --help``
SUBCOMMANDS = {
    "launch": ("compose the grid with Hydra and run it on Ray: sweep launch [--config-dir DIR] experiment=NAME "
               "store=PATH [key=value ...]"),
    "resume": ("relaunch pending, failed, interrupted and damaged runs: "
               "sweep resume store=PATH [sweep=ID] [cluster.KEY=VALUE ...]"),
    "status": ("counts by state, failures, stuck and damaged runs of one sweep, from the store alone: "
               "sweep status store=PATH [sweep=ID|all] [watch=true] [stale_after=SECONDS]"),
    "check": "verify every file of a store: sweep check store=PATH [repair=true]",
    "export": ("committed snapshot rows as one long-format Parquet file: "
               "sweep export store=PATH out=FILE.parquet [quantity=trace|all] [sweep=ID|all]"),
    "analyze": ("CUSUM calibration, effect sizes and the report: sweep analyze store=PATH|trajectories=FILE out=DIR "
                "[sweep=ID|all] [layer=head|all|NAME] [quantity=trace] [k=0.5] [arl0=1000] [window=[10,20]] [seed=0] "
                "[calibration=auto|iid|serial] [interval=noncentral-t|bca|percentile]"),
    "watch": ("alarms while a sweep trains: calibrate on each configuration's done clean runs, then follow the others "
              "as they commit: sweep watch store=PATH [sweep=ID] [layer=head|NAME] [quantity=trace] [k=0.5] "
              "[arl0=1000] [calibration=auto|iid|serial] [min_clean=N] [interval=5] [timeout=SECONDS] [once=true]"),
    "forget": "drop a sweep and the runs only it holds: sweep forget store=PATH sweep=ID",
    "store": "store maintenance: sweep store migrate store=PATH (rewrite a schema-1 store as schema 2)",
    "run-one": ("train one run in this process into a store: sweep run-one [--config-dir DIR] store=DIR "
                "arch=resnet18 dataset=digits eta=0.25 seed=0 [key=value ...]"),
    "curvature": ("the Hessian spectrum of one stored run at its checkpoint: sweep curvature store=PATH run=RUN_ID "
                  "[layers=head|all|none] [network=true] [k=3] [max_matvecs=64] [steps=64] [num_runs=1] "
                  "[deflate=0] [batch_size=N] [device=cpu] [seed=0] [out=FILE.png]"),
    "data": "download or verify datasets: sweep data download|verify dataset=cifar10 root=DIR [url=URL] [md5=HEX]",
}
# Errors a user can cause, by the module that defines them: a module not yet imported
# cannot have raised its error, so none of them is imported just to be caught.
USER_ERRORS = (("sweep.config", "ConfigError"), ("workers.run_config", "RunConfigError"),
               ("workers.datasets", "DatasetError"), ("workers.models", "ModelError"),
               ("workers.targets", "TargetError"), ("store.files", "StoreError"),
               ("workers.checkpoint", "CheckpointError"), ("analysis.inputs", "AnalysisError"))


def _user_errors() -> tuple[type, ...]:
    return (UsageError, *(getattr(sys.modules[m], n) for m, n in USER_ERRORS if m in sys.modules))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweep",
        description="hessian-sweep: layer-wise Hessian trace monitoring across a distributed training sweep.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("overrides", nargs="*", help="key=value overrides")
    return parser


def _store_name(value: str) -> str:
    return text(value).strip()


def _open(uri: str):
    from store import Store

    return Store.open(uri)


CONFIG_DIR_FLAGS = ("--config-dir", "-cd")  # Hydra's spelling: a folder of one's own presets beside conf/
COMPOSING = ("launch", "run-one")


def _config_dir(argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` without its ``--config-dir DIR`` (also ``-cd DIR``, ``--config-dir=DIR``), and DIR."""
    rest, found = [], None
    words = iter(argv)
    for word in words:
        flag, sep, value = word.partition("=")
        if flag in CONFIG_DIR_FLAGS:
            found = value if sep else next(words, None)
            if not found:
                raise UsageError(f"{flag} needs a folder: {flag} DIR")
        else:
            rest.append(word)
    return rest, found


def launch(overrides: list[str], config_dir: str | None = None) -> int:
    from store import Store
    from sweep.config import config_dir as checked_dir
    from sweep.grid import expand, preflight
    from sweep.launch import drive
    from sweep.ledger import register
    from sweep.lock import locked

    # every run composed and validated before anything is touched
    sweep = expand(overrides, user_dir=checked_dir(config_dir))
    if not sweep.composed.get("store"):
        raise UsageError("sweep launch needs store=PATH (a local folder or s3://bucket/prefix)")
    preflight(sweep)  # the data, the device: what can be checked on this machine
    store = Store.open(sweep.composed["store"], create=True)
    print(f"{sweep.sweep_id}: {len(sweep.runs)} runs into {store.uri}", flush=True)
    with locked(store, out=sys.stdout) as lock:
        for damaged in store.read_manifests()[1]:
            if damaged.raw.endswith(f"/{sweep.sweep_id}.json"):
                store.set_aside([damaged.raw], str(damaged))
                print(f"damaged: {damaged}; set aside, this launch writes it again", flush=True)
            else:
                print(f"note: {damaged}; `sweep resume` rewrites it from its runs", flush=True)
        register(store, sweep, overrides)
        return drive(store, sweep.runs, sweep.composed["cluster"], lock=lock)


def resume(words: list[str]) -> int:
    from sweep.launch import drive
    from sweep.ledger import manifest_runs
    from sweep.lock import locked

    cluster_words = [w for w in words if w.startswith("cluster.")]
    options = parse("resume", [w for w in words if not w.startswith("cluster.")],
                    {"store": _store_name, "sweep": text}, required=("store",))
    store = _open(options["store"])
    with locked(store, out=sys.stdout) as lock:
        runs, cluster, notes = manifest_runs(store, options.get("sweep"))
        for note in notes:
            print(f"note: {note}", flush=True)
        for word in cluster_words:
            key, sep, value = word.partition("=")
            name = key.removeprefix("cluster.")
            if not sep or name not in cluster:
                raise UsageError(f"unknown cluster setting {key}; known: {', '.join(sorted(cluster))}")
            cluster[name] = _cluster_value(name, value, cluster[name])
        return drive(store, runs, cluster, lock=lock)


def _cluster_value(name: str, value: str, current):
    """A cluster.KEY=VALUE of resume, checked against the type of the value it replaces."""
    try:
        if isinstance(current, bool):
            return boolean(value)
        if isinstance(current, int) and name != "gpus_per_run":
            return number(at_least=0, integer=True)(value)
        if isinstance(current, float) or name == "gpus_per_run":
            return number(at_least=0)(value)
        return None if value in ("", "null") else text(value)
    except UsageError as err:
        raise UsageError(f"cluster.{name}={value}: {err}") from None


def status(words: list[str]) -> int:
    from sweep.status import show

    options = parse("status", words, {"store": _store_name, "watch": boolean, "stale_after": number(at_least=0),
                                      "sweep": text}, required=("store",))
    stale_after = options.get("stale_after")
    if stale_after is None:  # the default of conf/cluster, read without composing (status stays quick)
        import yaml

        from sweep.config import CONF_DIR

        stale_after = yaml.safe_load((CONF_DIR / "cluster" / "local.yaml").read_text())["stale_after"]
    return show(_open(options["store"]), stale_after=float(stale_after), watch=options.get("watch", False),
                sweep=options.get("sweep"))


def check(words: list[str]) -> int:
    from sweep.check import check as run_check

    options = parse("check", words, {"store": _store_name, "repair": boolean}, required=("store",))
    return run_check(_open(options["store"]), repair=options.get("repair", False))


def export(words: list[str]) -> int:
    from sweep.check import export as run_export

    options = parse("export", words, {"store": _store_name, "out": text, "quantity": text, "sweep": text},
                    required=("store", "out"))
    return run_export(_open(options["store"]), options["out"], quantity=options.get("quantity", "trace"),
                      sweep=options.get("sweep"))


def forget(words: list[str]) -> int:
    from sweep.check import forget as run_forget

    options = parse("forget", words, {"store": _store_name, "sweep": text}, required=("store", "sweep"))
    return run_forget(_open(options["store"]), options["sweep"])


def store_command(words: list[str]) -> int:
    if not words or words[0] != "migrate":
        raise UsageError("usage: sweep store migrate store=PATH")
    from store.migrate import migrate

    options = parse("store migrate", words[1:], {"store": _store_name}, required=("store",))
    for line in migrate(options["store"]):
        print(line, flush=True)
    return 0


ANALYSIS_OPTIONS = {
    "layer": text, "quantity": text, "k": number(above=0), "arl0": number(above=1),
    "window": number_list(length=2, ascending=True), "bootstrap": number(at_least=100, integer=True),
    "seed": number(at_least=0, integer=True), "sensitivity_k": number_list(above=0),
    "sensitivity_arl0": number_list(above=1), "calibration": choice("auto", "iid", "serial"),
    "interval": choice("noncentral-t", "bca", "percentile"),
}


def analyze(words: list[str]) -> int:
    options = parse("analyze", words, {"store": _store_name, "trajectories": text, "out": text, "sweep": text,
                                       **ANALYSIS_OPTIONS}, required=("out",))
    if ("store" in options) == ("trajectories" in options):
        raise UsageError("sweep analyze needs out=DIR and one of store=PATH or trajectories=FILE")
    if "sweep" in options and "store" not in options:
        raise UsageError("sweep=ID selects a sweep of a store; it needs store=PATH")
    from analysis import inputs, report
    from analysis.analyze import analyze as compute
    from sweep.config import compose_config

    out = report.prepare(options["out"])  # a folder we can write, checked before the work
    settings = {**compose_config([])["analysis"], **{k: v for k, v in options.items() if k in ANALYSIS_OPTIONS}}
    if "store" in options:
        trajectories = inputs.from_store(options["store"], sweep=options.get("sweep"),
                                         quantity=str(settings["quantity"]))
    else:
        trajectories = inputs.from_parquet(options["trajectories"], quantity=str(settings["quantity"]))
    results = compute(
        trajectories, layer=str(settings["layer"]), k=float(settings["k"]), arl0=float(settings["arl0"]),
        window=tuple(settings["window"]), ks=tuple(settings["sensitivity_k"]),
        arl0s=tuple(settings["sensitivity_arl0"]), resamples=int(settings["bootstrap"]), seed=int(settings["seed"]),
        calibration=str(settings["calibration"]), interval=str(settings["interval"]),
    )
    page = report.write(results, out)
    s = results.summary
    if s["quantity"] != "trace":
        print(f"quantity: the {s['quantity_name']} ({s['quantity']})")
    print(report.table1_markdown(results.table1, results.axes))
    for name in ("power", "false_alarm"):
        p = s[name]
        print(f"{name.replace('_', '-')}: {p['count']}/{p['n']} = {p['rate']:.3f} "
              f"(Wilson 95% {p['wilson_low']:.3f}-{p['wilson_high']:.3f})")
    print(f"promised false-alarm probability within a run, P(RL <= {s['snapshots_per_run']}) = "
          f"{s['in_horizon_false_alarm']:.3f} ({', '.join(s['calibration_methods'])} calibration; "
          f"{'inside' if s['in_horizon_within_wilson'] else 'outside'} the Wilson interval above; "
          f"1 - exp(-T/ARL0) = {s['theoretical_false_alarm']:.3f})")
    for note in results.notes:
        print(f"note: {note}")
    print(f"report: {page}")
    return 0


def run_one(overrides: list[str], config_dir: str | None = None) -> int:
    from store import Store
    from sweep.config import compose_config, run_config
    from sweep.config import config_dir as checked_dir
    from sweep.grid import Sweep, preflight
    from sweep.lock import locked
    from workers.run_config import run_id, validate

    composed = compose_config(overrides, user_dir=checked_dir(config_dir))
    if not composed.get("store"):
        raise UsageError("sweep run-one needs store=DIR (a local folder or s3://bucket/prefix)")
    config = validate(run_config(composed))  # before the store is touched
    from workers.train import RunFailed, train

    local = {**composed, "cluster": {**composed["cluster"], "address": None, "check_data": True}}  # runs here
    preflight(Sweep(sweep_id="", runs={run_id(config): config}, composed=local))

    store = Store.open(composed["store"], create=True)
    started = last = time.monotonic()
    print(f"sweep run-one: training {run_id(config)} ({config['train']['epochs']} epochs) into {store.uri}; "
          "progress every 5 s", flush=True)

    def progress(step: int) -> None:
        nonlocal last
        if time.monotonic() - last >= 5:
            last = time.monotonic()
            print(f"  step {step} after {last - started:.0f} s", flush=True)

    with locked(store):  # a store a live sweep is driving is refused
        try:
            summary = train(config, store, on_step=progress)
        except RunFailed as err:
            print(f"sweep run-one: the run failed: {err}\nIts record in {store.uri} says so (`sweep status "
                  f"store={store.uri}`); fix the config and run it again.", file=sys.stderr)
            return 1
    print(json.dumps(summary, indent=2, default=str))
    return 0


def curvature(words: list[str]) -> int:
    options = parse("curvature", words, {
        "store": _store_name, "run": text, "layers": text, "network": boolean, "k": number(at_least=1, integer=True),
        "max_matvecs": number(at_least=2, integer=True), "tol": number(above=0),
        "steps": number(at_least=2, integer=True),
        "num_runs": number(at_least=1, integer=True), "deflate": number(at_least=0, integer=True),
        "batch_size": number(at_least=1, integer=True), "device": text, "seed": number(at_least=0, integer=True),
        "out": text}, required=("store", "run"))
    if options.get("layers", "head") not in ("head", "all", "none"):
        raise UsageError(f"layers={options['layers']} is not one of head, all, none")
    if options.get("layers") == "none" and not options.get("network", True):
        raise UsageError("layers=none with network=false leaves nothing to examine")
    store = _open(options["store"])
    if options["run"] not in store.run_ids():
        raise UsageError(f"no run {options['run']} in {store.uri}; `sweep status store={store.uri}` lists its runs")
    from workers.examine import examine, plot, table

    keys = ("layers", "network", "k", "max_matvecs", "tol", "steps", "num_runs", "deflate", "batch_size", "device",
            "seed")
    examined = examine(store, options["run"], **{key: options[key] for key in keys if key in options})
    print(table(examined))
    if "out" in options:
        plot(examined, options["out"])
        print(f"density: {options['out']}")
    return 0


def data(words: list[str]) -> int:
    if not words or words[0] not in ("download", "verify"):
        raise UsageError("usage: sweep data download|verify dataset=cifar10|cifar100 root=DIR [url=URL] [md5=HEX]")
    action = words[0]
    options = parse(f"data {action}", words[1:], {"dataset": text, "root": text, "url": text, "md5": text},
                    required=("dataset", "root"))
    from workers import datasets

    if action == "download":
        folder = datasets.download(options["dataset"], options["root"], url=options.get("url"),
                                   md5=options.get("md5"))
    else:
        folder = datasets.verify(options["dataset"], options["root"], md5=options.get("md5"))
    print(f"{options['dataset']}: {folder} is complete and its archive matches its MD5")
    return 0


def watch(words: list[str]) -> int:
    from sweep.watch import watch as run_watch

    options = parse("watch", words, {"store": _store_name, "sweep": text, "layer": text, "quantity": text,
                                     "k": number(above=0), "arl0": number(above=1),
                                     "calibration": choice("auto", "iid", "serial"),
                                     "min_clean": number(at_least=3, integer=True), "interval": number(above=0),
                                     "timeout": number(above=0), "once": boolean,
                                     "seed": number(at_least=0, integer=True)},
                    required=("store",))
    return run_watch(_open(options["store"]), sweep=options.get("sweep"), layer=options.get("layer", "head"),
                     quantity=options.get("quantity", "trace"), k=float(options.get("k", 0.5)),
                     arl0=float(options.get("arl0", 1000)), calibration=options.get("calibration", "auto"),
                     min_clean=options.get("min_clean"), interval=float(options.get("interval", 5.0)),
                     timeout=options.get("timeout"), once=options.get("once", False), seed=options.get("seed", 0))


COMMANDS = {"launch": launch, "resume": resume, "status": status, "check": check, "export": export,
            "analyze": analyze, "watch": watch, "forget": forget, "store": store_command, "run-one": run_one,
            "curvature": curvature, "data": data}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        argv, config_dir = _config_dir(list(sys.argv[1:] if argv is None else argv))
    except UsageError as err:
        print(f"sweep: error: {err}", file=sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or argparse's own usage message (2)
        return int(exit_.code or 0)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if config_dir is not None and args.command not in COMPOSING:
            raise UsageError(f"--config-dir applies to {' and '.join(COMPOSING)}, which compose a config; "
                             f"sweep {args.command} reads the store")
        extra = {"config_dir": config_dir} if args.command in COMPOSING else {}
        return COMMANDS[args.command](args.overrides, **extra)
    except KeyboardInterrupt:
        print(f"sweep {args.command}: interrupted; what was committed is kept (`sweep resume` continues)",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # `sweep status ... | head`: the reader left; nothing went wrong here
        sys.stderr.close()
        return 0
    except Exception as err:  # noqa: BLE001 - the one place that turns errors into messages
        if isinstance(err, _user_errors()):
            print(f"sweep {args.command}: error: {err}", file=sys.stderr)
            return 2
        if os.environ.get("SWEEP_DEBUG"):
            raise
        print(f"sweep {args.command}: internal error: {type(err).__name__}: {err}\nThis is a bug in hessian-sweep; "
              "SWEEP_DEBUG=1 shows its traceback.", file=sys.stderr)
        return 70
