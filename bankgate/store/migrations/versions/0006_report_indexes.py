"""Indexes for the standard reports (bankgate/store/reports.py).

``bg_payment (trade_date, bank, channel, status)``: collections over a range of trade
dates for every bank (the unique key leads with the bank); ``bg_invoice (created_at)``:
invoice usage over a range; ``bg_wh_batch (deduct_date)``: withholding over a range.
N8's tables are not the gateway's to migrate: the reference schema declares its own
report indexes (``bankgate.store.n8.REFERENCE_INDEXES``), and docs/reports.rst lists
the ones a real N8's DBA should add.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade():
    op.create_index("ix_bg_payment_date", "bg_payment",
                    ["trade_date", "bank", "channel", "status"], unique=False)
    op.create_index("ix_bg_invoice_created", "bg_invoice", ["created_at"], unique=False)
    op.create_index("ix_bg_wh_batch_date", "bg_wh_batch", ["deduct_date"], unique=False)


def downgrade():
    op.drop_index("ix_bg_wh_batch_date", table_name="bg_wh_batch")
    op.drop_index("ix_bg_invoice_created", table_name="bg_invoice")
    op.drop_index("ix_bg_payment_date", table_name="bg_payment")
