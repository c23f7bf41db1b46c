"""Trajectories for the analysis: from one sweep of the project's store, or from any
Parquet file or folder in long format, validated in one place and aligned by step into
[runs, snapshots] matrices.

Long format: run_id, arch, dataset, eta, seed, step, epoch, layer and either ``trace``
or ``quantity`` + ``value`` (what `sweep export` writes; the rows of one quantity are
used), optionally ``configuration`` and ``axes`` (a map of the sweep's grid.axes values).
Runs are compared only within a configuration (the run config minus eta, seed and runtime;
without the column: arch and dataset)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# How reports name the snapshot quantities (`ggn_trace` is never called the trace: it equals
# it only where H_ll = G_ll, which the worker knows and then stores it as `trace`).
QUANTITY_NAMES = {"trace": "trace", "ggn_trace": "Gauss-Newton trace", "row_energy": "block-row energy",
                  "block_frobenius_sq": "squared Frobenius norm", "lambda_max": "largest eigenvalue",
                  "lambda_min": "smallest eigenvalue"}
COLUMNS = ("run_id", "configuration", "arch", "dataset", "eta", "seed", "step", "epoch", "layer", "trace")


class AnalysisError(ValueError):
    """Input the analysis cannot use; the message says what is wrong and what to do."""


@dataclass
class Trajectories:
    """Validated long-format trajectories, the head layer per arch when known, and notes
    on what is missing (reported, not fatal)."""

    table: pa.Table
    heads: dict[str, str]  # configuration -> classification-head layer name (from the store's runs table)
    source: str
    notes: list[str] = field(default_factory=list)
    axes: dict[str, dict[str, str]] = field(default_factory=dict)  # configuration -> its grid.axes values
    quantity: str = "trace"  # which per-layer quantity the trajectories are (the column is called trace)
    eigen: pa.Table | None = None  # lambda_max snapshot rows of the same runs, when they logged eigenvalues
    eigen_min: pa.Table | None = None  # and their lambda_min rows
    spectra: pa.Table | None = None  # their spectral-density rows (store.schema.SPECTRA_SCHEMA + identity)
    split: pa.Table | None = None  # their Gauss-Newton split rows (quantities split_*), when logged
    pairs: pa.Table | None = None  # their inter-layer block rows (store.schema.PAIRS_SCHEMA + identity)
    alarms: pa.Table | None = None  # alarms `sweep watch` raised for the sweep's runs (store.schema.ALARMS_SCHEMA)
    training: pa.Table | None = None  # the runs' per-epoch metrics (test_acc, memorised, ...; scope epoch)

    @property
    def quantity_name(self) -> str:
        """The quantity as the report names it."""
        return QUANTITY_NAMES.get(self.quantity, self.quantity)

    def axis_keys(self) -> list[str]:
        """Every axis of the configurations, in the order first seen."""
        return list(dict.fromkeys(key for values in self.axes.values() for key in values))

    def label(self, configuration: str, arch: str, dataset: str) -> str:
        """A configuration as people read it: arch, dataset and its axis values."""
        axes = " ".join(f"{k}={v}" for k, v in self.axes.get(configuration, {}).items())
        return f"{arch} {dataset}" + (f" {axes}" if axes else "")


def _axes(table: pa.Table) -> dict[str, dict[str, str]]:
    """configuration -> axis values, from a table with configuration and axes columns."""
    if not {"configuration", "axes"} <= set(table.column_names):
        return {}
    configurations = pc.unique(table["configuration"])
    first = pc.index_in(configurations, value_set=table["configuration"])  # each one's first row
    axes = table["axes"].take(first).to_pylist()
    return {c: dict(a or []) for c, a in zip(configurations.to_pylist(), axes)}


def _check(table: pa.Table, source: str, quantity: str = "trace") -> pa.Table:
    if "quantity" in table.column_names and "value" in table.column_names:
        found = sorted(set(pc.unique(table["quantity"]).to_pylist()))
        table = table.filter(pc.equal(table["quantity"], quantity))
        if table.num_rows == 0:
            raise AnalysisError(f"{source} has no rows of quantity={quantity}; its quantities: {', '.join(found)}")
        table = table.drop_columns([c for c in ("trace",) if c in table.column_names])
        table = table.append_column("trace", table["value"])
    elif quantity != "trace":
        raise AnalysisError(f"quantity={quantity} needs quantity and value columns, which {source} lacks")
    if "configuration" not in table.column_names and {"arch", "dataset"} <= set(table.column_names):
        table = table.append_column("configuration", pc.binary_join_element_wise(
            table["arch"].cast(pa.string()), table["dataset"].cast(pa.string()), "-"))
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise AnalysisError(
            f"{source} lacks the columns {missing}; trajectories need {list(COLUMNS)} in long format "
            "(one row per run, snapshot and layer; quantity + value in place of trace as `sweep export` writes)"
        )
    if table.num_rows == 0:
        raise AnalysisError(f"{source} holds no trajectories: nothing to analyse (is the sweep done?)")
    try:
        table = table.select(list(COLUMNS)).cast(pa.schema([
            ("run_id", pa.string()), ("configuration", pa.string()), ("arch", pa.string()), ("dataset", pa.string()),
            ("eta", pa.float64()), ("seed", pa.int64()), ("step", pa.int64()), ("epoch", pa.float64()),
            ("layer", pa.string()), ("trace", pa.float64()),
        ]))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as err:
        raise AnalysisError(f"{source}: a column has the wrong type ({str(err).splitlines()[0]})") from None
    bad = pc.invert(pc.is_finite(table["trace"]))
    if pc.any(bad).as_py():
        rows = table.filter(bad).slice(0, 3).to_pylist()
        where = ", ".join(f"{r['run_id']} step {r['step']} layer {r['layer']}" for r in rows)
        raise AnalysisError(
            f"{source}: {pc.sum(bad).as_py()} traces are NaN or infinite (for example {where}); "
            "drop those runs or snapshots and run the analysis again"
        )
    return table


def from_store(uri: str, *, sweep: str | None = None, quantity: str = "trace") -> Trajectories:
    """The done runs of one sweep of a store (default: the latest); runs not done or
    damaged are left out and named in the notes."""
    from store import Store, StoreError
    from store.sweeps import select

    try:
        store = Store.open(uri)
        chosen = select(store, sweep)
        runs, damaged = store.read_runs(chosen.run_ids)
    except StoreError as err:
        raise AnalysisError(str(err)) from None
    notes = list(chosen.notes)
    if runs.num_rows == 0 and not damaged:
        raise AnalysisError(f"the store {uri} holds no runs of sweep {chosen.label} yet; launch a sweep into it first")
    if chosen.label not in ("all", "(no manifest)") and len(chosen.sweeps) > 1:
        notes.append(f"sweep {chosen.label} analysed; the store holds {len(chosen.sweeps)} sweeps "
                     "(sweep=ID picks another, sweep=all takes every one, configurations still kept apart)")
    for health in damaged:
        notes.append(f"{health.run_id} is left out: {health.problems[0]}")
    done = runs.filter(pc.equal(runs["status"], "done"))
    if done.num_rows < runs.num_rows:
        counts = {}
        for status in runs.filter(pc.not_equal(runs["status"], "done"))["status"].to_pylist():
            counts[status] = counts.get(status, 0) + 1
        notes.append(f"{runs.num_rows - done.num_rows} of {runs.num_rows} runs are not done "
                     f"({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}) and are left out")
    try:
        table = store.snapshots(runs=done, quantity=quantity)
    except StoreError as err:
        raise AnalysisError(str(err)) from None
    if table.num_rows == 0 and done.num_rows:
        raise AnalysisError(f"the done runs of {uri} have no snapshot rows of quantity={quantity}")
    heads = dict(zip(done["configuration"].to_pylist(), done["head_layer"].to_pylist()))
    return Trajectories(_check(table, f"the store {uri}", quantity), heads, uri, notes, axes=_axes(done),
                        quantity=quantity, alarms=_alarms(store, chosen.run_ids), training=_training(store, done),
                        **_extras(store, done))


def _training(store, done: pa.Table) -> pa.Table | None:
    """The done runs' evaluation metrics per epoch (test accuracy, memorised fraction)."""
    from store import StoreError

    try:
        rows = store.metrics(runs=done, scope="epoch")
    except StoreError as err:
        raise AnalysisError(str(err)) from None
    return rows if rows.num_rows else None


