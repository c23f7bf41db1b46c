"""Random probes z with E[z] = 0 and E[z z^T] = I (paper eq. 3).

Rademacher coordinates attain the least variance of the Hutchinson estimator
among distributions with independent coordinates (Avron and Toledo 2011), hence
the default. Probes are drawn parameter by parameter, in the order of the groups,
so a seeded generator gives the same probes to every estimator in this package.
"""

from __future__ import annotations

import torch

DISTRIBUTIONS = ("rademacher", "gaussian")


def check_num_probes(num_probes) -> None:
    """Raise unless ``num_probes`` is an int >= 1 (paper section 4.3 recommends 5-10)."""
    if isinstance(num_probes, bool) or not isinstance(num_probes, int):
        raise TypeError(f"num_probes must be an int, got {type(num_probes).__name__}")
    if num_probes < 1:
        raise ValueError(f"num_probes={num_probes}; it must be at least 1 (paper section 4.3 recommends 5-10)")


def check_distribution(distribution: str) -> None:
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution={distribution!r} is not one of {DISTRIBUTIONS}")


def check_generator(generator: torch.Generator | None, params: list[torch.Tensor]) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    devices = {p.device for p in params}
    if len(devices) > 1:
        raise ValueError(f"parameters live on several devices {sorted(map(str, devices))}; a seeded probe needs one")
    device = devices.pop()
    if generator.device.type != device.type:
        raise ValueError(
            f"generator is on {generator.device} but the parameters are on {device}; "
            f"pass torch.Generator(device='{device}')"
        )


def draw_probe(
    params: list[torch.Tensor], *, distribution: str, generator: torch.Generator | None
) -> list[torch.Tensor]:
    """One probe over the whole parameter vector, as one tensor per parameter.

    >>> g = torch.Generator().manual_seed(0)
    >>> z = draw_probe([torch.zeros(2, 3)], distribution="rademacher", generator=g)
    >>> sorted(z[0].unique().tolist())
    [-1.0, 1.0]
    """
    probe = []
    for p in params:
        if distribution == "rademacher":
            z = torch.empty_like(p, memory_format=torch.contiguous_format).bernoulli_(0.5, generator=generator)
            probe.append(z.mul_(2).sub_(1))
        else:
            probe.append(torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype))
    return probe


def flat_probe(params: list[torch.Tensor], *, generator: torch.Generator | None) -> torch.Tensor:
    """One Rademacher probe over ``params`` as one flat vector, in their order (the vector
    the Lanczos and sketch estimators work on; the same draws as ``draw_probe``)."""
    return torch.cat([z.reshape(-1) for z in draw_probe(params, distribution="rademacher", generator=generator)])


def block_signs(num_groups: int, *, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Independent Rademacher signs, one per group (for the block Frobenius estimate)."""
    signs = torch.empty(num_groups, device=like.device, dtype=like.dtype).bernoulli_(0.5, generator=generator)
    return signs.mul_(2).sub_(1)
