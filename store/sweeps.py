"""Which runs belong to which sweep: the store's manifests, read with their damage.

A sweep is the set of runs of one manifest (``manifests/<sweep_id>.json``). A run may
belong to several sweeps (launching more seeds makes a new sweep that holds the old
runs too). ``status``, ``analyze`` and ``export`` look at one sweep at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

from store.files import StoreError
from store.store import Store


@dataclass(frozen=True)
class Selection:
    """The runs of one sweep (or of all), and what could not be read on the way."""

    label: str  # the sweep id, "all", or "(no manifest)" for a store written by run-one only
    run_ids: list[str]
    sweeps: list[str]  # every sweep id of the store, oldest first
    notes: list[str]


def select(store: Store, sweep: str | None = None) -> Selection:
    """The run ids of ``sweep`` (an id, a unique prefix of one, ``all``, or None: the latest).

    A damaged manifest is reported; its runs are found through their records."""
    manifests, damaged = store.read_manifests()
    notes = [f"{err}; its runs are found through their records (`sweep launch` of the same sweep rewrites it)"
             for err in damaged]
    by_id = {m["sweep_id"]: sorted(m["runs"]) for m in manifests}
    lost = {err.raw.rsplit("/", 1)[-1].removesuffix(".json") for err in damaged}
    if lost:
        listed = {rid for ids in by_id.values() for rid in ids}
        for health in store.inspect():
            if health.record is not None and health.record["sweep_id"] in lost:
                by_id.setdefault(health.record["sweep_id"], []).append(health.run_id)
            elif health.record is None and health.run_id not in listed:  # its record cannot say: all of them
                for sweep_id in lost:
                    by_id.setdefault(sweep_id, []).append(health.run_id)
    order = [m["sweep_id"] for m in manifests] + sorted(lost - {m["sweep_id"] for m in manifests})
    everything = sorted({rid for ids in by_id.values() for rid in ids} | set(store.run_ids()))
    if sweep == "all" or (sweep is None and not by_id):
        return Selection("all" if by_id else "(no manifest)", everything, order, notes)
    if sweep is None:
        sweep = manifests[-1]["sweep_id"] if manifests else order[-1]
    matches = [s for s in order if s == sweep] or [s for s in order if s.startswith(sweep)]
    if len(matches) != 1:
        known = ", ".join(order) or "none"
        raise StoreError(f"sweep={sweep} {'is ambiguous' if matches else 'is not in'} {store.uri}; its sweeps: "
                         f"{known} (or sweep=all)")
    return Selection(matches[0], sorted(by_id[matches[0]]), order, notes)
