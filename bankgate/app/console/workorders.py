"""The work orders page (工单): ``/workorders`` and its action ``/workorders/done``.

Viewers see the orders, filtered by state, season and district (newest first, at
most :data:`LIMIT`).  Operators also get a form per open order: a required note
saying what was done, posted with the session's CSRF token to ``/workorders/done``
-- mounted for operators, so the guard refuses a viewer (403) and a post without the
token (403) before this module sees it.  The action is
:meth:`bankgate.domain.supply.WorkOrders.done` with the signed-in user as the actor
(audited there), run on the store's pool; then back to the list (303).  A refusal
(no such order, not open, no note) is shown with its message (400) and changes
nothing.  ``docs/supply.rst`` describes the orders themselves.
"""

from __future__ import annotations

from urllib.parse import urlencode

from twisted.logger import Logger
from twisted.web import resource

from bankgate.app.console import auth
from bankgate.app.console.reports import answer, arg, failed_page
from bankgate.domain.supply import MAX_NOTE, STATES, SupplyError, WorkOrders

log = Logger(namespace="bankgate.console.workorders")

LIMIT = 500  # orders the page lists
FILTERS = ("state", "season", "district")


def _filters(request) -> dict:
    form = {k: arg(request, k) for k in FILTERS}
    form["state"] = form["state"] or "open"
    return form


class WorkOrderPages(resource.Resource):
    """``/workorders``: the list; ``/workorders/done`` is mounted beneath."""

    def __init__(self, console, orders: WorkOrders):
        super().__init__()
        self.console, self.orders = console, orders

    def render_GET(self, request):
        form = _filters(request)
        back = "/workorders?" + urlencode(form)
        s = request.console_session
        ctx = {"form": form, "states": STATES, "orders": [], "more": False, "error": "",
               "may_act": auth.allows(s.role, "operator"), "back": back,
               "max_note": MAX_NOTE}
        if form["state"] not in (*STATES, "all"):
            return self._page(request, 400, **{**ctx, "error": f"state {form['state']!r}:"
                                               f" expected one of {', '.join(STATES)} or all"})
        d = self.orders.store.call(
            self.orders.list, state=None if form["state"] == "all" else form["state"],
            season=form["season"] or None, district=form["district"] or None,
            limit=LIMIT + 1)

        def ok(rows):
            return self._page(request, 200, **{**ctx, "orders": rows[:LIMIT],
                                               "more": len(rows) > LIMIT})

        def refused(f):
            f.trap(SupplyError)
            return self._page(request, 400, **{**ctx, "error": str(f.value)})

        d.addCallbacks(ok, refused).addErrback(failed_page, self.console, request)
        return answer(request, d)

    def _page(self, request, status: int, **ctx) -> bytes:
        return self.console.page(request, "workorders.html", status, title="Work orders",
                                 **ctx)


class WorkOrderDone(resource.Resource):
    """``POST /workorders/done`` (operators, with the CSRF token): ``id``, ``note``,
    ``back`` (the list to return to)."""

    isLeaf = True

    def __init__(self, console, orders: WorkOrders):
        super().__init__()
        self.console, self.orders = console, orders

    def render_POST(self, request):
        s = request.console_session
        text, note = arg(request, "id"), arg(request, "note")
        back = arg(request, "back")
        if not back.startswith("/workorders"):
            back = "/workorders"
        if not text.isascii() or not text.isdigit() or len(text) > 18:
            return self._refused(request, "id: expected a work order number")
        d = self.orders.store.call(self.orders.done, int(text), note, s.user)

        def done(order):
            log.info("console: {user} marked work order {id} done", user=s.user, id=order["id"])
            request.setResponseCode(303)
            request.setHeader(b"location", back.encode("utf-8"))
            return b""

        def refused(f):
            f.trap(SupplyError)
            return self._refused(request, str(f.value))

        d.addCallbacks(done, refused).addErrback(failed_page, self.console, request)
        return answer(request, d)

    def _refused(self, request, message: str) -> bytes:
        return self.console.page(request, "refused.html", 400, title="Not done",
                                 message=message + " -- nothing was changed.")


def mount(console, orders: WorkOrders) -> WorkOrderPages:
    """Mount ``/workorders`` for viewers and ``/workorders/done`` for operators."""
    pages = WorkOrderPages(console, orders)
    console.mount("workorders", pages, role="viewer")
    console.mount("workorders/done", WorkOrderDone(console, orders), role="operator")
    return pages
