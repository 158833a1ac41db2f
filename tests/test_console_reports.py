"""The reports and work-order pages (bankgate.app.console.reports, .workorders) on the
console's site, requests through the guard (DummyRequest); the store's pool calls run
at once (console_helpers.synchronous).  The figures are the help desk's hand-built day
(helpdesk_helpers.build_day) and the supply world (supply_helpers)."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime

import pytest
import sqlalchemy as sa
from conftest import TODAY, FakeClock, make_store
from console_helpers import synchronous
from helpdesk_helpers import build_day
from ledger_helpers import pay
from supply_helpers import all_orders, seed_supply, world
from test_console_helpdesk import html, request
from twisted.internet.task import Clock

from bankgate.app.console import auth, reports, workorders
from bankgate.app.console.server import Console
from bankgate.canon.messages import Outcome
from bankgate.store import model

DAY = {"name": "collections", "from": TODAY.isoformat(), "to": TODAY.isoformat(),
       "by": "bank"}


def account(name: str, role: str) -> auth.Account:
    return auth.Account(name, role, datetime(2026, 1, 1), False)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """One SQLite day (the pages only read it)."""
    tmp = tmp_path_factory.mktemp("reports")
    store = make_store("sqlite", tmp)
    build_day(store, FakeClock(), tmp)
    synchronous(store)
    console = Console(None, Clock(), run_blocking=store.call, wall=datetime.fromtimestamp)
    reports.mount(console, store, ["fixed", "partial", "any", "overpay", "twophase"],
                  lambda: TODAY)
    viewer = console.sessions.create(account("vera", "viewer"))
    yield console, viewer
    store.stop()


def cells(page: str, tag: str = "tbody") -> list[list[str]]:
    part = page.split(f"<{tag}>", 1)[1].split(f"</{tag}>", 1)[0]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
            for row in re.findall(r"<tr>(.*?)</tr>", part, re.S)]


def test_the_form_alone(site):
    console, viewer = site
    req = request(console, "/reports", session=viewer)
    page = html(req)
    assert req.responseCode in (None, 200)
    assert 'value="collections"' in page and 'value="withholding"' in page
    assert "<table" not in page


def test_collections_by_bank_with_known_figures(site):
    console, viewer = site
    req = request(console, "/reports", DAY, session=viewer)
    page = html(req)
    assert req.responseCode in (None, 200), page
    rows = {r[0]: r for r in cells(page)}
    # count, amount, principal, late fee, prepaid, reversed n/amount, refunded n/amount, net
    assert rows["fixed"][1:3] == ["2", "10960.00"]  # S001 (reversed) and S002
    assert rows["fixed"][6:8] == ["1", "5480.00"] and rows["fixed"][-1] == "5480.00"
    assert rows["any"][1:3] == ["1", "100.00"] and rows["any"][8:10] == ["1", "100.00"]
    assert rows["partial"][1:3] == ["1", "4000.00"]
    assert rows["overpay"][1:3] == ["1", "150.00"]
    assert "twophase" not in rows  # pending two-phase payments are left out
    [totals] = cells(page, "tfoot")
    assert totals[:3] == ["合计 total", "5", "15210.00"]
    assert "two-phase payments never confirmed" in page  # the notes
    assert "/reports/export?name=collections&amp;from=2026-11-27" in page
    assert "format=xlsx" in page


def test_csv_export(site):
    console, viewer = site
    req = request(console, "/reports/export", {**DAY, "format": "csv"}, session=viewer)
    assert req.responseCode in (None, 200)
    assert req.responseHeaders.getRawHeaders(b"content-type") == [b"text/csv; charset=utf-8"]
    [disp] = req.responseHeaders.getRawHeaders(b"content-disposition")
    assert disp == b'attachment; filename="collections_20261127_20261127.csv"'
    rows = list(csv.reader(io.StringIO(html(req))))
    assert rows[0][:3] == ["bank", "count", "amount"]
    by_bank = {r[0]: r for r in rows[1:]}
    assert set(by_bank) == {"any", "fixed", "overpay", "partial"}
    assert by_bank["fixed"][1:3] == ["2", "10960.00"]


def test_json_and_xlsx_exports_are_sent_whole_and_deleted(site, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    console, viewer = site
    req = request(console, "/reports/export", {**DAY, "format": "json"}, session=viewer)
    doc = json.loads(html(req))
    assert doc["totals"]["amount"] == 1521000 and len(doc["rows"]) == 4
    req = request(console, "/reports/export", {**DAY, "format": "xlsx"}, session=viewer)
    assert b"".join(req.written)[:2] == b"PK"  # a zip: the workbook
    assert list(tmp_path.iterdir()) == []  # the temporary files are gone


@pytest.mark.parametrize("path", ["/reports", "/reports/export"])
def test_a_bad_range_is_400_with_the_message(site, path):
    console, viewer = site
    req = request(console, path, {**DAY, "from": "2026-12-01", "to": "2026-11-01"},
                  session=viewer)
    assert req.responseCode == 400
    assert "--from 2026-12-01 is after --to 2026-11-01" in html(req)


def test_bad_fields_are_named_and_escaped(site):
    console, viewer = site
    req = request(console, "/reports", {**DAY, "bank": "<b>x</b>"}, session=viewer)
    assert req.responseCode == 400
    page = html(req)
    assert "not a configured bank" in page and "<b>x</b>" not in page
    req = request(console, "/reports", {**DAY, "from": "27.11.2026"}, session=viewer)
    assert req.responseCode == 400 and "from: expected a date" in html(req)
    req = request(console, "/reports", {**DAY, "name": "nope"}, session=viewer)
    assert req.responseCode == 400 and "no report &#39;nope&#39;" in html(req)
    req = request(console, "/reports/export", {**DAY, "format": "exe"}, session=viewer)
    assert req.responseCode == 400 and "format" in html(req)


def test_reports_need_sign_in(site):
    console, _ = site
    req = request(console, "/reports/export", {**DAY, "format": "csv"})
    assert req.responseCode == 303 and b"text/csv" not in b"".join(
        req.responseHeaders.getRawHeaders(b"content-type") or [])


# -- work orders ---------------------------------------------------------------------


@pytest.fixture
def orders(tmp_path):
    """The supply world with one open order (200000001 paid its heating fee)."""
    store = make_store("sqlite", tmp_path)
    seed_supply(store, "gateway")
    w = world(store, source="gateway")
    r = w.ledger.pay(pay("S1", "200000001", 100000, bank="fixed", bill_ids=("H1",)))
    assert r.outcome is Outcome.OK, r
    synchronous(store)
    console = Console(None, Clock(), run_blocking=store.call, wall=datetime.fromtimestamp)
    workorders.mount(console, w.orders)
    yield console, store
    store.stop()


def audited(store) -> list[dict]:
    with store.engine.connect() as c:
        return [dict(r) for r in c.execute(
            sa.select(model.audit).where(model.audit.c.action == "workorder-done")).mappings()]


def test_a_viewer_sees_the_orders_without_forms(orders):
    console, store = orders
    viewer = console.sessions.create(account("vera", "viewer"))
    (o,) = all_orders(store)
    page = html(request(console, "/workorders", session=viewer))
    assert "200000001" in page and "open_valve" in page
    assert "/workorders/done" not in page
    page = html(request(console, "/workorders", {"state": "done"}, session=viewer))
    assert "200000001" not in page and "No work orders match." in page
    req = request(console, "/workorders", {"state": "bogus"}, session=viewer)
    assert req.responseCode == 400


def test_a_viewer_cannot_mark_an_order_done(orders):
    console, store = orders
    viewer = console.sessions.create(account("vera", "viewer"))
    (o,) = all_orders(store)
    req = request(console, "/workorders/done", {"id": str(o["id"]), "note": "opened"},
                  session=viewer, method=b"POST", csrf=viewer.csrf)
    assert req.responseCode == 403
    assert all_orders(store)[0]["state"] == "open" and audited(store) == []


def test_an_operator_needs_the_csrf_token_then_marks_it_done(orders):
    console, store = orders
    op = console.sessions.create(account("olga", "operator"))
    (o,) = all_orders(store)
    page = html(request(console, "/workorders", session=op))
    assert "/workorders/done" in page and f'value="{op.csrf}"' in page
    form = {"id": str(o["id"]), "note": "valve opened, seal 0815",
            "back": "/workorders?state=open"}
    req = request(console, "/workorders/done", form, session=op, method=b"POST")
    assert req.responseCode == 403
    req = request(console, "/workorders/done", form, session=op, method=b"POST",
                  csrf="not-the-token")
    assert req.responseCode == 403
    assert all_orders(store)[0]["state"] == "open" and audited(store) == []

    req = request(console, "/workorders/done", {**form, "note": "  "}, session=op,
                  method=b"POST", csrf=op.csrf)
    assert req.responseCode == 400 and "with a note" in html(req)
    assert all_orders(store)[0]["state"] == "open"

    req = request(console, "/workorders/done", form, session=op, method=b"POST",
                  csrf=op.csrf)
    assert req.responseCode == 303
    assert req.responseHeaders.getRawHeaders(b"location") == [b"/workorders?state=open"]
    (done,) = all_orders(store)
    assert (done["state"], done["done_by"]) == ("done", "olga")
    (a,) = audited(store)
    assert (a["actor"], a["subject"]) == ("olga", str(o["id"]))
    assert "valve opened, seal 0815" in a["detail"]

    req = request(console, "/workorders/done", form, session=op, method=b"POST",
                  csrf=op.csrf)
    assert req.responseCode == 400 and "only an open order" in html(req)
    assert len(audited(store)) == 1
