"""A Ray cluster and an S3 server on hosts of their own (``tests.cluster.harness``), started
the way users start them: ``ray start --head`` on one host, ``ray start --address=HEAD:PORT``
on the others, and an S3 API server on a host of its own that every node reaches through
the standard ``AWS_*`` variables (``AWS_ENDPOINT_URL`` among them).

    with Network() as net:
        cluster = Cluster(net, workdir, workers=[("worker1", 4, 1), ("worker2", 2, 1)])
        cluster.sweep("launch", "experiment=smoke", "store=s3://sweeps/a", *cluster.address_overrides)
        cluster.kill_node("worker1"); cluster.start_node("worker1")
        cluster.s3_outage(25)
        cluster.close()
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.cluster.harness import Network, wait_for
from tests.cluster.s3server import CREDENTIALS

ROOT = Path(__file__).resolve().parents[2]
S3_PORT = 9000
RAY_PORT = 6379
OBJECT_STORE = str(100 * 2**20)  # bytes of shared memory per node: runs pass nothing large through Ray


def ray_command() -> str:
    found = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if found is None:
        raise RuntimeError("the `ray` command is not installed beside this Python")
    return found


class Cluster:
    """An S3 host, a Ray head (no CPUs: it only drives) and Ray workers ``(name, cpus, gpus)``.
    ``gpus`` are logical: Ray schedules the GPU fractions, the runs compute on the CPU."""

    def __init__(self, net: Network, workdir: Path, *, workers: list[tuple[str, int, int]],
                 worker_env: dict[str, dict] | None = None):
        self.net, self.workdir = net, Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.s3 = net.host("s3", 2)
        self.head = net.host("head", 10)
        self.workers = {name: net.host(name, 11 + i) for i, (name, _, _) in enumerate(workers)}
        self.resources = {name: (cpus, gpus) for name, cpus, gpus in workers}
        self.worker_env = worker_env or {}
        self.endpoint = f"http://{self.s3.address}:{S3_PORT}"
        # Ray's token authentication, as a cluster reachable from other machines should have it: the
        # same token on every node and for every driver (and none read from ~/.ray of this machine)
        self.env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint, "AWS_EC2_METADATA_DISABLED": "true",
                    "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex}
        self.env.pop("RAY_ADDRESS", None)
        # Ray's files for this cluster, apart from /tmp/ray: `ray start --head` writes its address
        # to <temp dir>/ray_current_cluster, where a later plain ray.init() on this machine would
        # find it and try to join. (Short: Unix socket paths under it must stay under 108 bytes.)
        self.ray_temp = f"/tmp/hsray-{os.getpid()}"
        self.s3_server: subprocess.Popen | None = None
        self.start_s3()
        self.start_head()
        for name in self.workers:
            self.start_node(name)

    # -- the S3 host ------------------------------------------------------------------
    def start_s3(self) -> None:
        ready = self.workdir / "s3-ready.json"
        ready.unlink(missing_ok=True)
        log = open(self.workdir / "s3.log", "ab")
        self.s3_server = self.s3.popen(sys.executable, "-m", "tests.cluster.s3server", "--host", self.s3.address,
                                       "--port", str(S3_PORT), "--bucket", "sweeps", "--ready", str(ready),
                                       env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
        wait_for(ready.exists, 60, "the S3 server to start")
        self.s3_pid = json.loads(ready.read_text())["pid"]

    def s3_outage(self, seconds: float) -> None:
        """The S3 server stops serving (connections refused) for ``seconds``, then serves again."""
        os.kill(self.s3_pid, signal.SIGUSR1)
        time.sleep(seconds)
        os.kill(self.s3_pid, signal.SIGUSR2)

    # -- Ray -----------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"{self.head.address}:{RAY_PORT}"

    @property
    def overrides(self) -> list[str]:
        """What `sweep launch` on the head needs to join this cluster."""
        return [f"cluster.address={self.address}", f"cluster.node_ip_address={self.head.address}"]

    def start_head(self) -> None:
        self.head.run(ray_command(), "start", "--head", f"--node-ip-address={self.head.address}", f"--port={RAY_PORT}",
                      "--num-cpus=0", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
                      f"--temp-dir={self.ray_temp}",
                      f"--object-store-memory={OBJECT_STORE}", env=self.env, timeout=120)

    def start_node(self, name: str, *, prefix: tuple[str, ...] = ()) -> None:
        host, (cpus, gpus) = self.workers[name], self.resources[name]
        env = {**self.env, **self.worker_env.get(name, {})}
        host.run(*prefix, ray_command(), "start", f"--address={self.address}", f"--node-ip-address={host.address}",
                 f"--num-cpus={cpus}", f"--num-gpus={gpus}", "--disable-usage-stats",
                 f"--object-store-memory={OBJECT_STORE}", env=env, timeout=120)
        self.wait_for_nodes()

    def kill_node(self, name: str) -> int:
        """Every process of that host killed at once (SIGKILL): a lost machine."""
        return self.workers[name].kill_all()

    def alive_nodes(self) -> list[str]:
        code = ("import ray; ray.init(address='auto', logging_level='error', log_to_driver=False); "
                "print(' '.join(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']))")
        out = self.head.run(sys.executable, "-c", code, env={**self.env, "RAY_ADDRESS": self.address}, check=False)
        return out.stdout.split()

    def wait_for_nodes(self, timeout: float = 90) -> None:
        want = {h.address for h in self.workers.values() if h.pids()} | {self.head.address}
        wait_for(lambda: want <= set(self.alive_nodes()), timeout, f"Ray nodes {sorted(want)}")

    # -- the sweep command, on the head -------------------------------------------------------
    def sweep(self, *words: str, timeout: float = 900, host=None) -> subprocess.CompletedProcess:
        return (host or self.head).run(sys.executable, "-m", "sweep", *words, env=self.env, check=False,
                                       timeout=timeout, cwd=str(ROOT))

    def start_sweep(self, *words: str, log: str) -> subprocess.Popen:
        """A driver in its own session (killed with its whole process group by ``os.killpg``)."""
        return self.head.popen(sys.executable, "-m", "sweep", *words, env=self.env, cwd=str(ROOT),
                               stdout=open(self.workdir / log, "wb"), stderr=subprocess.STDOUT)

    def dump(self, store: str) -> dict:
        """The store's records and snapshot rows, read on the head (tests.cluster.dump)."""
        out = self.workdir / f"dump-{time.monotonic_ns()}.json"
        self.head.run(sys.executable, "-m", "tests.cluster.dump", store, str(out), env=self.env, cwd=str(ROOT))
        return json.loads(out.read_text())

    def close(self) -> None:
        """Every process of every host killed. (Not `ray stop`: it finds Ray's processes by
        name on the whole machine, so on one host it would stop every node.)"""
        for host in [*self.workers.values(), self.head, self.s3]:
            host.kill_all()
        shutil.rmtree(self.ray_temp, ignore_errors=True)

