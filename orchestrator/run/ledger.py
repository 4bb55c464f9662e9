"""The trial ledger of one study run: every write the controller makes about its trials, and the counts it keeps.

- `unit()`: one transaction for our rows and the Optuna writes made inside it (nested calls join the open one);
  the writes of a kind go out as one executemany as it commits (`WriteBatch`).
- A trial's rows: `pending` (`add_pending`), `running` (`mark_running`), its end with Optuna's tell (`finish`),
  `invalid` values (`skip_invalid`), its state events, and its metric points (`flush_points`: the points streamed
  since the last flush, and the trial's curve in Optuna).
- The budget: trials that count against it and search trials queued, read once a run (under the study's lease no
  other controller writes the study's rows) and then kept as this run records and ends trials.
- Progress: done, failed and the best trial, read once and then tallied; the study's status and round counter.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Iterable

from optuna.trial import TrialState
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from db import Database, EventRow, MetricPointRow, StudyRow, TrialRow
from db.new_rows import NewRows
from db.write_batch import WriteBatch

from ..config.errors import OrchError
from ..records import variant_key
from ..study import trials
from ..study.lifecycle import OpenStudy, optuna_study_ids
from ..study.outcomes import curve_value, tell
from ..study.queue import is_search_trial, waiting_trials

if TYPE_CHECKING:
    from .controller import Progress, Running

# statements built once and bound per trial (SQLAlchemy caches their compiled form)
_TRIALS, _POINTS, _EVENTS = TrialRow.__table__, MetricPointRow.__table__, EventRow.__table__
_UPDATE_TRIAL_ROW = update(_TRIALS).where(_TRIALS.c.id == bindparam("id_")).values(
    gpu_model=func.coalesce(_TRIALS.c.gpu_model, bindparam("gpu_", type_=_TRIALS.c.gpu_model.type)))
_UPDATE_POINT = update(_POINTS).where(_POINTS.c.trial_id == bindparam("id_"), _POINTS.c.kind == bindparam("kind_"),
                                      _POINTS.c.step == bindparam("step_"))
_UPDATE_RUNNING = update(_TRIALS).where(_TRIALS.c.id == bindparam("id_"))
_INSERT_POINTS, _INSERT_EVENTS = insert(_POINTS).inline(), insert(_EVENTS).inline()  # no ids read back
_STUDIES = StudyRow.__table__
_UPDATE_ROUNDS = update(_STUDIES).where(_STUDIES.c.id == bindparam("id_"))
#: states that count against the budget (lost and invalid trials do not: they are re-run or skipped)
COUNTED_STATES = ("pending", "running", "complete", "failed")


def now() -> datetime:
    return datetime.now(timezone.utc)


class TrialLedger:
    def __init__(self, db: Database, study: OpenStudy, progress: "Progress",
                 release_slot: Callable[[object, WriteBatch, int], None]) -> None:
        self.db, self.study, self.spec, self.progress = db, study, study.spec, progress
        self.release_slot = release_slot  # a trial's slot claim ends in the transaction that records its end
        self.round: int | None = None  # the study's round counter, read once under the lease (`new_round`)
        self.writes = WriteBatch()  # the open transaction's writes (ours and Optuna's)
        self.row_states: dict[int, tuple[str, str]] = {}  # row id -> (state, machine) of the trials this run started
        self._session = None  # the open transaction of `unit`
        self._new_rows = NewRows(_TRIALS, db.engine.dialect.name)
        self._counted: int | None = None  # see budget_counts
        self._counted_here: set[int] = set()  # trial numbers this run recorded that count against the budget
        self._progress_read = False  # see refresh_progress
        self.optuna_gone = False  # the study was deleted from Optuna's tables while it ran: nothing more is written

    # ---- transactions ----------------------------------------------------------------------------------------
    @contextmanager
    def unit(self):
        """One transaction for our rows and the Optuna writes made inside it; nested calls join the open one."""
        if self._session is not None:
            yield self._session
            return
        with self.db.session() as s:
            self._session = s
            try:
                with trials.one_transaction(self.study.optuna, s.connection(), self.writes):
                    yield s
                self.writes.flush(s.connection())
            finally:
                self._session = None
                self.writes.clear()

    def trial_event(self, number: int, machine: str | None, old: str | None, new: str, message: str | None = None):
        """A trial's state change, written with the open transaction (one statement for all of them)."""
        assert self._session is not None, "trial events are written inside a unit()"
        self.writes.add(_INSERT_EVENTS, dict(at=now(), study_id=self.study.row.id, trial_number=number,
                                             machine=machine, kind="trial.state", old=old, new=new, message=message))

    def event(self, number: int | None, kind: str, old: str | None, new: str | None, message: str) -> None:
        with self.db.session() as s:
            s.add(EventRow(study_id=self.study.row.id, trial_number=number, kind=kind, old=old, new=new, message=message))

    def new_round(self) -> int:
        """The study's round counter + 1: read once under the lease (no other controller writes it), then kept."""
        with self.unit() as s:
            if self.round is None:
                self.round = s.scalar(select(StudyRow.rounds).where(StudyRow.id == self.study.row.id)) or 0
            self.round += 1
            self.writes.add(_UPDATE_ROUNDS, dict(id_=self.study.row.id, rounds=self.round))
        self.progress.round = self.round
        return self.round

    # ---- a trial's rows ----------------------------------------------------------------------------------------
    def add_pending(self, row: dict, search: bool) -> int:
        """The trial's `pending` row (in the open transaction); its id. A search trial counts against the budget."""
        if search:
            self._counted_here.add(row["number"])
            if self._counted is not None:
                self._counted += 1
        with self.unit() as s:
            return self._new_rows.add(s.connection(), self.writes, row)

    def mark_running(self, started: Iterable["Running"]) -> None:
        at = now()
        with self.unit():
            for run in started:
                self.writes.add(_UPDATE_RUNNING, dict(
                    id_=run.row_id, state="running", pid=run.handle.pid, pid_start=run.handle.pid_start,
                    started_at=at, heartbeat_at=at, command=run.handle.command,
                    container_image_id=run.handle.container_image_id, job_ref=run.handle.job_ref))
                self.trial_event(run.number, run.slot.machine, "pending", "running")
                self.row_states[run.row_id] = ("running", run.slot.machine)

    def skip_invalid(self, number: int, trial_id: int, params: dict, retry_of, attempt: int, repeat_index: int,
                     reason: str) -> None:
        """Values that cannot make a valid job: recorded as `invalid` (Optuna FAIL), nothing is started."""
        with self.unit() as s:
            s.add(TrialRow(study_id=self.study.row.id, number=number, optuna_trial_id=trial_id, round=self.round,
                           variant=variant_key(params), params=params, state="invalid", exit_reason="invalid_params",
                           note=reason, retry_of=retry_of, attempt=attempt, repeat_index=repeat_index))
            s.add(EventRow(study_id=self.study.row.id, trial_number=number, kind="trial.state", new="invalid",
                           message=reason))
            self.study.optuna.tell(number, state=TrialState.FAIL)

    def finish(self, row_id: int, number: int, trial_id: int, state: str, exit_reason: str, value, feasible,
               constraints: dict, metrics: dict, note: str | None, exit_code: int | None = None,
               versions: dict | None = None, gpu_name: str | None = None) -> None:
        """The trial's end: our row, its state event, its slot claim released and Optuna told (one transaction)."""
        with self.unit() as s:
            known = self.row_states.pop(row_id, None)
            old, machine = known or s.execute(select(TrialRow.state, TrialRow.machine).where(TrialRow.id == row_id)).one()
            change = dict(id_=row_id, gpu_=gpu_name, state=state, exit_reason=exit_reason, value=value,
                          feasible=feasible, metrics=metrics or None, note=note, exit_code=exit_code, ended_at=now())
            if versions:
                change["versions"] = versions
            self.writes.add(_UPDATE_TRIAL_ROW, change)
            self.release_slot(s, self.writes, number)
            if state not in COUNTED_STATES and number in self._counted_here:
                self._counted_here.discard(number)
                if self._counted is not None:
                    self._counted -= 1
            self.trial_event(number, machine, old, state, note)
            tell(self.study.optuna, trial_id, number, state, value, constraints, machine=machine,
                 exit_reason=exit_reason, metrics=metrics)
        self._tally(state, value, feasible, number)

    def adopt(self, s, row: TrialRow, owner: str, job_ref: str | None, search: bool) -> set[tuple[str, int]]:
        """A re-attached job's row names this controller (in the open transaction `s`); the points it has stored."""
        live = s.get(TrialRow, row.id)
        old = live.state
        at = now()
        live.state, live.controller, live.heartbeat_at = "running", owner, at
        live.job_ref = job_ref or live.job_ref
        live.started_at = live.started_at or at
        ref = f" {job_ref}" if job_ref else ""
        s.add(EventRow(study_id=self.study.row.id, trial_number=row.number, machine=row.machine,
                       kind="trial.reattached", old=old, new="running",
                       message=f"re-attached to its job{ref} after a controller restart"))
        self.row_states[row.id] = ("running", row.machine)
        if search:
            self._counted_here.add(row.number)  # a lost end takes it off the budget count, as for our own
        return set(s.execute(select(MetricPointRow.kind, MetricPointRow.step).where(
            MetricPointRow.trial_id == row.id)).all())

    def heartbeat(self, row_ids: list[int]) -> None:
        if row_ids:
            with self.db.session() as s:
                s.execute(update(TrialRow).where(TrialRow.id.in_(row_ids)).values(heartbeat_at=now()))

    # ---- metric points -----------------------------------------------------------------------------------------
    def flush_points(self, running: Iterable["Running"]) -> None:
        """Write the points streamed since the last flush; a point seen again (a human line's JSON twin)
        replaces the stored one. The objective's points also go to Optuna (what optuna-dashboard plots)."""
        inserts, updates = [], []
        curves: dict[int, list[tuple[int, float]]] = {}  # Optuna trial id -> its new (step, value) points
        for run in running:
            latest = {(p.kind, p.step): p for p in run.pending_points}
            for key, p in latest.items():
                point_value = curve_value(self.spec, p)
                if point_value is not None:
                    curves.setdefault(run.trial_id, []).append((p.step, point_value))
                values = dict(total_steps=p.total_steps, val_loss=p.val_loss, train_loss=p.train_loss,
                              train_time_ms=p.train_time_ms, step_avg_ms=p.step_avg_ms, extra=p.extra or None)
                if key in run.stored_points:
                    updates.append(dict(id_=run.row_id, kind_=p.kind, step_=p.step, **values))
                else:
                    run.stored_points.add(key)
                    inserts.append(dict(trial_id=run.row_id, kind=p.kind, step=p.step, recorded_at=now(), **values))
            run.pending_points.clear()
        with self.unit():
            self.writes.extend(_INSERT_POINTS, inserts)
            self.writes.extend(_UPDATE_POINT, updates)
            for trial_id, points in curves.items():
                trials.record_curve(self.study.optuna, trial_id, points)

    # ---- the budget --------------------------------------------------------------------------------------------
    def budget_counts(self) -> tuple[int, int]:
        """(trials that count against the budget, search trials queued); extra runs (a `batch`) count in neither.
        Both are read once a run, after recovery: under the study's lease no other controller writes the study's
        rows meanwhile, so this one keeps the count as it records search trials (`add_pending`) and ends them
        uncounted (`finish`: lost)."""
        if self._counted is None:
            extra = [t.number for t in self.study.optuna.get_trials(deepcopy=False) if not is_search_trial(t)]
            with self.unit() as s:
                self._counted = s.scalar(select(func.count()).select_from(TrialRow).where(
                    TrialRow.study_id == self.study.row.id, TrialRow.state.in_(COUNTED_STATES),
                    TrialRow.number.not_in(extra)))
        waiting = sum(1 for t in waiting_trials(self.study.optuna) if is_search_trial(t))
        return self._counted, waiting

    # ---- progress and status -----------------------------------------------------------------------------------
    def refresh_progress(self) -> None:
        """Counts and best trial are read from the database once; after that `finish` tallies them as this
        controller (the study's only writer, under its lease) ends trials: no O(trials) read per event."""
        if self._progress_read:
            return
        p = self.progress
        with self.db.session() as s:
            rows = s.execute(select(TrialRow.state, TrialRow.value, TrialRow.feasible, TrialRow.number).where(
                TrialRow.study_id == self.study.row.id)).all()
        p.done = sum(1 for r in rows if r.state == "complete")
        p.failed = sum(1 for r in rows if r.state == "failed")
        for r in rows:
            self._tally_best(r.state, r.value, r.feasible, r.number)
        self._progress_read = True

    def _tally(self, state: str, value, feasible, number: int) -> None:
        if self._progress_read:
            self.progress.done += state == "complete"
            self.progress.failed += state == "failed"
            self._tally_best(state, value, feasible, number)

    def _tally_best(self, state: str, value, feasible, number: int) -> None:
        p = self.progress
        if state != "complete" or feasible is False or value is None:
            return
        if (p.best_value is None or (value < p.best_value if self.spec.objective.direction == "minimize"
                                     else value > p.best_value) or (value == p.best_value and number < p.best_number)):
            p.best_value, p.best_number = value, number

    def set_status(self, status: str) -> None:
        with self.db.session() as s:
            row = s.get(StudyRow, self.study.row.id)
            if row.status != status:
                s.add(EventRow(study_id=row.id, kind="study.state", old=row.status, new=status))
                row.status = status
                row.finished_at = now() if status == "finished" else None

    def deleted_in_optuna(self) -> bool:
        """The study's Optuna half was deleted (optuna-dashboard, `optuna delete-study`) while this ran."""
        if not self.optuna_gone:
            try:
                with self.db.session() as s:
                    self.optuna_gone = not optuna_study_ids(s, [self.study.row.optuna_study_name])
            except SQLAlchemyError:  # the database itself is why the run stops: that error is the one to report
                return False
        return self.optuna_gone

    def optuna_deleted_error(self, name: str) -> OrchError:
        return OrchError(f"study {name!r} was deleted from Optuna's tables while it ran (optuna-dashboard or "
                         "`optuna delete-study`): its jobs are stopped and nothing more is recorded (fix: `orch study "
                         f"delete {name} --yes` removes what orch kept of it; create it again to start over)")
