"""A study's results as records and variants: what the exports, the extra-runs commands and the analyses read.

- `trial_records` / `full_records`: every recorded field of every trial (our row, flattened ``params.X`` /
  ``metrics.X``; the full form adds the remaining columns, the Optuna trial's user attrs ``user_attrs.X`` and
  constraint values ``constraints.X``, and the trial's *kind*).
- `study_variants` / `top_variants`: per-variant statistics against the study's target, and the ranking that
  picks the write-up's best variant and the variants `orch study confirm` runs again.

Kinds (how the write-up sorts trials into sections; docs/export.md):

- ``search``: a run of the search (the default); it goes into its round's table.
- ``baseline``: the reference variant the headline compares with; also in its round's table.
- ``confirmation``: a re-run of a chosen variant, often on other machines; in "Confirmation runs".
- ``early_exit``: a run with a longer step budget that stops at the target; in "Early-exit analysis".
- ``step_cut``: a baseline run cut to fewer steps (`orch study step-cut`); in "Step-cut baseline".
- ``unmodified``: a run of the trainer without the study's parameters (a paired baseline); in "Paired timing".

A trial's kind is, first match wins: the Optuna user attr ``kind`` (``study.enqueue_trial(params,
user_attrs={"kind": "confirmation"})``, or the CSV column ``kind`` of ``orch import csv``); our row's
``note`` starting with ``baseline``, ``confirmation``/``confirm:``, or ``early exit``/``early-exit``/
``early_exit``; the bisection sampler's role ``final`` (system attr ``bisection:role``) = confirmation;
otherwise ``search``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from db import Database, StudyRow, TrialRow

from ..config.study import Constraint, StudySpec
from ..study.outcomes import named_constraints
from .variants import VariantStats, rank_for_confirmation, variant_stats

STATS_KINDS = ("search", "baseline", "confirmation")  # runs that count for per-variant statistics
TRIAL_FIELDS = [
    "number", "round", "state", "variant", "repeat_index", "retry_of", "attempt", "machine", "slot", "gpu_model",
    "gpu_count", "driver_version", "value", "feasible", "exit_reason", "exit_code", "started_at", "ended_at",
    "code_revision", "code_branch", "code_dirty", "container_image", "container_image_id", "log_path", "workdir",
    "note",
]


def iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def trial_records(db: Database, study: StudyRow) -> list[dict[str, Any]]:
    """Every recorded field of every trial, flattened (params.X, metrics.X), JSON-ready."""
    with db.session() as s:
        rows = list(s.scalars(select(TrialRow).where(TrialRow.study_id == study.id).order_by(TrialRow.number)))
    records = []
    for row in rows:
        rec: dict[str, Any] = {"study": study.name}
        rec.update({f: iso(getattr(row, f)) for f in TRIAL_FIELDS})
        rec.update({f"params.{k}": v for k, v in (row.params or {}).items()})
        rec.update({f"metrics.{k}": v for k, v in (row.metrics or {}).items()})
        rec["command"] = json.dumps(row.command) if row.command is not None else None
        rec["env"] = json.dumps(row.env, sort_keys=True) if row.env is not None else None
        rec["versions"] = json.dumps(row.versions, sort_keys=True) if row.versions else None
        rec["file_checksums"] = json.dumps(row.file_checksums, sort_keys=True) if row.file_checksums else None
        records.append(rec)
    return records


KINDS = ("search", "baseline", "confirmation", "early_exit", "step_cut", "unmodified")
EXTRA_FIELDS = ["optuna_trial_id", "created_at", "heartbeat_at", "pid", "pid_start", "controller"]
_ALIASES = {"confirm": "confirmation", "confirmed": "confirmation", "early-exit": "early_exit",
            "early exit": "early_exit", "earlyexit": "early_exit", "base": "baseline", "step-cut": "step_cut"}
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
    from ..study.lifecycle import optuna_storage

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


def json_field(value: Any) -> Any:
    """A record's JSON column as a value: a JSON text read back (a record's `versions`, `command`, `env`, ...), anything
    else as it is."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def full_records(db: Database, study: StudyRow, trials: dict[int, Any] | None = None) -> list[dict[str, Any]]:
    """`trial_records` plus the remaining columns of our rows, the trial's kind, and its Optuna
    user attrs (``user_attrs.X``) and constraint values (``constraints.X``)."""
    records = trial_records(db, study)
    with db.session() as s:
        rows = {r.number: r for r in s.scalars(select(TrialRow).where(TrialRow.study_id == study.id))}
    trials = optuna_trials(db, study) if trials is None else trials
    for rec in records:
        row = rows.get(rec["number"])
        for f in EXTRA_FIELDS:
            rec[f] = iso(getattr(row, f, None))
        for column in TrialRow.__table__.columns:  # any column added later is exported too
            if column.key not in rec and column.key not in ("id", "study_id", "params", "metrics"):
                rec[column.key] = _jsonable(iso(getattr(row, column.key, None)))
        frozen = trials.get(rec["number"])
        user_attrs = dict(frozen.user_attrs) if frozen is not None else {}
        system_attrs = dict(frozen.system_attrs) if frozen is not None else {}
        rec["kind"] = trial_kind(rec.get("note"), user_attrs, system_attrs)
        rec["optuna_state"] = frozen.state.name if frozen is not None else None
        for k, v in sorted(user_attrs.items()):
            rec[f"user_attrs.{k}"] = _jsonable(v)
        for k, v in sorted((named_constraints(frozen) if frozen is not None else {}).items()):  # not the list twin
            rec[f"constraints.{k}"] = v
        role = system_attrs.get("bisection:role")
        if role is not None:
            rec["bisection.role"] = role
    return records


