"""The one pick rule and the decision the frontier sampler settles.

The decision: which variant is best (fastest, for a speedrun) among those whose mean metric meets the
target with probability >= ``level`` under the joint model of all runs (model.py). The same rule picks
the write-up's headline variant, `orch study status`'s best, the sampler's recommendation and the
benchmark's pick, for every sampler: it reads only the runs (and the user's noise hint), never anything
a user would not know.

- The pick is a variant that has run (a reviewer needs its runs): the best one with P(feasible) >= level.
- Settled: the pick has >= 2 runs, P(feasible) >= ``stop_level``, and the expected regret (its objective
  minus the best feasible variant's, over joint posterior draws of every variant) is <= ``regret_tolerance``.
- The next points (`next_points`): a knowledge gradient on the pick itself (`pick_gain`): the variant whose
  next round of runs most improves, in expectation, the objective of the variant the rule would pick
  afterwards, with "no pick" worth the baseline's objective; the runs in flight count as done, so a batch
  of k asks spreads or repeats as the decision needs. Top-two Thompson sampling where no run would change
  the pick.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
import math
from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri

from .model import Posterior, StudyModel, fit_model
from .space import Observation, SearchSpace

DRAWS = 512
LOOKAHEAD = 4  # runs at a variant whose effect on the pick the acquisition weighs (one round of 4 machines)
SAFE_LEVEL = 0.99  # where the baseline fails, the team falls back to the fastest variant this sure
GAIN_FLOOR = 1e-4  # a gain below this share of the objective's range is no gain: Thompson sampling instead
_HERMITE = tuple(np.asarray(a) for a in np.polynomial.hermite_e.hermegauss(12))
_HERMITE = (_HERMITE[0], _HERMITE[1] / _HERMITE[1].sum())
RECORD_ALPHA = 0.01  # modded-nanogpt's rule: one-sided t-test of the mean at p < 0.01
RECORD_POWER = 0.8


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Rule:
    """The pick rule's settings (a study's sampler options may change them)."""

    target: float
    sense: str = "<="
    minimize: bool = True
    level: float = 0.9
    stop_level: float = 0.95
    regret_tolerance: float | None = None  # objective units; default 0.25% of the objective's typical size
    noise_hint: float | None = None
    max_crash_rate: float = 0.25
    min_runs: int = 8  # completed runs before the decision may be called settled
    pick_runs: int = 2  # completed runs a variant needs to be the pick: one lucky run is never a result


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
    rows, index = _union(lattice, run_rows, space)
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
    pick = int(eligible[np.argmin(rank[eligible])])
    tol = _tolerance(rule, post)
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
    if baseline is not None and all(k in baseline for k in space.names):
        base_post = model.posterior(np.array([space.row(baseline)]))
        diff = base_post.objective_mean[0] - post.objective_mean[pick]
        diff = diff if rule.minimize else -diff
        sd = math.hypot(base_post.objective_sd[0], post.objective_sd[pick])
        rec.baseline = {k: float(baseline[k]) for k in space.names}
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


def next_points(model: StudyModel, observations: Sequence[Observation], pending: Sequence[Mapping[str, float]],
                rule: Rule, rng: np.random.Generator, count: int = 1, *,
                baseline: Mapping[str, float] | None = None, lookahead: int = LOOKAHEAD) -> list[dict[str, float]]:
    """The next ``count`` variants to run, given the runs in flight (``pending``): each the variant whose
    ``lookahead`` runs would most improve the pick the rule makes afterwards (`pick_gain`), the runs in
    flight and those chosen before it in the batch counted as done; top-two Thompson sampling where no run
    changes the pick's expected value."""
    space = model.space
    lattice = space.lattice()
    extra = [space.row(p) for p in pending] + ([space.row(baseline)] if baseline is not None else [])
    rows, index = _union(lattice, extra, space)
    post = model.posterior(rows, joint=True)
    _, run_count = _run_variants(observations, space)
    runs = np.array([run_count.get(space.key(r), 0) for r in rows], float)
    fallback = _no_pick_value(post, index.get(space.key(space.row(baseline))) if baseline is not None else None,
                              _tolerance(rule, post))
    in_flight = [index[space.key(space.row(p))] for p in pending]
    out: list[dict[str, float]] = []
    for _ in range(count):
        cond = post.condition_on_pending(in_flight)
        counted = runs + np.bincount(np.asarray(in_flight, int), minlength=len(runs))
        gain = pick_gain(cond, counted, rule.level, lookahead, fallback, pick_runs=rule.pick_runs)
        if gain.max() > GAIN_FLOOR * max(float(np.ptp(post.objective_rank())), 1e-12):
            best = np.flatnonzero(gain >= gain.max() - 1e-12)
            choice = int(best[np.argmin(post.objective_rank()[best])]) if len(best) > 1 else int(best[0])
        else:
            choice = _top_two_thompson(cond, rng)
        in_flight.append(choice)
        out.append(space.as_dict(rows[choice]))
    return out


