"""Per-layer Hutch++ with shared products, against a dense float64 reference on the same
random vectors, and unbiased over seeds."""

from __future__ import annotations

import pytest
import torch

from tests.workers.curvature_cases import CASES, RELU_BN, make
from tests.workers.test_blocks import DEEP
from tests.workers.test_curvature import assert_pure_and_reproducible
from tests.workers.test_split import dense_split
from workers.curvature import parameter_groups
from workers.curvature.probes import draw_probe
from workers.curvature.sketch import sketched_trace, xtrace_estimates


def dense_reference(h, slices, params, *, budget, sketch, seed):
    """The same algorithm on the dense Hessian, drawing the same vectors in the same order."""
    g = torch.Generator().manual_seed(seed)

    def flat_probe():
        return torch.cat([t.reshape(-1) for t in draw_probe(params, distribution="rademacher", generator=g)])

    y = torch.stack([h @ flat_probe() for _ in range(sketch)], 1)
    bases = [torch.linalg.qr(y[s])[0][:, : min(y[s].shape)] for s in slices]
    exact = []
    for j in range(sketch):
        signs = (torch.randint(0, 2, (len(slices),), generator=g) * 2 - 1).tolist()
        q = torch.cat([signs[l] * b[:, j] if j < b.shape[1] else torch.zeros(s.stop - s.start, dtype=h.dtype)
                       for l, (b, s) in enumerate(zip(bases, slices))])
        w = h @ q
        exact.append(torch.stack([q[s] @ w[s] for s in slices]))
    residual = []
    for _ in range(budget - 2 * sketch):
        v = flat_probe()
        v = torch.cat([v[s] - b @ (b.T @ v[s]) for b, s in zip(bases, slices)])
        w = h @ v
        residual.append(torch.stack([v[s] @ w[s] for s in slices]))
    return torch.stack(exact), torch.stack(residual)


@pytest.mark.parametrize("case", [CASES[1], CASES[2], DEEP, RELU_BN], ids=lambda c: c.id)
def test_equals_the_dense_reference_on_the_same_vectors(case):
    model, criterion, x, y = make(case)
    h, _, slices = dense_split(model, x, y)
    est = sketched_trace(model, criterion, x, y, budget=11, sketch=3, generator=torch.Generator().manual_seed(4))
    exact, residual = dense_reference(h, slices, parameter_groups(model).params, budget=11, sketch=3, seed=4)
    assert torch.allclose(est.exact_values, exact, atol=1e-12) and torch.allclose(est.probe_values, residual,
                                                                                  atol=1e-12)
    assert est.matvecs == 11 and len(est.probe_values) == 5


@pytest.mark.parametrize("case", [CASES[1], DEEP, RELU_BN], ids=lambda c: c.id)
def test_unbiased_over_sketches_and_probes(case):
    model, criterion, x, y = make(case)
    h, _, slices = dense_split(model, x, y)
    exact = torch.stack([h[s, s].trace() for s in slices])
    runs = torch.stack([sketched_trace(model, criterion, x, y, budget=9, generator=torch.Generator().manual_seed(i))
                        .trace for i in range(300)])
    assert ((runs.mean(0) - exact).abs() <= 4 * runs.std(0) / 300**0.5 + 1e-12).all()


def test_a_sketch_as_wide_as_a_block_leaves_its_residual_zero():
    model, criterion, x, y = make(CASES[0])  # groups of 25 and 18 parameters
    est = sketched_trace(model, criterion, x, y, budget=60, sketch=26, generator=torch.Generator().manual_seed(0))
    assert est.sketch_rank == [25, 18]
    assert est.probe_values.abs().max() < 1e-12  # nothing is left outside the sketch


@pytest.mark.parametrize("method", ["hutch++", "xtrace"])
def test_sketched_trace_is_reproducible_and_leaves_the_model_as_it_was(method):
    assert_pure_and_reproducible(
        lambda model, criterion, x, y, g: sketched_trace(model, criterion, x, y, budget=8, method=method, generator=g),
        lambda r: (r.exact_values, r.probe_values))


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="xtrace", budget=7), "budget=7; XTrace needs an even budget"),
    (dict(method="hutch"), "method='hutch' is not one of \\('hutch\\+\\+', 'xtrace'\\)"),
    (dict(budget=2), "budget=2"),
    (dict(budget=6, sketch=3), "sketch=3 leaves no residual probe of budget=6"),
    (dict(sketch=0), "sketch=0"),
])
def test_bad_arguments(kwargs, message):
    model, criterion, x, y = make(CASES[0])
    with pytest.raises(ValueError, match=message):
        sketched_trace(model, criterion, x, y, **kwargs)


def leave_one_out(a, tests):
    """XTrace by its definition: for each i, the basis of A W without column i, its exact
    trace, and Hutchinson with w_i on the rest."""
    estimates = []
    for i in range(tests.shape[1]):
        q, _ = torch.linalg.qr(a @ torch.cat([tests[:, :i], tests[:, i + 1:]], 1))
        p = torch.eye(len(a), dtype=a.dtype) - q @ q.T
        estimates.append((q.T @ a @ q).trace() + tests[:, i] @ p @ a @ p @ tests[:, i])
    return torch.stack(estimates)


def test_xtrace_equals_its_leave_one_out_definition_and_is_unbiased():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 30, generator=g, dtype=torch.float64)
    a = a + a.T
    tests = torch.randint(0, 2, (30, 5), generator=g).double() * 2 - 1
    assert torch.allclose(xtrace_estimates(lambda v: a @ v, tests), leave_one_out(a, tests), atol=1e-12)
    runs = torch.stack([xtrace_estimates(lambda v: a @ v, torch.randint(
        0, 2, (30, 5), generator=torch.Generator().manual_seed(s)).double() * 2 - 1).mean() for s in range(2000)])
    assert abs(runs.mean() - a.trace()) <= 4 * runs.std() / 2000**0.5


@pytest.mark.parametrize("case", [CASES[1], DEEP, RELU_BN], ids=lambda c: c.id)
def test_per_layer_xtrace_equals_the_dense_reference_and_exact_small_blocks(case):
    model, criterion, x, y = make(case)
    h, _, slices = dense_split(model, x, y)
    groups = parameter_groups(model)
    est = sketched_trace(model, criterion, x, y, budget=8, method="xtrace", generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    for l, s in enumerate(slices):
        block = h[s, s]
        if len(block) <= 8:  # small blocks: exact, from unit vectors
            assert torch.allclose(est.probe_values[:, l], block.trace().expand(4), atol=1e-12)
            continue
        params = [p for p, gi in zip(groups.params, groups.group_of) if gi == l]
        tests = torch.stack([torch.cat([t.reshape(-1) for t in draw_probe(params, distribution="rademacher",
                                                                          generator=g)]) for _ in range(4)], 1)
        assert torch.allclose(est.probe_values[:, l], leave_one_out(block, tests), atol=1e-10)
    assert est.method == "xtrace" and len(est.exact_values) == 0
