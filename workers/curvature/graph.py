"""Distances between parameter groups in the network's computation graph (seed 001 indexes
the Hessian's blocks by the network's DAG, and profiles coupling by DAG distance).

Read off the autograd graph of one loss: an operation that takes a group's parameters
(directly or through views and casts of them alone) belongs to that group. Group l feeds
group m when an activation path leads from an operation of l to an operation of m without
passing an operation of a third group; the distance d(l, m) is the length of the shortest
path between them when those edges are taken both ways. So a chain (VGG) has
d = |l - m| along its execution order, while in a ResNet block the shortcut convolution and
the block's first convolution are both 1 from the previous block's last BatchNorm and 2 from
each other, and the block's last BatchNorm and the shortcut's are both 1 from the next
block's convolutions: skips make distant layers closer than their execution order says.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from workers.curvature.groups import ParameterGroups, parameter_groups
from workers.curvature.hvp import checked_loss, evaluation_mode

UNREACHABLE = -1


def layer_distances(
    model: nn.Module,
    criterion: Callable,
    inputs,
    targets,
    *,
    groups: str | Mapping[str, Sequence[str]] = "module",
) -> torch.Tensor:
    """[L, L] int64 shortest-path distances between the parameter groups in the autograd
    graph of ``criterion(model(inputs), targets)`` (one forward pass in eval mode; the model
    is left as it was). ``UNREACHABLE`` (-1) where no path joins two groups.

    >>> chain = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    >>> layer_distances(chain, nn.CrossEntropyLoss(), torch.randn(5, 3), torch.zeros(5, dtype=torch.long))
    tensor([[0, 1, 2],
            [1, 0, 1],
            [2, 1, 0]])
    """
    resolved = parameter_groups(model, groups)
    if isinstance(inputs, torch.Tensor) and inputs.is_floating_point():
        inputs = inputs.detach().requires_grad_(True)  # the data path shows in the graph
    with evaluation_mode(model), torch.enable_grad():
        loss = checked_loss(criterion(model(inputs), targets))
        return _distances(loss, resolved)


def _distances(loss: torch.Tensor, groups: ParameterGroups) -> torch.Tensor:
    owner = {id(p): g for p, g in zip(groups.params, groups.group_of)}
    nodes, children = _walk(loss.grad_fn)
    # pure[n]: the one group n is computed from when it is computed from that group's
    # parameters alone (a view or cast of them), else None: an activation
    pure: dict[object, frozenset | None] = {}
    for node in reversed(nodes):  # inputs before the operations that use them
        variable = getattr(node, "variable", None)
        if variable is not None:
            pure[node] = frozenset([owner[id(variable)]]) if id(variable) in owner else None
            continue
        kids = children[node]
        made = frozenset().union(*(pure[k] for k in kids if pure[k] is not None))
        pure[node] = made if kids and len(made) == 1 and all(pure[k] is not None for k in kids) else None
    # An activation node's own groups, and the groups first met going towards the inputs.
    own = {n: frozenset().union(*(pure[k] for k in children[n] if pure[k] is not None))
           for n in nodes if pure[n] is None}
    first: dict[object, frozenset] = {}
    edges: set[tuple[int, int]] = set()
    for node in reversed(nodes):
        if pure[node] is not None:
            continue
        below = frozenset().union(*(first[k] for k in children[node] if pure[k] is None))
        first[node] = own[node] or below
        for g in own[node]:
            edges.update((g, h) for h in below | own[node] if h != g)
    return _shortest(len(groups.names), edges)


def _walk(root) -> tuple[list, dict]:
    """The autograd nodes under ``root`` with every node before the nodes it takes inputs from
    (a topological order), and each node's input nodes."""
    children: dict[object, list] = {}
    stack, order = [root], []
    while stack:  # depth-first, then Kahn's order for a DAG with shared subgraphs
        node = stack.pop()
        if node is None or node in children:
            continue
        children[node] = [n for n, _ in node.next_functions if n is not None]
        stack.extend(children[node])
    parents = {n: 0 for n in children}
    for kids in children.values():
        for k in kids:
            parents[k] += 1
    ready = deque(n for n, count in parents.items() if count == 0)
    while ready:
        node = ready.popleft()
        order.append(node)
        for k in children[node]:
            parents[k] -= 1
            if parents[k] == 0:
                ready.append(k)
    return order, children


def _shortest(count: int, edges: set[tuple[int, int]]) -> torch.Tensor:
    neighbours: dict[int, set[int]] = {g: set() for g in range(count)}
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    distance = torch.full((count, count), UNREACHABLE, dtype=torch.int64)
    for start in range(count):
        distance[start, start] = 0
        queue = deque([start])
        while queue:
            here = queue.popleft()
            for there in neighbours[here]:
                if distance[start, there] == UNREACHABLE:
                    distance[start, there] = distance[start, here] + 1
                    queue.append(there)
    return distance
