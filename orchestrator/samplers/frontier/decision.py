"""The one pick rule and the decision the frontier sampler settles.

The decision: which variant is best (fastest, for a speedrun) among those whose mean metric meets the
target with probability >= ``level`` under the joint model of all runs (model.py). The same rule picks
the write-up's headline variant, `orch study status`'s best, the sampler's recommendation and the
benchmark's pick, for every sampler: it reads only the runs (and the user's noise hint), never anything
a user would not know.

- The pick is a variant that has run (a reviewer needs its runs): the best one with P(feasible) >= level. Variants
  within half the regret tolerance of it count as equally good (a schedule of stage shares often has several of
  one speed): of those, the pick is the one most surely feasible.
- Settled: the pick has >= 2 runs, P(feasible) >= ``stop_level``, and the expected regret (its objective
  minus the best feasible variant's, over joint posterior draws of every variant) is <= ``regret_tolerance``.
- The runs that settle it are chosen in acquisition.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
import math
from typing import Any

import numpy as np
from scipy.special import ndtri

from .model import Posterior, StudyModel, fit_model
from .space import Observation, Rule, SearchSpace

DRAWS = 512
RECORD_ALPHA = 0.01  # modded-nanogpt's rule: one-sided t-test of the mean at p < 0.01
RECORD_POWER = 0.8
# A pick slower than the baseline is no result while the baseline is likely feasible (P >= this): a team keeps its
# baseline rather than slow down for a surer schedule; below it, the slower pick is the way to the target. 0.7, not
# 0.5: a baseline the runs leave at a coin flip is not kept (bench/search_efficiency.py, docs/search.md)
KEEP_BASELINE_P = 0.7
TOLERANCE_SHARE = 0.0025  # the default regret tolerance: this share of the objective's typical size
# Variants within this share of the regret tolerance of the best eligible one are as good: the rule takes the surest.
# Measured (200 seeds, 17 worlds): wrong picks at 24 trials 1-2 points lower in 7 worlds, none higher (docs/search.md)
TIE_SHARE = 0.5


@dataclass
class Recommendation:
    """What the rule concludes from a study's runs."""

    params: dict[str, float] | None  # the picked variant, None while no run variant is likely feasible
    p_feasible: float  # P(its mean metric meets the target) under the model
    metric_mean: float | None  # model estimate of the variant's mean metric, and a 90% credible interval
    metric_interval: tuple[float, float] | None
    objective_mean: float | None  # model estimate of its mean objective (machine effects removed)
    objective_interval: tuple[float, float] | None
    runs: int  # completed runs of the picked variant
    settled: bool
    expected_regret: float | None  # E[objective(pick) - objective(best feasible variant)], objective units
    p_within_tolerance: float | None  # P(the pick is feasible and within the tolerance of the best)
    noise_std: float | None  # the metric's run-to-run std the model learned
    level: float
    baseline: dict[str, float] | None = None
    saved_mean: float | None = None  # objective saved against the baseline (positive = better), and 90% interval
    saved_interval: tuple[float, float] | None = None
    confirmation_runs: int | None = None  # runs the record's t-test (p < 0.01) needs at 80% power, from the model
    reason: str = ""
    best_unrun: dict[str, float] | None = None  # the model's pick among all variants, run or not
    counts: dict[str, int] = field(default_factory=dict)  # runs read: ok / crashed / diverged
    keep_baseline: bool = False  # no pick: every likely-feasible variant is slower than a likely-feasible baseline

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def recommend(
    observations: Sequence[Observation],
    space: SearchSpace,
    target: float,
    *,
    level: float = 0.9,
    noise_hint: float | None = None,
    sense: str = "<=",
    minimize: bool = True,
    baseline: Mapping[str, float] | None = None,
    rule: Rule | None = None,
    seed: int = 0,
) -> Recommendation:
    """The pick from a study's finished runs (see the module docstring)."""
    rule = rule or Rule(target=target, sense=sense, minimize=minimize, level=level, noise_hint=noise_hint)
    model = fit_model(observations, space, target=rule.target, sense=rule.sense, minimize=rule.minimize,
                      noise_hint=rule.noise_hint, max_crash_rate=rule.max_crash_rate)
    return decide(model, observations, rule, baseline=baseline, rng=np.random.default_rng(seed))


