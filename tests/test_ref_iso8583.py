"""The ref-iso8583 codec against its spec (``docs/specs/ref-iso8583.rst``).

Request and expected response frames are assembled by hand in this file
(bitmaps written out in hex where the spec pins them); the codec's own
encoder is never used to produce an expected value.  MACs come from
``bankgate.codec.crypto.x919_mac``, which tests/test_crypto.py pins to the specs'
vectors.
"""

from __future__ import annotations

import importlib
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
    QueryRequest,
    QueryResult,
    ReversalRequest,
    ReversalResult,
    SimpleResult,
    fingerprint,
)
from bankgate.codec.base import BankKeys, BankProfile, Close, Dispatch, Reply, Session
from bankgate.codec.crypto import kcv, x919_mac
from bankgate.codec.registry import load_codec

CODEC = load_codec("ref-iso8583")
mod = importlib.import_module(type(CODEC).__module__)

ZMK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
MAK = bytes.fromhex("89ABCDEF0123456776543210FEDCBA98")
MAK2 = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
NOW = datetime(2026, 11, 27, 9, 30)
REQ_TPDU = bytes.fromhex("6000030000")
RESP_TPDU = bytes.fromhex("6000000003")  # destination and source swapped

GOLDEN_SIGNIN = bytes.fromhex(
    "002F6000030000303830300220000100000010313132373039333030303030303030313036"
    "313035323130303033303031"
)
GOLDEN_QUERY = bytes.fromhex(
    "00736000030000303130302238000108C180013331303030303131323730393330313530"
    "3030303031303933303135313132373036313035323130424B3030303030303030303154"
    "303030303031323231303130303030312020202020203030393130303030303132333135"
    "363E37B66884C6EEB9"
)
GOLDEN_62 = bytes.fromhex("4230EF1CB268495597F4494DD23D8A72EB7A8DF9")


def unframe(golden: bytes) -> bytes:
    """Strip the 2-byte length (the framing layer's job), checking it."""
    assert int.from_bytes(golden[:2], "big") == len(golden) - 2
    return golden[2:]


SIGNIN = unframe(GOLDEN_SIGNIN)
QUERY = unframe(GOLDEN_QUERY)

# -- a hand assembler / parser, independent of the codec ----------------------

# field -> (length-prefix digits, fixed length)
LAYOUT = {
    2: (2, 0), 3: (0, 6), 4: (0, 12), 7: (0, 10), 11: (0, 6), 12: (0, 6), 13: (0, 4),
    15: (0, 4), 32: (2, 0), 37: (0, 12), 38: (0, 6), 39: (0, 2), 41: (0, 8), 42: (0, 15),
    48: (3, 0), 49: (0, 3), 60: (3, 0), 62: (3, 0), 64: (0, 8), 90: (0, 42), 128: (0, 8),
}  # fmt: skip


