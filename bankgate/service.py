"""The gateway as one Twisted service tree.

:class:`GatewayService` is built from a validated :class:`~bankgate.config.Config`
and a reactor (never the global one: ``tap.makeService`` passes it in).  It
starts the database first -- migrations, the reference N8 schema and demo
data when configured -- and only then opens the banks' listeners; it stops
them first and the database last.  A :class:`Scheduler` closes trade dates at
each bank's cut-off time (catching up dates missed while the service was
down) and expires unconfirmed two-phase payments.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from twisted.application import service, strports
from twisted.internet import defer, task
from twisted.logger import Logger

from bankgate.config import Config, check_plugins
from bankgate.engine import BankFactory
from bankgate.ledger import Ledger, LedgerService
from bankgate.store.db import Store

log = Logger(namespace="bankgate")

CATCH_UP_DAYS = 7


class GatewayService(service.MultiService):
    def __init__(self, cfg: Config, reactor):
        super().__init__()
        self.cfg = cfg
        self.reactor = reactor
        self.codecs = check_plugins(cfg)
        self.store = Store(cfg.db_url, cfg.n8, reactor=reactor, threads=cfg.db_threads,
                           echo=cfg.db_echo)
        self.ledger = Ledger(self.store, {b.name: b.policy_() for b in cfg.banks}, now=self.now)
        self.ledger_service = LedgerService(self.ledger)
        self.factories: dict[str, BankFactory] = {}
        self.listeners: list[tuple[str, str, service.Service]] = []
        for b in cfg.banks:
            factory = BankFactory(
                self.codecs[b.plugin], b.profile(), self.ledger_service.handle, reactor,
                now=self.now,
            )
            self.factories[b.name] = factory
            for ep in b.listen:
                svc = strports.service(ep, factory, reactor=reactor)
                svc.setName(f"{b.name}@{ep}")
                self.listeners.append((b.name, ep, svc))
        self.scheduler = Scheduler(self)
        self.ready = defer.Deferred()

    def now(self) -> datetime:
        """Local wall-clock time in the configured zone, from the reactor's clock."""
        return datetime.fromtimestamp(self.reactor.seconds(), self.cfg.tz).replace(tzinfo=None)

    # -- lifecycle -------------------------------------------------------------

    def startService(self):
        service.Service.startService(self)
        self.store.start()
        log.info("bankgate: opening database {url}", url=_safe_url(self.cfg.db_url))
        d = self.store.call(prepare_database, self.store, self.cfg)
        d.addCallback(self._database_ready)
        d.addErrback(self._start_failed)

    def _database_ready(self, summary):
        log.info("bankgate: database ready ({summary})", summary=summary)
        for name, ep, svc in self.listeners:
            svc.setServiceParent(self)
            log.info("bankgate: bank {bank} ({plugin}, code {code}) listening on {ep}",
                     bank=name, plugin=self.cfg.bank(name).plugin,
                     code=self.cfg.bank(name).bank_code, ep=ep)
        self.scheduler.start()
        log.info("bankgate: ready, {n} bank(s)", n=len(self.cfg.banks))
        self.ready.callback(self)

    def _start_failed(self, failure):
        log.failure("bankgate: cannot start", failure)
        if not self.ready.called:
            self.ready.errback(failure)
        if self.reactor.running:
            self.reactor.stop()

    @defer.inlineCallbacks
    def stopService(self):
        self.scheduler.stop()
        yield defer.maybeDeferred(service.MultiService.stopService, self)
        self.store.stop()
        log.info("bankgate: stopped")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def prepare_database(store: Store, cfg: Config) -> str:
    """Runs on the store's thread: migrate, create the N8 reference schema, seed."""
    store.create_gateway_tables()
    parts = ["gateway schema up to date"]
    if not store.n8_exists():
        if not cfg.n8_create:
            raise RuntimeError(
                f"{cfg.source}: n8: the N8 table {store.n8['customer'].name!r} does not exist;"
                " map [n8.tables] onto your N8 schema or set n8.create = true"
            )
        store.create_n8_tables()
        parts.append("reference N8 schema created")
    if cfg.demo_customers and store.customer_count() == 0:
        from bankgate.demo import seed

        seed(store, cfg.demo_customers)
        parts.append(f"{cfg.demo_customers} demo customers seeded")
    parts.append(f"{store.customer_count()} customers")
    return ", ".join(parts)


class Scheduler:
    """Cut-off at each bank's configured time, and two-phase expiry.

    Checks once a minute on the injected clock.  A date whose cut-off time
    passed while the service was down is closed at the next check (up to
    :data:`CATCH_UP_DAYS` back), oldest first.
    """

    interval = 60.0

    def __init__(self, gw: GatewayService):
        self.gw = gw
        self.loop = task.LoopingCall(self.tick)
        self.loop.clock = gw.reactor
        self._running: defer.Deferred | None = None

    def start(self):
        self.loop.start(self.interval, now=True).addErrback(
            lambda f: log.failure("scheduler stopped", f)
        )

    def stop(self):
        if self.loop.running:
            self.loop.stop()

    def tick(self):
        if self._running is not None:  # the previous tick is still at work
            return None
        now = self.gw.now()
        self._running = self.gw.store.call(self.run_due, now)
        self._running.addErrback(lambda f: log.failure("scheduler tick failed", f))
        self._running.addBoth(self._done)
        return None

    def _done(self, result):
        self._running = None
        return result

    def due_cutoffs(self, now: datetime) -> list[tuple[str, date]]:
        out = []
        for b in self.gw.cfg.banks:
            if b.cutoff_time is None:
                continue
            last = now.date() if now.time() >= b.cutoff_time else now.date() - timedelta(days=1)
            for k in range(CATCH_UP_DAYS - 1, -1, -1):
                out.append((b.name, last - timedelta(days=k)))
        return out

    def run_due(self, now: datetime) -> int:
        """Runs on the store's thread; returns how many dates it closed."""
        ledger = self.gw.ledger
        closed = 0
        for bank, d in self.due_cutoffs(now):
            if (bank, d) in ledger._closed:
                continue
            if not ledger.store.run_sync(lambda tx, b=bank, dd=d: tx.is_closed(b, dd)):
                ledger.cutoff(bank, d, reason="scheduled")
                log.info("bankgate: cut-off: closed {bank} {date}", bank=bank, date=d)
                closed += 1
            else:
                ledger._closed.add((bank, d))
        ledger.expire_pending()
        return closed
