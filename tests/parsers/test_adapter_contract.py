"""The log-adapter contract: every adapter of the registry (orchestrator/parsers/registry.py) passes the same tests on
its real fixture logs (tests/fixtures/logs/FORMAT/), the way Optuna runs every storage through one suite.

What the controller and recovery rely on: the adapter recognises its own logs (`detect_format`); the points it hands
out line by line while a run goes are the points of the finished parse (what the controller stored live is what
recovery would store); a log cut short (a run killed, a controller that read only part of it) parses as incomplete
with a reason, its points a prefix of the whole run's; the reported metrics are the ones the adapter declares;
noise a trainer or a terminal adds (binary junk, an overlong line) changes nothing; an empty log is incomplete.

Fixtures: the modded-nanogpt and parameter-golf logs are copies of public records (tests/fixtures/README.md); the
orch log is a run of this project's trainer (`python -m trainer --preset tiny`, 80 steps, README there). No real
nanochat log is in the fixtures: its case is the sample written from nanochat's print statements
(tests/parsers/test_nanochat.py), and the suite says so in the case's name.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from orchestrator.parsers.files import parse_log_file
from orchestrator.parsers.registry import ADAPTERS, get_adapter
from tests.parsers.test_nanochat import sample_log

LOGS = Path(__file__).resolve().parents[1] / "fixtures" / "logs"


def _cases() -> list:
    cases = []
    for name in ADAPTERS:
        folder = LOGS / name
        files = sorted(p for p in folder.glob("*") if p.suffix in (".log", ".txt")) if folder.is_dir() else []
        cases += [pytest.param(name, path.read_text(encoding="utf-8", errors="replace"), id=f"{name}:{path.name[:40]}")
                  for path in files]
        if name == "nanochat" and not files:
            cases.append(pytest.param(name, sample_log(), id="nanochat:sample-from-print-formats(no-real-log)"))
    return cases


CASES = _cases()


def test_every_adapter_has_a_fixture_log():
    assert {c.values[0] for c in CASES} == set(ADAPTERS)


def _key(point) -> tuple:
    """A point of the curve (its `total_steps` aside: an adapter may learn the run's length only at its end)."""
    return (point.kind, point.step, point.val_loss, point.train_loss, point.train_time_ms, point.step_avg_ms,
            tuple(sorted(point.extra.items())))


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


@pytest.mark.parametrize("name, text", CASES)
def test_the_adapter_recognises_its_own_logs(name, text, tmp_path):
    """As `orch parse-log --format auto` reads a file (past a head of source code, as records print it first)."""
    path = tmp_path / "train.log"
    path.write_text(text, encoding="utf-8")
    assert parse_log_file(path).format == name


@pytest.mark.parametrize("name, text", CASES)
def test_the_whole_log_parses_to_declared_metrics_and_ordered_points(name, text):
    adapter = get_adapter(name)
    run = adapter.parse_lines(_lines(text))
    assert run.format == name
    assert set(run.metrics) <= set(adapter.metrics), set(run.metrics) - set(adapter.metrics)
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in run.metrics.values()), run.metrics
    if run.complete:
        assert run.metrics and run.exit_reason, (run.metrics, run.exit_reason)
    else:
        assert run.reason, "an incomplete run must say why"
    if run.final_step is not None:  # a training run (an evaluation-only one has no step lines)
        assert run.points, "no metric point in a whole training log"
    for kind in {p.kind for p in run.points}:
        steps = [p.step for p in run.points if p.kind == kind]
        assert steps == sorted(steps), f"{kind} points out of order"


@pytest.mark.parametrize("name, text", CASES)
def test_points_streamed_line_by_line_are_the_points_of_the_finished_parse(name, text):
    """The controller stores what `feed` returns as the run goes (a point seen again replaces the stored one);
    recovery stores `finish().points`: both must be the same curve."""
    stream = get_adapter(name).stream()
    live: dict[tuple, tuple] = {}
    for line in _lines(text):
        for point in stream.feed(line):
            live[(point.kind, point.step)] = _key(point)
    final = {(p.kind, p.step): _key(p) for p in stream.finish().points}
    assert live == final


