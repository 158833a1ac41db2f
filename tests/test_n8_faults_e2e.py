"""End to end: N8 in a database of its own, and the faults its outbox is for.

``twistd bankgate`` runs in a subprocess with the gateway on PostgreSQL and N8 on
MariaDB (``[n8.database]``), N8 in its legacy shape: the tables, columns, units and
codes of ``docs/examples/n8-mapping.toml`` (yuan ``DECIMAL``, ``CHAR(8)`` dates, N8's
own codes), created here through that mapping and seeded with demo customers through
it.  Each test has databases of its own on both servers, dropped after it.  The banks
are this test: ref-fixed frames from the plugin's bank side, on a new connection per
request, each payment sent again with its serial until it is answered -- after no
answer, and after ``9001`` (BUSY), as a bank does.

- the gateway killed between its own commit and N8's (``BANKGATE_TEST_N8_CRASH``),
  under load; the next start applies what the outbox holds before serving a bank;
- the network to N8 cut under load at that same moment (``tests/n8_relay.py``, a TCP
  relay that dies as it would pass a ``COMMIT`` on): payments and queries answer
  BUSY, nothing is half-written but what the outbox holds, and once the relay is back
  the repair job (``repair_every = 1``) applies it.

After each: every payment the banks sent was answered, a payment sent again gets its
first answer, and the books agree on both sides (``ledger_helpers.check_books``:
N8's payment rows against the gateway's standing payments, each bill's paid amounts
against what it had before plus its standing allocations).

Needs the PostgreSQL and MariaDB servers (``BANKGATE_TEST_POSTGRES``,
``BANKGATE_TEST_MARIADB``); without them the module skips with the reason, or fails
under ``BANKGATE_REQUIRE_SERVERS=1``.  The waits are for events (a port accepting, a
log line, a count), each bounded.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from conftest import SERVERS, _reachable
from e2e_helpers import ask_fixed, wait_log
from ledger_helpers import bills, check_books

from bankgate.app.config import load_config
from bankgate.codec.registry import load_codec
from bankgate.devtools import demo
from bankgate.devtools.gateway import GatewayProcess, free_port
from bankgate.devtools.simulate import response_code
from bankgate.store import model
from bankgate.store.db import Store
from bankgate.store.n8outbox import CRASH_ENV

pytestmark = pytest.mark.e2e

FIXED = load_codec("ref-fixed")
TZ = ZoneInfo("Asia/Shanghai")
BANK = "demo-fixed"
KEY = "0123456789ABCDEFFEDCBA9876543210"
KCV = "08D7B4"
OK, BUSY = "0000", "9001"  # ref-fixed's codes for Outcome.OK and Outcome.BUSY
IO_TIMEOUT = 15.0
PAYMENT = 100  # fen: a partial payment, so one customer takes many
CUSTOMERS = 60
TESTS = Path(__file__).resolve().parent
MAPPING = (TESTS.parent / "docs" / "examples" / "n8-mapping.toml").read_text()

CONFIG = """\
[gateway]
data_dir = "{data}"
timezone = "Asia/Shanghai"

[database]
url = "{url}"

{n8}
[n8.database]
url = "{n8_url}"
repair_every = 1

[[bank]]
name = "demo-fixed"
plugin = "ref-fixed"
bank_code = "105210"
listen = "tcp:{bank}:interface=127.0.0.1"
allow = ["127.0.0.0/8"]
policy = "partial"
mac = true
mac_key = "{key}"
mac_key_kcv = "{kcv}"
"""


def legacy_n8() -> str:
    """The [n8] tables of docs/examples/n8-mapping.toml: N8's legacy names, units, codes."""
    start, end = MAPPING.index("\n[n8]\n"), MAPPING.index("\n[[bank]]\n")
    return MAPPING[start:end].strip() + "\n"


def local_now() -> datetime:
    return datetime.now(TZ).replace(tzinfo=None)


def _missing(why: str):
    if os.environ.get("BANKGATE_REQUIRE_SERVERS") == "1":
        pytest.fail(why + " (BANKGATE_REQUIRE_SERVERS=1: required here)")
    pytest.skip(why)


