"""Dataset readers: CIFAR-10/100 from the standard "python version" archives, and
the handwritten digits that scikit-learn ships (the real small dataset for CPU runs).
A dataset config chooses one by ``name`` (``DATASETS``), or names a user's own loader
with ``_target_: package.module.loader``, whose result ``image_data`` checks.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from workers.targets import check_keywords, import_target


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


def _archive(name: str) -> Archive:
    if name not in ARCHIVES:
        downloadable = ", ".join(ARCHIVES)
        raise DatasetError(f"{name!r} is not a downloadable dataset (digits ships inside scikit-learn and needs "
                           f"none); choose one of: {downloadable}")
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


@dataclass(frozen=True)
class Dataset:
    """Everything about one choice of dataset: how to load it (from the data folder, or
    None), what it holds, whether it needs a folder, and the cheap check that its files
    are there. A config can be checked against it before anything loads it."""

    load: Callable[[Path | None], ImageData]
    train_size: int | None  # training images; None (a user's loader): known only once loaded
    num_classes: int | None
    in_channels: int | None
    needs_root: bool
    present: Callable[[Path], None] = lambda root: None  # raises DatasetError naming a missing file


def _cifar(name: str) -> Dataset:
    spec = ARCHIVES[name]

    def present(root: Path) -> None:
        for file in spec.train_files + spec.test_files:
            _require(Path(root) / spec.folder / file, name, Path(root))

    return Dataset(lambda root: load_cifar(name, root), 50_000, spec.num_classes, 3, needs_root=True, present=present)


# The built-in choices, by ``dataset.name``. ``dataset._target_: package.module.loader``
# makes a user's own entry of the same kind (``dataset`` below).
DATASETS: dict[str, Dataset] = {
    "cifar10": _cifar("cifar10"),
    "cifar100": _cifar("cifar100"),
    "digits": Dataset(lambda root: load_digits(), 1438, 10, 1, needs_root=False),  # our fixed split, below
}
RESERVED = ("name", "_target_", "crop_padding", "flip")  # dataset keys that are not keyword arguments of a loader


def dataset(config: dict | str) -> Dataset:
    """The entry a dataset config (or a built-in's name) chooses: a built-in by name, or its
    ``_target_`` (called with the config's other keys; the result is checked by ``image_data``)."""
    config = _as_config(config)
    if "_target_" not in config:
        if config.get("name") not in DATASETS:
            raise DatasetError(f"dataset.name={config.get('name')!r} is not allowed: it must be one of "
                               f"{', '.join(DATASETS)}, or give dataset._target_=package.module.loader")
        return DATASETS[config["name"]]
    target = config["_target_"]
    loader = import_target(target, where="dataset._target_")
    keywords = {key: value for key, value in config.items() if key not in RESERVED}
    check_keywords(loader, keywords, where="dataset")

    def load(root) -> ImageData:
        try:
            returned = loader(**keywords)
        except Exception as err:  # the user's loader: its own error, said in one line
            raise DatasetError(f"dataset._target_={target} failed: {type(err).__name__}: {err}") from None
        return image_data(returned, name=config["name"], where=f"dataset._target_={target}")

    return Dataset(load, None, None, None, needs_root=False)


def _as_config(config: dict | str) -> dict:
    return {"name": config} if isinstance(config, str) else config


def load_dataset(config: dict | str, root: str | Path | None = None) -> ImageData:
    """The dataset a dataset config (or a built-in's name) describes, from the data folder
    ``root`` when it needs one."""
    config = _as_config(config)
    entry = dataset(config)
    if entry.needs_root and root is None:
        raise DatasetError(f"{config['name']} needs a data folder: pass runtime.data_root=DIR (fill it with "
                           f"`{download_command(config['name'], 'DIR')}`)")
    return entry.load(None if root is None else Path(root))


def check_present(config: dict | str, root: str | Path | None) -> None:
    """Raise DatasetError unless the dataset's files are under ``root`` (cheap: no reading)."""
    config = _as_config(config)
    entry = dataset(config)
    if entry.needs_root:
        if root is None:
            raise DatasetError(f"{config['name']} needs a data folder: pass runtime.data_root=DIR")
        entry.present(Path(root))


def image_data(returned, *, name: str, where: str) -> ImageData:
    """What a user's loader returned, checked and made an ImageData: either an ImageData,
    or a mapping with ``train_images``, ``train_labels``, ``test_images``, ``test_labels``
    (numpy arrays or tensors: uint8 images (N, C, H, W), integer labels (N,)) and
    optionally ``num_classes`` (default: the largest label + 1), ``mean`` and ``std``
    (per channel on the [0, 1] scale; default: those of the training images)."""
    if isinstance(returned, ImageData):
        returned = {key: getattr(returned, key) for key in
                    ("train_images", "train_labels", "test_images", "test_labels", "num_classes", "mean", "std")}
    keys = ("train_images", "train_labels", "test_images", "test_labels")
    if not isinstance(returned, dict) or any(key not in returned for key in keys):
        raise DatasetError(f"{where} returned a {type(returned).__name__}; it must return an ImageData or a dict "
                           f"with {', '.join(keys)} (and optionally num_classes, mean, std)")
    arrays = {}
    for key in keys:
        try:
            arrays[key] = torch.as_tensor(np.asarray(returned[key])).cpu()
        except (TypeError, ValueError, RuntimeError) as err:
            raise DatasetError(f"{where}: {key} is not an array ({err})") from None
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DatasetError(f"{where}: {split}_images has dtype {images.dtype} and shape {tuple(images.shape)}; "
                               "it must be uint8 images of shape (N, C, H, W), pixel values 0..255")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.shape != images.shape[:1]:
            raise DatasetError(f"{where}: {split}_labels has dtype {labels.dtype} and shape {tuple(labels.shape)}; "
                               f"it must be integer class indices of shape ({images.shape[0]},), one per image")
        if images.shape[0] == 0:
            raise DatasetError(f"{where}: {split}_images is empty; both splits need at least one image")
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise DatasetError(f"{where}: train images are {tuple(arrays['train_images'].shape[1:])} and test images "
                           f"{tuple(arrays['test_images'].shape[1:])}; both must be (C, H, W) alike")
    labels = torch.cat([arrays["train_labels"], arrays["test_labels"]]).long()
    num_classes = returned.get("num_classes") or int(labels.max()) + 1
    if not isinstance(num_classes, int) or num_classes < 2 or labels.min() < 0 or labels.max() >= num_classes:
        raise DatasetError(f"{where}: labels span [{int(labels.min())}, {int(labels.max())}] with num_classes="
                           f"{num_classes}; labels must lie in [0, num_classes) and there must be 2 classes or more")
    train = arrays["train_images"].double() / 255.0
    channels = train.shape[1]
    mean = returned.get("mean") or tuple(train.mean(dim=(0, 2, 3)).tolist())
    std = returned.get("std") or tuple(train.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist())
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise DatasetError(f"{where}: mean and std must give one value per channel ({channels}), std > 0")
    return ImageData(name, arrays["train_images"].contiguous(), arrays["train_labels"].long(),
                     arrays["test_images"].contiguous(), arrays["test_labels"].long(), num_classes,
                     tuple(float(m) for m in mean), tuple(float(s) for s in std))
