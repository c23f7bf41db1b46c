"""One run, start to finish: ``train(run_config, store) -> summary`` (paper section 5.1).

Recipe: SGD with momentum 0.9, lr 0.1, batch 128, cosine decay over all steps,
weight decay 5e-4, no gradient clipping. Every ``monitor.every`` steps, after the
update, a layer-wise trace snapshot with K probes on a fresh training mini-batch
(noisy labels, no augmentation, BatchNorm in eval mode). Optionally, on the same batch and
each at its own cadence: the extreme eigenvalues of the chosen blocks (``monitor.eigen``,
rows ``lambda_max``/``lambda_min``), spectral densities after chosen epochs
(``monitor.density``, the ``spectra`` table), the Gauss-Newton split (``monitor.gauss_newton``,
rows ``split_*``) and every pair of layers' blocks (``monitor.interlayer``, the ``pairs`` table).
Snapshot batches, probes and Lanczos starts come from their own generators seeded from (run
seed, step, what), and the estimators restore the model's state, so monitoring never moves
the training trajectory.

Checkpoints (every ``train.checkpoint_every`` epochs and at the end) hold the
model, optimizer, step and all random states; the data rows gathered since the
last one are committed with it by the store's run writer (store/writer.py).
A run started again continues from its last checkpoint and reproduces, bit for bit
on the same device, what an uninterrupted run would have written.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from store import RunWriter, Store
from workers import checkpoint
from workers.curvature import (
    gauss_newton_split,
    ggn_trace,
    head_curvature,
    interlayer_blocks,
    layerwise_trace,
    parameter_groups,
    spectral_density,
    top_eigenvalues,
)
from workers.curvature.hvp import NETWORK
from workers.curvature.trace import probe_mean, probe_stderr
from workers.data import normalise, place, random_crop_flip
from workers.datasets import load_dataset
from workers.models import architecture, build_model
from workers.run_config import check_batch_sizes, content_json, identity, validate
from workers.seeds import derive_seed, generator


class RunFailed(RuntimeError):
    """The run itself failed (for example a non-finite loss); recorded in the store."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RunFailed(f"runtime.device={name} but this machine has no CUDA device; use device=auto or cpu")
    return torch.device(name)


