"""The search space of a study as Optuna distributions, and the grid it spans (for the grid sampler)."""

from __future__ import annotations

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from ..config.study import StudySpec


def distributions(spec: StudySpec) -> dict[str, BaseDistribution]:
    out: dict[str, BaseDistribution] = {}
    for name, p in spec.parameters.items():
        if p.type == "categorical":
            out[name] = CategoricalDistribution(list(p.choices or []))
        elif p.type == "int":
            out[name] = IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            out[name] = FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    return out


def grid(spec: StudySpec) -> dict[str, list]:
    out: dict[str, list] = {}
    for name, p in spec.parameters.items():
        if p.type == "categorical":
            out[name] = list(p.choices or [])
        elif p.type == "int":
            out[name] = list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))
        else:
            count = int(round((p.high - p.low) / p.step)) + 1
            out[name] = [round(float(v), 12) for v in np.linspace(p.low, p.low + (count - 1) * p.step, count)]
    return out
