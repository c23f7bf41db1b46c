"""Per-layer Hutch++ with products shared across layers, and per-layer XTrace
(curvature-spec.md, section 5; the paper of seed 000 names Hutch++ as a next step).

Hutch++ (Meyer, Musco, Musco and Woodruff 2021): for an orthonormal Q independent of the
probes, tr A = tr(Q^T A Q) + tr((I - QQ^T) A (I - QQ^T)); the first term is computed exactly,
Hutchinson estimates the second, whose variance is small when Q captures A's large
eigenvalues. Per layer, with B = 2s + r products over the whole parameter vector shared by
every group (ours):

1. Y = H S for s Rademacher probes S; Q_l = orth(Y_l) from group l's rows (it spans the
   block row H_l. rather than H_ll's range: still independent of what follows, so unbiased);
2. q_j = (sigma_1 Q_1[:, j], ..., sigma_L Q_L[:, j]) with independent signs sigma per group:
   sigma_l <Q_l[:, j], (H q_j)_l> is unbiased for Q_l[:, j]^T H_ll Q_l[:, j], with noise
   sum_(m != l) (Q_l[:, j]^T H_lm Q_m[:, j])^2 from the other blocks;
3. r residual probes g, projected per group, g~_l = (I - Q_l Q_l^T) g_l: <g~_l, (H g~)_l> is
   unbiased for tr(P_l H_ll P_l), P_l = I - Q_l Q_l^T.

So trace_l = sum_j exact_values[j, l] + mean_i probe_values[i, l] is unbiased for tr(H_ll).
It beats the single pass at the same B only if the top s eigenvalues of H_ll carry most of
||H_ll||_F^2, little of the row's energy lies off the block (rho_l = O_l / E_l small: the
cross-block noise of steps 2 and 3 is what the single pass has too) and B is below the
paper's K* (eq. 9). ``tests/benchmarks/bench_split.py`` measures it on the built-in models.

XTrace (Epperly, Tropp and Webber 2024) uses each of n test vectors both ways: for each i,
the basis Q_(i) of A W without column i gives tr(Q_(i)^T A Q_(i)) exactly and w_i estimates
the rest, so the n estimates are exchangeable and their spread is the error estimate. Its
leave-one-out algebra needs the products A w_i of the block itself, which a whole-vector
product does not give (it adds sum_(m != l) H_lm w_m), so here it runs block by block on
restricted products: n + n per block, L times the Hutch++ cost at the same budget. A block
with at most ``budget`` parameters gets its trace exactly from its unit vectors instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from workers.curvature.eigen import check_count
from workers.curvature.groups import parameter_groups
from workers.curvature.hvp import block_operators, evaluation_mode, reverse_hvp
from workers.curvature.probes import check_generator, draw_probe, flat_probe
from workers.curvature.trace import group_dots, probe_mean, probe_stderr

METHODS = ("hutch++", "xtrace")


@dataclass(frozen=True)
class SketchedTrace:
    """Hutch++: ``exact_values`` [s, L] = sigma_l <Q_l[:, j], (H q_j)_l>, whose sum over j
    estimates tr(Q_l^T H_ll Q_l), and ``probe_values`` [r, L], the residual probes' values;
    ``stderr`` is the residual part's standard error (conditional on the sketch: the sign
    noise of the sketch's own term is not in it). XTrace: no exact values, and
    ``probe_values`` [n, L] are the n exchangeable estimates of each trace (all equal for a
    block computed exactly), whose spread is XTrace's own error estimate."""

    method: str
    layers: list[str]
    numel: list[int]
    sketch_rank: list[int]
    exact_values: torch.Tensor
    probe_values: torch.Tensor
    matvecs: int
    loss: float

    @property
    def trace(self) -> torch.Tensor:
        """[L] the estimate of tr(H_ll)."""
        return self.exact_values.sum(0) + probe_mean(self.probe_values)

    @property
    def stderr(self) -> torch.Tensor:
        """[L] the residual part's standard error (NaN for one residual probe)."""
        return probe_stderr(self.probe_values)


