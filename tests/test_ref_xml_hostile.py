"""ref-xml against hostile documents: nothing is expanded, fetched or crashes.

Each document here is either answered 8001 (a DOCTYPE, an entity
declaration, a comment, a processing instruction, a wrong encoding that
still decodes) or closed unanswered (not well-formed, not in its encoding),
as docs/specs/ref-xml.rst §1, §2 and §5 say -- and none is expanded in memory.  The
hypothesis tests: random well-formed requests survive client_encode ->
decode -> the canonical request; random bytes never raise.
"""

from __future__ import annotations

import tracemalloc
from datetime import date

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ref_xml import CODEC, DECL, KEY, S, doc, head, make_session
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from bankgate.canon import messages as m
from bankgate.codec.base import Close, Dispatch, Reply
from bankgate.codec.crypto import sm4_mac
from bankgate.wire.framing import Ascii6Receiver, receiver_options

HEAD = head()


def with_mac(text: str, encoding: str = "gbk") -> bytes:
    mab = text.encode(encoding)
    return mab + f"<MAC>{sm4_mac(KEY, mab).hex().upper()}</MAC></ROOT>".encode(encoding)


#: what decoding one document of at most 8 KB may allocate at its peak: an entity
#: expanded (the billion laughs: gigabytes) goes far past it
EXPANDED = 64 * 2**20


def answered(frame: bytes) -> str:
    tracemalloc.start()  # counted, not timed: a loaded machine is slow, not wrong
    try:
        action = CODEC.decode(frame, S)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < EXPANDED, f"{peak:,} bytes at the peak: something expanded"
    if isinstance(action, Close):
        return "close"
    assert isinstance(action, Reply | Dispatch)
    if isinstance(action, Dispatch):
        return "dispatch"
    out = CODEC.client_decode(action.frame, S)
    assert out["mac_ok"]
    return out["resp_code"]


def doctype(dtd: str, body: str = "<CustNo>1</CustNo>") -> bytes:
    return with_mac(DECL + f"<!DOCTYPE ROOT [{dtd}]><ROOT>" + HEAD + f"<BODY>{body}</BODY>")


def test_billion_laughs_is_8001_never_expanded():
    lol = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    frame = doctype('<!ENTITY l0 "lol">' + lol, "<CustNo>&l9;</CustNo>")
    assert answered(frame) == "8001"


def test_quadratic_blowup_is_8001():
    frame = doctype(f'<!ENTITY a "{"x" * 4000}">', "<CustNo>" + "&a;" * 100 + "</CustNo>")
    assert len(frame) < 8192 and answered(frame) == "8001"


def test_external_entity_is_8001_never_fetched():
    frame = doctype('<!ENTITY xxe SYSTEM "file:///etc/passwd">', "<CustNo>&xxe;</CustNo>")
    action = CODEC.decode(frame, S)
    assert b"root:" not in action.frame and answered(frame) == "8001"


def test_external_dtd_is_8001():
    frame = with_mac(DECL + '<!DOCTYPE ROOT SYSTEM "http://127.0.0.1:9/x.dtd"><ROOT>' + HEAD
                     + "<BODY><CustNo>1</CustNo></BODY>")
    assert answered(frame) == "8001"


def test_parameter_entities_are_8001():
    frame = doctype('<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;')
    assert answered(frame) == "8001"
    frame = doctype('<!ENTITY % q "<!ENTITY r \'x\'>"> %q;', "<CustNo>&r;</CustNo>")
    assert answered(frame) == "8001"


def test_undeclared_entity_is_not_well_formed():
    assert answered(doc(HEAD, "<CustNo>&xxe;</CustNo>")) == "close"


def test_8kb_of_nesting_is_8001():
    depth = (8192 - 400) // 7
    body = "<a>" * depth + "</a>" * depth
    frame = doc(HEAD, body)
    assert 7000 < len(frame) <= 8192
    assert answered(frame) == "8001"
    unclosed = doc(HEAD, "<a>" * 2000)
    assert answered(unclosed) == "close"


def test_utf8_declared_gbk_that_is_not_gbk_closes():
    bad = doc(HEAD, "<CustNo>1</CustNo>").replace(b"<CustNo>1", "<CustNo>€".encode()
                                                  + b"\xff")
    assert answered(bad) == "close"


def test_utf8_declared_gbk_that_happens_to_decode_is_answered():
    """UTF-8 bytes that are also valid GBK (mojibake) decode: the document is
    well-formed and read; the wrong text fails the field's rule."""
    frame = doc(HEAD, "<CustNo>" + "张三".encode().decode("gbk", "replace")[:1]
                + "</CustNo>")
    assert answered(frame) in ("dispatch", "8001")


def test_utf16_document():
    text = '<?xml version="1.0" encoding="UTF-16"?><ROOT>' + HEAD + "<BODY><CustNo>1</CustNo>" \
           "</BODY><MAC>0000000000000000</MAC></ROOT>"
    frame = text.encode("utf-16")
    assert answered(frame) == "8002"  # its MAC suffix is not in the bytes §3 names
    off = make_session(mac=False)
    out = CODEC.client_decode(CODEC.decode(frame, off).frame, off)
    assert out["resp_code"] == "8001"  # and it is not GBK
    # without a BOM expat still recognises UTF-16 from "<?" (XML's appendix F)
    assert answered(text.encode("utf-16-le")) == "8002"


