"""N8's outbox (``bg_n8_outbox``): N8 writes waiting to be known committed there.

With N8 in a database of its own (``[n8.database]``), a transaction's N8 writes
are recorded here in the gateway's own transaction; the row is deleted once N8
has committed them, and the repair job applies whatever a crash or an outage left.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"


def upgrade():
    op.create_table(
        "bg_n8_outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), sa.Identity(),
                  nullable=False),
        sa.Column("journal_id", sa.BigInteger(), nullable=True),
        sa.Column("receipt_no", sa.String(length=20), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("ops", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("tried_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_bg_n8_outbox_journal_id", "bg_n8_outbox", ["journal_id"])


def downgrade():
    op.drop_index("ix_bg_n8_outbox_journal_id", table_name="bg_n8_outbox")
    op.drop_table("bg_n8_outbox")
