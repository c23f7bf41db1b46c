"""A handle on one store: open it, read it, and find out what in it is damaged.

Readers see only committed data: a data file counts when a readable record lists it,
and it is used only when its size (always) and SHA-256 (``verify="hash"``) are what
the record says. A run whose record or data cannot be used is reported, never fatal:
``inspect`` says which file and why, ``runs``/``snapshots``/``metrics`` leave such runs
out (``damaged_runs`` names them), and ``repair`` sets the damaged files aside under
``damaged/`` so the run can be run again (see docs/store.md).
"""

from __future__ import annotations

import json
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from store import conditional, layout
from store.files import DamagedFile, Files, StoreError, parquet_bytes, read_parquet, sha256
from store.schema import ALARMS_SCHEMA, IDENTITY, JOINED, KINDS, RUNS_SCHEMA, SCHEMA_VERSION, STATUSES
from store.schema import record as new_record

READERS = 16  # an object store's runs inspected at once (requests in flight); a local disk: one at a time


def now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class RunHealth:
    """What ``Store.inspect`` found for one run."""

    run_id: str
    record: dict | None  # None when there is none or it is damaged
    problems: tuple[DamagedFile, ...] = ()
    files: dict = field(default_factory=dict)  # name -> size of every file in the run's folder

    @property
    def record_damaged(self) -> bool:
        return any(p.path.endswith("/" + layout.RECORD) for p in self.problems)

    @property
    def checkpoint_damaged(self) -> bool:
        return any(p.path.endswith("/" + layout.CHECKPOINT) for p in self.problems)

    @property
    def data_damaged(self) -> bool:
        return any(not p.path.endswith(("/" + layout.RECORD, "/" + layout.CHECKPOINT)) for p in self.problems)

    @property
    def usable(self) -> bool:
        """Its record and data can be read (a done run needs no checkpoint)."""
        return self.record is not None and not self.data_damaged

    @property
    def damaged(self) -> bool:
        """Something the run needs is damaged: its record, its data, or the checkpoint an
        unfinished run resumes from."""
        if self.record_damaged or self.data_damaged:
            return True
        return self.checkpoint_damaged and (self.record or {}).get("status") != "done"


