"""What an extra-runs command reports when its batch has finished: per variant (runs, mean, std, hit rate,
one-sided t-test p-value) for confirmation and baseline batches, per run (exit step, time) for early exit.
The summary is plain data (`--json` prints it); `export/batches.py` renders it as text."""

from __future__ import annotations

import math
from typing import Any

from db import BatchRow, Database, StudyRow

from ..config.study import StudySpec
from ..analysis.results import STATS_KINDS, Variant, full_records, study_variants


def _number(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _variant_json(v: Variant) -> dict[str, Any]:
    s = v.stats
    return {"runs": s.runs, "hits": s.hits, "hit_rate": s.hit_rate, "mean": v.mean, "std": v.std,
            "mean_metric": _number(s.mean_metric), "std_metric": _number(s.std_metric), "p_value": _number(s.p_value),
            "trials": v.numbers}


def batch_summary(db: Database, study: StudyRow, batch: BatchRow, resumed: bool) -> dict[str, Any]:
    spec = StudySpec.model_validate(study.spec)
    records = [r for r in full_records(db, study) if r["state"] != "invalid"]
    mine = [r for r in records if r.get("user_attrs.batch") == batch.id]
    constraint = spec.objective.constraints[0] if spec.objective.constraints else None
    runs = []
    for r in mine:
        runs.append({"trial": r["number"], "batch_index": r.get("user_attrs.batch_index"), "state": r["state"],
                     "machine": r.get("machine"), "slot": r.get("slot"), "params": study_params(spec, r),
                     spec.objective.metric: r["value"],
                     **({constraint.metric: r.get(f"metrics.{constraint.metric}")} if constraint else {}),
                     "hit": bool(r["feasible"]) if r["state"] == "complete" else None,
                     "steps": r.get("metrics.steps"), "exit_reason": r.get("exit_reason"),
                     "retry_of": r.get("retry_of")})
    out: dict[str, Any] = {"study": study.name, "batch": batch.id, "kind": batch.kind, "state": batch.state,
                           "resumed": resumed, "args": batch.args, "objective": spec.objective.metric,
                           "target": str(constraint) if constraint else None, "runs": runs, "variants": []}
    if batch.kind != "early_exit":
        overall = {v.key: v for v in study_variants(spec, [r for r in records if r["kind"] in STATS_KINDS])}
        for v in study_variants(spec, mine):
            entry = {"variant": v.key, "params": {n: v.params.get(n) for n in spec.parameters}, "batch": _variant_json(v)}
            if v.key in overall:
                entry["all_runs"] = _variant_json(overall[v.key])
            out["variants"].append(entry)
    return out


def study_params(spec: StudySpec, record: dict[str, Any]) -> dict[str, Any]:
    return {n: record.get(f"params.{n}") for n in spec.parameters}
