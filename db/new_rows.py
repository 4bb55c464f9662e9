"""New rows whose ids are needed at once (a trial's params refer to its row), inserted as one executemany per
transaction instead of one INSERT ... RETURNING round trip each: the id is handed out first, the row waits in
the transaction's `WriteBatch` (ahead of the rows that refer to it) with its id set.

Where the ids come from:
- PostgreSQL: the id column's own sequence (the one its default draws from), `BLOCK` values per round trip. A
  value is never handed out twice, in any process; one never used is a gap, as after a rolled-back insert.
- SQLite: max(id) + 1, read once per transaction, past the ids this object already handed out. The results
  database opens every transaction with BEGIN IMMEDIATE (db/engine.py): no other writer inserts before it commits.
- Any other database: the row is inserted at once, with its id read back, as before.
"""

from __future__ import annotations

from sqlalchemy import Table, func, insert, select, text
from sqlalchemy.engine import Connection

from .write_batch import WriteBatch

BLOCK = 64  # PostgreSQL sequence values fetched per round trip
_NEXTVAL = text("SELECT nextval(pg_get_serial_sequence(:table, :column)) FROM generate_series(1, :n)")


class NewRows:
    def __init__(self, table: Table, dialect: str) -> None:
        (self._pk,) = table.primary_key.columns
        self._table, self._dialect = table, dialect
        self._insert = insert(table)  # built once: each row only binds its parameters
        self._insert_with_id = insert(table).inline()  # in a batch: no id read back
        self._block: list[int] = []  # PostgreSQL: sequence values fetched, not handed out yet
        self._transaction = None  # SQLite: the transaction `_next` belongs to
        self._next = 0

    def add(self, conn: Connection, batch: WriteBatch | None, params: dict) -> int:
        """Insert a row of `params` (without its id) in `conn`'s transaction; its id."""
        if batch is None or self._dialect not in ("postgresql", "sqlite"):
            return conn.execute(self._insert, params).inserted_primary_key[0]
        row_id = self._take(conn)
        batch.add(self._insert_with_id, {self._pk.name: row_id, **params}, first=True)
        return row_id

    def _take(self, conn: Connection) -> int:
        if self._dialect == "postgresql":
            if not self._block:
                self._block = list(conn.execute(_NEXTVAL, dict(table=self._table.name, column=self._pk.name,
                                                               n=BLOCK)).scalars())
            return self._block.pop(0)
        transaction = conn.get_transaction()
        if transaction is not self._transaction:  # a new transaction: rows may have been added since the last read
            self._transaction = transaction
            self._next = max(self._next, (conn.execute(select(func.max(self._pk))).scalar() or 0) + 1)
        row_id, self._next = self._next, self._next + 1
        return row_id


__all__ = ["NewRows", "BLOCK"]
