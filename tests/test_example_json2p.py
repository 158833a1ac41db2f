"""docs/examples/plugins/example_json2p.py, the SDK's worked example, against a real ledger.

The plugin is loaded from its folder through the registry, as a gateway with
``plugin_dirs = ["docs/examples/plugins"]`` loads it.  Each test drives it as
the engine does -- ``decode``, ``ledger.handle``, the dispatch's ``encode`` --
with the bank side's own ``client_encode`` / ``client_decode``, on a SQLite
file and an injected clock; "restart" is a new Store and Ledger over the same
file.  The last test runs a gateway over real TCP with the plugin.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import NOW, TODAY, FakeClock, make_store, seed_fixture
from ledger_helpers import bills, check_books, count

from bankgate.codec.base import BankKeys, BankProfile, Dispatch, Reply, Session
from bankgate.codec.check import check_plugin_file
from bankgate.codec.registry import load_codec, load_file
from bankgate.domain.ledger import BankPolicy, Ledger
from bankgate.store import model
from bankgate.store.db import Store
from bankgate.store.n8 import N8Mapping

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DIR = ROOT / "docs" / "examples" / "plugins"
PLUGIN_FILE = PLUGIN_DIR / "example_json2p.py"
CODEC = load_file(PLUGIN_FILE).CODEC  # as the registry loads a file of gateway.plugin_dirs

KEY = bytes.fromhex("6a736f6e2d74776f2d70686173652d6578616d706c652d6b6579")  # 26 bytes
BANK, CODE = "json", "309210"
TIMEOUT = 600  # the plugin's bank_defaults confirm_timeout
A, B = "100000123", "100000200"  # customers with bills due (tests/conftest.py)


class Gate:
    """The plugin, a ledger on a SQLite file and a clock: values in, the decoded answer out."""

    def __init__(self, tmp_path):
        self.clock = FakeClock(NOW)
        self.store = make_store("sqlite", tmp_path)
        seed_fixture(self.store)
        self.store.initial_paid = bills(self.store)
        self.url = str(self.store.engine.url)
        self.ledger = self._ledger()
        profile = BankProfile(name=BANK, plugin=CODEC.name, bank_code=CODE,
                              keys=BankKeys(sign_key=KEY), two_phase=True,
                              confirm_timeout=TIMEOUT)
        self.session = Session(bank=profile, peer_host="127.0.0.1", now=self.clock)

    def _ledger(self) -> Ledger:
        policy = BankPolicy(BANK, CODE, policy="exact", two_phase=True, confirm_timeout=TIMEOUT)
        return Ledger(self.store, {BANK: policy}, now=self.clock)

    def restart(self) -> None:
        """A new store and ledger over the same database: nothing kept in memory."""
        initial = self.store.initial_paid
        self.store.stop()
        self.store = Store(self.url, N8Mapping(), threads=2)
        self.store.initial_paid = initial
        self.ledger = self._ledger()

    def frame(self, frame: bytes) -> bytes:
        action = CODEC.decode(frame, self.session)
        if isinstance(action, Dispatch):
            return action.encode(self.ledger.handle(action.request))
        assert isinstance(action, Reply), action
        return action.frame

    def send(self, txn: str, **values) -> dict:
        out = CODEC.client_decode(self.frame(CODEC.client_encode(txn, values, self.session)),
                                  self.session)
        assert out["sign_ok"], out
        return out

    def due(self, customer: str) -> int:
        q = self.send("query", customer_no=customer)
        return q["total_due"] + q["late_fee"] if q["resp_code"] == "0000" else 0

    def prepay(self, serial: str, customer: str = A) -> dict:
        answer = self.send("prepay", serial=serial, customer_no=customer,
                           amount=self.due(customer))
        assert answer["resp_code"] == "0000", answer
        return answer

    def status(self, serial: str, **values) -> str:
        answer = self.send("status", orig_serial=serial, **values)
        assert answer["resp_code"] == "0000", answer
        return answer["status"]

    def settle(self, txn: str, serial: str, orig: str, order_no: str, **values) -> dict:
        return self.send(txn, serial=serial, orig_serial=orig, order_no=order_no, **values)


@pytest.fixture
def gate(tmp_path):
    g = Gate(tmp_path)
    yield g
    g.store.stop()


def test_prepay_answers_order_and_deadline(gate):
    due = gate.due(A)
    p = gate.prepay("S1")
    assert p["amount"] == due and p["order_no"]
    assert p["expires_at"] == NOW + timedelta(seconds=TIMEOUT)
    assert gate.status("S1") == "PENDING"
    assert gate.due(A) == 0  # the bills are settled at once, pending the confirm
    check_books(gate.store)


def test_confirm_after_restart(gate):
    p = gate.prepay("S1")
    paid = bills(gate.store)
    gate.restart()
    wrong = gate.settle("confirm", "C1", "S1", "R-NOT-THIS-ONE")
    assert wrong["resp_code"] == "2002"
    assert gate.status("S1") == "PENDING"
    c = gate.settle("confirm", "C2", "S1", p["order_no"])
    assert c["resp_code"] == "0000"
    assert (c["order_no"], c["amount"]) == (p["order_no"], p["amount"])
    gate.restart()
    assert gate.status("S1") == "POSTED"
    assert bills(gate.store) == paid
    again = gate.settle("confirm", "C3", "S1", p["order_no"])  # confirmed: the same answer
    assert (again["resp_code"], again["order_no"]) == ("0000", p["order_no"])
    assert gate.settle("cancel", "X1", "S1", p["order_no"])["resp_code"] == "2003"
    assert gate.status("S1") == "POSTED"
    check_books(gate.store)


def test_cancel_opens_the_bills_again(gate):
    before = bills(gate.store)
    p = gate.prepay("S1")
    gate.restart()
    c = gate.settle("cancel", "X1", "S1", p["order_no"])
    assert (c["resp_code"], c["order_no"], c["amount"]) == ("0000", p["order_no"], p["amount"])
    assert gate.status("S1") == "CANCELLED"
    assert bills(gate.store) == before
    assert gate.due(A) == p["amount"]
    assert gate.settle("cancel", "X2", "S1", p["order_no"])["resp_code"] == "0000"  # idempotent
    assert gate.settle("confirm", "C1", "S1", p["order_no"])["resp_code"] == "2003"
    assert gate.send("reverse", serial="R1", orig_serial="S1",
                     amount=p["amount"])["resp_code"] == "2003"
    assert gate.status("S1") == "CANCELLED"
    check_books(gate.store)


@pytest.mark.parametrize("before_deadline", [timedelta(seconds=1), timedelta(0)])
def test_confirm_at_the_deadline(gate, before_deadline):
    before = bills(gate.store)
    p = gate.prepay("S1")
    gate.clock.now = p["expires_at"] - before_deadline
    c = gate.settle("confirm", "C1", "S1", p["order_no"])
    if before_deadline:
        assert c["resp_code"] == "0000"
        assert gate.status("S1") == "POSTED"
        assert bills(gate.store) != before
    else:  # at the deadline: refused and undone, swept or not
        assert c["resp_code"] == "2004"
        assert gate.status("S1") == "EXPIRED"
        assert bills(gate.store) == before
        assert gate.settle("cancel", "X1", "S1", p["order_no"])["resp_code"] == "2004"
        gate.restart()
        assert gate.settle("confirm", "C2", "S1", p["order_no"])["resp_code"] == "2004"
    check_books(gate.store)


def test_retries_and_mismatches(gate):
    p = gate.prepay("S1")
    again = gate.send("prepay", serial="S1", customer_no=A, amount=p["amount"])
    assert (again["resp_code"], again["order_no"]) == ("0000", p["order_no"])
    other = gate.send("prepay", serial="S1", customer_no=A, amount=p["amount"] + 1)
    assert other["resp_code"] == "2001"
    c = gate.settle("confirm", "C1", "S1", p["order_no"])
    gate.restart()
    assert gate.settle("confirm", "C1", "S1", p["order_no"]) == c  # the first answer
    # the same confirm serial with another body: a mismatch, whatever the body says
    assert gate.settle("confirm", "C1", "S2", p["order_no"])["resp_code"] == "2001"
    assert gate.settle("confirm", "C2", "S1", "R-WRONG")["resp_code"] == "2002"
    assert gate.settle("confirm", "C3", "S-UNKNOWN", p["order_no"])["resp_code"] == "2002"
    yesterday = TODAY - timedelta(days=1)
    assert gate.settle("confirm", "C4", "S1", p["order_no"],
                       orig_date=yesterday)["resp_code"] == "2002"
    assert gate.status("S1") == "POSTED"
    check_books(gate.store)


def test_status_in_every_state(gate):
    assert gate.status("S-NONE") == "NOT_FOUND"
    p1 = gate.prepay("S1")
    assert gate.status("S1") == "PENDING"
    gate.settle("confirm", "C1", "S1", p1["order_no"])
    assert gate.status("S1") == "POSTED"
    assert gate.send("reverse", serial="R1", orig_serial="S1",
                     amount=p1["amount"])["resp_code"] == "0000"
    assert gate.status("S1") == "REVERSED"
    p2 = gate.prepay("S2")  # the reversal opened the bills again
    gate.settle("cancel", "X1", "S2", p2["order_no"])
    assert gate.status("S2") == "CANCELLED"
    p3 = gate.prepay("S3", customer=B)
    gate.clock.now = p3["expires_at"]
    assert gate.status("S3") == "EXPIRED"  # before the sweeper ran
    gate.restart()
    assert gate.ledger.expire_pending() == 1
    assert gate.status("S3") == "EXPIRED"
    answer = gate.send("status", orig_serial="S1")
    assert (answer["order_no"], answer["amount"]) == (p1["order_no"], p1["amount"])
    check_books(gate.store)


def test_reverse_of_a_pending_prepay_is_refused(gate):
    p = gate.prepay("S1")
    answer = gate.send("reverse", serial="R1", orig_serial="S1", amount=p["amount"])
    assert answer["resp_code"] == "2003"
    assert gate.status("S1") == "PENDING"


@pytest.mark.parametrize("how", ["zeros", "tampered", "missing", "other key"])
def test_bad_signature_refused_and_nothing_changed(gate, how):
    before = bills(gate.store)
    journal = count(gate.store, model.journal)
    values = dict(serial="S1", customer_no=A, amount=gate.due(A))
    if how == "zeros":
        values["sign"] = "0" * 64
    frame = CODEC.client_encode("prepay", values, gate.session)
    if how == "tampered":
        frame = frame.replace(b'"customer_no":"100000123"', b'"customer_no":"100000200"')
    elif how == "missing":
        frame = frame[:frame.index(b',"sign"')] + frame[frame.index(b',"trade_date"'):]
    elif how == "other key":
        other = Session(bank=BankProfile(name=BANK, plugin=CODEC.name, bank_code=CODE,
                                         keys=BankKeys(sign_key=b"k" * 32)), now=gate.clock)
        frame = CODEC.client_encode("prepay", values, other)
    answer = CODEC.client_decode(gate.frame(frame), gate.session)
    assert (answer["resp_code"], answer["sign_ok"]) == ("9002", True)
    assert "body" not in answer and "order_no" not in answer
    assert bills(gate.store) == before
    assert count(gate.store, model.journal) == journal
    assert gate.status("S1") == "NOT_FOUND"


def test_not_authorised_answer_is_unsigned(gate):
    other = Session(bank=BankProfile(name=BANK, plugin=CODEC.name, bank_code="999999",
                                     keys=BankKeys(sign_key=KEY)), now=gate.clock)
    frame = CODEC.client_encode("query", dict(customer_no=A), other)
    raw = gate.frame(frame)
    assert b'"sign"' not in raw
    assert CODEC.client_decode(raw, gate.session)["resp_code"] == "9004"


def test_found_through_plugin_dirs():
    assert load_codec("example-json2p", [PLUGIN_DIR]) is CODEC


def test_plugins_check_passes():
    lines = check_plugin_file(PLUGIN_FILE)
    assert not [ln for ln in lines if ln.startswith("FAIL")], lines
    assert any(ln.startswith("ok    key sign_key: a secret") for ln in lines)
    assert any("prepay" in ln and "confirm" in ln for ln in lines if "simulator" in ln)
    done = subprocess.run([sys.executable, "-m", "bankgate", "plugins", "check",
                           str(PLUGIN_FILE)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout


def test_plugin_is_short_and_keeps_no_state():
    source = PLUGIN_FILE.read_text(encoding="utf-8")
    assert len(source.splitlines()) < 200
    assert "session.state" not in source and "global " not in source


# -- over real TCP ---------------------------------------------------------------------

CONFIG = """\
[gateway]
data_dir = "{data}"
timezone = "Asia/Shanghai"
plugin_dirs = ["{plugins}"]

