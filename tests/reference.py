"""The reference the fault tests compare with: a sweep trained in this process, run by run,
uninterrupted, on a local disk, each run with the one torch thread a Ray task gets."""

from pathlib import Path

import torch

from store import Store
from sweep.grid import expand
from sweep.ledger import register
from workers.train import train


def train_sweep(args: list[str], path: Path | str) -> Store:
    """Register the sweep of ``args`` (its launch overrides) in a new store at ``path`` and train
    every run; the store."""
    sweep = expand(args)
    store = Store.open(str(path), create=True)
    register(store, sweep, args)
    threads = torch.get_num_threads()
    try:
        for config in sweep.runs.values():
            train({**config, "runtime": {**config["runtime"], "threads": 1}}, store)
    finally:
        torch.set_num_threads(threads)
    return store
