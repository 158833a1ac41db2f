"""plugins/ref_xml.py against docs/specs/ref-xml.rst, byte for byte.

Request documents here are written out by hand as the spec shows them (the
helper ``doc`` only joins the parts and appends the MAC computed with
``bankgate.codec.crypto.sm4_mac``, whose vectors §3 pins and which are
checked here too) -- never with the codec's own builders.  The ledger-backed
half runs every transaction through the real two-phase ledger on the
databases this machine has.
"""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from conftest import FakeClock, make_store, seed_fixture

from bankgate.canon import messages as m
from bankgate.canon.messages import Outcome, PaymentStatus
from bankgate.codec.base import BankKeys, BankProfile, Close, Dispatch, Reply, Session
from bankgate.codec.capabilities import statement_format
from bankgate.codec.crypto import check_value, sm4_ecb_encrypt, sm4_mac
from bankgate.codec.registry import load_file, shipped_dir
from bankgate.codec.statement import StatementError
from bankgate.domain.ledger import BankPolicy, Ledger

MODULE = load_file(shipped_dir() / "ref_xml.py")
CODEC = MODULE.CODEC

KEY = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
VNOW = datetime(2026, 12, 5, 10, 15)  # the vectors' day
DECL = '<?xml version="1.0" encoding="GBK"?>'


def make_session(mac=True, allow=(), peer="10.1.2.3", key=KEY, now=lambda: VNOW,
                 bank_code="301210", name="xml"):
    bank = BankProfile(name=name, plugin="ref-xml", bank_code=bank_code,
                       keys=BankKeys(mac_key=key) if key else BankKeys(), mac=mac, allow=allow,
                       two_phase=True, confirm_timeout=600)
    return Session(bank=bank, peer_host=peer, now=now)


S = make_session()


def head(tx="3001", bank="301210", d="20261205", t="101500", seq="X000000000000001") -> str:
    return (f"<HEAD><TxCode>{tx}</TxCode><BankCode>{bank}</BankCode><TxDate>{d}</TxDate>"
            f"<TxTime>{t}</TxTime><BankSeq>{seq}</BankSeq></HEAD>")


def doc(head_xml: str, body: str = "", mac: str | None = None, decl: str = DECL,
        encoding: str = "gbk") -> bytes:
    """``decl<ROOT>HEAD<BODY>body</BODY><MAC>..</MAC></ROOT>``: the MAC over the
    bytes up to ``<MAC>`` unless given."""
    mab = (decl + "<ROOT>" + head_xml + f"<BODY>{body}</BODY>").encode(encoding)
    if mac is None:
        mac = sm4_mac(KEY, mab).hex().upper()
    return mab + f"<MAC>{mac}</MAC></ROOT>".encode(encoding)


def rsp(action) -> dict:
    assert isinstance(action, Reply), action
    out = CODEC.client_decode(action.frame, S)
    assert out["mac_ok"], out
    return out


def code_of(action) -> str:
    return rsp(action)["resp_code"]


# -- §3 test vectors ---------------------------------------------------------------------

VECTOR = (
    b'000259<?xml version="1.0" encoding="GBK"?><ROOT><HEAD><TxCode>3001</TxCode><BankCode>'
    b"301210</BankCode><TxDate>20261205</TxDate><TxTime>101500</TxTime><BankSeq>"
    b"X000000000000001</BankSeq></HEAD><BODY><CustNo>100000123</CustNo></BODY><MAC>"
    b"2865B1C9BB2107A1</MAC></ROOT>"
)
ANSWER_1001 = bytes.fromhex(
    "3c3f786d6c2076657273696f6e3d22312e302220656e636f64696e673d2247424b223f3e3c524f4f543e3c"
    "484541443e3c5478436f64653e333030313c2f5478436f64653e3c42616e6b436f64653e3330313231303c"
    "2f42616e6b436f64653e3c5478446174653e32303236313230353c2f5478446174653e3c547854696d653e"
    "3130313530303c2f547854696d653e3c42616e6b5365713e583030303030303030303030303030313c2f42"
    "616e6b5365713e3c527370436f64653e313030313c2f527370436f64653e3c5273704d73673ed3c3bba7b2"
    "bbb4e6d4da3c2f5273704d73673e3c2f484541443e3c424f44593e3c2f424f44593e3c4d41433e39453344"
    "3036353837333038343030353c2f4d41433e3c2f524f4f543e"
)


def test_sm4_vectors():
    assert check_value("sm4", KEY).hex().upper() == "2677F4"
    assert sm4_ecb_encrypt(KEY, KEY).hex().upper() == "681EDF34D206965E86B3E94F536E4246"
    assert sm4_mac(KEY, b"").hex().upper() == "8C338E5A27E349BE"
    assert sm4_mac(KEY, b"a" * 16).hex().upper() == "D14FB37E5215CC72"


def test_request_vector_is_the_hand_built_document():
    assert VECTOR == b"000259" + doc(head(), "<CustNo>100000123</CustNo>")
    assert sm4_mac(KEY, VECTOR[6:VECTOR.index(b"<MAC>")]).hex().upper() == "2865B1C9BB2107A1"


