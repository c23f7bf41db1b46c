import inspect
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from sweep.cli import SUBCOMMANDS
from workers.curvature import layerwise_trace

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_every_planned_subcommand():
    out = subprocess.run([sys.executable, "-m", "sweep", "--help"], capture_output=True, text=True, check=True)
    for name in ("launch", "resume", "status", "analyze", "run-one", "data"):
        assert name in out.stdout
    assert set(SUBCOMMANDS) == {"launch", "resume", "status", "analyze", "run-one", "data"}


def test_planned_subcommand_says_so_without_a_traceback():
    out = subprocess.run([sys.executable, "-m", "sweep", "launch", "experiment=demo"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "planned in issue 4" in out.stderr
    assert "Traceback" not in out.stderr


def test_monitor_config_composes_into_estimator_arguments():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config")
    monitor = dict(cfg.monitor)
    assert (monitor.pop("every"), monitor.pop("batch_size"), monitor["num_probes"]) == (100, 128, 10)
    accepted = inspect.signature(layerwise_trace).parameters
    assert set(monitor) <= {name for name, p in accepted.items() if p.kind is p.KEYWORD_ONLY}
