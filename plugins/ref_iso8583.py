"""The ``ref-iso8583`` codec: ISO 8583:1987, TPDU, sign-in, X9.19 MAC.

Implements ``docs/specs/ref-iso8583.rst`` byte for byte.

Frames
    The framing layer (``Framing(kind="tpdu2")``) strips and adds the 2-byte
    big-endian length, enforces the 4096-byte limit and swallows empty
    keep-alive frames.  Every frame this module reads or writes is therefore
    the TPDU followed by the ISO 8583 message, *without* the length prefix.

Layout
    This module is the spec's declarations: the field table (:data:`FIELDS`,
    §2), the field 48 / 62 contents (§3, §4), the messages, the response
    codes and the checks.  The machinery is the SDK's
    (:mod:`bankgate.codec.iso8583`): :data:`PACKAGER`, made from the field
    table, scans a frame's bitmap and fields (``_scan``: the gateway's hot
    path) and assembles answers (:func:`assemble`); :data:`MESSAGE` is the
    whole frame as one ``construct`` struct, for :func:`layouts`.  The
    field 48 contents are ``construct`` structs of
    :mod:`bankgate.codec.fields` helpers, built by
    :func:`~bankgate.codec.fields.packer`.  The scan keeps every field read
    before a malformed one, which the error rules need (echo what could be
    read, close when field 11 cannot be read).

Checks, in the spec's order (§1, §4, §5)
    TPDU, MTI and bitmap unreadable -> close; field 11 unreadable -> close;
    address or field 32 not this bank -> ``03``; no sign-in -> ``A7``; bad
    MAC -> ``A0``; malformed -> ``30``; wrong processing code / network code
    -> ``12``; then the ledger.

Per-connection state: ``session.state["mak"]`` holds the MAC key from the
last sign-in (both on the gateway side and on the simulated bank side).
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from construct import Struct, Terminated

from bankgate.canon.masking import mask_pan
from bankgate.canon.messages import (
    Channel,
    Origin,
    Outcome,
    PaymentRequest,
    PaymentResult,
    QueryRequest,
    QueryResult,
    ReversalRequest,
    ReversalResult,
    fingerprint,
)
from bankgate.codec.base import Close, Dispatch, Framing, Reply, Session
from bankgate.codec.capabilities import ALWAYS, KeyKind, OptionSpec, SimulatorTraits
from bankgate.codec.crypto import kcv, macs_equal, unwrap_key, wrap_key
from bankgate.codec.fields import Counted, Fen, GbkText, Number, gbk_fit, packer
from bankgate.codec.iso8583 import (
    SECONDARY,
    TPDU_LENGTH,
    Fixed,
    LLVar,
    Packager,
    Scan,
    connection_x919,
    field_mask,
    forget_x919,
    reply_tpdu,
    tpdu,
)
from bankgate.codec.statement import (
    CHUNK,
    Records,
    Statement,
    StatementError,
    blocks,
    first_line,
    renumber,
)

log = logging.getLogger(__name__)

NAME = "ref-iso8583"
MAX_FRAME = 4096
TPDU_ID = 0x60
CURRENCY = b"156"
QUERY_CODE = b"310000"
PAYMENT_CODE = b"500000"
MAX_BILLS = 14  # 0110 field 48: the 14 oldest bills fill it
ZERO_MAC = bytes(8)

# =============================================================================
# the layout (§2, §3, §4)
# =============================================================================

#: Field number -> field type, spec §2.  The spec's ``an`` fields accept
#: spaces (banks pad RRNs with them): ISO 8583's ``anp``.
FIELDS: dict[int, Fixed | LLVar] = {
    2: LLVar(2, 19, "n"),  # PAN
    3: Fixed(6, "n"),  # processing code
    4: Fixed(12, "n"),  # amount, fen
    7: Fixed(10, "n"),  # transmission MMDDhhmmss
    11: Fixed(6, "n"),  # STAN
    12: Fixed(6, "n"),  # local time hhmmss
    13: Fixed(4, "n"),  # local date MMDD
    15: Fixed(4, "n"),  # settlement date MMDD
    32: LLVar(2, 11, "n"),  # acquiring institution = bank_code
    37: Fixed(12, "anp"),  # RRN
    38: Fixed(6, "anp"),  # authorisation id
    39: Fixed(2, "anp"),  # response code
    41: Fixed(8, "ans"),  # terminal id
    42: Fixed(15, "ans"),  # card acceptor id
    48: LLVar(3, 999, "gbk"),  # private data, GBK
    49: Fixed(3, "n"),  # currency
    60: LLVar(3, 999, "ans"),  # network management code
    62: LLVar(3, 999, "b"),  # working key
    64: Fixed(8, "b"),  # MAC
    90: Fixed(42, "n"),  # original data elements
    128: Fixed(8, "b"),  # MAC
}

TPDU = tpdu(TPDU_ID)

#: The machinery made from the field table: scanner, assembler, checks.
PACKAGER = Packager(FIELDS, header_length=TPDU_LENGTH)
_scan = PACKAGER.scan
assemble = PACKAGER.assemble

#: The whole frame (TPDU + message), for ``layouts()``.
MESSAGE = PACKAGER.message("tpdu" / TPDU)
MESSAGE_C = MESSAGE.compile()

BILL = Struct(
    "bill_id" / GbkText(20),
    "fee_type" / GbkText(2),
    "period" / GbkText(16),
    "amount" / Fen(12),
    "late_fee" / Fen(12),
)
#: 0100 / 0200 request field 48.
REQUEST_48 = Struct("customer_no" / GbkText(20))  # sent unpadded: see _customer_no
#: The name in a 0110: a longer one is cut on a GBK character boundary (§3).
NAME_BYTES = 60
#: 0110 approval field 48.
QUERY_REPLY_48 = Struct(
    "customer_no" / GbkText(20),
    "name" / GbkText(NAME_BYTES),
    "bills" / Counted(Number(2), BILL),
    Terminated,
)
#: 0210 approval field 48.
PAYMENT_REPLY_48 = Struct(
    "receipt_no" / GbkText(20),
    "invoice_no" / GbkText(20),
    "remaining_due" / Fen(12),
    Terminated,
)
#: 0810 sign-in approval field 62.
SIGNIN_62 = Struct("mak_under_zmk" / Fixed(16), "check_value" / Fixed(4), Terminated)

QUERY_REPLY_48_C = QUERY_REPLY_48.compile()
PAYMENT_REPLY_48_C = PAYMENT_REPLY_48.compile()
_pack_query_48 = packer(QUERY_REPLY_48)
_pack_payment_48 = packer(PAYMENT_REPLY_48)


# =============================================================================
# messages and codes
# =============================================================================


@dataclass(frozen=True, slots=True)
class _Msg:
    mti: bytes
    resp: bytes
    txname: str
    required: int  # 128-bit mask of required fields
    allowed: int  # 128-bit mask of allowed fields
    echo: tuple[int, ...]  # request fields the response repeats
    mac: int | None  # MAC field of the request and response
    proc: bytes | None  # the processing code this MTI requires


_ECHO = (3, 4, 7, 11, 12, 13, 32, 37, 41, 42, 49, 90)
#: Fields of each response (spec §3); a response echoes the request's fields
#: among ``_ECHO`` (``60`` too in 0810) that its layout has.
_RESPONSE_FIELDS = {
    b"0810": (7, 11, 32, 39, 60, 62),
    b"0110": (3, 4, 7, 11, 12, 13, 32, 37, 39, 41, 42, 48, 49, 64),
    b"0210": (3, 4, 7, 11, 12, 13, 15, 32, 37, 38, 39, 41, 42, 48, 49, 64),
    b"0410": (3, 4, 7, 11, 12, 13, 32, 37, 39, 41, 42, 49, 90, 128),
    b"0430": (3, 4, 7, 11, 12, 13, 32, 37, 39, 41, 42, 49, 90, 128),
}
_ECHO_NO_AMOUNT = tuple(n for n in _ECHO if n != 4)
_FIN_BASE = (3, 7, 11, 12, 13, 32, 37, 41, 42, 49)


def _msg(mti, resp, txname, required, optional=(), mac=None, proc=None, echo=_ECHO):
    req = tuple(required) + ((mac,) if mac else ())
    echo = tuple(n for n in echo if n in _RESPONSE_FIELDS[resp])
    return _Msg(mti, resp, txname, field_mask(req), field_mask(req + tuple(optional)), echo,
                mac, proc)


_REV = (*_FIN_BASE, 4, 90)
REQUESTS: dict[bytes, _Msg] = {
    b"0800": _msg(b"0800", b"0810", "network", (7, 11, 32, 60), echo=(7, 11, 32, 60)),
    # 0110 field 4 is the approval's total, never an echo
    b"0100": _msg(b"0100", b"0110", "query", (*_FIN_BASE, 48), (), 64, QUERY_CODE, _ECHO_NO_AMOUNT),
    b"0200": _msg(b"0200", b"0210", "payment", (*_FIN_BASE, 4, 48), (2,), 64, PAYMENT_CODE),
    b"0400": _msg(b"0400", b"0410", "reversal", _REV, (), 128, PAYMENT_CODE),
    b"0420": _msg(b"0420", b"0430", "reversal_advice", _REV, (), 128, PAYMENT_CODE),
}
NETWORK_SIGNIN = b"001"
NETWORK_SIGNOUT = b"002"
NETWORK_ECHO = b"301"
_NETWORK_TX = {NETWORK_SIGNIN: "signin", NETWORK_SIGNOUT: "signout", NETWORK_ECHO: "echo"}

#: Canonical outcome -> field 39 (spec §3, §5).  Total over Outcome.
OUTCOME_CODES: dict[Outcome, str] = {
    Outcome.OK: "00",
    Outcome.NOT_FOUND: "14",
    Outcome.NOTHING_DUE: "21",
    Outcome.AMOUNT_REJECTED: "13",
    Outcome.ACCOUNT_LOCKED: "62",
    Outcome.DUPLICATE_MISMATCH: "94",
    Outcome.ORIGINAL_NOT_FOUND: "25",
    Outcome.REVERSAL_NOT_ALLOWED: "40",
    Outcome.ALREADY_REVERSED: "00",  # reversing is idempotent
    Outcome.REVERSED_FIRST: "R1",
    Outcome.DATE_CLOSED: "D1",
    Outcome.FORMAT_ERROR: "30",
    Outcome.MAC_ERROR: "A0",
    Outcome.UNKNOWN_TRANSACTION: "12",
    Outcome.NOT_AUTHORISED: "03",
    Outcome.NOT_SIGNED_IN: "A7",
    Outcome.BUSY: "91",
    Outcome.ERROR: "96",
    # two-phase outcomes: no ISO 8583 transaction here prepays, confirms or cancels
    Outcome.EXPIRED: "96",
    Outcome.STATE_NOT_ALLOWED: "96",
}
assert set(OUTCOME_CODES) == set(Outcome), "the outcome table must be total"
_CODE_BYTES = {o: c.encode("ascii") for o, c in OUTCOME_CODES.items()}


def outcome_code(outcome: Outcome) -> str:
    """Field 39 for a canonical outcome."""
    return OUTCOME_CODES[Outcome(outcome)]


# =============================================================================
# field content
# =============================================================================

_ONE_DAY = timedelta(days=1)
_MONTH_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _mmdd_ok(b: bytes) -> bool:
    m = int(b[0:2])
    return 1 <= m <= 12 and 1 <= int(b[2:4]) <= _MONTH_DAYS[m]


def _hhmmss_ok(b: bytes) -> bool:
    return int(b[0:2]) < 24 and int(b[2:4]) < 60 and int(b[4:6]) < 60


def nearest_date(mmdd: bytes | str, today: date) -> date | None:
    """The date with this ``MMDD`` nearest to ``today`` (spec field 13)."""
    if isinstance(mmdd, str):
        mmdd = mmdd.encode("ascii")
    m, d = int(mmdd[0:2]), int(mmdd[2:4])
    try:  # the usual case: this year's date, within a day of today
        c = date(today.year, m, d)
        if abs(c - today) <= _ONE_DAY:
            return c
    except ValueError:
        pass
    best = None
    for y in (today.year - 1, today.year, today.year + 1):
        try:
            c = date(y, m, d)
        except ValueError:
            continue
        if best is None or abs(c - today) < abs(best - today):
            best = c
    return best


def _customer_no(raw: bytes) -> str | None:
    """Request field 48: the customer number, up to 20 bytes, GBK."""
    try:
        text = raw.decode("gbk").rstrip(" ")
    except UnicodeDecodeError:
        return None
    if not text or len(text.encode("gbk")) > 20:
        return None
    return text


@dataclass(slots=True)
class _Fine:
    """What validation found out: field 13 as a date, field 48 as text."""

    trade_date: date | None = None
    customer_no: str | None = None


def _content_error(m: _Msg, s: Scan, session: Session) -> tuple[str | None, _Fine]:
    """Why the fields of a fully read request are malformed (or ``None``),
    and the values validation parsed."""
    fine = _Fine()
    present = s.present & ~SECONDARY
    if present & ~m.allowed:
        return "unexpected field", fine
    if m.required & ~present:
        return "missing field", fine
    f = s.fields
    bad = PACKAGER.invalid(f)
    if bad is not None:
        return f"field {bad} malformed", fine
    t7 = f[7]
    if not (_mmdd_ok(t7) and _hhmmss_ok(t7[4:])):
        return "field 7 not a date and time", fine
    if m.mac is None:  # 0800
        return None, fine
    if not _hhmmss_ok(f[12]):
        return "field 12 not a time", fine
    if not _mmdd_ok(f[13]):
        return "field 13 not a date", fine
    today = session.today()
    d = nearest_date(f[13], today)
    if d is None or abs(d - today) > _ONE_DAY:
        return "field 13 more than one day from today", fine
    fine.trade_date = d
    if f[49] != CURRENCY:
        return "field 49 not 156", fine
    if not f[37].strip(b" "):
        return "field 37 blank", fine
    if 48 in f:
        fine.customer_no = _customer_no(f[48])
        if fine.customer_no is None:
            return "field 48 not a customer number", fine
    return None, fine


# =============================================================================
# the codec
# =============================================================================


def _text(b: bytes) -> str:
    return b.decode("latin-1")


def _approval_mac_key(session: Session, fallback: bytes | None) -> bytes | None:
    return session.state.get("mak") or fallback


class RefIso8583Codec:
    name = NAME
    description = "ISO 8583:1987, TPDU, sign-in with MAK exchange, ANSI X9.19 MAC"
    framing = Framing(
        kind="tpdu2",
        max_length=MAX_FRAME,
        pipelined=True,
        keepalive_empty=True,
        idle_timeout=60.0,
    )
    # [bank.options] this plugin reads: the channel code recorded for its payments
    option_specs = (
        OptionSpec("channel", str, Channel.DEBIT_CARD.value,
                   "channel code recorded for the bank's payments (02 debit card)",
                   choices=tuple(c.value for c in Channel if c.value < "90")),
    )

    # -- gateway side ----------------------------------------------------------

    def decode(self, frame: bytes, session: Session):
        try:
            return self._decode(bytes(frame), session)
        except Exception as e:  # never let a frame take the connection down
            log.error("%s: internal error decoding a frame: %s", NAME, type(e).__name__)
            return Close("internal error")

    def _decode(self, frame: bytes, session: Session):
        if len(frame) > MAX_FRAME:
            return Close("frame too long")
        if len(frame) < 5 or frame[0] != TPDU_ID:
            return Close("bad TPDU")
        m = REQUESTS.get(frame[5:9])
        if m is None:
            return Close("unknown MTI")
        s = _scan(frame)
        if s is None:
            return Close("unreadable bitmap")
        stan = s.fields.get(11)
        if stan is None or not stan.isdigit():
            return Close("field 11 unreadable")
        tpdu = reply_tpdu(frame)
        f = s.fields
        log_ = {"mti": m.mti.decode(), "stan": stan.decode()}

        def reply(outcome: Outcome, key: bytes | None, extra=None, txname=m.txname):
            frame_out = _respond(tpdu, m, f, _CODE_BYTES[outcome], extra, key, session.state)
            return Reply(frame_out, outcome, txname, log_)

        f32 = f.get(32)
        if not session.address_allowed or (
            f32 is not None and f32 != session.bank.bank_code.encode("ascii", "replace")
        ):
            return reply(Outcome.NOT_AUTHORISED, None)
        if m.mac is None:
            return self._network(m, s, session, reply)

        mak = session.state.get("mak")
        if mak is None:
            return reply(Outcome.NOT_SIGNED_IN, None)
        mac_field = 128 if s.secondary else 64
        mac = f.get(mac_field)
        if s.broken or mac is None:
            return reply(Outcome.FORMAT_ERROR, mak)
        if not macs_equal(connection_x919(session.state, mak, frame[5 : s.mac_at[mac_field]]),
                          mac):
            return reply(Outcome.MAC_ERROR, mak)
        if not s.complete:
            return reply(Outcome.FORMAT_ERROR, mak)
        reason, fine = _content_error(m, s, session)
        if reason is not None:
            log_["reason"] = reason
            return reply(Outcome.FORMAT_ERROR, mak)
        if f[3] != m.proc:
            return reply(Outcome.UNKNOWN_TRANSACTION, mak)
        return self._dispatch(m, f, fine, tpdu, mak, session, log_)

    def _network(self, m: _Msg, s: Scan, session: Session, reply):
        f = s.fields
        if not s.complete:
            return reply(Outcome.FORMAT_ERROR, None)
        reason, _ = _content_error(m, s, session)
        if reason is not None:
            return reply(Outcome.FORMAT_ERROR, None)
        code = f[60]
        txname = _NETWORK_TX.get(code)
        if txname is None:
            return reply(Outcome.UNKNOWN_TRANSACTION, None)
        if code == NETWORK_SIGNIN:
            zmk = session.bank.keys.zmk
            try:
                if zmk is None:
                    raise ValueError("no ZMK configured")
                rnd = session.random_bytes or os.urandom
                mak = bytes(rnd(16))
                if len(mak) != 16:
                    raise ValueError("random source gave a short key")
                key62 = wrap_key(zmk, mak) + kcv(mak, 4)
            except Exception as e:
                log.error("%s: sign-in cannot be served: %s", NAME, type(e).__name__)
                return reply(Outcome.ERROR, None, txname=txname)
            session.state["mak"] = mak
            return reply(Outcome.OK, None, {62: key62}, txname=txname)
        if code == NETWORK_SIGNOUT:
            session.state.pop("mak", None)
            forget_x919(session.state)
        return reply(Outcome.OK, None, txname=txname)

    def _dispatch(self, m, f, fine: _Fine, tpdu, mak, session, log_):
        bank = session.bank
        customer_no = fine.customer_no
        origin = Origin(
            bank=bank.name,
            trade_date=fine.trade_date,
            trade_time=_text(f[12]),
            branch=_text(f[42]).rstrip(" "),
            teller=_text(f[41]).rstrip(" "),
            channel=str(bank.options.get("channel", Channel.DEBIT_CARD.value)),
        )
        rrn = _text(f[37])
        log_["rrn"] = rrn
        if customer_no is not None:
            log_["customer_no"] = customer_no
        if m.mti == b"0100":
            request = QueryRequest(origin=origin, customer_no=customer_no)
        elif m.mti == b"0200":
            pan = mask_pan(_text(f[2])) if 2 in f else ""
            amount = int(f[4])
            log_["amount"] = amount
            if pan:
                log_["pan"] = pan
            request = PaymentRequest(
                origin=origin,
                serial=rrn,
                customer_no=customer_no,
                amount=amount,
                content=fingerprint(f[3], f[4], f[48]),
                pan_masked=pan,
            )
        else:  # 0400 / 0420
            amount = int(f[4])
            log_["amount"] = amount
            log_["orig_serial"] = log_.pop("rrn")  # a reversal's RRN is its payment's
            request = ReversalRequest(
                origin=origin,
                orig_serial=rrn,
                customer_no=None,
                amount=amount,
                serial=None,
                latest_only=bank.latest_only_reversal,
            )

        def encode(result) -> bytes:
            key = _approval_mac_key(session, mak)
            try:
                outcome = Outcome(getattr(result, "outcome", Outcome.ERROR))
                extra = _approval_fields(m, f, outcome, result)
                if extra is None:  # OK with the wrong result type
                    outcome = Outcome.ERROR
                return _respond(tpdu, m, f, _CODE_BYTES[outcome], extra, key, session.state)
            except Exception as e:
                log.error("%s: cannot encode a %s response: %s", NAME, m.txname, type(e).__name__)
                return _respond(tpdu, m, f, _CODE_BYTES[Outcome.ERROR], {}, key, session.state)

        return Dispatch(request, encode, m.txname, log_)

    def outcome_code(self, outcome: Outcome) -> str:
        return outcome_code(outcome)

    def mask_frame(self, frame: bytes) -> str:
        return mask_frame(frame)

    def layouts(self) -> dict:
        return layouts()

    # -- bank side ---------------------------------------------------------------

    def client_encode(self, txn: str, values: dict, session: Session) -> bytes:
        return client_encode(txn, values, session)

    def client_decode(self, frame: bytes, session: Session) -> dict:
        return client_decode(frame, session)

    # -- statement file ------------------------------------------------------------

    @staticmethod
    def read_statement(data: bytes) -> list[dict]:
        return read_statement(data)

    @staticmethod
    def write_statement(records) -> bytes:
        return write_statement(records)

    @staticmethod
    def statement_name(bank_code: str, settle_date: date) -> str:
        return statement_name(bank_code, settle_date)


_SECRET_FIELDS = (62, 64, 128)


def mask_frame(frame: bytes) -> str:
    """A frame for the debug log: the fields that could be read, with the
    card number masked and keys and MACs replaced by their length."""
    frame = bytes(frame)
    s = _scan(frame) if len(frame) >= 9 else None
    if s is None:
        return f"<{len(frame)} bytes, no readable bitmap>"
    parts = [f"tpdu={frame[:5].hex()}", f"mti={_text(frame[5:9])!r}"]
    for n, v in s.fields.items():
        if n in _SECRET_FIELDS:
            parts.append(f"{n}=<{len(v)} bytes>")
        elif n == 2:
            parts.append(f"2={mask_pan(_text(v))!r}")
        elif n == 48:
            parts.append(f"48={v.decode('gbk', 'replace')!r}")
        else:
            parts.append(f"{n}={_text(v)!r}")
    if not s.complete:
        parts.append("(malformed)")
    return " ".join(parts)


def _approval_fields(m: _Msg, f: dict, outcome: Outcome, result) -> dict | None:
    """The fields an approval adds (§3), ``{}`` for declines, ``None`` when an
    ``OK`` result is not of the type this transaction expects."""
    if OUTCOME_CODES[outcome] != "00":
        return {}
    if m.mti == b"0100":
        if outcome is not Outcome.OK or not isinstance(result, QueryResult):
            return None
        bills = sorted(result.bills, key=lambda b: (b.period, b.bill_id))[:MAX_BILLS]
        f48 = _pack_query_48(
            {
                "customer_no": result.customer_no or _customer_no(f[48]) or "",
                "name": gbk_fit(result.name, NAME_BYTES, errors="replace"),  # §3: cut
                "bills": [
                    {
                        "bill_id": b.bill_id,
                        "fee_type": b.fee_type,
                        "period": b.period,
                        "amount": b.amount,
                        "late_fee": b.late_fee,
                    }
                    for b in bills
                ],
            }
        )
        return {4: b"%012d" % _fen(result.total), 48: f48}
    if m.mti == b"0200":
        if outcome is not Outcome.OK or not isinstance(result, PaymentResult):
            return None
        f48 = _pack_payment_48(
            {
                "receipt_no": result.receipt_no,
                "invoice_no": result.invoice_no,
                "remaining_due": result.remaining_due,
            }
        )
        auth = result.receipt_no[-6:].rjust(6, "0").encode("ascii", "replace")
        return {15: f[13], 38: auth, 48: f48}
    # 0410 / 0430: an approval must come from the ledger's reversal
    return {} if isinstance(result, ReversalResult) else None


def _fen(amount: int) -> int:
    if not isinstance(amount, int) or amount < 0 or amount > 999_999_999_999:
        raise ValueError("amount does not fit n12")
    return amount


_ZERO_MAC_CODES = (_CODE_BYTES[Outcome.NOT_AUTHORISED], _CODE_BYTES[Outcome.NOT_SIGNED_IN])


def _respond(tpdu, m: _Msg, f: dict, code: bytes, extra, key: bytes | None, state: dict):
    """The response to request fields ``f``: the echoed fields, field 39
    ``code``, the approval's ``extra`` fields and the MAC (``03`` and ``A7``
    answers carry eight zero bytes, spec §4)."""
    if code in _ZERO_MAC_CODES:
        key = None
    out = {n: f[n] for n in m.echo if n in f}
    out[39] = code
    if extra:
        out.update(extra)
    return assemble(tpdu, m.resp, out, m.mac, key, state)


# =============================================================================
# bank side: the simulator's encoder and decoder
# =============================================================================

_CLIENT_TXN = {
    "signin": (b"0800", NETWORK_SIGNIN),
    "signout": (b"0800", NETWORK_SIGNOUT),
    "echo": (b"0800", NETWORK_ECHO),
    "query": (b"0100", QUERY_CODE),
    "pay": (b"0200", PAYMENT_CODE),
    "payment": (b"0200", PAYMENT_CODE),
    "reverse": (b"0400", PAYMENT_CODE),
    "reversal": (b"0400", PAYMENT_CODE),
    "reversal_advice": (b"0420", PAYMENT_CODE),
}
DEFAULT_TPDU = bytes.fromhex("6000030000")


def _ascii(v, n: int | None = None, what: str = "value") -> bytes:
    b = v if isinstance(v, bytes) else str(v).encode("ascii")
    if n is not None and len(b) != n:
        raise ValueError(f"{what} must be {n} characters")
    return b


def _next_stan(session: Session) -> int:
    stan = session.state.get("stan", 0) % 999999 + 1
    session.state["stan"] = stan
    return stan


def client_encode(txn: str, values: dict, session: Session) -> bytes:
    """Build a bank request frame (TPDU + message, no length prefix).

    ``txn``: ``signin``, ``signout``, ``echo``, ``query``, ``pay``,
    ``reverse`` or ``reversal_advice``.  ``values`` (all optional unless
    noted): ``stan`` (default: the session's next), ``transmission`` (field 7,
    ``MMDDhhmmss``, default now), ``trade_date`` (field 13, a date or
    ``MMDD``, default today), ``trade_time`` (field 12), ``bank_code``
    (field 32, default the session bank's), ``rrn`` (field 37), ``terminal_id``
    (41), ``branch`` (42), ``customer_no`` (48, query/pay), ``amount`` (fen,
    pay/reverse), ``pan`` (field 2), ``orig_mti`` / ``orig_stan`` /
    ``orig_transmission`` (field 90), ``processing_code``, ``currency``,
    ``network_code`` (field 60), ``tpdu`` (5 bytes), ``mac`` (8 bytes, sent
    instead of the computed MAC) and ``fields`` ({number: bytes or None}: raw
    overrides, for tests).  The MAC uses ``session.state["mak"]`` (set by
    :func:`client_decode` of a sign-in answer), eight zero bytes without one.
    """
    try:
        mti, code = _CLIENT_TXN[txn]
    except KeyError:
        raise ValueError(f"unknown transaction {txn!r}") from None
    v = values
    now = session.now()
    stan = v.get("stan")
    stan = _next_stan(session) if stan is None else stan
    stan_b = b"%06d" % stan if isinstance(stan, int) else _ascii(stan, 6, "stan")
    transmission = _ascii(v.get("transmission") or now.strftime("%m%d%H%M%S"), 10, "transmission")
    bank_code = _ascii(v.get("bank_code", session.bank.bank_code))
    fields = {7: transmission, 11: stan_b, 32: bank_code}
    m = REQUESTS[mti]
    if mti == b"0800":
        fields[60] = _ascii(v.get("network_code", code))
    else:
        td = v.get("trade_date", now.date())
        fields[3] = _ascii(v.get("processing_code", code), 6, "processing_code")
        fields[12] = _ascii(v.get("trade_time") or now.strftime("%H%M%S"), 6, "trade_time")
        fields[13] = _ascii(td.strftime("%m%d") if isinstance(td, date) else td, 4, "trade_date")
        # default RRN: unique across connections (a STAN restarts per session)
        rrn = v.get("rrn") or f"{int.from_bytes(os.urandom(5), 'big') % 10**12:012d}"
        fields[37] = _ascii(str(rrn).ljust(12), 12, "rrn")
        fields[41] = _ascii(str(v.get("terminal_id", "T0000001")).ljust(8), 8, "terminal_id")
        fields[42] = _ascii(str(v.get("branch", "000000000")).ljust(15), 15, "branch")
        fields[49] = _ascii(v.get("currency", CURRENCY), 3, "currency")
        if mti in (b"0100", b"0200"):
            cno = v["customer_no"]
            fields[48] = cno if isinstance(cno, bytes) else str(cno).encode("gbk")
        if mti != b"0100":
            fields[4] = b"%012d" % _fen(int(v["amount"]))
        if mti == b"0200" and v.get("pan"):
            fields[2] = _ascii(v["pan"])
        if mti in (b"0400", b"0420"):
            orig_stan = v.get("orig_stan", stan_b)
            orig_stan = b"%06d" % orig_stan if isinstance(orig_stan, int) else _ascii(orig_stan)
            fields[90] = (
                _ascii(v.get("orig_mti", "0200"), 4, "orig_mti")
                + _ascii(orig_stan, 6, "orig_stan")
                + _ascii(v.get("orig_transmission") or transmission, 10, "orig_transmission")
                + bank_code.rjust(11, b"0")
                + b"0" * 11
            )
    for k, val in (v.get("fields") or {}).items():
        if val is None:
            fields.pop(k, None)
        else:
            fields[k] = val
    tpdu = v.get("tpdu", DEFAULT_TPDU)
    tpdu = bytes.fromhex(tpdu) if isinstance(tpdu, str) else bytes(tpdu)
    if m.mac is None:
        return assemble(tpdu, mti, fields)
    mak = session.state.get("mak")
    out = assemble(tpdu, mti, fields, m.mac, mak, session.state)
    if v.get("mac") is not None:
        out = out[:-8] + bytes(v["mac"])
    return out


def client_decode(frame: bytes, session: Session) -> dict:
    """Parse a gateway response frame (TPDU + message, no length prefix).

    Returns ``{"tpdu", "mti", "fields": {number: str or bytes},
    "response_code", "stan", "field48": dict or None, "mac_ok": bool or None,
    "signed_in": bool}``.  Text fields are ``str``; 62, 64 and 128 are bytes.
    An approved sign-in stores the unwrapped MAK in ``session.state["mak"]``
    after checking its check value (``session.bank.keys.zmk``); an approved
    sign-out discards it.  Raises ``ValueError`` for a malformed frame.
    """
    frame = bytes(frame)
    scan = _scan(frame) if frame[:1] == bytes([TPDU_ID]) else None
    if scan is None or (scan.broken and not scan.undefined):
        raise ValueError(f"{NAME}: unreadable response frame")
    if scan.undefined:
        raise ValueError(f"{NAME}: response has a field this spec does not define")
    mti = _text(frame[5:9])
    fields: dict[int, object] = {}
    for n, val in scan.fields.items():
        if n in (62, 64, 128):
            fields[n] = val
        elif n == 48:
            fields[n] = val.decode("gbk")
        else:
            fields[n] = _text(val)
    code = fields.get(39)
    out = {
        "tpdu": frame[1:5],
        "mti": mti,
        "fields": fields,
        "response_code": code,
        "stan": fields.get(11),
        "field48": None,
        "mac_ok": None,
        "signed_in": "mak" in session.state,
    }
    if code == "00" and 48 in fields:
        layout = {"0110": QUERY_REPLY_48_C, "0210": PAYMENT_REPLY_48_C}.get(mti)
        if layout is not None:
            parsed = layout.parse(scan.fields[48])
            out["field48"] = {k: v for k, v in parsed.items() if not k.startswith("_")}
            if "bills" in out["field48"]:
                out["field48"]["bills"] = [
                    {k: v for k, v in b.items() if not k.startswith("_")}
                    for b in out["field48"]["bills"]
                ]
                out["field48"]["bill_count"] = len(out["field48"]["bills"])
    if mti == "0810" and code == "00":
        net = fields.get(60)
        if net == "001":
            if 62 not in fields:
                raise ValueError(f"{NAME}: sign-in approved without field 62")
            k = SIGNIN_62.parse(fields[62])
            zmk = session.bank.keys.zmk
            if zmk is None:
                raise ValueError(f"{NAME}: no ZMK configured for this bank")
            mak = unwrap_key(zmk, k.mak_under_zmk)
            if not macs_equal(kcv(mak, 4), k.check_value):
                raise ValueError(f"{NAME}: the MAK's check value does not match")
            session.state["mak"] = mak
        elif net == "002":
            session.state.pop("mak", None)
            forget_x919(session.state)
        out["signed_in"] = "mak" in session.state
    mac_field = 128 if 128 in scan.fields else 64 if 64 in scan.fields else None
    mak = session.state.get("mak")
    if mac_field and mak is not None:
        mac = scan.fields[mac_field]
        at = scan.mac_at[mac_field]
        if mac == ZERO_MAC and code in ("03", "A7"):
            out["mac_ok"] = None
        else:
            out["mac_ok"] = macs_equal(connection_x919(session.state, mak, bytes(frame[5:at])),
                                       mac)
    return out


# =============================================================================
# statement file (§6)
# =============================================================================

STATEMENT_COLUMNS = (
    "settle_date",
    "rrn",
    "stan",
    "trade_date",
    "trade_time",
    "terminal_id",
    "customer_no",
    "amount",
    "pan_masked",
)
_STATEMENT_HEADER = ",".join(STATEMENT_COLUMNS)


def statement_name(bank_code: str, settle_date: date) -> str:
    return f"{bank_code}_{settle_date:%Y%m%d}.csv"


def _ymd(v) -> str:
    if isinstance(v, (date, datetime)):
        return v.strftime("%Y%m%d")
    s = str(v)
    datetime.strptime(s, "%Y%m%d")  # raises ValueError
    return s


def write_statement(records) -> bytes:
    """Records (dicts: settle_date, serial, stan, trade_date, trade_time,
    terminal_id, customer_no, amount (fen), pan_masked) -> the §6 CSV."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    buf.write(_STATEMENT_HEADER + "\n")
    for r in records:
        amount = r["amount"]
        if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
            raise ValueError("statement amount must be a non-negative integer (fen)")
        w.writerow(
            [
                _ymd(r["settle_date"]),
                r.get("serial", r.get("rrn", "")),
                r.get("stan", ""),
                _ymd(r["trade_date"]),
                r.get("trade_time", ""),
                r.get("terminal_id", ""),
                r["customer_no"],
                str(amount),
                r.get("pan_masked", "") or "",
            ]
        )
    return buf.getvalue().encode("utf-8")


def _date(s: str, what: str, line: int) -> date:
    try:
        if len(s) != 8 or not s.isdigit():
            raise ValueError
        return datetime.strptime(s, "%Y%m%d").date()
    except ValueError:
        raise ValueError(f"statement line {line}: {what} is not YYYYMMDD") from None


def read_statement(data: bytes) -> list[dict]:
    """The §6 CSV -> records (dicts as :func:`write_statement` takes, dates as
    ``datetime.date``, ``amount`` int fen).  ``ValueError`` names the line."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError("statement is not UTF-8") from None
    rows = csv.reader(io.StringIO(text, newline=""))
    out = []
    header = next(rows, None)
    if header is None or tuple(h.strip() for h in header) != STATEMENT_COLUMNS:
        raise ValueError("statement line 1: header row is not " + _STATEMENT_HEADER)
    for i, row in enumerate(rows, start=2):
        if not row or row == [""]:
            continue
        if len(row) != len(STATEMENT_COLUMNS):
            raise ValueError(f"statement line {i}: {len(row)} columns, expected 9")
        settle, rrn, stan, trade, ttime, term, cno, amount, pan = row
        if not amount.isdigit() or not amount.isascii():
            raise ValueError(f"statement line {i}: amount is not fen digits")
        if len(ttime) != 6 or not ttime.isdigit() or not _hhmmss_ok(ttime.encode()):
            raise ValueError(f"statement line {i}: trade_time is not hhmmss")
        if not rrn:
            raise ValueError(f"statement line {i}: rrn is empty")
        if not cno:
            raise ValueError(f"statement line {i}: customer_no is empty")
        out.append(
            {
                "settle_date": _date(settle, "settle_date", i),
                "serial": rrn,
                "stan": stan,
                "trade_date": _date(trade, "trade_date", i),
                "trade_time": ttime,
                "terminal_id": term,
                "customer_no": cno,
                "amount": int(amount),
                "pan_masked": pan,
            }
        )
    return out




class IsoFormat:
    """§6 for the reconciler: a CSV with a header row, no totals line.

    A large file is read in chunks, each behind the header row; errors name
    the line of the whole file.
    """

    has_header = False
    names_bills = False

    def file_name(self, bank_code: str, d: date) -> str:
        return statement_name(bank_code, d)

    def read(self, data: bytes, bank_code: str, d: date, chunk: int = CHUNK) -> Statement:
        if not data:
            raise StatementError("statement line 1: empty file, the header row is missing")
        head, rest = first_line(data)
        st = Statement(d, Records())
        try:
            read_statement(head + b"\n")
        except ValueError as e:
            raise StatementError(str(e)) from None
        for before, block in blocks(data, rest, len(data), chunk):
            try:
                recs = read_statement(head + b"\n" + block)
            except ValueError as e:
                raise StatementError(renumber(e, before)) from None
            for r in recs:
                if r["settle_date"] != d:
                    raise StatementError(
                        f"rrn {r['serial']}: settle_date {r['settle_date']:%Y%m%d} is not"
                        f" {d:%Y%m%d}: not this date's statement")
            st.records.extend(recs)
        return st

    def write(self, bank_code: str, d: date, records: list[dict],
              declared: tuple[int, int] | None = None) -> bytes:
        if declared is not None:
            raise ValueError("ref-iso8583 statements have no totals line")
        return write_statement([
            dict(r, settle_date=d, trade_date=r.get("trade_date") or d,
                 trade_time=r.get("trade_time") or "000000",
                 stan=r.get("stan") or f"{i + 1:06d}", terminal_id=r.get("terminal_id") or "")
            for i, r in enumerate(records)])


STATEMENT_FORMAT = IsoFormat()

SIMULATOR_TRAITS = SimulatorTraits(
    ops={"signin": "signin", "signout": "signout", "echo": "echo", "query": "query",
         "pay": "pay", "reverse": "reverse", "advice": "reversal_advice"},
    serial_length=12,  # field 37, an12
    rrn=True,
    signin="signin",
)

#: §4: every bank signs in, its MAC key (MAK) sent under the zone master key
KEY_KINDS = (
    KeyKind("zmk", length=16, check_length=3, required=ALWAYS,
            description="MAK from sign-in under the ZMK",
            why="ref-iso8583 banks sign in with a zone master key"),
)


# =============================================================================


def layouts() -> dict:
    """name -> construct layout, for ``bankgate plugins check``."""
    out = {
        "tpdu": TPDU,
        "message": MESSAGE,
        "field48.request": REQUEST_48,
        "field48.0110": QUERY_REPLY_48,
        "field48.0210": PAYMENT_REPLY_48,
        "field48.bill": BILL,
        "field62.signin": SIGNIN_62,
    }
    for n, f in FIELDS.items():
        out[f"field{n}"] = f
    return out


class _Codec(RefIso8583Codec):
    """``CODEC``: the codec with its declarations (:mod:`bankgate.codec.capabilities`)."""

    statement_format = STATEMENT_FORMAT
    simulator_traits = SIMULATOR_TRAITS
    key_kinds = KEY_KINDS


CODEC = _Codec()

__all__ = [
    "CODEC",
    "KEY_KINDS",
    "SIMULATOR_TRAITS",
    "STATEMENT_FORMAT",
    "IsoFormat",
    "FIELDS",
    "MESSAGE",
    "TPDU",
    "QUERY_REPLY_48",
    "PAYMENT_REPLY_48",
    "SIGNIN_62",
    "assemble",
    "client_decode",
    "client_encode",
    "layouts",
    "mask_frame",
    "mask_pan",
    "nearest_date",
    "outcome_code",
    "read_statement",
    "statement_name",
    "write_statement",
]
