"""Supply status (开栓/停栓): the rule, the work-order life cycle through the ledger's
hook, the operator's actions and the two reports, on SQLite (plain, under a renamed
N8 mapping, and with N8 in a SQLite database of its own) and PostgreSQL, with valve
states from N8 or the gateway."""

from __future__ import annotations

import argparse
from datetime import timedelta

import pytest
from conftest import NOW, make_store
from ledger_helpers import clear, origin, pay, rev
from supply_helpers import SEASON, all_orders, seed_supply, valve_states, world

from bankgate.canon import messages as m
from bankgate.canon.messages import Outcome
from bankgate.domain.supply import SupplyError, SupplySettings, season_of
from bankgate.store import model

BACKENDS = ["sqlite", "sqlite-renamed", "postgres", "sqlite+sqlite"]


@pytest.fixture(scope="module", params=BACKENDS)
def backend_store(request, tmp_path_factory):
    store = make_store(request.param, tmp_path_factory.mktemp(request.param))
    yield store
    if store.dialect != "sqlite":
        store.drop_all()
    store.stop()


@pytest.fixture(params=["n8", "gateway"])
def source(request):
    return request.param


@pytest.fixture
def store(backend_store, source):
    clear(backend_store)
    seed_supply(backend_store, source)
    return backend_store


def open_orders(store, kind="open_valve"):
    return [o for o in all_orders(store) if o["state"] == "open" and o["kind"] == kind]


def paid(w, serial, customer="200000001", amount=100000, bank="fixed", bill_ids=("H1",)):
    r = w.ledger.pay(pay(serial, customer, amount, bank=bank, bill_ids=bill_ids))
    assert r.outcome is Outcome.OK, r
    return r


# -- the rule -----------------------------------------------------------------------------


def test_the_rule_in_plain_numbers():
    full, share = SupplySettings(), SupplySettings(rule="share", share=0.6)
    assert full.settled(100000, 100000) and not full.settled(100000, 99999)
    assert share.settled(100000, 60000) and not share.settled(100000, 59999)
    assert not full.settled(0, 0) and not share.settled(0, 0)  # nothing billed: not paid
    assert season_of(NOW.date()) == "2026-2027"
    assert season_of(NOW.date().replace(year=2027, month=3)) == "2026-2027"
    assert season_of(NOW.date().replace(month=7)) == "2026-2027"


def test_paying_the_season_in_full_creates_one_open_valve_order(store, source):
    w = world(store, source)
    r = paid(w, "S1")
    (o,) = all_orders(store)
    assert (o["customer_no"], o["season"], o["kind"], o["state"], o["receipt_no"]) == (
        "200000001", SEASON, "open_valve", "open", r.receipt_no)
    assert o["created_at"] == NOW and "open the valve" in o["note"]
    # the property bill paid too: no second order
    paid(w, "S2", amount=5000, bill_ids=("H1P",))
    assert len(all_orders(store)) == 1


def test_part_payments_under_full_make_an_order_only_when_the_last_part_is_paid(store, source):
    w = world(store, source)
    paid(w, "S1", "200000002", 60000, bill_ids=("H2A",))
    assert all_orders(store) == []
    r = paid(w, "S2", "200000002", 40000, bill_ids=("H2B",))
    (o,) = all_orders(store)
    assert o["receipt_no"] == r.receipt_no and o["state"] == "open"


def test_share_rule_orders_at_the_share_and_only_once(store, source):
    w = world(store, source, rule="share", share=0.6)
    r1 = paid(w, "S1", "200000002", 59999, bank="partial", bill_ids=())
    assert all_orders(store) == []  # 59.999% of the season: not yet
    r2 = paid(w, "S2", "200000002", 1, bank="partial", bill_ids=())
    (o,) = all_orders(store)
    assert o["receipt_no"] == r2.receipt_no != r1.receipt_no
    paid(w, "S3", "200000002", 40000, bank="partial", bill_ids=())
    assert len(all_orders(store)) == 1  # an open order stands: no second


