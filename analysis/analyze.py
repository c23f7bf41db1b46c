"""Everything ``sweep analyze`` reports, computed from trajectories (no formatting here)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from threadpoolctl import threadpool_limits

from analysis.blocks import Coupling, LayerMap, couplings, stable_ranks, tensor_shares
from analysis.calibration import SERIAL_SUMMARY, check_method
from analysis.cusum import METHOD, CalibrationError
from analysis.detection import (
    MIN_CLEAN,
    Detection,
    autocorrelation,
    detect,
    early_false_alarms,
    primary,
    standardised,
    table_rows,
)
from analysis.inputs import AnalysisError, Trajectories, configurations, ensemble, layers_of, resolve_layers
from analysis.intervals import INTERVALS, cohens_d, wilson
from analysis.learning import Learning, alarm_timing, learning, memorisation_summary, timing_counts
from analysis.spectra import Density, densities, eigen_ensembles


@dataclass
class Results:
    table1: list[dict]
    summary: dict
    cohens_d: list[dict]
    sensitivity: list[dict]
    detections: list[Detection]  # at the main (k, ARL0), for the figures
    notes: list[str] = field(default_factory=list)
    axes: list[str] = field(default_factory=list)  # the grid.axes keys: a column each in every table
    labels: dict[str, str] = field(default_factory=dict)  # configuration -> "arch dataset key=value ..."
    eigen: list = field(default_factory=list)  # lambda_max ensembles (analysis.inputs.Ensemble), when logged
    densities: list[Density] = field(default_factory=list)  # early/middle/late densities, when logged
    couplings: list[Coupling] = field(default_factory=list)  # early/middle/late coupling matrices, when logged
    tensor_shares: list[LayerMap] = field(default_factory=list)  # per layer over training, when logged
    stable_ranks: list[LayerMap] = field(default_factory=list)  # per layer, where pairs and eigenvalues meet
    alarms: list[dict] = field(default_factory=list)  # raised by `sweep watch` while the runs trained
    learning: list[Learning] = field(default_factory=list)  # test accuracy and memorised fraction, when logged
    heads: dict[str, str] = field(default_factory=dict)  # configuration -> its classification head, when known
    timing: list[dict] = field(default_factory=list)  # per noisy run: first alarm and onset of memorisation


def window_means(traj: Trajectories, configuration: str, window: tuple[float, float]) -> tuple[pa.Table, list]:
    """Per-run mean trace of every layer over snapshots with epoch in [window]."""
    t = traj.table
    mask = pc.and_(pc.equal(t["configuration"], configuration),
                   pc.and_(pc.greater_equal(t["epoch"], window[0]), pc.less_equal(t["epoch"], window[1])))
    means = t.filter(mask).group_by(["run_id", "eta", "layer"]).aggregate([("trace", "mean")])
    return means, layers_of(traj, configuration)


def effect_sizes(traj, configuration, arch, dataset, *, window, resamples, rng_seed, interval="noncentral-t"
                 ) -> tuple[list[dict], list[str]]:
    """Cohen's d (eq. 10) for every layer and noisy eta of one configuration."""
    means, layers = window_means(traj, configuration, window)
    if means.num_rows == 0:
        return [], [f"{configuration}: no snapshots in the epoch window {list(window)}; Cohen's d skipped"]
    runs = sorted(set(means["run_id"].to_pylist()))
    index = {r: i for i, r in enumerate(runs)}
    column = {name: j for j, name in enumerate(layers)}
    values = np.full((len(runs), len(layers)), np.nan)
    eta = np.zeros(len(runs))
    for r, e, name, v in zip(means["run_id"].to_pylist(), means["eta"].to_pylist(), means["layer"].to_pylist(),
                             means["trace_mean"].to_pylist()):
        values[index[r], column[name]] = v
        eta[index[r]] = e
    rows, notes = [], []
    for i, level in enumerate(sorted(set(eta) - {0.0})):
        clean, noisy = values[eta == 0], values[eta == level]
        if len(clean) < 2 or len(noisy) < 2:
            notes.append(f"{configuration} eta={level}: {len(clean)} clean and {len(noisy)} noisy runs in the "
                         "window; Cohen's d needs 2 of each")
            continue
        effect = cohens_d(clean, noisy, resamples=resamples, rng=np.random.default_rng([rng_seed, i]),
                          interval=interval)
        for j, name in enumerate(layers):
            rows.append({"configuration": configuration, "arch": arch, "dataset": dataset,
                         "layer": name, "eta": float(level),
                         "d": float(effect.d[j]), "ci_low": float(effect.ci_low[j]),
                         "ci_high": float(effect.ci_high[j]), "n_clean": effect.n_clean, "n_noisy": effect.n_noisy})
    return rows, notes


