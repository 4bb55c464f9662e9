"""`orch study run` killed with SIGKILL mid-study, then run again: no trial lost, none run twice without being
recorded as a retry, our rows agree with Optuna's. Also: live streaming, and one controller per study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from db import Database
from orchestrator.launchers.local import process_alive
from tests.conftest import REPO, orch, stand_in_study, wait_for

from ._checks import assert_agrees_with_optuna, rows_of


def _start_controller(db_url: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli.main", "study", "run", "s", "--db", db_url, "--plain"],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def test_sigkill_then_resume_loses_nothing_and_runs_nothing_twice(db_url, tmp_path):
    marker = tmp_path / "starts.txt"
    study = stand_in_study(tmp_path, extra_args=["--wall-s", "1.5", "--marker", str(marker)], max_trials=6, parallel=2,
                           dispatch="continuous")
    assert orch("study", "create", "s", "--from", str(study), "--db", db_url, cwd=tmp_path).returncode == 0
    db = Database(db_url)
    controller = _start_controller(db_url, tmp_path)
    # kill once two trials have completed and two others are mid-run
    wait_for(lambda: sum(r.state == "complete" for r in rows_of(db, "s")) >= 2
              and sum(r.state == "running" for r in rows_of(db, "s")) == 2, 60, "2 complete and 2 running")
    controller.kill()
    controller.wait(timeout=10)
    killed = [r for r in rows_of(db, "s") if r.state == "running"]
    assert len(killed) == 2
    # the jobs die with their controller (PR_SET_PDEATHSIG), without anyone cleaning up
    wait_for(lambda: not any(process_alive(r.pid, r.pid_start) for r in killed), 10, "orphaned jobs to end")

    resumed = orch("study", "run", "s", "--db", db_url, "--plain", cwd=tmp_path, timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "recovery: trial" in resumed.stdout
    rows = assert_agrees_with_optuna(db, "s")
    complete = [r for r in rows if r.state == "complete"]
    lost = [r for r in rows if r.state == "lost"]
    assert len(complete) == 6  # the whole budget, no outcome lost
    assert {r.number for r in lost} == {r.number for r in killed}
    retries = {r.retry_of: r for r in rows if r.retry_of is not None}
    for row in lost:
        retry = retries[row.number]
        assert retry.params == row.params and retry.attempt == row.attempt + 1 and retry.state == "complete"
    # every start of a job is exactly one row of ours: nothing ran that the database does not know
    # (a job killed with its controller before it printed anything has a row but no marker line)
    started_pids = [int(line.split()[0]) for line in marker.read_text().splitlines()]
    assert len(started_pids) == len(set(started_pids))
    assert set(started_pids) <= {r.pid for r in rows if r.pid is not None}
    assert {r.pid for r in complete} <= set(started_pids)


def test_resume_takes_the_outcome_of_a_job_that_finished_from_its_log(sqlite_url, tmp_path):
    """A trial whose job wrote its final line but whose controller died before recording it is not re-run."""
    study = stand_in_study(tmp_path, max_trials=2, parallel=2)
    assert orch("study", "create", "s", "--from", str(study), "--db", sqlite_url, cwd=tmp_path).returncode == 0
    db = Database(sqlite_url)
    assert orch("study", "run", "s", "--db", sqlite_url, cwd=tmp_path).returncode == 0
    # rewind our row of trial 1 to `running` as a controller killed just before recording it would leave it
    from db import TrialRow
    with db.session() as s:
        row = s.get(TrialRow, rows_of(db, "s")[1].id)
        expected = row.value
        row.state, row.value, row.metrics = "running", None, None
    result = orch("study", "run", "s", "--db", sqlite_url, "--plain", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "outcome taken from its log" in result.stdout
    rows = assert_agrees_with_optuna(db, "s")
    assert [r.state for r in rows] == ["complete", "complete"] and rows[1].value == expected


def test_metric_points_reach_the_database_while_the_run_goes(sqlite_url, tmp_path):
    study = stand_in_study(tmp_path, extra_args=["--wall-s", "4"], max_trials=1, parallel=1)
    assert orch("study", "create", "s", "--from", str(study), "--db", sqlite_url, cwd=tmp_path).returncode == 0
    db = Database(sqlite_url)
    controller = _start_controller(sqlite_url, tmp_path)
    try:
        def live_point():
            from sqlalchemy import func, select
            from db import MetricPointRow
            rows = rows_of(db, "s")
            if not rows or rows[0].state != "running":
                return False
            with db.session() as s:
                return s.scalar(select(func.count()).select_from(MetricPointRow).where(MetricPointRow.trial_id == rows[0].id))
        assert wait_for(live_point, 30, "a metric point while the trial runs") >= 1
        status = orch("study", "status", "s", "--db", sqlite_url, "--json", cwd=tmp_path)
        import json
        running = json.loads(status.stdout)["running"]
        assert len(running) == 1 and running[0]["step"] >= 25 and 3.0 < running[0]["val_loss"] < 6.0
    finally:
        assert controller.wait(timeout=60) == 0


def test_a_second_controller_on_the_same_study_refuses(sqlite_url, tmp_path):
    study = stand_in_study(tmp_path, extra_args=["--hang"], max_trials=1, parallel=1, timeout_s=60)
    assert orch("study", "create", "s", "--from", str(study), "--db", sqlite_url, cwd=tmp_path).returncode == 0
    db = Database(sqlite_url)
    first = _start_controller(sqlite_url, tmp_path)
    try:
        wait_for(lambda: any(r.state == "running" for r in rows_of(db, "s")), 30, "the first controller's trial")
        second = orch("study", "run", "s", "--db", sqlite_url, cwd=tmp_path)
        assert second.returncode != 0
        assert "being run by another controller" in second.stderr and "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=30)
    assert first.returncode == 130, out
    rows = assert_agrees_with_optuna(db, "s")
    assert rows[0].state == "lost" and rows[0].exit_reason == "interrupted"


def test_a_restarted_sampler_does_not_replay_its_first_points(sqlite_url, tmp_path):
    """Seeded samplers rebuilt after a restart continue from the study's history instead of starting over."""
    study = stand_in_study(tmp_path, max_trials=4, parallel=2)
    study.write_text(study.read_text().replace("step: 0.02", "step: null"))  # continuous: no chance collisions
    assert orch("study", "create", "s", "--from", str(study), "--db", sqlite_url, cwd=tmp_path).returncode == 0
    assert orch("study", "run", "s", "--db", sqlite_url, "--max-new", "2", cwd=tmp_path).returncode == 0
    assert orch("study", "run", "s", "--db", sqlite_url, cwd=tmp_path).returncode == 0
    rows = assert_agrees_with_optuna(Database(sqlite_url), "s")
    assert len({(r.params["stage1"], r.params["stage2"]) for r in rows}) == 4
