"""Log adapter for this project's own trainer: `@@metrics {json}` lines, with the human lines as a fallback.

The JSON lines are authoritative (docs/contracts.md). Human `step:S/T val_loss:X train_time:Nms` lines are
read too, so a log whose JSON lines were lost (or a trainer that prints only the human form) still yields
its series, but only a `final` JSON object makes a run complete.
"""

from __future__ import annotations

import json
import re

from .base import LogAdapter, LogStream, MetricPoint, ParsedRun

PREFIX = "@@metrics "
_HUMAN_VAL = re.compile(
    r"^step:(?P<step>\d+)/(?P<total>\d+) val_loss:(?P<val>[-+0-9.eE]+|nan|inf) "
    r"train_time:(?P<time>[0-9.]+)ms(?: step_avg:(?P<avg>[0-9.]+|nan)ms)?"
)

_FINAL_NUMBERS = ("val_loss", "train_time_ms", "step_avg_ms", "tokens", "peak_memory_mib")


def _num(value) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class OrchStream(LogStream):
    def __init__(self) -> None:
        self._points: dict[tuple[str, int], MetricPoint] = {}  # by (kind, step): a JSON point replaces its human twin
        self.final: dict | None = None
        self.start: dict | None = None
        self._json_val_steps: set[int] = set()
        self.bad_json_lines = 0

    def feed(self, line: str) -> list[MetricPoint]:
        line = line.rstrip("\r\n")
        if line.startswith(PREFIX):
            try:
                obj = json.loads(line[len(PREFIX):])
            except json.JSONDecodeError:
                self.bad_json_lines += 1
                return []
            if not isinstance(obj, dict):
                self.bad_json_lines += 1
                return []
            return self._event(obj)
        match = _HUMAN_VAL.match(line)
        if match and int(match["step"]) not in self._json_val_steps:
            point = MetricPoint(
                step=int(match["step"]),
                kind="val",
                total_steps=int(match["total"]),
                val_loss=_num(match["val"]),
                train_time_ms=_num(match["time"]),
                step_avg_ms=_num(match["avg"]),
            )
            # A human line is usually followed by its JSON twin; keep the JSON one when it comes.
            self._points[("val", point.step)] = point
            return [point]
        return []

    @property
    def points(self) -> list[MetricPoint]:
        return list(self._points.values())

    def _event(self, obj: dict) -> list[MetricPoint]:
        event = obj.get("event")
        if event == "start":
            self.start = obj
            return []
        if event == "final":
            self.final = obj
            return []
        if event not in ("val", "train") or not isinstance(obj.get("step"), int):
            return []
        step = obj["step"]
        if event == "val":
            self._points.pop(("val", step), None)  # its human twin, if recorded: the JSON point comes last
            self._json_val_steps.add(step)
        known = {"event", "step", "total_steps", "val_loss", "train_loss", "train_time_ms", "step_avg_ms"}
        point = MetricPoint(
            step=step,
            kind=event,
            total_steps=obj.get("total_steps"),
            val_loss=_num(obj.get("val_loss")),
            train_loss=_num(obj.get("train_loss")),
            train_time_ms=_num(obj.get("train_time_ms")),
            step_avg_ms=_num(obj.get("step_avg_ms")),
            extra={k: float(v) for k, v in obj.items() if k not in known and isinstance(v, (int, float))},
        )
        self._points[(event, step)] = point
        return [point]

    def finish(self) -> ParsedRun:
        run = ParsedRun(format=OrchAdapter.name, complete=self.final is not None, points=self.points)
        start = self.start or {}
        if self.final is None:
            run.reason = "no final @@metrics line (the trainer did not finish)"
            last = next((p for p in reversed(self.points) if p.kind == "val"), None)
            if last is not None:
                run.final_step, run.total_steps = last.step, last.total_steps
                if last.val_loss is not None:
                    run.metrics["val_loss"] = last.val_loss
            return run
        final = self.final
        for key in _FINAL_NUMBERS:
            value = _num(final.get(key))
            if value is not None:
                run.metrics[key] = value
        if "train_time_ms" in run.metrics:
            run.metrics["train_time_s"] = run.metrics["train_time_ms"] / 1000.0
        run.final_step = final.get("step")
        run.total_steps = final.get("total_steps")
        if run.final_step is not None:
            run.metrics["steps"] = float(run.final_step)
        run.exit_reason = final.get("exit_reason")
        run.gpu_name = final.get("gpu_name") or start.get("gpu_name")
        world = final.get("world_size") or start.get("world_size")
        run.gpu_count = int(world) if run.gpu_name and world else (0 if not run.gpu_name else None)
        versions = final.get("versions") or start.get("versions") or {}
        run.versions = {str(k): str(v) for k, v in versions.items() if v is not None}
        if run.exit_reason == "diverged":
            run.complete = True  # a finished run whose outcome is a divergence, recorded as such
        return run


class OrchAdapter(LogAdapter):
    name = "orch"
    metrics = frozenset(
        {"val_loss", "train_time_ms", "train_time_s", "step_avg_ms", "tokens", "peak_memory_mib", "steps"}
    )

    def sniff(self, head: str) -> float:
        if "\n" + PREFIX in "\n" + head:
            return 1.0
        return 0.3 if _HUMAN_VAL.search(head) else 0.0

    def stream(self) -> OrchStream:
        return OrchStream()
