import functools
import http.server
import os
import threading

import pytest

from sweep.config import compose_config, run_config

# The real config (conf/), shrunk for a CPU test: a narrow ResNet-18 on the digits,
# 3 epochs of 11 steps, a snapshot every 5 steps on a batch of 64.
TINY = ["arch.width=0.125", "train.epochs=3", "monitor.every=5", "monitor.batch_size=64", "runtime.device=cpu"]


@pytest.fixture
def tiny_config():
    """A function: Hydra overrides -> the plain run config of a tiny digits run."""
    return lambda *overrides: run_config(compose_config([*TINY, *overrides]))


@pytest.fixture
def sweep_cli(capsys):
    """The `sweep` command run in this process (no interpreter start-up per call): a
    function of the words after `sweep`, returning (returncode, stdout, stderr)."""
    from types import SimpleNamespace

    from sweep.cli import main

    def run(*words):
        capsys.readouterr()
        code = main([str(w) for w in words])
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return run


@pytest.fixture
def http_root(tmp_path):
    """A real HTTP server on 127.0.0.1 serving a folder; yields (folder, base URL)."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def s3_process(tmp_path_factory):
    """The cluster tests' S3 server (tests.cluster.s3server: moto, with S3's atomic conditional
    writes, a request counter, an outage switch) in its own process on 127.0.0.1; yields its
    ``url`` and ``pid``. Its credentials are set in this process's environment, which child
    processes inherit."""
    import json
    import subprocess
    import sys
    import time
    from types import SimpleNamespace

    from tests.cluster.s3server import CREDENTIALS

    ready = tmp_path_factory.mktemp("s3") / "ready.json"
    server = subprocess.Popen([sys.executable, "-m", "tests.cluster.s3server", "--ready", str(ready)])
    saved = {key: os.environ.get(key) for key in [*CREDENTIALS, "AWS_EC2_METADATA_DISABLED"]}
    os.environ.update(CREDENTIALS, AWS_EC2_METADATA_DISABLED="true")
    try:
        for _ in range(300):
            if ready.exists() or server.poll() is not None:
                break
            time.sleep(0.1)
        assert ready.exists(), "the S3 server did not start"
        found = json.loads(ready.read_text())
        yield SimpleNamespace(url=f"http://127.0.0.1:{found['port']}", pid=found["pid"])
    finally:
        server.terminate()
        server.wait(30)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value



@pytest.fixture(scope="session")
def s3_server(s3_process):
    """A function giving a new store URI on the S3 test server at each call."""
    endpoint = s3_process.url.removeprefix("http://")
    counter = iter(range(10**6))
    return lambda: f"s3://sweeps/store{next(counter)}?endpoint_override={endpoint}&scheme=http&region=us-east-1"
