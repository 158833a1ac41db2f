"""The live figures of every bank link, for the console's overview.

Per bank: the endpoints it listens on and whether they listen, connected
peers, the last message (time, and seconds since), requests per minute,
accepted payments per minute, the error rate over the last five minutes, the
outbound card-debit link's state where the bank has one, and -- where the bank's
plugin signs in (ISO 8583) -- the connections signed in, the last sign-in and the
age of the oldest working key in use (:func:`_signin`).

Where they come from, and what they cost:

- the wire listener's observer (:attr:`bankgate.wire.listener.BankFactory.observers`)
  counts each request into a :class:`Ring` of per-second buckets -- an index,
  a compare and two increments per request;
- the ledger's listeners (:attr:`bankgate.domain.ledger.LedgerService.listeners`)
  count accepted payments and note the last one's time;
- the listener's own :class:`~bankgate.wire.listener.BankStats` (connections,
  last frame) and the debit link's :meth:`~bankgate.wire.debitlink.DebitLink.status`
  are read when a snapshot is taken.

A snapshot is taken at most once a second of the injected clock, whoever
asks: twenty browsers following the stream cost one snapshot a second.

An *error* is a request the gateway could not handle as the bank meant it:
a refused frame, a codec or ledger failure, or an answer of
:data:`ERROR_OUTCOMES` (format, MAC, sign-in, busy, internal error).  A
business refusal (unknown customer, nothing due, date closed) is not one.

With ``[gateway] workers = N`` the banks are served by worker processes: the
service's factories are then their sums (:class:`bankgate.app.workers.RemoteFactory`:
the same shape, fed once a second from each worker's counts, which it replays to the
observers here; accepted payments arrive through its ``payment_observers``), and the
snapshot lists each worker (``workers``: pid, serving, restarts, connections,
transactions); with one process ``workers`` is ``None``.

Served as JSON at ``/api/live`` and as server-sent events at
``/api/live/stream``: one ``data:`` event a second while at least one client
listens, no timer at all otherwise.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable
from datetime import datetime
from typing import Any

from twisted.internet import task
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from bankgate.canon import messages as m

log = Logger(namespace="bankgate.console")

ERROR_OUTCOMES = frozenset({
    "REJECTED", "ERROR", "BUSY", "FORMAT_ERROR", "MAC_ERROR", "UNKNOWN_TRANSACTION",
    "NOT_AUTHORISED", "NOT_SIGNED_IN",
})

WINDOW = 300  # seconds of history: the error rate's window
MINUTE = 60


class Ring:
    """Counts per second over the last :data:`WINDOW` seconds.

    Bucket ``s % size`` holds second ``s``; a bucket still stamped with an
    older second is stale and counts as zero (and is reset on its next use).
    """

    __slots__ = ("errors", "payments", "requests", "size", "stamp")

    def __init__(self, size: int = WINDOW):
        self.size = size
        self.stamp = [-1] * size
        self.requests = [0] * size
        self.errors = [0] * size
        self.payments = [0] * size

    def _bucket(self, t: float) -> int:
        s = int(t)
        i = s % self.size
        if self.stamp[i] != s:
            self.stamp[i] = s
            self.requests[i] = self.errors[i] = self.payments[i] = 0
        return i

    def add(self, t: float, error: bool) -> None:
        i = self._bucket(t)
        self.requests[i] += 1
        if error:
            self.errors[i] += 1

    def add_payment(self, t: float, n: int = 1) -> None:
        self.payments[self._bucket(t)] += n

    def totals(self, t: float, seconds: int) -> tuple[int, int, int]:
        """``(requests, errors, payments)`` of the last ``seconds`` seconds up to
        and including the current one."""
        now = int(t)
        first = now - min(seconds, self.size) + 1
        req = err = pay = 0
        for i, s in enumerate(self.stamp):
            if first <= s <= now:
                req += self.requests[i]
                err += self.errors[i]
                pay += self.payments[i]
        return req, err, pay


class BankLive:
    """One bank's figures."""

    def __init__(self, name: str, factory, endpoints: list[str]):
        self.name = name
        self.factory = factory
        self.endpoints = list(endpoints)
        self.ring = Ring()
        self.last_payment: datetime | None = None


