"""The report's detection figures: one overview per configuration (the monitored quantity,
test accuracy and memorised fraction on one epoch axis, each run's alarm marked), small
multiples for many layers, the CUSUM of every run, the detection epochs, and Cohen's d.

One colour per eta everywhere (``eta_colours``); clean runs are grey, their band blue.
Each function draws one figure and saves it; ``plt`` is matplotlib.pyplot (Agg).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from analysis.detection import Detection
from analysis.learning import ONSET, Learning

CLEAN = "0.55"  # clean runs: grey lines
BAND = "tab:blue"  # the clean mu0 ± sigma0 band
KNOWN = {0.25: "tab:orange", 0.4: "tab:red", 0.6: "tab:purple"}  # the paper's eta, as every figure draws them


def eta_colours(etas) -> dict[float, str]:
    """A colour per noisy eta: the paper's three fixed, any others from a sequential map."""
    import matplotlib

    others = sorted({round(float(e), 2) for e in etas if e > 0} - set(KNOWN))
    cmap = matplotlib.colormaps["viridis"]
    colours = {e: matplotlib.colors.to_hex(cmap(0.15 + 0.7 * i / max(1, len(others) - 1)))
               for i, e in enumerate(others)}
    return {**KNOWN, **colours}


def _colour(colours: dict, eta: float) -> str:
    return CLEAN if eta == 0 else colours.get(round(float(eta), 2), "tab:gray")


def _scale(ax, d: Detection) -> None:
    """Early-training spikes dwarf the rest on a linear axis: symmetric log above the typical level."""
    typical = float(np.nanmedian(np.abs(d.mu0))) if np.isfinite(d.mu0).any() else 1.0
    ax.set_yscale("symlog", linthresh=max(typical, 1e-6))


def overview(d: Detection, curves: Learning | None, name: str, quantity: str, plt, path: Path) -> Path:
    """The monitored quantity (clean runs thin grey with their band, noisy runs by eta), and
    beneath it, on the same epochs, test accuracy and the noisy runs' memorised fraction;
    each run's first alarm marked with a cross on every panel."""
    e = d.ensemble
    colours = eta_colours(e.eta)
    rows = 3 if curves is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(8, 2.6 + 2.0 * (rows - 1)), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [1.6] + [1] * (rows - 1)})
    ax = axes[0][0]
    ax.fill_between(e.epochs, d.mu0 - d.sigma0, d.mu0 + d.sigma0, color=BAND, alpha=0.2, lw=0,
                    label=f"clean mean ± sd ({int((e.eta == 0).sum())} runs)")
    alarm = d.path.first_alert
    for i in np.argsort(e.eta, kind="stable"):
        eta = e.eta[i]
        ax.plot(e.epochs, e.trace[i], color=_colour(colours, eta), lw=0.5 if eta == 0 else 0.8,
                alpha=0.7 if eta == 0 else 0.85, zorder=1 if eta == 0 else 2)
        if alarm[i] >= 0:
            ax.plot(e.epochs[alarm[i]], e.trace[i, alarm[i]], "x", color="k", ms=5, mew=1.2, zorder=3)
    _scale(ax, d)
    handles = [plt.Line2D([], [], color=CLEAN, lw=1, label="clean runs"),
               *[plt.Line2D([], [], color=colours[round(float(eta), 2)], lw=1.5, label=f"eta = {eta:.2f}")
                 for eta in sorted(set(e.eta) - {0.0})],
               plt.Line2D([], [], color="k", marker="x", ls="", label="first alarm")]
    ax.legend(handles=handles, fontsize=7, ncol=len(handles), loc="upper left", frameon=False)
    ax.set(ylabel=f"{quantity}\n{e.layer} (symlog)",
           title=f"{name}: {quantity} of {e.layer}, accuracy and memorisation")
    if curves is not None:
        index = curves.of(e.run_ids)
        for panel, values, label in ((axes[1][0], curves.test_acc, "test accuracy"),
                                     (axes[2][0], curves.memorised, "memorised fraction\n(noisy runs)")):
            for i, run in enumerate(e.run_ids):
                if run not in index or (values is curves.memorised and e.eta[i] == 0):
                    continue
                row = values[index[run]]
                panel.plot(curves.epochs, row, color=_colour(colours, e.eta[i]), lw=0.5 if e.eta[i] == 0 else 0.8,
                           alpha=0.7)
                if alarm[i] >= 0:
                    at = int(np.argmin(np.abs(curves.epochs - e.epochs[alarm[i]])))
                    panel.plot(curves.epochs[at], row[at], "x", color="k", ms=4, mew=1)
            panel.set(ylabel=label, ylim=(-0.02, 1.02))
        axes[2][0].axhline(ONSET, color="k", lw=0.6, ls=":")
        axes[2][0].text(curves.epochs[0], ONSET + 0.02, f"onset of memorisation ({ONSET:g})", fontsize=7)
    axes[-1][0].set_xlabel("epoch")
    return save(fig, path)


