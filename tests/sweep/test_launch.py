"""The sweep on real Ray: a local Ray started by the driver, and Ray's own
``ray.cluster_utils.Cluster`` (a head and two worker nodes on 127.0.0.1)."""

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import torch

from store import Store
from sweep.grid import expand
from sweep.launch import drive
from sweep.status import report
from workers.train import train

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def no_usage_stats(monkeypatch):
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")


def sweep_cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "sweep", *args], capture_output=True, text=True, **kwargs)


def start_sweep_cli(*args):
    """A driver in its own session, so the test can kill it and everything it started."""
    return subprocess.Popen([sys.executable, "-m", "sweep", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def wait_for(condition, timeout=120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


def reference_snapshots(tmp_path, runs):
    """Each run trained in this process, uninterrupted, with the one thread a Ray task gets."""
    store = Store.open(str(tmp_path / "reference"), create=True)
    threads = torch.get_num_threads()
    try:
        for config in runs.values():
            train({**config, "runtime": {**config["runtime"], "threads": 1}}, store)
    finally:
        torch.set_num_threads(threads)
    return by_run(store)


def by_run(store):
    table = store.snapshots().sort_by([("run_id", "ascending"), ("step", "ascending"), ("quantity", "ascending"),
                                       ("layer", "ascending")])
    rows = {}
    for row in table.to_pylist():
        rows.setdefault(row["run_id"], []).append(row)
    return rows


def attempts(store):
    return {r["run_id"]: (r["status"], r["attempt"]) for r in store.runs().to_pylist()}


def attempts_and_steps(store):
    return {r["run_id"]: (r["status"], r["attempt"], r["step"]) for r in store.runs().to_pylist()}


def test_launch_status_and_a_second_launch_that_runs_nothing(tmp_path):
    store_path = str(tmp_path / "smoke")
    # A cluster started here before with `ray start` (long gone): plain ray.init() would try to join
    # it; the local launch starts a Ray of its own. (A short RAY_TMPDIR: Unix socket paths < 108 bytes.)
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    os.makedirs(f"{ray_tmp}/ray")
    with open(f"{ray_tmp}/ray/ray_current_cluster", "w") as f:
        f.write("127.0.0.1:9")  # the discard port: nothing answers there
    try:
        first = sweep_cli("launch", "experiment=smoke", f"store={store_path}",
                          env={**os.environ, "RAY_TMPDIR": ray_tmp}, timeout=300)  # joining it would hang
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "all 4 runs done" in first.stdout and "4/4 done, 0 running, 0 failed" in first.stdout
    assert "RAY_AUTH_MODE" not in first.stdout + first.stderr  # no advice to turn authentication off
    status = sweep_cli("status", f"store={store_path}")
    assert status.returncode == 0
    assert "total: 0 pending, 0 running, 0 stuck, 4 done, 0 failed, 0 damaged" in status.stdout
    assert "vgg11      digits     0.60        0        0        0        1        0        0  22/22" in status.stdout
    store = Store.open(store_path)
    before = attempts(store)
    again = sweep_cli("launch", "experiment=smoke", f"store={store_path}")
    assert again.returncode == 0 and "nothing to do: all 4 runs" in again.stdout
    assert attempts(store) == before == {rid: ("done", 1) for rid in before}
    (manifest,), damaged = store.read_manifests()
    assert damaged == []
    assert set(manifest["runs"]) == set(before) and manifest["code_version"]


def test_a_failing_run_is_recorded_while_the_others_finish_and_retries_stop_at_the_bound(tmp_path, capsys):
    sweep = expand(["experiment=smoke", "cluster.retry_failed_runs=true", "cluster.max_retries=2"])
    runs = dict(sweep.runs)
    diverging = expand(["experiment=smoke", "train.lr=1e30", "train.schedule=constant", "grid.clean_seeds=1",
                        "grid.noisy_seeds=0"]).runs
    runs.update(diverging)
    store = Store.open(str(tmp_path / "s"), create=True)
    assert drive(store, runs, sweep.composed["cluster"]) == 1
    out = capsys.readouterr().out
    (bad,) = diverging
    assert f"FAILED {bad} (attempt 3): RunFailed: non-finite" in out and "sweep resume store=" in out
    states = attempts(store)
    assert states.pop(bad) == ("failed", 3)  # the first attempt and max_retries = 2 more
    assert set(states.values()) == {("done", 1)}
    text, finished = report(store, stale_after=600, sweep="all")
    assert finished and "total: 0 pending, 0 running, 0 stuck, 4 done, 1 failed, 0 damaged" in text
    # where it failed: this host, and the local Ray's node (on 127.0.0.1 only)
    where = r"on \S+ \(127\.0\.0\.1 ray:[0-9a-f]{12}\)"
    assert re.search(rf"{bad} \(attempt 3, step \d+, {where}\): RunFailed: non-finite", text)


def test_two_launches_racing_on_one_store_run_nothing_twice(tmp_path):
    store_path = str(tmp_path / "s")
    first = start_sweep_cli("launch", "experiment=smoke", "train.epochs=4", f"store={store_path}")
    wait_for(lambda: os.path.exists(os.path.join(store_path, "_launch.lock")))
    second = sweep_cli("launch", "experiment=smoke", "train.epochs=4", f"store={store_path}")
    assert second.returncode == 2 and "another sweep driver" in second.stderr and "Traceback" not in second.stderr
    assert first.wait(timeout=300) == 0, first.stdout.read()
    assert set(attempts(Store.open(store_path)).values()) == {("done", 1)}


def test_a_driver_killed_with_sigkill_is_completed_by_resume(tmp_path):
    store_path = str(tmp_path / "s")
    # Runs long enough that none can finish in the ~1.5 s the killed driver's Ray workers
    # go on for (their commits then stop): at 6 epochs they did, and resume had nothing left.
    args = ["experiment=smoke", "train.epochs=20", f"store={store_path}"]
    driver = start_sweep_cli("launch", *args)

    def some_run_is_midway():
        if not os.path.exists(os.path.join(store_path, "_store.json")):
            return False
        return any(r["status"] == "running" and r["step"] > 0 for r in Store.open(store_path).runs().to_pylist())

    wait_for(some_run_is_midway)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and everything in its session
    driver.wait()
    store = Store.open(store_path)
    quiet_since, last = time.monotonic(), None
    while time.monotonic() - quiet_since < 3.0:  # until the orphaned workers have stopped writing
        now = attempts_and_steps(store)
        if now != last:
            quiet_since, last = time.monotonic(), now
        time.sleep(0.2)
    assert any(status == "running" for status, _ in attempts(store).values())
    status = sweep_cli("status", f"store={store_path}", "stale_after=0")
    assert "stuck runs" in status.stdout and "sweep resume" in status.stdout

    resumed = sweep_cli("resume", f"store={store_path}")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    got = by_run(store)
    assert got == reference_snapshots(tmp_path, expand(args[:-1]).runs)  # nothing lost, nothing twice
    assert max(attempt for _, attempt in attempts(store).values()) == 2


def test_a_worker_node_removed_mid_sweep_its_runs_finish_elsewhere(tmp_path, monkeypatch):
    import ray._private.ray_constants
    from ray.cluster_utils import Cluster

    # A driver joining by address resolves 127.0.0.1 to this machine's outward IP, where
    # nothing listens (everything here binds 127.0.0.1); Ray keeps loopback when its
    # multi-machine mode is off.
    monkeypatch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4},
    })
    workers = [cluster.add_node(num_cpus=1, num_gpus=1, node_ip_address="127.0.0.1") for _ in range(2)]
    try:
        sweep = expand(["experiment=smoke", "train.epochs=6", "cluster.gpus_per_run=0.5", "grid.clean_seeds=4",
                        "cluster.node_ip_address=127.0.0.1", f"cluster.address={cluster.address}"])
        store = Store.open(str(tmp_path / "s"), create=True)

        def remove_a_busy_node():
            wait_for(lambda: sum(r["status"] == "running" and r["step"] > 0 for r in store.runs().to_pylist()) >= 2)
            cluster.remove_node(workers[1])  # both nodes are busy: one run dies with it

        killer = threading.Thread(target=remove_a_busy_node, daemon=True)
        killer.start()
        assert drive(store, sweep.runs, sweep.composed["cluster"]) == 0
        killer.join()
    finally:
        cluster.shutdown()
    assert max(attempt for _, attempt in attempts(store).values()) >= 2  # a run was retried
    assert by_run(store) == reference_snapshots(tmp_path, sweep.runs)