# -- databases of each test's own, on both servers ----------------------------------------


def _create(server: str, name: str) -> str:
    u = sa.engine.make_url(server)
    admin = sa.create_engine(u, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
            c.execute(sa.text(f"CREATE DATABASE {name}"))
    finally:
        admin.dispose()
    return u.set(database=name).render_as_string(hide_password=False)


def _drop(server: str, name: str) -> None:
    u = sa.engine.make_url(server)
    admin = sa.create_engine(u, isolation_level="AUTOCOMMIT")
    force = " WITH (FORCE)" if u.get_backend_name() == "postgresql" else ""
    try:
        with admin.connect() as c:
            c.execute(sa.text(f"DROP DATABASE IF EXISTS {name}{force}"))
    finally:
        admin.dispose()


@pytest.fixture
def databases(request):
    """(gateway's URL on PostgreSQL, N8's URL on MariaDB): ``bgn8f_<pid>_<n>`` each."""
    for kind in ("postgres", "mariadb"):
        why = _reachable(SERVERS[kind])
        if why:
            _missing(f"{kind} server not reachable at {SERVERS[kind]}: {why}")
    name = f"bgn8f_{os.getpid()}_{next(_names)}"
    urls = (_create(SERVERS["postgres"], name), _create(SERVERS["mariadb"], name))
    yield urls
    for kind in ("postgres", "mariadb"):
        _drop(SERVERS[kind], name)


_names = itertools.count(1)


# -- the gateway and N8 ---------------------------------------------------------------------


class Gateway:
    """The configuration, the process (started again with a log of its own each time)
    and the test's own look at both databases (a :class:`Store`, never started)."""

    def __init__(self, folder: Path, url: str, n8_url: str, direct_n8_url: str):
        self.folder = folder
        self.port = free_port()
        self.config = folder / "bankgate.toml"
        self.config.write_text(CONFIG.format(
            data=(folder / "var").as_posix(), url=url, n8=legacy_n8(), n8_url=n8_url,
            bank=self.port, key=KEY, kcv=KCV))
        cfg = load_config(self.config)
        assert cfg.n8_db_url == n8_url and cfg.n8_repair_every == 1
        self.profile = cfg.bank(BANK).profile()
        self.store = Store(url, cfg.n8, n8_url=direct_n8_url)
        assert self.store.split
        self.logs: list[Path] = []
        self.process: GatewayProcess | None = None

    def seed(self) -> list[str]:
        """N8's legacy tables, created and filled through the mapping; the active
        demo customers owing at least 100.00 yuan."""
        self.store.create_n8_tables()
        demo.seed(self.store, CUSTOMERS, today=local_now().date())
        self.store.initial_paid = bills(self.store)  # what N8 had paid before us
        c, b = self.store.n8["customer"], self.store.n8["bill"]
        owed = sa.func.sum(b.c.amount - b.c.paid_amount)
        q = (sa.select(b.c.customer_no).join(c, c.c.customer_no == b.c.customer_no)
             .where(c.c.status == "A").group_by(b.c.customer_no).having(owed >= 10000)
             .order_by(b.c.customer_no))
        with self.store.n8_engine.connect() as conn:
            found = [str(r[0]) for r in conn.execute(q)]
        assert len(found) >= 20, found
        return found

    def start(self, env: dict | None = None) -> None:
        log = self.folder / f"gateway-{len(self.logs) + 1}.log"
        self.logs.append(log)
        self.process = GatewayProcess(self.config, [self.port], log, env=env,
                                      start_timeout=60.0, stop_timeout=20.0)
        self.process.start()
        self.wait_log(r"\[bankgate#info\] bankgate: ready")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def text(self) -> str:
        return self.logs[-1].read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 60.0, after: int = 0) -> re.Match:
        return wait_log(self.text, self.process.tail, pattern, timeout, after)

    def ask(self, txn: str, values: dict) -> dict:
        """One request on a new connection; ``OSError`` when no answer comes."""
        return ask_fixed(FIXED, self.profile, self.port, txn, values, local_now, IO_TIMEOUT)

    # -- the books, read by the test itself -------------------------------------------------

    def payments(self) -> dict[str, list[tuple]]:
        """serial -> [(receipt, amount, status)] of this bank's payments."""
        p = model.payment
        out: dict[str, list[tuple]] = {}
        with self.store.engine.connect() as c:
            for r in c.execute(sa.select(p.c.serial, p.c.receipt_no, p.c.amount, p.c.status)
                               .where(p.c.bank == BANK)):
                out.setdefault(r.serial, []).append((r.receipt_no, int(r.amount), r.status))
        return out

    def outbox(self) -> list[str]:
        """The receipts of the outbox rows: waiting for N8, or applied there and not
        deleted yet (deleted in batches, bankgate.store.n8outbox.CLEAR_BATCH)."""
        o = model.n8_outbox
        with self.store.engine.connect() as c:
            return [r[0] for r in c.execute(sa.select(o.c.receipt_no).order_by(o.c.id))]

    def n8_payments(self) -> dict[str, tuple[int, str]]:
        """N8's payment rows, read through the mapping: pay_id -> (amount in fen, status)."""
        p = self.store.n8["payment"]
        with self.store.n8_engine.connect() as c:
            return {r.pay_id: (int(r.amount), r.status) for r in c.execute(
                sa.select(p.c.pay_id.label("pay_id"), p.c.amount.label("amount"),
                          p.c.status.label("status")))}

    def missing_in_n8(self) -> set[str]:
        """The gateway's payments N8 does not hold (yet)."""
        ours = {receipt for rows in self.payments().values() for receipt, _, _ in rows}
        return ours - set(self.n8_payments())

    def assert_books_agree(self) -> None:
        """Nothing lost, nothing doubled, on both sides."""
        assert self.missing_in_n8() == set()
        assert set(self.outbox()) <= set(self.n8_payments())  # applied, left to delete
        standing = {receipt: amount for rows in self.payments().values()
                    for receipt, amount, status in rows if status == "POSTED"}
        n8 = self.n8_payments()
        assert {k: (a, "N") for k, a in standing.items()} == n8
        check_books(self.store)  # the bills against the standing allocations, the sums

    def assert_half_written_only_in_the_outbox(self) -> set[str]:
        """N8 holds no payment the gateway does not, and the gateway none that N8
        lacks but for those whose N8 operations wait in the outbox; those."""
        ours = {receipt for rows in self.payments().values() for receipt, _, _ in rows}
        n8 = set(self.n8_payments())
        assert n8 <= ours, n8 - ours
        assert ours - n8 <= set(self.outbox()), (ours - n8, self.outbox())
        return ours - n8




