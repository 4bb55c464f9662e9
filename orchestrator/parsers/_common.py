"""Helpers shared by the external-trainer log adapters (modded-nanogpt, parameter-golf, nanochat).

Nothing here knows a particular format: line clean-up (epoch-seconds prefixes, ANSI colours), the
"source code at the top of the log" skipper, nvidia-smi / version sniffing, number parsing with units, and a
bounded series buffer so a multi-GB log parses in bounded memory.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from .base import MetricPoint, ParsedRun

# ----------------------------------------------------------------------------------------------------------
# ParsedRun with the few extra facts the external formats carry


@dataclass
class ExternalParsedRun(ParsedRun):
    """A ParsedRun plus the name of the format's official metric (and, for parameter-golf, the label of the
    line that produced it). It is a ParsedRun, so every consumer of the base class keeps working."""

    official_metric: str | None = None
    official_label: str | None = None
    series_decimated: bool = False  # True when the train-point series was thinned to stay in bounded memory
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def official_value(self) -> float | None:
        return self.metrics.get(self.official_metric) if self.official_metric else None


# ----------------------------------------------------------------------------------------------------------
# line clean-up

_EPOCH_PREFIX = re.compile(r"^\d{9,10}\.\d+ ")  # `1776142348.135 ` (parameter-golf era B, `ts` style)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def clean_line(line: str) -> str:
    """Strip the newline, ANSI colour codes and a leading epoch-seconds timestamp."""
    line = line.rstrip("\r\n")
    if "\x1b" in line:
        line = _ANSI.sub("", line)
    if line[:1].isdigit():
        line = _EPOCH_PREFIX.sub("", line, count=1)
    return line


# ----------------------------------------------------------------------------------------------------------
# numbers


def to_float(text: str | None) -> float | None:
    """`'3.28'` -> 3.28, `'nan'` -> None, `'1,234'` -> 1234.0, garbage -> None."""
    if text is None:
        return None
    text = text.strip().replace(",", "")
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


_DURATION = re.compile(r"^(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)(?P<unit>ms|s|m|min|h)?$")
_UNIT_MS = {"ms": 1.0, "s": 1000.0, "m": 60_000.0, "min": 60_000.0, "h": 3_600_000.0}


def duration_ms(text: str, default_unit: str = "ms") -> float | None:
    """`'179828ms'` -> 179828.0, `'739.639s'` -> 739639.0, `'0.8m'` -> 48000.0, `'nanms'` -> None."""
    match = _DURATION.match(text.strip())
    if not match:
        return None
    value = to_float(match["num"])
    if value is None or math.isinf(value):
        return None
    return value * _UNIT_MS[match["unit"] or default_unit]


# ----------------------------------------------------------------------------------------------------------
# the script source at the top of a log

SEPARATOR = re.compile(r"^={40,}\s*$")  # modded-nanogpt and parameter-golf print "=" * 100
#: a separator with a title, e.g. `===== source: train_gpt.py =====` (one per file when a launcher logs several)
TITLED_SEPARATOR = re.compile(r"^={3,}\s*(?:source\b[^=]*|[^=\s]+\.py)\s*={3,}\s*$")
_CODE_START = re.compile(
    r"^(?:import \w|from [\w.]+ import |\"\"\"|'''|#!|# |#-|def \w|class \w|@\w|if __name__|os\.environ)"
)
_COMMENT = re.compile(r"^#(?!!)")
#: what only Python would start a line with (after a comment header: is the next line code or log?)
_CODE_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*(?:\[[^\]]*\])?\s*(?::\s*[\w\[\]., ]+)?\s*=[^=]|[A-Za-z_][\w.]*\(|try:|with |for |while |return\b|@)")
_TRIPLE = re.compile(r"\"\"\"|'''")


class SourceSkipper:
    """Many trainers log their own source file first (modded-nanogpt and parameter-golf era A print
    `code` then `"=" * 100`). `is_log(line)` says whether a cleaned line belongs to the log proper.

    The source block is recognised at the top only: the first non-blank line (or the first one after a leading
    separator or a titled one such as `===== source: train_gpt.py =====`) looks like Python (`import`,
    `from x import`, a docstring, `def`, `class`...). Everything up to the next separator line is then source,
    never parsed, so code such as `print0(f"step:{step}/{n} val_loss:...")` or a docstring cannot be mistaken for a
    log line.

    Logs without that separator are read too:

    - a header of `#` comments (`# cmd: torchrun ...`) followed by log lines is a header, not source;
    - a source block that no separator closes ends at the first line that only a log can hold (`log_evidence`,
      given by the adapter: e.g. `step:0/20000 val_loss:6.93 ...` with real numbers) outside a docstring.
    """

    def __init__(self, log_evidence: "re.Pattern[str] | None" = None) -> None:
        self.state = "start"  # start -> (after_sep) -> (comments) -> source -> log
        self.source_lines = 0
        self.log_evidence = log_evidence
        self._in_string = False

    def is_log(self, line: str) -> bool:
        state = self.state
        if state == "log":
            return True
        if state == "source":
            return self._source_line(line)
        if state == "comments":  # `# ...` lines so far: a header, or the top of a script?
            if not line.strip() or _COMMENT.match(line):
                self.source_lines += 1
                return False
            if SEPARATOR.match(line):
                self.state = "log"
                return False
            if _CODE_START.match(line) or _CODE_LINE.match(line):
                self.state = "source"
                return self._source_line(line)
            self.state = "log"
            return True
        # start / after_sep: skip blank lines until we know
        if not line.strip():
            return False
        if SEPARATOR.match(line):
            self.state = "after_sep" if state == "start" else "log"
            return False
        if TITLED_SEPARATOR.match(line):
            self.state = "source"  # `===== source: x.py =====`: the file's text follows
            return False
        if _COMMENT.match(line):
            self.state = "comments"
            self.source_lines += 1
            return False
        if _CODE_START.match(line):
            self.state = "source"
            return self._source_line(line)
        self.state = "log"
        return True

    def _source_line(self, line: str) -> bool:
        if not self._in_string:
            if SEPARATOR.match(line):
                self.state = "log"
                return False
            if self.log_evidence is not None and self.log_evidence.match(line):
                self.state = "log"  # the source ended without a separator; this is the first log line
                return True
            if TITLED_SEPARATOR.match(line):
                return False  # the next file's source
        if len(_TRIPLE.findall(line)) % 2:
            self._in_string = not self._in_string
        self.source_lines += 1
        return False

    @property
    def unterminated_source(self) -> bool:
        return self.state in ("source", "comments") and self.source_lines > 0


# ----------------------------------------------------------------------------------------------------------
# environment facts: GPUs and versions

_SMI_ROW = re.compile(r"^\|\s+(?P<idx>\d+)\s+(?P<name>\S.*?)\s+(?:On|Off)\s+\|")
_DEVICE_NAME = re.compile(r"device_name=(?P<name>.+?) with world_size=(?P<ws>\d+)")
_WORLD_SIZE = re.compile(r"^\s*world_size\s*[:=]\s*(?P<ws>\d+)\b")
_PY_VERSION = re.compile(r"^Running [Pp]ython (?P<v>\d+\.\d+\.\d+\S*)")
_TORCH_VERSION = re.compile(r"^Running [Pp]y[Tt]orch (?P<v>\S+)(?: compiled for CUDA (?P<cuda>\S+))?")
_TRITON_VERSION = re.compile(r"^Running Triton version (?P<v>\S+)")
_SMI_CUDA = re.compile(r"CUDA Version: (?P<v>[\d.]+)")
_SMI_DRIVER = re.compile(r"Driver Version: (?P<v>[\d.]+)")


class EnvSniffer:
    """Collects GPU name/count and library versions from the usual banner lines and nvidia-smi tables."""

    def __init__(self) -> None:
        self.smi_gpus: dict[int, str] = {}
        self.gpu_name: str | None = None
        self.world_size: int | None = None
        self.versions: dict[str, str] = {}

    def feed(self, line: str) -> bool:
        """Returns True when the line was an environment line (so callers can skip other matching)."""
        if line.startswith("|"):
            match = _SMI_ROW.match(line)
            if match and "Name" not in match["name"]:
                self.smi_gpus.setdefault(int(match["idx"]), match["name"].strip())
                return True
            if "CUDA Version" in line:
                if m := _SMI_CUDA.search(line):
                    self.versions.setdefault("cuda_driver", m["v"])
                if m := _SMI_DRIVER.search(line):
                    self.versions.setdefault("nvidia_driver", m["v"])
            return True
        if line.startswith("Running "):
            if m := _TORCH_VERSION.match(line):
                self.versions["torch"] = m["v"]
                if m["cuda"]:
                    self.versions["cuda"] = m["cuda"]
                return True
            if m := _PY_VERSION.match(line):
                self.versions["python"] = m["v"]
                return True
            if m := _TRITON_VERSION.match(line):
                self.versions["triton"] = m["v"]
                return True
            if m := _DEVICE_NAME.search(line):
                self.gpu_name = m["name"].strip()
                self.world_size = int(m["ws"])
                return True
            return False
        if "world_size" in line:
            m = _WORLD_SIZE.match(line)
            if m:
                self.world_size = int(m["ws"])
                return True
        return False

    def apply(self, run: ParsedRun) -> None:
        names = list(self.smi_gpus.values())
        run.gpu_name = self.gpu_name or (names[0] if names else None)
        if self.world_size:
            run.gpu_count = self.world_size
        elif names:
            run.gpu_count = len(names)
        run.versions = dict(self.versions)


_PEAK_MEM = re.compile(
    r"^peak memory (?:consumption|allocated): (?P<alloc>\d+(?:\.\d+)?) ?MiB(?: reserved: (?P<res>\d+(?:\.\d+)?) ?MiB)?"
)


def match_peak_memory(line: str) -> tuple[float, float | None] | None:
    """Both modded-nanogpt spellings: `peak memory consumption: N MiB` (2024) and
    `peak memory allocated: N MiB reserved: M MiB` (2025+, also parameter-golf)."""
    if not line.startswith("peak memory"):
        return None
    match = _PEAK_MEM.match(line)
    if not match:
        return None
    return float(match["alloc"]), to_float(match["res"])


# ----------------------------------------------------------------------------------------------------------
# bounded series


class SeriesBuffer:
    """Keeps a run's step series in bounded memory.

    Validation points are few (every 125-250 steps) and are all kept up to `max_val`; training points (one per
    step) are thinned once more than `max_train` have been kept: every other kept point is dropped and from then
    on only every 2nd, 4th, ... point is admitted. The most recent training point is always kept.
    """

    def __init__(self, max_train: int = 20_000, max_val: int = 100_000) -> None:
        self.max_train = max_train
        self.max_val = max_val
        self.val: list[MetricPoint] = []
        self.train: list[MetricPoint] = []
        self._stride = 1
        self._train_seen = 0
        self._last_train: MetricPoint | None = None
        self.decimated = False

    def add(self, point: MetricPoint) -> None:
        if point.kind == "val":
            if len(self.val) >= self.max_val:
                self.val = self.val[::2]
                self.decimated = True
            self.val.append(point)
            return
        self._last_train = point
        self._train_seen += 1
        if (self._train_seen - 1) % self._stride:
            return
        if len(self.train) >= self.max_train:
            self.train = self.train[::2]
            self._stride *= 2
            self.decimated = True
        self.train.append(point)

    def points(self) -> list[MetricPoint]:
        train = list(self.train)
        if self._last_train is not None and (not train or train[-1] is not self._last_train):
            train.append(self._last_train)
        merged = self.val + train
        order = {"train": 0, "val": 1}
        merged.sort(key=lambda p: (p.step, order.get(p.kind, 2)))
        return merged

    def last_val(self) -> MetricPoint | None:
        return self.val[-1] if self.val else None

    def last_any(self) -> MetricPoint | None:
        candidates = [p for p in (self.val[-1] if self.val else None, self._last_train) if p is not None]
        return max(candidates, key=lambda p: p.step) if candidates else None


# ----------------------------------------------------------------------------------------------------------
# `key:value` field lists

_FIELD = re.compile(r"(?P<key>[A-Za-z_][\w/.]*)(?::|=)\s*(?P<value>\S+)")


def parse_fields(text: str) -> dict[str, str]:
    """`'val_loss:3.28 train_time:1ms handoff:none'` -> {'val_loss': '3.28', ...}; `key: value` works too."""
    return {m["key"]: m["value"] for m in _FIELD.finditer(text)}
