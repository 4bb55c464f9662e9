"""Where a run's trials come from: the one thing that differs between `orch study run` and the extra-run commands.

The controller's loop (controller.py) asks its source how many slots to fill, which of the free slots to use,
and which trial a slot runs; it tells the source when a trial was prepared and when the run ends. The rest (the
lease, recovery, logs, outcomes, retries, the fleet) is the same for every source.

- `SearchTrials` (`orch study run`): the sampler's points and the search's queued trials, within the study's
  budget, until the budget is spent or a deciding sampler has settled; repeats queued after a first run.
- `extra_runs.controller.BatchTrials` (confirm, early-exit, baseline, step-cut, sequential) and
  `extra_runs.paired.PairedTrials` (ABBA blocks): the queued trials of one batch, beyond the budget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import optuna
from sqlalchemy.exc import SQLAlchemyError

from ..config.errors import ConfigError, OrchError
from ..launchers.base import Slot
from ..samplers import DecidingSampler, build_sampler
from ..study.lifecycle import OpenStudy, open_study
from ..study.queue import next_trial

if TYPE_CHECKING:
    from .controller import Controller


class TrialSource:
    """The hooks a source fills; `run` is the controller it feeds (set by `bind` before the run starts)."""

    run: "Controller"

    def bind(self, run: "Controller") -> None:
        self.run = run

    def open(self) -> OpenStudy:
        """The study, opened for this run (its sampler set as the source needs)."""
        raise NotImplementedError

    def slots_to_fill(self) -> int:
        """How many trials to start now (0 with nothing running ends the run)."""
        raise NotImplementedError

    def choose(self, free: list[Slot]) -> list[Slot]:
        """Which of the free slots to fill (all of them by default)."""
        return free

    def ask(self, slot: Slot) -> optuna.Trial | None:
        """The trial `slot` runs next, claimed (RUNNING in Optuna); None: nothing for this slot."""
        raise NotImplementedError

    def prepared(self, params: dict, number: int, first_run: bool) -> None:
        """A trial was recorded `pending` with `params` (`first_run`: neither a retry nor a repeat)."""

    def set_status(self, status: str) -> None:
        """The study's status as the run starts (`running`) or stops early (`stopped`)."""

    def finished(self) -> None:
        """Nothing is left to run and nothing runs."""


class SearchTrials(TrialSource):
    """`orch study run`: the search itself."""

    def __init__(self, max_new_trials: int | None = None) -> None:
        self.max_new_trials = max_new_trials  # stop after dispatching this many (tests, `--max-new`)

    def open(self) -> OpenStudy:
        opened = open_study(self.run.db, self.run.name, leased=True)
        history = len(opened.optuna.get_trials(deepcopy=False))
        opened.optuna.sampler = build_sampler(opened.spec, history)
        return opened

    def slots_to_fill(self) -> int:
        run, spec = self.run, self.run.spec
        if self.max_new_trials is not None and run.dispatched >= self.max_new_trials:
            return 0
        if self.settled():
            run.progress.message = "the sampler has settled its decision"
            return 0
        counted, waiting = run.ledger.budget_counts()
        remaining = spec.budget.max_trials - counted
        want = remaining
        if spec.budget.parallel is not None:
            want = min(want, spec.budget.parallel - len(run.running))
        if self.max_new_trials is not None:
            want = min(want, self.max_new_trials - run.dispatched)
        run.progress.queued = max(0, min(remaining, waiting))
        return max(0, want)

    def ask(self, slot: Slot) -> optuna.Trial | None:
        """A queued search trial, else the sampler's next point. A sampler that fails (an option `orch study create`
        could not test, e.g. one used only after the startup trials) stops the run with one message; the
        transaction of this dispatch is rolled back, so nothing of it is written."""
        study = self.run.study
        try:
            return next_trial(study.optuna, self.run.dists)
        except (OrchError, SQLAlchemyError):
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the sampler raises
            text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise ConfigError(f"the {study.spec.sampler.name} sampler failed while choosing trial values: "
                              f"{type(exc).__name__}{': ' + text if text else ''}", file=study.row.spec_path,
                              field="sampler.options", fix="correct the sampler's options in the study file and create "
                              "it again under a new name; this study's finished trials are kept") from None

    def prepared(self, params: dict, number: int, first_run: bool) -> None:
        spec = self.run.spec
        if not first_run or spec.repeats <= 1:
            return
        counted, waiting = self.run.ledger.budget_counts()
        room = spec.budget.max_trials - counted - waiting - 1  # this trial is not in the DB yet
        for index in range(1, min(spec.repeats, room + 1)):
            self.run.study.optuna.enqueue_trial(params, user_attrs={"repeat_of": number, "repeat_index": index},
                                                skip_if_exists=False)

    def set_status(self, status: str) -> None:
        self.run.ledger.set_status(status)

    def finished(self) -> None:
        counted, _ = self.run.ledger.budget_counts()
        if counted >= self.run.spec.budget.max_trials or self.settled():
            self.run.ledger.set_status("finished")
        else:  # `orch study stop`, `--max-new`: resumable, and no controller runs it now
            self.run.ledger.set_status("stopped")

    def settled(self) -> bool:
        """The sampler says its decision is settled (only a `DecidingSampler` can)."""
        sampler = self.run.study.optuna.sampler
        return isinstance(sampler, DecidingSampler) and sampler.settled(self.run.study.optuna)
