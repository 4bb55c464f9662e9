"""The results database: SQLAlchemy models (`orch_` tables beside Optuna's) and engine setup."""

from .engine import Database, DatabaseError, DatabaseUrlError, default_url, is_sqlite, safe_url
from .models import (Base, BatchRow, EventRow, FleetDemandRow, MachineRow, Meta, MetricPointRow, RequestRow, SlotBlockRow,
                     SlotClaimRow, StudyRow, TrialRow, utcnow)

__all__ = ["Database", "DatabaseError", "DatabaseUrlError", "default_url", "is_sqlite", "safe_url", "Base", "BatchRow", "EventRow", "MachineRow",
           "Meta", "MetricPointRow", "RequestRow", "StudyRow", "TrialRow", "utcnow", "FleetDemandRow", "SlotBlockRow", "SlotClaimRow"]
