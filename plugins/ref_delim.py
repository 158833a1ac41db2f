"""``ref-delim``: ``|``-delimited GBK text behind an 8-digit length prefix.

The codec for ``docs/specs/ref-delim.rst``.  A message is a list of fields, each
followed by ``|``.  It is decoded from GBK first and split on the *character*
``|`` afterwards: GBK has characters whose second byte is 0x7C (``瑋`` is
``AC 7C``), so splitting bytes would cut them in half.  Leading and trailing
spaces of a field are not significant.

Besides the gateway side (:meth:`RefDelimCodec.decode` and the encoders of the
results) the module holds, as plain functions also reachable on ``CODEC``:

- the bank side for the simulator: :meth:`RefDelimCodec.client_encode` /
  :meth:`RefDelimCodec.client_decode`;
- the files of §5 and §6: ``.DZ`` statements, ``.DZCW`` error files, ``.PK``
  withholding requests and ``.PKJG`` results (with :class:`DelimFormat`, the
  statement format the reconciler reads and writes);
- the real-time debit of §7, where the gateway is the client:
  :func:`encode_debit`, :func:`decode_debit_response`,
  :func:`encode_debit_reversal`, :func:`decode_debit_reversal_response`, and
  the bank host's side of it for a simulator, :func:`host_decode` /
  :func:`host_encode`.

Why no ``construct`` layouts: construct can only split bytes (``NullTerminated``
with ``term=b"|"``), which is exactly what GBK forbids here.  :meth:`layouts`
therefore returns the field names of every message.

Decisions where the spec leaves room (each also pinned by a test):

- the text after the last ``|`` must be empty (spaces allowed); anything else
  is a format error (``020``);
- ``trade_time`` must be a time ``HHMMSS`` (a malformed value, ``020``);
- ``bank_serial`` is checked for length (at most 32 characters) in every
  request; 540 and 550 also need it non-empty (it is their journal key), and a
  550 needs a non-empty ``orig_serial`` of at most 32 characters;
- in ``bill_ids`` each comma-separated id is stripped of spaces; an empty id
  (also an empty list, ``A,,B`` or a trailing comma) or a repeated one is
  ``020``; the order is kept and is part of the retry content;
- 510: ``record_count`` is 1-10 digits, ``total_amount`` yuan, and a
  ``file_name`` holding ``/``, ``\\``, NUL or being ``.``/``..`` is ``020``;
- text the gateway writes (names, addresses) has ``|`` replaced by the
  full-width ``｜`` and line breaks by spaces, and characters GBK lacks by ``?``;
- file readers accept ``\\r\\n`` and blank lines, insist on a trailer that
  agrees with the lines (count and total), reject a serial repeated on one
  date (``.DZ``) or among debited lines (``.PKJG``); an empty ``bill_ids`` in
  a ``.DZ`` line is allowed (``()``: the reconciler leaves it to an operator);
- a 560 answer other than ``000`` may be short (``code|msg|``); ``104`` with
  a ``bank_serial`` counts as debited; a malformed answer raises ``ValueError``
  (outcome unknown: the caller sends the 561);
- ``.PKJG`` is named after the ``.PK`` it answers with the suffix replaced
  (``1052102026112701.PK`` -> ``1052102026112701.PKJG``), as ``.DZCW`` follows ``.DZ``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time

from bankgate.canon.messages import (
    CutoffRequest,
    CutoffResult,
    Origin,
    Outcome,
    PaymentRequest,
    PaymentResult,
    QueryRequest,
    QueryResult,
    ReversalRequest,
    ReversalResult,
    StatementNotice,
    fingerprint,
)
from bankgate.canon.money import fen_to_yuan, yuan_to_fen
from bankgate.codec.base import Dispatch, Framing, Reply, Session
from bankgate.codec.capabilities import KeyKind, SimulatorTraits
from bankgate.codec.statement import (
    AMOUNT_DIFFERS,
    BANK_ONLY,
    CHUNK,
    DATE_DIFFERS,
    UTILITY_ONLY,
    Records,
    Statement,
    StatementError,
    blocks,
    check_head,
    renumber,
)

NAME = "ref-delim"
ENCODING = "gbk"
SEP = "|"
MAX_MESSAGE = 65536
SERIAL_MAX = 32

# -- message layouts (field names, in order) -------------------------------

COMMON = (
    "txcode",
    "bank_code",
    "branch",
    "teller",
    "channel",
    "trade_date",
    "trade_time",
    "bank_serial",
)

BODIES: dict[str, tuple[str, ...]] = {
    "520": ("customer_no",),
    "540": ("customer_no", "amount", "bill_ids"),
    "550": ("customer_no", "amount", "orig_serial"),
    "511": ("settle_date",),
    "510": ("settle_date", "file_name", "record_count", "total_amount"),
    "900": (),
}

TXNAMES = {
    "520": "query",
    "540": "payment",
    "550": "reversal",
    "511": "cutoff",
    "510": "notice",
    "900": "echo",
}

RESPONSES: dict[str, tuple[str, ...]] = {
    "520": (
        "resp_code",
        "resp_msg",
        "customer_no",
        "name",
        "address",
        "bill_count",
        "total_due",
        "total_late_fee",
    ),
    "520 bill": ("bill_id", "fee_type", "period", "amount", "late_fee"),
    "540": (
        "resp_code",
        "resp_msg",
        "customer_no",
        "amount",
        "receipt_no",
        "invoice_no",
    ),
    "550": ("resp_code", "resp_msg", "customer_no", "amount", "orig_serial"),
    "511": ("resp_code", "resp_msg", "settle_date", "count", "total"),
    "510": ("resp_code", "resp_msg"),
    "900": ("resp_code", "resp_msg"),
    "error": ("resp_code", "resp_msg"),
}

DZ_DETAIL = (
    "bank_serial",
    "trade_datetime",
    "customer_no",
    "amount",
    "channel",
    "bill_ids",
)
DZ_TRAILER = ("0", "settle_date", "record_count", "total_amount")
DZCW_DETAIL = ("errno", "bank_serial", "settle_date")
DZCW_TRAILER = ("-1", "error_count")
PK_DETAIL = (
    "bill_id",
    "customer_no",
    "name",
    "account_no",
    "period",
    "amount",
    "late_fee",
    "total",
)
PK_TRAILER = ("0", "record_count", "total_amount", "deduct_date", "generated_at")
PKJG_DETAIL = ("bill_id", "customer_no", "account_no", "total", "result", "bank_serial")
PKJG_TRAILER = ("0", "record_count", "success_count", "success_total")
DEBIT_560 = (
    "txcode",
    "utility_code",
    "trade_date",
    "trade_time",
    "utility_serial",
    "customer_no",
    "account_no",
    "name",
    "amount",
    "bill_ids",
)
DEBIT_560_RESPONSE = (
    "resp_code",
    "resp_msg",
    "utility_serial",
    "bank_serial",
    "amount",
)
DEBIT_561 = (
    "txcode",
    "utility_code",
    "trade_date",
    "trade_time",
    "utility_serial",
    "orig_utility_serial",
    "amount",
)
DEBIT_561_RESPONSE = ("resp_code", "resp_msg", "orig_utility_serial")

# -- response codes ------------------------------------------------------------

_CODES: dict[Outcome, tuple[str, str]] = {
    Outcome.OK: ("000", "交易成功"),
    Outcome.NOT_FOUND: ("001", "用户不存在"),
    Outcome.NOTHING_DUE: ("002", "无欠费"),
    Outcome.ACCOUNT_LOCKED: ("003", "用户已冻结"),
    Outcome.AMOUNT_REJECTED: ("005", "金额或账单不符"),
    Outcome.ORIGINAL_NOT_FOUND: ("006", "原交易不存在"),
    Outcome.REVERSAL_NOT_ALLOWED: ("007", "不允许冲正"),
    Outcome.REVERSED_FIRST: ("007", "该笔已冲正"),
    Outcome.ALREADY_REVERSED: ("008", "已冲正"),
    Outcome.DATE_CLOSED: ("009", "已扎帐"),
    Outcome.FORMAT_ERROR: ("020", "报文格式错误"),
    Outcome.BUSY: ("021", "系统忙"),
    Outcome.DUPLICATE_MISMATCH: ("025", "流水号重复"),
    Outcome.NOT_AUTHORISED: ("030", "银行未授权"),
}
_OTHER = ("099", "其他错误")


def outcome_code(outcome: Outcome) -> str:
    """The spec's response code for ``outcome`` (total: ``099`` for the rest)."""
    return _CODES.get(outcome, _OTHER)[0]


