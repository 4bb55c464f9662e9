"""bench/trainer_vs_record.py on a real record log (tests/fixtures/logs/modded-nanogpt, 2026-07-17 FP8DownProjection,
8 GPUs): the patched script read back from the head of the script's own log when the trial directory kept only the
logs, and the third stage's steps and windows found from it."""
import importlib.util
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOG = REPO / "tests/fixtures/logs/modded-nanogpt/06_track_1_short_2026-07-17_FP8DownProjection_11cb620c-daaf-4e85-83fc-258a5eb7ba09.txt"


def _module():
    spec = importlib.util.spec_from_file_location("trainer_vs_record", REPO / "bench/trainer_vs_record.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_record_schedule_from_the_logs_own_source(tmp_path):
    tvr = _module()
    (tmp_path / "logs").mkdir()
    shutil.copy(LOG, tmp_path / "logs" / LOG.name)
    source = tvr.record_source(tmp_path)
    assert source is not None and "class Hyperparameters" in source
    assert "\n" + "-" * 40 + "\n# triton_kernels.py" not in source  # the companion's source appended by the script is cut off
    first, last, windows = tvr.record_schedule(source)
    # 1380 scheduled steps in thirds, 10 extension steps: the third stage starts after step 920
    assert (first, last) == (round(2 * 1380 / 3) + 1, 1390)
    assert windows == (5 * 128, 11 * 128)
    times = tvr.step_times(tmp_path / "logs" / LOG.name)
    assert times and all(t > 0 for t in times.values())


def test_the_script_beside_the_log_wins(tmp_path):
    tvr = _module()
    (tmp_path / "train_gpt.py").write_text("x = 1\n")
    assert tvr.record_source(tmp_path) == "x = 1\n"
    assert tvr.record_source(tmp_path / "missing") is None
