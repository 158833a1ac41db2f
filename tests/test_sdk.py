"""bankgate.codec.sdk and bankgate.codec.jsonmsg: the check order, never raising,
canonical JSON and its HMAC-SHA256 signature.

The codec under test is the SDK's worked example
(``docs/examples/plugins/example_json2p.py``), whose spec fixes the codes:
9004 not authorised, 9002 signature, 9003 unknown txcode, 9001 format, 9999
other error.  Signatures here are computed with the standard library's
``hmac`` over hand-written canonical bytes, never with the module under test.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import date, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bankgate.canon.messages import (
    Outcome,
    PaymentRequest,
    PaymentResult,
    PaymentStatus,
    StatusResult,
)
from bankgate.codec import jsonmsg
from bankgate.codec.base import BankKeys, BankProfile, Close, Dispatch, Reply, Session
from bankgate.codec.registry import load_file
from bankgate.codec.sdk import Field, FormatError, SpecCodec, dump_fields, load_fields

ROOT = Path(__file__).resolve().parent.parent
MODULE = load_file(ROOT / "docs" / "examples" / "plugins" / "example_json2p.py")
CODEC = MODULE.CODEC
KEY = b"0123456789abcdef-secret"
NOW = datetime(2026, 11, 27, 9, 30)


def session(key: bytes = KEY, bank_code: str = "309210", allow=(), peer="127.0.0.1"):
    bank = BankProfile(name="json", plugin="example-json2p", bank_code=bank_code,
                       keys=BankKeys(sign_key=key), allow=allow)
    return Session(bank=bank, peer_host=peer, now=lambda: NOW)


S = session()


def hand_sign(message: dict, key: bytes = KEY) -> bytes:
    """The request as a bank writes it, signed by the standard library."""
    text = json.dumps(message, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    sig = hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()
    return json.dumps({**message, "sign": sig}, ensure_ascii=False).encode("utf-8")


def request(txcode="PRE", bank_code="309210", trade_date="20261127", body=None, **head):
    m = dict(txcode=txcode, bank_code=bank_code, serial="S1", trade_date=trade_date,
             trade_time="093000", body={"customer_no": "100000123", "amount": 100}
             if body is None else body)
    m.update(head)
    return m


def code_of(action) -> str:
    assert isinstance(action, Reply), action
    return json.loads(action.frame)["code"]


# -- canonical JSON ------------------------------------------------------------------------


def test_canonical_rule():
    value = {"b": 1, "a": {"d": "热力", "c": [1, True, None]}, "Z": ""}
    assert jsonmsg.canonical(value) == '{"Z":"","a":{"c":[1,true,null],"d":"热力"},"b":1}'.encode()


@pytest.mark.parametrize("value", [{"a": 1.5}, {"a": float("nan")}, {1: "x"}, {"a": b"x"},
                                   [{"a": [2.0]}]])
def test_canonical_refuses_what_has_no_canonical_form(value):
    with pytest.raises(jsonmsg.JSONError):
        jsonmsg.canonical(value)


@pytest.mark.parametrize("data, why", [
    (b'{"a":1,"a":2}', "repeats"),
    (b'\xef\xbb\xbf{"a":1}', "byte-order mark"),
    (b'{"a":"\xff"}', "UTF-8"),
    (b'{"a":NaN}', "NaN"),
    (b'{"a":', "not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "deep"),
])
def test_loads_is_strict(data, why):
    with pytest.raises(jsonmsg.JSONError, match=why):
        jsonmsg.loads(data)


def test_sign_is_hmac_sha256_over_the_canonical_rest():
    message = {"txcode": "QRY", "body": {"customer_no": "100000123"}, "名": "值"}
    canon = '{"body":{"customer_no":"100000123"},"txcode":"QRY","名":"值"}'.encode()
    expected = hmac.new(KEY, canon, hashlib.sha256).hexdigest()
    assert jsonmsg.sign(KEY, {**message, "sign": "old"}) == expected
    signed = jsonmsg.signed(KEY, message)
    assert signed["sign"] == expected and jsonmsg.verify(KEY, signed)
    assert jsonmsg.verify(KEY, {**signed, "sign": expected.upper()})


@pytest.mark.parametrize("change", [
    lambda m: {**m, "txcode": "PRE"},
    lambda m: {**m, "sign": m["sign"][:-1] + ("0" if m["sign"][-1] != "0" else "1")},
    lambda m: {**m, "sign": m["sign"][:-2]},
    lambda m: {**m, "sign": "zz" * 32},
    lambda m: {k: v for k, v in m.items() if k != "sign"},
    lambda m: {**m, "extra": 1.5},
])
def test_verify_refuses(change):
    signed = jsonmsg.signed(KEY, {"txcode": "QRY", "n": 1})
    assert not jsonmsg.verify(KEY, change(signed))
    assert not jsonmsg.verify(None, signed) and not jsonmsg.verify(KEY, [signed])


def test_verify_compares_in_constant_time(monkeypatch):
    """The signature bytes go to hmac.compare_digest whole, not ``==`` on text."""
    seen = []
    real = hmac.compare_digest

    def spy(a, b):
        seen.append((bytes(a), bytes(b)))
        return real(a, b)

    monkeypatch.setattr("bankgate.codec.crypto.hmac.compare_digest", spy)
    signed = jsonmsg.signed(KEY, {"a": 1})
    assert jsonmsg.verify(KEY, signed)
    assert not jsonmsg.verify(KEY, {**signed, "sign": "0" * 64})
    assert [(len(a), len(b)) for a, b in seen] == [(32, 32), (32, 32)]
    assert seen[1][1] == bytes(32)


# -- fields ---------------------------------------------------------------------------------


@pytest.mark.parametrize("f, wire, value", [
    (Field("d", "date"), "20261127", date(2026, 11, 27)),
    (Field("t", "datetime"), "20261127093000", datetime(2026, 11, 27, 9, 30)),
    (Field("a", "fen", max_length=12), 548000, 548000),
    (Field("n", max_length=3), "热力站", "热力站"),
    (Field("x", required=False), None, None),
    (Field("h", "time"), "235959", "235959"),
    (Field("name"), "沈阳\u3000热力", "沈阳\u3000热力"),  # a full-width space is text
])
def test_field_round_trip(f, wire, value):
    assert f.load(wire) == value
    assert f.dump(value) == wire


@pytest.mark.parametrize("f, wire", [
    (Field("d", "date"), "20261131"), (Field("d", "date"), "2026-11-27"),
    (Field("d", "date"), 20261127), (Field("a", "fen"), -1), (Field("a", "fen"), True),
    (Field("a", "fen"), 1.0), (Field("a", "fen", max_length=3), 1000),
    (Field("n", max_length=3), "热力站x"), (Field("n"), ""), (Field("n"), None),
    (Field("n"), "a\nb"), (Field("n"), "a\x85"), (Field("h", "time"), "240000"),
    (Field("g", "digits"), "12a"),
])
def test_field_refuses_and_names_itself(f, wire):
    with pytest.raises(FormatError, match=f"^{f.name}"):
        f.load(wire)


def test_fields_strict_about_undeclared_names():
    with pytest.raises(FormatError, match="^extra: not a field"):
        load_fields((Field("a"),), {"a": "x", "extra": "y"})
    assert load_fields((Field("a"),), {"a": "x", "extra": "y"}, strict=False) == {"a": "x"}
    with pytest.raises(ValueError, match="b is required"):
        dump_fields((Field("a"), Field("b")), {"a": "x"})


# -- the check order ----------------------------------------------------------------------


@pytest.mark.parametrize("message, key, code, reason", [
    # each request fails two checks: the earlier one answers
    (request(bank_code="999999"), b"other-key-0123456", "9004", "unknown bank_code"),
    (request(txcode="XXX"), b"other-key-0123456", "9002", "signature"),
    (request(txcode="XXX", body={"bad": 1}), KEY, "9003", "unknown txcode"),
    (request(body={"customer_no": "100000123"}, trade_date="20200101"), KEY, "9001",
     "amount is missing"),
    (request(trade_date="20200101"), KEY, "9001", "trade_date 20200101"),
    (request(trade_date="2026-11-27"), KEY, "9001", "trade_date:"),
    (request(serial=" "), KEY, "9001", "serial is blank"),
    (request(body={"customer_no": "100000123", "amount": 1, "x": 2}), KEY, "9001",
     "x: not a field"),
])
def test_check_order(message, key, code, reason):
    action = CODEC.decode(hand_sign(message, key), S)
    assert code_of(action) == code
    assert reason in action.log["reason"]
    answer = json.loads(action.frame)
    assert "body" not in answer
    assert answer["txcode"] == message["txcode"] and answer["serial"] == message["serial"]
    if code != "9004":  # the spec signs every answer but 9004
        assert jsonmsg.verify(KEY, answer)
    else:
        assert "sign" not in answer


def test_address_not_allowed_is_not_authorised():
    action = CODEC.decode(hand_sign(request()), session(allow=("10.0.0.0/8",)))
    assert (code_of(action), action.log["reason"]) == ("9004", "address not allowed")


def test_checks_can_be_reordered():
    class TxnFirst(type(CODEC)):
        checks = ("find_txn", "authorise", "verify", "parse_body", "check_date")

    frame = hand_sign(request(txcode="XXX", bank_code="999999"))
    assert code_of(CODEC.decode(frame, S)) == "9004"
    assert code_of(TxnFirst().decode(frame, S)) == "9003"


def test_a_good_request_dispatches_the_canonical_request():
    action = CODEC.decode(hand_sign(request()), S)
    assert isinstance(action, Dispatch) and action.txname == "prepay"
    req = action.request
    assert isinstance(req, PaymentRequest) and req.two_phase
    assert (req.serial, req.customer_no, req.amount) == ("S1", "100000123", 100)
    assert action.log == {"serial": "S1", "customer_no": "100000123", "amount": 100}
    # the repeat check's fingerprint follows the body, not its spelling
    same = CODEC.decode(json.dumps({**json.loads(hand_sign(request()))}, indent=2).encode(), S)
    other = CODEC.decode(hand_sign(request(body={"customer_no": "100000123", "amount": 101})), S)
    assert same.request.content == req.content != other.request.content


def test_status_of_an_unknown_serial_is_ok_with_its_status():
    action = CODEC.decode(hand_sign(request("STA", body={"orig_serial": "X",
                                                         "orig_date": "20261127"})), S)
    frame = action.encode(StatusResult(Outcome.OK, PaymentStatus.NOT_FOUND))
    out = CODEC.client_decode(frame, S)
    assert (out["resp_code"], out["status"], out["amount"]) == ("0000", "NOT_FOUND", 0)
    frame = action.encode(StatusResult(Outcome.ORIGINAL_NOT_FOUND))  # as_ok
    assert CODEC.client_decode(frame, S)["resp_code"] == "0000"


# -- never raise --------------------------------------------------------------------------


def _raising(method: str, exc=RuntimeError("boom")):
    def hook(self, *args):
        raise exc

    return type("Broken", (type(CODEC),), {method: hook})()


@pytest.mark.parametrize("method", ["authorise", "verify", "find_txn", "parse_body",
                                    "check_date", "signature_ok"])
def test_a_raising_check_answers_other_error(method):
    action = _raising(method).decode(hand_sign(request()), S)
    assert code_of(action) == "9999" and action.outcome is Outcome.ERROR
    assert "boom" in action.log["reason"]


def test_a_raising_request_builder_answers_other_error(monkeypatch):
    broken = type(CODEC)()
    txns = tuple(t if t.name != "prepay" else type(t)(**{**t.__dict__, "request": _boom})
                 for t in broken.txns)
    monkeypatch.setattr(broken, "by_code", {t.code: t for t in txns})
    assert code_of(broken.decode(hand_sign(request()), S)) == "9999"


def _boom(m):
    raise KeyError("customer_no")


@pytest.mark.parametrize("method", ["parse_envelope", "build_answer"])
def test_nothing_to_answer_with_closes(method):
    action = _raising(method).decode(hand_sign(request(trade_date="20200101")), S)
    assert isinstance(action, Close) and "RuntimeError" in action.reason


def test_unreadable_frames_close():
    for frame in (b"", b"not json", b"[1,2]", b'"text"', b'{"a":1,"a":1}'):
        assert isinstance(CODEC.decode(frame, S), Close), frame


def test_a_result_the_answer_cannot_carry_is_other_error():
    action = CODEC.decode(hand_sign(request()), S)
    assert CODEC.client_decode(action.encode(object()), S)["resp_code"] == "9999"
    assert CODEC.client_decode(action.encode(PaymentResult(Outcome.OK, amount=100)),
                               S)["resp_code"] == "9999"  # no order number to answer
    ok = CODEC.client_decode(action.encode(PaymentResult(Outcome.OK, amount=100,
                                                         receipt_no="R1")), S)
    assert (ok["resp_code"], ok["order_no"], ok["amount"]) == ("0000", "R1", 100)


def test_base_hooks_must_be_written():
    class Bare(SpecCodec):
        name = "bare"

    bare = Bare()
    assert isinstance(bare.decode(b"x", S), Close)
    assert bare.outcome_code(Outcome.OK) == "9999"  # total even with no table


# -- the bank side ----------------------------------------------------------------------


def test_client_encode_is_what_the_gateway_reads():
    frame = CODEC.client_encode("confirm", dict(serial="C1", orig_serial="S1",
                                                order_no="R1"), S)
    wire = json.loads(frame)
    assert jsonmsg.canonical(wire) == frame and jsonmsg.verify(KEY, wire)
    assert wire["body"] == {"orig_serial": "S1", "orig_date": "20261127", "order_no": "R1"}
    req = CODEC.decode(frame, S).request
    assert (req.serial, req.orig_serial, req.order_no, req.orig_date) == (
        "C1", "S1", "R1", date(2026, 11, 27))
    with pytest.raises(ValueError, match="no 'pay_all' transaction"):
        CODEC.client_encode("pay_all", {}, S)
    with pytest.raises(ValueError, match="orig_serial is required"):
        CODEC.client_encode("confirm", {"serial": "C1"}, S)


@pytest.mark.parametrize("frame", [b"", b"[]", b'{"code":"0000","txcode":"ZZZ"}',
                                   b'{"code":"9001","body":{"a":1}}',
                                   b'{"code":"0000","txcode":"PRE","body":{"amount":"1"}}'])
def test_client_decode_refuses(frame):
    with pytest.raises(ValueError):
        CODEC.client_decode(frame, S)


# -- properties ---------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**15, 10**15) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)
HEADS = st.fixed_dictionaries({}, optional={
    "txcode": st.sampled_from(["QRY", "PRE", "CFM", "CNL", "REV", "STA", "ECH", "X"]) | JSON,
    "bank_code": st.just("309210") | JSON,
    "serial": st.text(max_size=40) | JSON,
    "trade_date": st.sampled_from(["20261127", "20261126", "20261131"]) | JSON,
    "trade_time": st.just("093000") | JSON,
    "body": st.dictionaries(st.sampled_from(["customer_no", "amount", "orig_serial",
                                             "orig_date", "order_no", "other"]), JSON) | JSON,
})


def _check_action(action) -> None:
    assert isinstance(action, (Close, Reply, Dispatch)), action
    if isinstance(action, Reply):
        answer = jsonmsg.loads(action.frame)
        assert jsonmsg.canonical(answer) == action.frame
        assert answer["code"] in set(MODULE.CODES.values()) | {"9999"}
        if answer["code"] != "9004":
            assert jsonmsg.verify(KEY, answer)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(frame):
    _check_action(CODEC.decode(frame, S))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(HEADS, st.booleans())
def test_random_signed_messages_never_raise(message, sign):
    frame = hand_sign(message) if sign else json.dumps(message).encode()
    action = CODEC.decode(frame, S)
    _check_action(action)
    if isinstance(action, Dispatch):  # every check passed: its fields were right
        assert message.get("bank_code") == "309210" and sign
        assert isinstance(action.encode(object()), bytes)
