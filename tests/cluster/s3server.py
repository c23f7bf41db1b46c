"""An S3 API server for the cluster tests: moto's server mode, plus what a test needs.

    python -m tests.cluster.s3server --host 10.213.7.2 --port 9000 --bucket sweeps --ready FILE

- **Atomic conditional writes.** S3 makes ``PUT`` with ``If-None-Match: *`` or ``If-Match:
  ETAG`` atomic; moto checks the condition and then writes, with no lock between, so two
  threads can both pass. Writes (PUT, POST, DELETE) are served one at a time here, which
  gives moto S3's atomicity; reads stay concurrent.
- **Request counts.** ``GET /_requests`` answers ``{"total": N, "GET": .., "LIST": .., ...}``
  (not counted itself); ``DELETE /_requests`` answers the same and sets them to zero.
- **An outage.** ``SIGUSR1`` stops serving (the port closes, connections are refused) and
  ``SIGUSR2`` serves again on the same port. The objects stay in this process's memory
  meanwhile, as a real S3 service keeps them through an outage.
- ``SIGTERM`` ends it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from collections import Counter

from werkzeug.serving import make_server

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "cluster-test", "AWS_SECRET_ACCESS_KEY": "cluster-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


class Counted:
    """WSGI middleware: counts requests by kind, serialises writes, answers /_requests."""

    def __init__(self, app):
        self.app, self.counts, self.writes = app, Counter(), threading.Lock()
        self.guard = threading.Lock()

    def __call__(self, environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if path == "/_requests":
            with self.guard:  # the counts so far; DELETE also sets them to zero
                body = json.dumps({"total": sum(self.counts.values()), **self.counts}).encode()
                if method == "DELETE":
                    self.counts.clear()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        query = environ.get("QUERY_STRING", "")
        bucket_only = path.strip("/").count("/") == 0
        kind = "LIST" if method == "GET" and bucket_only and ("list-type" in query or "prefix" in query) else method
        with self.guard:
            self.counts[kind] += 1
        if method in ("PUT", "POST", "DELETE"):
            with self.writes:
                return list(self.app(environ, start_response))
        return self.app(environ, start_response)


def counts(url: str, *, reset: bool = False) -> dict:
    """The request counts of the server at ``url`` (and, with ``reset``, set them to zero)."""
    import urllib.request

    request = urllib.request.Request(f"{url}/_requests", method="DELETE" if reset else "GET")
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--bucket", default="sweeps")
    parser.add_argument("--ready", help="write {host, port, pid} here once serving")
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

    app = Counted(DomainDispatcherApplication(create_backend_app))
    state = {"server": None, "thread": None, "port": args.port}
    switch = threading.Lock()

    def serve() -> None:
        with switch:
            if state["server"] is not None:
                return
            server = make_server(args.host, state["port"], app, threaded=True, request_handler=MotoRequestHandler)
            state["port"] = server.server_address[1]
            state["server"], state["thread"] = server, threading.Thread(target=server.serve_forever, daemon=True)
            state["thread"].start()

    def stop() -> None:
        with switch:
            server, state["server"] = state["server"], None
            if server is not None:
                server.shutdown()
                server.server_close()

    serve()
    import boto3

    boto3.client("s3", endpoint_url=f"http://{args.host}:{state['port']}", region_name="us-east-1",
                 aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=args.bucket)
    with app.guard:
        app.counts.clear()
    if args.ready:
        with open(args.ready + ".tmp", "w") as f:
            json.dump({"host": args.host, "port": state["port"], "pid": os.getpid()}, f)
        os.replace(args.ready + ".tmp", args.ready)
    done = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(target=stop).start())
    signal.signal(signal.SIGUSR2, lambda *_: threading.Thread(target=serve).start())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    while not done.wait(0.5):
        pass
    stop()


if __name__ == "__main__":
    main()
