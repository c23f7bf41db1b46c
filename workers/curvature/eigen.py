"""The extreme eigenvalues of the Hessian and of its diagonal blocks, by Lanczos with a
residual stopping rule (../shared/design/curvature-spec.md, section 1).

../shared/seeds/002 (section 2.2, Alg. 1) tracks lambda_max during training by ten power
iterations without a stopping rule; PyHessian stops its power iteration on a relative
change of the Rayleigh quotient, which says nothing about the error. Here each block gets
one Lanczos run (``lanczos``, full reorthogonalisation over at most ``max_matvecs``
vectors) from a Rademacher start, stopped when the k largest and k smallest Ritz values
have residuals ||H y - theta y|| <= tol * max|theta|. The residual r bounds the error:
some eigenvalue lies within r of theta (and within r^2/gap of it when the gap to the rest
of the spectrum is known, Kato-Temple). The largest and the smallest come from the same run.

For a block l, the operator is the restricted product x_l -> H_ll x_l, the gradient of
<g_l, x_l> with respect to theta_l only. What is shared across blocks: one forward pass and
one gradient with its graph retained (C_grad once), which every product of every block
differentiates again. What cannot be: a product over the whole vector returns
sum_m H_lm x_m, and separating the diagonal blocks from such products takes at least L of
them (sign masks), so each block pays its own products; their count is in ``matvecs``.
Interlacing gives free checks: lambda_min(H) <= lambda_min(H_ll) <= lambda_max(H_ll) <=
lambda_max(H), and where the output is piecewise linear in each block (F1, the built-in
models) every H_ll is positive semi-definite.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from workers.curvature.groups import parameter_groups
from workers.curvature.hvp import block_operators, evaluation_mode
from workers.curvature.lanczos import converged_ends, lanczos
from workers.curvature.probes import check_generator, flat_probe


@dataclass(frozen=True)
class TopEigen:
    """Extreme eigenvalues of each block (``layers``; ``(network)`` for the whole Hessian).

    ``largest`` [L', k] descending and ``smallest`` [L', k] ascending Ritz values (float64;
    NaN where a block has fewer than k dimensions), ``residuals`` [L', 2, k] their residual
    norms (row 0 for ``largest``, row 1 for ``smallest``), ``converged`` [L'] whether all 2k
    met the tolerance, ``matvecs`` [L'] the products each block used."""

    layers: list[str]
    numel: list[int]
    largest: torch.Tensor
    smallest: torch.Tensor
    residuals: torch.Tensor
    converged: torch.Tensor
    matvecs: list[int]
    loss: float
    nonfinite: list[str]

    @property
    def lambda_max(self) -> torch.Tensor:
        """[L'] the largest eigenvalue of each block."""
        return self.largest[:, 0]

    @property
    def lambda_min(self) -> torch.Tensor:
        """[L'] the smallest eigenvalue of each block."""
        return self.smallest[:, 0]


def check_count(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r}; it must be an integer >= {minimum}")


def top_eigenvalues(
    model: nn.Module,
    criterion: Callable,
    inputs,
    targets,
    *,
    k: int = 1,
    layers: Sequence[str] | None = None,
    groups: str | Mapping[str, Sequence[str]] = "module",
    max_matvecs: int = 20,
    tol: float = 1e-3,
    generator: torch.Generator | None = None,
) -> TopEigen:
    """The ``k`` largest and ``k`` smallest eigenvalues of the Hessian of the mini-batch loss
    ``criterion(model(inputs), targets)`` (``layers=None``) or of each named diagonal block
    H_ll (``layers`` may also name ``(network)``, the whole Hessian, beside the groups),
    each from one Lanczos run of at most ``max_matvecs`` products, stopped when all 2k have
    relative residual <= ``tol``. Start vectors are Rademacher, drawn from ``generator``
    block after block (for ``layers=None`` the start is the first probe ``layerwise_trace``
    would draw from the same generator). Eval mode; the model's flags, buffers and
    ``.grad`` are left as they were.

    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    >>> x, y = torch.randn(8, 3, dtype=torch.float64), torch.tensor([0, 1] * 4)
    >>> top = top_eigenvalues(model, nn.CrossEntropyLoss(), x, y, generator=torch.Generator().manual_seed(0))
    >>> top.layers, top.numel, top.matvecs, top.converged.tolist()
    (['(network)'], [26], [14], [True])
    >>> h = torch.autograd.functional.hessian(lambda *p: nn.functional.cross_entropy(
    ...     torch.func.functional_call(model, dict(zip(dict(model.named_parameters()), p)), (x,)), y),
    ...     tuple(model.parameters()))
    >>> dense = torch.cat([torch.cat([b.reshape(a.numel(), -1) for b in row], 1)
    ...                    for a, row in zip(model.parameters(), h)])
    >>> exact = torch.linalg.eigvalsh(dense)  # some eigenvalue lies within the residual of each Ritz value
    >>> bool(abs(top.lambda_max - exact[-1]) <= top.residuals[0, 0, 0]), bool(abs(top.lambda_min - exact[0])
    ...                                                                         <= top.residuals[0, 1, 0])
    (True, True)
    """
    check_count("k", k)
    check_count("max_matvecs", max_matvecs, 2 * k)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
        raise ValueError(f"tol={tol!r}; it must be a number > 0 (relative to the spectral norm)")
    resolved = parameter_groups(model, groups)
    check_generator(generator, resolved.params)
    names, numel, largest, smallest, residuals, converged, matvecs, nonfinite = [], [], [], [], [], [], [], []
    with evaluation_mode(model):
        loss, blocks = block_operators(model, criterion, inputs, targets, resolved, layers)
        for name, indices, matvec in blocks:
            start = flat_probe([resolved.params[i] for i in indices], generator=generator)
            names.append(name)
            numel.append(len(start))
            try:
                run = lanczos(matvec, start, steps=max_matvecs, reorthogonalize="full", tol=tol, k=k)
            except FloatingPointError:
                nonfinite.append(name)
                nan = torch.full((k,), math.nan, dtype=torch.float64)
                largest.append(nan)
                smallest.append(nan)
                residuals.append(torch.stack([nan, nan]))
                converged.append(False)
                matvecs.append(0)
                continue
            ends = converged_ends(run.ritz_values, run.residuals, k=k, tol=tol)
            largest.append(_padded(run.ritz_values.flip(0)[:k], k))
            smallest.append(_padded(run.ritz_values[:k], k))
            residuals.append(torch.stack([_padded(run.residuals.flip(0)[:k], k), _padded(run.residuals[:k], k)]))
            converged.append(bool(ends.all()))
            matvecs.append(run.matvecs)
    if nonfinite:
        warnings.warn(f"non-finite Hessian-vector product in blocks {nonfinite}; their eigenvalues are NaN",
                      RuntimeWarning, stacklevel=2)
    return TopEigen(
        layers=names, numel=numel, largest=torch.stack(largest), smallest=torch.stack(smallest),
        residuals=torch.stack(residuals), converged=torch.tensor(converged), matvecs=matvecs, loss=loss,
        nonfinite=nonfinite,
    )


def _padded(values: torch.Tensor, k: int) -> torch.Tensor:
    """The first k of ``values``, NaN-padded where a block has fewer dimensions."""
    return torch.cat([values, torch.full((k - len(values),), math.nan, dtype=values.dtype)])
