"""The sequential confirmation design of `orch study confirm`: a group-sequential one-sample t-test.

The runs are read at fixed looks (cumulative counts n_1 < ... < n_K = the maximum). At look k the track's own
one-sided t-test over every counted run so far gives p_k, and

- p_k < `nominal_p`: stop, certified (so the track's fixed-sample test, p < alpha, passes as well);
- k < K and p_k >= `futility_p` (0.5: the mean is on the wrong side of the target): stop, it will not pass;
- k = K without crossing: stop, not certified;
- otherwise the next look's runs are queued.

Error rates. Under the null (the true mean exactly at the target, normal runs, any spread) the sequence of t
statistics is pivotal: it depends on the look counts only. `nominal_p` is the Pocock-type constant level whose
chance of a false pass over all looks is `alpha`, found as the alpha-quantile of min_k p_k over simulated null
paths (minus a Monte Carlo margin of 3 standard errors, so the true rate stays below alpha). The futility stop
only ends runs that would otherwise go on, so it can only lower the false-pass rate. The stated `type_one` and
`power` (the chance to pass when the true mean is `planning_effect` on the right side with spread
`planning_sigma`) and the expected number of runs are measured by simulating the whole procedure with an
independent seed. The plan is stored (JSON) in the batch row before the first confirmation run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

MAX_RUNS = 200
FUTILITY_P = 0.5
SIMULATIONS = 200_000
_CHUNK_CELLS = 4_000_000  # normal draws per simulation chunk (memory: 32 MB)


@dataclass(frozen=True)
class SequentialPlan:
    track: str
    rule: str
    metric: str
    null_value: float
    below: bool
    alpha: float
    looks: tuple[int, ...]
    nominal_p: float
    futility_p: float
    planning_effect: float  # |true mean - null value| the power is stated for, in metric units
    planning_sigma: float
    type_one: float
    power: float
    expected_runs_null: float
    expected_runs_effect: float
    simulations: int
    seed: int

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["looks"] = list(self.looks)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SequentialPlan":
        return cls(**{**data, "looks": tuple(data["looks"])})

    @property
    def max_runs(self) -> int:
        return self.looks[-1]

    def summary(self) -> str:
        looks = ", ".join(map(str, self.looks))
        return (f"group-sequential one-sided t-test, looks at {looks} runs: pass when p < {self.nominal_p:.4g} at a look, "
                f"stop for futility when p >= {self.futility_p:g} at an interim look; overall false-pass rate "
                f"{self.type_one:.4f} (bound {self.alpha:g}), power {self.power:.2f} when the true mean is "
                f"{self.planning_effect:.4g} {'below' if self.below else 'above'} {self.null_value:g} with std "
                f"{self.planning_sigma:.4g}; expected runs {self.expected_runs_null:.1f} (at the target) and "
                f"{self.expected_runs_effect:.1f} (at that effect)")


def look_schedule(first: int, every: int, max_runs: int) -> tuple[int, ...]:
    """first, first + every, ... up to max_runs (always the last look)."""
    if not 2 <= first <= max_runs:
        raise ValueError(f"the first look needs 2..{max_runs} runs, got {first}")
    if every < 1:
        raise ValueError("looks must be at least 1 run apart")
    if max_runs > MAX_RUNS:
        raise ValueError(f"at most {MAX_RUNS} runs")
    looks = list(range(first, max_runs + 1, every))
    if looks[-1] != max_runs:
        looks.append(max_runs)
    return tuple(looks)


def _look_p_values(looks: Sequence[int], shift: float, sims: int, rng: np.random.Generator) -> np.ndarray:
    """p-values (sims x looks) of the one-sided t-test (mean < 0) of standard normal runs shifted by `shift`."""
    import scipy.stats  # here, not at the top: it costs ~0.5 s of every orch command's start
    looks_arr = np.asarray(looks)
    n_max = int(looks_arr[-1])
    out = np.empty((sims, len(looks_arr)))
    chunk = max(1, _CHUNK_CELLS // n_max)
    for start in range(0, sims, chunk):
        rows = min(chunk, sims - start)
        x = rng.standard_normal((rows, n_max)) + shift
        s1 = np.cumsum(x, axis=1)[:, looks_arr - 1]
        s2 = np.cumsum(x * x, axis=1)[:, looks_arr - 1]
        mean = s1 / looks_arr
        var = np.maximum(s2 - looks_arr * mean * mean, 1e-300) / (looks_arr - 1)
        t = mean / np.sqrt(var / looks_arr)
        out[start:start + rows] = scipy.stats.t.cdf(t, looks_arr - 1)
    return out


def _run_procedure(p: np.ndarray, looks: Sequence[int], nominal_p: float, futility_p: float) -> tuple[np.ndarray, np.ndarray]:
    """(passed, runs used) of every simulated path."""
    sims, k = p.shape
    passed = np.zeros(sims, dtype=bool)
    runs = np.full(sims, looks[-1], dtype=float)
    open_ = np.ones(sims, dtype=bool)
    for i, n in enumerate(looks):
        cross = open_ & (p[:, i] < nominal_p)
        passed |= cross
        runs[cross] = n
        open_ &= ~cross
        if i < k - 1:
            futile = open_ & (p[:, i] >= futility_p)
            runs[futile] = n
            open_ &= ~futile
    return passed, runs


def calibrate(looks: Sequence[int], alpha: float, sims: int = SIMULATIONS, seed: int = 0) -> float:
    """The constant per-look p threshold whose false-pass chance over all looks is at most `alpha`."""
    if len(looks) == 1:
        return alpha  # one look: the fixed-sample test itself
    p = _look_p_values(looks, 0.0, sims, np.random.default_rng(seed))
    margin = 3.0 * math.sqrt(alpha * (1 - alpha) / sims)
    return float(min(alpha, np.quantile(p.min(axis=1), max(alpha - margin, alpha / 2))))


def simulate(looks: Sequence[int], nominal_p: float, futility_p: float, effect_in_sd: float, sims: int,
             seed: int) -> tuple[float, float]:
    """(chance to pass, mean runs used) when the true mean is `effect_in_sd` standard deviations on the passing
    side of the null value (0: exactly at it)."""
    p = _look_p_values(looks, -effect_in_sd, sims, np.random.default_rng(seed))
    passed, runs = _run_procedure(p, looks, nominal_p, futility_p)
    return float(passed.mean()), float(runs.mean())


def design(*, track: str, rule: str, metric: str, null_value: float, below: bool, alpha: float,
           looks: Sequence[int], planning_effect: float, planning_sigma: float, sims: int = SIMULATIONS,
           seed: int = 0, futility_p: float = FUTILITY_P) -> SequentialPlan:
    if not (planning_sigma > 0 and math.isfinite(planning_sigma)):
        raise ValueError("the planning standard deviation must be a positive number")
    if not (planning_effect > 0 and math.isfinite(planning_effect)):
        raise ValueError("the planning effect must be a positive number")
    looks = tuple(int(n) for n in looks)
    sims = min(sims, max(20_000, 40_000_000 // looks[-1]))
    nominal = calibrate(looks, alpha, sims, seed)
    type_one, runs_null = simulate(looks, nominal, futility_p, 0.0, sims, seed + 1)
    if len(looks) == 1:
        type_one = alpha  # one look is the fixed-sample t-test: its false-pass rate is alpha exactly
    power, runs_effect = simulate(looks, nominal, futility_p, planning_effect / planning_sigma, sims, seed + 2)
    return SequentialPlan(track=track, rule=rule, metric=metric, null_value=float(null_value), below=below,
                          alpha=alpha, looks=looks, nominal_p=nominal, futility_p=futility_p,
                          planning_effect=float(planning_effect), planning_sigma=float(planning_sigma),
                          type_one=type_one, power=power, expected_runs_null=runs_null,
                          expected_runs_effect=runs_effect, simulations=sims, seed=seed)


@dataclass(frozen=True)
class LookDecision:
    look: int  # 1-based index of the look read, 0 when none is due yet
    n: int  # counted runs read
    p_value: float | None
    decision: str  # continue | pass | futility | not_passed | failed_run | waiting
    text: str

    @property
    def final(self) -> bool:
        return self.decision in ("pass", "futility", "not_passed", "failed_run")


def one_sided_p(values: Sequence[float], null_value: float, below: bool) -> float:
    from ..analysis.variants import ttest_1samp_pvalue

    p = ttest_1samp_pvalue(values, null_value, alternative="less" if below else "greater")
    return 0.5 if math.isnan(p) else p


def decide(plan: SequentialPlan, values: Sequence[float], failed_runs: int = 0) -> LookDecision:
    """The decision after the last look the counted runs `values` (in run order) reach. A counted run that failed
    (diverged, crashed) has no value: the evidence then cannot pass, and the plan stops."""
    if failed_runs:
        return LookDecision(0, len(values), None, "failed_run",
                            f"{failed_runs} counted run(s) failed without a {plan.metric}: not certified (every run counts)")
    reached = [i for i, n in enumerate(plan.looks) if n <= len(values)]
    if not reached:
        return LookDecision(0, len(values), None, "waiting", f"{len(values)} of {plan.looks[0]} runs for the first look")
    for i in reached:
        n = plan.looks[i]
        p = one_sided_p(values[:n], plan.null_value, plan.below)
        where = f"look {i + 1} of {len(plan.looks)} ({n} runs): p = {p:.3g}"
        if p < plan.nominal_p:
            return LookDecision(i + 1, n, p, "pass", f"{where} < {plan.nominal_p:.4g}: certified")
        if i == len(plan.looks) - 1:
            return LookDecision(i + 1, n, p, "not_passed", f"{where} >= {plan.nominal_p:.4g} at the last look: not "
                                "certified")
        if p >= plan.futility_p:
            return LookDecision(i + 1, n, p, "futility", f"{where} >= {plan.futility_p:g} (the mean is on the wrong "
                                f"side of {plan.null_value:g}): stopped, it would not pass")
    i = reached[-1]
    return LookDecision(i + 1, plan.looks[i], p, "continue",
                        f"{where}: between the bounds, next look at {plan.looks[i + 1]} runs")
