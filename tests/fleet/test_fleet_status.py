"""`orch fleet status`: --watch (frames, --count, in place on a terminal, Ctrl-C), unreachable machines, and the
per-GPU lines. The machines are this one (local launcher) and sshd on loopback addresses (conftest.py); the
GPU lines are rendered from a hand-made view because no GPU is here (the nvidia-smi parsing is tested in
tests/orch)."""

from __future__ import annotations

import json
import os
import pty
import select as select_mod
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from orchestrator.cli.fleet_view import render_fleet_status
from tests.conftest import REPO, orch


def _fleet(tmp_path: Path, entries: list[dict]) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({"machines": entries}, sort_keys=False))
    return path


def _orch_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli.main", *args]


def test_watch_prints_count_frames_and_reports_an_unreachable_machine(ssh_lab, ssh_machines, tmp_path):
    gone = ssh_lab.machine("gone", start=False)
    fleet = _fleet(tmp_path, [{"name": "here", "launcher": "local", "gpus": "none", "cpu_slots": 1},
                              ssh_machines[0].fleet_entry(tmp_path / "r"), gone.fleet_entry(tmp_path / "r")])
    url = f"sqlite:///{tmp_path / 'o.db'}"
    result = orch("fleet", "status", "--watch", "--count", "3", "--interval", "0.2", "--json", "--fleet", str(fleet),
                  "--db", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    frames = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(frames) == 3
    for frame in frames:
        m = {x["name"]: x for x in frame["machines"]}
        assert m["here"]["reachable"] and m["here"]["state"] == "idle" and m["here"]["gpu_type"] == "no GPU"
        assert m["m0"]["reachable"] and m["m0"]["launcher"] == "ssh" and m["m0"]["cpu_count"] >= 1
        assert not m["gone"]["reachable"] and m["gone"]["state"] == "down" and "cannot connect" in m["gone"]["error"]
    text = orch("fleet", "status", "--watch", "--count", "2", "--interval", "0.2", "--fleet", str(fleet), "--db", url,
                cwd=tmp_path)
    assert text.returncode == 0 and text.stdout.count("fleet: ") == 2  # piped: one frame after another
    assert "down" in text.stdout and "cannot connect" in text.stdout and "no GPU" in text.stdout


def test_watch_exits_cleanly_on_ctrl_c(tmp_path):
    fleet = _fleet(tmp_path, [{"name": "here", "launcher": "local", "gpus": "none"}])
    proc = subprocess.Popen(_orch_argv("fleet", "status", "--watch", "--interval", "0.2", "--fleet", str(fleet),
                                       "--db", f"sqlite:///{tmp_path / 'o.db'}"),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().startswith("fleet: ")  # the first frame is out: it is watching
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err and err.strip() == ""


def test_watch_redraws_in_place_on_a_terminal(tmp_path):
    fleet = _fleet(tmp_path, [{"name": "here", "launcher": "local", "gpus": "none"}])
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(_orch_argv("fleet", "status", "--watch", "--count", "3", "--interval", "0.2", "--fleet",
                                       str(fleet), "--db", f"sqlite:///{tmp_path / 'o.db'}"),
                            cwd=tmp_path, stdin=terminal, stdout=terminal, stderr=terminal,
                            env={**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm", "COLUMNS": "160"})
    os.close(terminal)
    screen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select_mod.select([controller], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        elif proc.poll() is not None:
            break
    os.close(controller)
    assert proc.wait(timeout=20) == 0
    output = screen.decode(errors="replace")
    assert output.count("fleet: ") >= 3  # three refreshes (rich draws the last one again when it stops)
    assert "\x1b[2K" in output or "\x1b[1A" in output or "\x1b[A" in output  # cursor moved back over the last frame


def test_gpu_lines_and_no_gpu():
    """GPU values as nvidia-smi reports them (hand-made: no GPU on this machine)."""
    gpu = {"index": 0, "name": "NVIDIA H100 80GB HBM3", "utilization_pct": 97.0, "memory_used_mib": 61234.0,
           "memory_total_mib": 81559.0, "temperature_c": 64.0, "driver_version": "570.86"}
    view = {"fleet": "fleet.yaml", "at": "2026-01-01T00:00:00+00:00", "machines": [
        {"name": "h1", "launcher": "ssh", "state": "busy", "reachable": True, "gpu_count": 2,
         "gpu_type": "NVIDIA H100 80GB HBM3", "gpus": [gpu, {**gpu, "index": 1, "utilization_pct": None}],
         "cpu_count": 96, "cpu_slots": None, "heartbeat_age_s": 3.2, "error": None,
         "running": [{"study": "s", "number": 7, "slot": "gpu:0,1", "elapsed_s": 61.0, "val_loss": 3.3012}]},
        {"name": "c1", "launcher": "local", "state": "drained", "reachable": True, "gpu_count": 0, "gpu_type": "no GPU",
         "gpus": [], "cpu_count": 2, "cpu_slots": 2, "heartbeat_age_s": None, "error": None, "running": []}]}
    text = render_fleet_status(view)
    assert "2 x NVIDIA H100 80GB HBM3" in text and "s#7 gpu:0,1 61s val_loss 3.3012" in text
    assert "h1 gpu0: NVIDIA H100 80GB HBM3 util 97% mem 61234/81559 MiB temp 64C" in text
    assert "h1 gpu1: NVIDIA H100 80GB HBM3 util - mem" in text  # [N/A] from nvidia-smi
    assert "no GPU (2 CPU slots, 2 cores)" in text and "drained" in text and "3s ago" in text
