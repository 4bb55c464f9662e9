"""The short result table `orch study run` prints (trials grouped by round, a hit mark for each run that met
the target), and the formatting helpers the other renderers share."""

from __future__ import annotations

from typing import Any

from db import Database, StudyRow

from ..analysis.results import trial_records
from ..config.study import StudySpec

HIT, MISS = "✓", "✗"


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


def _md_cell(text: Any) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def md_table(cols: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines
