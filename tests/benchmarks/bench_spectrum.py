"""Extreme eigenvalues and spectral densities: what they cost (``make bench``).

On the digits (snapshot batch of 128) with ResNet-18 at width 1/4, the whole Hessian as one
operator (reverse-over-reverse HVPs on one retained graph):

1. After 1 and after 10 epochs, and on a synthetic operator of the same size with a crowded
   top, lambda_max to a relative residual ||H v - theta v|| <= 1e-3 |theta|: products and
   seconds for our Lanczos (stopping on the top residual alone, and as ``top_eigenvalues``
   runs it, on both ends), a power iteration (002, PyHessian) counted to the same residual,
   PyHessian's own stopping rule (relative change of the estimate < 1e-3, no residual) with
   the residual it reaches, and scipy's ``eigsh`` (ARPACK, which="LA", tol=1e-3).
2. SLQ (``spectral_density``, one run) at m in {32, 64, 128} steps, with full
   reorthogonalisation and without: seconds, and the peak growth of the resident memory
   during the call (sampled every 2 ms, each in a fresh process; memory the set-up freed
   and the allocator reuses is not counted, so this is a lower bound).

    python -m tests.benchmarks.bench_spectrum
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from tests.benchmarks.bench_monitor import trained
from workers.curvature.groups import parameter_groups
from workers.curvature.hvp import block_operators, evaluation_mode
from workers.curvature.lanczos import lanczos
from workers.curvature.reference import power_iteration

ARCH, WIDTH, TOL = "resnet18", 0.25, 1e-3


def operator(model, x, y):
    """The whole Hessian's flat matvec (call inside evaluation_mode) and a Rademacher start."""
    groups = parameter_groups(model)
    _, [(_, _, matvec)] = block_operators(model, F.cross_entropy, x, y, groups, None)
    start = torch.randint(0, 2, (sum(p.numel() for p in groups.params),),
                          generator=torch.Generator().manual_seed(0)).float().mul_(2).sub_(1)
    return matvec, start


def top_residual_steps(run) -> int | None:
    """The first step j at which the top Ritz value of T_j has residual <= TOL |theta|
    (T_j is the leading j x j block of the run's tridiagonal)."""
    for j in range(1, run.steps + 1):
        t = torch.diag(run.alphas[:j]) + torch.diag(run.betas[: j - 1], 1) + torch.diag(run.betas[: j - 1], -1)
        values, vectors = torch.linalg.eigh(t)
        if run.betas[j - 1] * vectors[-1, -1].abs() <= TOL * values.abs().max():
            return j
    return None


