"""Engine and session setup for the results database: a SQLite file by default, any SQLAlchemy URL.

SQLite is opened in WAL mode with `BEGIN IMMEDIATE` transactions and a busy timeout (several writer
processes then neither fail with `database is locked` nor lose read-modify-write updates).
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, inspect, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from .revision import at_head
from .models import SCHEMA_VERSION, Meta
from .errors import DatabaseError, DatabaseUrlError  # noqa: F401 (re-exported by the package)
from .reconnect import wait_for_server

DEFAULT_DB_FILE = "orch.db"
BUSY_TIMEOUT_S = 30.0
READ_ONLY = "orch_read_only"  # execution option of `Database.read_session`'s connection


def default_url() -> str:
    return os.environ.get("ORCH_DB") or f"sqlite:///{Path(DEFAULT_DB_FILE).resolve()}"


def safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        return _masked(url)


def _masked(url: str) -> str:
    """An unparseable URL as it may be shown: whatever stands where a password would (`//user:PASSWORD@`) hidden."""
    return re.sub(r"(//[^/@:]*:)[^@]*@", r"\1***@", url)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # pragma: no cover - exercised by every sqlite test
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # pragma: no cover
        # a read-only transaction (`Database.read_session`) takes no write lock: under WAL it waits for no writer
        if conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN")
            return
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def check_sqlite_file(url: str, database: str) -> None:
    """A SQLite URL must name a file that is a SQLite database, or a new file in a directory that exists: a typo
    in the URL must not create directories (anywhere, even at the root). Checked before anything is opened."""
    if database.startswith("file:"):
        return  # a URI filename (`sqlite:///file:x?mode=ro&uri=true`): SQLite parses it
    path = Path(database).expanduser()
    shown = safe_url(url)
    if path.is_dir():
        raise DatabaseUrlError(f"database {shown}: {path} is a directory (fix: name a database file in it, e.g. "
                            f"sqlite:///{path / DEFAULT_DB_FILE})")
    if not path.exists():
        parent = path.parent
        if not parent.is_dir():
            raise DatabaseUrlError(f"database {shown}: directory {parent} does not exist, and it is not created for you "
                                f"(fix: check the path for a typo, or create the directory first: mkdir -p {parent})")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise DatabaseUrlError(f"database {shown}: cannot create a file in {parent} (permission denied) (fix: pass a "
                                "path in a directory you can write, with --db / ORCH_DB)")
        return
    if not path.is_file():
        raise DatabaseUrlError(f"database {shown}: {path} is not a regular file (fix: pass the path of a SQLite database file)")
    # A file that is not a database is refused by SQLite when it first reads the header (Database() turns that into
    # one message). It is not read here: closing any descriptor of a database file drops every POSIX lock this
    # process holds on it through SQLite, which corrupts the database under another of its connections.


def make_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise DatabaseUrlError(f"database URL {_masked(url)!r} is not a SQLAlchemy URL (fix: use sqlite:///PATH or "
                            "postgresql+psycopg://USER@HOST:PORT/DB)") from None
    kwargs: dict = {"future": True}
    if parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_S, "check_same_thread": False}
        if parsed.database and parsed.database != ":memory:":
            check_sqlite_file(url, parsed.database)
    else:
        kwargs["pool_pre_ping"] = True
        if parsed.get_backend_name() == "postgresql":
            kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        engine = create_engine(parsed, **kwargs)
    except (ArgumentError, ImportError, SQLAlchemyError) as exc:
        raise DatabaseError(f"cannot use database {safe_url(url)}: {exc} (fix: check the URL's driver, "
                            "e.g. postgresql+psycopg://, and that the driver is installed)") from None
    if parsed.get_backend_name() == "sqlite":
        _sqlite_pragmas(engine)
    else:
        wait_for_server(engine, safe_url(url))  # a server that goes away for a while is waited for (bounded)
    return engine


class Database:
    """The results database: engine, sessions, and the schema of our `orch_` tables."""

    def __init__(self, url: str | None = None, create: bool = True) -> None:
        self.url = url or default_url()
        self.engine = make_engine(self.url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        try:
            if create:
                self.create_schema()
            else:
                with self.engine.connect():
                    pass
        except OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise DatabaseError(f"cannot reach database {safe_url(self.url)}: {reason} (fix: start the server, "
                                "or pass a reachable URL with --db / ORCH_DB)") from None
        except SQLAlchemyError as exc:  # not a database, a corrupt file, a schema that is not ours
            orig = getattr(exc, "orig", None)
            reason = (str(orig) if orig is not None else str(exc)).strip().splitlines()[0][:300]
            raise DatabaseUrlError(f"cannot use database {safe_url(self.url)}: {reason} (fix: pass the URL of an orch "
                                "database, or of a new, empty one)") from None

    def create_schema(self) -> None:
        if not at_head(self.engine):
            from .migrate import NewerSchema, upgrade  # Alembic loads only when a database may need it

            try:
                upgrade(self.engine)  # a new database gets our tables, an older one the revisions it lacks
            except NewerSchema as exc:
                raise DatabaseError(f"database {safe_url(self.url)}: {exc} (fix: upgrade orch)") from None
        for attempt in range(2):
            try:
                with self.session() as s:
                    row = s.get(Meta, "schema_version")
                    if row is None:
                        s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
                    elif int(row.value) > SCHEMA_VERSION:
                        raise DatabaseError(f"database {safe_url(self.url)} has schema version {row.value}, newer than "
                                            f"this orch ({SCHEMA_VERSION}) (fix: upgrade orch)")
                return
            except IntegrityError:  # PostgreSQL: another process opening the new database wrote the row first
                if attempt:
                    raise

    def has_schema(self) -> bool:
        return inspect(self.engine).has_table("orch_studies")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on any error."""
        s = self._sessions()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A transaction that only reads: on SQLite a deferred BEGIN (no write lock, so it neither waits for the
        writers of other processes nor makes them wait); elsewhere the same as `session`. A write in it fails on
        SQLite when another writer came first (SQLITE_BUSY_SNAPSHOT), so it is for reads only."""
        with self.session() as s:
            s.connection(execution_options={READ_ONLY: True})
            yield s

    def scalar(self, stmt):
        with self.session() as s:
            return s.scalar(stmt)

    def dispose(self) -> None:
        self.engine.dispose()


__all__ = ["Database", "DatabaseError", "DatabaseUrlError", "default_url", "safe_url", "is_sqlite", "select"]
