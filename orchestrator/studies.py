"""Creating and opening studies: our `orch_studies` row and its Optuna study, in the same database."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from sqlalchemy import select

from db import Database, StudyRow, TrialRow, safe_url
from db.models import EventRow

from .config.errors import ConfigError, OrchError
from .config.study import StudySpec, check_metrics, load_study_file
from .parsers import UnknownFormat, get_adapter
from .samplers import build_sampler

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class StudyError(OrchError):
    pass


def optuna_storage(db: Database) -> optuna.storages.RDBStorage:
    kwargs = {"connect_args": {"timeout": 30}} if db.url.startswith("sqlite") else {"pool_pre_ping": True}
    return optuna.storages.RDBStorage(db.url, engine_kwargs=kwargs)


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
    try:
        build_sampler(spec)
    except ConfigError as exc:
        raise doc.error(("sampler",), exc.detail, fix=exc.fix) from None
    return spec, Path(path).read_text(encoding="utf-8")


def new_optuna_study(db: Database, name: str, direction: str, fix: str) -> optuna.storages.RDBStorage:
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


def open_study(db: Database, name: str, sampler: optuna.samplers.BaseSampler | None = None) -> OpenStudy:
    row = load_study_row(db, name)
    spec = StudySpec.model_validate(row.spec)
    study = optuna.load_study(study_name=row.optuna_study_name, storage=optuna_storage(db), sampler=sampler)
    return OpenStudy(row=row, spec=spec, optuna=study)


def study_trials(db: Database, study_id: int) -> list[TrialRow]:
    with db.session() as s:
        return list(s.scalars(select(TrialRow).where(TrialRow.study_id == study_id).order_by(TrialRow.number)))
