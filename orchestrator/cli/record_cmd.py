"""`orch record NAME --track T --out DIR`: the record folder of a study's certified variant (orchestrator/record)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from ..certify.tracks import TRACKS
from ..config.errors import OrchError
from ..study.lifecycle import load_study_row
from .common import DbOption, open_db


def register(app: typer.Typer) -> None:
    @app.command("record")
    def record(name: str,
               track: str = typer.Option(..., "--track", help="modded-nanogpt | parameter-golf | nanochat"),
               out: Path = typer.Option(..., "--out", help="the record folder to write (new or empty)"),
               variant: Optional[str] = typer.Option(None, "--variant", help="'#N' (trial N's variant); default: the "
                                                     "variant of the latest sequential confirmation"),
               best_score: Optional[float] = typer.Option(None, "--best-score", help="parameter-golf: the current "
                                                          "best record's val_loss (nats)"),
               record_name: Optional[str] = typer.Option(None, "--name", help="the record's name (default: the study's)"),
               author: str = typer.Option("", "--author", help="parameter-golf submission.json: your name"),
               github_id: str = typer.Option("", "--github-id", help="submission.json / leaderboard: your GitHub id"),
               draft: bool = typer.Option(False, "--draft", help="write the folder even when a rule fails, marked "
                                          "as not a record"),
               db: Optional[str] = DbOption) -> None:
        """Write the record folder of study NAME in the track's layout: the counted runs' logs, statistics, the
        paired timing, the diff against the baseline, README with the record table and the rule checks,
        SHA256SUMS. A broken rule is an error naming the rule and the runs (exit 2), unless --draft."""
        from ..record.layouts import write_record

        if track not in TRACKS:
            raise OrchError(f"--track {track!r} is not a track (fix: use one of {', '.join(TRACKS)})")
        if best_score is not None and not math.isfinite(best_score):
            raise OrchError("--best-score must be a finite number (fix: give the best record's val_loss in nats)")
        database = open_db(db)
        data, files = write_record(database, load_study_row(database, name), track, out, variant=variant,
                                   best_score=best_score, name=record_name, author=author, github_id=github_id,
                                   draft=draft)
        state = "record" if data.certified else "DRAFT (not a record: " + "; ".join(data.problems) + ")"
        typer.echo(f"wrote {len(files)} files to {out}: {track} {state}")
