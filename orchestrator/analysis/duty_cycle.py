"""Duty cycle: the share of a machine's time spent in timed training, per machine and per study.

From the trial rows alone: each ended trial's time on its slot (from `created_at`, when the slot was taken for it and
before its files were staged and its job launched, to `ended_at`, its exit recorded) and the training time its
trainer reported (`train_time_ms` of its final metrics, else of its last
metric point: a crashed or cut run trained for that long too). Per machine of a study:

- lanes: the distinct slots (GPU sets, CPU slots) the study's trials used there; each is one lane of the machine;
- span: from the first trial's slot taken to the last trial's end there (the study's time on the machine);
- duty cycle = timed training / (span x lanes);
- it splits into in-trial share = timed training / trial time (what each job spends outside its timed loop:
  process start, imports, compile, data loading, validation, its end) and occupancy = trial time / (span x lanes)
  (what the machine spends between jobs: dispatch, health checks, a round waiting for its slowest trial).

The study's duty cycle is the sum of timed training over the sum of span x lanes of its machines. Trials still
running are left out until they end. A lane the study never used is not counted (that is scheduling, not duty).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from sqlalchemy import func, select

from db import Database, MetricPointRow, TrialRow


@dataclass
class MachineDuty:
    machine: str
    trials: int
    lanes: int
    span_s: float
    trial_s: float
    timed_s: float
    untimed: int = 0  # ended trials without a reported training time (counted as 0 s of timed training)

    @property
    def duty(self) -> float | None:
        capacity = self.span_s * self.lanes
        return self.timed_s / capacity if capacity > 0 else None

    @property
    def in_trial(self) -> float | None:
        return self.timed_s / self.trial_s if self.trial_s > 0 else None

    @property
    def occupancy(self) -> float | None:
        capacity = self.span_s * self.lanes
        return self.trial_s / capacity if capacity > 0 else None

    def to_json(self) -> dict:
        return {**asdict(self), "duty_cycle": _round(self.duty), "in_trial": _round(self.in_trial),
                "occupancy": _round(self.occupancy)}


@dataclass
class DutyCycle:
    machines: list[MachineDuty] = field(default_factory=list)

    @property
    def timed_s(self) -> float:
        return sum(m.timed_s for m in self.machines)

    @property
    def capacity_s(self) -> float:
        return sum(m.span_s * m.lanes for m in self.machines)

    @property
    def trial_s(self) -> float:
        return sum(m.trial_s for m in self.machines)

    @property
    def duty(self) -> float | None:
        return self.timed_s / self.capacity_s if self.capacity_s > 0 else None

    def to_json(self) -> dict:
        capacity = self.capacity_s
        return {"duty_cycle": _round(self.duty), "timed_s": round(self.timed_s, 2),
                "machine_s": round(capacity, 2), "trial_s": round(self.trial_s, 2),
                "in_trial": _round(self.timed_s / self.trial_s) if self.trial_s > 0 else None,
                "occupancy": _round(self.trial_s / capacity) if capacity > 0 else None,
                "trials": sum(m.trials for m in self.machines), "machines": [m.to_json() for m in self.machines]}

    def lines(self) -> list[str]:
        return duty_lines(self.to_json())


def duty_lines(view: dict) -> list[str]:
    """What `orch study status` prints of `DutyCycle.to_json()`."""
    if not view.get("machines"):
        return ["duty cycle: no ended trial yet"]
    out = [f"duty cycle: {_pct(view['duty_cycle'])} (timed training {view['timed_s']:.1f} s of {view['machine_s']:.1f} s "
           f"machine time; in-trial {_pct(view['in_trial'])}, occupancy {_pct(view['occupancy'])})"]
    for m in view["machines"]:
        out.append(f"  {m['machine']}: {_pct(m['duty_cycle'])} over {m['trials']} trial(s) on {m['lanes']} lane(s), "
                   f"{m['timed_s']:.1f} s timed of {m['span_s']:.1f} s x {m['lanes']} (in-trial {_pct(m['in_trial'])}, "
                   f"occupancy {_pct(m['occupancy'])})" + (f"; {m['untimed']} without a training time"
                                                           if m["untimed"] else ""))
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _utc(when: datetime) -> datetime:
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def duty_from_trials(trials: list[dict]) -> DutyCycle:
    """`trials`: dicts with machine, slot, started_at (when its slot was taken), ended_at (datetimes) and timed_s
    (float or None)."""
    by_machine: dict[str, list[dict]] = {}
    for t in trials:
        if t.get("machine") and t.get("started_at") and t.get("ended_at"):
            by_machine.setdefault(t["machine"], []).append(t)
    out = DutyCycle()
    for machine in sorted(by_machine):
        rows = by_machine[machine]
        start = min(_utc(t["started_at"]) for t in rows)
        end = max(_utc(t["ended_at"]) for t in rows)
        trial_s = sum(max(0.0, (_utc(t["ended_at"]) - _utc(t["started_at"])).total_seconds()) for t in rows)
        timed = [t.get("timed_s") for t in rows]
        out.machines.append(MachineDuty(machine=machine, trials=len(rows), lanes=len({t.get("slot") for t in rows}),
                                        span_s=round((end - start).total_seconds(), 3), trial_s=round(trial_s, 3),
                                        timed_s=round(sum(x for x in timed if x), 3),
                                        untimed=sum(1 for x in timed if x is None)))
    return out


def study_duty_cycle(db: Database, study_id: int) -> DutyCycle:
    with db.session() as s:
        rows = s.execute(select(TrialRow.id, TrialRow.machine, TrialRow.slot, TrialRow.created_at,
                                TrialRow.ended_at, TrialRow.metrics).where(TrialRow.study_id == study_id,
                                                        TrialRow.created_at.is_not(None),
                                                        TrialRow.ended_at.is_not(None))).all()
        last_points = dict(s.execute(select(MetricPointRow.trial_id, func.max(MetricPointRow.train_time_ms))
                                     .where(MetricPointRow.trial_id.in_([r.id for r in rows]))
                                     .group_by(MetricPointRow.trial_id)).all()) if rows else {}
    trials = []
    for r in rows:
        metrics = r.metrics or {}
        ms = metrics.get("train_time_ms")
        if ms is None and metrics.get("train_time_s") is not None:
            ms = 1000.0 * metrics["train_time_s"]
        if ms is None:
            ms = last_points.get(r.id)
        trials.append({"machine": r.machine, "slot": r.slot, "started_at": r.created_at, "ended_at": r.ended_at,
                       "timed_s": None if ms is None else float(ms) / 1000.0})
    return duty_from_trials(trials)
