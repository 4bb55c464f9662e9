"""Every recorded field of every trial (our row + the Optuna trial's attributes), and the trial's *kind*.

Kinds (how the write-up sorts trials into sections; docs/export.md):

- ``search``: a run of the search (the default); it goes into its round's table.
- ``baseline``: the reference variant the headline compares with; also in its round's table.
- ``confirmation``: a re-run of a chosen variant, often on other machines; in "Confirmation runs".
- ``early_exit``: a run with a longer step budget that stops at the target; in "Early-exit analysis".

A trial's kind is, first match wins: the Optuna user attr ``kind`` (``study.enqueue_trial(params,
user_attrs={"kind": "confirmation"})``, or the CSV column ``kind`` of ``orch import csv``); our row's
``note`` starting with ``baseline``, ``confirmation``/``confirm:``, or ``early exit``/``early-exit``/
``early_exit``; the bisection sampler's role ``final`` (system attr ``bisection:role``) = confirmation;
otherwise ``search``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sqlalchemy import select

from db import Database, StudyRow, TrialRow

from .tables import _iso, trial_records

KINDS = ("search", "baseline", "confirmation", "early_exit")
EXTRA_FIELDS = ["optuna_trial_id", "created_at", "heartbeat_at", "pid", "pid_start", "controller"]
_ALIASES = {"confirm": "confirmation", "confirmed": "confirmation", "early-exit": "early_exit",
            "early exit": "early_exit", "earlyexit": "early_exit", "base": "baseline"}
_NOTE_PATTERNS = [(re.compile(r"^\s*baseline\b", re.I), "baseline"),
                  (re.compile(r"^\s*confirm(ation)?\b", re.I), "confirmation"),
                  (re.compile(r"^\s*early[-_ ]?exit\b", re.I), "early_exit")]


def normalise_kind(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    text = _ALIASES.get(text, text).replace("-", "_").replace(" ", "_")
    return text if text in KINDS else None


def trial_kind(note: str | None, user_attrs: dict[str, Any], system_attrs: dict[str, Any]) -> str:
    kind = normalise_kind(user_attrs.get("kind"))
    if kind:
        return kind
    for pattern, name in _NOTE_PATTERNS:
        if note and pattern.match(note):
            return name
    if system_attrs.get("bisection:role") == "final":
        return "confirmation"
    return "search"


def optuna_trials(db: Database, study: StudyRow) -> dict[int, Any]:
    """Optuna's FrozenTrials of the study by number ({} when its Optuna study is missing)."""
    from ..studies import optuna_storage

    storage = optuna_storage(db)
    try:
        study_id = storage.get_study_id_from_name(study.optuna_study_name)
    except KeyError:
        return {}
    return {t.number: t for t in storage.get_all_trials(study_id, deepcopy=False)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return json.dumps(value, sort_keys=True, default=str)


def full_records(db: Database, study: StudyRow, trials: dict[int, Any] | None = None) -> list[dict[str, Any]]:
    """`tables.trial_records` plus the remaining columns of our rows, the trial's kind, and its Optuna
    user attrs (``user_attrs.X``) and constraint values (``constraints.X``)."""
    records = trial_records(db, study)
    with db.session() as s:
        rows = {r.number: r for r in s.scalars(select(TrialRow).where(TrialRow.study_id == study.id))}
    trials = optuna_trials(db, study) if trials is None else trials
    for rec in records:
        row = rows.get(rec["number"])
        for f in EXTRA_FIELDS:
            rec[f] = _iso(getattr(row, f, None))
        for column in TrialRow.__table__.columns:  # any column added later is exported too
            if column.key not in rec and column.key not in ("id", "study_id", "params", "metrics"):
                rec[column.key] = _jsonable(_iso(getattr(row, column.key, None)))
        frozen = trials.get(rec["number"])
        user_attrs = dict(frozen.user_attrs) if frozen is not None else {}
        system_attrs = dict(frozen.system_attrs) if frozen is not None else {}
        rec["kind"] = trial_kind(rec.get("note"), user_attrs, system_attrs)
        rec["optuna_state"] = frozen.state.name if frozen is not None else None
        for k, v in sorted(user_attrs.items()):
            rec[f"user_attrs.{k}"] = _jsonable(v)
        for k, v in sorted((frozen.constraints if frozen is not None else {}).items()):
            rec[f"constraints.{k}"] = v
        role = system_attrs.get("bisection:role")
        if role is not None:
            rec["bisection.role"] = role
    return records


def csv_text(db: Database, study: StudyRow) -> str:
    """RENDERERS['csv']: one row per trial, every recorded field (`full_records`)."""
    import pandas as pd

    return pd.DataFrame.from_records(full_records(db, study)).to_csv(index=False)


def json_text(db: Database, study: StudyRow) -> str:
    """RENDERERS['json']: the study's objective, its best trial and every trial's recorded fields."""
    from ..config.study import StudySpec
    from .tables import best_trial

    spec = StudySpec.model_validate(study.spec)
    records = full_records(db, study)
    payload = {"study": study.name, "objective": {"direction": spec.objective.direction, "metric": spec.objective.metric,
               "constraints": [str(c) for c in spec.objective.constraints]},
               "best_trial": (best_trial(spec, records) or {}).get("number"), "trials": records}
    return json.dumps(payload, indent=2, default=str)
