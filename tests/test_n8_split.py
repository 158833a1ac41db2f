"""N8 in a database of its own ([n8.database]): exactly once across two databases.

The gateway's journal is the record; N8's writes go into N8's transaction and
into the gateway's outbox; the gateway commits, then N8, then the outbox row
goes.  These tests break each step: N8 refusing its commit after the gateway's,
N8 unreachable, a repair applied twice; and check the books on both sides.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
import sqlalchemy as sa
from conftest import BANKS, make_store, seed_fixture
from hypothesis import given
from hypothesis import strategies as st
from ledger_helpers import bills, check_books, count, pay, query, rev

from bankgate.canon.messages import Outcome
from bankgate.domain.ledger import Ledger
from bankgate.store import model, n8outbox
from bankgate.store.errors import N8Unavailable, StoreUnavailable
from bankgate.store.n8write import decode, encode

PAIRS = ["sqlite+sqlite", "postgres+mariadb", "mariadb+postgres"]


@pytest.fixture(params=PAIRS)
def split(request, tmp_path, clock):
    store = make_store(request.param, tmp_path)
    seed_fixture(store)
    store.initial_paid = bills(store)
    yield store, Ledger(store, dict(BANKS), now=clock)
    store.drop_all()
    store.stop()


def _tables(engine) -> set[str]:
    return {t.lower() for t in sa.inspect(engine).get_table_names()}


class _FailingCommit:
    """Make N8's next commits fail, as a database that went away would."""

    def __init__(self, store, times: int = 1):
        self.store, self.times = store, times

    def __enter__(self):
        sa.event.listen(self.store.n8_engine, "commit", self._commit)
        return self

    def _commit(self, conn):
        if self.times > 0:
            self.times -= 1
            raise sa.exc.OperationalError("COMMIT", {}, Exception("N8 went away"))

    def __exit__(self, *exc):
        sa.event.remove(self.store.n8_engine, "commit", self._commit)


def test_each_side_holds_only_its_own_tables(split):
    store, ledger = split
    assert store.split
    gw, n8 = _tables(store.engine), _tables(store.n8_engine)
    assert "bg_journal" in gw and "bg_journal" not in n8
    assert store.n8["bill"].name.lower() in n8 and store.n8["bill"].name.lower() not in gw


def test_payment_posts_on_both_sides_once(split):
    store, ledger = split
    r = ledger.pay(pay("S1"))
    assert r.outcome is Outcome.OK
    assert count(store, model.payment) == 1
    assert count(store, store.n8["payment"]) == 1
    # N8 committed: the outbox row is known applied, and deleted with the next batch
    assert len(store.outbox_done) == 1
    assert n8outbox.clear_done(store) == 1
    assert count(store, model.n8_outbox) == 0
    again = ledger.pay(pay("S1"))
    assert again.outcome is Outcome.OK and again.retry
    assert count(store, store.n8["payment"]) == 1
    check_books(store)
    q = ledger.query(query())
    assert q.outcome is Outcome.NOTHING_DUE


def test_n8_commit_lost_after_the_gateways_is_busy_then_repaired(split):
    store, ledger = split
    before = bills(store)
    with _FailingCommit(store):
        with pytest.raises(N8Unavailable):
            ledger.pay(pay("S1"))
    # the gateway holds the payment and the outbox row; N8 has nothing yet
    assert count(store, model.payment) == 1
    assert count(store, model.n8_outbox) == 1
    assert count(store, store.n8["payment"]) == 0
    assert bills(store) == before
    # a repeat while N8 still refuses is not answered
    with _FailingCommit(store, times=5):
        with pytest.raises(StoreUnavailable):
            ledger.pay(pay("S1"))
    assert count(store, store.n8["payment"]) == 0
    # a repeat once N8 is back finishes N8's side and gives the first answer
    r = ledger.pay(pay("S1"))
    assert r.outcome is Outcome.OK and r.retry
    assert count(store, model.n8_outbox) == 0
    assert count(store, store.n8["payment"]) == 1
    check_books(store)


