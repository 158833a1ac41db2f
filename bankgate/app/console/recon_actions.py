"""Back-office pages of reconciliation, invoices and card debits.

Pages (every signed-in user, viewers included; they only read):

- ``/exceptions``: the open reconciliation exceptions of each bank's and date's
  latest run, newest date first, each with its kind, the bank's record and the
  gateway's; operators get the actions beside each; below, the exceptions
  operators resolved lately (who, when, the note);
- ``/carddebits``: the card debits whose outcome is open (pending 561 reversals,
  debits whose answer has not come, debited rows not yet posted) -- what
  ``bankgate withholding queue`` lists -- with *Send again* for operators.

Actions (operators; :mod:`bankgate.app.console.actions`: a form, a confirmation,
a reason, done on the store's pool by the domain, which audits it):

- ``/actions/resolve?exception=ID``: close an exception with a note (the reason)
  -- :func:`bankgate.domain.reconcile.resolve_exception`, as ``bankgate recon
  resolve``;
- ``/actions/recon-post?exception=ID``: post a bank-only record by hand (手工补账),
  optionally to a corrected customer --
  :meth:`bankgate.domain.reconcile.Reconciler.post_exception`, as ``bankgate recon
  post``;
- ``/actions/invoice-print|invoice-reprint|invoice-void?number=N``: the invoice
  actions of :class:`bankgate.domain.invoices.Invoices`, as ``bankgate invoice
  print|reprint|void``; print and reprint return to the payment's page, where
  ``/invoices/pdf?no=N`` (operators) serves the PDF the print wrote in the data
  folder;
- ``/actions/carddebit-resend?debit=ID``: send a pending card debit again now
  (重发卡扣) -- :func:`bankgate.domain.carddebit.resend` marks it due, then the
  service's queue (in this process) is asked to sweep at once; ``bankgate
  withholding resend`` marks it the same way from another process, and the
  running queue sends it at its next sweep.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource
from twisted.web.server import NOT_DONE_YET

from bankgate.app.console import actions, auth
from bankgate.app.console.actions import ActionRefused, Done, Field, FieldError
from bankgate.app.console.helpdesk import yuan
from bankgate.domain import carddebit, helpdesk, reconcile
from bankgate.domain.invoices import InvoiceError, Invoices
from bankgate.domain.reconcile import ExceptionRefused
from bankgate.domain.withholding import WithholdingError
from bankgate.store.db import StoreUnavailable

log = Logger(namespace="bankgate.console.recon")

KINDS = {
    "BANK_ONLY": "bank only (单边账)",
    "UTILITY_ONLY": "utility only",
    "AMOUNT_DIFFERS": "amount or customer differs",
    "DATE_DIFFERS": "trade date differs",
    "TOTALS_DIFFER": "header totals differ",
    "MATCHED": "matched",
}
_ID = re.compile(r"[0-9]{1,18}")
_INVOICE_OR_RECEIPT = re.compile(r"[0-9A-Z]{1,20}")


def _arg(request, name: str) -> str:
    values = request.args.get(name.encode()) or [b""]
    try:
        return values[0].decode("utf-8").strip()
    except UnicodeDecodeError:
        return ""


def _number(field: str, text: str, what: str) -> int:
    if not _ID.fullmatch(text):
        raise FieldError(field, f"expected {what}")
    return int(text)


def _refused(e: ExceptionRefused, fields: tuple[str, ...]) -> ActionRefused:
    """The reconciliation's refusal as the action page shows it: next to its field
    when the page has that field (or the reason)."""
    return ActionRefused(e.message, e.field if e.field in (*fields, "reason") else None)


def _record(row: dict) -> tuple[str, str]:
    """The bank's and the gateway's record of an exception, as one line each."""
    bank = "-"
    if row["category"] != "UTILITY_ONLY":
        bank = f"customer {row['customer_no'] or '-'}, {yuan(row['bank_amount'] or 0)}"
    ours = "-"
    if row.get("pay_receipt_no"):
        ours = (f"receipt {row['pay_receipt_no']} ({(row['pay_status'] or '').lower()}),"
                f" customer {row['pay_customer_no']}, {yuan(row['pay_amount'] or 0)}")
    elif row["our_amount"]:
        ours = yuan(row["our_amount"])
    return bank, ours


# -- the actions on exceptions ------------------------------------------------------------


class _ExceptionAction(actions.Action):
    """An action on one reconciliation item (``exception`` = its number)."""

    def check(self, values):
        out = dict(values)
        out["exception"] = _number("exception", values["exception"],
                                   "an item number (bankgate recon exceptions lists them)")
        return out

    def back(self, values):
        return "/exceptions"

    @staticmethod
    def _lines(row: dict) -> list[tuple[str, str]]:
        bank, ours = _record(row)
        return [("Exception", f"item {row['id']}"),
                ("Bank and settle date", f"{row['bank']} {row['settle_date']}"
                                         f" (run {row['run_no']})"),
                ("Kind", KINDS.get(row["category"], row["category"])),
                ("Bank serial", row["serial"] or "-"),
                ("The bank's record", bank), ("The gateway's record", ours),
                ("Found", row["detail"] or "")]


class ResolveException(_ExceptionAction):
    """Close an exception after handling it by hand; the reason is the note."""

    name, title, verb = "resolve", "Resolve a reconciliation exception", "Resolve"
    fields = (Field("exception", "Exception (item number)"),)
    warning = ("The exception is closed with your reason as its note: say what was done."
               " A statement sent again keeps it closed.")

    def __init__(self, store, now: Callable[[], datetime]):
        super().__init__(store)
        self.now = now

    def preview(self, parsed):
        try:
            return self._lines(reconcile.find_exception(self.store, parsed["exception"]))
        except ExceptionRefused as e:
            raise _refused(e, ("exception",)) from None

    def perform(self, parsed, actor, reason):
        try:
            row = reconcile.resolve_exception(self.store, parsed["exception"], actor=actor,
                                              note=reason, now=self.now())
        except ExceptionRefused as e:
            raise _refused(e, ("exception",)) from None
        serial = f" serial {row['serial']}" if row["serial"] else ""
        return Done(f"Exception {row['id']} ({row['bank']} {row['settle_date']},"
                    f" {row['category']}{serial}) resolved.", "/exceptions")


class PostException(_ExceptionAction):
    """手工补账: post an exception's bank-only record through the ledger."""

    name, title, verb = "recon-post", "Post a bank-only record by hand (手工补账)", "Post"
    fields = (Field("exception", "Exception (item number)"),
              Field("customer", "Post to customer", required=False, max_length=32,
                    help="leave empty to post to the customer the bank's record names"))
    warning = ("The payment is posted to the books under the bank's serial and settle date,"
               " and the exception is resolved with your reason. Only a reversal by"
               " reconciliation or a refund takes it back.")

    def __init__(self, store, reconcilers: dict):
        super().__init__(store)
        self.reconcilers = reconcilers

    def check(self, values):
        out = super().check(values)
        out["customer"] = None
        if values.get("customer"):
            try:
                out["customer"] = reconcile.customer_number(values["customer"])
            except ExceptionRefused as e:
                raise FieldError("customer", e.message) from None
        return out

    def _reconciler(self, item_id: int):
        try:
            bank = reconcile.exception_bank(self.store, item_id)
        except ExceptionRefused as e:
            raise _refused(e, ("exception",)) from None
        rec = self.reconcilers.get(bank)
        if rec is None:
            raise ActionRefused(f"item {item_id} is of bank {bank}, which is not reconciled"
                                " by this gateway's configuration", "exception")
        return rec

    def preview(self, parsed):
        rec = self._reconciler(parsed["exception"])
        try:
            p = rec.preview_post(parsed["exception"], parsed["customer"])
        except ExceptionRefused as e:
            raise _refused(e, ("exception", "customer")) from None
        lines = self._lines(p["item"])
        lines += [("Will post", f"{yuan(p['amount'])} to customer {p['customer_no']}"
                                f" {p['name'] or ''}".rstrip()),
                  ("They owe", f"{yuan(p['due'])} (with late fees, on {p['settle_date']});"
                               f" kept as prepaid: {yuan(p['prepaid_in'])}"),
                  ("Under", f"{p['bank']} {p['settle_date']} serial {p['serial']},"
                            f" policy {p['policy']}")]
        if p["journal"] is not None:
            j = p["journal"]
            lines.append(("Replaces", f"the journal's refusal of this serial ({j['outcome']},"
                                      f" {j['created_at']:%Y-%m-%d %H:%M})"))
        return lines

    def perform(self, parsed, actor, reason):
        rec = self._reconciler(parsed["exception"])
        try:
            r = rec.post_exception(parsed["exception"], actor=actor, reason=reason,
                                   customer_no=parsed["customer"])
        except ExceptionRefused as e:
            raise _refused(e, ("exception", "customer")) from None
        return Done(f"Item {r['item']} posted by hand as receipt {r['receipt_no']}"
                    f" ({yuan(r['amount'])} to customer {r['customer_no']}); the exception"
                    " is resolved.", "/exceptions")


