"""The grid: a composed config with a ``grid`` section -> every run's plain config.

Per (arch, dataset) the config is composed once with Hydra (the group choices
change defaults, for example the digits dataset's shorter snapshot interval);
each run then sets eta and seed. Grids are data in ``conf/experiment``; this
module only expands them, validates every run, and names the sweep.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from sweep.config import ConfigError, compose_config, run_config
from workers.run_config import RunConfigError, run_id, validate

GRID_KEYS = {"arch", "dataset", "clean_seeds", "noisy_eta", "noisy_seeds", "noisy_first_seed"}


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
    unknown = set(grid) - GRID_KEYS
    missing = GRID_KEYS - set(grid)
    if unknown or missing:
        raise ConfigError(
            f"grid keys: unknown {sorted(unknown)}, missing {sorted(missing)}; expected {sorted(GRID_KEYS)}"
        )
    for key in ("arch", "dataset", "noisy_eta"):
        if not isinstance(grid[key], list) or (key != "noisy_eta" and not grid[key]):
            raise ConfigError(f"grid.{key} must be a list, got {grid[key]!r}")
    for key in ("clean_seeds", "noisy_seeds", "noisy_first_seed"):
        if not isinstance(grid[key], int) or isinstance(grid[key], bool) or grid[key] < 0:
            raise ConfigError(f"grid.{key} must be an integer >= 0, got {grid[key]!r}")
    return grid


def cells(grid: dict) -> list[tuple[float, int]]:
    """(eta, seed) pairs of one (arch, dataset): the clean ensemble, then each noisy eta.

    >>> cells({"clean_seeds": 2, "noisy_eta": [0.4], "noisy_seeds": 2, "noisy_first_seed": 100})
    [(0.0, 0), (0.0, 1), (0.4, 100), (0.4, 101)]
    """
    clean = [(0.0, seed) for seed in range(grid["clean_seeds"])]
    first = grid["noisy_first_seed"]
    noisy = [(float(eta), seed) for eta in grid["noisy_eta"] for seed in range(first, first + grid["noisy_seeds"])]
    return clean + noisy


def expand(overrides: list[str]) -> Sweep:
    """Compose, expand and validate every run of the sweep that ``overrides`` describe.

    Raises ConfigError naming the first bad run; nothing is launched before this returns.
    """
    for word in overrides:
        key = word.partition("=")[0].lstrip("+~")
        if key in ("eta", "seed", "noise_seed", "arch", "dataset"):
            raise ConfigError(
                f"{word}: in a sweep, {key} comes from the grid; change grid.noisy_eta, grid.clean_seeds, "
                "grid.noisy_seeds, grid.arch or grid.dataset instead (or use `sweep run-one` for a single run)"
            )
    base = compose_config(overrides)
    grid = _grid(base)
    runs: dict[str, dict] = {}
    composed = None
    for arch in grid["arch"]:
        for dataset in grid["dataset"]:
            try:
                cell = compose_config([*overrides, f"arch={arch}", f"dataset={dataset}"])
            except ConfigError as err:
                raise ConfigError(f"grid cell arch={arch} dataset={dataset}: {err}") from None
            composed = composed or cell
            for eta, seed in cells(grid):
                config = {**run_config(cell), "eta": eta, "seed": seed}
                try:
                    config = validate(config)
                except RunConfigError as err:
                    raise ConfigError(f"run arch={arch} dataset={dataset} eta={eta} seed={seed}: {err}") from None
                runs[run_id(config)] = config
    spec = json.dumps(sorted(runs), separators=(",", ":"))
    sweep_id = "sweep-" + hashlib.sha256(spec.encode()).hexdigest()[:12]
    for config in runs.values():
        config["runtime"]["sweep_id"] = sweep_id
    return Sweep(sweep_id=sweep_id, runs=runs, composed=composed)


def preflight(sweep: Sweep) -> None:
    """What can be checked on the launching machine before anything is written: each
    dataset's files, and, for a local launch (no cluster address), that the device the
    runs ask for exists here. Raises ConfigError with the fix."""
    cluster = sweep.composed["cluster"]
    if cluster["check_data"]:
        from workers.datasets import DatasetError, check_present

        for config in {c["dataset"]["name"]: c for c in sweep.runs.values()}.values():
            try:
                check_present(config["dataset"]["name"], config["runtime"]["data_root"])
            except DatasetError as err:
                raise ConfigError(f"{err} (cluster.check_data=false skips this check on the launching machine)") \
                    from None
    if not cluster["address"]:
        check_devices({c["runtime"]["device"] for c in sweep.runs.values()})


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