def test_applied_rows_are_deleted_in_batches_by_later_transactions(split):
    store, ledger = split
    for i in range(n8outbox.CLEAR_BATCH):
        assert ledger.pay(pay(f"S{i}", amount=100, bank="any")).outcome is Outcome.OK
    assert count(store, model.n8_outbox) == n8outbox.CLEAR_BATCH
    # the next transaction writing the outbox deletes the batch N8 has committed
    assert ledger.pay(pay("S-last", amount=100, bank="any")).outcome is Outcome.OK
    assert count(store, model.n8_outbox) == 1
    assert n8outbox.repair(store) == (0, 0)  # the last one: known applied, deleted
    assert count(store, model.n8_outbox) == 0
    assert count(store, store.n8["payment"]) == n8outbox.CLEAR_BATCH + 1
    check_books(store)


def test_repair_applies_once_and_a_second_repair_changes_nothing(split):
    store, ledger = split
    with _FailingCommit(store):
        with pytest.raises(N8Unavailable):
            ledger.pay(pay("S1"))
    (row,) = n8outbox.pending(store.engine)
    assert [op for op, _ in row["ops"]] == ["post"]
    assert n8outbox.repair(store) == (1, 0)
    after = bills(store)
    check_books(store)
    # the same operations applied again (a repair that died before deleting its row)
    with store.n8_engine.begin() as c:
        for op, args in row["ops"]:
            store.writer.apply(c, op, args, replay=True)
    assert bills(store) == after
    assert count(store, store.n8["payment"]) == 1
    check_books(store)


def test_reversal_lost_on_n8_is_repaired(split):
    store, ledger = split
    assert ledger.pay(pay("S1")).outcome is Outcome.OK
    with _FailingCommit(store):
        with pytest.raises(N8Unavailable):
            ledger.reverse(rev("R1", "S1"))
    # the payment's row (applied, not deleted yet) and the reversal's (not applied)
    assert count(store, model.n8_outbox) == 2
    assert n8outbox.repair(store) == (1, 0)
    r = ledger.reverse(rev("R1", "S1"))
    assert r.outcome is Outcome.OK and r.retry
    assert bills(store) == store.initial_paid
    check_books(store)


def test_n8_unreachable_answers_busy_and_writes_nothing(split, tmp_path):
    store, ledger = split
    real = store.n8_engine
    store.n8_engine = sa.create_engine(
        "postgresql+psycopg://nobody@127.0.0.1:1/none" if store.n8_dialect != "sqlite"
        else f"sqlite:///{tmp_path / 'missing' / 'n8.db'}")
    try:
        with pytest.raises(StoreUnavailable):
            ledger.pay(pay("S1"))
        with pytest.raises(StoreUnavailable):
            ledger.query(query())
    finally:
        store.n8_engine.dispose()
        store.n8_engine = real
    store.release_reader()
    assert count(store, model.journal) == 0
    assert count(store, model.payment) == 0
    assert count(store, model.n8_outbox) == 0
    assert ledger.pay(pay("S1")).outcome is Outcome.OK
    check_books(store)


# -- the outbox's encoding of N8's operations ---------------------------------------------

_values = st.one_of(st.none(), st.booleans(), st.integers(-10**15, 10**15), st.text(max_size=12),
                    st.dates(), st.datetimes())
_keys = st.text("abcxyz_", max_size=8)  # (a key of "$" is the encoding's own)
_args = st.recursive(_values, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(_keys, inner, max_size=4), max_leaves=12)


@given(st.lists(st.tuples(st.sampled_from(["post", "undo", "invoice"]),
                          st.dictionaries(_keys, _args, max_size=4)), max_size=3))
def test_the_outbox_keeps_n8s_operations_with_their_dates_and_times(ops):
    """What the outbox row holds decodes to the operations written, dates as dates
    and times as times (the repair replays them), in one text whatever the order of
    a dict's keys."""
    text = encode(ops)
    assert decode(text) == [(op, args) for op, args in ops]
    assert encode([(op, dict(reversed(list(args.items())))) for op, args in ops]) == text


