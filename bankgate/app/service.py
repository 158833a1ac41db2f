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
from contextlib import contextmanager
from datetime import date, datetime, timedelta

from twisted.application import service, strports
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from bankgate.app import startup, wiring, workers
from bankgate.app.audit_tail import AuditTail
from bankgate.app.carddebits import make_services as card_debit_services
from bankgate.app.config import Config
from bankgate.app.n8repair import N8Repair, repair_at_start
from bankgate.app.options import simulated_listen
from bankgate.app.report_schedule import ReportScheduler
from bankgate.canon import messages as m
from bankgate.domain.leases import LeaseBusy, LeaseLost, Leases, describe
from bankgate.domain.ledger import LedgerService
from bankgate.domain.reconcile import ReconBusy, StatementError
from bankgate.store.db import GATEWAY_DB
from bankgate.wire.listener import BankFactory

log = Logger(namespace="bankgate")

CATCH_UP_DAYS = 7


class GatewayService(service.MultiService):
    """The gateway, in one of three modes (``docs/workers.rst``):

    - one process (``[gateway] workers = 1``, the default): everything;
    - the supervisor of ``workers = N > 1``: everything but the bank path -- it binds
      the banks' ports and hands them to N worker processes (:attr:`pool`, a
      :class:`~bankgate.app.workers.WorkerPool`); :attr:`factories` are their figures
      summed (:class:`~bankgate.app.workers.RemoteFactory`);
    - a worker (``worker``: a :class:`~bankgate.app.workers.WorkerSide`): the bank path
      only -- codecs, ledger, listeners on the ports it was handed -- without the data
      folder's lock, migrations, console, schedulers or alerts.
    """

    def __init__(self, cfg: Config, reactor, *, demo=None, worker=None):
        super().__init__()
        self.cfg = cfg
        self.reactor = reactor
        self.demo = demo  # bankgate.app.demo.Demo for twistd; None: no development tools
        self.worker = worker  # a WorkerSide: this process is one of the supervisor's workers
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
                if worker is not None or cfg.workers > 1:  # ports handed over (app/workers.py)
                    self.listeners.append((b.name, ep, None))
                    continue
                try:  # an ssl: key or certificate file is read here
                    svc = strports.service(ep, factory, reactor=reactor)
                except Exception as e:  # noqa: BLE001 - a file, a module, a parameter
                    raise startup.StartupError(
                        f"bank {b.name}: cannot listen on {ep}: {startup.one_line(e)}") from None
                svc.setName(f"{b.name}@{ep}")
                self.listeners.append((b.name, ep, svc))
        self.pool: workers.WorkerPool | None = None  # the supervisor's workers
        if worker is None and cfg.workers > 1:
            self.pool = workers.WorkerPool.for_service(self)
            self.factories = self.pool.factories  # what the console reads: the workers' sums
        self.alerts = None  # [alerts]; on with the console, whose /alerts page shows them
        if cfg.alerts.enabled and worker is None:
            from bankgate.app.alerts import AlertService

            self.alerts = AlertService.for_service(self)
        self.console = None  # the operator console ([console]; bankgate/app/console)
        if cfg.console.enabled and worker is None:
            from bankgate.app.console.server import console_service

            try:  # an ssl: key or certificate file is read here
                self.console = console_service(self)
            except Exception as e:  # noqa: BLE001 - a file, a module, a parameter
                raise startup.StartupError(
                    f"console: cannot listen on {cfg.console.listen}:"
                    f" {startup.one_line(e)}") from None
        self.scheduler = Scheduler(self)
        # N8 in a database of its own: what a lost N8 commit left, applied
        self.n8_repair = (N8Repair(self, lease_client(self), cfg.n8_repair_every)
                          if self.store.split else None)
        self.recon = ReconScheduler(self)
        self.reports = ReportScheduler.for_service(self)  # [reports] dir, scheduled ones
        if worker is None:  # a worker hands statement notices to its supervisor
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
        if self.worker is not None:  # the supervisor has migrated the database already
            self.store.start()
            d = defer.maybeDeferred(self.worker.start, self)
            d.addCallback(lambda _: self.ready.callback(self))
            d.addErrback(self._start_failed)
            return
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
        if self.pool is not None:  # binds the banks' ports, starts the workers on them
            self.pool.setServiceParent(self)
        for name, ep, svc in self.listeners:
            if svc is not None:
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
        if self.alerts is not None:  # checked from now on, the database's answer included
            self.alerts.setServiceParent(self)
        self.scheduler.start()
        if self.n8_repair is not None:
            self.n8_repair.start()
        self.recon.start()
        self.reports.start()  # a broken definition is logged here, at start
        self.store.call(self.parts.invoices().low_stock)
        if self.pool is not None:  # ready once every worker serves
            self.pool.serving.addCallbacks(lambda _: self._serving(), self._start_failed)
        else:
            self._serving()

    def _serving(self) -> None:
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
        if self.n8_repair is not None:
            self.n8_repair.stop()
        self.recon.stop()
        self.reports.stop()
        if self.worker is not None:  # stop listening, answer what is in flight, close
            yield self.worker.stop()
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
    if store.split:  # what a crash or an outage left for N8, before any bank is served
        done.append(repair_at_start(store))
    off = store.autovacuum_off()
    if off:
        log.warn("bankgate: PostgreSQL's autovacuum is off on {where}: the rows that updates"
                 " and deletes leave behind (the journal's, the bills') are never cleared,"
                 " and the tables and every scan of them grow; turn it on (autovacuum = on),"
                 " or vacuum on a schedule (docs/database.rst){outbox}",
                 where=" and ".join(off),
                 outbox=("; the gateway vacuums its N8 outbox itself"
                         if store.split and GATEWAY_DB in off else ""))
    return ", ".join(done)


