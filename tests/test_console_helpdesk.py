"""The help desk pages (bankgate.app.console.helpdesk) mounted on the console's site,
requests made with DummyRequest through the site's guard; the store's pool calls run
at once (console_helpers.synchronous)."""

from __future__ import annotations

import re
from datetime import datetime

import pytest
from conftest import FakeClock, make_store
from console_helpers import synchronous
from helpdesk_helpers import ADDRESS_HTML, SCRIPT, build_day
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web.error import UnsupportedMethod
from twisted.web.resource import getChildForRequest
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from bankgate.app.console import auth, helpdesk
from bankgate.app.console.server import Console
from bankgate.store.db import StoreUnavailable


@pytest.fixture(scope="module")
def desk(tmp_path_factory):
    """One SQLite day for every page test (the pages only read)."""
    tmp = tmp_path_factory.mktemp("desk")
    store = make_store("sqlite", tmp)
    day = build_day(store, FakeClock(), tmp)
    synchronous(store)
    console = Console(None, Clock(), run_blocking=store.call, wall=datetime.fromtimestamp)
    helpdesk.mount(console, store, lambda: datetime(2026, 11, 27).date())
    viewer = console.sessions.create(auth.Account("vera", "viewer", datetime(2026, 1, 1),
                                                  False))
    yield console, day, viewer
    store.stop()


def request(console, path: str, args: dict | None = None, *, session=None,
            method: bytes = b"GET", csrf: str | None = None) -> DummyRequest:
    segments = [s.encode() for s in path.strip("/").split("/")]
    req = DummyRequest(segments)
    req.method = method
    req.path = path.encode()
    req.args = {k.encode(): [v.encode()] for k, v in (args or {}).items()}
    if csrf is not None:
        req.args[b"csrf"] = [csrf.encode()]
    cookies = {b"bg_session": session.id.encode()} if session is not None else {}
    req.getCookie = cookies.get  # DummyRequest has no cookies
    page = getChildForRequest(console, req)
    body = page.render(req)
    if body is not NOT_DONE_YET:
        req.write(body)
        req.finish()
    assert req.finished, "the page did not answer"
    return req


def html(req) -> str:
    return b"".join(req.written).decode("utf-8")


def test_a_script_name_is_escaped_on_the_customer_page(desk):
    console, _, viewer = desk
    req = request(console, "/helpdesk/customer", {"no": "100000502"}, session=viewer)
    page = html(req)
    assert req.responseCode in (None, 200)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert SCRIPT not in page and "<script" not in page
    assert "&lt;img src=x onerror=&#34;alert(2)&#34;&gt;" in page
    assert ADDRESS_HTML not in page
    assert "50.00" in page  # the 5,000 fen kept as prepaid balance


def test_a_script_name_is_escaped_in_the_search_results(desk):
    console, _, viewer = desk
    page = html(request(console, "/helpdesk", {"q": "<script>"}, session=viewer))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script" not in page
    assert "/helpdesk/customer?no=100000502" in page
    # the query itself is shown back, escaped
    assert "value=\"&lt;script&gt;\"" in page


def test_customer_search_matches_wildcards_literally(desk):
    console, _, viewer = desk
    page = html(request(console, "/helpdesk", {"q": "%"}, session=viewer))
    assert re.findall(r"customer\?no=(\d+)", page) == ["100000500"]


def test_customer_card_lists_payments_undo_withholding_and_invoices(desk):
    console, day, viewer = desk
    page = html(request(console, "/helpdesk/customer", {"no": "100000123"}, session=viewer))
    assert day.receipts["S001"] in page and day.receipts["S002"] in page
    assert "reversed by the bank" in page and "R001" in page
    assert "00000001" in page and "VOID" in page and "5480.00" in page
    page = html(request(console, "/helpdesk/customer", {"no": "100000200"}, session=viewer))
    assert "622202*********0123" in page and "6222021234567890123" not in page
    assert "insufficient funds" in page


