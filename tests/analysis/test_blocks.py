"""The report's inside-the-Hessian summaries on tables built by hand, with values worked out here."""

import numpy as np
import pyarrow as pa

from analysis.blocks import couplings, stable_ranks
from analysis.inputs import Trajectories

RUNS = {"c1": 0.0, "c2": 0.0, "n1": 0.4}


def pair(run, step, layer, other, value, distance=None):
    index = {"a": 0, "b": 1}
    return dict(run_id=run, configuration="cfg", eta=RUNS[run], step=step, epoch=step / 10, operator="hessian",
                layer=layer, other=other, layer_index=index[layer], other_index=index[other], distance=distance,
                value=value)


def eigen(run, step, layer, value):
    return dict(run_id=run, configuration="cfg", eta=RUNS[run], step=step, epoch=step / 10, layer=layer, trace=value)


def trajectories(pairs, largest, smallest):
    return Trajectories(pa.table({"run_id": []}), {}, "hand", pairs=pa.Table.from_pylist(pairs),
                        eigen=largest and pa.Table.from_pylist(largest),
                        eigen_min=smallest and pa.Table.from_pylist(smallest))


def test_stable_rank_pools_the_groups_frobenius_norms_over_their_spectral_norms():
    pairs = [pair("c1", 10, "a", "a", 8.0), pair("c2", 10, "a", "a", 4.0), pair("n1", 10, "a", "a", 9.0),
             pair("c1", 10, "a", "b", 100.0),  # off the diagonal: not a block's own norm
             pair("c1", 20, "a", "a", 5.0),  # no eigenvalues logged at step 20
             pair("c1", 10, "b", "b", 7.0)]  # nor for layer b
    largest = [eigen("c1", 10, "a", 2.0), eigen("c2", 10, "a", 1.0), eigen("n1", 10, "a", 1.0)]
    smallest = [eigen("c1", 10, "a", -1.0), eigen("c2", 10, "a", 0.5), eigen("n1", 10, "a", -3.0)]
    (ranks,) = stable_ranks(trajectories(pairs, largest, smallest), "cfg")
    assert ranks.quantity == "stable rank" and ranks.layers == ["a"] and ranks.epochs.tolist() == [1.0]
    # clean: (8 + 4) / (2^2 + 1^2); noisy: 9 / max(1, |-3|)^2, the negative end the larger
    np.testing.assert_allclose(ranks.values["clean"], [[12 / 5]])
    np.testing.assert_allclose(ranks.values["noisy"], [[1.0]])
    assert stable_ranks(trajectories(pairs, None, None), "cfg") == []  # no eigenvalues logged
    assert stable_ranks(trajectories(pairs, [eigen("c1", 30, "a", 1.0)], [eigen("c1", 30, "a", 0.0)]), "cfg") == []


def test_couplings_carry_the_logged_graph_distances_and_none_for_older_stores():
    def table(distance):
        return [pair(run, 10, a, b, value, distance if a != b else 0)
                for run in ("c1", "n1") for a, b, value in
                (("a", "a", 4.0), ("b", "b", 9.0), ("a", "b", 3.0), ("b", "a", 3.0))]

    (logged,) = couplings(Trajectories(pa.table({"run_id": []}), {}, "hand", pairs=pa.Table.from_pylist(table(3))),
                          "cfg")
    assert logged.distance.tolist() == [[0, 3], [3, 0]]
    # C_ab = ||H_ab||_F / sqrt(||H_aa||_F ||H_bb||_F) = sqrt(3) / sqrt(2 * 3)
    np.testing.assert_allclose(logged.matrices["clean"], [[1, 0.5**0.5], [0.5**0.5, 1]])
    (older,) = couplings(Trajectories(pa.table({"run_id": []}), {}, "hand",
                                      pairs=pa.Table.from_pylist(table(None))), "cfg")
    assert older.distance is None
