"""The store's tables, their version, and the statuses a run can have.

Schema version 2 (this one) differs from version 1 in three ways: snapshot rows carry
a ``quantity`` column and a generic ``value`` (``trace`` today, ``row_energy`` and
``block_frobenius_sq`` beside it), so a new per-layer quantity is new rows, not new
columns; snapshot chunks no longer repeat the run's identity (arch, dataset, eta,
seed), which the reader joins from the run's record; and a record lists each committed
file with its size and SHA-256, so a truncated or overwritten file is found without
trusting its content. ``sweep store migrate`` rewrites a version-1 store in place.
A run that logs spectral densities also has ``spectra`` chunks (raw Lanczos quadrature), and
one that logs inter-layer blocks ``pairs`` chunks: both added to version 2 without changing
the other tables, so a store without them is unchanged.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 2
STATUSES = ("pending", "running", "done", "failed")
TIME = pa.timestamp("ms", tz="UTC")
_META = {b"schema_version": str(SCHEMA_VERSION).encode()}

# A committed data file of a run: its name relative to the run's folder, and what it
# must be to count as intact.
COMMITTED_FILE = pa.struct([("name", pa.string()), ("bytes", pa.int64()), ("sha256", pa.string())])

# Who a run is: set when it is registered, the same in every record it ever has.
IDENTITY = [
    ("run_id", pa.string()),
    ("sweep_id", pa.string()),  # the sweep that first registered it (a run may belong to several)
    ("configuration", pa.string()),  # hash of the run config minus eta, seed, noise_seed, runtime
    ("arch", pa.string()),
    ("dataset", pa.string()),
    ("eta", pa.float64()),
    ("seed", pa.int64()),
    ("role", pa.string()),  # clean (eta = 0, the calibration ensemble) or noisy
    ("head_layer", pa.string()),  # the classification head's group name, for the analysis
    ("config", pa.string()),  # the full resolved run config as JSON
    ("axes", pa.map_(pa.string(), pa.string())),  # the sweep's grid.axes values of this run, as JSON text
]
# Columns added to version 2 after it first shipped: a file written before has none,
# and is read with them null (``files.read_parquet``); nothing else changed, so no migration.
ADDED = {"axes", "distance", "node"}
RUNS_SCHEMA = pa.schema(
    [
        *IDENTITY,
        ("status", pa.string()),  # one of STATUSES
        ("attempt", pa.int32()),
        ("host", pa.string()),  # the machine's hostname
        ("node", pa.string()),  # on Ray: the node's address and id ("10.0.0.5 ray:1a2b3c4d5e6f"); else null
        ("device", pa.string()),
        ("started_at", TIME),
        ("ended_at", TIME),
        ("heartbeat_at", TIME),
        ("error", pa.string()),
        ("step", pa.int64()),  # steps whose data are committed
        ("total_steps", pa.int64()),
        ("committed", pa.list_(COMMITTED_FILE)),  # the run's data files, in commit order
        ("final_metrics", pa.map_(pa.string(), pa.float64())),
    ],
    metadata=_META,
)
SNAPSHOTS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("step", pa.int64()),
        ("epoch", pa.float64()),  # fractional: step / steps per epoch
        ("layer", pa.string()),
        ("layer_index", pa.int32()),
        ("numel", pa.int64()),
        ("quantity", pa.string()),  # trace, row_energy, block_frobenius_sq, lambda_max, lambda_min, ...
        ("value", pa.float64()),  # the mean of probe_values (an eigenvalue for lambda_*)
        ("stderr", pa.float64()),  # over probes; for lambda_*: the Ritz residual ||H y - theta y||, an error bound
        ("probe_values", pa.list_(pa.float64())),  # the K per-probe estimates
    ],
    metadata=_META,
)
METRICS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("step", pa.int64()),
        ("epoch", pa.float64()),
        ("scope", pa.string()),  # "snapshot" (logged with each snapshot) or "epoch"
        ("name", pa.string()),
        ("value", pa.float64()),
    ],
    metadata=_META,
)
# One row per run, step, block and Lanczos run of stochastic Lanczos quadrature
# (workers.curvature.spectral_density): raw nodes and weights, smoothed at analysis time.
SPECTRA_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("step", pa.int64()),
        ("epoch", pa.float64()),
        ("layer", pa.string()),  # a group, or (network) for the whole Hessian
        ("layer_index", pa.int32()),
        ("numel", pa.int64()),
        ("lanczos_run", pa.int32()),  # 0..R-1, independent starts at one step
        ("nodes", pa.list_(pa.float64())),  # Ritz values theta_j
        ("weights", pa.list_(pa.float64())),  # tau_j^2; they sum to 1 (minus the outliers' mass d/numel)
        ("lower", pa.float64()),  # spectrum bounds: extreme theta -+ residual
        ("upper", pa.float64()),
        ("outliers", pa.list_(pa.float64())),  # deflated top eigenvalues, mass 1/numel each
    ],
    metadata=_META,
)
# One row per run, step, operator and ordered pair of layers (workers.curvature.interlayer_blocks):
# the estimate of ||A_lm||_F^2, A the Hessian or its Gauss-Newton or tensor part.
PAIRS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("step", pa.int64()),
        ("epoch", pa.float64()),
        ("operator", pa.string()),  # hessian, ggn or tensor
        ("design", pa.string()),  # walsh, signs or columns
        ("layer", pa.string()),  # row l
        ("other", pa.string()),  # column m
        ("layer_index", pa.int32()),
        ("other_index", pa.int32()),
        ("distance", pa.int32()),  # shortest path between l and m in the network's graph (null before it was logged)
        ("value", pa.float64()),  # the mean of probe_values: unbiased for ||A_lm||_F^2 (may be < 0)
        ("stderr", pa.float64()),
        ("probe_values", pa.list_(pa.float64())),
    ],
    metadata=_META,
)
# An alarm `sweep watch` raised while a run trained: one file per (run, layer, quantity),
# written once, outside the runs' folders (the watcher is not the run's writer).
ALARMS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("configuration", pa.string()),
        ("layer", pa.string()),
        ("quantity", pa.string()),
        ("step", pa.int64()),  # the snapshot at which the statistic first passed h
        ("epoch", pa.float64()),
        ("statistic", pa.float64()),  # max(S+, S-) there
        ("side", pa.string()),  # up (S+: the quantity rose) or down (S-)
        ("h", pa.float64()),
        ("k", pa.float64()),
        ("arl0", pa.float64()),
        ("calibration", pa.string()),  # iid or serial (analysis.calibration)
        ("clean_runs", pa.int32()),  # the Phase I ensemble's size
        ("raised_at", TIME),
    ],
    metadata=_META,
)

KINDS = {"snapshots": SNAPSHOTS_SCHEMA, "metrics": METRICS_SCHEMA, "spectra": SPECTRA_SCHEMA, "pairs": PAIRS_SCHEMA}

# What the reader adds to every snapshot or metric row: the run's identity, from its record.
JOINED = ["sweep_id", "configuration", "arch", "dataset", "eta", "seed", "axes"]

# The long format of `sweep export`, also what `sweep analyze trajectories=` reads.
EXPORT_COLUMNS = ["run_id", "sweep_id", "configuration", "axes", "arch", "dataset", "eta", "seed", "step", "epoch",
                  "layer", "layer_index", "numel", "quantity", "value", "stderr"]


def record(identity: dict, **fields) -> dict:
    """A full record: ``identity`` (the IDENTITY columns), status ``pending`` and no data,
    with ``fields`` replacing any of the rest."""
    missing = [name for name, _ in IDENTITY if name not in identity and name not in ADDED]
    if missing:
        raise ValueError(f"a run's identity lacks {missing}")
    empty = {"status": "pending", "attempt": 0, "host": None, "node": None, "device": None, "started_at": None,
             "ended_at": None, "heartbeat_at": None, "error": None, "step": 0, "total_steps": None, "committed": [],
             "final_metrics": {}}
    unknown = set(fields) - set(empty)
    if unknown:
        raise ValueError(f"unknown record fields {sorted(unknown)}")
    return {**{name: identity.get(name) for name, _ in IDENTITY}, **empty, **fields}
