"""Fault 1: the controller is killed with SIGKILL at 10 random moments of a study and started again each time.

Afterwards: the whole budget is complete, every job that printed its final line has its outcome recorded (0
outcomes lost), no trial number ever started two jobs and every re-run of a parameter set is a recorded retry
of a lost trial (0 silent duplicates), our rows agree with Optuna's, and the seeded sampler did not replay its
points after a restart (it continues from the study's history).
"""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from db import Database
from tests.conftest import orch, stand_in_study, wait_for
from tests.orch._checks import assert_agrees_with_optuna, rows_of

from .conftest import backend, start_controller

KILLS = 10
MAX_TRIALS = 24  # far more work than 10 short controller lives can finish, however fast the controller is


def _study(tmp_path: Path, marker: Path) -> Path:
    path = stand_in_study(tmp_path, extra_args=["--wall-s", "0.8", "--marker", str(marker)], max_trials=MAX_TRIALS,
                          parallel=2, dispatch="continuous", sampler="tpe", retries=KILLS * 2)
    spec = yaml.safe_load(path.read_text())
    for param in spec["parameters"].values():
        param.pop("step")  # continuous values: two trials with equal values can only be a retry
    spec["arguments"]["flags"]["--stage-durations"] = "{stage1:.10f},{stage2:.10f},{stage3:.10f}"  # sums to 1
    spec["sampler"]["options"] = {"n_startup_trials": 4}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _started_pids(marker: Path) -> list[int]:
    return [int(line.split()[0]) for line in marker.read_text().splitlines()] if marker.exists() else []


@pytest.mark.slow
def test_sigkill_at_ten_random_moments_loses_nothing_and_runs_nothing_twice(db_url, tmp_path, figures):
    marker = tmp_path / "starts.txt"
    assert orch("study", "create", "s", "--from", str(_study(tmp_path, marker)), "--db", db_url, cwd=tmp_path).returncode == 0
    db = Database(db_url)
    rng = random.Random(20261121)
    kills, moments, resumed_in = 0, [], []
    while kills < KILLS:
        seen = {r.number for r in rows_of(db, "s")}
        began = time.monotonic()
        with open(tmp_path / f"controller-{kills}.log", "w") as out:
            proc = start_controller(db_url, tmp_path, stdout=out)
        moment = rng.uniform(0.4, 2.5)
        first_new = None
        while time.monotonic() - began < moment and proc.poll() is None:
            if first_new is None and {r.number for r in rows_of(db, "s")} - seen:
                first_new = time.monotonic() - began
            time.sleep(0.05)
        assert proc.poll() is None, f"the study ended before kill {kills + 1}: raise MAX_TRIALS"
        proc.kill()
        proc.wait(timeout=10)
        kills += 1
        moments.append(round(moment, 2))
        if first_new is not None:
            resumed_in.append(first_new)
        # the jobs die with their controller (PR_SET_PDEATHSIG), with nobody cleaning up
        wait_for(lambda: not any(_pid_alive(p) for p in _started_pids(marker)), 15, "orphaned jobs to end")

    restarted = time.monotonic()
    with open(tmp_path / "controller-final.log", "w") as out:
        final = start_controller(db_url, tmp_path, stdout=out)
    seen = {r.number for r in rows_of(db, "s")}
    wait_for(lambda: {r.number for r in rows_of(db, "s")} - seen or final.poll() is not None, 60, "a dispatch after restart")
    resumed_in.append(time.monotonic() - restarted)
    assert final.wait(timeout=180) == 0, (tmp_path / "controller-final.log").read_text()[-3000:]
    logs = "".join((tmp_path / f"controller-{i}.log").read_text() for i in range(KILLS))
    logs += (tmp_path / "controller-final.log").read_text()
    assert "Traceback" not in logs

    rows = assert_agrees_with_optuna(db, "s")
    complete = [r for r in rows if r.state == "complete"]
    lost = [r for r in rows if r.state == "lost"]
    assert len(complete) == MAX_TRIALS  # the whole budget
    assert {r.state for r in rows} <= {"complete", "lost"}
    # 0 outcomes lost: every job that printed its final line has its outcome in the database
    finished_logs = [r for r in rows if r.log_path and Path(r.log_path).is_file()
                     and '"event": "final"' in Path(r.log_path).read_text()]
    assert all(r.state == "complete" for r in finished_logs)
    trial_dirs = {int(p.name.split("-")[1]) for p in (tmp_path / "runs" / "s").glob("trial-*")}
    assert trial_dirs <= {r.number for r in rows}  # no job ran that the database does not know
    # 0 duplicates: one job at most per trial number; equal values only along a recorded retry chain
    starts = Counter(int(line.split()[2]) for line in marker.read_text().splitlines())  # --seed is the trial number
    assert max(starts.values()) == 1 and set(starts) <= {r.number for r in rows}
    by_number = {r.number: r for r in rows}
    for row in rows:
        if row.retry_of is not None:
            original = by_number[row.retry_of]
            sampled = ("stage1", "stage2")  # a trial asked but never dispatched is recorded with its sampled values
            assert original.state == "lost" and row.attempt == original.attempt + 1
            if any(k in original.params for k in sampled):
                assert [original.params[k] for k in sampled] == [row.params[k] for k in sampled]
            # else: killed between Optuna's ask and the sampling of its values; no job ran, nothing to compare
    for row in lost:
        assert any(r.retry_of == row.number for r in rows), f"lost trial {row.number} has no retry"
    originals = [r for r in rows if r.retry_of is None]
    values = Counter((round(r.params["stage1"], 12), round(r.params["stage2"], 12)) for r in originals)
    assert max(values.values()) == 1  # the sampler did not replay its points after a restart
    from_logs = logs.count("outcome taken from its log")
    figures.record("1", backend(db_url), injected=f"SIGKILL of the controller at {KILLS} random moments "
                   f"({min(moments):.1f}-{max(moments):.1f} s after each start), then `orch study run` again",
                   behaviour=f"recovery on each start: {len(lost)} trials that died with the controller marked lost, re-run as "
                   f"recorded retries, {from_logs} outcomes taken from finished logs; the budget of {MAX_TRIALS} "
                   "complete; Optuna and our tables agree; the sampler did not replay",
                   recover_s=round(statistics.median(resumed_in), 2), recover_what="start to first dispatch (median)",
                   lost=0, duplicates=0)
