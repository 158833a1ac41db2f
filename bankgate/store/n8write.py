"""N8's writes, as a few named operations applied by a posting adapter.

Everything the gateway writes into N8 is one of the operations below, each
keyed by a receipt number (N8's ``pay_id``) or an invoice number and each
idempotent when applied as a *replay* (``replay=True``): applying it twice
changes nothing.  With N8 in the gateway's own database the operations run in
the payment's own transaction; with N8 in a database of its own
(``[n8.database]``) they also go into the gateway's outbox in that transaction
(:mod:`bankgate.store.n8outbox`), so a crash between the two commits is finished
by replaying them.

=================  ==========================================================
operation          what it writes
=================  ==========================================================
``post``           N8's payment row, its items, and the bills' paid amounts
``undo``           the bills' paid amounts taken back, the payment cancelled
``confirm``        a pending (two-phase) payment made normal
``invoice_use``    an invoice number issued for a payment
``invoice_void``   an invoice number voided
``invoice_stock``  unused invoice numbers (stock issued to the utility)
``agreement``      a customer's withholding bank and account
=================  ==========================================================

:class:`DirectWriter` writes the mapped tables themselves (the reference
behaviour); other adapters (N8's own stored procedure, an interface table)
implement the same methods.
"""

from __future__ import annotations

import json
from datetime import date, datetime

import sqlalchemy as sa

from bankgate.store.dialects import lock_rows

OPERATIONS = ("post", "undo", "confirm", "invoice_use", "invoice_void", "invoice_stock",
              "agreement")


def _p(name: str, type_=None) -> sa.BindParameter:
    return sa.bindparam(name, type_=type_)


