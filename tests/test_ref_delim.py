"""ref-delim codec: golden bytes written by hand from docs/specs/ref-delim.rst.

GBK bytes below are spelled out in hex (checked against the GBK code chart):
交易成功 BDBB D2D7 B3C9 B9A6, 张三 D5C5 C8FD, 和平路1号 BACD C6BD C2B7 31 BAC5,
王瑋 CDF5 AC7C -- 瑋's second byte is 0x7C, the byte of ``|``: a byte-level
split would cut it in half.  (怇 is 8F FE and does not contain 0x7C.)
"""

from __future__ import annotations

import random
from datetime import date, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bankgate.canon.messages import (
    BillDue,
    CutoffRequest,
    CutoffResult,
    Outcome,
    PaymentRequest,
    PaymentResult,
    QueryRequest,
    QueryResult,
    ReversalRequest,
    ReversalResult,
    SimpleResult,
    StatementNotice,
    fingerprint,
)
from bankgate.codec.base import BankProfile, Close, Dispatch, Reply, Session
from bankgate.codec.registry import load_codec

CODEC = load_codec("ref-delim")

NOW = datetime(2026, 11, 27, 9, 30)
TODAY = date(2026, 11, 27)

# GBK text, by hand
M_OK = b"\xbd\xbb\xd2\xd7\xb3\xc9\xb9\xa6"  # 交易成功
M_NOT_FOUND = b"\xd3\xc3\xbb\xa7\xb2\xbb\xb4\xe6\xd4\xda"  # 用户不存在
M_NOTHING = b"\xce\xde\xc7\xb7\xb7\xd1"  # 无欠费
M_FORMAT = b"\xb1\xa8\xce\xc4\xb8\xf1\xca\xbd\xb4\xed\xce\xf3"  # 报文格式错误
M_AUTH = b"\xd2\xf8\xd0\xd0\xce\xb4\xca\xda\xc8\xa8"  # 银行未授权
M_BUSY = b"\xcf\xb5\xcd\xb3\xc3\xa6"  # 系统忙
M_DUP = b"\xc1\xf7\xcb\xae\xba\xc5\xd6\xd8\xb8\xb4"  # 流水号重复
M_OTHER = b"\xc6\xe4\xcb\xfb\xb4\xed\xce\xf3"  # 其他错误
ZHANGSAN = b"\xd5\xc5\xc8\xfd"  # 张三
WANGWEI = b"\xcd\xf5\xac\x7c"  # 王瑋 (second byte of 瑋 is 0x7C)
ADDRESS = b"\xba\xcd\xc6\xbd\xc2\xb71\xba\xc5"  # 和平路1号

FMT_ERR = b"020|" + M_FORMAT + b"|"
AUTH_ERR = b"030|" + M_AUTH + b"|"

HEAD = b"105210|210100001|T0000012|01|20261127|093015|"


def make_session(**profile) -> Session:
    prof = dict(name="bank-a", plugin="ref-delim", bank_code="105210")
    prof.update(profile)
    peer = prof.pop("peer", "127.0.0.1")
    return Session(bank=BankProfile(**prof), peer_host=peer, now=lambda: NOW)


@pytest.fixture
def session() -> Session:
    return make_session()


def reply_code(action) -> str:
    assert isinstance(action, Reply), action
    return action.frame.split(b"|", 1)[0].decode()


# -- declaration -----------------------------------------------------------


def test_declaration():
    assert CODEC.name == "ref-delim"
    f = CODEC.framing
    assert (f.kind, f.max_length, f.one_per_connection, f.idle_timeout) == (
        "ascii8",
        65536,
        True,
        30.0,
    )
    lay = CODEC.layouts()
    assert lay["540 request"][-3:] == ("customer_no", "amount", "bill_ids")
    assert CODEC.mask_frame(b"520|105210|x|") == "<ref-delim 520 13 bytes, 3 '|'>"


def test_outcome_code_table_is_total():
    expected = {
        Outcome.OK: "000",
        Outcome.NOT_FOUND: "001",
        Outcome.NOTHING_DUE: "002",
        Outcome.ACCOUNT_LOCKED: "003",
        Outcome.AMOUNT_REJECTED: "005",
        Outcome.ORIGINAL_NOT_FOUND: "006",
        Outcome.REVERSAL_NOT_ALLOWED: "007",
        Outcome.REVERSED_FIRST: "007",
        Outcome.ALREADY_REVERSED: "008",
        Outcome.DATE_CLOSED: "009",
        Outcome.FORMAT_ERROR: "020",
        Outcome.BUSY: "021",
        Outcome.DUPLICATE_MISMATCH: "025",
        Outcome.NOT_AUTHORISED: "030",
    }
    for o in Outcome:
        assert CODEC.outcome_code(o) == expected.get(o, "099"), o


# -- requests, bytes -> canonical ------------------------------------------


def test_decode_520(session):
    frame = b"520|" + HEAD + b"BK2026112700000001|100000123|"
    a = CODEC.decode(frame, session)
    assert isinstance(a, Dispatch)
    assert a.txname == "query"
    r = a.request
    assert isinstance(r, QueryRequest)
    assert r.customer_no == "100000123"
    o = r.origin
    assert (o.bank, o.trade_date, o.trade_time, o.branch, o.teller, o.channel) == (
        "bank-a",
        TODAY,
        "093015",
        "210100001",
        "T0000012",
        "01",
    )


def test_decode_strips_spaces(session):
    frame = b" 520 | 105210 |210100001 | T0000012|01 |20261127|093015| BK1 |  100000123  |"
    r = CODEC.decode(frame, session).request
    assert r.customer_no == "100000123"
    assert r.origin.branch == "210100001"
    assert r.origin.teller == "T0000012"


