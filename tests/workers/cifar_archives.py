"""Tiny archives in the real CIFAR "python version" format, with random pixels.

Each batch file is a protocol-2 pickle of a dict with bytes keys and a uint8 numpy
array of shape (n, 3072), rows being the R, G and B planes of 1024 bytes each, as
in the published archives.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

LAYOUT = {
    "cifar10": ("cifar-10-python.tar.gz", "cifar-10-batches-py",
                [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
    "cifar100": ("cifar-100-python.tar.gz", "cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}


def batch_bytes(data: np.ndarray, labels: list[int], label_key: bytes) -> bytes:
    batch = {b"batch_label": b"tiny batch", label_key: labels, b"data": data,
             b"filenames": [b"img_%d.png" % i for i in range(len(labels))]}
    return pickle.dumps(batch, protocol=2)


def build(name: str, folder: Path, *, per_file: int = 16, seed: int = 0, extra: dict | None = None):
    """Write ``name``'s tiny archive into ``folder``; return (path, md5, arrays by file)."""
    filename, inner, train, test, key, classes = LAYOUT[name]
    rng = np.random.default_rng(seed)
    arrays = {}
    path = Path(folder) / filename
    with tarfile.open(path, "w:gz") as tar:
        for file in train + test:
            data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
            labels = rng.integers(0, classes, per_file).tolist()
            arrays[file] = (data, labels)
            _add(tar, f"{inner}/{file}", batch_bytes(data, labels, key))
        for member, payload in (extra or {}).items():
            _add(tar, member, payload)
    return path, hashlib.md5(path.read_bytes()).hexdigest(), arrays


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))
