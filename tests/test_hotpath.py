"""PostgreSQL's hot path (bankgate/store/pghot.py) against the generic path.

The ledger tests run on every backend, so on PostgreSQL they run the hot path and
elsewhere the generic one.  Here both run on the same PostgreSQL database (a second
store with ``hot_path=False``): random customers' bills and payments must leave
exactly the same rows behind on both, and the allocations the folded statement
writes must be exactly :func:`bankgate.domain.ledger.allocate`'s.  Also: the SQL
follows the N8 mapping, the path is chosen by dialect, a payment that fails in its
folded write leaves nothing behind, a dropped connection is retried, PostgreSQL
keeps the prepared plans of a payment.
"""

from __future__ import annotations

import dataclasses
import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from conftest import BANKS, NOW, RENAMED, FakeClock, make_store, seed_fixture
from hotpath_helpers import (
    CUSTOMER,
    amounts,
    bill_sets,
    check_payment,
    no_receipt,
    refusing,
    replanned,
    run_payment,
    seed,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_helpers import TODAY, bills, check_books, count, pay, query

from bankgate.canon.messages import Outcome
from bankgate.domain.ledger import Ledger
from bankgate.store import model, pghot
from bankgate.store.db import Store


def _pair(backend: str, tmp_path) -> tuple[Store, Store]:
    hot = make_store(backend, tmp_path)
    generic = Store(hot.url, hot.mapping, threads=2, hot_path=False)
    return hot, generic


@pytest.fixture(scope="module", params=["postgres", "postgres-renamed"])
def stores(request, tmp_path_factory):
    hot, generic = _pair(request.param, tmp_path_factory.mktemp("hot"))
    yield hot, generic
    generic.stop()
    hot.drop_all()
    hot.stop()


def reset(store: Store) -> None:
    with store.engine.begin() as c:
        for t in reversed(model.metadata.sorted_tables):
            c.execute(t.delete())
        for t in reversed(store.n8_metadata.sorted_tables):
            c.execute(t.delete())


# -- which path, and its SQL ----------------------------------------------------------


def test_the_path_is_chosen_by_dialect_and_driver(tmp_path):
    sqlite = Store(f"sqlite:///{tmp_path / 'x.db'}")
    assert sqlite.hot_path is None
    sqlite.stop()
    for url, usable in (("postgresql+psycopg://u@h/db", True),
                        ("mysql+pymysql://u@h/db", False),
                        (f"sqlite:///{tmp_path / 'y.db'}", False)):
        engine = sa.create_engine(url)
        assert pghot.usable(engine) is usable, url
        engine.dispose()


def test_the_sql_follows_the_mapping():
    store = Store("postgresql+psycopg://u@h/db", RENAMED)  # never connects
    p = store.hot_path
    texts = (p.query_sql, p.claim_sql, p.post_sql, p.post_finish_sql)
    for sql in texts:
        for ref in ("n8_customer", "n8_bill", "n8_payment", "n8_payment_item"):
            assert ref not in sql, ref  # every N8 name comes from the mapping
    assert '"HRB_ZD"' in p.claim_sql and '"YSJE"' in p.claim_sql  # quoted as SQLAlchemy does
    assert '"HRB_JFMX"' in p.post_sql and '"KHBH"' in p.query_sql


def test_hot_path_off_is_the_generic_path(stores):
    hot, generic = stores
    assert hot.hot_path is not None and generic.hot_path is None


# -- both paths, same rows ---------------------------------------------------------------


def _books(store: Store) -> dict:
    """Every row a payment writes, without ids, receipt numbers and clocks."""
    p, a, j = model.payment, model.allocation, model.journal
    n8p, n8i = store.n8["payment"], store.n8["payment_item"]
    with store.engine.connect() as c:
        pays = [dict(r) for r in c.execute(sa.select(p).order_by(p.c.id)).mappings()]
        receipts = {r["receipt_no"]: k for k, r in enumerate(pays)}
        return {
            "payments": [{k: v for k, v in r.items() if k not in ("id", "receipt_no")}
                         for r in pays],
            "allocations": [tuple(r) for r in c.execute(
                sa.select(a.c.bill_id, a.c.principal, a.c.late_fee).order_by(a.c.id))],
            "bills": bills(store),
            "prepaid": [tuple(r) for r in c.execute(
                sa.select(model.prepaid.c.customer_no, model.prepaid.c.balance))],
            "journal": [(r.kind, r.outcome, no_receipt(r.result), r.payment_id is not None)
                        for r in c.execute(sa.select(j).order_by(j.c.id))],
            "n8": [(receipts[r.pay_id], r.customer_no, r.amount, r.pay_date, r.bank_code,
                    r.bank_serial, r.channel, r.status) for r in c.execute(
                sa.select(*[col.label(col.key) for col in n8p.c]))],
            "n8_items": sorted((receipts[r.pay_id], r.bill_id, r.principal, r.late_fee)
                               for r in c.execute(
                sa.select(*[col.label(col.key) for col in n8i.c]))),
        }


def _run(store: Store, spec, status, prepaid, amount_of, named, serial="P1"):
    return run_payment(store, spec, status, prepaid, amount_of, named, reset=reset,
                       books=_books, serial=serial)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=bill_sets, amount_of=amounts, named=st.sampled_from([0, 0, 0, 1, 2]),
       prepaid=st.sampled_from([0, 0, 700]), status=st.sampled_from(["A"] * 5 + ["S"]))
