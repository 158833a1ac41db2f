"""End to end: ``twistd bankgate`` in a subprocess, banks over real loopback TCP.

One gateway runs for the whole module (SQLite in a temporary folder, 200
demo customers, the three reference banks on free ports).  The tests talk
to it with plain blocking sockets, building and reading frames with the
plugins' own bank side (``client_encode`` / ``client_decode``), and look at
the database file directly to check what changed.  The last tests run the
``bankgate simulate`` command against it.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bankgate.app.config import load_config
from bankgate.codec.base import Session
from bankgate.codec.registry import load_codec
from bankgate.devtools.gateway import GatewayProcess, free_port
from bankgate.devtools.simulate import response_code

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
KEY = "0123456789ABCDEFFEDCBA9876543210"
KCV = "08D7B4"
TZ = ZoneInfo("Asia/Shanghai")
START_TIMEOUT = 30.0
IO_TIMEOUT = 10.0

FIXED = load_codec("ref-fixed")
DELIM = load_codec("ref-delim")
ISO = load_codec("ref-iso8583")
CODECS = {"demo-fixed": FIXED, "demo-delim": DELIM, "demo-iso8583": ISO}


def local_now() -> datetime:
    return datetime.now(TZ).replace(tzinfo=None)


CONFIG = """\
[gateway]
data_dir = "{data}"
timezone = "Asia/Shanghai"

[database]
url = "sqlite:///{data}/bankgate.db"

[n8]
create = true
demo_customers = 200

[[bank]]
name = "demo-fixed"
plugin = "ref-fixed"
bank_code = "105210"
listen = "tcp:{p1}:interface=127.0.0.1"
allow = ["127.0.0.0/8"]
policy = "exact"
mac = true
mac_key = "{key}"
mac_key_kcv = "{kcv}"

[[bank]]
name = "demo-delim"
plugin = "ref-delim"
bank_code = "103210"
listen = "tcp:{p2}:interface=127.0.0.1"
allow = ["127.0.0.0/8"]
policy = "partial"

