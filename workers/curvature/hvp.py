"""Hessian-vector products over the whole parameter vector (Pearlmutter 1994).

Three mechanisms compute the same w = H z; ``layerwise_trace(hvp=...)`` picks one.

- "reverse": reverse-over-reverse. One gradient g with the graph retained, then
  each product is the gradient of <g, z>: cost C_grad + K * C_HVP (paper section 3.3),
  memory O(P) beyond the retained graph.
- "forward": torch.func forward-over-reverse, jvp(grad(L), z). Each product redoes
  the forward and backward pass, so no graph is kept between probes.
- "forward-vmap": the same, vectorised over all K probes with vmap: one batched
  pass, K times the activation memory.

``tests/benchmarks/bench_curvature.py`` measures them side by side; the default is
the fastest on the machines we measured (see README).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

MECHANISMS = ("reverse", "forward", "forward-vmap")
DEFAULT_MECHANISM = "reverse"

Probe = list[torch.Tensor]


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode (BatchNorm at its running statistics, dropout off;
    paper section 5.1) and leave train/eval flags, buffers and every ``.grad``
    exactly as they were on exit, also when the body raises."""
    flags = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    grads = [(p, p.grad) for p in model.parameters()]
    try:
        model.eval()
        still_training = [name or "(root)" for name, m in model.named_modules() if m.training]
        if still_training:
            # A module whose train() ignores eval() would make the batch Hessian random.
            raise ValueError(
                f"modules {still_training} stay in training mode after model.eval(); "
                "the estimator needs a deterministic loss (BatchNorm/dropout in eval mode)"
            )
        yield
    finally:
        for m, training in flags:
            m.training = training
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for p, g in grads:
            p.grad = g


def checked_loss(loss: object) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"criterion must return a tensor, got {type(loss).__name__}")
    if loss.ndim != 0:
        raise ValueError(
            f"criterion returned a loss of shape {tuple(loss.shape)}; it must be a scalar "
            "(use reduction='mean', the empirical risk of paper eq. 1)"
        )
    value = float(loss.detach())  # CPU-GPU sync point, once per call
    if not math.isfinite(value):
        raise ValueError(f"the loss is {value}; a Hessian at a non-finite loss is meaningless")
    return loss


def _zeros_for_none(tensors, like: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if t is None else t for t, p in zip(tensors, like)]


def reverse_hvp(
    model: nn.Module, criterion: Callable, inputs, targets, params: list[torch.Tensor]
) -> tuple[float, Callable[..., list[Probe]]]:
    """Loss and a function probes -> products, reusing one retained graph.

    ``products(probes, block=None)``: each probe covers all ``params``; with
    ``block`` (indices into ``params``) it covers only those, and the product is
    the block-restricted H_ll z_l (the naive per-layer baseline).
    """
    loss = checked_loss(criterion(model(inputs), targets))
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    # A gradient that is constant in theta (loss linear in that parameter) adds
    # nothing to H z, and autograd cannot differentiate it again: leave it out.
    live = {i for i, g in enumerate(grads) if g is not None and g.requires_grad}

    def products(probes: list[Probe], block: list[int] | None = None) -> list[Probe]:
        indices = list(range(len(params))) if block is None else block
        wrt = [params[i] for i in indices]
        differentiable = [j for j, i in enumerate(indices) if i in live]
        out = []
        for z in probes:
            if not differentiable:
                out.append([torch.zeros_like(p) for p in wrt])
                continue
            hz = torch.autograd.grad(
                [grads[indices[j]] for j in differentiable], wrt, grad_outputs=[z[j] for j in differentiable],
                retain_graph=True, allow_unused=True,
            )
            out.append(_zeros_for_none(hz, wrt))
        return out

    return float(loss.detach()), products


def functional_hvp(
    model: nn.Module, criterion: Callable, inputs, targets, params: list[torch.Tensor],
    param_names: list[str], *, vectorise: bool,
) -> tuple[float, Callable[[list[Probe]], list[Probe]]]:
    """Loss and a function probes -> products by torch.func forward-over-reverse."""
    with torch.no_grad():
        loss = float(checked_loss(criterion(model(inputs), targets)))
    primals = tuple(p.detach() for p in params)

    def loss_of(ps):
        # functional_call ties parameters shared between modules (tie_weights=True).
        return criterion(functional_call(model, dict(zip(param_names, ps)), (inputs,)), targets)

    gradient = grad(loss_of)

    def one(z):
        return jvp(gradient, (primals,), (z,))[1]

    def products(probes: list[Probe]) -> list[Probe]:
        if not vectorise:
            return [list(one(tuple(z))) for z in probes]
        stacked = tuple(torch.stack(zs) for zs in zip(*probes))
        batched = vmap(one)(stacked)
        return [[w[k] for w in batched] for k in range(len(probes))]

    return loss, products


def hessian_vector_products(
    mechanism: str, model: nn.Module, criterion: Callable, inputs, targets,
    params: list[torch.Tensor], param_names: list[str],
) -> tuple[float, Callable[[list[Probe]], list[Probe]]]:
    if mechanism == "reverse":
        return reverse_hvp(model, criterion, inputs, targets, params)
    if mechanism in ("forward", "forward-vmap"):
        return functional_hvp(
            model, criterion, inputs, targets, params, param_names, vectorise=mechanism == "forward-vmap"
        )
    raise ValueError(f"hvp={mechanism!r} is not one of {MECHANISMS}")


# The name of the whole parameter vector, beside the groups, in results over blocks.
NETWORK = "(network)"


def block_operators(
    model: nn.Module, criterion: Callable, inputs, targets, groups, layers
) -> tuple[float, list[tuple[str, list[int], Callable[[torch.Tensor], torch.Tensor]]]]:
    """The loss and, for each requested block, ``(name, parameter indices, matvec)``:
    ``matvec`` maps a flat vector over the block's parameters (their dtype and device) to
    the flat H_ll x, or to H x for the block ``NETWORK`` (``layers=None`` means just that
    one). All share one retained graph (``reverse_hvp``); call inside ``evaluation_mode``.
    ``groups`` is a resolved ``ParameterGroups``; ``layers`` None or a list of its group
    names, in which ``NETWORK`` may appear too."""
    if layers is None:
        layers = [NETWORK]
    if isinstance(layers, str) or not all(isinstance(name, str) for name in layers):
        raise TypeError(f"layers must be None or a list of group names, got {layers!r}")
    unknown = [name for name in layers if name not in groups.names and name != NETWORK]
    if unknown or not layers:
        raise ValueError(f"layers={list(layers)} names no group or unknown groups {unknown}; "
                         f"the groups are {groups.names} (and {NETWORK} for the whole Hessian)")
    every = list(range(len(groups.params)))
    blocks = [(name, None if name == NETWORK else
               [i for i in every if groups.names[groups.group_of[i]] == name]) for name in layers]
    loss, products = reverse_hvp(model, criterion, inputs, targets, groups.params)

    def operator(indices):
        wrt = groups.params if indices is None else [groups.params[i] for i in indices]
        sizes = [p.numel() for p in wrt]

        def matvec(v: torch.Tensor) -> torch.Tensor:
            parts = [x.view_as(p) for x, p in zip(torch.split(v, sizes), wrt)]
            return torch.cat([w.reshape(-1) for w in products([parts], block=indices)[0]])

        return matvec

    return loss, [(name, every if idx is None else idx, operator(idx)) for name, idx in blocks]
