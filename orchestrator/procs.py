"""Process helpers of the controller's own host (psutil): is a process still the one we started (pid and start
time, never a reused pid), kill a job's process group and every descendant."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import psutil

KILL_GRACE_S = 5.0


def process_start_time(pid: int) -> str | None:
    """When `pid` started (psutil, seconds since the epoch, to the kernel's tick): with the pid it names one
    process, so a pid reused by another process is not mistaken for it."""
    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except (psutil.Error, ValueError):  # gone, not ours to see, or not a valid pid
        return None


def process_alive(pid: int | None, start: str | None) -> bool:
    """Whether the process `pid` that started at `start` still runs (a zombie, dead but not reaped, does not)."""
    if pid is None or start is None:
        return False
    try:
        process = psutil.Process(pid)
        return f"{process.create_time():.2f}" == start and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, ValueError):
        return False


def kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def terminate_tree(proc: subprocess.Popen, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM to the job's process group and to every descendant (also one that left the group), SIGKILL to
    whatever is left `grace_s` later. The leader is waited for through `proc` (psutil would reap our own child
    and its exit status with it), the others through psutil."""
    deadline = time.monotonic() + grace_s
    others = _descendants(proc.pid)
    kill_group(proc.pid, signal.SIGTERM)
    for child in others:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    _, alive = psutil.wait_procs(others, timeout=max(0.0, deadline - time.monotonic()))
    kill_group(proc.pid, signal.SIGKILL)  # also the group's members that outlived the leader
    for child in alive + _descendants(proc.pid):
        with contextlib.suppress(psutil.Error):
            child.kill()
