"""An example codec plugin: the smallest complete bank interface.

``docs/bank-it-guide.rst`` walks through this file.  The made-up spec
"example-mini" it implements:

- TCP, the bank is the client, sequential requests on one connection;
  frame = 4 ASCII digits (the length) + message.
- Request header (38 bytes): ``txcode`` X(4) (``Q001`` query, ``P001``
  payment), ``bank_code`` X(6), ``trade_date`` N(8), ``serial`` X(20).
- Response: the request header, ``resp_code`` X(2), then -- only for
  ``00`` -- the body.
- Q001 body: ``customer_no`` X(20).  Answer: ``customer_no`` X(20),
  ``name`` X(40), ``total_due`` N(12), ``late_fee`` N(12) (fen).
- P001 body: ``customer_no`` X(20), ``amount`` N(12).  Answer:
  ``receipt_no`` X(20).

To use it: name this folder in ``gateway.plugin_dirs`` and configure a bank
with ``plugin = "example-mini"``.  Check it with
``bankgate plugins check docs/examples/plugins/example_mini.py``.
"""

from __future__ import annotations

from construct import ConstructError, Struct

from bankgate.canon.messages import Origin, Outcome, PaymentRequest, QueryRequest, fingerprint
from bankgate.codec.base import Close, Dispatch, Framing, Reply, Session
from bankgate.codec.fields import DateN8, Fen, GbkText, gbk_fit

HEADER = Struct(
    "txcode" / GbkText(4),
    "bank_code" / GbkText(6),
    "trade_date" / DateN8(),
    "serial" / GbkText(20),
)
HEADER_SIZE = 38
QUERY_REQUEST = Struct("customer_no" / GbkText(20))
QUERY_RESPONSE = Struct(
    "customer_no" / GbkText(20),
    "name" / GbkText(40),
    "total_due" / Fen(12),
    "late_fee" / Fen(12),
)
PAY_REQUEST = Struct("customer_no" / GbkText(20), "amount" / Fen(12))
PAY_RESPONSE = Struct("receipt_no" / GbkText(20))

TXNS = {  # txcode -> (name, request layout, response layout)
    "Q001": ("query", QUERY_REQUEST, QUERY_RESPONSE),
    "P001": ("pay", PAY_REQUEST, PAY_RESPONSE),
}
TXCODE = {name: code for code, (name, _, _) in TXNS.items()}

# The spec's codes for every canonical outcome; anything else is "99".
CODES = {
    Outcome.OK: "00",
    Outcome.NOT_FOUND: "10",
    Outcome.NOTHING_DUE: "11",
    Outcome.AMOUNT_REJECTED: "12",
    Outcome.ACCOUNT_LOCKED: "13",
    Outcome.DUPLICATE_MISMATCH: "20",
    Outcome.DATE_CLOSED: "21",
    Outcome.FORMAT_ERROR: "30",
    Outcome.NOT_AUTHORISED: "31",
    Outcome.BUSY: "91",
}


