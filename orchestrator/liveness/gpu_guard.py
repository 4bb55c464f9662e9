"""Busy-GPU refusal: before trials start on GPU sets, the processes on those GPUs are read (nvidia-smi's compute
apps, through the machine's launcher: one command per machine, all machines at once), and a set with any process
on it gets no trial.

Every process there is foreign: the controller offers only GPU sets that run none of its own trials, so what holds
one of them was started by someone else (another team's job, another study, a leftover of a killed run). A machine
whose nvidia-smi lists no GPUs (none, or GPUs only declared in the fleet file), or whose launcher cannot run
commands, has nothing to read and is not refused; a machine that does not answer is left to the health checks.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from ..config.errors import OrchError
from ..config.fleet import Fleet, Machine
from ..gpu import GpuProcess, compute_apps_argv, parse_compute_apps
from ..launchers.base import Launcher, MachineInfo, Slot
from .refusals import Refusal

QUERY_TIMEOUT_S = 15.0


def gpu_processes(launcher: Launcher, machine: Machine, timeout_s: float = QUERY_TIMEOUT_S) -> list[GpuProcess] | None:
    """The compute processes on the machine's GPUs; None when they cannot be read."""
    try:
        status, output = launcher.run_command(machine, compute_apps_argv(machine.nvidia_smi), timeout_s)
    except (NotImplementedError, OrchError, OSError):
        return None
    return parse_compute_apps(output) if status == 0 else None


def busy_refusal(machine: str, processes: list[GpuProcess], refused: list[Slot]) -> Refusal:
    sets = ", ".join(slot.label for slot in refused)
    held = "; ".join(p.describe() for p in sorted(processes, key=lambda p: (p.gpu, p.pid))[:8])
    more = f" and {len(processes) - 8} more" if len(processes) > 8 else ""
    return Refusal(machine, "gpus_busy", f"GPU set(s) {sets} held by processes this study did not start: {held}{more}",
                   f"stop those processes or wait for them to end (the GPUs are read again before every dispatch); "
                   f"`orch fleet drain {machine}` keeps trials off the machine")


class GpuGuard:
    def __init__(self, fleet: Fleet, launcher_for: Callable[[Machine], Launcher], max_workers: int = 16) -> None:
        self.fleet, self.launcher_for = fleet, launcher_for
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="gpu-guard")

    def screen(self, slots: list[Slot], infos: dict[str, MachineInfo]) -> tuple[list[Slot], dict[str, Refusal]]:
        """The slots whose GPUs nothing holds (in their order), and a refusal per machine with a refused set."""
        readable = sorted({s.machine for s in slots if s.gpu_ids and infos.get(s.machine) is not None
                           and infos[s.machine].gpus})
        if not readable:
            return slots, {}
        machines = [self.fleet.machine(name) for name in readable]
        launchers = [self.launcher_for(m) for m in machines]  # made here: the queries run in threads
        found = dict(zip(readable, self._pool.map(lambda pair: gpu_processes(*pair), zip(launchers, machines))))
        kept, refused, holders = [], {}, {}
        for slot in slots:
            processes = found.get(slot.machine) or []
            on_set = [p for p in processes if p.gpu in slot.gpu_ids]
            if on_set:
                refused.setdefault(slot.machine, []).append(slot)
                holders.setdefault(slot.machine, {}).update({(p.gpu, p.pid): p for p in on_set})
            else:
                kept.append(slot)
        return kept, {m: busy_refusal(m, list(holders[m].values()), refused[m]) for m in refused}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
