"""Invoices (stock, numbers used) and withholding (batches, lines, card debits).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade():
    op.create_table(
        "bg_debit",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("bank", sa.String(length=32), nullable=False),
        sa.Column("utility_serial", sa.String(length=40), nullable=False),
        sa.Column("trade_date", sa.Date(), nullable=False),
        sa.Column("customer_no", sa.String(length=32), nullable=False),
        sa.Column("account_no", sa.String(length=32), nullable=False),
        sa.Column("bill_ids", sa.String(length=400), nullable=False),
        sa.Column("amount", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("response_code", sa.String(length=4), nullable=True),
        sa.Column("bank_serial", sa.String(length=40), nullable=True),
        sa.Column("payment_id", sa.BigInteger(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("bank", "utility_serial", name="uq_bg_debit_serial"),
    )
    op.create_index("ix_bg_debit_status", "bg_debit", ["status", "next_attempt_at"], unique=False)
    op.create_table(
        "bg_invoice",
        sa.Column("invoice_no", sa.String(length=20), nullable=False),
        sa.Column("stock_id", sa.BigInteger(), nullable=False),
        sa.Column("bank", sa.String(length=32), nullable=False),
        sa.Column("payment_id", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("print_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("printed_at", sa.DateTime(), nullable=True),
        sa.Column("voided_at", sa.DateTime(), nullable=True),
        sa.Column("void_reason", sa.String(length=200), nullable=True),
        sa.Column("actor", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("invoice_no"),
    )
    op.create_index("ix_bg_invoice_payment", "bg_invoice", ["payment_id"], unique=False)
    op.create_table(
        "bg_invoice_stock",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("bank", sa.String(length=32), nullable=False),
        sa.Column("prefix", sa.String(length=8), nullable=True),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("first_no", sa.BigInteger(), nullable=False),
        sa.Column("last_no", sa.BigInteger(), nullable=False),
        sa.Column("next_no", sa.BigInteger(), nullable=False),
        sa.Column("low_water", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("issued_at", sa.DateTime(), nullable=False),
        sa.Column("issued_by", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_bg_invoice_stock_bank", "bg_invoice_stock", ["bank", "id"], unique=False)
    op.create_table(
        "bg_wh_batch",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("bank", sa.String(length=32), nullable=False),
        sa.Column("deduct_date", sa.Date(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("file_name", sa.String(length=80), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("record_count", sa.Integer(), nullable=False),
        sa.Column("total", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("generated_at", sa.DateTime(), nullable=False),
        sa.Column("result_at", sa.DateTime(), nullable=True),
        sa.Column("success_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("success_total", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("bank", "deduct_date", "seq", name="uq_bg_wh_batch_seq"),
    )
    op.create_table(
        "bg_wh_line",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("batch_id", sa.BigInteger(), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("bill_id", sa.String(length=32), nullable=False),
        sa.Column("customer_no", sa.String(length=32), nullable=False),
        sa.Column("account_no", sa.String(length=32), nullable=False),
        sa.Column("amount", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("late_fee", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("total", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("result", sa.String(length=2), nullable=True),
        sa.Column("bank_serial", sa.String(length=40), nullable=True),
        sa.Column("payment_id", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("batch_id", "line_no", name="uq_bg_wh_line"),
    )
