"""A trial's job reference: what its launcher finds the job again by after a controller restart (a Slurm job id).

Revision ID: 0003_trial_job_ref
Revises: 0002_requests_and_drain_reason
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_trial_job_ref"
down_revision = "0002_requests_and_drain_reason"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("orch_trials", sa.Column("job_ref", sa.String(255), nullable=True))
