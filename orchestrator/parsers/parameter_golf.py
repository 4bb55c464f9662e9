"""Log adapter for openai/parameter-golf (16 MB artifact, 10 minutes on 8xH100, scored by val_bpb).

Two eras of line shapes, both handled (optionally after an epoch-seconds prefix such as `1776142348.135 `):

- era A (`key:value`): `step:S/T val_loss:X val_bpb:Y train_time:Nms step_avg:Mms`,
  `step:S/T train_loss:X train_time:Nms step_avg:Mms`, `world_size:8 grad_accum_steps:1`.
- era B (`key: value`): `S/T val_loss: X val_bpb: Y`, `S/T train_loss: X train_time: 0.8m tok/s: N`,
  a `Hyperparameters:` block of `  key: value` lines (`  world_size: 8`).
- both: `stopping_early: wallclock_cap train_time:600038ms step:13780/20000` (era B with spaces), the
  peak-memory line, `Total submission size ...: N bytes` (the artifact size; the last one printed is the
  compressed artifact), and any number of *scored lines* after training: `LABEL val_loss:X val_bpb:Y [...]`
  (`final_int8_zlib_roundtrip_exact`, `quantized_ttt_phased`, `legal_ttt_exact`, ...; `=` works too).

The official score (`choose_score`) is the track's: the evaluation of the round-tripped (quantized,
compressed) artifact that the submission reports. Every scored line is kept; those that are not a score of the
artifact are set aside: `diagnostic ...` / `DIAGNOSTIC ...` lines, pre-quantization evaluations
(`pre-quantization post-ema`), differences (`roundtrip_delta`, `..._gap`), and a rounded copy of a line that is
also printed with more digits (`final_int8_zlib_roundtrip` beside `..._exact`, `ttt_sliding:done` beside
`legal_ttt_exact`). Of the rest, the lowest val_bpb is the score: a submission may evaluate its artifact several
ways (roundtrip, sliding window, score-first TTT) and reports the best legal one, so a worse evaluation printed
after it (a TTT diagnostic at 1.336 after a sliding-window 1.0894) is not the score. A script that prints its own
score line names it with the `score_label` option (adapter option, `get_adapter("parameter-golf", {"score_label": LABEL})`; `LABEL`
or `LABEL_exact`, the last one printed). The chosen label is `official_label`; `notes["scored_lines"]` lists the
others. A log with no scored line is incomplete.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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

MAX_SCORED_LINES = 10_000  # kept per log (a log prints a handful)

NAME = "parameter-golf"

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|-?inf"
_STEP_A = re.compile(r"^step:(?P<step>\d+)/(?P<total>\d+) (?P<fields>[A-Za-z_].*)$")
_STEP_B = re.compile(r"^(?P<step>\d+)/(?P<total>\d+) (?P<fields>[A-Za-z_]\w*: .*)$")
_SCORED = re.compile(
    rf"^(?P<label>[A-Za-z].*?)\s+val_loss[:=]\s*(?P<loss>{_NUM})[\s,]+val_bpb[:=]\s*(?P<bpb>{_NUM})(?![\w.])"
)
_STOP = re.compile(r"^stopping_early: (?P<why>\S+)(?P<rest>.*)$")
_STOP_STEP = re.compile(r"step:\s*(?P<step>\d+)/(?P<total>\d+)")
_SIZE = re.compile(r"^Total submission size(?P<label>[^:]*): (?P<bytes>\d+) bytes")
_CODE_SIZE = re.compile(r"^Code size: (?P<bytes>\d+) bytes")
_KNOWN = {"val_loss", "val_bpb", "train_loss", "train_time", "step_avg"}


_NOT_A_SCORE = re.compile(r"(?i)diagnostic|pre[-_ ]?quant|prequant|delta|_gap\b|\bgap\b|\bdiff")
_STRICT_EVIDENCE = re.compile(
    r"^(?:step:\d+/\d+ (?:val_loss|train_loss|train_time):\s*\d|\d+/\d+ (?:val|train)_loss: \d"
    r"|stopping_early: wallclock_cap train_time:\s*\d"
    rf"|[A-Za-z][\w-]*(?: [\w-]+)? val_loss[:=]\s*\d[\d.]*[\s,]+val_bpb[:=]\s*\d)"
)


@dataclass(frozen=True)
class ScoredLine:
    label: str
    val_loss: float | None
    val_bpb: float | None
    decimals: int  # digits printed after the point of val_bpb
    order: int  # position among the scored lines


def _decimals(text: str) -> int:
    return len(text.split(".", 1)[1]) if "." in text and "e" not in text.lower() else 0


def choose_score(lines: list[ScoredLine], score_label: str | None = None) -> tuple[ScoredLine | None, str]:
    """The official score of a parameter-golf log among its scored lines, and how it was chosen (see the module
    docstring). With `score_label`, the last line labelled `score_label` or `score_label + "_exact"` (the exact one
    preferred); None when there is none."""
    if score_label:
        named = [s for s in lines if s.label in (score_label, score_label + "_exact")]
        if not named:
            return None, f"no scored line labelled {score_label!r} (score_label)"
        exact = [s for s in named if s.label.endswith("_exact")] if not score_label.endswith("_exact") else []
        return (exact or named)[-1], f"the last {score_label!r} line (score_label)"
    kept = [s for s in lines if s.val_bpb is not None and not _NOT_A_SCORE.search(s.label)]
    labels = {s.label for s in kept}
    kept = [s for s in kept if not (s.label + "_exact") in labels]  # the `_exact` twin has more digits
    precise = []
    for s in kept:  # a rounded copy of another line (`ttt_sliding:done val_bpb=1.336032` beside `..._ttt 1.33603200`)
        if any(o is not s and o.decimals > s.decimals and o.val_bpb is not None
               and abs(round(o.val_bpb, s.decimals) - s.val_bpb) < 0.5 * 10 ** -s.decimals for o in kept):
            continue
        precise.append(s)
    if not precise:
        return None, "no scored line of the quantized artifact (only diagnostics, pre-quantization or deltas)"
    best = min(precise, key=lambda s: (s.val_bpb, -s.order))
    how = "the only evaluation of the artifact" if len(precise) == 1 else (
        f"the lowest val_bpb of {len(precise)} evaluations of the artifact")
    return best, how


class ParameterGolfStream(LogStream):
    def __init__(self, score_label: str | None = None) -> None:
        self.score_label = score_label
        self.skipper = SourceSkipper(_STRICT_EVIDENCE)
        self.env = EnvSniffer()
        self.series = SeriesBuffer()
        self.scored: list[ScoredLine] = []
        self.scored_count = 0
        self.stop: tuple[str, int | None, int | None, float | None] | None = None
        self.peak: tuple[float, float | None] | None = None
        self.artifact_bytes: int | None = None
        self.code_bytes: int | None = None
        self.last_train_time_ms: float | None = None

    def feed(self, line: str) -> list[MetricPoint]:
        line = clean_line(line)
        if not self.skipper.is_log(line):
            return []
        if not line or line[0] in " \t":
            if "world_size" in line:
                self.env.feed(line)  # era B hyperparameter block
            return []
        head = line[0]
        if head == "s" and line.startswith("step:"):
            match = _STEP_A.match(line)
            return self._step(match) if match else []
        if head.isdigit():
            match = _STEP_B.match(line)
            return self._step(match) if match else []
        if "val_bpb" in line and "val_loss" in line:
            match = _SCORED.match(line)
            if match:
                label = match["label"].strip()
                if len(self.scored) < MAX_SCORED_LINES:
                    self.scored.append(ScoredLine(label, to_float(match["loss"]), to_float(match["bpb"]),
                                                  _decimals(match["bpb"]), self.scored_count))
                self.scored_count += 1
                return []
        if line.startswith("stopping_early"):
            match = _STOP.match(line)
            if match:
                fields = parse_fields(match["rest"])
                step = _STOP_STEP.search(match["rest"])
                time_ms = duration_ms(fields["train_time"]) if "train_time" in fields else None
                self.stop = (
                    match["why"],
                    int(step["step"]) if step else None,
                    int(step["total"]) if step else None,
                    time_ms,
                )
            return []
        if line.startswith("peak memory"):
            self.peak = match_peak_memory(line) or self.peak
            return []
        if line.startswith("Total submission size"):
            match = _SIZE.match(line)
            if match:
                self.artifact_bytes = int(match["bytes"])
            return []
        if line.startswith("Code size"):
            match = _CODE_SIZE.match(line)
            if match:
                self.code_bytes = int(match["bytes"])
            return []
        self.env.feed(line)
        return []

    def _step(self, match: re.Match) -> list[MetricPoint]:
        fields = parse_fields(match["fields"])
        if not fields.keys() & {"val_loss", "train_loss", "train_time"}:
            return []
        extra: dict[str, float] = {}
        for key, value in fields.items():
            if key not in _KNOWN and (number := to_float(value)) is not None:
                extra[key] = number
        if "val_bpb" in fields and (bpb := to_float(fields["val_bpb"])) is not None:
            extra["val_bpb"] = bpb
        is_val = "val_loss" in fields
        point = MetricPoint(
            step=int(match["step"]),
            kind="val" if is_val else "train",
            total_steps=int(match["total"]),
            val_loss=to_float(fields.get("val_loss")),
            train_loss=to_float(fields.get("train_loss")),
            train_time_ms=duration_ms(fields["train_time"]) if "train_time" in fields else None,
            step_avg_ms=duration_ms(fields["step_avg"]) if "step_avg" in fields else None,
            extra=extra,
        )
        if point.train_time_ms is not None:
            self.last_train_time_ms = point.train_time_ms
        self.series.add(point)
        return [point]

    def finish(self) -> ExternalParsedRun:
        run = ExternalParsedRun(format=NAME, complete=False, official_metric="val_bpb")
        run.points = self.series.points()
        run.series_decimated = self.series.decimated
        self.env.apply(run)
        m = run.metrics
        if self.peak is not None:
            m["peak_memory_mib"] = self.peak[0]
            if self.peak[1] is not None:
                m["peak_memory_reserved_mib"] = self.peak[1]
        if self.artifact_bytes is not None:
            m["artifact_bytes"] = float(self.artifact_bytes)
        if self.code_bytes is not None:
            m["code_bytes"] = float(self.code_bytes)

        # training end: the stopping_early line, else the last step line
        last = self.series.last_any()
        last_val = self.series.last_val()
        if last is not None:
            run.final_step, run.total_steps = last.step, last.total_steps
        train_time = self.last_train_time_ms
        if last_val is not None and last_val.train_time_ms is not None:
            train_time = last_val.train_time_ms if train_time is None else max(train_time, last_val.train_time_ms)
        if last_val is not None and last_val.step_avg_ms is not None:
            m["step_avg_ms"] = last_val.step_avg_ms
        elif last is not None and last.step_avg_ms is not None:
            m["step_avg_ms"] = last.step_avg_ms
        if self.stop is not None:
            why, step, total, time_ms = self.stop
            run.exit_reason = why  # wallclock_cap
            if step is not None:
                run.final_step, run.total_steps = step, total
            if time_ms is not None:
                train_time = time_ms
        if train_time is not None:
            m["train_time_ms"] = train_time
            m["train_time_s"] = train_time / 1000.0
        if run.final_step is not None:
            m["steps"] = float(run.final_step)
        if last_val is not None:
            if last_val.val_loss is not None:
                m["prequant_val_loss"] = last_val.val_loss
            if "val_bpb" in last_val.extra:
                m["prequant_val_bpb"] = last_val.extra["val_bpb"]

        chosen, how = choose_score(self.scored, self.score_label) if self.scored else (None, "")
        if self.scored:
            run.notes["score"] = how
            run.notes["scored_lines"] = "; ".join(
                f"{s.label}={s.val_bpb}" for s in self.scored[-20:])
        if chosen is not None:
            label, loss, bpb = chosen.label, chosen.val_loss, chosen.val_bpb
            run.complete = True
            run.exit_reason = run.exit_reason or "completed"
            run.official_label = label
            if last is None:
                run.notes["training"] = "no training step lines: an evaluation-only run (e.g. TTT_EVAL_ONLY=1)"
            if loss is not None:
                m["val_loss"] = loss
            if bpb is not None:
                m["val_bpb"] = bpb
            return run

        if last_val is not None:  # the latest seen, not an official score
            if last_val.val_loss is not None:
                m["val_loss"] = last_val.val_loss
            if "val_bpb" in last_val.extra:
                m["val_bpb"] = last_val.extra["val_bpb"]
        run.exit_reason = run.exit_reason or "incomplete"
        if self.scored:
            run.reason = f"the log's scored lines hold no official score: {how}"
        elif self.skipper.unterminated_source:
            run.reason = "the log holds only the script source (no '=====' separator after it), no log lines were read"
        elif last is None:
            run.reason = "no step lines (step:S/T ... or S/T val_loss: ...) found in the log"
        elif self.stop is not None or (last_val is not None and last_val.step == last_val.total_steps):
            run.reason = (
                f"training ended at step {run.final_step}/{run.total_steps} but the log has no scored line "
                "(LABEL val_loss:X val_bpb:Y, e.g. final_int8_zlib_roundtrip_exact) after it"
            )
        else:
            run.reason = (
                f"the log ends at step {run.final_step}/{run.total_steps}, before training finished "
                "and before any scored line (LABEL val_loss:X val_bpb:Y)"
            )
        return run


_LOG_EVIDENCE = re.compile(
    r"^(?:\d{9,10}\.\d+ )?(?:step:\d+/\d+ .*val_bpb:|\d+/\d+ (?:val|train)_loss: |stopping_early: wallclock_cap"
    r"|Total submission size|val_bpb:enabled|final_int8_zlib_roundtrip)",
    re.M,
)


class ParameterGolfAdapter(LogAdapter):
    name = NAME
    metrics = frozenset(
        {"val_loss", "val_bpb", "prequant_val_loss", "prequant_val_bpb", "train_time_ms", "train_time_s",
         "step_avg_ms", "peak_memory_mib", "peak_memory_reserved_mib", "artifact_bytes", "code_bytes", "steps"}
    )
    official_metric = "val_bpb"
    options = frozenset({"score_label"})

    def __init__(self, score_label: str | None = None) -> None:
        self.score_label = score_label

    def _configured(self, options: dict) -> "ParameterGolfAdapter":
        label = options.get("score_label")
        if label is not None and (not isinstance(label, str) or not label.strip() or "\n" in label):
            raise ValueError(f"score_label must be the label of a scored line (text), got {label!r}")
        return ParameterGolfAdapter(score_label=label.strip() if label else None)

    def sniff(self, head: str) -> float:
        if "\n@@metrics " in "\n" + head:
            return 0.0
        if _LOG_EVIDENCE.search(head):
            return 0.95
        if "val_bpb" in head:
            return 0.7  # source code of a parameter-golf script (it always computes val_bpb)
        return 0.0

    def stream(self) -> ParameterGolfStream:
        return ParameterGolfStream(self.score_label)
