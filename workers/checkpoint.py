"""Checkpoints as plain dicts of tensors and numbers, safe to load.

A checkpoint holds the model, the optimizer, the step, every random state the run
uses, the list of committed data files, and the canonical JSON of the run's
content; it is read with ``torch.load(weights_only=True)``, which unpickles no
arbitrary objects, and refused when its content differs from the run's.
The store writes it atomically (``store.RunWriter.commit``).
"""

from __future__ import annotations

import io
import pickle
import random

import numpy as np
import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used for this run; the message says what to do."""


def to_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def from_bytes(data: bytes, *, content_json: str, where: str, store: str = "STORE") -> dict:
    """Load a checkpoint written by ``to_bytes`` and check it belongs to this run."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        raise CheckpointError(
            f"the checkpoint {where} cannot be read ({str(err).splitlines()[0]}); `sweep resume store={store}` "
            f"(or `sweep check store={store} repair=true`) sets it aside and restarts the run from step 0"
        ) from None
    if not isinstance(state, dict) or state.get("content") != content_json:
        raise CheckpointError(
            f"the checkpoint {where} was written by a different run config; refusing to resume from it. "
            "Delete it to restart this run from step 0, or run the config that wrote it."
        )
    return state


def content_of(data: bytes) -> str | None:
    """The canonical content JSON a checkpoint was written for; None when unreadable."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError):
        return None
    content = state.get("content") if isinstance(state, dict) else None
    return content if isinstance(content, str) else None


def global_rng_state() -> dict:
    """torch (CPU and CUDA), numpy and Python global random states, as tensors and lists.

    The worker draws nothing from them (every stream it uses is its own generator),
    but code it calls might, so they are saved and restored too.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
                  "cached": cached},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }


def restore_global_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
