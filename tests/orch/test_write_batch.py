"""The controller's write path (db/write_batch.py, db/new_rows.py) on SQLite and PostgreSQL: new rows get their ids
before they are written and never collide with rows other connections add between transactions; a batch's rows
that refer to a new row go out after it; an error in a batch (on PostgreSQL, read back at the end of its pipeline)
is SQLAlchemy's error for it and leaves nothing of the transaction behind."""

from __future__ import annotations

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from db import Database, EventRow, MetricPointRow, StudyRow, TrialRow
from db.new_rows import NewRows
from db.write_batch import WriteBatch

EVENTS = EventRow.__table__
INSERT_EVENT = insert(EVENTS).inline()


def _messages(db: Database) -> list[tuple[int, str]]:
    with db.session() as s:
        return [tuple(r) for r in s.execute(select(EventRow.id, EventRow.message).order_by(EventRow.id))]


def test_new_rows_take_ids_that_no_other_writer_takes(db_url):
    db, other = Database(db_url), Database(db_url)
    rows = NewRows(EVENTS, db.engine.dialect.name)
    handed = []
    with db.session() as s:
        batch = WriteBatch()
        handed += [rows.add(s.connection(), batch, dict(kind="t", message=f"first {i}")) for i in range(2)]
        assert s.scalars(select(EventRow.id)).all() == []  # not written yet: the rows wait in the batch, ids set
        batch.flush(s.connection())
    with other.session() as s:  # another writer between two transactions
        s.add(EventRow(kind="t", message="other"))
    with pytest.raises(RuntimeError), db.session() as s:
        rows.add(s.connection(), WriteBatch(), dict(kind="t", message="rolled back"))
        raise RuntimeError("the transaction fails before its batch is written")
    with db.session() as s:
        batch = WriteBatch()
        handed += [rows.add(s.connection(), batch, dict(kind="t", message=f"second {i}")) for i in range(2)]
        batch.flush(s.connection())
    stored = _messages(db)
    assert sorted(m for _, m in stored) == ["first 0", "first 1", "other", "second 0", "second 1"]
    ours = ["first 0", "first 1", "second 0", "second 1"]
    assert {m: i for i, m in stored if m != "other"} == dict(zip(ours, handed))
    assert len({i for i, _ in stored}) == 5


def test_a_new_row_goes_out_before_the_rows_that_refer_to_it(db_url):
    db = Database(db_url)
    points = insert(MetricPointRow.__table__).inline()
    trial_rows = NewRows(TrialRow.__table__, db.engine.dialect.name)
    with db.session() as s:
        study = StudyRow(name="s", optuna_study_name="s", spec={}, spec_yaml="", objective_metric="m",
                         direction="minimize")
        s.add(study)
        s.flush()
        trial = dict(study_id=study.id, number=0, round=1, variant="v", params={}, state="pending")
        old = trial_rows.add(s.connection(), None, trial)  # an earlier transaction's trial
    with db.session() as s:
        batch = WriteBatch()
        batch.add(points, dict(trial_id=old, kind="val", step=1))  # the points' group comes first in the batch ...
        new = trial_rows.add(s.connection(), batch, {**trial, "number": 1})
        batch.add(points, dict(trial_id=new, kind="val", step=1))  # ... and holds a point of the trial added after it
        batch.flush(s.connection())
    with db.session() as s:
        assert sorted(s.scalars(select(MetricPointRow.trial_id))) == sorted([old, new]) and old != new


def test_an_error_in_a_batch_is_sqlalchemy_s_and_rolls_the_transaction_back(db_url):
    db = Database(db_url)
    with pytest.raises(IntegrityError), db.session() as s:
        batch = WriteBatch()
        batch.add(INSERT_EVENT, dict(kind="t", message="before the error"))
        batch.add(insert(MetricPointRow.__table__).inline(), dict(trial_id=424242, kind="val", step=1))  # no such trial
        batch.add(INSERT_EVENT, dict(kind="t2", message="after the error"))
        batch.flush(s.connection())
    assert _messages(db) == []
    with db.session() as s:  # the connection is usable again
        s.add(EventRow(kind="t", message="next transaction"))
    assert [m for _, m in _messages(db)] == ["next transaction"]
