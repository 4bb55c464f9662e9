"""Log adapter for karpathy/nanochat's pretraining stdout (`scripts/base_train.py`, plus `scripts/base_eval.py`).

Line shapes (as printed by nanochat's `print0` / its logging formatter; timestamps and ANSI colours are stripped):

- `GPU: NVIDIA H100 80GB HBM3 | Peak FLOPS (BF16): 9.89e+14`
- `... - nanochat.common - INFO - Distributed world size: 8` (the logger line, with its timestamp prefix)
- `Using user-provided number of iterations: 5,000` / `Calculated number of iterations from ...: 16,704`
- training: `step 00100/05000 (2.00%) | loss: 4.123456 | [grad norm: 0.4123 |] lrm: 1.00 | dt: 1234.56ms |
  tok/sec: 424,863 | mfu: 45.12 | [epoch: 1 pq: 0 rg: 3 |] total time: 1.23m[ | eta: 98.7m]`
  (`bf16_mfu:` instead of `mfu:` since 2026; older versions have no `epoch`/`eta`)
- `Step 00250 | Validation bpb: 0.912345` (4 decimals in older versions)
- `Step 05000 | CORE metric: 0.2612`, and base_eval's bare `CORE metric: 0.2612`
- after training: `Peak memory usage: 75042.13MiB`, `Total training time: 182.48m`, `Minimum validation bpb: 0.7412`
- wandb's run summary, when wandb was on: `wandb:          core_metric 0.25851`, `wandb:  total_training_time 10949.46`

The run is complete once `Total training time:` is printed (the training loop ended). The official metric is the
last CORE metric (the leaderboard target is CORE > 0.256525); the time is the training time (seconds, first 10
steps excluded by nanochat itself).
"""

from __future__ import annotations

import re

from ._common import EnvSniffer, ExternalParsedRun, SeriesBuffer, clean_line, to_float
from .base import LogAdapter, LogStream, MetricPoint

NAME = "nanochat"

_NUM = r"[-+]?(?:\d[\d,]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|-?inf"
_TRAIN = re.compile(r"^step (?P<step>\d+)/(?P<total>\d+) \((?P<pct>[\d.]+)%\) \| (?P<rest>.*)$")
_PART = re.compile(r"^(?P<key>[A-Za-z][\w/ ]*?):\s*(?P<value>.*)$")
_VAL = re.compile(rf"^Step (?P<step>\d+) \| Validation bpb: (?P<bpb>{_NUM})")
_CORE_STEP = re.compile(rf"^Step (?P<step>\d+) \| CORE metric: (?P<core>{_NUM})")
_CORE = re.compile(rf"^CORE metric: (?P<core>{_NUM})")
_GPU = re.compile(r"^GPU: (?P<name>.+?) \| Peak FLOPS")
_WORLD = re.compile(r"Distributed world size: (?P<ws>\d+)")
_ITERS = re.compile(r"^(?:Using user-provided number of iterations|Calculated number of iterations from [^:]+): (?P<n>[\d,]+)")
_PEAK = re.compile(rf"^Peak memory usage: (?P<mib>{_NUM}) ?MiB")
_TOTAL_TIME = re.compile(rf"^Total training time: (?P<min>{_NUM})m")
_MIN_BPB = re.compile(rf"^Minimum validation bpb: (?P<bpb>{_NUM})")
_WANDB = re.compile(rf"^wandb:\s+(?P<key>\w+) (?P<value>{_NUM})\s*$")

_PART_KEYS = {"loss": "train_loss", "grad norm": "grad_norm", "lrm": "lrm", "dt": "dt_ms", "tok/sec": "tok_per_sec",
              "mfu": "mfu", "bf16_mfu": "mfu", "total time": "total_time_min", "eta": "eta_min", "epoch": "epoch"}


def _unit_number(text: str) -> float | None:
    text = text.strip()
    for suffix in ("ms", "m"):
        if text.endswith(suffix):
            return to_float(text[: -len(suffix)])
    return to_float(text.split()[0] if text else text)