def bitmap(nums) -> bytes:
    nums = set(nums)
    if any(n > 64 for n in nums):
        nums.add(1)
    b = bytearray(16 if 1 in nums else 8)
    for n in nums:
        b[(n - 1) // 8] |= 0x80 >> ((n - 1) % 8)
    return bytes(b)


def field_bytes(n: int, v: bytes, layout=LAYOUT) -> bytes:
    width, _ = layout[n]
    return (b"%0*d" % (width, len(v)) if width else b"") + v


def build(
    mti: bytes, fields: dict, mac_field=None, key=None, mac=None, tpdu=REQ_TPDU, layout=LAYOUT
) -> bytes:
    """TPDU + MTI + bitmap + fields (+ MAC: under ``key``, or ``mac`` as given)."""
    nums = sorted(fields) + ([mac_field] if mac_field else [])
    body = mti + bitmap(nums) + b"".join(field_bytes(n, fields[n], layout) for n in sorted(fields))
    if mac_field:
        body += mac if mac is not None else (x919_mac(key, body) if key else bytes(8))
    return tpdu + body


def parse(frame: bytes) -> dict:
    """{"tpdu", "mti", "fields", "mac_at"}; asserts the frame is well formed."""
    out = {"tpdu": frame[:5], "mti": frame[5:9], "fields": {}, "mac_at": None}
    pos = 9
    bm = frame[9:17]
    pos = 17
    if bm[0] & 0x80:
        bm += frame[17:25]
        pos = 25
    for n in range(2, len(bm) * 8 + 1):
        if not bm[(n - 1) // 8] & (0x80 >> ((n - 1) % 8)):
            continue
        width, length = LAYOUT[n]
        if width:
            length = int(frame[pos : pos + width])
            pos += width
        if n in (64, 128):
            out["mac_at"] = pos
        out["fields"][n] = frame[pos : pos + length]
        assert len(out["fields"][n]) == length
        pos += length
    assert pos == len(frame), "left-over bytes"
    return out


def code_of(action) -> bytes:
    assert isinstance(action, Reply), action
    return parse(action.frame)["fields"][39]


def mac_ok(frame: bytes, key: bytes) -> bool:
    p = parse(frame)
    mac = p["fields"].get(128, p["fields"].get(64))
    return mac == x919_mac(key, frame[5 : p["mac_at"]])


# -- sessions and requests ------------------------------------------------------


def bank(**kw) -> BankProfile:
    args = dict(
        name="bank-a",
        plugin="ref-iso8583",
        bank_code="105210",
        keys=BankKeys(zmk=ZMK),
        allow=("127.0.0.0/8",),
    )
    args.update(kw)
    return BankProfile(**args)


def session(signed_in=False, now=NOW, keys=None, peer="127.0.0.1", **bank_kw) -> Session:
    if keys is not None:
        bank_kw["keys"] = keys
    s = Session(
        bank=bank(**bank_kw),
        peer_host=peer,
        now=lambda: now,
        random_bytes=lambda n: MAK[:n],
    )
    if signed_in:
        s.state["mak"] = MAK
    return s


BASE = {
    3: b"310000",
    7: b"1127093015",
    11: b"000001",
    12: b"093015",
    13: b"1127",
    32: b"105210",
    37: b"BK0000000001",
    41: b"T0000012",
    42: b"210100001      ",
    49: b"156",
}


def query_fields(**over) -> dict:
    f = dict(BASE)
    f[48] = b"100000123"
    return _over(f, over)


def payment_fields(**over) -> dict:
    f = dict(BASE)
    f.update({3: b"500000", 4: b"000000100500", 37: b"BK0000000002", 48: b"100000123"})
    f[2] = b"6222021234567891234"
    return _over(f, over)


def reversal_fields(**over) -> dict:
    f = dict(BASE)
    f.update({3: b"500000", 4: b"000000100500", 11: b"000003", 37: b"BK0000000002"})
    f[90] = b"0200" + b"000002" + b"1127093015" + b"00000105210" + b"0" * 11
    return _over(f, over)


def _over(f: dict, over: dict) -> dict:
    for k, v in over.items():
        n = int(k[1:])
        if v is None:
            f.pop(n, None)
        else:
            f[n] = v
    return f


def query(key=MAK, **over) -> bytes:
    return build(b"0100", query_fields(**over), 64, key)


def payment(key=MAK, **over) -> bytes:
    return build(b"0200", payment_fields(**over), 64, key)


def reversal(mti=b"0400", key=MAK, **over) -> bytes:
    return build(mti, reversal_fields(**over), 128, key)


def network(code: bytes, **over) -> bytes:
    f = {7: b"1127093000", 11: b"000001", 32: b"105210", 60: code}
    return build(b"0800", _over(f, over))


ORIGIN = Origin(
    bank="bank-a",
    trade_date=date(2026, 11, 27),
    trade_time="093015",
    branch="210100001",
    teller="T0000012",
    channel="02",
)

# =============================================================================
# golden frames
# =============================================================================


def test_hand_assembler_reproduces_the_golden_requests():
    assert build(b"0800", {7: b"1127093000", 11: b"000001", 32: b"105210", 60: b"001"}) == SIGNIN
    assert query() == QUERY


def test_codec_framing_declaration():
    f = CODEC.framing
    assert CODEC.name == "ref-iso8583"
    assert (f.kind, f.max_length, f.pipelined, f.keepalive_empty) == ("tpdu2", 4096, True, True)
    assert f.idle_timeout > 0


def test_signin_golden():
    s = session()
    r = CODEC.decode(SIGNIN, s)
    assert isinstance(r, Reply) and r.outcome is Outcome.OK and r.txname == "signin"
    expected = (
        RESP_TPDU
        + b"0810"
        + bytes.fromhex("0220000102000014")  # fields 7 11 32 39 60 62
        + b"1127093000"
        + b"000001"
        + b"06105210"
        + b"00"
        + b"003001"
        + b"020"
        + GOLDEN_62
    )
    assert r.frame == expected
    assert s.state["mak"] == MAK


def test_signin_field62_is_wrapped_mak_and_check_value():
    r = CODEC.decode(SIGNIN, session())
    f62 = parse(r.frame)["fields"][62]
    assert f62 == GOLDEN_62
    assert f62[16:] == kcv(MAK, 4)


def test_query_golden_decode():
    s = session(signed_in=True)
    d = CODEC.decode(QUERY, s)
    assert isinstance(d, Dispatch) and d.txname == "query"
    assert d.request == QueryRequest(origin=ORIGIN, customer_no="100000123")


def _f48_query(customer_no: bytes, name: str, bills: list[tuple]) -> bytes:
    out = customer_no.ljust(20) + name.encode("gbk").ljust(60) + b"%02d" % len(bills)
    for bill_id, fee, period, amount, late in bills:
        out += bill_id.ljust(20) + fee + period.ljust(16) + b"%012d" % amount + b"%012d" % late
    return out


def test_query_golden_approved_0110():
    s = session(signed_in=True)
    d = CODEC.decode(QUERY, s)
    result = QueryResult(
        Outcome.OK,
        customer_no="100000123",
        name="张三",
        bills=(
            BillDue("B0002", "01", "2026-2027", 200000, 0),
            BillDue("B0001", "01", "2025-2026", 180000, 5400),
        ),
        total_due=380000,
        late_fee=5400,
    )
    f48 = _f48_query(
        b"100000123",
        "张三",
        [(b"B0001", b"01", b"2025-2026", 180000, 5400), (b"B0002", b"01", b"2026-2027", 200000, 0)],
    )
    body = (
        b"0110"
        + bytes.fromhex("323800010AC18001")  # 3 4 7 11 12 13 32 37 39 41 42 48 49 64
        + b"310000"
        + b"000000385400"  # field 4: all bills, principal + late fees
        + b"1127093015"
        + b"000001"
        + b"093015"
        + b"1127"
        + b"06105210"
        + b"BK0000000001"
        + b"00"
        + b"T0000012"
        + b"210100001      "
        + b"%03d" % len(f48)
        + f48
        + b"156"
    )
    assert d.encode(result) == RESP_TPDU + body + x919_mac(MAK, body)


def test_query_lists_the_14_oldest_bills_and_totals_all():
    d = CODEC.decode(query(), session(signed_in=True))
    bills = tuple(
        BillDue(f"B{i:04d}", "02", f"2025-{i:02d}" if i <= 12 else f"2026-{i - 12:02d}", 1000, 10)
        for i in range(20, 0, -1)
    )
    res = QueryResult(Outcome.OK, "100000123", "李四", bills=bills, total_due=20000, late_fee=200)
    p = parse(d.encode(res))
    assert p["fields"][4] == b"000000020200"
    f48 = p["fields"][48]
    assert len(f48) == 20 + 60 + 2 + 14 * 62 <= 999
    assert f48[80:82] == b"14"
    listed = [f48[82 + 62 * i : 82 + 62 * i + 20].rstrip() for i in range(14)]
    assert listed == [b"B%04d" % i for i in range(1, 15)]


def test_query_name_is_cut_on_a_character_boundary():
    d = CODEC.decode(query(), session(signed_in=True))
    name = "供热" * 40  # 160 bytes of GBK
    res = QueryResult(Outcome.OK, "100000123", name)
    f48 = parse(d.encode(res))["fields"][48]
    assert f48[20:80] == ("供热" * 15).encode("gbk")
    res = QueryResult(Outcome.OK, "100000123", "a" + name)
    f48 = parse(d.encode(res))["fields"][48]
    assert f48[20:80] == b"a" + ("供热" * 14 + "供").encode("gbk") + b" "


def test_query_name_characters_outside_gbk_become_question_marks():
    d = CODEC.decode(query(), session(signed_in=True))
    f48 = parse(d.encode(QueryResult(Outcome.OK, "100000123", "A€B")))["fields"][48]
    assert f48[20:80] == b"A?B".ljust(60)
    name = "€" + "供热" * 40
    f48 = parse(d.encode(QueryResult(Outcome.OK, "100000123", name)))["fields"][48]
    assert f48[20:80] == b"?" + ("供热" * 14 + "供").encode("gbk") + b" "


@pytest.mark.parametrize(
    "outcome, code",
    [
        (Outcome.NOT_FOUND, b"14"),
        (Outcome.NOTHING_DUE, b"21"),
        (Outcome.ACCOUNT_LOCKED, b"62"),
        (Outcome.BUSY, b"91"),
        (Outcome.ERROR, b"96"),
    ],
)
def test_query_declines_have_no_field_4_or_48(outcome, code):
    d = CODEC.decode(QUERY, session(signed_in=True))
    frame = d.encode(QueryResult(outcome))
    body = (
        b"0110"
        + bytes.fromhex("223800010AC08001")  # 3 7 11 12 13 32 37 39 41 42 49 64
        + b"310000"
        + b"1127093015"
        + b"000001"
        + b"093015"
        + b"1127"
        + b"06105210"
        + b"BK0000000001"
        + code
        + b"T0000012"
        + b"210100001      "
        + b"156"
    )
    assert frame == RESP_TPDU + body + x919_mac(MAK, body)


# =============================================================================
# payment
# =============================================================================


def test_payment_request():
    d = CODEC.decode(payment(), session(signed_in=True))
    assert isinstance(d, Dispatch) and d.txname == "payment"
    assert d.request == PaymentRequest(
        origin=ORIGIN,
        serial="BK0000000002",
        customer_no="100000123",
        amount=100500,
        content=fingerprint(b"500000", b"000000100500", b"100000123"),
        pan_masked="622202*********1234",
    )
    # never a full card number or a MAC in the log line
    assert "6222021234567891234" not in repr(d.log)
    assert d.log["pan"] == "622202*********1234"


def test_payment_without_pan():
    d = CODEC.decode(payment(f2=None), session(signed_in=True))
    assert d.request.pan_masked == ""


def test_repeat_content_ignores_stan_time_terminal_and_pan():
    s = session(signed_in=True)
    a = CODEC.decode(payment(), s).request
    b = CODEC.decode(
        payment(
            f11=b"000009",
            f7=b"1127101010",
            f12=b"101010",
            f41=b"T0000099",
            f42=b"999999999      ",
            f2=b"6222020000001234",
        ),
        s,
    ).request
    assert (a.serial, a.content) == (b.serial, b.content)
    c = CODEC.decode(payment(f4=b"000000100501"), s).request
    d = CODEC.decode(payment(f48=b"100000124"), s).request
    assert len({a.content, c.content, d.content}) == 3


def test_payment_approved_0210():
    d = CODEC.decode(payment(), session(signed_in=True))
    res = PaymentResult(
        Outcome.OK,
        customer_no="100000123",
        amount=100500,
        receipt_no="R20261127000123456",
        invoice_no="",
        remaining_due=0,
    )
    f48 = b"R20261127000123456".ljust(20) + b" " * 20 + b"0" * 12
    body = (
        b"0210"
        + bytes.fromhex("323A00010EC18001")  # 3 4 7 11 12 13 15 32 37 38 39 41 42 48 49 64
        + b"500000"
        + b"000000100500"
        + b"1127093015"
        + b"000001"
        + b"093015"
        + b"1127"
        + b"1127"  # 15 = 13
        + b"06105210"
        + b"BK0000000002"
        + b"123456"  # 38: last 6 of the receipt number
        + b"00"
        + b"T0000012"
        + b"210100001      "
        + b"052"
        + f48
        + b"156"
    )
    assert d.encode(res) == RESP_TPDU + body + x919_mac(MAK, body)


def test_payment_short_receipt_number_pads_field_38():
    d = CODEC.decode(payment(), session(signed_in=True))
    p = parse(d.encode(PaymentResult(Outcome.OK, "100000123", 100500, "R12", "INV1", 700)))
    assert p["fields"][38] == b"000R12"
    assert p["fields"][48] == b"R12".ljust(20) + b"INV1".ljust(20) + b"000000000700"


@pytest.mark.parametrize(
    "outcome, code",
    [
        (Outcome.AMOUNT_REJECTED, b"13"),
        (Outcome.DUPLICATE_MISMATCH, b"94"),
        (Outcome.REVERSED_FIRST, b"R1"),
        (Outcome.DATE_CLOSED, b"D1"),
        (Outcome.NOT_FOUND, b"14"),
        (Outcome.NOTHING_DUE, b"21"),
        (Outcome.ACCOUNT_LOCKED, b"62"),
    ],
)
def test_payment_declines(outcome, code):
    d = CODEC.decode(payment(), session(signed_in=True))
    frame = d.encode(PaymentResult(outcome))
    p = parse(frame)
    assert p["mti"] == b"0210"
    assert p["fields"][39] == code
    assert sorted(p["fields"]) == [3, 4, 7, 11, 12, 13, 32, 37, 39, 41, 42, 49, 64]
    assert mac_ok(frame, MAK)


# =============================================================================
# reversal
# =============================================================================


def _expected_0410(mti: bytes, code: bytes, stan=b"000003") -> bytes:
    f90 = b"0200" + b"000002" + b"1127093015" + b"00000105210" + b"0" * 11
    body = (
        mti
        + bytes.fromhex("B23800010AC08000")  # 1 3 4 7 11 12 13 32 37 39 41 42 49
        + bytes.fromhex("0000004000000001")  # 90 128
        + b"500000"
        + b"000000100500"
        + b"1127093015"
        + stan
        + b"093015"
        + b"1127"
        + b"06105210"
        + b"BK0000000002"
        + code
        + b"T0000012"
        + b"210100001      "
        + b"156"
        + f90
    )
    return RESP_TPDU + body + x919_mac(MAK, body)


def test_reversal_request():
    d = CODEC.decode(reversal(), session(signed_in=True))
    assert isinstance(d, Dispatch) and d.txname == "reversal"
    assert d.request == ReversalRequest(
        origin=ORIGIN, orig_serial="BK0000000002", customer_no=None, amount=100500, serial=None
    )


@pytest.mark.parametrize(
    "outcome, code",
    [
        (Outcome.OK, b"00"),
        (Outcome.ALREADY_REVERSED, b"00"),
        (Outcome.ORIGINAL_NOT_FOUND, b"25"),
        (Outcome.AMOUNT_REJECTED, b"13"),
        (Outcome.REVERSAL_NOT_ALLOWED, b"40"),
        (Outcome.DATE_CLOSED, b"D1"),
    ],
)
def test_reversal_answers_0410(outcome, code):
    d = CODEC.decode(reversal(), session(signed_in=True))
    assert d.encode(ReversalResult(outcome, orig_serial="BK0000000002")) == _expected_0410(
        b"0410", code
    )


def test_reversal_advice_0420_is_answered_like_the_0400():
    s = session(signed_in=True)
    d400 = CODEC.decode(reversal(), s)
    d420 = CODEC.decode(reversal(b"0420", f11=b"000004"), s)
    assert d420.txname == "reversal_advice"
    assert d420.request == d400.request
    res = ReversalResult(Outcome.ALREADY_REVERSED)
    assert d420.encode(res) == _expected_0410(b"0430", b"00", stan=b"000004")


def test_latest_only_policy_is_passed_on():
    d = CODEC.decode(reversal(), session(signed_in=True, latest_only_reversal=True))
    assert d.request.latest_only is True


# =============================================================================
# outcome table and encoder robustness
# =============================================================================


def test_outcome_code_table_is_total_and_as_specified():
    expected = {
        "OK": "00", "NOT_FOUND": "14", "NOTHING_DUE": "21", "AMOUNT_REJECTED": "13",
        "ACCOUNT_LOCKED": "62", "DUPLICATE_MISMATCH": "94", "ORIGINAL_NOT_FOUND": "25",
        "REVERSAL_NOT_ALLOWED": "40", "ALREADY_REVERSED": "00", "REVERSED_FIRST": "R1",
        "DATE_CLOSED": "D1", "FORMAT_ERROR": "30", "MAC_ERROR": "A0",
        "UNKNOWN_TRANSACTION": "12", "NOT_AUTHORISED": "03", "NOT_SIGNED_IN": "A7",
        "BUSY": "91", "ERROR": "96",
        "EXPIRED": "96", "STATE_NOT_ALLOWED": "96",  # two-phase: no such transaction here
    }  # fmt: skip
    assert {o.name for o in Outcome} == set(expected)
    for o in Outcome:
        assert CODEC.outcome_code(o) == expected[o.name]
        assert mod.outcome_code(o) == expected[o.name]


RESULT_TYPES = {
    "query": QueryResult,
    "payment": PaymentResult,
    "reversal": ReversalResult,
    "reversal_advice": ReversalResult,
}


@pytest.mark.parametrize("make", [query, payment, reversal])
@pytest.mark.parametrize("outcome", list(Outcome))
def test_every_outcome_encodes(make, outcome):
    d = CODEC.decode(make(), session(signed_in=True))
    frame = d.encode(RESULT_TYPES[d.txname](outcome))
    p = parse(frame)
    expected = CODEC.outcome_code(outcome).encode()
    if outcome is Outcome.ALREADY_REVERSED and d.txname != "reversal":
        expected = b"96"  # an "approval" that is not one: the ledger is confused
    assert p["fields"][39] == expected
    assert p["fields"][11] == parse(make())["fields"][11]
    if outcome in (Outcome.NOT_AUTHORISED, Outcome.NOT_SIGNED_IN):
        assert frame[-8:] == bytes(8)
    else:
        assert mac_ok(frame, MAK)


@pytest.mark.parametrize("make", [query, payment, reversal])
@pytest.mark.parametrize("result", [None, SimpleResult(Outcome.OK), object(), "junk"])
def test_unexpected_results_are_answered_96(make, result):
    d = CODEC.decode(make(), session(signed_in=True))
    p = parse(d.encode(result))
    assert p["fields"][39] == b"96"
    assert 48 not in p["fields"] and 38 not in p["fields"]


def test_busy_result_of_another_type_is_91():
    d = CODEC.decode(payment(), session(signed_in=True))
    assert parse(d.encode(SimpleResult(Outcome.BUSY)))["fields"][39] == b"91"


def test_unencodable_approval_falls_back_to_96():
    d = CODEC.decode(payment(), session(signed_in=True))
    p = parse(d.encode(PaymentResult(Outcome.OK, receipt_no="R" * 21)))
    assert p["fields"][39] == b"96"


# =============================================================================
# sign-in, sign-out, echo, MAK life cycle
# =============================================================================


def test_echo_and_signout():
    s = session(signed_in=True)
    r = CODEC.decode(network(b"301"), s)
    assert code_of(r) == b"00" and r.txname == "echo"
    assert sorted(parse(r.frame)["fields"]) == [7, 11, 32, 39, 60]
    assert s.state["mak"] == MAK
    r = CODEC.decode(network(b"002"), s)
    assert code_of(r) == b"00" and r.txname == "signout"
    assert "mak" not in s.state
    assert code_of(CODEC.decode(query(), s)) == b"A7"


def test_network_replies_carry_no_mac():
    r = CODEC.decode(network(b"301"), session())
    assert r.frame == (
        RESP_TPDU
        + b"0810"
        + bytes.fromhex("0220000102000010")
        + b"1127093000000001"
        + b"06105210"
        + b"00"
        + b"003301"
    )


def test_new_signin_replaces_the_mak_at_once():
    s = session(signed_in=True)
    keys = iter([MAK2])
    s.random_bytes = lambda n: next(keys)
    pending = CODEC.decode(query(), s)  # decoded under MAK
    r = CODEC.decode(SIGNIN, s)
    assert parse(r.frame)["fields"][62][16:] == kcv(MAK2, 4)
    assert s.state["mak"] == MAK2
    # the answer still in flight is MACed with the connection's MAK now
    assert mac_ok(pending.encode(QueryResult(Outcome.NOT_FOUND)), MAK2)
    assert code_of(CODEC.decode(query(), s)) == b"A0"
    assert isinstance(CODEC.decode(query(key=MAK2), s), Dispatch)


def test_answer_after_signout_uses_the_mak_it_came_under():
    s = session(signed_in=True)
    pending = CODEC.decode(query(), s)
    CODEC.decode(network(b"002"), s)
    assert mac_ok(pending.encode(QueryResult(Outcome.NOT_FOUND)), MAK)


def test_each_connection_has_its_own_mak():
    a, b = session(), session()
    CODEC.decode(SIGNIN, a)
    assert isinstance(CODEC.decode(query(), a), Dispatch)
    assert code_of(CODEC.decode(query(), b)) == b"A7"


def test_pipelined_answers_in_any_order():
    s = session(signed_in=True)
    d1 = CODEC.decode(payment(f11=b"000011", f37=b"BK0000000011"), s)
    d2 = CODEC.decode(payment(f11=b"000012", f37=b"BK0000000012"), s)
    f2 = parse(d2.encode(PaymentResult(Outcome.OK, "100000123", 100500, "R2", "", 0)))["fields"]
    f1 = parse(d1.encode(PaymentResult(Outcome.OK, "100000123", 100500, "R1", "", 0)))["fields"]
    assert (f1[11], f1[37], f1[38]) == (b"000011", b"BK0000000011", b"0000R1")
    assert (f2[11], f2[37], f2[38]) == (b"000012", b"BK0000000012", b"0000R2")


def test_signin_without_zmk_is_96():
    s = session(keys=BankKeys())
    r = CODEC.decode(SIGNIN, s)
    assert code_of(r) == b"96"
    assert 62 not in parse(r.frame)["fields"]
    assert "mak" not in s.state


def test_signin_when_random_source_fails_is_96():
    s = session()

    def broken(n):
        raise OSError("no entropy")

    s.random_bytes = broken
    assert code_of(CODEC.decode(SIGNIN, s)) == b"96"
    assert "mak" not in s.state


def test_signin_default_random_source():
    s = session()
    s.random_bytes = None
    r = CODEC.decode(SIGNIN, s)
    assert code_of(r) == b"00"
    mak = s.state["mak"]
    assert len(mak) == 16
    assert parse(r.frame)["fields"][62][16:] == kcv(mak, 4)


# =============================================================================
# error codes and their order
# =============================================================================


def test_03_unknown_field_32_financial_zero_mac():
    r = CODEC.decode(query(f32=b"999999"), session(signed_in=True))
    assert code_of(r) == b"03" and r.outcome is Outcome.NOT_AUTHORISED
    assert r.frame[-8:] == bytes(8)
    assert parse(r.frame)["fields"][32] == b"999999"


def test_03_address_not_allowed():
    s = session(signed_in=True, peer="10.1.2.3")
    assert code_of(CODEC.decode(query(), s)) == b"03"
    assert code_of(CODEC.decode(network(b"301"), s)) == b"03"


def test_03_signin_from_unknown_bank_gets_no_key():
    s = session()
    r = CODEC.decode(network(b"001", f32=b"105211"), s)
    assert code_of(r) == b"03"
    assert 62 not in parse(r.frame)["fields"]
    assert "mak" not in s.state


def test_03_signout_leaves_the_mak():
    s = session(signed_in=True)
    assert code_of(CODEC.decode(network(b"002", f32=b"105211"), s)) == b"03"
    assert s.state["mak"] == MAK
    assert code_of(CODEC.decode(network(b"301", f32=b"105211"), s)) == b"03"


def test_03_before_a7():
    assert code_of(CODEC.decode(query(key=None, f32=b"1"), session())) == b"03"


def test_a7_before_signin_zero_mac():
    r = CODEC.decode(query(key=None), session())
    assert code_of(r) == b"A7" and r.outcome is Outcome.NOT_SIGNED_IN
    assert r.frame[-8:] == bytes(8)
    for frame in (payment(key=None), reversal(key=None), reversal(b"0420", key=None)):
        r = CODEC.decode(frame, session())
        assert code_of(r) == b"A7" and r.frame[-8:] == bytes(8)


def test_a7_before_a0_and_30():
    s = session()
    assert code_of(CODEC.decode(query(key=MAK2, f49=b"840"), s)) == b"A7"
    assert code_of(CODEC.decode(query(key=None) + b"junk", s)) == b"A7"


def test_a0_bad_mac():
    s = session(signed_in=True)
    for frame in (
        query(key=MAK2),
        payment(key=MAK2),
        reversal(key=MAK2),
        reversal(b"0420", key=MAK2),
    ):
        r = CODEC.decode(frame, s)
        assert code_of(r) == b"A0" and r.outcome is Outcome.MAC_ERROR
        assert mac_ok(r.frame, MAK)


def test_a0_tampered_byte():
    frame = bytearray(query())
    frame[-20] ^= 0x01  # inside field 48 ('1' -> '0'): still well formed
    assert code_of(CODEC.decode(bytes(frame), session(signed_in=True))) == b"A0"


def test_a0_before_30():
    assert code_of(CODEC.decode(query(key=MAK2, f49=b"840"), session(signed_in=True))) == b"A0"


def test_tpdu_is_not_maced():
    frame = b"\x60\x12\x34\x56\x78" + query()[5:]
    r = CODEC.decode(frame, session(signed_in=True))
    assert isinstance(r, Dispatch)
    assert parse(r.encode(QueryResult(Outcome.NOT_FOUND)))["tpdu"] == b"\x60\x56\x78\x12\x34"


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(lambda: query(f13=b"1125"), id="13 two days back"),
        pytest.param(lambda: query(f13=b"1129"), id="13 two days ahead"),
        pytest.param(lambda: query(f13=b"0527"), id="13 months away"),
        pytest.param(lambda: query(f13=b"1131"), id="13 not a date"),
        pytest.param(lambda: query(f13=b"11a7"), id="13 not digits"),
        pytest.param(lambda: query(f49=b"840"), id="49 not 156"),
        pytest.param(lambda: query(f7=b"1327093015"), id="7 month 13"),
        pytest.param(lambda: query(f7=b"1127250000"), id="7 hour 25"),
        pytest.param(lambda: query(f12=b"096015"), id="12 minute 60"),
        pytest.param(lambda: query(f41=None), id="41 missing"),
        pytest.param(lambda: query(f48=None), id="48 missing"),
        pytest.param(lambda: query(f15=b"1127"), id="15 not in a request"),
        pytest.param(lambda: query(f48=b""), id="48 empty"),
        pytest.param(lambda: query(f48=b"1" * 21), id="48 longer than 20"),
        pytest.param(lambda: query(f48=b"\xff\xfe12"), id="48 not GBK"),
        pytest.param(lambda: query(f37=b" " * 12), id="37 blank"),
        pytest.param(lambda: query(f37=b"BK00000000\x01\x02"), id="37 not an"),
        pytest.param(lambda: query(f42=b"210100001\x00     "), id="42 not ans"),
        pytest.param(lambda: payment(f4=b"00000010050x"), id="4 not digits"),
        pytest.param(lambda: payment(f2=b"62220212345678912345"), id="2 longer than 19"),
        pytest.param(lambda: payment(f2=b"6222-0212"), id="2 not digits"),
        pytest.param(lambda: payment(f4=None), id="4 missing"),
        pytest.param(lambda: reversal(f90=b"0200" + b"x" * 38), id="90 not digits"),
        pytest.param(lambda: reversal(f90=None), id="90 missing"),
        pytest.param(lambda: query() + b"\x00", id="left-over byte"),
        pytest.param(lambda: reversal() + b"0000", id="left-over after 128"),
        pytest.param(lambda: build(b"0100", query_fields(), 128, MAK), id="0100 MAC in 128"),
        pytest.param(lambda: build(b"0100", query_fields()), id="no MAC field"),
        pytest.param(
            lambda: build(b"0400", reversal_fields(f90=None), 64, MAK), id="0400 MAC in 64"
        ),
    ],
)
def test_30_malformed(frame):
    r = CODEC.decode(frame(), session(signed_in=True))
    assert code_of(r) == b"30" and r.outcome is Outcome.FORMAT_ERROR
    assert mac_ok(r.frame, MAK)


