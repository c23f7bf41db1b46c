import inspect
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sweep.cli import SUBCOMMANDS
from workers.curvature import (
    gauss_newton_split,
    ggn_trace,
    interlayer_blocks,
    layerwise_trace,
    spectral_density,
    top_eigenvalues,
)

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_every_subcommand_without_importing_torch():
    code = ("import sys; from sweep.cli import main; code = main(['--help']); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH'); sys.exit(code)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    for name in SUBCOMMANDS:
        assert name in out.stdout
    assert set(SUBCOMMANDS) == {"launch", "resume", "status", "check", "export", "analyze", "watch", "forget",
                                "store", "run-one", "curvature", "data"}
    assert out.stdout.strip().endswith("NO-TORCH")


def test_analyze_without_out_names_what_is_missing_without_a_traceback(sweep_cli):
    out = sweep_cli("analyze", "store=x")
    assert out.returncode == 2 and "needs out=..." in out.stderr and "Traceback" not in out.stderr


def test_monitor_config_composes_into_estimator_arguments():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["dataset=cifar10"])
    monitor = dict(cfg.monitor)
    assert (monitor.pop("every"), monitor.pop("batch_size"), monitor["num_probes"]) == (100, 128, 10)
    assert monitor.pop("enabled") is True
    assert (monitor.pop("estimator"), monitor.pop("head")) == ("hessian", "probes")  # which estimator, not its options
    # the spectral options: when and on which blocks, then keyword arguments of their estimators
    for key, estimator, chooser in (("eigen", top_eigenvalues, ("every", "layers", "network")),
                                    ("density", spectral_density, ("epochs", "layers", "network")),
                                    ("gauss_newton", gauss_newton_split, ("every",)),
                                    ("interlayer", interlayer_blocks, ("every",))):
        # operators: one call of interlayer_blocks per operator listed
        options = {"operator" if k == "operators" else k: v for k, v in dict(monitor.pop(key)).items()
                   if k not in chooser}
        keywords = {name for name, p in inspect.signature(estimator).parameters.items() if p.kind is p.KEYWORD_ONLY}
        assert options and set(options) <= keywords, key
    accepted = inspect.signature(layerwise_trace).parameters
    assert set(monitor) <= {name for name, p in accepted.items() if p.kind is p.KEYWORD_ONLY}
    ggn = inspect.signature(ggn_trace).parameters
    assert {"num_probes", "groups"} <= {name for name, p in ggn.items() if p.kind is p.KEYWORD_ONLY}


def test_run_one_trains_into_a_store_and_a_second_call_does_nothing_new(tmp_path, sweep_cli):
    from store import Store
    from tests.conftest import TINY

    args = ["run-one", f"store={tmp_path / 's'}", "arch=vgg11", "eta=0.25", "seed=2", *TINY, "train.epochs=1"]
    out = sweep_cli(*args)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("sweep run-one: training vgg11-digits-eta0.25-s2-")  # said before the work
    store = Store.open(str(tmp_path / "s"))
    (record,) = store.runs().to_pylist()
    assert (record["status"], record["arch"], record["eta"], record["seed"]) == ("done", "vgg11", 0.25, 2)
    assert store.snapshots(layer="classifier", quantity="trace")["step"].to_pylist() == [5, 10]
    again = sweep_cli(*args)
    assert again.returncode == 0 and store.read_record(record["run_id"])["attempt"] == 1
    assert not (tmp_path / "s" / "_launch.lock").exists()  # run-one held the launch lock and let it go


