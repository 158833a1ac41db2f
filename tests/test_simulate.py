"""bankgate.devtools.simulate: the bank simulator's client, without sockets.

Connections go through ``MemoryReactorClock`` (the test plays the accepting
side with a ``StringTransport``); the gateway's answers are produced by the
real codecs' gateway side (``decode`` + ``encode``) from canonical results,
and the request bytes are checked against frames written by hand from the
specs' test vectors.
"""

from __future__ import annotations

import random
from datetime import date, datetime

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from bankgate.app.cli import build_parser
from bankgate.app.cli import simulate as simcli
from bankgate.app.config import check_plugins, default_config
from bankgate.canon.messages import BillDue, Outcome, PaymentResult, QueryResult
from bankgate.codec.base import BankKeys, BankProfile, Dispatch, Reply, Session
from bankgate.codec.registry import load_codec
from bankgate.devtools import simulate as sim

FIXED = load_codec("ref-fixed")
DELIM = load_codec("ref-delim")
ISO = load_codec("ref-iso8583")

KEY = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
MAK = bytes.fromhex("89ABCDEF0123456776543210FEDCBA98")
NOW = datetime(2026, 11, 27, 9, 30, 15)

FIXED_BANK = BankProfile(name="demo-fixed", plugin="ref-fixed", bank_code="105210",
                         keys=BankKeys(mac_key=KEY), mac=True)
DELIM_BANK = BankProfile(name="demo-delim", plugin="ref-delim", bank_code="103210")
ISO_BANK = BankProfile(name="demo-iso8583", plugin="ref-iso8583", bank_code="105210",
                       keys=BankKeys(zmk=KEY), mac=True)


# -- helpers ---------------------------------------------------------------------


def accept(reactor: MemoryReactorClock, index: int = -1):
    """Complete the client's pending TCP connection; returns (protocol, transport)."""
    host, port, factory, _timeout, _bind = reactor.tcpClients[index]
    addr = IPv4Address("TCP", host, port)
    proto = factory.buildProtocol(addr)
    transport = StringTransport(peerAddress=addr)
    proto.makeConnection(transport)
    return proto, transport


def split_frames(kind: str, data: bytes) -> list[bytes]:
    size = {"ascii4": 4, "ascii8": 8, "tpdu2": 2}[kind]
    out = []
    while data:
        head = data[:size]
        n = int(head) if kind != "tpdu2" else int.from_bytes(head, "big")
        out.append(data[size:size + n])
        data = data[size + n:]
    return out


def prefix(kind: str, payload: bytes) -> bytes:
    if kind == "ascii4":
        return b"%04d" % len(payload) + payload
    if kind == "ascii8":
        return b"%08d" % len(payload) + payload
    return len(payload).to_bytes(2, "big") + payload


class Gateway:
    """The gateway's side of one connection, from the real codec."""

    def __init__(self, codec, bank: BankProfile):
        self.codec = codec
        self.session = Session(bank=bank, peer_host="127.0.0.1", now=lambda: NOW,
                               random_bytes=lambda n: MAK[:n])

    def answer(self, frame: bytes, result=None) -> bytes:
        action = self.codec.decode(frame, self.session)
        if isinstance(action, Reply):
            return prefix(self.codec.framing.kind, action.frame)
        assert isinstance(action, Dispatch), action
        return prefix(self.codec.framing.kind, action.encode(result))


def query_result(customer_no: str, amount: int = 12345) -> QueryResult:
    return QueryResult(
        outcome=Outcome.OK, customer_no=customer_no, name="张三", address="沈阳市",
        customer_class="R",
        bills=(BillDue("B1", "01", "2026-2027", amount, 0),),
        total_due=amount, late_fee=0,
    )


def client(reactor, codec, bank, **kw) -> sim.BankClient:
    kw.setdefault("now", lambda: NOW)
    kw.setdefault("serials", sim.SerialGenerator(lambda: NOW, rng=random.Random(1)))
    return sim.BankClient(reactor, codec, bank, "127.0.0.1", 9101, **kw)


def results(d: defer.Deferred) -> list:
    out: list = []
    d.addBoth(out.append)
    return out


# -- framing of requests: the specs' test vectors ---------------------------------------------


def test_ref_fixed_query_is_the_spec_frame():
    """ref-fixed §9: the 147-byte frame of the 1001 query for customer 100000123."""
    reactor = MemoryReactorClock()
    c = client(reactor, FIXED, FIXED_BANK)
    d = c.request("query", {"customer_no": "100000123", "serial": "BK2026112700000001",
                            "branch": "210100001", "teller": "T0000012"})
    assert reactor.tcpClients[0][:2] == ("127.0.0.1", 9101)
    _, transport = accept(reactor)
    expected = (
        b"0143"
        b"1001" b"105210" b"210100001" b"T0000012" b"01" b"20261127" b"093015"
        b"BK2026112700000001  " b"0000" + b" " * 40 + b"50E50B64338D6957"
        b"100000123" + b" " * 11
    )
    assert len(expected) == 147
    assert transport.value() == expected
    assert not d.called


def test_ref_iso8583_signin_is_the_spec_frame():
    """ref-iso8583 §7: the sign-in 0800 with its 2-byte length and TPDU."""
    reactor = MemoryReactorClock()
    c = client(reactor, ISO, ISO_BANK, signin=False)
    c.request("signin", {"stan": 1, "transmission": "1127093000"})
    _, transport = accept(reactor)
    assert transport.value() == bytes.fromhex(
        "002F6000030000303830300220000100000010313132373039333030303030303030313036313035"
        "323130303033303031"
    )


