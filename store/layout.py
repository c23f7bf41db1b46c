"""Where each file of a store lives, relative to its root: the only place paths are spelled.

::

    _store.json                                 {"schema_version": 2}
    _launch.lock                                JSON: the driver now launching or resuming runs
    manifests/<sweep_id>.json                   every resolved run config of one launched sweep
    runs/<run_id>/record.parquet                one row of RUNS_SCHEMA: the run's ledger entry
    runs/<run_id>/snapshots/aAAA-cCCCCCC.parquet  SNAPSHOTS_SCHEMA rows, attempt A, chunk C
    runs/<run_id>/metrics/aAAA-cCCCCCC.parquet    METRICS_SCHEMA rows
    runs/<run_id>/spectra/aAAA-cCCCCCC.parquet    SPECTRA_SCHEMA rows (runs that log densities)
    runs/<run_id>/pairs/aAAA-cCCCCCC.parquet      PAIRS_SCHEMA rows (runs that log inter-layer blocks)
    runs/<run_id>/checkpoint.pt                 the run's last checkpoint (workers.checkpoint)
    alarms/<run_id>-<key>.parquet               one row of ALARMS_SCHEMA: an alarm `sweep watch` raised
    damaged/<time>/<the path it had>            files set aside by a repair, never deleted
"""

from __future__ import annotations

import hashlib
import re

MARKER = "_store.json"
LOCK = "_launch.lock"
MANIFESTS = "manifests"
RUNS = "runs"
DAMAGED = "damaged"
ALARMS = "alarms"
RECORD = "record.parquet"
CHECKPOINT = "checkpoint.pt"
_CHUNK = re.compile(r"^(snapshots|metrics|spectra|pairs)/a(\d{3,})-c(\d{6,})\.parquet$")


def check_run_id(run_id: str) -> str:
    if not run_id or "/" in run_id or run_id.startswith(".") or not run_id.isprintable():
        raise ValueError(f"invalid run id {run_id!r}")
    return run_id


def run_folder(run_id: str) -> str:
    return f"{RUNS}/{check_run_id(run_id)}"


def chunk_name(kind: str, attempt: int, chunk: int) -> str:
    """A data file's name inside its run's folder.

    >>> chunk_name("snapshots", 2, 5)
    'snapshots/a002-c000005.parquet'
    """
    return f"{kind}/a{attempt:03d}-c{chunk:06d}.parquet"


def chunk_attempt(name: str) -> int | None:
    """The attempt that wrote a data file, from its name; None for other files.

    >>> chunk_attempt("metrics/a012-c000001.parquet"), chunk_attempt("checkpoint.pt")
    (12, None)
    """
    match = _CHUNK.match(name)
    return int(match.group(2)) if match else None


def alarm(run_id: str, layer: str, quantity: str) -> str:
    """The file of the alarm of one run, layer and quantity (the layer and quantity hashed:
    any name is safe in a path).

    >>> alarm("r1", "head", "trace")
    'alarms/r1-59daa1c7f888.parquet'
    """
    key = hashlib.sha256(f"{layer}\0{quantity}".encode()).hexdigest()[:12]
    return f"{ALARMS}/{check_run_id(run_id)}-{key}.parquet"


def manifest(sweep_id: str) -> str:
    if not sweep_id or "/" in sweep_id or sweep_id.startswith("."):
        raise ValueError(f"invalid sweep id {sweep_id!r}")
    return f"{MANIFESTS}/{sweep_id}.json"
