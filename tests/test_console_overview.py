"""The overview page (bankgate.app.console.overview) and its script (static/overview.js).

The page is requested over HTTP bytes from the real ``ConsoleSite`` (headers included),
as a signed-in viewer, over the hand-built SQLite day of tests/helpdesk_helpers.py
(its figures are known) and live figures fed by a bank engine on a StringTransport;
the store's pool calls run at once.  The script's cell texts are compared with the
server's by running it under node (skipped where node is missing).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
from conftest import FakeClock, make_store
from console_helpers import Handler, bank_factory, connect, frame, synchronous
from helpdesk_helpers import SCRIPT, build_day
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from bankgate.app.console import auth, figures, overview, server
from bankgate.app.console.live import LiveFigures
from bankgate.store.db import StoreUnavailable

TODAY = datetime(2026, 11, 27)
SCRIPT_JS = Path(server.STATIC) / "overview.js"
BANKS = ["fixed", "partial", SCRIPT]


@dataclass
class Bank:
    name: str
    plugin: str = "ref-fixed"
    bank_code: str = "105210"
    listen: list = field(default_factory=lambda: ["tcp:9101"])


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("overview")
    store = make_store("sqlite", tmp)
    d = build_day(store, FakeClock(), tmp)
    synchronous(store)
    yield d
    store.stop()


@pytest.fixture
def site(day):
    """The console over the day: the configured banks (one named ``<script>``), live
    figures (``fixed`` has served one payment), the day's figures from the database."""
    clock = Clock()
    clock.advance(TODAY.replace(hour=10).timestamp())
    now = lambda: datetime.fromtimestamp(clock.seconds())  # noqa: E731
    console = server.Console(None, clock, run_blocking=day.store.call, wall=now,
                             banks=[Bank(b) for b in BANKS])
    factories = {b: bank_factory(clock, b, Handler(), now) for b in BANKS}
    live = LiveFigures(clock, now, [(b, f, ["tcp:9101"]) for b, f in factories.items()])
    proto, _ = connect(factories["fixed"])
    proto.dataReceived(frame("PAY S1"))
    clock.advance(3)
    day_figures = figures.OverviewFigures(day.store, TODAY.date, BANKS, day.settings)
    console.overview.live = live.snapshot
    console.overview.figures = day_figures.fetch
    s = server.ConsoleSite(console, reactor=clock)
    s.viewer = console.sessions.create(auth.Account("vera", "viewer", TODAY, False))
    s.clock, s.day_figures = clock, day_figures
    return s


def get(site, path: str, *, signed_in: bool = True, finish=None):
    """``GET path`` over HTTP/1.0 (no chunking): ``(status, headers, body)``; ``finish``:
    a callable run after the request is sent (e.g. advancing the clock)."""
    lines = [f"GET {path} HTTP/1.0", "Host: console"]
    if signed_in:
        lines.append(f"Cookie: bg_session={site.viewer.id}")
    peer = IPv4Address("TCP", "10.0.0.7", 40000)
    proto = site.buildProtocol(peer)
    tr = StringTransport(peerAddress=peer)
    proto.makeConnection(tr)
    proto.dataReceived("\r\n".join(lines).encode() + b"\r\n\r\n")
    if finish is not None:
        finish()
    if not tr.value():
        return None, {}, ""  # no answer yet
    head, _, body = tr.value().partition(b"\r\n\r\n")
    status, *hdrs = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (h.split(": ", 1) for h in hdrs)}
    return int(status.split()[1]), headers, body.decode("utf-8")