# -- the invoice actions -------------------------------------------------------------------


class _InvoiceAction(actions.Action):
    """An action of :class:`Invoices` on an invoice or a payment's receipt number."""

    kind = ""  # print, reprint, void
    fields = (Field("number", "Invoice or receipt number", max_length=20),)

    def __init__(self, store, invoices: Invoices):
        super().__init__(store)
        self.invoices = invoices

    def check(self, values):
        if not _INVOICE_OR_RECEIPT.fullmatch(values["number"]):
            raise FieldError("number", "expected an invoice number or a receipt number"
                                       " (capital letters and digits)")
        return dict(values)

    def back(self, values):
        n = values.get("number", "")
        if not _INVOICE_OR_RECEIPT.fullmatch(n):
            return "/helpdesk"
        return "/helpdesk?" + ("receipt=" if len(n) == 20 and n.isdigit() else "invoice=") + n

    @staticmethod
    def _attempt(call, *args, **kw):
        """``call(*args, **kw)``; an :class:`InvoiceError` refuses the action at the
        number, changing nothing."""
        try:
            return call(*args, **kw)
        except InvoiceError as e:
            raise ActionRefused(str(e), "number") from None

    def preview(self, parsed):
        p = self._attempt(self.invoices.preview, self.kind, parsed["number"])
        pay, inv = p["payment"], p["invoice"]
        if inv is None:
            what = f"a new number from the stock of {pay['bank']}"
        else:
            what = (f"{inv['invoice_no']} ({inv['status'].lower()}, printed"
                    f" {inv['print_count']}x)")
        return [("Receipt", pay["receipt_no"]),
                ("Customer", f"{pay['customer_no']} {p['name'] or ''}".rstrip()),
                ("Amount", yuan(pay["amount"])),
                ("Paid at", f"{pay['bank']} {pay['trade_date']} serial {pay['serial']}"),
                ("Invoice", what)]

    def _payment_page(self, receipt_no: str, payment_id: int | None = None) -> str:
        if payment_id is None:
            found = helpdesk.find_payments(self.store, receipt=receipt_no)
            payment_id = found[0]["id"] if found else None
        return f"/helpdesk/payment?id={payment_id}" if payment_id else "/helpdesk"


