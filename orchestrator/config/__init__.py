"""Typed configuration models (fleet inventory, study definitions), validated at the edge."""

from .errors import ConfigError, ConfigErrors, OrchError
from .fleet import Fleet, Machine, load_fleet
from .study import StudySpec, check_metrics, load_study_file, load_study_text

__all__ = ["ConfigError", "ConfigErrors", "OrchError", "Fleet", "Machine", "load_fleet", "StudySpec",
           "check_metrics", "load_study_file", "load_study_text"]
