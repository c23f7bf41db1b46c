"""Inside the Hessian, for the report: the coupling between layers and the tensor part's
share of each layer's curvature, clean against noisy (seeds 001, 003 and 004; estimators
``workers.curvature.interlayer_blocks`` and ``gauss_newton_split``).

Runs are pooled before any ratio is taken: the coupling C_lm = ||A_lm||_F / sqrt(||A_ll||_F
||A_mm||_F) of a group of runs is computed from the group's mean F_lm = ||A_lm||_F^2 (each
run's estimate is unbiased, the mean too; a ratio of noisy single-probe estimates would not
be), and the tensor share of a layer from the mean tr(H^T_ll) over the mean tr(H_ll).
Negative mean estimates of F (possible with few probes) are clipped to 0. The stable rank
D_l = ||H_ll||_F^2 / ||H_ll||_2^2 joins the pair table's diagonal to the blocks' extreme
eigenvalues (``top_eigenvalues``), where both were logged at one step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from analysis.inputs import Trajectories, early_middle_late


@dataclass(frozen=True)
class Coupling:
    """A matrix [L, L] of one configuration, operator and step, per group (``clean``,
    ``noisy``: every eta > 0 pooled), with the runs behind each. ``metric`` is ``coupling``
    (C_lm), or ``GN-Gap`` (||H^T_lm||_F / ||G_lm||_F) for the tensor operator when the
    Gauss-Newton blocks were logged too: where the diagonal tensor blocks vanish (F1, the
    built-in models) its coupling divides by zero, and the GN-Gap is what the seeds read."""

    configuration: str
    operator: str
    step: int
    epoch: float
    layers: list[str]
    matrices: dict[str, np.ndarray]
    runs: dict[str, int]
    metric: str = "coupling"
    distance: np.ndarray | None = None  # [L, L] in the network's graph; None for stores logged before it


@dataclass(frozen=True)
class LayerMap:
    """A per-layer ``quantity`` of one configuration over training, per group: ``values``
    [L, T] over ``epochs`` (``tensor share`` tr(H^T_ll) / tr(H_ll), or ``stable rank`` D_l)."""

    configuration: str
    quantity: str
    layers: list[str]
    epochs: np.ndarray
    values: dict[str, np.ndarray]


def _group(eta: float) -> str:
    return "clean" if eta == 0 else "noisy"


def couplings(traj: Trajectories, configuration: str) -> list[Coupling]:
    """The coupling at the first, middle and last logged step, per operator."""
    if traj.pairs is None or traj.pairs.num_rows == 0:
        return []
    t = traj.pairs.filter(pc.equal(traj.pairs["configuration"], configuration))
    operators = sorted(set(t["operator"].to_pylist()))
    made = []
    for operator in operators:
        rows = t.filter(pc.equal(t["operator"], operator))
        for step in early_middle_late(rows["step"].to_pylist()):
            records = rows.filter(pc.equal(rows["step"], step)).to_pylist()
            layers, means, runs = _means(records)
            epoch, distance = records[0]["epoch"], _distance(records, layers)
            with np.errstate(divide="ignore", invalid="ignore"):
                if operator == "tensor" and "ggn" in operators:
                    ggn = t.filter(pc.and_(pc.equal(t["operator"], "ggn"), pc.equal(t["step"], step))).to_pylist()
                    _, ggn_means, _ = _means(ggn)
                    matrices = {g: np.sqrt(f) / np.sqrt(ggn_means[g]) for g, f in means.items() if g in ggn_means}
                    made.append(Coupling(configuration, operator, step, epoch, layers, matrices, runs, "GN-Gap",
                                         distance))
                    continue
                matrices = {}
                for group, f in means.items():
                    diagonal = np.sqrt(np.sqrt(np.diag(f)))
                    matrices[group] = np.sqrt(f) / np.outer(diagonal, diagonal)
            made.append(Coupling(configuration, operator, step, epoch, layers, matrices, runs, distance=distance))
    return made


def _distance(records: list[dict], layers: list[str]) -> np.ndarray | None:
    """The pairs' distances in the network's graph [L, L], or None when they were not logged."""
    if any(r.get("distance") is None for r in records):
        return None
    position = {name: i for i, name in enumerate(layers)}
    distance = np.zeros((len(layers), len(layers)), dtype=int)
    for r in records:
        distance[position[r["layer"]], position[r["other"]]] = r["distance"]
    return distance


def _means(records: list[dict]) -> tuple[list[str], dict[str, np.ndarray], dict[str, int]]:
    """The layers in network order and, per group, the mean F [L, L] over its runs (clipped at 0)."""
    order = {r["layer_index"]: r["layer"] for r in records}
    layers = [order[i] for i in sorted(order)]
    position = {name: i for i, name in enumerate(layers)}
    sums: dict[str, np.ndarray] = {}
    runs: dict[str, set] = {}
    for r in records:
        group = _group(r["eta"])
        sums.setdefault(group, np.zeros((len(layers), len(layers))))
        sums[group][position[r["layer"]], position[r["other"]]] += r["value"]
        runs.setdefault(group, set()).add(r["run_id"])
    means = {group: np.clip(total / len(runs[group]), 0, None) for group, total in sums.items()}
    return layers, means, {group: len(ids) for group, ids in runs.items()}


def tensor_shares(traj: Trajectories, configuration: str) -> list[LayerMap]:
    """Each layer's tensor share over training, clean and noisy."""
    if traj.split is None or traj.split.num_rows == 0:
        return []
    t = traj.split.filter(pc.equal(traj.split["configuration"], configuration))
    if t.num_rows == 0:
        return []
    records = [r for r in t.select(["run_id", "eta", "step", "epoch", "layer", "layer_index", "quantity", "value"])
               .to_pylist() if r["quantity"] in ("split_trace", "split_tensor_trace")]
    order = {r["layer_index"]: r["layer"] for r in records}
    layers = [order[i] for i in sorted(order)]
    steps = sorted({r["step"] for r in records})
    epochs = {r["step"]: r["epoch"] for r in records}
    li, si = {name: i for i, name in enumerate(layers)}, {s: i for i, s in enumerate(steps)}
    sums: dict[tuple[str, str], np.ndarray] = {}
    for r in records:
        key = (_group(r["eta"]), r["quantity"])
        sums.setdefault(key, np.zeros((len(layers), len(steps))))
        sums[key][li[r["layer"]], si[r["step"]]] += r["value"]
    shares = {}
    for group in ("clean", "noisy"):
        if (group, "split_trace") in sums:
            with np.errstate(divide="ignore", invalid="ignore"):
                shares[group] = sums[(group, "split_tensor_trace")] / sums[(group, "split_trace")]
    return [LayerMap(configuration, "tensor share", layers, np.array([epochs[s] for s in steps]), shares)]