_serials = itertools.count(1)


def serial() -> str:
    return f"N8F{local_now():%H%M%S}{os.getpid() % 10000:04d}{next(_serials):07d}"


# -- the banks -------------------------------------------------------------------------------


class Load:
    """Payments of :data:`PAYMENT` fen from ``threads`` banks at once until :meth:`stop`.
    Each is sent again with its serial until it is answered with anything but BUSY:
    after no answer (refused, reset, timed out: the gateway may be down) and after
    ``9001``.  :meth:`hold` parks the banks between two attempts; :meth:`resume`
    lets them go on."""

    def __init__(self, gw: Gateway, customers: list[str], threads: int = 4):
        self.gw = gw
        self.customers = itertools.cycle(customers)
        self.lock = threading.Lock()
        self.acked: dict[str, str] = {}  # serial -> the receipt of its answer
        self.values: dict[str, dict] = {}  # serial -> what was sent
        self.unanswered: set[str] = set()  # sent and got no answer at least once
        self.busy: set[str] = set()  # answered BUSY at least once
        self.odd: list[tuple[str, dict]] = []  # answered, neither approved nor BUSY
        self.stopping = threading.Event()
        self.abandon = threading.Event()
        self.running = threading.Event()
        self.running.set()
        self.parked = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:  # the test failed: no bank waits for an answer
            self.abandon.set()
        self.resume()
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(120)
            assert not t.is_alive(), "a bank thread did not end"

    def hold(self, timeout: float = 60.0) -> None:
        """Park every bank before its next attempt; returns once all are parked."""
        self.running.clear()
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if self.parked == len(self.threads):
                    return
            assert time.monotonic() < deadline, "the banks did not park"
            time.sleep(0.02)

    def resume(self) -> None:
        self.running.set()

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def wait_for(self, n: int, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < n:
            assert time.monotonic() < deadline, f"only {self.count()} payments in {timeout} s"
            assert not self.odd, self.odd[:3]
            time.sleep(0.02)

    def wait_busy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if self.busy:
                    return
            assert time.monotonic() < deadline, f"no BUSY answer in {timeout} s"
            time.sleep(0.02)

    def _run(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                customer = next(self.customers)
            self.pay({"customer_no": customer, "amount": PAYMENT, "serial": serial()})

    def _park(self) -> None:
        if self.running.is_set():
            return
        with self.lock:
            self.parked += 1
        self.running.wait()
        with self.lock:
            self.parked -= 1

    def pay(self, values: dict) -> None:
        s = values["serial"]
        with self.lock:
            self.values[s] = values
        deadline = time.monotonic() + 180.0
        while True:
            self._park()
            if self.abandon.is_set():
                return
            assert time.monotonic() < deadline, f"payment {s} never answered"
            try:
                a = self.gw.ask("pay", values)
            except OSError:  # refused, reset, closed, timed out: no answer -- again
                with self.lock:
                    self.unanswered.add(s)
                time.sleep(0.05)  # a bank's pause before it sends again
                continue
            code = response_code(a)
            with self.lock:
                if code == OK:
                    self.acked[s] = a["receipt_no"]
                    return
                if code != BUSY:
                    self.odd.append((s, a))
                    return
                self.busy.add(s)
            time.sleep(0.05)

    def assert_each_answered_once_and_first_answers_repeat(self) -> None:
        assert not self.odd, self.odd[:3]
        rows = self.gw.payments()
        assert set(self.acked) == set(self.values)  # every payment sent was answered
        for s, receipt in self.acked.items():
            assert rows.get(s) == [(receipt, PAYMENT, "POSTED")], (s, rows.get(s))
        assert set(rows) == set(self.acked), set(rows) - set(self.acked)
        # a payment sent again gets its first answer
        for s in sorted(self.unanswered | self.busy):
            a = self.gw.ask("pay", self.values[s])
            assert (response_code(a), a["receipt_no"]) == (OK, self.acked[s]), (s, a)
        assert self.gw.payments() == rows


# -- the relay standing for the network to N8 --------------------------------------------


class Relay:
    """``tests/n8_relay.py`` in a subprocess, listening on one port for its life."""

    def __init__(self, folder: Path, target: str):
        u = sa.engine.make_url(target)
        self.target = (u.host or "127.0.0.1", u.port or 3306)
        self.port = free_port()
        self.folder = folder
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def url(self, n8_url: str) -> str:
        u = sa.engine.make_url(n8_url).set(host="127.0.0.1", port=self.port)
        return u.render_as_string(hide_password=False)

    def start(self) -> None:
        self.starts += 1
        self.log = self.folder / f"relay-{self.starts}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(TESTS / "n8_relay.py"), str(self.port), *map(
                    str, self.target)], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "the relay does not listen"
                time.sleep(0.05)

    def cut_at_next_commit(self, timeout: float = 60.0) -> None:
        """Arm it; returns once it died at a COMMIT it did not pass on."""
        self.proc.send_signal(signal.SIGUSR1)
        self.proc.wait(timeout)
        assert "relay: COMMIT cut" in self.log.read_text()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# -- the tests ------------------------------------------------------------------------------