[[bank]]
name = "demo-iso8583"
plugin = "ref-iso8583"
bank_code = "104210"
listen = "tcp:{p3}:interface=127.0.0.1"
allow = ["127.0.0.0/8"]
policy = "exact"
mac = true
zmk = "{key}"
zmk_kcv = "{kcv}"
"""

class Gateway:
    def __init__(self, data: Path):
        self.data = data
        self.ports = {"demo-fixed": free_port(), "demo-delim": free_port(),
                      "demo-iso8583": free_port()}
        self.config = data / "bankgate.toml"
        self.config.write_text(CONFIG.format(
            data=data.as_posix(), key=KEY, kcv=KCV, p1=self.ports["demo-fixed"],
            p2=self.ports["demo-delim"], p3=self.ports["demo-iso8583"]))
        self.db = data / "bankgate.db"
        self.log = data / "gateway.log"
        cfg = load_config(self.config)
        self.profiles = {b.name: b.profile() for b in cfg.banks}
        self.process = GatewayProcess(self.config, list(self.ports.values()), self.log,
                                      start_timeout=START_TIMEOUT)
        self.paid_at_start = 0

    def start(self) -> None:
        self.process.start()

    def stop(self) -> None:
        self.process.stop()

    def tail(self, n: int = 40) -> str:
        return self.process.tail(n)

    # -- the database, read directly --------------------------------------------------

    def query_db(self, sql: str, *params):
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def db_state(self) -> tuple:
        """Everything a request could change: journal, payments, undos, bills."""
        return (
            self.query_db("SELECT count(*) FROM bg_journal")[0][0],
            self.query_db("SELECT count(*), coalesce(group_concat(status), '') "
                          "FROM bg_payment")[0],
            self.query_db("SELECT count(*) FROM bg_undo")[0][0],
            self.query_db("SELECT sum(paid_amount), sum(late_fee_paid) FROM n8_bill")[0],
        )

    def payments(self, bank: str, serial: str) -> list[tuple]:
        return self.query_db(
            "SELECT receipt_no, amount, status FROM bg_payment WHERE bank = ? AND serial = ?",
            bank, serial)

    def wait_payment(self, bank: str, serial: str, timeout: float = 10.0) -> list[tuple]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.payments(bank, serial)
            if rows:
                return rows
            time.sleep(0.05)
        raise AssertionError(f"payment {bank}/{serial} never committed:\n{self.tail()}")


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    g = Gateway(tmp_path_factory.mktemp("gateway"))
    g.start()
    [(g.paid_at_start,)] = g.query_db("SELECT sum(paid_amount + late_fee_paid) FROM n8_bill")
    try:
        yield g
    finally:
        g.stop()


# -- a blocking bank -------------------------------------------------------------------


class Bank:
    """One bank connection with blocking sockets and the plugin's bank side."""

    def __init__(self, gw: Gateway, bank: str):
        self.gw = gw
        self.bank = bank
        self.codec = CODECS[bank]
        self.kind = self.codec.framing.kind
        self.session = Session(bank=gw.profiles[bank], now=local_now)
        self.sock = socket.create_connection(("127.0.0.1", gw.ports[bank]), timeout=IO_TIMEOUT)

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, txn: str, values: dict) -> None:
        frame = self.codec.client_encode(txn, values, self.session)
        if self.kind == "ascii4":
            head = b"%04d" % len(frame)
        elif self.kind == "ascii8":
            head = b"%08d" % len(frame)
        else:
            head = len(frame).to_bytes(2, "big")
        self.send_raw(head + frame)

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError(f"closed by the gateway after {len(buf)} of {n} bytes")
            buf += chunk
        return buf

    def recv(self) -> dict:
        size = {"ascii4": 4, "ascii8": 8, "tpdu2": 2}[self.kind]
        while True:
            head = self._read(size)
            n = int.from_bytes(head, "big") if self.kind == "tpdu2" else int(head)
            if n:
                return self.codec.client_decode(self._read(n), self.session)

    def ask(self, txn: str, values: dict) -> dict:
        self.send(txn, values)
        return self.recv()

    def closed_by_peer(self) -> bool:
        """True when the gateway closes the connection without sending anything."""
        self.sock.settimeout(IO_TIMEOUT)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def signin(self) -> None:
        a = self.ask("signin", {})
        assert response_code(a) == "00", a
        assert "mak" in self.session.state


def ask(gw: Gateway, bank: str, txn: str, values: dict) -> dict:
    """One request on a new connection (ref-delim's way; signs in for ISO 8583)."""
    b = Bank(gw, bank)
    try:
        if bank == "demo-iso8583":
            b.signin()
        return b.ask(txn, values)
    finally:
        b.close()


_serials = itertools.count(1)
_customers = iter(range(100000001, 100000201))


def serial(length: int = 20) -> str:
    n = next(_serials)
    stamp = local_now().strftime("%H%M%S")
    if length == 12:
        return f"E{stamp}{n:05d}"
    return f"E2E{stamp}{os.getpid() % 10000:04d}{n:07d}"


def fixed_total(a: dict) -> int:
    return a["total_due"] + a["late_fee"]


def fresh_customer(gw: Gateway) -> tuple[str, dict]:
    """A customer nobody has touched yet with something due (fixed query answer)."""
    for n in _customers:
        c = str(n)
        a = ask(gw, "demo-fixed", "query", {"customer_no": c, "serial": serial()})
        if a["resp_code"] == "0000" and fixed_total(a) > 0:
            return c, a
    raise AssertionError("out of demo customers")


# -- query, pay, reverse per plugin ------------------------------------------------------


