"""The log of a counted run for the record folder: the file the run wrote when it is on this machine, else the
run rebuilt from the database's metric points in this project's log format (human step lines and `@@metrics`
JSON, which `orch parse-log` reads back to the same outcome), marked as rebuilt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import select

from db import Database, MetricPointRow, StudyRow, TrialRow


def _rebuilt(db: Database, study: StudyRow, record: dict[str, Any]) -> str:
    with db.session() as s:
        trial_id = s.scalar(select(TrialRow.id).where(TrialRow.study_id == study.id,
                                                      TrialRow.number == record["number"]))
        points = list(s.scalars(select(MetricPointRow).where(MetricPointRow.trial_id == trial_id)
                                .order_by(MetricPointRow.step, MetricPointRow.kind)))
    metrics = {k[len("metrics."):]: v for k, v in record.items() if k.startswith("metrics.") and v is not None}
    versions = record.get("versions")
    versions = json.loads(versions) if isinstance(versions, str) else (versions or {})
    lines = [f"# trial {record['number']} of study {study.name}: rebuilt from the results database (the run's own "
             "log is not on this machine); orch parse-log reads it back",
             "@@metrics " + json.dumps({"event": "start", "versions": versions, "gpu_name": record.get("gpu_model"),
                                        "world_size": record.get("gpu_count")})]
    for p in points:
        if p.kind == "val" and p.val_loss is not None:
            lines.append(f"step:{p.step}/{p.total_steps} val_loss:{p.val_loss:.4f} train_time:{p.train_time_ms or 0:.0f}ms "
                         f"step_avg:{p.step_avg_ms or 0:.2f}ms")
        event = {"event": p.kind, "step": p.step, "total_steps": p.total_steps}
        for key in ("val_loss", "train_loss", "train_time_ms", "step_avg_ms"):
            if getattr(p, key) is not None:
                event[key] = getattr(p, key)
        lines.append("@@metrics " + json.dumps(event))
    final = {"event": "final", "step": int(metrics["steps"]) if "steps" in metrics else None,
             "total_steps": points[-1].total_steps if points else None, **metrics,
             "exit_reason": record.get("exit_reason"), "gpu_name": record.get("gpu_model"),
             "world_size": record.get("gpu_count"), "versions": versions}
    lines.append("@@metrics " + json.dumps(final))
    return "\n".join(lines) + "\n"


def run_log(db: Database, study: StudyRow, record: dict[str, Any]) -> tuple[str, bool]:
    """(the log's text, whether it was rebuilt from the database)."""
    path = record.get("log_path")
    if path and Path(path).is_file():
        return Path(path).read_text(encoding="utf-8", errors="replace"), False
    return _rebuilt(db, study, record), True
