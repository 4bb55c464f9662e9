"""A small Gaussian-process regression of one quantity (a constraint metric, or the objective) over the
unit cube, built for a study's few dozen noisy runs:

- a quadratic trend in the parameters (its coefficients integrated out under a broad prior), plus a smooth
  RBF deviation from it, so a straight or curved boundary needs few runs and a knee or plateau is still
  followed; the quadratic terms keep the model honest at the edges of the box, where a plane fitted to a
  few runs would extrapolate a tilt with false confidence (stage shares interact: the best stage-3 share
  moves with the stage-1 share);
- a random offset per machine (hosts of one type differ), left out of the predictions;
- noise learned from the runs, optionally growing along an "aggressiveness" coordinate ``u`` in [0, 1];
- Student-t robustness (iteratively reweighted noise, leave-one-out residuals), so one wild run does not
  move the boundary;
- every hyperparameter on a small grid, averaged by marginal likelihood (Bayesian model averaging), so a
  study with 6 runs gets honest, wide intervals instead of one over-confident fit.

Hand-written on numpy because the model is this specific (integrated linear mean, machine effect,
heteroscedastic t noise, grid BMA over a few hundred tiny matrices at once); a general GP library would
need all of it added and is heavier to install.
"""

from __future__ import annotations

from dataclasses import dataclass
import functools
import itertools
import math

import numpy as np

NU = 4.0  # Student-t degrees of freedom of the robust noise
JITTER = 1e-8
# Hyperparameter sets kept for predictions: nearly all the marginal-likelihood mass. Keeping only the top 8
# (as before) made the intervals too narrow: over 3000 (variant, study) pairs of 5 simulated worlds, the truth
# fell 1.2-1.4 predicted sds from the mean; with the whole mass, 0.8-1.0 (measured with the quadratic trend).
KEEP_MASS, KEEP_CAP = 0.999, 64


@dataclass(frozen=True)
class NoisePrior:
    """Log-normal prior on the run-to-run noise std: its median and the sd of its log."""

    median: float
    log_sd: float


