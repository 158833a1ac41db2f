"""plugins/ref_fixed.py against docs/specs/ref-fixed.rst, byte for byte.

Every expected frame here is assembled by hand from the spec's tables with
the two helpers ``X`` (GBK, space padded) and ``N`` (zero padded digits) --
never with the codec's own layouts.  MACs come from ``bankgate.codec.crypto``,
whose X9.19 is pinned by the spec's test vectors (§9), also checked here.
"""

from __future__ import annotations

from datetime import date, datetime

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bankgate.canon.messages import (
    BillDue,
    Origin,
    Outcome,
    PaymentRequest,
    PaymentResult,
    PaymentStatus,
    QueryRequest,
    QueryResult,
    ReversalRequest,
    ReversalResult,
    SimpleResult,
    StatementNotice,
    StatusRequest,
    StatusResult,
    fingerprint,
)
from bankgate.codec.base import BankKeys, BankProfile, Close, Dispatch, Reply, Session
from bankgate.codec.crypto import x919_mac
from bankgate.codec.registry import load_codec, load_file, shipped_dir

CODEC = load_codec("ref-fixed")
MODULE = load_file(shipped_dir() / "ref_fixed.py")

KEY = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
NOW = datetime(2026, 11, 27, 9, 30)
TODAY = date(2026, 11, 27)
SPACES16 = b" " * 16


def X(text: str, n: int) -> bytes:
    raw = text.encode("gbk")
    assert len(raw) <= n, (text, n)
    return raw + b" " * (n - len(raw))


def N(value: int | str, n: int) -> bytes:
    s = str(value)
    assert s.isdigit() and len(s) <= n
    return ("0" * (n - len(s)) + s).encode("ascii")


def make_session(mac=True, allow=(), peer="10.1.2.3", latest_only=False, key=KEY,
                 bank_code="105210"):
    bank = BankProfile(
        name="testbank",
        plugin="ref-fixed",
        bank_code=bank_code,
        keys=BankKeys(mac_key=key),
        mac=mac,
        allow=allow,
        latest_only_reversal=latest_only,
    )
    return Session(bank=bank, peer_host=peer, now=lambda: NOW)


MAC_ON = make_session(mac=True)
MAC_OFF = make_session(mac=False)


def head(txcode="1001", bank="105210", branch="210100001", teller="T0000012", channel="01",
         trade_date="20261127", trade_time="093015", serial="BK2026112700000001") -> bytes:
    """Header fields 1-8 (63 bytes)."""
    h = (X(txcode, 4) + X(bank, 6) + X(branch, 9) + X(teller, 8) + X(channel, 2)
         + trade_date.encode() + trade_time.encode() + X(serial, 20))
    assert len(h) == 63
    return h


def mac_hex(data: bytes) -> bytes:
    return x919_mac(KEY, data).hex().upper().encode()


def request(h63: bytes, body: bytes = b"", mac: bytes | None = None, mac_on=True) -> bytes:
    """A request message (no LLLL): fields 1-8, 0000, 40 spaces, MAC, body."""
    part = h63 + b"0000" + b" " * 40
    if mac is None:
        mac = mac_hex(part + body) if mac_on else SPACES16
    return part + mac + body


