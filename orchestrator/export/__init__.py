"""Exports of a study: result tables (markdown, CSV, JSON)."""

from .tables import RENDERERS, best_trial, markdown, trial_records, trials_frame

__all__ = ["RENDERERS", "best_trial", "markdown", "trial_records", "trials_frame"]
