"""The trials of one batch of extra runs (`BatchTrials`), fed to the study's `Controller` (recovery, lease, logs,
retries and outcomes work exactly as in `orch study run`); only what it dispatches and when it stops differ.

- It runs only its batch's queued trials, beyond the study's budget, and stops when none is left.
- A free slot takes the queued run whose variant has run least on that machine, then on that slot (runs of
  this batch first, then every run of the variant): a variant's repeats spread over the fleet.
- Its trials have fixed parameters, so it asks no sampler: the study's sampler never sees them as its own points.
- It leaves the study's status alone and queues no search repeats.
"""

from __future__ import annotations

from collections import Counter

import optuna
from optuna.trial import FrozenTrial
from sqlalchemy import select

from db import Database, TrialRow

from ..config.fleet import Fleet
from ..launchers.base import Slot
from ..records import variant_key
from ..config.errors import OrchError
from ..run.controller import Controller, StopRequested, install_signal_handlers
from ..run.sources import TrialSource
from ..study.lifecycle import OpenStudy, open_study
from ..study.queue import batch_of, claim, waiting_trials
from ..study.trials import enqueued_params


class BatchStopped(OrchError):
    exit_code = 130


def run_batch(db: Database, name: str, fleet: Fleet, *, batch_id: int, batch_size: int, reporter, command: str,
              resume_hint: str, heartbeat_s: float | None = None, signals: bool = False,
              source: type["BatchTrials"] | None = None) -> None:
    """Run batch `batch_id`'s queued trials through the study's controller (`source`: BatchTrials or a subclass);
    stopped (a signal, `orch study stop`), it raises BatchStopped with the command that goes on (`resume_hint`)."""
    kwargs = {} if heartbeat_s is None else {"heartbeat_s": heartbeat_s}
    controller = Controller(db, name, fleet, reporter=reporter, source=(source or BatchTrials)(batch_id, batch_size),
                            **kwargs)
    if signals:
        install_signal_handlers(controller)
    try:
        controller.run()
    except StopRequested as exc:
        raise BatchStopped(f"stopped ({exc}); the batch's running trials were re-queued (fix: run `{command}` with the "
                           f"same arguments again{resume_hint})") from None


class BatchTrials(TrialSource):
    def __init__(self, batch_id: int, batch_size: int) -> None:
        self.batch_id, self.batch_size = batch_id, batch_size

    def open(self) -> OpenStudy:
        return open_study(self.run.db, self.run.name, sampler=optuna.samplers.RandomSampler(), leased=True)

    def queued(self) -> list[FrozenTrial]:
        return [t for t in waiting_trials(self.run.study.optuna) if batch_of(t) == self.batch_id]

    def slots_to_fill(self) -> int:
        run = self.run
        queued = len(self.queued())
        run.progress.queued, run.progress.max_trials = queued, self.batch_size  # the display's "budget"
        want = queued
        if run.spec.budget.parallel is not None:
            want = min(want, run.spec.budget.parallel - len(run.running))
        return max(0, want)

    def ask(self, slot: Slot) -> optuna.Trial | None:
        run = self.run
        queued = self.queued()
        mine = {t.number for t in run.study.optuna.get_trials(deepcopy=False) if batch_of(t) == self.batch_id}
        with run.ledger.unit() as s:
            placed = s.execute(select(TrialRow.number, TrialRow.variant, TrialRow.machine, TrialRow.slot).where(
                TrialRow.study_id == run.study.row.id, TrialRow.machine.is_not(None),
                TrialRow.state != "invalid")).all()
        batch_machine, batch_slot, all_machine, all_slot = Counter(), Counter(), Counter(), Counter()
        for number, variant, machine, label in placed:
            all_machine[variant, machine] += 1
            all_slot[variant, machine, label] += 1
            if number in mine:
                batch_machine[variant, machine] += 1
                batch_slot[variant, machine, label] += 1

        def spread(t: FrozenTrial) -> tuple:
            v = variant_key(enqueued_params(t))
            here, exact = (v, slot.machine), (v, slot.machine, slot.label)
            return (batch_machine[here], batch_slot[exact], all_machine[here], all_slot[exact],
                    t.user_attrs.get("batch_index", 0), t.number)

        return claim(run.study.optuna, run.dists, sorted(queued, key=spread))

    # a batch plans its repeats itself (no `prepared`), leaves the study's status (created / running / finished) as
    # it was (no `set_status`), and its command closes the batch once every planned run has finished (no `finished`)
