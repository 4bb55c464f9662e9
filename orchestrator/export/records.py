"""RENDERERS['csv'] and ['json']: every recorded field of every trial (`analysis.results.full_records`)."""

from __future__ import annotations

import json

from db import Database, StudyRow

from ..analysis.results import full_records


def csv_text(db: Database, study: StudyRow) -> str:
    """RENDERERS['csv']: one row per trial, every recorded field (`full_records`)."""
    import pandas as pd

    return pd.DataFrame.from_records(full_records(db, study)).to_csv(index=False)


def json_text(db: Database, study: StudyRow) -> str:
    """RENDERERS['json']: the study's objective, its best trial and every trial's recorded fields."""
    from ..config.study import StudySpec
    from .tables import best_trial

    spec = StudySpec.model_validate(study.spec)
    records = full_records(db, study)
    payload = {"study": study.name, "objective": {"direction": spec.objective.direction, "metric": spec.objective.metric,
               "constraints": [str(c) for c in spec.objective.constraints]},
               "best_trial": (best_trial(spec, records) or {}).get("number"), "trials": records}
    return json.dumps(payload, indent=2, default=str)
