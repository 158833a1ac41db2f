"""Real-time card debit (卡扣, ref-delim §7): the gateway as the bank's client.

The bank host is played by hand: a fake endpoint hands out StringTransports,
the test reads the frames the gateway wrote and feeds answers written by hand
from the spec.  Time is a task.Clock; database work runs inline.  The tests
that look at what survives a restart run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import collections
from datetime import date, datetime, timedelta

import pytest
import sqlalchemy as sa
from conftest import NOW, TODAY, make_store, seed_fixture
from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_helpers import bills
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from bankgate.app.carddebits import ReversalQueueService, build, make_services
from bankgate.app.config import parse_config
from bankgate.app.options import withholding_options
from bankgate.canon import messages as m
from bankgate.canon.messages import Outcome
from bankgate.codec.registry import load_codec
from bankgate.domain.carddebit import (
    CardDebits,
    DebitResult,
    abandon,
    reversal_serial,
    utility_serial,
)
from bankgate.domain.ledger import Ledger
from bankgate.domain.withholding import SOURCE, Withholding, WithholdingOptions
from bankgate.store import model
from bankgate.wire.debitlink import DebitLink

DELIM = load_codec("ref-delim")
FIXED = load_codec("ref-fixed")
CODECS = {"ref-delim": DELIM, "ref-fixed": FIXED}
ACCT = "6222020200012345678"
T0 = 1_000_000.0
S1 = "WH20261127000000000001"  # the first debit's serial (row id 1)
S2 = "WH20261127000000000002"


def make_withholding(ledger, cfg, codecs=CODECS) -> Withholding:
    """The rules as the wiring builds them: the configured banks and their parsed options."""
    return Withholding(ledger, cfg.banks, codecs, withholding_options(cfg, codecs),
                       data_dir=cfg.data_dir)


def inline(f, *args, **kw):
    return defer.maybeDeferred(f, *args, **kw)


def frame(text: str) -> bytes:
    body = text.encode("gbk")
    return b"%08d" % len(body) + body


def split_frames(data: bytes) -> list[str]:
    out = []
    while data:
        n = int(data[:8])
        out.append(data[8:8 + n].decode("gbk"))
        data = data[8 + n:]
    return out


class ClosingTransport(StringTransport):
    """A StringTransport whose close reaches the protocol (on the clock)."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock
        self.protocol = None
        self.closed = False
        self.written = b""  # everything, also what clear() forgot
        self.hold = False  # True: the close does not reach the protocol (yet)

    def write(self, data):
        self.written += data
        super().write(data)

    def loseConnection(self):  # noqa: N802
        if not self.disconnecting:
            super().loseConnection()
            if not self.hold:
                self.clock.callLater(0, self.close)

    def close(self):
        if not self.closed:
            self.closed = True
            self.protocol.connectionLost(Failure(ConnectionDone()))


class FakeEndpoint:
    def __init__(self):
        self.pending: collections.deque = collections.deque()
        self.attempts = 0

    def connect(self, factory):
        self.attempts += 1
        d = defer.Deferred()
        self.pending.append((factory, d))
        return d