def test_an_operation_the_outbox_cannot_hold_is_refused_by_name():
    with pytest.raises(TypeError, match="Decimal in an N8 operation"):
        encode([("post", {"amount": Decimal("1.00")})])


# -- the thread's connection to N8 ----------------------------------------------------------


def _checkouts(engine) -> list:
    seen: list = []
    sa.event.listen(engine, "checkout", lambda *a: seen.append(a[0]))
    return seen


def test_a_thread_keeps_its_n8_connection_between_payments_and_gives_it_back(split):
    """Each payment with N8 apart used to take a connection to N8 from the pool and
    give it back; a thread now keeps its own between transactions (as its read
    connections): payments in a row take none from the pool and run on one
    connection, a failed one that ended cleanly keeps it too, and the thread gives it
    back when it stops (``release_reader``)."""
    store, ledger = split
    def small(serial):
        return pay(serial, customer="100000200", amount=100, bank="partial")

    assert ledger.pay(small("K0")).outcome is Outcome.OK
    kept = store.n8_writer()
    before = bills(store)
    b = store.n8["bill"]
    took = _checkouts(store.n8_engine)
    for k in range(1, 4):
        assert ledger.pay(small(f"K{k}")).outcome is Outcome.OK
    # N8 refuses a write: rolled back, the connection kept (MariaDB's refusal is an
    # OperationalError, which the store retries, then gives up)
    with pytest.raises((sa.exc.DBAPIError, StoreUnavailable)):
        store.run_sync(lambda tx: tx.n8conn.execute(b.insert().values(bill_id=None)))
    assert ledger.pay(small("K4")).outcome is Outcome.OK
    assert took == [] and store.n8_writer() is kept and not kept.invalidated
    after = bills(store)
    assert sum(p for p, _ in after.values()) == sum(p for p, _ in before.values()) + 400
    pool = store.n8_engine.pool
    out = pool.checkedout()
    store.release_reader()
    assert kept.closed and pool.checkedout() == out - 1
    assert store.n8_writer() is not kept
    store.release_reader()
    check_books(store)


SERVER_PAIRS = ["postgres+mariadb", "mariadb+postgres", "postgres+mysqlclient"]


@pytest.mark.parametrize("pair", SERVER_PAIRS)
def test_a_kept_n8_connection_the_server_closed_is_replaced_and_the_payment_posts(
        pair, tmp_path, clock):
    """N8's server closes the thread's kept connection (its idle timeout over a
    quiet night, a restart): the next payment's first statement on it fails, the
    store retries the payment on a fresh connection, and it posts once."""
    store = make_store(pair, tmp_path)
    try:
        seed_fixture(store)
        store.initial_paid = bills(store)
        ledger = Ledger(store, dict(BANKS), now=clock)
        first = ledger.pay(pay("N1", customer="100000200", amount=100, bank="partial"))
        assert first.outcome is Outcome.OK
        kept = store.n8_writer()
        pg = store.n8_dialect == "postgresql"
        server_id = kept.exec_driver_sql(
            "SELECT pg_backend_pid()" if pg else "SELECT CONNECTION_ID()").scalar()
        kept.rollback()
        with store.n8_engine.connect() as other:
            other.exec_driver_sql(f"SELECT pg_terminate_backend({int(server_id)})" if pg
                                  else f"KILL {int(server_id)}")
            other.commit()
        r = ledger.pay(pay("N2", customer="100000200", amount=100, bank="partial"))
        assert r.outcome is Outcome.OK and not r.retry
        assert kept.closed and store.n8_writer() is not kept  # invalidated, given back
        assert count(store, model.payment) == count(store, store.n8["payment"]) == 2
        assert count(store, model.n8_outbox) <= 2  # applied; deleted in a later batch
        check_books(store)
        store.release_reader()
    finally:
        store.outbox_done.clear()
        store.drop_all()
        store.stop()
