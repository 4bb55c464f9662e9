"""`orch study confirm | early-exit | baseline`: extra runs beyond a study's budget (orchestrator/extra_runs)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional

import typer

from ..extra_runs.commands import (Request, baseline_request, confirm_request, early_exit_request, run_request)
from ..export.batches import render_summary
from .common import DbOption, FleetOption, JsonOption, load_inventory, open_db
from .display import PlainReporter, make_reporter

PlainOption = typer.Option(False, "--plain", help="plain log lines even on a terminal")
#: bounds of the counts a batch takes (each run is a row and a job: a typo of 10**9 must not plan 10**9 rows)
MAX_COUNT = 10_000
MAX_STEPS = 10**9


def _finite_target(value: Optional[float]) -> Optional[float]:
    """--target: a finite number (click's float type reads `nan` and `inf`, which no run can reach)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value!r} is not a finite number (fix: give the metric value to stop at, "
                                 "e.g. --target 3.28)", param_hint="'--target'")
    return value


def _run(name: str, db_url: Optional[str], fleet: Optional[Path], as_json: bool, plain: bool, make_request) -> None:
    db = open_db(db_url)
    request: Request = make_request(db)  # every argument checked before anything is written
    inventory = load_inventory(fleet)
    reporter = PlainReporter(sys.stderr) if as_json else make_reporter(plain)
    try:
        summary = run_request(db, name, inventory, request, reporter, signals=True)
    finally:
        reporter.close()
    typer.echo(json.dumps(summary, indent=2, default=str) if as_json else "\n" + render_summary(summary))


def register(app: typer.Typer) -> None:
    @app.command("confirm")
    def confirm(name: str, top: int = typer.Option(..., "--top", min=1, max=MAX_COUNT, help="how many of the best variants"),
                repeats: int = typer.Option(..., "--repeats", min=1, max=MAX_COUNT, help="runs of each variant"),
                db: Optional[str] = DbOption, fleet: Optional[Path] = FleetOption, as_json: bool = JsonOption,
                plain: bool = PlainOption) -> None:
        """Run the best K variants (the write-up's ranking) N more times each, spread over the fleet, as
        confirmation runs beyond the budget; prints runs, mean, std, hit rate and p-value per variant."""
        _run(name, db, fleet, as_json, plain, lambda d: confirm_request(d, name, top, repeats))

    @app.command("early-exit")
    def early_exit(name: str,
                   variant: str = typer.Option(..., "--variant", help="best | '#N' (trial N's variant) | 'k=v,k=v'"),
                   max_steps: int = typer.Option(..., "--max-steps", min=1, max=MAX_STEPS, help="the most steps a run may take"),
                   runs: int = typer.Option(..., "--runs", min=1, max=MAX_COUNT, help="how many runs"),
                   target: Optional[float] = typer.Option(None, "--target", callback=_finite_target, help="exit at this metric value "
                                                          "(default: the study's constraint threshold)"),
                   db: Optional[str] = DbOption, fleet: Optional[Path] = FleetOption, as_json: bool = JsonOption,
                   plain: bool = PlainOption) -> None:
        """Run a variant N times with the trainer told to stop at the target (at most S steps); records each
        run's exit step and time (kind early_exit)."""
        _run(name, db, fleet, as_json, plain, lambda d: early_exit_request(d, name, variant, max_steps, runs, target))

    @app.command("baseline")
    def baseline(name: str, params: str = typer.Option(..., "--params", help="every parameter: 'k=v,k=v'"),
                 repeats: int = typer.Option(..., "--repeats", min=1, max=MAX_COUNT, help="how many runs"),
                 db: Optional[str] = DbOption, fleet: Optional[Path] = FleetOption, as_json: bool = JsonOption,
                 plain: bool = PlainOption) -> None:
        """Run a fixed variant N times as the study's baseline (kind baseline), beyond the budget."""
        _run(name, db, fleet, as_json, plain, lambda d: baseline_request(d, name, params, repeats))
