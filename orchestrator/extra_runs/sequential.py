"""`orch study confirm NAME` (sequential, the default): confirmation runs of one variant, added look by look
until the track's test passes or can no longer pass within the maximum (orchestrator/certify/sequential.py).

Order, crash-safe: the design is computed and stored in the batch row (`args.plan`) before any run is queued;
then, look by look, the runs up to the look are queued and run (`controller.run_batch`), and the look is read from the
batch's runs in plan order. A decision is a function of the batch's runs, so a killed command, run again with
its arguments, reads the same looks and goes on where it stopped. Runs lost to a machine are re-run as recorded
retries (the study's `retries`); a run that failed (diverged, crashed) counts and stops the plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from db import BatchRow, Database, EventRow, StudyRow

from ..study import lease
from ..analysis.pick import study_pick
from ..analysis.results import STATS_KINDS, full_records, study_variants
from ..certify.evidence import certify_variant, choose_track, study_plans, study_target
from ..certify.sequential import SequentialPlan, decide, design, look_schedule
from ..certify.tracks import CertifyError
from ..config.errors import OrchError
from ..config.fleet import Fleet
from ..config.study import StudySpec
from ..records import variant_key
from ..fleet.preflight import check_fleet_fits
from ..study.lifecycle import load_study_row, open_study
from . import batches
from .controller import run_batch
from .selection import arg_error, check_job, checked_params, pick_variant, study_params


@dataclass
class SequentialRequest:
    name: str
    command: str
    args: dict[str, Any]  # the command's arguments (recognise a re-run)
    params: dict[str, Any] | None  # None when the open batch resumes
    plan: SequentialPlan | None
    settings: dict[str, Any]


def _pick_rule_variant(db: Database, row: StudyRow, spec: StudySpec) -> dict[str, Any] | None:
    """`best`: the one pick rule's variant (analysis/pick.py), when it names a variant that has runs."""
    records = [r for r in full_records(db, row) if r["state"] != "invalid" and r["kind"] in STATS_KINDS]
    rec = study_pick(spec, records)
    if rec is None or rec.params is None:
        return None
    for r in records:
        if all(isinstance(r.get(f"params.{k}"), (int, float)) and abs(float(r[f"params.{k}"]) - v) < 1e-9
               for k, v in rec.params.items()):
            return checked_params(spec, study_params(spec, {n: r.get(f"params.{n}") for n in spec.all_names()}),
                                  "--variant")
    return None


def _planning_sigma(spec: StudySpec, records: list[dict[str, Any]], metric: str) -> float | None:
    hint = spec.sampler.options.get("noise_std") if isinstance(spec.sampler.options, dict) else None
    if isinstance(hint, (int, float)) and hint > 0:
        return float(hint)
    pooled, df = 0.0, 0
    by_variant: dict[str, list[float]] = {}
    for r in records:
        value = r.get(f"metrics.{metric}")
        if r["state"] == "complete" and isinstance(value, (int, float)) and math.isfinite(value):
            by_variant.setdefault(r["variant"], []).append(float(value))
    for values in by_variant.values():
        if len(values) >= 2:
            mean = sum(values) / len(values)
            pooled += sum((v - mean) ** 2 for v in values)
            df += len(values) - 1
    return math.sqrt(pooled / df) if df and pooled > 0 else None


def sequential_request(db: Database, name: str, variant: str, max_runs: int, first_look: int,
                       look_every: int | None, track: str | None, best_score: float | None, sigma: float | None,
                       effect: float | None) -> SequentialRequest:
    row = load_study_row(db, name)
    spec = StudySpec.model_validate(row.spec)
    every = look_every or spec.budget.parallel or 2
    args = {"mode": "sequential", "variant": variant.strip(), "max_runs": max_runs, "first_look": first_look,
            "look_every": every, "track": track, "best_score": best_score, "sigma": sigma, "effect": effect}
    command = f"orch study confirm {name}"
    batch = batches.open_batch(db, row.id, "confirmation")
    if batch is not None and batches.command_args(batch.args) == args:
        return SequentialRequest(name, command, args, None, None, {})
    try:
        looks = look_schedule(first_look, every, max_runs)
    except ValueError as exc:
        raise arg_error("--first-look", str(exc), "give --first-look between 2 and --max-runs") from None
    settings = {"best_score": best_score} if best_score is not None else {}
    try:
        choice = choose_track(spec, [], track, settings)
    except CertifyError as exc:
        raise arg_error("--track", str(exc), "name the track: --track modded-nanogpt|parameter-golf|nanochat") from None
    if choice is None:
        raise arg_error("--track", "the study has no constraint a track's rule could test (e.g. val_loss <= 3.28)",
                        "name the track: --track modded-nanogpt|parameter-golf|nanochat")
    params = _pick_rule_variant(db, row, spec) if variant.strip() == "best" else None
    params = params or pick_variant(db, row, spec, variant)
    check_job(spec, name, params, None, "--variant")
    records = [r for r in full_records(db, row) if r["state"] != "invalid"]
    metric = choice.track.metric
    try:
        null = choice.track.null_value(choice.settings, study_target(spec, metric))
    except CertifyError as exc:
        raise arg_error("--best-score", str(exc), "pass --best-score") from None
    if sigma is None:
        sigma = _planning_sigma(spec, records, metric)
        if sigma is None:
            raise arg_error("--sigma", f"no variant of the study has two runs to measure the run-to-run std of {metric}",
                            "give the std of repeated runs, e.g. --sigma 0.0015")
    key = variant_key(params)
    below = choice.track.below
    if effect is None:
        mine = [v for v in study_variants(spec, [r for r in records if r["kind"] in STATS_KINDS]) if v.key == key]
        seen = (null - mine[0].stats.mean_metric) * (1 if below else -1) if mine else 0.0
        effect = seen if seen > 0 else sigma
    try:
        plan = design(track=choice.track.name, rule=choice.track.rule_text(choice.settings, null), metric=metric,
                      null_value=null, below=below, alpha=choice.settings.alpha, looks=looks, planning_effect=effect,
                      planning_sigma=sigma)
    except ValueError as exc:
        raise arg_error("--sigma/--effect", str(exc), "give positive numbers") from None
    return SequentialRequest(name, command, args, params, plan, choice.settings.model_dump())


