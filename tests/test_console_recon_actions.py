"""The back-office pages of reconciliation, invoices and card debits
(bankgate.app.console.recon_actions): the exceptions page, the card-debit queue,
the invoice PDFs, and the actions -- resolve, post by hand (手工补账), invoice
print / reprint / void, send a card debit again (重发卡扣) -- through the console's
guard (DummyRequest) over a real SQLite store whose pool calls run at once.

Every action: a viewer gets 403, a post without the CSRF token 403, a refusal
writes nothing (the rows are counted before and after), a good one writes once,
audited with the actor, the reason and the state before and after, and shows its
notice.  The CLI twins are at the end."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import BANKS, NOW, TODAY, FakeClock, make_store, seed_fixture
from console_helpers import synchronous
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from invoice_helpers import invoice_config
from ledger_helpers import bills, check_books, pay, rev
from test_console_helpdesk import html, request
from test_recon import fixed_statement
from twisted.internet.task import Clock

from bankgate.app import wiring
from bankgate.app.config import BankConfig, ReconPolicy, load_config
from bankgate.app.console import auth, helpdesk, recon_actions
from bankgate.app.console.server import Console
from bankgate.canon import messages as m
from bankgate.canon.messages import Outcome
from bankgate.codec.registry import load_codec
from bankgate.domain import carddebit
from bankgate.domain import reconcile as R
from bankgate.domain.carddebit import CardDebits, DebitBank, utility_serial
from bankgate.domain.invoices import make_hook
from bankgate.domain.ledger import BankPolicy, Ledger
from bankgate.domain.withholding import WithholdingOptions
from bankgate.store import model
from bankgate.store import recon as rsql
from bankgate.store import withholding as wsql
from bankgate.store.recon import customers_with_open_bills

ACCT = "6222020200012345678"
OPTIONS = {"dl": WithholdingOptions(enabled=True, utility_code="UT01",
                                    debit_host="tcp:127.0.0.1:1", debit_timeout=30.0)}


class Link:
    """The debit host's link: records each exchange; the answer never comes."""

    def __init__(self):
        self.sent: list[tuple[str, str]] = []

    def exchange(self, kind, frame, match, timeout):
        from twisted.internet import defer

        self.sent.append((kind, match))
        return defer.Deferred()


class Site:
    """The console with this module's pages over one SQLite day."""

    def __init__(self, tmp_path):
        self.clock = FakeClock()
        self.store = store = make_store("sqlite", tmp_path)
        seed_fixture(store)
        store.initial_paid = bills(store)
        cfg = invoice_config(tmp_path)
        banks = {**BANKS, "dl": BankPolicy("dl", "103210", policy="partial")}
        self.ledger = Ledger(store, banks, now=self.clock,
                             hooks=[make_hook(wiring.invoice_settings(cfg))])
        self.invoices = wiring.invoices(cfg, store, self.clock)
        bank = BankConfig(name="any", plugin="ref-fixed", bank_code="106210",
                          exchange_dir=str(tmp_path / "exchange"),
                          reconcile=ReconPolicy(pdf=False))
        self.rec = R.Reconciler(self.ledger, bank, load_codec("ref-fixed"),
                                data_dir=str(tmp_path), now=self.clock)
        self.link = Link()
        codec = load_codec("ref-delim")
        self.debits = CardDebits(self.ledger, {"dl": DebitBank("dl", "103210", OPTIONS["dl"],
                                                               codec, self.link)},
                                 Clock(), self.clock, run_db=lambda f, *a: _now(f, *a))
        self.kicks = 0

        def kick():
            self.kicks += 1
            self.debits.kick()

        synchronous(store)
        self.console = Console(None, Clock(), run_blocking=store.call,
                               wall=datetime.fromtimestamp)
        helpdesk.mount(self.console, store, lambda: TODAY)
        recon_actions.mount_pages(self.console, store, now=self.clock,
                                  reconcilers={"any": self.rec}, invoices=self.invoices,
                                  options=OPTIONS, kick=kick)
        at = datetime(2026, 1, 1)
        self.op = self.console.sessions.create(auth.Account("olga", "operator", at, False))
        self.viewer = self.console.sessions.create(auth.Account("vera", "viewer", at, False))

    # -- requests ------------------------------------------------------------------

    def get(self, path, args=None, session=None):
        return request(self.console, path, args, session=session or self.op)

    def act(self, name, form, *, confirm=True, session=None, csrf=None):
        s = session or self.op
        args = {**form, **({"confirm": "yes"} if confirm else {})}
        return request(self.console, f"/actions/{name}", args, session=s, method=b"POST",
                       csrf=s.csrf if csrf is None else csrf)

    # -- what the tests look at --------------------------------------------------------

    def rows(self, table, *where):
        with self.store.engine.connect() as c:
            return [dict(r) for r in c.execute(sa.select(table).where(*where)).mappings()]

    def audit(self, action):
        rows = self.rows(model.audit, model.audit.c.action == action)
        for r in rows:
            r["detail"] = json.loads(r["detail"]) if r["detail"] else {}
        return rows

    def snapshot(self):
        """Every table an action here may write."""
        out = []
        for t in (model.payment, model.journal, model.recon_item, model.audit, model.invoice,
                  model.debit, model.allocation, self.store.n8["bill"]):
            with self.store.engine.connect() as c:
                out.append(sorted(tuple(map(str, r)) for r in c.execute(sa.select(t))))
        return out