class Host:
    """The test plays the bank's host through this."""

    def __init__(self, store, tmp_path, *, options: dict | None = None, seed: bool = True):
        self.store = store
        self.clock = task.Clock()
        self.clock.advance(T0)
        self.ep = FakeEndpoint()
        opts = {"debit_host": "tcp:host=127.0.0.1:port=9202", "utility_code": "HEAT01",
                "debit_timeout": 30, "debit_retry": 30, "debit_retry_max": 240,
                "debit_reconnect": 1, "debit_idle": 0}
        opts.update(options or {})
        self.cfg = parse_config({"bank": [
            {"name": "dl", "plugin": "ref-delim", "bank_code": "103210", "policy": "partial",
             "exchange_dir": str(tmp_path / "ex"), "options": opts},
            {"name": "fx", "plugin": "ref-fixed", "bank_code": "105210"},
        ]}, "test.toml")
        if seed:
            seed_fixture(store)
        self.ledger = Ledger(store, {b.name: b.policy_() for b in self.cfg.banks}, now=self.now)
        if seed:
            wh = make_withholding(self.ledger, self.cfg)
            wh.sign("100000123", "dl", ACCT, "clerk")
            wh.sign("100000200", "dl", "2101000011112222", "clerk")
        self.debits = build(self.ledger, self.cfg, CODECS, self.clock, self.now, run_db=inline,
                            endpoint_for=lambda name, o: self.ep)
        for b in self.debits.banks.values():
            b.link.jitter = lambda: 0.0
        self.link = self.debits.link("dl")
        self.transports: list[ClosingTransport] = []
        self.link.service.startService()

    def now(self) -> datetime:
        return NOW + timedelta(seconds=self.clock.seconds() - T0)

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def accept(self) -> ClosingTransport:
        factory, d = self.ep.pending.popleft()
        proxy = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9202))
        t = ClosingTransport(self.clock)
        t.protocol = proxy
        proxy.makeConnection(t)
        d.callback(proxy)
        self.transports.append(t)
        return t

    def refuse(self) -> None:
        _factory, d = self.ep.pending.popleft()
        d.errback(ConnectionRefusedError())

    @property
    def t(self) -> ClosingTransport:
        return self.transports[-1]

    def frames(self) -> list[str]:
        """What the gateway wrote on the current connection since last asked."""
        out = split_frames(self.t.value())
        self.t.clear()
        return out

    def all_frames(self) -> list[str]:
        return [f for t in self.transports for f in split_frames(t.written)]

    def answer(self, text: str, t: ClosingTransport | None = None) -> None:
        (t or self.t).protocol.dataReceived(frame(text))

    def drop(self) -> None:
        self.t.close()

    def reconnect(self) -> ClosingTransport:
        """After the gateway (or the host) closed: wait the back-off, accept."""
        self.advance(0)
        for _ in range(1000):
            if self.ep.pending:
                break
            self.advance(0.25)
        return self.accept()

    def row(self, serial: str) -> dict:
        with self.store.engine.connect() as c:
            return dict(c.execute(sa.select(model.debit).where(
                model.debit.c.utility_serial == serial)).mappings().one())

    def payments(self) -> list[dict]:
        with self.store.engine.connect() as c:
            return [dict(r) for r in c.execute(sa.select(model.payment)).mappings()]

    def debit(self, *a, **kw) -> list:
        out: list = []
        self.debits.debit("dl", *a, **kw).addBoth(out.append)
        return out


@pytest.fixture
def store(tmp_path):
    s = make_store("sqlite", tmp_path)
    yield s
    s.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def any_store(request, tmp_path):
    s = make_store(request.param, tmp_path)
    yield s
    if s.dialect != "sqlite":
        s.drop_all()
    s.stop()


@pytest.fixture
def h(store, tmp_path):
    return Host(store, tmp_path)


# Hand-written from ref-delim §7: B0001 is 2600.00 plus 130.00 late fee.
DEBIT_560 = f"560|HEAT01|20261127|093000|{S1}|100000123|{ACCT}|张三|2730.00|B0001|"


# -- the happy paths -------------------------------------------------------------------


def test_000_posts_the_payment_under_the_bank_serial(h):
    h.accept()
    out = h.debit("100000123", actor="clerk")
    assert h.frames() == [DEBIT_560]
    assert out == [] and h.row(S1)["status"] == "SENT"
    h.answer(f"000|扣款成功|{S1}|KK0001|2730.00|")
    r, = out
    assert r.status == "DEBITED" and r.bank_serial == "KK0001" and r.receipt_no
    assert bills(h.store)["B0001"] == (260000, 13000)
    p, = h.payments()
    assert (p["bank"], p["serial"], p["trade_date"], p["amount"], p["source"], p["channel"]) == (
        "dl", "KK0001", TODAY, 273000, SOURCE, "90")
    row = h.row(S1)
    assert row["status"] == "DEBITED" and row["payment_id"] == p["id"]
    assert row["response_code"] == "000" and row["bank_serial"] == "KK0001"
    # one request per connection (the spec's default): the gateway closed it
    assert h.t.disconnecting


def test_104_with_the_original_serial_posts(h):
    h.accept()
    out = h.debit("100000123", ("B0002", "B0003"))
    assert h.frames() == [f"560|HEAT01|20261127|093000|{S1}|100000123|{ACCT}|张三|2750.00|"
                          "B0002,B0003|"]
    h.answer(f"104|重复扣款|{S1}|KK0777|2750.00|")
    assert out[0].status == "DEBITED" and out[0].bank_serial == "KK0777"
    assert bills(h.store)["B0002"] == (15000, 0) and bills(h.store)["B0003"] == (260000, 0)