def lease_client(gw: GatewayService) -> Leases:
    """The process's one lease client (:mod:`bankgate.domain.leases`): every
    scheduler of the process holds its leases under one holder id."""
    return Leases.shared(gw, gw.store, now=gw.now, clock=gw.reactor,
                         ttl=gw.cfg.lease_ttl)


class Scheduler:
    """Cut-off at each bank's configured time, and two-phase expiry.

    Checks once a minute on the injected clock.  A date whose cut-off time
    passed while the service was down is closed at the next check (up to
    :data:`CATCH_UP_DAYS` back), oldest first.

    Several processes or nodes on one database: each cut-off is closed under the
    lease ``cutoff:{bank}:{date}`` and each expiry sweep runs under ``expiry``
    (:mod:`bankgate.domain.leases`).  A process that finds one held leaves the
    work to its holder (its next check finds the date closed); a holder that
    died is replaced at the next check after its lease expired.  Both jobs are
    idempotent: closing a closed date and expiring an expired payment change
    nothing.  Once a day the rows of leases finished or expired more than
    :attr:`keep_leases` ago are deleted.
    """

    interval = 60.0
    keep_leases = timedelta(days=40)

    def __init__(self, gw: GatewayService):
        self.gw = gw
        self.loop = task.LoopingCall(self.tick)
        self.loop.clock = gw.reactor
        self._running: defer.Deferred | None = None
        self.leases = lease_client(gw)
        self._purged: date | None = None

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
            if ledger.store.run_sync(lambda tx, b=bank, dd=d: tx.is_closed(b, dd)):
                ledger.mark_closed(bank, d)
                continue
            with self._lease(f"cutoff:{bank}:{d:%Y-%m-%d}", "cut-off") as lease:
                if lease is None:
                    continue
                if ledger.store.run_sync(lambda tx, b=bank, dd=d: tx.is_closed(b, dd)):
                    ledger.mark_closed(bank, d)  # closed by another process meanwhile
                    continue
                ledger.cutoff(bank, d, reason="scheduled")
                closed.setdefault(bank, []).append(d)
        for bank, dates in closed.items():
            log.info("bankgate: cut-off: closed {bank} {dates}", bank=bank,
                     dates=", ".join(f"{d:%Y-%m-%d}" for d in dates))
        with self._lease("expiry", "two-phase expiry", quiet=True) as lease:
            if lease is not None:
                ledger.expire_pending()
        if self._purged != now.date():
            self._purged = now.date()
            self.leases.purge(now - self.keep_leases)
        return sum(len(v) for v in closed.values())

    @contextmanager
    def _lease(self, name: str, what: str, quiet: bool = False):
        """The lease ``name`` for the block, or ``None`` (logged) when another
        process holds it."""
        def busy(row: dict) -> None:
            if not quiet:
                log.info("bankgate: {what}: {name} {held}: left to it", what=what, name=name,
                         held=describe(row))

        with self.leases.holding(name, busy=busy, job={"job": what, "by": "service"}) as lease:
            yield lease


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

    Several processes or nodes on one database: a run holds the run lock, the
    lease ``recon:{bank}:{date}`` (:mod:`bankgate.domain.leases`), from the
    statement's fetch to its end, renewed every ``lock_stale / 3`` seconds.  A
    date found held by another process is left to it and looked at again at each
    check (a scheduled date another process reconciled meanwhile is not run
    twice).  At each check the scheduler also looks for run locks of the
    service (any process's) whose holder stopped renewing them: it takes such a
    run over -- the same bank, date and statement file -- unless a run of that
    date finished after the lock was taken.  Checks come every minute, or every
    third of the smallest ``lock_stale`` when that is shorter.
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
        self.leases = lease_client(gw)
        # dates whose run lock another process holds: (bank, date) -> (file, why)
        self.elsewhere: dict[tuple[str, date], tuple[str | None, str]] = {}
        self._since: dict[tuple[str, date], datetime] = {}  # a takeover: the lock's age
        self._scanning = False

    def check_interval(self) -> float:
        """Seconds between checks: a minute, or a third of the smallest
        ``lock_stale`` (a dead holder's run is taken over soon after it expires)."""
        stale = [self.gw.cfg.bank(b).reconcile.lock_stale for b in self.reconcilers]
        return min([self.interval, *(s / 3 for s in stale)])

    def start(self) -> None:
        self._stopped = False
        if self.reconcilers:
            self.loop.start(self.check_interval(), now=True).addErrback(
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
        for (bank, d), (file_name, why) in list(self.elsewhere.items()):
            self._queue(bank, d, file_name, why, quiet=True)  # held elsewhere: look again
        if not self._scanning:
            self._scanning = True
            scan = self.gw.store.call(self.leases.expired, "recon:")
            scan.addCallback(self._take_over)
            scan.addErrback(lambda f: log.failure(
                "reconciliation: cannot look for runs to take over", f))
            scan.addBoth(self._scanned)

    def _scanned(self, _) -> None:
        self._scanning = False

    def _take_over(self, rows: list[dict]) -> None:
        """Run locks of the service whose holder went silent: run them here."""
        from bankgate.store import recon as sql

        for row in rows:
            key = sql.lock_parse(row["name"])
            if key is None or key[0] not in self.reconcilers or self._stopped:
                continue
            if row["job"].get("by") != "service":  # an operator's run: theirs to start again
                continue
            bank, d = key
            if key in self._waiters:
                continue
            log.warn("reconciliation: {bank} {date}: its run lock's holder {holder} stopped"
                     " renewing it at {at}: taking the run over", bank=bank, date=d,
                     holder=row["holder"], at=f"{row['renewed_at']:%Y-%m-%d %H:%M:%S}")
            self._since[key] = row["acquired_at"]
            self.enqueue(bank, d, file_name=row["job"].get("file"),
                         why="takeover").addErrback(lambda f: None)

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
        (``None`` when it could not run, or was left to another process).  A
        date already queued or running is not queued twice."""
        return self._queue(bank, d, file_name, why)

    def _queue(self, bank: str, d: date, file_name: str | None, why: str,
               quiet: bool = False) -> defer.Deferred:
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
            if not quiet:
                log.info("reconciliation: {bank} {date} queued ({why})", bank=bank, date=d,
                         why=why)
        self._pump(bank)
        return waiter

    def _pump(self, bank: str) -> None:
        if self._stopped or bank in self.running or not self.queues.get(bank):
            return
        d, file_name, why = self.queues[bank].pop(0)
        run = self._run(bank, d, file_name, why)
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

    def _run(self, bank: str, d: date, file_name: str | None,
             why: str = "operator") -> defer.Deferred:
        """The run of (bank, d) under its run lock; a date held by another
        process is left to it (and looked at again at the next check)."""
        from bankgate.store import recon as sql

        key = (bank, d)
        since = self._since.pop(key, None)
        name = file_name or self.reconcilers[bank].file_name(d)

        def job(lease):
            self.elsewhere.pop(key, None)
            if why not in ("scheduled", "catch-up", "takeover"):
                return self._fetch_and_reconcile(bank, d, file_name, lease)
            check = self.gw.store.call(self._done_already, bank, d, since)

            def go(done: bool):
                if done:
                    log.info("reconciliation: {bank} {date}: reconciled meanwhile by another"
                             " process: not run again", bank=bank, date=d)
                    return None
                return self._fetch_and_reconcile(bank, d, file_name, lease)

            return check.addCallback(go)

        def busy(f):
            f.trap(LeaseBusy)
            if why == "takeover":  # another process took it first
                return None
            if key not in self.elsewhere:
                log.info("reconciliation: {bank} {date}: {why}; looking again at the next"
                         " check", bank=bank, date=d,
                         why=f"{bank} {d:%Y-%m-%d} is being reconciled by"
                             f" {sql.held_by(f.value.row)}"
                         if not f.value.finished else f"{f.value}")
            self.elsewhere[key] = (file_name, why)
            return None

        b = self.gw.cfg.bank(bank)
        run = self.leases.run(sql.lock_name(bank, d), job, ttl=b.reconcile.lock_stale,
                              what={"job": "reconcile", "by": "service", "file": name,
                                    "why": why},
                              action=sql.TAKEOVER, subject=sql.lock_subject(bank, d))
        return run.addErrback(busy)

    def _done_already(self, bank: str, d: date, since: datetime | None) -> bool:
        """On the store's thread, under the run lock: has (bank, d) been reconciled
        -- at all (a scheduled run), or after ``since`` (a run taken over)?"""
        from bankgate.store import recon as sql

        if since is not None:
            return self.gw.store.run_sync(sql.finished_since, bank, d, since, readonly=True)
        return d in self.gw.store.run_sync(sql.reconciled_dates, bank, d, readonly=True)

    def _fetch_and_reconcile(self, bank: str, d: date, file_name: str | None,
                             lease) -> defer.Deferred:
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
        lease.on_lost(fetch.cancel)  # taken over while waiting for the file: stop waiting

        def got(fetched):
            log.info("reconciliation: {bank} {date}: read {source} ({size} bytes,"
                     " sha256 {sha})", bank=bank, date=d, source=fetched.source,
                     size=fetched.size, sha=fetched.sha256[:12])
            lease.raise_if_lost()
            return self.gw.store.call(rec.reconcile, fetched.data, d, source=fetched.source,
                                      file_name=fetched.name, lease=lease)

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
            if f.check(LeaseLost) or (f.check(defer.CancelledError) and lease.taken):
                log.warn("reconciliation: {bank} {date}: the run lock was taken over by"
                         " another process: this run stops", bank=bank, date=d)
                return None
            if f.check(defer.CancelledError):
                return None
            log.failure("reconciliation: {bank} {date} failed", f, bank=bank, date=d)
            return None

        return fetch.result.addCallback(got).addErrback(failed)