def _now(f, *a):
    from twisted.internet import defer

    return defer.maybeDeferred(f, *a)


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    yield s
    s.store.stop()


DAY = [("S001", TODAY, "100000123", 15000), ("S002", TODAY, "100000200", 20100),
       ("S003", TODAY, "100000123", 100), ("S005", TODAY, "999999999", 12000),
       ("S007", TODAY, "100000300", 5000)]


def reconcile_day(s: Site) -> dict:
    """Bank 'any' on TODAY: S001 matched, S002 the amount differs, S003 reversed by
    the bank before its payment came (reversal first), S005 for a customer the
    utility does not know (the run's post is refused: the journal keeps that
    refusal), S007 for a suspended customer.  Returns the items by serial."""
    ok = Outcome.OK
    assert s.ledger.pay(pay("S001", "100000123", 15000, bank="any")).outcome is ok
    assert s.ledger.pay(pay("S002", "100000200", 20000, bank="any")).outcome is ok
    assert s.ledger.reverse(rev("R003", "S003", "100000123", 100, bank="any")).outcome is (
        Outcome.ORIGINAL_NOT_FOUND)
    rep = s.rec.reconcile(fixed_statement("106210", DAY), TODAY)
    assert rep.status == "EXCEPTIONS"
    items = {r["serial"]: r for r in s.rows(model.recon_item)}
    assert {k: (v["category"], v["action"]) for k, v in items.items() if k != "S001"} == {
        "S002": ("AMOUNT_DIFFERS", "EXCEPTION"), "S003": ("BANK_ONLY", "EXCEPTION"),
        "S005": ("BANK_ONLY", "EXCEPTION"), "S007": ("BANK_ONLY", "EXCEPTION")}
    assert "not found at the utility" in items["S005"]["detail"]
    return items


# -- the exceptions page ---------------------------------------------------------------------


def test_the_exceptions_page_lists_the_open_ones_with_both_records(site):
    items = reconcile_day(site)
    req = site.get("/exceptions", session=site.viewer)
    page = html(req)
    assert req.responseCode in (None, 200)
    assert "any 2026-11-27" in page and "run 1, 4 open" in page
    assert "amount or customer differs" in page and "bank only (单边账)" in page
    # the bank's record and the gateway's, side by side
    assert "customer 100000200, 201.00" in page
    s002 = site.rows(model.payment, model.payment.c.serial == "S002")[0]
    assert f"receipt {s002['receipt_no']} (posted), customer 100000200, 200.00" in page
    assert "customer 999999999, 120.00" in page
    # a viewer gets no action
    assert "/actions/" not in page
    page = html(site.get("/exceptions"))
    for serial in ("S002", "S003", "S005", "S007"):
        assert f"/actions/resolve?exception={items[serial]['id']}" in page
    # only a bank-only record naming no standing payment, whose serial the journal
    # has not or only as a refusal, may be posted by hand
    assert f"/actions/recon-post?exception={items['S005']['id']}" in page
    assert f"/actions/recon-post?exception={items['S007']['id']}" in page
    assert f"/actions/recon-post?exception={items['S002']['id']}" not in page
    assert f"/actions/recon-post?exception={items['S003']['id']}" not in page  # reversed first


def test_newest_settle_date_first(site):
    reconcile_day(site)
    earlier = TODAY - timedelta(days=1)
    assert site.ledger.pay(pay("E001", "100000200", 20000, bank="any", d=earlier)).outcome is (
        Outcome.OK)
    site.rec.reconcile(fixed_statement("106210", [("E001", earlier, "100000200", 20001)],
                                       d=earlier), earlier)
    page = html(site.get("/exceptions"))
    assert page.index("any 2026-11-27") < page.index("any 2026-11-26")


# -- resolve an exception --------------------------------------------------------------------


def test_resolve_confirms_then_writes_once_with_the_reason_as_the_note(site):
    items = reconcile_day(site)
    item = items["S002"]["id"]
    form = {"exception": str(item), "reason": "bank confirmed the utility's amount"}
    before = site.snapshot()
    page = html(site.act("resolve", form, confirm=False))
    assert "Please check, then confirm" in page and "amount or customer differs" in page
    assert "customer 100000200, 201.00" in page
    assert site.snapshot() == before  # the confirmation writes nothing
    req = site.act("resolve", form)
    assert req.responseCode == 303
    assert req.responseHeaders.getRawHeaders(b"location") == [b"/exceptions"]
    row = site.rows(model.recon_item, model.recon_item.c.id == item)[0]
    assert (row["action"], row["resolved_by"], row["resolved_note"]) == (
        "RESOLVED", "olga", "bank confirmed the utility's amount")
    assert row["resolved_at"] == NOW
    [a] = site.audit("recon-resolve")
    assert (a["actor"], a["subject"]) == ("olga", f"item {item}")
    assert a["detail"]["reason"] == "bank confirmed the utility's amount"
    assert a["detail"]["before"]["action"] == "EXCEPTION"
    assert a["detail"]["after"]["action"] == "RESOLVED"
    page = html(site.get("/exceptions"))
    assert f"Exception {item} (any 2026-11-27, AMOUNT_DIFFERS serial S002) resolved." in page
    resolved = page[page.index("Resolved lately"):]
    assert "olga" in resolved and "bank confirmed the utility&#39;s amount" in resolved
    # again: refused, nothing written
    after = site.snapshot()
    req = site.act("resolve", form)
    assert req.responseCode == 409
    assert "is not an open exception: it is RESOLVED by olga" in html(req)
    assert site.snapshot() == after


