"""Codec for the reference bank interface ``ref-xml`` (GBK XML, SM4 MAC, two-phase).

Spec: ``docs/specs/ref-xml.rst``.  A frame is a 6-digit length + one GBK XML
document; the framing layer (``ascii6``) strips and adds the length, closes a
connection after its one answer and gives a request 30 s to arrive.  The
XML is read with :mod:`bankgate.codec.xmldoc` (``defusedxml``: a DOCTYPE is
refused, never expanded) in the order this module declares: ``HEAD`` and
each transaction's ``BODY`` are tables of :class:`F` (element, key, format),
used for the gateway's side and the bank's (``client_encode`` /
``client_decode``) alike.

Decoding follows the spec's precedence (§5):

1. not well-formed, not in its declared encoding, no ``ROOT/HEAD`` -> close
2. a DOCTYPE or entity declaration                      -> ``8001`` (HEAD empty)
3. ``BankCode`` not this bank's, address not allowed    -> ``8003`` (MAC zeros)
4. the MAC suffix after ``</BODY>`` or the MAC wrong    -> ``8002``
5. anything else about the document, HEAD or BODY       -> ``8001``
6. the transaction: ``3009`` here, the rest to the ledger.

Answers repeat the request's five HEAD elements as received (empty when
unreadable) and carry an SM4 MAC over their own bytes up to ``<MAC>``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from bankgate.canon.messages import (
    CancelRequest,
    ConfirmRequest,
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
from bankgate.codec import xmldoc
from bankgate.codec.base import Close, Dispatch, Framing, Reply, Session
from bankgate.codec.capabilities import KeyKind, SimulatorTraits
from bankgate.codec.crypto import macs_equal, sm4_mac
from bankgate.codec.fields import gbk_fit
from bankgate.codec.statement import CHUNK, Records, Statement, StatementError, check_head
from bankgate.codec.xmldoc import XmlFormatError

NAME = "ref-xml"
ENCODING = "gbk"
MAC_ZEROS = "0" * 16
MAX_BILLS = 20

# -- element formats: text -> value (ValueError names the rule), value -> text --------

yuan = xmldoc.fen_to_yuan


def _str(v: Any) -> str:
    return "" if v is None else str(v)


def _date_text(v: Any) -> str:
    return v if isinstance(v, str) else f"{v:%Y%m%d}"


def _yuan_text(v: Any) -> str:
    return v if isinstance(v, str) else yuan(v)


CHANNELS = {"04": "ATM", "05": "online", "07": "credit card", "08": "mobile"}


def _channel(text: str) -> str:
    if text not in CHANNELS:
        raise ValueError(f"{text[:40]!r} is not a channel ({', '.join(CHANNELS)})")
    return text


@dataclass(frozen=True)
class Kind:
    parse: Callable[[str], Any] | None  # None: the text as it is
    text: Callable[[Any], str] = _str


KINDS = {
    "seq": Kind(xmldoc.pattern(r"[0-9A-Za-z]{1,32}", "1-32 letters or digits")),
    "date": Kind(xmldoc.yyyymmdd, _date_text),
    "amount": Kind(xmldoc.yuan_to_fen, _yuan_text),
    "text": Kind(None),
    "txcode": Kind(xmldoc.pattern(r"[0-9]{4}", "4 digits")),
    "bank": Kind(xmldoc.pattern(r"[0-9]{1,12}", "1-12 digits")),
    "time": Kind(xmldoc.hhmmss),
    "cust": Kind(xmldoc.printable(1, 20)),
    "order": Kind(xmldoc.printable(1, 20)),
    "channel": Kind(_channel),
    "int": Kind(lambda t: int(xmldoc.pattern(r"[0-9]{1,9}", "a count")(t)), _str),
    "stamp": Kind(xmldoc.pattern(r"[0-9]{14}", "YYYYMMDDHHMMSS")),
    "status": Kind(xmldoc.pattern(r"[0-5]", "a status 0-5")),
}


@dataclass(frozen=True)
class F:
    """One element of a declared sequence: its XML name, the key of the
    plain values (``client_encode`` / ``client_decode``) and its format."""

    xml: str
    key: str
    kind: str = "text"

    @property
    def field(self) -> xmldoc.Field:
        return xmldoc.Field(self.xml, KINDS[self.kind].parse)


# -- the declarations (§2, §4) ---------------------------------------------------------

HEAD = (F("TxCode", "txcode", "txcode"), F("BankCode", "bank_code", "bank"),
        F("TxDate", "trade_date", "date"), F("TxTime", "trade_time", "time"),
        F("BankSeq", "serial", "seq"))
ECHO = tuple(f.xml for f in HEAD)
ANSWER_HEAD = HEAD + (F("RspCode", "resp_code"), F("RspMsg", "resp_msg"))
ORIGINAL = (F("OrigSeq", "orig_serial", "seq"), F("OrigDate", "orig_date", "date"))
ORDER = (F("OrderNo", "order_no", "order"), *ORIGINAL)
BILL = (F("BillNo", "bill_id"), F("FeeType", "fee_type"), F("Period", "period"),
        F("Amount", "amount", "amount"), F("LateFee", "late_fee", "amount"))
QUERY_OUT = (F("CustNo", "customer_no"), F("CustName", "name"), F("Address", "address"),
             F("TotalDue", "total_due", "amount"), F("BillCount", "bill_count", "int"))


@dataclass(frozen=True)
class Txn:
    code: str
    name: str
    request: tuple[F, ...]
    response: tuple[F, ...]
    journaled: bool = False  # §6: retried by BankSeq + TxDate


TXNS = {t.code: t for t in (
    Txn("3001", "query", (F("CustNo", "customer_no", "cust"),), QUERY_OUT),
    Txn("3002", "prepay", (F("CustNo", "customer_no", "cust"), F("Amount", "amount", "amount"),
                           F("Channel", "channel", "channel")),
        (F("OrderNo", "order_no"), F("ExpireTime", "expire_time", "stamp")), True),
    Txn("3003", "confirm", ORDER, (F("ReceiptNo", "receipt_no"), F("InvoiceNo", "invoice_no")),
        True),
    Txn("3004", "cancel", ORDER, (), True),
    Txn("3005", "reverse", (*ORIGINAL, F("Amount", "amount", "amount")), (), True),
    Txn("3006", "status", ORIGINAL, (F("Status", "status", "status"),
                                     F("Amount", "amount", "amount"),
                                     F("OrderNo", "order_no"))),
    Txn("3009", "echo", (), ()),
    Txn("3010", "notice", (F("SettleDate", "settle_date", "date"), F("FileName", "file_name")),
        ()),
)}
TXN_BY_NAME = {t.name: t for t in TXNS.values()}

# -- response codes (§5) --------------------------------------------------------------

OUTCOME_CODES: dict[Outcome, str] = {
    Outcome.OK: "0000",
    Outcome.NOT_FOUND: "1001",
    Outcome.NOTHING_DUE: "1002",
    Outcome.ACCOUNT_LOCKED: "1003",
    Outcome.AMOUNT_REJECTED: "1004",
    Outcome.DUPLICATE_MISMATCH: "2001",
    Outcome.ORIGINAL_NOT_FOUND: "2002",
    Outcome.STATE_NOT_ALLOWED: "2003",
    Outcome.ALREADY_REVERSED: "2003",
    Outcome.REVERSAL_NOT_ALLOWED: "2003",
    Outcome.REVERSED_FIRST: "2003",
    Outcome.EXPIRED: "2004",
    Outcome.DATE_CLOSED: "3001",
    Outcome.FORMAT_ERROR: "8001",
    Outcome.UNKNOWN_TRANSACTION: "8001",
    Outcome.MAC_ERROR: "8002",
    Outcome.NOT_AUTHORISED: "8003",
    Outcome.BUSY: "9001",
}
OTHER_ERROR = "9999"

MESSAGES = {
    "0000": "交易成功",
    "1001": "用户不存在",
    "1002": "无欠费",
    "1003": "用户已冻结或停用",
    "1004": "金额不符",
    "2001": "流水号重复且内容不同",
    "2002": "原交易或订单不存在",
    "2003": "交易状态不允许此操作",
    "2004": "订单已过期",
    "3001": "该交易日期已扎帐",
    "8001": "报文格式错误",
    "8002": "MAC校验错误",
    "8003": "机构未授权或地址不允许",
    "9001": "系统忙,请稍后重试",
    "9999": "其他错误",
}
_OUTCOME_MESSAGES = {
    Outcome.REVERSED_FIRST: "该流水已被冲正,不予缴费",
    Outcome.ALREADY_REVERSED: "原交易已冲正",
    Outcome.REVERSAL_NOT_ALLOWED: "不允许冲正",
}

STATUS_CODES = {PaymentStatus.NOT_FOUND: "0", PaymentStatus.PENDING: "1",
                PaymentStatus.POSTED: "2", PaymentStatus.CANCELLED: "3",
                PaymentStatus.EXPIRED: "4", PaymentStatus.REVERSED: "5",
                PaymentStatus.REFUNDED: "5"}
STATUS_NAMES = {"0": "NOT_FOUND", "1": "PENDING", "2": "POSTED", "3": "CANCELLED",
                "4": "EXPIRED", "5": "REVERSED"}


def outcome_code(outcome: Outcome) -> str:
    """The spec's response code for a canonical outcome (total over Outcome)."""
    return OUTCOME_CODES.get(outcome, OTHER_ERROR)


