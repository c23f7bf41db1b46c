"""The Gauss-Newton / tensor split against dense float64 ground truth: H reverse-over-reverse
(torch.autograd.functional.hessian, confirmed by central differences), G = (1/N) sum J_n^T H_n J_n
from torch.func.jacrev and the softmax Hessian."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from tests.workers.curvature_cases import CASES, RELU_BN, Case, group_slices, make
from tests.workers.test_curvature import assert_pure_and_reproducible
from workers.curvature import gauss_newton_split, layerwise_trace, parameter_groups
from workers.curvature.hvp import evaluation_mode
from workers.curvature.split import split_products


def _gelu():
    return nn.Sequential(nn.Linear(4, 5), nn.GELU(), nn.Linear(5, 3))


GELU = Case("mlp_gelu", _gelu, (4,))
SPLIT_CASES = [*CASES, GELU, RELU_BN]
IDS = [c.id for c in SPLIT_CASES]


def dense_split(model, x, y):
    """(H, G, slices) over the parameters in group order, eval mode, float64."""
    groups = parameter_groups(model)
    shapes, sizes = [p.shape for p in groups.params], [p.numel() for p in groups.params]
    flat = torch.cat([p.detach().reshape(-1) for p in groups.params])

    def logits(f):
        parts = [t.reshape(s) for t, s in zip(f.split(sizes), shapes)]
        return functional_call(model, dict(zip(groups.param_names, parts)), (x,))

    with evaluation_mode(model):
        h = torch.autograd.functional.hessian(lambda f: nn.functional.cross_entropy(logits(f), y), flat)
        jac = jacrev(logits)(flat)  # [N, C, P]
        p = torch.softmax(logits(flat), 1)
    hn = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    g = torch.einsum("ncp,ncd,ndq->pq", jac, hn, jac) / len(x)
    return h, g, group_slices(groups)


def test_the_dense_oracle_agrees_with_central_differences():
    model, _, x, y = make(CASES[1])  # through BatchNorm in eval mode
    h, _, _ = dense_split(model, x, y)
    groups = parameter_groups(model)
    flat = torch.cat([p.detach().reshape(-1) for p in groups.params])
    sizes = [p.numel() for p in groups.params]

    def gradient(f):
        with torch.no_grad():
            for p, part in zip(groups.params, f.split(sizes)):
                p.copy_(part.reshape(p.shape))
        with evaluation_mode(model):
            loss = nn.functional.cross_entropy(model(x), y)
            return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, groups.params)])

    columns = [0, 7, len(flat) - 1]
    eps = 1e-5
    for i in columns:
        e = torch.zeros_like(flat)
        e[i] = eps
        column = (gradient(flat + e) - gradient(flat - e)) / (2 * eps)
        assert torch.allclose(column, h[:, i], atol=1e-8), i
    gradient(flat)  # parameters back


@pytest.mark.parametrize("case", SPLIT_CASES, ids=IDS)
def test_products_equal_the_dense_hessian_and_gauss_newton_products(case):
    model, criterion, x, y = make(case)
    h, g, _ = dense_split(model, x, y)
    groups = parameter_groups(model)
    z = [torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(i))
         for i, p in enumerate(groups.params)]
    with evaluation_mode(model):
        _, products = split_products(model, criterion, x, y, groups.params)
        hz, gz = products(z)
    flat = torch.cat([t.reshape(-1) for t in z])
    assert torch.allclose(torch.cat([t.reshape(-1) for t in hz]), h @ flat, atol=1e-12 * h.abs().max() * len(flat))
    assert torch.allclose(torch.cat([t.reshape(-1) for t in gz]), g @ flat, atol=1e-12 * g.abs().max() * len(flat))


@pytest.mark.parametrize("case", SPLIT_CASES, ids=IDS)
def test_every_estimate_is_within_four_standard_errors_of_the_dense_value(case):
    model, criterion, x, y = make(case)
    h, g, slices = dense_split(model, x, y)
    split = gauss_newton_split(model, criterion, x, y, num_probes=1500, generator=torch.Generator().manual_seed(2))
    exact = {"trace": torch.stack([h[s, s].trace() for s in slices]),
             "ggn_trace": torch.stack([g[s, s].trace() for s in slices]),
             "tensor_trace": torch.stack([(h - g)[s, s].trace() for s in slices])}
    for name, values in exact.items():
        estimate, se = getattr(split, name), split.stderr[name]
        assert ((estimate - values).abs() <= 4 * se + 1e-12).all(), (name, estimate, values, se)
    # common random numbers: the tensor part's spread is its own, less than the sum of the two
    assert (split.stderr["tensor_trace"] ** 2 <= split.stderr["trace"] ** 2 + split.stderr["ggn_trace"] ** 2
            + 1e-15).all()


@pytest.mark.parametrize("case", SPLIT_CASES, ids=IDS)
def test_the_head_block_has_no_tensor_part(case):
    model, criterion, x, y = make(case)
    h, g, slices = dense_split(model, x, y)
    head = slices[-1]  # the last module produces the logits in every case
    assert torch.allclose(h[head, head], g[head, head], atol=1e-12)
    split = gauss_newton_split(model, criterion, x, y, num_probes=400, generator=torch.Generator().manual_seed(3))
    assert abs(split.tensor_trace[-1]) <= 4 * split.stderr["tensor_trace"][-1] + 1e-12


def test_piecewise_linear_blocks_have_no_tensor_part_on_the_diagonal_but_off_it():
    model, criterion, x, y = make(RELU_BN)
    h, g, slices = dense_split(model, x, y)
    tensor = h - g
    for s in slices:
        assert tensor[s, s].abs().max() < 1e-12
    assert tensor.abs().max() > 1e-3  # the tensor part lives off the diagonal (F1)
    split = gauss_newton_split(model, criterion, x, y, num_probes=50, generator=torch.Generator().manual_seed(4))
    # per probe, z_l^T (H^T z)_l = sum over m != l of z_l^T H^T_lm z_m: not zero, but zero in expectation
    assert split.tensor_values.abs().max() > 1e-6
    assert ((split.tensor_trace.abs()) <= 4 * split.stderr["tensor_trace"] + 1e-12).all()


def test_the_hessian_values_are_layerwise_traces_on_the_same_probes():
    model, criterion, x, y = make(CASES[2])  # weight sharing
    split = gauss_newton_split(model, criterion, x, y, num_probes=5, generator=torch.Generator().manual_seed(5))
    single = layerwise_trace(model, criterion, x, y, num_probes=5, generator=torch.Generator().manual_seed(5))
    assert split.layers == single.layers
    assert torch.allclose(split.hessian_values, single.probe_values, rtol=1e-12, atol=1e-14)


def test_split_is_reproducible_and_leaves_the_model_as_it_was():
    assert_pure_and_reproducible(
        lambda model, criterion, x, y, g: gauss_newton_split(model, criterion, x, y, num_probes=3, generator=g),
        lambda r: (r.hessian_values, r.ggn_values))


@pytest.mark.parametrize("criterion, message", [
    (nn.MSELoss(), "gauss_newton_split supports torch.nn.functional.cross_entropy"),
    (nn.CrossEntropyLoss(reduction="sum"), "reduction='sum'"),
    (nn.CrossEntropyLoss(label_smoothing=0.1), "label_smoothing=0.1"),
])
def test_losses_other_than_the_mean_cross_entropy_are_refused(criterion, message):
    model, _, x, y = make(CASES[0])
    with pytest.raises(ValueError, match=message):
        gauss_newton_split(model, criterion, x, y)
    with pytest.raises(ValueError, match="num_probes=0"):
        gauss_newton_split(model, nn.CrossEntropyLoss(), x, y, num_probes=0)