def test_both_paths_leave_the_same_books_and_allocate_as_allocate_does(
        stores, spec, amount_of, named, prepaid, status):
    hot, generic = stores
    h = _run(hot, spec, status, prepaid, amount_of, named)
    g = _run(generic, spec, status, prepaid, amount_of, named)
    assert h == g  # answers, repeats, and every row written
    check_payment(h, spec, status, prepaid)


def test_fixture_ledger_answers_the_same_on_both_paths(stores):
    """The conftest customers (not found, locked, nothing due, late fees) by query, a
    payment each under every policy, and the repeats."""
    hot, generic = stores
    answers = []
    for store in (hot, generic):
        reset(store)
        seed_fixture(store)
        store.initial_paid = bills(store)
        ledger = Ledger(store, dict(BANKS), now=FakeClock())
        got = [ledger.query(query(c)) for c in ("100000123", "100000200", "100000300",
                                                "100000400", "999")]
        for serial, (cust, amount, bank) in enumerate([
            ("100000123", 548000, "fixed"), ("100000200", 1000, "fixed"),
            ("100000200", 1000, "partial"), ("100000123", 99, "overpay"),
            ("100000300", 5000, "any"), ("100000400", 5000, "any"), ("999", 5, "any"),
            ("100000200", 1_200_000, "overpay"), ("100000123", 0, "any"),
        ]):
            for _ in range(2):
                r = ledger.pay(pay(f"F{serial}", customer=cust, amount=amount, bank=bank))
                got.append(dataclasses.replace(r, receipt_no=""))
        got.append(ledger.query(query("100000200")))
        check_books(store)
        answers.append((got, _books(store)))
    assert answers[0] == answers[1]
    outcomes = {r.outcome for r in answers[0][0]}
    assert {Outcome.OK, Outcome.NOT_FOUND, Outcome.ACCOUNT_LOCKED, Outcome.NOTHING_DUE,
            Outcome.AMOUNT_REJECTED} <= outcomes


# -- one transaction, whatever fails ---------------------------------------------------------


def test_a_failing_folded_write_leaves_nothing(stores):
    """The post statement fails (N8 refuses an item): the claim, the payment, the
    allocations, the bills -- nothing stays, and the same request posts once N8
    takes it."""
    hot, _ = stores
    reset(hot)
    seed_fixture(hot)
    hot.initial_paid = before = bills(hot)
    items = hot.n8["payment_item"]
    with refusing(hot.engine, items, lambda q: f"{q(items.c.principal.name)} < 0"):
        ledger = Ledger(hot, dict(BANKS), now=FakeClock())
        with pytest.raises(sa.exc.IntegrityError):
            ledger.pay(pay("S1"))
        assert count(hot, model.journal) == count(hot, model.payment) == 0
        assert count(hot, model.allocation) == count(hot, hot.n8["payment"]) == 0
        assert bills(hot) == before
    r = ledger.pay(pay("S1"))
    assert r.outcome is Outcome.OK and not r.retry
    check_books(hot)


def test_a_hook_failing_after_the_folded_write_undoes_it(stores):
    hot, _ = stores
    reset(hot)
    seed_fixture(hot)
    hot.initial_paid = before = bills(hot)

    class Broken:
        def after_post(self, tx, payment, allocations, now):
            assert payment["id"] and allocations  # called after the payment is written
            raise RuntimeError("hook failed")

    ledger = Ledger(hot, dict(BANKS), now=FakeClock(), hooks=[Broken()])
    with pytest.raises(RuntimeError):
        ledger.pay(pay("S1"))
    assert count(hot, model.journal) == count(hot, model.payment) == 0
    assert count(hot, hot.n8["payment_item"]) == 0 and bills(hot) == before


