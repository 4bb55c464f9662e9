"""A real two-node Ray cluster on loopback node IPs (127.0.0.2 head, 127.0.0.3 worker) for the ray launcher's
tests, started and stopped the way a user does it: a fleet file and `orch fleet up` / `orch fleet down`.

Both nodes run on this machine (ENVIRONMENT.md: Ray rewrites 127.0.0.1, so other loopback addresses are node IPs),
with token auth disabled, usage stats off, one CPU and a small object store each. Each lab has its own `--temp-dir`
(short: Ray's socket paths must fit 107 bytes). Teardown is `orch fleet down`, then SIGKILL of any recorded node
process still there, so no Ray process outlives the tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import yaml

from tests.conftest import orch

NODE_REPORT = Path(__file__).with_name("node_report.py")


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class RayLab:
    def __init__(self, base: Path, hosts: tuple[str, ...] = ("127.0.0.2", "127.0.0.3"),
                 names: tuple[str, ...] = ("ra", "rb"), **defaults) -> None:
        self.base = base
        self.temp_dir = tempfile.mkdtemp(prefix="orch-ray-")
        self.port = free_port(hosts[0])
        self.names, self.hosts = names, hosts
        self.env = {"RAY_USAGE_STATS_ENABLED": "0"}
        ray = {"address": f"{hosts[0]}:{self.port}", "auth": "disabled", "temp_dir": self.temp_dir,
               "start_args": ["--num-cpus=1", "--object-store-memory=78643200"], "dead_after_s": 15}
        self.machines = [{"name": name, "host": host, "workdir": str(base / "nodes" / name),
                          "env": {"NODE_NAME": name}} for name, host in zip(names, hosts)]
        self.defaults = {"launcher": "ray", "gpus": "none", "cpu_slots": 1, "ray": ray, **defaults}
        self.fleet = self.write_fleet(base / "fleet.yaml")

    def write_fleet(self, path: Path, machines: list[dict] | None = None) -> Path:
        path.write_text(yaml.safe_dump({"defaults": self.defaults, "machines": machines or self.machines},
                                       sort_keys=False))
        return path

    def state_dir(self, name: str) -> Path:
        return self.base / "nodes" / name / ".orch-ray"

    def node_pid(self, name: str) -> int | None:
        try:
            return int((self.state_dir(name) / f"{name}.pid").read_text().split()[0])
        except (OSError, ValueError):
            return None

    def raylet_pid(self, name: str) -> int | None:
        """The node's raylet: a child of its `ray start --block` process."""
        pid = self.node_pid(name)
        found = children(pid) if pid else []
        return next((c for c in found if comm(c) == "raylet"), None)

    def up(self) -> subprocess.CompletedProcess:
        return orch("fleet", "up", "--fleet", str(self.fleet), cwd=self.base, env=self.env, timeout=180)

    def down(self) -> subprocess.CompletedProcess:
        result = orch("fleet", "down", "--fleet", str(self.fleet), cwd=self.base, env=self.env, timeout=180)
        for name in self.names:  # a teardown that failed must still leave nothing behind
            pid = self.node_pid(name)
            if pid and comm(pid):
                for child in children(pid):
                    kill_quietly(child)
                kill_quietly(pid)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return result


def kill_quietly(pid: int) -> None:
    """SIGKILL, where a process already gone is no error."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def ray_study(path: Path, stand_in_study_path: Path) -> Path:
    """The stand-in study, each job run through node_report.py (it prints where it runs, then execs the trainer)."""
    spec = yaml.safe_load(stand_in_study_path.read_text())
    spec["trainer"]["command"] = [spec["trainer"]["command"][0], str(NODE_REPORT), *spec["trainer"]["command"][1:]]
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