def test_gateway_killed_between_its_commit_and_n8s_the_start_repairs(tmp_path, databases):
    url, n8_url = databases
    gw = Gateway(tmp_path, url, n8_url, n8_url)
    try:
        customers = gw.seed()
        crash_at = 25
        gw.start(env={CRASH_ENV: str(crash_at)})
        first = gw.process.proc
        with Load(gw, customers) as load:
            code = first.wait(120)  # it dies by itself, at the 25th payment's commit
            assert code == 9, gw.process.tail(60)
            assert f"{CRASH_ENV}={crash_at}: dying between the two commits" in gw.text()
            acked_at_crash = load.count()
            assert acked_at_crash < crash_at
            # the gateway's commit is in, N8's is not: the outbox holds it (and any
            # other payment caught in the same window by the kill)
            missing = gw.assert_half_written_only_in_the_outbox()
            assert missing, "the crash left N8 nothing to catch up"
            rows = len(gw.outbox())  # with those applied and not deleted yet
            gw.start()  # no crash this time: the start applies the outbox first
            # what N8 lacked, at least, and at most every row (rows applied and not yet
            # deleted are applied again, which changes nothing)
            applied = int(gw.wait_log(r"N8 outbox: (\d+) applied").group(1))
            assert len(missing) <= applied <= rows, (missing, applied, rows)
            assert gw.outbox() == [] and gw.missing_in_n8() == set()
            load.wait_for(acked_at_crash + 40)
        # each payment the banks sent was answered, the crashed ones by their retries
        assert missing <= set(load.acked.values())
        assert {s for s, r in load.acked.items() if r in missing} <= load.unanswered
        load.assert_each_answered_once_and_first_answers_repeat()
        gw.assert_books_agree()
    finally:
        gw.stop()
        gw.store.stop()


