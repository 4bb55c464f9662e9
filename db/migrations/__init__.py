"""Alembic migrations of our `orch_` tables (run by `db.migrate.upgrade`; version table `orch_alembic_version`,
apart from Optuna's `alembic_version`). A change to db/models.py needs a revision here:
tests/orch/test_migrations.py fails while the migrated schema and the models differ."""
