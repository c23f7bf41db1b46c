"""The threshold h from the clean runs, with or without serial dependence in their z.

The chain of ``analysis.cusum`` is exact for what it assumes: independent z. The clean
runs' leave-one-out z are not independent in time (lag-1 autocorrelation 0.13-0.17 in our
``mini`` sweep), and positively correlated z accumulate in the CUSUM faster, so the ARL0
the chain promises is longer than the real one and more clean runs alarm than promised.

``ar1`` keeps the promise where it can be checked, within a run's horizon of T snapshots:
1. the target is the in-horizon false-alarm probability p = P(RL <= T) that the chain gives
   independent z calibrated to ARL0 (``analysis.cusum.in_horizon_probability``);
2. the z's dependence is a Gaussian AR(1) on their normal scores x = Phi^-1(F(z)), F the
   same smoothed distribution the chain uses, rho their pooled lag-1 autocorrelation (a
   Gaussian copula: the marginal distribution of z is kept exactly, heavy tails included);
3. ``SIMULATIONS`` sequences of T such z (stationary start, common random numbers, so the
   result is deterministic) give the statistic's in-horizon maximum M = max_t max(S+_t, S-_t),
   which does not depend on h: a run alarms within T exactly when M > h, so h is the
   1 - p quantile of M.
At rho = 0 it is the chain's answer up to simulation error; ``auto`` (the default) uses
``ar1`` only when the lag-1 autocorrelation's 95% interval excludes 0, and is then exactly
today's ``iid`` calibration on independent z. Which method produced h is recorded with it.
``docs/statistics.md`` has the simulation study that chose this method.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
from scipy import special

from analysis.cusum import Calibration, CalibrationError, calibrate_chain, interpolated, tabulated_ecdf
from analysis.intervals import Autocorrelation, lag1_autocorrelation

METHODS = ("auto", "iid", "ar1")
SIMULATIONS = 20_000  # in-horizon maxima per configuration: p = 0.11 to 2% relative (binomial)

AR1_SUMMARY = (
    "where the clean runs' leave-one-out z are serially dependent (the lag-1 autocorrelation of their normal "
    "scores has a 95% interval excluding 0), h is chosen so that the probability of a false alarm within a "
    "run's T snapshots equals the one the Markov chain promises independent z at ARL0: the 1 - p quantile of "
    "the statistic's in-horizon maximum over simulated runs of a Gaussian AR(1) mapped onto the z's "
    "smoothed pooled distribution (common random numbers: deterministic)."
)
AR1_METHOD = (
    "h is the 1 - p quantile of the in-horizon maximum of the two-sided statistic over {n:,} simulated runs of "
    "{T} snapshots whose z follow a Gaussian AR(1) (rho = {rho:.3f}, the lag-1 autocorrelation of the clean "
    "runs' leave-one-out z on the normal scale) mapped onto their smoothed pooled distribution; p = {p:.4f} is "
    "the in-horizon false-alarm probability the Markov chain gives independent z at ARL0 = {arl0:g}."
)


class Phase1:
    """The in-control side of one configuration and layer: the clean runs' leave-one-out z
    [runs, T], their smoothed distribution and serial dependence; ``calibrate`` then gives h
    for any (k, ARL0) without redoing any of it (the sensitivity grid's nine cells share it)."""

    def __init__(self, z_clean: np.ndarray, *, seed: int = 0, simulations: int = SIMULATIONS):
        self.z = np.atleast_2d(np.asarray(z_clean, dtype=np.float64))
        values = self.z[np.isfinite(self.z)]
        if len(values) < 10:
            raise CalibrationError(f"calibration needs at least 10 in-control z values, got {len(values)}")
        self.n_values = len(values)
        self.horizon = self.z.shape[1]
        self.grid, self.table = tabulated_ecdf(values)
        self.upper, self.lower = interpolated(self.grid, self.table)  # F(t) = P(z <= t), and P(-z <= t)
        self.seed, self.simulations = seed, simulations
        self.dependence: Autocorrelation = lag1_autocorrelation(self.normal_scores(self.z))
        self._z_simulated: np.ndarray | None = None
        self._maxima: dict[float, np.ndarray] = {}

    def normal_scores(self, z: np.ndarray) -> np.ndarray:
        """Phi^-1(F(z)), NaN kept."""
        u = np.clip(self.upper(z), 1e-12, 1 - 1e-12)
        return np.where(np.isfinite(z), special.ndtri(u), np.nan)

    def chosen(self, method: str) -> str:
        """``auto`` resolved: ``ar1`` when the normal scores' lag-1 autocorrelation is
        significantly different from 0 (its 95% interval excludes 0), else ``iid``."""
        if check_method(method) != "auto":
            return method
        r = self.dependence
        return "ar1" if math.isfinite(r.rho1) and (r.ci_low > 0 or r.ci_high < 0) else "iid"

    def calibrate(self, *, k: float, arl0: float, method: str = "auto") -> Calibration:
        """h for reference value ``k`` and target ``arl0`` by ``method`` (auto, iid or ar1)."""
        chosen = self.chosen(method)
        iid = calibrate_chain(self.upper, self.lower, k=k, arl0=arl0, n_values=self.n_values,
                              horizon=self.horizon)
        rho = float(self.dependence.rho1)
        if chosen == "iid" or iid.h == 0.0:  # h = 0: no in-control excess at all, dependence or not
            return dataclasses.replace(iid, rho=rho)
        maxima = self._simulated_maxima(k)
        h = float(np.quantile(maxima, 1.0 - iid.in_horizon))
        text = AR1_METHOD.format(n=self.simulations, T=self.horizon, rho=rho, p=iid.in_horizon, arl0=arl0)
        return Calibration(h=h, arl0=arl0, k=k, n_values=self.n_values, method=text, name="ar1",
                           horizon=self.horizon, in_horizon=iid.in_horizon, rho=rho)

    def _simulated_maxima(self, k: float) -> np.ndarray:
        if k not in self._maxima:
            z = self._simulated_z()
            upper = np.zeros(z.shape[1])
            lower = np.zeros(z.shape[1])
            top = np.zeros(z.shape[1])
            for zt in z:  # in place: this loop is most of an ar1 calibration's time
                upper += zt
                upper -= k
                np.maximum(upper, 0.0, out=upper)
                lower -= zt
                lower -= k
                np.maximum(lower, 0.0, out=lower)
                np.maximum(top, upper, out=top)
                np.maximum(top, lower, out=top)
            self._maxima[k] = top
        return self._maxima[k]

    def _simulated_z(self) -> np.ndarray:
        """[T, simulations] z of the fitted Gaussian-copula AR(1), from innovations seeded by
        ``seed`` alone (common random numbers across configurations and layers)."""
        if self._z_simulated is None:
            rho = float(np.clip(self.dependence.rho1, -0.99, 0.99))
            e = _innovations(self.seed, self.horizon, self.simulations)
            x = np.empty_like(e)
            x[0] = e[0]
            scale = math.sqrt(1.0 - rho * rho)
            for t in range(1, self.horizon):
                np.multiply(x[t - 1], rho, out=x[t])
                x[t] += scale * e[t]
            # z = F^-1(Phi(x)) by table lookup on a uniform grid of x (nearest of 2^15 points
            # over [-9, 9]: within 3e-4 of interpolation, and 5 times faster)
            xs = np.linspace(-_REACH, _REACH, _POINTS)
            inverse = np.interp(special.ndtr(xs), self.table, self.grid)
            x *= (_POINTS - 1) / (2 * _REACH)
            x += (_POINTS - 1) / 2 + 0.5
            np.clip(x, 0, _POINTS - 1, out=x)
            self._z_simulated = np.take(inverse, x.astype(np.int32))
        return self._z_simulated


_REACH, _POINTS = 9.0, 2**15


@functools.lru_cache(maxsize=2)
def _innovations(seed: int, horizon: int, simulations: int) -> np.ndarray:
    e = np.random.default_rng([seed, 1]).standard_normal((horizon, simulations))
    e.flags.writeable = False
    return e


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"calibration={method!r} is not one of {', '.join(METHODS)}")
    return method
