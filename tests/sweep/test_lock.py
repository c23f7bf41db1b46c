"""The launch lock against racing drivers: two processes, started together, 50 times, on
a local disk and on a real S3 server (conditional writes). Exactly one holds the lock
each time, and the other's message names the holder."""

import json
import multiprocessing
import os
import socket
import time

import pytest

from store import Store, StoreError
from sweep.lock import locked

ROUNDS = 50


@pytest.fixture(params=["local", "s3"])
def lock_store(request, tmp_path):
    if request.param == "local":
        uri = str(tmp_path / "store")
    else:
        uri = request.getfixturevalue("s3_server")()
    Store.open(uri, create=True)
    return uri


def _driver(uri: str, barrier, results) -> None:
    """One driver: each round, try the lock at the same moment as the other, hold it until both
    have tried, then let go."""
    store = Store.open(uri)
    for round_ in range(ROUNDS):
        barrier.wait()
        lock = locked(store)
        try:
            lock.__enter__()
        except StoreError as err:
            results.put((round_, os.getpid(), "lost", str(err)))
            barrier.wait()
            barrier.wait()
            continue
        results.put((round_, os.getpid(), "won", ""))
        barrier.wait()  # both have tried
        lock.__exit__(None, None, None)
        barrier.wait()  # released before the next round


def test_two_drivers_race_and_exactly_one_wins_every_time(lock_store):
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    drivers = [context.Process(target=_driver, args=(lock_store, barrier, results)) for _ in range(2)]
    for process in drivers:
        process.start()
    outcomes = [results.get(timeout=120) for _ in range(2 * ROUNDS)]
    for process in drivers:
        process.join(60)
        assert process.exitcode == 0
    by_round = {}
    for round_, pid, outcome, message in outcomes:
        by_round.setdefault(round_, []).append((pid, outcome, message))
    winners = {round_: [pid for pid, outcome, _ in tried if outcome == "won"] for round_, tried in by_round.items()}
    assert all(len(pids) == 1 for pids in winners.values()), winners
    for round_, tried in by_round.items():
        (message,) = [m for pid, outcome, m in tried if outcome == "lost"]
        assert f"pid {winners[round_][0]} on {socket.gethostname()}" in message
    assert Store.open(lock_store).read_lock() is None  # every winner let go


def test_a_stale_lock_is_taken_over_by_exactly_one_of_two(lock_store):
    store = Store.open(lock_store)
    stale = {"host": "elsewhere", "pid": 1, "token": "old", "heartbeat": time.time() - 3600}
    assert store.create_lock(stale) is not None
    first, second = locked(store), locked(Store.open(lock_store))
    first.__enter__()
    with pytest.raises(StoreError, match=f"pid {os.getpid()} on {socket.gethostname()}"):
        second.__enter__()
    first.refresh()  # its own lock: refreshed
    assert store.read_lock()["token"] == first.owner["token"]


def test_a_driver_never_releases_or_refreshes_a_lock_taken_over_from_it(lock_store, capsys):
    store = Store.open(lock_store)
    slow = locked(store, stale_after=0.0)
    slow.__enter__()
    time.sleep(0.05)
    fast = locked(Store.open(lock_store), stale_after=0.0)
    fast.__enter__()  # the slow one's heartbeat is older than stale_after: taken over
    slow.refresh()
    assert "another driver took over the launch lock" in capsys.readouterr().err
    slow.__exit__(None, None, None)
    assert store.read_lock()["token"] == fast.owner["token"]
    fast.__exit__(None, None, None)
    assert store.read_lock() is None


def test_a_damaged_lock_is_reported_and_replaced(lock_store, capsys):
    store = Store.open(lock_store)
    store.files.write(store.lock_path, b"\x00garbage")
    with locked(store) as lock:
        assert json.loads(store.files.read(store.lock_path))["token"] == lock.owner["token"]
    assert "not a readable launch lock" in capsys.readouterr().err
