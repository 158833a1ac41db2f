"""Leases (bg_lease, bankgate/store/leases.py and bankgate/domain/leases.py).

Two "processes" are two lease clients with their own holder ids on one store, their
time an injected clock: one holder at a time, renewal, expiry, takeover (logged and
audited with the silent holder), a finished job never taken again -- on SQLite,
PostgreSQL and MariaDB, with processes racing on real threads; a state machine
that at most one client ever holds a lease; every statement compiled for SQL
Server, Oracle and DB2.  Then each job that runs under a lease: the reconciliation's
run lock, the card-debit reversal queue, withholding files, scheduled reports.
"""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from conftest import NOW, TODAY, FakeClock, make_store
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy.dialects import mssql, oracle, registry
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from bankgate.domain.leases import Lease, LeaseBusy, LeaseLost, Leases, default_holder
from bankgate.store import leases as sql
from bankgate.store import model
from bankgate.store.db import Store

TTL = 60.0
A, B = "node-a:101:aaaa0001", "node-b:202:bbbb0002"


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def store(request, tmp_path):
    s = make_store(request.param, tmp_path)
    yield s
    if s.dialect != "sqlite":
        s.drop_all()
    s.stop()


@pytest.fixture
def events():
    got: list[dict] = []
    globalLogPublisher.addObserver(got.append)
    yield got
    globalLogPublisher.removeObserver(got.append)


def said(events, namespace: str = "bankgate.lease") -> list[str]:
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events if e.get("log_namespace") == namespace]


def audits(store, action: str) -> list[tuple]:
    a = model.audit
    with store.engine.connect() as c:
        return [tuple(r) for r in c.execute(
            sa.select(a.c.actor, a.c.subject, a.c.detail).where(a.c.action == action)
            .order_by(a.c.id))]


def row(store, name: str) -> dict | None:
    return store.run_sync(sql.get, name)


def two(store, clock: FakeClock) -> tuple[Leases, Leases]:
    return (Leases(store, now=clock, holder=A, ttl=TTL),
            Leases(store, now=clock, holder=B, ttl=TTL))


# -- one holder at a time; takeover after the ttl ------------------------------------------


def test_one_holder_until_the_ttl_passes_then_a_takeover(store, events):
    clock = FakeClock()
    a, b = two(store, clock)
    la = a.acquire("job:x", job={"job": "test", "by": "service"})
    assert (la.holder, la.took_over) == (A, None)
    with pytest.raises(LeaseBusy, match=f"job:x is held by {A} since 2026-11-27 09:30:00") as e:
        b.acquire("job:x")
    assert e.value.holder == A and not e.value.finished
    clock.now += timedelta(seconds=TTL)  # at the expiry itself: still held
    with pytest.raises(LeaseBusy):
        b.acquire("job:x")
    assert la.renew()  # renewed at +60: held until +120
    assert row(store, "job:x")["expires_at"] == NOW + timedelta(seconds=2 * TTL)
    clock.now = NOW + timedelta(seconds=2 * TTL)
    with pytest.raises(LeaseBusy):
        b.acquire("job:x")
    clock.now += timedelta(seconds=1)  # A silent for longer than its ttl
    lb = b.acquire("job:x", job={"job": "test"})
    assert lb.took_over == A and lb.holder == B
    assert row(store, "job:x")["holder"] == B and row(store, "job:x")["job"] == {"job": "test"}
    [(actor, subject, detail)] = audits(store, "lease-takeover")
    assert actor == B and subject == "job:x" and A in detail and "stale_holder" in detail
    assert any(f"lease job:x: taken over from {A}" in line for line in said(events))
    # the silent holder can neither renew nor drop the new holder's lease
    assert not la.renew() and la.lost and la.taken
    with pytest.raises(LeaseLost):
        la.check()
    assert not la.release()
    assert row(store, "job:x")["holder"] == B
    assert lb.release() and row(store, "job:x") is None
    assert a.acquire("job:x").took_over is None  # free again: no takeover, no audit
    assert len(audits(store, "lease-takeover")) == 1


def test_the_holder_asking_again_renews_its_own_lease(store):
    clock = FakeClock()
    a, _ = two(store, clock)
    a.acquire("job:y")
    clock.now += timedelta(seconds=100)  # expired, nobody took it: still A's
    again = a.acquire("job:y")
    assert again.took_over is None
    assert row(store, "job:y")["expires_at"] == clock.now + timedelta(seconds=TTL)
    assert row(store, "job:y")["acquired_at"] == NOW  # held since the first time
    assert audits(store, "lease-takeover") == []


