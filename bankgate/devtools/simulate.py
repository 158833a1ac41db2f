"""The bank simulator: plays the bank side of any codec plugin over real TCP.

Everything here is built from the plugin's own declarations: its
``client_encode`` / ``client_decode`` (the bank side of its messages), its
:class:`~bankgate.codec.base.Framing` (the length prefix, and whether the
bank sends one request per connection, several in sequence, or pipelines
them) and its ``outcome_code`` (what each response code means).  The few
facts its messages do not state -- which of its transactions is a query, a
payment, a sign-in; how long its serial numbers are -- the plugin declares
as :class:`~bankgate.codec.capabilities.SimulatorTraits`; a plugin that
declares none gets a guess from the common transaction names.

Layers, each usable on its own (tests, benchmarks, the CLI):

- :class:`BankClient` -- ``connect()``, ``request(txn, values) ->
  Deferred[dict]``: codec values in, the codec's decoded response out.
  ``one_per_connection`` codecs (``ref-delim``) open a connection per request;
  ``pipelined`` codecs (``ref-iso8583``) keep one connection, send without
  waiting and match answers by STAN; the rest send one request at a time on
  one connection.  A codec that needs a sign-in (``ref-iso8583``) signs in on
  every new connection before anything else.
- :class:`BankSimulator` -- bank operations in one vocabulary for every
  plugin (``query``, ``pay``, ``prepay``, ``confirm``, ``cancel``,
  ``reverse``, ``status``, ``signin``, ``echo``, ``cutoff``, ``notice``, or
  any other the plugin maps), fresh serial numbers, answers as
  :class:`Answer`.  Which operations a bank has is the plugin's
  ``SimulatorTraits.ops``, nothing else; a payment on a bank whose traits
  say ``two_phase`` is a prepay, then the confirm of that prepay.
- :class:`LoadRunner` -- paced load over several connections on the reactor's
  clock, with latency percentiles (:class:`LoadStats`).
- :mod:`bankgate.app.cli.simulate` -- ``bankgate simulate``, on top of these.

The reactor is passed in everywhere; :func:`main` is the only place that
takes the global one (through :func:`twisted.internet.task.react`).
Keys, MACs and card numbers are never printed.
"""

from __future__ import annotations

import ipaddress
import math
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.python.failure import Failure

from bankgate.canon.masking import mask_pan
from bankgate.canon.messages import Outcome
from bankgate.codec.base import BankProfile, Session
from bankgate.codec.capabilities import SimulatorTraits, simulator_traits
from bankgate.wire.framing import FrameReceiver, receiver_options

# -- errors --------------------------------------------------------------------


class SimulateError(ValueError):
    """A usage error: bad arguments, a transaction the plugin does not have."""


class RequestTimeout(Exception):
    """No answer within the client's timeout."""


class ConnectionClosed(Exception):
    """The gateway closed the connection before answering."""


class ProtocolError(Exception):
    """The gateway's answer could not be read (the connection is dropped)."""


class SignInError(Exception):
    """The sign-in a codec needs before anything else was refused."""


# -- what the messages do not state ------------------------------------------------

#: the bank-side facts a plugin declares (``CODEC.simulator_traits``)
Traits = SimulatorTraits

_GUESS = Traits(ops={op: op for op in ("query", "pay", "reverse", "status", "echo",
                                       "cutoff", "notice")})


def traits_for(codec) -> Traits:
    """The codec's declared simulator traits, else a guess from the common names."""
    return simulator_traits(codec) or _GUESS


# -- response codes ------------------------------------------------------------

OUTCOME_TEXT: dict[Outcome, str] = {
    Outcome.OK: "approved",
    Outcome.NOT_FOUND: "customer not found",
    Outcome.NOTHING_DUE: "nothing to pay",
    Outcome.AMOUNT_REJECTED: "amount not accepted",
    Outcome.ACCOUNT_LOCKED: "customer account locked",
    Outcome.DUPLICATE_MISMATCH: "duplicate serial with different content",
    Outcome.ORIGINAL_NOT_FOUND: "original transaction not found",
    Outcome.REVERSAL_NOT_ALLOWED: "reversal not allowed",
    Outcome.ALREADY_REVERSED: "already reversed",
    Outcome.REVERSED_FIRST: "payment refused: its reversal came first",
    Outcome.EXPIRED: "order expired",
    Outcome.STATE_NOT_ALLOWED: "the payment's state does not allow this",
    Outcome.DATE_CLOSED: "trade date closed",
    Outcome.FORMAT_ERROR: "format error",
    Outcome.MAC_ERROR: "MAC error",
    Outcome.UNKNOWN_TRANSACTION: "unknown transaction",
    Outcome.NOT_AUTHORISED: "bank not authorised",
    Outcome.NOT_SIGNED_IN: "not signed in",
    Outcome.BUSY: "system busy, try again",
    Outcome.ERROR: "other error",
}


#: outcomes that answer only some operations: a code a spec shares between them
#: (ref-fixed 1007, ref-delim 007) means the one that fits what was sent
_ONLY_FOR: dict[Outcome, frozenset[str]] = {
    Outcome.REVERSED_FIRST: frozenset({"pay"}),
    Outcome.REVERSAL_NOT_ALLOWED: frozenset({"reverse", "advice"}),
    Outcome.ALREADY_REVERSED: frozenset({"reverse", "advice"}),
}