def test_network_to_n8_cut_under_load_busy_then_the_repair_job_catches_up(
        tmp_path, databases):
    url, n8_url = databases
    relay = Relay(tmp_path, n8_url)
    relay.start()
    gw = Gateway(tmp_path, url, relay.url(n8_url), n8_url)
    try:
        customers = gw.seed()
        gw.start()
        with Load(gw, customers) as load:
            load.wait_for(30)
            mark = len(gw.text())
            relay.cut_at_next_commit()  # dies in the window between the two commits
            gw.wait_log(r"N8's commit failed after the gateway's \(outbox \d+: the repair"
                        r" job applies it\)", after=mark)
            load.wait_busy()  # the banks' payments answer BUSY while N8 is away
            a = gw.ask("query", {"customer_no": customers[0], "serial": serial()})
            assert response_code(a) == BUSY, a
            s = serial()  # a new payment: BUSY, and nothing recorded anywhere
            a = gw.ask("pay", {"customer_no": customers[0], "amount": PAYMENT, "serial": s})
            assert response_code(a) == BUSY, a
            assert s not in gw.payments()
            load.hold()  # no bank sends while N8 comes back: the job alone repairs
            missing = gw.assert_half_written_only_in_the_outbox()  # N8 rolled it back
            assert missing, "the cut left N8 nothing to catch up"
            relay.start()  # the network is back
            deadline = time.monotonic() + 60  # the job takes rows 10 s old, every 1 s
            while gw.missing_in_n8():
                assert time.monotonic() < deadline, f"not repaired: {gw.missing_in_n8()}"
                time.sleep(0.1)
            # the job logs what it applied once its run is over, a moment after N8's commits
            deadline = time.monotonic() + 15
            while sum(map(int, applied := re.findall(r"bankgate: N8 repair: (\d+) applied",
                                                     gw.text()[mark:]))) < len(missing):
                assert time.monotonic() < deadline, (applied, missing)
                time.sleep(0.1)
            load.resume()  # the banks' retries get answers, and the load goes on
            load.wait_for(load.count() + len(missing) + 30)
        assert missing <= set(load.acked.values())
        assert {s for s, r in load.acked.items() if r in missing} <= load.busy
        load.assert_each_answered_once_and_first_answers_repeat()
        gw.assert_books_agree()
    finally:
        gw.stop()
        gw.store.stop()
        relay.stop()
