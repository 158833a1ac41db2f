"""The alert service: checks every ``[alerts] interval`` seconds what an operator must
act on, logs each alert once per episode and sends it through the configured channels.

One check, on the injected clock:

1. the database is asked ``SELECT 1`` (:class:`bankgate.app.console.health.HealthCheck`,
   on the store's pool, given :data:`DATABASE_TIMEOUT` seconds);
2. if it answered, the inputs are read in one read-only transaction on the store's pool
   (:func:`read_inputs`: the latest reconciliation runs with a problem, the statements
   read, the invoice stock, the pending card-debit reversals);
3. the rules of :mod:`bankgate.domain.alerts` run over them, and over each bank's last
   message (its listener's, in memory);
4. :class:`~bankgate.domain.alerts.EpisodeTracker` turns them into events: each alert
   raised or cleared is logged once (``bankgate.alerts``) and handed to every channel
   (:mod:`bankgate.app.alert_channels`).

A database that does not answer raises ``database-unreachable``; the kinds read from it
are not judged in that check (their open alerts stay open, none is cleared), and the
service goes on checking.  A check still waiting for the database when the next one is
due is not doubled.  Episodes are kept in memory: after a restart, what still holds is
raised again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from bankgate.domain import alerts as rules
from bankgate.domain.alerts import CRITICAL, RAISED, Episode, EpisodeTracker, Event
from bankgate.store.db import StoreUnavailable

log = Logger(namespace="bankgate.alerts")

DATABASE_TIMEOUT = 10.0  # seconds for SELECT 1 (a busy pool can delay it)
READ_TIMEOUT = 60.0  # seconds for reading the inputs


@dataclass(frozen=True)
class Watches:
    """What the rules watch, from the configuration."""

    quiet: tuple[rules.QuietWatch, ...] = ()
    statements: tuple[rules.StatementWatch, ...] = ()
    statement_grace: float = 900.0
    reversal_pending_after: float = 600.0

    @classmethod
    def from_config(cls, cfg, reconcilable: Iterable[str]) -> Watches:
        """Banks with ``quiet_after`` are watched for quiet; banks that can be
        reconciled and have ``statement_expected`` (else ``reconcile_time``) for
        their statement."""
        can = set(reconcilable)
        return cls(
            quiet=tuple(rules.QuietWatch(b.name, b.quiet_after, b.business_hours)
                        for b in cfg.banks if b.quiet_after is not None),
            statements=tuple(
                rules.StatementWatch(b.name, b.statement_expected or b.reconcile_time,
                                     b.reconcile_days_back)
                for b in cfg.banks
                if b.name in can and (b.statement_expected or b.reconcile_time) is not None),
            statement_grace=cfg.alerts.statement_grace,
            reversal_pending_after=cfg.alerts.reversal_pending_after)


@dataclass
class Inputs:
    """What one check read from the database."""

    recon: list[rules.ReconState]
    statements_read: set[tuple[str, date]]
    first_activity: dict[str, date | None]
    stock: list[dict]
    reversals: list[rules.PendingReversals]
    n8_waiting: tuple[int, float] = (0, 0.0)  # outbox rows, the oldest's age in seconds


def read_inputs(tx, due: list[tuple[str, date]], invoice_settings: Mapping) -> Inputs:
    """Runs on the store's pool, in one read-only transaction: every input of the
    rules that lives in the database.  ``due``: the (bank, settle date) whose
    statement should be read by now."""
    from bankgate.domain.overview import invoice_stock_tx
    from bankgate.store import alerts as sql
    from bankgate.store import n8outbox
    from bankgate.store.recon import first_activity

    recon = [rules.ReconState(r["bank"], r["settle_date"], r["run_no"], r["status"],
                              r["finished_at"], r["open_exceptions"], r["error"])
             for r in sql.recon_problems(tx)]
    return Inputs(
        recon=recon,
        statements_read=sql.statements_read(tx, due),
        first_activity={bank: first_activity(tx, bank) for bank, _ in due},
        stock=invoice_stock_tx(tx, dict(invoice_settings)),
        reversals=[rules.PendingReversals(b, n, oldest)
                   for b, n, oldest in sql.pending_reversals(tx)],
        n8_waiting=n8outbox.oldest_waiting(tx.conn) if tx.split else (0, 0.0))


class AlertService(service.Service):
    """Checks every ``interval`` seconds of ``clock``.

    :param store: the :class:`~bankgate.store.db.Store` (``call`` runs on its pool).
    :param now: local wall-clock time (the service's ``now``).
    :param last_message: ``bank -> datetime or None``: the bank's last frame (local).
    :param database: ``() -> Deferred of None or the reason it did not answer``.
    :param n8_database: the same for N8's database when it is one of its own: it
        raises ``database-unreachable`` for subject ``n8 database`` (the banks'
        queries and payments answer BUSY meanwhile).
    :param channels: each with ``send(event) -> Deferred`` that never fails.
    """

    name = "alerts"

    def __init__(self, *, store, clock, now: Callable[[], datetime], watches: Watches,
                 last_message: Callable[[str], datetime | None],
                 database: Callable[[], defer.Deferred], invoice_settings: Mapping | None = None,
                 channels: Iterable = (), interval: float = 60.0, history: int = 200,
                 read_timeout: float = READ_TIMEOUT,
                 n8_database: Callable[[], defer.Deferred] | None = None):
        self.store, self.clock, self.now = store, clock, now
        self.watches = watches
        self.last_message = last_message
        self.database = database
        self.n8_database = n8_database  # N8's own database ([n8.database]): its probe
        self.invoice_settings = dict(invoice_settings or {})
        self.channels = list(channels)
        self.interval = interval
        self.read_timeout = read_timeout
        self.tracker = EpisodeTracker(history=history)
        self.watching_since: datetime | None = None
        self.last_check: datetime | None = None
        self.database_ok: bool | None = None  # the last check's answer (None: none yet)
        self.loop = task.LoopingCall(self.tick)
        self.loop.clock = clock
        self._check: defer.Deferred | None = None

    @classmethod
    def for_service(cls, gw) -> AlertService:
        """The alert service of a :class:`~bankgate.app.service.GatewayService`."""
        from bankgate.app.alert_channels import channels_for
        from bankgate.app.console.health import HealthCheck
        from bankgate.codec.capabilities import statement_format

        cfg = gw.cfg
        reconcilable = [b.name for b in cfg.banks
                        if statement_format(gw.codecs[b.plugin]) is not None]
        health = HealthCheck(gw.store, gw.reactor, timeout=DATABASE_TIMEOUT)

        def last_message(bank: str) -> datetime | None:
            factory = gw.factories.get(bank)
            return factory.stats.last_message if factory is not None else None

        return cls(store=gw.store, clock=gw.reactor, now=gw.now,
                   watches=Watches.from_config(cfg, reconcilable),
                   last_message=last_message, database=health.database,
                   n8_database=health.n8_database if gw.store.split else None,
                   invoice_settings=gw.parts.invoice_settings,
                   channels=channels_for(gw.reactor, cfg.alerts, cfg.mail),
                   interval=cfg.alerts.interval)

    # -- start and stop ----------------------------------------------------------------

    def startService(self):  # noqa: N802
        super().startService()
        self.watching_since = self.now()
        self.loop.start(self.interval, now=True).addErrback(
            lambda f: log.failure("alerts: the checks stopped", f))

    def stopService(self):  # noqa: N802
        if self.loop.running:
            self.loop.stop()
        return super().stopService()

    # -- what the console shows ----------------------------------------------------------

    def open_alerts(self) -> list[Episode]:
        return self.tracker.open_alerts()

    def episodes(self) -> list[Episode]:
        return self.tracker.episodes()

    def open_by_kind(self) -> dict[str, int]:
        return self.tracker.open_by_kind()

    # -- one check -------------------------------------------------------------------------

    def tick(self) -> None:
        if self._check is not None:  # the last check still waits for the database
            return
        self._check = self.check()
        self._check.addErrback(lambda f: log.failure("alerts: a check failed", f))
        self._check.addBoth(self._checked)

    def _checked(self, result):
        self._check = None
        return None

    def check(self) -> defer.Deferred:
        """One check: a Deferred of its events (raised and cleared)."""
        now = self.now()
        if self.watching_since is None:
            self.watching_since = now
        due = [(w.bank, rules.statement_due(w, now, self.watches.statement_grace)[0])
               for w in self.watches.statements]
        # the probes of the gateway's database and of N8's own, at once
        probes = [defer.maybeDeferred(self.database),
                  defer.maybeDeferred(self.n8_database) if self.n8_database is not None
                  else defer.succeed(None)]

        def asked(reasons):
            reason, n8_reason = reasons
            if reason is not None:
                return self._judge(now, reason, None, n8_reason)
            r = self.store.call(self.store.run_sync, read_inputs, due, self.invoice_settings,
                                readonly=True)
            r.addTimeout(self.read_timeout, self.clock)

            def unread(f):
                if f.check(StoreUnavailable):
                    why = " ".join(str(f.value).split())[:200] or "unavailable"
                    return self._judge(now, f"database: {why}", None, n8_reason)
                if f.check(defer.TimeoutError):
                    log.warn("alerts: the checks' inputs were not read within {s:g} s;"
                             " the kinds read from the database wait for the next check",
                             s=self.read_timeout)
                else:
                    log.failure("alerts: the checks' inputs could not be read", f)
                return self._judge(now, None, None, n8_reason)

            return r.addCallbacks(lambda inputs: self._judge(now, None, inputs, n8_reason),
                                  unread)

        return defer.gatherResults(probes, consumeErrors=True).addCallback(asked)

    def _judge(self, now: datetime, db_reason: str | None, inputs: Inputs | None,
               n8_reason: str | None = None) -> list[Event]:
        w = self.watches
        last = {q.bank: self.last_message(q.bank) for q in w.quiet}
        found = rules.quiet_banks(w.quiet, last, self.watching_since or now, now)
        found += rules.database_alert(db_reason, now)
        found += rules.database_alert(n8_reason, now, subject=rules.N8_DATABASE)
        checked = {rules.BANK_QUIET, rules.DATABASE_UNREACHABLE}
        if inputs is not None:
            found += rules.recon_alerts(inputs.recon)
            found += rules.statement_alerts(w.statements, now, w.statement_grace,
                                            inputs.statements_read, inputs.first_activity)
            found += rules.stock_alerts(inputs.stock)
            found += rules.reversal_alerts(inputs.reversals, w.reversal_pending_after, now)
            found += rules.n8_alerts(*inputs.n8_waiting, now)
            checked |= rules.FROM_DATABASE
        self.database_ok = db_reason is None
        events = self.tracker.update(found, now, checked)
        self.last_check = now
        for e in events:
            self._log(e)
            self._send(e)
        return events

    # -- once per episode: the log and the channels ------------------------------------

    @staticmethod
    def _log(e: Event) -> None:
        a = e.alert
        if e.state == RAISED:
            emit = log.error if a.severity == CRITICAL else log.warn
            emit("alert raised: {kind} {subject} ({severity}): {message}", kind=a.kind,
                 subject=a.subject, severity=a.severity, message=a.message)
        else:
            log.info("alert resolved: {kind} {subject} (raised {raised})", kind=a.kind,
                     subject=a.subject, raised=f"{e.raised_at:%Y-%m-%d %H:%M:%S}")

    def _send(self, e: Event) -> None:
        """Hand ``e`` to every channel; each retries and logs on its own, and a channel
        that fails all the same is logged here -- never an error in the check."""
        for ch in self.channels:
            d = defer.maybeDeferred(ch.send, e)
            d.addErrback(lambda f, ch=ch: log.failure(
                "alerts: channel {name} failed", f, name=getattr(ch, "name", ch)))
