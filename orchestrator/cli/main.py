"""The `orch` command line. Every user error ends as one clear message and a non-zero exit, never a traceback.

Commands live beside this file: `study_cmds.py` (orch study ...), `fleet_cmds.py` (orch fleet ...); this module
holds the top-level commands and the error handling of `main`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from db import DatabaseError

from ..config.errors import OrchError
from ..run.control import StopRequested
from ..export import FORMATS
from ..study.lifecycle import load_study_row
from .common import DbOption, JsonOption, State, check_name, open_db, where
from .fleet_cmds import fleet_app
from .record_cmd import register as register_record
from .init_cmd import register as register_init
from .study_cmds import study_app
from .trial_cmds import trial_app

# typer's shell completion: `orch --install-completion` (bash, zsh, fish, PowerShell) or `--show-completion SHELL`
app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Sweep orchestrator for training speedruns.")
app.add_typer(study_app, name="study")
app.add_typer(trial_app, name="trial")
app.add_typer(fleet_app, name="fleet")
register_record(app)  # `orch record`
register_init(app)  # `orch init`


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"orch {version('speedrun-orch')}")
        except PackageNotFoundError:  # a checkout run without `pip install -e .`
            typer.echo("orch (not installed: run scripts/bootstrap.sh)")
        raise typer.Exit(0)


@app.callback()
def _global(db: Optional[str] = typer.Option(None, "--db", help="SQLAlchemy URL of the results database "
                                             "(default: $ORCH_DB, else sqlite:///./orch.db)"),
            version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                         help="print orch's version and exit")) -> None:
    State.db_url = db


@app.command("export")
def export(name: str, db: Optional[str] = DbOption,
           format: str = typer.Option("md", "--format", help="md | html | csv | json"),
           out: Optional[Path] = typer.Option(None, "--out", help="write to this file instead of stdout"),
           plots: Optional[bool] = typer.Option(None, "--plots/--no-plots", help="html: inline plots (default on); "
                                                "md: PNG files beside --out, linked (default off)")) -> None:
    """The write-up of study NAME (md, html: headline, rounds, reproduction, plots) or every trial (csv, json)."""
    from ..export import export_text

    if format not in FORMATS:
        raise OrchError(f"unknown export format {format!r} (fix: use one of {', '.join(FORMATS)})")
    if out is not None:
        check_output_path(out)  # before anything is rendered or written (md --plots writes files beside it)
    db = open_db(db)
    try:
        text = export_text(format, db, load_study_row(db, name), out=out, plots=plots)
    except OSError as exc:  # md --plots writes its PNG files beside --out
        raise OrchError(f"--out {out}: cannot write: {exc.strerror or exc} (fix: pass a file path in a directory "
                        "you can write)") from None
    if out is None:
        typer.echo(text)
    else:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        except OSError as exc:
            raise OrchError(f"--out {out}: cannot write: {exc.strerror or exc} (fix: pass a file path in a directory "
                            "you can write)") from None
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
    from ..study.csv_import import import_csv as do_import

    check_name(study)
    database = open_db(db)
    result = do_import(database, file, study, objective=objective, constraints=constraint or None, from_=from_)
    typer.echo(f"imported {result.runs} runs in {result.rounds} rounds ({result.hits} met the target) from {file} "
               f"into study {study!r} in {where(database)}" + (" (study spec generated)" if result.generated_spec else ""))


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
    else:
        status = "complete" if data["complete"] else f"incomplete ({data['reason']})"
        typer.echo(f"{path}: {data['format']}, {status}")
        for key in ("official_metric", "official_value", "final_step", "total_steps", "val_loss", "val_bpb",
                    "train_time_ms", "step_avg_ms", "peak_memory_mib", "gpu_name", "gpu_count", "torch_version"):
            if data.get(key) is not None:
                typer.echo(f"  {key}: {data[key]}")
    if not data["complete"]:  # a truncated log: what it had is printed, the exit status says it has no outcome
        typer.echo(f"orch: {path}: incomplete log, no outcome: {data['reason']} (fix: pass the whole log of a "
                   "finished run)", err=True)
        raise typer.Exit(1)


def check_output_path(out: Path) -> None:
    """`--out FILE`: a file (new or to overwrite) whose nearest existing ancestor is a directory we can write."""
    if out.is_dir():
        raise OrchError(f"--out {out}: is a directory (fix: pass a file path, e.g. {out / 'study.md'})")
    if out.exists() and not out.is_file():
        raise OrchError(f"--out {out}: is not a regular file (fix: pass a file path)")
    if out.exists() and not os.access(out, os.W_OK):
        raise OrchError(f"--out {out}: the file is not writable (fix: pass another path, or change its permissions)")
    ancestor = out.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OrchError(f"--out {out}: {ancestor} is a file, not a directory (fix: pass a path in a directory)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OrchError(f"--out {out}: cannot write in {ancestor} (permission denied) (fix: pass a path in a "
                        "directory you can write)")


def _named_shell_completion(argv: list[str]) -> int | None:
    """`orch --show-completion SHELL`: typer's flag takes no value and guesses the shell from the parent processes,
    which a script, a CI job or a process without a shell parent does not have (it then fails with "Shell  not
    supported"). A named shell is used as named."""
    if len(argv) != 2 or argv[0] != "--show-completion":
        return None
    from typer._completion_shared import Shells, get_completion_script

    shells = [s.value for s in Shells]
    if argv[1] in shells:
        print(get_completion_script(prog_name="orch", complete_var="_ORCH_COMPLETE", shell=argv[1]))
        return 0
    if argv[1].startswith("-"):
        return None
    print(f"orch: error: --show-completion {argv[1]}: not a shell orch completes (fix: use one of {', '.join(shells)})",
          file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    named = _named_shell_completion(sys.argv[1:] if argv is None else argv)
    if named is not None:
        return named
    try:
        code = app(args=argv, prog_name="orch", standalone_mode=False)
        if isinstance(code, int):  # `raise typer.Exit(N)` in a command: click returns N without standalone mode
            return code
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
    except (RecursionError, MemoryError) as exc:  # every input is bounded at the edge; this is the last resort
        print(f"orch: error: the input is too large or too deeply nested ({type(exc).__name__}) (fix: make the "
              "file or value smaller and simpler)", file=sys.stderr)
        return 2
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
