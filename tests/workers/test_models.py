import pytest
import torch

from workers.models import HEAD, build_model

# Full-width parameter counts of the CIFAR networks (kuangliu/pytorch-cifar layout).
COUNTS = [
    ("resnet18", 10, 11_173_962), ("resnet34", 10, 21_282_122), ("vgg11", 10, 9_231_114),
    ("resnet18", 100, 11_220_132), ("resnet34", 100, 21_328_292), ("vgg11", 100, 9_277_284),
]


@pytest.mark.parametrize("arch,classes,count", COUNTS, ids=[f"{a}-c{c}" for a, c, _ in COUNTS])
def test_full_width_parameter_counts(arch, classes, count):
    model = build_model(arch, num_classes=classes)
    assert sum(p.numel() for p in model.parameters()) == count


@pytest.mark.parametrize("arch", sorted(HEAD))
def test_narrow_models_run_on_small_inputs_and_name_their_head(arch):
    model = build_model(arch, num_classes=10, in_channels=1, width=0.125)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    head = dict(model.named_modules())[HEAD[arch]]
    assert head.out_features == 10


def test_unknown_architecture_is_named():
    with pytest.raises(ValueError, match=r"arch='resnet50' is not one of \['resnet18', 'resnet34', 'vgg11'\]"):
        build_model("resnet50", num_classes=10)