def code_meanings(codec, op: str | None = None) -> dict[str, str]:
    """Response code -> meaning, from the codec's own ``outcome_code``; for an
    operation ``op``, only the outcomes that can answer it."""
    ok = codec.outcome_code(Outcome.OK)
    out: dict[str, list[str]] = {}
    for o in Outcome:
        code = codec.outcome_code(o)
        if code == ok and o is not Outcome.OK:
            continue  # e.g. ISO 8583 answers an idempotent reversal "00": still "approved"
        if op is not None and o in _ONLY_FOR and op not in _ONLY_FOR[o]:
            continue
        out.setdefault(code, []).append(OUTCOME_TEXT.get(o, o.value))
    return {code: " / ".join(texts) for code, texts in out.items()}


_CODE_KEYS = ("resp_code", "code", "response_code")
_MESSAGE_KEYS = ("resp_msg", "msg")


def response_code(decoded: dict) -> str:
    """The response code in a codec's decoded answer, whatever it calls it."""
    for k in _CODE_KEYS:
        v = decoded.get(k)
        if v is not None:
            return str(v)
    return "?"


ISO_FIELD_NAMES = {
    2: "pan", 3: "processing_code", 4: "amount", 7: "transmission", 11: "stan",
    12: "trade_time", 13: "trade_date", 15: "settle_date", 32: "bank_code", 37: "rrn",
    38: "auth_id", 39: "response_code", 41: "terminal_id", 42: "branch", 48: "field48",
    49: "currency", 60: "network_code", 90: "original_data",
}
_SECRET_FIELDS = {52, 62, 64, 96, 128}  # PIN block, keys, MACs
_SECRET_KEYS = {"mac", "mak", "zmk", "mac_key", "key", "keys", "pin"}
_AMOUNT_KEYS = {"amount", "total_due", "late_fee", "remaining_due", "total", "total_amount",
                "prepaid_balance"}
_ORDER_KEYS = ("order_no", "receipt_no")  # a prepay answer's order number, as codecs name it


def flatten(decoded: dict) -> dict:
    """A codec's decoded answer as one flat dict of printable fields.

    ISO 8583 field numbers become names, field 48 contents are merged in,
    amounts become ``int`` fen; MACs and keys are left out and a card number
    is masked.
    """
    out: dict[str, Any] = {}
    for k, v in decoded.items():
        if k in _SECRET_KEYS:
            continue
        if k == "fields" and isinstance(v, dict):
            parsed48 = bool(decoded.get("field48"))
            for n, val in v.items():
                if n in _SECRET_FIELDS or (n == 48 and parsed48):
                    continue
                name = ISO_FIELD_NAMES.get(n, f"field{n}")
                if isinstance(val, bytes):
                    continue  # binary fields: keys and MACs
                if n == 2:
                    val = mask_pan(str(val))
                out[name] = val
        elif k == "field48":
            if isinstance(v, dict):
                out.update(v)
        elif k == "tpdu" and isinstance(v, bytes | bytearray):
            out[k] = bytes(v).hex()
        elif k == "pan":
            out[k] = mask_pan(str(v))
        else:
            out[k] = v
    for k in _AMOUNT_KEYS:
        v = out.get(k)
        if isinstance(v, str) and v.isdigit():
            out[k] = int(v)
    return out


# -- answers ---------------------------------------------------------------------


@dataclass
class Answer:
    """One request and its answer, in the simulator's vocabulary."""

    op: str
    txn: str
    request: dict  # what was sent, printable (no MAC, card masked)
    code: str
    meaning: str
    approved: bool
    fields: dict  # flattened answer fields, without code and bills
    bills: list[dict]
    latency: float  # seconds
    raw: dict = field(repr=False, default_factory=dict)

    @property
    def message(self) -> str:
        for k in _MESSAGE_KEYS:
            if self.raw.get(k):
                return str(self.raw[k])
        return ""

    @property
    def total(self) -> int:
        """What a query says is due: principal plus late fees (fen)."""
        f = self.fields
        if "total_due" in f:
            return int(f["total_due"]) + int(f.get("late_fee") or 0)
        if isinstance(f.get("amount"), int):
            return f["amount"]  # ISO 8583 0110 field 4: the total due
        return sum(int(b.get("amount", 0)) + int(b.get("late_fee", 0)) for b in self.bills)

    @property
    def serial(self) -> str:
        return str(self.request.get("serial") or self.request.get("rrn") or "")


def make_answer(codec, op: str, txn: str, request: dict, decoded: dict,
                latency: float) -> Answer:
    code = response_code(decoded)
    ok = codec.outcome_code(Outcome.OK)
    fields = flatten(decoded)
    bills = list(fields.pop("bills", None) or [])
    for k in (*_CODE_KEYS, *_MESSAGE_KEYS):
        fields.pop(k, None)
    meaning = code_meanings(codec, op).get(code, "unknown code")
    return Answer(op=op, txn=txn, request=request, code=code, meaning=meaning,
                  approved=code == ok, fields=fields, bills=bills, latency=latency,
                  raw=decoded)


# -- serial numbers ----------------------------------------------------------------


class SerialGenerator:
    """Bank serials unique per bank and day across runs, and STANs.

    20 characters: ``SIM`` + ``HHMMSS`` (at issue) + a 3-digit run tag + an
    8-digit counter.  12 characters (an ISO 8583 RRN): ``HHMMSS`` + 2-digit
    tag + 4-digit counter.  Two runs collide only if they share the tag and
    issue the same counter value within one second.  STANs are 6 digits,
    ``000001``-``999999``, from a random start.
    """

    def __init__(self, now: Callable[[], datetime], rng: random.Random | None = None,
                 prefix: str = "SIM"):
        rng = rng or random.Random(int.from_bytes(os.urandom(8), "big"))
        self.now = now
        self.prefix = prefix
        self.tag = rng.randrange(1000)
        self.count = 0
        self._stan = rng.randrange(999999)

    def serial(self, length: int = 20) -> str:
        self.count += 1
        t = self.now().strftime("%H%M%S")
        if length >= 20:
            return f"{self.prefix}{t}{self.tag:03d}{self.count % 10**8:08d}"[:length]
        if length >= 12:
            return f"{t}{self.tag % 100:02d}{self.count % 10**4:04d}"
        raise ValueError(f"no serial scheme for {length} characters")

    def stan(self) -> int:
        self._stan = self._stan % 999999 + 1
        return self._stan


