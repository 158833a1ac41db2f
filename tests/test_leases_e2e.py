"""End to end: kill the holder of a reconciliation's lease half-way; another node
takes the run over and the books end as after one clean run.

Two ``twistd bankgate`` processes (two nodes: their own data folders and ports) on
one PostgreSQL database of this module's own, reading their statements from one
shared folder.  The day is prepared by this test before they start: customers with
one bill each, payments over the ledger, and a statement that leaves something for
every action of the reconciliation -- records only the bank has (posted after the
fact), payments the bank lacks (reversed locally), amounts that differ
(exceptions).  The bank's statement notice goes to node A, which starts the run and,
through the test-only hook ``BANKGATE_TEST_RECON_PAUSE``, stops after balancing 10
items; the test kills it (``SIGKILL``) there.  Node B finds the run lock's holder
silent once ``lock_stale`` (60 s, the least allowed) has passed, takes the run over
and finishes it.  The same day prepared in a second database and reconciled once,
cleanly, in this process is the reference: the same payments posted and reversed,
the same exceptions, the same status; A's run is marked FAILED (interrupted) and the
takeover is audited with A's holder.

The waits are for events -- a port accepting, a log line, a row -- each bounded.
"""

from __future__ import annotations

import os
import re
import time
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from e2e_helpers import ask_fixed, wait_log

from bankgate.app.config import load_config
from bankgate.canon import messages as m
from bankgate.canon.messages import Outcome
from bankgate.codec.registry import load_codec
from bankgate.devtools.gateway import GatewayProcess, free_port
from bankgate.domain.ledger import Ledger
from bankgate.domain.reconcile import PAUSE_ENV, Reconciler
from bankgate.store import model
from bankgate.store.db import Store
from bankgate.store.n8 import N8Mapping, build_tables

pytestmark = pytest.mark.e2e

FIXED = load_codec("ref-fixed")
TZ = ZoneInfo("Asia/Shanghai")
BANK = "bank-a"
CODE = "105210"
IO_TIMEOUT = 10.0
LOCK_STALE = 60  # [bank.reconcile] lock_stale: the least the configuration allows
PAUSE_AFTER = 10  # balanced items before node A stops (and is killed)
POSTGRES = os.environ.get("BANKGATE_TEST_POSTGRES",
                          "postgresql+psycopg://postgres@127.0.0.1:5432/test")

CONFIG = """\
[gateway]
data_dir = "{data}"
timezone = "Asia/Shanghai"

[database]
url = "{url}"

[n8]
create = false

[[bank]]
name = "{bank}"
plugin = "ref-fixed"
bank_code = "{code}"
listen = "tcp:{port}:interface=127.0.0.1"
allow = ["127.0.0.0/8"]
policy = "any"
statement_source = "file://{statements}"

[bank.reconcile]
lock_stale = {stale}
pdf = false
"""


def local_now() -> datetime:
    return datetime.now(TZ).replace(tzinfo=None)


# -- two databases of this module's own: the nodes', and the clean run's ------------------


def _database(name: str) -> str:
    server = sa.engine.make_url(POSTGRES)
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            c.execute(sa.text(f"CREATE DATABASE {name}"))
    except sa.exc.OperationalError as e:
        msg = f"postgres server not reachable at {POSTGRES}: {str(e).splitlines()[0][:120]}"
        if os.environ.get("BANKGATE_REQUIRE_SERVERS") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    finally:
        admin.dispose()
    return server.set(database=name).render_as_string(hide_password=False)


