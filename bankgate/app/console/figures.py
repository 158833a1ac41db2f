"""``/api/overview``: the overview's figures from the database, as JSON.

Today's count and amount per bank, channel and fee type, each bank's cut-off and latest
reconciliation run, invoice stock per holder against its low-water mark
(:func:`bankgate.domain.overview.overview`), read on the store's pool -- never on the
reactor thread -- for the overview page to poll.  Money is integer fen, dates ISO 8601.
A database that does not answer gives ``503`` with ``{"error": ...}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource
from twisted.web.server import NOT_DONE_YET

from bankgate.domain import overview
from bankgate.store.db import StoreUnavailable

log = Logger(namespace="bankgate.console.figures")


def _plain(value):
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")


class OverviewFigures(resource.Resource):
    isLeaf = True

    def __init__(self, store, today: Callable[[], date], banks: Iterable[str],
                 invoice_settings: Mapping | None = None):
        super().__init__()
        self.store, self.today = store, today
        self.banks, self.settings = list(banks), dict(invoice_settings or {})

    def fetch(self) -> defer.Deferred:
        """The figures as this resource sends them (read on the store's pool); the
        overview page renders them before its script polls for newer ones."""
        d = self.store.call(overview.overview, self.store, self.today(), self.banks,
                            self.settings)
        return d.addCallback(lambda f: json.loads(json.dumps(f, default=_plain)))

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        finished: list = []
        request.notifyFinish().addBoth(finished.append)
        d = self.fetch()

        def ok(figures):
            return json.dumps(figures, default=_plain, ensure_ascii=False).encode("utf-8")

        def failed(f):
            request.setResponseCode(503 if f.check(StoreUnavailable) else 500)
            if not f.check(StoreUnavailable):
                log.failure("console: the overview figures failed", f)
            return json.dumps({"error": "the database does not answer"
                               if f.check(StoreUnavailable) else "internal error"}).encode()

        def write(body):
            if not finished:
                request.write(body)
                request.finish()

        d.addCallbacks(ok, failed).addCallback(write)
        return NOT_DONE_YET


def mount(console, store, today: Callable[[], date], banks: Iterable[str],
          invoice_settings: Mapping | None = None) -> OverviewFigures:
    """Mount ``/api/overview`` for viewers on ``console``."""
    page = OverviewFigures(store, today, banks, invoice_settings)
    console.mount("api/overview", page, role="viewer")
    return page
