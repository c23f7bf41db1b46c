import pytest
import torch
from torch import nn

from workers.models import ARCHITECTURES, ModelError, build_model

# Full-width parameter counts of the CIFAR networks (kuangliu/pytorch-cifar layout).
COUNTS = [
    ("resnet18", 10, 11_173_962), ("resnet34", 10, 21_282_122), ("vgg11", 10, 9_231_114),
    ("resnet18", 100, 11_220_132), ("resnet34", 100, 21_328_292), ("vgg11", 100, 9_277_284),
]


@pytest.mark.parametrize("arch,classes,count", COUNTS, ids=[f"{a}-c{c}" for a, c, _ in COUNTS])
def test_full_width_parameter_counts(arch, classes, count):
    model, _ = build_model({"name": arch, "width": 1.0}, num_classes=classes, in_channels=3)
    assert sum(p.numel() for p in model.parameters()) == count


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_narrow_models_run_on_small_inputs_and_name_their_head(arch):
    model, head = build_model({"name": arch, "width": 0.125}, num_classes=10, in_channels=1)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert head == ARCHITECTURES[arch].head
    assert model.get_submodule(head).out_features == 10


def test_unknown_architecture_is_named():
    with pytest.raises(ModelError, match=r"arch.name='resnet50' is not allowed: it must be one of resnet18, "
                                         r"resnet34, vgg11, or give arch._target_"):
        build_model({"name": "resnet50"}, num_classes=10, in_channels=3)


# A user's factories, reached by _target_ like any module on the import path.
def two_layers(*, num_classes, in_channels, hidden=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def no_linear(*, num_classes, in_channels):
    return nn.Sequential(nn.Conv2d(in_channels, num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def not_a_module(*, num_classes, in_channels):
    return "a string"


HERE = __name__


def test_a_target_factory_gets_the_dataset_shape_and_its_options_and_the_last_linear_is_the_head():
    model, head = build_model({"_target_": f"{HERE}.two_layers", "name": "mlp", "hidden": 5}, num_classes=3,
                              in_channels=1)
    assert head == "3" and model.get_submodule("1").out_features == 5
    assert model(torch.randn(4, 1, 8, 8)).shape == (4, 3)
    _, head = build_model({"_target_": f"{HERE}.two_layers", "head": "1"}, num_classes=3, in_channels=1)
    assert head == "1"  # arch.head names it explicitly (here: not the logits, so no class-count check)


@pytest.mark.parametrize("arch,message", [
    ({"_target_": "no_such_module_xyz.net"}, "module no_such_module_xyz cannot be imported"),
    ({"_target_": f"{HERE}.missing"}, f"module {HERE} has no 'missing'"),
    ({"_target_": f"{HERE}.HERE"}, "HERE is a str, not a function or class"),
    ({"_target_": "nodots"}, "must be a dotted path"),
    ({"_target_": f"{HERE}.two_layers", "hiden": 3}, "arch.hiden is not a keyword argument of two_layers; "
                                                     "it takes: hidden"),
    ({"_target_": f"{HERE}.not_a_module"}, "returned a str, not a torch.nn.Module"),
    ({"_target_": f"{HERE}.no_linear"}, "has no nn.Linear to monitor as its classification head; set arch.head"),
    ({"_target_": f"{HERE}.two_layers", "head": "9"}, "arch.head='9' is not a module with parameters"),
    ({"_target_": f"{HERE}.two_layers", "hidden": "x"}, "building the model failed: TypeError"),
])
def test_a_bad_target_is_one_clear_message(arch, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        build_model(arch, num_classes=3, in_channels=1)


def fixed(*, num_classes, in_channels):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 7))


def test_a_last_linear_with_the_wrong_number_of_outputs_is_refused():
    with pytest.raises(ModelError, match="its head 1 gives 7 outputs, but the dataset has 3 classes"):
        build_model({"_target_": f"{HERE}.fixed"}, num_classes=3, in_channels=1)
