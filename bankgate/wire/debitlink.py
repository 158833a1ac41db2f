"""The outbound link to a bank's debit host (卡扣, ref-delim §7): the gateway as client.

Card debits are the one place where the gateway calls the bank.  Per bank
with ``options.debit_host`` a :class:`DebitLink` keeps a connection to the
bank's debit host through a Twisted ``ClientService`` (reconnecting with
back-off) and runs one exchange at a time on it: a ``560`` debit or a
``561`` reversal out, the answer carrying our serial back, as a
:class:`LinkReply`.  What an answer means -- post, fail, reverse -- is decided
by :class:`bankgate.domain.carddebit.CardDebits`, which is handed the link.

After a timeout the connection is closed, after a short answer too (it names
no serial), and answers naming another serial are ignored: a late or
duplicated answer can never be taken for the answer to another request.
Unless ``debit_persistent`` says the host takes several requests on one
connection, the connection is also closed after every answer (one request
per connection, the spec's default).

Everything runs on the injected clock; the frames are the codec's
(``encode_debit`` ... are called by the domain, ``decode_debit_response`` /
``decode_debit_reversal_response`` here).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from twisted.application.internet import ClientService
from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from bankgate.wire.framing import FrameReceiver, receiver_options

log = Logger(namespace="bankgate.carddebit")


@implementer(IStreamClientEndpoint)
class _WatchedEndpoint:
    """The host's endpoint, telling the link why a connection attempt failed.

    The link says itself what an operator needs, once: the host cannot be reached
    (a warning), and it can again (:meth:`DebitLink._connect_failed`,
    :meth:`DebitLink._made`).  The reconnect after each idle close (once a minute)
    is at debug, and so is Twisted's own ``ClientService`` line for it ("Scheduling
    retry 1 to connect ..."), by the log's default levels (``app/logs.py``).
    """

    def __init__(self, endpoint, failed: Callable[[Failure], Failure]):
        self.endpoint, self.failed = endpoint, failed

    def connect(self, factory) -> defer.Deferred:
        return self.endpoint.connect(factory).addErrback(self.failed)


class LinkOptions(Protocol):
    """The settings a link reads (``WithholdingOptions`` has them)."""

    debit_idle: float  # close an idle connection after this (0: never)
    debit_persistent: bool  # the host takes several requests per connection
    debit_reconnect: float  # first wait before reconnecting
    debit_reconnect_max: float  # the wait doubles up to this


@dataclass(frozen=True)
class LinkReply:
    """How an exchange ended: ``answer`` (``decoded`` holds it), ``timeout``,
    ``lost`` (connection closed while waiting), ``malformed`` (an answer that
    could not be read), or ``unsent`` (never written: no connection in time)."""

    status: str
    decoded: dict | None = None
    error: str = ""


@dataclass(eq=False)
class _Exchange:
    kind: str  # "560" | "561"
    frame: bytes
    match: str  # our serial the answer must carry
    timeout: float
    deferred: defer.Deferred = field(default_factory=defer.Deferred)
    sent: bool = False
    timer: object = None
    proto: object = None


class DebitConnection(FrameReceiver):
    """One connection to a bank's debit host: frames in and out."""

    def __init__(self, link: DebitLink, **options):
        super().__init__(link.clock, **options)
        self.link = link

    def connectionMade(self) -> None:  # noqa: N802
        super().connectionMade()
        self.link._made(self)

    def frameReceived(self, frame: bytes) -> None:  # noqa: N802
        self.link._frame(self, frame)

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802
        super().connectionLost(reason)
        self.link._lost(self)

    def frameError(self, reason: str) -> None:  # noqa: N802
        self.link._framing_error(self, reason)

    def idleTimedOut(self) -> None:  # noqa: N802
        if self.link.waiting_on(self):
            self.resetIdleTimer()  # an answer is awaited: the exchange's timer rules
        else:
            self.closeConnection()


class _LinkFactory(protocol.Factory):
    noisy = False

    def __init__(self, link: DebitLink):
        self.link = link

    def buildProtocol(self, addr):  # noqa: N802
        opts = receiver_options(self.link.codec.framing, idle_timeout=self.link.opts.debit_idle)
        p = DebitConnection(self.link, **opts)
        p.factory = self
        return p