def test_decode_splits_characters_not_bytes(session):
    # teller 王瑋: 10 bytes 0x7C in the frame, 9 fields
    frame = b"520|105210|210100001|" + WANGWEI + b"|01|20261127|093015|BK1|100000123|"
    assert frame.count(b"|") == 10
    a = CODEC.decode(frame, session)
    assert isinstance(a, Dispatch)
    assert a.request.origin.teller == "王瑋"
    assert a.request.customer_no == "100000123"


def test_decode_540(session):
    frame = b"540|" + HEAD + b"BK01|100000123|1234.50|B2026-01, B2026-02|"
    a = CODEC.decode(frame, session)
    assert a.txname == "payment"
    r = a.request
    assert isinstance(r, PaymentRequest)
    assert (r.serial, r.customer_no, r.amount, r.bill_ids) == (
        "BK01",
        "100000123",
        123450,
        ("B2026-01", "B2026-02"),
    )
    assert r.content == fingerprint("540", "100000123", "1234.50", "B2026-01,B2026-02")
    assert a.log == {"serial": "BK01", "customer": "100000123", "amount": 123450}


def test_540_retry_content(session):
    def content(frame):
        return CODEC.decode(frame, session).request.content

    base = content(b"540|" + HEAD + b"BK01|100000123|10.00|A,B|")
    # branch, teller, channel and time may differ in a retry
    assert content(b"540|105210|999|T9|05|20261127|235959|BK01|100000123|10.00|A,B|") == base
    assert content(b"540|" + HEAD + b"BK01| 100000123 |10.00|A , B |") == base
    assert content(b"540|" + HEAD + b"BK01|100000123|10.01|A,B|") != base
    assert content(b"540|" + HEAD + b"BK01|100000123|10.00|B,A|") != base
    assert content(b"540|" + HEAD + b"BK01|100000124|10.00|A,B|") != base


def test_decode_550(session):
    frame = b"550|" + HEAD + b"BK02|100000123|1234.50|BK01|"
    a = CODEC.decode(frame, session)
    assert a.txname == "reversal"
    r = a.request
    assert isinstance(r, ReversalRequest)
    assert (r.serial, r.orig_serial, r.customer_no, r.amount, r.latest_only) == (
        "BK02",
        "BK01",
        "100000123",
        123450,
        False,
    )
    assert r.content == fingerprint("550", "100000123", "1234.50", "BK01")
    # a 540 and a 550 with the same fields never share content
    assert r.content != fingerprint("540", "100000123", "1234.50", "BK01")
    latest = make_session(latest_only_reversal=True)
    assert CODEC.decode(frame, latest).request.latest_only is True


def test_decode_511(session):
    a = CODEC.decode(b"511|" + HEAD + b"BK03|20261126|", session)
    assert isinstance(a.request, CutoffRequest)
    assert a.request.settle_date == date(2026, 11, 26)
    assert a.request.origin.trade_date == TODAY


def test_decode_510(session):
    a = CODEC.decode(b"510|" + HEAD + b"BK04|20261126|10521020261126.DZ|3|300.00|", session)
    r = a.request
    assert isinstance(r, StatementNotice)
    assert (r.settle_date, r.file_name, r.record_count, r.total_amount) == (
        date(2026, 11, 26),
        "10521020261126.DZ",
        3,
        30000,
    )
    assert a.encode(SimpleResult(Outcome.OK)) == b"000|" + M_OK + b"|"
    assert a.encode(SimpleResult(Outcome.BUSY)) == b"021|" + M_BUSY + b"|"


def test_decode_900_answers_without_ledger(session):
    a = CODEC.decode(b"900|" + HEAD + b"|", session)
    assert isinstance(a, Reply)
    assert a.frame == b"000|" + M_OK + b"|"
    assert (a.outcome, a.txname) == (Outcome.OK, "echo")


# -- error order (§2) --------------------------------------------------------

BAD_BANK = b"999999|210100001|T0000012|01|20261127|093015|"


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"|",
        b"520|" + BAD_BANK + b"BK1|\xff\xfe|",  # not GBK, bank also wrong
        b"520|" + BAD_BANK + b"BK1|100|\x81",  # truncated double-byte char
        b"520|" + BAD_BANK + b"BK1|",  # too few fields
        b"520|" + BAD_BANK + b"BK1|100|x|",  # too many fields
        b"540|" + BAD_BANK + b"BK1|100|1.00|",
        b"530|" + BAD_BANK + b"BK1|100|",  # unknown txcode
        b"0520|" + BAD_BANK + b"BK1|100|",
        b"520|" + HEAD + b"BK1|100",  # not |-terminated
        b"520|" + HEAD + b"BK1|100|x",  # text after the last |
        b"520|" + HEAD + b"BK1|100|\r\n",
        # 0x81 0x7C is one character: the message then lacks its final |
        b"520|" + HEAD + b"BK1|100\x81|",
    ],
)
def test_020_before_030(frame):
    a = CODEC.decode(frame, make_session(allow=("10.0.0.0/8",)))
    assert a.frame == FMT_ERR
    assert a.outcome is Outcome.FORMAT_ERROR


@pytest.mark.parametrize(
    "frame,sess",
    [
        (b"520|" + BAD_BANK + b"BK1|100|", {}),
        (b"900|" + BAD_BANK + b"|", {}),
        # 030 comes before the malformed-value 020s
        (b"540|" + BAD_BANK + b"BK1|100|1.5|A,A|", {}),
        (b"520|999999|1|1|01|20990101|999999|" + b"S" * 40 + b"|100|", {}),
        (b"520|" + HEAD + b"BK1|100|", {"allow": ("10.0.0.0/8",)}),
        (b"540|105210|1|1|01|20261231|093015|BK1|100|x|,|", {"allow": ("10.0.0.0/8",)}),
        (b"520|" + HEAD + b"BK1|100|", {"allow": ("127.0.0.1/32",), "peer": None}),
    ],
)
def test_030(frame, sess):
    a = CODEC.decode(frame, make_session(**sess))
    assert a.frame == AUTH_ERR
    assert a.outcome is Outcome.NOT_AUTHORISED