def outcome_message(outcome: Outcome) -> str:
    return _CODES.get(outcome, _OTHER)[1]


# -- text helpers -------------------------------------------------------------

_DIGITS8 = re.compile(r"[0-9]{8}")
_DIGITS6 = re.compile(r"[0-9]{6}")
_DIGITS14 = re.compile(r"[0-9]{14}")
_COUNT = re.compile(r"[0-9]{1,10}")
_CHANNEL = re.compile(r"[0-9]{2}")
_CODE3 = re.compile(r"[0-9]{3}")


def split_fields(text: str) -> list[str] | None:
    """``a|b|`` -> ``["a", "b"]`` with spaces stripped; ``None`` if not ``|``-terminated."""
    pieces = text.split(SEP)
    if pieces[-1].strip(" "):
        return None
    return [p.strip(" ") for p in pieces[:-1]]


def _clean(value: object) -> str:
    """A value made safe as one field: no ``|``, no line break."""
    s = "" if value is None else str(value)
    if SEP in s or "\n" in s or "\r" in s:
        s = s.replace(SEP, "｜").replace("\r", " ").replace("\n", " ")
    return s


def join_fields(values: Iterable[object]) -> bytes:
    """Fields to GBK bytes, each followed by ``|`` (gateway output: never fails)."""
    return "".join(_clean(v) + SEP for v in values).encode(ENCODING, errors="replace")


def _raw_join(values: Iterable[object]) -> bytes:
    """Fields as given (bank side / simulator: may be malformed on purpose)."""
    return "".join(("" if v is None else str(v)) + SEP for v in values).encode(ENCODING)


def parse_date(s: str, what: str = "date") -> date:
    if not _DIGITS8.fullmatch(s):
        raise ValueError(f"{what} {s[:20]!r} is not YYYYMMDD")
    try:
        return date(int(s[:4]), int(s[4:6]), int(s[6:]))
    except ValueError:
        raise ValueError(f"{what} {s!r} is not a date") from None


def parse_time(s: str, what: str = "time") -> time:
    if not _DIGITS6.fullmatch(s):
        raise ValueError(f"{what} {s[:20]!r} is not HHMMSS")
    try:
        return time(int(s[:2]), int(s[2:4]), int(s[4:]))
    except ValueError:
        raise ValueError(f"{what} {s!r} is not a time") from None


def parse_datetime(s: str, what: str = "date-time") -> datetime:
    if not _DIGITS14.fullmatch(s):
        raise ValueError(f"{what} {s[:20]!r} is not YYYYMMDDHHMMSS")
    d = parse_date(s[:8], what)
    t = parse_time(s[8:], what)
    return datetime.combine(d, t)


def parse_amount(s: str, what: str = "amount") -> int:
    try:
        return yuan_to_fen(s)
    except ValueError:
        raise ValueError(f"{what} {s[:20]!r} is not yuan with two decimals") from None


def parse_count(s: str, what: str = "count") -> int:
    if not _COUNT.fullmatch(s):
        raise ValueError(f"{what} {s[:20]!r} is not a count")
    return int(s)


def parse_bill_ids(s: str) -> tuple[str, ...]:
    """``"A, B"`` -> ``("A", "B")``; an empty or repeated id is an error."""
    ids = tuple(x.strip(" ") for x in s.split(","))
    if any(not x for x in ids):
        raise ValueError(f"bill_ids {s[:40]!r} has an empty bill id")
    if len(set(ids)) != len(ids):
        raise ValueError(f"bill_ids {s[:40]!r} repeats a bill id")
    return ids


def parse_serial(s: str, what: str = "bank_serial", required: bool = True) -> str:
    if len(s) > SERIAL_MAX:
        raise ValueError(f"{what} is {len(s)} characters, over {SERIAL_MAX}")
    if required and not s:
        raise ValueError(f"{what} is empty")
    return s


def _fmt_date(v: object) -> str:
    if isinstance(v, date):
        return v.strftime("%Y%m%d")
    return "" if v is None else str(v)


def _fmt_time(v: object) -> str:
    if isinstance(v, (datetime, time)):
        return v.strftime("%H%M%S")
    return "" if v is None else str(v)


def _fmt_datetime(v: object) -> str:
    if isinstance(v, datetime):
        return v.strftime("%Y%m%d%H%M%S")
    return "" if v is None else str(v)


def _fmt_amount(v: object) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        return fen_to_yuan(v)
    return "" if v is None else str(v)


def _fmt_ids(v: object) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return "" if v is None else str(v)


def _check_file_name(s: str) -> str:
    if not s or s in (".", "..") or any(c in s for c in "/\\\x00"):
        raise ValueError(f"file_name {s[:40]!r} is not a plain file name")
    return s


#: client_encode's transaction names
CLIENT_TXNS = {
    "query": "520",
    "pay": "540",
    "payment": "540",
    "reverse": "550",
    "reversal": "550",
    "cutoff": "511",
    "notice": "510",
    "statement": "510",
    "echo": "900",
    "heartbeat": "900",
}


# -- the codec ----------------------------------------------------------------


