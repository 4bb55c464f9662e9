"""The SQL of the fleet's claims: `orch_slot_units` (one row per GPU or CPU slot of a machine; `controller` NULL when
free) and `orch_fleet_demand` (one row per running study). Statements are built once and bound.

A claim is one conditional UPDATE (`... WHERE id IN (...) AND controller IS NULL RETURNING id`): on SQLite it runs
inside the BEGIN IMMEDIATE every transaction opens with, so no other writer runs between its read and its write; on
PostgreSQL a second claimant of a row waits for the first one's commit, then finds `controller` set and skips the row.
Rows are claimed in id order within one statement, one claim statement per transaction: two claimants never wait on
each other in a cycle. Releases and renewals touch only the caller's own rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Iterable

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from db import FleetDemandRow, SlotUnitRow, StudyRow, TrialRow

UNITS = SlotUnitRow.__table__
DEMAND = FleetDemandRow.__table__
CHUNK = 500  # ids per IN list

_FREE = select(UNITS.c.id, UNITS.c.machine, UNITS.c.unit).where(UNITS.c.controller.is_(None))
_ASSIGN = update(UNITS).where(UNITS.c.id == bindparam("id_"), UNITS.c.controller == bindparam("me")).values(
    trial_number=bindparam("number"), slot=bindparam("label"))
_RELEASE = update(UNITS).where(UNITS.c.id == bindparam("id_"), UNITS.c.controller == bindparam("me")).values(
    controller=None, study_id=None, trial_number=None, slot=None, claimed_at=None, lease_expires=None,
    released_at=bindparam("at"))
_DEMAND_HELD = update(DEMAND).where(DEMAND.c.study_id == bindparam("sid"), DEMAND.c.controller == bindparam("me")).values(
    held=bindparam("held"), usage=bindparam("usage"), usage_at=bindparam("usage_at"))
_HOLDERS = select(UNITS.c.controller, func.max(UNITS.c.lease_expires)).where(
    UNITS.c.controller.is_not(None)).group_by(UNITS.c.controller)


def _chunks(items: list, size: int = CHUNK) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _insert_ignoring_duplicates(s: Session, rows: list[dict]) -> None:
    dialect = s.get_bind().dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:  # another database: rows another controller added meanwhile fail the insert; the next start adds the rest
        s.execute(insert(UNITS), rows)
        return
    s.execute(dialect_insert(UNITS).on_conflict_do_nothing(index_elements=["machine", "unit"]), rows)


def ensure_units(s: Session, units: dict[str, list[str]], now: datetime) -> dict[tuple[str, str], int]:
    """A row for every (machine key, unit) of `units`; returns their ids."""
    ids: dict[tuple[str, str], int] = {}
    keys = sorted(units)
    for chunk in _chunks(keys):
        for row in s.execute(select(UNITS.c.id, UNITS.c.machine, UNITS.c.unit).where(UNITS.c.machine.in_(chunk))):
            ids[(row.machine, row.unit)] = row.id
    missing = [dict(machine=key, unit=unit, released_at=now) for key in keys for unit in units[key]
               if (key, unit) not in ids]
    if missing:
        _insert_ignoring_duplicates(s, missing)
        for chunk in _chunks(sorted({m["machine"] for m in missing})):
            for row in s.execute(select(UNITS.c.id, UNITS.c.machine, UNITS.c.unit).where(UNITS.c.machine.in_(chunk))):
                ids[(row.machine, row.unit)] = row.id
    return ids


def free_units(s: Session) -> list:
    """(id, machine, unit) of every free unit."""
    return s.execute(_FREE).all()


def demand(s: Session) -> list[FleetDemandRow]:
    return list(s.scalars(select(FleetDemandRow)))


def claim(s: Session, ids: list[int], me: str, study_id: int, now: datetime, until: datetime) -> set[int]:
    """Claim the free ones of `ids` (sorted: every claimant locks rows in the same order); the ids it got."""
    got: set[int] = set()
    for chunk in _chunks(sorted(ids)):
        stmt = (update(UNITS).where(UNITS.c.id.in_(chunk), UNITS.c.controller.is_(None))
                .values(controller=me, study_id=study_id, trial_number=None, slot=None, claimed_at=now,
                        lease_expires=until).returning(UNITS.c.id))
        got.update(s.execute(stmt).scalars())
    return got


def release_rows(s: Session, ids: list[int], holder: str, now: datetime) -> int:
    """Free `ids` if `holder` still holds them; how many were freed."""
    if not ids:
        return 0
    return s.execute(_RELEASE, [dict(id_=i, me=holder, at=now) for i in ids]).rowcount


def take_over(s: Session, study_id: int, number: int, me: str, until: datetime) -> list[int]:
    """The claims of trial `number` of the study, whoever held them, now `me`'s (a re-attached job)."""
    stmt = (update(UNITS).where(UNITS.c.study_id == study_id, UNITS.c.trial_number == number)
            .values(controller=me, lease_expires=until).returning(UNITS.c.id))
    return list(s.execute(stmt).scalars())


