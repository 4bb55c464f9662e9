"""Real sshd "machines" on loopback addresses (127.0.2.2, .3, ... each with its own host key and port) and an
offline podman image, for the ssh launcher's tests. Nothing is installed here: without openssh-server
(or podman, runc, debootstrap for the container tests) the tests are skipped with the package to add."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers.ray_lab import comm, kill_quietly

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
SSH_KEYGEN = shutil.which("ssh-keygen")


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_listening(proc: subprocess.Popen, host: str, port: int, log: Path, timeout_s: float, what: str) -> None:
    """Until `proc` (a server writing `log`) accepts connections on host:port; its log's tail if it dies first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited: {log.read_text()[-500:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen on {host}:{port} within {timeout_s:g} s")
            time.sleep(0.05)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def sshd_config(host: str, port: int, host_key: Path, directory: Path, extra: str = "") -> str:
    """A test sshd's config: key login only, its own host key, authorized keys and pid file in `directory`."""
    return (f"Port {port}\nListenAddress {host}\nHostKey {host_key}\n"
            f"AuthorizedKeysFile {directory / 'authorized_keys'}\nPidFile {directory / 'sshd.pid'}\n"
            "StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\nMaxSessions 64\nMaxStartups 64\nLogLevel ERROR\n" + extra)


@dataclass
class SshMachine:
    name: str
    host: str
    port: int
    dir: Path
    host_key: Path
    client_key: Path
    known_hosts: Path
    proc: subprocess.Popen | None = None
    log: list[str] = field(default_factory=list)

    def public_host_key(self) -> str:
        return (self.host_key.with_suffix(".pub")).read_text().split()[1]

    def start(self) -> None:
        config = self.dir / "sshd_config"
        config.write_text(sshd_config(self.host, self.port, self.host_key, self.dir))
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "sshd.log", "ab"))
        wait_listening(self.proc, self.host, self.port, self.dir / "sshd.log", 10, "sshd")

    def sessions(self) -> list[int]:
        """The per-connection sshd processes (and their children)."""
        return _descendants(self.proc.pid) if self.proc else []

    def kill(self) -> None:
        """The machine's sshd dies: the listener and every session process (SIGKILL)."""
        if self.proc is None:
            return
        for pid in [self.proc.pid] + [p for p in self.sessions() if comm(p) == "sshd"]:
            kill_quietly(pid)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

    def fleet_entry(self, workdir: Path, **extra) -> dict:
        return {"name": self.name, "launcher": "ssh", "host": self.host, "port": self.port, "user": "root",
                "identity_file": str(self.client_key), "known_hosts": str(self.known_hosts), "gpus": "none",
                "cpu_slots": 1, "workdir": str(workdir), **extra}


# The lab's own loopback range. The Ray labs' nodes have fixed addresses in 127.0.0.x (tests/helpers/ray_lab.py,
# test_ray.py, launcher_cases.py); when the lab counted up from 127.0.0.2 too, a session that had made ten machines
# before test_fleet_up_and_down_over_ssh gave its SSH worker 127.0.0.12, the address of that test's Ray head.
SSH_LAB_NET = "127.0.2"


class SshLab:
    """Makes sshd machines on 127.0.2.N (N = 2, 3, ... 254), all trusting one client key."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.client_key = base / "client_key"
        subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(self.client_key)], check=True)
        self.machines: list[SshMachine] = []

    def machine(self, name: str, *, trusted: bool = True, start: bool = True) -> SshMachine:
        index = len(self.machines) + 2
        assert index < 255, "the SSH lab's loopback range is used up"
        host = f"{SSH_LAB_NET}.{index}"
        directory = self.base / name
        directory.mkdir()
        host_key = directory / "host_key"
        subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        shutil.copy(self.client_key.with_suffix(".pub"), directory / "authorized_keys")
        machine = SshMachine(name, host, _free_port(host), directory, host_key, self.client_key,
                             directory / "known_hosts")
        if trusted:
            machine.known_hosts.write_text(f"[{host}]:{machine.port} ssh-ed25519 {machine.public_host_key()}\n")
        if start:
            machine.start()
        self.machines.append(machine)
        return machine

    def close(self) -> None:
        for machine in self.machines:
            machine.stop()


@pytest.fixture(scope="session")
def ssh_lab():
    if SSHD is None or SSH_KEYGEN is None:
        pytest.skip("openssh-server is not installed: apt-get install -y openssh-server (scripts/system-packages.txt)")
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    base = Path(tempfile.mkdtemp(prefix="orch-ssh-"))
    lab = SshLab(base)
    yield lab
    lab.close()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def ssh_machines(ssh_lab):
    """Three running, trusted machines shared by the tests that do not break them."""
    return [ssh_lab.machine(f"m{i}") for i in range(3)]


# ---- podman ----------------------------------------------------------------------------------------------------
PODMAN_TOOLS = ("podman", "runc", "debootstrap")


@dataclass
class PodmanImage:
    name: str
    image_id: str
    options: object  # PodmanOptions


@pytest.fixture(scope="session")
def podman_image():
    """A Debian bookworm minbase image with python3, built offline once per session (debootstrap + import)."""
    missing = [tool for tool in PODMAN_TOOLS if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}")]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: apt-get install -y podman runc debootstrap "
                    "(scripts/system-packages.txt)")
    from orchestrator.launchers.containers import PodmanOptions, image_id_argv, parse_image_id

    base = Path(tempfile.mkdtemp(prefix="orch-podman-"))
    options = PodmanOptions(root=str(base / "root"), runroot=str(base / "runroot"), tmpdir=str(base / "tmp"))
    (base / "tmp").mkdir()
    rootfs = base / "rootfs"
    cached = os.environ.get("ORCH_TEST_ROOTFS_TAR")  # a tarball of a previous build, to skip debootstrap locally
    name = "localhost/orch-test:bookworm"
    prefix = ["podman", *options.global_flags()]
    try:
        if cached and os.path.isfile(cached):
            with open(cached, "rb") as tar:
                subprocess.run([*prefix, "import", "-", name], stdin=tar, check=True, capture_output=True, timeout=300)
        else:
            result = subprocess.run(["debootstrap", "--variant=minbase", "--include=python3-minimal,libpython3.11-stdlib",
                                     "bookworm", str(rootfs)], capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                pytest.skip(f"debootstrap failed (no Debian mirror?): {result.stderr[-300:]}")
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            subprocess.run([*prefix, "import", "-", name], stdin=tar.stdout, check=True, capture_output=True, timeout=300)
            tar.wait()
        out = subprocess.run(image_id_argv("podman", name, options), capture_output=True, text=True, check=True).stdout
        yield PodmanImage(name, parse_image_id(out), options)
    finally:
        subprocess.run([*prefix, "rm", "-a", "-f"], capture_output=True, timeout=120)
        subprocess.run([*prefix, "system", "reset", "-f"], capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


# ---- Slurm -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def slurm_lab():
    """A real two-node Slurm cluster (munged, slurmctld, two slurmd, 4 fake GPUs a node), once per session
    (tests/helpers/slurm_lab.py); skipped with the install command when Slurm's packages are missing."""
    from tests.helpers.slurm_lab import INSTALL, SlurmLab, missing_tools

    missing = missing_tools()
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: {INSTALL}")
    lab = SlurmLab()
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()