def test_ref_delim_echo_has_an_8_digit_prefix_and_one_connection_per_request():
    reactor = MemoryReactorClock()
    c = client(reactor, DELIM, DELIM_BANK)
    d1 = c.request("echo", {"serial": "S1"})
    _, t1 = accept(reactor)
    body = b"900|103210|||01|20261127|093015|S1|"
    assert t1.value() == b"%08d" % len(body) + body
    d2 = c.request("echo", {"serial": "S2"})
    assert len(reactor.tcpClients) == 2  # a connection per request
    p2, t2 = accept(reactor)
    r1, r2 = results(d1), results(d2)
    # answer the second first: each connection carries its own answer
    p2.dataReceived(prefix("ascii8", b"000|ok|"))
    assert r2 and r2[0]["code"] == "000"
    assert t2.disconnecting  # the client closes after its answer
    assert not r1


def test_sequential_client_sends_one_request_at_a_time():
    reactor = MemoryReactorClock()
    c = client(reactor, FIXED, FIXED_BANK)
    gw = Gateway(FIXED, FIXED_BANK)
    d1 = c.request("query", {"customer_no": "100000001", "serial": "A1"})
    d2 = c.request("query", {"customer_no": "100000002", "serial": "A2"})
    proto, transport = accept(reactor)
    assert len(reactor.tcpClients) == 1
    [f1] = split_frames("ascii4", transport.value())
    transport.clear()
    r1, r2 = results(d1), results(d2)
    proto.dataReceived(gw.answer(f1, query_result("100000001")))
    assert r1[0]["resp_code"] == "0000" and r1[0]["customer_no"] == "100000001"
    assert r1[0]["mac_ok"] is True
    # only now the second request goes out, on the same connection
    [f2] = split_frames("ascii4", transport.value())
    assert f2[63 - 20:63].rstrip() == b"A2"
    assert not r2
    proto.dataReceived(gw.answer(f2, query_result("100000002")))
    assert r2[0]["customer_no"] == "100000002"


# -- pipelining: ISO 8583 answers matched by STAN -------------------------------------------


def _signed_in_iso(reactor, **kw):
    c = client(reactor, ISO, ISO_BANK, **kw)
    gw = Gateway(ISO, ISO_BANK)
    connected = results(c.connect())
    proto, transport = accept(reactor)
    [signin] = split_frames("tpdu2", transport.value())
    assert signin[5:9] == b"0800"
    transport.clear()
    assert not connected  # waits for the sign-in answer
    proto.dataReceived(gw.answer(signin))
    assert connected == [c]
    assert c.session.state["mak"] == MAK
    return c, gw, proto, transport


def test_pipelined_answers_are_matched_by_stan():
    reactor = MemoryReactorClock()
    c, gw, proto, transport = _signed_in_iso(reactor)
    d1 = c.request("query", {"customer_no": "100000001", "stan": 11, "rrn": "RRN000000011"})
    d2 = c.request("query", {"customer_no": "100000002", "stan": 12, "rrn": "RRN000000012"})
    f1, f2 = split_frames("tpdu2", transport.value())  # both sent before any answer
    r1, r2 = results(d1), results(d2)
    a1 = gw.answer(f1, query_result("100000001", 100))
    a2 = gw.answer(f2, query_result("100000002", 200))
    proto.dataReceived(a2 + a1)  # in the other order, in one read
    assert r1[0]["stan"] == "000011" and r1[0]["field48"]["customer_no"] == "100000001"
    assert r2[0]["stan"] == "000012" and r2[0]["field48"]["customer_no"] == "100000002"
    assert r1[0]["mac_ok"] is True and r2[0]["mac_ok"] is True
    assert len(reactor.tcpClients) == 1


def test_pipelined_same_stan_twice_in_flight_is_refused():
    reactor = MemoryReactorClock()
    c, *_ = _signed_in_iso(reactor)
    c.request("query", {"customer_no": "1", "stan": 5})
    r = results(c.request("query", {"customer_no": "2", "stan": 5}))
    assert r[0].check(sim.SimulateError)


def test_pipelined_timeout_forgets_the_stan_and_a_late_answer_is_stray():
    reactor = MemoryReactorClock()
    c, gw, proto, transport = _signed_in_iso(reactor, timeout=5.0)
    d = c.request("query", {"customer_no": "100000001", "stan": 21})
    [frame] = split_frames("tpdu2", transport.value())
    r = results(d)
    reactor.advance(5.0)
    assert r[0].check(sim.RequestTimeout)
    assert not transport.disconnecting  # other requests may still be in flight
    proto.dataReceived(gw.answer(frame, query_result("100000001")))
    assert c.stray == 1


def test_other_transactions_sign_in_first_automatically():
    reactor = MemoryReactorClock()
    c = client(reactor, ISO, ISO_BANK)
    gw = Gateway(ISO, ISO_BANK)
    r = results(c.request("query", {"customer_no": "100000001", "stan": 31}))
    proto, transport = accept(reactor)
    [signin] = split_frames("tpdu2", transport.value())
    transport.clear()
    proto.dataReceived(gw.answer(signin))
    [query] = split_frames("tpdu2", transport.value())
    assert query[5:9] == b"0100"
    proto.dataReceived(gw.answer(query, query_result("100000001")))
    assert r[0]["response_code"] == "00" and r[0]["mac_ok"] is True


def test_refused_signin_fails_the_request():
    reactor = MemoryReactorClock()
    other = BankProfile(name="x", plugin="ref-iso8583", bank_code="999999",
                        keys=BankKeys(zmk=KEY), mac=True)
    c = client(reactor, ISO, other)
    gw = Gateway(ISO, ISO_BANK)  # the gateway knows 105210 only: answers 03
    r = results(c.request("query", {"customer_no": "1"}))
    proto, transport = accept(reactor)
    [signin] = split_frames("tpdu2", transport.value())
    proto.dataReceived(gw.answer(signin))
    assert r[0].check(sim.SignInError)
    assert "03" in str(r[0].value)
    assert transport.disconnecting


# -- failures ---------------------------------------------------------------------------------


def test_sequential_timeout_drops_the_connection_and_reconnects():
    reactor = MemoryReactorClock()
    c = client(reactor, FIXED, FIXED_BANK, timeout=2.0)
    r = results(c.request("echo", {"serial": "E1"}))
    proto, transport = accept(reactor)
    reactor.advance(2.0)
    assert r[0].check(sim.RequestTimeout)
    assert transport.disconnecting  # an answer could still come: out of step
    proto.connectionLost(Failure(ConnectionDone()))
    c.request("echo", {"serial": "E2"})
    assert len(reactor.tcpClients) == 2


