"""The three extra-runs commands end to end: check the arguments (nothing is written on error), plan or resume
the batch, run it (`controller.run_batch`: the study's controller fed by `BatchTrials`), close it and return its
summary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from db import BatchRow, Database, StudyRow

from ..study import lease
from ..config.errors import OrchError
from ..config.fleet import Fleet
from ..config.study import StudySpec, early_exit_templates
from ..run.controller import Progress
from ..jobs import format_value
from ..fleet.preflight import check_fleet_fits
from ..study.lifecycle import load_study_row, open_study
from . import batches
from .controller import run_batch
from .selection import arg_error, check_job, parse_params, pick_top, pick_variant
from .summary import batch_summary

Reporter = Callable[[Progress, str], None]


@dataclass
class Request:
    """A checked command: what its batch runs."""

    kind: str
    command: str  # how the user re-runs it, for messages
    args: dict[str, Any]  # recognises a re-run of the same command
    variants: list[dict[str, Any]]  # parameters of each variant, in order (none needed when the open batch resumes)
    repeats: int
    extra_attrs: dict[str, Any] | None = None  # user attrs of every trial (early_exit: target, max_steps)
    planned: list[dict[str, Any]] | None = None  # the runs, planned by the caller (else variants x repeats)
    plan_args: dict[str, Any] | None = None  # stored with the arguments (batches.PLAN_KEYS), fixed at creation


def _study(db: Database, name: str) -> tuple[StudyRow, StudySpec]:
    row = load_study_row(db, name)
    return row, StudySpec.model_validate(row.spec)


def _resuming(db: Database, row: StudyRow, kind: str, args: dict[str, Any]) -> bool:
    """The same command's batch is open: it resumes with its own plan (the ranking may have moved since)."""
    batch = batches.open_batch(db, row.id, kind)
    return batch is not None and batches.command_args(batch.args) == args


def confirm_request(db: Database, name: str, top: int, repeats: int) -> Request:
    row, spec = _study(db, name)
    args = {"top": top, "repeats": repeats}
    variants = [] if _resuming(db, row, "confirmation", args) else pick_top(db, row, spec, top)
    for params in variants:
        check_job(spec, name, params, None, "--top")
    return Request("confirmation", f"orch study confirm {name}", args, variants, repeats)


def baseline_request(db: Database, name: str, params_text: str, repeats: int) -> Request:
    row, spec = _study(db, name)
    params = parse_params(spec, params_text)
    check_job(spec, name, params, None, "--params")
    canonical = ",".join(f"{k}={format_value(v)}" for k, v in params.items())
    return Request("baseline", f"orch study baseline {name}", {"params": canonical, "repeats": repeats}, [params], repeats)


def early_exit_request(db: Database, name: str, variant: str, max_steps: int, runs: int,
                       target: float | None) -> Request:
    row, spec = _study(db, name)
    if early_exit_templates(spec) is None:
        raise OrchError(f"study {name!r} does not say how its trainer (log format {spec.trainer.log_format!r}) exits "
                        "at the target (fix: add `trainer.early_exit: {flags: {--your-flag: \"{target}\", "
                        "--max-steps-flag: \"{max_steps}\"}}` to the study file and create the study from it again)")
    if target is None:
        if not spec.objective.constraints:
            raise arg_error("--target", "the study has no constraint to take the target from",
                            "give the target, e.g. --target 3.28")
        target = spec.objective.constraints[0].threshold
    settings = {"target": float(target), "max_steps": int(max_steps)}
    args = {"variant": variant.strip(), "max_steps": max_steps, "runs": runs, "target": float(target)}
    if _resuming(db, row, "early_exit", args):
        return Request("early_exit", f"orch study early-exit {name}", args, [], runs, {"early_exit": settings})
    params = pick_variant(db, row, spec, variant)
    check_job(spec, name, params, settings, "--variant")
    return Request("early_exit", f"orch study early-exit {name}", args, [params], runs, {"early_exit": settings})


def run_request(db: Database, name: str, fleet: Fleet, request: Request, reporter: Reporter,
                heartbeat_s: float | None = None, signals: bool = False) -> dict[str, Any]:
    """Plan (or resume) the request's batch, run it to the end, and return its summary (`summary.batch_summary`).
    `signals`: SIGINT/SIGTERM stop the batch cleanly (its running trials are re-queued for the next run)."""
    row = load_study_row(db, name)
    check_fleet_fits(fleet, StudySpec.model_validate(row.spec))  # as the controller would, but before any write
    batch = batches.open_batch(db, row.id, request.kind)
    resumed = batches.check_resumable(batch, request.args, request.command)
    owner = lease.controller_id()
    lease.acquire(db, row.id, owner)  # refuses before anything is written while another controller runs the study
    try:
        if not resumed:
            runs = request.planned if request.planned is not None else batches.plan_runs(request.variants,
                                                                                         request.repeats)
            batch = batches.create_batch(db, row, request.kind, {**request.args, **(request.plan_args or {})}, runs)
        assert batch is not None
        opened = open_study(db, name)
        queued = batches.enqueue_missing(opened.optuna, batch, request.extra_attrs)
        what = f"{request.kind} batch #{batch.id}"
        reporter_message(reporter, f"{'resuming' if resumed else 'queued'} {what}: {len(batch.runs)} runs"
                         + (f" ({queued} queued now)" if resumed and queued else ""))
        run_batch(db, name, fleet, batch_id=batch.id, batch_size=len(batch.runs), reporter=reporter,
                  command=request.command, resume_hint=f" to finish {what}", heartbeat_s=heartbeat_s, signals=signals)
        if not batches.unfinished(opened.optuna, batch):
            batches.close_batch(db, batch)
    finally:
        lease.release(db, row.id, owner)
    return batch_summary(db, load_study_row(db, name), _reload(db, batch.id), resumed)


def reporter_message(reporter: Reporter, message: str) -> None:
    reporter(Progress(study="", max_trials=0), message)


def _reload(db: Database, batch_id: int) -> BatchRow:
    with db.session() as s:
        return s.get(BatchRow, batch_id)
