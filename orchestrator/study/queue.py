"""Which Optuna trial a free slot takes: a queued (WAITING) trial this controller may run, else a new one.

`Study.ask()` pops the oldest WAITING trial, whoever queued it. Extra runs (`orch study confirm`,
`early-exit`, `baseline`) queue trials that carry the user attr `batch`; only the controller of that batch
may run them, and they do not count against the study's budget. So both controllers claim trials here:
the search controller every WAITING trial without a batch, a batch controller its own, in the order it
chooses (`claim`). Claiming is Optuna's own step (WAITING -> RUNNING with `set_trial_state_values`, which
refuses a trial someone else claimed first), so our tables and Optuna's stay in agreement.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Iterable

import optuna
from optuna.distributions import BaseDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from db import EventRow, TrialRow

from ..config.study import StudySpec
from ..records import variant_key
from .trials import enqueued_params, fail_waiting, stored_trial, trial_id

if TYPE_CHECKING:
    from .lifecycle import OpenStudy


def _now() -> datetime:
    return datetime.now(timezone.utc)

BATCH_ATTR = "batch"  # user attr: id of the orch_batches row an extra run belongs to

#: user attrs a retry keeps from the trial it re-runs (extra runs: their kind, batch and early-exit settings)
#: a retry of an extra run stays one: its kind and batch, and what its batch planned for it (early exit, step cut,
#: the unmodified trainer, its place in a paired ABBA block)
CARRIED_ATTRS = ("kind", "batch", "batch_index", "early_exit", "step_cut", "unmodified", "paired_block",
                 "paired_machine", "paired_pos", "paired_role")


def batch_of(trial: FrozenTrial) -> int | None:
    batch = trial.user_attrs.get(BATCH_ATTR)
    return int(batch) if batch is not None else None


def is_search_trial(trial: FrozenTrial) -> bool:
    return batch_of(trial) is None


def waiting_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study._storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,))


def claim(study: optuna.Study, dists: dict[str, BaseDistribution],
          candidates: Iterable[FrozenTrial]) -> optuna.Trial | None:
    """Take the first of `candidates` (WAITING trials) nobody else took; None when all are gone."""
    storage = study._storage
    for frozen in candidates:
        try:
            if not storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                continue
        except UpdateFinishedTrialError:
            continue
        return _with_params(study, frozen._trial_id, dists)
    return None


def next_trial(study: optuna.Study, dists: dict[str, BaseDistribution],
               accept: Callable[[FrozenTrial], bool] = is_search_trial) -> optuna.Trial:
    """What `Study.ask(dists)` does, except that WAITING trials `accept` refuses stay queued."""
    waiting = waiting_trials(study)
    if all(accept(t) for t in waiting):
        return study.ask(dists)  # the common case: Optuna's own path
    trial = claim(study, dists, [t for t in waiting if accept(t)])
    if trial is not None:
        return trial
    return _with_params(study, study._storage.create_new_trial(study._study_id), dists)


def _with_params(study: optuna.Study, trial_id: int, dists: dict[str, BaseDistribution]) -> optuna.Trial:
    study._thread_local.cached_all_trials = None  # as ask() does: the sampler must see the trials in flight
    trial = optuna.Trial(study, trial_id)
    for name, dist in dists.items():
        trial._suggest(name, dist)  # a queued trial's fixed params, else the sampler's values (as ask() does)
    return trial


def enqueue_retry(study: optuna.Study, row: TrialRow, max_retries: int, spec: StudySpec | None = None,
                  avoid_machine: str | None = None) -> bool:
    """Queue a re-run of `row` unless one exists or its retries are spent. True when one was queued.
    `avoid_machine`: the retry prefers a slot of another machine (the trial hung there)."""
    if row.attempt > max_retries:
        return False
    for frozen in study.get_trials(deepcopy=False):
        if frozen.user_attrs.get("retry_of") == row.number:
            return False
    params = dict(row.params)
    if spec is not None:
        params = {k: v for k, v in params.items() if k in spec.parameters}
    else:
        sampled = stored_trial(study, row.optuna_trial_id).params if row.optuna_trial_id is not None else {}
        params = {k: v for k, v in params.items() if k in sampled} or params
    original = stored_trial(study, row.optuna_trial_id).user_attrs if row.optuna_trial_id is not None else {}
    carried = {k: v for k, v in original.items() if k in CARRIED_ATTRS}  # a retry of an extra run stays one
    if avoid_machine is not None:
        carried["avoid_machine"] = avoid_machine
    study.enqueue_trial(params, user_attrs={**carried, "retry_of": row.number, "attempt": row.attempt + 1,
                                            "repeat_index": row.repeat_index}, skip_if_exists=False)
    return True


def cancel_queued(session, study: "OpenStudy", frozen: FrozenTrial, note: str) -> None:
    """Take a queued (WAITING) trial off the queue: Optuna FAIL (exit reason `cancelled`) and a `cancelled` row of
    ours, in `session`'s transaction (the caller holds the study's lease)."""
    fail_waiting(study.optuna, frozen, "cancelled")
    attrs, params = frozen.user_attrs, enqueued_params(frozen)
    session.add(TrialRow(study_id=study.row.id, number=frozen.number, optuna_trial_id=trial_id(frozen), round=0,
                         variant=variant_key(params), params=params, state="cancelled", exit_reason="cancelled",
                         note=note, retry_of=attrs.get("retry_of"), attempt=int(attrs.get("attempt", 1)),
                         repeat_index=int(attrs.get("repeat_index", 0)), ended_at=_now()))
    session.add(EventRow(study_id=study.row.id, trial_number=frozen.number, kind="trial.state", old="queued",
                         new="cancelled", message=note))