def test_no_order_when_the_valve_is_already_open(store, source):
    w = world(store, source)
    paid(w, "S1", "200000004", 100000, bill_ids=("H4",))
    assert all_orders(store) == []


def test_a_payment_without_heating_principal_makes_no_order(store, source):
    w = world(store, source)
    paid(w, "S1", amount=5000, bill_ids=("H1P",))
    paid(w, "S2", "200000007", 80000, bill_ids=("H7",))  # last season's, valve open anyway
    assert all_orders(store) == []


# -- undo: reversal, refund, expiry, cancel -----------------------------------------------


def test_reversal_before_the_work_is_done_cancels_the_order(store, source):
    w = world(store, source)
    paid(w, "S1")
    assert w.ledger.reverse(rev("R1", "S1", "200000001", 100000)).outcome is Outcome.OK
    (o,) = all_orders(store)
    assert o["state"] == "cancelled" and o["done_by"] == "system" and o["done_at"] == NOW
    assert "reversed" in o["note"]
    # a retried reversal changes nothing
    assert w.ledger.reverse(rev("R1", "S1", "200000001", 100000)).retry
    assert [x["state"] for x in all_orders(store)] == ["cancelled"]
    # paid again: a new order for the new payment
    r2 = paid(w, "S2")
    assert [(x["state"], x["receipt_no"]) for x in all_orders(store)] == [
        ("cancelled", all_orders(store)[0]["receipt_no"]), ("open", r2.receipt_no)]


def test_reversal_after_the_work_is_done_creates_a_review_order(store, source):
    w = world(store, source)
    r = paid(w, "S1")
    (o,) = all_orders(store)
    w.clock.now = NOW + timedelta(hours=2)
    done = w.orders.done(o["id"], "valve opened", "zhao")
    assert (done["state"], done["done_by"], done["done_at"]) == ("done", "zhao", w.clock.now)
    if source == "gateway":
        assert valve_states(store, source)["200000001"] == "open"
    assert w.ledger.reverse(rev("R1", "S1", "200000001", 100000)).outcome is Outcome.OK
    first, review = all_orders(store)
    assert first["state"] == "done"
    assert (review["kind"], review["state"], review["receipt_no"]) == (
        "review", "open", r.receipt_no)
    assert "reversed" in review["note"] and str(first["id"]) in review["note"]


def test_refund_before_done_cancels(store, source):
    w = world(store, source)
    r = paid(w, "S1")
    assert w.ledger.refund(r.receipt_no, "moved out", "wang").outcome is Outcome.OK
    (o,) = all_orders(store)
    assert o["state"] == "cancelled" and "refunded" in o["note"]


def test_expiry_of_a_two_phase_payment_cancels(store, source):
    w = world(store, source)
    r = paid(w, "T1", bank="twophase")
    assert open_orders(store)[0]["receipt_no"] == r.receipt_no  # ordered at the prepay
    w.clock.now = NOW + timedelta(seconds=61)
    assert w.ledger.expire_pending() == 1
    (o,) = all_orders(store)
    assert o["state"] == "cancelled" and "expired" in o["note"]


def test_two_phase_cancel_cancels_and_confirm_keeps(store, source):
    w = world(store, source)
    paid(w, "T1", bank="twophase")
    c = w.ledger.cancel(m.CancelRequest(origin("twophase"), "T1", NOW.date(), serial="C1"))
    assert c.outcome is Outcome.OK, c
    (o,) = all_orders(store)
    assert o["state"] == "cancelled" and "cancelled by the bank" in o["note"]
    paid(w, "T2", bank="twophase")
    c = w.ledger.confirm(m.ConfirmRequest(origin("twophase"), "T2", NOW.date(), serial="C2"))
    assert c.outcome is Outcome.OK
    assert [x["state"] for x in all_orders(store)] == ["cancelled", "open"]


