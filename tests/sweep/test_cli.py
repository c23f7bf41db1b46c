import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sweep.cli import SUBCOMMANDS
from workers.curvature import layerwise_trace

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "sweep", "--help"], capture_output=True, text=True, check=True)
    for name in ("launch", "resume", "status", "analyze", "run-one", "data"):
        assert name in out.stdout
    assert set(SUBCOMMANDS) == {"launch", "resume", "status", "analyze", "run-one", "data"}


def test_analyze_without_out_names_what_is_missing_without_a_traceback():
    out = subprocess.run([sys.executable, "-m", "sweep", "analyze", "store=x"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "needs out=DIR" in out.stderr
    assert "Traceback" not in out.stderr


def test_monitor_config_composes_into_estimator_arguments():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["dataset=cifar10"])  # digits shortens `every`
    monitor = dict(cfg.monitor)
    assert (monitor.pop("every"), monitor.pop("batch_size"), monitor["num_probes"]) == (100, 128, 10)
    assert monitor.pop("enabled") is True
    accepted = inspect.signature(layerwise_trace).parameters
    assert set(monitor) <= {name for name, p in accepted.items() if p.kind is p.KEYWORD_ONLY}


def sweep(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sweep", *args], capture_output=True, text=True, cwd=cwd)


def test_run_one_trains_into_a_store_and_a_second_call_does_nothing_new(tmp_path):
    from tests.conftest import TINY
    from store import Store

    args = ["run-one", f"store={tmp_path / 's'}", "arch=vgg11", "eta=0.25", "seed=2", *TINY, "train.epochs=1"]
    out = sweep(*args)
    assert out.returncode == 0, out.stderr
    store = Store.open(str(tmp_path / "s"))
    (record,) = store.runs().to_pylist()
    assert (record["status"], record["arch"], record["eta"], record["seed"]) == ("done", "vgg11", 0.25, 2)
    assert store.snapshots(layer="classifier")["step"].to_pylist() == [5, 10]
    again = sweep(*args)
    assert again.returncode == 0 and store.read_record(record["run_id"])["attempt"] == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["arch=resnet50"], "Could not find 'arch/resnet50' Available options in 'arch': resnet18 resnet34 vgg11"),
        (["eta=1.0"], r"eta=1.0 is not allowed: it must be a label-noise rate in \[0, 1\)"),
        (["train.bogus=1"], "Could not override 'train.bogus'"),
        (["dataset=cifar10", "runtime.data_root=NODATA"], "cifar-10-batches-py/data_batch_1, which does not exist"),
    ],
)
def test_run_one_bad_input_is_one_message_and_writes_nothing(tmp_path, args, message):
    args = [a.replace("NODATA", str(tmp_path / "nodata")) for a in args]
    out = sweep("run-one", f"store={tmp_path / 's'}", *args)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert re.search(message, out.stderr), out.stderr
    assert not (tmp_path / "s" / "runs").exists()


def test_run_one_refuses_an_unwritable_store(tmp_path):
    (tmp_path / "file").write_text("x")
    out = sweep("run-one", f"store={tmp_path / 'file' / 's'}")
    assert out.returncode == 2 and "cannot write to the store" in out.stderr and "Traceback" not in out.stderr


def test_data_download_and_verify_from_a_local_server(tmp_path, http_root):
    from tests.workers import cifar_archives

    served, base = http_root
    path, md5, _ = cifar_archives.build("cifar100", served)
    root = tmp_path / "data"
    out = sweep("data", "download", "dataset=cifar100", f"root={root}", f"url={base}/{path.name}", f"md5={md5}")
    assert out.returncode == 0, out.stderr
    assert (root / "cifar-100-python" / "train").exists()
    assert sweep("data", "verify", "dataset=cifar100", f"root={root}", f"md5={md5}").returncode == 0
    bad = sweep("data", "verify", "dataset=cifar100", f"root={root}")  # the published MD5: not our tiny file
    assert bad.returncode == 2 and "expected eb9058c3a382ffc7106e4002c42a8d85" in bad.stderr
    usage = sweep("data", "fetch")
    assert usage.returncode == 2 and "usage: sweep data download|verify" in usage.stderr


def test_resume_and_status_refuse_what_they_cannot_use(tmp_path):
    from store import Store

    Store.open(str(tmp_path / "s"), create=True)
    out = sweep("resume", f"store={tmp_path / 's'}")
    assert out.returncode == 2 and "has no sweep manifest" in out.stderr and "sweep launch experiment=" in out.stderr
    (tmp_path / "s" / "_store.json").write_text('{"schema_version": 0}')
    old = sweep("resume", f"store={tmp_path / 's'}")
    assert old.returncode == 2 and "schema version 0" in old.stderr and "Traceback" not in old.stderr
    missing = sweep("status", f"store={tmp_path / 'nope'}")
    assert missing.returncode == 2 and "there is no store" in missing.stderr
    usage = sweep("resume", f"store={tmp_path / 's'}", "cluster.bogus=1")
    assert usage.returncode == 2