def trained_epochs(epochs: int):
    """The model after ``epochs`` epochs of the recipe's SGD (constant lr 0.1) on the digits."""
    from workers.data import normalise, place
    from workers.datasets import load_digits
    from workers.models import build_model
    from workers.seeds import generator

    torch.manual_seed(0)
    data = place(load_digits(), eta=0.0, noise_generator=generator("noise", 0), device=torch.device("cpu"))
    model, _ = build_model({"name": ARCH, "width": WIDTH}, num_classes=10, in_channels=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(epochs):
        order = torch.randperm(data.num_train)
        for i in range(data.num_train // 128):
            index = order[i * 128 : (i + 1) * 128]
            loss = F.cross_entropy(model(normalise(data.train_images[index], data.mean, data.std)),
                                   data.train_labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    index = torch.randperm(data.num_train)[:128]
    return model, normalise(data.train_images[index], data.mean, data.std), data.train_labels[index]


def lambda_max_costs(epochs: int) -> None:
    model, x, y = trained_epochs(epochs)
    with evaluation_mode(model):
        matvec, start = operator(model, x, y)
        compare(f"after {epochs} epochs: lambda_max of the whole Hessian, {ARCH} width {WIDTH} on the digits",
                matvec, start)


def crowded_top() -> None:
    """A diagonal operator of the same size whose top is crowded (1, 0.99, ..., 0.51, then
    a bulk in [0, 0.5]): where the methods differ (seed 004's C outliers near lambda_1)."""
    n = 701178
    d = torch.cat([1 - 0.01 * torch.arange(50.0), 0.5 * torch.rand(n - 50, generator=torch.Generator().manual_seed(1))])
    start = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(0)).float().mul_(2).sub_(1)
    compare("a synthetic crowded top (diagonal, same P)", lambda v: d * v, start)


def compare(label: str, matvec, start) -> None:
    """Products and seconds to the top residual 1e-3 of each method on one operator."""
    count = [0]

    def counted(v):
        count[0] += 1
        return matvec(v)

    began = time.perf_counter()
    matvec(start)
    per_product = time.perf_counter() - began

    began = time.perf_counter()
    both = lanczos(counted, start, steps=120, tol=TOL)
    both_seconds = time.perf_counter() - began
    reference = lanczos(matvec, start, steps=120)
    top_steps = top_residual_steps(reference)
    began = time.perf_counter()
    if top_steps:
        lanczos(matvec, start, steps=top_steps)
    top_seconds = time.perf_counter() - began if top_steps else float("nan")
    lam = float(reference.ritz_values[-1])

    residuals, v, began = [], start / start.norm(), time.perf_counter()
    power_seconds = None
    for i in range(300):
        w = matvec(v)
        theta = float(torch.dot(v, w))
        residuals.append(float((w - theta * v).norm()) / abs(theta))
        if residuals[-1] <= TOL and power_seconds is None:
            power_seconds = time.perf_counter() - began
            break
        v = w / w.norm()
    power_steps = len(residuals) if power_seconds is not None else None
    pyhessian = power_iteration(matvec, start, max_matvecs=300, rtol=1e-3)
    w = matvec(pyhessian.vector)
    theta = float(torch.dot(pyhessian.vector, w))
    pyhessian_residual = float((w - theta * pyhessian.vector).norm()) / abs(theta)

    from scipy.sparse.linalg import LinearOperator, eigsh

    count[0] = 0
    n = len(start)

    def scipy_matvec(v):
        return counted(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).reshape(-1)).double().numpy()

    began = time.perf_counter()
    value = eigsh(LinearOperator((n, n), matvec=scipy_matvec, dtype=np.float64), k=1, which="LA", tol=TOL,
                  v0=start.double().numpy())[0][0]
    scipy_seconds, scipy_steps = time.perf_counter() - began, count[0]

    top = reference.ritz_values.flip(0)[:3].tolist()
    print(f"\n{label} (P = {n}); top Ritz values {', '.join(f'{t:.4g}' for t in top)}; one product "
          f"{per_product * 1e3:.0f} ms")
    print(f"{'method':<48} {'products':>8} {'seconds':>8} {'x ours':>7}  rel. residual / error")
    rows = [
        ("Lanczos, top residual <= 1e-3", top_steps or ">120", top_seconds, "residual <= 1e-3"),
        ("Lanczos, both ends <= 1e-3 (top_eigenvalues)", both.matvecs, both_seconds,
         f"error {abs(float(both.ritz_values[-1]) - lam) / lam:.1e}"),
        ("power iteration to residual <= 1e-3", power_steps or ">300", power_seconds or float("nan"),
         "residual <= 1e-3" if power_steps else f"residual {residuals[-1]:.1e} after 300"),
        ("power iteration, PyHessian's rule (change < 1e-3)", pyhessian.matvecs, float("nan"),
         f"residual {pyhessian_residual:.1e}, error {abs(pyhessian.estimates[-1] - lam) / lam:.1e}"),
        ("scipy eigsh (ARPACK), which=LA, tol=1e-3", scipy_steps, scipy_seconds,
         f"error {abs(value - lam) / lam:.1e}"),
    ]
    for name, steps, secs, note in rows:
        ratio = steps / top_steps if isinstance(steps, int) and top_steps else float("nan")
        print(f"{name:<48} {steps!s:>8} {secs:>8.2f} {ratio:>7.1f}  {note}")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def slq_child(steps: int, mode: str) -> None:
    """In a fresh process: one SLQ run; prints seconds and the peak RSS growth during it."""
    import threading

    from workers.curvature import spectral_density

    model, _, x, y, optimizer = trained(ARCH, WIDTH)
    del optimizer
    before, peak, running = rss_mib(), [0.0], [True]

    def sample():
        while running[0]:
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    began = time.perf_counter()
    result = spectral_density(model, F.cross_entropy, x, y, steps=steps, reorthogonalize=mode,
                              generator=torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - began
    running[0] = False
    sampler.join()
    print(json.dumps({"seconds": seconds, "peak_mib": peak[0] - before, "matvecs": result.matvecs[0],
                      "numel": result.numel[0]}))


def slq_costs() -> None:
    print("\nSLQ, one run over the whole Hessian (each in a fresh process; growth of the resident memory)")
    print(f"{'steps':>5} {'reorth.':>7} {'products':>8} {'seconds':>8} {'s/product':>9} {'peak MiB':>9} "
          f"{'basis MiB':>9}")
    measured = {}
    for steps in (32, 64, 128):
        for mode in ("full", "none"):
            out = subprocess.run([sys.executable, "-m", "tests.benchmarks.bench_spectrum", "slq", str(steps), mode],
                                 capture_output=True, text=True, check=True)
            m = measured[(steps, mode)] = json.loads(out.stdout.strip().splitlines()[-1])
            basis = steps * m["numel"] * 4 / 2**20 if mode == "full" else 3 * m["numel"] * 4 / 2**20
            print(f"{steps:>5} {mode:>7} {m['matvecs']:>8} {m['seconds']:>8.2f} {m['seconds'] / m['matvecs']:>9.3f} "
                  f"{m['peak_mib']:>9.1f} {basis:>9.1f}")
    for steps in (32, 64, 128):
        full, none = measured[(steps, "full")], measured[(steps, "none")]
        print(f"m = {steps}: full / none seconds {full['seconds'] / none['seconds']:.2f}, "
              f"peak memory {full['peak_mib'] / max(none['peak_mib'], 1e-9):.1f}x")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if argv and argv[0] == "slq":
        slq_child(int(argv[1]), argv[2])
        return
    lambda_max_costs(1)
    lambda_max_costs(10)
    crowded_top()
    slq_costs()


if __name__ == "__main__":
    main()
