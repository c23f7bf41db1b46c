"""Variance of the trace estimators and the critical probe count (paper section 4).

Closed forms at a fixed Hessian take dense matrices: they are for small models in
tests and for reasoning, not for training-time use. ``critical_probe_count`` works
from measured per-probe values only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def block_variance(block: torch.Tensor) -> torch.Tensor:
    """Variance of one Rademacher probe z^T A z for symmetric A (paper eq. 6, K=1):
    2 (||A||_F^2 - sum_i A_ii^2). It follows from
    E[z_i z_j z_k z_l] = d_ij d_kl + d_ik d_jl + d_il d_jk - 2 d_ijkl.

    >>> block_variance(torch.tensor([[2.0, 1.0], [1.0, 3.0]]))
    tensor(4.)
    """
    return 2 * (block.square().sum() - block.diagonal().square().sum())


def single_pass_variance(hessian: torch.Tensor, slices: list[slice]) -> torch.Tensor:
    """[L] variance of one whole-vector Rademacher probe's z_l^T (H z)_l:
    2 (||H_ll||_F^2 - sum_i (H_ll)_ii^2) + sum_{m != l} ||H_lm||_F^2.

    The cross terms z_l^T H_lm z_m (m != l) have mean zero, variance ||H_lm||_F^2,
    and are uncorrelated with each other and with z_l^T H_ll z_l.

    >>> h = torch.tensor([[2.0, 1.0, 0.5], [1.0, 3.0, 0.0], [0.5, 0.0, 1.0]])
    >>> single_pass_variance(h, [slice(0, 2), slice(2, 3)])
    tensor([4.2500, 0.2500])
    """
    out = []
    for l, sl in enumerate(slices):
        row = hessian[sl]
        off = sum(row[:, sm].square().sum() for m, sm in enumerate(slices) if m != l)
        out.append(block_variance(hessian[sl, sl]) + off)
    return torch.stack(out)


@dataclass(frozen=True)
class CriticalProbeCount:
    """Per group: V_H(1), V_B and K* = V_H(1) / V_B (eq. 9).

    K* is +inf where the batch-to-batch variance is not resolved (V_B <= 0).
    """

    v_h1: torch.Tensor
    v_b: torch.Tensor
    k_star: torch.Tensor


def critical_probe_count(probe_values: torch.Tensor) -> CriticalProbeCount:
    """K*_l from per-probe values measured on M mini-batches at the same parameters.

    ``probe_values`` is [M, K, L] (for example ``layerwise_trace(...).probe_values``
    for M batches, stacked). With T_hat_b the mean over probes on batch b:

    - V_H(1) = mean_b Var_k(values[b, :, l]), the probe variance at a fixed batch
      (sample variances, unbiased for E_B[Var_z(. | B)]);
    - Var_b(T_hat_b) = V_B + V_H(1) / K (law of total variance, section 4.3), so
      V_B = Var_b(T_hat_b) - V_H(1) / K is unbiased for Var_B(T_B).

    >>> g = torch.Generator().manual_seed(0)
    >>> batch_mean = 3.0 * torch.randn(400, 1, 1, generator=g)   # V_B = 9
    >>> values = batch_mean + 10.0 * torch.randn(400, 50, 1, generator=g)  # V_H(1) = 100
    >>> r = critical_probe_count(values.double())  # true K* = 100 / 9 = 11.1
    >>> round(r.v_h1.item(), 1), round(r.v_b.item(), 1), round(r.k_star.item(), 1)
    (100.7, 7.5, 13.4)
    """
    if not isinstance(probe_values, torch.Tensor) or probe_values.ndim != 3:
        raise ValueError("probe_values must be a tensor [M batches, K probes, L groups]")
    m, k, _ = probe_values.shape
    if m < 2 or k < 2:
        raise ValueError(f"need at least 2 batches and 2 probes per batch, got M={m}, K={k}")
    values = probe_values.to(torch.float64)
    v_h1 = values.var(dim=1, correction=1).mean(0)
    v_b = values.mean(dim=1).var(dim=0, correction=1) - v_h1 / k
    k_star = torch.where(v_b > 0, v_h1 / v_b, torch.full_like(v_b, float("inf")))
    return CriticalProbeCount(v_h1=v_h1, v_b=v_b, k_star=k_star)