def test_allowed_address_passes():
    s = make_session(allow=("127.0.0.0/8",))
    assert isinstance(CODEC.decode(b"520|" + HEAD + b"BK1|100|", s), Dispatch)


def _pay(amount=b"1.00", bills=b"A", serial=b"BK1", date_=b"20261127", time_=b"093015"):
    return (
        b"540|105210|210100001|T0000012|01|"
        + date_
        + b"|"
        + time_
        + b"|"
        + serial
        + b"|100|"
        + amount
        + b"|"
        + bills
        + b"|"
    )


@pytest.mark.parametrize(
    "frame",
    [
        _pay(amount=b"1.5"),
        _pay(amount=b"1.500"),
        _pay(amount=b"01.00"),
        _pay(amount=b"-1.00"),
        _pay(amount=b"+1.00"),
        _pay(amount=b"1,000.00"),
        _pay(amount=b"100"),
        _pay(amount=b""),
        _pay(amount=b"\xa3\xb1.00"),  # full-width digit one
        _pay(bills=b""),
        _pay(bills=b"A,,B"),
        _pay(bills=b"A,"),
        _pay(bills=b",A"),
        _pay(bills=b"A,A"),
        _pay(bills=b"A, A"),
        _pay(date_=b"20261131"),
        _pay(date_=b"2026112"),
        _pay(date_=b"2026-11-27"),
        _pay(date_=b"20261125"),  # two days back
        _pay(date_=b"20261129"),  # two days ahead
        _pay(time_=b"246000"),
        _pay(time_=b"0930"),
        _pay(serial=b"S" * 33),
        _pay(serial=b""),  # 540 needs its journal key
        b"550|" + HEAD + b"BK2|100|1.00||",  # empty orig_serial
        b"550|" + HEAD + b"BK2|100|1.00|" + b"O" * 33 + b"|",
        b"550|" + HEAD + b"|100|1.00|BK1|",
        b"511|" + HEAD + b"BK3|20261132|",
        b"510|" + HEAD + b"BK4|20261126|x.DZ|3x|1.00|",
        b"510|" + HEAD + b"BK4|20261126|x.DZ|3|1|",
        b"510|" + HEAD + b"BK4|20261126|../etc/passwd|3|1.00|",
        b"510|" + HEAD + b"BK4|20261126||3|1.00|",
        b"520|" + HEAD + b"S" * 33 + b"|100|",  # serial length holds for every request
    ],
)
def test_malformed_values_020(frame, session):
    a = CODEC.decode(frame, session)
    assert a.frame == FMT_ERR, a
    assert a.outcome is Outcome.FORMAT_ERROR
    assert a.log["error"]


@pytest.mark.parametrize(
    "frame",
    [
        _pay(date_=b"20261126"),
        _pay(date_=b"20261128"),
        _pay(serial=b"S" * 32),
        _pay(amount=b"0.01", bills=b"A,B,C"),
        _pay(amount=b"99999999999.99"),
        b"520|" + HEAD + b"|100|",  # queries need no serial
    ],
)
def test_boundary_values_pass(frame, session):
    assert isinstance(CODEC.decode(frame, session), Dispatch)


def test_internal_error_answers_099(session, monkeypatch):
    monkeypatch.setattr(type(CODEC), "_request", lambda *a: 1 / 0)
    a = CODEC.decode(b"520|" + HEAD + b"BK1|100|", session)
    assert a.frame == b"099|" + M_OTHER + b"|"


# -- responses, canonical -> bytes -------------------------------------------


def _dispatch(frame: bytes, session) -> Dispatch:
    a = CODEC.decode(frame, session)
    assert isinstance(a, Dispatch)
    return a


def test_encode_520(session):
    a = _dispatch(b"520|" + HEAD + b"BK1|100000123|", session)
    result = QueryResult(
        Outcome.OK,
        customer_no="100000123",
        name="张三",
        address="和平路1号",
        bills=(
            BillDue("B2", "02", "2026-11", 5000, 0),
            BillDue("B1", "01", "2026-2027", 123450, 1234),
        ),
        total_due=128450,
        late_fee=1234,
    )
    assert (
        a.encode(result)
        == (
            b"000|" + M_OK + b"|100000123|" + ZHANGSAN + b"|" + ADDRESS + b"|2|1284.50|12.34|"
            b"B2|02|2026-11|50.00|0.00|"  # by the period *text*: "2026-11" < "2026-2027"
            b"B1|01|2026-2027|1234.50|12.34|"
        )
    )


def test_encode_520_name_with_0x7c_and_bar(session):
    a = _dispatch(b"520|" + HEAD + b"BK1|100000123|", session)
    result = QueryResult(Outcome.OK, customer_no="100000123", name="王瑋", address="A|B")
    frame = a.encode(result)
    assert frame == (
        b"000|" + M_OK + b"|100000123|" + WANGWEI + b"|A\xa3\xfcB|0|0.00|0.00|"
    )  # | in a text becomes the full-width ｜ (A3 FC)
    d = CODEC.client_decode(frame, session)
    assert (d["name"], d["address"], d["bill_count"], d["bills"]) == ("王瑋", "A｜B", 0, [])


