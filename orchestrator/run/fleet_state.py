"""The fleet as one study run sees it: which machines answer and what they have, which take trials now, and the
free slots this study may use.

- `probe`: every machine at once (an unreachable one costs a connect timeout, not one per machine); each machine's
  row in the database (`orch fleet status` reads it) follows what its probe found.
- `unavailable`: machines that take no new trial: down, drained (`orch fleet drain`) or sick, read from the database
  so that a change another process makes applies within `MACHINE_STATE_READ_S`, plus those a health check holds.
- `recheck`: background health checks of machines running none of this study's trials; a down machine that answers
  comes back with its slots, an idle one that fails is marked down before a trial goes there.
- `free_slots`: the scheduler's free slots of available machines, those whose GPUs a foreign process holds screened
  out (liveness), then this study's share of the fleet shared with other studies (claims).
- `refusals`: which machines get no trials and why, reported once per change.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Callable, Iterable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from db import Database, EventRow, MachineRow

from ..claims import FleetClaims
from ..config.fleet import Fleet, Machine
from ..config.study import StudySpec
from ..fleet.health import HealthChecker
from ..launchers import get_launcher
from ..launchers.base import Launcher, MachineInfo, Slot
from ..liveness.machines import MachineKeeper
from ..fleet.scheduler import Scheduler

#: a drain (`orch fleet drain`) or a machine marked down by another process applies to this controller's dispatch
#: decisions at most this long after it commits (machine states this controller writes apply at once)
MACHINE_STATE_READ_S = 0.25
HEALTH_CHECK_S = 30.0  # how often machines marked down are probed again


class FleetState:
    def __init__(self, db: Database, fleet: Fleet, launchers: dict[str, Launcher] | None = None,
                 health_check_s: float = HEALTH_CHECK_S) -> None:
        self.db, self.fleet = db, fleet
        self.launchers = launchers or {}
        self.health_check_s = health_check_s
        self.infos: dict[str, MachineInfo] = {}
        self.scheduler: Scheduler | None = None
        self.keeper: MachineKeeper | None = None  # health checks, busy GPUs, refusals (set up in `start`)
        self.claims: FleetClaims | None = None  # the fleet's slots shared with other studies (set up in `start`)
        self.say: Callable[[str], None] = lambda message: None
        self._health = HealthChecker(lambda machine: self.launcher(machine).probe(machine))
        self._next_health_check = 0.0
        self._drained: set[str] = set()  # machines seen drained (`orch fleet drain`), to report changes once
        self._machine_states: tuple[float, set[str]] | None = None  # (when read, unavailable machines)
        self._machine_rows: dict[str, tuple[str, str | None, bool]] = {}  # their (state, note, drain), same read

    def launcher(self, machine: Machine) -> Launcher:
        if machine.launcher not in self.launchers:
            self.launchers[machine.launcher] = get_launcher(machine.launcher)
        return self.launchers[machine.launcher]

    def start(self, study_id: int, study_name: str, spec: StudySpec, owner: str, heartbeat_s: float,
              say: Callable[[str], None], wake: Callable[[], None]) -> None:
        """The study's view of the fleet: its machine keeper, its claims on the shared fleet, its scheduler."""
        self.say = say
        self.keeper = MachineKeeper(self.db, self.fleet, self.launcher, study_id=study_id,
                                    gpus_per_trial=spec.resources.gpus, labels=spec.resources.labels,
                                    say=say, wake=wake)
        self.claims = FleetClaims(self.db, self.fleet, study_id=study_id, study_name=study_name, owner=owner,
                                  spec=spec, launcher_for=self.launcher, heartbeat_s=heartbeat_s, say=say)
        self.scheduler = Scheduler(self.fleet, spec.resources.gpus, spec.resources.labels)

    def plan(self) -> list[str]:
        """Probe the fleet, plan the slots of the machines that answer, start the claims; the refusal lines."""
        self.infos = self.probe()
        self.scheduler.unavailable = self.unavailable()
        lines = self.update_refusals()  # before the plan: a study no machine can take names each machine's reason
        self.scheduler.plan(self.infos)
        self.claims.start(self.infos)
        return lines

    def admit_reachable(self) -> None:
        """The machines that answer go to the keeper (each is health-checked before its first trial when the fleet
        says so)."""
        for machine in self.fleet.machines:
            if self.infos[machine.name].reachable:
                self.keeper.admit(machine, self.infos[machine.name])

    # ---- machines --------------------------------------------------------------------------------------------
    def probe(self) -> dict[str, MachineInfo]:
        machines = self.fleet.machines
        launchers = [self.launcher(machine) for machine in machines]  # made here: the probes run in threads
        with ThreadPoolExecutor(max_workers=max(1, min(32, len(machines))), thread_name_prefix="probe") as pool:
            infos = dict(zip([m.name for m in machines], pool.map(lambda pair: pair[0].probe(pair[1]),
                                                                  zip(launchers, machines))))
        for machine in machines:
            self.record_machine(machine, infos[machine.name])
        return infos

    def record_machine(self, machine: Machine, info: MachineInfo) -> None:
        self._machine_states = None  # read again at the next dispatch decision
        try:
            self._record_machine_row(machine, info)
        except IntegrityError:  # another controller of the fleet added the machine's row first (PostgreSQL): update it
            self._record_machine_row(machine, info)

    def _record_machine_row(self, machine: Machine, info: MachineInfo) -> None:
        with self.db.session() as s:
            row = s.scalar(select(MachineRow).where(MachineRow.name == machine.name))
            state = "idle" if info.reachable else "down"
            if info.reachable and row is not None and row.state == "sick":
                state = "sick"  # only passing a health check clears it (liveness/machines.py)
            if row is None:
                row = MachineRow(name=machine.name, host=machine.host, launcher=machine.launcher, state=state)
                s.add(row)
            elif row.state != state and row.state != "draining":
                s.add(EventRow(machine=machine.name, kind="machine.state", old=row.state, new=state, message=info.error))
                row.state = state
            row.host, row.launcher = machine.host, machine.launcher
            row.gpu_count, row.gpu_type, row.driver_version = info.gpu_count, info.gpu_type, info.driver_version
            row.labels = dict(machine.labels)
            row.last_seen = datetime.now(timezone.utc) if info.reachable else row.last_seen
            if state != "sick":
                row.note = None if info.reachable else info.error

    def mark_down(self, s, name: str, error: str) -> None:
        """The machine dropped mid-run: marked down in the open transaction `s`, no new trial goes there."""
        machine = s.scalar(select(MachineRow).where(MachineRow.name == name))
        if machine is not None and machine.state != "down":
            s.add(EventRow(machine=machine.name, kind="machine.state", old=machine.state, new="down", message=error))
            machine.state, machine.note = "down", error
        self.scheduler.unavailable.add(name)
        self._machine_states = None  # read again at the next dispatch decision

    def unavailable(self) -> set[str]:
        """Machines that take no new trial: down, or drained (`orch fleet drain`), read from the database so that a
        change made by another process applies within `MACHINE_STATE_READ_S`; a read younger than that is reused
        (this controller's own changes clear it: `record_machine`, `mark_down`)."""
        now = time.monotonic()
        if self._machine_states is not None and now - self._machine_states[0] < MACHINE_STATE_READ_S:
            return self._machine_states[1] | self._blocked()
        with self.db.session() as s:
            rows = s.execute(select(MachineRow.name, MachineRow.drain, MachineRow.state, MachineRow.note).where(
                MachineRow.state.in_(("down", "draining", "sick")) | MachineRow.drain.is_(True))).all()
        names = {m.name for m in self.fleet.machines}
        self._machine_rows = {r.name: (r.state, r.note, bool(r.drain)) for r in rows if r.name in names}
        drained = {r.name for r in rows if r.drain and r.name in names}
        for name in sorted(drained - self._drained):
            self.say(f"machine {name} is draining: its running trials finish, no new trial starts there")
        for name in sorted(self._drained - drained):
            self.say(f"machine {name} was undrained: it takes new trials again")
        self._drained = drained
        self._machine_states = (now, {r.name for r in rows})
        return self._machine_states[1] | self._blocked()

    def refresh_unavailable(self) -> None:
        self.scheduler.unavailable = self.unavailable()

    def _blocked(self) -> set[str]:
        return self.keeper.blocked() if self.keeper is not None else set()

    def recheck(self, busy: set[str], force: bool = False, stop: threading.Event | None = None) -> None:
        """Health checks (a probe) of every machine running none of our trials (`busy` have their launcher's
        heartbeat), every `health_check_s`, in the background (`health`). A down machine that passes comes back into
        the fleet with its slots (also one that was unreachable when the controller started); an idle one that fails
        is marked down before a trial is sent to it. `force` waits for the probes (nothing is running)."""
        now = time.monotonic()
        if now >= self._next_health_check or force:
            self._next_health_check = now + self.health_check_s
            self._health.submit(m for m in self.fleet.machines if m.name not in busy)
        results = self._health.results(wait_s=None if force else 0.0)
        if results:
            with self.db.session() as s:
                states = dict(s.execute(select(MachineRow.name, MachineRow.state).where(
                    MachineRow.state.in_(("down", "sick")))).all())
        for machine, info in results:
            if info.reachable and states.get(machine.name) == "down":
                self.infos[machine.name] = info
                self.record_machine(machine, info)
                self.scheduler.refresh(machine.name, info)
                self.say(f"machine {machine.name} answers its probe again: back in the fleet once its health check "
                         "passes")
                self.keeper.admit(machine, info)  # a machine that was away is checked before it takes trials
            elif info.reachable and states.get(machine.name) == "sick" and machine.name not in busy:
                self.infos[machine.name] = info
                self.keeper.admit(machine, info)  # sick: checked again in the background
            elif not info.reachable and machine.name not in states and machine.name not in busy:
                self.record_machine(machine, info)
                self.say(f"machine {machine.name} failed its probe ({info.error}): marked down")
        while force and self.keeper.pending() and not (stop is not None and stop.is_set()):
            self.keeper.collect(wait_s=1.0)  # sick machines checked again: wait
        self.refresh_unavailable()

    # ---- slots -----------------------------------------------------------------------------------------------
    def free_slots(self, wanted: int, busy: Iterable[Slot], avoid_of: Callable[[], set[str]]) -> list[Slot]:
        """Up to `wanted` free slots of machines that take trials, none held by a health check or a foreign process,
        offered to this study (`claims`: no other study's trial holds them, the fleet's policy gives them to it; the
        dispatch claims them in its transaction); the machines `avoid_of()` names (where a waiting retry's trial
        hung; read only when some slot is free) come last."""
        candidates = self.scheduler.free(set(busy))
        avoid = avoid_of() if candidates else set()
        if avoid:
            candidates.sort(key=lambda slot: slot.machine in avoid)  # stable: the fleet's interleaving stays
        # screened before the offer cuts them to `wanted`: a GPU a foreign process holds stays refused while it is held
        candidates = self.keeper.screen(candidates, self.infos, len(candidates), avoid)
        return self.claims.offer(candidates, wanted)  # free across the fleet's studies: this study's share

    def update_refusals(self) -> list[str]:
        """Report (and record as events) the machines that get no trials and why, as it changes; the lines now."""
        self.keeper.update(self.infos, self._machine_rows, self.scheduler.slots)
        return self.keeper.lines()

    def close(self) -> None:
        self._health.close()
        if self.keeper is not None:
            self.keeper.close()
