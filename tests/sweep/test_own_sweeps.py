"""A sweep of one's own: grid axes over run-config keys, presets in a --config-dir, and a
model and a dataset from modules outside the package, through real Hydra composition,
real Ray and the real analysis."""

import csv
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from store import Store

MODELS = '''
from torch import nn


def mlp(*, num_classes, in_channels, hidden=8, size=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * size * size, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


def not_a_module(*, num_classes, in_channels, **options):
    return 3


NOT_CALLABLE = 1
'''

DATA = '''
import numpy as np


def blobs(*, n=96, classes=3, size=4, seed=0):
    """Three classes of 4x4 grey images around different brightness levels."""
    rng = np.random.default_rng(seed)

    def split(m):
        labels = np.arange(m) % classes
        images = rng.normal(40 + 60 * labels[:, None, None, None], 40, (m, 1, size, size))
        return images.clip(0, 255).astype(np.uint8), labels

    (train_x, train_y), (test_x, test_y) = split(n), split(30)
    return {"train_images": train_x, "train_labels": train_y, "test_images": test_x, "test_labels": test_y}


def flat():
    return {"train_images": np.zeros((10, 16), np.uint8), "train_labels": np.zeros(10, int),
            "test_images": np.zeros((5, 16), np.uint8), "test_labels": np.zeros(5, int)}
'''

PRESET = '''
# @package _global_
grid:
  arch: [mlp]
  dataset: [blobs]
  axes:
    train.lr: {lrs}
    arch.hidden: [8, 16]
  clean_seeds: 3
  noisy_eta: [0.6]
  noisy_seeds: 1
  noisy_first_seed: 1000
train:
  epochs: 2
  batch_size: 16
monitor:
  every: 3
  batch_size: 32
cluster:
  progress_every: 0.5
'''


@pytest.fixture
def own(tmp_path, monkeypatch):
    """A user's folder of presets with a model module beside them, and a dataset module in
    a library folder on PYTHONPATH (both outside the package)."""
    mine, lib = tmp_path / "mine", tmp_path / "lib"
    for folder in (mine / "experiment", mine / "arch", mine / "dataset", lib):
        folder.mkdir(parents=True)
    (mine / "mymodels.py").write_text(MODELS)
    (lib / "userdata.py").write_text(DATA)
    (mine / "arch" / "mlp.yaml").write_text("_target_: mymodels.mlp\nhidden: 8\n")
    (mine / "dataset" / "blobs.yaml").write_text("_target_: userdata.blobs\nn: 96\n")
    (mine / "experiment" / "own.yaml").write_text(PRESET.format(lrs="[0.1, 0.05]"))
    monkeypatch.setenv("PYTHONPATH", str(lib))  # Ray's workers inherit it
    monkeypatch.syspath_prepend(str(lib))
    yield mine
    for name in ("mymodels", "userdata"):
        sys.modules.pop(name, None)


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_an_own_sweep_with_two_axes_runs_grows_and_is_analysed_per_configuration(own, tmp_path, sweep_cli):
    store_dir = tmp_path / "store"
    launch = ["launch", "--config-dir", own, "experiment=own", f"store={store_dir}", "cluster.num_cpus=2"]
    first = sweep_cli(*launch)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "16 runs" in first.stdout and "launched 16 of 16 runs" in first.stdout

    store = Store.open(str(store_dir))
    runs = store.runs().to_pylist()
    assert len({r["run_id"] for r in runs}) == 16 and {r["status"] for r in runs} == {"done"}
    assert {tuple(sorted(dict(r["axes"]).items())) for r in runs} == {
        (("arch.hidden", h), ("train.lr", lr)) for h in ("8", "16") for lr in ("0.1", "0.05")}
    assert {r["head_layer"] for r in runs} == {"3"}  # the last nn.Linear of the user's model
    configs = [json.loads(r["config"]) for r in runs]
    assert {(c["train"]["lr"], c["arch"]["hidden"]) for c in configs} == {(0.1, 8), (0.1, 16), (0.05, 8), (0.05, 16)}
    assert len({r["configuration"] for r in runs}) == 4

    again = sweep_cli(*launch)
    assert again.returncode == 0 and "nothing to do: all 16 runs" in again.stdout

    (own / "experiment" / "own.yaml").write_text(PRESET.format(lrs="[0.1, 0.05, 0.02]"))
    grown = sweep_cli(*launch)
    assert grown.returncode == 0, grown.stdout + grown.stderr
    assert "launched 8 of 24 runs (16 already done)" in grown.stdout

    status = sweep_cli("status", f"store={store_dir}")
    assert status.returncode == 0
    assert status.stdout.count("train.lr=0.02 arch.hidden=") == 4  # 2 hidden sizes x (clean, noisy) rows
    assert "total: 0 pending, 0 running, 0 stuck, 24 done" in status.stdout

    out = tmp_path / "report"
    analysed = sweep_cli("analyze", f"store={store_dir}", f"out={out}", "bootstrap=100")
    assert analysed.returncode == 0, analysed.stdout + analysed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["configurations"]) == 6  # one calibration per configuration
    table = read_csv(out / "table1.csv")
    assert {(r["train.lr"], r["arch.hidden"]) for r in table} == {
        (lr, h) for lr in ("0.1", "0.05", "0.02") for h in ("8", "16")}
    for row in table:  # never pooled: 3 clean and 1 noisy run in every configuration
        assert (row["eta"], row["n_runs"]) in {("0.0", "3"), ("0.6", "1")}
        assert summary["configurations"][row["configuration"]]["axes"] == {
            "train.lr": row["train.lr"], "arch.hidden": row["arch.hidden"]}
    assert "| train.lr | arch.hidden | Arch |" in analysed.stdout

    exported = tmp_path / "rows.parquet"
    assert sweep_cli("export", f"store={store_dir}", f"out={exported}", "sweep=all").returncode == 0
    from_file = sweep_cli("analyze", f"trajectories={exported}", f"out={tmp_path / 'from-file'}", "layer=3",
                          "bootstrap=100")
    assert from_file.returncode == 0, from_file.stderr
    assert read_csv(tmp_path / "from-file" / "table1.csv") == table


