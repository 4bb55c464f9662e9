"""The `orch` command line. Every user error ends as one clear message and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from db import Database, DatabaseError

from ..config.errors import OrchError
from ..config.fleet import Fleet, load_fleet
from ..controller import Controller, StopRequested, install_signal_handlers
from ..export import RENDERERS, markdown
from ..studies import create_study, load_study_row, validate_study_file
from . import status as status_views
from .display import make_reporter

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Sweep orchestrator for training speedruns.")
study_app = typer.Typer(no_args_is_help=True, help="Create, run and inspect parameter studies.")
fleet_app = typer.Typer(no_args_is_help=True, help="The machines of the fleet.")
app.add_typer(study_app, name="study")
app.add_typer(fleet_app, name="fleet")

DEFAULT_FLEET_FILE = "fleet.yaml"


class State:
    db_url: str | None = None


def _db(url: str | None = None) -> Database:
    return Database(url or State.db_url)


def _fleet(path: Optional[Path]) -> Fleet:
    if path is not None:
        return load_fleet(path)
    env = os.environ.get("ORCH_FLEET")
    if env:
        return load_fleet(env)
    return load_fleet(DEFAULT_FLEET_FILE if Path(DEFAULT_FLEET_FILE).is_file() else None)


FleetOption = typer.Option(None, "--fleet", help="fleet file (default: ./fleet.yaml, else this machine only)")
JsonOption = typer.Option(False, "--json", help="print JSON")
DbOption = typer.Option(None, "--db", help="SQLAlchemy URL of the results database (default: $ORCH_DB, else sqlite:///./orch.db)")


@app.callback()
def _global(db: Optional[str] = typer.Option(None, "--db", help="SQLAlchemy URL of the results database "
                                             "(default: $ORCH_DB, else sqlite:///./orch.db)")) -> None:
    State.db_url = db


@study_app.command("create")
def study_create(name: str, db: Optional[str] = DbOption, from_: Path = typer.Option(..., "--from", help="study YAML file")) -> None:
    """Create study NAME from a study YAML file (validated first; nothing is written on error)."""
    if not _valid_name(name):
        raise OrchError(f"study name {name!r} is not allowed (fix: use letters, digits, '.', '_' and '-')")
    validate_study_file(from_)
    db = _db(db)
    row = create_study(db, name, from_)
    typer.echo(f"created study {row.name!r} ({row.direction} {row.objective_metric}) in {_where(db)}")


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
    db = _db(db)
    row = load_study_row(db, name)
    inventory = _fleet(fleet)
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
    """Trials by state, the best so far, and what is running now."""
    view = status_views.study_status(_db(db), name)
    typer.echo(json.dumps(view, indent=2, default=str) if as_json else status_views.render_study_status(view))


@study_app.command("list")
def study_list(db: Optional[str] = DbOption, as_json: bool = JsonOption) -> None:
    """Every study in the database."""
    view = status_views.study_list(_db(db))
    typer.echo(json.dumps(view, indent=2, default=str) if as_json else status_views.render_study_list(view))


@fleet_app.command("status")
def fleet_status(db: Optional[str] = DbOption, fleet: Optional[Path] = FleetOption, as_json: bool = JsonOption) -> None:
    """Machines, their GPUs and the trials running on them."""
    view = status_views.fleet_status(_db(db), _fleet(fleet))
    typer.echo(json.dumps(view, indent=2, default=str) if as_json else status_views.render_fleet_status(view))


@fleet_app.command("trust")
def fleet_trust(name: str, fleet: Optional[Path] = FleetOption,
                replace: bool = typer.Option(False, "--replace", help="replace a different key already recorded"),
                expect: Optional[str] = typer.Option(None, "--expect", help="record only if the key has this SHA256:... fingerprint")) -> None:
    """Record ssh machine NAME's host key in its known_hosts file (prints the fingerprint)."""
    from ..config.errors import ConfigError
    from ..launchers.ssh import trust_host

    inventory = _fleet(fleet)
    try:
        machine = inventory.machine(name)
    except KeyError:
        raise ConfigError(f"no machine named {name!r}", file=inventory.source, field="machines",
                          fix=f"use one of {', '.join(m.name for m in inventory.machines)}") from None
    if machine.launcher != "ssh" or not machine.known_hosts:
        raise ConfigError(f"machine {name!r} is not an ssh machine with a known_hosts file", file=inventory.source,
                          field="known_hosts", fix="set `launcher: ssh` and `known_hosts: PATH` on the machine")
    result = trust_host(machine, replace=replace, expect=expect)
    typer.echo(f"{result.machine}: {result.entry} {result.key_type} {result.fingerprint} ({result.status} in {result.known_hosts})")