class RefDelimCodec:
    name = NAME
    description = "ref-delim: |-delimited GBK text, 8-digit length, yuan amounts, .DZ files"
    framing = Framing(
        kind="ascii8",
        max_length=MAX_MESSAGE,
        one_per_connection=True,
        idle_timeout=30.0,
    )
    max_message = MAX_MESSAGE

    # -- codes ---------------------------------------------------------------

    def outcome_code(self, outcome: Outcome) -> str:
        return outcome_code(outcome)

    def outcome_message(self, outcome: Outcome) -> str:
        return outcome_message(outcome)

    def short_response(self, outcome: Outcome) -> bytes:
        """``code|msg|``: every answer other than a ``000`` with fields."""
        code, msg = _CODES.get(outcome, _OTHER)
        return join_fields((code, msg))

    def layouts(self) -> dict:
        out: dict[str, tuple[str, ...]] = {}
        for code, body in BODIES.items():
            out[f"{code} request"] = COMMON + body
        for code, fields in RESPONSES.items():
            out[f"{code} response"] = fields
        out.update(
            {
                ".DZ detail": DZ_DETAIL,
                ".DZ trailer": DZ_TRAILER,
                ".DZCW detail": DZCW_DETAIL,
                ".DZCW trailer": DZCW_TRAILER,
                ".PK detail": PK_DETAIL,
                ".PK trailer": PK_TRAILER,
                ".PKJG detail": PKJG_DETAIL,
                ".PKJG trailer": PKJG_TRAILER,
                "560 request": DEBIT_560,
                "560 response": DEBIT_560_RESPONSE,
                "561 request": DEBIT_561,
                "561 response": DEBIT_561_RESPONSE,
            }
        )
        return out

    def mask_frame(self, frame: bytes) -> str:
        """For the debug log: the transaction code and size, no personal data."""
        head = bytes(frame[:4]).split(b"|", 1)[0]
        code = head.decode("ascii", "replace") if head.isdigit() else "?"
        return f"<ref-delim {code} {len(frame)} bytes, {bytes(frame).count(b'|')} '|'>"

    # -- gateway side: decode ------------------------------------------------

    def decode(self, frame: bytes, session: Session):
        try:
            return self._decode(bytes(frame), session)
        except Exception as e:  # noqa: BLE001 -- last line of defence: answer 099
            return Reply(
                self.short_response(Outcome.ERROR),
                Outcome.ERROR,
                "",
                {"error": f"internal: {type(e).__name__}"},
            )

    def _format_error(self, why: str, txcode: str = "", log: dict | None = None) -> Reply:
        log = dict(log or {})
        log["error"] = why
        return Reply(
            self.short_response(Outcome.FORMAT_ERROR),
            Outcome.FORMAT_ERROR,
            TXNAMES.get(txcode, ""),
            log,
        )

    def _decode(self, frame: bytes, session: Session):
        # 1. syntax: GBK, field count for a known txcode -> 020
        try:
            text = frame.decode(ENCODING)
        except UnicodeDecodeError:
            return self._format_error("not valid GBK")
        fields = split_fields(text)
        if not fields:
            return self._format_error("not a list of |-terminated fields")
        txcode = fields[0]
        body = BODIES.get(txcode)
        if body is None:
            return self._format_error(f"unknown txcode {txcode[:10]!r}")
        names = COMMON + body
        if len(fields) != len(names):
            return self._format_error(f"{len(fields)} fields, {txcode} has {len(names)}", txcode)
        f = dict(zip(names, fields, strict=True))
        txname = TXNAMES[txcode]
        log = {"serial": f["bank_serial"][:SERIAL_MAX]}
        if "customer_no" in f:
            log["customer"] = f["customer_no"][:40]

        # 2. who: bank code and address -> 030
        if f["bank_code"] != session.bank.bank_code or not session.address_allowed:
            return Reply(
                self.short_response(Outcome.NOT_AUTHORISED),
                Outcome.NOT_AUTHORISED,
                txname,
                {**log, "error": "bank code or address not allowed"},
            )

        # 3. values -> 020
        try:
            trade_date = parse_date(f["trade_date"], "trade_date")
            if not session.trade_date_ok(trade_date):
                raise ValueError(f"trade_date {f['trade_date']} too far from today")
            parse_time(f["trade_time"], "trade_time")
            serial = parse_serial(f["bank_serial"], required=txcode in ("540", "550"))
            origin = Origin(
                bank=session.bank.name,
                trade_date=trade_date,
                trade_time=f["trade_time"],
                branch=f["branch"],
                teller=f["teller"],
                channel=f["channel"],
            )
            return self._request(txcode, txname, f, origin, serial, session, log)
        except ValueError as e:
            return self._format_error(str(e), txcode, log)

    def _request(self, txcode, txname, f, origin, serial, session, log):
        if txcode == "520":
            req = QueryRequest(origin=origin, customer_no=f["customer_no"])
            return Dispatch(req, lambda r: self.encode_query(req, r), txname, log)
        if txcode == "540":
            amount = parse_amount(f["amount"])
            bill_ids = parse_bill_ids(f["bill_ids"])
            req = PaymentRequest(
                origin=origin,
                serial=serial,
                customer_no=f["customer_no"],
                amount=amount,
                content=fingerprint("540", f["customer_no"], f["amount"], ",".join(bill_ids)),
                bill_ids=bill_ids,
            )
            log["amount"] = amount
            return Dispatch(req, lambda r: self.encode_payment(req, r), txname, log)
        if txcode == "550":
            amount = parse_amount(f["amount"])
            orig = parse_serial(f["orig_serial"], "orig_serial")
            req = ReversalRequest(
                origin=origin,
                orig_serial=orig,
                customer_no=f["customer_no"],
                amount=amount,
                serial=serial,
                content=fingerprint("550", f["customer_no"], f["amount"], orig),
                latest_only=session.bank.latest_only_reversal,
            )
            log["amount"] = amount
            return Dispatch(req, lambda r: self.encode_reversal(req, r), txname, log)
        if txcode == "511":
            req = CutoffRequest(
                origin=origin, settle_date=parse_date(f["settle_date"], "settle_date")
            )
            return Dispatch(req, lambda r: self.encode_cutoff(req, r), txname, log)
        if txcode == "510":
            req = StatementNotice(
                origin=origin,
                settle_date=parse_date(f["settle_date"], "settle_date"),
                file_name=_check_file_name(f["file_name"]),
                record_count=parse_count(f["record_count"], "record_count"),
                total_amount=parse_amount(f["total_amount"], "total_amount"),
            )
            return Dispatch(req, self.encode_simple, txname, log)
        # 900: answered here, the ledger is not involved
        return Reply(self.short_response(Outcome.OK), Outcome.OK, txname, log)

    # -- gateway side: encode results --------------------------------------

    def _outcome(self, result) -> Outcome:
        outcome = getattr(result, "outcome", None)
        return outcome if isinstance(outcome, Outcome) else Outcome.ERROR

    def encode_query(self, req: QueryRequest, result) -> bytes:
        outcome = self._outcome(result)
        if outcome is not Outcome.OK:
            return self.short_response(outcome)
        if not isinstance(result, QueryResult):
            return self.short_response(Outcome.ERROR)
        head = join_fields(
            (
                "000",
                outcome_message(Outcome.OK),
                result.customer_no or req.customer_no,
                result.name,
                result.address,
            )
        )
        totals = join_fields((fen_to_yuan(result.total_due), fen_to_yuan(result.late_fee)))
        size = len(head) + len(totals) + 1  # + the "|" after bill_count
        if size + 1 > MAX_MESSAGE:
            return self.short_response(Outcome.ERROR)
        groups = []
        used = 0
        for b in sorted(result.bills, key=lambda b: (b.period, b.bill_id)):
            g = join_fields(
                (
                    b.bill_id,
                    b.fee_type,
                    b.period,
                    fen_to_yuan(b.amount),
                    fen_to_yuan(b.late_fee),
                )
            )
            if size + len(str(len(groups) + 1)) + used + len(g) > MAX_MESSAGE:
                break
            groups.append(g)
            used += len(g)
        return head + b"%d|" % len(groups) + totals + b"".join(groups)

    def encode_payment(self, req: PaymentRequest, result) -> bytes:
        outcome = self._outcome(result)
        if outcome is not Outcome.OK:
            return self.short_response(outcome)
        if not isinstance(result, PaymentResult):
            return self.short_response(Outcome.ERROR)
        return join_fields(
            (
                "000",
                outcome_message(Outcome.OK),
                result.customer_no or req.customer_no,
                fen_to_yuan(result.amount),
                result.receipt_no,
                result.invoice_no,
            )
        )

    def encode_reversal(self, req: ReversalRequest, result) -> bytes:
        outcome = self._outcome(result)
        if outcome is not Outcome.OK:
            return self.short_response(outcome)
        if not isinstance(result, ReversalResult):
            return self.short_response(Outcome.ERROR)
        return join_fields(
            (
                "000",
                outcome_message(Outcome.OK),
                result.customer_no or req.customer_no,
                fen_to_yuan(result.amount),
                result.orig_serial or req.orig_serial,
            )
        )

    def encode_cutoff(self, req: CutoffRequest, result) -> bytes:
        outcome = self._outcome(result)
        if outcome is not Outcome.OK:
            return self.short_response(outcome)
        if not isinstance(result, CutoffResult):
            return self.short_response(Outcome.ERROR)
        settle = result.settle_date or req.settle_date
        return join_fields(
            (
                "000",
                outcome_message(Outcome.OK),
                settle.strftime("%Y%m%d"),
                str(result.count),
                fen_to_yuan(result.total),
            )
        )

    def encode_simple(self, result) -> bytes:
        """510 (and any answer without fields): ``code|msg|``."""
        return self.short_response(self._outcome(result))

    # -- bank side (simulator, tests) ---------------------------------------

    _STATE_KEY = "ref_delim.client_txcode"

    def client_encode(self, txn: str, values: dict, session: Session) -> bytes:
        """A request message (without the 8-digit prefix) from plain values.

        ``txn``: ``query``/``pay``/``reverse``/``cutoff``/``notice``/``echo``
        or the txcode itself.  Amounts in ``values`` are fen (an ``int``) or
        text sent as it is; dates are ``date`` or text.  Defaults: the
        session's bank code, today, now, channel ``01``.
        """
        code = CLIENT_TXNS.get(txn, txn)
        if code not in BODIES:
            raise ValueError(f"unknown transaction {txn!r}")
        v = values
        now = session.now()
        trade_date = v.get("trade_date", now.date())
        common = [
            code,
            v.get("bank_code", session.bank.bank_code),
            v.get("branch", ""),
            v.get("teller", ""),
            v.get("channel", "01"),
            _fmt_date(trade_date),
            _fmt_time(v.get("trade_time", now)),
            v.get("serial", v.get("bank_serial", "")),
        ]
        if code == "520":
            body = [v.get("customer_no", "")]
        elif code == "540":
            body = [
                v.get("customer_no", ""),
                _fmt_amount(v.get("amount")),
                _fmt_ids(v.get("bill_ids", ())),
            ]
        elif code == "550":
            body = [
                v.get("customer_no", ""),
                _fmt_amount(v.get("amount")),
                v.get("orig_serial", ""),
            ]
        elif code == "511":
            body = [_fmt_date(v.get("settle_date", trade_date))]
        elif code == "510":
            settle = v.get("settle_date", trade_date)
            name = v.get("file_name")
            if name is None:
                bank_code = v.get("bank_code", session.bank.bank_code)
                name = statement_name(bank_code, settle) if isinstance(settle, date) else ""
            body = [
                _fmt_date(settle),
                name,
                str(v.get("record_count", 0)),
                _fmt_amount(v.get("total_amount", 0)),
            ]
        else:
            body = []
        session.state[self._STATE_KEY] = code
        return _raw_join(common + body)

    def client_decode(self, frame: bytes, session: Session) -> dict:
        """A response into ``{"code", "msg", ...}`` (canonical names, fen, dates).

        The transaction is the one the session last encoded; without one it is
        told from the response's shape.  Raises ``ValueError`` on a malformed
        response.
        """
        text = bytes(frame).decode(ENCODING)  # UnicodeDecodeError is a ValueError
        fields = split_fields(text)
        if fields is None or len(fields) < 2:
            raise ValueError("response is not |-terminated code|msg|...")
        code, msg = fields[0], fields[1]
        out: dict = {"code": code, "msg": msg}
        if code != "000":
            if len(fields) != 2:
                raise ValueError(f"a {code} response has {len(fields)} fields, not 2")
            return out
        txcode = session.state.get(self._STATE_KEY) or _guess_txcode(fields)
        out["txcode"] = txcode
        n = len(fields)
        if txcode == "520":
            if n < 8 or (n - 8) % 5:
                raise ValueError(f"520 response with {n} fields")
            count = parse_count(fields[5], "bill_count")
            if count != (n - 8) // 5:
                raise ValueError(f"bill_count {count} but {(n - 8) // 5} bills")
            out.update(
                customer_no=fields[2],
                name=fields[3],
                address=fields[4],
                bill_count=count,
                total_due=parse_amount(fields[6], "total_due"),
                late_fee=parse_amount(fields[7], "total_late_fee"),
                bills=[
                    {
                        "bill_id": fields[i],
                        "fee_type": fields[i + 1],
                        "period": fields[i + 2],
                        "amount": parse_amount(fields[i + 3]),
                        "late_fee": parse_amount(fields[i + 4], "late_fee"),
                    }
                    for i in range(8, n, 5)
                ],
            )
        elif txcode == "540":
            _want(n, 6, txcode)
            out.update(
                customer_no=fields[2],
                amount=parse_amount(fields[3]),
                receipt_no=fields[4],
                invoice_no=fields[5],
            )
        elif txcode == "550":
            _want(n, 5, txcode)
            out.update(
                customer_no=fields[2],
                amount=parse_amount(fields[3]),
                orig_serial=fields[4],
            )
        elif txcode == "511":
            _want(n, 5, txcode)
            out.update(
                settle_date=parse_date(fields[2], "settle_date"),
                count=parse_count(fields[3]),
                total=parse_amount(fields[4], "total"),
            )
        else:
            _want(n, 2, txcode)
        return out


