"""The SQL of the fleet's claims: `orch_slot_blocks` (a machine's GPUs or CPU slots, 32 a row: `free`, a mask of the
ones no trial holds), `orch_slot_claims` (who holds which bits of a block, for which trial, until when) and
`orch_fleet_demand` (one row per running study). Statements are built once and bound where their shape is fixed.

A claim is one conditional UPDATE of the blocks (`free = free - bits WHERE (free & bits) = bits`), then the claim rows,
in one transaction: on SQLite it runs inside the BEGIN IMMEDIATE every transaction opens with, so no other writer runs
between its read and its write; on PostgreSQL a second claimant of a block row waits for the first one's commit, then
reads the new `free` and skips the row. Block rows are locked in id order within the one statement, one claim
statement per transaction: two claimants never wait on each other in a cycle. A release deletes its claim rows first and
gives back the bits of the rows it deleted (a claim freed at the same moment by another controller's reaper is freed
once).
Per trial: 2 block updates, a claim row inserted, updated (its trial) and deleted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Iterable

from sqlalchemy import BigInteger, bindparam, case, delete, exists, func, insert, select, update
from sqlalchemy.orm import Session

from db import FleetDemandRow, SlotBlockRow, SlotClaimRow, StudyRow, TrialRow

BLOCKS = SlotBlockRow.__table__
CLAIMS = SlotClaimRow.__table__
DEMAND = FleetDemandRow.__table__
CHUNK = 500  # keys per IN list

_FREE = select(BLOCKS.c.id, BLOCKS.c.machine, BLOCKS.c.kind, BLOCKS.c.block, BLOCKS.c.free).where(BLOCKS.c.free > 0)
_BITS = bindparam("bits_", type_=BigInteger())
#: give bits back (their claim row was deleted in the same transaction: `give_back`); a bit already free stays as is
_GIVE_BACK = update(BLOCKS).where(BLOCKS.c.id == bindparam("block_"), BLOCKS.c.free.op("&")(_BITS) == 0).values(
    free=BLOCKS.c.free + _BITS)
ASSIGN = update(CLAIMS).where(CLAIMS.c.id == bindparam("claim_"), CLAIMS.c.controller == bindparam("me")).values(
    trial_number=bindparam("number"))
DEMAND_HELD = update(DEMAND).where(DEMAND.c.study_id == bindparam("sid"), DEMAND.c.controller == bindparam("me")).values(
    held=bindparam("held"), usage=bindparam("usage"), usage_at=bindparam("usage_at"))
#: a trial ended: its slot is free and the study wants one more trial's slot in the same commit (its controller's
#: next decision writes what it really wants), so that no other controller sees the slot free and the study not wanting
DEMAND_RELEASED = DEMAND_HELD.values(wanted=DEMAND.c.wanted + 1)
_UNDO = update(BLOCKS).where(BLOCKS.c.id == bindparam("block_")).values(free=BLOCKS.c.free + _BITS)
_HOLDERS = select(CLAIMS.c.controller, func.max(CLAIMS.c.lease_expires)).group_by(CLAIMS.c.controller)


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
        s.execute(insert(BLOCKS), rows)
        return
    s.execute(dialect_insert(BLOCKS).on_conflict_do_nothing(index_elements=["machine", "kind", "block"]), rows)


def ensure_blocks(s: Session, wanted: dict[tuple[str, str, int], int]) -> dict[tuple[str, str, int], int]:
    """A row for every (machine key, kind, block) of `wanted` (-> its unit count; a block that grew gets its new units
    free); returns their ids."""
    ids: dict[tuple[str, str, int], int] = {}
    units: dict[tuple[str, str, int], int] = {}
    machines = sorted({key for key, _, _ in wanted})

    def read() -> None:
        for chunk in _chunks(machines):
            for r in s.execute(select(BLOCKS.c.id, BLOCKS.c.machine, BLOCKS.c.kind, BLOCKS.c.block, BLOCKS.c.units)
                               .where(BLOCKS.c.machine.in_(chunk))):
                ids[(r.machine, r.kind, r.block)] = r.id
                units[(r.machine, r.kind, r.block)] = r.units

    read()
    missing = [dict(machine=m, kind=k, block=b, units=n, free=(1 << n) - 1) for (m, k, b), n in wanted.items()
               if (m, k, b) not in ids]
    if missing:
        _insert_ignoring_duplicates(s, missing)
        read()
    for key, n in wanted.items():
        if units.get(key, n) < n:  # the machine has more units than when its row was made
            old = units[key]
            s.execute(update(BLOCKS).where(BLOCKS.c.id == ids[key], BLOCKS.c.units == old).values(
                units=n, free=BLOCKS.c.free + (((1 << n) - 1) ^ ((1 << old) - 1))))
    return ids


def free_blocks(s: Session, kinds: Iterable[str]) -> list:
    """(id, machine, kind, block, free) of every block of `kinds` (gpu, cpu) with a free unit."""
    return s.execute(_FREE.where(BLOCKS.c.kind.in_(sorted(kinds)))).all()


def demand(s: Session) -> list[FleetDemandRow]:
    return list(s.scalars(select(FleetDemandRow)))


def claim_bits(s: Session, wanted: dict[int, int]) -> set[int]:
    """Clear `wanted` (block id -> bits) where every one of those bits is free; the block ids it got."""
    if not wanted:
        return set()
    got: set[int] = set()
    for chunk in _chunks(sorted(wanted)):
        bits = case({bid: wanted[bid] for bid in chunk}, value=BLOCKS.c.id)
        stmt = (update(BLOCKS).where(BLOCKS.c.id.in_(chunk), BLOCKS.c.free.op("&")(bits) == bits)
                .values(free=BLOCKS.c.free - bits).returning(BLOCKS.c.id))
        got.update(s.execute(stmt).scalars())
    return got


def undo_bits(s: Session, given: list[tuple[int, int]]) -> None:
    """Give back bits this transaction cleared ((block id, bits) pairs) and does not keep."""
    if given:
        s.execute(_UNDO, [dict(block_=b, bits_=bits) for b, bits in given])


def add_claims(s: Session, rows: list[dict]) -> list[int]:
    """Claim rows (block_id, bits, machine, units, controller, study_id, slot, claimed_at, lease_expires); their ids."""
    if not rows:
        return []
    return list(s.execute(insert(CLAIMS).returning(CLAIMS.c.id, sort_by_parameter_order=True), rows).scalars())


def give_back(s: Session, claims: list[tuple[int, int, int]], holder: str) -> int:
    """Free claims ((claim id, block id, bits)) of `holder`, if they are still its; how many claim rows went. The claim
    rows go first and only the bits of rows this statement deleted go back: a claim freed at the same moment by
    another controller's reaper is given back once (its DELETE waits for the first one's commit, then finds no row)."""
    if not claims:
        return 0
    gone = s.execute(delete(CLAIMS).where(CLAIMS.c.id.in_([c for c, _, _ in claims]), CLAIMS.c.controller == holder)
                     .returning(CLAIMS.c.block_id, CLAIMS.c.bits)).all()
    if gone:
        s.execute(_GIVE_BACK, [dict(block_=b, bits_=bits) for b, bits in sorted(gone)])  # id order, as claims lock
    return len(gone)


def take_over(s: Session, study_id: int, number: int, me: str, until: datetime) -> list[tuple[int, int, int]]:
    """The claims of trial `number` of the study, whoever held them, now `me`'s (a re-attached job)."""
    stmt = (update(CLAIMS).where(CLAIMS.c.study_id == study_id, CLAIMS.c.trial_number == number)
            .values(controller=me, lease_expires=until).returning(CLAIMS.c.id, CLAIMS.c.block_id, CLAIMS.c.bits))
    return [tuple(r) for r in s.execute(stmt).all()]


