"""Machine-blocked timing: candidate (A) and baseline (B) run alternately on one machine, A B B A, one block per
machine (`orch study confirm --paired`), and the time difference is estimated with the machine as a block.

Hosts of one type differ by about 2% in speed, more than a typical record's gain, so times of runs on different
machines are not compared directly. Within a block the ABBA order cancels a linear drift of the machine's speed
(A's mean position equals B's). The estimate is the least-squares fit of

    time = block effect (one per machine) + difference x [candidate] + drift x (position in its block)

(the block model of a randomized complete block design, with a within-block trend; numpy's lstsq: a few lines,
no statistics package needed for it), its interval the Student-t interval with the residual degrees of freedom
(4 x blocks - blocks - 2). Beside it the unblocked Welch interval shows what blocking bought.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ABBA = ("A", "B", "B", "A")
LEVEL = 0.95


@dataclass
class PairedRun:
    block: int
    machine: str
    slot: str | None
    position: int
    role: str  # A = candidate, B = baseline
    number: int
    state: str
    time: float | None
    metric: float | None


@dataclass
class PairedTiming:
    batch: int
    metric: str  # the timed objective, e.g. train_time_s
    runs: list[PairedRun]
    blocks: int
    used_runs: int
    candidate_mean: float | None
    baseline_mean: float | None
    difference: float | None  # candidate - baseline, blocked estimate
    interval: tuple[float, float] | None
    df: int | None
    welch_interval: tuple[float, float] | None
    level: float = LEVEL
    notes: list[str] = field(default_factory=list)

    @property
    def relative(self) -> float | None:
        if self.difference is None or not self.baseline_mean:
            return None
        return self.difference / self.baseline_mean

    def faster(self) -> bool | None:
        """True when the whole interval is below 0 (the candidate is faster), False when it is above 0 or
        straddles it, None without an interval."""
        if self.interval is None:
            return None
        return self.interval[1] < 0

    def text(self) -> str:
        if self.difference is None:
            return f"paired timing (batch #{self.batch}): no complete pair yet"
        pct = f" ({100 * self.relative:+.2f} %)" if self.relative is not None else ""
        out = (f"candidate - baseline {self.metric}: {self.difference:+.4g}{pct} over {self.blocks} ABBA block(s), "
               f"{self.used_runs} runs, machine as a block")
        if self.interval is not None:
            lo, hi = self.interval
            out += f"; {int(self.level * 100)}% interval {lo:+.4g} to {hi:+.4g} (t, {self.df} df)"
            out += ": the candidate is faster" if hi < 0 else (": the candidate is slower" if lo > 0 else
                                                             ": not distinguishable from no difference")
        if self.welch_interval is not None:
            lo, hi = self.welch_interval
            out += f"; unblocked (Welch) {int(self.level * 100)}% interval {lo:+.4g} to {hi:+.4g}"
        return out


def paired_runs(records: list[dict[str, Any]], batch: int, metric: str, cmetric: str | None) -> list[PairedRun]:
    out = []
    for r in records:
        if r.get("user_attrs.batch") != batch or r.get("user_attrs.paired_block") is None:
            continue
        value = r.get("value") if r["state"] == "complete" else None
        cm = r.get(f"metrics.{cmetric}") if cmetric and r["state"] == "complete" else None
        out.append(PairedRun(int(r["user_attrs.paired_block"]), str(r.get("user_attrs.paired_machine")),
                             r.get("slot"), int(r["user_attrs.paired_pos"]), str(r["user_attrs.paired_role"]),
                             r["number"], r["state"], float(value) if value is not None else None,
                             float(cm) if cm is not None else None))
    return sorted(out, key=lambda p: (p.block, p.position, p.number))


def blocked_difference(runs: list[PairedRun], level: float = LEVEL) -> tuple[float, tuple[float, float] | None, int | None]:
    """(candidate - baseline, its interval, residual df) by least squares with block effects and a trend."""
    import scipy.stats  # here, not at the top: it costs ~0.5 s of every orch command's start
    use = [r for r in runs if r.time is not None]
    blocks = sorted({r.block for r in use})
    with_trend = len(use) - len(blocks) - 2 >= 1
    columns = len(blocks) + 1 + (1 if with_trend else 0)
    x = np.zeros((len(use), columns))
    y = np.array([r.time for r in use])
    for i, r in enumerate(use):
        x[i, blocks.index(r.block)] = 1.0
        x[i, len(blocks)] = 1.0 if r.role == "A" else 0.0
        if with_trend:
            x[i, -1] = r.position - 1.5
    coef, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    diff = float(coef[len(blocks)])
    df = len(use) - rank
    if rank < columns or df < 1:
        return diff, None, None
    resid = y - x @ coef
    sigma2 = float(resid @ resid) / df
    se = math.sqrt(sigma2 * float(np.linalg.inv(x.T @ x)[len(blocks), len(blocks)]))
    half = float(scipy.stats.t.ppf(0.5 + level / 2, df)) * se
    return diff, (diff - half, diff + half), int(df)


def paired_timing(records: list[dict[str, Any]], batch: int, metric: str, cmetric: str | None) -> PairedTiming:
    import scipy.stats  # here, not at the top: it costs ~0.5 s of every orch command's start
    runs = paired_runs(records, batch, metric, cmetric)
    timed = [r for r in runs if r.time is not None]
    a = [r.time for r in timed if r.role == "A"]
    b = [r.time for r in timed if r.role == "B"]
    out = PairedTiming(batch, metric, runs, len({r.block for r in timed}), len(timed),
                       float(np.mean(a)) if a else None, float(np.mean(b)) if b else None, None, None, None, None)
    lost = [r for r in runs if r.state == "lost"]
    if lost:
        out.notes.append("lost to the infrastructure (not timed): " + ", ".join(f"trial {r.number}" for r in lost))
    paired_blocks = {r.block for r in timed if r.role == "A"} & {r.block for r in timed if r.role == "B"}
    if not paired_blocks:
        return out
    use = [r for r in timed if r.block in paired_blocks]
    out.difference, out.interval, out.df = blocked_difference(use)
    out.used_runs, out.blocks = len(use), len(paired_blocks)
    a_used = [r.time for r in use if r.role == "A"]
    b_used = [r.time for r in use if r.role == "B"]
    if len(a_used) >= 2 and len(b_used) >= 2 and (np.std(a_used) > 0 or np.std(b_used) > 0):
        welch = scipy.stats.ttest_ind(a_used, b_used, equal_var=False).confidence_interval(out.level)
        out.welch_interval = (float(welch.low), float(welch.high))
    return out
