"""/metrics: Prometheus text from the service's own registry, fed by the bank engine."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from console_helpers import Handler, bank_factory, body, connect, frame, get, synchronous
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.task import Clock

from bankgate.app.console.metrics import GatewayMetrics, MetricsResource
from bankgate.store import model
from bankgate.store.db import Store


@pytest.fixture
def sqlite_store(tmp_path):
    s = synchronous(Store(f"sqlite:///{tmp_path / 'm.db'}"))
    s.create_gateway_tables()
    yield s
    s.stop()


def scrape(metrics: GatewayMetrics) -> dict:
    """``{(sample name, frozenset(labels)): value}`` of one GET /metrics."""
    r = get(MetricsResource(metrics))
    assert r.finished
    assert r.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
    out = {}
    for family in text_string_to_metric_families(body(r).decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def key(name, **labels):
    return (name, frozenset(labels.items()))


def test_requests_and_latency_count_what_the_engine_answered(sqlite_store):
    clock = Clock()
    handler = Handler(immediate=False)
    factory = bank_factory(clock, "bank-a", handler)
    metrics = GatewayMetrics(sqlite_store, clock, banks={"bank-a": factory})
    before = scrape(metrics)
    assert key("bankgate_requests_total", bank="bank-a", txn="pay", outcome="OK") not in before

    proto, transport = connect(factory)
    proto.dataReceived(frame("PAY 1"))
    clock.advance(0.03)  # the ledger takes 30 ms
    handler.fire()
    assert transport.value().endswith(b"OK 1")
    proto.dataReceived(frame("PAY 2 NOT_FOUND"))
    handler.fire()
    proto.dataReceived(frame("ECHO"))
    proto.dataReceived(frame("BYE"))  # refused: closes the connection

    got = scrape(metrics)
    assert got[key("bankgate_requests_total", bank="bank-a", txn="pay", outcome="OK")] == 1
    assert got[key("bankgate_requests_total", bank="bank-a", txn="pay",
                   outcome="NOT_FOUND")] == 1
    assert got[key("bankgate_requests_total", bank="bank-a", txn="echo", outcome="OK")] == 1
    assert got[key("bankgate_requests_total", bank="bank-a", txn="", outcome="REJECTED")] == 1
    pay = dict(bank="bank-a", txn="pay")
    assert got[key("bankgate_request_seconds_count", **pay)] == 2
    assert got[key("bankgate_request_seconds_sum", **pay)] == pytest.approx(0.03)
    assert got[key("bankgate_request_seconds_bucket", le="0.025", **pay)] == 1  # the 0 ms one
    assert got[key("bankgate_request_seconds_bucket", le="0.05", **pay)] == 2
    assert got[key("bankgate_request_seconds_bucket", le="+Inf", **pay)] == 2
    assert got[key("bankgate_bank_connections", bank="bank-a")] == 1  # closing, not yet lost


def test_two_services_in_one_process_keep_their_own_counts(sqlite_store):
    clock = Clock()
    fa, fb = bank_factory(clock, "a"), bank_factory(clock, "a")
    ma = GatewayMetrics(sqlite_store, clock, banks={"a": fa})
    mb = GatewayMetrics(sqlite_store, clock, banks={"a": fb})
    connect(fa)[0].dataReceived(frame("PAY 1"))
    assert scrape(ma)[key("bankgate_requests_total", bank="a", txn="pay", outcome="OK")] == 1
    assert key("bankgate_requests_total", bank="a", txn="pay", outcome="OK") not in scrape(mb)
    # nothing of ours in prometheus_client's global registry
    assert not [m for m in REGISTRY.collect() if m.name.startswith("bankgate_")]


def seed_figures(store: Store) -> None:
    now = datetime(2026, 11, 27, 9, 0)
    with store.engine.begin() as c:
        debit = {"bank": "bank-a", "trade_date": date(2026, 11, 27), "customer_no": "1",
                 "account_no": "6222", "bill_ids": "B1", "amount": 100, "created_at": now,
                 "updated_at": now}
        c.execute(model.debit.insert(), [
            {**debit, "utility_serial": "S1", "status": "REVERSING"},
            {**debit, "utility_serial": "S2", "status": "REVERSING"},
            {**debit, "utility_serial": "S3", "status": "DEBITED"},
        ])
        run = {"bank": "bank-a", "started_at": now, "dry_run": 0}
        c.execute(model.recon_run.insert(), [
            {**run, "id": 1, "settle_date": date(2026, 11, 25), "status": "EXCEPTIONS"},
            # a later run of the same date found it settled: the first's items are history
            {**run, "id": 2, "settle_date": date(2026, 11, 25), "status": "BALANCED"},
            {**run, "id": 3, "settle_date": date(2026, 11, 26), "status": "EXCEPTIONS"},
        ])
        item = {"category": "BANK_ONLY", "action": "EXCEPTION"}
        c.execute(model.recon_item.insert(), [
            {**item, "run_id": 1, "serial": "X1"},
            {**item, "run_id": 3, "serial": "X2"},
            {**item, "run_id": 3, "serial": "X3"},
            {**item, "run_id": 3, "serial": "X4", "action": "RESOLVED"},
        ])


def test_database_figures_on_every_database(store):
    seed_figures(store)
    clock = Clock()
    metrics = GatewayMetrics(synchronous(store), clock, banks={"bank-a": bank_factory(clock)})
    got = scrape(metrics)
    assert got[key("bankgate_card_debit_reversals_pending", bank="bank-a")] == 2
    assert got[key("bankgate_recon_exceptions_open", bank="bank-a")] == 2
    assert got[key("bankgate_db_up")] == 1
    assert got[key("bankgate_alerts_active")] == 0
    assert key("bankgate_db_pool_checked_out") in got


class CountingStore:
    """A store whose figures the test sets, counting reads; ``down`` fails them."""

    def __init__(self, real: Store):
        self.engine, self.pool = real.engine, real.pool
        self.reads = 0
        self.down = False
        self.pending = 2

    def run_sync(self, fn, *a, **kw):
        self.reads += 1
        if self.down:
            raise ConnectionError("database away")
        return {"pending_reversals": {"bank-a": self.pending}, "open_exceptions": {}}

    def call(self, fn, *a, **kw):
        return defer.maybeDeferred(fn, *a, **kw)


def test_database_figures_are_read_at_most_every_interval_and_survive_an_outage(sqlite_store):
    store, clock = CountingStore(sqlite_store), Clock()
    metrics = GatewayMetrics(store, clock, banks={"bank-a": bank_factory(clock)})
    pending = key("bankgate_card_debit_reversals_pending", bank="bank-a")
    assert scrape(metrics)[pending] == 2
    store.pending = 5
    clock.advance(metrics.db_interval - 1)
    assert scrape(metrics)[pending] == 2 and store.reads == 1  # cached
    clock.advance(1)
    assert scrape(metrics)[pending] == 5 and store.reads == 2
    store.down = True
    clock.advance(metrics.db_interval)
    got = scrape(metrics)  # still answers: the last figures, and the database down
    assert got[pending] == 5 and got[key("bankgate_db_up")] == 0


def test_a_database_that_hangs_does_not_hang_the_scrape(sqlite_store):
    clock = Clock()
    store = CountingStore(sqlite_store)
    store.call = lambda fn, *a, **kw: defer.Deferred()  # never answers
    metrics = GatewayMetrics(store, clock, banks={"bank-a": bank_factory(clock)})
    r1, r2 = get(MetricsResource(metrics)), get(MetricsResource(metrics))
    assert not r1.finished
    clock.advance(metrics.db_timeout)
    assert r1.finished and r2.finished
    text = body(r1).decode()
    assert "bankgate_db_up 0.0" in text
    assert "bankgate_card_debit_reversals_pending{" not in text  # never read: no figure


def test_debit_link_and_alert_gauges(sqlite_store):
    class Link:
        def status(self):
            return {"connected": True, "queued": 3}

    clock = Clock()
    metrics = GatewayMetrics(sqlite_store, clock, banks={}, debit_links=lambda: {"b": Link()},
                             alerts=lambda: 2)
    got = scrape(metrics)
    assert got[key("bankgate_debit_link_up", bank="b")] == 1
    assert got[key("bankgate_debit_link_queued", bank="b")] == 3
    assert got[key("bankgate_alerts_active")] == 2