def small_multiples(detections: list[Detection], name: str, quantity: str, plt, path: Path) -> Path:
    """One compact panel per layer: the clean band and each eta's median run, the number of
    noisy runs that alarmed in the corner; one image for every layer of a configuration."""
    count = len(detections)
    cols = min(8, count)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.55 * cols + 0.4, 1.25 * rows + 0.6), squeeze=False, sharex=True)
    colours = eta_colours(detections[0].ensemble.eta)
    for ax, d in zip(axes.flat, detections):
        e = d.ensemble
        ax.fill_between(e.epochs, d.mu0 - d.sigma0, d.mu0 + d.sigma0, color=BAND, alpha=0.25, lw=0)
        for eta in sorted(set(e.eta) - {0.0}):
            ax.plot(e.epochs, np.nanmedian(e.trace[e.eta == eta], axis=0), color=colours[round(float(eta), 2)], lw=0.9)
        _scale(ax, d)
        noisy = e.eta > 0
        ax.set_title(f"{e.layer}", fontsize=6)
        ax.text(0.02, 0.97, f"{int(d.alerted[noisy].sum())}/{int(noisy.sum())}", transform=ax.transAxes,
                fontsize=6, va="top")
        ax.tick_params(labelsize=5)
        ax.yaxis.set_major_formatter(plt.NullFormatter())
        ax.yaxis.set_minor_formatter(plt.NullFormatter())
    for ax in list(axes.flat)[count:]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=BAND, lw=4, alpha=0.4, label="clean mean ± sd"),
               *[plt.Line2D([], [], color=c, lw=1.5, label=f"eta = {eta:.2f}, median run")
                 for eta, c in colours.items() if eta in {round(float(x), 2) for x in detections[0].ensemble.eta}]]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    fig.suptitle(f"{name}: {quantity} of every layer (corner: noisy runs alarmed); epochs on x, symlog y", fontsize=9)
    # fixed margins: tight_layout over dozens of axes costs more than drawing them
    height = 1.25 * rows + 0.6  # inches, as the figure was made
    fig.subplots_adjust(left=0.02, right=0.99, bottom=0.5 / height, top=1 - 0.45 / height, wspace=0.12, hspace=0.45)
    return save(fig, path, tight=False)


def cusum_runs(d: Detection, name: str, plt, path: Path) -> Path:
    """max(S+, S-) of every run, clean grey and noisy by eta (one legend entry each), h dashed,
    each first alarm a cross."""
    e = d.ensemble
    colours = eta_colours(e.eta)
    stat = np.maximum(d.path.upper, d.path.lower)
    fig, ax = plt.subplots(figsize=(8, 3.0))
    for i in np.argsort(e.eta, kind="stable"):
        ax.plot(e.epochs, stat[i], color=_colour(colours, e.eta[i]), lw=0.6, alpha=0.75)
        if d.path.first_alert[i] >= 0:
            ax.plot(e.epochs[d.path.first_alert[i]], stat[i, d.path.first_alert[i]], "x", color="k", ms=4)
    ax.axhline(d.calibration.h, color="k", ls="--", lw=0.9)
    handles = [plt.Line2D([], [], color=CLEAN, label=f"clean ({int((e.eta == 0).sum())} runs, leave-one-out)"),
               *[plt.Line2D([], [], color=colours[round(float(eta), 2)], label=f"eta = {eta:.2f} "
                                                                              f"({int((e.eta == eta).sum())} runs)")
                 for eta in sorted(set(e.eta) - {0.0})],
               plt.Line2D([], [], color="k", ls="--", label=f"h = {d.calibration.h:.2f} ({d.calibration.name})")]
    ax.legend(handles=handles, fontsize=7, loc="upper left", frameon=False)
    ax.set_yscale("symlog", linthresh=max(d.calibration.h, 1e-6))
    ax.set(xlabel="epoch", ylabel="max(S+, S-) (symlog above h)", title=f"{name}: the CUSUM of every run, {e.layer}")
    return save(fig, path)


