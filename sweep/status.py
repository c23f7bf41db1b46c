"""``sweep status``: what a store holds, one sweep at a time, from the store alone (no Ray needed)."""

from __future__ import annotations

import time
from collections import Counter, defaultdict

from store import Store
from store.sweeps import select
from sweep.ledger import STATES, RunState, states


def report(store: Store, *, stale_after: float, sweep: str | None = None) -> tuple[str, bool]:
    """The status text of one sweep (default: the latest), and whether all its runs finished."""
    chosen = select(store, sweep)
    found = {s.run_id: s for s in states(store, chosen.run_ids, stale_after=stale_after)}
    runs: list[RunState] = [found[rid] for rid in chosen.run_ids if rid in found]
    missing = len(chosen.run_ids) - len(runs)  # in a manifest, no record yet: pending
    others = [s for s in chosen.sweeps if s != chosen.label]
    lines = [f"{store.uri}: sweep {chosen.label}, {len(chosen.run_ids)} runs"
             + (f" (other sweeps here: {', '.join(others)}; pass sweep=ID or sweep=all)" if others else "")]
    lines += [f"note: {note}" for note in chosen.notes]
    # a row per arch, dataset, axis values and eta; the configuration is shown only where
    # those leave several apart (runs that differ in a preset's settings)
    by_name = defaultdict(set)
    for run in runs:
        by_name[(run.arch, run.dataset, run.axes)].add(run.configuration)
    several = any(len(c) > 1 for c in by_name.values())
    axes = any(run.axes for run in runs)
    groups: dict[tuple, Counter] = defaultdict(Counter)
    steps: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for run in runs:
        key = (run.arch or "?", run.dataset or "?", run.axes, run.configuration if several else "", run.eta)
        groups[key][run.state] += 1
        steps[key][0] += run.step or 0
        steps[key][1] += run.total_steps or 0
    width = max([len(k[2]) for k in groups] + [4])
    config = (f"{'axes':<{width}} " if axes else "") + (f"{'configuration':<32} " if several else "")
    lines.append(f"{'arch':<10} {'dataset':<9} {config}{'eta':>5} " + " ".join(f"{s:>8}" for s in STATES)
                 + "  steps done/total")
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2], k[3] or "", -1 if k[4] is None else k[4])):
        counts, (done, total) = groups[key], steps[key]
        eta = "?" if key[4] is None else f"{key[4]:.2f}"
        label = (f"{key[2]:<{width}} " if axes else "") + (f"{key[3] or '?':<32} " if several else "")
        lines.append(f"{key[0]:<10} {key[1]:<9} {label}{eta:>5} " + " ".join(f"{counts[s]:>8}" for s in STATES)
                     + f"  {done}/{total or '?'}")
    totals = Counter(run.state for run in runs)
    totals["pending"] += missing
    lines.append("total: " + ", ".join(f"{totals[s]} {s}" for s in STATES))
    places: dict[str, Counter] = defaultdict(Counter)
    for run in runs:
        if run.where is not None:
            places[run.where][run.state] += 1
    if places:
        lines.append("where the runs ran (host, and node on a Ray cluster; a run's last attempt):")
        lines += [f"  {where}: " + ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s])
                  for where, counts in sorted(places.items())]
    for state, heading in (
        ("failed", "failed runs:"),
        ("damaged", f"damaged runs (a file they need cannot be read; `sweep resume store={store.uri}` sets it "
                    "aside and runs them again, `sweep check` lists every file):"),
    ):
        chosen_runs = [run for run in runs if run.state == state]
        if chosen_runs:
            lines.append(heading)
            lines += [f"  {r.run_id} (attempt {r.attempt}, step {r.step}, on {r.where or '?'}): {r.error}"
                      for r in chosen_runs]
    stuck = [run for run in runs if run.state == "stuck"]
    if stuck:
        lines.append(f"stuck runs (running, no heartbeat for over {stale_after:.0f} s: their driver or worker died; "
                     f"`sweep resume store={store.uri}` continues them from their last checkpoint):")
        lines += [f"  {r.run_id} (attempt {r.attempt}, step {r.step}/{r.total_steps}, on {r.where or '?'}, "
                  f"last heartbeat {'never' if r.heartbeat_age is None else f'{r.heartbeat_age:.0f} s ago'})"
                  for r in stuck]
    alarms, damaged = store.read_alarms(chosen.run_ids)
    if alarms.num_rows:
        lines.append(f"alarms raised while training (`sweep watch`): {alarms.num_rows}")
        lines += [f"  {a['run_id']}: layer {a['layer']} {a['quantity']}, step {a['step']} (epoch {a['epoch']:.2f}), "
                  f"statistic {a['statistic']:.2f} > h = {a['h']:.2f} ({a['calibration']})"
                  for a in alarms.sort_by("raised_at").to_pylist()]
    lines += [f"note: {d} (`sweep watch` writes it again)" for d in damaged]
    finished = totals["pending"] + totals["running"] + totals["stuck"] == 0
    return "\n".join(lines), finished


def show(store: Store, *, stale_after: float, watch: bool, sweep: str | None = None, every: float = 2.0) -> int:
    """Print the status once, or refresh it until every run has finished (Ctrl-C stops)."""
    while True:
        text, finished = report(store, stale_after=stale_after, sweep=sweep)
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