def decide(model: StudyModel, observations: Sequence[Observation], rule: Rule, *,
           baseline: Mapping[str, float] | None = None, rng: np.random.Generator) -> Recommendation:
    space = model.space
    counts = {s: sum(o.status == s for o in observations) for s in ("ok", "crashed", "diverged")}
    run_rows, run_count = _run_variants(observations, space)
    if not run_rows:
        return Recommendation(None, 0.0, None, None, None, None, 0, False, None, None, None, rule.level,
                              reason="no completed run yet", counts=counts)
    lattice = space.lattice()
    has_base = baseline is not None and all(k in baseline for k in space.names)
    rows, index = _union(lattice, run_rows + ([space.row(baseline)] if has_base else []), space)
    post = model.posterior(rows)
    p = post.p_within()
    rank = post.objective_rank()
    run_idx = np.array([index[space.key(r)] for r in run_rows])
    ok_runs = np.array([run_count[space.key(r)] for r in run_rows])
    eligible = run_idx[(p[run_idx] >= rule.level) & (ok_runs >= max(rule.pick_runs, 1))]
    any_ok = np.flatnonzero(p >= rule.level)
    best_unrun = space.as_dict(rows[any_ok[np.argmin(rank[any_ok])]]) if len(any_ok) else None
    vmean, vlo, vhi = post.violation_summary()
    sign = 1.0 if rule.sense == "<=" else -1.0
    to_metric = lambda v: rule.target + sign * v  # noqa: E731
    if not len(eligible):
        lead = run_idx[int(np.argmax(p[run_idx]))]
        short = run_idx[(p[run_idx] >= rule.level) & (ok_runs < rule.pick_runs)]
        if len(short):
            lead = int(short[np.argmin(rank[short])])
            why = (f"no variant with {rule.pick_runs} or more runs reaches P(feasible) >= {rule.level:g} yet (the "
                   f"fastest that would: {_fmt(space.as_dict(rows[lead]))} at {p[lead]:.2f}, with "
                   f"{run_count[space.key(rows[lead])]} run; it needs {rule.pick_runs})")
        else:
            why = (f"no run variant reaches P(feasible) >= {rule.level:g} yet (most likely: "
                   f"{_fmt(space.as_dict(rows[lead]))} at {p[lead]:.2f})")
        return Recommendation(None, float(p[lead]), None, None, None, None, 0, False, None, None,
                              _finite(post.noise_std), rule.level, best_unrun=best_unrun, counts=counts, reason=why)
    tol = _tolerance(rule, post)
    as_good = eligible[rank[eligible] <= rank[eligible].min() + TIE_SHARE * tol]
    pick = int(as_good[np.argmax(p[as_good])])
    base = index[space.key(space.row(baseline))] if has_base else None
    base_params = {k: float(baseline[k]) for k in space.names} if has_base else None
    if base is not None and keeps_baseline(rank[pick], rank[base] + tol, p[base]):
        return Recommendation(
            None, float(p[base]), None, None, None, None, int(run_count.get(space.key(rows[base]), 0)), False,
            None, None, _finite(post.noise_std), rule.level, baseline=base_params,
            best_unrun=best_unrun, counts=counts, keep_baseline=True,
            reason=(f"no variant faster than the baseline reaches P(feasible) >= {rule.level:g} with "
                    f"{rule.pick_runs} runs yet, and the baseline's is {p[base]:.2f}; the fastest that does, "
                    f"{_fmt(space.as_dict(rows[pick]))} at {p[pick]:.2f}, is slower"))
    regret, within = _regret(model, post, pick, tol, rng)
    n_pick = int(run_count[space.key(rows[pick])])
    settled = bool(n_pick >= 2 and p[pick] >= rule.stop_level and regret <= tol and model.n_ok >= rule.min_runs)
    m_lo, m_hi = sorted((to_metric(vlo[pick]), to_metric(vhi[pick])))
    half = ndtri(0.95) * post.objective_sd[pick]
    rec = Recommendation(
        params=space.as_dict(rows[pick]), p_feasible=float(p[pick]), metric_mean=float(to_metric(vmean[pick])),
        metric_interval=(float(m_lo), float(m_hi)), objective_mean=float(post.objective_mean[pick]),
        objective_interval=(float(post.objective_mean[pick] - half), float(post.objective_mean[pick] + half)),
        runs=n_pick, settled=settled, expected_regret=float(regret), p_within_tolerance=float(within),
        noise_std=_finite(post.noise_std), level=rule.level, best_unrun=best_unrun, counts=counts,
        reason=("settled" if settled else _why_not(n_pick, p[pick], regret, tol, model.n_ok, rule)),
    )
    rec.confirmation_runs = confirmation_runs(-vmean[pick], post.noise_std)
    if base is not None:  # the baseline is one of `rows`: its marginal is already in `post`
        diff = post.objective_mean[base] - post.objective_mean[pick]
        diff = diff if rule.minimize else -diff
        sd = math.hypot(post.objective_sd[base], post.objective_sd[pick])
        rec.baseline = base_params
        rec.saved_mean = float(diff)
        rec.saved_interval = (float(diff - 1.645 * sd), float(diff + 1.645 * sd))
    return rec


