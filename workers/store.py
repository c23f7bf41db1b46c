"""The Arrow/Parquet store: the one module that knows its schema and its file layout.

Layout under the store root (a local folder or an ``s3://`` URI, via ``pyarrow.fs``)::

    _store.json                              {"schema_version": 1}
    _launch.lock                             JSON: the driver now launching or resuming runs
    manifests/<sweep_id>.json                every resolved run config of one launched sweep
    runs/<run_id>/record.parquet             one row of RUNS_SCHEMA: the run's ledger entry
    runs/<run_id>/snapshots/aAAA-cCCCCC.parquet   SNAPSHOTS_SCHEMA rows, attempt A, chunk C
    runs/<run_id>/metrics/aAAA-cCCCCC.parquet     METRICS_SCHEMA rows
    runs/<run_id>/checkpoint.pt              the last checkpoint (workers.checkpoint)

Commit protocol. Every file is written whole under a name nobody reads yet (a
hidden temporary name renamed into place on a local disk; on S3 a single PUT,
which becomes visible only when complete). A chunk becomes part of the run only
when the run's record lists it in ``committed``, and the record is rewritten only
after the files it lists are written. A worker that dies between writing a chunk
and committing it leaves an orphan that no reader sees; the resumed attempt
rewrites those steps under its own attempt number. So readers see only committed
data, never a row twice, whatever crashed when. A run is done when its record says
``done``, which is written after all of its data.
"""

from __future__ import annotations

import io
import json
import os
import socket
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
LOCK = "_launch.lock"
LOCK_STALE_SECONDS = 60  # a driver refreshes its lock every few seconds (sweep/launch.py)
LOCK_SETTLE_SECONDS = 2.0  # object stores: wait this long before reading a written lock back
STATUSES = ("pending", "running", "done", "failed")
_TIME = pa.timestamp("ms", tz="UTC")
_META = {b"schema_version": str(SCHEMA_VERSION).encode()}

RUNS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("sweep_id", pa.string()),
        ("arch", pa.string()),
        ("dataset", pa.string()),
        ("eta", pa.float64()),
        ("seed", pa.int64()),
        ("role", pa.string()),  # clean (eta = 0, the calibration ensemble) or noisy
        ("head_layer", pa.string()),  # the classification head's group name, for the analysis
        ("config", pa.string()),  # the full resolved run config as JSON
        ("status", pa.string()),  # one of STATUSES
        ("attempt", pa.int32()),
        ("host", pa.string()),
        ("device", pa.string()),
        ("started_at", _TIME),
        ("ended_at", _TIME),
        ("heartbeat_at", _TIME),
        ("error", pa.string()),
        ("step", pa.int64()),  # steps whose data are committed
        ("total_steps", pa.int64()),
        ("committed", pa.list_(pa.string())),  # data files of the run, relative to its folder
        ("final_metrics", pa.map_(pa.string(), pa.float64())),
    ],
    metadata=_META,
)
SNAPSHOTS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("arch", pa.string()),
        ("dataset", pa.string()),
        ("eta", pa.float64()),
        ("seed", pa.int64()),
        ("step", pa.int64()),
        ("epoch", pa.float64()),  # fractional: step / steps per epoch
        ("layer", pa.string()),
        ("layer_index", pa.int32()),
        ("numel", pa.int64()),
        ("trace", pa.float64()),
        ("stderr", pa.float64()),
        ("probe_values", pa.list_(pa.float64())),  # the K per-probe estimates z^T H_ll z
    ],
    metadata=_META,
)
METRICS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("step", pa.int64()),
        ("epoch", pa.float64()),
        ("scope", pa.string()),  # "snapshot" (logged with each trace snapshot) or "epoch"
        ("name", pa.string()),
        ("value", pa.float64()),
    ],
    metadata=_META,
)
KINDS = {"snapshots": SNAPSHOTS_SCHEMA, "metrics": METRICS_SCHEMA}


class StoreError(RuntimeError):
    """A store that cannot be opened, read or written; the message says what to do."""


def now() -> datetime:
    return datetime.now(timezone.utc)


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        if "://" in uri:
            return pafs.FileSystem.from_uri(uri)
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    except (pa.ArrowInvalid, OSError) as err:
        raise StoreError(f"cannot open the store {uri!r}: {err}") from None


