from collections import Counter
from pathlib import Path

import pytest

from sweep.config import ConfigError
from sweep.grid import expand

PRESETS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "conf" / "experiment").glob("*.yaml"))
NEEDS = {"paper": ["runtime.data_root=/data"]}


def shape(sweep):
    """(arch, dataset, eta) -> number of runs."""
    return Counter((c["arch"]["name"], c["dataset"]["name"], c["eta"]) for c in sweep.runs.values())


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_expands_and_validates(preset):
    sweep = expand([f"experiment={preset}", *NEEDS.get(preset, [])])
    assert sweep.runs and all(c["runtime"]["sweep_id"] == sweep.sweep_id for c in sweep.runs.values())
    assert expand([f"experiment={preset}", *NEEDS.get(preset, [])]).runs.keys() == sweep.runs.keys()


def test_paper_is_the_300_run_testbed():
    sweep = expand(["experiment=paper", "runtime.data_root=/data"])
    assert len(sweep.runs) == 300
    cells = shape(sweep)
    for arch in ("resnet18", "resnet34", "vgg11"):
        for dataset in ("cifar10", "cifar100"):
            assert [cells[(arch, dataset, eta)] for eta in (0.0, 0.25, 0.4, 0.6)] == [20, 10, 10, 10]
    clean = {c["seed"] for c in sweep.runs.values() if c["eta"] == 0}
    noisy = {c["seed"] for c in sweep.runs.values() if c["eta"] > 0}
    assert clean == set(range(20)) and noisy == set(range(1000, 1010))
    one = next(iter(sweep.runs.values()))
    assert (one["arch"]["width"], one["train"]["epochs"], one["train"]["lr"], one["train"]["batch_size"]) == \
        (1.0, 30, 0.1, 128)
    assert (one["monitor"]["every"], one["monitor"]["num_probes"], one["monitor"]["batch_size"]) == (100, 10, 128)
    assert (one["dataset"]["crop_padding"], one["dataset"]["flip"]) == (4, True)


def test_mini_keeps_the_protocol_on_the_digits():
    sweep = expand(["experiment=mini"])
    assert len(sweep.runs) == 150
    assert set(shape(sweep).values()) == {20, 10}
    assert {c["dataset"]["name"] for c in sweep.runs.values()} == {"digits"}
    assert {c["arch"]["width"] for c in sweep.runs.values()} == {0.125}
    assert {(c["monitor"]["num_probes"], c["monitor"]["batch_size"]) for c in sweep.runs.values()} == {(10, 128)}
    demo = expand(["experiment=demo"])
    assert set(demo.runs) < set(sweep.runs)  # the demo is a subset of mini, run for run
    assert [n for (_, _, eta), n in sorted(shape(demo).items())] == [12, 6, 6, 6]


def test_run_ids_follow_content():
    smoke = expand(["experiment=smoke"])
    more = expand(["experiment=smoke", "grid.clean_seeds=5"])
    assert set(smoke.runs) < set(more.runs) and len(more.runs) == 6  # adding seeds adds runs
    changed = expand(["experiment=smoke", "train.epochs=3"])
    assert not set(changed.runs) & set(smoke.runs)  # a changed config is new runs
    elsewhere = expand(["experiment=smoke", "runtime.device=cpu", "cluster.max_retries=0"])
    assert set(elsewhere.runs) == set(smoke.runs)  # where it runs is not what it computes


@pytest.mark.parametrize(
    "overrides, message",
    [
        ([], "this config has no grid: pass experiment=NAME"),
        (["experiment=smoke", "eta=0.5"], "eta comes from the grid; change grid.noisy_eta"),
        (["experiment=smoke", "grid.noisy_eta=[1.5]"], r"eta=1.5 is not allowed: it must be a label-noise rate"),
        (["experiment=smoke", "grid.arch=[resnet50]"], "grid cell arch=resnet50 .*Could not find 'arch/resnet50'"),
        (["experiment=smoke", "train.bogus=1"], "Could not override 'train.bogus'"),
        (["experiment=paper"], "dataset cifar10 needs a data folder: pass runtime.data_root=DIR"),
        (["experiment=nope"], "Could not find 'experiment/nope'"),
    ],
)
def test_bad_sweeps_are_refused_whole(overrides, message):
    with pytest.raises(ConfigError, match=message):
        expand(overrides)


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own-sweep"


def test_the_readme_example_crosses_its_axes_with_the_paper_structure():
    sweep = expand(["experiment=lr_width"], user_dir=EXAMPLE)
    assert len(sweep.runs) == 4 * (8 + 2 * 4)
    cells = Counter((c["train"]["lr"], c["arch"]["width"], c["eta"]) for c in sweep.runs.values())
    assert cells == {(lr, w, eta): (8 if eta == 0 else 4) for lr in (0.1, 0.02) for w in (0.5, 1.0)
                     for eta in (0.0, 0.4, 0.6)}
    one = next(iter(sweep.runs.values()))
    assert one["arch"]["_target_"] == "small_cnn.small_cnn" and one["runtime"]["pythonpath"] == [str(EXAMPLE)]
    assert {tuple(c["runtime"]["axes"]) for c in sweep.runs.values()} == {("train.lr", "arch.width")}
    assert (one["train"]["epochs"], one["monitor"]["every"]) == (30, 10)  # from the preset, not the dataset
    from workers.run_config import configuration

    assert len({configuration(c) for c in sweep.runs.values()}) == 4


def test_the_digits_no_longer_change_the_monitoring_cadence():
    from sweep.config import compose_config

    digits, cifar = compose_config(["dataset=digits"]), compose_config(["dataset=cifar10"])
    assert digits["monitor"] == cifar["monitor"] and digits["train"] == cifar["train"]


def test_axes_can_be_given_on_the_command_line():
    sweep = expand(["experiment=smoke", "++grid.axes={train.lr:[0.1,0.05]}"])  # ++: add or replace
    assert len(sweep.runs) == 8
    assert sorted(c["train"]["lr"] for c in sweep.runs.values()) == [0.05] * 4 + [0.1] * 4
    assert set(expand(["experiment=smoke"]).runs) < set(sweep.runs)  # lr 0.1 is the smoke runs themselves
