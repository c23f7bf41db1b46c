import numpy as np
import pytest
from scipy import stats

from analysis.cusum import calibrate, cusum, normal_cdf, two_sided_arl


def reference_cusum(z, k, h):
    """Eq. (11) written out one run and one step at a time."""
    first = []
    for row in z:
        s_plus = s_minus = 0.0
        alarm = -1
        for t, value in enumerate(row):
            if np.isnan(value):
                continue
            s_plus, s_minus = max(0.0, s_plus + value - k), max(0.0, s_minus - value - k)
            if max(s_plus, s_minus) > h and alarm < 0:
                alarm = t
        first.append(alarm)
    return np.array(first)


def test_vectorised_cusum_equals_the_recursion_written_out():
    z = np.random.default_rng(0).standard_normal((50, 200))
    z[3, 10:20] = np.nan
    got = cusum(z, k=0.5, h=6.0)
    assert np.array_equal(got.first_alert, reference_cusum(z, 0.5, 6.0))
    assert (got.first_alert >= 0).sum() > 3 and (got.first_alert < 0).sum() > 0


@pytest.mark.parametrize("h, published", [(4.0, 168.0), (5.0, 465.0)])
def test_markov_chain_arl_matches_the_published_table(h, published):
    # Montgomery, Introduction to Statistical Quality Control (6th ed.), table 9.3: the tabular
    # two-sided CUSUM with k = 1/2 has in-control ARL 168 at h = 4 and 465 at h = 5.
    assert two_sided_arl(normal_cdf, normal_cdf, k=0.5, h=h) == pytest.approx(published, rel=0.01)


def test_calibrated_h_on_an_iid_ensemble_agrees_with_an_independent_simulation():
    # 20 clean runs of i.i.d. N(0, 1), 117 snapshots: the pooled leave-one-out z values.
    rng = np.random.default_rng(1)
    runs = rng.standard_normal((20, 117))
    z = np.array([(runs[i] - np.delete(runs, i, 0).mean(0)) / np.delete(runs, i, 0).std(0, ddof=1)
                  for i in range(20)])
    calibration = calibrate(z.ravel(), k=0.5, arl0=1000)
    # Independent check: such a z is sqrt(1 + 1/19) t_18; run the two-sided CUSUM itself on
    # fresh i.i.d. draws of it until every stream alarms and average the run lengths.
    streams, h = 4000, calibration.h
    s_plus, s_minus = np.zeros(streams), np.zeros(streams)
    length = np.zeros(streams)
    alive = np.ones(streams, dtype=bool)
    sim = np.random.default_rng(2)
    t = 0
    while alive.any():
        t += 1
        draw = np.sqrt(1 + 1 / 19) * stats.t.rvs(18, size=streams, random_state=sim)
        s_plus = np.maximum(0, s_plus + draw - 0.5)
        s_minus = np.maximum(0, s_minus - draw - 0.5)
        stop = alive & (np.maximum(s_plus, s_minus) > h)
        length[stop] = t
        alive &= ~stop
    se = length.std() / np.sqrt(streams)
    # the simulated ARL is 1000 within 3 standard errors plus 3% for the finite sample of z
    # values the calibration saw and the Lucas-Crosier combination of the two sides
    assert abs(length.mean() - 1000) < 3 * se + 30, (length.mean(), se, h)


def test_calibration_is_deterministic_and_monotone_in_the_target():
    z = np.random.default_rng(3).standard_normal(2000)
    a, b = calibrate(z, arl0=1000), calibrate(z, arl0=1000)
    assert a.h == b.h and a.arl0 == pytest.approx(1000, rel=1e-6)
    assert calibrate(z, arl0=500).h < a.h < calibrate(z, arl0=2000).h
    assert calibrate(z, k=1.0, arl0=1000).h < a.h < calibrate(z, k=0.25, arl0=1000).h


def test_calibration_refuses_too_few_values():
    with pytest.raises(ValueError, match="at least 10 in-control z values, got 3"):
        calibrate(np.array([0.1, -0.2, np.nan, 0.3]))


def test_a_rule_that_can_never_alert_in_control_gets_h_zero_not_a_crash():
    # |z| <= 0.3 with k = 1: neither CUSUM side ever leaves 0 (I - Q is singular: the ARL is
    # infinite at every h), so in control nothing alerts whatever h is; h = 0 makes any excess an alert.
    z = np.random.default_rng(0).uniform(-0.3, 0.3, 12)
    calibration = calibrate(z, k=1.0, arl0=1000)
    assert calibration.h == 0.0 and calibration.arl0 >= 1000
    assert cusum(z[None], k=1.0, h=0.0).first_alert[0] == -1
    assert cusum(np.array([[0.0, 1.2]]), k=1.0, h=0.0).first_alert[0] == 1
