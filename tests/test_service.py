"""The service tree: database first, then listeners; the scheduler's cut-offs.

The reactor is a MemoryReactorClock that also accepts callFromThread (the
store's pool reports through it); the test pumps those calls as they arrive,
waiting on a queue -- an event, not a sleep.
"""

from __future__ import annotations

import queue
from datetime import date, datetime, time

import pytest
from twisted.internet.testing import MemoryReactorClock

from bankgate.app.config import default_config
from bankgate.app.tap import Options, makeService
from bankgate.app.tap import gateway as build_gateway


class ThreadedMemoryReactor(MemoryReactorClock):
    def __init__(self):
        super().__init__()
        self.thread_calls: queue.Queue = queue.Queue()

    def callFromThread(self, f, *args, **kw):
        self.thread_calls.put((f, args, kw))

    def pump_until(self, d, timeout=60):
        results = []
        d.addBoth(results.append)
        while not results:
            f, args, kw = self.thread_calls.get(timeout=timeout)
            f(*args, **kw)
        return results[0]


def tz_now(reactor, when: datetime):
    """Set the memory clock to ``when`` in Asia/Shanghai."""
    from zoneinfo import ZoneInfo

    reactor.advance(when.replace(tzinfo=ZoneInfo("Asia/Shanghai")).timestamp() - reactor.seconds())


@pytest.fixture
def gateway(tmp_path):
    cfg = default_config(str(tmp_path / "var"))
    cfg.demo_customers = 150
    reactor = ThreadedMemoryReactor()
    tz_now(reactor, datetime(2026, 11, 27, 9, 30))
    gw = build_gateway(cfg, reactor)
    yield gw, reactor
    if gw.running:
        reactor.pump_until(gw.stopService())


def test_starts_database_first_then_listens_on_every_bank(gateway):
    gw, reactor = gateway
    gw.startService()
    assert reactor.tcpServers == []  # nothing listens before the database is ready
    result = reactor.pump_until(gw.ready)
    assert result is gw
    ports = sorted(s[0] for s in reactor.tcpServers)
    # the four banks, the bank host demo-delim's card debits go to (simulated), the console
    assert ports == [9101, 9102, 9103, 9104, 9180, 9202]
    assert [(c[0], c[1]) for c in reactor.tcpClients] == [("127.0.0.1", 9202)]
    assert {s[3] for s in reactor.tcpServers} == {"127.0.0.1"}
    assert gw.store.customer_count() == 150
    # invoicing demo bank got a demo stock on first start
    from bankgate.app import wiring

    [row] = wiring.invoices(gw.cfg, gw.store, gw.now).stock_report("demo-fixed")
    assert row["ranges"] and row["remaining"] == 2000
    # the factory of a listener is the bank's own
    by_port = {s[0]: s[1] for s in reactor.tcpServers}
    assert by_port[9101].profile.name == "demo-fixed"
    assert by_port[9103].codec.name == "ref-iso8583"


def test_restart_keeps_data_and_does_not_reseed(gateway, tmp_path):
    gw, reactor = gateway
    gw.startService()
    reactor.pump_until(gw.ready)
    reactor.pump_until(gw.stopService())
    again = build_gateway(gw.cfg, reactor)
    again.startService()
    reactor.pump_until(again.ready)
    assert again.store.customer_count() == 150
    reactor.pump_until(again.stopService())


def test_scheduler_closes_due_dates_and_catches_up(gateway):
    gw, reactor = gateway
    gw.startService()
    reactor.pump_until(gw.ready)
    # 09:30: today's 23:30 cut-off is not due; yesterday's and older are (catch-up)
    due = gw.scheduler.due_cutoffs(datetime(2026, 11, 27, 9, 30))
    assert ("demo-fixed", date(2026, 11, 26)) in due
    assert ("demo-fixed", date(2026, 11, 27)) not in due
    assert due.index(("demo-fixed", date(2026, 11, 20))) < due.index(
        ("demo-fixed", date(2026, 11, 26)))
    # the first tick ran at start (09:30) and caught up the six days before today
    if gw.scheduler._running is not None:
        reactor.pump_until(gw.scheduler._running)
    closed = gw.ledger.store.run_sync(lambda tx: tx.closed_dates("demo-fixed"))
    assert [c["trade_date"] for c in closed] == [date(2026, 11, d) for d in range(20, 27)]
    assert gw.scheduler.run_due(datetime(2026, 11, 27, 23, 31)) == 4  # today, four banks
    assert gw.scheduler.run_due(datetime(2026, 11, 27, 23, 32)) == 0  # nothing twice
    assert gw.ledger.store.run_sync(lambda tx: tx.is_closed("demo-delim", date(2026, 11, 27)))
    assert gw.cfg.bank("demo-fixed").cutoff_time == time(23, 30)


