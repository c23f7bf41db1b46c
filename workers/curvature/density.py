"""The spectral density of the Hessian and of its diagonal blocks by stochastic Lanczos
quadrature (../shared/seeds/004, sections 2.3-2.8; curvature-spec.md, section 2).

For a symmetric A of size n with eigenpairs (lambda_i, u_i), the spectral density is
phi(t) = (1/n) sum_i delta(t - lambda_i). For a Rademacher z, v = z / ||z|| = z / sqrt(n),
so E[v^T f(A) v] = tr f(A) / n = integral of f against phi, and m Lanczos steps from v give
nodes theta_j and weights tau_j^2 with sum_j tau_j^2 f(theta_j) = v^T f(A) v exactly for
every polynomial f of degree <= 2m - 1 (Gauss quadrature). So the measure
sum_j tau_j^2 delta(t - theta_j), averaged over independent runs, estimates phi without
bias in its moments up to 2m - 1 (004, eq. 10; Ubaru, Chen and Saad 2017).

Normalisation (004, Alg. 4): the spectrum's bounds are the extreme Ritz values of the
runs widened by their residuals, theta_1 - r_1 and theta_m + r_m (free: no extra run).
Smoothing (004, Alg. 3) replaces each delta by a Gaussian of width
sigma = 2 / ((m - 1) sqrt(8 ln kappa)) on the range mapped to [-1, 1], kappa = 1.25; it is
kept out of the estimate (``smooth_density``), so the raw nodes and weights are what is
stored and any smoothing can be applied later.

Deflation (004, Alg. 5, with Rayleigh-Ritz where the printed algorithm returns ||v_c||):
the top d Ritz pairs (theta_c, y_c) of a first run become atoms of mass 1/n each, and the
runs go on with (I - Y Y^T) A (I - Y Y^T) from (I - Y Y^T) z, whose quadrature measure
carries the remaining mass (n - d)/n: the bulk is resolved without the outliers.

004 runs without reorthogonalisation, to keep three vectors of memory; then ghost copies
of converged Ritz values split one eigenvalue's weight, which leaves the moments right and
the density smeared. ``reorthogonalize="auto"`` keeps the basis (full Gram-Schmidt) when
m n values fit in REORTHOGONALIZE_BYTES, and runs without it above.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from workers.curvature.eigen import check_count
from workers.curvature.groups import parameter_groups
from workers.curvature.hvp import block_operators, evaluation_mode
from workers.curvature.lanczos import REORTHOGONALIZE, lanczos
from workers.curvature.probes import check_generator, flat_probe

REORTHOGONALIZE_BYTES = 2**30  # "auto": keep the m x n basis when it fits in 1 GiB (m = 64: n <= 4.2M in float32)


@dataclass(frozen=True)
class SpectralDensity:
    """Raw quadrature of R runs per block: ``nodes`` [R, L', m] and ``weights`` [R, L', m]
    (each run's Gauss weights; a run shorter than m, in a block of fewer than m dimensions
    or on an invariant Krylov space, is padded with weight 0), ``bounds`` [L', 2] (lowest
    theta - r and highest theta + r of the runs and outliers), ``outliers`` [L', d] (the
    deflated top eigenvalues, descending, each of mass 1/numel; the runs' weights then sum
    to (numel - d)/numel; NaN-padded where a block's Krylov space held fewer than d),
    ``matvecs`` [L'] and ``reorthogonalized`` [L']."""

    layers: list[str]
    numel: list[int]
    nodes: torch.Tensor
    weights: torch.Tensor
    bounds: torch.Tensor
    outliers: torch.Tensor
    matvecs: list[int]
    reorthogonalized: list[bool]
    loss: float
    nonfinite: list[str]

    def smoothed(self, layer: int = 0, **options) -> tuple[torch.Tensor, torch.Tensor]:
        """``smooth_density`` of block ``layer`` (an index), outliers included as atoms."""
        nodes, weights = self.nodes[:, layer], self.weights[:, layer]
        outliers = self.outliers[layer]
        outliers = outliers[outliers.isfinite()]
        if len(outliers):
            atoms = outliers.expand(len(nodes), -1)
            nodes = torch.cat([nodes, atoms], 1)
            weights = torch.cat([weights, torch.full_like(atoms, 1 / self.numel[layer])], 1)
        lower, upper = self.bounds[layer].tolist()
        return smooth_density(nodes, weights, lower=lower, upper=upper, steps=self.nodes.shape[-1], **options)


def smooth_density(
    nodes, weights, *, lower: float, upper: float, points: int = 1024, kappa: float = 1.25, margin: float = 0.05,
    steps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The density phi(t) = (1/R) sum_r sum_j tau_rj^2 g_sigma(t - theta_rj) on ``points``
    evenly spaced t over [lower, upper] widened by ``margin`` of its width on each side,
    with Papyan's width sigma = 2 / ((m - 1) sqrt(8 ln kappa)) on that range mapped to
    [-1, 1] (../shared/seeds/004, Alg. 3-4; m = ``steps``, by default the nodes' last
    dimension). ``nodes`` and ``weights``: [m] for one run or [R, m]. Returns (t, phi),
    float64; phi integrates to the total weight (1 for a whole spectrum).

    >>> t, phi = smooth_density(torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.5]), lower=0.0, upper=1.0, steps=64)
    >>> round(float(torch.trapezoid(phi, t)), 3), len(t)
    (1.0, 1024)
    """
    nodes = torch.as_tensor(nodes, dtype=torch.float64)
    weights = torch.as_tensor(weights, dtype=torch.float64)
    if nodes.shape != weights.shape or nodes.ndim not in (1, 2) or nodes.shape[-1] < 1:
        raise ValueError(f"nodes {tuple(nodes.shape)} and weights {tuple(weights.shape)} must have one shape, "
                         "[m] or [R, m]")
    if not (math.isfinite(lower) and math.isfinite(upper) and upper > lower):
        raise ValueError(f"bounds [{lower}, {upper}] must be finite with lower < upper")
    check_count("points", points, 2)
    if not kappa > 1:
        raise ValueError(f"kappa={kappa}; it must be > 1 (004 uses 1.25)")
    m = nodes.shape[-1] if steps is None else steps
    if m < 2:
        raise ValueError("smoothing needs at least two Lanczos steps (sigma ~ 1 / (m - 1))")
    nodes, weights = nodes.reshape(-1, nodes.shape[-1]), weights.reshape(-1, nodes.shape[-1])
    pad = margin * (upper - lower)
    lower, upper = lower - pad, upper + pad
    sigma = (upper - lower) / 2 * 2 / ((m - 1) * math.sqrt(8 * math.log(kappa)))
    t = torch.linspace(lower, upper, points, dtype=torch.float64)
    distance = (t[:, None] - nodes.reshape(-1)[None, :]) / sigma
    kernel = torch.exp(-0.5 * distance**2) / (sigma * math.sqrt(2 * math.pi))
    phi = kernel @ weights.reshape(-1) / len(nodes)
    return t, phi


def spectral_density(
    model: nn.Module,
    criterion: Callable,
    inputs,
    targets,
    *,
    steps: int = 64,
    num_runs: int = 1,
    layers: Sequence[str] | None = None,
    deflate: int = 0,
    reorthogonalize: str = "auto",
    groups: str | Mapping[str, Sequence[str]] = "module",
    generator: torch.Generator | None = None,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature of the Hessian of ``criterion(model(inputs), targets)``
    (``layers=None``) or of each named diagonal block H_ll (``(network)`` among ``layers``:
    the whole Hessian): ``num_runs`` runs of ``steps`` Lanczos steps from Rademacher starts
    drawn from ``generator``, after deflating the top ``deflate`` eigenvalues when asked
    (their first run, of ``steps`` steps with full reorthogonalisation, is extra). Eval mode;
    the model's flags, buffers and ``.grad`` are left as they were.

    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    >>> x, y = torch.randn(8, 3, dtype=torch.float64), torch.tensor([0, 1] * 4)
    >>> slq = spectral_density(model, nn.CrossEntropyLoss(), x, y, steps=8, num_runs=3,
    ...                        generator=torch.Generator().manual_seed(0))
    >>> tuple(slq.nodes.shape), [round(float(s), 6) for s in slq.weights.sum(-1)[:, 0]]
    ((3, 1, 8), [1.0, 1.0, 1.0])
    """
    check_count("steps", steps, 2)
    check_count("num_runs", num_runs)
    check_count("deflate", deflate, 0)
    if deflate and 2 * deflate > steps:
        raise ValueError(f"deflate={deflate} needs steps >= {2 * deflate}: the deflating run must converge the "
                         "top eigenvalues, which takes about twice as many steps as eigenvalues")
    if reorthogonalize not in (*REORTHOGONALIZE, "auto"):
        raise ValueError(f"reorthogonalize={reorthogonalize!r} is not one of {(*REORTHOGONALIZE, 'auto')}")
    resolved = parameter_groups(model, groups)
    check_generator(generator, resolved.params)
    names, numel, nodes, weights, bounds, outliers, matvecs, full, nonfinite = ([] for _ in range(9))
    with evaluation_mode(model):
        loss, blocks = block_operators(model, criterion, inputs, targets, resolved, layers)
        for name, indices, matvec in blocks:
            params = [resolved.params[i] for i in indices]
            n = sum(p.numel() for p in params)

            def start() -> torch.Tensor:
                return flat_probe(params, generator=generator)

            if deflate >= n:
                raise ValueError(f"deflate={deflate} leaves nothing of block {name} ({n} parameters); deflate fewer "
                                 "eigenvalues than the block has")
            names.append(name)
            numel.append(n)
            mode = reorthogonalize
            if mode == "auto":
                mode = "full" if steps * n * params[0].element_size() <= REORTHOGONALIZE_BYTES else "none"
            full.append(mode == "full")
            try:
                block = _block_quadrature(matvec, start, n, steps=steps, num_runs=num_runs, deflate=deflate,
                                          mode=mode)
            except FloatingPointError:
                nonfinite.append(name)
                block = _nan_block(steps, num_runs, deflate)
            for collected, value in zip((nodes, weights, bounds, outliers, matvecs), block):
                collected.append(value)
    if nonfinite:
        warnings.warn(f"non-finite Hessian-vector product in blocks {nonfinite}; their densities are NaN",
                      RuntimeWarning, stacklevel=2)
    return SpectralDensity(
        layers=names, numel=numel, nodes=torch.stack(nodes, 1), weights=torch.stack(weights, 1),
        bounds=torch.stack(bounds), outliers=torch.stack(outliers), matvecs=matvecs, reorthogonalized=full,
        loss=loss, nonfinite=nonfinite,
    )


def _block_quadrature(matvec, start, n: int, *, steps: int, num_runs: int, deflate: int, mode: str):
    """Nodes [R, m], weights [R, m], bounds [2], outliers [d] and products of one block."""
    count, lows, highs = 0, [], []
    outliers = torch.zeros(0, dtype=torch.float64)
    operator = matvec
    if deflate:
        first = lanczos(matvec, start(), steps=steps, reorthogonalize="full")
        count += first.matvecs
        # an invariant Krylov space may hold fewer pairs than asked: those are exact, deflate them
        top = list(range(first.steps - 1, max(first.steps - 1 - deflate, -1), -1))
        outliers = first.ritz_values[top]
        lows.append(float((outliers - first.residuals[top]).min()))
        highs.append(float((outliers + first.residuals[top]).max()))
        y = first.ritz_vectors(top)

        def project(x: torch.Tensor) -> torch.Tensor:
            return x - y.T @ (y @ x)

        def operator(x: torch.Tensor) -> torch.Tensor:
            return project(matvec(project(x)))

    mass = (n - len(outliers)) / n
    nodes = torch.zeros(num_runs, steps, dtype=torch.float64)
    weights = torch.zeros(num_runs, steps, dtype=torch.float64)
    for r in range(num_runs):
        v = start()
        if deflate:
            v = project(v)
        run = lanczos(operator, v, steps=steps, reorthogonalize=mode)
        count += run.matvecs
        nodes[r, : run.steps] = run.ritz_values
        weights[r, : run.steps] = run.ritz_weights * mass
        lows.append(float(run.ritz_values[0] - run.residuals[0]))
        highs.append(float(run.ritz_values[-1] + run.residuals[-1]))
    padded = torch.cat([outliers, torch.full((deflate - len(outliers),), math.nan, dtype=torch.float64)])
    return nodes, weights, torch.tensor([min(lows), max(highs)], dtype=torch.float64), padded, count


def _nan_block(steps: int, num_runs: int, deflate: int):
    nan = torch.full((num_runs, steps), math.nan, dtype=torch.float64)
    return nan, nan.clone(), torch.full((2,), math.nan, dtype=torch.float64), \
        torch.full((deflate,), math.nan, dtype=torch.float64), 0
