"""bankgate.wire.listener: codec + ledger over a framing protocol, no sockets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure

from bankgate.canon.masking import mask_pan
from bankgate.canon.messages import Origin, Outcome, ReversalRequest, ReversalResult
from bankgate.codec.base import BankProfile, Close, Dispatch, Framing, Reply
from bankgate.wire.listener import BankFactory

NOW = datetime(2024, 1, 15, 10, 30, 0)
PAN = "6222021234567890123"


@dataclass(frozen=True)
class FakeRequest:
    serial: str
    customer_no: str
    amount: int


@dataclass(frozen=True)
class FakeResult:
    outcome: Outcome
    serial: str


class FakeCodec:
    """Frames are ASCII commands:

    ``PAY <serial>`` dispatch, ``ECHO`` reply, ``BYE`` close, ``BOOM`` raise,
    ``BADENC <serial>`` dispatch whose encode raises, ``ODD`` not an action.
    """

    name = "fake"

    def __init__(self, framing: Framing):
        self.framing = framing
        self.sessions = []

    def decode(self, frame, session):
        self.sessions.append(session)
        cmd, _, arg = frame.decode("latin-1").partition(" ")
        if cmd == "ECHO":
            return Reply(b"ECHO-OK", txname="echo")
        if cmd == "BYE":
            return Close("bye")
        if cmd == "BOOM":
            raise RuntimeError("codec bug")
        if cmd == "ODD":
            return "not an action"
        if cmd in ("PAY", "BADENC"):
            serial = arg.split(" ")[0]  # anything after it is ignored
            req = FakeRequest(serial=serial, customer_no="C" + serial, amount=100)

            def encode(result):
                if cmd == "BADENC":
                    raise ValueError("encode bug")
                return f"{result.outcome.value} {result.serial}".encode()

            return Dispatch(req, encode, txname="pay", log={"pan": mask_pan(PAN)})
        return Close("garbage")


class Ledger:
    """A handler whose answers the test fires by hand (or at once)."""

    def __init__(self, immediate=False):
        self.immediate = immediate
        self.pending: list[tuple[FakeRequest, defer.Deferred]] = []
        self.computed: list[FakeResult] = []

    def __call__(self, request):
        if self.immediate:
            return defer.succeed(self.result(request))
        d = defer.Deferred()
        self.pending.append((request, d))
        return d

    def result(self, request):
        r = FakeResult(Outcome.OK, request.serial)
        self.computed.append(r)
        return r

    def fire(self, i):
        request, d = self.pending[i]
        d.callback(self.result(request))


def make(framing=None, ledger=None, profile=None, codec=None, log_frames=False):
    framing = framing or Framing("ascii4", 9999, idle_timeout=60.0)
    codec = codec or FakeCodec(framing)
    ledger = ledger if ledger is not None else Ledger(immediate=True)
    events = []
    clock = Clock()
    factory = BankFactory(
        codec,
        profile or BankProfile("bank-a", "fake", "001"),
        ledger,
        clock,
        now=lambda: NOW,
        log=events.append,
        log_frames=log_frames,
    )
    proto = factory.buildProtocol(IPv4Address("TCP", "10.1.2.3", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 40000))
    proto.makeConnection(transport)
    return proto, transport, factory, ledger, events, clock


def frame(text: str) -> bytes:
    return b"%04d" % len(text) + text.encode()


def txn_events(events):
    return [e for e in events if e.get("txn")]


# -- the basics -----------------------------------------------------------------


def test_session_per_connection():
    p, _t, f, _, _, _ = make()
    p.dataReceived(frame("ECHO"))
    s = f.codec.sessions[0]
    assert s.peer_host == "10.1.2.3"
    assert s.now() == NOW
    assert s.bank.name == "bank-a"
    assert len(s.random_bytes(8)) == 8
    assert s.state == {}
    assert f.stats.connections_open == 1 and f.stats.connections_total == 1


def test_reply_written_with_prefix():
    p, t, f, _, _events, _ = make()
    p.dataReceived(frame("ECHO"))
    assert t.value() == b"0007ECHO-OK"
    assert not t.disconnecting
    assert f.stats.outcomes["OK"] == 1
    assert f.stats.last_message == NOW


def test_close_action_closes_without_answer():
    p, t, f, _, _, _ = make()
    p.dataReceived(frame("BYE") + frame("ECHO"))
    assert t.value() == b"" and t.disconnecting
    assert f.stats.rejected == 1


def test_dispatch_answers_from_ledger():
    p, t, _f, _ledger, _, _ = make()
    p.dataReceived(frame("PAY 1"))
    assert t.value() == frame("OK 1")
    assert not t.disconnecting


def test_bad_prefix_closes_and_counts():
    p, t, f, _, _events, _ = make()
    p.dataReceived(b"00x1PAY 1")
    assert t.disconnecting and t.value() == b""
    assert f.stats.rejected == 1


# -- ordering -------------------------------------------------------------------


def test_sequential_answers_in_order_one_at_a_time():
    ledger = Ledger()
    p, t, _f, _, _, _ = make(ledger=ledger)
    p.dataReceived(frame("PAY 1") + frame("PAY 2") + frame("ECHO") + frame("PAY 3"))
    assert [r.serial for r, _ in ledger.pending] == ["1"]  # the rest wait
    assert t.value() == b""
    ledger.fire(0)
    assert t.value() == frame("OK 1")
    assert [r.serial for r, _ in ledger.pending] == ["1", "2"]
    ledger.fire(1)
    # the echo is answered at once, then PAY 3 is dispatched
    assert t.value() == frame("OK 1") + frame("OK 2") + b"0007ECHO-OK"
    ledger.fire(2)
    assert t.value() == frame("OK 1") + frame("OK 2") + b"0007ECHO-OK" + frame("OK 3")
    p.dataReceived(frame("PAY 4"))
    ledger.fire(3)
    assert t.value().endswith(frame("OK 4"))


def test_pipelined_out_of_order_completion():
    framing = Framing("tpdu2", 4096, pipelined=True)
    ledger = Ledger()
    p, t, f, _, _, _ = make(framing=framing, ledger=ledger)

    def tf(text):
        return len(text).to_bytes(2, "big") + text.encode()

    p.dataReceived(tf("PAY 1") + tf("PAY 2") + b"\x00\x00" + tf("PAY 3"))
    assert [r.serial for r, _ in ledger.pending] == ["1", "2", "3"]
    assert f.stats.in_flight == 3
    ledger.fire(2)
    ledger.fire(1)
    p.dataReceived(tf("ECHO"))  # answered at once, overtaking PAY 1
    ledger.fire(0)
    assert t.value() == tf("OK 3") + tf("OK 2") + tf("ECHO-OK") + tf("OK 1")
    assert f.stats.in_flight == 0 and not t.disconnecting


def test_pipelined_limit_pauses_reading():
    framing = Framing("ascii4", 9999, pipelined=True)
    ledger = Ledger()
    p, t, f, _, _, _ = make(framing=framing, ledger=ledger)
    f.max_in_flight = 2
    p.dataReceived(frame("PAY 1") + frame("PAY 2") + frame("PAY 3"))
    assert len(ledger.pending) == 2
    ledger.fire(1)
    assert len(ledger.pending) == 3
    ledger.fire(0)
    ledger.fire(2)
    assert t.value() == frame("OK 2") + frame("OK 1") + frame("OK 3")


def test_one_per_connection_dispatch():
    framing = Framing("ascii8", 65536, one_per_connection=True, idle_timeout=30.0)
    ledger = Ledger()
    p, t, _f, _, _, _ = make(framing=framing, ledger=ledger)
    p.dataReceived(b"00000005PAY 1" + b"00000005PAY 2")
    assert len(ledger.pending) == 1
    ledger.fire(0)
    assert t.value() == b"00000004OK 1"
    assert t.disconnecting
    assert len(ledger.pending) == 1


def test_one_per_connection_reply():
    framing = Framing("ascii8", 65536, one_per_connection=True)
    p, t, _f, _, _, _ = make(framing=framing)
    p.dataReceived(b"00000004ECHO00000004ECHO")
    assert t.value() == b"00000007ECHO-OK"
    assert t.disconnecting


# -- failures -------------------------------------------------------------------


def failures(events):
    return [e for e in events if "log_failure" in e]


def test_codec_raising_is_logged_and_closes():
    p, t, f, _, events, _ = make()
    p.dataReceived(frame("BOOM") + frame("ECHO"))
    assert t.disconnecting and t.value() == b""
    assert f.stats.errors == 1
    [e] = failures(events)
    assert e["log_failure"].check(RuntimeError)


def test_codec_returning_non_action_closes():
    p, t, f, _, _events, _ = make()
    p.dataReceived(frame("ODD"))
    assert t.disconnecting and f.stats.errors == 1


def test_encode_raising_is_logged_and_closes():
    p, t, _f, _, events, _ = make()
    p.dataReceived(frame("BADENC 7"))
    assert t.disconnecting and t.value() == b""
    [e] = failures(events)
    assert e["log_failure"].check(ValueError)


def test_handler_failing_is_logged_and_closes():
    ledger = Ledger()
    p, t, f, _, events, _ = make(ledger=ledger)
    p.dataReceived(frame("PAY 1"))
    ledger.pending[0][1].errback(Failure(ZeroDivisionError("db")))
    assert t.disconnecting and t.value() == b""
    assert f.stats.errors == 1 and f.stats.in_flight == 0
    [e] = failures(events)
    assert e["log_failure"].check(ZeroDivisionError)
    assert e["log_level"] == LogLevel.error


def test_handler_raising_synchronously():
    def handler(request):
        raise KeyError("sync")

    p, t, f, _, _events, _ = make(ledger=handler)
    p.dataReceived(frame("PAY 1"))
    assert t.disconnecting and f.stats.errors == 1


def test_connection_lost_mid_request():
    ledger = Ledger()
    p, t, f, _, events, _ = make(ledger=ledger)
    p.dataReceived(frame("PAY 1") + frame("PAY 2"))
    p.connectionLost(Failure(ConnectionDone()))
    assert f.stats.connections_open == 0
    ledger.fire(0)  # the ledger still computes (and commits) its result
    assert ledger.computed == [FakeResult(Outcome.OK, "1")]
    assert t.value() == b""
    assert len(ledger.pending) == 1  # the queued frame is dropped
    assert f.stats.unanswered == 1 and f.stats.errors == 0
    [e] = txn_events(events)
    assert e["answered"] is False


# -- idle timeout ------------------------------------------------------------------


def test_idle_timeout_from_profile_and_not_while_in_flight():
    ledger = Ledger()
    profile = BankProfile("bank-a", "fake", "001", idle_timeout=10.0)
    p, t, _f, _, _, clock = make(ledger=ledger, profile=profile)
    p.dataReceived(frame("PAY 1"))
    clock.advance(25)  # the ledger is slow: that is not the bank being idle
    assert not t.disconnecting
    ledger.fire(0)
    clock.advance(9.9)
    assert not t.disconnecting
    clock.advance(0.2)
    assert t.disconnecting
    assert clock.getDelayedCalls() == []


def test_idle_timeout_with_memory_reactor_clock():
    reactor = MemoryReactorClock()
    framing = Framing("ascii4", 9999, idle_timeout=60.0)
    factory = BankFactory(
        FakeCodec(framing),
        BankProfile("b", "fake", "1"),
        Ledger(immediate=True),
        reactor,
        log=[].append,
    )
    p = factory.buildProtocol(None)
    t = StringTransport()
    p.makeConnection(t)
    p.dataReceived(b"00")
    reactor.advance(61)
    assert t.disconnecting


# -- logging and stats ---------------------------------------------------------------


def test_transaction_log_line():
    ledger = Ledger()
    p, _t, _f, _, events, clock = make(ledger=ledger)
    p.dataReceived(frame("PAY 42"))
    clock.advance(0.25)
    ledger.fire(0)
    [e] = txn_events(events)
    assert e["log_level"] == LogLevel.info
    assert (e["bank"], e["txname"], e["serial"], e["customer"], e["amount"]) == (
        "bank-a",
        "pay",
        "42",
        "C42",
        100,
    )
    assert e["outcome"] == "OK" and e["ms"] == 250.0
    assert e["fields"] == {"pan": "622202*********0123"}
    text = formatEvent(e)
    assert "bank-a pay serial=42" in text and "250.0ms" in text


def test_raw_frames_not_logged_unless_asked():
    p, _t, _f, _, events, _ = make()
    p.dataReceived(frame("PAY 9 " + PAN))
    assert not [e for e in events if "frame" in e]
    assert txn_events(events)


def test_raw_frames_only_at_debug_and_masked():
    p, _t, _f, _, events, _ = make(log_frames=True)
    p.dataReceived(frame("PAY 9 " + PAN))
    debug = [e for e in events if e["log_level"] == LogLevel.debug and "frame" in e]
    assert len(debug) == 2  # in and out
    for e in events:
        assert PAN not in formatEvent(e)
        if e["log_level"] != LogLevel.debug:
            assert "frame" not in e


def test_codec_mask_frame_is_used():
    framing = Framing("ascii4", 9999)

    class Masking(FakeCodec):
        def mask_frame(self, frame):
            return frame.decode().replace(PAN, mask_pan(PAN))

    p, _t, _f, _, events, _ = make(codec=Masking(framing), log_frames=True)
    p.dataReceived(frame("PAY 9 " + PAN))
    texts = [formatEvent(e) for e in events if e["log_level"] == LogLevel.debug]
    assert any("PAY 9 622202*********0123" in x for x in texts)


def test_logger_can_be_passed():
    from twisted.logger import Logger

    events = []
    log = Logger(namespace="x", observer=events.append)
    framing = Framing("ascii4", 9999)
    f = BankFactory(
        FakeCodec(framing), BankProfile("b", "fake", "1"), Ledger(True), Clock(), log=log
    )
    assert f.log is log


def test_stats_count_outcomes_and_connections():
    p, _t, f, _, _, _ = make()
    p.dataReceived(frame("PAY 1") + frame("ECHO"))
    p2 = f.buildProtocol(None)
    p2.makeConnection(StringTransport())
    assert f.stats.connections_open == 2
    p2.connectionLost(Failure(ConnectionDone()))
    assert f.stats.connections_open == 1
    assert f.stats.transactions == 2 and f.stats.outcomes["OK"] == 2


def test_connection_open_and_close_are_debug_lines():
    p, _t, _f, _, events, _ = make()
    p.connectionLost(Failure(ConnectionDone()))
    lines = [(e["log_level"], formatEvent(e)) for e in events]
    assert (LogLevel.debug, "bank-a: connection from 10.1.2.3") in lines
    assert (LogLevel.debug, "bank-a: connection closed") in lines
    assert all(level == LogLevel.debug for level, _ in lines)


def test_codec_fields_are_in_the_text_masked():
    p, _t, _f, _, events, _ = make()
    p.dataReceived(frame("PAY 7 " + PAN))
    text = formatEvent(txn_events(events)[0])
    assert "pan=622202*********0123" in text and PAN not in text
    assert "None" not in text


class ReversingCodec(FakeCodec):
    """``REV <orig_serial>``: a reversal without a serial or customer of its own (as
    ISO 8583 sends it), the codec's log naming only the message type."""

    def decode(self, frame, session):
        cmd, _, arg = frame.decode("latin-1").partition(" ")
        if cmd != "REV":
            return super().decode(frame, session)
        req = ReversalRequest(origin=Origin(bank="bank-a", trade_date=NOW.date()),
                              orig_serial=arg, customer_no=None, amount=500)
        return Dispatch(req, lambda r: r.outcome.value.encode(), txname="reversal",
                        log={"mti": "0400"})


