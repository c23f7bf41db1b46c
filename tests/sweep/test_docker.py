"""The cluster files in docker/ run commands this project has, with configs that compose."""

import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from sweep.cli import SUBCOMMANDS
from sweep.grid import expand

DOCKER = Path(__file__).resolve().parents[2] / "docker"
FILES = ["Dockerfile", "compose.yaml", "kuberay.yaml", "slurm.sbatch", "README.md"]


def sweep_commands(text):
    """Every `sweep SUBCOMMAND ...` in a file, shell variables replaced by their defaults where
    the file sets one (NAME=${NAME:-default}), else by plain paths."""
    defaults = dict(re.findall(r"^(\w+)=\$\{\1:-([^}$]*)\}$", text, flags=re.M))
    text = re.sub(r'"?\$\{?(\w+)[^"\s]*"?', lambda m: defaults.get(m.group(1), "/" + m.group(1).lower()), text)
    found = re.findall(r"\bsweep ([a-z-]+)((?: [^\s`'\"=]+=[^\s`'\"]*)+)", text)  # with key=value arguments
    return [(command, shlex.split(rest)) for command, rest in found if command != "--help"]


@pytest.mark.parametrize("name", FILES)
def test_every_sweep_command_exists_and_composes(name):
    commands = sweep_commands((DOCKER / name).read_text())
    for command, args in commands:
        assert command in SUBCOMMANDS, f"{name}: sweep {command} is not a subcommand"
        if command == "launch":
            sweep = expand([a for a in args if not a.startswith("store=")])
            assert len(sweep.runs) == 300  # every file launches the paper grid
    if name in ("compose.yaml", "kuberay.yaml", "slurm.sbatch"):
        assert any(command == "launch" for command, _ in commands)


def test_dockerfile_copies_what_exists_and_runs_the_cli():
    text = (DOCKER / "Dockerfile").read_text()
    for sources in re.findall(r"^COPY (.+) \S+$", text, flags=re.M):
        for source in sources.split():
            assert (DOCKER.parent / source).exists(), source
    assert 'CMD ["sweep", "--help"]' in text and "torch==2.13.0" in text


def test_compose_starts_a_head_and_workers_sharing_the_store():
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    assert services["head"]["command"][:3] == ["ray", "start", "--head"]
    assert "--address=head:6379" in services["worker"]["command"]
    for service in services.values():
        assert {"store:/store", "data:/data"} <= set(service["volumes"])


def test_kuberay_job_matches_the_installed_ray_and_asks_for_gpus():
    job = yaml.safe_load((DOCKER / "kuberay.yaml").read_text())
    assert job["kind"] == "RayJob"
    spec = job["spec"]["rayClusterSpec"]
    assert spec["rayVersion"] == ray.__version__  # head, workers and driver must run one Ray version
    worker = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert job["spec"]["entrypoint"].startswith("sweep launch experiment=paper store=s3://")