def test_30_echoes_the_fields_that_could_be_read():
    # field 48's length prefix points past the end: 48 and 49 cannot be read
    good = query()
    i = good.index(b"009100000123")
    frame = good[:i] + b"099" + good[i + 3 :]
    r = CODEC.decode(frame, session(signed_in=True))
    p = parse(r.frame)
    assert p["fields"][39] == b"30"
    for n in (3, 7, 11, 12, 13, 32, 37, 41, 42):
        assert p["fields"][n] == BASE[n]
    assert 49 not in p["fields"]


def test_30_undefined_field_after_11():
    # field 50 is not in this spec: it cannot be skipped, so the MAC is out of reach
    layout = {**LAYOUT, 50: (0, 3), 5: (0, 12)}
    frame = build(b"0100", {**query_fields(), 50: b"840"}, 64, MAK, layout=layout)
    r = CODEC.decode(frame, session(signed_in=True))
    assert code_of(r) == b"30"
    assert parse(r.frame)["fields"][49] == b"156"  # read before field 50
    # an undefined field before field 11 leaves the STAN unreadable: closed
    frame = build(b"0100", {**query_fields(), 5: b"0" * 12}, 64, MAK, layout=layout)
    assert isinstance(CODEC.decode(frame, session(signed_in=True)), Close)