def test_connection_closed_without_answer():
    reactor = MemoryReactorClock()
    c = client(reactor, FIXED, FIXED_BANK)
    r = results(c.request("echo", {"serial": "E1"}))
    proto, _ = accept(reactor)
    proto.connectionLost(Failure(ConnectionDone()))
    assert r[0].check(sim.ConnectionClosed)
    assert not c.connected


def test_unreadable_answer_is_a_protocol_error():
    reactor = MemoryReactorClock()
    c = client(reactor, FIXED, FIXED_BANK)
    r = results(c.request("echo", {"serial": "E1"}))
    proto, transport = accept(reactor)
    proto.dataReceived(prefix("ascii4", b"too short"))
    assert r[0].check(sim.ProtocolError)
    assert transport.disconnecting


def test_bad_length_prefix_from_the_gateway_fails_the_request():
    reactor = MemoryReactorClock()
    c = client(reactor, FIXED, FIXED_BANK)
    r = results(c.request("echo", {"serial": "E1"}))
    proto, transport = accept(reactor)
    proto.dataReceived(b"XY12garbage")
    assert r[0].check(sim.ProtocolError)
    assert transport.disconnecting


# -- the simulator's operations ---------------------------------------------------------------


def test_pay_due_queries_then_pays_the_total_and_answers_are_flattened():
    reactor = MemoryReactorClock()
    serials = sim.SerialGenerator(lambda: NOW, rng=random.Random(3))
    c = client(reactor, ISO, ISO_BANK, serials=serials)
    gw = Gateway(ISO, ISO_BANK)
    s = sim.BankSimulator(c, serials)
    seen = []
    s.observer = lambda op, a, e, t: seen.append((op, a.code if a else e))
    r = results(defer.ensureDeferred(s.pay_due("100000001")))
    proto, transport = accept(reactor)
    [signin] = split_frames("tpdu2", transport.value())
    transport.clear()
    proto.dataReceived(gw.answer(signin))
    [q] = split_frames("tpdu2", transport.value())
    transport.clear()
    proto.dataReceived(gw.answer(q, query_result("100000001", 4321)))
    [p] = split_frames("tpdu2", transport.value())
    assert p[5:9] == b"0200"
    assert b"000000004321" in p  # field 4: the total the query showed
    proto.dataReceived(gw.answer(p, PaymentResult(
        outcome=Outcome.OK, customer_no="100000001", amount=4321,
        receipt_no="20261127000000000042", invoice_no="", remaining_due=0)))
    [[query, pay]] = r
    assert query.approved and query.total == 4321
    assert query.bills[0]["bill_id"] == "B1"
    assert pay.approved and pay.fields["receipt_no"] == "20261127000000000042"
    assert pay.fields["auth_id"] == "000042"
    assert len(pay.request["rrn"]) == 12 and pay.serial == pay.request["rrn"]
    assert seen == [("query", "00"), ("pay", "00")]
    for a in (query, pay):  # nothing secret reaches the printable fields
        assert "mac" not in a.fields and "field64" not in a.fields
        assert not any(isinstance(v, bytes) for v in a.fields.values())


def test_unsupported_operation_names_what_the_plugin_has():
    reactor = MemoryReactorClock()
    s = sim.BankSimulator(client(reactor, DELIM, DELIM_BANK))
    r = results(defer.ensureDeferred(s.status("X")))
    assert r[0].check(sim.SimulateError)
    assert "cutoff" in str(r[0].value) and not reactor.tcpClients


def test_codec_values_for_iso_reversal_name_the_original_rrn():
    reactor = MemoryReactorClock()
    s = sim.BankSimulator(client(reactor, ISO, ISO_BANK), trade_date=date(2026, 11, 27))
    v = s.codec_values("reverse", {"orig_serial": "RRN000000001", "customer_no": "1",
                                   "amount": 5})
    assert v == {"rrn": "RRN000000001", "amount": 5, "trade_date": date(2026, 11, 27)}
    v = s.codec_values("pay", {"customer_no": "1", "amount": 5})
    assert len(v["rrn"]) == 12
    assert s.codec_values("signin", {}) == {}


def test_flatten_masks_the_card_and_drops_macs_and_keys():
    decoded = {
        "mti": "0210", "response_code": "00", "stan": "000001", "mac_ok": True,
        "fields": {2: "6222021234567890123", 4: "000000001000", 39: "00",
                   62: b"k" * 20, 64: b"m" * 8},
        "field48": {"receipt_no": "R1", "invoice_no": "", "remaining_due": 0},
    }
    f = sim.flatten(decoded)
    assert f["pan"] == "622202*********0123"
    assert f["amount"] == 1000
    assert not any(isinstance(v, bytes) for v in f.values())
    assert "field62" not in f and "field64" not in f
    assert sim.flatten({"resp_code": "0000", "mac": "50E50B64338D6957"}) == {
        "resp_code": "0000"}


def test_code_meanings_come_from_the_codec():
    m = sim.code_meanings(FIXED)
    assert m["0000"] == "approved"
    assert "reversal not allowed" in m["1007"] and "reversal came first" in m["1007"]
    assert sim.code_meanings(ISO)["00"] == "approved"  # not "already reversed"
    assert sim.code_meanings(ISO)["A7"] == "not signed in"
    assert sim.code_meanings(DELIM)["030"] == "bank not authorised"


def test_a_shared_code_means_what_fits_the_operation():
    """ref-fixed answers 1007 both to a reversal it refuses and to a payment whose
    reversal came first: a refused reversal must not read "its reversal came first"."""
    assert sim.code_meanings(FIXED, "reverse")["1007"] == "reversal not allowed"
    assert sim.code_meanings(FIXED, "pay")["1007"] == "payment refused: its reversal came first"
    assert sim.code_meanings(DELIM, "reverse")["007"] == "reversal not allowed"
    answer = sim.make_answer(FIXED, "reverse", "reverse", {}, {"resp_code": "1007"}, 0.01)
    assert answer.meaning == "reversal not allowed"


