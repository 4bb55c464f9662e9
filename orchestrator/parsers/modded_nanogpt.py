"""Log adapter for KellerJordan/modded-nanogpt, every era of it.

Line shapes handled (column 0, after the script source that every log since 2024-10 begins with):

- llm.c era (2024-05/06): `s:N tel:X` (validation loss), `s:N trl:X [lr:.. norm:..]` (training loss). No total
  step count is printed; the run is complete when its last line is a `tel` line past every training step
  (llm.c evaluates once more at the last step and stops).
- 2024 PyTorch era: `step:S/T val_loss:X train_time:Nms step_avg:nanms`, `step:S/T train_loss:X train_time:..`
  (`step_avg:nanms` for the first steps reads as "no value").
- 2024-12 onward: `step:S/T train_time:Nms step_avg:Mms` (no train loss), track 2 prints val_loss with 6
  decimals, track 3 prints `train_time:739.639s` in seconds and extra fields (`val_ema_loss:..`, `ema_beta:..`,
  `handoff:none`): numeric ones land in MetricPoint.extra.
- `peak memory consumption: N MiB` (2024) and `peak memory allocated: N MiB reserved: M MiB` (2025+).
- `Running PyTorch X compiled for CUDA Y`, `Running Python ...`, `Running Triton version ...`,
  `Running on device_name=... with world_size=N` (track 3), and the nvidia-smi table.

The official result is the last `step:T/T val_loss:X` line (step == total steps); a log without one is
incomplete, except on track 3 (the optimization benchmark, which counts steps, not time, and prints `train_time`
in seconds): there a submission picks its step count and may stop the loop there on purpose (e.g. at 2925 of a
3020-step schedule, `results/20260520_rre_extrapolation_pr300_2925/README.md`), so a track-3 log that ends on a
validation line, with no training step after it, is complete at that step: `exit_reason: early_exit`,
official val_loss from that line.
"""

from __future__ import annotations

import re

from ._common import (
    EnvSniffer,
    ExternalParsedRun,
    SeriesBuffer,
    SourceSkipper,
    clean_line,
    duration_ms,
    match_peak_memory,
    parse_fields,
    to_float,
)
from .base import LogAdapter, LogStream, MetricPoint

NAME = "modded-nanogpt"

_STEP = re.compile(r"^step:(?P<step>\d+)/(?P<total>\d+) (?P<fields>[A-Za-z_].*)$")
_LLMC = re.compile(r"^s:(?P<step>\d+) (?P<kind>tel|trl):(?P<value>[-+0-9.eE]+|nan|-?inf)(?P<rest>.*)$")
_KNOWN = {"val_loss", "train_loss", "train_time", "step_avg"}


#: a line only a log holds (real numbers where the script's source has `{...}` placeholders)
_LOG_EVIDENCE_LINE = re.compile(r"^(?:step:\d+/\d+ (?:val_loss|train_loss|train_time):\d|s:\d+ t[er]l:\d)")


