"""modded-nanogpt adapter against real logs of every era (tests/fixtures/logs/modded-nanogpt)."""

from __future__ import annotations

import pytest

from orchestrator.parsers import get_adapter
from orchestrator.parsers.files import parse_log_file
from orchestrator.parsers.modded_nanogpt import ModdedNanoGPTAdapter

from tests.helpers.shared_logs import log

MNG = "modded-nanogpt"


def test_llmc_era_tel_trl_lines():
    run = parse_log_file(log(MNG, "01_"))
    assert run.format == MNG and run.complete
    assert run.final_step == run.total_steps == 9536
    assert run.metrics["val_loss"] == pytest.approx(3.275959)
    vals = [p for p in run.points if p.kind == "val"]
    assert len(vals) == 76 and vals[0].step == 0 and vals[0].val_loss == pytest.approx(10.968871)
    assert any(p.kind == "train" and p.step == 9535 and p.train_loss == pytest.approx(3.340180) for p in run.points)


def test_2024_era_train_loss_lines_and_nan_step_avg():
    run = parse_log_file(log(MNG, "02_"))
    assert run.complete and run.exit_reason == "completed"
    assert (run.final_step, run.total_steps) == (6200, 6200)
    assert run.metrics["val_loss"] == pytest.approx(3.2785)
    assert run.metrics["train_time_ms"] == 1339067 and run.metrics["step_avg_ms"] == pytest.approx(216.33)
    assert run.versions["torch"] == "2.4.1+cu121" and run.versions["cuda"] == "12.1"
    assert run.gpu_name == "NVIDIA H100 80GB HBM3" and run.gpu_count == 8
    first = run.points[0]
    assert (first.step, first.kind, first.val_loss, first.step_avg_ms) == (0, "val", 10.9264, None)  # step_avg:nanms
    last_train = [p for p in run.points if p.kind == "train"][-1]
    assert last_train.step == 6200 and last_train.train_loss == pytest.approx(3.2533)


def test_peak_memory_both_spellings():
    old = parse_log_file(log(MNG, "03_"))  # peak memory consumption: 34239 MiB
    assert old.complete and old.metrics["val_loss"] == pytest.approx(3.2756) and old.final_step == 1480
    assert old.metrics["peak_memory_mib"] == 34239
    new = parse_log_file(log(MNG, "04_"))  # peak memory allocated: 30724 MiB reserved: 45952 MiB
    assert new.metrics["peak_memory_mib"] == 30724 and new.metrics["peak_memory_reserved_mib"] == 45952
    assert new.metrics["val_loss"] == pytest.approx(3.2788) and new.metrics["train_time_ms"] == 179828
    assert new.versions["python"] == "3.12.7"


def test_track2_six_decimals():
    run = parse_log_file(log(MNG, "09_"))
    assert run.complete and (run.final_step, run.total_steps) == (6450, 6450)
    assert run.metrics["val_loss"] == 2.919352
    assert run.points[0].val_loss == 10.825837


def test_track3_seconds_and_device_line():
    run = parse_log_file(log(MNG, "10_"))
    assert run.complete and run.final_step == 4875
    assert run.metrics["val_loss"] == pytest.approx(3.27637)
    assert run.metrics["train_time_ms"] == pytest.approx(739639.0)  # train_time:739.639s
    assert run.gpu_name == "NVIDIA H100 80GB HBM3" and run.gpu_count == 8
    assert run.versions["torch"] == "2.10.0+cu128"


def test_script_source_is_not_parsed_as_log_lines():
    # 06 begins with ~3500 lines of source, including print0(f"step:{step}/...") and a triton kernel file
    run = parse_log_file(log(MNG, "06_"))
    assert run.complete and run.metrics["val_loss"] == pytest.approx(3.2775)
    assert {p.total_steps for p in run.points} == {1390}
    assert run.versions["triton"] == "3.6.0" and run.metrics["peak_memory_mib"] == 30220


def test_log_without_final_val_line_is_incomplete():
    run = parse_log_file(log(MNG, "08_"))
    assert not run.complete and run.exit_reason == "incomplete"
    assert "step:1555/1555 val_loss" in run.reason
    assert run.final_step == 1555


def test_source_docstring_with_log_like_lines_is_skipped():
    lines = [
        '"""A trainer whose docstring shows an example:\n',
        "step:5/10 val_loss:1.0000 train_time:1ms step_avg:1.00ms\n",
        '"""\n',
        "import os\n",
        "=" * 100 + "\n",
        "step:0/2 val_loss:10.8 train_time:0ms step_avg:nanms\n",
        "step:1/2 train_time:10ms step_avg:10.00ms\n",
        "step:2/2 train_time:20ms step_avg:10.00ms\n",
        "step:2/2 val_loss:3.2700 train_time:25ms step_avg:12.50ms\n",
    ]
    run = ModdedNanoGPTAdapter().parse_lines(lines)
    assert [p.step for p in run.points] == [0, 1, 2, 2]
    assert run.complete and run.metrics["val_loss"] == 3.27 and run.metrics["train_time_ms"] == 25


def test_feed_is_incremental_and_track3_extras():
    stream = get_adapter(MNG).stream()
    assert stream.feed("step:3/10 train_time:1.500s step_avg:500.00ms\n")[0].train_time_ms == 1500
    (point,) = stream.feed(
        "step:10/10 val_loss:3.27982 val_avg_loss:3.28 val_ema_loss:3.27500 train_time:4.5s step_avg:450.00ms "
        "extrap_rel:8.695e-04 handoff:keep\n"
    )
    assert point.kind == "val" and point.val_loss == 3.27982 and point.train_time_ms == 4500
    assert point.extra == {"val_avg_loss": 3.28, "val_ema_loss": 3.275, "extrap_rel": 8.695e-04}
    run = stream.finish()
    assert run.complete and run.metrics["val_ema_loss"] == 3.275


def test_early_exit_is_reported_as_such():
    # track 3 (train_time in seconds): stopping at the chosen step is the outcome (more in test_official_scores.py)
    run = ModdedNanoGPTAdapter().parse_lines(
        ["step:0/100 val_loss:10.8 train_time:0.000s step_avg:0.1ms\n",
         "step:90/100 val_loss:3.2790 train_time:9.000s step_avg:100.00ms\n"]
    )
    assert run.complete and run.exit_reason == "early_exit" and run.final_step == 90 and run.total_steps == 100
    assert run.metrics["val_loss"] == 3.279