def test_field_13_year_nearest_the_gateway_date():
    new_year = datetime(2026, 12, 31, 23, 59)
    s = session(signed_in=True, now=new_year)
    d = CODEC.decode(query(f13=b"0101"), s)
    assert d.request.origin.trade_date == date(2027, 1, 1)
    s = session(signed_in=True, now=datetime(2027, 1, 1, 0, 1))
    d = CODEC.decode(query(f13=b"1231"), s)
    assert d.request.origin.trade_date == date(2026, 12, 31)
    for mmdd in (b"1126", b"1127", b"1128"):
        assert isinstance(CODEC.decode(query(f13=mmdd), session(signed_in=True)), Dispatch)


def test_leap_day():
    s = session(signed_in=True, now=datetime(2028, 2, 29, 12, 0))
    assert CODEC.decode(query(f13=b"0229"), s).request.origin.trade_date == date(2028, 2, 29)
    s = session(signed_in=True, now=datetime(2027, 3, 1, 12, 0))
    assert code_of(CODEC.decode(query(f13=b"0229"), s)) == b"30"


def test_0110_never_echoes_a_field_4():
    r = CODEC.decode(query(f4=b"000000000001"), session(signed_in=True))
    assert code_of(r) == b"30"
    assert 4 not in parse(r.frame)["fields"]


