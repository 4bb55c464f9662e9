"""The storage a leased controller runs its study through (orchestrator/study/leased_storage.py): what it writes is what
Optuna's own RDBStorage writes (read back by plain Optuna from another connection), its reads cost no SQL, and a
transaction it joins commits or rolls back Optuna's rows together with ours. On SQLite and PostgreSQL."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from sqlalchemy import event, select

from db import Database, EventRow
from db.write_batch import WriteBatch
from orchestrator.study.lifecycle import optuna_storage
from orchestrator.study.leased_storage import LeasedStorage

DISTS = {"a": FloatDistribution(0.0, 1.0), "n": IntDistribution(1, 9), "c": CategoricalDistribution(["x", "y"])}


def _script(study: optuna.Study) -> None:
    """The same writes, whatever the storage: asks, a queue, attrs, intermediate values, every way a trial ends."""
    study.enqueue_trial({"a": 0.25, "n": 3, "c": "y"}, user_attrs={"kind": "baseline"})
    trials = [study.ask(DISTS) for _ in range(5)]
    trials[0].set_user_attr("note", {"nested": [1, 2]})
    trials[0].set_user_attr("note", "replaced")
    trials[1].storage.set_trial_system_attr(trials[1]._trial_id, "constraints", [0.5])
    trials[1].report(1.5, step=10)
    trials[1].report(float("inf"), step=20)
    study.tell(trials[0], 1.0)
    study.tell(trials[1], float("inf"))
    study.tell(trials[2], state=TrialState.FAIL)
    study.tell(trials[3], state=TrialState.PRUNED)
    study.enqueue_trial({"a": 0.75, "n": 5, "c": "x"})


def _view(trial: optuna.trial.FrozenTrial) -> tuple:
    return (trial.number, trial.state, trial.values, trial.params, trial.distributions, trial.user_attrs,
            trial.system_attrs, trial.intermediate_values, trial.datetime_start is None,
            trial.datetime_complete is None)


def _leased(db: Database, name: str) -> optuna.Study:
    backend = optuna_storage(db)._backend
    storage = LeasedStorage(backend, backend.get_study_id_from_name(name), db.engine)
    return optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(7))


def test_it_writes_what_optuna_writes(db_url):
    db = Database(db_url)
    plain = optuna.create_study(study_name="plain", storage=optuna_storage(db), sampler=optuna.samplers.RandomSampler(7))
    optuna.create_study(study_name="leased", storage=optuna_storage(db))
    _script(plain)
    leased = _leased(db, "leased")
    _script(leased)
    fresh = optuna_storage(Database(db_url))  # another connection, Optuna's own reader
    expected = [_view(t) for t in optuna.load_study(study_name="plain", storage=fresh).get_trials(deepcopy=False)]
    got = [_view(t) for t in optuna.load_study(study_name="leased", storage=fresh).get_trials(deepcopy=False)]
    assert got == expected
    assert [_view(t) for t in leased.get_trials(deepcopy=False)] == expected  # its memory agrees with the rows
    assert got[0][3] == {"a": 0.25, "n": 3, "c": "y"} and got[0][5] == {"kind": "baseline", "note": "replaced"}
    assert math.isinf(got[1][2][0]) and got[1][7] == {10: 1.5, 20: math.inf}
    assert [g[1] for g in got] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED,
                                   TrialState.RUNNING, TrialState.WAITING]


def _claim_then_create(study: optuna.Study) -> None:
    """A queued trial is claimed (its params are written) before a new trial is created: in one batch, the new
    trial's row must still go out before its params."""
    study.tell(study.ask(DISTS), 3.0)
    study.ask(DISTS)


def test_in_the_controller_s_transactions_it_writes_what_optuna_writes(db_url):
    db = Database(db_url)
    plain = optuna.create_study(study_name="plain", storage=optuna_storage(db),
                                sampler=optuna.samplers.RandomSampler(7))
    optuna.create_study(study_name="leased", storage=optuna_storage(db))
    leased = _leased(db, "leased")
    for step in (_script, _claim_then_create):
        step(plain)
        statements = []
        listener = lambda *args: statements.append(args[2])  # noqa: E731
        with db.session() as s, leased._storage.bind(s.connection(), batch := WriteBatch()):
            event.listen(db.engine, "before_cursor_execute", listener)
            try:
                step(leased)
            finally:
                event.remove(db.engine, "before_cursor_execute", listener)
            batch.flush(s.connection())
        # nothing was written before the batch but a read of the next free trial ids (no INSERT per new trial)
        assert len(statements) <= 1 and all("nextval" in st or "max(" in st for st in statements), statements
    fresh = optuna_storage(Database(db_url))
    expected = [_view(t) for t in optuna.load_study(study_name="plain", storage=fresh).get_trials(deepcopy=False)]
    got = [_view(t) for t in optuna.load_study(study_name="leased", storage=fresh).get_trials(deepcopy=False)]
    assert got == expected and len(got) == 7
    assert [_view(t) for t in leased.get_trials(deepcopy=False)] == expected
    ids = [t._trial_id for t in leased.get_trials(deepcopy=False)]
    assert len(set(ids)) == len(ids) and ids == [t._trial_id for t in optuna.load_study(
        study_name="leased", storage=fresh).get_trials(deepcopy=False)]


def test_reads_cost_no_sql_and_a_claimed_trial_cannot_be_claimed_again(sqlite_url):
    db = Database(sqlite_url)
    optuna.create_study(study_name="s", storage=optuna_storage(db))
    study = _leased(db, "s")
    _script(study)
    statements = []
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(db.engine, "before_cursor_execute", listener)
    try:
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        study.get_trials()
        study._storage.get_trial(waiting[0]._trial_id)
        study.best_trial
    finally:
        event.remove(db.engine, "before_cursor_execute", listener)
    assert statements == []
    assert [t.params for t in waiting] == [{}]  # queued: its values are still in `fixed_params`
    assert study._storage.set_trial_state_values(waiting[0]._trial_id, TrialState.RUNNING) is True
    assert study._storage.set_trial_state_values(waiting[0]._trial_id, TrialState.RUNNING) is False
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        study._storage.set_trial_user_attr(study.get_trials(deepcopy=False)[1]._trial_id, "late", 1)


def test_a_joined_transaction_commits_or_rolls_back_both_halves(db_url):
    db = Database(db_url)
    optuna.create_study(study_name="s", storage=optuna_storage(db))
    study = _leased(db, "s")
    batch = WriteBatch()
    with db.session() as s:
        with study._storage.bind(s.connection(), batch):
            trial = study.ask(DISTS)
            s.add(EventRow(kind="test", message="committed with the trial"))
        assert len(batch) == 4  # the trial's row (its id handed out first: db/new_rows.py) and its params wait
        batch.flush(s.connection())
    with pytest.raises(RuntimeError):
        with db.session() as s, study._storage.bind(s.connection(), batch):
            study.tell(trial, 2.0)
            s.add(EventRow(kind="test", message="rolled back with the tell"))
            batch.flush(s.connection())
            s.flush()
            raise RuntimeError("the controller fails mid-transaction")
    reader = optuna.load_study(study_name="s", storage=optuna_storage(Database(db_url)))
    (stored,) = reader.get_trials(deepcopy=False)
    assert stored.state == TrialState.RUNNING and stored.params == trial.params and stored.values is None
    with db.session() as s:
        assert s.scalars(select(EventRow.message).where(EventRow.kind == "test")).all() == ["committed with the trial"]
    study._storage.reload()  # what a controller does on its next start: memory follows the database again
    assert study.get_trials(deepcopy=False)[0].state == TrialState.RUNNING