class LiveFigures:
    """Every bank's live figures.

    :param clock: ``IReactorTime`` (buckets, the stream's timer).
    :param now: local wall-clock time (the listener's ``now``: its last-message
        times are in it).
    :param banks: ``[(bank, BankFactory, [endpoint, ...])]``.
    :param debit_links: ``() -> {bank: DebitLink}``.
    :param alerts: ``() -> [open alert as a dict]`` (the alert service's), or ``None``
        when alerts are off: the snapshot's ``alerts`` is then ``None``.
    :param workers: ``() -> [worker as a dict]`` (the worker pool's ``status``), or
        ``None`` in one process: the snapshot's ``workers`` is then ``None``.
    """

    def __init__(self, clock, now: Callable[[], datetime], banks: list[tuple[str, Any, list]],
                 debit_links: Callable[[], dict] | None = None,
                 alerts: Callable[[], list] | None = None,
                 workers: Callable[[], list] | None = None):
        self.clock = clock
        self.now = now
        self.debit_links = debit_links or dict
        self.alerts = alerts
        self.workers = workers
        self.banks = {name: BankLive(name, f, eps) for name, f, eps in banks}
        self._snapshot: tuple[int, dict] | None = None
        for b in self.banks.values():
            b.factory.observers.append(self._observer(b.ring))
            paid = getattr(b.factory, "payment_observers", None)  # the workers' sums
            if paid is not None:
                paid.append(self._paid_observer(b))

    def _observer(self, ring: Ring):
        seconds, errors = self.clock.seconds, ERROR_OUTCOMES

        def observe(bank: str, txname: str, outcome: str, elapsed: float | None) -> None:
            ring.add(seconds(), outcome in errors)

        return observe

    def _paid_observer(self, b: BankLive):
        def paid(count: int, last: datetime | None) -> None:
            b.ring.add_payment(self.clock.seconds(), count)
            if last is not None and (b.last_payment is None or last > b.last_payment):
                b.last_payment = last

        return paid

    def on_request(self, req, result) -> None:
        """A LedgerService listener: an accepted payment counts for its bank."""
        if isinstance(req, m.PaymentRequest) and getattr(result, "outcome", None) is m.Outcome.OK:
            b = self.banks.get(req.origin.bank)
            if b is not None:
                b.ring.add_payment(self.clock.seconds())
                b.last_payment = self.now()

    # -- snapshots ------------------------------------------------------------------

    def snapshot(self) -> dict:
        """The figures now (the same object for every caller within one second)."""
        t = self.clock.seconds()
        second = int(t)
        if self._snapshot is not None and self._snapshot[0] == second:
            return self._snapshot[1]
        now = self.now()
        links = self.debit_links()
        out = {"at": now.isoformat(timespec="seconds"),
               "banks": [self._bank(b, t, now, links.get(b.name)) for b in self.banks.values()],
               "alerts": self.alerts() if self.alerts is not None else None,
               "workers": self.workers() if self.workers is not None else None}
        self._snapshot = (second, out)
        return out

    def _bank(self, b: BankLive, t: float, now: datetime, link) -> dict:
        stats = b.factory.stats
        per_minute, _, payments = b.ring.totals(t, MINUTE)
        window, errors, _ = b.ring.totals(t, WINDOW)
        last = stats.last_message
        return {
            "bank": b.name,
            "endpoints": b.endpoints,
            "listening": b.factory.numPorts,
            "peers": stats.connections_open,
            "in_flight": stats.in_flight,
            "last_message": last.isoformat(timespec="seconds") if last else None,
            "seconds_since": max(0, round((now - last).total_seconds())) if last else None,
            "last_payment": (b.last_payment.isoformat(timespec="seconds")
                             if b.last_payment else None),
            "requests_per_minute": per_minute,
            "payments_per_minute": payments,
            "requests_5m": window,
            "errors_5m": errors,
            "error_rate_5m": round(errors / window, 4) if window else None,
            "debit_link": _link(link) if link is not None else None,
            "signin": _signin(b.factory, now) if b.factory.signin_txn else None,
        }