# -- MAC (§3) -----------------------------------------------------------------------------

_SUFFIX_HEAD = b"</BODY><MAC>"
_SUFFIX_TAIL = b"</MAC></ROOT>"
_SUFFIX_LEN = len(_SUFFIX_HEAD) + 16 + len(_SUFFIX_TAIL)
_HEX16 = re.compile(rb"[0-9A-Fa-f]{16}")


def split_mac(frame: bytes) -> tuple[bytes, bytes] | None:
    """``(MAB, MAC hex)`` of a document ending exactly ``</BODY><MAC>`` + 16 hex
    + ``</MAC></ROOT>``; ``None`` otherwise."""
    tail = frame[-_SUFFIX_LEN:]
    if (len(tail) != _SUFFIX_LEN or not tail.startswith(_SUFFIX_HEAD)
            or not tail.endswith(_SUFFIX_TAIL)):
        return None
    mac = tail[len(_SUFFIX_HEAD):-len(_SUFFIX_TAIL)]
    if _HEX16.fullmatch(mac) is None:
        return None
    return frame[:len(frame) - _SUFFIX_LEN + len(b"</BODY>")], mac


def _key(session: Session) -> bytes | None:
    key = session.bank.keys.get("mac_key")
    return key if isinstance(key, bytes) and len(key) == 16 else None


