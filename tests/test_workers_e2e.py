"""End to end: ``twistd bankgate`` with ``[gateway] workers = 2`` on PostgreSQL.

One gateway runs for the module -- a supervisor and two worker processes, on a
PostgreSQL database of this module's own (created here, dropped after) -- with a
ref-fixed bank on a free port and the console's ``/metrics`` on another.  The bank is
this test: blocking sockets, a new connection per request, frames built by the
plugin's own bank side (ref-fixed, with its MAC).  Like a real bank, it sends a payment
again, with the same serial, when it got no answer.

- both workers serve, and ``/metrics`` adds up what each of them answered;
- ``kill -9`` of one worker under a steady load of payments: the other goes on, the
  killed one is restarted and logged, every acknowledged payment is in the database
  exactly once, and a payment sent again gets its first answer;
- ``kill -9`` of the supervisor: its workers see it gone and stop, and leave the
  bank's port free for the next start;
- ``SIGTERM`` under load: the workers stop listening, answer what they hold, and exit;
  the supervisor ends after them as twistd ends on SIGTERM; no acknowledged payment is
  lost.

The waits are for events -- a port accepting, a log line, a figure -- each bounded.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from e2e_helpers import ask_fixed, wait_log

from bankgate.app.config import load_config
from bankgate.codec.registry import load_codec
from bankgate.devtools.gateway import GatewayProcess, free_port
from bankgate.devtools.simulate import response_code

pytestmark = pytest.mark.e2e

FIXED = load_codec("ref-fixed")
TZ = ZoneInfo("Asia/Shanghai")
BANK = "demo-fixed"
KEY = "0123456789ABCDEFFEDCBA9876543210"
KCV = "08D7B4"
IO_TIMEOUT = 10.0
PAYMENT = 100  # fen: a partial payment, so one customer takes many
POSTGRES = os.environ.get("BANKGATE_TEST_POSTGRES",
                          "postgresql+psycopg://postgres@127.0.0.1:5432/test")

CONFIG = """\
[gateway]
data_dir = "{data}"
timezone = "Asia/Shanghai"
workers = 2

[database]
url = "{url}"

[n8]
create = true
demo_customers = 40

[console]
listen = "tcp:{console}:interface=127.0.0.1"
metrics_listen = "tcp:{metrics}:interface=127.0.0.1"

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


def local_now() -> datetime:
    return datetime.now(TZ).replace(tzinfo=None)


# -- a database of this module's own ----------------------------------------------------


@pytest.fixture(scope="module")
def database_url():
    """``bgworkers_<pid>`` on the PostgreSQL server, dropped after the module."""
    server = sa.engine.make_url(POSTGRES)
    name = f"bgworkers_{os.getpid()}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            c.execute(sa.text(f"CREATE DATABASE {name}"))
    except sa.exc.OperationalError as e:
        admin.dispose()
        msg = f"postgres server not reachable at {POSTGRES}: {str(e).splitlines()[0][:120]}"
        if os.environ.get("BANKGATE_REQUIRE_SERVERS") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


# -- the gateway --------------------------------------------------------------------------


class Gateway:
    def __init__(self, data: Path, url: str):
        self.data, self.url = data, url
        self.ports = {"bank": free_port(), "console": free_port(), "metrics": free_port()}
        self.config = data / "bankgate.toml"
        self.config.write_text(CONFIG.format(data=data.as_posix(), url=url, key=KEY, kcv=KCV,
                                             **self.ports))
        self.profile = load_config(self.config).bank(BANK).profile()
        self.log = data / "gateway.log"
        self.process = GatewayProcess(self.config, list(self.ports.values()), self.log,
                                      start_timeout=60.0, stop_timeout=20.0)
        self.engine = sa.create_engine(url)
        self.sent = 0  # requests this test sent (the metrics must add up to it)

    def start(self) -> None:
        self.process.start()
        self.wait_log(r"\[bankgate#info\] bankgate: ready")

    def stop(self) -> None:
        self.process.stop()
        self.engine.dispose()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 30.0, after: int = 0) -> re.Match:
        """The first match of ``pattern`` in the log after character ``after``."""
        return wait_log(self.text, self.process.tail, pattern, timeout, after)

    def workers(self) -> dict[int, int]:
        """worker number -> pid, of the latest start of each, by the log."""
        out = {}
        for n, pid in re.findall(r"bankgate: worker (\d+) \(pid (\d+)\) serving", self.text()):
            out[int(n)] = int(pid)
        return out

    def answered_by(self, serials: set[str]) -> dict[str, set[int]]:
        """serial -> the pids of the workers whose log line answered it."""
        out: dict[str, set[int]] = {}
        for pid, serial in re.findall(r"worker \d+ pid (\d+)\] demo-fixed \w+ serial=(\S+)",
                                      self.text()):
            if serial in serials:
                out.setdefault(serial, set()).add(int(pid))
        return out

    def db(self, sql: str, **params) -> list:
        with self.engine.connect() as c:
            return list(c.execute(sa.text(sql), params))

    def paid_total(self) -> int:
        return self.db("SELECT coalesce(sum(paid_amount + late_fee_paid), 0) FROM n8_bill")[0][0]

    # -- the bank ---------------------------------------------------------------------------

    def ask(self, txn: str, values: dict) -> dict:
        """One request on a new connection; ``OSError`` when no answer comes."""
        self.sent += 1
        return ask_fixed(FIXED, self.profile, self.ports["bank"], txn, values, local_now,
                         IO_TIMEOUT)




