"""Print the layer-wise Hessian traces of a narrow CIFAR ResNet-18 (``make demo``).

A stand-in for the main job until the sweep exists: one mini-batch of 128
CIFAR-shaped images, K = 10 probes, every layer in one pass, with the standard
error and the anisotropy kappa_l = ||H_ll||_F / |T_l| (paper eq. 7).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from workers.curvature import layerwise_trace
from workers.models import resnet18


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=float, default=0.25, help="channel multiplier (1.0 = the paper's ResNet-18)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    model = resnet18(num_classes=10, width=args.width)
    # Synthetic CIFAR-shaped data: no dataset can be downloaded here (the sweep reads real archives).
    inputs = torch.randn(args.batch, 3, 32, 32)
    targets = torch.randint(0, 10, (args.batch,))
    # Bring BatchNorm running statistics to this data, as training would.
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(inputs)
    params = sum(p.numel() for p in model.parameters())
    print(f"ResNet-18 at width {args.width}: {params:,} parameters; batch {args.batch}; K = {args.probes}")

    start = time.perf_counter()
    est = layerwise_trace(model, nn.CrossEntropyLoss(), inputs, targets, num_probes=args.probes,
                          generator=torch.Generator().manual_seed(args.seed), block_frobenius=True)
    seconds = time.perf_counter() - start

    print(f"{'layer':<24}{'params':>9}{'trace T_l':>13}{'stderr':>11}{'kappa':>9}")
    for name, n, t, se, frob in zip(est.layers, est.numel, est.trace.tolist(), est.stderr.tolist(),
                                    est.block_frobenius_sq.tolist()):
        # The unbiased ||H_ll||_F^2 estimate can be negative at small K: kappa is then not resolved.
        kappa = f"{frob ** 0.5 / abs(t):>9.2f}" if frob > 0 else f"{'n/r':>9}"
        print(f"{name:<24}{n:>9,}{t:>13.4g}{se:>11.2g}{kappa}")
    print(f"sum over {len(est.layers)} groups: {est.trace.sum().item():.4g}   loss {est.loss:.4f}")
    print("kappa n/r: the ||H_ll||_F^2 estimate is not positive at this K (more probes resolve it)")
    print(f"{2 * args.probes} Hessian-vector products (K for the traces, K for kappa) in {seconds:.1f} s")


if __name__ == "__main__":
    main()
