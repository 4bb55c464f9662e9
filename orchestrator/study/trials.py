"""Operations on a study's stored Optuna trials that the rest of the project needs, in Optuna's terms: a trial's
storage id, a stored trial read back, a trial's curve (what optuna-dashboard plots), a queued trial failed with an
exit reason, the parameters a queued trial was enqueued with, the storage read again, and one transaction for
our rows and Optuna's (a leased study's storage writes through the caller's connection). The private parts of
Optuna's API these need are used here and nowhere outside this package and `samplers/`."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from .leased_storage import LeasedStorage
from .outcomes import ATTR_EXIT_REASON


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The trial's id in Optuna's storage (what our rows keep as `optuna_trial_id`)."""
    return trial._trial_id


def stored_trial(study: optuna.Study, trial_id: int) -> FrozenTrial:
    return study._storage.get_trial(trial_id)


def record_curve(study: optuna.Study, trial_id: int, points: Iterable[tuple[int, float]]) -> None:
    """The trial's intermediate values, step by step."""
    for step, value in points:
        study._storage.set_trial_intermediate_value(trial_id, step, value)


def fail_waiting(study: optuna.Study, frozen: FrozenTrial, exit_reason: str) -> None:
    """A queued (WAITING) trial ends FAIL with `exit_reason` (also as the user attr optuna-dashboard shows)."""
    storage = study._storage
    storage.set_trial_system_attr(frozen._trial_id, ATTR_EXIT_REASON, exit_reason)
    storage.set_trial_user_attr(frozen._trial_id, "exit_reason", exit_reason)
    storage.set_trial_state_values(frozen._trial_id, state=TrialState.FAIL)


def enqueued_params(frozen: FrozenTrial) -> dict[str, Any]:
    """The parameters a queued trial carries (`enqueue_trial` keeps them as its fixed params until it is asked)."""
    return dict(frozen.system_attrs.get("fixed_params") or frozen.params)


def reload(study: optuna.Study) -> None:
    """Read a leased study's trials again (once its lease is held, nobody else writes them)."""
    if isinstance(study._storage, LeasedStorage):
        study._storage.reload()


@contextmanager
def one_transaction(study: optuna.Study, conn, batch) -> Iterator[None]:
    """Optuna's writes made inside go through `conn` (gathered in `batch`, which the caller flushes before it
    commits) when the study runs through a leased storage; other storages write on their own."""
    if isinstance(study._storage, LeasedStorage):
        with study._storage.bind(conn, batch):
            yield
    else:
        yield
