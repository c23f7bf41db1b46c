"""``python -m tests.cluster.dump STORE OUT.json``: a store's records and committed snapshot
rows as JSON, read where the store is reachable (a host of the test cluster)."""

import json
import sys

from store import Store

RECORD = ("run_id", "status", "attempt", "host", "node", "step", "total_steps", "started_at", "ended_at", "error")


def dump(uri: str) -> dict:
    store = Store.open(uri)
    runs, damaged = store.read_runs()
    snapshots = store.snapshots(runs=runs).drop_columns(["sweep_id"]).sort_by(
        [("run_id", "ascending"), ("step", "ascending"), ("quantity", "ascending"), ("layer", "ascending")])
    return {
        "records": [{k: (str(r[k]) if k.endswith("_at") and r[k] is not None else r[k]) for k in RECORD}
                    for r in runs.to_pylist()],
        "damaged": [str(p) for h in damaged for p in h.problems],
        "snapshots": snapshots.to_pylist(),
    }


if __name__ == "__main__":
    with open(sys.argv[2], "w") as out:
        json.dump(dump(sys.argv[1]), out, default=str)
