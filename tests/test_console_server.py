"""The console's site over HTTP: sign-in and out, the guard (roles, CSRF), session
expiry and the throttle on a Clock, cookies, headers, escaping; the service's first
administrator; and, end to end, ``twistd bankgate`` serving it on a real port.

The in-memory tests speak HTTP/1.1 bytes to the real ``Site`` over a
``StringTransport``; the store is SQLite and its pool calls run at once.
"""

from __future__ import annotations

import html
import http.cookiejar
import os
import re
import stat
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.resource import Resource
from zope.interface import implementer

from bankgate.app.console import auth, server
from bankgate.store.db import Store

PASSWORD = "correct horse battery"
START = datetime(2026, 11, 27, 9, 30).timestamp()


@dataclass
class Bank:
    name: str
    plugin: str = "ref-fixed"
    bank_code: str = "105210"
    listen: list = field(default_factory=lambda: ["tcp:9101"])


class OperatorPage(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"operator page for " + server.current(request).user.encode()

    def render_POST(self, request):
        self.posted = True
        return b"done"


class Public(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"ok"


@implementer(ISSLTransport)
class TLSTransport(StringTransport):
    def setTcpNoDelay(self, enabled):
        pass


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: str

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)

    def cookies(self) -> dict[str, str]:
        return {v.split("=", 1)[0]: v for k, v in self.headers if k.lower() == "set-cookie"}


class Browser:
    """One HTTP client of the site: keeps its cookies, one connection per request."""

    def __init__(self, site, address="10.0.0.7", tls=False):
        self.site, self.address, self.tls = site, address, tls
        self.jar: dict[str, str] = {}

    def request(self, method: str, path: str, form: dict | None = None,
                headers: dict | None = None) -> Response:
        body = urllib.parse.urlencode(form or {}).encode()
        lines = [f"{method} {path} HTTP/1.1", "Host: console", "Connection: close",
                 f"Content-Length: {len(body)}"]
        if form is not None:
            lines.append("Content-Type: application/x-www-form-urlencoded")
        if self.jar:
            lines.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in self.jar.items()))
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        peer = IPv4Address("TCP", self.address, 40000)
        proto = self.site.buildProtocol(peer)
        tr = (TLSTransport if self.tls else StringTransport)(peerAddress=peer)
        proto.makeConnection(tr)
        proto.dataReceived("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
        head, _, rest = tr.value().partition(b"\r\n\r\n")
        status_line, *hdrs = head.decode("latin-1").split("\r\n")
        r = Response(int(status_line.split()[1]),
                     [tuple(h.split(": ", 1)) for h in hdrs], rest.decode("utf-8", "replace"))
        if "transfer-encoding" in {k.lower() for k, _ in r.headers}:
            r.body = _dechunk(rest).decode("utf-8", "replace")
        for name, v in r.cookies().items():
            value = v.split(";")[0].split("=", 1)[1]
            if value and "Max-Age=0" not in v:
                self.jar[name] = value
            else:
                self.jar.pop(name, None)
        return r

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, form, **kw):
        return self.request("POST", path, form=form, **kw)

    def csrf(self, path="/logout") -> str:
        return re.search(r'name="csrf" value="([^"]+)"', self.get(path).body).group(1)

    def sign_in(self, name="zhao", password=PASSWORD, next_="/") -> Response:
        token = self.csrf("/login")
        return self.post("/login", {"csrf": token, "name": name, "password": password,
                                    "next": next_})


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, data = data.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out, data = out + data[:n], data[n + 2:]
    return out


