"""The CUSUM one snapshot at a time: alarms while a run is still training.

Phase I is what ``sweep analyze`` does for a configuration and layer (the clean runs' mean
and standard deviation per snapshot step, h calibrated on their leave-one-out z by
``analysis.calibration``); Phase II follows one run, value by value:

    from analysis.online import OnlineCusum

    cusum = OnlineCusum.from_store("runs/mini", layer="head")   # or .from_trajectories("t.parquet", layer=...)
    for step, value in my_training_loop():                       # the same snapshot steps as the clean runs
        alarm = cusum.update(step, value)
        if alarm:
            print(alarm)                                         # run, layer, step, epoch, statistic > h

``sweep watch`` (sweep/watch.py) runs one per run of a sweep as its snapshots are committed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from analysis.calibration import check_method
from analysis.cusum import Calibration
from analysis.detection import standardised
from analysis.inputs import AnalysisError, Trajectories, configurations, ensemble, resolve_layers


@dataclass(frozen=True)
class Alarm:
    """The first snapshot at which max(S+, S-) passed h."""

    run_id: str | None
    configuration: str
    layer: str
    step: int
    epoch: float
    statistic: float
    side: str  # up (S+: the quantity rose above the clean runs) or down (S-)
    h: float

    def __str__(self) -> str:
        run = f"run {self.run_id} " if self.run_id else ""
        return (f"alarm: {run}layer {self.layer} step {self.step} (epoch {self.epoch:.2f}): "
                f"{'S+' if self.side == 'up' else 'S-'} = {self.statistic:.3f} > h = {self.h:.3f}")


class OnlineCusum:
    """The two-sided CUSUM of eq. (11) on one run, updated one snapshot at a time against a
    Phase I ensemble; the first time the statistic passes h, ``update`` returns the alarm
    (and ``alarm`` keeps it); before and after, it returns None."""

    def __init__(self, *, configuration: str, layer: str, steps: np.ndarray, epochs: np.ndarray,
                 mu0: np.ndarray, sigma0: np.ndarray, calibration: Calibration, calibrated_on: list[str],
                 run_id: str | None = None):
        self.configuration, self.layer, self.run_id = configuration, layer, run_id
        self.steps, self.epochs = np.asarray(steps), np.asarray(epochs)
        self.mu0, self.sigma0 = np.asarray(mu0), np.asarray(sigma0)
        self.calibration, self.calibrated_on = calibration, list(calibrated_on)  # the Phase I runs
        self._index = {int(s): i for i, s in enumerate(self.steps)}
        self.upper = self.lower = 0.0
        self.last_step: int | None = None
        self.alarm: Alarm | None = None

    @classmethod
    def from_trajectories(cls, source: Trajectories | str, *, configuration: str | None = None,
                          layer: str = "head", quantity: str = "trace", k: float = 0.5, arl0: float = 1000.0,
                          calibration: str = "auto", seed: int = 0, run_id: str | None = None) -> OnlineCusum:
        """Phase I from trajectories (a ``Trajectories``, or a Parquet file as ``sweep export``
        writes): the clean runs (eta = 0) of ``configuration`` (may be left out when there
        is one), layer ``head`` (needs the store's model metadata) or a layer name."""
        from analysis import inputs

        traj = source if isinstance(source, Trajectories) else inputs.from_parquet(source, quantity=quantity)
        known = {c: (arch, dataset) for c, arch, dataset in configurations(traj)}
        if configuration is None:
            if len(known) != 1:
                raise AnalysisError(f"{traj.source} holds {len(known)} configurations; pass configuration=, one "
                                    f"of: {', '.join(sorted(known))}")
            configuration = next(iter(known))
        if configuration not in known:
            raise AnalysisError(f"configuration {configuration!r} is not in {traj.source}; it holds: "
                                f"{', '.join(sorted(known))}")
        try:
            check_method(calibration)
        except ValueError as err:
            raise AnalysisError(str(err)) from None
        (name,) = resolve_layers(traj, configuration, known[configuration][0], layer)
        e, _ = ensemble(traj, configuration, name)
        try:
            s = standardised(e, seed=seed)
        except ValueError as err:
            raise AnalysisError(f"{configuration}: {err}") from None
        return cls(configuration=configuration, layer=name, steps=e.steps, epochs=e.epochs, mu0=s.mu0,
                   sigma0=s.sigma0, calibration=s.phase1.calibrate(k=k, arl0=arl0, method=calibration),
                   calibrated_on=[r for r, eta in zip(e.run_ids, e.eta) if eta == 0], run_id=run_id)

    @classmethod
    def from_store(cls, uri: str, *, sweep: str | None = None, configuration: str | None = None,
                   layer: str = "head", quantity: str = "trace", k: float = 0.5, arl0: float = 1000.0,
                   calibration: str = "auto", seed: int = 0, run_id: str | None = None) -> OnlineCusum:
        """Phase I from the done runs of a store's sweep (default: the latest)."""
        from analysis import inputs

        return cls.from_trajectories(inputs.from_store(uri, sweep=sweep, quantity=quantity),
                                     configuration=configuration, layer=layer, k=k, arl0=arl0,
                                     calibration=calibration, seed=seed, run_id=run_id)

    def follow(self, run_id: str | None = None) -> OnlineCusum:
        """A fresh statistic on the same Phase I, for another run."""
        return OnlineCusum(configuration=self.configuration, layer=self.layer, steps=self.steps, epochs=self.epochs,
                           mu0=self.mu0, sigma0=self.sigma0, calibration=self.calibration,
                           calibrated_on=self.calibrated_on, run_id=run_id)

    @property
    def h(self) -> float:
        return self.calibration.h

    @property
    def clean_runs(self) -> int:
        return len(self.calibrated_on)

    def covers(self, step: int) -> bool:
        """Whether ``step`` is one of the Phase I ensemble's snapshot steps."""
        return int(step) in self._index

    def update(self, step: int, value: float) -> Alarm | None:
        """Add the run's value at snapshot ``step`` (steps in increasing order, each one of
        the Phase I ensemble's); the alarm when this is where the statistic first passes h."""
        if not self.covers(step):
            shown = ", ".join(str(int(s)) for s in self.steps[:4])
            raise ValueError(f"step {step} is not a snapshot step of the clean runs ({shown}, ... "
                             f"{int(self.steps[-1])}); log the monitored quantity at the same steps as they did")
        if self.last_step is not None and step <= self.last_step:
            raise ValueError(f"step {step} comes after step {self.last_step}; give the snapshots in order")
        self.last_step = int(step)
        i = self._index[int(step)]
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (float(value) - self.mu0[i]) / self.sigma0[i]
        if not math.isfinite(z):  # no spread in the clean runs at this step: no evidence (as the batch rule)
            return None
        k = self.calibration.k
        self.upper, self.lower = max(0.0, self.upper + z - k), max(0.0, self.lower - z - k)
        if self.alarm is None and max(self.upper, self.lower) > self.h:
            up = self.upper >= self.lower
            self.alarm = Alarm(self.run_id, self.configuration, self.layer, int(step), float(self.epochs[i]),
                               float(max(self.upper, self.lower)), "up" if up else "down", self.h)
            return self.alarm
        return None
