"""Write the analysis outputs; this module only formats what ``analysis.analyze`` computed.

Files in ``out`` (their columns are an interface, documented in docs/statistics.md):
table1.csv/.md/.tex, cohens_d.csv, sensitivity.csv, summary.json, report.html (one
self-contained page, figures inlined) and the figures as PNG files.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from pathlib import Path

import numpy as np

from analysis import figures
from analysis.analyze import Results
from analysis.detection import primary
from analysis.learning import ONSET, TIMING

TABLE1 = ["configuration", "arch", "dataset", "eta", "layer", "n_runs", "n_alerts", "alert_rate", "det_epoch_mean",
          "det_epoch_std",
          "h", "k", "arl0", "calibration"]
COHENS_D = ["configuration", "arch", "dataset", "layer", "eta", "d", "ci_low", "ci_high", "n_clean", "n_noisy"]
SENSITIVITY = ["configuration", "arch", "dataset", "layer", "k", "arl0", "calibration", "h", "in_horizon_false_alarm",
               "power", "power_low", "power_high", "false_alarm_rate", "false_alarm_low", "false_alarm_high"]


def _csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _epoch(row: dict) -> str:
    if math.isnan(row["det_epoch_mean"]):
        return "-"
    std = row["det_epoch_std"]
    return f"{row['det_epoch_mean']:.1f} ± {0.0 if math.isnan(std) else std:.1f}"


def _identifying(rows: list[dict], axes: list[str]) -> list[str]:
    """The columns that tell a row's configuration: its axes, and the configuration itself
    when arch, dataset and axes do not (configurations that differ in a preset's settings)."""
    named = {(r["arch"], r["dataset"], *(r[a] for a in axes)) for r in rows}
    return [*axes, *(["configuration"] if len({r["configuration"] for r in rows}) > len(named) else [])]


def table1_markdown(rows: list[dict], axes: list[str] = ()) -> str:
    """Table 1 as Markdown: a column per grid axis, and a Configuration column when arch,
    dataset and axes leave several configurations apart."""
    extra = _identifying(rows, list(axes))
    names = [("Configuration" if c == "configuration" else c) for c in extra]
    lines = ["| " + " | ".join([*names, "Arch", "Dataset", "eta", "Layer", "Det. epoch (mean ± std)", "Alert rate",
                                "h"]) + " |",
             "|---" * (7 + len(extra)) + "|"]
    lines += ["".join(f"| {r[c]} " for c in extra)
              + f"| {r['arch']} | {r['dataset']} | {r['eta']:.2f} | {r['layer']} | {_epoch(r)} | "
              f"{r['n_alerts']}/{r['n_runs']} = {r['alert_rate']:.2f} | {r['h']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


def table1_latex(rows: list[dict], axes: list[str] = ()) -> str:
    pm, end = "$\\pm$", "\\\\"
    extra = _identifying(rows, list(axes))
    body = "\n".join(
        "".join(f"{_latex(r[c])} & " for c in extra)
        + f"{r['arch']} & {r['dataset']} & {r['eta']:.2f} & {_epoch(r).replace('±', pm)} & "
        f"{r['alert_rate']:.2f} & {r['h']:.2f} {end}" for r in rows
    )
    head = "".join(f"{_latex(c)} & " for c in extra)
    return (f"\\begin{{tabular}}{{{'l' * len(extra)}llrlrr}}\n\\toprule\n{head}Arch & Dataset & $\\eta$ & Det. epoch & "
            f"Alert rate & $h$ \\\\\n\\midrule\n{body}\n\\bottomrule\n\\end{{tabular}}\n")


def _latex(text) -> str:
    return str(text).replace("_", "\\_")


def _figures(results: Results, out: Path) -> list[tuple[str, Path]]:
    """Every figure, in the order the page shows them: per configuration the overview (the
    head, or the last layer in network order), every layer as small multiples when there are
    several, the CUSUM of every run; then the detection epochs, Cohen's d, and the spectral
    and inside-the-Hessian figures of runs that logged them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    colours = figures.eta_colours(np.concatenate([d.ensemble.eta for d in results.detections]))
    label = results.labels.get
    quantity = results.summary.get("quantity_name", "trace")
    curves = {c.configuration: c for c in results.learning}
    by_configuration: dict[str, list] = {}
    for d in results.detections:
        by_configuration.setdefault(d.ensemble.configuration, []).append(d)
    summarised = []
    for configuration, shown in by_configuration.items():
        d = primary(shown, results.heads.get(configuration))
        summarised.append(d)
        name = label(configuration, configuration)
        tag = f"{configuration}_{d.ensemble.layer}".replace("/", "-")
        made.append((f"{name}: overview of {d.ensemble.layer}",
                     figures.overview(d, curves.get(configuration), name, quantity, plt, out / f"overview_{tag}.png")))
        if len(shown) > 1:
            made.append((f"{name}: every layer", figures.small_multiples(
                shown, name, quantity, plt, out / f"layers_{configuration}.png")))
        made.append((f"{name}: CUSUM of every run, {d.ensemble.layer}",
                     figures.cusum_runs(d, name, plt, out / f"cusum_{tag}.png")))
    made.append(("Detection epochs", figures.detection_epochs(summarised, results.labels, plt,
                                                              out / "detection_epochs.png")))
    for configuration in sorted({r["configuration"] for r in results.cohens_d}):
        rows = [r for r in results.cohens_d if r["configuration"] == configuration]
        name = label(configuration, configuration)
        made.append((f"{name}: Cohen's d",
                     figures.effect_sizes(rows, name, plt, out / f"cohens_d_{configuration}.png")))
    made += _spectral_figures(results, out, plt, colours)
    made += _block_figures(results, out, plt)
    return made


def _spectral_figures(results: Results, out: Path, plt, colours: dict) -> list[tuple[str, Path]]:
    """lambda_max trajectories (clean band, noisy runs) and densities, clean against noisy,
    on a log scale as ../shared/seeds/004 plots them."""
    made, label = [], results.labels.get
    for e in results.eigen:
        name = label(e.configuration, e.configuration)
        clean = e.trace[e.eta == 0]
        fig, ax = plt.subplots(figsize=(7, 3.4))
        if len(clean):
            mean, std = np.nanmean(clean, 0), np.nanstd(clean, 0)
            ax.fill_between(e.epochs, mean - std, mean + std, color="tab:blue", alpha=0.25,
                            label=f"clean mean ± sd ({len(clean)} runs)")
            ax.plot(e.epochs, mean, color="tab:blue")
        for eta in sorted(set(e.eta) - {0.0}):
            for i, row in enumerate(e.trace[e.eta == eta]):
                ax.plot(e.epochs, row, color=colours.get(round(eta, 2), "tab:gray"), lw=0.7, alpha=0.6,
                        label=f"eta = {eta:.2f}" if i == 0 else None)
        positive = e.trace[np.isfinite(e.trace) & (e.trace > 0)]
        if len(positive):  # log scale, its floor at the 1st percentile: a saturated head's 1e-9 would flatten the rest
            ax.set_yscale("log")
            ax.set_ylim(bottom=float(np.percentile(positive, 1)) / 2)
        ax.set(xlabel="epoch", ylabel=f"lambda_max of {e.layer}", title=f"{name}: largest eigenvalue, {e.layer}")
        ax.legend(fontsize=7)
        tag = f"{e.configuration}_{e.layer}".replace("/", "-")
        made.append((f"{name}: lambda_max of {e.layer}", figures.save(fig, out / f"lambda_max_{tag}.png")))
    panels: dict[tuple[str, str], list] = {}
    for d in results.densities:
        panels.setdefault((d.configuration, d.layer), []).append(d)
    for (configuration, layer), shown in panels.items():
        name = label(configuration, configuration)
        fig, axes = plt.subplots(1, len(shown), figsize=(3.4 * len(shown), 3.2), squeeze=False)
        for ax, d in zip(axes[0], shown):
            for group, phi in d.curves.items():
                eta = 0.0 if group == "clean" else float(group.split("=")[1])
                ax.plot(d.grid, np.maximum(phi, phi.max() * 1e-8), lw=0.9,
                        color="tab:blue" if group == "clean" else colours.get(round(eta, 2), "tab:gray"),
                        label=f"{group} ({d.runs[group]})")
            ax.set_yscale("log")
            ax.locator_params(axis="x", nbins=4)  # one run's outlier can stretch the range to 1e5
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
            ax.set(xlabel="eigenvalue", title=f"epoch {d.epoch:.1f}")
        axes[0][0].set_ylabel("density (log)")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{name}: Hessian spectral density, {layer}", fontsize=10)
        tag = f"{configuration}_{layer}".replace("/", "-")
        made.append((f"{name}: spectral densities of {layer}", figures.save(fig, out / f"density_{tag}.png")))
    return made


def _block_figures(results: Results, out: Path, plt) -> list[tuple[str, Path]]:
    """Coupling heat maps (clean and noisy rows, early/middle/late columns), their profile by
    distance, and each layer's tensor-part share and stable rank over training."""
    made, label = [], results.labels.get
    panels: dict[tuple[str, str], list] = {}
    for c in results.couplings:
        panels.setdefault((c.configuration, c.operator), []).append(c)
    for (configuration, operator), shown in panels.items():
        groups = [g for g in ("clean", "noisy") if any(g in c.matrices for c in shown)]
        size = min(2.2 + 0.08 * len(shown[0].layers), 6)
        fig, axes = plt.subplots(len(groups), len(shown), figsize=(size * len(shown) + 1, size * len(groups)),
                                 squeeze=False)
        finite = np.concatenate([m[np.isfinite(m)] for c in shown for m in c.matrices.values()] or [np.zeros(1)])
        top = max(1.0, float(np.percentile(finite, 99)) if finite.size else 1.0)  # one stray ratio must not flatten it
        cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")  # a diagonal estimate <= 0: no ratio
        image = None
        for row, group in enumerate(groups):
            for col, c in enumerate(shown):
                ax = axes[row][col]
                if group in c.matrices:
                    matrix = np.where(np.isfinite(c.matrices[group]), c.matrices[group], np.nan)
                    image = ax.imshow(matrix, vmin=0, vmax=top, cmap=cmap)
                ax.set_title(f"{group} ({c.runs.get(group, 0)}), epoch {c.epoch:.1f}", fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
            axes[row][0].set_ylabel("layer l (network order)")
        for ax in axes[-1]:
            ax.set_xlabel("layer m")
        metric = shown[0].metric
        if image is not None:
            text = ("coupling C_lm (> 1: the tensor part; grey: no estimate)" if metric == "coupling"
                    else "GN-Gap ||H^T_lm||_F / ||G_lm||_F (grey: no estimate)")
            fig.colorbar(image, ax=axes, shrink=0.8, extend="max", label=text)
        name = label(configuration, configuration)
        what = "inter-layer coupling" if metric == "coupling" else "GN-Gap"
        fig.suptitle(f"{name}: {what} of the {operator} blocks", fontsize=10)
        tag = f"{configuration}_{operator}".replace("/", "-")
        made.append((f"{name}: {what}, {operator}", figures.save(fig, out / f"coupling_{tag}.png", tight=False)))
        made.append((f"{name}: {what} by distance, {operator}", _distance_profile(shown, name, what, operator, plt,
                                                                            out / f"distance_{tag}.png")))
    for t in [*results.tensor_shares, *results.stable_ranks]:
        made.append(_layer_map(t, label(t.configuration, t.configuration), plt, out))
    return made


def _layer_map(t, name: str, plt, out: Path) -> tuple[str, Path]:
    """A per-layer quantity over training as an image, one panel per group: the tensor share
    on a diverging scale around 0, the stable rank on a log scale."""
    from matplotlib.colors import LogNorm

    groups = list(t.values)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups) + 1, 0.1 * len(t.layers) + 2.2),
                             squeeze=False)
    values = np.concatenate([v[np.isfinite(v)] for v in t.values.values()])
    if t.quantity == "tensor share":
        limit = max(1e-6, float(np.percentile(np.abs(values), 95)) if values.size else 1.0)  # ratios of estimates
        scale, cmap, extend = dict(vmin=-limit, vmax=limit), "RdBu_r", "both"
        text = "tr(H^T_ll) / tr(H_ll)"
    else:
        positive = values[values > 0]
        low, high = (float(positive.min()), float(positive.max())) if positive.size else (1.0, 10.0)
        scale, cmap, extend = dict(norm=LogNorm(vmin=low, vmax=max(high, low * 1.01))), "viridis", "neither"
        text = "stable rank ||H_ll||_F^2 / ||H_ll||_2^2"
    image = None
    for ax, group in zip(axes[0], groups):
        image = ax.imshow(t.values[group], aspect="auto", cmap=cmap, **scale,
                          extent=(t.epochs[0], t.epochs[-1], len(t.layers) - 0.5, -0.5))
        ax.set(title=group, xlabel="epoch")
    axes[0][0].set_ylabel("layer (network order)")
    fig.colorbar(image, ax=axes, extend=extend, label=text)
    caption, title = {"tensor share": ("tensor-part share", "tensor-part share of each layer's trace"),
                      "stable rank": ("stable rank", "stable rank of each layer's Hessian block")}[t.quantity]
    fig.suptitle(f"{name}: {title}", fontsize=10)
    tag = t.quantity.replace(" ", "_")
    return f"{name}: {caption}", figures.save(fig, out / f"{tag}_{t.configuration}.png", tight=False)