def listening_sockets(pids):
    """(address, port) of every listening TCP socket of these processes, from /proc."""
    inodes = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            address, port = fields[1].split(":")
            raw = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, width, 8))  # host order
            if width == 32 and raw[:12] == bytes(10) + b"\xff\xff":
                raw = raw[12:]  # an IPv4 address in IPv6 form, [::ffff:a.b.c.d]
            ip = ".".join(map(str, raw)) if len(raw) == 4 else raw.hex()
            found.append((ip, int(port, 16)))
    return found


def test_a_local_ray_listens_on_loopback_only(monkeypatch):
    import ray

    from sweep.launch import _start_ray

    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    cluster = {"address": None, "node_ip_address": None, "num_cpus": 1, "dashboard": False}
    assert _start_ray(cluster)
    try:
        ray.get(ray.remote(lambda: 1).remote())  # a worker process too
        children = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
        tree, parents = {os.getpid()}, [tuple(map(int, line.split())) for line in children.splitlines()]
        for _ in range(5):
            tree |= {pid for pid, ppid in parents if ppid in tree}
        sockets = listening_sockets(tree)
    finally:
        ray.shutdown()
    assert len(sockets) >= 5  # GCS, raylet, agents, worker: they were found
    outside = [(ip, port) for ip, port in sockets if not ip.startswith("127.")]
    assert outside == [], outside


