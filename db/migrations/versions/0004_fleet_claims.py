"""The fleet's slot claims and queue (issue 20): `orch_slot_blocks` (a machine's GPUs or CPU slots, 32 a row, as a mask
of the free ones), `orch_slot_claims` (who holds which, for which trial, until when) and `orch_fleet_demand` (each
running study's place in the queue).

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
        "orch_slot_blocks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("machine", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("block", sa.Integer(), nullable=False),
        sa.Column("units", sa.Integer(), nullable=False),
        sa.Column("free", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("machine", "kind", "block"),
    )
    op.create_index("ix_orch_slot_blocks_free", "orch_slot_blocks", ["kind", "free"])
    op.create_table(
        "orch_slot_claims",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("block_id", sa.Integer(), sa.ForeignKey("orch_slot_blocks.id"), nullable=False),
        sa.Column("bits", sa.BigInteger(), nullable=False),
        sa.Column("machine", sa.String(255), nullable=False),
        sa.Column("units", sa.String(255), nullable=False),
        sa.Column("controller", sa.String(255), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=True),
        sa.Column("trial_number", sa.Integer(), nullable=True),
        sa.Column("slot", sa.String(64), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_expires", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_orch_slot_claims_controller", "orch_slot_claims", ["controller"])
    op.create_index("ix_orch_slot_claims_study", "orch_slot_claims", ["study_id", "trial_number"])
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
