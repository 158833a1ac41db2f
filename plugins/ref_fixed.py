"""Codec for the reference bank interface ``ref-fixed`` (fixed-length GBK).

Spec: ``docs/specs/ref-fixed.rst``.  A frame is ``LLLL`` + a 123-byte header + a
fixed-length body per transaction; the framing layer strips and adds ``LLLL``
(``ascii4``), so every ``frame`` here is the message without its prefix.

Decoding follows the spec's error order (§6) exactly:

1. shorter than the header                       -> close, no answer
2. ``bank_code`` not this bank's, address denied  -> ``8004`` (MAC spaces)
3. MAC on and not verifying                       -> ``8002``
4. ``txcode`` unknown                             -> ``8003``
5. body length, malformed field, ``trade_date``
   more than a day from the calendar date         -> ``8001``
6. the transaction: ``1009`` answered here, the rest dispatched to the ledger.

Answers repeat header fields 1-8 of the request byte for byte; answers other
than ``0000`` have an empty body; with MAC on every answer except ``8004``
carries a MAC over header fields 1-10 and the body.

The bank side (:meth:`RefFixedCodec.client_encode` / ``client_decode``) and the
statement file (§8: :func:`read_statement`, :func:`write_statement`,
:func:`statement_name`, and :class:`FixedFormat` for the reconciler) use the
same layouts.  What the gateway asks of the plugin besides its messages
(:mod:`bankgate.codec.capabilities`) is declared on ``CODEC``: the statement
format, the simulator's traits and the MAC key (§7).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from construct import Array, Bytes, Const, ConstructError, Struct, this

from bankgate.canon.messages import (
    Origin,
    Outcome,
    PaymentRequest,
    PaymentStatus,
    QueryRequest,
    ReversalRequest,
    StatementNotice,
    StatusRequest,
    fingerprint,
)
from bankgate.codec.base import Close, Dispatch, Framing, Reply, Session
from bankgate.codec.capabilities import KeyKind, SimulatorTraits
from bankgate.codec.crypto import X919, macs_equal
from bankgate.codec.fields import (
    DateN8,
    Digits,
    Fen,
    FieldError,
    GbkText,
    Number,
    gbk_fit,
)
from bankgate.codec.statement import (
    CHUNK,
    Records,
    Statement,
    StatementError,
    blocks,
    check_head,
    field_slice,
    first_line,
    renumber,
)

# -- layouts (§3, §4, §8) ----------------------------------------------------

_ECHOED = (  # header fields 1-8: every answer repeats them unchanged
    "txcode" / GbkText(4),
    "bank_code" / GbkText(6),
    "branch" / GbkText(9),
    "teller" / GbkText(8),
    "channel" / GbkText(2),
    "trade_date" / DateN8(),
    "trade_time" / Digits(6),
    "bank_serial" / GbkText(20),
)
_TAIL = (  # fields 9-11
    "resp_code" / GbkText(4),
    "resp_msg" / GbkText(40),
    # raw: with MAC off the gateway ignores field 11 "whatever it holds"
    "mac" / Bytes(16),
)
HEADER = Struct(*_ECHOED, *_TAIL)

HEADER_SIZE = 123
ECHO_END = 63  # header fields 1-8, repeated by every answer
MAC_START = 107  # header fields 1-10 end here; the MAC covers them and the body
MAC_END = HEADER_SIZE
MAC_SPACES = b" " * 16

BILL = Struct(
    "bill_id" / GbkText(20),
    "fee_type" / GbkText(2),
    "period" / GbkText(16),
    "amount" / Fen(12),
    "late_fee" / Fen(12),
)

QUERY_REQUEST = Struct("customer_no" / GbkText(20))
QUERY_RESPONSE = Struct(
    "customer_no" / GbkText(20),
    "name" / GbkText(60),
    "address" / GbkText(80),
    "customer_class" / GbkText(1),
    "total_due" / Fen(12),
    "late_fee" / Fen(12),
    "bill_count" / Number(2),
    "bills" / Array(this.bill_count, BILL),
)
QUERY_RESPONSE_FIXED = 187  # before the bills
BILL_SIZE = 62
MAX_BILLS = 12

PAY_REQUEST = Struct("customer_no" / GbkText(20), "amount" / Fen(12))
PAY_RESPONSE = Struct(
    "customer_no" / GbkText(20),
    "amount" / Fen(12),
    "receipt_no" / GbkText(20),
    "invoice_no" / GbkText(20),
    "remaining_due" / Fen(12),
)

REVERSAL_REQUEST = Struct(
    "customer_no" / GbkText(20),
    "orig_serial" / GbkText(20),
    "amount" / Fen(12),
)
REVERSAL_RESPONSE = REVERSAL_REQUEST

STATUS_REQUEST = Struct("orig_serial" / GbkText(20), "orig_date" / DateN8())
STATUS_RESPONSE = Struct(
    "orig_serial" / GbkText(20),
    "status" / GbkText(1),
    "amount" / Fen(12),
    "receipt_no" / GbkText(20),
)

NOTICE_REQUEST = Struct(
    "settle_date" / DateN8(),
    "file_name" / GbkText(60),
    "record_count" / Number(8),
    "total_amount" / Fen(15),
)

EMPTY = Struct()

STATEMENT_HEADER = Struct(
    Const(b"H"),
    "settle_date" / DateN8(),
    "bank_code" / GbkText(6),
    "record_count" / Number(8),
    "total_amount" / Fen(15),
)
STATEMENT_DETAIL = Struct(
    Const(b"D"),
    "bank_serial" / GbkText(20),
    "trade_date" / DateN8(),
    "trade_time" / Digits(6),
    "customer_no" / GbkText(20),
    "amount" / Fen(12),
    "channel" / GbkText(2),
)

_LAYOUTS = {
    "header": HEADER,
    "1001.request": QUERY_REQUEST,
    "1001.response": QUERY_RESPONSE,
    "1001.bill": BILL,
    "1002.request": PAY_REQUEST,
    "1002.response": PAY_RESPONSE,
    "1003.request": REVERSAL_REQUEST,
    "1003.response": REVERSAL_RESPONSE,
    "1004.request": STATUS_REQUEST,
    "1004.response": STATUS_RESPONSE,
    "1005.request": NOTICE_REQUEST,
    "1005.response": EMPTY,
    "1009.request": EMPTY,
    "1009.response": EMPTY,
    "statement.header": STATEMENT_HEADER,
    "statement.detail": STATEMENT_DETAIL,
}

# compiled once at import: the hot path parses with these
_C = {name: layout.compile() for name, layout in _LAYOUTS.items()}
_HEADER_C = _C["header"]
_TAIL_C = Struct(*_TAIL).compile()


@dataclass(frozen=True)
class _Txn:
    code: str
    name: str
    request: Any  # compiled request layout
    request_size: int


_TXNS = {
    t.code.encode("ascii"): t
    for t in (
        _Txn("1001", "query", _C["1001.request"], QUERY_REQUEST.sizeof()),
        _Txn("1002", "pay", _C["1002.request"], PAY_REQUEST.sizeof()),
        _Txn("1003", "reverse", _C["1003.request"], REVERSAL_REQUEST.sizeof()),
        _Txn("1004", "status", _C["1004.request"], STATUS_REQUEST.sizeof()),
        _Txn("1005", "notice", _C["1005.request"], NOTICE_REQUEST.sizeof()),
        _Txn("1009", "echo", _C["1009.request"], 0),
    )
}
_TXN_BY_NAME = {t.name: t for t in _TXNS.values()}

# -- response codes (§6) ----------------------------------------------------

OUTCOME_CODES: dict[Outcome, str] = {
    Outcome.OK: "0000",
    Outcome.NOT_FOUND: "1001",
    Outcome.NOTHING_DUE: "1002",
    Outcome.AMOUNT_REJECTED: "1003",
    Outcome.ACCOUNT_LOCKED: "1004",
    Outcome.DUPLICATE_MISMATCH: "1005",
    Outcome.ORIGINAL_NOT_FOUND: "1006",
    Outcome.REVERSAL_NOT_ALLOWED: "1007",
    Outcome.REVERSED_FIRST: "1007",
    Outcome.ALREADY_REVERSED: "1008",
    Outcome.DATE_CLOSED: "1009",
    Outcome.FORMAT_ERROR: "8001",
    Outcome.MAC_ERROR: "8002",
    Outcome.UNKNOWN_TRANSACTION: "8003",
    Outcome.NOT_AUTHORISED: "8004",
    Outcome.BUSY: "9001",
}
OTHER_ERROR = "9999"

MESSAGES = {
    "0000": "交易成功",
    "1001": "用户不存在",
    "1002": "无欠费",
    "1003": "金额不符",
    "1004": "用户已冻结或停用",
    "1005": "流水号重复且内容不同",
    "1006": "原交易不存在",
    "1007": "不允许冲正",
    "1008": "原交易已冲正",
    "1009": "该交易日期已扎帐",
    "8001": "报文格式错误",
    "8002": "MAC校验错误",
    "8003": "未知交易码",
    "8004": "机构未授权",
    "9001": "系统忙,请稍后重试",
    "9999": "其他错误",
}
_OUTCOME_MESSAGES = {Outcome.REVERSED_FIRST: "该流水已被冲正,不予缴费"}

_STATUS_CODES = {
    PaymentStatus.POSTED: "0",
    PaymentStatus.REVERSED: "1",
    PaymentStatus.REFUNDED: "1",
}
_STATUS_NAMES = {"0": "POSTED", "1": "REVERSED", "2": "NOT_FOUND"}


def outcome_code(outcome: Outcome) -> str:
    """The spec's response code for a canonical outcome (total over Outcome)."""
    return OUTCOME_CODES.get(outcome, OTHER_ERROR)