def test_two_sweeps_with_other_settings_stay_apart(tmp_path, sweep_cli):
    store_path = tmp_path / "s"
    base = ["experiment=smoke", f"store={store_path}", "train.epochs=3"]
    assert sweep_cli("launch", *base).returncode == 0
    second = sweep_cli("launch", *base, "train.lr=0.05")
    assert second.returncode == 0, second.stdout + second.stderr
    store = Store.open(str(store_path))
    (first_id, second_id) = [m["sweep_id"] for m in store.read_manifests()[0]]
    configurations = set(store.runs()["configuration"].to_pylist())
    assert len(configurations) == 2 and store.runs().num_rows == 8

    latest = sweep_cli("status", f"store={store_path}")
    assert f"sweep {second_id}, 4 runs (other sweeps here: {first_id}" in latest.stdout
    both = sweep_cli("analyze", f"store={store_path}", "sweep=all", f"out={tmp_path / 'all'}", "bootstrap=100")
    assert both.returncode == 0, both.stderr
    rows = list(csv.DictReader(open(tmp_path / "all" / "table1.csv")))
    assert {r["configuration"] for r in rows} == configurations  # two calibrations, never one pooled
    assert len({(r["configuration"], r["h"]) for r in rows}) == 2
    one = sweep_cli("analyze", f"store={store_path}", f"sweep={first_id}", f"out={tmp_path / 'one'}",
                    "bootstrap=100")
    assert one.returncode == 0, one.stderr
    assert {r["configuration"] for r in csv.DictReader(open(tmp_path / "one" / "table1.csv"))} < configurations

    gone = sweep_cli("forget", f"store={store_path}", f"sweep={second_id}")
    assert gone.returncode == 0 and "4 runs deleted" in gone.stdout
    assert Store.open(str(store_path)).runs().num_rows == 4
    assert "nothing to do: all 4 runs" in sweep_cli("resume", f"store={store_path}").stdout
