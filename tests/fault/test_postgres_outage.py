"""Fault 5: the PostgreSQL server is stopped for 10 s while a study runs (its own server: the session's one is
shared). The controller waits for it (db/reconnect.py) and goes on: no outcome lost, no metric point lost, no
retry needed. A server that stays away longer than ORCH_DB_WAIT_S ends the run with a clear error, and the next
`orch study run` resumes.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select

from db import Database, EventRow, MetricPointRow, TrialRow
from tests.conftest import PostgresServer, orch, stand_in_study, wait_for
from tests.orch._checks import assert_agrees_with_optuna, rows_of

from .conftest import start_controller

OUTAGE_S = 10.0
VAL_POINTS = 20  # per trial: --steps 100 --val-every 5


class RestartablePostgres(PostgresServer):
    def stop_server(self) -> None:
        self._run(self.pg_ctl, "-D", str(self.dir), "-m", "fast", "-w", "stop")

    def start_server(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(self.pg_ctl, "-D", str(self.dir), "-o", options, "-l", str(self.dir / "server.log"), "-w", "start")


@pytest.fixture
def own_postgres():
    server = RestartablePostgres()
    server.start()
    yield server
    server.stop()


def _latest_write(db: Database) -> datetime | None:
    with db.session() as s:
        stamps = [s.scalar(select(func.max(TrialRow.heartbeat_at))), s.scalar(select(func.max(TrialRow.ended_at))),
                  s.scalar(select(func.max(EventRow.at))), s.scalar(select(func.max(MetricPointRow.recorded_at)))]
    stamps = [t if t.tzinfo else t.replace(tzinfo=timezone.utc) for t in stamps if t is not None]
    return max(stamps, default=None)


def _running_with_points(db: Database, count: int) -> bool:
    running = [r for r in rows_of(db, "s") if r.state == "running"]
    if len(running) < count:
        return False
    with db.session() as s:
        return all(s.scalar(select(func.count()).select_from(MetricPointRow).where(MetricPointRow.trial_id == r.id))
                   for r in running)


@pytest.mark.postgres
@pytest.mark.slow
def test_a_ten_second_outage_is_waited_out(own_postgres, tmp_path, figures):
    url = own_postgres.create_database()
    study = stand_in_study(tmp_path, extra_args=["--wall-s", "5", "--val-every", "5"], max_trials=4, parallel=2,
                           dispatch="continuous")
    assert orch("study", "create", "s", "--from", str(study), "--db", url, cwd=tmp_path).returncode == 0
    db = Database(url)
    with open(tmp_path / "controller.log", "w") as out:
        controller = start_controller(url, tmp_path, stdout=out)
    try:
        wait_for(lambda: _running_with_points(db, 2), 60, "two trials streaming their points")
        db.dispose()
        own_postgres.stop_server()
        time.sleep(OUTAGE_S)  # the injected fault: the server stays down this long
        assert controller.poll() is None, "the controller gave up during a 10 s outage"
        own_postgres.start_server()
        back = datetime.now(timezone.utc)
        restarted = time.monotonic()
        wait_for(lambda: (_latest_write(db) or back) > back, 60, "the controller's first write after the outage")
        recovered_s = time.monotonic() - restarted
        assert controller.wait(timeout=120) == 0, (tmp_path / "controller.log").read_text()[-3000:]
    finally:
        if controller.poll() is None:
            controller.kill()
    output = (tmp_path / "controller.log").read_text()
    assert "Traceback" not in output
    rows = assert_agrees_with_optuna(db, "s")
    assert [r.state for r in rows] == ["complete"] * 4 and all(r.retry_of is None for r in rows)
    with db.session() as s:
        for row in rows:  # the lines printed during the outage reached the database afterwards
            points = s.scalar(select(func.count()).select_from(MetricPointRow).where(
                MetricPointRow.trial_id == row.id, MetricPointRow.kind == "val"))
            assert points == VAL_POINTS, (row.number, points)
    figures.record("5", "postgresql", injected=f"PostgreSQL stopped (`pg_ctl stop -m fast`) for {OUTAGE_S:g} s with "
                   "2 trials running and streaming", behaviour="every transaction started during the outage waited for "
                   "the server (bounded by ORCH_DB_WAIT_S, default 120 s); trials that ended meanwhile were recorded "
                   "after it; no retry needed; all metric points stored",
                   recover_s=round(recovered_s, 2), recover_what="server back to the controller's next write",
                   lost=0, duplicates=0)


@pytest.mark.postgres
@pytest.mark.slow
def test_an_outage_longer_than_the_bound_stops_the_run_clearly_and_it_resumes(own_postgres, tmp_path):
    url = own_postgres.create_database()
    study = stand_in_study(tmp_path, extra_args=["--wall-s", "8", "--val-every", "5"], max_trials=1, parallel=1)
    assert orch("study", "create", "s", "--from", str(study), "--db", url, cwd=tmp_path).returncode == 0
    db = Database(url)
    controller = start_controller(url, tmp_path, env={"ORCH_DB_WAIT_S": "3"})
    try:
        wait_for(lambda: _running_with_points(db, 1), 60, "the trial streaming its points")
        db.dispose()
        own_postgres.stop_server()
        stopped = time.monotonic()
        output, _ = controller.communicate(timeout=60)
        gave_up_s = time.monotonic() - stopped
    finally:
        if controller.poll() is None:
            controller.kill()
        own_postgres.start_server()
    assert controller.returncode == 3, output
    assert "lost the database postgresql+psycopg://orch@127.0.0.1" in output and "ORCH_DB_WAIT_S=3" in output
    assert "(fix: start the database server; `orch study run` then resumes" in output
    assert "Traceback" not in output and gave_up_s < 30
    resumed = orch("study", "run", "s", "--db", url, "--plain", cwd=tmp_path, timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    rows = assert_agrees_with_optuna(db, "s")
    assert [(r.state, r.retry_of) for r in rows] == [("lost", None), ("complete", 0)]
