"""The log-adapter plug-in interface: turn a training log, line by line, into metric points and an outcome.

An adapter knows one trainer's log format. The controller feeds it every line of a running job
(`LogStream.feed`), stores the metric points it returns while the run goes, and calls
`LogStream.finish` once the job has ended to get the run's final `ParsedRun`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Mapping


@dataclass
class MetricPoint:
    """One point of a run's step series (a validation or a training-loss line)."""

    step: int
    kind: str = "val"  # "val" or "train"
    total_steps: int | None = None
    val_loss: float | None = None
    train_loss: float | None = None
    train_time_ms: float | None = None
    step_avg_ms: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class ParsedRun:
    """What a whole log says: the final outcome, the series, and the environment it ran in."""

    format: str
    complete: bool
    reason: str | None = None  # why the run is incomplete, when it is
    final_step: int | None = None
    total_steps: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. val_loss, train_time_ms, train_time_s
    exit_reason: str | None = None  # completed | early_exit | diverged | error | ...
    gpu_name: str | None = None
    gpu_count: int | None = None
    versions: dict[str, str] = field(default_factory=dict)  # torch, cuda, triton, python, ...
    points: list[MetricPoint] = field(default_factory=list)
    error: str | None = None  # the last exception the job printed (any trainer: see ErrorWatch)


class LogStream:
    """Incremental parser state for one log. Subclasses override `feed` and `finish`."""

    def feed(self, line: str) -> list[MetricPoint]:
        raise NotImplementedError

    def finish(self) -> ParsedRun:
        raise NotImplementedError


#: the last line of a Python traceback, as any trainer prints it (torchrun prefixes each rank's lines `[rankN]:`)
_EXCEPTION = re.compile(r"^(?P<rank>\[rank\d+\]:\s*)?(?P<error>(?:[A-Za-z_]\w*\.)*(?:[A-Za-z_]\w*(?:Error|Exception)|"
                        r"StopIteration|KeyboardInterrupt|SystemExit)(?::\s.*)?)$")
_CHAINED = ("During handling of the above exception", "The above exception was the direct cause")
#: the launcher's own wrapper of a rank's failure: says nothing the rank's error does not
_WRAPPERS = ("ChildFailedError",)


class ErrorWatch(LogStream):
    """Any adapter's stream, also watching for the exception the job printed last (whatever the trainer), so that a
    crashed trial says why: `ParsedRun.error` is that exception line, with the one it was raised while handling."""

    def __init__(self, inner: LogStream, limit: int = 300) -> None:
        self.inner, self.limit = inner, limit
        self._errors: list[tuple[str, bool, bool]] = []  # (error line, from a rank, raised while handling the last)
        self._chained = False

    def feed(self, line: str) -> list[MetricPoint]:
        text = line.rstrip("\r\n")
        if any(mark in text for mark in _CHAINED):
            self._chained = True
        elif len(text) < 4000:
            match = _EXCEPTION.match(text.strip())
            if match:
                error = match["error"].strip()
                self._errors = (self._errors + [(error, bool(match["rank"]), self._chained)])[-8:]
                self._chained = False
        return self.inner.feed(line)

    def finish(self) -> ParsedRun:
        run = self.inner.finish()
        run.error = self.summary()
        return run

    def summary(self) -> str | None:
        errors = [e for e in self._errors if e[1]] or self._errors  # a rank's own, where torchrun prefixed them
        errors = [e for e in errors if not e[0].split(":")[0].endswith(_WRAPPERS)] or errors
        if not errors:
            return None
        last, _, chained = errors[-1]
        text = self._cut(last)
        if chained and len(errors) > 1:
            text += f" (raised while handling {self._cut(errors[-2][0])})"
        return text

    def _cut(self, text: str) -> str:
        return text if len(text) <= self.limit else text[: self.limit - 3] + "..."


class LogAdapter:
    """One trainer's log format. Register instances in `orchestrator.parsers.registry`."""

    name: ClassVar[str]
    #: metric names this format can report in ParsedRun.metrics (study objectives are checked against it)
    metrics: ClassVar[frozenset[str]]

    #: the options a study may set for this format (`trainer.log_options`); see `configure`
    options: ClassVar[frozenset[str]] = frozenset()

    def configure(self, options: Mapping[str, Any] | None) -> "LogAdapter":
        """This adapter with `options` applied (a new instance; the registry's stays as it is). Raises ValueError
        naming an option this format does not take, or a bad value."""
        if not options:
            return self
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise ValueError(f"log format {self.name!r} takes no option {', '.join(map(repr, unknown))} (its options: {known})")
        return self._configured(dict(options))

    def _configured(self, options: dict[str, Any]) -> "LogAdapter":  # pragma: no cover - only with options
        raise NotImplementedError

    def sniff(self, head: str) -> float:
        """Confidence in [0, 1] that `head` (the first ~64 KiB of a log) is in this format."""
        raise NotImplementedError

    def stream(self) -> LogStream:
        raise NotImplementedError

    def watch(self) -> ErrorWatch:
        """This format's stream, watched for the job's last exception (what the controller and recovery read)."""
        return ErrorWatch(self.stream())

    def parse_lines(self, lines: Iterable[str]) -> ParsedRun:
        """Parse a whole log (any iterable of lines, so a large file streams in bounded memory)."""
        stream = self.watch()
        for line in lines:
            stream.feed(line)
        return stream.finish()