def test_check_renews_a_third_of_the_ttl_after_the_last_renewal(store):
    clock = FakeClock()
    a, _ = two(store, clock)
    lease = a.acquire("job:z")
    clock.now += timedelta(seconds=TTL / 3 - 1)
    lease.check()
    assert row(store, "job:z")["renewed_at"] == NOW  # not yet due: no write
    clock.now += timedelta(seconds=1)
    lease.check()
    assert row(store, "job:z")["renewed_at"] == clock.now
    assert row(store, "job:z")["expires_at"] == clock.now + timedelta(seconds=TTL)


def test_a_finished_job_is_never_taken_again(store):
    clock = FakeClock()
    a, b = two(store, clock)
    lease = a.acquire("report:owed:2026-11-27")
    assert lease.finish()
    clock.now += timedelta(days=1)  # long after any ttl
    for client in (a, b):
        with pytest.raises(LeaseBusy, match="was done by node-a:101:aaaa0001") as e:
            client.acquire("report:owed:2026-11-27")
        assert e.value.finished
    assert not lease.renew() and not lease.release()
    assert row(store, "report:owed:2026-11-27")["finished_at"] == NOW
    # a month's history is kept, then purged with the expired rows
    b.acquire("job:old")
    assert a.purge(NOW) == 0
    assert a.purge(NOW + timedelta(days=2)) == 2
    assert store.run_sync(sql.held) == []


def test_expired_lists_the_jobs_of_silent_holders_by_prefix(store):
    clock = FakeClock()
    a, b = two(store, clock)
    a.acquire("recon:any:2026-11-26", ttl=10)
    a.acquire("recon:any:2026-11-27", ttl=1000)
    a.acquire("cutoff:any:2026-11-27", ttl=10)
    b.acquire("recon_other", ttl=10)  # "_" is no wildcard in the prefix
    a.acquire("recon:any:2026-11-25", ttl=10).finish()
    clock.now += timedelta(seconds=11)
    assert [r["name"] for r in a.expired("recon:")] == ["recon:any:2026-11-26"]
    assert [r["name"] for r in a.expired("recon_")] == ["recon_other"]
    assert a.expired("rec%") == []
    assert [r["name"] for r in store.run_sync(sql.held, "recon:")] == [
        "recon:any:2026-11-25", "recon:any:2026-11-26", "recon:any:2026-11-27"]


def test_a_long_job_description_is_cut_to_its_column_and_names_are_bounded(store):
    clock = FakeClock()
    a, _ = two(store, clock)
    a.acquire("job:long", job={"job": "x", "file": "f" * 500})
    assert row(store, "job:long")["job"] == {"job": "x"}
    with pytest.raises(ValueError, match="lease name longer than 160"):
        a.acquire("n" * 161)


def test_the_holder_id_names_this_process_and_changes_in_a_forked_child(monkeypatch):
    import os
    import socket

    h = default_holder()
    host, pid, tag = h.rsplit(":", 2)
    assert host == socket.gethostname()[:40] and pid == str(os.getpid()) and len(tag) == 8
    assert len(h) <= sql.HOLDER
    leases = Leases(None, now=FakeClock())
    first = leases.holder
    assert leases.holder == first
    monkeypatch.setattr(os, "getpid", lambda: 999_999)  # as in a forked worker
    assert leases.holder != first and leases.holder.split(":")[-2] == "999999"


# -- processes racing on real threads --------------------------------------------------------