def test_html_in_a_note_is_shown_as_text(site):
    items = reconcile_day(site)
    site.act("resolve", {"exception": str(items["S003"]["id"]),
                         "reason": "<script>alert(1)</script>"})
    page = html(site.get("/exceptions", session=site.viewer))
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


@pytest.mark.parametrize("name", ["resolve", "recon-post"])
def test_a_viewer_or_a_post_without_the_token_changes_nothing(site, name):
    items = reconcile_day(site)
    form = {"exception": str(items["S005"]["id"]), "customer": "100000123",
            "reason": "bank confirmed"}
    before = site.snapshot()
    assert site.get(f"/actions/{name}", session=site.viewer).responseCode == 403
    assert site.act(name, form, session=site.viewer).responseCode == 403
    assert site.act(name, form, csrf="").responseCode == 403
    assert site.act(name, form, csrf="forged").responseCode == 403
    assert site.snapshot() == before


@pytest.mark.parametrize("form, status, message", [
    ({"exception": "x"}, 400, "expected an item number"),
    ({"exception": "99999"}, 409, "no reconciliation item 99999"),
    ({"reason": ""}, 400, "say why"),
])
def test_resolve_refusals_write_nothing(site, form, status, message):
    items = reconcile_day(site)
    before = site.snapshot()
    req = site.act("resolve", {"exception": str(items["S002"]["id"]), "reason": "done",
                               **form})
    assert req.responseCode == status and message in html(req)
    assert site.snapshot() == before


# -- post a bank-only record by hand (手工补账) ------------------------------------------------


def test_post_by_hand_to_a_corrected_customer_in_one_transaction(site):
    items = reconcile_day(site)
    item = items["S005"]["id"]
    refused = site.rows(model.journal, model.journal.c.serial == "S005")
    assert [(j["kind"], j["outcome"], j["payment_id"]) for j in refused] == [
        ("PAY", "NOT_FOUND", None)]  # the run's own post was refused
    form = {"exception": str(item), "customer": "100000123",
            "reason": "bank mistyped the customer, ticket 5678"}
    before = site.snapshot()
    page = html(site.act("recon-post", form, confirm=False))
    assert "120.00 to customer 100000123 张三" in page
    assert "the journal&#39;s refusal of this serial (NOT_FOUND" in page
    assert site.snapshot() == before
    req = site.act("recon-post", form)
    assert req.responseCode == 303, html(req)
    [p] = site.rows(model.payment, model.payment.c.serial == "S005")
    assert (p["customer_no"], p["amount"], p["status"], p["source"], p["bank"]) == (
        "100000123", 12000, "POSTED", "recon", "any")
    assert p["trade_date"] == TODAY and p["run_id"] == items["S005"]["run_id"]
    [j] = site.rows(model.journal, model.journal.c.serial == "S005")
    assert (j["outcome"], j["payment_id"]) == ("OK", p["id"])
    row = site.rows(model.recon_item, model.recon_item.c.id == item)[0]
    assert (row["action"], row["resolved_by"], row["payment_id"]) == ("RESOLVED", "olga", p["id"])
    assert row["resolved_note"].startswith(f"posted by hand as receipt {p['receipt_no']} to"
                                           " customer 100000123: bank mistyped")
    [a] = site.audit("recon-post")
    assert (a["actor"], a["subject"]) == ("olga", f"item {item}")
    d = a["detail"]
    assert d["reason"] == "bank mistyped the customer, ticket 5678"
    assert (d["receipt_no"], d["customer_no"], d["bank_customer_no"], d["amount"]) == (
        p["receipt_no"], "100000123", "999999999", 12000)
    assert d["before"]["action"] == "EXCEPTION" and d["after"] == {
        "action": "RESOLVED", "detail": row["detail"], "payment_id": p["id"]}
    assert d["replaced"]["outcome"] == "NOT_FOUND"
    assert [x["actor"] for x in site.audit("post")] == ["olga"]  # the ledger's own row
    check_books(site.store)
    assert f"posted by hand as receipt {p['receipt_no']}" in html(site.get("/exceptions"))
    # posting twice does not post twice
    after = site.snapshot()
    req = site.act("recon-post", form)
    assert req.responseCode == 409 and "not an open exception" in html(req)
    assert site.snapshot() == after
    # the bank sends the statement again: its record still names its own customer
    rep = site.rec.reconcile(fixed_statement("106210", DAY), TODAY)
    again = {i.serial: i for i in rep.items if i.serial}["S005"]
    assert (again.category, again.action) == ("AMOUNT_DIFFERS", "EXCEPTION")
    assert "customer: bank 999999999, utility 100000123" in again.detail
    assert len(site.rows(model.payment, model.payment.c.serial == "S005")) == 1


