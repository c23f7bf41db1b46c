"""``sweep watch``: alarms while a sweep trains.

Per configuration, as soon as its clean runs are done (all of them, or ``min_clean``), the
clean runs are Phase I (``analysis.online.OnlineCusum``: the same standardisation and h as
``sweep analyze``); from then on every other run of the configuration is followed as its
snapshots are committed, and an alarm is printed (run, layer, step, epoch, statistic) and
written to the store (``alarms/``, shown by ``sweep status`` and the report) the moment one
fires. Ends when every run of the sweep has finished and been read, after ``timeout``
seconds, or after one pass (``once``).
"""

from __future__ import annotations

import sys
import time

import pyarrow as pa
import pyarrow.compute as pc

from analysis.detection import MIN_CLEAN
from analysis.inputs import AnalysisError, of_runs
from analysis.online import OnlineCusum
from store import Store, StoreError
from store.sweeps import select
from sweep.options import UsageError

FINAL = ("done", "failed")


def watch(store: Store, *, sweep: str | None = None, layer: str = "head", quantity: str = "trace", k: float = 0.5,
          arl0: float = 1000.0, calibration: str = "auto", min_clean: int | None = None, interval: float = 5.0,
          timeout: float | None = None, once: bool = False, seed: int = 0, out=None) -> int:
    out = out or sys.stdout
    chosen = select(store, sweep)
    phase1: dict[str, OnlineCusum] = {}
    followed: dict[str, OnlineCusum] = {}
    waiting: set[str] = set()
    earlier, _ = store.read_alarms()  # raised by an earlier watch: not raised twice
    raised = set(zip(earlier["run_id"].to_pylist(), earlier["layer"].to_pylist(), earlier["quantity"].to_pylist()))
    started = time.monotonic()
    print(f"watching sweep {chosen.label} of {store.uri}: {len(chosen.run_ids)} runs, layer {layer}, "
          f"quantity {quantity}, k = {k:g}, ARL0 = {arl0:g} (Ctrl-C stops)", file=out, flush=True)
    while True:
        chosen = select(store, sweep)  # runs registered since the last look are followed too
        runs, damaged = store.read_runs(chosen.run_ids)
        for configuration in sorted(set(runs["configuration"].to_pylist())):
            of = runs.filter(pc.equal(runs["configuration"], configuration))
            if configuration not in phase1:
                made = _calibrate(store, of, configuration, layer=layer, quantity=quantity, k=k, arl0=arl0,
                                  calibration=calibration, min_clean=min_clean, seed=seed)
                if isinstance(made, str):
                    if configuration not in waiting:
                        print(f"{configuration}: {made}", file=out, flush=True)
                        waiting.add(configuration)
                    continue
                phase1[configuration] = made
                c = made.calibration
                print(f"{configuration}: Phase I on {made.clean_runs} clean runs, layer {made.layer}: h = {c.h:.3f} "
                      f"({c.name}), promised false-alarm probability within {c.horizon} snapshots "
                      f"{c.in_horizon:.3f}", file=out, flush=True)
            base = phase1[configuration]
            calibrated = set(base.calibrated_on)
            for record in of.to_pylist():
                rid = record["run_id"]
                if rid in calibrated or (rid, base.layer, quantity) in raised:
                    continue
                monitor = followed.setdefault(rid, base.follow(rid))
                if monitor.alarm is not None:
                    continue
                alarm = _feed(store, monitor, of.filter(pc.equal(of["run_id"], rid)), quantity)
                if alarm is not None:
                    eta = record["eta"]
                    print(f"{alarm} [eta = {eta:g}]", file=out, flush=True)
                    store.write_alarm({"run_id": rid, "configuration": configuration, "layer": alarm.layer,
                                       "quantity": quantity, "step": alarm.step, "epoch": alarm.epoch,
                                       "statistic": alarm.statistic, "side": alarm.side, "h": alarm.h, "k": k,
                                       "arl0": arl0, "calibration": base.calibration.name,
                                       "clean_runs": base.clean_runs})
        # every run done or failed (or damaged: `sweep resume` reruns it, and a watch then) and read
        final = sum(s in FINAL for s in runs["status"].to_pylist()) + len(damaged)
        if once or final == len(chosen.run_ids):
            break
        if timeout is not None and time.monotonic() - started > timeout:
            print(f"stopped after {timeout:g} s; `sweep watch` again continues (alarms already raised are kept)",
                  file=out, flush=True)
            break
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            break
    alarms = sum(1 for m in followed.values() if m.alarm is not None)
    print(f"{alarms} alarms in {len(followed)} followed runs", file=out, flush=True)
    return 0


def _calibrate(store: Store, runs: pa.Table, configuration: str, *, layer, quantity, k, arl0, calibration,
               min_clean, seed) -> OnlineCusum | str:
    """Phase I of one configuration, or why it cannot be done yet."""
    clean = runs.filter(pc.equal(runs["eta"], 0.0))
    done = clean.filter(pc.equal(clean["status"], "done"))
    need = max(MIN_CLEAN, min_clean if min_clean is not None else clean.num_rows)
    if done.num_rows < need:
        return (f"waiting for {need} done clean runs to calibrate on ({done.num_rows} of {clean.num_rows} done"
                + ("" if min_clean else "; min_clean=N starts sooner") + ")")
    try:
        made = OnlineCusum.from_trajectories(of_runs(store, done, quantity), configuration=configuration,
                                             layer=layer, k=k, arl0=arl0, calibration=calibration, seed=seed)
    except (AnalysisError, StoreError) as err:
        raise UsageError(f"{configuration}: {err}") from None
    return made


def _feed(store: Store, monitor: OnlineCusum, run: pa.Table, quantity: str):
    """Give ``monitor`` the run's committed snapshots it has not seen; the alarm, if one fired."""
    rows = store.snapshots(runs=run, layer=monitor.layer, quantity=quantity)
    rows = rows.sort_by("step")
    for step, value in zip(rows["step"].to_pylist(), rows["value"].to_pylist()):
        if monitor.last_step is not None and step <= monitor.last_step:
            continue
        if not monitor.covers(step):  # past the clean runs' last snapshot: nothing to compare with
            continue
        alarm = monitor.update(step, value)
        if alarm is not None:
            return alarm
    return None
