"""The console's payment actions (bankgate.app.console.payment_actions): a payment at
the counter, a reversal, a refund -- through the console's guard (DummyRequest), over
a real SQLite store and ledger (with the invoice hook) whose pool calls run at once.

The contract the browser tests rely on: an operator on ``/helpdesk/payment?receipt=R``
sees a link "Reverse" to ``/actions/reverse?receipt=R``; its form has a ``reason``
textarea and "Continue"; the confirmation has "Confirm" (``confirm=yes``); confirming
answers 303 to ``/helpdesk/payment?receipt=R``, which shows REVERSED and the notice; a
viewer gets 403 and sees no link; the audit row is ``reverse`` with the receipt and
the reason."""

from __future__ import annotations

from datetime import datetime

import pytest
from conftest import TODAY, FakeClock, make_store
from console_helpers import synchronous
from helpdesk_helpers import SCRIPT, extra_customers
from invoice_helpers import setup
from ledger_helpers import pay
from test_backoffice import audits, tables
from test_console_helpdesk import html, request
from twisted.internet.task import Clock

from bankgate.app.console import auth, helpdesk, payment_actions
from bankgate.app.console.server import Console
from bankgate.domain.backoffice import BackOffice
from bankgate.store import model

REASON = "bank called: its reversal (0420) never came"


class Site:
    def __init__(self, tmp_path):
        self.pdfs = str(tmp_path / "pdf")
        self.store = make_store("sqlite", tmp_path)
        self.clock = FakeClock()
        _cfg, self.ledger, self.invoices, _ = setup(self.store, self.clock, tmp_path)
        extra_customers(self.store)  # 100000502 is named <script>
        synchronous(self.store)
        self.console = Console(None, Clock(), run_blocking=self.store.call,
                               wall=datetime.fromtimestamp)
        helpdesk.mount(self.console, self.store, lambda: TODAY)
        payment_actions.add(self.console, BackOffice(self.ledger))
        self.op = self.session("olga", "operator")
        self.viewer = self.session("vera", "viewer")

    def session(self, name, role):
        return self.console.sessions.create(auth.Account(name, role, datetime(2026, 1, 1),
                                                         False))

    def get(self, path, args=None, session=None):
        return request(self.console, path, args, session=session or self.op)

    def post(self, path, args, session=None, **kw):
        session = session or self.op
        return request(self.console, path, args, session=session, method=b"POST",
                       csrf=kw.pop("csrf", session.csrf))

    def paid(self, serial="S1", **kw) -> str:
        return self.ledger.pay(pay(serial, **kw)).receipt_no


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    yield s
    s.store.stop()


def location(req) -> str:
    return req.responseHeaders.getRawHeaders(b"location")[0].decode()


# -- the links ---------------------------------------------------------------------------


def test_an_operator_sees_reverse_and_refund_on_a_posted_payment_a_viewer_does_not(site):
    r = site.paid()
    page = html(site.get("/helpdesk/payment", {"receipt": r}))
    assert f'<h1>Payment {r}</h1>' in page
    assert f'href="/actions/reverse?receipt={r}">Reverse</a>' in page
    assert f'href="/actions/refund?receipt={r}">Refund</a>' in page
    page = html(site.get("/helpdesk/payment", {"receipt": r}, session=site.viewer))
    assert f"<h1>Payment {r}</h1>" in page and "/actions/" not in page


def test_no_link_once_the_invoice_is_printed_or_the_payment_undone(site):
    r = site.paid()
    site.invoices.issue_stock("fixed", 1, 5, actor="li")
    site.invoices.print(r, actor="li", out_dir=site.pdfs)
    page = html(site.get("/helpdesk/payment", {"receipt": r}))
    assert "void the invoice before a reversal or a refund" in page
    assert "/actions/reverse" not in page and "/actions/refund" not in page
    r2 = site.paid("S2", customer="100000200", amount=1000000)
    site.ledger.refund(r2, "moved out", "li")
    page = html(site.get("/helpdesk/payment", {"receipt": r2}))
    assert "<dd>REFUNDED" in page
    assert "/actions/reverse" not in page and "/actions/refund" not in page