def _want(n: int, expected: int, txcode: str) -> None:
    if n != expected:
        raise ValueError(f"{txcode} response with {n} fields, expected {expected}")


def _guess_txcode(fields: list[str]) -> str:
    n = len(fields)
    if n == 2:
        return "900"
    if n == 6:
        return "540"
    if n == 5:  # 550 carries an amount (with a '.'), 511 a count
        return "550" if "." in fields[3] else "511"
    return "520"


# -- files: common ------------------------------------------------------------


def _file_rows(data: bytes, what: str) -> list[tuple[int, list[str]]]:
    """``(line number, fields)`` for every non-blank line of a GBK ``|`` file."""
    try:
        text = bytes(data).decode(ENCODING)
    except UnicodeDecodeError as e:
        line = bytes(data)[: e.start].count(b"\n") + 1
        raise ValueError(f"{what} line {line}: not valid GBK") from None
    rows = []
    for i, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip(" "):
            continue
        fields = split_fields(line)
        if fields is None:
            raise ValueError(f"{what} line {i}: does not end with '|'")
        rows.append((i, fields))
    return rows


def _split_trailer(rows, what: str, trailer_fields: int):
    if not rows:
        raise ValueError(f"{what}: empty file, no trailer")
    *details, (tn, trailer) = rows
    for n, f in details:
        if len(f) == trailer_fields and f[0] == "0":
            raise ValueError(f"{what} line {n}: a trailer before the last line")
    if len(trailer) != trailer_fields or trailer[0] != "0":
        raise ValueError(f"{what} line {tn}: the last line is not the trailer")
    return details, tn, trailer