# -- serials -------------------------------------------------------------------------------------


def test_serials_are_unique_and_sized():
    g = sim.SerialGenerator(lambda: NOW, rng=random.Random(7))
    s20 = [g.serial(20) for _ in range(5000)]
    assert len(set(s20)) == 5000 and all(len(s) == 20 and s.startswith("SIM") for s in s20)
    s12 = [g.serial(12) for _ in range(5000)]
    assert len(set(s12)) == 5000 and all(len(s) == 12 and s.isdigit() for s in s12)
    assert s20[0][3:9] == "093015"


def test_stan_is_six_digits_and_wraps_to_one():
    g = sim.SerialGenerator(lambda: NOW, rng=random.Random(7))
    g._stan = 999998
    assert [g.stan(), g.stan(), g.stan()] == [999999, 1, 2]


# -- latency percentiles ---------------------------------------------------------------------


def test_percentile_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert sim.percentile(values, 50) == 50.0
    assert sim.percentile(values, 95) == 95.0
    assert sim.percentile(values, 99) == 99.0
    assert sim.percentile(values, 100) == 100.0
    assert sim.percentile([10.0, 20.0, 30.0], 50) == 20.0
    assert sim.percentile([10.0, 20.0, 30.0], 95) == 30.0
    assert sim.percentile([7.0], 99) == 7.0
    assert sim.percentile([], 50) == 0.0
    with pytest.raises(ValueError):
        sim.percentile([1.0], 101)


def test_latency_summary_is_in_milliseconds():
    s = sim.latency_summary([0.004, 0.001, 0.003, 0.002])  # unsorted seconds
    assert s["count"] == 4
    assert s["p50"] == pytest.approx(2.0)
    assert s["p99"] == pytest.approx(4.0)
    assert s["max"] == pytest.approx(4.0)
    assert s["mean"] == pytest.approx(2.5)
    assert sim.latency_summary([])["p95"] == 0.0


# -- mix and customers --------------------------------------------------------------------------


def test_parse_mix():
    assert sim.parse_mix("query=50,pay=40,reverse=10") == pytest.approx(
        {"query": 0.5, "pay": 0.4, "reverse": 0.1})
    assert sim.parse_mix(" pay = 1 ") == {"pay": 1.0}
    assert sim.parse_mix("query=3,pay=0") == {"query": 1.0}


@pytest.mark.parametrize("text,problem", [
    ("query=50,refund=10", "unknown transaction"),
    ("query=1,query=2", "twice"),
    ("query=-1,pay=2", "0 or more"),
    ("query=0", "nothing"),
    ("query", "NAME=WEIGHT"),
    ("query=x", "not a number"),
    ("query=nan", "0 or more"),
    ("", "nothing"),
])
def test_parse_mix_errors(text, problem):
    with pytest.raises(sim.SimulateError, match=problem):
        sim.parse_mix(text)


def test_parse_customers():
    assert sim.parse_customers("100000001-100000003") == ["100000001", "100000002", "100000003"]
    assert sim.parse_customers("0001-0003,X9") == ["0001", "0002", "0003", "X9"]
    for bad in ("5-1", "a b", "", "1-99999999"):
        with pytest.raises(sim.SimulateError):
            sim.parse_customers(bad)


def test_endpoint_address():
    assert sim.endpoint_address("tcp:9101:interface=127.0.0.1") == ("127.0.0.1", 9101)
    assert sim.endpoint_address("tcp:port=9102") == ("127.0.0.1", 9102)
    assert sim.endpoint_address("tcp:9103:interface=0.0.0.0") == ("127.0.0.1", 9103)
    assert sim.endpoint_address("tcp6:9104:interface=\\:\\:1") == ("::1", 9104)
    with pytest.raises(sim.SimulateError, match="plain TCP"):
        sim.endpoint_address("ssl:443:privateKey=k.pem")


# -- arguments -----------------------------------------------------------------------------------


@pytest.fixture
def cfg(tmp_path):
    c = default_config(str(tmp_path))
    return c, check_plugins(c)


def parse(argv):
    return build_parser().parse_args(argv)


@pytest.mark.parametrize("argv", [
    ["simulate", "--bank", "demo-fixed"],  # no transaction
    ["simulate", "--bank", "demo-fixed", "pay", "100000001", "12.345"],
    ["simulate", "--bank", "demo-fixed", "pay", "100000001", "-5"],
    ["simulate", "--bank", "demo-fixed", "status", "S1", "2026-13-01"],
    ["simulate", "--bank", "demo-fixed", "load", "--rate", "-1"],
    ["simulate", "--bank", "demo-fixed", "load", "--duration", "0"],
    ["simulate", "--bank", "demo-fixed", "load", "--duration", "100000"],
    ["simulate", "--bank", "demo-fixed", "load", "--concurrency", "0"],
    ["simulate", "--bank", "demo-fixed", "load", "--mix", "query=1,bogus=2"],
    ["simulate", "--bank", "demo-fixed", "load", "--customers", "9-1"],
    ["simulate", "--bank", "demo-fixed", "load", "--customers", "1-2", "--customers-from-db"],
    ["simulate", "--bank", "demo-fixed", "--timeout", "0", "echo"],
])
def test_argument_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2


def test_arguments_parse_amounts_dates_and_config_either_side():
    a = parse(["--config", "x.toml", "simulate", "--bank", "demo-fixed", "pay", "100000001",
               "1234.5"])
    assert a.config == "x.toml" and a.amount == 123450 and a.sim_command == "pay"
    a = parse(["simulate", "--config", "y.toml", "--bank", "b", "status", "S1", "20261127"])
    assert a.config == "y.toml" and a.date == date(2026, 11, 27)
    a = parse(["simulate", "--bank", "b", "load", "--customers", "1-3"])
    assert a.customers == ["1", "2", "3"] and a.mix == pytest.approx(
        {"query": 0.5, "pay": 0.4, "reverse": 0.1})


