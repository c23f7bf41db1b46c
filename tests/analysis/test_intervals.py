import numpy as np
import pytest
from scipy import stats

from analysis.intervals import cohens_d, lag1_autocorrelation, noncentral_t_interval, wilson


@pytest.mark.parametrize("count, n", [(16, 120), (179, 180), (0, 20), (20, 20), (7, 31)])
def test_wilson_matches_scipy(count, n):
    # independent reference: scipy.stats.binomtest(count, n).proportion_ci(0.95, method="wilson")
    ref = stats.binomtest(count, n).proportion_ci(confidence_level=0.95, method="wilson")
    got = wilson(count, n)
    assert (got.wilson_low, got.wilson_high) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert got.rate == count / n


def test_wilson_edges_are_exact():
    # closed form at p = 1: centre + half = (1 + z^2/2n + z^2/2n) / (1 + z^2/n) = 1 exactly; at p = 0 the low is 0
    assert wilson(10, 10).wilson_high == 1.0
    assert wilson(0, 10).wilson_low == 0.0


def test_wilson_of_the_papers_false_alarms_and_refuses_nonsense():
    # paper section 5.4 prints (0.083, 0.207) for 16/120; the Wilson interval (and scipy's) is
    # (0.0838, 0.2062): the paper's bounds are 0.001 wider on each side.
    p = wilson(16, 120)
    assert (round(p.wilson_low, 3), round(p.wilson_high, 3)) == (0.084, 0.206)
    with pytest.raises(ValueError, match="need 0 <= count <= n"):
        wilson(5, 3)


def test_cohens_d_by_hand():
    # clean [0, 2]: mean 1, s^2 = 2; noisy [1, 1, 4]: mean 2, s^2 = 3; d = (1 - 2) / sqrt(2.5)
    e = cohens_d(np.array([0.0, 2.0]), np.array([1.0, 1.0, 4.0]), resamples=100, rng=np.random.default_rng(0))
    assert e.d[0] == pytest.approx(-1 / np.sqrt(2.5)) and (e.n_clean, e.n_noisy) == (2, 3)
    e = cohens_d(np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 8.0]]), np.array([[3.0, 1.0], [4.0, 2.0], [5.0, 0.0]]),
                 resamples=100, rng=np.random.default_rng(0))
    assert e.d == pytest.approx([-2.0, (6 - 1) / np.sqrt((3 + 1) / 2)])


def test_bootstrap_equals_a_loop_over_resamples_and_is_seeded():
    rng = np.random.default_rng(5)
    clean, noisy = rng.normal(0, 1, (20, 3)), rng.normal(1, 1, (10, 3))
    e = cohens_d(clean, noisy, resamples=500, rng=np.random.default_rng(9), interval="percentile")
    again = cohens_d(clean, noisy, resamples=500, rng=np.random.default_rng(9), interval="percentile")
    assert np.array_equal(e.ci_low, again.ci_low) and np.array_equal(e.ci_high, again.ci_high)
    draws = np.random.default_rng(9)
    i0, i1 = draws.integers(0, 20, (500, 20)), draws.integers(0, 10, (500, 10))
    loop = []
    for a, b in zip(i0, i1):
        c, n = clean[a], noisy[b]
        loop.append((c.mean(0) - n.mean(0)) / np.sqrt((c.var(0, ddof=1) + n.var(0, ddof=1)) / 2))
    assert e.ci_low == pytest.approx(np.percentile(loop, 2.5, axis=0))
    assert e.ci_high == pytest.approx(np.percentile(loop, 97.5, axis=0))
    assert (e.ci_low < e.d).all() and (e.d < e.ci_high).all() and (e.d < 0).all()


def test_bca_over_every_column_at_once_equals_scipys_column_by_column():
    rng = np.random.default_rng(5)
    clean, noisy = rng.normal(0, 1, (20, 3)), rng.normal(1, 1.5, (10, 3))
    e = cohens_d(clean, noisy, resamples=2000, rng=np.random.default_rng(9), interval="bca")
    for j in range(3):
        ref = stats.bootstrap((clean[:, j], noisy[:, j]), lambda a, b, axis=-1: (a.mean(axis) - b.mean(axis)) / np.sqrt(
            (a.var(axis, ddof=1) + b.var(axis, ddof=1)) / 2), method="BCa", n_resamples=2000, vectorized=True,
            random_state=np.random.default_rng(9)).confidence_interval
        assert (e.ci_low[j], e.ci_high[j]) == pytest.approx((ref.low, ref.high), rel=1e-12)


def test_the_noncentral_t_interval_covers_as_promised_on_normal_groups():
    # its defining property: t sits at the 97.5% and 2.5% points of the bounds' noncentral t ...
    d, n0, n1 = np.array([-1.3]), 20, 10
    low, high = noncentral_t_interval(d, n0, n1)
    scale = np.sqrt(1 / n0 + 1 / n1)
    assert stats.nct.cdf(d[0] / scale, n0 + n1 - 2, low[0] / scale) == pytest.approx(0.975)
    assert stats.nct.cdf(d[0] / scale, n0 + n1 - 2, high[0] / scale) == pytest.approx(0.025)
    # ... and it covers the true d about 95% of the time, where the percentile bootstrap does not
    rng = np.random.default_rng(0)
    clean, noisy = rng.standard_normal((20, 400)), 2.0 + rng.standard_normal((10, 400))  # true d = -2
    for interval, lowest, highest in (("noncentral-t", 0.92, 0.98), ("percentile", 0.0, 0.925)):
        e = cohens_d(clean, noisy, rng=np.random.default_rng(1), interval=interval, resamples=2000)
        cover = ((e.ci_low <= -2) & (-2 <= e.ci_high)).mean()
        assert lowest <= cover <= highest, (interval, cover)
    with pytest.raises(ValueError, match="interval='student' is not one of noncentral-t, bca, percentile"):
        cohens_d(clean, noisy, rng=rng, interval="student")


def test_lag1_autocorrelation_of_ar1_and_of_white_noise():
    rng = np.random.default_rng(0)
    x = np.zeros((20, 500))
    eps = rng.standard_normal((20, 500))
    for t in range(1, 500):
        x[:, t] = 0.5 * x[:, t - 1] + eps[:, t]
    r = lag1_autocorrelation(x)
    assert r.ci_low < 0.5 < r.ci_high and r.n_pairs == 20 * 499
    white = lag1_autocorrelation(rng.standard_normal((20, 117)))
    assert white.ci_low < 0 < white.ci_high