def _distance_profile(shown: list, name: str, what: str, operator: str, plt, path: Path) -> Path:
    """The mean of a coupling matrix over the pairs d apart in the network's graph (seed 001's
    profile by DAG distance; |l - m| in network order for stores logged without distances),
    per group and step."""
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    styles = {0: ":", 1: "--", 2: "-"}
    in_graph = all(c.distance is not None for c in shown)
    for position, c in enumerate(shown):
        index = np.arange(len(c.layers))
        distance = c.distance if in_graph else np.abs(index[:, None] - index[None, :])
        reach = range(1, int(distance.max()) + 1)
        for group, matrix in c.matrices.items():
            finite = np.isfinite(matrix)
            profile = [float(np.mean(matrix[(distance == d) & finite])) if ((distance == d) & finite).any()
                       else np.nan for d in reach]
            ax.plot(list(reach), profile, styles.get(position, "-"), lw=1,
                    color="tab:blue" if group == "clean" else "tab:red", label=f"{group}, epoch {c.epoch:.0f}")
    where = "shortest path in the network's graph" if in_graph else "|l - m| in network order"
    ax.set(xlabel=f"distance ({where})", ylabel=f"mean {what}",
           title=f"{name}: {what} of the {operator} blocks by distance")
    ax.legend(fontsize=7, ncol=2)
    return figures.save(fig, path)