def reversing(result):
    """A factory whose ledger answers every request with ``result``."""
    framing = Framing("ascii4", 9999)
    events = []
    factory = BankFactory(ReversingCodec(framing), BankProfile("bank-a", "fake", "001"),
                          lambda req: defer.succeed(result), Clock(), now=lambda: NOW,
                          log=events.append)
    p = factory.buildProtocol(None)
    p.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 4)))
    return p, events


def test_refused_reversal_line_names_the_payment_and_the_ledgers_reason():
    result = ReversalResult(Outcome.ORIGINAL_NOT_FOUND, orig_serial="BK9",
                            message="no payment BK9 of 2024-01-15")
    p, events = reversing(result)
    p.dataReceived(frame("REV BK9"))
    [e] = txn_events(events)
    assert (e["orig_serial"], e["orig_date"]) == ("BK9", "2024-01-15")
    assert e["reason"] == "no payment BK9 of 2024-01-15"
    assert e["outcome"] == "ORIGINAL_NOT_FOUND"
    text = formatEvent(e)
    assert text.startswith("bank-a reversal amount=500 orig_serial=BK9 of 2024-01-15 mti=0400"
                           " outcome=ORIGINAL_NOT_FOUND"
                           ' reason="no payment BK9 of 2024-01-15" ')
    assert "None" not in text


