"""The sections that make the write-up read like a record page: the evidence behind the headline (hardware, the
time saved against the baseline with its interval, the certification by the track's rule), the per-stage cost
table, the change against the baseline, certification, paired timing and the step-cut baseline. `sections`
gathers them; templates/record_page.{md,html}.j2 render them (jinja2; the HTML stays one self-contained file)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import jinja2
import numpy as np
from sqlalchemy import select

from db import Database, MetricPointRow, StudyRow, TrialRow

from ..certify.summary import StudyEvidence
from .change import Change, variant_change

LEVEL = 0.95
_STAGE = re.compile(r"^stage(\d+)$")
STEP_FLAGS = ("--num-steps", "--steps", "--num-iterations", "--iterations")

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("orchestrator.export", "templates"), keep_trailing_newline=True,
                          undefined=jinja2.StrictUndefined, autoescape=jinja2.select_autoescape(["html.j2"]))


@dataclass
class Saving:
    difference: float
    interval: tuple[float, float] | None
    how: str  # "paired ABBA blocks, machine as a block" | "unblocked Welch: runs on different machines and times"


@dataclass
class Sections:
    evidence: StudyEvidence
    hardware: str | None
    saving: Saving | None
    stages: list[dict[str, Any]] = field(default_factory=list)
    stage_note: str = ""
    change: Change | None = None


def _flag(argv: list[str], names: tuple[str, ...]) -> str | None:
    value = None
    for i, part in enumerate(argv[:-1]):
        if part in names:
            value = argv[i + 1]
    return value


def _points(db: Database, study: StudyRow, number: int) -> list[tuple[int, float]]:
    with db.session() as s:
        trial_id = s.scalar(select(TrialRow.id).where(TrialRow.study_id == study.id, TrialRow.number == number))
        rows = s.execute(select(MetricPointRow.step, MetricPointRow.train_time_ms).where(
            MetricPointRow.trial_id == trial_id, MetricPointRow.train_time_ms.is_not(None))).all()
    return sorted({(int(step), float(t)) for step, t in rows})


def stage_costs(db: Database, study: StudyRow, run: dict[str, Any], names: list[str]) -> tuple[list[dict], str]:
    """Per stage of a staged schedule (parameters stage1, stage2, ... that are fractions of the scheduled steps):
    steps, sequence length and batch (from the trainer's --stage-seq-lens / --stage-batch-tokens flags, when it
    takes them) and ms per step, read from the run's logged times (interpolated between logged steps)."""
    import json

    stages = sorted((int(m.group(1)), n) for n in names if (m := _STAGE.match(n)))
    fractions = [run.get(f"params.{n}") for _, n in stages]
    if len(stages) < 2 or any(not isinstance(f, (int, float)) for f in fractions) or abs(sum(fractions) - 1) > 1e-3:
        return [], ""
    argv = run.get("command")
    argv = json.loads(argv) if isinstance(argv, str) else (argv or [])
    scheduled = _flag(argv, STEP_FLAGS)
    points = _points(db, study, run["number"])
    total = int(float(run["metrics.steps"])) if run.get("metrics.steps") is not None else None
    steps = int(scheduled) if scheduled and scheduled.isdigit() else total
    if not steps:
        return [], ""
    seqs = (_flag(argv, ("--stage-seq-lens",)) or "").split(",")
    batches = (_flag(argv, ("--stage-batch-tokens",)) or "").split(",")
    counts = [round(f * steps) for f in fractions]
    rows, start = [], 0
    xs, ts = (np.array([p[0] for p in points]), np.array([p[1] for p in points])) if points else (None, None)
    for i, ((k, name), frac, count) in enumerate(zip(stages, fractions, counts)):
        end = start + count
        ms = None
        if xs is not None and len(xs) >= 2 and end > start and xs[0] <= start and end <= xs[-1]:
            ms = float((np.interp(end, xs, ts) - np.interp(start, xs, ts)) / (end - start))
        rows.append({"stage": k, "name": name, "fraction": frac, "steps": count,
                     "seq": seqs[i] if i < len(seqs) and seqs[i] else None,
                     "batch": batches[i] if i < len(batches) and batches[i] else None, "ms_per_step": ms})
        start = end
    note = f"trial {run['number']}: {steps} scheduled steps"
    if total is not None and total > steps:
        extra = None
        if xs is not None and len(xs) >= 2 and xs[-1] >= total:
            extra = float((np.interp(total, xs, ts) - np.interp(steps, xs, ts)) / (total - steps))
        rows.append({"stage": "extension", "name": "after the schedule", "fraction": None, "steps": total - steps,
                     "seq": seqs[-1] if seqs and seqs[-1] else None,
                     "batch": batches[-1] if batches and batches[-1] else None, "ms_per_step": extra})
        note += f" + {total - steps} extension steps"
    return rows, note + "; ms per step from the run's logged train times, interpolated between logged steps"