MSG = {
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


def response(h63: bytes, code: str, body: bytes = b"", mac_on=True, msg=None) -> bytes:
    part = h63 + code.encode() + X(msg or MSG[code], 40)
    mac = mac_hex(part + body) if mac_on and code != "8004" else SPACES16
    return part + mac + body


def reply_code(action) -> str:
    assert isinstance(action, Reply), action
    return action.frame[63:67].decode()


# -- §9 test vectors ---------------------------------------------------------------

VECTOR = (
    b"0143" b"1001" b"105210" b"210100001" b"T0000012" b"01" b"20261127" b"093015"
    b"BK2026112700000001  " b"0000" + b" " * 40 + b"50E50B64338D6957" + b"100000123" + b" " * 11
)
QUERY_BODY = X("100000123", 20)


def test_x919_check_value():
    assert x919_mac(KEY, b"Now is the time for all ").hex().upper() == "A1C72E74EA3FA9B6"


def test_vector_frame_is_what_the_spec_says():
    assert len(VECTOR) == 147
    assert VECTOR[:4] == b"0143" and len(VECTOR[4:]) == 143
    assert VECTOR[4:] == request(head(), QUERY_BODY)  # the hand assembly agrees


def test_vector_decodes():
    action = CODEC.decode(VECTOR[4:], MAC_ON)
    assert isinstance(action, Dispatch)
    assert action.txname == "query"
    assert action.request == QueryRequest(
        origin=Origin(
            bank="testbank",
            trade_date=TODAY,
            trade_time="093015",
            branch="210100001",
            teller="T0000012",
            channel="01",
        ),
        customer_no="100000123",
    )
    assert "mac" not in str(action.log).lower()


def test_vector_mac_accepted_in_lowercase():
    frame = VECTOR[4:111] + b"50e50b64338d6957" + VECTOR[127:]
    assert isinstance(CODEC.decode(frame, MAC_ON), Dispatch)


def test_client_encode_reproduces_the_vector():
    values = dict(
        customer_no="100000123",
        serial="BK2026112700000001",
        branch="210100001",
        teller="T0000012",
        channel="01",
        trade_date=TODAY,
        trade_time="093015",
    )
    assert CODEC.client_encode("query", values, MAC_ON) == VECTOR[4:]
    assert CODEC.client_encode("1001", values, MAC_ON) == VECTOR[4:]


# -- plugin surface ----------------------------------------------------------------


def test_codec_surface():
    assert CODEC.name == "ref-fixed"
    assert CODEC.framing.kind == "ascii4"
    assert CODEC.framing.max_length == 9999
    assert CODEC.framing.idle_timeout == 60.0
    sizes = {name: layout.sizeof() for name, layout in CODEC.layouts().items()
             if name != "1001.response"}
    assert sizes["header"] == 123
    assert sizes["1001.bill"] == 62
    assert sizes["1001.request"] == 20
    assert sizes["1002.request"] == 32
    assert sizes["1002.response"] == 84
    assert sizes["1003.request"] == sizes["1003.response"] == 52
    assert sizes["1004.request"] == 28
    assert sizes["1004.response"] == 53
    assert sizes["1005.request"] == 91
    assert sizes["1005.response"] == sizes["1009.request"] == sizes["1009.response"] == 0
    assert sizes["statement.header"] == 38
    assert sizes["statement.detail"] == 69
    for layout in CODEC.layouts().values():
        layout.compile()


EXPECTED_CODES = {
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


@pytest.mark.parametrize("outcome", list(Outcome))
def test_outcome_code_is_total(outcome):
    assert CODEC.outcome_code(outcome) == EXPECTED_CODES.get(outcome, "9999")


# -- responses, byte for byte ----------------------------------------------------------


def dispatch(frame: bytes, session=MAC_ON) -> Dispatch:
    action = CODEC.decode(frame, session)
    assert isinstance(action, Dispatch), action
    return action


def bill(bill_id, period, amount, late, fee="01"):
    return BillDue(bill_id=bill_id, fee_type=fee, period=period, amount=amount, late_fee=late)


def bill_bytes(b: BillDue) -> bytes:
    return (X(b.bill_id, 20) + X(b.fee_type, 2) + X(b.period, 16) + N(b.amount, 12)
            + N(b.late_fee, 12))


@pytest.mark.parametrize("session", [MAC_ON, MAC_OFF], ids=["mac", "nomac"])
def test_query_response(session):
    mac_on = session.bank.mac
    h = head()
    bills = (bill("B0001", "2025-2026", 150000, 3000), bill("B0002", "2026-2027", 180000, 0))
    result = QueryResult(
        outcome=Outcome.OK,
        customer_no="100000123",
        name="张三",
        address="幸福小区3号楼2单元501",
        customer_class="R",
        bills=bills,
        total_due=330000,
        late_fee=3000,
    )
    body = (X("100000123", 20) + X("张三", 60) + X("幸福小区3号楼2单元501", 80) + b"R"
            + N(330000, 12) + N(3000, 12) + b"02" + bill_bytes(bills[0]) + bill_bytes(bills[1]))
    assert len(body) == 187 + 2 * 62
    frame = request(h, QUERY_BODY, mac_on=mac_on)
    assert dispatch(frame, session).encode(result) == response(h, "0000", body, mac_on=mac_on)


def test_query_response_lists_the_oldest_twelve():
    bills = tuple(bill(f"B{i:04d}", f"2025-{i:02d}", 1000 + i, i) for i in range(1, 13))
    bills += (bill("B0013", "2026-01", 5000, 0),)
    result = QueryResult(outcome=Outcome.OK, customer_no="100000123", name="李四",
                         customer_class="I", bills=bills, total_due=999999, late_fee=777)
    body = (X("100000123", 20) + X("李四", 60) + X("", 80) + b"I" + N(999999, 12) + N(777, 12)
            + b"12" + b"".join(bill_bytes(b) for b in bills[:12]))
    h = head()
    assert dispatch(request(h, QUERY_BODY)).encode(result) == response(h, "0000", body)


def test_query_name_is_cut_on_a_character_boundary():
    # 61 bytes of name: "a" + 30 two-byte characters; 60 bytes hold "a" + 29
    name = "a" + "张" * 30
    address = "路" * 41  # 82 bytes; the field holds 40 characters
    result = QueryResult(outcome=Outcome.OK, customer_no="100000123", name=name,
                         address=address, customer_class="C",
                         bills=(bill("B1", "2026-11", 100, 0),), total_due=100)
    name_field = b"a" + "张".encode("gbk") * 29 + b" "
    assert len(name_field) == 60
    body = (X("100000123", 20) + name_field + "路".encode("gbk") * 40 + b"C" + N(100, 12)
            + N(0, 12) + b"01" + bill_bytes(result.bills[0]))
    h = head()
    out = dispatch(request(h, QUERY_BODY)).encode(result)
    assert out == response(h, "0000", body)
    out[123:].decode("gbk")  # every field still decodes


def test_query_nothing_due():
    h = head()
    d = dispatch(request(h, QUERY_BODY))
    assert d.encode(QueryResult(outcome=Outcome.NOTHING_DUE)) == response(h, "1002")
    # an OK with nothing open and no late fee is 1002 too (§4 1001)
    assert d.encode(QueryResult(outcome=Outcome.OK, customer_no="100000123")) == response(h, "1002")
    assert d.encode(QueryResult(outcome=Outcome.NOT_FOUND)) == response(h, "1001")


PAY_BODY = X("100000123", 20) + N(333000, 12)


@pytest.mark.parametrize("session", [MAC_ON, MAC_OFF], ids=["mac", "nomac"])
def test_payment_response(session):
    mac_on = session.bank.mac
    h = head("1002", serial="BK2026112700000002")
    d = dispatch(request(h, PAY_BODY, mac_on=mac_on), session)
    result = PaymentResult(outcome=Outcome.OK, customer_no="100000123", amount=333000,
                           receipt_no="R2026112700000007", invoice_no="",
                           remaining_due=0)
    body = X("100000123", 20) + N(333000, 12) + X("R2026112700000007", 20) + b" " * 20 + N(0, 12)
    assert d.encode(result) == response(h, "0000", body, mac_on=mac_on)
    # partial payment with an invoice
    result2 = PaymentResult(outcome=Outcome.OK, customer_no="100000123", amount=100000,
                            receipt_no="R8", invoice_no="FP00012345", remaining_due=233000)
    body2 = X("100000123", 20) + N(100000, 12) + X("R8", 20) + X("FP00012345", 20) + N(233000, 12)
    assert d.encode(result2) == response(h, "0000", body2, mac_on=mac_on)


def test_payment_request_fields():
    h = head("1002", serial="BK2026112700000002", channel="05", teller="NET00001")
    d = dispatch(request(h, PAY_BODY))
    assert d.txname == "pay"
    assert d.request == PaymentRequest(
        origin=Origin(bank="testbank", trade_date=TODAY, trade_time="093015",
                      branch="210100001", teller="NET00001", channel="05"),
        serial="BK2026112700000002",
        customer_no="100000123",
        amount=333000,
        content=fingerprint("1002", PAY_BODY),
    )
    # a retry with other header fields has the same content; other body differs
    h2 = head("1002", serial="BK2026112700000002", channel="01", trade_time="100000")
    assert dispatch(request(h2, PAY_BODY)).request.content == d.request.content
    other = X("100000123", 20) + N(333001, 12)
    assert dispatch(request(h, other)).request.content != d.request.content
    assert d.log["serial"] == "BK2026112700000002"
    assert d.log["amount"] == 333000


def test_payment_excess_reports_zero_remaining():
    h = head("1002")
    result = PaymentResult(outcome=Outcome.OK, customer_no="100000123", amount=400000,
                           receipt_no="R9", remaining_due=-67000)
    body = X("100000123", 20) + N(400000, 12) + X("R9", 20) + b" " * 20 + N(0, 12)
    assert dispatch(request(h, PAY_BODY)).encode(result) == response(h, "0000", body)


@pytest.mark.parametrize("outcome", list(Outcome))
def test_every_non_ok_outcome_has_an_empty_body(outcome):
    h = head("1002")
    d = dispatch(request(h, PAY_BODY))
    result = PaymentResult(outcome=outcome, customer_no="100000123", amount=333000,
                           receipt_no="R1", remaining_due=5)
    code = EXPECTED_CODES.get(outcome, "9999")
    if outcome is Outcome.OK:
        return
    msg = "该流水已被冲正,不予缴费" if outcome is Outcome.REVERSED_FIRST else None
    assert d.encode(result) == response(h, code, msg=msg)


def test_a_result_the_layout_cannot_carry_is_9999():
    h = head("1002")
    d = dispatch(request(h, PAY_BODY))
    too_long = PaymentResult(outcome=Outcome.OK, customer_no="100000123", amount=1,
                             receipt_no="R" * 21)
    assert d.encode(too_long) == response(h, "9999")
    assert d.encode(SimpleResult(outcome=Outcome.OK)) == response(h, "9999")
    assert d.encode(None) == response(h, "9999")
    assert d.encode(SimpleResult(outcome=Outcome.BUSY)) == response(h, "9001")


REV_BODY = X("100000123", 20) + X("BK2026112700000002", 20) + N(333000, 12)


@pytest.mark.parametrize("latest_only", [False, True])
def test_reversal(latest_only):
    session = make_session(latest_only=latest_only)
    h = head("1003", serial="BK2026112700000003")
    d = dispatch(request(h, REV_BODY), session)
    assert d.txname == "reverse"
    assert d.request == ReversalRequest(
        origin=Origin(bank="testbank", trade_date=TODAY, trade_time="093015",
                      branch="210100001", teller="T0000012", channel="01"),
        orig_serial="BK2026112700000002",
        customer_no="100000123",
        amount=333000,
        serial="BK2026112700000003",
        content=fingerprint("1003", REV_BODY),
        latest_only=latest_only,
    )
    result = ReversalResult(outcome=Outcome.OK, customer_no="100000123",
                            orig_serial="BK2026112700000002", amount=333000)
    assert d.encode(result) == response(h, "0000", REV_BODY)
    # a bare OK (no echo of the fields) answers the request's own
    assert d.encode(ReversalResult(outcome=Outcome.OK)) == response(h, "0000", REV_BODY)
    for outcome, code in [(Outcome.ORIGINAL_NOT_FOUND, "1006"), (Outcome.ALREADY_REVERSED, "1008"),
                          (Outcome.REVERSAL_NOT_ALLOWED, "1007"), (Outcome.DATE_CLOSED, "1009"),
                          (Outcome.AMOUNT_REJECTED, "1003"), (Outcome.DUPLICATE_MISMATCH, "1005")]:
        assert d.encode(ReversalResult(outcome=outcome)) == response(h, code)


STATUS_BODY = X("BK2026112700000002", 20) + b"20261127"


@pytest.mark.parametrize(
    "status, wire",
    [
        (PaymentStatus.POSTED, b"0"),
        (PaymentStatus.REVERSED, b"1"),
        (PaymentStatus.REFUNDED, b"1"),
        (PaymentStatus.PENDING, b"2"),
        (PaymentStatus.EXPIRED, b"2"),
        (PaymentStatus.NOT_FOUND, b"2"),
    ],
)
def test_status(status, wire):
    h = head("1004", serial="BK2026112700000009")
    d = dispatch(request(h, STATUS_BODY))
    assert d.request == StatusRequest(
        origin=Origin(bank="testbank", trade_date=TODAY, trade_time="093015",
                      branch="210100001", teller="T0000012", channel="01"),
        orig_serial="BK2026112700000002",
        orig_date=TODAY,
    )
    result = StatusResult(outcome=Outcome.OK, status=status, amount=333000,
                          receipt_no="R2026112700000007", customer_no="100000123")
    if wire == b"2":
        body = X("BK2026112700000002", 20) + b"2" + N(0, 12) + b" " * 20
    else:
        body = X("BK2026112700000002", 20) + wire + N(333000, 12) + X("R2026112700000007", 20)
    assert d.encode(result) == response(h, "0000", body)


def test_status_unknown_serial_is_0000_status_2():
    h = head("1004")
    d = dispatch(request(h, STATUS_BODY))
    body = X("BK2026112700000002", 20) + b"2" + N(0, 12) + b" " * 20
    for outcome in (Outcome.ORIGINAL_NOT_FOUND, Outcome.NOT_FOUND):
        assert d.encode(StatusResult(outcome=outcome)) == response(h, "0000", body)
    assert d.encode(StatusResult(outcome=Outcome.BUSY)) == response(h, "9001")


def test_statement_notice():
    h = head("1005", serial="BK2026112700000010")
    body = b"20261126" + X("105210_20261126.txt", 60) + N(3, 8) + N(999000, 15)
    d = dispatch(request(h, body))
    assert d.txname == "notice"
    assert d.request == StatementNotice(
        origin=Origin(bank="testbank", trade_date=TODAY, trade_time="093015",
                      branch="210100001", teller="T0000012", channel="01"),
        settle_date=date(2026, 11, 26),
        file_name="105210_20261126.txt",
        record_count=3,
        total_amount=999000,
    )
    assert d.encode(SimpleResult(outcome=Outcome.OK)) == response(h, "0000")
    assert d.encode(SimpleResult(outcome=Outcome.BUSY)) == response(h, "9001")


@pytest.mark.parametrize("session", [MAC_ON, MAC_OFF], ids=["mac", "nomac"])
def test_echo_is_answered_without_the_ledger(session):
    h = head("1009", serial="ECHO")
    action = CODEC.decode(request(h, mac_on=session.bank.mac), session)
    assert isinstance(action, Reply)
    assert action.outcome is Outcome.OK
    assert action.frame == response(h, "0000", mac_on=session.bank.mac)


# -- errors and their precedence (§6) ------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 4, 63, 122])
def test_shorter_than_the_header_closes(n):
    frame = request(head(), QUERY_BODY)[:n]
    for session in (MAC_ON, MAC_OFF):
        assert isinstance(CODEC.decode(frame, session), Close)


def test_header_only_is_answered():
    # 123 bytes is a complete header: a 1001 without body is a format error
    h = head()
    assert CODEC.decode(request(h), MAC_ON).frame == response(h, "8001")


def test_unknown_bank_code_8004_with_mac_spaces():
    h = head(bank="999999")
    frame = request(h, QUERY_BODY)
    action = CODEC.decode(frame, MAC_ON)
    assert action.outcome is Outcome.NOT_AUTHORISED
    assert action.frame == response(h, "8004")
    assert action.frame[107:123] == SPACES16


def test_8004_before_8002():
    h = head(bank="999999")
    frame = request(h, QUERY_BODY, mac=b"0000000000000000")
    assert CODEC.decode(frame, MAC_ON).frame == response(h, "8004")


def test_address_not_allowed_8004():
    session = make_session(allow=("192.168.0.0/16",), peer="10.1.2.3")
    h = head()
    assert CODEC.decode(request(h, QUERY_BODY), session).frame == response(h, "8004")
    allowed = make_session(allow=("10.0.0.0/8",), peer="10.1.2.3")
    assert isinstance(CODEC.decode(request(h, QUERY_BODY), allowed), Dispatch)
    unknown_peer = make_session(allow=("10.0.0.0/8",), peer=None)
    assert reply_code(CODEC.decode(request(h, QUERY_BODY), unknown_peer)) == "8004"


def test_bank_code_must_match_exactly():
    for bank in ("10521", "105219", " 105210", "105 10"):
        raw = head()[:4] + (bank.encode() + b"      ")[:6] + head()[10:]
        assert reply_code(CODEC.decode(request(raw, QUERY_BODY), MAC_ON)) == "8004"


@pytest.mark.parametrize(
    "mac", [b"0000000000000000", b"50E50B64338D6958", b"50E50B64338D695 ", SPACES16,
            b"G0E50B64338D6957", b"\xd6\xd0" * 8]
)
def test_bad_mac_8002(mac):
    h = head()
    action = CODEC.decode(request(h, QUERY_BODY, mac=mac), MAC_ON)
    assert action.outcome is Outcome.MAC_ERROR
    assert action.frame == response(h, "8002")  # carries a MAC itself


def test_mac_covers_the_body():
    frame = bytearray(request(head(), QUERY_BODY))
    frame[130] = ord("9")
    assert reply_code(CODEC.decode(bytes(frame), MAC_ON)) == "8002"


def test_8002_before_8003_and_8001():
    h = head("1099", trade_date="20261131")
    frame = request(h, b"x", mac=b"0123456789ABCDEF")
    assert reply_code(CODEC.decode(frame, MAC_ON)) == "8002"


def test_mac_key_missing_is_8002_and_answers_mac_spaces():
    session = make_session(key=None)
    h = head()
    action = CODEC.decode(request(h, QUERY_BODY), session)
    assert reply_code(action) == "8002"
    assert action.frame[107:123] == SPACES16


def test_mac_off_ignores_field_11():
    h = head()
    for mac in (SPACES16, b"garbage!garbage!", b"\xff" * 16, b"50E50B64338D6957"):
        assert isinstance(CODEC.decode(request(h, QUERY_BODY, mac=mac), MAC_OFF), Dispatch)


@pytest.mark.parametrize("txcode", ["1000", "1006", "2001", "ABCD", "    ", "0110", "1001 "[1:]])
def test_unknown_txcode_8003(txcode):
    h = head(txcode)
    action = CODEC.decode(request(h, QUERY_BODY), MAC_ON)
    assert action.outcome is Outcome.UNKNOWN_TRANSACTION
    assert action.frame == response(h, "8003")


def test_8003_before_8001():
    h = head("1099", trade_date="20261131", trade_time="99xx99")
    assert CODEC.decode(request(h, b"short"), MAC_ON).frame == response(h, "8003")


def format_error(frame: bytes, session=MAC_ON) -> bytes:
    action = CODEC.decode(frame, session)
    assert isinstance(action, Reply), action
    assert action.outcome is Outcome.FORMAT_ERROR
    return action.frame


@pytest.mark.parametrize(
    "txcode, body",
    [
        ("1001", QUERY_BODY[:19]),
        ("1001", QUERY_BODY + b" "),
        ("1002", PAY_BODY[:-1]),
        ("1003", REV_BODY + b"0"),
        ("1004", STATUS_BODY[:-1]),
        ("1005", b""),
        ("1009", b" "),
    ],
)
def test_wrong_body_length_8001(txcode, body):
    h = head(txcode)
    assert format_error(request(h, body)) == response(h, "8001")


@pytest.mark.parametrize(
    "txcode, body",
    [
        ("1002", X("100000123", 20) + b"00000033300a"),
        ("1002", X("100000123", 20) + b" 00000333000"),
        ("1002", X("100000123", 20) + b"-00000333000"),
        ("1003", X("100000123", 20) + X("BK1", 20) + b"0000003330.0"),
        ("1004", X("BK1", 20) + b"20261131"),
        ("1004", X("BK1", 20) + b"2026112 "),
        ("1005", b"20260230" + X("f", 60) + N(1, 8) + N(1, 15)),
        ("1005", b"20261126" + X("f", 60) + b"0000000x" + N(1, 15)),
        ("1001", b"\xff\xfe" + b" " * 18),  # not GBK
        ("1001", b"1" * 19 + b"\xd6"),  # a GBK character cut in half
    ],
)
def test_malformed_body_field_8001(txcode, body):
    h = head(txcode)
    assert format_error(request(h, body)) == response(h, "8001")


@pytest.mark.parametrize(
    "fields",
    [
        dict(trade_date="20261131"),  # not a date
        dict(trade_date="2026112A"),
        dict(trade_date="20261125"),  # two days before
        dict(trade_date="20261129"),  # two days after
        dict(trade_date="20251127"),
        dict(trade_time="0930 5"),
        dict(trade_time="09301a"),
    ],
)
def test_malformed_header_8001(fields):
    h = head(**fields)
    assert format_error(request(h, QUERY_BODY)) == response(h, "8001")
    assert format_error(request(h, QUERY_BODY, mac_on=False), MAC_OFF) == response(
        h, "8001", mac_on=False
    )


def test_invalid_gbk_in_header_text_8001_and_repeated_unchanged():
    h = head()[:10] + b"\xff\xff\xff" + head()[13:]  # branch
    frame = request(h, QUERY_BODY)
    out = format_error(frame)
    assert out == response(h, "8001")
    assert out[:63] == frame[:63]
    h2 = head()
    frame2 = h2 + b"0000" + b"\xd6" + b" " * 39  # resp_msg cut in half
    frame2 = frame2 + mac_hex(frame2 + QUERY_BODY) + QUERY_BODY
    assert format_error(frame2) == response(h2, "8001")


@pytest.mark.parametrize("trade_date", ["20261126", "20261127", "20261128"])
def test_trade_date_within_one_day_is_accepted(trade_date):
    h = head(trade_date=trade_date)
    d = dispatch(request(h, QUERY_BODY))
    assert d.request.origin.trade_date == date(2026, 11, int(trade_date[-2:]))


def test_blank_serial_on_money_transactions_8001():
    h = head("1002", serial="")
    assert format_error(request(h, PAY_BODY)) == response(h, "8001")
    h = head("1003", serial="")
    assert format_error(request(h, REV_BODY)) == response(h, "8001")
    # queries may carry any serial
    assert isinstance(CODEC.decode(request(head(serial=""), QUERY_BODY), MAC_ON), Dispatch)


def test_responses_repeat_fields_1_to_8_unchanged():
    h = head("1002", branch="分行01", teller="柜员1", serial="流水号0001")
    d = dispatch(request(h, PAY_BODY))
    out = d.encode(PaymentResult(outcome=Outcome.DATE_CLOSED))
    assert out[:63] == h
    assert out == response(h, "1009")


# -- bank side: client_encode / client_decode ------------------------------------------


def test_client_decode_query_response():
    h = head()
    bills = (bill("B0001", "2025-2026", 150000, 3000, fee="02"),)
    body = (X("100000123", 20) + X("张三", 60) + X("地址", 80) + b"R"
            + N(150000, 12) + N(3000, 12) + b"01" + bill_bytes(bills[0]))
    got = CODEC.client_decode(response(h, "0000", body), MAC_ON)
    assert got["txcode"] == "1001"
    assert got["bank_serial"] == "BK2026112700000001"
    assert got["trade_date"] == TODAY
    assert got["resp_code"] == "0000"
    assert got["resp_msg"] == "交易成功"
    assert got["name"] == "张三"
    assert got["total_due"] == 150000 and got["late_fee"] == 3000
    assert got["bills"] == [dict(bill_id="B0001", fee_type="02", period="2025-2026",
                                 amount=150000, late_fee=3000)]
    assert got["mac_ok"] is True


def test_client_decode_mac_checks():
    h = head()
    ok = response(h, "1001")
    assert CODEC.client_decode(ok, MAC_ON)["mac_ok"] is True
    bad = ok[:107] + b"0" * 16
    assert CODEC.client_decode(bad, MAC_ON)["mac_ok"] is False
    # 8004 must carry spaces
    assert CODEC.client_decode(response(h, "8004"), MAC_ON)["mac_ok"] is True
    assert CODEC.client_decode(response(h, "8004")[:107] + b"0" * 16, MAC_ON)["mac_ok"] is False
    # MAC off: spaces expected
    assert CODEC.client_decode(response(h, "1001", mac_on=False), MAC_OFF)["mac_ok"] is True
    assert CODEC.client_decode(ok, MAC_OFF)["mac_ok"] is False


def test_client_decode_rejects_broken_responses():
    h = head()
    with pytest.raises(ValueError):
        CODEC.client_decode(response(h, "1001")[:100], MAC_ON)
    with pytest.raises(ValueError):
        CODEC.client_decode(response(h, "1001") + b"x", MAC_ON)  # body on non-0000
    with pytest.raises(ValueError):
        CODEC.client_decode(response(head("1002"), "0000", b"x" * 83), MAC_ON)
    with pytest.raises(ValueError):
        CODEC.client_decode(response(h, "0000", b"x" * 186), MAC_ON)


def test_client_encode_defaults_and_overrides():
    frame = CODEC.client_encode("echo", {}, MAC_ON)
    assert frame[:4] == b"1009" and frame[4:10] == b"105210"
    assert frame[29:37] == b"20261127" and frame[37:43] == b"093000"
    assert reply_code(CODEC.decode(frame, MAC_ON)) == "0000"
    bad = CODEC.client_encode("query", dict(customer_no="1", mac="0" * 16), MAC_ON)
    assert reply_code(CODEC.decode(bad, MAC_ON)) == "8002"
    unknown = CODEC.client_encode("query", dict(customer_no="1", txcode="1234"), MAC_ON)
    assert reply_code(CODEC.decode(unknown, MAC_ON)) == "8003"
    raw = CODEC.client_encode("pay", dict(body=b"123"), MAC_ON)
    assert reply_code(CODEC.decode(raw, MAC_ON)) == "8001"
    notice = CODEC.client_encode("notice", dict(record_count=2, total_amount=5), MAC_ON)
    req = dispatch(notice).request
    assert req.settle_date == date(2026, 11, 26)
    assert req.file_name == "105210_20261126.txt"
    with pytest.raises(ValueError):
        CODEC.client_encode("refund", {}, MAC_ON)


RESULTS = {
    "query": QueryResult(outcome=Outcome.OK, customer_no="100000123", name="王五",
                         bills=(bill("B1", "2026-11", 5000, 10),), total_due=5000, late_fee=10),
    "pay": PaymentResult(outcome=Outcome.OK, customer_no="100000123", amount=5010,
                         receipt_no="R1", remaining_due=0),
    "reverse": ReversalResult(outcome=Outcome.OK, customer_no="100000123", orig_serial="S1",
                              amount=5010),
    "status": StatusResult(outcome=Outcome.OK, status=PaymentStatus.POSTED, amount=5010,
                           receipt_no="R1"),
    "notice": SimpleResult(outcome=Outcome.OK),
}


@pytest.mark.parametrize("session", [MAC_ON, MAC_OFF], ids=["mac", "nomac"])
@pytest.mark.parametrize("txn", sorted(RESULTS))
def test_simulator_round_trip(session, txn):
    values = dict(customer_no="100000123", amount=5010, serial="S2", orig_serial="S1",
                  branch="B1", teller="T1", channel="02", record_count=1, total_amount=5010)
    frame = CODEC.client_encode(txn, values, session)
    d = dispatch(frame, session)
    got = CODEC.client_decode(d.encode(RESULTS[txn]), session)
    assert got["resp_code"] == "0000"
    assert got["mac_ok"] is True
    assert got["bank_serial"] == "S2" and got["channel"] == "02"
    if txn == "query":
        assert got["bills"][0]["bill_id"] == "B1"
    if txn == "status":
        assert (got["status"], got["status_name"]) == ("0", "POSTED")


# -- statement file (§8) ------------------------------------------------------------------

DETAIL1 = (b"D" + X("BK2026112700000002", 20) + b"20261127" + b"093015" + X("100000123", 20)
           + N(333000, 12) + b"01")
DETAIL2 = (b"D" + X("BK2026112700000005", 20) + b"20261127" + b"101500" + X("100000456", 20)
           + N(120050, 12) + b"05")
STMT_HEADER = b"H" + b"20261127" + b"105210" + N(2, 8) + N(453050, 15)
STATEMENT = STMT_HEADER + b"\r\n" + DETAIL1 + b"\r\n" + DETAIL2 + b"\r\n"
RECORDS = [
    dict(serial="BK2026112700000002", trade_date=TODAY, trade_time="093015",
         customer_no="100000123", amount=333000, channel="01"),
    dict(serial="BK2026112700000005", trade_date=TODAY, trade_time="101500",
         customer_no="100000456", amount=120050, channel="05"),
]


def test_statement_read():
    assert len(STMT_HEADER) == 38 and len(DETAIL1) == 69
    header, records = CODEC.read_statement(STATEMENT)
    assert header == dict(settle_date=TODAY, bank_code="105210", record_count=2,
                          total_amount=453050)
    assert records == RECORDS


def test_statement_write_and_name():
    assert CODEC.write_statement("105210", TODAY, RECORDS) == STATEMENT
    assert CODEC.statement_name("105210", TODAY) == "105210_20261127.txt"
    empty = CODEC.write_statement("105210", TODAY, [])
    assert empty == b"H20261127105210" + N(0, 8) + N(0, 15) + b"\r\n"
    assert CODEC.read_statement(empty) == (
        dict(settle_date=TODAY, bank_code="105210", record_count=0, total_amount=0), [])
    with pytest.raises(ValueError, match="record 0"):
        CODEC.write_statement("105210", TODAY, [dict(RECORDS[0], amount=-1)])


def test_statement_lenient_line_ends():
    assert CODEC.read_statement(STATEMENT.replace(b"\r\n", b"\n"))[1] == RECORDS
    assert CODEC.read_statement(STATEMENT[:-2])[1] == RECORDS


@pytest.mark.parametrize(
    "data, line",
    [
        (b"", "line 1"),
        (DETAIL1 + b"\r\n", "line 1"),
        (STMT_HEADER[:-1] + b"\r\n", "line 1"),
        (STMT_HEADER.replace(b"20261127", b"20261131") + b"\r\n", "line 1"),
        (STMT_HEADER + b"\r\n" + DETAIL1 + b"\r\n", "line 1"),  # count says 2
        (STMT_HEADER + b"\r\n" + DETAIL1 + b"\r\n" + DETAIL1 + b"\r\n", "line 3"),  # repeat
        (STMT_HEADER + b"\r\n" + DETAIL1 + b"\r\n" + DETAIL2[:-1] + b"\r\n", "line 3"),
        (STMT_HEADER + b"\r\n" + DETAIL1.replace(b"093015", b"09301x") + b"\r\n" + DETAIL2,
         "line 2"),
        (STMT_HEADER + b"\r\n" + DETAIL1 + b"\r\n" + DETAIL2.replace(b"120050", b"120051"),
         "line 1"),  # total
        (STMT_HEADER + b"\r\n\r\n" + DETAIL1 + b"\r\n" + DETAIL2, "line 2"),
        (STMT_HEADER + b"\r\nD" + b" " * 20 + DETAIL1[21:] + b"\r\n" + DETAIL2, "line 2"),
    ],
)
def test_statement_errors_name_the_line(data, line):
    with pytest.raises(ValueError, match=line + r"\b"):
        CODEC.read_statement(data)


# -- fuzzing: decode never raises ---------------------------------------------------------

VALID = {
    "1001": QUERY_BODY,
    "1002": PAY_BODY,
    "1003": REV_BODY,
    "1004": STATUS_BODY,
    "1005": b"20261126" + X("105210_20261126.txt", 60) + N(3, 8) + N(999000, 15),
    "1009": b"",
}
ANY_RESULT = [
    QueryResult(outcome=Outcome.OK, customer_no="1", bills=(bill("B", "P", 1, 0),), total_due=1),
    PaymentResult(outcome=Outcome.OK, customer_no="1", amount=1, receipt_no="R"),
    ReversalResult(outcome=Outcome.OK),
    StatusResult(outcome=Outcome.OK, status=PaymentStatus.POSTED, amount=1),
    SimpleResult(outcome=Outcome.OK),
    SimpleResult(outcome=Outcome.BUSY),
]


def check_action(action, frame: bytes, session, allowed=("8001", "8002", "8003", "8004")):
    if len(frame) < 123:
        assert isinstance(action, Close)
        return
    if isinstance(action, Reply):
        code = reply_code(action)
        assert action.outcome is not Outcome.ERROR  # not the last-resort net
        if code == "0000":
            assert frame[:4] == b"1009"
        else:
            assert code in allowed
        assert action.frame[:63] == frame[:63]
        assert CODEC.client_decode(action.frame, session)["mac_ok"] is True
    else:
        assert isinstance(action, Dispatch)
        for result in ANY_RESULT:
            out = action.encode(result)
            assert out[:63] == frame[:63]
            got = CODEC.client_decode(out, session)
            assert got["mac_ok"] is True


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(frame):
    for session in (MAC_ON, MAC_OFF):
        check_action(CODEC.decode(frame, session), frame, session)


@st.composite
def field(draw, valid: bytes, other=None):
    """Mostly the valid bytes (so frames get deep enough), else random bytes
    of the same width, a one-byte change, or one of ``other``."""
    n = len(valid)
    kind = draw(st.integers(0, 9))
    if kind <= 6:
        return valid
    if kind == 7 and other:
        return draw(st.sampled_from(other))
    if kind == 8 and n:
        pos = draw(st.integers(0, n - 1))
        return valid[:pos] + bytes([draw(st.integers(0, 255))]) + valid[pos + 1:]
    return draw(st.binary(min_size=n, max_size=n))


@st.composite
def structured_frames(draw):
    txcode = draw(st.sampled_from(sorted(VALID)))
    h = b"".join([
        draw(field(txcode.encode(), [b"1006", b"    "])),
        draw(field(b"105210", [b"105211"])),
        draw(field(X("210100001", 9))),
        draw(field(X("T0000012", 8))),
        draw(field(b"01")),
        draw(field(b"20261127", [b"20261125", b"20261126", b"20261128", b"20261129"])),
        draw(field(b"093015")),
        draw(field(X("BK2026112700000001", 20), [b" " * 20])),
        draw(field(b"0000")),
        draw(field(b" " * 40)),
        draw(st.binary(min_size=16, max_size=16)),
    ])
    body = draw(field(VALID[txcode], [b"", VALID[txcode] + b" ", VALID[txcode][:-1]]))
    return h + body


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(structured_frames())
def test_fuzz_structured_frames_mac_off(frame):
    check_action(CODEC.decode(frame, MAC_OFF), frame, MAC_OFF)


@st.composite
def mutated(draw):
    txcode = draw(st.sampled_from(sorted(VALID)))
    original = request(head(txcode), VALID[txcode])
    frame = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "extend"]))
        pos = draw(st.integers(0, max(len(frame) - 1, 0)))
        if kind == "flip" and frame:
            frame[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and frame:
            frame[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            frame[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and frame:
            del frame[pos:pos + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del frame[pos:]
        elif kind == "extend":
            frame += draw(st.binary(min_size=1, max_size=40))
    return original, bytes(frame)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzz_mutated_frames_mac_on(pair):
    original, frame = pair
    covered = frame[:107] + frame[123:]
    assume(covered != original[:107] + original[123:] or frame[107:123] != original[107:123])
    action = CODEC.decode(frame, MAC_ON)
    check_action(action, frame, MAC_ON)
    if len(frame) < 123:
        return
    if frame[4:10] != b"105210":
        assert reply_code(action) == "8004"
    elif zero_padded(covered) != zero_padded(original[:107] + original[123:]):
        assert reply_code(action) == "8002"  # any change under the MAC
    elif frame[107:123].upper() != original[107:123]:
        assert reply_code(action) == "8002"
    elif covered != original[:107] + original[123:]:
        # X9.19 pads with 0x00, so trailing NULs added to the body leave the
        # MAC valid: the body length check is what refuses them
        assert reply_code(action) == "8001"
    else:
        # only the MAC's hex case changed: still the same valid request
        assert not isinstance(action, Reply) or reply_code(action) == "0000"


def zero_padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 8) if data else bytes(8)


def test_trailing_nuls_keep_the_mac_valid_and_are_8001():
    h = head()
    frame = request(h, QUERY_BODY) + b"\x00"  # 127 -> 128 MAC bytes: same padding
    assert format_error(frame) == response(h, "8001")
