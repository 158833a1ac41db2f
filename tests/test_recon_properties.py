"""Property: for random ledgers and random perturbations of the statement,
after balancing the gateway's totals equal the statement's, or every
difference is an open exception -- to the record and to the fen -- and a
second run of the same file changes nothing.

Each example is a fresh settle date of bank ``any`` on one database (SQLite
and PostgreSQL) or with N8 in a database of its own (conftest.LEDGER_PAIRS); the
customers have bills too large to pay off, so only the perturbations decide what
happens.
"""

from __future__ import annotations

import itertools
from datetime import date, timedelta

import pytest
import sqlalchemy as sa
from conftest import BANKS, LEDGER_PAIRS, FakeClock, close_store, make_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_helpers import bills, check_books, origin
from test_recon import fixed_statement, reconciler, snapshot

from bankgate.canon import messages as m
from bankgate.canon.messages import Outcome
from bankgate.domain.ledger import Ledger
from bankgate.store import model

CUSTOMERS = [f"2000000{i:02d}" for i in range(8)]
UNKNOWN = ["299999998", "299999999"]
_dates = itertools.count()


@pytest.fixture(scope="module", params=["sqlite", "postgres", *LEDGER_PAIRS])
def world(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recon-prop")
    store = make_store(request.param, tmp)
    n8 = store.n8
    with store.n8_engine.begin() as c:  # 10**11 fen: within N8's legacy DECIMAL(12,2) yuan
        c.execute(n8["tariff"].insert(), [{"fee_type": "01", "customer_class": "R",
                                            "unit_price": 1, "late_fee_ppm": 0}])
        c.execute(n8["customer"].insert(), [
            {"customer_no": no, "name": f"客户{i}", "address": "", "customer_class": "R",
             "status": "A"} for i, no in enumerate(CUSTOMERS)])
        c.execute(n8["bill"].insert(), [
            {"bill_id": f"P{no}", "customer_no": no, "fee_type": "01", "period": "2026",
             "amount": 10**11, "paid_amount": 0, "late_fee_paid": 0,
             "due_date": date(2030, 1, 1)} for no in CUSTOMERS])
    store.initial_paid = bills(store)
    yield store, tmp
    close_store(store)


payment_st = st.tuples(st.integers(0, len(CUSTOMERS) - 1), st.integers(1, 90000),
                       st.booleans())  # (customer, amount, reversed by the bank online)
change_st = st.sampled_from(["keep", "keep", "keep", "drop", "amount", "date", "customer"])
extra_st = st.tuples(st.integers(0, len(CUSTOMERS) + len(UNKNOWN) - 1), st.integers(1, 90000))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(
    pays=st.lists(payment_st, max_size=10),
    changes=st.lists(change_st, min_size=10, max_size=10),
    extra=st.lists(extra_st, max_size=3),
    list_reversed=st.booleans(),
    header=st.sampled_from(["right", "right", "count", "total"]),
    bank_only=st.sampled_from(["post", "post", "exception"]),
    utility_only=st.sampled_from(["reverse", "reverse", "exception"]),
    totals_differ=st.sampled_from(["hold", "balance"]),
)
def test_after_balancing_totals_agree_or_exceptions_explain(
        world, pays, changes, extra, list_reversed, header, bank_only, utility_only,
        totals_differ):
    store, tmp = world
    d = date(2026, 1, 1) + timedelta(days=next(_dates))
    ledger = Ledger(store, dict(BANKS), now=FakeClock())
    standing = []
    records = []
    for k, (ci, amount, reversed_) in enumerate(pays):
        serial = f"P{k:03d}"
        cust = CUSTOMERS[ci]
        req = m.PaymentRequest(origin("any", d), serial, cust, amount,
                               content=m.fingerprint("PAY", cust, amount, ""))
        assert ledger.pay(req).outcome is Outcome.OK
        if reversed_:
            r = ledger.reverse(m.ReversalRequest(origin("any", d), serial, cust, amount,
                                                 serial=f"R{k:03d}",
                                                 content=m.fingerprint("REV", serial)))
            assert r.outcome is Outcome.OK
            if list_reversed:  # the bank's statement still lists it
                records.append((serial, d, cust, amount))
            continue
        standing.append((serial, cust, amount))
        change = changes[k]
        if change == "drop":
            continue
        if change == "amount":
            amount += 1
        elif change == "date":
            records.append((serial, d - timedelta(days=1), cust, amount))
            continue
        elif change == "customer":
            cust = CUSTOMERS[(ci + 1) % len(CUSTOMERS)]
        records.append((serial, d, cust, amount))
    for j, (ci, amount) in enumerate(extra):
        cust = (CUSTOMERS + UNKNOWN)[ci]
        records.append((f"X{j:03d}", d, cust, amount))
    count_ = total = None
    if header == "count":
        count_ = len(records) + 1
    elif header == "total":
        total = sum(r[3] for r in records) + 7
    data = fixed_statement("106210", records, d=d, count_=count_, total=total)
    rec = reconciler(ledger, tmp, bank_only=bank_only, utility_only=utility_only,
                     totals_differ=totals_differ)
    rep = rec.reconcile(data, d, outputs=False)

    # the statement against the books, counted independently of the run
    p = model.payment
    with store.engine.connect() as c:
        n, s = c.execute(sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(p.c.amount), 0))
                         .where(p.c.bank == "any", p.c.trade_date == d,
                                p.c.status.in_(("POSTED", "PENDING")))).one()
        ours = {r[0]: (r[1], r[2]) for r in c.execute(
            sa.select(p.c.serial, p.c.customer_no, p.c.amount).where(
                p.c.bank == "any", p.c.trade_date == d, p.c.status == "POSTED"))}
    gap = (len(records) - n, sum(r[3] for r in records) - int(s))
    assert rep.gap == gap
    exceptions = [i for i in rep.items if i.action == "EXCEPTION"]
    if not [i for i in exceptions if i.category != "TOTALS_DIFFER"]:
        assert gap == (0, 0), rep.items
    assert rep.explained == gap, (rep.items, gap)
    # every exception is a real difference
    on_file = {}
    for serial, td, cust, amount in records:
        on_file.setdefault(serial, []).append((td, cust, amount))
    for it in exceptions:
        if it.category == "BANK_ONLY":
            assert it.serial in on_file and it.serial not in ours
        elif it.category == "UTILITY_ONLY":
            assert it.serial in ours and it.serial not in on_file
        elif it.category == "AMOUNT_DIFFERS":
            assert any((c_, a) != ours[it.serial] for td, c_, a in on_file[it.serial])
        elif it.category == "DATE_DIFFERS":
            assert any(td != d for td, _, _ in on_file[it.serial])
        else:
            assert it.category == "TOTALS_DIFFER" and header != "right"
    # everything both sides agree on is matched, and balanced where the policy allows
    hold = header != "right" and totals_differ == "hold"
    for it in rep.items:
        if it.category == "BANK_ONLY" and it.action == "POSTED":
            assert ours[it.serial] == (it.customer_no, it.bank_amount)
            assert bank_only == "post" and not hold
        if it.category == "UTILITY_ONLY" and it.action == "REVERSED":
            assert it.serial not in ours and utility_only == "reverse" and not hold
    check_books(store)
    # the same file again changes nothing and finds the same
    before = snapshot(store)
    again = rec.reconcile(data, d, outputs=False)
    assert snapshot(store) == before
    assert sorted((i.category, i.serial) for i in again.items if i.category != "MATCHED") == \
        sorted((i.category, i.serial) for i in rep.items if i.category != "MATCHED")
    assert again.gap == again.explained == rep.gap