@pytest.mark.parametrize("answer, code", [
    ("101|余额不足|", "101"),
    ("102|户名不符|", "102"),
    (f"103|账户不存在|{S1}||0.00|", "103"),
    ("021|系统忙|", "021"),
])
def test_refusals_leave_the_bill_open(h, answer, code):
    h.accept()
    before = bills(h.store)
    out = h.debit("100000123")
    h.answer(answer)
    r, = out
    assert r.status == "FAILED" and r.code == code
    assert bills(h.store) == before and h.payments() == []
    assert h.row(S1)["status"] == "FAILED"
    # the bill is free again: a new debit (a new serial) may be sent
    t = h.reconnect()
    h.debit("100000123")
    assert split_frames(t.value())[0].split("|")[4] == S2


# -- unknown outcomes: the reversal ----------------------------------------------------------


def test_no_answer_sends_561_until_the_bank_answers_never_a_second_560(h):
    h.debits.start()
    h.accept()
    out = h.debit("100000123")
    h.advance(29)
    assert out == []
    h.advance(1)
    r, = out
    assert r.status == "REVERSING" and "no answer in 30 s" in r.message
    assert h.t.disconnecting  # a late answer must not meet the next request
    assert bills(h.store)["B0001"] == (0, 0) and h.payments() == []
    # a second debit of the same bill is refused while the outcome is open
    again = h.debit("100000123")
    assert again[0].status == "REFUSED" and "reversing" in again[0].message
    t = h.reconnect()
    assert split_frames(t.value()) == [f"561|HEAT01|20261127|093030|R{S1}|{S1}|2730.00|"]
    t.clear()
    h.answer("021|系统忙|")
    row = h.row(S1)
    assert row["status"] == "REVERSING" and row["attempts"] == 1
    assert row["next_attempt_at"] == NOW + timedelta(seconds=31 + 30)
    # back-off: 30 s, then 60 s; a silent host in between
    t = h.reconnect()
    h.advance(30)
    assert [f[:4] for f in split_frames(t.value())] == ["561|"]
    t.clear()
    h.advance(30)  # no answer: timeout
    t = h.reconnect()
    h.advance(60)
    assert [f[:4] for f in split_frames(t.value())] == ["561|"]
    h.answer(f"008|已冲正|{S1}|")
    row = h.row(S1)
    assert row["status"] == "REVERSED" and row["attempts"] == 3
    assert [f[:3] for f in h.all_frames()] == ["560", "561", "561", "561"]
    assert bills(h.store)["B0001"] == (0, 0) and h.payments() == []
    h.debit("100000123")  # the bill is free again: a new debit, a new serial
    assert h.row(S2)["status"] == "SENT"


def test_connection_dropped_while_waiting_reverses_at_once(h):
    h.debits.start()
    h.accept()
    out = h.debit("100000123")
    h.drop()
    assert out[0].status == "REVERSING"
    h.reconnect()
    assert h.frames() == [f"561|HEAT01|20261127|093000|R{S1}|{S1}|2730.00|"]
    h.answer(f"006|原交易不存在|{S1}|")
    assert h.row(S1)["status"] == "NOT_DEBITED"


@pytest.mark.parametrize("answer, why", [
    ("garbage", "not |-terminated"),
    ("000|ok|", "must carry bank_serial"),
    ("104|重复扣款|", "104 without bank_serial"),
    (f"000|扣款成功|{S1}|KK0001|2731.00|", "the bank debited 2731.00"),
])
def test_unusable_answers_reverse(h, answer, why):
    h.debits.start()
    h.accept()
    out = h.debit("100000123")
    h.answer(answer)
    assert out[0].status == "REVERSING" and why in out[0].message
    assert h.payments() == []
    h.reconnect()
    assert h.frames()[0].startswith("561|")
    h.answer(f"000|冲正成功|{S1}|")
    assert h.row(S1)["status"] == "REVERSED"


