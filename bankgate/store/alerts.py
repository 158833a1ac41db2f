"""The reads the alert checks need (``bankgate/domain/alerts.py`` has the rules).

Each check runs them in one read-only transaction on the store's pool, every
``[alerts] interval`` seconds, so each is one short statement returning only what may
be a problem: the (bank, settle date)s whose latest run failed or has exceptions, the
statements of the dates asked about, the pending reversals per bank.  What other
modules already answer is read there: a bank's first transaction
(:func:`bankgate.store.recon.first_activity`), the invoice stock against each holder's
low-water mark (:func:`bankgate.domain.overview.invoice_stock_tx`, over
:func:`bankgate.store.overview.invoice_stock`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import date, datetime

import sqlalchemy as sa

from bankgate.store import model
from bankgate.store.health import PENDING_REVERSAL
from bankgate.store.recon import FINISHED
from bankgate.store.tx import Tx, _dicts


def recon_problems(tx: Tx) -> list[dict]:
    """The (bank, settle date)s whose latest real run (not a dry run, not still
    running) is FAILED or EXCEPTIONS: bank, settle_date, run_no, status, finished_at,
    the exceptions of that run still open, and the run's error (its summary's)."""
    rr, it = model.recon_run, model.recon_item
    done = (*FINISHED, "FAILED")
    latest = (sa.select(sa.func.max(rr.c.id).label("id"))
              .where(rr.c.dry_run == 0, rr.c.status.in_(done))
              .group_by(rr.c.bank, rr.c.settle_date).subquery("latest"))
    open_ = (sa.select(it.c.run_id, sa.func.count().label("open"))
             .where(it.c.action == "EXCEPTION").group_by(it.c.run_id).subquery("open_items"))
    q = (sa.select(rr.c.bank, rr.c.settle_date, rr.c.run_no, rr.c.status, rr.c.finished_at,
                   rr.c.summary, sa.func.coalesce(open_.c.open, 0).label("open_exceptions"))
         .select_from(rr.join(latest, latest.c.id == rr.c.id)
                      .outerjoin(open_, open_.c.run_id == rr.c.id))
         .where(rr.c.status.in_(("FAILED", "EXCEPTIONS")))
         .order_by(rr.c.bank, rr.c.settle_date))
    out = []
    for r in _dicts(tx.conn.execute(q)):
        summary = json.loads(r.pop("summary")) if r["summary"] else {}
        r["error"] = str(summary.get("error") or "")
        r["open_exceptions"] = int(r["open_exceptions"] or 0)
        out.append(r)
    return out


def statements_read(tx: Tx, wanted: Iterable[tuple[str, date]]) -> set[tuple[str, date]]:
    """Those of ``wanted`` (bank, settle date) with a statement file read
    (a ``bg_statement`` row: the reconciliation records each file it reads)."""
    wanted = set(wanted)
    if not wanted:
        return set()
    st = model.statement
    q = (sa.select(st.c.bank, st.c.settle_date).distinct()
         .where(st.c.bank.in_(sorted({b for b, _ in wanted})),
                st.c.settle_date.in_(sorted({d for _, d in wanted}))))
    return {(r[0], r[1]) for r in tx.conn.execute(q)} & wanted


def pending_reversals(tx: Tx) -> list[tuple[str, int, datetime]]:
    """``(bank, count, oldest)`` of card debits with a reversal (561) still pending:
    how many, and when the oldest of them was made."""
    d = model.debit
    q = (sa.select(d.c.bank, sa.func.count(), sa.func.min(d.c.created_at))
         .where(d.c.status.in_(PENDING_REVERSAL)).group_by(d.c.bank).order_by(d.c.bank))
    return [(str(bank), int(n), oldest) for bank, n, oldest in tx.conn.execute(q)]
