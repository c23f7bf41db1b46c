"""The classification head's Hessian block in closed form: no probes, one forward pass
(../shared/design/curvature-spec.md, section 0, F2).

For a Linear head W (C x d, bias b) that produces the logits f_n = W a_n + b of a mean
cross-entropy over N samples, with features a_n, a~_n = [a_n; 1] (without a bias:
a~_n = a_n), softmax p_n and H_n = diag(p_n) - p_n p_n^T, the loss is a function of
f_n only and f_n is linear in (W, b), so the head block is exactly

    H_hh = (1/N) sum_n H_n (x) a~_n a~_n^T,

whatever the labels. Hence

    tr(H_hh)     = (1/N) sum_n ||a~_n||^2 (1 - ||p_n||^2),
    ||H_hh||_F^2 = (1/N^2) sum_{n,n'} (a~_n . a~_n')^2 tr(H_n H_n'),

and its nonzero eigenvalues are those of the NC x NC Gram matrix
(a~_n . a~_n') (S_n^T S_n') / N with S_n = diag(sqrt p_n) - p_n sqrt(p_n)^T
(S_n S_n^T = H_n), or of the dense (C d~) x (C d~) block when that is smaller. This is
the layer the paper's CUSUM monitors (section 5.3); its trace costs O(N d) after the
forward pass, its Frobenius norm O(N^2 (d + C)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from workers.curvature.hvp import evaluation_mode


@dataclass(frozen=True)
class HeadCurvature:
    """The head block H_hh of one mini-batch, exactly (float64)."""

    head: str
    numel: int
    trace: float
    frobenius_sq: float
    eigenvalues: torch.Tensor | None  # ascending: the min(numel, N C) that can be nonzero; None if not asked


def head_curvature(model: nn.Module, inputs, *, head: str, spectrum: bool = True) -> HeadCurvature:
    """Trace, squared Frobenius norm and (``spectrum=True``) eigenvalues of the Hessian
    block of the mean cross-entropy in the parameters of the Linear module ``head``,
    which must produce the model's output (the logits). Eval mode; the model's flags,
    buffers and ``.grad`` are left as they were.

    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    >>> exact = head_curvature(model, torch.randn(8, 3, dtype=torch.float64), head="2")
    >>> round(exact.trace, 5), exact.numel, len(exact.eigenvalues)
    (0.51921, 10, 10)
    """
    module = dict(model.named_modules()).get(head)
    if not isinstance(module, nn.Linear):
        found = "no such module" if module is None else f"a {type(module).__name__}"
        raise ValueError(f"head={head!r} is {found}; the closed form needs the nn.Linear that produces the logits "
                         "(use the probe estimators for other heads)")
    calls = []
    hook = module.register_forward_hook(lambda m, args, out: calls.append((args[0], out)))
    try:
        with evaluation_mode(model), torch.no_grad():
            logits = model(inputs)
    finally:
        hook.remove()
    if len(calls) != 1:
        raise ValueError(f"head {head} ran {len(calls)} times in one forward pass; the closed form needs it "
                         "applied once, to produce the logits")
    features, out = calls[0]
    if out is not logits or logits.ndim != 2:
        raise ValueError(f"the output of head {head} is not the model's output of shape (N, C); the closed form "
                         "needs the Linear layer that produces the logits of the cross-entropy")
    a = features.detach().to(torch.float64)
    if module.bias is not None:
        a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype, device=a.device)], dim=1)
    p = torch.softmax(logits.detach().to(torch.float64), dim=1)
    n, c = p.shape
    gram = a @ a.T  # (a~_n . a~_n')
    trace = (gram.diagonal() * (1 - (p * p).sum(1))).sum() / n
    overlap = p @ p.T
    squares = p * p
    trace_products = overlap - p @ squares.T - squares @ p.T + overlap**2  # tr(H_n H_n')
    frobenius_sq = (gram**2 * trace_products).sum() / n**2
    eigenvalues = _spectrum(a, p) if spectrum else None
    numel = sum(q.numel() for q in module.parameters())
    return HeadCurvature(head, numel, float(trace), float(frobenius_sq), eigenvalues)


def _spectrum(a: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of H_hh, ascending, from whichever of the dense block and the NC x NC
    Gram matrix is smaller (the same nonzero eigenvalues)."""
    n, c = p.shape
    h = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # H_n
    if c * a.shape[1] <= n * c:
        block = torch.einsum("nce,ni,nj->ciej", h, a, a).reshape(c * a.shape[1], c * a.shape[1]) / n
        return torch.linalg.eigvalsh(block).cpu()
    root = p.sqrt()
    s = torch.diag_embed(root) - p[:, :, None] * root[:, None, :]  # S_n, S_n S_n^T = H_n
    # H_hh = M M^T with columns M_(n, c) = S_n[:, c] (x) a~_n / sqrt(N); its Gram M^T M is below
    cross = torch.einsum("nca,mcb->nmab", s, s)  # S_n^T S_m
    gram = ((a @ a.T)[:, :, None, None] * cross).permute(0, 2, 1, 3).reshape(n * c, n * c) / n
    return torch.linalg.eigvalsh(gram).cpu()
