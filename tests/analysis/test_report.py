import csv
import json
import re
from html.parser import HTMLParser

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis import report
from store import Store
from sweep.grid import expand
from tests.analysis.synthetic import trajectories
from workers.train import train

OUTPUTS = ["table1.csv", "table1.md", "table1.tex", "cohens_d.csv", "sensitivity.csv", "summary.json", "report.html",
           "detection_epochs.png"]


@pytest.fixture
def analyze_cli(sweep_cli):
    return lambda *args: sweep_cli("analyze", *args)


def smoke_store(path, *overrides) -> Store:
    """The smoke sweep (3 clean runs, 1 noisy; 3 epochs) trained into a store at ``path``."""
    store = Store.open(str(path), create=True)
    for config in expand(["experiment=smoke", "train.epochs=3", *overrides]).runs.values():
        train(config, store)
    return store


def header(path):
    with open(path) as f:
        return next(csv.reader(f))


def check_outputs(out, layer):
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    assert header(out / "table1.csv") == report.TABLE1
    assert header(out / "cohens_d.csv") == report.COHENS_D
    assert header(out / "sensitivity.csv") == report.SENSITIVITY
    summary = json.loads((out / "summary.json").read_text())
    for key in ("power", "false_alarm"):
        assert set(summary[key]) == {"count", "n", "rate", "wilson_low", "wilson_high"}
    for key in ("theoretical_false_alarm", "snapshots_per_run", "early_false_alarms", "lag1_autocorrelation",
                "calibration_method"):
        assert key in summary
    page = (out / "report.html").read_text()
    assert "Table 1" in page and page.count("data:image/png;base64,") >= 3 and layer in page
    return summary


def test_external_trajectories_file(tmp_path, analyze_cli):
    path = tmp_path / "traj.parquet"
    pq.write_table(trajectories(layers=("features", "fc"), shift=3.0, shift_at=40), path)
    out = tmp_path / "out"
    no_head = analyze_cli(f"trajectories={path}", f"out={out}")
    assert no_head.returncode == 2 and "layer=head needs model metadata" in no_head.stderr
    assert "one of: features, fc" in no_head.stderr and "Traceback" not in no_head.stderr
    done = analyze_cli(f"trajectories={path}", f"out={out}", "layer=fc", "seed=3", "bootstrap=500")
    assert done.returncode == 0, done.stderr
    summary = check_outputs(out, "fc")
    assert summary["power"]["n"] == 30 and summary["power"]["rate"] > 0.9  # a 3 sd shift from epoch ~10
    assert "| resnet18 | cifar10 | 0.25 | fc |" in done.stdout and "report:" in done.stdout
    rows = list(csv.DictReader(open(out / "cohens_d.csv")))
    assert {r["layer"] for r in rows} == {"features", "fc"} and len(rows) == 6
    fc = [float(r["d"]) for r in rows if r["layer"] == "fc"]
    assert all(d < 0 for d in fc)  # the noisy trace is larger: negative d, the paper's sign
    assert len(list(csv.DictReader(open(out / "sensitivity.csv")))) == 9


def test_a_smoke_store(tmp_path, analyze_cli, sweep_cli):
    store = smoke_store(tmp_path / "s")
    out = tmp_path / "out"
    done = analyze_cli(f"store={tmp_path / 's'}", f"out={out}", "bootstrap=200")
    assert done.returncode == 0, done.stderr
    check_outputs(out, "classifier")  # the head of VGG-11, from the store's metadata
    (figure,) = out.glob("overview_vgg11-digits-*_classifier.png")  # named by its configuration
    assert "no snapshots in the epoch window [10, 20]" in done.stdout  # 3 epochs: said, not fatal
    # the same trajectories exported by `sweep export` give the same Table 1 through trajectories=
    exported = tmp_path / "trace.parquet"
    assert sweep_cli("export", f"store={tmp_path / 's'}", f"out={exported}").returncode == 0
    rows = pq.read_table(exported)
    assert rows.num_rows == store.snapshots(quantity="trace").num_rows
    assert set(rows["quantity"].to_pylist()) == {"trace"}
    again = analyze_cli(f"trajectories={exported}", f"out={tmp_path / 'out2'}", "layer=classifier", "bootstrap=200")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "out2" / "table1.csv").read_text() == (out / "table1.csv").read_text()