def _sortable(text: str) -> tuple:
    """An axis value (JSON text) as a sort key: numbers by value, before anything else."""
    try:
        return (0, float(json.loads(text)), "")
    except (ValueError, TypeError):
        return (1, 0.0, text)


def _pooled(detections: list[Detection]) -> tuple[dict, dict]:
    noisy_hits = sum(int(d.alerted[d.ensemble.eta > 0].sum()) for d in detections)
    noisy_n = sum(int((d.ensemble.eta > 0).sum()) for d in detections)
    clean_hits = sum(int(d.alerted[d.ensemble.eta == 0].sum()) for d in detections)
    clean_n = sum(int((d.ensemble.eta == 0).sum()) for d in detections)
    return wilson(noisy_hits, noisy_n).as_dict(), wilson(clean_hits, clean_n).as_dict()


def analyze(
    traj: Trajectories, *, layer: str = "head", k: float = 0.5, arl0: float = 1000.0,
    window: tuple[float, float] = (10, 20), ks: tuple[float, ...] = (0.25, 0.5, 1.0),
    arl0s: tuple[float, ...] = (500, 1000, 2000), resamples: int = 10_000, seed: int = 0,
    calibration: str = "auto", interval: str = "noncentral-t",
) -> Results:
    """Table 1, pooled power and false-alarm rate, Cohen's d and the sensitivity table; h
    by ``calibration`` (``analysis.calibration``: auto, iid or serial)."""
    if not k > 0 or not arl0 > 1:
        raise AnalysisError(f"k={k} must be > 0 and arl0={arl0} > 1")
    try:
        check_method(calibration)
    except ValueError as err:
        raise AnalysisError(str(err)) from None
    if interval not in INTERVALS:
        raise AnalysisError(f"interval={interval!r} is not one of {', '.join(INTERVALS)}")
    # The chain's solves are small: BLAS threads only fight each other (and any other
    # process) over them; one thread was 30 times faster on a busy 2-core machine.
    with threadpool_limits(limits=1, user_api="blas"):
        return _analyze(traj, layer=layer, k=k, arl0=arl0, window=window, ks=ks, arl0s=arl0s, resamples=resamples,
                        seed=seed, calibration=calibration, interval=interval)


