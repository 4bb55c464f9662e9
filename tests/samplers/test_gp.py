"""The frontier sampler's estimator (orchestrator/samplers/frontier/gp.py), beside test_frontier.py's tests of
the sampler and its decision."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orchestrator.samplers.frontier import gp

TRUE_STD = 0.0019  # the reference runs' replicate std


@pytest.mark.parametrize("hint", [TRUE_STD / 1.6, 0.002, TRUE_STD * 1.6])
def test_the_learned_noise_std_is_the_std_of_normal_runs(hint: float) -> None:
    """What the write-up reports as the learned noise, and what the confirmation-run count is computed from, is
    the runs' own std, whether the hint was right or 1.6x off. (It was once the std of the robust model's whole
    t distribution: 1.3x the runs' std, and 1.7x the confirmation runs.)"""
    rng = np.random.default_rng(7)
    ratios = []
    for _ in range(30):
        X = rng.integers(0, 15, size=(24, 1)) / 14.0
        y = 3.28 + 0.002 * X[:, 0] + rng.normal(0.0, TRUE_STD, len(X))
        fit = gp.fit(X, y, prior=gp.NoisePrior(hint, math.log(2.0)), hetero=False)
        ratios.append(fit.noise_std / TRUE_STD)
    assert 0.85 <= float(np.median(ratios)) <= 1.15, ratios