def test_client_encode_reproduces_the_request_vector():
    frame = CODEC.client_encode("query", {"customer_no": "100000123", "serial":
                                          "X000000000000001", "trade_time": "101500"}, S)
    assert b"%06d" % len(frame) + frame == VECTOR


def test_the_vector_decodes_and_its_1001_answer_is_the_vector():
    action = CODEC.decode(VECTOR[6:], S)
    assert isinstance(action, Dispatch) and action.txname == "query"
    assert action.request == m.QueryRequest(
        m.Origin("xml", date(2026, 12, 5), "101500", channel=""), "100000123")
    frame = action.encode(m.QueryResult(Outcome.NOT_FOUND))
    assert len(frame) == 283 and frame == ANSWER_1001
    assert sm4_mac(KEY, frame[:frame.index(b"<MAC>")]).hex().upper() == "9E3D065873084005"


def test_lowercase_mac_accepted_in_requests():
    frame = VECTOR[6:].replace(b"2865B1C9BB2107A1", b"2865b1c9bb2107a1")
    assert isinstance(CODEC.decode(frame, S), Dispatch)


# -- the codec's declarations ---------------------------------------------------------------


def test_codec_surface():
    assert CODEC.name == "ref-xml"
    fr = CODEC.framing
    assert (fr.kind, fr.max_length, fr.one_per_connection, fr.idle_timeout) == (
        "ascii6", 8192, True, 30.0)
    (kind,) = CODEC.key_kinds
    assert (kind.name, kind.algorithm, kind.length, kind.check_length) == ("mac_key", "sm4",
                                                                           16, 3)
    assert CODEC.bank_defaults == {"two_phase": True, "confirm_timeout": 600}
    traits = CODEC.simulator_traits
    assert traits.two_phase and {"prepay", "confirm", "cancel", "query", "reverse", "status",
                                 "echo", "notice"} <= set(traits.ops)
    fmt = statement_format(CODEC)
    assert fmt.has_header and not fmt.names_bills
    assert fmt.file_name("301210", date(2026, 12, 5)) == "301210_20261205.xml"


CODES = {
    Outcome.OK: "0000", Outcome.NOT_FOUND: "1001", Outcome.NOTHING_DUE: "1002",
    Outcome.ACCOUNT_LOCKED: "1003", Outcome.AMOUNT_REJECTED: "1004",
    Outcome.DUPLICATE_MISMATCH: "2001", Outcome.ORIGINAL_NOT_FOUND: "2002",
    Outcome.STATE_NOT_ALLOWED: "2003", Outcome.ALREADY_REVERSED: "2003",
    Outcome.REVERSAL_NOT_ALLOWED: "2003", Outcome.REVERSED_FIRST: "2003",
    Outcome.EXPIRED: "2004", Outcome.DATE_CLOSED: "3001", Outcome.FORMAT_ERROR: "8001",
    Outcome.UNKNOWN_TRANSACTION: "8001", Outcome.MAC_ERROR: "8002",
    Outcome.NOT_AUTHORISED: "8003", Outcome.BUSY: "9001", Outcome.ERROR: "9999",
    Outcome.NOT_SIGNED_IN: "9999",
}


@pytest.mark.parametrize("outcome", list(Outcome))
def test_outcome_code_table(outcome):
    assert CODEC.outcome_code(outcome) == CODES[outcome]


@pytest.mark.parametrize("outcome", [o for o in Outcome if o is not Outcome.OK])
def test_every_refusal_has_an_empty_body_and_its_message(outcome):
    action = CODEC.decode(doc(head(tx="3002"), "<CustNo>1</CustNo><Amount>1.00</Amount>"
                                               "<Channel>05</Channel>"), S)
    frame = action.encode(m.PaymentResult(outcome, receipt_no="R" * 20))
    out = rsp(Reply(frame))
    assert out["resp_code"] == CODES[outcome] and b"<BODY></BODY>" in frame
    msg = out["resp_msg"]
    assert msg and len(msg.encode("gbk")) <= 60
    assert out["serial"] == "X000000000000001" and out["txcode"] == "3002"


def test_a_result_the_document_cannot_carry_is_9999():
    action = CODEC.decode(doc(head(tx="3006"), "<OrigSeq>P1</OrigSeq><OrigDate>20261205"
                                               "</OrigDate>"), S)
    frame = action.encode(m.StatusResult(Outcome.OK, PaymentStatus.POSTED, amount=-1))
    assert rsp(Reply(frame))["resp_code"] == "9999"


# -- §5 precedence ----------------------------------------------------------------------------

QUERY = doc(head(), "<CustNo>100000123</CustNo>")


