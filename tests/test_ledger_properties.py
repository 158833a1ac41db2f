"""Property tests: random sequences of payments, retries, reversals, refunds,
confirmations and expiries keep the books exact (SQLite and PostgreSQL, and N8 in a
database of its own: conftest.LEDGER_PAIRS)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from conftest import BANKS, LEDGER_PAIRS, NOW, FakeClock, close_store, make_store, seed_fixture
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from ledger_helpers import TODAY, bills, check_books, clear, pay, rev

from bankgate.canon import messages as m
from bankgate.canon.messages import Outcome
from bankgate.domain.ledger import Ledger
from bankgate.store import model

CUSTOMERS = ["100000123", "100000123", "100000200", "100000200", "100000300", "100000404"]
BANK_NAMES = ["partial", "overpay", "any", "fixed", "twophase", "latest"]
SERIALS = [f"S{i}" for i in range(8)]


@pytest.fixture(scope="module", params=["sqlite", "postgres", *LEDGER_PAIRS])
def world(request, tmp_path_factory):
    store = make_store(request.param, tmp_path_factory.mktemp("ledger-prop"))
    clock = FakeClock()
    yield store, clock, Ledger(store, dict(BANKS), now=clock)
    close_store(store)


def reset(store, clock, ledger):
    clear(store)
    seed_fixture(store)
    store.initial_paid = bills(store)
    clock.now = NOW
    ledger._closed.clear()


# 0 stands for "whatever the query says is due now", -1 for that plus an excess
amounts = st.one_of(st.sampled_from([0, 0, -1]), st.integers(1, 600_000),
                    st.sampled_from([15000, 273000]))
bill_lists = st.lists(st.sampled_from(["B0001", "B0002", "B0003", "B0010"]), min_size=1,
                      max_size=2).map(tuple)
def pay_op():
    return st.tuples(st.just("pay"), st.sampled_from(SERIALS), st.sampled_from(CUSTOMERS), amounts,
                   st.sampled_from(BANK_NAMES), st.one_of(st.just(()), st.just(()), st.just(()),
                                                          bill_lists))
ops = st.one_of(
    *[pay_op() for _ in range(6)],
    # reverse the k-th payment that was posted, or (k < 0) an unknown serial
    *[st.tuples(st.just("rev"), st.sampled_from(["R1", "R2", "R3", None]),
                st.integers(-1, 7), st.booleans()) for _ in range(3)],
    st.tuples(st.just("refund"), st.integers(0, 7)),
    st.tuples(st.just("confirm"), st.sampled_from(SERIALS)),
    st.tuples(st.just("tick"), st.integers(1, 120)),
    st.tuples(st.just("cutoff"), st.just("fixed")),
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(ops, min_size=8, max_size=30))
def test_books_stay_exact(world, sequence):
    store, clock, ledger = world
    reset(store, clock, ledger)
    first: dict[tuple, tuple] = {}  # journal key -> (content, result)
    receipts: list[str] = []
    amount_of: dict[tuple, int] = {}
    posted: list[tuple] = []
    stats = {"undone": 0}
    for op in sequence:
        if op[0] == "pay":
            _, serial, cust, amount, bank, bill_ids = op
            if amount <= 0:
                q = ledger.query(m.QueryRequest(pay("x", bank=bank).origin, cust))
                named = [b for b in q.bills if b.bill_id in bill_ids]
                amount = sum(b.amount + b.late_fee for b in named) if bill_ids else q.total
                amount = max(amount, 1) + (5000 if op[3] == -1 else 0)
            req = pay(serial, customer=cust, amount=amount, bank=bank, bill_ids=bill_ids)
            r = ledger.pay(req)
            event(f"pay {r.outcome.value}")
            key = (bank, serial)
            if key in first and first[key][0] == ("PAY", req.content):
                prev = first[key][1]
                assert r.retry and (r.outcome, r.receipt_no) == (prev.outcome, prev.receipt_no)
            elif key in first:
                assert r.outcome in (Outcome.DUPLICATE_MISMATCH, Outcome.REVERSED_FIRST)
            else:
                if r.outcome is not Outcome.REVERSED_FIRST:
                    first[key] = (("PAY", req.content), r)
                if r.outcome is Outcome.OK:
                    receipts.append(r.receipt_no)
                    posted.append(key)
                    amount_of[key] = amount
        elif op[0] == "rev":
            _, own, k, right_amount = op
            bank, orig = posted[k % len(posted)] if posted and k >= 0 else ("any", "S9")
            amount = amount_of.get((bank, orig), 1) if right_amount else 7
            req = rev(own, orig, customer=None, amount=amount, bank=bank)
            r = ledger.reverse(req)
            stats["undone"] += r.outcome is Outcome.OK
            if own is not None:
                key = (bank, own)
                if key in first and first[key][0] == ("REV", req.content):
                    assert r.retry and r.outcome is first[key][1].outcome
                elif key in first:
                    assert r.outcome is Outcome.DUPLICATE_MISMATCH
                else:
                    first[key] = (("REV", req.content), r)
            if (bank, orig) not in first:
                first.setdefault((bank, orig), (("BLOCK",), None))
        elif op[0] == "refund" and receipts:
            ledger.refund(receipts[op[1] % len(receipts)], "test", "prop")
        elif op[0] == "confirm":
            ledger.confirm(m.ConfirmRequest(rev(None, op[1], bank="twophase").origin, op[1],
                                            TODAY))
        elif op[0] == "tick":
            clock.now += timedelta(seconds=op[1])
            ledger.expire_pending()
        elif op[0] == "cutoff":
            ledger.cutoff(op[1], TODAY)
        check_books(store)
    # a replay never created a second payment: one row per key answered OK first
    with store.engine.connect() as c:
        n = c.execute(sa.select(sa.func.count()).select_from(model.payment)).scalar()
    assert n == len(receipts) == len(set(receipts))
    event(f"payments posted: {min(len(receipts), 5)}+")
    event(f"reversals done: {min(stats['undone'], 3)}+")
    event(f"ops: {len(sequence) // 10 * 10}+")
