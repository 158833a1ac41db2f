"""The pairs the ledger suite and the property tests run on (conftest.LEDGER_PAIRS):
N8 really in a database of its own -- a second database on the gateway's own server
for ``postgres+postgres-legacy`` -- in its legacy shape, and a payment posted across
the two and repeated stands once on each side."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from conftest import BANKS, LEDGER_PAIRS, LEGACY, close_store, make_store, seed_fixture
from ledger_helpers import bills, check_books, count, engine_of, pay

from bankgate.canon.messages import Outcome
from bankgate.domain.ledger import Ledger
from bankgate.store import model


@pytest.fixture(params=LEDGER_PAIRS)
def pair(request, tmp_path):
    s = make_store(request.param, tmp_path)
    yield request.param, s
    close_store(s)


def _tables(engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_n8_is_in_a_database_of_its_own_in_its_legacy_shape(pair):
    backend, store = pair
    gateway, n8 = backend.removesuffix("-legacy").split("+")
    assert store.split and (store.dialect, store.n8_dialect) == (
        {"sqlite": "sqlite", "postgres": "postgresql", "mariadb": "mysql"}[gateway],
        {"sqlite": "sqlite", "postgres": "postgresql", "mariadb": "mysql"}[n8])
    gw_url, n8_url = store.engine.url, store.n8_engine.url
    assert (gw_url.host, gw_url.port, gw_url.database) != (n8_url.host, n8_url.port,
                                                           n8_url.database)
    assert store.mapping is LEGACY
    on_gateway, on_n8 = _tables(store.engine), _tables(store.n8_engine)
    assert "bg_journal" in on_gateway and "bg_journal" not in on_n8
    assert "HRB_ZD" in on_n8 and "HRB_ZD" not in on_gateway
    assert engine_of(store, store.n8["bill"]) is store.n8_engine
    assert engine_of(store, model.payment) is store.engine
    # yuan DECIMAL(12,2) as N8 keeps it, whatever the dialect calls it
    amount = {c["name"]: c["type"] for c in sa.inspect(store.n8_engine).get_columns("HRB_ZD")}
    assert isinstance(amount["YSJE"], sa.Numeric) and amount["YSJE"].scale == 2


def test_a_payment_and_its_repeat_stand_once_on_each_side(pair, clock):
    _, store = pair
    seed_fixture(store)
    store.initial_paid = bills(store)
    ledger = Ledger(store, dict(BANKS), now=clock)
    first = ledger.pay(pay("S1"))
    assert first.outcome is Outcome.OK
    again = ledger.pay(pay("S1"))
    assert again.retry and again.receipt_no == first.receipt_no
    assert count(store, model.payment) == 1 and count(store, store.n8["payment"]) == 1
    with store.n8_engine.connect() as c:  # N8's own representation: yuan, its own code
        p = sa.table("HRB_JF", sa.column("JFBH"), sa.column("JE"), sa.column("ZT"))
        raw = c.execute(sa.select(p.c.JE, p.c.ZT).where(p.c.JFBH == first.receipt_no)).one()
    assert (str(raw[0]), raw[1]) == ("5480.00", "0")
    check_books(store)
