"""The monitor's estimators side by side, per snapshot (``make bench``).

On the digits (batch 128, the snapshot batch) with ResNet-18 and VGG-11 at width 1/8,
after one epoch of training, for each estimator: seconds per snapshot (medians of
interleaved repetitions) against one training step, and the per-probe variance of
every layer. Then, per layer, the figure of merit 1 / (variance of the estimate x
seconds), as a ratio to the paper's estimator (median and range over layers):

- hessian K = 10: the paper's single-pass estimator (``layerwise_trace``);
- ggn K = 10, at the hessian's time, and with the fewest probes that are as precise as the
  hessian's K = 10 in every layer: the output-space estimator (``ggn_trace``), equal to the
  trace on these models (F1);
- the exact head (``head_curvature``, trace and Frobenius norm only).

Also the candidate speed-ups for the output-space backward: the K probes in one batched
backward (``is_grads_batched``) against the loop, and ``torch.compile`` of the model.

    python -m tests.benchmarks.bench_monitor
"""

from __future__ import annotations

import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from tests.benchmarks.bench_curvature import median_seconds as seconds
from workers.curvature import ggn_trace, head_curvature, layerwise_trace
from workers.curvature.groups import parameter_groups
from workers.curvature.hvp import evaluation_mode
from workers.data import normalise, place
from workers.datasets import load_digits
from workers.models import build_model
from workers.seeds import generator