class ExampleMiniCodec:
    name = "example-mini"
    description = "example plugin: 4-digit length, 38-byte header, query and payment"
    framing = Framing(kind="ascii4", max_length=9999, idle_timeout=60.0)

    def outcome_code(self, outcome: Outcome) -> str:
        return CODES.get(outcome, "99")

    def layouts(self) -> dict:
        return {"header": HEADER, "Q001.request": QUERY_REQUEST,
                "Q001.response": QUERY_RESPONSE, "P001.request": PAY_REQUEST,
                "P001.response": PAY_RESPONSE}

    # -- gateway side ------------------------------------------------------------

    def decode(self, frame: bytes, session: Session):
        try:
            return self._decode(bytes(frame), session)
        except Exception:  # decode() must never raise: answer "other error"
            if len(frame) < HEADER_SIZE:
                return Close("internal error")
            return self._answer(bytes(frame), Outcome.ERROR)

    def _answer(self, frame: bytes, outcome: Outcome, body: bytes = b"", txname: str = "",
                log: dict | None = None) -> Reply:
        return Reply(self._frame(frame[:HEADER_SIZE], outcome, body), outcome, txname,
                     log or {})

    def _frame(self, head: bytes, outcome: Outcome, body: bytes = b"") -> bytes:
        code = self.outcome_code(outcome)
        return head + code.encode("ascii") + (body if code == "00" else b"")

    def _decode(self, frame: bytes, session: Session):
        if len(frame) < HEADER_SIZE:  # not even a header: close without answering
            return Close(f"{len(frame)} bytes, shorter than the header")
        own = session.bank.bank_code.encode("ascii").ljust(6)
        if frame[4:10] != own or not session.address_allowed:
            return self._answer(frame, Outcome.NOT_AUTHORISED)
        txn = TXNS.get(frame[:4].decode("latin-1"))
        if txn is None:
            return self._answer(frame, Outcome.UNKNOWN_TRANSACTION)
        txname, request_layout, response_layout = txn
        body_raw = frame[HEADER_SIZE:]
        try:
            if len(body_raw) != request_layout.sizeof():
                raise ValueError("wrong body length")
            head = HEADER.parse(frame[:HEADER_SIZE])
            body = request_layout.parse(body_raw)
        except (ConstructError, ValueError):
            return self._answer(frame, Outcome.FORMAT_ERROR, txname=txname)
        if not session.trade_date_ok(head.trade_date) or not head.serial:
            return self._answer(frame, Outcome.FORMAT_ERROR, txname=txname)
        origin = Origin(bank=session.bank.name, trade_date=head.trade_date)
        log = {"serial": head.serial, "customer": body.customer_no}
        if txname == "query":
            request = QueryRequest(origin, body.customer_no)
        else:
            request = PaymentRequest(origin, serial=head.serial, customer_no=body.customer_no,
                                     amount=body.amount,
                                     content=fingerprint("P001", body_raw))
            log["amount"] = body.amount
        head_raw = frame[:HEADER_SIZE]

        def encode(result) -> bytes:  # called with the ledger's result
            outcome = getattr(result, "outcome", Outcome.ERROR)
            if outcome is not Outcome.OK:
                return self._frame(head_raw, outcome)
            if txname == "query":
                values = dict(customer_no=result.customer_no, name=gbk_fit(result.name, 40,
                                                                            "replace"),
                              total_due=result.total_due, late_fee=result.late_fee)
            else:
                values = dict(receipt_no=result.receipt_no)
            return self._frame(head_raw, outcome, response_layout.build(values))

        return Dispatch(request, encode, txname, log)

    # -- bank side (the simulator and tests) -----------------------------------------

    def client_encode(self, txn: str, values: dict, session: Session) -> bytes:
        code = TXCODE.get(txn)
        if code is None:
            raise ValueError(f"example-mini has no {txn!r} transaction")
        head = HEADER.build(dict(
            txcode=code, bank_code=values.get("bank_code", session.bank.bank_code),
            trade_date=values.get("trade_date") or session.today(),
            serial=values.get("serial", "")))
        if code == "Q001":
            return head + QUERY_REQUEST.build(dict(customer_no=values["customer_no"]))
        return head + PAY_REQUEST.build(dict(customer_no=values["customer_no"],
                                             amount=values["amount"]))

    def client_decode(self, frame: bytes, session: Session) -> dict:
        try:
            out = dict(HEADER.parse(frame[:HEADER_SIZE]))
            out.pop("_io", None)
            out["resp_code"] = frame[HEADER_SIZE:HEADER_SIZE + 2].decode("ascii")
            body = frame[HEADER_SIZE + 2:]
            if out["resp_code"] == "00":
                parsed = TXNS[out["txcode"]][2].parse(body)
                out.update({k: v for k, v in parsed.items() if not k.startswith("_")})
            elif body:
                raise ValueError("a body on a non-00 answer")
        except (ConstructError, KeyError, UnicodeDecodeError) as e:
            raise ValueError(f"unreadable answer: {e}") from None
        return out


CODEC = ExampleMiniCodec()
