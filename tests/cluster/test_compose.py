"""docker/compose.yaml for real: the image of docker/Dockerfile, a Ray head and two workers in
containers sharing the store volume, and the smoke sweep launched in the head as the file's
header says. Its snapshot rows equal those of the same sweep trained here.

Needs a running Docker engine, `docker-compose` and the image `hessian-sweep:latest` (built by
`make cluster-docker`, which makes a local base image where Docker Hub cannot be reached);
skipped with the reason otherwise. The GPU reservation of the workers is left out: no GPU here.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from sweep.check import export
from tests.reference import train_sweep

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "hessian-sweep:latest"
PROJECT = "hessiansweeptest"
ARGS = ["experiment=smoke", "train.epochs=3"]


def unavailable() -> str | None:
    if shutil.which("docker") is None or shutil.which("docker-compose") is None:
        return "docker and docker-compose are not installed (`make cluster-docker` installs them as root)"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "no Docker engine is running (`make cluster-docker` starts one as root)"
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode != 0:
        return f"the image {IMAGE} is not built (`make cluster-docker` builds it)"
    return None


@pytest.fixture
def compose(tmp_path):
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    spec = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    for service in spec["services"].values():
        service.pop("deploy", None)  # the GPU reservation: no GPU here
        service.pop("build", None)  # the image is built already
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(spec))

    def run(*words, check=True, timeout=900):
        done = subprocess.run(["docker-compose", "-p", PROJECT, "-f", str(path), *words], capture_output=True,
                              text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(words)}: {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done

    run("up", "-d", "--no-build", "--scale", "worker=2")
    try:
        yield run
    finally:
        run("down", "-v", "--remove-orphans", check=False)


def test_the_compose_file_runs_the_smoke_sweep_in_containers(compose, tmp_path):
    alive = "import ray; ray.init(address='auto', logging_level='error'); print(sum(n['Alive'] for n in ray.nodes()))"
    for _ in range(90):
        nodes = compose("exec", "-T", "head", "python", "-c", alive, check=False).stdout.strip().splitlines()
        if nodes and nodes[-1] == "3":
            break
        time.sleep(2)
    else:
        raise AssertionError("the two workers did not join the head")
    launch = compose("exec", "-T", "head", "sweep", "launch", *ARGS, "store=/store/smoke", "cluster.address=auto")
    assert "all 4 runs done" in launch.stdout and "Traceback" not in launch.stdout + launch.stderr
    status = compose("exec", "-T", "head", "sweep", "status", "store=/store/smoke").stdout
    assert "4 done" in status and "ray:" in status  # each run names the container node it ran on
    compose("exec", "-T", "head", "sweep", "export", "store=/store/smoke", "out=/store/rows.parquet", "quantity=all")
    head = compose("ps", "-q", "head").stdout.strip()
    subprocess.run(["docker", "cp", f"{head}:/store/rows.parquet", str(tmp_path / "found.parquet")], check=True)

    store = train_sweep(ARGS, tmp_path / "reference")
    export(store, str(tmp_path / "expected.parquet"), quantity="all", stream=io.StringIO())
    found = pq.read_table(tmp_path / "found.parquet").to_pylist()
    expected = pq.read_table(tmp_path / "expected.parquet").to_pylist()
    assert json.dumps(found, default=str) == json.dumps(expected, default=str)
