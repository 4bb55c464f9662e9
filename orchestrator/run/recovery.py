"""Reconcile a study after its controller died: run at the start of every `orch study run`.

| found | meaning | action |
| --- | --- | --- |
| Optuna trial RUNNING, no row of ours | asked, never dispatched | row `lost`, Optuna FAIL, retry queued |
| row `pending` or `running`, its launcher re-attaches to the job (`Launcher.reattach`: a Slurm job outlives its controller) | the job runs on, or ended while no controller watched | kept `running`: this controller follows it (its log from the start, then its exit) |
| row `pending` | never started | `lost`, Optuna FAIL, retry queued |
| row `running` | its job died with the controller (PR_SET_PDEATHSIG; the launcher killed what was left of it) | if the log has a final line, the outcome is recorded from it; else `lost` and a retry is queued |
| row finished, Optuna RUNNING | died between our commit and Optuna's tell | tell Optuna now |
| row `lost` with no retry | died between marking and queueing | queue the retry |
| row `failed`, study says `on_failure: retry`, no retry | the same | queue the retry |

A retry is a new trial with the same parameters whose row says `retry_of` and `attempt` (`study.queue.enqueue_retry`):
nothing runs twice without being recorded as a retry.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState
from sqlalchemy import select

from db import Database, EventRow, MetricPointRow, TrialRow

from ..config.study import StudySpec
from ..records import variant_key
from ..study.outcomes import curve_value, decide, failure_constraints, failure_policy, tell
from ..parsers import LogAdapter
from ..study.lifecycle import OpenStudy
from ..study.queue import enqueue_retry
from ..study import trials


def _now() -> datetime:
    return datetime.now(timezone.utc)


#: asks the trial's launcher for its job (`Launcher.reattach`): a handle the caller now follows, or None
Reattach = Callable[[TrialRow], object | None]


def _parse_log(adapter: LogAdapter, path: str | None):
    if not path or not Path(path).is_file():
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        return adapter.parse_lines(f)


def recover(db: Database, opened: OpenStudy, spec: StudySpec, adapter: LogAdapter,
            report: Callable[[str], None] = lambda m: None, reattach: Reattach | None = None) -> int:
    """Reconcile; returns how many trials were touched. `reattach(row)` is asked first for every `pending` or
    `running` row: a job it returns is the caller's to follow (the row is left as it is)."""
    study, sid = opened.optuna, opened.row.id
    frozen_by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    touched = 0
    with db.session() as s:
        rows = {r.number: r for r in s.scalars(select(TrialRow).where(TrialRow.study_id == sid))}
    for number, frozen in sorted(frozen_by_number.items()):
        if number in rows or frozen.state != TrialState.RUNNING:
            continue
        with db.session() as s:
            row = TrialRow(study_id=sid, number=number, optuna_trial_id=trials.trial_id(frozen), round=0,
                           variant=variant_key(frozen.params), params=dict(frozen.params), state="lost",
                           exit_reason="never_started", retry_of=frozen.user_attrs.get("retry_of"),
                           attempt=int(frozen.user_attrs.get("attempt", 1)),
                           repeat_index=int(frozen.user_attrs.get("repeat_index", 0)),
                           note="asked by a controller that died before dispatching it", ended_at=_now())
            s.add(row)
            s.add(EventRow(study_id=sid, trial_number=number, kind="trial.state", new="lost", message=row.note))
        rows[number] = row
        tell(study, trials.trial_id(frozen), number, "failed", None, {})
        enqueue_retry(study, row, spec.retries, spec)
        report(f"recovery: trial {number} was asked but never started; re-queued")
        touched += 1
    for number, row in sorted(rows.items()):
        frozen = frozen_by_number.get(number)
        if row.state in ("pending", "running"):
            touched += 1
            if reattach is not None and reattach(row) is not None:
                report(f"recovery: trial {number}'s job is still there (its launcher re-attached to it): followed, "
                       "not run again")
                continue
            _recover_unfinished(db, study, spec, adapter, row, report)
        elif frozen is not None and frozen.state == TrialState.RUNNING:
            touched += 1
            tell(study, row.optuna_trial_id, number, row.state, row.value,
                 _constraints_of(spec, row) if row.state == "complete"
                 else failure_constraints(spec) if row.feasible is False else {},
                 machine=row.machine, exit_reason=row.exit_reason, metrics=row.metrics)
            report(f"recovery: told Optuna the recorded outcome of trial {number}")
        if row.state == "lost" or (row.state == "failed" and failure_policy(spec, row.exit_reason) == "retry"):
            if enqueue_retry(study, row, spec.retries, spec):
                touched += 1
                report(f"recovery: re-queued lost trial {number}")
    return touched


