"""Two gateway nodes on one PostgreSQL database behind HAProxy (``docs/nodes.rst``).

One cluster serves the module: a private PostgreSQL database; node A
(``twistd bankgate`` in a subprocess, which creates the reference N8 and seeds
200 demo customers and demo-fixed's demo invoice stock), then node B on the same
database with a data folder and ports of its own; and HAProxy in TCP mode
(:mod:`bankgate.devtools.haproxy`) with a frontend per bank, checking each node's
``/healthz``.  The bank is a blocking socket speaking the plugins' bank side
(``client_encode`` / ``client_decode``); a payment is encoded once, so a retry
is the same message again, as a bank sends it.

Which node served a request is read from the node's own log (one line per
transaction, with the serial); what was posted, from the database.  The last
test kills node A with SIGKILL, so it runs last; it starts A again at its end.

Needs ``haproxy`` (Debian's package) and the PostgreSQL server; either missing
skips the module with the reason, or fails it under ``BANKGATE_REQUIRE_SERVERS=1``.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from conftest import SERVERS, _reachable
from ledger_helpers import bills, check_books

from bankgate.app.config import load_config
from bankgate.codec.base import Session
from bankgate.codec.registry import load_codec
from bankgate.devtools import haproxy
from bankgate.devtools.gateway import GatewayProcess, free_port
from bankgate.devtools.simulate import response_code
from bankgate.store import model
from bankgate.store.db import Store

KEY = "0123456789ABCDEFFEDCBA9876543210"
KCV = "08D7B4"
TZ = ZoneInfo("Asia/Shanghai")
IO_TIMEOUT = 10.0
OK = {"demo-fixed": "0000", "demo-delim": "000"}
CODECS = {"demo-fixed": load_codec("ref-fixed"), "demo-delim": load_codec("ref-delim")}
DOCS = Path(__file__).resolve().parent.parent / "docs" / "nodes.rst"

NODE_CONFIG = """\
[gateway]
data_dir = "{data}"
timezone = "Asia/Shanghai"

[database]
url = "{url}"

[n8]
create = true
demo_customers = 200

[console]
listen = "tcp:{console}:interface=127.0.0.1"
metrics_listen = "tcp:{health}:interface=127.0.0.1"

[[bank]]
name = "demo-fixed"
plugin = "ref-fixed"
bank_code = "105210"
listen = "tcp:{fixed}:interface=127.0.0.1"
allow = ["127.0.0.0/8"]
policy = "partial"
mac = true
mac_key = "{key}"
mac_key_kcv = "{kcv}"

[bank.options]
invoice = true

