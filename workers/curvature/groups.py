"""Partition of the parameter vector into the groups theta_1..theta_L (paper section 2).

Every trainable parameter tensor belongs to exactly one group. A tensor that is
shared (one module applied several times, or tied between modules) is a single
autograd leaf: it appears once here, so its Hessian block is assembled by autograd
before the second differentiation (paper eq. 5) and never unrolled into copies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

ROOT_GROUP = "(root)"


@dataclass(frozen=True)
class ParameterGroups:
    """Groups in a fixed order; ``params[i]`` belongs to group ``group_of[i]``."""

    names: list[str]
    params: list[torch.Tensor]
    param_names: list[str]
    group_of: list[int]

    @property
    def numel(self) -> list[int]:
        counts = [0] * len(self.names)
        for p, g in zip(self.params, self.group_of):
            counts[g] += p.numel()
        return counts


def _trainable(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    # named_parameters() lists a shared tensor once, under its first name.
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _by_module(model: nn.Module) -> list[tuple[str, list[str]]]:
    trainable = {id(p): n for n, p in _trainable(model)}
    seen: set[int] = set()
    groups = []
    for module_name, module in model.named_modules():
        members = []
        for p in module.parameters(recurse=False):
            if id(p) in trainable and id(p) not in seen:
                seen.add(id(p))
                members.append(trainable[id(p)])
        if members:
            groups.append((module_name or ROOT_GROUP, members))
    return groups


def _by_mapping(model: nn.Module, mapping: Mapping[str, Sequence[str]]) -> list[tuple[str, list[str]]]:
    # Any alias of a tied parameter may be used in the mapping.
    alias_to_id = {n: id(p) for n, p in model.named_parameters(remove_duplicate=False)}
    trainable = {id(p): n for n, p in _trainable(model)}
    for group, names in mapping.items():
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise TypeError(f"groups[{group!r}] must be a list of parameter names, not {names!r}")
    unknown = [n for names in mapping.values() for n in names if n not in alias_to_id]
    if unknown:
        raise ValueError(
            f"groups names unknown parameters {unknown}; valid names are model.named_parameters(): "
            f"{sorted(alias_to_id)}"
        )
    owner: dict[int, str] = {}
    groups = []
    for group, names in mapping.items():
        members = []
        for n in names:
            pid = alias_to_id[n]
            if pid not in trainable:
                raise ValueError(f"groups[{group!r}] names {n!r}, which does not require grad; remove it")
            if pid in owner:
                raise ValueError(
                    f"parameter {n!r} is in groups {owner[pid]!r} and {group!r}; "
                    "each parameter must belong to exactly one group"
                )
            owner[pid] = group
            members.append(trainable[pid])
        if not members:
            raise ValueError(f"groups[{group!r}] is empty; give it at least one parameter name")
        groups.append((str(group), members))
    left_out = [n for pid, n in trainable.items() if pid not in owner]
    if left_out:
        raise ValueError(
            f"groups leaves out trainable parameters {left_out}; add them to a group "
            "(or set requires_grad=False on them)"
        )
    return groups


def parameter_groups(model: nn.Module, groups: str | Mapping[str, Sequence[str]] = "module") -> ParameterGroups:
    """Resolve ``groups`` ("module", "parameter", or name -> parameter names) for ``model``.

    "module": each module's own parameters (weight and bias together), named by the
    module's qualified name; "parameter": one group per parameter tensor.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    trainable = _trainable(model)
    if not trainable:
        raise ValueError("model has no parameter that requires grad; there is no Hessian to estimate")
    if isinstance(groups, str):
        if groups == "module":
            spec = _by_module(model)
        elif groups == "parameter":
            spec = [(n, [n]) for n, _ in trainable]
        else:
            raise ValueError(f"groups={groups!r} is not understood; use 'module', 'parameter' or a mapping")
    elif isinstance(groups, Mapping):
        spec = _by_mapping(model, groups)
    else:
        raise TypeError(f"groups must be 'module', 'parameter' or a mapping, got {type(groups).__name__}")

    lookup = dict(trainable)
    names, params, param_names, group_of = [], [], [], []
    for g, (group, members) in enumerate(spec):
        names.append(group)
        for n in members:
            params.append(lookup[n])
            param_names.append(n)
            group_of.append(g)
    return ParameterGroups(names=names, params=params, param_names=param_names, group_of=group_of)
