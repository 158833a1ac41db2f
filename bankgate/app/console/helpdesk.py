"""The help desk pages (客服查询): ``/helpdesk``, ``/helpdesk/customer``, ``/helpdesk/payment``.

GET only -- a look-up changes nothing, so no form here carries or needs a CSRF
token.  Every query runs on the store's pool (``store.call``), never on the reactor
thread; a bad field is answered next to the field (400), a database that does not
answer with a message (503).  The templates autoescape: a customer named
``<script>`` is shown as text.  The rules of each look-up are in
:mod:`bankgate.domain.helpdesk`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import pages, resource
from twisted.web.server import NOT_DONE_YET

from bankgate.canon.money import fen_to_yuan
from bankgate.domain import helpdesk
from bankgate.domain.helpdesk import HelpdeskError
from bankgate.store.db import StoreUnavailable

log = Logger(namespace="bankgate.console.helpdesk")

PAYMENT_FIELDS = ("receipt", "serial", "bank", "date", "invoice")


def _arg(request, name: str) -> str:
    values = request.args.get(name.encode()) or [b""]
    try:
        return values[0].decode("utf-8").strip()
    except UnicodeDecodeError:
        return "\ufffd"  # refused by the field check (not a usable value)


def _date(text: str) -> date | None:
    if not text:
        return None
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            pass
    raise HelpdeskError("date", "expected a date as YYYY-MM-DD")


def yuan(fen) -> str:
    """Integer fen as yuan for the pages (``548000`` -> ``5480.00``)."""
    return "" if fen is None else fen_to_yuan(int(fen))


class HelpdeskPages(resource.Resource):
    """The three pages under one mount (a leaf: the sub-path picks the page)."""

    isLeaf = True

    def __init__(self, console, store, today: Callable[[], date]):
        super().__init__()
        self.console, self.store, self.today = console, store, today

    def render_GET(self, request):
        path = [p for p in request.postpath if p]
        routes = {(): self._search, (b"customer",): self._customer,
                 (b"payment",): self._payment}
        page = routes.get(tuple(path))
        if page is None:
            return pages.notFound().render(request)
        finished: list = []
        request.notifyFinish().addBoth(finished.append)
        d = page(request)

        def write(body: bytes):
            if not finished:
                request.write(body)
                request.finish()

        d.addErrback(self._failed, request).addCallback(write)
        return NOT_DONE_YET

    def _failed(self, failure, request) -> bytes:
        if failure.check(StoreUnavailable):
            return self.console.page(
                request, "refused.html", 503, title="Database unavailable",
                message="The database does not answer: the help desk cannot look anything"
                        " up now. Try again in a moment.")
        log.failure("help desk: a look-up failed", failure)
        return self.console.page(request, "refused.html", 500, title="Error",
                                 message="The look-up failed; the gateway's log says why.")

    # -- /helpdesk ------------------------------------------------------------------

    def _search(self, request):
        form = {k: _arg(request, k) for k in ("q", *PAYMENT_FIELDS)}
        ctx = {"form": form, "errors": {}, "customers": None, "more": False,
               "payments": None}

        def render(_=None):
            status = 400 if ctx["errors"] else 200
            return self.console.page(request, "helpdesk.html", status, title="Help desk",
                                     **ctx)

        try:
            wanted_payment = any(form[k] for k in PAYMENT_FIELDS)
            kw = {}
            if wanted_payment:
                kw = {"receipt": form["receipt"] or None, "serial": form["serial"] or None,
                      "invoice": form["invoice"] or None, "bank": form["bank"] or None,
                      "trade_date": _date(form["date"])}
        except HelpdeskError as e:
            ctx["errors"][e.field] = e.message
            return _done(render())

        d = _done(None)
        if form["q"]:
            d.addCallback(lambda _: self.store.call(helpdesk.find_customers, self.store,
                                                    form["q"]))

            def found(result):
                ctx["customers"], ctx["more"] = result["customers"], result["more"]

            d.addCallback(found)
        if wanted_payment:
            d.addCallback(lambda _: self.store.call(self._find_payments, kw))
            d.addCallback(lambda rows: ctx.__setitem__("payments", rows))

        def refused(failure):
            failure.trap(HelpdeskError)
            field = {"search": "q", "trade_date": "date"}.get(failure.value.field,
                                                               failure.value.field)
            ctx["errors"][field] = failure.value.message

        d.addErrback(refused)
        return d.addCallback(render)

    def _find_payments(self, kw: dict) -> list[dict]:
        return helpdesk.find_payments(self.store, **kw)

    # -- /helpdesk/customer?no= ----------------------------------------------------------

    def _customer(self, request):
        no = _arg(request, "no")
        d = self.store.call(helpdesk.customer_card, self.store, no, self.today())

        def render(card):
            if card is None:
                return self.console.page(request, "refused.html", 404, title="Not found",
                                         message=f"No customer {no} in N8.")
            return self.console.page(request, "customer.html", title=f"Customer {no}",
                                     card=card)

        def refused(failure):
            failure.trap(HelpdeskError)
            return self.console.page(request, "refused.html", 400, title="Bad request",
                                     message=str(failure.value))

        return d.addCallbacks(render, refused)

    # -- /helpdesk/payment?id= or ?receipt= ------------------------------------------------

    def _payment(self, request):
        text = _arg(request, "id")
        receipt = _arg(request, "receipt")
        if receipt and not text:  # by receipt number: where the back-office actions return
            text = receipt
            d = self.store.call(self._payment_by_receipt, receipt)
        elif not text.isascii() or not text.isdigit() or len(text) > 18:
            return _done(self.console.page(request, "refused.html", 400, title="Bad request",
                                           message="payment: expected a payment id"))
        else:
            d = self.store.call(helpdesk.payment_detail, self.store, int(text))

        def render(p):
            if p is None:
                return self.console.page(request, "refused.html", 404, title="Not found",
                                         message=f"No payment {text}.")
            return self.console.page(request, "payment.html",
                                     title=f"Payment {p['receipt_no']}", p=p)

        def refused(failure):
            failure.trap(HelpdeskError)
            return self.console.page(request, "refused.html", 400, title="Bad request",
                                     message=str(failure.value))

        return d.addCallbacks(render, refused)

    def _payment_by_receipt(self, receipt: str) -> dict | None:
        rows = helpdesk.find_payments(self.store, receipt=receipt)
        return helpdesk.payment_detail(self.store, rows[0]["id"]) if rows else None


def _done(value):
    return defer.succeed(value)


def mount(console, store, today: Callable[[], date]) -> HelpdeskPages:
    """Mount the help desk at ``/helpdesk`` for viewers on ``console``
    (:class:`bankgate.app.console.server.Console`) over ``store``; ``today`` gives
    the date late fees are counted to (the gateway's clock)."""
    console.templates.filters.setdefault("yuan", yuan)
    pages = HelpdeskPages(console, store, today)
    console.mount("helpdesk", pages, role="viewer")
    return pages
