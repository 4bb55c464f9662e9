"""Creating and opening studies: our `orch_studies` row and its Optuna study, in the same database."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import _CachedStorage
from optuna.storages._cached_storage import _StudyInfo
from optuna.storages._rdb import models as optuna_models
from optuna.trial import TrialState
from sqlalchemy import delete, event, func, select

from db import Database, StudyRow, TrialRow, safe_url
from db.models import BatchRow, EventRow, MetricPointRow, RequestRow
from db.reconnect import wait_for_server

from ..config.errors import OrchError
from ..samplers.check import check_sampler
from ..config.study import StudySpec, check_metrics, load_study_file
from ..parsers import UnknownFormat, get_adapter
from .leased_storage import LeasedStorage

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


_OPTUNA_STUDIES = optuna_models.StudyModel.__table__
_OPTUNA_TRIALS = optuna_models.TrialModel.__table__


def optuna_study_ids(session, names) -> dict[str, int]:
    """The Optuna study id of each of `names` that Optuna's tables still hold."""
    names = list(names)
    if not names:
        return {}
    return dict(session.execute(select(_OPTUNA_STUDIES.c.study_name, _OPTUNA_STUDIES.c.study_id)
                                .where(_OPTUNA_STUDIES.c.study_name.in_(names))).all())


def _deleted_in_optuna(name: str) -> str:
    return (f"study {name!r} was deleted from Optuna's tables (`optuna delete-study` or optuna-dashboard); orch's own "
            f"rows of it remain")


def new_optuna_study(db: Database, name: str, direction: str, fix: str) -> optuna.storages.BaseStorage:
    """Create the Optuna half of a new study; refuse a name that either half already uses (orch's leftover rows
    of a study deleted with Optuna's tools do not count: `create_study` replaces them)."""
    with db.session() as s:
        row = s.scalar(select(StudyRow).where(StudyRow.name == name))
        if row is not None and optuna_study_ids(s, [row.optuna_study_name]):
            raise StudyError(f"study {name!r} already exists in {safe_url(db.url)} (fix: {fix})")
    storage = optuna_storage(db)
    try:
        optuna.create_study(study_name=name, storage=storage, direction=direction)
    except optuna.exceptions.DuplicatedStudyError:
        raise StudyError(f"an Optuna study named {name!r} already exists in this database (fix: {fix})") from None
    return storage


def deleted_in_optuna(db: Database, name: str) -> int | None:
    """Study NAME's Optuna half was deleted with Optuna's tools: how many trial rows of ours it left (else None)."""
    with db.session() as s:
        row = s.scalar(select(StudyRow).where(StudyRow.name == name))
        if row is None or optuna_study_ids(s, [row.optuna_study_name]):
            return None
        return s.scalar(select(func.count()).select_from(TrialRow).where(TrialRow.study_id == row.id))


def create_study(db: Database, name: str, path: str | Path) -> StudyRow:
    """Create study NAME from a study file: its Optuna study, then our row (the leftover rows of a same-named study
    deleted with Optuna's tools are replaced in the same transaction)."""
    spec, text = validate_study_file(path)
    storage = new_optuna_study(db, name, spec.objective.direction,
                               "pick another name, `orch study run` it to continue, or `orch study delete` it")
    resolved = Path(path).resolve()
    try:
        with warnings.catch_warnings():  # experimental in Optuna: what optuna-dashboard names the objective
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.load_study(study_name=name, storage=storage).set_metric_names([spec.objective.metric])
        with db.session() as s:
            leftover = s.scalar(select(StudyRow).where(StudyRow.name == name))
            if leftover is not None:  # its Optuna half was gone (checked above): the one of that name is new
                _delete_rows(s, leftover, with_optuna=False)
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


