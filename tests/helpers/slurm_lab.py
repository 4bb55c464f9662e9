"""A real Slurm cluster on this machine for the slurm launcher's tests: munged, slurmctld and two slurmd nodes
(`sa`, `sb`, Debian's multiple-slurmd build), each node with 4 fake GPUs (character devices made with mknod), all
in one temp dir, all on 127.0.0.1 (ENVIRONMENT.md: CommunicationParameters=NoCtldInAddrAny,NoInAddrAny).

No accounting (no slurmdbd): the launcher reads job states from squeue/scontrol, which keep a finished job for
MinJobAge (300 s). Process tracking is linuxproc without cgroups (the nodes claim more than this machine has, which
cgroups would enforce). Started once per test session (tests/launchers/conftest.py); `stop()` ends every daemon it
started by its pid. Without the packages the fixture skips with `INSTALL`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

INSTALL = ("apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge "
           "(scripts/system-packages.txt)")
DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
NODES = ("sa", "sb")
GPUS_PER_NODE = 4


def missing_tools() -> list[str]:
    return [tool for tool in DAEMONS if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}")]


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _free_ports(count: int) -> list[int]:
    """`count` consecutive free ports on 127.0.0.1 (slurmd nodes take Port=P+i; srun a range)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count >= 65000:
            continue
        ok = True
        for port in range(base, base + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return list(range(base, base + count))
    raise RuntimeError("no run of free ports on 127.0.0.1")


class SlurmLab:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="orch-slurm-"))
        os.chmod(self.dir, 0o755)  # munge wants its socket's directory searchable
        self.conf = self.dir / "slurm.conf"
        self.env = {"SLURM_CONF": str(self.conf)}
        self.procs: dict[str, subprocess.Popen] = {}
        self.host = socket.gethostname().split(".")[0]

    # -- files
    def _write_config(self) -> None:
        d = self.dir
        munge = d / "munge"
        ports = _free_ports(3 + len(NODES))
        ctld, srun_base = ports[0], 17000 + (ports[0] % 2000)
        self.ctld_port = ctld
        (d / "state").mkdir()
        (d / "dev").mkdir()
        nodes, gres = [], []
        for i, node in enumerate(NODES):
            (d / "spool" / node).mkdir(parents=True)
            for g in range(GPUS_PER_NODE):
                os.mknod(d / "dev" / f"{node}-gpu{g}", 0o666 | 0o020000, os.makedev(195, i * GPUS_PER_NODE + g))
            nodes.append(f"NodeName={node} NodeHostname={self.host} NodeAddr=127.0.0.1 Port={ports[1 + i]} CPUs=2 "
                         f"RealMemory=4000 Gres=gpu:{GPUS_PER_NODE} State=UNKNOWN")
            gres.append(f"NodeName={node} Name=gpu File={d}/dev/{node}-gpu[0-{GPUS_PER_NODE - 1}]")
        lines = [
            "ClusterName=orchtest", f"SlurmctldHost={self.host}(127.0.0.1)", f"SlurmctldPort={ctld}",
            f"SrunPortRange={srun_base}-{srun_base + 99}",
            "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny", "AuthType=auth/munge",
            f"AuthInfo=socket={munge}/sock", "SlurmUser=root", "SlurmdUser=root",
            f"StateSaveLocation={d}/state", f"SlurmdSpoolDir={d}/spool/%n",
            f"SlurmctldPidFile={d}/slurmctld.pid", f"SlurmdPidFile={d}/slurmd-%n.pid",
            f"SlurmctldLogFile={d}/slurmctld.log", f"SlurmdLogFile={d}/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory", "DefMemPerCPU=500", "GresTypes=gpu",
            "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0", "ReturnToService=1",
            "SlurmdParameters=config_overrides", "KillWait=2", "SlurmdTimeout=30", "MinJobAge=600",
            "MpiDefault=none", "JobAcctGatherType=jobacct_gather/none", *nodes,
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        (d / "gres.conf").write_text("AutoDetect=off\n" + "\n".join(gres) + "\n")

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.dir / f"{name}.out", "ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **self.env}, start_new_session=True)
        self.procs[name] = proc
        return proc

    def run(self, *argv: str, timeout: float = 10, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([_tool(argv[0]), *argv[1:]], capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, **self.env})
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: rc {result.returncode}: {result.stderr.strip()}")
        return result

    def _wait(self, what: str, predicate, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}) while waiting for {what}: "
                                       f"{self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"slurm lab: {what} not within {timeout_s:g} s: {self.log_tail('slurmctld')}")
            time.sleep(0.1)

    def log_tail(self, name: str) -> str:
        for path in (self.dir / f"{name}.log", self.dir / f"{name}.out"):
            if path.is_file():
                return path.read_text(errors="replace")[-800:]
        return ""

    # -- life
    def start(self) -> "SlurmLab":
        self._write_config()
        munge = self.dir / "munge"
        munge.mkdir(mode=0o711)
        subprocess.run([_tool("mungekey"), "-c", "-k", str(munge / "munge.key")], check=True, capture_output=True)
        self._start("munged", [_tool("munged"), "-F", "--force", "-S", str(munge / "sock"), f"--key-file={munge}/munge.key",
                               f"--log-file={munge}/munged.log", f"--pid-file={munge}/munged.pid",
                               f"--seed-file={munge}/munged.seed"])
        self._wait("munged", lambda: (munge / "sock").exists(), 10)
        self._start("slurmctld", [_tool("slurmctld"), "-D", "-i"])
        self._wait("slurmctld", lambda: self.run("scontrol", "ping", timeout=5, check=False).stdout.count("UP") > 0, 20)
        for node in NODES:
            self._start(f"slurmd-{node}", [_tool("slurmd"), "-D", "-N", node])
        self._wait("idle nodes", lambda: sorted(self.node_states().values()) == ["idle"] * len(NODES), 30)
        return self

    def node_states(self) -> dict[str, str]:
        out = self.run("sinfo", "-h", "-N", "-o", "%N %T", timeout=5, check=False).stdout
        return dict(line.split() for line in out.splitlines() if len(line.split()) == 2)

    def set_node(self, node: str, state: str, reason: str = "orch test") -> None:
        argv = ["scontrol", "update", f"nodename={node}", f"state={state}"]
        if state.lower() in ("drain", "down"):
            argv.append(f"reason={reason}")
        self.run(*argv)

    def resume(self, node: str) -> None:
        """Back to idle after a drain or a down (ReturnToService=2 also brings a down node back when it answers)."""
        self.run("scontrol", "update", f"nodename={node}", "state=resume", check=False)
        self._wait(f"node {node} idle", lambda: self.node_states().get(node) in ("idle", "mixed", "allocated"), 30)

    def jobs(self) -> list[dict]:
        """Every job slurmctld still knows (running, pending, or ended within MinJobAge)."""
        out = self.run("scontrol", "-o", "show", "job", timeout=10, check=False).stdout
        jobs = []
        for line in out.splitlines():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            if "JobId" in fields:
                jobs.append(fields)
        return jobs

    def cancel_all(self) -> None:
        self.run("scancel", "--full", *[j["JobId"] for j in self.jobs()
                                        if j.get("JobState") in ("RUNNING", "PENDING")], check=False)

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
