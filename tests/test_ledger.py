"""The ledger's rules, on every database (see conftest.BACKENDS) and with N8 in a
database of its own in its legacy shape (conftest.LEDGER_PAIRS)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from conftest import BACKENDS, LEDGER_PAIRS, store_fixture
from ledger_helpers import TODAY, bills, check_books, count, pay, prepaid, query, rev

from bankgate.canon import messages as m
from bankgate.canon.messages import Outcome
from bankgate.domain.ledger import late_fee
from bankgate.store import model

FULL = 260000 + 15000 + 260000 + 13000  # three bills + 100 days of 万分之五 on B0001

store = store_fixture(BACKENDS + LEDGER_PAIRS)


# -- query -----------------------------------------------------------------------


def test_query_lists_open_bills_oldest_first_with_late_fees(ledger):
    r = ledger.query(query())
    assert r.outcome is Outcome.OK
    assert (r.name, r.customer_class) == ("张三", "R")
    assert [b.bill_id for b in r.bills] == ["B0001", "B0002", "B0003"]
    assert [b.late_fee for b in r.bills] == [13000, 0, 0]
    assert (r.total_due, r.late_fee, r.total) == (535000, 13000, FULL)


def test_query_outcomes(ledger):
    assert ledger.query(query("999")).outcome is Outcome.NOT_FOUND
    assert ledger.query(query("100000300")).outcome is Outcome.ACCOUNT_LOCKED
    assert ledger.query(query("100000400")).outcome is Outcome.NOTHING_DUE
    assert ledger.query(query("x" * 33)).outcome is Outcome.FORMAT_ERROR


def test_late_fee_rule():
    d = TODAY
    assert late_fee(260000, d - timedelta(days=100), d, 500, 0) == 13000
    assert late_fee(260000, d, d, 500, 0) == 0  # due today: not late
    assert late_fee(260000, d - timedelta(days=100), d, 500, 5000) == 8000
    assert late_fee(1, d - timedelta(days=1), d, 500, 0) == 0  # rounds half up
    assert late_fee(1000, d - timedelta(days=1), d, 500, 0) == 1  # 0.5 fen -> 1


# -- payment ---------------------------------------------------------------------


def test_exact_payment_settles_everything_in_one_transaction(ledger, store):
    r = ledger.pay(pay("S1"))
    assert r.outcome is Outcome.OK and r.remaining_due == 0 and not r.retry
    assert len(r.receipt_no) == 20 and r.receipt_no.startswith("20261127")
    assert bills(store)["B0001"] == (260000, 13000)
    assert bills(store)["B0003"] == (260000, 0)
    assert ledger.query(query()).outcome is Outcome.NOTHING_DUE
    assert count(store, store.n8["payment"]) == 1
    assert count(store, store.n8["payment_item"]) == 3
    check_books(store)


def test_retry_returns_first_answer_and_posts_nothing(ledger, store):
    first = ledger.pay(pay("S1"))
    again = ledger.pay(pay("S1"))
    assert again.retry and again.outcome is Outcome.OK
    assert (again.receipt_no, again.amount, again.remaining_due) == (
        first.receipt_no, first.amount, first.remaining_due)
    assert count(store, model.payment) == 1
    other = ledger.pay(pay("S1", amount=1000))
    assert other.outcome is Outcome.DUPLICATE_MISMATCH
    assert count(store, model.payment) == 1
    check_books(store)


def test_rejections_are_remembered(ledger, store):
    assert ledger.pay(pay("S2", amount=100)).outcome is Outcome.AMOUNT_REJECTED
    again = ledger.pay(pay("S2", amount=100))
    assert again.outcome is Outcome.AMOUNT_REJECTED and again.retry
    assert count(store, model.payment) == 0


def test_payment_policies(ledger, store):
    # partial: late fees first, then the oldest bill
    r = ledger.pay(pay("P1", amount=20000, bank="partial"))
    assert r.outcome is Outcome.OK and r.remaining_due == FULL - 20000
    assert bills(store)["B0001"] == (7000, 13000)
    assert ledger.pay(pay("P2", amount=FULL, bank="partial")).outcome is Outcome.AMOUNT_REJECTED
    # exact refuses a part; overpay refuses a part but keeps an excess
    assert ledger.pay(pay("E1", amount=1000, bank="fixed")).outcome is Outcome.AMOUNT_REJECTED
    rest = FULL - 20000
    assert ledger.pay(pay("O1", amount=rest - 1, bank="overpay")).outcome is \
        Outcome.AMOUNT_REJECTED
    r = ledger.pay(pay("O2", amount=rest + 5000, bank="overpay"))
    assert r.outcome is Outcome.OK and r.remaining_due == 0
    assert prepaid(store) == {"100000123": 5000}
    check_books(store)


def test_payment_of_named_bills(ledger, store):
    r = ledger.pay(pay("N1", amount=15000, bank="fixed", bill_ids=["B0002"]))
    assert r.outcome is Outcome.OK and r.remaining_due == FULL - 15000
    assert bills(store)["B0002"] == (15000, 0) and bills(store)["B0001"] == (0, 0)
    # a bill no longer open, a bill of someone else, a wrong sum, a repeated id
    assert ledger.pay(pay("N2", amount=15000, bill_ids=["B0002"])).outcome is \
        Outcome.AMOUNT_REJECTED
    assert ledger.pay(pay("N3", amount=1000000, bill_ids=["B0010"])).outcome is \
        Outcome.AMOUNT_REJECTED
    assert ledger.pay(pay("N4", amount=273000, bill_ids=["B0001"])).outcome is Outcome.OK
    assert ledger.pay(pay("N5", amount=1, bill_ids=["B0003", "B0003"])).outcome is \
        Outcome.AMOUNT_REJECTED
    check_books(store)


def test_payment_outcomes_for_customers(ledger, store):
    assert ledger.pay(pay("C1", customer="999")).outcome is Outcome.NOT_FOUND
    assert ledger.pay(pay("C2", customer="100000300")).outcome is Outcome.ACCOUNT_LOCKED
    assert ledger.pay(pay("C3", customer="100000400")).outcome is Outcome.NOTHING_DUE
    assert count(store, model.payment) == 0


@pytest.mark.parametrize("amount", [0, -5, 10**13])
def test_absurd_amounts_rejected(ledger, store, amount):
    assert ledger.pay(pay("A1", amount=amount)).outcome is Outcome.AMOUNT_REJECTED
    assert count(store, model.payment) == 0


@pytest.mark.parametrize("field", ["customer", "serial", "bill"])
@pytest.mark.parametrize("bad", ["9" * 41, "用户\u20ac", "", "a\x00b"])
def test_bad_identifiers_are_format_errors_and_leave_no_trace(ledger, store, field, bad):
    kw = {"customer": {"customer": bad}, "serial": {}, "bill": {"bill_ids": [bad]}}[field]
    serial = bad if field == "serial" else "F1"
    r = ledger.pay(pay(serial, **kw))
    assert r.outcome is Outcome.FORMAT_ERROR
    assert count(store, model.journal) == 0


# -- reversal --------------------------------------------------------------------


def test_reversal_restores_everything(ledger, store):
    before = bills(store)
    r = ledger.pay(pay("S1", amount=FULL + 7000, bank="overpay"))
    assert r.outcome is Outcome.OK and prepaid(store) == {"100000123": 7000}
    x = ledger.reverse(rev("R1", "S1", amount=FULL + 7000, bank="overpay"))
    assert x.outcome is Outcome.OK
    assert bills(store) == before and prepaid(store) == {}
    st = ledger.status(m.StatusRequest(rev(None, "S1", bank="overpay").origin, "S1", TODAY))
    assert st.status is m.PaymentStatus.REVERSED and st.receipt_no == r.receipt_no
    # a retry of the reversal gets its first answer; another reversal is "already"
    assert ledger.reverse(rev("R1", "S1", amount=FULL + 7000, bank="overpay")).retry
    assert ledger.reverse(rev("R2", "S1", amount=FULL + 7000, bank="overpay")).outcome is \
        Outcome.ALREADY_REVERSED
    check_books(store)


def test_reversal_rules_in_order(ledger, store):
    ledger.pay(pay("S1"))
    assert ledger.reverse(rev("R1", "S9")).outcome is Outcome.ORIGINAL_NOT_FOUND
    assert ledger.reverse(rev("R2", "S1", amount=1)).outcome is Outcome.AMOUNT_REJECTED
    assert ledger.reverse(rev("R3", "S1", customer="100000200")).outcome is \
        Outcome.AMOUNT_REJECTED
    with store.engine.begin() as c:
        c.execute(model.payment.update().values(invoice_printed=1))
    assert ledger.reverse(rev("R4", "S1")).outcome is Outcome.REVERSAL_NOT_ALLOWED
    assert count(store, model.undo) == 0


def test_reversal_before_payment_blocks_the_late_payment(ledger, store):
    r = ledger.reverse(rev("R1", "S5"))
    assert r.outcome is Outcome.ORIGINAL_NOT_FOUND
    late = ledger.pay(pay("S5"))
    assert late.outcome is Outcome.REVERSED_FIRST
    assert ledger.pay(pay("S5", amount=1)).outcome is Outcome.REVERSED_FIRST
    assert count(store, model.payment) == 0
    st = ledger.status(m.StatusRequest(rev(None, "S5").origin, "S5", TODAY))
    assert st.status is m.PaymentStatus.NOT_FOUND


def test_iso_style_reversal_without_own_serial_is_idempotent(ledger, store):
    ledger.pay(pay("RRN1"))
    assert ledger.reverse(rev(None, "RRN1", customer=None)).outcome is Outcome.OK
    assert ledger.reverse(rev(None, "RRN1", customer=None)).outcome is Outcome.ALREADY_REVERSED
    assert count(store, model.undo) == 1
    check_books(store)


def test_latest_only_reversal(ledger, store):
    ledger.pay(pay("L1", amount=20000, bank="latest"))
    ledger.pay(pay("L2", amount=30000, bank="latest"))
    assert ledger.reverse(rev("X1", "L1", amount=20000, bank="latest")).outcome is \
        Outcome.REVERSAL_NOT_ALLOWED
    assert ledger.reverse(rev("X2", "L2", amount=30000, bank="latest")).outcome is Outcome.OK
    assert ledger.reverse(rev("X3", "L1", amount=20000, bank="latest")).outcome is Outcome.OK
    check_books(store)


def test_reversal_refused_when_prepaid_excess_was_drawn(ledger, store):
    ledger.pay(pay("S1", amount=FULL + 7000, bank="overpay"))
    with store.engine.begin() as c:  # N8 / a later bill drew on the balance
        c.execute(model.prepaid.update().values(balance=0))
    assert ledger.reverse(rev("R1", "S1", amount=FULL + 7000, bank="overpay")).outcome is \
        Outcome.REVERSAL_NOT_ALLOWED


# -- cut-off -----------------------------------------------------------------------


def test_closed_date_refuses_money_but_answers_retries_and_queries(ledger, store):
    first = ledger.pay(pay("S1", amount=20000, bank="partial"))
    c = ledger.cutoff("partial", TODAY)
    assert (c.count, c.total) == (1, 20000)
    assert ledger.pay(pay("S2", amount=20000, bank="partial")).outcome is Outcome.DATE_CLOSED
    assert ledger.reverse(rev("R1", "S1", amount=20000, bank="partial")).outcome is \
        Outcome.DATE_CLOSED
    again = ledger.pay(pay("S1", amount=20000, bank="partial"))
    assert again.retry and again.receipt_no == first.receipt_no
    assert ledger.query(query(bank="partial")).outcome is Outcome.OK
    # a repeated cut-off answers the same totals; other banks are still open
    assert ledger.cutoff("partial", TODAY).count == 1
    assert ledger.pay(pay("S3", amount=FULL - 20000)).outcome is Outcome.OK


# -- two-phase, refund -----------------------------------------------------------


def test_two_phase_confirm_and_expiry(ledger, store, clock):
    before = bills(store)
    r = ledger.pay(pay("T1", bank="twophase"))
    assert r.outcome is Outcome.OK
    st = ledger.status(m.StatusRequest(rev(None, "T1", bank="twophase").origin, "T1", TODAY))
    assert st.status is m.PaymentStatus.PENDING
    ledger.pay(pay("T2", customer="100000200", amount=1000000, bank="twophase"))
    conf = ledger.confirm(m.ConfirmRequest(rev(None, "T2", bank="twophase").origin, "T2", TODAY))
    assert conf.outcome is Outcome.OK
    clock.now += timedelta(seconds=59)
    assert ledger.expire_pending() == 0
    clock.now += timedelta(seconds=2)
    assert ledger.expire_pending() == 1
    assert bills(store)["B0001"] == before["B0001"]
    assert bills(store)["B0010"] == (1000000, 0)
    late = ledger.confirm(m.ConfirmRequest(rev(None, "T1", bank="twophase").origin, "T1", TODAY))
    assert late.outcome is Outcome.EXPIRED  # tests/test_twophase.py has the full rules
    check_books(store)


def test_refund_by_operator_is_audited(ledger, store, clock):
    r = ledger.pay(pay("S1"))
    ledger.cutoff("fixed", TODAY)
    clock.now += timedelta(days=3)
    assert ledger.refund(r.receipt_no, " ", "ops1").outcome is Outcome.FORMAT_ERROR
    x = ledger.refund(r.receipt_no, "customer moved out", "ops1")
    assert x.outcome is Outcome.OK
    assert ledger.refund(r.receipt_no, "again", "ops1").outcome is Outcome.ALREADY_REVERSED
    assert ledger.refund("nope", "x", "ops1").outcome is Outcome.ORIGINAL_NOT_FOUND
    audit = ledger.store.run_sync(lambda tx: tx.audit_list())
    assert any(a["action"] == "refund" and a["actor"] == "ops1" and a["subject"] == r.receipt_no
               for a in audit)
    check_books(store)


# -- concurrency -------------------------------------------------------------------


def test_concurrent_identical_requests_post_once(ledger, store):
    if store.dialect == "sqlite":
        n = 4  # SQLite serialises writers; still must hold
    else:
        n = 8
    results = []
    barrier = threading.Barrier(n)

    def go():
        barrier.wait()
        results.append(ledger.pay(pay("CONC1")))

    threads = [threading.Thread(target=go) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == n
    assert {r.outcome for r in results} == {Outcome.OK}
    assert len({r.receipt_no for r in results}) == 1
    assert sum(not r.retry for r in results) == 1
    assert count(store, model.payment) == 1
    check_books(store)


def test_concurrent_payments_for_one_customer_never_overpay(ledger, store):
    n = 6
    barrier = threading.Barrier(n)
    results = []

    def go(i):
        barrier.wait()
        results.append(ledger.pay(pay(f"K{i}", amount=FULL)))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outcomes = sorted(r.outcome.value for r in results)
    assert outcomes.count("OK") == 1
    assert outcomes.count("NOTHING_DUE") == n - 1
    check_books(store)


def test_iso_reversal_repeated_after_cutoff_answers_as_before(ledger, store):
    """A 0420 repeating an approved 0400 after the date closed is a repeat,
    answered like the first (the repeat check comes before the closed date)."""
    ledger.pay(pay("RRN2"))
    assert ledger.reverse(rev(None, "RRN2", customer=None)).outcome is Outcome.OK
    ledger.cutoff("fixed", TODAY)
    assert ledger.reverse(rev(None, "RRN2", customer=None)).outcome is Outcome.ALREADY_REVERSED
    ledger.pay(pay("RRN3", customer="100000200", amount=1000000))
    assert ledger.reverse(rev(None, "RRN3", customer=None, amount=1000000)).outcome is \
        Outcome.DATE_CLOSED
    check_books(store)


def test_queries_do_not_wait_for_a_writer_on_sqlite(tmp_path):
    import time

    from conftest import BANKS, NOW, make_store, seed_fixture

    from bankgate.domain.ledger import Ledger

    store = make_store("sqlite", tmp_path)
    seed_fixture(store)
    ledger = Ledger(store, dict(BANKS))

    with store.engine.connect() as writer, writer.begin() as t:  # BEGIN IMMEDIATE
        writer.execute(model.audit.insert().values(at=NOW, actor="x", action="y"))
        started = time.monotonic()
        assert ledger.query(query()).outcome is Outcome.OK  # would wait 30 s for the lock
        assert time.monotonic() - started < 5
        t.rollback()