def test_an_order_passes_to_the_payment_that_still_settles_the_season(store, source):
    w = world(store, source, rule="share", share=0.6)
    r1 = paid(w, "S1", "200000002", 60000, bank="partial", bill_ids=())
    r2 = paid(w, "S2", "200000002", 40000, bank="partial", bill_ids=())
    assert [o["receipt_no"] for o in open_orders(store)] == [r1.receipt_no]
    # S1 reversed: S2 alone is 40% -- not settled: no open order
    assert w.ledger.reverse(rev("R1", "S1", "200000002", 60000, bank="partial")).outcome \
        is Outcome.OK
    assert open_orders(store) == []
    # paid again: S3 60% + S2 40%; reverse S2: S3 still settles, its order stays
    r3 = paid(w, "S3", "200000002", 60000, bank="partial", bill_ids=())
    assert [o["receipt_no"] for o in open_orders(store)] == [r3.receipt_no]
    assert w.ledger.reverse(rev("R2", "S2", "200000002", 40000, bank="partial")).outcome \
        is Outcome.OK
    assert [o["receipt_no"] for o in open_orders(store)] == [r3.receipt_no]
    assert r2.receipt_no not in {o["receipt_no"] for o in open_orders(store)}


def test_undo_of_another_payment_that_unsettles_the_season_cancels_the_order(store, source):
    w = world(store, source)
    paid(w, "S1", "200000002", 60000, bill_ids=("H2A",))
    r2 = paid(w, "S2", "200000002", 40000, bill_ids=("H2B",))
    assert [o["receipt_no"] for o in open_orders(store)] == [r2.receipt_no]
    assert w.ledger.reverse(rev("R1", "S1", "200000002", 60000)).outcome is Outcome.OK
    (o,) = all_orders(store)
    assert o["state"] == "cancelled" and "no longer paid in full" in o["note"]


def test_a_retried_payment_makes_no_second_order(store, source):
    w = world(store, source)
    paid(w, "S1")
    again = w.ledger.pay(pay("S1", "200000001", 100000, bill_ids=("H1",)))
    assert again.retry and len(all_orders(store)) == 1


# -- the operator's side ------------------------------------------------------------------


def test_done_is_refused_twice_without_a_note_and_for_unknown_orders(store, source):
    w = world(store, source)
    paid(w, "S1")
    (o,) = all_orders(store)
    with pytest.raises(SupplyError, match="with a note"):
        w.orders.done(o["id"], "  ", "zhao")
    with pytest.raises(SupplyError, match="no work order 999"):
        w.orders.done(999, "x", "zhao")
    w.orders.done(o["id"], "opened", "zhao")
    with pytest.raises(SupplyError, match=f"work order {o['id']} is done"):
        w.orders.done(o["id"], "again", "li")
    assert all_orders(store)[0]["done_by"] == "zhao"


def test_supply_set_only_where_the_gateway_keeps_valves(store, source):
    w = world(store, source)
    if source == "n8":
        with pytest.raises(SupplyError, match="valve states are N8's"):
            w.orders.set_valve("200000002", SEASON, "open", "zhao")
        return
    assert w.orders.set_valve("200000002", SEASON, "open", "zhao") == "closed"
    assert w.orders.set_valve("200000002", SEASON, "closed", "zhao") == "open"
    assert valve_states(store, source)["200000002"] == "closed"
    with pytest.raises(SupplyError, match="no customer"):
        w.orders.set_valve("999", SEASON, "open", "zhao")
    with pytest.raises(SupplyError, match="season"):
        w.orders.set_valve("200000002", "x y", "open", "zhao")


def test_list_filters_by_state_district_and_season(store, source):
    w = world(store, source)
    paid(w, "S1")
    paid(w, "S2", "200000002", 100000, bill_ids=("H2A", "H2B"))
    assert [o["customer_no"] for o in w.orders.list()] == ["200000002", "200000001"]
    assert [o["customer_no"] for o in w.orders.list(district="和平区")] == [
        "200000002", "200000001"]
    assert w.orders.list(district="沈河区") == [] and w.orders.list(season="2025-2026") == []
    first = w.orders.list()[0]
    assert first["name"] == "户2" and first["district"] == "和平区"
    w.orders.done(first["id"], "opened", "zhao")
    assert [o["customer_no"] for o in w.orders.list(state="done")] == ["200000002"]
    with pytest.raises(SupplyError, match="state 'bogus'"):
        w.orders.list(state="bogus")