def test_a_debit_the_ledger_refuses_is_reversed(h):
    h.debits.start()
    h.accept()
    out = h.debit("100000123")
    # the customer paid B0001 at the counter while the debit was on its way
    o = m.Origin("fx", TODAY, "093000")
    assert h.ledger.pay(m.PaymentRequest(o, "CNT1", "100000123", 273000, content="c",
                                         bill_ids=("B0001",))).outcome is Outcome.OK
    h.answer(f"000|扣款成功|{S1}|KK0001|2730.00|")
    r, = out
    assert r.status == "REVERSING" and "AMOUNT_REJECTED" in r.message
    assert h.row(S1)["bank_serial"] == "KK0001"
    h.reconnect()
    assert h.frames()[0].startswith(f"561|HEAT01|20261127|093000|R{S1}|{S1}|")
    h.answer(f"000|冲正成功|{S1}|")
    assert h.row(S1)["status"] == "REVERSED"
    assert [p["serial"] for p in h.payments()] == ["CNT1"]


def test_not_connected_in_time_is_not_sent(h):
    h.refuse()
    out = h.debit("100000123")
    h.advance(30)
    r, = out
    assert r.status == "FAILED" and r.code == "" and "not sent" in r.message
    assert h.row(S1)["status"] == "FAILED" and h.transports == []
    assert h.debit("100000123") == []  # free again (waits for a connection)


# -- duplicated, late and stray answers ------------------------------------------------


def test_duplicates_and_late_answers_never_meet_another_request(store, tmp_path):
    h = Host(store, tmp_path, options={"debit_persistent": True})
    h.accept()
    first = h.debit("100000123", ("B0001",))
    h.answer(f"000|扣款成功|{S1}|KK0001|2730.00|")
    h.answer(f"000|扣款成功|{S1}|KK0001|2730.00|")  # the host repeats itself
    assert first[0].status == "DEBITED" and h.link.stray == 1
    assert not h.t.disconnecting  # persistent: the same connection goes on
    second = h.debit("100000123", ("B0002",))
    assert h.frames()[-1].split("|")[4] == S2
    h.answer(f"000|扣款成功|{S1}|KK0001|2730.00|")  # a late copy of the first answer
    assert second == [] and h.link.stray == 2
    h.answer(f"000|扣款成功|{S2}|KK0002|150.00|")
    assert second[0].status == "DEBITED"
    assert sorted(p["serial"] for p in h.payments()) == ["KK0001", "KK0002"]


def test_a_short_answer_closes_even_a_persistent_connection(store, tmp_path):
    h = Host(store, tmp_path, options={"debit_persistent": True})
    t1 = h.accept()
    first = h.debit("100000123", ("B0001",))
    h.answer("101|余额不足|")
    assert first[0].status == "FAILED" and t1.disconnecting
    h.answer("101|余额不足|", t=t1)  # its duplicate is dropped with the connection
    second = h.debit("100000123", ("B0001",))
    t2 = h.reconnect()
    assert split_frames(t2.value())[0].split("|")[4] == S2
    h.answer(f"000|扣款成功|{S2}|KK0002|2730.00|")
    assert second[0].status == "DEBITED"


# -- what the gateway refuses to send ----------------------------------------------------


@pytest.mark.parametrize("customer, bills_, serial, words", [
    ("999999999", None, None, "no customer"),
    ("100000300", None, None, "locked"),
    ("100000400", None, None, "no withholding agreement"),
    ("100000123", ("B0010",), None, "not an open bill"),
    ("100000123", ("B0001", "B0001"), None, "named twice"),
    ("100000123", None, "with space", "letters or digits"),
    ("100000123", None, "X" * 32, "letters or digits"),
])
def test_refused_before_sending(h, customer, bills_, serial, words):
    h.accept()
    r, = h.debit(customer, bills_, serial=serial)
    assert r.status == "REFUSED" and words in r.message
    assert h.frames() == []


def test_a_bill_waiting_in_a_batch_file_is_not_debited(h):
    make_withholding(h.ledger, h.cfg).generate_batch("dl", TODAY)
    h.accept()
    r, = h.debit("100000123")
    assert r.status == "REFUSED" and "1032102026112701.PK" in r.message


def test_a_bank_without_debit_host(h):
    out = []
    h.debits.debit("fx", "100000123").addBoth(out.append)
    assert out[0].status == "REFUSED" and "no debit host" in out[0].message