def renew(s: Session, me: str, study_id: int, until: datetime) -> int:
    """Extend every claim of `me` and its demand row; how many units it still holds."""
    count = s.execute(update(UNITS).where(UNITS.c.controller == me).values(lease_expires=until)).rowcount
    s.execute(update(DEMAND).where(DEMAND.c.study_id == study_id, DEMAND.c.controller == me).values(expires_at=until))
    return count


def write_demand(s: Session, values: dict) -> None:
    """Insert or update the study's demand row (its controller is the only writer of it)."""
    sid = values["study_id"]
    changed = s.execute(update(DEMAND).where(DEMAND.c.study_id == sid).values(
        **{k: v for k, v in values.items() if k != "study_id"})).rowcount
    if not changed:
        s.execute(insert(DEMAND).values(**values))


def drop_demand(s: Session, study_id: int, controller: str | None = None) -> None:
    stmt = delete(DEMAND).where(DEMAND.c.study_id == study_id)
    if controller is not None:
        stmt = stmt.where(DEMAND.c.controller == controller)
    s.execute(stmt)


def holders(s: Session) -> list[tuple[str, datetime | None]]:
    """Every controller holding units, with its latest lease."""
    return [tuple(r) for r in s.execute(_HOLDERS).all()]


def claims_of(s: Session, holder: str) -> list:
    return s.execute(select(UNITS.c.id, UNITS.c.machine, UNITS.c.unit, UNITS.c.study_id, UNITS.c.trial_number,
                            UNITS.c.slot, UNITS.c.claimed_at).where(UNITS.c.controller == holder)).all()


def trial_of(s: Session, study_id: int, number: int):
    """(trial row, study name) of a claim's trial, or None."""
    return s.execute(select(TrialRow, StudyRow.name).join(StudyRow, StudyRow.id == TrialRow.study_id).where(
        TrialRow.study_id == study_id, TrialRow.number == number)).first()


def held_units(s: Session) -> list:
    """Every held unit with its holder: what the queue view lists."""
    return s.execute(select(UNITS.c.machine, UNITS.c.unit, UNITS.c.controller, UNITS.c.study_id,
                            UNITS.c.trial_number, UNITS.c.slot, UNITS.c.claimed_at, UNITS.c.lease_expires)
                     .where(UNITS.c.controller.is_not(None))).all()


def held_by_holder(s: Session) -> list[tuple[int | None, str, int]]:
    """(study id, controller, units) of every holder now."""
    return [tuple(r) for r in s.execute(select(UNITS.c.study_id, UNITS.c.controller, func.count()).where(
        UNITS.c.controller.is_not(None)).group_by(UNITS.c.study_id, UNITS.c.controller)).all()]


__all__ = ["ensure_units", "free_units", "demand", "claim", "release_rows", "take_over", "renew", "write_demand",
           "drop_demand", "holders", "claims_of", "trial_of", "held_units", "held_by_holder", "UNITS", "DEMAND",
           "_ASSIGN", "_RELEASE"]
