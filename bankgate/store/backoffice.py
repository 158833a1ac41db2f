"""The SQL of the back-office actions (:mod:`bankgate.domain.backoffice`) that the
ledger's own statements do not cover: plain functions over a transaction,
returning plain values.
"""

from __future__ import annotations

from datetime import date

import sqlalchemy as sa

from bankgate.store import model
from bankgate.store.tx import Tx


def last_serial(tx: Tx, bank: str, trade_date: date, prefix: str) -> str | None:
    """The greatest serial starting with ``prefix`` the journal holds for (bank,
    trade date) -- every key ever claimed, refused requests included -- or None."""
    j = model.journal
    like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    q = sa.select(sa.func.max(j.c.serial)).where(
        j.c.bank == bank, j.c.trade_date == trade_date, j.c.serial.like(like, escape="\\"))
    return tx.conn.execute(q).scalar()
