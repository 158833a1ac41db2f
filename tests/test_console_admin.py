"""The administrator's pages (bankgate.app.console.admin): the users and their actions,
the audit trail; the last-admin rule of ``Accounts`` through the console and the CLI;
and the console's request body limit (server.ConsoleRequest).

Pages are requested through the console's guard (DummyRequest, as the other console
tests), over a real Store on SQLite whose pool calls run at once; the body limit is
tested over HTTP bytes on the real ``ConsoleSite`` (a ``StringTransport``).
"""

from __future__ import annotations

import html
import io
import json
import re
import tomllib
from datetime import datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest
from console_helpers import synchronous
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_console_helpdesk import request
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.resource import Resource

from bankgate.app.config import ConfigError, parse_config
from bankgate.app.console import admin, auth, server
from bankgate.store import audit, model
from bankgate.store.db import Store, StoreUnavailable

NOW = datetime(2026, 11, 27, 9, 30)
PASSWORD = "a long passphrase 42"


def text(req) -> str:
    return b"".join(req.written).decode("utf-8")


@pytest.fixture
def site(tmp_path):
    """A console over a fresh SQLite store: the admin ``li``, an operator, a viewer."""
    store = Store(f"sqlite:///{tmp_path / 'gw.db'}")
    store.create_gateway_tables()
    synchronous(store)
    clock = {"now": NOW}
    accounts = auth.Accounts(store, lambda: clock["now"])
    for name, role in (("li", "admin"), ("olga", "operator"), ("vera", "viewer")):
        accounts.add(name, role, PASSWORD, actor="setup")
    console = server.Console(accounts, Clock(), run_blocking=store.call,
                             wall=datetime.fromtimestamp)
    admin.mount_pages(console, store, accounts)
    s = {name: console.sessions.create(auth.Account(name, role, NOW, False))
         for name, role in (("li", "admin"), ("olga", "operator"), ("vera", "viewer"))}
    yield console, store, accounts, s
    store.stop()


def users(accounts) -> dict[str, dict]:
    return {u["name"]: u for u in accounts.list()}


def trail(store, since_id: int = 0) -> list[dict]:
    return store.run_sync(audit.after, since_id, readonly=True)


def post(console, session, name, form, **kw):
    return request(console, f"/actions/{name}", form, session=session, method=b"POST",
                   csrf=kw.pop("csrf", session.csrf))


def confirm(console, session, name, form):
    """Continue, then confirm: the answer to the confirmation."""
    first = post(console, session, name, form)
    assert first.responseCode in (None, 200), text(first)
    assert 'name="confirm" value="yes"' in text(first)
    return post(console, session, name, {**form, "confirm": "yes"})


