"""Schema migrations (Alembic, db/migrations): a new database, one made before migrations existed (the committed
stage-shift study database, a real file of an older orch), and one from a newer orch; our version table stays
apart from Optuna's."""

from __future__ import annotations

import shutil
import subprocess
import sys

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text

from db import Database, MachineRow, StudyRow, TrialRow
from db.migrate import VERSION_TABLE, head
from db.revision import at_head, newest_revision
from db.models import Base
from tests.conftest import REPO, orch

OLD_DB = REPO / "docs" / "studies" / "2026-11-21-stage-shift" / "study.db"


def _differences(db: Database) -> list:
    """What the migrated schema lacks or has beyond the models (our tables only)."""
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "include_name": lambda name, kind, _parent: kind != "table" or name.startswith("orch_") and name != VERSION_TABLE,
        })
        return compare_metadata(context, Base.metadata)


def test_a_new_database_gets_the_models_schema_and_its_own_version_table(db_url):
    db = Database(db_url)
    assert _differences(db) == []  # a model change without a revision fails here
    with db.engine.connect() as conn:
        assert conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar() == head()
        assert "alembic_version" not in inspect(conn).get_table_names()  # Optuna's, untouched by us
    assert newest_revision() == head() and at_head(db.engine)  # the fast check every command makes agrees with Alembic


def test_commands_start_without_alembic_or_scipy():
    """Every `orch` command imports the CLI: Alembic (only for a database that needs migrating) and scipy (only for
    sampling and the write-up's pick rule) stay out of its start, ~0.4 s of each command."""
    # our modules that load them (a library's own imports may change with its version: not asserted here)
    heavy = {"db.migrate", "orchestrator.samplers.frontier.model", "orchestrator.samplers.frontier.decision",
             "orchestrator.export.report", "orchestrator.analysis.pick"}
    code = f"import sys, orchestrator.cli.main; print(sorted({heavy!r} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_database_from_before_migrations_is_upgraded_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.db"
    shutil.copy(OLD_DB, path)
    url = f"sqlite:///{path}"
    with Database(url, create=False).engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        before = conn.execute(select(TrialRow.number, TrialRow.value).order_by(TrialRow.number)).all()
        optuna_version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    assert VERSION_TABLE not in tables and "orch_requests" not in tables and before
    db = Database(url)
    assert _differences(db) == []
    with db.session() as s:
        assert s.execute(select(TrialRow.number, TrialRow.value).order_by(TrialRow.number)).all() == before
        assert s.scalar(select(StudyRow.name)) == "stage-shift"
        assert all(m.drain_reason is None for m in s.scalars(select(MachineRow)))
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == optuna_version
    result = orch("study", "status", "stage-shift", "--db", url, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_a_pre_migration_table_missing_a_baseline_column_gets_it(db_url):
    db = Database(db_url)
    with db.session() as s:
        s.add(MachineRow(name="old", host="h", launcher="ssh", state="down"))
    with db.engine.begin() as conn:  # as an orch from before migrations and before the drain flag made it
        conn.execute(text("ALTER TABLE orch_machines DROP COLUMN drain"))
        conn.execute(text("ALTER TABLE orch_machines DROP COLUMN drain_reason"))
        conn.execute(text("DROP TABLE orch_requests"))
        conn.execute(text("ALTER TABLE orch_trials DROP COLUMN job_ref"))  # added by 0003, after the baseline
        conn.execute(text("DROP TABLE orch_slot_claims"))  # added by 0004
        conn.execute(text("DROP TABLE orch_slot_blocks"))
        conn.execute(text("DROP TABLE orch_fleet_demand"))
        conn.execute(text(f"DROP TABLE {VERSION_TABLE}"))
    db.dispose()
    reopened = Database(db_url)
    assert _differences(reopened) == []
    with reopened.session() as s:
        row = s.scalar(select(MachineRow).where(MachineRow.name == "old"))
        assert row.drain is False and row.state == "down" and row.drain_reason is None


def test_a_database_from_a_newer_orch_is_refused_untouched(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    Database(url).dispose()
    with Database(url, create=False).engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999_from_the_future'"))
    result = orch("study", "list", "--db", url, cwd=tmp_path)
    assert result.returncode == 3 and "Traceback" not in result.stderr
    assert "9999_from_the_future is newer than this orch's" in result.stderr and "fix: upgrade orch" in result.stderr
    with Database(url, create=False).engine.connect() as conn:
        assert conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar() == "9999_from_the_future"


def test_processes_opening_a_new_database_together_migrate_it_once(db_url, tmp_path):
    code = "import sys; from db import Database; Database(sys.argv[1])"
    procs = [subprocess.Popen([sys.executable, "-c", code, db_url], cwd=REPO, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    db = Database(db_url)
    assert _differences(db) == []
    with db.engine.connect() as conn:
        assert conn.execute(text(f"SELECT count(*) FROM {VERSION_TABLE}")).scalar() == 1