def test_makeService_reports_config_errors(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[database]\nthreads = 0\n")
    opts = Options()
    opts.parseOptions(["--config", str(bad)])
    with pytest.raises(SystemExit) as e:
        makeService(opts)
    assert e.value.code == 2
    assert "database.threads: expected 1 to 64" in capsys.readouterr().err


def test_twistd_finds_the_plugin():
    from twisted.application.service import IServiceMaker
    from twisted.plugin import IPlugin, getPlugins

    import twisted.plugins

    names = [p.tapname for p in getPlugins(IServiceMaker, twisted.plugins)]
    assert "bankgate" in names
    assert IPlugin


# -- a start that fails: one line, the pid file gone, twistd told, exit status 1 ---------


def _critical(events) -> list[str]:
    from twisted.logger import LogLevel, formatEvent

    return [formatEvent(e) for e in events if e["log_level"] is LogLevel.critical]


def test_a_failed_start_is_one_line_removes_the_pid_file_and_exits_1(gateway, tmp_path,
                                                                     monkeypatch):
    import os

    from twisted.logger import capturedLogs
    from twisted.python.failure import Failure

    from bankgate.app import service
    from bankgate.app.startup import DataLock, StartReport, StartupError

    gw, reactor = gateway
    gw.cfg.n8_create = False  # and no N8 there: found only once the database is open
    pidfile = tmp_path / "twistd.pid"
    pidfile.write_text("4242")
    r, w = os.pipe()
    twistd_options = {"pidfile": str(pidfile), "statusPipe": w}
    gw.report = StartReport(twistd_options)
    gw.lock = DataLock(gw.cfg.data_dir).acquire()
    exits = []
    monkeypatch.setattr(service, "_exit_failure", lambda: exits.append(1))
    reactor.running = True
    with capturedLogs() as events:
        gw.startService()
        assert "statusPipe" not in twistd_options  # twistd will not say "started" for us
        result = reactor.pump_until(gw.ready)
    assert isinstance(result, Failure) and result.check(StartupError)
    [line] = _critical(events)
    assert line == ("bankgate: cannot start: <embedded default>: n8: the N8 table"
                    f" 'n8_customer' does not exist in sqlite:///{tmp_path}/var/bankgate.db;"
                    " map [n8.tables] onto your N8 schema or set n8.create = true")
    assert not any("log_failure" in e for e in events)  # no traceback
    assert reactor.hasStopped and pidfile.exists()  # the pid file goes on the way out
    [(exit_after_shutdown, _, _)] = reactor.triggers["after"]["shutdown"]
    reactor.pump_until(gw.stopService())
    exit_after_shutdown()
    assert exits == [1] and not pidfile.exists()
    told = os.read(r, 100)
    os.close(r)
    assert told.startswith(b"1 <embedded default>: n8: the N8 table 'n8_customer' does not")
    assert len(told) <= 100
    DataLock(gw.cfg.data_dir).acquire().release()  # stopping released the data folder


def test_twistd_is_told_started_only_once_the_gateway_is_ready(gateway):
    import os

    from bankgate.app.startup import StartReport

    gw, reactor = gateway
    r, w = os.pipe()
    os.set_blocking(r, False)
    gw.report = StartReport({"statusPipe": w, "pidfile": ""})
    gw.startService()
    with pytest.raises(BlockingIOError):  # the database is being prepared: not yet
        os.read(r, 100)
    assert reactor.pump_until(gw.ready) is gw
    assert os.read(r, 100) == b"0"
    assert os.read(r, 100) == b""  # and closed: twistd's first process exits 0
    os.close(r)


def test_a_port_taken_meanwhile_names_the_bank_and_the_port(tmp_path):
    import errno

    from twisted.internet.error import CannotListenError

    from bankgate.app.startup import StartupError

    class PortTaken(ThreadedMemoryReactor):
        def listenTCP(self, port, factory, backlog=50, interface=""):
            if port == 9102:
                raise CannotListenError(interface, port,
                                        OSError(errno.EADDRINUSE, "Address already in use"))
            return super().listenTCP(port, factory, backlog, interface)

    cfg = default_config(str(tmp_path / "var"))
    cfg.demo_customers = 10
    reactor = PortTaken()
    gw = build_gateway(cfg, reactor)
    gw.startService()
    result = reactor.pump_until(gw.ready)
    assert result.check(StartupError)
    assert str(result.value) == (
        "bank demo-delim: cannot listen on tcp:9102:interface=127.0.0.1: port 9102 is already"
        " in use (see: ss -ltnp 'sport = :9102')")
    reactor.pump_until(gw.stopService())


def test_the_service_knows_every_address_it_will_listen_on(gateway):
    gw, _ = gateway
    assert gw.listen_endpoints() == [
        ("bank demo-fixed", "tcp:9101:interface=127.0.0.1"),
        ("bank demo-delim", "tcp:9102:interface=127.0.0.1"),
        ("bank demo-iso8583", "tcp:9103:interface=127.0.0.1"),
        ("bank demo-xml", "tcp:9104:interface=127.0.0.1"),
        ("console", "tcp:9180:interface=127.0.0.1"),
        ("bank demo-delim's simulated debit host", "tcp:9202:interface=127.0.0.1"),
    ]
