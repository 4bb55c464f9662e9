"""The Optuna storage a controller runs its study through while it holds the study's lease.

Under the lease (`lease.py`) the controller is the only writer of its study's trials, so it can keep them in
memory: every read (the sampler's, `ask`, `tell`, the queue) is answered from here, with no SQL. Every write goes
to Optuna's own tables at once, in Optuna's format (readers elsewhere, `orch export`, recovery and Optuna itself,
see the same rows an `RDBStorage` would have written), through the transaction the controller has open
(`bind`), so one commit carries a batch of trials' Optuna writes and our rows together: a finished trial's row
and its `tell`, or a new trial and its `pending` row, land atomically. Inside it, every write waits in the
transaction's `WriteBatch` and goes out with the others of its kind as one executemany; a new trial's id is
handed out before its row is written (`db.new_rows`). Without a bound transaction each write commits on its own.

Other studies and study-level writes go to the wrapped `RDBStorage`. A write that fails leaves memory ahead of
the database; the controller stops then, and the next run loads the study again.
"""

from __future__ import annotations

import copy
import json
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Iterator, Sequence

from optuna.distributions import BaseDistribution, FloatDistribution, distribution_to_json
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._rdb import models
from optuna.study._frozen import FrozenStudy
from optuna.study._study_direction import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import bindparam, insert, update
from sqlalchemy.engine import Connection, Engine

from db.new_rows import NewRows
from db.write_batch import WriteBatch

_TRIALS = models.TrialModel.__table__
_PARAMS = models.TrialParamModel.__table__
_VALUES = models.TrialValueModel.__table__
_INTERMEDIATE = models.TrialIntermediateValueModel.__table__
_ATTR_TABLES = {"user": models.TrialUserAttributeModel.__table__, "system": models.TrialSystemAttributeModel.__table__}
# built once: SQLAlchemy compiles and caches a statement object, so each write only binds its parameters;
# inline: nothing reads a new row's id back (a batch returns no rows)
_INSERT = {name: insert(table).inline() for name, table in (("param", _PARAMS), ("value", _VALUES),
                                                   ("intermediate", _INTERMEDIATE), ("user", _ATTR_TABLES["user"]),
                                                   ("system", _ATTR_TABLES["system"]))}
_UPDATE_TRIAL = update(_TRIALS).where(_TRIALS.c.trial_id == bindparam("id_"))
_UPDATE_INTERMEDIATE = update(_INTERMEDIATE).where(_INTERMEDIATE.c.trial_id == bindparam("id_"),
                                                   _INTERMEDIATE.c.step == bindparam("step_"))
_UPDATE_ATTR = {which: update(table).where(table.c.trial_id == bindparam("id_"), table.c.key == bindparam("key_"))
                for which, table in _ATTR_TABLES.items()}


def _decimals(x: float) -> int:
    return max(0, -int(Decimal(repr(float(x))).normalize().as_tuple().exponent))


def on_step(value: Any, distribution: BaseDistribution | None) -> Any:
    """A stepped float parameter's value with the digits of its step and low (0.42, not the 0.42000000000000004
    that a sampler's low + k * step gives): what the database, the dashboard and the job see."""
    if not isinstance(distribution, FloatDistribution) or distribution.step is None or not isinstance(value, float):
        return value
    return round(value, max(_decimals(distribution.step), _decimals(distribution.low)))


def _stored_time(value: datetime | None) -> datetime | None:
    """Optuna's RDB columns hold naive UTC; its FrozenTrials carry naive local time."""
    return None if value is None else value.astimezone(timezone.utc).replace(tzinfo=None)


def _copy(trial: FrozenTrial) -> FrozenTrial:
    """A copy the caller may change (Optuna's `Trial` fills its copy's dicts in place); values inside are immutable
    here (numbers, strings, distributions) except JSON attrs, which are copied deeply."""
    out = copy.copy(trial)
    out.params, out.distributions = dict(trial.params), dict(trial.distributions)
    out.user_attrs, out.system_attrs = copy.deepcopy(trial.user_attrs), copy.deepcopy(trial.system_attrs)
    out.intermediate_values = dict(trial.intermediate_values)
    if trial.values is not None:
        out.values = list(trial.values)
    return out


