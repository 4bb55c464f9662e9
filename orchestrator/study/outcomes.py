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

from ..config.study import StudySpec
from ..parsers import MetricPoint, ParsedRun


@dataclass
class Outcome:
    state: str  # "complete" or "failed"
    exit_reason: str
    value: float | None = None
    feasible: bool | None = None
    constraints: dict[str, float] = field(default_factory=dict)  # metric -> violation (<= 0 is satisfied)
    metrics: dict[str, float] = field(default_factory=dict)
    note: str | None = None
    retry: bool = False  # the study's on_failure says: re-run it with the same values


#: exit reasons of a trial that failed by itself, and which `on_failure` key of the study covers each
FAILURE_KINDS = {"diverged": "diverged", "crashed": "crashed", "incomplete": "crashed"}


#: samplers that read a failed trial's exit reason themselves (orch:exit_reason) and count it as evidence
READS_EXIT_REASONS = ("frontier", "bisection")


def failure_policy(spec: StudySpec, exit_reason: str | None) -> str:
    """`fail`, `infeasible` or `retry` for a failed trial with this exit reason (others: `fail`); `auto`
    resolves so that the failure reaches the study's sampler as information (see config.study.OnFailure)."""
    kind = FAILURE_KINDS.get(exit_reason or "")
    policy = getattr(spec.on_failure, kind) if kind else "fail"
    if policy == "auto":
        reads_itself = spec.sampler.name in READS_EXIT_REASONS
        policy = "fail" if reads_itself or not spec.objective.constraints else "infeasible"
    return policy


def failure_constraints(spec: StudySpec) -> dict[str, float]:
    """What a failure counted as infeasible tells the sampler: every constraint violated."""
    return {c.metric: math.inf for c in spec.objective.constraints}


def _apply_policy(spec: StudySpec, outcome: Outcome) -> Outcome:
    policy = failure_policy(spec, outcome.exit_reason)
    if policy == "infeasible":
        outcome.feasible, outcome.constraints = False, failure_constraints(spec)
        outcome.note = f"{outcome.note}; told to the sampler as infeasible (on_failure)"
    elif policy == "retry":
        outcome.retry = True
        outcome.note = f"{outcome.note}; re-run with the same values while retries remain (on_failure)"
    return outcome


def decide(spec: StudySpec, run: ParsedRun, returncode: int | None, *, timed_out: bool = False,
           launcher_error: str | None = None) -> Outcome:
    metrics = {k: v for k, v in run.metrics.items() if isinstance(v, (int, float))}
    if launcher_error:
        return Outcome("failed", "launch_error", metrics=metrics, note=launcher_error)
    if run.exit_reason == "diverged":
        return _apply_policy(spec, Outcome("failed", "diverged", metrics=metrics,
                                           note="the trainer reported a non-finite loss"))
    if not run.complete:
        if timed_out:
            return Outcome("failed", "timeout", metrics=metrics, note=f"killed after the {spec.timeout_s:g} s timeout")
        why = run.reason or "incomplete log"
        if run.error:
            why = f"{why}; the job's last error: {run.error}"
        code = f"exit status {returncode}" if returncode is not None else "no exit status"
        return _apply_policy(spec, Outcome("failed", "crashed" if returncode else "incomplete", metrics=metrics,
                                           note=f"{code}; {why}"))
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


#: system attrs a model-based sampler reads: where the run ran (machine effects) and why it ended
ATTR_MACHINE = "orch:machine"
ATTR_EXIT_REASON = "orch:exit_reason"


#: system attr optuna-dashboard reads feasibility from: the constraint values as a list (Optuna's older form)
ATTR_DASHBOARD_CONSTRAINTS = "constraints"


def tell(study: optuna.Study, trial_id: int, number: int, state: str, value: float | None,
         constraints: dict[str, float], *, machine: str | None = None, exit_reason: str | None = None,
         metrics: dict[str, float] | None = None) -> None:
    """Tell Optuna a trial's result; a no-op when Optuna already has it (so recovery can call it again).
    A failed trial with constraints (on_failure: infeasible) is told as a complete trial violating them.
    The machine and the exit reason go with it (system attrs), so a sampler can model machines and read a
    crash or a divergence as evidence rather than as a missing run. What optuna-dashboard shows goes too: user
    attrs `machine`, `hit` (met every constraint), `exit_reason` of a trial that did not complete, the constraint
    metrics' values (e.g. `val_loss`, from `metrics`), and the constraints as the list it reads."""
    frozen = study._storage.get_trial(trial_id)
    if frozen.state.is_finished():
        return
    storage = study._storage
    for key, attr in ((ATTR_MACHINE, machine), (ATTR_EXIT_REASON, exit_reason)):
        if attr is not None and frozen.system_attrs.get(key) != attr:
            storage.set_trial_system_attr(trial_id, key, attr)
    if state == "failed" and constraints:
        state, value = "complete", value if value is not None else _worst_value(study)
    shown = {"machine": machine}
    if state == "complete":
        shown["hit"] = all(v <= 0 for v in constraints.values())
        shown.update({k: float(metrics[k]) for k in constraints if k in (metrics or {})
                      and math.isfinite(metrics[k])})
    else:
        shown["exit_reason"] = exit_reason
    for key, attr in shown.items():
        if attr is not None and frozen.user_attrs.get(key) != attr:
            storage.set_trial_user_attr(trial_id, key, attr)
    if state == "complete":
        trial = optuna.trial.Trial(study, trial_id)
        for key, violation in constraints.items():
            if key not in frozen.constraints:
                trial.set_constraint(key, min(violation, 1e300))
        if constraints and ATTR_DASHBOARD_CONSTRAINTS not in frozen.system_attrs:
            storage.set_trial_system_attr(trial_id, ATTR_DASHBOARD_CONSTRAINTS,
                                          [min(v, 1e300) for v in constraints.values()])
        _tell(study, number, value)
    else:
        _tell(study, number, state=TrialState.FAIL)


def curve_value(spec: StudySpec, point: MetricPoint) -> float | None:
    """What a validation point adds to its trial's curve (Optuna's intermediate values, `trial.report`): the
    study's objective or first constraint metric that the point carries, else its val_loss."""
    if point.kind != "val":
        return None
    for metric in (spec.objective.metric, *(c.metric for c in spec.objective.constraints), "val_loss"):
        value = point.extra.get(metric) if metric in point.extra else getattr(point, metric, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def named_constraints(trial) -> dict[str, float]:
    """A trial's constraints by metric name: Optuna's `constraints` reads the dashboard's list twin as keys
    "0", "1", ...; those are left out where named ones exist."""
    named = {k: v for k, v in trial.constraints.items() if not k.isdigit()}
    return named or dict(trial.constraints)


def _tell(study: optuna.Study, *args, **kwargs) -> None:
    try:
        study.tell(*args, **kwargs)
    except RuntimeError as exc:
        # Optuna's grid sampler calls `study.stop()` once its grid is visited, which raises outside `optimize()`.
        # The result is stored already (Optuna stores it in a `finally`); the budget decides when to stop.
        if "Study.stop" not in str(exc):
            raise


def _worst_value(study: optuna.Study) -> float:
    """The objective value an infeasible failure is told with: the worst one seen, so no sampler prefers it."""
    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if t.value is not None and math.isfinite(t.value)]
    if not values:
        return 0.0
    return max(values) if study.direction == optuna.study.StudyDirection.MINIMIZE else min(values)