class Store:
    """``Store.open(uri)``; ``Store.open(uri, create=True)`` makes a new one."""

    def __init__(self, files: Files):
        self.files = files
        self.uri = files.uri

    @classmethod
    def open(cls, uri: str, *, create: bool = False) -> Store:
        files = Files(str(uri))
        store = cls(files)
        marker = files.path(layout.MARKER)
        data = files.read(marker)
        if data is None:
            if files.exists(files.path(layout.RUNS)) or files.exists(files.path(layout.MANIFESTS)):
                raise StoreError(f"{files.shown(marker)} is missing, but {uri} holds runs; write "
                                 f'{{"schema_version": {SCHEMA_VERSION}}} into it to open the store')
            if not create:
                raise StoreError(f"there is no store at {uri} (no {layout.MARKER}); check the path")
            files.write(marker, json.dumps({"schema_version": SCHEMA_VERSION}).encode())
            return store
        try:
            found = json.loads(data)["schema_version"]
        except (ValueError, TypeError, KeyError):
            raise DamagedFile(files.shown(marker), "not the store's JSON marker",
                              f'Write {{"schema_version": {SCHEMA_VERSION}}} into it to open the store') from None
        if found == 1:
            raise StoreError(f"the store {uri} has schema version 1; this version of hessian-sweep reads version "
                             f"{SCHEMA_VERSION}. Migrate it in place with `sweep store migrate store={uri}`.")
        if found != SCHEMA_VERSION:
            raise StoreError(
                f"the store {uri} has schema version {found}; this version of hessian-sweep reads version "
                f"{SCHEMA_VERSION}. Use a new store=PATH or the matching hessian-sweep version."
            )
        return store

    def _run(self, run_id: str, *parts: str) -> str:
        try:
            return self.files.path(layout.run_folder(run_id), *parts)
        except ValueError as err:
            raise StoreError(str(err)) from None

    def shown(self, path: str) -> str:
        return self.files.shown(path)

    # -- run records --------------------------------------------------------------
    def write_record(self, record: dict) -> None:
        if record["status"] not in STATUSES:
            raise StoreError(f"status {record['status']!r} is not one of {STATUSES}")
        path = self._run(record["run_id"], layout.RECORD)
        self.files.write(path, parquet_bytes(pa.Table.from_pylist([record], schema=RUNS_SCHEMA)))

    def read_record(self, run_id: str) -> dict | None:
        """The run's record, None when it has none; raises DamagedFile when unreadable."""
        path = self._run(run_id, layout.RECORD)
        data = self.files.read(path)
        if data is None:
            return None
        table = read_parquet(data, RUNS_SCHEMA, shown=self.shown(path))
        rows = table.to_pylist()
        if len(rows) != 1 or rows[0]["run_id"] != run_id or rows[0]["status"] not in STATUSES:
            raise DamagedFile(self.shown(path), "not the single record of this run")
        row = rows[0]
        row["final_metrics"] = dict(row["final_metrics"] or [])
        return row

    def run_ids(self) -> list[str]:
        return sorted(self.listing())

    def listing(self) -> dict[str, dict[str, int]]:
        """run id -> {file name in its folder: size}, from one recursive listing."""
        base = self.files.path(layout.RUNS) + "/"
        runs: dict[str, dict[str, int]] = {}
        for entry in self.files.list(self.files.path(layout.RUNS), recursive=True):
            run_id, _, name = entry.path[len(base):].partition("/")
            runs.setdefault(run_id, {})[name] = entry.size
        return {rid: names for rid, names in runs.items() if layout.RECORD in names or layout.CHECKPOINT in names
                or any(layout.chunk_attempt(n) for n in names)}

    def known_runs(self) -> set[str]:
        """Runs with a record or a checkpoint (a run with only a checkpoint records itself
        when it resumes)."""
        return {rid for rid, names in self.listing().items() if {layout.RECORD, layout.CHECKPOINT} & set(names)}

    def run_files(self, run_id: str) -> dict[str, int]:
        """{name: size} of every file in the run's folder."""
        base = self._run(run_id) + "/"
        return {e.path[len(base):]: e.size for e in self.files.list(self._run(run_id), recursive=True)}

    # -- health -------------------------------------------------------------------
    def inspect(self, run_ids: list[str] | None = None, *, verify: str = "size",
                checkpoints: str = "none") -> list[RunHealth]:
        """Check each run's files. ``verify``: ``size`` compares every committed file's size
        with its record (one listing for the whole store), ``hash`` also reads it and
        compares its SHA-256. ``checkpoints``: ``none``, ``directory`` (each checkpoint's zip
        directory opens: catches truncation and garbage, reading only its end) or ``crc``
        (every member of every checkpoint read and checked). On an object store READERS runs
        are inspected at once (each is a few requests that mostly wait on the network)."""
        listing = self.listing()

        def one(rid: str) -> RunHealth:
            files = listing.get(rid, {})
            problems: list[DamagedFile] = []
            record = None
            if layout.RECORD in files:
                try:
                    record = self.read_record(rid)
                except DamagedFile as err:
                    problems.append(err)
            if record is not None:
                problems += self._check_committed(rid, record["committed"], files, verify=verify)
            if checkpoints != "none" and layout.CHECKPOINT in files:
                problem = self.check_checkpoint(rid, full=checkpoints == "crc")
                problems += [problem] if problem else []
            return RunHealth(rid, record, tuple(problems), files)

        ids = sorted(listing) if run_ids is None else list(run_ids)
        if self.files.local or len(ids) < 2:
            return [one(rid) for rid in ids]
        with ThreadPoolExecutor(min(READERS, len(ids))) as pool:
            return list(pool.map(one, ids))

    def _check_committed(self, run_id: str, committed: list[dict], files: dict[str, int], *,
                         verify: str) -> list[DamagedFile]:
        problems = []
        for entry in committed:
            path = self._run(run_id, entry["name"])
            size = files.get(entry["name"])
            if size != entry["bytes"]:  # the listing may predate a commit made since: look again
                size = self.files.size(path)
            if size is None:
                problems.append(DamagedFile(self.shown(path), "listed in the run's record but missing"))
            elif size != entry["bytes"]:
                problems.append(DamagedFile(self.shown(path), f"{size} bytes where its record says {entry['bytes']} "
                                            "(truncated or overwritten)"))
            elif verify == "hash" and sha256(self.files.read(path) or b"") != entry["sha256"]:
                problems.append(DamagedFile(self.shown(path), "its content differs from what was committed "
                                            "(SHA-256 mismatch)"))
        return problems

    def check_checkpoint(self, run_id: str, *, full: bool = False) -> DamagedFile | None:
        """None when the checkpoint is a readable archive (``torch.save`` writes a zip)."""
        path = self._run(run_id, layout.CHECKPOINT)
        try:
            with self.files.open_input_file(path) as f, zipfile.ZipFile(f) as archive:
                bad = archive.testzip() if full else None
        except FileNotFoundError:
            return None
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
            return DamagedFile(self.shown(path), f"not a readable checkpoint ({err})")
        if bad is not None:
            return DamagedFile(self.shown(path), f"its member {bad} fails its CRC check")
        return None

    def next_attempt(self, run_id: str, record: dict | None) -> int:
        """One more than any attempt the run's record or its data files know of, so a new
        attempt never writes a name an older one used, even after its record was lost."""
        seen = [layout.chunk_attempt(name) or 0 for name in self.run_files(run_id)]
        return max([0, *seen, (record or {}).get("attempt") or 0]) + 1

    # -- repair --------------------------------------------------------------------
    def set_aside(self, paths: list[str], reason: str) -> list[str]:
        """Move files under ``damaged/<time>/`` (their paths kept), with a note of why."""
        stamp = now().strftime("%Y%m%dT%H%M%S.%fZ")
        moved = []
        for path in paths:
            if not self.files.exists(path):
                continue
            target = self.files.path(layout.DAMAGED, stamp, self.files.relative(path))
            self.files.move(path, target)
            moved.append(self.shown(target))
        if moved:
            self.files.write(self.files.path(layout.DAMAGED, stamp, "WHY.txt"), (reason + "\n").encode())
        return moved

    def repair(self, health: RunHealth) -> list[str]:
        """Make a damaged run runnable again; return one line per thing done.

        Only the record damaged: it is set aside, and the next attempt resumes from the
        checkpoint (which lists the committed data). Data damaged, or the checkpoint of a
        run not done: every file of the run is set aside and a pending record rewritten
        from the old one when it was readable (else the driver registers it again), so
        the run restarts from step 0. The checkpoint of a done run damaged: only it is
        set aside (the analysis needs no checkpoint).
        """
        if not health.problems:
            return []
        reason = "\n".join(str(p) for p in health.problems)
        record = health.record
        status = (record or {}).get("status")
        if not health.data_damaged and health.checkpoint_damaged and not health.record_damaged and status == "done":
            moved = self.set_aside([self._run(health.run_id, layout.CHECKPOINT)], reason)
            return [f"{health.run_id}: set aside its damaged checkpoint ({', '.join(moved)}); the run stays done"]
        if health.record_damaged and not health.data_damaged and not health.checkpoint_damaged \
                and layout.CHECKPOINT in health.files:
            moved = self.set_aside([self._run(health.run_id, layout.RECORD)], reason)
            return [f"{health.run_id}: set aside its damaged record ({', '.join(moved)}); it resumes from its "
                    "checkpoint"]
        paths = [self._run(health.run_id, name) for name in health.files]
        moved = self.set_aside(paths, reason)
        if record is not None:
            self.write_record(new_record({name: record[name] for name, _ in IDENTITY}, attempt=record["attempt"],
                                         error=f"restarted from step 0: {reason.splitlines()[0]}"))
        return [f"{health.run_id}: set aside {len(moved)} files under {layout.DAMAGED}/; it restarts from step 0"]

    def forget_run(self, run_id: str) -> None:
        self.files.delete_tree(self._run(run_id))

    # -- data files ------------------------------------------------------------------
    def write_data(self, run_id: str, name: str, data: bytes) -> dict:
        """Write one file of a run; return its committed entry (name, bytes, sha256)."""
        self.files.write(self._run(run_id, name), data)
        return {"name": name, "bytes": len(data), "sha256": sha256(data)}

    def read_checkpoint(self, run_id: str) -> bytes | None:
        return self.files.read(self._run(run_id, layout.CHECKPOINT))

    def write_checkpoint(self, run_id: str, data: bytes) -> None:
        self.files.write(self._run(run_id, layout.CHECKPOINT), data)

    def checkpoint_path(self, run_id: str) -> str:
        return self.shown(self._run(run_id, layout.CHECKPOINT))

    # -- sweep manifests ---------------------------------------------------------------
    def write_manifest(self, manifest: dict) -> None:
        try:
            path = self.files.path(layout.manifest(manifest["sweep_id"]))
        except ValueError as err:
            raise StoreError(str(err)) from None
        self.files.write(path, json.dumps(manifest, indent=1, sort_keys=True).encode())

    def read_manifests(self) -> tuple[list[dict], list[DamagedFile]]:
        """Every readable sweep manifest, oldest first, and the ones that are not."""
        manifests, damaged = [], []
        for entry in self.files.list(self.files.path(layout.MANIFESTS)):
            if not entry.path.endswith(".json"):
                continue
            try:
                manifest = json.loads(self.files.read(entry.path) or b"")
                if not (isinstance(manifest, dict) and isinstance(manifest.get("runs"), dict)
                        and isinstance(manifest.get("created"), str)
                        and entry.path.endswith(f"/{manifest.get('sweep_id')}.json")):
                    raise ValueError("not a sweep manifest")
            except (ValueError, UnicodeDecodeError) as err:
                damaged.append(DamagedFile(self.shown(entry.path), f"not a readable sweep manifest ({err})",
                                           raw=entry.path))
                continue
            manifests.append(manifest)
        return sorted(manifests, key=lambda m: m["created"]), damaged

    def manifest_path(self, sweep_id: str) -> str:
        return self.files.path(layout.manifest(sweep_id))

    def delete_manifest(self, sweep_id: str) -> None:
        self.files.delete(self.manifest_path(sweep_id))

    # -- alarms raised while runs train (sweep watch) ------------------------------------
    def write_alarm(self, row: dict) -> None:
        """Record one alarm (ALARMS_SCHEMA), atomically; the same run, layer and quantity
        again replaces it."""
        table = pa.Table.from_pylist([{**row, "raised_at": row.get("raised_at") or now()}], schema=ALARMS_SCHEMA)
        self.files.write(self.files.path(layout.alarm(row["run_id"], row["layer"], row["quantity"])),
                         parquet_bytes(table))

    def read_alarms(self, run_ids: list[str] | None = None) -> tuple[pa.Table, list[DamagedFile]]:
        """Every readable alarm (of ``run_ids`` only, when given), and the alarm files that are not."""
        tables, damaged = [], []
        for entry in self.files.list(self.files.path(layout.ALARMS)):
            if not entry.path.endswith(".parquet"):
                continue
            try:
                tables.append(read_parquet(self.files.read(entry.path) or b"", ALARMS_SCHEMA,
                                           shown=self.shown(entry.path)))
            except DamagedFile as err:
                damaged.append(DamagedFile(err.path, err.problem, raw=entry.path))
        alarms = pa.concat_tables(tables) if tables else ALARMS_SCHEMA.empty_table()
        if run_ids is not None:
            alarms = alarms.filter(pc.is_in(alarms["run_id"], pa.array(run_ids, pa.string())))
        return alarms, damaged

    # -- the launch lock file (its protocol: sweep/lock.py) -----------------------------
    # Compare-and-swap on one file (store.conditional): each call names the version it
    # expects by the tag a read, create or replace returned.
    @property
    def lock_path(self) -> str:
        return self.files.path(layout.LOCK)

    def read_lock(self) -> dict | None:
        """The lock's content, None when there is none; raises DamagedFile when unreadable."""
        found = self.read_lock_tagged()
        return None if found is None else found[0]

    def read_lock_tagged(self) -> tuple[dict, str] | None:
        """The lock and its tag, None when there is none; raises DamagedFile (with ``tag``
        set) when it cannot be read."""
        found = conditional.read(self.files, self.lock_path)
        if found is None:
            return None
        data, tag = found
        try:
            lock = json.loads(data)
            if not isinstance(lock, dict) or not {"host", "pid", "token", "heartbeat"} <= set(lock):
                raise ValueError("not a launch lock")
        except (ValueError, UnicodeDecodeError) as err:
            damaged = DamagedFile(self.shown(self.lock_path), f"not a readable launch lock ({err})")
            damaged.tag = tag
            raise damaged from None
        return lock, tag

    def create_lock(self, lock: dict) -> str | None:
        """Write the lock unless there is one (atomic); its tag, or None."""
        return conditional.create(self.files, self.lock_path, json.dumps(lock).encode())

    def replace_lock(self, lock: dict, tag: str) -> str | None:
        """Write the lock if it is still the version ``tag`` (atomic); its new tag, or None."""
        return conditional.replace(self.files, self.lock_path, json.dumps(lock).encode(), tag)

    def write_lock(self, lock: dict) -> None:
        """Write the lock unconditionally (object stores without conditional writes)."""
        self.files.write(self.lock_path, json.dumps(lock).encode())

    def delete_lock(self, tag: str) -> bool:
        """Delete the lock if it is still the version ``tag``."""
        return conditional.delete(self.files, self.lock_path, tag)

    # -- the reader API (analysis, status, export) ----------------------------------------
    def read_runs(self, run_ids: list[str] | None = None) -> tuple[pa.Table, list[RunHealth]]:
        """From one inspection: the runs whose record and data can be used, as a table, and
        the runs that cannot, with what is wrong."""
        health = self.inspect(run_ids)
        table = pa.Table.from_pylist([h.record for h in health if h.usable], schema=RUNS_SCHEMA)
        return table, [h for h in health if h.problems and not h.usable]

    def runs(self, *, run_ids: list[str] | None = None, arch: str | None = None, dataset: str | None = None,
             eta: float | None = None, status: str | None = None, sweep_id: str | None = None) -> pa.Table:
        """One row per run whose record and data can be used (the others: ``damaged_runs``)."""
        table = self.read_runs(run_ids)[0]
        filters = {"arch": arch, "dataset": dataset, "eta": eta, "status": status, "sweep_id": sweep_id}
        for column, value in filters.items():
            if value is not None:
                table = table.filter(pc.equal(table[column], value))
        return table

    def damaged_runs(self, run_ids: list[str] | None = None) -> list[RunHealth]:
        """Runs whose record or committed data cannot be used, with what is wrong."""
        return self.read_runs(run_ids)[1]

    def snapshots(self, *, layer: str | None = None, quantity: str | None = None, runs: pa.Table | None = None,
                  **run_filters) -> pa.Table:
        """Committed snapshot rows (long format: one per run, step, layer and quantity),
        with the run's identity joined, of ``runs`` (a table from ``runs``/``read_runs``,
        already read) or of the runs ``runs(**run_filters)`` selects."""
        row_filter = None
        for column, value in (("layer", layer), ("quantity", quantity)):
            if value is not None:
                term = pads.field(column) == value
                row_filter = term if row_filter is None else row_filter & term
        return self._read_kind("snapshots", self.runs(**run_filters) if runs is None else runs, row_filter)

    def metrics(self, *, scope: str | None = None, runs: pa.Table | None = None, **run_filters) -> pa.Table:
        """Committed metric rows (scope, name, value per step), the run's identity joined."""
        row_filter = None if scope is None else pads.field("scope") == scope
        return self._read_kind("metrics", self.runs(**run_filters) if runs is None else runs, row_filter)

    def spectra(self, *, layer: str | None = None, runs: pa.Table | None = None, **run_filters) -> pa.Table:
        """Committed spectral-density rows (one per run, step, block and Lanczos run),
        the run's identity joined."""
        row_filter = None if layer is None else pads.field("layer") == layer
        return self._read_kind("spectra", self.runs(**run_filters) if runs is None else runs, row_filter)

    def pairs(self, *, operator: str | None = None, runs: pa.Table | None = None, **run_filters) -> pa.Table:
        """Committed inter-layer block rows (one per run, step, operator and pair of layers),
        the run's identity joined."""
        row_filter = None if operator is None else pads.field("operator") == operator
        return self._read_kind("pairs", self.runs(**run_filters) if runs is None else runs, row_filter)

    def _read_kind(self, kind: str, runs: pa.Table, row_filter) -> pa.Table:
        files = [self._run(rid, entry["name"])
                 for rid, committed in zip(runs["run_id"].to_pylist(), runs["committed"].to_pylist())
                 for entry in committed if entry["name"].startswith(kind + "/")]
        if files:
            try:
                dataset = pads.dataset(files, schema=KINDS[kind], format="parquet", filesystem=self.files.fs)
                table = dataset.to_table(filter=row_filter)
            except (pa.ArrowException, OSError):
                raise self._first_unreadable(files, kind) from None
        else:
            table = KINDS[kind].empty_table()
        return _join_identity(table, runs)

    def _first_unreadable(self, paths: list[str], kind: str) -> StoreError:
        for path in paths:
            try:
                read_parquet(self.files.read(path) or b"", KINDS[kind], shown=self.shown(path))
            except DamagedFile as err:
                return DamagedFile(err.path, err.problem, "`sweep check` lists every damaged file; "
                                   "`sweep resume` re-runs the runs they belong to")
        return StoreError(f"cannot read the {kind} of {self.uri}")


def _join_identity(table: pa.Table, runs: pa.Table) -> pa.Table:
    """Insert the run identity columns (JOINED) after run_id, row order kept."""
    index = pc.index_in(table["run_id"], value_set=runs["run_id"])
    for offset, name in enumerate(JOINED):
        table = table.add_column(1 + offset, runs.schema.field(name), runs[name].take(index))
    return table
