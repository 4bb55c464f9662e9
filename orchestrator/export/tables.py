"""The short result table `orch study run` prints (trials grouped by round, a hit mark for each run that met
the target), and the per-trial records the exports build on."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import select

from db import Database, StudyRow, TrialRow

from ..config.study import StudySpec

HIT, MISS = "✓", "✗"
TRIAL_FIELDS = [
    "number", "round", "state", "variant", "repeat_index", "retry_of", "attempt", "machine", "slot", "gpu_model",
    "gpu_count", "driver_version", "value", "feasible", "exit_reason", "exit_code", "started_at", "ended_at",
    "code_revision", "code_branch", "code_dirty", "container_image", "container_image_id", "log_path", "workdir",
    "note",
]


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def trial_records(db: Database, study: StudyRow) -> list[dict[str, Any]]:
    """Every recorded field of every trial, flattened (params.X, metrics.X), JSON-ready."""
    with db.session() as s:
        rows = list(s.scalars(select(TrialRow).where(TrialRow.study_id == study.id).order_by(TrialRow.number)))
    records = []
    for row in rows:
        rec: dict[str, Any] = {"study": study.name}
        rec.update({f: _iso(getattr(row, f)) for f in TRIAL_FIELDS})
        rec.update({f"params.{k}": v for k, v in (row.params or {}).items()})
        rec.update({f"metrics.{k}": v for k, v in (row.metrics or {}).items()})
        rec["command"] = json.dumps(row.command) if row.command is not None else None
        rec["env"] = json.dumps(row.env, sort_keys=True) if row.env is not None else None
        rec["versions"] = json.dumps(row.versions, sort_keys=True) if row.versions else None
        rec["file_checksums"] = json.dumps(row.file_checksums, sort_keys=True) if row.file_checksums else None
        records.append(rec)
    return records


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:.4g}"
    return str(value)


def _mark(record: dict[str, Any]) -> str:
    if record["state"] != "complete":
        return ""
    return HIT if record["feasible"] else MISS


def markdown(db: Database, study: StudyRow) -> str:
    spec = StudySpec.model_validate(study.spec)
    records = [r for r in trial_records(db, study) if r["state"] != "invalid"]
    names = spec.all_names()
    constraint_metrics = [c.metric for c in spec.objective.constraints]
    target = ", ".join(str(c) for c in spec.objective.constraints) or "none"
    lines = [f"# Study `{study.name}`", ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    lines += [f"Objective: {spec.objective.direction} `{spec.objective.metric}` subject to {target}. "
              f"Sampler: {spec.sampler.name}. Trials: {len(records)} of {spec.budget.max_trials}.", ""]
    best = best_trial(spec, records)
    if best is not None:
        lines += [f"Best: trial {best['number']} (round {best['round']}), {spec.objective.metric} = "
                  f"{_fmt(best['value'])}, " + ", ".join(f"{n} = {_fmt(best.get('params.' + n))}" for n in names), ""]
    header = ["trial", *names, "machine", spec.objective.metric, *constraint_metrics, "hit", "state", "note"]
    for round_number in sorted({r["round"] for r in records}):
        group = [r for r in records if r["round"] == round_number]
        title = f"## Round {round_number}" if round_number else "## Recovered (asked before a controller died)"
        lines += [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in group:
            cells = [str(r["number"]), *[_fmt(r.get("params." + n)) for n in names], r["machine"] or "",
                     _fmt(r["value"]), *[_fmt(r.get("metrics." + m)) for m in constraint_metrics], _mark(r), r["state"],
                     (_note(r)).replace("|", "\\|")]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _note(record: dict[str, Any]) -> str:
    parts = []
    if record.get("retry_of") is not None:
        parts.append(f"retry of {record['retry_of']}")
    if record.get("repeat_index"):
        parts.append(f"repeat {record['repeat_index']}")
    if record["state"] not in ("complete",) and record.get("exit_reason"):
        parts.append(record["exit_reason"])
    return ", ".join(parts)


def best_trial(spec: StudySpec, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    candidates = [r for r in records if r["state"] == "complete" and r["feasible"] and r["value"] is not None]
    if not candidates:
        return None
    pick = min if spec.objective.direction == "minimize" else max
    return pick(candidates, key=lambda r: r["value"])
