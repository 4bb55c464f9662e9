"""What runs on a Ray node for the ray launcher: a trial's job runner (an actor) and the node's facts (a task).

This module is shipped to the nodes by value (cloudpickle), so it imports only the standard library: the nodes
need Ray and Python, not this project.

`JobRunner` runs one trial: `start()` starts the ssh launcher's wrapper script (`remote_script.job_script`, built by
the controller) under bash with the script on stdin. The wrapper puts the job in its own process group, tees its
output to `job.log` in the trial directory, and kills the group (TERM, then KILL) when its stdin reaches EOF. The
runner holds that stdin open: `cancel()` closes it, and so does the runner's death (the node dying, the controller's
driver exiting, `ray.kill`), so a job never outlives its runner.

The output is kept in a buffer the controller drains with `read(offset)`: bytes before `offset` were received and are
dropped. The buffer is bounded: a job printing faster than the controller reads blocks on its pipe.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading

READ_LIMIT = 1 << 20  # bytes handed back by one read()
BUFFER_LIMIT = 8 << 20  # unread bytes kept before the job's pipe is left to fill


class JobRunner:
    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._buffer = bytearray()
        self._base = 0  # the offset of _buffer[0] in the job's output
        self._done = False
        self._returncode: int | None = None
        self._cond = threading.Condition()

    def hello(self) -> dict:
        return {"home": os.path.expanduser("~"), "pid": os.getpid(), "hostname": socket.gethostname()}

    def run(self, argv: list[str], timeout_s: float) -> tuple[int, str]:
        """A short command on the node (the container image's ID): (exit status, stdout+stderr)."""
        try:
            result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return 127, str(exc)
        return result.returncode, result.stdout + result.stderr

    def start(self, bootstrap: str, script: str) -> int:
        """Start the wrapper; returns the wrapper's pid (the job's pid is in the trial directory's .orch-job.pid)."""
        self._proc = subprocess.Popen(["bash", "-c", bootstrap], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        self._proc.stdin.write(script.encode("utf-8"))
        self._proc.stdin.flush()
        threading.Thread(target=self._pump, daemon=True, name="orch-job-output").start()
        return self._proc.pid

    def _pump(self) -> None:
        fd = self._proc.stdout.fileno()
        while True:
            with self._cond:
                while len(self._buffer) >= BUFFER_LIMIT:
                    self._cond.wait()
            data = os.read(fd, 65536)
            if not data:
                break
            with self._cond:
                self._buffer += data
                self._cond.notify_all()
        returncode = self._proc.wait()
        with self._cond:
            self._done, self._returncode = True, returncode
            self._cond.notify_all()

    def read(self, offset: int, wait_s: float) -> tuple[bytes, bool, int | None]:
        """Output from `offset` on (waits up to `wait_s` for some): (bytes, finished, exit status when finished)."""
        with self._cond:
            drop = min(max(0, offset - self._base), len(self._buffer))
            if drop:
                del self._buffer[:drop]
                self._base += drop
                self._cond.notify_all()
            if not self._buffer and not self._done:
                self._cond.wait(wait_s)
            data = bytes(self._buffer[:READ_LIMIT])
            finished = self._done and len(data) == len(self._buffer)
            return data, finished, self._returncode if finished else None

    def cancel(self) -> None:
        """EOF on the wrapper's stdin: it kills the job's process group (TERM, then KILL after its grace)."""
        if self._proc is not None and self._proc.stdin and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except OSError:
                pass


def run_argv(argv: list[str], timeout_s: float) -> tuple[int, str]:
    """A short command on the node: (exit status, stdout+stderr); 127 when it cannot run or takes too long."""
    try:
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return result.returncode, result.stdout + result.stderr


def write_part(path: str, data: bytes, offset: int) -> int:
    """Write `data` at `offset` of `path` on the node (a staged file's temporary copy; orchestrator/warm): its size."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "r+b" if offset else "wb") as f:
        f.seek(offset)
        f.write(data)
        return f.tell()


def finish_part(part: str, dest: str, keep: bool) -> None:
    """Put a staged file's temporary copy in place (`keep`), or remove it."""
    if keep:
        os.replace(part, dest)
    else:
        try:
            os.unlink(part)
        except OSError:
            pass


def node_facts(nvidia_smi_argv: list[str], timeout_s: float) -> dict:
    """The node's usable cores and nvidia-smi's CSV (empty without nvidia-smi: a CPU node)."""
    facts = {"cpus": len(os.sched_getaffinity(0)), "nvidia_smi": "", "hostname": socket.gethostname()}
    try:
        result = subprocess.run(nvidia_smi_argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return facts
    if result.returncode == 0:
        facts["nvidia_smi"] = result.stdout
    return facts
