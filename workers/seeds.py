"""Independent random streams for one run, each seeded from (purpose, run seed, ...).

Training (initialisation, data order, augmentation), label noise and monitoring
(snapshot batches, probes) each draw from their own ``torch.Generator``, so turning
monitoring on or off, or changing K, cannot move the training trajectory, and a
snapshot at step t is reproducible on its own from (run seed, t).
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(purpose: str, *parts: object) -> int:
    """A 63-bit seed from a purpose and any parts, stable across processes and machines.

    >>> derive_seed("probes", 0, 100) == derive_seed("probes", 0, 100) != derive_seed("probes", 0, 200)
    True
    """
    text = ":".join([purpose, *map(repr, parts)])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def generator(purpose: str, *parts: object, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator on ``device`` seeded with ``derive_seed(purpose, *parts)``."""
    return torch.Generator(device=device).manual_seed(derive_seed(purpose, *parts))