class PrintInvoice(_InvoiceAction):
    name, kind, title, verb = "invoice-print", "print", "Print an invoice (打印)", "Print"
    warning = ("Once printed, the bank's reversal and a refund of the payment are refused"
               " until the invoice is voided.")

    def perform(self, parsed, actor, reason):
        r = self._attempt(self.invoices.print, parsed["number"], actor=actor, reason=reason)
        return Done(f"Invoice {r.invoice_no} printed for receipt {r.receipt_no}: its PDF is"
                    " linked under Invoice numbers.",
                    self._payment_page(r.receipt_no, r.payment_id))


class ReprintInvoice(_InvoiceAction):
    name, kind, title, verb = "invoice-reprint", "reprint", "Reprint an invoice (补打)", "Reprint"
    warning = "The copy keeps the number and is marked as a copy; every copy is audited."

    def perform(self, parsed, actor, reason):
        r = self._attempt(self.invoices.reprint, parsed["number"], actor=actor, reason=reason)
        return Done(f"Invoice {r.invoice_no} reprinted (copy {r.copy}) for receipt"
                    f" {r.receipt_no}: its PDF is linked under Invoice numbers.",
                    self._payment_page(r.receipt_no, r.payment_id))


class VoidInvoice(_InvoiceAction):
    name, kind, title, verb = "invoice-void", "void", "Void an invoice (作废)", "Void"
    warning = ("The invoice is void in the gateway and in N8 and cannot be used again;"
               " collect the paper. The payment may then be reversed or refunded.")

    def perform(self, parsed, actor, reason):
        r = self._attempt(self.invoices.void, parsed["number"], reason=reason, actor=actor)
        return Done(f"Invoice {r['invoice_no']} ({r['was'].lower()}) of receipt"
                    f" {r['receipt_no']} is void.", self._payment_page(r["receipt_no"]))


