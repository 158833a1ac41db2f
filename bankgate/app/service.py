"""The gateway as one Twisted service tree.

:class:`GatewayService` is built from a validated :class:`~bankgate.app.config.Config`
and a reactor (never the global one: ``tap.makeService`` passes it in).  It
starts the database first -- migrations, the reference N8 schema and demo
data when configured -- and only then opens the banks' listeners; it stops
them first and the database last.  A :class:`Scheduler` closes trade dates at
each bank's cut-off time (catching up dates missed while the service was
down) and expires unconfirmed two-phase payments.  A :class:`ReconScheduler`
runs each bank's nightly reconciliation at its ``reconcile_time`` (catching
up missed nights in date order at start) and whenever a bank's statement
notice (ref-fixed 1005, ref-delim 510) arrives.

A start that fails says why in one line (:func:`bankgate.app.startup.describe_failure`),
stops the reactor, removes twistd's pid file and exits with status 1; with
twistd's daemon mode the waiting first process is told (``StartReport``).  What
can be checked before twistd forks is checked there (``startup.preflight``).
"""

from __future__ import annotations

import gc
from datetime import date, datetime, timedelta

from twisted.application import service, strports
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from bankgate.app import startup, wiring
from bankgate.app.audit_tail import AuditTail
from bankgate.app.carddebits import make_services as card_debit_services
from bankgate.app.config import Config
from bankgate.app.options import simulated_listen
from bankgate.app.report_schedule import ReportScheduler
from bankgate.canon import messages as m
from bankgate.domain.ledger import LedgerService
from bankgate.domain.reconcile import ReconBusy, StatementError
from bankgate.wire.listener import BankFactory

log = Logger(namespace="bankgate")

CATCH_UP_DAYS = 7