class NanochatStream(LogStream):
    def __init__(self) -> None:
        self.env = EnvSniffer()
        self.series = SeriesBuffer()
        self.num_iterations: int | None = None
        self.core: float | None = None
        self.core_step: int | None = None
        self.last_val: MetricPoint | None = None
        self.peak_mib: float | None = None
        self.total_time_min: float | None = None
        self.min_bpb: float | None = None
        self.wandb: dict[str, float] = {}
        self.dt_sum = 0.0
        self.dt_n = 0

    def feed(self, line: str) -> list[MetricPoint]:
        line = clean_line(line)
        if not line:
            return []
        first = line[0]
        if first == "s" and line.startswith("step "):
            return self._train(line)
        if first == "S" and line.startswith("Step "):
            if m := _VAL.match(line):
                point = MetricPoint(step=int(m["step"]), kind="val", total_steps=self.num_iterations,
                                    extra={"val_bpb": v} if (v := to_float(m["bpb"])) is not None else {})
                self.last_val = point
                self.series.add(point)
                return [point]
            if m := _CORE_STEP.match(line):
                self.core, self.core_step = to_float(m["core"]), int(m["step"])
            return []
        if m := _CORE.match(line):
            self.core = to_float(m["core"])
        elif m := _GPU.match(line):
            self.env.gpu_name = m["name"].strip()
        elif m := _WORLD.search(line):
            self.env.world_size = int(m["ws"])
        elif m := _ITERS.match(line):
            self.num_iterations = int(m["n"].replace(",", ""))
        elif m := _PEAK.match(line):
            self.peak_mib = to_float(m["mib"])
        elif m := _TOTAL_TIME.match(line):
            self.total_time_min = to_float(m["min"])
        elif m := _MIN_BPB.match(line):
            self.min_bpb = to_float(m["bpb"])
        elif line.startswith("wandb:") and (m := _WANDB.match(line)):
            if (value := to_float(m["value"])) is not None:
                self.wandb[m["key"]] = value
        else:
            self.env.feed(line)
        return []

    def _train(self, line: str) -> list[MetricPoint]:
        match = _TRAIN.match(line)
        if not match:
            return []
        values: dict[str, float] = {"pct_done": float(match["pct"])}
        for part in match["rest"].split("|"):
            part_match = _PART.match(part.strip())
            if not part_match:
                continue
            key = _PART_KEYS.get(part_match["key"].strip())
            if key is None:
                continue
            number = _unit_number(part_match["value"])
            if number is not None:
                values[key] = number
        step, total = int(match["step"]), int(match["total"])
        if self.num_iterations is None:
            self.num_iterations = total
        dt = values.get("dt_ms")
        if dt is not None and step > 10:  # nanochat's own total time leaves out the first 10 steps
            self.dt_sum += dt
            self.dt_n += 1
        total_min = values.pop("total_time_min", None)
        point = MetricPoint(
            step=step,
            kind="train",
            total_steps=total,
            train_loss=values.pop("train_loss", None),
            train_time_ms=total_min * 60_000.0 if total_min is not None else None,
            step_avg_ms=dt,
            extra=values,
        )
        self.series.add(point)
        return [point]

    def finish(self) -> ExternalParsedRun:
        run = ExternalParsedRun(format=NAME, complete=False, official_metric="core_metric")
        run.points = self.series.points()
        run.series_decimated = self.series.decimated
        self.env.apply(run)
        m = run.metrics
        if self.peak_mib is not None:
            m["peak_memory_mib"] = self.peak_mib
        if self.core is not None:
            m["core_metric"] = self.core
        elif "core_metric" in self.wandb:
            m["core_metric"] = self.wandb["core_metric"]
        if self.last_val is not None and "val_bpb" in self.last_val.extra:
            m["val_bpb"] = self.last_val.extra["val_bpb"]
        if self.min_bpb is not None:
            m["min_val_bpb"] = self.min_bpb
        if self.dt_n:
            m["step_avg_ms"] = self.dt_sum / self.dt_n
        train_time_ms = None
        if "total_training_time" in self.wandb:
            train_time_ms = self.wandb["total_training_time"] * 1000.0  # seconds, more digits than the `m` line
        elif self.total_time_min is not None:
            train_time_ms = self.total_time_min * 60_000.0
        else:
            last = self.series.last_any()
            if last is not None and last.train_time_ms is not None:
                train_time_ms = last.train_time_ms
        if train_time_ms is not None:
            m["train_time_ms"] = train_time_ms
            m["train_time_s"] = train_time_ms / 1000.0

        last = self.series.last_any()
        run.total_steps = self.num_iterations
        if self.total_time_min is not None or "total_training_time" in self.wandb:
            run.complete = True
            run.exit_reason = "completed"
            run.final_step = self.num_iterations if self.num_iterations is not None else (last.step if last else None)
            if run.final_step is not None:
                m["steps"] = float(run.final_step)
            if "core_metric" not in m:
                run.notes["official"] = (
                    "no CORE metric line: the run finished but CORE was not evaluated "
                    "(pass --core-metric-every, or run scripts.base_eval and parse its output)"
                )
            return run
        run.exit_reason = "incomplete"
        run.final_step = last.step if last else None
        if last is None:
            run.reason = "no nanochat training lines (step NNNNN/NNNNN (..%) | loss: ...) found in the log"
        else:
            run.reason = (
                f"no 'Total training time:' line: the log ends at step {last.step}/{self.num_iterations}, "
                "before nanochat's training loop finished"
            )
        return run


_LOG_EVIDENCE = re.compile(
    r"^(?:step \d{5,}/\d{5,} \(\d|Step \d{5,} \| (?:Validation bpb|CORE metric):|GPU: .* \| Peak FLOPS)", re.M
)


class NanochatAdapter(LogAdapter):
    name = NAME
    metrics = frozenset(
        {"core_metric", "val_bpb", "min_val_bpb", "train_time_ms", "train_time_s", "step_avg_ms", "peak_memory_mib",
         "steps"}
    )
    official_metric = "core_metric"

    def sniff(self, head: str) -> float:
        if "\n@@metrics " in "\n" + head:
            return 0.0
        if _LOG_EVIDENCE.search(head):
            return 0.95
        if "CORE metric:" in head or "Total training time:" in head and "Minimum validation bpb" in head:
            return 0.6
        if "nanochat" in head:
            return 0.3
        return 0.0

    def stream(self) -> NanochatStream:
        return NanochatStream()
