"""The spectral side of the report: lambda_max trajectories and spectral densities of the
analysed runs, clean against noisy (../shared/seeds/002 and 004; the estimators are
``workers.curvature.top_eigenvalues`` and ``spectral_density``).

Densities are smoothed here from the stored raw quadrature (Papyan's Gaussian kernel,
``workers.curvature.density.smooth_density``), on one grid per configuration, block and
step so that runs can be averaged: the clean runs' densities averaged, and each noisy
eta's. Three steps are shown, the first, the middle and the last that were logged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analysis.inputs import Ensemble, Trajectories, early_middle_late, ensemble


@dataclass(frozen=True)
class Density:
    """Smoothed densities of one configuration, block and step: ``grid`` [G] and, per
    group (``clean`` or ``eta = 0.40``), the mean density [G] over its runs."""

    configuration: str
    layer: str
    step: int
    epoch: float
    grid: np.ndarray
    curves: dict[str, np.ndarray]
    runs: dict[str, int]


def eigen_ensembles(traj: Trajectories, configuration: str, layers: list[str]) -> list[Ensemble]:
    """lambda_max [runs, steps] of each of ``layers`` that logged it, plus the whole
    Hessian's when logged."""
    if traj.eigen is None:
        return []
    eigen = Trajectories(traj.eigen, traj.heads, traj.source, quantity="lambda_max")
    rows = traj.eigen.filter(pc.equal(traj.eigen["configuration"], configuration))
    logged = list(dict.fromkeys(rows["layer"].to_pylist()))
    return [ensemble(eigen, configuration, name)[0] for name in dict.fromkeys([*layers, "(network)"])
            if name in logged]


def densities(traj: Trajectories, configuration: str, layers: list[str], *, points: int = 512) -> list[Density]:
    """Early, middle and late densities of ``layers`` and the whole Hessian, per group."""
    if traj.spectra is None or traj.spectra.num_rows == 0:
        return []
    from workers.curvature.density import smooth_density  # torch: imported only when there are spectra

    t = traj.spectra.filter(pc.equal(traj.spectra["configuration"], configuration))
    made = []
    for layer in dict.fromkeys([*layers, "(network)"]):
        rows = t.filter(pc.equal(t["layer"], layer))
        if rows.num_rows == 0:
            continue
        for step in early_middle_late(rows["step"].to_pylist()):
            made.append(_density(rows.filter(pc.equal(rows["step"], step)), configuration, layer, step, points,
                                 smooth_density))
    return made


def _density(rows: pa.Table, configuration: str, layer: str, step: int, points: int, smooth) -> Density:
    records = rows.to_pylist()
    lower, upper = min(r["lower"] for r in records), max(r["upper"] for r in records)
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault("clean" if r["eta"] == 0 else f"eta = {r['eta']:.2f}", []).append(r)
    curves, runs, grid = {}, {}, None
    for name in sorted(groups, key=lambda g: (g != "clean", g)):
        members = groups[name]
        width = max(len(r["nodes"]) + len(r["outliers"]) for r in members)  # runs may deflate different counts
        nodes, weights = np.zeros((len(members), width)), np.zeros((len(members), width))
        for i, r in enumerate(members):
            values = r["nodes"] + r["outliers"]
            nodes[i, : len(values)] = values
            weights[i, : len(values)] = r["weights"] + [1 / r["numel"]] * len(r["outliers"])
        grid, phi = smooth(nodes, weights, lower=lower, upper=upper, points=points, steps=len(members[0]["nodes"]))
        curves[name], runs[name] = phi.numpy(), len({r["run_id"] for r in members})
    return Density(configuration, layer, step, records[0]["epoch"], grid.numpy(), curves, runs)
