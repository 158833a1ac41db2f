"""bankgate.wire.framing: length prefixes, limits, keep-alives, idle timeout."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from bankgate.codec.base import Framing
from bankgate.wire.framing import (
    Ascii4Receiver,
    Ascii6Receiver,
    Ascii8Receiver,
    FrameReceiver,
    FrameTooLong,
    Tpdu2Receiver,
    receiver_class,
    receiver_options,
)


def recording(base: type[FrameReceiver]) -> type[FrameReceiver]:
    class Recorder(base):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.frames: list[bytes] = []
            self.errors: list[str] = []

        def frameReceived(self, frame):
            self.frames.append(frame)

        def frameError(self, reason):
            self.errors.append(reason)

    return Recorder


def connect(base=Ascii4Receiver, **kw):
    clock = Clock()
    p = recording(base)(clock, **kw)
    t = StringTransport()
    p.makeConnection(t)
    return p, t, clock


# -- ascii4 (ref-fixed) -------------------------------------------------------


def test_ascii4_byte_by_byte():
    p, t, _ = connect()
    for b in b"0005hello0003abc00":
        p.dataReceived(bytes([b]))
    assert p.frames == [b"hello", b"abc"]
    assert not t.disconnecting


def test_ascii4_several_frames_in_one_chunk():
    p, _t, _ = connect()
    p.dataReceived(b"0001a0002bc0003def0004gh")
    assert p.frames == [b"a", b"bc", b"def"]
    p.dataReceived(b"ij")
    assert p.frames[-1] == b"ghij"


@pytest.mark.parametrize(
    "prefix", [b"00a1", b" 001", b"+001", b"-001", b"0x10", b"\xef\xbc\x91001"]
)
def test_ascii4_bad_prefix_closes_without_answer(prefix):
    p, t, _ = connect()
    p.dataReceived(b"0001a" + prefix + b"xxxxxxxx")
    assert p.frames == [b"a"]
    assert t.disconnecting and t.value() == b""
    assert p.errors
    p.dataReceived(b"0001b")  # ignored after the decision to close
    assert p.frames == [b"a"]


def test_ascii4_zero_length_closes():
    p, t, _ = connect()
    p.dataReceived(b"0000")
    assert t.disconnecting and p.frames == []


def test_ascii4_max_length_is_declared_one():
    p, t, _ = connect(max_length=10)
    p.dataReceived(b"0010" + b"x" * 10)
    assert p.frames == [b"x" * 10]
    p.dataReceived(b"0011")
    assert t.disconnecting


def test_ascii4_9999_accepted():
    p, _t, _ = connect()
    p.dataReceived(b"9999" + b"y" * 9999)
    assert p.frames == [b"y" * 9999]


def test_ascii4_send_frame():
    p, t, _ = connect()
    p.sendFrame(b"hello")
    p.sendFrame(b"x" * 9999)
    assert t.value() == b"0005hello" + b"9999" + b"x" * 9999
    with pytest.raises(FrameTooLong):
        p.sendFrame(b"x" * 10000)


# -- ascii8 (ref-delim) -------------------------------------------------------


def test_ascii8_frames_and_send():
    p, t, _ = connect(Ascii8Receiver)
    p.dataReceived(b"00000004ab|c00000002")
    p.dataReceived(b"d|")
    assert p.frames == [b"ab|c", b"d|"]
    p.sendFrame(b"000|ok|")
    assert t.value() == b"00000007000|ok|"


@pytest.mark.parametrize(
    "prefix", [b"00000000", b"00065537", b"99999999", b"0000001a", b"       1"]
)
def test_ascii8_bad_prefixes_close(prefix):
    p, t, _ = connect(Ascii8Receiver)
    p.dataReceived(prefix + b"x" * 20)
    assert t.disconnecting and p.frames == [] and t.value() == b""


def test_ascii8_max_65536_accepted():
    p, t, _ = connect(Ascii8Receiver)
    p.dataReceived(b"00065536" + b"z" * 65536)
    assert p.frames == [b"z" * 65536] and not t.disconnecting


# -- ascii6 (ref-xml) ---------------------------------------------------------


def test_ascii6_frames_and_send():
    p, t, _ = connect(Ascii6Receiver)
    p.dataReceived(b"000003abc000001")
    p.dataReceived(b"d")
    assert p.frames == [b"abc", b"d"] and p.max_length == 8192
    p.sendFrame(b"<x/>")
    assert t.value() == b"000004<x/>"


@pytest.mark.parametrize("prefix", [b"00008a", b" 00003", b"+00003", b"0000-3", b"00\x0003"])
def test_ascii6_prefix_not_6_digits_closes_unanswered(prefix):
    p, t, _ = connect(Ascii6Receiver)
    p.dataReceived(prefix + b"abc")
    assert t.disconnecting and p.frames == [] and t.value() == b""
    assert p.errors == ["bad length prefix"]


def test_ascii6_8192_accepted_8193_closes():
    p, t, _ = connect(Ascii6Receiver)
    p.dataReceived(b"008192" + b"x" * 8192)
    assert len(p.frames) == 1 and not t.disconnecting
    p, t, _ = connect(Ascii6Receiver)
    p.dataReceived(b"008193")  # refused on the prefix: the bytes are not awaited
    assert t.disconnecting and p.frames == [] and t.value() == b""
    p, t, _ = connect(Ascii6Receiver)
    p.dataReceived(b"000000")
    assert t.disconnecting and p.errors == ["zero length"]


def test_ascii6_deadline_is_not_reset_by_bytes():
    """A request must be complete within 30 s of the connection, however the
    bytes trickle in."""
    p, t, clock = connect(Ascii6Receiver, idle_timeout=30)
    for b in b"000010abcdefg":
        clock.advance(2)
        p.dataReceived(bytes([b]))
    assert not t.disconnecting
    clock.advance(30 - 2 * 13 - 0.1)
    assert not t.disconnecting
    clock.advance(0.2)
    assert t.disconnecting and p.frames == []


def test_ascii6_options_from_the_declaration():
    framing = Framing("ascii6", 8192, one_per_connection=True, idle_timeout=30.0)
    assert receiver_class(framing) is Ascii6Receiver
    opts = receiver_options(framing)
    assert opts["idle_from_start"] is True and opts["max_length"] == 8192
    assert receiver_options(Framing("ascii4", 9999))["idle_from_start"] is False
    p = recording(FrameReceiver)(Clock(), **opts)
    t = StringTransport()
    p.makeConnection(t)
    p.dataReceived(b"000002ok")
    assert p.frames == [b"ok"]


# -- tpdu2 (ref-iso8583) ------------------------------------------------------


def test_tpdu2_frame_includes_tpdu():
    p, t, _ = connect(Tpdu2Receiver)
    tpdu = b"\x60\x00\x01\x00\x02"
    p.dataReceived(b"\x00\x09" + tpdu + b"0800")
    assert p.frames == [tpdu + b"0800"]
    p.sendFrame(tpdu + b"0810")
    assert t.value() == b"\x00\x09" + tpdu + b"0810"


def test_tpdu2_keepalive_ignored():
    p, t, clock = connect(Tpdu2Receiver, idle_timeout=10)
    p.dataReceived(b"\x00\x00\x00\x00\x00\x01a\x00")
    p.dataReceived(b"\x00")
    assert p.frames == [b"a"]
    assert t.value() == b"" and not t.disconnecting
    clock.advance(9)
    p.dataReceived(b"\x00\x00")  # a keep-alive keeps the connection alive
    clock.advance(9)
    assert not t.disconnecting


def test_tpdu2_over_4096_closes():
    p, t, _ = connect(Tpdu2Receiver)
    p.dataReceived(b"\x10\x00" + b"k" * 4096)
    assert p.frames == [b"k" * 4096]
    p.dataReceived(b"\x10\x01")
    assert t.disconnecting


def test_tpdu2_send_limit():
    p, _t, _ = connect(Tpdu2Receiver)
    with pytest.raises(FrameTooLong):
        p.sendFrame(b"x" * 65536)


# -- idle timeout ---------------------------------------------------------------


def test_idle_timeout_closes():
    _p, t, clock = connect(idle_timeout=60)
    clock.advance(59.9)
    assert not t.disconnecting
    clock.advance(0.2)
    assert t.disconnecting


def test_idle_timeout_reset_by_every_byte():
    p, t, clock = connect(idle_timeout=60)
    for b in b"0003abc":
        clock.advance(50)
        p.dataReceived(bytes([b]))
    assert p.frames == [b"abc"] and not t.disconnecting
    clock.advance(60)
    assert t.disconnecting


def test_idle_timeout_announced_bytes_not_delivered():
    p, t, clock = connect(Ascii8Receiver, idle_timeout=30)
    p.dataReceived(b"00000100" + b"x" * 50)
    clock.advance(30)
    assert t.disconnecting and p.frames == [] and t.value() == b""


def test_idle_timer_cancelled_on_connection_lost():
    p, _t, clock = connect(idle_timeout=60)
    p.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == []
    p.dataReceived(b"0001a")
    assert p.frames == []


def test_no_timeout_when_disabled():
    _p, _t, clock = connect(idle_timeout=0)
    assert clock.getDelayedCalls() == []


# -- pausing ------------------------------------------------------------------


def test_pause_holds_frames_and_resume_delivers_in_order():
    class Pausing(recording(Ascii4Receiver)):
        def frameReceived(self, frame):
            super().frameReceived(frame)
            self.pauseFrames()

    p = Pausing(Clock())
    t = StringTransport()
    p.makeConnection(t)
    p.dataReceived(b"0001a0001b0001c")
    assert p.frames == [b"a"]
    p.resumeFrames()
    assert p.frames == [b"a", b"b"]
    p.resumeFrames()
    p.resumeFrames()
    assert p.frames == [b"a", b"b", b"c"]


def test_paused_transport_when_too_much_waits():
    p, t, _ = connect()
    p.max_buffered = 100
    p.pauseFrames()
    p.dataReceived(b"0050" + b"a" * 50)
    assert t.producerState == "producing"
    p.dataReceived(b"0050" + b"b" * 50)
    assert t.producerState == "paused"
    p.resumeFrames()
    assert t.producerState == "producing"
    assert p.frames == [b"a" * 50, b"b" * 50]


# -- choosing from a Framing declaration ---------------------------------------


def test_receiver_class_and_options():
    assert receiver_class(Framing("ascii4", 9999)) is Ascii4Receiver
    assert receiver_class(Framing("ascii8", 65536)) is Ascii8Receiver
    assert receiver_class(Framing("tpdu2", 4096)) is Tpdu2Receiver
    with pytest.raises(ValueError):
        receiver_class(Framing("ascii5", 10))
    opts = receiver_options(Framing("ascii8", 65536, idle_timeout=30.0))
    assert opts["max_length"] == 65536 and opts["idle_timeout"] == 30.0
    assert receiver_options(Framing("ascii8", 65536), idle_timeout=5)["idle_timeout"] == 5
    assert receiver_options(Framing("tpdu2", 4096))["keepalive_empty"] is True
    p = recording(FrameReceiver)(Clock(), **receiver_options(Framing("tpdu2", 4096)))
    p.makeConnection(StringTransport())
    p.dataReceived(b"\x00\x00\x00\x01q")
    assert p.frames == [b"q"]


# -- property tests -------------------------------------------------------------

KINDS = [Ascii4Receiver, Ascii8Receiver, Ascii6Receiver, Tpdu2Receiver]


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for c in points + [len(data)]:
        out.append(data[prev:c])
        prev = c
    return out


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    data=st.binary(max_size=300),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=20),
    ticks=st.lists(st.floats(min_value=0, max_value=40), max_size=5),
)
def test_random_streams_never_raise(kind, data, cuts, ticks):
    p, _t, clock = connect(kind, max_length=64, idle_timeout=30)
    for i, chunk in enumerate(chunks(data, cuts)):
        p.dataReceived(chunk)
        if i < len(ticks):
            clock.advance(ticks[i])
    assert all(0 < len(f) <= 64 for f in p.frames)


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    frames=st.lists(st.binary(min_size=1, max_size=80), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=800), max_size=30),
)
def test_frames_survive_any_chunking(kind, frames, cuts):
    sender = kind(None)
    out = StringTransport()
    sender.makeConnection(out)
    for f in frames:
        sender.sendFrame(f)
    p, t, _ = connect(kind, max_length=80)
    for chunk in chunks(out.value(), cuts):
        p.dataReceived(chunk)
    assert p.frames == frames and not t.disconnecting