def _alarms(store, run_ids: list[str]) -> pa.Table | None:
    """The alarms raised for these runs while they trained (damaged alarm files skipped:
    `sweep watch` writes them again)."""
    alarms, _ = store.read_alarms(run_ids)
    return alarms if alarms.num_rows else None


def of_runs(store, runs: pa.Table, quantity: str = "trace") -> Trajectories:
    """The trajectories of the given runs of an open store (a table from ``Store.runs``)."""
    table = store.snapshots(runs=runs, quantity=quantity)
    heads = dict(zip(runs["configuration"].to_pylist(), runs["head_layer"].to_pylist()))
    return Trajectories(_check(table, f"the store {store.uri}", quantity), heads, store.uri, quantity=quantity)


def _extras(store, done: pa.Table) -> dict[str, pa.Table]:
    """The optional quantities of the runs that logged them: lambda_max and lambda_min rows,
    spectral densities, the Gauss-Newton split and the pair table (each read only then: another pass
    over the snapshot files costs as much as the first)."""
    from store import StoreError

    monitors = [json.loads(text).get("monitor", {}) for text in done["config"].to_pylist()]

    def logged(key: str, field: str) -> bool:
        return any(m.get(key, {}).get(field) for m in monitors)

    found = {}
    try:
        if logged("eigen", "every") or logged("gauss_newton", "every"):
            rows = store.snapshots(runs=done)  # one pass over the snapshot files for both
            if logged("eigen", "every"):
                found["eigen"] = _check(rows, "the store", "lambda_max")
                found["eigen_min"] = _check(rows, "the store", "lambda_min")
            if logged("gauss_newton", "every"):
                found["split"] = rows.filter(pc.starts_with(rows["quantity"], "split_"))
        if logged("density", "epochs"):
            found["spectra"] = store.spectra(runs=done)
        if logged("interlayer", "every"):
            found["pairs"] = store.pairs(runs=done)
    except StoreError as err:
        raise AnalysisError(str(err)) from None
    return found