@pytest.mark.parametrize("case, message", [
    ("missing", "lacks the columns \\['trace'\\]"),
    ("nan", "traces are NaN or infinite \\(for example resnet18-cifar10-0.0-0 step 100"),
    ("empty_store", "holds no runs"),
    ("no_store", "there is no store at"),
])
def test_bad_input_is_one_message(tmp_path, case, message, analyze_cli):
    table = trajectories(noisy=2, clean=3)
    if case == "missing":
        pq.write_table(table.drop(["trace"]), tmp_path / "t.parquet")
        args = [f"trajectories={tmp_path / 't.parquet'}"]
    elif case == "nan":
        traces = table["trace"].to_pylist()
        traces[0] = float("nan")
        pq.write_table(table.set_column(table.column_names.index("trace"), "trace", pa.array(traces)),
                       tmp_path / "t.parquet")
        args = [f"trajectories={tmp_path / 't.parquet'}"]
    elif case == "empty_store":
        Store.open(str(tmp_path / "s"), create=True)
        args = [f"store={tmp_path / 's'}"]
    else:
        args = [f"store={tmp_path / 'nothing'}"]
    out = analyze_cli(*args, f"out={tmp_path / 'out'}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert re.search(message, out.stderr), out.stderr


def test_gauss_newton_traces_are_called_so_in_every_report(tmp_path, analyze_cli):
    table = trajectories(layers=("features", "fc"), shift=3.0, shift_at=40)
    long = table.drop_columns(["trace"]).append_column("quantity", pa.array(["ggn_trace"] * table.num_rows)) \
        .append_column("value", table["trace"])
    path, out = tmp_path / "ggn.parquet", tmp_path / "out"
    pq.write_table(long, path)
    refused = analyze_cli(f"trajectories={path}", f"out={out}", "layer=fc")
    assert refused.returncode == 2 and "no rows of quantity=trace; its quantities: ggn_trace" in refused.stderr
    done = analyze_cli(f"trajectories={path}", f"out={out}", "layer=fc", "quantity=ggn_trace", "bootstrap=200")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("quantity: the Gauss-Newton trace (ggn_trace)")
    page = (out / "report.html").read_text()
    assert "quantity: the Gauss-Newton trace\n(<code>ggn_trace</code>)" in page
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["quantity"], summary["quantity_name"]) == ("ggn_trace", "Gauss-Newton trace")


def test_eigenvalues_and_densities_reach_the_report_and_the_cusum_runs_on_lambda_max(tmp_path, analyze_cli):
    smoke_store(tmp_path / "s", "monitor.eigen.every=5", "monitor.density.epochs=[1,2,3]", "monitor.density.steps=12")
    out = tmp_path / "out"
    done = analyze_cli(f"store={tmp_path / 's'}", f"out={out}", "bootstrap=200")
    assert done.returncode == 0, done.stderr
    check_outputs(out, "classifier")
    assert len(list(out.glob("lambda_max_vgg11-digits-*_classifier.png"))) == 1
    assert len(list(out.glob("lambda_max_vgg11-digits-*_(network).png"))) == 1
    assert len(list(out.glob("density_vgg11-digits-*_classifier.png"))) == 1
    page = (out / "report.html").read_text()
    assert "spectral densities of classifier" in page and "lambda_max of (network)" in page
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["spectral"]["densities"]) == 2 * 3  # head and whole Hessian at epochs 1, 2, 3
    # the same runs' CUSUM on the largest eigenvalue of the head, and of the whole Hessian
    for layer in ("head", "(network)"):
        eigen = analyze_cli(f"store={tmp_path / 's'}", f"out={tmp_path / layer}", "quantity=lambda_max",
                            f"layer={layer}", "bootstrap=200")
        assert eigen.returncode == 0, eigen.stderr
        assert eigen.stdout.startswith("quantity: the largest eigenvalue (lambda_max)")
        summary = json.loads((tmp_path / layer / "summary.json").read_text())
        assert summary["power"]["n"] == 1 and summary["false_alarm"]["n"] == 3


