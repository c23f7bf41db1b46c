"""Whole files on a local disk or an object store, through ``pyarrow.fs``: the store's only I/O.

Every write is atomic for readers: on a local disk the bytes go to a hidden temporary
name in the same folder, renamed into place (rename(2)); on S3 a single PUT, visible
only when complete. Every read of a table checks what it got and names the file when it
cannot be used (``DamagedFile``).

On S3 a file written is one request: the file system is opened with
``allow_delayed_open=true`` (pyarrow then sends a small file as one ``PutObject`` when it
is closed, where it otherwise opens a multipart upload: three requests), and no folder
is created first (S3 has none; pyarrow's ``create_dir`` writes marker objects). A commit
of a run's snapshot is then four PUTs (docs/store.md counts every command's requests).

An object store that cannot be reached (connection refused, a timeout, 500/503, SlowDown, and
S3's 409 to one of two concurrent conditional writes) is
asked again with growing pauses for up to ``RETRY_SECONDS`` (120 s; the environment variable
``SWEEP_STORE_RETRY_SECONDS`` changes it) before the error is raised, with one warning on
stderr: a run rides out a short outage of its store and goes on where it was. Every request
retried is idempotent (a whole-object PUT, GET, HEAD, LIST or DELETE) or conditional
(``store.conditional``).
"""

from __future__ import annotations

import errno
import hashlib
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from store.schema import ADDED

RETRY_SECONDS = float(os.environ.get("SWEEP_STORE_RETRY_SECONDS", "120"))
_TRANSIENT = ("NETWORK_CONNECTION", "curlCode", "Could not connect", "Connection refused", "timed out", "Timeout",
              "SERVICE_UNAVAILABLE", "Service Unavailable", "SlowDown", "INTERNAL_FAILURE", "InternalError",
              "Connection reset", "connection was closed", "ConditionalRequestConflict")


class StoreError(RuntimeError):
    """A store that cannot be opened, read or written; the message says what to do."""


class DamagedFile(StoreError):
    """A file of the store that exists but cannot be used; names it and what to do."""

    def __init__(self, path: str, problem: str, fix: str = "", *, raw: str | None = None):
        self.path, self.problem = path, problem
        self.raw = raw or path  # the path as the store's file system spells it
        self.tag: str | None = None  # its version, where a compare-and-swap needs it (store.conditional)
        super().__init__(f"{path} is damaged: {problem}" + (f". {fix}" if fix else ""))


