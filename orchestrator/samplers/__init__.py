"""Samplers a study can name in its YAML, built into Optuna samplers. One algorithm per module;
this registry maps `sampler.name` to a builder."""

from __future__ import annotations

from typing import Callable

import optuna

from ..config.errors import ConfigError
from ..config.study import StudySpec
from .space import distributions, grid

Builder = Callable[[StudySpec, "int | None"], optuna.samplers.BaseSampler]


def resumed_seed(seed: int | None, trials_so_far: int) -> int | None:
    """A controller that restarts must not replay its sampler's random stream from the start (it would
    propose the first points again): the seed is offset by the number of trials the study already has,
    which keeps a study reproducible from its history."""
    return None if seed is None else (seed * 1_000_003 + trials_so_far) % (2**32)


def _random(spec: StudySpec, seed: int | None) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed, **spec.sampler.options)


def _grid(spec: StudySpec, seed: int | None) -> optuna.samplers.BaseSampler:
    # the grid sampler keeps its visited points in the study, so its plain seed is safe across restarts
    return optuna.samplers.GridSampler(grid(spec), seed=spec.sampler.seed, **spec.sampler.options)


def _tpe(spec: StudySpec, seed: int | None) -> optuna.samplers.BaseSampler:
    options = {"constant_liar": True, "multivariate": True, **spec.sampler.options}
    # constraints reach TPE through trial.set_constraint (Optuna 5); the controller sets them before tell
    return optuna.samplers.TPESampler(seed=seed, **options)


def _gp(spec: StudySpec, seed: int | None) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=seed, **spec.sampler.options)


def _bisection(spec: StudySpec, seed: int | None) -> optuna.samplers.BaseSampler:
    from .bisection import BisectionSampler

    options = dict(spec.sampler.options)
    constraints = spec.objective.constraints
    if "coordinates" not in options:
        raise ConfigError("the bisection sampler needs `coordinates:` under sampler.options", field="sampler.options",
                          fix="list the parameters to search, e.g. coordinates: [{name: stage1, low: 0.25, high: 0.5}]")
    if constraints and "constraint_key" not in options:
        options["constraint_key"], options["threshold"] = constraints[0].metric, constraints[0].threshold
    try:
        return BisectionSampler(seed=seed, **options)
    except ValueError as exc:
        raise ConfigError(str(exc), field="sampler.options", fix="see docs/search.md for the sampler's arguments") from None


BUILDERS: dict[str, Builder] = {"random": _random, "grid": _grid, "tpe": _tpe, "gp": _gp, "bisection": _bisection}


def build_sampler(spec: StudySpec, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
    name = spec.sampler.name
    if name not in BUILDERS:
        raise ConfigError(f"sampler {name!r} is not available in this version", field="sampler.name",
                          fix=f"use one of {', '.join(sorted(BUILDERS))}")
    try:
        return BUILDERS[name](spec, resumed_seed(spec.sampler.seed, trials_so_far))
    except TypeError as exc:
        raise ConfigError(f"bad option for the {name} sampler: {exc}", field="sampler.options",
                          fix="remove options the sampler does not take") from None


__all__ = ["BUILDERS", "build_sampler", "distributions", "grid", "resumed_seed"]