# -- sending a card debit again ------------------------------------------------------------


class ResendDebit(actions.Action):
    """重发卡扣: a pending card debit sent again now, by the service's queue."""

    name, title, verb = "carddebit-resend", "Send a card debit again (重发卡扣)", "Send again"
    fields = (Field("debit", "Card debit (number)"),)
    warning = ("A debit is never sent twice: a debit whose answer never came is reversed"
               " (561), never debited again (560).")

    def __init__(self, store, now: Callable[[], datetime], options: dict,
                 kick: Callable[[], None]):
        super().__init__(store)
        self.now, self.options, self.kick = now, options, kick

    def check(self, values):
        return {"debit": _number("debit", values["debit"],
                                 "a card debit number (bankgate withholding queue lists them)")}

    def back(self, values):
        return "/carddebits"

    def preview(self, parsed):
        try:
            p = carddebit.resend_preview(self.store, parsed["debit"], now=self.now(),
                                         options=self.options)
        except WithholdingError as e:
            raise ActionRefused(str(e), "debit") from None
        r = p["row"]
        return [("Card debit", f"{r['id']}: {r['bank']} serial {r['utility_serial']}"),
                ("Customer", f"{r['customer_no']}, account {r['account_no']}"),
                ("Amount", yuan(r["amount"])),
                ("Status", f"{r['status']}, {r['attempts']} attempt(s), bank answer"
                           f" {r['response_code'] or '-'}"),
                ("Will happen", p["what"])]

    def perform(self, parsed, actor, reason):
        try:
            r = carddebit.resend(self.store, parsed["debit"], actor=actor, reason=reason,
                                 now=self.now(), options=self.options)
        except WithholdingError as e:
            raise ActionRefused(str(e), "debit") from None
        self.kick()
        row = r["row"]
        return Done(f"Card debit {row['id']} ({row['utility_serial']}): {r['what']}.",
                    "/carddebits")


# -- the pages ----------------------------------------------------------------------------


class _Page(resource.Resource):
    """A GET page that reads on the store's pool and renders a template."""

    isLeaf = True

    def __init__(self, console, store):
        super().__init__()
        self.console, self.store = console, store

    def _render(self, request, d: defer.Deferred) -> int:
        finished: list = []
        request.notifyFinish().addBoth(finished.append)

        def failed(f):
            if f.check(StoreUnavailable):
                return self.console.page(request, "refused.html", 503,
                                         title="Database unavailable",
                                         message="The database does not answer: try again in"
                                                 " a moment.")
            log.failure("console: a page failed", f)
            return self.console.page(request, "refused.html", 500, title="Error",
                                     message="The page failed; the gateway's log says why.")

        def write(body: bytes):
            if not finished:
                request.write(body)
                request.finish()

        d.addErrback(failed).addCallback(write)
        return NOT_DONE_YET

    @staticmethod
    def may_act(request) -> bool:
        return auth.allows(request.console_session.role, "operator")