def _msg40(code: str, outcome: Outcome | None = None) -> bytes:
    text = _OUTCOME_MESSAGES.get(outcome) or MESSAGES.get(code, "")
    raw = gbk_fit(text, 40).encode("gbk")
    return raw + b" " * (40 - len(raw))


_HEX16 = re.compile(rb"[0-9A-Fa-f]{16}")


def _mac_key(session: Session) -> bytes | None:
    key = session.bank.keys.mac_key
    return key if isinstance(key, bytes) and len(key) == 16 else None


def _mac(session: Session, key: bytes, data: bytes) -> bytes:
    """X9.19 with the connection's MAC context, set up once per connection."""
    x = session.state.get("_x919")
    if x is None or x.key != key:
        x = session.state["_x919"] = X919(key)
    return x.mac(data)


def _mac_field(session: Session, data: bytes) -> bytes:
    """16 hex digits, uppercase, over ``data`` (fields 1-10 + body)."""
    key = _mac_key(session)
    if key is None:
        return MAC_SPACES
    return _mac(session, key, data).hex().upper().encode("ascii")


def _mac_verifies(session: Session, frame: bytes) -> bool:
    key = _mac_key(session)
    given = frame[MAC_START:MAC_END]
    if key is None or _HEX16.fullmatch(given) is None:
        return False
    expected = _mac(session, key, frame[:MAC_START] + frame[MAC_END:])
    return bool(macs_equal(expected, bytes.fromhex(given.decode("ascii"))))


