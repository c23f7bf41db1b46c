"""Layer-wise Hessian trace T_l = tr(H_ll) for every group at once (paper section 3.3).

Estimator. Draw z over the whole parameter vector with E[z z^T] = I (eq. 3) and
compute w = H z with one Hessian-vector product. For group l,

    E[z_l^T w_l] = E[z_l^T H_ll z_l] + sum_{m != l} E[z_l^T H_lm z_m] = tr(H_ll),

because z_l and z_m are independent with mean zero for m != l. So the K values
z_l^T w_l are unbiased for every T_l from the same K products: cost
C_grad + K * C_HVP instead of L * K * C_HVP. At a fixed Hessian and Rademacher
probes their variance is

    2 (||H_ll||_F^2 - sum_i (H_ll)_ii^2) + sum_{m != l} ||H_lm||_F^2,

eq. (6) plus the off-diagonal blocks that block-restricted probes would not see
(see ``variance.single_pass_variance``).

The same products give, at no extra cost, the block-row energy
E ||w_l||^2 = sum_m ||H_lm||_F^2, and with one more product per probe an unbiased
estimate of ||H_ll||_F^2 for every l: with z' = (s_1 z_1, ..., s_L z_L) for
independent signs s, E[s_l <w_l, (H z')_l>] = sum_m E[s_l s_m] ||H_lm||_F^2
= ||H_ll||_F^2. That gives the anisotropy kappa_l = ||H_ll||_F / |T_l| (eq. 7).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from workers.curvature.groups import ParameterGroups, parameter_groups
from workers.curvature.hvp import DEFAULT_MECHANISM, evaluation_mode, hessian_vector_products
from workers.curvature.probes import block_signs, check_distribution, check_generator, check_num_probes, draw_probe


@dataclass(frozen=True)
class ProbeEstimate:
    """Per-layer per-probe values [K, L] of one call, and the estimate and standard error
    derived from them (what every probe estimator returns)."""

    layers: list[str]
    numel: list[int]
    probe_values: torch.Tensor

    @property
    def num_probes(self) -> int:
        return self.probe_values.shape[0]

    @property
    def trace(self) -> torch.Tensor:
        """[L] the mean over probes: the estimate of each layer's trace."""
        return probe_mean(self.probe_values)

    @property
    def stderr(self) -> torch.Tensor:
        """[L] standard error of ``trace`` over probes; NaN for one probe."""
        return probe_stderr(self.probe_values)

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.layers, self.trace.tolist()))


@dataclass(frozen=True)
class LayerwiseTrace(ProbeEstimate):
    """Per-probe values of one call; every statistic is derived from them.

    probe_values[k, l] = z_l^T (H z)_l (``trace`` estimates T_l = tr(H_ll), eq. 4),
    row_energy_values[k, l] = ||(H z)_l||^2 and, when requested,
    block_frobenius_values[k, l] = s_l <(H z)_l, (H z')_l>.
    """

    row_energy_values: torch.Tensor
    block_frobenius_values: torch.Tensor | None
    loss: float
    nonfinite: list[str]

    @property
    def row_energy(self) -> torch.Tensor:
        """[L] estimate of sum_m ||H_lm||_F^2 (the block row of H)."""
        return probe_mean(self.row_energy_values)

    @property
    def block_frobenius_sq(self) -> torch.Tensor | None:
        """[L] unbiased estimate of ||H_ll||_F^2 (may be negative at few probes)."""
        return None if self.block_frobenius_values is None else probe_mean(self.block_frobenius_values)

    def per_probe(self) -> dict[str, torch.Tensor]:
        """Every per-layer quantity of this call as its per-probe values [K, L], by name:
        ``trace``, ``row_energy`` and, when computed, ``block_frobenius_sq``."""
        values = {"trace": self.probe_values, "row_energy": self.row_energy_values}
        if self.block_frobenius_values is not None:
            values["block_frobenius_sq"] = self.block_frobenius_values
        return values

    @property
    def anisotropy(self) -> torch.Tensor | None:
        """[L] kappa_l = ||H_ll||_F / |T_l| (eq. 7), from the estimates above."""
        frob = self.block_frobenius_sq
        return None if frob is None else frob.clamp(min=0).sqrt() / self.trace.abs()


def probe_mean(values: torch.Tensor) -> torch.Tensor:
    """[L] the mean over probes of per-probe values [K, L]. A layer hit by a non-finite
    product has no estimate: NaN, never an average over the probes that stayed finite."""
    return values.mean(0).masked_fill(~values.isfinite().all(0), math.nan)


def probe_stderr(values: torch.Tensor) -> torch.Tensor:
    """[L] the standard error of ``probe_mean`` over the K probes; NaN for one probe."""
    if values.shape[0] < 2:
        return torch.full(values.shape[1:], math.nan, dtype=values.dtype, device=values.device)
    return values.std(0, correction=1) / math.sqrt(values.shape[0])