def xtrace_estimates(matvec: Callable[[torch.Tensor], torch.Tensor], tests: torch.Tensor) -> torch.Tensor:
    """[n] the n exchangeable XTrace estimates of tr(A) from test vectors ``tests`` [d, n]
    (2n products of the symmetric ``matvec``), each unbiased; their mean is XTrace's estimate
    (Epperly, Tropp and Webber 2024, the basic estimator without the improved scaling)."""
    n = tests.shape[1]
    a_w = torch.stack([matvec(tests[:, i]) for i in range(n)], 1).to(torch.float64)
    q, r = torch.linalg.qr(a_w)
    a_q = torch.stack([matvec(q[:, j].to(tests.dtype)) for j in range(n)], 1).to(torch.float64)
    r_inv_t = torch.linalg.inv(r.T)
    s = r_inv_t / r_inv_t.norm(dim=0)  # s_i: Q_(i) Q_(i)^T = Q (I - s_i s_i^T) Q^T
    compressed = q.T @ a_q  # Q^T A Q
    traces = compressed.trace() - ((s.T @ compressed) * s.T).sum(1)  # tr(Q_(i)^T A Q_(i)) for every i
    w = tests.to(torch.float64)
    for i in range(n):
        deflate = lambda v: v - (s[:, i] @ v) * s[:, i]  # noqa: E731
        a_p_w = a_w[:, i] - a_q @ deflate(q.T @ w[:, i])
        traces[i] += w[:, i] @ (a_p_w - q @ deflate(q.T @ a_p_w))
    return traces


