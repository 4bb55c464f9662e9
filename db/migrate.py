"""Schema upgrades of our `orch_` tables, by Alembic (revisions in db/migrations/versions).

Our version table is `orch_alembic_version`, apart from the `alembic_version` table of Optuna's own migrations
in the same database. `upgrade(engine)` brings any database to the newest revision: a new one gets every table,
one made before migrations existed (no version table) starts at the baseline (which adds the columns it lacks),
one at an older revision gets the later ones. Each upgrade is one transaction that other processes opening the
same database wait for (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock), so two `orch` commands started
together on a new database do not both create its tables.
"""

from __future__ import annotations

from functools import lru_cache

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from .revision import MIGRATIONS, VERSION_TABLE
_PG_LOCK_KEY = 0x6F726368  # "orch": the advisory lock every orch process takes while it migrates


class NewerSchema(Exception):
    """The database was migrated by a newer orch: a revision this one does not know."""


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@lru_cache(maxsize=1)
def head() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head()


def current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()


def upgrade(engine: Engine) -> str | None:
    """Migrate to the newest revision; returns the revision the database was at (None: new or pre-migrations)."""
    with engine.connect() as conn:  # the common case, a database already at head, reads one row
        at = current(conn)
        conn.rollback()
    if at == head():
        return at
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        at = current(conn)  # again, under the lock: another process may have migrated meanwhile
        if at == head():
            return at
        try:
            command.upgrade(_config(conn), "head")
        except CommandError as exc:
            if at is not None and "Can't locate revision" in str(exc):
                raise NewerSchema(f"schema revision {at} is newer than this orch's {head()}") from None
            raise
    return at


__all__ = ["VERSION_TABLE", "NewerSchema", "current", "head", "upgrade"]
