"""The run ledger: which runs a store should hold and what state each is in.

A launch records the sweep's manifest (every resolved run config) and a ``pending``
record for each run that has none. From then on the store alone says what is left:
``resume`` needs no other input, and ``status`` works while no Ray is running.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from sweep.grid import Sweep
from workers.run_config import pending_record
from workers.store import Store, StoreError, now

STATES = ("pending", "running", "stuck", "done", "failed")


def code_version() -> str:
    """The package version, plus the git commit when run from a checkout."""
    version = metadata.version("hessian-sweep")
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+{commit}" if commit else version


def register(store: Store, sweep: Sweep, overrides: list[str]) -> None:
    """Write the sweep's manifest and a pending record for every run without a record."""
    store.write_manifest({
        "sweep_id": sweep.sweep_id, "created": now().isoformat(), "code_version": code_version(),
        "overrides": list(overrides), "cluster": sweep.composed["cluster"], "runs": sweep.runs,
    })
    for rid, config in sweep.runs.items():
        if store.read_record(rid) is None:
            store.write_record(pending_record(config))


def manifest_runs(store: Store) -> tuple[dict[str, dict], dict]:
    """Every run of every sweep launched into ``store``, and the newest cluster settings."""
    manifests = store.read_manifests()
    if not manifests:
        raise StoreError(
            f"{store.uri} has no sweep manifest, so there is nothing to resume; "
            f"start one with `sweep launch experiment=NAME store={store.uri}`"
        )
    runs: dict[str, dict] = {}
    for manifest in manifests:
        runs.update(manifest["runs"])
    return runs, manifests[-1]["cluster"]


@dataclass(frozen=True)
class RunState:
    run_id: str
    arch: str
    dataset: str
    eta: float
    state: str  # one of STATES
    attempt: int
    step: int
    total_steps: int | None
    error: str | None
    heartbeat_age: float | None  # seconds since the last heartbeat of a running run


def states(store: Store, run_ids: list[str] | None = None, *, stale_after: float) -> list[RunState]:
    """The state of each run: its record's status, with ``running`` split into running
    and ``stuck`` (no heartbeat for ``stale_after`` seconds: an interrupted run)."""
    table = store.runs(run_ids=run_ids)
    found = {row["run_id"]: row for row in table.to_pylist()}
    clock = datetime.now(timezone.utc)
    result = []
    for rid in run_ids if run_ids is not None else sorted(found):
        row = found.get(rid)
        if row is None:
            continue
        age = None
        state = row["status"]
        if state == "running":
            age = (clock - row["heartbeat_at"]).total_seconds() if row["heartbeat_at"] else None
            if age is None or age > stale_after:
                state = "stuck"
        result.append(RunState(rid, row["arch"], row["dataset"], row["eta"], state, row["attempt"], row["step"],
                               row["total_steps"], row["error"], age))
    return result
