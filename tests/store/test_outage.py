"""A store whose S3 server stops answering for a few seconds: writes, reads, listings and the
launch lock wait for it and go on (store.files.RETRY_SECONDS), with one warning; a server
that stays away past that is an error that names the store."""

import os
import signal
import threading
import time

import pytest

from store import Store, StoreError
from store import files as store_files
from sweep.lock import locked


@pytest.fixture
def outage(s3_process):
    """A function: stop the server now and serve again after ``seconds`` (in the background)."""
    threads = []

    def stop_for(seconds):
        os.kill(s3_process.pid, signal.SIGUSR1)
        time.sleep(0.3)  # the listener is closed
        thread = threading.Thread(target=lambda: (time.sleep(seconds), os.kill(s3_process.pid, signal.SIGUSR2)))
        thread.start()
        threads.append(thread)

    yield stop_for
    for thread in threads:
        thread.join()


def test_writes_reads_and_the_lock_wait_for_a_server_that_comes_back(s3_server, outage, capsys):
    store = Store.open(s3_server(), create=True)
    store.write_data("r1", "snapshots/a001-c000000.parquet", b"before")
    outage(4)
    store.write_data("r1", "snapshots/a001-c000001.parquet", b"during")  # waits, then lands
    assert store.files.read(store._run("r1", "snapshots/a001-c000000.parquet")) == b"before"
    assert sorted(store.run_files("r1")) == ["snapshots/a001-c000000.parquet", "snapshots/a001-c000001.parquet"]
    outage(4)
    with locked(store) as lock:  # a conditional create through boto3 waits too
        lock.refresh()
        assert store.read_lock()["token"] == lock.owner["token"]
    assert store.read_lock() is None
    err = capsys.readouterr().err
    assert "cannot be reached" in err and "asking again for up to 120 s" in err


def test_a_server_that_stays_away_is_an_error_naming_the_store(s3_server, outage, monkeypatch):
    store = Store.open(s3_server(), create=True)
    monkeypatch.setattr(store_files, "RETRY_SECONDS", 3.0)
    outage(8)
    with pytest.raises(StoreError, match=r"cannot write s3://sweeps/store\d+.*/runs/r1/record.parquet"):
        store.write_data("r1", "record.parquet", b"x")