def test_a_refusal_when_posting_rolls_back_the_journal_too(site):
    items = reconcile_day(site)
    before = site.snapshot()
    # straight to the confirmation's post: the ledger refuses a suspended customer
    req = site.act("recon-post", {"exception": str(items["S005"]["id"]),
                                  "customer": "100000300", "reason": "try"})
    assert req.responseCode == 409
    page = html(req)
    assert "customer 100000300 is locked or suspended -- nothing was changed." in page
    assert 'class="error"' in page  # next to the customer field
    assert site.snapshot() == before  # the refused claim is still there, as it was


@pytest.mark.parametrize("serial, customer, message", [
    ("S003", "", "the bank reversed serial S003 before its payment arrived"),
    ("S002", "", "only a record the bank has and the gateway does not (BANK_ONLY)"),
    ("S007", "", "customer 100000300 is locked or suspended"),
    ("S005", "", "customer 999999999 not found at the utility"),
    ("S005", "100000400", "customer 100000400 has nothing open to pay"),
    ("S005", "12 34", "expected a customer number"),
])
def test_post_refusals_write_nothing(site, serial, customer, message):
    items = reconcile_day(site)
    form = {"exception": str(items[serial]["id"]), "customer": customer, "reason": "r"}
    before = site.snapshot()
    for confirm in (False, True):
        req = site.act("recon-post", form, confirm=confirm)
        assert req.responseCode in (400, 409)
        assert message in html(req)
    assert site.snapshot() == before


def test_no_post_by_hand_while_the_date_is_being_reconciled(site):
    items = reconcile_day(site)
    site.store.run_sync(rsql.lock_acquire, "any", TODAY, "node-2:4711", NOW, 1800)
    before = site.snapshot()
    req = site.act("recon-post", {"exception": str(items["S005"]["id"]),
                                  "customer": "100000123", "reason": "r"})
    assert req.responseCode == 409
    assert "any 2026-11-27 is being reconciled right now (node-2:4711)" in html(req)
    assert site.snapshot() == before


def test_a_serial_posted_then_reversed_cannot_be_posted_again(site):
    assert site.ledger.pay(pay("S009", "100000200", 20000, bank="any")).outcome is Outcome.OK
    assert site.ledger.reverse(rev("R009", "S009", "100000200", 20000, bank="any")).outcome is (
        Outcome.OK)
    site.rec.reconcile(fixed_statement("106210", [("S009", TODAY, "100000200", 20000)]), TODAY)
    [item] = [r for r in site.rows(model.recon_item) if r["serial"] == "S009"]
    assert (item["category"], item["action"]) == ("BANK_ONLY", "EXCEPTION")
    before = site.snapshot()
    req = site.act("recon-post", {"exception": str(item["id"]), "reason": "r"})
    assert req.responseCode == 409
    assert "was posted as receipt" in html(req) and "now reversed" in html(req)
    assert site.snapshot() == before


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(exception=st.one_of(st.text(max_size=30), st.integers(0, 8).map(str)),
       customer=st.one_of(st.text(max_size=40), st.sampled_from(["", "100000300", "999"])))
def test_any_input_is_answered_and_a_refused_one_writes_nothing(site, exception, customer):
    """Whatever is typed: a page, never a crash; a refusal (400, 409) writes
    nothing, and only a post that happened (303) changed the books."""
    if not site.rows(model.recon_item):
        reconcile_day(site)
    before = site.snapshot()
    req = site.act("recon-post", {"exception": exception, "customer": customer,
                                  "reason": "r"})
    assert req.responseCode in (303, 400, 409)
    if req.responseCode != 303:
        assert site.snapshot() == before
    check_books(site.store)


# -- invoices -----------------------------------------------------------------------------------


def invoice_day(s: Site) -> dict:
    """Stock for bank 'fixed' and one payment, whose invoice number is issued."""
    s.invoices.issue_stock("fixed", 1, 5, code="2100", actor="zhang")
    r = s.ledger.pay(pay("S1", "100000123", 548000))
    assert r.outcome is Outcome.OK and r.invoice_no == "210000000001"
    return site_payment(s, r.receipt_no)


def site_payment(s: Site, receipt_no: str) -> dict:
    return s.rows(model.payment, model.payment.c.receipt_no == receipt_no)[0]


def test_the_payment_page_offers_what_the_invoice_allows_to_operators_only(site):
    p = invoice_day(site)
    page = html(site.get("/helpdesk/payment", {"id": str(p["id"])}, session=site.viewer))
    assert "/actions/invoice-" not in page and "/invoices/pdf" not in page
    page = html(site.get("/helpdesk/payment", {"id": str(p["id"])}))
    assert f"/actions/invoice-print?number={p['receipt_no']}" in page
    assert "/actions/invoice-void?number=210000000001" in page
    assert "/actions/invoice-reprint" not in page and "/invoices/pdf" not in page


