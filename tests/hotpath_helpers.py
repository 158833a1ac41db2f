"""What the folded paths' tests share (tests/test_hotpath.py: PostgreSQL with N8
beside the gateway; tests/test_splithot.py: N8 in a database of its own): one
customer's random bills, the payment run against a folded store and a generic one,
and the dues the ledger must see."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import timedelta

import sqlalchemy as sa
from conftest import BANKS, NOW, FakeClock, seed_fixture
from hypothesis import event
from hypothesis import strategies as st
from ledger_helpers import TODAY, pay, query

from bankgate.canon.messages import Outcome
from bankgate.domain.ledger import BankPolicy, Ledger, _Bill, allocate, late_fee
from bankgate.store import model
from bankgate.store.db import Store

CUSTOMER = "200000001"
PPM = {"01": 500, "02": 0, "03": 1000}  # late fee per day, parts per million (class R)

bill_sets = st.lists(
    st.tuples(
        st.sampled_from(sorted(PPM)),  # fee type
        st.sampled_from(["2025-01", "2025-02", "2025-03"]),  # period (ties: bill id order)
        st.integers(1, 400_000),  # amount
        st.floats(0, 1),  # share already paid (1: a paid bill, not open)
        st.integers(0, 3000),  # late fee already paid
        st.integers(-400, 60),  # due date, days from the trade date
    ),
    min_size=0, max_size=5,
)

amounts = st.one_of(
    st.just(lambda q: q.total),  # exactly what is due
    st.integers(1, 1_500_000).map(lambda n: lambda q: n),  # partial, or an excess
    st.integers(1, 20_000).map(lambda n: lambda q: q.total + n),  # due + an excess
)


def seed(store: Store, spec: list[tuple], status: str = "A", prepaid: int = 0) -> None:
    """N8's tariffs, the customer and its bills from ``spec`` (bill_sets' items);
    a prepaid balance in the gateway's database."""
    n8 = store.n8
    with store.n8_engine.begin() as c:
        c.execute(n8["tariff"].insert(), [
            {"fee_type": f, "customer_class": "R", "unit_price": 100, "late_fee_ppm": ppm}
            for f, ppm in PPM.items()])
        c.execute(n8["customer"].insert(), [{"customer_no": CUSTOMER, "name": "赵六",
                                             "address": None, "customer_class": "R",
                                             "status": status}])
        # bill ids in reverse of the list order, so the list order is not the bills' order
        for i, (fee, period, amount, share, late_paid, due) in enumerate(spec):
            c.execute(n8["bill"].insert().values(
                bill_id=f"H{9 - i}", customer_no=CUSTOMER, fee_type=fee, period=period,
                amount=amount, paid_amount=int(amount * share), late_fee_paid=late_paid,
                due_date=TODAY + timedelta(days=due)))
    if prepaid:
        with store.engine.begin() as c:
            c.execute(model.prepaid.insert().values(customer_no=CUSTOMER, balance=prepaid,
                                                    updated_at=NOW))


def expected_dues(spec: list[tuple]) -> list[_Bill]:
    """The open bills, oldest first, with their late fees: what the ledger must see."""
    out = []
    for i, (fee, period, amount, share, late_paid, due) in enumerate(spec):
        outstanding = amount - int(amount * share)
        if outstanding > 0:
            out.append(_Bill(f"H{9 - i}", fee, period, outstanding, late_fee(
                outstanding, TODAY + timedelta(days=due), TODAY, PPM[fee], late_paid)))
    return sorted(out, key=lambda b: (b.period, b.bill_id))


def no_receipt(result: str | None) -> str | None:
    """A journaled answer without its receipt number (which differs between runs)."""
    if not result:
        return result
    d = json.loads(result)
    d.pop("receipt_no", None)
    return json.dumps(d, sort_keys=True)


def run_payment(store: Store, spec, status, prepaid, amount_of, named, *,
                reset: Callable[[Store], None], books: Callable[[Store], dict],
                serial: str = "P1"):
    """Seed, query, pay (twice: the repeat), query again, and read back everything
    (``books``): what both paths must agree on."""
    reset(store)
    seed(store, spec, status, prepaid)
    ledger = Ledger(store, {"any": BankPolicy("any", "106210", policy="any")},
                    now=FakeClock())
    q = ledger.query(query(CUSTOMER, bank="any"))
    amount = max(1, amount_of(q))  # 0 is a format matter, tested elsewhere
    bill_ids = tuple(b.bill_id for b in q.bills[:named]) if named else ()
    req = pay(serial, customer=CUSTOMER, amount=amount, bank="any", bill_ids=bill_ids)
    first = ledger.pay(req)
    again = ledger.pay(req)
    after = ledger.query(query(CUSTOMER, bank="any"))
    strip = lambda r: dataclasses.replace(r, receipt_no="")  # noqa: E731
    return q, strip(first), strip(again), after, amount, bill_ids, books(store)


