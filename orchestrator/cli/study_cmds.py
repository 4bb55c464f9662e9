"""`orch study ...`: create, validate, run and inspect parameter studies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..controller import Controller, install_signal_handlers
from ..export import markdown
from ..injection.study_check import validate_study_file  # + what a first trial would hit (code_dir, script, injection)
from ..studies import create_study, load_study_row
from . import status as status_views
from .common import DbOption, FleetOption, JsonOption, check_name, load_inventory, open_db, where
from .display import make_reporter
from .extra_cmds import register as register_extra_runs

study_app = typer.Typer(no_args_is_help=True, help="Create, run and inspect parameter studies.")


@study_app.command("create")
def study_create(name: str, db: Optional[str] = DbOption, from_: Path = typer.Option(..., "--from", help="study YAML file")) -> None:
    """Create study NAME from a study YAML file (validated first; nothing is written on error)."""
    check_name(name)
    validate_study_file(from_)
    db = open_db(db)
    row = create_study(db, name, from_)
    typer.echo(f"created study {row.name!r} ({row.direction} {row.objective_metric}) in {where(db)}")


@study_app.command("validate")
def study_validate(path: Path) -> None:
    """Check a study YAML file without touching any database."""
    spec, _ = validate_study_file(path)
    typer.echo(f"{path}: ok ({len(spec.parameters)} parameters, sampler {spec.sampler.name}, "
               f"budget {spec.budget.max_trials} trials)")


@study_app.command("run")
def study_run(name: str, db: Optional[str] = DbOption, fleet: Optional[Path] = FleetOption,
              max_new: Optional[int] = typer.Option(None, "--max-new", min=1, help="dispatch at most N new trials, then stop"),
              plain: bool = typer.Option(False, "--plain", help="plain log lines even on a terminal")) -> None:
    """Run (or resume) study NAME on the fleet until its budget is spent."""
    db = open_db(db)
    row = load_study_row(db, name)
    inventory = load_inventory(fleet)
    reporter = make_reporter(plain)
    controller = Controller(db, row.name, inventory, reporter=reporter, max_new_trials=max_new)
    install_signal_handlers(controller)
    try:
        progress = controller.run()
    finally:
        reporter.close()
    typer.echo("")
    final = load_study_row(db, name)
    typer.echo(markdown(db, final))
    state = "finished" if final.status == "finished" else "stopped before its budget was spent (run again to continue)"
    why = f" ({progress.message})" if progress.message else ""
    typer.echo(f"study {name!r} {state}{why}: {progress.done} complete, {progress.failed} failed")


@study_app.command("status")
def study_status(name: str, db: Optional[str] = DbOption, as_json: bool = JsonOption) -> None:
    """Trials by state, the best so far, what is running now, and the record-grade evidence (the track's
    certification of each confirmed variant, paired timing, the step-cut comparison)."""
    from ..certify.summary import study_evidence

    database = open_db(db)
    view = status_views.study_status(database, name)
    evidence = study_evidence(database, load_study_row(database, name))
    view["evidence"] = evidence.to_json()
    typer.echo(json.dumps(view, indent=2, default=str) if as_json
               else "\n".join([status_views.render_study_status(view), *evidence.lines()]))


@study_app.command("list")
def study_list(db: Optional[str] = DbOption, as_json: bool = JsonOption) -> None:
    """Every study in the database."""
    view = status_views.study_list(open_db(db))
    typer.echo(json.dumps(view, indent=2, default=str) if as_json else status_views.render_study_list(view))


register_extra_runs(study_app)  # orch study confirm | early-exit | baseline (extra_cmds.py)