def test_done_reversal_line_names_the_customer_the_ledger_found():
    result = ReversalResult(Outcome.OK, customer_no="100000123", orig_serial="BK9",
                            amount=500, message="")
    p, events = reversing(result)
    p.dataReceived(frame("REV BK9"))
    [e] = txn_events(events)
    assert e["customer"] == "100000123" and e["reason"] is None
    text = formatEvent(e)
    assert "customer=100000123 amount=500 orig_serial=BK9 of 2024-01-15" in text
    assert "reason" not in text


def test_payment_line_names_its_receipt():
    framing = Framing("ascii4", 9999)
    events = []
    f = BankFactory(FakeCodec(framing), BankProfile("b", "fake", "1"),
                    lambda req: defer.succeed(_Paid(Outcome.OK, req.serial, "R123")),
                    Clock(), log=events.append)
    p = f.buildProtocol(None)
    p.makeConnection(StringTransport())
    p.dataReceived(frame("PAY 5"))
    [e] = txn_events(events)
    assert e["receipt"] == "R123" and "receipt=R123 " in formatEvent(e)


@dataclass(frozen=True)
class _Paid:
    outcome: Outcome
    serial: str
    receipt_no: str


def test_iso8583_reversal_line_names_the_rrn_it_reverses():
    """The real ref-iso8583 codec: a 0400 carries no serial or customer of its own."""
    from bankgate.codec.base import BankKeys, Session
    from bankgate.codec.registry import load_codec

    iso = load_codec("ref-iso8583")
    key = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    profile = BankProfile("bank-i", "ref-iso8583", "104210", keys=BankKeys(zmk=key),
                          allow=("10.0.0.0/8",))
    result = ReversalResult(Outcome.ORIGINAL_NOT_FOUND, orig_serial="123456789012",
                            message="no payment 123456789012 of 2024-01-15")
    events = []
    f = BankFactory(iso, profile, lambda req: defer.succeed(result), Clock(), now=lambda: NOW,
                    log=events.append, random_bytes=lambda n: bytes(range(n)))
    p = f.buildProtocol(None)
    t = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 4))
    p.makeConnection(t)
    bank_side = Session(bank=profile, now=lambda: NOW)

    def ask(txn, values):
        out = iso.client_encode(txn, values, bank_side)
        t.clear()
        p.dataReceived(len(out).to_bytes(2, "big") + out)
        return iso.client_decode(t.value()[2:], bank_side)

    ask("signin", {})
    ask("reverse", {"amount": 1000, "rrn": "123456789012"})
    [e] = [e for e in txn_events(events) if e["txname"] != "signin"]
    text = formatEvent(e)
    assert e["orig_serial"] == "123456789012" and e["orig_date"] == "2024-01-15"
    assert "amount=1000 orig_serial=123456789012 of 2024-01-15" in text
    assert 'outcome=ORIGINAL_NOT_FOUND reason="no payment 123456789012 of 2024-01-15"' in text
    assert "serial=None" not in text and "customer=None" not in text
    assert "rrn=" not in text  # named once, as the payment reversed


