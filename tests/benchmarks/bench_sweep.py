"""Sweep efficiency on the demo grid (``make bench``).

Runs ``sweep launch experiment=demo`` into a fresh store as a user would, then reads the
store's runs table. With S worker slots (CPUs / cpus_per_run on the local Ray):

- efficiency = (sum of the runs' task times / S) / wall time, target >= 0.85, both against the
  command's wall time and against the span from the first run's start to the last run's end;
- start-up: from the command's start to the first run's start (Python, Hydra composition and
  validation, the manifest, Ray's start, the first worker's imports);
- per-run scheduling overhead: slot time left idle inside the span, per run;
- in-task overhead: a task's time outside its training loop (imports, data, store writes).

    python -m tests.benchmarks.bench_sweep [experiment=demo]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from store import Store
from sweep.config import compose_config


def main(argv: list[str]) -> int:
    experiment = next((a.split("=", 1)[1] for a in argv if a.startswith("experiment=")), "demo")
    with tempfile.TemporaryDirectory() as folder:
        start = time.time()
        done = subprocess.run([sys.executable, "-m", "sweep", "launch", f"experiment={experiment}", f"store={folder}"],
                              capture_output=True, text=True)
        wall = time.time() - start
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-2000:], sep="\n")
            return done.returncode
        runs = Store.open(folder).runs().to_pylist()
    cluster = compose_config([f"experiment={experiment}"])["cluster"]
    slots = (cluster["num_cpus"] or os.cpu_count()) // cluster["cpus_per_run"]  # what the local Ray runs at once
    first = min(r["started_at"].timestamp() for r in runs)
    last = max(r["ended_at"].timestamp() for r in runs)
    task = sum(r["ended_at"].timestamp() - r["started_at"].timestamp() for r in runs)
    loop = sum(dict(r["final_metrics"])["run_seconds"] for r in runs)
    span = last - first
    n = len(runs)
    print(f"sweep launch experiment={experiment}: {n} runs on {slots} slots, {time.strftime('%Y-%m-%d')}")
    print(f"  command wall {wall:.1f} s; first run start -> last run end {span:.1f} s")
    print(f"  sum of task times {task:.1f} s (training loops {loop:.1f} s); / {slots} slots = {task / slots:.1f} s")
    print(f"  efficiency vs command wall:      {task / slots / wall:.3f}   (target >= 0.85)")
    print(f"  efficiency vs first start-last end: {task / slots / span:.3f}")
    print(f"  start-up (command start -> first run start): {first - start:.1f} s; "
          f"after the last run: {wall - (last - start):.1f} s")
    print(f"  per-run scheduling overhead (idle slot time in the span / runs): {(slots * span - task) / n:.2f} s")
    print(f"  in-task overhead (task - training loop, mean): {(task - loop) / n:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
