"""The step-cut baseline: would cutting steps from the baseline give the same time at the same loss?

modded-nanogpt's README asks that a change which spends the record's loss buffer "outperform a simple step
count decrease, when measured at equivalent loss". `orch study step-cut` runs the baseline with fewer steps
(kind `step_cut`, user attr `step_cut` = the step count; the study's `trainer.steps` templates tell the trainer),
at counts planned so that their time brackets the candidate's (`plan_steps`). Here the baseline's runs, full and
cut, give a line of metric against time (least squares, `scipy.stats.linregress`); at the candidate's mean time
the line predicts the metric a step cut reaches there. The candidate beats the step cut when its mean metric is
better than that prediction with the whole interval of the difference on its side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

LEVEL = 0.95
#: planned step counts around the one whose time matches the candidate's: -4%, 0, +4% of it
SPREAD = (-0.04, 0.0, 0.04)


def plan_steps(full_steps: int, baseline_time: float, candidate_time: float) -> list[int]:
    """Step counts of the cut baseline whose times bracket the candidate's: time scales with steps, so the cut
    that matches is full_steps x candidate_time / baseline_time."""
    if not candidate_time < baseline_time:
        raise ValueError(f"the candidate ({candidate_time:.4g}) is not faster than the baseline ({baseline_time:.4g}): "
                         "there is no time to match by cutting steps")
    match = full_steps * candidate_time / baseline_time
    counts = sorted({max(1, min(full_steps - 1, round(match * (1 + d)))) for d in SPREAD})
    return counts


@dataclass
class StepCut:
    metric: str  # the constraint metric, e.g. val_loss
    objective: str  # the timed objective, e.g. train_time_s
    below: bool
    full_steps: int | None
    cut_runs: list[dict[str, Any]]
    baseline_runs: list[dict[str, Any]]
    candidate_time: float | None
    candidate_metric: float | None
    predicted_metric: float | None  # the step cut's metric at the candidate's time
    difference: float | None  # candidate - step cut, in the metric (negative = better when below)
    interval: tuple[float, float] | None
    df: int | None
    time_at_candidate_metric: float | None  # when the step-cut line reaches the candidate's metric
    level: float = LEVEL

    def beats(self) -> bool | None:
        """True: the schedule beats the step cut; False: it does not; None: the runs cannot tell."""
        if self.interval is None:
            return None
        lo, hi = self.interval
        if self.below:
            return True if hi < 0 else (False if lo >= 0 else None)
        return True if lo > 0 else (False if hi <= 0 else None)

    def text(self) -> str:
        if self.difference is None:
            return ("Step-cut baseline: not enough runs (the baseline's full and cut runs need at least 3 times, "
                    "and the candidate a complete run)")
        steps = sorted({int(r["user_attrs.step_cut"]) for r in self.cut_runs})
        out = (f"Step-cut baseline ({len(self.cut_runs)} runs at {', '.join(map(str, steps))} steps"
               + (f" of {self.full_steps}" if self.full_steps else "") + f", {len(self.baseline_runs)} full runs): at "
               f"the candidate's {self.objective} {self.candidate_time:.4g}, cutting steps reaches {self.metric} "
               f"{self.predicted_metric:.4f}; the candidate's mean is {self.candidate_metric:.4f} "
               f"(difference {self.difference:+.4f}")
        if self.interval is not None:
            out += f", {int(self.level * 100)}% interval {self.interval[0]:+.4f} to {self.interval[1]:+.4f}"
        out += ")"
        if self.time_at_candidate_metric is not None:
            out += (f"; cutting steps reaches the candidate's {self.metric} at {self.objective} "
                    f"{self.time_at_candidate_metric:.4g}")
        verdict = self.beats()
        out += (". The schedule beats a simple step-count decrease." if verdict is True else
                ". The schedule does NOT beat a simple step-count decrease: cutting steps gives the same time at the "
                "same or better loss." if verdict is False else
                ". The runs cannot tell the schedule from a simple step-count decrease (the interval includes 0): "
                "run more step-cut or candidate runs.")
        return out


def _values(records: list[dict[str, Any]], key: str) -> list[float]:
    out = []
    for r in records:
        v = r.get("value") if key == "value" else r.get(f"metrics.{key}")
        if v is not None and math.isfinite(float(v)):
            out.append(float(v))
    return out


def step_cut(records: list[dict[str, Any]], candidate: str, baseline: str, metric: str, objective: str,
             below: bool = True, level: float = LEVEL) -> StepCut | None:
    """The comparison, from complete runs: the baseline variant's full runs (search, baseline, confirmation kinds)
    and its step-cut runs, and the candidate's runs of those kinds. None when the study has no step-cut run."""
    import scipy.stats  # here, not at the top: it costs ~0.5 s of every orch command's start
    done = [r for r in records if r["state"] == "complete" and r.get("value") is not None
            and r.get(f"metrics.{metric}") is not None]
    cut = [r for r in done if r["kind"] == "step_cut" and r["variant"] == baseline]
    if not [r for r in records if r["kind"] == "step_cut"]:
        return None
    full = [r for r in done if r["kind"] in ("search", "baseline", "confirmation") and r["variant"] == baseline
            and r.get("user_attrs.paired_block") is None]
    cand = [r for r in done if r["kind"] in ("search", "baseline", "confirmation") and r["variant"] == candidate]
    steps = [int(float(r["metrics.steps"])) for r in full if r.get("metrics.steps") is not None]
    result = StepCut(metric, objective, below, int(np.median(steps)) if steps else None, cut, full, None, None, None,
                     None, None, None, None, level)
    line = cut + full
    if len(line) < 3 or not cand or len({round(float(r["value"]), 9) for r in line}) < 2:
        return result
    t, m = np.array(_values(line, "value")), np.array(_values(line, metric))
    fit = scipy.stats.linregress(t, m)
    tc, mc = np.array(_values(cand, "value")), np.array(_values(cand, metric))
    x0 = float(tc.mean())
    result.candidate_time, result.candidate_metric = x0, float(mc.mean())
    result.predicted_metric = float(fit.intercept + fit.slope * x0)
    result.difference = result.candidate_metric - result.predicted_metric
    if fit.slope != 0:
        result.time_at_candidate_metric = float((result.candidate_metric - fit.intercept) / fit.slope)
    n = len(t)
    resid = m - (fit.intercept + fit.slope * t)
    s2 = float(resid @ resid) / (n - 2) if n > 2 else math.nan
    sxx = float(((t - t.mean()) ** 2).sum())
    se_fit2 = s2 * (1 / n + (x0 - t.mean()) ** 2 / sxx) if sxx > 0 else math.nan
    se_c2 = float(mc.var(ddof=1)) / len(mc) if len(mc) > 1 else s2 / len(mc)  # one run: the line's noise
    se = math.sqrt(se_fit2 + se_c2)
    if n > 2 and math.isfinite(se):
        # Welch-Satterthwaite degrees of freedom of the two variance parts
        df_c = len(mc) - 1 if len(mc) > 1 else n - 2
        df = (se_fit2 + se_c2) ** 2 / ((se_fit2 ** 2) / (n - 2) + (se_c2 ** 2) / max(df_c, 1)) if se > 0 else n - 2
        half = float(scipy.stats.t.ppf(0.5 + level / 2, df)) * se
        result.interval = (result.difference - half, result.difference + half)
        result.df = int(round(df))
    return result