def test_payment_search_by_serial_and_the_payment_page(desk):
    console, day, viewer = desk
    page = html(request(console, "/helpdesk", {"serial": "S001"}, session=viewer))
    ids = re.findall(r"payment\?id=(\d+)", page)
    assert len(ids) == 2 and "partial" in page and "fixed" in page
    page = html(request(console, "/helpdesk", {"receipt": day.receipts["A001"]},
                        session=viewer))
    [pid] = re.findall(r"payment\?id=(\d+)", page)
    page = html(request(console, "/helpdesk/payment", {"id": pid}, session=viewer))
    assert "REFUNDED" in page and "by alice" in page and "paid twice" in page
    assert "E100000500" in page  # the bill it paid


def test_a_bad_field_is_answered_next_to_it(desk):
    console, _, viewer = desk
    req = request(console, "/helpdesk", {"serial": "S001", "date": "27.11.2026"},
                  session=viewer)
    assert req.responseCode == 400
    assert re.search(r'id="date"[^>]*>\s*<span class="error"[^>]*>expected a date',
                     html(req))
    req = request(console, "/helpdesk", {"receipt": "1", "invoice": "2"}, session=viewer)
    assert req.responseCode == 400 and "exactly one of" in html(req)
    req = request(console, "/helpdesk", {"q": "x" * 101}, session=viewer)
    assert req.responseCode == 400 and "at most 100" in html(req)


def test_unknown_and_malformed(desk):
    console, _, viewer = desk
    assert request(console, "/helpdesk/customer", {"no": "999"},
                   session=viewer).responseCode == 404
    assert request(console, "/helpdesk/payment", {"id": "12x"},
                   session=viewer).responseCode == 400
    assert request(console, "/helpdesk/payment", {"id": "999999"},
                   session=viewer).responseCode == 404
    assert request(console, "/helpdesk/nothing", session=viewer).responseCode == 404


def test_not_signed_in_is_sent_to_the_sign_in(desk):
    console, _, _ = desk
    req = request(console, "/helpdesk/customer", {"no": "100000502"})
    assert req.responseCode == 303
    assert SCRIPT.encode() not in b"".join(req.written)


def test_get_only(desk):
    console, _, viewer = desk
    # past the guard (a valid CSRF token), the page itself refuses: the Site answers 405
    with pytest.raises(UnsupportedMethod) as e:
        request(console, "/helpdesk", {"q": "1"}, session=viewer, method=b"POST",
                csrf=viewer.csrf)
    assert b"POST" not in e.value.allowedMethods


def test_database_down_is_a_message_not_a_crash(desk, monkeypatch):
    console, day, viewer = desk
    monkeypatch.setattr(day.store, "call",
                        lambda *a, **kw: defer.fail(StoreUnavailable("connection refused")))
    req = request(console, "/helpdesk/customer", {"no": "100000123"}, session=viewer)
    assert req.responseCode == 503 and "database does not answer" in html(req)


def test_overview_figures_as_json(desk):
    import json

    from bankgate.app.console import figures

    console, day, viewer = desk
    figures.mount(console, day.store, lambda: datetime(2026, 11, 27).date(),
                  ["fixed", "partial"], day.settings)
    req = request(console, "/api/overview", session=viewer)
    got = json.loads(html(req))
    assert got["date"] == "2026-11-27"
    assert got["figures"]["per_bank"]["fixed"]["net"] == 548000
    assert got["figures"]["totals"]["amount"] == 1521000
    assert [b["bank"] for b in got["banks"]][:2] == ["fixed", "partial"]
    assert got["banks"][1]["cutoff"]["total"] == 400000
    assert {s["holder"]: s["state"] for s in got["invoices"]} == {
        "fixed": "OK", "twophase": "EMPTY", "counter": "LOW"}
    assert request(console, "/api/overview").responseCode == 401  # not signed in
