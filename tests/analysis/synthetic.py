"""Synthetic trajectories in the long format the analysis reads."""

import numpy as np
import pyarrow as pa


def trajectories(*, configs=(("resnet18", "cifar10"),), clean=20, noisy=10, etas=(0.25, 0.4, 0.6), steps=117,
                 layers=("features", "head"), shift=0.0, shift_at=50, steps_per_epoch=3.9, seed=0,
                 drop=()) -> pa.Table:
    """i.i.d. N(0, 1) around a rising mean; noisy runs' head shifted by ``shift`` from ``shift_at``.
    ``drop``: (run_id, step) pairs left out."""
    rng = np.random.default_rng(seed)
    rows = {c: [] for c in ("run_id", "arch", "dataset", "eta", "seed", "step", "epoch", "layer", "trace")}
    grid = np.arange(1, steps + 1) * 100
    for arch, dataset in configs:
        for eta, count in [(0.0, clean)] + [(e, noisy) for e in etas]:
            for s in range(count):
                values = np.linspace(10, 20, steps)[:, None] + rng.standard_normal((steps, len(layers)))
                if eta > 0:
                    values[shift_at:, -1] += shift
                run = f"{arch}-{dataset}-{eta}-{s}"
                for t, step in enumerate(grid):
                    if (run, int(step)) in drop:
                        continue
                    for j, layer in enumerate(layers):
                        for key, value in (("run_id", run), ("arch", arch), ("dataset", dataset), ("eta", eta),
                                           ("seed", s), ("step", int(step)), ("epoch", step / 100 / steps_per_epoch),
                                           ("layer", layer), ("trace", float(values[t, j]))):
                            rows[key].append(value)
    return pa.table(rows)