def mac_hex(session: Session, mab: bytes) -> str:
    """The MAC element's text for ``mab``: 16 uppercase hex digits (zeros when
    the bank has MAC off or no key)."""
    key = _key(session)
    if not session.bank.mac or key is None:
        return MAC_ZEROS
    return sm4_mac(key, mab).hex().upper()


def mac_verifies(session: Session, frame: bytes) -> bool:
    key = _key(session)
    parts = split_mac(frame)
    if key is None or parts is None:
        return False
    return macs_equal(sm4_mac(key, parts[0]), bytes.fromhex(parts[1].decode("ascii")))


def document(session: Session, root: str, items: list, mac: bool = True) -> bytes:
    """``<?xml ...?><ROOT>`` + items + ``<MAC>...</MAC></ROOT>``, GBK."""
    mab = (xmldoc.declaration("GBK") + f"<{root}>" + xmldoc.render(items)).encode(ENCODING)
    text = mac_hex(session, mab) if mac else MAC_ZEROS
    return mab + f"<MAC>{text}</MAC></{root}>".encode("ascii")


# -- answers ----------------------------------------------------------------------------


def _readable(elem) -> str:
    """An echoed element's text as received: "" for one that cannot be read
    (absent, holding elements, not GBK, longer than 64 bytes)."""
    if elem is None or len(elem):
        return ""
    text = elem.text or ""
    try:
        return text if len(text.encode(ENCODING)) <= 64 else ""
    except UnicodeEncodeError:
        return ""


def _echo(head) -> dict[str, str]:
    """HEAD's five elements as received (§2), by local name, first of each."""
    out: dict[str, str] = {}
    if head is not None:
        for elem in head:
            name = _local(elem.tag)
            if name in ECHO and name not in out:
                out[name] = _readable(elem)
    return out


def _local(tag: Any) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def answer(session: Session, echo: dict, code: str, body: list | None = None,
           outcome: Outcome | None = None) -> bytes:
    """A response document: the echoed HEAD, ``code`` and its message, BODY
    (empty unless 0000), MAC (zeros for 8003)."""
    msg = gbk_fit(_OUTCOME_MESSAGES.get(outcome) or MESSAGES.get(code, ""), 60)
    head = [(n, echo.get(n, "")) for n in ECHO] + [("RspCode", code), ("RspMsg", msg)]
    items = [("HEAD", head), ("BODY", body if code == "0000" and body else [])]
    try:
        return document(session, "ROOT", items, mac=code != "8003")
    except UnicodeEncodeError:  # a value GBK cannot carry
        return document(session, "ROOT", [("HEAD", head[:5] + [
            ("RspCode", OTHER_ERROR), ("RspMsg", MESSAGES[OTHER_ERROR])]), ("BODY", [])])


