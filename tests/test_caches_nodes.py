"""The payment path's in-process caches, across nodes (``docs/nodes.rst``, "What each
cache does across nodes").

Two :class:`Ledger` objects, each on a :class:`Store` of its own (its own engine,
connections and cache) over one database, stand for two gateway nodes.  What each
cache may and may not do:

- ``Ledger._closed`` (``known_closed`` / ``mark_closed``): holds only dates known
  to be closed, and closed dates never reopen; "open" is never cached -- each
  payment reads the cut-off table in its own transaction.  So node B refuses a
  date node A closed, even after B saw it open.
- ``Ledger._tariffs``: N8's tariff table, kept ``tariff_ttl`` seconds (60 unless
  the ledger is built with another): a change reaches every node within that.
- invoice stock: nothing is cached; each number comes from the stock row locked in
  the payment's own transaction, so no number is given twice across nodes.
- receipt numbers: the journal row's id, from the database.

Not tested here because they hold nothing of the database: a connection's codec
session (its MAC key, STAN, sign-in: one TCP connection lives on one node), the
supply hook's "is there a valve table" (a schema fact, read once), compiled
statements.

The last tests are about a transaction, not a cache: a cut-off on one node while a
payment (or a reversal) for the same date is between its closed-date check and its
commit on another.  SQLite's single writer serialises them; on PostgreSQL and
MariaDB the date's ``bg_trade_day`` row does: a payment holds it shared until it
commits, the cut-off closes it before counting.
"""

from __future__ import annotations

import inspect
import itertools
import threading
import time
import types
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import BANKS, TODAY, FakeClock, make_store, seed_fixture
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_helpers import bills, check_books, pay, query, rev

from bankgate.canon.messages import Outcome
from bankgate.domain import ledger as ledger_module
from bankgate.domain.invoices import Invoices, InvoiceSettings, make_hook
from bankgate.domain.ledger import Ledger
from bankgate.store import model
from bankgate.store.db import Store

DOCS = Path(__file__).resolve().parent.parent / "docs"
BIG = "100000200"  # owes 10,000.00 yuan: room for many small payments ("any" policy)


def _nodes(backend: str, tmp_path, hot_path: bool = True) -> tuple[Store, Store]:
    """Two stores on one database: node A's (which made the schema) and node B's
    (``hot_path=False``: B on the generic path, also on PostgreSQL)."""
    a = make_store(backend, tmp_path)
    b = Store(a.url, a.mapping, threads=4, hot_path=hot_path)
    seed_fixture(a)
    a.initial_paid = bills(a)
    return a, b


def _close(a: Store, b: Store) -> None:
    b.stop()
    if a.dialect != "sqlite":
        a.drop_all()
    a.stop()


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def nodes(request, tmp_path):
    a, b = _nodes(request.param, tmp_path)
    yield a, b
    _close(a, b)


# -- closed dates ------------------------------------------------------------------------


def test_a_date_closed_on_one_node_is_refused_on_the_other(nodes):
    sa_, sb = nodes
    clock = FakeClock()
    a, b = Ledger(sa_, dict(BANKS), now=clock), Ledger(sb, dict(BANKS), now=clock)
    first = b.pay(pay("S1", BIG, 1000, bank="any"))
    assert first.outcome is Outcome.OK  # node B has seen the date open
    assert not b.known_closed("any", TODAY)
    closed = a.cutoff("any", TODAY)
    assert (closed.count, closed.total) == (1, 1000)
    assert not b.known_closed("any", TODAY)  # B was not told ...
    assert b.pay(pay("S2", BIG, 500, bank="any")).outcome is Outcome.DATE_CLOSED  # ... yet
    assert b.reverse(rev("R1", "S1", BIG, 1000, bank="any")).outcome is Outcome.DATE_CLOSED
    assert b.known_closed("any", TODAY)  # learned from the database, kept from now on
    again = b.pay(pay("S1", BIG, 1000, bank="any"))  # a retry still gets its first answer
    assert (again.outcome, again.receipt_no, again.retry) == (Outcome.OK, first.receipt_no,
                                                              True)
    assert (b.cutoff("any", TODAY).count, b.cutoff("any", TODAY).total) == (1, 1000)
    with sb.engine.connect() as c:
        p, cut = model.payment, model.cutoff
        assert c.execute(sa.select(p.c.serial, p.c.status).where(p.c.bank == "any")).all() \
            == [("S1", "POSTED")]
        assert c.execute(sa.select(sa.func.count()).select_from(cut)).scalar() == 1
    check_books(sa_)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def world(request, tmp_path_factory):
    a, b = _nodes(request.param, tmp_path_factory.mktemp(request.param))
    yield a, b
    _close(a, b)


