"""Hosts of their own on one machine: Linux network namespaces on a private bridge.

    with Network() as net:                       # needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN)
        head = net.host("head")                  # 10.213.7.10, hostname "head"
        worker = net.host("worker1")             # 10.213.7.11
        head.run("ping", "-c1", worker.address)
        worker.kill_all()                        # SIGKILL every process of that host

Layout. The bridge lives in a namespace of its own (the switch), and each host is a
namespace with loopback and one veth whose other end is a port of that bridge. Hosts
get addresses in ``10.213.7.0/24`` and no route anywhere else, and the machine's own
namespace gets no address in that range, so nothing sent inside this network can leave
it and nothing outside can reach it. Every command runs with its own UTS namespace set to
the host's name (``socket.gethostname()`` differs per host, as on real machines), and
sees an ``/etc/hosts`` that names every host of the network (``/etc/netns/<namespace>/hosts``
mounted over it in a mount namespace of its own), so names resolve as on a cluster.

Clean-up. ``close()`` kills every process in each namespace and deletes the namespaces
(which removes their veths and the bridge); it runs on leaving the ``with`` block, at
interpreter exit and on SIGTERM, and a new ``Network`` first removes what a dead one left
behind (namespaces named ``hs<pid>-*`` whose pid is gone). ``Network.unavailable()`` says
why namespaces cannot be made here (not root, no ``ip``), for tests to skip with.

    python -m tests.cluster.harness up      # a head, two workers and an S3 host, by hand
    python -m tests.cluster.harness down    # remove every namespace this harness made
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import subprocess
import sys
import time

SUBNET = "10.213.7"  # a /24 that exists only inside these namespaces
PREFIX = "hs"  # namespaces: hs<pid>-<name>


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if shutil.which("ip") is None:
        return "the `ip` command (Debian's iproute2) is not installed"
    for command in ("unshare", "nsenter"):
        if shutil.which(command) is None:
            return f"the `{command}` command (util-linux) is not installed"
    if os.geteuid() != 0:
        return "making network namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN); run as root"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def remove_leftovers() -> list[str]:
    """Delete namespaces of this harness whose creating process is gone; return their names."""
    removed = []
    for name in _ip("netns", "list", check=False).stdout.split():
        match = re.fullmatch(rf"{PREFIX}(\d+)-\S+", name)
        if match and not _alive(int(match.group(1))):
            _kill_namespace(name)
            removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_for(condition, timeout: float, what: str, *, every: float = 0.5):
    """``condition()``'s first true value, asked every ``every`` seconds for up to ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _kill_namespace(name: str) -> None:
    shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)
    for _ in range(50):
        pids = [int(p) for p in _ip("netns", "pids", name, check=False).stdout.split()]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    _ip("netns", "del", name, check=False)


