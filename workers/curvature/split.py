"""The Gauss-Newton / tensor split of every diagonal block, on the same probes
(../shared/seeds/004, eq. 4; 001; curvature-spec.md, section 3).

For the mean cross-entropy of N samples with logits f_n, softmax p_n and residual
r_n = p_n - y_n, the Hessian splits as

    H = G + H^T,   G = (1/N) sum_n J_n^T H_n J_n,   H^T = (1/N) sum_n sum_c r_nc grad^2 f_nc,

with J_n = d f_n / d theta and H_n = diag(p_n) - p_n p_n^T: the Gauss-Newton part G
(positive semi-definite, "covariance of gradients" in 004) and the tensor part H^T
("averaged Hessian of predictions"). For one probe z with E[z z^T] = I over the whole
parameter vector, w = H z and v = G z,

    h_l = z_l^T w_l,   g_l = z_l^T v_l,   t_l = h_l - g_l = z_l^T (H^T z)_l

are unbiased for tr(H_ll), tr(G_ll) and tr(H^T_ll) for every group l at once (the argument
of ``trace.py``, applied to H, G and H^T). Using the same z for both (common random
numbers), t_l carries the single-pass variance of H^T alone, not the sum of two.

Gauss-Newton products on the retained graph (no second forward pass): with u0 = 0 of the
logits' shape and a(u0) = J^T u0 kept differentiable, J z is the gradient of <a(u0), z>
with respect to u0 (the double-backward trick); then u_n = (p_n o (Jz)_n - p_n <p_n, (Jz)_n>)/N
= H_n (Jz)_n / N, and G z = J^T u is one more backward through the logits.

Where the output is piecewise linear in each group's own parameters (the built-in models,
F1 in docs/estimator.md), H_ll = G_ll and every tr(H^T_ll) is 0; the tensor part lives off
the diagonal. The head block's tensor part is 0 for any model (the logits are linear in it).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from workers.curvature.ggn import check_cross_entropy, checked_logits
from workers.curvature.groups import parameter_groups
from workers.curvature.hvp import checked_loss, evaluation_mode
from workers.curvature.probes import check_generator, check_num_probes, draw_probe
from workers.curvature.trace import group_dots, probe_mean, probe_stderr

Probe = list[torch.Tensor]


@dataclass(frozen=True)
class GaussNewtonSplit:
    """Per-probe values of one call on the same probes: hessian_values[k, l] = z_l^T (Hz)_l,
    ggn_values[k, l] = z_l^T (Gz)_l; the tensor part's are their difference."""

    layers: list[str]
    numel: list[int]
    hessian_values: torch.Tensor
    ggn_values: torch.Tensor
    loss: float
    nonfinite: list[str]

    @property
    def tensor_values(self) -> torch.Tensor:
        """[K, L] z_l^T (H^T z)_l."""
        return self.hessian_values - self.ggn_values

    @property
    def trace(self) -> torch.Tensor:
        """[L] estimate of tr(H_ll)."""
        return probe_mean(self.hessian_values)

    @property
    def ggn_trace(self) -> torch.Tensor:
        """[L] estimate of tr(G_ll)."""
        return probe_mean(self.ggn_values)

    @property
    def tensor_trace(self) -> torch.Tensor:
        """[L] estimate of tr(H^T_ll) = tr(H_ll) - tr(G_ll)."""
        return probe_mean(self.tensor_values)

    @property
    def stderr(self) -> dict[str, torch.Tensor]:
        """[L] standard errors over probes of ``trace``, ``ggn_trace`` and ``tensor_trace``,
        by name (the last from the paired differences)."""
        return {name: probe_stderr(values) for name, values in self.per_probe().items()}

    def per_probe(self) -> dict[str, torch.Tensor]:
        """Every per-layer quantity of this call as its per-probe values [K, L], by name."""
        return {"trace": self.hessian_values, "ggn_trace": self.ggn_values, "tensor_trace": self.tensor_values}