@pytest.fixture
def console(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'gw.db'}")
    store.create_gateway_tables()
    clock = Clock()
    clock.advance(START)
    accounts = auth.Accounts(store, lambda: datetime.fromtimestamp(clock.seconds()))
    accounts.add("zhao", "operator", PASSWORD, actor="test")
    accounts.add("wang", "viewer", PASSWORD, actor="test")
    calls = []

    def run_blocking(fn, *args):
        calls.append(fn.__name__)
        return defer.maybeDeferred(fn, *args)

    root = server.Console(accounts, clock, run_blocking=run_blocking,
                          wall=datetime.fromtimestamp,
                          banks=[Bank("demo-fixed"), Bank("<script>alert(1)</script>")],
                          session_idle=600)
    root.mount("ops", OperatorPage(), role="operator")
    root.mount("healthz", Public(), public=True)
    site = server.ConsoleSite(root, reactor=clock)
    site.store, site.clock, site.calls = store, clock, calls
    yield site
    store.stop()


def audit_actions(store) -> list[str]:
    return [r["action"] for r in reversed(store.run_sync(lambda tx: tx.audit_list(100)))]


def test_nothing_but_sign_in_and_public_mounts_without_a_session(console):
    b = Browser(console)
    r = b.get("/")
    assert r.status == 303 and r.header("location") == "/login?next=/"
    assert b.get("/ops").header("location") == "/login?next=/ops"
    assert b.get("/api/live").status in (401, 303)
    assert b.post("/ops", {"csrf": "x"}).status == 401
    assert b.get("/logout").status == 303
    assert b.get("/healthz").body == "ok"
    assert b.get("/login").status == 200
    assert b.get("/static/console.css").status == 200
    assert b.get("/static/").status == 404 and b.get("/static/../server.py").status == 404


def test_sign_in_sets_a_safe_cookie_and_shows_the_overview(console):
    b = Browser(console)
    form = b.get("/login")
    login_cookie = form.cookies()["bg_login"]
    assert "HttpOnly" in login_cookie and "samesite=strict" in login_cookie.lower()
    assert "Secure" not in login_cookie  # plain HTTP: a Secure cookie would never return
    r = b.sign_in(next_="/ops")
    assert r.status == 303 and r.header("location") == "/ops"
    cookie = r.cookies()["bg_session"]
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Path=/" in cookie
    assert b.get("/ops").body == "operator page for zhao"
    page = b.get("/")
    assert page.status == 200 and "demo-fixed" in page.body and "zhao (operator)" in page.body
    # a bank name is text, never markup
    assert "<script>alert(1)</script>" not in page.body
    assert html.escape("<script>alert(1)</script>") in page.body
    for h, v in server.SECURITY_HEADERS.items():
        assert page.header(h.decode()) == v.decode()
    assert audit_actions(console.store)[-1] == "console sign-in"
    assert console.calls == ["sign_in"]  # the password checked through run_blocking


def test_over_tls_the_cookies_are_secure(console):
    b = Browser(console, tls=True)
    assert "Secure" in b.get("/login").cookies()["bg_login"]
    assert "Secure" in b.sign_in().cookies()["bg_session"]


def test_a_wrong_password_is_refused_and_audited(console):
    b = Browser(console)
    r = b.sign_in(password="wrong password")
    assert r.status == 401 and "Wrong user name or password" in r.body
    assert "bg_session" not in b.jar and b.get("/").status == 303
    assert audit_actions(console.store)[-1] == "console sign-in refused"


def test_sign_in_without_its_form_token_is_refused_and_changes_nothing(console):
    b = Browser(console)
    r = b.post("/login", {"name": "zhao", "password": PASSWORD})
    assert r.status == 403 and "bg_session" not in b.jar
    b.get("/login")  # the cookie, but a token of another form
    r = b.post("/login", {"csrf": "forged", "name": "zhao", "password": PASSWORD})
    assert r.status == 403 and "bg_session" not in b.jar
    assert console.calls == [] and audit_actions(console.store)[-1] == "user add"


def test_a_second_sign_in_form_keeps_the_first_one_good(console):
    # a browser opens /login, then asks for /favicon.ico (or opens a second tab):
    # the first form's token must still sign in
    b = Browser(console)
    token = b.csrf("/login")
    assert b.get("/favicon.ico").status == 404  # not a redirect to sign in
    assert b.csrf("/login") == token
    r = b.post("/login", {"csrf": token, "name": "zhao", "password": PASSWORD})
    assert r.status == 303 and "bg_session" in b.jar


