"""The reports with N8 in a database of its own ([n8.database]): the same figures.

Every standard report, the console's overview and custom reports (with and without
``gateway_payment``) are run on one data set twice: in one SQLite database (the
one-database statements, proven by tests/test_reports.py and
tests/test_custom_reports.py) and with N8 apart -- two SQLite files, and a
PostgreSQL gateway with a MariaDB N8 -- where the joins across the two are done in
Python.  The rows, their order and the totals must be the same.  The data adds
what only the split path could get wrong: an allocation to a bill N8 does not have,
a payment of a customer N8 does not have, a customer without a district, and more
keys than one IN (...) list holds.  Then /healthz names N8's database apart.
"""

from __future__ import annotations

import json
from datetime import date

import pytest
import sqlalchemy as sa
from conftest import make_store
from console_helpers import body, get, synchronous
from test_custom_reports import ARREARS, definition
from test_custom_reports import seed as seed_custom
from test_reports import NOV, _payment
from test_reports import seed as seed_reports
from twisted.internet.task import Clock

from bankgate.app.console.health import HealthCheck, HealthResource
from bankgate.domain import custom_reports as cr
from bankgate.domain import overview, reports
from bankgate.store import custom_reports as csql
from bankgate.store import model
from bankgate.store import reports as sql
from bankgate.store.db import Store

PAIRS = ["sqlite+sqlite", "postgres+mariadb"]
MANY = 1234  # customers and bills paid on 2 Nov: more than two IN (...) lists' worth


def _seed_extra(store) -> None:
    """What only a join done in Python could get wrong (see the module's text)."""
    n8 = store.n8
    with store.n8_engine.begin() as c:
        c.execute(n8["customer"].insert(), [
            {"customer_no": "C4", "name": "无区", "customer_class": "C", "district": None,
             "status": "A"},
            *({"customer_no": f"M{i:05d}", "name": f"户{i}", "customer_class": "RIC"[i % 3],
               "district": f"区{i % 7}", "status": "A"} for i in range(MANY)),
        ])
        c.execute(n8["bill"].insert(), [
            {"bill_id": "B7", "customer_no": "C4", "fee_type": "03", "period": "2026-11",
             "amount": 3000, "paid_amount": 3000, "late_fee_paid": 0,
             "due_date": date(2026, 11, 30)},
            *({"bill_id": f"MB{i:05d}", "customer_no": f"M{i:05d}",
               "fee_type": "0" + "1245"[i % 4], "period": "2026-11", "amount": 100 + i,
               "paid_amount": 100 + i, "late_fee_paid": 0, "due_date": date(2026, 11, 30)}
              for i in range(MANY)),
        ])
    with store.engine.begin() as c:
        c.execute(model.payment.insert(), [
            # a bill N8 lacks (dropped by fee type) and a customer N8 lacks (district "")
            _payment(8, "fixed", date(2026, 11, 4), "02", "GONE", 4000, 4000, 0, 0, "POSTED"),
            # a customer without a district, two fee types and an excess in one payment
            _payment(9, "partial", date(2026, 11, 4), "01", "C4", 9000, 8000, 0, 1000,
                     "REFUNDED"),
            *(_payment(100 + i, "fixed" if i % 2 else "partial", date(2026, 11, 2),
                       "0" + "15"[i % 2], f"M{i:05d}", 100 + i, 100 + i, 0, 0,
                       ("POSTED", "REVERSED", "REFUNDED")[i % 3])
              for i in range(MANY)),
        ])
        c.execute(model.allocation.insert(), [
            {"payment_id": 8, "bill_id": "NOSUCH", "principal": 4000, "late_fee": 0},
            {"payment_id": 9, "bill_id": "B7", "principal": 3000, "late_fee": 0},
            {"payment_id": 9, "bill_id": "B2", "principal": 5000, "late_fee": 0},
            *({"payment_id": 100 + i, "bill_id": f"MB{i:05d}", "principal": 100 + i,
               "late_fee": 0} for i in range(MANY)),
        ])


def _make(backend: str, path) -> Store:
    path.mkdir()
    return make_store(backend, path)


def _drop(s: Store) -> None:
    if s.dialect != "sqlite" or s.n8_dialect != "sqlite":
        s.drop_all()
    s.stop()


@pytest.fixture(params=PAIRS)
def both(request, tmp_path):
    """(one database, N8 apart), seeded alike with ``request.param``'s seeders."""
    one = _make("sqlite", tmp_path / "one")
    split = _make(request.param, tmp_path / "split")
    assert split.split and not one.split
    yield one, split
    _drop(split)
    one.stop()


@pytest.fixture
def report_data(both):
    for s in both:
        seed_reports(s)
        _seed_extra(s)
    return both


def _run(store, name, **params):
    t = reports.find(name).run(store, params, banks=["fixed", "partial"])
    return list(t.rows), t.totals


COLLECTION_BYS = [("day", "bank"), ("fee_type",), ("district", "customer_class"),
                  ("bank", "fee_type"), ("day", "district", "fee_type", "channel"),
                  ("customer_class", "bank"), ("channel",)]


@pytest.mark.parametrize("by", COLLECTION_BYS, ids=",".join)
def test_collections_are_the_same_rows_in_the_same_order(report_data, by):
    one, split = report_data
    want = _run(one, "collections", by=by, **NOV)
    assert len(want[0]) > 1 and want[1][len(by)] > MANY  # the count of payments
    assert _run(split, "collections", by=by, **NOV) == want
    # and for one bank, where the bank's filter is the gateway's
    assert (_run(split, "collections", by=by, bank="partial", **NOV)
            == _run(one, "collections", by=by, bank="partial", **NOV))


