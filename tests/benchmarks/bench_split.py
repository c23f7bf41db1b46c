"""Inside the Hessian: what the split, the inter-layer blocks and Hutch++ cost, and when
Hutch++ beats the single pass (``make bench``).

On the digits (snapshot batch of 128) with ResNet-18 and VGG-11 at width 1/8 after 11 SGD
steps:

1. Seconds per snapshot against one training step, medians of interleaved repetitions:
   the paper's trace (K = 10), ``gauss_newton_split`` (K = 10), ``interlayer_blocks`` with one
   probe of each design, ``sketched_trace`` (B = 12); and one Gauss-Newton-vector product on
   the retained graph (double-backward trick) against torch.func forward-mode (jvp, then vjp).
2. Hutch++ (B = 12, s = 4) against the single pass at K = 12, the same products: the variance
   of each layer's estimate over 20 seeds on one batch, as a ratio, next to the layer's
   off-block fraction rho_l = 1 - ||H_ll||_F^2 / sum_m ||H_lm||_F^2 (from the same call of
   ``layerwise_trace(block_frobenius=True)``): the notes predict Hutch++ loses where rho_l > 1/2.
3. The block designs' precision per product (VGG-11): the per-probe relative spread of the
   diagonal and the off-diagonal estimates, times the products per probe.
4. Within blocks (VGG-11): XTrace on 12 restricted products per layer against block-restricted
   Hutchinson (``blockwise_trace``) with 12 per layer, over 10 seeds: whether a block's own
   spectrum is low-rank enough for a sketch to pay, at L times the single pass's products.

    python -m tests.benchmarks.bench_split [--full-width]

``--full-width`` adds part 1 at width 1 (one repetition).
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F
from torch.func import functional_call, jvp, vjp

from tests.benchmarks.bench_curvature import median_seconds as seconds
from tests.benchmarks.bench_monitor import trained
from workers.curvature import (
    blockwise_trace,
    gauss_newton_split,
    interlayer_blocks,
    layerwise_trace,
    parameter_groups,
    sketched_trace,
)
from workers.curvature.hvp import evaluation_mode
from workers.curvature.probes import draw_probe
from workers.curvature.split import split_products


def ggn_product_mechanisms(model, x, y, reps: int) -> tuple[float, float, float]:
    """Seconds of one HVP, one retained-graph GGN product and one forward-mode GGN product."""
    groups = parameter_groups(model)
    z = draw_probe(groups.params, distribution="rademacher", generator=torch.Generator().manual_seed(0))
    primals = tuple(p.detach() for p in groups.params)

    def logits_of(ps):
        return functional_call(model, dict(zip(groups.param_names, ps)), (x,))

    with evaluation_mode(model):
        _, products = split_products(model, F.cross_entropy, x, y, groups.params)
        t_h = seconds(lambda: products(z, hessian=True, ggn=False), reps)
        t_g = seconds(lambda: products(z, hessian=False, ggn=True), reps)

        def functional():
            logits, jz = jvp(logits_of, (primals,), (tuple(z),))
            p = torch.softmax(logits, 1)
            u = (p * jz - p * (p * jz).sum(1, keepdim=True)) / len(x)
            return vjp(logits_of, primals)[1](u)

        t_f = seconds(functional, reps)
        # the two give the same product
        retained = products(z, hessian=False, ggn=True)[1]
        forward = functional()[0]
        assert all(torch.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(retained, forward))
    return t_h, t_g, t_f


def costs(arch: str, width: float, reps: int = 3) -> None:
    model, _, x, y, optimizer = trained(arch, width)
    g = torch.Generator()
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def step():
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    ce = F.cross_entropy
    num_groups = len(parameter_groups(model).names)
    runs = {
        "trace, hessian K=10": (10, lambda: layerwise_trace(model, ce, x, y, num_probes=10,
                                                             generator=g.manual_seed(1))),
        "gauss_newton_split K=10": (20, lambda: gauss_newton_split(model, ce, x, y, num_probes=10,
                                                                   generator=g.manual_seed(1))),
        "blocks walsh, 1 probe": (None, lambda: interlayer_blocks(model, ce, x, y, num_probes=1, design="walsh",
                                                                  generator=g.manual_seed(1))),
        "blocks signs, 1 probe": (2, lambda: interlayer_blocks(model, ce, x, y, num_probes=1, design="signs",
                                                               generator=g.manual_seed(1))),
        "blocks columns, 1 probe": (num_groups, lambda: interlayer_blocks(model, ce, x, y, num_probes=1,
                                                                          design="columns",
                                                                          generator=g.manual_seed(1))),
        "hutch++ B=12": (12, lambda: sketched_trace(model, ce, x, y, budget=12, generator=g.manual_seed(1))),
    }
    times = {name: [] for name in ["training step", *runs]}
    for _ in range(reps):  # interleaved
        times["training step"].append(seconds(step, 1))
        model.load_state_dict(state)
        for name, (_, fn) in runs.items():
            times[name].append(seconds(fn, 1))
    t = {name: statistics.median(v) for name, v in times.items()}
    walsh = interlayer_blocks(model, ce, x, y, num_probes=1, design="walsh").matvecs
    print(f"\n{arch} width {width}, digits batch 128, L = {num_groups} groups (medians of {reps} interleaved)")
    for name, value in t.items():
        products = runs[name][0] if name in runs else None
        products = walsh if name == "blocks walsh, 1 probe" else products
        extra = f", {products} products" if products else ""
        print(f"  {name:<26} {value * 1000:8.1f} ms = {value / t['training step']:6.2f} training steps{extra}")
    t_h, t_g, t_f = ggn_product_mechanisms(model, x, y, reps=5)
    print(f"  one product: HVP {t_h * 1000:.1f} ms; GGN retained graph {t_g * 1000:.1f} ms ({t_g / t_h:.2f} HVP); "
          f"GGN forward-mode {t_f * 1000:.1f} ms ({t_f / t_h:.2f} HVP)")


def hutchpp_against_single_pass(arch: str, width: float, seeds: int = 20) -> None:
    model, _, x, y, _ = trained(arch, width)
    ce = F.cross_entropy
    single = torch.stack([layerwise_trace(model, ce, x, y, num_probes=12, generator=torch.Generator().manual_seed(s))
                          .trace for s in range(seeds)])
    sketched = torch.stack([sketched_trace(model, ce, x, y, budget=12, sketch=4,
                                           generator=torch.Generator().manual_seed(s)).trace for s in range(seeds)])
    energy = layerwise_trace(model, ce, x, y, num_probes=30, block_frobenius=True,
                             generator=torch.Generator().manual_seed(99))
    rho = 1 - energy.block_frobenius_sq.clamp(min=0) / energy.row_energy
    ratio = sketched.var(0) / single.var(0)
    wins = ratio < 1
    print(f"\n{arch} width {width}: variance of Hutch++ (B = 12, s = 4) / single pass (K = 12) over {seeds} seeds")
    print(f"  median {ratio.median():.2f}, range {ratio.min():.2f}-{ratio.max():.2f}; Hutch++ wins in "
          f"{int(wins.sum())} of {len(ratio)} layers")
    low, high = rho <= 0.5, rho > 0.5
    for name, mask in (("rho_l <= 1/2", low), ("rho_l > 1/2", high)):
        if mask.any():
            print(f"  {name}: {int(mask.sum())} layers, Hutch++ wins in {int((wins & mask).sum())}, "
                  f"median ratio {ratio[mask].median():.2f}")
    print(f"  rho_l over layers: median {rho.median():.2f}, range {rho.min():.2f}-{rho.max():.2f}")


def xtrace_within_blocks(arch: str, width: float, seeds: int = 10) -> None:
    model, _, x, y, _ = trained(arch, width)
    ce = F.cross_entropy
    block = torch.stack([blockwise_trace(model, ce, x, y, num_probes=12, generator=torch.Generator().manual_seed(s))
                         .mean(0) for s in range(seeds)])
    xtrace = torch.stack([sketched_trace(model, ce, x, y, budget=12, method="xtrace",
                                         generator=torch.Generator().manual_seed(s)).trace for s in range(seeds)])
    single = torch.stack([layerwise_trace(model, ce, x, y, num_probes=12, generator=torch.Generator().manual_seed(s))
                          .trace for s in range(seeds)])
    numel = parameter_groups(model).numel
    large = torch.tensor([n > 12 for n in numel])  # blocks of <= 12 parameters XTrace computes exactly
    ratio = xtrace.var(0)[large] / block.var(0)[large]
    # at equal products: XTrace spends 12 L; the single pass at K = 12 L would have 1/L of its K = 12 variance
    equal = xtrace.var(0)[large] / (single.var(0)[large] / len(numel))
    print(f"\n{arch} width {width}: within blocks, XTrace (12 restricted products per layer) / block-restricted "
          f"Hutchinson (12 per layer), variance over {seeds} seeds, {int(large.sum())} layers of > 12 parameters")
    print(f"  median {ratio.median():.3f}, range {ratio.min():.3f}-{ratio.max():.3f}; XTrace wins in "
          f"{int((ratio < 1).sum())} of {len(ratio)}")
    print(f"  against the single pass at the same 12 L = {12 * len(numel)} products: variance ratio median "
          f"{equal.median():.3f}, range {equal.min():.3f}-{equal.max():.3f}; XTrace wins in {int((equal < 1).sum())}")


def design_precision(arch: str, width: float) -> None:
    model, _, x, y, _ = trained(arch, width)
    print(f"\n{arch} width {width}: the block designs, relative spread of one probe's estimates (median over "
          "pairs) and the variance per product (relative spread^2 x products per probe)")
    for design, probes in (("columns", 10), ("walsh", 20), ("signs", 60)):
        est = interlayer_blocks(model, F.cross_entropy, x, y, num_probes=probes, design=design,
                                generator=torch.Generator().manual_seed(0))
        spread, f = est.values.std(0), est.frob_sq
        off = ~torch.eye(len(f), dtype=torch.bool)
        diagonal = float((spread.diagonal() / f.diagonal().abs()).median())
        other = float((spread[off] / f[off].abs()).median())
        per = est.matvecs // probes
        print(f"  {design:<8} {per:3d} products/probe; diagonal {diagonal:5.2f} ({diagonal**2 * per:6.1f} per "
              f"product), off-diagonal {other:5.2f} ({other**2 * per:6.1f} per product)")


def main() -> None:
    """Everything at width 1/8; ``--full-width`` adds the costs at width 1 (minutes on 2 cores)."""
    import sys

    for arch in ("resnet18", "vgg11"):
        costs(arch, 0.125)
    if "--full-width" in sys.argv[1:]:
        for arch in ("resnet18", "vgg11"):
            costs(arch, 1.0, reps=1)
    for arch in ("resnet18", "vgg11"):
        hutchpp_against_single_pass(arch, 0.125)
    design_precision("vgg11", 0.125)
    xtrace_within_blocks("vgg11", 0.125)


if __name__ == "__main__":
    main()
