"""`orch study confirm | early-exit | baseline`: extra runs beyond a study's budget (orchestrator/extra_runs)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional

import typer

from ..config.errors import OrchError
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


def _run_mode(name: str, db_url: Optional[str], fleet: Optional[Path], as_json: bool, plain: bool, make_request,
              runner) -> None:
    db = open_db(db_url)
    inventory = load_inventory(fleet)
    request = make_request(db, inventory)  # every argument checked before anything is written
    reporter = PlainReporter(sys.stderr) if as_json else make_reporter(plain)
    try:
        summary = runner(db, name, inventory, request, reporter, signals=True)
    finally:
        reporter.close()
    typer.echo(json.dumps(summary, indent=2, default=str) if as_json else "\n" + render_summary(summary))


def register(app: typer.Typer) -> None:
    @app.command("confirm")
    def confirm(name: str,
                variant: Optional[str] = typer.Option(None, "--variant", help="sequential/paired: best (the pick "
                                                      "rule's variant) | '#N' | 'k=v,k=v' (default best)"),
                max_runs: int = typer.Option(12, "--max-runs", min=2, max=200, help="sequential: the most runs"),
                first_look: int = typer.Option(3, "--first-look", min=2, max=200, help="sequential: runs at the first look"),
                look_every: Optional[int] = typer.Option(None, "--look-every", min=1, max=200,
                                                         help="sequential: runs between looks (default: budget.parallel, else 2)"),
                track: Optional[str] = typer.Option(None, "--track", help="modded-nanogpt | parameter-golf | nanochat "
                                                    "(default: the study's log format, else modded-nanogpt's rule)"),
                best_score: Optional[float] = typer.Option(None, "--best-score", callback=_finite_target,
                                                           help="parameter-golf: the current best val_loss (nats)"),
                sigma: Optional[float] = typer.Option(None, "--sigma", callback=_finite_target, min=0.0,
                                                      help="sequential: run-to-run std the power is stated for"),
                effect: Optional[float] = typer.Option(None, "--effect", callback=_finite_target, min=0.0,
                                                       help="sequential: margin below the target the power is stated for"),
                paired: bool = typer.Option(False, "--paired", help="ABBA blocks of candidate and baseline, one per machine"),
                baseline: Optional[str] = typer.Option(None, "--baseline", help="paired: 'k=v,k=v' | '#N' | unmodified (the trainer without the study's parameters)"),
                blocks_per_machine: int = typer.Option(1, "--blocks-per-machine", min=1, max=100, help="paired: ABBA blocks per machine"),
                top: Optional[int] = typer.Option(None, "--top", min=1, max=MAX_COUNT, help="fixed batch: how many of the best variants"),
                repeats: Optional[int] = typer.Option(None, "--repeats", min=1, max=MAX_COUNT, help="fixed batch: runs of each variant"),
                db: Optional[str] = DbOption, fleet: Optional[Path] = FleetOption, as_json: bool = JsonOption,
                plain: bool = PlainOption) -> None:
        """Confirmation runs, three ways. Sequential (default): runs of one variant added look by look until the
        track's test passes or cannot (the plan is stored before the first run). --paired: candidate and baseline
        alternately on each machine (ABBA), for the time difference with the machine as a block. --top K
        --repeats N: a fixed batch of the best K variants."""
        if top is not None or repeats is not None:
            if top is None or repeats is None:
                raise OrchError("--top and --repeats go together (fix: give both for a fixed batch, or neither for "
                                "a sequential confirmation)")
            if paired:
                raise OrchError("--paired plans its own runs (fix: drop --top/--repeats, or drop --paired)")
            _run(name, db, fleet, as_json, plain, lambda d: confirm_request(d, name, top, repeats))
            return
        if paired:
            if baseline is None:
                raise OrchError("--paired needs the baseline to time against (fix: add --baseline 'k=v,...' or "
                                "--baseline '#N', e.g. the study's baseline variant)")
            from ..extra_runs.paired import paired_request, run_paired

            _run_mode(name, db, fleet, as_json, plain,
                      lambda d, inv: paired_request(d, name, inv, variant or "best", baseline, blocks_per_machine),
                      run_paired)
            return
        from ..extra_runs.sequential import run_sequential, sequential_request

        _run_mode(name, db, fleet, as_json, plain,
                  lambda d, inv: sequential_request(d, name, variant or "best", max_runs, first_look, look_every,
                                                    track, best_score, sigma, effect), run_sequential)

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

    @app.command("step-cut")
    def step_cut(name: str,
                 baseline: str = typer.Option(..., "--baseline", help="the baseline variant: 'k=v,k=v' | '#N'"),
                 runs: int = typer.Option(2, "--runs", min=1, max=MAX_COUNT, help="runs of each step count"),
                 variant: str = typer.Option("best", "--variant", help="the candidate whose time the cut matches: "
                                             "best (the pick rule's) | '#N' | 'k=v,k=v'"),
                 steps: Optional[str] = typer.Option(None, "--steps", help="step counts, e.g. 1400,1450 (default: "
                                                     "planned so the cut runs' times bracket the candidate's)"),
                 db: Optional[str] = DbOption, fleet: Optional[Path] = FleetOption, as_json: bool = JsonOption,
                 plain: bool = PlainOption) -> None:
        """Run the baseline with fewer steps (kind step_cut) and say whether the candidate's schedule beats a
        simple step-count decrease at equal time (the study's trainer.steps tells the trainer the count)."""
        from ..extra_runs.step_cut import run_step_cut, step_cut_request

        _run_mode(name, db, fleet, as_json, plain,
                  lambda d, inv: step_cut_request(d, name, variant, baseline, runs, steps), run_step_cut)
