"""The gateway's tables, first version.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade():
    op.create_table(
        "bg_allocation",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("payment_id", sa.BigInteger(), nullable=False),
        sa.Column("bill_id", sa.String(length=32), nullable=False),
        sa.Column("principal", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("late_fee", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_bg_allocation_bill", "bg_allocation", ["bill_id"], unique=False)
    op.create_index(
        "ix_bg_allocation_payment", "bg_allocation", ["payment_id"], unique=False
    )
    op.create_table(
        "bg_audit",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=100), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_bg_audit_at", "bg_audit", ["at"], unique=False)
    op.create_table(
        "bg_cutoff",
        sa.Column("bank", sa.String(length=32), nullable=False),
        sa.Column("trade_date", sa.Date(), nullable=False),
        sa.Column("reason", sa.String(length=20), nullable=False),
        sa.Column("closed_at", sa.DateTime(), nullable=False),
        sa.Column("count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("total", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("bank", "trade_date"),
    )
    op.create_table(
        "bg_journal",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("bank", sa.String(length=32), nullable=False),
        sa.Column("trade_date", sa.Date(), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("content", sa.String(length=64), nullable=True),
        sa.Column("outcome", sa.String(length=24), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("payment_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("bank", "trade_date", "serial", name="uq_bg_journal_key"),
    )
    op.create_table(
        "bg_payment",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("bank", sa.String(length=32), nullable=False),
        sa.Column("trade_date", sa.Date(), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("trade_time", sa.String(length=6), nullable=True),
        sa.Column("customer_no", sa.String(length=32), nullable=False),
        sa.Column("amount", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("principal", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("late_fee", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("prepaid_in", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("channel", sa.String(length=2), server_default="01", nullable=False),
        sa.Column("branch", sa.String(length=20), nullable=True),
        sa.Column("teller", sa.String(length=20), nullable=True),
        sa.Column(
            "pan_masked", sa.String(length=19), nullable=True
        ),
        sa.Column("receipt_no", sa.String(length=20), nullable=False),
        sa.Column(
            "invoice_no", sa.String(length=20), nullable=True
        ),
        sa.Column(
            "invoice_printed", sa.Integer(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column(
            "source", sa.String(length=16), server_default="online", nullable=False
        ),
        sa.Column("run_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("undone_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("bank", "trade_date", "serial", name="uq_bg_payment_key"),
        sa.UniqueConstraint("receipt_no", name="uq_bg_payment_receipt"),
    )
    op.create_index(
        "ix_bg_payment_customer", "bg_payment", ["customer_no", "id"], unique=False
    )
    op.create_index(
        "ix_bg_payment_status", "bg_payment", ["status", "expires_at"], unique=False
    )
    op.create_table(
        "bg_prepaid",
        sa.Column("customer_no", sa.String(length=32), nullable=False),
        sa.Column("balance", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("customer_no"),
    )
    op.create_table(
        "bg_undo",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("payment_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("bank", sa.String(length=32), nullable=False),
        sa.Column("trade_date", sa.Date(), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=True),
        sa.Column("actor", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("run_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("payment_id", name="uq_bg_undo_payment"),
    )
