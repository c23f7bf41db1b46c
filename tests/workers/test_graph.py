"""Distances between parameter groups in the network's graph, against graphs drawn by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.workers.curvature_cases import CASES, make
from tests.workers.test_curvature import assert_pure_and_reproducible
from workers import models
from workers.curvature import interlayer_blocks, layer_distances, parameter_groups

CE = nn.CrossEntropyLoss()


def distances(model, shape, targets=None):
    x = torch.randn(4, *shape)
    y = torch.zeros(4, dtype=torch.long) if targets is None else targets
    names = parameter_groups(model).names
    d = layer_distances(model, CE, x, y)
    return lambda a, b: int(d[names.index(a), names.index(b)]), d


def test_a_chain_is_its_execution_order():
    _, d = distances(models.vgg11(width=0.125, num_classes=10), (3, 32, 32))
    index = torch.arange(d.shape[0])
    assert torch.equal(d, (index[:, None] - index[None, :]).abs())


def test_resnet_skips_bring_layers_closer_than_their_execution_order():
    at, d = distances(models.resnet18(width=0.125, num_classes=10), (3, 32, 32))
    # both branches of a downsampling block start from the previous block's last BatchNorm
    assert at("layer1.1.bn2", "layer2.0.conv1") == at("layer1.1.bn2", "layer2.0.shortcut.0") == 1
    assert at("layer2.0.conv1", "layer2.0.shortcut.0") == 2  # siblings: through their common input
    # both branches end in the next block's first convolution
    assert at("layer2.0.bn2", "layer2.1.conv1") == at("layer2.0.shortcut.1", "layer2.1.conv1") == 1
    # an identity shortcut skips a whole block: the stem's output reaches layer1.1 directly
    assert at("bn1", "layer1.1.conv1") == 1
    assert at("layer1.0.conv1", "layer1.1.conv1") == 2  # both read the stem's output, where 4 in order
    assert at("conv1", "linear") < parameter_groups(models.resnet18(width=0.125)).names.index("linear")
    assert torch.equal(d, d.T) and (d >= 0).all() and (d.diagonal() == 0).all()


@pytest.mark.parametrize("case, expected", [
    (CASES[0], [[0, 1], [1, 0]]),  # Linear -> Tanh -> Linear
    (CASES[1], [[0, 1, 2], [1, 0, 1], [2, 1, 0]]),  # Conv -> BatchNorm (eval) -> Linear
    (CASES[2], [[0, 1], [1, 0]]),  # one module applied twice, then the head
    (CASES[3], [[0, 1, 1], [1, 0, 1], [1, 1, 0]]),  # a's weight is used in b's layer too
])
def test_small_models_and_weight_sharing(case, expected):
    model, criterion, x, y = make(case)
    assert layer_distances(model, criterion, x, y).tolist() == expected


def test_the_blocks_carry_the_distances_and_leave_the_model_as_it_was():
    assert_pure_and_reproducible(lambda model, criterion, x, y, g: layer_distances(model, criterion, x, y),
                                 lambda d: (d,))
    model, criterion, x, y = make(CASES[1])
    blocks = interlayer_blocks(model, criterion, x, y, num_probes=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(blocks.distance, layer_distances(model, criterion, x, y))
