"""A model of one's own for the README's example: a small CNN whose channel counts scale
with ``width``. hessian-sweep calls it with num_classes= and in_channels= (from the dataset)
and the other keys of arch/small_cnn.yaml; its last nn.Linear is the monitored head."""

from torch import nn


def small_cnn(*, num_classes: int, in_channels: int, width: float = 1.0) -> nn.Module:
    c = max(1, round(16 * width))
    return nn.Sequential(
        nn.Conv2d(in_channels, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * c, 4 * c, 3, padding=1), nn.BatchNorm2d(4 * c), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4 * c, num_classes),
    )
