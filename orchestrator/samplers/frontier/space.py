"""What the frontier sampler searches: the parameters it owns, their lattice of variants, and the runs
it learns from (`Observation`), in plain data so the benchmark, the write-up and the sampler share them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
import math

import numpy as np

#: run statuses the model reads: a complete run, a run that crashed (no metric), a run whose loss diverged
STATUSES = ("ok", "crashed", "diverged")


@dataclass(frozen=True)
class Param:
    """One searched parameter: a range with an optional step (int parameters step by whole numbers)."""

    name: str
    low: float
    high: float
    step: float | None = None
    log: bool = False
    is_int: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.high < self.low:
            raise ValueError(f"parameter {self.name!r}: need finite low <= high, got [{self.low}, {self.high}]")
        if self.log and self.low <= 0:
            raise ValueError(f"parameter {self.name!r}: a log range needs low > 0")
        if self.step is not None and not (math.isfinite(self.step) and self.step > 0):
            raise ValueError(f"parameter {self.name!r}: step must be a positive number")

    def values(self, n_grid: int = 33) -> np.ndarray:
        """The variants of this parameter: low + i*step, or n_grid points (log-spaced for a log range)."""
        if self.high == self.low:
            return np.array([self.low])
        if self.step is not None:
            count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
            out = self.low + self.step * np.arange(count)
        elif self.is_int:
            out = np.arange(int(self.low), int(self.high) + 1, dtype=float)
        elif self.log:
            out = np.exp(np.linspace(math.log(self.low), math.log(self.high), n_grid))
        else:
            out = np.linspace(self.low, self.high, n_grid)
        if len(out) > 4 * n_grid:  # a fine int range: an even thinning keeps the lattice small
            out = out[np.unique(np.linspace(0, len(out) - 1, 4 * n_grid).round().astype(int))]
        return np.round(out, 12)

    def to_unit(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, float)
        if self.high == self.low:
            return np.zeros_like(x)
        if self.log:
            return (np.log(x) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (x - self.low) / (self.high - self.low)


@dataclass
class SearchSpace:
    """The owned parameters and, optionally, a test that a variant is allowed (e.g. a derived stage share
    above its minimum); the lattice is the product of the parameters' values that pass it."""

    params: Sequence[Param]
    allowed: Callable[[dict[str, float]], bool] | None = None
    n_grid: int = 33
    max_variants: int = 2000
    _lattice: np.ndarray | None = field(default=None, repr=False)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def lattice(self) -> np.ndarray:
        """Every allowed variant, shape (C, d), in a fixed order. Beyond ``max_variants`` the axis with the most
        values keeps every other one (its ends kept), until the product fits: a coarser grid on the longest axes,
        never a grid with holes (an even thinning of the flattened product left the best variant of a 3-parameter
        world out of the lattice in a third of the seeds)."""
        if self._lattice is None:
            axes = [np.asarray(p.values(self.n_grid), float) for p in self.params]
            grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(axes))
            if self.allowed is not None:
                keep = [self.allowed(self.as_dict(row)) for row in grid]
                grid = grid[np.array(keep, bool)] if len(grid) else grid
            while len(grid) > self.max_variants and max(len(a) for a in axes) > 2:
                j = int(np.argmax([len(a) for a in axes]))
                axes[j] = np.unique(np.append(axes[j][::2], axes[j][-1]))
                grid = grid[np.isin(grid[:, j], axes[j])]
            if len(grid) == 0:
                raise ValueError("no variant of the search space is allowed (check the derived parameters' min/max)")
            self._lattice = grid
        return self._lattice

    def as_dict(self, row: Sequence[float]) -> dict[str, float]:
        return {p.name: (int(round(v)) if p.is_int else float(v)) for p, v in zip(self.params, row)}

    def row(self, values: Mapping[str, float]) -> np.ndarray:
        return np.array([float(values[p.name]) for p in self.params])

    def to_unit(self, rows: np.ndarray) -> np.ndarray:
        rows = np.atleast_2d(np.asarray(rows, float))
        return np.stack([p.to_unit(rows[:, j]) for j, p in enumerate(self.params)], axis=-1)

    def key(self, values: Mapping[str, float] | Sequence[float]) -> tuple[float, ...]:
        """A variant's identity: its values rounded to 9 digits (runs of one variant share a key)."""
        row = self.row(values) if isinstance(values, Mapping) else values
        return tuple(round(float(v), 9) for v in row)


@dataclass(frozen=True)
class Observation:
    """One finished run: its parameters, its objective (e.g. train_time_s) and constraint metric (e.g.
    val_loss), the machine it ran on, and whether it completed (`ok`), crashed or diverged."""

    params: Mapping[str, float]
    objective: float | None
    metric: float | None
    machine: str | None = None
    status: str = "ok"

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"observation status must be one of {STATUSES}, got {self.status!r}")


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
