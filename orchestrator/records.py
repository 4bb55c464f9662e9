"""The records the stages hand each other, in one neutral place: no backend, no config, no database.

- `Slot`: a share of a machine one trial runs on (scheduler -> launcher); `MachineInfo`: what a probe found.
- `JobSpec`: what every launcher runs (jobs.build_job makes it from a study's values); `variant_key`: the key the
  repeats of one parameter set share.
- `LineEvent` / `ExitEvent`: what a launcher pushes into the controller's queue; `JobRecord`: what the database
  kept of a started job, for `Launcher.reattach`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .warm.plan import WarmPlan

MAX_LINE_BYTES = 1024 * 1024  # a longer output line reaches the parser cut (the log file keeps it whole)
DISK_FULL = "disk full"  # prefix of the ExitEvent error when the trial's log cannot be written for lack of space


@dataclass(frozen=True)
class Slot:
    """A share of a machine one trial runs on: a GPU set, or a CPU slot on a machine without GPUs."""

    machine: str
    index: int
    gpu_ids: tuple[int, ...] = ()
    cpu_ids: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        if self.gpu_ids:
            return "gpu:" + ",".join(map(str, self.gpu_ids))
        return f"cpu:{self.index}"


@dataclass
class MachineInfo:
    reachable: bool
    gpu_count: int = 0
    gpu_type: str | None = None
    driver_version: str | None = None
    gpus: list[dict] = field(default_factory=list)  # per GPU: index, name, util %, memory used/total MiB, temp C
    error: str | None = None
    cpu_count: int | None = None  # usable cores on the machine itself (remote `nproc`); None: unknown
    #: what a resource manager says of a machine that takes no jobs (`drained`, `draining`, `down`), with
    #: `reachable` False (Capability.NODE_STATE); `orch fleet status` shows it as the machine's state
    node_state: str | None = None


@dataclass
class LineEvent:
    key: int  # the trial number
    line: str


@dataclass
class ExitEvent:
    key: int
    returncode: int | None
    error: str | None = None  # the launcher's own failure (could not start, connection lost, ...)


Event = LineEvent | ExitEvent


@dataclass(frozen=True)
class JobRecord:
    """What the database kept of a job a controller started (its trial row): what `Launcher.reattach` gets after
    a controller restart to find the job again."""

    study: str
    trial: int
    machine: str
    slot: str | None  # the slot's label, `gpu:0,1` or `cpu:0`
    workdir: Path
    log_path: Path
    pid: int | None = None
    pid_start: str | None = None
    job_ref: str | None = None  # `JobHandle.job_ref` as it was recorded; None: the job was never seen started
    controller: str | None = None  # host:pid of the controller that started it
    started_at: datetime | None = None


@dataclass
class JobSpec:
    study: str
    trial: int
    argv: list[str]
    env: dict[str, str]  # set for the job; stored on the trial
    secret_env: dict[str, str] = field(default_factory=dict, repr=False)  # set for the job, never stored
    gpus: int = 0
    timeout_s: float = 3600.0
    image: str | None = None
    log_format: str = "orch"
    #: per-machine caches and staged data (orchestrator/warm); None: the job runs as it is
    warm: "WarmPlan | None" = None

    def stored_env(self) -> dict[str, str]:
        return dict(self.env) | {name: "***" for name in self.secret_env}


def variant_key(params: dict[str, Any]) -> str:
    """A stable short key for a parameter set: repeats of one variant share it."""
    canonical = json.dumps({k: (round(v, 10) if isinstance(v, float) else v) for k, v in sorted(params.items())},
                           sort_keys=True)
    return hashlib.sha1(canonical.encode()).hexdigest()[:12]