class Host:
    """One network namespace with its address and hostname."""

    def __init__(self, network: Network, name: str, address: str):
        self.network, self.name, self.address = network, name, address
        self.netns = f"{network.tag}-{name}"

    def argv(self, *command: str) -> list[str]:
        """``command`` inside this host: its network namespace, a UTS namespace named after it,
        and a mount namespace where /etc/hosts names the network's hosts. (Not ``ip netns
        exec``, which also mounts a sysfs of its own and so hides /sys/fs/cgroup, which
        slurmd needs.)"""
        hosts = f"/etc/netns/{self.netns}/hosts"
        return ["nsenter", f"--net=/run/netns/{self.netns}", "unshare", "--uts", "--mount", "sh", "-c",
                f'mount --bind {hosts} /etc/hosts && hostname {self.name} && exec "$@"', "sh", *command]

    def run(self, *command: str, env: dict | None = None, check: bool = True, timeout: float | None = 600,
            **kwargs) -> subprocess.CompletedProcess:
        result = subprocess.run(self.argv(*command), capture_output=True, text=True, env=env, timeout=timeout,
                                **kwargs)
        if check and result.returncode != 0:
            raise RuntimeError(f"on {self.name}: {' '.join(command)} exited {result.returncode}:\n"
                               f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def popen(self, *command: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*command), env=env, start_new_session=True, **kwargs)

    def pids(self) -> list[int]:
        return [int(p) for p in _ip("netns", "pids", self.netns, check=False).stdout.split()]

    def kill_all(self, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to every process on this host at once (a lost machine); return how many."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return len(pids)


class Network:
    """A bridge and hosts on it; a context manager that removes all of it on exit."""

    def __init__(self) -> None:
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        remove_leftovers()
        self.tag = f"{PREFIX}{os.getpid()}"
        self.switch = f"{self.tag}-switch"
        self.hosts: dict[str, Host] = {}
        self.closed = False
        atexit.register(self.close)
        self._previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_term)
        _ip("netns", "add", self.switch)
        self._in_switch("ip", "link", "add", "br0", "type", "bridge")
        self._in_switch("ip", "link", "set", "br0", "up")
        self._in_switch("ip", "link", "set", "lo", "up")

    def _on_term(self, signum, frame) -> None:
        self.close()
        if callable(self._previous):
            self._previous(signum, frame)
        raise SystemExit(128 + signum)

    def _in_switch(self, *command: str) -> None:
        _ip("netns", "exec", self.switch, *command)

    def host(self, name: str, octet: int | None = None) -> Host:
        """A new host on the bridge, at ``10.213.7.<octet>`` (the next free one by default)."""
        octet = octet or 10 + len(self.hosts)
        host = Host(self, name, f"{SUBNET}.{octet}")
        index = len(self.hosts)
        outside, inside = f"{self.tag}v{index}a", f"{self.tag}v{index}b"  # 15 characters at most
        _ip("netns", "add", host.netns)
        self.hosts[name] = host
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", outside, "netns", self.switch)
        _ip("link", "set", inside, "netns", host.netns)
        self._in_switch("ip", "link", "set", outside, "master", "br0")
        self._in_switch("ip", "link", "set", outside, "up")
        for command in (["ip", "link", "set", "lo", "up"], ["ip", "link", "set", inside, "name", "eth0"],
                        ["ip", "addr", "add", f"{host.address}/24", "dev", "eth0"],
                        ["ip", "link", "set", "eth0", "up"]):
            _ip("netns", "exec", host.netns, *command)
        self._write_hosts()
        return host

    def _write_hosts(self) -> None:
        """Every host's /etc/hosts names all of them; rewritten in place, so processes that
        already mounted it see the new names too."""
        text = "127.0.0.1 localhost\n" + "".join(f"{h.address} {h.name}\n" for h in self.hosts.values())
        for host in self.hosts.values():
            os.makedirs(f"/etc/netns/{host.netns}", exist_ok=True)
            with open(f"/etc/netns/{host.netns}/hosts", "a+") as f:
                f.seek(0)
                f.truncate()
                f.write(text)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for host in self.hosts.values():
            _kill_namespace(host.netns)
        _kill_namespace(self.switch)
        if signal.getsignal(signal.SIGTERM) == self._on_term:
            signal.signal(signal.SIGTERM, self._previous)

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _main(words: list[str]) -> int:
    if words == ["down"]:
        names = [n for n in _ip("netns", "list", check=False).stdout.split() if re.fullmatch(rf"{PREFIX}\d+-\S+", n)]
        for name in names:
            _kill_namespace(name)
        print(f"removed {len(names)} namespaces: {' '.join(names) or '-'}")
        return 0
    if words == ["up"]:
        reason = unavailable()
        if reason:
            print(f"cannot build the cluster: {reason}", file=sys.stderr)
            return 2
        net = Network()
        hosts = [net.host(name) for name in ("head", "worker1", "worker2", "s3")]
        for host in hosts:
            print(f"{host.name:8} {host.address:12} ip netns exec {host.netns} ...")
        print("Ctrl-C removes them")
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
        net.close()
        return 0
    print("usage: python -m tests.cluster.harness up|down", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
