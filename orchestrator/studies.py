"""Creating and opening studies: our `orch_studies` row and its Optuna study, in the same database."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import _CachedStorage
from optuna.storages._cached_storage import _StudyInfo
from optuna.trial import TrialState
from sqlalchemy import event, select

from db import Database, StudyRow, TrialRow, safe_url
from db.models import EventRow
from db.reconnect import wait_for_server

from .config.errors import OrchError
from .config.sampler_check import check_sampler
from .config.study import StudySpec, check_metrics, load_study_file
from .parsers import UnknownFormat, get_adapter
from .study_storage import LeasedStorage

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class StudyError(OrchError):
    pass


class _StudyStorage(_CachedStorage):
    """Optuna's cache over its RDB storage (what `load_study` wraps an RDBStorage in), except that a read of the
    WAITING trials alone (each `ask` pops the queue) is one filtered query: the cache re-reads every unfinished
    trial on each read, O(trials running) per call, which on a large fleet dominated the cost of a dispatch."""

    def get_all_trials(self, study_id, deepcopy=True, states=None):
        if states is None or set(states) != {TrialState.WAITING}:
            return super().get_all_trials(study_id, deepcopy=deepcopy, states=states)
        trials = self._backend.get_all_trials(study_id, deepcopy=False, states=states)
        with self._lock:  # registered as the cache's own read does: a popped trial's writes go through the cache
            study = self._studies.setdefault(study_id, _StudyInfo())
            self._add_trials_to_cache(study_id, trials)
            study.unfinished_trial_ids.update(t._trial_id for t in trials)
        return copy.deepcopy(trials) if deepcopy else trials


def _sqlite_synchronous_normal(engine) -> None:
    """Optuna's SQLite connections commit as ours do (db/engine.py: WAL, synchronous NORMAL): durable when a
    process dies, and a power loss drops only the last commits of both, in order. With the default (FULL)
    every Optuna write was an fsync, several per trial."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.execute("PRAGMA synchronous = NORMAL")

    engine.dispose()  # the connections Optuna opened while checking its tables get the pragma too


def optuna_storage(db: Database) -> optuna.storages.BaseStorage:
    if db.url.startswith("sqlite"):
        storage = optuna.storages.RDBStorage(db.url, engine_kwargs={"connect_args": {"timeout": 30}})
        _sqlite_synchronous_normal(storage.engine)
        return _StudyStorage(storage)
    storage = optuna.storages.RDBStorage(db.url, engine_kwargs={"pool_pre_ping": True})
    wait_for_server(storage.engine, safe_url(db.url))  # Optuna's engine waits out a server outage like ours
    return _StudyStorage(storage)


@dataclass
class OpenStudy:
    row: StudyRow
    spec: StudySpec
    optuna: optuna.Study

    @property
    def name(self) -> str:
        return self.row.name


def validate_study_file(path: str | Path) -> tuple[StudySpec, str]:
    spec, doc = load_study_file(path)
    try:
        adapter = get_adapter(spec.trainer.log_format)
    except UnknownFormat as exc:
        raise doc.error(("trainer", "log_format"), str(exc), fix="pick a known format") from None
    check_metrics(spec, adapter.metrics, adapter.name, doc)
    check_sampler(spec, doc)  # built and asked for two points on an in-memory study: bad options fail here
    return spec, Path(path).read_text(encoding="utf-8")


def new_optuna_study(db: Database, name: str, direction: str, fix: str) -> optuna.storages.BaseStorage:
    """Create the Optuna half of a new study; refuse a name that either half already uses."""
    with db.session() as s:
        if s.scalar(select(StudyRow).where(StudyRow.name == name)) is not None:
            raise StudyError(f"study {name!r} already exists in {safe_url(db.url)} (fix: {fix})")
    storage = optuna_storage(db)
    try:
        optuna.create_study(study_name=name, storage=storage, direction=direction)
    except optuna.exceptions.DuplicatedStudyError:
        raise StudyError(f"an Optuna study named {name!r} already exists in this database (fix: {fix})") from None
    return storage


def create_study(db: Database, name: str, path: str | Path) -> StudyRow:
    spec, text = validate_study_file(path)
    storage = new_optuna_study(db, name, spec.objective.direction,
                               "pick another name, or `orch study run` it to continue")
    resolved = Path(path).resolve()
    try:
        with db.session() as s:
            row = StudyRow(name=name, optuna_study_name=name, spec=spec.model_dump(mode="json"), spec_yaml=text,
                           spec_path=str(resolved), spec_dir=str(resolved.parent),
                           objective_metric=spec.objective.metric, direction=spec.objective.direction)
            s.add(row)
            s.flush()
            s.add(EventRow(study_id=row.id, kind="study.state", new="created", message=f"from {path}"))
    except Exception:
        optuna.delete_study(study_name=name, storage=storage)
        raise
    return row


def load_study_row(db: Database, name: str) -> StudyRow:
    with db.session() as s:
        row = s.scalar(select(StudyRow).where(StudyRow.name == name))
        if row is None:
            known = s.scalars(select(StudyRow.name).order_by(StudyRow.id)).all()
            hint = f"known studies: {', '.join(known)}" if known else "no study exists yet"
            raise StudyError(f"no study named {name!r} ({hint}) (fix: `orch study create {name} --from studies/X.yaml`)")
        return row


def open_study(db: Database, name: str, sampler: optuna.samplers.BaseSampler | None = None,
               leased: bool = False) -> OpenStudy:
    """`leased`: for the controller holding the study's lease, the trials kept in memory and written through
    its transactions (`study_storage.LeasedStorage`)."""
    row = load_study_row(db, name)
    spec = StudySpec.model_validate(row.spec)
    storage = optuna_storage(db)
    if leased:
        backend = storage._backend
        storage = LeasedStorage(backend, backend.get_study_id_from_name(row.optuna_study_name), db.engine)
    study = optuna.load_study(study_name=row.optuna_study_name, storage=storage, sampler=sampler)
    return OpenStudy(row=row, spec=spec, optuna=study)


def study_trials(db: Database, study_id: int) -> list[TrialRow]:
    with db.session() as s:
        return list(s.scalars(select(TrialRow).where(TrialRow.study_id == study_id).order_by(TrialRow.number)))
