"""The fleet's queue as data (read-only): which study and trial holds each slot and since when, the studies with their
priority, use and share, the ones waiting and for what, and the next one to be served (the policy's rank). What
`orch fleet queue`, `orch fleet status` and `orch study status` show."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import select

from db import Database, StudyRow

from ..study import lease
from . import store
from .policy import decayed, share


def _aware(when: datetime | None) -> datetime | None:
    return None if when is None else when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _iso(when: datetime | None) -> str | None:
    return None if when is None else _aware(when).isoformat(timespec="seconds")


def _live(row, now: datetime) -> bool:
    return _aware(row.expires_at) >= now and not lease.holder_gone(row.controller)


def fleet_queue(db: Database, now: datetime | None = None) -> dict:
    now = now or datetime.now(timezone.utc)
    with db.read_session() as s:
        claims = store.claims_of(s)
        demand = store.demand(s)
        names = dict(s.execute(select(StudyRow.id, StudyRow.name)).all())
    slots: dict[tuple, dict] = {}
    held_by: dict = {}
    for c in claims:
        key = (c.machine, c.study_id, c.trial_number, c.slot, c.controller)
        entry = slots.setdefault(key, {
            "machine": c.machine, "slot": c.slot, "units": [], "study": names.get(c.study_id, c.study_id),
            "trial": c.trial_number, "since": _iso(c.claimed_at), "controller": c.controller,
            "lease_expires": _iso(c.lease_expires),
            "held_s": round((now - _aware(c.claimed_at)).total_seconds(), 1) if c.claimed_at else None,
            "controller_gone": lease.holder_gone(c.controller) or _aware(c.lease_expires) < now})
        for unit in c.units.split(","):
            if unit not in entry["units"]:
                entry["units"].append(unit)
        held_by[c.study_id] = held_by.get(c.study_id, 0) + bin(c.bits).count("1")
    studies = []
    for row in demand:
        if not _live(row, now):
            continue
        elapsed = (now - _aware(row.usage_at)).total_seconds()
        usage = decayed(row.usage, row.held, row.window_s, elapsed)
        studies.append({"study": names.get(row.study_id, row.study_id), "study_id": row.study_id,
                        "priority": row.priority, "held": held_by.get(row.study_id, 0), "max_gpus": row.max_gpus,
                        "gpus_per_trial": row.gpus_per_trial, "usage_gpu_s": round(usage, 1),
                        "rank_share": round(share(row.usage, row.held, row.window_s, elapsed), 1),
                        "window_s": row.window_s, "wanted": row.wanted, "waiting": row.waiting_since is not None,
                        "waiting_since": _iso(row.waiting_since), "waiting_for": row.reason,
                        "controller": row.controller})
    total = sum(st["usage_gpu_s"] for st in studies)
    for st in studies:
        st["share"] = round(st["usage_gpu_s"] / total, 3) if total > 0 else None
    waiting = [st for st in studies if st["waiting"] and st["wanted"] > 0]
    waiting.sort(key=lambda st: (-st["priority"], st["rank_share"], st["waiting_since"] or "~", st["study_id"]))
    studies.sort(key=lambda st: (-st["priority"], st["rank_share"], st["study_id"]))
    return {"at": _iso(now), "slots": sorted(slots.values(), key=lambda e: (e["machine"], e["slot"] or "")),
            "studies": studies, "waiting": [st["study"] for st in waiting],
            "next": waiting[0]["study"] if waiting else None}


def study_waiting(db: Database, study_id: int, now: datetime | None = None) -> dict | None:
    """Whether a running study waits for slots other studies hold, since when and for what (None: it does not)."""
    now = now or datetime.now(timezone.utc)
    with db.read_session() as s:
        row = next((r for r in store.demand(s) if r.study_id == study_id), None)
    if row is None or not _live(row, now) or row.waiting_since is None:
        return None
    return {"since": _iso(row.waiting_since), "trials": row.wanted, "for": row.reason,
            "waited_s": round((now - _aware(row.waiting_since)).total_seconds(), 1), "priority": row.priority}


__all__ = ["fleet_queue", "study_waiting"]
