"""End to end for ``ref-xml``: ``twistd bankgate`` in a subprocess, a ``demo-xml``
bank over real loopback TCP (one request per connection, as the spec says).

The bank's side is the plugin's own ``client_encode`` / ``client_decode``;
the database file is read directly to check what changed.
"""

from __future__ import annotations

import itertools
import socket
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bankgate.app.config import load_config
from bankgate.codec.base import Session
from bankgate.codec.crypto import sm4_mac
from bankgate.codec.registry import load_file, shipped_dir
from bankgate.devtools.gateway import GatewayProcess, free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
KEY = "0123456789ABCDEFFEDCBA9876543210"
TZ = ZoneInfo("Asia/Shanghai")
IO_TIMEOUT = 10.0
CODEC = load_file(shipped_dir() / "ref_xml.py").CODEC

CONFIG = """\
[gateway]
data_dir = "{data}"
timezone = "Asia/Shanghai"

[database]
url = "sqlite:///{data}/bankgate.db"

[n8]
create = true
demo_customers = 60

[[bank]]
name = "demo-xml"
plugin = "ref-xml"
bank_code = "301210"
listen = "tcp:{port}:interface=127.0.0.1"
allow = ["127.0.0.0/8"]
policy = "exact"
mac = true
mac_key = "{key}"
mac_key_kcv = "2677F4"
confirm_timeout = 600
"""


def local_now() -> datetime:
    return datetime.now(TZ).replace(tzinfo=None)


class Gateway:
    def __init__(self, data: Path):
        self.port = free_port()
        self.config = data / "bankgate.toml"
        self.config.write_text(CONFIG.format(data=data.as_posix(), port=self.port, key=KEY))
        self.db = data / "bankgate.db"
        cfg = load_config(self.config)
        self.session = Session(bank=cfg.bank("demo-xml").profile(), now=local_now)
        self.process = GatewayProcess(self.config, [self.port], data / "gateway.log")

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=IO_TIMEOUT)

    def exchange(self, data: bytes) -> bytes | None:
        """Send ``data`` on a new connection; the answer's document (``None`` when
        the gateway closes without one).  Asserts the connection is closed after."""
        with self.connect() as s:
            s.sendall(data)
            buf = b""
            while chunk := s.recv(65536):
                buf += chunk
        if not buf:
            return None
        assert int(buf[:6]) == len(buf) - 6, buf
        return buf[6:]

    def ask(self, txn: str, **values) -> dict:
        frame = CODEC.client_encode(txn, values, self.session)
        answer = self.exchange(b"%06d" % len(frame) + frame)
        assert answer is not None, f"no answer to {txn}:\n{self.process.tail()}"
        out = CODEC.client_decode(answer, self.session)
        assert out["mac_ok"], out
        return out

    def payment(self, serial: str) -> list[tuple]:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute("SELECT receipt_no, amount, status FROM bg_payment WHERE"
                                " bank = 'demo-xml' AND serial = ?", (serial,)).fetchall()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    g = Gateway(tmp_path_factory.mktemp("gateway-xml"))
    g.process.start()
    try:
        yield g
    finally:
        g.process.stop()


_serials = itertools.count(1)
_customers = iter(range(100000001, 100000061))


def serial() -> str:
    return f"X{local_now():%H%M%S}{next(_serials):06d}"


def due_customer(gw: Gateway) -> tuple[str, int]:
    for n in _customers:
        q = gw.ask("query", customer_no=str(n), serial=serial())
        if q["resp_code"] == "0000":
            assert q["bill_count"] == len(q["bills"]) or q["bill_count"] > 20
            return str(n), q["total_due"]
    raise AssertionError("no demo customer with something due")


def test_echo_and_query(gw):
    assert gw.ask("echo", serial=serial())["resp_code"] == "0000"
    assert gw.ask("query", customer_no="999999999", serial=serial())["resp_code"] == "1001"
    customer, due = due_customer(gw)
    assert due > 0