def test_customer_number_padded_with_spaces_is_accepted():
    d = CODEC.decode(query(f48=b"100000123" + b" " * 11), session(signed_in=True))
    assert d.request.customer_no == "100000123"


def test_30_before_12():
    assert code_of(CODEC.decode(query(f3=b"500000", f49=b"840"), session(signed_in=True))) == b"30"


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(lambda: query(f3=b"500000"), id="0100 with payment code"),
        pytest.param(lambda: query(f3=b"300000"), id="0100 unknown code"),
        pytest.param(lambda: payment(f3=b"310000"), id="0200 with query code"),
        pytest.param(lambda: reversal(f3=b"310000"), id="0400 with query code"),
        pytest.param(lambda: reversal(b"0420", f3=b"000000"), id="0420 unknown code"),
    ],
)
def test_12_processing_code(frame):
    r = CODEC.decode(frame(), session(signed_in=True))
    assert code_of(r) == b"12" and r.outcome is Outcome.UNKNOWN_TRANSACTION
    assert mac_ok(r.frame, MAK)


def test_12_unknown_network_code():
    assert code_of(CODEC.decode(network(b"999"), session())) == b"12"


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(lambda: network(b"001", f7=b"1127096100"), id="7 bad"),
        pytest.param(lambda: network(b"001", f60=None), id="60 missing"),
        pytest.param(lambda: network(b"001", f32=None), id="32 missing"),
        pytest.param(lambda: network(b"001", f60=b""), id="60 empty"),
        pytest.param(lambda: network(b"001", f4=b"000000000001"), id="extra field"),
        pytest.param(lambda: network(b"001") + b"\x00", id="left-over"),
        pytest.param(lambda: build(b"0800", {7: b"1127093000", 11: b"000001", 32: b"105210",
                                            60: b"001"}, 64, MAK), id="0800 with a MAC"),
    ],
)  # fmt: skip
def test_30_network(frame):
    s = session()
    r = CODEC.decode(frame(), s)
    assert code_of(r) == b"30"
    assert "mak" not in s.state
    assert not parse(r.frame)["fields"].get(62)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x60\x00", id="short TPDU"),
        pytest.param(b"\x61" + QUERY[1:], id="TPDU id not 60"),
        pytest.param(QUERY[:5] + b"0300" + QUERY[9:], id="unknown MTI"),
        pytest.param(QUERY[:5] + b"0110" + QUERY[9:], id="response MTI"),
        pytest.param(QUERY[:5] + b"01" , id="short MTI"),
        pytest.param(QUERY[:12], id="short bitmap"),
        pytest.param(reversal()[:20], id="short secondary bitmap"),
        pytest.param(QUERY[:9] + bytes.fromhex("2218000108C18001") + QUERY[17:], id="no field 11"),
        pytest.param(QUERY[:36], id="cut inside field 11"),
        pytest.param(QUERY.replace(b"1127093015000001", b"1127093015000A01"), id="11 not digits"),
        pytest.param(
            QUERY[:9] + bytes.fromhex("6238000108C18001") + b"A9" + QUERY[17:],
            id="bad LL before 11",
        ),
        pytest.param(QUERY + b"\x00" * (4097 - len(QUERY)), id="over 4096"),
    ],
)  # fmt: skip
def test_close_without_answer(frame):
    r = CODEC.decode(frame, session(signed_in=True))
    assert isinstance(r, Close)
    assert r.reason != "internal error"