def test_fixed_query_pay_reverse(gw):
    c, q = fresh_customer(gw)
    total = fixed_total(q)
    assert q["mac_ok"] is True and q["customer_no"] == c and q["bills"]
    bank = Bank(gw, "demo-fixed")  # sequential requests on one connection
    s = serial()
    p = bank.ask("pay", {"customer_no": c, "amount": total, "serial": s})
    assert p["resp_code"] == "0000", p
    assert p["mac_ok"] is True and p["amount"] == total and p["remaining_due"] == 0
    st = bank.ask("status", {"orig_serial": s, "serial": serial()})
    assert (st["status"], st["receipt_no"], st["amount"]) == ("0", p["receipt_no"], total)
    r = bank.ask("reverse", {"customer_no": c, "orig_serial": s, "amount": total,
                             "serial": serial()})
    assert r["resp_code"] == "0000" and r["orig_serial"] == s
    assert bank.ask("status", {"orig_serial": s, "serial": serial()})["status"] == "1"
    again = bank.ask("query", {"customer_no": c, "serial": serial()})
    assert fixed_total(again) == total  # the bills are as before the payment
    bank.close()
    assert gw.payments("demo-fixed", s) == [(p["receipt_no"], total, "REVERSED")]


def test_delim_query_pay_reverse(gw):
    c, _ = fresh_customer(gw)
    q = ask(gw, "demo-delim", "query", {"customer_no": c, "serial": serial()})
    assert q["code"] == "000" and q["bill_count"] == len(q["bills"]) > 0
    ids = [b["bill_id"] for b in q["bills"]]
    amount = sum(b["amount"] + b["late_fee"] for b in q["bills"])
    s = serial()
    p = ask(gw, "demo-delim", "pay", {"customer_no": c, "amount": amount, "bill_ids": ids,
                                       "serial": s})
    assert p["code"] == "000" and p["amount"] == amount and p["receipt_no"], p
    r = ask(gw, "demo-delim", "reverse", {"customer_no": c, "amount": amount,
                                          "orig_serial": s, "serial": serial()})
    assert r["code"] == "000" and r["orig_serial"] == s
    again = ask(gw, "demo-delim", "query", {"customer_no": c, "serial": serial()})
    assert (again["total_due"], again["late_fee"]) == (q["total_due"], q["late_fee"])
    assert gw.payments("demo-delim", s) == [(p["receipt_no"], amount, "REVERSED")]


def test_iso8583_query_pay_reverse(gw):
    c, fq = fresh_customer(gw)
    bank = Bank(gw, "demo-iso8583")
    bank.signin()
    q = bank.ask("query", {"customer_no": c, "rrn": serial(12)})
    assert q["response_code"] == "00" and q["mac_ok"] is True
    total = int(q["fields"][4])
    assert total == fixed_total(fq)
    rrn = serial(12)
    p = bank.ask("pay", {"customer_no": c, "amount": total, "rrn": rrn})
    assert p["response_code"] == "00" and p["mac_ok"] is True, p
    receipt = p["field48"]["receipt_no"]
    assert p["fields"][38] == receipt[-6:].rjust(6, "0")
    r = bank.ask("reverse", {"amount": total, "rrn": rrn})
    assert r["response_code"] == "00" and r["mac_ok"] is True
    again = bank.ask("query", {"customer_no": c, "rrn": serial(12)})
    assert int(again["fields"][4]) == total
    bank.close()
    assert gw.payments("demo-iso8583", rrn) == [(receipt, total, "REVERSED")]


# -- retries ----------------------------------------------------------------------------


