"""The one pick rule applied to a study's recorded runs: the write-up's headline and per-round conclusions
and `orch study status` call `study_pick`, which reads the runs as the frontier sampler's model does
(samplers/frontier/decision.py), whatever sampler made them. It sees only the runs and the study's
settings (the noise hint of `sampler.options.noise_std`, the level), never anything a user would not know."""

from __future__ import annotations

import math
from typing import Any

from ..config.study import StudySpec
from ..samplers.frontier import Observation, Recommendation, recommend
from ..samplers.frontier.options import FrontierOptions, pick_setting
from .results import STATS_KINDS

CRASHED = {"crashed", "incomplete"}


def _options(spec: StudySpec) -> FrontierOptions:
    if spec.sampler.name in ("frontier", "bisection"):
        try:
            return FrontierOptions.model_validate(spec.sampler.options)
        except ValueError:
            pass
    hint = spec.sampler.options.get("noise_std") if isinstance(spec.sampler.options, dict) else None
    return FrontierOptions(noise_std=hint if isinstance(hint, (int, float)) and hint > 0 else None)


def observations(spec: StudySpec, records: list[dict[str, Any]], names: list[str]) -> list[Observation]:
    """The runs the rule counts: search and baseline runs that completed, crashed or diverged (a run lost
    to a machine or the controller says nothing about the schedule and is left out)."""
    constraint = next(iter(spec.objective.constraints), None)
    out = []
    for r in records:
        if r.get("kind") not in STATS_KINDS:
            continue
        params = {n: r.get(f"params.{n}") for n in names}
        if any(not isinstance(v, (int, float)) for v in params.values()):
            continue
        machine = r.get("machine")
        if r["state"] == "complete":
            metric = r.get(f"metrics.{constraint.metric}") if constraint else None
            value = r.get("value")
            if constraint and (metric is None or not math.isfinite(float(metric))):
                out.append(Observation(params, None, None, machine, "diverged"))
                continue
            out.append(Observation(params, float(value) if value is not None else None,
                                   float(metric) if metric is not None else None, machine, "ok"))
        elif r["state"] == "failed" and r.get("exit_reason") in CRASHED | {"diverged"}:
            out.append(Observation(params, None, None, machine,
                                   "diverged" if r.get("exit_reason") == "diverged" else "crashed"))
    return out


def study_pick(spec: StudySpec, records: list[dict[str, Any]], until_round: int | None = None) -> Recommendation | None:
    """The rule's pick from the study's runs (of rounds <= ``until_round``); None without a target."""
    if not spec.objective.constraints:
        return None
    try:
        space, rule, baseline = pick_setting(spec, _options(spec))
    except ValueError:
        return None
    if until_round is not None:
        records = [r for r in records if (r.get("round") or 0) <= until_round]
    obs = observations(spec, records, space.names)
    return recommend(obs, space, rule.target, rule=rule, baseline=baseline)


def pick_text(rec: Recommendation | None, metric: str, objective: str) -> list[str]:
    """The pick in sentences (write-up and status)."""
    if rec is None:
        return []
    if rec.params is None and rec.keep_baseline and rec.baseline:
        base = ", ".join(f"{k} = {v:.4g}" for k, v in rec.baseline.items())
        return [f"Pick: keep the baseline ({base}): {rec.reason}."]
    if rec.params is None:
        return [f"Pick: none yet: {rec.reason}."]
    where = ", ".join(f"{k} = {v:.4g}" for k, v in rec.params.items())
    is_base = rec.baseline is not None and all(abs(rec.params[k] - v) <= 1e-9 for k, v in rec.baseline.items())
    if is_base:  # the runs found nothing faster that meets the target: the answer is the team's own schedule
        where = f"the baseline ({where})"
    lo, hi = rec.metric_interval or (math.nan, math.nan)
    line = (f"Pick: {where} ({rec.runs} run{'s' if rec.runs != 1 else ''}): P({metric} mean within target) = "
            f"{rec.p_feasible:.2f}, {metric} ≈ {rec.metric_mean:.4f} (90% interval {lo:.4f} to {hi:.4f}), "
            f"{objective} ≈ {rec.objective_mean:.4g}")
    if rec.saved_mean is not None and not is_base:
        a, b = rec.saved_interval
        line += f", {rec.saved_mean:+.3g} saved against the baseline (90% interval {a:+.3g} to {b:+.3g})"
    line += f"; expected regret {rec.expected_regret:.3g}."
    tail = "Settled." if rec.settled else rec.reason[0].upper() + rec.reason[1:] + "."
    if rec.confirmation_runs is not None:
        tail += f" The record rule's t-test (p < 0.01) would need about {rec.confirmation_runs} confirmation runs."
    return [line, tail]