def test_4096_is_allowed():
    # a maximal frame: padded with left-overs, still answered (30), not closed
    big = query() + b"\x00" * (4096 - len(query()))
    assert len(big) == 4096
    assert code_of(CODEC.decode(big, session(signed_in=True))) == b"30"


def test_decode_accepts_memoryview_and_bytearray():
    s = session(signed_in=True)
    assert isinstance(CODEC.decode(memoryview(QUERY), s), Dispatch)
    assert isinstance(CODEC.decode(bytearray(QUERY), s), Dispatch)


# =============================================================================
# bank side (simulator)
# =============================================================================


def client_session(**kw) -> Session:
    return Session(bank=bank(**kw), now=lambda: NOW)


def test_client_encode_reproduces_the_golden_frames():
    c = client_session()
    assert CODEC.client_encode("signin", {"stan": 1, "transmission": "1127093000"}, c) == SIGNIN
    c.state["mak"] = MAK
    values = {
        "stan": "000001",
        "transmission": "1127093015",
        "trade_time": "093015",
        "trade_date": date(2026, 11, 27),
        "rrn": "BK0000000001",
        "terminal_id": "T0000012",
        "branch": "210100001",
        "customer_no": "100000123",
    }
    assert CODEC.client_encode("query", values, c) == QUERY


