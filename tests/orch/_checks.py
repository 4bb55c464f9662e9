"""Assertions shared by the controller tests: our rows against Optuna's trials."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState
from sqlalchemy import select

from db import Database, StudyRow, TrialRow

OPTUNA_STATE = {"complete": TrialState.COMPLETE, "failed": TrialState.FAIL, "lost": TrialState.FAIL,
                "invalid": TrialState.FAIL, "cancelled": TrialState.FAIL, "running": TrialState.RUNNING,
                "pending": TrialState.RUNNING}


def rows_of(db: Database, name: str) -> list[TrialRow]:
    with db.session() as s:
        study = s.scalar(select(StudyRow).where(StudyRow.name == name))
        return list(s.scalars(select(TrialRow).where(TrialRow.study_id == study.id).order_by(TrialRow.number)))


def assert_agrees_with_optuna(db: Database, name: str) -> list[TrialRow]:
    """Every row of ours has its Optuna trial in the matching state with the same value, and every Optuna
    trial that ever ran has a row of ours."""
    rows = rows_of(db, name)
    study = optuna.load_study(study_name=name, storage=db.url)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for row in rows:
        trial = trials[row.number]
        # a failure the study counts as infeasible (on_failure) is a complete Optuna trial violating its constraints
        told_infeasible = row.state == "failed" and row.feasible is False
        expected = TrialState.COMPLETE if told_infeasible else OPTUNA_STATE[row.state]
        assert trial.state == expected, (row.number, row.state, trial.state)
        if told_infeasible:
            assert trial.constraints and all(v > 0 for v in trial.constraints.values()), (row.number, trial.constraints)
        if row.state == "complete":
            assert trial.value == row.value
            for key, violation in trial.constraints.items():
                assert (violation <= 0) == bool(row.feasible)
    started = {n for n, t in trials.items() if t.state != TrialState.WAITING}
    assert started == {r.number for r in rows}
    return rows
