"""Fault 7: the trials' working directory is full (a 1 MiB tmpfs, filled), and a trainer prints a log of
several GB (one 1 GiB line without a newline, then 2 GiB of 64 KiB lines).

Full disk: the trial is marked `lost` (exit reason `disk_full`) and re-queued, the run stops at once with one
message naming the machine, the path and the fix, and after space is freed `orch study run` completes it.
Huge log: the controller's peak memory stays bounded (measured as VmHWM, next to a run with a 1 MiB log) and
the run is still parsed: its outcome and every metric point are recorded.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from db import Database, MetricPointRow
from tests.conftest import orch, stand_in_study
from tests.orch._checks import assert_agrees_with_optuna, rows_of

from .conftest import backend, start_controller

SPEW = Path(__file__).with_name("spew_trainer.py")


def _fleet(tmp_path: Path, workdir: Path) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({"machines": [{"name": "local", "launcher": "local", "gpus": "none", "cpu_slots": 1,
                                                  "workdir": str(workdir)}]}))
    return path


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs, filled up; yields (mount point, filler file)."""
    mount = tmp_path / "small"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    filler = mount / "filler"
    try:
        with open(filler, "wb") as f:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    except OSError:
        pass
    try:
        yield mount, filler
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_working_directory_fails_clearly_and_resumes(db_url, tmp_path, full_disk, figures):
    mount, filler = full_disk
    fleet = _fleet(tmp_path, mount / "runs")
    study = stand_in_study(tmp_path, max_trials=2, parallel=1)
    assert orch("study", "create", "s", "--from", str(study), "--db", db_url, cwd=tmp_path).returncode == 0
    began = time.monotonic()
    result = orch("study", "run", "s", "--db", db_url, "--fleet", str(fleet), "--plain", cwd=tmp_path, timeout=120)
    failed_in = time.monotonic() - began
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "orch: error: machine 'local': disk full: " in result.stderr and "No space left on device" in result.stderr
    assert f"(fix: free space under the machine's workdir '{mount / 'runs'}'" in result.stderr
    assert "Traceback" not in output
    db = Database(db_url)
    rows = assert_agrees_with_optuna(db, "s")
    assert [(r.state, r.exit_reason) for r in rows] == [("lost", "disk_full")]
    assert "No space left on device" in rows[0].note

    filler.unlink()
    freed = time.monotonic()
    resumed = orch("study", "run", "s", "--db", db_url, "--fleet", str(fleet), "--plain", cwd=tmp_path, timeout=120)
    recovered_s = time.monotonic() - freed
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    rows = assert_agrees_with_optuna(db, "s")
    assert [(r.state, r.retry_of) for r in rows] == [("lost", None), ("complete", 0), ("complete", None)]
    figures.record("7a", backend(db_url), injected="the trials' working directory full (a 1 MiB tmpfs, filled)",
                   behaviour=f"the trial lost (exit reason disk_full) and re-queued; the run stopped in {failed_in:.1f} s "
                   "with exit 2 and one message naming the machine, the path and the fix; after freeing space "
                   "`orch study run` ran the retry", recover_s=round(recovered_s, 2),
                   recover_what="resume to the budget complete (after freeing space)", lost=0, duplicates=0)


def _peak_rss_mib(proc: subprocess.Popen) -> float:
    """Poll the process's VmHWM (peak resident set) until it exits."""
    peak = 0.0
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            pass
        time.sleep(0.1)
    return peak


def _spew_study(tmp_path: Path, name: str, long_mb: int, junk_mb: int) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "trainer": {"command": ["{python}", str(SPEW), str(long_mb), str(junk_mb)], "log_format": "orch"},
        "parameters": {"lr": {"type": "float", "low": 0.1, "high": 0.2, "flag": "--lr"}},
        "objective": {"minimize": "train_time_s", "subject_to": ["val_loss <= 3.3"]},
        "sampler": {"name": "random", "seed": 0}, "budget": {"max_trials": 1}, "timeout_s": 600}))
    return path


@pytest.mark.slow
def test_a_log_of_several_gb_is_parsed_in_bounded_memory(sqlite_url, tmp_path, figures):
    fleet = _fleet(tmp_path, tmp_path / "runs")
    sizes = {"small": (0, 1), "huge": (1024, 2048)}  # MiB: one line without a newline, then 64 KiB lines
    peaks, took = {}, {}
    for name, (long_mb, junk_mb) in sizes.items():
        study = _spew_study(tmp_path, name, long_mb, junk_mb)
        assert orch("study", "create", name, "--from", str(study), "--db", sqlite_url, cwd=tmp_path).returncode == 0
        began = time.monotonic()
        proc = start_controller(sqlite_url, tmp_path, "--fleet", str(fleet), name=name, stdout=subprocess.DEVNULL)
        peaks[name] = _peak_rss_mib(proc)
        took[name] = time.monotonic() - began
        assert proc.returncode == 0
    db = Database(sqlite_url)
    (row,) = rows_of(db, "huge")
    log = Path(row.log_path)
    try:
        size_gib = log.stat().st_size / 2**30
        assert size_gib > 3.0
        assert row.state == "complete" and row.value == pytest.approx(1.234) and row.metrics["val_loss"] == 3.25
        with db.session() as s:
            points = s.scalar(select(func.count()).select_from(MetricPointRow).where(MetricPointRow.trial_id == row.id))
        assert points == 2048 * 16 // 1000
        assert peaks["huge"] < peaks["small"] + 150, peaks  # bounded: not proportional to the log (3 GiB)
    finally:
        log.unlink(missing_ok=True)
    figures.record("7b", "sqlite", injected=f"a trainer printing {size_gib:.1f} GiB (one 1 GiB line without a newline, "
                   "then 2 GiB of 64 KiB lines)", behaviour=f"parsed while it ran ({took['huge']:.0f} s): outcome and all "
                   f"{points} metric points recorded; controller peak RSS {peaks['huge']:.0f} MiB vs {peaks['small']:.0f} "
                   "MiB with a 1 MiB log (lines cut at 1 MiB for the parser, 256 queued lines at most)",
                   recover_s=None, recover_what="no recovery needed", lost=0, duplicates=0)


def test_an_endless_line_over_ssh_reaches_the_parser_cut(ssh_lab, tmp_path):
    """The ssh launcher's line splitting is bounded too: a 5 MiB line is cut at 1 MiB for the parser, whole in the log."""
    import queue

    from orchestrator.config.fleet import Machine
    from orchestrator.jobs import JobSpec
    from orchestrator.launchers.base import ExitEvent, Slot
    from orchestrator.launchers.local import MAX_LINE_BYTES
    from orchestrator.launchers.ssh import SshLauncher

    machine = ssh_lab.machine("chatty")
    launcher = SshLauncher(keepalive_s=0.5, dead_after_s=3)
    events: queue.Queue = queue.Queue()
    script = "import sys; sys.stdout.write('y' * (5 << 20) + '\\nafter\\n' + 'z' * 10)"
    try:
        launcher.start(JobSpec("s", 1, [sys.executable, "-c", script], {}), Machine(**machine.fleet_entry(tmp_path / "r")),
                       Slot("chatty", 0), tmp_path / "local", events)
        lines = []
        while True:
            event = events.get(timeout=30)
            if isinstance(event, ExitEvent):
                break
            lines.append(event.line)
    finally:
        launcher.close()
    assert event.returncode == 0 and event.error is None
    assert [len(line) for line in lines] == [MAX_LINE_BYTES, len("after\n"), 10] and lines[1] == "after\n"
    assert (tmp_path / "local" / "train.log").stat().st_size == (5 << 20) + len("\nafter\n") + 10
