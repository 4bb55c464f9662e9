"""`orch init`: write a commented fleet.yaml and study.yaml to start from (orchestrator/scaffold)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..config.errors import OrchError
from ..scaffold import TRAINERS, Exists, write


def register(app: typer.Typer) -> None:
    @app.command("init")
    def init(trainer: str = typer.Option("orch", "--trainer", help=" | ".join(TRAINERS)),
             directory: Path = typer.Option(Path("."), "--dir", help="where to write fleet.yaml and study.yaml"),
             code_dir: Optional[str] = typer.Option(None, "--code-dir", help="the trainer's checkout, relative to "
                                                    "--dir (default: ./modded-nanogpt, ./parameter-golf, ./nanochat)"),
             force: bool = typer.Option(False, "--force", help="overwrite files that exist")) -> None:
        """Write a commented fleet.yaml (this machine; SSH machines as comments) and study.yaml for a trainer,
        which `orch study validate` accepts."""
        if trainer not in TRAINERS:
            raise OrchError(f"--trainer {trainer!r} is not known (fix: use one of {', '.join(TRAINERS)})")
        if code_dir is not None and trainer == "orch":
            raise OrchError("--code-dir is for an external trainer's checkout; orch's trainer is installed with it "
                            "(fix: drop --code-dir, or pick --trainer modded-nanogpt | parameter-golf | nanochat)")
        if directory.exists() and not directory.is_dir():
            raise OrchError(f"--dir {directory}: is a file, not a directory (fix: pass a directory)")
        try:
            written = write(directory, trainer, code_dir, force=force)
        except Exists as exc:
            raise OrchError(f"{exc.path} exists (fix: pass --force to overwrite it, or --dir for another "
                            "directory)") from None
        except OSError as exc:
            raise OrchError(f"--dir {directory}: cannot write: {exc.strerror or exc} (fix: pass a directory you "
                            "can write)") from None
        for w in written:
            typer.echo(f"wrote {w.path} ({w.what})")
        study = next(w.path for w in written if w.path.name == "study.yaml")
        typer.echo(f"next: orch study validate {study} && orch study create s1 --from {study} && "
                   f"orch study run s1 --fleet {directory / 'fleet.yaml'}")
