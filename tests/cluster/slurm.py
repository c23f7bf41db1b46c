"""Slurm on hosts of their own: ``slurmctld`` on one namespace, ``slurmd`` on each node's,
munge for authentication, and a ``slurm.conf`` written here (Debian's ``slurm-wlm``).

    with Network() as net:
        slurm = Slurm(net, workdir, nodes=2, cpus=2, gpus=1)
        job = slurm.sbatch("--nodes=2", "docker/slurm.sbatch", env={...})
        state = slurm.wait(job)          # COMPLETED, FAILED, ...
        slurm.close()

Nodes declare logical GPUs (``Gres=gpu:N`` with no device files), so ``--gpus-per-node``
is scheduled for real; Ray sees them as logical GPUs and the runs compute on the CPU.
``Slurm.unavailable()`` says why it cannot run here (no packages, no root).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from tests.cluster.harness import Network, wait_for

DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "sacct", "scontrol")


def unavailable() -> str | None:
    missing = [d for d in DAEMONS if shutil.which(d) is None and not os.path.exists(f"/usr/sbin/{d}")]
    if missing:
        return (f"Slurm is not installed ({', '.join(missing)} missing): as root, "
                "`apt-get install slurm-wlm munge`")
    if not os.path.exists("/etc/munge/munge.key"):
        return "munge has no key (/etc/munge/munge.key): as root, `mungekey --create`"
    return None


def _sbin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class Slurm:
    def __init__(self, net: Network, workdir: Path, *, nodes: int = 2, cpus: int = 2, gpus: int = 1,
                 memory_mb: int = 4000):
        self.net, self.workdir = net, Path(workdir)
        self.ctl = net.host("slurmctl", 20)
        self.nodes = [net.host(f"node{i + 1}", 21 + i) for i in range(nodes)]
        spool = self.workdir / "spool"
        for folder in ("ctld", "munge", "log", *(n.name for n in self.nodes)):
            (spool / folder).mkdir(parents=True, exist_ok=True)
        self.conf = self.workdir / "slurm.conf"
        names = ",".join(n.name for n in self.nodes)
        self.conf.write_text("\n".join([
            "ClusterName=hessiansweep",
            f"SlurmctldHost={self.ctl.name}({self.ctl.address})",
            "AuthType=auth/munge", f"AuthInfo=socket={spool / 'munge' / 'munge.socket'}",
            "CredType=cred/munge",
            "SlurmUser=root", "SlurmdUser=root",
            f"StateSaveLocation={spool / 'ctld'}", f"SlurmdSpoolDir={spool}/%n",
            f"SlurmctldPidFile={spool}/slurmctld.pid", f"SlurmdPidFile={spool}/slurmd-%n.pid",
            f"SlurmctldLogFile={spool / 'log'}/slurmctld.log", f"SlurmdLogFile={spool / 'log'}/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none",
            "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "GresTypes=gpu", "ReturnToService=2", "SlurmdParameters=config_overrides",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/filetxt", f"JobCompLoc={spool / 'log'}/jobcomp.txt",
            "SlurmctldTimeout=30", "SlurmdTimeout=30", "InactiveLimit=0", "KillWait=5", "MinJobAge=600",
            *[f"NodeName={n.name} NodeAddr={n.address} CPUs={cpus} RealMemory={memory_mb} Gres=gpu:{gpus} "
              "State=UNKNOWN" for n in self.nodes],
            f"PartitionName=main Nodes={names} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))
        # slurmd counts a node's GPUs by their device files: empty files stand in for them
        devices = [self.workdir / f"nvidia{i}" for i in range(gpus)]
        for device in devices:
            device.touch()
        (self.workdir / "gres.conf").write_text("AutoDetect=off\n" + "".join(
            f"Name=gpu File={device}\n" for device in devices))
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.munge_socket = spool / "munge" / "munge.socket"
        self.ctl.popen(_sbin("munged"), "--force", "--foreground", f"--socket={self.munge_socket}",
                       f"--pid-file={spool / 'munge' / 'munged.pid'}", f"--log-file={spool / 'log' / 'munged.log'}",
                       f"--seed-file={spool / 'munge' / 'seed'}", stdout=subprocess.DEVNULL,
                       stderr=subprocess.STDOUT)
        wait_for(self.munge_socket.exists, 30, "munged")
        self.ctl.popen(_sbin("slurmctld"), "-D", "-f", str(self.conf), env=self.env,
                       stdout=open(self.workdir / "slurmctld.out", "wb"), stderr=subprocess.STDOUT)
        wait_for(lambda: self.scontrol("ping").returncode == 0, 60, "slurmctld")
        for node in self.nodes:
            node.popen(_sbin("slurmd"), "-D", "-f", str(self.conf), "-N", node.name, env=self.env,
                       stdout=open(self.workdir / f"slurmd-{node.name}.out", "wb"), stderr=subprocess.STDOUT)
        wait_for(self._nodes_idle, 90, "the slurmd nodes to register")

    def scontrol(self, *words: str) -> subprocess.CompletedProcess:
        return self.ctl.run("scontrol", *words, env=self.env, check=False, timeout=60)

    def _nodes_idle(self) -> bool:
        out = self.ctl.run("sinfo", "-h", "-N", "-o", "%N %t", env=self.env, check=False, timeout=60).stdout
        states = dict(line.split() for line in out.splitlines() if line.strip())
        return len(states) == len(self.nodes) and all(s.startswith("idle") for s in states.values())

    def sbatch(self, *words: str, env: dict | None = None, cwd: str | None = None) -> str:
        """Submit from the first node (a login node's place); the job id."""
        out = self.nodes[0].run("sbatch", "--parsable", *words, env={**self.env, **(env or {})}, cwd=cwd, timeout=60)
        return out.stdout.strip().split(";")[0]

    def state(self, job: str) -> str:
        out = self.scontrol("show", "job", job).stdout
        match = re.search(r"JobState=(\S+)", out)
        return match.group(1) if match else "UNKNOWN"

    def wait(self, job: str, timeout: float = 1200) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            state = self.state(job)
            if state not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "UNKNOWN"):
                return state
            time.sleep(2)
        self.scontrol("cancel", job)
        return "TIMEOUT (cancelled by the test)"
