"""Run a sweep's runs on Ray Core: the only module that imports ``ray``.

Each run is one Ray task with its own resource request (CPUs, a GPU fraction),
bounded retries after infrastructure failures and, when configured, after errors of
the run itself. A retried or relaunched run continues from its last checkpoint
(``workers.train``), so a node lost mid-run costs at most one checkpoint interval.
The driver holds the store's launch lock while it runs, reports every failure as it
happens, and prints progress with an estimate of the time left.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from store import Store, StoreError
from sweep.ledger import ensure_records, repair, states
from sweep.lock import locked


def run_task(config: dict, store_uri: str, threads: int) -> dict:
    """What a Ray worker executes for one run; its record names the node it ran on."""
    import ray

    from workers.train import train

    config = {**config, "runtime": {**config["runtime"], "threads": threads}}  # runtime: not part of the run id
    node = f"{ray.util.get_node_ip_address()} ray:{ray.get_runtime_context().get_node_id()[:12]}"
    return train(config, Store.open(store_uri), node=node)


def _start_ray(cluster: dict) -> bool:
    """Join the configured cluster, or start Ray on this machine; True when we started it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # send nothing anywhere
    if not cluster["address"]:
        # Ray's single-machine mode: every process it starts (GCS, raylet, workers, the
        # dashboard and runtime-env agents) binds 127.0.0.1 instead of all interfaces or
        # the machine's outward address. Read by ray_constants at import and inherited
        # by Ray's child processes; tests/sweep/test_launch.py checks the sockets.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    import ray._private.ray_constants as ray_constants

    if ray.is_initialized():
        return False
    options = {"logging_level": "warning", "log_to_driver": False}
    if cluster["address"]:
        if cluster["node_ip_address"]:
            options["_node_ip_address"] = cluster["node_ip_address"]
        ray.init(address=cluster["address"], **options)
        return True
    ray_constants.ENABLE_RAY_CLUSTER = False  # in case ray was imported before the variable was set
    # Ray turns token authentication on for a new local cluster and announces it with a warning
    # that tells the user how to turn it off. We keep it on, and keep that advice off the screen.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    ray.init(
        address="local",  # a new Ray of our own: without it ray.init joins whatever `ray start` ran here last
        num_cpus=cluster["num_cpus"],
        include_dashboard=cluster["dashboard"],
        dashboard_host="127.0.0.1",  # never listen beyond this machine
        _node_ip_address="127.0.0.1",
        **options,
    )
    return True


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def drive(store: Store, runs: dict[str, dict], cluster: dict, *, lock: locked | None = None, out=None) -> int:
    """Run every run of ``runs`` that is not done; return 0 when all are done, else 1.

    The caller holds the store's launch ``lock``, which is refreshed here, so any record still
    ``running`` belongs to a driver that died: it is relaunched like a failed one.
    """
    import ray

    out = out or sys.stdout
    repair(store, list(runs), out=out)  # what is damaged is set aside, so those runs run again
    ensure_records(store, runs)
    done = {s.run_id for s in states(store, list(runs), stale_after=float("inf")) if s.state == "done"}
    todo = [rid for rid in runs if rid not in done]
    if not todo:
        print(f"nothing to do: all {len(runs)} runs in {store.uri} are done", file=out)
        return 0
    started = _start_ray(cluster)
    try:
        gpus = cluster["gpus_per_run"] if ray.cluster_resources().get("GPU", 0) > 0 else 0
        cpus = cluster["cpus_per_run"]
        task = ray.remote(run_task)
        options = {"num_cpus": cpus, "num_gpus": gpus, "max_retries": cluster["max_retries"],
                   "retry_exceptions": bool(cluster["retry_failed_runs"])}
        pending = {
            task.options(name=rid, **options).remote(runs[rid], store.uri, max(1, int(cpus))): rid for rid in todo
        }
        print(f"launched {len(todo)} of {len(runs)} runs ({len(runs) - len(todo)} already done) on "
              f"{ray.cluster_resources().get('CPU', 0):.0f} CPUs, {ray.cluster_resources().get('GPU', 0):.0f} GPUs; "
              f"each run asks for {cpus} CPU and {gpus} GPU", file=out, flush=True)
        return _follow(store, pending, len(todo), cluster, lock, out)
    finally:
        if started:
            ray.shutdown()


# How often the driver reads the store while it waits. Counting the running runs reads every
# pending run's record (a HEAD and a GET each on S3), so the pause grows with the runs: the
# driver's load on the store stays under 2 / POLL_SECONDS_PER_RUN = 100 requests a second
# however large the sweep (docs/cluster.md). The lock is refreshed well within its 60 s.
POLL_SECONDS_PER_RUN = 0.02
LOCK_REFRESH_SECONDS = 10.0


def _follow(store: Store, pending: dict, total: int, cluster: dict, lock: locked | None, out) -> int:
    """Wait for the runs, reporting failures as they happen and progress as it changes."""
    import ray

    begin, last_line, last_print = time.monotonic(), None, 0.0
    last_poll = last_refresh = float("-inf")
    done, failed, running = 0, {}, 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=cluster["progress_every"])
        for ref in ready:
            rid = pending.pop(ref)
            try:
                ray.get(ref)
                done += 1
            except Exception as err:  # a run's own error or an infrastructure failure, after its retries
                try:
                    record = store.read_record(rid) or {}
                except StoreError:
                    record = {}
                reason = record.get("error") if record.get("status") == "failed" else None
                failed[rid] = reason or f"{type(err).__name__}: {str(err).strip().splitlines()[-1]}"
                print(f"FAILED {rid} (attempt {record.get('attempt')}): {failed[rid]}", file=out, flush=True)
        moment = time.monotonic()
        try:
            if lock is not None and moment - last_refresh >= LOCK_REFRESH_SECONDS:
                lock.refresh()
                last_refresh = moment
            if moment - last_poll >= max(cluster["progress_every"], POLL_SECONDS_PER_RUN * len(pending)):
                running = sum(s.state == "running" for s in states(store, list(pending.values()), stale_after=1e9))
                last_poll = moment
        except StoreError as err:  # the store is down: the runs wait for it (store.files.RETRY_SECONDS), so do we
            print(f"warning: cannot read the store's progress ({err}); the runs go on", file=out, flush=True)
        running = min(running, len(pending))
        elapsed = time.monotonic() - begin
        left = f", ~{_duration(elapsed / done * (total - done - len(failed)))} left" if done else ""
        line = f"{done}/{total} done, {running} running, {len(failed)} failed, {len(pending) - running} queued"
        if line != last_line or time.monotonic() - last_print > 30:
            print(f"[{_duration(elapsed)}] {line}{left}", file=out, flush=True)
            last_line, last_print = line, time.monotonic()
    if failed:
        print(f"{len(failed)} of {total} runs failed. Fix the cause, then `sweep resume store={store.uri}` "
              "relaunches them (done runs are kept).", file=out, flush=True)
        return 1
    print(f"all {total} runs done in {_duration(time.monotonic() - begin)}; results in {store.uri}", file=out)
    return 0