def _pad(text: str, n: int) -> bytes:
    raw = text.encode("gbk")
    return raw + b" " * (n - len(raw))


def _answer(session: Session, head: bytes, code: str, body: bytes = b"",
            outcome: Outcome | None = None) -> bytes:
    """A response: request fields 1-8, ``code``, message, MAC, body."""
    if code != "0000":
        body = b""
    part = head[:ECHO_END] + code.encode("ascii") + _msg40(code, outcome)
    if session.bank.mac and code != "8004":
        mac = _mac_field(session, part + body)
    else:
        mac = MAC_SPACES
    return part + mac + body


# -- response bodies ---------------------------------------------------------


def _text_fit(text: str | None, n: int) -> str:
    """Display text (names, addresses): cut to the field, never mid-character."""
    return gbk_fit(text or "", n, errors="replace")


def _bills_oldest_first(bills) -> list:
    return sorted(bills, key=lambda b: (b.period, b.bill_id))[:MAX_BILLS]


def _query_body(result, req: QueryRequest) -> tuple[str, bytes]:
    bills = _bills_oldest_first(result.bills)
    if not bills and result.total_due == 0 and result.late_fee == 0:
        return "1002", b""  # §4 1001: nothing open, no late fee
    body = _C["1001.response"].build(
        dict(
            customer_no=result.customer_no or req.customer_no,
            name=_text_fit(result.name, 60),
            address=_text_fit(result.address, 80),
            customer_class=result.customer_class or "",
            total_due=result.total_due,
            late_fee=result.late_fee,
            bill_count=len(bills),
            bills=[
                dict(
                    bill_id=b.bill_id,
                    fee_type=b.fee_type,
                    period=b.period,
                    amount=b.amount,
                    late_fee=b.late_fee,
                )
                for b in bills
            ],
        )
    )
    return "0000", body


