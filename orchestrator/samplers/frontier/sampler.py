"""`FrontierSampler`: an Optuna sampler that models every run of a study jointly (model.py) and chooses
each round's points to settle one decision (decision.py): which variant is fastest while its mean metric
still meets the target with P >= the study's level.

It owns the study's numeric parameters (the ones given, or all float/int ones); categorical ones go to
an independent sampler. It reads from each trial what the controller stores: the objective value, the
constraint (``trial.set_constraint(key, metric - threshold)``), the machine (system attr
``orch:machine``) and, for a failed trial, why (``orch:exit_reason``: a crash or a divergence is
evidence; an infrastructure failure is not). Each trial's point is kept in its system attr
``frontier:point``, so a restarted controller and a retried trial keep their points.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import math
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from .acquisition import next_points
from .decision import Recommendation, Rule, decide
from .model import StudyModel, fit_model
from .space import Observation, Param, SearchSpace

ATTR_POINT = "frontier:point"
ATTR_MACHINE = "orch:machine"
ATTR_EXIT = "orch:exit_reason"
CRASHED = {"crashed", "incomplete"}
DIVERGED = {"diverged"}


class FrontierSampler(BaseSampler):
    """See the module docstring; the arguments are plain data so a study YAML block can hold them.

    Args:
        params: the searched parameters as dicts (``name, low, high`` and optional ``step, log, int``);
            default: the study's numeric parameters, read from its trials.
        constraint_key: the constraint the model reads (default: the largest constraint value).
        threshold: the target of the raw metric (so reports are in metric units; default 0 on violations).
        sense: ``<=`` (metric at most the threshold) or ``>=``.
        noise_std: the run-to-run std you expect; a prior the model learns from (default: learned alone).
        level: P(feasible) a pick needs. stop_level: P(feasible) the pick needs to settle the search.
        regret_tolerance: expected regret (objective units) below which the search is settled
            (default 0.25% of the objective's typical value).
        max_crash_rate: a variant whose crash rate is likely above this is not feasible.
        min_runs: completed runs before the search may settle.
        pick_runs: completed runs a variant needs to be the pick (one lucky run is never a result).
        start: the baseline variant: the first point run, and what "time saved" is measured against.
        n_initial: points of the space-filling first design (default: max(4, parameters + 2)).
        allowed: a test of a variant's values (the registry passes the study's derived-parameter bounds).
    """

    def __init__(
        self,
        *,
        params: Sequence[Mapping[str, Any]] | None = None,
        constraint_key: str | None = None,
        threshold: float | None = None,
        sense: str = "<=",
        noise_std: float | None = None,
        level: float = 0.9,
        stop_level: float = 0.95,
        regret_tolerance: float | None = None,
        max_crash_rate: float = 0.25,
        min_runs: int = 8,
        pick_runs: int = 2,
        start: Mapping[str, float] | None = None,
        n_initial: int | None = None,
        allowed: Callable[[dict[str, float]], bool] | None = None,
        seed: int | None = None,
        independent_sampler: BaseSampler | None = None,
    ) -> None:
        if sense not in ("<=", ">="):
            raise ValueError(f"sense must be '<=' or '>=', got {sense!r}")
        for name, value, lo, hi in (("level", level, 0.5, 1.0), ("stop_level", stop_level, 0.5, 1.0),
                                    ("max_crash_rate", max_crash_rate, 0.0, 1.0)):
            if not (isinstance(value, (int, float)) and lo <= value < hi + (name == "max_crash_rate")):
                raise ValueError(f"{name} must be a number in [{lo}, {hi}), got {value!r}")
        if noise_std is not None and not (isinstance(noise_std, (int, float)) and math.isfinite(noise_std) and noise_std > 0):
            raise ValueError(f"noise_std must be a positive number, got {noise_std!r}")
        if regret_tolerance is not None and not (isinstance(regret_tolerance, (int, float)) and regret_tolerance >= 0):
            raise ValueError(f"regret_tolerance must be a number >= 0, got {regret_tolerance!r}")
        self._params = [_param(p) for p in params] if params else None
        self._key = constraint_key
        self._threshold = threshold
        self._sense = sense
        self._noise = noise_std
        self._level, self._stop_level = float(level), float(stop_level)
        self._regret_tolerance = regret_tolerance
        self._max_crash_rate = float(max_crash_rate)
        self._min_runs = int(min_runs)
        if not (isinstance(pick_runs, int) and pick_runs >= 1):
            raise ValueError(f"pick_runs must be a whole number >= 1, got {pick_runs!r}")
        self._pick_runs = pick_runs
        self._start = dict(start or {})
        self._n_initial = n_initial
        self._allowed = allowed
        self._seed = seed
        self._independent = independent_sampler or RandomSampler(seed=seed)
        self._space: SearchSpace | None = None
        self._cache: dict[tuple, Any] = {}

    # ------------------------------------------------------------------ Optuna sampler interface
    def reseed_rng(self) -> None:
        self._independent.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._independent.before_trial(study, trial)
        if ATTR_POINT in trial.system_attrs:
            return
        self._raise_error_if_multi_objective(study)
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        space = self._search_space(trials)
        if space is None:
            return  # the first trial of a study whose parameters are not known yet: the independent sampler
        fixed = trial.system_attrs.get("fixed_params") or {}
        if fixed and all(n in fixed for n in space.names):
            point = {n: float(fixed[n]) for n in space.names}
        else:
            point = self._next_point(study, trials, trial, space)
            point.update({k: float(v) for k, v in fixed.items() if k in point})
        study._storage.set_trial_system_attr(trial._trial_id, ATTR_POINT, point)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        point = trial.system_attrs.get(ATTR_POINT) or {}
        if param_name in point and not isinstance(param_distribution, CategoricalDistribution):
            return _fit(point[param_name], param_distribution)
        if param_name in self._start and not isinstance(param_distribution, CategoricalDistribution):
            return _fit(self._start[param_name], param_distribution)
        return self._independent.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self._independent.after_trial(study, trial, state, values)

    # ------------------------------------------------------------------ what the controller and write-up read
    def settled(self, study: Study) -> bool:
        """True once the decision is settled (see decision.py): the controller stops asking for trials."""
        rec = self.recommendation(study)
        return bool(rec is not None and rec.settled)

    def recommendation(self, study: Study, until_trial: int | None = None) -> Recommendation | None:
        """The pick rule's answer from the study's runs (those numbered below ``until_trial``)."""
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        if until_trial is not None:
            trials = [t for t in trials if t.number < until_trial]
        space = self._search_space(trials)
        if space is None:
            return None
        obs = self.observations(trials, space)
        key = ("rec", _signature(trials))
        if key not in self._cache:
            model = self._model(obs, space, study, trials)
            baseline = self._start if all(n in self._start for n in space.names) else None
            self._cache[key] = decide(model, obs, self.rule(study), baseline=baseline,
                                      rng=np.random.default_rng(_seed(self._seed, len(obs))))
        return self._cache[key]

    def rule(self, study: Study) -> Rule:
        return Rule(target=self._threshold or 0.0, sense=self._sense,
                    minimize=study.direction != StudyDirection.MAXIMIZE, level=self._level,
                    stop_level=self._stop_level, regret_tolerance=self._regret_tolerance,
                    noise_hint=self._noise, max_crash_rate=self._max_crash_rate, min_runs=self._min_runs,
                    pick_runs=self._pick_runs)

    def observations(self, trials: Sequence[FrozenTrial], space: SearchSpace) -> list[Observation]:
        """The finished trials as the model reads them."""
        out = []
        for t in trials:
            params = _point_of(t, space)
            if params is None:
                continue
            machine = t.system_attrs.get(ATTR_MACHINE) or t.user_attrs.get("machine")
            reason = t.system_attrs.get(ATTR_EXIT)
            if t.state == TrialState.COMPLETE:
                violation = self._violation(t)
                if violation is None or not math.isfinite(violation) or violation > 1e299:
                    status = "crashed" if reason in CRASHED else "diverged"
                    out.append(Observation(params, None, None, machine, status))
                    continue
                metric = self._metric(violation)
                value = t.value if t.value is not None and math.isfinite(t.value) else None
                out.append(Observation(params, value, metric, machine, "ok"))
            elif t.state == TrialState.FAIL and reason in CRASHED | DIVERGED:
                out.append(Observation(params, None, None, machine, "diverged" if reason in DIVERGED else "crashed"))
        return out

    # ------------------------------------------------------------------ internals
    def _violation(self, t: FrozenTrial) -> float | None:
        constraints = _constraints(t)
        if not constraints:
            return None
        if self._key is not None:
            return constraints.get(self._key)
        return max(constraints.values())

    def _metric(self, violation: float) -> float:
        if self._threshold is None:
            return violation
        return self._threshold + violation if self._sense == "<=" else self._threshold - violation

    def _search_space(self, trials: Sequence[FrozenTrial]) -> SearchSpace | None:
        if self._space is not None:
            return self._space
        params = self._params
        if params is None:
            for t in trials:
                if t.distributions:
                    params = [_param_from(n, d) for n, d in t.distributions.items()
                              if not isinstance(d, CategoricalDistribution)]
                    break
        if not params:
            return None
        self._space = SearchSpace(params, allowed=self._allowed)
        self._space.lattice()
        return self._space

    def _model(self, obs: Sequence[Observation], space: SearchSpace, study: Study,
               trials: Sequence[FrozenTrial]) -> StudyModel:
        key = ("model", _signature(trials))
        if key not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            rule = self.rule(study)
            self._cache[key] = fit_model(obs, space, target=rule.target, sense=rule.sense, minimize=rule.minimize,
                                         noise_hint=rule.noise_hint, max_crash_rate=rule.max_crash_rate)
        return self._cache[key]

    def _next_point(self, study: Study, trials: Sequence[FrozenTrial], trial: FrozenTrial,
                    space: SearchSpace) -> dict[str, float]:
        others = [t for t in trials if t.number != trial.number]
        pending = [p for t in others if t.state == TrialState.RUNNING and (p := _point_of(t, space)) is not None]
        obs = self.observations(others, space)
        usable = sum(o.status == "ok" for o in obs)
        n_initial = self._n_initial or max(4, len(space.names) + 2)
        rng = np.random.default_rng(_seed(self._seed, trial.number))
        if usable == 0 or usable + len(pending) < n_initial and usable < 2:
            return self._design_point(space, [o.params for o in obs] + pending, rng)
        model = self._model(obs, space, study, others)
        baseline = self._start if all(n in self._start for n in space.names) else None
        return next_points(model, obs, pending, self.rule(study), rng, count=1, baseline=baseline)[0]

    def _design_point(self, space: SearchSpace, used: Sequence[Mapping[str, float]], rng: np.random.Generator) -> dict[str, float]:
        """The space-filling first round: the baseline, then the variant farthest from those already used."""
        lattice = space.lattice()
        unit = space.to_unit(lattice)
        if not used:
            if all(n in self._start for n in space.names):
                target = space.to_unit(space.row(self._start))[0]
            else:
                target = np.full(len(space.names), 0.5)
            return space.as_dict(lattice[int(np.argmin(((unit - target) ** 2).sum(-1)))])
        taken = space.to_unit(np.array([space.row(p) for p in used]))
        dist = ((unit[:, None, :] - taken[None, :, :]) ** 2).sum(-1).min(1)
        best = np.flatnonzero(dist >= dist.max() - 1e-12)
        return space.as_dict(lattice[int(rng.choice(best))])


def _constraints(t: FrozenTrial) -> dict[str, float]:
    raw = getattr(t, "constraints", None)
    if isinstance(raw, Mapping):
        return {k: float(v) for k, v in raw.items()}
    out = {}
    for k, v in t.system_attrs.items():
        if k.startswith("constraints:") and isinstance(v, (int, float)):
            out[k.split(":", 1)[1]] = float(v)
    return out


def _point_of(t: FrozenTrial, space: SearchSpace) -> dict[str, float] | None:
    if all(n in t.params for n in space.names):
        return {n: float(t.params[n]) for n in space.names}
    point = t.system_attrs.get(ATTR_POINT)
    if isinstance(point, Mapping) and all(n in point for n in space.names):
        return {n: float(point[n]) for n in space.names}
    return None


def _signature(trials: Sequence[FrozenTrial]) -> tuple:
    return tuple((t.number, t.state.value) for t in trials if t.state.is_finished())


def _seed(seed: int | None, n: int) -> int:
    return ((seed or 0) * 1_000_003 + n) % (2**32)


def _param(spec: Mapping[str, Any]) -> Param:
    unknown = set(spec) - {"name", "low", "high", "step", "log", "int"}
    if unknown or "name" not in spec or "low" not in spec or "high" not in spec:
        raise ValueError(f"a searched parameter is {{name, low, high[, step, log, int]}}, got {dict(spec)!r}")
    return Param(str(spec["name"]), float(spec["low"]), float(spec["high"]),
                 None if spec.get("step") is None else float(spec["step"]), bool(spec.get("log", False)),
                 bool(spec.get("int", False)))


def _param_from(name: str, dist: BaseDistribution) -> Param:
    if isinstance(dist, IntDistribution):
        return Param(name, float(dist.low), float(dist.high), float(dist.step) if not dist.log else None,
                     dist.log, True)
    assert isinstance(dist, FloatDistribution)
    return Param(name, dist.low, dist.high, dist.step, dist.log, False)


def _fit(value: float, dist: BaseDistribution) -> Any:
    if isinstance(dist, IntDistribution):
        v = int(round(value))
        if not dist.log and dist.step:
            v = dist.low + int(round((v - dist.low) / dist.step)) * dist.step
        return int(min(max(v, dist.low), dist.high))
    if isinstance(dist, FloatDistribution):
        v = float(value)
        if dist.step is not None:
            v = dist.low + round((v - dist.low) / dist.step) * dist.step
        return float(min(max(v, dist.low), dist.high))
    return value