def _delete_rows(s, row: StudyRow, with_optuna: bool = True) -> dict[str, int]:
    """Delete every row of study `row`, ours and (`with_optuna`, if still there) Optuna's, in session `s`'s
    transaction."""
    trial_ids = select(TrialRow.id).where(TrialRow.study_id == row.id).scalar_subquery()
    counts = {
        "trials": s.scalar(select(func.count()).select_from(TrialRow).where(TrialRow.study_id == row.id)),
        "metric_points": s.execute(delete(MetricPointRow).where(MetricPointRow.trial_id.in_(trial_ids))).rowcount,
        "optuna_trials": 0,
    }
    for model in (TrialRow, EventRow, BatchRow, RequestRow):
        s.execute(delete(model).where(model.study_id == row.id))
    s.execute(delete(StudyRow).where(StudyRow.id == row.id))  # now, not at flush: a new row may take its name
    s.expunge(row)
    optuna_id = optuna_study_ids(s, [row.optuna_study_name]).get(row.optuna_study_name) if with_optuna else None
    if optuna_id is not None:
        counts["optuna_trials"] = s.scalar(select(func.count()).select_from(_OPTUNA_TRIALS)
                                           .where(_OPTUNA_TRIALS.c.study_id == optuna_id))
        trials = select(_OPTUNA_TRIALS.c.trial_id).where(_OPTUNA_TRIALS.c.study_id == optuna_id).scalar_subquery()
        for table in reversed(optuna_models.BaseModel.metadata.sorted_tables):  # rows that refer to others first
            if table is _OPTUNA_STUDIES or table is _OPTUNA_TRIALS or "study_id" in table.c:
                s.execute(delete(table).where(table.c.study_id == optuna_id))
            elif "trial_id" in table.c:
                s.execute(delete(table).where(table.c.trial_id.in_(trials)))
    return counts


def delete_study(db: Database, name: str) -> dict[str, int]:
    """Remove study NAME: orch's rows and its Optuna study, in one transaction. Refused while a controller runs it."""
    from .lease import holder  # the lease module reads processes (procs); only deletion needs it

    with db.session() as s:
        row = s.scalar(select(StudyRow).where(StudyRow.name == name))
        if row is None:
            raise _no_study(s, name)
        running = holder(row)
        if running is not None:
            raise StudyError(f"study {name!r} is being run by the controller {running} (fix: stop it first: "
                             f"`orch study stop {name} --now --wait 60`, then delete)")
        return _delete_rows(s, row)


def set_status(db: Database, study_id: int, status: str, message: str | None = None) -> None:
    """Set a study's status, with its event (for a study no controller holds)."""
    with db.session() as s:
        row = s.get(StudyRow, study_id)
        if row.status != status:
            s.add(EventRow(study_id=study_id, kind="study.state", old=row.status, new=status, message=message))
            row.status = status


def _no_study(s, name: str) -> StudyError:
    known = s.scalars(select(StudyRow.name).order_by(StudyRow.id)).all()
    hint = f"known studies: {', '.join(known)}" if known else "no study exists yet"
    return StudyError(f"no study named {name!r} ({hint}) (fix: `orch study create {name} --from studies/X.yaml`)")


def load_study_row(db: Database, name: str, *, allow_deleted_in_optuna: bool = False) -> StudyRow:
    """Our row of study NAME. A study whose Optuna half was deleted with Optuna's tools is an error that says so
    (unless `allow_deleted_in_optuna`: `orch study delete` removes what is left)."""
    with db.session() as s:
        row = s.scalar(select(StudyRow).where(StudyRow.name == name))
        if row is None:
            raise _no_study(s, name)
        if not allow_deleted_in_optuna and not optuna_study_ids(s, [row.optuna_study_name]):
            raise StudyError(f"{_deleted_in_optuna(name)} (fix: `orch study delete {name} --yes` removes them, then "
                             f"`orch study create {name} --from FILE` makes it anew; create alone also replaces them)")
        return row


def open_study(db: Database, name: str, sampler: optuna.samplers.BaseSampler | None = None,
               leased: bool = False) -> OpenStudy:
    """`leased`: for the controller holding the study's lease, the trials kept in memory and written through
    its transactions (`leased_storage.LeasedStorage`)."""
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
