"""``/metrics``: the gateway's figures for Prometheus.

Each service has its own :class:`prometheus_client.CollectorRegistry` (never
the module's global one): two gateways in one process -- the tests, the
benchmark -- do not count each other's requests.

What costs what:

- **Per request** (on the reactor thread, on every bank request): the wire
  listener's observer (:attr:`bankgate.wire.listener.BankFactory.observers`)
  calls :meth:`RequestFigures.observe` -- a dict increment and a bucket
  search.  The Prometheus families are built from those plain numbers only
  when someone scrapes.
- **Per scrape**: the database figures (pending card-debit reversals, open
  reconciliation exceptions) are read on the store's thread pool, at most
  once every :attr:`GatewayMetrics.db_interval` seconds of the injected clock
  and within :attr:`GatewayMetrics.db_timeout` seconds; a database that does
  not answer leaves the last figures (and ``bankgate_db_up 0``).  Nothing in a
  ``collect()`` touches the database.

With ``[gateway] workers = N`` the bank figures are the workers' sums (the
service's factories are :class:`bankgate.app.workers.RemoteFactory`, which replays
each worker's counts to :meth:`RequestFigures.observe`), and each worker has
``bankgate_worker_up`` and ``bankgate_worker_restarts``.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from bankgate.store import health as sql

log = Logger(namespace="bankgate.console")

#: request latency buckets, seconds (a bank's own timeout is usually 30--60 s)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)


class RequestFigures:
    """Requests by (bank, transaction, outcome) and latency by (bank, transaction).

    :meth:`observe` is a wire listener observer; it and :meth:`collect` run on
    the reactor thread, so the plain dicts need no lock.
    """

    def __init__(self, buckets: Iterable[float] = LATENCY_BUCKETS):
        self.bounds = tuple(sorted(buckets))
        self.counts: dict[tuple[str, str, str], int] = {}
        # (bank, txn) -> [count in each bucket (the last: above every bound), sum]
        self.latency: dict[tuple[str, str], list] = {}

    def observe(self, bank: str, txname: str, outcome: str, seconds: float | None) -> None:
        key = (bank, txname, outcome)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        if seconds is None:
            return
        h = self.latency.get((bank, txname))
        if h is None:
            h = self.latency[(bank, txname)] = [0] * (len(self.bounds) + 1) + [0.0]
        h[bisect_left(self.bounds, seconds)] += 1
        h[-1] += seconds

    def collect(self):
        requests = CounterMetricFamily(
            "bankgate_requests", "Bank requests answered (REJECTED: frame refused; ERROR: a "
            "codec or the ledger failed)", labels=["bank", "txn", "outcome"])
        for (bank, txn, outcome), n in sorted(self.counts.items()):
            requests.add_metric([bank, txn, outcome], n)
        yield requests
        seconds = HistogramMetricFamily(
            "bankgate_request_seconds", "From a request's frame received to its answer written",
            labels=["bank", "txn"])
        for (bank, txn), h in sorted(self.latency.items()):
            cumulative, buckets = 0, []
            for bound, n in zip((*self.bounds, float("inf")), h[:-1], strict=True):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            seconds.add_metric([bank, txn], buckets, h[-1])
        yield seconds


class GatewayMetrics:
    """A service's registry and the collectors that feed it.

    :param store: the :class:`~bankgate.store.db.Store` (its pools, and the
        database figures on its thread pool).
    :param clock: ``IReactorTime`` (the refresh interval and timeout).
    :param banks: ``{bank: BankFactory}`` (connections and refused frames).
    :param debit_links: ``() -> {bank: DebitLink}`` (outbound card-debit links).
    :param alerts: ``() -> int``, active alerts.
    :param alerts_open: ``() -> {kind: count}``, open alerts per kind
        (``bankgate_alerts_open{kind}``; no series without it).
    :param workers: ``() -> [worker as a dict]``, the worker pool's ``status``
        (``bankgate_worker_up{worker}``, ``bankgate_worker_restarts{worker}``); ``None``
        in one process: no series.
    """

    db_interval = 15.0
    db_timeout = 5.0

    def __init__(self, store, clock, banks: dict[str, Any] | None = None,
                 debit_links: Callable[[], dict] | None = None,
                 alerts: Callable[[], int] | None = None,
                 alerts_open: Callable[[], dict[str, int]] | None = None,
                 workers: Callable[[], list] | None = None):
        self.store = store
        self.workers = workers
        self.clock = clock
        self.banks = dict(banks or {})
        self.debit_links = debit_links or dict
        self.alerts = alerts or (lambda: 0)
        self.alerts_open = alerts_open or dict
        self.requests = RequestFigures()
        self.db_figures: dict[str, dict[str, int]] | None = None
        self.db_up: bool | None = None  # None: not asked yet
        self._db_at: float | None = None
        self._waiters: list[defer.Deferred] | None = None  # a read is under way
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.requests)
        self.registry.register(self)
        for factory in self.banks.values():
            factory.observers.append(self.requests.observe)

    # -- the database figures, at most every db_interval seconds ----------------

    def refresh(self) -> defer.Deferred:
        """Read the database figures if the last read is older than
        :attr:`db_interval`: a Deferred that fires (never fails) when they are
        as fresh as the database allows."""
        now = self.clock.seconds()
        if self._db_at is not None and now - self._db_at < self.db_interval:
            return defer.succeed(None)
        waiter: defer.Deferred = defer.Deferred()
        if self._waiters is not None:  # one read at a time, however many scrapers
            self._waiters.append(waiter)
            return waiter
        self._waiters = [waiter]
        d = self.store.call(self.store.run_sync, sql.figures, readonly=True)
        d.addTimeout(self.db_timeout, self.clock)
        d.addCallbacks(self._got, self._failed)
        d.addBoth(self._refreshed)
        return waiter

    def _got(self, figures: dict) -> None:
        self.db_figures, self.db_up = figures, True

    def _failed(self, failure) -> None:
        if self.db_up is not False:  # once per episode
            log.warn("metrics: database figures not read: {why}",
                     why=failure.getErrorMessage() or failure.type.__name__)
        self.db_up = False

    def _refreshed(self, _) -> None:
        waiters, self._waiters = self._waiters or [], None
        self._db_at = self.clock.seconds()
        for w in waiters:
            w.callback(None)

    # -- collect (on the reactor thread: in-memory figures only) ----------------

    def collect(self):
        yield from self._pool_families()
        yield from self._bank_families()
        yield from self._db_families()
        alerts = GaugeMetricFamily("bankgate_alerts_active", "Alerts active now")
        alerts.add_metric([], float(self.alerts()))
        yield alerts
        by_kind = GaugeMetricFamily("bankgate_alerts_open", "Alerts open now, per kind",
                                    labels=["kind"])
        for kind, n in sorted(self.alerts_open().items()):
            by_kind.add_metric([kind], float(n))
        yield by_kind
        if self.workers is not None:
            yield from self._worker_families(self.workers())

    def _worker_families(self, workers: list):
        up = GaugeMetricFamily("bankgate_worker_up", "Worker process serving the banks (1)"
                               " or not (0)", labels=["worker"])
        restarts = CounterMetricFamily("bankgate_worker_restarts", "Worker processes"
                                       " restarted after an unexpected exit", labels=["worker"])
        for w in workers:
            up.add_metric([str(w["worker"])], 1.0 if w["serving"] else 0.0)
            restarts.add_metric([str(w["worker"])], float(w["restarts"]))
        yield up
        yield restarts

    def _pool_families(self):
        pool = self.store.engine.pool
        size = GaugeMetricFamily("bankgate_db_pool_size", "Database connections the pool keeps")
        out = GaugeMetricFamily("bankgate_db_pool_checked_out", "Database connections in use")
        if hasattr(pool, "checkedout"):
            size.add_metric([], float(pool.size()))
            out.add_metric([], float(pool.checkedout()))
        else:  # SQLite in memory: one shared connection
            size.add_metric([], 1.0)
        yield size
        yield out
        threads = self.store.pool
        busy = GaugeMetricFamily("bankgate_db_threads_busy", "Store threads running a call")
        busy.add_metric([], float(len(threads.working)))
        yield busy
        queued = GaugeMetricFamily("bankgate_db_calls_queued", "Calls waiting for a store thread")
        queued.add_metric([], float(threads.q.qsize()))
        yield queued

    def _bank_families(self):
        conns = GaugeMetricFamily("bankgate_bank_connections", "Bank connections open",
                                  labels=["bank"])
        listening = GaugeMetricFamily("bankgate_bank_listening", "Endpoints listening",
                                      labels=["bank"])
        for bank, factory in sorted(self.banks.items()):
            conns.add_metric([bank], float(factory.stats.connections_open))
            listening.add_metric([bank], float(factory.numPorts))
        yield conns
        yield listening
        links = self.debit_links()
        up = GaugeMetricFamily("bankgate_debit_link_up", "Outbound card-debit link connected",
                               labels=["bank"])
        queue = GaugeMetricFamily("bankgate_debit_link_queued",
                                  "Card-debit exchanges queued or on the wire", labels=["bank"])
        for bank, link in sorted(links.items()):
            st = link.status()
            up.add_metric([bank], 1.0 if st["connected"] else 0.0)
            queue.add_metric([bank], float(st["queued"]))
        yield up
        yield queue

    def _db_families(self):
        up = GaugeMetricFamily("bankgate_db_up", "The last database read answered (1) or not")
        if self.db_up is not None:
            up.add_metric([], 1.0 if self.db_up else 0.0)
        yield up
        figures = self.db_figures or {}
        for key, name, doc in (
            ("pending_reversals", "bankgate_card_debit_reversals_pending",
             "Card debits whose reversal (561) the bank has not confirmed"),
            ("open_exceptions", "bankgate_recon_exceptions_open",
             "Reconciliation exceptions not resolved"),
        ):
            g = GaugeMetricFamily(name, doc, labels=["bank"])
            if self.db_figures is not None:
                per_bank = figures.get(key, {})
                for bank in sorted(set(self.banks) | set(per_bank)):
                    g.add_metric([bank], float(per_bank.get(bank, 0)))
            yield g

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsResource(Resource):
    """``GET /metrics``: the Prometheus text format."""

    isLeaf = True

    def __init__(self, metrics: GatewayMetrics):
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request):  # noqa: N802
        gone = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def write(_):
            if gone:
                return
            body = self.metrics.exposition()
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
            request.setHeader(b"cache-control", b"no-store")
            request.write(body)
            request.finish()

        d = self.metrics.refresh()
        d.addCallback(write)
        d.addErrback(lambda f: log.failure("metrics: scrape failed", f))
        return NOT_DONE_YET


# -- built once per gateway service --------------------------------------------------

_per_service: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def metrics_for(gw) -> GatewayMetrics:
    """The :class:`GatewayMetrics` of a running
    :class:`~bankgate.app.service.GatewayService` (built and attached to its
    bank listeners on first use)."""
    m = _per_service.get(gw)
    if m is None:
        pool = getattr(gw, "pool", None)  # the worker processes, or None (one process)
        m = GatewayMetrics(
            gw.store, gw.reactor, banks=gw.factories,
            debit_links=lambda: _debit_links(gw),
            alerts=lambda: sum(_alerts_open(gw).values()),
            alerts_open=lambda: _alerts_open(gw),
            workers=pool.status if pool is not None else None,
        )
        _per_service[gw] = m
    return m


def _alerts_open(gw) -> dict[str, int]:
    alerts = getattr(gw, "alerts", None)  # the alert service; None: [alerts] off
    return alerts.open_by_kind() if alerts is not None else {}


def _debit_links(gw) -> dict:
    debits = getattr(gw, "card_debits", None)  # set once the database is ready
    if debits is None:
        return {}
    return {name: b.link for name, b in debits.banks.items()}


def metrics_resource(gw) -> MetricsResource:
    """``/metrics`` of a gateway service (mount it without login)."""
    return MetricsResource(metrics_for(gw))
