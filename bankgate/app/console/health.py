"""``/healthz``: may a load balancer send this gateway traffic?

``200`` with ``{"status": "ok", ...}`` when the database answers (and N8's, when
it is a database of its own: the check ``n8 database``), every bank
listens on all its endpoints and every scheduler runs; ``503`` with
``{"status": "fail", "reasons": [...]}`` naming what is wrong otherwise.

The database probe (``SELECT 1``, no retries) runs on the store's thread pool
and is given :attr:`HealthCheck.timeout` seconds of the injected clock: a
database that hangs answers 503 in that time, never a hung probe.  A probe
still running is shared by the requests that arrive meanwhile, so a balancer
polling a dead database does not fill the pool with probes.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from twisted.internet import defer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from bankgate.store import health as sql

#: ``() -> [(what, reason or None)]``: the checks that need no database
Checks = Callable[[], list[tuple[str, str | None]]]


class HealthCheck:
    timeout = 2.0

    def __init__(self, store, clock, checks: Checks | None = None, timeout: float | None = None):
        self.store = store
        self.clock = clock
        self.checks = checks or list
        if timeout is not None:
            self.timeout = timeout
        self._waiters: dict[str, list[defer.Deferred]] = {}

    def database(self) -> defer.Deferred:
        """A Deferred of ``None`` (it answered) or the reason it did not."""
        return self._probe("database", sql.ping)

    def n8_database(self) -> defer.Deferred:
        """The same for N8's database when it is one of its own (``[n8.database]``)."""
        return self._probe("n8 database", sql.ping_n8)

    def _probe(self, what: str, ping) -> defer.Deferred:
        waiter: defer.Deferred = defer.Deferred()
        if what in self._waiters:
            self._waiters[what].append(waiter)
            return waiter
        self._waiters[what] = [waiter]
        try:
            d = self.store.call(ping, self.store)
        except Exception as e:  # noqa: BLE001 -- a store not started: say so
            d = defer.fail(e)
        d.addTimeout(self.timeout, self.clock)
        d.addCallbacks(lambda _: None, self._why, errbackArgs=(what,))
        d.addBoth(self._answered, what)
        return waiter

    def _why(self, failure, what: str = "database") -> str:
        if failure.check(defer.TimeoutError):
            return f"{what}: no answer within {self.timeout:g} s"
        text = " ".join(str(failure.value).split()) or failure.type.__name__
        return f"{what}: {text[:200]}"

    def _answered(self, reason, what: str = "database"):
        for w in self._waiters.pop(what, []):
            w.callback(reason)

    def check(self) -> defer.Deferred:
        """A Deferred of ``(ok, report)``; ``report`` is the JSON body."""
        others = [(what, why) for what, why in self.checks()]
        probes = [("database", self.database())]
        if getattr(self.store, "split", False):  # N8 in a database of its own
            probes.append(("n8 database", self.n8_database()))

        def done(db_reasons):
            report, reasons = {}, []
            for (what, _), why in zip(probes, db_reasons, strict=True):
                report[what] = "ok" if why is None else "fail"
                if why is not None:
                    reasons.append(why)
            for what, why in others:
                report[what] = "ok" if why is None else "fail"
                if why is not None:
                    reasons.append(f"{what}: {why}")
            body = {"status": "ok" if not reasons else "fail", "checks": report}
            if reasons:
                body["reasons"] = reasons
            return not reasons, body

        return defer.gatherResults([d for _, d in probes]).addCallback(done)


class HealthResource(Resource):
    """``GET /healthz`` (and ``HEAD``): 200 or 503, JSON."""

    isLeaf = True

    def __init__(self, health: HealthCheck):
        super().__init__()
        self.health = health

    def render_GET(self, request):  # noqa: N802
        gone = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def write(result):
            if gone:
                return
            ok, body = result
            request.setResponseCode(200 if ok else 503)
            request.setHeader(b"content-type", b"application/json; charset=utf-8")
            request.setHeader(b"cache-control", b"no-store")
            request.write(json.dumps(body, ensure_ascii=False).encode() + b"\n")
            request.finish()

        self.health.check().addCallback(write)
        return NOT_DONE_YET


# -- what a gateway service checks ---------------------------------------------------


def service_checks(gw) -> Checks:
    """The checks of a :class:`~bankgate.app.service.GatewayService`: started,
    each bank listening on all its endpoints (its factory's ``numPorts``: a port
    that stopped listening stops counting), each scheduler's loop running."""

    def checks() -> list[tuple[str, str | None]]:
        out: list[tuple[str, str | None]] = []
        if gw.failure_reason:
            out.append(("service", gw.failure_reason))
        elif not gw.ready.called:
            out.append(("service", "starting"))
        else:
            out.append(("service", None))
        for b in gw.cfg.banks:
            factory = gw.factories[b.name]
            want, have = len(b.listen), factory.numPorts
            why = None if have >= want else f"listening on {have} of {want} endpoint(s)"
            out.append((f"bank {b.name}", why))
        if gw.ready.called:
            for what, loop, wanted in _loops(gw):
                if wanted:
                    out.append((what, None if loop.running else "not running"))
        return out

    return checks


def _loops(gw):
    yield "cut-off scheduler", gw.scheduler.loop, True
    yield ("reconciliation scheduler", gw.recon.loop,
           any(b.reconcile_time for b in gw.cfg.banks if b.name in gw.recon.reconcilers))
    yield "report scheduler", gw.reports.loop, bool(getattr(gw.reports, "definitions", None))
    debits = getattr(gw, "card_debits", None)
    if debits is not None:
        yield "card-debit reversal queue", debits.loop, True


def health_resource(gw, timeout: float | None = None) -> HealthResource:
    """``/healthz`` of a gateway service (mount it without login)."""
    return HealthResource(HealthCheck(gw.store, gw.reactor, service_checks(gw), timeout))