def test_postgresql_keeps_the_prepared_plans_of_a_payment(stores):
    """Every statement a payment prepares settles on a generic plan (the arrays go
    in through sub-selects: pghot.ROWS)."""
    hot, _ = stores
    reset(hot)
    fresh = Store(hot.url, hot.mapping, threads=1)
    try:
        assert replanned(fresh) == {}
    finally:
        fresh.stop()


def test_a_dropped_connection_is_retried_on_a_fresh_one(stores, caplog):
    """The server ends every connection of the store (a restart, a failover): the
    next query and payment are retried on fresh connections and succeed."""
    hot, generic = stores
    try:
        _drop_and_retry(hot)
        retried = [r for r in caplog.records if "retrying" in r.getMessage()]
        assert retried, "the dead connections were never noticed"
    finally:  # the pools' other connections are dead too: the next tests start afresh
        hot.engine.dispose()
        generic.engine.dispose()


def _drop_and_retry(hot: Store) -> None:
    reset(hot)
    seed_fixture(hot)
    hot.initial_paid = bills(hot)
    ledger = Ledger(hot, dict(BANKS), now=FakeClock())
    assert ledger.query(query()).outcome is Outcome.OK  # the reader connection is open
    assert ledger.pay(pay("S0", customer="100000200", amount=1000,
                          bank="partial")).outcome is Outcome.OK
    db = hot.engine.url.database
    with hot.engine.connect() as c:
        mine = c.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        ended = c.execute(sa.text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = :db AND pid <> :me"), {"db": db, "me": mine}).scalar()
    assert ended >= 1
    assert ledger.query(query()).outcome is Outcome.OK
    r = ledger.pay(pay("S1"))
    assert r.outcome is Outcome.OK and not r.retry
    check_books(hot)


def test_sql_errors_come_back_as_sqlalchemy_errors(stores):
    """A statement the server refuses raises SQLAlchemy's exception (what the store's
    retry logic reads), naming the statement, and the transaction is rolled back."""
    hot, _ = stores
    reset(hot)

    def bad(tx):
        tx.hot._run(tx.conn, "SELECT 1/0", {})

    with pytest.raises(sa.exc.DataError) as e:
        hot.run_sync(bad)
    assert "SELECT 1/0" in str(e.value)
    assert hot.run_sync(lambda tx: tx.is_closed("fixed", TODAY)) is False  # usable again


def test_a_query_on_a_closed_date_and_with_prepaid_balance(stores):
    hot, generic = stores
    got = []
    for store in (hot, generic):
        reset(store)
        seed(store, [("01", "2025-01", 5000, 0.0, 0, -10)], prepaid=1234)
        with store.engine.begin() as c:
            c.execute(model.cutoff.insert().values(bank="fixed", trade_date=TODAY,
                                                   reason="bank", closed_at=NOW))
        ctx = store.run_sync(lambda tx: tx.query_context(CUSTOMER, "fixed", TODAY),
                             readonly=True)
        other = store.run_sync(lambda tx: tx.query_context(CUSTOMER, "fixed",
                                                           TODAY - timedelta(days=1)),
                               readonly=True)
        none = store.run_sync(lambda tx: tx.query_context("nobody", "fixed", TODAY),
                              readonly=True)
        got.append((ctx, other[0]["bg_closed"], none))
    assert got[0] == got[1]
    (cust, open_bills), closed_before, none = got[0]
    assert cust["bg_closed"] is True and closed_before is False and none == (None, [])
    assert cust["bg_prepaid"] == 1234 and [b["bill_id"] for b in open_bills] == ["H9"]


def test_a_thread_gives_its_read_connection_back(stores):
    """Reads keep a connection per thread; a thread that is done gives it back
    (release_reader), so short-lived threads never drain the pool."""
    hot, _ = stores
    reset(hot)
    seed_fixture(hot)
    ledger = Ledger(hot, dict(BANKS), now=FakeClock())
    held = []

    def reader():
        assert ledger.query(query()).outcome is Outcome.OK
        held.append(hot.engine.pool.checkedout())
        hot.release_reader()

    for _ in range(12):  # more threads than the pool has connections (8 + 2)
        t = threading.Thread(target=reader)
        t.start()
        t.join()
    assert held == [1] * 12 and hot.engine.pool.checkedout() == 0
