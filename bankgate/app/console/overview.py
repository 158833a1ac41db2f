"""The overview page ``/``: every bank link live, and the day's figures.

The page is rendered here, on the server, complete: it shows the state of the moment
it was asked for even in a browser without JavaScript.  ``static/overview.js`` then
keeps it current without a reload: the bank links from ``/api/live/stream`` (server-sent
events, :mod:`bankgate.app.console.live`) and the day's figures from ``/api/overview``
(:mod:`bankgate.app.console.figures`), polled every 10 s.

The script makes each cell's text exactly as :func:`link_cells` and
:func:`figure_tables` make it here (a test runs both over the same figures), so a value
does not change its look when the first update arrives.  Cells are ``(text, class)``
pairs; the script sets them with ``textContent``, the templates autoescape: a bank or
holder named ``<script>`` is text on both paths.

The database figures are read on the store's pool, given :data:`FIGURES_TIMEOUT`
seconds of the console's clock: a database that is down or hangs gives the page
without them (saying so), never a page that does not answer.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import pages, resource
from twisted.web.server import NOT_DONE_YET

from bankgate.canon.money import fen_to_yuan
from bankgate.store.db import StoreUnavailable

log = Logger(namespace="bankgate.console.overview")

FIGURES_TIMEOUT = 5.0
#: the live columns of the bank table, in order (``data-field`` of each cell)
LINK_FIELDS = ("listening", "peers", "last_message", "requests_per_minute",
               "payments_per_minute", "errors", "debit_link", "signin")
#: the figure tables (``data-table`` of each body) and the text of an empty one
TABLES = {"per_bank": "No bank.", "totals": "", "by_channel": "No payment today.",
          "by_fee_type": "No payment today.", "states": "No bank.",
          "invoices": "No invoice stock."}

Cell = tuple[str, str]


# -- the cells (static/overview.js makes the same) ------------------------------------


def yuan(fen) -> str:
    return "-" if fen is None else fen_to_yuan(int(fen))


def ago(seconds: int) -> str:
    """``42 s``, ``5 min``, ``3 h 12 min``."""
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def when(iso: str | None) -> str:
    return "-" if not iso else iso.replace("T", " ")


def per_mille(part: int, whole: int) -> str:
    """``part / whole`` as a percentage with one decimal, rounded half up in integers
    (the script's arithmetic gives the same text)."""
    tenths = (part * 2000 + whole) // (2 * whole)
    return f"{tenths // 10}.{tenths % 10} %"


def link_cells(b: dict | None) -> dict[str, Cell]:
    """The live cells of one bank (an entry of the live snapshot's ``banks``);
    ``None``: no live figures (every cell ``-``)."""
    if b is None:
        return dict.fromkeys(LINK_FIELDS, ("-", ""))
    n = len(b["endpoints"])
    listening = ((f"{b['listening']} of {n}", "ok" if b["listening"] >= n else "bad")
                 if n else ("-", ""))
    if b["last_message"] is None:
        last = ("never", "")
    else:
        last = (f"{when(b['last_message'])} ({ago(b['seconds_since'])} ago)", "")
    if b["requests_5m"]:
        errors = (f"{per_mille(b['errors_5m'], b['requests_5m'])}"
                  f" ({b['errors_5m']} of {b['requests_5m']})",
                  "num bad" if b["errors_5m"] else "num")
    else:
        errors = ("-", "num")
    link = b["debit_link"]
    if link is None:
        debit = ("-", "")
    else:
        debit = (f"{'up' if link['connected'] else 'down'}, {link['queued']} queued",
                 "ok" if link["connected"] else "bad")
    return {"listening": listening, "peers": (str(b["peers"]), "num"),
            "last_message": last,
            "requests_per_minute": (str(b["requests_per_minute"]), "num"),
            "payments_per_minute": (str(b["payments_per_minute"]), "num"),
            "errors": errors, "debit_link": debit,
            "signin": signin_cell(b.get("signin"), b["peers"])}


def signin_cell(s: dict | None, peers: int) -> Cell:
    """A signing-in bank's connections signed in and the oldest key's age (``1 of 2,
    key 5 min old``), or its last sign-in when none is (``none (last ...)``, red while
    a peer is connected); ``-`` where the bank does not sign in."""
    if s is None:
        return ("-", "")
    if s["signed_in"]:
        return (f"{s['signed_in']} of {peers}, key {ago(s['key_age'])} old",
                "ok" if s["signed_in"] >= peers else "warn")
    return (f"none (last {when(s['last_signin'])})" if s["last_signin"] else "never",
            "bad" if peers else "")


def _num(n) -> Cell:
    return (str(n), "num")


def _money(fen) -> Cell:
    return (yuan(fen), "num")


def _pair(count, fen) -> Cell:
    return (f"{count} / {yuan(fen)}", "num")


def _day_row(name: str, r: dict) -> list[Cell]:
    return [(name, ""), _num(r["count"]), _money(r["amount"]),
            _pair(r["reversed_count"], r["reversed_amount"]),
            _pair(r["refunded_count"], r["refunded_amount"]), _money(r["net"]),
            _pair(r["pending_count"], r["pending_amount"])]


def _cutoff(c: dict | None) -> Cell:
    if c is None:
        return ("open", "")
    text = f"closed {when(c['closed_at'])}: {c['count']} payment(s), {yuan(c['total'])}"
    if c.get("reason"):
        text += f" ({c['reason']})"
    return (text, "ok")


def _recon(r: dict | None) -> Cell:
    if r is None:
        return ("no run yet", "")
    text = f"{r['settle_date']} run {r['run_no']}: {r['status']}"
    if r["open_exceptions"]:
        text += f", {r['open_exceptions']} open exception(s)"
    cls = {"BALANCED": "ok", "EXCEPTIONS": "bad", "FAILED": "bad"}.get(r["status"], "")
    return (text, cls)


def _stock_state(state: str) -> Cell:
    return (state, {"OK": "ok", "LOW": "warn", "EMPTY": "bad"}.get(state, ""))


def figure_tables(f: dict) -> dict[str, list[list[Cell]]]:
    """The rows of each figure table from ``/api/overview``'s JSON (dates as text)."""
    day = f["figures"]
    return {
        "per_bank": [_day_row(b, day["per_bank"][b]) for b in day["banks"]],
        "totals": [_day_row("Total", day["totals"])],
        "by_channel": [[(r["bank"], ""), (r["channel"], ""), _num(r["count"]),
                        _money(r["amount"]), _money(r["net"])] for r in day["by_channel"]],
        "by_fee_type": [[(r["bank"], ""), (r["fee_type"] or "(prepaid)", ""),
                         _num(r["count"]), _money(r["amount"]), _money(r["net"])]
                        for r in day["by_fee_type"]],
        "states": [[(s["bank"], ""), _cutoff(s["cutoff"]), (s["last_closed"] or "-", ""),
                    _recon(s["recon"])] for s in f["banks"]],
        "invoices": [[(s["holder"], ""), _num(s["ranges"]), _num(s["remaining"]),
                      _num(s["low_water"]), _stock_state(s["state"])]
                     for s in f["invoices"]],
    }


# -- the page -----------------------------------------------------------------------


class OverviewPage(resource.Resource):
    """``/`` for viewers.

    ``console``: the :class:`~bankgate.app.console.server.Console` (its templates,
    clock and configured banks).  Set by the service once they exist: ``live``,
    ``() -> snapshot`` (:meth:`bankgate.app.console.live.LiveFigures.snapshot`) and
    ``figures``, ``() -> Deferred of /api/overview's dict``
    (:meth:`bankgate.app.console.figures.OverviewFigures.fetch`).  Without them the
    page lists the configured banks.
    """

    isLeaf = True

    def __init__(self, console, live: Callable[[], dict] | None = None,
                 figures: Callable[[], defer.Deferred] | None = None,
                 timeout: float = FIGURES_TIMEOUT):
        super().__init__()
        self.console, self.live, self.figures, self.timeout = console, live, figures, timeout

    def render_GET(self, request):
        if request.postpath not in ([], [b""]):
            return pages.notFound().render(request)
        finished: list = []
        request.notifyFinish().addBoth(finished.append)
        d = self._figures()

        def write(got):
            figures, problem = got
            if not finished:
                request.write(self._page(request, figures, problem))
                request.finish()

        d.addCallback(write)
        d.addErrback(lambda f: log.failure("console: the overview page failed", f))
        return NOT_DONE_YET

    def _figures(self) -> defer.Deferred:
        """A Deferred of ``(figures or None, what went wrong or None)``; never fails."""
        if self.figures is None:
            return defer.succeed((None, None))
        d = defer.maybeDeferred(self.figures)
        d.addTimeout(self.timeout, self.console.clock)

        def failed(f):
            if f.check(StoreUnavailable):
                why = "The database does not answer"
            elif f.check(defer.TimeoutError):
                why = f"The database did not answer within {self.timeout:g} s"
            else:
                log.failure("console: the overview's figures failed", f)
                why = "The day's figures could not be read (the gateway's log says why)"
            return None, why + ": the day's figures are not shown. The bank links still are."

        return d.addCallbacks(lambda f: (f, None), failed)

    def _page(self, request, figures: dict | None, problem: str | None) -> bytes:
        snapshot = self.live() if self.live is not None else None
        live = {b["bank"]: b for b in (snapshot or {}).get("banks", [])}
        links = [{"bank": b, "endpoints": list(getattr(b, "listen", []) or []),
                  "cells": [(k, *link_cells(live.get(b.name))[k]) for k in LINK_FIELDS]}
                 for b in self.console.banks]
        tables = figure_tables(figures) if figures is not None else None
        return self.console.page(
            request, "overview.html", title="Overview", links=links, snapshot=snapshot,
            figures=figures, tables=tables, empty=TABLES, problem=problem,
            live_url="/api/live/stream" if self.live is not None else "",
            figures_url="/api/overview" if self.figures is not None else "")