def test_prepare_resolves_the_bank_from_the_config(cfg):
    c, codecs = cfg
    plan = simcli.prepare(parse(["simulate", "--bank", "demo-delim", "echo"]), c, codecs)
    [t] = plan.targets
    assert (t.host, t.port, t.codec.name, t.profile.bank_code) == (
        "127.0.0.1", 9102, "ref-delim", "103210")
    plan = simcli.prepare(parse(["simulate", "--bank", "demo-fixed", "--host", "10.0.0.5",
                              "--port", "7000", "echo"]), c, codecs)
    assert (plan.targets[0].host, plan.targets[0].port) == ("10.0.0.5", 7000)


@pytest.mark.parametrize("argv,problem", [
    (["simulate", "echo"], "which bank"),
    (["simulate", "--bank", "nope", "echo"], "no bank named"),
    (["simulate", "--bank", "demo-delim", "status", "S1"], "no status"),
    (["simulate", "--bank", "demo-fixed", "signin"], "no signin"),
    (["simulate", "--bank", "demo-iso8583", "cutoff", "2026-11-27"], "no cutoff"),
    (["simulate", "--bank", "demo-fixed", "reverse", "S", "C", "1", "--advice"], "no advice"),
    (["simulate", "--bank", "demo-fixed", "confirm", "P1"],
     r"^bank demo-fixed \(plugin ref-fixed\) has no confirm operation; it supports: query,"
     r" pay, reverse, status, notice, echo$"),
    (["simulate", "--bank", "demo-delim", "prepay", "1"], "no prepay operation"),
    (["simulate", "--bank", "demo-iso8583", "cancel", "P1"], "no cancel operation"),
    (["simulate", "--bank", "demo-fixed", "load"], "--customers"),
    (["simulate", "--bank", "demo-fixed", "load", "--banks", "demo-delim",
      "--customers", "1-2"], "not both"),
    (["simulate", "load", "--banks", "demo-fixed,demo-fixed", "--customers", "1-2"], "twice"),
    (["simulate", "--bank", "demo-fixed", "--host", "192.0.2.7", "load",
      "--customers", "1-2"], "refusing"),
])
def test_prepare_errors(cfg, argv, problem):
    c, codecs = cfg
    with pytest.raises(sim.SimulateError, match=problem):
        simcli.prepare(parse(argv), c, codecs)


def test_prepare_load_for_several_banks(cfg):
    c, codecs = cfg
    plan = simcli.prepare(parse(["simulate", "load", "--banks", "demo-fixed,demo-iso8583",
                              "--customers", "100000001-100000010"]), c, codecs)
    assert [t.port for t in plan.targets] == [9101, 9103]
    assert len(plan.customers) == 10


def test_main_reports_usage_errors_without_a_reactor(capsys):
    args = parse(["simulate", "--bank", "nope", "echo"])
    assert simcli.main(args) == 2
    assert "no bank named" in capsys.readouterr().err


# -- load pacing on a clock ----------------------------------------------------------------------


class FakeClient:
    timeout = 1.0
    pipelined = False


class FakeSim:
    """Answers every operation at once (or after ``delay`` on the clock)."""

    codec = FIXED

    def __init__(self, reactor, delay: float = 0.0):
        self.reactor = reactor
        self.delay = delay
        self.client = FakeClient()
        self.bank = "fake"
        self.observer = None
        self.calls: list[tuple] = []

    def _answer(self, op, code="0000", request=None):
        a = sim.Answer(op=op, txn=op, request=request or {}, code=code, meaning="",
                       approved=code == "0000", fields={}, bills=[], latency=self.delay)
        self.observer(op, a, None, self.delay)
        return a

    async def _wait(self):
        if self.delay:
            d = defer.Deferred()
            self.reactor.callLater(self.delay, d.callback, None)
            await d

    async def query(self, customer):
        self.calls.append(("query", customer))
        await self._wait()
        return self._answer("query")

    async def pay_due(self, customer):
        self.calls.append(("pay", customer))
        await self._wait()
        return [self._answer("query"),
                self._answer("pay", request={"serial": f"S{len(self.calls)}", "amount": 100})]

    async def reverse(self, serial, customer, amount, **kw):
        self.calls.append(("reverse", serial))
        await self._wait()
        return self._answer("reverse")


def test_load_is_paced_by_the_clock_and_stops_after_the_duration():
    reactor = MemoryReactorClock()
    sims = [FakeSim(reactor) for _ in range(2)]
    runner = sim.LoadRunner(reactor, sims, ["100000001"], {"query": 1.0}, rate=10,
                            duration=1.0, rng=random.Random(0))
    done = results(runner.start())
    for _ in range(150):
        reactor.advance(0.01)
    assert done and isinstance(done[0], sim.LoadStats)
    st = done[0]
    assert st.scenarios == 10  # 10 per second for 1 second, at t = 0, 0.1, ... 0.9
    assert st.sent["query"] == 10 and st.answered[("query", "0000")] == 10
    assert st.elapsed == pytest.approx(1.0, abs=0.02)
    assert st.summary()["tps"] == pytest.approx(10, abs=0.5)
    assert not reactor.getDelayedCalls()  # nothing left running


def test_load_concurrency_bounds_the_requests_in_flight():
    reactor = MemoryReactorClock()
    sims = [FakeSim(reactor, delay=0.5)]
    runner = sim.LoadRunner(reactor, sims, ["1"], {"query": 1.0}, rate=0, duration=2.0,
                            rng=random.Random(0))
    done = results(runner.start())
    peak = 0
    for _ in range(300):
        peak = max(peak, runner.in_flight)
        reactor.advance(0.01)
    assert peak == 1
    assert done[0].scenarios == 4  # one at a time, 0.5 s each, for 2 s
    assert done[0].unfinished == 0