# -- the reports ----------------------------------------------------------------------------


def test_reports_by_district_full_rule(store, source):
    w = world(store, source)
    leak = w.orders.supplied_unpaid(SEASON)
    assert leak.name == "supplied-unpaid" and leak.params["season"] == SEASON
    # 200000004 (0 of 100000) and 200000005 (70000 of 100000), both 沈河区, valves open
    assert list(leak.rows) == [("沈河区", 2, 200000, 70000, 130000)]
    assert leak.totals == ("合计 total", 2, 200000, 70000, 130000)
    closed = w.orders.paid_closed(SEASON)
    # 200000003 paid in N8, closed, no order
    assert list(closed.rows) == [("沈河区", 1, 0, 1, 100000)]
    # 200000001 pays: an open order, closed valve: a complaint being handled
    paid(w, "S1")
    assert list(w.orders.paid_closed(SEASON).rows) == [
        ("和平区", 1, 1, 0, 100000), ("沈河区", 1, 0, 1, 100000)]
    detail = w.orders.paid_closed(SEASON, detail=True)
    assert [r[0] for r in detail.rows] == ["200000001", "200000003"]
    assert w.orders.supplied_unpaid(SEASON, district="和平区").rows == []
    # the leak closes as 200000004 pays
    paid(w, "S2", "200000004", 100000, bill_ids=("H4",))
    assert list(w.orders.supplied_unpaid(SEASON).rows) == [("沈河区", 1, 100000, 70000, 30000)]


def test_reports_share_rule_and_an_empty_season(store, source):
    w = world(store, source, rule="share", share=0.6)
    assert list(w.orders.supplied_unpaid(SEASON).rows) == [("沈河区", 1, 100000, 0, 100000)]
    assert list(w.orders.paid_closed(SEASON).rows) == [("沈河区", 1, 0, 1, 100000)]
    empty = w.orders.supplied_unpaid("2030-2031")
    assert list(empty.rows) == [] and empty.totals is None
    assert any(n.startswith("empty") for n in empty.notes)
    assert [c.name for c in empty.columns] == [
        "district", "households", "billed", "paid", "outstanding"]


# -- the command line -----------------------------------------------------------------------


@pytest.fixture
def cli(store, source):
    from bankgate.app.cli.workorders import add_cli

    w = world(store, source)

    class Cfg:
        supply = w.settings

    p = argparse.ArgumentParser(prog="bankgate")
    p.add_argument("--config", "-c", default=None)
    sub = p.add_subparsers(dest="command", required=True)
    add_cli(sub, lambda path: Cfg, lambda cfg: w.ledger)

    def run(*argv):
        args = p.parse_args(["-c", "bg.toml", *argv])
        return args.func(args)

    return run, w


def test_cli_list_done_audited(cli, capsys, store):
    run, w = cli
    paid(w, "S1")
    (o,) = all_orders(store)
    assert run("workorders", "list") == 0
    out = capsys.readouterr().out
    assert "200000001" in out and "open_valve" in out and "1 work order" in out
    assert run("workorders", "done", str(o["id"]), "--note", "valve opened",
               "--actor", "zhao") == 0
    assert f"work order {o['id']} (open_valve, 200000001, {SEASON}): done" in \
        capsys.readouterr().out
    import sqlalchemy as sa
    with store.engine.connect() as c:
        a = c.execute(sa.select(model.audit).where(model.audit.c.action == "workorder-done")
                      ).mappings().one()
    assert (a["actor"], a["subject"]) == ("zhao", str(o["id"])) and "valve opened" in a["detail"]
    assert run("workorders", "done", str(o["id"]), "--note", "again", "--actor", "li") == 1
    assert "is done" in capsys.readouterr().err
    assert run("workorders", "list", "--state", "done") == 0
    assert "done 2026-11-27 09:30 by zhao" in capsys.readouterr().out