@pytest.mark.parametrize("bank", ["demo-fixed", "demo-delim", "demo-iso8583"])
def test_retry_after_timeout_gets_the_first_answer(gw, bank):
    c, fq = fresh_customer(gw)
    total = fixed_total(fq)
    if bank == "demo-delim":
        q = ask(gw, bank, "query", {"customer_no": c, "serial": serial()})
        values = {"customer_no": c, "amount": sum(b["amount"] + b["late_fee"]
                                                   for b in q["bills"]),
                  "bill_ids": [b["bill_id"] for b in q["bills"]]}
    else:
        values = {"customer_no": c, "amount": total}
    key = serial(12) if bank == "demo-iso8583" else serial()
    values["rrn" if bank == "demo-iso8583" else "serial"] = key
    # the bank sends the payment and gives up before the answer comes
    first = Bank(gw, bank)
    if bank == "demo-iso8583":
        first.signin()
    first.send("pay", values)
    first.close()
    [(receipt, amount, status)] = gw.wait_payment(bank, key)
    paid = gw.db_state()
    # ... and sends it again, on a new connection
    retry = ask(gw, bank, "pay", dict(values))
    assert response_code(retry) in ("0000", "000", "00"), retry
    got = retry.get("receipt_no") or retry["field48"]["receipt_no"]
    assert got == receipt
    assert gw.payments(bank, key) == [(receipt, amount, status)]
    assert gw.db_state()[1:] == paid[1:]  # nothing posted twice
    # the same serial with other content is refused, and changes nothing
    other = dict(values, amount=values["amount"] - 1)
    dup = ask(gw, bank, "pay", other)
    assert response_code(dup) == {"demo-fixed": "1005", "demo-delim": "025",
                                  "demo-iso8583": "94"}[bank]
    assert gw.db_state()[1:] == paid[1:]


@pytest.mark.parametrize("bank,not_found,refused", [
    ("demo-fixed", "1006", "1007"),
    ("demo-delim", "006", "007"),
    ("demo-iso8583", "25", "R1"),
])
def test_reversal_before_payment_refuses_the_late_payment(gw, bank, not_found, refused):
    c, fq = fresh_customer(gw)
    total = fixed_total(fq)
    if bank == "demo-iso8583":
        key = serial(12)
        rev = {"amount": total, "rrn": key}
        pay = {"customer_no": c, "amount": total, "rrn": key}
    else:
        key = serial()
        rev = {"customer_no": c, "amount": total, "orig_serial": key, "serial": serial()}
        pay = {"customer_no": c, "amount": total, "serial": key}
        if bank == "demo-delim":
            q = ask(gw, bank, "query", {"customer_no": c, "serial": serial()})
            pay["bill_ids"] = [b["bill_id"] for b in q["bills"]]
            pay["amount"] = rev["amount"] = sum(b["amount"] + b["late_fee"] for b in q["bills"])
    assert response_code(ask(gw, bank, "reverse", rev)) == not_found
    assert response_code(ask(gw, bank, "pay", pay)) == refused
    assert gw.payments(bank, key) == []
    after = ask(gw, "demo-fixed", "query", {"customer_no": c, "serial": serial()})
    assert fixed_total(after) == total
    if bank == "demo-fixed":
        st = ask(gw, bank, "status", {"orig_serial": key, "serial": serial()})
        assert st["status"] == "2"


def test_iso8583_0420_repeat_never_reverses_twice(gw):
    c, fq = fresh_customer(gw)
    total = fixed_total(fq)
    bank = Bank(gw, "demo-iso8583")
    bank.signin()
    rrn = serial(12)
    p = bank.ask("pay", {"customer_no": c, "amount": total, "rrn": rrn})
    assert p["response_code"] == "00", p
    assert bank.ask("reverse", {"amount": total, "rrn": rrn})["response_code"] == "00"
    state = gw.db_state()
    a = bank.ask("reversal_advice", {"amount": total, "rrn": rrn})
    assert a["mti"] == "0430" and a["response_code"] == "00" and a["mac_ok"] is True
    assert gw.db_state() == state
    assert len(gw.query_db("SELECT 1 FROM bg_undo u JOIN bg_payment p ON p.id = u.payment_id"
                           " WHERE p.serial = ?", rrn)) == 1
    # a 0420 for a payment whose 0400 was never answered reverses it, once
    c2, fq2 = fresh_customer(gw)
    rrn2 = serial(12)
    assert bank.ask("pay", {"customer_no": c2, "amount": fixed_total(fq2),
                            "rrn": rrn2})["response_code"] == "00"
    for _ in range(2):
        a = bank.ask("reversal_advice", {"amount": fixed_total(fq2), "rrn": rrn2})
        assert a["response_code"] == "00"
    bank.close()
    assert [r[2] for r in gw.payments("demo-iso8583", rrn2)] == ["REVERSED"]
    after = ask(gw, "demo-fixed", "query", {"customer_no": c2, "serial": serial()})
    assert fixed_total(after) == fixed_total(fq2)