@pytest.mark.parametrize("frame", [
    b"", b"garbage", b"<ROOT><HEAD></ROOT>", QUERY[:-1], QUERY + b"<x/>",
    doc("", "").replace(b"<BODY>", b"<HEAD2></HEAD2><BODY>"),  # no HEAD
    QUERY.replace(b"<ROOT>", b"<ROOT2>").replace(b"</ROOT>", b"</ROOT2>"),  # no ROOT
    QUERY.replace(b"100000123", "张".encode() + b"\xff"),  # not GBK
    QUERY.replace(b'encoding="GBK"', b'encoding="NOPE-99"'),  # unknown encoding
    QUERY.replace(b"100000123", b"&undefined;"),  # entity never declared
    QUERY.replace(b"100000123", b"\x01"),  # not an XML character
])
def test_close_without_answer(frame):
    assert isinstance(CODEC.decode(frame, S), Close)


def test_doctype_is_8001_before_8003_and_8002_with_an_empty_head():
    frame = (DECL + '<!DOCTYPE ROOT [<!ENTITY e "x">]><ROOT>' + head(bank="999999")
             + "<BODY><CustNo>&e;</CustNo></BODY><MAC>0000000000000000</MAC></ROOT>"
             ).encode("gbk")
    out = rsp(CODEC.decode(frame, S))
    assert out["resp_code"] == "8001"
    assert [out[k] for k in ("txcode", "bank_code", "trade_date", "trade_time", "serial")] == [
        ""] * 5


@pytest.mark.parametrize("session", [S, make_session(allow=("192.168.0.0/16",))])
def test_8003_before_8002_and_8001_with_mac_zeros(session):
    frame = doc(head(tx="9999", bank="301211" if session is S else "301210"), "<X/>",
                mac="F" * 16)
    action = CODEC.decode(frame, session)
    assert action.outcome is Outcome.NOT_AUTHORISED
    out = CODEC.client_decode(action.frame, session)
    assert out["resp_code"] == "8003" and out["mac"] == "0" * 16 and out["mac_ok"]
    assert out["txcode"] == "9999"


def test_bank_code_is_trimmed_and_must_match_exactly():
    assert isinstance(CODEC.decode(doc(head(bank=" 301210 "), "<CustNo>1</CustNo>"), S),
                      Dispatch)
    for bank in ("0301210", "30121", "301210\t"):
        assert code_of(CODEC.decode(doc(head(bank=bank), "<CustNo>1</CustNo>"), S)) == "8003"


@pytest.mark.parametrize("mutate", [
    lambda f: f.replace(b"2865B1C9BB2107A1", b"2865B1C9BB2107A2"),  # wrong
    lambda f: f.replace(b"<CustNo>100000123", b"<CustNo>100000124"),  # body changed
    lambda f: f + b"\n",  # anything after </ROOT>
    lambda f: f.replace(b"</BODY><MAC>", b"</BODY> <MAC>"),  # not right after </BODY>
    lambda f: f.replace(b"2865B1C9BB2107A1", b"2865B1C9BB2107A"),  # 15 digits
    lambda f: f.replace(b"<MAC>2865B1C9BB2107A1</MAC>", b""),  # missing
    lambda f: f.replace(b"3001", b"3099", 1),  # 8002 before 8001 (TxCode unknown)
])
def test_8002(mutate):
    frame = mutate(VECTOR[6:])
    out = rsp(CODEC.decode(frame, S))
    assert out["resp_code"] == "8002" and out["mac"] != "0" * 16


def test_mac_key_missing_is_8002():
    session = make_session(key=None)
    action = CODEC.decode(VECTOR[6:], session)
    assert action.outcome is Outcome.MAC_ERROR and b"<MAC>0000000000000000</MAC>" in action.frame


def test_mac_off_accepts_any_mac_and_answers_zeros():
    session = make_session(mac=False)
    action = CODEC.decode(doc(head(), "<CustNo>1</CustNo>", mac="0123456789abcdef"), session)
    assert isinstance(action, Dispatch)
    assert b"<MAC>0000000000000000</MAC>" in action.encode(m.QueryResult(Outcome.NOT_FOUND))