@pytest.mark.parametrize("name, text", CASES)
def test_a_log_cut_short_is_incomplete_and_its_points_are_a_prefix(name, text):
    """Cut while training (before the line of its last point) and mid-line: incomplete, with a reason; every point
    but the newest is the whole run's."""
    adapter = get_adapter(name)
    lines = _lines(text)
    stream, last = adapter.stream(), None
    for index, line in enumerate(lines):
        if stream.feed(line):
            last = index
    if last is None:
        pytest.skip("an evaluation-only log: no training to cut")
    whole = {(p.kind, p.step): _key(p) for p in stream.finish().points}
    for share in (0.3, 0.7):
        part = adapter.parse_lines(lines[: int(last * share)] + ["step:99 partial line without its e"])
        assert not part.complete and part.reason, f"cut at {share:.0%} of the training parsed as complete"
        got = {(p.kind, p.step): _key(p) for p in part.points}
        newest = max(got, default=None, key=lambda k: k[1])
        assert all(whole.get(k) == v for k, v in got.items() if k != newest), "points differ from the whole run's"


@pytest.mark.parametrize("name, text", CASES)
def test_binary_junk_and_an_overlong_line_change_nothing(name, text):
    adapter = get_adapter(name)
    lines = _lines(text)
    middle = len(lines) // 2
    noisy = lines[:middle] + ["\x00\x01\xff\ufffd junk \x1b[31m\n", "x" * (1 << 20) + "\n", "\n"] + lines[middle:]
    clean, dirty = adapter.parse_lines(lines), adapter.parse_lines(noisy)
    assert (dirty.complete, dirty.metrics, dirty.exit_reason) == (clean.complete, clean.metrics, clean.exit_reason)
    assert [_key(p) for p in dirty.points] == [_key(p) for p in clean.points]


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_an_empty_log_is_incomplete_with_a_reason(name):
    run = get_adapter(name).parse_lines([])
    assert not run.complete and run.reason and not run.points


TORCHRUN_CRASH = """[rank0]: Traceback (most recent call last):
[rank0]:   File "train_gpt.py", line 1822, in distributed_data_generator
[rank0]:     seq_starts, seq_ends = shard.next_batch(num_tokens_local, max_seq_len)
[rank0]: StopIteration: Insufficient BOS ahead; hit tail of shard.
[rank0]:
[rank0]: During handling of the above exception, another exception occurred:
[rank0]:
[rank0]: Traceback (most recent call last):
[rank0]:   File "train_gpt.py", line 1826, in distributed_data_generator
[rank0]: TypeError: 'NoneType' object is not callable
Traceback (most recent call last):
  File "torch/distributed/run.py", line 994, in <module>
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
"""


@pytest.mark.parametrize("name, text", CASES)
def test_a_crash_says_the_jobs_last_error_and_a_clean_log_says_none(name, text):
    """Whatever the trainer, a run that died with a traceback names the exception (a rank's own, not torchrun's
    wrapper, with the one it was raised while handling): `orch` puts it in the failed trial's note. A whole fixture
    log, source code at its head included, names none."""
    adapter = get_adapter(name)
    lines = _lines(text)
    assert adapter.parse_lines(lines).error is None
    crashed = adapter.parse_lines(lines[: len(lines) // 2] + _lines(TORCHRUN_CRASH))
    assert crashed.error == ("TypeError: 'NoneType' object is not callable (raised while handling StopIteration: "
                             "Insufficient BOS ahead; hit tail of shard.)")
    plain = adapter.parse_lines(lines[: len(lines) // 2] + ["Traceback (most recent call last):\n",
                                                            '  File "train.py", line 3, in <module>\n',
                                                            "torch.OutOfMemoryError: CUDA out of memory. " + "x" * 400 + "\n"])
    assert plain.error.startswith("torch.OutOfMemoryError: CUDA out of memory.") and len(plain.error) == 300
