"""A study's record-grade evidence in one JSON-ready view: the certification of each confirmed variant, the
paired timing of each paired batch, and the step-cut comparison (what `orch study status` shows; the write-up
and `orch record` read the same functions)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from db import BatchRow, Database, StudyRow

from ..analysis.results import full_records
from ..config.study import StudySpec
from .evidence import Certification, certify_study, choose_track, study_plans
from .paired import PairedTiming, paired_timing
from .step_cut import StepCut, step_cut
from .tracks import CertifyError


@dataclass
class StudyEvidence:
    track: str | None
    how: str | None
    certifications: list[Certification] = field(default_factory=list)
    paired: list[PairedTiming] = field(default_factory=list)
    step_cut: StepCut | None = None
    problem: str | None = None  # why nothing could be judged

    def certification_of(self, variant: str | None) -> Certification | None:
        return next((c for c in self.certifications if c.variant == variant), None)

    def to_json(self) -> dict[str, Any]:
        def num(x):
            return None if x is None or (isinstance(x, float) and math.isnan(x)) else x

        return {
            "track": self.track, "track_chosen_by": self.how, "problem": self.problem,
            "certifications": [{"variant": c.variant, "params": c.params, "passed": c.passed, "runs": c.numbers,
                                "failed": [r["number"] for r in c.failed], "lost": [r["number"] for r in c.lost],
                                "p_value": num(c.test.p_value) if c.test else None,
                                "mean": num(c.test.mean) if c.test else None, "verdict": c.verdict()}
                               for c in self.certifications],
            "paired": [{"batch": p.batch, "difference": p.difference, "interval": p.interval, "df": p.df,
                        "welch_interval": p.welch_interval, "text": p.text()} for p in self.paired],
            "step_cut": None if self.step_cut is None else {"beats": self.step_cut.beats(), "text": self.step_cut.text()},
        }

    def lines(self) -> list[str]:
        out = []
        if self.problem:
            out.append(f"certification: cannot judge: {self.problem}")
        elif self.track is not None and not self.certifications:
            out.append(f"certification ({self.track}): no confirmation runs yet (`orch study confirm` plans them)")
        for c in self.certifications:
            out.append("certification " + c.verdict())
        for p in self.paired:
            out.append("paired timing " + p.text())
        if self.step_cut is not None:
            out.append(self.step_cut.text())
        return out


def paired_batches(db: Database, study: StudyRow) -> list[BatchRow]:
    with db.session() as s:
        return list(s.scalars(select(BatchRow).where(BatchRow.study_id == study.id, BatchRow.kind == "paired")
                              .order_by(BatchRow.id)))


def step_cut_variants(db: Database, study: StudyRow) -> tuple[str, str] | None:
    """(candidate, baseline) variant keys of the study's latest step-cut batch."""
    with db.session() as s:
        row = s.scalar(select(BatchRow).where(BatchRow.study_id == study.id, BatchRow.kind == "step_cut")
                       .order_by(BatchRow.id.desc()))
    if row is None:
        return None
    return row.args.get("candidate_key"), row.args.get("baseline_key")


def study_evidence(db: Database, study: StudyRow, *, track: str | None = None,
                   settings: dict[str, Any] | None = None, first: str | None = None,
                   records: list[dict[str, Any]] | None = None) -> StudyEvidence:
    spec = StudySpec.model_validate(study.spec)
    records = records if records is not None else [r for r in full_records(db, study) if r["state"] != "invalid"]
    plans = study_plans(db, study)
    out = StudyEvidence(None, None)
    try:
        choice = choose_track(spec, plans, track, settings)
        if choice is not None:
            out.track, out.how = choice.track.name, choice.how
            out.certifications = certify_study(spec, records, plans, choice, first)
    except CertifyError as exc:
        out.problem = str(exc)
    constraint = spec.objective.constraints[0] if spec.objective.constraints else None
    for batch in paired_batches(db, study):
        out.paired.append(paired_timing(records, batch.id, spec.objective.metric, constraint.metric if constraint else None))
    keys = step_cut_variants(db, study)
    if keys is not None and constraint is not None:
        out.step_cut = step_cut(records, keys[0], keys[1], constraint.metric, spec.objective.metric,
                                below=constraint.op == "<=")
    return out
