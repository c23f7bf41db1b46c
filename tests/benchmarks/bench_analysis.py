"""The analysis of a store the size of the paper's testbed, end to end, side by side with
another revision of the code.

300 runs (6 configurations x (20 clean + 3 x 10 noisy)), 117 snapshots, 62 layers: a
synthetic long-format Parquet file, then `sweep analyze`'s work (read, Table 1, the
3 x 3 sensitivity grid, Cohen's d for every layer with 10,000 bootstrap resamples,
the report with its figures), for the head layer and for ``layer=all``, each in a fresh
process. Prints the wall time of each part and the peak RSS.

    python -m tests.benchmarks.bench_analysis [--baseline REV] [--skip-baseline-all]

``--baseline REV`` runs the same measurements on a git worktree of REV (e.g. the commit
before a change) in the same run, so the two are compared on the same machine state;
``--skip-baseline-all`` leaves out the baseline's ``layer=all`` (minutes before issue 15).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from tests.analysis.synthetic import trajectories

CONFIGS = [(a, d) for a in ("resnet18", "resnet34", "vgg11") for d in ("cifar10", "cifar100")]
ROOT = Path(__file__).resolve().parents[2]

# Run inside the tree being measured (PYTHONPATH), so only that tree's analysis is imported.
MEASURE = """
import json, resource, sys, time, inspect
from pathlib import Path
from analysis import inputs, report
from analysis.analyze import analyze
path, layer, extra = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
extra = {k: v for k, v in extra.items() if k in inspect.signature(analyze).parameters}
start = time.perf_counter()
traj = inputs.from_parquet(path)
traj.heads = {c: "head" for c in set(traj.table["configuration"].to_pylist())}
read = time.perf_counter()
results = analyze(traj, layer=layer, **extra)
computed = time.perf_counter()
report.write(results, Path(path).parent / ("out-" + layer))
written = time.perf_counter()
print(json.dumps({"read": read - start, "statistics": computed - read, "report": written - computed,
                  "total": written - start, "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "methods": results.summary.get("calibration_methods", ["iid"]),
                  "false_alarm": results.summary["false_alarm"]["rate"]}))
"""


def paper_sized(path: Path, *, snapshots: int = 117, layers: int = 62, seed: int = 0) -> int:
    names = tuple(f"layer{i}" for i in range(layers - 1)) + ("head",)
    table = trajectories(configs=CONFIGS, steps=snapshots, layers=names, shift=2.0, shift_at=30, seed=seed)
    pq.write_table(table, path)
    return table.num_rows


def measure(tree: Path, path: Path, layer: str, **extra) -> dict:
    done = subprocess.run([sys.executable, "-c", MEASURE, str(path), layer, json.dumps(extra)], cwd=tree,
                          env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"measuring {tree} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def show(name: str, m: dict) -> None:
    print(f"  {name:<44} read {m['read']:5.1f} s, statistics {m['statistics']:6.1f} s, report {m['report']:5.1f} s: "
          f"total {m['total']:6.1f} s; peak RSS {m['rss']:5.0f} MiB; h by {'+'.join(m['methods'])}; "
          f"false alarms {m['false_alarm']:.3f}")


def main(argv: list[str]) -> int:
    baseline = argv[argv.index("--baseline") + 1] if "--baseline" in argv else None
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "paper.parquet"
        rows = paper_sized(path)
        print(f"{rows:,} rows (300 runs x 117 snapshots x 62 layers); each line a fresh process")
        trees = [("this tree", ROOT)]
        if baseline:
            worktree = Path(folder) / "baseline"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), baseline],
                           check=True, capture_output=True)
            trees.append((f"baseline {baseline}", worktree))
        try:
            for layer in ("head", "all"):
                for name, tree in trees:
                    if layer == "all" and tree != ROOT and "--skip-baseline-all" in argv:
                        continue
                    show(f"{name}, layer={layer}", measure(tree, path, layer))
                    if tree == ROOT:
                        show(f"{name}, layer={layer}, calibration=serial everywhere",
                             measure(tree, path, layer, calibration="serial"))
        finally:
            if baseline:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)],
                               capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
