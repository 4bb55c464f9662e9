"""A stand-in controller for the launcher contract's re-attach test (test_launcher_contract.py): it starts one job
through a launcher, prints what a trial row records of it (one JSON line), then `ready` once the job has printed
its own `ready` line, and waits to be killed: the test kills it with SIGKILL, a controller dying without a word.

Argument: one JSON object {factory: "module:Class", options: {...}, machine: {...fields}, argv: [...],
workdir: PATH, study: NAME, trial: N, wait: bool (for the job's `ready` line; default true)}.
"""

from __future__ import annotations

import importlib
import json
import os
import queue
import socket
import sys
from pathlib import Path

from orchestrator.config.fleet import Machine
from orchestrator.jobs import JobSpec
from orchestrator.launchers.base import ExitEvent, LineEvent, Slot


def main() -> None:
    spec = json.loads(sys.argv[1])
    module, cls = spec["factory"].split(":")
    launcher = getattr(importlib.import_module(module), cls)(**spec["options"])
    machine = Machine(**spec["machine"])
    events: queue.Queue = queue.Queue()
    job = JobSpec(spec["study"], spec["trial"], spec["argv"], {}, timeout_s=300)
    handle = launcher.start(job, machine, Slot(machine.name, 0), Path(spec["workdir"]), events)
    print(json.dumps({"pid": handle.pid, "pid_start": handle.pid_start, "job_ref": handle.job_ref,
                      "log_path": str(handle.log_path), "workdir": str(handle.workdir),
                      "remote_dir": getattr(handle, "remote_dir", None),
                      "controller": f"{socket.gethostname()}:{os.getpid()}"}), flush=True)
    while spec.get("wait", True):
        event = events.get()
        if isinstance(event, LineEvent) and event.line.strip() == "ready":
            print("ready", flush=True)
            break
        if isinstance(event, ExitEvent):
            print(f"exit {event.returncode} {event.error}", flush=True)
            return
    else:
        print("ready", flush=True)
    sys.stdin.read()  # until killed


if __name__ == "__main__":
    main()
