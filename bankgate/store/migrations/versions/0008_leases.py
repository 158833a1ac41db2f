"""Leases (``bg_lease``, bankgate/store/leases.py): which process runs a job now.

One row per lease: the job's name (``recon:{bank}:{date}``, ``cutoff:{bank}:{date}``,
``expiry`` ...), the process holding it (host:pid:id), when it took it and last
renewed it, until when it holds, when a job that runs once was finished, and what
the job is (JSON).  The reconciliation's run lock becomes the lease
``recon:{bank}:{date}``; ``bg_recon_lock`` is no longer used (it is left in place
for a later migration to drop).  Its rows are not carried over: every node is
stopped for an upgrade, so a row left there is the lock of a run whose process is
gone, and the next run of that bank and date marks such a run as interrupted.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade():
    op.create_table(
        "bg_lease",
        sa.Column("name", sa.String(length=160), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=False),
        sa.Column("acquired_at", sa.DateTime(), nullable=False),
        sa.Column("renewed_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("job", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade():
    op.drop_table("bg_lease")