class GatewayService(service.MultiService):
    def __init__(self, cfg: Config, reactor, *, demo=None):
        super().__init__()
        self.cfg = cfg
        self.reactor = reactor
        self.demo = demo  # bankgate.app.demo.Demo for twistd; None: no development tools
        # plugins loaded and every [bank.options] checked: bad options fail at start
        self.parts = wiring.build(cfg, reactor=reactor, now=self.now)
        self.codecs = self.parts.codecs
        self.store = self.parts.store
        self.ledger = self.parts.ledger
        self.ledger_service = LedgerService(self.ledger)
        self.factories: dict[str, BankFactory] = {}
        self.listeners: list[tuple[str, str, service.Service]] = []
        for b in cfg.banks:
            factory = BankFactory(
                self.codecs[b.plugin], b.profile(), self.ledger_service.handle, reactor,
                now=self.now, log_frames=cfg.log_frames,
            )
            factory.noisy = False
            self.factories[b.name] = factory
            for ep in b.listen:
                try:  # an ssl: key or certificate file is read here
                    svc = strports.service(ep, factory, reactor=reactor)
                except Exception as e:  # noqa: BLE001 - a file, a module, a parameter
                    raise startup.StartupError(
                        f"bank {b.name}: cannot listen on {ep}: {startup.one_line(e)}") from None
                svc.setName(f"{b.name}@{ep}")
                self.listeners.append((b.name, ep, svc))
        self.console = None  # the operator console ([console]; bankgate/app/console)
        if cfg.console.enabled:
            from bankgate.app.console.server import console_service

            try:  # an ssl: key or certificate file is read here
                self.console = console_service(self)
            except Exception as e:  # noqa: BLE001 - a file, a module, a parameter
                raise startup.StartupError(
                    f"console: cannot listen on {cfg.console.listen}:"
                    f" {startup.one_line(e)}") from None
        self.scheduler = Scheduler(self)
        self.recon = ReconScheduler(self)
        self.reports = ReportScheduler.for_service(self)  # [reports] dir, scheduled ones
        self.ledger_service.listeners.append(self.recon.on_request)
        self.ready = defer.Deferred()
        self.lock: startup.DataLock | None = None  # the data folder's, from tap's preflight
        self.report = startup.StartReport()  # tap gives it twistd's options
        self.failure_reason: str | None = None

    def listen_endpoints(self) -> list[tuple[str, str]]:
        """``(who, endpoint)`` of everything this service will listen on: each
        bank's listeners, and a simulated debit host where the demo plays one."""
        out = [(f"bank {name}", ep) for name, ep, _ in self.listeners]
        if self.console is not None:
            out.append(("console", self.cfg.console.listen))
            if self.cfg.console.metrics_listen:
                out.append(("console /healthz and /metrics", self.cfg.console.metrics_listen))
        if self.demo is not None and getattr(self.demo, "simulated_host", None):
            for b in self.cfg.banks:
                opts = self.parts.withholding_options.get(b.name)
                if opts is not None and opts.card_debit and opts.debit_host_simulate:
                    out.append((f"bank {b.name}'s simulated debit host", simulated_listen(opts)))
        return out

    def now(self) -> datetime:
        """Local wall-clock time in the configured zone, from the reactor's clock."""
        return datetime.fromtimestamp(self.reactor.seconds(), self.cfg.tz).replace(tzinfo=None)

    # -- lifecycle -------------------------------------------------------------

    def startService(self):
        service.Service.startService(self)
        self.report.take()  # twistd has forked by now: the daemon answers its first process
        if self.lock is not None:
            self.lock.note_pid()
        self.store.start()
        log.info("bankgate: opening database {url}", url=startup.safe_url(self.cfg.db_url))
        d = self.store.call(prepare_database, self.parts, self.demo)
        d.addCallback(self._console_accounts)
        d.addCallback(self._database_ready)
        d.addErrback(self._start_failed)

    def _database_ready(self, summary):
        log.info("bankgate: database ready ({summary})", summary=summary)
        for name, ep, svc in self.listeners:
            _listen(svc, self, f"bank {name}", ep)
            log.info("bankgate: bank {bank} ({plugin}, code {code}) listening on {ep}",
                     bank=name, plugin=self.cfg.bank(name).plugin,
                     code=self.cfg.bank(name).bank_code, ep=ep)
        # outbound card-debit links; their reversal queue resumes at once (and the
        # demo's simulated debit host, where the configuration asks for one)
        self.card_debits, debit_services = card_debit_services(
            self, simulated_host=self.demo.simulated_host if self.demo else None)
        for svc in debit_services:
            _listen(svc, self, svc.name or "card debits", "")
        if self.console is not None:
            from bankgate.app.console.server import address

            _listen(self.console, self, "console", self.cfg.console.listen)
            log.info("bankgate: console at {url}", url=address(self.cfg.console.listen))
        AuditTail(self.store, self.reactor).setServiceParent(self)  # the CLI's actions, logged
        self.scheduler.start()
        self.recon.start()
        self.reports.start()  # a broken definition is logged here, at start
        self.store.call(self.parts.invoices().low_stock)
        # everything loaded so far lives as long as the process: keep it out of
        # the collector's full passes (their pauses show in the latency tail)
        if getattr(self.reactor, "running", False):  # a real process, not a test
            gc.collect()
            gc.freeze()
        log.info("bankgate: ready, {n} bank(s)", n=len(self.cfg.banks))
        self.report.ready()
        self.ready.callback(self)

    def _console_accounts(self, summary):
        """The console's first administrator, when it has no user yet."""
        if self.console is None:
            return summary
        from bankgate.app.console.server import first_start

        return first_start(self).addCallback(lambda _: summary)

    def _start_failed(self, failure):
        why = startup.describe_failure(failure.value, self.cfg.db_url)
        if why is None:  # not one of the failures an operator fixes: keep the traceback
            why = f"{type(failure.value).__name__}: {startup.one_line(failure.value)}"
            log.critical("bankgate: cannot start: {why}", why=why)
            log.failure("bankgate: the error in full", failure)
        else:
            log.critical("bankgate: cannot start: {why}", why=why)
        self.failure_reason = why
        if not self.ready.called:
            self.ready.errback(failure)
        if self.reactor.running:
            # twistd itself would exit 0 and leave its pid file: a supervisor (or the
            # shell waiting for twistd's daemon) must see the failure
            self.reactor.addSystemEventTrigger("after", "shutdown", self._exit_failure)
            self.reactor.stop()

    def _exit_failure(self) -> None:
        self.report.failed(self.failure_reason or "cannot start")
        _exit_failure()

    @defer.inlineCallbacks
    def stopService(self):
        self.scheduler.stop()
        self.recon.stop()
        self.reports.stop()
        yield defer.maybeDeferred(service.MultiService.stopService, self)
        self.store.stop()
        if self.lock is not None:
            self.lock.release()
        log.info("bankgate: stopped")


def _listen(svc: service.Service, parent: GatewayService, who: str, ep: str) -> None:
    """Start a listening service under ``parent``; a port that cannot be had is
    a :class:`~bankgate.app.startup.StartupError` naming who wanted it."""
    from twisted.internet.error import CannotListenError

    try:
        svc.setServiceParent(parent)
    except CannotListenError as e:
        where = f" on {ep}" if ep else ""
        raise startup.StartupError(
            f"{who}: cannot listen{where}: {startup.listen_problem(e)}") from None


def _exit_failure() -> None:
    import os

    os._exit(1)