def test_client_server_conversation():
    gw, bk = session(), client_session()
    r = CODEC.decode(CODEC.client_encode("signin", {}, bk), gw)
    out = CODEC.client_decode(r.frame, bk)
    assert out["mti"] == "0810" and out["response_code"] == "00" and out["signed_in"]
    assert bk.state["mak"] == gw.state["mak"] == MAK

    # query
    d = CODEC.decode(CODEC.client_encode("query", {"customer_no": "100000123"}, bk), gw)
    assert isinstance(d, Dispatch)
    bills = (BillDue("B1", "01", "2026-2027", 100000, 500),)
    out = CODEC.client_decode(
        d.encode(
            QueryResult(
                Outcome.OK, "100000123", "王五", bills=bills, total_due=100000, late_fee=500
            )
        ),
        bk,
    )
    assert out["mti"] == "0110" and out["mac_ok"] is True
    assert out["fields"][4] == "000000100500"
    assert out["field48"] == {
        "customer_no": "100000123",
        "name": "王五",
        "bill_count": 1,
        "bills": [
            {"bill_id": "B1", "fee_type": "01", "period": "2026-2027", "amount": 100000,
             "late_fee": 500}
        ],
    }  # fmt: skip

    # payment
    values = {"customer_no": "100000123", "amount": 100500, "rrn": "BK0000000002",
              "pan": "6222021234567891234"}  # fmt: skip
    d = CODEC.decode(CODEC.client_encode("pay", values, bk), gw)
    assert d.request.serial == "BK0000000002" and d.request.amount == 100500
    out = CODEC.client_decode(
        d.encode(PaymentResult(Outcome.OK, "100000123", 100500, "R000001", "F01", 0)), bk
    )
    assert out["response_code"] == "00" and out["mac_ok"] is True
    assert out["fields"][38] == "000001" and out["fields"][15] == out["fields"][13]
    assert out["field48"] == {"receipt_no": "R000001", "invoice_no": "F01", "remaining_due": 0}

    # reversal and its advice
    for txn, mti in (("reverse", "0410"), ("reversal_advice", "0430")):
        values = {"amount": 100500, "rrn": "BK0000000002", "orig_stan": 2}
        frame = CODEC.client_encode(txn, values, bk)
        assert parse(frame)["fields"][90][:10] == b"0200000002"
        d = CODEC.decode(frame, gw)
        assert d.request.orig_serial == "BK0000000002"
        out = CODEC.client_decode(d.encode(ReversalResult(Outcome.OK)), bk)
        assert (out["mti"], out["response_code"], out["mac_ok"]) == (mti, "00", True)

    # echo, sign-out
    out = CODEC.client_decode(CODEC.decode(CODEC.client_encode("echo", {}, bk), gw).frame, bk)
    assert out["response_code"] == "00" and out["signed_in"]
    out = CODEC.client_decode(CODEC.decode(CODEC.client_encode("signout", {}, bk), gw).frame, bk)
    assert out["response_code"] == "00" and not out["signed_in"]
    assert "mak" not in bk.state and "mak" not in gw.state


def test_client_stan_increments():
    bk = client_session()
    stans = [parse(CODEC.client_encode("echo", {}, bk))["fields"][11] for _ in range(3)]
    assert stans == [b"000001", b"000002", b"000003"]


def test_client_rejects_a_key_whose_check_value_does_not_match():
    r = CODEC.decode(SIGNIN, session())
    bad = r.frame[:-1] + bytes([r.frame[-1] ^ 1])
    bk = client_session()
    with pytest.raises(ValueError, match="check value"):
        CODEC.client_decode(bad, bk)
    assert "mak" not in bk.state


def test_client_decode_of_declines_and_zero_macs():
    bk = client_session()
    bk.state["mak"] = MAK
    r = CODEC.decode(query(key=None), session())  # A7
    out = CODEC.client_decode(r.frame, bk)
    assert out["response_code"] == "A7" and out["mac_ok"] is None and out["field48"] is None


def test_client_decode_malformed_raises_value_error():
    with pytest.raises(ValueError):
        CODEC.client_decode(b"\x60\x00\x00\x00\x00081", client_session())


def test_client_encode_test_overrides():
    bk = client_session()
    bk.state["mak"] = MAK
    frame = CODEC.client_encode("query", {"customer_no": "1", "fields": {49: b"840"}}, bk)
    assert code_of(CODEC.decode(frame, session(signed_in=True))) == b"30"
    frame = CODEC.client_encode("query", {"customer_no": "1", "mac": bytes(8)}, bk)
    assert code_of(CODEC.decode(frame, session(signed_in=True))) == b"A0"


# =============================================================================
# layouts
# =============================================================================


def test_layouts_are_construct_and_parse_the_golden_frames():
    from construct import Construct

    lay = CODEC.layouts()
    assert all(isinstance(v, Construct) for v in lay.values())
    msg = lay["message"]
    for frame in (SIGNIN, QUERY, reversal()):
        a, b = msg.parse(frame), mod.MESSAGE_C.parse(frame)
        for n in LAYOUT:
            assert a[f"f{n}"] == b[f"f{n}"] == parse(frame)["fields"].get(n)
        assert mod.MESSAGE_C.build(dict(b)) == frame
    assert lay["field62.signin"].parse(GOLDEN_62).check_value == kcv(MAK, 4)


def test_field48_packer_equals_construct_build():
    value = {
        "customer_no": "100000123",
        "name": "张三",
        "bills": [
            {"bill_id": "B1", "fee_type": "01", "period": "2026", "amount": 1, "late_fee": 2},
            {"bill_id": "B2", "fee_type": "04", "period": "2026-11", "amount": 3, "late_fee": 0},
        ],
    }
    layout = mod.QUERY_REPLY_48
    assert mod.packer(layout)(value) == layout.build(value) == mod.QUERY_REPLY_48_C.build(value)
    assert layout.parse(layout.build(value))["bills"][1]["period"] == "2026-11"
    pay = {"receipt_no": "R1", "invoice_no": "", "remaining_due": 5}
    assert mod.packer(mod.PAYMENT_REPLY_48)(pay) == mod.PAYMENT_REPLY_48.build(pay)


# =============================================================================
# statement file
# =============================================================================