def _lines(rows: Iterable[Iterable[object]]) -> bytes:
    return b"".join(join_fields(r) + b"\n" for r in rows)


def _get(rec: Mapping, *keys: str, default: object = None) -> object:
    for k in keys:
        if k in rec:
            return rec[k]
    if default is not None:
        return default
    raise KeyError(keys[0])


# -- .DZ statement and .DZCW error file (§5) ------------------------------------


def statement_name(bank_code: str, d: date) -> str:
    return f"{bank_code}{d:%Y%m%d}.DZ"


def error_file_name(bank_code: str, d: date) -> str:
    return f"{bank_code}{d:%Y%m%d}.DZCW"


def read_statement(data: bytes) -> tuple[list[dict], dict]:
    """Parse a ``.DZ`` file into ``(records, trailer)``; ``ValueError`` names the line.

    Records: ``serial``, ``trade_datetime``, ``trade_date``, ``customer_no``,
    ``amount`` (fen), ``channel``, ``bill_ids`` (tuple, may be empty), ``line``.
    Trailer: ``settle_date``, ``record_count``, ``total_amount`` (fen); both
    must agree with the records.
    """
    what = ".DZ"
    details, tn, t = _split_trailer(_file_rows(data, what), what, 4)
    records = []
    seen: dict[tuple[str, date], int] = {}
    for n, f in details:
        try:
            if len(f) != 6:
                raise ValueError(f"{len(f)} fields, a detail line has 6")
            serial = parse_serial(f[0])
            when = parse_datetime(f[1], "trade_datetime")
            if not f[2]:
                raise ValueError("customer_no is empty")
            amount = parse_amount(f[3])
            if not _CHANNEL.fullmatch(f[4]):
                raise ValueError(f"channel {f[4][:10]!r} is not 2 digits")
            bill_ids = parse_bill_ids(f[5]) if f[5] else ()
            key = (serial, when.date())
            if key in seen:
                raise ValueError(f"serial {serial!r} repeats line {seen[key]}")
            seen[key] = n
        except ValueError as e:
            raise ValueError(f"{what} line {n}: {e}") from None
        records.append(
            {
                "serial": serial,
                "trade_datetime": when,
                "trade_date": when.date(),
                "customer_no": f[2],
                "amount": amount,
                "channel": f[4],
                "bill_ids": bill_ids,
                "line": n,
            }
        )
    try:
        trailer = {
            "settle_date": parse_date(t[1], "settle_date"),
            "record_count": parse_count(t[2], "record_count"),
            "total_amount": parse_amount(t[3], "total_amount"),
        }
        if trailer["record_count"] != len(records):
            raise ValueError(f"record_count {trailer['record_count']}, file has {len(records)}")
        total = sum(r["amount"] for r in records)
        if trailer["total_amount"] != total:
            raise ValueError(f"total_amount {t[3]}, records add up to {fen_to_yuan(total)}")
    except ValueError as e:
        raise ValueError(f"{what} line {tn}: {e}") from None
    return records, trailer


def write_statement(settle_date: date, records: Iterable[Mapping]) -> bytes:
    """A ``.DZ`` file: the records in the order given, then the trailer.

    Each record: ``serial`` (or ``bank_serial``), ``trade_datetime`` (datetime
    or 14 digits), ``customer_no``, ``amount`` (fen), ``channel``,
    ``bill_ids`` (sequence or text).
    """
    rows = []
    total = 0
    for r in records:
        amount = int(_get(r, "amount"))
        total += amount
        rows.append(
            (
                _get(r, "serial", "bank_serial"),
                _fmt_datetime(_get(r, "trade_datetime")),
                _get(r, "customer_no"),
                fen_to_yuan(amount),
                _get(r, "channel", default="01"),
                _fmt_ids(r.get("bill_ids", ())),
            )
        )
    rows.append(("0", f"{settle_date:%Y%m%d}", str(len(rows)), fen_to_yuan(total)))
    return _lines(rows)


_ERRNOS = ("01", "02", "03", "04")


def _errno(v: object) -> str:
    s = f"{v:02d}" if isinstance(v, int) else str(v)
    if s not in _ERRNOS:
        raise ValueError(f"error number {v!r} is not one of {', '.join(_ERRNOS)}")
    return s


