"""Baseline: the `orch_` tables as they were when migrations began.

A new database gets them created. A database made by an orch from before migrations (no version table) keeps
its tables; each column of the baseline it lacks is added (with its server default, else nullable: rows already
there have no value for it), as the hand-written upgrades of that time did.

Revision ID: 0001_baseline
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None

_meta = sa.MetaData()
_TABLES = [
    sa.Table(
        "orch_meta", _meta,
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    ),
    sa.Table(
        "orch_machines", _meta,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("launcher", sa.String(16), nullable=False),
        sa.Column("gpu_count", sa.Integer(), nullable=False),
        sa.Column("gpu_type", sa.String(128)),
        sa.Column("driver_version", sa.String(64)),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("drain", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True)),
        sa.Column("note", sa.Text()),
    ),
    sa.Table(
        "orch_studies", _meta,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("optuna_study_name", sa.String(512), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("spec_yaml", sa.Text(), nullable=False),
        sa.Column("spec_path", sa.Text()),
        sa.Column("spec_dir", sa.Text()),
        sa.Column("objective_metric", sa.String(64), nullable=False),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("lease_owner", sa.String(255)),
        sa.Column("lease_expires", sa.DateTime(timezone=True)),
        sa.Column("rounds", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    ),
    sa.Table(
        "orch_batches", _meta,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("orch_studies.id"), nullable=False, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("runs", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    ),
    sa.Table(
        "orch_events", _meta,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("orch_studies.id"), index=True),
        sa.Column("trial_number", sa.Integer()),
        sa.Column("machine", sa.String(64)),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("old", sa.String(32)),
        sa.Column("new", sa.String(32)),
        sa.Column("message", sa.Text()),
    ),
    sa.Table(
        "orch_trials", _meta,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("orch_studies.id"), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("optuna_trial_id", sa.Integer()),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(64), nullable=False),
        sa.Column("repeat_index", sa.Integer(), nullable=False),
        sa.Column("retry_of", sa.Integer()),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("machine", sa.String(64)),
        sa.Column("slot", sa.String(64)),
        sa.Column("gpu_model", sa.String(128)),
        sa.Column("gpu_count", sa.Integer()),
        sa.Column("driver_version", sa.String(64)),
        sa.Column("command", sa.JSON()),
        sa.Column("env", sa.JSON()),
        sa.Column("container_image", sa.String(512)),
        sa.Column("container_image_id", sa.String(128)),
        sa.Column("code_revision", sa.String(64)),
        sa.Column("code_branch", sa.String(255)),
        sa.Column("code_dirty", sa.Boolean()),
        sa.Column("file_checksums", sa.JSON()),
        sa.Column("versions", sa.JSON()),
        sa.Column("injection_diff", sa.Text()),
        sa.Column("workdir", sa.Text()),
        sa.Column("log_path", sa.Text()),
        sa.Column("pid", sa.Integer()),
        sa.Column("pid_start", sa.String(32)),
        sa.Column("controller", sa.String(255)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("exit_code", sa.Integer()),
        sa.Column("exit_reason", sa.String(64)),
        sa.Column("value", sa.Float()),
        sa.Column("feasible", sa.Boolean()),
        sa.Column("metrics", sa.JSON()),
        sa.Column("note", sa.Text()),
        sa.UniqueConstraint("study_id", "number"),
        sa.Index("ix_orch_trials_study_state", "study_id", "state"),
    ),
    sa.Table(
        "orch_metric_points", _meta,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("trial_id", sa.Integer(), sa.ForeignKey("orch_trials.id"), nullable=False, index=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("total_steps", sa.Integer()),
        sa.Column("val_loss", sa.Float()),
        sa.Column("train_loss", sa.Float()),
        sa.Column("train_time_ms", sa.Float()),
        sa.Column("step_avg_ms", sa.Float()),
        sa.Column("extra", sa.JSON()),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("trial_id", "kind", "step"),
    ),
]


def _added_later(column: sa.Column) -> sa.Column:
    """`column` as it can be added to a table that has rows: nullable unless a server default fills them."""
    return sa.Column(column.name, column.type, server_default=column.server_default,
                     nullable=column.nullable or column.server_default is None)


def upgrade() -> None:
    bind = op.get_bind()
    existing = set(sa.inspect(bind).get_table_names())
    for table in _TABLES:  # in dependency order
        if table.name not in existing:
            table.create(bind)
            continue
        have = {c["name"] for c in sa.inspect(bind).get_columns(table.name)}
        for column in table.columns:
            if column.name not in have:
                op.add_column(table.name, _added_later(column))
