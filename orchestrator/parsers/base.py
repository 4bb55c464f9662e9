"""The log-adapter plug-in interface: turn a training log, line by line, into metric points and an outcome.

An adapter knows one trainer's log format. The controller feeds it every line of a running job
(`LogStream.feed`), stores the metric points it returns while the run goes, and calls
`LogStream.finish` once the job has ended to get the run's final `ParsedRun`.
"""

from __future__ import annotations

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


class LogStream:
    """Incremental parser state for one log. Subclasses override `feed` and `finish`."""

    def feed(self, line: str) -> list[MetricPoint]:
        raise NotImplementedError

    def finish(self) -> ParsedRun:
        raise NotImplementedError


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

    def parse_lines(self, lines: Iterable[str]) -> ParsedRun:
        """Parse a whole log (any iterable of lines, so a large file streams in bounded memory)."""
        stream = self.stream()
        for line in lines:
            stream.feed(line)
        return stream.finish()
