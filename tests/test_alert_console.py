"""Alerts in the console: the /alerts page (requests through the site's guard), the open
alerts' count on the overview (the template and overview.js make the same line), the
live snapshot's ``alerts``, ``bankgate_alerts_open{kind}`` on /metrics, and the service
wiring them together (a GatewayService on a memory reactor)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from console_helpers import ThreadedMemoryReactor, bank_factory, body, get
from prometheus_client.parser import text_string_to_metric_families
from test_console_helpdesk import request
from twisted.internet import defer
from twisted.internet.task import Clock

from bankgate.app.alerts import AlertService, Watches
from bankgate.app.console import alerts as alert_pages
from bankgate.app.console import auth, server
from bankgate.app.console.live import LiveFigures
from bankgate.app.console.metrics import GatewayMetrics, MetricsResource
from bankgate.domain import alerts as a

START = datetime(2026, 11, 27, 9, 0)
SCRIPT_JS = Path(server.STATIC) / "overview.js"
EVIL = "<script>alert(1)</script>"


@dataclass
class Bank:
    name: str
    plugin: str = "ref-fixed"
    bank_code: str = "105210"
    listen: list = field(default_factory=list)


def service(clock: Clock, *, down: bool = True, quiet: tuple = ()) -> AlertService:
    """An alert service whose database does not answer (nothing is read from it)."""
    def database():
        return defer.succeed("database: connection refused" if down else None)

    return AlertService(store=None, clock=clock,
                        now=lambda: datetime.fromtimestamp(clock.seconds()),
                        watches=Watches(quiet=quiet), last_message=lambda bank: None,
                        database=database, interval=60)


@pytest.fixture
def site():
    clock = Clock()
    clock.advance(START.timestamp())
    console = server.Console(None, clock, run_blocking=None,
                             wall=datetime.fromtimestamp, banks=[Bank("icbc"), Bank(EVIL)])
    svc = service(clock, quiet=(a.QuietWatch(EVIL, 60),))
    page = alert_pages.mount(console, svc)
    viewer = console.sessions.create(auth.Account("vera", "viewer", START, False))
    return SimpleNamespace(clock=clock, console=console, service=svc, page=page,
                           viewer=viewer)


def cells(page: str, table: str) -> list[list[str]]:
    part = re.search(rf'id="{table}".*?<tbody>(.*?)</tbody>', page, re.S).group(1)
    return [[html.unescape(c.strip()) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", part, re.S)]


def test_the_page_works_while_the_database_is_down_and_says_so(site):
    site.service.check()
    site.clock.advance(120)
    site.service.check()  # the bank named <script> has been quiet for two minutes
    req = request(site.console, "/alerts", session=site.viewer)
    page = b"".join(req.written).decode()
    assert req.responseCode in (None, 200)
    rows = cells(page, "open-alerts")
    assert [r[:3] for r in rows] == [["critical", "database-unreachable", "database"],
                                     ["warning", "bank-quiet", EVIL]]
    assert rows[0][5] == "database: connection refused"
    assert rows[0][6] == a.ADVICE[a.DATABASE_UNREACHABLE]
    assert EVIL not in page and html.escape(EVIL) in page  # a name is text, never markup
    assert "Last checked 2026-11-27 09:02:00; checked every 60 s" in page
    episodes = cells(page, "episodes")
    assert [(r[0], r[4]) for r in episodes] == [("bank-quiet", "open"),
                                                ("database-unreachable", "open")]


def test_cleared_episodes_are_listed_with_both_times(site):
    site.service.check()
    site.service.database = lambda: defer.succeed(None)
    site.service.store = SimpleNamespace(
        call=lambda *args, **kw: defer.fail(RuntimeError("no inputs in this test")),
        run_sync=None)
    site.clock.advance(30)
    site.service.check()
    page = b"".join(request(site.console, "/alerts", session=site.viewer).written).decode()
    assert cells(page, "open-alerts") == [["No open alert."]]
    [ep] = cells(page, "episodes")
    assert ep[:5] == ["database-unreachable", "database", "critical", "2026-11-27 09:00:00",
                      "2026-11-27 09:00:30"]


def test_alerts_off_and_strangers(site):
    alert_pages.mount(site.console, None)
    req = request(site.console, "/alerts", session=site.viewer)
    assert "Alerts are off" in b"".join(req.written).decode()
    req = request(site.console, "/alerts")  # not signed in: sent to sign in
    assert req.responseCode == 303
    assert req.responseHeaders.getRawHeaders(b"location") == [b"/login?next=/alerts"]


def overview_page(site, alerts) -> str:
    live = SimpleNamespace(snapshot=lambda: {"at": "2026-11-27T09:00:00", "banks": [],
                                             "alerts": alerts})
    site.console.overview.live = live.snapshot
    req = request(site.console, "/", session=site.viewer)
    return b"".join(req.written).decode()


def alerts_line(page: str) -> tuple[str, str] | None:
    m = re.search(r'<p id="alerts-line" class="([^"]*)"><a href="/alerts">([^<]*)</a></p>', page)
    return (m.group(2), m.group(1)) if m else None


LISTS = [[], [{"severity": "warning"}], [{"severity": "warning"}, {"severity": "critical"}],
         [{"severity": "warning"}] * 3]


def test_the_overview_counts_the_open_alerts(site):
    got = [alerts_line(overview_page(site, x)) for x in LISTS]
    assert got == [("0 open alerts", "ok"), ("1 open alert", "warn"),
                   ("2 open alerts", "bad"), ("3 open alerts", "warn")]
    assert alerts_line(overview_page(site, None)) is None  # alerts off: no line


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_script_writes_the_line_the_page_wrote(site):
    program = """
      const o = require(process.argv[1]);
      const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
      process.stdout.write(JSON.stringify(input.map(o.alertsLine)));
    """
    out = subprocess.run(["node", "-e", program, str(SCRIPT_JS)], check=True,
                         capture_output=True, timeout=60,
                         input=json.dumps(LISTS).encode()).stdout
    assert [tuple(x) for x in json.loads(out)] == [alerts_line(overview_page(site, x))
                                                   for x in LISTS]


def test_the_live_snapshot_carries_the_open_alerts():
    clock = Clock()
    clock.advance(START.timestamp())
    svc = service(clock)
    svc.check()
    now = lambda: datetime.fromtimestamp(clock.seconds())  # noqa: E731
    banks = [("icbc", bank_factory(clock, "icbc"), ["tcp:9101"])]
    live = LiveFigures(clock, now, banks,
                       alerts=lambda: [e.as_dict() for e in svc.open_alerts()])
    [got] = live.snapshot()["alerts"]
    assert got == {"kind": "database-unreachable", "subject": "database",
                   "severity": "critical", "message": "database: connection refused",
                   "since": "2026-11-27T09:00:00", "raised_at": "2026-11-27T09:00:00",
                   "cleared_at": None}
    clock.advance(1)
    assert LiveFigures(clock, now, banks).snapshot()["alerts"] is None


def test_metrics_count_open_alerts_per_kind(tmp_path):
    from bankgate.app.console.metrics import _alerts_open
    from bankgate.store.db import Store

    clock = Clock()
    clock.advance(START.timestamp())
    svc = service(clock)
    svc.check()
    gw = SimpleNamespace(alerts=svc)
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    store.create_gateway_tables()
    store.call = lambda fn, *args, **kw: defer.maybeDeferred(fn, *args, **kw)
    metrics = GatewayMetrics(store, clock, alerts=lambda: sum(_alerts_open(gw).values()),
                             alerts_open=lambda: _alerts_open(gw))
    r = get(MetricsResource(metrics))
    samples = {(s.name, tuple(s.labels.items())): s.value
               for f in text_string_to_metric_families(body(r).decode()) for s in f.samples}
    assert samples[("bankgate_alerts_open", (("kind", "database-unreachable"),))] == 1
    assert samples[("bankgate_alerts_open", (("kind", "bank-quiet"),))] == 0
    assert {k[1][0][1] for k in samples if k[0] == "bankgate_alerts_open"} == set(a.KINDS)
    assert samples[("bankgate_alerts_active", ())] == 1
    assert _alerts_open(SimpleNamespace(alerts=None)) == {}
    store.stop()


def test_the_service_runs_the_alerts_the_console_shows(tmp_path):
    """The embedded demo's configuration: alerts on, no channel; started on a memory
    reactor, the first check runs, the console has /alerts, /metrics the gauge."""
    from zoneinfo import ZoneInfo

    from bankgate.app.config import default_config
    from bankgate.app.console.live import live_for
    from bankgate.app.console.metrics import metrics_for
    from bankgate.app.tap import gateway as build_gateway

    cfg = default_config(str(tmp_path / "var"))
    cfg.demo_customers = 20
    cfg.banks[0].quiet_after = 60
    reactor = ThreadedMemoryReactor()
    reactor.advance(datetime(2026, 11, 27, 9, 30, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp())
    gw = build_gateway(cfg, reactor)
    try:
        assert isinstance(gw.alerts, AlertService) and gw.alerts.channels == []
        assert b"alerts" in gw.console.site.console.children
        gw.startService()
        reactor.pump_until(gw.ready)
        assert gw.alerts.running and gw.alerts.parent is gw
        reactor.pump_until(gw.alerts._check)  # the first check, at start
        assert gw.alerts.database_ok is True and gw.alerts.open_alerts() == []
        reactor.advance(61)  # demo-fixed has said nothing for a minute
        reactor.pump_until(gw.alerts._check)
        assert [e.alert.key for e in gw.alerts.open_alerts()] == [(a.BANK_QUIET, "demo-fixed")]
        assert [x["subject"] for x in live_for(gw).snapshot()["alerts"]] == ["demo-fixed"]
        assert 'bankgate_alerts_open{kind="bank-quiet"} 1.0' in \
            metrics_for(gw).exposition().decode()
    finally:
        if gw.running:
            reactor.pump_until(gw.stopService())
    assert not gw.alerts.loop.running


E2E_CONFIG = """\
[gateway]
data_dir = "{data}"