def _fit(text: str | None, n: int) -> str:
    return gbk_fit(text or "", n, errors="replace")


def _query_body(result, req) -> list:
    bills = sorted(result.bills, key=lambda b: (b.period, b.bill_id))
    return [("CustNo", result.customer_no or req.customer_no),
            ("CustName", _fit(result.name, 60)), ("Address", _fit(result.address, 100)),
            ("TotalDue", yuan(result.total_due + result.late_fee)),
            ("BillCount", str(len(bills))),
            ("BILLS", [("BILL", [("BillNo", b.bill_id), ("FeeType", b.fee_type),
                                 ("Period", b.period), ("Amount", yuan(b.amount)),
                                 ("LateFee", yuan(b.late_fee))])
                       for b in bills[:MAX_BILLS]])]


def _prepay_body(result, req) -> list:
    expires = result.expires_at
    return [("OrderNo", result.receipt_no or ""),
            ("ExpireTime", f"{expires:%Y%m%d%H%M%S}" if expires else "")]


def _confirm_body(result, req) -> list:
    return [("ReceiptNo", result.receipt_no or ""), ("InvoiceNo", result.invoice_no or "")]


def _status_body(result, req) -> list:
    status = STATUS_CODES.get(getattr(result, "status", None), "0")
    if status == "0":
        return [("Status", "0"), ("Amount", "0.00"), ("OrderNo", "")]
    return [("Status", status), ("Amount", yuan(result.amount)),
            ("OrderNo", result.receipt_no or "")]


def _empty_body(result, req) -> list:
    return []


_BODIES = {"query": _query_body, "prepay": _prepay_body, "confirm": _confirm_body,
           "status": _status_body}


# -- the statement file (§7) ---------------------------------------------------------------

STATEMENT_HEAD = (F("BankCode", "bank_code", "bank"), F("SettleDate", "settle_date", "date"),
                  F("Count", "record_count", "int"), F("Total", "total_amount", "amount"))
STATEMENT_D = (F("BankSeq", "serial", "seq"), F("TxDate", "trade_date", "date"),
               F("CustNo", "customer_no", "cust"), F("Amount", "amount", "amount"),
               F("OrderNo", "order_no"))


def statement_name(bank_code: str, d: date) -> str:
    """``<BankCode>_<YYYYMMDD>.xml``."""
    return f"{bank_code}_{d:%Y%m%d}.xml"


def _row_values(row: xmldoc.Row, fields: tuple[F, ...]) -> dict:
    names = [n for n, _ in row.fields]
    want = [f.xml for f in fields]
    if names != want:
        raise StatementError(f"line {row.line}: <{row.tag}> holds {', '.join(names)};"
                             f" expected {', '.join(want)}")
    out = {}
    for f, (_, text) in zip(fields, row.fields, strict=True):
        parse = KINDS[f.kind].parse
        try:
            out[f.key] = parse(text) if parse else text
        except ValueError as e:
            raise StatementError(f"line {row.line}: {f.xml}: {e}") from None
    if len(out.get("order_no", "")) > 20:
        raise StatementError(f"line {row.line}: OrderNo: longer than 20 characters")
    return out


def iter_statement(source) -> Iterator[dict]:
    """Stream a statement file (bytes or a binary file): first the HEAD's
    values (``bank_code``, ``settle_date``, ``record_count``,
    ``total_amount``), then one dict per ``D`` (``serial``, ``trade_date``,
    ``customer_no``, ``amount`` in fen, ``order_no``, ``line``).  Memory stays
    bounded whatever the file's size; :class:`StatementError` names the line."""
    head_seen = False
    try:
        for row in xmldoc.rows(source):
            if row.path == ("STATEMENT", "HEAD") and not head_seen:
                head_seen = True
                yield _row_values(row, STATEMENT_HEAD)
            elif row.path == ("STATEMENT", "DETAILS", "D") and head_seen:
                rec = _row_values(row, STATEMENT_D)
                rec["line"] = row.line
                yield rec
            else:
                where = "/".join(row.path)
                raise StatementError(f"line {row.line}: <{where}> not expected here"
                                     + ("" if head_seen else " (HEAD must come first)"))
    except (xmldoc.XmlError, XmlFormatError) as e:
        raise StatementError(str(e)) from None
    if not head_seen:
        raise StatementError("line 1: no STATEMENT/HEAD")