def test_run_one_respects_the_launch_lock_of_a_live_driver(tmp_path, sweep_cli):
    import os
    import socket
    import time

    from store import Store

    store = Store.open(str(tmp_path / "s"), create=True)
    store.create_lock({"host": socket.gethostname(), "pid": os.getpid(), "token": "x", "heartbeat": time.time()})
    out = sweep_cli("run-one", f"store={tmp_path / 's'}", "train.epochs=1")
    assert out.returncode == 2 and "another sweep driver" in out.stderr
    assert store.run_ids() == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["arch=resnet50"], "Could not find 'arch/resnet50' Available options in 'arch': resnet18 resnet34 vgg11"),
        (["eta=1.0"], r"eta=1.0 is not allowed: it must be a label-noise rate in \[0, 1\)"),
        (["train.bogus=1"], "Could not override 'train.bogus'"),
        (["dataset=cifar10", "runtime.data_root=NODATA"], "cifar-10-batches-py/data_batch_1, which does not exist"),
        (["train.batch_size=100000"], "train.batch_size=100000 exceeds the 1438 training images of digits"),
        (["runtime.device=cuda:7"], "runtime.device=cuda:7, but this machine has .* CUDA devices"),
    ],
)
def test_run_one_bad_input_is_one_message_and_writes_nothing(tmp_path, sweep_cli, args, message):
    args = [a.replace("NODATA", str(tmp_path / "nodata")) for a in args]
    out = sweep_cli("run-one", f"store={tmp_path / 's'}", *args)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert re.search(message, out.stderr), out.stderr
    assert not (tmp_path / "s" / "runs").exists()


def test_run_one_refuses_an_unwritable_store(tmp_path, sweep_cli):
    (tmp_path / "file").write_text("x")
    out = sweep_cli("run-one", f"store={tmp_path / 'file' / 's'}")
    assert out.returncode == 2 and "cannot write" in out.stderr and "Traceback" not in out.stderr


def test_data_download_and_verify_from_a_local_server(tmp_path, http_root, sweep_cli):
    from tests.workers import cifar_archives

    served, base = http_root
    path, md5, _ = cifar_archives.build("cifar100", served)
    root = tmp_path / "data"
    out = sweep_cli("data", "download", "dataset=cifar100", f"root={root}", f"url={base}/{path.name}", f"md5={md5}")
    assert out.returncode == 0, out.stderr
    assert (root / "cifar-100-python" / "train").exists()
    assert sweep_cli("data", "verify", "dataset=cifar100", f"root={root}", f"md5={md5}").returncode == 0
    bad = sweep_cli("data", "verify", "dataset=cifar100", f"root={root}")  # the published MD5: not our tiny file
    assert bad.returncode == 2 and "expected eb9058c3a382ffc7106e4002c42a8d85" in bad.stderr
    usage = sweep_cli("data", "fetch")
    assert usage.returncode == 2 and "usage: sweep data download|verify" in usage.stderr


def test_resume_and_status_refuse_what_they_cannot_use(tmp_path, sweep_cli):
    from store import Store

    Store.open(str(tmp_path / "s"), create=True)
    out = sweep_cli("resume", f"store={tmp_path / 's'}")
    assert out.returncode == 2 and "has no readable sweep manifest" in out.stderr
    assert "sweep launch experiment=" in out.stderr
    (tmp_path / "s" / "_store.json").write_text('{"schema_version": 0}')
    old = sweep_cli("resume", f"store={tmp_path / 's'}")
    assert old.returncode == 2 and "schema version 0" in old.stderr
    missing = sweep_cli("status", f"store={tmp_path / 'nope'}")
    assert missing.returncode == 2 and "there is no store" in missing.stderr


# Words a user might type, right or wrong: every command must answer each with a message
# and exit 2 (or succeed), never a traceback or an internal error.
BAD_VALUES = ["", "abc", "-1", "0", "1e999", "nan", "[1", "[]", "[2,1]", "{a: 1}", "null", "true", "\x00", "é",
              "../../etc", "s3://", "9" * 40]
KEYS = {"status": ["store", "watch", "stale_after", "sweep", "bogus"],
        "analyze": ["store", "trajectories", "out", "k", "arl0", "window", "bootstrap", "seed", "layer", "quantity",
                    "sensitivity_k", "sensitivity_arl0", "sweep", "bogus"],
        "check": ["store", "repair", "bogus"], "export": ["store", "out", "quantity", "sweep", "bogus"],
        "forget": ["store", "sweep", "bogus"], "resume": ["store", "sweep", "cluster.max_retries", "cluster.bogus"],
        "store": ["store"], "data": ["dataset", "root", "url", "md5"]}