def check_payment(run, spec, status, prepaid) -> None:
    """What :func:`run_payment` gave (either path's: they are equal) is what the
    ledger's rules say: the dues the query shows, the repeat's answer, the allocation
    :func:`~bankgate.domain.ledger.allocate` makes, and every row it left."""
    q, first, again, after, amount, bill_ids, books = run
    event(f"pay {first.outcome.value}")
    event(f"allocations: {min(len(books['allocations']), 3)}+")
    assert again == dataclasses.replace(first, retry=True)
    dues = expected_dues(spec)
    if status != "A":
        assert q.outcome is Outcome.ACCOUNT_LOCKED and first.outcome is Outcome.ACCOUNT_LOCKED
        return
    assert [(b.bill_id, b.fee_type, b.period, b.amount, b.late_fee) for b in q.bills] == [
        (b.bill_id, b.fee_type, b.period, b.outstanding, b.late) for b in dues]
    assert q.prepaid_balance == prepaid
    if first.outcome is not Outcome.OK:
        assert books["payments"] == [] and books["allocations"] == [] and books["n8"] == []
        assert not dues or bill_ids  # "any" takes every amount unless bills are named
        return
    chosen = [b for b in dues if b.bill_id in bill_ids] if bill_ids else dues
    rows, excess = allocate(chosen, amount)
    assert books["allocations"] == [(r["bill_id"], r["principal"], r["late_fee"])
                                    for r in rows]
    assert sorted(books["n8_items"]) == sorted((0, r["bill_id"], r["principal"],
                                                r["late_fee"]) for r in rows)
    assert books["prepaid"] == ([(CUSTOMER, prepaid + excess)] if prepaid + excess else [])
    (p,) = books["payments"]
    assert (p["principal"], p["late_fee"], p["prepaid_in"]) == (
        sum(r["principal"] for r in rows), sum(r["late_fee"] for r in rows), excess)
    total = sum(b.outstanding + b.late for b in dues)
    assert first.remaining_due == total - (amount - excess)
    assert after.total == first.remaining_due
    for bill_id, (paid, late_paid) in books["bills"].items():
        before = next(s for i, s in enumerate(spec) if f"H{9 - i}" == bill_id)
        r = next((r for r in rows if r["bill_id"] == bill_id), {"principal": 0, "late_fee": 0})
        assert (paid, late_paid) == (int(before[2] * before[3]) + r["principal"],
                                     before[4] + r["late_fee"])


@contextmanager
def refusing(engine: sa.Engine, table: sa.Table,
             check: Callable[[Callable[[str], str]], str]) -> Iterator[None]:
    """The database on ``engine`` refuses, for the block, the rows of ``table`` that
    fail ``check(quote)`` (a CHECK constraint's condition, the column names quoted
    by ``quote``): a write that fails half-way through a payment.  (SQLite, which
    cannot add a constraint to a table: triggers that abort such an insert or
    update.)"""
    prep = engine.dialect.identifier_preparer
    name = prep.format_table(table)
    if engine.dialect.name == "sqlite":
        cols = {c.name: f"NEW.{prep.quote(c.name)}" for c in table.columns}
        new_row = check(lambda col: cols[col])
        made = [f"bg_test_refuse_{event.lower()}" for event in ("INSERT", "UPDATE")]
        add = [f"CREATE TRIGGER {trigger} BEFORE {event} ON {name} WHEN NOT ({new_row})"
               " BEGIN SELECT RAISE(ABORT, 'bg_test_refuse'); END"
               for trigger, event in zip(made, ("INSERT", "UPDATE"), strict=True)]
        drop = [f"DROP TRIGGER {trigger}" for trigger in made]
    else:
        add = [f"ALTER TABLE {name} ADD CONSTRAINT bg_test_refuse CHECK ({check(prep.quote)})"]
        drop = [f"ALTER TABLE {name} DROP CONSTRAINT bg_test_refuse"]
    with engine.begin() as c:
        for sql in add:
            c.execute(sa.text(sql))
    try:
        yield
    finally:
        with engine.begin() as c:
            for sql in drop:
                c.execute(sa.text(sql))


def replanned(store: Store, payments: int = 16,
              before: Callable[[Store], None] | None = None
              ) -> dict[str, list[tuple[str, int, int]]]:
    """``payments`` small payments through a fresh ``store`` (the fixture seeded,
    then ``before(store)``; one connection per database: the payments are sequential),
    then every PostgreSQL statement those connections prepared that its server
    still plans afresh at each execution: {database: [(statement, generic plans,
    custom plans)]}.  PostgreSQL plans a prepared statement for its parameters
    five times, then keeps a generic plan unless the plans for the values look
    cheaper; a statement that always looks cheaper is planned at every
    execution, which costs more than the execution."""
    seed_fixture(store)
    if before is not None:
        before(store)
    ledger = Ledger(store, dict(BANKS), now=FakeClock())
    for n in range(payments):
        assert ledger.pay(pay(f"PLAN{n}", amount=100, bank="partial")).outcome is Outcome.OK
    out: dict[str, list[tuple[str, int, int]]] = {}
    for name, engine in (("gateway", store.engine), ("n8", store.n8_engine)):
        if engine.dialect.name != "postgresql" or (name == "n8" and not store.split):
            continue
        # the payments' connection: the pool's one; N8's, the one this thread keeps
        with (engine.connect() if name == "gateway" else nullcontext(store.n8_writer())) as c:
            rows = c.exec_driver_sql(
                "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE generic_plans + custom_plans >= 10").all()
            c.rollback()
        assert rows, f"{name}: no statement prepared and run 10 times"
        for text, generic, custom in rows:
            if generic == 0:
                out.setdefault(name, []).append((text[:120], generic, custom))
    return out
