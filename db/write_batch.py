"""Writes gathered during one transaction and sent as one `executemany` per statement when it ends: on
PostgreSQL each statement is a round trip to the server, so a pass of the controller that finishes and
starts many trials sends a few batches instead of a few statements per trial.

Statements are built once (bound parameters only) and grouped by the statement and the set of parameter
names (an executemany needs the same names in every row); groups run in the order they first appeared, rows
within a group in the order they were added. A caller that must read what it wrote first calls `flush`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection


class WriteBatch:
    def __init__(self) -> None:
        self._groups: dict[tuple[int, frozenset], tuple[Any, list[dict]]] = {}

    def add(self, statement, params: dict) -> None:
        key = (id(statement), frozenset(params))
        self._groups.setdefault(key, (statement, []))[1].append(params)

    def __len__(self) -> int:
        return sum(len(rows) for _, rows in self._groups.values())

    def flush(self, conn: Connection) -> None:
        groups, self._groups = self._groups, {}
        for statement, rows in groups.values():
            conn.execute(statement, rows)

    def clear(self) -> None:
        self._groups = {}


__all__ = ["WriteBatch"]
