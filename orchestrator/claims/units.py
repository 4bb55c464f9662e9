"""Slots as the units the database claims: a GPU set is its GPUs (`gpu0`, `gpu1`, ...), a CPU slot is `cpuN`. Two
studies that cut a machine into GPU sets of different sizes (`gpu:0,1` and `gpu:1`) share the unit `gpu1`, so they
never hold one GPU at once. Machines whose resource manager queues jobs (Capability.QUEUES_JOBS) take no claims."""

from __future__ import annotations

from ..config.fleet import Capability, Machine
from ..launchers.base import Slot


def slot_units(slot: Slot) -> tuple[str, ...]:
    if slot.gpu_ids:
        return tuple(f"gpu{g}" for g in slot.gpu_ids)
    return (f"cpu{slot.index}",)


def unit_count(slot: Slot) -> int:
    """What a slot counts for in the fair share: its GPUs, or 1 for a CPU slot."""
    return len(slot.gpu_ids) or 1


def claimable(machine: Machine) -> bool:
    return not machine.has(Capability.QUEUES_JOBS)


def machine_units(gpu_count: int, cpu_slots: int) -> list[str]:
    return [f"gpu{g}" for g in range(gpu_count)] + [f"cpu{c}" for c in range(cpu_slots)]


def sets_of(gpus_per_trial: int, gpu_count: int, cpu_slots: int) -> list[tuple[str, ...]]:
    """A machine's slots for a study asking `gpus_per_trial` GPUs (0: CPU slots), as unit tuples, in slot order (the
    scheduler's own cut: `machine_slots`)."""
    if gpus_per_trial > 0:
        return [tuple(f"gpu{g}" for g in range(i * gpus_per_trial, (i + 1) * gpus_per_trial))
                for i in range(gpu_count // gpus_per_trial)]
    return [(f"cpu{c}",) for c in range(cpu_slots)]