def test_empty_fields_are_named_next_to_the_field(console):
    b = Browser(console)
    token = b.csrf("/login")
    r = b.post("/login", {"csrf": token, "name": "", "password": ""})
    assert r.status == 400 and "Enter your user name." in r.body
    assert "Enter your password." in r.body and console.calls == []


def test_a_post_without_the_csrf_token_is_refused_before_the_page(console):
    b = Browser(console)
    b.sign_in()
    page = console.resource.children[b"ops"].inner
    for form, headers in (({}, {}), ({"csrf": "guess"}, {}),
                          ({}, {"X-CSRF-Token": "guess"})):
        r = b.post("/ops", form, headers=headers)
        assert r.status == 403 and "nothing was changed" in r.body
        assert not hasattr(page, "posted")
    token = b.csrf()
    assert b.post("/ops", {"csrf": token}).body == "done" and page.posted
    assert b.post("/ops", {}, headers={"X-CSRF-Token": token}).status == 200
    # signing out needs the token too
    assert b.post("/logout", {}).status == 403 and b.get("/").status == 200
    r = b.post("/logout", {"csrf": token})
    assert r.status == 303 and r.header("location") == "/login"
    assert b.get("/").status == 303 and len(console.resource.sessions) == 0


def test_a_viewer_cannot_open_an_operator_page(console):
    b = Browser(console)
    b.sign_in("wang")
    r = b.get("/ops")
    assert r.status == 403 and "needs operator" in r.body
    assert b.post("/ops", {"csrf": b.csrf()}).status == 403
    assert b.get("/").status == 200


def test_a_session_expires_on_the_clock(console):
    b = Browser(console)
    b.sign_in()
    console.clock.advance(599)
    assert b.get("/").status == 200
    console.clock.advance(601)
    r = b.get("/")
    assert r.status == 303 and r.header("location").startswith("/login")


def test_the_sixth_attempt_after_five_failures_waits(console):
    b = Browser(console, address="10.0.0.66")
    for _ in range(5):
        assert b.sign_in(password="wrong password").status == 401
    checked = len(console.calls)
    r = b.sign_in()  # even the right password: not looked at yet
    assert r.status == 429 and r.header("retry-after") == "2"
    assert "Too many failed sign-ins" in r.body and "wait 2 s" in r.body
    assert len(console.calls) == checked and "bg_session" not in b.jar
    # another address, same user: the user's count applies
    assert Browser(console, address="10.0.0.67").sign_in().status == 429
    console.clock.advance(2)
    assert b.sign_in().status == 303 and b.get("/").status == 200


def test_a_disabled_account_cannot_sign_in_and_loses_its_sessions(console):
    b = Browser(console)
    b.sign_in()
    accounts = console.resource.accounts
    console.clock.advance(5)
    accounts.set_disabled("zhao", True, actor="test", reason="left")
    results = []
    console.resource.refresh().addCallback(results.append)
    assert results == [1] and b.get("/").status == 303
    assert Browser(console).sign_in().status == 401


def test_sign_in_never_sends_you_to_another_site(console):
    for target in ("//evil.example/", "https://evil.example/", "/\\evil", "evil"):
        r = Browser(console).sign_in(next_=target)
        assert r.header("location") == "/", target
    assert server.safe_next("/ops?x=1") == "/ops?x=1"


def test_the_address_shown_for_an_endpoint():
    assert server.address("tcp:9180:interface=127.0.0.1") == "http://127.0.0.1:9180/"
    assert server.address("tcp:port=8080") == "http://localhost:8080/"
    assert server.address(r"ssl:9443:privateKey=k.pem:interface=\:\:1") == "https://[::1]:9443/"


