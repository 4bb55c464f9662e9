"""Additive schema upgrades: columns added to a model after a database was created.

`create_all` makes missing tables but never touches an existing one, so a database made by an older orch would
lack a newer column and every query on that table would fail. `add_missing_columns` compares each `orch_` table
with its model and issues `ALTER TABLE ... ADD COLUMN` for what is missing (the column's server default fills the
rows already there; a column without one is added as nullable). Nothing is dropped or changed.
"""

from __future__ import annotations

from sqlalchemy import MetaData, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import Column


def _column_ddl(column: Column, engine: Engine) -> str:
    preparer = engine.dialect.identifier_preparer
    ddl = f"{preparer.quote(column.name)} {column.type.compile(dialect=engine.dialect)}"
    default = column.server_default
    if default is not None:
        arg = default.arg
        text = arg if isinstance(arg, str) else str(arg.compile(dialect=engine.dialect))
        ddl += f" DEFAULT {text}"
        if not column.nullable:
            ddl += " NOT NULL"
    return ddl


def add_missing_columns(engine: Engine, metadata: MetaData) -> list[str]:
    """Add the model columns an existing table lacks; returns `table.column` for each one added."""
    inspector = inspect(engine)
    existing_tables = set(inspector.get_table_names())
    added: list[str] = []
    for table in metadata.sorted_tables:
        if table.name not in existing_tables:
            continue
        have = {c["name"] for c in inspector.get_columns(table.name)}
        missing = [c for c in table.columns if c.name not in have]
        if not missing:
            continue
        for column in missing:
            try:
                with engine.begin() as conn:
                    conn.exec_driver_sql(f"ALTER TABLE {engine.dialect.identifier_preparer.quote(table.name)} "
                                         f"ADD COLUMN {_column_ddl(column, engine)}")
            except DBAPIError:
                # another process opening the same database may have added it first
                if column.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                    raise
                continue
            added.append(f"{table.name}.{column.name}")
    return added


__all__ = ["add_missing_columns"]
