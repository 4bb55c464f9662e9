"""Shared parts of the liveness tests: a controllable nvidia-smi stand-in, processes that hold a "GPU", and the
loopback sshd machines of tests/fleet."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.fleet.conftest import ssh_lab  # noqa: F401 - the loopback sshd machines

H100 = "NVIDIA H100 80GB HBM3"


class FakeSmi:
    """An nvidia-smi stand-in installed at `path`; `set(...)` changes what it reports, at once."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "nvidia-smi"
        source = (REPO / "tests" / "helpers" / "fake_nvidia_smi.py").read_text()
        self.path.write_text(f"#!{sys.executable}\n{source}")
        self.path.chmod(0o755)
        self.state_file = directory / "state.json"
        self.holders: list[subprocess.Popen] = []
        self.set(gpus=[H100, H100])

    def set(self, gpus: list[str] | None = None, holders: list[dict] | None = None) -> None:
        state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        if gpus is not None:
            state["gpus"] = [{"name": name} for name in gpus]
        if holders is not None:
            state["holders"] = holders
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_file)

    def hold(self, gpu: int, name: str = "python") -> subprocess.Popen:
        """A real process that nvidia-smi (this one) lists on `gpu` for as long as it lives."""
        proc = subprocess.Popen(["sleep", "600"])
        self.holders.append(proc)
        state = json.loads(self.state_file.read_text())
        self.set(holders=state.get("holders", []) + [{"gpu": gpu, "pid": proc.pid, "name": name, "mib": 2048}])
        return proc

    def release(self, proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def close(self) -> None:
        for proc in self.holders:
            if proc.poll() is None:
                self.release(proc)


@pytest.fixture
def fake_smi(tmp_path):
    smi = FakeSmi(tmp_path / "smi")
    yield smi
    smi.close()


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cli(*args: str) -> tuple[int, str, str]:
    """An `orch` command in this process (the same entry point as the `orch` executable; a process of its own costs
    ~2 s of imports on these machines): (exit status, stdout, stderr). `orch study run` runs as a process."""
    import contextlib
    import io

    from orchestrator.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()
