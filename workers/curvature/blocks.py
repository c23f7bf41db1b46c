"""Every inter-layer block at once: unbiased estimates of F_lm = ||A_lm||_F^2 for all pairs
of groups, A the Hessian, its Gauss-Newton part or its tensor part, and the metrics built
on them (curvature-spec.md, section 4; seeds 001 and 003).

For a probe z with E[z z^T] = I over all parameters and signs s (one per group), let
w = A z and w^s = A (s o z). Then E_z <w^s_l, w^t_l> = sum_a s_a t_a F_la. Three designs
turn that into all L^2 values:

- ``signs`` (2 products per probe): s_m <w_l, w^s_l> is unbiased for F_lm, every m at once
  (E[s_m s_a] = delta_ma); its variance is at least sum_(a != m) F_la^2.
- ``columns`` (L products per probe): z^(m), z restricted to group m, gives
  ||(A z^(m))_l||^2, unbiased for F_lm for every l; variance at most 2 F_lm^2 (Rademacher).
- ``walsh`` (ours; about 2 sqrt(L) products per probe, but its noise scales with the row's
  whole energy E_l, so it pays only where the rows are concentrated): Walsh signs s^(i)_m =
  (-1)^popcount(i & m) for i in R = {0..2^b1 - 1} U {h 2^b1}, n_H = 2^b >= L, b1 = ceil(b/2).
  Every k < n_H is i XOR j for some i, j in R, and E <w^(i)_l, w^(j)_l> = sum_a W_k(a) F_la,
  the Walsh transform of row l at k = i XOR j; the inverse transform
  F_lm = (1/n_H) sum_k W_k(m) y_kl recovers every column (|R| = 11, 15, 23 products for
  L = 17, 41, 73). Columns m >= L are phantoms whose true value is 0: their estimates show
  the noise floor.

The row sums E_l = sum_m F_lm (``row_energy`` of ``layerwise_trace``) and the diagonal F_ll
(its ``block_frobenius_sq``) are the special cases the trace estimator already logs.

Metrics (definitions: see ``InterlayerBlocks``; the companion authors' code, comiam/dag-hesse,
applies the same formulas to activation blocks d^2 L / df_v df_w, ours to parameter blocks):
resonance R_lm = ||A_lm||_F and coupling C_lm = ||A_lm||_F / sqrt(||A_ll||_F ||A_mm||_F) are
theirs; C <= 1 for a positive semi-definite A (tr(A_lm^T A_lm) <= ||A_ll||_F ||A_mm||_F), so
C > 1 flags the indefinite tensor part. The off-block fraction of each row, phi (dag-hesse's
"discarded coupling", 1 - sum F_ll / sum F_lm), the stable rank D_l = ||A_ll||_F^2 / ||A_ll||_2^2
and the GN-Gap = ||H^T_lm||_F / ||G_lm||_F follow their names; the per-block D_l and GN-Gap
over parameter blocks are ours.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from workers.curvature.ggn import check_cross_entropy
from workers.curvature.graph import layer_distances
from workers.curvature.groups import parameter_groups
from workers.curvature.hvp import evaluation_mode
from workers.curvature.probes import check_generator, check_num_probes, draw_probe
from workers.curvature.split import split_products
from workers.curvature.trace import group_dots, probe_mean, probe_stderr

DESIGNS = ("walsh", "signs", "columns")
OPERATORS = ("hessian", "ggn", "tensor")


@dataclass(frozen=True)
class InterlayerBlocks:
    """Per-probe estimates ``values`` [K, L, L] of F_lm = ||A_lm||_F^2 (symmetrised: the mean
    of the (l, m) and (m, l) estimates), the ``design``, the ``operator`` and, for ``walsh``,
    the phantom columns ``phantoms`` [K, L, n_H - L] (true value 0), and the groups' distances
    ``distance`` [L, L] in the network's graph (``layer_distances``), to profile by."""

    layers: list[str]
    numel: list[int]
    design: str
    operator: str
    values: torch.Tensor
    phantoms: torch.Tensor | None
    matvecs: int
    loss: float
    distance: torch.Tensor | None = None

    @property
    def frob_sq(self) -> torch.Tensor:
        """[L, L] estimates of ||A_lm||_F^2 (unbiased; may be negative at few probes)."""
        return probe_mean(self.values.flatten(1)).view(self.values.shape[1:])

    @property
    def stderr(self) -> torch.Tensor:
        """[L, L] their standard errors over probes."""
        return probe_stderr(self.values.flatten(1)).view(self.values.shape[1:])

    @property
    def resonance(self) -> torch.Tensor:
        """[L, L] R_lm = ||A_lm||_F (dag-hesse's inter-layer resonance)."""
        return self.frob_sq.clamp(min=0).sqrt()

    @property
    def coupling(self) -> torch.Tensor:
        """[L, L] C_lm = ||A_lm||_F / sqrt(||A_ll||_F ||A_mm||_F) (dag-hesse's geometric
        coupling); <= 1 when A is positive semi-definite."""
        r = self.resonance
        diagonal = r.diagonal()
        return r / (diagonal[:, None] * diagonal[None, :]).sqrt()

    @property
    def off_block_fraction(self) -> torch.Tensor:
        """[L] sum_(m != l) F_lm / sum_m F_lm: the share of row l's energy off its block (the
        part of the single-pass estimator's variance block-restricted probes would not have)."""
        f = self.frob_sq.clamp(min=0)
        return 1 - f.diagonal() / f.sum(1)

    @property
    def phi(self) -> float:
        """1 - sum_l F_ll / sum_lm F_lm: the share of all curvature energy off the diagonal
        blocks (dag-hesse's "discarded coupling" of a block-diagonal approximation)."""
        f = self.frob_sq.clamp(min=0)
        return float(1 - f.diagonal().sum() / f.sum())