_examples = itertools.count()
DAYS = 3
# (node, "pay", day, amount) or (node, "cutoff", day)
steps = st.one_of(
    st.tuples(st.sampled_from("AB"), st.just("pay"), st.integers(0, DAYS - 1),
              st.integers(1, 500)),
    st.tuples(st.sampled_from("AB"), st.just("cutoff"), st.integers(0, DAYS - 1)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(steps, min_size=2, max_size=16))
def test_any_interleaving_of_two_nodes_refuses_every_closed_date(world, sequence):
    """Whatever each node saw before: a payment posts exactly when its date was not
    closed by either node, and a cut-off's totals are the payments posted before it."""
    sa_, sb = world
    k = next(_examples)  # dates of this example's own: closed dates never reopen
    days = [TODAY + timedelta(days=DAYS * k + i) for i in range(DAYS)]
    clock = FakeClock()
    ledgers = {"A": Ledger(sa_, dict(BANKS), now=clock), "B": Ledger(sb, dict(BANKS), now=clock)}
    closed: dict[int, tuple[int, int]] = {}  # day -> (count, total) when it was closed
    posted: dict[int, list[int]] = {i: [] for i in range(DAYS)}
    for n, step in enumerate(sequence):
        node = ledgers[step[0]]
        if step[1] == "pay":
            day, amount = step[2], step[3]
            got = node.pay(pay(f"P{k}-{n}", BIG, amount, bank="any", d=days[day])).outcome
            assert got is (Outcome.DATE_CLOSED if day in closed else Outcome.OK), (n, step)
            if got is Outcome.OK:
                posted[day].append(amount)
        else:
            day = step[2]
            result = node.cutoff("any", days[day])
            closed.setdefault(day, (len(posted[day]), sum(posted[day])))
            assert (result.count, result.total) == closed[day], (n, step)
    check_books(sa_)


# -- invoice numbers ----------------------------------------------------------------------


def _invoicing(store: Store, clock) -> Ledger:
    return Ledger(store, dict(BANKS), now=clock,
                  hooks=[make_hook({"any": InvoiceSettings(enabled=True, low_water=0)})])


def test_an_invoice_number_is_never_given_twice_across_nodes(nodes, tmp_path):
    sa_, sb = nodes
    clock = FakeClock()
    a, b = _invoicing(sa_, clock), _invoicing(sb, clock)
    Invoices(sa_, {"any": InvoiceSettings(enabled=True)}, now=clock,
             data_dir=str(tmp_path)).issue_stock("any", 1, 30, code="T", width=4, actor="test")
    got: list[str] = []
    for n in range(6):  # one after another, each node in turn
        r = (a, b)[n % 2].pay(pay(f"S{n}", BIG, 100 + n, bank="any"))
        assert r.outcome is Outcome.OK, r
        got.append(r.invoice_no)
    assert got == [f"T{n:04d}" for n in range(1, 7)]  # the stock's order, whoever asks
    results: dict[str, list] = {"A": [], "B": []}

    def run(name: str, ledger: Ledger) -> None:
        for n in range(14):  # at the same time: 28 payments for the 24 numbers left
            results[name].append(ledger.pay(pay(f"{name}{n}", BIG, 10 + n, bank="any")))

    threads = [threading.Thread(target=run, args=(name, ledger))
               for name, ledger in (("A", a), ("B", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    answers = results["A"] + results["B"]
    assert len(answers) == 28 and all(r.outcome is Outcome.OK for r in answers), answers
    numbers = got + [r.invoice_no for r in answers if r.invoice_no]
    assert sorted(numbers) == [f"T{n:04d}" for n in range(1, 31)]  # each number once
    assert sum(1 for r in answers if not r.invoice_no) == 4  # stock out: posted without
    receipts = [r.receipt_no for r in answers]
    assert len(set(receipts)) == len(receipts)
    i, n8 = model.invoice, sa_.n8["invoice"]
    with sa_.engine.connect() as c:
        rows = c.execute(sa.select(i.c.invoice_no, i.c.status)).all()
        used = c.execute(sa.select(sa.func.count()).select_from(n8)
                         .where(n8.c.status == "I")).scalar()
    assert sorted(rows) == [(f"T{n:04d}", "ISSUED") for n in range(1, 31)]
    assert used == 30
    check_books(sa_)


# -- tariffs --------------------------------------------------------------------------------


class Monotonic:
    """The ledger's ``time.monotonic``, moved by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _set_ppm(store: Store, ppm: int) -> None:
    t = store.n8["tariff"]
    with store.engine.begin() as c:
        c.execute(t.update().where(t.c.fee_type == "01", t.c.customer_class == "R")
                  .values(late_fee_ppm=ppm))


@pytest.mark.parametrize("ttl", [0.0, 60.0])
def test_a_tariff_change_reaches_every_node_within_the_ttl(nodes, monkeypatch, ttl):
    sa_, sb = nodes
    mono = Monotonic()
    monkeypatch.setattr(ledger_module, "time", types.SimpleNamespace(monotonic=mono))
    clock = FakeClock()
    b = Ledger(sb, dict(BANKS), now=clock, tariff_ttl=ttl)
    before = b.query(query("100000123"))
    assert before.late_fee > 0  # B0001 is overdue: its tariff's late fee counts
    _set_ppm(sa_, 1000)  # the utility doubles the late fee rate in N8
    fresh = Ledger(sa_, dict(BANKS), now=clock).query(query("100000123"))
    assert fresh.late_fee > before.late_fee  # a node that had not read it sees it now
    mono.now += ttl + 0.001  # ... and node B once its copy is older than the ttl
    after = b.query(query("100000123"))
    assert after.late_fee == fresh.late_fee
    # so node B refuses the old total from then on (exact policy) and takes the new one
    old_total = before.total_due + before.late_fee
    assert b.pay(pay("T1", "100000123", old_total)).outcome is Outcome.AMOUNT_REJECTED
    new_total = after.total_due + after.late_fee
    assert b.pay(pay("T2", "100000123", new_total)).outcome is Outcome.OK


def test_the_documented_ttl_is_the_ledgers():
    assert inspect.signature(Ledger).parameters["tariff_ttl"].default == 60.0
    nodes = (DOCS / "nodes.rst").read_text()
    assert "60 seconds" in nodes and "tariff" in nodes
    assert "cached for 60 seconds" in (DOCS / "n8-mapping.rst").read_text()


# -- a cut-off on one node, a payment in flight on the other -------------------------------


class Pause:
    """A hook holding a payment's transaction open after it posted, until ``go()``."""

    def __init__(self, go):
        self.posted = threading.Event()
        self.go = go

    def after_post(self, tx, payment, allocations, now):
        self.posted.set()
        deadline = time.monotonic() + 30
        while not self.go():  # an event wait, bounded
            assert time.monotonic() < deadline, "the cut-off neither ended nor waited"
            time.sleep(0.01)
        return None

    def after_undo(self, tx, payment, kind, now):
        return None


def _lock_waiters(store: Store) -> int:
    """Sessions of this database waiting for a lock (PostgreSQL, MariaDB)."""
    if store.dialect == "postgresql":
        sql = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
               " AND wait_event_type = 'Lock'")
    else:
        sql = ("SELECT count(*) FROM information_schema.innodb_trx AS t"
               " JOIN information_schema.processlist AS p ON p.id = t.trx_mysql_thread_id"
               " WHERE t.trx_state = 'LOCK WAIT' AND p.db = DATABASE()")
    with store.engine.connect() as c:
        return c.execute(sa.text(sql)).scalar()


def _waiting(backend: str, store: Store):
    """A function telling whether a transaction is waiting for another one's
    lock on ``store``'s database: on SQLite, whether ``store`` has sent a BEGIN
    (IMMEDIATE: it waits while the other node writes).  MariaDB refreshes
    ``innodb_trx`` only when it was last read more than 0.1 s ago: asked at most
    every 0.2 s (False in between)."""
    if backend == "mariadb":
        last = [0.0]

        def asked() -> bool:
            if time.monotonic() - last[0] < 0.2:
                return False
            last[0] = time.monotonic()
            return _lock_waiters(store) > 0

        return asked
    if backend != "sqlite":
        return lambda: _lock_waiters(store) > 0
    began = threading.Event()

    def sent(conn, cursor, statement, *args) -> None:
        if statement.startswith("BEGIN"):
            began.set()

    sa.event.listen(store.engine, "before_cursor_execute", sent)
    return began.is_set


SERVERS = ["sqlite", "postgres", "postgres-generic", "mariadb"]


def _pair(backend: str, tmp_path) -> tuple[Store, Store]:
    """``postgres-generic``: node B on the generic path (psycopg, hot path off)."""
    return _nodes(backend.removesuffix("-generic"), tmp_path,
                  hot_path=not backend.endswith("-generic"))


@pytest.mark.parametrize("backend", SERVERS)
def test_a_cutoff_never_misses_a_payment_in_flight_on_another_node(backend, tmp_path):
    """Node B's payment has read its date open and posted, not committed; node A
    closes the date.  Either the payment is refused or the cut-off's totals count
    it: the totals always equal the date's standing payments.

    On SQLite the cut-off's BEGIN IMMEDIATE waits for B's write.  On PostgreSQL
    and MariaDB the cut-off's update of the date's ``bg_trade_day`` row waits for
    B's payment, which holds the row shared since its claim: B's hook sees the
    cut-off waiting for a lock and lets B commit, and the cut-off counts it.
    """
    sa_, sb = _pair(backend, tmp_path)  # (seeded: A's engine is idle from here on)
    cut: dict = {}
    try:
        waiting = _waiting(backend, sa_)

        clock = FakeClock()
        a = Ledger(sa_, dict(BANKS), now=clock)
        hold = Pause(lambda: "result" in cut or waiting())
        b = Ledger(sb, dict(BANKS), now=clock, hooks=[hold])
        paid: dict = {}
        payer = threading.Thread(
            target=lambda: paid.setdefault("r", b.pay(pay("S1", BIG, 700, bank="any"))))
        payer.start()
        assert hold.posted.wait(30), "the payment never posted"
        cutter = threading.Thread(
            target=lambda: cut.setdefault("result", a.cutoff("any", TODAY)))
        cutter.start()
        payer.join(60)
        cutter.join(60)
        assert not payer.is_alive() and not cutter.is_alive()
        assert "r" in paid and "result" in cut, "the payment or the cut-off failed"
        result = cut["result"]
        standing = sa_.run_sync(lambda tx: tx.standing_totals("any", TODAY))
        assert (result.count, result.total) == standing, (
            f"cut-off counted {result.count} payment(s), {result.total} fen; the date"
            f" has {standing[0]}, {standing[1]} fen standing (payment: {paid['r'].outcome})")
        assert paid["r"].outcome is Outcome.OK and standing == (1, 700)  # it waited for B
        check_books(sa_)
    finally:
        _close(sa_, sb)


@pytest.mark.parametrize("backend", SERVERS)
@pytest.mark.parametrize("late", ["payment", "reversal"])
def test_a_payment_or_reversal_during_a_cutoff_is_refused_once_it_commits(backend, late,
                                                                          tmp_path):
    """Node A's cut-off has closed the date's row and is held open before it
    counts; node B's payment (or its reversal of a payment the cut-off counts)
    arrives, waits for the cut-off's lock (SQLite: for its write lock), and once
    the cut-off commits is refused with DATE_CLOSED: the date's figures are the
    cut-off's, and nothing of B's stands on the closed date."""
    sa_, sb = _pair(backend, tmp_path)
    clock = FakeClock()
    a, b = Ledger(sa_, dict(BANKS), now=clock), Ledger(sb, dict(BANKS), now=clock)
    try:
        assert b.pay(pay("S0", BIG, 300, bank="any")).outcome is Outcome.OK
        waiting = _waiting(backend, sb)
        started = threading.Event()

        def hold(conn, cursor, statement, *args) -> None:
            if statement.startswith("UPDATE bg_trade_day"):  # the cut-off's first step
                started.set()
                deadline = time.monotonic() + 30
                while not waiting():  # until B waits for this transaction, bounded
                    assert time.monotonic() < deadline, "node B never waited"
                    time.sleep(0.01)

        sa.event.listen(sa_.engine, "after_cursor_execute", hold)
        cut: dict = {}
        cutter = threading.Thread(
            target=lambda: cut.setdefault("result", a.cutoff("any", TODAY)))
        cutter.start()
        assert started.wait(30), "the cut-off never closed the date"
        if late == "payment":
            got = b.pay(pay("S1", BIG, 500, bank="any"))
        else:
            got = b.reverse(rev("R1", "S0", BIG, 300, bank="any"))
        cutter.join(60)
        assert not cutter.is_alive() and "result" in cut, "the cut-off failed"
        assert got.outcome is Outcome.DATE_CLOSED, got
        assert (cut["result"].count, cut["result"].total) == (1, 300)
        assert sa_.run_sync(lambda tx: tx.standing_totals("any", TODAY)) == (1, 300)
        with sa_.engine.connect() as c:
            p = model.payment
            assert c.execute(sa.select(p.c.serial, p.c.status).where(p.c.bank == "any")
                             ).all() == [("S0", "POSTED")]
        assert b.known_closed("any", TODAY)
        check_books(sa_)
    finally:
        _close(sa_, sb)