def prepare_database(parts: wiring.Parts, demo=None) -> str:
    """Runs on the store's thread: migrate, create the N8 reference schema, and
    (with a :class:`~bankgate.app.demo.Demo`) seed demo data."""
    store, cfg = parts.store, parts.cfg
    store.create_gateway_tables()
    done = ["gateway schema up to date"]
    if not store.n8_exists():
        if not cfg.n8_create:
            raise startup.StartupError(startup.n8_missing(cfg, store))
        store.create_n8_tables()
        done.append("reference N8 schema created")
    if cfg.demo_customers and store.customer_count() == 0:
        if demo is None:
            done.append(f"n8.demo_customers = {cfg.demo_customers} ignored: no demo here")
        else:
            done.extend(demo.seed(store, cfg.demo_customers, parts.invoices()))
    done.append(f"{store.customer_count()} customers")
    return ", ".join(done)


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
        closed: dict[str, list[date]] = {}
        for bank, d in self.due_cutoffs(now):
            if ledger.known_closed(bank, d):
                continue
            if not ledger.store.run_sync(lambda tx, b=bank, dd=d: tx.is_closed(b, dd)):
                ledger.cutoff(bank, d, reason="scheduled")
                closed.setdefault(bank, []).append(d)
            else:
                ledger.mark_closed(bank, d)
        for bank, dates in closed.items():
            log.info("bankgate: cut-off: closed {bank} {dates}", bank=bank,
                     dates=", ".join(f"{d:%Y-%m-%d}" for d in dates))
        ledger.expire_pending()
        return sum(len(v) for v in closed.values())


# -- nightly reconciliation (对账) ----------------------------------------------------