def _drop(name: str) -> None:
    admin = sa.create_engine(sa.engine.make_url(POSTGRES), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    finally:
        admin.dispose()


@pytest.fixture(scope="module")
def databases():
    names = (f"bgleases_{os.getpid()}", f"bgleases_ref_{os.getpid()}")
    try:
        yield tuple(_database(n) for n in names)
    finally:
        for n in names:
            _drop(n)


# -- the day: customers, their payments, the bank's statement -------------------------------

CUSTOMERS = [f"3000{i:05d}" for i in range(1, 81)]
MATCHED = range(0, 28)  # paid, and in the statement alike
DIFFERS = range(28, 30)  # paid; the statement says another amount: exceptions
UTILITY_ONLY = range(30, 35)  # paid; not in the statement: reversed locally
BANK_ONLY = range(35, 75)  # only in the statement: posted after the fact


def amount(i: int) -> int:
    return 10_000 + 100 * i


def serial(d: date, i: int) -> str:
    return f"LS{d:%Y%m%d}{i:06d}"


def prepare(url: str, d: date) -> None:
    """The same day on any database: the gateway's tables, N8 with one bill per
    customer (no late fee: due next year), the utility's payments of ``d``."""
    store = Store(url, threads=2)
    try:
        store.create_gateway_tables()
        store.create_n8_tables()
        n8 = store.n8
        with store.engine.begin() as c:
            c.execute(n8["tariff"].insert(), [{"fee_type": "01", "customer_class": "R",
                                               "unit_price": 100, "late_fee_ppm": 0}])
            c.execute(n8["customer"].insert(), [
                {"customer_no": cust, "name": f"客户{i}", "address": "和平区",
                 "customer_class": "R", "status": "A"} for i, cust in enumerate(CUSTOMERS)])
            c.execute(n8["bill"].insert(), [
                {"bill_id": f"LB{i:05d}", "customer_no": cust, "fee_type": "01",
                 "period": "2026-2027", "amount": 50_000, "paid_amount": 0,
                 "late_fee_paid": 0, "due_date": date(d.year + 1, 12, 31)}
                for i, cust in enumerate(CUSTOMERS)])
        ledger = Ledger(store, {BANK: _policy()}, now=local_now)
        for i in [*MATCHED, *DIFFERS, *UTILITY_ONLY]:
            o = m.Origin(BANK, d, "093000")
            r = ledger.pay(m.PaymentRequest(o, serial(d, i), CUSTOMERS[i], amount(i),
                                            content=m.fingerprint("PAY", CUSTOMERS[i],
                                                                  amount(i))))
            assert r.outcome is Outcome.OK, r
    finally:
        store.stop()


def _policy():
    from bankgate.domain.ledger import BankPolicy

    return BankPolicy(BANK, CODE, policy="any")


def statement(d: date) -> bytes:
    """ref-fixed §8 by hand: H + settle date + bank code + count + total, then D rows."""
    recs = [(serial(d, i), CUSTOMERS[i], amount(i)) for i in MATCHED]
    recs += [(serial(d, i), CUSTOMERS[i], amount(i) + 1) for i in DIFFERS]
    recs += [(serial(d, i), CUSTOMERS[i], amount(i)) for i in BANK_ONLY]
    lines = [f"H{d:%Y%m%d}{CODE:<6}{len(recs):08d}{sum(a for *_, a in recs):015d}"]
    lines += [f"D{s:<20}{d:%Y%m%d}093000{c:<20}{a:012d}04" for s, c, a in recs]
    return "".join(ln + "\r\n" for ln in lines).encode("gbk")


# -- a node ---------------------------------------------------------------------------------


class Node:
    def __init__(self, data: Path, url: str, statements: Path, env: dict | None = None):
        data.mkdir(parents=True, exist_ok=True)
        self.data, self.port = data, free_port()
        self.config = data / "bankgate.toml"
        self.config.write_text(CONFIG.format(
            data=data.as_posix(), url=url, bank=BANK, code=CODE, port=self.port,
            statements=statements.as_posix(), stale=LOCK_STALE))
        self.profile = load_config(self.config).bank(BANK).profile()
        self.log = data / "gateway.log"
        self.process = GatewayProcess(self.config, [self.port], self.log, env=env,
                                      start_timeout=60.0, stop_timeout=20.0)

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    def start(self) -> None:
        self.process.start()
        self.wait_log(r"bankgate: ready")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 30.0) -> re.Match:
        return wait_log(self.text, self.process.tail, pattern, timeout)

    def notice(self, d: date, file_name: str, data: bytes) -> dict:
        """The bank's statement notice (ref-fixed 1005) on a connection of its own."""
        values = {"serial": f"N{d:%Y%m%d}{os.getpid() % 100000:05d}", "settle_date": d,
                  "file_name": file_name, "record_count": data.count(b"\r\nD"),
                  "total_amount": int(data[23:38])}
        return ask_fixed(FIXED, self.profile, self.port, "notice", values, local_now,
                         IO_TIMEOUT)




def wait_for(what: str, fn, timeout: float, nodes=()):
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            tails = "\n".join(f"-- {n.data.name}:\n{n.process.tail(40)}" for n in nodes)
            raise AssertionError(f"{what}: not after {timeout:g} s\n{tails}")
        time.sleep(0.2)


# -- what the books say -------------------------------------------------------------------


def outcome(url: str, d: date) -> dict:
    """What a reconciliation of (BANK, d) left: the latest finished run's status and
    exceptions, the payments posted after the fact, the payments reversed, and every
    bill's paid amount."""
    e = sa.create_engine(url)
    try:
        with e.connect() as c:
            rr, it, p = model.recon_run, model.recon_item, model.payment
            run = c.execute(sa.select(rr.c.id, rr.c.status).where(
                rr.c.bank == BANK, rr.c.settle_date == d, rr.c.dry_run == 0,
                rr.c.status.in_(("BALANCED", "EXCEPTIONS"))).order_by(rr.c.id.desc())).first()
            exceptions = sorted(tuple(r) for r in c.execute(
                sa.select(it.c.category, it.c.serial, it.c.bank_amount, it.c.our_amount)
                .where(it.c.run_id == run.id, it.c.action == "EXCEPTION")))
            posted = sorted(tuple(r) for r in c.execute(
                sa.select(p.c.serial, p.c.customer_no, p.c.amount, p.c.status)
                .where(p.c.bank == BANK, p.c.source == "recon")))
            reversed_ = sorted(r[0] for r in c.execute(
                sa.select(p.c.serial).where(p.c.bank == BANK, p.c.status == "REVERSED")))
            bill = build_tables(N8Mapping(), sa.MetaData())["bill"]
            bills = sorted(tuple(r) for r in c.execute(
                sa.select(bill.c.bill_id, bill.c.paid_amount, bill.c.late_fee_paid)))
        return {"status": run.status, "exceptions": exceptions, "posted": posted,
                "reversed": reversed_, "bills": bills}
    finally:
        e.dispose()


