"""Local launcher: one subprocess per trial on this machine, in its own working directory and process group.

- Pinned to its GPUs through CUDA_VISIBLE_DEVICES, or to its CPU slot's cores (affinity + OMP threads).
- stdout and stderr go, merged, to `train.log` in the trial's directory and, line by line, to the
  controller's queue (metric points reach the database while the run goes).
- The job's process group is killed on cancel or timeout; PR_SET_PDEATHSIG makes the job receive SIGTERM
  if the controller dies, even by SIGKILL (the trainer, or torchrun, then ends its own workers).
- Jobs die with their controller, so `reattach` finds nothing to attach to and returns None; a job still running
  on this host then (stopping, or ignoring SIGTERM) gets the kill grace to end, then its group is SIGKILLed (by pid
  and start time, never a reused pid). Its slot stays claimed until it is gone (orchestrator/claims/reaper.py).
"""

from __future__ import annotations

import ctypes
import errno
import os
import queue
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import ClassVar, Literal


from .. import warm
from ..config.fleet import Capability, Machine
from ..gpu import local_gpus
from ..procs import KILL_GRACE_S, kill_group, process_alive, process_start_time, terminate_tree  # noqa: F401
from ..records import DISK_FULL, MAX_LINE_BYTES, JobSpec  # noqa: F401
from .base import Event, ExitEvent, JobHandle, JobRecord, Launcher, LineEvent, MachineInfo, Slot, machine_info
from .containers import local_container

_PR_SET_PDEATHSIG = 1
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - non-Linux
    _libc = None


class LocalJob(JobHandle):
    cleanup: list[str] | None = None  # removes the job's container: killing its client can leave it running

    def __init__(self, key: int, proc: subprocess.Popen, workdir: Path, log_path: Path, command: list[str],
                 kill_grace_s: float = KILL_GRACE_S) -> None:
        self.key, self.proc, self.workdir, self.log_path, self.command = key, proc, workdir, log_path, command
        self.kill_grace_s = kill_grace_s
        self.pid = proc.pid
        self.pid_start = process_start_time(proc.pid)
        self._cancelled = threading.Event()

    def cancel(self, reason: str) -> None:
        if self._cancelled.is_set():
            return
        self._cancelled.set()

        def _stop() -> None:
            terminate_tree(self.proc, self.kill_grace_s)
            if self.cleanup:
                subprocess.run(self.cleanup, capture_output=True, timeout=60)

        threading.Thread(target=_stop, daemon=True, name=f"kill-{self.key}").start()


def log_write_error(log_path: Path, exc: OSError) -> str:
    """The ExitEvent error of a job whose log cannot be written (DISK_FULL first when the disk is full)."""
    what = DISK_FULL if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "log write failed"
    return f"{what}: cannot write {log_path}: {exc.strerror or exc}"


def _pump(job: LocalJob, log_file, events: "queue.Queue[Event]") -> None:
    """Copy the job's output to its log file and, line by line, to the controller. A line longer than
    MAX_LINE_BYTES is kept whole in the file but reaches the parser cut (bounded memory for any output). A log
    that cannot be written (disk full) kills the job: its outcome could not be kept."""
    stream = job.proc.stdout
    error = None
    try:
        cut = False
        while True:
            raw = stream.readline(MAX_LINE_BYTES)
            if not raw:
                break
            if error is None:
                try:
                    log_file.write(raw)
                    log_file.flush()
                except OSError as exc:
                    error = log_write_error(job.log_path, exc)
                    job.cancel(error)
            if not cut:
                events.put(LineEvent(job.key, raw.decode("utf-8", errors="replace")))
            cut = not raw.endswith(b"\n")
    finally:
        try:
            log_file.close()
        except OSError as exc:
            error = error or log_write_error(job.log_path, exc)
        returncode = job.proc.wait()
        events.put(ExitEvent(job.key, returncode, error))