def test_print_then_the_pdf_then_reprint_then_void(site, tmp_path):
    p = invoice_day(site)
    form = {"number": p["receipt_no"], "reason": "customer at the counter"}
    page = html(site.act("invoice-print", form, confirm=False))
    assert "210000000001 (issued, printed 0x)" in page and "5480.00" in page
    req = site.act("invoice-print", form)
    assert req.responseCode == 303
    assert req.responseHeaders.getRawHeaders(b"location") == [
        f"/helpdesk/payment?id={p['id']}".encode()]
    [a] = site.audit("invoice-print")
    assert (a["actor"], a["subject"]) == ("olga", "210000000001")
    assert a["detail"]["reason"] == "customer at the counter"
    assert (a["detail"]["before"], a["detail"]["after"]) == ("ISSUED", "PRINTED")
    page = html(site.get("/helpdesk/payment", {"id": str(p["id"])}))
    assert "Invoice 210000000001 printed for receipt" in page
    assert "/invoices/pdf?no=210000000001" in page
    assert "/actions/invoice-reprint?number=210000000001" in page
    assert "/actions/invoice-print" not in page
    # the PDF, for operators
    req = site.get("/invoices/pdf", {"no": "210000000001"})
    assert req.responseHeaders.getRawHeaders(b"content-type") == [b"application/pdf"]
    original = b"".join(req.written)
    assert original.startswith(b"%PDF-")
    assert original == (tmp_path / "data" / "invoices" / "fixed" / "210000000001.pdf").read_bytes()
    assert site.get("/invoices/pdf", {"no": "210000000001"},
                    session=site.viewer).responseCode == 403
    # printing again is refused and writes nothing
    before = site.snapshot()
    req = site.act("invoice-print", form)
    assert req.responseCode == 409 and "printed already" in html(req)
    assert site.snapshot() == before
    # reprint (补打): copy 1, now the newest PDF
    req = site.act("invoice-reprint", {"number": "210000000001", "reason": "lost it"})
    assert req.responseCode == 303
    [a] = site.audit("invoice-reprint")
    assert a["detail"]["reason"] == "lost it" and a["detail"]["after"] == {"print_count": 2}
    copy = b"".join(site.get("/invoices/pdf", {"no": "210000000001"}).written)
    assert copy.startswith(b"%PDF-") and copy != original
    assert b"".join(site.get("/invoices/pdf", {"no": "210000000001", "copy": "0"}).written) == (
        original)
    # void (作废)
    req = site.act("invoice-void", {"number": "210000000001", "reason": "customer refused"})
    assert req.responseCode == 303
    [a] = site.audit("invoice-void")
    assert (a["actor"], a["detail"]["reason"], a["detail"]["was"]) == (
        "olga", "customer refused", "PRINTED")
    inv = site.rows(model.invoice, model.invoice.c.invoice_no == "210000000001")[0]
    assert (inv["status"], inv["void_reason"]) == ("VOID", "customer refused")
    before = site.snapshot()
    req = site.act("invoice-void", {"number": "210000000001", "reason": "again"})
    assert req.responseCode == 409 and "is void already" in html(req)
    assert site.snapshot() == before


@pytest.mark.parametrize("args, status", [
    ({"no": "../../etc/passwd"}, 404), ({"no": "210000000001/../x"}, 404),
    ({"no": "210000000001", "copy": "5"}, 404), ({"no": "210000000001", "copy": "-1"}, 400),
    ({"no": "210000000002"}, 404), ({"no": ""}, 404),
])
def test_the_pdf_page_serves_nothing_outside_the_printed_files(site, args, status):
    p = invoice_day(site)
    site.act("invoice-print", {"number": p["receipt_no"], "reason": "r"})
    req = site.get("/invoices/pdf", args)
    assert req.responseCode == status
    assert not b"".join(req.written).startswith(b"%PDF")


@pytest.mark.parametrize("name", ["invoice-print", "invoice-reprint", "invoice-void"])
def test_invoice_actions_refuse_a_viewer_a_missing_token_and_a_bad_number(site, name):
    p = invoice_day(site)
    form = {"number": p["receipt_no"], "reason": "r"}
    before = site.snapshot()
    assert site.act(name, form, session=site.viewer).responseCode == 403
    assert site.act(name, form, csrf="").responseCode == 403
    req = site.act(name, {**form, "number": "<b>1</b>"})
    assert req.responseCode == 400 and "expected an invoice number" in html(req)
    assert "<b>1</b>" not in html(req)
    req = site.act(name, {**form, "number": "999"})
    assert req.responseCode == 409 and "no invoice and no payment numbered" in html(req)
    assert site.snapshot() == before


# -- card debits (重发卡扣) -------------------------------------------------------------------


def debit(s: Site, status: str, *, sent_at: datetime, **values) -> dict:
    """A card debit row of bank 'dl' for 100000123's bill B0002, in ``status``."""
    def tx_fn(tx):
        row = wsql.debit_insert(tx, bank="dl", utility_serial=None, trade_date=TODAY,
                                customer_no="100000123", account_no=ACCT, bill_ids=("B0002",),
                                amount=15000, now=sent_at, actor="li",
                                serial_for=utility_serial)
        if status != "SENT":
            row = wsql.debit_transition(tx, row["id"], ("SENT",), sent_at, None,
                                        status=status, **values)
        return row

    return s.store.run_sync(tx_fn)


