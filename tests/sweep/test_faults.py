"""A damaged store, for real: files of a launched sweep truncated or overwritten with
garbage, then every command. None may end in a traceback; each names the file; and
after `launch` or `resume` the snapshot rows equal those of the undamaged sweep."""

import shutil

import pytest

from store import Store
from sweep.grid import expand
from tests.reference import train_sweep

pytestmark = pytest.mark.slow

ARGS = ["experiment=smoke", "train.epochs=3"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The smoke sweep, registered and trained in this process with the one thread a Ray task gets."""
    path = tmp_path_factory.mktemp("reference") / "s"
    train_sweep(ARGS, path)
    return path, sorted(expand(ARGS).runs)


def rows(store):
    table = store.snapshots().sort_by([("run_id", "ascending"), ("step", "ascending"), ("quantity", "ascending"),
                                       ("layer", "ascending")])
    return table.drop_columns(["sweep_id"]).to_pylist()


def damage(path, how):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncate" else b"\x00not what was written\xff" * 7)


@pytest.mark.parametrize("how, repair_by", [("truncate", "launch"), ("garbage", "resume")])
def test_every_command_on_a_damaged_store(tmp_path, reference, sweep_cli, how, repair_by):
    source, run_ids = reference
    root = tmp_path / "s"
    shutil.copytree(source, root)
    clean_a, clean_b, clean_c, noisy = run_ids[0], run_ids[1], run_ids[2], run_ids[3]
    (manifest,) = (root / "manifests").glob("*.json")
    (root / "_launch.lock").write_text("{}")
    targets = {
        "record": root / "runs" / clean_a / "record.parquet",
        "snapshot chunk": next((root / "runs" / clean_b / "snapshots").glob("*.parquet")),
        "metrics chunk": next((root / "runs" / clean_c / "metrics").glob("*.parquet")),
        "checkpoint": root / "runs" / noisy / "checkpoint.pt",
        "manifest": manifest,
        "lock": root / "_launch.lock",
    }
    for path in targets.values():
        damage(path, how)

    def clean(out):
        assert "Traceback" not in out.stdout + out.stderr and "internal error" not in out.stderr
        return out.stdout + out.stderr

    status = sweep_cli("status", f"store={root}")
    text = clean(status)
    assert status.returncode == 0 and "damaged runs" in text
    for name in ("record", "snapshot chunk", "metrics chunk", "manifest"):
        assert str(targets[name]) in text, name

    check = sweep_cli("check", f"store={root}")
    text = clean(check)
    assert check.returncode == 1
    for name, path in targets.items():
        assert str(path) in text, name

    analysis = sweep_cli("analyze", f"store={root}", f"out={tmp_path / 'report'}", "bootstrap=100")
    text = clean(analysis)
    assert analysis.returncode == 2  # 3 of 4 runs left out: too few clean runs to calibrate, said so
    for name in ("record", "snapshot chunk", "metrics chunk"):
        assert str(targets[name]) in text, name

    if repair_by == "launch":
        out = sweep_cli("launch", *ARGS, f"store={root}")
    else:
        out = sweep_cli("resume", f"store={root}")
    text = clean(out)
    assert out.returncode == 0, text
    assert str(targets["lock"]) in text and str(targets["manifest"]) in text
    assert rows(Store.open(str(root))) == rows(Store.open(str(source)))  # nothing lost, nothing twice
    again = sweep_cli("check", f"store={root}")
    assert again.returncode == 0, again.stdout
    assert list((root / "damaged").rglob("*.parquet"))  # the damaged files were kept, set aside
    final = sweep_cli("status", f"store={root}")
    assert "total: 0 pending, 0 running, 0 stuck, 4 done, 0 failed, 0 damaged" in final.stdout


def test_check_repair_sets_damage_aside_and_keeps_the_sweep(tmp_path, reference, sweep_cli):
    source, run_ids = reference
    root = tmp_path / "s"
    shutil.copytree(source, root)
    (manifest,) = (root / "manifests").glob("*.json")
    damage(manifest, "garbage")
    damage(next((root / "runs" / run_ids[1] / "snapshots").glob("*.parquet")), "truncate")
    repaired = sweep_cli("check", f"store={root}", "repair=true")
    assert repaired.returncode == 0 and repaired.stdout.count("repaired:") == 2, repaired.stdout
    assert sweep_cli("check", f"store={root}").returncode == 0
    (rewritten,), damaged = Store.open(str(root)).read_manifests()
    assert damaged == [] and sorted(rewritten["runs"]) == run_ids  # the sweep still knows its 4 runs
    status = sweep_cli("status", f"store={root}")
    assert "total: 1 pending, 0 running, 0 stuck, 3 done, 0 failed, 0 damaged" in status.stdout