def stable_ranks(traj: Trajectories, configuration: str) -> list[LayerMap]:
    """The stable rank D_l = ||H_ll||_F^2 / ||H_ll||_2^2 of each layer over training, clean and
    noisy, where the Hessian's pair table (its diagonal F_ll) and the block's extreme
    eigenvalues (``monitor.eigen.layers=all``, ||H_ll||_2 = max(|lambda_max|, |lambda_min|))
    were logged at the same step. Pooled as the rest: the group's mean F_ll over its mean
    ||H_ll||_2^2, the same runs in both."""
    if traj.pairs is None or traj.eigen is None or traj.eigen_min is None:
        return []
    norms: dict[tuple, float] = {}
    for table in (traj.eigen, traj.eigen_min):
        rows = table.filter(pc.equal(table["configuration"], configuration))
        for r in rows.select(["run_id", "step", "layer", "trace"]).to_pylist():
            key = (r["run_id"], r["step"], r["layer"])
            norms[key] = max(norms.get(key, 0.0), r["trace"] ** 2)
    t = traj.pairs.filter(pc.and_(pc.equal(traj.pairs["configuration"], configuration),
                                  pc.equal(traj.pairs["operator"], "hessian")))
    records = [r for r in t.filter(pc.equal(t["layer"], t["other"])).to_pylist()
               if (r["run_id"], r["step"], r["layer"]) in norms]
    if not records:
        return []
    order = {r["layer_index"]: r["layer"] for r in records}
    layers = [order[i] for i in sorted(order)]
    steps = sorted({r["step"] for r in records})
    epochs = {r["step"]: r["epoch"] for r in records}
    li, si = {name: i for i, name in enumerate(layers)}, {s: i for i, s in enumerate(steps)}
    sums: dict[str, np.ndarray] = {}
    for r in records:
        frob, norm = sums.setdefault(_group(r["eta"]), np.zeros((2, len(layers), len(steps))))
        frob[li[r["layer"]], si[r["step"]]] += max(r["value"], 0.0)
        norm[li[r["layer"]], si[r["step"]]] += norms[(r["run_id"], r["step"], r["layer"])]
    with np.errstate(divide="ignore", invalid="ignore"):
        values = {group: np.where(norm > 0, frob / norm, np.nan) for group, (frob, norm) in sums.items()}
    return [LayerMap(configuration, "stable rank", layers, np.array([epochs[s] for s in steps]), values)]