def _stan_key(v: Any) -> str:
    return f"{v:06d}" if isinstance(v, int) else str(v)


# -- the client ----------------------------------------------------------------------


class _Connection(FrameReceiver):
    """One connection to the gateway: frames out, decoded answers to the waiters."""

    def __init__(self, client: BankClient, session: Session):
        super().__init__(client.reactor, **receiver_options(client.framing, idle_timeout=0))
        self.client = client
        self.session = session
        self.pending: dict[str | None, defer.Deferred] = {}
        self.lost = defer.Deferred()
        self.connected_ = False

    def connectionMade(self) -> None:
        self.connected_ = True
        super().connectionMade()

    def expect(self, key: str | None) -> defer.Deferred:
        if key in self.pending:
            raise SimulateError(f"STAN {key} is already waiting for an answer")

        def cancel(d):
            if self.pending.get(key) is d:
                del self.pending[key]
            if not self.client.pipelined:  # an answer may still come: out of step
                self.closeConnection()

        d = defer.Deferred(canceller=cancel)
        self.pending[key] = d
        return d

    def frameReceived(self, frame: bytes) -> None:
        try:
            decoded = self.client.codec.client_decode(frame, self.session)
        except Exception as e:  # noqa: BLE001 -- any decoder failure: unreadable answer
            self._fail_all(ProtocolError(f"unreadable answer: {e}"))
            self.closeConnection()
            return
        key = _stan_key(decoded.get("stan")) if self.client.pipelined else None
        d = self.pending.pop(key, None)
        if d is None:
            self.client.stray += 1  # an answer to a request given up on
            if not self.client.pipelined:
                self.closeConnection()
            return
        d.callback(decoded)
        if self.client.one_per_connection:
            self.closeConnection()

    def frameError(self, reason: str) -> None:
        self._fail_all(ProtocolError(f"bad frame from the gateway: {reason}"))

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        self.connected_ = False
        self._fail_all(ConnectionClosed("the gateway closed the connection without answering"))
        self.client._lost(self)
        if not self.lost.called:
            self.lost.callback(None)

    def _fail_all(self, exc: Exception) -> None:
        pending, self.pending = self.pending, {}
        for d in pending.values():
            d.errback(Failure(exc))