def test_load_reverses_payments_it_made():
    reactor = MemoryReactorClock()
    fake = FakeSim(reactor)
    runner = sim.LoadRunner(reactor, [fake], ["1"], {"pay": 0.5, "reverse": 0.5}, rate=20,
                            duration=1.0, rng=random.Random(4))
    results(runner.start())
    for _ in range(120):
        reactor.advance(0.01)
    reversed_ = [c[1] for c in fake.calls if c[0] == "reverse"]
    assert reversed_ and len(set(reversed_)) == len(reversed_)  # never one twice
    assert runner.stats.sent["reverse"] == len(reversed_)


def test_load_drain_is_bounded():
    reactor = MemoryReactorClock()
    sims = [FakeSim(reactor, delay=100.0)]  # never answers in time
    runner = sim.LoadRunner(reactor, sims, ["1"], {"query": 1.0}, rate=1, duration=1.0,
                            drain=2.0, rng=random.Random(0))
    done = results(runner.start())
    reactor.advance(1.0)
    reactor.advance(2.0)
    assert done[0].unfinished == 1


def test_load_arguments_are_checked():
    reactor = MemoryReactorClock()
    with pytest.raises(sim.SimulateError):
        sim.LoadRunner(reactor, [], ["1"], {"query": 1.0}, rate=1, duration=1)
    with pytest.raises(sim.SimulateError):
        sim.LoadRunner(reactor, [FakeSim(reactor)], [], {"query": 1.0}, rate=1, duration=1)


def test_stats_summary_counts_codes_and_errors():
    st = sim.LoadStats(bank="b", meanings={"0000": "approved", "1002": "nothing to pay"})
    a = sim.Answer(op="query", txn="query", request={}, code="0000", meaning="",
                   approved=True, fields={}, bills=[], latency=0.01)
    st.observe("query", a, None, 0.010)
    st.observe("query", a, None, 0.030)
    st.observe("pay", None, sim.RequestTimeout("x"), 10.0)
    st.started, st.ended = 100.0, 102.0
    s = st.summary()
    assert s["sent"] == 3 and s["answered"] == 2 and s["tps"] == 1.0
    assert s["codes"] == {"0000": {"count": 2, "meaning": "approved"}}
    assert s["errors"] == {"pay:RequestTimeout": 1}
    assert s["latency_ms"]["p50"] == 10.0 and s["latency_ms"]["p99"] == 30.0


def test_rendering_never_shows_a_mac(cfg):
    from rich.console import Console

    c, codecs = cfg
    t = sim.resolve_target(c, codecs, "demo-fixed")
    a = sim.make_answer(FIXED, "query", "query", {"customer_no": "1", "serial": "S"},
                        {"resp_code": "0000", "resp_msg": "ok", "mac": "50E50B64338D6957",
                         "mac_ok": True, "customer_no": "1", "total_due": 100,
                         "bills": [{"bill_id": "B1", "amount": 100, "late_fee": 0}]}, 0.002)
    console = Console(record=True, width=120)
    console.print(simcli.render_request(t, a))
    console.print(simcli.render_answer(a))
    text = console.export_text()
    assert "50E50B64338D6957" not in text
    assert "0000" in text and "B1" in text and "1.00" in text


# -- customers from the database ---------------------------------------------------------------


@pytest.mark.parametrize("renamed", [False, True], ids=["reference", "renamed"])
def test_customers_with_open_bills_come_through_the_mapping(tmp_path, renamed):
    import sqlalchemy as sa

    from bankgate.devtools.demo import seed
    from bankgate.store.db import Store
    from bankgate.store.n8 import N8Mapping

    mapping = N8Mapping()
    if renamed:  # as a real N8 installation might name them
        mapping = N8Mapping(
            tables={"customer": "HRB_KH", "bill": "HRB_ZD"},
            columns={"customer": {"customer_no": "KHBH", "status": "ZT"},
                     "bill": {"customer_no": "KHBH", "amount": "YSJE",
                              "paid_amount": "SSJE"}},
        )
    store = Store(f"sqlite:///{tmp_path / 'n8.db'}", mapping, threads=1)
    try:
        store.create_n8_tables()
        seed(store, 12, today=date(2026, 11, 27))
        c, b = store.n8["customer"], store.n8["bill"]
        with store.n8_engine.begin() as conn:
            conn.execute(sa.update(b).where(b.c.customer_no == "100000002")
                         .values(paid_amount=b.c.amount))  # paid up
            conn.execute(sa.update(c).where(c.c.customer_no == "100000003")
                         .values(status="S"))  # suspended
            active = {r[0] for r in conn.execute(sa.select(c.c.customer_no)
                                                  .where(c.c.status == "A"))}
        got = sim.customers_with_open_bills(store)
        assert got == sorted(got)
        assert "100000002" not in got and "100000003" not in got
        assert set(got) <= active and len(got) >= 8
        assert sim.customers_with_open_bills(store, limit=3) == got[:3]
    finally:
        store.stop()


# -- two-phase banks: prepay, confirm, cancel ------------------------------------------------------

#: a made-up two-phase spec: JSON over a 4-digit length; the gateway side is the test's
TWO_PHASE = """
import json
from datetime import date

from bankgate.canon.messages import Outcome
from bankgate.codec.base import Framing
from bankgate.codec.capabilities import SimulatorTraits

CODES = {Outcome.OK: "00", Outcome.NOT_FOUND: "10", Outcome.EXPIRED: "24",
         Outcome.STATE_NOT_ALLOWED: "23"}


class Codec:
    name = "NAME"
    framing = Framing(kind="ascii4", max_length=9999)
    simulator_traits = SimulatorTraits(OPS, two_phase=True)

    def decode(self, frame, session):
        raise NotImplementedError  # the tests play the gateway

    def outcome_code(self, outcome):
        return CODES.get(outcome, "99")

    def client_encode(self, txn, values, session):
        return json.dumps({"txn": txn, **values}, default=str).encode()

    def client_decode(self, frame, session):
        return json.loads(frame)

    def layouts(self):
        return {}


CODEC = Codec()
"""
ALL_OPS = '{"query": "Q", "prepay": "PP", "confirm": "CF", "cancel": "CX", "status": "ST"}'


