"""The reads that join the gateway's tables with N8's, with N8 in a database of its own.

Each test builds the same data twice -- once with N8 apart ([n8.database]: the pair
"GATEWAY+N8") and once with everything in one database of N8's kind -- and asserts
that every read gives exactly the same rows in the same order: the help desk, supply
status (work orders and both reports, valve states from N8 and from the gateway),
withholding batch files, invoices (N8's rows of the gateway's payments) and
reconciliation.  On PostgreSQL + MariaDB when both servers are here (skipped with the
reason otherwise), and on two SQLite files.
"""

from __future__ import annotations

from datetime import datetime

import pytest
from conftest import NOW, FakeClock, make_store
from helpdesk_helpers import build_day
from ledger_helpers import engine_of, pay
from supply_helpers import SEASON, seed_supply, world

from bankgate.canon.messages import Outcome
from bankgate.store import helpdesk as hd
from bankgate.store import invoices as isql
from bankgate.store import model
from bankgate.store import recon as rsql
from bankgate.store import supply as ssql
from bankgate.store import withholding as wsql

# the pair -> the one database the same data is read from for comparison
PAIRS = {"postgres+mariadb": "mariadb", "sqlite+sqlite": "sqlite"}


@pytest.fixture(params=list(PAIRS))
def pair(request):
    return request.param


def on_both(pair: str, tmp_path, build, read):
    """``read(store, build(store))`` on the split pair and on one database: the same."""
    out = []
    for kind in (pair, PAIRS[pair]):
        where = tmp_path / kind.replace("+", "_")
        where.mkdir()
        store = make_store(kind, where)
        try:
            assert store.split == ("+" in kind)
            out.append(read(store, build(store, where)))
        finally:
            if store.dialect != "sqlite" or store.n8_dialect != "sqlite":
                store.drop_all()
            store.stop()
    split, one = out
    assert split == one
    return split


def build(store, where):
    return build_day(store, FakeClock(), where)


def test_help_desk(pair, tmp_path):
    def read(store, day):
        run = store.run_sync
        out = {
            "found": run(hd.find_customers, "1000", 20, readonly=True),
            "cards": [run(hd.customer, no, readonly=True)
                      for no in ("100000123", "100000502", "999999999")],
            "bills": run(hd.bills, "100000123", 20, readonly=True),
            "payments": {no: run(hd.payments_of_customer, no, 50, readonly=True)
                         for no in ("100000123", "100000200", "100000502", "999999999")},
            "by_receipt": run(hd.payments_by_receipt, day.receipts["S002"], readonly=True),
            "by_serial": run(hd.payments_by_serial, "S001", None, None, 10, readonly=True),
        }
        out["allocations"] = [run(hd.allocations, p["id"], readonly=True)
                              for p in out["payments"]["100000123"]]
        return out

    got = on_both(pair, tmp_path, build, read)
    assert got["cards"][1]["prepaid"] == 5000 and got["cards"][2] is None
    names = {p["customer_name"] for ps in got["payments"].values() for p in ps}
    assert names == {"张三", "沈阳重型机械厂", "<script>alert(1)</script>"}
    assert [p["serial"] for p in got["payments"]["100000123"]] == ["S002", "S001"]
    assert got["allocations"][0] and all(a["fee_type"] for a in got["allocations"][0])
    assert [p["bank"] for p in got["by_serial"]] == ["partial", "fixed"]


def test_withholding_batch_lines_and_agreements(pair, tmp_path):
    def read(store, day):
        store.run_sync(wsql.agreement_set, "100000123", "103210", "6222020200012345678",
                       NOW, "clerk", "withholding-sign", {})
        batches = store.run_sync(wsql.batches, readonly=True)
        return {
            "lines": [store.run_sync(wsql.batch_lines, b["id"], readonly=True)
                      for b in batches],
            "agreements": store.run_sync(wsql.agreements, readonly=True),
            "candidates": store.run_sync(wsql.batch_candidates, "103210", readonly=True),
        }

    got = on_both(pair, tmp_path, build, read)
    assert [ls[0]["name"] for ls in got["lines"]] == ["沈阳重型机械厂"] * 2
    assert all(ls[0]["period"] == "2026-2027" for ls in got["lines"])
    assert [a["customer_no"] for a in got["agreements"]] == ["100000123", "100000200"]
    assert {c["customer_no"] for c in got["candidates"]} == {"100000200"}  # 123 paid all


