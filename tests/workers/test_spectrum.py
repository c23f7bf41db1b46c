"""Lanczos, extreme eigenvalues and spectral densities against dense float64 ground truth
(eigvalsh of the dense Hessian and of its diagonal blocks)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.workers.curvature_cases import CASES, RELU_BN, dense_hessian, make
from tests.workers.test_curvature import assert_pure_and_reproducible
from workers.curvature import lanczos, parameter_groups, smooth_density, spectral_density, top_eigenvalues
from workers.curvature.hvp import NETWORK
from workers.curvature.reference import power_iteration

SPECTRAL_CASES = [*CASES, RELU_BN]
IDS = [c.id for c in SPECTRAL_CASES]


def random_symmetric(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    return (a + a.T) / 2


def dense_case(case):
    model, criterion, x, y = make(case)
    h, slices = dense_hessian(model, criterion, x, y)
    return model, (criterion, x, y), h, slices, parameter_groups(model).names


# --- lanczos, the pure process ---------------------------------------------------------


@pytest.mark.parametrize("reorthogonalize", ["full", "none"])
def test_lanczos_with_as_many_steps_as_dimensions_finds_every_eigenvalue(reorthogonalize):
    a = random_symmetric(12)
    run = lanczos(lambda v: a @ v, torch.ones(12, dtype=torch.float64), steps=12, reorthogonalize=reorthogonalize)
    exact = torch.linalg.eigvalsh(a)
    assert run.matvecs == 12 and torch.allclose(run.ritz_values, exact, rtol=1e-8, atol=1e-8 * exact.abs().max())
    assert torch.allclose(run.ritz_weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert run.residuals.max() < 1e-8  # the Krylov space is all of R^n
    if reorthogonalize == "full":
        assert torch.allclose(run.basis @ run.basis.T, torch.eye(12, dtype=torch.float64), atol=1e-12)
        y = run.ritz_vectors([11])
        assert torch.allclose(a @ y[0], exact[-1] * y[0], atol=1e-8)
    else:
        assert run.basis is None


def test_quadrature_reproduces_every_moment_up_to_degree_2m_minus_1():
    a, m = random_symmetric(40, seed=1), 8
    v = torch.randn(40, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    run = lanczos(lambda x: a @ x, v, steps=m)
    u = v / v.norm()
    for p in range(2 * m):
        exact = u @ torch.linalg.matrix_power(a, p) @ u
        quadrature = (run.ritz_weights * run.ritz_values**p).sum()
        assert abs(quadrature - exact) <= 1e-10 * max(1.0, float((a.abs().sum(1).max()) ** p)), p
    p = 2 * m  # and not beyond: degree 2m is the first the quadrature misses
    assert abs((run.ritz_weights * run.ritz_values**p).sum() - u @ torch.linalg.matrix_power(a, p) @ u) > 1e-6


def test_converged_ritz_values_satisfy_the_residual_and_kato_temple_bounds():
    a = random_symmetric(200, seed=3)
    run = lanczos(lambda x: a @ x, torch.ones(200, dtype=torch.float64), steps=60, tol=1e-6)
    exact = torch.linalg.eigvalsh(a)
    assert run.matvecs < 60  # stopped by the residual rule
    for theta, r, nearest, gap in ((run.ritz_values[-1], run.residuals[-1], exact[-1], exact[-1] - exact[-2]),
                                   (run.ritz_values[0], run.residuals[0], exact[0], exact[1] - exact[0])):
        assert r <= 1e-6 * exact.abs().max() + 1e-12
        assert abs(theta - nearest) <= r + 1e-12
        assert abs(theta - nearest) <= r**2 / (gap - r) + 1e-12  # Kato-Temple, gap measured from theta


def test_lanczos_beats_power_iteration_and_power_iteration_has_the_corrected_rate():
    rho = 0.9
    d = torch.tensor([1.0, rho] + [0.5 * (1 - 0.01 * i) for i in range(98)], dtype=torch.float64)
    v0 = torch.ones(100, dtype=torch.float64)
    power = power_iteration(lambda x: d * x, v0, max_matvecs=60, rtol=None)
    errors = torch.tensor([1 - e for e in power.estimates[20:]], dtype=torch.float64)
    slope = float((errors.log()[-1] - errors.log()[0]) / (len(errors) - 1))
    # 002 states the rate as |lambda1/lambda2|; the Rayleigh quotient error falls like rho^(2i)
    assert abs(slope - 2 * math.log(rho)) <= 0.05 * abs(2 * math.log(rho))
    run = lanczos(lambda x: d * x, v0, steps=20)  # Kaniel-Paige-Saad: exp(-4 m sqrt(gamma)), gamma = 0.25
    assert abs(run.ritz_values[-1] - 1) < 1e-10 < 1e-4 < 1 - power.estimates[19]


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(steps=0), ValueError, "steps=0"),
    (dict(steps=3, reorthogonalize="partial"), ValueError, "reorthogonalize='partial'"),
    (dict(steps=3, tol=0), ValueError, "tol=0"),
    (dict(steps=3, k=0), ValueError, "k=0"),
])
def test_lanczos_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        lanczos(lambda v: v, torch.ones(4, dtype=torch.float64), **kwargs)


def test_lanczos_bad_vectors_and_operators():
    with pytest.raises(ValueError, match="norm 0.0"):
        lanczos(lambda v: v, torch.zeros(4), steps=2)
    with pytest.raises(ValueError, match="1-D tensor"):
        lanczos(lambda v: v, torch.ones(2, 2), steps=2)
    with pytest.raises(ValueError, match="shape \\(4,\\)"):
        lanczos(lambda v: v[:2], torch.ones(4), steps=2)
    with pytest.raises(FloatingPointError, match="step 1"):
        lanczos(lambda v: v * math.nan, torch.ones(4), steps=2)


# --- top_eigenvalues on models ----------------------------------------------------------


@pytest.mark.parametrize("case", SPECTRAL_CASES, ids=IDS)
def test_top_eigenvalues_with_all_dimensions_are_the_dense_eigenvalues(case):
    model, (criterion, x, y), h, slices, names = dense_case(case)
    g = torch.Generator().manual_seed(0)
    whole = top_eigenvalues(model, criterion, x, y, k=2, max_matvecs=h.shape[0], tol=1e-14, generator=g)
    exact = torch.linalg.eigvalsh(h)
    scale = exact.abs().max()
    assert whole.layers == [NETWORK] and whole.numel == [h.shape[0]]
    assert torch.allclose(whole.largest[0], exact.flip(0)[:2], rtol=1e-8, atol=1e-8 * scale)
    assert torch.allclose(whole.smallest[0], exact[:2], rtol=1e-8, atol=1e-8 * scale)
    blocks = top_eigenvalues(model, criterion, x, y, layers=names, max_matvecs=h.shape[0], tol=1e-14, generator=g)
    assert blocks.layers == names
    for l, s in enumerate(slices):
        block = torch.linalg.eigvalsh(h[s, s])
        assert torch.allclose(blocks.lambda_max[l], block[-1], rtol=1e-8, atol=1e-8 * scale)
        assert torch.allclose(blocks.lambda_min[l], block[0], rtol=1e-8, atol=1e-8 * scale)
        # Cauchy interlacing: a principal block's spectrum lies inside the whole one's
        assert exact[0] - 1e-10 * scale <= blocks.lambda_min[l] <= blocks.lambda_max[l] <= exact[-1] + 1e-10 * scale


def test_blocks_are_positive_semidefinite_where_the_model_is_piecewise_linear_in_each_block():
    model, (criterion, x, y), h, slices, names = dense_case(RELU_BN)
    blocks = top_eigenvalues(model, criterion, x, y, layers=names, max_matvecs=h.shape[0], tol=1e-14,
                             generator=torch.Generator().manual_seed(0))
    assert (blocks.lambda_min >= -1e-12 * blocks.lambda_max.max()).all()
    assert torch.linalg.eigvalsh(h)[0] < -1e-6  # while the whole Hessian is indefinite


@pytest.mark.parametrize("case", SPECTRAL_CASES, ids=IDS)
def test_converged_extremes_are_within_their_residuals_of_the_dense_ones(case):
    model, (criterion, x, y), h, slices, names = dense_case(case)
    est = top_eigenvalues(model, criterion, x, y, layers=[names[-1]], max_matvecs=40, tol=1e-4,
                          generator=torch.Generator().manual_seed(1))
    block = torch.linalg.eigvalsh(h[slices[-1], slices[-1]])
    assert est.converged.all() and est.matvecs[0] <= 40
    r_max, r_min = est.residuals[0, :, 0]
    assert r_max <= 1e-4 * block.abs().max() + 1e-14
    assert abs(est.lambda_max[0] - block[-1]) <= r_max + 1e-12
    assert abs(est.lambda_min[0] - block[0]) <= r_min + 1e-12


def test_top_eigenvalues_are_reproducible_and_leave_the_model_as_it_was():
    assert_pure_and_reproducible(
        lambda model, criterion, x, y, g: top_eigenvalues(model, criterion, x, y, layers=["0", "5"], generator=g),
        lambda r: (r.largest, r.smallest, r.residuals, torch.tensor(r.matvecs)))


def test_a_block_smaller_than_k_is_padded_with_nan():
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Tanh(), nn.Linear(1, 2)).double()
    x, y = torch.randn(6, 1, dtype=torch.float64), torch.tensor([0, 1] * 3)
    est = top_eigenvalues(model, nn.CrossEntropyLoss(), x, y, k=2, layers=["0"], max_matvecs=4)
    assert est.numel == [1] and not math.isnan(est.largest[0, 0]) and math.isnan(est.largest[0, 1])


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(k=0), ValueError, "k=0"),
    (dict(k=3, max_matvecs=5), ValueError, "max_matvecs=5; it must be an integer >= 6"),
    (dict(tol=-1), ValueError, "tol=-1"),
    (dict(layers="0"), TypeError, "list of group names"),
    (dict(layers=["nope"]), ValueError, "unknown groups \\['nope'\\]"),
    (dict(layers=[]), ValueError, "names no group"),
    (dict(generator=1), TypeError, "generator must be a torch.Generator"),
])
def test_top_eigenvalues_bad_arguments(kwargs, error, message):
    model, criterion, x, y = make(CASES[0])
    with pytest.raises(error, match=message):
        top_eigenvalues(model, criterion, x, y, **kwargs)


# --- spectral_density -------------------------------------------------------------------


@pytest.mark.parametrize("case", SPECTRAL_CASES, ids=IDS)
def test_slq_with_all_dimensions_puts_its_nodes_on_the_eigenvalues(case):
    model, (criterion, x, y), h, slices, names = dense_case(case)
    n = h.shape[0]
    slq = spectral_density(model, criterion, x, y, steps=n, reorthogonalize="full",
                           generator=torch.Generator().manual_seed(0))
    exact = torch.linalg.eigvalsh(h)
    tol = 1e-8 * exact.abs().max()
    assert slq.reorthogonalized == [True] and tuple(slq.nodes.shape) == (1, 1, n)
    # Lanczos sees each distinct eigenvalue once (the Hessians here are rank deficient:
    # zero has multiplicity), so the run ends early on an invariant space, padded with weight 0
    used = slq.weights[0, 0] > 0
    nodes = slq.nodes[0, 0][used]
    distinct = exact[torch.cat([torch.tensor([True]), exact.diff() > 1e-6])]
    assert len(nodes) == len(distinct) and torch.allclose(nodes, distinct, rtol=1e-8, atol=tol)
    assert (exact.diff() > 1e-6).sum() < n - 1  # the case has repeated eigenvalues
    lower, upper = slq.bounds[0]
    assert lower <= exact[0] + 1e-10 and upper >= exact[-1] - 1e-10


def test_slq_moments_are_unbiased_for_trace_and_frobenius_norm():
    model, (criterion, x, y), h, slices, names = dense_case(CASES[1])
    n = h.shape[0]
    slq = spectral_density(model, criterion, x, y, steps=6, num_runs=400, layers=[names[0], names[-1]],
                           generator=torch.Generator().manual_seed(5))
    for l, s in enumerate((slices[0], slices[-1])):
        block, size = h[s, s], s.stop - s.start
        nodes, weights = slq.nodes[:, l], slq.weights[:, l]
        for p, exact in ((1, block.trace()), (2, block.square().sum())):
            values = (weights * nodes**p).sum(1)  # each run: v^T H^p v with v = z / sqrt(n)
            assert abs(values.mean() - exact / size) <= 4 * values.std() / math.sqrt(len(values)), (l, p)
    assert n > 0


def test_smoothed_slq_approaches_the_smoothed_dense_spectrum():
    model, (criterion, x, y), h, slices, names = dense_case(CASES[0])
    steps = 10
    slq = spectral_density(model, criterion, x, y, steps=steps, num_runs=200,
                           generator=torch.Generator().manual_seed(6))
    exact = torch.linalg.eigvalsh(h)
    lower, upper = slq.bounds[0].tolist()
    t, phi = slq.smoothed(0)
    _, dense = smooth_density(exact, torch.full_like(exact, 1 / len(exact)), lower=lower, upper=upper, steps=steps)
    l1 = float(torch.trapezoid((phi - dense).abs(), t))
    assert l1 <= 0.05, l1
    assert abs(float(torch.trapezoid(phi, t)) - 1) < 0.02  # the tails beyond the 5% margin


def test_deflated_atoms_are_the_top_eigenvalues_and_the_bulk_keeps_the_rest_of_the_mass():
    model, (criterion, x, y), h, slices, names = dense_case(CASES[1])
    n = h.shape[0]
    slq = spectral_density(model, criterion, x, y, steps=n, deflate=3, num_runs=2,
                           generator=torch.Generator().manual_seed(7))
    exact = torch.linalg.eigvalsh(h)
    assert torch.allclose(slq.outliers[0], exact.flip(0)[:3], rtol=1e-8)
    assert torch.allclose(slq.weights.sum(-1), torch.full((2, 1), (n - 3) / n, dtype=torch.float64))
    # the deflated operator's nodes with weight are the other eigenvalues
    heavy = slq.nodes[0, 0][slq.weights[0, 0] > 1e-8]
    assert all(torch.min((exact[: n - 3] - node).abs()) < 1e-6 * exact.abs().max() for node in heavy)
    assert slq.matvecs[0] > 2 * (n - 3)  # the deflating run is extra


def test_without_reorthogonalisation_ghosts_keep_the_moments():
    # curvlinops' spiked check: a few outliers over a bulk; ghosts appear without reorthogonalisation
    g = torch.Generator().manual_seed(8)
    q, _ = torch.linalg.qr(torch.randn(300, 300, generator=g, dtype=torch.float64))
    eigs = torch.cat([torch.linspace(0, 1, 295, dtype=torch.float64), torch.tensor([20, 30, 40, 50, 60.0],
                                                                                   dtype=torch.float64)])
    a = q @ torch.diag(eigs) @ q.T
    v = torch.randn(300, generator=g, dtype=torch.float64)
    full = lanczos(lambda x: a @ x, v, steps=80, reorthogonalize="full")
    none = lanczos(lambda x: a @ x, v, steps=80, reorthogonalize="none")
    u = v / v.norm()
    for p in (1, 2, 3):
        exact = u @ torch.linalg.matrix_power(a, p) @ u
        assert abs((none.ritz_weights * none.ritz_values**p).sum() - exact) < 1e-8 * exact
    near_60 = lambda run: int(((run.ritz_values - 60).abs() < 1e-6).sum())  # noqa: E731
    assert near_60(full) == 1 and near_60(none) > 1


def test_spectral_density_is_reproducible_and_leaves_the_model_as_it_was():
    assert_pure_and_reproducible(
        lambda model, criterion, x, y, g: spectral_density(model, criterion, x, y, steps=8, deflate=1, generator=g),
        lambda r: (r.nodes, r.weights, r.outliers))


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(steps=1), ValueError, "steps=1"),
    (dict(num_runs=0), ValueError, "num_runs=0"),
    (dict(deflate=-1), ValueError, "deflate=-1"),
    (dict(steps=4, deflate=3), ValueError, "needs steps >= 6"),
    (dict(reorthogonalize="some"), ValueError, "reorthogonalize='some'"),
])
def test_spectral_density_bad_arguments(kwargs, error, message):
    model, criterion, x, y = make(CASES[0])
    with pytest.raises(error, match=message):
        spectral_density(model, criterion, x, y, **kwargs)


def test_smooth_density_bad_arguments():
    with pytest.raises(ValueError, match="one shape"):
        smooth_density(torch.zeros(3), torch.zeros(4), lower=0, upper=1)
    with pytest.raises(ValueError, match="lower < upper"):
        smooth_density(torch.zeros(3), torch.zeros(3), lower=1, upper=1)
    with pytest.raises(ValueError, match="kappa=1"):
        smooth_density(torch.zeros(3), torch.zeros(3), lower=0, upper=1, kappa=1)


def test_float32_breakdown_on_a_nearly_zero_low_rank_operator_stops_instead_of_blowing_up():
    # a saturated softmax head: the block is ~1e-10 and of low rank; in float32 the Krylov space is
    # exhausted after a few steps, and going on would reorthogonalise rounding noise into NaN
    g = torch.Generator().manual_seed(9)
    u, _ = torch.linalg.qr(torch.randn(650, 3, generator=g, dtype=torch.float64))
    a = (1e-10 * u @ torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)) @ u.T).float()
    run = lanczos(lambda v: a @ v, torch.ones(650), steps=64)
    assert run.steps <= 6 and torch.isfinite(run.ritz_values).all()
    assert torch.allclose(run.ritz_values[-1], torch.tensor(3e-10, dtype=torch.float64), rtol=1e-4)


def test_deflation_of_a_block_whose_krylov_space_holds_fewer_pairs_than_asked():
    model, (criterion, x, y), h, slices, names = dense_case(CASES[0])
    small = names[-1]  # the head of the MLP: 18 parameters, with a repeated eigenvalue (softmax: rank deficient)
    block = torch.linalg.eigvalsh(h[slices[-1], slices[-1]])
    scale = block.abs().max()
    distinct = block[torch.cat([torch.tensor([True]), block.diff() > 1e-6 * scale])].flip(0)  # descending
    slq = spectral_density(model, criterion, x, y, layers=[small], steps=40, deflate=17,
                           generator=torch.Generator().manual_seed(3))
    found = slq.outliers[0][slq.outliers[0].isfinite()]
    assert 0 < len(found) == len(distinct) < 17  # the Krylov space held only the distinct eigenvalues
    assert torch.allclose(found, distinct, atol=1e-8 * scale) and torch.isfinite(slq.smoothed(0)[1]).all()
    with pytest.raises(ValueError, match="deflate=18 leaves nothing of block 2 \\(18 parameters\\)"):
        spectral_density(model, criterion, x, y, layers=[small], steps=40, deflate=18)
