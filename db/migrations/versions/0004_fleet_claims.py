"""The fleet's slot claims and queue (issue 20): `orch_slot_units` (one row per GPU or CPU slot of a machine, held by
at most one trial across all studies) and `orch_fleet_demand` (each running study's place in the queue).

Revision ID: 0004_fleet_claims
Revises: 0003_trial_job_ref
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_fleet_claims"
down_revision = "0003_trial_job_ref"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orch_slot_units",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("machine", sa.String(255), nullable=False),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("controller", sa.String(255), nullable=True),
        sa.Column("study_id", sa.Integer(), nullable=True),
        sa.Column("trial_number", sa.Integer(), nullable=True),
        sa.Column("slot", sa.String(64), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_expires", sa.DateTime(timezone=True), nullable=True),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("machine", "unit"),
    )
    op.create_index("ix_orch_slot_units_controller", "orch_slot_units", ["controller"])
    op.create_index("ix_orch_slot_units_study", "orch_slot_units", ["study_id", "trial_number"])
    op.create_table(
        "orch_fleet_demand",
        sa.Column("study_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("controller", sa.String(255), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("gpus_per_trial", sa.Integer(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("max_gpus", sa.Integer(), nullable=True),
        sa.Column("wanted", sa.Integer(), nullable=False),
        sa.Column("held", sa.Integer(), nullable=False),
        sa.Column("usage", sa.Float(), nullable=False),
        sa.Column("usage_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_s", sa.Float(), nullable=False),
        sa.Column("waiting_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
