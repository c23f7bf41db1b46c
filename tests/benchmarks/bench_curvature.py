"""Side-by-side timings of the layer-wise trace on CIFAR ResNet-18 and VGG-11 (``make bench``).

For each configuration (architecture, width, batch) it times, as medians over repetitions:
- ``layerwise_trace`` with K probes for each HVP mechanism (reverse, forward, forward-vmap);
- the whole-network Hutchinson trace with the same K (PyHessian's way);
- the naive per-layer loop of block-restricted HVPs (L products per probe); it may
  use fewer probes than K (``--naive-probes``), so it is compared per probe;
- one training step (forward + backward + SGD) on the same batch.
It prints the ratios. Nothing here is asserted; the figures go in docs/benchmarks.md.

    python -m tests.benchmarks.bench_curvature --config resnet18:0.125:128 --config vgg11:1.0:32:1
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch import nn

from workers.curvature import blockwise_trace, layerwise_trace, network_trace, parameter_groups
from workers.models import ARCHITECTURES, build_model


def median_seconds(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(arch: str, width: float, batch: int, *, probes: int, naive_probes: int, reps: int, naive_reps: int) -> None:
    torch.manual_seed(0)
    model, _ = build_model({"name": arch, "width": width}, num_classes=10, in_channels=3)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    criterion = nn.CrossEntropyLoss()
    num_params = sum(p.numel() for p in model.parameters())
    num_groups = len(parameter_groups(model).names)
    print(f"\n{arch} width {width} ({num_params:,} parameters, L = {num_groups} groups), batch {batch}, "
          f"K = {probes}, medians of {reps} (naive loop: {naive_reps} x K = {naive_probes})")

    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)

    def train_step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        criterion(model(x), y).backward()
        optimizer.step()

    def seeded():
        return torch.Generator().manual_seed(0)

    # Warm up every path once (allocator, first-call overheads).
    train_step()
    layerwise_trace(model, criterion, x, y, num_probes=1)

    rows = {"train step": median_seconds(train_step, reps)}
    for mech in ("reverse", "forward", "forward-vmap"):
        rows[f"layerwise_trace hvp={mech}"] = median_seconds(
            lambda mech=mech: layerwise_trace(model, criterion, x, y, num_probes=probes, generator=seeded(), hvp=mech),
            reps)
    rows["network_trace (PyHessian way)"] = median_seconds(
        lambda: network_trace(model, criterion, x, y, num_probes=probes, generator=seeded()), reps)
    naive = median_seconds(
        lambda: blockwise_trace(model, criterion, x, y, num_probes=naive_probes, generator=seeded()), naive_reps)
    rows[f"naive per-layer loop, K = {naive_probes}"] = naive

    ours = rows["layerwise_trace hvp=reverse"]
    for name, seconds in rows.items():
        print(f"  {name:<38}{seconds:>9.3f} s")
    best = min(("reverse", "forward", "forward-vmap"), key=lambda m: rows[f"layerwise_trace hvp={m}"])
    print(f"  fastest mechanism: {best}")
    print(f"  layerwise (reverse) / network trace:          {ours / rows['network_trace (PyHessian way)']:.3f}"
          "   (target <= 1.05)")
    per_probe = (naive / naive_probes) / (ours / probes)
    print(f"  naive loop / layerwise, per probe:            {per_probe:.1f}   (L = {num_groups})")
    print(f"  layerwise (reverse, K={probes}) / train step:       {ours / rows['train step']:.1f}")
    for mech in ("forward", "forward-vmap"):
        print(f"  hvp={mech} / hvp=reverse:{'':<{19 - len(mech)}}{rows[f'layerwise_trace hvp={mech}'] / ours:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", default=None,
                        help="[ARCH:]WIDTH:BATCH[:NAIVE_PROBES]; repeatable (default: resnet18 and vgg11, each "
                             "at 0.125:128:10 and 1.0:32:1)")
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--naive-reps", type=int, default=1)
    args = parser.parse_args(argv)
    configs = args.config or [f"{a}:{c}" for a in ("resnet18", "vgg11") for c in ("0.125:128:10", "1.0:32:1")]
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}, {time.strftime('%Y-%m-%d')}")
    for spec in configs:
        parts = spec.split(":")
        arch = parts.pop(0) if parts[0] in ARCHITECTURES else "resnet18"
        width, batch = float(parts[0]), int(parts[1])
        naive_probes = int(parts[2]) if len(parts) > 2 else args.probes
        bench(arch, width, batch, probes=args.probes, naive_probes=naive_probes, reps=args.reps,
              naive_reps=args.naive_reps)


if __name__ == "__main__":
    main()
