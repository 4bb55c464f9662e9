"""Alembic's environment for our tables: run on the connection `db.migrate` hands over (already in a
transaction), with our own version table."""

from alembic import context

from db.migrate import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
