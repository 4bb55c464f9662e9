"""Which runs settle the decision (decision.py) fastest: a knowledge gradient on the pick itself
(`pick_gain`): for every candidate variant, the expected improvement of the objective of the variant the
rule would pick once a round of runs there has reported, with "no pick" worth what the team falls back to;
the runs in flight count as done, so a batch of k asks spreads or repeats as the decision needs
(`next_points`). Top-two Thompson sampling where no run would change the pick."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.special import ndtr

from .decision import Rule, _run_variants, _tolerance, _union, keeps_baseline
from .model import Posterior, StudyModel
from .space import Observation

LOOKAHEAD = 4  # runs at a variant whose effect on the pick the acquisition weighs (one round of 4 machines)
SAFE_LEVEL = 0.99  # where the baseline fails, the team falls back to the fastest variant this sure
GAIN_FLOOR = 1e-4  # a gain below this share of the objective's range is no gain: Thompson sampling instead
_HERMITE = tuple(np.asarray(a) for a in np.polynomial.hermite_e.hermegauss(12))
_HERMITE = (_HERMITE[0], _HERMITE[1] / _HERMITE[1].sum())


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
    base = index.get(space.key(space.row(baseline))) if baseline is not None else None
    tol = _tolerance(rule, post)
    fallback = _no_pick_value(post, base, tol)
    in_flight = [index[space.key(space.row(p))] for p in pending]
    out: list[dict[str, float]] = []
    for _ in range(count):
        cond = post.condition_on_pending(in_flight)
        counted = runs + np.bincount(np.asarray(in_flight, int), minlength=len(runs))
        gain = pick_gain(cond, counted, rule.level, lookahead, fallback, pick_runs=rule.pick_runs,
                         baseline=base, tolerance=tol)
        if gain.max() > GAIN_FLOOR * max(float(np.ptp(post.objective_rank())), 1e-12):
            best = np.flatnonzero(gain >= gain.max() - 1e-12)
            choice = int(best[np.argmin(post.objective_rank()[best])]) if len(best) > 1 else int(best[0])
        else:
            choice = _top_two_thompson(cond, rng)
        in_flight.append(choice)
        out.append(space.as_dict(rows[choice]))
    return out


def pick_gain(post: Posterior, runs: np.ndarray, level: float, lookahead: int, no_pick: float,
              max_candidates: int = 256, pick_runs: int = 1, baseline: int | None = None,
              tolerance: float = 0.0) -> np.ndarray:
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
    keep = (baseline, rank[baseline] + tolerance) if baseline is not None else None
    now = _pick_value(p_now[None, :], (runs >= pick_runs)[None, :], rank, level, no_pick, keep)[0]
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
        expected += w * _pick_value(p, ran, rank, level, no_pick, keep)
    gain = np.zeros(C)
    gain[cand] = np.maximum(expected - now, 0.0)
    return gain


def _pick_value(p: np.ndarray, ran: np.ndarray, rank: np.ndarray, level: float, no_pick: float,
                keep: tuple[int, float] | None = None) -> np.ndarray:
    """(rows,) minus the objective of the rule's pick in each row of P(feasible) ``p`` (rows, C). ``keep``
    (the baseline's index, the objective above which a pick is slower than it): as the rule does, a slower
    pick is no pick while the baseline is likely feasible (decision.keeps_baseline)."""
    eligible = (p >= level) & ran
    objective = np.where(eligible, rank[None, :], np.inf).min(axis=1)
    if keep is not None:
        base, slower = keep
        objective = np.where(keeps_baseline(objective, slower, p[:, base]), np.inf, objective)
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
