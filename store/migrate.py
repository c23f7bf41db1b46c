"""``sweep store migrate``: rewrite a schema-1 store as schema 2, in place.

Per run: each committed snapshot chunk becomes its long-format schema-2 rows (the
``trace`` column becomes ``value`` with ``quantity = "trace"``; the run's identity
columns are dropped, the reader joins them from the record), metric chunks are kept
byte for byte, and the record is rewritten with each committed file's size and SHA-256
and the run's configuration. The marker is rewritten last, so an interrupted migration
is simply run again (a run already migrated is recognised and skipped).
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from store import layout
from store.files import Files, StoreError, parquet_bytes, sha256
from store.schema import RUNS_SCHEMA, SCHEMA_VERSION, SNAPSHOTS_SCHEMA
from store.store import Store


def migrate(uri: str) -> list[str]:
    files = Files(str(uri))
    marker = files.path(layout.MARKER)
    try:
        found = json.loads(files.read(marker) or b"{}").get("schema_version")
    except (ValueError, AttributeError):
        raise StoreError(f"{files.shown(marker)} is not a store marker; nothing was migrated") from None
    if found == SCHEMA_VERSION:
        return [f"{uri} already has schema version {SCHEMA_VERSION}; nothing to do"]
    if found != 1:
        raise StoreError(f"{uri} has schema version {found!r}; only version 1 can be migrated")
    store = Store(files)
    lines = []
    for rid in store.run_ids():
        path = store._run(rid, layout.RECORD)
        data = files.read(path)
        if data is None:
            continue
        table = pq.read_table(pa.BufferReader(data), use_threads=False)
        if table.schema.field("committed").type == RUNS_SCHEMA.field("committed").type:
            continue  # migrated by an earlier, interrupted call
        row = table.to_pylist()[0]
        committed = []
        for name in row["committed"] or []:
            raw = files.read(store._run(rid, name))
            if raw is None:
                raise StoreError(f"{files.shown(store._run(rid, name))} is listed by its record but missing; "
                                 "the store cannot be migrated as it is")
            if name.startswith("snapshots/"):
                old = pq.read_table(pa.BufferReader(raw), use_threads=False)
                new = pa.table({
                    "run_id": old["run_id"], "step": old["step"], "epoch": old["epoch"], "layer": old["layer"],
                    "layer_index": old["layer_index"], "numel": old["numel"],
                    "quantity": pa.array(["trace"] * old.num_rows, pa.string()), "value": old["trace"],
                    "stderr": old["stderr"], "probe_values": old["probe_values"],
                }, schema=SNAPSHOTS_SCHEMA)
                raw = parquet_bytes(new)
                files.write(store._run(rid, name), raw)
            committed.append({"name": name, "bytes": len(raw), "sha256": sha256(raw)})
        config = json.loads(row["config"])
        from workers.run_config import configuration

        row.update(committed=committed, configuration=configuration(config),
                   final_metrics=dict(row["final_metrics"] or []))
        store.write_record(row)
        lines.append(f"migrated {rid}: {len(committed)} files")
    files.write(marker, json.dumps({"schema_version": SCHEMA_VERSION}).encode())
    lines.append(f"{uri} now has schema version {SCHEMA_VERSION}")
    return lines