class ExceptionsPage(_Page):
    """``/exceptions``: open exceptions per bank and date, and recent resolutions."""

    def __init__(self, console, store, today: Callable[[], date]):
        super().__init__(console, store)
        self.today = today

    def render_GET(self, request):
        d = self.store.call(reconcile.exceptions_page, self.store, self.today())

        def show(data):
            groups: list[dict] = []
            for r in data["open"]:
                r["bank_record"], r["our_record"] = _record(r)
                key = (r["bank"], r["settle_date"])
                if not groups or groups[-1]["key"] != key:
                    groups.append({"key": key, "bank": r["bank"], "date": r["settle_date"],
                                   "run_no": r["run_no"], "items": []})
                groups[-1]["items"].append(r)
            return self.console.page(request, "exceptions.html", title="Exceptions",
                                     groups=groups, count=len(data["open"]),
                                     more=data["more"], resolved=data["resolved"],
                                     kinds=KINDS, may_act=self.may_act(request),
                                     link=actions.link, days=reconcile.RESOLVED_DAYS)

        return self._render(request, d.addCallback(show))


class CardDebitsPage(_Page):
    """``/carddebits``: the card debits whose outcome is open."""

    def render_GET(self, request):
        d = self.store.call(carddebit.queue, self.store)

        def show(rows):
            return self.console.page(request, "carddebits.html", title="Card debits",
                                     rows=rows, limit=carddebit.QUEUE_LIMIT,
                                     may_act=self.may_act(request), link=actions.link)

        return self._render(request, d.addCallback(show))


class InvoicePdf(_Page):
    """``/invoices/pdf?no=N[&copy=K]`` (operators): the PDF a print of invoice N
    wrote in the data folder, the newest copy unless ``copy`` is given."""

    def __init__(self, console, store, invoices: Invoices):
        super().__init__(console, store)
        self.invoices = invoices

    def render_GET(self, request):
        no, copy = _arg(request, "no"), _arg(request, "copy")
        if copy and not _ID.fullmatch(copy):
            return self.console.page(request, "refused.html", 400, title="Bad request",
                                     message="copy: expected a copy number (0: the original)")
        d = self.store.call(self.invoices.pdf, no, int(copy) if copy else None)

        def send(found):
            name, data = found
            request.setHeader(b"content-type", b"application/pdf")
            request.setHeader(b"content-disposition",
                              f"inline; filename=\"{name}\"".encode("ascii"))
            return data

        def refused(f):
            f.trap(InvoiceError)
            return self.console.page(request, "refused.html", 404, title="Not found",
                                     message=str(f.value))

        d.addCallbacks(send, refused)
        return self._render(request, d)


# -- mounting -----------------------------------------------------------------------------


def mount_pages(console, store, *, now: Callable[[], datetime], reconcilers: dict,
                invoices: Invoices, options: dict, kick: Callable[[], None]) -> dict:
    """Mount the pages and actions of this module on ``console`` over ``store``:
    ``reconcilers`` by bank, ``invoices`` the invoice actions, ``options`` the
    banks' withholding options (the debit timeouts), ``kick`` asks the service's
    card-debit queue to sweep now (from the store's thread)."""
    console.templates.filters.setdefault("yuan", yuan)
    pages = actions.mount(console, [
        ResolveException(store, now), PostException(store, reconcilers),
        PrintInvoice(store, invoices), ReprintInvoice(store, invoices),
        VoidInvoice(store, invoices), ResendDebit(store, now, options, kick)])
    console.mount("exceptions", ExceptionsPage(console, store, lambda: now().date()),
                  role="viewer")
    console.mount("carddebits", CardDebitsPage(console, store), role="viewer")
    console.mount("invoices/pdf", InvoicePdf(console, store, invoices), role="operator")
    return pages


def mount(console, gw) -> None:
    """Mount this module's pages on ``console`` for the gateway ``gw``."""
    parts = gw.parts

    def kick() -> None:
        debits = getattr(gw, "card_debits", None)  # set once the database is ready
        if debits is not None:
            gw.reactor.callFromThread(debits.kick)

    mount_pages(console, parts.store, now=parts.now, reconcilers=parts.reconcilers(),
                invoices=parts.invoices(), options=parts.withholding_options, kick=kick)
