"""The launch lock: one driver (``launch``, ``resume``, ``run-one``, ``forget``, a repair)
works on a store at a time.

The lock is a small JSON file in the store (``store.layout.LOCK``) naming its holder
(host, pid, a random token) and a heartbeat the holder refreshes. A lock whose holder
stopped refreshing it ``stale_after`` seconds ago, or whose process is gone from this
host, is taken over; so is a lock file that cannot be read (it is reported). On a local
disk the file is created whole with link(2), which fails when it exists; on an object
store the holder writes it and reads it back after a settling delay, and the last writer
wins (S3 is strongly consistent).
"""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid

from store import DamagedFile, Store, StoreError

STALE_SECONDS = 60  # a driver refreshes its lock every few seconds (sweep/launch.py)
SETTLE_SECONDS = 2.0  # object stores: wait this long before reading a written lock back


def _is_stale(lock: dict, stale_after: float) -> bool:
    if time.time() - float(lock.get("heartbeat", 0)) > stale_after:
        return True
    if lock.get("host") == socket.gethostname():
        try:
            os.kill(int(lock["pid"]), 0)
        except ProcessLookupError:
            return True  # the driver that held it is gone from this machine
        except (PermissionError, KeyError, ValueError, OverflowError):
            return False
    return False


def _message(lock: dict, uri: str) -> str:
    age = time.time() - float(lock.get("heartbeat", time.time()))
    return (
        f"another sweep driver (pid {lock.get('pid')} on {lock.get('host')}, last seen {age:.0f} s ago) is "
        f"working on {uri}; nothing was started. Wait for it to finish (`sweep status store={uri}` "
        f"shows progress); if it died on another machine, its lock expires {STALE_SECONDS} s after its "
        "last heartbeat."
    )


class locked:
    """``with locked(store):`` holds the store's launch lock; the holder calls ``refresh()``."""

    def __init__(self, store: Store, *, stale_after: float = STALE_SECONDS, out=None):
        self.store, self.stale_after, self.out = store, stale_after, out or sys.stderr
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}

    def _current(self) -> dict | None:
        try:
            return self.store.read_lock()
        except DamagedFile as err:
            print(f"warning: {err}; treating it as stale and replacing it", file=self.out, flush=True)
            return {}

    def __enter__(self) -> locked:
        current = self._current()
        if current is not None:
            if current and not _is_stale(current, self.stale_after):
                raise StoreError(_message(current, self.store.uri))
            self.store.delete_lock()
        owner = {**self.owner, "heartbeat": time.time()}
        if self.store.files.local:
            if not self.store.create_lock(owner):
                raise StoreError(_message(self._current() or {}, self.store.uri))
            return self
        self.store.write_lock(owner)
        time.sleep(SETTLE_SECONDS)
        holder = self._current() or {}
        if holder.get("token") != owner["token"]:
            raise StoreError(_message(holder, self.store.uri))
        return self

    def _holds(self) -> bool:
        try:
            return (self.store.read_lock() or {}).get("token") == self.owner["token"]
        except DamagedFile:
            return False

    def refresh(self) -> None:
        if self._holds():
            self.store.write_lock({**self.owner, "heartbeat": time.time()})

    def __exit__(self, *exc) -> None:
        try:
            if self._holds():
                self.store.delete_lock()
        except StoreError:
            pass  # a lock left behind goes stale on its own
