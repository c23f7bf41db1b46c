"""Alarms while runs train: the online CUSUM against the batch analysis, and `sweep watch`
following runs that separate processes are writing into a real store."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from analysis.detection import detect
from analysis.inputs import AnalysisError, ensemble, from_parquet
from analysis.online import OnlineCusum
from store import RunWriter, Store
from store.schema import record
from tests.analysis.synthetic import trajectories
from tests.store.test_store import identity, zipped

ROOT = Path(__file__).resolve().parents[2]
STEPS = [100 * (i + 1) for i in range(30)]
CONFIGURATION = "vgg11-digits-abc"  # tests.store.test_store.identity's


def test_the_online_statistic_alarms_where_the_batch_analysis_does(tmp_path):
    path = tmp_path / "t.parquet"
    import pyarrow.parquet as pq

    pq.write_table(trajectories(shift=1.5, shift_at=40, clean=12, noisy=4, steps=80, seed=3, layers=("body", "out")),
                   path)
    traj = from_parquet(str(path))
    e, _ = ensemble(traj, "resnet18-cifar10", "out")
    batch = detect(e, k=0.5, arl0=1000)
    base = OnlineCusum.from_trajectories(str(path), layer="out")
    assert base.h == batch.calibration.h and base.clean_runs == 12
    checked = 0
    for r, run_id in enumerate(e.run_ids):
        if e.eta[r] == 0:
            continue
        online = base.follow(run_id)
        alarms = [online.update(step, value) for step, value in zip(e.steps, e.trace[r])]
        first = next((i for i, a in enumerate(alarms) if a is not None), -1)
        assert first == batch.path.first_alert[r], run_id  # the same snapshot, one value at a time
        assert sum(a is not None for a in alarms) == (first >= 0)  # reported once
        if first >= 0:
            assert alarms[first].side == "up" and alarms[first].step == e.steps[first] and f"run {run_id}" in str(
                alarms[first])
            checked += 1
    assert checked >= 6
    with pytest.raises(ValueError, match="step 150 is not a snapshot step of the clean runs"):
        base.follow().update(150, 10.0)
    online = base.follow()
    online.update(200, 10.0)
    with pytest.raises(ValueError, match="step 100 comes after step 200"):
        online.update(100, 10.0)
    with pytest.raises(AnalysisError, match="layer=head needs model metadata"):
        OnlineCusum.from_trajectories(str(path))  # a trajectories file without the store: name the layer
    with pytest.raises(AnalysisError, match="calibration='x' is not one of"):
        OnlineCusum.from_trajectories(str(path), layer="out", calibration="x")


def write_run(root: str, run_id: str, eta: float, seed: int, *, shift_at: int | None = None, pause: float = 0.0,
              wait_for_alarm: float = 0.0) -> None:
    """One run written as a worker writes it: a commit per snapshot, ``pause`` seconds apart;
    from snapshot ``shift_at`` its head's trace is 3 standard deviations higher. With
    ``wait_for_alarm``, before its record says done it waits for an alarm of its own in the
    store and prints whether one came while it was still running."""
    store = Store.open(root)
    rng = np.random.default_rng(seed)
    writer = RunWriter(store, identity(run_id, eta))
    with writer:
        writer.begin(host="test")
        writer.start(total_steps=STEPS[-1], device="cpu")
        for i, step in enumerate(STEPS):
            value = 10 + rng.standard_normal() + (3.0 if shift_at is not None and i >= shift_at else 0.0)
            writer.log("snapshots", [dict(run_id=run_id, step=step, epoch=step / 100, layer="classifier",
                                          layer_index=0, numel=10, quantity="trace", value=value, stderr=0.1,
                                          probe_values=[value])])
            writer.commit(step, checkpoint=zipped)
            time.sleep(pause)
        if wait_for_alarm:
            deadline = time.monotonic() + wait_for_alarm
            while time.monotonic() < deadline:
                alarms, _ = store.read_alarms()
                if run_id in alarms["run_id"].to_pylist():
                    print(f"ALARM WHILE RUNNING {run_id}", flush=True)
                    break
                time.sleep(0.1)
        writer.done({})


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_watch_alarms_on_a_run_while_it_is_written_and_not_on_an_in_control_one(tmp_path, sweep_cli):
    root = str(tmp_path / "s")
    Store.open(root, create=True)
    for i in range(8):  # the clean runs, done
        write_run(root, f"clean-{i}", 0.0, seed=i)
    for run_id, eta in (("shifted", 0.4), ("in-control", 0.0)):  # registered, as a launch registers every run
        Store.open(root).write_record(record(identity(run_id, eta)))
    code = "import sys; from tests.sweep.test_watch import write_run; write_run(*sys.argv[1:3], float(sys.argv[3]), " \
           "int(sys.argv[4]), shift_at=None if sys.argv[5] == '-' else int(sys.argv[5]), pause=0.15, " \
           "wait_for_alarm=float(sys.argv[6]))"
    watcher = spawn("-m", "sweep", "watch", f"store={root}", "min_clean=8", "interval=0.2", "timeout=120")
    time.sleep(1.0)  # the watcher starts, calibrates and waits for the runs to appear
    shifted = spawn("-c", code, root, "shifted", "0.4", "100", "10", "60")
    in_control = spawn("-c", code, root, "in-control", "0.0", "101", "-", "0")
    for process in (shifted, in_control):
        assert process.wait(timeout=120) == 0, process.stderr.read()
    assert "ALARM WHILE RUNNING shifted" in shifted.stdout.read()
    out, err = watcher.communicate(timeout=120)
    assert watcher.returncode == 0, err
    assert "Phase I on 8 clean runs, layer classifier" in out
    alarm_lines = [line for line in out.splitlines() if line.startswith("alarm:")]
    assert len(alarm_lines) == 1 and "run shifted layer classifier" in alarm_lines[0], out
    assert out.rstrip().endswith("1 alarms in 2 followed runs")
    store = Store.open(root)
    alarms, damaged = store.read_alarms()
    assert damaged == [] and alarms["run_id"].to_pylist() == ["shifted"]
    (row,) = alarms.to_pylist()
    assert row["step"] >= STEPS[10] and row["side"] == "up" and row["clean_runs"] == 8 and row["statistic"] > row["h"]
    again = sweep_cli("watch", f"store={root}", "once=true")  # a second watch does not raise it twice
    assert again.returncode == 0 and "Phase I on 9 clean runs" in again.stdout
    assert again.stdout.rstrip().endswith("0 alarms in 0 followed runs")
    # sweep status and the report show it
    status = sweep_cli("status", f"store={root}")
    assert "alarms raised while training (`sweep watch`): 1" in status.stdout and "shifted: layer classifier" in \
        status.stdout
    shown = sweep_cli("analyze", f"store={root}", f"out={tmp_path / 'out'}", "layer=classifier", "bootstrap=200")
    assert shown.returncode == 0, shown.stderr
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Alarms raised while the runs trained" in page and ">shifted<" in page
    # the library object built from the store (now 9 done clean runs: in-control joined them) finds it too
    online = OnlineCusum.from_store(root, layer="head", run_id="shifted")
    rows = store.snapshots(runs=store.runs(run_ids=["shifted"]), quantity="trace").sort_by("step")
    found = [a for a in (online.update(s, v) for s, v in zip(rows["step"].to_pylist(), rows["value"].to_pylist()))
             if a]
    assert online.clean_runs == 9 and len(found) == 1 and found[0].step >= STEPS[10]


def test_watch_waits_for_clean_runs_and_says_so(tmp_path, sweep_cli):
    root = str(tmp_path / "s")
    Store.open(root, create=True)
    write_run(root, "clean-0", 0.0, seed=0)
    done = sweep_cli("watch", f"store={root}", "once=true")
    assert done.returncode == 0
    assert f"{CONFIGURATION}: waiting for 3 done clean runs to calibrate on (1 of 1 done" in done.stdout
    bad = sweep_cli("watch", f"store={root}", "calibration=gauss")
    assert bad.returncode == 2 and "calibration=gauss" in bad.stderr and "auto, iid, serial" in bad.stderr


def test_a_damaged_alarm_file_is_named_and_set_aside(tmp_path, sweep_cli):
    root = tmp_path / "s"
    store = Store.open(str(root), create=True)
    write_run(str(root), "clean-0", 0.0, seed=0)
    store.write_alarm(dict(run_id="clean-0", configuration=CONFIGURATION, layer="classifier", quantity="trace",
                           step=100, epoch=1.0, statistic=9.0, side="up", h=8.0, k=0.5, arl0=1000.0,
                           calibration="iid", clean_runs=3))
    (path,) = (root / "alarms").glob("*.parquet")
    path.write_bytes(path.read_bytes()[:40])
    assert "is damaged" in sweep_cli("status", f"store={root}").stdout
    found = sweep_cli("check", f"store={root}")
    assert found.returncode == 1 and "alarms/clean-0-" in found.stdout
    assert "`sweep watch` writes it again" in found.stdout
    repaired = sweep_cli("check", f"store={root}", "repair=true")
    assert repaired.returncode == 0 and not path.exists()
    assert sweep_cli("check", f"store={root}").returncode == 0
