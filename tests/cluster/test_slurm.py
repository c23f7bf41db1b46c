"""Slurm for real: slurmctld and two slurmd nodes on hosts of their own, and
``docker/slurm.sbatch`` submitted with ``sbatch`` on the smoke preset, to completion. The
store is on the file system every node shares (as the script describes), and its rows equal
those of the same sweep trained here.

Run with ``make cluster`` (needs root, Debian's slurm-wlm and munge; skipped with the reason
otherwise)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.cluster import harness, slurm
from tests.cluster.dump import dump
from tests.reference import train_sweep

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = ["train.epochs=3"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = harness.unavailable() or slurm.unavailable()
    if reason:
        pytest.skip(f"no Slurm cluster here: {reason}")
    with harness.Network() as net:
        yield slurm.Slurm(net, tmp_path_factory.mktemp("slurm"), nodes=2, cpus=2, gpus=1)


def test_the_sbatch_file_runs_the_smoke_sweep_on_two_nodes(cluster, tmp_path):
    args = ["experiment=smoke", *OVERRIDES]
    reference = str(tmp_path / "reference")
    train_sweep(args, reference)

    target = tmp_path / "store"
    log = tmp_path / "job.out"
    env = {"EXPERIMENT": "smoke", "STORE": str(target), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    job = cluster.sbatch("--nodes=2", "--gpus-per-node=1", "--cpus-per-task=2", "--time=20", f"--output={log}",
                         "docker/slurm.sbatch", *OVERRIDES, env=env, cwd=str(ROOT))
    state = cluster.wait(job, timeout=1200)
    text = log.read_text() if log.exists() else "(no job output)"
    assert state == "COMPLETED", f"job {job}: {state}\n{text[-4000:]}"
    assert "Traceback" not in text
    assert "all 4 runs done" in text
    found = json.loads(json.dumps(dump(str(target)), default=str))
    expected = json.loads(json.dumps(dump(reference), default=str))
    assert found["snapshots"] == expected["snapshots"]
    assert {r["host"] for r in found["records"]} == {"node1", "node2"}  # 2 CPUs a node: 2 runs each at once
    assert all(r["node"].startswith("10.213.7.2") for r in found["records"])
