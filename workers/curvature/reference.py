"""The two usual ways to get traces, kept as baselines for tests and benchmarks.

- ``network_trace``: the whole-network Hutchinson trace tr(H) as PyHessian computes
  it (Yao et al. 2020): one double-backward per probe over all parameters, one
  number per probe.
- ``blockwise_trace``: the naive per-layer loop: for each group l and probe k, a
  probe restricted to block l and one product H_ll z_l. Same expectation as
  ``layerwise_trace``, L times the cost, and the variance of paper eq. (6).
- ``power_iteration``: lambda_max as ../shared/seeds/002 (Alg. 1) and PyHessian find it,
  v <- A v / ||A v|| with the Rayleigh quotient as estimate, stopped like PyHessian on a
  relative change of successive estimates (no residual), the baseline of ``top_eigenvalues``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from workers.curvature.groups import parameter_groups
from workers.curvature.hvp import evaluation_mode, reverse_hvp
from workers.curvature.probes import check_distribution, check_generator, draw_probe
from workers.curvature.trace import group_dots, tensor_dots


def network_trace(
    model: nn.Module, criterion: Callable, inputs, targets, *, num_probes: int = 10,
    generator: torch.Generator | None = None, distribution: str = "rademacher",
) -> torch.Tensor:
    """[K] values z^T H z over the whole parameter vector.

    With the same seeded generator it draws the same probes as ``layerwise_trace``
    (groups="module"), so the sum over groups of the layer-wise values equals these.
    """
    check_distribution(distribution)
    resolved = parameter_groups(model, "module")
    check_generator(generator, resolved.params)
    with evaluation_mode(model):
        _, products = reverse_hvp(model, criterion, inputs, targets, resolved.params)
        values = []
        for _ in range(num_probes):
            z = draw_probe(resolved.params, distribution=distribution, generator=generator)
            (w,) = products([z])
            values.append(group_dots(z, w, resolved).sum())
    return torch.stack(values).cpu()


def blockwise_trace(
    model: nn.Module, criterion: Callable, inputs, targets, *, num_probes: int = 10,
    generator: torch.Generator | None = None, groups: str | Mapping[str, Sequence[str]] = "module",
    distribution: str = "rademacher",
) -> torch.Tensor:
    """[K, L] values z_l^T H_ll z_l with block-restricted probes, one product each."""
    check_distribution(distribution)
    resolved = parameter_groups(model, groups)
    check_generator(generator, resolved.params)
    with evaluation_mode(model):
        _, products = reverse_hvp(model, criterion, inputs, targets, resolved.params)
        columns = []
        for l in range(len(resolved.names)):
            block = [i for i, g in enumerate(resolved.group_of) if g == l]
            column = []
            for _ in range(num_probes):
                z = draw_probe([resolved.params[i] for i in block], distribution=distribution, generator=generator)
                (w,) = products([z], block=block)  # H_ll z_l only
                column.append(tensor_dots(z, w).sum())
            columns.append(torch.stack(column))
    return torch.stack(columns, dim=1).cpu()


@dataclass(frozen=True)
class PowerIteration:
    """Rayleigh quotients after each product (``estimates``), the last vector and the count."""

    estimates: list[float]
    vector: torch.Tensor
    matvecs: int


def power_iteration(matvec: Callable[[torch.Tensor], torch.Tensor], v0: torch.Tensor, *, max_matvecs: int = 100,
                    rtol: float | None = 1e-3) -> PowerIteration:
    """Power iteration from ``v0``; stops when two successive Rayleigh quotients differ by
    less than ``rtol`` relative (PyHessian's rule; None: run all ``max_matvecs``). The angle
    to the top eigenvector falls like |lambda_2/lambda_1|^i and the quotient's error like
    |lambda_2/lambda_1|^(2i), where 002 (section 2.2) prints the inverted ratio; it converges
    to the eigenvalue of largest modulus, which is lambda_min when |lambda_min| > lambda_max."""
    v = v0 / torch.linalg.vector_norm(v0)
    estimates: list[float] = []
    for _ in range(max_matvecs):
        w = matvec(v)
        estimates.append(float(torch.dot(v.to(torch.float64), w.to(torch.float64))))
        v = w / torch.linalg.vector_norm(w)
        if rtol is not None and len(estimates) > 1 and \
                abs(estimates[-1] - estimates[-2]) <= rtol * abs(estimates[-1]):
            break
    return PowerIteration(estimates, v, len(estimates))
