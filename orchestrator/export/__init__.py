"""Exports of a study: the record write-up (markdown, HTML with plots) and result tables (CSV, JSON).

`orch export --format`: md and html are the write-up (orchestrator/export/report.py, docs/export.md); csv and json
carry every recorded field of every trial. `markdown` is the short table `orch study run` prints. `RENDERERS` and
`export_text` (render.py) load on first use: the write-up's pick rule needs scipy, which every other `orch` command
would otherwise load at start (~0.3 s)."""

from .tables import best_trial, markdown, trial_records

FORMATS = ("md", "html", "csv", "json")  # the keys of RENDERERS (tests/export/test_writeup.py checks)


def __getattr__(name: str):
    if name in ("RENDERERS", "export_text"):
        from . import render

        return getattr(render, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FORMATS", "RENDERERS", "best_trial", "export_text", "markdown", "trial_records"]
