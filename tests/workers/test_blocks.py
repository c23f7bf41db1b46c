"""Inter-layer blocks ||A_lm||_F^2 and their metrics against the dense float64 Hessian and
Gauss-Newton matrix (reverse-over-reverse H, jacrev G: tests/workers/test_split.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.workers.curvature_cases import CASES, RELU_BN, Case, make
from tests.workers.test_curvature import assert_pure_and_reproducible
from tests.workers.test_split import GELU, dense_split
from workers.curvature import gn_gap, interlayer_blocks, stable_rank, top_eigenvalues
from workers.curvature.blocks import InterlayerBlocks, walsh_rows


def _deep():
    """Six groups: the Walsh design has phantom columns (n_H = 8)."""
    layers = [nn.Linear(4, 4) for _ in range(5)]
    return nn.Sequential(*(m for layer in layers for m in (layer, nn.Tanh())), nn.Linear(4, 3))


DEEP = Case("deep_tanh", _deep, (4,))


def dense_blocks(matrix, slices):
    return torch.stack([torch.stack([matrix[a, b].square().sum() for b in slices]) for a in slices])


def exact_blocks(layers, operator, frob):
    """An InterlayerBlocks holding exact values, to test the metrics' formulas."""
    return InterlayerBlocks(layers=layers, numel=[0] * len(layers), design="dense", operator=operator,
                            values=frob[None], phantoms=None, matvecs=0, loss=0.0)


@pytest.mark.parametrize("design", ["walsh", "signs", "columns"])
@pytest.mark.parametrize("operator", ["hessian", "ggn", "tensor"])
@pytest.mark.parametrize("case", [CASES[1], DEEP, RELU_BN], ids=["cnn_batchnorm", "deep_tanh", "relu_batchnorm"])
def test_every_pair_within_four_standard_errors_of_the_dense_value(case, operator, design):
    model, criterion, x, y = make(case)
    h, g, slices = dense_split(model, x, y)
    dense = {"hessian": h, "ggn": g, "tensor": h - g}[operator]
    exact = dense_blocks(dense, slices)
    probes = {"columns": 300, "walsh": 600, "signs": 1500}[design]
    est = interlayer_blocks(model, criterion, x, y, num_probes=probes, design=design, operator=operator,
                            generator=torch.Generator().manual_seed(7))
    assert est.frob_sq.shape == exact.shape and est.operator == operator
    assert ((est.frob_sq - exact).abs() <= 4 * est.stderr + 1e-12 * exact.max()).all(), (est.frob_sq, exact)
    if design == "walsh":
        n_h, rows = walsh_rows(len(slices))
        assert est.matvecs == probes * len(rows)
        if est.phantoms is not None and est.phantoms.shape[-1]:  # columns past L: true value 0
            mean, se = est.phantoms.mean(0), est.phantoms.std(0) / probes**0.5
            assert (mean.abs() <= 4 * se + 1e-12).all()


def test_walsh_rows_cover_every_xor():
    for groups in (2, 3, 6, 17, 41, 73):
        n_h, rows = walsh_rows(groups)
        assert n_h >= groups and {i ^ j for i in rows for j in rows} == set(range(n_h))
    assert [len(walsh_rows(n)[1]) for n in (17, 41, 73)] == [11, 15, 23]  # the spec's counts


@pytest.mark.parametrize("case", [*CASES, GELU, RELU_BN, DEEP], ids=lambda c: c.id)
def test_coupling_is_at_most_one_for_the_gauss_newton_part(case):
    model, _, x, y = make(case)
    h, g, slices = dense_split(model, x, y)
    names = [str(i) for i in range(len(slices))]
    ggn = exact_blocks(names, "ggn", dense_blocks(g, slices))
    assert (ggn.coupling <= 1 + 1e-12).all()


def test_coupling_above_one_flags_the_tensor_part_and_the_metrics_follow_their_formulas():
    model, criterion, x, y = make(CASES[0])
    h, g, slices = dense_split(model, x, y)
    f = dense_blocks(h, slices)
    blocks = exact_blocks(["0", "2"], "hessian", f)
    assert blocks.coupling.max() > 1  # mlp_tanh: ||H_01||_F exceeds the geometric mean of its diagonal norms
    assert torch.allclose(blocks.resonance, f.sqrt())
    assert torch.allclose(blocks.off_block_fraction, 1 - f.diagonal() / f.sum(1))
    assert abs(blocks.phi - float(1 - f.diagonal().sum() / f.sum())) < 1e-15
    eigen = top_eigenvalues(model, criterion, x, y, layers=["0", "2"], max_matvecs=40, tol=1e-12)
    exact_rank = torch.stack([h[s, s].square().sum() / torch.linalg.eigvalsh(h[s, s]).abs().max() ** 2
                              for s in slices])
    assert torch.allclose(stable_rank(blocks, eigen), exact_rank, rtol=1e-8)


def test_gn_gap_is_the_ratio_of_tensor_to_gauss_newton_norms_and_vanishes_on_piecewise_linear_diagonals():
    model, _, x, y = make(RELU_BN)
    h, g, slices = dense_split(model, x, y)
    names = [str(i) for i in range(len(slices))]
    gap = gn_gap(exact_blocks(names, "tensor", dense_blocks(h - g, slices)),
                 exact_blocks(names, "ggn", dense_blocks(g, slices)))
    assert gap.diagonal().abs().max() < 1e-6 and gap.max() > 1e-3  # F1: the tensor part is off the diagonal
    with pytest.raises(ValueError, match="operator='tensor' and operator='ggn'"):
        gn_gap(exact_blocks(names, "ggn", dense_blocks(g, slices)), exact_blocks(names, "ggn", dense_blocks(g, slices)))


@pytest.mark.parametrize("design", ["columns", "walsh", "signs"])
def test_blocks_are_reproducible_and_leave_the_model_as_it_was(design):
    assert_pure_and_reproducible(
        lambda model, criterion, x, y, g: interlayer_blocks(model, criterion, x, y, num_probes=2, design=design,
                                                            operator="tensor", generator=g),
        lambda r: (r.values,))


@pytest.mark.parametrize("kwargs, message", [
    (dict(design="rows"), "design='rows' is not one of"),
    (dict(operator="fisher"), "operator='fisher' is not one of"),
    (dict(num_probes=0), "num_probes=0"),
])
def test_bad_arguments(kwargs, message):
    model, criterion, x, y = make(CASES[0])
    with pytest.raises(ValueError, match=message):
        interlayer_blocks(model, criterion, x, y, **kwargs)
    with pytest.raises(ValueError, match="interlayer_blocks supports"):
        interlayer_blocks(model, nn.MSELoss(), x, y)
