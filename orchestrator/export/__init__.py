"""Exports of a study: the record write-up (markdown, HTML with plots) and result tables (CSV, JSON)."""

from . import records as _records
from . import report as _report
from .tables import best_trial, markdown, trial_records

# `orch export --format`: md and html are the write-up (orchestrator/export/report.py, docs/export.md);
# csv and json carry every recorded field of every trial. `markdown` is the short table `orch study run` prints.
RENDERERS = {"md": _report.markdown_report, "html": _report.html_report, "csv": _records.csv_text,
             "json": _records.json_text}
export_text = _report.export_text

__all__ = ["RENDERERS", "best_trial", "export_text", "markdown", "trial_records"]
