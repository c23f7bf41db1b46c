import hashlib
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from tests.workers import cifar_archives
from workers import datasets
from workers.datasets import DatasetError


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_download_over_http_then_load_gives_the_pixels_in_chw_order(http_root, tmp_path, name):
    served, base = http_root
    path, md5, arrays = cifar_archives.build(name, served)
    root = tmp_path / "data"
    datasets.download(name, root, url=f"{base}/{path.name}", md5=md5)
    data = datasets.load_dataset(name, root)
    spec = cifar_archives.LAYOUT[name]
    train = [arrays[f] for f in spec[2]]
    assert data.train_images.shape == (16 * len(train), 3, 32, 32) and data.train_images.dtype == torch.uint8
    first, labels = train[0]
    # pixel (c, y, x) of image i is byte c*1024 + y*32 + x of row i
    assert int(data.train_images[3, 2, 5, 7]) == int(first[3, 2 * 1024 + 5 * 32 + 7])
    assert data.train_labels[:16].tolist() == labels
    assert data.test_labels.tolist() == arrays[spec[3][0]][1]
    assert data.num_classes == spec[5]
    datasets.verify(name, root, md5=md5)  # re-checks cleanly
    # a second download finds the good archive and does not fetch it again
    (served / path.name).unlink()
    datasets.download(name, root, url=f"{base}/{path.name}", md5=md5)


def test_md5_mismatch_keeps_nothing(http_root, tmp_path):
    served, base = http_root
    path, _, _ = cifar_archives.build("cifar10", served)
    root = tmp_path / "data"
    with pytest.raises(DatasetError, match="MD5 .* expected 0{32}.*sweep data download dataset=cifar10"):
        datasets.download("cifar10", root, url=f"{base}/{path.name}", md5="0" * 32)
    assert os.listdir(root) == []


def test_truncated_download_fails_its_md5(http_root, tmp_path):
    served, base = http_root
    path, md5, _ = cifar_archives.build("cifar10", served)
    path.write_bytes(path.read_bytes()[:1000])  # the server now sends a truncated file
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        datasets.download("cifar10", tmp_path / "data", url=f"{base}/{path.name}", md5=md5)


def test_truncated_archive_on_disk_is_refused(tmp_path):
    path, _, _ = cifar_archives.build("cifar10", tmp_path)
    path.write_bytes(path.read_bytes()[:1000])
    md5 = hashlib.md5(path.read_bytes()).hexdigest()  # a user-given MD5 that matches the bad file
    with pytest.raises(DatasetError, match="not a readable tar.gz"):
        datasets.download("cifar10", tmp_path, md5=md5)


def test_truncated_batch_file_names_the_file_and_the_fix(tmp_path):
    path, md5, _ = cifar_archives.build("cifar10", tmp_path)
    datasets.download("cifar10", tmp_path, md5=md5)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(DatasetError, match="data_batch_3 is corrupt or truncated.*sweep data download"):
        datasets.load_dataset("cifar10", tmp_path)


def test_verify_catches_an_altered_archive(tmp_path):
    path, md5, _ = cifar_archives.build("cifar10", tmp_path)
    datasets.download("cifar10", tmp_path, md5=md5)
    with path.open("ab") as f:
        f.write(b"x")
    with pytest.raises(DatasetError, match="corrupt. Delete it"):
        datasets.verify("cifar10", tmp_path, md5=md5)


@pytest.mark.parametrize("member", ["../escaped", "/tmp/absolute-escape", "cifar-10-batches-py/../../escaped"])
def test_extraction_refuses_members_outside_the_target(tmp_path, member):
    root = tmp_path / "data"
    root.mkdir()
    path, md5, _ = cifar_archives.build("cifar10", root, extra={member: b"owned"})
    with pytest.raises(DatasetError, match="outside"):
        datasets.download("cifar10", root, md5=md5)
    assert not (tmp_path / "escaped").exists() and not os.path.exists("/tmp/absolute-escape")
    assert not (root / "cifar-10-batches-py").exists()  # refused before anything was written


