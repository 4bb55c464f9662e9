"""A lab of "machines" as Linux network namespaces, each with its own sshd, for fleet tests over a real network.

Topology (one lab): a bridge `ob<tag>` in the root namespace with 10.200.<net>.254/24; per machine a namespace
`orch-<tag>-<name>` whose `eth0` (10.200.<net>.<i>) is the far end of a veth pair `ov<tag>h<i>` plugged into the
bridge. The root namespace reaches the machines through the bridge only: `ip route add blackhole 10.200.0.0/16`
is in place BEFORE any traffic (the development notes on network namespaces), so a packet for a 10.200 address that is not on the
bridge is dropped instead of leaving through eth0. Only our own namespaces are ever addressed.

`<tag>` is unique per process and `<net>` a /24 of 10.200/16 no other lab uses, so labs of engineers or CI jobs
on one machine do not collide. The filesystem is shared (a namespace isolates the network only): a machine's
workdir is a local directory the test can read.

- `cut(name)` / `restore(name)`: `ip link set <veth> down|up` on the bridge side: the cable is pulled, nothing on
  either side is told (TCP connections stay open, with nothing getting through).
- sshd runs with `ClientAliveInterval` so a session whose client vanished behind a cut ends (and its job with it).
- `cpus=` pins a machine's sshd (and so every job and `nproc` there) to some cores: a machine with fewer cores.
- `bin_dir=` goes first on the PATH of the machine's sessions (sshd `SetEnv`): stand-in commands such as an
  `nvidia-smi` that prints a captured GPU listing, since no GPU is here.
- `close()` kills the sshds, deletes namespaces, veths and the bridge, and removes the blackhole route if it added
  it and no other lab is left; it runs from a fixture finalizer even when a test fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.fleet.conftest import _descendants, sshd_config, wait_listening
from tests.helpers.ray_lab import kill_quietly

IP = shutil.which("ip") or "/usr/sbin/ip"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"
GUARD = "10.200.0.0/16"


class LabUnavailable(RuntimeError):
    """Network namespaces (or sshd) cannot be used here: the tests skip with this reason."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([IP, *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


@dataclass
class NetnsMachine:
    name: str
    index: int
    netns: str
    veth: str  # the bridge-side end
    host: str
    dir: Path
    host_key: Path
    client_key: Path
    known_hosts: Path
    cpus: str | None = None
    bin_dir: Path | None = None  # put first on the PATH of every session (stand-in commands, e.g. nvidia-smi)
    proc: subprocess.Popen | None = None
    port: int = 22

    def start_sshd(self) -> None:
        config = self.dir / "sshd_config"
        config.write_text(sshd_config(
            self.host, self.port, self.host_key, self.dir, "ClientAliveInterval 1\nClientAliveCountMax 3\n"
            + (f"SetEnv PATH={self.bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
               if self.bin_dir else "")))
        pin = ["taskset", "-c", self.cpus] if self.cpus else []
        # nsenter --net enters the network namespace only; `ip netns exec` would also give sshd a mount namespace
        # with a fresh /sys, without the cgroup mounts that runc needs for the podman machine
        argv = [NSENTER, f"--net=/run/netns/{self.netns}", *pin, SSHD, "-D", "-e", "-f", str(config)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(self.dir / "sshd.log", "ab"))
        wait_listening(self.proc, self.host, self.port, self.dir / "sshd.log", 15, f"sshd in {self.netns}")

    def stop_sshd(self) -> None:
        if self.proc is None:
            return
        pids = [self.proc.pid, *_descendants(self.proc.pid)]
        for pid in reversed(pids):  # sessions and their jobs first, then the listener
            kill_quietly(pid)
        self.proc.wait(timeout=10)
        self.proc = None

    def fleet_entry(self, workdir: Path, **extra) -> dict:
        return {"name": self.name, "launcher": "ssh", "host": self.host, "port": self.port, "user": "root",
                "identity_file": str(self.client_key), "known_hosts": str(self.known_hosts), "gpus": "none",
                "workdir": str(workdir), **extra}


