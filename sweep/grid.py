"""The grid: a composed config with a ``grid`` section -> every run's plain config.

Per (arch, dataset) the config is composed once with Hydra (the group choices bring
their own keys); each combination of the ``grid.axes`` values then sets its dotted
keys, and each run its eta and seed. Grids are data in ``conf/experiment`` (or a
``--config-dir``); this module only expands them, validates every run, and names the
sweep after its runs, so the same grid is the same sweep and a grown one reuses every
run it already has.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from sweep.config import ConfigError, compose_config, run_config
from workers.run_config import RunConfigError, run_id, validate

GRID_KEYS = {"arch", "dataset", "clean_seeds", "noisy_eta", "noisy_seeds", "noisy_first_seed"}
OPTIONAL_GRID_KEYS = {"axes"}
# Keys that cannot be axes, and what to change instead.
NOT_AXES = {
    "eta": "grid.noisy_eta", "seed": "grid.clean_seeds and grid.noisy_seeds", "noise_seed": "nothing (it follows seed)",
    "arch": "grid.arch", "arch.name": "grid.arch", "arch._target_": "grid.arch (one arch file per model)",
    "dataset": "grid.dataset", "dataset.name": "grid.dataset", "dataset._target_": "grid.dataset",
}


@dataclass(frozen=True)
class Sweep:
    """The expanded sweep: its id (a hash of the spec), and every run by id."""

    sweep_id: str
    runs: dict[str, dict]  # run id -> resolved run config
    composed: dict  # the root config as composed for the first cell (cluster, analysis, store)


def _grid(composed: dict) -> dict:
    grid = composed.get("grid")
    if not grid:
        raise ConfigError("this config has no grid: pass experiment=NAME (paper, mini, demo or smoke)")
    unknown = set(grid) - GRID_KEYS - OPTIONAL_GRID_KEYS
    missing = GRID_KEYS - set(grid)
    if unknown or missing:
        raise ConfigError(
            f"grid keys: unknown {sorted(unknown)}, missing {sorted(missing)}; expected {sorted(GRID_KEYS)} "
            f"and optionally {sorted(OPTIONAL_GRID_KEYS)}"
        )
    for key in ("arch", "dataset", "noisy_eta"):
        if not isinstance(grid[key], list) or (key != "noisy_eta" and not grid[key]):
            raise ConfigError(f"grid.{key} must be a list, got {grid[key]!r}")
    for key in ("clean_seeds", "noisy_seeds", "noisy_first_seed"):
        if not isinstance(grid[key], int) or isinstance(grid[key], bool) or grid[key] < 0:
            raise ConfigError(f"grid.{key} must be an integer >= 0, got {grid[key]!r}")
    axes(grid)
    return grid


def axes(grid: dict) -> list[dict]:
    """Every combination of the ``grid.axes`` values, in the order the keys are written:
    one dict of dotted key -> value each ([{}] without axes).

    >>> axes({"axes": {"train.lr": [0.1, 0.05], "arch.width": [0.25]}})
    [{'train.lr': 0.1, 'arch.width': 0.25}, {'train.lr': 0.05, 'arch.width': 0.25}]
    """
    spec = grid.get("axes") or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"grid.axes must map dotted run-config keys to lists of values, got {spec!r}")
    for key, values in spec.items():
        if key in NOT_AXES:
            raise ConfigError(f"grid.axes.{key}: {key} cannot be an axis; use {NOT_AXES[key]}")
        if key.split(".")[0] == "runtime":
            raise ConfigError(f"grid.axes.{key}: runtime settings do not change what a run computes, so they "
                              "cannot be an axis; set it once (runtime.KEY=VALUE)")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.axes.{key} must be a non-empty list of values, got {values!r}")
        if len({json.dumps(v, sort_keys=True) for v in values}) < len(values):
            raise ConfigError(f"grid.axes.{key} lists a value twice: {values}")
    return [dict(zip(spec, combination)) for combination in itertools.product(*spec.values())]


def _set(config: dict, key: str, value) -> None:
    """Set the dotted ``key`` of a run config (a new key is left for validation to judge)."""
    *sections, last = key.split(".")
    node = config
    for i, section in enumerate(sections):
        if not isinstance(node.get(section), dict):
            known = ", ".join(k for k, v in node.items() if isinstance(v, dict))
            raise RunConfigError(f"{'.'.join(sections[: i + 1])} is not a section of the run config, so {key} "
                                 f"cannot be set; its sections: {known}")
        node = node[section]
    node[last] = value


def _label(values: dict) -> str:
    return " ".join(f"{k}={json.dumps(v)}" for k, v in values.items())


def cells(grid: dict) -> list[tuple[float, int]]:
    """(eta, seed) pairs of one (arch, dataset): the clean ensemble, then each noisy eta.

    >>> cells({"clean_seeds": 2, "noisy_eta": [0.4], "noisy_seeds": 2, "noisy_first_seed": 100})
    [(0.0, 0), (0.0, 1), (0.4, 100), (0.4, 101)]
    """
    clean = [(0.0, seed) for seed in range(grid["clean_seeds"])]
    first = grid["noisy_first_seed"]
    noisy = [(float(eta), seed) for eta in grid["noisy_eta"] for seed in range(first, first + grid["noisy_seeds"])]
    return clean + noisy


def expand(overrides: list[str], *, user_dir: Path | None = None) -> Sweep:
    """Compose, expand and validate every run of the sweep that ``overrides`` describe
    (with ``user_dir``: a --config-dir beside the built-in groups).

    Raises ConfigError naming the first bad cell; nothing is launched before this returns.
    """
    for word in overrides:
        key = word.partition("=")[0].lstrip("+~")
        if key in ("eta", "seed", "noise_seed", "arch", "dataset"):
            raise ConfigError(
                f"{word}: in a sweep, {key} comes from the grid; change grid.noisy_eta, grid.clean_seeds, "
                "grid.noisy_seeds, grid.arch or grid.dataset instead (or use `sweep run-one` for a single run)"
            )
    base = compose_config(overrides, user_dir=user_dir)
    grid = _grid(base)
    runs: dict[str, dict] = {}
    composed = None
    for arch in grid["arch"]:
        for dataset in grid["dataset"]:
            try:
                cell = compose_config([*overrides, f"arch={arch}", f"dataset={dataset}"], user_dir=user_dir)
            except ConfigError as err:
                raise ConfigError(f"grid cell arch={arch} dataset={dataset}: {err}") from None
            composed = composed or cell
            for values in axes(grid):
                where = f"arch={arch} dataset={dataset}" + (f" {_label(values)}" if values else "")
                for eta, seed in cells(grid):
                    config = run_config(cell)
                    config = {**json.loads(json.dumps(config)), "eta": eta, "seed": seed}
                    config["runtime"]["axes"] = dict(values)
                    try:
                        for key, value in values.items():
                            _set(config, key, value)
                        config = validate(config)
                    except RunConfigError as err:
                        raise ConfigError(f"grid cell {where} (eta={eta} seed={seed}): {err}") from None
                    runs[run_id(config)] = config
    spec = json.dumps(sorted(runs), separators=(",", ":"))
    sweep_id = "sweep-" + hashlib.sha256(spec.encode()).hexdigest()[:12]
    for config in runs.values():
        config["runtime"]["sweep_id"] = sweep_id
    return Sweep(sweep_id=sweep_id, runs=runs, composed=composed)


def preflight(sweep: Sweep) -> None:
    """What can be checked on the launching machine before anything is written: each
    dataset's files (a user's dataset is loaded and its arrays checked), that each model
    builds for its dataset and has a classification head, and, for a local launch (no
    cluster address), that the device the runs ask for exists here. Raises ConfigError
    naming the cell and the fix."""
    cluster = sweep.composed["cluster"]
    if cluster["check_data"]:
        from workers.datasets import DatasetError, check_present, dataset, load_dataset
        from workers.models import ModelError, build_model
        from workers.run_config import RunConfigError, check_batch_sizes

        shapes = {}  # dataset config -> (num_classes, in_channels, training images)
        for config in _distinct(sweep.runs.values(), "dataset"):
            section, root = config["dataset"], config["runtime"]["data_root"]
            try:
                entry = dataset(section)
                check_present(section, root)
                if entry.num_classes is None:  # a user's loader: load it once and check what it returns
                    data = load_dataset(section, root)
                    shapes[_key(section)] = (data.num_classes, data.in_channels, len(data.train_labels))
                else:
                    shapes[_key(section)] = (entry.num_classes, entry.in_channels, entry.train_size)
            except DatasetError as err:
                raise ConfigError(f"dataset {section['name']}: {err} (cluster.check_data=false skips this check "
                                  "on the launching machine)") from None
        for config in sweep.runs.values():  # the batch sizes, which an axis may vary, against what was loaded
            try:
                check_batch_sizes(config, shapes[_key(config["dataset"])][2])
            except RunConfigError as err:
                raise ConfigError(f"dataset {config['dataset']['name']}: {err}") from None
        for config in _distinct(sweep.runs.values(), "arch", "dataset"):
            num_classes, in_channels, _ = shapes[_key(config["dataset"])]
            try:
                _build_once(config["arch"], num_classes=num_classes, in_channels=in_channels, build=build_model)
            except ModelError as err:
                raise ConfigError(f"grid cell arch={config['arch']['name']} dataset={config['dataset']['name']}: "
                                  f"{err}") from None
    if not cluster["address"]:
        check_devices({c["runtime"]["device"] for c in sweep.runs.values()})


def _key(section: dict) -> str:
    return json.dumps(section, sort_keys=True)


def _distinct(configs, *sections: str) -> list[dict]:
    """One config per distinct value of ``sections`` (and data folder)."""
    chosen = {}
    for config in configs:
        chosen.setdefault((*(_key(config[s]) for s in sections), config["runtime"]["data_root"]), config)
    return list(chosen.values())


def _build_once(arch: dict, *, num_classes: int, in_channels: int, build) -> None:
    """Build the model without allocating its weights (torch's meta device); a factory that
    cannot build there is built on the CPU, which also gives its real error."""
    import torch

    with torch.random.fork_rng(devices=[]):
        try:
            with torch.device("meta"):
                build(arch, num_classes=num_classes, in_channels=in_channels)
            return
        except Exception:  # noqa: BLE001 - the CPU build below raises the real error, if any
            pass
        build(arch, num_classes=num_classes, in_channels=in_channels)


def check_devices(devices: set[str]) -> None:
    """Raise ConfigError unless every ``cuda[:N]`` among ``devices`` exists on this machine."""
    wanted = sorted(d for d in devices if d.startswith("cuda"))
    if not wanted:
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for device in wanted:
        index = device.partition(":")[2]
        if (int(index) if index.isdigit() else 0) >= count:
            raise ConfigError(
                f"runtime.device={device}, but this machine has {count} CUDA devices and the run would start "
                "here; use runtime.device=auto or cpu (a launch with cluster.address=... runs on the cluster's "
                "machines instead)"
            )
