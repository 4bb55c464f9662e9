"""The frontier sampler's settings as a study file writes them (``sampler.options``), and how a study
spec becomes a `FrontierSampler`: the searched parameters are the study's numeric ones, the target is
its first constraint, and variants whose derived parameters fall outside their min/max are not run."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ...config.expressions import ExpressionError, evaluate, names_in, parse_expression
from .space import Param, Rule, SearchSpace

if TYPE_CHECKING:
    from .sampler import FrontierSampler

#: keys of the former `bisection` sampler that the frontier sampler learns by itself
RETIRED = {"repeats_near_boundary", "tolerance", "credible", "likelihood", "misfit", "n_grid",
           "max_trials_per_coordinate", "constraint_key", "threshold", "independent_sampler"}


class Coordinate(BaseModel):
    """A searched parameter as the former bisection sampler listed it (its range may narrow the study's)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    low: float | None = None
    high: float | None = None
    step: float | None = Field(default=None, gt=0)
    direction: str | None = None  # learned from the runs now; accepted so older study files still load
    start: float | None = None


class FrontierOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    params: list[str] | None = None  # study parameters to search (default: every float/int parameter)
    coordinates: list[Coordinate] | None = None  # the former bisection sampler's form of `params`
    noise_std: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    level: float = Field(default=0.9, ge=0.5, lt=1.0)
    confidence: float | None = Field(default=None, ge=0.5, lt=1.0)  # the former name of `level`
    stop_level: float = Field(default=0.95, ge=0.5, lt=1.0)
    regret_tolerance: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    max_crash_rate: float = Field(default=0.25, ge=0.0, le=1.0)
    min_runs: int = Field(default=8, ge=1)
    pick_runs: int = Field(default=2, ge=1)
    start: dict[str, float] | None = None
    n_initial: int | None = Field(default=None, ge=1)

    @field_validator("start")
    @classmethod
    def _finite(cls, start: dict[str, float] | None) -> dict[str, float] | None:
        for k, v in (start or {}).items():
            if not math.isfinite(v):
                raise ValueError(f"start.{k} must be a finite number")
        return start


def check_retired(options: dict[str, Any]) -> list[str]:
    return sorted(set(options) & RETIRED)


def build_frontier(spec: Any, options: FrontierOptions, seed: int | None) -> FrontierSampler:
    from .sampler import FrontierSampler  # scipy: loaded by the commands that sample, not by every command

    params, start = _searched(spec, options)
    constraints = spec.objective.constraints
    first = constraints[0] if constraints else None
    return FrontierSampler(
        params=params, constraint_key=first.metric if first else None, threshold=first.threshold if first else None,
        sense=first.op if first else "<=", noise_std=options.noise_std, level=_level(options),
        stop_level=options.stop_level, regret_tolerance=options.regret_tolerance,
        max_crash_rate=options.max_crash_rate, min_runs=options.min_runs, pick_runs=options.pick_runs,
        start=start or None,
        n_initial=options.n_initial, allowed=_derived_bounds(spec), seed=seed,
    )


def pick_setting(spec: Any, options: FrontierOptions | None = None) -> tuple[SearchSpace, Rule, dict[str, float] | None]:
    """The search space, the pick rule and the baseline of a study, for the pick rule outside the sampler
    (write-up, status, benchmark): the frontier sampler's own options when the study uses it, else defaults."""
    options = options or FrontierOptions()
    params, start = _searched(spec, options)
    if not params:
        raise ValueError("the study has no float or int parameter: the rule's model has nothing to model")
    first = next(iter(spec.objective.constraints), None)
    space = SearchSpace([Param(p["name"], p["low"], p["high"], p["step"], p["log"], p["int"]) for p in params],
                        allowed=_derived_bounds(spec))
    rule = Rule(target=first.threshold if first else 0.0, sense=first.op if first else "<=",
                minimize=spec.objective.direction == "minimize", level=_level(options), stop_level=options.stop_level,
                regret_tolerance=options.regret_tolerance, noise_hint=options.noise_std,
                max_crash_rate=options.max_crash_rate, min_runs=options.min_runs, pick_runs=options.pick_runs)
    baseline = start if start and all(n in start for n in space.names) else None
    return space, rule, baseline


def _level(options: FrontierOptions) -> float:
    return options.confidence if options.confidence is not None else options.level


def _searched(spec: Any, options: FrontierOptions) -> tuple[list[dict[str, Any]], dict[str, float]]:
    numeric = {n: p for n, p in spec.parameters.items() if p.type in ("float", "int")}
    names = options.params or ([c.name for c in options.coordinates] if options.coordinates else list(numeric))
    unknown = [n for n in names if n not in numeric]
    if unknown:
        raise ValueError(f"searched parameter(s) {', '.join(unknown)} are not float/int parameters of the study")
    coords = {c.name: c for c in options.coordinates or []}
    params = []
    for name in names:
        p, c = numeric[name], coords.get(name)
        low = max(p.low, c.low) if c is not None and c.low is not None else p.low
        high = min(p.high, c.high) if c is not None and c.high is not None else p.high
        step = p.step if p.step is not None else (c.step if c is not None else None)
        params.append({"name": name, "low": low, "high": high, "step": step, "log": bool(p.log), "int": p.type == "int"})
    start = dict(options.start or {})
    start.update({c.name: c.start for c in options.coordinates or [] if c.start is not None})
    return params, start


def _derived_bounds(spec: Any):
    """A test that a variant's derived parameters are within their min/max (None when there are none)."""
    bounded = [(parse_expression(d.expr), d.min, d.max) for d in spec.derived.values()
               if d.min is not None or d.max is not None]
    if not bounded:
        return None

    def allowed(values: dict[str, float]) -> bool:
        for tree, lo, hi in bounded:
            if not names_in(tree) <= set(values):
                continue  # depends on a parameter the lattice does not hold: the study's own check decides
            try:
                v = evaluate(tree, values)
            except ExpressionError:
                return False
            if (lo is not None and v < lo - 1e-9) or (hi is not None and v > hi + 1e-9):
                return False
        return True

    return allowed