def test_declared_encoding_unknown_closes():
    assert answered(doc(HEAD, "", decl='<?xml version="1.0" encoding="x-klingon"?>')) == "close"


def test_comments_and_processing_instructions_are_8001():
    for body in ("<!--x--><CustNo>1</CustNo>", "<CustNo>1<!--x--></CustNo>",
                 "<?php echo 1; ?><CustNo>1</CustNo>"):
        assert answered(doc(HEAD, body)) == "8001", body
    assert answered(doc(HEAD, "<CustNo>1</CustNo>", decl=DECL + "<?xml-stylesheet href='x'?>")
                    ) == "8001"


def test_cdata_is_text():
    action = CODEC.decode(doc(HEAD, "<CustNo><![CDATA[100000123]]></CustNo>"), S)
    assert action.request.customer_no == "100000123"


def test_an_8193_byte_frame_is_closed_unanswered():
    proto = Ascii6Receiver(Clock())
    frames = []
    proto.frameReceived = frames.append
    t = StringTransport()
    proto.makeConnection(t)
    proto.dataReceived(b"008193" + b"<" * 8193)
    assert t.disconnecting and frames == [] and t.value() == b""
    assert receiver_options(CODEC.framing)["max_length"] == 8192


def test_huge_attribute_and_many_attributes():
    h = HEAD.replace("<TxCode>", "<TxCode " + " ".join(f'a{i}="{i}"' for i in range(500)) + ">")
    assert answered(doc(h, "<CustNo>1</CustNo>")) == "8001"
    h = HEAD.replace("<TxCode>", f'<TxCode a="{"x" * 7000}">')
    assert answered(doc(h, "<CustNo>1</CustNo>")) == "8001"


def test_mac_tag_inside_text_does_not_fool_the_suffix_rule():
    frame = doc(HEAD, "<CustNo>1&lt;/BODY&gt;&lt;MAC&gt;</CustNo>")
    assert answered(frame) in ("dispatch", "8001")
    tricked = doc(HEAD, "<CustNo>1</CustNo>").replace(b"</BODY>", b"</BODY><!--x-->")
    assert answered(tricked) == "8002"


# -- property tests ----------------------------------------------------------------------

_seq = st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
               min_size=1, max_size=32)
_cust = st.text(alphabet=st.characters(codec="gbk", exclude_categories=("Cc", "Cs", "Zl",
                                                                         "Zp", "Zs")),
                min_size=1, max_size=20)
_fen = st.integers(min_value=0, max_value=10**13 - 1)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(txn=st.sampled_from(["query", "prepay", "confirm", "cancel", "reverse", "status",
                            "notice", "echo"]),
       serial=_seq, orig=_seq, cust=_cust, amount=_fen,
       channel=st.sampled_from(["04", "05", "07", "08"]),
       order=st.text(alphabet="0123456789", min_size=1, max_size=20),
       orig_date=st.dates(date(2000, 1, 1), date(2099, 12, 31)),
       trade_date=st.sampled_from([date(2026, 12, 4), date(2026, 12, 5), date(2026, 12, 6)]))
def test_well_formed_requests_round_trip(txn, serial, orig, cust, amount, channel, order,
                                         orig_date, trade_date):
    values = dict(serial=serial, orig_serial=orig, customer_no=cust, amount=amount,
                  channel=channel, order_no=order, orig_date=orig_date,
                  trade_date=trade_date, settle_date=orig_date)
    if txn == "reverse":
        values["orig_date"] = trade_date
    frame = CODEC.client_encode(txn, values, S)
    action = CODEC.decode(frame, S)
    if txn == "echo":
        assert isinstance(action, Reply) and b"<RspCode>0000</RspCode>" in action.frame
        return
    assert isinstance(action, Dispatch), action
    req = action.request
    assert req.origin.trade_date == trade_date
    if txn == "query":
        assert req.customer_no == cust.strip(" ")
    elif txn == "prepay":
        assert (req.serial, req.customer_no, req.amount, req.origin.channel) == (
            serial, cust, amount, channel)
    elif txn in ("confirm", "cancel"):
        assert (req.serial, req.orig_serial, req.orig_date, req.order_no) == (
            serial, orig, orig_date, order)
    elif txn == "reverse":
        assert (req.serial, req.orig_serial, req.amount) == (serial, orig, amount)
    elif txn == "status":
        assert (req.orig_serial, req.orig_date) == (orig, orig_date)
    else:
        assert isinstance(req, m.StatementNotice) and req.settle_date == orig_date
    answer = action.encode(m.SimpleResult(m.Outcome.BUSY))
    assert CODEC.client_decode(answer, S)["resp_code"] == "9001"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(frame):
    action = CODEC.decode(frame, S)
    assert isinstance(action, Close | Reply | Dispatch)


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(min_value=0, max_value=400), junk=st.binary(min_size=1, max_size=8))
def test_mutated_requests_never_raise(pos, junk):
    base = doc(HEAD, "<CustNo>100000123</CustNo>")
    pos %= len(base)
    frame = base[:pos] + junk + base[pos + len(junk):]
    action = CODEC.decode(frame, S)
    assert isinstance(action, Close | Reply | Dispatch)
    if isinstance(action, Reply):
        out = CODEC.client_decode(action.frame, S)
        assert out["resp_code"] in {"8001", "8002", "8003", "0000"} and out["mac_ok"]
