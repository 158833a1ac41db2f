"""Supply status (开栓/停栓): the gateway's valve states and the work orders (工单).

``bg_valve`` holds each household's valve state per heating season where N8 has no
valve table (``[supply] source = "gateway"``); ``bg_work_order`` the open-valve and
review orders the ledger's supply hook writes.  The indexes serve the hook's look-ups
(household and season, payment receipt), the work-order list (state, season) and the
supply reports over a season (season, state).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade():
    op.create_table(
        "bg_valve",
        sa.Column("season", sa.String(length=16), nullable=False),
        sa.Column("customer_no", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.Column("changed_at", sa.DateTime(), nullable=True),
        sa.Column("changed_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("season", "customer_no"),
    )
    op.create_index("ix_bg_valve_state", "bg_valve", ["season", "state"], unique=False)
    op.create_table(
        "bg_work_order",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("customer_no", sa.String(length=32), nullable=False),
        sa.Column("season", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("receipt_no", sa.String(length=20), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("done_at", sa.DateTime(), nullable=True),
        sa.Column("done_by", sa.String(length=64), nullable=True),
        sa.Column("note", sa.String(length=400), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_bg_work_order_household", "bg_work_order",
                    ["customer_no", "season", "kind", "state"], unique=False)
    op.create_index("ix_bg_work_order_receipt", "bg_work_order", ["receipt_no"], unique=False)
    op.create_index("ix_bg_work_order_state", "bg_work_order", ["state", "season", "id"],
                    unique=False)


def downgrade():
    op.drop_table("bg_work_order")
    op.drop_table("bg_valve")