@dataclass
class Fit:
    """The posterior of the latent function for the hyperparameter sets that carry the weight."""

    X: np.ndarray  # (n, d) unit-cube inputs of the runs
    y_mean: float
    y_scale: float
    weights: np.ndarray  # (H,)
    lengthscale: np.ndarray  # (H,)
    amplitude: np.ndarray  # (H,)
    noise: np.ndarray  # (H,) noise scale at u = 0.5, standardized units (the std of runs within one scale)
    growth: np.ndarray  # (H,) log noise ratio across u in [0, 1]
    alpha: np.ndarray  # (H, n) K^-1 y
    chol: np.ndarray  # (H, n, n)
    slope_sd: float

    def noise_var(self, u: np.ndarray) -> np.ndarray:
        """(H, C) run-to-run noise variance at aggressiveness ``u``, in the quantity's units."""
        u = np.clip(np.asarray(u, float), 0.0, 1.0)
        return (self.noise[:, None] ** 2) * np.exp(2.0 * self.growth[:, None] * (u[None, :] - 0.5)) * self.y_scale**2

    @property
    def noise_std(self) -> float:
        """The learned run-to-run std (at the middle of the range), in the quantity's own units: the noise
        scale itself (its root mean square over the hyperparameter sets' weights). The robust fit reweights only
        runs beyond one scale of their prediction (weights clipped at 1), so runs within it, nearly all of them,
        are modelled as normal with this std. Until 2026-12-07 it was reported times sqrt(nu / (nu - 2)), the
        std of a whole t distribution: 1.3x the std of normal runs, which put the confirmation runs a pick was
        said to need at 1.7x."""
        return float(np.sqrt(np.sum(self.weights * self.noise**2)) * self.y_scale)

    def heaviest(self, count: int) -> "Fit":
        """The fit restricted to its ``count`` heaviest hyperparameter sets, weights renormalised: joint
        draws and the acquisition need full covariances, which cost O(sets x variants^2)."""
        if len(self.weights) <= count:
            return self
        keep = np.sort(np.argsort(-self.weights)[:count])
        w = self.weights[keep] / self.weights[keep].sum()
        return Fit(X=self.X, y_mean=self.y_mean, y_scale=self.y_scale, weights=w, lengthscale=self.lengthscale[keep],
                   amplitude=self.amplitude[keep], noise=self.noise[keep], growth=self.growth[keep],
                   alpha=self.alpha[keep], chol=self.chol[keep], slope_sd=self.slope_sd)

    def predict(self, Xc: np.ndarray, full_cov: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Latent means (H, C) and covariances (H, C, C) or variances (H, C), in the quantity's units."""
        kcx = self._prior_cov(Xc, self.X)  # (H, C, n)
        mean = (kcx @ self.alpha[:, :, None])[..., 0]
        v = self._chol_inv @ np.swapaxes(kcx, 1, 2)  # L^-1 K_xc: (H, n, C)
        s2 = self.y_scale**2
        if full_cov:
            cov = self._prior_cov(Xc, Xc)
            cov -= np.swapaxes(v, 1, 2) @ v  # batched BLAS: an einsum here cost 3x more on 1000 variants
            cov *= s2
            return mean * self.y_scale + self.y_mean, cov
        kdiag = self.amplitude[:, None] ** 2 + _basis_diag(Xc, self.slope_sd)[None, :]
        var = np.maximum(kdiag - np.einsum("hnc,hnc->hc", v, v), 1e-12)
        return mean * self.y_scale + self.y_mean, var * s2

    @functools.cached_property
    def _chol_inv(self) -> np.ndarray:
        """(H, n, n) L^-1, once per fit: every prediction then multiplies instead of solving (n is the runs, <= a few
        hundred)."""
        eye = np.broadcast_to(np.eye(self.chol.shape[-1]), self.chol.shape)
        return np.linalg.solve(self.chol, eye)

    def _prior_cov(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        """(H, len(A), len(B)) prior covariances. The sets share a few lengthscales: each kernel is computed once."""
        sq = _sqdist(A, B)
        scales, which = np.unique(self.lengthscale, return_inverse=True)
        rbf = np.exp(-0.5 * sq[None] / scales[:, None, None] ** 2)
        basis = _basis_cov(A, B, self.slope_sd)
        out = np.empty((len(self.lengthscale), len(A), len(B)))
        for h, (k, amp) in enumerate(zip(which, self.amplitude)):
            np.multiply(rbf[k], amp**2, out=out[h])
            out[h] += basis
        return out


def fit(
    X: np.ndarray,
    y: np.ndarray,
    *,
    prior: NoisePrior,
    machines: np.ndarray | None = None,
    u: np.ndarray | None = None,
    hetero: bool = True,
    robust: bool = True,
    machine_scales: tuple[float, ...] = (0.0, 0.5, 2.0),
    lengthscales: tuple[float, ...] = (0.3, 0.6, 1.2),
    amplitudes: tuple[float, ...] = (0.5, 1.5, 4.0),
) -> Fit:
    """Fit the model to runs ``(X, y)``; ``machines`` are integer machine ids, ``u`` the aggressiveness of
    each run in [0, 1] (noise may grow along it)."""
    X, y = np.asarray(X, float), np.asarray(y, float)
    n, d = X.shape

    y_mean = float(np.median(y))
    y_scale = float(prior.median)
    yc = (y - y_mean) / y_scale
    spread = float(np.std(yc)) if n > 1 else 1.0
    slope_sd = 3.0 * max(spread, 1.0) + 3.0
    machines = np.zeros(n, int) if machines is None else np.asarray(machines, int)
    u = np.full(n, 0.5) if u is None else np.clip(np.asarray(u, float), 0.0, 1.0)
    several = len(set(machines.tolist())) > 1

    noise_factors = tuple(math.exp(prior.log_sd * z) for z in (-1.5, -0.75, 0.0, 0.75, 1.5))
    growths = (0.0, 0.8) if hetero else (0.0,)
    taus = machine_scales if several else (0.0,)
    grid = np.array(list(itertools.product(lengthscales, amplitudes, noise_factors, growths, taus)))
    ls, amp, nf, gr, tau = grid.T
    log_prior = -0.5 * (np.log(nf) / prior.log_sd) ** 2

    sq = _sqdist(X, X)
    base = amp[:, None, None] ** 2 * np.exp(-0.5 * sq[None] / ls[:, None, None] ** 2) + _basis_cov(X, X, slope_sd)[None]
    same = (machines[:, None] == machines[None, :]).astype(float)
    base = base + tau[:, None, None] ** 2 * same[None]
    noise_var = nf[:, None] ** 2 * np.exp(2.0 * gr[:, None] * (u[None, :] - 0.5))  # (H, n)
    weights_t = np.ones_like(noise_var)
    eye = np.eye(n)
    for _ in range(3 if robust and n >= 4 else 1):
        K = base + (noise_var / weights_t)[:, :, None] * eye[None] + JITTER * eye[None]
        L = np.linalg.cholesky(K)
        if not robust or n < 4:
            break
        Kinv = np.linalg.inv(K)
        a = Kinv @ yc
        z2 = a**2 / np.einsum("hii->hi", Kinv)  # squared standardized leave-one-out residuals
        weights_t = np.clip((NU + 1.0) / (NU + z2), 0.05, 1.0)
    alpha = np.linalg.solve(np.swapaxes(L, 1, 2), np.linalg.solve(L, yc[None, :, None]))[..., 0]
    lml = -0.5 * np.einsum("hn,n->h", alpha, yc) - np.log(np.einsum("hii->hi", L)).sum(axis=1)
    score = lml + log_prior
    w = np.exp(score - score.max())
    w /= w.sum()
    keep = _top(w, mass=KEEP_MASS, cap=KEEP_CAP)
    wk = w[keep] / w[keep].sum()
    # predictions leave the machine offsets out: the latent function is independent of them a priori
    return Fit(
        X=X, y_mean=y_mean, y_scale=y_scale, weights=wk, lengthscale=ls[keep], amplitude=amp[keep],
        noise=nf[keep], growth=gr[keep], alpha=alpha[keep], chol=L[keep], slope_sd=slope_sd,
    )


def _top(w: np.ndarray, mass: float, cap: int) -> np.ndarray:
    order = np.argsort(-w)
    cum = np.cumsum(w[order])
    count = int(np.searchsorted(cum, mass) + 1)
    return order[: max(1, min(cap, count))]


def _sqdist(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    return np.maximum(((A[:, None, :] - B[None, :, :]) ** 2).sum(-1), 0.0)


def _basis(A: np.ndarray) -> np.ndarray:
    """The trend's features: 1, the centred parameters, and their squares and products."""
    c = A - 0.5
    d = A.shape[1]
    quadratic = np.stack([c[:, i] * c[:, j] for i in range(d) for j in range(i, d)], axis=1)
    return np.concatenate([np.ones((len(A), 1)), c, quadratic], axis=1)


def _basis_scales(d: int, slope_sd: float) -> np.ndarray:
    return np.array([10.0 * slope_sd] + [slope_sd] * d + [slope_sd] * (d * (d + 1) // 2))


def _basis_cov(A: np.ndarray, B: np.ndarray, slope_sd: float) -> np.ndarray:
    s = _basis_scales(A.shape[1], slope_sd) ** 2
    return (_basis(A) * s) @ _basis(B).T


def _basis_diag(A: np.ndarray, slope_sd: float) -> np.ndarray:
    s = _basis_scales(A.shape[1], slope_sd) ** 2
    return ((_basis(A) ** 2) * s).sum(-1)
