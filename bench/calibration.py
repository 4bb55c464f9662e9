"""The record #78 calibration every simulated world of bench/worlds.py is built on: the reference runs
(tests/fixtures/reference/stage-shift-2026-03-15.csv, the 24 runs of the 2026-03-15 stage-shift write-up),
the write-up's per-stage step costs, a time overhead fitted to the runs, and the quadratic of val_loss in
(stage1, stage3) least-squares fitted to them (the `reference` world's loss surface)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
import math
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE_CSV = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "reference" / "stage-shift-2026-03-15.csv"
TARGET = 3.28
STEP_COST_MS = (21.0, 38.0, 55.0)  # per step of stages 1, 2, 3 (the write-up's cost table)
SCHEDULED, EXTENSION = 1450, 40  # scheduled steps, then extension steps at stage 3's cost


def reference_runs(path: Path = REFERENCE_CSV) -> list[dict[str, Any]]:
    """The reference runs as dicts (round, experiment, stage1..3, machine, time_s, val_loss, note)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("stage1", "stage2", "stage3", "time_s", "val_loss"):
            r[k] = float(r[k])
        r["round"], r["experiment"] = int(r["round"]), int(r["experiment"])
    return rows


def features(s1: Any, s3: Any) -> np.ndarray:
    """The loss quadratic's features in (stage1, stage3)."""
    s1, s3 = np.asarray(s1, float), np.asarray(s3, float)
    return np.stack([np.ones_like(s1), s1, s3, s1 * s1, s3 * s3, s1 * s3], axis=-1)


def base_time(s1: Any, s3: Any) -> Any:
    """Seconds of timed training of a schedule, without the fixed overhead."""
    s2 = 1.0 - np.asarray(s1) - np.asarray(s3)
    c1, c2, c3 = STEP_COST_MS
    return (SCHEDULED * (c1 * np.asarray(s1) + c2 * s2 + c3 * np.asarray(s3)) + EXTENSION * c3) / 1000


@dataclass(frozen=True)
class Calibration:
    loss_coef: np.ndarray  # the quadratic over `features`
    overhead_s: float  # the runs' median time minus `base_time`
    loss_rms: float  # the quadratic's residual rms


def calibrate(path: Path = REFERENCE_CSV) -> Calibration:
    """Fit the loss quadratic and the time overhead to the reference runs."""
    runs = reference_runs(path)
    s1 = np.array([r["stage1"] for r in runs])
    s3 = np.array([r["stage3"] for r in runs])
    loss = np.array([r["val_loss"] for r in runs])
    times = np.array([r["time_s"] for r in runs])
    x = features(s1, s3)
    coef, *_ = np.linalg.lstsq(x, loss, rcond=None)
    rms = float(np.sqrt(np.mean((loss - x @ coef) ** 2)))
    return Calibration(loss_coef=coef, overhead_s=float(np.median(times - base_time(s1, s3))), loss_rms=rms)


def lattice(lo: float, hi: float, step: float = 0.01) -> list[float]:
    return [round(lo + step * i, 2) for i in range(int(round((hi - lo) / step)) + 1)]


def phi(z: float) -> float:
    """The standard normal cdf."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))
