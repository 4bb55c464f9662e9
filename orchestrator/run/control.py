"""Requests to a study's controller from any process (`orch study stop`, `orch trial cancel`), through the database.

A command writes a row in `orch_requests`; the controller holding the study's lease (any process, any host)
reads the open ones at most `READ_S` after they commit, acts, and closes each with what it did. A command that
wants to know the result waits for that (`wait_done`).

What the controller does:
- stop, mode `finish`: no new trial starts; the running ones finish and are recorded; then the run ends
  (exit 0) and the study is `stopped` (`finished` if that spent the budget).
- stop, mode `now`: the running trials are killed and recorded `lost` (re-queued: the next `orch study run`
  runs them again, as after Ctrl-C); the run ends (exit 0) and the study is `stopped`.
- cancel trial N: a running trial's job is killed and the trial recorded `cancelled` (Optuna FAIL with exit
  reason `cancelled`): not a failed outcome, not counted against the budget, not re-run. A queued trial (a
  repeat, a retry, an extra run not started yet) is taken off the queue the same way.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db import Database, RequestRow

READ_S = 0.5  # a controller reads open requests at most this long after they commit


class StopRequested(Exception):
    """A stop request (or a signal) ended the controller's run: raised by `Controller.run`."""


STOP_MODES = ("finish", "now")


@dataclass
class Request:
    id: int
    kind: str
    trial_number: int | None
    mode: str | None
    reason: str | None
    requested_by: str | None


def _by() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def ask(db: Database, study_id: int, kind: str, *, trial_number: int | None = None, mode: str | None = None,
        reason: str | None = None) -> int:
    """Record a request; its id."""
    with db.session() as s:
        row = RequestRow(study_id=study_id, kind=kind, trial_number=trial_number, mode=mode, reason=reason,
                         requested_by=_by())
        s.add(row)
        s.flush()
        return row.id


def open_requests(db: Database, study_id: int) -> list[Request]:
    with db.session() as s:
        rows = s.scalars(select(RequestRow).where(RequestRow.study_id == study_id, RequestRow.done_at.is_(None))
                         .order_by(RequestRow.id)).all()
        return [Request(r.id, r.kind, r.trial_number, r.mode, r.reason, r.requested_by) for r in rows]


def close(session: Session, request_ids: list[int], outcome: str) -> None:
    """Close requests in `session`'s transaction (a controller closes a cancel with the trial's own row)."""
    if request_ids:
        session.execute(update(RequestRow).where(RequestRow.id.in_(request_ids), RequestRow.done_at.is_(None))
                        .values(done_at=datetime.now(timezone.utc), outcome=outcome))


def wait_done(db: Database, request_id: int, timeout_s: float, poll_s: float = 0.2) -> str | None:
    """The outcome once the controller has closed the request; None if it has not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        with db.session() as s:
            row = s.get(RequestRow, request_id)
            if row.done_at is not None:
                return row.outcome or ""
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll_s)  # polling the database: the controller may be another process on another host


__all__ = ["READ_S", "STOP_MODES", "Request", "ask", "open_requests", "close", "wait_done"]