def test_the_queue_page_masks_the_account_and_offers_send_again_to_operators(site):
    r = debit(site, "REVERSING", sent_at=NOW - timedelta(hours=1), attempts=3,
              next_attempt_at=NOW + timedelta(minutes=15))
    debit(site, "REVERSED", sent_at=NOW - timedelta(hours=2))
    page = html(site.get("/carddebits", session=site.viewer))
    assert r["utility_serial"] in page and "REVERSING" in page and "150.00" in page
    assert ACCT not in page and "622202*********5678" in page
    assert "REVERSED" not in page  # settled: not pending
    assert "/actions/" not in page
    assert f"/actions/carddebit-resend?debit={r['id']}" in html(site.get("/carddebits"))


def test_send_again_makes_the_reversal_due_and_the_queue_sends_it_now(site):
    r = debit(site, "REVERSING", sent_at=NOW - timedelta(hours=1), attempts=3,
              next_attempt_at=NOW + timedelta(minutes=15))
    form = {"debit": str(r["id"]), "reason": "bank host back after maintenance"}
    before = site.snapshot()
    page = html(site.act("carddebit-resend", form, confirm=False))
    assert "its reversal (561) is sent now" in page and ACCT not in page
    assert site.snapshot() == before and site.kicks == 0
    req = site.act("carddebit-resend", form)
    assert req.responseCode == 303
    assert req.responseHeaders.getRawHeaders(b"location") == [b"/carddebits"]
    assert site.kicks == 1
    assert site.link.sent == [("561", r["utility_serial"])]  # the queue sent it at once
    [a] = site.audit("card-debit-resend")
    assert (a["actor"], a["subject"]) == ("olga", r["utility_serial"])
    assert a["detail"]["reason"] == "bank host back after maintenance"
    assert a["detail"]["before"] == {"status": "REVERSING", "attempts": 3,
                                     "next_attempt_at": "2026-11-27 09:45:00"}
    assert a["detail"]["after"] == {"status": "REVERSING",
                                    "next_attempt_at": "2026-11-27 09:30:00"}
    assert ACCT not in json.dumps(a["detail"])
    page = html(site.get("/carddebits"))
    assert f"Card debit {r['id']} ({r['utility_serial']}): its reversal (561) is sent now." in page


def test_a_debit_whose_answer_never_came_becomes_a_reversal_never_a_second_debit(site):
    r = debit(site, "SENT", sent_at=NOW - timedelta(seconds=2 * 30 + 31))
    req = site.act("carddebit-resend", {"debit": str(r["id"]), "reason": "no answer"})
    assert req.responseCode == 303
    row = site.rows(model.debit, model.debit.c.id == r["id"])[0]
    assert (row["status"], row["attempts"]) == ("REVERSING", 1)  # the queue took it at once
    assert [k for k, _ in site.link.sent] == ["561"]
    [a] = site.audit("card-debit-resend")
    assert a["detail"]["before"]["status"] == "SENT"
    assert a["detail"]["after"] == {"status": "REVERSING",
                                    "next_attempt_at": "2026-11-27 09:30:00"}


@pytest.mark.parametrize("status, sent_ago, values, message", [
    ("SENT", 60, {}, "went out at 09:29:00: its answer may still come until 09:30:30"),
    ("REVERSED", 3600, {}, "is REVERSED: nothing to send"),
    ("FAILED", 3600, {}, "is FAILED: nothing to send"),
])
def test_send_again_refusals_write_nothing_and_send_nothing(site, status, sent_ago, values,
                                                           message):
    r = debit(site, status, sent_at=NOW - timedelta(seconds=sent_ago), **values)
    before = site.snapshot()
    for confirm in (False, True):
        req = site.act("carddebit-resend", {"debit": str(r["id"]), "reason": "r"},
                       confirm=confirm)
        assert req.responseCode == 409 and message in html(req)
    assert site.snapshot() == before and site.kicks == 0 and site.link.sent == []


def test_send_again_refuses_a_viewer_a_missing_token_and_a_bad_number(site):
    r = debit(site, "REVERSING", sent_at=NOW, attempts=1, next_attempt_at=NOW)
    form = {"debit": str(r["id"]), "reason": "r"}
    before = site.snapshot()
    assert site.act("carddebit-resend", form, session=site.viewer).responseCode == 403
    assert site.act("carddebit-resend", form, csrf="").responseCode == 403
    req = site.act("carddebit-resend", {**form, "debit": "1 OR 1=1"})
    assert req.responseCode == 400 and "expected a card debit number" in html(req)
    req = site.act("carddebit-resend", {**form, "debit": "777"})
    assert req.responseCode == 409 and "no card debit 777" in html(req)
    assert site.snapshot() == before and site.kicks == 0


