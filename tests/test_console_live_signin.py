"""Sign-in state and key age in the live figures (``signin`` of each bank in
bankgate.app.console.live's snapshot) and the overview's *Signed in* cell.

A ref-iso8583 bank (its plugin declares a sign-in) is driven over StringTransports
through the real listener: each connection signs in with the codec's own bank side
(``client_encode``), its working key (MAK) is exchanged under the ZMK and checked by
``client_decode``.  Time is a Clock.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from console_helpers import bank_factory
from hypothesis import given, settings
from hypothesis import strategies as st
from test_console_helpdesk import request
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from bankgate.app.console import auth, overview, server
from bankgate.app.console.live import LiveFigures
from bankgate.codec.base import BankKeys, BankProfile, Session
from bankgate.codec.registry import load_codec
from bankgate.wire.listener import BankFactory

CODEC = load_codec("ref-iso8583")
ZMK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
T0 = datetime(2026, 11, 27, 9, 30)


class Handler:
    def __call__(self, request):  # no ledger request is sent in these tests
        raise AssertionError(request)


class Bank:
    """A ref-iso8583 bank's listener, its live figures, and its connections."""

    def __init__(self, zmk: bytes | None = ZMK):
        self.clock = Clock()
        self.clock.advance(T0.timestamp())
        self.profile = BankProfile("iso", "ref-iso8583", "105210",
                                   keys=BankKeys(zmk=zmk) if zmk else BankKeys(),
                                   allow=("10.0.0.0/8",), idle_timeout=86400.0)  # idle: open
        self.factory = BankFactory(CODEC, self.profile, Handler(), self.clock, now=self.now,
                                   log=lambda event: None)
        self.live = LiveFigures(self.clock, self.now, [("iso", self.factory, ["tcp:9104"])])

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds())

    def connect(self, host: str = "10.0.0.9") -> Conn:
        return Conn(self, host)

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def figures(self) -> dict:
        [b] = self.live.snapshot()["banks"]
        return b


class Conn:
    """One bank connection, with the bank side's session (its own copy of the MAK)."""

    def __init__(self, bank: Bank, host: str):
        peer = IPv4Address("TCP", host, 40000)
        self.proto = bank.factory.buildProtocol(peer)
        self.transport = StringTransport(peerAddress=peer)
        self.proto.makeConnection(self.transport)
        self.side = Session(bank.profile, host, now=bank.now)

    def send(self, txn: str) -> dict:
        frame = CODEC.client_encode(txn, {}, self.side)
        self.transport.clear()
        self.proto.dataReceived(len(frame).to_bytes(2, "big") + frame)
        answer = self.transport.value()
        assert int.from_bytes(answer[:2], "big") == len(answer) - 2
        return CODEC.client_decode(answer[2:], self.side)

    def close(self) -> None:
        self.proto.connectionLost(None)


def iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


def test_a_bank_without_sign_in_has_none():
    clock = Clock()
    factory = bank_factory(clock)  # a plugin that declares no sign-in
    live = LiveFigures(clock, lambda: T0, [("plain", factory, ["tcp:9101"])])
    [b] = live.snapshot()["banks"]
    assert b["signin"] is None
    assert overview.link_cells(b)["signin"] == ("-", "")


def test_connections_signed_in_last_sign_in_and_the_oldest_key():
    bank = Bank()
    assert bank.figures()["signin"] == {"signed_in": 0, "last_signin": None, "key_age": None}
    a = bank.connect()
    assert bank.figures()["signin"]["signed_in"] == 0
    answer = a.send("signin")
    assert answer["response_code"] == "00" and answer["signed_in"]  # the MAK's check value held
    bank.advance(300)
    assert bank.figures()["signin"] == {"signed_in": 1, "last_signin": iso(T0),
                                        "key_age": 300}
    b = bank.connect()
    assert b.send("signin")["response_code"] == "00"  # at T0+300
    bank.advance(100)
    assert a.send("signin")["response_code"] == "00"  # a new key for a at T0+400
    bank.advance(60)
    s = bank.figures()["signin"]
    assert s == {"signed_in": 2, "last_signin": iso(T0 + timedelta(seconds=400)),
                 "key_age": 160}  # b's key, the older of the two in use
    assert a.send("echo")["response_code"] == "00"  # other network messages change nothing
    bank.advance(1)
    assert bank.figures()["signin"]["signed_in"] == 2
    assert a.send("signout")["response_code"] == "00"
    bank.advance(1)
    assert bank.figures()["signin"]["signed_in"] == 1
    b.close()
    bank.advance(1)
    assert bank.figures()["signin"] == {"signed_in": 0,
                                        "last_signin": iso(T0 + timedelta(seconds=400)),
                                        "key_age": None}