class LocalMachine(Machine):
    """A `launcher: local` machine: the controller's own host (no fields beyond the shared ones)."""

    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.CPU_AFFINITY, Capability.RUN_COMMAND})
    launcher: Literal["local"] = "local"

    @property
    def claim_key(self) -> str:
        """The controller's own host: `local` on two hosts are two machines."""
        return f"{self.name}@{socket.gethostname()}"


def _kill_if_alive(pid: int | None, start: str | None) -> None:
    if process_alive(pid, start):
        kill_group(pid, signal.SIGKILL)


class LocalLauncher(Launcher):
    name = "local"
    machine_type = LocalMachine

    def __init__(self, *, kill_grace_s: float = KILL_GRACE_S) -> None:
        self.kill_grace_s = kill_grace_s

    def probe(self, machine: Machine) -> MachineInfo:
        return machine_info(machine, local_gpus(nvidia_smi=machine.nvidia_smi), cpu_count=len(os.sched_getaffinity(0)))

    def run_command(self, machine: Machine, argv: list[str], timeout_s: float = 30.0) -> tuple[int, str]:
        try:
            result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return 127, str(exc)
        return result.returncode, result.stdout + result.stderr

    def reattach(self, record: JobRecord, machine: Machine, events: "queue.Queue[Event]") -> None:
        """A job outlives its controller while it stops after SIGTERM (PR_SET_PDEATHSIG: a trainer saving a
        checkpoint), or if it ignores it; its output went nowhere since, so nothing is attached to. On the controller's
        own host only, what still runs is given the kill grace, as a cancel gives it, then its group is SIGKILLed."""
        same_host = bool(record.controller) and record.controller.split(":", 1)[0] == socket.gethostname()
        if same_host and process_alive(record.pid, record.pid_start):
            timer = threading.Timer(self.kill_grace_s, _kill_if_alive, (record.pid, record.pid_start))
            timer.daemon = True
            timer.start()
        return None

    def job_alive(self, record: JobRecord, machine: Machine) -> bool:
        """A job outlives its controller while it finishes after SIGTERM (PR_SET_PDEATHSIG), or if it ignores it (then
        its study's next controller kills it, `reattach`): its process, by pid and start time, on this host. A job a
        controller on another host started ran on that host's `local` machine, not this one."""
        same_host = bool(record.controller) and record.controller.split(":", 1)[0] == socket.gethostname()
        return same_host and process_alive(record.pid, record.pid_start)

    def start(self, job: JobSpec, machine: Machine, slot: Slot, workdir: Path,
              events: "queue.Queue[Event]") -> LocalJob:
        workdir.mkdir(parents=True, exist_ok=True)
        job = warm.prepare(self, job, machine, str(workdir.resolve()))  # caches and data (orchestrator/warm)
        events = warm.watch(events, job)
        log_path = workdir / "train.log"
        env = {**os.environ, **machine.env, **job.env, **job.secret_env}
        if slot.gpu_ids:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, slot.gpu_ids))
        else:
            env["CUDA_VISIBLE_DEVICES"] = ""
            env.setdefault("OMP_NUM_THREADS", str(max(1, len(slot.cpu_ids))))
        env["PYTHONUNBUFFERED"] = "1"
        cpu_ids = set(slot.cpu_ids) & os.sched_getaffinity(0) if slot.cpu_ids else set()

        def _child_setup() -> None:  # runs in the child between fork and exec: keep it minimal
            if _libc is not None:
                _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if cpu_ids:
                os.sched_setaffinity(0, cpu_ids)

        launch = local_container(machine, job, slot, workdir.resolve())  # runtime none: job.argv as it is
        log_file = open(log_path, "ab")
        try:
            proc = subprocess.Popen(launch.argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_child_setup)
        except OSError as exc:
            log_file.write(f"orch: cannot start {job.argv[0]!r}: {exc}\n".encode())
            log_file.close()
            raise
        handle = LocalJob(job.trial, proc, workdir, log_path, list(launch.argv), self.kill_grace_s)
        handle.container_image_id, handle.cleanup = launch.image_id, launch.cleanup
        threading.Thread(target=_pump, args=(handle, log_file, events), daemon=True, name=f"log-{job.trial}").start()
        return handle
