"""The live figures per bank link, /api/live and its server-sent event stream."""

from __future__ import annotations

import json
from datetime import date, datetime

from console_helpers import bank_factory, body, connect, frame, get
from twisted.internet import task
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from bankgate.app.console.live import LiveFigures, LiveResource, Ring
from bankgate.canon import messages as m

T0 = datetime(2026, 11, 27, 9, 30).timestamp()


def setup(links=None):
    clock = Clock()
    clock.advance(T0)
    factory = bank_factory(clock, "bank-a")
    now = lambda: datetime.fromtimestamp(clock.seconds())  # noqa: E731
    live = LiveFigures(clock, now, [("bank-a", factory, ["tcp:9101"])],
                       debit_links=links or dict)
    return clock, factory, live


def figures(live) -> dict:
    [b] = live.snapshot()["banks"]
    return b


def test_requests_per_minute_counts_the_last_sixty_seconds():
    clock, factory, live = setup()
    proto, _ = connect(factory)
    for _ in range(30):
        proto.dataReceived(frame("PAY 1"))
        clock.advance(1)  # one a second for 30 s
    assert figures(live)["requests_per_minute"] == 30
    clock.advance(39)  # now t0+69: the minute is t0+10 .. t0+69, the first ten left it
    assert figures(live)["requests_per_minute"] == 20
    clock.advance(61)
    b = figures(live)
    assert b["requests_per_minute"] == 0 and b["requests_5m"] == 30


def test_error_rate_over_five_minutes_counts_failures_not_refusals():
    clock, factory, live = setup()
    proto, _ = connect(factory)
    proto.dataReceived(frame("PAY 1 BUSY"))  # an error
    clock.advance(100)
    proto.dataReceived(frame("PAY 2 NOT_FOUND"))  # a business refusal: not one
    proto.dataReceived(frame("PAY 3"))
    proto.dataReceived(frame("PAY 4 FORMAT_ERROR"))  # an error
    b = figures(live)
    assert (b["requests_5m"], b["errors_5m"], b["error_rate_5m"]) == (4, 2, 0.5)
    clock.advance(201)  # the BUSY one is now older than five minutes
    b = figures(live)
    assert (b["requests_5m"], b["errors_5m"], b["error_rate_5m"]) == (3, 1, round(1 / 3, 4))
    proto.dataReceived(frame("BOOM"))  # a codec failure counts too
    clock.advance(299)  # its second is the oldest of the window, the others have left
    assert figures(live)["error_rate_5m"] == 1.0
    clock.advance(1)
    assert figures(live)["error_rate_5m"] is None  # nothing in the window


def test_last_message_and_seconds_since_peers_and_listening():
    clock, factory, live = setup()
    b = figures(live)
    assert b["last_message"] is None and b["seconds_since"] is None and b["peers"] == 0
    assert b["endpoints"] == ["tcp:9101"] and b["listening"] == 0
    factory.doStart()  # a port listens
    proto, _ = connect(factory)
    proto.dataReceived(frame("ECHO"))
    clock.advance(42)
    b = figures(live)
    assert b["last_message"] == "2026-11-27T09:30:00"
    assert b["seconds_since"] == 42 and b["peers"] == 1 and b["listening"] == 1
    proto.connectionLost(Failure(ConnectionDone()))
    clock.advance(1)
    assert figures(live)["peers"] == 0


def test_accepted_payments_from_the_ledger_listener():
    clock, _factory, live = setup()
    req = m.PaymentRequest(m.Origin("bank-a", date(2026, 11, 27)), "S1", "100000123", 100)
    live.on_request(req, m.PaymentResult(m.Outcome.OK))
    live.on_request(req, m.PaymentResult(m.Outcome.NOT_FOUND))  # not accepted
    live.on_request(m.PaymentRequest(m.Origin("other", date(2026, 11, 27)), "S", "1", 1),
                    m.PaymentResult(m.Outcome.OK))  # a bank we do not show
    b = figures(live)
    assert b["payments_per_minute"] == 1 and b["last_payment"] == "2026-11-27T09:30:00"


def test_debit_link_state_where_there_is_one():
    class Link:
        def status(self):
            return {"bank": "bank-a", "connected": False, "connects": 3, "queued": 2,
                    "stray": 0, "last_answer_at": None}

    _, _, live = setup(links=lambda: {"bank-a": Link()})
    assert figures(live)["debit_link"] == {"connected": False, "queued": 2, "connects": 3,
                                           "last_answer_at": None}
    _, _, plain = setup()
    assert figures(plain)["debit_link"] is None


def test_ring_forgets_what_is_older_than_its_window():
    r = Ring(size=10)
    r.add(100.5, error=False)
    r.add(105.0, error=True)
    assert r.totals(105.9, 10) == (2, 1, 0)
    assert r.totals(109.0, 10) == (2, 1, 0)
    assert r.totals(110.0, 10) == (1, 1, 0)  # second 100 left the window
    r.add(110.2, error=False)  # reuses second 100's bucket
    assert r.totals(110.2, 10) == (2, 1, 0)
    assert r.totals(110.2, 1) == (1, 0, 0)


def test_api_live_is_json():
    clock, factory, live = setup()
    connect(factory)[0].dataReceived(frame("PAY 1"))
    r = get(LiveResource(live))
    assert r.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"application/json")
    doc = json.loads(body(r))
    assert doc["at"] == "2026-11-27T09:30:00"
    assert doc["banks"][0]["bank"] == "bank-a" and doc["banks"][0]["requests_per_minute"] == 1


def events(request) -> list[dict]:
    text = body(request).decode()
    return [json.loads(line[len("data: "):]) for line in text.splitlines()
            if line.startswith("data: ")]


def timers(clock) -> list:
    """The clock's repeating timers (not a connection's idle timeout)."""
    return [c for c in clock.getDelayedCalls()
            if isinstance(c.func, task.LoopingCall)]


def test_stream_sends_an_event_a_second_only_while_someone_listens():
    clock, factory, live = setup()
    stream = LiveResource(live).stream
    assert timers(clock) == []
    a = get(stream)
    assert a.responseHeaders.getRawHeaders(b"content-type") == [
        b"text/event-stream; charset=utf-8"]
    assert not a.finished and len(events(a)) == 1  # the first at once
    clock.advance(0.5)
    assert len(events(a)) == 1  # not more than one a second
    connect(factory)[0].dataReceived(frame("PAY 1"))
    clock.advance(0.5)
    assert len(events(a)) == 2
    assert events(a)[-1]["banks"][0]["requests_per_minute"] == 1
    b = get(stream)
    assert len(timers(clock)) == 1  # one timer for every client
    clock.advance(1)
    assert (len(events(a)), len(events(b))) == (3, 2)
    a.processingFailed(Failure(ConnectionDone()))  # the browser tab closes
    clock.advance(1)
    assert (len(events(a)), len(events(b))) == (3, 3)
    b.processingFailed(Failure(ConnectionDone()))
    assert timers(clock) == []  # nobody listens: no timer
    clock.advance(10)
    assert len(events(b)) == 3
    c = get(stream)  # a new client starts it again
    clock.advance(1)
    assert len(events(c)) == 2


def test_stream_refuses_beyond_its_client_limit():
    _, _, live = setup()
    stream = LiveResource(live).stream
    stream.max_clients = 1
    get(stream)
    r = get(stream)
    assert r.responseCode == 503 and r.finished