def test_an_explicit_serial_shows_the_earlier_debit_never_a_second_560(h):
    h.accept()
    out = h.debit("100000123", serial="OP1")
    assert h.frames()[0].split("|")[4] == "OP1"
    h.answer("000|扣款成功|OP1|KK0001|2730.00|")
    assert out[0].status == "DEBITED"
    h.reconnect()
    again, = h.debit("100000123", serial="OP1")
    assert again.status == "DEBITED" and "earlier" in again.message
    other, = h.debit("100000200", serial="OP1")
    assert other.status == "REFUSED" and "another debit" in other.message
    assert h.frames() == []


# -- restarts --------------------------------------------------------------------------------


def test_a_pending_reversal_survives_a_restart(any_store, tmp_path):
    h = Host(any_store, tmp_path)
    h.accept()
    out = h.debit("100000123")
    h.advance(30)
    assert out[0].status == "REVERSING"
    h.reconnect()
    h.drop()  # the host goes away before answering the 561
    h.advance(0)
    assert h.row(S1)["status"] == "REVERSING"
    h.link.service.stopService()
    h.debits.stop()

    # a new process on the same database
    h2 = Host(any_store, tmp_path, seed=False)
    h2.clock.advance(5)
    h2.debits.start()  # pending reversals are sent at start, back-off or not
    h2.accept()
    assert h2.frames() == [f"561|HEAT01|20261127|093005|R{S1}|{S1}|2730.00|"]
    h2.answer(f"000|冲正成功|{S1}|")
    row = h2.row(S1)
    assert row["status"] == "REVERSED" and row["attempts"] >= 1
    assert [f[:3] for f in h.all_frames() + h2.all_frames()] == ["560", "561", "561"]


def test_a_debit_left_sent_by_a_crash_is_reversed(any_store, tmp_path):
    h = Host(any_store, tmp_path)
    h.accept()
    h.debit("100000123")  # the process dies here, the answer never recorded
    h.link.service.stopService()
    h2 = Host(any_store, tmp_path, seed=False)
    h2.debits.start()
    h2.accept()
    assert h2.frames() == []  # not before the answer could still come
    h2.advance(2 * 30 + 30)
    assert h2.row(S1)["status"] == "SENT"  # two timeouts and a grace of 30 s: not yet past
    h2.advance(5)
    assert h2.row(S1)["status"] == "REVERSING"
    assert h2.frames() == [f"561|HEAT01|20261127|093135|R{S1}|{S1}|2730.00|"]
    h2.answer(f"006|原交易不存在|{S1}|")
    assert h2.row(S1)["status"] == "NOT_DEBITED"
    assert bills(any_store)["B0001"] == (0, 0)


def test_a_debit_not_posted_before_a_restart_is_posted_after(any_store, tmp_path, monkeypatch):
    h = Host(any_store, tmp_path)
    h.accept()
    out = h.debit("100000123")
    from bankgate.store.db import StoreUnavailable

    def down(*a, **kw):
        raise StoreUnavailable("database gone")

    monkeypatch.setattr(h.ledger, "pay", down)
    h.answer(f"000|扣款成功|{S1}|KK0001|2730.00|")
    assert out[0].status == "DEBITED" and "waits for the database" in out[0].message
    assert h.row(S1)["payment_id"] is None and h.payments() == []
    monkeypatch.undo()
    h.link.service.stopService()
    h2 = Host(any_store, tmp_path, seed=False)
    h2.debits.start()
    row = h2.row(S1)
    assert row["status"] == "DEBITED" and row["payment_id"] is not None
    p, = h2.payments()
    assert p["serial"] == "KK0001" and p["id"] == row["payment_id"]
    assert bills(any_store)["B0001"] == (260000, 13000)
    h2.debits.tick()  # posting again changes nothing
    assert len(h2.payments()) == 1


def test_an_operator_abandons_a_reversal(h):
    h.accept()
    h.debit("100000123")
    h.advance(30)
    row = abandon(h.store, h.row(S1)["id"], "supervisor", "bank confirmed by phone", h.now())
    assert row["status"] == "ABANDONED"
    assert abandon(h.store, row["id"], "supervisor", "again", h.now()) is None
    with h.store.engine.connect() as c:
        a = c.execute(sa.select(model.audit).where(
            model.audit.c.action == "card-debit-abandon")).mappings().one()
    assert a["actor"] == "supervisor" and a["subject"] == S1