def _constraints_of(spec: StudySpec, row: TrialRow) -> dict[str, float]:
    metrics = row.metrics or {}
    return {c.metric: c.violation(metrics[c.metric]) if c.metric in metrics else float("inf")
            for c in spec.objective.constraints}


def _recover_unfinished(db: Database, study: optuna.Study, spec: StudySpec, adapter: LogAdapter, row: TrialRow,
                        report: Callable[[str], None]) -> None:
    parsed = _parse_log(adapter, row.log_path) if row.state == "running" else None
    outcome = decide(spec, parsed, None) if parsed is not None and parsed.complete else None
    with db.session() as s:
        live = s.get(TrialRow, row.id)
        old = live.state
        if outcome is not None:
            live.state, live.exit_reason, live.value, live.feasible = outcome.state, outcome.exit_reason, outcome.value, outcome.feasible
            live.metrics, live.versions = outcome.metrics or None, parsed.versions or live.versions
            live.note = "outcome recovered from the log after a controller restart"
            _store_missing_points(s, live.id, parsed.points)
        else:
            live.state, live.exit_reason = "lost", "controller_died" if old == "running" else "never_started"
            live.note = ("the job ended with its controller before finishing" if old == "running"
                         else "recorded but never started: the controller died first")
        live.ended_at = _now()
        s.add(EventRow(study_id=live.study_id, trial_number=live.number, machine=live.machine, kind="trial.state",
                       old=old, new=live.state, message=live.note))
        state, value, trial_id, number = live.state, live.value, live.optuna_trial_id, live.number
        machine = live.machine
    if outcome is not None:
        unfinished = not trials.stored_trial(study, trial_id).state.is_finished()  # else Optuna has it all already
        curve = [(point.step, curve_value(spec, point)) for point in (parsed.points if unfinished else [])]
        trials.record_curve(study, trial_id, [(step, v) for step, v in curve if v is not None])  # as written live
        tell(study, trial_id, number, state, value, outcome.constraints, machine=machine,
             exit_reason=outcome.exit_reason, metrics=outcome.metrics)
        report(f"recovery: trial {number} had finished; outcome taken from its log")
        if outcome.retry:
            with db.session() as s:
                live = s.get(TrialRow, row.id)
            enqueue_retry(study, live, spec.retries, spec)
    else:
        tell(study, trial_id, number, "failed", None, {})
        with db.session() as s:
            live = s.get(TrialRow, row.id)
        queued = enqueue_retry(study, live, spec.retries, spec)
        report(f"recovery: trial {number} was lost ({old}); " + ("re-queued" if queued else "retries spent"))


def _store_missing_points(s, trial_id: int, points) -> None:
    have = set(s.execute(select(MetricPointRow.kind, MetricPointRow.step).where(MetricPointRow.trial_id == trial_id)).all())
    for p in points:
        if (p.kind, p.step) in have:
            continue
        have.add((p.kind, p.step))
        s.add(MetricPointRow(trial_id=trial_id, kind=p.kind, step=p.step, total_steps=p.total_steps, val_loss=p.val_loss,
                             train_loss=p.train_loss, train_time_ms=p.train_time_ms, step_avg_ms=p.step_avg_ms,
                             extra=p.extra or None))
