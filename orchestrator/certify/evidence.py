"""The certification of a study's variants: the track's own test over each variant's confirmation runs.

Every confirmation run of the variant counts. A run that failed (diverged, crashed, timed out: the trainer's
doing) counts as a failure: it has no value for the test, so the variant is not certified while it stands. A run
lost to a machine or the infrastructure (state `lost`) is not the schedule's doing: it is listed apart with its
reason and the retry that re-ran it, never dropped or replaced in silence. Runs of other kinds (search, baseline,
early exit) never count: the search picked the variant from them, so they are biased in its favour.

Which track judges a study (`choose_track`): the one named on the command line, else the track of the study's
latest sequential plan, else the study's log format when it is a track's, else modded-nanogpt's rule applied to
the study's first constraint (our trainer is a modded-nanogpt-style speedrun).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from db import BatchRow, Database, StudyRow

from ..config.study import StudySpec
from .sequential import LookDecision, SequentialPlan, decide
from .tracks import (TRACKS, CertifyError, RuleCheck, Track, TrackChoice, TrackTest, get_track, track_settings)


@dataclass
class PlanRef:
    batch: int
    variant: str
    state: str  # open | done
    plan: SequentialPlan
    settings: dict[str, Any]


def study_plans(db: Database, study: StudyRow) -> list[PlanRef]:
    """The sequential plans recorded in the study's confirmation batches, oldest first."""
    with db.session() as s:
        rows = list(s.scalars(select(BatchRow).where(BatchRow.study_id == study.id, BatchRow.kind == "confirmation")
                              .order_by(BatchRow.id)))
    out = []
    for row in rows:
        plan = (row.args or {}).get("plan")
        if plan:
            out.append(PlanRef(row.id, row.args.get("variant_key", ""), row.state, SequentialPlan.from_json(plan),
                               dict(row.args.get("track_settings") or {})))
    return out


def study_target(spec: StudySpec, metric: str) -> float | None:
    for c in spec.objective.constraints:
        if c.metric == metric:
            return c.threshold
    return None


def choose_track(spec: StudySpec, plans: list[PlanRef], name: str | None = None,
                 settings: dict[str, Any] | None = None) -> TrackChoice | None:
    """The track that judges the study (see the module's docstring); None when nothing can be judged."""
    if name is not None:
        track = get_track(name)
        return TrackChoice(track, track_settings(track, settings), "named on the command line")
    if plans:
        ref = plans[-1]
        track = get_track(ref.plan.track)
        return TrackChoice(track, track_settings(track, ref.settings), f"the sequential plan of batch #{ref.batch}")
    if spec.trainer.log_format in TRACKS:
        track = TRACKS[spec.trainer.log_format]
        return TrackChoice(track, track_settings(track, settings), f"the study's log format ({track.name})")
    constraint = next(iter(spec.objective.constraints), None)
    track = TRACKS["modded-nanogpt"]
    if constraint is None or constraint.metric != track.metric or constraint.op != "<=":
        return None
    return TrackChoice(track, track_settings(track, settings), "modded-nanogpt's rule on the study's constraint "
                       f"({constraint})")


