"""The launch lock: one driver (``launch``, ``resume``, ``run-one``, ``forget``, a repair)
works on a store at a time.

The lock is a small JSON file in the store (``store.layout.LOCK``) naming its holder
(host, pid, a random token) and a heartbeat the holder refreshes. Every change to it is
a compare-and-swap (``store.conditional``): it is created only where there is none
(link(2) on a disk; ``PUT`` with ``If-None-Match: *`` on S3), and refreshed, taken over
or released only if it is still the version its writer last saw (``If-Match``). So of
any number of drivers racing for a store, on one machine or many, exactly one holds it.
A lock whose holder stopped refreshing it ``stale_after`` seconds ago, or whose process
is gone from this host, is taken over; so is a lock file that cannot be read (it is
reported). An S3-compatible server without conditional writes gets the old protocol
(write, wait, read back: the last writer wins) and a warning that says so.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid

from store import DamagedFile, Store, StoreError
from store.conditional import Unsupported

STALE_SECONDS = 60  # a driver refreshes its lock every 10 s (sweep/launch.py)
SETTLE_SECONDS = 2.0  # object stores without conditional writes: wait this long before reading a lock back


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
        self.tag: str | None = None  # the version of the lock this driver last wrote

    def _current(self) -> tuple[dict, str | None] | None:
        """The lock and its tag ({} for an unreadable one, reported), None when there is none."""
        try:
            return self.store.read_lock_tagged()
        except DamagedFile as err:
            print(f"warning: {err}; treating it as stale and replacing it", file=self.out, flush=True)
            return {}, err.tag

    def __enter__(self) -> locked:
        try:
            return self._acquire()
        except Unsupported as err:
            print(f"warning: {err}; the launch lock falls back to write-and-read-back, where two drivers "
                  "starting within a second of each other could both run", file=self.out, flush=True)
            return self._acquire_unconditionally()

    def _acquire(self) -> locked:
        for _ in range(10):
            owner = {**self.owner, "heartbeat": time.time()}
            self.tag = self.store.create_lock(owner)
            if self.tag is not None:
                return self
            found = self._current()
            if found is None:
                continue  # released between our create and our read: try again
            current, tag = found
            if current.get("token") == self.owner["token"]:  # our own create, retried after a lost answer
                self.tag = tag
                return self
            if current and not _is_stale(current, self.stale_after):
                raise StoreError(_message(current, self.store.uri))
            self.tag = self.store.replace_lock(owner, tag)  # only one of several racers takes it over
            if self.tag is not None:
                return self
        found = self._current()
        raise StoreError(_message(found[0] if found else {}, self.store.uri))

    def _acquire_unconditionally(self) -> locked:
        found = self._current()
        if found is not None and found[0] and not _is_stale(found[0], self.stale_after):
            raise StoreError(_message(found[0], self.store.uri))
        self.store.write_lock({**self.owner, "heartbeat": time.time()})
        time.sleep(SETTLE_SECONDS)
        found = self._current()
        if found is None or found[0].get("token") != self.owner["token"]:
            raise StoreError(_message(found[0] if found else {}, self.store.uri))
        self.tag = found[1]
        return self

    def refresh(self) -> None:
        """A new heartbeat, written only over this driver's own lock."""
        if self.tag is None:
            return
        try:
            self.tag = self.store.replace_lock({**self.owner, "heartbeat": time.time()}, self.tag)
        except Unsupported:
            self.store.write_lock({**self.owner, "heartbeat": time.time()})
            return
        if self.tag is None:
            found = self._current()
            if found is not None and found[0].get("token") == self.owner["token"]:
                self.tag = found[1]  # our own write, retried after a lost answer
                return
            print(f"warning: another driver took over the launch lock of {self.store.uri} (this one's heartbeat "
                  f"was over {self.stale_after:.0f} s old); runs already submitted go on, and the store's "
                  "commit protocol keeps their data consistent", file=self.out, flush=True)

    def __exit__(self, *exc) -> None:
        if self.tag is None:
            return
        try:
            self.store.delete_lock(self.tag)
        except Unsupported:
            found = self._current()
            if found is not None and found[0].get("token") == self.owner["token"]:
                self.store.delete_lock(found[1])
        except StoreError:
            pass  # a lock left behind goes stale on its own