BAD_8001 = {
    "unknown TxCode": doc(head(tx="3007")),
    "TxCode not 4 digits": doc(head(tx="301"), "<CustNo>1</CustNo>"),
    "TxDate two days away": doc(head(d="20261207"), "<CustNo>1</CustNo>"),
    "TxDate not a date": doc(head(d="20261131"), "<CustNo>1</CustNo>"),
    "TxTime 24h": doc(head(t="240000"), "<CustNo>1</CustNo>"),
    "BankSeq 33": doc(head(seq="A" * 33), "<CustNo>1</CustNo>"),
    "BankSeq dash": doc(head(seq="A-1"), "<CustNo>1</CustNo>"),
    "BankSeq empty": doc(head(seq=""), "<CustNo>1</CustNo>"),
    "HEAD order": doc(head().replace("<TxTime>101500</TxTime>", "").replace(
        "</BankSeq>", "</BankSeq><TxTime>101500</TxTime>"), "<CustNo>1</CustNo>"),
    "extra HEAD element": doc(head().replace("</HEAD>", "<X></X></HEAD>"), "<CustNo>1</CustNo>"),
    "attribute": doc(head().replace("<TxTime>", '<TxTime a="1">'), "<CustNo>1</CustNo>"),
    "namespace": doc(head(), '<CustNo xmlns="urn:x">1</CustNo>'),
    "comment": doc(head(), "<CustNo>1</CustNo><!-- hi -->"),
    "comment before ROOT": doc(head(), "<CustNo>1</CustNo>", decl=DECL + "<!-- hi -->"),
    "processing instruction": doc(head(), "<?x y?><CustNo>1</CustNo>"),
    "declared UTF-8": doc(head(), "<CustNo>1</CustNo>",
                          decl='<?xml version="1.0" encoding="UTF-8"?>', encoding="utf-8"),
    "no declaration": doc(head(), "<CustNo>1</CustNo>", decl=""),
    "CustNo 21": doc(head(), "<CustNo>" + "1" * 21 + "</CustNo>"),
    "CustNo empty": doc(head(), "<CustNo>  </CustNo>"),
    "CustNo missing": doc(head()),
    "text between elements": doc(head(), "x<CustNo>1</CustNo>"),
    "nested value": doc(head(), "<CustNo><A>1</A></CustNo>"),
    "echo with BODY": doc(head(tx="3009"), "<X></X>"),
    "3002 channel 01": doc(head(tx="3002"), "<CustNo>1</CustNo><Amount>1.00</Amount>"
                                            "<Channel>01</Channel>"),
    "3005 OrigDate not TxDate": doc(head(tx="3005"), "<OrigSeq>P1</OrigSeq><OrigDate>20261204"
                                                     "</OrigDate><Amount>1.00</Amount>"),
    "3010 file name": doc(head(tx="3010"), "<SettleDate>20261204</SettleDate>"
                                           "<FileName>301210_20261205.xml</FileName>"),
    "3003 OrderNo empty": doc(head(tx="3003"), "<OrderNo></OrderNo><OrigSeq>P1</OrigSeq>"
                                               "<OrigDate>20261205</OrigDate>"),
}


@pytest.mark.parametrize("name", list(BAD_8001))
def test_8001(name):
    action = CODEC.decode(BAD_8001[name], S)
    assert code_of(action) == "8001", name
    assert action.outcome in (Outcome.FORMAT_ERROR, Outcome.UNKNOWN_TRANSACTION)
    assert action.log["reason"]


@pytest.mark.parametrize("amount", ["1", "1.5", "1.005", "-1.00", "1,00", " 1.0 0", "1e2",
                                    "１.00", "100000000000000.00", ""])
def test_amount_must_be_yuan_with_two_decimals(amount):
    frame = doc(head(tx="3002"), f"<CustNo>1</CustNo><Amount>{amount}</Amount>"
                                 "<Channel>05</Channel>")
    assert code_of(CODEC.decode(frame, S)) == "8001"


@pytest.mark.parametrize("text,fen", [("1371.06", 137106), ("0.50", 50), (" 12.00 ", 1200),
                                      ("0.00", 0), ("007.01", 701)])
def test_amounts(text, fen):
    frame = doc(head(tx="3002"), f"<CustNo>1</CustNo><Amount>{text}</Amount>"
                                 "<Channel>08</Channel>")
    assert CODEC.decode(frame, S).request.amount == fen


def test_the_head_is_echoed_as_received_and_unreadable_elements_empty():
    h = (f"<HEAD><TxCode>30x1</TxCode><BankCode> 301210</BankCode><TxDate>2026-12-05</TxDate>"
         f"<TxTime><b>1</b></TxTime><BankSeq>{'Z' * 65}</BankSeq></HEAD>")
    out = rsp(CODEC.decode(doc(h, "<CustNo>1</CustNo>"), S))
    assert out["resp_code"] == "8001"
    assert (out["txcode"], out["bank_code"], out["trade_date"]) == ("30x1", "301210",
                                                                   "2026-12-05")
    assert out["trade_time"] == "" and out["serial"] == ""  # holds elements; over 64 bytes
    escaped = doc(head(seq="A&amp;B"), "<CustNo>1</CustNo>")
    frame = CODEC.decode(escaped, S).frame
    assert b"<BankSeq>A&amp;B</BankSeq>" in frame


def test_character_references_and_predefined_entities_are_allowed():
    frame = doc(head(), "<CustNo>&#49;0&#x30;&lt;&gt;&amp;</CustNo>")
    assert CODEC.decode(frame, S).request.customer_no == "100<>&"


# -- requests to canonical messages ----------------------------------------------------------