class BankClient:
    """The bank side of one configured bank, over TCP.

    :param reactor: provides ``IReactorTCP`` and ``IReactorTime``.
    :param codec: the bank's codec plugin object.
    :param profile: the bank's :class:`BankProfile` (code, keys, MAC on/off).
    :param now: local wall-clock time for the codec's sessions (default: the
        reactor's clock in the local zone of the machine).
    :param timeout: seconds to wait for each answer.
    :param signin: ``None``: sign in on every new connection when the codec
        needs it; ``False``: never (to see the gateway refuse).
    :param serials: where STANs come from (pipelined codecs).
    """

    def __init__(self, reactor, codec, profile: BankProfile, host: str, port: int, *,
                 now: Callable[[], datetime] | None = None, timeout: float = 10.0,
                 connect_timeout: float = 5.0, signin: bool | None = None,
                 serials: SerialGenerator | None = None):
        self.reactor = reactor
        self.codec = codec
        self.profile = profile
        self.host = host
        self.port = port
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.now = now or (lambda: datetime.fromtimestamp(reactor.seconds()))
        self.framing = codec.framing
        self.traits = traits_for(codec)
        self.one_per_connection = bool(self.framing.one_per_connection)
        self.pipelined = bool(self.framing.pipelined) and not self.one_per_connection
        self.signin_txn = self.traits.signin if signin is None or signin else None
        self.serials = serials or SerialGenerator(self.now)
        self.stray = 0  # answers that arrived after their request was given up
        self.connections = 0  # connections opened
        self._conn: _Connection | None = None
        self._connecting: list[defer.Deferred] | None = None
        self._lock = defer.DeferredLock()

    # -- connections -----------------------------------------------------------

    def new_session(self) -> Session:
        return Session(bank=self.profile, now=self.now)

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.connected_ and not self._conn.closing

    @property
    def session(self) -> Session | None:
        """The current connection's session (``None`` when not connected)."""
        return self._conn.session if self._conn is not None else None

    def _endpoint(self):
        cls = TCP6ClientEndpoint if ":" in self.host else TCP4ClientEndpoint
        return cls(self.reactor, self.host, self.port, timeout=self.connect_timeout)

    async def _open(self) -> _Connection:
        conn = _Connection(self, self.new_session())
        self.connections += 1
        await connectProtocol(self._endpoint(), conn)
        return conn

    def connect(self) -> defer.Deferred:
        """Connect (and sign in if the codec needs it); fires with ``self``.

        A codec with one request per connection connects for each request:
        there is nothing to do here.
        """
        return defer.ensureDeferred(self._connect()).addCallback(lambda _: self)

    async def _connect(self) -> _Connection | None:
        if self.one_per_connection:
            return None
        if self.connected:
            return self._conn
        if self._connecting is not None:  # another request is connecting: wait for it
            d = defer.Deferred()
            self._connecting.append(d)
            return await d
        self._connecting = waiters = []
        try:
            conn = await self._open()
            if self.signin_txn:
                try:
                    decoded, _ = await self._exchange(conn, self.signin_txn,
                                                      {"stan": self.serials.stan()})
                except Exception:
                    conn.closeConnection()
                    raise
                code = response_code(decoded)
                if code != self.codec.outcome_code(Outcome.OK):
                    conn.closeConnection()
                    raise SignInError(f"sign-in refused: {code} "
                                      f"{code_meanings(self.codec).get(code, '')}".rstrip())
            self._conn = conn
        except BaseException:
            self._connecting = None
            f = Failure()
            for d in waiters:
                d.errback(f)
            raise
        self._connecting = None
        for d in waiters:
            d.callback(conn)
        return conn

    def _lost(self, conn: _Connection) -> None:
        if self._conn is conn:
            self._conn = None

    def close(self) -> defer.Deferred:
        """Close the connection; fires once it is gone."""
        conn, self._conn = self._conn, None
        if conn is None or not conn.connected_:
            return defer.succeed(None)
        conn.closeConnection()
        return conn.lost

    # -- requests ---------------------------------------------------------------

    def request(self, txn: str, values: dict | None = None) -> defer.Deferred:
        """Send ``txn`` built by the codec from ``values``; fires with the
        codec's decoded answer (``client_decode``).

        Pipelined codecs: ``values["stan"]`` is filled in when missing and
        the answer is matched by it.  Fails with :class:`RequestTimeout`,
        :class:`ConnectionClosed`, :class:`ProtocolError`,
        :class:`SignInError` or a connection error.
        """
        return self.request_timed(txn, values).addCallback(lambda r: r[0])

    def request_timed(self, txn: str, values: dict | None = None) -> defer.Deferred:
        """As :meth:`request`; fires with ``(decoded, seconds)``."""
        values = dict(values or {})
        if self.pipelined and values.get("stan") is None:
            values["stan"] = self.serials.stan()
        return defer.ensureDeferred(self._request(txn, values))

    async def _request(self, txn: str, values: dict) -> tuple[dict, float]:
        if self.one_per_connection:
            conn = await self._open()
            try:
                return await self._exchange(conn, txn, values)
            finally:
                conn.closeConnection()
        if self.pipelined:
            conn = await self._connect()
            return await self._exchange(conn, txn, values)
        await self._lock.acquire()
        try:
            conn = await self._connect()
            return await self._exchange(conn, txn, values)
        finally:
            self._lock.release()

    async def _exchange(self, conn: _Connection, txn: str, values: dict) -> tuple[dict, float]:
        if conn.closing:
            raise ConnectionClosed("the connection to the gateway is closed")
        try:
            frame = self.codec.client_encode(txn, values, conn.session)
        except (ValueError, KeyError) as e:  # a value the bank's message needs is missing
            raise SimulateError(f"cannot build the {txn} request: {e}") from None
        key = _stan_key(values["stan"]) if self.pipelined else None
        d = conn.expect(key)
        started = self.reactor.seconds()
        try:
            conn.sendFrame(frame)
        except Exception:
            conn.pending.pop(key, None)
            raise
        d.addTimeout(self.timeout, self.reactor)
        try:
            decoded = await d
        except defer.TimeoutError:
            raise RequestTimeout(f"no answer to {txn} within {self.timeout:g} s") from None
        return decoded, self.reactor.seconds() - started


# -- bank operations -------------------------------------------------------------------

#: the operations the simulator knows the values of, in the order they are listed; a
#: plugin's ``SimulatorTraits.ops`` says which of them (and which others) a bank has
OPS = ("query", "pay", "prepay", "confirm", "cancel", "reverse", "advice", "status", "signin",
       "signout", "echo", "cutoff", "notice")
_NO_SERIAL_OPS = {"advice", "signin", "signout"}  # the rest get a fresh serial of their own


def supported_ops(traits: Traits) -> list[str]:
    """The operations a plugin's traits map, in the order they declare them."""
    return list(traits.ops)


def unsupported(bank: str, codec, traits: Traits, op: str) -> SimulateError:
    """The one-line error for an operation the bank's plugin does not map."""
    have = ", ".join(supported_ops(traits)) or "none"
    return SimulateError(f"bank {bank} (plugin {codec.name}) has no {op} operation;"
                         f" it supports: {have}")


def missing_ops(traits: Traits, op: str) -> list[str]:
    """The operations ``op`` needs that the traits do not map (``pay`` on a
    two-phase bank: ``prepay`` and ``confirm``)."""
    need = ("prepay", "confirm") if op == "pay" and traits.two_phase else (op,)
    return [o for o in need if o not in traits.ops]

Observer = Callable[[str, "Answer | None", "Exception | None", float], None]


