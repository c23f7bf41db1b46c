"""A store ten times the paper's testbed on a real S3 API server: what each command costs.

3,000 runs (the paper's grid with 200 clean and 100 noisy seeds per configuration), each
written through the run writer as a run writes itself (begin, start, C commits of
117 / C snapshots of 2 layers each, done), into ``tests.cluster.s3server`` (moto) on
127.0.0.1. Then ``sweep status``, ``check``, ``export`` and ``analyze`` run as a user runs
them, each in a fresh process, with the server's request counts read before and after.
Prints the requests (by kind) and wall time of each, and of one commit.

    python -m tests.benchmarks.bench_store_scale [runs_per_noisy=100] [commits=4] [threads=16]

The wall times are of a local moto server on a 2-core machine (its requests cost about a
millisecond of its own CPU each); the request counts are what a real S3 service would see.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from store import RunWriter, Store
from sweep.grid import expand
from sweep.ledger import register
from tests.cluster.s3server import CREDENTIALS, counts
from workers.run_config import identity

STEPS = 117  # the paper's snapshots per run
LAYERS = 2  # a first layer and the head


def checkpoint(committed: list[dict]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("committed.json", json.dumps(committed))
    return buffer.getvalue()


def write_run(store: Store, config: dict, commits: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    writer = RunWriter(store, identity(config))
    layers = ("first", writer.identity["head_layer"])
    writer.begin(host="bench", node="10.0.0.1 ray:bench")
    writer.start(total_steps=STEPS * 100, device="cpu")
    rid = writer.run_id
    for chunk in np.array_split(np.arange(1, STEPS + 1) * 100, commits):
        for step in chunk.tolist():
            values = 10 + step / 1000 + rng.standard_normal(LAYERS)
            writer.log("snapshots", [dict(run_id=rid, step=step, epoch=step / 390, layer=name, layer_index=i, numel=100,
                                          quantity="trace", value=float(v), stderr=0.1, probe_values=[float(v)] * 4)
                                     for i, (name, v) in enumerate(zip(layers, values))])
            writer.log("metrics", [dict(run_id=rid, step=step, epoch=step / 390, scope="snapshot", name="loss",
                                        value=float(rng.random()))])
        writer.commit(int(chunk[-1]), checkpoint=checkpoint)
    writer.done({"test_acc": 0.5})


def main(argv: list[str]) -> int:
    options = dict(a.split("=", 1) for a in argv)
    noisy, commits, threads = (int(options.get(k, d)) for k, d in
                               (("runs_per_noisy", 100), ("commits", 4), ("threads", 16)))
    os.environ.update(CREDENTIALS, AWS_EC2_METADATA_DISABLED="true")
    with tempfile.TemporaryDirectory() as folder:
        ready = Path(folder) / "ready.json"
        server = subprocess.Popen([sys.executable, "-m", "tests.cluster.s3server", "--ready", str(ready)])
        try:
            while not ready.exists():
                time.sleep(0.1)
            url = f"http://127.0.0.1:{json.loads(ready.read_text())['port']}"
            env = {**os.environ, "AWS_ENDPOINT_URL": url}
            os.environ["AWS_ENDPOINT_URL"] = url
            uri = "s3://sweeps/scale"
            args = ["experiment=paper", f"grid.clean_seeds={2 * noisy}", f"grid.noisy_seeds={noisy}",
                    "runtime.data_root=/nonexistent"]
            sweep = expand(args)
            store = Store.open(uri, create=True)
            start = time.perf_counter()
            register(store, sweep, args)
            registered = counts(url, reset=True)
            print(f"{len(sweep.runs)} runs, {commits} commits of {STEPS // commits}-{-(-STEPS // commits)} snapshots x "
                  f"{LAYERS} layers each, on moto at {url}, {time.strftime('%Y-%m-%d')}")
            print(f"  register (manifest + a pending record per run): {registered['total']} requests "
                  f"{_kinds(registered)}, {time.perf_counter() - start:.0f} s")
            start = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda item: write_run(store, item[1], commits, item[0]), enumerate(sweep.runs.values())))
            written = counts(url, reset=True)
            print(f"  write every run ({threads} threads): {written['total']} requests {_kinds(written)} "
                  f"({written['total'] / len(sweep.runs):.1f} per run), {time.perf_counter() - start:.0f} s")
            one = RunWriter(store, identity(next(iter(sweep.runs.values()))))
            one.record = store.read_record(one.run_id)
            one.log("metrics", [dict(run_id=one.run_id, step=1, epoch=0.0, scope="snapshot", name="x", value=1.0)])
            one.log("snapshots", [dict(run_id=one.run_id, step=1, epoch=0.0, layer="l", layer_index=0, numel=1,
                                       quantity="trace", value=1.0, stderr=0.0, probe_values=[1.0])])
            counts(url, reset=True)
            one.commit(1, checkpoint=checkpoint)
            print(f"  one snapshot commit: {_kinds(counts(url, reset=True), total=True)}")
            out = Path(folder)
            for name, words in [("status", ["status", f"store={uri}"]),
                                ("check", ["check", f"store={uri}"]),
                                ("export", ["export", f"store={uri}", f"out={out / 'rows.parquet'}"]),
                                ("analyze", ["analyze", f"store={uri}", f"out={out / 'report'}", "bootstrap=200"])]:
                counts(url, reset=True)
                start = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "sweep", *words], env=env, capture_output=True, text=True)
                wall = time.perf_counter() - start
                found = counts(url, reset=True)
                note = "" if done.returncode in (0, 1) else f" (exit {done.returncode}: {done.stderr.strip()[-300:]})"
                print(f"  sweep {name:<8} {wall:7.1f} s, {_kinds(found, total=True)}{note}")
        finally:
            server.terminate()
            server.wait(30)
    return 0


def _kinds(counts: dict, *, total: bool = False) -> str:
    parts = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "total")
    return f"{counts['total']} requests ({parts})" if total else f"({parts})"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
