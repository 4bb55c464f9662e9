"""A controller SIGKILLed mid-run while another study waits for its GPUs (SQLite, the local machine). Its jobs take a
while to stop (the recorder lingers 6 s after SIGTERM, as a trainer saving a checkpoint would): the other controller
finds them still running through the launcher, keeps their slots claimed until they end, then takes them; the killed
study, run again, re-runs its lost trials as recorded retries. Never two jobs on one GPU; no trial run twice.
And a study run again at once, whose retries finish on other GPUs while its killed run's jobs still stop: it waits for
them before it ends, so that nothing of it holds the fleet afterwards."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import select

from db import Database, EventRow, FleetDemandRow, SlotBlockRow, SlotClaimRow
from tests.conftest import orch, wait_for
from tests.orch._checks import assert_agrees_with_optuna, rows_of

from .shared import gpu_box, overlaps, runs, start, study_file

LINGER_S = 6.0  # longer than a reaper period (the heartbeat, 5 s): some check finds the job still running
STOPPING_S = 4.0  # under the kill grace (5 s) the restarted run gives a job it finds still running: it stops by itself


@pytest.mark.slow
def test_a_killed_controllers_gpus_wait_for_its_jobs_then_go_to_the_waiting_study(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'orch.db'}"
    fleet = gpu_box(tmp_path)
    record = tmp_path / "record.jsonl"
    fast = tmp_path / "fast"  # a's jobs run until killed; its retries, once this exists, 1 s
    for name in ("a", "b"):
        path = study_file(tmp_path, name, record, trials=2, parallel=2, wall_s=1.0, linger_s=LINGER_S,
                          slow_while_missing=fast if name == "a" else None)
        assert orch("study", "create", name, "--from", str(path), "--db", db_url, cwd=tmp_path).returncode == 0
    db = Database(db_url)
    a = start(db_url, tmp_path, "a", fleet)
    b = again = None
    try:
        wait_for(lambda: len(_started(record)) == 2, 60, "both of a's jobs to start")
        b = start(db_url, tmp_path, "b", fleet)
        wait_for(lambda: _events(db, "study.waiting", "waiting"), 60, "b to wait for a's GPUs")
        a.kill()
        a.wait(timeout=10)
        killed = datetime.now(timezone.utc).timestamp()
        out_b, _ = b.communicate(timeout=120)
        assert b.returncode == 0 and "Traceback" not in out_b, out_b
        fast.touch()
        again = start(db_url, tmp_path, "a", fleet)
        out_a, _ = again.communicate(timeout=120)
        assert again.returncode == 0 and "Traceback" not in out_a, out_a
    finally:
        for proc in (a, b, again):
            if proc is not None and proc.poll() is None:
                proc.kill()
    seen = runs(record, {str(tmp_path / "runs"): "box"})
    assert overlaps(seen) == []
    assert len({(r.study, r.trial) for r in seen}) == len(seen) == 6  # 2 of a (killed), 2 of b, 2 retries of a
    killed_jobs = [r for r in seen if r.study == "a" and r.termed]
    assert len(killed_jobs) == 2 and all(r.end - killed >= LINGER_S - 1 for r in killed_jobs)  # they lingered
    first_b = min(r.start for r in seen if r.study == "b")
    assert first_b >= max(r.end for r in killed_jobs)  # b waited for them
    held = _events(db, "claim.held")
    freed = _events(db, "claim.freed")
    assert {e.trial_number for e in held} == {e.trial_number for e in freed} == {0, 1}, (held, freed)
    assert all(e.at.replace(tzinfo=timezone.utc).timestamp() >= max(r.end for r in killed_jobs) - 0.5 for e in freed)
    assert all("job no longer runs" in e.message for e in freed)
    rows = assert_agrees_with_optuna(db, "a")
    assert sorted((r.state, r.retry_of) for r in rows) == [("complete", 0), ("complete", 1), ("lost", None),
                                                            ("lost", None)]
    with db.session() as s:
        assert s.scalar(select(SlotClaimRow)) is None  # nothing held
        assert all(b.free == (1 << b.units) - 1 for b in s.scalars(select(SlotBlockRow)))  # every unit free again
        assert s.scalar(select(FleetDemandRow)) is None
    assert [r.state for r in rows_of(db, "b")] == ["complete", "complete"]


@pytest.mark.slow
def test_a_study_run_again_ends_only_once_its_killed_runs_jobs_have_stopped(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'orch.db'}"
    fleet = gpu_box(tmp_path, gpus=4)  # the retries run on the two GPUs the killed run's stopping jobs leave free
    record = tmp_path / "record.jsonl"
    fast = tmp_path / "fast"
    path = study_file(tmp_path, "a", record, trials=2, parallel=2, wall_s=1.0, linger_s=STOPPING_S,
                      slow_while_missing=fast)
    assert orch("study", "create", "a", "--from", str(path), "--db", db_url, cwd=tmp_path).returncode == 0
    db = Database(db_url)
    first = start(db_url, tmp_path, "a", fleet)
    again = None
    try:
        wait_for(lambda: len(_started(record)) == 2, 60, "both of a's jobs to start")
        first.kill()
        first.wait(timeout=10)
        fast.touch()
        again = start(db_url, tmp_path, "a", fleet)
        out, _ = again.communicate(timeout=120)
        assert again.returncode == 0 and "Traceback" not in out, out
        ended = datetime.now(timezone.utc).timestamp()
    finally:
        for proc in (first, again):
            if proc is not None and proc.poll() is None:
                proc.kill()
    seen = runs(record, {str(tmp_path / "runs"): "box"})
    assert overlaps(seen) == []
    killed_jobs = [r for r in seen if r.termed]
    retries = [r for r in seen if not r.termed]
    assert len(killed_jobs) == len(retries) == 2
    assert max(r.end for r in retries) < min(r.end for r in killed_jobs)  # the retries were done first ...
    assert ended >= max(r.end for r in killed_jobs)  # ... and the run waited for the stopping jobs
    assert "waiting for 2 job(s) of an earlier run to stop" in out, out
    freed = _events(db, "claim.freed")
    assert {e.trial_number for e in freed} == {0, 1}, freed
    assert all(e.at.replace(tzinfo=timezone.utc).timestamp() >= max(r.end for r in killed_jobs) - 0.5 for e in freed)
    with db.session() as s:
        assert s.scalar(select(SlotClaimRow)) is None  # nothing held once the run has ended
        assert all(b.free == (1 << b.units) - 1 for b in s.scalars(select(SlotBlockRow)))


def _started(record) -> list:
    return [line for line in record.read_text().splitlines() if '"start"' in line] if record.exists() else []


def _events(db: Database, kind: str, new: str | None = None) -> list:
    with db.session() as s:
        query = select(EventRow).where(EventRow.kind == kind)
        if new is not None:
            query = query.where(EventRow.new == new)
        return list(s.scalars(query))
