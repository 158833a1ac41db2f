"""Reconciliation inside the service: scheduled at the configured time,
catch-up of missed nights in date order at start, statement notices.

The reactor is a MemoryReactorClock that also accepts callFromThread (the
store's pool reports through it); the test pumps those calls as they
arrive -- an event queue, not a sleep.  The statements are dropped into
the banks' exchange folders (the default local source).
"""

from __future__ import annotations

import queue
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from twisted.internet.testing import MemoryReactorClock

from bankgate.app.config import default_config
from bankgate.app.tap import gateway as build_gateway
from bankgate.canon import messages as m
from bankgate.canon.messages import Outcome
from bankgate.domain.ledger import Ledger
from bankgate.store import recon as sql
from bankgate.store.db import Store

TZ = ZoneInfo("Asia/Shanghai")


class ThreadedMemoryReactor(MemoryReactorClock):
    def __init__(self):
        super().__init__()
        self.thread_calls: queue.Queue = queue.Queue()

    def callFromThread(self, f, *args, **kw):  # noqa: N802
        self.thread_calls.put((f, args, kw))

    def pump_until(self, d, timeout=60):
        results = []
        d.addBoth(results.append)
        self.pump_while(lambda: not results, timeout)
        return results[0]

    def pump_while(self, cond, timeout=60):
        while cond():
            f, args, kw = self.thread_calls.get(timeout=timeout)
            f(*args, **kw)

    def set_time(self, when: datetime):
        self.advance(when.replace(tzinfo=TZ).timestamp() - self.seconds())


def fixed_statement(code: str, d: date, recs) -> bytes:
    """ref-fixed §8 by hand."""
    lines = [f"H{d:%Y%m%d}{code:<6}{len(recs):08d}{sum(a for _, _, a in recs):015d}"]
    lines += [f"D{s:<20}{d:%Y%m%d}101500{c:<20}{a:012d}01" for s, c, a in recs]
    return "".join(ln + "\r\n" for ln in lines).encode("gbk")


@pytest.fixture
def setup(tmp_path):
    """A gateway's data folder with demo customers, and a ledger on it."""
    cfg = default_config(str(tmp_path / "var"))
    cfg.demo_customers = 60
    cfg.banks = [b for b in cfg.banks if b.name == "demo-fixed"]
    cfg.banks[0].reconcile_time = time(2, 0)
    cfg.banks[0].reconcile.pdf = False
    reactor = ThreadedMemoryReactor()
    reactor.set_time(datetime(2026, 11, 20, 9, 0))
    gw = build_gateway(cfg, reactor)
    gw.startService()
    reactor.pump_until(gw.ready)
    reactor.pump_until(gw.stopService())
    store = Store(cfg.db_url, cfg.n8, threads=2)
    ledger = Ledger(store, {b.name: b.policy_() for b in cfg.banks},
                    now=lambda: datetime(2026, 11, 27, 9, 0))
    yield cfg, ledger, tmp_path
    store.stop()


def day(ledger, d: date, n: int, first: int) -> list[tuple[str, str, int]]:
    """``n`` exact payments of bank demo-fixed on ``d``; returns them."""
    custs = ledger.store.run_sync(sql.customers_with_open_bills, (), first + n)[first:]
    out = []
    for i, c in enumerate(custs):
        o = m.Origin("demo-fixed", d, "101500")
        q = ledger.query(m.QueryRequest(o, c))
        serial = f"{d:%Y%m%d}{i:06d}"
        r = ledger.pay(m.PaymentRequest(o, serial, c, q.total,
                                        content=m.fingerprint("PAY", c, q.total)))
        assert r.outcome is Outcome.OK, r
        out.append((serial, c, q.total))
    return out


def start(cfg, when: datetime):
    reactor = ThreadedMemoryReactor()
    reactor.set_time(when)
    gw = build_gateway(cfg, reactor)
    gw.startService()
    reactor.pump_until(gw.ready)
    return gw, reactor


def exchange(cfg) -> Path:
    p = Path(cfg.banks[0].exchange_dir)
    p.mkdir(parents=True, exist_ok=True)
    return p