# -- the link -------------------------------------------------------------------------------


def test_reconnect_backs_off(h):
    assert h.ep.attempts == 1
    h.refuse()
    waits = []
    for _ in range(8):
        before = h.ep.attempts
        n = 0
        while h.ep.attempts == before:
            h.advance(0.5)
            n += 1
        waits.append(n * 0.5)
        h.refuse()
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    h.reconnect()
    assert h.link.connected and h.link.status()["connects"] == 1


def test_idle_connections_are_recycled_but_not_while_waiting(store, tmp_path):
    h = Host(store, tmp_path, options={"debit_idle": 20, "debit_timeout": 50})
    t = h.accept()
    h.advance(20)
    assert t.disconnecting
    t = h.reconnect()
    out = h.debit("100000123")
    h.advance(45)
    assert not t.disconnecting and out == []
    h.answer(f"000|扣款成功|{S1}|KK0001|2730.00|")
    assert out[0].status == "DEBITED"


def test_serials():
    assert utility_serial(date(2026, 11, 27), 42) == "WH20261127000000000042"
    assert reversal_serial("X" * 32) == "R" + "X" * 31
    assert DebitResult.from_row({"status": "SENT", "bank": "b", "utility_serial": "s",
                                 "customer_no": "c", "amount": 1, "bill_ids": "A,B",
                                 "response_code": None, "bank_serial": None}).bill_ids == ("A", "B")


# -- the services -------------------------------------------------------------------------


class FakeGateway:
    def __init__(self, store, cfg, reactor):
        self.cfg, self.reactor = cfg, reactor
        self.store = type("S", (), {"call": staticmethod(inline)})()
        self.codecs = CODECS
        self.ledger = Ledger(store, {b.name: b.policy_() for b in cfg.banks}, now=self.now)

    def now(self):
        return NOW


def test_make_services(store, tmp_path):
    from twisted.application.internet import ClientService
    from twisted.internet.testing import MemoryReactorClock

    from bankgate.app.demo import simulated_host

    h = Host(store, tmp_path)
    reactor = MemoryReactorClock()
    gw = FakeGateway(store, h.cfg, reactor)
    gw.card_debits, svcs = make_services(gw)  # the caller keeps the debits, as the service does
    assert [type(s) for s in svcs] == [ClientService, ReversalQueueService]
    assert svcs[0].name == "dl-debit-link" and gw.card_debits is svcs[1].debits
    for s in svcs:
        s.startService()
    assert reactor.tcpClients[0][:2] == ("127.0.0.1", 9202)
    assert svcs[1].debits.loop.running
    for s in reversed(svcs):
        s.stopService()
    assert not svcs[1].debits.loop.running

    h.cfg.banks[0].options["debit_host_simulate"] = True
    _debits, svcs = make_services(FakeGateway(store, h.cfg, reactor),
                                  simulated_host=simulated_host)
    assert svcs[0].name == "dl-simulated-debit-host" and len(svcs) == 3
    svcs[0].startService()
    assert reactor.tcpServers[-1][0] == 9202 and reactor.tcpServers[-1][3] == "127.0.0.1"

    h.cfg.banks[0].options = {"withholding": True}
    assert make_services(FakeGateway(store, h.cfg, reactor)) == (None, [])


def test_no_simulated_host_without_the_demo(store, tmp_path):
    """The production service imports no development tool: a configuration
    asking for the simulated host gets none (and a warning) unless the demo
    injects it."""
    from twisted.internet.testing import MemoryReactorClock
    from twisted.logger import globalLogPublisher

    h = Host(store, tmp_path, options={"debit_host_simulate": True})
    reactor = MemoryReactorClock()
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        debits, svcs = make_services(FakeGateway(store, h.cfg, reactor))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [s.name for s in svcs] == ["dl-debit-link", "card-debit-queue"]
    assert debits is svcs[-1].debits and list(debits.banks) == ["dl"]
    assert any("debit_host_simulate" in e.get("log_format", "") and e.get("bank") == "dl"
               for e in events)


def test_card_debits_class_is_exported():
    assert CardDebits.interval > 0


