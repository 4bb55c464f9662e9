"""A stand-in trainer's wrapper for the shared-fleet tests: records the GPUs a trial got and when it ran.

`python slot_recorder.py RECORD_FILE [--linger S] [--slow-while-missing FILE] [--hold-trial N] -- ARGV...` appends one JSON line `{"event": "start", ...}` to
RECORD_FILE (the job's CUDA_VISIBLE_DEVICES, its trial directory, its pid, the wall time), runs ARGV as a child,
then appends `{"event": "end", ...}` and exits with the child's status. On SIGTERM (its controller stopped it, or
died: PR_SET_PDEATHSIG, the ssh wrapper's watcher) it stops the child, keeps running `--linger` seconds more (a job
that takes a while to stop: its slot must stay claimed meanwhile), records its end and exits 143. While FILE of
`--slow-while-missing` does not exist, the child runs 60 s (`--wall-s 60` added): a run to kill mid-way. The job of
trial N (`--hold-trial`, its directory trial-NNNN) runs until it is stopped (`--wall-s 3600`). Lines are appended
with O_APPEND, whole, so several jobs (on several "machines" of one host) share the file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time


def record(path: str, event: str, **extra) -> None:
    line = json.dumps({"event": event, "time": time.time(), "pid": os.getpid(), "dir": os.getcwd(),
                       "gpus": os.environ.get("CUDA_VISIBLE_DEVICES", ""), **extra}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def main() -> int:
    args = sys.argv[1:]
    path, linger = args[0], 0.0
    rest = args[1:]
    if rest[:1] == ["--linger"]:
        linger, rest = float(rest[1]), rest[2:]
    slow_while = None
    if rest[:1] == ["--slow-while-missing"]:
        slow_while, rest = rest[1], rest[2:]
    hold = None
    if rest[:1] == ["--hold-trial"]:
        hold, rest = int(rest[1]), rest[2:]
    argv = rest[1:] if rest[:1] == ["--"] else rest
    if slow_while is not None and not os.path.exists(slow_while):
        argv = [*argv, "--wall-s", "60"]  # a long run, to be killed mid-way; once FILE exists, runs are short again
    if hold is not None and os.path.basename(os.getcwd()) == f"trial-{hold:04d}":
        argv = [*argv, "--wall-s", "3600"]  # still running whenever its controller is killed
    # signals are taken with sigwait, not in a handler (a handler calling child.wait() while the main thread waits
    # on the child deadlocks on subprocess' lock); a second SIGTERM while it lingers stays pending, unanswered
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGCHLD})
    record(path, "start")
    child = subprocess.Popen(argv, preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_SETMASK, set()))  # its own
    stopped = False
    while not stopped and child.poll() is None:
        stopped = signal.sigwait({signal.SIGTERM, signal.SIGCHLD}) == signal.SIGTERM
    # the SIGTERM sent to the job's process group also ends the child: when that happens before the loop waits (the
    # child just started), the child is gone and the SIGTERM still pending; the job was stopped all the same
    if stopped or signal.SIGTERM in signal.sigpending():
        child.terminate()  # (nothing when it has ended)
        record(path, "term")
        time.sleep(linger)  # a job that takes this long to stop (its GPUs are still in use)
        child.wait()
        record(path, "end", status=143)
        return 143
    record(path, "end", status=child.returncode)
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
