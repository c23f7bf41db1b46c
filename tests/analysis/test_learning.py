"""Learning curves, the onset of memorisation, and the first alarm next to it, on values
worked out by hand."""

import numpy as np
import pyarrow as pa

from analysis.learning import alarm_timing, learning, memorisation_summary, timing_counts


def metric_rows():
    # run c: clean; n1 memorises from epoch 3 (0.6 >= 0.5); n2 never reaches 0.5; n3 from epoch 2
    memorised = {"c": [0.0, 0.0, 0.0, 0.0], "n1": [0.1, 0.3, 0.6, 0.9], "n2": [0.1, 0.2, 0.3, 0.4],
                 "n3": [0.2, 0.5, 0.7, 0.8]}
    eta = {"c": 0.0, "n1": 0.4, "n2": 0.4, "n3": 0.6}
    rows = []
    for run, values in memorised.items():
        for epoch, value in enumerate(values, start=1):
            rows += [dict(run_id=run, configuration="cfg", eta=eta[run], epoch=float(epoch), name="memorised",
                          value=value),
                     dict(run_id=run, configuration="cfg", eta=eta[run], epoch=float(epoch), name="test_acc",
                          value=0.9 - 0.1 * epoch * (eta[run] > 0))]
    return pa.Table.from_pylist(rows)


class FakeDetection:
    """What alarm_timing reads of a Detection: the runs and their detection epochs."""

    def __init__(self, run_ids, eta, epochs):
        self.ensemble = type("E", (), {"run_ids": run_ids, "eta": np.array(eta), "configuration": "cfg",
                                       "layer": "head"})()
        self.detection_epoch = np.array(epochs, dtype=float)


def test_onset_final_values_and_the_summary():
    curves = learning(metric_rows(), "cfg")
    assert curves.run_ids == ["c", "n1", "n2", "n3"]
    np.testing.assert_array_equal(curves.onset(), [np.nan, 3.0, np.nan, 2.0])  # clean runs have none
    np.testing.assert_allclose(curves.final(curves.memorised), [0.0, 0.9, 0.4, 0.8])
    summary = memorisation_summary(curves)
    assert summary["by_eta"][0.4] == {"runs": 2, "final_memorised_median": 0.65, "final_test_acc_median": 0.5,
                                      "reached_onset": 1, "onset_epoch_median": 3.0}
    assert summary["memorised"] is True  # eta = 0.6: its one run ends at 0.8
    assert learning(metric_rows(), "other") is None and learning(None, "cfg") is None


def test_the_first_alarm_against_the_onset():
    curves = learning(metric_rows(), "cfg")
    # n1: alarm at 1, onset 3: precedes; n2: alarm, no onset; n3: alarm at 2.5, onset 2: coincides
    rows = alarm_timing(curves, FakeDetection(["c", "n1", "n2", "n3"], [0, 0.4, 0.4, 0.6], [np.nan, 1.0, 2.0, 2.5]))
    assert [(r["run_id"], r["relation"], r["lead"]) for r in rows][0] == ("n1", "precedes", 2.0)
    assert [r["relation"] for r in rows] == ["precedes", "no onset", "coincides"]
    late = alarm_timing(curves, FakeDetection(["n1", "n3"], [0.4, 0.6], [5.0, np.nan]))
    assert [r["relation"] for r in late] == ["follows", "no alarm"]
    counts = timing_counts(rows + late)
    assert (counts["precedes"], counts["coincides"], counts["follows"], counts["runs"]) == (1, 1, 1, 5)
    assert counts["median_lead"] == -0.5  # leads 2.0, -0.5, -2.0
