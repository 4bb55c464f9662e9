"""From a finished job to an outcome (state, objective value, feasibility), and telling Optuna about it.

Feasibility follows Optuna 5: each constraint is stored with `trial.set_constraint(key, value)`, feasible
when value <= 0. A run that misses the threshold is complete and infeasible, not failed: samplers learn
the boundary from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from .config.study import StudySpec
from .parsers import ParsedRun


@dataclass
class Outcome:
    state: str  # "complete" or "failed"
    exit_reason: str
    value: float | None = None
    feasible: bool | None = None
    constraints: dict[str, float] = field(default_factory=dict)  # metric -> violation (<= 0 is satisfied)
    metrics: dict[str, float] = field(default_factory=dict)
    note: str | None = None


def decide(spec: StudySpec, run: ParsedRun, returncode: int | None, *, timed_out: bool = False,
           launcher_error: str | None = None) -> Outcome:
    metrics = {k: v for k, v in run.metrics.items() if isinstance(v, (int, float))}
    if launcher_error:
        return Outcome("failed", "launch_error", metrics=metrics, note=launcher_error)
    if run.exit_reason == "diverged":
        return Outcome("failed", "diverged", metrics=metrics, note="the trainer reported a non-finite loss")
    if not run.complete:
        if timed_out:
            return Outcome("failed", "timeout", metrics=metrics, note=f"killed after the {spec.timeout_s:g} s timeout")
        why = run.reason or "incomplete log"
        code = f"exit status {returncode}" if returncode is not None else "no exit status"
        return Outcome("failed", "crashed" if returncode else "incomplete", metrics=metrics, note=f"{code}; {why}")
    objective = spec.objective.metric
    value = metrics.get(objective)
    if value is None or not math.isfinite(value):
        return Outcome("failed", "no_objective", metrics=metrics,
                       note=f"the log's final line has no finite {objective!r}")
    outcome = Outcome("complete", run.exit_reason or "completed", value=float(value), metrics=metrics)
    for constraint in spec.objective.constraints:
        observed = metrics.get(constraint.metric)
        if observed is None or not math.isfinite(observed):
            outcome.constraints[constraint.metric] = math.inf
            outcome.note = f"constraint metric {constraint.metric!r} missing: counted as violated"
        else:
            outcome.constraints[constraint.metric] = constraint.violation(observed)
    outcome.feasible = all(v <= 0 for v in outcome.constraints.values())
    if returncode not in (0, None):
        outcome.note = f"exit status {returncode} after a complete log"
    return outcome


def tell(study: optuna.Study, trial_id: int, number: int, state: str, value: float | None,
         constraints: dict[str, float]) -> None:
    """Tell Optuna a trial's result; a no-op when Optuna already has it (so recovery can call it again)."""
    frozen = study._storage.get_trial(trial_id)
    if frozen.state.is_finished():
        return
    if state == "complete":
        trial = optuna.trial.Trial(study, trial_id)
        for key, violation in constraints.items():
            if key not in frozen.constraints:
                trial.set_constraint(key, min(violation, 1e300))
        study.tell(number, value)
    else:
        study.tell(number, state=TrialState.FAIL)