@pytest.fixture
def logged():
    """Every log event while the test runs, formatted."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield lambda: "\n".join(f"{formatEvent(e)} {e!r}" for e in events)
    globalLogPublisher.removeObserver(events.append)


# -- the users page -------------------------------------------------------------------


def test_the_users_page_lists_every_user_for_admins_only(site):
    console, _, accounts, s = site
    accounts.set_disabled("vera", True, actor="li", reason="left")
    req = request(console, "/admin/users", session=s["li"])
    page = text(req)
    assert req.responseCode in (None, 200)
    rows = {re.sub(r"<[^>]+>", "", r[0]): r for r in (
        re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        for row in re.findall(r"<tr>(.*?)</tr>", page.split("<tbody>")[1], re.S))}
    assert set(rows) == {"li (you)", "olga", "vera"}
    assert rows["olga"][1] == "operator" and rows["olga"][2] == "enabled"
    assert rows["vera"][2] == "disabled since 2026-11-27 09:30:00"
    assert rows["olga"][4] == "never"
    assert "/actions/user-enable?name=vera" in page and "/actions/user-disable?name=olga" in page
    assert "/actions/user-add" in page and "scrypt" not in page
    for who in ("olga", "vera"):
        assert request(console, "/admin/users", session=s[who]).responseCode == 403
        assert request(console, "/actions/user-add", session=s[who]).responseCode == 403
    assert post(console, s["olga"], "user-disable",
                {"name": "vera", "reason": "x", "confirm": "yes"}).responseCode == 403


def test_add_a_user_with_a_typed_password(site, logged):
    console, store, accounts, s = site
    page = text(request(console, "/actions/user-add", session=s["li"]))
    assert len(re.findall(r'<input id="f-(?:password|again)"[^>]*type="password"', page)) == 2
    assert '<option value="admin">' in page and "/admin/users" in page  # Cancel goes back
    form = {"name": "zhao", "role": "operator", "password": "typed twice 12345",
            "again": "typed twice 12345", "reason": "new hire <b>"}
    first = post(console, s["li"], "user-add", form)
    assert "as typed (not shown)" in text(first) and "new hire &lt;b&gt;" in text(first)
    assert "zhao" not in users(accounts)  # a confirmation does nothing
    req = post(console, s["li"], "user-add", {**form, "confirm": "yes"})
    assert req.responseCode == 303
    assert req.responseHeaders.getRawHeaders(b"location") == [b"/admin/users"]
    assert accounts.sign_in("zhao", "typed twice 12345", "10.0.0.1").role == "operator"
    [row] = [r for r in trail(store) if r["action"] == "user add" and r["subject"] == "zhao"]
    assert row["actor"] == "li" and row["detail"]["reason"] == "new hire <b>"
    assert "user zhao added (operator)" in text(request(console, "/admin/users",
                                                        session=s["li"]))
    assert "typed twice 12345" not in logged()


def test_a_generated_password_is_shown_once_and_nowhere_else(site, logged):
    console, store, accounts, s = site
    before = max(r["id"] for r in trail(store))
    req = confirm(console, s["li"], "user-add",
                  {"name": "wang", "role": "viewer", "password": "", "again": "",
                   "reason": "auditor"})
    assert req.responseCode in (None, 200)
    page = text(req)
    [password] = re.findall(r'<code class="secret">(.*?)</code>', page)
    assert len(password) == 20 and "not shown again" in page
    assert accounts.sign_in("wang", password, "10.0.0.1").role == "viewer"
    assert s["li"].notices == []  # not kept for a later page
    assert password not in text(request(console, "/admin/users", session=s["li"]))
    assert password not in logged()
    assert "li did user-add: user wang added (viewer)" in logged()
    assert password not in json.dumps([r["detail"] for r in trail(store, before)])
    # a reset: a new one, shown once; the old one stops working
    req = confirm(console, s["li"], "user-passwd",
                  {"name": "wang", "password": "", "again": "", "reason": "forgotten"})
    [second] = re.findall(r'<code class="secret">(.*?)</code>', text(req))
    assert second != password
    assert accounts.sign_in("wang", password, "10.0.0.1") is None
    assert accounts.sign_in("wang", second, "10.0.0.1") is not None
    assert second not in logged()


@pytest.mark.parametrize("password, again, field, message", [
    ("typed twice 12345", "typed twice 54321", "again", "the two passwords differ"),
    ("short", "short", "password", "at least 10 characters"),
    ("zhao", "zhao", "password", "at least 10 characters"),
    (" leading space 1", " leading space 1", "password", "no spaces at the start"),
    ("only the first one", "", "again", "the two passwords differ"),
])
def test_a_bad_password_is_named_and_nothing_is_done(site, password, again, field, message):
    console, store, accounts, s = site
    n = len(trail(store))
    req = post(console, s["li"], "user-add",
               {"name": "zhao", "role": "viewer", "password": password, "again": again,
                "reason": "r", "confirm": "yes"})
    page = text(req)
    assert req.responseCode == 400 and message in page
    assert re.search(rf'id="f-{field}"[^>]*>\s*(<span class="help">.*?</span>\s*)?'
                     rf'<span class="error"', page, re.S)
    assert "zhao" not in users(accounts) and len(trail(store)) == n
    assert not re.search(r'type="password"[^>]*value=', page)  # never sent back
    assert password == "zhao" or password.strip() not in page


@pytest.mark.parametrize("name, form, message", [
    ("user-add", {"name": "li", "role": "viewer"}, "a user named 'li' exists already"),
    ("user-role", {"name": "ghost", "role": "viewer"}, "no user named 'ghost'"),
    ("user-role", {"name": "olga", "role": "operator"}, "'olga' is operator already"),
    ("user-enable", {"name": "olga"}, "'olga' is enabled already"),
    ("user-add", {"name": "<b>x", "role": "viewer"}, "a user name is 1-64 letters"),
])
def test_a_refusal_changes_nothing(site, name, form, message):
    console, store, accounts, s = site
    was, n = users(accounts), len(trail(store))
    req = post(console, s["li"], name, {"password": "", "again": "", **form, "reason": "r"})
    assert req.responseCode in (400, 409)
    assert message in html.unescape(text(req))
    assert users(accounts) == was and len(trail(store)) == n


def test_role_disable_enable_each_audited_with_actor_and_reason(site):
    console, store, accounts, s = site
    n = max(r["id"] for r in trail(store))
    assert confirm(console, s["li"], "user-role",
                   {"name": "olga", "role": "viewer", "reason": "read only"}).responseCode == 303
    assert confirm(console, s["li"], "user-disable",
                   {"name": "olga", "reason": "left"}).responseCode == 303
    assert users(accounts)["olga"]["disabled_at"] is not None
    assert accounts.sign_in("olga", PASSWORD, "10.0.0.1") is None
    assert confirm(console, s["li"], "user-enable",
                   {"name": "olga", "reason": "back"}).responseCode == 303
    assert confirm(console, s["li"], "user-passwd",
                   {"name": "olga", "password": "a new one 12345", "again": "a new one 12345",
                    "reason": "asked"}).responseCode == 303
    assert users(accounts)["olga"]["role"] == "viewer"
    assert accounts.sign_in("olga", "a new one 12345", "10.0.0.1").role == "viewer"
    rows = [r for r in trail(store, n) if r["subject"] == "olga" and r["actor"] == "li"]
    assert [(r["action"], r["detail"]["reason"]) for r in rows] == [
        ("user role", "read only"), ("user disable", "left"), ("user enable", "back"),
        ("user passwd", "asked")]
    assert rows[0]["detail"]["before"] == {"role": "operator"}


def test_the_only_admin_can_neither_disable_nor_demote_themself(site):
    console, store, accounts, s = site
    n = len(trail(store))
    for name, form, field in (("user-disable", {"name": "li"}, "name"),
                              ("user-role", {"name": "li", "role": "operator"}, "role")):
        req = post(console, s["li"], name, {**form, "reason": "try"})  # at the confirmation
        assert req.responseCode == 409
        assert "&#39;li&#39; is the only enabled admin" in text(req)
        with pytest.raises(auth.AccountError, match="only enabled admin") as e:  # and at once
            if name == "user-disable":
                accounts.set_disabled("li", True, actor="li")
            else:
                accounts.set_role("li", "operator", actor="li")
        assert e.value.field == field
    assert users(accounts)["li"]["role"] == "admin" and len(trail(store)) == n
    # with a second admin it may be done, and then the other one is the last
    accounts.set_role("olga", "admin", actor="setup")
    assert confirm(console, s["li"], "user-disable",
                   {"name": "li", "reason": "handing over"}).responseCode == 303
    with pytest.raises(auth.AccountError, match="'olga' is the only enabled admin"):
        accounts.set_role("olga", "viewer", actor="li")
    accounts.set_role("li", "viewer", actor="olga")  # a disabled admin is no last admin


def test_the_confirmation_checks_again_when_doing(site):
    """Another admin disabled meanwhile: the confirmation of a demotion is refused."""
    console, store, accounts, s = site
    accounts.set_role("olga", "admin", actor="setup")
    form = {"name": "li", "role": "viewer", "reason": "r"}
    assert post(console, s["li"], "user-role", form).responseCode in (None, 200)
    accounts.set_disabled("olga", True, actor="setup")
    req = post(console, s["li"], "user-role", {**form, "confirm": "yes"})
    assert req.responseCode == 409 and "only enabled admin" in text(req)
    assert users(accounts)["li"]["role"] == "admin"


def test_the_cli_refuses_the_last_admin_too(tmp_path, monkeypatch, capsys):
    from bankgate.app import cli

    conf = tmp_path / "gw.toml"
    conf.write_text(f'[gateway]\ndata_dir = "{tmp_path}"\n[n8]\ncreate = true\n')

    def run(*argv, stdin=""):
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        return cli.main(["-c", str(conf), "user", *argv])

    assert run("add", "boss", "--role", "admin", "--password-stdin", "--actor", "li",
               stdin=PASSWORD + "\n") == 0
    assert run("disable", "boss", "--actor", "li") == 1
    assert ("bankgate user disable: name: 'boss' is the only enabled admin"
            in capsys.readouterr().err)
    assert run("role", "boss", "operator", "--actor", "li") == 1
    assert "bankgate user role: role: 'boss' is the only enabled admin" in \
        capsys.readouterr().err
    assert run("add", "deputy", "--role", "admin", "--password-stdin", "--actor", "li",
               stdin=PASSWORD + "\n") == 0
    assert run("role", "boss", "operator", "--actor", "li") == 0
    assert run("list") == 0
    assert "boss                 operator  enabled" in capsys.readouterr().out


@given(st.lists(st.tuples(st.sampled_from(["admin", "operator", "viewer"]), st.booleans()),
                min_size=1, max_size=5),
       st.integers(0, 4), st.sampled_from(["disable", "viewer", "operator"]))
@settings(max_examples=40, deadline=None)
def test_is_last_admin_means_no_enabled_admin_would_be_left(people, pick, change):
    """The rule Accounts applies: a change is refused exactly when it would leave no
    enabled admin while there was one."""
    rows = [{"name": f"u{i}", "role": r, "disabled_at": NOW if off else None}
            for i, (r, off) in enumerate(people)]
    name = rows[pick % len(rows)]["name"]

    def enabled_admins(rs):
        return {u["name"] for u in rs if u["role"] == "admin" and u["disabled_at"] is None}

    after = [dict(u, **({"disabled_at": NOW} if change == "disable" else {"role": change}))
             if u["name"] == name else u for u in rows]
    assert auth.is_last_admin(rows, name) == (bool(enabled_admins(rows))
                                              and not enabled_admins(after))


def test_the_database_down_is_a_503(site):
    console, store, _, s = site
    store.call = lambda fn, *a, **kw: defer.fail(StoreUnavailable("connection refused"))
    for path in ("/admin/users", "/audit"):
        req = request(console, path, session=s["li"])
        assert req.responseCode == 503 and "connection refused" in text(req)


# -- the audit trail --------------------------------------------------------------------


def record(store, at, actor, action, subject, detail=None):
    store.run_sync(lambda tx: audit.record(tx, at, actor, action, subject, detail))


def rows_of(page: str) -> list[list[str]]:
    body = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [[html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def test_a_reversal_shows_actor_action_receipt_and_reason_as_text(site):
    console, store, _, s = site
    record(store, NOW + timedelta(hours=1), "olga", "reverse", "R20261127000042",
           {"reason": "customer paid twice <script>", "bank": "fixed", "amount": 548000,
            "before": {"status": "POSTED"}, "after": {"status": "REVERSED"}})
    req = request(console, "/audit", session=s["olga"])
    page = text(req)
    assert req.responseCode in (None, 200)
    first = rows_of(page)[0]
    assert first[:5] == ["2026-11-27 10:30:00", "olga", "reverse", "R20261127000042",
                         "customer paid twice <script>"]
    assert first[5].split("<br>") == ["before.status: POSTED", "after.status: REVERSED",
                                      "amount: 548000", "bank: fixed"]
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert request(console, "/audit", session=s["vera"]).responseCode == 403


def test_details_of_every_shape_are_lines_of_text(site):
    console, store, _, s = site
    record(store, NOW, "bankgate", "odd", "x", None)
    store.run_sync(lambda tx: tx.conn.execute(model.audit.insert().values(
        at=NOW, actor="hand", action="raw", subject=None, detail="not json <i>")))
    store.run_sync(lambda tx: tx.conn.execute(model.audit.insert().values(
        at=NOW, actor="hand", action="list", subject="y", detail='[1, "two"]')))
    record(store, NOW, "li", "user passwd", "olga",
           {"after": "password changed", "before": None, "nested": {"a": {"b": [1]}}})
    got = {r[2]: r for r in rows_of(text(request(console, "/audit", session=s["li"])))}
    assert got["odd"][5] == "" and got["odd"][4] == ""
    assert got["raw"][3] == "" and got["raw"][5] == "text: not json <i>"
    assert got["list"][5] == 'value: [1, "two"]'
    assert got["user passwd"][5].split("<br>") == [
        "before: -", "after: password changed", 'nested.a: {"b": [1]}']


def test_the_page_query_on_every_backend(store):
    """``audit.page``: newest first by id, each filter, the day range, ``before``."""
    rows = [(NOW + timedelta(hours=h), actor, action, subject) for h, actor, action, subject in (
        (0, "li", "user add", "zhao"), (1, "olga", "reverse", "R1"),
        (25, "olga", "refund", "R2"), (26, "li", "reverse", "R3"), (49, "olga", "reverse", "R4"))]
    for r in rows:
        record(store, *r, {"reason": "because"})

    def subjects(**kw):
        return [r["subject"] for r in store.run_sync(audit.page, readonly=True, **kw)]

    assert subjects() == ["R4", "R3", "R2", "R1", "zhao"]
    assert subjects(limit=2) == ["R4", "R3"]
    assert subjects(actor="olga", action="reverse") == ["R4", "R1"]
    assert subjects(subject="R2") == ["R2"] and subjects(actor="nobody") == []
    assert subjects(since=NOW + timedelta(days=1), until=NOW + timedelta(days=2)) == ["R3", "R2"]
    first = store.run_sync(audit.page, readonly=True, limit=2)
    assert subjects(before=first[-1]["id"]) == ["R2", "R1", "zhao"]
    assert first[0]["detail"] == {"reason": "because"}


@pytest.fixture
def trail_site(site):
    """The site with 7 rows by two actors over three days (and the setup's three)."""
    console, store, _, s = site
    store.run_sync(lambda tx: tx.conn.execute(model.audit.delete()))
    for i in range(7):
        record(store, NOW + timedelta(days=i % 3, minutes=i), ["olga", "li"][i % 2],
               ["refund", "resolve"][i % 2], f"R{i}", {"reason": f"why {i}"})
    return console, store, s


@pytest.mark.parametrize("query, subjects", [
    ({}, ["R6", "R5", "R4", "R3", "R2", "R1", "R0"]),
    ({"actor": "li"}, ["R5", "R3", "R1"]),
    ({"action": "refund", "actor": "olga"}, ["R6", "R4", "R2", "R0"]),
    ({"subject": "R4"}, ["R4"]),
    ({"from": "2026-11-28"}, ["R5", "R4", "R2", "R1"]),
    ({"to": "2026-11-27"}, ["R6", "R3", "R0"]),
    ({"from": "2026-11-28", "to": "2026-11-28"}, ["R4", "R1"]),
    ({"actor": "nobody"}, []),
])
def test_filters(trail_site, query, subjects):
    console, _, s = trail_site
    req = request(console, "/audit", query, session=s["olga"])
    page = text(req)
    assert req.responseCode in (None, 200)
    got = rows_of(page)
    assert [r[3] for r in got if len(r) > 1] == subjects
    if not subjects:
        assert "No audit row matches." in page
    for k, v in query.items():
        assert f'name="{k}" value="{v}"' in page  # the form keeps what was asked


@pytest.mark.parametrize("query, field, message", [
    ({"from": "27.11.2026"}, "from", "expected a date as YYYY-MM-DD"),
    ({"to": "2026-02-30"}, "to", "expected a date as YYYY-MM-DD"),
    ({"from": "2026-11-29", "to": "2026-11-28"}, "from", "is after to"),
    ({"before": "12x"}, "before", "expected a row number"),
    ({"actor": "a" * 65}, "actor", "at most 64 characters"),
    ({"subject": "s" * 101}, "subject", "at most 100 characters"),
])
def test_a_bad_filter_is_named_and_nothing_is_read(trail_site, query, field, message):
    console, store, s = trail_site
    calls = []
    call = store.call
    store.call = lambda *a, **kw: calls.append(a) or call(*a, **kw)
    req = request(console, "/audit", query, session=s["olga"])
    page = text(req)
    assert req.responseCode == 400 and message in page and calls == []
    assert "<table" not in page
    assert re.search(r'<span class="error" role="alert">[^<]*' + re.escape(message), page)


def follow(console, session, query: dict, limit: int = 50) -> tuple[list[str], int]:
    """Every page from ``query`` on, following *Older*: the subjects, and the pages."""
    subjects, pages = [], 0
    while True:
        pages += 1
        assert pages <= limit
        page = text(request(console, "/audit", query, session=session))
        subjects += [r[3] for r in rows_of(page) if len(r) > 1]
        older = re.search(r'<a href="([^"]+)" rel="next">Older</a>', page)
        if not older:
            return subjects, pages
        query = dict(parse_qsl(urlsplit(html.unescape(older.group(1))).query))


def test_pages_of_at_most_200_rows_and_an_older_link(site):
    console, store, _, s = site
    store.run_sync(lambda tx: tx.conn.execute(model.audit.delete()))
    store.run_sync(lambda tx: tx.conn.execute(model.audit.insert(), [
        {"at": NOW + timedelta(seconds=i), "actor": "olga", "action": "refund",
         "subject": f"R{i}", "detail": None} for i in range(450)]))
    page = text(request(console, "/audit", session=s["olga"]))
    assert len(rows_of(page)) == 200 and rows_of(page)[0][3] == "R449"
    subjects, pages = follow(console, s["olga"], {})
    assert pages == 3 and subjects == [f"R{i}" for i in range(449, -1, -1)]
    page = text(request(console, "/audit", {"before": "3"}, session=s["olga"]))
    assert [r[3] for r in rows_of(page)] == ["R1", "R0"] and ">Newest</a>" in page


@given(rows=st.lists(st.tuples(st.sampled_from(["olga", "li", "<b>"]),
                               st.sampled_from(["refund", "reverse", "user add"]),
                               st.integers(0, 3)), max_size=12),
       per_page=st.integers(1, 4),
       query=st.fixed_dictionaries({}, optional={
           "actor": st.sampled_from(["olga", "<b>"]),
           "action": st.sampled_from(["refund", "user add"]),
           "from": st.sampled_from(["2026-11-28", "2026-11-29"]),
           "to": st.sampled_from(["2026-11-28", "2026-11-30"])}))
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_following_older_shows_each_matching_row_once_newest_first(site, monkeypatch, rows,
                                                                   per_page, query):
    console, store, _, s = site
    monkeypatch.setattr(admin, "PAGE", per_page)
    store.run_sync(lambda tx: tx.conn.execute(model.audit.delete()))
    for i, (actor, action, day) in enumerate(rows):
        record(store, NOW + timedelta(days=day), actor, action, f"S{i}")
    lo = datetime.fromisoformat(query.get("from", "2000-01-01"))
    hi = datetime.fromisoformat(query.get("to", "2100-01-01")) + timedelta(days=1)
    want = [f"S{i}" for i, (actor, action, day) in reversed(list(enumerate(rows)))
            if query.get("actor", actor) == actor and query.get("action", action) == action
            and lo <= NOW + timedelta(days=day) < hi]
    if lo >= hi:
        return  # refused as a bad range: the test above
    subjects, pages = follow(console, s["olga"], query)
    assert subjects == want
    assert pages == max(1, -(-len(want) // per_page))  # no empty page at the end


# -- the request body limit -------------------------------------------------------------


class Form(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.seen: list[int] = []

    def render_POST(self, request):
        self.seen.append(len(request.content.read()))
        return b"read"


@pytest.fixture
def limited():
    """A site of 2048-byte bodies; ``site.made``: its requests."""
    root = Resource()
    form = Form()
    root.putChild(b"form", form)
    # its own clock: the connections' idle timeouts must not land on the global reactor
    site = server.ConsoleSite(root, max_body=2048, reactor=Clock())
    site.made = []

    def made(*args):
        site.made.append(server.ConsoleRequest(*args))
        return site.made[-1]

    site.requestFactory = made
    return site, form


def speak(site, head: list[str], body_parts: list[bytes]):
    peer = IPv4Address("TCP", "10.0.0.7", 40000)
    proto = site.buildProtocol(peer)
    tr = StringTransport(peerAddress=peer)
    proto.makeConnection(tr)
    proto.dataReceived("\r\n".join(["POST /form HTTP/1.1", "Host: console", *head])
                       .encode() + b"\r\n\r\n")
    for part in body_parts:
        proto.dataReceived(part)
    return tr


def chunked(*parts: bytes) -> list[bytes]:
    """A chunked body of ``parts`` (empty ones left out: a 0 chunk ends the body)."""
    return [b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p] + [b"0\r\n\r\n"]


@pytest.mark.parametrize("size", [0, 1, 2048])
def test_a_body_up_to_the_limit_is_read(limited, size):
    site, form = limited
    tr = speak(site, [f"Content-Length: {size}"], [b"x" * size])
    assert tr.value().startswith(b"HTTP/1.1 200") and form.seen == [size]
    tr = speak(site, ["Transfer-Encoding: chunked"], chunked(b"y" * (size // 2),
                                                             b"z" * (size - size // 2)))
    assert tr.value().startswith(b"HTTP/1.1 200") and form.seen == [size, size]


def test_a_content_length_over_the_limit_is_refused_before_the_body(limited):
    site, form = limited
    tr = speak(site, ["Content-Length: 2049", "Expect: 100-continue"], [])
    answer = tr.value()
    assert answer.startswith(b"HTTP/1.1 413 ") and answer.count(b"HTTP/1.1") == 1
    assert b"at most 2048 bytes" in answer and b"x-frame-options: DENY" in answer
    assert tr.disconnecting and form.seen == []
    speak(site, ["Content-Length: 99999999999"], [b"x" * 5000])
    assert form.seen == [] and site.made[-1].content.tell() == 0  # nothing kept


def test_a_chunked_body_is_refused_when_it_passes_the_limit(limited):
    site, form = limited
    peer = IPv4Address("TCP", "10.0.0.7", 40000)
    proto = site.buildProtocol(peer)
    tr = StringTransport(peerAddress=peer)
    proto.makeConnection(tr)
    proto.dataReceived(b"POST /form HTTP/1.1\r\nHost: c\r\nTransfer-Encoding: chunked\r\n\r\n")
    proto.dataReceived(chunked(b"a" * 2000)[0])
    assert tr.value() == b"" and not tr.disconnecting  # under the limit: still reading
    proto.dataReceived(chunked(b"b" * 49)[0])
    assert tr.value().startswith(b"HTTP/1.1 413 ") and tr.disconnecting
    for part in chunked(b"c" * 5000):
        proto.dataReceived(part)
    assert form.seen == [] and tr.value().count(b"HTTP/1.1") == 1
    assert site.made[0].content.tell() == 2000  # the chunks under the limit, no more


def test_max_body_in_the_configuration():
    def parse(text):
        return parse_config(tomllib.loads(text), "gw.toml").console

    assert parse("[console]\nmax_body = 4096\n").max_body == 4096
    assert parse("[console]\n").max_body == 65536
    for bad in ("100", "99999999999", '"64k"', "true"):
        with pytest.raises(ConfigError) as e:
            parse(f"[console]\nmax_body = {bad}\n")
        assert e.value.key == "console.max_body"


# -- end to end ----------------------------------------------------------------------------

E2E_CONFIG = """\
[gateway]
data_dir = "{data}"

[database]
url = "sqlite:///{data}/bankgate.db"

[n8]
create = true
demo_customers = 20

[console]
listen = "tcp:{console}:interface=127.0.0.1"
max_body = 4096

[[bank]]
name = "demo-iso8583"
plugin = "ref-iso8583"
bank_code = "104210"
listen = "tcp:{bank}:interface=127.0.0.1"
allow = ["127.0.0.0/8"]
zmk = "{zmk}"
zmk_kcv = "{kcv}"
"""


@pytest.mark.e2e
def test_e2e_users_audit_body_limit_and_sign_in_on_the_running_gateway(tmp_path):
    """``twistd bankgate``: the admin adds a user with a generated password (shown once)
    who then signs in, the audit trail shows it, a body over ``max_body`` is a 413, and
    an ISO 8583 connection that signs in is counted by ``/api/live``."""
    import http.cookiejar
    import socket
    import urllib.error
    import urllib.parse
    import urllib.request

    from bankgate.codec.crypto import kcv
    from bankgate.codec.registry import load_codec
    from bankgate.devtools.gateway import GatewayProcess, free_port

    ports = {"console": free_port(), "bank": free_port()}
    zmk = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    data = tmp_path / "var"
    conf = tmp_path / "gw.toml"
    conf.write_text(E2E_CONFIG.format(data=data, zmk=zmk.hex().upper(),
                                      kcv=kcv(zmk, 3).hex().upper(), **ports))
    gw = GatewayProcess(conf, list(ports.values()), tmp_path / "gw.log")
    gw.start()
    base = f"http://127.0.0.1:{ports['console']}"

    def browser(name, password):
        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        with opener.open(base + "/login") as r:
            token = re.search(r'name="csrf" value="([^"]+)"', r.read().decode()).group(1)
        form = {"csrf": token, "name": name, "password": password, "next": "/"}
        with opener.open(base + "/login", urllib.parse.urlencode(form).encode()) as r:
            page = r.read().decode()
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        return opener, csrf

    try:
        first = re.search(r"password: (\S+)", (data / auth.ADMIN_FILE).read_text()).group(1)
        opener, csrf = browser("admin", first)
        with opener.open(base + "/admin/users") as r:
            assert "admin (you)" in r.read().decode()
        form = {"csrf": csrf, "name": "zhao", "role": "operator", "password": "",
                "again": "", "reason": "night shift"}
        with opener.open(base + "/actions/user-add", urllib.parse.urlencode(form).encode()):
            pass
        form["confirm"] = "yes"
        with opener.open(base + "/actions/user-add",
                         urllib.parse.urlencode(form).encode()) as r:
            [password] = re.findall(r'<code class="secret">(.*?)</code>', r.read().decode())
        zhao, _ = browser("zhao", password)
        with zhao.open(base + "/audit?" + urllib.parse.urlencode({"subject": "zhao"})) as r:
            rows = rows_of(r.read().decode())
        assert [r[1:5] for r in rows] == [["zhao", "console sign-in", "zhao", ""],
                                          ["admin", "user add", "zhao", "night shift"]]
        assert password not in (tmp_path / "gw.log").read_text()
        big = urllib.parse.urlencode({"csrf": csrf, "note": "x" * 5000}).encode()
        with pytest.raises(urllib.error.HTTPError) as e:
            opener.open(base + "/actions/user-add", big)
        assert e.value.code == 413
        e.value.close()
        # an ISO 8583 bank signs in: the live figures count it
        codec = load_codec("ref-iso8583")
        from bankgate.codec.base import BankKeys, BankProfile, Session

        side = Session(BankProfile("demo-iso8583", "ref-iso8583", "104210",
                                   keys=BankKeys(zmk=zmk)))
        with socket.create_connection(("127.0.0.1", ports["bank"]), timeout=30) as s:
            frame = codec.client_encode("signin", {}, side)
            s.sendall(len(frame).to_bytes(2, "big") + frame)
            answer = s.recv(2)
            answer = s.recv(int.from_bytes(answer, "big"))
            assert codec.client_decode(answer, side)["response_code"] == "00"
            with opener.open(base + "/api/live/stream", timeout=30) as events:
                for _ in range(5):  # one event a second; the first may be a second old
                    line = events.readline()
                    while not line.startswith(b"data: "):
                        line = events.readline()
                    [bank] = json.loads(line[6:])["banks"]
                    if bank["signin"]["signed_in"]:
                        break
            assert bank["signin"]["signed_in"] == 1 and bank["signin"]["key_age"] <= 5
    finally:
        gw.stop()
