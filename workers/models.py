"""CIFAR ResNet-18/34 (He et al. 2016) and VGG-11 with BatchNorm (Simonyan and
Zisserman 2014), as in kuangliu/pytorch-cifar: 3x3 stride-1 stem, no max-pool in
the ResNets, identity shortcuts unless the shape changes, one Linear classifier.

``width`` scales every channel count (1.0 is the paper's network), so the same
architectures run narrow on small CPU data; ``in_channels`` and ``num_classes``
follow the dataset.

An arch config chooses a model: ``name`` picks a built-in entry of ``ARCHITECTURES``,
``_target_: package.module.factory`` a user's own. Either way the factory is called
with ``num_classes=``, ``in_channels=`` and the config's other keys, and the entry
says which module is the classification head.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from workers.targets import check_keywords, import_target


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


def resnet18(*, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, in_channels=in_channels, width=width)


def resnet34(*, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes, in_channels=in_channels, width=width)


def vgg11(*, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> VGG:
    return VGG(VGG_CFG["vgg11"], num_classes=num_classes, in_channels=in_channels, width=width)


class ModelError(ValueError):
    """A model that cannot be built or monitored; the message names the fix."""


@dataclass(frozen=True)
class Architecture:
    """Everything about one choice of model: the factory, called with ``num_classes=``,
    ``in_channels=`` and the arch config's other keys, and the name of the module that is
    its classification head (the layer the paper's decision rule monitors, section 5.3;
    None: the last ``nn.Linear`` in module order)."""

    factory: Callable[..., nn.Module]
    head: str | None = None
    # F1 holds: the output is piecewise linear in each group's own parameters, so every
    # diagonal Hessian block equals its Gauss-Newton block (docs/estimator.md; checked
    # densely for the built-ins in tests/workers/test_exact_curvature.py)
    piecewise_linear: bool = False


# The built-in choices, by ``arch.name``. ``arch._target_: package.module.factory``
# makes a user's own entry of the same kind (``architecture`` below).
ARCHITECTURES: dict[str, Architecture] = {
    "resnet18": Architecture(resnet18, head="linear", piecewise_linear=True),
    "resnet34": Architecture(resnet34, head="linear", piecewise_linear=True),
    "vgg11": Architecture(vgg11, head="classifier", piecewise_linear=True),
}
RESERVED = ("name", "_target_", "head")  # arch keys that are not keyword arguments of the factory
SUPPLIED = ("num_classes", "in_channels")  # what every factory is called with, from the dataset


def architecture(arch: dict) -> Architecture:
    """The entry an arch config chooses: a built-in by name, or its ``_target_``."""
    if "_target_" in arch:
        entry = Architecture(import_target(arch["_target_"], where="arch._target_"), head=arch.get("head"))
    elif arch.get("name") in ARCHITECTURES:
        builtin = ARCHITECTURES[arch["name"]]
        entry = Architecture(builtin.factory, head=arch.get("head") or builtin.head,
                             piecewise_linear=builtin.piecewise_linear)
    else:
        raise ModelError(f"arch.name={arch.get('name')!r} is not allowed: it must be one of "
                         f"{', '.join(ARCHITECTURES)}, or give arch._target_=package.module.factory")
    check_keywords(entry.factory, options(arch), where="arch", supplied=SUPPLIED)
    return entry


def options(arch: dict) -> dict:
    """The factory's keyword arguments in an arch config (all keys but RESERVED)."""
    return {key: value for key, value in arch.items() if key not in RESERVED}


def build_model(arch: dict, *, num_classes: int, in_channels: int) -> tuple[nn.Module, str]:
    """The model an arch config describes, and the name of its classification head."""
    entry = architecture(arch)
    where = arch.get("_target_") or arch["name"]
    try:
        model = entry.factory(num_classes=num_classes, in_channels=in_channels, **options(arch))
    except Exception as err:  # the user's factory: its own error, said in one line
        raise ModelError(f"arch {where}: building the model failed: {type(err).__name__}: {err}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"arch._target_={where} returned a {type(model).__name__}, not a torch.nn.Module")
    head = head_of(model, entry.head, where=where)
    module = model.get_submodule(head)
    if entry.head is None and module.out_features != num_classes:  # found, not named: it should give the logits
        raise ModelError(f"arch {where}: its head {head} gives {module.out_features} outputs, but the dataset has "
                         f"{num_classes} classes; build the head with num_classes (the factory receives it)")
    return model, head


def head_of(model: nn.Module, head: str | None, *, where: str) -> str:
    """``head`` checked against the model, else the last ``nn.Linear`` in module order."""
    modules = dict(model.named_modules())
    if head is None:
        linear = [name for name, module in modules.items() if isinstance(module, nn.Linear)]
        if not linear:
            raise ModelError(f"arch {where}: the model has no nn.Linear to monitor as its classification head; "
                             "set arch.head=MODULE_NAME (the module that produces the logits)")
        return linear[-1]
    if head not in modules or not any(True for _ in modules[head].parameters(recurse=False)):
        own = [name for name, m in modules.items() if name and any(True for _ in m.parameters(recurse=False))]
        raise ModelError(f"arch.head={head!r} is not a module with parameters of {where}; its modules with "
                         f"parameters: {', '.join(own)}")
    return head
