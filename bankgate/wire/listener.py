"""One bank listener: framing protocol + codec + ledger service.

:class:`BankFactory` builds a :class:`BankProtocol` per connection.  For each
frame the protocol asks the codec what to do (:class:`~bankgate.codec.base.Close`,
:class:`~bankgate.codec.base.Reply` or :class:`~bankgate.codec.base.Dispatch`),
hands dispatched requests to the ledger ``handler`` and writes what the codec
encodes from the result.  Nothing raised by a codec or the ledger escapes:
it is logged and the connection is closed.

Order of answers follows the codec's :class:`~bankgate.codec.base.Framing`:

- ``one_per_connection``: the first frame is answered, then the connection is
  closed (later frames are ignored);
- ``pipelined``: up to :attr:`BankFactory.max_in_flight` requests at once,
  each answered as it completes;
- otherwise sequential: one request at a time, frames that arrive meanwhile
  wait (in the framing buffer) and are answered in order.

A request whose connection is lost in flight still runs to its end (the
ledger commits it; the bank's retry reads the same answer) but nothing is
written.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.python.failure import Failure

from bankgate.canon.messages import Outcome
from bankgate.codec.base import BankProfile, Close, Dispatch, Reply, Session
from bankgate.codec.capabilities import simulator_traits
from bankgate.wire.framing import FrameReceiver, receiver_options


class _MaskedFrame:
    """A frame for the debug log, rendered only if someone formats it.

    The engine does not know where a codec's MAC, keys or card numbers are:
    it shows the codec's own ``mask_frame(frame) -> str`` when the codec has
    one, and otherwise only the length and a digest -- never the content.
    """

    __slots__ = ("codec", "frame")

    def __init__(self, codec, frame: bytes):
        self.codec = codec
        self.frame = frame

    def __str__(self) -> str:
        masker = getattr(self.codec, "mask_frame", None)
        if masker is not None:
            try:
                return str(masker(self.frame))
            except Exception:  # noqa: BLE001, S110 -- a masking bug must not leak the frame
                pass
        digest = hashlib.sha256(self.frame).hexdigest()[:12]
        return f"<{len(self.frame)} bytes sha256:{digest}>"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    __repr__ = __str__


@dataclass
class BankStats:
    """Live figures for one bank listener (read by the console)."""

    connections_open: int = 0
    connections_total: int = 0
    in_flight: int = 0
    transactions: int = 0
    last_message: datetime | None = None  # wall-clock time of the last frame received
    last_signin: datetime | None = None  # wall-clock time of the last sign-in answered OK
    outcomes: Counter = field(default_factory=Counter)  # Outcome value -> count
    rejected: int = 0  # framing errors and codec Close actions
    errors: int = 0  # codec or ledger exceptions
    unanswered: int = 0  # results computed after their connection was lost


class BankFactory(Factory):
    """Builds protocols for one configured bank's listener.

    :param codec: the bank's codec plugin object.
    :param profile: the bank's :class:`BankProfile`.
    :param handler: ``handler(request) -> Deferred[result]``, the ledger service.
    :param clock: an ``IReactorTime`` for idle timeouts and timings.
    :param now: wall-clock time (local) for the codec's sessions.
    :param log: a :class:`twisted.logger.Logger`, or an ``ILogObserver`` to
        log to, or ``None`` for the default logger.
    """

    #: most requests in flight on one pipelined connection before reading stops
    max_in_flight = 64

    def __init__(
        self,
        codec,
        profile: BankProfile,
        handler: Callable[[Any], defer.Deferred],
        clock: IReactorTime,
        now: Callable[[], datetime] = datetime.now,
        log: Logger | ILogObserver | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        log_frames: bool = False,
    ):
        self.codec = codec
        # raw (masked) frames in the log: off unless an operator asks for them,
        # since twistd's default log shows debug events
        self.log_frames = log_frames
        self.profile = profile
        self.handler = handler
        self.clock = clock
        self.now = now
        self.random_bytes = random_bytes
        if log is None:
            log = Logger(namespace="bankgate.engine")
        elif not isinstance(log, Logger):
            log = Logger(namespace="bankgate.engine", observer=log)
        self.log = log
        self.framing = codec.framing
        self.stats = BankStats()
        #: ``f(bank, txname, outcome, seconds)`` after each transaction is answered
        #: (``seconds``: from its frame received to its answer written), and with
        #: outcome ``"REJECTED"`` or ``"ERROR"`` and ``seconds=None`` when a frame is
        #: refused or a codec or the ledger fails (the console's metrics and live
        #: figures).  They run on every request: keep them cheap.
        self.observers: list[Callable[[str, str, str, float | None], None]] = []
        #: the open connections (the console counts those signed in)
        self.connections: set[BankProtocol] = set()
        #: the transactions that sign a connection in and out, when the codec declares
        #: a sign-in (:class:`~bankgate.codec.capabilities.SimulatorTraits` ``signin``;
        #: its ``ops["signout"]``); ``None``: this bank's connections do not sign in
        traits = simulator_traits(codec)
        self.signin_txn = traits.signin if traits is not None else None
        self.signout_txn = traits.ops.get("signout") if self.signin_txn else None

    def buildProtocol(self, addr) -> BankProtocol:
        p = BankProtocol(self)
        p.factory = self
        return p


class BankProtocol(FrameReceiver):
    """One bank connection."""

    def __init__(self, factory: BankFactory):
        framing = factory.framing
        super().__init__(factory.clock, **receiver_options(framing, factory.profile.idle_timeout))
        self.factory = factory
        self.bank = factory.profile.name
        self.codec = factory.codec
        self.log = factory.log
        self.stats = factory.stats
        self.one_per_connection = framing.one_per_connection
        self.pipelined = framing.pipelined
        self.in_flight = 0
        self.session: Session | None = None
        self._done = False  # one_per_connection: the one frame has been taken
        #: when this connection last signed in (its working key's exchange), while
        #: it is signed in; ``None`` otherwise
        self.signed_in_at: datetime | None = None

    # -- connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.session = Session(
            bank=self.factory.profile,
            peer_host=getattr(peer, "host", None),
            now=self.factory.now,
            random_bytes=self.factory.random_bytes,
        )
        self.stats.connections_open += 1
        self.stats.connections_total += 1
        self.factory.connections.add(self)
        self.log.debug(
            "{bank}: connection from {peer}", bank=self.bank, peer=self.session.peer_host
        )
        super().connectionMade()

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        self.stats.connections_open -= 1
        self.factory.connections.discard(self)
        self.log.debug("{bank}: connection closed", bank=self.bank)

    def frameError(self, reason: str) -> None:
        self._rejected(reason)

    def _rejected(self, reason: str) -> None:
        self.stats.rejected += 1
        self._observe("", "REJECTED", None)
        self.log.emit(
            LogLevel.warn,
            "{bank}: closing connection from {peer}: {reason}",
            bank=self.bank,
            peer=self.session.peer_host,
            reason=reason,
        )

    def idleTimedOut(self) -> None:
        if self.in_flight:  # we are the slow side: not idle
            self.resetIdleTimer()
            return
        self.log.info(
            "{bank}: idle timeout, closing connection from {peer}",
            bank=self.bank,
            peer=self.session.peer_host,
        )
        self.closeConnection()

    # -- frames -------------------------------------------------------------

    def frameReceived(self, frame: bytes) -> None:
        if self._done:
            return
        started = self.clock.seconds()
        self.stats.last_message = self.factory.now()
        if self.factory.log_frames:
            self.log.debug("{bank} <- {frame}", bank=self.bank,
                           frame=_MaskedFrame(self.codec, frame))
        try:
            action = self.codec.decode(frame, self.session)
        except Exception:  # noqa: BLE001 -- nothing a codec raises may escape
            self._error(Failure(), "codec failed to decode a frame")
            return

        if isinstance(action, Close):
            self._rejected(action.reason or "codec closed")
            self.closeConnection()
        elif isinstance(action, Reply):
            if self.one_per_connection:
                self._done = True
            self._write(action.frame)
            if action.txname and action.txname in (self.factory.signin_txn,
                                                   self.factory.signout_txn):
                self._signed(action)
            self._log_txn(action.txname, action.log, None, action.outcome, started)
            if self.one_per_connection:
                self.closeConnection()
        elif isinstance(action, Dispatch):
            self._dispatch(action, started)
        else:
            self._error(None, f"codec returned {action!r}, not an action")

    def _signed(self, action: Reply) -> None:
        """A sign-in answered OK starts this connection's working key (a refused one
        leaves the key it had); a sign-out answered OK ends it."""
        if action.outcome is not Outcome.OK:
            return
        if action.txname == self.factory.signin_txn:
            self.signed_in_at = self.stats.last_signin = self.factory.now()
        else:
            self.signed_in_at = None

    def _dispatch(self, action: Dispatch, started: float) -> None:
        self.in_flight += 1
        self.stats.in_flight += 1
        if self.one_per_connection:
            self._done = True
            self.pauseFrames()
        elif not self.pipelined or self.in_flight >= self.factory.max_in_flight:
            self.pauseFrames()
        d = defer.maybeDeferred(self.factory.handler, action.request)
        d.addBoth(self._completed, action, started)
        d.addErrback(self._error, "internal error after a request")

    def _completed(self, result: Any, action: Dispatch, started: float) -> None:
        self.in_flight -= 1
        self.stats.in_flight -= 1
        if isinstance(result, Failure):
            self._error(result, f"ledger failed on {action.txname or 'request'}")
            return
        outcome = getattr(result, "outcome", None)
        if self.closing:
            self.stats.unanswered += 1
            self._log_txn(
                action.txname, action.log, action.request, outcome, started, answered=False,
                result=result,
            )
            return
        try:
            frame = action.encode(result)
            self._write(frame)
        except Exception:  # noqa: BLE001 -- nor anything raised by encode()
            self._error(Failure(), f"codec failed to encode the {action.txname or 'result'}")
            return
        self._log_txn(action.txname, action.log, action.request, outcome, started,
                      result=result)
        if self.one_per_connection:
            self.closeConnection()
        else:
            self.resumeFrames()

    def _write(self, frame: bytes) -> None:
        if self.factory.log_frames:
            self.log.debug("{bank} -> {frame}", bank=self.bank,
                           frame=_MaskedFrame(self.codec, frame))
        self.sendFrame(frame)

    def _error(self, failure: Failure | None, why: str) -> None:
        self.stats.errors += 1
        self._observe("", "ERROR", None)
        if failure is not None:
            self.log.failure(
                "{bank}: {why}; closing connection",
                failure,
                level=LogLevel.error,
                bank=self.bank,
                why=why,
            )
        else:
            self.log.error("{bank}: {why}; closing connection", bank=self.bank, why=why)
        self.closeConnection()

    def _observe(self, txname: str, outcome: str, seconds: float | None) -> None:
        for f in self.factory.observers:
            try:
                f(self.bank, txname, outcome, seconds)
            except Exception:  # noqa: BLE001 -- a figure must never cost an answer
                self.log.failure("{bank}: an observer failed", bank=self.bank)

    # -- the transaction log line ------------------------------------------

    def _log_txn(
        self,
        txname: str,
        fields: dict,
        request: Any,
        outcome: Outcome | None,
        started: float,
        answered: bool = True,
        result: Any = None,
    ) -> None:
        """One info line per transaction: who, what, the payment it refers to, the
        outcome and, for a refusal, why (the codec's reason or the ledger's message)."""
        elapsed = self.clock.seconds() - started
        ms = round(elapsed * 1000, 1)
        outcome_name = outcome.value if isinstance(outcome, Outcome) else str(outcome)
        self.stats.transactions += 1
        self.stats.outcomes[outcome_name] += 1
        txname = txname or (type(request).__name__ if request is not None else "?")
        self._observe(txname, outcome_name, elapsed)
        fields = dict(fields or {})

        def pick(keys: tuple[str, ...], *found: Any) -> Any:
            """The codec's field (the first of ``keys`` it gave), else the first of
            ``found`` that is set."""
            for key in keys:
                if key in fields:
                    return fields.pop(key)
            return next((v for v in found if v not in (None, "")), None)

        def attr(obj: Any, name: str) -> Any:
            return getattr(obj, name, None) if obj is not None else None

        # what an answer to an earlier payment (reversal, status, confirm) names:
        # the original's serial and date -- a reversal's is its own trade date
        orig_serial = pick(("orig_serial",), attr(request, "orig_serial"),
                           attr(result, "orig_serial"))
        orig_date = pick(("orig_date",), attr(request, "orig_date"),
                         attr(attr(request, "origin"), "trade_date")
                         if orig_serial is not None else None)
        event = {
            "serial": pick(("serial",), attr(request, "serial")),
            "customer": pick(("customer", "customer_no"), attr(request, "customer_no"),
                             attr(result, "customer_no")),
            "amount": pick(("amount",), attr(request, "amount")),
            "orig_serial": orig_serial,
            "orig_date": _iso(orig_date),
            "receipt": pick(("receipt",), attr(result, "receipt_no")),
            # why it was refused: the codec's reason, else the ledger's message
            "reason": pick(("reason",), attr(result, "message")) if outcome != Outcome.OK
            else None,
        }
        parts = ["{bank} {txname}"]
        parts += [f"{k}={{{k}}}" for k in ("serial", "customer", "amount")
                  if event[k] is not None]
        if orig_serial is not None:
            parts.append("orig_serial={orig_serial}" + (" of {orig_date}" if orig_date else ""))
        if event["receipt"] is not None:
            parts.append("receipt={receipt}")
        # the codec's other fields (masked by it): shown, so a text log has them too.
        # Keys starting with "_" are renderings for the text only (a JSON log skips them).
        extra = " ".join(f"{k}={_quoted(v)}" for k, v in fields.items())
        if extra:
            parts.append("{_extra}")
        parts.append("outcome={outcome}")
        if event["reason"]:
            parts.append("reason={_reason}")
        self.log.info(
            " ".join(parts) + " {ms}ms{unanswered}",
            _extra=extra,
            _reason=_quoted(event["reason"]),
            bank=self.bank,
            txname=txname,
            **event,
            outcome=outcome_name,
            ms=ms,
            answered=answered,
            peer=self.session.peer_host,
            unanswered="" if answered else " (connection lost, not answered)",
            fields=fields,
            txn=True,
        )


def _iso(day: Any) -> Any:
    """A date as ``YYYY-MM-DD``; anything else (the codec's text, None) as it is."""
    return day.isoformat() if hasattr(day, "isoformat") else day


def _quoted(value: Any) -> str:
    """A field's value for a ``key=value`` log text: quoted when it has spaces."""
    text = str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text