def _html(results: Results, made: list[tuple[str, Path]]) -> str:
    """One self-contained page. Its first screen says what the data show (the title follows
    whether the noisy runs memorised) and shows each configuration's overview; the tables,
    the other figures, the calibration and the notes follow."""
    s = results.summary

    def proportion(p):
        return f"{p['count']}/{p['n']} = {p['rate']:.3f} (Wilson 95%: {p['wilson_low']:.3f}, {p['wilson_high']:.3f})"

    def image(title, path):
        return (f"<figure><img src='data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}' "
                f"alt='{html.escape(title)}'><figcaption>{html.escape(title)}</figcaption></figure>")

    first = [(t, p) for t, p in made if p.name.startswith("overview_")]
    rest = [(t, p) for t, p in made if not p.name.startswith("overview_")]
    title, verdict = _verdict(results)
    autocorr = "".join(
        f"<li>{html.escape(key)}: {v['rho1']:+.3f} ({v['ci_low']:+.3f}, {v['ci_high']:+.3f})</li>"
        for key, v in s["lag1_autocorrelation"].items()
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in results.notes) or "<li>none</li>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1040px;margin:auto;padding:0 12px;color:#222}}
table{{border-collapse:collapse;font-size:12px;margin:6px 0}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}
th{{background:#f0f0f0}}img{{max-width:100%}}figure{{margin:10px 0}}figcaption{{font-size:12px;color:#555}}
.verdict{{font-size:15px;background:#f6f6f0;border-left:4px solid #bb8;padding:6px 10px}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="verdict">{verdict}</p>
<p>Monitored layer: {html.escape(str(s['layer']))}; quantity: the {html.escape(s['quantity_name'])}
(<code>{html.escape(s['quantity'])}</code>); k = {s['k']:g}, ARL0 = {s['arl0']:g} snapshots; h by
{html.escape(', '.join(s['calibration_methods']))} (below). Power over noisy runs: {proportion(s['power'])};
false-alarm rate over clean runs: {proportion(s['false_alarm'])}.</p>
{"".join(image(t, p) for t, p in first)}
<h2>Pooled</h2><ul>
<li>Power over noisy runs: {proportion(s['power'])}</li>
<li>False-alarm rate over clean runs (leave-one-out): {proportion(s['false_alarm'])}</li>
<li>False-alarm probability within a run the calibration promises, P(RL &le; T): {s['in_horizon_false_alarm']:.3f},
{'inside' if s['in_horizon_within_wilson'] else 'outside'} the pooled rate's Wilson interval (the approximation
1 - exp(-T/ARL0), T = {s['snapshots_per_run']}: {s['theoretical_false_alarm']:.3f})</li>
<li>False alarms within the first five snapshots: {s['early_false_alarms']}</li></ul>
<h3>Lag-1 autocorrelation of z under H0 (95% interval)</h3><ul>{autocorr}</ul>
{_alarms_html(results.alarms)}
<h2>Table 1</h2>{_table(_columns(TABLE1, results.axes), results.table1)}
<h2>Figures</h2>{"".join(image(t, p) for t, p in rest)}
<h2>Cohen's d</h2><p>d = (mean clean - mean noisy) / sqrt((s_clean^2 + s_noisy^2) / 2) of each run's mean
{html.escape(s['quantity_name'])} over the epochs {html.escape(str(s.get('window', '')))}: negative when the noisy runs'
value is larger (the paper's sign); {html.escape(s.get('d_interval', ''))} 95% intervals.</p>
{_table(_columns(COHENS_D, results.axes), results.cohens_d) if results.cohens_d else
 "<p>None: no run has snapshots in that window (see the notes).</p>"}
<h2>Sensitivity</h2><p>Power and false-alarm rate for each k and ARL0, h calibrated again for each.</p>
{_table(_columns(SENSITIVITY, results.axes), results.sensitivity)}
<h2>Calibration</h2><p>{html.escape(s['calibration_method'])}</p>
<h2>Notes</h2><ul>{notes}</ul></body></html>
"""


def _verdict(results: Results) -> tuple[str, str]:
    """The page's title and first sentence: what the runs did, from their learning curves."""
    s = results.summary
    quantity = s["quantity_name"]
    memorised = s.get("memorised")
    facts = []
    for configuration, values in s["configurations"].items():
        m = values.get("memorisation")
        if not m:
            continue
        parts = ", ".join(f"{v['final_memorised_median']:.2f} at eta = {eta:.2f}" for eta, v in m["by_eta"].items())
        facts.append(f"{parts} ({html.escape(results.labels.get(configuration, configuration))})")
    ending = "; ".join(facts)
    power = f"{s['power']['count']}/{s['power']['n']} noisy runs alarmed, {s['false_alarm']['count']}/" \
            f"{s['false_alarm']['n']} clean runs"
    if memorised is None:
        return (f"Layer-wise {quantity} CUSUM: clean against noisy-label runs",
                f"{power}. These trajectories come without learning curves, so whether the noisy runs memorised "
                "their corrupted labels cannot be said from them.")
    timing = s.get("alarm_vs_onset")
    when = "" if not timing else (
        f" Against the onset of memorisation (the first epoch a run has fitted half of its corrupted labels), "
        f"the first alarm came earlier in {timing['precedes']}, within an epoch in {timing['coincides']} and later "
        f"in {timing['follows']} of {timing['runs']} noisy runs (median lead {timing['median_lead']:.1f} epochs; "
        f"timing.csv has every run).")
    if memorised:
        most = max(("precedes", "coincides", "follows"), key=lambda r: timing[r]) if timing else "coincides"
        claim = {"coincides": "detection of label memorisation",
                 "precedes": "the alarms came before the runs memorised",
                 "follows": "the alarms came after the runs memorised"}[most]
        return (f"Layer-wise {quantity} CUSUM: {claim}",
                f"The noisy runs memorised their corrupted labels (the median share of them fitted by the end: "
                f"{ending}). {power}.{when}")
    return (f"Layer-wise {quantity} CUSUM on runs that did not memorise their corrupted labels",
            f"The noisy runs did <b>not</b> memorise: by the end they had fitted only a small share of their "
            f"corrupted labels (median: {ending}), where memorisation means at least {ONSET:g} and chance is about "
            f"0.1. So what the rule detects in these runs is how training on noisy labels changes the {quantity}, "
            f"not memorisation. {power}.")


def _table(columns: list[str], rows: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


ALARMS = ["run_id", "layer", "quantity", "step", "epoch", "statistic", "side", "h", "calibration", "clean_runs"]


def _alarms_html(alarms: list[dict]) -> str:
    """The alarms `sweep watch` raised while the runs trained, when there are any."""
    if not alarms:
        return ""
    return (f"<h2>Alarms raised while the runs trained (<code>sweep watch</code>)</h2>"
            f"<p>{len(alarms)} alarms, each from the clean runs done at the time (clean_runs of them).</p>"
            + _table(ALARMS, alarms))


def _columns(columns: list[str], axes: list[str]) -> list[str]:
    """A table's columns with a column per grid axis after the configuration."""
    return [columns[0], *axes, *columns[1:]]


def _cell(value) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3f}"
    return html.escape(str(value))


def _plain(value):
    """JSON-safe: numpy scalars to Python, NaN to null."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def prepare(out: str | Path) -> Path:
    """The output folder, made and checked writable before any work is done; raises
    AnalysisError naming the problem (a file in the way, a folder we may not write)."""
    import tempfile

    from analysis.inputs import AnalysisError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AnalysisError(f"out={out} is a file; pass a folder for the report (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise AnalysisError(f"cannot write the report into out={out}: {err.strerror or err}; choose a writable "
                            "folder") from None
    return out


def write(results: Results, out: str | Path) -> Path:
    """Write every output into ``out``; return the path of report.html."""
    out = prepare(out)
    _csv(out / "table1.csv", _columns(TABLE1, results.axes), results.table1)
    (out / "table1.md").write_text(table1_markdown(results.table1, results.axes))
    (out / "table1.tex").write_text(table1_latex(results.table1, results.axes))
    _csv(out / "cohens_d.csv", _columns(COHENS_D, results.axes), results.cohens_d)
    _csv(out / "sensitivity.csv", _columns(SENSITIVITY, results.axes), results.sensitivity)
    if results.timing:
        _csv(out / "timing.csv", TIMING, results.timing)
    (out / "summary.json").write_text(json.dumps(_plain(results.summary), indent=1))
    (out / "report.html").write_text(_html(results, _figures(results, out)))
    return out / "report.html"