def stable_rank(blocks: InterlayerBlocks, eigen) -> torch.Tensor:
    """[L] D_l = ||A_ll||_F^2 / max(|lambda_max|, |lambda_min|)^2 of each diagonal block,
    from ``blocks`` and a ``top_eigenvalues`` result over the same groups (ours over parameter
    blocks): 1 <= D_l <= rank(A_ll), the number of directions the block's curvature spreads over."""
    order = [eigen.layers.index(name) for name in blocks.layers]
    spectral = torch.maximum(eigen.lambda_max[order].abs(), eigen.lambda_min[order].abs())
    return blocks.frob_sq.diagonal() / spectral**2


def gn_gap(tensor: InterlayerBlocks, ggn: InterlayerBlocks) -> torch.Tensor:
    """[L, L] ||H^T_lm||_F / ||G_lm||_F from the tensor and Gauss-Newton operators' blocks
    (dag-hesse's GN-Gap, over parameter blocks). Under F1 its diagonal is 0: read it off
    the diagonal."""
    if (tensor.operator, ggn.operator) != ("tensor", "ggn") or tensor.layers != ggn.layers:
        raise ValueError("gn_gap needs interlayer_blocks of operator='tensor' and operator='ggn' over the same groups")
    return tensor.resonance / ggn.resonance


def walsh_rows(num_groups: int) -> tuple[int, list[int]]:
    """n_H = 2^b >= L and the sign rows R, so that every k < n_H is i XOR j for i, j in R.

    >>> walsh_rows(17)
    (32, [0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 24])
    """
    b = max(1, math.ceil(math.log2(max(num_groups, 2))))
    b1 = math.ceil(b / 2)
    low = list(range(2**b1))
    return 2**b, low + [h * 2**b1 for h in range(1, 2 ** (b - b1))]


def _walsh(k: int, m: int) -> int:
    return -1 if bin(k & m).count("1") % 2 else 1


