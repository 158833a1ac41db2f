"""The base of a bank spec's codec: a plugin declares its spec, the SDK runs it.

A bank message spec is mostly the same machine with different tables: read
the envelope, check who is calling, check the signature, find the
transaction, check its fields and the trade date, build the canonical
request, and answer the ledger's result with the spec's code.
:class:`SpecCodec` is that machine.  A plugin subclasses it and declares:

- ``txns``: one :class:`Txn` per transaction -- its name (what
  ``client_encode`` and the simulator call it), its code on the wire, its
  request and answer :class:`Field` s, how its canonical request is built
  (the ``to_*`` helpers below read the usual field names);
- ``head_fields``: the envelope's fields, under the SDK's role names
  (``txcode``, ``bank_code``, ``serial``, ``trade_date``, ``trade_time``;
  ``branch``, ``teller``, ``channel`` if the spec has them);
- ``codes``: canonical :class:`~bankgate.canon.messages.Outcome` -> the
  spec's code, and ``other_code`` for everything else (so
  :meth:`SpecCodec.outcome_code` is total, as ``plugins check`` demands);

and writes the few hooks that know its bytes: :meth:`~SpecCodec.parse_envelope`
and :meth:`~SpecCodec.build_answer` for the gateway side,
:meth:`~SpecCodec.build_request` and :meth:`~SpecCodec.parse_answer` for the
bank side, and :meth:`~SpecCodec.signature_ok` when messages are signed.

The check order (``SpecCodec.checks``, each a method a plugin may override
or reorder) is that of a typical spec; the first failing check answers:

=============  ====================================================  ====================
step           what                                                  answer
=============  ====================================================  ====================
envelope       ``parse_envelope`` raises :class:`Refuse`              close, no answer
``authorise``  ``bank_code`` not this bank's, peer address denied     ``NOT_AUTHORISED``
``verify``     signature on (``mac_needed``) and not verifying        ``MAC_ERROR``
``find_txn``   ``txcode`` not declared                                ``UNKNOWN_TRANSACTION``
``parse_body`` a head or body field missing, mistyped, too long, an   ``FORMAT_ERROR``
               undeclared body field, a blank serial
``check_date`` ``trade_date`` more than a day from the calendar date  ``FORMAT_ERROR``
request        the canonical request -> ``Dispatch`` (no request:     (the ledger's)
               answered here, ``OK``: echo)
=============  ====================================================  ====================

A check fails by raising :class:`Reject` (:class:`FormatError` for the
format case); a request builder may raise them too.  :meth:`SpecCodec.decode`
never raises: any other exception becomes the spec's answer for
``Outcome.ERROR`` (``other_code``), or -- when not even the envelope could
be read, or the answer cannot be built -- closes the connection.

The bank side (:meth:`SpecCodec.client_encode` / :meth:`SpecCodec.client_decode`,
for the simulator and the tests) is driven by the same declarations: the
request fields are taken from ``values`` by name (a field's ``default``
fills what is not given) and written with the field's kind; an approved
answer's fields are read back with theirs.

Field values on the wire are JSON-like: text and digit strings are ``str``,
amounts (fen) and counts are ``int``, a date is ``"YYYYMMDD"``, a time
``"HHMMSS"``, a timestamp ``"YYYYMMDDHHMMSS"``.  A spec whose wire is all
text (XML) converts in its envelope hooks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from bankgate.canon.messages import (
    CancelRequest,
    Channel,
    ConfirmRequest,
    Origin,
    Outcome,
    PaymentRequest,
    QueryRequest,
    ReversalRequest,
    StatusRequest,
    fingerprint,
)
from bankgate.codec.base import Action, Close, Dispatch, Framing, Reply, Session

__all__ = [
    "Field", "FormatError", "Message", "Refuse", "Reject", "SpecCodec", "Txn", "to_cancel",
    "to_confirm", "to_payment", "to_query", "to_reversal", "to_status",
]


class Refuse(Exception):
    """Nothing can be answered (no envelope to answer): close the connection."""


class Reject(Exception):
    """A check failed: answer ``outcome``; ``reason`` is for the log line."""

    def __init__(self, outcome: Outcome, reason: str):
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


class FormatError(Reject):
    """A field is missing, mistyped or out of range (the reason names it)."""

    def __init__(self, reason: str):
        super().__init__(Outcome.FORMAT_ERROR, reason)


# -- fields -----------------------------------------------------------------------------

KINDS = ("text", "digits", "fen", "int", "date", "time", "datetime")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # not "\u3000": names have it
_TIME = re.compile(r"([01][0-9]|2[0-3])[0-5][0-9][0-5][0-9]")
_FORMATS = {"date": "%Y%m%d", "datetime": "%Y%m%d%H%M%S"}


@dataclass(frozen=True)
class Field:
    """One field of a message, declared once for both sides.

    ``kind``: ``text`` (a string), ``digits`` (a string of 0-9), ``fen`` (an
    amount, an integer >= 0), ``int``, ``date`` (``YYYYMMDD`` <-> ``date``),
    ``time`` (``HHMMSS``), ``datetime`` (``YYYYMMDDHHMMSS`` <-> ``datetime``).
    ``max_length``: characters of a string, digits of a number (0: no limit).
    ``min_length``: characters of a string (a required text is at least 1).
    ``required``: absent (or ``null``) is a format error; else it reads as
    ``None``.  ``source``: the result attribute an answer field is taken
    from (default: its own name).  ``default``: what the bank side sends
    when the caller gives nothing -- a value, or a function of the values.
    """

    name: str
    kind: str = "text"
    max_length: int = 0
    required: bool = True
    min_length: int | None = None
    source: str = ""
    default: Any = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"field {self.name}: kind {self.kind!r} is not one of {KINDS}")

    def load(self, value: Any) -> Any:
        """The wire value checked and typed; :class:`FormatError` names the field."""
        n, k = self.name, self.kind
        if value is None:
            if self.required:
                raise FormatError(f"{n} is missing")
            return None
        if k in ("fen", "int"):
            if not isinstance(value, int) or isinstance(value, bool):
                raise FormatError(f"{n}: an integer expected")
            if (k == "fen" and value < 0) or (self.max_length
                                               and abs(value) >= 10 ** self.max_length):
                raise FormatError(f"{n}: {value} is out of range")
            return value
        if not isinstance(value, str):
            raise FormatError(f"{n}: a string expected")
        if k in _FORMATS:
            if not (value.isascii() and value.isdigit()):
                raise FormatError(f"{n}: {_FORMATS[k].replace('%', '')} expected")
            try:
                parsed = datetime.strptime(value, _FORMATS[k])
            except ValueError:
                raise FormatError(f"{n}: {value!r} is not a valid {k}") from None
            if len(value) != (8 if k == "date" else 14):
                raise FormatError(f"{n}: {value!r} is not a valid {k}")
            return parsed.date() if k == "date" else parsed
        if k == "time" and _TIME.fullmatch(value) is None:
            raise FormatError(f"{n}: HHMMSS expected")
        if k == "digits" and not (value.isascii() and value.isdigit()):
            raise FormatError(f"{n}: digits expected")
        least = self.min_length if self.min_length is not None else int(self.required)
        if len(value) < least or (self.max_length and len(value) > self.max_length):
            raise FormatError(f"{n}: {len(value)} characters, "
                              f"{least}-{self.max_length or 'any'} allowed")
        if _CONTROL.search(value):
            raise FormatError(f"{n}: control characters")
        return value

    def dump(self, value: Any) -> Any:
        """The wire value of ``value`` (not checked: a negative test may send anything)."""
        if value is None:
            return None
        if self.kind in _FORMATS and isinstance(value, (date, datetime)):
            if self.kind == "date" and isinstance(value, datetime):
                value = value.date()
            return value.strftime(_FORMATS[self.kind])
        if self.kind in ("fen", "int") and isinstance(value, str) and value.isdigit():
            return int(value)
        return str(value) if self.kind in ("text", "digits", "time") else value


def load_fields(fields: Iterable[Field], wire: Any, *, strict: bool = True) -> dict:
    """``wire`` (an object) checked and typed by ``fields``; with ``strict`` a
    name not declared is a format error."""
    if not isinstance(wire, Mapping):
        raise FormatError("an object expected")
    fields = tuple(fields)
    if strict:
        extra = sorted(set(wire) - {f.name for f in fields})
        if extra:
            raise FormatError(f"{extra[0]}: not a field of this message")
    return {f.name: f.load(wire.get(f.name)) for f in fields}


def dump_fields(fields: Iterable[Field], values: Mapping) -> dict:
    """The wire values of ``fields`` from ``values`` (defaults filled; a
    missing required field is a ``ValueError`` naming it)."""
    out = {}
    for f in fields:
        v = values.get(f.name)
        if v is None and f.default is not None:
            v = f.default(values) if callable(f.default) else f.default
        if v is None:
            if f.required:
                raise ValueError(f"{f.name} is required")
            continue
        out[f.name] = f.dump(v)
    return out


# -- transactions and the message being decoded ----------------------------------------


@dataclass(frozen=True)
class Txn:
    """One transaction of the spec.

    ``request(message)``: the canonical request (``None``: answered by the
    codec itself with ``OK``, as an echo).  ``answer(result, message)``: the
    values of an ``OK`` answer, by field name (default: each answer field's
    ``source`` attribute of the result, else the request's field).
    ``as_ok``: outcomes answered as ``OK`` with a body (a status query of an
    unknown serial, say).  ``serial``: the request's serial may not be blank.
    """

    name: str
    code: str
    fields: tuple[Field, ...] = ()
    answer_fields: tuple[Field, ...] = ()
    request: Callable[[Message], Any] | None = None
    answer: Callable[[Any, Message], Mapping] | None = None
    as_ok: frozenset[Outcome] = frozenset()
    serial: bool = True


@dataclass
class Message:
    """A request as the checks see it.  ``wire``: the whole decoded message
    (for signatures); ``head``: the envelope's fields by role name, as sent
    until ``parse_body`` types them (``echo`` keeps them as sent, for answers
    that repeat them); ``body``: the transaction's fields."""

    frame: bytes
    session: Session
    head: dict
    body: Any = None
    wire: Any = None
    txn: Txn | None = None
    echo: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.echo = dict(self.head)

    @property
    def serial(self) -> str:
        return self.head.get("serial") or ""

    @property
    def origin(self) -> Origin:
        h = self.head
        return Origin(bank=self.session.bank.name, trade_date=h["trade_date"],
                      trade_time=h.get("trade_time") or "", branch=h.get("branch") or "",
                      teller=h.get("teller") or "",
                      channel=h.get("channel") or Channel.COUNTER.value)

    @property
    def content(self) -> str:
        """The repeat check's fingerprint: the transaction and its fields."""
        fields = self.txn.fields if self.txn else ()
        return fingerprint(self.txn.code if self.txn else "",
                           *(f"{f.name}={self.body.get(f.name)}" for f in fields))


# -- canonical requests from the usual field names --------------------------------------


def to_query(m: Message) -> QueryRequest:
    return QueryRequest(m.origin, m.body["customer_no"])


def to_payment(m: Message, *, two_phase: bool = False) -> PaymentRequest:
    return PaymentRequest(m.origin, m.serial, m.body["customer_no"], m.body["amount"],
                          content=m.content, bill_ids=tuple(m.body.get("bill_ids") or ()),
                          two_phase=two_phase)


def to_confirm(m: Message) -> ConfirmRequest:
    b = m.body
    return ConfirmRequest(m.origin, b["orig_serial"], b.get("orig_date") or m.origin.trade_date,
                          serial=m.serial or None, order_no=b.get("order_no") or "",
                          content=m.content)


def to_cancel(m: Message) -> CancelRequest:
    b = m.body
    return CancelRequest(m.origin, b["orig_serial"], b.get("orig_date") or m.origin.trade_date,
                         serial=m.serial or None, order_no=b.get("order_no") or "",
                         content=m.content)


def to_reversal(m: Message, *, confirmed_only: bool = False) -> ReversalRequest:
    b = m.body
    return ReversalRequest(m.origin, b["orig_serial"], b.get("customer_no"), b["amount"],
                           serial=m.serial or None, content=m.content,
                           latest_only=m.session.bank.latest_only_reversal,
                           confirmed_only=confirmed_only)


def to_status(m: Message) -> StatusRequest:
    return StatusRequest(m.origin, m.body["orig_serial"],
                         m.body.get("orig_date") or m.origin.trade_date)


# -- the codec --------------------------------------------------------------------------

HEAD_FIELDS = (
    Field("txcode", max_length=16),
    Field("bank_code", max_length=16),
    Field("trade_date", "date"),
    Field("trade_time", "time", required=False),
    Field("serial", max_length=32, required=False),
)


class SpecCodec:
    """A bank spec's codec from declarations (the module docstring says which)."""

    name: str = ""
    description: str = ""
    framing: Framing
    txns: tuple[Txn, ...] = ()
    head_fields: tuple[Field, ...] = HEAD_FIELDS
    codes: Mapping[Outcome, str] = {}
    other_code: str = "9999"
    messages: Mapping[str, str] = {}  # code -> the spec's text for it
    checks: tuple[str, ...] = ("authorise", "verify", "find_txn", "parse_body", "check_date")
    log_fields: tuple[str, ...] = ("customer_no", "amount", "orig_serial", "order_no")

    def __init__(self) -> None:
        self.by_code = {t.code: t for t in self.txns}
        self.by_name = {t.name: t for t in self.txns}
        if len(self.by_code) != len(self.txns) or len(self.by_name) != len(self.txns):
            raise ValueError(f"{self.name}: two transactions share a code or a name")

    def outcome_code(self, outcome: Outcome) -> str:
        return self.codes.get(outcome, self.other_code)

    def message_text(self, code: str) -> str:
        return self.messages.get(code, "")

    def layouts(self) -> dict:
        """The field names of every message, for ``bankgate plugins check``."""
        out = {"head": tuple(f.name for f in self.head_fields)}
        for t in self.txns:
            out[f"{t.code}.request"] = tuple(f.name for f in t.fields)
            out[f"{t.code}.answer"] = tuple(f.name for f in t.answer_fields)
        return out

    # -- the hooks a plugin writes ------------------------------------------------------

    def parse_envelope(self, frame: bytes, session: Session) -> Message:
        """The frame's envelope as a :class:`Message` (``head`` by role name,
        ``body`` and ``wire`` as decoded); raise :class:`Refuse` to close."""
        raise NotImplementedError

    def build_answer(self, m: Message, code: str, body: dict | None, outcome: Outcome) -> bytes:
        """The answer to ``m`` with ``code``; ``body``: the answer fields' wire
        values of an ``OK`` answer, else ``None``.  Fields the answer repeats
        come from ``m.echo`` (as the bank sent them: they may be malformed)."""
        raise NotImplementedError

    def mac_needed(self, session: Session) -> bool:
        """Whether requests must be signed (default: the bank's ``mac`` setting)."""
        return session.bank.mac

    def signature_ok(self, m: Message) -> bool:
        """Whether ``m``'s signature verifies (called when :meth:`mac_needed`)."""
        return False

    def build_request(self, txn: Txn, head: dict, body: dict, values: dict,
                      session: Session) -> bytes:
        """Bank side: the request frame from wire values (``values`` as given,
        for a plugin's negative-test overrides)."""
        raise NotImplementedError

    def parse_answer(self, frame: bytes, session: Session) -> tuple[dict, Any]:
        """Bank side: ``(head, body)`` of an answer, wire values, ``head`` with
        ``txcode`` and ``resp_code`` (and whatever else the plugin reports,
        ``sign_ok`` say); ``ValueError`` when unreadable."""
        raise NotImplementedError

    # -- the checks, in ``checks`` order -------------------------------------------------

    def authorise(self, m: Message) -> None:
        if m.head.get("bank_code") != m.session.bank.bank_code:
            raise Reject(Outcome.NOT_AUTHORISED, "unknown bank_code")
        if not m.session.address_allowed:
            raise Reject(Outcome.NOT_AUTHORISED, "address not allowed")

    def verify(self, m: Message) -> None:
        if self.mac_needed(m.session) and not self.signature_ok(m):
            raise Reject(Outcome.MAC_ERROR, "signature does not verify")

    def find_txn(self, m: Message) -> None:
        code = m.head.get("txcode")
        m.txn = self.by_code.get(code) if isinstance(code, str) else None
        if m.txn is None:
            raise Reject(Outcome.UNKNOWN_TRANSACTION, "unknown txcode")

    def parse_body(self, m: Message) -> None:
        m.head = load_fields(self.head_fields, m.head, strict=False)
        m.body = load_fields(m.txn.fields, {} if m.body is None else m.body)
        if m.txn.serial and not m.serial.strip():
            raise FormatError("serial is blank")

    def check_date(self, m: Message) -> None:
        if not m.session.trade_date_ok(m.head["trade_date"]):
            raise FormatError(f"trade_date {m.head['trade_date']:%Y%m%d} is more than a day"
                              " away")

    # -- gateway side -------------------------------------------------------------------

    def decode(self, frame: bytes, session: Session) -> Action:
        """The action for ``frame``; never raises (module docstring)."""
        m = None
        try:
            m = self.parse_envelope(bytes(frame), session)
            return self._checked(m)
        except Refuse as e:
            return Close(str(e) or "unreadable message")
        except Exception as e:  # noqa: BLE001 - decode never raises
            if m is None:
                return Close(f"internal error: {type(e).__name__}")
            try:
                return self.reject(m, Outcome.ERROR, f"internal error: {e!r}")
            except Exception as again:  # noqa: BLE001 - not even an answer: close
                return Close(f"internal error: {type(again).__name__}")

    def _checked(self, m: Message) -> Action:
        try:
            for step in self.checks:
                getattr(self, step)(m)
            txn = m.txn
            log = self.log_values(m)
            if txn.request is None:
                return Reply(self.answer(m, Outcome.OK, None), Outcome.OK, txn.name, log)
            request = txn.request(m)
        except Reject as r:
            return self.reject(m, r.outcome, r.reason)
        return Dispatch(request, lambda result: self.encode_result(m, result), txn.name, log)

    def log_values(self, m: Message) -> dict:
        """The log line's fields: the serial and the ``log_fields`` present."""
        body = m.body if isinstance(m.body, Mapping) else {}
        log = {"serial": m.serial}
        log.update({k: body[k] for k in self.log_fields if body.get(k) is not None})
        return log

    def reject(self, m: Message, outcome: Outcome, reason: str) -> Reply:
        txname = m.txn.name if m.txn else ""
        return Reply(self.build_answer(m, self.outcome_code(outcome), None, outcome),
                     outcome, txname, {"txcode": str(m.echo.get("txcode", ""))[:16],
                                       "reason": reason})

    def encode_result(self, m: Message, result: Any) -> bytes:
        """The answer to the ledger's ``result``; a result the answer fields
        cannot carry (a required one missing, one out of range) is answered as
        ``Outcome.ERROR``."""
        outcome = getattr(result, "outcome", Outcome.ERROR)
        if not isinstance(outcome, Outcome):
            outcome = Outcome.ERROR
        if outcome in m.txn.as_ok:
            outcome = Outcome.OK
        try:
            return self.answer(m, outcome, result)
        except Exception:  # noqa: BLE001 - e.g. a missing answer field
            return self.answer(m, Outcome.ERROR, None)

    def answer(self, m: Message, outcome: Outcome, result: Any) -> bytes:
        body = None
        if outcome is Outcome.OK:
            body = dump_fields(m.txn.answer_fields, self.answer_values(m, result))
            load_fields(m.txn.answer_fields, body)  # never an answer its own spec refuses
        return self.build_answer(m, self.outcome_code(outcome), body, outcome)

    def answer_values(self, m: Message, result: Any) -> Mapping:
        if m.txn.answer is not None:
            return m.txn.answer(result, m)
        body = m.body if isinstance(m.body, Mapping) else {}
        out = {}
        for f in m.txn.answer_fields:
            v = getattr(result, f.source or f.name, None)
            out[f.name] = v if v not in (None, "") else body.get(f.name, v)
        return out

    # -- bank side ----------------------------------------------------------------------

    def txn_for(self, txn: str) -> Txn:
        t = self.by_name.get(txn) or self.by_code.get(txn)
        if t is None:
            raise ValueError(f"{self.name} has no {txn!r} transaction"
                             f" (it has: {', '.join(self.by_name)})")
        return t

    def client_encode(self, txn: str, values: dict, session: Session) -> bytes:
        """A request as the bank sends it: the head from ``values`` (default:
        this bank, now, the transaction's code), the body fields by name."""
        t = self.txn_for(txn)
        now = session.now()
        given = {k: v for k, v in values.items() if v is not None}
        head = dict(txcode=t.code, bank_code=session.bank.bank_code, trade_date=now.date(),
                    trade_time=now.strftime("%H%M%S"))
        head.update({f.name: given[f.name] for f in self.head_fields if f.name in given})
        head = dump_fields(self.head_fields, head)
        body = given["body"] if "body" in given else dump_fields(t.fields, {**head, **given})
        return self.build_request(t, head, body, given, session)

    def client_decode(self, frame: bytes, session: Session) -> dict:
        """An answer as the bank reads it: the head, and the answer fields of an
        ``OK`` answer typed by their declaration; ``ValueError`` when unreadable."""
        head, body = self.parse_answer(bytes(frame), session)
        out = dict(head)
        for f in self.head_fields:
            if f.name not in head:
                continue
            try:
                out[f.name] = f.load(head.get(f.name))
            except FormatError:
                pass  # an echo of a malformed request: kept as sent
        if out.get("resp_code") == self.outcome_code(Outcome.OK):
            t = self.by_code.get(head.get("txcode"))
            if t is None:
                raise ValueError(f"unknown txcode {head.get('txcode')!r} in the answer")
            try:
                out.update(load_fields(t.answer_fields, body or {}))
            except FormatError as e:
                raise ValueError(f"{t.code} answer: {e.reason}") from None
        elif body:
            raise ValueError(f"answer {out.get('resp_code')} carries a body")
        return out
