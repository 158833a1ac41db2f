"""The few reads the console's ``/healthz`` and ``/metrics`` need.

A load balancer asks every few seconds whether the database answers, and
Prometheus asks every fifteen for a handful of counts: each is one short
statement, run on the store's thread pool by the caller.  The counts are
grouped by bank so a dashboard can say which bank's reversals are stuck.
"""

from __future__ import annotations

import sqlalchemy as sa

from bankgate.store import model
from bankgate.store.recon import FINISHED
from bankgate.store.tx import Tx

#: card debits whose reversal (561) is still to be confirmed by the bank
PENDING_REVERSAL = ("REVERSING",)


def ping(store) -> None:
    """One round trip, no retries (a probe must say "down" at once, not after the
    store's back-off): ``SELECT 1`` in the dialect's spelling.  Runs on the
    store's thread; raises what the driver raises."""
    with store.engine.connect() as conn:
        conn.execute(sa.select(sa.literal(1))).scalar()


def ping_n8(store) -> None:
    """:func:`ping` on N8's database (with ``[n8.database]`` a database of its own,
    which may be down while the gateway's answers)."""
    with store.n8_engine.connect() as conn:
        conn.execute(sa.select(sa.literal(1))).scalar()


def pending_reversals(tx: Tx) -> dict[str, int]:
    """``{bank: count}`` of card debits with a reversal still pending."""
    d = model.debit
    q = (sa.select(d.c.bank, sa.func.count()).where(d.c.status.in_(PENDING_REVERSAL))
         .group_by(d.c.bank))
    return {str(bank): int(n) for bank, n in tx.conn.execute(q)}


def open_exceptions(tx: Tx) -> dict[str, int]:
    """``{bank: count}`` of reconciliation exceptions nobody resolved yet: the
    EXCEPTION items of each (bank, settle date)'s latest finished, not dry, run
    (the same rule as :func:`bankgate.store.recon.open_exceptions`, counted)."""
    it, rr = model.recon_item, model.recon_run
    latest = (
        sa.select(sa.func.max(rr.c.id).label("id"))
        .where(rr.c.dry_run == 0, rr.c.status.in_(FINISHED))
        .group_by(rr.c.bank, rr.c.settle_date)
    )
    q = (
        sa.select(rr.c.bank, sa.func.count())
        .select_from(it.join(rr, rr.c.id == it.c.run_id))
        .where(it.c.run_id.in_(latest), it.c.action == "EXCEPTION")
        .group_by(rr.c.bank)
    )
    return {str(bank): int(n) for bank, n in tx.conn.execute(q)}


def figures(tx: Tx) -> dict[str, dict[str, int]]:
    """Both counts in one transaction (one pool thread, one connection)."""
    return {"pending_reversals": pending_reversals(tx), "open_exceptions": open_exceptions(tx)}
