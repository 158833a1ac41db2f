"""The back-office action pages (bankgate.app.console.actions): form, confirmation,
reason, refusal -- with a toy action over an in-memory "store" whose pool calls run at
once, through the console's guard (DummyRequest)."""

from __future__ import annotations

from datetime import datetime

import pytest
from test_console_helpdesk import html, request
from twisted.internet import defer
from twisted.internet.task import Clock

from bankgate.app.console import actions, auth
from bankgate.app.console.server import Console
from bankgate.store.db import StoreUnavailable


class Store:
    """A pool that runs at once; ``down`` makes it answer as a lost database."""

    def __init__(self):
        self.down = False

    def call(self, fn, *args):
        if self.down:
            return defer.fail(StoreUnavailable("connection refused"))
        return defer.maybeDeferred(fn, *args)


class Credit(actions.Action):
    """Credit an account: refuses a frozen one, refuses amounts over 100."""

    name, title, verb = "credit", "Credit an account", "Credit"
    fields = (actions.Field("account", "Account"),
              actions.Field("amount", "Amount", kind="money"),
              actions.Field("kind", "Kind", kind="select",
                            choices=(("cash", "Cash"), ("card", "Card"))))
    warning = "This cannot be undone."

    def __init__(self, store):
        super().__init__(store)
        self.balances = {"A1": 0, "FROZEN": 0}
        self.audit: list[tuple] = []

    def check(self, values):
        if not values["amount"].isdigit():
            raise actions.FieldError("amount", "expected whole yuan")
        return {**values, "amount": int(values["amount"])}

    def preview(self, parsed):
        if parsed["account"] not in self.balances:
            raise actions.ActionRefused(f"no account {parsed['account']}", "account")
        return [("Account", parsed["account"]), ("Amount", f"{parsed['amount']}.00")]

    def perform(self, parsed, actor, reason):
        if parsed["account"] == "FROZEN":
            raise actions.ActionRefused("the account is frozen")
        self.balances[parsed["account"]] += parsed["amount"]
        self.audit.append((actor, parsed["account"], parsed["amount"], reason))
        return actions.Done(f"credited {parsed['amount']} to {parsed['account']}",
                            "/helpdesk")


def account(name, role):
    return auth.Account(name, role, datetime(2026, 1, 1), False)


@pytest.fixture
def site():
    store = Store()
    console = Console(None, Clock(), run_blocking=store.call, wall=datetime.fromtimestamp)
    credit = Credit(store)
    actions.mount(console, [credit])
    op = console.sessions.create(account("olga", "operator"))
    viewer = console.sessions.create(account("vera", "viewer"))
    return console, credit, op, viewer, store


FORM = {"account": "A1", "amount": "30", "kind": "cash", "reason": "counter slip 17"}


def post(console, session, args, **kw):
    return request(console, "/actions/credit", args, session=session, method=b"POST",
                   csrf=kw.pop("csrf", session.csrf), **kw)


def test_the_form_is_filled_from_the_query(site):
    console, _, op, _, _ = site
    req = request(console, "/actions/credit", {"account": "A1"}, session=op)
    page = html(req)
    assert req.responseCode in (None, 200)
    assert 'name="account" value="A1"' in page and 'name="reason"' in page
    assert f'name="csrf" value="{op.csrf}"' in page


def test_continue_shows_the_confirmation_and_does_nothing(site):
    console, credit, op, _, _ = site
    req = post(console, op, FORM)
    page = html(req)
    assert req.responseCode in (None, 200)
    assert 'name="confirm" value="yes"' in page and "30.00" in page
    assert "counter slip 17" in page and "This cannot be undone." in page
    assert credit.balances["A1"] == 0 and credit.audit == []


def test_confirm_does_it_once_with_actor_and_reason_then_shows_a_notice(site):
    console, credit, op, _, _ = site
    req = post(console, op, {**FORM, "confirm": "yes"})
    assert req.responseCode == 303
    assert req.responseHeaders.getRawHeaders(b"location") == [b"/helpdesk"]
    assert credit.balances["A1"] == 30
    assert credit.audit == [("olga", "A1", 30, "counter slip 17")]
    page = html(request(console, "/actions/credit", session=op))
    assert "credited 30 to A1" in page
    assert "credited 30 to A1" not in html(request(console, "/actions/credit", session=op))


@pytest.mark.parametrize("field, value, message", [
    ("reason", "", "say why"),
    ("reason", "x" * 501, "at most 500"),
    ("amount", "", "required"),
    ("amount", "3.5", "expected whole yuan"),
    ("kind", "cheque", "choose one of the list"),
    ("account", "A" * 201, "at most 200"),
])
def test_a_bad_field_is_named_next_to_it_and_nothing_is_done(site, field, value, message):
    console, credit, op, _, _ = site
    req = post(console, op, {**FORM, field: value, "confirm": "yes"})
    page = html(req)
    assert req.responseCode == 400
    assert message in page and 'class="error"' in page
    assert credit.balances["A1"] == 0 and credit.audit == []


def test_a_refusal_at_preview_names_the_field(site):
    console, credit, op, _, _ = site
    req = post(console, op, {**FORM, "account": "NOPE"})
    page = html(req)
    assert req.responseCode == 409
    assert "no account NOPE -- nothing was changed." in page
    assert credit.audit == []


def test_a_refusal_when_doing_changes_nothing(site):
    console, credit, op, _, _ = site
    req = post(console, op, {**FORM, "account": "FROZEN", "confirm": "yes"})
    assert req.responseCode == 409
    assert "the account is frozen -- nothing was changed." in html(req)
    assert credit.balances == {"A1": 0, "FROZEN": 0} and credit.audit == []


def test_a_viewer_and_a_post_without_the_token_are_refused_before_the_action(site):
    console, credit, op, viewer, _ = site
    assert request(console, "/actions/credit", session=viewer).responseCode == 403
    assert post(console, viewer, {**FORM, "confirm": "yes"}).responseCode == 403
    assert post(console, op, {**FORM, "confirm": "yes"}, csrf="").responseCode == 403
    assert credit.audit == []


def test_html_in_a_field_is_shown_as_text(site):
    console, _, op, _, _ = site
    page = html(post(console, op, {**FORM, "reason": "<script>alert(1)</script>"}))
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_the_database_down_is_a_503_and_nothing_is_done(site):
    console, credit, op, _, store = site
    store.down = True
    req = post(console, op, {**FORM, "confirm": "yes"})
    assert req.responseCode == 503 and "connection refused" in html(req)
    assert credit.audit == []
