"""The run writer: a run's whole life in the store, and the commit protocol.

    writer = RunWriter(store, identity)           # identity: schema.IDENTITY columns
    if writer.finished(): ...                     # done before: nothing to do
    with writer:                                  # any exception: the record says failed, and why
        saved = writer.begin(host=..., node=...)  # record `running` before set-up; checkpoint bytes
        ...set-up (data, device, model)...        # a failure here is recorded like any other
        writer.start(total_steps=..., device=..., step=..., committed=..., head_layer=...)
        writer.log("snapshots", rows); writer.log("metrics", rows); writer.heartbeat()
        writer.commit(step, checkpoint=lambda committed: bytes)
        writer.done(final_metrics)

Commit protocol. The rows logged since the last commit are written as one chunk per
kind under a name no reader uses yet (``aAAA-cCCCCCC``: attempt, chunk); then the
checkpoint, which lists every committed file; then the record, which lists them too
with their sizes and SHA-256. The record is the commit: a reader uses only the files a
record lists, so a worker that dies between writing a chunk and committing it leaves an
orphan nobody reads, and the next attempt writes those steps again under its own
attempt number (always higher than any name in the folder). A run is done when its
record says ``done``, written after all of its data.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pyarrow as pa

from store import layout
from store.files import DamagedFile, StoreError, parquet_bytes, sha256
from store.schema import KINDS, record
from store.store import Store, now

HEARTBEAT_SECONDS = 30.0  # besides every commit; `sweep status` calls a silent running run stuck


class RunWriter:
    def __init__(self, store: Store, identity: dict):
        self.store, self.identity, self.run_id = store, identity, identity["run_id"]
        self.record: dict | None = None
        self.rows: dict[str, list[dict]] = {kind: [] for kind in KINDS}
        self.chunk = 0
        self._beat = time.monotonic()

    def finished(self) -> dict | None:
        """The record of this run when it is done (launching twice does nothing new)."""
        try:
            existing = self.store.read_record(self.run_id)
        except DamagedFile:
            return None
        return existing if existing and existing["status"] == "done" else None

    def begin(self, *, host: str, node: str | None = None) -> bytes | None:
        """Open a new attempt: the record says ``running`` before any set-up, so a set-up
        failure is recorded too; ``host`` and ``node`` say where it runs. Returns the
        checkpoint's bytes, None when there is none.
        A damaged record is set aside (the checkpoint lists what was committed)."""
        try:
            previous = self.store.read_record(self.run_id)
        except DamagedFile as err:
            self.store.set_aside([self.store._run(self.run_id, layout.RECORD)], str(err))
            previous = None
        self.record = record(
            self.identity, status="running", attempt=self.store.next_attempt(self.run_id, previous), host=host,
            node=node, started_at=now(), heartbeat_at=now(),
            # committed data stay visible while this attempt sets up
            step=(previous or {}).get("step") or 0, committed=list((previous or {}).get("committed") or []),
            total_steps=(previous or {}).get("total_steps"),
        )
        self.store.write_record(self.record)
        return self.store.read_checkpoint(self.run_id)

    def start(self, *, total_steps: int, device: str, step: int = 0, committed: list | None = None,
              head_layer: str | None = None) -> None:
        """Set-up done: training starts at ``step`` with the checkpoint's ``committed`` files
        (from step 0: nothing committed). Each listed file must be there, whole. ``head_layer``:
        the classification head, when only the built model could say (a user's model)."""
        try:
            entries = [self._entry(e) for e in (committed or [])]
        except DamagedFile as err:  # the checkpoint is no use without its data: the next attempt starts over
            self.store.set_aside([self.store._run(self.run_id, layout.CHECKPOINT)], str(err))
            raise DamagedFile(err.path, f"{err.problem}; the checkpoint that lists it was set aside, so the "
                              "next attempt (`sweep resume`) restarts this run from step 0") from None
        if head_layer is not None:
            self.identity["head_layer"] = self.record["head_layer"] = head_layer
        self.record.update(total_steps=total_steps, device=device, step=step, committed=entries,
                           heartbeat_at=now())
        self.store.write_record(self.record)

    def _entry(self, entry) -> dict:
        name = entry if isinstance(entry, str) else entry["name"]  # a schema-1 checkpoint lists names
        path = self.store._run(self.run_id, name)
        data = self.store.files.read(path)
        shown = self.store.shown(path)
        if data is None:
            raise DamagedFile(shown, "the checkpoint lists it but it is missing")
        if not isinstance(entry, str) and (len(data) != entry["bytes"] or sha256(data) != entry["sha256"]):
            raise DamagedFile(shown, "its content differs from what was committed")
        return {"name": name, "bytes": len(data), "sha256": sha256(data)}

    def log(self, kind: str, rows: list[dict]) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; one of {sorted(KINDS)}")
        self.rows[kind] += rows

    def heartbeat(self) -> None:
        """Refresh the record's heartbeat when it is older than HEARTBEAT_SECONDS."""
        if time.monotonic() - self._beat > HEARTBEAT_SECONDS:
            self.record["heartbeat_at"], self._beat = now(), time.monotonic()
            self.store.write_record(self.record)

    def commit(self, step: int, *, checkpoint: Callable[[list[dict]], bytes]) -> None:
        """Chunks, then the checkpoint (``checkpoint(committed)`` gives its bytes), then the record."""
        committed = list(self.record["committed"])
        for kind, rows in self.rows.items():
            if rows:
                table = pa.Table.from_pylist(rows, schema=KINDS[kind])
                name = layout.chunk_name(kind, self.record["attempt"], self.chunk)
                committed.append(self.store.write_data(self.run_id, name, parquet_bytes(table)))
        self.store.write_checkpoint(self.run_id, checkpoint(committed))
        self.record.update(step=step, committed=committed, heartbeat_at=now())
        self.store.write_record(self.record)
        self.rows = {kind: [] for kind in KINDS}
        self.chunk += 1
        self._beat = time.monotonic()

    def done(self, final_metrics: dict[str, float]) -> dict:
        self.record.update(status="done", ended_at=now(), heartbeat_at=now(), error=None,
                           final_metrics=final_metrics)
        self.store.write_record(self.record)  # after all the data: the completion marker
        return self.record

    def failed(self, error: BaseException) -> None:
        """Record the failure; keeps the committed list, so committed data stay readable."""
        if self.record is None:
            return  # nothing was begun: the store could not be written
        message = str(error).strip() or type(error).__name__
        self.record.update(status="failed", ended_at=now(), error=f"{type(error).__name__}: {message}")
        try:
            self.store.write_record(self.record)
        except StoreError:
            pass  # the store cannot be written either: the original error is what the caller sees

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if isinstance(error, Exception):
            self.failed(error)