def test_the_edge_rows_are_where_a_join_puts_them(report_data):
    _, split = report_data
    rows, totals = _run(split, "collections", by=("district",), **NOV)
    by_district = {r[0]: r for r in rows}
    assert by_district[""][1] == 2  # payment 8 (customer not in N8) and 9 (no district)
    fees = {r[0]: r for r in _run(split, "collections", by=("fee_type",), **NOV)[0]}
    assert fees["03"][2] == 3000  # payment 9's bill B7
    # payment 8's only allocation names a bill N8 lacks: not counted by fee type
    assert sum(r[2] for r in fees.values()) == totals[2] - 4000


@pytest.mark.parametrize("name, params", [
    ("arrears", {"to": date(2026, 11, 30)}),
    ("arrears", {"to": date(2026, 11, 30), "by": ("customer",)}),
    ("collection-rate", {"to": date(2027, 3, 31)}),
    ("recon", NOV), ("invoices", NOV), ("withholding", NOV),
])
def test_the_other_reports_are_the_same(report_data, name, params):
    one, split = report_data
    want = _run(one, name, **params)
    assert want[0]
    assert _run(split, name, **params) == want


def test_the_overview_is_the_same(report_data):
    one, split = report_data
    want = overview.day_figures(one, date(2026, 11, 2), ["fixed", "partial"])
    assert want["by_fee_type"] and want["totals"]["count"] > MANY - 10
    assert overview.day_figures(split, date(2026, 11, 2), ["fixed", "partial"]) == want


def test_a_statement_across_the_two_databases_is_refused(report_data):
    _, split = report_data
    p, c = model.payment, split.n8["customer"]
    across = sa.select(sa.func.count()).select_from(
        p.join(c, c.c.customer_no == p.c.customer_no))
    assert sql.side(split, across) == "both"
    with pytest.raises(RuntimeError, match=r"\[n8.database\]"):
        list(sql.iter_rows(split, across))
    assert sql.side(split, sa.select(c.c.name)) == "n8"
    assert sql.side(split, sa.select(p.c.id)) == "gateway"


# -- custom reports ------------------------------------------------------------------------

CUSTOM = {
    "arrears": ARREARS,
    # gateway_payment in a measure, no condition on it: N8's payments first
    "late-by-channel": """\
        name = "late-by-channel"
        dimensions = ["payment.channel"]
        [[measures]]
        fn = "count"
        [[measures]]
        fn = "sum"
        column = "gateway_payment.late_fee"
        [[measures]]
        fn = "max"
        column = "gateway_payment.trade_date"
    """,
    # a gateway_payment dimension and condition: the gateway's rows first; sorted, limited
    "by-bank": """\
        name = "by-bank"
        dimensions = ["gateway_payment.bank", { column = "payment.pay_date", grain = "month" }]
        sort = ["-amount"]
        limit = 2
        [[measures]]
        fn = "sum"
        column = "payment.amount"
        name = "amount"
        [[filters]]
        column = "gateway_payment.status"
        op = "in"
        value = ["POSTED", "REVERSED"]
    """,
    "items": """\
        name = "items"
        dimensions = ["bill.fee_type", "gateway_payment.status"]
        [[measures]]
        fn = "sum"
        column = "payment_item.principal"
        [[measures]]
        fn = "count"
    """,
}


@pytest.mark.parametrize("name", sorted(CUSTOM))
def test_custom_reports_are_the_same(both, name):
    one, split = both
    for s in both:
        seed_custom(s)
    d = definition(CUSTOM[name])
    want = cr.run(d, one, date(2026, 11, 27))
    rows = list(want.rows)
    assert rows
    got = cr.run(d, split, date(2026, 11, 27))
    assert list(got.rows) == rows and got.totals == want.totals
    if split.n8_dialect == "sqlite":  # the copy made beside N8 is gone with the statement
        def run_and_look(tx):
            rows, _ = csql.run(tx, d.query(None))
            return rows, sa.inspect(tx.n8conn).get_temp_table_names()

        rows, temp = split.run_sync(run_and_look, readonly=True)
        assert rows and temp == []


# -- /healthz ------------------------------------------------------------------------------


def _health(store):
    r = get(HealthResource(HealthCheck(store, Clock())))
    return r.responseCode, json.loads(body(r))


def test_healthz_checks_n8s_database_apart(tmp_path):
    ok = synchronous(Store(f"sqlite:///{tmp_path / 'bg.db'}",
                           n8_url=f"sqlite:///{tmp_path / 'n8.db'}"))
    try:
        code, doc = _health(ok)
    finally:
        ok.stop()
    assert code == 200
    assert doc["checks"] == {"database": "ok", "n8 database": "ok"}
    # nothing listens on port 1: N8 is down, the gateway's database answers
    away = synchronous(Store(f"sqlite:///{tmp_path / 'bg.db'}",
                             n8_url="postgresql+psycopg://postgres@127.0.0.1:1/nowhere"))
    try:
        code, doc = _health(away)
    finally:
        away.stop()
    assert code == 503
    assert doc["checks"] == {"database": "ok", "n8 database": "fail"}
    [reason] = doc["reasons"]
    assert reason.startswith("n8 database: ") and "127.0.0.1" in reason


def test_healthz_of_one_database_has_no_n8_check(tmp_path):
    s = synchronous(Store(f"sqlite:///{tmp_path / 'bg.db'}"))
    try:
        code, doc = _health(s)
    finally:
        s.stop()
    assert code == 200 and doc["checks"] == {"database": "ok"}