def _pay_body(result, req: PaymentRequest) -> tuple[str, bytes]:
    body = _C["1002.response"].build(
        dict(
            customer_no=result.customer_no or req.customer_no,
            amount=result.amount,
            receipt_no=result.receipt_no or "",
            invoice_no=result.invoice_no or "",
            # §4 1002: 0 when covered, also when the excess went to prepaid
            remaining_due=max(0, result.remaining_due),
        )
    )
    return "0000", body


def _reversal_body(result, req: ReversalRequest) -> tuple[str, bytes]:
    body = _C["1003.response"].build(
        dict(
            customer_no=result.customer_no or req.customer_no or "",
            orig_serial=result.orig_serial or req.orig_serial,
            amount=result.amount or req.amount,
        )
    )
    return "0000", body


def _status_body(result, req: StatusRequest) -> tuple[str, bytes]:
    status = _STATUS_CODES.get(getattr(result, "status", None), "2")
    if status == "2":
        values = dict(orig_serial=req.orig_serial, status="2", amount=0, receipt_no="")
    else:
        values = dict(
            orig_serial=req.orig_serial,
            status=status,
            amount=result.amount,
            receipt_no=result.receipt_no or "",
        )
    return "0000", _C["1004.response"].build(values)


def _empty_body(result, req) -> tuple[str, bytes]:
    return "0000", b""


# -- statement file (§8) ------------------------------------------------------


def statement_name(bank_code: str, settle_date: date) -> str:
    """``{bank_code}_{YYYYMMDD}.txt``."""
    return f"{bank_code}_{settle_date:%Y%m%d}.txt"


def read_statement(data: bytes) -> tuple[dict, list[dict]]:
    """Parse a statement file.

    Returns ``(header, records)``: ``header`` has ``settle_date``,
    ``bank_code``, ``record_count``, ``total_amount``; each record
    ``serial``, ``trade_date``, ``trade_time``, ``customer_no``, ``amount``
    (fen), ``channel``.  Raises ``ValueError`` naming the line (1-based) for
    a malformed line, a blank or duplicate serial, or a header whose count or
    total disagree with the detail lines.  Lines end in CRLF; a bare LF is
    accepted too, and so is a last line without its terminator.
    """
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
    if not lines:
        raise ValueError("line 1: empty file, the header line is missing")
    first = lines[0]
    if first[:1] != b"H" or len(first) != STATEMENT_HEADER.sizeof():
        raise ValueError(
            f"line 1: not a header line (H + 37 bytes), got {len(first)} bytes"
        )
    try:
        h = _C["statement.header"].parse(first)
    except ConstructError as e:
        raise ValueError(f"line 1: {_reason(e)}") from None
    header = dict(
        settle_date=h.settle_date,
        bank_code=h.bank_code,
        record_count=h.record_count,
        total_amount=h.total_amount,
    )
    records = []
    seen: dict[tuple[date, str], int] = {}
    size = STATEMENT_DETAIL.sizeof()
    for no, line in enumerate(lines[1:], start=2):
        if line[:1] != b"D" or len(line) != size:
            raise ValueError(
                f"line {no}: not a detail line (D + {size - 1} bytes), got {len(line)} bytes"
            )
        try:
            d = _C["statement.detail"].parse(line)
        except ConstructError as e:
            raise ValueError(f"line {no}: {_reason(e)}") from None
        if not d.bank_serial.strip():
            raise ValueError(f"line {no}: bank_serial is blank")
        key = (d.trade_date, d.bank_serial)
        if key in seen:
            raise ValueError(
                f"line {no}: bank_serial {d.bank_serial!r} repeats line {seen[key]}"
            )
        seen[key] = no
        records.append(
            dict(
                serial=d.bank_serial,
                trade_date=d.trade_date,
                trade_time=d.trade_time,
                customer_no=d.customer_no,
                amount=d.amount,
                channel=d.channel,
            )
        )
    if header["record_count"] != len(records):
        raise ValueError(
            f"line 1: record_count {header['record_count']} but {len(records)} detail lines"
        )
    total = sum(r["amount"] for r in records)
    if header["total_amount"] != total:
        raise ValueError(
            f"line 1: total_amount {header['total_amount']} but the details sum to {total}"
        )
    return header, records


