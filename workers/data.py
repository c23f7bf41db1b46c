"""Training data for one run, on the training device (paper section 5.1).

The whole training set lives as one uint8 tensor on the device; a batch is an
index tensor, augmented (random crop with zero padding + horizontal flip) and
normalised with batched tensor ops. There is no per-image Python and no DataLoader.
Symmetric label noise is applied once, before training, as a pure function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workers.datasets import ImageData


def symmetric_label_noise(
    labels: torch.Tensor, rate: float, num_classes: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt exactly round(rate * n) labels, chosen uniformly without replacement,
    each replaced by a label drawn uniformly from the other C - 1 classes.

    Returns (noisy_labels, is_noisy). ``round`` is half-up. Adding a shift uniform on
    {1, ..., C-1} modulo C is uniform over the other classes and never keeps the
    label, so ``is_noisy`` is exactly the set of changed labels. Deterministic in the
    generator's state; the input is not modified.

    >>> g = torch.Generator().manual_seed(0)
    >>> noisy, mask = symmetric_label_noise(torch.zeros(10, dtype=torch.long), 0.4, 3, g)
    >>> int(mask.sum()), bool((noisy[mask] != 0).all()), bool((noisy[~mask] == 0).all())
    (4, True, True)
    """
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.dtype.is_floating_point:
        raise ValueError("labels must be a 1-D integer tensor of class indices")
    if not 0 <= rate < 1:
        raise ValueError(f"label noise rate eta={rate} is outside [0, 1); the paper uses 0, 0.25, 0.40, 0.60")
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes}; symmetric noise needs at least 2 classes")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}); got [{int(labels.min())}, {int(labels.max())}]")
    n = labels.numel()
    count = math.floor(rate * n + 0.5)
    chosen = torch.randperm(n, generator=generator)[:count]
    shift = torch.randint(1, num_classes, (count,), generator=generator)
    noisy = labels.clone()
    noisy[chosen] = (labels[chosen] + shift.to(labels.dtype)) % num_classes
    is_noisy = torch.zeros(n, dtype=torch.bool)
    is_noisy[chosen] = True
    return noisy, is_noisy


@dataclass(frozen=True)
class TrainingData:
    """A dataset placed on the training device, its training labels corrupted once.

    ``train_labels`` are the (noisy) labels the model trains on; ``clean_labels``
    and ``is_noisy`` are kept to measure memorisation.
    """

    train_images: torch.Tensor  # uint8 (N, C, H, W) on the device
    train_labels: torch.Tensor
    clean_labels: torch.Tensor
    is_noisy: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: torch.Tensor  # float32 (1, C, 1, 1)
    std: torch.Tensor
    num_classes: int

    @property
    def num_train(self) -> int:
        return self.train_images.shape[0]


def place(data: ImageData, *, eta: float, noise_generator: torch.Generator, device: torch.device) -> TrainingData:
    """Corrupt the training labels at rate ``eta`` and move everything to ``device`` once."""
    noisy, is_noisy = symmetric_label_noise(data.train_labels, eta, data.num_classes, noise_generator)
    shape = (1, len(data.mean), 1, 1)
    return TrainingData(
        train_images=data.train_images.to(device),
        train_labels=noisy.to(device),
        clean_labels=data.train_labels.to(device),
        is_noisy=is_noisy.to(device),
        test_images=data.test_images.to(device),
        test_labels=data.test_labels.to(device),
        mean=torch.tensor(data.mean, dtype=torch.float32, device=device).view(shape),
        std=torch.tensor(data.std, dtype=torch.float32, device=device).view(shape),
        num_classes=data.num_classes,
    )


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images to float32 standardised per channel: (x / 255 - mean) / std."""
    return (images.float().div_(255.0) - mean) / std


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, *, padding: int, flip: bool) -> torch.Tensor:
    """Random crop after zero padding by ``padding`` pixels, then a horizontal flip with
    probability 1/2, for a whole uint8 batch at once (one gather, no per-image loop).

    The offsets and flips are drawn from ``generator`` in a fixed order whatever the
    options, so the stream of random numbers does not depend on them.

    >>> x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    >>> bool((random_crop_flip(x, torch.Generator(), padding=0, flip=False) == x).all())
    True
    """
    b, c, h, w = images.shape
    device = images.device
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=device)
    flipped = torch.rand(b, generator=generator, device=device) < 0.5
    padded = F.pad(images, (padding,) * 4) if padding else images
    rows = dy[:, None] + torch.arange(h, device=device)
    cols = dx[:, None] + torch.arange(w, device=device)
    if flip:
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    return padded[
        torch.arange(b, device=device)[:, None, None, None],
        torch.arange(c, device=device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