def test_extraction_refuses_links(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        link = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(DatasetError, match="not a regular file"):
        datasets.download("cifar10", tmp_path, md5=hashlib.md5(path.read_bytes()).hexdigest())


def test_batch_reader_never_runs_pickled_code(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}, protocol=2))
    with pytest.raises(DatasetError, match="posix.system is not allowed|os.system is not allowed"):
        datasets.load_dataset("cifar10", tmp_path)
    assert not marker.exists()


def test_missing_dataset_names_the_path_and_the_download_command(tmp_path):
    with pytest.raises(DatasetError, match=r"cifar-100-python/train, which does not exist.*dataset=cifar100"):
        datasets.load_dataset("cifar100", tmp_path)
    with pytest.raises(DatasetError, match="dataset.name='svhn' is not allowed"):
        datasets.load_dataset("svhn", tmp_path)


def test_digits_split_is_fixed_and_complete():
    a, b = datasets.load_digits(), datasets.load_digits()
    assert a.train_images.shape == (1438, 1, 8, 8) and a.test_images.shape == (359, 1, 8, 8)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)
    assert int(a.train_images.max()) == 255 and a.train_images.dtype == torch.uint8
    assert set(a.train_labels.tolist()) == set(a.test_labels.tolist()) == set(range(10))
    from sklearn.datasets import load_digits

    raw = load_digits()
    assert int(a.test_labels[0]) == int(raw.target[4])  # every fifth image is a test image
    x = a.train_images.double() / 255
    assert np.isclose(a.mean[0], float(x.mean())) and np.isclose(a.std[0], float(x.std(correction=0)))


# A user's loaders, reached by _target_ like any module on the import path.
def small(*, n=20, classes=3, shape=(1, 4, 4), dtype="uint8", as_image_data=False):
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n, *shape)).astype(dtype),
        "train_labels": np.arange(n) % classes,
        "test_images": rng.integers(0, 256, (5, *shape)).astype(dtype),
        "test_labels": np.arange(5) % classes,
    }
    return datasets.image_data(arrays, name="small", where="test") if as_image_data else arrays


def test_a_target_loader_gives_checked_image_data_with_its_statistics():
    config = {"name": "small", "_target_": f"{__name__}.small", "n": 30, "crop_padding": 0, "flip": False}
    entry = datasets.dataset(config)
    assert (entry.train_size, entry.needs_root) == (None, False)
    data = datasets.load_dataset(config)
    assert (data.num_classes, data.in_channels, len(data.train_labels)) == (3, 1, 30)
    pixels = data.train_images.double() / 255
    assert data.mean == pytest.approx([pixels.mean().item()]) and data.std == pytest.approx([pixels.std().item()])
    again = datasets.load_dataset({**config, "as_image_data": True})  # an ImageData is accepted as it is
    assert torch.equal(again.train_images, data.train_images) and again.mean == data.mean


@pytest.mark.parametrize("options,message", [
    ({"shape": (4, 4)}, r"train_images has dtype torch.uint8 and shape \(20, 4, 4\); it must be uint8 images of "
                        r"shape \(N, C, H, W\)"),
    ({"dtype": "float32"}, "train_images has dtype torch.float32"),
    ({"classes": 1}, r"labels span \[0, 0\] with num_classes=1"),
    ({"nn": 3}, "dataset.nn is not a keyword argument of small"),
])
def test_a_bad_target_dataset_is_one_clear_message(options, message):
    with pytest.raises(DatasetError if "nn" not in options else ValueError, match=message):
        datasets.load_dataset({"name": "small", "_target_": f"{__name__}.small", **options})


def test_a_loader_that_returns_something_else_is_named():
    with pytest.raises(DatasetError, match="returned a list; it must return an ImageData or a dict with train_images"):
        datasets.image_data([1, 2], name="x", where="dataset._target_=m.f")
