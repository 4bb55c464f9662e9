"""Health checks of machines marked down, off the controller's loop.

A probe of a machine that does not answer can take a connect timeout (seconds); run on the controller's thread it
would stall log streaming, trial timeouts and dispatch for every other machine. `HealthChecker` runs each probe in
a worker thread and hands back the results the next time the controller asks, so the loop never waits on the network
(except `wait=True`: the controller has nothing running and nothing else to do).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Callable, Iterable

from ..config.errors import OrchError
from ..config.fleet import Machine
from ..launchers.base import MachineInfo

Probe = Callable[[Machine], MachineInfo]


def _safe(probe: Probe, machine: Machine) -> MachineInfo:
    try:
        return probe(machine)
    except (OrchError, OSError) as exc:  # a launcher that raises instead of reporting: still just "down"
        return MachineInfo(reachable=False, error=str(exc))


class HealthChecker:
    """At most one probe in flight per machine; results are collected with `results()`."""

    def __init__(self, probe: Probe, max_workers: int = 8) -> None:
        self.probe = probe
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="health")
        self._inflight: dict[str, tuple[Machine, Future]] = {}

    def submit(self, machines: Iterable[Machine]) -> None:
        for machine in machines:
            if machine.name not in self._inflight:
                self._inflight[machine.name] = (machine, self._pool.submit(_safe, self.probe, machine))

    def results(self, wait_s: float | None = 0.0) -> list[tuple[Machine, MachineInfo]]:
        """The probes that finished (waiting up to `wait_s` for all of them; None: as long as they take)."""
        if wait_s != 0.0 and self._inflight:
            wait([f for _, f in self._inflight.values()], timeout=wait_s)
        done = [(name, m, f) for name, (m, f) in self._inflight.items() if f.done()]
        for name, _, _ in done:
            del self._inflight[name]
        return [(m, f.result()) for _, m, f in done]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["HealthChecker"]