def test_cli_fuzz_bad_words_never_give_a_traceback(tmp_path, sweep_cli):
    from store import Store

    Store.open(str(tmp_path / "s"), create=True)
    good = {"store": str(tmp_path / "s"), "out": str(tmp_path / "out")}
    rng = random.Random(0)
    cases = 0
    for command, keys in KEYS.items():
        for _ in range(25):
            words = [f"{k}={good[k]}" for k in good if k in keys and rng.random() < 0.7]
            bad_key = rng.choice(keys)
            words.append(f"{bad_key}={rng.choice(BAD_VALUES)}")
            words += rng.choice([[], ["noequals"], ["=x"]])
            prefix = {"store": ["migrate"], "data": [rng.choice(["download", "verify", "nope"])]}.get(command, [])
            out = sweep_cli(command, *prefix, *words)
            assert out.returncode in (0, 1, 2), (command, words, out.stderr)
            assert "Traceback" not in out.stderr and "internal error" not in out.stderr, (command, words, out.stderr)
            if out.returncode == 2:
                assert out.stderr.startswith(f"sweep {command}: error: "), out.stderr
            cases += 1
    assert cases == 25 * len(KEYS)


@pytest.mark.parametrize("words, message", [
    (["k=abc"], r"k=abc: k must be a number > 0"),
    (["bootstrap=0"], r"bootstrap=0: bootstrap must be an integer >= 100"),
    (["window=[20,10]"], r"window must be a list of 2 numbers, in increasing order"),
    (["arl0=1"], r"arl0 must be a number > 1"),
])
def test_analysis_values_are_checked_before_the_work(tmp_path, sweep_cli, words, message):
    out = sweep_cli("analyze", f"store={tmp_path}", f"out={tmp_path / 'o'}", *words)
    assert out.returncode == 2 and re.search(message, out.stderr), out.stderr


def test_analyze_out_must_be_a_writable_folder(tmp_path, sweep_cli):
    from store import Store

    Store.open(str(tmp_path / "s"), create=True)
    (tmp_path / "file").write_text("x")
    out = sweep_cli("analyze", f"store={tmp_path / 's'}", f"out={tmp_path / 'file'}")
    assert out.returncode == 2 and "is a file; pass a folder" in out.stderr
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        out = sweep_cli("analyze", f"store={tmp_path / 's'}", f"out={locked / 'sub'}")
    finally:
        locked.chmod(0o700)
    import os

    if os.geteuid() != 0:  # root writes anywhere
        assert out.returncode == 2 and "cannot write the report into" in out.stderr


def test_status_exits_0_fifty_times_in_a_row(tmp_path):
    """pyarrow's threaded single-file reads aborted the interpreter at exit (exit 134) in
    about 1 call of 10 here; the store reads small files without threads."""
    from store import Store
    from tests.store.test_store import write_run

    store = Store.open(str(tmp_path / "s"), create=True)
    for i in range(12):
        write_run(store, f"r{i}", [[5], [10]])
    codes = [subprocess.run([sys.executable, "-m", "sweep", "status", f"store={tmp_path / 's'}"],
                            capture_output=True, text=True).returncode for _ in range(50)]
    assert codes == [0] * 50


@pytest.mark.parametrize("words, message", [
    (["train.batch_size=100000"], "train.batch_size=100000 exceeds the 1438 training images of digits"),
    (["runtime.device=cuda:7"], "runtime.device=cuda:7, but this machine has .* CUDA devices"),
    (["grid.dataset=[cifar10]", "runtime.data_root=NODATA"], "cifar-10-batches-py/data_batch_1, which does not exist"),
])
def test_a_launch_that_cannot_run_is_refused_before_anything_is_written(tmp_path, sweep_cli, words, message):
    words = [w.replace("NODATA", str(tmp_path / "nodata")) for w in words]
    out = sweep_cli("launch", "experiment=smoke", f"store={tmp_path / 's'}", *words)
    assert out.returncode == 2 and re.search(message, out.stderr), out.stderr
    assert not (tmp_path / "s").exists()