def sketched_trace(
    model: nn.Module,
    criterion: Callable,
    inputs,
    targets,
    *,
    budget: int = 12,
    sketch: int | None = None,
    method: str = "hutch++",
    generator: torch.Generator | None = None,
    groups: str | Mapping[str, Sequence[str]] = "module",
) -> SketchedTrace:
    """Estimate tr(H_ll) for every group l by Hutch++ on ``budget`` Hessian-vector products
    over the whole parameter vector, shared by all groups: ``sketch`` = s (default
    budget // 3) for the sketch, s for its exact part and budget - 2s residual probes; or by
    XTrace (``method="xtrace"``, ``budget`` even) on ``budget`` restricted products per group.
    Eval mode; the model's flags, buffers and ``.grad`` are left as they were.

    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    >>> x, y = torch.randn(8, 3, dtype=torch.float64), torch.tensor([0, 1] * 4)
    >>> runs = torch.stack([sketched_trace(model, nn.CrossEntropyLoss(), x, y, budget=12,
    ...                                    generator=torch.Generator().manual_seed(seed)).trace for seed in range(400)])
    >>> exact = torch.tensor([0.22628, 0.75233], dtype=torch.float64)  # the dense blocks' traces
    >>> bool(((runs.mean(0) - exact).abs() <= 4 * runs.std(0) / 20).all())  # unbiased over sketches and probes
    True
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}")
    if method == "xtrace":
        return _xtrace(model, criterion, inputs, targets, budget=budget, generator=generator, groups=groups)
    check_count("budget", budget, 3)
    sketch = budget // 3 if sketch is None else sketch
    check_count("sketch", sketch, 1)
    if 2 * sketch >= budget:
        raise ValueError(f"sketch={sketch} leaves no residual probe of budget={budget}: Hutch++ needs "
                         f"2 sketch < budget (sketch products, their exact traces, and at least one probe)")
    resolved = parameter_groups(model, groups)
    check_generator(generator, resolved.params)
    num_groups = len(resolved.names)
    members = [[i for i, g in enumerate(resolved.group_of) if g == l] for l in range(num_groups)]
    like = resolved.params[0]
    with evaluation_mode(model):
        loss, products = reverse_hvp(model, criterion, inputs, targets, resolved.params)
        sketches = [products([draw_probe(resolved.params, distribution="rademacher", generator=generator)])[0]
                    for _ in range(sketch)]
        bases = []  # per group: Q_l [P_l, s_l], orthonormal columns
        for l in range(num_groups):
            y = torch.stack([torch.cat([w[i].reshape(-1) for i in members[l]]) for w in sketches], 1)
            q, _ = torch.linalg.qr(y.to(torch.float64))
            bases.append(q.to(like.dtype)[:, : min(y.shape)])

        def as_probe(flat_by_group: list[torch.Tensor]) -> list[torch.Tensor]:
            """Per-group flat vectors -> one tensor per parameter."""
            probe = [torch.empty(0)] * len(resolved.params)
            for l in range(num_groups):
                parts = torch.split(flat_by_group[l], [resolved.params[i].numel() for i in members[l]])
                for i, part in zip(members[l], parts):
                    probe[i] = part.view_as(resolved.params[i])
            return probe

        exact_rows = []
        for j in range(sketch):
            signs = (torch.randint(0, 2, (num_groups,), generator=generator, device=like.device) * 2 - 1).tolist()
            columns = [signs[l] * q[:, j] if j < q.shape[1] else torch.zeros_like(q[:, 0])
                       for l, q in enumerate(bases)]
            probe = as_probe(columns)
            (w,) = products([probe])
            exact_rows.append(group_dots(probe, w, resolved))  # sigma_l^2 = 1: the signs cancel on the block
        probe_rows = []
        for _ in range(budget - 2 * sketch):
            g = draw_probe(resolved.params, distribution="rademacher", generator=generator)
            flat = [torch.cat([g[i].reshape(-1) for i in members[l]]) for l in range(num_groups)]
            projected = as_probe([v - q @ (q.T @ v) for v, q in zip(flat, bases)])
            (w,) = products([projected])
            probe_rows.append(group_dots(projected, w, resolved))
    return SketchedTrace(
        method=method, layers=list(resolved.names), numel=resolved.numel, sketch_rank=[q.shape[1] for q in bases],
        exact_values=torch.stack(exact_rows).cpu(), probe_values=torch.stack(probe_rows).cpu(), matvecs=budget,
        loss=loss,
    )


def _xtrace(model, criterion, inputs, targets, *, budget, generator, groups) -> SketchedTrace:
    check_count("budget", budget, 2)
    if budget % 2:
        raise ValueError(f"budget={budget}; XTrace needs an even budget (n test vectors, n products of its basis)")
    resolved = parameter_groups(model, groups)
    check_generator(generator, resolved.params)
    n = budget // 2
    columns, ranks, matvecs = [], [], 0
    with evaluation_mode(model):
        # the restricted operators x_l -> H_ll x_l of every group, on one retained graph
        loss, blocks = block_operators(model, criterion, inputs, targets, resolved, resolved.names)
        for _, indices, matvec in blocks:
            wrt = [resolved.params[i] for i in indices]
            size = sum(p.numel() for p in wrt)
            if size <= budget:  # exactly, from the unit vectors: no more products than the budget
                eye = torch.eye(size, dtype=wrt[0].dtype, device=wrt[0].device)
                trace = sum(float(matvec(eye[i])[i]) for i in range(size))
                columns.append(torch.full((n,), trace, dtype=torch.float64))
                ranks.append(size)
                matvecs += size
                continue
            tests = torch.stack([flat_probe(wrt, generator=generator) for _ in range(n)], 1)
            columns.append(xtrace_estimates(matvec, tests).cpu())
            ranks.append(n)
            matvecs += budget
    return SketchedTrace(
        method="xtrace", layers=list(resolved.names), numel=resolved.numel, sketch_rank=ranks,
        exact_values=torch.zeros(0, len(resolved.names), dtype=torch.float64), probe_values=torch.stack(columns, 1),
        matvecs=matvecs, loss=loss,
    )