def test_requests_map_to_the_canonical_messages():
    o = m.Origin("xml", date(2026, 12, 5), "101500", channel="")
    prepay = CODEC.decode(doc(head(tx="3002"), "<CustNo>100000123</CustNo><Amount>1371.06"
                                               "</Amount><Channel>04</Channel>"), S).request
    assert isinstance(prepay, m.PaymentRequest) and prepay.two_phase
    assert (prepay.serial, prepay.customer_no, prepay.amount, prepay.origin.channel) == (
        "X000000000000001", "100000123", 137106, "04")
    order = "<OrderNo>20261205000000000001</OrderNo><OrigSeq>P1</OrigSeq>" \
            "<OrigDate>20261204</OrigDate>"
    for tx, kind in (("3003", m.ConfirmRequest), ("3004", m.CancelRequest)):
        r = CODEC.decode(doc(head(tx=tx), order), S).request
        assert type(r) is kind
        assert (r.origin, r.orig_serial, r.orig_date, r.serial, r.order_no) == (
            o, "P1", date(2026, 12, 4), "X000000000000001", "20261205000000000001")
        assert r.content
    rev = CODEC.decode(doc(head(tx="3005"), "<OrigSeq>P1</OrigSeq><OrigDate>20261205"
                                            "</OrigDate><Amount>10.00</Amount>"), S).request
    assert isinstance(rev, m.ReversalRequest) and rev.confirmed_only
    assert (rev.orig_serial, rev.amount, rev.serial, rev.customer_no) == (
        "P1", 1000, "X000000000000001", None)
    st = CODEC.decode(doc(head(tx="3006"), "<OrigSeq>P1</OrigSeq><OrigDate>20261204"
                                           "</OrigDate>"), S).request
    assert st == m.StatusRequest(o, "P1", date(2026, 12, 4))
    notice = CODEC.decode(doc(head(tx="3010"), "<SettleDate>20261204</SettleDate><FileName>"
                                               "301210_20261204.xml</FileName>"), S).request
    assert notice == m.StatementNotice(o, date(2026, 12, 4), "301210_20261204.xml", 0, 0)


def test_content_is_txcode_and_body_not_txtime():
    body = "<CustNo>1</CustNo><Amount>1.00</Amount><Channel>05</Channel>"
    a = CODEC.decode(doc(head(tx="3002", t="101500"), body), S).request
    b = CODEC.decode(doc(head(tx="3002", t="235959"), body), S).request
    c = CODEC.decode(doc(head(tx="3002"), body.replace("05", "07")), S).request
    assert a.content == b.content != c.content


def test_echo_is_answered_without_the_ledger():
    action = CODEC.decode(doc(head(tx="3009")), S)
    assert isinstance(action, Reply) and code_of(action) == "0000"
    assert b"<BODY></BODY>" in action.frame


def test_query_answer_lists_the_oldest_twenty_and_cuts_names():
    bills = tuple(m.BillDue(f"B{i:03d}", "01", f"2026-{i:03d}", 100, 1) for i in range(25, 0, -1))
    action = CODEC.decode(QUERY, S)
    frame = action.encode(m.QueryResult(Outcome.OK, "100000123", "张" * 40, "路" * 60,
                                        bills=bills, total_due=2500, late_fee=25))
    out = rsp(Reply(frame))
    assert out["total_due"] == 2525 and out["bill_count"] == 25
    assert [b["bill_id"] for b in out["bills"]] == [f"B{i:03d}" for i in range(1, 21)]
    assert out["name"] == "张" * 30 and out["address"] == "路" * 50
    nothing = action.encode(m.QueryResult(Outcome.OK, "100000123"))
    assert rsp(Reply(nothing))["resp_code"] == "1002"


@pytest.mark.parametrize("status,code", [(PaymentStatus.NOT_FOUND, "0"),
                                         (PaymentStatus.PENDING, "1"),
                                         (PaymentStatus.POSTED, "2"),
                                         (PaymentStatus.CANCELLED, "3"),
                                         (PaymentStatus.EXPIRED, "4"),
                                         (PaymentStatus.REVERSED, "5")])
def test_status_codes(status, code):
    action = CODEC.decode(doc(head(tx="3006"), "<OrigSeq>P1</OrigSeq><OrigDate>20261205"
                                               "</OrigDate>"), S)
    frame = action.encode(m.StatusResult(Outcome.OK, status, 137106, "R" * 20))
    out = rsp(Reply(frame))
    assert out["status"] == code
    assert (out["amount"], out["order_no"]) == ((0, "") if code == "0" else (137106, "R" * 20))


def test_client_round_trip_of_every_transaction():
    values = {"customer_no": "100000123", "amount": 137106, "order_no": "2" * 20,
              "orig_serial": "P1", "orig_date": date(2026, 12, 5), "serial": "S1"}
    for name in ("query", "prepay", "confirm", "cancel", "reverse", "status", "echo",
                 "notice"):
        frame = CODEC.client_encode(name, values, S)
        action = CODEC.decode(frame, S)
        assert action.txname == name and isinstance(action, Dispatch | Reply), name


# -- the statement file (§7) -----------------------------------------------------------------

FMT = statement_format(CODEC)
D5 = date(2026, 12, 5)
RECORDS = [dict(serial="P0001", trade_date=D5, customer_no="100000123", amount=100000,
                receipt_no="20261205000000000001"),
           dict(serial="P0002", trade_date=D5, customer_no="100000200", amount=37106,
                receipt_no="20261205000000000002")]


