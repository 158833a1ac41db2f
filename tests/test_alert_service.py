"""The alert service (bankgate.app.alerts): each kind provoked on a real SQLite store
and a task.Clock -- raised once, logged once, sent once, kept while it holds, cleared
(logged, sent as resolved) when it no longer does.  The store's pool calls run at once
(console_helpers.synchronous); the checks run on the clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

import pytest
import sqlalchemy as sa
from conftest import make_store
from console_helpers import synchronous
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from bankgate.app.alerts import AlertService, Watches
from bankgate.app.console.health import HealthCheck
from bankgate.domain import alerts as a
from bankgate.domain.alerts import CLEARED, RAISED
from bankgate.domain.invoices import Invoices, InvoiceSettings
from bankgate.store import model
from bankgate.store import recon as recon_sql
from bankgate.store import withholding as debit_sql
from bankgate.store.db import StoreUnavailable

START = datetime(2026, 11, 27, 9, 0, 0)
INTERVAL = 60.0


class Recorder:
    """A channel that keeps what it is sent."""

    name = "recorder"

    def __init__(self):
        self.events: list = []

    def send(self, event):
        self.events.append(event)
        return defer.succeed(True)


class Flaky:
    """The store, or a database that refuses (``down``) or never answers (``hang``)."""

    def __init__(self, store):
        self.store, self.down, self.hang, self.calls = store, False, False, 0

    def call(self, fn, *args, **kw):
        self.calls += 1
        if self.hang:
            return defer.Deferred()
        if self.down:
            return defer.fail(StoreUnavailable("connection refused"))
        return self.store.call(fn, *args, **kw)

    def __getattr__(self, name):
        return getattr(self.store, name)


@dataclass
class World:
    clock: Clock
    store: object
    db: Flaky
    service: AlertService
    channel: Recorder
    logs: list
    last: dict = field(default_factory=dict)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds())

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            self.clock.advance(INTERVAL)

    def sent(self, kind: str) -> list[tuple[str, str]]:
        return [(e.state, e.alert.subject) for e in self.channel.events if e.alert.kind == kind]

    def logged(self, kind: str) -> list[str]:
        return [e["log_format"].split(":")[0] for e in self.logs if e.get("kind") == kind]


@pytest.fixture
def world(tmp_path):
    store = synchronous(make_store("sqlite", tmp_path))
    clock = Clock()
    clock.advance(START.timestamp())
    logs: list = []

    def observe(event):
        if event.get("log_namespace") == "bankgate.alerts":
            logs.append(event)

    globalLogPublisher.addObserver(observe)
    made: list[World] = []

    def build(watches: Watches = Watches(), invoice_settings=None, **kw) -> World:
        db = Flaky(store)
        last: dict = {}
        channel = Recorder()
        svc = AlertService(
            store=db, clock=clock, now=lambda: datetime.fromtimestamp(clock.seconds()),
            watches=watches, last_message=last.get,
            database=HealthCheck(db, clock, timeout=10).database,
            invoice_settings=invoice_settings, channels=[channel], interval=INTERVAL, **kw)
        w = World(clock, store, db, svc, channel, logs, last)
        made.append(w)
        return w

    yield build
    for w in made:
        if w.service.running:
            w.service.stopService()
    globalLogPublisher.removeObserver(observe)
    store.stop()


def one_episode(w: World, kind: str, subject: str, provoke, fix) -> None:
    """Nothing at start; ``provoke`` -> raised once at the next check, logged once,
    sent once, and not again while it holds; ``fix`` -> cleared at the next check."""
    w.service.startService()
    assert w.sent(kind) == [] and w.service.last_check == START
    provoke()
    w.tick()
    assert w.sent(kind) == [(RAISED, subject)]
    assert w.logged(kind) == ["alert raised"]
    [open_] = [e for e in w.service.open_alerts() if e.alert.kind == kind]
    assert open_.alert.subject == subject and open_.cleared_at is None
    w.tick(3)
    assert w.sent(kind) == [(RAISED, subject)] and len(w.logged(kind)) == 1
    fix()
    w.tick()
    assert w.sent(kind) == [(RAISED, subject), (CLEARED, subject)]
    assert w.logged(kind) == ["alert raised", "alert resolved"]
    assert w.service.open_by_kind()[kind] == 0
    [ep] = [e for e in w.service.episodes() if e.alert.kind == kind]
    assert ep.cleared_at is not None and ep.cleared_at > ep.raised_at


def test_bank_quiet(world):
    w = world(Watches(quiet=(a.QuietWatch("icbc", 900),)))
    w.last["icbc"] = START
    w.service.startService()
    w.tick(15)  # 900 s quiet: not longer than the window
    assert w.sent(a.BANK_QUIET) == []
    w.tick()
    assert w.sent(a.BANK_QUIET) == [(RAISED, "icbc")]
    assert w.logged(a.BANK_QUIET) == ["alert raised"]
    w.tick(5)
    assert len(w.sent(a.BANK_QUIET)) == 1
    w.last["icbc"] = w.now()  # a message arrives
    w.tick()
    assert w.sent(a.BANK_QUIET) == [(RAISED, "icbc"), (CLEARED, "icbc")]
    assert w.logged(a.BANK_QUIET) == ["alert raised", "alert resolved"]


def run(store, bank: str, d: date, status: str, now: datetime, *, error: str = "",
        exceptions: int = 0) -> int:
    """A finished reconciliation run, as the reconciler records one."""
    def tx_fn(tx):
        rid, _ = recon_sql.run_open(tx, bank, d, None, now, dry_run=False, status=status)
        recon_sql.items_insert(tx, rid, [("BANK_ONLY", f"S{i}", "100000123", 100, 0,
                                          "EXCEPTION", None, "") for i in range(exceptions)])
        recon_sql.run_finish(tx, rid, status, now, summary={"error": error})
        return rid

    return store.run_sync(tx_fn)


def test_recon_failed(world):
    w = world()
    d = date(2026, 11, 26)
    one_episode(w, a.RECON_FAILED, "icbc 2026-11-26",
                lambda: run(w.store, "icbc", d, "FAILED", w.now(),
                            error="statement ICBC.txt never appeared"),
                lambda: run(w.store, "icbc", d, "BALANCED", w.now()))
    raised = w.channel.events[0].alert
    assert raised.severity == a.CRITICAL and "never appeared" in raised.message


def test_recon_unbalanced(world):
    w = world()
    d = date(2026, 11, 26)
    items = []

    def provoke():
        rid = run(w.store, "boc", d, "EXCEPTIONS", w.now(), exceptions=2)
        items.extend(i["id"] for i in w.store.run_sync(recon_sql.items, rid))

    def resolve():  # the operator resolves both exceptions
        for i in items:
            w.store.run_sync(recon_sql.item_resolve, i, "wang", "posted by hand", w.now())

    one_episode(w, a.RECON_UNBALANCED, "boc 2026-11-26", provoke, resolve)
    assert "2 open exception(s)" in w.channel.events[0].alert.message


def test_statement_missing(world):
    w = world(Watches(statements=(a.StatementWatch("icbc", time(9, 5), 1),),
                      statement_grace=300))
    with w.store.engine.begin() as c:  # the bank's first transaction
        c.execute(model.journal.insert().values(
            bank="icbc", trade_date=date(2026, 11, 20), serial="S1", kind="PAY",
            outcome="OK", created_at=START))

    def statement(d: date):
        w.store.run_sync(recon_sql.statement_record, "icbc", d, "exchange/icbc", "ab" * 32,
                         10, 0, 0, w.now())

    statement(date(2026, 11, 25))  # yesterday's, read in time
    def until_due():  # expected by 09:05, with 300 s of grace: due from 09:10
        w.tick(9)
        assert w.now() == datetime(2026, 11, 27, 9, 9) and w.sent(a.STATEMENT_MISSING) == []

    one_episode(w, a.STATEMENT_MISSING, "icbc", until_due,
                lambda: statement(date(2026, 11, 26)))
    assert "for 2026-11-26" in w.channel.events[0].alert.message


def test_invoice_stock_low(world, tmp_path):
    settings = {"icbc": InvoiceSettings(enabled=True, low_water=5)}
    w = world(invoice_settings=settings)
    inv = Invoices(w.store, settings, now=w.now, data_dir=str(tmp_path))
    inv.issue_stock("icbc", 1, 10, actor="li")

    def used_up_to(n: int):  # the numbers payments took
        with w.store.engine.begin() as c:
            c.execute(model.invoice_stock.update().values(next_no=n + 1))

    one_episode(w, a.INVOICE_STOCK_LOW, "icbc", lambda: used_up_to(5),
                lambda: inv.issue_stock("icbc", 11, 100, actor="li"))
    assert "5 number(s) left (low-water mark 5)" in w.channel.events[0].alert.message


def test_card_debit_reversal_pending(world):
    w = world(Watches(reversal_pending_after=600))
    w.service.startService()
    with w.store.engine.begin() as c:
        did = c.execute(model.debit.insert().values(
            bank="ccb", utility_serial="U1", trade_date=START.date(), customer_no="100000123",
            account_no="6222020000000000123", bill_ids="B0001", amount=100,
            status="REVERSING", created_at=w.now(), updated_at=w.now())).inserted_primary_key[0]
    w.tick(10)  # 600 s: not longer than allowed
    assert w.sent(a.REVERSAL_PENDING) == []
    w.tick()
    assert w.sent(a.REVERSAL_PENDING) == [(RAISED, "ccb")]
    assert w.logged(a.REVERSAL_PENDING) == ["alert raised"]
    w.tick(3)
    assert len(w.sent(a.REVERSAL_PENDING)) == 1
    w.store.run_sync(debit_sql.debit_transition, did, ("REVERSING",), w.now(),
                     status="REVERSED", response_code="00")  # the bank confirmed it
    w.tick()
    assert w.sent(a.REVERSAL_PENDING) == [(RAISED, "ccb"), (CLEARED, "ccb")]
    assert "6222020000000000123" not in " ".join(e.alert.message for e in w.channel.events)


def test_database_unreachable_does_not_stop_the_service(world):
    w = world()
    one_episode(w, a.DATABASE_UNREACHABLE, "database",
                lambda: setattr(w.db, "down", True), lambda: setattr(w.db, "down", False))
    raised = w.channel.events[0].alert
    assert raised.severity == a.CRITICAL and "connection refused" in raised.message
    assert w.service.loop.running and w.service.database_ok is True


def test_n8s_own_database_unreachable_is_an_episode_of_its_own(world):
    n8 = {"down": False}

    def probe():  # HealthCheck.n8_database's answer: None, or the reason
        return defer.succeed("n8 database: (2003, \"Can't connect to MySQL server\")"
                             if n8["down"] else None)

    w = world(n8_database=probe)
    one_episode(w, a.DATABASE_UNREACHABLE, a.N8_DATABASE, lambda: n8.update(down=True),
                lambda: n8.update(down=False))
    raised = w.channel.events[0].alert
    assert raised.severity == a.CRITICAL and "Can't connect" in raised.message
    # the gateway's database answered all along: no episode of its own, and the kinds
    # read from it were read at every check
    assert [s for s in w.sent(a.DATABASE_UNREACHABLE) if s[1] == "database"] == []
    assert w.db.calls == 2 * 6  # six checks, each: the ping and the read of the inputs


def test_a_database_that_hangs_is_unreachable_after_the_timeout(world):
    w = world()
    w.service.startService()
    w.db.hang = True
    w.tick()
    calls = w.db.calls
    w.clock.advance(9)
    assert w.sent(a.DATABASE_UNREACHABLE) == []
    w.clock.advance(1)  # 10 s without an answer
    assert w.sent(a.DATABASE_UNREACHABLE) == [(RAISED, "database")]
    assert "no answer within 10 s" in w.channel.events[0].alert.message
    w.tick(3)  # each check asks again, one at a time: never two probes at once
    assert w.db.calls == calls + 3 and len(w.sent(a.DATABASE_UNREACHABLE)) == 1


def test_while_the_database_is_down_its_alerts_stay_open(world):
    """Kinds read from the database are not judged without it: not cleared, and not
    raised again when it is back."""
    w = world()
    run(w.store, "icbc", date(2026, 11, 26), "FAILED", START, error="no file")
    w.service.startService()
    assert w.sent(a.RECON_FAILED) == [(RAISED, "icbc 2026-11-26")]
    w.db.down = True
    w.tick(3)
    assert w.sent(a.RECON_FAILED) == [(RAISED, "icbc 2026-11-26")]
    assert {e.alert.kind for e in w.service.open_alerts()} == {a.RECON_FAILED,
                                                                a.DATABASE_UNREACHABLE}
    w.db.down = False
    w.tick()
    assert w.sent(a.RECON_FAILED) == [(RAISED, "icbc 2026-11-26")]
    assert w.sent(a.DATABASE_UNREACHABLE) == [(RAISED, "database"), (CLEARED, "database")]


def test_a_failing_read_skips_the_database_kinds_and_says_so(world):
    w = world()
    run(w.store, "icbc", date(2026, 11, 26), "FAILED", START, error="no file")
    w.service.startService()
    real = w.db.store.run_sync

    def broken(fn, *args, **kw):
        if fn.__name__ == "read_inputs":
            raise sa.exc.ProgrammingError("SELECT", {}, Exception("no such column"))
        return real(fn, *args, **kw)

    w.db.store.run_sync = broken
    w.tick()
    assert w.service.open_by_kind()[a.RECON_FAILED] == 1  # kept, not judged
    assert w.sent(a.DATABASE_UNREACHABLE) == []  # it answered SELECT 1
    assert any("could not be read" in e["log_format"] for e in w.logs)
    w.db.store.run_sync = real


def test_a_channel_that_fails_does_not_stop_the_checks(world):
    w = world(Watches(quiet=(a.QuietWatch("icbc", 60),)))

    class Broken:
        name = "broken"

        def send(self, event):
            raise RuntimeError("boom")

    w.service.channels.insert(0, Broken())
    w.service.startService()
    w.tick(2)
    assert w.sent(a.BANK_QUIET) == [(RAISED, "icbc")]  # the next channel still got it
    assert any("channel {name} failed" in e["log_format"] for e in w.logs)
    assert w.service.loop.running


def test_a_restart_raises_again_what_still_holds(world):
    first = world()
    run(first.store, "icbc", date(2026, 11, 26), "FAILED", START, error="no file")
    first.service.startService()
    first.service.stopService()
    second = world()
    second.service.startService()
    assert second.sent(a.RECON_FAILED) == [(RAISED, "icbc 2026-11-26")]


def test_watches_from_the_configuration():
    from bankgate.app.config import parse_config

    cfg = parse_config({"alerts": {"statement_grace": 60, "reversal_pending_after": 120},
                        "bank": [
        {"name": "a", "plugin": "ref-fixed", "bank_code": "1", "quiet_after": 600,
         "business_hours": "08:00-20:00", "reconcile_time": "02:00"},
        {"name": "b", "plugin": "ref-fixed", "bank_code": "2", "reconcile_time": "02:00",
         "statement_expected": "06:30", "reconcile_days_back": 2},
        {"name": "c", "plugin": "ref-fixed", "bank_code": "3"},
        {"name": "d", "plugin": "odd", "bank_code": "4", "reconcile_time": "02:00"}]})
    w = Watches.from_config(cfg, reconcilable=["a", "b", "c"])
    assert w.quiet == (a.QuietWatch("a", 600, a.BusinessHours.parse("08:00-20:00")),)
    assert w.statements == (a.StatementWatch("a", time(2, 0), 1),
                            a.StatementWatch("b", time(6, 30), 2))
    assert (w.statement_grace, w.reversal_pending_after) == (60, 120)


def test_checks_do_not_pile_up_behind_a_slow_read(world):
    w = world(read_timeout=300)
    w.service.startService()
    reads = []
    real = w.db.call

    def slow(fn, *args, **kw):
        if args and getattr(args[0], "__name__", "") == "read_inputs":
            d = defer.Deferred()
            reads.append(d)
            return d
        return real(fn, *args, **kw)

    w.db.call = slow
    w.tick(4)
    assert len(reads) == 1  # one check waits; the next ones were not started
    w.clock.advance(119)
    assert not reads[0].called
    w.clock.advance(1)  # 300 s: that read is given up, the check ends without the database
    assert reads[0].called and w.service.last_check == START + timedelta(seconds=60)
    w.tick()
    assert len(reads) == 2
    assert any("not read within 300 s" in e["log_format"].format(s=300) for e in w.logs)


def test_the_reads_on_every_database(store):
    """bankgate.store.alerts on SQLite (plain and renamed N8), PostgreSQL and MariaDB."""
    from bankgate.store import alerts as sql

    d1, d2, d3 = date(2026, 11, 24), date(2026, 11, 25), date(2026, 11, 26)
    run(store, "icbc", d1, "FAILED", START, error="no file")
    run(store, "icbc", d1, "BALANCED", START)  # redone: no longer a problem
    run(store, "icbc", d2, "EXCEPTIONS", START, exceptions=2)
    run(store, "icbc", d3, "FAILED", START, error="statement unreadable: line 3")
    run(store, "boc", d3, "EXCEPTIONS", START, error="unexplained difference")
    with store.engine.begin() as c:  # a dry run and a run still going are not the latest
        for status, dry in (("FAILED", 1), ("RUNNING", 0)):
            c.execute(model.recon_run.insert().values(
                bank="icbc", settle_date=d2, status=status, dry_run=dry, started_at=START))
    got = store.run_sync(sql.recon_problems, readonly=True)
    assert [(r["bank"], r["settle_date"], r["status"], r["open_exceptions"], r["error"])
            for r in got] == [
        ("boc", d3, "EXCEPTIONS", 0, "unexplained difference"),
        ("icbc", d2, "EXCEPTIONS", 2, ""),
        ("icbc", d3, "FAILED", 0, "statement unreadable: line 3")]
    assert all(r["run_no"] and r["finished_at"] == START for r in got)

    store.run_sync(recon_sql.statement_record, "icbc", d2, "x", "ab" * 32, 1, 0, 0, START)
    store.run_sync(recon_sql.statement_record, "boc", d3, "x", "cd" * 32, 1, 0, 0, START)
    assert store.run_sync(sql.statements_read, [("icbc", d2), ("icbc", d3), ("boc", d2)],
                          readonly=True) == {("icbc", d2)}
    assert store.run_sync(sql.statements_read, [], readonly=True) == set()

    debit = {"trade_date": d3, "customer_no": "100000123", "account_no": "622202", "amount": 1,
             "bill_ids": "B1", "updated_at": START}
    with store.engine.begin() as c:
        c.execute(model.debit.insert(), [
            {**debit, "bank": "ccb", "utility_serial": "U1", "status": "REVERSING",
             "created_at": START},
            {**debit, "bank": "ccb", "utility_serial": "U2", "status": "REVERSING",
             "created_at": START - timedelta(hours=1)},
            {**debit, "bank": "ccb", "utility_serial": "U3", "status": "REVERSED",
             "created_at": START - timedelta(hours=2)},
            {**debit, "bank": "abc", "utility_serial": "U4", "status": "DEBITED",
             "created_at": START}])
    assert store.run_sync(sql.pending_reversals, readonly=True) == [
        ("ccb", 2, START - timedelta(hours=1))]


def test_the_service_mails_alerts_through_the_one_mail_server(tmp_path):
    """The wiring: ``[alerts.email] to`` and ``[mail]`` make one e-mail channel, its
    server the ``[mail]`` the scheduled reports use too."""
    from bankgate.app.alert_channels import EmailChannel
    from bankgate.app.config import parse_config
    from bankgate.app.service import GatewayService

    cfg = parse_config({"gateway": {"data_dir": str(tmp_path)},
                        "alerts": {"email": {"to": ["ops@example.com"]}},
                        "mail": {"host": "smtp.example.com", "from": "gw@example.com"}},
                       "t.toml")
    gw = GatewayService(cfg, Clock())
    [mail] = gw.alerts.channels
    assert isinstance(mail, EmailChannel)
    assert mail.smtp is cfg.mail is gw.reports.mail and mail.to == ["ops@example.com"]
    gw.store.stop()


@pytest.mark.parametrize("apart", [False, True], ids=["n8-shared", "n8-apart"])
def test_the_service_probes_n8s_database_when_it_is_one_of_its_own(tmp_path, apart):
    """The wiring: with ``[n8.database]`` the checks probe N8's database too, and a
    database that does not answer raises database-unreachable for ``n8 database``."""
    from bankgate.app.config import parse_config
    from bankgate.app.service import GatewayService

    raw = {"gateway": {"data_dir": str(tmp_path)}, "alerts": {}}
    if apart:
        raw["n8"] = {"database": {"url": f"sqlite:///{tmp_path / 'n8.db'}"}}
    gw = GatewayService(parse_config(raw, "t.toml"), Clock())
    try:
        assert (gw.alerts.n8_database is not None) is apart
        if apart:
            # the store's pool calls run at once here (no reactor): the same probes
            health = HealthCheck(synchronous(gw.store), Clock(), timeout=10)
            gw.alerts.store = synchronous(gw.store)
            gw.alerts.database, gw.alerts.n8_database = health.database, health.n8_database
            gw.store.create_gateway_tables()  # what the start's migration makes
            gw.store.n8_engine.dispose()
            (tmp_path / "n8.db").write_bytes(b"not a database")  # N8's file is broken
            events = []
            gw.alerts.check().addCallback(events.extend)
            assert [(e.alert.kind, e.alert.subject) for e in events] == [
                (a.DATABASE_UNREACHABLE, a.N8_DATABASE)]
            assert "n8 database:" in events[0].alert.message
    finally:
        gw.store.stop()
