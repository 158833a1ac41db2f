"""Two-phase payments (prepay, confirm, cancel, expiry, confirmed-only reversal) on every
database (see conftest.BACKENDS): the rules of docs/ledger.rst, "Two-phase payments".

The ``twophase`` bank of conftest posts every payment as pending for 60 s; the clock
is conftest's FakeClock, so a deadline is hit to the second and no sweeper runs unless
a test calls ``expire_pending``.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest
import sqlalchemy as sa
from conftest import BANKS, NOW
from ledger_helpers import TODAY, bills, check_books, count, origin, pay, query, rev

from bankgate.canon import messages as m
from bankgate.canon.messages import Outcome, PaymentStatus
from bankgate.domain.ledger import Ledger, busy_result
from bankgate.store import model
from bankgate.store.db import Store

FULL = 260000 + 15000 + 260000 + 13000  # all of 100000123's bills with late fees
BIG = 1000000  # 100000200's one bill
DEADLINE = NOW + timedelta(seconds=60)


def prepay(serial: str, customer: str = "100000123", amount: int = FULL,
           bank: str = "twophase", **kw) -> m.PaymentRequest:
    return pay(serial, customer, amount, bank=bank, **kw)


def _settle(cls, orig: str, serial: str | None, order_no: str, bank: str, orig_date,
            extra: str):
    content = m.fingerprint(cls.__name__, orig, orig_date, order_no, extra) if serial else ""
    return cls(origin(bank), orig, orig_date, serial=serial, order_no=order_no,
               content=content)


def confirm(orig: str, serial: str | None = None, order_no: str = "", bank: str = "twophase",
            orig_date=TODAY, extra: str = "") -> m.ConfirmRequest:
    return _settle(m.ConfirmRequest, orig, serial, order_no, bank, orig_date, extra)


def cancel(orig: str, serial: str | None = None, order_no: str = "", bank: str = "twophase",
           orig_date=TODAY, extra: str = "") -> m.CancelRequest:
    return _settle(m.CancelRequest, orig, serial, order_no, bank, orig_date, extra)


def reverse(orig: str, *, serial: str | None = None, amount: int = FULL,
            customer: str | None = "100000123", bank: str = "twophase",
            confirmed_only: bool = False) -> m.ReversalRequest:
    r = rev(serial, orig, customer=customer, amount=amount, bank=bank)
    return m.ReversalRequest(r.origin, r.orig_serial, r.customer_no, r.amount,
                             serial=r.serial, content=r.content, confirmed_only=confirmed_only)


def status(ledger, orig: str, bank: str = "twophase") -> PaymentStatus:
    return ledger.status(m.StatusRequest(origin(bank), orig, TODAY)).status


def row(store, serial: str, bank: str = "twophase") -> dict:
    p = model.payment
    with store.engine.connect() as c:
        return dict(c.execute(sa.select(p).where(p.c.bank == bank, p.c.serial == serial))
                    .mappings().one())


def n8_status(store, receipt_no: str) -> str:
    n8p = store.n8["payment"]
    with store.n8_engine.connect() as c:
        return c.execute(sa.select(n8p.c.status).where(n8p.c.pay_id == receipt_no)).scalar()


def undo_kinds(store) -> dict[int, tuple[str, str | None]]:
    u = model.undo
    with store.engine.connect() as c:
        return {r.payment_id: (r.kind, r.serial) for r in c.execute(sa.select(u))}


@contextlib.contextmanager
def restarted(store, clock, hooks=()):
    """A gateway process started anew: its own Store (engine, pool) over the same
    database and a Ledger that knows nothing but what the database holds."""
    other = Store(store.url, store.mapping, threads=2, n8_url=store.n8_url)
    try:
        yield Ledger(other, dict(BANKS), now=clock, hooks=list(hooks))
    finally:
        other.stop()


# -- prepay --------------------------------------------------------------------------------


def test_prepay_is_pending_with_its_deadline_and_settles_the_bills(ledger, store):
    r = ledger.pay(prepay("T1"))
    assert r.outcome is Outcome.OK and r.expires_at == DEADLINE
    assert status(ledger, "T1") is PaymentStatus.PENDING
    assert ledger.query(query(bank="twophase")).outcome is Outcome.NOTHING_DUE
    assert n8_status(store, r.receipt_no) == "P"
    again = ledger.pay(prepay("T1"))  # the deadline is part of the remembered answer
    assert again.retry and (again.receipt_no, again.expires_at) == (r.receipt_no, DEADLINE)
    assert ledger.pay(pay("S1", bank="fixed")).expires_at is None  # one-phase bank
    check_books(store)


def test_prepay_by_request_on_a_one_phase_bank(ledger, store):
    r = ledger.pay(prepay("T1", bank="fixed", two_phase=True))
    assert r.expires_at == NOW + timedelta(seconds=BANKS["fixed"].confirm_timeout)
    assert status(ledger, "T1", bank="fixed") is PaymentStatus.PENDING
    c = ledger.confirm(confirm("T1", bank="fixed", order_no=r.receipt_no))
    assert c.outcome is Outcome.OK and status(ledger, "T1", bank="fixed") is PaymentStatus.POSTED


# -- confirm -------------------------------------------------------------------------------


def test_confirm_makes_it_final_with_receipt_and_nothing_left_to_expire(ledger, store, clock):
    r = ledger.pay(prepay("T1"))
    c = ledger.confirm(confirm("T1", "C1", order_no=r.receipt_no))
    assert (c.outcome, c.receipt_no, c.amount, c.customer_no, c.invoice_no, c.retry) == (
        Outcome.OK, r.receipt_no, FULL, "100000123", "", False)
    p = row(store, "T1")
    assert (p["status"], p["expires_at"]) == ("POSTED", None)
    assert n8_status(store, r.receipt_no) == "N"
    clock.now += timedelta(hours=1)
    assert ledger.expire_pending() == 0 and status(ledger, "T1") is PaymentStatus.POSTED
    check_books(store)


def test_confirm_one_second_before_the_deadline_is_in_time(ledger, store, clock):
    r = ledger.pay(prepay("T1"))
    clock.now = DEADLINE - timedelta(seconds=1)
    assert ledger.confirm(confirm("T1", "C1", order_no=r.receipt_no)).outcome is Outcome.OK
    clock.now = DEADLINE + timedelta(hours=1)
    assert ledger.expire_pending() == 0 and status(ledger, "T1") is PaymentStatus.POSTED


@pytest.mark.parametrize("late", [0, 1, 3600])
def test_confirm_at_or_after_the_deadline_expires_it_though_no_sweeper_ran(
        ledger, store, clock, late):
    before = bills(store)
    r = ledger.pay(prepay("T1"))
    clock.now = DEADLINE + timedelta(seconds=late)
    c = ledger.confirm(confirm("T1", "C1", order_no=r.receipt_no))
    assert c.outcome is Outcome.EXPIRED and c.invoice_no == ""
    assert bills(store) == before  # undone: the bills are open again
    p = row(store, "T1")
    assert p["status"] == "EXPIRED" and n8_status(store, r.receipt_no) == "C"
    assert undo_kinds(store) == {p["id"]: ("EXPIRY", None)}
    assert ledger.expire_pending() == 0  # nothing left for the sweeper
    # the journaled answer is EXPIRED for good, and a new confirm says the same
    again = ledger.confirm(confirm("T1", "C1", order_no=r.receipt_no))
    assert again.retry and again.outcome is Outcome.EXPIRED
    assert ledger.confirm(confirm("T1", "C2")).outcome is Outcome.EXPIRED
    assert ledger.cancel(cancel("T1", "X1")).outcome is Outcome.EXPIRED
    check_books(store)


def test_confirm_after_the_sweeper_expired_it(ledger, store, clock):
    ledger.pay(prepay("T1"))
    clock.now = DEADLINE
    assert ledger.expire_pending() == 1
    assert ledger.confirm(confirm("T1")).outcome is Outcome.EXPIRED
    assert ledger.cancel(cancel("T1")).outcome is Outcome.EXPIRED
    assert status(ledger, "T1") is PaymentStatus.EXPIRED
    check_books(store)


def test_confirm_twice_under_two_serials_and_its_retries(ledger, store):
    r = ledger.pay(prepay("T1"))
    first = ledger.confirm(confirm("T1", "C1", order_no=r.receipt_no))
    second = ledger.confirm(confirm("T1", "C2", order_no=r.receipt_no))
    assert first.outcome is second.outcome is Outcome.OK and not second.retry
    assert (second.receipt_no, second.invoice_no, second.amount) == (
        first.receipt_no, first.invoice_no, first.amount)
    retry = ledger.confirm(confirm("T1", "C1", order_no=r.receipt_no))
    assert retry.retry and retry.outcome is Outcome.OK
    assert (retry.receipt_no, retry.amount, retry.customer_no, retry.invoice_no) == (
        first.receipt_no, first.amount, first.customer_no, first.invoice_no)
    other = ledger.confirm(confirm("T1", "C1", order_no=r.receipt_no, extra="changed"))
    assert other.outcome is Outcome.DUPLICATE_MISMATCH
    # a confirm's serial lives in the same journal as payments and reversals
    assert ledger.confirm(confirm("T1", "T1")).outcome is Outcome.DUPLICATE_MISMATCH
    assert ledger.pay(prepay("C1")).outcome is Outcome.DUPLICATE_MISMATCH
    j = model.journal
    with store.engine.connect() as c:
        kinds = dict(c.execute(sa.select(j.c.serial, j.c.kind)).all())
    assert kinds == {"T1": "PAY", "C1": "CONFIRM", "C2": "CONFIRM"}
    assert count(store, model.payment) == 1
    check_books(store)


def test_confirm_without_a_serial_is_idempotent_by_the_original(ledger, store):
    ledger.pay(prepay("T1"))
    assert ledger.confirm(confirm("T1")).outcome is Outcome.OK
    assert ledger.confirm(confirm("T1")).outcome is Outcome.OK
    assert count(store, model.journal) == 1  # only the prepay's row


def test_order_number_and_original_must_match(ledger, store):
    r = ledger.pay(prepay("T1"))
    wrong = r.receipt_no[:-1] + ("1" if r.receipt_no[-1] != "1" else "2")
    for req in (confirm("T1", "C1", order_no=wrong), confirm("T9", "C2"),
                confirm("T1", "C3", orig_date=TODAY - timedelta(days=1)),
                confirm("T1", "C4", bank="fixed"), cancel("T1", "X1", order_no=wrong)):
        res = ledger.handle(req)
        assert res.outcome is Outcome.ORIGINAL_NOT_FOUND, req
        assert (res.receipt_no, res.amount) == ("", 0)  # says nothing of another order
    assert status(ledger, "T1") is PaymentStatus.PENDING  # a wrong order never posts it
    again = ledger.confirm(confirm("T1", "C1", order_no=wrong))
    assert again.retry and again.outcome is Outcome.ORIGINAL_NOT_FOUND
    assert ledger.confirm(confirm("T1", "C5", order_no=r.receipt_no)).outcome is Outcome.OK
    check_books(store)


def test_confirm_of_a_cancelled_reversed_or_refunded_payment_is_refused(ledger, store):
    ledger.pay(prepay("T1"))
    ledger.pay(prepay("T2", customer="100000200", amount=BIG))
    assert ledger.cancel(cancel("T1", "X1")).outcome is Outcome.OK
    c = ledger.confirm(confirm("T1", "C1"))
    assert c.outcome is Outcome.STATE_NOT_ALLOWED and "cancelled" in c.message
    assert ledger.reverse(reverse("T2", customer="100000200", amount=BIG)).outcome is Outcome.OK
    assert ledger.confirm(confirm("T2", "C2")).outcome is Outcome.STATE_NOT_ALLOWED
    r = ledger.pay(pay("S1", customer="100000200", amount=BIG, bank="fixed"))
    assert ledger.refund(r.receipt_no, "moved out", "ops1").outcome is Outcome.OK
    assert ledger.confirm(confirm("S1", bank="fixed")).outcome is Outcome.STATE_NOT_ALLOWED
    assert status(ledger, "T1") is PaymentStatus.CANCELLED
    check_books(store)


def test_bad_serials_are_format_errors_and_record_nothing(ledger, store):
    ledger.pay(prepay("T1"))
    assert ledger.confirm(confirm("T1", "C" * 41)).outcome is Outcome.FORMAT_ERROR
    assert ledger.cancel(cancel("", "X1")).outcome is Outcome.FORMAT_ERROR
    assert count(store, model.journal) == 1
    assert status(ledger, "T1") is PaymentStatus.PENDING


# -- cancel --------------------------------------------------------------------------------


def test_cancel_undoes_it_as_cancelled_and_twice_is_still_ok(ledger, store):
    before = bills(store)
    r = ledger.pay(prepay("T1"))
    x = ledger.cancel(cancel("T1", "X1", order_no=r.receipt_no))
    assert (x.outcome, x.receipt_no, x.amount, x.retry) == (Outcome.OK, r.receipt_no, FULL,
                                                            False)
    assert bills(store) == before
    assert ledger.query(query(bank="twophase")).total == FULL  # open again
    p = row(store, "T1")
    assert p["status"] == "CANCELLED" and p["undone_at"] == NOW
    assert n8_status(store, r.receipt_no) == "C"
    assert undo_kinds(store) == {p["id"]: ("CANCEL", "X1")}
    twice = ledger.cancel(cancel("T1", "X2", order_no=r.receipt_no))
    assert twice.outcome is Outcome.OK and not twice.retry
    assert ledger.cancel(cancel("T1")).outcome is Outcome.OK
    retry = ledger.cancel(cancel("T1", "X1", order_no=r.receipt_no))
    assert retry.retry and (retry.outcome, retry.receipt_no) == (Outcome.OK, r.receipt_no)
    assert ledger.cancel(cancel("T1", "X1")).outcome is Outcome.DUPLICATE_MISMATCH
    assert status(ledger, "T1") is PaymentStatus.CANCELLED
    # the customer can pay again, at once
    assert ledger.pay(prepay("T2")).outcome is Outcome.OK
    check_books(store)


def test_cancel_of_a_confirmed_payment_is_refused(ledger, store):
    ledger.pay(prepay("T1"))
    assert ledger.confirm(confirm("T1", "C1")).outcome is Outcome.OK
    x = ledger.cancel(cancel("T1", "X1"))
    assert x.outcome is Outcome.STATE_NOT_ALLOWED and "reverse it" in x.message
    assert status(ledger, "T1") is PaymentStatus.POSTED
    assert ledger.reverse(reverse("T1", confirmed_only=True)).outcome is Outcome.OK
    assert ledger.cancel(cancel("T1", "X2")).outcome is Outcome.STATE_NOT_ALLOWED
    check_books(store)


def test_cancel_at_the_deadline_expires_it_instead(ledger, store, clock):
    ledger.pay(prepay("T1"))
    clock.now = DEADLINE
    assert ledger.cancel(cancel("T1", "X1")).outcome is Outcome.EXPIRED
    p = row(store, "T1")
    assert p["status"] == "EXPIRED" and undo_kinds(store)[p["id"]][0] == "EXPIRY"
    check_books(store)


# -- reversal ------------------------------------------------------------------------------


def test_confirmed_only_reversal_refuses_what_is_not_confirmed(ledger, store, clock):
    ledger.pay(prepay("T1"))
    x = ledger.reverse(reverse("T1", serial="R1", confirmed_only=True))
    assert x.outcome is Outcome.STATE_NOT_ALLOWED and "cancel it" in x.message
    assert status(ledger, "T1") is PaymentStatus.PENDING
    assert ledger.cancel(cancel("T1")).outcome is Outcome.OK
    x = ledger.reverse(reverse("T1", serial="R2", confirmed_only=True))
    assert x.outcome is Outcome.STATE_NOT_ALLOWED
    ledger.pay(prepay("T2", customer="100000200", amount=BIG))
    clock.now = DEADLINE  # not swept: the reversal sees it expired all the same
    x = ledger.reverse(reverse("T2", customer="100000200", amount=BIG, confirmed_only=True))
    assert x.outcome is Outcome.STATE_NOT_ALLOWED and row(store, "T2")["status"] == "EXPIRED"
    ledger.pay(prepay("T3"))
    assert ledger.confirm(confirm("T3")).outcome is Outcome.OK
    assert ledger.reverse(reverse("T3", serial="R3", confirmed_only=True)).outcome is Outcome.OK
    again = ledger.reverse(reverse("T3", serial="R4", confirmed_only=True))
    assert again.outcome is Outcome.STATE_NOT_ALLOWED  # reversed already
    assert status(ledger, "T3") is PaymentStatus.REVERSED
    check_books(store)


def test_reversal_without_confirmed_only_is_as_before(ledger, store, clock):
    ledger.pay(prepay("T1"))
    assert ledger.reverse(reverse("T1", serial="R1")).outcome is Outcome.OK  # pending: ok
    assert status(ledger, "T1") is PaymentStatus.REVERSED
    assert ledger.confirm(confirm("T1")).outcome is Outcome.STATE_NOT_ALLOWED
    ledger.pay(prepay("T2", customer="100000200", amount=BIG))
    assert ledger.cancel(cancel("T2")).outcome is Outcome.OK
    x = ledger.reverse(reverse("T2", customer="100000200", amount=BIG))
    assert x.outcome is Outcome.ALREADY_REVERSED and "cancelled" in x.message
    check_books(store)


def test_a_reversal_before_the_prepay_blocks_it(ledger, store):
    x = ledger.reverse(reverse("T9", serial="R1", confirmed_only=True))
    assert x.outcome is Outcome.ORIGINAL_NOT_FOUND
    assert ledger.pay(prepay("T9")).outcome is Outcome.REVERSED_FIRST
    assert status(ledger, "T9") is PaymentStatus.NOT_FOUND
    assert ledger.confirm(confirm("T9")).outcome is Outcome.ORIGINAL_NOT_FOUND
    assert count(store, model.payment) == 0
    check_books(store)


# -- status --------------------------------------------------------------------------------


def test_status_in_every_state(ledger, store, clock):
    assert status(ledger, "T0") is PaymentStatus.NOT_FOUND
    ledger.pay(prepay("T1"))
    assert status(ledger, "T1") is PaymentStatus.PENDING
    ledger.confirm(confirm("T1"))
    assert status(ledger, "T1") is PaymentStatus.POSTED
    ledger.reverse(reverse("T1", confirmed_only=True))
    assert status(ledger, "T1") is PaymentStatus.REVERSED
    ledger.pay(prepay("T2"))
    ledger.cancel(cancel("T2"))
    assert status(ledger, "T2") is PaymentStatus.CANCELLED
    ledger.pay(prepay("T3"))
    st = ledger.status(m.StatusRequest(origin("twophase"), "T3", TODAY))
    assert (st.status, st.amount, st.customer_no) == (PaymentStatus.PENDING, FULL, "100000123")
    clock.now = DEADLINE - timedelta(seconds=1)
    assert status(ledger, "T3") is PaymentStatus.PENDING
    clock.now = DEADLINE
    assert status(ledger, "T3") is PaymentStatus.EXPIRED  # before any sweep ...
    assert row(store, "T3")["status"] == "PENDING"  # ... which status does not do
    assert ledger.expire_pending() == 1
    assert status(ledger, "T3") is PaymentStatus.EXPIRED
    check_books(store)


# -- everything lives in the database ------------------------------------------------------


def test_a_restart_continues_exactly(ledger, store, clock):
    r1 = ledger.pay(prepay("T1"))
    r2 = ledger.pay(prepay("T2", customer="100000200", amount=BIG))
    first = ledger.confirm(confirm("T1", "C1", order_no=r1.receipt_no))
    with restarted(store, clock) as after:
        retry = after.confirm(confirm("T1", "C1", order_no=r1.receipt_no))
        assert retry.retry and (retry.outcome, retry.receipt_no) == (Outcome.OK,
                                                                     first.receipt_no)
        assert after.confirm(confirm("T1", "C1", order_no="x")).outcome is \
            Outcome.DUPLICATE_MISMATCH
        wrong = after.confirm(confirm("T2", "C2", order_no=r1.receipt_no))
        assert wrong.outcome is Outcome.ORIGINAL_NOT_FOUND
        assert after.cancel(cancel("T2", "X2", order_no=r2.receipt_no)).outcome is Outcome.OK
    with restarted(store, clock) as again:
        assert status(again, "T2") is PaymentStatus.CANCELLED  # not "reversed"
        assert again.confirm(confirm("T2", "C3")).outcome is Outcome.STATE_NOT_ALLOWED
        assert again.pay(prepay("T3", customer="100000200", amount=BIG)).outcome is \
            Outcome.OK  # T2's bill is open again
    clock.now = DEADLINE
    with restarted(store, clock) as late:
        assert late.confirm(confirm("T3", "C4")).outcome is Outcome.EXPIRED
        assert status(late, "T1") is PaymentStatus.POSTED
    assert status(ledger, "T3") is PaymentStatus.EXPIRED
    check_books(store)


# -- invoices ------------------------------------------------------------------------------


def test_confirm_carries_the_invoice_number_and_cancel_voids_it(store, clock, tmp_path):
    from invoice_helpers import gw_invoices, n8_invoices, setup

    _, ledger, inv, _ = setup(store, clock, tmp_path)
    inv.issue_stock("twophase", 1, 10, code="2100", width=8, actor="ops1")
    r1 = ledger.pay(prepay("T1"))
    r2 = ledger.pay(prepay("T2", customer="100000200", amount=BIG))
    assert r1.invoice_no and r2.invoice_no and r1.invoice_no != r2.invoice_no
    c = ledger.confirm(confirm("T1", "C1", order_no=r1.receipt_no))
    assert (c.outcome, c.invoice_no) == (Outcome.OK, r1.invoice_no)
    assert ledger.confirm(confirm("T1", "C2")).invoice_no == r1.invoice_no
    assert ledger.confirm(confirm("T1", "C1", order_no=r1.receipt_no)).invoice_no == \
        r1.invoice_no
    assert ledger.cancel(cancel("T2", "X1")).outcome is Outcome.OK
    g = gw_invoices(store)
    assert (g[r2.invoice_no]["status"], g[r2.invoice_no]["void_reason"]) == (
        "VOID", "payment undone: cancel")
    assert n8_invoices(store)[r2.invoice_no]["status"] == "V"
    assert g[r1.invoice_no]["status"] != "VOID"
    assert row(store, "T2")["invoice_no"] is None
    inv.print(r1.receipt_no, actor="ops1")  # confirmed: it may be printed now
    assert inv.check() == []
    check_books(store)


# -- dispatch ------------------------------------------------------------------------------


def test_dispatch_and_busy_answers_have_the_right_types(ledger):
    ledger.pay(prepay("T1"))
    assert isinstance(ledger.handle(confirm("T1")), m.ConfirmResult)
    assert isinstance(ledger.handle(cancel("T1")), m.CancelResult)
    assert busy_result(confirm("T1")) == m.ConfirmResult(Outcome.BUSY)
    assert busy_result(cancel("T1"), Outcome.ERROR) == m.CancelResult(Outcome.ERROR)
    assert Outcome.EXPIRED.remembered and Outcome.STATE_NOT_ALLOWED.remembered
