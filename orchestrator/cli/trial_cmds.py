"""`orch trial ...`: list, show, read the log of, and cancel the trials of a study (a trial is `STUDY#N`)."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from sqlalchemy import select

from db import Database, StudyRow, TrialRow
from db.write_batch import WriteBatch

from ..run import control
from ..study import lease
from ..config.errors import OrchError
from ..study import trials
from ..study.queue import cancel_queued
from ..study.lifecycle import load_study_row, open_study
from ..study.queue import waiting_trials
from . import trial_view
from .common import DbOption, JsonOption, open_db

trial_app = typer.Typer(no_args_is_help=True, help="List, inspect, read the logs of, and cancel trials (STUDY#N).")
STATES = ("queued", "pending", "running", "complete", "failed", "lost", "invalid", "cancelled")


@trial_app.command("list")
def trial_list(name: str, db: Optional[str] = DbOption, as_json: bool = JsonOption,
               state: Optional[list[str]] = typer.Option(None, "--state", help=f"only these states ({', '.join(STATES)}); "
                                                         "repeatable")) -> None:
    """Every trial of study NAME: round, state, machine, parameters, objective, constraint metrics, hit, time."""
    for s in state or []:
        if s not in STATES:
            raise OrchError(f"--state {s!r} is not a trial state (fix: use one of {', '.join(STATES)})")
    view = trial_view.trial_list(open_db(db), name, state)
    typer.echo(json.dumps(view, indent=2, default=str) if as_json else trial_view.render_trial_list(view))


@trial_app.command("show")
def trial_show(trial: str = typer.Argument(..., metavar="STUDY#N"), db: Optional[str] = DbOption,
               as_json: bool = JsonOption) -> None:
    """Everything recorded of one trial: parameters, command, machine, GPUs, code revision, outcome, events."""
    name, number = trial_view.parse_trial_ref(trial)
    view = trial_view.trial_show(open_db(db), name, number)
    typer.echo(json.dumps(view, indent=2, default=str) if as_json else trial_view.render_trial_show(view))


@trial_app.command("logs")
def trial_logs(trial: str = typer.Argument(..., metavar="STUDY#N"), db: Optional[str] = DbOption,
               follow: bool = typer.Option(False, "--follow", "-f", help="keep printing until the trial ends"),
               tail: Optional[int] = typer.Option(None, "--tail", min=0, help="start with the last N lines")) -> None:
    """The trial's training log (on the controller's machine, where every launcher writes it)."""
    name, number = trial_view.parse_trial_ref(trial)
    try:
        trial_view.show_log(open_db(db), name, number, sys.stdout, follow=follow, tail=tail)
    except KeyboardInterrupt:  # Ctrl-C ends --follow, not the trial
        pass


@trial_app.command("cancel")
def trial_cancel(trial: str = typer.Argument(..., metavar="STUDY#N"), db: Optional[str] = DbOption,
                 reason: Optional[str] = typer.Option(None, "--reason", help="recorded with the trial"),
                 wait: float = typer.Option(30.0, "--wait", min=0, help="seconds to wait for the controller to act "
                                            "(0: return once the request is recorded)"),
                 as_json: bool = JsonOption) -> None:
    """Kill a running trial (or take a queued one off the queue): recorded `cancelled`, which is not a failed
    outcome, does not count against the budget and is not re-run. The study's controller does it, whichever
    process or host runs it."""
    name, number = trial_view.parse_trial_ref(trial)
    database = open_db(db)
    study = load_study_row(database, name)
    reason = (reason or "").strip()[:500] or None
    holder = lease.holder(study)
    if holder is not None:
        request = control.ask(database, study.id, "cancel", trial_number=number, reason=reason)
        outcome = control.wait_done(database, request, wait) if wait > 0 else None
        if outcome is None:
            _report(as_json, {"trial": f"{name}#{number}", "requested": True, "controller": holder, "outcome": None},
                    f"cancel of trial {name}#{number} requested from the controller {holder}"
                    + (f"; it has not acted within {wait:g} s (it does once its loop reads the request)" if wait else ""))
            raise typer.Exit(0 if wait == 0 else 1)
        done = outcome.startswith(f"trial {number} cancelled")
        _report(as_json, {"trial": f"{name}#{number}", "requested": True, "controller": holder, "outcome": outcome,
                          "cancelled": done}, outcome)
        raise typer.Exit(0 if done else 1)
    outcome, done = _cancel_without_controller(database, study, number, reason)
    _report(as_json, {"trial": f"{name}#{number}", "requested": False, "controller": None, "outcome": outcome,
                      "cancelled": done}, outcome)
    raise typer.Exit(0 if done else 1)


def _report(as_json: bool, data: dict, text: str) -> None:
    typer.echo(json.dumps(data, indent=2) if as_json else text)


def _cancel_without_controller(db: Database, study: StudyRow, number: int, reason: str | None) -> tuple[str, bool]:
    """No controller runs the study: a queued trial is taken off the queue here, under the study's lease."""
    with db.session() as s:
        state = s.scalar(select(TrialRow.state).where(TrialRow.study_id == study.id, TrialRow.number == number))
    if state in trial_view.LIVE_STATES:
        return (f"not cancelled: trial {study.name}#{number} is recorded {state}, but no controller runs study "
                f"{study.name!r}: its job ended with its controller, and the next `orch study run {study.name}` "
                "records it", False)
    if state is not None:
        return f"not cancelled: trial {study.name}#{number} is {state}, not running", False
    owner = lease.controller_id()
    lease.acquire(db, study.id, owner)  # no controller starts the study meanwhile (LeaseHeld if one just did)
    try:
        opened = open_study(db, study.name, leased=True)
        queued = [t for t in waiting_trials(opened.optuna) if t.number == number]
        if not queued:
            return f"not cancelled: study {study.name!r} has no trial {number} (`orch trial list {study.name}`)", False
        note = "cancelled by `orch trial cancel` (it was queued)" + (f": {reason}" if reason else "")
        batch = WriteBatch()
        with db.session() as s:
            with trials.one_transaction(opened.optuna, s.connection(), batch):
                cancel_queued(s, opened, queued[0], note)
            batch.flush(s.connection())
        return f"trial {number} cancelled (it was queued, not started)", True
    finally:
        lease.release(db, study.id, owner)
