"""Who gets a free slot: pure functions over what the database says (no SQL, no clock of their own).

- **Use**: each study's GPU-seconds (a CPU slot counts as one GPU), decayed with time constant `window_s`: at a
  constant `held`, u(t) = u0 e^{-dt/w} + held w (1 - e^{-dt/w}). A study's controller stores (u0, at, held, w); every
  reader computes the same u for the same moment.
- **Share** (what equal-priority studies are kept equal in): the GPU-seconds a study used in the recent window plus
  those its held GPUs commit over the next one, `u + held x w`. A study that holds fewer GPUs than another is served
  first (studies run side by side, not in turns), and one that used less recently catches up: a newcomer is served
  until its share reaches the others', over about one window.
- **Rank**: a higher priority first; between equal priorities the lower share; then the longer wait; then the study id.
- **Allocation** (`allocate`): the free units are handed out one slot at a time to the best-ranked study that still
  wants a trial and has a slot whose units are all still free; each slot handed out adds its units x `w` to that
  study's share, so a burst of free slots (a fleet starting, a study ending) is spread between equal studies rather
  than all given to whichever ranked first. Every controller runs it over the same rows and claims only its own
  study's share.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

def decayed(usage: float, held: int, window_s: float, elapsed_s: float) -> float:
    """Decayed use `elapsed_s` after it was `usage`, holding `held` units meanwhile."""
    k = math.exp(-max(0.0, elapsed_s) / window_s)
    return usage * k + held * window_s * (1.0 - k)


def share(usage: float, held: int, window_s: float, elapsed_s: float) -> float:
    """A study's share, what equal priorities are ranked by: its decayed use now plus its held units x window."""
    return decayed(usage, held, window_s, elapsed_s) + held * window_s


@dataclass(frozen=True)
class Candidate:
    machine: str  # the machine's claim key
    units: tuple[str, ...]
    slot: Any = None  # the controller's own Slot, for its own study's candidates


@dataclass
class Contender:
    study_id: int
    priority: int
    usage: float  # its share now: decayed unit-seconds + held units x window
    wanted: int  # trials it would start now (its cap already applied)
    window_s: float = 600.0  # what one more unit held adds to its share
    since: float = math.inf  # when it began waiting (epoch seconds)
    candidates: list[Candidate] = field(default_factory=list)  # its slots, in its order

    def rank(self, usage: float | None = None) -> tuple:
        return (-self.priority, self.usage if usage is None else usage, self.since, self.study_id)


def candidates_for(machines: Iterable[tuple[str, list[tuple[str, ...]]]], free: dict[str, set[str]]) -> list[Candidate]:
    """A study's candidates from (machine key, its slots as unit tuples) pairs: the slots whose units are all free,
    interleaved across machines (first slots of every machine, then second ones, ...) as the scheduler orders them."""
    columns = []
    for key, sets in machines:
        units = free.get(key)
        if units:
            column = [Candidate(key, s) for s in sets if units.issuperset(s)]
            if column:
                columns.append(column)
    out: list[Candidate] = []
    for i in range(max((len(c) for c in columns), default=0)):
        out += [c[i] for c in columns if i < len(c)]
    return out


def allocate(free: dict[str, set[str]], contenders: list[Contender], until: int | None = None) -> dict[int, list[Candidate]]:
    """Hand out `free` (machine key -> free units) to `contenders`; study id -> the candidates it gets. With `until`,
    stop once that study can get nothing more (what the others get after that does not change its share)."""
    remaining = dict(free)  # a machine's set is copied the first time one of its units is handed out
    copied: set[str] = set()
    given: dict[int, list[Candidate]] = {c.study_id: [] for c in contenders}
    cursor = {c.study_id: 0 for c in contenders}
    wanted = {c.study_id: c.wanted for c in contenders}
    projected = {c.study_id: c.usage for c in contenders}
    heap = [(c.rank(), c.study_id, c) for c in contenders if c.wanted > 0 and c.candidates]
    heapq.heapify(heap)
    while heap:
        _, sid, c = heapq.heappop(heap)
        pick = None
        while cursor[sid] < len(c.candidates):
            cand = c.candidates[cursor[sid]]
            cursor[sid] += 1
            if remaining.get(cand.machine, set()).issuperset(cand.units):
                pick = cand
                break
        if pick is None:
            if sid == until:
                break
            continue
        if pick.machine not in copied:
            remaining[pick.machine] = set(remaining[pick.machine])
            copied.add(pick.machine)
        remaining[pick.machine].difference_update(pick.units)
        given[sid].append(pick)
        wanted[sid] -= 1
        projected[sid] += c.window_s * len(pick.units)
        if wanted[sid] > 0:
            heapq.heappush(heap, (c.rank(projected[sid]), sid, c))
        elif sid == until:
            break
    return given


def jain(values: list[float]) -> float:
    """Jain's fairness index: 1 when all equal, 1/n when one has everything."""
    if not values or not any(values):
        return 1.0
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))