def _signin(factory, now: datetime) -> dict:
    """A signing-in bank's connections signed in, its last sign-in (any connection's,
    also one closed since), and the age in seconds of the oldest working key in use
    (exchanged at its connection's sign-in; ``None`` when none is signed in)."""
    since = [p.signed_in_at for p in factory.connections if p.signed_in_at is not None]
    last = factory.stats.last_signin
    return {"signed_in": len(since),
            "last_signin": last.isoformat(timespec="seconds") if last else None,
            "key_age": max(0, round((now - min(since)).total_seconds())) if since else None}


def _link(link) -> dict:
    st = link.status()
    return {"connected": st["connected"], "queued": st["queued"], "connects": st["connects"],
            "last_answer_at": st["last_answer_at"]}


# -- resources ------------------------------------------------------------------------


class LiveResource(Resource):
    """``GET /api/live``: the snapshot as JSON; ``/api/live/stream`` its child."""

    def __init__(self, live: LiveFigures, interval: float = 1.0, max_clients: int = 100):
        super().__init__()
        self.live = live
        self.stream = LiveStream(live, interval, max_clients)
        self.putChild(b"stream", self.stream)

    def getChild(self, path, request):  # noqa: N802
        if path == b"":
            return self
        return super().getChild(path, request)

    def render_GET(self, request):  # noqa: N802
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return _json(self.live.snapshot())


class LiveStream(Resource):
    """``GET /api/live/stream``: ``text/event-stream``, one event per
    ``interval`` seconds to every client, from one timer that runs only while
    a client listens.  A client that goes away is dropped; the last one to go
    stops the timer."""

    isLeaf = True

    def __init__(self, live: LiveFigures, interval: float = 1.0, max_clients: int = 100):
        super().__init__()
        self.live = live
        self.interval = max(1.0, interval)  # never more than one event a second
        self.max_clients = max_clients
        self.clients: set = set()
        self.loop: task.LoopingCall | None = None

    def render_GET(self, request):  # noqa: N802
        if len(self.clients) >= self.max_clients:
            request.setResponseCode(503)
            request.setHeader(b"retry-after", b"10")
            return b"too many live views open\n"
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")  # a proxy must not hold events back
        request.write(b"retry: 5000\n\n")
        self.clients.add(request)
        request.notifyFinish().addBoth(self._gone, request)
        self._send([request])
        if self.loop is None:
            self.loop = task.LoopingCall(self._tick)
            self.loop.clock = self.live.clock
            self.loop.start(self.interval, now=False).addErrback(
                lambda f: log.failure("live view: stream timer stopped", f))
        return NOT_DONE_YET

    def _gone(self, _, request) -> None:
        self.clients.discard(request)
        if not self.clients and self.loop is not None:
            loop, self.loop = self.loop, None
            if loop.running:
                loop.stop()

    def _tick(self) -> None:
        self._send(list(self.clients))

    def _send(self, requests) -> None:
        event = b"data: " + _json(self.live.snapshot()).rstrip(b"\n") + b"\n\n"
        for r in requests:
            r.write(event)


def _json(value) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


# -- built once per gateway service --------------------------------------------------

_per_service: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def live_for(gw) -> LiveFigures:
    """The :class:`LiveFigures` of a :class:`~bankgate.app.service.GatewayService`
    (built, and attached to its listeners and ledger, on first use)."""
    live = _per_service.get(gw)
    if live is None:
        banks = [(b.name, gw.factories[b.name], list(b.listen)) for b in gw.cfg.banks]
        alerts = getattr(gw, "alerts", None)  # the alert service, or None ([alerts] off)
        pool = getattr(gw, "pool", None)  # the worker processes, or None (one process)
        live = LiveFigures(gw.reactor, gw.now, banks, debit_links=lambda: _debit_links(gw),
                           alerts=(lambda: [e.as_dict() for e in alerts.open_alerts()])
                           if alerts is not None else None,
                           workers=pool.status if pool is not None else None)
        gw.ledger_service.listeners.append(live.on_request)
        _per_service[gw] = live
    return live


def _debit_links(gw) -> dict:
    debits = getattr(gw, "card_debits", None)  # set once the database is ready
    if debits is None:
        return {}
    return {name: b.link for name, b in debits.banks.items()}


def live_resource(gw, interval: float = 1.0) -> LiveResource:
    """``/api/live`` (and ``/api/live/stream``) of a gateway service (behind login)."""
    return LiveResource(live_for(gw), interval)
