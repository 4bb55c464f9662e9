"""Exports of a study: the record write-up (markdown, HTML with plots) and result tables (CSV, JSON)."""

from .render import RENDERERS, export_text
from .tables import best_trial, markdown, trial_records

# `orch export --format`: md and html are the write-up (orchestrator/export/report.py, docs/export.md);
# csv and json carry every recorded field of every trial. `markdown` is the short table `orch study run` prints.

__all__ = ["RENDERERS", "best_trial", "export_text", "markdown", "trial_records"]
