"""The SQL of invoices (发票): stock ranges, numbers used, N8's invoice table.

Every function takes a :class:`~bankgate.store.tx.Tx` as its first argument
(``store.run_sync(fn, ...)`` runs it in one transaction, and the ledger's
hooks run them inside a payment's own transaction) and returns plain values.
Nothing here decides anything; :mod:`bankgate.domain.invoices` does.

N8's invoice table is reached only through the mapping (``tx.n8["invoice"]``,
logical columns ``invoice_no pay_id customer_no amount status issued_at``).
Oracle stores an empty string as NULL: a range without an invoice code reads
back with ``prefix`` None, which callers treat as "".
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import sqlalchemy as sa

from bankgate.store import model
from bankgate.store.dialects import lock_rows
from bankgate.store.n8join import lookup
from bankgate.store.tx import Tx

ACTIVE = ("ISSUED", "PRINTED")
BATCH = 5000  # N8 rows per INSERT batch when stock is issued
IN_CHUNK = 500  # bound parameters per IN (...) list


def _dicts(result) -> list[dict]:
    return [dict(r) for r in result.mappings()]


class InvoiceStatements:
    """What the ledger's invoice hook runs inside every invoiced payment, built
    once per store with bind parameters (as :class:`~bankgate.store.tx.HotStatements`):
    building a statement costs more than running it.  ``ranges`` variants are
    built on first use."""

    def __init__(self, n8: dict[str, sa.Table]):
        s, i, p = model.invoice_stock, model.invoice, model.payment
        self.range_advance = s.update().where(
            s.c.id == sa.bindparam("k_id"), s.c.next_no == sa.bindparam("k_taken")
        ).values(next_no=sa.bindparam("k_next"))
        self.invoice_insert = i.insert()
        self.payment_set_invoice = p.update().where(p.c.id == sa.bindparam("k_pid")).values(
            invoice_no=sa.bindparam("k_no"), invoice_printed=sa.bindparam("k_printed"))
        self._ranges: dict[tuple, sa.Select] = {}

    def ranges(self, holder: bool, open_only: bool, lock: bool) -> sa.Select:
        key = (holder, open_only, lock)
        q = self._ranges.get(key)
        if q is None:
            s = model.invoice_stock
            q = sa.select(s)
            if holder:
                q = q.where(s.c.bank == sa.bindparam("k_holder"))
            if open_only:
                q = q.where(s.c.next_no <= s.c.last_no)
            q = q.order_by(s.c.id)
            if lock:
                q = lock_rows(q, s)
            q = self._ranges.setdefault(key, q)
        return q


def _st(tx: Tx) -> InvoiceStatements:
    return tx.sql.more(InvoiceStatements)


def _n8_select(t: sa.Table) -> sa.Select:
    return sa.select(*[c.label(c.key) for c in t.c])


def _chunks(seq: list, n: int) -> Iterator[list]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


# -- stock ranges (领用) ----------------------------------------------------------


def ranges(tx: Tx, holder: str | None = None, *, open_only: bool = False,
           lock: bool = False) -> list[dict]:
    """Stock ranges, oldest first; ``open_only`` those with numbers left;
    ``lock`` takes the rows (SELECT ... FOR UPDATE) until the transaction ends."""
    q = _st(tx).ranges(holder is not None, open_only, bool(lock and tx.lock))
    rows = _dicts(tx.conn.execute(q, {"k_holder": holder} if holder is not None else {}))
    for r in rows:
        r["prefix"] = r["prefix"] or ""
    return rows


def range_insert(tx: Tx, **values) -> int:
    values["prefix"] = values.get("prefix") or None
    r = tx.conn.execute(model.invoice_stock.insert().values(**values))
    return r.inserted_primary_key[0]


def range_get(tx: Tx, stock_id: int) -> dict | None:
    s = model.invoice_stock
    rows = _dicts(tx.conn.execute(sa.select(s).where(s.c.id == stock_id)))
    for r in rows:
        r["prefix"] = r["prefix"] or ""
    return rows[0] if rows else None


def range_advance(tx: Tx, stock_id: int, taken: int) -> bool:
    """Move the range past ``taken``; False if someone else moved it first."""
    r = tx.conn.execute(_st(tx).range_advance,
                        {"k_id": stock_id, "k_taken": taken, "k_next": taken + 1})
    return r.rowcount == 1


# -- numbers used (开出) -------------------------------------------------------------


def invoice_insert(tx: Tx, **values) -> None:
    tx.conn.execute(_st(tx).invoice_insert, values)


def invoice_get(tx: Tx, invoice_no: str, lock: bool = False) -> dict | None:
    i = model.invoice
    q = sa.select(i).where(i.c.invoice_no == invoice_no)
    if lock and tx.lock:
        q = lock_rows(q, i)
    rows = _dicts(tx.conn.execute(q))
    return rows[0] if rows else None


def invoices_of_payment(tx: Tx, payment_id: int, *, active: bool = False,
                        lock: bool = False) -> list[dict]:
    i = model.invoice
    q = sa.select(i).where(i.c.payment_id == payment_id)
    if active:
        q = q.where(i.c.status.in_(ACTIVE))
    q = q.order_by(i.c.created_at, i.c.invoice_no)
    if lock and tx.lock:
        q = lock_rows(q, i)
    return _dicts(tx.conn.execute(q))


def invoice_set(tx: Tx, invoice_no: str, **values) -> None:
    i = model.invoice
    tx.conn.execute(i.update().where(i.c.invoice_no == invoice_no).values(**values))


def invoice_bump_print(tx: Tx, invoice_no: str, now: datetime, actor: str) -> int:
    """print_count + 1 (补打); returns the new count."""
    i = model.invoice
    tx.conn.execute(
        i.update().where(i.c.invoice_no == invoice_no)
        .values(print_count=i.c.print_count + 1, printed_at=now, actor=actor)
    )
    return int(tx.conn.execute(
        sa.select(i.c.print_count).where(i.c.invoice_no == invoice_no)).scalar())


def invoices_of_range(tx: Tx, stock_id: int) -> list[dict]:
    """Every number used from a range, with its payment's receipt number,
    customer and amount (None when the payment row is gone)."""
    i, p = model.invoice, model.payment
    q = (
        sa.select(i, p.c.receipt_no, p.c.customer_no, p.c.amount,
                  p.c.status.label("payment_status"))
        .select_from(i.outerjoin(p, p.c.id == i.c.payment_id))
        .where(i.c.stock_id == stock_id)
    )
    return _dicts(tx.conn.execute(q))


def usage(tx: Tx) -> dict[str, dict[str, int]]:
    """holder -> {status: count of numbers used}."""
    i = model.invoice
    out: dict[str, dict[str, int]] = {}
    for bank, status, n in tx.conn.execute(
        sa.select(i.c.bank, i.c.status, sa.func.count()).group_by(i.c.bank, i.c.status)
    ):
        out.setdefault(bank, {})[status] = int(n)
    return out


def unknown_invoice_numbers(tx: Tx) -> list[dict]:
    """bg_invoice rows whose stock range is gone (should never be)."""
    i, s = model.invoice, model.invoice_stock
    q = (sa.select(i.c.invoice_no, i.c.stock_id)
         .select_from(i.outerjoin(s, s.c.id == i.c.stock_id)).where(s.c.id.is_(None)))
    return _dicts(tx.conn.execute(q))


# -- the payment's side ---------------------------------------------------------------


def payment_set_invoice(tx: Tx, payment_id: int, invoice_no: str | None,
                        printed: int) -> None:
    tx.conn.execute(_st(tx).payment_set_invoice,
                    {"k_pid": payment_id, "k_no": invoice_no or None, "k_printed": printed})


def payments_with_invoice_marks(tx: Tx) -> list[dict]:
    """Payments that name an invoice or say one was printed."""
    p = model.payment
    q = sa.select(p.c.id, p.c.receipt_no, p.c.status, p.c.invoice_no, p.c.invoice_printed).where(
        sa.or_(p.c.invoice_no.is_not(None), p.c.invoice_printed != 0))
    rows = _dicts(tx.conn.execute(q))
    for r in rows:
        r["invoice_no"] = r["invoice_no"] or ""
    return rows


def print_data(tx: Tx, payment_id: int) -> dict:
    """What an invoice shows: the payment, its bills (fee type, period,
    principal, late fee) and the customer from N8."""
    p = tx.payment_by_id(payment_id)
    allocs = tx.allocations(payment_id)
    bills = {b["bill_id"]: b for b in tx.bills([a["bill_id"] for a in allocs])} if allocs else {}
    lines = []
    for a in allocs:
        b = bills.get(a["bill_id"], {})
        lines.append({"bill_id": a["bill_id"], "fee_type": b.get("fee_type", ""),
                      "period": b.get("period", ""), "principal": int(a["principal"]),
                      "late_fee": int(a["late_fee"])})
    cust = tx.customer(p["customer_no"]) or {}
    return {"payment": p, "lines": lines,
            "customer": {"customer_no": p["customer_no"], "name": cust.get("name") or "",
                         "address": cust.get("address") or ""}}


# -- N8's invoice records (always through the mapping) ---------------------------------


def n8_get(tx: Tx, invoice_no: str) -> dict | None:
    t = tx.n8["invoice"]
    rows = _dicts(tx.n8conn.execute(_n8_select(t).where(t.c.invoice_no == invoice_no)))
    return rows[0] if rows else None


def n8_between(tx: Tx, low: str, high: str) -> list[dict]:
    """N8 invoice rows whose number sorts between ``low`` and ``high``
    (callers keep those of exactly their own format)."""
    t = tx.n8["invoice"]
    q = _n8_select(t).where(t.c.invoice_no >= low, t.c.invoice_no <= high)
    return _dicts(tx.n8conn.execute(q))


def n8_insert_unused(tx: Tx, numbers: list[str]) -> None:
    """Stock issued: one row per number, status U (unused)."""
    tx.n8_do("invoice_stock", numbers=list(numbers))


def n8_use(tx: Tx, invoice_no: str, pay_id: str, customer_no: str, amount: int,
           now: datetime) -> str | None:
    """Mark a number issued (I) for a payment.

    Returns None when done, or N8's status when N8 has the number but not as
    unused (the caller must not use it).  A number N8 never heard of (an N8
    that keeps no unused stock) is inserted.
    """
    return tx.n8_do("invoice_use", invoice_no=invoice_no, pay_id=pay_id,
                    customer_no=customer_no, amount=amount, now=now)


def n8_void(tx: Tx, invoice_no: str, *, pay_id: str | None = None,
            customer_no: str | None = None, amount: int | None = None) -> None:
    """Mark a number void (V); inserts the row if N8 lacks it.  The payment's
    fields are filled in when given (a number refused before it was used
    keeps N8's)."""
    tx.n8_do("invoice_void", invoice_no=invoice_no, pay_id=pay_id, customer_no=customer_no,
             amount=amount)


def n8_rows_of_gateway_payments(tx: Tx) -> list[dict]:
    """N8 invoice rows whose pay_id is one of the gateway's receipts but
    whose number the gateway never used."""
    t, p, i = tx.n8["invoice"], model.payment, model.invoice
    if tx.split:  # N8 in a database of its own: N8's rows with a pay_id, by chunks
        out: list[dict] = []
        result = tx.n8conn.execute(_n8_select(t).where(t.c.pay_id.is_not(None))
                                   .order_by(t.c.invoice_no))
        for part in result.mappings().partitions(IN_CHUNK):
            rows = [dict(r) for r in part]
            ours = lookup(tx.conn, p.c.receipt_no, {}, (r["pay_id"] for r in rows))
            used = lookup(tx.conn, i.c.invoice_no, {}, (r["invoice_no"] for r in rows))
            out.extend(r for r in rows if r["pay_id"] in ours and r["invoice_no"] not in used)
        return out
    q = (
        _n8_select(t)
        .select_from(
            t.join(p, p.c.receipt_no == t.c.pay_id).outerjoin(
                i, i.c.invoice_no == t.c.invoice_no)
        )
        .where(i.c.invoice_no.is_(None))
    )
    return _dicts(tx.conn.execute(q))