def _saving(best_runs: list[float], base_runs: list[float], evidence: StudyEvidence, best_key: str,
            records: list[dict[str, Any]]) -> Saving | None:
    import scipy.stats  # here, not at the top: it costs ~0.5 s of every orch command's start
    for timing in reversed(evidence.paired):
        numbers = {r.number for r in timing.runs if r.role == "A"}
        if timing.difference is not None and any(r["number"] in numbers and r["variant"] == best_key for r in records):
            return Saving(timing.difference, timing.interval, f"paired ABBA blocks on {timing.blocks} machine(s), "
                          "machine as a block")
    if len(best_runs) >= 2 and len(base_runs) >= 2 and (np.std(best_runs) > 0 or np.std(base_runs) > 0):
        ci = scipy.stats.ttest_ind(best_runs, base_runs, equal_var=False).confidence_interval(LEVEL)
        return Saving(float(np.mean(best_runs) - np.mean(base_runs)), (float(ci.low), float(ci.high)),
                      "unblocked Welch interval: the runs were not paired on one machine")
    if best_runs and base_runs:
        return Saving(float(np.mean(best_runs) - np.mean(base_runs)), None, "no interval: fewer than 2 runs a side")
    return None


def sections(db: Database, study: StudyRow, report, evidence: StudyEvidence) -> Sections:
    best, base = report.best, report.baseline
    hardware = None
    if report.best_run is not None and report.best_run.get("gpu_model"):
        hardware = f"{report.best_run.get('gpu_count')} × {report.best_run['gpu_model']}"
    out = Sections(evidence, hardware, None)
    if best is not None and base is not None and best.key != base.key:
        counted = [r for r in report.records if r["kind"] in ("search", "baseline", "confirmation")
                   and r["state"] == "complete" and r.get("value") is not None
                   and r.get("user_attrs.paired_block") is None]
        best_times = [float(r["value"]) for r in counted if r["variant"] == best.key]
        base_times = [float(r["value"]) for r in counted if r["variant"] == base.key]
        out.saving = _saving(best_times, base_times, evidence, best.key, report.records)
    runs = [r for r in report.records if best is not None and r["variant"] == best.key and r["state"] == "complete"
            and r["kind"] in ("search", "baseline", "confirmation") and r.get("value") is not None]
    run = min(runs, key=lambda r: r["value"]) if runs else None  # the stages are the headline variant's
    if run is not None:
        out.stages, out.stage_note = stage_costs(db, study, run, report.names)
    if best is not None:
        injected = next((r.get("injection_diff") for r in report.records
                         if r["variant"] == best.key and r.get("injection_diff")), None)
        params = {n: best.params.get(n) for n in report.spec.parameters}
        base_params = {n: base.params.get(n) for n in report.spec.parameters} if base is not None else None
        if all(isinstance(v, (int, float, str, bool)) for v in params.values()):
            try:
                out.change = variant_change(report.spec, report.name, params, base_params, injected,
                                            f"the baseline variant ({report.baseline_how})")
            except (ValueError, KeyError):  # an imported study's variant may not build a job (no trainer)
                out.change = None
    return out


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


def render(kind: str, report, page: Sections, part: str) -> str:
    """One part of the record page ("lead": stage costs and the change, after the headline; "evidence":
    certification, paired timing, step cut, after the confirmation runs) as markdown or HTML."""
    return _ENV.get_template(f"record_page.{kind}.j2").render(r=report, p=page, part=part, fmt=_fmt)
