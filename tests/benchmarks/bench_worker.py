"""The training worker, side by side (``make bench``).

1. Throughput: our pipeline (the training set as one uint8 tensor on the device, batched
   crop + flip + normalisation) against a conventional one (a Dataset with per-image
   transforms behind a DataLoader), on the same model and CIFAR-shaped data: images/s of
   the input pipeline alone, and of whole training steps.
2. Monitoring overhead in the real loop: `workers.train.train` on the digits with a snapshot
   every 100 steps, for each choice of `monitor.estimator` and `monitor.head`, against the
   same run with monitoring off.
3. Peak resident memory of one worker run (`sweep run-one` in a child process).

    python -m tests.benchmarks.bench_worker
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from store import Store
from sweep.config import compose_config, run_config
from workers.data import normalise, random_crop_flip
from workers.models import build_model
from workers.train import train

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


class PerImage(torch.utils.data.Dataset):
    """The conventional way: one image at a time, Python random crop and flip."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = F.pad(self.images[i], (4, 4, 4, 4))
        dy, dx = torch.randint(0, 9, (2,)).tolist()
        x = x[:, dy : dy + 32, dx : dx + 32]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        return (x.float() / 255 - MEAN[0]) / STD[0], self.labels[i]


def throughput(steps: int = 30, batch: int = 128, width: float = 0.125) -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (steps * batch, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (steps * batch,), generator=g)
    model, _ = build_model({"name": "resnet18", "width": width}, num_classes=10, in_channels=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    def ours(with_model):
        order = torch.randperm(len(labels), generator=g)
        for i in range(steps):
            index = order[i * batch : (i + 1) * batch]
            x = normalise(random_crop_flip(images[index], g, padding=4, flip=True), MEAN, STD)
            if with_model:
                step(x, labels[index])

    def conventional(with_model):
        loader = torch.utils.data.DataLoader(PerImage(images, labels), batch_size=batch, shuffle=True)
        for x, y in loader:
            if with_model:
                step(x, y)

    print(f"\n1. throughput, ResNet-18 width {width}, batch {batch}, {steps} steps of CIFAR-shaped data "
          "(medians of 3)")
    for with_model in (False, True):
        t_ours = statistics.median(_timed(lambda: ours(with_model)) for _ in range(3))
        t_conv = statistics.median(_timed(lambda: conventional(with_model)) for _ in range(3))
        n = steps * batch
        what = "training steps" if with_model else "input pipeline alone"
        print(f"  {what:<22} ours {n / t_ours:>9.0f} img/s   DataLoader + per-image {n / t_conv:>9.0f} img/s   "
              f"ratio {t_conv / t_ours:.2f}")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


CHOICES = {  # what the loop monitors at each snapshot: name -> overrides
    "off": ["monitor.enabled=false"],
    "hessian K=10 (paper)": [],
    "hessian K=10, exact head": ["monitor.head=exact"],
    "ggn K=10": ["monitor.estimator=ggn"],
    "ggn K=10, exact head": ["monitor.estimator=ggn", "monitor.head=exact"],
    "ggn K=4, exact head": ["monitor.estimator=ggn", "monitor.head=exact", "monitor.num_probes=4"],
}


def monitoring_overhead(width: float = 0.25, epochs: int = 40, reps: int = 3) -> None:
    overrides = [f"arch.width={width}", f"train.epochs={epochs}", "monitor.every=100", "runtime.device=cpu"]
    seconds = {name: [] for name in CHOICES}
    for _ in range(reps):  # the choices interleaved, so a slow spell of the machine hits all of them
        for name, extra in CHOICES.items():
            with tempfile.TemporaryDirectory() as folder:
                config = run_config(compose_config([*overrides, *extra]))
                metrics = train(config, Store.open(folder, create=True))["final_metrics"]
            seconds[name].append((metrics["run_seconds"], metrics["monitor_seconds"], metrics["steps"]))
    off = statistics.median(run for run, _, _ in seconds["off"])
    steps = seconds["off"][0][2]
    print(f"\n2. monitoring overhead in the real loop: digits, ResNet-18 width {width}, {steps:.0f} steps, "
          f"a snapshot every 100 steps ({int(steps) // 100} snapshots), medians of {reps} interleaved repetitions; "
          f"without monitoring {off:.1f} s")
    for name in list(CHOICES)[1:]:
        on = statistics.median(run for run, _, _ in seconds[name])
        monitor = statistics.median(m for _, m, _ in seconds[name])
        per_rep = [run / base[0] - 1 for (run, _, _), base in zip(seconds[name], seconds["off"])]
        print(f"  {name:<26} {on:6.1f} s (snapshots {monitor:5.2f} s): overhead {on / off - 1:6.1%}, "
              f"snapshots / rest {monitor / (on - monitor):6.1%} (per repetition: "
              f"{', '.join(f'{r:.1%}' for r in per_rep)})")


def worker_memory() -> None:
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sweep", "run-one", f"store={folder}", "arch.width=0.25",
                        "monitor.every=10", "runtime.device=cpu"], check=True, capture_output=True)
        wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\n3. one worker run (`sweep run-one arch.width=0.25 monitor.every=10`): {wall:.1f} s, "
          f"peak RSS {peak:.0f} MiB")


def main() -> int:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}")
    only = sys.argv[1:]  # e.g. `monitoring`: one part
    if not only or "throughput" in only:
        throughput()
    if not only or "monitoring" in only:
        monitoring_overhead()
    if not only or "memory" in only:
        worker_memory()
    return 0


if __name__ == "__main__":
    sys.exit(main())