# -- refused requests change nothing ------------------------------------------------------------


def test_bad_mac(gw):
    c, fq = fresh_customer(gw)
    before = gw.db_state()
    a = ask(gw, "demo-fixed", "pay", {"customer_no": c, "amount": fixed_total(fq),
                                      "serial": serial(), "mac": "0123456789ABCDEF"})
    assert a["resp_code"] == "8002" and a["mac_ok"] is True  # the answer's own MAC is good
    bank = Bank(gw, "demo-iso8583")
    bank.signin()
    a = bank.ask("pay", {"customer_no": c, "amount": fixed_total(fq), "rrn": serial(12),
                         "mac": bytes(8)})
    assert a["response_code"] == "A0"
    bank.close()
    assert gw.db_state() == before


def test_not_signed_in(gw):
    c, fq = fresh_customer(gw)
    before = gw.db_state()
    bank = Bank(gw, "demo-iso8583")
    assert bank.ask("query", {"customer_no": c, "rrn": serial(12)})["response_code"] == "A7"
    a = bank.ask("pay", {"customer_no": c, "amount": fixed_total(fq), "rrn": serial(12)})
    assert a["response_code"] == "A7" and a["fields"][64] == bytes(8)
    # signing in on this connection makes it work
    bank.signin()
    assert bank.ask("query", {"customer_no": c, "rrn": serial(12)})["response_code"] == "00"
    bank.close()
    assert gw.db_state() == before


def test_wrong_bank_code(gw):
    c, fq = fresh_customer(gw)
    before = gw.db_state()
    a = ask(gw, "demo-fixed", "pay", {"customer_no": c, "amount": fixed_total(fq),
                                      "serial": serial(), "bank_code": "999999"})
    assert a["resp_code"] == "8004" and a["mac"] == " " * 16
    a = ask(gw, "demo-delim", "query", {"customer_no": c, "serial": serial(),
                                        "bank_code": "999999"})
    assert a["code"] == "030"
    bank = Bank(gw, "demo-iso8583")
    a = bank.ask("signin", {"bank_code": "999999"})
    assert a["response_code"] == "03" and 62 not in a["fields"]
    bank.close()
    assert gw.db_state() == before


def test_unknown_transaction_code(gw):
    c, fq = fresh_customer(gw)
    before = gw.db_state()
    a = ask(gw, "demo-fixed", "query", {"customer_no": c, "serial": serial(),
                                        "txcode": "1999"})
    assert a["resp_code"] == "8003"
    bank = Bank(gw, "demo-delim")
    body = f"599|103210|||01|{local_now():%Y%m%d}|{local_now():%H%M%S}|{serial()}|{c}|"
    raw = body.encode("gbk")
    bank.send_raw(b"%08d" % len(raw) + raw)
    assert bank.recv()["code"] == "020"  # §2: an unknown txcode is a format error
    bank.close()
    bank = Bank(gw, "demo-iso8583")
    bank.signin()
    a = bank.ask("pay", {"customer_no": c, "amount": fixed_total(fq), "rrn": serial(12),
                         "processing_code": "999999"})
    assert a["response_code"] == "12"
    bank.close()
    assert gw.db_state() == before