def test_statement_write_is_the_spec_layout_and_reads_back():
    data = FMT.write("301210", D5, RECORDS)
    assert data.startswith(
        (DECL + "<STATEMENT><HEAD><BankCode>301210</BankCode><SettleDate>20261205</SettleDate>"
         "<Count>2</Count><Total>1371.06</Total></HEAD><DETAILS>\n<D><BankSeq>P0001</BankSeq>"
         "<TxDate>20261205</TxDate><CustNo>100000123</CustNo><Amount>1000.00</Amount>"
         "<OrderNo>20261205000000000001</OrderNo></D>\n").encode())
    assert data.endswith(b"</D>\n</DETAILS></STATEMENT>")
    st = FMT.read(data, "301210", D5)
    assert (st.count, st.total, st.declared_count, st.declared_total) == (2, 137106, 2, 137106)
    assert not st.totals_differ
    assert [(r.serial, r.trade_date, r.customer_no, r.amount) for r in st.records] == [
        ("P0001", D5, "100000123", 100000), ("P0002", D5, "100000200", 37106)]


def test_statement_totals_differ():
    st = FMT.read(FMT.write("301210", D5, RECORDS, declared=(3, 137106)), "301210", D5)
    assert st.totals_differ and st.declared_count == 3 and st.count == 2


@pytest.mark.parametrize("mutate,words", [
    (lambda d: d.replace(b"<BankCode>301210", b"<BankCode>301211"), "bank"),
    (lambda d: d.replace(b"<SettleDate>20261205", b"<SettleDate>20261204"), "settle date"),
    (lambda d: d.replace(b"<Amount>1000.00", b"<Amount>1000.0"), "line 2: Amount"),
    (lambda d: d.replace(b"P0002", b"P0001"), "line 3: BankSeq 'P0001' of 20261205 repeats line 2"),
    (lambda d: d.replace(b"<TxDate>20261205</TxDate><CustNo>100000200", b"<CustNo>100000200"),
     "line 3"),
    (lambda d: d.replace(b"<D>", b'<D x="1">', 1), "line 2: <D>: attributes"),
    (lambda d: d.replace(b"</DETAILS>", b"<!-- c --></DETAILS>"), "comments"),
    (lambda d: d[:-5], "not well-formed"),
    (lambda d: d.replace(b"<STATEMENT>", b'<!DOCTYPE x [<!ENTITY a "b">]><STATEMENT>'),
     "DOCTYPE"),
    (lambda d: b"", "line 1"),
])
def test_statement_errors_name_the_problem(mutate, words):
    with pytest.raises(StatementError, match=words):
        FMT.read(mutate(FMT.write("301210", D5, RECORDS)), "301210", D5)


class _LazyFile:
    """A statement of ``n`` records made as it is read: never whole in memory.
    Its HEAD and first records are the format's own writing; the rest repeat
    that record's bytes with the numbers changed (fast enough for a million)."""

    def __init__(self, n: int):
        total = sum(100 + i % 997 for i in range(n))  # a generator: nothing kept
        whole = FMT.write("301210", D5, [_record(0)], declared=(n, total))
        start, end = whole.index(b"<D>"), whole.index(b"</DETAILS>")
        template = whole[start:end].replace(b"P000000000", b"P%09d").replace(
            b"100000000", b"1%08d").replace(b"1.00<", b"%d.%02d<").replace(
            b"20261205000000000000", b"20261205%012d")
        self.parts = self._lazy(whole, start, end, template, n)
        self.buf = b""

    @staticmethod
    def _lazy(whole, start, end, template, n):
        yield whole[:start]
        for i in range(0, n, 1000):
            yield b"".join([template % (j, j % 1000, (100 + j % 997) // 100,
                                        (100 + j % 997) % 100, j)
                            for j in range(i, min(n, i + 1000))])
        yield whole[end:]

    def read(self, size: int) -> bytes:
        while len(self.buf) < size:
            more = next(self.parts, None)
            if more is None:
                break
            self.buf += more
        out, self.buf = self.buf[:size], self.buf[size:]
        return out


def _record(i: int) -> dict:
    return dict(serial=f"P{i:09d}", trade_date=D5, customer_no=f"1{i % 1000:08d}",
                amount=100 + i % 997, receipt_no=f"20261205{i:012d}")


def test_lazy_file_is_what_the_writer_writes():
    lazy, data = _LazyFile(50), b""
    while chunk := lazy.read(100):
        data += chunk
    recs = [_record(i) for i in range(50)]
    assert data == FMT.write("301210", D5, recs)


_MILLION = """
import resource, sys
sys.path[:0] = sys.argv[1:]
import test_ref_xml as t
reader, lazy = t.MODULE.iter_statement, t._LazyFile(1_000_000)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
count = total = 0
for rec in reader(lazy):
    if "serial" in rec:
        count += 1
        total += rec["amount"]
    else:
        head = rec
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(count, total, head["record_count"], head["total_amount"], grew)
"""


