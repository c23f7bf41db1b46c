"""Per-layer Hutch++ with shared products, against a dense float64 reference on the same
random vectors, and unbiased over seeds."""

from __future__ import annotations

import pytest
import torch

from tests.workers.curvature_cases import CASES, RELU_BN, make
from tests.workers.test_blocks import DEEP
from tests.workers.test_curvature import _assert_unchanged, _bn_dropout_model, _snapshot
from tests.workers.test_split import dense_split
from workers.curvature import parameter_groups
from workers.curvature.probes import draw_probe
from workers.curvature.sketch import sketched_trace


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


def test_sketched_trace_leaves_the_model_as_it_was():
    model = _bn_dropout_model()
    before = _snapshot(model)
    x, y = torch.randn(8, 1, 5, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    a = sketched_trace(model, torch.nn.CrossEntropyLoss(), x, y, generator=torch.Generator().manual_seed(1))
    _assert_unchanged(model, before)
    b = sketched_trace(model, torch.nn.CrossEntropyLoss(), x, y, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.exact_values, b.exact_values) and torch.equal(a.probe_values, b.probe_values)


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="xtrace"), "method='xtrace' is not one of \\('hutch\\+\\+',\\) \\(XTrace is not built yet\\)"),
    (dict(budget=2), "budget=2"),
    (dict(budget=6, sketch=3), "sketch=3 leaves no residual probe of budget=6"),
    (dict(sketch=0), "sketch=0"),
])
def test_bad_arguments(kwargs, message):
    model, criterion, x, y = make(CASES[0])
    with pytest.raises(ValueError, match=message):
        sketched_trace(model, criterion, x, y, **kwargs)