class ModdedNanoGPTStream(LogStream):
    def __init__(self) -> None:
        self.skipper = SourceSkipper(_LOG_EVIDENCE_LINE)
        self.env = EnvSniffer()
        self.series = SeriesBuffer()
        self.final: MetricPoint | None = None  # the last step:T/T val_loss line
        self.peak_mib: float | None = None
        self.peak_reserved_mib: float | None = None
        self.llmc = False
        self.llmc_last_val: MetricPoint | None = None
        self.llmc_max_train_step = -1
        self.log_lines = 0
        self.seconds_clock = False  # train_time printed in seconds (track 3)

    # -- lines -------------------------------------------------------------------------------------------
    def feed(self, line: str) -> list[MetricPoint]:
        line = clean_line(line)
        if not self.skipper.is_log(line):
            return []
        self.log_lines += 1
        if line.startswith("step:"):
            return self._step_line(line)
        if line.startswith("s:"):
            return self._llmc_line(line)
        peak = match_peak_memory(line)
        if peak is not None:
            self.peak_mib, self.peak_reserved_mib = peak
            return []
        self.env.feed(line)
        return []

    def _step_line(self, line: str) -> list[MetricPoint]:
        match = _STEP.match(line)
        if not match:
            return []
        fields = parse_fields(match["fields"])
        if not fields.keys() & {"val_loss", "train_loss", "train_time"}:
            return []
        step, total = int(match["step"]), int(match["total"])
        extra = {}
        for key, value in fields.items():
            if key in _KNOWN:
                continue
            number = to_float(value)
            if number is not None:
                extra[key] = number
        is_val = "val_loss" in fields
        if not self.seconds_clock and "train_time" in fields:
            clock = fields["train_time"]
            self.seconds_clock = clock.endswith("s") and not clock.endswith("ms")
        point = MetricPoint(
            step=step,
            kind="val" if is_val else "train",
            total_steps=total,
            val_loss=to_float(fields.get("val_loss")),
            train_loss=to_float(fields.get("train_loss")),
            train_time_ms=duration_ms(fields["train_time"]) if "train_time" in fields else None,
            step_avg_ms=duration_ms(fields["step_avg"]) if "step_avg" in fields else None,
            extra=extra,
        )
        self.series.add(point)
        if is_val and step == total:
            self.final = point
        return [point]

    def _llmc_line(self, line: str) -> list[MetricPoint]:
        match = _LLMC.match(line)
        if not match:
            return []
        self.llmc = True
        step = int(match["step"])
        value = to_float(match["value"])
        extra = {k: v for k, v in ((k, to_float(s)) for k, s in parse_fields(match["rest"]).items()) if v is not None}
        if match["kind"] == "tel":
            point = MetricPoint(step=step, kind="val", val_loss=value, extra=extra)
            self.llmc_last_val = point
        else:
            point = MetricPoint(step=step, kind="train", train_loss=value, extra=extra)
            self.llmc_max_train_step = max(self.llmc_max_train_step, step)
        self.series.add(point)
        return [point]

    # -- outcome -----------------------------------------------------------------------------------------
    def finish(self) -> ExternalParsedRun:
        run = ExternalParsedRun(format=NAME, complete=False, official_metric="val_loss")
        run.points = self.series.points()
        run.series_decimated = self.series.decimated
        self.env.apply(run)
        if self.peak_mib is not None:
            run.metrics["peak_memory_mib"] = self.peak_mib
        if self.peak_reserved_mib is not None:
            run.metrics["peak_memory_reserved_mib"] = self.peak_reserved_mib

        final = self.final
        if final is None and self.llmc and self.llmc_last_val is not None:
            # llm.c: the last-step evaluation comes after every training step
            if self.llmc_last_val.step > self.llmc_max_train_step:
                final = self.llmc_last_val
                final.total_steps = final.step
        if final is not None:
            run.complete = True
            run.exit_reason = "completed"
            self._take(run, final)
            return run

        run.exit_reason = "incomplete"
        last = self.series.last_any()
        if last is not None:
            run.final_step, run.total_steps = last.step, last.total_steps
            last_val = self.series.last_val()
            if last_val is not None and last_val.val_loss is not None:
                run.metrics["val_loss"] = last_val.val_loss  # the latest seen, not an official result
            if last.train_time_ms is not None:
                run.metrics["train_time_ms"] = last.train_time_ms
                run.metrics["train_time_s"] = last.train_time_ms / 1000.0
            if last.step_avg_ms is not None:
                run.metrics["step_avg_ms"] = last.step_avg_ms
        if self.skipper.unterminated_source:
            run.reason = (
                "the log holds only the script source (no '=====' separator line after it), no log lines were read"
            )
        elif last is None:
            run.reason = "no step lines (step:S/T ... or s:N tel:) found in the log"
        elif self.llmc:
            run.reason = f"llm.c log ends at step {last.step} without a final validation (tel) line"
        elif (last.kind == "val" and last.total_steps is not None and last.step < last.total_steps
              and self.seconds_clock):
            # track 3: the submission stops the loop at the step count it submits (below the schedule's total)
            run.complete = True
            run.exit_reason = "early_exit"
            total = last.total_steps
            self._take(run, last)
            run.total_steps = total
            run.notes["early_exit"] = (
                f"track 3: stopped at step {last.step} of a {total}-step schedule; the outcome is the validation "
                "at that step")
            return run
        elif last.kind == "val" and last.total_steps is not None and last.step < last.total_steps:
            # a track 1/2 log cut after a validation: the record needs the final step:T/T line
            run.exit_reason = "early_exit"
            run.reason = (
                f"the log ends with a validation line at step {last.step}/{last.total_steps} (an early exit or a "
                f"run cut off after an eval): no final step:{last.total_steps}/{last.total_steps} val_loss:... line"
            )
        else:
            total = last.total_steps
            run.reason = (
                f"no final validation line step:{total}/{total} val_loss:... "
                f"(the log ends at step {last.step}/{total}; the run did not finish or its last eval was cut off)"
            )
        return run

    @staticmethod
    def _take(run: ExternalParsedRun, final: MetricPoint) -> None:
        run.final_step = final.step
        run.total_steps = final.total_steps
        run.metrics["steps"] = float(final.step)
        if final.val_loss is not None:
            run.metrics["val_loss"] = final.val_loss
        if final.train_time_ms is not None:
            run.metrics["train_time_ms"] = final.train_time_ms
            run.metrics["train_time_s"] = final.train_time_ms / 1000.0
        if final.step_avg_ms is not None:
            run.metrics["step_avg_ms"] = final.step_avg_ms
        for key, value in final.extra.items():
            run.metrics.setdefault(key, value)


_LOG_EVIDENCE = re.compile(r"^(?:step:\d+/\d+ (?:val_loss|train_loss|train_time):|s:\d+ t[er]l:)", re.M)
_CODE_EVIDENCE = re.compile(r"step:\{[^}]*\}/\{[^}]*\} val_loss:\{")


class ModdedNanoGPTAdapter(LogAdapter):
    name = NAME
    metrics = frozenset(
        {"val_loss", "train_time_ms", "train_time_s", "step_avg_ms", "peak_memory_mib", "peak_memory_reserved_mib",
         "steps"}
    )
    official_metric = "val_loss"

    def sniff(self, head: str) -> float:
        if "\n@@metrics " in "\n" + head:
            return 0.0  # this project's own trainer
        if "val_bpb" in head:
            return 0.1  # parameter-golf prints the same step lines plus val_bpb
        if _LOG_EVIDENCE.search(head):
            return 0.9
        if _CODE_EVIDENCE.search(head):
            return 0.6  # the head is all script source, whose print format gives it away
        return 0.0

    def stream(self) -> ModdedNanoGPTStream:
        return ModdedNanoGPTStream()