@pytest.mark.parametrize(
    "pan, masked",
    [
        ("6222021234567890123", "622202*********0123"),
        ("4111111111111111", "411111******1111"),
        ("1234567890", "******7890"),
        ("1234", "****"),
        ("", ""),
        (None, ""),
    ],
)
def test_mask_pan(pan, masked):
    assert mask_pan(pan) == masked


# -- property test ---------------------------------------------------------------------

WORDS = [frame(w) for w in ("PAY 1", "ECHO", "BYE", "BOOM", "BADENC 2", "ODD", "PAY 3")]


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(["ascii4", "tpdu2"]),
    mode=st.sampled_from(["seq", "pipe", "one"]),
    parts=st.lists(st.one_of(st.sampled_from(WORDS), st.binary(max_size=20)), max_size=10),
    cuts=st.lists(st.integers(min_value=1, max_value=30), max_size=10),
    fire=st.lists(st.integers(min_value=0, max_value=20), max_size=10),
)
def test_engine_random_streams_never_raise(kind, mode, parts, cuts, fire):
    framing = Framing(kind, 256, pipelined=mode == "pipe", one_per_connection=mode == "one")
    ledger = Ledger()
    p, _t, f, _, _, clock = make(framing=framing, ledger=ledger)
    data = b"".join(parts)
    pos = 0
    for c in cuts + [len(data)]:
        p.dataReceived(data[pos : pos + c])
        pos += c
        for i in fire:
            if i < len(ledger.pending) and not ledger.pending[i][1].called:
                ledger.fire(i)
        clock.advance(1)
    i = 0
    while i < len(ledger.pending):  # firing one may release the next queued frame
        if not ledger.pending[i][1].called:
            ledger.fire(i)
        i += 1
    clock.advance(120)
    assert f.stats.in_flight == 0
