"""What the runs learned, next to what the CUSUM saw: test accuracy and the memorised
fraction per epoch (the runs' `epoch` metrics), and when memorisation set in.

The memorised fraction of a noisy run is the share of its corrupted training samples that
the network predicts as their corrupted label (``workers.train``): 0 when it predicts the
true class, about 1/C by chance (0.1 on the digits and CIFAR-10), 1 when every corrupted
label is fitted. Memorisation sets in (``onset``) at the first evaluated epoch at which the
fraction reaches ``ONSET`` = 0.5: from then on the network gives the wrong, corrupted label
for most of those samples, which no amount of learning the true classes explains, and 0.5 is
far above chance (0.1) and below the end of a memorising run (close to 1), so the epoch is
well defined on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ONSET = 0.5
NAMES = ("test_acc", "memorised")
COINCIDE = 1.0  # epochs: an alarm within one evaluation of the onset coincides with it
TIMING = ["configuration", "layer", "run_id", "eta", "detection_epoch", "onset_epoch", "lead", "relation",
          "final_memorised", "final_test_acc"]


@dataclass(frozen=True)
class Learning:
    """One configuration's per-epoch test accuracy and memorised fraction, [runs, epochs]
    (NaN where a run has no evaluation)."""

    configuration: str
    run_ids: list[str]
    eta: np.ndarray
    epochs: np.ndarray
    test_acc: np.ndarray
    memorised: np.ndarray

    def onset(self, level: float = ONSET) -> np.ndarray:
        """[runs] the first epoch at which the memorised fraction reached ``level``; NaN when
        it never did (and for clean runs, which have no corrupted labels)."""
        reached = np.nan_to_num(self.memorised, nan=-1.0) >= level
        first = np.where(reached.any(axis=1), reached.argmax(axis=1), -1)
        return np.where((first >= 0) & (self.eta > 0), self.epochs[np.maximum(first, 0)], np.nan)

    def final(self, values: np.ndarray) -> np.ndarray:
        """[runs] each run's last evaluated value."""
        last = np.where(np.isfinite(values), np.arange(values.shape[1]), -1).max(axis=1)
        return np.where(last >= 0, values[np.arange(len(values)), np.maximum(last, 0)], np.nan)

    def of(self, run_ids: list[str]) -> dict[str, int]:
        return {r: i for i, r in enumerate(self.run_ids) if r in set(run_ids)}


def learning(table: pa.Table | None, configuration: str) -> Learning | None:
    """The configuration's learning curves from the store's ``epoch`` metric rows (joined
    with the runs' identity), None when there are none."""
    if table is None or table.num_rows == 0:
        return None
    rows = table.filter(pc.equal(table["configuration"], configuration))
    if rows.num_rows == 0:
        return None
    run_ids, run_index = np.unique(rows["run_id"].to_numpy(zero_copy_only=False), return_inverse=True)
    epochs, epoch_index = np.unique(rows["epoch"].to_numpy(), return_inverse=True)
    values = {name: np.full((len(run_ids), len(epochs)), np.nan) for name in NAMES}
    eta = np.zeros(len(run_ids))
    eta[run_index] = rows["eta"].to_numpy()
    for name, r, e, v in zip(rows["name"].to_pylist(), run_index, epoch_index, rows["value"].to_numpy()):
        if name in values:
            values[name][r, e] = v
    return Learning(configuration, [str(r) for r in run_ids], eta, epochs, values["test_acc"], values["memorised"])


def memorisation_summary(curves: Learning) -> dict:
    """Per noisy eta: the runs, their median final memorised fraction and test accuracy, and
    how many reached the onset level; and whether the configuration memorised (the median
    final fraction of its largest eta reached ``ONSET``)."""
    by_eta = {}
    for eta in sorted(set(curves.eta) - {0.0}):
        runs = curves.eta == eta
        final = curves.final(curves.memorised)[runs]
        onset = curves.onset()[runs]
        by_eta[float(eta)] = {"runs": int(runs.sum()), "final_memorised_median": float(np.nanmedian(final)),
                              "final_test_acc_median": float(np.nanmedian(curves.final(curves.test_acc)[runs])),
                              "reached_onset": int(np.isfinite(onset).sum()),
                              "onset_epoch_median": float(np.nanmedian(onset)) if np.isfinite(onset).any()
                              else float("nan")}
    top = by_eta[max(by_eta)] if by_eta else None
    return {"by_eta": by_eta, "onset_level": ONSET,
            "memorised": bool(top and top["final_memorised_median"] >= ONSET)}


def alarm_timing(curves: Learning, detection) -> list[dict]:
    """Per noisy run of ``detection`` (one configuration and layer): its first alarm next to
    the onset of its memorisation, and how they relate: the alarm ``precedes`` the onset by
    more than ``COINCIDE`` epochs, ``coincides`` with it (within one evaluation either side:
    both are resolved to an epoch), or ``follows``; ``no alarm`` or ``no onset`` when one is
    missing. ``lead`` = onset - detection, in epochs (positive: the alarm came first)."""
    e = detection.ensemble
    index = curves.of(e.run_ids)
    onset, final_mem, final_acc = curves.onset(), curves.final(curves.memorised), curves.final(curves.test_acc)
    rows = []
    for i, run in enumerate(e.run_ids):
        if e.eta[i] == 0 or run not in index:
            continue
        j = index[run]
        detected, started = float(detection.detection_epoch[i]), float(onset[j])
        lead = started - detected
        relation = ("no alarm" if not np.isfinite(detected) else "no onset" if not np.isfinite(started)
                    else "precedes" if lead > COINCIDE else "follows" if lead < -COINCIDE else "coincides")
        rows.append({"configuration": e.configuration, "layer": e.layer, "run_id": run, "eta": float(e.eta[i]),
                     "detection_epoch": detected, "onset_epoch": started, "lead": lead, "relation": relation,
                     "final_memorised": float(final_mem[j]), "final_test_acc": float(final_acc[j])})
    return rows


def timing_counts(rows: list[dict]) -> dict:
    """How many noisy runs' alarms precede, coincide with or follow their memorisation, and the
    median lead (onset - detection, epochs) where both happened."""
    counts = {relation: sum(r["relation"] == relation for r in rows)
              for relation in ("precedes", "coincides", "follows", "no alarm", "no onset")}
    leads = [r["lead"] for r in rows if np.isfinite(r["lead"])]
    return {**counts, "runs": len(rows), "median_lead": float(np.median(leads)) if leads else float("nan")}