def test_encode_520_errors(session):
    a = _dispatch(b"520|" + HEAD + b"BK1|100000123|", session)
    assert a.encode(QueryResult(Outcome.NOT_FOUND)) == b"001|" + M_NOT_FOUND + b"|"
    assert a.encode(QueryResult(Outcome.NOTHING_DUE)) == b"002|" + M_NOTHING + b"|"
    assert a.encode(QueryResult(Outcome.BUSY)) == b"021|" + M_BUSY + b"|"
    # a result of the wrong kind cannot be answered with fields
    assert a.encode(SimpleResult(Outcome.OK)) == b"099|" + M_OTHER + b"|"
    assert a.encode(None) == b"099|" + M_OTHER + b"|"


def test_encode_540(session):
    a = _dispatch(b"540|" + HEAD + b"BK01|100000123|1234.50|B1|", session)
    ok = PaymentResult(Outcome.OK, "100000123", 123450, "R000001", "")
    assert a.encode(ok) == b"000|" + M_OK + b"|100000123|1234.50|R000001||"
    assert a.encode(PaymentResult(Outcome.DUPLICATE_MISMATCH)) == b"025|" + M_DUP + b"|"
    for outcome, code in [
        (Outcome.NOTHING_DUE, b"002"),
        (Outcome.AMOUNT_REJECTED, b"005"),
        (Outcome.REVERSED_FIRST, b"007"),
        (Outcome.DATE_CLOSED, b"009"),
        (Outcome.ACCOUNT_LOCKED, b"003"),
    ]:
        frame = a.encode(PaymentResult(outcome))
        assert frame.startswith(code + b"|") and frame.count(b"|") == 2, frame


def test_encode_550(session):
    a = _dispatch(b"550|" + HEAD + b"BK02|100000123|1234.50|BK01|", session)
    ok = ReversalResult(Outcome.OK, "100000123", "BK01", 123450)
    assert a.encode(ok) == b"000|" + M_OK + b"|100000123|1234.50|BK01|"
    assert a.encode(ReversalResult(Outcome.ORIGINAL_NOT_FOUND)) == (
        b"006|\xd4\xad\xbd\xbb\xd2\xd7\xb2\xbb\xb4\xe6\xd4\xda|"  # 原交易不存在
    )
    assert a.encode(ReversalResult(Outcome.ALREADY_REVERSED)) == (
        b"008|\xd2\xd1\xb3\xe5\xd5\xfd|"  # 已冲正
    )
    assert a.encode(ReversalResult(Outcome.REVERSAL_NOT_ALLOWED)) == (
        b"007|\xb2\xbb\xd4\xca\xd0\xed\xb3\xe5\xd5\xfd|"  # 不允许冲正
    )


def test_encode_511(session):
    a = _dispatch(b"511|" + HEAD + b"BK03|20261126|", session)
    ok = CutoffResult(Outcome.OK, date(2026, 11, 26), 3, 30012)
    assert a.encode(ok) == b"000|" + M_OK + b"|20261126|3|300.12|"
    # settle_date falls back to the request's
    assert a.encode(CutoffResult(Outcome.OK)) == b"000|" + M_OK + b"|20261126|0|0.00|"


# -- the 65536-byte limit of the 520 bill list ----------------------------------
# head "000|交易成功|C1|张三|ABCD|" = 4 + 9 + 3 + 5 + 5 = 26 bytes,
# then "2339|" 5 + "2339.00|" (or "2340.00|") 8 + "0.00|" 5 = 44 bytes;
# each bill "B00001|01|2026-11|1.00|0.00|" = 28 bytes; 44 + 2339 * 28 = 65536.


def _bills(n):
    return tuple(BillDue(f"B{i:05d}", "01", "2026-11", 100, 0) for i in range(1, n + 1))


def _query(bills, address="ABCD"):
    total = sum(b.amount for b in bills)
    return QueryResult(Outcome.OK, "C1", "张三", address, bills=bills, total_due=total, late_fee=0)


def test_520_exactly_65536_bytes(session):
    a = _dispatch(b"520|" + HEAD + b"BK1|C1|", session)
    frame = a.encode(_query(_bills(2339)))
    assert len(frame) == 65536
    assert frame.startswith(b"000|" + M_OK + b"|C1|" + ZHANGSAN + b"|ABCD|2339|2339.00|0.00|")
    assert frame.endswith(b"|B02339|01|2026-11|1.00|0.00|")


def test_520_one_bill_too_many(session):
    a = _dispatch(b"520|" + HEAD + b"BK1|C1|", session)
    frame = a.encode(_query(_bills(2340)))
    assert len(frame) == 65536
    # totals cover all 2340 bills, 2339 are listed
    assert b"|ABCD|2339|2340.00|0.00|" in frame
    assert frame.endswith(b"|B02339|01|2026-11|1.00|0.00|")
    assert b"B02340" not in frame


def test_520_one_byte_too_many(session):
    a = _dispatch(b"520|" + HEAD + b"BK1|C1|", session)
    frame = a.encode(_query(_bills(2339), address="ABCDE"))
    assert len(frame) == 65536 + 1 - 28
    assert b"|ABCDE|2338|2339.00|0.00|" in frame


def test_520_many_bills_oldest_first(session):
    bills = list(_bills(5000)) + [BillDue("A0", "02", "2025-12", 999, 50)]
    random.Random(7).shuffle(bills)
    a = _dispatch(b"520|" + HEAD + b"BK1|C1|", session)
    frame = a.encode(_query(tuple(bills)))
    assert len(frame) <= 65536
    d = CODEC.client_decode(frame, session)
    assert d["bill_count"] == len(d["bills"]) == 2339
    assert d["total_due"] == 5000 * 100 + 999
    ids = [b["bill_id"] for b in d["bills"]]
    assert ids[:3] == ["A0", "B00001", "B00002"]  # by period, then bill id
    assert ids[-1] == "B02338"