@dataclass
class Certification:
    track: str
    variant: str
    params: dict[str, Any]
    counted: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    lost: list[dict[str, Any]]
    in_flight: list[int]
    test: TrackTest | None
    checks: list[RuleCheck]
    plan: SequentialPlan | None = None
    plan_batch: int | None = None
    decision: LookDecision | None = None
    replaced_by: dict[int, int] = field(default_factory=dict)  # lost trial -> the retry that re-ran it

    @property
    def passed(self) -> bool:
        return (self.test is not None and self.test.passed and not self.failed and not self.in_flight
                and all(c.passed is not False for c in self.checks))

    @property
    def numbers(self) -> list[int]:
        return [r["number"] for r in self.counted]

    def failed_checks(self) -> list[RuleCheck]:
        return [c for c in self.checks if c.passed is False]

    def verdict(self) -> str:
        """One paragraph: what the track's rule concludes from these runs."""
        head = f"{self.track}: "
        if self.test is None:
            text = head + f"no counted confirmation run with a {self.track_metric()} yet"
        else:
            text = head + ("certified" if self.passed else "not certified") + f": {self.test.explanation}"
            text += f" over confirmation runs {', '.join(map(str, self.numbers))}"
        if self.failed:
            text += "; counted as failures: " + ", ".join(f"trial {r['number']} ({r.get('exit_reason') or r['state']})"
                                                         for r in self.failed)
        for check in self.failed_checks():
            text += f"; rule broken: {check.rule}, trial {check.trial}: {check.detail}"
        if self.in_flight:
            text += f"; still running: trials {', '.join(map(str, self.in_flight))}"
        if self.lost:
            text += "; lost to the infrastructure (not counted): " + ", ".join(
                f"trial {r['number']} ({r.get('exit_reason') or 'lost'}"
                + (f", re-run as trial {self.replaced_by[r['number']]}" if r["number"] in self.replaced_by else "")
                + ")" for r in self.lost)
        if self.decision is not None and self.plan is not None:
            text += f". Sequential plan (batch #{self.plan_batch}): {self.decision.text}"
        return text + "."

    def track_metric(self) -> str:
        return TRACKS[self.track].metric if self.track in TRACKS else "metric"


def _metric(record: dict[str, Any], metric: str) -> float | None:
    value = record.get(f"metrics.{metric}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _order(record: dict[str, Any]) -> tuple:
    index = record.get("user_attrs.batch_index")
    return (record.get("user_attrs.batch") or 0, index if isinstance(index, int) else 10**9, record["number"])


def certify_variant(spec: StudySpec, records: list[dict[str, Any]], variant: str, choice: TrackChoice,
                    plan: PlanRef | None = None) -> Certification:
    track: Track = choice.track
    runs = sorted((r for r in records if r["kind"] == "confirmation" and r["variant"] == variant
                   and r["state"] != "invalid"), key=_order)
    counted, failed, lost, in_flight = [], [], [], []
    for r in runs:
        if r["state"] == "complete":
            (counted if _metric(r, track.metric) is not None else failed).append(r)
        elif r["state"] == "failed":
            failed.append(r)
        elif r["state"] == "lost":
            lost.append(r)
        else:
            in_flight.append(r["number"])
    replaced = {r["retry_of"]: r["number"] for r in runs if r.get("retry_of") is not None}
    values = [_metric(r, track.metric) for r in counted]
    null = track.null_value(choice.settings, study_target(spec, track.metric))
    test = track.test(values, choice.settings, null) if values else None
    checks = [c for r in counted for c in track.run_checks(r, choice.settings)]
    params = {n: runs[0].get(f"params.{n}") for n in spec.all_names()} if runs else {}
    cert = Certification(track.name, variant, params, counted, failed, lost, in_flight, test, checks,
                         replaced_by=replaced)
    if plan is not None:
        cert.plan, cert.plan_batch = plan.plan, plan.batch
        cert.decision = decide(plan.plan, values, len(failed))
    return cert


def certify_study(spec: StudySpec, records: list[dict[str, Any]], plans: list[PlanRef],
                  choice: TrackChoice | None, first: str | None = None) -> list[Certification]:
    """One certification per variant with confirmation runs: the latest plan's variant first, then `first`
    (e.g. the write-up's pick), then the others by their number of confirmation runs."""
    if choice is None:
        return []
    keys: dict[str, int] = {}
    for r in records:
        if r["kind"] == "confirmation" and r["state"] != "invalid":
            keys[r["variant"]] = keys.get(r["variant"], 0) + 1
    planned = {ref.variant: ref for ref in plans}
    order = [ref.variant for ref in reversed(plans) if ref.variant in keys]
    if first in keys and first not in order:
        order.append(first)
    order += sorted((k for k in keys if k not in order), key=lambda k: -keys[k])
    out = []
    for key in order:
        try:
            out.append(certify_variant(spec, records, key, choice, planned.get(key)))
        except CertifyError:
            raise
    return out
