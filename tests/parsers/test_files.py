"""parse_log_file / parsed_run_to_json: detection, streaming, JSON shape, and clear errors on bad input."""

from __future__ import annotations

import gzip
import json

import pytest

from orchestrator.parsers import ADAPTERS, UnknownFormat, detect_format
from orchestrator.parsers.files import (
    BinaryLogError,
    LogFileError,
    UnknownLogFormat,
    parse_log_file,
    parsed_run_to_json,
)

from tests.helpers.shared_logs import log


def test_registry_has_all_formats():
    assert {"orch", "modded-nanogpt", "parameter-golf", "nanochat"} <= set(ADAPTERS)


@pytest.mark.parametrize(
    "kind,prefix",
    [("modded-nanogpt", f"{i:02d}_") for i in range(1, 11)] + [("parameter-golf", f"{i:02d}_") for i in range(1, 7)],
)
def test_every_fixture_is_detected_as_its_format(kind, prefix):
    assert parse_log_file(log(kind, prefix)).format == kind


def test_orch_lines_still_go_to_the_orch_adapter():
    head = 'step:1/2 val_loss:3.0 train_time:5ms step_avg:5.00ms\n@@metrics {"event": "start"}\n'
    assert detect_format(head).name == "orch"


def test_json_object_has_the_documented_keys():
    path = log("modded-nanogpt", "04_")
    data = parsed_run_to_json(parse_log_file(path), path=path)
    json.dumps(data)  # serialisable
    assert data["format"] == "modded-nanogpt" and data["complete"] is True and data["reason"] is None
    assert (data["final_step"], data["total_steps"]) == (1770, 1770)
    assert data["val_loss"] == pytest.approx(3.2788) and data["val_bpb"] is None
    assert data["train_time_ms"] == 179828 and data["step_avg_ms"] == pytest.approx(101.6)
    assert data["peak_memory_mib"] == 30724
    assert (data["official_metric"], data["official_value"]) == ("val_loss", pytest.approx(3.2788))
    assert data["gpu_name"] == "NVIDIA H100 80GB HBM3" and data["gpu_count"] == 8
    assert data["torch_version"] == "2.7.0.dev20250125+cu126"
    assert data["series"][0] == {
        "step": 0, "kind": "val", "total_steps": 1770, "val_loss": 10.8258, "train_loss": None,
        "train_time_ms": 0.0, "step_avg_ms": 0.03, "extra": {},
    }
    assert len(data["series"]) == 1770 + 15 + 1


def test_incomplete_has_reason_and_no_official_value():
    data = parsed_run_to_json(parse_log_file(log("modded-nanogpt", "08_")))
    assert data["complete"] is False and data["reason"] and data["official_value"] is None


def test_parameter_golf_json_official_is_val_bpb():
    data = parsed_run_to_json(parse_log_file(log("parameter-golf", "03_")), series=False)
    assert data["official_metric"] == "val_bpb" and data["official_value"] == pytest.approx(1.12002032)
    assert data["official_label"] == "legal_ttt_exact" and "series" not in data


def test_binary_garbage_is_a_clear_error(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(bytes(range(256)) * 100)
    with pytest.raises(BinaryLogError) as err:
        parse_log_file(path)
    assert str(path) in str(err.value) and "binary" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_unknown_format_names_file_and_fix(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\nthis is not a training log\n")
    with pytest.raises(UnknownLogFormat) as err:
        parse_log_file(path)
    message = str(err.value)
    assert str(path) in message and "--format" in message
    assert isinstance(err.value, UnknownFormat) and isinstance(err.value, LogFileError)
    with pytest.raises(UnknownLogFormat, match="unknown --format 'nope'"):
        parse_log_file(path, format="nope")


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(LogFileError, match="no such file"):
        parse_log_file(tmp_path / "absent.log")
    (tmp_path / "empty.log").write_bytes(b"")
    with pytest.raises(LogFileError, match="empty"):
        parse_log_file(tmp_path / "empty.log")


def test_forced_format_and_gzip(tmp_path):
    source = log("parameter-golf", "01_").read_bytes()
    path = tmp_path / "train.log.gz"
    path.write_bytes(gzip.compress(source))
    run = parse_log_file(path, format="parameter-golf")
    assert run.complete and run.metrics["val_bpb"] == pytest.approx(1.22436570)


def test_long_source_head_still_detected(tmp_path):
    # 200 KiB of script source before the first log line: the first 64 KiB alone is inconclusive
    source = '"""trainer"""\nimport os\n' + "x = 1  # filler\n" * 13000
    path = tmp_path / "run.txt"
    path.write_text(source + "=" * 100 + "\nstep:0/1 val_loss:10.0 train_time:0ms step_avg:nanms\n"
                    "step:1/1 val_loss:3.0 train_time:9ms step_avg:9.00ms\n")
    run = parse_log_file(path)
    assert run.format == "modded-nanogpt" and run.complete and run.metrics["val_loss"] == 3.0


def test_large_log_streams_in_bounded_memory(tmp_path):
    total = 150_000
    path = tmp_path / "big.txt"
    with path.open("w") as f:
        f.write("=" * 100 + "\n")
        for step in range(total + 1):
            if step % 1000 == 0:
                f.write(f"step:{step}/{total} val_loss:{4 - step / total:.4f} train_time:{step}ms step_avg:1.00ms\n")
            f.write(f"step:{step}/{total} train_time:{step}ms step_avg:1.00ms\n")
        f.write(f"step:{total}/{total} val_loss:3.0000 train_time:{total}ms step_avg:1.00ms\n")
        f.write("\x00\x01garbage line\n" + "y" * 3_000_000 + "\n")  # a NUL line and an over-long line are skipped
    run = parse_log_file(path)
    assert run.complete and run.final_step == total and run.metrics["val_loss"] == 3.0
    assert run.series_decimated and len(run.points) <= 20_000 + 200
    assert run.points[-1].step == total
