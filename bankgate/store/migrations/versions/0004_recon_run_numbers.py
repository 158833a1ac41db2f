"""Reconciliation: run numbers per bank, and exceptions resolved by an operator.

``bg_recon_run.run_no`` is the number an operator sees (reports, ``bankgate recon
runs``), counted per bank from 1; ``bg_recon_counter`` holds each bank's last one.
Existing runs are numbered per bank in the order they were made; dry runs take no
number.  ``bg_recon_item.resolved_by`` / ``resolved_at`` / ``resolved_note`` record
who closed an exception, so that a later run of the same statement keeps it closed.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade():
    op.add_column("bg_recon_run", sa.Column("run_no", sa.Integer(), nullable=True))
    op.create_index("ix_bg_recon_run_no", "bg_recon_run", ["bank", "run_no"], unique=False)
    op.add_column("bg_recon_item", sa.Column("resolved_by", sa.String(length=64), nullable=True))
    op.add_column("bg_recon_item", sa.Column("resolved_at", sa.DateTime(), nullable=True))
    op.add_column("bg_recon_item",
                  sa.Column("resolved_note", sa.String(length=200), nullable=True))
    op.create_table(
        "bg_recon_counter",
        sa.Column("bank", sa.String(length=32), nullable=False),
        sa.Column("last_no", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("bank"),
    )
    # number the runs already made, per bank in id order (dry runs keep NULL); the
    # copy in a derived table lets MariaDB read the table it updates
    run = sa.table("bg_recon_run", sa.column("id"), sa.column("bank"), sa.column("dry_run"),
                   sa.column("run_no"))
    earlier = sa.select(run.c.id, run.c.bank).where(run.c.dry_run == 0).subquery("earlier")
    op.execute(run.update().where(run.c.dry_run == 0).values(run_no=(
        sa.select(sa.func.count()).select_from(earlier)
        .where(earlier.c.bank == run.c.bank, earlier.c.id <= run.c.id)
        .scalar_subquery())))
    counter = sa.table("bg_recon_counter", sa.column("bank"), sa.column("last_no"))
    op.execute(counter.insert().from_select(
        ["bank", "last_no"],
        sa.select(run.c.bank, sa.func.max(run.c.run_no)).where(run.c.run_no.is_not(None))
        .group_by(run.c.bank)))
