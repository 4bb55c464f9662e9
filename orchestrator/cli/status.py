"""Status views (`orch study status`, `orch study list`): plain dicts for --json, rendered as tables for people.
`orch fleet status` is in fleet_view.py (it uses the helpers here)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from io import StringIO

from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from db import Database, MetricPointRow, StudyRow, TrialRow

from ..analysis.duty_cycle import duty_lines, study_duty_cycle
from ..config.study import StudySpec
from ..claims import study_waiting
from ..study.lease import holder
from ..liveness.refusals import study_refusals
from ..study.lifecycle import load_study_row, optuna_study_ids


def _age_s(when: datetime | None) -> float | None:
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return round((datetime.now(timezone.utc) - when).total_seconds(), 1)


def _latest_val(db: Database, trial_ids: list[int]) -> dict[int, tuple[int, float]]:
    if not trial_ids:
        return {}
    with db.session() as s:
        newest = (select(MetricPointRow.trial_id, func.max(MetricPointRow.step).label("step"))
                  .where(MetricPointRow.trial_id.in_(trial_ids), MetricPointRow.kind == "val",
                         MetricPointRow.val_loss.is_not(None)).group_by(MetricPointRow.trial_id).subquery())
        rows = s.execute(select(MetricPointRow.trial_id, MetricPointRow.step, MetricPointRow.val_loss).join(
            newest, (MetricPointRow.trial_id == newest.c.trial_id) & (MetricPointRow.step == newest.c.step))
            .where(MetricPointRow.kind == "val")).all()
    return {r.trial_id: (r.step, r.val_loss) for r in rows}


def _running_trials(db: Database, where) -> list[dict]:
    with db.session() as s:
        rows = s.execute(select(TrialRow, StudyRow.name).join(StudyRow).where(TrialRow.state == "running", where)
                         .order_by(TrialRow.number)).all()
    latest = _latest_val(db, [r.TrialRow.id for r in rows])
    out = []
    for row, study in rows:
        step_val = latest.get(row.id)
        out.append({"study": study, "number": row.number, "machine": row.machine, "slot": row.slot,
                    "elapsed_s": _age_s(row.started_at), "heartbeat_age_s": _age_s(row.heartbeat_at),
                    "step": step_val[0] if step_val else None, "val_loss": step_val[1] if step_val else None})
    return out


def study_status(db: Database, name: str) -> dict:
    row = load_study_row(db, name)
    spec = StudySpec.model_validate(row.spec)
    with db.session() as s:
        trials = list(s.scalars(select(TrialRow).where(TrialRow.study_id == row.id)))
    counts = Counter(t.state for t in trials)
    done = [t for t in trials if t.state == "complete" and t.feasible and t.value is not None]
    best = (min if spec.objective.direction == "minimize" else max)(done, key=lambda t: t.value) if done else None
    controller = holder(row)
    return {
        "study": row.name, "status": _status(row.status, controller), "recorded_status": row.status, "objective": f"{spec.objective.direction} {spec.objective.metric}",
        "constraints": [str(c) for c in spec.objective.constraints], "sampler": spec.sampler.name,
        "budget": spec.budget.max_trials, "rounds": row.rounds, "trials": dict(sorted(counts.items())),
        "hits": sum(1 for t in trials if t.state == "complete" and t.feasible),
        "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params,
                                           "machine": best.machine},
        "running": _running_trials(db, TrialRow.study_id == row.id),
        "controller": controller,  # the live holder of the study's lease (study/lease.py), else None
        # machines the study's controller last found getting no trials, and why (liveness/refusals.py)
        "refused_machines": study_refusals(db, row.id),
        # a running study that waits for slots other studies hold: since when, for what (orchestrator/claims)
        "waiting": study_waiting(db, row.id) if controller else None,
        # timed training / machine time, per machine and for the study (analysis/duty_cycle.py)
        "duty_cycle": study_duty_cycle(db, row.id).to_json(),
    }


def render_study_status(view: dict) -> str:
    lines = [f"study {view['study']} [{view['status']}]: {view['objective']}"
             + (f" subject to {', '.join(view['constraints'])}" if view["constraints"] else ""),
             f"sampler {view['sampler']}, budget {view['budget']}, rounds {view['rounds']}, hits {view['hits']}",
             "trials: " + (", ".join(f"{k} {v}" for k, v in view["trials"].items()) or "none")]
    if view["best"]:
        b = view["best"]
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in b["params"].items())
        lines.append(f"best: trial {b['number']} value {b['value']:.4g} on {b['machine']} ({params})")
    for r in view["running"]:
        lines.append(f"running: trial {r['number']} on {r['machine']} {r['slot']} for {r['elapsed_s']}s, "
                     f"step {r['step']}, val_loss {r['val_loss']}")
    if view["controller"]:
        lines.append(f"controller: {view['controller']}")
    elif view["recorded_status"] == "running":
        lines.append("controller: none (the last one ended without recording it, e.g. killed; `orch study run "
                     f"{view['study']}` resumes)")
    if view.get("waiting"):
        w = view["waiting"]
        lines.append(f"waiting: {w['trials']} trial(s) since {w['since']} ({w['waited_s']:.0f}s), for: {w['for']}")
    for r in view.get("refused_machines", []):
        lines.append(f"refused: machine {r['machine']} ({r['kind']}): {r['reason']} (fix: {r['fix']})")
    if view.get("duty_cycle") is not None:
        lines += duty_lines(view["duty_cycle"])
    return "\n".join(lines)


def _status(recorded: str, controller: str | None) -> str:
    """`running` only while a controller holds the lease: one killed without recording its end is `stopped`."""
    return "stopped" if recorded == "running" and controller is None else recorded


def study_list(db: Database) -> list[dict]:
    with db.session() as s:
        studies = list(s.scalars(select(StudyRow).order_by(StudyRow.id)))
        counts = dict(s.execute(select(TrialRow.study_id, func.count()).group_by(TrialRow.study_id)).all())
        in_optuna = optuna_study_ids(s, [r.optuna_study_name for r in studies])
    out = []
    for r in studies:
        gone = r.optuna_study_name not in in_optuna  # deleted with `optuna delete-study` or the dashboard
        controller = holder(r)
        out.append({"study": r.name, "status": "deleted in Optuna" if gone else _status(r.status, controller),
                    "objective": f"{r.direction} {r.objective_metric}", "trials": counts.get(r.id, 0),
                    "rounds": r.rounds, "controller": controller, "deleted_in_optuna": gone,
                    "created_at": r.created_at})
    return out


def _table(columns: list[str], rows: list[list]) -> str:
    table = Table(box=None, pad_edge=False)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    buffer = StringIO()
    Console(file=buffer, width=160, color_system=None).print(table)
    return buffer.getvalue().rstrip()


def render_study_list(view: list[dict]) -> str:
    if not view:
        return "no studies yet (create one: orch study create NAME --from studies/demo.yaml)"
    table = _table(["study", "status", "objective", "trials", "rounds"],
                   [[v["study"], v["status"], v["objective"], v["trials"], v["rounds"]] for v in view])
    gone = [v["study"] for v in view if v.get("deleted_in_optuna")]
    if gone:
        table += (f"\n{', '.join(gone)}: deleted with Optuna's tools; `orch study delete NAME --yes` removes what is "
                  "left, `orch study create NAME --from FILE` makes it anew")
    return table