STATEMENT = (
    b"settle_date,rrn,stan,trade_date,trade_time,terminal_id,customer_no,amount,pan_masked\n"
    b"20261127,BK0000000002,000002,20261127,093015,T0000012,100000123,100500,622202*********1234\n"
    b"20261127,BK0000000003,000005,20261126,235959,T0000013,100000456,2000,\n"
)
RECORDS = [
    {
        "settle_date": date(2026, 11, 27),
        "serial": "BK0000000002",
        "stan": "000002",
        "trade_date": date(2026, 11, 27),
        "trade_time": "093015",
        "terminal_id": "T0000012",
        "customer_no": "100000123",
        "amount": 100500,
        "pan_masked": "622202*********1234",
    },
    {
        "settle_date": date(2026, 11, 27),
        "serial": "BK0000000003",
        "stan": "000005",
        "trade_date": date(2026, 11, 26),
        "trade_time": "235959",
        "terminal_id": "T0000013",
        "customer_no": "100000456",
        "amount": 2000,
        "pan_masked": "",
    },
]


def test_statement_write_and_read():
    assert CODEC.write_statement(RECORDS) == STATEMENT
    assert CODEC.read_statement(STATEMENT) == RECORDS
    assert CODEC.write_statement([]) == STATEMENT.split(b"\n")[0] + b"\n"
    assert CODEC.read_statement(CODEC.write_statement([])) == []
    assert CODEC.statement_name("105210", date(2026, 11, 27)) == "105210_20261127.csv"


def test_statement_accepts_crlf_and_bom():
    data = b"\xef\xbb\xbf" + STATEMENT.replace(b"\n", b"\r\n")
    assert CODEC.read_statement(data) == RECORDS


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "line 1"),
        (b"settle_date,rrn\n", "line 1"),
        (STATEMENT.replace(b"100500", b"1005.00"), "line 2: amount"),
        (STATEMENT.replace(b"20261126", b"20261132"), "line 3: trade_date"),
        (STATEMENT.replace(b",2000,", b",2000,x,"), "line 3: 10 columns"),
        (STATEMENT.replace(b"235959", b"245959"), "line 3: trade_time"),
        (b"\xff" + STATEMENT, "UTF-8"),
    ],
)
def test_statement_errors_name_the_line(data, match):
    with pytest.raises(ValueError, match=match):
        CODEC.read_statement(data)


def test_mask_frame_hides_card_number_keys_and_macs():
    text = CODEC.mask_frame(payment())
    assert "6222021234567891234" not in text and "622202*********1234" in text
    assert "64=<8 bytes>" in text
    assert repr(x919_mac(MAK, payment()[5:-8]))[2:-1] not in text
    text = CODEC.mask_frame(CODEC.decode(SIGNIN, session()).frame)
    assert "62=<20 bytes>" in text and "4230" not in text
    assert "malformed" in CODEC.mask_frame(QUERY[:40])
    assert "bytes" in CODEC.mask_frame(b"\x60")


def test_mask_pan():
    assert mod.mask_pan("6222021234567891234") == "622202*********1234"
    assert mod.mask_pan("6222020000001234") == "622202******1234"
    assert mod.mask_pan("") == ""
    assert mod.mask_pan("12345678") == "****5678"


# =============================================================================
# fuzzing: decode never raises, and answers only what the spec allows
# =============================================================================

BASE_FRAMES = [SIGNIN, QUERY, payment(), reversal(), reversal(b"0420"), network(b"002")]
ERROR_CODES = {b"30", b"03", b"A7", b"A0", b"12"}


def check_action(frame: bytes, action, s: Session, original: bytes | None = None):
    assert isinstance(action, (Close, Reply, Dispatch)), action
    if isinstance(action, Close):
        assert action.reason != "internal error"
        return
    if isinstance(action, Dispatch):
        # only an intact message can pass the MAC check
        assert original is not None and frame[5:] == original[5:]
        for outcome in Outcome:
            p = parse(action.encode(RESULT_TYPES[action.txname](outcome)))
            assert p["fields"][39] in (CODEC.outcome_code(outcome).encode(), b"96")
        return
    p = parse(action.frame)  # well formed
    assert p["mti"] == bytes([frame[5], frame[6], frame[7] + 1, frame[8]])
    code = p["fields"][39]
    if frame[5:9] == b"0800":
        assert code in ERROR_CODES | {b"00", b"96"}
    else:
        assert code in ERROR_CODES


def fresh(signed: bool) -> Session:
    return session(signed_in=signed)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.booleans())
def test_fuzz_random_bytes(data, signed):
    s = fresh(signed)
    check_action(data, CODEC.decode(data, s), s)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([b"0800", b"0100", b"0200", b"0400", b"0420"]),
    st.binary(min_size=8, max_size=600),
    st.booleans(),
)
def test_fuzz_known_mti_random_body(mti, body, signed):
    frame = REQ_TPDU + mti + body
    s = fresh(signed)
    check_action(frame, CODEC.decode(frame, s), s)


@st.composite
def mutated(draw):
    base = draw(st.sampled_from(BASE_FRAMES))
    frame = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "delete", "insert", "truncate", "append"]))
        i = draw(st.integers(0, max(len(frame) - 1, 0)))
        if op == "flip" and frame:
            frame[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and frame:
            frame[i] = draw(st.integers(0, 255))
        elif op == "delete":
            del frame[i : i + draw(st.integers(1, 8))]
        elif op == "insert":
            frame[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "truncate":
            del frame[i:]
        else:
            frame += draw(st.binary(min_size=1, max_size=8))
    return base, bytes(frame)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.booleans())
def test_fuzz_mutated_frames(pair, signed):
    base, frame = pair
    assume(frame != base)
    s = fresh(signed)
    check_action(frame, CODEC.decode(frame, s), s, base)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(sorted(LAYOUT)),
        st.binary(max_size=30),
        max_size=12,
    ),
    st.sampled_from([b"0100", b"0200", b"0400", b"0420", b"0800"]),
    st.sampled_from([None, 64, 128]),
)
def test_fuzz_well_framed_random_fields(fields, mti, mac_field):
    # fixed fields get their exact length so that framing is right
    fields = {
        n: (v.ljust(LAYOUT[n][1], b"0")[: LAYOUT[n][1]] if LAYOUT[n][1] else v)
        for n, v in fields.items()
        if n not in (64, 128)
    }
    fields.setdefault(11, b"000001")
    frame = build(mti, fields, mac_field, MAK)
    s = fresh(True)
    action = CODEC.decode(frame, s)
    assert isinstance(action, (Close, Reply, Dispatch))
    if isinstance(action, Close):
        assert action.reason != "internal error"
    elif isinstance(action, Reply):
        parse(action.frame)
    else:
        parse(action.encode(QueryResult(Outcome.OK)))
