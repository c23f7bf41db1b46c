"""The ``sweep`` command line: one subcommand per thing a user does with a sweep.

Every error a user can cause is printed as one message with its fix, no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from analysis.inputs import AnalysisError
from sweep.config import ConfigError, compose_config, run_config
from workers.checkpoint import CheckpointError
from workers.datasets import DatasetError
from workers.run_config import RunConfigError, validate
from workers.store import StoreError

# name -> one-line help, shown by ``sweep --help`` and ``sweep NAME --help``
SUBCOMMANDS = {
    "launch": (
        "compose the grid with Hydra and run it on Ray: sweep launch experiment=NAME store=PATH [key=value ...]"
    ),
    "resume": (
        "relaunch pending, failed and interrupted runs of a store: sweep resume store=PATH [cluster.KEY=VALUE ...]"
    ),
    "status": (
        "counts by state, failures and stuck runs, from the store alone: "
        "sweep status store=PATH [watch=true] [stale_after=SECONDS]"
    ),
    "analyze": (
        "CUSUM calibration, effect sizes and the report: sweep analyze store=PATH|trajectories=FILE out=DIR "
        "[layer=head|all|NAME] [k=0.5] [arl0=1000] [window=[10,20]] [seed=0]"
    ),
    "run-one": (
        "train one run in this process into a store: "
        "sweep run-one store=DIR arch=resnet18 dataset=digits eta=0.25 seed=0 [key=value ...]"
    ),
    "data": (
        "download or verify datasets: sweep data download|verify dataset=cifar10 root=DIR [url=URL] [md5=HEX]"
    ),
}
USER_ERRORS = (ConfigError, RunConfigError, DatasetError, StoreError, CheckpointError, AnalysisError)


class UsageError(ValueError):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweep",
        description="hessian-sweep: layer-wise Hessian trace monitoring across a distributed training sweep.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("overrides", nargs="*", help="key=value overrides")
    return parser


def _pairs(words: list[str], allowed: set[str]) -> dict[str, str]:
    values = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or key not in allowed:
            raise UsageError(f"unexpected argument {word!r}; expected key=value with key in {sorted(allowed)}")
        values[key] = value
    return values


def _values(words: list[str], allowed: set[str], prefixes: tuple[str, ...] = ()) -> dict:
    """key=value words to a dict, values read as YAML scalars (true, 3, 0.5, null)."""
    import yaml

    values = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not (key in allowed or key.startswith(prefixes)):
            known = sorted(allowed) + [p + "KEY" for p in prefixes]
            raise UsageError(f"unexpected argument {word!r}; expected key=value with key in {known}")
        values[key] = yaml.safe_load(value) if value else None
    return values


def launch(overrides: list[str]) -> int:
    from sweep.grid import expand
    from sweep.launch import drive, locked
    from sweep.ledger import register
    from workers.datasets import check_present
    from workers.store import Store

    sweep = expand(overrides)  # every run composed and validated before anything is touched
    if not sweep.composed.get("store"):
        raise UsageError("sweep launch needs store=PATH (a local folder or s3://bucket/prefix)")
    cluster = sweep.composed["cluster"]
    if cluster["check_data"]:
        for config in {c["dataset"]["name"]: c for c in sweep.runs.values()}.values():
            check_present(config["dataset"]["name"], config["runtime"]["data_root"])
    store = Store.open(sweep.composed["store"], create=True)
    print(f"{sweep.sweep_id}: {len(sweep.runs)} runs into {store.uri}", flush=True)
    with locked(store) as lock:
        register(store, sweep, overrides)
        return drive(store, sweep.runs, cluster, lock=lock)


def resume(words: list[str]) -> int:
    from sweep.launch import drive, locked
    from sweep.ledger import manifest_runs
    from workers.store import Store

    options = _values(words, {"store"}, ("cluster.",))
    if not options.get("store"):
        raise UsageError("sweep resume needs store=PATH, the store of a launched sweep")
    store = Store.open(str(options.pop("store")))
    runs, cluster = manifest_runs(store)
    for key, value in options.items():
        name = key.removeprefix("cluster.")
        if name not in cluster:
            raise UsageError(f"unknown cluster setting {key}; known: {', '.join(sorted(cluster))}")
        cluster[name] = value
    with locked(store) as lock:
        return drive(store, runs, cluster, lock=lock)


def status(words: list[str]) -> int:
    from sweep.status import show
    from workers.store import Store

    options = _values(words, {"store", "watch", "stale_after"})
    if not options.get("store"):
        raise UsageError("sweep status needs store=PATH")
    stale_after = options.get("stale_after")
    if stale_after is None:
        stale_after = compose_config([])["cluster"]["stale_after"]
    return show(Store.open(str(options["store"])), stale_after=float(stale_after), watch=bool(options.get("watch")))


def analyze(words: list[str]) -> int:
    from analysis import inputs, report
    from analysis.analyze import analyze as compute

    defaults = compose_config([])["analysis"]
    options = _values(words, {"store", "trajectories", "out", *defaults})
    if bool(options.get("store")) == bool(options.get("trajectories")) or not options.get("out"):
        raise UsageError("sweep analyze needs out=DIR and one of store=PATH or trajectories=FILE")
    settings = {**defaults, **{k: v for k, v in options.items() if k in defaults}}
    if options.get("store"):
        trajectories = inputs.from_store(str(options["store"]))
    else:
        trajectories = inputs.from_parquet(str(options["trajectories"]))
    results = compute(
        trajectories, layer=str(settings["layer"]), k=float(settings["k"]), arl0=float(settings["arl0"]),
        window=tuple(settings["window"]), ks=tuple(settings["sensitivity_k"]),
        arl0s=tuple(settings["sensitivity_arl0"]), resamples=int(settings["bootstrap"]), seed=int(settings["seed"]),
    )
    page = report.write(results, options["out"])
    s = results.summary
    print(report.table1_markdown(results.table1))
    for name in ("power", "false_alarm"):
        p = s[name]
        print(f"{name.replace('_', '-')}: {p['count']}/{p['n']} = {p['rate']:.3f} "
              f"(Wilson 95% {p['wilson_low']:.3f}-{p['wilson_high']:.3f})")
    print(f"theoretical false-alarm rate 1 - exp(-{s['snapshots_per_run']}/{s['arl0']:g}) = "
          f"{s['theoretical_false_alarm']:.3f}")
    for note in results.notes:
        print(f"note: {note}")
    print(f"report: {page}")
    return 0


def run_one(overrides: list[str]) -> int:
    from workers.store import Store
    from workers.train import RunFailed, train

    composed = compose_config(overrides)
    if not composed.get("store"):
        raise UsageError("sweep run-one needs store=DIR (a local folder or s3://bucket/prefix)")
    config = validate(run_config(composed))  # before the store is touched
    store = Store.open(composed["store"], create=True)
    try:
        summary = train(config, store)
    except RunFailed as err:
        print(f"sweep run-one: the run failed: {err}\nIts record in {store.uri} says so; fix the config "
              "and run it again.", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2, default=str))
    return 0


def data(words: list[str]) -> int:
    from workers import datasets

    if not words or words[0] not in ("download", "verify"):
        raise UsageError("usage: sweep data download|verify dataset=cifar10|cifar100 root=DIR [url=URL] [md5=HEX]")
    action, options = words[0], _pairs(words[1:], {"dataset", "root", "url", "md5"})
    if "dataset" not in options or "root" not in options:
        raise UsageError(f"sweep data {action} needs dataset=cifar10|cifar100 and root=DIR")
    if action == "download":
        folder = datasets.download(options["dataset"], options["root"], url=options.get("url"),
                                   md5=options.get("md5"))
    else:
        folder = datasets.verify(options["dataset"], options["root"], md5=options.get("md5"))
    print(f"{options['dataset']}: {folder} is complete and its archive matches its MD5")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        commands = {"launch": launch, "resume": resume, "status": status, "analyze": analyze, "run-one": run_one,
                    "data": data}
        return commands[args.command](args.overrides)
    except (UsageError, *USER_ERRORS) as err:
        print(f"sweep {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `sweep status ... | head`: the reader left; nothing went wrong here
        sys.stderr.close()
        return 0