class BankSimulator:
    """Bank operations on a :class:`BankClient`, the same for every plugin.

    Values use one vocabulary: ``customer_no``, ``amount`` (fen), ``serial``,
    ``orig_serial``, ``orig_date``, ``trade_date``, ``settle_date``,
    ``bill_ids``, ``file_name``, ``record_count``, ``total_amount``, ``stan``,
    ``orig_stan``; they are translated for the codec (an ISO 8583 serial is
    the RRN, field 37).  ``observer(op, answer, error, seconds)`` sees every
    request (the load runner counts with it).
    """

    def __init__(self, client: BankClient, serials: SerialGenerator | None = None, *,
                 trade_date: date | None = None, observer: Observer | None = None):
        self.client = client
        self.codec = client.codec
        self.traits = client.traits
        self.serials = serials or client.serials
        self.trade_date = trade_date
        self.observer = observer

    @property
    def bank(self) -> str:
        return self.client.profile.name

    def supports(self, op: str) -> bool:
        return op in self.traits.ops

    def codec_values(self, op: str, values: dict) -> dict:
        """The codec's ``client_encode`` values for a simulator operation."""
        v = {k: x for k, x in values.items() if x is not None}
        if self.trade_date is not None and op not in ("signin", "signout"):
            v.setdefault("trade_date", self.trade_date)
        if self.traits.rrn:
            if op in ("reverse", "advice"):
                if "orig_serial" in v:
                    v["rrn"] = v.pop("orig_serial")
                v.pop("serial", None)
                v.pop("customer_no", None)
            elif op in ("query", "pay", "prepay"):
                if "serial" in v:
                    v["rrn"] = v.pop("serial")
                v.setdefault("rrn", self.serials.serial(self.traits.serial_length))
        elif op not in _NO_SERIAL_OPS:
            v.setdefault("serial", self.serials.serial(self.traits.serial_length))
        return v

    async def run(self, op: str, values: dict | None = None) -> Answer:
        txn = self.traits.ops.get(op)
        if txn is None:
            raise unsupported(self.bank, self.codec, self.traits, op)
        cvalues = self.codec_values(op, values or {})
        if self.client.pipelined and cvalues.get("stan") is None:
            cvalues["stan"] = self.serials.stan()
        started = self.client.reactor.seconds()
        try:
            decoded, latency = await self.client.request_timed(txn, cvalues)
        except Exception as e:
            if self.observer is not None:
                self.observer(op, None, e, self.client.reactor.seconds() - started)
            raise
        answer = make_answer(self.codec, op, txn, printable_request(cvalues), decoded, latency)
        if self.observer is not None:
            self.observer(op, answer, None, latency)
        return answer

    # -- operations ---------------------------------------------------------------

    async def query(self, customer_no: str, **values) -> Answer:
        return await self.run("query", {"customer_no": customer_no, **values})

    async def pay(self, customer_no: str, amount: int, bill_ids: Iterable[str] | None = None,
                  **values) -> Answer:
        v = {"customer_no": customer_no, "amount": amount, **values}
        if self.traits.pay_names_bills:
            v["bill_ids"] = tuple(bill_ids or ())
        return await self.run("pay", v)

    async def prepay(self, customer_no: str, amount: int,
                     bill_ids: Iterable[str] | None = None, **values) -> Answer:
        """The first half of a two-phase payment: reserve ``amount`` (pending)."""
        v = {"customer_no": customer_no, "amount": amount, **values}
        if self.traits.pay_names_bills:
            v["bill_ids"] = tuple(bill_ids or ())
        return await self.run("prepay", v)

    def _original(self, orig_serial: str, orig_date: date | None,
                  order_no: str | None, values: dict) -> dict:
        day = orig_date or self.trade_date or self.client.now().date()
        return {"orig_serial": orig_serial, "orig_date": day, "order_no": order_no, **values}

    async def confirm(self, orig_serial: str, orig_date: date | None = None,
                      order_no: str | None = None, **values) -> Answer:
        """Make the prepay ``orig_serial`` of ``orig_date`` (default: the trade
        date) final; ``order_no``: the order number its answer gave."""
        return await self.run("confirm", self._original(orig_serial, orig_date, order_no,
                                                        values))

    async def cancel(self, orig_serial: str, orig_date: date | None = None,
                     order_no: str | None = None, **values) -> Answer:
        """Undo the pending prepay ``orig_serial`` (as :meth:`confirm`)."""
        return await self.run("cancel", self._original(orig_serial, orig_date, order_no,
                                                       values))

    async def confirm_prepay(self, prepay: Answer, op: str = "confirm") -> Answer:
        """Confirm (or, ``op="cancel"``, cancel) the prepay that ``prepay`` answered."""
        order = next((str(prepay.fields[k]) for k in _ORDER_KEYS if prepay.fields.get(k)),
                     None)
        day = prepay.request.get("trade_date")
        day = day if isinstance(day, date) else None
        return await self.run(op, self._original(prepay.serial, day, order, {}))

    async def settle(self, customer_no: str, amount: int,
                     bill_ids: Iterable[str] | None = None, **values) -> list[Answer]:
        """A payment as the bank's traits make it: ``[payment]``, or on a
        two-phase bank ``[prepay, confirm]`` (``[prepay]`` when the prepay is
        declined: nothing to confirm)."""
        if not self.traits.two_phase:
            return [await self.pay(customer_no, amount, bill_ids, **values)]
        missing = missing_ops(self.traits, "pay")
        if missing:
            raise unsupported(self.bank, self.codec, self.traits, missing[0])
        pre = await self.prepay(customer_no, amount, bill_ids, **values)
        if not pre.approved:
            return [pre]
        return [pre, await self.confirm_prepay(pre)]

    async def pay_due(self, customer_no: str, amount: int | None = None,
                      bill_ids: Iterable[str] | None = None, *, prepay_only: bool = False,
                      **values) -> list[Answer]:
        """Query, then pay what the query shows (or ``amount``) -- as a counter does.

        Returns ``[query]`` when the query is declined or shows nothing due,
        else ``[query, payment]`` -- ``[query, prepay, confirm]`` on a
        two-phase bank (:meth:`settle`), ``[query, prepay]`` with
        ``prepay_only``.  For a plugin whose payment names its bills,
        ``bill_ids`` picks some of the listed bills (default: all).
        """
        q = await self.query(customer_no)
        if not q.approved:
            return [q]
        ids: tuple[str, ...] = ()
        if self.traits.pay_names_bills:
            listed = {str(b.get("bill_id")): b for b in q.bills}
            ids = tuple(bill_ids) if bill_ids else tuple(listed)
            missing = [i for i in ids if i not in listed]
            if missing and amount is None:
                raise SimulateError(f"bill(s) {', '.join(missing)} not in the query answer; "
                                    "give the amount to pay them anyway")
            due = sum(int(listed[i].get("amount", 0)) + int(listed[i].get("late_fee", 0))
                      for i in ids if i in listed)
        else:
            due = q.total
        amount = due if amount is None else amount
        if amount <= 0:
            return [q]
        if prepay_only:
            return [q, await self.prepay(customer_no, amount, ids, **values)]
        return [q, *await self.settle(customer_no, amount, ids, **values)]

    async def reverse(self, orig_serial: str, customer_no: str | None, amount: int, *,
                      advice: bool = False, **values) -> Answer:
        return await self.run("advice" if advice else "reverse",
                              {"orig_serial": orig_serial, "customer_no": customer_no,
                               "amount": amount, **values})

    async def status(self, orig_serial: str, orig_date: date | None = None, **values) -> Answer:
        return await self.run("status", {"orig_serial": orig_serial, "orig_date": orig_date,
                                         **values})

    async def signin(self) -> Answer:
        return await self.run("signin", {})

    async def echo(self) -> Answer:
        return await self.run("echo", {})

    async def cutoff(self, settle_date: date, **values) -> Answer:
        return await self.run("cutoff", {"settle_date": settle_date, **values})

    async def notice(self, settle_date: date, **values) -> Answer:
        return await self.run("notice", {"settle_date": settle_date, **values})