def test_a_broken_frame_while_waiting_reverses(h):
    h.debits.start()
    h.accept()
    out = h.debit("100000123")
    h.t.protocol.dataReceived(b"XXXXXXXX")
    assert out[0].status == "REVERSING" and "bad frame" in out[0].message
    h.reconnect()
    assert h.frames()[0].startswith("561|")


def test_a_connection_closing_for_idleness_is_not_used(store, tmp_path):
    h = Host(store, tmp_path, options={"debit_idle": 20})
    t = h.accept()
    t.hold = True
    h.advance(20)  # closing: connectionLost has not come yet
    assert t.disconnecting and not t.closed
    out = h.debit("100000123")
    assert split_frames(t.written) == []  # not written into a closing connection
    t.close()
    t2 = h.reconnect()
    assert split_frames(t2.value())[0].startswith("560|")
    h.answer(f"000|扣款成功|{S1}|KK0001|2730.00|")
    assert out[0].status == "DEBITED"


def test_make_services_on_the_real_gateway_service(tmp_path):
    from twisted.internet.testing import MemoryReactorClock

    from bankgate.app.config import default_config
    from bankgate.app.demo import Demo
    from bankgate.app.service import GatewayService

    cfg = default_config(str(tmp_path / "var"))
    delim = next(b for b in cfg.banks if b.name == "demo-delim")
    delim.options = {"withholding": True, "debit_host": "tcp:host=127.0.0.1:port=9202",
                     "utility_code": "HEAT0001", "debit_host_simulate": True}
    gw = GatewayService(cfg, MemoryReactorClock(), demo=Demo())
    gw.card_debits, svcs = make_services(gw, simulated_host=gw.demo.simulated_host)
    assert [s.name for s in svcs] == ["demo-delim-simulated-debit-host", "demo-delim-debit-link",
                                      "card-debit-queue"]
    assert gw.card_debits.banks["demo-delim"].opts.utility_code == "HEAT0001"
    gw.store.stop()


# -- fuzzing what the host may send ------------------------------------------------------

_answers = st.one_of(
    st.binary(max_size=80),
    st.lists(st.sampled_from(["000", "104", "101", "006", "008", "S1", "S2", "KK1", "2730.00",
                              "", "x", "扣款成功", "|", "1.5"]), max_size=7).map(
        lambda xs: frame("|".join(xs) + "|")),
    st.binary(max_size=40).map(lambda b: b"%08d" % len(b) + b),
)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["560", "561"]), chunks=st.lists(_answers, max_size=4))
def test_whatever_the_host_sends_the_link_never_breaks(kind, chunks):
    clock = task.Clock()
    ep = FakeEndpoint()
    link = DebitLink("dl", ep, clock, DELIM, WithholdingOptions(enabled=True, debit_idle=0),
                     jitter=lambda: 0.0)
    link.service.startService()
    factory, d = ep.pending.popleft()
    proxy = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    t = ClosingTransport(clock)
    t.protocol = proxy
    proxy.makeConnection(t)
    d.callback(proxy)
    out = []
    link.exchange(kind, b"request", "S1", 30).addBoth(out.append)
    for c in chunks:
        if t.closed:
            break
        proxy.dataReceived(c)
        clock.advance(0)
    clock.advance(31)
    r, = out
    assert r.status in ("answer", "malformed", "lost", "timeout")
    if r.status == "answer":
        key = "utility_serial" if kind == "560" else "orig_utility_serial"
        assert r.decoded[key] in ("", "S1")
        if kind == "560" and r.decoded["debited"]:
            assert r.decoded["code"] in ("000", "104") and r.decoded["bank_serial"]


def test_a_slow_answer_after_the_timeout_changes_nothing(h):
    h.debits.start()
    t1 = h.accept()
    t1.hold = True  # the late answer still reaches the old connection
    out = h.debit("100000123")
    h.advance(30)
    assert out[0].status == "REVERSING"
    h.answer(f"000|扣款成功|{S1}|KK0001|2730.00|", t=t1)  # 31 s late
    assert h.row(S1)["status"] == "REVERSING" and h.payments() == []
    t1.close()
    h.reconnect()
    assert h.frames()[0].startswith("561|")
    h.answer(f"000|冲正成功|{S1}|")
    assert h.row(S1)["status"] == "REVERSED" and h.payments() == []