@dataclass
class Variant:
    key: str
    params: dict[str, Any]
    numbers: list[int]
    stats: VariantStats
    sign: float = 1.0  # -1 for maximize objectives (stats computed on -value)

    @property
    def mean(self) -> float:
        return self.sign * self.stats.mean_time

    @property
    def std(self) -> float:
        return self.stats.std_time


def variants_of(spec: StudySpec, records: list[dict[str, Any]], constraint: Constraint | None,
              names: list[str]) -> list[Variant]:
    sign = -1.0 if spec.objective.direction == "maximize" else 1.0
    runs: dict[str, list[tuple[float, float]]] = {}
    numbers: dict[str, list[int]] = {}
    params: dict[str, dict[str, Any]] = {}
    for r in records:
        if r["state"] != "complete" or r["value"] is None:
            continue
        if constraint is not None:
            metric = r.get(f"metrics.{constraint.metric}")
            if metric is None:
                continue
        else:
            metric = 0.0
        runs.setdefault(r["variant"], []).append((sign * float(r["value"]), float(metric)))
        numbers.setdefault(r["variant"], []).append(r["number"])
        params.setdefault(r["variant"], {n: r.get(f"params.{n}") for n in names})
    if constraint is None:
        target, direction = math.inf, "below"
    else:
        target, direction = constraint.threshold, "below" if constraint.op == "<=" else "above"
    stats = variant_stats(runs, target, direction=direction)
    return [Variant(key=s.variant, params=params[s.variant], numbers=numbers[s.variant], stats=s, sign=sign)
            for s in stats]


def study_variants(spec: StudySpec, records: list[dict[str, Any]]) -> list[Variant]:
    """Per-variant statistics of `records` (complete runs), against the study's first constraint."""
    constraints = spec.objective.constraints
    return variants_of(spec, records, constraints[0] if constraints else None, spec.all_names())


def top_variants(variants: list[Variant], constraint: Constraint | None, k: int) -> list[Variant]:
    """The best `k` variants, best first: `rank_for_confirmation` (hit rate >= 50%, mean metric meets the
    target, fastest mean); without a constraint, the best mean. The write-up's best variant is the first."""
    if constraint is not None:
        ranked = rank_for_confirmation([v.stats for v in variants], k=k)
    else:
        ranked = sorted([v.stats for v in variants], key=lambda s: s.mean_time)[:max(k, 0)]
    by_stats = {id(v.stats): v for v in variants}
    return [by_stats[id(s)] for s in ranked]