def printable_request(values: dict) -> dict:
    """A request's values for printing: no MAC, no raw fields, card masked."""
    out = {}
    for k, v in values.items():
        if k in _SECRET_KEYS or k in ("fields", "body", "tpdu"):
            continue
        if k == "pan":
            v = mask_pan(str(v))
        out[k] = v
    return out


# -- load ------------------------------------------------------------------------------

LOAD_OPS = ("query", "pay", "reverse")


def parse_mix(text: str) -> dict[str, float]:
    """``query=50,pay=40,reverse=10`` -> weights summing to 1."""
    weights: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, w = part.partition("=")
        name = name.strip()
        if not sep:
            raise SimulateError(f"mix: expected NAME=WEIGHT, got {part!r}")
        if name not in LOAD_OPS:
            raise SimulateError(f"mix: unknown transaction {name!r} "
                                f"(known: {', '.join(LOAD_OPS)})")
        if name in weights:
            raise SimulateError(f"mix: {name} given twice")
        try:
            value = float(w)
        except ValueError:
            raise SimulateError(f"mix: weight of {name} is not a number: {w!r}") from None
        if not math.isfinite(value) or value < 0:
            raise SimulateError(f"mix: weight of {name} must be 0 or more, got {w!r}")
        weights[name] = value
    total = sum(weights.values())
    if total <= 0:
        raise SimulateError("mix: the weights add up to nothing")
    return {k: v / total for k, v in weights.items() if v > 0}