def test_prepay_confirm_reverse(gw):
    customer, due = due_customer(gw)
    s = serial()
    p = gw.ask("prepay", serial=s, customer_no=customer, amount=due)
    assert p["resp_code"] == "0000" and len(p["order_no"]) == 20
    assert gw.payment(s) == [(p["order_no"], due, "PENDING")]
    assert gw.ask("status", serial=serial(), orig_serial=s)["status"] == "1"
    c = gw.ask("confirm", serial=serial(), orig_serial=s, order_no=p["order_no"])
    assert c["resp_code"] == "0000" and c["receipt_no"] == p["order_no"]
    assert gw.payment(s) == [(p["order_no"], due, "POSTED")]
    assert gw.ask("cancel", serial=serial(), orig_serial=s,
                  order_no=p["order_no"])["resp_code"] == "2003"
    r = gw.ask("reverse", serial=serial(), orig_serial=s, amount=due)
    assert r["resp_code"] == "0000"
    assert gw.ask("status", serial=serial(), orig_serial=s)["status"] == "5"
    assert gw.payment(s)[0][2] == "REVERSED"


def test_prepay_cancel_and_retry(gw):
    customer, due = due_customer(gw)
    s = serial()
    first = gw.ask("prepay", serial=s, customer_no=customer, amount=due)
    again = gw.ask("prepay", serial=s, customer_no=customer, amount=due)
    assert again == {**first, "trade_time": again["trade_time"], "mac": again["mac"]}
    assert gw.ask("prepay", serial=s, customer_no=customer,
                  amount=due + 1)["resp_code"] == "2001"
    cancel = gw.ask("cancel", serial=serial(), orig_serial=s, order_no=first["order_no"])
    assert cancel["resp_code"] == "0000"
    assert gw.ask("status", serial=serial(), orig_serial=s)["status"] == "3"
    assert gw.ask("confirm", serial=serial(), orig_serial=s,
                  order_no=first["order_no"])["resp_code"] == "2003"
    assert gw.payment(s)[0][2] == "CANCELLED"


def test_hostile_and_broken_frames(gw):
    mab = (b'<?xml version="1.0" encoding="GBK"?><!DOCTYPE ROOT [<!ENTITY x SYSTEM '
           b'"file:///etc/passwd">]><ROOT><HEAD><TxCode>3001</TxCode><BankCode>301210'
           b'</BankCode><TxDate>20261205</TxDate><TxTime>101500</TxTime><BankSeq>B1</BankSeq>'
           b'</HEAD><BODY><CustNo>&x;</CustNo></BODY>')
    doc = mab + f"<MAC>{sm4_mac(bytes.fromhex(KEY), mab).hex().upper()}</MAC></ROOT>".encode()
    answer = gw.exchange(b"%06d" % len(doc) + doc)
    out = CODEC.client_decode(answer, gw.session)
    assert out["resp_code"] == "8001" and b"root:" not in answer
    assert gw.exchange(b"00001x<ROOT/>") is None  # prefix not 6 digits: closed
    assert gw.exchange(b"008193" + b"<" * 100) is None  # over 8192: closed
    assert gw.exchange(b"000005<a/>x") is None  # not well-formed: closed
    with gw.connect() as s:  # one request per connection: the second is never read
        frame = CODEC.client_encode("echo", {"serial": serial()}, gw.session)
        s.sendall((b"%06d" % len(frame) + frame) * 2)
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
    assert int(buf[:6]) == len(buf) - 6


def test_simulate_pay_prepays_then_confirms(gw):
    customer, _ = due_customer(gw)
    r = subprocess.run(
        [sys.executable, "-m", "bankgate.app.cli", "--config", str(gw.config), "simulate",
         "--bank", "demo-xml", "pay", customer],
        cwd=ROOT, env=gw.process.env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "order_no" in r.stdout and KEY not in r.stdout
    conn = sqlite3.connect(f"file:{gw.db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT status FROM bg_payment WHERE bank = 'demo-xml' AND"
                            " customer_no = ?", (customer,)).fetchall()
    finally:
        conn.close()
    assert rows == [("POSTED",)]