def _analyze(traj: Trajectories, *, layer, k, arl0, window, ks, arl0s, resamples, seed, calibration,
             interval) -> Results:
    if len(window) != 2 or window[0] > window[1]:
        raise AnalysisError(f"window={list(window)} must be [first_epoch, last_epoch]")
    notes = list(traj.notes)
    table1, cohens, sensitivity, detections, eigen, spectra, coupled, shares, ranks = [], [], [], [], [], [], [], [], []
    learned: list[Learning] = []
    timing: list[dict] = []  # per noisy run: its first alarm next to the onset of its memorisation
    summary = {"configurations": {}, "calibration": calibration, "d_interval": interval, "window": list(window),
               "k": k, "arl0": arl0,
               "layer": layer, "quantity": traj.quantity, "quantity_name": traj.quantity_name}
    chosen = configurations(traj)  # one pass over the table's rows
    for c, (configuration, arch, dataset) in enumerate(chosen):
        monitored = resolve_layers(traj, configuration, arch, layer)
        config_detections = []
        for name in monitored:
            e, warnings = ensemble(traj, configuration, name)
            notes += warnings
            n_clean = int((e.eta == 0).sum())
            if n_clean < MIN_CLEAN:
                notes.append(f"{configuration}: {n_clean} clean runs, fewer than the {MIN_CLEAN} that leave-one-out "
                             "calibration needs; skipped")
                break
            try:
                prepared = standardised(e, seed=seed)
                d = detect(e, k=k, arl0=arl0, method=calibration, prepared=prepared)
            except CalibrationError as err:
                notes.append(f"{configuration} layer {name}: {err}; skipped (more clean runs or snapshots give a "
                             "steadier baseline)")
                break
            config_detections.append(d)
            table1 += table_rows(d)
            for sk in ks:
                for sa in arl0s:
                    try:
                        alt = d if (sk, sa) == (k, arl0) else detect(e, k=sk, arl0=sa, method=calibration,
                                                                     prepared=prepared)
                    except CalibrationError as err:
                        notes.append(f"{configuration} layer {name}: sensitivity at k={sk}, arl0={sa}: {err}")
                        continue
                    power, false_alarm = _pooled([alt])
                    sensitivity.append({
                        "configuration": configuration, "arch": arch, "dataset": dataset, "layer": name,
                        "k": sk, "arl0": sa, "calibration": alt.calibration.name,
                        "h": alt.calibration.h, "in_horizon_false_alarm": alt.calibration.in_horizon,
                        "power": power["rate"], "power_low": power["wilson_low"],
                        "power_high": power["wilson_high"], "false_alarm_rate": false_alarm["rate"],
                        "false_alarm_low": false_alarm["wilson_low"], "false_alarm_high": false_alarm["wilson_high"],
                    })
        if not config_detections:
            continue
        eigen += eigen_ensembles(traj, configuration, monitored)
        spectra += densities(traj, configuration, monitored)
        coupled += couplings(traj, configuration)
        shares += tensor_shares(traj, configuration)
        ranks += stable_ranks(traj, configuration)
        curves = learning(traj.training, configuration)
        if curves is not None:
            learned.append(curves)
        detections += config_detections
        rows, more = effect_sizes(traj, configuration, arch, dataset, window=window, resamples=resamples,
                                  rng_seed=seed * 1000 + c, interval=interval)
        cohens += rows
        notes += more
        head = primary(config_detections, traj.heads.get(configuration))
        if curves is not None:
            timing += alarm_timing(curves, head)
        summary["configurations"][configuration] = {
            "arch": arch, "dataset": dataset,
            "memorisation": memorisation_summary(curves) if curves is not None else None,
            "h": head.calibration.h, "calibration": head.calibration.name,
            "calibration_detail": head.calibration.method, "in_horizon_false_alarm": head.calibration.in_horizon,
            "normal_scores_rho1": head.calibration.rho, "run_level_share": head.calibration.level,
            "lag1_autocorrelation": autocorrelation(head),
            "early_false_alarms": early_false_alarms(head), "snapshots_per_run": len(head.ensemble.steps),
        }
    if not detections:
        raise AnalysisError("no configuration has enough clean runs to calibrate: " + "; ".join(notes))
    power, false_alarm = _pooled(detections)
    snapshots = int(np.median([len(d.ensemble.steps) for d in detections]))
    clean = [int((d.ensemble.eta == 0).sum()) for d in detections]
    promised = float(np.dot(clean, [d.calibration.in_horizon for d in detections]) / sum(clean))
    methods = sorted({d.calibration.name for d in detections})
    summary.update({
        "power": power, "false_alarm": false_alarm, "snapshots_per_run": snapshots,
        "theoretical_false_alarm": 1 - math.exp(-snapshots / arl0),
        "in_horizon_false_alarm": promised,  # P(RL <= T) the calibration promises, pooled over the clean runs
        "in_horizon_within_wilson": bool(false_alarm["wilson_low"] <= promised <= false_alarm["wilson_high"]),
        "calibration_methods": methods,
        "calibration_method": " ".join({"iid": "iid: " + METHOD, "serial": "serial: " + SERIAL_SUMMARY}[m]
                                       for m in methods),
        "early_false_alarms": sum(early_false_alarms(d) for d in detections),
        "lag1_autocorrelation": {key: v["lag1_autocorrelation"] for key, v in summary["configurations"].items()},
        "notes": notes,
    })
    keys = traj.axis_keys()
    for row in (*table1, *cohens, *sensitivity):
        row.update({key: traj.axes.get(row["configuration"], {}).get(key, "") for key in keys})
    order = {c: (arch, dataset, *(_sortable(traj.axes.get(c, {}).get(key, "")) for key in keys), c)
             for c, arch, dataset in chosen}
    for rows in (table1, cohens, sensitivity):  # configurations by arch, dataset and axis values; stable within
        rows.sort(key=lambda row: order[row["configuration"]])
    for configuration, values in summary["configurations"].items():
        values["axes"] = traj.axes.get(configuration, {})
    labels = {c: traj.label(c, arch, dataset) for c, arch, dataset in chosen if c in summary["configurations"]}
    summary["spectral"] = {"lambda_max": sorted({f"{e.configuration} {e.layer}" for e in eigen}),
                           "densities": sorted({f"{d.configuration} {d.layer} step {d.step}" for d in spectra}),
                           "couplings": sorted({f"{c.configuration} {c.operator} step {c.step}" for c in coupled}),
                           "tensor_shares": sorted({t.configuration for t in shares}),
                           "stable_ranks": sorted({t.configuration for t in ranks})}
    alarms = [] if traj.alarms is None else traj.alarms.sort_by("raised_at").to_pylist()
    summary["online_alarms"] = len(alarms)
    memorised = [v["memorisation"]["memorised"] for v in summary["configurations"].values() if v["memorisation"]]
    summary["memorised"] = None if not memorised else all(memorised)  # None: no learning curves to judge by
    summary["alarm_vs_onset"] = timing_counts(timing) if timing else None
    return Results(table1, summary, cohens, sensitivity, detections, notes, keys, labels, eigen, spectra, coupled,
                   shares, ranks, alarms, learned, dict(traj.heads), timing)
