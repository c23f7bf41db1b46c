"""CIFAR ResNet-18/34 (He et al. 2016) and VGG-11 with BatchNorm (Simonyan and
Zisserman 2014), as in kuangliu/pytorch-cifar: 3x3 stride-1 stem, no max-pool in
the ResNets, identity shortcuts unless the shape changes, one Linear classifier.

``width`` scales every channel count (1.0 is the paper's network), so the same
architectures run narrow on small CPU data; ``in_channels`` and ``num_classes``
follow the dataset.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import nn


def _channels(base: int, width: float) -> int:
    return max(1, int(round(base * width)))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock], num_blocks: list[int], *, num_classes: int = 10,
                 in_channels: int = 3, width: float = 1.0):
        super().__init__()
        planes = [_channels(c, width) for c in (64, 128, 256, 512)]
        self.in_planes = planes[0]
        self.conv1 = nn.Conv2d(in_channels, planes[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.layer1 = self._make_layer(block, planes[0], num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, planes[1], num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, planes[2], num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, planes[3], num_blocks[3], stride=2)
        self.linear = nn.Linear(planes[3] * block.expansion, num_classes)

    def _make_layer(self, block, planes, num_blocks, stride):
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        # Global average pool: 4x4 on 32x32 CIFAR, whatever is left on smaller inputs.
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


# VGG configuration "A" (VGG-11); "M" is a 2x2 max-pool.
VGG_CFG = {"vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]}


class VGG(nn.Module):
    def __init__(self, cfg: list, *, num_classes: int = 10, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            else:
                out = _channels(item, width)
                conv = nn.Conv2d(channels, out, kernel_size=3, padding=1)
                layers += [conv, nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        # ceil_mode pools keep a 1x1 map on inputs smaller than 32x32 (8x8 digits).
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def resnet18(**kwargs) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


def resnet34(**kwargs) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], **kwargs)


def vgg11(**kwargs) -> VGG:
    return VGG(VGG_CFG["vgg11"], **kwargs)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"resnet18": resnet18, "resnet34": resnet34, "vgg11": vgg11}

# Name of the classification head's module in each architecture (the layer the
# paper's decision rule monitors, section 5.3).
HEAD = {"resnet18": "linear", "resnet34": "linear", "vgg11": "classifier"}


def build_model(arch: str, *, num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch={arch!r} is not one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](num_classes=num_classes, in_channels=in_channels, width=width)
