"""The threshold under serial dependence, and the chain's in-horizon false-alarm probability,
against direct simulation."""

import numpy as np
import pytest
from scipy import linalg, special

from analysis.calibration import Phase1
from analysis.cusum import (
    calibrate,
    cusum,
    in_horizon_probability,
    normal_cdf,
    one_sided_arl,
    smoothed_ecdf,
    tabulated_ecdf,
    transition_matrix,
)
from analysis.intervals import wilson


def ar1_runs(rng, runs: int, steps: int, rho: float, *, tails: float | None = None, level: float = 0.0
             ) -> np.ndarray:
    """[runs, steps] stationary AR(1) with unit variance (t-distributed innovations, scaled to
    unit variance, when ``tails`` gives their degrees of freedom), of which a share ``level``
    is replaced by a level each run keeps throughout."""
    draw = (rng.standard_t(tails, (runs, steps)) / np.sqrt(tails / (tails - 2)) if tails
            else rng.standard_normal((runs, steps)))
    x = np.empty((runs, steps))
    x[:, 0] = draw[:, 0]
    for t in range(1, steps):
        x[:, t] = rho * x[:, t - 1] + np.sqrt(1 - rho**2) * draw[:, t]
    if level:
        x = np.sqrt(level) * rng.standard_normal((runs, 1)) + np.sqrt(1 - level) * x
    return x


def leave_one_out(runs: np.ndarray) -> np.ndarray:
    """The analysis' leave-one-out z of a clean ensemble (analysis.detection.standardise)."""
    total, squares, n = runs.sum(0), (runs**2).sum(0), len(runs)
    mean = (total - runs) / (n - 1)
    var = (squares - runs**2 - (n - 1) * mean**2) / (n - 2)
    return (runs - mean) / np.sqrt(var)


def realised(rho: float, method: str, *, ensembles: int, steps: int = 117, seed: int = 0, level: float = 0.0
             ) -> tuple:
    """Pooled in-horizon false alarms of the clean runs (leave-one-out, as the analysis
    counts them) over ``ensembles`` synthetic configurations of 20 clean runs, and the mean
    promised P(RL <= T)."""
    rng = np.random.default_rng([seed, int(rho * 100), int(level * 100)])
    alarms, promised = 0, []
    for e in range(ensembles):
        z = leave_one_out(10 + ar1_runs(rng, 20, steps, rho, level=level))
        calibration = Phase1(z, seed=e).calibrate(k=0.5, arl0=1000, method=method)
        alarms += int((cusum(z, k=0.5, h=calibration.h).first_alert >= 0).sum())
        promised.append(calibration.in_horizon)
    return wilson(alarms, 20 * ensembles), float(np.mean(promised))


@pytest.mark.parametrize("level, steps", [(0.0, 117), (0.2, 33)], ids=["ar1", "run-level"])
def test_under_serial_dependence_the_new_calibration_keeps_its_promise_and_the_chain_alone_does_not(level, steps):
    new, target = realised(0.3, "auto", ensembles=60, level=level, steps=steps)
    old, target_old = realised(0.3, "iid", ensembles=60, level=level, steps=steps)
    assert new.wilson_low <= target <= new.wilson_high, (new, target)
    assert old.wilson_low > target_old, (old, target_old)  # the chain's promise is broken, by far
    assert old.rate > 2 * target_old


def test_on_independent_z_both_agree_with_the_chains_in_horizon_probability():
    for method in ("auto", "iid"):  # auto: the new default, which is the chain when nothing says otherwise
        got, target = realised(0.0, method, ensembles=60, seed=1)
        assert got.wilson_low <= target <= got.wilson_high, (method, got, target)


def test_the_level_and_the_ar1_are_told_apart():
    rng = np.random.default_rng(4)
    ar1 = Phase1(leave_one_out(ar1_runs(rng, 20, 117, 0.4)))
    leveled = Phase1(leave_one_out(ar1_runs(rng, 20, 117, 0.4, level=0.3)))
    assert ar1.level < 0.05 and 0.3 < ar1.rho < 0.5
    assert 0.15 < leveled.level < 0.45 and 0.2 < leveled.rho < 0.6


