"""Helpers for ledger tests: building requests and checking the books."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import date

import sqlalchemy as sa

from bankgate.canon import messages as m
from bankgate.store import model

TODAY = date(2026, 11, 27)


def origin(bank: str = "fixed", d: date = TODAY) -> m.Origin:
    return m.Origin(bank=bank, trade_date=d, trade_time="093000", branch="210100001",
                    teller="T0000012", channel="01")


def pay(serial: str, customer: str = "100000123", amount: int = 548000, bank: str = "fixed",
        d: date = TODAY, bill_ids=(), **kw) -> m.PaymentRequest:
    content = m.fingerprint("PAY", customer, amount, ",".join(bill_ids))
    return m.PaymentRequest(origin(bank, d), serial, customer, amount, content=content,
                            bill_ids=tuple(bill_ids), **kw)


def rev(serial: str | None, orig: str, customer: str | None = "100000123",
        amount: int = 548000, bank: str = "fixed", d: date = TODAY) -> m.ReversalRequest:
    content = m.fingerprint("REV", customer, amount, orig)
    return m.ReversalRequest(origin(bank, d), orig, customer, amount, serial=serial,
                             content=content)


def query(customer: str = "100000123", bank: str = "fixed", d: date = TODAY) -> m.QueryRequest:
    return m.QueryRequest(origin(bank, d), customer)


def engine_of(store, table):
    """The engine holding ``table``: N8's own database for N8's tables
    ([n8.database]), else the gateway's."""
    return store.n8_engine if table.metadata is store.n8_metadata else store.engine


def clear(store) -> None:
    """Delete every row of the gateway's tables and of N8's, each on its database."""
    with store.engine.begin() as c:
        for t in reversed(model.metadata.sorted_tables):
            c.execute(t.delete())
    with store.n8_engine.begin() as c:
        for t in reversed(store.n8_metadata.sorted_tables):
            c.execute(t.delete())


def bills(store) -> dict[str, tuple[int, int]]:
    b = store.n8["bill"]
    with store.n8_engine.connect() as c:
        return {
            r.bill_id: (int(r.paid_amount), int(r.late_fee_paid))
            for r in c.execute(sa.select(*[col.label(col.key) for col in b.c]))
        }


def prepaid(store) -> dict[str, int]:
    with store.engine.connect() as c:
        return {r.customer_no: int(r.balance) for r in c.execute(sa.select(model.prepaid))
                if r.balance}


def count(store, table) -> int:
    with engine_of(store, table).connect() as c:
        return c.execute(sa.select(sa.func.count()).select_from(table)).scalar()


@contextmanager
def _n8_connection(store, conn):
    """N8's connection beside the gateway's ``conn``: ``conn`` itself when N8 is in
    the same database (a second SQLite connection would wait for the first's lock)."""
    if not store.split:
        yield conn
        return
    with store.n8_engine.connect() as n:
        yield n


def check_books(store) -> None:
    """The money invariants: each bill's paid amounts equal the sum of its
    standing allocations; no bill is over-paid; money in equals standing
    allocations plus prepaid balances; N8's payment records agree."""
    p, a = model.payment, model.allocation
    b = store.n8["bill"]
    with store.engine.connect() as c, _n8_connection(store, c) as n:
        standing = (
            sa.select(a.c.bill_id, sa.func.sum(a.c.principal).label("pr"),
                      sa.func.sum(a.c.late_fee).label("lf"))
            .join(p, p.c.id == a.c.payment_id)
            .where(p.c.status.in_(("POSTED", "PENDING")))
            .group_by(a.c.bill_id)
        )
        alloc = {r.bill_id: (int(r.pr), int(r.lf)) for r in c.execute(standing)}
        initial = getattr(store, "initial_paid", {})
        for r in n.execute(sa.select(*[col.label(col.key) for col in b.c])):
            base = initial.get(r.bill_id, (0, 0))
            got = (int(r.paid_amount) - base[0], int(r.late_fee_paid) - base[1])
            assert got == alloc.get(r.bill_id, (0, 0)), (
                f"bill {r.bill_id}: paid {r.paid_amount}/{r.late_fee_paid} but allocations "
                f"{alloc.get(r.bill_id)}"
            )
            assert 0 <= r.paid_amount <= r.amount, f"bill {r.bill_id} over-paid"
        money_in = c.execute(
            sa.select(sa.func.coalesce(sa.func.sum(p.c.amount), 0)).where(
                p.c.status.in_(("POSTED", "PENDING")))
        ).scalar()
        allocated = sum(x + y for x, y in alloc.values())
        balance = c.execute(
            sa.select(sa.func.coalesce(sa.func.sum(model.prepaid.c.balance), 0))
        ).scalar()
        assert int(money_in) == allocated + int(balance)
        n8p = store.n8["payment"]
        n8_in = n.execute(
            sa.select(sa.func.coalesce(sa.func.sum(n8p.c.amount), 0)).where(
                n8p.c.status.in_(("N", "P")))
        ).scalar()
        assert int(n8_in) == int(money_in)
