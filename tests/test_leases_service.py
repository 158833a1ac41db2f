"""The service's schedulers under leases, with another "process" on the same
database: a second lease client with its own holder id.

- cut-offs: a date whose lease another process holds is left to it, and closed
  here (a takeover, audited) once that holder is silent past the ttl;
- reconciliation: a date held by a live process is left to it and looked at again
  at each check -- not run a second time when that process reconciled it -- and the
  run of a service that died half-way (its lock expired, its run left RUNNING) is
  taken over, the dead run marked FAILED; an operator's run is never taken over.

The reactor is test_recon_service's MemoryReactorClock that also takes the store
pool's callFromThread; the test pumps those calls as they arrive.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

import pytest
import sqlalchemy as sa
from test_recon_service import ThreadedMemoryReactor, day, exchange, fixed_statement, start
from test_service import tz_now

from bankgate.app.config import default_config
from bankgate.app.tap import gateway as build_gateway
from bankgate.domain.leases import Leases
from bankgate.domain.ledger import Ledger
from bankgate.domain.reconcile import INTERRUPTED, Reconciler
from bankgate.store import model
from bankgate.store import recon as rsql
from bankgate.store.db import Store

OTHER = "node-b:4242:0b0b0b0b"
BANK = "demo-fixed"


def audits(store, action: str) -> list[tuple]:
    a = model.audit
    with store.engine.connect() as c:
        return [tuple(r) for r in c.execute(
            sa.select(a.c.actor, a.c.subject, a.c.detail).where(a.c.action == action))]


def lease_row(store, name: str) -> dict | None:
    from bankgate.store import leases as sql

    return store.run_sync(sql.get, name)


@pytest.fixture
def setup(tmp_path):
    """A gateway's data folder with demo customers (bank demo-fixed reconciled at
    02:00), and a ledger on it: test_recon_service's day."""
    cfg = default_config(str(tmp_path / "var"))
    cfg.demo_customers = 60
    cfg.banks = [b for b in cfg.banks if b.name == BANK]
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


# -- cut-offs ----------------------------------------------------------------------------


def test_a_cutoff_held_by_another_process_is_left_to_it_then_taken_over(tmp_path):
    cfg = default_config(str(tmp_path / "var"))
    cfg.demo_customers = 10
    reactor = ThreadedMemoryReactor()
    tz_now(reactor, datetime(2026, 11, 27, 23, 0))
    gw = build_gateway(cfg, reactor)
    gw.startService()
    try:
        reactor.pump_until(gw.ready)
        if gw.scheduler._running is not None:
            reactor.pump_until(gw.scheduler._running)
        gw.scheduler.stop()  # its checks are called here, one at a time
        tz_now(reactor, datetime(2026, 11, 27, 23, 31))
        other = Leases(gw.store, now=gw.now, holder=OTHER, ttl=60)
        held = other.acquire(f"cutoff:{BANK}:2026-11-27")
        # the three other banks close; demo-fixed is left to the other process
        assert gw.scheduler.run_due(gw.now()) == 3
        assert not gw.store.run_sync(lambda tx: tx.is_closed(BANK, date(2026, 11, 27)))
        assert lease_row(gw.store, held.name)["holder"] == OTHER
        assert lease_row(gw.store, "expiry") is None  # the sweep's lease: taken and given back
        # the other process dies: past its ttl the next check takes the cut-off over
        reactor.advance(61)
        assert gw.scheduler.run_due(gw.now()) == 1
        assert gw.store.run_sync(lambda tx: tx.is_closed(BANK, date(2026, 11, 27)))
        [(actor, subject, detail)] = audits(gw.store, "lease-takeover")
        assert subject == f"cutoff:{BANK}:2026-11-27" and OTHER in detail
        assert actor == gw.leases.holder and lease_row(gw.store, held.name) is None
        assert gw.scheduler.run_due(gw.now()) == 0  # nothing twice
    finally:
        reactor.pump_until(gw.stopService())


# -- reconciliation -----------------------------------------------------------------------


