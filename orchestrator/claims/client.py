"""`FleetClaims`: what one controller's loop calls to share the fleet with every other controller of its database.

At each dispatch decision, `offer` reads the free blocks and the other studies' demand rows and runs the policy
(`policy.allocate`): of the slots the controller found free by its own view, those its study may claim now (a study
alone on the fleet skips the read: its own view is the database's, and the claim checks it). `take` claims them in the
controller's dispatch transaction (one conditional UPDATE of the block masks, then the claim rows) and writes the
study's demand row (what it still wants, what it holds, its use and, while it waits, since when and for what). A
started trial's claim gets its trial number in the transaction that records the trial `pending` (`assign`); it is
released in the transaction that records the trial's end (`release`). Block rows are made when a controller starts
and, for a machine unreachable then, when it first offers that machine's slots.
The heartbeat renews every claim (`renew`); a finished run first waits, bounded, for the claims earlier runs of its
study left on jobs that were still stopping (`settle`); `close` releases what no trial holds and leaves the claims of
trials whose end this run did not see to the reaper (their jobs may still run). While the study waits for other
studies' slots the loop looks again every `POLL_S` (`next_poll`).
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
import threading
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Callable

from db import Database, EventRow, StudyRow
from sqlalchemy import event, select

from ..study import lease
from ..config.fleet import Fleet, Machine
from ..config.study import StudySpec
from ..launchers.base import Launcher, MachineInfo, Slot
from . import store
from .policy import Candidate, Contender, allocate, candidates_for, decayed, share
from .reaper import RECHECK_S, Reaper
from .units import bits_of, blocks_for, claimable, popcount, sets_of, slot_units, units_in

#: a study waiting for other studies' slots looks at the fleet again this often
POLL_S = 0.05
#: a unit the policy gave to another study that stays free this long is taken by whoever wants it (that study may be
#: unable to use it: a health check of its own holds the machine, its controller is stuck)
DEFER_S = 2.0
#: who holds the units is read again (for the waiting reason) at most this often
REASON_S = 2.0
#: a study alone on the fleet (no other wants or holds a slot) claims its free slots without reading the others':
#: whether it is alone is read again at most this often (a newcomer is seen within it; a failed claim reads at once)
ALONE_S = 0.25
#: the fair share's window: the time constant of each study's decayed GPU-seconds
WINDOW_S = float(os.environ.get("ORCH_FAIR_SHARE_WINDOW_S", "600"))


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(when: datetime | None) -> datetime | None:
    return None if when is None else when if when.tzinfo else when.replace(tzinfo=timezone.utc)


class FleetClaims:
    def __init__(self, db: Database, fleet: Fleet, *, study_id: int, study_name: str, owner: str, spec: StudySpec,
                 launcher_for: Callable[[Machine], Launcher], heartbeat_s: float = 5.0,
                 lease_s: float = lease.LEASE_S, window_s: float = WINDOW_S,
                 say: Callable[[str], None] = lambda message: None) -> None:
        self.db, self.fleet, self.study_id, self.study_name, self.owner = db, fleet, study_id, study_name, owner
        self.priority, self.max_gpus = spec.scheduling.priority, spec.scheduling.max_gpus
        self.gpus, self.labels = spec.resources.gpus, dict(spec.resources.labels)
        self.lease_s, self.window_s = lease_s, window_s
        self.machines = {m.name: m for m in fleet.machines if claimable(m)}  # machine name -> claimable machine
        self.by_key = {m.claim_key: m for m in self.machines.values()}
        self.infos: dict[str, MachineInfo] = {}
        self.ids: dict[tuple[str, str, int], int] = {}  # (machine key, kind, block) -> its row id
        self.held: dict[Slot, list[tuple[int, int, int]]] = {}  # claimed slots -> (claim id, block id, bits) each
        self._units = 0  # units those hold
        self.by_trial: dict[int, Slot] = {}  # trial number -> its claimed slot
        self.usage, self.usage_at = 0.0, _now()  # this study's decayed unit-seconds, and when
        self.waiting: str | None = None  # what the study waits for (None: it does not wait on other studies)
        self.waiting_since: datetime | None = None
        self.unmet = 0  # trials it wanted at the last decision and did not get
        self._deferred: dict[tuple[str, tuple[str, ...]], float] = {}  # own candidates the policy gave away: since
        self._written: tuple | None = None  # the demand row's values as last written
        self._names: dict[int, str] = {study_id: study_name}
        self._held_by: tuple[float, list] = (-math.inf, [])  # (when read, (study, holder, units) of each holder)
        self._demand_read: tuple[float, list] = (-math.inf, [])  # (when read, the demand rows)
        self._messages: deque[str] = deque()
        self._slot_units: dict[Slot, tuple[str, ...]] = {}  # a slot's units (`_units_of`)
        self._slot_bits: dict[Slot, dict[tuple[str, int], int]] = {}  # the same as block masks (`_bits`)
        self._known: set[Slot] = set()  # slots whose block rows are known (`_missing_blocks`)
        self._next_poll: float | None = None
        self.say = say
        self._told: str | None = None  # the waiting reason last said and recorded (`study.waiting` events)
        self.reaper = Reaper(db, fleet, owner, launcher_for, heartbeat_s, self._messages.append)

    # ---- setup ------------------------------------------------------------------------------------------------
    def start(self, infos: dict[str, MachineInfo]) -> None:
        """Rows for every unit of the reachable machines, this study's use so far (its last demand row), the
        reaper. `infos` is the controller's live dict of probes (machines that come back are seen in it)."""
        self.infos = infos
        wanted = {}
        for name, machine in self.machines.items():
            info = infos.get(name)
            if info is not None and info.reachable:
                for (kind, block), count in blocks_for(info.gpu_count,
                                                       machine.resolved_cpu_slots(info.cpu_count)).items():
                    wanted[(machine.claim_key, kind, block)] = count
        now = _now()
        with self.db.session() as s:
            if wanted:
                self.ids.update(store.ensure_blocks(s, wanted))
            for row in store.demand(s):
                if row.study_id == self.study_id:  # a previous run of this study: its use goes on decaying
                    at = _aware(row.usage_at)
                    self.usage = decayed(row.usage, 0, row.window_s, (now - at).total_seconds())
                    self.usage_at = now
        self.reaper.start()

    def _missing_blocks(self, slots: list[Slot]) -> bool:
        """Whether a claimable slot's block rows are not known yet (once known, a slot is not looked at again)."""
        for slot in slots:
            if slot in self._known:
                continue
            machine = self.machines.get(slot.machine)
            if machine is None:
                continue
            if any((machine.claim_key, kind, block) not in self.ids for kind, block in self._bits(slot)):
                return True
            self._known.add(slot)
        return False

    def _units_of(self, slot: Slot) -> tuple[str, ...]:
        units = self._slot_units.get(slot)
        if units is None:
            units = self._slot_units[slot] = slot_units(slot)
        return units

    def _bits(self, slot: Slot) -> dict[tuple[str, int], int]:
        bits = self._slot_bits.get(slot)
        if bits is None:
            bits = self._slot_bits[slot] = bits_of(self._units_of(slot))
        return bits

    def _ensure_blocks(self, s, slots: list[Slot]) -> None:
        """Block rows for the claimable `slots` whose rows this controller has not seen: a machine unreachable when it
        started that answers now, or one that came back with more units. Written in `s` (the caller's transaction)."""
        wanted: dict[tuple[str, str, int], int] = {}
        for slot in slots:
            machine = self.machines.get(slot.machine)
            if machine is None:
                continue
            key = machine.claim_key
            bits = self._bits(slot)
            missing = [(kind, block) for kind, block in bits if (key, kind, block) not in self.ids]
            if not missing:
                continue
            info = self.infos.get(slot.machine)
            counts = blocks_for(info.gpu_count, machine.resolved_cpu_slots(info.cpu_count)) if info else {}
            for kind, block in missing:
                wanted[(key, kind, block)] = max(wanted.get((key, kind, block), 0), counts.get((kind, block), 0),
                                                 bits[(kind, block)].bit_length())
        if wanted:
            self.ids.update(store.ensure_blocks(s, wanted))

    def _blocks_of(self, slot: Slot) -> list[tuple[int, int]] | None:
        """(block id, bits) of the slot's units (their rows made first: `_ensure_blocks`); None for a machine whose
        resource manager arbitrates."""
        machine = self.machines.get(slot.machine)
        if machine is None:
            return None
        key = machine.claim_key
        return [(self.ids[(key, kind, block)], mask) for (kind, block), mask in self._bits(slot).items()]

    # ---- use ----------------------------------------------------------------------------------------------------
    def held_units(self) -> int:
        return self._units

    def _hold(self, slot: Slot, claims: list[tuple[int, int, int]], now: datetime) -> None:
        self._rebase(now)
        self.held[slot] = claims
        self._units += sum(popcount(bits) for _, _, bits in claims)

    def _unhold(self, slot: Slot, now: datetime) -> list[tuple[int, int, int]]:
        self._rebase(now)
        claims = self.held.pop(slot, [])
        self._units -= sum(popcount(bits) for _, _, bits in claims)
        return claims

    def _rebase(self, now: datetime) -> None:
        self.usage = decayed(self.usage, self.held_units(), self.window_s, (now - self.usage_at).total_seconds())
        self.usage_at = now

    # ---- dispatch -------------------------------------------------------------------------------------------------
    def offer(self, candidates: list[Slot], wanted: int) -> list[Slot]:
        """Of `candidates` (this study's free slots by its own view, in its order), at most `wanted` that it may
        claim now: free in the database, within its `max_gpus`, its share by the policy. Sets `waiting`; with nothing
        to offer, writes the demand row when the wait changed (a dispatch writes it with its claims)."""
        out = self._offer(candidates, wanted)
        if not out and self._wait_state() != self._written:
            with self.db.session() as s:
                self._write_demand(s, _now())
        return out

    def _offer(self, candidates: list[Slot], wanted: int) -> list[Slot]:
        now = _now()
        passing = [s for s in candidates if s.machine not in self.machines]  # the resource manager arbitrates there
        own = [s for s in candidates if s.machine in self.machines]
        want = max(0, wanted - len(passing))
        per_trial = self.gpus or 1
        if self.max_gpus is not None:
            want = min(want, max(0, self.max_gpus - self.held_units()) // per_trial)
        if wanted <= 0:
            self._decided(now, 0, None)
            return []
        if want == 0 or not own:
            reason = None
            if self.max_gpus is not None and self.held_units() + per_trial > self.max_gpus:
                reason = (f"its scheduling.max_gpus: it holds {self.held_units()} of its {self.max_gpus} GPUs")
            # no candidate at all: every slot of its machines runs its own trials (or takes none now): no wait on others
            self._decided(now, wanted - len(passing), reason, poll=reason is not None and want > 0)
            return passing[:wanted]
        clock = time.monotonic()
        if self._alone(now, clock):  # no other study wants or holds a slot: each of its own is free, claimed as is
            self._decided(now, want - min(want, len(own)), None)
            return passing[:wanted] + own[:min(want, max(0, wanted - len(passing)))]
        if self._missing_blocks(own):  # machines unreachable at start that answer now: their rows first
            with self.db.session() as s:
                self._ensure_blocks(s, own)
        with self.db.read_session() as s:  # advisory: the claim in the dispatch transaction is what decides
            rows = store.demand(s)
            kinds = {"gpu" if self.gpus else "cpu"} | {"gpu" if r.gpus_per_trial else "cpu" for r in rows if r.wanted > 0}
            free_rows = store.free_blocks(s, kinds)  # a GPU study reads no CPU slots unless another study wants them
            self._demand_read = (clock, rows)
            unknown = {r.study_id for r in rows} - set(self._names)
            if unknown:
                self._names.update(dict(s.execute(select(StudyRow.id, StudyRow.name).where(StudyRow.id.in_(unknown))).all()))
        free: dict[str, set[str]] = {}
        for row in free_rows:
            free.setdefault(row.machine, set()).update(units_in(row.kind, row.block, row.free))
        mine = []
        for slot in own:
            key = self.machines[slot.machine].claim_key
            units = self._units_of(slot)
            if free.get(key, set()).issuperset(units):
                mine.append(Candidate(key, units, slot))
        if not mine:
            self._decided(now, want, self._held_reason(now))
            return passing[:wanted]
        me = Contender(self.study_id, self.priority, share(self.usage, self.held_units(), self.window_s,
                                                           (now - self.usage_at).total_seconds()), want, self.window_s,
                       self.waiting_since.timestamp() if self.waiting_since else math.inf, mine)
        others = self._contenders(rows, free, now)
        given = allocate(free, [me, *others], until=self.study_id)
        got = [c.slot for c in given[self.study_id]]
        # what the policy gave to others: taken anyway once it stayed free DEFER_S (they may be unable to use it)
        taken = {(c.machine, c.units) for c in given[self.study_id]}
        clock = time.monotonic()
        deferred = {}
        for cand in mine:
            ident = (cand.machine, cand.units)
            if ident in taken:
                continue
            deferred[ident] = self._deferred.get(ident, clock)
            if len(got) < want and clock - deferred[ident] >= DEFER_S:
                got.append(cand.slot)
                taken.add(ident)
        self._deferred = {k: v for k, v in deferred.items() if k not in taken}
        reason = None
        if len(got) < want:
            first = next((o for o in sorted(others, key=lambda o: o.rank()) if given.get(o.study_id)), None)
            if first is not None and self._deferred:
                reason = f"free slots go first to study {self._names.get(first.study_id, first.study_id)!r} " + (
                    f"(priority {first.priority} above {self.priority})" if first.priority > self.priority else
                    "(fair share: its share of GPU-seconds is smaller; `orch fleet queue` shows each study's)")
            else:
                reason = self._held_reason(now)
        self._decided(now, want - len(got), reason)
        return passing[:wanted] + got[: max(0, wanted - len(passing))]

    def _alone(self, now: datetime, clock: float) -> bool:
        """Whether no other study wants a slot and no other controller holds one (read at most every `ALONE_S`; a
        claim that fails reads both again at once): then the policy has nothing to weigh and its own view of the free
        slots is the database's."""
        if clock - self._demand_read[0] >= ALONE_S:
            with self.db.read_session() as s:
                self._demand_read = (clock, store.demand(s))
        if any(r.study_id != self.study_id and r.wanted > 0 and _aware(r.expires_at) >= now
               and not lease.holder_gone(r.controller) for r in self._demand_read[1]):
            return False
        self._read_holders(clock, ALONE_S)
        return not any(n and holder != self.owner for _, holder, n in self._held_by[1])

    def _read_holders(self, clock: float, every_s: float) -> None:
        if clock - self._held_by[0] >= every_s:
            with self.db.read_session() as s:
                held = store.held_by_holder(s)
                unknown = {sid for sid, _, _ in held if sid is not None} - set(self._names)
                if unknown:
                    self._names.update(dict(s.execute(select(StudyRow.id, StudyRow.name).where(
                        StudyRow.id.in_(unknown))).all()))
            self._held_by = (clock, held)

    def _contenders(self, rows, free: dict[str, set[str]], now: datetime) -> list[Contender]:
        """The other studies that want slots now, with their candidates among the free units (their slots cut from
        this controller's view of the machines: the fleet file and its probes)."""
        out = []
        views = {}
        for key in free:
            machine = self.by_key.get(key)
            info = self.infos.get(machine.name) if machine is not None else None
            if info is not None and info.reachable:
                views[key] = (machine, info)
        for row in rows:
            if row.study_id == self.study_id or row.wanted <= 0 or _aware(row.expires_at) < now:
                continue
            if row.controller != self.owner and lease.holder_gone(row.controller):
                continue
            per_trial = row.gpus_per_trial or 1
            want = row.wanted
            if row.max_gpus is not None:
                want = min(want, max(0, row.max_gpus - row.held) // per_trial)
            if want <= 0:
                continue
            labels = row.labels or {}
            machines = []
            for key, (machine, info) in views.items():
                if all(machine.labels.get(k) == v for k, v in labels.items()):
                    machines.append((key, sets_of(row.gpus_per_trial, info.gpu_count,
                                                  machine.resolved_cpu_slots(info.cpu_count))))
            candidates = candidates_for(sorted(machines), free)
            if not candidates:
                continue
            usage = share(row.usage, row.held, row.window_s, (now - _aware(row.usage_at)).total_seconds())
            since = _aware(row.waiting_since).timestamp() if row.waiting_since else math.inf
            out.append(Contender(row.study_id, row.priority, usage, want, row.window_s, since, candidates))
        return out

    def _held_reason(self, now: datetime) -> str | None:
        """Why no slot is free: who holds them (other studies, or a previous controller of this study whose jobs are
        checked before their slots are given again); the study's own running trials are no reason to wait."""
        self._read_holders(time.monotonic(), REASON_S)
        others = sorted({f"study {self._names.get(sid, sid)!r}" for sid, holder, n in self._held_by[1]
                         if n and sid != self.study_id and holder != self.owner})
        previous = any(n and sid == self.study_id and holder != self.owner for sid, holder, n in self._held_by[1])
        if previous:
            others.append("a previous controller of this study (its jobs are checked before the slots are given "
                          "again)")
        if not others:
            return None
        what = "GPUs" if self.gpus else "CPU slots"
        return f"every slot it can use is busy: {what} held by " + ", ".join(others)

    def _decided(self, now: datetime, unmet: int, reason: str | None, poll: bool = True) -> None:
        """The decision's outcome: what the study waits for (None: nothing of other studies); `poll`: look again in
        POLL_S (a wait on other studies), not only when one of its own trials ends (a wait on its own cap)."""
        if reason is not None and self.waiting is None:
            self.waiting_since = now
        elif reason is None:
            self.waiting_since = None
        self.waiting, self.unmet = reason, max(0, unmet)
        if (reason is None) != (self._told is None) and reason != self._told:
            self.say(f"waiting for a slot: {reason}" if reason else "no longer waiting: slots were given to it")
        self._next_poll = time.monotonic() + POLL_S if reason is not None and poll else None

    def take(self, slots: list[Slot], session=None) -> list[Slot]:
        """Claim `slots` (from `offer`), in `session`'s transaction (the controller's dispatch) or one of its own; the
        ones this study got, in their order (a slot another controller claimed first is left out). The study's demand
        row is written in the same transaction."""
        now = _now()
        until = now + timedelta(seconds=self.lease_s)
        out, rows, kept = [], [], []
        if not slots:
            if self._wait_state() != self._written:
                with self._transaction(session) as s:
                    self._write_demand(s, now)
            return out
        with self._transaction(session) as s:
            self._ensure_blocks(s, slots)
            blocks = {slot: self._blocks_of(slot) for slot in slots}
            wanted: dict[int, int] = {}
            for parts in blocks.values():
                for block_id, bits in parts or ():
                    wanted[block_id] = wanted.get(block_id, 0) | bits
            got = store.claim_bits(s, wanted)
            undo = []
            for slot, parts in blocks.items():
                if parts is None:
                    out.append(slot)  # not claimed here (its resource manager arbitrates)
                elif all(block_id in got for block_id, _ in parts):
                    out.append(slot)
                    kept.append((slot, parts))
                    key = self.machines[slot.machine].claim_key
                    for block_id, bits in parts:
                        rows.append(dict(block_id=block_id, bits=bits, machine=key, units=",".join(slot_units(slot)),
                                         controller=self.owner, study_id=self.study_id, slot=slot.label,
                                         claimed_at=now, lease_expires=until))
                else:  # another controller took some of its units first: the parts this one got go back
                    undo += [(block_id, bits) for block_id, bits in parts if block_id in got]
            store.undo_bits(s, undo)
            ids = iter(store.add_claims(s, rows))
            for slot, parts in kept:
                self._hold(slot, [(next(ids), block_id, bits) for block_id, bits in parts], now)
            if kept:  # the claims are the transaction's: rolled back (a database error in the dispatch), not held
                event.listen(s, "after_rollback", lambda _s, slots=[slot for slot, _ in kept]: self._forget(slots),
                             once=True)
            lost = len(slots) - len(out)
            if lost:  # another controller is here: look at the database, not this controller's view, next time
                self._demand_read = self._held_by = (-math.inf, [])
            if lost and self.waiting is None:
                self.waiting, self.waiting_since = "another study claimed the free slots first", now
                self._next_poll = time.monotonic() + POLL_S
            self.unmet += lost
            self._write_demand(s, now, force=True)
        return out

    def _forget(self, slots: list[Slot]) -> None:
        """Claims whose transaction rolled back (with the trials assigned to them in it): held no longer."""
        now = _now()
        gone = set(slots)
        self.by_trial = {number: slot for number, slot in self.by_trial.items() if slot not in gone}
        for slot in slots:
            self._unhold(slot, now)

    @contextmanager
    def _transaction(self, session):
        if session is not None:
            yield session
        else:
            with self.db.session() as s:
                yield s

    def _wait_state(self) -> tuple:
        return (self.unmet if self.waiting else 0, self.waiting, self.waiting_since)

    def _write_demand(self, s, now: datetime, force: bool = False) -> None:
        """The study's demand row: written with each claim (what it holds changed) and when its wait changed."""
        state = self._wait_state()
        if not force and state == self._written:
            return
        if (self.waiting is None) != (self._told is None):  # the wait began or ended: an event of the study's
            s.add(EventRow(at=now, study_id=self.study_id, kind="study.waiting",
                           old=None if self.waiting else "waiting", new="waiting" if self.waiting else "served",
                           message=self.waiting))
            self._told = self.waiting
        self._rebase(now)
        store.write_demand(s, dict(
            study_id=self.study_id, controller=self.owner, priority=self.priority, gpus_per_trial=self.gpus,
            labels=self.labels, max_gpus=self.max_gpus, wanted=state[0], held=self.held_units(), usage=self.usage,
            usage_at=now, window_s=self.window_s, waiting_since=self.waiting_since, reason=self.waiting,
            updated_at=now, expires_at=now + timedelta(seconds=self.lease_s)))
        self._written = state

    def idle(self) -> None:
        """The study wants no slot now (its round is open, it is stopping): it waits for nothing."""
        if self.waiting is not None or self.unmet or self._written is None:
            self._decided(_now(), 0, None)
            with self.db.session() as s:
                self._write_demand(s, _now())

    def assign(self, writes, slot: Slot, number: int) -> None:
        """Trial `number` runs on claimed `slot`: written with the transaction that records it `pending`."""
        claims = self.held.get(slot)
        if claims is None:
            return
        self.by_trial[number] = slot
        for claim_id, _, _ in claims:
            writes.add(store.ASSIGN, dict(claim_=claim_id, me=self.owner, number=number))

    def release(self, s, writes, number: int) -> None:
        """Trial `number` ended: its slot is free (in `s`, the transaction that records its end), and the study's
        demand row holds that much less and wants one trial's slot more (`writes`, flushed with it). Without that want
        a controller of a lower priority could read the slot free while this study's row still said it wanted nothing,
        and take it before this study's next decision (seen: a priority-1 study lost its slot that way for a trial's
        length). Where the study wants no more trials, its next decision (this controller's next loop) says so."""
        slot = self.by_trial.pop(number, None)
        if slot is None:
            return
        now = _now()
        store.give_back(s, self._unhold(slot, now), self.owner)
        writes.add(store.DEMAND_RELEASED, dict(sid=self.study_id, me=self.owner, held=self.held_units(),
                                               usage=self.usage, usage_at=now))
        self._written = None  # the row's want is a guess until the next decision writes it

    def drop(self, slots: list[Slot]) -> None:
        """Claimed slots no trial was started on (an invalid point, an empty queue): free again at once."""
        claims = []
        now = _now()
        assigned = set(self.by_trial.values())
        for slot in slots:
            if slot in self.held and slot not in assigned:
                claims += self._unhold(slot, now)
        if claims:
            with self.db.session() as s:
                store.give_back(s, claims, self.owner)

    def adopt(self, slot: Slot, number: int) -> bool:
        """A job re-attached after a controller restart: its claims become this controller's (or, when none is left,
        its slot is claimed anew). False when another study holds the slot now."""
        if slot.machine not in self.machines:
            return True
        now = _now()
        until = now + timedelta(seconds=self.lease_s)
        with self.db.session() as s:
            parts = None
            if slot.index >= 0 or slot.gpu_ids:
                self._ensure_blocks(s, [slot])
                parts = self._blocks_of(slot)
            owned = store.take_over(s, self.study_id, number, self.owner, until)
            if not owned and parts:
                wanted = {block_id: bits for block_id, bits in parts}
                got = store.claim_bits(s, wanted)
                if got != set(wanted):
                    store.undo_bits(s, [(b, wanted[b]) for b in got])
                    return False
                key = self.machines[slot.machine].claim_key
                ids = store.add_claims(s, [dict(block_id=b, bits=bits, machine=key, units=",".join(slot_units(slot)),
                                                controller=self.owner, study_id=self.study_id, trial_number=number,
                                                slot=slot.label, claimed_at=now, lease_expires=until)
                                           for b, bits in parts])
                owned = [(i, b, bits) for i, (b, bits) in zip(ids, parts)]
            if not owned:
                return False
        self._hold(slot, owned, now)
        self.by_trial[number] = slot
        return True

    # ---- the loop ---------------------------------------------------------------------------------------------------
    def next_poll(self) -> float | None:
        """When the loop should look at the fleet again (monotonic; None: only when something of its own changes)."""
        return self._next_poll

    def messages(self) -> list[str]:
        out = []
        while self._messages:
            out.append(self._messages.popleft())
        return out

    def renew(self) -> None:
        """The heartbeat: every claim's lease and the demand row's are extended."""
        now = _now()
        until = now + timedelta(seconds=self.lease_s)
        with self.db.session() as s:
            store.renew(s, self.owner, self.study_id, until)
            self._write_demand(s, now, force=True)

    def left_by_earlier_runs(self) -> list[str]:
        """This study's claims that other controllers (earlier runs of it, now gone) still hold: their jobs were
        stopping when this run began. One label each (`machine slot`)."""
        with self.db.read_session() as s:
            return sorted(f"{r.machine} {r.slot or r.units}" for r in store.claims_of(s)
                          if r.study_id == self.study_id and r.controller != self.owner)

    def settle(self, left: list[str], timeout_s: float, stop: threading.Event) -> list[str]:
        """A finished run, before it says done: wait (at most `timeout_s`, or until `stop`) while earlier runs' claims
        of this study (`left`, as `left_by_earlier_runs` found them) are still held, so that nothing of the study holds
        the fleet once it has ended. The reaper frees them as their jobs end (it looks every `RECHECK_S` while one still
        runs). What is still held when it gave up."""
        deadline = time.monotonic() + timeout_s
        while left and time.monotonic() < deadline and not stop.wait(RECHECK_S / 4):
            left = self.left_by_earlier_runs()
        return left

    def close(self) -> None:
        """The run ends: claims no trial holds are released, the demand row goes; the claims of trials whose end
        this run did not see stay for the reaper, which frees them once their jobs are gone."""
        self.reaper.stop()
        assigned = set(self.by_trial.values())
        claims = [c for slot, held in self.held.items() if slot not in assigned for c in held]
        with self.db.session() as s:
            store.give_back(s, claims, self.owner)
            store.drop_demand(s, self.study_id, self.owner)


__all__ = ["FleetClaims", "POLL_S", "DEFER_S", "WINDOW_S"]