@app.command("export")
def export(name: str, db: Optional[str] = DbOption,
           format: str = typer.Option("md", "--format", help="md | html | csv | json"),
           out: Optional[Path] = typer.Option(None, "--out", help="write to this file instead of stdout"),
           plots: Optional[bool] = typer.Option(None, "--plots/--no-plots", help="html: inline plots (default on); "
                                                "md: PNG files beside --out, linked (default off)")) -> None:
    """The write-up of study NAME (md, html: headline, rounds, reproduction, plots) or every trial (csv, json)."""
    from ..export import export_text

    if format not in RENDERERS:
        raise OrchError(f"unknown export format {format!r} (fix: use one of {', '.join(RENDERERS)})")
    db = _db(db)
    text = export_text(format, db, load_study_row(db, name), out=out, plots=plots)
    if out is None:
        typer.echo(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        typer.echo(f"wrote {out}")


import_app = typer.Typer(no_args_is_help=True, help="Load finished runs from elsewhere into the database.")
app.add_typer(import_app, name="import")


@import_app.command("csv")
def import_csv(file: Path, study: str = typer.Option(..., "--study", help="name of the new study"),
               db: Optional[str] = DbOption,
               objective: Optional[str] = typer.Option(None, "--objective", help="minimize:METRIC or maximize:METRIC "
                                                       "(default minimize:train_time_s; column time_s = train_time_s)"),
               constraint: Optional[list[str]] = typer.Option(None, "--constraint", help="METRIC <= X or METRIC >= X, "
                                                              "repeatable (default val_loss <= 3.28; 'none' for none)"),
               from_: Optional[Path] = typer.Option(None, "--from", help="study YAML to import under (else one is generated)")) -> None:
    """Create study NAME from a CSV table of finished runs (round, parameters, machine, time_s, val_loss, note)."""
    from ..importing import import_csv as do_import

    if not _valid_name(study):
        raise OrchError(f"study name {study!r} is not allowed (fix: use letters, digits, '.', '_' and '-')")
    database = _db(db)
    result = do_import(database, file, study, objective=objective, constraints=constraint or None, from_=from_)
    typer.echo(f"imported {result.runs} runs in {result.rounds} rounds ({result.hits} met the target) from {file} "
               f"into study {study!r} in {_where(database)}" + (" (study spec generated)" if result.generated_spec else ""))


@app.command("parse-log")
def parse_log(path: Path, format: str = typer.Option("auto", "--format",
              help="auto | orch | modded-nanogpt | parameter-golf | nanochat"),
              as_json: bool = JsonOption,
              series: bool = typer.Option(True, "--series/--no-series", help="include the step series")) -> None:
    """Parse a training log (any supported trainer, any size) into its outcome and step series."""
    from ..parsers.files import LogFileError, parse_log_file, parsed_run_to_json

    try:
        run = parse_log_file(path, format=format)
    except LogFileError as exc:
        raise OrchError(str(exc)) from None
    data = parsed_run_to_json(run, path=path, series=series)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    status = "complete" if data["complete"] else f"incomplete ({data['reason']})"
    typer.echo(f"{path}: {data['format']}, {status}")
    for key in ("official_metric", "official_value", "final_step", "total_steps", "val_loss", "val_bpb",
                "train_time_ms", "step_avg_ms", "peak_memory_mib", "gpu_name", "gpu_count", "torch_version"):
        if data.get(key) is not None:
            typer.echo(f"  {key}: {data[key]}")


def _valid_name(name: str) -> bool:
    import re

    return bool(re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$", name))


def _where(db: Database) -> str:
    from db import safe_url

    return safe_url(db.url)


def main(argv: list[str] | None = None) -> int:
    try:
        app(args=argv, prog_name="orch", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors: wrong option, missing argument, bad value
        exc.show()
        return exc.exit_code
    except typer.Abort:
        print("orch: aborted", file=sys.stderr)
        return 130
    except StopRequested as exc:
        print(f"orch: stopped ({exc}); running trials were re-queued: `orch study run` resumes", file=sys.stderr)
        return 130
    except (OrchError, DatabaseError) as exc:
        print(f"orch: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