def test_a_date_held_by_a_live_process_is_left_to_it_and_not_run_twice(setup):
    cfg, ledger, tmp = setup
    d = date(2026, 11, 27)
    recs = day(ledger, d, 3, 0)
    data = fixed_statement("105210", d, recs)
    (exchange(cfg) / f"105210_{d:%Y%m%d}.txt").write_bytes(data)
    t0 = datetime(2026, 11, 28, 9, 30)
    other = Leases(ledger.store, now=lambda: t0, holder=OTHER, ttl=600)
    held = other.acquire(rsql.lock_name(BANK, d), job={"job": "reconcile", "by": "service"})
    gw, reactor = start(cfg, t0)  # the catch-up finds 11-27 due, held by the other
    try:
        reactor.pump_while(lambda: (BANK, d) not in gw.recon.elsewhere)
        assert not gw.recon.running and gw.recon.reports == []
        # the other process reconciles it and lets go
        rec = Reconciler(ledger, cfg.bank(BANK), gw.recon.reconcilers[BANK].codec,
                         data_dir=cfg.data_dir, holder=OTHER)
        assert rec.reconcile(data, d, lease=held).status == "BALANCED"
        held.release()
        reactor.advance(gw.recon.check_interval())  # the next check looks again
        reactor.pump_while(lambda: (BANK, d) in gw.recon.elsewhere or gw.recon.running)
        runs = gw.store.run_sync(rsql.runs, BANK, d)
        assert [r["status"] for r in runs] == ["BALANCED"]  # the other's run, once
        assert gw.recon.reports == [] and lease_row(gw.store, held.name) is None
    finally:
        reactor.pump_until(gw.stopService())


def test_the_run_of_a_service_that_died_is_taken_over(setup):
    cfg, ledger, tmp = setup
    d = date(2026, 11, 27)
    recs = day(ledger, d, 4, 0)
    (exchange(cfg) / "STMT-27.txt").write_bytes(fixed_statement("105210", d, recs[1:]))
    cfg.banks[0].reconcile_time = None  # no schedule: only the takeover runs it
    cfg.banks[0].reconcile.lock_stale = 60
    t0 = datetime(2026, 11, 28, 8, 0)
    store = ledger.store
    dead = Leases(store, now=lambda: t0, holder="node-a:1717:deadbeef", ttl=60)
    dead.acquire(rsql.lock_name(BANK, d), ttl=60,
                 job={"job": "reconcile", "by": "service", "file": "STMT-27.txt",
                      "why": "notice"})
    run_id, _ = store.run_sync(rsql.run_open, BANK, d, None, t0, dry_run=False)
    # an operator's run (bankgate reconcile) that died too: theirs to start again
    gone = Leases(store, now=lambda: t0, holder="laptop:99:0000aaaa", ttl=60)
    gone.acquire(rsql.lock_name(BANK, d - timedelta(days=1)), ttl=60,
                 job={"job": "reconcile", "by": "wang.fang"})
    gw, reactor = start(cfg, t0 + timedelta(seconds=30))
    try:
        assert gw.recon.check_interval() == 20  # a third of lock_stale
        reactor.pump_while(lambda: gw.recon._scanning)
        assert gw.recon.reports == [] and not gw.recon.running  # not expired yet
        reactor.advance(40)  # 08:01:10: the dead holder's lock expired at 08:01:00
        reactor.pump_while(lambda: not gw.recon.reports)
        rep = gw.recon.reports[0]
        assert (rep.settle_date, rep.status, rep.file_name) == (d, "BALANCED", "STMT-27.txt")
        assert len(rep.changes) == 1  # the payment the bank lacks, reversed locally
        dead_run = store.run_sync(rsql.run_get, run_id)
        assert dead_run["status"] == "FAILED" and dead_run["summary"]["error"] == INTERRUPTED
        [(actor, subject, detail)] = audits(store, "recon-lock-takeover")
        assert subject == f"{BANK} 2026-11-27" and "node-a:1717:deadbeef" in detail
        assert actor == gw.leases.holder
        assert lease_row(store, rsql.lock_name(BANK, d)) is None  # released after the run
        # the operator's date was left alone
        reactor.advance(gw.recon.check_interval())
        reactor.pump_while(lambda: gw.recon._scanning)
        assert [r.settle_date for r in gw.recon.reports] == [d]
        assert lease_row(store, rsql.lock_name(BANK, d - timedelta(days=1)))["holder"] == (
            "laptop:99:0000aaaa")
    finally:
        reactor.pump_until(gw.stopService())
