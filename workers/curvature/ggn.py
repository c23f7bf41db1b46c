"""Gauss-Newton traces tr(G_ll) for every group at once, from output-space probes
(../shared/design/curvature-spec.md, section 3).

For the mean cross-entropy of N samples with logits f_n and softmax p_n, the
generalised Gauss-Newton matrix is G = (1/N) sum_n J_n^T H_n J_n with
H_n = diag(p_n) - p_n p_n^T and J_n = d f_n / d theta. With the symmetric square root
S_n = diag(sqrt p_n) - p_n sqrt(p_n)^T (S_n S_n^T = H_n, because sum_c p_nc = 1),

    G = B B^T,    B = sum_n J_n^T S_n / sqrt(N)    (P x NC).

For u with E[u u^T] = I over the N x C outputs (Rademacher), E ||(B u)_l||^2 =
tr(B_l B_l^T) = tr(G_ll) for every group l at once, and B u is one vector-Jacobian
product: the gradient of sum_n <f_n, S_n u_n> / sqrt(N) with S_n u_n held constant.
So each probe costs one backward pass through the retained graph (no double
backward), and its variance, 2 (||G_ll||_F^2 - sum_i (B_l^T B_l)_ii^2) for Rademacher
u, has no term from the other blocks, unlike the single-pass Hessian estimator.

When the output is piecewise linear in each group's own parameters (ReLU, max-pool,
residual sums, BatchNorm in eval mode, each module applied once: the built-in
ResNets and VGG-11), d^2 f / d theta_l^2 = 0 almost everywhere and H_ll = G_ll, so
this estimates the layer-wise Hessian trace T_l itself (``docs/estimator.md``, F1).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workers.curvature.groups import parameter_groups
from workers.curvature.hvp import checked_loss, evaluation_mode
from workers.curvature.probes import check_generator, check_num_probes
from workers.curvature.trace import ProbeEstimate, group_dots


@dataclass(frozen=True)
class GGNTrace(ProbeEstimate):
    """Per-probe values of one call: probe_values[k, l] = ||(B u_k)_l||^2, so ``trace``
    estimates tr(G_ll) (= T_l under F1)."""

    loss: float
    nonfinite: list[str]

    def per_probe(self) -> dict[str, torch.Tensor]:
        """The per-layer quantity of this call by name: ``ggn_trace``."""
        return {"ggn_trace": self.probe_values}


def check_cross_entropy(criterion: Callable, who: str = "ggn_trace") -> None:
    """Refuse a criterion other than the mean cross-entropy on class indices, the loss
    whose output-space Hessian diag(p) - p p^T the Gauss-Newton estimators assume."""
    if criterion is F.cross_entropy:
        return
    if isinstance(criterion, nn.CrossEntropyLoss):
        problems = [text for bad, text in (
            (criterion.reduction != "mean", f"reduction={criterion.reduction!r} (it must be 'mean')"),
            (criterion.label_smoothing != 0, f"label_smoothing={criterion.label_smoothing} (it must be 0)"),
            (criterion.weight is not None, "class weights (they must be None)"),
        ) if bad]
        if not problems:
            return
        raise ValueError(f"{who} needs the plain mean cross-entropy; this CrossEntropyLoss has "
                         f"{', '.join(problems)}")
    raise ValueError(f"{who} supports torch.nn.functional.cross_entropy or nn.CrossEntropyLoss() only (its "
                     f"output-space Hessian is diag(p) - p p^T); got {criterion!r}. Use layerwise_trace for other "
                     "losses")


def checked_logits(logits, targets, who: str = "ggn_trace") -> torch.Tensor:
    """``logits`` when they are (N, C) and the targets class indices; else a ValueError."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ValueError(f"{who} needs logits of shape (N, C); the model returned "
                         f"{getattr(logits, 'shape', type(logits).__name__)}")
    if not isinstance(targets, torch.Tensor) or targets.dtype.is_floating_point or targets.ndim != 1:
        raise ValueError(f"{who} needs targets as a 1-D tensor of class indices")
    return logits


def ggn_trace(
    model: nn.Module,
    criterion: Callable,
    inputs,
    targets,
    *,
    num_probes: int = 10,
    generator: torch.Generator | None = None,
    groups: str | Mapping[str, Sequence[str]] = "module",
) -> GGNTrace:
    """Estimate tr(G_ll) of the mini-batch cross-entropy for every parameter group l
    from ``num_probes`` Rademacher probes over the N x C outputs, one backward each.

    As ``layerwise_trace``: eval mode, the model's flags, buffers and ``.grad`` left as
    they were, probes from ``generator`` on the parameters' device (reproducible).

    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    >>> x, y = torch.randn(8, 3, dtype=torch.float64), torch.tensor([0, 1] * 4)
    >>> est = ggn_trace(model, F.cross_entropy, x, y, num_probes=4000, generator=torch.Generator().manual_seed(0))
    >>> exact = [0.14435, 0.51921]  # tr of the diagonal blocks of the dense Gauss-Newton matrix (= Hessian: ReLU)
    >>> all(abs(t - e) < 4 * s for t, e, s in zip(est.trace.tolist(), exact, est.stderr.tolist()))
    True
    """
    check_num_probes(num_probes)
    check_cross_entropy(criterion)
    resolved = parameter_groups(model, groups)
    check_generator(generator, resolved.params)
    like = resolved.params[0]
    with evaluation_mode(model):
        logits = checked_logits(model(inputs), targets)
        loss = float(checked_loss(criterion(logits, targets)).detach())
        n, c = logits.shape
        p = torch.softmax(logits.detach(), dim=1)
        root = p.sqrt()
        rows = []
        for _ in range(num_probes):
            u = torch.randint(0, 2, (n, c), generator=generator, device=like.device).to(p.dtype).mul_(2).sub_(1)
            su = root * u - p * (root * u).sum(1, keepdim=True)  # S_n u_n
            grads = torch.autograd.grad(logits, resolved.params, grad_outputs=su / math.sqrt(n), retain_graph=True,
                                        allow_unused=True)
            grads = [torch.zeros_like(q) if g is None else g for g, q in zip(grads, resolved.params)]
            rows.append(group_dots(grads, grads, resolved))
    probe_values = torch.stack(rows).cpu()  # one device-to-host copy per call
    nonfinite = [name for name, bad in zip(resolved.names, (~probe_values.isfinite().all(0)).tolist()) if bad]
    if nonfinite:
        warnings.warn(f"non-finite Gauss-Newton products in groups {nonfinite}; their estimates are NaN",
                      RuntimeWarning, stacklevel=2)
    return GGNTrace(list(resolved.names), resolved.numel, probe_values, loss, nonfinite)
