"""Length-prefixed framing for bank connections.

The protocols here only cut a byte stream into frames and put a prefix on
the frames they send, in the manner of
:class:`twisted.protocols.basic.IntNStringReceiver`:

- ``ascii4``: 4 ASCII digits, 0001-9999 (``ref-fixed``);
- ``ascii8``: 8 ASCII digits, 1..max_length (``ref-delim``);
- ``ascii6``: 6 ASCII digits, 1..max_length (``ref-xml``, 8192); its idle
  timeout is a deadline from the connection's start (see
  :attr:`FrameReceiver.idle_from_start`);
- ``tpdu2``: 2-byte big-endian length; ``0`` is a keep-alive, ignored
  (``ref-iso8583``).  The frame handed up still starts with the TPDU.

A prefix that is not digits, a zero length (unless keep-alives are allowed) or
a length over ``max_length`` closes the connection without answering.  Every
connection has an idle timeout run on an injected clock
(:class:`twisted.internet.interfaces.IReactorTime`), reset by every byte
received and every frame sent; it also catches a peer that announces a frame
and never delivers it.

Subclasses override :meth:`FrameReceiver.frameReceived` (and optionally
:meth:`frameError` and :meth:`idleTimedOut`).  A subclass that must not see
the next frame yet (a request in flight) calls :meth:`pauseFrames` and later
:meth:`resumeFrames`; frames that arrive meanwhile wait in the buffer, and the
transport is paused when too much is waiting.
"""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from bankgate.codec.base import Framing


class FrameTooLong(ValueError):
    """A payload that the prefix cannot announce."""


class AsciiPrefix:
    """``size`` ASCII decimal digits, zero-padded."""

    def __init__(self, size: int):
        self.size = size
        self.limit = 10**size - 1

    def parse(self, header: bytes) -> int | None:
        """The announced length, or ``None`` when the prefix is not digits."""
        if not header.isdigit():  # bytes.isdigit: ASCII 0-9 only, no sign/space
            return None
        return int(header)

    def build(self, n: int) -> bytes:
        return b"%0*d" % (self.size, n)


class BinaryPrefix:
    """``size`` bytes, big-endian unsigned."""

    def __init__(self, size: int):
        self.size = size
        self.limit = 256**size - 1

    def parse(self, header: bytes) -> int | None:
        return int.from_bytes(header, "big")

    def build(self, n: int) -> bytes:
        return n.to_bytes(self.size, "big")


PREFIXES = {
    "ascii4": AsciiPrefix(4),
    "ascii8": AsciiPrefix(8),
    "ascii6": AsciiPrefix(6),
    "tpdu2": BinaryPrefix(2),
}


