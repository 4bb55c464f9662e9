"""Stopping a local job (launchers/local.py, psutil): SIGTERM to its process group and to every descendant, also
one that left the group (setsid), then SIGKILL to whatever ignored it once the grace period is over."""

from __future__ import annotations

import os
import subprocess
import time

import psutil

from orchestrator.launchers.local import process_alive, process_start_time, terminate_tree
from tests.conftest import wait_for

# a job that ignores SIGTERM, with a child in its group and one that left it (its own session), both ignoring it
JOB = """trap '' TERM
sh -c "trap '' TERM; while :; do sleep 0.05; done" &
echo in-group $!
setsid sh -c "trap '' TERM; while :; do sleep 0.05; done" &
echo own-session $!
while :; do sleep 0.05; done
"""


def test_a_job_ignoring_sigterm_and_its_escaped_child_are_killed_after_the_grace(tmp_path):
    proc = subprocess.Popen(["bash", "-c", JOB], stdout=subprocess.PIPE, text=True, start_new_session=True)
    pids = {}
    for _ in range(2):
        kind, pid = proc.stdout.readline().split()
        pids[kind] = int(pid)
    wait_for(lambda: os.getpgid(pids["own-session"]) != proc.pid, 10, "the child to leave the group (setsid)")
    assert os.getpgid(pids["in-group"]) == proc.pid
    starts = {p: process_start_time(p) for p in [proc.pid, *pids.values()]}
    assert all(process_alive(p, s) for p, s in starts.items())
    began = time.monotonic()
    terminate_tree(proc, grace_s=1.0)
    took = time.monotonic() - began
    assert 1.0 <= took < 5.0, took  # they ignored SIGTERM: the grace was waited out, then SIGKILL
    assert proc.wait(timeout=5) == -9
    wait_for(lambda: not any(process_alive(p, s) for p, s in starts.items()), 5, "every process of the job to be gone")


def test_process_identity_survives_pid_reuse_checks(tmp_path):
    proc = subprocess.Popen(["sleep", "30"])
    start = process_start_time(proc.pid)
    assert process_alive(proc.pid, start) and not process_alive(proc.pid, "1.00")  # another start time: not it
    proc.kill()
    proc.wait()
    assert not process_alive(proc.pid, start) and process_start_time(proc.pid) is None
    zombie = subprocess.Popen(["true"])
    wait_for(lambda: psutil.Process(zombie.pid).status() == psutil.STATUS_ZOMBIE, 10, "a zombie")
    assert not process_alive(zombie.pid, process_start_time(zombie.pid))  # dead, not reaped yet: not alive
    zombie.wait()
