"""Claims of controllers that are gone: freed once their jobs are.

A holder is gone when its claims' lease expired (no heartbeat renewed them for `lease.LEASE_S`), or at once when it
ran on this host and its process is gone (`lease.holder_gone`). Each of its claims is then checked before the slot is
given again: a claim with no trial recorded never started a job; otherwise the trial's launcher is asked whether the
job still runs (`Launcher.job_alive`: the ssh and ray wrappers' process group, the local process by pid and start
time). A job that still runs keeps its slot (asked again next time); a machine that cannot be asked, or that is not in
this controller's fleet file, keeps it too. Each freed claim is recorded as an event (`claim.freed`).

One thread per controller, every heartbeat, or every `RECHECK_S` while a gone holder's job still runs (a job stopping
after its controller died takes seconds); what it did goes to `say` (read by the loop, not printed from here).
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from db import Database, EventRow

from ..study import lease
from ..config.errors import OrchError
from ..config.fleet import Fleet, Machine
from ..launchers.base import JobRecord, Launcher
from . import store
from .units import claimable


RECHECK_S = 1.0


def _aware(when: datetime | None) -> datetime | None:
    return None if when is None else when if when.tzinfo else when.replace(tzinfo=timezone.utc)


class Reaper:
    def __init__(self, db: Database, fleet: Fleet, owner: str, launcher_for: Callable[[Machine], Launcher],
                 period_s: float, say: Callable[[str], None]) -> None:
        self.db, self.owner, self.launcher_for, self.period_s, self.say = db, owner, launcher_for, period_s, say
        self.by_key = {m.claim_key: m for m in fleet.machines if claimable(m)}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.freed = 0  # claims freed by this reaper (units)
        self._kept: set[tuple] = set()  # claims found with their job still running (recorded once each)
        self.waiting_for_jobs = False  # the last pass kept a claim whose job still runs

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="claims-reaper")
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.waiting_for_jobs = False
            try:
                self.reap_once()
            except Exception as exc:  # noqa: BLE001 - a database outage: the next pass tries again
                self.say(f"fleet claims: could not check other controllers' claims ({type(exc).__name__}: {exc})")
            self._stop.wait(min(self.period_s, RECHECK_S) if self.waiting_for_jobs else self.period_s)

    def gone(self, now: datetime | None = None) -> list[str]:
        """Holders whose claims may be taken over: lease expired, or their process on this host is gone."""
        now = now or datetime.now(timezone.utc)
        with self.db.read_session() as s:
            rows = store.holders(s)
        return [holder for holder, expires in rows if holder != self.owner
                and ((_aware(expires) is not None and _aware(expires) < now) or lease.holder_gone(holder))]

    def reap_once(self) -> int:
        """Check every claim of every gone holder; free those whose job no longer runs. Units freed."""
        freed = 0
        for holder in self.gone():
            with self.db.read_session() as s:
                rows = store.claims_of(s, holder)
            groups: dict[tuple, list] = {}
            for row in rows:
                groups.setdefault((row.study_id, row.trial_number, row.machine, row.slot), []).append(row)
            for (study_id, number, key, label), parts in sorted(groups.items(), key=lambda kv: str(kv[0])):
                if self._stop.is_set():
                    return freed
                why, running = self._free_to_give(study_id, number, key)
                if why is None:
                    self.waiting_for_jobs = self.waiting_for_jobs or running
                    if running and (holder, study_id, number, key) not in self._kept:
                        self._kept.add((holder, study_id, number, key))
                        with self.db.session() as s:
                            s.add(EventRow(study_id=study_id, trial_number=number, machine=key, kind="claim.held",
                                           old=holder[:32], message=f"{label} of controller {holder} (gone): its "
                                           "job still runs; the slot is given again once it has ended"))
                        self.say(f"fleet claims: {key} {label}: controller {holder} is gone but its job still runs; "
                                 "the slot waits for it to end")
                    continue
                now = datetime.now(timezone.utc)
                with self.db.session() as s:
                    if not store.give_back(s, [(p.id, p.block_id, p.bits) for p in parts], holder):
                        continue  # another controller's reaper freed it first
                    s.add(EventRow(at=now, study_id=study_id, trial_number=number, machine=key, kind="claim.freed",
                                   old=holder[:32], message=f"{label or parts[0].units} of controller {holder} "
                                   f"(gone): {why}"))
                freed += sum(bin(p.bits).count("1") for p in parts)
                self.say(f"fleet claims: {key} {label or ''} freed: controller {holder} is gone and {why}".replace("  ", " "))
            with self.db.session() as s:
                for row in store.demand(s):
                    if row.controller == holder:
                        store.drop_demand(s, row.study_id, holder)
        self.freed += freed
        return freed

    def _free_to_give(self, study_id: int | None, number: int | None, key: str) -> tuple[str | None, bool]:
        """(why the claim can be given again, or None while its job may still run; whether its launcher said the job
        runs)."""
        if number is None or study_id is None:
            return "no trial was started on it", False
        with self.db.read_session() as s:
            found = store.trial_of(s, study_id, number)
            if found is None:
                return "its trial is not recorded", False
            row, study = found
            record = JobRecord(study=study, trial=row.number, machine=row.machine or "", slot=row.slot,
                               workdir=Path(row.workdir or "."), log_path=Path(row.log_path or "train.log"),
                               pid=row.pid, pid_start=row.pid_start, job_ref=row.job_ref, controller=row.controller,
                               started_at=row.started_at)
        machine = self.by_key.get(key)
        if machine is None:
            return None, False  # not in this fleet file: it cannot be asked from here
        try:
            alive = self.launcher_for(machine).job_alive(record, machine)
        except (OrchError, NotImplementedError, OSError):
            return None, False
        return (None, True) if alive else (f"trial {study}#{number}'s job no longer runs", False)


__all__ = ["Reaper"]
