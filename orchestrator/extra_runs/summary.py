"""What an extra-runs command prints when its batch has finished: per variant (runs, mean, std, hit rate,
one-sided t-test p-value) for confirmation and baseline batches, per run (exit step, time) for early exit;
as text or as JSON (`--json`)."""

from __future__ import annotations

import math
from typing import Any

from db import BatchRow, Database, StudyRow

from ..config.study import StudySpec
from ..export.records import full_records
from ..export.report import STATS_KINDS, Variant, md_table, study_variants
from ..export.tables import _fmt


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


def _p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def _pm(mean: float | None, std: float | None, runs: int) -> str:
    if mean is None:
        return ""
    return _fmt(mean) + (f" ± {_fmt(std)}" if runs > 1 and std is not None else "")


def render_summary(summary: dict[str, Any]) -> str:
    kind, metric = summary["kind"], summary["objective"]
    cmetric = summary["target"].split()[0] if summary["target"] else None
    title = {"confirmation": "Confirmation runs", "early_exit": "Early-exit runs", "baseline": "Baseline runs"}[kind]
    lines = [f"{title} of study {summary['study']!r} (batch #{summary['batch']}"
             + (", resumed" if summary["resumed"] else "") + f"; target {summary['target'] or 'none'}):", ""]
    if summary["variants"]:
        cols = ["variant", "runs", "hit rate", f"{metric} mean ± std"]
        cols += [f"{cmetric} mean ± std", f"p ({summary['target']})"] if cmetric else []
        cols += ["all runs: runs", "hit rate", "p"] if cmetric else ["all runs: runs"]
        rows = []
        for v in summary["variants"]:
            b, a = v["batch"], v.get("all_runs")
            label = ",".join(f"{k}={_fmt(x)}" for k, x in v["params"].items())
            cells = [label, str(b["runs"]), f"{b['hits']}/{b['runs']}", _pm(b["mean"], b["std"], b["runs"])]
            if cmetric:
                cells += [_pm(b["mean_metric"], b["std_metric"], b["runs"]), _p(b["p_value"])]
                cells += [str(a["runs"]), f"{a['hits']}/{a['runs']}", _p(a["p_value"])] if a else ["", "", ""]
            else:
                cells += [str(a["runs"]) if a else ""]
            rows.append(cells)
        lines += md_table(cols, rows) + [""]
    cols = ["trial", "machine", "slot", metric, *([cmetric] if cmetric else []), "hit", "state"]
    if kind == "early_exit":
        cols[4 + bool(cmetric):4 + bool(cmetric)] = ["exit step", "exit reason"]
    rows = []
    for r in summary["runs"]:
        cells = [str(r["trial"]), r["machine"] or "", r["slot"] or "", _fmt(r[metric])]
        cells += [_fmt(r[cmetric])] if cmetric else []
        if kind == "early_exit":
            cells += [_fmt(r["steps"]), r["exit_reason"] or ""]
        cells += [{True: "✓", False: "✗"}.get(r["hit"], ""), r["state"] + (f" (retry of {r['retry_of']})"
                                                                          if r["retry_of"] is not None else "")]
        rows.append(cells)
    lines += md_table(cols, rows)
    complete = [r for r in summary["runs"] if r["state"] == "complete"]
    if kind == "early_exit" and complete:
        early = [r for r in complete if r["exit_reason"] == "early_exit"]
        steps = sorted(int(r["steps"]) for r in complete if r["steps"] is not None)
        mean = sum(r[metric] for r in complete) / len(complete)
        lines += ["", f"{len(early)} of {len(complete)} complete runs stopped at the target; mean {metric} "
                  f"{_fmt(mean)}" + (f", exit step {steps[0]} to {steps[-1]}" if steps else "") + "."]
    return "\n".join(lines)
