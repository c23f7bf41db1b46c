"""One run, start to finish: ``train(run_config, store) -> summary`` (paper section 5.1).

Recipe: SGD with momentum 0.9, lr 0.1, batch 128, cosine decay over all steps,
weight decay 5e-4, no gradient clipping. Every ``monitor.every`` steps, after the
update, a layer-wise trace snapshot with K probes on a fresh training mini-batch
(noisy labels, no augmentation, BatchNorm in eval mode). Snapshot batches and probes
come from their own generators seeded from (run seed, step), and the estimator
restores the model's state, so monitoring never moves the training trajectory.

Checkpoints (every ``train.checkpoint_every`` epochs and at the end) hold the
model, optimizer, step and all random states; the data rows gathered since the
last one are written as chunks first and committed with it (see workers.store).
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

from workers import checkpoint
from workers.curvature import layerwise_trace
from workers.data import normalise, place, random_crop_flip
from workers.datasets import load_dataset
from workers.models import build_model
from workers.run_config import content_json, pending_record, run_id, validate
from workers.seeds import derive_seed, generator
from workers.store import Store, now

HEARTBEAT_SECONDS = 30.0  # besides every commit


class RunFailed(RuntimeError):
    """The run itself failed (for example a non-finite loss); recorded in the store."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RunFailed(f"runtime.device={name} but this machine has no CUDA device; use device=auto or cpu")
    return torch.device(name)