def test_auto_is_the_chain_exactly_on_independent_z_and_the_simulation_on_dependent_z():
    rng = np.random.default_rng(5)
    independent = Phase1(leave_one_out(ar1_runs(rng, 20, 117, 0.0)))
    assert independent.chosen("auto") == "iid"
    auto, iid = (independent.calibrate(k=0.5, arl0=1000, method=m) for m in ("auto", "iid"))
    assert auto.h == iid.h and auto.name == "iid"
    # ... which is the chain on the pooled values, as before issue 15
    assert iid.h == pytest.approx(calibrate(independent.z.ravel(), k=0.5, arl0=1000).h, rel=1e-9)
    dependent = Phase1(leave_one_out(ar1_runs(rng, 20, 117, 0.3)))
    assert dependent.chosen("auto") == "serial"
    serial = dependent.calibrate(k=0.5, arl0=1000)
    assert serial.name == "serial" and serial.h > dependent.calibrate(k=0.5, arl0=1000, method="iid").h
    assert 0.2 < serial.rho < 0.4 and "AR(1)" in serial.method
    again = Phase1(dependent.z).calibrate(k=0.5, arl0=1000)  # common random numbers: deterministic
    assert again.h == serial.h
    with pytest.raises(ValueError, match="calibration='gaussian' is not one of auto, iid, serial"):
        dependent.calibrate(k=0.5, arl0=1000, method="gaussian")


@pytest.mark.parametrize("k, horizon", [(0.25, 117), (0.5, 33), (0.5, 117), (1.0, 117)])
def test_the_chains_in_horizon_probability_matches_a_direct_simulation(k, horizon):
    h = calibrate(np.random.default_rng(0).standard_normal(50_000), k=k, arl0=1000).h

    def minus(t):
        return 1 - normal_cdf(-np.asarray(t))

    chain = in_horizon_probability(normal_cdf, minus, k=k, h=h, horizon=horizon)
    streams = 100_000
    z = np.random.default_rng(1).standard_normal((streams, horizon))
    simulated = (cusum(z, k=k, h=h).first_alert >= 0).mean()
    se = np.sqrt(simulated * (1 - simulated) / streams)
    # the two sides are combined as independent: measured within 2% of the simulation
    assert abs(chain - simulated) < 4 * se + 0.02 * simulated, (chain, simulated, se)
    assert abs(1 - np.exp(-horizon / 1000) - simulated) > 4 * se  # the approximation is not this close


def test_the_toeplitz_solve_and_the_binned_distribution_equal_their_direct_forms():
    rng = np.random.default_rng(2)
    for values in (rng.standard_normal(2340), rng.standard_t(3, 500), rng.exponential(size=60) - 1):
        cdf, _ = smoothed_ecdf(values)
        for k, h in ((0.25, 0.7), (0.5, 5.0), (1.0, 6.0)):  # ARL up to 1e5 or so: well conditioned
            q = transition_matrix(cdf, k=k, h=h)
            dense = linalg.solve(np.eye(len(q)) - q, np.ones(len(q)))[0]
            assert one_sided_arl(cdf, k=k, h=h) == pytest.approx(dense, rel=1e-8)
        x, table = tabulated_ecdf(values)
        v = np.sort(values)
        sd = v.std(ddof=1)
        bandwidth = 0.9 * min(sd, (np.percentile(v, 75) - np.percentile(v, 25)) / 1.34) * len(v) ** -0.2
        v = v.mean() + (v - v.mean()) / np.sqrt(1 + (bandwidth / sd) ** 2)
        direct = special.ndtr((x[:, None] - v[None, :]) / bandwidth).mean(1)
        assert np.abs(table - direct).max() < 1e-6