BROKEN = {
    "fixed shorter than the header": ("demo-fixed", b"0010" + b"1001105210"),
    "fixed prefix not digits": ("demo-fixed", b"ABCD" + b"x" * 200),
    "fixed zero length": ("demo-fixed", b"0000"),
    "delim over 65536": ("demo-delim", b"00070000" + b"x" * 100),
    "delim prefix not digits": ("demo-delim", b"\x00\x01garbage" + b"|" * 50),
    "iso over 4096": ("demo-iso8583", (4097).to_bytes(2, "big") + b"\x60" * 100),
    "iso bad TPDU": ("demo-iso8583", (20).to_bytes(2, "big") + b"\x61" + bytes(19)),
    "iso unknown MTI": ("demo-iso8583",
                        (17).to_bytes(2, "big") + bytes.fromhex("6000030000") + b"9999"
                        + bytes(8)),
    "iso response MTI": ("demo-iso8583",
                         (17).to_bytes(2, "big") + bytes.fromhex("6000030000") + b"0110"
                         + bytes(8)),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_frames_close_the_connection(gw, case):
    bank_name, data = BROKEN[case]
    before = gw.db_state()
    bank = Bank(gw, bank_name)
    if bank_name == "demo-iso8583":
        bank.signin()
    bank.send_raw(data)
    assert bank.closed_by_peer(), "the gateway answered a broken frame"
    bank.close()
    assert gw.db_state() == before
    # and the service still answers
    a = ask(gw, bank_name, "echo", {"serial": serial()})
    assert response_code(a) in ("0000", "000", "00")


# -- the simulator against the gateway -----------------------------------------------------------


def simulate(gw: Gateway, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bankgate.app.cli", "--config", str(gw.config), "simulate", *argv],
        cwd=ROOT, env=gw.process.env(), capture_output=True, text=True, timeout=timeout,
    )


def test_simulate_single_transactions(gw):
    c, fq = fresh_customer(gw)
    r = simulate(gw, "--bank", "demo-iso8583", "pay", c)  # signs in, queries, pays
    assert r.returncode == 0, r.stdout + r.stderr
    assert "approved" in r.stdout and "receipt_no" in r.stdout
    assert KEY not in r.stdout
    [(status,)] = gw.query_db("SELECT status FROM bg_payment WHERE customer_no = ?", c)
    assert status == "POSTED"
    r = simulate(gw, "--bank", "demo-delim", "query", c)
    assert r.returncode == 1 and "nothing to pay" in r.stdout
    r = simulate(gw, "--bank", "demo-fixed", "status", "NO-SUCH-SERIAL")
    assert r.returncode == 0 and "NOT_FOUND" in r.stdout


def test_simulate_load_on_all_banks(gw, tmp_path):
    out = tmp_path / "load.json"
    r = simulate(gw, "load", "--banks", "demo-fixed,demo-delim,demo-iso8583", "--rate", "40",
                 "--duration", "2", "--concurrency", "3", "--customers-from-db",
                 "--seed", "7", "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads(out.read_text())
    assert [b["bank"] for b in summary["banks"]] == ["demo-fixed", "demo-delim",
                                                     "demo-iso8583"]
    for b in summary["banks"]:
        assert b["sent"] > 40 and b["answered"] == b["sent"], b
        assert not b["errors"] and not b["unfinished"] and not b["mac_failures"]
        assert b["latency_ms"]["p50"] <= b["latency_ms"]["p95"] <= b["latency_ms"]["p99"]
    # the books still balance: every standing payment is in the bills exactly once
    [(paid,)] = gw.query_db("SELECT sum(paid_amount + late_fee_paid) FROM n8_bill")
    [(posted,)] = gw.query_db("SELECT sum(amount - prepaid_in) FROM bg_payment "
                              "WHERE status = 'POSTED'")
    assert paid - gw.paid_at_start == posted
