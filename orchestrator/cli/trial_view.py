"""Trial views (`orch trial list | show | logs`): plain dicts for --json, rendered for people; a log followed until
its trial ends. A trial is named `STUDY#N` (N: its number in the study, as Optuna and the write-up number it)."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, TextIO

import optuna
from sqlalchemy import select

from db import Database, EventRow, MetricPointRow, StudyRow, TrialRow

from ..config.errors import OrchError
from ..config.study import StudySpec
from ..study.lifecycle import load_study_row, optuna_storage, optuna_study_ids
from ..study.trials import enqueued_params
from .status import _age_s, _table

LIVE_STATES = ("pending", "running")
FOLLOW_POLL_S = 0.25  # `--follow`: how often the log file and the trial's state are read


def parse_trial_ref(text: str) -> tuple[str, int]:
    match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,127})#(\d{1,9})", text)
    if match is None:
        raise OrchError(f"trial {text!r} is not STUDY#N (fix: name a trial as the study and its number, e.g. "
                        "s1#3; `orch trial list STUDY` lists them)")
    return match.group(1), int(match.group(2))


def _iso(when: datetime | None) -> str | None:
    if when is None:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).isoformat(timespec="seconds")


def _duration_s(row: TrialRow) -> float | None:
    if row.started_at is None:
        return None
    if row.ended_at is None:
        return _age_s(row.started_at)
    start, end = (t if t.tzinfo else t.replace(tzinfo=timezone.utc) for t in (row.started_at, row.ended_at))
    return round((end - start).total_seconds(), 1)


def _queued(db: Database, study: StudyRow) -> list[optuna.trial.FrozenTrial]:
    """The study's trials waiting in Optuna's queue (repeats, retries, extra runs not started yet)."""
    with db.session() as s:
        optuna_id = optuna_study_ids(s, [study.optuna_study_name]).get(study.optuna_study_name)
    if optuna_id is None:
        return []
    return optuna_storage(db).get_all_trials(optuna_id, deepcopy=False, states=(optuna.trial.TrialState.WAITING,))


def _summary(row: TrialRow, spec: StudySpec) -> dict:
    metrics = row.metrics or {}
    return {"trial": row.number, "round": row.round, "state": row.state, "machine": row.machine, "slot": row.slot,
            "params": row.params, "value": row.value,
            **{c.metric: metrics.get(c.metric) for c in spec.objective.constraints},
            "hit": row.feasible if row.state == "complete" else None, "duration_s": _duration_s(row),
            "exit_reason": row.exit_reason, "attempt": row.attempt, "retry_of": row.retry_of}


def trial_list(db: Database, name: str, states: list[str] | None = None) -> dict:
    study = load_study_row(db, name)
    spec = StudySpec.model_validate(study.spec)
    with db.session() as s:
        rows = list(s.scalars(select(TrialRow).where(TrialRow.study_id == study.id).order_by(TrialRow.number)))
    trials = [_summary(r, spec) for r in rows]
    for frozen in _queued(db, study):
        trials.append({"trial": frozen.number, "round": None, "state": "queued", "machine": None, "slot": None,
                       "params": enqueued_params(frozen), "value": None,
                       **{c.metric: None for c in spec.objective.constraints}, "hit": None, "duration_s": None,
                       "exit_reason": None, "attempt": int(frozen.user_attrs.get("attempt", 1)),
                       "retry_of": frozen.user_attrs.get("retry_of")})
    if states:
        trials = [t for t in trials if t["state"] in states]
    return {"study": study.name, "objective": f"{spec.objective.direction} {spec.objective.metric}",
            "constraints": [c.metric for c in spec.objective.constraints],
            "trials": sorted(trials, key=lambda t: t["trial"])}


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_trial_list(view: dict) -> str:
    if not view["trials"]:
        return f"study {view['study']}: no trials yet (`orch study run {view['study']}` starts them)"
    metric = view["objective"].split()[-1]
    columns = ["trial", "round", "state", "machine", "params", metric, *view["constraints"], "hit", "time", "why"]
    rows = []
    for t in view["trials"]:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in (t["params"] or {}).items())
        why = t["exit_reason"] if t["state"] not in ("complete", "running", "queued", "pending") else ""
        rows.append([t["trial"], _fmt(t["round"]), t["state"], _fmt(t["machine"]), params, _fmt(t["value"]),
                     *[_fmt(t[c]) for c in view["constraints"]], _fmt(t["hit"]),
                     "-" if t["duration_s"] is None else f"{t['duration_s']:.0f}s", why or ""])
    return _table(columns, rows)


def _row(db: Database, name: str, number: int) -> tuple[StudyRow, TrialRow | None]:
    study = load_study_row(db, name)
    with db.session() as s:
        row = s.scalar(select(TrialRow).where(TrialRow.study_id == study.id, TrialRow.number == number))
    return study, row


def _no_trial(db: Database, study: StudyRow, number: int) -> OrchError:
    if any(t.number == number for t in _queued(db, study)):
        return OrchError(f"trial {study.name}#{number} is queued: it has not started, so it has no record or log yet "
                         f"(fix: wait for `orch study run {study.name}` to start it; `orch trial cancel "
                         f"{study.name}#{number}` takes it off the queue)")
    with db.session() as s:
        numbers = list(s.scalars(select(TrialRow.number).where(TrialRow.study_id == study.id)
                                 .order_by(TrialRow.number)))
    known = f"trials {numbers[0]}..{numbers[-1]}" if numbers else "no trials yet"
    return OrchError(f"study {study.name!r} has no trial {number} ({known}) (fix: `orch trial list {study.name}` "
                     "lists them)")


def trial_show(db: Database, name: str, number: int) -> dict:
    study, row = _row(db, name, number)
    if row is None:
        raise _no_trial(db, study, number)
    with db.session() as s:
        events = s.execute(select(EventRow.at, EventRow.kind, EventRow.old, EventRow.new, EventRow.message)
                           .where(EventRow.study_id == study.id, EventRow.trial_number == number)
                           .order_by(EventRow.id)).all()
        last = s.execute(select(MetricPointRow.step, MetricPointRow.total_steps, MetricPointRow.val_loss)
                         .where(MetricPointRow.trial_id == row.id).order_by(MetricPointRow.step.desc(),
                                                                            MetricPointRow.kind.desc())
                         .limit(1)).first()
    out = {"study": study.name}
    for column in TrialRow.__table__.columns:
        if column.key not in ("id", "study_id"):
            value = getattr(row, column.key)
            out[column.key] = _iso(value) if isinstance(value, datetime) else value
    out["duration_s"] = _duration_s(row)
    out["last_point"] = None if last is None else {"step": last.step, "total_steps": last.total_steps,
                                                   "val_loss": last.val_loss}
    out["events"] = [{"at": _iso(e.at), "kind": e.kind, "old": e.old, "new": e.new, "message": e.message}
                     for e in events]
    return out


def render_trial_show(view: dict) -> str:
    lines = [f"trial {view['study']}#{view['number']}: {view['state']}"
             + (f" ({view['exit_reason']})" if view["exit_reason"] else "")]
    skip = {"study", "number", "state", "exit_reason", "events", "injection_diff", "last_point"}
    for key, value in view.items():
        if key in skip or value is None or value == {} or value == []:
            continue
        shown = json.dumps(value, default=str) if isinstance(value, (dict, list)) else value
        lines.append(f"  {key}: {shown}")
    point = view["last_point"]
    if point:
        of = f"/{point['total_steps']}" if point["total_steps"] else ""
        lines.append(f"  last step: {point['step']}{of}" + (f", val_loss {point['val_loss']:.4f}"
                                                             if point["val_loss"] is not None else ""))
    if view.get("injection_diff"):
        lines.append("  injection diff:\n" + "\n".join("    " + line for line in view["injection_diff"].splitlines()))
    if view["events"]:
        lines.append("  events:")
        for e in view["events"]:
            change = f"{e['old'] or ''} -> {e['new']}" if e["new"] else ""
            lines.append(f"    {e['at']} {e['kind']} {change} {e['message'] or ''}".rstrip())
    return "\n".join(lines)


def _tail_start(path: Path, lines: int) -> int:
    """The byte offset of the last `lines` lines of `path`."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        block, data = 64 * 1024, b""
        while size > 0 and data.count(b"\n") <= lines:
            step = min(block, size)
            size -= step
            f.seek(size)
            data = f.read(step) + data
    cut = data.split(b"\n")
    keep = cut[-(lines + 1):] if data.endswith(b"\n") else cut[-lines:]
    return size + len(data) - len(b"\n".join(keep))