class Store:
    """A handle on one store. ``Store.open(uri, create=True)`` makes a new one."""

    def __init__(self, uri: str, fs: pafs.FileSystem, root: str):
        self.uri = uri
        self.fs = fs
        self.root = root.rstrip("/")
        self._local = isinstance(fs, pafs.LocalFileSystem)

    @classmethod
    def open(cls, uri: str, *, create: bool = False) -> Store:
        fs, root = _filesystem(str(uri))
        store = cls(str(uri), fs, root)
        marker = store._path("_store.json")
        info = fs.get_file_info(marker)
        if info.type == pafs.FileType.NotFound:
            if not create:
                raise StoreError(f"there is no store at {uri} (no _store.json); check the path")
            try:
                fs.create_dir(store.root, recursive=True)
                store._write_bytes(marker, json.dumps({"schema_version": SCHEMA_VERSION}).encode())
            except OSError as err:
                raise StoreError(f"cannot write to the store {uri}: {err}. Choose a writable store=PATH.") from None
            return store
        found = json.loads(store._read_bytes(marker)).get("schema_version")
        if found != SCHEMA_VERSION:
            raise StoreError(
                f"the store {uri} has schema version {found}; this version of hessian-sweep reads "
                f"version {SCHEMA_VERSION}. Use a new store=PATH or the matching hessian-sweep version."
            )
        return store

    # -- paths: the only place that builds them --------------------------------
    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _run_path(self, run_id: str, *parts: str) -> str:
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise StoreError(f"invalid run id {run_id!r}")
        return self._path("runs", run_id, *parts)

    # -- bytes ------------------------------------------------------------------
    def _write_bytes(self, path: str, data: bytes) -> None:
        """Write ``data`` so that ``path`` shows either the old content or all of the new."""
        parent = path.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        if not self._local:  # an object store PUT is atomic: visible only when complete
            with self.fs.open_output_stream(path) as out:
                out.write(data)
            return
        temp = f"{parent}/.{path.rsplit('/', 1)[1]}.{uuid.uuid4().hex}.tmp"
        try:
            with self.fs.open_output_stream(temp) as out:
                out.write(data)
            self.fs.move(temp, path)  # rename(2): atomic on POSIX file systems
        finally:
            if self.fs.get_file_info(temp).type != pafs.FileType.NotFound:
                self.fs.delete_file(temp)

    def _read_bytes(self, path: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _read_json(self, path: str) -> dict | None:
        data = self._read_bytes(path)
        return None if data is None else json.loads(data)

    # -- sweep manifests ----------------------------------------------------------
    def write_manifest(self, manifest: dict) -> None:
        """Record a sweep: its id, every resolved run config, the spec hash and code version."""
        self._write_bytes(self._path("manifests", f"{manifest['sweep_id']}.json"),
                          json.dumps(manifest, indent=1, sort_keys=True).encode())

    def read_manifests(self) -> list[dict]:
        """Every sweep launched into this store, oldest first."""
        folder = self._path("manifests")
        if self.fs.get_file_info(folder).type == pafs.FileType.NotFound:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(folder))
        paths = [i.path for i in infos if i.path.endswith(".json") and not i.base_name.startswith(".")]
        manifests = [self._read_json(p) for p in paths]
        return sorted(manifests, key=lambda m: m["created"])

    # -- the launch lock: one driver at a time ------------------------------------
    def acquire_launch_lock(self, owner: dict, *, stale_after: float = LOCK_STALE_SECONDS) -> None:
        """Take the store's launch lock for ``owner`` (host, pid, token) or raise StoreError.

        A lock whose holder stopped refreshing it ``stale_after`` seconds ago, or whose
        process is gone from this host, is taken over. On a local disk the lock file is
        created with O_EXCL (atomic); on S3 the holder writes it and reads it back after
        a settling delay, and the last writer wins (S3 is strongly consistent).
        """
        path = self._path(LOCK)
        current = self._read_json(path)
        if current is not None:
            if not _lock_is_stale(current, stale_after):
                raise StoreError(_lock_message(current, self.uri))
            self.fs.delete_file(path)
        owner = {**owner, "heartbeat": time.time()}
        if self._local:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                raise StoreError(_lock_message(self._read_json(path) or {}, self.uri)) from None
            with os.fdopen(fd, "w") as f:
                json.dump(owner, f)
            return
        self._write_bytes(path, json.dumps(owner).encode())
        time.sleep(LOCK_SETTLE_SECONDS)
        holder = self._read_json(path) or {}
        if holder.get("token") != owner["token"]:
            raise StoreError(_lock_message(holder, self.uri))

    def refresh_launch_lock(self, owner: dict) -> None:
        holder = self._read_json(self._path(LOCK)) or {}
        if holder.get("token") == owner["token"]:
            self._write_bytes(self._path(LOCK), json.dumps({**owner, "heartbeat": time.time()}).encode())

    def release_launch_lock(self, owner: dict) -> None:
        holder = self._read_json(self._path(LOCK)) or {}
        if holder.get("token") == owner["token"]:
            self.fs.delete_file(self._path(LOCK))

    # -- run records (the ledger) ----------------------------------------------
    def write_record(self, record: dict) -> None:
        table = pa.Table.from_pylist([record], schema=RUNS_SCHEMA)
        if record["status"] not in STATUSES:
            raise StoreError(f"status {record['status']!r} is not one of {STATUSES}")
        self._write_bytes(self._run_path(record["run_id"], "record.parquet"), _parquet_bytes(table))

    def read_record(self, run_id: str) -> dict | None:
        data = self._read_bytes(self._run_path(run_id, "record.parquet"))
        if data is None:
            return None
        row = pq.read_table(io.BytesIO(data)).to_pylist()[0]
        row["final_metrics"] = dict(row["final_metrics"] or [])
        return row

    def run_ids(self) -> list[str]:
        runs = self._path("runs")
        if self.fs.get_file_info(runs).type == pafs.FileType.NotFound:
            return []
        found = self.fs.get_file_info(pafs.FileSelector(runs, recursive=True))
        suffix = "/record.parquet"
        return sorted(
            info.path[len(runs) + 1 : -len(suffix)]
            for info in found
            if info.path.endswith(suffix) and info.path.count("/") == runs.count("/") + 2
        )

    # -- data chunks and checkpoints -------------------------------------------
    def write_chunk(self, run_id: str, kind: str, rows: list[dict], *, attempt: int, chunk: int) -> str:
        """Write one chunk of ``kind`` rows; return its name for the record's ``committed``."""
        table = pa.Table.from_pylist(rows, schema=KINDS[kind])
        name = f"{kind}/a{attempt:03d}-c{chunk:06d}.parquet"
        self._write_bytes(self._run_path(run_id, name), _parquet_bytes(table))
        return name

    def write_checkpoint(self, run_id: str, data: bytes) -> None:
        self._write_bytes(self._run_path(run_id, "checkpoint.pt"), data)

    def read_checkpoint(self, run_id: str) -> bytes | None:
        return self._read_bytes(self._run_path(run_id, "checkpoint.pt"))

    # -- the reader API (analysis, status) ----------------------------------------
    def runs(
        self,
        *,
        run_ids: list[str] | None = None,
        arch: str | None = None,
        dataset: str | None = None,
        eta: float | None = None,
        status: str | None = None,
    ) -> pa.Table:
        """The runs table: one row per run, its latest committed record."""
        ids = self.run_ids() if run_ids is None else list(run_ids)
        rows = [r for r in map(self.read_record, ids) if r is not None]
        table = pa.Table.from_pylist(rows, schema=RUNS_SCHEMA)
        for column, value in (("arch", arch), ("dataset", dataset), ("eta", eta), ("status", status)):
            if value is not None:
                table = table.filter(pc.equal(table[column], value))
        return table

    def _committed_files(self, runs: pa.Table, kind: str) -> list[str]:
        return [
            self._run_path(run_id, name)
            for run_id, names in zip(runs["run_id"].to_pylist(), runs["committed"].to_pylist())
            for name in names or []
            if name.startswith(kind + "/")
        ]

    def _read_kind(self, kind: str, runs: pa.Table, row_filter) -> pa.Table:
        files = self._committed_files(runs, kind)
        if not files:
            return KINDS[kind].empty_table()
        dataset = pads.dataset(files, schema=KINDS[kind], format="parquet", filesystem=self.fs)
        return dataset.to_table(filter=row_filter)

    def snapshots(self, *, layer: str | None = None, **run_filters) -> pa.Table:
        """Committed snapshot rows (long format) of the runs that ``runs(**run_filters)``
        selects (run_ids, arch, dataset, eta, status), optionally of one layer."""
        row_filter = None if layer is None else pads.field("layer") == layer
        return self._read_kind("snapshots", self.runs(**run_filters), row_filter)

    def metrics(self, *, scope: str | None = None, **run_filters) -> pa.Table:
        """Committed metric rows (long format: scope, name, value per step) of the runs that
        ``runs(**run_filters)`` selects, optionally of one scope (``snapshot`` or ``epoch``)."""
        row_filter = None if scope is None else pads.field("scope") == scope
        return self._read_kind("metrics", self.runs(**run_filters), row_filter)


def _lock_is_stale(lock: dict, stale_after: float) -> bool:
    if time.time() - lock.get("heartbeat", 0) > stale_after:
        return True
    if lock.get("host") == socket.gethostname():
        try:
            os.kill(int(lock["pid"]), 0)
        except ProcessLookupError:
            return True  # the driver that held it is gone from this machine
        except (PermissionError, KeyError, ValueError):
            return False
    return False


def _lock_message(lock: dict, uri: str) -> str:
    age = time.time() - lock.get("heartbeat", time.time())
    return (
        f"another sweep driver (pid {lock.get('pid')} on {lock.get('host')}, last seen {age:.0f} s ago) is "
        f"launching runs into {uri}; nothing was launched. Wait for it to finish (`sweep status store={uri}` "
        f"shows progress); if it died on another machine, its lock expires {LOCK_STALE_SECONDS} s after its "
        "last heartbeat."
    )


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()