def detection_epochs(detections: list[Detection], labels: dict, plt, path: Path) -> Path:
    """Each run's first-alarm epoch as a jittered strip per configuration and eta (clean runs'
    alarms are false alarms), one colour per eta, alerts / runs written above each strip."""
    colours = eta_colours(np.concatenate([d.ensemble.eta for d in detections]))
    rng = np.random.default_rng(0)  # jitter only: the same picture every time
    strips = sum(len(set(d.ensemble.eta)) for d in detections)
    fig, ax = plt.subplots(figsize=(min(10.0, max(5.0, 0.9 * strips + 0.9 * len(detections) + 1.5)), 3.4))
    ticks, names, x = [], [], 0.0
    top = max((float(np.nanmax(d.ensemble.epochs)) for d in detections), default=1.0)
    for d in detections:
        start = x
        for eta in sorted(set(d.ensemble.eta)):
            epochs = d.detection_epoch[d.ensemble.eta == eta]
            hit = epochs[np.isfinite(epochs)]
            ax.plot(x + rng.uniform(-0.25, 0.25, len(hit)), hit, "o", ms=4, alpha=0.7, color=_colour(colours, eta),
                    mec="k" if eta == 0 else "none", mew=0.5)
            ax.text(x, top * 1.04, f"{len(hit)}/{len(epochs)}", ha="center", fontsize=7)
            ax.text(x, -0.08 * top, "clean" if eta == 0 else f"{eta:.2f}", ha="center", va="top", fontsize=7)
            x += 1
        ticks.append((start + x - 1) / 2)
        names.append(labels.get(d.ensemble.configuration, d.ensemble.configuration))
        x += 0.8
    ax.set_xticks(ticks, names, fontsize=8)
    ax.tick_params(axis="x", pad=14, length=0)
    ax.set_xlim(-0.7, x - 1.1 + 1.5)  # room on the right for the legend
    present = sorted({round(float(e), 2) for d in detections for e in d.ensemble.eta})
    ax.legend(handles=[plt.Line2D([], [], marker="o", ls="", color=_colour(colours, eta), mec="k" if eta == 0 else
                                  "none", label="clean" if eta == 0 else f"eta = {eta:.2f}") for eta in present],
              fontsize=7, loc="center right", frameon=False)
    ax.set_ylim(-0.02 * top, top * 1.12)
    ax.set(ylabel="epoch of the first alarm")
    ax.set_title("First alarms per run (above each strip: runs that alarmed / runs;\n"
                 "a clean run's alarm is a false alarm)", fontsize=9)
    return save(fig, path)


def effect_sizes(rows: list[dict], name: str, plt, path: Path) -> Path:
    """Cohen's d per layer and eta with its interval: a forest plot for a few layers, a heat map
    with a labelled colour bar for many (values written in it up to 30 layers; the page's table
    has every value and interval)."""
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    etas = sorted({r["eta"] for r in rows})
    colours = eta_colours(etas)
    sign = "d = (clean - noisy) / pooled sd: negative when the noisy runs' value is larger"
    if len(layers) <= 6:
        fig, ax = plt.subplots(figsize=(7, 0.5 * len(layers) * len(etas) + 1.4))
        y = 0
        ticks = []
        for layer in layers:
            for eta in etas:
                r = next(r for r in rows if r["layer"] == layer and r["eta"] == eta)
                ax.errorbar(r["d"], y, xerr=[[r["d"] - r["ci_low"]], [r["ci_high"] - r["d"]]], fmt="o",
                            color=colours[round(eta, 2)], capsize=3, ms=5)
                ax.text(r["ci_high"], y, f"  {r['d']:.2f} ({r['ci_low']:.2f}, {r['ci_high']:.2f})", va="center",
                        fontsize=7)
                ticks.append((y, f"{layer}, eta {eta:.2f}"))
                y += 1
            y += 0.5
        ax.axvline(0, color="k", lw=0.6)
        ax.set_yticks([t for t, _ in ticks], [label for _, label in ticks], fontsize=8)
        ax.invert_yaxis()
        ax.set(xlabel=f"Cohen's d with its 95% interval ({sign})", title=f"{name}: Cohen's d")
        return save(fig, path)
    grid = np.full((len(layers), len(etas)), np.nan)
    for r in rows:
        grid[layers.index(r["layer"]), etas.index(r["eta"])] = r["d"]
    fig, ax = plt.subplots(figsize=(5.2, 0.16 * len(layers) + 1.6))
    limit = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    image = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    for (i, j), value in np.ndenumerate(grid if len(layers) <= 30 else grid[:0]):  # more: the table has them
        if np.isfinite(value):
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=5,
                    color="white" if abs(value) > 0.6 * limit else "black")
    ax.set_yticks(range(len(layers)), layers, fontsize=5)
    ax.set_xticks(range(len(etas)), [f"{e:.2f}" for e in etas], fontsize=7)
    ax.set(xlabel="eta", title=f"{name}: Cohen's d per layer")
    fig.colorbar(image, ax=ax, label="Cohen's d (negative: noisy larger)")
    return save(fig, path)


def save(fig, path: Path, tight: bool = True) -> Path:
    """Save at 100 dpi (the page stays small) and close."""
    import matplotlib.pyplot as plt

    if tight:  # a figure with a colour bar over several axes places itself
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