def two_phase_codec(ops: str = ALL_OPS, name: str = "two-phase"):
    ns: dict = {}
    exec(TWO_PHASE.replace("NAME", name).replace("OPS", ops), ns)  # noqa: S102 - the test's
    return ns["CODEC"]


TP_BANK = BankProfile(name="tp-bank", plugin="two-phase", bank_code="900001")


class JsonGateway:
    """The gateway's side for the made-up spec: frames in, answers out, by hand."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.proto = self.transport = None
        self.seen: list[dict] = []

    def request(self) -> dict:
        import json

        if self.proto is None:
            self.proto, self.transport = accept(self.reactor)
        [frame] = split_frames("ascii4", self.transport.value())
        self.transport.clear()
        self.seen.append(json.loads(frame))
        return self.seen[-1]

    def answer(self, **fields) -> None:
        import json

        self.proto.dataReceived(prefix("ascii4", json.dumps(fields).encode()))


def test_pay_on_a_two_phase_bank_prepays_then_confirms_that_prepay():
    reactor = MemoryReactorClock()
    s = sim.BankSimulator(client(reactor, two_phase_codec(), TP_BANK))
    seen = []
    s.observer = lambda op, a, e, t: seen.append((op, a.code))
    r = results(defer.ensureDeferred(s.pay_due("100000001")))
    gw = JsonGateway(reactor)
    q = gw.request()
    assert q["txn"] == "Q" and q["customer_no"] == "100000001"
    gw.answer(code="00", customer_no="100000001", total_due=4321, late_fee=100)
    pre = gw.request()
    assert pre["txn"] == "PP" and pre["amount"] == 4421 and len(pre["serial"]) == 20
    gw.answer(code="00", order_no="20261127000000000042", expire_time="20261127094015")
    conf = gw.request()
    assert conf["txn"] == "CF"
    assert (conf["orig_serial"], conf["orig_date"], conf["order_no"]) == (
        pre["serial"], "2026-11-27", "20261127000000000042")
    assert conf["serial"] != pre["serial"]  # the confirm's own serial
    gw.answer(code="00", receipt_no="20261127000000000042", invoice_no="INV7")
    [[query, prepay, confirm]] = r
    assert [a.op for a in (query, prepay, confirm)] == ["query", "prepay", "confirm"]
    assert confirm.approved and confirm.fields["invoice_no"] == "INV7"
    assert seen == [("query", "00"), ("prepay", "00"), ("confirm", "00")]


def test_a_declined_prepay_is_not_confirmed():
    reactor = MemoryReactorClock()
    s = sim.BankSimulator(client(reactor, two_phase_codec(), TP_BANK))
    r = results(defer.ensureDeferred(s.settle("100000001", 500)))
    gw = JsonGateway(reactor)
    assert gw.request()["txn"] == "PP"
    gw.answer(code="10")
    [[prepay]] = r
    assert not prepay.approved and prepay.meaning == "customer not found"
    assert gw.transport.value() == b""  # nothing more was sent


@pytest.mark.parametrize("op,txn", [("confirm", "CF"), ("cancel", "CX")])
def test_confirm_and_cancel_are_single_transactions_naming_the_prepay(op, txn):
    reactor = MemoryReactorClock()
    s = sim.BankSimulator(client(reactor, two_phase_codec(), TP_BANK))
    r = results(defer.ensureDeferred(getattr(s, op)("P0001", date(2026, 11, 26), "ORD1",
                                                    serial="C0001")))
    gw = JsonGateway(reactor)
    req = gw.request()
    assert req == {"txn": txn, "orig_serial": "P0001", "orig_date": "2026-11-26",
                   "order_no": "ORD1", "serial": "C0001"}
    gw.answer(code="24")
    [answer] = r
    assert not answer.approved and answer.meaning == "order expired"
    # no date: the trade date; no order number: none sent
    r = results(defer.ensureDeferred(getattr(s, op)("P0002")))
    req = gw.request()
    assert req["orig_date"] == "2026-11-27" and "order_no" not in req
    gw.answer(code="23")
    assert r[0].meaning == "the payment's state does not allow this"


def test_a_two_phase_bank_without_confirm_cannot_pay():
    reactor = MemoryReactorClock()
    codec = two_phase_codec('{"query": "Q", "prepay": "PP"}')
    s = sim.BankSimulator(client(reactor, codec, TP_BANK))
    r = results(defer.ensureDeferred(s.settle("100000001", 500)))
    assert r[0].check(sim.SimulateError)
    assert str(r[0].value) == ("bank tp-bank (plugin two-phase) has no confirm operation;"
                               " it supports: query, prepay")
    assert not reactor.tcpClients  # refused before connecting


TP_CONFIG = """
[gateway]
data_dir = "{data}"
plugin_dirs = ["{plugins}"]

