import numpy as np
import pytest
from scipy import stats

from analysis.analyze import analyze
from analysis.detection import detect, standardise
from analysis.inputs import AnalysisError, Trajectories, ensemble
from tests.analysis.synthetic import trajectories


def load(table, heads=None):
    """Trajectories with the head of each arch in ``heads`` (the store keeps one per configuration)."""
    heads = heads if heads is not None else {"resnet18": "head"}
    pairs = set(zip(table["configuration"].to_pylist(), table["arch"].to_pylist()))
    return Trajectories(table, {c: heads[a] for c, a in pairs if a in heads}, "synthetic")


def test_a_clean_runs_own_trajectory_never_enters_its_baseline():
    e, _ = ensemble(load(trajectories(noisy=0, etas=())), "resnet18-cifar10", "head")
    z, _, _ = standardise(e)
    planted = e.trace.copy()
    planted[0, 40] += 1000.0  # an outlier in clean run 0
    e2 = type(e)(**{**e.__dict__, "trace": planted})
    z2, _, _ = standardise(e2)
    others = np.delete(e.trace, 0, axis=0)
    # run 0's z moves by exactly 1000 / sd(others) at that step: its baseline did not move
    assert z2[0, 40] - z[0, 40] == pytest.approx(1000.0 / others[:, 40].std(ddof=1))
    assert np.array_equal(np.delete(z2[0], 40), np.delete(z[0], 40))
    # another clean run's baseline does include run 0
    assert z2[1, 40] != z[1, 40]


def test_planted_shifts_are_detected_right_after_they_start():
    e, _ = ensemble(load(trajectories(shift=8.0, shift_at=60)), "resnet18-cifar10", "head")
    d = detect(e, k=0.5, arl0=1000)
    noisy = e.eta > 0
    first = d.path.first_alert[noisy]
    after = first[first >= 60]
    # a +8 sd shift adds 7.5 per snapshot to S+: the alert comes within 1-2 snapshots of step 60.
    # A few runs false-alarm before the shift (each with probability about 1 - exp(-60/1000)).
    assert len(after) >= 24 and set(after.tolist()) <= {60, 61}
    assert d.detection_epoch[noisy][first == 60] == pytest.approx(e.epochs[60])


def test_iid_clean_ensembles_false_alarm_as_often_as_their_arl0_says():
    # 30 configurations x 20 clean runs of i.i.d. noise, T = 117 snapshots, ARL0 = 1000.
    table = trajectories(configs=[(f"a{i}", "d") for i in range(30)], noisy=0, etas=(), layers=("head",), seed=4)
    result = analyze(load(table, {f"a{i}": "head" for i in range(30)}), window=(0, 100), ks=(0.5,),
                     arl0s=(1000,), resamples=10)
    alarms = result.summary["false_alarm"]
    expected = 1 - np.exp(-117 / 1000)
    assert alarms["n"] == 600 and result.summary["theoretical_false_alarm"] == pytest.approx(expected)
    assert stats.binomtest(alarms["count"], alarms["n"], expected).pvalue > 1e-3, alarms


def test_misaligned_runs_are_aligned_by_step_with_a_warning_naming_them():
    table = trajectories(noisy=2, drop={("resnet18-cifar10-0.25-1", 300), ("resnet18-cifar10-0.25-1", 400)})
    result = analyze(load(table), ks=(0.5,), arl0s=(1000,), resamples=50)
    assert any("resnet18-cifar10-0.25-1" in note and "aligned by step" in note for note in result.notes)
    assert sum(r["n_runs"] for r in result.table1) == 26


def test_too_few_clean_runs_skip_a_configuration_with_the_reason():
    table = trajectories(configs=(("resnet18", "cifar10"), ("vgg11", "cifar10")), clean=2, noisy=2)
    with pytest.raises(AnalysisError, match="2 clean runs, fewer than the 3"):
        analyze(load(table, {"resnet18": "head", "vgg11": "head"}), resamples=10)


@pytest.mark.parametrize("layer, message", [
    ("nope", "layer 'nope' is not in resnet18-cifar10; its layers are: features, head"),
])
def test_a_layer_that_does_not_exist(layer, message):
    with pytest.raises(AnalysisError, match=message):
        analyze(load(trajectories(noisy=2)), layer=layer, resamples=10)


def test_head_without_metadata_lists_the_layers():
    with pytest.raises(AnalysisError, match="layer=head needs model metadata.*one of: features, head"):
        analyze(load(trajectories(noisy=2), heads={}), resamples=10)
