"""Dataset readers: CIFAR-10/100 from the standard "python version" archives, and
the handwritten digits that scikit-learn ships (the real small dataset for CPU runs).

Every reader returns an :class:`ImageData` of uint8 images (N, C, H, W) and int64
labels on the CPU; ``workers.data`` moves it to the training device once.

Safety: archives are checked against their published MD5 before use, extraction
refuses any member that would land outside the target folder, and the batch files
are read with a restricted unpickler that admits only what they contain (dicts,
lists, bytes, ints and numpy arrays), so a crafted file cannot run code.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class DatasetError(RuntimeError):
    """A dataset that is missing, corrupt or unsafe; the message says how to fix it."""


@dataclass(frozen=True)
class ImageData:
    """A classification dataset as uint8 tensors on the CPU.

    ``mean``/``std`` are per-channel normalisation constants on the [0, 1] scale;
    ``crop_padding`` and ``flip`` are the training augmentation that suits the images.
    """

    name: str
    train_images: torch.Tensor  # uint8 (N, C, H, W)
    train_labels: torch.Tensor  # int64 (N,)
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def in_channels(self) -> int:
        return self.train_images.shape[1]


@dataclass(frozen=True)
class Archive:
    """One published CIFAR archive: where it comes from and what is inside."""

    filename: str
    url: str
    md5: str  # published by the dataset's authors (https://www.cs.toronto.edu/~kriz/cifar.html)
    folder: str  # the folder the archive extracts to
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


ARCHIVES = {
    "cifar10": Archive(
        filename="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        label_key=b"labels",
        num_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    ),
    "cifar100": Archive(
        filename="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        label_key=b"fine_labels",
        num_classes=100,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    ),
}
DATASETS = ("cifar10", "cifar100", "digits")
# Training images of each dataset as published (digits: our fixed split below), so a
# config can be checked against its dataset before anything loads it.
TRAIN_SIZES = {"cifar10": 50_000, "cifar100": 50_000, "digits": 1438}


def _archive(name: str) -> Archive:
    if name not in ARCHIVES:
        downloadable = ", ".join(ARCHIVES)
        hint = " (digits ships inside scikit-learn and needs no download)" if name == "digits" else ""
        raise DatasetError(f"unknown downloadable dataset {name!r}{hint}; choose one of: {downloadable}")
    return ARCHIVES[name]


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_command(name: str, root: str | Path) -> str:
    return f"sweep data download dataset={name} root={root}"


def download(name: str, root: str | Path, *, url: str | None = None, md5: str | None = None) -> Path:
    """Fetch ``name``'s archive into ``root``, check its MD5, and extract it safely.

    The download goes to a hidden temporary file that is renamed only once its MD5
    matches, so an interrupted or corrupt download never looks like a good archive.
    An archive already present with the right MD5 is not fetched again.
    """
    spec = _archive(name)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / spec.filename
    expected = md5 or spec.md5
    if not (target.exists() and md5_of(target) == expected):
        source = url or spec.url
        fd, tmp = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".part", dir=root)
        try:
            digest = hashlib.md5()
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(source, timeout=60) as response:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != expected:
                raise DatasetError(
                    f"{source} downloaded with MD5 {digest.hexdigest()}, expected {expected}: the file is "
                    f"corrupt or truncated. Nothing was kept; run `{download_command(name, root)}` again."
                )
            os.replace(tmp, target)
        except OSError as err:
            raise DatasetError(f"could not download {source} into {root}: {err}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    safe_extract(target, root)
    return root / spec.folder


def verify(name: str, root: str | Path, *, md5: str | None = None) -> Path:
    """Re-check the archive's MD5 and that every batch file is present and readable."""
    spec = _archive(name)
    root = Path(root)
    archive = root / spec.filename
    if archive.exists():
        found = md5_of(archive)
        if found != (md5 or spec.md5):
            raise DatasetError(
                f"{archive} has MD5 {found}, expected {md5 or spec.md5}: it is corrupt. "
                f"Delete it and run `{download_command(name, root)}`."
            )
    load_cifar(name, root)
    return root / spec.folder


def safe_extract(archive: Path, root: Path) -> None:
    """Extract a tar archive into ``root``, refusing any member outside it.

    Absolute paths, ``..`` components, links and device files are all refused
    before anything is written (the archives we read contain regular files only).
    """
    root = Path(root).resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                destination = (root / member.name).resolve()
                if not (member.isfile() or member.isdir()) or not destination.is_relative_to(root):
                    raise DatasetError(
                        f"{archive} contains {member.name!r}, which would land outside {root} or is not a "
                        "regular file; refusing to extract it. Delete the archive and download it again "
                        "from the canonical URL."
                    )
            # Python's own "data" filter re-checks the same rules where it exists (3.10.12+).
            options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(root, members=members, **options)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DatasetError(
            f"{archive} is not a readable tar.gz archive ({err}); delete it and download it again."
        ) from None