def write_error_file(settle_date: date, discrepancies: Iterable) -> bytes:
    """A ``.DZCW`` file: ``errno|bank_serial|settle_date|`` by serial, then ``-1|n|``.

    Each discrepancy is a mapping with ``errno`` and ``bank_serial`` (or
    ``serial``), or a pair ``(errno, serial)``; ``errno`` ``1``-``4`` or
    ``"01"``-``"04"``.
    """
    items = []
    for d in discrepancies:
        if isinstance(d, Mapping):
            errno, serial = _get(d, "errno"), _get(d, "bank_serial", "serial")
        else:
            errno, serial = d
        items.append((str(serial), _errno(errno)))
    items.sort()
    day = f"{settle_date:%Y%m%d}"
    rows = [(errno, serial, day) for serial, errno in items]
    rows.append(("-1", str(len(items))))
    return _lines(rows)


def read_error_file(data: bytes) -> tuple[list[dict], int]:
    """Parse a ``.DZCW`` file (the bank's side): ``(lines, error_count)``."""
    what = ".DZCW"
    rows = _file_rows(data, what)
    if not rows or len(rows[-1][1]) != 2 or rows[-1][1][0] != "-1":
        raise ValueError(f"{what} line {rows[-1][0] if rows else 1}: no -1 trailer at the end")
    *details, (tn, t) = rows
    out = []
    for n, f in details:
        try:
            if len(f) != 3:
                raise ValueError(f"{len(f)} fields, a detail line has 3")
            out.append(
                {
                    "errno": _errno(f[0]),
                    "bank_serial": parse_serial(f[1]),
                    "settle_date": parse_date(f[2], "settle_date"),
                }
            )
        except ValueError as e:
            raise ValueError(f"{what} line {n}: {e}") from None
    try:
        count = parse_count(t[1], "error_count")
    except ValueError as e:
        raise ValueError(f"{what} line {tn}: {e}") from None
    if count != len(out):
        raise ValueError(f"{what} line {tn}: error_count {count}, file has {len(out)}")
    return out, count


#: §5 ``.DZCW``: the error number of each reconciliation category it reports
ERRNO = {DATE_DIFFERS: "01", BANK_ONLY: "02", UTILITY_ONLY: "03", AMOUNT_DIFFERS: "04"}


class DelimFormat:
    """§5 for the reconciler: ``.DZ`` detail lines, then the trailer
    ``0|settle_date|count|total|``; the ``.DZCW`` error file back to the bank.

    A large file is read in chunks: each chunk of detail lines goes to
    :func:`read_statement` with a trailer built for it, and its errors name
    the line of the whole file.
    """

    has_header = True
    names_bills = True  # a .DZ line lists the bills it paid

    def file_name(self, bank_code: str, d: date) -> str:
        return statement_name(bank_code, d)

    def read(self, data: bytes, bank_code: str, d: date, chunk: int = CHUNK) -> Statement:
        # the trailer is the last line that is not blank
        end = len(data)
        while end > 0 and data[end - 1:end] in (b"\n", b"\r", b" "):
            end -= 1
        start = data.rfind(b"\n", 0, end) + 1
        trailer_no = data.count(b"\n", 0, start) + 1
        try:
            t = split_fields(data[start:end].decode(ENCODING))
            if t is None or len(t) != 4 or t[0] != "0":
                raise ValueError("the last line is not the trailer 0|settle_date|count|total|")
            settle = parse_date(t[1], "settle_date")
            count = parse_count(t[2], "record_count")
            total = parse_amount(t[3], "total_amount")
        except (ValueError, UnicodeDecodeError) as e:
            raise StatementError(f".DZ line {trailer_no}: {e}") from None
        check_head(settle, d, None, bank_code, trailer_no)
        st = Statement(d, Records(), None, count, total)
        for before, block in blocks(data, 0, start, chunk):
            total = n = 0
            lines = block.split(b"\n")
            if lines and lines[-1] == b"":
                lines.pop()
            for ln in lines:
                if not ln.strip(b" \r"):
                    continue
                n += 1
                try:
                    f = split_fields(ln.decode(ENCODING).removesuffix("\r"))
                    total += parse_amount(f[3]) if f and len(f) == 6 else 0
                except (ValueError, UnicodeDecodeError):
                    pass  # the reader names this line
            tail = join_fields(("0", f"{d:%Y%m%d}", str(n), fen_to_yuan(total)))
            if not block.endswith(b"\n"):
                block += b"\n"
            try:
                recs, _ = read_statement(block + tail + b"\n")
            except ValueError as e:
                if f"line {len(lines) + 1}:" in str(e):  # the synthetic trailer: a bad detail
                    raise StatementError(
                        f".DZ line {trailer_no}: {str(e).split(': ', 1)[-1]}") from None
                raise StatementError(renumber(e, before)) from None
            st.records.extend(recs, lambda r: f"{r['trade_datetime']:%H%M%S}")
        return st

    def write(self, bank_code: str, d: date, records: list[dict],
              declared: tuple[int, int] | None = None) -> bytes:
        recs = [dict(r, trade_datetime=r.get("trade_datetime") or datetime.combine(
            r.get("trade_date") or d,
            datetime.strptime(r.get("trade_time") or "000000", "%H%M%S").time()))
            for r in records]
        data = write_statement(d, recs)
        if declared is None:
            return data
        body = data[:data.rstrip(b"\n").rfind(b"\n") + 1]
        return body + join_fields(
            ("0", f"{d:%Y%m%d}", str(declared[0]), fen_to_yuan(declared[1]))) + b"\n"

    def error_file(self, bank_code: str, d: date, items: Iterable) -> tuple[str, bytes]:
        """The ``.DZCW``: every item of a category in :data:`ERRNO` that has a serial."""
        lines = [(ERRNO[i.category], i.serial) for i in items
                 if i.category in ERRNO and i.serial]
        return error_file_name(bank_code, d), write_error_file(d, lines)


STATEMENT_FORMAT = DelimFormat()


# -- .PK / .PKJG batch withholding (§6) ---------------------------------------


def pk_name(bank_code: str, d: date, seq: int) -> str:
    if not 0 <= seq <= 99:
        raise ValueError(f"sequence {seq} is not 00-99")
    return f"{bank_code}{d:%Y%m%d}{seq:02d}.PK"


def pkjg_name(pk_file_name: str) -> str:
    stem = pk_file_name[:-3] if pk_file_name.upper().endswith(".PK") else pk_file_name
    return stem + ".PKJG"


def write_pk(deduct_date: date, records: Iterable[Mapping], generated_at: datetime) -> bytes:
    """A ``.PK`` file: one line per bill to debit, then the trailer.

    Each record: ``bill_id``, ``customer_no``, ``name``, ``account_no``,
    ``period``, ``amount`` and ``late_fee`` (fen); ``total`` if given must be
    their sum.
    """
    rows = []
    grand = 0
    for r in records:
        amount, late = int(_get(r, "amount")), int(r.get("late_fee", 0))
        total = amount + late
        if "total" in r and int(r["total"]) != total:
            raise ValueError(f"bill {r.get('bill_id')!r}: total {r['total']} != amount + late_fee")
        grand += total
        rows.append(
            (
                _get(r, "bill_id"),
                _get(r, "customer_no"),
                r.get("name", ""),
                _get(r, "account_no"),
                r.get("period", ""),
                fen_to_yuan(amount),
                fen_to_yuan(late),
                fen_to_yuan(total),
            )
        )
    rows.append(
        (
            "0",
            str(len(rows)),
            fen_to_yuan(grand),
            f"{deduct_date:%Y%m%d}",
            f"{generated_at:%Y%m%d%H%M%S}",
        )
    )
    return _lines(rows)


