import pytest
import torch
from scipy import stats

from workers.data import normalise, place, random_crop_flip, symmetric_label_noise
from workers.datasets import load_digits


def _labels(n=10_000, classes=10, seed=0):
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.40, 0.60])
def test_exactly_round_rate_n_labels_change(rate):
    labels = _labels(n=1001)
    noisy, mask = symmetric_label_noise(labels, rate, 10, torch.Generator().manual_seed(1))
    assert int(mask.sum()) == int(rate * 1001 + 0.5)
    assert torch.equal(mask, noisy != labels)  # every chosen label changes, nothing else does


def test_replacement_is_uniform_over_the_other_classes():
    # For a true class c, each of the 9 other classes is equally likely. A chi-square
    # test on the (true, noisy) table of changed labels; 9 x 9 cells with ~60 counts.
    labels = _labels(n=20_000)
    noisy, mask = symmetric_label_noise(labels, 0.25, 10, torch.Generator().manual_seed(2))
    table = torch.zeros(10, 10, dtype=torch.long)
    table.index_put_((labels[mask], noisy[mask]), torch.ones(int(mask.sum()), dtype=torch.long), accumulate=True)
    for c in range(10):
        others = torch.cat([table[c, :c], table[c, c + 1:]]).numpy()
        assert stats.chisquare(others).pvalue > 1e-4
    # and which labels are chosen does not depend on the class: binomial per class
    for c in range(10):
        k, n = int(mask[labels == c].sum()), int((labels == c).sum())
        assert stats.binomtest(k, n, 0.25).pvalue > 1e-4


def test_deterministic_in_the_generator_and_pure():
    labels = _labels()
    before = labels.clone()
    a = symmetric_label_noise(labels, 0.4, 10, torch.Generator().manual_seed(3))
    b = symmetric_label_noise(labels, 0.4, 10, torch.Generator().manual_seed(3))
    c = symmetric_label_noise(labels, 0.4, 10, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert torch.equal(labels, before)


@pytest.mark.parametrize("labels,rate,classes,message", [
    (torch.zeros(5, dtype=torch.long), 1.0, 10, r"eta=1.0 is outside \[0, 1\)"),
    (torch.zeros(5, dtype=torch.long), -0.1, 10, r"eta=-0.1 is outside \[0, 1\)"),
    (torch.zeros(5, dtype=torch.long), 0.2, 1, "at least 2 classes"),
    (torch.full((5,), 10), 0.2, 10, r"labels must lie in \[0, 10\)"),
    (torch.zeros(5), 0.2, 10, "1-D integer tensor"),
], ids=["eta_one", "eta_negative", "one_class", "label_out_of_range", "float_labels"])
def test_bad_input(labels, rate, classes, message):
    with pytest.raises(ValueError, match=message):
        symmetric_label_noise(labels, rate, classes, torch.Generator().manual_seed(0))


def _crop_flip_reference(images, generator, padding):
    """Per-image crop and flip with the same random draws, written the obvious way."""
    b = images.shape[0]
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    flipped = torch.rand(b, generator=generator) < 0.5
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    h, w = images.shape[2:]
    out = []
    for i in range(b):
        crop = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out.append(crop.flip(-1) if flipped[i] else crop)
    return torch.stack(out), dy, dx, flipped


@pytest.mark.parametrize("padding", [1, 4])
def test_batched_crop_flip_equals_the_per_image_reference(padding):
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    got = random_crop_flip(images, torch.Generator().manual_seed(5), padding=padding, flip=True)
    want, dy, dx, flipped = _crop_flip_reference(images, torch.Generator().manual_seed(5), padding)
    assert torch.equal(got, want)
    assert got.dtype == torch.uint8 and 0 < int(flipped.sum()) < 64 and len(set(dy.tolist())) > 1


def test_no_flip_keeps_orientation_and_consumes_the_same_random_stream():
    images = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    random_crop_flip(images, g1, padding=2, flip=False)
    random_crop_flip(images, g2, padding=2, flip=True)
    assert torch.equal(g1.get_state(), g2.get_state())
    centred = random_crop_flip(images, torch.Generator(), padding=0, flip=False)
    assert torch.equal(centred, images)


def test_normalise_and_place():
    data = load_digits()
    placed = place(data, eta=0.4, noise_generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    assert int(placed.is_noisy.sum()) == round(0.4 * 1438)
    assert torch.equal(placed.clean_labels, data.train_labels)
    assert torch.equal(placed.train_labels != placed.clean_labels, placed.is_noisy)
    x = normalise(placed.train_images, placed.mean, placed.std)
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std(correction=0)) - 1) < 1e-5