class DirectWriter:
    """Writes N8's mapped tables directly (``[n8.post] adapter = "direct"``)."""

    name = "direct"

    def __init__(self, n8: dict[str, sa.Table], row_locks: bool = True):
        self.n8 = n8
        self.row_locks = row_locks
        p, i, inv = n8["payment"], n8["payment_item"], n8["invoice"]
        # the bills of a payment: one statement, built once per number of bills
        self._bills_add: dict[int, sa.Update] = {}
        self.payment_insert = p.insert()
        self.items_insert = i.insert()
        self.payment_status = p.update().where(p.c.pay_id == _p("k_pay")).values(
            status=_p("k_status", p.c.status.type))
        self.payment_get = sa.select(p.c.status.label("status")).where(
            p.c.pay_id == _p("k_pay"))
        self.invoice_use_st = inv.update().where(
            inv.c.invoice_no == _p("k_no"), inv.c.status == "U"
        ).values(status="I", pay_id=_p("k_pay"), customer_no=_p("k_cust"),
                 amount=_p("k_amount", inv.c.amount.type), issued_at=_p("k_now"))

    # -- the operations ----------------------------------------------------------------

    def apply(self, conn: sa.Connection, op: str, args: dict, *, replay: bool = False):
        """Run operation ``op`` with ``args`` (its keyword arguments)."""
        if op not in OPERATIONS:
            raise ValueError(f"unknown N8 operation {op!r}")
        return getattr(self, op)(conn, replay=replay, **args)

    def _status(self, conn, pay_id: str, lock: bool) -> str | None:
        q = self.payment_get
        if lock and self.row_locks:
            q = lock_rows(q, self.n8["payment"])
        row = conn.execute(q, {"k_pay": pay_id}).first()
        return None if row is None else row[0]

    #: at most this many bills in one statement (a payment's are far fewer)
    BATCH = 50

    def bills_add(self, n: int) -> sa.Update:
        """``n`` bills' paid amounts changed in one UPDATE (bill ``b_id{k}`` by
        ``b_p{k}`` and ``b_l{k}``): a CASE per column."""
        st = self._bills_add.get(n)
        if st is None:
            b = self.n8["bill"]

            def case(col, key: str):
                return sa.case(*[(b.c.bill_id == _p(f"b_id{k}", b.c.bill_id.type),
                                  _p(f"{key}{k}", col.type)) for k in range(n)])

            st = b.update().where(
                b.c.bill_id.in_([_p(f"b_id{k}", b.c.bill_id.type) for k in range(n)])
            ).values(paid_amount=b.c.paid_amount + case(b.c.paid_amount, "b_p"),
                     late_fee_paid=b.c.late_fee_paid + case(b.c.late_fee_paid, "b_l"))
            st = self._bills_add.setdefault(n, st)
        return st

    def _items(self, conn, pay_id: str, items: list[dict]) -> None:
        """Payment ``pay_id``'s items, in one executemany (which pymysql sends as
        one multi-row INSERT, and SQLAlchemy batches as "insertmanyvalues")."""
        if items:
            conn.execute(self.items_insert, [
                {"pay_id": pay_id, "bill_id": r["bill_id"], "principal": r["principal"],
                 "late_fee": r["late_fee"]} for r in items])

    def _bills(self, conn, items: list[dict], sign: int) -> None:
        """The items' amounts added onto (sign +1) or taken back off (-1) their bills."""
        for at in range(0, len(items), self.BATCH):
            part = items[at:at + self.BATCH]
            params = {}
            for k, r in enumerate(part):
                params[f"b_id{k}"] = r["bill_id"]
                params[f"b_p{k}"] = sign * r["principal"]
                params[f"b_l{k}"] = sign * r["late_fee"]
            conn.execute(self.bills_add(len(part)), params)

    def post(self, conn, *, pay: dict, items: list[dict], replay: bool = False) -> bool:
        """N8's payment ``pay`` (pay_id, customer_no, amount, pay_date, bank_code,
        bank_serial, channel, status, created_at) with ``items`` (bill_id,
        principal, late_fee) onto the bills.  False: it was there already."""
        if replay and self._status(conn, pay["pay_id"], lock=True) is not None:
            return False
        # the payment's row first: a replay racing the transaction that is posting
        # it waits here on its key, and fails, before touching a bill
        conn.execute(self.payment_insert, pay)
        self._items(conn, pay["pay_id"], items)
        self._bills(conn, items, +1)
        return True

    def undo(self, conn, *, pay_id: str, items: list[dict], replay: bool = False,
             at: datetime | None = None) -> bool:
        """Take payment ``pay_id``'s ``items`` back off the bills and cancel it (C).
        False: it was cancelled already (or never posted).  ``at``: when (an
        adapter that writes a row of its own records it)."""
        if replay and self._status(conn, pay_id, lock=True) in (None, "C"):
            return False
        self._bills(conn, items, -1)
        conn.execute(self.payment_status, {"k_pay": pay_id, "k_status": "C"})
        return True

    def confirm(self, conn, *, pay_id: str, replay: bool = False,
                at: datetime | None = None) -> bool:
        """A pending payment made normal (N); ``at`` as for :meth:`undo`."""
        if replay and self._status(conn, pay_id, lock=True) != "P":
            return False
        conn.execute(self.payment_status, {"k_pay": pay_id, "k_status": "N"})
        return True

    def invoice_use(self, conn, *, invoice_no: str, pay_id: str, customer_no: str,
                    amount: int, now: datetime, replay: bool = False) -> str | None:
        """Mark a number issued (I) for a payment.  Returns None when done, or
        N8's status when N8 has the number but not as unused.  A number N8 never
        heard of (an N8 that keeps no unused stock) is inserted."""
        t = self.n8["invoice"]
        r = conn.execute(self.invoice_use_st, {"k_no": invoice_no, "k_pay": pay_id,
                                               "k_cust": customer_no, "k_amount": amount,
                                               "k_now": now})
        if r.rowcount == 1:
            return None
        row = conn.execute(sa.select(t.c.status.label("status"), t.c.pay_id.label("pay_id"))
                           .where(t.c.invoice_no == invoice_no)).first()
        if row is not None:
            if replay and row[0] == "I" and row[1] == pay_id:
                return None
            return row[0] or "?"
        conn.execute(t.insert().values(invoice_no=invoice_no, pay_id=pay_id,
                                       customer_no=customer_no, amount=amount, status="I",
                                       issued_at=now))
        return None

    def invoice_void(self, conn, *, invoice_no: str, pay_id: str | None = None,
                     customer_no: str | None = None, amount: int | None = None,
                     replay: bool = False) -> None:
        """Mark a number void (V); inserts the row if N8 lacks it."""
        t = self.n8["invoice"]
        values: dict = {"status": "V"}
        if pay_id is not None:
            values.update(pay_id=pay_id, customer_no=customer_no, amount=amount)
        r = conn.execute(t.update().where(t.c.invoice_no == invoice_no).values(**values))
        if r.rowcount == 0:
            values.setdefault("amount", 0)
            conn.execute(t.insert().values(invoice_no=invoice_no, **values))

    def invoice_stock(self, conn, *, numbers: list[str], replay: bool = False) -> None:
        """Unused numbers (U), one row each; on a replay those N8 has are skipped."""
        t = self.n8["invoice"]
        if replay:
            have = {r[0] for r in conn.execute(
                sa.select(t.c.invoice_no).where(t.c.invoice_no.in_(numbers)))}
            numbers = [n for n in numbers if n not in have]
        for i in range(0, len(numbers), 500):
            conn.execute(t.insert(), [{"invoice_no": n, "status": "U", "amount": 0}
                                      for n in numbers[i:i + 500]])

    def agreement(self, conn, *, customer_no: str, bank_code: str | None,
                  account_no: str | None, replay: bool = False) -> None:
        """The customer's withholding bank and account (None: cleared)."""
        c = self.n8["customer"]
        conn.execute(c.update().where(c.c.customer_no == customer_no)
                     .values(withholding_bank=bank_code, withholding_account=account_no))

    def checks(self, conn) -> list:
        """What ``bankgate n8 check`` proves for this adapter beyond the mapping
        (the mapped tables' own checks cover the direct writes)."""
        return []


# -- the outbox's encoding of operations ------------------------------------------------


def _tag(v):
    """What JSON cannot hold itself, for :func:`encode`: a time or a date, tagged."""
    if isinstance(v, datetime):
        return {"$dt": v.isoformat()}
    if isinstance(v, date):
        return {"$d": v.isoformat()}
    raise TypeError(f"{type(v).__name__} in an N8 operation cannot go into the outbox")


def _dec(v):
    if isinstance(v, dict):
        if set(v) == {"$dt"}:
            return datetime.fromisoformat(v["$dt"])
        if set(v) == {"$d"}:
            return date.fromisoformat(v["$d"])
        return {k: _dec(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_dec(x) for x in v]
    return v


def encode(ops: list[tuple[str, dict]]) -> str:
    """Operations as the outbox keeps them (JSON; dates tagged)."""
    return json.dumps(ops, ensure_ascii=False, sort_keys=True, default=_tag)


def decode(text: str) -> list[tuple[str, dict]]:
    return [(op, _dec(args)) for op, args in json.loads(text)]