def test_missed_nights_are_caught_up_in_date_order_at_start(setup):
    cfg, ledger, tmp = setup
    days = [date(2026, 11, 24), date(2026, 11, 25), date(2026, 11, 26)]
    for k, d in enumerate(days):
        recs = day(ledger, d, 3, 3 * k)
        if d == days[1]:
            recs = recs[:2]  # the bank lacks one: it is reversed locally
        (exchange(cfg) / f"105210_{d:%Y%m%d}.txt").write_bytes(fixed_statement("105210", d, recs))
    gw, reactor = start(cfg, datetime(2026, 11, 27, 9, 30))
    try:
        reactor.pump_while(lambda: len(gw.recon.reports) < 3)
        reps = gw.recon.reports
        assert [r.settle_date for r in reps] == days
        assert [r.run_id for r in reps] == sorted(r.run_id for r in reps)
        assert [r.status for r in reps] == ["BALANCED"] * 3
        assert [len(r.changes) for r in reps] == [0, 1, 0]
        for r in reps:
            assert Path(r.outputs["text"]).is_file() and Path(r.outputs["csv"]).is_file()
        assert gw.store.run_sync(sql.reconciled_dates, "demo-fixed", days[0]) == set(days)
    finally:
        reactor.pump_until(gw.stopService())
    # a restart finds nothing left to do
    gw, reactor = start(cfg, datetime(2026, 11, 27, 10, 0))
    try:
        due = reactor.pump_until(gw.store.call(gw.recon.due_dates, "demo-fixed", gw.now()))
        assert due == []
        assert gw.recon.reports == [] and not gw.recon.running
    finally:
        reactor.pump_until(gw.stopService())


def test_the_nightly_run_starts_at_the_configured_time_and_waits_for_the_file(setup):
    cfg, ledger, tmp = setup
    d = date(2026, 11, 27)
    recs = day(ledger, d, 4, 0)
    gw, reactor = start(cfg, datetime(2026, 11, 28, 1, 58, 30))
    try:
        assert gw.recon.reports == [] and not gw.recon.running
        reactor.advance(60)  # 01:59:30: not yet
        assert not gw.recon.running and not gw.recon.queues.get("demo-fixed")
        reactor.advance(60)  # 02:00:30: the tick after 02:00 starts it; no file yet
        reactor.pump_while(lambda: gw.recon._fetches.get("demo-fixed") is None
                           or gw.recon._fetches["demo-fixed"].attempts < 1
                           or gw.recon._fetches["demo-fixed"]._call is None)
        fetch = gw.recon._fetches["demo-fixed"]
        assert fetch.attempts == 1 and gw.recon.running["demo-fixed"][0] == d
        (exchange(cfg) / f"105210_{d:%Y%m%d}.txt").write_bytes(
            fixed_statement("105210", d, recs[1:]))
        reactor.advance(cfg.banks[0].statement_retry)
        reactor.pump_while(lambda: not gw.recon.reports)
        rep = gw.recon.reports[0]
        assert fetch.attempts == 2
        assert (rep.settle_date, rep.status, len(rep.changes)) == (d, "BALANCED", 1)
        assert gw.ledger.pay(m.PaymentRequest(m.Origin("demo-fixed", d), "LATE", recs[0][1],
                                              1)).outcome is Outcome.DATE_CLOSED
    finally:
        reactor.pump_until(gw.stopService())


def test_a_statement_notice_starts_the_run(setup):
    cfg, ledger, tmp = setup
    d = date(2026, 11, 27)
    recs = day(ledger, d, 2, 0)
    cfg.banks[0].reconcile_time = None  # only the notice
    (exchange(cfg) / "STMT-27.txt").write_bytes(fixed_statement("105210", d, recs))
    gw, reactor = start(cfg, datetime(2026, 11, 28, 8, 0))
    try:
        notice = m.StatementNotice(m.Origin("demo-fixed", d + timedelta(days=1)), d,
                                   "STMT-27.txt", 2, sum(a for _, _, a in recs))
        result = reactor.pump_until(gw.ledger_service.handle(notice))
        assert result.outcome is Outcome.OK
        reactor.pump_while(lambda: not gw.recon.reports)
        rep = gw.recon.reports[0]
        assert (rep.settle_date, rep.status, rep.file_name) == (d, "BALANCED", "STMT-27.txt")
        run = gw.store.run_sync(sql.run_get, rep.run_id)
        assert run["summary"]["file"] == "STMT-27.txt"
    finally:
        reactor.pump_until(gw.stopService())


def test_a_file_that_never_comes_is_a_failed_run(setup):
    cfg, ledger, tmp = setup
    d = date(2026, 11, 27)
    day(ledger, d, 1, 0)
    cfg.banks[0].statement_wait = 900
    gw, reactor = start(cfg, datetime(2026, 11, 28, 3, 0))
    try:
        reactor.pump_while(lambda: gw.recon._fetches.get("demo-fixed") is None
                           or gw.recon._fetches["demo-fixed"]._call is None)
        for _ in range(4):
            reactor.advance(300)
        reactor.pump_while(lambda: not gw.recon.reports)
        rep = gw.recon.reports[0]
        assert rep.status == "FAILED" and "not read after" in rep.error
        runs = gw.store.run_sync(sql.runs, "demo-fixed")
        assert [r["status"] for r in runs] == ["FAILED"]
    finally:
        reactor.pump_until(gw.stopService())
