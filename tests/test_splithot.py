"""N8 in a database of its own: the folded statements (bankgate/store/splithot.py)
against the generic path.

Two stores on the same pair of databases, one folded and one with
``hot_path=False``: the same requests must give the same answers and leave the
same rows on both sides (the gateway's books, N8's bills and records, the outbox's
operations).  Also: the path is chosen by dialect, driver, mapping and adapter; the
claim locks the customer's open bills on N8; a hook's N8 operation after the
folded post goes into the same outbox row; the batched outbox deletion; a failure
in N8's write after the gateway's folded post leaves nothing behind; on MariaDB, N8's
three writes go in one text (multi statements), and a failure in its last statement
leaves nothing behind either; PostgreSQL keeps the prepared plans of a payment;
N8's pool on MariaDB rolls back a returned connection only when a transaction may be
open on it.  N8 on MariaDB is tested through pymysql and through mysqlclient, its C
driver (the ``postgres+mysqlclient`` pair).
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
import sqlalchemy as sa
from conftest import (
    BANKS,
    LEGACY,
    NOW,
    FakeClock,
    make_store,
    mysqlclient_url,
    seed_fixture,
    server_url,
)
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
from ledger_helpers import TODAY, bills, check_books, clear, count, pay, query, rev

from bankgate.canon.messages import Outcome
from bankgate.domain.ledger import Ledger
from bankgate.store import dialects, model, n8outbox, splithot
from bankgate.store.db import Store
from bankgate.store.errors import StoreUnavailable
from bankgate.store.n8write import decode

# (postgres+mysqlclient: N8 on MariaDB through its C driver, MySQLdb)
PAIRS = ["postgres+mariadb", "mariadb+postgres", "sqlite+mariadb", "postgres+mysqlclient"]


@pytest.fixture(scope="module", params=PAIRS)
def stores(request, tmp_path_factory):
    hot = make_store(request.param, tmp_path_factory.mktemp("split"))
    generic = Store(hot.url, hot.mapping, threads=2, n8_url=hot.n8_url, hot_path=False)
    yield hot, generic
    generic.stop()
    hot.outbox_done.clear()
    hot.drop_all()
    hot.stop()


def _fresh(store: Store) -> None:
    clear(store)
    store.outbox_done.clear()


# -- which path ----------------------------------------------------------------------------


def test_the_path_is_chosen_by_dialect_driver_mapping_and_adapter(tmp_path):
    """Folded only with N8 apart, on pymysql, mysqlclient or psycopg, with the
    reference units and the direct adapter; the gateway's side only on PostgreSQL
    (psycopg)."""
    pg, my = "postgresql+psycopg://u@h/gw", "mysql+pymysql://u@h/n8"  # never connect
    s = Store(pg, n8_url=my)
    assert s.split_hot is not None and s.split_hot.gw is not None
    assert s.split_hot.n8.pg is False and s.hot_path is None
    assert "FOR UPDATE" in s.split_hot.n8.lock_sql and "n8_bill AS b" in s.split_hot.n8.lock_sql
    s.stop()
    s = Store(my.replace("/n8", "/gw"), n8_url=pg.replace("/gw", "/n8"))
    assert s.split_hot is not None and s.split_hot.gw is None and s.split_hot.n8.pg
    assert "MATERIALIZED" in s.split_hot.n8.lock_sql
    off = [
        Store(pg),  # N8 beside the gateway: pghot's
        Store(pg, n8_url=my, hot_path=False),
        Store(pg, LEGACY, n8_url=my),  # values converted: the generic path
        Store(pg, n8_url=f"sqlite:///{tmp_path / 'n8.db'}"),
        Store(f"sqlite:///{tmp_path / 'gw.db'}", n8_url=f"sqlite:///{tmp_path / 'n8b.db'}"),
    ]

    class Procedure:  # another posting adapter
        name = "procedure"

        def __init__(self, n8, row_locks):
            pass

    off.append(Store(pg, n8_url=my, writer=Procedure))
    for store in off:
        assert store.split_hot is None, store.url
        store.stop()


def test_n8_on_mariadb_through_its_c_driver_is_folded_too():
    """mysqlclient (``MySQLdb``), under either back-end name."""
    url = sa.engine.make_url(mysqlclient_url())  # skips (fails in CI) without the driver
    for backend in ("mysql", "mariadb"):
        s = Store("postgresql+psycopg://u@h/gw",  # never connects
                  n8_url=url.set(drivername=f"{backend}+mysqldb").render_as_string())
        assert s.split_hot is not None and s.split_hot.gw is not None
        assert s.split_hot.n8.pg is False and s.split_hot.n8.lock_sql.endswith("FOR UPDATE")
        s.stop()


def test_the_folded_sql_is_built_once_per_number_of_bills():
    store = Store("postgresql+psycopg://u@h/gw", n8_url="mysql+pymysql://u@h/n8")
    n8 = store.split_hot.n8
    assert n8.bills_sql(3) is n8.bills_sql(3) and n8.items_sql(2) is n8.items_sql(2)
    sql = n8.bills_sql(2)
    assert sql.count("WHEN") == 4 and "IN (%(b0)s, %(b1)s)" in sql
    assert n8.items_sql(3).count("(%(rec_pay_id)s,") == 3
    gw = store.split_hot.gw
    for text in (gw.claim_sql, gw.post_sql, gw.post_finish_sql):
        assert "n8_" not in text.replace("bg_n8_outbox", "")  # the gateway's tables only
    assert "bg_n8_outbox" in gw.post_sql and "DELETE" in gw.post_sql
    store.stop()


# -- both paths, same rows ------------------------------------------------------------------


def _rows(conn, table, order) -> list[dict]:
    return [dict(r) for r in conn.execute(
        sa.select(*[c.label(c.key) for c in table.c]).order_by(*order)).mappings()]


def _books(store: Store) -> dict:
    """Every row a payment writes on both sides, receipt numbers as their order."""
    p, a, j, o = model.payment, model.allocation, model.journal, model.n8_outbox
    n8p, n8i = store.n8["payment"], store.n8["payment_item"]
    with store.engine.connect() as c:
        pays = _rows(c, p, [p.c.id])
        receipts = {r["receipt_no"]: k for k, r in enumerate(pays)}
        out = {
            "payments": [{k: v for k, v in r.items() if k not in ("id", "receipt_no")}
                         for r in pays],
            "allocations": [tuple(r) for r in c.execute(
                sa.select(a.c.bill_id, a.c.principal, a.c.late_fee).order_by(a.c.id))],
            "prepaid": [tuple(r) for r in c.execute(
                sa.select(model.prepaid.c.customer_no, model.prepaid.c.balance)
                .order_by(model.prepaid.c.customer_no))],
            "journal": [(r["kind"], r["serial"], r["outcome"], no_receipt(r["result"]),
                         r["payment_id"] is not None) for r in _rows(c, j, [j.c.id])],
            "outbox": [(receipts.get(r["receipt_no"]), _ops(r["ops"], receipts))
                       for r in _rows(c, o, [o.c.id])],
        }
    with store.n8_engine.connect() as c:
        out["bills"] = bills(store)
        out["n8"] = [(receipts[r["pay_id"]], *(r[k] for k in (
            "customer_no", "amount", "pay_date", "bank_code", "bank_serial", "channel",
            "status"))) for r in _rows(c, n8p, [n8p.c.pay_id])]
        out["n8_items"] = sorted((receipts[r["pay_id"]], r["bill_id"], r["principal"],
                                  r["late_fee"]) for r in _rows(c, n8i, [n8i.c.pay_id]))
    out["n8"].sort()
    return out


def _ops(text: str, receipts: dict) -> list:
    out = []
    for op, args in decode(text):
        args = dict(args)
        if "pay" in args:
            args["pay"] = {**args["pay"], "pay_id": receipts.get(args["pay"]["pay_id"])}
        if "pay_id" in args:
            args["pay_id"] = receipts.get(args["pay_id"])
        out.append((op, args))
    return out


def _run(store: Store, spec, status, prepaid, amount_of, named, serial="P1"):
    return run_payment(store, spec, status, prepaid, amount_of, named, reset=_fresh,
                       books=_books, serial=serial)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=bill_sets, amount_of=amounts, named=st.sampled_from([0, 0, 0, 1, 2]),
       prepaid=st.sampled_from([0, 0, 700]), status=st.sampled_from(["A"] * 5 + ["S"]))
def test_both_paths_leave_the_same_books_and_allocate_as_allocate_does(
        stores, spec, amount_of, named, prepaid, status):
    hot, generic = stores
    h = _run(hot, spec, status, prepaid, amount_of, named)
    g = _run(generic, spec, status, prepaid, amount_of, named)
    assert h == g  # answers, repeats, and every row written, on both sides
    check_payment(h, spec, status, prepaid)


def _day(store: Store, hooks=()) -> tuple[list, dict]:
    """The fixture's customers through a day: queries, payments under every policy,
    repeats, reversals (one before its payment), a cut-off, a payment after it."""
    _fresh(store)
    seed_fixture(store)
    store.initial_paid = bills(store)
    ledger = Ledger(store, dict(BANKS), now=FakeClock(), hooks=list(hooks))
    got = [ledger.query(query(c)) for c in ("100000123", "100000200", "100000300",
                                            "100000400", "999")]
    for serial, (cust, amount, bank) in enumerate([
        ("100000123", 548000, "fixed"), ("100000200", 1000, "fixed"),
        ("100000200", 1000, "partial"), ("100000123", 99, "overpay"),
        ("100000300", 5000, "any"), ("100000400", 5000, "any"), ("999", 5, "any"),
        ("100000200", 1_200_000, "overpay"), ("100000123", 0, "any"),
        ("100000200", 30000, "twophase"),
    ]):
        for _ in range(2):
            r = ledger.pay(pay(f"F{serial}", customer=cust, amount=amount, bank=bank))
            got.append(dataclasses.replace(r, receipt_no=""))
    for serial, orig, cust, amount, bank in [
        ("R1", "F2", "100000200", 1000, "partial"),  # a partial payment reversed
        ("R2", "F0", "100000123", 548000, "fixed"),
        ("R3", "F99", "100000123", 100, "fixed"),  # before its payment
    ]:
        for _ in range(2):
            got.append(ledger.reverse(rev(serial, orig, customer=cust, amount=amount,
                                          bank=bank)))
    got.append(ledger.pay(pay("F99", customer="100000123", amount=100, bank="fixed")))
    got.append(dataclasses.replace(
        ledger.pay(pay("F20", customer="100000123", amount=548000, bank="fixed")),
        receipt_no=""))
    ledger.cutoff("fixed", TODAY)
    got.append(ledger.pay(pay("F21", customer="100000200", amount=1000, bank="partial")))
    got.append(ledger.pay(pay("F22", customer="100000200", amount=1000, bank="fixed")))
    got += [ledger.query(query(c)) for c in ("100000123", "100000200")]
    check_books(store)
    # receipt numbers follow the journal's ids, which differ between the stores
    got = [dataclasses.replace(r, receipt_no="") if hasattr(r, "receipt_no") else r
           for r in got]
    return got, _books(store)


def test_a_day_of_payments_and_reversals_gives_the_same_answers_and_books(stores):
    hot, generic = stores
    h, g = _day(hot), _day(generic)
    assert h == g
    outcomes = {r.outcome for r in h[0]}
    assert {Outcome.OK, Outcome.NOT_FOUND, Outcome.ACCOUNT_LOCKED, Outcome.NOTHING_DUE,
            Outcome.AMOUNT_REJECTED, Outcome.REVERSED_FIRST, Outcome.DATE_CLOSED} <= outcomes
    assert len(h[1]["n8"]) >= 5 and any(r[-1] == "C" for r in h[1]["n8"])  # a reversal


class _Stamp:
    """A hook writing to N8 after the payment (as the invoices do)."""

    def after_post(self, tx, payment, allocations, now):
        tx.n8_do("invoice_use", invoice_no=f"T{payment['serial']}",
                 pay_id=payment["receipt_no"], customer_no=payment["customer_no"],
                 amount=payment["amount"], now=now)
        return {"invoice_no": f"T{payment['serial']}"}

    def after_undo(self, tx, payment, kind, now):
        tx.n8_do("invoice_void", invoice_no=f"T{payment['serial']}")


def test_a_hooks_n8_operation_goes_into_the_folded_posts_outbox_row(stores):
    hot, generic = stores
    h, g = _day(hot, [_Stamp()]), _day(generic, [_Stamp()])
    assert h == g
    # (a repeat applies its row again and deletes it: the payments not repeated keep theirs)
    posted = [ops for _, ops in h[1]["outbox"] if ops[0][0] == "post"]
    assert posted and all([op for op, _ in ops] == ["post", "invoice_use"] for ops in posted)
    inv = hot.n8["invoice"]
    with hot.n8_engine.connect() as c:
        issued = dict(c.execute(sa.select(inv.c.invoice_no, inv.c.status)).all())
    assert issued["TF20"] == "I" and issued["TF0"] == "V"  # F0 was reversed


def test_applied_outbox_rows_are_deleted_in_a_batch_by_a_later_payment(stores):
    hot, generic = stores
    for store in (hot, generic):
        _fresh(store)
        seed_fixture(store)
        ledger = Ledger(store, dict(BANKS), now=FakeClock())
        for i in range(n8outbox.CLEAR_BATCH + 1):
            r = ledger.pay(pay(f"B{i}", customer="100000200", amount=100, bank="partial"))
            assert r.outcome is Outcome.OK
        # the 33rd payment deleted the 32 rows before it, in its own transaction
        assert count(store, model.n8_outbox) == 1
        assert list(store.outbox_done) == [_outbox_ids(store)[0]]


def _drained_outbox(store: Store, rows: int = 20_000, left: int = 300) -> None:
    """The outbox as an N8 outage leaves it once the repair has caught up: ``rows``
    written, all but the last ``left`` deleted, vacuumed (PostgreSQL keeps the
    table's pages, and plans by them)."""
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.exec_driver_sql(
            "INSERT INTO bg_n8_outbox (journal_id, receipt_no, created_at, ops)"
            " SELECT -g, 'DRAINED', now(), '[]' || repeat(' ', 400)"
            f" FROM generate_series(1, {rows}) AS g")  # the last rows at the table's end
        c.exec_driver_sql(f"DELETE FROM bg_n8_outbox WHERE journal_id > -{rows - left}")
        c.exec_driver_sql("VACUUM ANALYZE bg_n8_outbox")


def test_postgresql_keeps_the_prepared_plans_of_a_payment(stores):
    """Every statement a payment prepares on PostgreSQL (the gateway's, or N8's)
    settles on a generic plan.  The outbox's deletion took its ids with their
    count in sight, and beside a drained outbox PostgreSQL planned every post
    afresh (a third of its CPU per payment)."""
    hot, _ = stores
    if "postgresql" not in (hot.dialect, hot.n8_dialect):
        pytest.skip("no PostgreSQL in this pair: no statement is prepared on a server")
    _fresh(hot)
    fresh = Store(hot.url, hot.mapping, threads=1, n8_url=hot.n8_url)
    try:
        drained = _drained_outbox if hot.dialect == "postgresql" else None
        assert replanned(fresh, before=drained) == {}
    finally:
        fresh.outbox_done.clear()
        fresh.stop()
        _fresh(hot)


def test_both_paths_stamp_the_outbox_row_in_utc_whatever_the_local_zone(stores, monkeypatch):
    """The repair job and `n8 pending` age the rows by UTC (n8outbox.utcnow): a row
    stamped in local time would look 8 hours old, or young, in Shanghai."""
    import time

    monkeypatch.setenv("TZ", "Asia/Shanghai")
    time.tzset()
    try:
        for store in stores:
            _fresh(store)
            seed_fixture(store)
            ledger = Ledger(store, dict(BANKS), now=FakeClock())
            assert ledger.pay(pay("U1", customer="100000200", amount=100,
                                  bank="partial")).outcome is Outcome.OK
            with store.engine.connect() as c:
                (stamp,) = c.execute(sa.select(model.n8_outbox.c.created_at)).scalars()
            assert abs((n8outbox.utcnow() - stamp).total_seconds()) < 60, store.split_hot
    finally:
        monkeypatch.undo()
        time.tzset()


def _outbox_ids(store: Store) -> list[int]:
    o = model.n8_outbox
    with store.engine.connect() as c:
        return [r[0] for r in c.execute(sa.select(o.c.id).order_by(o.c.id))]


# -- locks and failures ------------------------------------------------------------------


def test_the_claim_locks_the_customers_open_bills_on_n8(stores):
    hot, _ = stores
    _fresh(hot)
    seed_fixture(hot)
    b = hot.n8["bill"]
    seen = {}

    def claim_then_try(tx):
        jid, cust, open_rows = tx.claim_payment("fixed", TODAY, "L1", "PAY", "", NOW,
                                                "100000123")
        seen["bills"] = [r["bill_id"] for r in open_rows]
        seen["customer"] = cust["customer_no"]
        with hot.n8_engine.connect() as other:
            try:
                other.execute(sa.select(b.c.bill_id).where(b.c.bill_id == open_rows[0]["bill_id"])
                              .with_for_update(nowait=True)).all()
                seen["other"] = "got the lock"
            except sa.exc.DBAPIError as e:
                seen["other"] = type(e).__name__
        raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        hot.run_sync(claim_then_try)
    assert seen["customer"] == "100000123" and seen["bills"]
    assert seen["other"] in ("OperationalError", "InternalError"), seen
    assert count(hot, model.journal) == 0  # rolled back


def test_a_failing_n8_write_after_the_folded_post_leaves_nothing(stores):
    """N8 refuses the payment's items (an item of bill B0001, the payment's first)
    after the gateway's folded post: the journal,
    payment, outbox row -- nothing stays on either side, the outbox rows the post
    had deleted are known applied still, and the request posts once N8 takes it."""
    hot, _ = stores
    _fresh(hot)
    seed_fixture(hot)
    hot.initial_paid = before = bills(hot)
    ledger = Ledger(hot, dict(BANKS), now=FakeClock())
    for i in range(n8outbox.CLEAR_BATCH):
        assert ledger.pay(pay(f"B{i}", customer="100000200", amount=100,
                              bank="partial")).outcome is Outcome.OK
    done = list(hot.outbox_done)
    assert len(done) == n8outbox.CLEAR_BATCH
    before = bills(hot)
    items = hot.n8["payment_item"]
    with refusing(hot.n8_engine, items, lambda q: f"{q(items.c.bill_id.name)} <> 'B0001'"):
        # (MariaDB's error is an OperationalError, retried, then StoreUnavailable: each
        # attempt rolls back both sides and puts the deleted batch back)
        with pytest.raises((sa.exc.DBAPIError, StoreUnavailable)):
            ledger.pay(pay("S1"))
        assert count(hot, model.payment) == n8outbox.CLEAR_BATCH
        assert count(hot, model.journal) == n8outbox.CLEAR_BATCH
        assert _outbox_ids(hot) == done and sorted(hot.outbox_done) == done
        assert bills(hot) == before
    r = ledger.pay(pay("S1"))
    assert r.outcome is Outcome.OK and not r.retry
    assert count(hot, model.n8_outbox) == 1  # the batch deleted with it
    check_books(hot)


def test_a_query_on_a_closed_date_and_with_prepaid_balance(stores):
    hot, generic = stores
    got = []
    for store in (hot, generic):
        _fresh(store)
        seed(store, [("01", "2025-01", 5000, 0.0, 0, -10)], prepaid=1234)
        with store.engine.begin() as c:
            c.execute(model.cutoff.insert().values(bank="fixed", trade_date=TODAY,
                                                   reason="bank", closed_at=NOW))

        def read(tx, cust=CUSTOMER, d=TODAY):
            return tx.query_context(cust, "fixed", d), tx.customer_context(cust, "fixed", d)

        got.append((store.run_sync(read, readonly=True),
                    store.run_sync(read, d=TODAY - timedelta(days=1), readonly=True),
                    store.run_sync(read, cust="nobody", readonly=True),
                    store.run_sync(read)))  # in a transaction too
    assert got[0] == got[1]
    ((cust, open_bills), ctx), (_, other), none, in_tx = got[0]
    assert cust["bg_closed"] is True and other["bg_closed"] is False
    assert none == ((None, []), None) and in_tx == got[0][0]
    assert cust["bg_prepaid"] == ctx["bg_prepaid"] == 1234
    assert [b["bill_id"] for b in open_bills] == ["H9"]
    assert {k: v for k, v in ctx.items()} == cust


# -- N8 on MariaDB: the payment's writes in one text ---------------------------------------


def _n8_connection(store: Store) -> dict:
    """What N8's connections do: take two statements in one text, count an UPDATE's
    matched row although it changes nothing (FOUND_ROWS: SQLAlchemy relies on it)."""
    b = store.n8["bill"]
    with store.n8_engine.connect() as c:
        scripts = dialects.takes_scripts(c)
        cur = c.connection.driver_connection.cursor()
        try:
            cur.execute("SELECT 1; SELECT 2")
            while cur.nextset():
                pass
            takes_two = True
        except c.dialect.dbapi.Error:
            takes_two = False
        first = c.execute(sa.select(b.c.bill_id).limit(1)).scalar()
        found = c.execute(b.update().where(b.c.bill_id == first)
                          .values(paid_amount=b.c.paid_amount)).rowcount
        c.rollback()
    return {"flagged": scripts, "takes two": takes_two, "found rows": found}


def test_n8_on_mariadb_takes_the_payments_three_writes_in_one_text(stores, monkeypatch):
    """MariaDB: the folded store's N8 connections take several statements in one
    text (FOUND_ROWS kept: SQLAlchemy's row counts rely on it), the generic store's
    do not, a payment's N8 writes are one text of three statements, and N8's
    connection goes back to the pool without a ROLLBACK.  N8 on PostgreSQL: one
    statement already, no text of several."""
    hot, generic = stores
    texts = []
    real = splithot.N8Side.post_script  # run as one text, or sent ahead (mysqlclient)

    def counting(self, n):
        texts.append(real(self, n))
        return texts[-1]

    monkeypatch.setattr(splithot.N8Side, "post_script", counting)
    _fresh(hot)
    seed_fixture(hot)
    ledger = Ledger(hot, dict(BANKS), now=FakeClock())
    rollbacks = []
    if hot.n8_dialect != "postgresql":  # N8's connection goes back without a ROLLBACK
        cls = _driver_connection_class(hot.n8_engine.dialect.driver)
        real_rollback = cls.rollback
        monkeypatch.setattr(cls, "rollback", lambda c: rollbacks.append(c) or real_rollback(c))
    r = ledger.pay(pay("M1", customer="100000123", amount=548000, bank="fixed"))
    assert r.outcome is Outcome.OK and rollbacks == []
    monkeypatch.undo()
    with hot.n8_engine.connect() as c:
        items = c.execute(sa.select(sa.func.count()).select_from(hot.n8["payment_item"])
                          ).scalar()
    assert items >= 1
    if hot.n8_dialect == "postgresql":
        assert texts == []
    else:
        assert _n8_connection(hot) == {"flagged": True, "takes two": True, "found rows": 1}
        assert _n8_connection(generic) == {"flagged": False, "takes two": False,
                                           "found rows": 1}
        assert len(texts) == 1
        parts = [t.split()[0] for t in texts[0].split(";")]
        assert parts == ["INSERT", "INSERT", "UPDATE"]
        assert texts[0] == hot.split_hot.n8.post_script(items)
    check_books(hot)


def test_a_failing_last_n8_write_leaves_nothing_and_the_connection_usable(stores):
    """N8 refuses the bills' update (the last statement of MariaDB's text; the only
    one on PostgreSQL) after N8's payment and items were written: nothing stays on
    either side, and the same request posts on the pooled connections once N8
    takes it."""
    hot, _ = stores
    _fresh(hot)
    seed_fixture(hot)
    ledger = Ledger(hot, dict(BANKS), now=FakeClock())
    first = ledger.query(query("100000123")).bills[0].bill_id
    before = bills(hot)
    b = hot.n8["bill"]

    def paid_unchanged(q):  # the first bill's paid amount may not change
        return (f"{q(b.c.bill_id.name)} <> '{first}'"
                f" OR {q(b.c.paid_amount.name)} = {before[first][0]}")

    with refusing(hot.n8_engine, b, paid_unchanged):
        with pytest.raises((sa.exc.DBAPIError, StoreUnavailable)):
            ledger.pay(pay("S2"))
        assert count(hot, model.journal) == count(hot, model.payment) == 0
        assert count(hot, model.n8_outbox) == 0 and not hot.outbox_done
        assert count(hot, hot.n8["payment"]) == count(hot, hot.n8["payment_item"]) == 0
        assert bills(hot) == before
    r = ledger.pay(pay("S2"))
    assert r.outcome is Outcome.OK and not r.retry
    assert bills(hot)[first][0] > before[first][0]
    check_books(hot)


def test_a_failing_gateway_post_with_n8s_writes_in_flight_leaves_nothing(stores, monkeypatch,
                                                                          request):
    """Through mysqlclient N8's writes are sent before the gateway's post and their
    answer read after it, so the two databases work at the same time (other drivers:
    N8's writes after the gateway's post).  The gateway refusing the payment while
    N8's writes are in flight: N8's answer is read before the rollback, nothing
    stays on either side, no connection is thrown away, and the same request then
    posts on the pooled connections."""
    hot, _ = stores
    _fresh(hot)
    seed_fixture(hot)
    ledger = Ledger(hot, dict(BANKS), now=FakeClock())
    hot.initial_paid = before = bills(hot)
    n8 = hot.split_hot.n8
    sent, read = [], []
    real_send = n8.send_post

    def send(conn, pay_, items):
        reader = real_send(conn, pay_, items)
        sent.append(reader is not None)
        if reader is None:
            return None
        return lambda quiet=False: read.append(quiet) or reader(quiet)

    monkeypatch.setattr(n8, "send_post", send)
    thrown = []

    def invalidated(*args):
        thrown.append(args)

    for engine in (hot.engine, hot.n8_engine):  # (the module's stores: taken off after)
        sa.event.listen(engine, "invalidate", invalidated)
        request.addfinalizer(lambda e=engine: sa.event.remove(e, "invalidate", invalidated))
    p = model.payment
    ahead = hot.n8_engine.dialect.driver == "mysqldb"
    with refusing(hot.engine, p, lambda q: f"{q(p.c.serial.name)} <> 'S3'"):
        with pytest.raises((sa.exc.DBAPIError, StoreUnavailable)):
            ledger.pay(pay("S3"))
        assert sent and set(sent) == {ahead}
        assert read == ([True] * len(sent) if ahead else [])  # read, quietly, each time
        assert count(hot, model.journal) == count(hot, model.payment) == 0
        assert count(hot, model.n8_outbox) == 0 and not hot.outbox_done
        assert count(hot, hot.n8["payment"]) == count(hot, hot.n8["payment_item"]) == 0
        assert bills(hot) == before
    read.clear()
    r = ledger.pay(pay("S3"))
    assert r.outcome is Outcome.OK and not r.retry
    assert read == ([False] if ahead else [])
    assert thrown == []
    assert count(hot, hot.n8["payment"]) == 1
    check_books(hot)


def _driver_connection_class(driver: str):
    """The DB-API connection class of a MariaDB driver (its ``rollback`` counted)."""
    if driver == "pymysql":
        import pymysql.connections

        return pymysql.connections.Connection
    import MySQLdb.connections

    return MySQLdb.connections.Connection


@pytest.mark.parametrize("driver", ["pymysql", "mysqldb"])
def test_n8s_pool_on_mariadb_rolls_back_only_a_connection_with_a_transaction(driver,
                                                                            monkeypatch):
    """``lazy_reset``: no ROLLBACK for a connection returned right after a commit or
    a rollback the store marks (``dialects.transaction_ended``, as
    ``n8outbox.run_split`` does when N8's transaction ends) -- on pymysql, which can
    tell, after any commit or rollback --; one for a connection whose driver ran a
    statement the pool saw no transaction for, and that statement's write is undone.
    Without the option, a ROLLBACK every time."""
    from bankgate.store.dialects import create_engine

    url = server_url("mariadb" if driver == "pymysql" else "mysqlclient")
    cls = _driver_connection_class(driver)
    rollbacks = []
    real = cls.rollback

    def counting(self):
        rollbacks.append(self)
        return real(self)

    monkeypatch.setattr(cls, "rollback", counting)
    lazy = create_engine(url, pool_size=1, lazy_reset=True)
    plain = create_engine(url, pool_size=1)
    t = sa.Table("bg_test_lazy", sa.MetaData(), sa.Column("n", sa.Integer, primary_key=True))
    try:
        with lazy.begin() as c:
            t.drop(c, checkfirst=True)
            t.create(c)
        with plain.connect():  # (its first connection's set-up rolls back too)
            pass
        unmarked = 0 if driver == "pymysql" else 1  # mysqlclient cannot tell
        for n, (engine, marked, after_commit) in enumerate(
                ((lazy, True, 0), (lazy, False, unmarked), (plain, True, 1)), 1):
            rollbacks.clear()
            with engine.connect() as c:
                c.execute(t.insert().values(n=n))
                c.commit()
                if marked:
                    dialects.transaction_ended(c)
            assert len(rollbacks) == after_commit, (n, marked)
        for marked, after_rollback in ((True, 1), (False, 1 + unmarked)):
            rollbacks.clear()
            with lazy.connect() as c:  # SQLAlchemy's own rollback: no second one, once
                # marked (pymysql: either way)
                c.execute(t.insert().values(n=4))
                c.rollback()
                if marked:
                    dialects.transaction_ended(c)
            assert len(rollbacks) == after_rollback, marked
        connects = []
        sa.event.listen(lazy, "connect", lambda *_: connects.append(1))
        with lazy.connect() as c:  # N8 went away mid-transaction: marking it connects nothing
            trans = c.begin()
            c.invalidate()
            trans.rollback()
            dialects.transaction_ended(c)
            assert c.invalidated and connects == []
        rollbacks.clear()
        with lazy.connect() as c:  # a write on the driver, unseen by SQLAlchemy
            c.connection.driver_connection.cursor().execute(
                "INSERT INTO bg_test_lazy (n) VALUES (5)")
        assert len(rollbacks) == 1
        with lazy.connect() as c:
            assert sorted(c.execute(sa.select(t.c.n)).scalars()) == [1, 2, 3]
    finally:
        with lazy.begin() as c:
            t.drop(c, checkfirst=True)
        lazy.dispose()
        plain.dispose()
