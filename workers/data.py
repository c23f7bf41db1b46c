"""Training data for one run. For now: symmetric label noise (paper section 5.1).

The dataset readers (CIFAR archives, the scikit-learn digits) and the
device-resident augmentation arrive with the training worker (issue 3).
"""

from __future__ import annotations

import math

import torch


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
