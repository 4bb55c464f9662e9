"""Parse a log *file* (any size, streamed) and turn the result into one JSON object.

The CLI's `orch parse-log FILE [--format NAME] --json` is a thin wrapper around::

    run = parse_log_file(path, format="auto")      # raises LogFileError (a ValueError) on bad input
    print(json.dumps(parsed_run_to_json(run, path=path)))

Every error raised here is a `LogFileError` (so a `ValueError`) whose message names the file and the fix; the
CLI prints `str(err)` and exits non-zero, without a traceback.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import IO, Iterator

from .base import LogAdapter, ParsedRun
from .registry import ADAPTERS, UnknownFormat, get_adapter, sniff_scores

HEAD_BYTES = 64 * 1024  # what sniffers see first
LONG_HEAD_BYTES = 4 * 1024 * 1024  # read this far when the first 64 KiB is inconclusive (long script source)
MAX_LINE_BYTES = 1024 * 1024  # longer lines are cut (a log line is never this long; garbage can be)
CONFIDENT = 0.5


class LogFileError(ValueError):
    """A log file that cannot be parsed; the message names the file and says what to do."""


class BinaryLogError(LogFileError):
    pass


class UnknownLogFormat(LogFileError, UnknownFormat):
    pass


# ----------------------------------------------------------------------------------------------------------


def _open(path: Path) -> IO[bytes]:
    try:
        raw = open(path, "rb")
    except FileNotFoundError:
        raise LogFileError(f"{path}: no such file; check the path of the log") from None
    except IsADirectoryError:
        raise LogFileError(f"{path}: is a directory; pass the log file itself") from None
    except PermissionError:
        raise LogFileError(f"{path}: permission denied; make the log readable or copy it somewhere readable") from None
    magic = raw.read(2)
    raw.seek(0)
    if magic == b"\x1f\x8b":  # gzip: read it transparently
        return gzip.open(raw, "rb")  # type: ignore[return-value]
    return raw


def _check_text(path: Path, head: bytes) -> None:
    if not head:
        raise LogFileError(f"{path}: the file is empty; nothing to parse (was the job's output captured?)")
    nul = head.find(b"\x00")
    if nul >= 0:
        raise BinaryLogError(
            f"{path}: this is a binary file, not a text training log (NUL byte at offset {nul}); "
            "pass the text log the trainer printed (its captured stdout/stderr)"
        )
    control = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13, 27))
    text = head.decode("utf-8", errors="replace")
    undecodable = text.count("\ufffd")
    if (control + undecodable) > 0.05 * len(head):
        raise BinaryLogError(
            f"{path}: this does not look like a text log ({control} control bytes and {undecodable} undecodable "
            f"bytes in the first {len(head)}); pass the text log the trainer printed (its captured stdout/stderr)"
        )


def _lines(stream: IO[bytes], counters: dict[str, int]) -> Iterator[str]:
    """Decoded lines in bounded memory: overlong lines are cut, `\\r`-separated progress updates are split."""
    readline = stream.readline
    while True:
        chunk = readline(MAX_LINE_BYTES)
        if not chunk:
            return
        if len(chunk) == MAX_LINE_BYTES and not chunk.endswith(b"\n"):
            counters["overlong"] += 1
            while True:  # drop the rest of the overlong line
                rest = readline(MAX_LINE_BYTES)
                if not rest or rest.endswith(b"\n"):
                    break
        if b"\x00" in chunk:
            counters["binary"] += 1
            continue
        if b"\r" in chunk.rstrip(b"\r\n"):
            for part in chunk.split(b"\r"):
                if part.strip():
                    yield part.decode("utf-8", errors="replace")
            continue
        yield chunk.decode("utf-8", errors="replace")


def _choose(path: Path, requested: str, head: bytes, stream: IO[bytes]) -> tuple[LogAdapter, bytes]:
    if requested != "auto":
        try:
            return get_adapter(requested), head
        except UnknownFormat:
            raise UnknownLogFormat(
                f"{path}: unknown --format {requested!r}; choose one of: auto, {', '.join(sorted(ADAPTERS))}"
            ) from None
    scores = sniff_scores(head.decode("utf-8", errors="replace"))
    if scores[0][0] < CONFIDENT and len(head) == HEAD_BYTES:
        # the head may be all script source (modded-nanogpt logs start with thousands of lines of it)
        head = head + stream.read(LONG_HEAD_BYTES - HEAD_BYTES)
        scores = sniff_scores(head.decode("utf-8", errors="replace"))
    best, name = scores[0]
    if best <= 0.0:
        raise UnknownLogFormat(
            f"{path}: the log is in no known format (known: {', '.join(sorted(ADAPTERS))}); "
            "pass --format NAME if you know which trainer wrote it"
        )
    return ADAPTERS[name], head


def parse_log_file(path: str | os.PathLike, format: str = "auto") -> ParsedRun:  # noqa: A002 (CLI name)
    """Parse one log file, streamed (a multi-GB log stays in bounded memory).

    `format` is an adapter name (`modded-nanogpt`, `parameter-golf`, `nanochat`, `orch`) or `auto` (sniffed from
    the head of the file). Raises `LogFileError` (a ValueError) for a missing, empty or binary file or an unknown
    format; an incomplete log is not an error: the returned run says `complete=False` and why in `reason`.
    """
    path = Path(path)
    try:
        with _open(path) as stream:
            head = stream.read(HEAD_BYTES)
            _check_text(path, head[:HEAD_BYTES])
            adapter, head = _choose(path, format, head, stream)
            counters = {"overlong": 0, "binary": 0}
            log_stream = adapter.watch()
            feed = log_stream.feed
            stream.seek(0)  # plain files and gzip streams both rewind
            for line in _lines(stream, counters):
                feed(line)
            run = log_stream.finish()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:  # a gzip file cut short or damaged
        raise LogFileError(f"{path}: the compressed log is truncated or corrupt ({exc}); copy it again whole, or pass "
                           "the uncompressed log") from None
    except IsADirectoryError:
        raise LogFileError(f"{path}: is a directory; pass the log file itself") from None
    except OSError as exc:
        raise LogFileError(f"{path}: cannot read the log ({exc.strerror or exc}); check the file and the disk") from None
    if counters["binary"] > 1000 and not run.points:
        raise BinaryLogError(
            f"{path}: {counters['binary']} lines hold NUL bytes and no metric line was found; this is not a text "
            "training log (pass the log the trainer printed)"
        )
    return run


# ----------------------------------------------------------------------------------------------------------


def _clean(value):
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def official_metric_name(run: ParsedRun) -> str:
    name = getattr(run, "official_metric", None)
    if name:
        return name
    adapter = ADAPTERS.get(run.format)
    return getattr(adapter, "official_metric", "val_loss")


def parsed_run_to_json(run: ParsedRun, path: str | os.PathLike | None = None, series: bool = True) -> dict:
    """One JSON-ready object: outcome, official metric, environment and (unless `series=False`) the step series.

    Keys: file, format, complete, reason, error, exit_reason, final_step, total_steps, val_loss, val_bpb,
    train_time_ms, step_avg_ms, peak_memory_mib, official_metric, official_value, official_label, gpu_name,
    gpu_count, torch_version, versions, metrics (every number the adapter read), series_decimated, series
    (list of {step, kind, total_steps, val_loss, train_loss, train_time_ms, step_avg_ms, extra}).
    NaN and infinities become null.
    """
    metrics = dict(run.metrics)
    official = official_metric_name(run)
    out = {
        "file": str(path) if path is not None else None,
        "format": run.format,
        "complete": bool(run.complete),
        "reason": run.reason,
        "error": run.error,
        "exit_reason": run.exit_reason,
        "final_step": run.final_step,
        "total_steps": run.total_steps,
        "val_loss": metrics.get("val_loss"),
        "val_bpb": metrics.get("val_bpb"),
        "train_time_ms": metrics.get("train_time_ms"),
        "step_avg_ms": metrics.get("step_avg_ms"),
        "peak_memory_mib": metrics.get("peak_memory_mib"),
        "official_metric": official,
        # only a complete run has an official result; an incomplete one reports its latest numbers above
        "official_value": metrics.get(official) if run.complete else None,
        "official_label": getattr(run, "official_label", None),
        "gpu_name": run.gpu_name,
        "gpu_count": run.gpu_count,
        "torch_version": run.versions.get("torch"),
        "versions": dict(run.versions),
        "metrics": metrics,
        "notes": dict(getattr(run, "notes", {}) or {}),
        "series_decimated": bool(getattr(run, "series_decimated", False)),
    }
    if series:
        out["series"] = [asdict(point) for point in run.points]
    return _clean(out)
