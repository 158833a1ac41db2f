"""An example plugin on the SDK: JSON over TCP, HMAC-SHA256 signed, two-phase payment.

The spec, written for this example, is ``docs/examples/plugins/example_json2p.rst``;
``docs/bank-it-guide.rst`` walks through both.  Everything below is the spec's
declarations -- fields, codes, check order -- plus the four hooks that know its
bytes; the check order, the never-raise rule, the bank side for the simulator,
and the two-phase rules (kept in the database by the ledger) come from
:mod:`bankgate.codec.sdk` and the gateway.

To use it: name this folder in ``gateway.plugin_dirs``, configure a bank with
``plugin = "example-json2p"`` and its ``sign_key`` in ``[bank.keys]``, and check it
with ``bankgate plugins check docs/examples/plugins/example_json2p.py``.
"""

from __future__ import annotations

from bankgate.canon.messages import Outcome
from bankgate.codec import jsonmsg
from bankgate.codec.base import Framing, Session
from bankgate.codec.capabilities import ALWAYS, KeyKind, SimulatorTraits
from bankgate.codec.sdk import (
    Field,
    Message,
    Refuse,
    SpecCodec,
    Txn,
    to_cancel,
    to_confirm,
    to_payment,
    to_query,
    to_reversal,
    to_status,
)

HEAD = ("txcode", "bank_code", "serial", "trade_date", "trade_time")  # §3, echoed by answers

# -- §4 the transactions ----------------------------------------------------------------

CUSTOMER = Field("customer_no", max_length=20)
AMOUNT = Field("amount", "fen", max_length=12)
ORIG_SERIAL = Field("orig_serial", max_length=32)
ORIG_DATE = Field("orig_date", "date", default=lambda v: v["trade_date"])
ORDER_NO = Field("order_no", max_length=32)
ANSWER_ORDER = Field("order_no", max_length=32, source="receipt_no")
INVOICE = Field("invoice_no", max_length=32, required=False)
ORIGINAL = (ORIG_SERIAL, ORIG_DATE, ORDER_NO)

TXNS = (
    Txn("query", "QRY", (CUSTOMER,), (
        CUSTOMER, Field("name"), Field("total_due", "fen"),
        Field("late_fee", "fen")), request=to_query, serial=False),
    Txn("prepay", "PRE", (CUSTOMER, AMOUNT), (
        ANSWER_ORDER, AMOUNT, Field("expires_at", "datetime", required=False)),
        request=lambda m: to_payment(m, two_phase=True)),
    Txn("confirm", "CFM", ORIGINAL, (ANSWER_ORDER, AMOUNT, INVOICE), request=to_confirm),
    Txn("cancel", "CNL", ORIGINAL, (ANSWER_ORDER, AMOUNT), request=to_cancel),
    Txn("reverse", "REV", (ORIG_SERIAL, AMOUNT), (ORIG_SERIAL, AMOUNT),
        request=lambda m: to_reversal(m, confirmed_only=True)),
    Txn("status", "STA", (ORIG_SERIAL, ORIG_DATE), (
        ORIG_SERIAL, Field("status", max_length=10),
        AMOUNT, Field("order_no", source="receipt_no", required=False)),
        request=to_status, as_ok=frozenset({Outcome.NOT_FOUND, Outcome.ORIGINAL_NOT_FOUND}),
        serial=False),
    Txn("echo", "ECH", serial=False),
)

# -- §5 the codes -----------------------------------------------------------------------