def test_invoices_n8_rows_of_gateway_payments(pair, tmp_path):
    def read(store, day):
        t = store.n8["invoice"]
        with engine_of(store, t).begin() as c:
            c.execute(t.insert(), [
                # N8 gave one of the gateway's payments a number the gateway never used
                {"invoice_no": "ELSEWHERE1", "pay_id": day.receipts["S002"], "status": "I",
                 "amount": 548000, "issued_at": datetime(2026, 11, 27, 10, 0)},
                # N8's own payment: none of the gateway's business
                {"invoice_no": "ELSEWHERE2", "pay_id": "N8OWN", "status": "I", "amount": 1,
                 "issued_at": datetime(2026, 11, 27, 10, 0)},
            ])
        return (store.run_sync(isql.n8_rows_of_gateway_payments, readonly=True),
                sorted(str(d) for d in day.invoices.check()))

    rows, problems = on_both(pair, tmp_path, build, read)
    assert [r["invoice_no"] for r in rows] == ["ELSEWHERE1"]
    assert any("ELSEWHERE1" in p for p in problems)
    assert not any("ELSEWHERE2" in p for p in problems)


def test_recon_customers_with_open_bills(pair, tmp_path):
    def read(store, day):
        return store.run_sync(rsql.customers_with_open_bills, ["100000200"], 5, readonly=True)

    got = on_both(pair, tmp_path, build, read)
    assert got and "100000200" not in got and got == sorted(got)


@pytest.mark.parametrize("source", ["n8", "gateway"])
def test_supply_orders_and_reports(pair, source, tmp_path):
    def make(store, where):
        seed_supply(store, source)
        w = world(store, source)
        # 200000001 pays its heating bill in full: an open-valve order for a closed valve
        r = w.ledger.pay(pay("S1", "200000001", 100000, bank="fixed", bill_ids=("H1",)))
        assert r.outcome is Outcome.OK, r
        # 200000002 pays one of its two heating bills: not settled yet
        r = w.ledger.pay(pay("S2", "200000002", 60000, bank="fixed", bill_ids=("H2A",)))
        assert r.outcome is Outcome.OK, r
        return r

    def read(store, last):
        run = store.run_sync

        def listed(fn, *args, **kw):
            return run(lambda tx: list(fn(tx, *args, **kw)), readonly=True)

        reports = {}
        for share in (10000, 6000):
            reports[share] = (
                run(ssql.supplied_unpaid, source, SEASON, "01", share, readonly=True),
                run(ssql.paid_closed, source, SEASON, "01", share, readonly=True),
                *[listed(ssql.households, source, SEASON, "01", share, which, district)
                  for which in ("supplied-unpaid", "paid-closed")
                  for district in (None, "和平区", "沈河区")])
        pid = run(lambda tx: tx.conn.execute(
            model.payment.select().where(model.payment.c.serial == "S2")).first().id)
        return {
            "reports": reports,
            "orders": [listed(ssql.order_list, **kw) for kw in (
                {}, {"limit": 1}, {"district": "和平区"}, {"district": "沈河区"},
                {"district": "和平区", "limit": 1, "state": "open"})],
            "season": [run(ssql.season_state, src, no, SEASON, "01", orders)
                       for src in (source, None) for no in ("200000001", "200000002")
                       for orders in (True, False)],
            "receipt": [run(ssql.settling_receipt, no, SEASON, "01")
                        for no in ("200000001", "200000002", "200000003")],
            "paid_seasons": run(ssql.paid_seasons, pid, "01"),
            "valve": [run(ssql.valve_state, source, no, SEASON)
                      for no in ("200000004", "200000002")],
        }

    got = on_both(pair, tmp_path, make, read)
    unpaid, closed, *_ = got["reports"][10000]
    assert unpaid == [("沈河区", 2, 200000, 70000, 130000)]
    assert [r[0] for r in closed] == ["和平区", "沈河区"] and closed[0][2] == 1
    assert [o[1] for o in got["orders"][0]] == ["200000001"]
    assert got["orders"][2][0][2:5] == ("户1", "和平区", "和平区1号")
    assert got["orders"][3] == [] and got["orders"][4] == got["orders"][2]
    assert got["season"][0] == (100000, 100000, "closed", 1)
    assert got["receipt"][0] and got["receipt"][2] is None
    assert got["paid_seasons"] == [SEASON] and got["valve"] == ["open", "closed"]