def tensor_dots(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """[len(a)] <a_p, b_p> for each pair of tensors, in float64."""
    return torch.stack([torch.dot(x.reshape(-1), y.reshape(-1)).to(torch.float64) for x, y in zip(a, b)])


def group_dots(a: list[torch.Tensor], b: list[torch.Tensor], groups: ParameterGroups) -> torch.Tensor:
    """[L] sum over each group's tensors of <a_p, b_p>, accumulated in float64."""
    dots = tensor_dots(a, b)
    index = torch.tensor(groups.group_of, device=dots.device)
    return torch.zeros(len(groups.names), dtype=torch.float64, device=dots.device).index_add_(0, index, dots)


def layerwise_trace(
    model: nn.Module,
    criterion: Callable,
    inputs,
    targets,
    *,
    num_probes: int = 10,
    generator: torch.Generator | None = None,
    groups: str | Mapping[str, Sequence[str]] = "module",
    distribution: str = "rademacher",
    block_frobenius: bool = False,
    hvp: str = DEFAULT_MECHANISM,
) -> LayerwiseTrace:
    """Estimate tr(H_ll) of the mini-batch loss ``criterion(model(inputs), targets)``
    for every parameter group l, from ``num_probes`` products H z over all parameters.

    The model is evaluated in eval mode; its flags, buffers and ``.grad`` are left as
    they were. Probes come from ``generator`` on the parameters' device and dtype,
    so a seeded call is reproducible bit for bit. ``block_frobenius=True`` spends one
    more product per probe on ||H_ll||_F^2 (and draws its signs from the same
    generator, after each probe).

    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    >>> x, y = torch.randn(8, 3, dtype=torch.float64), torch.tensor([0, 1] * 4)
    >>> g = torch.Generator().manual_seed(0)
    >>> est = layerwise_trace(model, nn.CrossEntropyLoss(), x, y, num_probes=4000, generator=g)
    >>> est.layers, est.numel
    (['0', '2'], [16, 10])
    >>> exact = [0.22628, 0.75233]  # tr of the diagonal blocks of torch.func.hessian
    >>> all(abs(t - e) < 4 * s for t, e, s in zip(est.trace.tolist(), exact, est.stderr.tolist()))
    True
    """
    check_num_probes(num_probes)
    check_distribution(distribution)
    resolved = parameter_groups(model, groups)
    check_generator(generator, resolved.params)
    num_groups = len(resolved.names)

    with evaluation_mode(model):
        loss, products = hessian_vector_products(
            hvp, model, criterion, inputs, targets, resolved.params, resolved.param_names
        )
        trace_rows, energy_rows, frob_rows = [], [], []
        # Probes are drawn and consumed in chunks so that "reverse" keeps O(P)
        # memory; the vectorised mechanism takes all of them in one batch.
        chunk = num_probes if hvp == "forward-vmap" else 1
        for start in range(0, num_probes, chunk):
            probes, signs = [], []
            for _ in range(min(chunk, num_probes - start)):
                z = draw_probe(resolved.params, distribution=distribution, generator=generator)
                probes.append(z)
                if block_frobenius:
                    s = block_signs(num_groups, like=resolved.params[0], generator=generator)
                    signs.append(s)
            flipped = [
                [zp * s[g] for zp, g in zip(z, resolved.group_of)] for z, s in zip(probes, signs)
            ]
            ws = products(probes + flipped)
            for k, z in enumerate(probes):
                w = ws[k]
                trace_rows.append(group_dots(z, w, resolved))
                energy_rows.append(group_dots(w, w, resolved))
                if block_frobenius:
                    frob_rows.append(group_dots(w, ws[len(probes) + k], resolved) * signs[k].to(torch.float64))

    # One device-to-host copy for the whole call (CPU-GPU sync point).
    probe_values = torch.stack(trace_rows).cpu()
    row_energy_values = torch.stack(energy_rows).cpu()
    frob_values = torch.stack(frob_rows).cpu() if block_frobenius else None
    bad = ~probe_values.isfinite().all(0) | ~row_energy_values.isfinite().all(0)
    if frob_values is not None:
        bad |= ~frob_values.isfinite().all(0)
    nonfinite = [name for name, b in zip(resolved.names, bad.tolist()) if b]
    if nonfinite:
        warnings.warn(
            f"non-finite Hessian-vector product in groups {nonfinite}; their estimates are NaN",
            RuntimeWarning,
            stacklevel=2,
        )
    return LayerwiseTrace(
        layers=list(resolved.names),
        numel=resolved.numel,
        probe_values=probe_values,
        row_energy_values=row_energy_values,
        block_frobenius_values=frob_values,
        loss=loss,
        nonfinite=nonfinite,
    )