def read_pk(data: bytes) -> tuple[list[dict], dict]:
    """Parse a ``.PK`` file (the bank's side): ``(records, trailer)``, amounts in fen."""
    what = ".PK"
    details, tn, t = _split_trailer(_file_rows(data, what), what, 5)
    records = []
    for n, f in details:
        try:
            if len(f) != 8:
                raise ValueError(f"{len(f)} fields, a detail line has 8")
            if not f[0] or not f[1] or not f[3]:
                raise ValueError("bill_id, customer_no and account_no are required")
            amount, late, total = (
                parse_amount(f[5]),
                parse_amount(f[6], "late_fee"),
                parse_amount(f[7], "total"),
            )
            if amount + late != total:
                raise ValueError(f"total {f[7]} is not amount + late_fee")
        except ValueError as e:
            raise ValueError(f"{what} line {n}: {e}") from None
        records.append(
            {
                "bill_id": f[0],
                "customer_no": f[1],
                "name": f[2],
                "account_no": f[3],
                "period": f[4],
                "amount": amount,
                "late_fee": late,
                "total": total,
                "line": n,
            }
        )
    try:
        trailer = {
            "record_count": parse_count(t[1], "record_count"),
            "total_amount": parse_amount(t[2], "total_amount"),
            "deduct_date": parse_date(t[3], "deduct_date"),
            "generated_at": parse_datetime(t[4], "generated_at"),
        }
        if trailer["record_count"] != len(records):
            raise ValueError(f"record_count {t[1]}, file has {len(records)}")
        if trailer["total_amount"] != sum(r["total"] for r in records):
            raise ValueError(f"total_amount {t[2]} is not the sum of the lines")
    except ValueError as e:
        raise ValueError(f"{what} line {tn}: {e}") from None
    return records, trailer


PKJG_RESULTS = {
    0: "debited",
    1: "insufficient funds",
    2: "account and name do not match",
    3: "no such account",
    4: "duplicate debit",
}


def read_pkjg(data: bytes) -> tuple[list[dict], dict]:
    """Parse a ``.PKJG`` file into ``(records, trailer)``; ``ValueError`` names the line.

    Records: ``bill_id``, ``customer_no``, ``account_no``, ``total`` (fen),
    ``result`` (int 0-4), ``bank_serial``, ``line``.  A ``0`` line needs a
    serial, unique in the file.  The trailer (``record_count``,
    ``success_count``, ``success_total``) must agree with the lines.
    """
    what = ".PKJG"
    details, tn, t = _split_trailer(_file_rows(data, what), what, 4)
    records = []
    serials: dict[str, int] = {}
    for n, f in details:
        try:
            if len(f) != 6:
                raise ValueError(f"{len(f)} fields, a detail line has 6")
            if not f[0] or not f[1]:
                raise ValueError("bill_id and customer_no are required")
            total = parse_amount(f[3], "total")
            if f[4] not in ("0", "1", "2", "3", "4"):
                raise ValueError(f"result {f[4][:10]!r} is not 0-4")
            result = int(f[4])
            serial = parse_serial(f[5], required=result == 0)
            if result == 0:
                if serial in serials:
                    raise ValueError(f"bank_serial {serial!r} repeats line {serials[serial]}")
                serials[serial] = n
        except ValueError as e:
            raise ValueError(f"{what} line {n}: {e}") from None
        records.append(
            {
                "bill_id": f[0],
                "customer_no": f[1],
                "account_no": f[2],
                "total": total,
                "result": result,
                "bank_serial": serial,
                "line": n,
            }
        )
    ok = [r for r in records if r["result"] == 0]
    try:
        trailer = {
            "record_count": parse_count(t[1], "record_count"),
            "success_count": parse_count(t[2], "success_count"),
            "success_total": parse_amount(t[3], "success_total"),
        }
        if trailer["record_count"] != len(records):
            raise ValueError(f"record_count {t[1]}, file has {len(records)}")
        if trailer["success_count"] != len(ok):
            raise ValueError(f"success_count {t[2]}, file has {len(ok)} debited lines")
        if trailer["success_total"] != sum(r["total"] for r in ok):
            raise ValueError(f"success_total {t[3]} is not the sum of the debited lines")
    except ValueError as e:
        raise ValueError(f"{what} line {tn}: {e}") from None
    return records, trailer


def write_pkjg(records: Iterable[Mapping]) -> bytes:
    """A ``.PKJG`` file (the bank's side) from records as :func:`read_pkjg` returns."""
    rows = []
    count = total = 0
    for r in records:
        result = int(_get(r, "result"))
        if result not in PKJG_RESULTS:
            raise ValueError(f"result {result} is not 0-4")
        amount = int(_get(r, "total"))
        if result == 0:
            count += 1
            total += amount
        rows.append(
            (
                _get(r, "bill_id"),
                _get(r, "customer_no"),
                r.get("account_no", ""),
                fen_to_yuan(amount),
                str(result),
                r.get("bank_serial", ""),
            )
        )
    rows.append(("0", str(len(rows)), str(count), fen_to_yuan(total)))
    return _lines(rows)


# -- real-time debit 560 / 561, the gateway as client (§7) ---------------------

DEBIT_DONE = "000"
DEBIT_CODES = {
    "000": "扣款成功",
    "101": "余额不足",
    "102": "户名不符",
    "103": "账户不存在",
    "104": "重复扣款",
    "021": "系统忙",
}
DEBIT_REVERSAL_CODES = {
    "000": "冲正成功",
    "006": "原交易不存在",
    "008": "已冲正",
    "021": "系统忙",
}
#: 561 answers that end the store-and-forward reversal
DEBIT_REVERSAL_FINAL = frozenset({"000", "006", "008"})


def encode_debit(
    *,
    utility_code: str,
    trade_date: date,
    trade_time: time | datetime | str,
    utility_serial: str,
    customer_no: str,
    account_no: str,
    name: str,
    amount: int,
    bill_ids: Iterable[str] | str,
) -> bytes:
    """A 560 request (without the length prefix)."""
    return join_fields(
        (
            "560",
            utility_code,
            _fmt_date(trade_date),
            _fmt_time(trade_time),
            utility_serial,
            customer_no,
            account_no,
            name,
            fen_to_yuan(amount),
            _fmt_ids(bill_ids if isinstance(bill_ids, str) else tuple(bill_ids)),
        )
    )


