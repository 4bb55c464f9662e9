"""`orch study step-cut NAME --baseline ... --runs N`: the baseline run with fewer steps, to answer "would cutting
steps from the baseline give the same time at the same loss?" (orchestrator/certify/step_cut.py).

The step counts are planned from the study's own runs unless `--steps` names them: the baseline's full step count
(the `steps` metric of its complete runs) scaled by the candidate's mean time over the baseline's, and 4% either
side, so the cut runs' times bracket the candidate's. Each count runs `--runs` times (kind `step_cut`, user attr
`step_cut` = the count); the study's `trainer.steps` templates tell the trainer the count.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from db import Database

from ..analysis.results import STATS_KINDS, full_records
from ..certify.step_cut import plan_steps, step_cut
from ..config.errors import OrchError
from ..config.fleet import Fleet
from ..config.study import StudySpec
from ..jobs import InvalidParams, build_job, resolve_values
from ..records import variant_key
from ..study.lifecycle import load_study_row
from .commands import Request, run_request
from .selection import arg_error, check_job, parse_params, pick_variant
from .sequential import _pick_rule_variant

KIND = "step_cut"
MAX_LEVELS = 20


def _complete(records: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return [r for r in records if r["variant"] == key and r["state"] == "complete" and r["kind"] in STATS_KINDS
            and r.get("value") is not None and r.get("user_attrs.paired_block") is None]


def _steps_text(text: str) -> list[int]:
    counts = []
    for piece in [p.strip() for p in text.split(",") if p.strip()]:
        if not piece.isdigit() or int(piece) < 1:
            raise arg_error("--steps", f"{piece!r} is not a positive whole number", "write step counts like 1400,1450")
        counts.append(int(piece))
    if not counts or len(counts) > MAX_LEVELS:
        raise arg_error("--steps", f"give 1 to {MAX_LEVELS} step counts", "write step counts like 1400,1450")
    return sorted(set(counts))


def step_cut_request(db: Database, name: str, variant: str, baseline: str, runs: int, steps: str | None) -> Request:
    row = load_study_row(db, name)
    spec = StudySpec.model_validate(row.spec)
    command = f"orch study step-cut {name}"
    args = {"variant": variant.strip(), "baseline": baseline.strip(), "runs": runs, "steps": steps}
    if spec.trainer.steps is None:
        raise OrchError(f"study {name!r} does not say how its trainer is told its step count (fix: add "
                        "`trainer.steps: {flags: {--num-steps: \"{steps}\"}}` (or `env:`) to the study file and create "
                        "the study from it again)")
    from . import batches

    batch = batches.open_batch(db, row.id, KIND)
    if batch is not None and batches.command_args(batch.args) == args:
        return Request(KIND, command, args, [], runs)
    candidate = (_pick_rule_variant(db, row, spec) if variant.strip() == "best" else None) or pick_variant(
        db, row, spec, variant)
    base = parse_params(spec, baseline, "--baseline") if "=" in baseline else pick_variant(db, row, spec, baseline)
    records = [r for r in full_records(db, row) if r["state"] != "invalid"]
    base_runs, cand_runs = _complete(records, variant_key(base)), _complete(records, variant_key(candidate))
    full = [int(float(r["metrics.steps"])) for r in base_runs if r.get("metrics.steps") is not None]
    if steps is not None:
        counts = _steps_text(steps)
    else:
        if not full:
            raise arg_error("--baseline", "the baseline has no complete run that reports its step count (metric "
                            "`steps`)", f"run it first: orch study baseline {name} --params '...' --repeats 2, or "
                            "give --steps")
        if not cand_runs:
            raise arg_error("--variant", "the candidate has no complete run to take its time from",
                            "confirm it first, or give --steps")
        base_time = statistics.fmean(float(r["value"]) for r in base_runs)
        cand_time = statistics.fmean(float(r["value"]) for r in cand_runs)
        try:
            counts = plan_steps(int(statistics.median(full)), base_time, cand_time)
        except ValueError as exc:
            raise arg_error("--variant", str(exc), "pick a faster variant, or give --steps") from None
    try:
        values = resolve_values(spec, base)
        for count in counts:
            build_job(spec, name, 0, 0, values, environ={}, steps=count)
    except (InvalidParams, ValueError, KeyError) as exc:
        raise arg_error("--steps", f"the job cannot be built: {exc}", "check the study's trainer.steps templates") from None
    check_job(spec, name, base, None, "--baseline")
    planned = [{"params": base, "variant": variant_key(base), "repeat": r, "kind": KIND, "attrs": {"step_cut": c}}
               for r in range(runs) for c in counts]
    plan_args = {"candidate_key": variant_key(candidate), "baseline_key": variant_key(base), "step_counts": counts}
    return Request(KIND, command, args, [base], runs, planned=planned, plan_args=plan_args)


def run_step_cut(db: Database, name: str, fleet: Fleet, request: Request, reporter, signals: bool = False) -> dict:
    summary = run_request(db, name, fleet, request, reporter, signals=signals)
    row = load_study_row(db, name)
    spec = StudySpec.model_validate(row.spec)
    args = summary["args"]
    constraint = spec.objective.constraints[0] if spec.objective.constraints else None
    if constraint is not None:
        result = step_cut([r for r in full_records(db, row) if r["state"] != "invalid"], args["candidate_key"],
                          args["baseline_key"], constraint.metric, spec.objective.metric, below=constraint.op == "<=")
        if result is not None:
            summary["step_cut"] = {"beats": result.beats(), "difference": result.difference,
                                   "interval": result.interval, "predicted": result.predicted_metric,
                                   "candidate": result.candidate_metric, "text": result.text(),
                                   "time_at_candidate_metric": None if result.time_at_candidate_metric is None
                                   or not math.isfinite(result.time_at_candidate_metric)
                                   else result.time_at_candidate_metric}
    return summary