CODES = {
    Outcome.OK: "0000",
    Outcome.NOT_FOUND: "1001",
    Outcome.NOTHING_DUE: "1002",
    Outcome.AMOUNT_REJECTED: "1003",
    Outcome.ACCOUNT_LOCKED: "1004",
    Outcome.DUPLICATE_MISMATCH: "2001",
    Outcome.ORIGINAL_NOT_FOUND: "2002",
    Outcome.STATE_NOT_ALLOWED: "2003",
    Outcome.REVERSAL_NOT_ALLOWED: "2003",
    Outcome.EXPIRED: "2004",
    Outcome.ALREADY_REVERSED: "2005",
    Outcome.REVERSED_FIRST: "2006",
    Outcome.DATE_CLOSED: "2007",
    Outcome.FORMAT_ERROR: "9001",
    Outcome.MAC_ERROR: "9002",
    Outcome.UNKNOWN_TRANSACTION: "9003",
    Outcome.NOT_AUTHORISED: "9004",
    Outcome.BUSY: "9005",
}
MESSAGES = {
    "0000": "成功", "1001": "用户不存在", "1002": "无欠费", "1003": "金额不符",
    "1004": "用户已冻结", "2001": "流水号重复且内容不同", "2002": "原交易不存在",
    "2003": "原交易状态不允许", "2004": "预缴已过期", "2005": "原交易已冲正",
    "2006": "该流水已被冲正", "2007": "该交易日期已扎帐", "9001": "报文格式错误",
    "9002": "签名错误", "9003": "未知交易码", "9004": "机构未授权", "9005": "系统忙",
    "9999": "其他错误",
}


class ExampleJson2pCodec(SpecCodec):
    name = "example-json2p"
    description = "example SDK plugin: JSON, HMAC-SHA256 sign, prepay/confirm/cancel"
    framing = Framing(kind="ascii4", max_length=9999, idle_timeout=60.0)
    txns = TXNS
    codes = CODES
    other_code = "9999"
    messages = MESSAGES

    key_kinds = (KeyKind("sign_key", algorithm="secret", required=ALWAYS,
                         description="HMAC-SHA256 key of the sign field"),)
    bank_defaults = {"two_phase": True, "confirm_timeout": 600}
    simulator_traits = SimulatorTraits(
        ops={op: op for op in ("query", "prepay", "confirm", "cancel", "reverse", "status",
                               "echo")},
        serial_length=20, two_phase=True)

    # -- the bytes (§3) ------------------------------------------------------------------

    def mac_needed(self, session: Session) -> bool:
        return True  # §3: every request is signed

    def signature_ok(self, m: Message) -> bool:
        return jsonmsg.verify(m.session.bank.keys.get("sign_key"), m.wire)

    def parse_envelope(self, frame: bytes, session: Session) -> Message:
        try:
            wire = jsonmsg.loads(frame)
        except jsonmsg.JSONError as e:
            raise Refuse(str(e)) from None
        if not isinstance(wire, dict):
            raise Refuse("not a JSON object")
        return Message(frame, session, {k: wire[k] for k in HEAD if k in wire},
                       wire.get("body"), wire)

    def build_answer(self, m: Message, code: str, body: dict | None, outcome) -> bytes:
        out = {k: v for k, v in m.echo.items() if k in HEAD}
        out.update(code=code, msg=self.message_text(code))
        if body is not None:
            out["body"] = body
        key = m.session.bank.keys.get("sign_key")
        if key and outcome is not Outcome.NOT_AUTHORISED:  # §3: 9004 is not signed
            out = jsonmsg.signed(key, out)
        return jsonmsg.canonical(out)

    # -- bank side -------------------------------------------------------------------

    def build_request(self, txn: Txn, head: dict, body: dict, values: dict,
                      session: Session) -> bytes:
        out = {**head, "body": body}
        key = session.bank.keys.get("sign_key")
        if "sign" in values:  # a negative test's signature, sent as given
            out["sign"] = values["sign"]
        elif key:
            out = jsonmsg.signed(key, out)
        return jsonmsg.canonical(out)

    def parse_answer(self, frame: bytes, session: Session) -> tuple[dict, object]:
        wire = jsonmsg.loads(frame)
        if not isinstance(wire, dict) or "code" not in wire:
            raise ValueError("an answer is a JSON object with a code")
        head = {k: wire[k] for k in HEAD if k in wire}
        head.update(resp_code=wire["code"], resp_msg=wire.get("msg", ""))
        key = session.bank.keys.get("sign_key")
        head["sign_ok"] = ("sign" not in wire if wire["code"] == CODES[Outcome.NOT_AUTHORISED]
                           else jsonmsg.verify(key, wire))
        return head, wire.get("body")


CODEC = ExampleJson2pCodec()