def test_the_split_and_the_pair_table_reach_the_report(tmp_path, analyze_cli):
    smoke_store(tmp_path / "s", "monitor.gauss_newton.every=11", "monitor.interlayer.every=11",
                "monitor.interlayer.operators=[hessian,ggn,tensor]", "monitor.eigen.every=11",
                "monitor.eigen.layers=all")
    out = tmp_path / "out"
    done = analyze_cli(f"store={tmp_path / 's'}", f"out={out}", "bootstrap=200")
    assert done.returncode == 0, done.stderr
    check_outputs(out, "classifier")
    for operator in ("hessian", "ggn", "tensor"):
        assert len(list(out.glob(f"coupling_vgg11-digits-*_{operator}.png"))) == 1
        assert len(list(out.glob(f"distance_vgg11-digits-*_{operator}.png"))) == 1
    assert len(list(out.glob("tensor_share_vgg11-digits-*.png"))) == 1
    assert len(list(out.glob("stable_rank_vgg11-digits-*.png"))) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["spectral"]["couplings"]) == 3 * 3  # three operators at epochs 1, 2, 3
    assert len(summary["spectral"]["stable_ranks"]) == 1
    page = (out / "report.html").read_text()
    assert "coupling, ggn" in page and "GN-Gap, tensor" in page and "tensor-part share" in page
    assert "stable rank" in page
    pairs = Store.open(str(tmp_path / "s")).pairs()  # VGG-11 is a chain: its graph distance is |l - m|
    assert pairs["distance"].to_pylist() == [abs(a - b) for a, b in zip(pairs["layer_index"].to_pylist(),
                                                                        pairs["other_index"].to_pylist())]


class _Page(HTMLParser):
    """The page's images, and each table's header cells and row count."""

    def __init__(self):
        super().__init__()
        self.images, self.tables, self.title = [], [], ""
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "table":
            self.tables.append({"headers": [], "rows": 0})
        elif tag == "th":
            self.tables[-1]["headers"].append(None)
        elif tag == "tr":
            self.tables[-1]["rows"] += 1
        self._in_title = tag == "h1"

    def handle_data(self, data):
        if self._in_title:
            self.title += data


def parsed(out) -> _Page:
    page = _Page()
    page.feed((out / "report.html").read_text())
    return page


def test_the_page_for_every_layer_of_a_demo_sized_sweep_is_whole_and_small(tmp_path, analyze_cli):
    # the demo's shape: VGG-11's 17 layers, 12 clean and 3 x 6 noisy runs, 33 snapshots
    path = tmp_path / "demo.parquet"
    layers = tuple(f"features.{i}" for i in range(16)) + ("classifier",)
    pq.write_table(trajectories(clean=12, noisy=6, steps=33, layers=layers, shift=2.0, shift_at=15), path)
    out = tmp_path / "out"
    done = analyze_cli(f"trajectories={path}", f"out={out}", "layer=all", "bootstrap=200", "window=[1,8]")
    assert done.returncode == 0, done.stderr
    page = parsed(out)
    pngs = sorted(out.glob("*.png"))
    assert len(page.images) == len(pngs) <= 6  # one small-multiples image, not one figure per layer
    assert all(src.startswith("data:image/png;base64,") for src in page.images)  # every figure embedded
    assert all(t["headers"] and t["rows"] > 1 for t in page.tables)  # every table has its header and rows
    assert len(page.tables) == 3  # Table 1, Cohen's d, sensitivity
    assert (out / "report.html").stat().st_size < 3 * 2**20
    assert "clean against noisy-label runs" in page.title  # no learning curves: no claim about memorisation


def test_the_title_says_when_the_runs_did_not_memorise(tmp_path, analyze_cli):
    smoke_store(tmp_path / "s")  # 2 epochs: nothing is memorised
    out = tmp_path / "out"
    assert analyze_cli(f"store={tmp_path / 's'}", f"out={out}", "bootstrap=200").returncode == 0
    page = parsed(out)
    assert "did not memorise" in page.title
    summary = json.loads((out / "summary.json").read_text())
    (configuration,) = summary["configurations"].values()
    assert summary["memorised"] is False and configuration["memorisation"]["by_eta"]["0.6"]["runs"] == 1
    text = (out / "report.html").read_text()
    assert text.index("did <b>not</b> memorise") < text.index("overview of classifier") < text.index("Table 1")
