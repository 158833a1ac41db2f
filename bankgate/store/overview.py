"""The SQL of the console's overview: the day's figures, cut-off and reconciliation
state per bank, invoice stock per holder.

Every figure is summed by the database (GROUP BY), never by a loop over payments.
The day's collections are the collections report's own statement
(:func:`bankgate.store.reports.collections_queries` over one day), so the console and
the report (``docs/reports.rst``) never disagree on what a figure means.  Functions
take a :class:`~bankgate.store.tx.Tx` and return plain dicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import sqlalchemy as sa

from bankgate.store import model
from bankgate.store.reports import collections_queries, execute
from bankgate.store.tx import Tx, _dicts

#: the measures of a collections row, in the order collections_queries gives them
MEASURES = ("count", "amount", "principal", "late_fee", "prepaid", "reversed_count",
            "reversed_amount", "refunded_count", "refunded_amount", "net")


def _sum(expr) -> sa.ColumnElement:
    return sa.func.coalesce(sa.func.sum(expr), 0)


def collections(tx: Tx, day: date, by: Sequence[str]) -> list[dict]:
    """Payments of trade date ``day`` that took money, grouped by ``by`` (``bank``,
    ``channel``, ``fee_type`` ...): count, amount, principal, late fee, prepaid excess,
    reversed and refunded (count, amount) and net.  By fee type a payment spread over
    bills of two fee types counts once in each; the prepaid excess is fee type ``""``."""
    rows, _totals = collections_queries(tx.store, day, day, list(by))
    out = []
    for r in execute(tx, rows):  # N8 apart: joined in Python (bankgate.store.reports)
        keys, values = r[:len(by)], r[len(by):]
        d = dict(zip(by, keys, strict=True))
        d.update({k: int(v or 0) for k, v in zip(MEASURES, values, strict=True)})
        out.append(d)
    return out


def pending(tx: Tx, day: date) -> list[dict]:
    """Two-phase payments of trade date ``day`` still waiting for the bank's
    confirmation, per bank: count and amount (not in the collections yet)."""
    p = model.payment
    q = (sa.select(p.c.bank, sa.func.count().label("count"), _sum(p.c.amount).label("amount"))
         .where(p.c.trade_date == day, p.c.status == "PENDING")
         .group_by(p.c.bank).order_by(p.c.bank))
    return [{"bank": r["bank"], "count": int(r["count"]), "amount": int(r["amount"])}
            for r in _dicts(tx.conn.execute(q))]


def cutoffs(tx: Tx, day: date) -> dict[str, dict]:
    """bank -> its cut-off (日切) of ``day`` if the day is closed, and the latest
    closed trade date whatever it is."""
    c = model.cutoff
    out: dict[str, dict] = {}
    for r in _dicts(tx.conn.execute(
            sa.select(c.c.bank, sa.func.max(c.c.trade_date).label("last_closed"))
            .group_by(c.c.bank))):
        out[r["bank"]] = {"last_closed": r["last_closed"], "today": None}
    for r in _dicts(tx.conn.execute(sa.select(c).where(c.c.trade_date == day))):
        out.setdefault(r["bank"], {"last_closed": day})["today"] = {
            "reason": r["reason"], "closed_at": r["closed_at"], "count": int(r["count"]),
            "total": int(r["total"])}
    return out


def latest_recon(tx: Tx) -> dict[str, dict]:
    """bank -> its latest reconciliation run (not a dry run): settle date, run number,
    status (RUNNING BALANCED EXCEPTIONS FAILED), when, the figures both sides, and the
    exceptions of that run still open."""
    rr, it = model.recon_run, model.recon_item
    latest = (sa.select(sa.func.max(rr.c.id).label("id")).where(rr.c.dry_run == 0)
              .group_by(rr.c.bank).subquery("latest"))
    open_ = (sa.select(it.c.run_id, sa.func.count().label("open"))
             .where(it.c.action == "EXCEPTION").group_by(it.c.run_id).subquery("open_items"))
    q = (sa.select(rr.c.bank, rr.c.run_no, rr.c.settle_date, rr.c.status, rr.c.started_at,
                   rr.c.finished_at, rr.c.bank_count, rr.c.bank_total, rr.c.ours_count,
                   rr.c.ours_total, sa.func.coalesce(open_.c.open, 0).label("open_exceptions"))
         .select_from(rr.join(latest, latest.c.id == rr.c.id)
                      .outerjoin(open_, open_.c.run_id == rr.c.id)))
    out = {}
    for r in _dicts(tx.conn.execute(q)):
        for k in ("bank_count", "bank_total", "ours_count", "ours_total", "open_exceptions"):
            r[k] = int(r[k] or 0)
        out[r.pop("bank")] = r
    return out


def invoice_stock(tx: Tx) -> list[dict]:
    """Per holder: its stock ranges, numbers left in them, and the low-water mark of
    its newest range (the mark a holder without bank options keeps)."""
    s = model.invoice_stock
    left = sa.case((s.c.next_no <= s.c.last_no, s.c.last_no - s.c.next_no + 1), else_=0)
    newest = (sa.select(sa.func.max(s.c.id).label("id")).group_by(s.c.bank)
              .subquery("newest"))
    marks = {r["bank"]: int(r["low_water"]) for r in _dicts(tx.conn.execute(
        sa.select(s.c.bank, s.c.low_water).join(newest, newest.c.id == s.c.id)))}
    q = (sa.select(s.c.bank.label("holder"), sa.func.count().label("ranges"),
                   _sum(left).label("remaining"))
         .group_by(s.c.bank).order_by(s.c.bank))
    return [{"holder": r["holder"], "ranges": int(r["ranges"]),
             "remaining": int(r["remaining"]), "range_low_water": marks.get(r["holder"])}
            for r in _dicts(tx.conn.execute(q))]
