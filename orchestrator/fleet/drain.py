"""Draining a machine (`orch fleet drain NAME` / `orch fleet undrain NAME`).

A drained machine finishes the trials running on it and gets no new ones. The flag lives in the database
(`orch_machines.drain`), not in a controller's memory: every controller (any process, any study) reads it again
within `controller.MACHINE_STATE_READ_S` (0.25 s), so a drain applies without a restart. The machine's health
state (`idle` / `down`) is kept apart from it, so a drained machine that goes down and comes back is still drained.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select

from db import Database, EventRow, MachineRow, StudyRow, TrialRow

from ..config.errors import ConfigError
from ..config.fleet import Fleet, Machine


@dataclass
class DrainResult:
    machine: str
    drain: bool  # the flag now
    changed: bool  # False: it already was so
    running: list[str] = field(default_factory=list)  # "STUDY#N" of the trials still running there
    reason: str | None = None  # `orch fleet drain --reason`

    def message(self) -> str:
        name = self.machine
        if not self.drain:
            return (f"{name}: undrained: it takes new trials again (a running controller sees this within 0.25 s)"
                    if self.changed else f"{name}: not drained: nothing to do")
        already = "" if self.changed else " (already)"
        if self.reason:
            already += f" ({self.reason})"
        if self.running:
            return (f"{name}: draining{already}: {len(self.running)} running trial(s) finish there "
                    f"({', '.join(self.running)}), no new trial starts; `orch fleet undrain {name}` puts it back")
        return (f"{name}: drained{already}: no trial runs there and no new one starts; "
                f"`orch fleet undrain {name}` puts it back")


def fleet_machine(fleet: Fleet, name: str) -> Machine:
    """The inventory's machine NAME, or a ConfigError naming the fleet file and the machines it has."""
    try:
        return fleet.machine(name)
    except KeyError:
        raise ConfigError(f"no machine named {name!r}", file=fleet.source, field="machines",
                          fix=f"use one of {', '.join(m.name for m in fleet.machines)}") from None


def running_on(db: Database, name: str) -> list[str]:
    with db.session() as s:
        rows = s.execute(select(StudyRow.name, TrialRow.number).join(StudyRow, TrialRow.study_id == StudyRow.id)
                         .where(TrialRow.machine == name, TrialRow.state.in_(("pending", "running")))
                         .order_by(StudyRow.name, TrialRow.number)).all()
    return [f"{r.name}#{r.number}" for r in rows]


MAX_REASON = 500


def set_drain(db: Database, fleet: Fleet, name: str, drain: bool, reason: str | None = None) -> DrainResult:
    """Set or clear machine NAME's drain flag (creating its row if no controller has seen it yet). `reason` (shown
    by `orch fleet status`) is kept while it is drained; draining again with a new reason replaces it."""
    machine = fleet_machine(fleet, name)
    reason = (" ".join((reason or "").split())[:MAX_REASON] or None) if drain else None  # one line, bounded
    with db.session() as s:
        row = s.scalar(select(MachineRow).where(MachineRow.name == name))
        if row is None:
            row = MachineRow(name=name, host=machine.host, launcher=machine.launcher, state="unknown", drain=False)
            s.add(row)
        changed = bool(row.drain) != drain
        if changed or (drain and reason is not None and reason != row.drain_reason):
            s.add(EventRow(machine=name, kind="machine.drain", old=("in service" if drain else "drained") if changed else "drained",
                           new="drained" if drain else "in service",
                           message=("orch fleet drain" + (f": {reason}" if reason else "")) if drain
                           else "orch fleet undrain"))
        if changed:
            row.drain = drain
        if not drain:
            row.drain_reason = None
        elif reason is not None or changed:
            row.drain_reason = reason
        kept = row.drain_reason
    return DrainResult(name, drain, changed, running_on(db, name) if drain else [], kept)


__all__ = ["DrainResult", "set_drain", "fleet_machine", "running_on"]
