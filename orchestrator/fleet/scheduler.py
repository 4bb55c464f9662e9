"""The scheduler: the fleet's slots for a study's resource request, and which of them are free.

A trial asking for g GPUs gets a set of g GPUs on one machine (one trial per GPU set); a trial asking for
0 GPUs gets a CPU slot (machines offer `cpu_slots` of them). Machines are filtered by the study's labels;
drained or down machines get no new trials. A machine's slots are re-derived when a probe (a health check) sees it
again (`refresh`), so one that was unreachable at the start joins once it answers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..config.errors import OrchError
from ..config.fleet import Capability, Fleet, Machine
from ..launchers.base import MachineInfo, Slot


class NoCapacity(OrchError):
    pass


def machine_slots(machine: Machine, info: MachineInfo, gpus_per_trial: int) -> list[Slot]:
    if gpus_per_trial > 0:
        return [Slot(machine.name, i, gpu_ids=tuple(range(i * gpus_per_trial, (i + 1) * gpus_per_trial)))
                for i in range(info.gpu_count // gpus_per_trial)]
    count = machine.resolved_cpu_slots(info.cpu_count)  # `auto`: the machine's own cores, as its probe saw them
    cores = sorted(os.sched_getaffinity(0)) if machine.has(Capability.CPU_AFFINITY) else []
    slots = []
    for i in range(count):
        # spread the machine's cores over its CPU slots (machines on this host only: we know their cores)
        share = tuple(cores[j] for j in range(len(cores)) if j % count == i) if len(cores) >= count else ()
        slots.append(Slot(machine.name, i, cpu_ids=share))
    return slots


def matches_labels(machine: Machine, labels: dict[str, str]) -> bool:
    return all(machine.labels.get(k) == v for k, v in labels.items())


@dataclass
class Scheduler:
    fleet: Fleet
    gpus_per_trial: int
    labels: dict[str, str] = field(default_factory=dict)
    slots: list[Slot] = field(default_factory=list)
    unavailable: set[str] = field(default_factory=set)  # machines down or draining

    def plan(self, infos: dict[str, MachineInfo]) -> list[Slot]:
        """Build the slot list from probed machines; raise when no machine can run a trial at all."""
        self.slots = []
        eligible = [m for m in self.fleet.machines if matches_labels(m, self.labels)]
        if not eligible:
            raise NoCapacity(f"{self.fleet.source}: no machine has the labels {self.labels} the study asks for "
                             "(fix: add the labels to a machine in the fleet file or change resources.labels)")
        for machine in eligible:
            info = infos.get(machine.name)
            if info is None or not info.reachable:
                continue
            self.slots += machine_slots(machine, info, self.gpus_per_trial)
        if not self.slots:
            reachable = [m for m in eligible if m.name in infos and infos[m.name].reachable]
            if not reachable:
                reasons = "; ".join(f"machine {m.name}: {infos[m.name].error if m.name in infos else 'not probed'}"
                                    for m in eligible)
                raise NoCapacity(f"{self.fleet.source}: no reachable machine: {reasons} (fix: the machines' fixes "
                                 "above; `orch fleet status` shows every machine)")
            most = max(infos[m.name].gpu_count for m in reachable)
            if self.gpus_per_trial > 0:
                raise NoCapacity(f"{self.fleet.source}: the study asks {self.gpus_per_trial} GPU(s) per trial but no "
                                 f"reachable machine has that many (most: {most}) (fix: lower resources.gpus in the "
                                 "study, or add a machine with enough GPUs)")
        return self.slots

    def refresh(self, name: str, info: MachineInfo) -> None:
        """Re-derive one machine's slots from a new probe: a machine unreachable when the plan was made gets its
        slots once it answers; one that went away keeps none."""
        self.slots = [slot for slot in self.slots if slot.machine != name]
        machine = self.fleet.machine(name)
        if info.reachable and matches_labels(machine, self.labels):
            self.slots += machine_slots(machine, info, self.gpus_per_trial)

    def free(self, busy: set[Slot]) -> list[Slot]:
        """Free slots, interleaved across machines so a round spreads over the fleet."""
        by_machine: dict[str, list[Slot]] = {}
        for slot in self.slots:
            if slot not in busy and slot.machine not in self.unavailable:
                by_machine.setdefault(slot.machine, []).append(slot)
        out: list[Slot] = []
        columns = list(by_machine.values())
        for i in range(max((len(c) for c in columns), default=0)):
            out += [c[i] for c in columns if i < len(c)]
        return out