def early_middle_late(steps) -> list[int]:
    """The first, middle and last of the logged ``steps`` (fewer when they coincide): the
    points at which the report shows a quantity over training."""
    steps = sorted(set(steps))
    return sorted({steps[0], steps[len(steps) // 2], steps[-1]})


def from_parquet(path: str, *, quantity: str = "trace") -> Trajectories:
    """Trajectories logged by other code (or `sweep export`): a Parquet file or a folder of them."""
    if not Path(path).exists():
        raise AnalysisError(f"no trajectories at {path}: pass trajectories=FILE.parquet or a folder of them")
    try:
        table = pq.read_table(path, use_threads=False)  # threads: see store.files.read_parquet
    except (pa.ArrowException, OSError) as err:
        raise AnalysisError(f"{path} is not readable Parquet ({str(err).splitlines()[0]})") from None
    axes = _axes(table) if "configuration" in table.column_names else {}
    return Trajectories(_check(table, str(path), quantity), {}, str(path), axes=axes, quantity=quantity)


@dataclass(frozen=True)
class Ensemble:
    """One configuration's trajectories of one layer, aligned by step."""

    configuration: str
    arch: str
    dataset: str
    layer: str
    steps: np.ndarray  # [T]
    epochs: np.ndarray  # [T]
    run_ids: list[str]
    eta: np.ndarray  # [R]
    trace: np.ndarray  # [R, T], NaN where a run has no snapshot at that step


def configurations(traj: Trajectories) -> list[tuple[str, str, str]]:
    """(configuration, arch, dataset) of every configuration, sorted."""
    t = traj.table
    return sorted(set(zip(t["configuration"].to_pylist(), t["arch"].to_pylist(), t["dataset"].to_pylist())))


def _of(traj: Trajectories, configuration: str) -> pa.Table:
    return traj.table.filter(pc.equal(traj.table["configuration"], configuration))


def layers_of(traj: Trajectories, configuration: str) -> list[str]:
    """Layer names of a configuration in network order (by first appearance)."""
    return list(dict.fromkeys(_of(traj, configuration)["layer"].to_pylist()))


def resolve_layers(traj: Trajectories, configuration: str, arch: str, layer: str) -> list[str]:
    """``head`` -> the classification head, ``all`` -> every layer, else the named layer."""
    known = layers_of(traj, configuration)
    if layer == "all":
        return known
    if layer == "head":
        if not traj.heads.get(configuration):
            raise AnalysisError(
                f"layer=head needs model metadata, which {traj.source} does not have for {configuration}; "
                f"pass layer=NAME, one of: {', '.join(known)}"
            )
        layer = traj.heads[configuration]
    if layer not in known:
        raise AnalysisError(f"layer {layer!r} is not in {configuration}; its layers are: {', '.join(known)}")
    return [layer]


def ensemble(traj: Trajectories, configuration: str, layer: str) -> tuple[Ensemble, list[str]]:
    """The [runs, steps] matrix of one layer, and warnings about runs with missing steps."""
    t = _of(traj, configuration)
    rows = t.filter(pc.equal(t["layer"], layer))
    arch, dataset = rows["arch"][0].as_py(), rows["dataset"][0].as_py()
    run_ids, run_index = np.unique(rows["run_id"].to_numpy(zero_copy_only=False), return_inverse=True)
    steps, step_index = np.unique(rows["step"].to_numpy(), return_inverse=True)
    cell = run_index * len(steps) + step_index
    if len(np.unique(cell)) < len(cell):
        raise AnalysisError(f"{configuration} layer {layer}: some run has the same step twice; "
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
        warnings.append(f"{configuration}: {len(short)} runs lack some of the {len(steps)} snapshot steps and "
                        f"are aligned by step ({', '.join(short[:5])}{', ...' if len(short) > 5 else ''})")
    return Ensemble(configuration, arch, dataset, layer, steps, epochs, [str(r) for r in run_ids], eta, trace), warnings
