"""SQL Server, Oracle and DB2 cannot run here: every statement a
reconciliation issues is compiled against those dialects instead."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from conftest import BANKS, RENAMED, seed_fixture
from ledger_helpers import TODAY, pay
from sqlalchemy.dialects import mssql, oracle, registry
from test_recon import BANK_FILE, fixed_statement, reconciler

from bankgate.domain.ledger import Ledger
from bankgate.store import model
from bankgate.store import recon as sql
from bankgate.store.db import Store

DIALECTS = {
    "mssql": mssql.dialect(),
    "oracle": oracle.dialect(),
    "db2": registry.load("ibm_db_sa")(),
}
NAMES = {"mssql": "mssql", "oracle": "oracle", "db2": "ibm_db_sa"}


@pytest.fixture(scope="module")
def issued(tmp_path_factory):
    """Every statement of two runs (the second a re-run), a failed run, the
    lock's takeover, the operator's commands."""
    tmp = tmp_path_factory.mktemp("d")
    store = Store(f"sqlite:///{tmp / 'x.db'}", RENAMED)
    store.row_locks = True
    store.create_gateway_tables()
    store.create_n8_tables()
    seed_fixture(store)
    statements = []

    @sa.event.listens_for(store.engine, "before_execute")
    def capture(conn, clause, multiparams, params, execution_options):
        if isinstance(clause, sa.sql.ClauseElement):
            statements.append(clause)

    ledger = Ledger(store, dict(BANKS))
    for s, c, a in (("S001", "100000123", 15000), ("S002", "100000200", 20000),
                    ("S003", "100000200", 30000), ("S004", "100000123", 10000)):
        ledger.pay(pay(s, c, a, bank="any"))
    rec = reconciler(ledger, tmp)
    data = fixed_statement("106210", BANK_FILE)
    rep = rec.reconcile(data, TODAY)
    rec.reconcile(data, TODAY)
    rec.record_failure(TODAY, "never came")
    store.run_sync(sql.lock_acquire, "any", TODAY, "x", ledger.now() - timedelta(hours=3), 60)
    store.run_sync(sql.lock_acquire, "any", TODAY, "y", ledger.now(), 60)  # takes over
    store.run_sync(sql.lock_touch, "any", TODAY, "y", ledger.now())
    store.run_sync(sql.lock_release, "any", TODAY, "y")
    open_ = store.run_sync(sql.open_exceptions, "any", TODAY)
    store.run_sync(sql.item_resolve, open_[0]["id"], "op", "done", ledger.now())
    store.run_sync(sql.runs, "any", TODAY)
    store.run_sync(sql.reconciled_dates, "any", TODAY)
    store.run_sync(sql.first_activity, "any")
    store.run_sync(sql.standing_for_statement, "any", TODAY)
    store.run_sync(sql.customers_with_open_bills, ("100000123",), 5)
    store.run_sync(sql.statement_get, 1)
    store.run_sync(sql.item_counts, rep.run_id)
    store.run_sync(sql.resolutions, "any", TODAY)
    store.run_sync(sql.run_numbers, "any", TODAY)
    rec.reconcile(data, TODAY, dry_run=True)
    store.stop()
    return statements


@pytest.mark.parametrize("dialect", DIALECTS, ids=str)
def test_every_reconciliation_statement_compiles(issued, dialect):
    d = DIALECTS[dialect]
    tables = set()
    for stmt in issued:
        text = str(stmt.compile(dialect=d))
        assert text.strip()
        for ref in ("n8_customer", "n8_bill", "n8_payment"):
            assert ref not in text  # every N8 name comes from the mapping
        tables |= {t for t in ("bg_recon_run", "bg_recon_item", "bg_lease",
                               "bg_statement", "bg_recon_counter") if t in text}
    assert tables == {"bg_recon_run", "bg_recon_item", "bg_lease", "bg_statement",
                      "bg_recon_counter"}


@pytest.mark.parametrize("dialect", DIALECTS, ids=str)
def test_the_sorted_stream_compiles_with_a_binary_order(dialect):
    q = sql._payments_query(None, "any", TODAY).order_by(
        sql.binary_order(model.payment.c.serial, NAMES[dialect]))
    text = str(q.compile(dialect=DIALECTS[dialect]))
    assert "ORDER BY" in text and "bg_undo" in text
    if dialect == "mssql":
        assert "Latin1_General_BIN2" in text
    if dialect == "oracle":
        assert "nlssort" in text.lower()


@pytest.mark.parametrize("dialect", DIALECTS, ids=str)
def test_migration_0004_renders_for_the_dialect(dialect):
    """Run numbers and resolutions: the DDL and the numbering of existing runs, as
    a DBA would review and run them on that database."""
    from bankgate.store.migrations import offline_sql

    text = offline_sql(NAMES[dialect])
    part = text[text.index("Running upgrade 0003 -> 0004"):]
    assert "bg_recon_counter" in part and "resolved_by" in part
    assert "UPDATE bg_recon_run SET run_no=(SELECT count(*)" in part
    assert "INSERT INTO bg_recon_counter (bank, last_no) SELECT" in part