def _batch_values(db: Database, row: StudyRow, batch: BatchRow, metric: str) -> tuple[list[float], list[dict], list[dict]]:
    """(values of the counted runs in plan order, failed runs, lost runs) of the batch."""
    mine = [r for r in full_records(db, row) if r.get("user_attrs.batch") == batch.id and r["state"] != "invalid"]
    mine.sort(key=lambda r: (r.get("user_attrs.batch_index", 0), r["number"]))
    values, failed, lost = [], [], []
    for r in mine:
        value = r.get(f"metrics.{metric}")
        if r["state"] == "complete" and isinstance(value, (int, float)) and math.isfinite(value):
            values.append(float(value))
        elif r["state"] in ("complete", "failed"):
            failed.append(r)
        elif r["state"] == "lost":
            lost.append(r)
    return values, failed, lost


def _event(db: Database, study_id: int, kind: str, message: str) -> None:
    with db.session() as s:
        s.add(EventRow(study_id=study_id, kind=kind, message=message))


def run_sequential(db: Database, name: str, fleet: Fleet, request: SequentialRequest, reporter,
                   heartbeat_s: float | None = None, signals: bool = False) -> dict[str, Any]:
    from .commands import reporter_message
    from .summary import batch_summary

    row = load_study_row(db, name)
    spec = StudySpec.model_validate(row.spec)
    check_fleet_fits(fleet, spec)
    batch = batches.open_batch(db, row.id, "confirmation")
    resumed = batches.check_resumable(batch, request.args, request.command)
    owner = lease.controller_id()
    lease.acquire(db, row.id, owner)
    try:
        if not resumed:
            plan = request.plan
            args = {**request.args, "plan": plan.to_json(), "variant_key": variant_key(request.params),
                    "track_settings": request.settings}
            batch = batches.create_batch(db, row, "confirmation", args,
                                         batches.plan_runs([request.params], plan.max_runs))
            _event(db, row.id, "confirm.plan", f"confirmation batch #{batch.id}: {plan.summary()}")
        plan = SequentialPlan.from_json(batch.args["plan"])
        reporter_message(reporter, f"{'resuming' if resumed else 'planned'} sequential confirmation batch "
                         f"#{batch.id}: {plan.summary()}")
        opened = open_study(db, name)
        read: set[int] = set()
        while True:
            values, failed, _ = _batch_values(db, row, batch, plan.metric)
            decision = decide(plan, values, len(failed))
            if decision.look and decision.look not in read:
                read.add(decision.look)
                _event(db, row.id, "confirm.look", f"confirmation batch #{batch.id}: {decision.text}")
                reporter_message(reporter, decision.text)
            if decision.final:
                batches.close_batch(db, batch)
                break
            target = plan.looks[decision.look] if decision.look else plan.looks[0]
            lease.acquire(db, row.id, owner)
            batches.enqueue_missing(opened.optuna, batch, None, limit=target)
            run_batch(db, name, fleet, batch_id=batch.id, batch_size=target, reporter=reporter, command=request.command,
                      resume_hint=" to go on", heartbeat_s=heartbeat_s, signals=signals)
            values, failed, lost = _batch_values(db, row, batch, plan.metric)
            if len(values) + len(failed) < target:
                raise OrchError(f"confirmation batch #{batch.id}: look at {target} runs cannot be read: "
                                f"{target - len(values) - len(failed)} planned run(s) were lost to the infrastructure "
                                f"more often than the study's retries ({spec.retries}) allow (fix: bring the machines "
                                f"back, see `orch fleet status`, then run `{request.command}` with the same "
                                "arguments again)")
    finally:
        lease.release(db, row.id, owner)
    with db.session() as s:
        batch = s.get(BatchRow, batch.id)
    row = load_study_row(db, name)
    summary = batch_summary(db, row, batch, resumed)
    values, failed, _ = _batch_values(db, row, batch, plan.metric)
    final = decide(plan, values, len(failed))
    summary["plan"] = plan.to_json()
    summary["plan_text"] = plan.summary()
    summary["decision"] = {"look": final.look, "n": final.n, "p_value": final.p_value, "decision": final.decision,
                           "text": final.text}
    records = [r for r in full_records(db, row) if r["state"] != "invalid"]
    plans = study_plans(db, row)
    choice = choose_track(spec, plans)
    ref = next((p for p in plans if p.batch == batch.id), None)
    cert = certify_variant(spec, records, batch.args["variant_key"], choice, ref)
    summary["certification"] = {"passed": cert.passed, "verdict": cert.verdict(), "runs": cert.numbers}
    return summary
