"""Exports of a study: the record write-up (markdown, HTML with plots) and result tables (CSV, JSON)."""

from .tables import RENDERERS, best_trial, markdown, trial_records, trials_frame
from . import records as _records
from . import report as _report

# `orch export --format`: md and html are the write-up (orchestrator/export/report.py, docs/export.md);
# csv and json carry every recorded field of every trial. `markdown` (the short table printed by
# `orch study run`) is unchanged.
RENDERERS.update({"md": _report.markdown_report, "html": _report.html_report, "csv": _records.csv_text,
                  "json": _records.json_text})
export_text = _report.export_text

__all__ = ["RENDERERS", "best_trial", "export_text", "markdown", "trial_records", "trials_frame"]
