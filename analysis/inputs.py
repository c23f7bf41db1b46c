"""Trajectories for the analysis: from the project's store or from any Parquet file or
folder in long format (run_id, arch, dataset, eta, seed, step, epoch, layer, trace),
validated in one place and aligned by step into [runs, snapshots] matrices."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workers.store import Store, StoreError

COLUMNS = ("run_id", "arch", "dataset", "eta", "seed", "step", "epoch", "layer", "trace")


class AnalysisError(ValueError):
    """Input the analysis cannot use; the message says what is wrong and what to do."""


@dataclass
class Trajectories:
    """Validated long-format trajectories, the head layer per arch when known, and notes
    on what is missing (reported, not fatal)."""

    table: pa.Table
    heads: dict[str, str]  # arch -> classification-head layer name (from the store's runs table)
    source: str
    notes: list[str] = field(default_factory=list)


def _check(table: pa.Table, source: str) -> pa.Table:
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise AnalysisError(
            f"{source} lacks the columns {missing}; trajectories need {list(COLUMNS)} in long format "
            "(one row per run, snapshot and layer)"
        )
    if table.num_rows == 0:
        raise AnalysisError(f"{source} holds no trajectories: nothing to analyse (is the sweep done?)")
    table = table.select(list(COLUMNS)).cast(pa.schema([
        ("run_id", pa.string()), ("arch", pa.string()), ("dataset", pa.string()), ("eta", pa.float64()),
        ("seed", pa.int64()), ("step", pa.int64()), ("epoch", pa.float64()), ("layer", pa.string()),
        ("trace", pa.float64()),
    ]))
    bad = pc.invert(pc.is_finite(table["trace"]))
    if pc.any(bad).as_py():
        rows = table.filter(bad).slice(0, 3).to_pylist()
        where = ", ".join(f"{r['run_id']} step {r['step']} layer {r['layer']}" for r in rows)
        raise AnalysisError(
            f"{source}: {pc.sum(bad).as_py()} traces are NaN or infinite (for example {where}); "
            "drop those runs or snapshots and run the analysis again"
        )
    return table


def from_store(uri: str) -> Trajectories:
    """The done runs of a store; runs not done are named in the notes."""
    try:
        store = Store.open(uri)
    except StoreError as err:
        raise AnalysisError(str(err)) from None
    runs = store.runs()
    if runs.num_rows == 0:
        raise AnalysisError(f"the store {uri} holds no runs yet; launch a sweep into it first")
    done = runs.filter(pc.equal(runs["status"], "done"))
    notes = []
    if done.num_rows < runs.num_rows:
        counts = {}
        for status in runs.filter(pc.not_equal(runs["status"], "done"))["status"].to_pylist():
            counts[status] = counts.get(status, 0) + 1
        notes.append(f"{runs.num_rows - done.num_rows} of {runs.num_rows} runs are not done "
                     f"({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}) and are left out")
    table = store.snapshots(status="done")
    heads = dict(zip(done["arch"].to_pylist(), done["head_layer"].to_pylist()))
    return Trajectories(_check(table, f"the store {uri}"), heads, uri, notes)


def from_parquet(path: str) -> Trajectories:
    """Trajectories logged by other code: a Parquet file or a folder of them."""
    if not Path(path).exists():
        raise AnalysisError(f"no trajectories at {path}: pass trajectories=FILE.parquet or a folder of them")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise AnalysisError(f"{path} is not readable Parquet ({err})") from None
    return Trajectories(_check(table, str(path)), {}, str(path))


@dataclass(frozen=True)
class Ensemble:
    """One configuration's trajectories of one layer, aligned by step."""

    arch: str
    dataset: str
    layer: str
    steps: np.ndarray  # [T]
    epochs: np.ndarray  # [T]
    run_ids: list[str]
    eta: np.ndarray  # [R]
    trace: np.ndarray  # [R, T], NaN where a run has no snapshot at that step


def configurations(traj: Trajectories) -> list[tuple[str, str]]:
    pairs = zip(traj.table["arch"].to_pylist(), traj.table["dataset"].to_pylist())
    return sorted(set(pairs))


def layers_of(traj: Trajectories, arch: str, dataset: str) -> list[str]:
    """Layer names of a configuration in network order (by first appearance)."""
    rows = traj.table.filter(pc.and_(pc.equal(traj.table["arch"], arch), pc.equal(traj.table["dataset"], dataset)))
    names = rows["layer"].to_pylist()
    return list(dict.fromkeys(names))


def resolve_layers(traj: Trajectories, arch: str, dataset: str, layer: str) -> list[str]:
    """``head`` -> the classification head, ``all`` -> every layer, else the named layer."""
    known = layers_of(traj, arch, dataset)
    if layer == "all":
        return known
    if layer == "head":
        if arch not in traj.heads:
            raise AnalysisError(
                f"layer=head needs model metadata, which {traj.source} does not have for {arch}; "
                f"pass layer=NAME, one of: {', '.join(known)}"
            )
        layer = traj.heads[arch]
    if layer not in known:
        raise AnalysisError(f"layer {layer!r} is not in {arch}/{dataset}; its layers are: {', '.join(known)}")
    return [layer]


def ensemble(traj: Trajectories, arch: str, dataset: str, layer: str) -> tuple[Ensemble, list[str]]:
    """The [runs, steps] matrix of one layer, and warnings about runs with missing steps."""
    t = traj.table
    rows = t.filter(pc.and_(pc.and_(pc.equal(t["arch"], arch), pc.equal(t["dataset"], dataset)),
                            pc.equal(t["layer"], layer)))
    run_ids, run_index = np.unique(rows["run_id"].to_numpy(zero_copy_only=False), return_inverse=True)
    steps, step_index = np.unique(rows["step"].to_numpy(), return_inverse=True)
    cell = run_index * len(steps) + step_index
    if len(np.unique(cell)) < len(cell):
        raise AnalysisError(f"{arch}/{dataset} layer {layer}: some run has the same step twice; "
                            "each (run_id, step, layer) must appear once")
    trace = np.full((len(run_ids), len(steps)), np.nan)
    trace[run_index, step_index] = rows["trace"].to_numpy()
    epochs = np.full(len(steps), np.nan)
    epochs[step_index] = rows["epoch"].to_numpy()
    eta = np.zeros(len(run_ids))
    eta[run_index] = rows["eta"].to_numpy()
    warnings = []
    short = [str(r) for r, row in zip(run_ids, trace) if np.isnan(row).any()]
    if short:
        warnings.append(f"{arch}/{dataset}: {len(short)} runs lack some of the {len(steps)} snapshot steps and "
                        f"are aligned by step ({', '.join(short[:5])}{', ...' if len(short) > 5 else ''})")
    return Ensemble(arch, dataset, layer, steps, epochs, [str(r) for r in run_ids], eta, trace), warnings
