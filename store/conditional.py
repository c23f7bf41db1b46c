"""Compare-and-swap on one small file: the launch lock's primitives.

Each call names the version it expects by a *tag* (a digest of what it last read or
wrote), and fails, returning None/False, when the file is no longer that version:

    tag = create(path, data)          # only if no file is there
    data, tag = read(path)            # None when there is none
    tag = replace(path, data, tag)    # only if the file is still at ``tag``
    deleted = delete(path, tag)       # likewise

On S3 these are single conditional requests, atomic at the server (Amazon S3,
conditional writes, 2024: ``PUT`` with ``If-None-Match: *`` or ``If-Match: ETAG``; a
conditional ``DELETE`` with ``If-Match``); pyarrow exposes none of them, so boto3 makes
these few requests and pyarrow every other. The endpoint, region and keys come from the
store URI's query (``endpoint_override``, ``scheme``, ``region``, ``access_key``,
``secret_key``, as pyarrow reads them) or else boto3's standard sources (``AWS_*``
variables, ``AWS_ENDPOINT_URL`` included, and ``~/.aws``). A server without conditional
writes answers 501; the caller is told, and falls back to what it did before.

On a local disk, ``create`` is link(2), which fails when the name exists; ``replace``
and ``delete`` hold an flock(2) on a hidden sidecar file while they compare and write,
so they are atomic among processes that share the disk's locks.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from urllib.parse import parse_qs, urlsplit

from store.files import Files, StoreError, sha256


class Unsupported(StoreError):
    """The object store does not do conditional writes."""


def create(files: Files, path: str, data: bytes) -> str | None:
    """Write ``path`` unless it exists; its tag, or None when it existed."""
    if files.local:
        return sha256(data) if files.create_exclusive(path, data) else None
    return _S3(files).put(path, data, IfNoneMatch="*")


def read(files: Files, path: str) -> tuple[bytes, str] | None:
    if files.local:
        data = files.read(path)
        return None if data is None else (data, sha256(data))
    return _S3(files).get(path)


def replace(files: Files, path: str, data: bytes, tag: str) -> str | None:
    """Write ``path`` if it is still at ``tag``; its new tag, or None."""
    if files.local:
        with _sidecar(path):
            current = read(files, path)
            if current is None or current[1] != tag:
                return None
            files.write(path, data)
            return sha256(data)
    return _S3(files).put(path, data, IfMatch=tag)


def delete(files: Files, path: str, tag: str) -> bool:
    """Delete ``path`` if it is still at ``tag``; True when deleted."""
    if files.local:
        with _sidecar(path):
            current = read(files, path)
            if current is None or current[1] != tag:
                return False
            files.delete(path)
            return True
    return _S3(files).delete(path, tag)


@contextmanager
def _sidecar(path: str):
    parent, name = path.rsplit("/", 1)
    os.makedirs(parent, exist_ok=True)
    with open(f"{parent}/.{name}.cas", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _S3:
    """The conditional requests, through boto3, on the bucket and keys of a store's URI."""

    _clients: dict[str, object] = {}

    def __init__(self, files: Files):
        parts = urlsplit(files.uri)
        if parts.scheme != "s3":
            raise Unsupported(f"conditional writes are implemented for s3:// stores, not {parts.scheme}://")
        self.files = files
        self.client = self._clients.get(files.uri) or self._client(parse_qs(parts.query))
        self._clients[files.uri] = self.client

    @staticmethod
    def _client(query: dict):
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise StoreError("an s3:// store needs boto3 for its launch lock: `pip install boto3`") from None
        one = {key: values[-1] for key, values in query.items()}
        options = {}
        if "endpoint_override" in one:
            endpoint = one["endpoint_override"]
            options["endpoint_url"] = endpoint if "://" in endpoint else f"{one.get('scheme', 'https')}://{endpoint}"
        if "region" in one:
            options["region_name"] = one["region"]
        if "access_key" in one and "secret_key" in one:
            options.update(aws_access_key_id=one["access_key"], aws_secret_access_key=one["secret_key"])
        retries = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=30)
        return boto3.session.Session().client("s3", config=retries, **options)

    def _key(self, path: str) -> tuple[str, str]:
        bucket, _, key = path.partition("/")
        return bucket, key

    def _call(self, operation: str, **arguments):
        """The request's answer; None when its precondition failed (412) or there is no such key
        (404). A server that cannot be reached, or a concurrent conditional write (409: S3 asks
        for a retry), is asked again with the store's patience (``Files.patiently``); a 412 after
        such a retry may be this request's own earlier try, which did arrive: the lock reads the
        file back to see."""
        from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
        from botocore.exceptions import ConnectionError as Unreachable

        shown = f"s3://{arguments['Bucket']}/{arguments['Key']}"

        def once():
            try:
                return getattr(self.client, operation)(**arguments)
            except ClientError as err:
                status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                code = err.response.get("Error", {}).get("Code", "")
                if status in (404, 412):
                    return None
                if status == 409:
                    raise OSError(f"ConditionalRequestConflict: {err}") from None
                if status == 501 or code == "NotImplemented":
                    raise Unsupported(f"the S3 server of {self.files.uri} does not support conditional writes "
                                      f"({code or status})") from None
                raise StoreError(f"cannot use {shown}: {err}; check that the store is reachable and "
                                 "writable") from None
            except (Unreachable, HTTPClientError) as err:
                raise OSError(f"Could not connect: {err}") from None
            except BotoCoreError as err:  # no credentials, a bad endpoint, ...
                raise StoreError(f"cannot use {shown}: {err}") from None

        try:
            return self.files.patiently(once)
        except OSError as err:
            raise StoreError(f"cannot reach {shown}: {err}; check that the store is reachable") from None

    def put(self, path: str, data: bytes, **condition) -> str | None:
        bucket, key = self._key(path)
        answer = self._call("put_object", Bucket=bucket, Key=key, Body=data, **condition)
        return None if answer is None else answer["ETag"]

    def get(self, path: str) -> tuple[bytes, str] | None:
        bucket, key = self._key(path)
        answer = self._call("get_object", Bucket=bucket, Key=key)
        return None if answer is None else (answer["Body"].read(), answer["ETag"])

    def delete(self, path: str, tag: str) -> bool:
        bucket, key = self._key(path)
        return self._call("delete_object", Bucket=bucket, Key=key, IfMatch=tag) is not None