[[bank]]
name = "demo-delim"
plugin = "ref-delim"
bank_code = "103210"
listen = "tcp:{delim}:interface=127.0.0.1"
allow = ["127.0.0.0/8"]
policy = "partial"
"""


def local_now() -> datetime:
    return datetime.now(TZ).replace(tzinfo=None)


def _missing(why: str):
    if os.environ.get("BANKGATE_REQUIRE_SERVERS") == "1":
        pytest.fail(why + " (BANKGATE_REQUIRE_SERVERS=1: required here)")
    pytest.skip(why)


# -- the cluster ------------------------------------------------------------------------


class Node:
    """One gateway node: its configuration, ports, data folder and process."""

    def __init__(self, name: str, folder: Path, url: str):
        self.name, self.folder = name, folder
        self.ports = {"demo-fixed": free_port(), "demo-delim": free_port()}
        self.health, self.console = free_port(), free_port()
        self.config = folder / "bankgate.toml"
        folder.mkdir(parents=True)
        self.config.write_text(NODE_CONFIG.format(
            data=(folder / "var").as_posix(), url=url, console=self.console,
            health=self.health, fixed=self.ports["demo-fixed"],
            delim=self.ports["demo-delim"], key=KEY, kcv=KCV))
        self.logs: list[Path] = []
        self.process: GatewayProcess | None = None

    def start(self) -> None:
        log = self.folder / f"gateway-{len(self.logs) + 1}.log"
        self.logs.append(log)
        self.process = GatewayProcess(self.config, [*self.ports.values(), self.health], log,
                                      start_timeout=60.0)
        self.process.start()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def kill(self) -> None:
        """SIGKILL: no goodbye, its open transactions die with its connections."""
        self.process.proc.kill()
        self.process.proc.wait(10)

    def balanced(self) -> haproxy.Node:
        return haproxy.Node(self.name, self.ports, self.health)

    def served(self, serials, log: Path | None = None) -> set[str]:
        """The serials this node logged a transaction for (in ``log``, or any of its logs)."""
        text = "".join(p.read_text(errors="replace") for p in ([log] if log else self.logs)
                       if p.exists())
        return {s for s in serials if f" serial={s} " in text}


class Cluster:
    def __init__(self, folder: Path, url: str):
        self.url = url
        self.a = Node("node-a", folder / "a", url)
        self.b = Node("node-b", folder / "b", url)
        profiles = load_config(self.a.config).banks
        self.profiles = {b.name: b.profile() for b in profiles}
        self.balancer = haproxy.HAProxyProcess(folder / "haproxy", list(CODECS),
                                               [self.a.balanced(), self.b.balanced()])
        self.store = Store(url)  # the test's own look at the database (never started)
        self.customers: list[str] = []

    def payments(self, serials) -> dict[str, list[dict]]:
        p = model.payment
        out: dict[str, list[dict]] = {s: [] for s in serials}
        with self.store.engine.connect() as c:
            for r in c.execute(sa.select(p).where(p.c.serial.in_(list(serials)))).mappings():
                out[r["serial"]].append(dict(r))
        return out


def _database(url: str) -> str:
    """A database of this module's own on the server (not conftest's ``bgtest_<pid>``,
    which other modules of the same run use); dropped by the fixture."""
    name = f"bgnodes_{os.getpid()}"
    u = sa.engine.make_url(url)
    admin = sa.create_engine(u, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        c.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return u.set(database=name).render_as_string(hide_password=False)


def _drop(url: str) -> None:
    u = sa.engine.make_url(url)
    admin = sa.create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(sa.text(f"DROP DATABASE IF EXISTS {u.database} WITH (FORCE)"))
    finally:
        admin.dispose()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if haproxy.find_haproxy() is None:
        _missing(f"haproxy is not installed ({haproxy.HAPROXY}; apt-get install haproxy)")
    server = SERVERS["postgres"]
    why = _reachable(server)
    if why:
        _missing(f"postgres server not reachable at {server}: {why}")
    url = _database(server)
    cl = Cluster(tmp_path_factory.mktemp("nodes"), url)
    try:
        cl.a.start()  # creates the schema and seeds the demo data: alone, first
        cl.b.start()
        cl.store.initial_paid = bills(cl.store)  # what N8 had paid before any payment
        cl.customers = _customers(cl.store)
        cl.balancer.start()
        for node in (cl.a, cl.b):  # both in the rotation, their /healthz answered
            cl.balancer.wait_node(node.name, up=True)
        yield cl
    finally:
        cl.balancer.stop()
        cl.a.stop()
        cl.b.stop()
        cl.store.stop()
        _drop(url)


def _customers(store: Store) -> list[str]:
    """Active demo customers owing at least 500.00 yuan: room for many 1.00 payments."""
    c, b = store.n8["customer"], store.n8["bill"]
    owed = sa.func.sum(b.c.amount - b.c.paid_amount)
    q = (sa.select(b.c.customer_no).join(c, c.c.customer_no == b.c.customer_no)
         .where(c.c.status == "A").group_by(b.c.customer_no).having(owed >= 50000)
         .order_by(b.c.customer_no))
    with store.engine.connect() as conn:
        found = [str(r[0]) for r in conn.execute(q)]
    assert len(found) >= 60, f"only {len(found)} demo customers owe enough"
    return found


# -- a bank, blocking -------------------------------------------------------------------

_serials = itertools.count(1)


def new_serial() -> str:
    return f"N{local_now():%H%M%S}{os.getpid() % 10000:04d}{next(_serials):09d}"


class Link:
    """One bank connection: a frame out, its answer back (blocking, bounded)."""

    def __init__(self, cluster: Cluster, bank: str, port: int):
        self.codec = CODECS[bank]
        self.session = Session(bank=cluster.profiles[bank], now=local_now)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)

    def close(self) -> None:
        self.sock.close()

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
            buf += chunk
        return buf

    def send(self, frame: bytes, part: float = 1.0) -> None:
        """Send ``frame`` with its length prefix (``part``: only that share of it)."""
        size = {"ascii4": 4, "ascii8": 8}[self.codec.framing.kind]
        data = b"%0*d" % (size, len(frame)) + frame
        self.sock.sendall(data[:int(len(data) * part)])

    def exchange(self, frame: bytes) -> dict:
        self.send(frame)
        size = {"ascii4": 4, "ascii8": 8}[self.codec.framing.kind]
        while True:
            n = int(self._read(size))
            if n:  # (a zero length is a keep-alive)
                return self.codec.client_decode(self._read(n), self.session)


def pay_frame(cluster: Cluster, bank: str, customer: str, amount: int, serial: str,
              bill_ids: tuple[str, ...] = ()) -> bytes:
    """A payment as the bank sends it -- encoded once: a retry sends these bytes again."""
    now = local_now()
    session = Session(bank=cluster.profiles[bank], now=local_now)
    values = {"customer_no": customer, "amount": amount, "serial": serial,
              "trade_date": now.date(), "trade_time": now.strftime("%H%M%S")}
    if bill_ids:
        values["bill_ids"] = bill_ids
    return CODECS[bank].client_encode("pay", values, session)


def ask(cluster: Cluster, bank: str, port: int, txn: str, values: dict) -> dict:
    """One request on a connection of its own."""
    link = Link(cluster, bank, port)
    try:
        session = Session(bank=cluster.profiles[bank], now=local_now)
        return link.exchange(CODECS[bank].client_encode(txn, values, session))
    finally:
        link.close()


def pay_once(cluster: Cluster, bank: str, port: int, customer: str,
             amount: int = 100) -> tuple[str, int, dict]:
    """One payment on a connection of its own: (serial, amount, answer).  ref-delim
    pays named bills: the customer's first bill, as node A's query states it."""
    serial, bill_ids = new_serial(), ()
    if bank == "demo-delim":
        q = ask(cluster, bank, cluster.a.ports[bank], "query",
                {"customer_no": customer, "serial": new_serial()})
        assert response_code(q) == OK[bank] and q["bills"], q
        first = q["bills"][0]
        amount, bill_ids = first["amount"] + first["late_fee"], (first["bill_id"],)
    link = Link(cluster, bank, port)
    try:
        frame = pay_frame(cluster, bank, customer, amount, serial, bill_ids)
        return serial, amount, link.exchange(frame)
    finally:
        link.close()


def ask_again(cluster: Cluster, bank: str, frame: bytes) -> dict:
    """``frame`` sent again on a new connection through the balancer."""
    link = Link(cluster, bank, cluster.balancer.ports[bank])
    try:
        return link.exchange(frame)
    finally:
        link.close()


def wait_for(ready, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():  # an event wait, bounded
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)


def assert_once(cluster: Cluster, acked: dict[str, tuple[str, int]]) -> None:
    """Every acknowledged payment is in the books exactly once, as acknowledged."""
    rows = cluster.payments(acked)
    for serial, (receipt, amount) in acked.items():
        got = [(r["receipt_no"], r["amount"], r["status"]) for r in rows[serial]]
        assert got == [(receipt, amount, "POSTED")], f"payment {serial}: {got}"


# -- the configuration in the docs is the one the tests use ---------------------------


def _docs_block(marker: str) -> str:
    """The code block after the rst comment ``marker`` in docs/nodes.rst, dedented."""
    lines = DOCS.read_text().splitlines()
    at = lines.index(marker) + 1
    while not lines[at].startswith(".. code-block::"):
        at += 1
    block = []
    for line in lines[at + 1:]:
        if line and not line.startswith("   "):
            break
        block.append(line[3:])
    return "\n".join(block).strip("\n") + "\n"


DOCS_NODES = [haproxy.Node("node-a", {"demo-fixed": 9101, "demo-delim": 9102}, 9190,
                           host="10.0.0.11"),
              haproxy.Node("node-b", {"demo-fixed": 9101, "demo-delim": 9102}, 9190,
                           host="10.0.0.12")]
DOCS_ARGS = dict(bind="0.0.0.0", admin="/run/haproxy/bankgate.sock",
                 log="/dev/log local0")


def test_docs_show_the_configuration_the_helper_writes():
    text = haproxy.config({"demo-fixed": 9101, "demo-delim": 9102}, DOCS_NODES, **DOCS_ARGS)
    assert _docs_block(".. haproxy-example") == text


def test_docs_node_configuration_is_valid_and_matches_the_balancer(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text(_docs_block(".. node-config-example"))
    cfg = load_config(path)
    node = DOCS_NODES[0]
    assert cfg.console.metrics_listen == f"tcp:{node.health_port}"
    assert {b.name: b.listen for b in cfg.banks} == {
        bank: [f"tcp:{port}"] for bank, port in node.ports.items()}


def test_haproxy_accepts_the_configuration(tmp_path):
    binary = haproxy.find_haproxy()
    if binary is None:
        _missing(f"haproxy is not installed ({haproxy.HAPROXY}; apt-get install haproxy)")
    path = tmp_path / "haproxy.cfg"
    path.write_text(haproxy.config({"demo-fixed": 9101, "demo-delim": 9102}, DOCS_NODES,
                                   **DOCS_ARGS))
    done = subprocess.run([binary, "-c", "-f", str(path)], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Configuration file is valid" in done.stdout + done.stderr


@pytest.mark.parametrize("change,field", [
    (dict(frontends={}), "frontends"),
    (dict(frontends={"demo-fixed": 0}), "frontends['demo-fixed']"),
    (dict(frontends={"demo fixed": 9101}), "frontends"),
    (dict(nodes=[]), "nodes"),
    (dict(nodes=[haproxy.Node("a", {}, 9190)]), "nodes[0].ports"),
    (dict(nodes=[haproxy.Node("a", {"demo-fixed": 1}, 9190)] * 2), "nodes[1].name"),
    (dict(nodes=[haproxy.Node("a", {"demo-fixed": 1}, 70000)]), "nodes[0].health_port"),
    (dict(balance="random"), "balance"),
    (dict(idle="five minutes"), "idle"),
])
def test_config_refuses_bad_input_naming_the_field(change, field):
    args = dict(frontends={"demo-fixed": 9101},
                nodes=[haproxy.Node("a", {"demo-fixed": 1}, 9190)])
    args.update(change)
    with pytest.raises(ValueError) as e:
        haproxy.config(args.pop("frontends"), args.pop("nodes"), **args)
    assert str(e.value).startswith(field + ":"), e.value


# -- (a) the balancer spreads payments over both nodes ----------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("bank", ["demo-fixed", "demo-delim"])
def test_payments_spread_over_both_nodes(cluster, bank):
    acked = {}
    # ref-delim pays a bill whole: customers of its own, from the end of the list
    customers = cluster.customers[:10] if bank == "demo-fixed" else cluster.customers[-10:]
    for customer in customers:  # a connection each: round robin alternates the nodes
        serial, amount, answer = pay_once(cluster, bank, cluster.balancer.ports[bank],
                                          customer)
        assert response_code(answer) == OK[bank], answer
        acked[serial] = (answer["receipt_no"], amount)
    wait_for(lambda: len(cluster.a.served(acked) | cluster.b.served(acked)) == len(acked),
             "every payment in a node's log")
    on_a, on_b = cluster.a.served(acked), cluster.b.served(acked)
    assert on_a and on_b, f"node A served {len(on_a)}, node B {len(on_b)}"
    assert not on_a & on_b  # each payment was sent once, to one node
    assert_once(cluster, acked)
    picked = {sv: int(r["lbtot"]) for (px, sv), r in cluster.balancer.servers().items()
              if px == f"{bank}-nodes"}
    assert picked["node-a"] > 0 and picked["node-b"] > 0, picked


# -- (b) the same payment to both nodes at once posts once ------------------------------


@pytest.mark.e2e
def test_same_payment_to_both_nodes_at_once_posts_once(cluster):
    bank = "demo-fixed"
    links = [Link(cluster, bank, cluster.a.ports[bank]), Link(cluster, bank, cluster.b.ports[bank])]
    acked = {}
    try:
        with ThreadPoolExecutor(2) as pool:
            for i in range(50):
                serial = new_serial()
                frame = pay_frame(cluster, bank, cluster.customers[i % 20], 100 + i, serial)
                start = threading.Barrier(2, timeout=IO_TIMEOUT)

                def send(link, frame=frame, start=start):
                    start.wait()  # both leave together
                    return link.exchange(frame)

                first, second = (f.result(IO_TIMEOUT * 2)
                                 for f in [pool.submit(send, link) for link in links])
                assert response_code(first) == response_code(second) == "0000", (first, second)
                for k in ("receipt_no", "amount", "invoice_no", "remaining_due"):
                    assert first.get(k) == second.get(k), (k, first, second)
                acked[serial] = (first["receipt_no"], 100 + i)
    finally:
        for link in links:
            link.close()
    assert_once(cluster, acked)
    j = model.journal
    with cluster.store.engine.connect() as c:
        journaled = c.execute(sa.select(j.c.serial, sa.func.count()).where(
            j.c.serial.in_(list(acked))).group_by(j.c.serial)).all()
    assert sorted(journaled) == sorted((s, 1) for s in acked)
    check_books(cluster.store)


# -- (c) a node dies under load behind the balancer ----------------------------------------


class Teller(threading.Thread):
    """A bank's teller: payments one after another on one connection through the
    balancer.  A payment that gets no answer is sent again -- the same message --
    on a new connection until it is answered, as banks do."""

    def __init__(self, cluster: Cluster, customers: list[str], stop: threading.Event,
                 deadline: float):
        super().__init__(daemon=True)
        self.cluster, self.customers, self.stop, self.deadline = (cluster, customers, stop,
                                                                  deadline)
        self.port = cluster.balancer.ports["demo-fixed"]
        self.sent: list[str] = []
        self.acked: dict[str, tuple[str, int]] = {}
        self.retried: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        link = None
        try:
            for n in itertools.count():
                if self.stop.is_set():
                    return
                serial = new_serial()
                amount = 100 + n % 50
                frame = pay_frame(self.cluster, "demo-fixed", self.customers[n % len(
                    self.customers)], amount, serial)
                self.sent.append(serial)
                tries = 0
                while True:
                    try:
                        if link is None:
                            link = Link(self.cluster, "demo-fixed", self.port)
                        answer = link.exchange(frame)
                        break
                    except (OSError, ValueError) as e:  # reset, closed, timed out
                        if link is not None:
                            link.close()
                            link = None
                        tries += 1
                        if time.monotonic() > self.deadline:
                            raise AssertionError(
                                f"{serial}: no answer in {tries} tries: {e}") from e
                if tries:
                    self.retried.append(serial)
                assert response_code(answer) == "0000", (serial, answer)
                self.acked[serial] = (answer["receipt_no"], amount)
        except BaseException as e:  # noqa: BLE001 -- reported by the test
            self.error = e
        finally:
            if link is not None:
                link.close()


@pytest.mark.e2e
def test_kill_a_node_under_load_the_retries_land_on_the_other(cluster):
    stop = threading.Event()
    deadline = time.monotonic() + 120
    tellers = [Teller(cluster, cluster.customers[20 + 5 * k: 25 + 5 * k], stop, deadline)
               for k in range(4)]

    def acked() -> dict[str, tuple[str, int]]:
        return {s: v for t in tellers for s, v in list(t.acked.items())}

    def failed() -> bool:
        return any(t.error for t in tellers)

    for t in tellers:
        t.start()
    try:
        wait_for(lambda: failed() or (len(acked()) >= 30 and cluster.a.served(acked())
                                      and cluster.b.served(acked())),
                 "both nodes serving the load", 60)
        # two payments whose answers node A will never give: one it posted (the bank's
        # connection is gone before the answer), one it got only half of
        bank, node_a = "demo-fixed", cluster.a.ports["demo-fixed"]
        lost, half = new_serial(), new_serial()
        frames = {lost: pay_frame(cluster, bank, cluster.customers[45], 4500, lost),
                  half: pay_frame(cluster, bank, cluster.customers[46], 4600, half)}
        gone = Link(cluster, bank, node_a)
        gone.send(frames[lost])
        gone.close()
        wait_for(lambda: cluster.payments([lost])[lost], "node A posting the lost answer's"
                 " payment", 10)
        [first] = cluster.payments([lost])[lost]
        cut = Link(cluster, bank, node_a)
        cut.send(frames[half], part=0.5)
        before_kill = set(acked())
        cluster.a.kill()
        cut.close()
        # a teller cut off by the kill may have its retry answered by B already
        at_kill = set(acked())
        wait_for(lambda: failed() or len(acked()) >= len(at_kill) + 40,
                 "the load going on after node A died", 60)
    finally:
        stop.set()
        for t in tellers:
            t.join(IO_TIMEOUT * 3)
    errors = [t.error for t in tellers if t.error]
    assert not errors, errors
    assert not any(t.is_alive() for t in tellers)
    done = acked()
    # every payment a teller sent was acknowledged in the end
    assert sorted(s for t in tellers for s in t.sent) == sorted(done)
    # the bank sends both again, through the balancer: node B gives the first answer
    # of the one A posted, and posts the one A never read
    assert cluster.payments([half])[half] == []
    again = {s: ask_again(cluster, bank, frames[s]) for s in (lost, half)}
    assert [response_code(a) for a in again.values()] == ["0000", "0000"], again
    assert (again[lost]["receipt_no"], again[lost]["amount"]) == (first["receipt_no"], 4500)
    assert again[half]["receipt_no"] != first["receipt_no"]
    wait_for(lambda: cluster.b.served([lost, half]) == {lost, half}, "node B's log lines", 10)
    done.update({lost: (first["receipt_no"], 4500), half: (again[half]["receipt_no"], 4600)})
    retried = [s for t in tellers for s in t.retried]
    assert retried, "no teller lost its connection: none was on node A"
    # each retry was answered once the kill had begun, and by node B; after the kill,
    # node B answered everything
    assert set(retried) <= set(done) - before_kill
    after = set(done) - at_kill
    wait_for(lambda: cluster.b.served(after | set(retried)) == after | set(retried),
             "node B's log lines", 10)
    # every acknowledged payment stands once, as acknowledged
    assert_once(cluster, done)
    p = model.payment
    with cluster.store.engine.connect() as c:
        dup_invoices = c.execute(
            sa.select(model.invoice.c.invoice_no).group_by(model.invoice.c.invoice_no)
            .having(sa.func.count() > 1)).all()
        numbers = c.execute(sa.select(p.c.invoice_no).where(
            p.c.serial.in_(list(done)))).scalars().all()
    assert dup_invoices == []  # no invoice number given twice across the nodes
    assert all(numbers) and len(set(numbers)) == len(numbers)
    check_books(cluster.store)  # the books balance

    # node A comes back: HAProxy puts it in the rotation again after one good check
    cluster.a.start()
    cluster.balancer.wait_node("node-a", up=True)
    back = {}
    for i in range(4):  # round robin: two new connections reach both nodes
        serial, amount, answer = pay_once(cluster, "demo-fixed",
                                          cluster.balancer.ports["demo-fixed"],
                                          cluster.customers[i])
        assert response_code(answer) == "0000", answer
        back[serial] = (answer["receipt_no"], amount)
    wait_for(lambda: cluster.a.served(back, cluster.a.logs[-1]), "node A serving again", 10)
    assert_once(cluster, back)