@dataclass(frozen=True)
class Entry:
    """A file found by a listing: its path (as the file system spells it) and size."""

    path: str
    size: int


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Files:
    """The files under one root (a local folder or an ``s3://`` URI)."""

    def __init__(self, uri: str):
        try:
            if "://" in uri:
                self.fs, root = pafs.FileSystem.from_uri(_one_request_writes(uri))
            else:
                self.fs, root = pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
        except (pa.ArrowException, OSError, ValueError) as err:
            raise StoreError(f"cannot open the store {uri!r}: {err}") from None
        if not root.strip("/"):
            raise StoreError(f"store={uri} names no folder or bucket; use a folder or s3://bucket/prefix")
        self.uri = uri
        self.root = root.rstrip("/")
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def patiently(self, call):
        """``call()``; on an object store that cannot be reached, again after growing pauses
        for up to RETRY_SECONDS (see the module's docstring)."""
        if self.local:
            return call()
        deadline, pause, warned = time.monotonic() + RETRY_SECONDS, 1.0, False
        while True:
            try:
                return call()
            except (OSError, pa.ArrowException) as err:
                if not any(marker in str(err) for marker in _TRANSIENT) or time.monotonic() + pause > deadline:
                    raise
                if not warned:
                    print(f"warning: the store {self.uri} cannot be reached ({str(err).splitlines()[0][:200]}); "
                          f"asking again for up to {RETRY_SECONDS:.0f} s", file=sys.stderr, flush=True)
                    warned = True
                time.sleep(pause)
                pause = min(2 * pause, 15.0)

    def relative(self, path: str) -> str:
        return path[len(self.root) + 1:] if path.startswith(self.root + "/") else path

    def shown(self, path: str) -> str:
        """A path as a user finds it: the file on disk, or the URI's bucket/key."""
        return path if self.local else f"{self.uri.split('?')[0].rstrip('/')}/{self.relative(path)}"

    # -- writing --------------------------------------------------------------------
    def write(self, path: str, data: bytes) -> None:
        """Write ``data`` so that ``path`` shows either its old content or all of the new."""
        parent = path.rsplit("/", 1)[0]
        try:
            if not self.local:
                def put() -> None:
                    with self.fs.open_output_stream(path) as out:
                        out.write(data)
                self.patiently(put)
                return
            self.fs.create_dir(parent, recursive=True)
            temp = _temporary(path)
            try:
                with self.fs.open_output_stream(temp) as out:
                    out.write(data)
                self.fs.move(temp, path)  # rename(2): atomic on POSIX file systems
            finally:
                if self.fs.get_file_info(temp).type != pafs.FileType.NotFound:
                    self.fs.delete_file(temp)
        except (OSError, pa.ArrowException) as err:
            raise self._write_error(path, err) from None

    def create_exclusive(self, path: str, data: bytes) -> bool:
        """Create ``path`` on a local disk with ``data`` unless it exists; True when created.

        The whole file is written under a temporary name and linked into place with
        link(2), which fails when the name exists: never a half-written file. (On S3:
        ``store.conditional``.)
        """
        if not self.local:
            raise StoreError(f"create_exclusive is for a local store, not {self.uri}; use store.conditional")
        temp = _temporary(path)
        try:
            os.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            with open(temp, "wb") as f:
                f.write(data)
            try:
                os.link(temp, path)
            except FileExistsError:
                return False
            return True
        except OSError as err:
            raise self._write_error(path, err) from None
        finally:
            if os.path.exists(temp):
                os.unlink(temp)

    def move(self, source: str, target: str) -> None:
        try:
            if self.local:
                self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
                self.fs.move(source, target)
            else:  # an object store moves by copy and delete
                self.patiently(lambda: self.fs.copy_file(source, target))
                self.patiently(lambda: self.fs.delete_file(source))
        except OSError as err:
            raise self._write_error(target, err) from None

    def delete(self, path: str) -> None:
        try:
            self.patiently(lambda: self.fs.delete_file(path))
        except FileNotFoundError:
            pass
        except OSError as err:
            raise self._write_error(path, err) from None

    def delete_tree(self, folder: str) -> None:
        try:
            if self.patiently(lambda: self.fs.get_file_info(folder)).type != pafs.FileType.NotFound:
                self.patiently(lambda: self.fs.delete_dir(folder))
        except OSError as err:
            raise self._write_error(folder, err) from None

    def _write_error(self, path: str, err: Exception) -> StoreError:
        code = getattr(err, "errno", None)
        if code == errno.ENOSPC or "No space left" in str(err):
            why = "the disk is full; free some space and run the command again (nothing committed was lost)"
        elif code in (errno.EACCES, errno.EROFS, errno.EPERM) or "Permission denied" in str(err) \
                or "Read-only" in str(err):
            why = "permission denied; use a store you can write to (store=PATH)"
        else:
            why = f"{err}; check that the store is reachable and writable"
        return StoreError(f"cannot write {self.shown(path)}: {why}")

    # -- reading ----------------------------------------------------------------------
    def read(self, path: str) -> bytes | None:
        """The whole file, or None when there is none."""
        def get() -> bytes:
            with self.fs.open_input_stream(path) as f:
                return f.read()
        try:
            return self.patiently(get)
        except FileNotFoundError:
            return None
        except (OSError, pa.ArrowException) as err:
            if isinstance(err, OSError) and not self.exists(path):
                return None
            raise StoreError(f"cannot read {self.shown(path)}: {err}") from None

    def open_input_file(self, path: str):
        """A seekable handle (for zip archives: their directory is at the end)."""
        return self.patiently(lambda: self.fs.open_input_file(path))

    def exists(self, path: str) -> bool:
        try:
            return self.patiently(lambda: self.fs.get_file_info(path)).type != pafs.FileType.NotFound
        except (OSError, pa.ArrowException) as err:
            raise StoreError(f"cannot reach {self.shown(path)}: {err}") from None

    def size(self, path: str) -> int | None:
        """The file's size now, None when there is none."""
        try:
            info = self.patiently(lambda: self.fs.get_file_info(path))
        except (OSError, pa.ArrowException) as err:
            raise StoreError(f"cannot reach {self.shown(path)}: {err}") from None
        return None if info.type == pafs.FileType.NotFound else info.size

    def list(self, folder: str, *, recursive: bool = False) -> list[Entry]:
        """Files under ``folder`` (none when it does not exist); hidden temporaries left out."""
        try:
            selector = pafs.FileSelector(folder, recursive=recursive, allow_not_found=True)
            infos = self.patiently(lambda: self.fs.get_file_info(selector))
        except (OSError, pa.ArrowException) as err:
            raise StoreError(f"cannot list {self.shown(folder)}: {err}") from None
        return [Entry(i.path, i.size) for i in infos
                if i.type == pafs.FileType.File and not i.base_name.startswith(".")]


def _one_request_writes(uri: str) -> str:
    """An ``s3://`` URI with ``allow_delayed_open=true`` unless it sets it (see above)."""
    if not uri.startswith("s3://") or "allow_delayed_open=" in uri:
        return uri
    return uri + ("&" if "?" in uri else "?") + "allow_delayed_open=true"


def _temporary(path: str) -> str:
    """A hidden name beside ``path`` that no reader uses (listings leave dot-files out)."""
    parent, name = path.rsplit("/", 1)
    return f"{parent}/.{name}.{uuid.uuid4().hex}.tmp"


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def read_parquet(data: bytes, schema: pa.Schema, *, shown: str) -> pa.Table:
    """Parse one Parquet file already in memory and check its columns against ``schema``.

    ``use_threads=False``: these files are small, and a threaded read here leaves pyarrow
    26's CPU pool busy at interpreter exit often enough to abort the process (exit 134,
    "terminate called without an active exception"; apache/arrow#34314, #50482).
    """
    try:
        table = pq.read_table(pa.BufferReader(data), use_threads=False)
    except (pa.ArrowException, OSError) as err:
        raise DamagedFile(shown, f"not a readable Parquet file ({str(err).splitlines()[0]})") from None
    for index, column in enumerate(schema):
        if column.name in ADDED and column.name not in table.column_names and index <= table.num_columns:
            table = table.add_column(index, column, pa.nulls(table.num_rows, column.type))
    if not table.schema.remove_metadata().equals(schema.remove_metadata()):
        raise DamagedFile(shown, f"its columns {table.schema.names} are not the expected {schema.names}")
    return table