def test_a_million_records_stream_in_bounded_memory():
    """§7: one million records (a ~150 MB file, made as it is read), read streaming
    in a fresh process: its peak resident size grows by less than 16 MB over the
    whole file (the reader keeps no tree).  tracemalloc would be exact but makes
    this run ten times longer; the child's high-water mark is what an operator sees."""
    here = Path(__file__).resolve().parent
    out = subprocess.run([sys.executable, "-c", _MILLION, str(here), str(here.parent)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    count, total, declared_count, declared_total, grew_kb = map(int, out.stdout.split())
    assert count == 1_000_000 == declared_count and total == declared_total
    assert grew_kb < 16 * 1024, f"peak RSS grew by {grew_kb / 1024:.1f} MB"


def test_streaming_memory_does_not_grow_with_the_file():
    def peak(n):
        tracemalloc.start()
        try:
            assert sum(1 for _ in MODULE.iter_statement(_LazyFile(n))) == n + 1
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    small, large = peak(2_000), peak(40_000)
    assert large < small * 1.5 + 256 * 1024, (small, large)


# -- through the two-phase ledger ------------------------------------------------------------

T0 = datetime(2026, 11, 27, 9, 30)
D0 = "20261127"
POLICY = BankPolicy("xml", "301210", policy="exact", two_phase=True, confirm_timeout=600)
DUE = 548000  # 100000123: B0001 260000 + late fee 13000, B0002 15000, B0003 260000


@pytest.fixture(params=["sqlite", "postgres"])
def bank(request, tmp_path):
    store = make_store(request.param, tmp_path)
    seed_fixture(store)
    clock = FakeClock(T0)
    ledger = Ledger(store, {"xml": POLICY}, now=clock)
    session = make_session(now=clock)
    yield Bank(ledger, session, clock)
    if store.dialect != "sqlite":
        store.drop_all()
    store.stop()


class Bank:
    """The bank's side of the connection, through the codec and the ledger."""

    def __init__(self, ledger, session, clock):
        self.ledger, self.session, self.clock = ledger, session, clock
        self.n = 0

    def frame(self, txn: str, **values) -> bytes:
        if "serial" not in values:
            self.n += 1
            values["serial"] = f"S{self.n:06d}"
        return CODEC.client_encode(txn, values, self.session)

    def send_frame(self, frame: bytes) -> tuple[dict, bytes]:
        action = CODEC.decode(frame, self.session)
        if isinstance(action, Dispatch):
            answer = action.encode(self.ledger.handle(action.request))
        else:
            answer = action.frame
        out = CODEC.client_decode(answer, self.session)
        assert out["mac_ok"]
        return out, answer

    def send(self, txn: str, **values) -> dict:
        return self.send_frame(self.frame(txn, **values))[0]

    def prepay(self, serial: str, customer="100000123", amount=DUE) -> dict:
        return self.send("prepay", serial=serial, customer_no=customer, amount=amount)

    def settle(self, txn: str, orig: str, order_no: str, **values) -> dict:
        return self.send(txn, orig_serial=orig, orig_date=D0, order_no=order_no, **values)

    def status(self, orig: str) -> str:
        return self.send("status", orig_serial=orig, orig_date=D0)["status"]


def test_query_through_the_ledger(bank):
    q = bank.send("query", customer_no="100000123")
    assert q["resp_code"] == "0000" and q["total_due"] == DUE and q["bill_count"] == 3
    assert [b["bill_id"] for b in q["bills"]] == ["B0001", "B0002", "B0003"]
    assert sum(b["amount"] + b["late_fee"] for b in q["bills"]) == DUE
    assert bank.send("query", customer_no="999")["resp_code"] == "1001"
    assert bank.send("query", customer_no="100000300")["resp_code"] == "1003"
    assert bank.send("query", customer_no="100000400")["resp_code"] == "1002"


def test_prepay_then_confirm(bank):
    assert bank.prepay("P1", amount=DUE - 1)["resp_code"] == "1004"
    p = bank.prepay("P2")
    assert p["resp_code"] == "0000" and len(p["order_no"]) == 20
    assert p["expire_time"] == f"{T0 + timedelta(seconds=600):%Y%m%d%H%M%S}"
    assert bank.status("P2") == "1"
    assert bank.send("query", customer_no="100000123")["resp_code"] == "1002"  # settled
    c = bank.settle("confirm", "P2", p["order_no"])
    assert c["resp_code"] == "0000" and c["receipt_no"] == p["order_no"]
    assert c["invoice_no"] == ""
    again = bank.settle("confirm", "P2", p["order_no"])  # another BankSeq: same BODY
    assert again["resp_code"] == "0000" and again["receipt_no"] == c["receipt_no"]
    assert bank.status("P2") == "2"
    assert bank.settle("cancel", "P2", p["order_no"])["resp_code"] == "2003"


def test_confirm_and_cancel_of_unknown_or_other_orders_2002(bank):
    p = bank.prepay("P1")
    other = "9" * 20
    for txn in ("confirm", "cancel"):
        assert bank.settle(txn, "P1", other)["resp_code"] == "2002"
        assert bank.settle(txn, "NOPE", p["order_no"])["resp_code"] == "2002"
    assert bank.status("P1") == "1"


def test_cancel(bank):
    p = bank.prepay("P1")
    assert bank.settle("cancel", "P1", p["order_no"])["resp_code"] == "0000"
    assert bank.settle("cancel", "P1", p["order_no"])["resp_code"] == "0000"  # idempotent
    assert bank.status("P1") == "3"
    assert bank.settle("confirm", "P1", p["order_no"])["resp_code"] == "2003"
    assert bank.send("reverse", orig_serial="P1", amount=DUE)["resp_code"] == "2003"
    assert bank.send("query", customer_no="100000123")["total_due"] == DUE  # open again


def test_expiry_with_the_injected_clock(bank):
    p = bank.prepay("P1")
    q = bank.prepay("P2", customer="100000200", amount=1000000)
    bank.clock.now = T0 + timedelta(seconds=599)
    assert bank.settle("confirm", "P1", p["order_no"])["resp_code"] == "0000"
    bank.clock.now = T0 + timedelta(seconds=600)
    assert bank.status("P2") == "4"  # past ExpireTime, not yet undone: reported expired
    assert bank.settle("confirm", "P2", q["order_no"])["resp_code"] == "2004"
    assert bank.settle("cancel", "P2", q["order_no"])["resp_code"] == "2004"
    assert bank.status("P2") == "4"
    assert bank.send("query", customer_no="100000200")["total_due"] == 1000000  # undone


def test_reverse(bank):
    p = bank.prepay("P1")
    assert bank.send("reverse", orig_serial="P1", amount=DUE)["resp_code"] == "2003"  # pending
    bank.settle("confirm", "P1", p["order_no"])
    assert bank.send("reverse", orig_serial="P1", amount=DUE - 1)["resp_code"] == "1004"
    assert bank.send("reverse", orig_serial="P1", amount=DUE)["resp_code"] == "0000"
    assert bank.status("P1") == "5"
    assert bank.send("reverse", orig_serial="P1", amount=DUE)["resp_code"] == "2003"
    assert bank.settle("confirm", "P1", p["order_no"])["resp_code"] == "2003"


def test_reversal_of_an_unknown_payment_blocks_it(bank):
    assert bank.send("reverse", orig_serial="P9", amount=DUE)["resp_code"] == "2002"
    assert bank.prepay("P9")["resp_code"] == "2003"
    assert bank.status("P9") == "0"


def test_status_of_no_payment(bank):
    out = bank.send("status", orig_serial="NONE", orig_date=D0)
    assert (out["resp_code"], out["status"], out["amount"], out["order_no"]) == (
        "0000", "0", 0, "")


def _without_time_and_mac(frame: bytes) -> bytes:
    start, end = frame.index(b"<TxTime>"), frame.index(b"</TxTime>")
    return frame[:start] + frame[end:frame.index(b"<MAC>")]


def test_retries_answer_the_first_answer(bank):
    first, a1 = bank.send_frame(bank.frame("prepay", serial="P1", customer_no="100000123",
                                           amount=DUE, trade_time="093000"))
    bank.clock.now = T0 + timedelta(seconds=30)
    again, a2 = bank.send_frame(bank.frame("prepay", serial="P1", customer_no="100000123",
                                           amount=DUE, trade_time="093030"))
    assert first["resp_code"] == "0000" and a1 != a2
    assert _without_time_and_mac(a1) == _without_time_and_mac(a2)
    other = bank.prepay("P1", amount=DUE - 100)
    assert other["resp_code"] == "2001"
    c1, b1 = bank.send_frame(bank.frame("confirm", serial="C1", orig_serial="P1",
                                        orig_date=D0, order_no=first["order_no"]))
    c2, b2 = bank.send_frame(bank.frame("confirm", serial="C1", orig_serial="P1",
                                        orig_date=D0, order_no=first["order_no"],
                                        trade_time="100000"))
    assert c1["resp_code"] == "0000" and _without_time_and_mac(b1) == _without_time_and_mac(b2)
    assert bank.settle("cancel", "P1", first["order_no"], serial="C1")["resp_code"] == "2001"
    assert bank.settle("confirm", "P1", "8" * 20, serial="C1")["resp_code"] == "2001"


def test_9001_is_not_recorded(bank):
    frame = bank.frame("prepay", serial="P1", customer_no="100000123", amount=DUE)
    action = CODEC.decode(frame, bank.session)
    busy = CODEC.client_decode(action.encode(m.PaymentResult(Outcome.BUSY)), bank.session)
    assert busy["resp_code"] == "9001"
    assert bank.send_frame(frame)[0]["resp_code"] == "0000"  # the same request, as new


def test_statement_notice_closes_the_date(bank):
    out = bank.send("notice", settle_date=D0)
    assert out["resp_code"] == "0000"
    assert bank.prepay("P1")["resp_code"] == "3001"
