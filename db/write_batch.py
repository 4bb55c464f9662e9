"""Writes gathered during one transaction and sent as one `executemany` per statement when it ends: on
PostgreSQL each statement is a round trip to the server, so a pass of the controller that finishes and
starts many trials sends a few batches instead of a few statements per trial. On PostgreSQL (psycopg 3) the
batches themselves go out in one pipeline: the server's answers are read once, after the last one, and an
error in any of them is raised there (as SQLAlchemy's error for it); the transaction is then rolled back.

Statements are built once (bound parameters only) and grouped by the statement and the set of parameter
names (an executemany needs the same names in every row); groups run in the order they first appeared, rows
within a group in the order they were added. Inserts of new rows that other rows refer to (`first=True`: a new
trial, whose parameters and attributes follow it in the batch) run before every other group. Nothing in a
batch may return rows: build inserts with `.inline()` (no RETURNING of the new id). A caller that must read
what it wrote first calls `flush`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError


class WriteBatch:
    def __init__(self) -> None:
        self._groups: dict[tuple[bool, int, frozenset], tuple[Any, list[dict]]] = {}

    def add(self, statement, params: dict, first: bool = False) -> None:
        key = (not first, id(statement), frozenset(params))
        self._groups.setdefault(key, (statement, []))[1].append(params)

    def extend(self, statement, rows: list[dict]) -> None:
        """Add rows that all have the same parameter names."""
        if rows:
            self._groups.setdefault((True, id(statement), frozenset(rows[0])), (statement, []))[1].extend(rows)

    def __len__(self) -> int:
        return sum(len(rows) for _, rows in self._groups.values())

    def flush(self, conn: Connection) -> None:
        groups, self._groups = self._groups, {}
        if not groups:
            return
        with _pipeline(conn):
            for key in sorted(groups, key=lambda k: k[0]):  # stable: `first` groups, then the rest, each in order
                statement, rows = groups[key]
                conn.execute(statement, rows)

    def clear(self) -> None:
        self._groups = {}


@contextmanager
def _pipeline(conn: Connection) -> Iterator[None]:
    """psycopg 3's pipeline mode on PostgreSQL (one round trip for the statements inside); nothing elsewhere."""
    if conn.dialect.driver != "psycopg":
        yield
        return
    import psycopg

    driver = conn.connection.driver_connection
    if not isinstance(driver, psycopg.Connection) or not psycopg.Pipeline.is_supported():
        yield
        return
    try:
        with driver.pipeline():
            yield
    except psycopg.Error as exc:  # a statement's error, raised as the answers are read
        raise DBAPIError.instance(None, None, exc, psycopg.Error) from exc


__all__ = ["WriteBatch"]
