"""The SQL of one transaction, as small functions returning plain values.

A :class:`Tx` wraps one connection inside one transaction.  The ledger calls
these methods and keeps its rules to itself; nothing here decides anything.
Rows come back as dicts (or tuples of dicts), never as live result objects.
On PostgreSQL a query's and a payment's statements are folded into fewer
(:mod:`bankgate.store.pghot`); the methods and what they return are the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, datetime
from typing import TypeVar

import sqlalchemy as sa

from bankgate.canon.messages import Outcome
from bankgate.store import model, n8outbox
from bankgate.store.dialects import lock_rows

T = TypeVar("T")


class Duplicate(Exception):
    """The journal key is taken: the request is a repeat."""


def _select(t: sa.Table) -> sa.Select:
    """SELECT every column of a mapped N8 table, labelled by its logical name."""
    return sa.select(*[c.label(c.key) for c in t.c])


def _dicts(result) -> list[dict]:
    return [dict(r) for r in result.mappings()]


def _p(name: str, type_=None) -> sa.BindParameter:
    return sa.bindparam(name, type_=type_)


class HotStatements:
    """The hot path's statements, built once per store (per N8 mapping).

    Building a SQLAlchemy statement and its cache key costs more Python time
    than the database takes to run it; these are built once with bind
    parameters and executed with plain dicts.
    """

    def __init__(self, store):
        j, c, p, a, pp = model.journal, model.cutoff, model.payment, model.allocation, model.prepaid
        n8 = store.n8
        self._n8 = n8
        self._more: dict = {}
        b = n8["bill"]
        key = (j.c.bank == _p("k_bank"), j.c.trade_date == _p("k_date"),
               j.c.serial == _p("k_serial"))
        self.claim = j.insert()
        self.journal_get = sa.select(j).where(*key)
        self.journal_finish = j.update().where(j.c.id == _p("k_id")).values(
            outcome=_p("k_outcome"), result=_p("k_result"), payment_id=_p("k_pid"))
        self.is_closed = sa.select(c.c.bank).where(
            c.c.bank == _p("k_bank"), c.c.trade_date == _p("k_date"))
        day = model.trade_day
        # a shared row lock held to the end of the transaction (FOR SHARE, LOCK IN
        # SHARE MODE; SQL Server has no locking clause: a table hint)
        self.day_locked = sa.select(day.c.closed).where(
            day.c.bank == _p("k_bank"), day.c.trade_date == _p("k_date")
        ).with_for_update(read=True).with_hint(day, "WITH (HOLDLOCK, ROWLOCK)", "mssql")
        self.day_insert = day.insert()
        cust = n8["customer"]
        self.customer = _select(cust).where(cust.c.customer_no == _p("k_cust"))
        # the customer with what a transaction needs to know beside it, in one
        # round trip: is the bank's date closed, and the prepaid balance
        closed = (
            sa.select(c.c.bank).where(c.c.bank == _p("k_bank"), c.c.trade_date == _p("k_date"))
            .scalar_subquery()
        )
        balance = sa.select(pp.c.balance).where(pp.c.customer_no == cust.c.customer_no)
        self.customer_context = sa.select(
            *[col.label(col.key) for col in cust.c],
            closed.label("bg_closed"),
            balance.scalar_subquery().label("bg_prepaid"),
        ).where(cust.c.customer_no == _p("k_cust"))
        open_bills = (
            _select(b)
            .where(b.c.customer_no == _p("k_cust"), b.c.paid_amount < b.c.amount)
            .order_by(b.c.period, b.c.bill_id)
        )
        self.open_bills = open_bills
        self.open_bills_locked = lock_rows(open_bills, b)
        self.payment_insert = p.insert()
        self.allocations_insert = a.insert()
        self.allocations = (
            sa.select(a.c.bill_id, a.c.principal, a.c.late_fee)
            .where(a.c.payment_id == _p("k_pid"))
            .order_by(a.c.id)
        )
        by_key = sa.select(p).where(p.c.bank == _p("k_bank"), p.c.trade_date == _p("k_date"),
                                    p.c.serial == _p("k_serial"))
        self.payment_by_key = by_key
        self.payment_by_key_locked = lock_rows(by_key, p)
        prepaid = sa.select(pp.c.balance).where(pp.c.customer_no == _p("k_cust"))
        self.prepaid_get = prepaid
        self.prepaid_get_locked = lock_rows(prepaid, pp)
        self.prepaid_add = pp.update().where(pp.c.customer_no == _p("k_cust")).values(
            balance=pp.c.balance + _p("k_delta", sa.BigInteger), updated_at=_p("k_now"))
        self.prepaid_insert = pp.insert()
        self.undo_insert = model.undo.insert()
        self.audit = model.audit.insert()

    def more(self, build: Callable[[dict[str, sa.Table]], T]) -> T:
        """Another store module's hot statements, ``build(n8_tables)`` (e.g.
        :class:`bankgate.store.supply.SupplyStatements`): built on first use, then
        kept here, so once per store like these."""
        st = self._more.get(build)
        if st is None:
            st = self._more.setdefault(build, build(self._n8))
        return st


class Tx:
    """One transaction.  ``conn`` is the gateway's database; N8's tables are read
    and written on :attr:`n8conn`, the same connection unless N8 is a database
    of its own (``[n8.database]``), when it is a second connection in a second
    transaction, opened on first use and committed after the gateway's
    (:mod:`bankgate.store.n8outbox`)."""

    def __init__(self, conn: sa.Connection, store, n8conn: sa.Connection | None = None):
        self.conn = conn
        self.store = store
        self.n8 = store.n8
        self.lock = store.row_locks
        self.split = store.split
        # row locks on N8's rows: N8's own database decides (SQLite locks the file)
        self.n8lock = store.n8_row_locks
        self._n8conn = n8conn if self.split else conn
        self._n8_open = None  # split: opens N8's connection and transaction on first use
        # split: N8's operations of this transaction, for the outbox (bankgate.store.n8write)
        self.n8_ops: list[tuple[str, dict]] = []
        self.journal_id: int | None = None  # the journal row this transaction claimed
        self.receipt_no: str | None = None  # the payment it posted or undid, for the outbox
        self.sql: HotStatements = store.statements
        # PostgreSQL's folded statements (bankgate.store.pghot), or None: the generic path
        self.hot = store.hot_path
        # N8 apart: the folded statements (bankgate.store.splithot), or None: the generic path
        self.shot = getattr(store, "split_hot", None) if self.split else None
        # split: the outbox row the payment's post wrote itself (id, operations in it,
        # outbox ids it deleted), or None: bankgate.store.n8outbox.run_split writes it
        self.outbox_row: tuple[int, int, list[int]] | None = None

    @property
    def n8conn(self) -> sa.Connection:
        """N8's connection (the gateway's own unless N8 is a database of its own)."""
        if self._n8conn is None:
            self._n8conn = self._n8_open()
        return self._n8conn

    def _x(self, stmt, params=None):
        return self.conn.execute(stmt, params) if params is not None else self.conn.execute(stmt)

    def _n(self, stmt, params=None):
        """Execute on N8's connection."""
        c = self.n8conn
        return c.execute(stmt, params) if params is not None else c.execute(stmt)

    def n8_do(self, op: str, **args):
        """Apply N8 operation ``op`` (:mod:`bankgate.store.n8write`) through the
        store's posting adapter, now, in N8's transaction; with N8 apart it is
        also kept for the outbox, so it is applied even if N8's commit is lost."""
        result = self.store.writer.apply(self.n8conn, op, args)
        if self.split:
            self.n8_ops.append((op, args))
        return result

    # -- journal ---------------------------------------------------------------

    def claim(self, bank: str, trade_date: date, serial: str, kind: str, content: str,
              now: datetime) -> int:
        """Insert the journal row for this key, or raise :class:`Duplicate`.

        On PostgreSQL and MariaDB a concurrent claim of the same key waits
        here until the first transaction ends, then fails: so only one of two
        concurrent identical requests ever posts.

        This must be the transaction's first write: a duplicate aborts the
        whole transaction (no savepoint, to save two round trips), and the
        caller reads the first answer in a fresh one.
        """
        try:
            r = self._x(self.sql.claim, {
                "bank": bank, "trade_date": trade_date, "serial": serial, "kind": kind,
                "content": content, "outcome": "PROCESSING", "created_at": now,
            })
        except sa.exc.IntegrityError:
            raise Duplicate(serial) from None
        self.journal_id = r.inserted_primary_key[0]
        return self.journal_id

    def journal_get(self, bank: str, trade_date: date, serial: str) -> dict | None:
        rows = _dicts(self._x(self.sql.journal_get,
                              {"k_bank": bank, "k_date": trade_date, "k_serial": serial}))
        if not rows:
            return None
        row = rows[0]
        row["result"] = json.loads(row["result"]) if row["result"] else {}
        return row

    def finish_n8(self, journal_id: int) -> None:
        """With N8 apart: apply to N8 what this journal row's transaction left in
        the outbox (its N8 commit failed), so its answer may be given; raises
        :class:`~bankgate.store.errors.N8Unavailable` while N8 refuses."""
        if not self.split:
            return
        o = model.n8_outbox
        for (oid,) in self._x(sa.select(o.c.id).where(o.c.journal_id == journal_id)).all():
            n8outbox.apply_row(self.store, oid)

    def block(self, bank: str, trade_date: date, serial: str, now: datetime) -> bool:
        """Remember that a reversal came before the payment ``serial``.

        False when the key was taken meanwhile (its payment is being posted).
        """
        try:
            with self.conn.begin_nested():
                self._x(
                    model.journal.insert().values(
                        bank=bank, trade_date=trade_date, serial=serial, kind="BLOCK",
                        content="", outcome=Outcome.REVERSED_FIRST.value, created_at=now,
                    )
                )
        except sa.exc.IntegrityError:
            return False
        return True

    def journal_finish(self, journal_id: int, outcome: str, result: dict,
                       payment_id: int | None = None) -> None:
        if self.hot is not None:
            self.hot.finish(self.conn, journal_id, outcome, json.dumps(result, sort_keys=True),
                            payment_id)
            return
        self._x(self.sql.journal_finish, {
            "k_id": journal_id, "k_outcome": outcome,
            "k_result": json.dumps(result, sort_keys=True), "k_pid": payment_id,
        })

    # -- a query's and a payment's reads and writes, folded where the database allows --

    def query_context(self, customer_no: str, bank: str,
                      trade_date: date) -> tuple[dict | None, list[dict]]:
        """The customer as :meth:`customer_context` gives it (None: no such
        customer) and its open bills as :meth:`open_bills` gives them: one
        statement on PostgreSQL, two elsewhere."""
        if self.hot is not None:
            return self.hot.query(self.conn, customer_no, bank, trade_date)
        if self.shot is not None:  # N8 apart: one statement on each side
            return self.shot.query(self, customer_no, bank, trade_date)
        cust = self.customer_context(customer_no, bank, trade_date)
        return cust, self.open_bills(customer_no) if cust is not None else []

    def claim_payment(self, bank: str, trade_date: date, serial: str, kind: str, content: str,
                      now: datetime, customer_no: str) -> tuple[int, dict | None, list[dict]]:
        """:meth:`claim` (raising :class:`Duplicate`), then the customer and its
        open bills locked for the payment (``open_bills(lock=True)``): the journal
        id, the customer (None: no such customer) and the bills.  On a database
        server the date's row is read ``FOR SHARE`` (:meth:`lock_day`) and the
        customer's ``bg_closed`` says what it holds: a cut-off cannot count the
        date until this transaction ends.  One statement on PostgreSQL, four
        elsewhere (three on SQLite, whose single writer orders it with a cut-off)."""
        if self.hot is not None:
            try:
                jid, cust, bills = self.hot.claim(self.conn, {
                    "bank": bank, "trade_date": trade_date, "serial": serial, "kind": kind,
                    "content": content, "now": now, "customer_no": customer_no})
            except sa.exc.IntegrityError:
                raise Duplicate(serial) from None
            if cust is not None and cust["bg_closed"] is None:
                # the date's row was committed after the claim's snapshot was taken
                # (another first payment of the date): lock it in a statement of its own
                cust["bg_closed"] = self.lock_day(bank, trade_date)
            return jid, cust, bills
        if self.shot is not None:  # N8 apart: one statement on each side (bankgate.store.splithot)
            try:
                return self.shot.claim(self, bank, trade_date, serial, kind, content, now,
                                       customer_no)
            except sa.exc.IntegrityError:
                raise Duplicate(serial) from None
        jid = self.claim(bank, trade_date, serial, kind, content, now)
        # the date's row before the bills: a payment never waits for a cut-off holding bills
        closed = self.lock_day(bank, trade_date) if self.lock else False
        cust = self.customer_context(customer_no, bank, trade_date)
        if cust is not None:
            cust["bg_closed"] = cust["bg_closed"] or closed
        return jid, cust, self.open_bills(customer_no, lock=True) if cust is not None else []

    def post_payment(self, payment: dict, rows: list[dict], n8: dict,
                     journal: tuple[int, str, dict] | None = None) -> int:
        """Write a payment: its ``bg_payment`` row (``payment``: the columns of
        :meth:`payment_insert`), its allocations ``rows`` onto the bills, its
        ``prepaid_in`` onto the prepaid balance, N8's payment (``n8``: the
        arguments of :meth:`n8_payment_insert` but ``items``) with ``rows`` as its
        items; and ``journal`` = (journal id, outcome, result) finished with the
        payment's id, when the answer is known already.  Returns the payment id.
        One statement on PostgreSQL."""
        if self.hot is not None:
            if journal is not None:
                journal = (journal[0], journal[1], json.dumps(journal[2], sort_keys=True))
            return self.hot.post(self.conn, payment, rows, n8, journal)
        if self.shot is not None:  # N8 apart: bankgate.store.splithot
            return self.shot.post(self, payment, rows, n8, journal)
        pid = self.payment_insert(**payment)
        self.allocations_insert(pid, rows)
        if payment["prepaid_in"]:
            self.prepaid_add(payment["customer_no"], payment["prepaid_in"],
                             payment["created_at"])
        self.n8_post(**n8, items=rows)
        if journal is not None:
            self.journal_finish(journal[0], journal[1], journal[2], pid)
        return pid

    # -- cut-off ---------------------------------------------------------------

    def is_closed(self, bank: str, trade_date: date, lock: bool = False) -> bool:
        """Is the bank's trade date closed?  ``lock``: and keep a cut-off from
        closing it until this transaction ends (:meth:`lock_day`), for a
        transaction that changes what the date's cut-off counts (a reversal)."""
        if lock and self.lock and self.lock_day(bank, trade_date):
            return True
        r = self._x(self.sql.is_closed, {"k_bank": bank, "k_date": trade_date})
        return r.first() is not None

    def lock_day(self, bank: str, trade_date: date) -> bool:
        """Read the date's ``bg_trade_day`` row ``FOR SHARE``, creating it (open)
        when there is none; True when it is closed.

        A locking read returns the row as last committed, after waiting for a
        cut-off that is closing it; and a cut-off's update waits for every
        transaction holding the row, so it counts what they post.  A row this
        transaction inserted is its own until it commits: a cut-off waits for it.
        """
        key = {"k_bank": bank, "k_date": trade_date}
        row = self._x(self.sql.day_locked, key).first()
        if row is None:
            try:
                with self.conn.begin_nested():
                    self._x(self.sql.day_insert,
                            {"bank": bank, "trade_date": trade_date, "closed": False})
                return False
            except sa.exc.IntegrityError:  # another transaction's, committed meanwhile
                row = self._x(self.sql.day_locked, key).one()
        return bool(row[0])

    def close_day(self, bank: str, trade_date: date) -> None:
        """Mark the date's ``bg_trade_day`` row closed (creating it closed), the
        cut-off's first step: on a database server the update waits for the
        payments and reversals holding the row, and those arriving later wait for
        the cut-off's commit and then read the date closed."""
        t = model.trade_day
        close = t.update().where(t.c.bank == bank, t.c.trade_date == trade_date).values(
            closed=True)
        if self._x(close).rowcount:
            return
        try:
            with self.conn.begin_nested():
                self._x(t.insert().values(bank=bank, trade_date=trade_date, closed=True))
        except sa.exc.IntegrityError:  # a payment's, committed meanwhile
            self._x(close)

    def cutoff_get(self, bank: str, trade_date: date) -> dict | None:
        c = model.cutoff
        rows = _dicts(
            self._x(sa.select(c).where(c.c.bank == bank, c.c.trade_date == trade_date))
        )
        return rows[0] if rows else None

    def cutoff_insert(self, bank: str, trade_date: date, reason: str, now: datetime,
                      count: int, total: int) -> bool:
        try:
            with self.conn.begin_nested():
                self._x(
                    model.cutoff.insert().values(
                        bank=bank, trade_date=trade_date, reason=reason, closed_at=now,
                        count=count, total=total,
                    )
                )
        except sa.exc.IntegrityError:
            return False
        return True

    def closed_dates(self, bank: str) -> list[dict]:
        c = model.cutoff
        return _dicts(self._x(sa.select(c).where(c.c.bank == bank).order_by(c.c.trade_date)))

    def standing_totals(self, bank: str, trade_date: date) -> tuple[int, int]:
        p = model.payment
        row = self._x(
            sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(p.c.amount), 0)).where(
                p.c.bank == bank, p.c.trade_date == trade_date, p.c.status == "POSTED"
            )
        ).first()
        return int(row[0]), int(row[1])

    # -- N8: customers, tariffs, bills -------------------------------------------

    def customer(self, customer_no: str) -> dict | None:
        rows = _dicts(self._n(self.sql.customer, {"k_cust": customer_no}))
        return rows[0] if rows else None

    def customer_context(self, customer_no: str, bank: str, trade_date: date) -> dict | None:
        """The customer, plus ``bg_closed`` (is the bank's trade date closed)
        and ``bg_prepaid`` (the prepaid balance): one round trip (three with N8
        apart: the customer from N8, the rest from the gateway's database)."""
        if self.split:
            row = self.customer(customer_no)
            if row is None:
                return None
            if self.shot is not None:  # the two of the gateway's in one
                row["bg_closed"], row["bg_prepaid"] = self.shot.context(
                    self.conn, customer_no, bank, trade_date)
                return row
            row["bg_closed"] = self.is_closed(bank, trade_date)
            row["bg_prepaid"] = self.prepaid_get(customer_no)
            return row
        rows = _dicts(self._x(self.sql.customer_context,
                              {"k_cust": customer_no, "k_bank": bank, "k_date": trade_date}))
        if not rows:
            return None
        row = rows[0]
        row["bg_closed"] = row["bg_closed"] is not None
        row["bg_prepaid"] = int(row["bg_prepaid"] or 0)
        return row

    def customers_with_open_bills(self, limit: int) -> list[str]:
        """Active customers with at least one open bill (the simulator's pick)."""
        c, b = self.n8["customer"], self.n8["bill"]
        open_bill = (
            sa.select(b.c.bill_id)
            .where(b.c.customer_no == c.c.customer_no, b.c.paid_amount < b.c.amount)
            .exists()
        )
        q = (sa.select(c.c.customer_no).where(c.c.status == "A", open_bill)
             .order_by(c.c.customer_no).limit(limit))
        return [str(r[0]) for r in self._n(q)]

    def tariffs(self) -> dict[tuple[str, str], dict]:
        t = self.n8["tariff"]
        return {(r["fee_type"], r["customer_class"]): r for r in _dicts(self._n(_select(t)))}

    def open_bills(self, customer_no: str, lock: bool = False) -> list[dict]:
        """The customer's bills with principal outstanding, oldest first."""
        q = self.sql.open_bills_locked if lock and self.n8lock else self.sql.open_bills
        return _dicts(self._n(q, {"k_cust": customer_no}))

    def bills(self, bill_ids: list[str]) -> list[dict]:
        b = self.n8["bill"]
        return _dicts(self._n(_select(b).where(b.c.bill_id.in_(bill_ids))))

    # -- gateway payments ----------------------------------------------------------

    def payment_insert(self, **values) -> int:
        r = self._x(self.sql.payment_insert, values)
        return r.inserted_primary_key[0]

    def allocations_insert(self, payment_id: int, rows: list[dict]) -> None:
        if rows:
            self._x(
                self.sql.allocations_insert,
                [
                    {"payment_id": payment_id, "bill_id": r["bill_id"],
                     "principal": r["principal"], "late_fee": r["late_fee"]}
                    for r in rows
                ],
            )

    def allocations(self, payment_id: int) -> list[dict]:
        return _dicts(self._x(self.sql.allocations, {"k_pid": payment_id}))

    def payment_by_key(self, bank: str, trade_date: date, serial: str,
                       lock: bool = False) -> dict | None:
        q = self.sql.payment_by_key_locked if lock and self.lock else self.sql.payment_by_key
        rows = _dicts(self._x(q, {"k_bank": bank, "k_date": trade_date, "k_serial": serial}))
        return rows[0] if rows else None

    def payment_by_id(self, payment_id: int, lock: bool = False) -> dict | None:
        p = model.payment
        q = sa.select(p).where(p.c.id == payment_id)
        if lock and self.lock:
            q = lock_rows(q, p)
        rows = _dicts(self._x(q))
        return rows[0] if rows else None

    def payment_by_receipt(self, receipt_no: str) -> dict | None:
        p = model.payment
        rows = _dicts(self._x(sa.select(p).where(p.c.receipt_no == receipt_no)))
        return rows[0] if rows else None

    def latest_standing_payment_id(self, customer_no: str) -> int | None:
        p = model.payment
        return self._x(
            sa.select(sa.func.max(p.c.id)).where(
                p.c.customer_no == customer_no, p.c.status.in_(("POSTED", "PENDING"))
            )
        ).scalar()

    def payment_set_status(self, payment_id: int, status: str, now: datetime | None = None,
                           **extra) -> None:
        p = model.payment
        values = {"status": status, **extra}
        if now is not None:
            values["undone_at"] = now
        self._x(p.update().where(p.c.id == payment_id).values(**values))

    def undo_insert(self, **values) -> None:
        self._x(self.sql.undo_insert, values)

    def expired_pending(self, now: datetime, limit: int = 100) -> list[int]:
        p = model.payment
        return [
            r[0]
            for r in self._x(
                sa.select(p.c.id)
                .where(p.c.status == "PENDING", p.c.expires_at <= now)
                .order_by(p.c.id)
                .limit(limit)
            )
        ]

    def payments_for_date(self, bank: str, trade_date: date) -> list[dict]:
        p = model.payment
        return _dicts(
            self._x(
                sa.select(p).where(p.c.bank == bank, p.c.trade_date == trade_date).order_by(p.c.id)
            )
        )

    # -- prepaid balances ---------------------------------------------------------

    def prepaid_get(self, customer_no: str, lock: bool = False) -> int:
        q = self.sql.prepaid_get_locked if lock and self.lock else self.sql.prepaid_get
        v = self._x(q, {"k_cust": customer_no}).scalar()
        return int(v or 0)

    def prepaid_add(self, customer_no: str, delta: int, now: datetime) -> None:
        r = self._x(self.sql.prepaid_add, {"k_cust": customer_no, "k_delta": delta, "k_now": now})
        if r.rowcount == 0:
            self._x(self.sql.prepaid_insert,
                    {"customer_no": customer_no, "balance": delta, "updated_at": now})

    # -- N8's payment records ---------------------------------------------------------

    def n8_post(self, pay_id: str, customer_no: str, amount: int, pay_date: date,
                bank_code: str, bank_serial: str, channel: str, status: str,
                now: datetime, items: list[dict]) -> None:
        """N8's payment record and its ``items`` onto the bills (operation ``post``)."""
        self.receipt_no = pay_id
        self.n8_do("post", pay={
            "pay_id": pay_id, "customer_no": customer_no, "amount": amount,
            "pay_date": pay_date, "bank_code": bank_code, "bank_serial": bank_serial,
            "channel": channel, "status": status, "created_at": now,
        }, items=[{"bill_id": i["bill_id"], "principal": i["principal"],
                   "late_fee": i["late_fee"]} for i in items])

    def n8_undo(self, pay_id: str, items: list[dict], now: datetime) -> None:
        """N8's payment cancelled and its ``items`` taken back off the bills."""
        self.receipt_no = pay_id
        self.n8_do("undo", pay_id=pay_id, at=now, items=[
            {"bill_id": i["bill_id"], "principal": i["principal"], "late_fee": i["late_fee"]}
            for i in items])

    def n8_confirm(self, pay_id: str, now: datetime) -> None:
        """A pending (two-phase) payment made normal in N8."""
        self.receipt_no = pay_id
        self.n8_do("confirm", pay_id=pay_id, at=now)

    # -- audit -------------------------------------------------------------------------

    def audit(self, now: datetime, actor: str, action: str, subject: str = "",
              detail: dict | None = None) -> None:
        self._x(self.sql.audit, {
            "at": now, "actor": actor, "action": action, "subject": subject,
            "detail": json.dumps(detail, ensure_ascii=False, sort_keys=True) if detail else None,
        })

    def audit_list(self, limit: int = 100) -> list[dict]:
        a = model.audit
        return _dicts(self._x(sa.select(a).order_by(a.c.id.desc()).limit(limit)))
