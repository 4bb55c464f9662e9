"""A family of simulated stage-schedule worlds for bench/search_efficiency.py.

Every world is the record #78 problem (shared/reference: equal thirds at about 58 s; stage step costs
21/38/55 ms; 1450 scheduled + 40 extension steps; target val_loss <= 3.28) with one shape of loss, noise,
failures or hint changed.  A world is a small declarative `WorldSpec`; `draw(spec, seed)` turns it into one
seed's truth (`WorldDraw`), with a per-seed random perturbation (offset, knee, ridge) so that no method can
memorise the boundary, and per-machine time multipliers N(1, MACHINE_SD) (hosts of one type differ by 1-2%).

Coordinates.  One to three parameters on a lattice: ``(stage1, stage3)`` (stage2 = 1 - stage1 - stage3),
``(stage1, stage2)`` (stage3 = 1 - stage1 - stage2), ``(stage1,)`` (stage3 held at 0.33), and any of these with
``lr`` (a learning-rate multiplier that costs no time and moves the loss).  With shares in percentage points (pp):

* ``A = 100 * (stage1 - stage3)`` + const is the time level: true mean time is linear in it, one pp is
  1450 * 17 ms = 0.2465 s, and ``A = 0`` at the baseline (0.33, 0.34, 0.33);
* ``x3 = 100 * (0.33 - stage3)`` is stage 3 given away.

Loss (all worlds but `reference`): ``3.28 + offset + f(A) + off_line * (x3 - x3_best(A))**2``, where
``f`` is the loss along the best line of each time level (the `curve`), and ``x3_best(A) = ridge0 + ridge1 * A``
is where on that level the best variant lies (0: the stage3 = 0.33 line).  With ``lr`` the loss adds
``lr_cost * ((lr - lr_best(A)) / 0.1)**2``, ``lr_best(A) = lr_ridge0 + lr_ridge1 * A``.  `reference` keeps
bench/calibration.py's quadratic fitted to the 24 reference runs.

Runs use common random numbers: the r-th run of a variant in a seed gets the same draws (time noise, loss
noise, crash uniform) whichever method asked; only the machine's time multiplier depends on where it ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import functools
import math
from pathlib import Path
from statistics import NormalDist
import sys
import zlib

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import calibration as _cal  # noqa: E402
from orchestrator.samplers.frontier.decision import KEEP_BASELINE_P, TOLERANCE_SHARE  # noqa: E402


TARGET = _cal.TARGET
MACHINES = 4
MACHINE_SD = 0.007  # per-machine time multiplier N(1, 0.007): hosts of one type differ by 1-2%
TIME_NOISE = 0.05  # s, a run's own time scatter
HINT = 0.002  # the run-to-run std the sampler and the pick rule are told (unless a world misstates it)
LEVEL = 0.9  # P(feasible) the pick rule needs: the frontier sampler's default `level`, what a study gets
STEP = 0.01
FLOOR_CHECKPOINTS = (12, 24, 40)  # trials at which the known-shape floor is reported
RIGHT_TOLERANCE = 0.15  # s: a pick is right when feasible and within this of the best feasible variant's time
PP_TIME = _cal.SCHEDULED * (_cal.STEP_COST_MS[1] - _cal.STEP_COST_MS[0]) / 1000 / 100  # s per pp of time level


@dataclass(frozen=True)
class Axis:
    name: str
    low: float
    high: float
    base: float  # the baseline's value (equal thirds on the lattice)
    step: float = STEP

    def values(self) -> list[float]:
        return _cal.lattice(self.low, self.high, self.step)


S1 = Axis("stage1", 0.28, 0.42, 0.33)
S3 = Axis("stage3", 0.30, 0.36, 0.33)
S2 = Axis("stage2", 0.28, 0.38, 0.34)
LR = Axis("lr", 0.70, 1.30, 1.00, 0.05)  # a learning-rate multiplier


@dataclass(frozen=True)
class WorldSpec:
    """One world, declared.  Loss numbers are in val_loss units, positions in pp (see the module doc)."""

    name: str
    summary: str
    axes: tuple[Axis, ...] = (S1, S3)
    curve: str = "linear"  # f(A): linear | knee | saturating | reference (bench/calibration.py's quadratic fit)
    curve_args: dict[str, float] = field(default_factory=dict)
    off_line: float = 0.0003  # loss per pp^2 away from the best stage-3 share of a time level
    ridge: tuple[float, float] = (0.0, 0.0)  # x3_best(A) = ridge[0] + ridge[1] * A
    lr_cost: float = 0.0004  # loss of an lr 0.1 away from the best one (worlds with an `lr` axis)
    lr_ridge: tuple[float, float] = (1.0, 0.0)  # lr_best(A) = lr_ridge[0] + lr_ridge[1] * A
    offset_sd: float = 0.0005  # per-seed shift of the whole loss surface
    jitter: dict[str, float] = field(default_factory=dict)  # per-seed N(0, sd) added to curve_args / ridge0
    noise: float = 0.0019  # run-to-run std of val_loss at the baseline
    noise_growth: float = 1.0  # noise at the most aggressive variant / at the most conservative one
    df: float | None = None  # Student-t tails (scaled to the same std); None: normal
    crash_max: float = 0.0  # crash probability at the aggressive end: crash_max * sigmoid((A - c) / w)
    crash_center: float = 5.0
    crash_width: float = 1.5
    hint: float = HINT  # the noise the sampler and the pick rule are given
    # where the baseline stands: "near" the boundary (true hit rate 0.3-0.7, as the issue calibrates), "inside" it
    # (hit rate > 0.7, faster variants feasible), "misses" (hit rate < 0.3: the best is slower), "edge" (the
    # baseline is the fastest feasible variant: nothing faster to find)
    regime: str = "near"

    def __post_init__(self) -> None:
        names = set(self.names)
        stages = names - {"lr"}
        if "stage1" not in names or not stages <= {"stage1", "stage2", "stage3"} or {"stage2", "stage3"} <= stages:
            raise ValueError(f"world {self.name}: axes {self.names} are not stage1 with at most one of stage2/stage3, "
                             f"and lr")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.axes)

    @property
    def baseline(self) -> dict[str, float]:
        return {a.name: a.base for a in self.axes}


# f(A) along the best line; b0 sets the baseline (A = 0) 0.0005 under the target: hit rate about 0.6
_LINEAR = {"b0": -0.0005, "slope": 0.00036, "curv": 0.000015}

WORLDS: dict[str, WorldSpec] = {w.name: w for w in (
    WorldSpec("reference", "bench/calibration.py's quadratic fit of the 24 reference runs, offset N(0, 0.0007), "
              "noise 0.0017", curve="reference", offset_sd=0.0007, noise=0.0017, regime="inside"),
    WorldSpec("linear", "0.00036 per pp near the baseline, slowly steepening; best on stage3 = 0.33",
              curve_args=dict(_LINEAR)),
    WorldSpec("plateau-knee", "flat 0.0005 under the target (0.00005/pp), then +0.0015/pp past a knee at "
              "A = 3 +- 1 pp", curve="knee",
              curve_args={"b0": -0.0005, "flat": 0.00005, "knee": 3.0, "steep": 0.0015},
              offset_sd=0.0002, jitter={"knee": 1.0}),
    WorldSpec("saturating", "0.0022 tanh(A / 5): 0.00044/pp at the baseline, flat at +0.0016 over the target "
              "at the aggressive end (hit rate ~20% there)", curve="saturating",
              curve_args={"b0": -0.0005, "height": 0.0022, "scale": 5.0}, jitter={"scale": 0.5}),
    WorldSpec("interacting", "best stage 3 share grows with the time level (x3_best = -1 - 0.35 A +- 0.7 pp): "
              "a strong stage1 x stage3 term, the best variant off the stage3 = 0.33 line",
              curve_args={**_LINEAR, "b0": -0.0008}, ridge=(-1.0, -0.35), jitter={"ridge0": 0.7}),
    WorldSpec("hetero-heavy", "linear loss; noise 0.0013 -> 0.0033 from the conservative to the aggressive "
              "end (2.5x), Student-t df 3", curve_args=dict(_LINEAR), noise_growth=2.5, df=3.0),
    WorldSpec("crashes", "linear loss; crash rate 0.05 sigmoid((A - 5) / 1.5): ~0.6% at A = 2, 5% at the "
              "aggressive end", curve_args=dict(_LINEAR), crash_max=0.05),
    WorldSpec("s1-s2", "linear loss; stage1 and stage2 searched (stage3 = 1 - s1 - s2): the best line is the "
              "diagonal s1 + s2 = 0.67", axes=(S1, S2), curve_args=dict(_LINEAR)),
    WorldSpec("noise-low", "linear loss, noise 0.0019; the hint 1.6x too low (0.0012)",
              curve_args=dict(_LINEAR), hint=0.0012),
    WorldSpec("noise-high", "linear loss, noise 0.0019; the hint 1.6x too high (0.0030)",
              curve_args=dict(_LINEAR), hint=0.0030),
    WorldSpec("s1-only", "linear loss; stage 1 alone searched (stage 3 held at 0.33): one parameter, 15 variants",
              axes=(S1,), curve_args=dict(_LINEAR)),
    WorldSpec("with-lr", "linear loss; stage1, stage3 and an lr multiplier (0.70-1.30, step 0.05) searched: the "
              "best lr falls 0.03 per pp of time level from 1.0 +- 0.08, and 0.1 off it costs 0.0004",
              axes=(S1, S3, LR), curve_args=dict(_LINEAR), lr_ridge=(1.0, -0.03), jitter={"lr_ridge0": 0.08}),
    # where the noise lets runs tell neighbours apart: the goals of a right pick in few trials can be met
    WorldSpec("quiet", "linear loss, noise 0.0006 (a third of the reference's), the hint 0.0008; the baseline "
              "0.0008 under the target: the best is about 2 pp (0.5 s) faster, one step 0.6 noise std",
              curve_args={**_LINEAR, "b0": -0.0008}, offset_sd=0.0002, noise=0.0006, hint=0.0008,
              regime="inside"),
    WorldSpec("steep", "0.0015 per pp (4x the reference's slope), noise 0.0019, the baseline 0.003 under the "
              "target: the best is about 2 pp (0.5 s) faster, one step 0.8 noise std",
              curve_args={"b0": -0.003, "slope": 0.0015, "curv": 0.0}, offset_sd=0.001, regime="inside"),
    # beyond the calibration (baseline hit rate about 50%): where the baseline stands elsewhere
    WorldSpec("far-boundary", "linear loss, the baseline 0.003 under the target (hit rate ~0.94): the best is "
              "about 6 pp (1.5 s) faster", curve_args={**_LINEAR, "b0": -0.003}, regime="inside"),
    WorldSpec("baseline-misses", "0.0005 per pp, the baseline 0.0012 over the target (hit rate ~0.26): the best "
              "is about 2-3 pp (0.6 s) slower", curve_args={"b0": 0.0012, "slope": 0.0005, "curv": 0.0},
              offset_sd=0.0004, regime="misses"),
    WorldSpec("no-gain", "the baseline 0.002 under the target on a flat stretch, then +0.004/pp from A = 0.3: "
              "every faster variant misses, the baseline is the best", curve="knee",
              curve_args={"b0": -0.002, "flat": 0.0001, "knee": 0.3, "steep": 0.004}, offset_sd=0.0003,
              regime="edge"),
)}


def shares(spec: WorldSpec, cols: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stage1, stage2, stage3) of lattice columns ``cols`` (axis name -> values): an axis not searched stays at
    the baseline's share, and stage2 or stage3 (whichever is not an axis) makes the three sum to 1."""
    s1 = cols["stage1"]
    if "stage2" in cols:
        return s1, cols["stage2"], 1.0 - s1 - cols["stage2"]
    s3 = cols.get("stage3", np.full_like(s1, S3.base))
    return s1, 1.0 - s1 - s3, s3