def show_log(db: Database, name: str, number: int, out: TextIO, *, follow: bool = False, tail: int | None = None,
             wait: Callable[[float], None] = time.sleep) -> int:
    """Print trial NAME#N's log (the last `tail` lines); `follow`: keep printing what it appends until the trial
    ends. Returns the number of bytes printed."""
    study, row = _row(db, name, number)
    if row is None:
        raise _no_trial(db, study, number)
    if not row.log_path:
        raise OrchError(f"trial {name}#{number} ({row.state}) has no log: it never started "
                        f"({row.exit_reason or 'no job'})")
    path = Path(row.log_path)
    if not path.exists() and row.state not in LIVE_STATES:
        host = (row.controller or "").split(":", 1)[0] or "the controller's host"
        raise OrchError(f"trial {name}#{number}'s log {path} is not on this machine (fix: the log lies on "
                        f"{host}, where its controller ran; run `orch trial logs` there)")
    offset, printed = 0, 0
    if path.exists() and tail is not None:
        offset = _tail_start(path, tail)
    while True:
        state = _state(db, row.id) if follow else None
        if path.exists():
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
            if data:
                offset += len(data)
                printed += len(data)
                out.write(data.decode("utf-8", errors="replace"))
                out.flush()
        if not follow or state not in LIVE_STATES:  # read once more after the state said it ended: nothing lost
            return printed
        wait(FOLLOW_POLL_S)


def _state(db: Database, row_id: int) -> str:
    with db.session() as s:
        return s.scalar(select(TrialRow.state).where(TrialRow.id == row_id))


__all__ = ["parse_trial_ref", "trial_list", "render_trial_list", "trial_show", "render_trial_show", "show_log"]