def test_520_head_alone_too_long_is_099(session):
    a = _dispatch(b"520|" + HEAD + b"BK1|C1|", session)
    frame = a.encode(_query(_bills(1), address="A" * 65536))
    assert frame == b"099|" + M_OTHER + b"|"


# -- bank side: client_encode / client_decode ------------------------------------


def test_client_encode_golden(session):
    common = {
        "branch": "210100001",
        "teller": "T0000012",
        "trade_time": "093015",
        "serial": "BK1",
    }
    enc = CODEC.client_encode
    assert enc("query", {**common, "customer_no": "100000123"}, session) == (
        b"520|" + HEAD + b"BK1|100000123|"
    )
    assert (
        enc(
            "pay", {**common, "customer_no": "1", "amount": 123450, "bill_ids": ["A", "B"]}, session
        )
        == b"540|" + HEAD + b"BK1|1|1234.50|A,B|"
    )
    assert (
        enc("reverse", {**common, "customer_no": "1", "amount": 5, "orig_serial": "BK0"}, session)
        == b"550|" + HEAD + b"BK1|1|0.05|BK0|"
    )
    assert enc("cutoff", {**common, "settle_date": date(2026, 11, 26)}, session) == (
        b"511|" + HEAD + b"BK1|20261126|"
    )
    assert enc(
        "notice",
        {**common, "settle_date": date(2026, 11, 26), "record_count": 2, "total_amount": 100},
        session,
    ) == (b"510|" + HEAD + b"BK1|20261126|10521020261126.DZ|2|1.00|")
    assert enc("echo", {**common, "teller": "王瑋"}, session) == (
        b"900|105210|210100001|" + WANGWEI + b"|01|20261127|093015|BK1|"
    )
    # defaults: the session's bank, date and time; text values go out as they are
    assert enc("520", {"customer_no": "9"}, session) == b"520|105210|||01|20261127|093000||9|"
    assert enc("pay", {"amount": "1.5", "bill_ids": "A,,B"}, session).endswith(b"||1.5|A,,B|")
    with pytest.raises(ValueError):
        enc("refund", {}, session)


def test_client_decode_golden(session):
    dec = CODEC.client_decode
    CODEC.client_encode("query", {"customer_no": "1"}, session)
    d = dec(
        b"000|" + M_OK + b"|100000123|" + WANGWEI + b"|" + ADDRESS + b"|1|1234.50|12.34|"
        b"B1|01|2026-2027|1234.50|12.34|",
        session,
    )
    assert d == {
        "code": "000",
        "msg": "交易成功",
        "txcode": "520",
        "customer_no": "100000123",
        "name": "王瑋",
        "address": "和平路1号",
        "bill_count": 1,
        "total_due": 123450,
        "late_fee": 1234,
        "bills": [
            {
                "bill_id": "B1",
                "fee_type": "01",
                "period": "2026-2027",
                "amount": 123450,
                "late_fee": 1234,
            }
        ],
    }
    CODEC.client_encode("pay", {}, session)
    assert dec(b"000|" + M_OK + b"|100000123|1234.50|R1|F1|", session) == {
        "code": "000",
        "msg": "交易成功",
        "txcode": "540",
        "customer_no": "100000123",
        "amount": 123450,
        "receipt_no": "R1",
        "invoice_no": "F1",
    }
    assert dec(b"005|x|", session) == {"code": "005", "msg": "x"}
    CODEC.client_encode("reverse", {}, session)
    assert dec(b"000|ok|1|0.01|BK0|", session)["orig_serial"] == "BK0"
    CODEC.client_encode("cutoff", {}, session)
    d = dec(b"000|ok|20261126|2|3.00|", session)
    assert (d["settle_date"], d["count"], d["total"]) == (date(2026, 11, 26), 2, 300)
    CODEC.client_encode("echo", {}, session)
    assert dec(b"000|ok|", session) == {"code": "000", "msg": "ok", "txcode": "900"}
    for bad in [b"000|ok|x|", b"005|x|y|", b"000", b"\xff|", b"000|ok|1|0.01|BK0|"]:
        with pytest.raises(ValueError):
            dec(bad, session)


def test_client_decode_guesses_without_state():
    s = make_session()
    assert s.state == {}
    assert CODEC.client_decode(b"000|ok|1|0.01|BK0|", s)["txcode"] == "550"
    assert CODEC.client_decode(b"000|ok|20261126|2|3.00|", s)["txcode"] == "511"
    assert CODEC.client_decode(b"000|ok|1|0.01|R|I|", s)["txcode"] == "540"
    assert CODEC.client_decode(b"000|ok|1|n|a|0|0.00|0.00|", s)["txcode"] == "520"
    with pytest.raises(ValueError):  # bill_count disagrees with the groups
        CODEC.client_decode(b"000|ok|1|n|a|1|0.00|0.00|", s)


def test_round_trip_through_codec(session):
    frame = CODEC.client_encode(
        "pay", {"serial": "BK9", "customer_no": "77", "amount": 100, "bill_ids": ("X",)}, session
    )
    a = CODEC.decode(frame, session)
    assert a.request.amount == 100 and a.request.bill_ids == ("X",)
    out = a.encode(PaymentResult(Outcome.OK, "77", 100, "R9", "F9"))
    d = CODEC.client_decode(out, session)
    assert (d["code"], d["amount"], d["receipt_no"]) == ("000", 100, "R9")


# -- .DZ / .DZCW (§5) ------------------------------------------------------------

DZ = (
    b"BK01|20261126093015|100000123|1234.50|01|B1,B2|\n"
    b"BK02|20261126235959|100000124|0.50|05|B3|\n"
    b"0|20261126|2|1235.00|\n"
)


