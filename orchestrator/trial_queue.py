"""Which Optuna trial a free slot takes: a queued (WAITING) trial this controller may run, else a new one.

`Study.ask()` pops the oldest WAITING trial, whoever queued it. Extra runs (`orch study confirm`,
`early-exit`, `baseline`) queue trials that carry the user attr `batch`; only the controller of that batch
may run them, and they do not count against the study's budget. So both controllers claim trials here:
the search controller every WAITING trial without a batch, a batch controller its own, in the order it
chooses (`claim`). Claiming is Optuna's own step (WAITING -> RUNNING with `set_trial_state_values`, which
refuses a trial someone else claimed first), so our tables and Optuna's stay in agreement.
"""

from __future__ import annotations

from typing import Callable, Iterable

import optuna
from optuna.distributions import BaseDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

BATCH_ATTR = "batch"  # user attr: id of the orch_batches row an extra run belongs to


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
