"""Samplers a study can name in its YAML: each a `SamplerPlugin` (builder + options model) registered in
`PLUGINS`, the one place that maps `sampler.name` to a sampler. What the controller and the write-up may
read from a sampler is declared in `base.DecidingSampler`."""

from __future__ import annotations

from typing import Any

import optuna
from pydantic import BaseModel, ValidationError

from ..config.errors import ConfigError
from ..config.study import StudySpec
from .base import DecidingSampler, SamplerPlugin
from .frontier.options import FrontierOptions, build_frontier, check_retired
from .space import distributions, grid


def resumed_seed(seed: int | None, trials_so_far: int) -> int | None:
    """A controller that restarts must not replay its sampler's random stream from the start (it would
    propose the first points again): the seed is offset by the number of trials the study already has,
    which keeps a study reproducible from its history."""
    return None if seed is None else (seed * 1_000_003 + trials_so_far) % (2**32)


def _random(spec: StudySpec, options: dict, seed: int | None) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed, **options)


def _grid(spec: StudySpec, options: dict, seed: int | None) -> optuna.samplers.BaseSampler:
    # the grid sampler keeps its visited points in the study, so its plain seed is safe across restarts
    return optuna.samplers.GridSampler(grid(spec), seed=spec.sampler.seed, **options)


def _tpe(spec: StudySpec, options: dict, seed: int | None) -> optuna.samplers.BaseSampler:
    # constraints reach TPE through trial.set_constraint (Optuna 5); the controller sets them before tell
    return optuna.samplers.TPESampler(seed=seed, **{"constant_liar": True, "multivariate": True, **options})


def _gp(spec: StudySpec, options: dict, seed: int | None) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=seed, **options)


def _frontier(spec: StudySpec, options: FrontierOptions, seed: int | None) -> optuna.samplers.BaseSampler:
    return build_frontier(spec, options, seed)


_FRONTIER = "one model of all runs; asks for the runs that settle the fastest feasible variant (docs/search.md)"
PLUGINS: dict[str, SamplerPlugin] = {p.name: p for p in (
    SamplerPlugin("random", _random, None, "Optuna's RandomSampler"),
    SamplerPlugin("grid", _grid, None, "Optuna's GridSampler over every parameter's steps"),
    SamplerPlugin("tpe", _tpe, None, "Optuna's TPESampler, constrained, multivariate, constant liar"),
    SamplerPlugin("gp", _gp, None, "Optuna's GPSampler"),
    SamplerPlugin("frontier", _frontier, FrontierOptions, _FRONTIER),
    # the name the first model-free version had; study files that name it get the frontier sampler
    SamplerPlugin("bisection", _frontier, FrontierOptions, _FRONTIER + " (former name)"),
)}
BUILDERS = {name: plugin.build for name, plugin in PLUGINS.items()}


def sampler_options(spec: StudySpec) -> BaseModel | dict[str, Any]:
    """The study's `sampler.options`, validated by the sampler's own model (ConfigError naming the key)."""
    plugin = _plugin(spec)
    options = dict(spec.sampler.options)
    if plugin.options is None:
        return options
    retired = check_retired(options) if plugin.options is FrontierOptions else []
    if retired:
        raise ConfigError(f"sampler option(s) {', '.join(retired)} are gone: the {spec.sampler.name} sampler learns "
                          "them from the runs", field="sampler.options", fix="remove them (docs/search.md lists the options)")
    try:
        return plugin.options.model_validate(options)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"sampler option {where}: {err['msg']}", field=f"sampler.options.{where}",
                          fix="see docs/search.md for the sampler's options") from None


def build_sampler(spec: StudySpec, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
    plugin = _plugin(spec)
    options = sampler_options(spec)
    try:
        return plugin.build(spec, options, resumed_seed(spec.sampler.seed, trials_so_far))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad option for the {plugin.name} sampler: {exc}", field="sampler.options",
                          fix="remove or correct the options the sampler does not take") from None


def _plugin(spec: StudySpec) -> SamplerPlugin:
    name = spec.sampler.name
    if name not in PLUGINS:
        raise ConfigError(f"sampler {name!r} is not available in this version", field="sampler.name",
                          fix=f"use one of {', '.join(sorted(PLUGINS))}")
    return PLUGINS[name]


__all__ = ["BUILDERS", "DecidingSampler", "PLUGINS", "SamplerPlugin", "build_sampler", "distributions", "grid",
           "resumed_seed", "sampler_options"]
