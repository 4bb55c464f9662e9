"""Requests to a study's controller (`orch study stop`, `orch trial cancel`) and the reason of a drain.

Revision ID: 0002_requests_and_drain_reason
Revises: 0001_baseline
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_requests_and_drain_reason"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("orch_machines", sa.Column("drain_reason", sa.Text(), nullable=True))
    op.create_table(
        "orch_requests",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("orch_studies.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("trial_number", sa.Integer(), nullable=True),
        sa.Column("mode", sa.String(16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("requested_by", sa.String(255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
    )
    op.create_index("ix_orch_requests_study_open", "orch_requests", ["study_id", "done_at"])