[[bank]]
name = "tp"
plugin = "{name}"
bank_code = "900001"
listen = ["tcp:19911:interface=127.0.0.1"]
"""


@pytest.fixture
def tp_cfg(tmp_path):
    """A configuration with one bank of the made-up two-phase plugin, from a plugin folder."""
    from bankgate.app.config import load_config

    def make(ops: str = ALL_OPS):
        n = len(list(tmp_path.glob("plugins*")))
        folder = tmp_path / f"plugins{n}"
        folder.mkdir()
        name = f"tp-{tmp_path.name}-{n}".replace("_", "-").lower()
        (folder / f"{name.replace('-', '_')}.py").write_text(
            TWO_PHASE.replace("NAME", name).replace("OPS", ops), encoding="utf-8")
        f = tmp_path / f"bankgate{n}.toml"
        f.write_text(TP_CONFIG.format(data=(tmp_path / "var").as_posix(),
                                      plugins=folder.as_posix(), name=name), encoding="utf-8")
        c = load_config(f)
        return c, check_plugins(c)

    return make


def test_arguments_of_prepay_confirm_and_cancel():
    a = parse(["simulate", "--bank", "b", "prepay", "100000001", "12.5", "--serial", "P1"])
    assert (a.sim_command, a.customer, a.amount, a.serial) == ("prepay", "100000001", 1250, "P1")
    for op in ("confirm", "cancel"):
        a = parse(["simulate", "--bank", "b", op, "P1", "--order", "O1", "--date", "2026-11-26",
                   "--serial", "C1"])
        assert (a.sim_command, a.orig_serial, a.order_no, a.orig_date, a.serial) == (
            op, "P1", "O1", date(2026, 11, 26), "C1")
        a = parse(["simulate", "--bank", "b", op, "P1"])
        assert a.order_no is None and a.orig_date is None


def test_prepare_checks_the_operations_the_plugin_maps(tp_cfg):
    c, codecs = tp_cfg()
    for argv in (["confirm", "P1"], ["cancel", "P1"], ["prepay", "1"], ["pay", "1", "5"],
                 ["status", "P1"]):
        simcli.prepare(parse(["simulate", "--bank", "tp", *argv]), c, codecs)
    with pytest.raises(sim.SimulateError, match=r"bank tp \(plugin tp-.*\) has no reverse"
                                                r" operation; it supports: query, prepay,"
                                                r" confirm, cancel, status$"):
        simcli.prepare(parse(["simulate", "--bank", "tp", "reverse", "P1", "1", "5"]), c,
                       codecs)
    c, codecs = tp_cfg('{"prepay": "PP", "confirm": "CF"}')
    with pytest.raises(sim.SimulateError, match="has no query operation"):  # pay what is due
        simcli.prepare(parse(["simulate", "--bank", "tp", "pay", "1"]), c, codecs)
    simcli.prepare(parse(["simulate", "--bank", "tp", "pay", "1", "5.00"]), c, codecs)
    c, codecs = tp_cfg('{"query": "Q", "prepay": "PP"}')
    with pytest.raises(sim.SimulateError, match="has no confirm operation"):
        simcli.prepare(parse(["simulate", "--bank", "tp", "pay", "1", "5.00"]), c, codecs)


def test_simulate_pay_on_a_two_phase_bank_shows_both_answers(tp_cfg):
    from rich.console import Console

    c, codecs = tp_cfg()
    plan = simcli.prepare(parse(["simulate", "--bank", "tp", "pay", "100000001", "12.34",
                                 "--serial", "P0001"]), c, codecs)
    reactor = MemoryReactorClock()
    console = Console(record=True, width=120)
    r = results(defer.ensureDeferred(simcli.run_plan(reactor, plan, console)))
    gw = JsonGateway(reactor)
    pre = gw.request()
    assert (pre["txn"], pre["serial"], pre["amount"]) == ("PP", "P0001", 1234)
    gw.answer(code="00", order_no="ORD9")
    conf = gw.request()
    assert (conf["txn"], conf["orig_serial"], conf["order_no"]) == ("CF", "P0001", "ORD9")
    gw.answer(code="00", receipt_no="ORD9", invoice_no="")
    gw.proto.connectionLost(Failure(ConnectionDone()))
    assert r == [0]
    text = console.export_text()
    assert text.index("→ prepay") < text.index("→ confirm")
    assert text.count("approved") == 2 and "ORD9" in text


def test_simulate_confirm_exits_1_when_declined(tp_cfg):
    from rich.console import Console

    c, codecs = tp_cfg()
    plan = simcli.prepare(parse(["simulate", "--bank", "tp", "confirm", "P0001", "--order",
                                 "ORD9"]), c, codecs)
    reactor = MemoryReactorClock()
    console = Console(record=True, width=120)
    r = results(defer.ensureDeferred(simcli.run_plan(reactor, plan, console)))
    gw = JsonGateway(reactor)
    assert gw.request()["order_no"] == "ORD9"
    gw.answer(code="23")
    gw.proto.connectionLost(Failure(ConnectionDone()))
    assert r == [1]
    assert "the payment's state does not allow this" in console.export_text()


def test_load_pays_a_two_phase_bank_with_prepay_and_confirm():
    """The load runner's payment scenario goes through :meth:`BankSimulator.pay_due`:
    a two-phase payment is remembered (for a later reversal) only once confirmed."""
    reactor = MemoryReactorClock()
    s = sim.BankSimulator(client(reactor, two_phase_codec(), TP_BANK))
    runner = sim.LoadRunner(reactor, [s], ["100000001"], {"pay": 1.0}, rate=0, duration=5,
                            rng=random.Random(0))
    d = defer.ensureDeferred(runner._scenario(s, "pay"))
    gw = JsonGateway(reactor)
    gw.request()
    gw.answer(code="00", total_due=700, late_fee=0)
    gw.request()
    gw.answer(code="00", order_no="ORD1")
    conf = gw.request()
    assert conf["txn"] == "CF"
    gw.answer(code="00", receipt_no="ORD1")
    assert results(d) == [None]
    [paid] = runner.paid
    assert paid.amount == 700 and paid.serial == gw.seen[1]["serial"]


def test_a_request_the_codec_cannot_build_is_a_simulate_error_naming_what_is_missing():
    """A plugin's client_encode refusing the values (say, a confirm without the order
    number its spec requires) is the user's mistake: a SimulateError (exit 2), not
    "no answer from the gateway"."""
    reactor = MemoryReactorClock()
    codec = two_phase_codec()

    def refuse(txn, values, session):
        raise ValueError("order_no is required")

    codec.client_encode = refuse
    s = sim.BankSimulator(client(reactor, codec, TP_BANK))
    r = results(defer.ensureDeferred(s.confirm("P0001")))
    _proto, transport = accept(reactor)  # the connection is made; nothing is sent on it
    [failure] = r
    assert transport.value() == b""
    assert failure.check(sim.SimulateError)
    assert str(failure.value) == "cannot build the CF request: order_no is required"
