"""The simulation study behind ``analysis.calibration`` (docs/statistics.md): realised
in-horizon false-alarm rate and power of the chain's h (``iid``, the paper's) and of the
dependence-aware h (``serial``), on synthetic configurations shaped like the sweeps'.

Each configuration: 20 clean runs and 10 noisy runs of T snapshots, every run a stationary
AR(1) (Gaussian, or t_3 innovations scaled to unit variance) around a common trend; the
noisy runs' value rises by ``SHIFT`` standard deviations from snapshot T/2 on. Clean runs are
standardised leave-one-out and noisy runs against all 20, as ``sweep analyze`` does; h is
calibrated on the clean z (k = 0.5, ARL0 = 1000), both methods on the same data. Pooled over
the configurations: the clean runs that alarm within T (the false-alarm rate, to compare
with the promised P(RL <= T)) and the noisy runs that alarm (power), with Wilson intervals.
Three methods on the same data: the chain (``iid``), the serial model without its run level
(an AR(1) with the lag-1 autocorrelation: this issue's first version), and ``serial``.

    python -m tests.benchmarks.study_calibration [configurations per cell, default 150]
"""

from __future__ import annotations

import sys
import time

import numpy as np

from analysis.calibration import Phase1
from analysis.cusum import calibrate_chain, cusum, in_horizon_probability, normal_cdf
from analysis.intervals import wilson
from tests.analysis.test_calibration import ar1_runs, leave_one_out

SHIFT = 1.0
# (name, rho, t degrees of freedom or None, share of the variance that is a per-run level)
PROCESSES = [("AR(1) rho = 0", 0.0, None, 0.0), ("AR(1) rho = 0.1", 0.1, None, 0.0),
             ("AR(1) rho = 0.2", 0.2, None, 0.0), ("AR(1) rho = 0.3", 0.3, None, 0.0),
             ("t_3 innovations, rho = 0", 0.0, 3.0, 0.0), ("t_3 innovations, rho = 0.3", 0.3, 3.0, 0.0),
             ("level 0.2 + AR(1) rho = 0.3", 0.3, None, 0.2)]
METHODS = ("iid", "AR(1) only", "serial")


def cell(steps: int, rho: float, tails: float | None, level: float, configurations: int, seed: int) -> dict:
    rng = np.random.default_rng([seed, steps, int(rho * 100), int(tails or 0), int(level * 100)])
    counts = {m: {"false": 0, "hits": 0, "promised": []} for m in METHODS}
    rhos = []
    for c in range(configurations):
        clean = 10 + ar1_runs(rng, 20, steps, rho, tails=tails, level=level)
        noisy = 10 + ar1_runs(rng, 10, steps, rho, tails=tails, level=level)
        noisy[:, steps // 2 :] += SHIFT
        z_clean = leave_one_out(clean)
        z_noisy = (noisy - clean.mean(0)) / clean.std(0, ddof=1)
        phase1 = Phase1(z_clean, seed=c)
        ar1_only = Phase1(z_clean, seed=c)  # the model without the level: rho = the lag-1 autocorrelation
        ar1_only.level, ar1_only.rho = 0.0, float(np.clip(ar1_only.dependence.rho1, -0.9, 0.95))
        rhos.append(phase1.dependence.rho1)
        for method, count in counts.items():
            chosen = ar1_only if method == "AR(1) only" else phase1
            calibration = chosen.calibrate(k=0.5, arl0=1000, method="iid" if method == "iid" else "serial")
            count["false"] += int((cusum(z_clean, k=0.5, h=calibration.h).first_alert >= 0).sum())
            count["hits"] += int((cusum(z_noisy, k=0.5, h=calibration.h).first_alert >= 0).sum())
            count["promised"].append(calibration.in_horizon)
    return {"rho_hat": float(np.mean(rhos)),
            **{m: {"false": wilson(c["false"], 20 * configurations), "power": wilson(c["hits"], 10 * configurations),
                   "promised": float(np.mean(c["promised"]))} for m, c in counts.items()}}


def chain_against_simulation(streams: int = 200_000) -> None:
    """The chain's P(RL <= T) on N(0, 1) z next to direct simulation and 1 - exp(-T/ARL0)."""
    print(f"P(RL <= T) on i.i.d. N(0, 1) z at the chain's h for ARL0 = 1000; {streams:,} simulated runs\n")
    print("| k | h | T | chain | simulated (95%) | 1 - exp(-T/ARL0) |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(7)

    def minus(t):
        return 1 - normal_cdf(-np.asarray(t))

    for k in (0.25, 0.5, 1.0):
        h = calibrate_chain(normal_cdf, minus, k=k, arl0=1000, n_values=0).h
        for steps in (33, 117):
            chain = in_horizon_probability(normal_cdf, minus, k=k, h=h, horizon=steps)
            alarms = (cusum(rng.standard_normal((streams, steps)), k=k, h=h).first_alert >= 0).sum()
            p = wilson(int(alarms), streams)
            print(f"| {k} | {h:.3f} | {steps} | {chain:.4f} | {p.rate:.4f} ({p.wilson_low:.4f}-{p.wilson_high:.4f}) | "
                  f"{1 - np.exp(-steps / 1000):.4f} |", flush=True)
    print()


def main(argv: list[str]) -> int:
    configurations = int(argv[0]) if argv else 150
    start = time.perf_counter()
    chain_against_simulation()
    print(f"{configurations} configurations per cell (20 clean + 10 noisy runs each, shift {SHIFT} sd from T/2); "
          "k = 0.5, ARL0 = 1000; rates with Wilson 95% intervals\n")
    print("| T | process | mean lag-1 rho^ | promised P(RL <= T) | false alarms: " + " / ".join(METHODS)
          + " | power: " + " / ".join(METHODS) + " |")
    print("|---|---|---|---|---|---|")
    for steps in (33, 117):
        for name, rho, tails, level in PROCESSES:
            r = cell(steps, rho, tails, level, configurations, seed=0)

            def rate(p):
                return f"{p.rate:.3f} ({p.wilson_low:.3f}-{p.wilson_high:.3f})"

            print(f"| {steps} | {name} | {r['rho_hat']:+.3f} | {r['iid']['promised']:.3f} | "
                  + " / ".join(rate(r[m]["false"]) for m in METHODS) + " | "
                  + " / ".join(f"{r[m]['power'].rate:.3f}" for m in METHODS) + " |", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
