"""parameter-golf adapter against real logs of both eras (tests/fixtures/logs/parameter-golf)."""

from __future__ import annotations

import pytest

from orchestrator.parsers.files import parse_log_file
from orchestrator.parsers.parameter_golf import ParameterGolfAdapter

from tests.helpers.shared_logs import log

PG = "parameter-golf"


def test_era_a_official_score_is_last_scored_line():
    run = parse_log_file(log(PG, "01_"))
    assert run.format == PG and run.complete
    assert run.official_label == "final_int8_zlib_roundtrip_exact"
    assert run.metrics["val_bpb"] == pytest.approx(1.22436570) and run.metrics["val_loss"] == pytest.approx(2.07269931)
    assert run.exit_reason == "wallclock_cap"  # stopping_early: wallclock_cap train_time:600038ms step:13780/20000
    assert (run.final_step, run.total_steps) == (13780, 20000)
    assert run.metrics["train_time_ms"] == 600038
    assert run.metrics["artifact_bytes"] == 15863489  # Total submission size int8+zlib (the last one)
    assert run.metrics["peak_memory_mib"] == 10184
    assert run.metrics["prequant_val_bpb"] == pytest.approx(1.2172)
    assert run.gpu_count == 8


def test_last_scored_line_whatever_its_label():
    run = parse_log_file(log(PG, "02_"))  # source code first; ends with final_ttt_lora
    assert run.complete and run.official_label == "final_ttt_lora"
    assert run.metrics["val_bpb"] == pytest.approx(1.1935)
    assert run.versions["torch"] == "2.10.0+cu128" and run.gpu_name == "NVIDIA H100 80GB HBM3"
    assert all(p.total_steps == 20000 for p in run.points)


def test_era_b_key_space_value():
    run = parse_log_file(log(PG, "04_"))
    assert run.complete and run.official_label == "quantized_sliding_window"
    assert run.metrics["val_bpb"] == pytest.approx(1.08664424)
    assert (run.final_step, run.total_steps) == (4986, 20000)
    assert run.metrics["train_time_ms"] == 588136  # stopping_early: wallclock_cap train_time: 588136ms
    first = run.points[0]
    assert (first.step, first.kind, first.val_loss, first.extra["val_bpb"]) == (0, "val", 9.009, 3.4877)
    train = [p for p in run.points if p.kind == "train"]
    assert train[0].train_loss == pytest.approx(9.0111) and train[-1].train_time_ms == pytest.approx(8.7 * 60000)
    assert run.metrics["artifact_bytes"] == 15988983


def test_era_b_with_epoch_seconds_prefix():
    run = parse_log_file(log(PG, "05_"))
    assert run.complete and run.official_label == "quantized_ttt_phased"
    assert run.metrics["val_bpb"] == pytest.approx(1.07216564)
    assert run.final_step == 4832 and run.gpu_count == 8


def test_truncated_log_is_incomplete(tmp_path):
    lines = log(PG, "01_").read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if line.startswith("step:10000/20000 val_loss"))
    (tmp_path / "cut.log").write_text("".join(lines[: cut + 1]))
    run = parse_log_file(tmp_path / "cut.log")
    assert not run.complete and "10000/20000" in run.reason
    assert run.metrics["val_bpb"] == pytest.approx(1.2477)  # latest seen, not official


def test_training_done_but_no_scored_line():
    run = ParameterGolfAdapter().parse_lines(
        ["step:0/100 val_loss:6.9 val_bpb:4.1 train_time:0ms step_avg:0.01ms\n",
         "step:50/100 val_loss:2.5 val_bpb:1.5 train_time:600100ms step_avg:12002.00ms\n",
         "stopping_early: wallclock_cap train_time:600100ms step:50/100\n"]
    )
    assert not run.complete and "no scored line" in run.reason and run.exit_reason == "wallclock_cap"
