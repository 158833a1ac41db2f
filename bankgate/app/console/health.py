"""``/healthz``: may a load balancer send this gateway traffic?

``200`` with ``{"status": "ok", ...}`` when the database answers, every bank
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
        self._waiters: list[defer.Deferred] | None = None

    def database(self) -> defer.Deferred:
        """A Deferred of ``None`` (it answered) or the reason it did not."""
        waiter: defer.Deferred = defer.Deferred()
        if self._waiters is not None:
            self._waiters.append(waiter)
            return waiter
        self._waiters = [waiter]
        try:
            d = self.store.call(sql.ping, self.store)
        except Exception as e:  # noqa: BLE001 -- a store not started: say so
            d = defer.fail(e)
        d.addTimeout(self.timeout, self.clock)
        d.addCallbacks(lambda _: None, self._why)
        d.addBoth(self._answered)
        return waiter

    def _why(self, failure) -> str:
        if failure.check(defer.TimeoutError):
            return f"database: no answer within {self.timeout:g} s"
        text = " ".join(str(failure.value).split()) or failure.type.__name__
        return f"database: {text[:200]}"

    def _answered(self, reason):
        waiters, self._waiters = self._waiters or [], None
        for w in waiters:
            w.callback(reason)

    def check(self) -> defer.Deferred:
        """A Deferred of ``(ok, report)``; ``report`` is the JSON body."""
        others = [(what, why) for what, why in self.checks()]

        def done(db_reason):
            report = {"database": "ok" if db_reason is None else "fail"}
            reasons = [] if db_reason is None else [db_reason]
            for what, why in others:
                report[what] = "ok" if why is None else "fail"
                if why is not None:
                    reasons.append(f"{what}: {why}")
            body = {"status": "ok" if not reasons else "fail", "checks": report}
            if reasons:
                body["reasons"] = reasons
            return not reasons, body

        return self.database().addCallback(done)


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
