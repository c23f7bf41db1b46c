import functools
import http.server
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
