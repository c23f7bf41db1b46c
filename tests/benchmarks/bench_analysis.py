"""The analysis of a store the size of the paper's testbed, end to end.

300 runs (6 configurations x (20 clean + 3 x 10 noisy)), 117 snapshots, 62 layers: a
synthetic long-format Parquet file, then `sweep analyze`'s work (read, Table 1, the
3 x 3 sensitivity grid, Cohen's d for every layer with 10,000 bootstrap resamples,
the report with its figures). Prints the wall time of each part and the peak RSS.

    python -m tests.benchmarks.bench_analysis
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from analysis import inputs, report
from analysis.analyze import analyze
from tests.analysis.synthetic import trajectories

CONFIGS = [(a, d) for a in ("resnet18", "resnet34", "vgg11") for d in ("cifar10", "cifar100")]


def paper_sized(path: Path, *, snapshots: int = 117, layers: int = 62, seed: int = 0) -> int:
    names = tuple(f"layer{i}" for i in range(layers - 1)) + ("head",)
    table = trajectories(configs=CONFIGS, steps=snapshots, layers=names, shift=2.0, shift_at=30, seed=seed)
    pq.write_table(table, path)
    return table.num_rows


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "paper.parquet"
        rows = paper_sized(path)
        start = time.perf_counter()
        traj = inputs.from_parquet(str(path))
        traj.heads = {c: "head" for c in set(traj.table["configuration"].to_pylist())}
        read = time.perf_counter()
        results = analyze(traj)
        computed = time.perf_counter()
        report.write(results, Path(folder) / "out")
        written = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{rows:,} rows (300 runs x 117 snapshots x 62 layers)")
    print(f"read {read - start:.1f} s, statistics {computed - read:.1f} s, report {written - computed:.1f} s: "
          f"total {written - start:.1f} s; peak RSS {peak:.0f} MiB")
    summary = results.summary
    print(f"pooled power {summary['power']['rate']:.3f}, false alarm {summary['false_alarm']['rate']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