def parse_customers(text: str) -> list[str]:
    """``100000001-100001000`` (a range, inclusive), ``A,B,C``, or both mixed."""
    out: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"([0-9]+)-([0-9]+)", part)
        if m:
            a, b = m.group(1), m.group(2)
            lo, hi = int(a), int(b)
            if hi < lo:
                raise SimulateError(f"customers: range {part!r} runs backwards")
            if hi - lo >= 10_000_000:
                raise SimulateError(f"customers: range {part!r} is too large")
            width = len(a) if len(a) == len(b) else 0
            out.extend(f"{n:0{width}d}" for n in range(lo, hi + 1))
        elif re.fullmatch(r"[0-9A-Za-z_-]{1,32}", part):
            out.append(part)
        else:
            raise SimulateError(f"customers: {part!r} is not a customer number or a range")
    if not out:
        raise SimulateError("customers: none given")
    return out


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100) by the nearest-rank method; 0 when empty.

    ``values`` must be sorted.
    """
    if not values:
        return 0.0
    if not 0 <= p <= 100:
        raise ValueError("percentile outside 0-100")
    rank = max(1, math.ceil(p / 100 * len(values)))
    return values[rank - 1]


def latency_summary(seconds: Iterable[float]) -> dict[str, float]:
    """p50/p95/p99/max/mean of latencies, in milliseconds."""
    ms = sorted(s * 1000 for s in seconds)
    if not ms:
        return {"count": 0, "p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    return {
        "count": len(ms),
        "p50": percentile(ms, 50),
        "p95": percentile(ms, 95),
        "p99": percentile(ms, 99),
        "max": ms[-1],
        "mean": sum(ms) / len(ms),
    }


@dataclass
class LoadStats:
    """What a load run sent and got back, per operation."""

    bank: str
    meanings: dict[str, str] = field(default_factory=dict)
    sent: Counter = field(default_factory=Counter)  # op -> requests sent
    answered: Counter = field(default_factory=Counter)  # (op, code) -> answers
    errors: Counter = field(default_factory=Counter)  # (op, error kind) -> count
    latencies: dict[str, list[float]] = field(default_factory=dict)  # op -> seconds
    started: float = 0.0
    ended: float = 0.0
    scenarios: int = 0
    unfinished: int = 0  # requests still in flight when the run was stopped
    mac_failures: int = 0
    _counted: set = field(default_factory=set, repr=False)

    def observe(self, op: str, answer: Answer | None, error: Exception | None,
                seconds: float) -> None:
        self.sent[op] += 1
        if answer is not None:
            self.answered[(op, answer.code)] += 1
            self.latencies.setdefault(op, []).append(seconds)
            if answer.raw.get("mac_ok") is False:
                self.mac_failures += 1
        else:
            self.errors[(op, type(error).__name__)] += 1
            self._counted.add(id(error))

    def counted(self, error: BaseException) -> bool:
        """Whether :meth:`observe` already counted this exception (forgets it)."""
        if id(error) in self._counted:
            self._counted.discard(id(error))
            return True
        return False

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())

    @property
    def total_answered(self) -> int:
        return sum(self.answered.values())

    @property
    def elapsed(self) -> float:
        return max(self.ended - self.started, 0.0)

    def tps(self) -> float:
        return self.total_answered / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> dict:
        all_lat = [s for v in self.latencies.values() for s in v]
        codes = Counter()
        for (_op, code), n in self.answered.items():
            codes[code] += n
        return {
            "bank": self.bank,
            "elapsed_s": round(self.elapsed, 3),
            "scenarios": self.scenarios,
            "sent": self.total_sent,
            "answered": self.total_answered,
            "tps": round(self.tps(), 1),
            "codes": {c: {"count": n, "meaning": self.meanings.get(c, "")}
                      for c, n in sorted(codes.items())},
            "errors": {f"{op}:{kind}": n for (op, kind), n in sorted(self.errors.items())},
            "unfinished": self.unfinished,
            "mac_failures": self.mac_failures,
            "latency_ms": {k: round(v, 2) if isinstance(v, float) else v
                           for k, v in latency_summary(all_lat).items()},
            "by_op": {
                op: {
                    "sent": self.sent[op],
                    "answered": {c: n for (o, c), n in sorted(self.answered.items())
                                 if o == op},
                    "latency_ms": {k: round(v, 2) if isinstance(v, float) else v
                                   for k, v in latency_summary(
                                       self.latencies.get(op, [])).items()},
                }
                for op in sorted(self.sent)
            },
        }


@dataclass
class _Paid:
    serial: str
    customer_no: str
    amount: int
    stan: int | str | None = None  # ISO 8583: the payment's STAN, for field 90


class LoadRunner:
    """Paced load for one bank, on the reactor's clock.

    ``sims`` are the connections (one :class:`BankSimulator` each, over its
    own :class:`BankClient`); ``depth`` workers share each connection (more
    than one only makes sense for a pipelined codec).  ``rate`` scenarios
    are started per second (0: as fast as the workers go), each picked from
    ``mix``: ``query`` (one request), ``pay`` (query, then pay the total due),
    ``reverse`` (reverse a payment of this run; pay one first if there is
    none).  After ``duration`` seconds nothing new starts; requests in flight
    get ``drain`` seconds more, then the run ends regardless.
    """

    tick = 0.01

    def __init__(self, reactor, sims: list[BankSimulator], customers: list[str],
                 mix: dict[str, float], *, rate: float, duration: float, depth: int = 1,
                 drain: float | None = None, rng: random.Random | None = None):
        if not sims:
            raise SimulateError("load: no connections")
        if not customers:
            raise SimulateError("load: no customers")
        self.reactor = reactor
        self.sims = sims
        self.customers = customers
        self.mix = mix
        self.rate = rate
        self.duration = duration
        self.depth = max(1, depth)
        self.drain = drain if drain is not None else max(s.client.timeout for s in sims) + 1.0
        self.rng = rng or random.Random()
        self.stats = LoadStats(bank=sims[0].bank, meanings=code_meanings(sims[0].codec))
        for s in sims:
            s.observer = self.stats.observe
        self.paid: list[_Paid] = []
        self.in_flight = 0
        self.idle = list(range(len(sims) * self.depth))
        self.started_count = 0
        self.stopping = False
        self.done = defer.Deferred()
        self._loop: task.LoopingCall | None = None
        self._drain_call = None
        self._ops = list(mix)
        self._weights = [mix[o] for o in self._ops]
        self._backoff: dict[int, Any] = {}

    # -- running ---------------------------------------------------------------------

    def start(self) -> defer.Deferred:
        """Start; fires with the :class:`LoadStats` when the run is over."""
        self.stats.started = self.reactor.seconds()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._loop.start(self.tick, now=True).addErrback(self._crashed)
        return self.done

    def _crashed(self, f: Failure) -> None:
        if not self.done.called:
            self.stats.ended = self.reactor.seconds()
            self.done.errback(f)

    def elapsed(self) -> float:
        return self.reactor.seconds() - self.stats.started

    def _tick(self) -> None:
        if self.stopping:
            return
        elapsed = self.elapsed()
        if elapsed >= self.duration:
            self.stop()
            return
        due = math.inf if self.rate <= 0 else math.floor(self.rate * elapsed) + 1
        while self.idle and self.started_count < due:
            self._launch(self.idle.pop(0))

    def _launch(self, worker: int) -> None:
        self.started_count += 1
        self.stats.scenarios += 1
        self.in_flight += 1
        sim = self.sims[worker // self.depth]
        op = self.rng.choices(self._ops, self._weights)[0]
        d = defer.ensureDeferred(self._scenario(sim, op))
        d.addErrback(self._scenario_failed, worker)
        d.addBoth(self._finished, worker)

    def _scenario_failed(self, f: Failure, worker: int) -> float:
        # a failed request was counted by the observer; anything else is counted here.
        # Back off a little so that a gateway that is down is not hammered.
        if not self.stats.counted(f.value):
            self.stats.errors[("scenario", f.type.__name__)] += 1
        return 0.05

    def _finished(self, pause: float | None, worker: int) -> None:
        self.in_flight -= 1
        if self.stopping:
            if self.in_flight == 0:
                self._end()
            return
        if pause:
            self._backoff[worker] = self.reactor.callLater(pause, self._ready, worker)
        else:
            self._ready(worker)

    def _ready(self, worker: int) -> None:
        self._backoff.pop(worker, None)
        self.idle.append(worker)
        if self.rate <= 0 and not self.stopping:
            self._tick()

    async def _scenario(self, sim: BankSimulator, op: str) -> None:
        customer = self.rng.choice(self.customers)
        if op == "query":
            await sim.query(customer)
            return None
        if op == "reverse" and self.paid:
            p = self.paid.pop(self.rng.randrange(len(self.paid)))
            await sim.reverse(p.serial, p.customer_no, p.amount, orig_stan=p.stan)
            return None
        answers = await sim.pay_due(customer)
        pay = answers[1] if len(answers) >= 2 else None  # the payment (or the prepay)
        if pay is None or not all(a.approved for a in answers[1:]):
            return None
        paid = _Paid(pay.serial, customer, int(pay.request.get("amount", 0)),
                     pay.request.get("stan"))
        if op == "reverse":
            await sim.reverse(paid.serial, paid.customer_no, paid.amount, orig_stan=paid.stan)
        else:
            self.paid.append(paid)
            del self.paid[:-10000]  # keep the pool bounded
        return None

    def stop(self) -> None:
        """Start nothing new; end when the requests in flight are answered (bounded)."""
        if self.stopping:
            return
        self.stopping = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for call in self._backoff.values():
            if call.active():
                call.cancel()
        self._backoff.clear()
        if self.in_flight == 0:
            self._end()
        else:
            self._drain_call = self.reactor.callLater(self.drain, self._end)

    def interrupt(self) -> None:
        """End now (Ctrl-C): what is in flight counts as unfinished."""
        self.stop()
        self._end()

    def _end(self) -> None:
        if self.done.called:
            return
        if self._drain_call is not None and self._drain_call.active():
            self._drain_call.cancel()
        self.stats.unfinished = self.in_flight
        self.stats.ended = self.reactor.seconds()
        self.done.callback(self.stats)


# -- the customers in the database -----------------------------------------------------------


def customers_with_open_bills(store, limit: int = 10000) -> list[str]:
    """Active customers with at least one open bill, from N8 through the mapping.

    ``store`` is a :class:`bankgate.store.db.Store`; runs on the calling
    thread (the simulator is a tool, not the gateway).
    """
    return store.run_sync(lambda tx: tx.customers_with_open_bills(limit), readonly=True)


# -- configuration --------------------------------------------------------------------------


_WILDCARDS = {"", "0.0.0.0", "::", "*"}


def endpoint_address(ep: str) -> tuple[str, int]:
    """``tcp:9101:interface=127.0.0.1`` -> ``("127.0.0.1", 9101)``.

    A wildcard or missing interface means the local host.  Only plain TCP
    listeners can be reached by the simulator.
    """
    parts = re.split(r"(?<!\\):", ep)
    kind = parts[0].lower()
    if kind not in ("tcp", "tcp6"):
        raise SimulateError(f"endpoint {ep!r}: the simulator speaks plain TCP only "
                            "(give --host and --port)")
    port = None
    interface = ""
    for p in parts[1:]:
        key, sep, value = p.partition("=")
        value = value.replace("\\:", ":")
        if not sep:
            port = key
        elif key == "port":
            port = value
        elif key == "interface":
            interface = value
    if port is None or not str(port).isdigit():
        raise SimulateError(f"endpoint {ep!r}: no port")
    host = interface if interface not in _WILDCARDS else ("::1" if kind == "tcp6"
                                                           else "127.0.0.1")
    return host, int(port)


def configured_hosts(cfg) -> set[str]:
    """Hosts the load generator may target: loopback and the configured interfaces."""
    hosts = {"localhost"}
    for b in cfg.banks:
        for ep in b.listen:
            try:
                hosts.add(endpoint_address(ep)[0])
            except SimulateError:
                pass
    return hosts


def host_allowed(host: str, allowed: set[str]) -> bool:
    if host in allowed:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Target:
    name: str
    codec: Any
    profile: BankProfile
    host: str
    port: int


def resolve_target(cfg, codecs: dict, name: str, host: str | None = None,
                   port: int | None = None) -> Target:
    try:
        b = cfg.bank(name)
    except KeyError as e:
        raise SimulateError(str(e.args[0])) from None
    codec = codecs.get(b.plugin)
    if codec is None:
        raise SimulateError(f"bank {name}: no plugin named {b.plugin!r}")
    if host is None or port is None:
        if not b.listen:
            if host is None or port is None:
                raise SimulateError(f"bank {name} has no listen endpoint: give --host and "
                                    "--port")
        else:
            h, p = endpoint_address(b.listen[0])
            host = h if host is None else host
            port = p if port is None else port
    return Target(name=name, codec=codec, profile=b.profile(), host=host, port=int(port))


# -- printing ----------------------------------------------------------------------------------


__all__ = [
    "Answer", "BankClient", "BankSimulator", "ConnectionClosed", "LoadRunner", "LoadStats",
    "ProtocolError", "RequestTimeout", "SerialGenerator", "SignInError", "SimulateError",
    "Traits", "code_meanings", "customers_with_open_bills", "endpoint_address", "flatten",
    "latency_summary", "missing_ops", "parse_customers", "parse_mix", "percentile",
    "resolve_target", "supported_ops", "unsupported",
]