class FrameReceiver(Protocol):
    """Cut the stream into length-prefixed frames.

    ``clock`` drives the idle timeout (``None`` or ``idle_timeout`` ``None``/0:
    no timeout).  Class attributes give the defaults; constructor arguments
    override them.
    """

    prefix: AsciiPrefix | BinaryPrefix = PREFIXES["ascii4"]
    max_length: int = 9999
    keepalive_empty: bool = False
    idle_timeout: float | None = 60.0
    #: bytes left waiting while paused before the transport itself is paused
    max_buffered: int = 65536
    #: the idle timeout runs from the connection's start and is not reset by
    #: bytes received: a request must be complete within it (a peer sending one
    #: byte at a time cannot hold the connection open)
    idle_from_start: bool = False

    def __init__(
        self,
        clock: IReactorTime | None = None,
        *,
        max_length: int | None = None,
        idle_timeout: float | None = None,
        keepalive_empty: bool | None = None,
        prefix: AsciiPrefix | BinaryPrefix | None = None,
        idle_from_start: bool | None = None,
    ):
        self.clock = clock
        if prefix is not None:
            self.prefix = prefix
        if max_length is not None:
            self.max_length = max_length
        if idle_timeout is not None:
            self.idle_timeout = idle_timeout
        if keepalive_empty is not None:
            self.keepalive_empty = keepalive_empty
        if idle_from_start is not None:
            self.idle_from_start = idle_from_start
        self.max_length = min(self.max_length, self.prefix.limit)
        self._buffer = bytearray()
        self._idle_call: IDelayedCall | None = None
        self._paused = False
        self._transport_paused = False
        self._delivering = False
        self.closing = False  # set once we decided to close or the peer went away

    # -- connection life ----------------------------------------------------

    def connectionMade(self) -> None:
        self.resetIdleTimer()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closing = True
        self._cancel_idle()
        self._buffer.clear()

    def closeConnection(self) -> None:
        """Close (after pending writes are flushed); ignore whatever follows."""
        if not self.closing:
            self.closing = True
            self._cancel_idle()
            self._buffer.clear()
            self.transport.loseConnection()

    # -- receiving ----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        if not self.idle_from_start:
            self.resetIdleTimer()
        self._buffer += data
        self._deliver()
        if (
            self._paused
            and not self.closing
            and not self._transport_paused
            and len(self._buffer) > self.max_buffered
        ):
            self._transport_paused = True
            self.transport.pauseProducing()

    def _deliver(self) -> None:
        if self._delivering:  # re-entered from frameReceived: the outer loop goes on
            return
        self._delivering = True
        try:
            buf = self._buffer
            size = self.prefix.size
            pos = 0
            while not self._paused and not self.closing:
                if len(buf) - pos < size:
                    break
                n = self.prefix.parse(bytes(buf[pos : pos + size]))
                if n is None:
                    self._fail("bad length prefix")
                    return
                if n == 0:
                    if not self.keepalive_empty:
                        self._fail("zero length")
                        return
                    pos += size
                    continue
                if n > self.max_length:
                    self._fail(f"frame of {n} bytes over the maximum {self.max_length}")
                    return
                if len(buf) - pos < size + n:
                    break
                frame = bytes(buf[pos + size : pos + size + n])
                pos += size + n
                self.frameReceived(frame)
        finally:
            if not self.closing:
                del buf[:pos]
            self._delivering = False

    def _fail(self, reason: str) -> None:
        self.frameError(reason)
        self.closeConnection()

    def pauseFrames(self) -> None:
        """Hand up no further frame until :meth:`resumeFrames`."""
        self._paused = True

    def resumeFrames(self) -> None:
        if not self._paused:
            return
        self._paused = False
        if self.closing:
            return
        if self._transport_paused:
            self._transport_paused = False
            self.transport.resumeProducing()
        self._deliver()

    # -- sending ------------------------------------------------------------

    def sendFrame(self, payload: bytes) -> None:
        """Write ``payload`` with its length prefix (nothing once closing)."""
        if len(payload) > self.prefix.limit:
            raise FrameTooLong(f"{len(payload)} bytes do not fit a {self.prefix.size}-byte prefix")
        if self.closing:
            return
        self.resetIdleTimer()
        self.transport.write(self.prefix.build(len(payload)) + payload)

    # -- idle timeout -------------------------------------------------------

    def resetIdleTimer(self) -> None:
        if self.clock is None or not self.idle_timeout or self.closing:
            return
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.reset(self.idle_timeout)
        else:
            self._idle_call = self.clock.callLater(self.idle_timeout, self._idle_expired)

    def _cancel_idle(self) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None

    def _idle_expired(self) -> None:
        self._idle_call = None
        self.idleTimedOut()

    # -- hooks for subclasses ----------------------------------------------

    def frameReceived(self, frame: bytes) -> None:
        raise NotImplementedError

    def frameError(self, reason: str) -> None:
        """The stream broke the framing rules; the connection is closed next."""

    def idleTimedOut(self) -> None:
        """Nothing happened for ``idle_timeout`` seconds.  Default: close."""
        self.closeConnection()


class Ascii4Receiver(FrameReceiver):
    prefix = PREFIXES["ascii4"]
    max_length = 9999


class Ascii8Receiver(FrameReceiver):
    prefix = PREFIXES["ascii8"]
    max_length = 65536


class Ascii6Receiver(FrameReceiver):
    prefix = PREFIXES["ascii6"]
    max_length = 8192
    idle_from_start = True


class Tpdu2Receiver(FrameReceiver):
    prefix = PREFIXES["tpdu2"]
    max_length = 4096
    keepalive_empty = True


RECEIVERS: dict[str, type[FrameReceiver]] = {
    "ascii4": Ascii4Receiver,
    "ascii8": Ascii8Receiver,
    "ascii6": Ascii6Receiver,
    "tpdu2": Tpdu2Receiver,
}


def receiver_class(framing: Framing) -> type[FrameReceiver]:
    """The receiver class for a codec's framing ``kind``."""
    try:
        return RECEIVERS[framing.kind]
    except KeyError:
        raise ValueError(f"unknown framing kind {framing.kind!r}") from None


def receiver_options(framing: Framing, idle_timeout: float | None = None) -> dict:
    """Constructor keywords for :class:`FrameReceiver` from a declaration."""
    cls = receiver_class(framing)
    return {
        "prefix": cls.prefix,
        "max_length": framing.max_length,
        "idle_timeout": idle_timeout if idle_timeout is not None else framing.idle_timeout,
        "keepalive_empty": framing.keepalive_empty or cls.keepalive_empty,
        "idle_from_start": cls.idle_from_start,
    }
