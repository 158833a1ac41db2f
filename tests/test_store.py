"""The store: migrations, the N8 mapping, and a database that is away."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import BACKENDS, make_store
from ledger_helpers import count, pay, query

from bankgate.canon.messages import Outcome
from bankgate.domain.ledger import BankPolicy, Ledger
from bankgate.store import model
from bankgate.store.db import Store, StoreUnavailable
from bankgate.store.migrations import VERSION_TABLE, current, head, upgrade
from bankgate.store.n8 import MappingError, N8Mapping


@pytest.mark.parametrize("backend", [b for b in BACKENDS if not b.endswith("-renamed")])
def test_migrations_build_exactly_the_model(backend, tmp_path):
    store = make_store(backend, tmp_path)
    try:
        assert current(store.engine) == head()
        with store.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={
                "version_table": VERSION_TABLE,
                "include_name": lambda name, kind, parent: kind != "table"
                or name.startswith("bg_") and name != VERSION_TABLE,
            })
            diff = compare_metadata(ctx, model.metadata)
        assert diff == []
        assert upgrade(store.engine) == head()  # a second upgrade is a no-op
    finally:
        if store.dialect != "sqlite":
            store.drop_all()
        store.stop()


def test_mapping_rejects_unknown_names():
    with pytest.raises(MappingError, match="n8.tables.bills: unknown table"):
        N8Mapping(tables={"bills": "X"}).validate()
    with pytest.raises(MappingError, match=r"n8.columns.bill.amout: unknown column"):
        N8Mapping(columns={"bill": {"amout": "X"}}).validate()


def test_renamed_mapping_issues_only_physical_names(tmp_path):
    from conftest import RENAMED

    store = make_store("sqlite-renamed", tmp_path)
    names = set(sa.inspect(store.engine).get_table_names())
    assert {"HRB_KH", "HRB_ZD", "HRB_JF"} <= names and "n8_bill" not in names
    cols = {c["name"] for c in sa.inspect(store.engine).get_columns("HRB_ZD")}
    assert {"ZDBH", "YSJE", "SSJE"} <= cols and "amount" not in cols
    assert store.mapping is RENAMED


def test_database_down_is_busy_and_records_nothing(tmp_path):
    bad = Store("postgresql+psycopg://nobody@127.0.0.1:1/none", threads=1)
    ledger = Ledger(bad, {"fixed": BankPolicy("fixed", "105210")})
    with pytest.raises(StoreUnavailable):
        ledger.pay(pay("S1"))
    with pytest.raises(StoreUnavailable):
        ledger.query(query())


def test_ledger_service_answers_busy_when_the_database_is_down():
    """Through the asynchronous face, with a reactor stand-in that runs the
    thread's callback at once (no global reactor, no sleeps)."""
    import threading

    from bankgate.domain.ledger import LedgerService

    class ThreadReactor:
        def callFromThread(self, f, *a, **kw):
            f(*a, **kw)

    bad = Store("postgresql+psycopg://nobody@127.0.0.1:1/none", threads=1,
                reactor=ThreadReactor())
    bad.start()
    try:
        svc = LedgerService(Ledger(bad, {"fixed": BankPolicy("fixed", "105210")}))
        done = threading.Event()
        results = []
        d = svc.handle(pay("S1"))
        d.addCallback(lambda r: (results.append(r), done.set()))
        assert done.wait(30)
        assert results[0].outcome is Outcome.BUSY
    finally:
        bad.stop()


def test_sqlite_file_is_created_with_its_folder(tmp_path):
    url = f"sqlite:///{tmp_path / 'deep' / 'er' / 'bg.db'}"
    store = Store(url)
    store.create_gateway_tables()
    assert (tmp_path / "deep" / "er" / "bg.db").exists()
    assert count(store, model.journal) == 0