def test_cli_supply_set(cli, capsys, source):
    run, w = cli
    rc = run("supply", "set", "200000002", "--season", SEASON, "open", "--actor", "zhao")
    if source == "n8":
        assert rc == 1 and "N8's" in capsys.readouterr().err
    else:
        assert rc == 0 and "valve open (was closed)" in capsys.readouterr().out


def test_cli_export_csv_and_xlsx(cli, capsys, tmp_path):
    run, w = cli
    paid(w, "S1")
    assert run("workorders", "export", "--format", "csv") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("id,customer_no,name,district")
    assert "200000001" in lines[1] and "open_valve" in lines[1]
    out = tmp_path / "orders.xlsx"
    assert run("workorders", "export", "--format", "xlsx", "--out", str(out)) == 0
    assert f"{out}: 1 work orders" in capsys.readouterr().out
    import openpyxl
    ws = openpyxl.load_workbook(out, read_only=True).active
    assert any("200000001" in [str(c) for c in row] for row in ws.iter_rows(values_only=True))
    assert run("workorders", "export", "--format", "xlsx") == 1
    assert "needs --out" in capsys.readouterr().err


def test_the_catalogue_runs_both_reports_by_district_and_by_customer(store, source):
    from datetime import date, datetime

    from bankgate.app.report_catalogue import FieldError, SupplyEntry

    w = world(store, source)
    now = lambda: datetime(2027, 1, 15, 9, 0)  # noqa: E731
    run = SupplyEntry("supplied-unpaid", w.settings, now).run
    t = run(store, {"from": None, "to": date(2027, 1, 15), "bank": None, "by": None})
    assert t.params["season"] == SEASON and list(t.rows) == [("沈河区", 2, 200000, 70000, 130000)]
    t = SupplyEntry("paid-closed", w.settings, now).run(
        store, {"to": date(2026, 12, 1), "by": "customer"})
    assert [r[0] for r in t.rows] == ["200000003"]
    with pytest.raises(FieldError, match="not per bank"):
        run(store, {"to": date(2027, 1, 15), "bank": "fixed"})
    with pytest.raises(FieldError, match="--by 'bank'"):
        run(store, {"to": date(2027, 1, 15), "by": "bank"})


# -- the demo data ------------------------------------------------------------------------


def test_demo_seeds_valve_states_and_leaves_the_open_bills_as_they_were(tmp_path):
    from datetime import date, datetime

    import sqlalchemy as sa

    from bankgate.devtools import demo
    from bankgate.domain.supply import WorkOrders

    today = date(2026, 11, 27)
    plain, with_supply = make_store("sqlite", tmp_path / "a"), make_store("sqlite", tmp_path / "b")
    try:
        s1 = demo.seed(plain, 400, seed=3, today=today)
        s2 = demo.seed(with_supply, 400, seed=3, today=today, supply=True)
        assert s2["supply_season"] == SEASON and s1["bills"] == s2["bills"]

        def open_bills(store):
            b = store.n8["bill"]
            with store.n8_engine.connect() as c:
                return c.execute(sa.select(b.c.bill_id, b.c.amount, b.c.paid_amount)
                                 .where(b.c.paid_amount < b.c.amount).order_by(b.c.bill_id)
                                 ).all()

        assert open_bills(plain) == open_bills(with_supply)  # the same customers and bills
        valves = valve_states(with_supply, "n8")
        assert len(valves) == s2["valves_open"] + s2["valves_closed"]
        assert s2["leak"] > 0 and s2["complaints"] > 0 and s2["paid_heating_bills"] > 0
        assert s2["valves_open"] > s2["leak"]  # most paid households are open
        orders = WorkOrders(with_supply, SupplySettings(), lambda: datetime(2026, 11, 27))
        assert orders.supplied_unpaid().totals[1] == s2["leak"]
        assert orders.paid_closed().totals[1] == s2["complaints"]
        # --replace takes the valve states too
        s3 = demo.seed(with_supply, 50, seed=3, today=today, supply=True, replace=True)
        assert len(valve_states(with_supply, "n8")) == s3["valves_open"] + s3["valves_closed"]
    finally:
        plain.stop()
        with_supply.stop()