def test_an_operator_sees_the_counter_payment_on_an_active_customers_page(site):
    page = html(site.get("/helpdesk/customer", {"no": "100000123"}))
    assert ('href="/actions/counter?customer=100000123">Take a payment at the counter</a>'
            in page)
    viewer = html(site.get("/helpdesk/customer", {"no": "100000123"}, session=site.viewer))
    assert "张三" in viewer and "/actions/" not in viewer
    suspended = html(site.get("/helpdesk/customer", {"no": "100000300"}))
    assert "李四" in suspended and "/actions/" not in suspended


def test_a_payment_page_by_an_unknown_or_bad_receipt(site):
    assert site.get("/helpdesk/payment", {"receipt": "20261127999999999999"}).responseCode \
        == 404
    assert site.get("/helpdesk/payment", {"receipt": "1" * 21}).responseCode == 400


# -- the reversal, as the browser tests do it -------------------------------------------------


def test_an_operator_reverses_a_payment_with_a_reason_and_a_confirmation(site):
    r = site.paid()
    form = html(site.get("/actions/reverse", {"receipt": r}))
    assert f'name="receipt" value="{r}"' in form
    assert '<textarea id="f-reason" name="reason"' in form and ">Continue</button>" in form

    before = tables(site.store)
    req = site.post("/actions/reverse", {"receipt": r, "reason": REASON})
    page = html(req)
    assert req.responseCode in (None, 200)
    assert 'name="confirm" value="yes">Confirm</button>' in page
    assert "100000123 张三" in page and "5480.00" in page and "POSTED → REVERSED" in page
    assert REASON in page
    assert tables(site.store) == before  # nothing done before the confirmation

    req = site.post("/actions/reverse", {"receipt": r, "reason": REASON, "confirm": "yes"})
    assert req.responseCode == 303
    assert location(req) == f"/helpdesk/payment?receipt={r}"
    page = html(site.get("/helpdesk/payment", {"receipt": r}))
    assert "<dd>REVERSED" in page and f"Payment {r} reversed." in page
    assert "reversed by an operator" in page and "by olga" in page
    [a] = audits(site.store, "reverse")
    assert (a["actor"], a["subject"], a["detail"]["reason"]) == ("olga", r, REASON)
    # confirming again (a second click) is refused and writes nothing more
    again = site.post("/actions/reverse", {"receipt": r, "reason": REASON, "confirm": "yes"})
    assert again.responseCode == 409 and "payment is reversed" in html(again)
    assert len(audits(site.store, "reverse")) == 1


# -- the guard, refusals and bad fields, for each action ---------------------------------------


def forms(site) -> dict:
    r = site.paid()
    return {
        "reverse": {"receipt": r, "reason": REASON},
        "refund": {"receipt": r, "reason": "customer moved out"},
        "counter": {"customer": "100000200", "amount": "100", "bills": "",
                    "reason": "receipt book 12, slip 7"},
    }


@pytest.mark.parametrize("action", ["reverse", "refund", "counter"])
def test_a_viewer_and_a_post_without_the_token_are_refused(site, action):
    form = forms(site)[action]
    before = tables(site.store)
    path = f"/actions/{action}"
    assert site.get(path, session=site.viewer).responseCode == 403
    req = site.post(path, {**form, "confirm": "yes"}, session=site.viewer)
    assert req.responseCode == 403 and "viewer" in html(req)
    req = site.post(path, {**form, "confirm": "yes"}, csrf="")
    assert req.responseCode == 403 and "security token" in html(req)
    assert tables(site.store) == before


@pytest.mark.parametrize("action, change, field, message", [
    ("reverse", {"receipt": "12x"}, "receipt", "up to 20 digits"),
    ("refund", {"reason": ""}, "reason", "say why"),
    ("counter", {"amount": "abc"}, "amount", "expected yuan with up to two decimals"),
    ("counter", {"amount": "0.00"}, "amount", "expected 0.01 to"),
    ("counter", {"bills": "B0001,B0001"}, "bills", "bill B0001 is named twice"),
    ("counter", {"customer": "1 2"}, "customer", "without spaces"),
])
def test_a_bad_field_is_named_next_to_it_and_nothing_is_written(site, action, change, field,
                                                                 message):
    form = {**forms(site)[action], **change}
    before = tables(site.store)
    req = site.post(f"/actions/{action}", {**form, "confirm": "yes"})
    page = html(req)
    assert req.responseCode == 400
    # the message stands right after its field
    start = page.index(f'name="{field}"')
    assert message in page[start:page.index("<label", start)
                           if "<label" in page[start:] else None]
    assert 'class="error"' in page
    assert tables(site.store) == before


