"""The Optuna storage the studies open (orchestrator/study/lifecycle.py): Optuna's cache, with the WAITING trials read by one
filtered query. On SQLite and PostgreSQL."""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from sqlalchemy import event

from db import Database
from orchestrator.study.lifecycle import optuna_storage

DISTS = {"a": FloatDistribution(0.0, 1.0)}


def test_a_trial_queued_by_another_process_is_popped_with_its_values(db_url):
    db = Database(db_url)
    mine = optuna.create_study(study_name="s", storage=optuna_storage(db), sampler=optuna.samplers.RandomSampler(0))
    other = optuna.load_study(study_name="s", storage=optuna_storage(db))  # its own cache, as another process has
    running = [mine.ask(DISTS) for _ in range(5)]
    other.enqueue_trial({"a": 0.25})
    popped = mine.ask(DISTS)
    assert popped.params == {"a": 0.25}
    mine.tell(popped, 1.0)
    for trial in running:
        mine.tell(trial, 2.0)
    states = {t.number: t.state for t in mine.get_trials(deepcopy=False)}
    assert states == {t.number: t.state for t in other.get_trials(deepcopy=False)}
    assert list(states.values()) == [TrialState.COMPLETE] * 6
    assert mine.get_trials(deepcopy=False, states=(TrialState.WAITING,)) == []


def test_reading_the_queue_does_not_read_the_running_trials(sqlite_url):
    db = Database(sqlite_url)
    study = optuna.create_study(study_name="s", storage=optuna_storage(db), sampler=optuna.samplers.RandomSampler(0))
    for _ in range(30):
        study.ask(DISTS)
    study.get_trials(deepcopy=False)  # the cache now knows them all; they are unfinished
    statements = []
    engine = study._storage._backend.engine
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        assert study.get_trials(deepcopy=False, states=(TrialState.WAITING,)) == []
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert len(statements) <= 3 and not any("trial_params" in s for s in statements), statements
