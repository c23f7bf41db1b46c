"""Small float64 models with a dense Hessian, as test cases with readable ids."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, hessian

from workers.curvature import parameter_groups
from workers.curvature.hvp import evaluation_mode


class SharedLinear(nn.Module):
    """One Linear module applied twice: weight sharing inside one module."""

    def __init__(self, d: int = 4, classes: int = 3):
        super().__init__()
        self.shared = nn.Linear(d, d)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        return self.head(torch.tanh(self.shared(torch.tanh(self.shared(x)))))


class TiedLinear(nn.Module):
    """Two modules whose weights are one tensor (tied), with their own biases."""

    def __init__(self, d: int = 4, classes: int = 3):
        super().__init__()
        self.a = nn.Linear(d, d)
        self.b = nn.Linear(d, d)
        self.b.weight = self.a.weight
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        return self.head(torch.tanh(self.b(torch.tanh(self.a(x)))))


def _mlp():
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


def _cnn_bn():
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Tanh(), nn.Flatten(), nn.Linear(27, 3)
    )
    # Running statistics away from (0, 1), so eval-mode BN is not the identity.
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.2, 0.2)
    return model


def _relu_bn():
    """Piecewise linear in each module's parameters (F1): every H_ll is PSD."""
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(27, 3))
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model


@dataclass
class Case:
    id: str
    build: callable
    input_shape: tuple


CASES = [
    Case("mlp_tanh", _mlp, (4,)),
    Case("cnn_batchnorm", _cnn_bn, (1, 5, 5)),
    Case("shared_linear", SharedLinear, (4,)),
    Case("tied_weights", TiedLinear, (4,)),
]
RELU_BN = Case("relu_batchnorm", _relu_bn, (1, 5, 5))


def make(case: Case, *, batch: int = 16, seed: int = 0):
    """(model, criterion, inputs, targets) in float64, deterministic in ``seed``."""
    torch.manual_seed(seed)
    model = case.build().double()
    inputs = torch.randn(batch, *case.input_shape, dtype=torch.float64)
    targets = torch.randint(0, 3, (batch,))
    return model, nn.CrossEntropyLoss(), inputs, targets


def dense_hessian(model, criterion, inputs, targets, groups="module"):
    """The exact Hessian [P, P] over the parameters in group order, with each
    group's slice, from torch.func.hessian of the loss in eval mode."""
    resolved = parameter_groups(model, groups)
    shapes = [p.shape for p in resolved.params]
    sizes = [p.numel() for p in resolved.params]

    def loss(flat):
        parts = [t.reshape(s) for t, s in zip(flat.split(sizes), shapes)]
        out = functional_call(model, dict(zip(resolved.param_names, parts)), (inputs,))
        return criterion(out, targets)

    flat = torch.cat([p.detach().reshape(-1) for p in resolved.params])
    with evaluation_mode(model):
        h = hessian(loss)(flat)
    return h, group_slices(resolved)


def group_slices(groups) -> list[slice]:
    """Each group's slice of the parameter vector in group order."""
    slices, start = [], 0
    for l in range(len(groups.names)):
        n = sum(p.numel() for p, g in zip(groups.params, groups.group_of) if g == l)
        slices.append(slice(start, start + n))
        start += n
    return slices