class ReconScheduler:
    """Runs reconciliations inside the service, one bank's runs after another.

    - At each bank's ``reconcile_time`` it reconciles the dates due: the
      settle date ``reconcile_days_back`` days before today and every earlier
      date of the last :data:`CATCH_UP_DAYS` (on or after the bank's first
      transaction) without a finished run -- oldest first.  At start, the same
      check runs at once: nights missed while the service was down catch up.
    - A statement notice (ref-fixed 1005, ref-delim 510) queues that date.
    - Each run waits for the statement file with back-off on the reactor's
      clock (``statement_retry`` doubling up to ``statement_retry_max``, for at
      most ``statement_wait``); a file that never comes is a FAILED run.
    - The file is read and reconciled on the store's thread pool (``store.call``);
      nothing blocks the reactor.
    """

    interval = 60.0
    history_size = 100

    def __init__(self, gw: GatewayService):
        self.gw = gw
        self.loop = task.LoopingCall(self.tick)
        self.loop.clock = gw.reactor
        self._last: datetime | None = None
        self.queues: dict[str, list[tuple[date, str | None, str]]] = {}
        self.running: dict[str, tuple[date, defer.Deferred]] = {}
        self._waiters: dict[tuple[str, date], list[defer.Deferred]] = {}
        self._fetches: dict[str, object] = {}
        self.reports: list = []  # the last runs' RunReports, newest last
        self._stopped = False
        self.reconcilers = gw.parts.reconcilers()  # banks whose plugin has a statement format

    def start(self) -> None:
        self._stopped = False
        if any(b.reconcile_time for b in self.gw.cfg.banks if b.name in self.reconcilers):
            self.loop.start(self.interval, now=True).addErrback(
                lambda f: log.failure("reconciliation scheduler stopped", f))

    def stop(self) -> None:
        self._stopped = True
        if self.loop.running:
            self.loop.stop()
        for f in list(self._fetches.values()):
            f.cancel()
        self._fetches.clear()
        self.queues.clear()

    # -- when --------------------------------------------------------------------

    def tick(self) -> None:
        now = self.gw.now()
        for b in self.gw.cfg.banks:
            if b.reconcile_time is None or b.name not in self.reconcilers:
                continue
            fire = datetime.combine(now.date(), b.reconcile_time)
            if self._last is None or self._last < fire <= now:
                d = self.gw.store.call(self.due_dates, b.name, now)
                d.addCallback(self._enqueue_due, b.name,
                              "catch-up" if self._last is None else "scheduled")
                d.addErrback(lambda f, n=b.name: log.failure(
                    "reconciliation: cannot find the dates due for {bank}", f, bank=n))
        self._last = now

    def due_dates(self, bank: str, now: datetime) -> list[date]:
        """Runs on the store's thread: the dates of ``bank`` to reconcile now."""
        from bankgate.store import recon as sql

        b = self.gw.cfg.bank(bank)
        today = now.date() if now.time() >= b.reconcile_time else now.date() - timedelta(days=1)
        target = today - timedelta(days=b.reconcile_days_back)
        start = target - timedelta(days=CATCH_UP_DAYS - 1)
        first = self.gw.store.run_sync(sql.first_activity, bank)
        if first is None:
            return []
        done = self.gw.store.run_sync(sql.reconciled_dates, bank, start)
        out = []
        d = max(start, first)
        while d <= target:
            if d not in done:
                out.append(d)
            d += timedelta(days=1)
        return out

    def _enqueue_due(self, dates: list[date], bank: str, why: str) -> None:
        for d in dates:
            self.enqueue(bank, d, why=why).addErrback(lambda f: None)

    def on_request(self, req, result) -> None:
        """A LedgerService listener: a statement notice the ledger accepted
        queues its date."""
        if isinstance(req, m.StatementNotice) and result.outcome is m.Outcome.OK:
            bank = req.origin.bank
            if bank in self.reconcilers:
                self.enqueue(bank, req.settle_date, file_name=req.file_name or None,
                             why="notice").addErrback(lambda f: None)

    # -- what --------------------------------------------------------------------

    def enqueue(self, bank: str, d: date, file_name: str | None = None,
                why: str = "operator") -> defer.Deferred:
        """Queue a run of ``bank`` for ``d``: a Deferred of its RunReport
        (``None`` when it could not run).  A date already queued or running
        is not queued twice."""
        if bank not in self.reconcilers:
            return defer.fail(KeyError(f"bank {bank!r} cannot be reconciled"))
        waiter: defer.Deferred = defer.Deferred()
        waiting = self._waiters.setdefault((bank, d), [])
        waiting.append(waiter)
        run = self.running.get(bank)
        queue = self.queues.setdefault(bank, [])
        if len(waiting) == 1 and not (run and run[0] == d):
            queue.append((d, file_name, why))
            queue.sort(key=lambda q: q[0])
            log.info("reconciliation: {bank} {date} queued ({why})", bank=bank, date=d, why=why)
        self._pump(bank)
        return waiter

    def _pump(self, bank: str) -> None:
        if self._stopped or bank in self.running or not self.queues.get(bank):
            return
        d, file_name, why = self.queues[bank].pop(0)
        run = self._run(bank, d, file_name)
        self.running[bank] = (d, run)

        def finished(result):
            self.running.pop(bank, None)
            self._fetches.pop(bank, None)
            rep = result if not isinstance(result, Failure) else None
            if rep is not None:
                self.reports.append(rep)
                del self.reports[:-self.history_size]
            for w in self._waiters.pop((bank, d), []):
                w.callback(rep) if not isinstance(result, Failure) else w.errback(result)
            self._pump(bank)
            return None

        run.addBoth(finished)

    def _run(self, bank: str, d: date, file_name: str | None) -> defer.Deferred:
        from bankgate.wire.statement_sources import Fetch, StatementGaveUp, source_for

        b = self.gw.cfg.bank(bank)
        rec = self.reconcilers[bank]
        name = file_name or rec.file_name(d)
        src = source_for(b, self.gw.reactor, data_dir=self.gw.cfg.data_dir,
                         run_blocking=self.gw.store.call)

        def retrying(error: str, delay: float, attempt: int) -> None:
            log.info("reconciliation: {bank} {date}: statement {name} not read ({error});"
                     " trying again in {delay:.0f} s", bank=bank, date=d, name=name,
                     error=error, delay=delay)

        try:
            fetch = Fetch(src, name, self.gw.reactor, first=b.statement_retry,
                          most=b.statement_retry_max, give_up=b.statement_wait,
                          on_retry=retrying)
        except ValueError as e:  # a notice naming no usable file
            log.error("reconciliation: {bank} {date}: {error}", bank=bank, date=d, error=e)
            return self.gw.store.call(rec.record_failure, d, str(e))
        self._fetches[bank] = fetch

        def got(fetched):
            log.info("reconciliation: {bank} {date}: read {source} ({size} bytes,"
                     " sha256 {sha})", bank=bank, date=d, source=fetched.source,
                     size=fetched.size, sha=fetched.sha256[:12])
            return self.gw.store.call(rec.reconcile, fetched.data, d, source=fetched.source,
                                      file_name=fetched.name)

        def failed(f):
            if f.check(StatementGaveUp):
                return self.gw.store.call(rec.record_failure, d, f.getErrorMessage(),
                                          source=src.where(name), file_name=name)
            if f.check(StatementError):
                return None  # recorded as a FAILED run by the reconciler, and logged
            if f.check(ReconBusy):
                log.info("reconciliation: {bank} {date}: {why}", bank=bank, date=d,
                         why=f.getErrorMessage())
                return None
            if f.check(defer.CancelledError):
                return None
            log.failure("reconciliation: {bank} {date} failed", f, bank=bank, date=d)
            return None

        return fetch.result.addCallback(got).addErrback(failed)