def test_metrics_listen_moves_the_public_pages_to_their_own_site(console):
    reactor = MemoryReactorClock()
    svc = server.ConsoleService(console, "tcp:9180:interface=127.0.0.1", reactor, Clock(),
                                metrics_listen="tcp:9181:interface=127.0.0.1")
    svc.startService()
    ports = {p[0]: p[1] for p in reactor.tcpServers}
    assert set(ports) == {9180, 9181}
    assert Browser(ports[9181]).get("/healthz").body == "ok"
    assert Browser(ports[9180]).get("/healthz").status == 303  # not public there any more
    svc.stopService()


# -- the service ------------------------------------------------------------------------


def test_the_gateway_creates_the_first_admin_once(tmp_path):
    from test_service import ThreadedMemoryReactor

    from bankgate.app.config import default_config
    from bankgate.app.tap import gateway as build_gateway

    cfg = default_config(str(tmp_path / "var"))
    cfg.demo_customers = 5
    reactor = ThreadedMemoryReactor()
    reactor.advance(START)
    gw = build_gateway(cfg, reactor)
    gw.startService()
    reactor.pump_until(gw.ready)
    assert 9180 in [p[0] for p in reactor.tcpServers]
    path = Path(cfg.data_dir) / auth.ADMIN_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    reactor.pump_until(gw.stopService())
    again = build_gateway(cfg, reactor)
    again.startService()
    reactor.pump_until(again.ready)
    assert path.read_text() == text
    assert [u["name"] for u in auth.Accounts(again.store, again.now).list()] == ["admin"]
    reactor.pump_until(again.stopService())


# -- end to end -------------------------------------------------------------------------


CONFIG = """\
[gateway]
data_dir = "{data}"

[database]
url = "sqlite:///{data}/bankgate.db"

[n8]
create = true
demo_customers = 20

[console]
listen = "tcp:{console}:interface=127.0.0.1"
metrics_listen = "tcp:{metrics}:interface=127.0.0.1"

[[bank]]
name = "demo-delim"
plugin = "ref-delim"
bank_code = "103210"
listen = "tcp:{bank}:interface=127.0.0.1"
"""


@pytest.mark.e2e
def test_e2e_sign_in_to_the_running_gateway(tmp_path):
    from bankgate.devtools.gateway import GatewayProcess, free_port

    ports = {"console": free_port(), "metrics": free_port(), "bank": free_port()}
    data = tmp_path / "var"
    conf = tmp_path / "gw.toml"
    conf.write_text(CONFIG.format(data=data, **ports))
    gw = GatewayProcess(conf, list(ports.values()), tmp_path / "gw.log")
    gw.start()
    try:
        base = f"http://127.0.0.1:{ports['console']}"
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        page = opener.open(base + "/").read().decode()  # redirected to the sign-in form
        token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        password = re.search(r"password: (\S+)", (data / auth.ADMIN_FILE).read_text()).group(1)
        assert f"console at http://127.0.0.1:{ports['console']}/" in (
            tmp_path / "gw.log").read_text()
        form = urllib.parse.urlencode({"csrf": token, "name": "admin", "password": "nope",
                                       "next": "/"}).encode()
        with pytest.raises(urllib.error.HTTPError) as e:
            opener.open(base + "/login", form)
        assert e.value.code == 401
        with e.value:  # an HTTPError holds the connection until closed
            token = re.search(r'name="csrf" value="([^"]+)"', e.value.read().decode()).group(1)
        form = urllib.parse.urlencode({"csrf": token, "name": "admin", "password": password,
                                       "next": "/"}).encode()
        with opener.open(base + "/login", form) as overview:
            text = overview.read().decode()
        assert overview.url == base + "/" and "demo-delim" in text and "admin (admin)" in text
        log = (tmp_path / "gw.log").read_text()
        assert log.count(password) == 1 and "nope" not in log  # only the first start's line
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/healthz") as health:
            assert health.status == 200
        # on the console's own port, /healthz is not public: a stranger is sent to sign in
        with urllib.request.urlopen(base + "/healthz") as stranger:
            assert stranger.url == base + "/login?next=/healthz"
    finally:
        gw.stop()
