"""Reconciliation: statements fetched, runs, items, and the per-date run lock.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade():
    op.create_table(
        "bg_recon_item",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("category", sa.String(length=16), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=True),
        sa.Column("customer_no", sa.String(length=32), nullable=True),
        sa.Column("bank_amount", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("our_amount", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("action", sa.String(length=10), nullable=False),
        sa.Column("payment_id", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_bg_recon_item_run", "bg_recon_item", ["run_id", "category"], unique=False)
    op.create_table(
        "bg_recon_lock",
        sa.Column("bank", sa.String(length=32), nullable=False),
        sa.Column("settle_date", sa.Date(), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=False),
        sa.Column("since", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("bank", "settle_date"),
    )
    op.create_table(
        "bg_recon_run",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("bank", sa.String(length=32), nullable=False),
        sa.Column("settle_date", sa.Date(), nullable=False),
        sa.Column("statement_id", sa.BigInteger(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("dry_run", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("bank_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("bank_total", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("ours_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("ours_total", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_bg_recon_run_bank_date", "bg_recon_run", ["bank", "settle_date"], unique=False
    )
    op.create_table(
        "bg_statement",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("bank", sa.String(length=32), nullable=False),
        sa.Column("settle_date", sa.Date(), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("record_count", sa.Integer(), nullable=False),
        sa.Column("total_amount", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("fetched_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("bank", "settle_date", "sha256", name="uq_bg_statement_file"),
    )
