"""The run ledger: which runs a store should hold, which sweep each belongs to, and what
state each is in.

A launch records the sweep's manifest (every resolved run config) and a ``pending``
record for each run that has none. From then on the store alone says what is left:
``resume`` needs no other input, and ``status`` works while no Ray is running. A sweep
is the set of runs of one manifest; ``status`` and ``analyze`` look at one sweep at a
time (the latest by default), so sweeps with other settings in the same store never mix.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from store import DamagedFile, Store, StoreError, now
from store.schema import record as new_record
from store.sweeps import select

if TYPE_CHECKING:
    from sweep.grid import Sweep

STATES = ("pending", "running", "stuck", "done", "failed", "damaged")


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
    ensure_records(store, sweep.runs)


def ensure_records(store: Store, runs: dict[str, dict]) -> None:
    """A pending record for each run with no record and no checkpoint (a run with a
    checkpoint records itself when it resumes)."""
    from workers.run_config import identity

    known = store.known_runs()
    for rid, config in runs.items():
        if rid not in known:
            store.write_record(new_record(identity(config)))


def manifest_runs(store: Store, sweep: str | None = None) -> tuple[dict[str, dict], dict, list[str]]:
    """Every run of every sweep (or of ``sweep``) with its config, the newest cluster
    settings, and notes. The caller holds the launch lock: a damaged manifest is set
    aside and rewritten from its runs' records (and, for a run whose record is damaged
    too, from the content its checkpoint holds)."""
    manifests, damaged = store.read_manifests()
    if sweep is not None:
        chosen = select(store, sweep).label
        manifests = [m for m in manifests if m["sweep_id"] == chosen]
        damaged = [d for d in damaged if d.raw.endswith(f"/{chosen}.json")]
    notes, runs = [], {}
    for manifest in manifests:
        runs.update(manifest["runs"])
    cluster = manifests[-1]["cluster"] if manifests else None
    if cluster is None:
        from sweep.config import compose_config

        cluster = compose_config([])["cluster"]
        notes.append("no readable manifest holds the cluster settings; using the defaults of conf/cluster")
    for err in damaged:
        found = rewrite_manifest(store, err, cluster, known=set(runs))
        runs.update(found)
        notes.append(f"{err}; set aside and rewritten with the {len(found)} runs its records and checkpoints name")
    if not runs:
        raise StoreError(
            f"{store.uri} has no readable sweep manifest, so there is nothing to resume; "
            f"start one with `sweep launch experiment=NAME store={store.uri}`"
        )
    return runs, cluster, notes


def rewrite_manifest(store: Store, damaged: DamagedFile, cluster: dict, *, known: set[str] = frozenset()) -> dict:
    """Set a damaged manifest aside and write it again from the records that name its sweep
    (and, for runs whose record is damaged too, their checkpoints); return its runs. The
    caller holds the launch lock."""
    import json

    sweep_id = damaged.raw.rsplit("/", 1)[-1].removesuffix(".json")
    found = {h.run_id: json.loads(h.record["config"]) for h in store.inspect()
             if h.record is not None and h.record["sweep_id"] == sweep_id}
    found.update(_from_checkpoints(store, set(store.run_ids()) - set(found) - set(known), found))
    store.set_aside([damaged.raw], str(damaged))
    store.write_manifest({"sweep_id": sweep_id, "created": now().isoformat(), "code_version": code_version(),
                          "overrides": ["(rewritten from the runs' records after damage)"], "cluster": cluster,
                          "runs": found})
    return found


def _from_checkpoints(store: Store, run_ids: set[str], siblings: dict[str, dict]) -> dict[str, dict]:
    """Configs of runs whose record is unreadable, from their checkpoint's content and a
    sibling's runtime section (with the run's own values of the sweep's axes); kept only
    when the content hashes to the run's own id."""
    if not run_ids or not siblings:
        return {}
    import json

    from workers.checkpoint import content_of
    from workers.run_config import run_id

    runtime = next(iter(siblings.values()))["runtime"]
    found = {}
    for rid in sorted(run_ids):
        data = store.read_checkpoint(rid)
        content = content_of(data) if data is not None else None
        if content is None:
            continue
        config = {**json.loads(content), "runtime": dict(runtime)}
        config["runtime"]["axes"] = {key: _value(config, key) for key in runtime.get("axes") or {}}  # its own
        if run_id(config) == rid:
            found[rid] = config
    return found


def _value(config: dict, key: str):
    """The value at a dotted key of a run config (None where there is none)."""
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def repair(store: Store, run_ids: list[str], *, out) -> int:
    """Set aside what is damaged in these runs so that they can run again; return how many
    runs were repaired. Verifies every committed file's hash and each checkpoint's zip
    directory (the driver calls this under the launch lock, before submitting)."""
    repaired = 0
    for health in store.inspect(run_ids, verify="hash", checkpoints="directory"):
        if health.problems:
            for problem in health.problems:
                print(f"damaged: {problem}", file=out, flush=True)
            for line in store.repair(health):
                print(f"repaired: {line}", file=out, flush=True)
            repaired += 1
    return repaired


@dataclass(frozen=True)
class RunState:
    run_id: str
    arch: str | None
    dataset: str | None
    eta: float | None
    configuration: str | None
    axes: str  # the grid.axes values, "key=value key=value" ("" without axes)
    state: str  # one of STATES
    attempt: int
    step: int
    total_steps: int | None
    error: str | None
    heartbeat_age: float | None  # seconds since the last heartbeat of a running run
    where: str | None = None  # the host (and cluster node) of its last attempt; None before any

    @staticmethod
    def where_of(record: dict | None) -> str | None:
        host, node = (record or {}).get("host"), (record or {}).get("node")
        return None if host is None else f"{host} ({node})" if node else host


def states(store: Store, run_ids: list[str] | None = None, *, stale_after: float) -> list[RunState]:
    """The state of each run that has files: its record's status, with ``running`` split
    into running and ``stuck`` (no heartbeat for ``stale_after`` seconds: an interrupted
    run), and ``damaged`` when a file it needs cannot be used (the error names it)."""
    clock = datetime.now(timezone.utc)
    result = []
    for health in store.inspect(run_ids):
        row = health.record
        if row is None and not health.problems:
            continue  # nothing recorded yet
        if health.damaged:
            result.append(RunState(health.run_id, *(None if row is None else row[k] for k in
                                                     ("arch", "dataset", "eta", "configuration")),
                                   _axes(row), "damaged", (row or {}).get("attempt") or 0, (row or {}).get("step") or 0,
                                   (row or {}).get("total_steps"), str(health.problems[0]), None,
                                   RunState.where_of(row)))
            continue
        age = None
        state = row["status"]
        if state == "running":
            age = (clock - row["heartbeat_at"]).total_seconds() if row["heartbeat_at"] else None
            if age is None or age > stale_after:
                state = "stuck"
        result.append(RunState(health.run_id, row["arch"], row["dataset"], row["eta"], row["configuration"],
                               _axes(row), state,
                               row["attempt"], row["step"], row["total_steps"], row["error"], age,
                               RunState.where_of(row)))
    return result


def _axes(record: dict | None) -> str:
    return " ".join(f"{key}={value}" for key, value in ((record or {}).get("axes") or []))
