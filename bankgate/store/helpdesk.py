"""The SQL of the help desk (客服查询): customers, their bills and payments, a payment.

Read-only look-ups for the console.  Every function takes a
:class:`~bankgate.store.tx.Tx` (``store.run_sync(fn, ..., readonly=True)`` runs it)
and returns plain dicts.  N8 is reached through the mapping (``tx.n8``, logical
names), so a renamed N8 schema works unchanged; every value a caller gives is a bound
parameter, and every list has a limit.

A name search is ``LIKE`` with the caller's ``%``, ``_`` and the escape character
escaped (:func:`like_escape`): what an operator types matches literally, and a
search for ``%`` does not list every customer.  The escape character is ``!``, not a
backslash: MySQL and PostgreSQL give the backslash a meaning of their own in string
literals, ``!`` means nothing anywhere.
"""

from __future__ import annotations

from datetime import date

import sqlalchemy as sa

from bankgate.store import model
from bankgate.store.n8join import outer_join
from bankgate.store.tx import Tx, _dicts

ESCAPE = "!"
#: columns of N8's customer record the help desk shows
CUSTOMER_COLUMNS = ("customer_no", "name", "address", "customer_class", "district",
                    "status", "large_customer", "withholding_bank", "withholding_account")


def like_escape(text: str) -> str:
    """``text`` with LIKE's wildcards and the escape character escaped."""
    return (text.replace(ESCAPE, ESCAPE + ESCAPE).replace("%", ESCAPE + "%")
            .replace("_", ESCAPE + "_"))


def _customer_select(tx: Tx) -> sa.Select:
    c = tx.n8["customer"]
    return sa.select(*[c.c[k].label(k) for k in CUSTOMER_COLUMNS])


# -- customers ------------------------------------------------------------------------


def find_customers(tx: Tx, text: str, limit: int) -> list[dict]:
    """Customers whose number is ``text`` or starts with it, or whose name contains
    it: the exact number first, then by customer number; at most ``limit`` rows."""
    c = tx.n8["customer"]
    pattern = like_escape(text)
    exact = c.c.customer_no == text
    q = (_customer_select(tx)
         .where(sa.or_(exact,
                       c.c.customer_no.like(pattern + "%", escape=ESCAPE),
                       c.c.name.like("%" + pattern + "%", escape=ESCAPE)))
         .order_by(sa.case((exact, 0), else_=1), c.c.customer_no)
         .limit(limit))
    return _dicts(tx.n8conn.execute(q))


def customer(tx: Tx, customer_no: str) -> dict | None:
    """N8's record of the customer with the prepaid balance the gateway keeps."""
    c, pp = tx.n8["customer"], model.prepaid
    if tx.split:  # N8 in a database of its own: the balance from the gateway's
        rows = _dicts(tx.n8conn.execute(_customer_select(tx).where(c.c.customer_no == customer_no)))
        if not rows:
            return None
        balance = tx.conn.execute(sa.select(pp.c.balance).where(
            pp.c.customer_no == rows[0]["customer_no"])).scalar()
        return {**rows[0], "prepaid": balance if balance is not None else 0}
    balance = (sa.select(pp.c.balance).where(pp.c.customer_no == c.c.customer_no)
               .scalar_subquery())
    q = (_customer_select(tx).add_columns(sa.func.coalesce(balance, 0).label("prepaid"))
         .where(c.c.customer_no == customer_no))
    rows = _dicts(tx.conn.execute(q))
    return rows[0] if rows else None


def bills(tx: Tx, customer_no: str, limit: int) -> list[dict]:
    """The customer's bills, open and paid, newest period first, each with its
    tariff's late-fee rate (``late_fee_ppm``, 0 without a tariff) for the late fee owed."""
    b, c, t = tx.n8["bill"], tx.n8["customer"], tx.n8["tariff"]
    q = (
        sa.select(b.c.bill_id.label("bill_id"), b.c.fee_type.label("fee_type"),
                  b.c.period.label("period"), b.c.amount.label("amount"),
                  b.c.paid_amount.label("paid_amount"),
                  b.c.late_fee_paid.label("late_fee_paid"), b.c.due_date.label("due_date"),
                  sa.func.coalesce(t.c.late_fee_ppm, 0).label("late_fee_ppm"))
        .select_from(
            b.join(c, c.c.customer_no == b.c.customer_no).outerjoin(
                t, sa.and_(t.c.fee_type == b.c.fee_type,
                           t.c.customer_class == c.c.customer_class)))
        .where(b.c.customer_no == customer_no)
        .order_by(b.c.period.desc(), b.c.bill_id)
        .limit(limit)
    )
    return _dicts(tx.n8conn.execute(q))


# -- payments -------------------------------------------------------------------------

_PAYMENT_COLUMNS = ("id", "bank", "trade_date", "trade_time", "serial", "customer_no",
                    "amount", "principal", "late_fee", "prepaid_in", "channel", "branch",
                    "teller", "pan_masked", "receipt_no", "invoice_no", "invoice_printed",
                    "status", "source", "created_at", "expires_at", "undone_at")


def _payments(tx: Tx, *where, limit: int) -> list[dict]:
    """Payments with what undid them (bg_undo: kind, serial, actor, reason, when) and
    the customer's name, newest first."""
    p, u, c = model.payment, model.undo, tx.n8["customer"]
    q = (
        sa.select(*[p.c[k].label(k) for k in _PAYMENT_COLUMNS],
                  u.c.kind.label("undo_kind"), u.c.serial.label("undo_serial"),
                  u.c.trade_date.label("undo_trade_date"), u.c.actor.label("undo_actor"),
                  u.c.reason.label("undo_reason"), u.c.created_at.label("undo_at"))
        .where(*where)
        .order_by(p.c.id.desc())
        .limit(limit)
    )
    name = {"customer_name": c.c.name}
    if tx.split:  # N8 in a database of its own: the names by the customers found
        rows = _dicts(tx.conn.execute(q.select_from(p.outerjoin(u, u.c.payment_id == p.c.id))))
        return outer_join(tx.n8conn, rows, "customer_no", c.c.customer_no, name)
    q = q.add_columns(*[col.label(n) for n, col in name.items()]).select_from(
        p.outerjoin(u, u.c.payment_id == p.c.id).outerjoin(c, c.c.customer_no == p.c.customer_no))
    return _dicts(tx.conn.execute(q))