def _closed(site, form):
    site.ledger.cutoff("fixed", TODAY)
    return "closed: refund it instead"


def _printed(site, form):
    site.invoices.issue_stock("fixed", 1, 5, actor="li")
    site.invoices.print(form["receipt"], actor="li", out_dir=site.pdfs)
    return "invoice printed: void it first"


def _suspended(site, form):
    form["customer"] = "100000300"
    return "account is suspended"


def _wrong_bills(site, form):
    form["bills"] = "B0010"
    return "the bills named come to 10000.00 yuan"


@pytest.mark.parametrize("action, case", [("reverse", _closed), ("refund", _printed),
                                          ("counter", _suspended), ("counter", _wrong_bills)])
@pytest.mark.parametrize("confirm", [False, True])
def test_a_refused_action_says_why_and_writes_nothing(site, action, case, confirm):
    form = forms(site)[action]
    message = case(site, form)
    before = tables(site.store)
    req = site.post(f"/actions/{action}", {**form, **({"confirm": "yes"} if confirm else {})})
    page = html(req)
    assert req.responseCode == 409
    assert message in page and "nothing was changed" in page
    assert 'name="confirm"' not in page  # back to the form, no confirmation
    assert tables(site.store) == before


# -- the refund and the counter, done ---------------------------------------------------------


def test_an_operator_refunds_a_payment(site):
    form = forms(site)["refund"]
    r = form["receipt"]
    page = html(site.post("/actions/refund", form))
    assert "POSTED → REFUNDED" in page and "customer moved out" in page
    req = site.post("/actions/refund", {**form, "confirm": "yes"})
    assert req.responseCode == 303 and location(req) == f"/helpdesk/payment?receipt={r}"
    page = html(site.get("/helpdesk/payment", {"receipt": r}))
    assert "<dd>REFUNDED" in page and f"Payment {r} refunded." in page
    [a] = audits(site.store, "refund")
    assert (a["actor"], a["subject"], a["detail"]["reason"]) == ("olga", r,
                                                                 "customer moved out")


def test_an_operator_takes_a_payment_at_the_counter(site):
    form = html(site.get("/actions/counter", {"customer": "100000123"}))
    assert 'name="customer" value="100000123"' in form and 'name="amount"' in form
    args = {"customer": "100000123", "amount": "5500", "bills": "",
            "reason": "receipt book 12, slip 7"}
    page = html(site.post("/actions/counter", args))
    assert "100000123 张三" in page and "5480.00 (late fees 130.00)" in page
    assert "Kept as prepaid</dt><dd>20.00" in page and "Owed after</dt><dd>0.00" in page
    assert count_payments(site) == 0
    req = site.post("/actions/counter", {**args, "confirm": "yes"})
    assert req.responseCode == 303
    receipt = location(req).rsplit("=", 1)[1]
    assert location(req) == f"/helpdesk/payment?receipt={receipt}"
    page = html(site.get("/helpdesk/payment", {"receipt": receipt}))
    assert f"Payment taken at the counter: receipt {receipt}: 5500.00 yuan" in page
    assert "serial counter-20261127-000001" in page
    assert "<dd>counter</dd>" in page and "<dd>POSTED" in page
    [a] = audits(site.store, "counter-pay")
    assert (a["actor"], a["subject"], a["detail"]["reason"]) == (
        "olga", receipt, "receipt book 12, slip 7")
    assert count_payments(site) == 1


def count_payments(site) -> int:
    return tables(site.store)[model.payment.name]


def test_html_in_a_name_or_a_reason_is_shown_as_text(site):
    args = {"customer": "100000502", "amount": "1", "bills": "",
            "reason": "<script>alert(3)</script>"}
    page = html(site.post("/actions/counter", args))
    assert SCRIPT not in page and "<script>alert(3)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in page