[database]
url = "sqlite:///{data}/bankgate.db"

[n8]
create = true
demo_customers = 50

[[bank]]
name = "demo-json"
plugin = "example-json2p"
bank_code = "309210"
listen = "tcp:{port}:interface=127.0.0.1"
allow = ["127.0.0.0/8"]
policy = "exact"

[bank.keys]
sign_key = "{key}"
"""


def _exchange(sock: socket.socket, frame: bytes) -> bytes:
    sock.sendall(b"%04d" % len(frame) + frame)
    data = b""
    while len(data) < 4 or len(data) < 4 + int(data[:4]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        data += chunk
    return data[4:]


@pytest.mark.e2e
def test_end_to_end_over_tcp(tmp_path):
    from zoneinfo import ZoneInfo

    from bankgate.app.config import check_plugins, load_config
    from bankgate.devtools.gateway import GatewayProcess, free_port

    port = free_port()
    config = tmp_path / "bankgate.toml"
    config.write_text(CONFIG.format(data=tmp_path.as_posix(), plugins=PLUGIN_DIR.as_posix(),
                                    port=port, key=KEY.hex().upper()))
    cfg = load_config(config)
    check_plugins(cfg)  # as the service start does: the plugin's bank_defaults settle in
    profile = cfg.banks[0].profile()
    assert profile.confirm_timeout == TIMEOUT and profile.two_phase  # the plugin's defaults
    tz = ZoneInfo("Asia/Shanghai")
    session = Session(bank=profile, now=lambda: datetime.now(tz).replace(tzinfo=None))
    gw = GatewayProcess(config, [port], tmp_path / "gateway.log", start_timeout=30.0)
    gw.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            def send(txn, **values):
                raw = _exchange(s, CODEC.client_encode(txn, values, session))
                out = CODEC.client_decode(raw, session)
                assert out["sign_ok"], out
                return out

            assert send("echo")["resp_code"] == "0000"
            payable = [f"{n:09d}" for n in range(100000001, 100000051)
                       if send("query", customer_no=f"{n:09d}")["resp_code"] == "0000"]
            customer, other = payable[:2]
            q = send("query", customer_no=customer)
            p = send("prepay", serial="E2E-S1", customer_no=customer,
                     amount=q["total_due"] + q["late_fee"])
            assert p["resp_code"] == "0000", p
            left = (p["expires_at"] - session.now()).total_seconds()
            assert TIMEOUT - 60 < left <= TIMEOUT  # the gateway took the plugin's default
            assert send("status", orig_serial="E2E-S1")["status"] == "PENDING"
            c = send("confirm", serial="E2E-C1", orig_serial="E2E-S1", order_no=p["order_no"])
            assert (c["resp_code"], c["order_no"]) == ("0000", p["order_no"])
            assert send("status", orig_serial="E2E-S1")["status"] == "POSTED"
            assert send("prepay", serial="E2E-S1", customer_no=customer,
                        amount=1)["resp_code"] == "2001"
            bad = CODEC.client_encode("query", dict(customer_no=customer, sign="0" * 64),
                                      session)
            assert CODEC.client_decode(_exchange(s, bad), session)["resp_code"] == "9002"
        done = subprocess.run(  # the simulator: prepay, then confirm, as the traits say
            [sys.executable, "-m", "bankgate.app.cli", "--config", str(config), "simulate",
             "--bank", "demo-json", "pay", other],
            cwd=ROOT, env=gw.env(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "confirm" in done.stdout and "approved" in done.stdout, done.stdout
        assert KEY.hex().upper() not in done.stdout.upper()
    except BaseException:
        print(gw.tail(60))
        raise
    finally:
        gw.stop()