def pick_gain(post: Posterior, runs: np.ndarray, level: float, lookahead: int, no_pick: float,
              max_candidates: int = 256, pick_runs: int = 1) -> np.ndarray:
    """For every candidate variant x, the expected improvement of the pick's objective (the rule's pick:
    the best variant with runs and P(feasible) >= ``level``) once ``lookahead`` more runs at x have
    reported: a knowledge gradient on the decision itself. ``runs`` counts each variant's runs (done or
    in flight); a variant needs ``pick_runs`` of them to be the pick. The model is taken as one Gaussian over the
    variants (the hyperparameter mixture moment-matched); the runs' mean at x is one normal draw, the update
    a rank-one Gaussian update, integrated over the draw by Gauss-Hermite quadrature. ``no_pick`` is the
    objective that "no pick" is worth (the baseline's). Beyond ``max_candidates`` variants (large
    lattices) the candidates are those whose feasibility is most in doubt."""
    rank = post.objective_rank()
    mean, cov = post.moment_matched()
    noise = (post.weights[:, None] * post.noise_var).sum(0)
    C = len(rank)
    var = np.maximum(np.diag(cov), 1e-300)
    crash = post.crash_ok
    p_now = ndtr(-mean / np.sqrt(var)) * crash
    now = _pick_value(p_now[None, :], (runs >= pick_runs)[None, :], rank, level, no_pick)[0]
    cand = np.arange(C)
    if C > max_candidates:
        doubt = np.abs(p_now - level) + 1e-3 * (rank - rank.min()) / max(float(np.ptp(rank)), 1e-12)
        cand = np.sort(np.argsort(doubt)[:max_candidates])
    X = len(cand)
    denom = np.sqrt(np.maximum(var[cand] + noise[cand] / lookahead, 1e-300))
    B = cov[cand, :] / denom[:, None]  # (X, C): how each variant's mean moves per unit of the draw at x
    sd_new = np.sqrt(np.maximum(var[None, :] - B**2, 1e-300))
    ran = np.broadcast_to((runs >= pick_runs)[None, :], (X, C)).copy()
    ran[np.arange(X), cand] = runs[cand] + lookahead >= pick_runs
    expected = np.zeros(X)
    for z, w in zip(*_HERMITE):
        p = ndtr(-(mean[None, :] + B * z) / sd_new) * crash
        expected += w * _pick_value(p, ran, rank, level, no_pick)
    gain = np.zeros(C)
    gain[cand] = np.maximum(expected - now, 0.0)
    return gain


def _pick_value(p: np.ndarray, ran: np.ndarray, rank: np.ndarray, level: float, no_pick: float) -> np.ndarray:
    """(rows,) minus the objective of the rule's pick in each row of P(feasible) ``p`` (rows, C)."""
    eligible = (p >= level) & ran
    objective = np.where(eligible, rank[None, :], np.inf).min(axis=1)
    return -np.where(np.isfinite(objective), objective, no_pick)


def _no_pick_value(post: Posterior, baseline: int | None, tolerance: float = 0.0) -> float:
    """The objective that ending without a pick is worth: the team keeps its baseline, which is worth the
    baseline's objective where the baseline meets the target and, where it does not, the fastest variant the
    model is sure of (P(feasible) >= SAFE_LEVEL; else the slowest), mixed by the baseline's P(feasible); plus
    the regret tolerance (a pick the team can take to review is worth a little more than none). Without a
    baseline: that sure variant's objective."""
    rank = post.objective_rank()
    p = post.p_within()
    safe = np.flatnonzero(p >= SAFE_LEVEL)
    fallback = float(rank[safe].min()) if len(safe) else float(rank.max())
    if baseline is None:
        return fallback
    p_base = float(p[baseline])
    return p_base * float(rank[baseline]) + (1.0 - p_base) * max(fallback, float(rank[baseline])) + tolerance


def _top_two_thompson(post: Posterior, rng: np.random.Generator, beta: float = 0.5) -> int:
    """A posterior draw's best feasible variant; with probability 1 - beta, a challenger: the best of a
    further draw whose best differs (Russo's top-two sampling for best-arm identification)."""
    rank = post.objective_rank()
    draws = post.sample(32, rng)
    crash_ok = post.crash_ok >= 0.5
    bests = [_best_feasible(d, rank, crash_ok) for d in draws]
    first = bests[0]
    if rng.random() < beta:
        return first
    for b in bests[1:]:
        if b != first:
            return b
    return first


def _best_feasible(draw: np.ndarray, rank: np.ndarray, crash_ok: np.ndarray) -> int:
    feasible = np.flatnonzero((draw <= 0) & crash_ok)
    if not len(feasible):
        return int(np.argmin(draw))  # nothing feasible in this draw: its most likely feasible variant
    return int(feasible[np.argmin(rank[feasible])])


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
    return 0.0025 * typical


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
