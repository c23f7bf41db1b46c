"""``sweep check``, ``sweep export`` and ``sweep forget``: a store's files, its data, its sweeps."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from store import DamagedFile, Store
from store.schema import EXPORT_COLUMNS
from store.sweeps import select
from sweep.ledger import rewrite_manifest
from sweep.lock import locked
from sweep.options import UsageError


def check(store: Store, *, repair: bool = False, out=None) -> int:
    """Verify every file: manifests, the lock, each run's record, the size and SHA-256 of
    every committed file, every member of every checkpoint. Exit 1 when something is
    damaged (and not repaired), else 0. ``repair``: set damaged files aside (under the lock)."""
    out = out or sys.stdout
    problems: list[str] = []
    manifests, damaged_manifests = store.read_manifests()
    problems += [str(d) for d in damaged_manifests]
    _, damaged_alarms = store.read_alarms()
    problems += [f"{d} (`sweep watch` writes it again)" for d in damaged_alarms]
    try:
        store.read_lock()
    except DamagedFile as err:
        problems.append(f"{err} (the next launch replaces it)")
    health = store.inspect(verify="hash", checkpoints="crc")
    counts = {"runs": len(health), "files": sum(len(h.files) for h in health),
              "committed": sum(len((h.record or {}).get("committed") or []) for h in health)}
    damaged_runs = [h for h in health if h.problems]
    for h in damaged_runs:
        problems += [str(p) for p in h.problems]
    print(f"{store.uri}: {len(manifests) + len(damaged_manifests)} sweep manifests, {counts['runs']} runs, "
          f"{counts['files']} files ({counts['committed']} committed data files) checked", file=out)
    for line in problems:
        print(f"damaged: {line}", file=out)
    if not problems:
        print("every file is readable and as committed", file=out)
        return 0
    if not repair:
        print(f"{len(problems)} damaged files in {len(damaged_runs)} runs. `sweep resume store={store.uri}` sets "
              f"them aside and re-runs those runs (or `sweep check store={store.uri} repair=true` only sets "
              "them aside).", file=out)
        return 1
    with locked(store, out=out):
        for h in damaged_runs:
            for line in store.repair(h):
                print(f"repaired: {line}", file=out)
        cluster = manifests[-1]["cluster"] if manifests else None
        if damaged_manifests and cluster is None:
            from sweep.config import compose_config

            cluster = compose_config([])["cluster"]
        if damaged_alarms:
            for line in store.set_aside([d.raw for d in damaged_alarms], "unreadable alarm"):
                print(f"repaired: {line}", file=out)
        for d in damaged_manifests:
            runs = rewrite_manifest(store, d, cluster)
            print(f"repaired: {d.path} set aside and written again with the {len(runs)} runs its records name",
                  file=out)
    print("repaired; `sweep resume` re-runs what was set aside", file=out)
    return 0


def export(store: Store, out: str, *, quantity: str = "trace", sweep: str | None = None, stream=None) -> int:
    """Write the committed snapshot rows of one sweep (default: the latest) as one Parquet
    file in long format (EXPORT_COLUMNS); damaged runs are left out and named."""
    stream = stream or sys.stdout
    if not out.endswith(".parquet"):
        raise UsageError(f"out={out} must name a .parquet file")
    target = Path(out)
    if target.is_dir():
        raise UsageError(f"out={out} is a folder; name a file such as {target / 'trajectories.parquet'}")
    chosen = select(store, sweep)
    runs, damaged = store.read_runs(chosen.run_ids)
    for h in damaged:
        print(f"note: left out {h.run_id}: {h.problems[0]}", file=stream)
    table = store.snapshots(runs=runs, quantity=None if quantity == "all" else quantity)
    if table.num_rows == 0:
        known = sorted(set(store.snapshots(runs=runs)["quantity"].to_pylist()))
        raise UsageError(f"sweep {chosen.label} has no committed snapshot rows of quantity={quantity}; "
                         f"its quantities: {', '.join(known) or 'none yet'} (or quantity=all)")
    table = table.select(EXPORT_COLUMNS).sort_by([("run_id", "ascending"), ("step", "ascending"),
                                                  ("quantity", "ascending"), ("layer_index", "ascending")])
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, str(target))
    except OSError as err:
        raise UsageError(f"cannot write out={out}: {err.strerror or err}") from None
    runs = len(pc.unique(table["run_id"]))
    print(f"{target}: {table.num_rows} rows of {runs} runs (sweep {chosen.label}, quantity={quantity})", file=stream)
    return 0


def forget(store: Store, sweep: str, *, out=None) -> int:
    """Drop a sweep's manifest and the runs no other sweep holds; other sweeps' data untouched."""
    out = out or sys.stdout
    if sweep == "all":
        raise UsageError("sweep forget takes one sweep id, not all")
    with locked(store, out=out):
        chosen = select(store, sweep)
        others = set()
        manifests, _ = store.read_manifests()
        for m in manifests:
            if m["sweep_id"] != chosen.label:
                others |= set(m["runs"])
        mine = [rid for rid in chosen.run_ids if rid not in others]
        for rid in mine:
            store.forget_run(rid)
        store.delete_manifest(chosen.label)
        print(f"forgot sweep {chosen.label}: {len(mine)} runs deleted, {len(chosen.run_ids) - len(mine)} kept "
              "(other sweeps hold them)", file=out)
    return 0