BAD = [
    ("arch", "_target_: nowhere_xyz.mlp", "module nowhere_xyz cannot be imported"),
    ("arch", "_target_: mymodels.NOT_CALLABLE", "NOT_CALLABLE is a int, not a function or class"),
    ("arch", "_target_: mymodels.not_a_module", "returned a int, not a torch.nn.Module"),
    ("arch", "_target_: mymodels.mlp\nhiden: 3", "arch.hiden is not a keyword argument of mlp; it takes: hidden, "
                                                 "size"),
    ("dataset", "_target_: userdata.flat", "train_images has dtype torch.uint8 and shape (10, 16); it must be "
                                           "uint8 images of shape (N, C, H, W)"),
    ("dataset", "_target_: userdata.blobs\nn: 10", "train.batch_size=16 exceeds the 10 training images of blobs"),
]


@pytest.mark.parametrize("group,body,message", BAD, ids=[m.split(";")[0][:40] for _, _, m in BAD])
def test_a_bad_target_is_one_line_and_exit_2_before_launch(own, tmp_path, sweep_cli, group, body, message):
    (own / group / ("mlp.yaml" if group == "arch" else "blobs.yaml")).write_text(body + "\n")
    result = sweep_cli("launch", "-cd", own, "experiment=own", f"store={tmp_path / 'store'}")
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert "grid cell arch=" in result.stderr or "error: dataset " in result.stderr  # where it is
    assert not (tmp_path / "store").exists()  # refused before anything was written


@pytest.mark.parametrize("axes,message", [
    ("{train.lrr: [0.1]}", "unknown key train.lrr; known keys of train: epochs"),
    ("{train.lr: [-1]}", "train.lr=-1 is not allowed: it must be a positive number"),
    ("{eta: [0.1]}", "grid.axes.eta: eta cannot be an axis; use grid.noisy_eta"),
    ("{runtime.device: [cpu]}", "runtime settings do not change what a run computes"),
    ("{nosection.x: [1]}", "nosection is not a section of the run config"),
    ("{train.lr: []}", "grid.axes.train.lr must be a non-empty list"),
])
def test_bad_axes_name_the_cell_before_launch(own, tmp_path, sweep_cli, axes, message):
    (own / "experiment" / "bad.yaml").write_text(f"# @package _global_\ndefaults:\n  - own\ngrid:\n  axes: {axes}\n")
    result = sweep_cli("launch", "--config-dir", own, "experiment=bad", f"store={tmp_path / 'store'}")
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "store").exists()


def test_config_dir_is_checked_and_only_for_commands_that_compose(tmp_path, sweep_cli):
    missing = sweep_cli("launch", "--config-dir", tmp_path / "nope", "experiment=own", f"store={tmp_path}")
    assert missing.returncode == 2 and "--config-dir" in missing.stderr and "no such folder" in missing.stderr
    status = sweep_cli("status", "--config-dir", tmp_path, f"store={tmp_path}")
    assert status.returncode == 2 and "--config-dir applies to launch and run-one" in status.stderr
    dangling = sweep_cli("launch", "-cd")
    assert dangling.returncode == 2 and "-cd needs a folder" in dangling.stderr


def test_an_installed_copy_finds_its_presets_without_the_checkout(tmp_path):
    """`pip install .` (not editable): conf/ ships as sweep/conf, found from any folder."""
    root, source, target = Path(__file__).resolve().parents[2], tmp_path / "source", tmp_path / "site"
    for name in ("pyproject.toml", "README.md", "conf", "sweep", "workers", "analysis", "store"):  # what pip reads
        copy = shutil.copytree if (root / name).is_dir() else shutil.copy
        source.mkdir(exist_ok=True)
        copy(root / name, source / name)  # built here: the checkout gets no build/ folder
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                            "--target", str(target), str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    shipped = {p.relative_to(target / "sweep" / "conf") for p in (target / "sweep" / "conf").rglob("*.yaml")}
    assert shipped == {p.relative_to(root / "conf") for p in (root / "conf").rglob("*.yaml")}  # every group
    probe = textwrap.dedent("""
        import sweep.config, sweep.grid
        print(sweep.config.CONF_DIR)
        print(len(sweep.grid.expand(["experiment=demo"]).runs))
    """)
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=300)
    assert ran.returncode == 0, ran.stderr
    conf_dir, runs = ran.stdout.split()
    assert Path(conf_dir) == target / "sweep" / "conf" and runs == "30"