def _statement_chunks(bank_code: str, d: date, records: Iterable[dict], count: int,
                      total: int) -> Iterator[bytes]:
    head = [(f.xml, KINDS[f.kind].text(v)) for f, v in
            zip(STATEMENT_HEAD, (bank_code, d, count, total), strict=True)]
    yield (xmldoc.declaration("GBK") + "<STATEMENT>" + xmldoc.render([("HEAD", head)])
           + "<DETAILS>\n").encode(ENCODING)
    for i, r in enumerate(records):
        try:
            values = (r["serial"], r.get("trade_date") or d, r["customer_no"], r["amount"],
                      r.get("order_no") or r.get("receipt_no") or "")
            items = [(f.xml, KINDS[f.kind].text(v))
                     for f, v in zip(STATEMENT_D, values, strict=True)]
            yield (xmldoc.render([("D", items)]) + "\n").encode(ENCODING)
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"record {i}: {e}") from None
    yield b"</DETAILS></STATEMENT>"


class XmlStatementFormat:
    """§7 for the reconciler, the simulator and the tests."""

    has_header = True
    names_bills = False

    def file_name(self, bank_code: str, d: date) -> str:
        return statement_name(bank_code, d)

    def read(self, data: bytes, bank_code: str, d: date, chunk: int = CHUNK) -> Statement:
        it = iter_statement(data)
        head = next(it)
        check_head(head["settle_date"], d, head["bank_code"], bank_code, 1)
        st = Statement(d, Records(), head["bank_code"], head["record_count"],
                       head["total_amount"])
        seen: dict[tuple[date, str], int] = {}
        add = st.records.add
        for r in it:
            key = (r["trade_date"], r["serial"])
            if key in seen:
                raise StatementError(f"line {r['line']}: BankSeq {r['serial']!r} of"
                                     f" {r['trade_date']:%Y%m%d} repeats line {seen[key]}")
            seen[key] = r["line"]
            add(r["serial"], r["trade_date"], r["customer_no"], r["amount"], "", "000000")
        return st

    def write(self, bank_code: str, d: date, records: list[dict],
              declared: tuple[int, int] | None = None) -> bytes:
        records = list(records)
        count, total = declared or (len(records), sum(int(r["amount"]) for r in records))
        return b"".join(_statement_chunks(bank_code, d, records, count, total))

    def stream(self, bank_code: str, d: date, records: Iterable[dict], count: int,
               total: int) -> Iterator[bytes]:
        """The file in pieces, for records too many to hold (``count`` and
        ``total`` go in the HEAD as they are)."""
        return _statement_chunks(bank_code, d, records, count, total)


STATEMENT_FORMAT = XmlStatementFormat()

SIMULATOR_TRAITS = SimulatorTraits(
    ops={"query": "query", "pay": "prepay", "prepay": "prepay", "confirm": "confirm",
         "cancel": "cancel", "reverse": "reverse", "status": "status", "echo": "echo",
         "notice": "notice"},
    serial_length=20,
    two_phase=True,
)

#: §3: the SM4 MAC key; a bank with ``mac = true`` needs it
KEY_KINDS = (KeyKind("mac_key", algorithm="sm4", check_length=3,
                     description="SM4 MAC key (ISO/IEC 9797-1 algorithm 1)"),)


# -- the codec ---------------------------------------------------------------------------


def _as_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return xmldoc.yyyymmdd(str(value))


def _text(f: F, value: Any) -> str:
    return "" if value is None else KINDS[f.kind].text(value)


def _bill(elem) -> dict:
    if elem.tag != "BILL":
        raise XmlFormatError(elem.tag, "not expected in <BILLS>")
    got = xmldoc.read_fields(elem, [f.field for f in BILL])
    return {f.key: got[f.xml] for f in BILL}


class _Refuse(Exception):
    def __init__(self, outcome: Outcome, reason: str, txname: str = ""):
        super().__init__(reason)
        self.outcome, self.reason, self.txname = outcome, reason, txname