def clean_run(url: str, d: date, data: bytes, tmp: Path) -> None:
    """One reconciliation of the day, uninterrupted, in this process."""
    from bankgate.app.config import BankConfig, ReconPolicy

    store = Store(url, threads=2)
    try:
        bank = BankConfig(name=BANK, plugin="ref-fixed", bank_code=CODE, policy="any",
                          exchange_dir=str(tmp), reconcile=ReconPolicy(pdf=False))
        rec = Reconciler(Ledger(store, {BANK: _policy()}, now=local_now), bank, FIXED,
                         data_dir=str(tmp))
        rec.reconcile(data, d, file_name=f"STMT-{d:%Y%m%d}.txt")
    finally:
        store.stop()


# -- the test -----------------------------------------------------------------------------


def test_the_lease_holder_killed_mid_reconciliation_is_taken_over(databases, tmp_path):
    url, ref_url = databases
    d = local_now().date()
    prepare(url, d)
    prepare(ref_url, d)
    data = statement(d)
    name = f"STMT-{d:%Y%m%d}.txt"
    shared = tmp_path / "statements"
    shared.mkdir()
    (shared / name).write_bytes(data)

    a = Node(tmp_path / "node-a", url, shared, env={PAUSE_ENV: f"{PAUSE_AFTER}:600"})
    b = Node(tmp_path / "node-b", url, shared)
    engine = sa.create_engine(url)

    def db(sql: str, **params) -> list:
        with engine.connect() as c:
            return list(c.execute(sa.text(sql), params))

    try:
        a.start()  # migrates; B then finds the schema up to date
        b.start()
        answer = a.notice(d, name, data)
        assert answer["resp_code"] == "0000", answer

        a.wait_log(rf"test hook {PAUSE_ENV}: {BANK} {d} paused after {PAUSE_AFTER} of 45",
                   timeout=60)
        [(holder, job)] = db("SELECT holder, job FROM bg_lease WHERE name = :n",
                             n=f"recon:{BANK}:{d:%Y-%m-%d}")
        assert holder.split(":")[1] == str(a.pid) and '"by": "service"' in job
        [(run_a, status_a)] = db("SELECT id, status FROM bg_recon_run WHERE bank = :b",
                                 b=BANK)
        assert status_a == "RUNNING"
        half = db("SELECT count(*) FROM bg_payment WHERE source = 'recon'")[0][0]
        assert 0 < half < len(BANK_ONLY)  # half-way: some posted after the fact, not all

        a.process.proc.kill()  # kill -9: no release, no goodbye
        a.process.proc.wait(10)
        killed_at = time.monotonic()

        b.wait_log(rf"reconciliation: {BANK} {d}: its run lock's holder {re.escape(holder)}"
                   r" stopped renewing it .*: taking the run over",
                   timeout=LOCK_STALE + 3 * LOCK_STALE / 3 + 30)
        assert time.monotonic() - killed_at > LOCK_STALE - 25  # not before it expired
        wait_for("node B finishes the run", lambda: db(
            "SELECT id FROM bg_recon_run WHERE bank = :b AND status IN"
            " ('BALANCED', 'EXCEPTIONS')", b=BANK), timeout=60, nodes=(a, b))

        # A's run: interrupted, recorded as such
        [(status, summary)] = db("SELECT status, summary FROM bg_recon_run WHERE id = :i",
                                 i=run_a)
        assert status == "FAILED" and "interrupted" in summary
        # the takeover: audited with the silent holder, logged by B
        [(actor, detail)] = db("SELECT actor, detail FROM bg_audit"
                               " WHERE action = 'recon-lock-takeover'")
        assert holder in detail and actor.split(":")[1] == str(b.process.proc.pid)
        assert "taken over from " + holder in b.text()
        # nothing left held: B releases the lock once the run is recorded (its own commit,
        # a moment after the run's status)
        wait_for("node B releases the run lock", lambda: db(
            "SELECT count(*) FROM bg_lease WHERE name LIKE 'recon:%'")[0][0] == 0,
            timeout=15, nodes=(a, b))

        clean_run(ref_url, d, data, tmp_path / "ref")
        got, want = outcome(url, d), outcome(ref_url, d)
        assert got == want
        assert got["status"] == "EXCEPTIONS" and len(got["exceptions"]) == len(DIFFERS)
        assert len(got["posted"]) == len(BANK_ONLY)
        assert len(got["reversed"]) == len(UTILITY_ONLY)
    finally:
        engine.dispose()
        for n in (a, b):
            n.process.stop()