class NetnsLab:
    """Builds the bridge at construction; `machine()` adds a namespace with its sshd; `close()` undoes it all."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.tag = str(os.getpid() % 100000)
        self.bridge = f"ob{self.tag}"
        self.machines: dict[str, NetnsMachine] = {}
        self._added_guard = False
        self._check_permitted()
        self.net = self._free_net()
        self.client_key = base / "client_key"
        subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(self.client_key)], check=True)
        try:
            self._guard()
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise

    @property
    def gateway(self) -> str:
        return f"10.200.{self.net}.254"

    def _check_permitted(self) -> None:
        if not os.path.exists(IP):
            raise LabUnavailable("iproute2 is not installed: apt-get install -y iproute2 (scripts/system-packages.txt)")
        if not os.path.exists(SSHD):
            raise LabUnavailable("openssh-server is not installed: apt-get install -y openssh-server (scripts/system-packages.txt)")
        probe = f"orch-{self.tag}-probe"
        added = _ip("netns", "add", probe, check=False)
        if added.returncode != 0:
            raise LabUnavailable(f"`ip netns add` is not permitted here ({added.stderr.strip()}): network namespace "
                                 "tests need root (CAP_NET_ADMIN and CAP_SYS_ADMIN)")
        _ip("netns", "del", probe, check=False)

    def _free_net(self) -> int:
        text = _ip("-4", "addr").stdout + _ip("-4", "route").stdout
        used = {int(n) for n in re.findall(r"\b10\.200\.(\d+)\.\d+(?:/24|\s)", text)}
        for net in range(256):
            if net not in used:
                return net
        raise LabUnavailable("every 10.200.N.0/24 is in use by other labs")

    def _guard(self) -> None:
        """The blackhole route for 10.200.0.0/16, before any address of the lab exists."""
        added = _ip("route", "add", "blackhole", GUARD, check=False)
        if added.returncode == 0:
            self._added_guard = True
        elif "exists" not in added.stderr.lower():
            raise RuntimeError(f"cannot add the guard route `blackhole {GUARD}`: {added.stderr.strip()}")
        if "blackhole" not in _ip("route", "show", GUARD).stdout:
            raise RuntimeError(f"the guard route `blackhole {GUARD}` is not in place")

    def machine(self, name: str, *, cpus: str | None = None, bin_dir: Path | None = None) -> NetnsMachine:
        index = len(self.machines) + 1
        netns, veth = f"orch-{self.tag}-{name}", f"ov{self.tag}h{index}"
        directory = self.base / name
        directory.mkdir()
        host_key = directory / "host_key"
        subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        shutil.copy(self.client_key.with_suffix(".pub"), directory / "authorized_keys")
        m = NetnsMachine(name, index, netns, veth, f"10.200.{self.net}.{index}", directory, host_key,
                         self.client_key, directory / "known_hosts", cpus=cpus, bin_dir=bin_dir)
        self.machines[name] = m
        _ip("netns", "add", netns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("link", "set", veth, "master", self.bridge)
        _ip("link", "set", veth, "up")
        _ip("-n", netns, "addr", "add", f"{m.host}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        m.known_hosts.write_text(f"{m.host} ssh-ed25519 {host_key.with_suffix('.pub').read_text().split()[1]}\n")
        m.start_sshd()
        return m

    # ---- faults ----------------------------------------------------------------------------------------------
    def cut(self, name: str) -> None:
        _ip("link", "set", self.machines[name].veth, "down")

    def restore(self, name: str) -> None:
        _ip("link", "set", self.machines[name].veth, "up")

    # ---- teardown --------------------------------------------------------------------------------------------
    def close(self) -> None:
        for m in self.machines.values():
            try:
                m.stop_sshd()
            except Exception:  # noqa: BLE001 - keep tearing down
                pass
            _ip("link", "del", m.veth, check=False)
            _ip("netns", "del", m.netns, check=False)
        self.machines.clear()
        _ip("link", "del", self.bridge, check=False)
        others = re.findall(r"10\.200\.\d+\.", _ip("-4", "addr").stdout)
        if self._added_guard and not others:
            _ip("route", "del", "blackhole", GUARD, check=False)
        self._added_guard = False


__all__ = ["NetnsLab", "NetnsMachine", "LabUnavailable"]
