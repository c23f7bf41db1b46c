"""One stored run's model, looked at closely: the extreme eigenvalues and the spectral
density of its Hessian at its checkpoint (``sweep curvature``).

The store keeps each run's last checkpoint (the final step once a run is done), so that
is the step examined. The batch is the snapshot batch the run itself would draw at that
step (same generator, noisy labels, BatchNorm in eval mode), so a value printed here is
the one a monitored run logs there, up to the Lanczos start vectors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workers import checkpoint
from workers.curvature import SpectralDensity, TopEigen, spectral_density, top_eigenvalues
from workers.curvature.hvp import NETWORK
from workers.data import normalise, place
from workers.datasets import load_dataset
from workers.models import build_model
from workers.run_config import content_json, validate
from workers.seeds import generator
from workers.train import resolve_device, snapshot_images


@dataclass(frozen=True)
class Examined:
    run_id: str
    step: int
    epoch: float
    batch_size: int
    eigen: TopEigen
    density: SpectralDensity


def examine(store, run_id: str, *, layers: str = "head", network: bool = True, k: int = 3, max_matvecs: int = 64,
            tol: float = 1e-3, steps: int = 64, num_runs: int = 1, deflate: int = 0, batch_size: int | None = None,
            device: str = "cpu", seed: int = 0) -> Examined:
    """Eigenvalues and density of run ``run_id`` of ``store`` at its checkpoint, for
    ``layers`` (head, all or none) and the whole Hessian (``network``)."""
    record = store.read_record(run_id)
    if record is None:
        raise checkpoint.CheckpointError(f"no run {run_id} in {store.uri}; `sweep status store={store.uri}` lists "
                                         "the runs")
    saved = store.read_checkpoint(run_id)
    if saved is None:
        raise checkpoint.CheckpointError(f"run {run_id} has no checkpoint yet (it commits one every "
                                         "train.checkpoint_every epochs); examine it once it has")
    config = validate(json.loads(record["config"]))
    config["runtime"]["device"] = device
    state = checkpoint.from_bytes(saved, content_json=content_json(config), where=store.checkpoint_path(run_id),
                                  store=store.uri)
    where = resolve_device(device)
    images = load_dataset(config["dataset"], config["runtime"]["data_root"])
    noise_seed = config["seed"] if config["noise_seed"] is None else config["noise_seed"]
    data = place(images, eta=config["eta"], device=where,
                 noise_generator=generator("label-noise", config["dataset"]["name"], config["eta"], noise_seed))
    model, head = build_model(config["arch"], num_classes=data.num_classes, in_channels=images.in_channels)
    model = model.to(where)
    model.load_state_dict(state["model"])
    step = state["step"]
    size = batch_size or config["monitor"]["batch_size"]
    x, y = snapshot_images(data, seed=config["seed"], step=step, batch_size=size)
    x = normalise(x, data.mean, data.std)
    names = {"head": [head], "all": None, "none": []}[layers]
    if names is None:
        from workers.curvature import parameter_groups

        names = parameter_groups(model, config["monitor"]["groups"]).names
    blocks = ([NETWORK] if network else []) + names
    groups = config["monitor"]["groups"]
    eigen = top_eigenvalues(model, F.cross_entropy, x, y, k=k, layers=blocks, groups=groups, max_matvecs=max_matvecs,
                            tol=tol, generator=torch.Generator(where).manual_seed(seed))
    density = spectral_density(model, F.cross_entropy, x, y, steps=steps, num_runs=num_runs, layers=blocks,
                               deflate=deflate, groups=groups,
                               generator=torch.Generator(where).manual_seed(seed + 1))
    steps_per_epoch = data.num_train // config["train"]["batch_size"]
    return Examined(run_id, step, step / steps_per_epoch, size, eigen, density)


def table(examined: Examined) -> str:
    """The eigenvalues as a plain-text table."""
    e = examined.eigen
    lines = [f"run {examined.run_id} at step {examined.step} (epoch {examined.epoch:.2f}), snapshot batch of "
             f"{examined.batch_size}",
             f"{'block':<28} {'numel':>9} {'lambda_max':>12} {'lambda_min':>12} {'residual':>9} {'matvecs':>7} "
             f"converged  largest"]
    for i, name in enumerate(e.layers):
        residual = float(e.residuals[i].nan_to_num(0).max())
        largest = ", ".join(f"{v:.4g}" for v in e.largest[i].tolist())
        lines.append(f"{name:<28} {e.numel[i]:>9} {e.lambda_max[i]:>12.5g} {e.lambda_min[i]:>12.5g} "
                     f"{residual:>9.2g} {e.matvecs[i]:>7} {'yes' if e.converged[i] else 'no':<10} {largest}")
    return "\n".join(lines)


def plot(examined: Examined, path) -> None:
    """The spectral density of every examined block, log scale (../shared/seeds/004)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = examined.density
    fig, axes = plt.subplots(1, len(d.layers), figsize=(3.6 * len(d.layers), 3.2), squeeze=False)
    for i, (ax, name) in enumerate(zip(axes[0], d.layers)):
        t, phi = d.smoothed(i)
        ax.plot(t.numpy(), phi.clamp(min=float(phi.max()) * 1e-8).numpy(), lw=0.9)
        for value in d.outliers[i].tolist():
            ax.axvline(value, color="tab:red", lw=0.6, ls=":")
        ax.set_yscale("log")
        ax.set(xlabel="eigenvalue", title=f"{name} ({d.numel[i]} parameters)")
    axes[0][0].set_ylabel("density (log)")
    fig.suptitle(f"{examined.run_id}, step {examined.step}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
