"""``/api/overview``: the overview's figures from the database, as JSON.

Today's count and amount per bank, channel and fee type, each bank's cut-off and latest
reconciliation run, invoice stock per holder against its low-water mark
(:func:`bankgate.domain.overview.overview`), read on the store's pool -- never on the
reactor thread -- for the overview page to poll.  Money is integer fen, dates ISO 8601.
A database that does not answer gives ``503`` with ``{"error": ...}``.

The figures are read once for every console client: a read is kept for
:data:`MAX_AGE` seconds on the injected clock, and a client asking while a read is
running waits for that read -- twenty operators watching the overview cost the
database what one does, and the banks' payments do not wait behind them.  The
figures per fee type, which join every allocation of the day to its bill, are read
at most every :data:`FEE_TYPE_MAX_AGE` seconds (``by_fee_type_at`` says when).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource
from twisted.web.server import NOT_DONE_YET

from bankgate.domain import overview
from bankgate.store.db import StoreUnavailable

log = Logger(namespace="bankgate.console.figures")

#: seconds a read of the figures is shown to every client (the page polls every 10 s)
MAX_AGE = 10.0
#: seconds the figures per fee type are kept (the dearest read: every allocation of the
#: day joined to its bill)
FEE_TYPE_MAX_AGE = 60.0


def _plain(value):
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")


class OverviewFigures(resource.Resource):
    isLeaf = True

    def __init__(self, store, today: Callable[[], date], banks: Iterable[str],
                 invoice_settings: Mapping | None = None, *, clock=None,
                 max_age: float = MAX_AGE):
        super().__init__()
        self.store, self.today = store, today
        self.banks, self.settings = list(banks), dict(invoice_settings or {})
        self.clock, self.max_age = clock, max_age  # no clock: every fetch reads
        self._kept: tuple[float, str] | None = None  # (read at, the figures as JSON)
        self._fees: tuple[float, list, str] | None = None  # (read at, per fee type, ISO)
        self._waiting: list[defer.Deferred] | None = None  # while a read runs

    def fetch(self) -> defer.Deferred:
        """The figures as this resource sends them (read on the store's pool, or the
        read of less than ``max_age`` seconds ago); the overview page renders them
        before its script polls for newer ones.  Each caller gets its own copy."""
        now = self.clock.seconds() if self.clock is not None else None
        if self._kept is not None and now is not None and now - self._kept[0] < self.max_age:
            return defer.succeed(json.loads(self._kept[1]))
        mine: defer.Deferred = defer.Deferred()
        if self._waiting is not None:  # a read is running: its answer is ours too
            self._waiting.append(mine)
            return mine
        self._waiting = [mine]
        fees = (self._fees is None or now is None
                or now - self._fees[0] >= FEE_TYPE_MAX_AGE)
        d = self.store.call(overview.overview, self.store, self.today(), self.banks,
                            self.settings, by_fee_type=fees)

        def answered(result):
            waiting, self._waiting = self._waiting, None
            if isinstance(result, Failure):
                for w in waiting:
                    w.errback(result)
                return None
            day = result["figures"]
            if fees:
                at = datetime.now().isoformat(timespec="seconds") if now is None else \
                    datetime.fromtimestamp(now).isoformat(timespec="seconds")
                if now is not None:
                    self._fees = (now, day["by_fee_type"], at)
                day["by_fee_type_at"] = at
            else:
                day["by_fee_type"], day["by_fee_type_at"] = self._fees[1], self._fees[2]
            text = json.dumps(result, default=_plain)
            if now is not None:
                self._kept = (now, text)
            for w in waiting:
                w.callback(json.loads(text))
            return None

        d.addBoth(answered)
        return mine

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
          invoice_settings: Mapping | None = None, *, clock=None) -> OverviewFigures:
    """Mount ``/api/overview`` for viewers on ``console``; with ``clock``, a read is
    shared by every client for :data:`MAX_AGE` seconds."""
    page = OverviewFigures(store, today, banks, invoice_settings, clock=clock)
    console.mount("api/overview", page, role="viewer")
    return page