_serials = itertools.count(1)


def serial() -> str:
    return f"WRK{local_now():%H%M%S}{os.getpid() % 10000:04d}{next(_serials):07d}"


@pytest.fixture(scope="module")
def gw(tmp_path_factory, database_url):
    g = Gateway(tmp_path_factory.mktemp("workers"), database_url)
    g.start()
    try:
        yield g
    finally:
        g.stop()


@pytest.fixture(scope="module")
def customers(gw) -> list[str]:
    """Demo customers owing at least 100 yuan: each takes many 1-yuan payments."""
    out = []
    for n in range(100000001, 100000041):
        a = gw.ask("query", {"customer_no": str(n), "serial": serial()})
        if response_code(a) == "0000" and a["total_due"] + a["late_fee"] >= 100_00:
            out.append(str(n))
    assert len(out) >= 6, out
    return out


# -- a steady load of payments ------------------------------------------------------------


class Load:
    """Payments of :data:`PAYMENT` fen from ``threads`` banks at once, each sent again
    with its serial until it is answered (as a bank does), until :meth:`stop`.  A
    refused connection (nobody listens any more) ends a thread."""

    def __init__(self, gw: Gateway, customers: list[str], threads: int = 3):
        self.gw = gw
        self.customers = itertools.cycle(customers)
        self.lock = threading.Lock()
        self.acked: dict[str, tuple[str, float]] = {}  # serial -> (receipt, when answered)
        self.sent_again: set[str] = set()  # serials sent more than once
        self.refused: list[str] = []  # serials never answered: nobody listened
        self.odd: list[tuple[str, dict]] = []  # answered, but not approved
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(60)
            assert not t.is_alive(), "a load thread did not end"

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def wait_for(self, n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < n:
            assert time.monotonic() < deadline, f"only {self.count()} payments in {timeout} s"
            assert not self.odd, self.odd[:3]
            time.sleep(0.02)

    def _run(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                customer = next(self.customers)
            if not self.pay({"customer_no": customer, "amount": PAYMENT, "serial": serial()}):
                return

    def pay(self, values: dict) -> bool:
        """Send until answered: ``False`` when the gateway refuses connections."""
        deadline = time.monotonic() + 60.0
        attempts = 0
        while True:
            attempts += 1
            try:
                a = self.gw.ask("pay", values)
                break
            except ConnectionRefusedError:
                with self.lock:
                    self.refused.append(values["serial"])
                return False
            except OSError:  # reset, closed, timed out: no answer -- send it again
                with self.lock:
                    self.sent_again.add(values["serial"])
                if time.monotonic() > deadline:
                    raise
        with self.lock:
            if response_code(a) == "0000":
                self.acked[values["serial"]] = (a["receipt_no"], time.monotonic())
            else:
                self.odd.append((values["serial"], a))
        return True


def payments_of(gw: Gateway, serials) -> dict[str, list[tuple]]:
    rows = gw.db("SELECT serial, receipt_no, amount, status FROM bg_payment"
                 " WHERE bank = :bank AND serial LIKE 'WRK%'", bank=BANK)
    out: dict[str, list[tuple]] = {s: [] for s in serials}
    for s, receipt, amount, status in rows:
        out.setdefault(s, []).append((receipt, amount, status))
    return out


def assert_each_acknowledged_payment_stands_once(gw: Gateway, load: Load) -> None:
    rows = payments_of(gw, load.acked)
    for s, (receipt, _) in load.acked.items():
        assert rows[s] == [(receipt, PAYMENT, "POSTED")], (s, rows[s])


def alive(pid: int) -> bool:
    """The process runs (a zombie waiting for its parent to read its end does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def wait_gone(pids, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        assert time.monotonic() < deadline, [p for p in pids if alive(p)]
        time.sleep(0.05)


# -- the tests ----------------------------------------------------------------------------


def test_both_workers_serve_and_the_metrics_add_up_across_them(gw, customers):
    assert sorted(gw.workers()) == [1, 2]
    pids = set(gw.workers().values())
    mine: set[str] = set()
    for _ in range(40):  # the kernel hands each new connection to one of them
        for _ in range(10):
            s = serial()
            mine.add(s)
            assert response_code(gw.ask("query", {"customer_no": customers[0],
                                                  "serial": s})) == "0000"
        gw.wait_log(re.escape(f"serial={s} "))  # the last one's line is written
        answered = set().union(*gw.answered_by(mine).values())
        if answered == pids:
            break
    assert answered == pids, f"only {answered} of {pids} answered {len(mine)} queries"
    # each worker reports its counts once a second; the console sums them
    deadline = time.monotonic() + 15
    while True:
        body = urllib.request.urlopen(
            f"http://127.0.0.1:{gw.ports['metrics']}/metrics", timeout=IO_TIMEOUT).read()
        text = body.decode()
        counted = sum(float(v) for v in re.findall(
            r'^bankgate_requests_total\{bank="demo-fixed",[^}]*\} (\S+)$', text, re.M))
        if counted == gw.sent or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert counted == gw.sent, text
    assert 'bankgate_worker_up{worker="1"} 1.0' in text
    assert 'bankgate_worker_up{worker="2"} 1.0' in text
    assert re.search(r'^bankgate_bank_listening\{bank="demo-fixed"\} 1.0$', text, re.M)


def test_a_worker_killed_under_load_the_other_goes_on_and_each_payment_stands_once(
        gw, customers):
    paid_before = gw.paid_total()
    [(victim_n, victim)] = list(gw.workers().items())[:1]
    survivor = gw.workers()[3 - victim_n]
    with Load(gw, customers) as load:
        load.wait_for(40)
        mark = len(gw.text())
        os.kill(victim, signal.SIGKILL)
        at_kill, killed_at = load.count(), time.monotonic()
        gw.wait_log(rf"worker {victim_n} \(pid {victim}\) was killed by signal 9 \(SIGKILL\);"
                    r" restarting it in 0 s", after=mark)
        restarted = gw.wait_log(rf"bankgate: worker {victim_n} \(pid (\d+)\) serving",
                                after=mark)
        at_restart = load.count()
        load.wait_for(at_restart + 40)  # and on, with the new one
    new_pid = int(restarted.group(1))
    assert new_pid != victim and not alive(victim) and alive(new_pid) and alive(survivor)
    assert f"worker {victim_n} started (pid {new_pid})" in gw.text()[mark:]
    # the load went on while the killed worker was away: the other answered it
    assert at_restart > at_kill, (at_kill, at_restart)
    during = {s for s, (_, t) in load.acked.items() if t > killed_at}
    answered = gw.answered_by(during)
    assert survivor in set().union(*answered.values())
    assert not load.odd and not load.refused
    # every acknowledged payment stands once, and nothing else was posted
    assert_each_acknowledged_payment_stands_once(gw, load)
    rows = payments_of(gw, load.acked)
    assert set(rows) == set(load.acked)
    assert gw.paid_total() - paid_before == PAYMENT * len(load.acked)
    # a bank that sends a payment again gets its first answer, from whichever worker
    again = sorted(load.sent_again | set(sorted(during)[:20]))
    for s in again:
        receipt, _ = load.acked[s]
        a = gw.ask("pay", _values_of(gw, s))  # the same serial and content
        assert response_code(a) == "0000" and a["receipt_no"] == receipt, (s, a)
    assert payments_of(gw, load.acked) == rows
    assert gw.paid_total() - paid_before == PAYMENT * len(load.acked)


def _values_of(gw: Gateway, s: str) -> dict:
    [(customer, amount)] = gw.db("SELECT customer_no, amount FROM bg_payment"
                                 " WHERE bank = :bank AND serial = :s", bank=BANK, s=s)
    return {"customer_no": customer, "amount": amount, "serial": s}


def test_workers_of_a_killed_supervisor_stop_and_free_the_port(tmp_path, database_url):
    other = Gateway(tmp_path, database_url)
    other.start()
    try:
        pids = list(other.workers().values())
        assert len(pids) == 2 and all(alive(p) for p in pids)
        other.process.proc.kill()
        other.process.proc.wait(10)
        wait_gone(pids)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", other.ports["bank"]), timeout=IO_TIMEOUT)
    finally:
        other.stop()


def test_sigterm_under_load_stops_the_workers_then_the_supervisor_losing_nothing(
        gw, customers):
    pids = list(gw.workers().values())
    mark = len(gw.text())
    with Load(gw, customers) as load:
        load.wait_for(30)
        gw.process.proc.send_signal(signal.SIGTERM)
        code = gw.process.proc.wait(30)
    # twistd ends by the signal it stopped on, once it has stopped (as without workers)
    assert code == -signal.SIGTERM, gw.process.tail(60)
    log = gw.text()[mark:]
    assert "bankgate: stopping 2 worker(s)" in log
    for n, pid in gw.workers().items():
        assert f"worker {n} stopped serving" in log
        assert f"worker {n} (pid {pid}) stopped (exited normally)" in log
    assert "killing it" not in log and "not answered" not in log, log
    assert re.search(r"\[bankgate#info\] bankgate: stopped", log)
    assert not any(alive(p) for p in pids)
    assert not load.odd
    assert_each_acknowledged_payment_stands_once(gw, load)
    # a payment the gateway never answered is not posted behind the bank's back
    # unless the ledger had it: whatever stands, stands once
    rows = payments_of(gw, load.refused)
    assert all(len(rows[s]) <= 1 for s in load.refused)