class _BatchUnpickler(pickle.Unpickler):
    """Admits only the globals a CIFAR batch file needs: numpy arrays, and
    ``_codecs.encode``, which protocol-2 pickles written by Python 3 use for bytes."""

    ALLOWED = {
        ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch file")
        if module == "_codecs":
            return codecs.encode
        if module == "numpy":
            return getattr(np, name)
        core = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed numpy.core
        return core.multiarray._reconstruct


def read_batch(path: Path) -> dict:
    """One CIFAR batch file as a dict with bytes keys, through the restricted unpickler."""
    with open(path, "rb") as f:
        batch = _BatchUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    if not isinstance(batch, dict):
        raise pickle.UnpicklingError(f"expected a dict, found {type(batch).__name__}")
    return batch


def _read_split(spec: Archive, folder: Path, files: tuple[str, ...], name: str, root: Path):
    images, labels = [], []
    for file in files:
        path = folder / file
        _require(path, name, root)
        try:
            batch = read_batch(path)
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            label = np.asarray(batch[spec.label_key], dtype=np.int64)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(label) != len(data):
                raise ValueError(f"data of shape {data.shape} with {len(label)} labels")
            if label.size and (label.min() < 0 or label.max() >= spec.num_classes):
                raise ValueError(f"labels outside [0, {spec.num_classes})")
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as err:
            raise DatasetError(
                f"{name}: {path} is corrupt or truncated ({err}). Delete {folder} and run "
                f"`{download_command(name, root)}`."
            ) from None
        images.append(data.reshape(-1, 3, 32, 32))  # rows are R, G, B planes of 1024 bytes
        labels.append(label)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _require(path: Path, name: str, root: Path) -> None:
    if not path.exists():
        raise DatasetError(
            f"{name}: expected {path}, which does not exist. Run `{download_command(name, root)}` "
            "or set runtime.data_root= to the folder that holds the extracted archive."
        )


def check_present(name: str, root: str | Path | None) -> None:
    """Raise DatasetError unless every batch file of ``name`` is under ``root`` (cheap: no reading)."""
    if name == "digits":
        return
    spec = _archive(name)
    if root is None:
        raise DatasetError(f"{name} needs a data folder: pass runtime.data_root=DIR")
    for file in spec.train_files + spec.test_files:
        _require(Path(root) / spec.folder / file, name, Path(root))


def load_cifar(name: str, root: str | Path) -> ImageData:
    """CIFAR-10 or CIFAR-100 from the extracted python-version folder under ``root``."""
    spec = _archive(name)
    root = Path(root)
    folder = root / spec.folder
    train_x, train_y = _read_split(spec, folder, spec.train_files, name, root)
    test_x, test_y = _read_split(spec, folder, spec.test_files, name, root)
    return ImageData(name, train_x, train_y, test_x, test_y, spec.num_classes, spec.mean, spec.std)


# The digits split: every fifth image (index % 5 == 4) is a test image. Fixed and
# RNG-free, so it is the same on every machine and every library version; the
# 1797 images give 1438 train / 359 test, each with all ten classes.
DIGITS_TEST_EVERY = 5


def load_digits() -> ImageData:
    """The 1797 8x8 handwritten digits shipped inside scikit-learn (UCI optdigits test set).

    Pixel values 0..16 are rescaled to uint8 0..255; normalisation constants come
    from the training split.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    is_test = np.arange(len(labels)) % DIGITS_TEST_EVERY == DIGITS_TEST_EVERY - 1
    train = pixels[~is_test].astype(np.float64) / 255.0
    return ImageData(
        "digits",
        torch.from_numpy(pixels[~is_test]),
        torch.from_numpy(labels[~is_test]),
        torch.from_numpy(pixels[is_test]),
        torch.from_numpy(labels[is_test]),
        10,
        (float(train.mean()),),
        (float(train.std()),),
    )


def load_dataset(name: str, root: str | Path | None = None) -> ImageData:
    """The dataset called ``name`` (``cifar10``, ``cifar100`` or ``digits``)."""
    if name == "digits":
        return load_digits()
    if name not in ARCHIVES:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if root is None:
        raise DatasetError(f"{name} needs a data folder: pass runtime.data_root=DIR (fill it with "
                           f"`{download_command(name, 'DIR')}`)")
    return load_cifar(name, root)