def trained(arch: str, width: float, steps: int = 11):
    """A model after ``steps`` SGD steps on the digits, and a snapshot batch of 128."""
    torch.manual_seed(0)
    data = place(load_digits(), eta=0.0, noise_generator=generator("noise", 0), device=torch.device("cpu"))
    model, head = build_model({"name": arch, "width": width}, num_classes=10, in_channels=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    order = torch.randperm(data.num_train)
    for i in range(steps):
        index = order[i * 128 : (i + 1) * 128]
        x = normalise(data.train_images[index], data.mean, data.std)
        loss = F.cross_entropy(model(x), data.train_labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    index = torch.randperm(data.num_train)[:128]
    return model, head, normalise(data.train_images[index], data.mean, data.std), data.train_labels[index], optimizer


def compare(arch: str, width: float, reps: int = 5, variance_probes: int = 60) -> None:
    model, head, x, y, optimizer = trained(arch, width)
    g = torch.Generator()

    def step():
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    state = {k: v.clone() for k, v in model.state_dict().items()}
    ce = F.cross_entropy
    runs = {
        "hessian K=10": lambda: layerwise_trace(model, ce, x, y, num_probes=10, generator=g.manual_seed(1)),
        "ggn K=10": lambda: ggn_trace(model, ce, x, y, num_probes=10, generator=g.manual_seed(1)),
        "exact head": lambda: head_curvature(model, x, head=head, spectrum=False),
    }
    times = {name: [] for name in ["training step", *runs]}
    for _ in range(reps):  # interleaved, so a slow spell of the machine hits every estimator alike
        times["training step"].append(seconds(step, 1))
        model.load_state_dict(state)
        for name, fn in runs.items():
            times[name].append(seconds(fn, 1))
    t = {name: statistics.median(v) for name, v in times.items()}
    hess = layerwise_trace(model, F.cross_entropy, x, y, num_probes=variance_probes, generator=g.manual_seed(2))
    ggn = ggn_trace(model, F.cross_entropy, x, y, num_probes=variance_probes, generator=g.manual_seed(2))
    var_h, var_g = hess.probe_values.var(0), ggn.probe_values.var(0)
    k_equal = max(1, math.floor(10 * t["hessian K=10"] / t["ggn K=10"]))
    # figure of merit per layer: 1 / (variance of the K-probe mean x seconds)
    merit_h = 1 / (var_h / 10 * t["hessian K=10"])
    merit_g = 1 / (var_g / 10 * t["ggn K=10"])
    ratio = (merit_g / merit_h)[var_h > 0]
    groups = len(parameter_groups(model).names)
    print(f"\n{arch} width {width}, digits batch 128, {groups} layers (medians of {reps} interleaved repetitions)")
    for name, value in t.items():
        print(f"  {name:<14} {value * 1000:8.1f} ms = {value / t['training step']:5.2f} training steps")
    print(f"  ggn at the hessian's time: K = {k_equal}")
    # the fewest ggn probes whose mean is at least as precise as the hessian's K = 10 in every layer
    k_precise = max(1, math.ceil(10 * (var_g / var_h)[var_h > 0].max().item()))
    t_precise = seconds(lambda: ggn_trace(model, ce, x, y, num_probes=k_precise, generator=g.manual_seed(1)), reps)
    print(f"  ggn as precise as hessian K=10 in every layer: K = {k_precise}, {t_precise * 1000:.1f} ms = "
          f"{t_precise / t['training step']:.2f} training steps")
    print(f"  per-probe variance, ggn / hessian, over layers: median {(var_g / var_h).median():.3f}, "
          f"range {(var_g / var_h).min():.3f}-{(var_g / var_h).max():.3f}")
    print(f"  figure of merit 1/(variance x seconds), ggn / hessian: median {ratio.median():.1f}, "
          f"range {ratio.min():.1f}-{ratio.max():.1f}")
    i = hess.layers.index(head)
    exact = head_curvature(model, x, head=head, spectrum=False)
    print(f"  head {head}: exact trace {exact.trace:.5g}; hessian K={variance_probes} {hess.trace[i]:.5g} "
          f"+- {hess.stderr[i]:.2g}; ggn K={variance_probes} {ggn.trace[i]:.5g} +- {ggn.stderr[i]:.2g}")


def speedups(arch: str = "resnet18", width: float = 0.125, reps: int = 5) -> None:
    """The output-space probes: a loop of K backwards against one batched backward, and
    the same with torch.compile of the model; and the Hessian estimator under torch.compile."""
    model, _, x, y, _ = trained(arch, width)
    params = [p for p in model.parameters() if p.requires_grad]

    def loop(net, k=10):
        with evaluation_mode(model):
            logits = net(x)
            for _ in range(k):
                torch.autograd.grad(logits, params, grad_outputs=torch.randn_like(logits), retain_graph=True)

    def batched(net, k=10):
        with evaluation_mode(model):
            logits = net(x)
            torch.autograd.grad(logits, params, grad_outputs=torch.randn(k, *logits.shape), is_grads_batched=True)

    print(f"\noutput-space backward, {arch} width {width}, K = 10 (medians of {reps})")
    loop(model)
    batched(model)
    t_loop, t_batched = seconds(lambda: loop(model), reps), seconds(lambda: batched(model), reps)
    print(f"  loop of K backwards {t_loop * 1000:.1f} ms, one batched backward {t_batched * 1000:.1f} ms "
          f"(batched / loop {t_batched / t_loop:.2f})")
    try:
        compiled = torch.compile(model)
        start = time.perf_counter()
        loop(compiled)
        first = time.perf_counter() - start
        t_compiled = seconds(lambda: loop(compiled), reps)
        print(f"  torch.compile: first call {first:.1f} s, then {t_compiled * 1000:.1f} ms "
              f"(compiled / eager {t_compiled / t_loop:.2f})")
    except Exception as err:  # noqa: BLE001 - a backend missing on this machine is a result too
        print(f"  torch.compile failed here: {type(err).__name__}: {str(err).splitlines()[0][:160]}")
    ce, g = F.cross_entropy, torch.Generator()
    t_eager = seconds(lambda: layerwise_trace(model, ce, x, y, num_probes=10, generator=g.manual_seed(0)), reps)
    try:
        compiled = torch.compile(model)
        start = time.perf_counter()
        layerwise_trace(compiled, ce, x, y, num_probes=10, generator=g.manual_seed(0))
        first = time.perf_counter() - start
        t_compiled = seconds(lambda: layerwise_trace(compiled, ce, x, y, num_probes=10, generator=g.manual_seed(0)),
                             reps)
        print(f"  the Hessian estimator (K = 10, reverse HVPs): eager {t_eager * 1000:.1f} ms; torch.compile first "
              f"call {first:.1f} s, then {t_compiled * 1000:.1f} ms (compiled / eager {t_compiled / t_eager:.2f})")
    except Exception as err:  # noqa: BLE001 - double backward through a compiled graph may be unsupported
        print(f"  the Hessian estimator under torch.compile failed: {type(err).__name__}: "
              f"{str(err).splitlines()[0][:160]}")


def main() -> int:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}")
    for arch in ("resnet18", "vgg11"):
        compare(arch, 0.125)
    speedups()
    return 0


if __name__ == "__main__":
    sys.exit(main())
