"""The launcher plug-in interface (submitit-style): start a job on a slot, stream its log, kill it, find it again.

A launcher pushes `LineEvent`s and one `ExitEvent` per job into the controller's queue from its own
threads; the controller is the only writer to the database.

Each launcher is one module with two classes: its machine model (a `config.fleet.Machine` subclass with
`launcher: Literal["NAME"]`, the launcher's own fields and its `capabilities`) and the `Launcher` subclass whose
`machine_type` names that model. `registry.py` lists the modules, one line each. What differs between backends is
asked through capabilities (`config.fleet.Capability`), never through a launcher's name. Every launcher passes
the contract suite in tests/launchers/test_contract.py.
"""

from __future__ import annotations

import queue
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, ClassVar

from ..config.fleet import Capability, Fleet, Machine
from ..records import (Event, ExitEvent, JobRecord, JobSpec, LineEvent,  # noqa: F401 (the interface's records)
                       MachineInfo, Slot)


def machine_info(machine: Machine, gpus: list[dict], cpu_count: int | None = None) -> MachineInfo:
    """A reachable machine's info from its nvidia-smi rows; an integer `gpus:` in the fleet caps the count."""
    if isinstance(machine.gpus, int):
        gpus = gpus[: machine.gpus]
        count = len(gpus) or machine.gpus
    else:
        count = len(gpus) if machine.gpus == "auto" else 0
    return MachineInfo(reachable=True, gpu_count=count, gpu_type=gpus[0]["name"] if gpus else machine.gpu_type,
                       driver_version=gpus[0]["driver_version"] if gpus else None, gpus=gpus, cpu_count=cpu_count)


class JobHandle(ABC):
    key: int
    log_path: Path
    workdir: Path
    pid: int | None = None  # a process on the controller's own host (recovery kills an orphan by it)
    pid_start: str | None = None
    #: the launcher's own reference to find the job again after a controller restart (a Slurm job id); recorded
    #: on the trial row, handed back in `JobRecord.job_ref`
    job_ref: str | None = None
    command: list[str]
    container_image_id: str | None = None

    @abstractmethod
    def cancel(self, reason: str) -> None:
        """Kill the job's whole process group (TERM, then KILL after a grace period)."""


class Launcher(ABC):
    name: str
    #: the machine model of this launcher's machines (a `Machine` subclass in the launcher's module)
    machine_type: ClassVar[type[Machine]]

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self.machine_type.capabilities

    @abstractmethod
    def probe(self, machine: Machine) -> MachineInfo:
        """Is the machine reachable, and which GPUs does it have (nvidia-smi)."""

    @abstractmethod
    def start(self, job: JobSpec, machine: Machine, slot: Slot, workdir: Path,
              events: "queue.Queue[Event]") -> JobHandle:
        """Start `job` on `slot`; its output lines and its exit go to `events`."""

    def stage(self, machine: Machine, root: str, items: list) -> None:
        """Put the files a job's warm plan needs (orchestrator/warm: the entry program, its plan, the study's data
        files, each a content-addressed `warm.stage.StageItem`) under `root`, the machine's `.orch-warm` folder, each
        only if the machine has no file of its size there yet. Raises OrchError naming a file that cannot be staged.
        Default: the machine shares the controller's file system (local; a slurm node's workdir is shared)."""
        from ..warm.stage import stage_local

        stage_local(root, items)

    def run_command(self, machine: Machine, argv: list[str], timeout_s: float = 30.0) -> tuple[int, str]:
        """Run a short command on the machine itself (not in a container): (exit status, stdout+stderr). Raises
        OrchError when the machine cannot be reached, NotImplementedError when this launcher cannot run commands
        (the controller then reads nothing through it, e.g. which processes hold its GPUs)."""
        raise NotImplementedError(f"launcher {self.name!r} runs no commands on its machines")

    @classmethod
    def for_status(cls, probe_timeout_s: float) -> "Launcher":
        """A launcher for `orch fleet status`, whose probes give up after about `probe_timeout_s`."""
        return cls()

    def reattach(self, record: JobRecord, machine: Machine, events: "queue.Queue[Event]") -> JobHandle | None:
        """After a controller restart: the job of `record`, streaming into `events` again (its whole log from the
        start, then its exit), or None when there is nothing to attach to (the job ended with its controller, or
        is no longer known). Launchers whose jobs die with the controller (no Capability.OUTLIVES_CONTROLLER) make
        sure nothing of the job is left running and return None; recovery then reads the trial's log."""
        return None

    def job_alive(self, record: JobRecord, machine: Machine) -> bool:
        """Whether the job of `record`, whose controller is gone, still runs on its machine: the fleet's slot claims
        (orchestrator/claims) give its slot to another trial only once it does not. Raises OrchError when the
        machine cannot be asked (the slot then stays claimed and is asked about again later). Default, for a
        launcher whose jobs end with their controller (no Capability.OUTLIVES_CONTROLLER): nothing runs."""
        if Capability.OUTLIVES_CONTROLLER in self.capabilities:
            raise NotImplementedError(f"launcher {self.name!r} must say whether a job outlived its controller")
        return False

    def queue(self, machines: list[Machine]) -> list[dict]:
        """The resource manager's queue on these machines (Capability.QUEUES_JOBS), one dict per job: `job`,
        `name`, `state`, `reason`, `machine`, `submitted`, `started`, `resources`; what `orch fleet queue` shows."""
        raise NotImplementedError(f"launcher {self.name!r} has no queue of its own")

    @classmethod
    def cluster_up(cls, fleet: Fleet, timeout_s: float, report: Callable[[str], None]) -> None:
        """`orch fleet up`: start the nodes of the fleet's machines of this launcher (Capability.CLUSTER_UP_DOWN);
        each line of what happened goes to `report`."""
        raise NotImplementedError(f"launcher {cls.name!r} has no cluster to start")

    @classmethod
    def cluster_down(cls, fleet: Fleet, report: Callable[[str], None]) -> None:
        """`orch fleet down`: stop the nodes `cluster_up` started (Capability.CLUSTER_UP_DOWN)."""
        raise NotImplementedError(f"launcher {cls.name!r} has no cluster to stop")

    def close(self) -> None:
        """Release connections; jobs still running are the controller's to cancel first."""