def split_products(model: nn.Module, criterion: Callable, inputs, targets, params: list[torch.Tensor]
                   ) -> tuple[float, Callable[..., tuple[Probe | None, Probe | None]]]:
    """The loss and a function ``products(z, hessian=True, ggn=True)`` -> (H z, G z) over
    ``params`` (None for a product not asked for), both on one forward pass and its retained
    graph. Call inside ``evaluation_mode``; the criterion must be the mean cross-entropy
    (``ggn.check_cross_entropy``)."""
    logits = checked_logits(model(inputs), targets, "gauss_newton_split")
    loss = checked_loss(criterion(logits, targets))
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
    p = torch.softmax(logits.detach(), dim=1)
    n = logits.shape[0]
    u0 = torch.zeros_like(logits, requires_grad=True)
    # a(u0) = J^T u0, linear in u0: its gradient against z is J z (the double-backward trick)
    transposed = torch.autograd.grad(logits, params, grad_outputs=u0, create_graph=True, allow_unused=True)
    reached = [i for i, a in enumerate(transposed) if a is not None]

    def zeros_for_none(tensors) -> Probe:
        return [torch.zeros_like(q) if t is None else t for t, q in zip(tensors, params)]

    def products(z: Probe, hessian: bool = True, ggn: bool = True) -> tuple[Probe | None, Probe | None]:
        hz = gz = None
        if hessian:
            hz = zeros_for_none(torch.autograd.grad(
                [grads[i] for i in live], params, grad_outputs=[z[i] for i in live], retain_graph=True,
                allow_unused=True) if live else [None] * len(params))
        if ggn:
            jz = torch.autograd.grad([transposed[i] for i in reached], u0, grad_outputs=[z[i] for i in reached],
                                     retain_graph=True)[0]
            u = (p * jz - p * (p * jz).sum(1, keepdim=True)) / n  # H_n (J z)_n / N
            gz = zeros_for_none(torch.autograd.grad(logits, params, grad_outputs=u, retain_graph=True,
                                                    allow_unused=True))
        return hz, gz

    return float(loss.detach()), products


def gauss_newton_split(
    model: nn.Module,
    criterion: Callable,
    inputs,
    targets,
    *,
    num_probes: int = 10,
    generator: torch.Generator | None = None,
    groups: str | Mapping[str, Sequence[str]] = "module",
) -> GaussNewtonSplit:
    """Estimate tr(H_ll), tr(G_ll) and the tensor part tr(H^T_ll) of the mini-batch mean
    cross-entropy for every parameter group l, from ``num_probes`` Rademacher probes over
    all parameters, each giving one Hessian- and one Gauss-Newton-vector product.

    As ``layerwise_trace``: eval mode, the model's flags, buffers and ``.grad`` left as they
    were, probes from ``generator`` (the same probes ``layerwise_trace`` draws from it, so its
    ``trace`` values are these ``hessian_values``).

    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    >>> x, y = torch.randn(8, 3, dtype=torch.float64), torch.tensor([0, 1] * 4)
    >>> split = gauss_newton_split(model, nn.CrossEntropyLoss(), x, y, num_probes=4000,
    ...                            generator=torch.Generator().manual_seed(0))
    >>> exact = [(0.22628, 0.27219), (0.75233, 0.75233)]  # (tr H_ll, tr G_ll), dense; the head's tensor part is 0
    >>> all(abs(est - e) < 4 * se for (h, g), layer in zip(exact, range(2))
    ...     for est, e, se in ((split.trace[layer], h, split.stderr["trace"][layer]),
    ...                        (split.ggn_trace[layer], g, split.stderr["ggn_trace"][layer])))
    True
    """
    check_num_probes(num_probes)
    check_cross_entropy(criterion, "gauss_newton_split")
    resolved = parameter_groups(model, groups)
    check_generator(generator, resolved.params)
    hessian_rows, ggn_rows = [], []
    with evaluation_mode(model):
        loss, products = split_products(model, criterion, inputs, targets, resolved.params)
        for _ in range(num_probes):
            z = draw_probe(resolved.params, distribution="rademacher", generator=generator)
            hz, gz = products(z)
            hessian_rows.append(group_dots(z, hz, resolved))
            ggn_rows.append(group_dots(z, gz, resolved))
    hessian_values, ggn_values = torch.stack(hessian_rows).cpu(), torch.stack(ggn_rows).cpu()
    bad = ~hessian_values.isfinite().all(0) | ~ggn_values.isfinite().all(0)
    nonfinite = [name for name, b in zip(resolved.names, bad.tolist()) if b]
    if nonfinite:
        warnings.warn(f"non-finite curvature products in groups {nonfinite}; their estimates are NaN",
                      RuntimeWarning, stacklevel=2)
    return GaussNewtonSplit(list(resolved.names), resolved.numel, hessian_values, ggn_values, loss, nonfinite)