def cells(page: str, table: str) -> list[list[str]]:
    """The cell texts of the rows of ``<tbody|tfoot data-table=table>``."""
    section = re.search(rf'data-table="{table}"[^>]*>(.*?)</t(?:body|foot)>', page, re.S)
    assert section, table
    return [[html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", section.group(1), re.S)]


def link_row(page: str, bank: str) -> dict[str, tuple[str, str]]:
    row = re.search(rf'<tr data-bank="{re.escape(html.escape(bank))}">(.*?)</tr>', page, re.S)
    assert row, bank
    return {f: (html.unescape(t), c) for f, c, t in re.findall(
        r'<td data-field="(\w+)"(?: class="([^"]*)")?>(.*?)</td>', row.group(1), re.S)}


# -- the page, rendered on the server ---------------------------------------------------


def test_the_page_shows_every_bank_and_the_days_figures(site):
    status, headers, page = get(site, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    for b in BANKS:
        assert f'<tr data-bank="{html.escape(b)}">' in page
    fixed = link_row(page, "fixed")
    assert fixed["requests_per_minute"] == ("1", "num")
    assert fixed["peers"] == ("1", "num")
    assert fixed["listening"] == ("0 of 1", "bad")  # a factory no port listens with
    assert fixed["last_message"][0] == "2026-11-27 10:00:00 (3 s ago)"
    assert link_row(page, "partial")["last_message"] == ("never", "")
    per_bank = {r[0]: r for r in cells(page, "per_bank")}
    assert list(per_bank) == ["fixed", "partial", SCRIPT, "any", "overpay", "twophase"]
    # fixed: 2 payments of 5480.00, one reversed; net 5480.00
    assert per_bank["fixed"][1:6] == ["2", "10960.00", "1 / 5480.00", "0 / 0.00", "5480.00"]
    assert per_bank["twophase"][6] == "1 / 200.00"  # pending two-phase
    assert cells(page, "totals") == [["Total", "5", "15210.00", "1 / 5480.00", "1 / 100.00",
                                      "9630.00", "1 / 200.00"]]
    assert ["fixed", "05", "1", "5480.00", "5480.00"] in cells(page, "by_channel")
    assert ["overpay", "(prepaid)", "1", "50.00", "50.00"] in cells(page, "by_fee_type")
    states = {r[0]: r for r in cells(page, "states")}
    assert states["fixed"][1] == "open" and states["fixed"][2] == "2026-11-26"
    assert states["fixed"][3] == "2026-11-26 run 2: EXCEPTIONS, 2 open exception(s)"
    assert states["partial"][1].startswith("closed ") and "4000.00" in states["partial"][1]
    assert states["partial"][3].endswith(": FAILED")
    stock = {r[0]: r[4] for r in cells(page, "invoices")}
    assert stock == {"fixed": "OK", "twophase": "EMPTY", "counter": "LOW"}
    assert '<td class="bad">EMPTY</td>' in page and '<td class="warn">LOW</td>' in page


def test_the_page_refers_to_its_script_and_the_policy_allows_it(site):
    status, headers, page = get(site, "/")
    assert '<script src="/static/overview.js" defer></script>' in page
    assert 'data-stream="/api/live/stream"' in page and 'data-figures="/api/overview"' in page
    # no inline script, no event handler attribute: the policy allows neither
    assert not re.search(r"<script(?![^>]*\bsrc=)", page)
    assert not re.search(r"\son[a-z]+\s*=", page)
    policy = dict(d.strip().split(" ", 1) for d in headers["content-security-policy"].split(";"))
    # no script-src / connect-src of its own: default-src covers the script file, the
    # fetch and the EventSource -- from this site only
    assert policy["default-src"] == "'self'"
    assert "script-src" not in policy and "connect-src" not in policy
    status, headers, script = get(site, "/static/overview.js", signed_in=False)
    assert status == 200 and headers["content-type"] == "text/javascript; charset=utf-8"
    assert headers["x-content-type-options"] == "nosniff"
    assert script == SCRIPT_JS.read_text(encoding="utf-8")


def test_names_are_text_never_markup(site, day):
    plain = site.day_figures.fetch().result
    plain["figures"]["by_channel"][0]["channel"] = "<b>bold</b>"
    plain["figures"]["by_fee_type"][0]["fee_type"] = '<img src=x onerror="alert(2)">'
    plain["invoices"][0]["holder"] = SCRIPT
    site.resource.overview.figures = lambda: defer.succeed(plain)
    _, _, page = get(site, "/")
    for text in (SCRIPT, "<b>bold</b>", '<img src=x onerror="alert(2)">'):
        assert text not in page
    assert page.count(html.escape(SCRIPT)) >= 4  # the link row, per bank, states, holder
    assert "&lt;b&gt;bold&lt;/b&gt;" in page


def test_a_database_that_is_down_gives_the_page_without_the_figures(site):
    site.resource.overview.figures = lambda: defer.fail(StoreUnavailable("gone"))
    status, _, page = get(site, "/")
    assert status == 200 and '<tr data-bank="fixed">' in page
    assert "The database does not answer: the day&#39;s figures are not shown" in page
    assert cells(page, "per_bank") == [["Not available."]]
    assert link_row(page, "fixed")["requests_per_minute"] == ("1", "num")  # still live


def test_a_database_that_hangs_gives_the_page_after_the_timeout(site):
    site.resource.overview.figures = defer.Deferred  # never fires
    status, _, page = get(site, "/")
    assert status is None  # still waiting, until the timeout
    status, _, page = get(site, "/", finish=lambda: site.clock.advance(
        overview.FIGURES_TIMEOUT))
    assert status == 200
    assert f"did not answer within {overview.FIGURES_TIMEOUT:g} s" in page


def test_without_live_and_day_figures_the_page_lists_the_configured_banks(site):
    site.resource.overview.live = site.resource.overview.figures = None
    _, _, page = get(site, "/")
    assert link_row(page, "fixed")["peers"] == ("-", "")
    assert 'data-stream=""' in page and "data-table" not in page


class CountingStore:
    """A pool whose calls wait for the test (``answer``) and are counted."""

    def __init__(self):
        self.calls: list[defer.Deferred] = []
        self.fee_types: list[bool] = []  # each read: with the figures per fee type?

    def call(self, fn, *args, by_fee_type=True):
        d: defer.Deferred = defer.Deferred()
        self.calls.append(d)
        self.fee_types.append(by_fee_type)
        return d

    def answer(self, value=None, failure=None):
        d = self.calls[-1]
        d.errback(failure) if failure is not None else d.callback(value)


def read(n, fees=None):
    return {"figures": {"n": n, "by_fee_type": fees}}


def test_every_client_shares_one_read_of_the_figures_for_max_age_seconds():
    clock, store = Clock(), CountingStore()
    page = figures.OverviewFigures(store, lambda: TODAY.date(), BANKS, clock=clock,
                                   max_age=5)
    got: list = []
    for _ in range(20):  # twenty clients at once: one read, each its own copy
        page.fetch().addCallback(got.append)
    assert len(store.calls) == 1 and got == []
    store.answer(read(1, ["fee 1"]))
    assert [g["figures"]["n"] for g in got] == [1] * 20 and got[0] is not got[1]
    clock.advance(4.9)
    page.fetch().addCallback(got.append)
    assert len(store.calls) == 1 and got[-1]["figures"]["n"] == 1
    clock.advance(0.1)  # five seconds old: read again
    page.fetch().addCallback(got.append)
    assert len(store.calls) == 2
    store.answer(read(2))
    assert got[-1]["figures"]["n"] == 2


def test_the_figures_per_fee_type_are_read_once_a_minute():
    clock, store = Clock(), CountingStore()
    page = figures.OverviewFigures(store, lambda: TODAY.date(), BANKS, clock=clock,
                                   max_age=10)
    got: list = []
    for second in range(0, 130, 10):
        clock.advance(10 if second else 0)
        page.fetch().addCallback(got.append)
        with_fees = store.fee_types[-1]
        store.answer(read(second, [f"fees at {second}"] if with_fees else None))
    assert store.fee_types == [True, False, False, False, False, False,
                               True, False, False, False, False, False, True]
    shown = [g["figures"]["by_fee_type"] for g in got]
    assert shown[:6] == [["fees at 0"]] * 6 and shown[6:12] == [["fees at 60"]] * 6
    assert got[5]["figures"]["by_fee_type_at"] == got[0]["figures"]["by_fee_type_at"]


def test_a_failed_read_is_not_kept():
    clock, store = Clock(), CountingStore()
    page = figures.OverviewFigures(store, lambda: TODAY.date(), BANKS, clock=clock)
    failed: list = []
    page.fetch().addErrback(failed.append)
    page.fetch().addErrback(failed.append)
    store.answer(failure=StoreUnavailable("down"))
    assert len(failed) == 2 and all(f.check(StoreUnavailable) for f in failed)
    page.fetch()
    assert len(store.calls) == 2  # asked again at once


def test_the_navigation(site):
    _, _, page = get(site, "/")
    nav = re.search(r"<nav[^>]*>(.*?)</nav>", page, re.S).group(1)
    shared = [("/", "Overview"), ("/helpdesk", "Help desk"), ("/reports", "Reports"),
              ("/workorders", "Work orders"), ("/alerts", "Alerts"),
              ("/exceptions", "Exceptions"), ("/carddebits", "Card debits")]
    assert re.findall(r'href="([^"]+)">([^<]+)<', nav) == shared  # a viewer's
    assert 'action="/logout"' in page and "Sign out" in page
    for role, more in (("operator", [("/audit", "Audit trail")]),
                       ("admin", [("/audit", "Audit trail"), ("/admin/users", "Users")])):
        site.viewer = site.resource.sessions.create(auth.Account("ana", role, TODAY, False))
        _, _, page = get(site, "/")
        nav = re.search(r"<nav[^>]*>(.*?)</nav>", page, re.S).group(1)
        assert re.findall(r'href="([^"]+)">([^<]+)<', nav) == shared + more


# -- the script --------------------------------------------------------------------------


def test_the_script_inserts_text_only():
    js = SCRIPT_JS.read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function"):
        assert sink not in js, sink
    assert "textContent" in js


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_script_makes_the_cells_the_server_makes(site):
    """The same figures through overview.py and overview.js: the same cell texts and
    classes (the page does not change its look when the first update arrives)."""
    plain = site.day_figures.fetch().result
    snapshot = site.resource.overview.live()
    extra = [dict(snapshot["banks"][0], errors_5m=1, requests_5m=3, seconds_since=3725,
                  debit_link={"connected": False, "queued": 2}),
             dict(snapshot["banks"][0], errors_5m=1, requests_5m=16, seconds_since=75,
                  endpoints=[], debit_link={"connected": True, "queued": 0})]
    banks = snapshot["banks"] + extra
    money = [0, 5, 99, 100, 548000, -5, -123456, 10**15 + 7]
    program = """
      const o = require(process.argv[1]);
      const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
      process.stdout.write(JSON.stringify({
        tables: o.figureTables(input.figures),
        links: input.banks.map(o.linkCells),
        yuan: input.money.map(o.yuan),
        ago: [0, 59, 60, 3599, 3600, 86399].map(o.ago)}));
    """
    out = subprocess.run(["node", "-e", program, str(SCRIPT_JS)], check=True,
                         capture_output=True, timeout=60,
                         input=json.dumps({"figures": plain, "banks": banks, "money": money})
                         .encode()).stdout
    js = json.loads(out)
    as_lists = json.loads(json.dumps({
        "tables": overview.figure_tables(plain),
        "links": [overview.link_cells(b) for b in banks],
        "yuan": [overview.yuan(f) for f in money],
        "ago": [overview.ago(s) for s in (0, 59, 60, 3599, 3600, 86399)]}))
    assert js == as_lists
    assert js["links"][-2]["errors"] == ["33.3 % (1 of 3)", "num bad"]
    assert js["links"][-1]["errors"][0] == "6.3 % (1 of 16)"  # 6.25: half up, both sides
    assert js["links"][-2]["last_message"][0].endswith("(1 h 2 min ago)")


# -- end to end ------------------------------------------------------------------------


@pytest.mark.e2e
def test_e2e_the_running_gateway_serves_the_live_overview(tmp_path):
    """``twistd bankgate``: the signed-in overview has the live link figures and the day's
    figures from its database, and the stream it names sends the same banks."""
    import http.cookiejar
    import urllib.parse
    import urllib.request

    from test_console_server import CONFIG

    from bankgate.devtools.gateway import GatewayProcess, free_port

    ports = {"console": free_port(), "metrics": free_port(), "bank": free_port()}
    data = tmp_path / "var"
    conf = tmp_path / "gw.toml"
    conf.write_text(CONFIG.format(data=data, **ports))
    gw = GatewayProcess(conf, list(ports.values()), tmp_path / "gw.log")
    gw.start()
    try:
        base = f"http://127.0.0.1:{ports['console']}"
        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        token = re.search(r'name="csrf" value="([^"]+)"',
                          opener.open(base + "/login").read().decode()).group(1)
        password = re.search(r"password: (\S+)", (data / auth.ADMIN_FILE).read_text()).group(1)
        form = urllib.parse.urlencode({"csrf": token, "name": "admin", "password": password,
                                       "next": "/"}).encode()
        page = opener.open(base + "/login", form).read().decode()
        assert link_row(page, "demo-delim")["listening"] == ("1 of 1", "ok")
        assert cells(page, "totals")[0][0] == "Total" and "Not available." not in page
        assert 'data-stream="/api/live/stream"' in page
        assert opener.open(base + "/static/overview.js").read() == SCRIPT_JS.read_bytes()
        stream = opener.open(base + "/api/live/stream", timeout=10)
        assert stream.headers["content-type"].startswith("text/event-stream")
        line = b""
        while not line.startswith(b"data: "):
            line = stream.readline()
        stream.close()
        assert [b["bank"] for b in json.loads(line[6:])["banks"]] == ["demo-delim"]
    finally:
        gw.stop()