def race(store, clock: FakeClock, n: int, name: str) -> list[Lease | LeaseBusy]:
    clients = [Leases(store, now=clock, holder=f"racer:{i}:{uuid.uuid4().hex[:8]}", ttl=TTL)
               for i in range(n)]
    barrier = threading.Barrier(n)
    out: list = []
    lock = threading.Lock()

    def go(c: Leases):
        barrier.wait(30)
        try:
            got: Lease | LeaseBusy = c.acquire(name)
        except LeaseBusy as e:
            got = e
        with lock:
            out.append(got)

    threads = [threading.Thread(target=go, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(out) == n
    return out


def test_racing_processes_take_a_lease_once_and_take_it_over_once(store):
    clock = FakeClock()
    got = race(store, clock, 4, "job:race")
    winners = [g for g in got if isinstance(g, Lease)]
    assert len(winners) == 1
    assert {g.holder for g in got if isinstance(g, LeaseBusy)} == {winners[0].holder}
    clock.now += timedelta(seconds=TTL + 1)  # the winner went silent
    again = race(store, clock, 4, "job:race")
    took = [g for g in again if isinstance(g, Lease)]
    assert len(took) == 1 and took[0].took_over == winners[0].holder
    assert row(store, "job:race")["holder"] == took[0].holder
    assert len(audits(store, "lease-takeover")) == 1


# -- at most one holder, whatever happens (a state machine) ----------------------------------


class OneHolder(RuleBasedStateMachine):
    """Three clients take, renew and release one lease while the clock moves; a client
    believes it holds the lease from a successful take or renewal until its ttl
    passes.  At most one may ever believe so, and the row names that one."""

    store: Store  # set by the test

    def __init__(self):
        super().__init__()
        self.clock = FakeClock()
        self.name = f"prop:{uuid.uuid4().hex}"
        self.clients = [Leases(self.store, now=self.clock, holder=f"p:{i}:x", ttl=TTL)
                        for i in range(3)]
        self.mine: list[Lease | None] = [None, None, None]
        self.until: list[datetime | None] = [None, None, None]

    def believers(self) -> list[int]:
        return [i for i in range(3) if self.mine[i] is not None
                and self.clock.now <= self.until[i]]

    @rule(i=st.integers(0, 2), ttl=st.sampled_from([10.0, TTL, 90.0]))
    def take(self, i, ttl):
        try:
            lease = self.clients[i].acquire(self.name, ttl=ttl)
        except LeaseBusy as e:
            assert e.holder != self.clients[i].holder
            assert e.row["expires_at"] >= self.clock.now  # only a live holder keeps it
            return
        self.mine[i], self.until[i] = lease, self.clock.now + timedelta(seconds=ttl)
        for j in range(3):
            if j != i and self.mine[j] is not None and lease.took_over == f"p:{j}:x":
                assert self.clock.now > self.until[j]  # taken only after its ttl

    @precondition(lambda self: any(m is not None for m in self.mine))
    @rule(i=st.integers(0, 2))
    def renew(self, i):
        lease = self.mine[i]
        if lease is None:
            return
        if lease.renew():
            self.until[i] = self.clock.now + timedelta(seconds=lease.ttl)
        else:
            self.mine[i] = None

    @precondition(lambda self: any(m is not None for m in self.mine))
    @rule(i=st.integers(0, 2))
    def release(self, i):
        lease = self.mine[i]
        if lease is not None:
            lease.release()
            self.mine[i] = None

    @rule(seconds=st.one_of(st.sampled_from([1, 9, 10, 11, 19, 20, 59, 60, 61, 89, 90, 91]),
                            st.integers(0, 100)))
    def wait(self, seconds):  # often to either side of a ttl or its third
        self.clock.now += timedelta(seconds=seconds)

    @precondition(lambda self: any(u is not None for u in self.until))
    @rule(offset=st.sampled_from([-5, -1, 0, 1, 5]))
    def to_an_expiry(self, offset):  # right before, at and after a holder's ttl ends
        edge = max(u for u in self.until if u is not None) + timedelta(seconds=offset)
        self.clock.now = max(self.clock.now, edge)

    @invariant()
    def at_most_one_holder(self):
        who = self.believers()
        assert len(who) <= 1, who
        if who:
            r = self.store.run_sync(sql.get, self.name)
            assert r is not None and r["holder"] == self.clients[who[0]].holder


def test_at_most_one_holder_at_any_time(tmp_path):
    store = make_store("sqlite", tmp_path)
    try:
        OneHolder.store = store
        run_state_machine_as_test(OneHolder, settings=settings(
            max_examples=60, stateful_step_count=25, deadline=None,
            suppress_health_check=[HealthCheck.too_slow]))
    finally:
        store.stop()


# -- on the reactor: run(), renewing from the clock ---------------------------------------


class Inline:
    """The store, with ``call`` run at once on this thread (a Deferred of the result)."""

    def __init__(self, store):
        self._store = store

    def __getattr__(self, name):
        return getattr(self._store, name)

    def call(self, fn, *args, **kw):
        return defer.maybeDeferred(fn, *args, **kw)


def result_of(d: defer.Deferred):
    out: list = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


def test_run_renews_from_the_clock_while_the_job_runs_and_releases_after(tmp_path):
    store = make_store("sqlite", tmp_path)
    try:
        wall, reactor = FakeClock(), Clock()
        a = Leases(Inline(store), now=wall, holder=A, ttl=TTL, clock=reactor)
        b = Leases(Inline(store), now=wall, holder=B, ttl=TTL, clock=reactor)
        job = defer.Deferred()
        seen: list[Lease] = []
        done = a.run("job:run", lambda lease: seen.append(lease) or job,
                     what={"job": "test", "by": "service"})
        assert seen and row(store, "job:run")["job"] == {"job": "test", "by": "service"}
        for _ in range(6):  # two minutes of work, renewed every 20 s
            wall.now += timedelta(seconds=TTL / 3)
            reactor.advance(TTL / 3)
            assert row(store, "job:run")["expires_at"] == wall.now + timedelta(seconds=TTL)
            assert isinstance(result_of(b.run("job:run", lambda lease: 1)).value, LeaseBusy)
        job.callback("done")
        assert result_of(done) == "done"
        assert row(store, "job:run") is None and not reactor.getDelayedCalls()
        assert result_of(b.run("job:run", lambda lease: "b ran")) == "b ran"
        # finish: a job that runs once
        assert result_of(a.run("job:once", lambda lease: 1, finish=True)) == 1
        assert row(store, "job:once")["finished_at"] == wall.now
        f = result_of(b.run("job:once", lambda lease: 2))
        assert f.check(LeaseBusy) and f.value.finished
        # a job that fails releases its lease (another may try), never finishes it
        f = result_of(a.run("job:fails", lambda lease: 1 / 0, finish=True))
        assert f.check(ZeroDivisionError) and row(store, "job:fails") is None
    finally:
        store.stop()


def test_a_frozen_holder_is_taken_over_and_gives_its_job_up(tmp_path, events):
    store = make_store("sqlite", tmp_path)
    try:
        wall, frozen, live = FakeClock(), Clock(), Clock()
        a = Leases(Inline(store), now=wall, holder=A, ttl=TTL, clock=frozen)
        b = Leases(Inline(store), now=wall, holder=B, ttl=TTL, clock=live)
        job = defer.Deferred()
        held: list[Lease] = []
        gave_up: list[str] = []

        def work(lease):
            held.append(lease)
            lease.on_lost(lambda: gave_up.append("stop waiting"))
            return job

        done = a.run("job:frozen", work)
        wall.now += timedelta(seconds=TTL + 1)  # A's reactor does not turn: no renewal
        assert result_of(b.run("job:frozen", lambda lease: lease.took_over)) == A
        assert row(store, "job:frozen") is None  # B's job ran and released
        b_lease = b.acquire("job:frozen")  # B holds it again, for a long job
        frozen.advance(TTL / 3)  # A wakes up: its renewal finds the lease taken
        assert held[0].taken and gave_up == ["stop waiting"]
        with pytest.raises(LeaseLost):
            held[0].check()
        with pytest.raises(LeaseLost):
            held[0].raise_if_lost()
        job.callback("late")
        assert result_of(done) == "late"
        assert row(store, "job:frozen")["holder"] == B  # A's end did not release B's lease
        assert b_lease.release()
        assert any("lease job:frozen: lost (taken over by node-b" in line
                   for line in said(events))
    finally:
        store.stop()


# -- every statement compiles on the servers this machine does not have --------------------


def test_every_lease_statement_compiles_for_sql_server_oracle_and_db2(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    store.create_gateway_tables()
    statements: list = []

    @sa.event.listens_for(store.engine, "before_execute")
    def capture(conn, clause, multiparams, params, execution_options):
        if isinstance(clause, sa.sql.ClauseElement):
            statements.append(clause)

    clock = FakeClock()
    a, b = two(store, clock)
    lease = a.acquire("job:c", job={"job": "x"})
    lease.check()
    with pytest.raises(LeaseBusy):
        b.acquire("job:c")
    clock.now += timedelta(seconds=TTL + 1)
    b.acquire("job:c").finish()
    a.acquire("job:d").release()
    a.expired("recon:")
    store.run_sync(sql.held, "job:")
    a.purge(NOW)
    store.stop()
    kinds = set()
    for dialect in (mssql.dialect(), oracle.dialect(), registry.load("ibm_db_sa")()):
        for stmt in statements:
            text = str(stmt.compile(dialect=dialect))
            if "bg_lease" in text:
                kinds.add(text.split()[0].upper())
    assert kinds == {"INSERT", "SELECT", "UPDATE", "DELETE"}


def test_the_migration_renders_the_lease_table_for_each_dialect():
    from bankgate.store.migrations import offline_sql

    for name in ("mssql", "oracle", "ibm_db_sa"):
        text = offline_sql(name)
        assert "CREATE TABLE bg_lease" in text


# -- the reconciliation's run lock is the lease recon:{bank}:{date} ------------------------


def test_the_run_lock_is_a_lease_and_an_interrupted_run_is_marked_failed(tmp_path):
    from conftest import BANKS, seed_fixture
    from test_recon import BANK_FILE, fixed_statement, online_day, reconciler

    from bankgate.domain import reconcile as R
    from bankgate.domain.ledger import Ledger
    from bankgate.store import recon as rsql

    store = make_store("sqlite", tmp_path)
    try:
        seed_fixture(store)
        clock = FakeClock()
        ledger = Ledger(store, dict(BANKS), now=clock)
        online_day(ledger)
        # a run a process started and never finished (killed half-way)
        dead, _ = store.run_sync(rsql.run_open, "any", TODAY, None, NOW, dry_run=False)
        rec = reconciler(ledger, tmp_path)
        seen: list = []

        def look(phase, done, total):
            if phase == "match" and not seen:
                seen.append(row(store, "recon:any:2026-11-27"))

        rep = rec.reconcile(fixed_statement("106210", BANK_FILE), TODAY, progress=look,
                            actor="wang.fang")
        assert rep.status == "EXCEPTIONS"
        assert seen[0]["holder"] == rec.holder and seen[0]["job"]["by"] == "wang.fang"
        assert seen[0]["expires_at"] == NOW + timedelta(seconds=rec.policy.lock_stale)
        assert row(store, "recon:any:2026-11-27") is None  # released at the end
        run = store.run_sync(rsql.run_get, dead)
        assert run["status"] == "FAILED" and run["summary"]["error"] == R.INTERRUPTED
        [(actor, subject, detail)] = audits(store, "reconcile-interrupted")
        assert actor == "wang.fang" and subject == "any 2026-11-27" and str(dead) in detail
        # a lease held for the date by the service's scheduler is the run's lock
        other = Leases(store, now=clock, holder=B, ttl=600)
        held = other.acquire(rsql.lock_name("any", TODAY))
        with pytest.raises(R.ReconBusy, match=f"any 2026-11-27 is being reconciled by {B}"):
            rec.reconcile(fixed_statement("106210", BANK_FILE), TODAY)
        rep = R.Reconciler(ledger, rec.bank, rec.codec, data_dir=str(tmp_path),
                           holder=B).reconcile(fixed_statement("106210", BANK_FILE), TODAY,
                                               lease=held)
        assert rep.status == "EXCEPTIONS" and row(store, held.name)["holder"] == B  # kept
        with pytest.raises(ValueError, match="is not the run lock"):
            rec.reconcile(fixed_statement("106210", BANK_FILE), TODAY,
                          lease=other.acquire("recon:any:2026-11-26"))
    finally:
        store.stop()


def test_the_test_hook_pauses_only_when_set(monkeypatch):
    from bankgate.domain import reconcile as R

    monkeypatch.delenv(R.PAUSE_ENV, raising=False)
    assert R._test_pause() is None
    monkeypatch.setenv(R.PAUSE_ENV, "10:600")
    assert R._test_pause() == (10, 600.0)
    monkeypatch.setenv(R.PAUSE_ENV, "ten")
    assert R._test_pause() is None


# -- card debits: one process at a time sends a bank's reversals -----------------------------


def test_one_process_sweeps_a_banks_reversal_queue_and_another_takes_it_when_it_stops(
        tmp_path, events):
    from bankgate.domain.carddebit import CardDebits, DebitBank
    from bankgate.domain.ledger import Ledger

    store = make_store("sqlite", tmp_path)
    try:
        wall = FakeClock()
        ledger = Ledger(store, {}, now=wall)
        banks = {"dl": DebitBank("dl", "103210", None, None, None)}

        def queue(holder: str) -> CardDebits:
            return CardDebits(ledger, banks, Clock(), wall, run_db=lambda fn, *a: fn(*a),
                              leases=Leases(store, now=wall, holder=holder, ttl=TTL))

        qa, qb = queue(A), queue(B)
        assert qa._sweeping() == ["dl"] and qb._sweeping() == []
        assert row(store, "carddebit:dl")["holder"] == A
        lines = said(events, "bankgate.carddebit")
        assert f"card debit dl: reversals (561) are sent by {A}" in lines
        assert qb._sweeping() == [] and said(events, "bankgate.carddebit") == lines  # once
        wall.now += timedelta(seconds=TTL / 3)
        assert qa._sweeping() == ["dl"]  # renewed at its sweep
        assert row(store, "carddebit:dl")["expires_at"] == wall.now + timedelta(seconds=TTL)
        result_of(qa.stop())
        assert row(store, "carddebit:dl") is None  # given up when it stops
        assert qb._sweeping() == ["dl"]
        # B dies (stops renewing); A comes back and takes over after the ttl
        assert qa._sweeping() == []
        wall.now += timedelta(seconds=TTL + 1)
        assert qa._sweeping() == ["dl"] and audits(store, "lease-takeover")
        # the command line sweeps without a lease
        assert CardDebits(ledger, banks, Clock(), wall)._sweeping() == ["dl"]
    finally:
        store.stop()


# -- withholding files: one process at a time per bank --------------------------------------


def test_a_batch_file_is_refused_while_another_process_writes_one(tmp_path):
    from test_withholding import PK_NAME, make_cfg, make_withholding

    from bankgate.domain.ledger import Ledger
    from bankgate.domain.withholding import WithholdingError

    store = make_store("sqlite", tmp_path)
    try:
        from conftest import seed_fixture

        seed_fixture(store)
        cfg = make_cfg(tmp_path)
        ledger = Ledger(store, {b.name: b.policy_() for b in cfg.banks}, now=lambda: NOW)
        wh = make_withholding(ledger, cfg)
        wh.sign("100000123", "dl", "6222020200012345678", "clerk1")
        other = Leases(store, now=lambda: NOW, holder=B, ttl=600).acquire(
            "withholding-batch:dl")
        with pytest.raises(WithholdingError, match=f"dl: a batch file: being done by {B}"
                                                   " since 09:30:00; try again"):
            wh.generate_batch("dl", TODAY, actor="clerk1")
        assert not (tmp_path / "ex").exists() or not list((tmp_path / "ex").iterdir())
        assert wh.batches("dl") == []
        other.release()
        res = wh.generate_batch("dl", TODAY, actor="clerk1")
        assert res.path.name == PK_NAME and row(store, "withholding-batch:dl") is None
    finally:
        store.stop()


# -- scheduled reports: once per report and date across processes -------------------------


def test_a_report_written_by_one_process_is_not_written_again_by_another(tmp_path, events):
    from test_custom_reports import seed
    from test_report_schedule import GOOD, START, synchronously

    from bankgate.app.report_schedule import ReportScheduler

    store = make_store("sqlite", tmp_path)
    try:
        seed(store)
        folder = tmp_path / "defs"
        folder.mkdir()
        (folder / "owed.toml").write_text(GOOD, encoding="utf-8")
        clock = Clock()

        def now() -> datetime:
            return START + timedelta(seconds=clock.seconds())

        def node(name: str, holder: str) -> ReportScheduler:
            return ReportScheduler(
                reactor=clock, now=now, store=Inline(store), definitions_dir=folder,
                output_dir=tmp_path / name, run_blocking=synchronously,
                leases=Leases(Inline(store), now=now, holder=holder, clock=clock))

        first, second = node("a", A), node("b", B)
        first.start()
        second.start()
        clock.advance(31 * 60)  # 06:31: both see the 06:30 run due
        assert (tmp_path / "a" / "owed" / "owed_2026-11-27.csv").exists()
        assert not (tmp_path / "b").exists()
        assert row(store, "report:owed:2026-11-27")["holder"] == A
        assert row(store, "report:owed:2026-11-27")["finished_at"] is not None
        lines = said(events, "bankgate.reports")
        assert f"report owed: 2026-11-27 already written by {A} (in that process's output" \
               " folder)" in lines
        first.stop()
        second.stop()
    finally:
        store.stop()