def test_a_refused_sign_in_signs_nothing_in():
    bank = Bank(zmk=None)  # the gateway cannot wrap a key: the sign-in fails
    a = bank.connect()
    assert a.send("signin")["response_code"] != "00"
    bank.advance(1)
    assert bank.figures()["signin"] == {"signed_in": 0, "last_signin": None, "key_age": None}
    bank = Bank()
    stranger = bank.connect(host="192.168.1.5")  # not in the bank's allow list
    assert stranger.send("signin")["response_code"] != "00"
    ok = bank.connect()
    assert ok.send("signin")["response_code"] == "00"
    bank.advance(5)
    assert ok.send("signin")["response_code"] == "00"
    bank.advance(5)
    assert bank.figures()["signin"] == {"signed_in": 1,
                                        "last_signin": iso(T0 + timedelta(seconds=5)),
                                        "key_age": 5}


@given(st.lists(st.tuples(st.sampled_from(["connect", "signin", "signout", "close"]),
                          st.integers(0, 3), st.integers(1, 90)), max_size=25))
@settings(max_examples=60, deadline=None)
def test_the_figures_follow_any_sequence_of_connections(steps):
    """Against a model: signed in = open connections whose last sign-in was not
    followed by a sign-out; the key age is the oldest of their sign-ins."""
    bank = Bank()
    conns: list[Conn] = []
    model: dict[int, datetime | None] = {}  # open connection -> its sign-in time
    last = None
    for op, which, wait in steps:
        open_ = [i for i in model]
        if op == "connect" or not open_:
            conns.append(bank.connect())
            model[len(conns) - 1] = None
        else:
            i = open_[which % len(open_)]
            if op == "close":
                conns[i].close()
                del model[i]
            else:
                assert conns[i].send(op)["response_code"] == "00"
                model[i] = bank.now() if op == "signin" else None
                last = bank.now() if op == "signin" else last
        bank.advance(wait)
        since = [t for t in model.values() if t is not None]
        assert bank.figures()["signin"] == {
            "signed_in": len(since),
            "last_signin": iso(last) if last else None,
            "key_age": round((bank.now() - min(since)).total_seconds()) if since else None}
        assert bank.figures()["peers"] == len(model)


@pytest.mark.parametrize("signin, peers, cell", [
    (None, 1, ("-", "")),
    ({"signed_in": 0, "last_signin": None, "key_age": None}, 0, ("never", "")),
    ({"signed_in": 0, "last_signin": None, "key_age": None}, 1, ("never", "bad")),
    ({"signed_in": 0, "last_signin": "2026-11-27T09:30:00", "key_age": None}, 2,
     ("none (last 2026-11-27 09:30:00)", "bad")),
    ({"signed_in": 1, "last_signin": "2026-11-27T09:30:00", "key_age": 42}, 1,
     ("1 of 1, key 42 s old", "ok")),
    ({"signed_in": 1, "last_signin": "2026-11-27T09:30:00", "key_age": 3725}, 2,
     ("1 of 2, key 1 h 2 min old", "warn")),
])
def test_the_signed_in_cell(signin, peers, cell):
    assert overview.signin_cell(signin, peers) == cell


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_script_makes_the_signed_in_cell_the_server_makes():
    bank = Bank()
    bank.connect().send("signin")
    bank.connect()
    bank.advance(75)
    live = bank.figures()
    banks = [live, dict(live, signin=None), dict(live, peers=0, signin={
        "signed_in": 0, "last_signin": "2026-11-27T09:30:00", "key_age": None})]
    program = """
      const o = require(process.argv[1]);
      const banks = JSON.parse(require("fs").readFileSync(0, "utf8"));
      process.stdout.write(JSON.stringify(banks.map(o.linkCells)));
    """
    script = Path(server.STATIC) / "overview.js"
    out = subprocess.run(["node", "-e", program, str(script)], check=True, capture_output=True,
                         timeout=60, input=json.dumps(banks).encode()).stdout
    js = json.loads(out)
    assert js == json.loads(json.dumps([overview.link_cells(b) for b in banks]))
    assert js[0]["signin"] == ["1 of 2, key 1 min old", "warn"]
    assert js[2]["signin"] == ["none (last 2026-11-27 09:30:00)", ""]


def test_the_overview_page_shows_the_cell_rendered_on_the_server():
    @dataclass
    class Configured:
        name: str = "iso"
        plugin: str = "ref-iso8583"
        bank_code: str = "105210"
        listen: tuple = ("tcp:9104",)

    bank = Bank()
    bank.connect().send("signin")
    bank.advance(42)
    console = server.Console(None, bank.clock, run_blocking=None, wall=bank.now,
                             banks=[Configured()])
    console.overview.live = bank.live.snapshot
    viewer = console.sessions.create(auth.Account("vera", "viewer", T0, False))
    req = request(console, "/", session=viewer)
    page = b"".join(req.written).decode()
    assert "<th>Signed in</th>" in page
    assert '<td data-field="signin" class="ok">1 of 1, key 42 s old</td>' in page