def write_statement(bank_code: str, settle_date: date, records) -> bytes:
    """The statement file for ``records`` (dicts as :func:`read_statement`
    returns; ``trade_date`` defaults to ``settle_date``, ``trade_time`` to
    ``000000``, ``channel`` to ``01``).  Raises ``ValueError`` naming the
    record (0-based) that does not fit its fields."""
    records = list(records)
    details = []
    for i, r in enumerate(records):
        try:
            details.append(
                _C["statement.detail"].build(
                    dict(
                        bank_serial=r["serial"],
                        trade_date=r.get("trade_date") or settle_date,
                        trade_time=r.get("trade_time") or "000000",
                        customer_no=r["customer_no"],
                        amount=r["amount"],
                        channel=r.get("channel") or "01",
                    )
                )
            )
        except (ConstructError, KeyError) as e:
            raise ValueError(f"record {i}: {_reason(e)}") from None
    try:
        header = _C["statement.header"].build(
            dict(
                settle_date=settle_date,
                bank_code=bank_code,
                record_count=len(records),
                total_amount=sum(r["amount"] for r in records),
            )
        )
    except ConstructError as e:
        raise ValueError(f"header: {_reason(e)}") from None
    out = [header, *details]
    return b"".join(line + b"\r\n" for line in out)


def _reason(e: Exception) -> str:
    if isinstance(e, KeyError):
        return f"{e.args[0]} is missing"
    if isinstance(e, FieldError):
        return f"{e.field_name or 'field'}: {e.reason}"
    return str(e).splitlines()[-1] if str(e) else type(e).__name__


class FixedFormat:
    """§8 for the reconciler: an ``H`` header line (count, total), ``D`` detail lines.

    A large file is read in chunks: each chunk of detail lines goes to
    :func:`read_statement` behind a header built for it, and its errors name
    the line of the whole file.
    """

    has_header = True
    names_bills = False

    def __init__(self):
        self.header = STATEMENT_HEADER
        self.amount_at = field_slice(STATEMENT_DETAIL, "amount")
        self.detail_size = STATEMENT_DETAIL.sizeof()

    def file_name(self, bank_code: str, d: date) -> str:
        return statement_name(bank_code, d)

    def read(self, data: bytes, bank_code: str, d: date, chunk: int = CHUNK) -> Statement:
        if not data:
            raise StatementError("line 1: empty file, the header line is missing")
        first, rest = first_line(data)
        try:
            h = self.header.parse(first)
        except Exception:  # noqa: BLE001 - let the reader name the problem
            try:
                read_statement(first)
            except ValueError as e:
                raise StatementError(str(e)) from None
            raise StatementError("line 1: not a statement header") from None
        check_head(h.settle_date, d, h.bank_code, bank_code, 1)
        st = Statement(d, Records(), h.bank_code.strip(), h.record_count, h.total_amount)
        a, size = self.amount_at, self.detail_size
        build = self.header.build
        for before, block in blocks(data, rest, len(data), chunk):
            total = 0
            n = 0
            for ln in block.split(b"\n"):
                if ln.endswith(b"\r"):
                    ln = ln[:-1]
                if not ln:
                    continue
                n += 1
                v = ln[a]
                if len(ln) == size and v.isdigit():
                    total += int(v)
            head = build(dict(settle_date=d, bank_code=h.bank_code, record_count=n,
                              total_amount=total))
            try:
                _, recs = read_statement(head + b"\r\n" + block)
            except ValueError as e:
                raise StatementError(renumber(e, before)) from None
            st.records.extend(recs)
        return st

    def write(self, bank_code: str, d: date, records: list[dict],
              declared: tuple[int, int] | None = None) -> bytes:
        data = write_statement(bank_code, d, records)
        if declared is None:
            return data
        head = self.header.build(dict(settle_date=d, bank_code=bank_code,
                                      record_count=declared[0], total_amount=declared[1]))
        return head + data[data.index(b"\r\n"):]


STATEMENT_FORMAT = FixedFormat()

# -- what the simulator and the configuration need (bankgate.codec.capabilities) --

SIMULATOR_TRAITS = SimulatorTraits(
    ops={"query": "query", "pay": "pay", "reverse": "reverse", "status": "status",
         "notice": "notice", "echo": "echo"},
)

#: §7: the X9.19 MAC key, needed by a bank with ``mac = true``
KEY_KINDS = (KeyKind("mac_key", length=16, check_length=3, description="X9.19 MAC key"),)


# -- the codec ----------------------------------------------------------------


def _as_date(value: Any, what: str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str) and re.fullmatch(r"[0-9]{8}", value):
        return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    raise ValueError(f"{what}: a date or YYYYMMDD expected, not {value!r}")