def _curve(kind: str, args: dict[str, float], A: np.ndarray) -> np.ndarray:
    if kind == "linear":
        return args["b0"] + args["slope"] * A + args["curv"] * A * A
    if kind == "knee":
        return args["b0"] + args["flat"] * A + args["steep"] * np.maximum(A - args["knee"], 0.0)
    if kind == "saturating":
        return args["b0"] + args["height"] * np.tanh(A / args["scale"])
    raise ValueError(f"unknown curve {kind!r}")


@dataclass
class WorldDraw:
    """One seed of one world: the truth on the lattice and its runs."""

    spec: WorldSpec
    seed: int
    variants: list[tuple[float, ...]]  # lattice, in a fixed order
    time: np.ndarray  # true mean time (s) of each variant on a machine of multiplier 1
    mean: np.ndarray  # true mean val_loss
    sigma: np.ndarray  # run-to-run std of val_loss
    crash: np.ndarray  # crash probability of a run
    machine_mult: np.ndarray  # (MACHINES,) time multipliers of this seed's machines
    index: dict[tuple[int, ...], int]  # lattice ints (round(100 v)) -> variant index
    best: int | None  # the fastest feasible variant (true mean <= target; ties: lower mean)
    neighbour: int | None  # the infeasible variant faster than best with the lowest mean (None: none faster)
    base: int  # the baseline variant (equal thirds on the lattice)

    @property
    def feasible(self) -> np.ndarray:
        return self.mean <= TARGET

    def hit_rate(self, i: int) -> float:
        """True P(one run <= target) (normal approximation for t noise)."""
        return _cal.phi((TARGET - self.mean[i]) / self.sigma[i])

    def key(self, params: dict[str, float]) -> int | None:
        return self.index.get(_lattice_key(params[n] for n in self.spec.names))

    def run(self, i: int, repeat: int, machine: int) -> tuple[float, float | None, bool]:
        """(time_s, val_loss, crashed) of the ``repeat``-th run (0-based) of variant ``i`` on ``machine``.

        The draws depend on (seed, world, variant, repeat) only: the same for every method (common random
        numbers); the machine multiplies the time."""
        rng = np.random.default_rng([self.seed, _world_id(self.spec.name),
                                     *_lattice_key(self.variants[i]), repeat])
        z_time = rng.standard_normal()
        if self.spec.df is None:
            z_loss = rng.standard_normal()
        else:
            df = self.spec.df
            z_loss = rng.standard_t(df) / math.sqrt(df / (df - 2.0))
        u = rng.random()
        t = float(self.time[i] * self.machine_mult[machine % MACHINES] + TIME_NOISE * z_time)
        if u < self.crash[i]:
            return t, None, True
        return t, float(self.mean[i] + self.sigma[i] * z_loss), False

    def regret(self, i: int | None) -> float:
        """True expected time of the pick minus the best feasible variant's.  None (no pick: the team keeps the
        baseline and submits nothing) scores what was missed: the baseline's time minus the best's, 0 where no
        feasible variant is faster than the baseline (there no record was to be had)."""
        assert self.best is not None
        if i is None:
            return max(0.0, float(self.time[self.base] - self.time[self.best]))
        return float(self.time[i] - self.time[self.best])

    def noise_floor(self, level: float = LEVEL) -> tuple[float, float]:
        """Runs the truth says are needed: at the best variant for P(mean <= target) >= level, and at its
        faster neighbour to call it infeasible at the same level (one-sided normal, that variant's noise)."""
        z = NormalDist().inv_cdf(level)

        def runs(i: int | None) -> float:
            if i is None:
                return 0.0
            margin = abs(TARGET - self.mean[i])
            return math.inf if margin == 0 else float(math.ceil((z * self.sigma[i] / margin) ** 2))

        return runs(self.best), runs(self.neighbour)


    def shape_floor(self, runs: int, level: float = LEVEL, draws: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What the pick rule could say at best after ``runs`` runs: the picks of a method that knows the whole
        shape of the world (every variant's mean up to one common offset, and the noise) and lacks only the
        offset, which it learns from ``runs`` runs at the least noisy variant (crashes and heavy tails ignored:
        a generous bound).  Its offset estimate errs by e ~ N(0, sd^2), sd = sigma_min / sqrt(runs); it picks
        the fastest variant with P(mean <= target) >= level, i.e. mean + e + z sd <= target.  Returns the
        regrets (a None pick scored as ``regret`` scores it), the wrongness (the pick's true mean over
        the target) and whether there was a pick, over ``draws`` quantiles of e (``draws=1``: e = 0).  As the
        rule does, a pick slower than a baseline it puts at P >= KEEP_BASELINE_P is no pick (keep the baseline)."""
        sd = self._offset_sd(runs)
        picks = [self._rule_pick(sd * NormalDist().inv_cdf((k + 0.5) / draws), sd, level) for k in range(draws)]
        return (np.array([self.regret(i) for i in picks]),
                np.array([i is not None and bool(self.mean[i] > TARGET) for i in picks]),
                np.array([i is not None for i in picks]))

    def shape_floor_runs(self, tolerance: float, level: float = LEVEL, most: int = 400) -> float:
        """Runs (in rounds of MACHINES) after which the known-shape method's median pick (e = 0) is right:
        feasible and within ``tolerance`` s of the best; inf if not within ``most``."""
        for n in range(MACHINES, most + 1, MACHINES):
            i = self._rule_pick(0.0, self._offset_sd(n), level)
            if i is not None and self.mean[i] <= TARGET and self.regret(i) <= tolerance + 1e-9:
                return float(n)
        return math.inf

    def _rule_pick(self, error: float, sd: float, level: float) -> int | None:
        """The known-shape method's pick when its offset estimate errs by ``error`` with sd ``sd``: the fastest
        variant it puts at P(feasible) >= level, unless that is slower than the baseline (by more than the rule's
        default tolerance) while it puts the baseline at P >= KEEP_BASELINE_P."""
        i = self._fastest_within(error + NormalDist().inv_cdf(level) * sd)
        keep = self.mean[self.base] + error + NormalDist().inv_cdf(KEEP_BASELINE_P) * sd <= TARGET
        tolerance = TOLERANCE_SHARE * float(np.median(self.time))
        if i is not None and keep and self.time[i] > self.time[self.base] + tolerance:
            return None
        return i

    def _offset_sd(self, runs: int) -> float:
        """The known-shape method's offset error after ``runs`` runs at the least noisy variant."""
        return float(self.sigma.min()) / math.sqrt(runs)

    def _fastest_within(self, shift: float) -> int | None:
        """The fastest variant (ties: lower mean, as `best`) whose mean + ``shift`` meets the target, or None."""
        ok = self._by_speed[self.mean[self._by_speed] + shift <= TARGET]
        return int(ok[0]) if len(ok) else None

    @functools.cached_property
    def _by_speed(self) -> np.ndarray:
        return np.lexsort((self.mean, np.round(self.time, 9)))


def _off_line(d: WorldDraw, i: int) -> bool:
    """Whether variant ``i`` is off the stage3 = 0.33 line."""
    cols = {n: np.array([v]) for n, v in zip(d.spec.names, d.variants[i])}
    return abs(float(shares(d.spec, cols)[2][0]) - S3.base) > 1e-9


def _lattice_key(values) -> tuple[int, ...]:
    """A variant's identity on the lattice: its values in hundredths (every axis steps by 0.01 or 0.05)."""
    return tuple(int(round(v * 100)) for v in values)


def _world_id(name: str) -> int:
    return zlib.crc32(name.encode())


@functools.lru_cache(maxsize=1)
def _calibration() -> _cal.Calibration:
    return _cal.calibrate()


@functools.lru_cache(maxsize=256)
def draw(name: str, seed: int | None) -> WorldDraw:
    """Seed ``seed``'s truth of world ``name`` (cached per process); ``seed=None``: the nominal world
    (no perturbation, machine multipliers 1)."""
    spec = WORLDS[name]
    cal = _calibration()
    grid = [g.ravel() for g in np.meshgrid(*(a.values() for a in spec.axes), indexing="ij")]
    variants = list(zip(*(np.round(g, 2).tolist() for g in grid)))
    cols = dict(zip(spec.names, grid))
    s1, s2, s3 = shares(spec, cols)
    rng = np.random.default_rng([0 if seed is None else seed, _world_id(spec.name), 12345])
    if seed is None:
        offset, jit, mult = 0.0, {}, np.ones(MACHINES)
    else:
        offset = float(rng.normal(0.0, spec.offset_sd)) if spec.offset_sd > 0 else 0.0
        jit = {k: float(rng.normal(0.0, sd)) for k, sd in sorted(spec.jitter.items())}
        mult = rng.normal(1.0, MACHINE_SD, MACHINES)
    time = _cal.base_time(s1, s3) + cal.overhead_s
    A = 100.0 * ((s1 - S1.base) + (S3.base - s3))
    if spec.curve == "reference":
        mean = _cal.features(s1, s3) @ cal.loss_coef + offset
    else:
        args = {k: v + jit.get(k, 0.0) for k, v in spec.curve_args.items()}
        x3 = 100.0 * (S3.base - s3)
        ridge = spec.ridge[0] + jit.get("ridge0", 0.0) + spec.ridge[1] * A
        mean = TARGET + offset + _curve(spec.curve, args, A) + spec.off_line * (x3 - ridge) ** 2
    if "lr" in cols:
        lr_best = spec.lr_ridge[0] + jit.get("lr_ridge0", 0.0) + spec.lr_ridge[1] * A
        mean = mean + spec.lr_cost * ((cols["lr"] - lr_best) / 0.1) ** 2
    if spec.noise_growth != 1.0:
        lo, hi = float(A.min()), float(A.max())
        # std grows geometrically with A: noise at A = 0, x noise_growth from the lowest to the highest A
        sigma = spec.noise * spec.noise_growth ** (A / (hi - lo))
    else:
        sigma = np.full(len(variants), spec.noise)
    crash = spec.crash_max / (1.0 + np.exp(-(A - spec.crash_center) / spec.crash_width)) if spec.crash_max else (
        np.zeros(len(variants)))
    index = {_lattice_key(variant): i for i, variant in enumerate(variants)}
    feas = mean <= TARGET
    best = neighbour = None
    if feas.any():
        order = np.lexsort((mean, np.round(time, 9)))
        best = int(next(i for i in order if feas[i]))
        faster = np.flatnonzero((time < time[best] - 1e-9) & ~feas)
        if len(faster):
            neighbour = int(faster[np.argmin(mean[faster])])
    base = index[_lattice_key(a.base for a in spec.axes)]
    return WorldDraw(spec, -1 if seed is None else seed, variants, np.asarray(time, float), np.asarray(mean, float),
                     np.asarray(sigma, float), np.asarray(crash, float), np.asarray(mult, float), index, best,
                     neighbour, base)


def _shape_floor_summary(floors: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, float]:
    """The median regret and the wrong share of the known-shape floor over seeds and draws."""
    return {"regret": float(np.median(np.concatenate([f[0] for f in floors]))),
            "wrong": float(np.mean(np.concatenate([f[1] for f in floors])))}


def describe(name: str, seeds: range = range(200)) -> dict[str, float]:
    """Calibration numbers of a world (nominal and over seeds) for the docs and the test."""
    nom = draw(name, None)
    ds = [draw(name, s) for s in seeds]
    with_best = [d for d in ds if d.best is not None]
    floors = np.array([d.noise_floor() for d in with_best])
    return {
        "baseline_time": float(nom.time[nom.base]),
        "baseline_hit": nom.hit_rate(nom.base),
        "baseline_hit_median": float(np.median([d.hit_rate(d.base) for d in ds])),
        "best_saves_median": float(np.median([d.time[d.base] - d.time[d.best] for d in with_best])),
        "best_faster_share": float(np.mean([d.time[d.best] <= d.time[d.base] + 1e-9 for d in with_best])),
        "feasible_share": len(with_best) / len(ds),
        "best_off_line_share": float(np.mean([_off_line(d, d.best) for d in with_best])),
        "floor_best_median": float(np.median(floors[:, 0])),
        "floor_neighbour_median": float(np.median(floors[:, 1])),
        **{f"shape_floor_{what}_{n}": value for n in FLOOR_CHECKPOINTS
           for what, value in _shape_floor_summary([d.shape_floor(n) for d in with_best]).items()},
        "shape_floor_runs_median": float(np.median([d.shape_floor_runs(RIGHT_TOLERANCE) for d in with_best])),
        "noise_range": (float(nom.sigma.min()), float(nom.sigma.max())),
        "hint": WORLDS[name].hint,
    }