def snapshot_images(data, *, seed: int, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training mini-batch (images not yet normalised, noisy labels) every quantity of
    step ``step`` is computed on, from its own generator: the same for any later reader."""
    device = data.train_labels.device
    batch_rng = generator("snapshot-batch", seed, step, device=device)
    index = torch.randperm(data.num_train, generator=batch_rng, device=device)[:batch_size]
    return data.train_images[index], data.train_labels[index]


def per_layer_rows(base: dict, layers: list[str], numel: list[int], quantity: str,
                   values: torch.Tensor) -> list[dict]:
    """Snapshot rows of one per-layer quantity from its per-probe values [K, L]: the mean,
    its standard error over probes, and the K values themselves."""
    mean, stderr, columns = probe_mean(values).tolist(), probe_stderr(values).tolist(), values.T.tolist()
    return [{**base, "layer": name, "layer_index": i, "numel": numel[i], "quantity": quantity, "value": mean[i],
             "stderr": stderr[i], "probe_values": columns[i]} for i, name in enumerate(layers)]


def eigen_rows(base: dict, result, index: dict[str, int]) -> list[dict]:
    """Snapshot rows of ``top_eigenvalues``: ``lambda_max``/``lambda_min`` per block (then
    ``lambda_max_2``... for k > 1), the Ritz residual in ``stderr`` (some eigenvalue lies
    within it), no probe values. ``index``: group name -> layer_index; (network) is -1."""
    rows = []
    for i, name in enumerate(result.layers):
        for end, values in (("max", result.largest[i]), ("min", result.smallest[i])):
            residuals = result.residuals[i, 0 if end == "max" else 1]
            for j, (value, residual) in enumerate(zip(values.tolist(), residuals.tolist())):
                rows.append({**base, "layer": name, "layer_index": index.get(name, -1), "numel": result.numel[i],
                             "quantity": f"lambda_{end}" + (f"_{j + 1}" if j else ""), "value": value,
                             "stderr": residual, "probe_values": []})
    return rows


def spectra_rows(base: dict, result, index: dict[str, int]) -> list[dict]:
    """``spectra`` rows of ``spectral_density``: one per block and Lanczos run, raw."""
    return [{**base, "layer": name, "layer_index": index.get(name, -1), "numel": result.numel[i],
             "lanczos_run": r, "nodes": result.nodes[r, i].tolist(), "weights": result.weights[r, i].tolist(),
             "lower": float(result.bounds[i, 0]), "upper": float(result.bounds[i, 1]),
             "outliers": [v for v in result.outliers[i].tolist() if math.isfinite(v)]}
            for i, name in enumerate(result.layers) for r in range(result.nodes.shape[0])]


def pair_rows(base: dict, result, index: dict[str, int]) -> list[dict]:
    """``pairs`` rows of ``interlayer_blocks``: one per ordered pair of layers."""
    mean, stderr = result.frob_sq.tolist(), result.stderr.tolist()
    return [{**base, "operator": result.operator, "design": result.design, "layer": a, "other": b,
             "layer_index": index[a], "other_index": index[b], "distance": int(result.distance[i, j]),
             "value": mean[i][j], "stderr": stderr[i][j],
             "probe_values": result.values[:, i, j].tolist()}
            for i, a in enumerate(result.layers) for j, b in enumerate(result.layers)]


def anisotropy_rows(rows: list[dict]) -> list[dict]:
    """Rows of kappa_l = ||H_ll||_F / |T_l| (paper eq. 7) from each layer's ``trace`` and
    ``block_frobenius_sq`` rows (exact ones included): a ratio of estimates, so no standard
    error and no probe values."""
    by = {(row["layer"], row["quantity"]): row for row in rows}
    made = []
    for (layer, quantity), row in by.items():
        frobenius = by.get((layer, "block_frobenius_sq"))
        if quantity == "trace" and frobenius is not None:
            kappa = math.sqrt(max(frobenius["value"], 0.0)) / abs(row["value"]) if row["value"] else math.inf
            made.append({**row, "quantity": "anisotropy", "value": kappa, "stderr": math.nan, "probe_values": []})
    return made


def exact_head(rows: list[dict], exact) -> list[dict]:
    """Snapshot rows with the head layer's trace (and squared Frobenius norm) replaced by
    their closed form (``head_curvature``): exact, so no standard error and no probe values.
    The head block equals its Gauss-Newton block for any model, so its row is ``trace``."""
    template = next(row for row in rows if row["layer"] == exact.head)
    values = {"trace": exact.trace, "block_frobenius_sq": exact.frobenius_sq}
    kept = [row for row in rows if not (row["layer"] == exact.head and row["quantity"] in (*values, "ggn_trace"))]
    return kept + [{**template, "quantity": quantity, "value": value, "stderr": 0.0, "probe_values": []}
                   for quantity, value in values.items()]


def train(run_config: dict, store: Store, *, on_step: Callable[[int], None] | None = None,
          node: str | None = None) -> dict:
    """Train one run into ``store``; return its summary. ``on_step(step)`` is called
    after every optimisation step (the tests inject crashes with it); ``node`` names the
    cluster node it runs on, for its record."""
    config = validate(run_config)  # a config that cannot run is refused before anything is written
    writer = RunWriter(store, identity(config))
    if (finished := writer.finished()) is not None:
        return _summary(finished)  # launching twice does nothing new
    with writer:  # from here on, any failure (set-up included) is recorded with its reason
        saved = writer.begin(host=socket.gethostname(), node=node)
        return _run(config, writer, saved, on_step)


def _run(config: dict, writer: RunWriter, saved: bytes | None, on_step) -> dict:
    arch, ds, tr, mon, rt = (config[k] for k in ("arch", "dataset", "train", "monitor", "runtime"))
    seed, rid = config["seed"], writer.run_id
    state = None
    if saved is not None:
        state = checkpoint.from_bytes(saved, content_json=content_json(config),
                                      where=writer.store.checkpoint_path(rid), store=writer.store.uri)
    device = resolve_device(rt["device"])
    if rt["threads"]:
        torch.set_num_threads(rt["threads"])
    images = load_dataset(ds, rt["data_root"])
    check_batch_sizes(config, len(images.train_labels))  # a user's dataset is sized only once loaded
    noise_seed = seed if config["noise_seed"] is None else config["noise_seed"]
    data = place(images, eta=config["eta"], device=device,
                 noise_generator=generator("label-noise", ds["name"], config["eta"], noise_seed))
    batch_size = tr["batch_size"]
    steps_per_epoch = data.num_train // batch_size  # the last incomplete batch is dropped
    total_steps = tr["epochs"] * steps_per_epoch

    with torch.random.fork_rng(devices=[]):  # initialisation from its own seed, global RNG untouched
        torch.manual_seed(derive_seed("init", seed))
        model, head = build_model(arch, num_classes=data.num_classes, in_channels=images.in_channels)
    cuda = device.type == "cuda"
    memory_format = torch.channels_last if (cuda and tr["channels_last"]) else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=tr["lr"], momentum=tr["momentum"],
                                weight_decay=tr["weight_decay"])
    order_rng = generator("data-order", seed, device=device)
    augment_rng = generator("augment", seed, device=device)
    step, seconds, committed = 0, {"run": 0.0, "monitor": 0.0}, []
    last_epoch_metrics: dict[str, float] = {}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        order_rng.set_state(state["rng"]["data_order"])
        augment_rng.set_state(state["rng"]["augment"])
        checkpoint.restore_global_rng_state(state["rng"]["global"])
        step, seconds, last_epoch_metrics = state["step"], state["seconds"], state["last_epoch_metrics"]
        committed = state["committed"]
    writer.start(total_steps=total_steps, device=str(device), step=step, committed=committed, head_layer=head)

    def lr_at(s: int) -> float:
        if tr["schedule"] == "constant":
            return tr["lr"]
        return 0.5 * tr["lr"] * (1 + math.cos(math.pi * s / total_steps))

    def inputs(x: torch.Tensor) -> torch.Tensor:
        return normalise(x, data.mean, data.std).contiguous(memory_format=memory_format)

    @torch.no_grad()
    def evaluate(x_all: torch.Tensor, y_all: torch.Tensor) -> tuple[float, float]:
        """Mean loss and accuracy in eval mode, without augmentation."""
        model.eval()
        loss, correct = torch.zeros((), device=device), torch.zeros((), device=device)
        for start in range(0, len(y_all), 1024):
            out = model(inputs(x_all[start : start + 1024]))
            y = y_all[start : start + 1024]
            loss += F.cross_entropy(out.float(), y, reduction="sum")
            correct += (out.argmax(1) == y).sum()
        model.train()
        n = max(len(y_all), 1)
        return loss.item() / n, correct.item() / n  # CPU-GPU sync point, once per evaluation

    f1 = architecture(arch).piecewise_linear  # H_ll = G_ll: the Gauss-Newton trace is the trace
    group_index = {name: i for i, name in enumerate(parameter_groups(model, mon["groups"]).names)}

    def snapshot_batch(at: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = snapshot_images(data, seed=seed, step=at, batch_size=mon["batch_size"])
        return inputs(x), y

    def blocks(spec: dict) -> list[str]:
        """The blocks a spectral option names: (network) and/or the head or every group."""
        chosen = {"head": [head], "all": list(group_index), "none": []}[spec["layers"]]
        return ([NETWORK] if spec["network"] else []) + chosen

    def due_after(at: int, last_of_epoch: bool) -> set[str]:
        """The optional quantities due after step ``at``, each at its own cadence."""
        if not mon["enabled"]:
            return set()
        due = {key for key in ("eigen", "gauss_newton", "interlayer")
               if mon[key]["every"] and at % mon[key]["every"] == 0}
        if last_of_epoch and at // steps_per_epoch in mon["density"]["epochs"]:
            due.add("density")
        return due

    def extras(at: int, due: set[str]) -> None:
        """Rows of the optional quantities due at step ``at``, each from its own generator."""
        x, y = snapshot_batch(at)
        base = {"run_id": rid, "step": at, "epoch": at / steps_per_epoch}
        if "gauss_newton" in due:
            split = gauss_newton_split(model, F.cross_entropy, x, y, num_probes=mon["gauss_newton"]["num_probes"],
                                       groups=mon["groups"],
                                       generator=generator("gauss-newton", seed, at, device=device))
            if split.nonfinite:
                raise RunFailed(f"non-finite curvature products at step {at} in layers {split.nonfinite}")
            writer.log("snapshots", [row for quantity, values in split.per_probe().items()
                                     for row in per_layer_rows(base, split.layers, split.numel, f"split_{quantity}",
                                                               values)])
        if "interlayer" in due:
            spec = mon["interlayer"]
            for operator in spec["operators"]:
                pairs = interlayer_blocks(model, F.cross_entropy, x, y, num_probes=spec["num_probes"],
                                          design=spec["design"], operator=operator, groups=mon["groups"],
                                          generator=generator("interlayer", seed, at, operator, device=device))
                if not pairs.values.isfinite().all():
                    raise RunFailed(f"non-finite curvature products at step {at} in the {operator} blocks")
                writer.log("pairs", pair_rows(base, pairs, group_index))
        if "eigen" in due:
            spec = mon["eigen"]
            result = top_eigenvalues(model, F.cross_entropy, x, y, k=spec["k"], layers=blocks(spec),
                                     groups=mon["groups"], max_matvecs=spec["max_matvecs"], tol=spec["tol"],
                                     generator=generator("eigen", seed, at, device=device))
            if result.nonfinite:
                raise RunFailed(f"non-finite curvature products at step {at} in blocks {result.nonfinite}")
            writer.log("snapshots", eigen_rows(base, result, group_index))
        if "density" in due:
            spec = mon["density"]
            result = spectral_density(model, F.cross_entropy, x, y, steps=spec["steps"], num_runs=spec["num_runs"],
                                      layers=blocks(spec), deflate=spec["deflate"], groups=mon["groups"],
                                      generator=generator("density", seed, at, device=device))
            if result.nonfinite:
                raise RunFailed(f"non-finite curvature products at step {at} in blocks {result.nonfinite}")
            writer.log("spectra", spectra_rows(base, result, group_index))

    def snapshot(at: int) -> list[dict]:
        """Per-layer rows at step ``at``, on its own batch and probes: one set per quantity."""
        x, y = snapshot_batch(at)
        probes = generator("probes", seed, at, device=device)
        if mon["estimator"] == "ggn":
            result = ggn_trace(model, F.cross_entropy, x, y, num_probes=mon["num_probes"], generator=probes,
                               groups=mon["groups"])
        else:
            result = layerwise_trace(model, F.cross_entropy, x, y, num_probes=mon["num_probes"], generator=probes,
                                     groups=mon["groups"], distribution=mon["distribution"], hvp=mon["hvp"],
                                     block_frobenius=mon["block_frobenius"])
        if result.nonfinite:
            raise RunFailed(f"non-finite curvature products at step {at} in layers {result.nonfinite}")
        quantities = result.per_probe()
        if f1 and "ggn_trace" in quantities:
            quantities = {"trace": quantities.pop("ggn_trace"), **quantities}
        base = {"run_id": rid, "step": at, "epoch": at / steps_per_epoch}
        rows = [row for quantity, values in quantities.items()
                for row in per_layer_rows(base, result.layers, result.numel, quantity, values)]
        if mon["head"] == "exact":
            rows = exact_head(rows, head_curvature(model, x, head=head, spectrum=False))
        return rows + anisotropy_rows(rows)

    def metric_rows(at: int, scope: str, values: dict[str, float]) -> list[dict]:
        return [{"run_id": rid, "step": at, "epoch": at / steps_per_epoch, "scope": scope, "name": k,
                 "value": float(v)} for k, v in values.items()]

    def checkpoint_bytes(committed: list[dict]) -> bytes:
        return checkpoint.to_bytes({
            "content": content_json(config), "step": step, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "committed": committed, "seconds": seconds,
            "last_epoch_metrics": last_epoch_metrics, "scheduler": {"kind": tr["schedule"], "step": step},
            "rng": {"data_order": order_rng.get_state(), "augment": augment_rng.get_state(),
                    "global": checkpoint.global_rng_state()},
        })

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (cuda and tr["bf16"]) else nullcontext()
    model.train()
    while step < total_steps:
        epoch_start = time.perf_counter()
        epoch_loss = torch.zeros((), device=device)
        epoch_correct = torch.zeros((), device=device)
        order = torch.randperm(data.num_train, generator=order_rng, device=device)
        for i in range(steps_per_epoch):
            index = order[i * batch_size : (i + 1) * batch_size]
            x = inputs(random_crop_flip(data.train_images[index], augment_rng,
                                        padding=ds["crop_padding"], flip=ds["flip"]))
            y = data.train_labels[index]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            with autocast:
                out = model(x)
                loss = F.cross_entropy(out.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            monitored = mon["enabled"] and (step + 1) % mon["every"] == 0
            due = due_after(step + 1, i + 1 == steps_per_epoch)
            if monitored:  # logged with the snapshot: the gradient of this update
                grad_norm = torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()])
                )
            optimizer.step()
            step += 1
            epoch_loss += loss.detach()
            epoch_correct += (out.argmax(1) == y).sum()
            if monitored:
                batch_loss = loss.item()  # CPU-GPU sync point, once per snapshot
                if not math.isfinite(batch_loss):
                    raise RunFailed(f"non-finite training loss {batch_loss} at step {step}")
                started = _synced_time(cuda)
                writer.log("snapshots", snapshot(step))
                seconds["monitor"] += _synced_time(cuda) - started
                writer.log("metrics", metric_rows(step, "snapshot", {
                    "lr": lr_at(step - 1), "batch_loss": batch_loss, "grad_norm": grad_norm.item()}))
            if due:
                started = _synced_time(cuda)
                extras(step, due)
                seconds["monitor"] += _synced_time(cuda) - started
            if on_step is not None:
                on_step(step)
            writer.heartbeat()
        epoch = step // steps_per_epoch
        train_loss = epoch_loss.item() / steps_per_epoch  # CPU-GPU sync point, once per epoch
        if not math.isfinite(train_loss):
            raise RunFailed(f"non-finite training loss in epoch {epoch} (mean {train_loss})")
        if epoch % tr["eval_every"] == 0 or step == total_steps:
            last_epoch_metrics = _epoch_metrics(
                evaluate, data, train_loss, epoch_correct.item() / (steps_per_epoch * batch_size)
            )
            writer.log("metrics", metric_rows(step, "epoch", last_epoch_metrics))
        seconds["run"] += time.perf_counter() - epoch_start
        if epoch % tr["checkpoint_every"] == 0 or step == total_steps:
            writer.commit(step, checkpoint=checkpoint_bytes)

    return _summary(writer.done({**last_epoch_metrics, "run_seconds": seconds["run"],
                                 "monitor_seconds": seconds["monitor"], "steps": float(step)}))


def _epoch_metrics(evaluate, data, train_loss: float, train_acc: float) -> dict[str, float]:
    """Train loss/accuracy on the noisy labels (running, augmented), clean test accuracy,
    and memorisation: the fraction of corrupted samples predicted as their noisy label."""
    values = {"train_loss": train_loss, "train_acc": train_acc}
    values["test_loss"], values["test_acc"] = evaluate(data.test_images, data.test_labels)
    if data.is_noisy.any():
        noisy = data.is_noisy.nonzero().squeeze(1)
        _, values["memorised"] = evaluate(data.train_images[noisy], data.train_labels[noisy])
    return values


def _synced_time(cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()  # time what the GPU did, not what was queued
    return time.perf_counter()


def _summary(record: dict) -> dict:
    return {key: record[key] for key in ("run_id", "status", "attempt", "step", "total_steps", "final_metrics")}