class DebitLink:
    """The connection to one bank's debit host and its queue of exchanges.

    ``service`` is the ``ClientService`` (start and stop it, or give it a
    parent).  :meth:`exchange` queues a request; one is on the wire at a time.
    """

    def __init__(self, name: str, endpoint, clock, codec, opts: LinkOptions,
                 jitter: Callable[[], float] = random.random):
        self.name = name
        self.clock = clock
        self.codec = codec
        self.opts = opts
        self.jitter = jitter
        self.proto: DebitConnection | None = None
        self.queue: deque[_Exchange] = deque()
        self.current: _Exchange | None = None
        self.connects = 0
        self.last_answer_at: float | None = None
        self.stray = 0  # answers that belonged to no request (late, duplicated)
        self.failures = 0  # connection attempts failed in a row
        self.service = ClientService(_WatchedEndpoint(endpoint, self._connect_failed),
                                     _LinkFactory(self), retryPolicy=self.retry_delay,
                                     clock=clock)
        self.service.setName(f"{name}-debit-link")

    def retry_delay(self, attempt: int) -> float:
        base = min(self.opts.debit_reconnect * 2 ** max(0, attempt - 1),
                   self.opts.debit_reconnect_max)
        return base * (1 + 0.1 * self.jitter())

    @property
    def connected(self) -> bool:
        return self.proto is not None

    def waiting_on(self, proto) -> bool:
        return self.current is not None and self.current.proto is proto

    def status(self) -> dict:
        return {"bank": self.name, "connected": self.connected, "connects": self.connects,
                "queued": len(self.queue) + (self.current is not None), "stray": self.stray,
                "last_answer_at": self.last_answer_at}

    # -- exchanges -------------------------------------------------------------

    def exchange(self, kind: str, frame: bytes, match: str, timeout: float) -> defer.Deferred:
        """Send ``frame`` and wait for the answer carrying ``match``: a
        Deferred of :class:`LinkReply` (never an error)."""
        ex = _Exchange(kind, frame, match, timeout)
        ex.timer = self.clock.callLater(timeout, self._unsent, ex)
        self.queue.append(ex)
        self._pump()
        return ex.deferred

    def _pump(self) -> None:
        if self.proto is not None and self.proto.closing:
            self.proto = None  # going away (idle, bad frame): wait for the next one
        while self.current is None and self.queue and self.proto is not None:
            ex = self.queue.popleft()
            if ex.timer is not None and ex.timer.active():
                ex.timer.cancel()
            proto = self.proto
            self.current = ex
            ex.proto = proto
            ex.sent = True  # from here on, the bank may have it
            ex.timer = self.clock.callLater(ex.timeout, self._timeout, ex)
            proto.sendFrame(ex.frame)

    def _finish(self, ex: _Exchange, reply: LinkReply) -> None:
        if ex.timer is not None and ex.timer.active():
            ex.timer.cancel()
        if self.current is ex:
            self.current = None
        ex.deferred.callback(reply)
        self._pump()

    def _close(self, proto) -> None:
        if proto is self.proto:
            self.proto = None
        if proto is not None:
            proto.closeConnection()

    def _unsent(self, ex: _Exchange) -> None:
        if ex in self.queue:
            self.queue.remove(ex)
            ex.timer = None
            self._finish(ex, LinkReply("unsent", error="no connection to the debit host in time"))

    def _timeout(self, ex: _Exchange) -> None:
        ex.timer = None
        if self.current is ex:
            # a late answer must never meet the next request: drop the connection
            self._close(ex.proto)
            self._finish(ex, LinkReply("timeout", error=f"no answer in {ex.timeout:g} s"))

    # -- connection events -------------------------------------------------------

    def _connect_failed(self, failure: Failure) -> Failure:
        """One warning when the host cannot be reached; the retries after it at debug
        (ClientService goes on retrying with back-off)."""
        if not failure.check(defer.CancelledError, error.ConnectingCancelledError):
            self.failures += 1
            log.emit(LogLevel.warn if self.failures == 1 else LogLevel.debug,
                     "debit host {bank}: cannot connect ({reason}); retrying every"
                     " {first:g} to {most:g} s (attempt {attempt})",
                     bank=self.name, reason=failure.getErrorMessage(), attempt=self.failures,
                     first=self.opts.debit_reconnect, most=self.opts.debit_reconnect_max)
        return failure

    def _made(self, proto: DebitConnection) -> None:
        self.connects += 1
        if self.failures:
            log.info("debit host {bank}: connected again after {failures} failed attempt(s)",
                     bank=self.name, failures=self.failures)
        else:  # the first connection, or again after an idle close (once a minute)
            log.emit(LogLevel.info if self.connects == 1 else LogLevel.debug,
                     "debit host {bank}: connected", bank=self.name)
        self.failures = 0
        self.proto = proto
        self._pump()

    def _lost(self, proto: DebitConnection) -> None:
        log.debug("debit host {bank}: connection closed", bank=self.name)
        if proto is self.proto:
            self.proto = None
        ex = self.current
        if ex is not None and ex.proto is proto:
            self._finish(ex, LinkReply("lost", error="the host closed the connection"))

    def _framing_error(self, proto: DebitConnection, reason: str) -> None:
        if proto is self.proto:
            self.proto = None  # the connection is closed next
        ex = self.current
        if ex is not None and ex.proto is proto:
            self._finish(ex, LinkReply("malformed", error=f"bad frame: {reason}"))

    def _frame(self, proto: DebitConnection, frame: bytes) -> None:
        ex = self.current
        if ex is None or ex.proto is not proto:
            self.stray += 1
            log.info("debit host {bank}: an answer no request waits for (late or duplicated):"
                     " ignored", bank=self.name)
            return
        self.last_answer_at = self.clock.seconds()
        decode = (self.codec.decode_debit_response if ex.kind == "560"
                  else self.codec.decode_debit_reversal_response)
        try:
            decoded = decode(frame)
        except Exception as e:  # noqa: BLE001 - no answer may stop the link
            self._close(proto)
            self._finish(ex, LinkReply("malformed", error=str(e)[:200]))
            return
        serial = decoded.get("utility_serial" if ex.kind == "560" else "orig_utility_serial")
        if serial and serial != ex.match:
            self.stray += 1
            log.info("debit host {bank}: an answer for serial {other} while {mine} waits:"
                     " ignored", bank=self.name, other=serial, mine=ex.match)
            return
        if not serial or not self.opts.debit_persistent:
            self._close(proto)  # a short answer names nobody: start afresh
        self._finish(ex, LinkReply("answer", decoded))
