"""The progress watchdog: when each running trial last showed progress, and which have shown none for `stall_s`.

Progress is a line of the trial's log, as its launcher streams it to the controller (any launcher: the watchdog
sees the same events the log parser does). The controller wakes at `next_deadline()` (no polling of its own), so a
stall is noticed `stall_s` after the last line reached the controller, plus the controller's loop latency; a
launcher that polls its stream (ray: 1 s) delivers lines that much later.
"""

from __future__ import annotations

import time
from typing import Callable, Hashable


class ProgressWatchdog:
    def __init__(self, stall_s: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_s, self.clock = stall_s, clock
        self._last: dict[Hashable, float] = {}
        self._fired: set[Hashable] = set()

    def started(self, key: Hashable) -> None:
        self._last[key] = self.clock()
        self._fired.discard(key)

    def progressed(self, key: Hashable) -> None:
        if key in self._last:
            self._last[key] = self.clock()

    def forget(self, key: Hashable) -> None:
        self._last.pop(key, None)
        self._fired.discard(key)

    def silent_s(self, key: Hashable) -> float:
        return self.clock() - self._last[key]

    def next_deadline(self) -> float | None:
        """When the next trial that has not fired yet would stall (None: the watchdog is off or nothing runs)."""
        if self.stall_s is None:
            return None
        pending = [last for key, last in self._last.items() if key not in self._fired]
        return min(pending) + self.stall_s if pending else None

    def stalled(self) -> list[Hashable]:
        """Trials silent for `stall_s` or longer, each returned once."""
        if self.stall_s is None:
            return []
        now = self.clock()
        out = [key for key, last in self._last.items() if key not in self._fired and now - last >= self.stall_s]
        self._fired.update(out)
        return out