def test_statement_names():
    assert CODEC.statement_name("105210", date(2026, 11, 26)) == "10521020261126.DZ"
    assert CODEC.error_file_name("105210", date(2026, 11, 26)) == "10521020261126.DZCW"


def test_read_statement_golden():
    records, trailer = CODEC.read_statement(DZ)
    assert trailer == {"settle_date": date(2026, 11, 26), "record_count": 2, "total_amount": 123500}
    r = records[0]
    assert (
        r["serial"],
        r["trade_datetime"],
        r["trade_date"],
        r["customer_no"],
        r["amount"],
        r["channel"],
        r["bill_ids"],
    ) == (
        "BK01",
        datetime(2026, 11, 26, 9, 30, 15),
        date(2026, 11, 26),
        "100000123",
        123450,
        "01",
        ("B1", "B2"),
    )
    assert records[1]["amount"] == 50 and records[1]["bill_ids"] == ("B3",)


def test_write_statement_golden_and_round_trip():
    records, _ = CODEC.read_statement(DZ)
    assert CODEC.write_statement(date(2026, 11, 26), records) == DZ
    assert CODEC.write_statement(date(2026, 11, 26), []) == b"0|20261126|0|0.00|\n"
    # tolerated: \r\n line ends, a missing final line end, blank lines, spaces
    loose = DZ.replace(b"\n", b"\r\n").replace(b"|05|", b"| 05 |").rstrip(b"\r\n")
    assert CODEC.read_statement(b"\n" + loose)[0] == [{**r, "line": r["line"] + 1} for r in records]


def test_read_statement_gbk_text_with_0x7c():
    data = b"BK01|20261126093015|" + WANGWEI + b"|1.00|01||\n0|20261126|1|1.00|\n"
    records, _ = CODEC.read_statement(data)
    assert records[0]["customer_no"] == "王瑋"
    assert records[0]["bill_ids"] == ()


@pytest.mark.parametrize(
    "data,line",
    [
        (b"BK01|20261126093015|1|1.00|01|B1\n0|20261126|1|1.00|\n", 1),  # no final |
        (b"BK01|20261126093015|1|1.00|01|\n0|20261126|1|1.00|\n", 1),  # 5 fields
        (b"BK01|20261126093015|1|1.0|01|B1|\n0|20261126|1|1.00|\n", 1),
        (b"BK01|20261131093015|1|1.00|01|B1|\n0|20261126|1|1.00|\n", 1),
        (b"BK01|2026112609301|1|1.00|01|B1|\n0|20261126|1|1.00|\n", 1),
        (b"BK01|20261126093015||1.00|01|B1|\n0|20261126|1|1.00|\n", 1),
        (b"BK01|20261126093015|1|1.00|1|B1|\n0|20261126|1|1.00|\n", 1),
        (b"BK01|20261126093015|1|1.00|01|B1,B1|\n0|20261126|1|1.00|\n", 1),
        (b"|20261126093015|1|1.00|01|B1|\n0|20261126|1|1.00|\n", 1),
        (
            b"A|20261126093015|1|1.00|01|B|\nA|20261126093016|1|1.00|01|C|\n0|20261126|2|2.00|\n",
            2,
        ),  # serial repeated on the same date
        (b"BK01|20261126093015|1|1.00|01|B1|\n\xff\n0|20261126|1|1.00|\n", 2),
        (b"BK01|20261126093015|1|1.00|01|B1|\n", 1),  # no trailer
        (b"0|20261126|1|1.00|\nBK01|20261126093015|1|1.00|01|B1|\n", 1),  # trailer first
        (b"BK01|20261126093015|1|1.00|01|B1|\n0|20261126|2|1.00|\n", 2),  # count
        (b"BK01|20261126093015|1|1.00|01|B1|\n0|20261126|1|2.00|\n", 2),  # total
        (b"BK01|20261126093015|1|1.00|01|B1|\n0|2026112|1|1.00|\n", 2),
    ],
)
def test_read_statement_malformed(data, line):
    with pytest.raises(ValueError, match=rf"line {line}\b"):
        CODEC.read_statement(data)
    with pytest.raises(ValueError):
        CODEC.read_statement(b"")


def test_error_file_golden():
    out = CODEC.write_error_file(
        date(2026, 11, 26),
        [
            {"errno": 3, "bank_serial": "BK09"},
            ("02", "BK03"),
            {"errno": "04", "serial": "BK01"},
            (1, "BK05"),
        ],
    )
    assert out == (
        b"04|BK01|20261126|\n02|BK03|20261126|\n01|BK05|20261126|\n03|BK09|20261126|\n-1|4|\n"
    )
    assert CODEC.write_error_file(date(2026, 11, 26), []) == b"-1|0|\n"
    lines, count = CODEC.read_error_file(out)
    assert count == 4 and lines[0] == {
        "errno": "04",
        "bank_serial": "BK01",
        "settle_date": date(2026, 11, 26),
    }
    with pytest.raises(ValueError):
        CODEC.write_error_file(date(2026, 11, 26), [(5, "BK1")])
    with pytest.raises(ValueError, match="line 2"):
        CODEC.read_error_file(b"01|BK1|20261126|\n-1|2|\n")


# -- .PK / .PKJG (§6) -------------------------------------------------------------

PK = (
    b"B1|100000123|" + WANGWEI + b"|6222020200001234567|2026-2027|1234.50|12.34|1246.84|\n"
    b"B2|100000124|" + ZHANGSAN + b"|6222020200007654321|2026-11|50.00|0.00|50.00|\n"
    b"0|2|1296.84|20261128|20261127093000|\n"
)


