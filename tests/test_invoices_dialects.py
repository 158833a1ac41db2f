"""Every statement the invoice code issues compiles for SQL Server, Oracle
and DB2 (which cannot run here), and names N8 only through the mapping."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from conftest import RENAMED, FakeClock
from invoice_helpers import setup
from ledger_helpers import pay, rev
from sqlalchemy.dialects import mssql, oracle, registry

from bankgate.store.db import Store

DIALECTS = {
    "mssql": mssql.dialect(),
    "oracle": oracle.dialect(),
    "db2": registry.load("ibm_db_sa")(),
}


@pytest.fixture(scope="module")
def issued(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inv")
    store = Store(f"sqlite:///{tmp / 'x.db'}", RENAMED)
    store.row_locks = True  # issue the locking reads other databases get
    store.create_gateway_tables()
    store.create_n8_tables()
    statements = []

    @sa.event.listens_for(store.engine, "before_execute")
    def capture(conn, clause, multiparams, params, execution_options):
        if isinstance(clause, sa.sql.ClauseElement):
            statements.append(clause)

    _, ledger, inv, _ = setup(store, FakeClock(), tmp)
    inv.issue_stock("fixed", 1, 3, code="2100", actor="ops1")
    inv.issue_stock("counter", 1, 3, code="9900", actor="ops1")
    r = ledger.pay(pay("S1"))
    inv.print(r.receipt_no, actor="ops1")
    inv.reprint(r.receipt_no, actor="ops1")
    inv.reissue(r.receipt_no, reason="torn", actor="ops1")
    inv.void(r.receipt_no, reason="wrong", actor="ops1")
    r2 = ledger.pay(pay("S2", customer="100000200", amount=1000000))
    ledger.reverse(rev("R2", "S2", customer="100000200", amount=1000000))
    r3 = ledger.pay(pay("P1", customer="100000200", amount=20000, bank="partial"))
    inv.print(r3.receipt_no, actor="ops1", holder="counter")
    inv.stock_report()
    inv.check()
    store.stop()
    assert r2.invoice_no
    return statements


@pytest.mark.parametrize("dialect", DIALECTS, ids=str)
def test_every_invoice_statement_compiles(issued, dialect):
    d = DIALECTS[dialect]
    locking = 0
    for stmt in issued:
        sql = str(stmt.compile(dialect=d))
        assert sql.strip()
        if isinstance(stmt, sa.Select) and stmt._for_update_arg is not None:
            locking += 1
            if dialect == "mssql":  # a shared read (FOR SHARE) holds a shared row lock
                assert ("HOLDLOCK" if stmt._for_update_arg.read else "UPDLOCK") in sql, sql
            else:
                assert "FOR UPDATE" in sql or "USE AND KEEP" in sql, sql
        assert "n8_invoice" not in sql  # N8's names come from the mapping
    assert locking >= 5
    assert any("HRB_FP" in str(s.compile(dialect=d)) for s in issued)
