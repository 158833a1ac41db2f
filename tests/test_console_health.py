"""/healthz: 200 when the database answers and everything runs, 503 with the reason."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from console_helpers import ThreadedMemoryReactor, body, get, synchronous
from twisted.internet import defer
from twisted.internet.task import Clock

from bankgate.app.console.health import HealthCheck, HealthResource, health_resource
from bankgate.store.db import Store


@pytest.fixture
def sqlite_store(tmp_path):
    s = synchronous(Store(f"sqlite:///{tmp_path / 'h.db'}"))
    yield s
    s.stop()


def answer(request):
    return request.responseCode, json.loads(body(request))


def test_ok_when_the_database_answers(sqlite_store):
    res = HealthResource(HealthCheck(sqlite_store, Clock(), lambda: [("bank a", None)]))
    r = get(res)
    assert r.finished
    code, doc = answer(r)
    assert code == 200
    assert doc == {"status": "ok", "checks": {"database": "ok", "bank a": "ok"}}
    assert r.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"application/json")
    assert r.responseHeaders.getRawHeaders(b"cache-control") == [b"no-store"]


def test_503_with_the_reason_when_the_database_is_away():
    # nothing listens on port 1: the driver refuses at once
    store = synchronous(Store("postgresql+psycopg://postgres@127.0.0.1:1/nowhere"))
    try:
        code, doc = answer(get(HealthResource(HealthCheck(store, Clock()))))
    finally:
        store.stop()
    assert code == 503
    assert doc["status"] == "fail" and doc["checks"]["database"] == "fail"
    [reason] = doc["reasons"]
    assert reason.startswith("database: ") and "127.0.0.1" in reason


class HangingStore:
    """A database that never answers: the probe's thread is stuck."""

    def __init__(self):
        self.calls = []

    def call(self, fn, *args):
        d = defer.Deferred()
        self.calls.append(d)
        return d


def test_a_database_that_hangs_answers_503_after_the_timeout_and_probes_once():
    store, clock = HangingStore(), Clock()
    res = HealthResource(HealthCheck(store, clock, timeout=2.0))
    first, second = get(res), get(res)
    assert not first.finished and not second.finished
    assert len(store.calls) == 1  # the second request waits on the same probe
    clock.advance(1.9)
    assert not first.finished
    clock.advance(0.2)
    for r in (first, second):
        code, doc = answer(r)
        assert code == 503 and doc["reasons"] == ["database: no answer within 2 s"]
    store.calls[0].callback(None)  # the stuck thread comes back late: nothing breaks
    # the next request probes again
    get(res)
    assert len(store.calls) == 2


def test_503_when_a_listener_is_down(sqlite_store):
    checks = [("bank a", None), ("bank b", "listening on 0 of 1 endpoint(s)")]
    code, doc = answer(get(HealthResource(HealthCheck(sqlite_store, Clock(), lambda: checks))))
    assert code == 503
    assert doc["checks"] == {"database": "ok", "bank a": "ok", "bank b": "fail"}
    assert doc["reasons"] == ["bank b: listening on 0 of 1 endpoint(s)"]


def test_a_client_gone_before_the_answer_is_not_written_to():
    store, clock = HangingStore(), Clock()
    r = get(HealthResource(HealthCheck(store, clock)))
    r.processingFailed(Exception("gone"))
    store.calls[0].callback(None)
    assert r.written == []


# -- a whole gateway service -----------------------------------------------------------


def test_a_gateway_service_checks_its_listeners_and_schedulers(tmp_path):
    from bankgate.app.config import default_config
    from bankgate.app.tap import gateway as build_gateway

    cfg = default_config(str(tmp_path / "var"))
    cfg.demo_customers = 0
    reactor = ThreadedMemoryReactor()
    reactor.advance(datetime(2026, 11, 27, 9, 30).timestamp())
    gw = build_gateway(cfg, reactor)
    res = health_resource(gw, timeout=30)

    def healthz():
        r = get(res)
        if not r.finished:  # the probe runs on the store's real thread pool
            reactor.pump_until(r.notifyFinish())
        return answer(r)

    gw.startService()
    try:
        code, doc = healthz()
        assert code == 503 and "service: starting" in doc["reasons"]
        reactor.pump_until(gw.ready)
        # a memory reactor's listenTCP does not start the factory as a real port does
        code, doc = healthz()
        assert code == 503
        assert f"bank {cfg.banks[0].name}: listening on 0 of 1 endpoint(s)" in doc["reasons"]
        for f in gw.factories.values():
            f.doStart()  # what a real port does when it listens
        code, doc = healthz()
        assert (code, doc["status"]) == (200, "ok"), doc
        assert doc["checks"]["cut-off scheduler"] == "ok"
        gw.scheduler.stop()
        code, doc = healthz()
        assert code == 503 and doc["reasons"] == ["cut-off scheduler: not running"]
    finally:
        reactor.pump_until(gw.stopService())


def test_the_console_serves_healthz_and_metrics_without_sign_in_but_not_the_live_view(
        tmp_path):
    from twisted.web.test.requesthelper import DummyRequest

    from bankgate.app.config import default_config
    from bankgate.app.console.health import HealthResource
    from bankgate.app.console.metrics import MetricsResource
    from bankgate.app.tap import gateway as build_gateway

    cfg = default_config(str(tmp_path / "var"))
    gw = build_gateway(cfg, ThreadedMemoryReactor())
    site = gw.console.site

    def resource_for(path: bytes):
        request = DummyRequest(path.split(b"/")[1:])
        request.method, request.path = b"GET", path
        request.getCookie = lambda name: None  # no session
        return site.getResourceFor(request)

    assert isinstance(resource_for(b"/healthz"), HealthResource)
    assert isinstance(resource_for(b"/metrics"), MetricsResource)
    for path in (b"/api/live", b"/api/live/stream"):
        assert type(resource_for(path)).__name__ == "Refusal"
