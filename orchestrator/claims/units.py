"""Slots as the units the database claims, and where those live. A GPU set is its GPUs (`gpu0`, `gpu1`, ...), a CPU
slot is `cpuN`; two studies that cut a machine into GPU sets of different sizes (`gpu:0,1` and `gpu:1`) share the unit
`gpu1`, so they never hold one GPU at once. A machine's units of one kind are kept 32 to a row of `orch_slot_blocks`
(bit i of block b is unit 32 b + i). Machines whose resource manager queues jobs (Capability.QUEUES_JOBS) take no
claims."""

from __future__ import annotations

from ..config.fleet import Capability, Machine
from ..launchers.base import Slot

BLOCK = 32  # units per block row (a BIGINT mask holds them on every database; 32 is a multiple of common set sizes)


def slot_units(slot: Slot) -> tuple[str, ...]:
    if slot.gpu_ids:
        return tuple(f"gpu{g}" for g in slot.gpu_ids)
    return (f"cpu{slot.index}",)


def unit_count(slot: Slot) -> int:
    """What a slot counts for in the fair share: its GPUs, or 1 for a CPU slot."""
    return len(slot.gpu_ids) or 1


def claimable(machine: Machine) -> bool:
    return not machine.has(Capability.QUEUES_JOBS)


def bits_of(units: tuple[str, ...]) -> dict[tuple[str, int], int]:
    """(kind, block) -> the mask of `units` in that block."""
    out: dict[tuple[str, int], int] = {}
    for unit in units:
        kind, index = unit[:3], int(unit[3:])
        key = (kind, index // BLOCK)
        out[key] = out.get(key, 0) | (1 << (index % BLOCK))
    return out


def units_in(kind: str, block: int, mask: int) -> list[str]:
    return [f"{kind}{block * BLOCK + i}" for i in range(BLOCK) if mask >> i & 1]


def blocks_for(gpu_count: int, cpu_slots: int) -> dict[tuple[str, int], int]:
    """(kind, block) -> how many of the machine's units that block holds."""
    out = {}
    for kind, count in (("gpu", gpu_count), ("cpu", cpu_slots)):
        for block in range((count + BLOCK - 1) // BLOCK):
            out[(kind, block)] = min(BLOCK, count - block * BLOCK)
    return out


def popcount(mask: int) -> int:
    return bin(mask).count("1")


def sets_of(gpus_per_trial: int, gpu_count: int, cpu_slots: int) -> list[tuple[str, ...]]:
    """A machine's slots for a study asking `gpus_per_trial` GPUs (0: CPU slots), as unit tuples, in slot order (the
    scheduler's own cut: `machine_slots`)."""
    if gpus_per_trial > 0:
        return [tuple(f"gpu{g}" for g in range(i * gpus_per_trial, (i + 1) * gpus_per_trial))
                for i in range(gpu_count // gpus_per_trial)]
    return [(f"cpu{c}",) for c in range(cpu_slots)]