def test_pk_names():
    name = CODEC.pk_name("105210", date(2026, 11, 28), 1)
    assert name == "1052102026112801.PK"
    assert CODEC.pkjg_name(name) == "1052102026112801.PKJG"


def test_write_pk_golden_and_read_back():
    recs = [
        {
            "bill_id": "B1",
            "customer_no": "100000123",
            "name": "王瑋",
            "account_no": "6222020200001234567",
            "period": "2026-2027",
            "amount": 123450,
            "late_fee": 1234,
        },
        {
            "bill_id": "B2",
            "customer_no": "100000124",
            "name": "张三",
            "account_no": "6222020200007654321",
            "period": "2026-11",
            "amount": 5000,
            "late_fee": 0,
            "total": 5000,
        },
    ]
    out = CODEC.write_pk(date(2026, 11, 28), recs, datetime(2026, 11, 27, 9, 30))
    assert out == PK
    records, trailer = CODEC.read_pk(PK)
    assert records[0]["name"] == "王瑋" and records[0]["total"] == 124684
    assert trailer == {
        "record_count": 2,
        "total_amount": 129684,
        "deduct_date": date(2026, 11, 28),
        "generated_at": datetime(2026, 11, 27, 9, 30),
    }
    with pytest.raises(ValueError):
        CODEC.write_pk(date(2026, 11, 28), [{**recs[1], "total": 1}], NOW)


PKJG = (
    b"B1|100000123|6222020200001234567|1246.84|0|BK7001|\n"
    b"B2|100000124|6222020200007654321|50.00|1||\n"
    b"B3|100000125|6222020200000000001|10.00|3||\n"
    b"0|3|1|1246.84|\n"
)


def test_read_pkjg_golden_and_write_back():
    records, trailer = CODEC.read_pkjg(PKJG)
    assert trailer == {"record_count": 3, "success_count": 1, "success_total": 124684}
    assert [(r["bill_id"], r["result"], r["bank_serial"], r["total"]) for r in records] == [
        ("B1", 0, "BK7001", 124684),
        ("B2", 1, "", 5000),
        ("B3", 3, "", 1000),
    ]
    assert CODEC.write_pkjg(records) == PKJG


@pytest.mark.parametrize(
    "data,line",
    [
        (b"B1|1|A|1.00|5|S|\n0|1|0|0.00|\n", 1),  # result not 0-4
        (b"B1|1|A|1.00|0||\n0|1|1|1.00|\n", 1),  # debited without a serial
        (b"B1|1|A|1.00|0|S|\nB2|1|A|1.00|0|S|\n0|2|2|2.00|\n", 2),  # serial twice
        (b"B1|1|A|1|0|S|\n0|1|1|1.00|\n", 1),
        (b"B1|1|A|1.00|0|S|\n0|1|1|2.00|\n", 2),
        (b"B1|1|A|1.00|0|S|\n0|1|0|0.00|\n", 2),
        (b"B1|1|A|1.00|0|S|\n0|2|1|1.00|\n", 2),
        (b"B1|1|A|1.00|0|S|\n", 1),
    ],
)
def test_read_pkjg_malformed(data, line):
    with pytest.raises(ValueError, match=rf"line {line}\b"):
        CODEC.read_pkjg(data)


# -- real-time debit 560 / 561 (§7) ---------------------------------------------


def test_encode_debit_golden():
    out = CODEC.encode_debit(
        utility_code="RL0001",
        trade_date=date(2026, 11, 27),
        trade_time="093000",
        utility_serial="U0001",
        customer_no="100000123",
        account_no="6222020200001234567",
        name="王瑋",
        amount=124684,
        bill_ids=["B1"],
    )
    assert out == (
        b"560|RL0001|20261127|093000|U0001|100000123|6222020200001234567|"
        + WANGWEI
        + b"|1246.84|B1|"
    )
    assert (
        CODEC.encode_debit_reversal(
            utility_code="RL0001",
            trade_date=date(2026, 11, 27),
            trade_time=NOW,
            utility_serial="U0002",
            orig_utility_serial="U0001",
            amount=124684,
        )
        == b"561|RL0001|20261127|093000|U0002|U0001|1246.84|"
    )


def test_decode_debit_response_golden():
    d = CODEC.decode_debit_response(
        b"000|\xbf\xdb\xbf\xee\xb3\xc9\xb9\xa6|U0001|BK88|1246.84|"  # 扣款成功
    )
    assert d == {
        "code": "000",
        "msg": "扣款成功",
        "utility_serial": "U0001",
        "bank_serial": "BK88",
        "amount": 124684,
        "debited": True,
    }
    d = CODEC.decode_debit_response(b"104|\xd6\xd8\xb8\xb4\xbf\xdb\xbf\xee|U0001|BK88|1246.84|")
    assert d["debited"] and d["bank_serial"] == "BK88" and d["msg"] == "重复扣款"
    d = CODEC.decode_debit_response(b"101|\xd3\xe0\xb6\xee\xb2\xbb\xd7\xe3|")  # 余额不足
    assert d == {
        "code": "101",
        "msg": "余额不足",
        "utility_serial": "",
        "bank_serial": "",
        "amount": None,
        "debited": False,
    }
    assert not CODEC.decode_debit_response(b"021|busy|U0001|||")["debited"]
    for bad in [
        b"000|ok|",
        b"000|ok|U1||1.00|",
        b"000|ok|U1|B|1|",
        b"0000|ok|",
        b"000|ok|U1|",
        b"\x81",
    ]:
        with pytest.raises(ValueError):
            CODEC.decode_debit_response(bad)