[database]
url = "sqlite:///{data}/bankgate.db"

[n8]
create = true

[console]
listen = "tcp:{console}:interface=127.0.0.1"
metrics_listen = "tcp:{metrics}:interface=127.0.0.1"

[alerts]
interval = 10

[alerts.webhook]
url = "http://127.0.0.1:{hook}/hooks/TOKEN42"

[[bank]]
name = "demo-fixed"
plugin = "ref-fixed"
bank_code = "105210"
listen = "tcp:{bank}:interface=127.0.0.1"
[bank.options]
invoice = true
invoice_low_water = 50
"""


@pytest.mark.e2e
def test_e2e_an_alert_raised_shown_posted_and_resolved(tmp_path):
    """``twistd bankgate`` with invoices on and no stock: ``invoice-stock-low`` is raised
    at the first check, POSTed to the webhook (a server on loopback), shown on /alerts
    and /metrics; stock issued with the command resolves it at the next check."""
    import http.cookiejar
    import http.server
    import os
    import queue
    import sys
    import threading
    import urllib.parse
    import urllib.request

    from bankgate.devtools.gateway import ROOT, GatewayProcess, free_port

    posted: queue.Queue = queue.Queue()

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            data = self.rfile.read(int(self.headers["content-length"]))
            posted.put((self.path, self.headers["content-type"], json.loads(data)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    hook = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    ports = {"console": free_port(), "metrics": free_port(), "bank": free_port()}
    data = tmp_path / "var"
    conf = tmp_path / "gw.toml"
    conf.write_text(E2E_CONFIG.format(data=data, hook=hook.server_address[1], **ports))
    gw = GatewayProcess(conf, list(ports.values()), tmp_path / "gw.log")
    gw.start()
    try:
        path, ctype, raised = posted.get(timeout=30)
        assert (path, ctype) == ("/hooks/TOKEN42", "application/json; charset=utf-8")
        assert (raised["event"], raised["kind"], raised["subject"], raised["severity"]) == (
            "raised", "invoice-stock-low", "demo-fixed", "critical")
        base = f"http://127.0.0.1:{ports['console']}"
        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        token = re.search(r'name="csrf" value="([^"]+)"',
                          opener.open(base + "/login").read().decode()).group(1)
        password = re.search(r"password: (\S+)", (data / auth.ADMIN_FILE).read_text()).group(1)
        form = urllib.parse.urlencode({"csrf": token, "name": "admin", "password": password,
                                       "next": "/alerts"}).encode()
        with opener.open(base + "/login", form) as page:
            text = page.read().decode()
        assert page.url == base + "/alerts"
        assert [r[:3] for r in cells(text, "open-alerts")] == [
            ["critical", "invoice-stock-low", "demo-fixed"]]
        with opener.open(base + "/") as overview:
            assert alerts_line(overview.read().decode()) == ("1 open alert", "bad")
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics") as m:
            assert 'bankgate_alerts_open{kind="invoice-stock-low"} 1.0' in m.read().decode()
        issue = subprocess.run(
            [sys.executable, "-m", "bankgate.app.cli", "-c", str(conf), "invoice", "issue",
             "--to", "demo-fixed", "--first", "1", "--last", "500", "--actor", "e2e"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
            timeout=60)
        assert issue.returncode == 0, issue.stderr.decode()
        _, _, resolved = posted.get(timeout=30)  # at the next check, within 10 s
        assert (resolved["event"], resolved["kind"]) == ("resolved", "invoice-stock-low")
        assert resolved["raised_at"] == raised["raised_at"]
        log = (tmp_path / "gw.log").read_text()
        assert log.count("alert raised: invoice-stock-low demo-fixed") == 1
        assert log.count("alert resolved: invoice-stock-low demo-fixed") == 1
        assert "TOKEN42" not in log
    finally:
        gw.stop()
        hook.shutdown()
        hook.server_close()
