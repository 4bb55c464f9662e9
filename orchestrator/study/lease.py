"""One controller per study: a lease row in the database, renewed by the running controller.

A second `orch study run` on the same study refuses with a clear message while the lease is live. A
lease whose holder died (SIGKILL) is taken over at once when the holder ran on this host and its
process is gone, else when the lease expires.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta, timezone

from sqlalchemy import or_, update

from db import Database, StudyRow

from ..config.errors import OrchError
from ..procs import process_alive, process_start_time

LEASE_S = 60.0


class LeaseHeld(OrchError):
    pass


def controller_id() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{process_start_time(pid)}"


def _holder_dead(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    return not process_alive(int(pid_text), start)


def holder_gone(owner: str) -> bool:
    """Whether controller `owner` (host:pid:start, `controller_id`) ran on this host and its process is gone (a lease
    or a slot claim of it can be taken over before it expires)."""
    return _holder_dead(owner)


def holder(row: StudyRow, now: datetime | None = None) -> str | None:
    """The controller that holds study `row`'s lease now, or None: none took it, it expired, or its holder's
    process (on this host) is gone. What tells a running study from a stopped one."""
    now = now or datetime.now(timezone.utc)
    owner, expires = row.lease_owner, row.lease_expires
    if not owner or expires is None:
        return None
    if (expires if expires.tzinfo else expires.replace(tzinfo=timezone.utc)) < now or _holder_dead(owner):
        return None
    return owner


def acquire(db: Database, study_id: int, owner: str, now: datetime | None = None) -> None:
    now = now or datetime.now(timezone.utc)
    until = now + timedelta(seconds=LEASE_S)
    with db.session() as s:
        got = s.execute(update(StudyRow).where(StudyRow.id == study_id).where(or_(
            StudyRow.lease_owner.is_(None), StudyRow.lease_owner == owner, StudyRow.lease_expires < now,
        )).values(lease_owner=owner, lease_expires=until)).rowcount
        if got:
            return
        row = s.get(StudyRow, study_id)
        holder = row.lease_owner or ""
        if _holder_dead(holder):
            got = s.execute(update(StudyRow).where(StudyRow.id == study_id, StudyRow.lease_owner == holder)
                            .values(lease_owner=owner, lease_expires=until)).rowcount
            if got:
                return
        expires = row.lease_expires.isoformat(timespec="seconds") if row.lease_expires else "?"
    raise LeaseHeld(f"study {row.name!r} is being run by another controller ({holder}, lease until {expires}) "
                    "(fix: wait for it to finish, or stop it; a dead controller's lease expires by itself)")


def renew(db: Database, study_id: int, owner: str) -> bool:
    until = datetime.now(timezone.utc) + timedelta(seconds=LEASE_S)
    with db.session() as s:
        return bool(s.execute(update(StudyRow).where(StudyRow.id == study_id, StudyRow.lease_owner == owner)
                              .values(lease_expires=until)).rowcount)


def release(db: Database, study_id: int, owner: str) -> None:
    with db.session() as s:
        s.execute(update(StudyRow).where(StudyRow.id == study_id, StudyRow.lease_owner == owner)
                  .values(lease_owner=None, lease_expires=None))
