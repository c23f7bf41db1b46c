"""Synthetic trajectories in the long format the analysis reads (tests and bench_analysis)."""

import numpy as np
import pyarrow as pa


def trajectories(*, configs=(("resnet18", "cifar10"),), clean=20, noisy=10, etas=(0.25, 0.4, 0.6), steps=117,
                 layers=("features", "head"), shift=0.0, shift_at=50, steps_per_epoch=3.9, seed=0,
                 drop=()) -> pa.Table:
    """i.i.d. N(0, 1) around a rising mean; noisy runs' last layer shifted by ``shift`` from
    snapshot ``shift_at``. ``drop``: (run_id, step) pairs left out."""
    rng = np.random.default_rng(seed)
    grid = np.arange(1, steps + 1) * 100
    n = steps * len(layers)
    parts = []
    for arch, dataset in configs:
        for eta, count in [(0.0, clean)] + [(e, noisy) for e in etas]:
            for s in range(count):
                values = np.linspace(10, 20, steps)[:, None] + rng.standard_normal((steps, len(layers)))
                if eta > 0:
                    values[shift_at:, -1] += shift
                parts.append(pa.table({  # rows by snapshot, then layer
                    "run_id": [f"{arch}-{dataset}-{eta}-{s}"] * n, "configuration": [f"{arch}-{dataset}"] * n,
                    "arch": [arch] * n, "dataset": [dataset] * n,
                    "eta": np.full(n, float(eta)), "seed": np.full(n, s, dtype=np.int64),
                    "step": np.repeat(grid, len(layers)), "epoch": np.repeat(grid / 100 / steps_per_epoch, len(layers)),
                    "layer": np.tile(np.asarray(layers, dtype=object), steps), "trace": values.ravel(),
                }))
    table = pa.concat_tables(parts)
    if drop:
        keep = [(r, s) not in drop for r, s in zip(table["run_id"].to_pylist(), table["step"].to_pylist())]
        table = table.filter(pa.array(keep))
    return table
