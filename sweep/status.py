"""``sweep status``: what a store holds, from the store alone (no Ray needed)."""

from __future__ import annotations

import time
from collections import Counter, defaultdict

from sweep.ledger import STATES, RunState, states
from workers.store import Store


def report(store: Store, *, stale_after: float) -> tuple[str, bool]:
    """The status text, and whether every run has finished (done or failed)."""
    manifests = store.read_manifests()
    expected = sorted({rid for m in manifests for rid in m["runs"]} | set(store.run_ids()))
    found = {s.run_id: s for s in states(store, expected, stale_after=stale_after)}
    runs: list[RunState] = [found[rid] for rid in expected if rid in found]
    missing = len(expected) - len(runs)  # in a manifest, no record yet: pending
    lines = [f"{store.uri}: {len(expected)} runs in {len(manifests)} sweep(s)"]
    groups: dict[tuple, Counter] = defaultdict(Counter)
    steps: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for run in runs:
        key = (run.arch, run.dataset, run.eta)
        groups[key][run.state] += 1
        steps[key][0] += run.step or 0
        steps[key][1] += run.total_steps or 0
    header = f"{'arch':<10} {'dataset':<9} {'eta':>5} " + " ".join(f"{s:>8}" for s in STATES) + "  steps done/total"
    lines += [header]
    for key in sorted(groups):
        counts = groups[key]
        done, total = steps[key]
        lines.append(f"{key[0]:<10} {key[1]:<9} {key[2]:>5.2f} " + " ".join(f"{counts[s]:>8}" for s in STATES)
                     + f"  {done}/{total or '?'}")
    totals = Counter(run.state for run in runs)
    totals["pending"] += missing
    lines.append("total: " + ", ".join(f"{totals[s]} {s}" for s in STATES))
    failed = [run for run in runs if run.state == "failed"]
    if failed:
        lines.append("failed runs:")
        lines += [f"  {r.run_id} (attempt {r.attempt}, step {r.step}): {r.error}" for r in failed]
    stuck = [run for run in runs if run.state == "stuck"]
    if stuck:
        lines.append(f"stuck runs (running, no heartbeat for over {stale_after:.0f} s: their driver or worker died; "
                     f"`sweep resume store={store.uri}` continues them from their last checkpoint):")
        lines += [f"  {r.run_id} (attempt {r.attempt}, step {r.step}/{r.total_steps}, last heartbeat "
                  f"{'never' if r.heartbeat_age is None else f'{r.heartbeat_age:.0f} s ago'})" for r in stuck]
    finished = totals["pending"] + totals["running"] + totals["stuck"] == 0
    return "\n".join(lines), finished


def show(store: Store, *, stale_after: float, watch: bool, every: float = 2.0) -> int:
    """Print the status once, or refresh it until every run has finished (Ctrl-C stops)."""
    while True:
        text, finished = report(store, stale_after=stale_after)
        if watch:
            print("\033[2J\033[H" + time.strftime("%H:%M:%S ") + text, flush=True)
        else:
            print(text)
        if not watch or finished:
            return 0
        try:
            time.sleep(every)
        except KeyboardInterrupt:
            return 0
