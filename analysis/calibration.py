"""The threshold h from the clean runs, with or without serial dependence in their z.

The chain of ``analysis.cusum`` is exact for what it assumes: independent z. The clean
runs' leave-one-out z are not independent in time (lag-1 autocorrelation 0.12-0.38 in our
``mini`` sweeps), and positively correlated z accumulate in the CUSUM faster, so the ARL0
the chain promises is longer than the real one and more clean runs alarm than promised.

``serial`` keeps the promise where it can be checked, within a run's horizon of T snapshots:
1. the target is the in-horizon false-alarm probability p = P(RL <= T) that the chain gives
   independent z calibrated to ARL0 (``analysis.cusum.in_horizon_probability``);
2. the z's dependence is modelled on their normal scores x = Phi^-1(F(z)), F the same
   smoothed distribution the chain uses (a Gaussian copula: the marginal distribution of z is
   kept exactly, heavy tails included), as x_t = sqrt(c) u + sqrt(1 - c) a_t: a level u that
   each run keeps for its whole length, and a stationary AR(1) a with coefficient rho. (c, rho)
   are fitted to the pooled autocorrelations at lags 1..10 (c + (1 - c) rho^l). The level is
   there because the real runs need it: with the exact head their autocorrelation stays at
   0.2-0.4 out to lag 6 where an AR(1) would have decayed to 0 (docs/statistics.md);
3. ``SIMULATIONS`` runs of T such z (stationary start, common random numbers, so the result is
   deterministic) give the statistic's in-horizon maximum M = max_t max(S+_t, S-_t), which does
   not depend on h: a run alarms within T exactly when M > h, so h is the 1 - p quantile of M.
At c = rho = 0 it is the chain's answer up to simulation error; ``auto`` (the default) uses
``serial`` only when the lag-1 autocorrelation's 95% interval excludes 0, and is then exactly
the ``iid`` calibration on independent z. Which method produced h is recorded with it.
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

METHODS = ("auto", "iid", "serial")
SIMULATIONS = 20_000  # in-horizon maxima per configuration: p = 0.11 to 2% relative (binomial)

SERIAL_SUMMARY = (
    "where the clean runs' leave-one-out z are serially dependent (the lag-1 autocorrelation of their normal "
    "scores has a 95% interval excluding 0), h is chosen so that the probability of a false alarm within a "
    "run's T snapshots equals the one the Markov chain promises independent z at ARL0: the 1 - p quantile of "
    "the statistic's in-horizon maximum over simulated runs whose normal scores are a per-run level plus an "
    "AR(1), fitted to the z's autocorrelations at lags 1-10 and mapped onto their smoothed pooled distribution "
    "(common random numbers: deterministic)."
)
SERIAL_METHOD = (
    "h is the 1 - p quantile of the in-horizon maximum of the two-sided statistic over {n:,} simulated runs of "
    "{T} snapshots whose z, on the normal scale, are a per-run level (share {level:.2f} of the variance) plus an "
    "AR(1) (rho = {rho:.2f}), fitted to the clean runs' leave-one-out z and mapped onto their smoothed pooled "
    "distribution; p = {p:.4f} is the in-horizon false-alarm probability the Markov chain gives independent z "
    "at ARL0 = {arl0:g}."
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
        scores = self.normal_scores(self.z)
        self.dependence: Autocorrelation = lag1_autocorrelation(scores)
        self.level, self.rho = fit_level_ar1(autocorrelations(scores, lags=max(2, min(MAX_LAG, self.horizon // 3))))
        self._z_simulated: np.ndarray | None = None
        self._maxima: dict[float, np.ndarray] = {}

    def normal_scores(self, z: np.ndarray) -> np.ndarray:
        """Phi^-1(F(z)), NaN kept."""
        u = np.clip(self.upper(z), 1e-12, 1 - 1e-12)
        return np.where(np.isfinite(z), special.ndtri(u), np.nan)

    def chosen(self, method: str) -> str:
        """``auto`` resolved: ``serial`` when the normal scores' lag-1 autocorrelation is
        significantly different from 0 (its 95% interval excludes 0), else ``iid``."""
        if check_method(method) != "auto":
            return method
        r = self.dependence
        return "serial" if math.isfinite(r.rho1) and (r.ci_low > 0 or r.ci_high < 0) else "iid"

    def calibrate(self, *, k: float, arl0: float, method: str = "auto") -> Calibration:
        """h for reference value ``k`` and target ``arl0`` by ``method`` (auto, iid or serial)."""
        chosen = self.chosen(method)
        iid = calibrate_chain(self.upper, self.lower, k=k, arl0=arl0, n_values=self.n_values,
                              horizon=self.horizon)
        rho = float(self.dependence.rho1)
        if chosen == "iid" or iid.h == 0.0:  # h = 0: no in-control excess at all, dependence or not
            return dataclasses.replace(iid, rho=rho)
        maxima = self._simulated_maxima(k)
        h = float(np.quantile(maxima, 1.0 - iid.in_horizon))
        text = SERIAL_METHOD.format(n=self.simulations, T=self.horizon, level=self.level, rho=self.rho,
                                    p=iid.in_horizon, arl0=arl0)
        return Calibration(h=h, arl0=arl0, k=k, n_values=self.n_values, method=text, name="serial",
                           horizon=self.horizon, in_horizon=iid.in_horizon, rho=rho, level=self.level)

    def _simulated_maxima(self, k: float) -> np.ndarray:
        if k not in self._maxima:
            z = self._simulated_z()
            upper = np.zeros(z.shape[1])
            lower = np.zeros(z.shape[1])
            top = np.zeros(z.shape[1])
            for zt in z:  # in place: most of a serial calibration's time
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
        """[T, simulations] z of the fitted Gaussian copula, x_t = sqrt(c) u + sqrt(1 - c) a_t
        (u one N(0, 1) level per run, a a stationary AR(1) with coefficient rho), from
        innovations seeded by ``seed`` alone (common random numbers across configurations and
        layers)."""
        if self._z_simulated is None:
            rho, level = self.rho, self.level
            e = _innovations(self.seed, self.horizon + 1, self.simulations)
            x = np.empty((self.horizon, self.simulations))
            x[0] = e[1]
            scale = math.sqrt(1.0 - rho * rho)
            for t in range(1, self.horizon):
                np.multiply(x[t - 1], rho, out=x[t])
                x[t] += scale * e[t + 1]
            x *= math.sqrt(1.0 - level)
            x += math.sqrt(level) * e[0]
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
MAX_LAG = 10  # autocorrelations fitted: lags 1..min(10, T/3)


def autocorrelations(x: np.ndarray, *, lags: int) -> np.ndarray:
    """[lags] pooled autocorrelations of the rows of ``x`` [runs, T] at lags 1..lags (pairs
    within a run only, NaN skipped), about the pooled mean, each normalised by the pooled
    variance of the values it pairs."""
    x = np.atleast_2d(x) - np.nanmean(x)
    variance = np.nanmean(x**2)
    return np.array([np.nanmean(x[:, :-lag] * x[:, lag:]) / variance for lag in range(1, lags + 1)])


def fit_level_ar1(acf: np.ndarray) -> tuple[float, float]:
    """(c, rho) of the autocorrelation c + (1 - c) rho^l closest to ``acf`` (least squares over
    a grid, c in [0, 0.95], rho in [-0.9, 0.95]): a share c of the variance is a level that
    each run keeps for its whole length, the rest an AR(1).

    >>> fit_level_ar1(np.array([0.3 ** lag for lag in range(1, 11)]))
    (0.0, 0.3)
    >>> fit_level_ar1(np.array([0.2 + 0.8 * 0.5 ** lag for lag in range(1, 11)]))
    (0.2, 0.5)
    """
    levels = np.round(np.arange(0, 0.951, 0.01), 2)
    rhos = np.round(np.arange(-0.9, 0.951, 0.01), 2)
    lag = np.arange(1, len(acf) + 1)
    model = levels[:, None, None] + (1 - levels[:, None, None]) * rhos[None, :, None] ** lag[None, None, :]
    error = np.nansum((model - acf[None, None, :]) ** 2, axis=2)
    i, j = np.unravel_index(np.argmin(error), error.shape)
    return float(levels[i]), float(rhos[j])


@functools.lru_cache(maxsize=2)
def _innovations(seed: int, horizon: int, simulations: int) -> np.ndarray:
    e = np.random.default_rng([seed, 1]).standard_normal((horizon, simulations))
    e.flags.writeable = False
    return e


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"calibration={method!r} is not one of {', '.join(METHODS)}")
    return method