def train(run_config: dict, store: Store, *, on_step: Callable[[int], None] | None = None) -> dict:
    """Train one run into ``store``; return its summary. ``on_step(step)`` is called
    after every optimisation step (the tests inject crashes with it)."""
    config = validate(run_config)
    rid = run_id(config)
    record = store.read_record(rid)
    if record is not None and record["status"] == "done":
        return _summary(record)  # launching twice does nothing new

    arch, ds, tr, mon, rt = (config[k] for k in ("arch", "dataset", "train", "monitor", "runtime"))
    seed = config["seed"]
    saved = store.read_checkpoint(rid)
    state = None
    if saved is not None:
        state = checkpoint.from_bytes(saved, content_json=content_json(config), where=f"of run {rid} in {store.uri}")
    device = resolve_device(rt["device"])
    if rt["threads"]:
        torch.set_num_threads(rt["threads"])
    images = load_dataset(ds["name"], rt["data_root"])
    noise_seed = seed if config["noise_seed"] is None else config["noise_seed"]
    data = place(
        images,
        eta=config["eta"],
        noise_generator=generator("label-noise", ds["name"], config["eta"], noise_seed),
        device=device,
    )

    batch_size = tr["batch_size"]
    steps_per_epoch = data.num_train // batch_size  # the last incomplete batch is dropped
    if steps_per_epoch == 0:
        raise RunFailed(f"train.batch_size={batch_size} exceeds the {data.num_train} training images")
    total_steps = tr["epochs"] * steps_per_epoch
    attempt = (record["attempt"] if record else 0) + 1
    record = {
        **pending_record(config), "status": "running", "attempt": attempt, "host": socket.gethostname(),
        "device": str(device), "started_at": now(), "heartbeat_at": now(), "total_steps": total_steps,
    }

    with torch.random.fork_rng(devices=[]):  # initialisation from its own seed, global RNG untouched
        torch.manual_seed(derive_seed("init", seed))
        model = build_model(arch["name"], num_classes=data.num_classes, in_channels=images.in_channels,
                            width=arch["width"])
    cuda = device.type == "cuda"
    memory_format = torch.channels_last if (cuda and tr["channels_last"]) else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=tr["lr"], momentum=tr["momentum"],
                                weight_decay=tr["weight_decay"])
    order_rng = generator("data-order", seed, device=device)
    augment_rng = generator("augment", seed, device=device)
    step, seconds = 0, {"run": 0.0, "monitor": 0.0}
    last_epoch_metrics: dict[str, float] = {}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        order_rng.set_state(state["rng"]["data_order"])
        augment_rng.set_state(state["rng"]["augment"])
        checkpoint.restore_global_rng_state(state["rng"]["global"])
        step, seconds, last_epoch_metrics = state["step"], state["seconds"], state["last_epoch_metrics"]
        record["step"], record["committed"] = step, list(state["committed"])
    store.write_record(record)

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

    def snapshot(at: int) -> list[dict]:
        """Per-layer trace rows at step ``at``, on its own batch and probes."""
        batch_rng = generator("snapshot-batch", seed, at, device=device)
        index = torch.randperm(data.num_train, generator=batch_rng, device=device)[: mon["batch_size"]]
        result = layerwise_trace(
            model, F.cross_entropy, inputs(data.train_images[index]), data.train_labels[index],
            num_probes=mon["num_probes"], generator=generator("probes", seed, at, device=device),
            groups=mon["groups"], distribution=mon["distribution"], hvp=mon["hvp"],
            block_frobenius=mon["block_frobenius"],
        )
        if result.nonfinite:
            raise RunFailed(f"non-finite Hessian-vector product at step {at} in layers {result.nonfinite}")
        base = {"run_id": rid, "arch": arch["name"], "dataset": ds["name"], "eta": float(config["eta"]),
                "seed": seed, "step": at, "epoch": at / steps_per_epoch}
        traces, errors = result.trace.tolist(), result.stderr.tolist()
        return [
            {**base, "layer": name, "layer_index": i, "numel": result.numel[i], "trace": traces[i],
             "stderr": errors[i], "probe_values": result.probe_values[:, i].tolist()}
            for i, name in enumerate(result.layers)
        ]

    def metric_rows(at: int, scope: str, values: dict[str, float]) -> list[dict]:
        return [{"run_id": rid, "step": at, "epoch": at / steps_per_epoch, "scope": scope, "name": k,
                 "value": float(v)} for k, v in values.items()]

    def commit(snapshot_rows: list[dict], metrics: list[dict], chunk: int) -> None:
        """Write the chunks, then the checkpoint that lists them, then the record: the commit."""
        for kind, rows in (("snapshots", snapshot_rows), ("metrics", metrics)):
            if rows:
                record["committed"].append(store.write_chunk(rid, kind, rows, attempt=attempt, chunk=chunk))
        store.write_checkpoint(rid, checkpoint.to_bytes({
            "content": content_json(config), "step": step, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "committed": list(record["committed"]), "seconds": seconds,
            "last_epoch_metrics": last_epoch_metrics, "scheduler": {"kind": tr["schedule"], "step": step},
            "rng": {"data_order": order_rng.get_state(), "augment": augment_rng.get_state(),
                    "global": checkpoint.global_rng_state()},
        }))
        record.update(step=step, heartbeat_at=now())
        store.write_record(record)

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (cuda and tr["bf16"]) else nullcontext()
    snapshot_rows: list[dict] = []
    metrics: list[dict] = []
    chunk, beat = 0, time.monotonic()
    try:
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
                    snapshot_rows += snapshot(step)
                    seconds["monitor"] += _synced_time(cuda) - started
                    metrics += metric_rows(step, "snapshot", {"lr": lr_at(step - 1), "batch_loss": batch_loss,
                                                              "grad_norm": grad_norm.item()})
                if on_step is not None:
                    on_step(step)
                if time.monotonic() - beat > HEARTBEAT_SECONDS:  # `sweep status` spots stuck runs by this
                    record["heartbeat_at"], beat = now(), time.monotonic()
                    store.write_record(record)
            epoch = step // steps_per_epoch
            train_loss = epoch_loss.item() / steps_per_epoch  # CPU-GPU sync point, once per epoch
            if not math.isfinite(train_loss):
                raise RunFailed(f"non-finite training loss in epoch {epoch} (mean {train_loss})")
            if epoch % tr["eval_every"] == 0 or step == total_steps:
                last_epoch_metrics = _epoch_metrics(
                    evaluate, data, train_loss, epoch_correct.item() / (steps_per_epoch * batch_size)
                )
                metrics += metric_rows(step, "epoch", last_epoch_metrics)
            seconds["run"] += time.perf_counter() - epoch_start
            if epoch % tr["checkpoint_every"] == 0 or step == total_steps:
                commit(snapshot_rows, metrics, chunk)
                snapshot_rows, metrics, chunk = [], [], chunk + 1
    except Exception as err:
        record.update(status="failed", ended_at=now(), error=f"{type(err).__name__}: {err}")
        store.write_record(record)  # keeps the committed list: what was committed stays readable
        raise

    record.update(
        status="done", ended_at=now(), heartbeat_at=now(),
        final_metrics={**last_epoch_metrics, "run_seconds": seconds["run"],
                       "monitor_seconds": seconds["monitor"], "steps": float(step)},
    )
    store.write_record(record)  # written after all the data: the completion marker
    return _summary(record)


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