class RefXmlCodec:
    name = NAME
    description = "reference XML interface: GBK XML, SM4 MAC, prepay / confirm / cancel"
    framing = Framing(kind="ascii6", max_length=8192, one_per_connection=True,
                      idle_timeout=30.0)
    outcome_codes = OUTCOME_CODES
    statement_format = STATEMENT_FORMAT
    statement_name = staticmethod(statement_name)
    simulator_traits = SIMULATOR_TRAITS
    key_kinds = KEY_KINDS
    bank_defaults = {"two_phase": True, "confirm_timeout": 600}

    def outcome_code(self, outcome: Outcome) -> str:
        return outcome_code(outcome)

    def layouts(self) -> dict:
        """The declared element sequences (no construct layouts: XML)."""
        out: dict[str, Any] = {"head": HEAD, "answer.head": ANSWER_HEAD, "bill": BILL,
                               "statement.head": STATEMENT_HEAD, "statement.d": STATEMENT_D}
        for t in TXNS.values():
            out[f"{t.code}.request"] = t.request
            out[f"{t.code}.response"] = t.response
        return out

    # -- gateway side ------------------------------------------------------------------

    def decode(self, frame: bytes, session: Session):
        echo: dict = {}
        try:
            return self._decode(bytes(frame), session, echo)
        except Exception as e:  # last resort: decode never raises
            return Reply(answer(session, echo, OTHER_ERROR), Outcome.ERROR, "",
                         {"reason": f"internal error: {type(e).__name__}"})

    def _decode(self, frame: bytes, session: Session, echo: dict):
        try:
            doc = xmldoc.parse(frame)
        except xmldoc.XmlRefused as e:
            return self._reject(session, echo, _Refuse(Outcome.FORMAT_ERROR, str(e)))
        except xmldoc.XmlError as e:
            return Close(str(e))
        root = doc.root
        head = next((c for c in root if _local(c.tag) == "HEAD"), None)
        if _local(root.tag) != "ROOT" or head is None:
            return Close("no ROOT/HEAD")
        echo.update(_echo(head))
        bank = session.bank
        if echo.get("BankCode", "").strip(" ") != bank.bank_code or not session.address_allowed:
            why = "address not allowed" if not session.address_allowed else "unknown BankCode"
            return self._reject(session, echo, _Refuse(Outcome.NOT_AUTHORISED, why))
        if bank.mac and not mac_verifies(session, frame):
            return self._reject(session, echo, _Refuse(Outcome.MAC_ERROR, "MAC does not verify"))
        try:
            txn, h, body = self._read(doc, head, session)
        except _Refuse as r:
            return self._reject(session, echo, r)
        except XmlFormatError as e:
            return self._reject(session, echo, _Refuse(Outcome.FORMAT_ERROR, str(e)))
        return self._request(session, echo, txn, h, body)

    def _reject(self, session: Session, echo: dict, r: _Refuse) -> Reply:
        code = outcome_code(r.outcome)
        return Reply(answer(session, echo, code, outcome=r.outcome), r.outcome, r.txname,
                     {"txcode": echo.get("TxCode", ""), "reason": r.reason})

    @staticmethod
    def _read(doc: xmldoc.Document, head, session: Session) -> tuple[Txn, dict, dict]:
        """Everything 8001 covers (§2, §4), in document order."""
        fmt = Outcome.FORMAT_ERROR
        if doc.prolog.declared is None or doc.prolog.declared.lower() != "gbk":
            raise _Refuse(fmt, "the XML declaration must name encoding GBK")
        if doc.extras:
            raise _Refuse(fmt, f"{doc.extras[0]} not allowed")
        if any("}" in e.tag for e in doc.root.iter()):
            raise _Refuse(fmt, "namespaces are not allowed")
        parts = xmldoc.read_fields(doc.root, (xmldoc.Field("HEAD", nested=True),
                                              xmldoc.Field("BODY", nested=True),
                                              xmldoc.Field("MAC")))
        if re.fullmatch(r"[0-9A-Fa-f]{16}", parts["MAC"]) is None:
            raise _Refuse(fmt, "MAC: 16 hex digits expected")
        h = xmldoc.read_fields(head, [f.field for f in HEAD])
        txn = TXNS.get(h["TxCode"])
        if txn is None:
            raise _Refuse(Outcome.UNKNOWN_TRANSACTION, f"TxCode {h['TxCode']} unknown")
        if not session.trade_date_ok(h["TxDate"]):
            raise _Refuse(fmt, f"TxDate {h['TxDate']:%Y%m%d} is more than a day away",
                          txn.name)
        try:
            body = xmldoc.read_fields(parts["BODY"], [f.field for f in txn.request])
        except XmlFormatError as e:
            raise _Refuse(fmt, str(e), txn.name) from None
        if txn.code == "3005" and body["OrigDate"] != h["TxDate"]:
            raise _Refuse(fmt, "OrigDate: a reversal names a payment of its own TxDate",
                          txn.name)
        if txn.code == "3010" and body["FileName"] != statement_name(h["BankCode"],
                                                                     body["SettleDate"]):
            raise _Refuse(fmt, "FileName: not <BankCode>_<SettleDate>.xml", txn.name)
        return txn, h, body

    def _request(self, session: Session, echo: dict, txn: Txn, h: dict, body: dict):
        bank = session.bank
        serial = h["BankSeq"]
        origin = Origin(bank=bank.name, trade_date=h["TxDate"], trade_time=h["TxTime"],
                        channel=body.get("Channel", ""))
        # §6: the content is TxCode and BODY (not TxTime)
        content = fingerprint(txn.code, *(_str(body[f.xml]) for f in txn.request))
        log: dict[str, Any] = {"serial": serial}
        if txn.name == "echo":
            return Reply(answer(session, echo, "0000"), Outcome.OK, "echo", log)
        if txn.name == "query":
            req: Any = QueryRequest(origin, body["CustNo"])
            log["customer"] = body["CustNo"]
        elif txn.name == "prepay":
            req = PaymentRequest(origin, serial, body["CustNo"], body["Amount"],
                                 content=content, two_phase=True)
            log.update(customer=body["CustNo"], amount=body["Amount"])
        elif txn.name in ("confirm", "cancel"):
            kind = ConfirmRequest if txn.name == "confirm" else CancelRequest
            req = kind(origin, body["OrigSeq"], body["OrigDate"], serial=serial,
                       order_no=body["OrderNo"], content=content)
            log["order_no"] = body["OrderNo"]
        elif txn.name == "reverse":
            req = ReversalRequest(origin, body["OrigSeq"], None, body["Amount"], serial=serial,
                                  content=content, latest_only=bank.latest_only_reversal,
                                  confirmed_only=True)
            log["amount"] = body["Amount"]
        elif txn.name == "status":
            req = StatusRequest(origin, body["OrigSeq"], body["OrigDate"])
        else:  # notice
            req = StatementNotice(origin, body["SettleDate"], body["FileName"], 0, 0)
            log["settle_date"] = f"{body['SettleDate']:%Y%m%d}"
        return Dispatch(req, self._encoder(session, echo, txn, req), txn.name, log)

    @staticmethod
    def _encoder(session: Session, echo: dict, txn: Txn, req) -> Callable[[Any], bytes]:
        body_fn = _BODIES.get(txn.name, _empty_body)

        def encode(result) -> bytes:
            outcome = getattr(result, "outcome", Outcome.ERROR)
            if not isinstance(outcome, Outcome):
                outcome = Outcome.ERROR
            if txn.name == "status" and outcome in (Outcome.NOT_FOUND,
                                                    Outcome.ORIGINAL_NOT_FOUND):
                outcome = Outcome.OK  # §4 3006: an unknown payment is status 0
            code = outcome_code(outcome)
            body: list = []
            if code == "0000":
                if txn.name == "query" and not result.bills and not result.total:
                    code = "1002"
                else:
                    try:
                        body = body_fn(result, req)
                    except Exception:  # a result the document cannot carry
                        code = OTHER_ERROR
            return answer(session, echo, code, body, outcome)

        return encode

    def mask_frame(self, frame: bytes) -> str:
        """A frame for the debug log, its MAC blanked."""
        parts = split_mac(bytes(frame))
        if parts is not None:
            frame = parts[0] + b"<MAC>" + b"*" * 16 + _SUFFIX_TAIL
        return bytes(frame).decode(ENCODING, errors="replace")

    # -- bank side ------------------------------------------------------------------------

    def client_encode(self, txn: str, values: dict, session: Session) -> bytes:
        """A request document (without the length) as the bank sends it.

        ``txn``: ``query``/``prepay``/``confirm``/``cancel``/``reverse``/
        ``status``/``echo``/``notice`` or a TxCode.  ``values`` by key (see the
        declarations: ``customer_no``, ``amount`` in fen or as yuan text,
        ``channel`` (default ``05``), ``order_no`` (or ``receipt_no``),
        ``orig_serial``, ``orig_date``, ``settle_date``, ``file_name``, and
        ``serial``, ``trade_date``, ``trade_time``, ``bank_code``).  For
        negative tests: ``txcode`` (sent as is), ``body`` (the BODY's inner
        text, raw) and ``mac`` (16 characters sent instead of the MAC).
        """
        t = TXN_BY_NAME.get(txn) or TXNS.get(str(txn))
        if t is None:
            raise ValueError(f"unknown transaction {txn!r}")
        now = session.now()
        v = dict(values)
        v.setdefault("trade_date", now.date())
        v.setdefault("trade_time", now.strftime("%H%M%S"))
        v.setdefault("bank_code", session.bank.bank_code)
        v.setdefault("serial", "")
        v["txcode"] = v.get("txcode", t.code)
        v.setdefault("channel", "05")
        if "order_no" not in v and "receipt_no" in v:
            v["order_no"] = v["receipt_no"]
        if "orig_date" not in v and ("orig_serial" in v or t.code == "3005"):
            v["orig_date"] = v["trade_date"]
        if t.code == "3010":
            v["settle_date"] = _as_date(v.get("settle_date")
                                        or _as_date(v["trade_date"]) - timedelta(days=1))
            v.setdefault("file_name", statement_name(str(v["bank_code"]), v["settle_date"]))
        head = [(f.xml, _text(f, v[f.key])) for f in HEAD]
        body_items = [(f.xml, _text(f, v.get(f.key))) for f in t.request]
        text = xmldoc.declaration("GBK") + "<ROOT>" + xmldoc.render([("HEAD", head)])
        if "body" in v:
            text += f"<BODY>{v['body']}</BODY>"
        else:
            text += xmldoc.render([("BODY", body_items)])
        mab = text.encode(ENCODING)
        mac = v.get("mac")
        if mac is None:
            key = _key(session)
            mac = sm4_mac(key, mab).hex().upper() if key and session.bank.mac else MAC_ZEROS
        return mab + f"<MAC>{mac}</MAC></ROOT>".encode("ascii")

    def client_decode(self, frame: bytes, session: Session) -> dict:
        """Parse an answer document (without the length) as the bank reads it.

        Returns the HEAD (``txcode`` ... ``serial`` as text, ``resp_code``,
        ``resp_msg``), the BODY of a 0000 answer by key (amounts in fen,
        ``bills`` a list of dicts, ``status_name`` for 3006, and for 3002
        ``receipt_no`` too, equal to ``order_no``), ``mac`` and ``mac_ok``
        (the MAC verifies; for 8003, or with MAC off: it is zeros).  Raises
        ``ValueError`` for an answer that breaks §2.
        """
        frame = bytes(frame)
        try:
            doc = xmldoc.parse(frame)
            parts = xmldoc.read_fields(doc.root, (xmldoc.Field("HEAD", nested=True),
                                                  xmldoc.Field("BODY", nested=True),
                                                  xmldoc.Field("MAC")))
            out: dict[str, Any] = {f.key: v for f, v in zip(
                ANSWER_HEAD, xmldoc.read_fields(parts["HEAD"],
                                                [xmldoc.Field(f.xml) for f in ANSWER_HEAD])
                .values(), strict=True)}
            code = out["resp_code"]
            t = TXNS.get(out["txcode"])
            if code == "0000" and t is not None:
                out.update(self._client_body(t, parts["BODY"]))
            elif len(parts["BODY"]):
                raise ValueError(f"answer {code} carries a BODY")
        except (xmldoc.XmlError, XmlFormatError) as e:
            raise ValueError(f"answer: {e}") from None
        out["mac"] = parts["MAC"]
        if session.bank.mac and code != "8003":
            out["mac_ok"] = mac_verifies(session, frame)
        else:
            out["mac_ok"] = parts["MAC"] == MAC_ZEROS
        return out

    @staticmethod
    def _client_body(t: Txn, body) -> dict:
        fields = [f.field for f in t.response]
        if t.code == "3001":
            fields.append(xmldoc.Field("BILLS", nested=True))
        got = xmldoc.read_fields(body, fields)
        out = {f.key: got[f.xml] for f in t.response}
        if t.code == "3001":
            out["bills"] = [_bill(b) for b in xmldoc.children(got["BILLS"])]
        if t.code == "3002":
            out["receipt_no"] = out["order_no"]
        if t.code == "3006":
            out["status_name"] = STATUS_NAMES[out["status"]]
        return out


CODEC = RefXmlCodec()