def test_decode_debit_reversal_response_golden():
    d = CODEC.decode_debit_reversal_response(b"000|\xb3\xe5\xd5\xfd\xb3\xc9\xb9\xa6|U0001|")
    assert d == {"code": "000", "msg": "冲正成功", "orig_utility_serial": "U0001", "done": True}
    assert CODEC.decode_debit_reversal_response(b"006|x|U0001|")["done"]
    assert CODEC.decode_debit_reversal_response(b"008|x|")["done"]
    assert not CODEC.decode_debit_reversal_response(b"021|x|")["done"]
    with pytest.raises(ValueError):
        CODEC.decode_debit_reversal_response(b"000|x|U1|extra|")


def test_host_side_round_trip():
    req = CODEC.encode_debit(
        utility_code="RL0001",
        trade_date=TODAY,
        trade_time="093000",
        utility_serial="U1",
        customer_no="1",
        account_no="622",
        name="王瑋",
        amount=5,
        bill_ids=("B1", "B2"),
    )
    h = CODEC.host_decode(req)
    assert (h["txcode"], h["name"], h["amount"], h["bill_ids"], h["trade_date"]) == (
        "560",
        "王瑋",
        5,
        ("B1", "B2"),
        TODAY,
    )
    resp = CODEC.host_encode("560", {"utility_serial": "U1", "bank_serial": "BK1", "amount": 5})
    assert resp == b"000|\xbf\xdb\xbf\xee\xb3\xc9\xb9\xa6|U1|BK1|0.05|"
    assert CODEC.decode_debit_response(resp)["debited"]
    assert CODEC.host_encode("560", {"code": "101", "short": True}) == (
        b"101|\xd3\xe0\xb6\xee\xb2\xbb\xd7\xe3|"
    )
    rev = CODEC.encode_debit_reversal(
        utility_code="RL0001",
        trade_date=TODAY,
        trade_time="093001",
        utility_serial="U2",
        orig_utility_serial="U1",
        amount=5,
    )
    h = CODEC.host_decode(rev)
    assert (h["txcode"], h["orig_utility_serial"], h["amount"]) == ("561", "U1", 5)
    assert CODEC.host_encode("561", {"code": "006", "orig_utility_serial": "U1"}) == (
        b"006|\xd4\xad\xbd\xbb\xd2\xd7\xb2\xbb\xb4\xe6\xd4\xda|U1|"
    )
    for bad in [b"562|x|", b"560|RL|20261127|093000|U1|", rev.replace(b"0.05", b"5")]:
        with pytest.raises(ValueError):
            CODEC.host_decode(bad)


# -- fuzzing ------------------------------------------------------------------

FUZZ_SESSION = make_session()

VALID = [
    b"520|" + HEAD + b"BK1|100000123|",
    b"540|" + HEAD + b"BK01|100000123|1234.50|B1,B2|",
    b"550|" + HEAD + b"BK02|100000123|1234.50|BK01|",
    b"511|" + HEAD + b"BK03|20261126|",
    b"510|" + HEAD + b"BK04|20261126|10521020261126.DZ|3|300.00|",
    b"900|" + HEAD + b"BK05|",
    b"520|105210|210100001|" + WANGWEI + b"|01|20261127|093015|BK1|100000123|",
]

RESULTS = [
    QueryResult(
        Outcome.OK,
        customer_no="1",
        name="张三",
        address="王瑋|",
        bills=(BillDue("B|1", "01", "2026", 1, 2),),
        total_due=1,
        late_fee=2,
    ),
    PaymentResult(Outcome.OK, "1", 100, "R", "I"),
    ReversalResult(Outcome.OK, "1", "BK01", 100),
    CutoffResult(Outcome.OK, TODAY, 1, 100),
    SimpleResult(Outcome.OK),
    SimpleResult(Outcome.BUSY),
    PaymentResult(Outcome.DATE_CLOSED),
]


def _check(action):
    if isinstance(action, Close):
        return
    if isinstance(action, Reply):
        code = action.frame.split(b"|", 1)[0]
        assert code in (b"020", b"030") or action.frame == b"000|" + M_OK + b"|", action
        return
    assert isinstance(action, Dispatch), action
    for r in RESULTS:
        out = action.encode(r)
        assert isinstance(out, bytes) and 0 < len(out) <= 65536
        out.decode("gbk")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data):
    _check(CODEC.decode(data, FUZZ_SESSION))


@st.composite
def mutated(draw):
    frame = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "bar", "dup"]))
        pos = draw(st.integers(0, len(frame)))
        if op == "flip" and pos < len(frame):
            frame[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            frame[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del frame[pos : pos + draw(st.integers(1, 4))]
        elif op == "bar":
            frame[pos:pos] = b"|"
        elif op == "dup":
            frame[pos:pos] = frame[pos : pos + draw(st.integers(1, 12))]
    return bytes(frame)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzz_mutated_messages(frame):
    _check(CODEC.decode(frame, FUZZ_SESSION))


FIELD = st.one_of(
    st.sampled_from(
        [
            "520",
            "540",
            "550",
            "511",
            "510",
            "900",
            "105210",
            "20261127",
            "093015",
            "1.00",
            "A,B",
            "",
            " ",
            "20261126",
            "99999999999.99",
        ]
    ),
    st.text(max_size=12),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(FIELD, max_size=13))
def test_fuzz_field_lists(fields):
    frame = "".join(f + "|" for f in fields).encode("gbk", errors="replace")
    _check(CODEC.decode(frame, FUZZ_SESSION))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([DZ, PKJG, PK]))
def test_fuzz_file_readers_raise_only_valueerror(noise, base):
    data = base[: len(noise) % (len(base) + 1)] + noise
    for reader in (CODEC.read_statement, CODEC.read_pkjg, CODEC.read_pk, CODEC.read_error_file):
        try:
            reader(data)
        except ValueError:
            pass
