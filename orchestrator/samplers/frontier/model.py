"""One model of all runs of a study, read by the frontier sampler and by the one pick rule.

- The constraint metric (val_loss) as a Gaussian process over the searched parameters (gp.py): learned
  noise that may grow toward the aggressive end, robust to outliers, the machine as an effect. A diverged
  run enters as a run far above the target (it says the schedule is too aggressive there).
- The objective (train time) the same way; it is nearly deterministic given the schedule, so its model
  learns a small noise and the per-machine offsets that make raw times across hosts misleading.
- Crashes: a logistic model of the crash rate along the aggressiveness (how fast a variant is), on a
  grid posterior; a variant whose crash rate is likely above ``max_crash_rate`` is not feasible.

`Posterior` gives, for a set of candidate variants, P(mean metric within the target), the objective's
mean and sd, joint samples of the metric for the decision, and conditioning on runs still in flight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import math

import numpy as np
from scipy.special import expit, ndtr, ndtri

from . import gp
from .space import Observation
from .space import SearchSpace

JOINT_SETS = 16  # hyperparameter sets behind joint draws and the acquisition (P(feasible) uses them all)
DIVERGED_MARGIN = 4.0  # a diverged run counts as a run this many noise stds above the target
CRASH_GRID = np.linspace(-7.0, 2.0, 28), np.linspace(-4.0, 10.0, 29)  # logistic intercept, slope along u


@dataclass
class Posterior:
    """The model's view of the candidate variants ``rows`` (raw values, shape (C, d))."""

    rows: np.ndarray
    violation_mean: np.ndarray  # (H, C) latent mean of metric - target (sign-adjusted: <= 0 is within)
    violation_var: np.ndarray  # (H, C)
    violation_cov: np.ndarray | None  # (H, C, C) for a joint posterior (`StudyModel.posterior(joint=True)`)
    weights: np.ndarray  # (H,)
    noise_var: np.ndarray  # (H, C) the metric's run noise at each candidate
    objective_mean: np.ndarray  # (C,)
    objective_sd: np.ndarray  # (C,)
    crash_ok: np.ndarray  # (C,) P(crash rate <= the maximum)
    crash_rate: np.ndarray  # (C,) posterior mean crash rate
    noise_std: float  # learned metric noise (middle of the range)
    minimize: bool = True

    def p_within(self) -> np.ndarray:
        """P(the variant's mean metric meets the target and its crash rate is acceptable), (C,)."""
        sd = np.sqrt(np.maximum(self.violation_var, 1e-300))
        p = (self.weights[:, None] * ndtr(-self.violation_mean / sd)).sum(0)
        return p * self.crash_ok

    def violation_summary(self, mass: float = 0.9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mixture mean and a central interval (moment-matched normal) of the violation, each (C,)."""
        var_h = self.violation_var
        mean = (self.weights[:, None] * self.violation_mean).sum(0)
        var = (self.weights[:, None] * (var_h + self.violation_mean**2)).sum(0) - mean**2
        half = ndtri(0.5 + mass / 2) * np.sqrt(np.maximum(var, 0.0))
        return mean, mean - half, mean + half

    def moment_matched(self) -> tuple[np.ndarray, np.ndarray]:
        """The violation's mixture as one Gaussian: its mean (C,) and covariance (C, C)."""
        mean = self.weights @ self.violation_mean
        second = np.tensordot(self.weights, self._joint(), axes=1)  # BLAS; an einsum cost several times more
        second += (self.violation_mean.T * self.weights) @ self.violation_mean
        second -= np.outer(mean, mean)
        return mean, second

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Joint draws of the violation over all candidates, (count, C); each draw's hyperparameters are
        drawn by their weight."""
        which = rng.choice(len(self.weights), size=count, p=self.weights)
        out = np.empty((count, self.rows.shape[0]))
        for h in np.unique(which):
            idx = np.flatnonzero(which == h)
            chol = _psd_cholesky(self._joint()[h])
            out[idx] = self.violation_mean[h][None, :] + (chol @ rng.standard_normal((chol.shape[0], len(idx)))).T
        return out

    def condition_on_pending(self, pending: Sequence[int]) -> "Posterior":
        """The posterior once runs at candidate indices ``pending`` (in flight) report, their values taken
        at the current mean: the mean is unchanged and the variance there shrinks (a "kriging believer"),
        so a batch spreads over what is still uncertain instead of asking one point k times."""
        if not len(pending):
            return self
        idx = np.asarray(pending, int)
        cov = self._joint().copy()
        for h in range(len(self.weights)):
            kp = cov[h][:, idx]
            s = kp[idx] + np.diag(self.noise_var[h, idx])
            cov[h] = cov[h] - kp @ np.linalg.solve(s, kp.T)
        return Posterior(self.rows, self.violation_mean, np.einsum("hcc->hc", cov), cov, self.weights, self.noise_var,
                         self.objective_mean, self.objective_sd, self.crash_ok, self.crash_rate, self.noise_std,
                         self.minimize)

    def _joint(self) -> np.ndarray:
        if self.violation_cov is None:
            raise ValueError("this posterior has no joint covariance: build it with posterior(rows, joint=True)")
        return self.violation_cov

    def objective_rank(self) -> np.ndarray:
        """The objective to minimize (the mean, negated for a maximized objective)."""
        return self.objective_mean if self.minimize else -self.objective_mean


@dataclass
class StudyModel:
    """The fitted model of a study's runs; `posterior(rows)` evaluates it at any variants."""

    space: SearchSpace
    target: float
    sense: str  # "<=" or ">="
    minimize: bool
    metric_fit: gp.Fit | None
    objective_fit: gp.Fit | None
    objective_range: tuple[float, float]
    crash_post: np.ndarray  # (A, B) grid posterior of the crash model
    max_crash_rate: float
    n_ok: int

    def aggressiveness(self, rows: np.ndarray) -> np.ndarray:
        """How far toward the fast end a variant is, in [0, 1], from the objective model (0.5 without one)."""
        rows = np.atleast_2d(rows)
        if self.objective_fit is None:
            return np.full(len(rows), 0.5)
        mean, _ = self.objective_fit.predict(self.space.to_unit(rows))
        m = (self.objective_fit.weights[:, None] * mean).sum(0)
        lo, hi = self.objective_range
        if hi - lo <= 1e-12:
            return np.full(len(rows), 0.5)
        fast = (hi - m) if self.minimize else (m - lo)
        return np.clip(fast / (hi - lo), 0.0, 1.0)

    def posterior(self, rows: np.ndarray, *, joint: bool = False) -> Posterior:
        """The model at variants ``rows``. ``joint``: with the full covariance between them (for joint draws,
        runs in flight and the acquisition), over the `JOINT_SETS` heaviest hyperparameter sets; without it,
        per-variant marginals over every set (what P(feasible) and the intervals are read from)."""
        rows = np.atleast_2d(np.asarray(rows, float))
        unit = self.space.to_unit(rows)
        u = self.aggressiveness(rows)
        C = len(rows)
        cov = None
        if self.metric_fit is not None:
            fit = self.metric_fit.heaviest(JOINT_SETS) if joint else self.metric_fit
            mean, second = fit.predict(unit, full_cov=joint)
            cov = second if joint else None
            var = np.einsum("hcc->hc", second) if joint else second
            sign = 1.0 if self.sense == "<=" else -1.0
            vmean = sign * (mean - self.target)
            weights, noise = fit.weights, fit.noise_var(u)
            noise_std = self.metric_fit.noise_std
        else:  # no completed run yet: know nothing
            vmean, var = np.zeros((1, C)), np.full((1, C), 1e6)
            cov = np.eye(C)[None] * 1e6 if joint else None
            weights, noise, noise_std = np.ones(1), np.ones((1, C)), float("nan")
        if self.objective_fit is not None:
            om, ov = self.objective_fit.predict(unit)
            w = self.objective_fit.weights[:, None]
            omean = (w * om).sum(0)
            osd = np.sqrt(np.maximum((w * (ov + om**2)).sum(0) - omean**2, 0.0))
        else:
            omean, osd = np.zeros(C), np.full(C, np.inf)
        crash_rate, crash_ok = self._crash(u)
        return Posterior(rows, vmean, var, cov, weights, noise, omean, osd, crash_ok, crash_rate, noise_std,
                         self.minimize)

    def _crash(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b = CRASH_GRID
        p = expit(a[:, None, None] + b[None, :, None] * (u[None, None, :] - 0.5))  # (A, B, C)
        w = self.crash_post[:, :, None]
        return (w * p).sum((0, 1)), (w * (p <= self.max_crash_rate)).sum((0, 1))


def fit_model(
    observations: Sequence[Observation],
    space: SearchSpace,
    *,
    target: float,
    sense: str = "<=",
    minimize: bool = True,
    noise_hint: float | None = None,
    max_crash_rate: float = 0.25,
) -> StudyModel:
    """Fit the joint model to a study's finished runs."""
    obs = [o for o in observations if all(p in o.params for p in space.names)]
    ok = [o for o in obs if o.status == "ok" and o.metric is not None and math.isfinite(o.metric)]
    timed = [o for o in ok if o.objective is not None and math.isfinite(o.objective)]
    machine_ids: dict[str | None, int] = {}
    mid = lambda o: machine_ids.setdefault(o.machine, len(machine_ids))  # noqa: E731

    objective_fit, objective_range = None, (0.0, 0.0)
    if len(timed) >= 2:
        times = np.array([o.objective for o in timed])
        level = max(float(np.median(np.abs(times))), 1e-9)
        objective_fit = gp.fit(
            space.to_unit(np.array([space.row(o.params) for o in timed])), times,
            prior=gp.NoisePrior(median=max(0.002 * level, float(np.std(times)) * 0.05, 1e-9), log_sd=math.log(4.0)),
            machines=np.array([mid(o) for o in timed]), hetero=False, robust=True,
            machine_scales=(0.0, 2.0, 8.0), lengthscales=(1.5, 3.0), amplitudes=(0.3, 1.5),
        )
        lattice = space.lattice()
        om, _ = objective_fit.predict(space.to_unit(lattice))
        m = (objective_fit.weights[:, None] * om).sum(0)
        objective_range = (float(m.min()), float(m.max()))

    model = StudyModel(space, target, sense, minimize, None, objective_fit, objective_range,
                       np.ones((len(CRASH_GRID[0]), len(CRASH_GRID[1]))), max_crash_rate, len(ok))
    # the metric's own noise scale: the user's hint when given (the model may move it by up to ~3x either way)
    sign = 1.0 if sense == "<=" else -1.0
    metrics = [o.metric for o in ok]
    if noise_hint is not None and noise_hint > 0:
        prior = gp.NoisePrior(median=float(noise_hint), log_sd=math.log(2.0))
    else:
        spread = float(np.std(metrics)) if len(metrics) > 1 else 0.0
        prior = gp.NoisePrior(median=max(spread * 0.5, 1e-3 * max(abs(target), 1e-6)), log_sd=math.log(4.0))
    rows, values, machines = [], [], []
    for o in obs:
        if o.status == "ok" and o.metric is not None and math.isfinite(o.metric):
            value = o.metric
        elif o.status == "diverged":
            value = target + sign * DIVERGED_MARGIN * prior.median
            if metrics:
                value = max(value, max(metrics)) if sign > 0 else min(value, min(metrics))
        else:
            continue
        rows.append(space.row(o.params))
        values.append(value)
        machines.append(mid(o))
    if rows:
        R = np.array(rows)
        model.metric_fit = gp.fit(space.to_unit(R), np.array(values), prior=prior, machines=np.array(machines),
                                  u=model.aggressiveness(R), hetero=True, robust=True)
    model.crash_post = _crash_posterior(obs, model)
    return model


def _crash_posterior(obs: Sequence[Observation], model: StudyModel) -> np.ndarray:
    a, b = CRASH_GRID
    # prior: crashes are rare (intercept around 2%) and, if anything, more likely at the aggressive end
    log_post = -0.5 * ((a[:, None] - math.log(0.02 / 0.98)) / 1.5) ** 2 - 0.5 * ((b[None, :] - 1.0) / 3.0) ** 2
    counted = [o for o in obs if o.status in ("ok", "crashed", "diverged")]
    if counted:
        u = model.aggressiveness(np.array([model.space.row(o.params) for o in counted]))
        crashed = np.array([o.status == "crashed" for o in counted], float)
        z = a[:, None, None] + b[None, :, None] * (u[None, None, :] - 0.5)
        log_post = log_post + (crashed * -np.logaddexp(0, -z) + (1 - crashed) * -np.logaddexp(0, z)).sum(-1)
    w = np.exp(log_post - log_post.max())
    return w / w.sum()


def _psd_cholesky(cov: np.ndarray) -> np.ndarray:
    cov = 0.5 * (cov + cov.T)
    scale = max(float(np.mean(np.diag(cov))), 1e-300)
    for jitter in (1e-10, 1e-8, 1e-6, 1e-4):
        try:
            return np.linalg.cholesky(cov + jitter * scale * np.eye(len(cov)))
        except np.linalg.LinAlgError:
            continue
    vals, vecs = np.linalg.eigh(cov)
    return vecs * np.sqrt(np.maximum(vals, 0.0))