def test_a_debited_unposted_row_is_posted_by_the_sweep_it_asks_for(site):
    r = debit(site, "DEBITED", sent_at=NOW - timedelta(minutes=5), bank_serial="BK0001",
              response_code="000")
    assert carddebit.queue(site.store)[0]["unposted"]
    req = site.act("carddebit-resend", {"debit": str(r["id"]), "reason": "database was away"})
    assert req.responseCode == 303
    row = site.rows(model.debit, model.debit.c.id == r["id"])[0]
    p = site.rows(model.payment, model.payment.c.serial == "BK0001")[0]
    assert row["payment_id"] == p["id"] and p["bank"] == "dl" and p["amount"] == 15000
    [a] = site.audit("card-debit-resend")
    assert a["detail"]["after"] == {"status": "DEBITED", "payment_id": None}


# -- the CLI twins --------------------------------------------------------------------------------

CONFIG = """
[gateway]
data_dir = "{data}"

[database]
url = "sqlite:///{data}/bg.db"

[n8]
create = true

[[bank]]
name = "fx"
plugin = "ref-fixed"
bank_code = "105210"
policy = "exact"

[bank.reconcile]
pdf = false
bank_only = "exception"

[[bank]]
name = "dl"
plugin = "ref-delim"
bank_code = "103210"
policy = "partial"

[bank.options]
withholding = true
utility_code = "UT01"
debit_host = "tcp:127.0.0.1:1"
"""


@pytest.fixture
def cli_env(tmp_path, capsys):
    from bankgate.app.cli import main as cli

    data = tmp_path / "var"
    path = tmp_path / "bankgate.toml"
    path.write_text(CONFIG.format(data=data), encoding="utf-8")
    c = ["-c", str(path)]
    assert cli([*c, "demo", "seed", "--customers", "30"]) == 0
    capsys.readouterr()
    cfg = load_config(path)
    parts = wiring.build(cfg)
    for i, cust in enumerate(parts.store.run_sync(customers_with_open_bills, (), 3)):
        o = m.Origin("fx", TODAY, "101500")
        q = parts.ledger.query(m.QueryRequest(o, cust))
        r = parts.ledger.pay(m.PaymentRequest(o, f"FX{i:04d}", cust, q.total,
                                              content=m.fingerprint(cust, q.total)))
        assert r.outcome is Outcome.OK
    parts.store.stop()
    return cli, c, data


def _audit(data: Path, action: str) -> list[dict]:
    engine = sa.create_engine(f"sqlite:///{data}/bg.db")
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(
            sa.select(model.audit).where(model.audit.c.action == action)).mappings()]
    engine.dispose()
    return rows


def test_cli_recon_post_and_resolve_with_a_reason(cli_env, capsys):
    cli, c, data = cli_env
    d = "2026-11-27"
    assert cli([*c, "statement", "write", "--bank", "fx", "--date", d,
                "--perturb", "bank-only,amount"]) == 0
    assert cli([*c, "reconcile", "--bank", "fx", "--date", d, "--actor", "qian"]) == 1
    capsys.readouterr()
    assert cli([*c, "recon", "exceptions", "--bank", "fx"]) == 1
    lines = capsys.readouterr().out.splitlines()
    bank_only = next(ln for ln in lines if "BANK_ONLY" in ln).split()[1]
    other = next(ln for ln in lines if "AMOUNT_DIFFERS" in ln).split()[1]
    # the policy left the bank-only record to an operator: post it
    assert cli([*c, "recon", "post", bank_only, "--reason", "bank confirmed it",
                "--actor", "wang"]) == 0
    out = capsys.readouterr().out
    assert f"item {bank_only}: posted by hand as receipt" in out and "resolved" in out
    [a] = _audit(data, "recon-post")
    detail = json.loads(a["detail"])
    assert (a["actor"], detail["reason"], detail["after"]["action"]) == (
        "wang", "bank confirmed it", "RESOLVED")
    # twice: refused, nothing changed
    assert cli([*c, "recon", "post", bank_only, "--reason", "again", "--actor", "wang"]) == 1
    assert "not an open exception" in capsys.readouterr().err
    assert len(_audit(data, "recon-post")) == 1
    # an amount difference cannot be posted; it is resolved with --reason
    assert cli([*c, "recon", "post", other, "--reason", "x", "--actor", "wang"]) == 1
    assert "only a record the bank has" in capsys.readouterr().err
    assert cli([*c, "recon", "resolve", other, "--reason", "bank agreed", "--actor", "li"]) == 0
    assert "resolved by li: bank agreed" in capsys.readouterr().out
    assert cli([*c, "recon", "resolve", other, "--reason", "again", "--actor", "li"]) == 1
    assert cli([*c, "recon", "post", "987654", "--reason", "x"]) == 2
    [a] = _audit(data, "recon-resolve")
    assert (a["actor"], json.loads(a["detail"])["reason"]) == ("li", "bank agreed")
    assert cli([*c, "recon", "exceptions", "--bank", "fx"]) == 0