def confirmation_runs(margin: float, noise_std: float, max_runs: int = 200) -> int | None:
    """Runs a one-sided t-test at p < 0.01 needs to pass with 80% power when the true mean is ``margin``
    inside the target and runs scatter by ``noise_std`` (the noncentral t; None when out of reach)."""
    if not (margin > 0 and noise_std and math.isfinite(noise_std) and noise_std > 0):
        return None
    from scipy import stats  # here, not at the top: scipy.stats costs ~0.5 s of every orch command's start

    effect = margin / noise_std
    for n in range(2, max_runs + 1):
        crit = stats.t.ppf(1 - RECORD_ALPHA, n - 1)
        if stats.nct.sf(crit, n - 1, effect * math.sqrt(n)) >= RECORD_POWER:
            return n
    return None


def _regret(model: StudyModel, post: Posterior, pick: int, tol: float, rng: np.random.Generator,
            max_rivals: int = 300) -> tuple[float, float]:
    """E[objective(pick) - objective(best feasible variant)] and P(the pick is feasible and within ``tol`` of
    the best), over joint draws of the pick and its rivals: the faster variants that may be feasible (the
    ``max_rivals`` likeliest). A slower variant can only be better when the pick is infeasible, which the
    second figure counts."""
    rank = post.objective_rank()
    p = post.p_within()
    faster = np.flatnonzero((rank < rank[pick] - 1e-12) & (p > 1e-3))
    rivals = faster[np.argsort(-p[faster])[:max_rivals]]
    subset = np.concatenate([[pick], rivals]).astype(int)
    joint = model.posterior(post.rows[subset], joint=True)
    draws = joint.sample(DRAWS, rng)
    ok = (draws <= 0) & (joint.crash_ok >= 0.5)[None, :]
    sub_rank = rank[subset]
    best = np.where(ok, sub_rank[None, :], np.inf).min(axis=1)
    gap = np.where(np.isfinite(best), np.maximum(rank[pick] - best, 0.0), 0.0)
    return float(gap.mean()), float(np.mean(ok[:, 0] & (gap <= tol)))


def _tolerance(rule: Rule, post: Posterior) -> float:
    if rule.regret_tolerance is not None:
        return rule.regret_tolerance
    typical = float(np.median(np.abs(post.objective_mean))) if np.all(np.isfinite(post.objective_mean)) else 0.0
    return TOLERANCE_SHARE * typical


def keeps_baseline(objective, slower_than, p_base):
    """Whether the rule keeps the baseline rather than pick a variant of ``objective``: the variant is slower than
    ``slower_than`` (the baseline's objective plus the tolerance) while the baseline's P(feasible) ``p_base`` >=
    KEEP_BASELINE_P. Elementwise on arrays (the acquisition's lookahead rows) as on scalars (the pick)."""
    return (objective > slower_than) & (p_base >= KEEP_BASELINE_P)


def _run_variants(observations: Sequence[Observation], space: SearchSpace) -> tuple[list[np.ndarray], dict]:
    rows: dict[tuple, np.ndarray] = {}
    count: dict[tuple, int] = {}
    for o in observations:
        if not all(n in o.params for n in space.names):
            continue
        row = space.row(o.params)
        key = space.key(row)
        rows.setdefault(key, row)
        count[key] = count.get(key, 0) + (1 if o.status == "ok" and o.metric is not None else 0)
    return list(rows.values()), count


def _union(lattice: np.ndarray, extra: Sequence[np.ndarray], space: SearchSpace) -> tuple[np.ndarray, dict]:
    index = {space.key(r): i for i, r in enumerate(lattice)}
    rows = [lattice]
    added = []
    for r in extra:
        k = space.key(r)
        if k not in index:
            index[k] = len(lattice) + len(added)
            added.append(np.asarray(r, float))
    if added:
        rows.append(np.array(added))
    return np.concatenate(rows, axis=0), index


def _why_not(n_pick: int, p: float, regret: float, tol: float, n_ok: int, rule: Rule) -> str:
    why = []
    if n_ok < rule.min_runs:
        why.append(f"{n_ok} of {rule.min_runs} runs")
    if n_pick < 2:
        why.append("the pick has 1 run")
    if p < rule.stop_level:
        why.append(f"P(feasible) {p:.2f} < {rule.stop_level:g}")
    if regret > tol:
        why.append(f"expected regret {regret:.3g} > {tol:.3g}")
    return "not settled: " + ", ".join(why)


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _fmt(params: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in params.items())
