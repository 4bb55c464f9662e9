"""What a record folder says, gathered from the database: the certified variant and its counted runs, the
baseline it is compared with, the paired timing, the step-cut answer, the training command's diff against the
baseline, the rule checks, and a portable reproduction command. Checked before anything is written
(`RecordProblem` names the rule and the runs)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from db import Database, StudyRow

from ..analysis.results import full_records, json_field
from ..certify.evidence import Certification, study_plans
from ..certify.paired import PairedTiming
from ..certify.step_cut import StepCut
from ..certify.summary import study_evidence
from ..certify.tracks import RuleCheck, get_track
from ..config.errors import OrchError
from ..config.study import StudySpec
from ..export.change import portable_command, variant_change


class RecordProblem(OrchError):
    """A rule the record breaks, or evidence it lacks (exit 2; `--draft` writes the folder marked instead)."""


@dataclass
class RunSet:
    """A group of runs (the record's or the baseline's) and their statistics."""

    label: str
    records: list[dict[str, Any]]
    metric: str
    objective: str

    def values(self, key: str) -> list[float]:
        out = []
        for r in self.records:
            v = r.get("value") if key == self.objective else r.get(f"metrics.{key}")
            if v is not None and math.isfinite(float(v)):
                out.append(float(v))
        return out

    def stat(self, key: str, fn) -> float | None:
        xs = self.values(key)
        if not xs or (fn is statistics.stdev and len(xs) < 2):
            return None
        return fn(xs)

    @property
    def steps(self) -> int | None:
        xs = self.values("steps")
        return int(statistics.median(xs)) if xs else None


@dataclass
class RecordData:
    study: str
    spec: StudySpec
    track: str
    name: str
    date: str
    certification: Certification
    record: RunSet
    baseline: RunSet | None
    baseline_how: str
    paired: PairedTiming | None
    step_cut: StepCut | None
    checks: list[RuleCheck]
    diff_name: str
    diff: str
    command: str
    container: str | None
    hardware: str | None
    versions: dict[str, str]
    code_revision: str | None
    problems: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # the track's settings the evidence was judged with
    author: str = ""
    github_id: str = ""

    @property
    def certified(self) -> bool:
        return not self.problems

    @property
    def alpha(self) -> float:
        return self.certification.test.alpha if self.certification.test else 0.01


def _variant_of(spec: StudySpec, records: list[dict[str, Any]], text: str) -> str:
    """`#N` (trial N's variant) or a variant key."""
    if text.startswith("#") and text[1:].isdigit():
        number = int(text[1:])
        for r in records:
            if r["number"] == number:
                return r["variant"]
        raise OrchError(f"--variant: the study has no trial #{number} (fix: pick a trial from `orch export` or "
                        "`orch study status`)")
    return text


def _diff(spec: StudySpec, study: str, cert: Certification, baseline: RunSet | None) -> tuple[str, str]:
    """(file name, text): the change of the record's variant against the baseline (export/change.py)."""
    injected = next((r.get("injection_diff") for r in cert.counted if r.get("injection_diff")), None)
    base = None
    if baseline is not None and baseline.records:
        base = {n: baseline.records[0].get(f"params.{n}") for n in spec.parameters}
        if baseline.records[0].get("variant") == "unmodified":
            base = {n: None for n in spec.parameters}
    change = variant_change(spec, study, cert.params, base, injected)
    return change.file_name, change.diff


def gather(db: Database, study: StudyRow, track_name: str, *, variant: str | None = None,
           best_score: float | None = None, name: str | None = None, author: str = "",
           github_id: str = "") -> RecordData:
    spec = StudySpec.model_validate(study.spec)
    track = get_track(track_name)
    records = [r for r in full_records(db, study) if r["state"] != "invalid"]
    settings = {"best_score": best_score} if best_score is not None else {}
    plans = study_plans(db, study)
    if plans and plans[-1].plan.track == track.name:
        settings = {**plans[-1].settings, **settings}
    evidence = study_evidence(db, study, track=track.name, settings=settings, records=records)
    if evidence.problem:
        raise RecordProblem(f"{track.name}: {evidence.problem}")
    key = _variant_of(spec, records, variant) if variant else None
    if key is None:
        key = plans[-1].variant if plans else (evidence.certifications[0].variant if evidence.certifications else None)
    cert = evidence.certification_of(key)
    if cert is None:
        which = f"variant {key}" if key else "any variant"
        raise RecordProblem(f"{track.name}: no confirmation runs of {which} to certify (fix: run `orch study confirm "
                            f"{study.name}` first, or name a confirmed variant with --variant '#N')")
    objective = spec.objective.metric
    record = RunSet("this record", cert.counted, track.metric, objective)
    paired = next((p for p in reversed(evidence.paired) if any(r.role == "A" and _is(records, r.number, key)
                                                                for r in p.runs)), None)
    baseline, how = None, "none: the study has no baseline run"
    if paired is not None:
        numbers = {r.number for r in paired.runs if r.role == "B" and r.time is not None}
        baseline = RunSet("baseline", [r for r in records if r["number"] in numbers], track.metric, objective)
        how = f"the B runs of the paired batch #{paired.batch} (same machines, interleaved A B B A)"
    else:
        base = [r for r in records if r["kind"] == "baseline" and r["state"] == "complete"
                and r.get("user_attrs.paired_block") is None]
        if base:
            first = base[0]["variant"]
            baseline = RunSet("baseline", [r for r in base if r["variant"] == first], track.metric, objective)
            how = "the study's baseline runs (kind baseline)"
    checks = list(cert.checks)
    checks.append(RuleCheck("every confirmation run of the variant counted (none dropped or replaced)", None,
                            True, f"{len(cert.counted)} counted, {len(cert.failed)} failed (counted), {len(cert.lost)} "
                            "lost to the infrastructure (listed)"))
    if track.name == "modded-nanogpt":
        if paired is None or paired.interval is None:
            checks.append(RuleCheck("faster than the baseline timed on the same hardware (modded-nanogpt rule 4)",
                                    None, None, "not checked: no paired timing (run `orch study confirm "
                                    f"{study.name} --paired --baseline ...`)"))
        else:
            checks.append(RuleCheck("faster than the baseline timed on the same hardware (modded-nanogpt rule 4)",
                                    None, paired.faster(), paired.text()))
    problems = []
    if cert.test is None or not cert.test.passed:
        problems.append(_test_problem(cert))
    if cert.failed:
        problems.append("runs " + ", ".join(str(r["number"]) for r in cert.failed) + " failed without a "
                        f"{track.metric}: they count, so the evidence cannot pass")
    for check in checks:
        if check.passed is False:
            problems.append(f"rule '{check.rule}' broken by " + (f"trial {check.trial}" if check.trial is not None
                                                                  else "the submission") + f": {check.detail}")
    first = cert.counted[0] if cert.counted else {}
    gpu = f"{first.get('gpu_count')} x {first['gpu_model']}" if first.get("gpu_model") else None
    diff_name, diff = _diff(spec, study.name, cert, baseline)
    when = max((r["ended_at"] for r in cert.counted if r.get("ended_at")), default=None)
    date = (datetime.fromisoformat(str(when)) if when else datetime.now(timezone.utc)).strftime("%Y-%m-%d")
    return RecordData(
        study=study.name, spec=spec, track=track.name, name=name or study.name, date=date, certification=cert,
        record=record, baseline=baseline, baseline_how=how, paired=paired, step_cut=evidence.step_cut, checks=checks,
        diff_name=diff_name, diff=diff,
        command=portable_command(spec, study.name, {n: cert.params.get(n) for n in spec.parameters}),
        container=first.get("container_image"), hardware=gpu, versions=dict(json_field(first.get("versions")) or {}),
        code_revision=first.get("code_revision"), problems=problems, settings=settings, author=author,
        github_id=github_id)


def _is(records: list[dict[str, Any]], number: int, key: str | None) -> bool:
    return key is not None and any(r["number"] == number and r["variant"] == key for r in records)


def _test_problem(cert: Certification) -> str:
    if cert.test is None:
        return f"{cert.track}: no counted run with a value to test"
    return (f"rule '{cert.test.rule}' fails over confirmation runs {', '.join(map(str, cert.numbers))}: "
            f"{cert.test.explanation}")


def variant_label(spec: StudySpec, params: dict[str, Any]) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{n} = {fmt(params.get(n))}" for n in spec.all_names() if params.get(n) is not None)


__all__ = ["RecordData", "RecordProblem", "RunSet", "gather", "variant_label"]