class RefFixedCodec:
    name = "ref-fixed"
    framing = Framing(kind="ascii4", max_length=9999, idle_timeout=60.0)
    description = "reference fixed-length GBK interface: 4-digit length, 123-byte header"

    outcome_codes = OUTCOME_CODES
    read_statement = staticmethod(read_statement)
    write_statement = staticmethod(write_statement)
    statement_name = staticmethod(statement_name)
    statement_format = STATEMENT_FORMAT
    simulator_traits = SIMULATOR_TRAITS
    key_kinds = KEY_KINDS

    def outcome_code(self, outcome: Outcome) -> str:
        return outcome_code(outcome)

    def layouts(self) -> dict:
        return dict(_LAYOUTS)

    # -- gateway side --------------------------------------------------------

    def decode(self, frame: bytes, session: Session):
        try:
            return self._decode(bytes(frame), session)
        except Exception as e:  # last resort: decode never raises
            if len(frame) < HEADER_SIZE:
                return Close(f"internal error: {type(e).__name__}")
            return self._reject(frame, session, Outcome.ERROR, "", f"internal error: {e!r}")

    def _reject(self, frame: bytes, session: Session, outcome: Outcome, txname: str,
                reason: str) -> Reply:
        code = outcome_code(outcome)
        return Reply(
            _answer(session, frame, code, outcome=outcome),
            outcome=outcome,
            txname=txname,
            log={"txcode": frame[:4].decode("latin-1"), "reason": reason},
        )

    def _decode(self, frame: bytes, session: Session):
        if len(frame) < HEADER_SIZE:
            return Close(f"message of {len(frame)} bytes is shorter than the header")
        bank = session.bank
        try:
            own_code = _pad(bank.bank_code, 6)
        except UnicodeEncodeError:
            own_code = None
        if frame[4:10] != own_code or not session.address_allowed:
            why = "unknown bank_code" if session.address_allowed else "address not allowed"
            return self._reject(frame, session, Outcome.NOT_AUTHORISED, "", why)
        if bank.mac and not _mac_verifies(session, frame):
            return self._reject(frame, session, Outcome.MAC_ERROR, "", "MAC does not verify")
        txn = _TXNS.get(frame[:4])
        if txn is None:
            return self._reject(frame, session, Outcome.UNKNOWN_TRANSACTION, "",
                                "unknown txcode")
        body_raw = frame[HEADER_SIZE:]
        try:
            if len(body_raw) != txn.request_size:
                return self._reject(
                    frame, session, Outcome.FORMAT_ERROR, txn.name,
                    f"body is {len(body_raw)} bytes, {txn.code} has {txn.request_size}",
                )
            header = _HEADER_C.parse(frame[:HEADER_SIZE])
            body = txn.request.parse(body_raw)
        except ConstructError as e:
            return self._reject(frame, session, Outcome.FORMAT_ERROR, txn.name, _reason(e))
        if not session.trade_date_ok(header.trade_date):
            return self._reject(
                frame, session, Outcome.FORMAT_ERROR, txn.name,
                f"trade_date {header.trade_date:%Y%m%d} is more than a day away",
            )
        if txn.code in ("1002", "1003") and not header.bank_serial.strip():
            return self._reject(frame, session, Outcome.FORMAT_ERROR, txn.name,
                                "bank_serial is blank")
        origin = Origin(
            bank=bank.name,
            trade_date=header.trade_date,
            trade_time=header.trade_time,
            branch=header.branch,
            teller=header.teller,
            channel=header.channel,
        )
        serial = header.bank_serial
        head = frame[:ECHO_END]

        if txn.code == "1009":
            return Reply(_answer(session, head, "0000"), outcome=Outcome.OK, txname="echo",
                         log={"serial": serial})
        if txn.code == "1001":
            req = QueryRequest(origin=origin, customer_no=body.customer_no)
            return self._dispatch(session, head, txn, req, _query_body,
                                  {"serial": serial, "customer": req.customer_no})
        if txn.code == "1002":
            req = PaymentRequest(
                origin=origin,
                serial=serial,
                customer_no=body.customer_no,
                amount=body.amount,
                content=fingerprint("1002", body_raw),
            )
            return self._dispatch(session, head, txn, req, _pay_body,
                                  {"serial": serial, "customer": req.customer_no,
                                   "amount": req.amount})
        if txn.code == "1003":
            req = ReversalRequest(
                origin=origin,
                orig_serial=body.orig_serial,
                customer_no=body.customer_no,
                amount=body.amount,
                serial=serial,
                content=fingerprint("1003", body_raw),
                latest_only=bank.latest_only_reversal,
            )
            return self._dispatch(session, head, txn, req, _reversal_body,
                                  {"serial": serial, "customer": req.customer_no,
                                   "amount": req.amount, "orig_serial": req.orig_serial})
        if txn.code == "1004":
            req = StatusRequest(origin=origin, orig_serial=body.orig_serial,
                                orig_date=body.orig_date)
            return self._dispatch(session, head, txn, req, _status_body,
                                  {"serial": serial, "orig_serial": req.orig_serial})
        # 1005
        req = StatementNotice(
            origin=origin,
            settle_date=body.settle_date,
            file_name=body.file_name,
            record_count=body.record_count,
            total_amount=body.total_amount,
        )
        return self._dispatch(session, head, txn, req, _empty_body,
                              {"serial": serial, "amount": req.total_amount,
                               "settle_date": f"{req.settle_date:%Y%m%d}"})

    def _dispatch(self, session: Session, head: bytes, txn: _Txn, req, body_fn,
                  log: dict) -> Dispatch:
        is_status = txn.code == "1004"

        def encode(result) -> bytes:
            outcome = getattr(result, "outcome", Outcome.ERROR)
            if not isinstance(outcome, Outcome):
                outcome = Outcome.ERROR
            if is_status and outcome in (Outcome.NOT_FOUND, Outcome.ORIGINAL_NOT_FOUND):
                outcome = Outcome.OK  # §4 1004: an unknown serial is 0000, status 2
            code = outcome_code(outcome)
            body = b""
            if code == "0000":
                try:
                    code, body = body_fn(result, req)
                except Exception:  # a result the layout cannot carry
                    code, body = OTHER_ERROR, b""
            return _answer(session, head, code, body, outcome=outcome)

        return Dispatch(request=req, encode=encode, txname=txn.name, log=log)

    def mask_frame(self, frame: bytes) -> str:
        """A frame for the debug log, its MAC field blanked."""
        if len(frame) >= MAC_END:
            frame = frame[:MAC_START] + b"*" * 16 + frame[MAC_END:]
        return frame.decode("gbk", errors="replace")

    # -- bank side -------------------------------------------------------------

    def client_encode(self, txn: str, values: dict, session: Session) -> bytes:
        """A request message (without ``LLLL``) as the bank sends it.

        ``txn``: ``query``/``pay``/``reverse``/``status``/``notice``/``echo``
        or a txcode.  ``values``: ``customer_no``, ``amount`` (fen),
        ``serial``, ``orig_serial``, ``orig_date``, ``trade_date``,
        ``trade_time``, ``branch``, ``teller``, ``channel``, ``settle_date``,
        ``file_name``, ``record_count``, ``total_amount``; for negative tests
        ``bank_code``, ``txcode`` (sent as is), ``body`` (raw bytes),
        ``resp_code``, ``resp_msg`` and ``mac`` (16 characters sent instead
        of the computed MAC).  The MAC is computed when ``session.bank.mac``.
        """
        t = _TXN_BY_NAME.get(txn) or _TXNS.get(str(txn).encode("ascii", "replace"))
        if t is None:
            raise ValueError(f"unknown transaction {txn!r}")
        now = session.now()
        trade_date = _as_date(values.get("trade_date") or now.date(), "trade_date")
        bank_code = values.get("bank_code", session.bank.bank_code)
        header = dict(
            txcode=values.get("txcode", t.code),
            bank_code=bank_code,
            branch=values.get("branch", ""),
            teller=values.get("teller", ""),
            channel=values.get("channel", "01"),
            trade_date=trade_date,
            trade_time=values.get("trade_time") or now.strftime("%H%M%S"),
            bank_serial=values.get("serial", ""),
            resp_code=values.get("resp_code", "0000"),
            resp_msg=values.get("resp_msg", ""),
            mac=MAC_SPACES,
        )
        if "body" in values:
            body = bytes(values["body"])
        else:
            body = _LAYOUTS[f"{t.code}.request"].build(self._body_values(t.code, values,
                                                                          trade_date,
                                                                          bank_code))
        head = HEADER.build(header)
        if "mac" in values:
            mac = values["mac"]
            mac = mac.encode("ascii") if isinstance(mac, str) else bytes(mac)
            if len(mac) != 16:
                raise ValueError("mac must be 16 characters")
        elif session.bank.mac:
            mac = _mac_field(session, head[:MAC_START] + body)
        else:
            mac = MAC_SPACES
        return head[:MAC_START] + mac + body

    @staticmethod
    def _body_values(code: str, values: dict, trade_date: date, bank_code: str) -> dict:
        if code == "1001":
            return dict(customer_no=values.get("customer_no", ""))
        if code == "1002":
            return dict(customer_no=values.get("customer_no", ""), amount=values["amount"])
        if code == "1003":
            return dict(
                customer_no=values.get("customer_no", ""),
                orig_serial=values["orig_serial"],
                amount=values["amount"],
            )
        if code == "1004":
            return dict(
                orig_serial=values["orig_serial"],
                orig_date=_as_date(values.get("orig_date") or trade_date, "orig_date"),
            )
        if code == "1005":
            settle = _as_date(values.get("settle_date") or trade_date - timedelta(days=1),
                              "settle_date")
            return dict(
                settle_date=settle,
                file_name=values.get("file_name") or statement_name(bank_code, settle),
                record_count=values.get("record_count", 0),
                total_amount=values.get("total_amount", 0),
            )
        return {}

    def client_decode(self, frame: bytes, session: Session) -> dict:
        """Parse a response message (without ``LLLL``) as the bank reads it.

        Returns the header fields (``txcode`` ... ``resp_msg``, ``mac``), the
        body fields of a ``0000`` answer (``bills``: a list of dicts for
        1001) and ``mac_ok``: with MAC on, whether the MAC verifies (for
        ``8004``: whether it is spaces, as §7 requires); with MAC off,
        whether the field is spaces.  Raises ``ValueError`` for a message
        that breaks the layout (also: a body on a non-``0000`` answer).
        """
        frame = bytes(frame)
        if len(frame) < HEADER_SIZE:
            raise ValueError(f"response of {len(frame)} bytes is shorter than the header")
        out: dict[str, Any] = {}
        # fields 1-8 echo the request, which may have been malformed on
        # purpose: a field that does not parse is kept as (GBK, replaced) text
        pos = 0
        for sc in _ECHOED:
            raw = frame[pos:pos + sc.sizeof()]
            pos += len(raw)
            try:
                out[sc.name] = sc.parse(raw)
            except ConstructError:
                out[sc.name] = raw.decode("gbk", errors="replace")
        try:
            tail = _TAIL_C.parse(frame[ECHO_END:HEADER_SIZE])
        except ConstructError as e:
            raise ValueError(f"header: {_reason(e)}") from None
        out["resp_code"] = tail.resp_code
        out["resp_msg"] = tail.resp_msg
        out["mac"] = frame[MAC_START:MAC_END].decode("latin-1")
        body = frame[HEADER_SIZE:]
        code = tail.resp_code
        if code != "0000":
            if body:
                raise ValueError(f"response {code} carries a {len(body)}-byte body")
        else:
            out.update(self._client_body(frame[:4].decode("latin-1"), body))
        mac = frame[MAC_START:MAC_END]
        if session.bank.mac and code != "8004":
            out["mac_ok"] = _mac_verifies(session, frame)
        else:
            out["mac_ok"] = mac == MAC_SPACES
        return out

    @staticmethod
    def _client_body(txcode: str, body: bytes) -> dict:
        layout = _C.get(f"{txcode}.response")
        if layout is None:
            raise ValueError(f"unknown txcode {txcode!r} in the response")
        try:
            if txcode == "1001":
                if len(body) < QUERY_RESPONSE_FIXED:
                    raise ValueError(f"1001 response body of {len(body)} bytes is too short")
                n = body[QUERY_RESPONSE_FIXED - 2:QUERY_RESPONSE_FIXED]
                if not n.isdigit() or len(body) != QUERY_RESPONSE_FIXED + int(n) * BILL_SIZE:
                    raise ValueError(
                        f"1001 response body of {len(body)} bytes does not hold "
                        f"bill_count {n.decode('latin-1')!r}"
                    )
            else:
                size = _LAYOUTS[f"{txcode}.response"].sizeof()
                if len(body) != size:
                    raise ValueError(
                        f"{txcode} response body is {len(body)} bytes, not {size}"
                    )
            parsed = layout.parse(body)
        except ConstructError as e:
            raise ValueError(f"{txcode} response: {_reason(e)}") from None
        values = {k: v for k, v in parsed.items() if not k.startswith("_")}
        if "bills" in values:
            values["bills"] = [
                {k: v for k, v in b.items() if not k.startswith("_")} for b in values["bills"]
            ]
        if txcode == "1004":
            values["status_name"] = _STATUS_NAMES.get(values["status"], "")
        return values


CODEC = RefFixedCodec()
