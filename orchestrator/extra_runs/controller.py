"""The controller of one batch of extra runs: the study's `Controller` (recovery, lease, logs, retries and
outcomes work exactly as in `orch study run`), except for what it dispatches and when it stops.

- It runs only its batch's queued trials, beyond the study's budget, and stops when none is left.
- A free slot takes the queued run whose variant has run least on that machine, then on that slot (runs of
  this batch first, then every run of the variant): a variant's repeats spread over the fleet.
- Its trials have fixed parameters, so it asks no sampler: the study's sampler (e.g. bisection, which keeps
  state per trial) never sees them as its own points.
- It leaves the study's status alone and queues no search repeats.
"""

from __future__ import annotations

from collections import Counter

import optuna
from optuna.trial import FrozenTrial
from sqlalchemy import select

from db import TrialRow

from ..controller import Controller
from ..jobs import variant_key
from ..launchers.base import Slot
from ..studies import OpenStudy, open_study
from ..trial_queue import batch_of, claim, waiting_trials


class BatchController(Controller):
    def __init__(self, *args, batch_id: int, batch_size: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batch_id, self.batch_size = batch_id, batch_size

    def _open(self) -> OpenStudy:
        return open_study(self.db, self.name, sampler=optuna.samplers.RandomSampler(), leased=True)

    def _queued(self) -> list[FrozenTrial]:
        return [t for t in waiting_trials(self.study.optuna) if batch_of(t) == self.batch_id]

    def _slots_to_fill(self) -> int:
        queued = len(self._queued())
        self.progress.queued, self.progress.max_trials = queued, self.batch_size  # the display's "budget"
        want = queued
        if self.spec.budget.parallel is not None:
            want = min(want, self.spec.budget.parallel - len(self.running))
        return max(0, want)

    def _ask(self, slot: Slot) -> optuna.Trial | None:
        queued = self._queued()
        mine = {t.number for t in self.study.optuna.get_trials(deepcopy=False) if batch_of(t) == self.batch_id}
        with self._unit() as s:
            placed = s.execute(select(TrialRow.number, TrialRow.variant, TrialRow.machine, TrialRow.slot).where(
                TrialRow.study_id == self.study.row.id, TrialRow.machine.is_not(None),
                TrialRow.state != "invalid")).all()
        batch_machine, batch_slot, all_machine, all_slot = Counter(), Counter(), Counter(), Counter()
        for number, variant, machine, label in placed:
            all_machine[variant, machine] += 1
            all_slot[variant, machine, label] += 1
            if number in mine:
                batch_machine[variant, machine] += 1
                batch_slot[variant, machine, label] += 1

        def spread(t: FrozenTrial) -> tuple:
            v = variant_key(t.system_attrs.get("fixed_params", {}))
            here, exact = (v, slot.machine), (v, slot.machine, slot.label)
            return (batch_machine[here], batch_slot[exact], all_machine[here], all_slot[exact],
                    t.user_attrs.get("batch_index", 0), t.number)

        return claim(self.study.optuna, self.dists, sorted(queued, key=spread))

    def _enqueue_repeats(self, params: dict, number: int) -> None:
        pass  # a batch plans its repeats itself

    def _set_status(self, status: str) -> None:
        pass  # extra runs leave the study's status (created / running / finished) as it was

    def _finish_study(self) -> None:
        pass  # the command closes the batch once every planned run has finished