def payments_of_customer(tx: Tx, customer_no: str, limit: int) -> list[dict]:
    return _payments(tx, model.payment.c.customer_no == customer_no, limit=limit)


def payment_by_id(tx: Tx, payment_id: int) -> dict | None:
    rows = _payments(tx, model.payment.c.id == payment_id, limit=1)
    return rows[0] if rows else None


def payments_by_receipt(tx: Tx, receipt_no: str) -> list[dict]:
    return _payments(tx, model.payment.c.receipt_no == receipt_no, limit=1)


def payments_by_serial(tx: Tx, serial: str, bank: str | None, trade_date: date | None,
                       limit: int) -> list[dict]:
    """A bank's serial: with bank and date the one payment of that key; with less,
    every payment with that serial (a serial is unique only per bank and date)."""
    p = model.payment
    where = [p.c.serial == serial]
    if bank is not None:
        where.append(p.c.bank == bank)
    if trade_date is not None:
        where.append(p.c.trade_date == trade_date)
    return _payments(tx, *where, limit=limit)


def payments_by_invoice(tx: Tx, invoice_no: str, limit: int) -> list[dict]:
    """The payment an invoice number was issued with: the number the payment carries
    now, or one it carried before (a voided number stays in bg_invoice)."""
    p, i = model.payment, model.invoice
    issued = sa.select(i.c.payment_id).where(i.c.invoice_no == invoice_no,
                                             i.c.payment_id.is_not(None))
    return _payments(tx, sa.or_(p.c.invoice_no == invoice_no, p.c.id.in_(issued)),
                     limit=limit)


def allocations(tx: Tx, payment_id: int) -> list[dict]:
    """The bills a payment paid, with each bill's fee type and period."""
    a, b = model.allocation, tx.n8["bill"]
    if tx.split:  # N8 in a database of its own: the bills by the ids allocated
        rows = _dicts(tx.conn.execute(
            sa.select(a.c.bill_id.label("bill_id"), a.c.principal.label("principal"),
                      a.c.late_fee.label("late_fee"))
            .where(a.c.payment_id == payment_id).order_by(a.c.id)))
        outer_join(tx.n8conn, rows, "bill_id", b.c.bill_id,
                   {"fee_type": b.c.fee_type, "period": b.c.period})
        return [{k: r[k] for k in ("bill_id", "fee_type", "period", "principal", "late_fee")}
                for r in rows]
    q = (sa.select(a.c.bill_id.label("bill_id"), b.c.fee_type.label("fee_type"),
                   b.c.period.label("period"), a.c.principal.label("principal"),
                   a.c.late_fee.label("late_fee"))
         .select_from(a.outerjoin(b, b.c.bill_id == a.c.bill_id))
         .where(a.c.payment_id == payment_id)
         .order_by(a.c.id))
    return _dicts(tx.conn.execute(q))


# -- invoices, withholding ------------------------------------------------------------


def _invoices(tx: Tx, *where, limit: int) -> list[dict]:
    i, p = model.invoice, model.payment
    q = (sa.select(i.c.invoice_no, i.c.bank.label("holder"), i.c.status, i.c.print_count,
                   i.c.created_at, i.c.printed_at, i.c.voided_at, i.c.void_reason, i.c.actor,
                   i.c.payment_id, p.c.receipt_no, p.c.amount, p.c.customer_no)
         .select_from(i.outerjoin(p, p.c.id == i.c.payment_id))
         .where(*where)
         .order_by(i.c.created_at.desc(), i.c.invoice_no.desc())
         .limit(limit))
    return _dicts(tx.conn.execute(q))


def invoices_of_customer(tx: Tx, customer_no: str, limit: int) -> list[dict]:
    """Invoice numbers issued with the customer's payments, valid and void."""
    return _invoices(tx, model.payment.c.customer_no == customer_no, limit=limit)


def invoices_of_payment(tx: Tx, payment_id: int) -> list[dict]:
    return _invoices(tx, model.invoice.c.payment_id == payment_id, limit=50)


def withholding_lines(tx: Tx, customer_no: str, limit: int) -> list[dict]:
    """The customer's lines in withholding batch files (代扣) and what the bank
    answered for each, newest batch first; the receipt of the payment a debited line
    posted.  ``account_no`` is in full here: the domain masks it."""
    ln, bt, p = model.wh_line, model.wh_batch, model.payment
    q = (sa.select(bt.c.bank, bt.c.deduct_date, bt.c.seq, bt.c.file_name,
                   bt.c.status.label("batch_status"), bt.c.result_at, ln.c.line_no,
                   ln.c.bill_id, ln.c.account_no, ln.c.amount, ln.c.late_fee, ln.c.total,
                   ln.c.result, ln.c.bank_serial, ln.c.payment_id, p.c.receipt_no)
         .select_from(ln.join(bt, bt.c.id == ln.c.batch_id)
                      .outerjoin(p, p.c.id == ln.c.payment_id))
         .where(ln.c.customer_no == customer_no)
         .order_by(bt.c.deduct_date.desc(), bt.c.id.desc(), ln.c.line_no)
         .limit(limit))
    return _dicts(tx.conn.execute(q))
