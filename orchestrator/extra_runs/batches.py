"""A batch of extra runs: planned once in `orch_batches`, queued as Optuna trials, closed when every planned run
has finished. Crash-safe order: batch row (the plan) -> queue the planned runs that have no trial yet -> run.
Running the same command again finds the open batch and queues only what is missing, so nothing is queued twice.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from sqlalchemy import select

from db import BatchRow, Database, EventRow, StudyRow

from ..config.errors import OrchError
from ..records import variant_key
from ..study.queue import BATCH_ATTR, batch_of


def plan_runs(variants: list[dict[str, Any]], repeats: int) -> list[dict[str, Any]]:
    """Run order: every variant once, then every variant again, ... (a round spreads over the variants)."""
    return [{"params": params, "variant": variant_key(params), "repeat": r}
            for r in range(repeats) for params in variants]


def open_batch(db: Database, study_id: int, kind: str) -> BatchRow | None:
    with db.session() as s:
        return s.scalar(select(BatchRow).where(BatchRow.study_id == study_id, BatchRow.kind == kind,
                                               BatchRow.state == "open").order_by(BatchRow.id))


#: what a batch's args hold beside the command's own arguments: the plan fixed when the batch was created
PLAN_KEYS = ("plan", "variant_key", "track_settings", "candidate_key", "baseline_key", "step_counts")


def command_args(args: dict[str, Any]) -> dict[str, Any]:
    """The command's own arguments of a batch's args (the plan stored with them left out)."""
    return {k: v for k, v in args.items() if k not in PLAN_KEYS}


def check_resumable(batch: BatchRow | None, args: dict[str, Any], command: str) -> bool:
    """True when `batch` is this command's unfinished batch (resume it); an open batch with other arguments
    is refused, so that a crashed batch is finished (or knowingly left) before another is queued."""
    if batch is None:
        return False
    if command_args(batch.args) == args:
        return True
    given = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in command_args(batch.args).items()
                     if not isinstance(v, dict) and v is not None and k != "mode")
    raise OrchError(f"an unfinished {batch.kind} batch (#{batch.id}: {given}) of this study was started and not "
                    f"finished (fix: run `{command}` with its arguments to finish it first: {given})")


def create_batch(db: Database, study: StudyRow, kind: str, args: dict[str, Any], runs: list[dict[str, Any]]) -> BatchRow:
    with db.session() as s:
        batch = BatchRow(study_id=study.id, kind=kind, args=args, runs=runs, state="open")
        s.add(batch)
        s.flush()
        s.add(EventRow(study_id=study.id, kind="batch.state", new="open",
                       message=f"{kind} batch #{batch.id}: {len(runs)} runs ({args})"))
    return batch


def batch_trials(study: optuna.Study, batch_id: int) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if batch_of(t) == batch_id]


def enqueue_missing(study: optuna.Study, batch: BatchRow, extra_attrs: dict[str, Any] | None = None,
                    limit: int | None = None) -> int:
    """Queue every planned run of `batch` (the first `limit` of them) that has no Optuna trial yet; returns how
    many were queued. A planned run may carry its own `kind` and user `attrs` (a paired batch's A and B runs)."""
    have = {t.user_attrs.get("batch_index") for t in batch_trials(study, batch.id)}
    queued = 0
    for index, run in enumerate(batch.runs[:limit]):
        if index in have:
            continue
        attrs = {"kind": run.get("kind", batch.kind), BATCH_ATTR: batch.id, "batch_index": index,
                 "repeat_index": run["repeat"], **(extra_attrs or {}), **run.get("attrs", {})}
        study.enqueue_trial(run["params"], user_attrs=attrs, skip_if_exists=False)
        queued += 1
    return queued


def unfinished(study: optuna.Study, batch: BatchRow) -> list[int]:
    """Planned runs (by index) that have no finished trial and nothing queued or running either."""
    trials = batch_trials(study, batch.id)
    busy = {t.user_attrs.get("batch_index") for t in trials if not t.state.is_finished()}
    done = {t.user_attrs.get("batch_index") for t in trials if t.state.is_finished()}
    return [i for i in range(len(batch.runs)) if i not in done or i in busy]


def close_batch(db: Database, batch: BatchRow) -> None:
    with db.session() as s:
        row = s.get(BatchRow, batch.id)
        if row.state != "done":
            row.state, row.finished_at = "done", datetime.now(timezone.utc)
            s.add(EventRow(study_id=row.study_id, kind="batch.state", old="open", new="done",
                           message=f"{row.kind} batch #{row.id} finished"))
    batch.state = "done"
