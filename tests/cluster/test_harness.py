"""The cluster harness itself (part of `make test`: seconds): hosts on their own addresses
reach each other by name, reach nothing outside, and leave nothing behind."""

import subprocess
import sys

import pytest

from tests.cluster import harness

SERVE = ("import socket; s = socket.socket(); s.bind(('0.0.0.0', 7777)); s.listen(); c, _ = s.accept(); "
         "c.send(socket.gethostname().encode()); c.close()")
ASK = "import socket, sys; print(socket.create_connection((sys.argv[1], 7777), timeout=5).recv(100).decode())"


@pytest.fixture
def network():
    reason = harness.unavailable()
    if reason:
        pytest.skip(f"no network namespaces here: {reason}")
    with harness.Network() as net:
        yield net


def namespaces() -> list[str]:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()


def test_hosts_reach_each_other_by_name_and_nothing_outside(network):
    a, b = network.host("alpha"), network.host("beta")
    server = b.popen(sys.executable, "-c", SERVE)
    try:
        for _ in range(50):
            answer = a.run(sys.executable, "-c", ASK, "beta", check=False)
            if answer.returncode == 0:
                break
        assert answer.stdout.strip() == "beta"  # its own hostname, reached through /etc/hosts
    finally:
        server.kill()
    assert a.run("hostname").stdout.strip() == "alpha"
    routes = a.run("ip", "route").stdout.strip().splitlines()
    assert routes == [f"{harness.SUBNET}.0/24 dev eth0 proto kernel scope link src {a.address}"]  # no way out
    outside = a.run(sys.executable, "-c", "import socket; socket.create_connection(('192.0.2.1', 80), timeout=2)",
                    check=False)
    assert outside.returncode != 0 and "Network is unreachable" in outside.stderr


def test_closing_removes_every_namespace_and_kills_their_processes():
    reason = harness.unavailable()
    if reason:
        pytest.skip(f"no network namespaces here: {reason}")
    net = harness.Network()
    host = net.host("gamma")
    sleeper = host.popen("sleep", "600")
    made = [name for name in namespaces() if name.startswith(net.tag)]
    assert len(made) == 2  # the switch and the host
    net.close()
    assert sleeper.wait(10) != 0  # killed
    assert not [name for name in namespaces() if name.startswith(net.tag)]
