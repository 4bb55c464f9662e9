"""Fault 6: a second `orch study run` on a study that a live controller runs. It refuses at once with a clear
message (the lease in the database), dispatches nothing and leaves the running trial alone; once the first
controller is killed, the next `orch study run` takes the study over without waiting for the lease to expire
(same host, holder process gone)."""

from __future__ import annotations

import signal
import time

from db import Database
from tests.conftest import orch, stand_in_study, wait_for
from tests.orch._checks import assert_agrees_with_optuna, rows_of

from .conftest import backend, start_controller


def test_a_second_controller_refuses_and_a_dead_ones_lease_is_taken_over(db_url, tmp_path, figures):
    study = stand_in_study(tmp_path, extra_args=["--wall-s", "60"], max_trials=1, parallel=1, timeout_s=120)
    assert orch("study", "create", "s", "--from", str(study), "--db", db_url, cwd=tmp_path).returncode == 0
    db = Database(db_url)
    first = start_controller(db_url, tmp_path)
    third = None
    try:
        wait_for(lambda: any(r.state == "running" for r in rows_of(db, "s")), 60, "the first controller's trial")
        before = [(r.number, r.state, r.pid, r.controller) for r in rows_of(db, "s")]
        began = time.monotonic()
        second = orch("study", "run", "s", "--db", db_url, cwd=tmp_path)
        refused_s = time.monotonic() - began
        assert second.returncode == 2, second.stdout + second.stderr
        assert "study 's' is being run by another controller" in second.stderr
        assert before[0][3] in second.stderr and "(fix: wait for it to finish, or stop it" in second.stderr
        assert "Traceback" not in second.stdout + second.stderr
        assert [(r.number, r.state, r.pid, r.controller) for r in rows_of(db, "s")] == before  # nothing dispatched

        first.kill()
        first.wait(timeout=10)
        began = time.monotonic()
        third = start_controller(db_url, tmp_path)
        wait_for(lambda: any(r.state == "running" and r.retry_of == 0 for r in rows_of(db, "s")), 60,
                 "the next controller to take over and re-run the trial")
        takeover_s = time.monotonic() - began
        third.send_signal(signal.SIGTERM)
        out, _ = third.communicate(timeout=30)
        assert third.returncode == 130 and "Traceback" not in out, out
    finally:
        for proc in (first, third):
            if proc is not None and proc.poll() is None:
                proc.kill()
    rows = assert_agrees_with_optuna(db, "s")
    assert [(r.state, r.retry_of) for r in rows] == [("lost", None), ("lost", 0)]
    assert len({r.controller for r in rows}) == 2
    figures.record("6", backend(db_url), injected="a second `orch study run` on a study a live controller runs; then "
                   "the first killed (SIGKILL) and the study run again",
                   behaviour=f"the second refused in {refused_s:.1f} s (exit 2, names the holder and the fix), nothing "
                   "dispatched; after the kill the next controller took the lease over at once (holder's process "
                   "gone) and re-ran the trial as a recorded retry", recover_s=round(takeover_s, 2),
                   recover_what="start of the next controller to its retry running", lost=0, duplicates=0)
