"""Noise-aware k-section (probabilistic bisection) of a feasibility boundary.

The speedrun problem: a parameter (or a direction in parameter space) whose increase makes a
run faster (lower objective, e.g. ``train_time_s``) and worse (higher constrained metric, e.g.
``val_loss``).  The best variant is the most aggressive one whose runs still meet the target.
:class:`BisectionSampler` searches for that boundary:

* **k-section.**  When a controller fills k free machines (k ``ask()`` before any ``tell()``),
  the RUNNING trials of the study tell the sampler which points are already in flight, and each
  new trial gets a different point (k distinct points a round), spread over the posterior of
  the boundary.
* **Noise-aware.**  Runs near the boundary hit the target only about half of the time, so the
  sampler keeps a Bayesian posterior over the boundary location ``x*`` and the local slope of
  the constraint, on a grid, with the known run-to-run noise (``noise_std``).  Points are placed
  at posterior quantiles (bisection when k = 1), points where the evidence is thin are repeated,
  and variants whose observed runs look better than the posterior believes (lucky hits) are
  re-run so that the observed table a user reads does not mislead.
* **Coordinates.**  Several parameters are searched one after the other ("coordinate rounds",
  like the record team's: stage 1 first, then stage 3).  Each coordinate is a line through the
  current point; a coordinate may ``renormalize`` other parameters so that a group of fractions
  keeps its sum.  When a coordinate's boundary is known within ``tolerance`` (and its
  recommended value was run ``repeats_near_boundary`` times), the sampler freezes it, moves the
  base point there and goes on with the next coordinate.  Every run whose point lies on a
  coordinate's line counts for it, whatever role it was made for (the repeats of the previous
  coordinate's answer sit where the next line starts), and the next coordinate keeps that answer
  as its recommendation until its own posterior doubts it (P(feasible) < 0.5).  When all are
  done it proposes the final point again (confirmation runs).
* **Stateless.**  All state lives in the study's storage: each trial carries its coordinate, its
  value on the line and its role in system attrs, and frozen coordinates are study system
  attrs.  A controller that restarts with the same constructor arguments gets the same next
  points from the same trials.

Feasibility follows Optuna: a trial is feasible when all its constraint values are ``<= 0``
(``trial.set_constraint(key, value)``; read back from the trial's system attrs).  Parameters the
sampler does not own are sampled by an independent sampler (:class:`~optuna.samplers.RandomSampler`
by default), as Optuna's relative samplers do.

Example (runnable; a noisy 1-D problem whose boundary is at 0.37)::

    import numpy as np
    import optuna
    from orchestrator.samplers.bisection import BisectionSampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = BisectionSampler(
        coordinates=[{"name": "stage1", "low": 0.25, "high": 0.5, "step": 0.01}],
        constraint_key="val_loss", threshold=3.28, noise_std=0.002, tolerance=0.02, seed=0,
    )
    study = optuna.create_study(direction="minimize", sampler=sampler)
    rng = np.random.default_rng(0)
    for _round in range(6):                              # 6 rounds on 4 machines
        trials = [study.ask() for _ in range(4)]         # 4 distinct points in flight
        for t in trials:
            s1 = t.suggest_float("stage1", 0.25, 0.5, step=0.01)
            lr = t.suggest_float("lr", 1e-3, 1e-2, log=True)   # not owned: random sampler
            val_loss = 3.28 + 0.1 * (s1 - 0.37) + rng.normal(0, 0.002)
            t.set_constraint("val_loss", val_loss - 3.28)
            study.tell(t, 60.0 - 20.0 * s1)               # train_time_s
        if sampler.is_converged(study):
            break
    print(sampler.boundary_estimate(study)["coordinates"][0])

Algorithm, per coordinate (values mapped to ``u`` in [0, 1], 0 = the conservative end):
the mean constraint value is modelled as ``c(u) = delta * (u - u*)`` with ``u*`` (the boundary)
uniform on [-0.25, 1.25] (the boundary may lie outside the range) and ``delta`` (the change of
the constraint over the whole range) log-uniform on ``[noise_std / 2, 500 noise_std]``.  With
``likelihood="gaussian"`` an observation ``c_i`` has density ``N(c_i; c(u_i), noise_std^2 +
(misfit * c(u_i))^2)``: near the boundary the value itself is informative, far from it mostly its
sign (a curved ``c`` is not mistaken for a steep line).  With ``likelihood="logistic"`` only the
sign is used: ``P(feasible | u) = sigmoid(-1.702 c(u) / noise_std)`` (the probit of the noise,
in logistic form).  The posterior over ``(u*, delta)`` lives on a 301 x 31 grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
import math
from typing import Any
import warnings

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
from optuna.samplers import BaseSampler
from optuna.samplers import RandomSampler
from optuna.study import Study
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial
from optuna.trial import TrialState


__all__ = ["BisectionSampler"]

# Trial system attrs written by the sampler.
ATTR_COORDINATE = "bisection:coordinate"  # index of the coordinate the trial belongs to (-1: final)
ATTR_X = "bisection:x"  # the trial's value on the coordinate's line
ATTR_ROLE = "bisection:role"  # "search" | "debunk" | "confirm" | "final" | "fixed"
ATTR_POINT = "bisection:point"  # {param name: value} of every owned parameter
ATTR_PHASE = "bisection:phase"  # coordinate being searched when the trial was created (-1: all frozen)
# Study system attr holding a frozen coordinate: STUDY_ATTR_CONCLUDED.format(index).
STUDY_ATTR_CONCLUDED = "bisection:concluded:{}"

_U_GRID = np.linspace(-0.25, 1.25, 301)
_N_DELTA = 31
_LOGISTIC_SCALE = 1.702  # sigmoid(1.702 z) ~ Phi(z)


@dataclass(frozen=True)
class _Coordinate:
    name: str
    low: float
    high: float
    increase: bool
    step: float | None
    renormalize: tuple[str, ...]
    tolerance: float
    max_trials: int | None
    values: tuple[float, ...]  # candidate grid, conservative end first

    def to_u(self, x: float | np.ndarray) -> Any:
        span = self.high - self.low
        return (np.asarray(x) - self.low) / span if self.increase else (self.high - np.asarray(x)) / span

    def to_x(self, u: float | np.ndarray) -> Any:
        span = self.high - self.low
        return self.low + np.asarray(u) * span if self.increase else self.high - np.asarray(u) * span


@dataclass
class _State:
    base: dict[str, float]  # owned parameters after the frozen coordinates
    active: int | None  # coordinate being searched; None when all are frozen
    summaries: dict[int, dict[str, Any]]
    posterior: _Posterior | None


@dataclass
class _Observation:
    x: float
    margin: float  # constraint value, <= 0 is feasible
    value: float = math.nan  # objective of the run (nan when it has none)


@dataclass
class _Posterior:
    """Posterior over u* (marginal over delta) and what is derived from it."""

    coord: _Coordinate
    mass: np.ndarray  # over _U_GRID
    cdf: np.ndarray
    n_obs: int

    def p_feasible(self, x: float) -> float:
        """P(the mean constraint at x is <= 0) = P(u* >= u(x))."""
        u = float(self.coord.to_u(x))
        return float(1.0 - np.interp(u, _U_GRID, self.cdf))

    def quantile_u(self, q: float) -> float:
        return float(np.interp(q, self.cdf, _U_GRID))

    def quantile_of(self, x: float) -> float:
        return float(np.interp(float(self.coord.to_u(x)), _U_GRID, self.cdf))


def _posterior(
    coord: _Coordinate,
    obs: Sequence[_Observation],
    noise_std: float,
    misfit: float,
    likelihood: str,
) -> _Posterior:
    deltas = np.geomspace(0.5 * noise_std, 500.0 * noise_std, _N_DELTA)
    logp = np.zeros((_U_GRID.size, deltas.size))
    if obs:
        u = np.array([float(coord.to_u(o.x)) for o in obs])
        c = np.array([o.margin for o in obs])
        for ui, ci in zip(u, c):  # loop over observations keeps memory small
            mu = deltas[None, :] * (ui - _U_GRID[:, None])
            if likelihood == "gaussian":
                var = noise_std**2 + (misfit * mu) ** 2
                logp += -0.5 * (ci - mu) ** 2 / var - 0.5 * np.log(var)
            else:
                z = _LOGISTIC_SCALE * mu / noise_std  # log P(infeasible) = log sigmoid(z)
                logp += -np.logaddexp(0.0, -z) if ci > 0 else -np.logaddexp(0.0, z)
    logp -= logp.max()
    joint = np.exp(logp)
    mass = joint.sum(axis=1)
    mass /= mass.sum()
    cdf = np.cumsum(mass)
    cdf = np.concatenate([[0.0], cdf[1:]])  # cdf[i] = P(u* < grid[i]) (piecewise linear)
    cdf = np.maximum.accumulate(cdf)
    return _Posterior(coord=coord, mass=mass, cdf=cdf, n_obs=len(obs))


class BisectionSampler(BaseSampler):
    """Noise-aware k-section of the feasibility boundary along one or more coordinates.

    Args:
        coordinates:
            Ordered list of plain dicts, one per coordinate, searched one after the other:

            * ``name`` (str, required): the parameter whose value moves along the line.
            * ``low``, ``high`` (float, required): the range searched.
            * ``direction`` (``"increase"`` default, or ``"decrease"``): which way is the
              aggressive one (faster and worse).  ``"increase"``: larger values lower the
              objective and raise the constraint; the sampler looks for the largest feasible
              value.  ``"decrease"``: the smallest feasible value.
            * ``step`` (float, optional): the values tried are ``low + i * step``; without it a
              grid of ``n_grid`` values.  Use the same step as the study's distribution.
            * ``renormalize`` (list of str, optional): other owned parameters that absorb the
              change in proportion to their current values so that the group's sum stays
              constant ("move mass from stages 2/3 into stage 1").  Each needs a ``start`` value
              unless it is a coordinate itself.
            * ``start`` (float, optional): value of this parameter until its coordinate is
              searched (default: the conservative end of its range).  Same as ``start[name]``.
            * ``tolerance``, ``max_trials`` (optional): per-coordinate overrides of the
              arguments below.
        constraint_key:
            Key of the constraint (``trial.set_constraint(key, value)``) the model reads; its
            value is the margin to the target (``val_loss - 3.28``), ``<= 0`` feasible.  ``None``
            (default): the largest of the trial's constraint values.
        threshold:
            Target of the raw metric (e.g. ``3.28``).  Used to report boundary estimates in
            metric units and, for trials without the constraint, to read the raw metric from
            ``trial.user_attrs[constraint_key]`` as ``value - threshold``.  Optional.
        noise_std:
            Known run-to-run standard deviation of the constraint value (modded-nanogpt's
            val_loss: about 0.002).  Sets how much one run near the boundary is worth.
        repeats_near_boundary:
            Completed runs the recommended value needs (with an observed hit rate >= 0.5 and a
            mean margin <= 0) before a coordinate may be frozen; the sampler repeats it (and its
            more aggressive neighbour) until then.
        tolerance:
            A coordinate is frozen once the central ``credible`` interval of its boundary is at
            most this wide (parameter units).  Default: two steps, or 1/16 of the range.
        confidence:
            The recommended value is the most aggressive candidate whose posterior probability
            of being feasible (mean constraint <= 0) is at least this.
        credible:
            Probability mass of the reported credible interval of the boundary.
        max_trials_per_coordinate:
            Budget per coordinate: frozen after this many completed trials even if not
            converged.  ``None``: no budget (the controller's budget applies).
        start:
            ``{param: value}`` of owned parameters before any coordinate moves them (needed for
            ``renormalize`` parameters that are not coordinates).
        likelihood:
            ``"gaussian"`` (use the constraint values) or ``"logistic"`` (only feasible or not;
            for pass/fail constraints).
        misfit:
            Relative error allowed for the locally linear model of the constraint (the
            observation's standard deviation grows by ``misfit * |predicted margin|``).
        n_grid:
            Number of candidate values for coordinates without ``step``.
        seed:
            Seed of the independent sampler.  The bisection itself is deterministic.
        independent_sampler:
            Sampler for parameters the bisection does not own (default ``RandomSampler(seed)``).
            The only argument that is not plain data; leave it out when building from YAML.
    """

    def __init__(
        self,
        coordinates: Sequence[Mapping[str, Any]],
        *,
        constraint_key: str | None = None,
        threshold: float | None = None,
        noise_std: float = 0.002,
        repeats_near_boundary: int = 2,
        tolerance: float | None = None,
        confidence: float = 0.8,
        credible: float = 0.9,
        max_trials_per_coordinate: int | None = None,
        start: Mapping[str, float] | None = None,
        likelihood: str = "gaussian",
        misfit: float = 0.3,
        n_grid: int = 33,
        seed: int | None = None,
        independent_sampler: BaseSampler | None = None,
    ) -> None:
        if not coordinates:
            raise ValueError("BisectionSampler: `coordinates` must list at least one coordinate.")
        if not (noise_std > 0 and math.isfinite(noise_std)):
            raise ValueError(f"BisectionSampler: `noise_std` must be > 0, got {noise_std!r}.")
        if likelihood not in ("gaussian", "logistic"):
            raise ValueError(
                f"BisectionSampler: `likelihood` must be 'gaussian' or 'logistic', got {likelihood!r}."
            )
        if not 0.5 < confidence < 1:
            raise ValueError(f"BisectionSampler: `confidence` must be in (0.5, 1), got {confidence!r}.")
        if not 0 < credible < 1:
            raise ValueError(f"BisectionSampler: `credible` must be in (0, 1), got {credible!r}.")
        if repeats_near_boundary < 1:
            raise ValueError("BisectionSampler: `repeats_near_boundary` must be >= 1.")
        if n_grid < 2:
            raise ValueError("BisectionSampler: `n_grid` must be >= 2.")
        self._constraint_key = constraint_key
        self._threshold = threshold
        self._noise_std = float(noise_std)
        self._repeats = int(repeats_near_boundary)
        self._confidence = float(confidence)
        self._credible = float(credible)
        self._likelihood = likelihood
        self._misfit = float(misfit)
        self._seed = seed
        self._independent_sampler = independent_sampler or RandomSampler(seed=seed)

        coords: list[_Coordinate] = []
        start_point: dict[str, float] = {k: float(v) for k, v in (start or {}).items()}
        seen: set[str] = set()
        for i, spec in enumerate(coordinates):
            coords.append(
                self._parse_coordinate(i, spec, tolerance, max_trials_per_coordinate, n_grid)
            )
            name = coords[-1].name
            if name in seen:
                raise ValueError(f"BisectionSampler: coordinate {name!r} is listed twice.")
            seen.add(name)
            if "start" in spec:
                start_point[name] = float(spec["start"])
            start_point.setdefault(name, coords[-1].values[0])
        for c in coords:
            for g in c.renormalize:
                if g not in start_point:
                    raise ValueError(
                        f"BisectionSampler: coordinate {c.name!r} renormalizes {g!r}, which has "
                        f"no start value (add it to `start`)."
                    )
        self._coords = tuple(coords)
        self._start = start_point

    @staticmethod
    def _parse_coordinate(
        i: int,
        spec: Mapping[str, Any],
        tolerance: float | None,
        max_trials: int | None,
        n_grid: int,
    ) -> _Coordinate:
        where = f"BisectionSampler: coordinates[{i}]"
        if not isinstance(spec, Mapping):
            raise TypeError(f"{where} must be a dict, got {type(spec).__name__}.")
        unknown = set(spec) - {
            "name", "low", "high", "direction", "step", "renormalize", "start", "tolerance",
            "max_trials",
        }
        if unknown:
            raise ValueError(f"{where} has unknown keys {sorted(unknown)}.")
        for key in ("name", "low", "high"):
            if key not in spec:
                raise ValueError(f"{where} needs {key!r}.")
        name = str(spec["name"])
        low, high = float(spec["low"]), float(spec["high"])
        if not low < high:
            raise ValueError(f"{where} ({name}): `low` must be < `high`, got {low} and {high}.")
        direction = spec.get("direction", "increase")
        if direction not in ("increase", "decrease"):
            raise ValueError(
                f"{where} ({name}): `direction` must be 'increase' or 'decrease', got {direction!r}."
            )
        step = spec.get("step")
        if step is not None:
            step = float(step)
            if step <= 0:
                raise ValueError(f"{where} ({name}): `step` must be > 0.")
            n = int(math.floor((high - low) / step + 1e-9))
            values = [round(low + j * step, 12) for j in range(n + 1)]
        else:
            values = [float(v) for v in np.linspace(low, high, n_grid)]
        if direction == "decrease":
            values = values[::-1]
        tol = spec.get("tolerance", tolerance)
        if tol is None:
            tol = 2 * step if step is not None else (high - low) / 16
        mt = spec.get("max_trials", max_trials)
        renorm = tuple(str(g) for g in spec.get("renormalize", ()) or ())
        if name in renorm:
            raise ValueError(f"{where} ({name}): a coordinate cannot renormalize itself.")
        return _Coordinate(
            name=name,
            low=low,
            high=high,
            increase=direction == "increase",
            step=step,
            renormalize=renorm,
            tolerance=float(tol),
            max_trials=None if mt is None else int(mt),
            values=tuple(values),
        )

    # ------------------------------------------------------------------ Optuna sampler interface
    def reseed_rng(self) -> None:
        self._independent_sampler.reseed_rng()

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._independent_sampler.before_trial(study, trial)
        if ATTR_POINT in trial.system_attrs:
            return  # already assigned (e.g. a retried trial)
        self._raise_error_if_multi_objective(study)
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        state = self._state(study, trials, write=True)
        fixed = trial.system_attrs.get("fixed_params") or {}
        phase = -1 if state.active is None else state.active
        j, x, role = self._next(study, trials, trial.number, state, phase, fixed)
        if j < 0:
            point = dict(state.base)
        elif j == state.active:
            point = self._line_point(state.base, self._coords[j], x)
        else:  # re-run on the line of a frozen coordinate
            point = self._line_point(self._line_base(study, j), self._coords[j], x)
        if fixed:
            point.update({k: float(v) for k, v in fixed.items() if k in point})
        storage, tid = study._storage, trial._trial_id
        storage.set_trial_system_attr(tid, ATTR_PHASE, phase)
        storage.set_trial_system_attr(tid, ATTR_COORDINATE, j)
        storage.set_trial_system_attr(tid, ATTR_X, x)
        storage.set_trial_system_attr(tid, ATTR_ROLE, role)
        storage.set_trial_system_attr(tid, ATTR_POINT, point)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        point = trial.system_attrs.get(ATTR_POINT) or {}
        if param_name in point and not isinstance(param_distribution, CategoricalDistribution):
            return _fit_to_distribution(point[param_name], param_distribution, param_name)
        return self._independent_sampler.sample_independent(
            study, trial, param_name, param_distribution
        )

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._independent_sampler.after_trial(study, trial, state, values)

    # ------------------------------------------------------------------ public queries
    def is_converged(self, study: Study) -> bool:
        """True once every coordinate is frozen (the controller can stop or confirm)."""
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        return self._state(study, trials, write=False).active is None

    def boundary_estimate(self, study: Study, until_trial: int | None = None) -> dict[str, Any]:
        """What the sampler concludes from the study's trials.

        Args:
            study: the study.
            until_trial: only use trials numbered below this (e.g. the first trial of the next
                round, to print what the sampler concluded after each round).

        Returns:
            ``{"converged": bool, "active": name or None, "point": {param: value},
            "coordinates": [...]}``; ``point`` is the recommended variant (frozen or current
            recommendations of all coordinates).  Each coordinate entry has ``name``,
            ``status`` (``"frozen"``, ``"converged"``, ``"searching"`` or ``"pending"``),
            ``boundary`` (posterior median, parameter units), ``interval`` (credible interval,
            conservative end first), ``recommended`` (most aggressive value with
            P(feasible) >= confidence), ``p_feasible`` (of the recommended value),
            ``n_trials`` (completed trials used), ``reason`` (why frozen) and, when
            ``threshold`` is set, ``metric_at_recommended`` (observed mean of the raw metric).
        """
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        state = self._state(study, trials, write=False, until_trial=until_trial)
        coords_out = []
        for j, coord in enumerate(self._coords):
            if j in state.summaries:
                coords_out.append(state.summaries[j])
            else:
                coords_out.append({"name": coord.name, "status": "pending"})
        rec = dict(state.base)
        if state.active is not None:
            summary = state.summaries[state.active]
            rec = self._line_point(state.base, self._coords[state.active], summary["recommended"])
        return {
            "converged": state.active is None,
            "active": None if state.active is None else self._coords[state.active].name,
            "point": rec,
            "coordinates": coords_out,
        }

    # ------------------------------------------------------------------ internals
    def _margin(self, trial: FrozenTrial) -> float | None:
        cons = trial.constraints
        if self._constraint_key is None:
            if cons:
                return float(max(cons.values()))
            return None
        if self._constraint_key in cons:
            return float(cons[self._constraint_key])
        if self._threshold is not None and self._constraint_key in trial.user_attrs:
            try:
                return float(trial.user_attrs[self._constraint_key]) - self._threshold
            except (TypeError, ValueError):
                return None
        return None

    def _observations(
        self,
        trials: Sequence[FrozenTrial],
        j: int,
        base: Mapping[str, float],
        until_trial: int | None = None,
    ) -> list[_Observation]:
        """Completed runs on coordinate ``j``'s line through ``base``.

        Besides the trials made for coordinate ``j``, a run of any other role whose owned point
        lies on the line counts too (for example the repeats of the previous coordinate's
        recommendation: they sit where the new line starts), so no run is wasted.
        """
        coord = self._coords[j]
        obs = []
        for t in trials:
            if until_trial is not None and t.number >= until_trial:
                continue
            if t.state != TrialState.COMPLETE or ATTR_COORDINATE not in t.system_attrs:
                continue
            m = self._margin(t)
            if m is None or not math.isfinite(m):
                continue
            if t.system_attrs.get(ATTR_COORDINATE) == j and t.system_attrs.get(ATTR_X) is not None:
                x = float(t.system_attrs[ATTR_X])
            else:
                x = self._position_on_line(t.system_attrs.get(ATTR_POINT), base, coord)
                if x is None:
                    continue
            value = float(t.values[0]) if t.values else math.nan
            obs.append(_Observation(x=x, margin=m, value=value))
        return obs

    def _position_on_line(
        self, point: Mapping[str, float] | None, base: Mapping[str, float], coord: _Coordinate
    ) -> float | None:
        """The value on ``coord``'s line through ``base`` of an owned ``point``; None when off it."""
        if not point or coord.name not in point:
            return None
        x = float(point[coord.name])
        if not coord.low - 1e-9 <= x <= coord.high + 1e-9:
            return None
        expected = self._line_point(base, coord, x)
        if set(expected) != set(point):
            return None
        if all(abs(float(point[k]) - v) <= 1e-9 for k, v in expected.items()):
            return x
        return None

    def _line_point(self, base: Mapping[str, float], coord: _Coordinate, x: float) -> dict[str, float]:
        point = dict(base)
        old = point.get(coord.name, coord.values[0])
        point[coord.name] = float(x)
        if coord.renormalize:
            group = [g for g in coord.renormalize]
            rest = sum(point[g] for g in group)
            remaining = rest + old - float(x)
            if rest > 0 and remaining >= 0:
                for g in group:
                    point[g] = point[g] * remaining / rest
            else:
                for g in group:
                    point[g] = max(remaining, 0.0) / len(group)
        return point

    def _summarise(
        self, coord: _Coordinate, obs: Sequence[_Observation], accepted: float | None = None
    ) -> tuple[_Posterior, dict[str, Any], bool, str]:
        """Posterior, summary and freeze decision of one coordinate.

        ``accepted``: the value on this line that earlier coordinates already froze (the line
        starts there).  It stays the recommendation while the new posterior still gives it
        P(feasible) >= 0.5, so a second coordinate never recommends a slower point than the
        first one settled on before it has evidence against it.
        """
        post = _posterior(coord, obs, self._noise_std, self._misfit, self._likelihood)
        a = (1 - self._credible) / 2
        lo_u, hi_u, med_u = post.quantile_u(a), post.quantile_u(1 - a), post.quantile_u(0.5)
        width = abs(float(coord.to_x(hi_u)) - float(coord.to_x(lo_u)))
        pf = [post.p_feasible(x) for x in coord.values]
        ok = [i for i, p in enumerate(pf) if p >= self._confidence]
        rec_i = ok[-1] if ok else 0
        keys = [_key(x) for x in coord.values]
        if accepted is not None and _key(accepted) in keys:
            i_acc = keys.index(_key(accepted))
            if i_acc > rec_i and pf[i_acc] >= 0.5:
                rec_i = i_acc
                ok = sorted(set(ok) | {i_acc})
        rec = coord.values[rec_i]
        stats = _observed(obs)
        n_rec, hits_rec, mean_rec = stats.get(_key(rec), (0, 0, math.inf))
        rec_confirmed = n_rec >= self._repeats and hits_rec / max(n_rec, 1) >= 0.5 and mean_rec <= 0
        converged, reason = False, ""
        if obs and width <= coord.tolerance and rec_confirmed:
            converged, reason = True, "tolerance"
        elif rec_i == len(coord.values) - 1 and ok and rec_confirmed:
            converged, reason = True, "range end feasible"
        elif not ok and pf[0] <= 1 - self._confidence and n_rec >= self._repeats:
            converged, reason = True, "nothing feasible"
        elif coord.max_trials is not None and len(obs) >= coord.max_trials:
            converged, reason = True, "budget"
        summary: dict[str, Any] = {
            "name": coord.name,
            "status": "converged" if converged else "searching",
            "boundary": float(coord.to_x(med_u)),
            "interval": [float(coord.to_x(lo_u)), float(coord.to_x(hi_u))],
            "interval_width": width,
            "recommended": float(rec),
            "p_feasible": float(pf[rec_i]),
            "n_trials": len(obs),
            "reason": reason,
        }
        if self._threshold is not None and n_rec:
            summary["metric_at_recommended"] = self._threshold + mean_rec
        return post, summary, converged, reason

    def _state(
        self,
        study: Study,
        trials: Sequence[FrozenTrial],
        *,
        write: bool,
        until_trial: int | None = None,
    ) -> _State:
        base = dict(self._start)
        summaries: dict[int, dict[str, Any]] = {}
        study_attrs = study._storage.get_study_system_attrs(study._study_id)
        for j, coord in enumerate(self._coords):
            frozen = study_attrs.get(STUDY_ATTR_CONCLUDED.format(j))
            if frozen is not None and frozen.get("name") != coord.name:
                raise ValueError(
                    f"BisectionSampler: the study froze coordinate {j} as {frozen.get('name')!r} "
                    f"but this sampler's coordinate {j} is {coord.name!r}; the sampler's "
                    f"`coordinates` changed since the study started (use a new study)."
                )
            if frozen is not None and (until_trial is None or frozen["before_trial"] <= until_trial):
                summaries[j] = {**frozen["summary"], "status": "frozen"}
                base = {k: float(v) for k, v in frozen["base"].items()}
                continue
            obs = self._observations(trials, j, base, until_trial)
            accepted = base.get(coord.name) if j > 0 else None
            post, summary, converged, _ = self._summarise(coord, obs, accepted)
            summaries[j] = summary
            if converged:
                new_base = self._line_point(base, coord, summary["recommended"])
                if write:
                    next_number = max((t.number for t in trials), default=-1)
                    study._storage.set_study_system_attr(
                        study._study_id,
                        STUDY_ATTR_CONCLUDED.format(j),
                        {
                            "name": coord.name,
                            "summary": {**summary, "status": "frozen"},
                            "base": new_base,
                            "before_trial": next_number,
                        },
                    )
                base = new_base
                continue
            return _State(base=base, active=j, summaries=summaries, posterior=post)
        return _State(base=base, active=None, summaries=summaries, posterior=None)

    def _line_base(self, study: Study, j: int) -> dict[str, float]:
        """The base point coordinate ``j`` was searched from (all before it frozen)."""
        if j == 0:
            return dict(self._start)
        attrs = study._storage.get_study_system_attrs(study._study_id)
        frozen = attrs[STUDY_ATTR_CONCLUDED.format(j - 1)]
        return {k: float(v) for k, v in frozen["base"].items()}

    def _next(
        self,
        study: Study,
        trials: Sequence[FrozenTrial],
        number: int,
        state: _State,
        phase: int,
        fixed: Mapping[str, Any],
    ) -> tuple[int, float | None, str]:
        """(coordinate, value on its line, role) of the next trial."""
        others = [t for t in trials if t.number != number and ATTR_COORDINATE in t.system_attrs]
        pending = {
            (t.system_attrs[ATTR_COORDINATE], _key(t.system_attrs[ATTR_X]))
            for t in others
            if t.state == TrialState.RUNNING and t.system_attrs.get(ATTR_X) is not None
        }
        if phase >= 0 and self._coords[phase].name in fixed:
            return phase, float(fixed[self._coords[phase].name]), "fixed"
        # Every second trial of a phase may go to an auxiliary role: re-running variants that
        # look better in the table of runs than the posterior believes (lucky hits), then
        # confirming the recommendation; the others search.
        n_phase = sum(1 for t in others if t.system_attrs.get(ATTR_PHASE) == phase)
        if n_phase % 2 == 1 or phase < 0:
            for j, x, role in self._aux_candidates(study, trials, state, phase):
                if (j, _key(x)) not in pending:
                    return j, x, role
        if phase < 0:
            return -1, None, "final"
        coord = self._coords[phase]
        post = state.posterior
        assert post is not None
        mine = {x for (j, x) in pending if j == phase}
        free = [x for x in coord.values if _key(x) not in mine] or list(coord.values)
        x_target = float(coord.to_x(self._search_target(post, [x for x in coord.values if _key(x) in mine])))
        best = min(free, key=lambda x: (abs(x - x_target), -float(coord.to_u(x))))
        return phase, best, "search"

    def _search_target(self, post: _Posterior, pending: Sequence[float]) -> float:
        """k-section in probability over the allowed quantiles of the boundary.

        Each new point goes to the middle of the widest gap between the quantiles already in
        flight.  Once there is data, quantiles between 0.5 and 0.95 are skipped: a variant just
        past the boundary teaches the Gaussian model little more than one a step further, but
        it hits the target often enough to put misleading single hits in the table.
        """
        hi_gap = (0.5, 0.5 + 0.9 * (1.0 - 0.5)) if post.n_obs else (0.5, 0.5)
        length = 1.0 - (hi_gap[1] - hi_gap[0])

        def to_v(q: float) -> float:  # allowed quantile -> virtual line [0, length]
            if q <= hi_gap[0]:
                return q
            return hi_gap[0] + max(q - hi_gap[1], 0.0)

        def from_v(v: float) -> float:
            return v if v <= hi_gap[0] else v + (hi_gap[1] - hi_gap[0])

        vs = sorted([0.0, hi_gap[0], length] + [to_v(post.quantile_of(x)) for x in pending])
        gaps = [(vs[i + 1] - vs[i], -i) for i in range(len(vs) - 1)]
        _, neg_i = max(gaps)
        v = 0.5 * (vs[-neg_i] + vs[-neg_i + 1])
        return min(max(post.quantile_u(from_v(v)), 0.0), 1.0)

    def _aux_candidates(
        self, study: Study, trials: Sequence[FrozenTrial], state: _State, phase: int
    ) -> list[tuple[int, float, str]]:
        """Re-runs that make the table of runs agree with the posterior, most urgent first."""
        minimize = study.direction != StudyDirection.MAXIMIZE
        upto = len(self._coords) if phase < 0 else phase + 1
        debunk: list[tuple[float, int, float]] = []
        confirm: list[tuple[int, float, str]] = []
        for j in range(upto):
            coord = self._coords[j]
            summary = state.summaries[j]
            rec = summary["recommended"]
            u_rec = float(coord.to_u(rec))
            per_x: dict[float, list[tuple[float, float]]] = {}
            for o in self._observations(trials, j, self._line_base(study, j)):
                if math.isfinite(o.value):
                    per_x.setdefault(_key(o.x), []).append((o.margin, o.value))
            # Lucky hits: variants more aggressive than the recommendation that a user reading
            # the table would take as feasible; the one a user would pick first.
            for x in coord.values:
                if float(coord.to_u(x)) <= u_rec + 1e-12:
                    continue
                runs = per_x.get(_key(x), [])
                if not runs:
                    continue
                margins = [m for m, _ in runs]
                if np.mean(margins) <= 0 and sum(m <= 0 for m in margins) / len(runs) >= 0.5:
                    obj = float(np.mean([v for _, v in runs]))
                    debunk.append((obj if minimize else -obj, j, x))
            if j == phase and summary["interval_width"] <= 2 * coord.tolerance:
                runs = per_x.get(_key(rec), [])
                margins = [m for m, _ in runs]
                if (
                    len(runs) < self._repeats
                    or sum(m <= 0 for m in margins) / len(runs) < 0.5
                    or np.mean(margins) > 0
                ):
                    confirm.append((j, rec, "confirm"))
        debunk.sort()
        return [(j, x, "debunk") for _, j, x in debunk] + confirm


def _key(x: float) -> float:
    return round(float(x), 9)


def _observed(obs: Sequence[_Observation]) -> dict[float, tuple[int, int, float]]:
    """Per value: (runs, hits, mean margin)."""
    acc: dict[float, list[float]] = {}
    for o in obs:
        acc.setdefault(_key(o.x), []).append(o.margin)
    return {
        k: (len(v), sum(1 for m in v if m <= 0), float(np.mean(v))) for k, v in acc.items()
    }


def _fit_to_distribution(value: float, dist: BaseDistribution, name: str) -> Any:
    if isinstance(dist, IntDistribution):
        v = int(round(value))
        v = min(max(v, dist.low), dist.high)
        if dist.step != 1:
            v = dist.low + int(round((v - dist.low) / dist.step)) * dist.step
            v = min(v, dist.high)
        return v
    if isinstance(dist, FloatDistribution):
        v = float(value)
        if v < dist.low or v > dist.high:
            warnings.warn(
                f"BisectionSampler: value {v} of {name!r} is outside its distribution "
                f"[{dist.low}, {dist.high}]; clipped.",
                stacklevel=3,
            )
            v = min(max(v, dist.low), dist.high)
        if dist.step is not None:
            v = dist.low + round((v - dist.low) / dist.step) * dist.step
            v = min(max(round(v, 12), dist.low), dist.high)
        return v
    raise TypeError(f"BisectionSampler: unsupported distribution for {name!r}: {dist!r}")

