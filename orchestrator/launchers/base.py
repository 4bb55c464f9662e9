"""The launcher plug-in interface (submitit-style): start a job on a slot, stream its log, kill it.

A launcher pushes `LineEvent`s and one `ExitEvent` per job into the controller's queue from its own
threads; the controller is the only writer to the database.
"""

from __future__ import annotations

import queue
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from ..config.fleet import Machine
from ..jobs import JobSpec


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


def machine_info(machine: Machine, gpus: list[dict], cpu_count: int | None = None) -> MachineInfo:
    """A reachable machine's info from its nvidia-smi rows; an integer `gpus:` in the fleet caps the count."""
    if isinstance(machine.gpus, int):
        gpus = gpus[: machine.gpus]
        count = len(gpus) or machine.gpus
    else:
        count = len(gpus) if machine.gpus == "auto" else 0
    return MachineInfo(reachable=True, gpu_count=count, gpu_type=gpus[0]["name"] if gpus else machine.gpu_type,
                       driver_version=gpus[0]["driver_version"] if gpus else None, gpus=gpus, cpu_count=cpu_count)


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


class JobHandle(ABC):
    key: int
    log_path: Path
    workdir: Path
    pid: int | None = None
    pid_start: str | None = None
    command: list[str]
    container_image_id: str | None = None

    @abstractmethod
    def cancel(self, reason: str) -> None:
        """Kill the job's whole process group (TERM, then KILL after a grace period)."""


class Launcher(ABC):
    name: str

    @abstractmethod
    def probe(self, machine: Machine) -> MachineInfo:
        """Is the machine reachable, and which GPUs does it have (nvidia-smi)."""

    @abstractmethod
    def start(self, job: JobSpec, machine: Machine, slot: Slot, workdir: Path,
              events: "queue.Queue[Event]") -> JobHandle:
        """Start `job` on `slot`; its output lines and its exit go to `events`."""

    def run_command(self, machine: Machine, argv: list[str], timeout_s: float = 30.0) -> tuple[int, str]:
        """Run a short command on the machine itself (not in a container): (exit status, stdout+stderr). Raises
        OrchError when the machine cannot be reached, NotImplementedError when this launcher cannot run commands
        (the controller then reads nothing through it, e.g. which processes hold its GPUs)."""
        raise NotImplementedError(f"launcher {self.name!r} runs no commands on its machines")

    def close(self) -> None:
        """Release connections; jobs still running are the controller's to cancel first."""
