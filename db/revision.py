"""Which schema revision a database is at, read without loading Alembic (150 ms of every `orch` command otherwise).

Revisions are named after their files in db/migrations/versions, numbered in order, so the newest file is the head
(tests/orch/test_migrations.py checks this against Alembic's own head). `db/migrate.py` does the upgrading.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

VERSION_TABLE = "orch_alembic_version"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


@lru_cache(maxsize=1)
def newest_revision() -> str:
    return max(p.stem for p in (MIGRATIONS / "versions").glob("[0-9]*.py"))


def at_head(engine: Engine) -> bool:
    """True when the database's version table names the newest revision; False for anything else (a new database,
    an older one, one this check cannot read: the caller's upgrade then decides, and reports what is wrong)."""
    try:
        with engine.connect() as conn:
            return conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar() == newest_revision()
    except SQLAlchemyError:
        return False