def encode_debit_reversal(
    *,
    utility_code: str,
    trade_date: date,
    trade_time: time | datetime | str,
    utility_serial: str,
    orig_utility_serial: str,
    amount: int,
) -> bytes:
    """A 561 request (without the length prefix)."""
    return join_fields(
        (
            "561",
            utility_code,
            _fmt_date(trade_date),
            _fmt_time(trade_time),
            utility_serial,
            orig_utility_serial,
            fen_to_yuan(amount),
        )
    )


def _response_fields(frame: bytes, what: str) -> list[str]:
    fields = split_fields(bytes(frame).decode(ENCODING))
    if fields is None or len(fields) < 2:
        raise ValueError(f"{what} response is not |-terminated code|msg|...")
    if not _CODE3.fullmatch(fields[0]):
        raise ValueError(f"{what} response code {fields[0][:10]!r} is not 3 digits")
    return fields


def decode_debit_response(frame: bytes) -> dict:
    """A 560 response: ``code``, ``msg``, ``utility_serial``, ``bank_serial``,
    ``amount`` (fen or ``None``) and ``debited``.

    ``debited`` is true for ``000`` and for ``104`` carrying the original
    ``bank_serial`` (already debited).  Non-``000`` answers may be short
    (``code|msg|``).  A malformed response raises ``ValueError``: for the
    caller the outcome is then unknown (send the 561).
    """
    f = _response_fields(frame, "560")
    if len(f) not in (2, 5):
        raise ValueError(f"560 response with {len(f)} fields")
    code = f[0]
    out = {
        "code": code,
        "msg": f[1],
        "utility_serial": "",
        "bank_serial": "",
        "amount": None,
    }
    if len(f) == 5:
        out["utility_serial"] = f[2]
        out["bank_serial"] = parse_serial(f[3], required=False)
        out["amount"] = parse_amount(f[4]) if f[4] else None
    if code == "000" and (len(f) != 5 or not out["bank_serial"] or out["amount"] is None):
        raise ValueError("a 000 response to 560 must carry bank_serial and amount")
    out["debited"] = code == "000" or (code == "104" and bool(out["bank_serial"]))
    return out


def decode_debit_reversal_response(frame: bytes) -> dict:
    """A 561 response: ``code``, ``msg``, ``orig_utility_serial`` and ``done``
    (``000``, ``006`` or ``008``: stop resending the reversal)."""
    f = _response_fields(frame, "561")
    if len(f) not in (2, 3):
        raise ValueError(f"561 response with {len(f)} fields")
    return {
        "code": f[0],
        "msg": f[1],
        "orig_utility_serial": f[2] if len(f) == 3 else "",
        "done": f[0] in DEBIT_REVERSAL_FINAL,
    }


def host_decode(frame: bytes) -> dict:
    """The bank host's side: a 560 or 561 request into a dict (fen, dates).

    Raises ``ValueError`` (the host answers as it likes, or closes).
    """
    fields = split_fields(bytes(frame).decode(ENCODING))
    if not fields:
        raise ValueError("not a list of |-terminated fields")
    code = fields[0]
    names = {"560": DEBIT_560, "561": DEBIT_561}.get(code)
    if names is None:
        raise ValueError(f"unknown txcode {code[:10]!r}")
    if len(fields) != len(names):
        raise ValueError(f"{len(fields)} fields, {code} has {len(names)}")
    out = dict(zip(names, fields, strict=True))
    out["trade_date"] = parse_date(out["trade_date"], "trade_date")
    parse_time(out["trade_time"], "trade_time")
    out["amount"] = parse_amount(out["amount"])
    parse_serial(out["utility_serial"], "utility_serial")
    if code == "560":
        out["bill_ids"] = parse_bill_ids(out["bill_ids"])
    else:
        parse_serial(out["orig_utility_serial"], "orig_utility_serial")
    return out


def host_encode(txn: str, values: Mapping) -> bytes:
    """The bank host's answer to a 560 (``txn`` ``"560"``/``"debit"``) or 561.

    ``values``: ``code`` (default ``000``), ``msg`` (default from the code),
    560: ``utility_serial``, ``bank_serial``, ``amount`` (fen);
    561: ``orig_utility_serial``.  ``short=True`` writes ``code|msg|`` only.
    """
    code = str(values.get("code", "000"))
    if txn in ("560", "debit"):
        msg = values.get("msg", DEBIT_CODES.get(code, "其他错误"))
        if values.get("short"):
            return join_fields((code, msg))
        amount = values.get("amount")
        return join_fields(
            (
                code,
                msg,
                values.get("utility_serial", ""),
                values.get("bank_serial", ""),
                "" if amount is None else fen_to_yuan(int(amount)),
            )
        )
    if txn in ("561", "debit_reversal"):
        msg = values.get("msg", DEBIT_REVERSAL_CODES.get(code, "其他错误"))
        if values.get("short"):
            return join_fields((code, msg))
        return join_fields((code, msg, values.get("orig_utility_serial", "")))
    raise ValueError(f"unknown host transaction {txn!r}")


# -- what the simulator and the configuration need (bankgate.codec.capabilities) --

SIMULATOR_TRAITS = SimulatorTraits(
    ops={"query": "query", "pay": "pay", "reverse": "reverse", "cutoff": "cutoff",
         "notice": "notice", "echo": "echo"},
    pay_names_bills=True,  # a 540 lists the bills it pays
)

#: the spec's messages carry no MAC; a bank with ``mac = true`` still names its key
KEY_KINDS = (KeyKind("mac_key", length=16, check_length=3,
                     description="no MAC in the messages: accepted for mac = true"),)


# -- the plugin object ----------------------------------------------------------


class _Codec(RefDelimCodec):
    """``CODEC``: the codec with the module's file and debit functions and its
    declarations (:mod:`bankgate.codec.capabilities`) attached."""

    statement_format = STATEMENT_FORMAT
    simulator_traits = SIMULATOR_TRAITS
    key_kinds = KEY_KINDS
    statement_name = staticmethod(statement_name)
    error_file_name = staticmethod(error_file_name)
    read_statement = staticmethod(read_statement)
    write_statement = staticmethod(write_statement)
    write_error_file = staticmethod(write_error_file)
    read_error_file = staticmethod(read_error_file)
    pk_name = staticmethod(pk_name)
    pkjg_name = staticmethod(pkjg_name)
    write_pk = staticmethod(write_pk)
    read_pk = staticmethod(read_pk)
    read_pkjg = staticmethod(read_pkjg)
    write_pkjg = staticmethod(write_pkjg)
    encode_debit = staticmethod(encode_debit)
    decode_debit_response = staticmethod(decode_debit_response)
    encode_debit_reversal = staticmethod(encode_debit_reversal)
    decode_debit_reversal_response = staticmethod(decode_debit_reversal_response)
    host_decode = staticmethod(host_decode)
    host_encode = staticmethod(host_encode)


CODEC = _Codec()
