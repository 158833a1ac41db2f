"""Trade days (``bg_trade_day``): the row a payment locks shared and a cut-off closes.

One row per bank and trade date: a payment reads it ``FOR SHARE`` in its claim and
a cut-off updates it to closed before counting the date's payments, so on a
database server a cut-off waits for the payments in flight and a payment arriving
during a cut-off is refused once it commits.  Every date already closed (a
``bg_cutoff`` row) gets its row, closed.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade():
    op.create_table(
        "bg_trade_day",
        sa.Column("bank", sa.String(length=32), nullable=False),
        sa.Column("trade_date", sa.Date(), nullable=False),
        sa.Column("closed", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("bank", "trade_date"),
    )
    day = sa.table("bg_trade_day", sa.column("bank"), sa.column("trade_date"),
                   sa.column("closed", sa.Boolean))
    cut = sa.table("bg_cutoff", sa.column("bank"), sa.column("trade_date"))
    op.execute(day.insert().from_select(
        ["bank", "trade_date", "closed"], sa.select(cut.c.bank, cut.c.trade_date, sa.true())))


def downgrade():
    op.drop_table("bg_trade_day")