def test_cli_withholding_resend_marks_the_row_for_the_running_queue(cli_env, capsys):
    from bankgate.store.db import Store

    cli, c, data = cli_env
    cfg = load_config(c[1])
    store = Store(cfg.db_url, cfg.n8, threads=1)
    long_ago = datetime.now(cfg.tz).replace(tzinfo=None) - timedelta(hours=1)
    cust = store.run_sync(lambda tx: tx.conn.execute(
        sa.select(store.n8["customer"].c.customer_no).limit(1)).scalar())
    row = store.run_sync(lambda tx: wsql.debit_insert(
        tx, bank="dl", utility_serial=None, trade_date=long_ago.date(), customer_no=cust,
        account_no=ACCT, bill_ids=("X",), amount=100, now=long_ago, actor="li",
        serial_for=utility_serial))
    assert cli([*c, "withholding", "resend", str(row["id"]), "--reason", "no answer",
                "--actor", "wang.fang"]) == 0
    out = capsys.readouterr().out
    assert "its answer never came: a reversal (561) is sent now" in out
    assert "next check" in out and ACCT not in out
    got = store.run_sync(wsql.debit_by_id, row["id"])
    assert got["status"] == "REVERSING" and got["next_attempt_at"] is not None
    # due now: the running gateway's sweep takes it
    assert [r["id"] for r in store.run_sync(wsql.debits_due, datetime.now(cfg.tz).replace(
        tzinfo=None), ["dl"])] == [row["id"]]
    [a] = _audit(data, "card-debit-resend")
    assert (a["actor"], json.loads(a["detail"])["reason"]) == ("wang.fang", "no answer")
    # a settled one is refused, and nothing is recorded
    store.run_sync(wsql.debit_transition, row["id"], ("REVERSING",), long_ago, None,
                   status="REVERSED")
    assert cli([*c, "withholding", "resend", str(row["id"]), "--reason", "x"]) == 1
    assert "nothing to send" in capsys.readouterr().err
    assert len(_audit(data, "card-debit-resend")) == 1
    store.stop()


def test_cli_invoice_print_and_reprint_record_the_reason(cli_env, capsys):
    cli, c, data = cli_env
    parts = wiring.build(load_config(c[1]))
    cust = parts.store.run_sync(customers_with_open_bills, (), 10)[-1]
    o = m.Origin("fx", TODAY, "101500")
    q = parts.ledger.query(m.QueryRequest(o, cust))
    r = parts.ledger.pay(m.PaymentRequest(o, "FX0101", cust, q.total,
                                          content=m.fingerprint(cust, q.total)))
    assert r.outcome is Outcome.OK
    assert cli([*c, "invoice", "issue", "--to", "fx", "--first", "1", "--last", "3",
                "--actor", "zhang"]) == 0
    assert cli([*c, "invoice", "print", r.receipt_no, "--reason", "at the counter",
                "--actor", "li"]) == 0
    no = re.search(r"invoice (\d+) for receipt", capsys.readouterr().out).group(1)
    assert cli([*c, "invoice", "reprint", no, "--reason", "lost", "--actor", "li"]) == 0
    reasons = {a["action"]: json.loads(a["detail"])["reason"]
               for a in _audit(data, "invoice-print") + _audit(data, "invoice-reprint")}
    assert reasons == {"invoice-print": "at the counter", "invoice-reprint": "lost"}
    parts.store.stop()


# -- the domain's SQL on every database -------------------------------------------------------


def test_post_resolve_and_the_page_on_every_database(store, tmp_path):
    """What the pages and actions run, on SQLite, PostgreSQL and MariaDB: the open
    exceptions with the gateway's payment, a post by hand that claims a refused
    key again (and a refused one that leaves it), a resolution, the resolved list."""
    clock = FakeClock()
    seed_fixture(store)
    store.initial_paid = bills(store)
    ledger = Ledger(store, dict(BANKS), now=clock)
    bank = BankConfig(name="any", plugin="ref-fixed", bank_code="106210",
                      exchange_dir=str(tmp_path / "exchange"), reconcile=ReconPolicy(pdf=False))
    rec = R.Reconciler(ledger, bank, load_codec("ref-fixed"), data_dir=str(tmp_path), now=clock)
    assert ledger.pay(pay("S002", "100000200", 20000, bank="any")).outcome is Outcome.OK
    rec.reconcile(fixed_statement("106210", [("S002", TODAY, "100000200", 20100),
                                             ("S005", TODAY, "999999999", 12000)]), TODAY)
    page = R.exceptions_page(store, TODAY)
    by = {r["serial"]: r for r in page["open"]}
    assert set(by) == {"S002", "S005"} and not page["more"] and page["resolved"] == []
    assert by["S002"]["pay_amount"] == 20000 and not by["S002"]["postable"]
    assert by["S005"]["postable"] and by["S005"]["pay_receipt_no"] is None
    with pytest.raises(R.ExceptionRefused, match="locked or suspended"):
        rec.post_exception(by["S005"]["id"], actor="li", reason="r", customer_no="100000300")
    with store.engine.connect() as c:
        assert c.execute(sa.select(model.journal.c.outcome).where(
            model.journal.c.serial == "S005")).scalar() == "NOT_FOUND"
    r = rec.post_exception(by["S005"]["id"], actor="li", reason="mistyped",
                           customer_no="100000123")
    assert r["customer_no"] == "100000123" and r["amount"] == 12000
    R.resolve_exception(store, by["S002"]["id"], actor="wang", note="bank agreed", now=NOW)
    page = R.exceptions_page(store, TODAY)
    assert page["open"] == []
    assert {(x["serial"], x["resolved_by"]) for x in page["resolved"]} == {
        ("S002", "wang"), ("S005", "li")}
    check_books(store)
