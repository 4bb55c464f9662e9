"""`orch study ...`: create, validate, run and inspect parameter studies."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from ..run import control
from ..study import lease
from ..config.errors import OrchError
from ..run.controller import Controller, install_signal_handlers
from ..export import markdown
from ..study.code_check import validate_study_file  # + what a first trial would hit (code_dir, script, injection)
from ..study.lifecycle import create_study, deleted_in_optuna, delete_study, load_study_row, set_status
from . import status as status_views
from .common import DbOption, FleetOption, JsonOption, check_name, load_inventory, open_db, where
from .display import make_reporter, show_markdown
from .extra_cmds import register as register_extra_runs

study_app = typer.Typer(no_args_is_help=True, help="Create, run and inspect parameter studies.")


@study_app.command("create")
def study_create(name: str, db: Optional[str] = DbOption, from_: Path = typer.Option(..., "--from", help="study YAML file")) -> None:
    """Create study NAME from a study YAML file (validated first; nothing is written on error)."""
    check_name(name)
    validate_study_file(from_)
    db = open_db(db)
    leftover = deleted_in_optuna(db, name)
    row = create_study(db, name, from_)
    if leftover is not None:
        typer.echo(f"note: study {name!r} had been deleted with Optuna's tools; orch's leftover rows of it "
                   f"({leftover} trials) were removed")
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
    show_markdown(markdown(db, final), plain)  # its tables drawn as tables on a terminal
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


@study_app.command("delete")
def study_delete(name: str, db: Optional[str] = DbOption, as_json: bool = JsonOption,
                 yes: bool = typer.Option(False, "--yes", "-y", help="delete without asking")) -> None:
    """Delete study NAME: orch's rows (trials, metric points, events, batches) and its Optuna study, in one
    transaction. Refused while a controller runs it. Also removes what a deletion with Optuna's tools left."""
    database = open_db(db)
    row = load_study_row(database, name, allow_deleted_in_optuna=True)
    if not yes:
        if not sys.stdin.isatty():
            raise OrchError(f"deleting study {name!r} removes its trials, metric points, events and Optuna study and "
                            "cannot be undone (fix: pass --yes)")
        typer.confirm(f"delete study {row.name!r} and every trial of it from {where(database)}?", abort=True)
    counts = delete_study(database, name)
    if as_json:
        typer.echo(json.dumps({"study": name, "deleted": True, **counts}, indent=2))
    else:
        typer.echo(f"deleted study {name!r} from {where(database)}: {counts['trials']} trials, "
                   f"{counts['metric_points']} metric points, {counts['optuna_trials']} Optuna trials")


@study_app.command("stop")
def study_stop(name: str, db: Optional[str] = DbOption, as_json: bool = JsonOption,
               now: bool = typer.Option(False, "--now", help="kill the running trials (recorded lost and re-queued "
                                        "for the next run) instead of letting them finish"),
               reason: Optional[str] = typer.Option(None, "--reason", help="recorded with the stop"),
               wait: float = typer.Option(0.0, "--wait", min=0, help="seconds to wait for the controller to exit "
                                          "(0: return once the request is recorded)")) -> None:
    """Stop the controller running study NAME, from any terminal or host: it starts no new trial, lets the
    running ones finish (or, with --now, kills them), records them and exits; the study is then `stopped`
    (`orch study run` resumes it)."""
    database = open_db(db)
    row = load_study_row(database, name)
    holder = lease.holder(row)
    if holder is None:
        marked = row.status == "running"
        if marked:  # its controller was killed before it could record its end
            set_status(database, row.id, "stopped", "no controller held the lease (orch study stop)")
        text = (f"study {name!r}: no controller runs it" + ("; its status said running (the last controller ended "
                "without recording it) and is now stopped" if marked else f" (status {row.status}): nothing to stop"))
        typer.echo(json.dumps({"study": name, "controller": None, "status": "stopped" if marked else row.status,
                               "requested": False}, indent=2) if as_json else text)
        return
    mode = "now" if now else "finish"
    request = control.ask(database, row.id, "stop", mode=mode, reason=(reason or "").strip()[:500] or None)
    what = ("kills its running trials (they are re-queued for the next run) and exits" if now else
            "starts no new trial, lets the running ones finish, then exits")
    outcome = control.wait_done(database, request, wait) if wait > 0 else None
    final = load_study_row(database, name)
    view = {"study": name, "controller": holder, "mode": mode, "requested": True, "outcome": outcome,
            "exited": outcome is not None, "status": final.status if outcome is not None else None}
    if as_json:
        typer.echo(json.dumps(view, indent=2))
    else:
        typer.echo(f"stop requested: the controller {holder} {what}")
        if outcome is not None:
            typer.echo(f"the controller exited ({outcome}); study {name!r} is {final.status}")
        elif wait > 0:
            typer.echo(f"the controller is still running after {wait:g} s")
    if wait > 0 and outcome is None:
        raise typer.Exit(1)


register_extra_runs(study_app)  # orch study confirm | early-exit | baseline (extra_cmds.py)
