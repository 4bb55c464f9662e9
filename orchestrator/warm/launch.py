"""What every launcher does with a job that has a warm plan, in `start()`:

    job = warm.prepare(self, job, machine, trial_dir)   # stage the plan's files (Launcher.stage), wrap the argv
    events = warm.watch(events, job)                      # the entry program's refusal -> the trial's launch error

`trial_dir` is the job's directory as an absolute path on the machine (`WORKDIR/STUDY/trial-NNNN`); the machine's
`.orch-warm` folder is two levels up, beside the studies (`warm_root`). The wrapped argv is

    PYTHON ROOT/bin/entry-HASH.py ROOT/plans/HASH.json -- ARGV...

where PYTHON is the job's own interpreter when its argv starts with one (`python`, `python3.12`, a venv's), else the
machine's `health_check.python` (the interpreter with torch there; `{python}` is the controller's, as for trials).
In a container the runtime mounts ROOT at the same path (containers.py), so the same argv runs inside it.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import re
import sys
from typing import TYPE_CHECKING

from ..config.fleet import Machine
from .entry import CACHE_VARS
from .stage import stage_items

if TYPE_CHECKING:  # jobs imports this package (its plan): no import back at run time
    from ..jobs import JobSpec

REFUSED = 86  # the entry program's exit status when it refuses to start the trainer (entry.REFUSED)
WARM_DIR = ".orch-warm"
MARK = "@@warm "
_PYTHON = re.compile(r"^python[0-9.]*$")


def warm_root(trial_dir: str) -> str:
    """`WORKDIR/.orch-warm` of a trial directory `WORKDIR/STUDY/trial-NNNN` (a path on the machine)."""
    return posixpath.join(posixpath.dirname(posixpath.dirname(str(trial_dir).rstrip("/"))), WARM_DIR)


def entry_python(machine: Machine, argv: list[str]) -> str:
    if argv and _PYTHON.match(posixpath.basename(argv[0])):
        return argv[0]
    python = machine.health_check.python
    return sys.executable if python == "{python}" else python


def prepare(launcher, job: "JobSpec", machine: Machine, trial_dir: str) -> "JobSpec":
    """The job to run: its warm plan's files staged on the machine (through `launcher.stage`), its argv started by
    the entry program. A job without a warm plan is returned as it is."""
    if job.warm is None:
        return job
    root = warm_root(trial_dir)
    # a cache variable the study or the machine sets is theirs; one the controller's own environment happens to hold
    # (torch sets TORCHINDUCTOR_CACHE_DIR in the process that imports inductor) is not, and the warm one replaces it
    declared = {**machine.env, **machine.container.env, **job.env, **job.secret_env}
    keep = tuple(var for var, _ in CACHE_VARS if var in declared)
    warm_plan = job.warm
    if warm_plan.fork is not None and machine.container.runtime != "none":
        # a container ends with its trial, and a server in it with it: the trainer starts as before
        warm_plan = dataclasses.replace(warm_plan, fork=None)
    items, entry, plan = stage_items(warm_plan, root, keep, tuple(job.secret_env))
    launcher.stage(machine, root, items)
    return dataclasses.replace(job, argv=[entry_python(machine, job.argv), entry, plan, "--", *job.argv])


def parse(line: str) -> dict | None:
    """The report of a `@@warm` line (what the entry program found), or None for any other line."""
    if not line.startswith(MARK):
        return None
    try:
        report = json.loads(line[len(MARK):])
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def refusal(line: str) -> str | None:
    """The refusal a `@@warm` line reports (problem and fix), or None."""
    report = parse(line)
    if report is None or report.get("ok", True):
        return None
    return f"{report.get('error', 'refused')} (fix: {report.get('fix', 'see the trial log')})"


class _Watched:
    """The launcher's event queue as it is, except that the exit of a job whose entry program refused to start it
    carries the refusal as the launcher's error: the trial fails its launch with the reason (naming the file),
    not as a crash of its parameters."""

    def __init__(self, events, key: int) -> None:
        self._events, self._key, self._refused = events, key, None

    def put(self, event, *args, **kwargs) -> None:
        # launchers.base's LineEvent (line) and ExitEvent (returncode, error), read by their fields: the launchers
        # import this package, so it does not import them back
        if getattr(event, "key", None) == self._key:
            if isinstance(getattr(event, "line", None), str) and self._refused is None:
                self._refused = refusal(event.line)
            elif (self._refused and getattr(event, "returncode", None) == REFUSED
                  and getattr(event, "error", "") is None):
                event = dataclasses.replace(event, error=f"warm machine: {self._refused}")
        self._events.put(event, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._events, name)


def watch(events, job: "JobSpec"):
    return events if job.warm is None else _Watched(events, job.trial)