def interlayer_blocks(
    model: nn.Module,
    criterion: Callable,
    inputs,
    targets,
    *,
    num_probes: int = 10,
    design: str = "columns",
    operator: str = "hessian",
    groups: str | Mapping[str, Sequence[str]] = "module",
    generator: torch.Generator | None = None,
) -> InterlayerBlocks:
    """Estimate ||A_lm||_F^2 for every pair of parameter groups, A the Hessian of the mean
    cross-entropy (``operator="hessian"``), its Gauss-Newton part (``"ggn"``) or its tensor
    part (``"tensor"``), from ``num_probes`` Rademacher probes and the products of ``design``
    (``columns``: L per probe; ``walsh``: about 2 sqrt(L); ``signs``: 2). ``columns`` is the
    default because its noise is each block's own: on the built-in models, where 68-100% of a
    row's energy lies off the diagonal block, it is 15-40 times more precise per product than
    ``walsh`` (``docs/benchmarks.md``, section 9). Eval mode; the model's flags, buffers and
    ``.grad`` are left as they were.

    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    >>> x, y = torch.randn(8, 3, dtype=torch.float64), torch.tensor([0, 1] * 4)
    >>> blocks = interlayer_blocks(model, nn.CrossEntropyLoss(), x, y, num_probes=3000, design="columns",
    ...                            generator=torch.Generator().manual_seed(0))
    >>> exact = torch.tensor([[0.06391, 0.23599], [0.23599, 0.38966]])  # ||H_lm||_F^2 of the dense Hessian
    >>> bool(((blocks.frob_sq - exact).abs() <= 4 * blocks.stderr).all()), blocks.matvecs
    (True, 6000)
    """
    check_num_probes(num_probes)
    if design not in DESIGNS:
        raise ValueError(f"design={design!r} is not one of {DESIGNS}")
    if operator not in OPERATORS:
        raise ValueError(f"operator={operator!r} is not one of {OPERATORS}")
    check_cross_entropy(criterion, "interlayer_blocks")
    resolved = parameter_groups(model, groups)
    check_generator(generator, resolved.params)
    num_groups = len(resolved.names)
    like = resolved.params[0]
    rows, phantom_rows, matvecs = [], [], 0
    with evaluation_mode(model):
        loss, split = split_products(model, criterion, inputs, targets, resolved.params)

        def product(z):
            hz, gz = split(z, hessian=operator != "ggn", ggn=operator != "hessian")
            if operator == "tensor":
                return [a - b for a, b in zip(hz, gz)]
            return hz if operator == "hessian" else gz

        def signed(z, signs: list[int]):
            return [t * signs[g] for t, g in zip(z, resolved.group_of)]

        if design == "walsh":  # the sign rows and the inverse transform, once per call
            n_h, chosen = walsh_rows(num_groups)
            sign_rows = {i: [_walsh(i, m) for m in range(num_groups)] for i in chosen}
            transform = torch.tensor([[_walsh(k, m) for m in range(n_h)] for k in range(n_h)], dtype=torch.float64,
                                     device=like.device)
            pairs = [(i, j) for a, i in enumerate(chosen) for j in chosen[a:]]
            count = torch.bincount(torch.tensor([i ^ j for i, j in pairs]), minlength=n_h).to(transform)
        for _ in range(num_probes):
            z = draw_probe(resolved.params, distribution="rademacher", generator=generator)
            if design == "columns":
                f = torch.zeros(num_groups, num_groups, dtype=torch.float64, device=like.device)
                for m in range(num_groups):
                    w = product([t if g == m else torch.zeros_like(t) for t, g in zip(z, resolved.group_of)])
                    f[:, m] = group_dots(w, w, resolved)
                matvecs += num_groups
            elif design == "signs":
                s = torch.randint(0, 2, (num_groups,), generator=generator, device=like.device) * 2 - 1
                w, ws = product(z), product(signed(z, s.tolist()))
                f = group_dots(w, ws, resolved)[:, None] * s.to(torch.float64)[None, :]
                matvecs += 2
            else:
                ws = {i: product(signed(z, sign_rows[i])) for i in chosen}
                matvecs += len(chosen)
                y = torch.zeros(n_h, num_groups, dtype=torch.float64, device=like.device)
                for i, j in pairs:  # y_kl: the mean of <w^(i)_l, w^(j)_l> over the pairs with i XOR j = k
                    y[i ^ j] += group_dots(ws[i], ws[j], resolved)
                y /= count[:, None]
                full = (transform.T @ y).T / n_h  # [L, n_H]: row l's every column, phantoms past L
                f = full[:, :num_groups]
                phantom_rows.append(full[:, num_groups:].cpu())
            rows.append(((f + f.T) / 2).cpu())
    values = torch.stack(rows)
    if not values.isfinite().all():
        warnings.warn("non-finite curvature products; some block estimates are NaN", RuntimeWarning, stacklevel=2)
    return InterlayerBlocks(
        layers=list(resolved.names), numel=resolved.numel, design=design, operator=operator, values=values,
        phantoms=torch.stack(phantom_rows) if phantom_rows else None, matvecs=matvecs, loss=loss,
        distance=layer_distances(model, criterion, inputs, targets, groups=groups),
    )
