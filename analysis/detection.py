"""The paper's Table 1 and its pooled claims (sections 5.2-5.4), from aligned trajectories.

Per configuration (the run config minus eta, seed and runtime) and monitored layer:
1. Phase I: the clean runs (eta = 0) give mu0(t), sigma0(t) pointwise per snapshot step.
2. z_t = (T(t) - mu0(t)) / sigma0(t); a clean run is standardised leave-one-out (its own
   trajectory never enters its mu0, sigma0), a noisy run against the whole clean ensemble.
3. h is calibrated on the leave-one-out clean z (``analysis.calibration``: the Markov chain
   on independent z, or, where they are serially dependent, a simulated AR(1) with their
   distribution; ``method`` chooses, ``auto`` by the data).
4. The two-sided CUSUM of eq. (11) runs on every run; its first alert is the detection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.calibration import Phase1
from analysis.cusum import Calibration, CusumPath, cusum
from analysis.inputs import Ensemble
from analysis.intervals import lag1_autocorrelation

MIN_CLEAN = 3  # leave-one-out leaves 2 runs for mu0 and sigma0: the fewest with a sample sd


def standardise(ensemble: Ensemble) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """z [runs, T] (leave-one-out for clean runs), and the full-ensemble mu0, sigma0 [T]."""
    clean = ensemble.eta == 0
    x = ensemble.trace[clean]
    with np.errstate(invalid="ignore", divide="ignore"):
        mu0 = np.nanmean(x, axis=0)
        sigma0 = np.nanstd(x, axis=0, ddof=1)
        z = (ensemble.trace - mu0) / sigma0
        for i in np.flatnonzero(clean):  # at most S = 20 runs: a loop is clearer than a rank-one update
            others = ensemble.trace[clean & (np.arange(len(clean)) != i)]
            z[i] = (ensemble.trace[i] - np.nanmean(others, axis=0)) / np.nanstd(others, axis=0, ddof=1)
    z[~np.isfinite(z)] = np.nan  # a step with no spread in the clean runs carries no evidence
    return z, mu0, sigma0


@dataclass(frozen=True)
class Detection:
    """One configuration and layer, at one (k, ARL0)."""

    ensemble: Ensemble
    z: np.ndarray
    mu0: np.ndarray
    sigma0: np.ndarray
    calibration: Calibration
    path: CusumPath

    @property
    def alerted(self) -> np.ndarray:
        return self.path.first_alert >= 0

    @property
    def detection_epoch(self) -> np.ndarray:
        """[runs] epoch of the first alert, NaN when none."""
        first = self.path.first_alert
        return np.where(first >= 0, self.ensemble.epochs[np.maximum(first, 0)], np.nan)


@dataclass(frozen=True)
class Standardised:
    """``standardise``'s output and the clean runs' Phase I, shared by every (k, ARL0)."""

    z: np.ndarray
    mu0: np.ndarray
    sigma0: np.ndarray
    phase1: Phase1


def standardised(ensemble: Ensemble, *, seed: int = 0) -> Standardised:
    clean = ensemble.eta == 0
    if clean.sum() < MIN_CLEAN:
        raise ValueError(f"{clean.sum()} clean runs; calibration needs at least {MIN_CLEAN}")
    z, mu0, sigma0 = standardise(ensemble)
    return Standardised(z, mu0, sigma0, Phase1(z[clean], seed=seed))


def detect(ensemble: Ensemble, *, k: float, arl0: float, method: str = "auto",
           prepared: Standardised | None = None) -> Detection:
    """The CUSUM of every run of ``ensemble`` at (k, ARL0), h calibrated by ``method``;
    ``prepared`` (``standardised(ensemble)``) saves redoing Phase I for another (k, ARL0)."""
    s = prepared if prepared is not None else standardised(ensemble)
    calibration = s.phase1.calibrate(k=k, arl0=arl0, method=method)
    return Detection(ensemble, s.z, s.mu0, s.sigma0, calibration, cusum(s.z, k=k, h=calibration.h))


def primary(detections: list[Detection], head: str | None) -> Detection:
    """The detection a configuration is summarised by: its head's, else its last layer's
    (network order: the head of the built-in models)."""
    return next((d for d in detections if d.ensemble.layer == head), detections[-1])


def table_rows(detection: Detection) -> list[dict]:
    """Table 1 rows of one configuration: per eta, detection epochs over the runs that
    alerted (mean, sample sd), alert rate, h."""
    e = detection.ensemble
    rows = []
    epochs = detection.detection_epoch
    for eta in np.unique(e.eta):
        runs = e.eta == eta
        hit = epochs[runs][np.isfinite(epochs[runs])]
        rows.append({
            "configuration": e.configuration, "arch": e.arch, "dataset": e.dataset, "eta": float(eta),
            "layer": e.layer, "n_runs": int(runs.sum()),
            "n_alerts": int(len(hit)), "alert_rate": float(len(hit) / runs.sum()),
            "det_epoch_mean": float(hit.mean()) if len(hit) else float("nan"),
            "det_epoch_std": float(hit.std(ddof=1)) if len(hit) > 1 else float("nan"),
            "h": detection.calibration.h, "k": detection.calibration.k,
            "arl0": float(round(detection.calibration.arl0, 6)), "calibration": detection.calibration.name,
        })
    return rows


def early_false_alarms(detection: Detection, *, first: int = 5) -> int:
    """Clean runs whose false alarm fell within the first ``first`` snapshots."""
    clean = detection.ensemble.eta == 0
    alarm = detection.path.first_alert[clean]
    return int(((alarm >= 0) & (alarm < first)).sum())


def autocorrelation(detection: Detection) -> dict:
    clean = detection.ensemble.eta == 0
    r = lag1_autocorrelation(detection.z[clean])
    return {"rho1": r.rho1, "ci_low": r.ci_low, "ci_high": r.ci_high, "n_pairs": r.n_pairs}
