"""The sequential confirmation design (orchestrator/certify/sequential.py): its stated error rates hold when the
procedure the CLI runs (`decide`, look by look) is replayed on simulated runs drawn here, independently of the
design's own simulator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from orchestrator.certify.sequential import SequentialPlan, calibrate, decide, design, look_schedule

ALPHA = 0.01
TARGET = 3.28


def _plan(looks, effect=0.002, sigma=0.0015) -> SequentialPlan:
    return design(track="modded-nanogpt", rule="r", metric="val_loss", null_value=TARGET, below=True, alpha=ALPHA,
                  looks=looks, planning_effect=effect, planning_sigma=sigma)


def _replay(plan: SequentialPlan, true_mean: float, sigma: float, reps: int, seed: int) -> tuple[float, float]:
    """(pass rate, mean runs used) of `decide` applied to `reps` simulated confirmations."""
    rng = np.random.default_rng(seed)
    passed, used = 0, 0
    for _ in range(reps):
        runs = list(true_mean + sigma * rng.standard_normal(plan.max_runs))
        decision = decide(plan, runs)  # reads the looks in order and stops at the first final one
        passed += decision.decision == "pass"
        used += decision.n
    return passed / reps, used / reps


@pytest.mark.parametrize("looks", [(3, 5, 7, 9, 11, 12), (4, 8, 12, 16)])
def test_stated_error_rates_hold_for_the_procedure_the_cli_runs(looks):
    plan = _plan(looks)
    assert plan.nominal_p < ALPHA and plan.type_one <= ALPHA
    reps = 2000
    # under the null (mean exactly at the target) a false pass is rarer than alpha (3 standard errors of slack)
    false_pass, runs_null = _replay(plan, TARGET, 0.0015, reps, seed=1)
    assert false_pass <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / reps)
    assert runs_null == pytest.approx(plan.expected_runs_null, rel=0.1)
    # at the planning effect the pass rate is the stated power
    power, runs_effect = _replay(plan, TARGET - plan.planning_effect, plan.planning_sigma, reps, seed=2)
    assert power == pytest.approx(plan.power, abs=4 * math.sqrt(plan.power * (1 - plan.power) / reps) + 0.005)
    assert runs_effect == pytest.approx(plan.expected_runs_effect, rel=0.1) and runs_effect < plan.max_runs


def test_looking_often_with_the_fixed_test_would_break_the_error_rate():
    """Why the design lowers the per-look level: reading p < 0.01 at every look passes a null variant far more
    often than 1%."""
    looks = look_schedule(3, 1, 12)
    naive = SequentialPlan(**{**_plan(looks).to_json(), "looks": looks, "nominal_p": ALPHA})
    false_pass, _ = _replay(naive, TARGET, 0.0015, 1500, seed=3)
    assert false_pass > 2 * ALPHA
    assert calibrate(looks, ALPHA) < ALPHA / 2


def test_one_look_is_the_tracks_fixed_sample_test():
    plan = _plan((5,))
    assert plan.nominal_p == ALPHA and plan.type_one == ALPHA
    losses = [3.2780, 3.2775, 3.2790, 3.2770, 3.2785]
    p = scipy.stats.ttest_1samp(losses, TARGET, alternative="less").pvalue
    decision = decide(plan, losses)
    assert decision.p_value == pytest.approx(p) and decision.decision == "pass"


def test_decisions_follow_the_bounds():
    plan = _plan((3, 5, 8))
    assert decide(plan, [3.27]).decision == "waiting"
    wrong_side = decide(plan, [3.281, 3.282, 3.2805])
    assert wrong_side.decision == "futility" and wrong_side.look == 1 and wrong_side.p_value >= 0.5
    between = decide(plan, [3.2790, 3.2799, 3.2785])
    assert between.decision == "continue" and "next look at 5 runs" in between.text
    assert decide(plan, [3.2790, 3.2799, 3.2785, 3.2801, 3.2802, 3.2803, 3.2799, 3.2805]).decision == "not_passed"
    assert decide(plan, [3.27, 3.27], failed_runs=1).decision == "failed_run"
    clear = decide(plan, [3.2740, 3.2745, 3.2738, 3.2742, 3.2741])
    assert clear.decision == "pass" and clear.n == 3 and clear.p_value < plan.nominal_p  # at the first look


def test_more_effect_more_power_and_plans_are_reproducible():
    weak, strong = _plan((3, 6, 9, 12), effect=0.001), _plan((3, 6, 9, 12), effect=0.003)
    assert weak.power < strong.power and strong.expected_runs_effect < weak.expected_runs_effect
    assert _plan((3, 6, 9, 12), effect=0.003) == strong  # a fixed seed: the same plan for the same looks
    assert SequentialPlan.from_json(strong.to_json()) == strong
    with pytest.raises(ValueError):
        look_schedule(1, 2, 10)