def renew(s: Session, me: str, study_id: int, until: datetime) -> int:
    """Extend every claim of `me` and its demand row; how many claim rows it still has."""
    count = s.execute(update(CLAIMS).where(CLAIMS.c.controller == me).values(lease_expires=until)).rowcount
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
    """Every controller holding claims, with its latest lease."""
    return [tuple(r) for r in s.execute(_HOLDERS).all()]


def claims_of(s: Session, holder: str | None = None) -> list:
    """Claim rows (of `holder`, or all): id, block_id, bits, machine, units, controller, study_id, trial_number, slot,
    claimed_at, lease_expires."""
    query = select(CLAIMS)
    if holder is not None:
        query = query.where(CLAIMS.c.controller == holder)
    return s.execute(query).all()


def trial_of(s: Session, study_id: int, number: int):
    """(trial row, study name) of a claim's trial, or None."""
    return s.execute(select(TrialRow, StudyRow.name).join(StudyRow, StudyRow.id == TrialRow.study_id).where(
        TrialRow.study_id == study_id, TrialRow.number == number)).first()


def held_by_holder(s: Session) -> list[tuple[int | None, str, int]]:
    """(study id, controller, units) of every holder now."""
    out: dict[tuple, int] = {}
    for r in s.execute(select(CLAIMS.c.study_id, CLAIMS.c.controller, CLAIMS.c.bits)):
        out[(r.study_id, r.controller)] = out.get((r.study_id, r.controller), 0) + bin(r.bits).count("1")
    return [(sid, holder, n) for (sid, holder), n in out.items()]


__all__ = ["ensure_blocks", "free_blocks", "demand", "claim_bits", "undo_bits", "add_claims", "give_back", "take_over",
           "renew", "write_demand", "drop_demand", "holders", "claims_of", "trial_of", "held_by_holder", "ASSIGN", "DEMAND_HELD", "DEMAND_RELEASED", "BLOCKS", "CLAIMS", "DEMAND"]
