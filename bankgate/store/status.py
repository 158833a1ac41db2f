"""The SQL of ``bankgate status``: what each bank did on a trade date, in a few reads.

An operator woken at 3 a.m., or a monitoring script, asks three things of each
bank: how many payments came in today and for how much, is its trade date still
open, and when did it last send a transaction.  Each answer is one read over the
``(bank, trade_date, ...)`` unique keys of ``bg_payment``, ``bg_cutoff`` and
``bg_journal``, so it stays quick on a journal of millions of rows.

Every function takes a :class:`~bankgate.store.tx.Tx` as its first argument
(``store.run_sync(fn, ..., readonly=True)``) and returns plain values.  The
journal holds the transactions that change money (payments, reversals, and the
blocks a reversal leaves before its payment), not queries: a bank that only
queries shows the time of its last payment or reversal.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import sqlalchemy as sa

from bankgate.store import model
from bankgate.store.tx import Tx

LAST_SEEN_DAYS = 7
"""How many trade dates back from a bank's newest one the last transaction is looked for
(a late reversal may carry an older trade date than the newest payment)."""


def day_payments(tx: Tx, bank: str, trade_date: date) -> dict[str, tuple[int, int]]:
    """The bank's payments of ``trade_date`` by status (``POSTED``, ``PENDING``,
    ``REVERSED``, ``REFUNDED``, ``EXPIRED``, ``CANCELLED``): ``{status: (count, amount in
    fen)}``."""
    p = model.payment
    q = (
        sa.select(p.c.status, sa.func.count(), sa.func.coalesce(sa.func.sum(p.c.amount), 0))
        .where(p.c.bank == bank, p.c.trade_date == trade_date)
        .group_by(p.c.status)
    )
    return {str(status): (int(n), int(total)) for status, n, total in tx.conn.execute(q)}


def cutoff(tx: Tx, bank: str, trade_date: date) -> dict | None:
    """The bank's cut-off of ``trade_date`` (``reason``, ``closed_at``, ``count``,
    ``total``), or None while the date is open."""
    return tx.cutoff_get(bank, trade_date)


def last_transaction_at(tx: Tx, bank: str) -> datetime | None:
    """When the bank's newest journalled transaction arrived (gateway local time),
    or None if it never sent one."""
    j = model.journal
    newest = tx.conn.execute(sa.select(sa.func.max(j.c.trade_date)).where(j.c.bank == bank))
    newest = newest.scalar()
    if newest is None:
        return None
    q = sa.select(sa.func.max(j.c.created_at)).where(
        j.c.bank == bank,
        j.c.trade_date >= newest - timedelta(days=LAST_SEEN_DAYS),
        j.c.trade_date <= newest,
    )
    return tx.conn.execute(q).scalar()


def banks_status(tx: Tx, banks: list[str], trade_date: date) -> dict[str, dict]:
    """:func:`day_payments`, :func:`cutoff` and :func:`last_transaction_at` of each bank,
    in one transaction: ``{bank: {"payments": …, "cutoff": …, "last_at": …}}``."""
    return {
        b: {
            "payments": day_payments(tx, b, trade_date),
            "cutoff": cutoff(tx, b, trade_date),
            "last_at": last_transaction_at(tx, b),
        }
        for b in banks
    }