class LeasedStorage(BaseStorage):
    def __init__(self, backend: RDBStorage, study_id: int, engine: Engine) -> None:
        self._backend, self._study_id, self._engine = backend, study_id, engine
        self._lock = threading.RLock()
        self._conn: Connection | None = None
        self._batch: WriteBatch | None = None
        self._new_trials = NewRows(_TRIALS, engine.dialect.name)
        self._directions = backend.get_study_directions(study_id)
        self.reload()

    def reload(self) -> None:
        """Read the study's trials again (once the lease is held: nobody else writes them after that)."""
        with self._lock:
            self._trials: list[FrozenTrial] = sorted(self._backend.get_all_trials(self._study_id, deepcopy=False),
                                                     key=lambda t: t.number)
            self._by_id = {t._trial_id: t for t in self._trials}
            self._unfinished: dict[TrialState, dict[int, FrozenTrial]] = {}  # by state: the queue, the trials running
            for t in self._trials:
                if not t.state.is_finished():
                    self._unfinished.setdefault(t.state, {})[t._trial_id] = t

    # ---- the controller's transaction -------------------------------------------------------------------
    @contextmanager
    def bind(self, conn: Connection, batch: WriteBatch) -> Iterator[None]:
        """Trial writes made inside go through `conn`, all but new trials' rows gathered in `batch` (the caller
        flushes the batch and commits)."""
        with self._lock:
            self._conn, self._batch = conn, batch
            try:
                yield
            finally:
                self._conn = self._batch = None

    def _execute(self, *writes: tuple[Any, dict]) -> None:
        """Queue (statement, parameters) pairs in the bound transaction's batch, else run them in one of their own."""
        if self._batch is not None:
            for statement, params in writes:
                self._batch.add(statement, params)
            return
        with self._engine.begin() as conn:
            for statement, params in writes:
                conn.execute(statement, params)

    def _insert_trial(self, params: dict) -> int:
        if self._conn is not None:
            return self._new_trials.add(self._conn, self._batch, params)
        with self._engine.begin() as conn:
            return self._new_trials.add(conn, None, params)

    def _ours(self, study_id: int) -> bool:
        return study_id == self._study_id

    def _trial(self, trial_id: int) -> FrozenTrial:
        try:
            return self._by_id[trial_id]
        except KeyError:
            raise KeyError(f"trial {trial_id} is not a trial of the study this storage holds") from None

    def _updatable(self, trial: FrozenTrial) -> None:
        self.check_trial_is_updatable(trial._trial_id, trial.state)

    # ---- studies: the backend's ---------------------------------------------------------------------------
    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        return self._backend.create_new_study(directions, study_name)

    def delete_study(self, study_id: int) -> None:
        if self._ours(study_id):
            raise RuntimeError("a controller does not delete the study it runs")
        self._backend.delete_study(study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._backend.set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._backend.set_study_system_attr(study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._backend.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._backend.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return list(self._directions) if self._ours(study_id) else self._backend.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._backend.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._backend.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._backend.get_all_studies()

    # ---- trials: memory, written through ------------------------------------------------------------------
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        if not self._ours(study_id):
            return self._backend.create_new_trial(study_id, template_trial)
        with self._lock:
            number = len(self._trials)
            if template_trial is None:
                trial = FrozenTrial(number=number, state=TrialState.RUNNING, value=None, values=None,
                                    datetime_start=datetime.now(), datetime_complete=None, params={}, distributions={},
                                    user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=-1)
            else:
                trial = copy.deepcopy(template_trial)
                trial.number = number
            trial._trial_id = tid = self._insert_trial(dict(
                number=number, study_id=study_id, state=trial.state, datetime_start=_stored_time(trial.datetime_start),
                datetime_complete=_stored_time(trial.datetime_complete)))
            rows = []
            for name, value in trial.params.items():
                dist = trial.distributions[name]
                rows.append((_INSERT["param"], dict(trial_id=tid, param_name=name, param_value=dist.to_internal_repr(value),
                                                    distribution_json=distribution_to_json(dist))))
            for objective, value in enumerate(trial.values or []):
                stored, kind = models.TrialValueModel.value_to_stored_repr(value)
                rows.append((_INSERT["value"], dict(trial_id=tid, objective=objective, value=stored, value_type=kind)))
            for step, value in trial.intermediate_values.items():
                stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
                rows.append((_INSERT["intermediate"], dict(trial_id=tid, step=step, intermediate_value=stored,
                                                           intermediate_value_type=kind)))
            for which, attrs in (("user", trial.user_attrs), ("system", trial.system_attrs)):
                for key, value in attrs.items():
                    rows.append((_INSERT[which], dict(trial_id=tid, key=key, value_json=json.dumps(value))))
            if rows:
                self._execute(*rows)
            self._trials.append(trial)
            self._by_id[trial._trial_id] = trial
            if not trial.state.is_finished():
                self._unfinished.setdefault(trial.state, {})[trial._trial_id] = trial
            return trial._trial_id

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: BaseDistribution) -> None:
        with self._lock:
            trial = self._trial(trial_id)
            self._updatable(trial)
            if param_name in trial.params:
                raise RuntimeError(f"trial {trial.number} already has parameter {param_name!r}")
            param_value_internal = on_step(param_value_internal, distribution)
            self._execute((_INSERT["param"], dict(trial_id=trial_id, param_name=param_name,
                                                  param_value=param_value_internal,
                                                  distribution_json=distribution_to_json(distribution))))
            trial.params = {**trial.params, param_name: distribution.to_external_repr(param_value_internal)}
            trial.distributions = {**trial.distributions, param_name: distribution}

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        if not self._ours(study_id):
            return self._backend.get_trial_id_from_study_id_trial_number(study_id, trial_number)
        with self._lock:
            if 0 <= trial_number < len(self._trials):
                return self._trials[trial_number]._trial_id
        raise KeyError(f"no trial number {trial_number} in study {study_id}")

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        """Optuna's semantics: False when asked to make RUNNING a trial that is not WAITING (someone claimed it)."""
        with self._lock:
            trial = self._trial(trial_id)
            self._updatable(trial)
            if state == TrialState.RUNNING and trial.state != TrialState.WAITING:
                return False
            statements = []
            if values is not None:
                if trial.values:
                    raise RuntimeError(f"trial {trial.number} already has values")
                for objective, value in enumerate(values):
                    stored, kind = models.TrialValueModel.value_to_stored_repr(value)
                    statements.append((_INSERT["value"], dict(trial_id=trial_id, objective=objective, value=stored,
                                                              value_type=kind)))
            change: dict[str, Any] = {"id_": trial_id, "state": state}
            start, complete = trial.datetime_start, trial.datetime_complete
            if state == TrialState.RUNNING:
                start = datetime.now()
                change["datetime_start"] = _stored_time(start)
            if state.is_finished():
                complete = datetime.now()
                change["datetime_complete"] = _stored_time(complete)
            statements.append((_UPDATE_TRIAL, change))
            self._execute(*statements)
            self._unfinished.get(trial.state, {}).pop(trial_id, None)
            if not state.is_finished():
                self._unfinished.setdefault(state, {})[trial_id] = trial
            trial.state, trial.datetime_start, trial.datetime_complete = state, start, complete
            if values is not None:
                trial.values = list(values)
            return True

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        with self._lock:
            trial = self._trial(trial_id)
            self._updatable(trial)
            stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(intermediate_value)
            value = dict(intermediate_value=stored, intermediate_value_type=kind)
            if step in trial.intermediate_values:
                self._execute((_UPDATE_INTERMEDIATE, dict(id_=trial_id, step_=step, **value)))
            else:
                self._execute((_INSERT["intermediate"], dict(trial_id=trial_id, step=step, **value)))
            trial.intermediate_values = {**trial.intermediate_values, step: intermediate_value}

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._set_attr("user", trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._set_attr("system", trial_id, key, value)

    def _set_attr(self, which: str, trial_id: int, key: str, value: Any) -> None:
        with self._lock:
            trial = self._trial(trial_id)
            self._updatable(trial)
            attrs = trial.user_attrs if which == "user" else trial.system_attrs
            if key in attrs:
                self._execute((_UPDATE_ATTR[which], dict(id_=trial_id, key_=key, value_json=json.dumps(value))))
            else:
                self._execute((_INSERT[which], dict(trial_id=trial_id, key=key, value_json=json.dumps(value))))
            attrs = {**attrs, key: value}
            if which == "user":
                trial.user_attrs = attrs
            else:
                trial.system_attrs = attrs

    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._lock:
            trial = self._by_id.get(trial_id)
            if trial is None:
                return self._backend.get_trial(trial_id)
            return _copy(trial)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Sequence[TrialState] | None = None) -> list[FrozenTrial]:
        if not self._ours(study_id):
            return self._backend.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        with self._lock:
            if states is None:
                trials = self._trials
            elif all(not state.is_finished() for state in states):  # the queue, the trials running: an index
                trials = sorted((t for state in set(states) for t in self._unfinished.get(state, {}).values()),
                                key=lambda t: t.number)
            else:
                trials = [t for t in self._trials if t.state in states]
            return [_copy(t) for t in trials] if deepcopy else list(trials)

    def remove_session(self) -> None:
        self._backend.remove_session()


__all__ = ["LeasedStorage"]
