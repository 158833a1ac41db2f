"""N8's posting adapters: N8's own stored procedures, and an interface table.

The ledger posts, reverses and confirms through each adapter on real databases
(procedures on PostgreSQL and MariaDB, created here as an N8 would have them; the
interface table on SQLite, PostgreSQL, MariaDB and split); the books are checked
after N8's side has done its part; every operation replayed (as the outbox repair
does after a crash) changes nothing; a code the procedure should not answer refuses
the payment with nothing written anywhere.  SQL Server, Oracle and DB2 cannot run
here: the call each adapter emits there is compiled, with its bound values.
"""

from __future__ import annotations

import re
import textwrap
import tomllib
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import BANKS, LEGACY, seed_fixture, server_url
from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_helpers import TODAY, bills, check_books, count, pay, rev
from sqlalchemy.dialects import mssql, oracle, registry

from bankgate.app import wiring
from bankgate.app.config import ConfigError, load_config, parse_config
from bankgate.canon import messages as m
from bankgate.canon.messages import Outcome
from bankgate.domain.ledger import Ledger
from bankgate.store import model
from bankgate.store.db import Store
from bankgate.store.n8 import N8Mapping, build_tables
from bankgate.store.n8adapters import (
    InterfaceSettings,
    InterfaceWriter,
    N8Refused,
    PostSettings,
    ProcedureSettings,
    ProcedureWriter,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
FULL = 260000 + 15000 + 260000 + 13000  # customer 100000123's bills and late fee

PROC = ProcedureSettings(
    pay="N8_JF", cancel="N8_CX", item="N8_JFMX", confirm="N8_QR",
    pay_params=("pay_id", "customer_no", "amount", "pay_date", "bank_code", "bank_serial",
                "channel", "status", "created_at"),
    item_params=("pay_id", "bill_id", "principal", "late_fee"),
    result="row", ok=("0",), already=("1",))

IFACE = InterfaceSettings(
    table="JK_JFJL",
    columns={"pay_id": "JFBH", "customer_no": "KHBH", "amount": "JE", "pay_date": "JFRQ",
             "bank_code": "YHDM", "bank_serial": "YHLSH", "channel": "QD", "status": "ZT",
             "created_at": "CZSJ", "state": "CLBZ", "kind": "CZLX"},
    kinds={"pay": "1", "cancel": "2", "confirm": "3"}, new_state="0",
    item_table="JK_JFMX",
    item_columns={"pay_id": "JFBH", "bill_id": "ZDBH", "principal": "BJ", "late_fee": "ZNJ"})


def adapter_store(backend: str, tmp_path, writer, mapping: N8Mapping | None = None) -> Store:
    """A store on ``backend`` (as conftest.make_store: sqlite, postgres, mariadb, or a
    pair GATEWAY+N8) whose N8 writes go through ``writer``."""
    kind, _, n8_kind = backend.partition("+")
    url = f"sqlite:///{tmp_path / 'bg.db'}" if kind == "sqlite" else server_url(kind)
    n8_url = None
    if n8_kind:
        n8_url = (f"sqlite:///{tmp_path / 'n8.db'}" if n8_kind == "sqlite"
                  else server_url(n8_kind))
    store = Store(url, mapping or N8Mapping(), threads=4, n8_url=n8_url, writer=writer)
    if store.dialect != "sqlite" or store.n8_dialect != "sqlite":
        store.drop_all()
    store.create_gateway_tables()
    store.create_n8_tables()
    return store


def record(store) -> list[tuple[str, dict]]:
    """Every operation the store's adapter applies from now on."""
    ops: list[tuple[str, dict]] = []
    apply = store.writer.apply

    def recording(conn, op, args, *, replay=False):
        if not replay:
            ops.append((op, args))
        return apply(conn, op, args, replay=replay)

    store.writer.apply = recording
    return ops


def replay(store, ops) -> None:
    with store.n8_engine.begin() as c:
        for op, args in ops:
            store.writer.apply(c, op, args, replay=True)


def snapshot(store) -> dict[str, list[tuple]]:
    """Every row of N8's and the gateway's tables (and the interface tables)."""
    out = {}
    tables = [(store.n8_engine, t) for t in store.n8_metadata.sorted_tables]
    tables += [(store.engine, t) for t in model.metadata.sorted_tables]
    for name in ("table", "item_table"):
        t = getattr(store.writer, name, None)
        if t is not None:
            tables.append((store.n8_engine, t))
    for engine, t in tables:
        with engine.connect() as c:
            out[t.name] = sorted(tuple(map(repr, r)) for r in c.execute(sa.select(t)))
    return out


# -- N8's stored procedures, as an N8 on PostgreSQL or MariaDB has them ------------------

_PG_ARGS = {
    "N8_JF": "p_pay_id varchar, p_customer_no varchar, p_amount bigint, p_pay_date date, "
             "p_bank_code varchar, p_bank_serial varchar, p_channel varchar, "
             "p_status varchar, p_created_at timestamp",
    "N8_JFMX": "p_pay_id varchar, p_bill_id varchar, p_principal bigint, p_late_fee bigint",
    "N8_CX": "p_pay_id varchar",
    "N8_QR": "p_pay_id varchar",
}
_PG_BODY = {
    # a serial BAD... makes N8 write the payment, then answer a code nobody knows
    "N8_JF": """
        IF EXISTS (SELECT 1 FROM n8_payment WHERE pay_id = p_pay_id) THEN {ret:1} END IF;
        INSERT INTO n8_payment (pay_id, customer_no, amount, pay_date, bank_code,
            bank_serial, channel, status, created_at) VALUES (p_pay_id, p_customer_no,
            p_amount, p_pay_date, p_bank_code, p_bank_serial, p_channel, p_status,
            p_created_at);
        IF p_bank_serial LIKE 'BAD%' THEN {ret:7} END IF;
        {ret:0}""",
    "N8_JFMX": """
        INSERT INTO n8_payment_item (pay_id, bill_id, principal, late_fee)
            VALUES (p_pay_id, p_bill_id, p_principal, p_late_fee);
        UPDATE n8_bill SET paid_amount = paid_amount + p_principal,
            late_fee_paid = late_fee_paid + p_late_fee WHERE bill_id = p_bill_id;
        {ret:0}""",
    "N8_CX": """
        IF NOT EXISTS (SELECT 1 FROM n8_payment WHERE pay_id = p_pay_id AND status <> 'C')
            THEN {ret:1} END IF;
        UPDATE n8_bill b SET paid_amount = b.paid_amount - i.principal,
            late_fee_paid = b.late_fee_paid - i.late_fee
            FROM n8_payment_item i WHERE i.pay_id = p_pay_id AND b.bill_id = i.bill_id;
        UPDATE n8_payment SET status = 'C' WHERE pay_id = p_pay_id;
        {ret:0}""",
    "N8_QR": """
        UPDATE n8_payment SET status = 'N' WHERE pay_id = p_pay_id AND status = 'P';
        {ret:0}""",
}


def create_pg_routines(engine, kind: str) -> None:
    """The routines as PostgreSQL functions returning the code (kind "function") or
    procedures giving it back in a last INOUT parameter (kind "procedure")."""
    with engine.begin() as c:
        for name, args in _PG_ARGS.items():
            c.execute(sa.text(f'DROP ROUTINE IF EXISTS "{name}"'))
            if kind == "function":
                body = _PG_BODY[name].replace("{ret:", "RETURN QUERY SELECT '")
                body = body.replace("}", "'::text; RETURN;")
                c.execute(sa.text(
                    f'CREATE FUNCTION "{name}"({args}) RETURNS TABLE(code text) '
                    f"LANGUAGE plpgsql AS $$ BEGIN {body} END $$"))
            else:
                body = _PG_BODY[name].replace("{ret:", "code := '").replace("}", "'; RETURN;")
                c.execute(sa.text(
                    f'CREATE PROCEDURE "{name}"({args}, INOUT code text) '
                    f"LANGUAGE plpgsql AS $$ BEGIN {body} END $$"))


_MY = {
    "N8_JF": ("""IN p_pay_id VARCHAR(20), IN p_customer_no VARCHAR(32), IN p_amount BIGINT,
                 IN p_pay_date DATE, IN p_bank_code VARCHAR(32), IN p_bank_serial VARCHAR(40),
                 IN p_channel VARCHAR(2), IN p_status VARCHAR(1), IN p_created_at DATETIME""",
              """
        IF EXISTS (SELECT 1 FROM n8_payment WHERE pay_id = p_pay_id) THEN
            SELECT '1' AS code;
        ELSE
            INSERT INTO n8_payment (pay_id, customer_no, amount, pay_date, bank_code,
                bank_serial, channel, status, created_at) VALUES (p_pay_id, p_customer_no,
                p_amount, p_pay_date, p_bank_code, p_bank_serial, p_channel, p_status,
                p_created_at);
            IF p_bank_serial LIKE 'BAD%' THEN SELECT '7' AS code; ELSE SELECT '0' AS code;
            END IF;
        END IF;"""),
    "N8_JFMX": ("IN p_pay_id VARCHAR(20), IN p_bill_id VARCHAR(32), IN p_principal BIGINT, "
                "IN p_late_fee BIGINT", """
        INSERT INTO n8_payment_item (pay_id, bill_id, principal, late_fee)
            VALUES (p_pay_id, p_bill_id, p_principal, p_late_fee);
        UPDATE n8_bill SET paid_amount = paid_amount + p_principal,
            late_fee_paid = late_fee_paid + p_late_fee WHERE bill_id = p_bill_id;
        SELECT '0' AS code;"""),
    "N8_CX": ("IN p_pay_id VARCHAR(20)", """
        IF NOT EXISTS (SELECT 1 FROM n8_payment WHERE pay_id = p_pay_id AND status <> 'C')
        THEN
            SELECT '1' AS code;
        ELSE
            UPDATE n8_bill b JOIN n8_payment_item i ON b.bill_id = i.bill_id
                SET b.paid_amount = b.paid_amount - i.principal,
                    b.late_fee_paid = b.late_fee_paid - i.late_fee
                WHERE i.pay_id = p_pay_id;
            UPDATE n8_payment SET status = 'C' WHERE pay_id = p_pay_id;
            SELECT '0' AS code;
        END IF;"""),
    "N8_QR": ("IN p_pay_id VARCHAR(20)", """
        UPDATE n8_payment SET status = 'N' WHERE pay_id = p_pay_id AND status = 'P';
        SELECT '0' AS code;"""),
}


def create_my_routines(engine) -> None:
    with engine.begin() as c:
        for name, (args, body) in _MY.items():
            c.execute(sa.text(f"DROP PROCEDURE IF EXISTS {name}"))
            c.execute(sa.text(f"CREATE PROCEDURE {name}({args}) BEGIN {body} END"))


PROCEDURE_BACKENDS = ["postgres-function", "postgres-procedure", "mariadb",
                      "postgres+mariadb"]  # N8 apart: the outbox replays through them


@pytest.fixture(params=PROCEDURE_BACKENDS)
def proc_store(request, tmp_path):
    backend, _, kind = request.param.partition("-")
    settings_ = ProcedureSettings(**{**PROC.__dict__, "kind": kind or "procedure"})
    store = adapter_store(backend, tmp_path, PostSettings("procedure", settings_).factory())
    if store.n8_dialect == "postgresql":
        create_pg_routines(store.n8_engine, kind)
    else:
        create_my_routines(store.n8_engine)
    seed_fixture(store)
    store.initial_paid = bills(store)
    yield store
    store.drop_all()
    store.stop()


def _ledger(store, clock):
    return Ledger(store, dict(BANKS), now=clock)


def _status(store, pay_id: str) -> str | None:
    p = store.n8["payment"]
    with store.n8_engine.connect() as c:
        return c.execute(sa.select(p.c.status).where(p.c.pay_id == pay_id)).scalar()


def test_procedure_posts_reverses_and_confirms_and_replays_change_nothing(proc_store, clock):
    store = proc_store
    assert isinstance(store.writer, ProcedureWriter) and store.hot_path is None
    ledger = _ledger(store, clock)
    ops = record(store)
    r = ledger.pay(pay("S1"))
    assert r.outcome is Outcome.OK
    assert bills(store)["B0001"] == (260000, 13000) and bills(store)["B0003"] == (260000, 0)
    assert count(store, store.n8["payment"]) == 1
    assert count(store, store.n8["payment_item"]) == 3
    assert _status(store, r.receipt_no) == "N"
    check_books(store)
    before = snapshot(store)
    replay(store, ops)
    assert snapshot(store) == before
    # the reversal goes through N8's cancel procedure
    ops.clear()
    assert ledger.reverse(rev("R1", "S1", amount=FULL)).outcome is Outcome.OK
    assert bills(store) == store.initial_paid
    assert _status(store, r.receipt_no) == "C"
    check_books(store)
    before = snapshot(store)
    replay(store, ops)
    assert [op for op, _ in ops] == ["undo"]
    assert snapshot(store) == before
    # a two-phase payment: pending, then confirmed through N8's confirm procedure
    ops.clear()
    t = ledger.pay(pay("T1", customer="100000200", amount=1000000, bank="twophase"))
    assert t.outcome is Outcome.OK and _status(store, t.receipt_no) == "P"
    conf = ledger.confirm(m.ConfirmRequest(rev(None, "T1", bank="twophase").origin, "T1",
                                           TODAY))
    assert conf.outcome is Outcome.OK and _status(store, t.receipt_no) == "N"
    assert [op for op, _ in ops] == ["post", "confirm"]
    check_books(store)
    before = snapshot(store)
    replay(store, ops)
    assert snapshot(store) == before


def test_procedure_answering_an_unknown_code_refuses_the_payment(proc_store, clock):
    store = proc_store
    ledger = _ledger(store, clock)
    before = snapshot(store)
    with pytest.raises(N8Refused) as e:
        ledger.pay(pay("BAD1"))
    assert "N8_JF" in str(e.value) and "'7'" in str(e.value)
    # N8 wrote its payment before answering 7: rolled back with the gateway's rows
    assert snapshot(store) == before
    # the same request later, once N8 answers as it should, posts normally
    assert ledger.pay(pay("S2")).outcome is Outcome.OK
    check_books(store)


def test_procedure_checks_find_the_routines(proc_store):
    store = proc_store
    with store.n8_engine.connect() as c:
        checks = store.writer.checks(c)
    assert [(x.name, x.ok, x.warn) for x in checks] == [
        ("post.procedure.pay", True, False), ("post.procedure.item", True, False),
        ("post.procedure.cancel", True, False), ("post.procedure.confirm", True, False)]
    assert "9 parameter(s)" in checks[0].detail or "10 parameter(s)" in checks[0].detail
    # a parameter too many, a routine that does not exist
    wrong = ProcedureWriter(store.n8, settings=ProcedureSettings(
        **{**store.writer.settings.__dict__, "cancel_params": ("pay_id", "pay_date"),
           "confirm": "N8_NOPE"}))
    with store.n8_engine.connect() as c:
        bad = {x.name: x for x in wrong.checks(c)}
    assert not bad["post.procedure.cancel"].ok
    assert "N8_CX" in bad["post.procedure.cancel"].detail
    assert "cancel_params" in bad["post.procedure.cancel"].fix
    assert not bad["post.procedure.confirm"].ok
    assert "N8_NOPE not found" in bad["post.procedure.confirm"].detail
    assert bad["post.procedure.pay"].ok


def test_procedure_repair_after_a_lost_n8_commit_posts_once(tmp_path, clock):
    """N8 apart: N8's commit fails after the gateway's; the repair calls N8's
    procedures from the outbox, and a second repair finds the payment there."""
    from test_n8_split import _FailingCommit

    from bankgate.store import n8outbox
    from bankgate.store.errors import N8Unavailable

    store = adapter_store("postgres+mariadb", tmp_path,
                          PostSettings("procedure", PROC).factory())
    try:
        create_my_routines(store.n8_engine)
        seed_fixture(store)
        store.initial_paid = bills(store)
        ledger = _ledger(store, clock)
        with _FailingCommit(store):
            with pytest.raises(N8Unavailable):
                ledger.pay(pay("S1"))
        assert count(store, store.n8["payment"]) == 0
        (row,) = n8outbox.pending(store.engine)
        assert n8outbox.repair(store) == (1, 0)
        assert count(store, store.n8["payment"]) == 1
        check_books(store)
        before = snapshot(store)
        replay(store, row["ops"])
        assert snapshot(store) == before
        r = ledger.pay(pay("S1"))
        assert r.outcome is Outcome.OK and r.retry
    finally:
        store.drop_all()
        store.stop()


# -- the interface table ---------------------------------------------------------------


def n8_job(store) -> int:
    """What N8's own job does with the interface table (here, as a test's stand-in):
    each new row posted, cancelled or confirmed in N8, then marked done ("1")."""
    w: InterfaceWriter = store.writer
    t, it = w.table, w.item_table
    b, p, i = store.n8["bill"], store.n8["payment"], store.n8["payment_item"]
    done = 0
    with store.n8_engine.begin() as c:
        for kind in ("1", "3", "2"):  # pays, then confirms, then cancels
            rows = c.execute(sa.select(*[col.label(col.key) for col in t.c]).where(
                t.c.state == "0", t.c.kind == kind)).mappings().all()
            for row in rows:
                pid = row["pay_id"]
                items = c.execute(sa.select(it.c.bill_id.label("bill_id"),
                                            it.c.principal.label("principal"),
                                            it.c.late_fee.label("late_fee"))
                                  .where(it.c.pay_id == pid)).mappings().all()
                sign = {"1": 1, "2": -1, "3": 0}[kind]
                if kind == "1":
                    c.execute(p.insert().values(**{k: row[k] for k in (
                        "pay_id", "customer_no", "amount", "pay_date", "bank_code",
                        "bank_serial", "channel", "status", "created_at")}))
                    c.execute(i.insert(), [dict(x, pay_id=pid) for x in items])
                else:
                    c.execute(p.update().where(p.c.pay_id == pid).values(
                        status="C" if kind == "2" else "N"))
                for x in items if sign else ():
                    c.execute(b.update().where(b.c.bill_id == x["bill_id"]).values(
                        paid_amount=b.c.paid_amount + sign * x["principal"],
                        late_fee_paid=b.c.late_fee_paid + sign * x["late_fee"]))
                c.execute(t.update().where(t.c.pay_id == pid, t.c.kind == kind)
                          .values(state="1"))
                done += 1
    return done


INTERFACE_BACKENDS = ["sqlite", "sqlite-legacy", "postgres", "mariadb", "sqlite+sqlite"]


@pytest.fixture(params=INTERFACE_BACKENDS)
def iface_store(request, tmp_path):
    backend = request.param.removesuffix("-legacy")
    mapping = LEGACY if request.param.endswith("-legacy") else None
    store = adapter_store(backend, tmp_path, PostSettings("interface", interface=IFACE)
                          .factory(), mapping)
    md = store.writer.table.metadata  # N8's interface tables
    md.drop_all(store.n8_engine)
    md.create_all(store.n8_engine)
    seed_fixture(store)
    store.initial_paid = bills(store)
    yield store
    if store.dialect != "sqlite" or store.n8_dialect != "sqlite":
        store.writer.table.metadata.drop_all(store.n8_engine)
        store.drop_all()
    store.stop()


def _rows(store, table) -> list[dict]:
    with store.n8_engine.connect() as c:
        return [dict(r) for r in c.execute(
            sa.select(*[col.label(col.key) for col in table.c])).mappings()]


def test_interface_rows_posted_reversed_confirmed_and_replays_change_nothing(iface_store,
                                                                              clock):
    store = iface_store
    w = store.writer
    ledger = _ledger(store, clock)
    ops = record(store)
    r = ledger.pay(pay("S1"))
    assert r.outcome is Outcome.OK
    # the gateway wrote the interface rows, not N8's tables
    assert bills(store) == store.initial_paid
    assert count(store, store.n8["payment"]) == 0
    (row,) = _rows(store, w.table)
    assert row == {"pay_id": r.receipt_no, "customer_no": "100000123", "amount": FULL,
                   "pay_date": TODAY, "bank_code": "105210", "bank_serial": "S1",
                   "channel": "01", "status": "N", "created_at": clock.now, "state": "0",
                   "kind": "1"}
    assert sorted((x["bill_id"], x["principal"], x["late_fee"]) for x in _rows(
        store, w.item_table)) == [("B0001", 260000, 13000), ("B0002", 15000, 0),
                                  ("B0003", 260000, 0)]
    before = snapshot(store)
    replay(store, ops)
    assert snapshot(store) == before
    assert n8_job(store) == 1
    check_books(store)
    # reversal: a cancel row copying the payment's fields
    ops.clear()
    clock.now += timedelta(minutes=7)  # the reversal's time is the gateway's clock's
    assert ledger.reverse(rev("R1", "S1", amount=FULL)).outcome is Outcome.OK
    cancel = [x for x in _rows(store, w.table) if x["kind"] == "2"]
    assert len(cancel) == 1 and cancel[0]["amount"] == FULL and cancel[0]["status"] == "C"
    assert cancel[0]["state"] == "0" and cancel[0]["created_at"] == clock.now
    before = snapshot(store)
    replay(store, ops)
    assert snapshot(store) == before
    assert n8_job(store) == 1
    assert bills(store) == store.initial_paid
    check_books(store)
    # two-phase: a pay row with status P, then a confirm row
    ops.clear()
    t = ledger.pay(pay("T1", customer="100000200", amount=1000000, bank="twophase"))
    assert t.outcome is Outcome.OK
    conf = ledger.confirm(m.ConfirmRequest(rev(None, "T1", bank="twophase").origin, "T1",
                                           TODAY))
    assert conf.outcome is Outcome.OK
    kinds = sorted((x["kind"], x["status"]) for x in _rows(store, w.table)
                   if x["pay_id"] == t.receipt_no)
    assert kinds == [("1", "P"), ("3", "N")]
    before = snapshot(store)
    replay(store, ops)
    assert snapshot(store) == before
    assert n8_job(store) == 2
    assert _status(store, t.receipt_no) == "N"
    check_books(store)
    # replays after N8's job are still nothing
    before = snapshot(store)
    replay(store, ops)
    assert snapshot(store) == before


def test_interface_values_follow_the_mapping(tmp_path, clock):
    """Under a legacy mapping (yuan, CHAR(8) dates) the interface row is written in
    N8's units: the types are the mapped payment's."""
    store = adapter_store("sqlite", tmp_path, PostSettings("interface", interface=IFACE)
                          .factory(), LEGACY)
    store.writer.table.metadata.create_all(store.n8_engine)
    seed_fixture(store)
    assert _ledger(store, clock).pay(pay("S1")).outcome is Outcome.OK
    with store.n8_engine.connect() as c:
        raw = c.execute(sa.text("SELECT JE, JFRQ, ZT FROM JK_JFJL")).one()
        items = c.execute(sa.text("SELECT BJ FROM JK_JFMX ORDER BY ZDBH")).scalars().all()
    assert Decimal(str(raw[0])) == Decimal("5480.00") and raw[1] == "20261127"
    assert raw[2] == "0"  # N (normal) in LEGACY's payment status codes
    assert [Decimal(str(x)) for x in items] == [Decimal("2600.00"), Decimal("150.00"),
                                                Decimal("2600.00")]
    store.stop()


def test_interface_checks(tmp_path):
    store = adapter_store("sqlite", tmp_path, PostSettings("interface", interface=IFACE)
                          .factory())
    with store.n8_engine.connect() as c:
        missing = store.writer.checks(c)
    assert [(x.name, x.ok) for x in missing] == [("post.interface.table", False),
                                                 ("post.interface.item_table", False)]
    assert "JK_JFJL not found" in missing[0].detail
    assert "[n8.post.interface] table" in missing[0].fix
    store.writer.table.metadata.create_all(store.n8_engine)
    with store.n8_engine.connect() as c:
        assert all(x.ok for x in store.writer.checks(c))
    other = InterfaceWriter(store.n8, settings=InterfaceSettings(
        **{**IFACE.__dict__, "columns": {**IFACE.columns, "channel": "QDX"}}))
    with store.n8_engine.connect() as c:
        bad = other.checks(c)
    assert not bad[0].ok and "channel (QDX)" in bad[0].detail and "qd" in bad[0].fix.lower()
    store.stop()


def test_interface_without_a_confirm_kind_names_the_key(tmp_path, clock):
    s = InterfaceSettings(**{**IFACE.__dict__, "kinds": {"pay": "1", "cancel": "2"}})
    store = adapter_store("sqlite", tmp_path, PostSettings("interface", interface=s).factory())
    store.writer.table.metadata.create_all(store.n8_engine)
    seed_fixture(store)
    ledger = _ledger(store, clock)
    assert ledger.pay(pay("T1", bank="twophase")).outcome is Outcome.OK
    with pytest.raises(N8Refused, match=r"kinds\.confirm is not set"):
        ledger.confirm(m.ConfirmRequest(rev(None, "T1", bank="twophase").origin, "T1", TODAY))
    store.stop()


# -- SQL Server, Oracle, DB2: the call each emits, compiled --------------------------------

DIALECTS = {"mssql": mssql.dialect(), "oracle": oracle.dialect(),
            "db2": registry.load("ibm_db_sa")()}


class _Result:
    def __init__(self, rows):
        self.rows = rows

    def first(self):
        return self.rows[0] if self.rows else None

    def close(self):
        pass


class FakeConn:
    """A connection of ``dialect`` that records each statement as compiled there,
    with its parameters as the driver would get them, and answers ``answers``."""

    def __init__(self, dialect, answers=()):
        self.dialect = dialect
        self.answers = list(answers)
        self.calls: list[tuple[str, dict]] = []

    def execute(self, stmt, params=None):
        compiled = stmt.compile(dialect=self.dialect)
        values = {}
        for k, v in compiled.construct_params(params or {}).items():
            proc = compiled.binds[k].type.bind_processor(self.dialect)
            values[k] = proc(v) if proc else v
        self.calls.append((str(compiled), values))
        return _Result(self.answers.pop(0) if self.answers else [])


PAY = {"pay_id": "20261127000000000001", "customer_no": "100000123", "amount": 548000,
       "pay_date": date(2026, 11, 27), "bank_code": "105210", "bank_serial": "S1",
       "channel": "01", "status": "N", "created_at": datetime(2026, 11, 27, 9, 30)}
ITEMS = [{"bill_id": "B0001", "principal": 260000, "late_fee": 13000}]

EXPECTED_CALLS = {
    ("mssql", "procedure"): ("EXEC [N8_JF] :pay_id, :amount, :pay_date",
                             "EXEC [N8_JFMX] :pay_id, :bill_id, :principal, :late_fee",
                             "EXEC [N8_CX] :pay_id"),
    ("oracle", "procedure"): ('BEGIN "N8_JF"(:pay_id, :amount, :pay_date); END;',
                              'BEGIN "N8_JFMX"(:pay_id, :bill_id, :principal, :late_fee); END;',
                              'BEGIN "N8_CX"(:pay_id); END;'),
    ("oracle", "function"): ('SELECT "N8_JF"(:pay_id, :amount, :pay_date) FROM DUAL',
                             'SELECT "N8_JFMX"(:pay_id, :bill_id, :principal, :late_fee) '
                             'FROM DUAL', 'SELECT "N8_CX"(:pay_id) FROM DUAL'),
    ("db2", "procedure"): ('CALL "N8_JF"(?, ?, ?)', 'CALL "N8_JFMX"(?, ?, ?, ?)',
                           'CALL "N8_CX"(?)'),
    ("db2", "function"): ('VALUES "N8_JF"(?, ?, ?)', 'VALUES "N8_JFMX"(?, ?, ?, ?)',
                          'VALUES "N8_CX"(?)'),
}


@pytest.mark.parametrize("dialect,kind", list(EXPECTED_CALLS), ids="-".join)
def test_calls_compiled_for_other_databases(dialect, kind):
    """Each adapter's call text, and the values bound: money in yuan and the date as
    'YYYYMMDD' text under the legacy mapping, as its columns store them."""
    result = "none" if (dialect, kind) == ("oracle", "procedure") else "row"
    s = ProcedureSettings(**{**PROC.__dict__, "pay_params": ("pay_id", "amount", "pay_date"),
                             "kind": kind, "result": result,
                             "confirm": None})
    w = ProcedureWriter(build_tables(LEGACY), settings=s)
    answers = [] if result == "none" else [[("0",)], [("0",)], [("0",)]]
    conn = FakeConn(DIALECTS[dialect], answers)
    assert w.post(conn, pay=PAY, items=ITEMS) is True
    assert w.undo(conn, pay_id=PAY["pay_id"], items=ITEMS) is True
    pay_call, item_call, cancel_call = EXPECTED_CALLS[(dialect, kind)]
    assert [c[0] for c in conn.calls] == [pay_call, item_call, cancel_call]
    assert conn.calls[0][1] == {"pay_id": PAY["pay_id"], "amount": Decimal("5480.00"),
                                "pay_date": "20261127"}
    assert conn.calls[1][1] == {"pay_id": PAY["pay_id"], "bill_id": "B0001",
                                "principal": Decimal("2600.00"), "late_fee": Decimal("130.00")}
    assert conn.calls[2][1] == {"pay_id": PAY["pay_id"]}


def test_codes_decide_and_an_unknown_code_names_procedure_and_code():
    w = ProcedureWriter(build_tables(N8Mapping()), settings=PROC)
    d = DIALECTS["mssql"]
    # "1": N8 had it already -> nothing more called (no items)
    conn = FakeConn(d, [[("1",)]])
    assert w.post(conn, pay=PAY, items=ITEMS) is False and len(conn.calls) == 1
    conn = FakeConn(d, [[(0,)], [(Decimal("0"),)]])  # a numeric code reads as its text
    assert w.post(conn, pay=PAY, items=ITEMS) is True and len(conn.calls) == 2
    with pytest.raises(N8Refused, match=r"N8_CX \(cancel, receipt 20261127000000000001\)"
                                        r" answered code '42'"):
        w.undo(FakeConn(d, [[("42",)]]), pay_id=PAY["pay_id"], items=ITEMS)
    with pytest.raises(N8Refused, match="returned no row"):
        w.undo(FakeConn(d, [[]]), pay_id=PAY["pay_id"], items=ITEMS)
    # a replay finds the payment in N8's payment table and calls nothing
    conn = FakeConn(d, [[("N",)]])
    assert w.post(conn, pay=PAY, items=ITEMS, replay=True) is False
    assert len(conn.calls) == 1 and conn.calls[0][0].startswith("SELECT")


def test_postgres_and_mariadb_call_text():
    from sqlalchemy.dialects import mysql, postgresql

    n8 = build_tables(N8Mapping(schema="n8"))
    fn = ProcedureWriter(n8, settings=ProcedureSettings(**{**PROC.__dict__,
                                                          "kind": "function"}))
    pr = ProcedureWriter(n8, settings=PROC)
    pg, my = postgresql.dialect(), mysql.dialect()
    assert str(fn.statement(pg, "cancel").compile(dialect=pg)) == \
        'SELECT * FROM n8."N8_CX"(%(pay_id)s::VARCHAR)'
    assert str(pr.statement(pg, "cancel").compile(dialect=pg)) == \
        'CALL n8."N8_CX"(%(pay_id)s::VARCHAR, NULL)'
    assert str(pr.statement(my, "cancel").compile(dialect=my)) == "CALL n8.`N8_CX`(%s)"
    other = ProcedureWriter(n8, settings=ProcedureSettings(
        **{**PROC.__dict__, "cancel": "legacy.n8_cx"}))
    assert str(other.statement(pg, "cancel").compile(dialect=pg)) == \
        "CALL legacy.n8_cx(%(pay_id)s::VARCHAR, NULL)"


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=10**12))
def test_amounts_are_bound_in_yuan_exactly(fen):
    w = ProcedureWriter(build_tables(LEGACY), settings=ProcedureSettings(
        **{**PROC.__dict__, "item": None}))
    conn = FakeConn(DIALECTS["mssql"], [[("0",)]])
    w.post(conn, pay={**PAY, "amount": fen}, items=[])
    bound = conn.calls[0][1]["amount"]
    assert bound * 100 == fen and bound.as_tuple().exponent == -2


# -- configuration ------------------------------------------------------------------------


def _cfg(post: dict, url: str = "postgresql+psycopg://bankgate@n8/n8"):
    return parse_config({"database": {"url": url}, "n8": {"post": post}}, "t.toml")


@pytest.mark.parametrize("post,key,words", [
    ({"adapter": "stored"}, "n8.post.adapter", "expected one of direct, procedure"),
    ({"adapter": "procedure"}, "n8.post.procedure", "missing"),
    ({"adapter": "direct", "procedure": {}}, "n8.post.procedure", "adapter = 'direct'"),
    ({"adapter": "procedure", "procedure": {"cancel": "N8_CX"}}, "n8.post.procedure.pay",
     "missing"),
    ({"adapter": "procedure", "procedure": {"pay": "N8;DROP", "cancel": "C"}},
     "n8.post.procedure.pay", "letters, digits and _"),
    ({"adapter": "procedure", "procedure": {"pay": "a.b.c", "cancel": "C"}},
     "n8.post.procedure.pay", "one optional schema dot"),
    ({"adapter": "procedure", "procedure": {"pay": "P", "cancel": "C",
                                            "pay_params": ["pay_id", "amout"]}},
     "n8.post.procedure.pay_params", "unknown parameter 'amout'"),
    ({"adapter": "procedure", "procedure": {"pay": "P", "cancel": "C",
                                            "cancel_params": ["pay_id", "pay_id"]}},
     "n8.post.procedure.cancel_params", "listed twice"),
    ({"adapter": "procedure", "procedure": {"pay": "P", "cancel": "C", "ok": ["0"]}},
     "n8.post.procedure.ok", "result = \"row\""),
    ({"adapter": "procedure", "procedure": {"pay": "P", "cancel": "C", "result": "row",
                                            "ok": ["0"], "already": ["0"]}},
     "n8.post.procedure.already", "also in ok"),
    ({"adapter": "procedure", "procedure": {"pay": "P", "cancel": "C", "item_params": []}},
     "n8.post.procedure.item_params", "without item"),
    ({"adapter": "procedure", "procedure": {"pay": "P", "cancel": "C", "colour": "red"}},
     "n8.post.procedure.colour", "unknown key"),
    ({"adapter": "interface", "interface": {"table": "JK", "pay_id": "A",
                                            "kinds": {"pay": "1", "cancel": "2"}}},
     "n8.post.interface.kind", "missing"),
    ({"adapter": "interface", "interface": {"table": "JK", "pay_id": "A", "kind": "A",
                                            "kinds": {"pay": "1", "cancel": "2"}}},
     "n8.post.interface.kind", "also given for pay_id"),
    ({"adapter": "interface", "interface": {"table": "JK", "pay_id": "A", "kind": "B",
                                            "kinds": {"pay": "1"}}},
     "n8.post.interface.kinds.cancel", "missing"),
    ({"adapter": "interface", "interface": {"table": "JK", "pay_id": "A", "kind": "B",
                                            "kinds": {"pay": "1", "cancel": "1"}}},
     "n8.post.interface.kinds", "a different value"),
    ({"adapter": "interface", "interface": {"table": "JK", "pay_id": "A", "kind": "B",
                                            "kinds": {"pay": "1", "cancel": "2"},
                                            "new_state": "0"}},
     "n8.post.interface.new_state", "without state"),
    ({"adapter": "interface", "interface": {"table": "JK", "pay_id": "A B", "kind": "B",
                                            "kinds": {"pay": "1", "cancel": "2"}}},
     "n8.post.interface.pay_id", "letters, digits and _"),
    ({"adapter": "interface", "interface": {"table": "JK", "pay_id": "A", "kind": "B",
                                            "kinds": {"pay": "1", "cancel": "2"},
                                            "item_columns": {"bill": "ZDBH"}}},
     "n8.post.interface.item_columns.bill", "unknown field"),
])
def test_config_errors_name_the_key(post, key, words):
    with pytest.raises(ConfigError) as e:
        _cfg(post)
    assert e.value.key == key and words in e.value.problem, str(e.value)


def test_config_refuses_what_the_database_cannot_do():
    proc = {"pay": "P", "cancel": "C"}
    with pytest.raises(ConfigError) as e:
        _cfg({"adapter": "procedure", "procedure": proc}, "sqlite:///x.db")
    assert e.value.key == "n8.post.adapter" and "no stored procedures" in e.value.problem
    with pytest.raises(ConfigError) as e:
        _cfg({"adapter": "procedure", "procedure": {**proc, "result": "row"}},
             "oracle+oracledb://u@h/n8")
    assert e.value.key == "n8.post.procedure.result" and "Oracle" in e.value.problem
    ok = _cfg({"adapter": "procedure", "procedure": {**proc, "result": "row",
                                                     "kind": "function"}},
              "oracle+oracledb://u@h/n8")
    assert ok.n8_post.procedure.kind == "function"


def test_no_post_table_is_the_direct_writer():
    assert _cfg({}).n8_post == PostSettings() and PostSettings().factory() is None


@pytest.mark.parametrize("name,adapter", [("n8-procedure.toml", "procedure"),
                                          ("n8-interface.toml", "interface")])
def test_examples_parse_and_wire(name, adapter, tmp_path):
    cfg = load_config(EXAMPLES / name)
    assert cfg.n8_post.adapter == adapter
    if adapter == "interface":
        assert cfg.n8_post.interface.kinds == {"pay": "1", "cancel": "2", "confirm": "3"}
        store = wiring.store(cfg)
        try:
            assert isinstance(store.writer, InterfaceWriter)
            assert store.writer.table.name == "JK_JFJL"
        finally:
            store.stop()
    else:
        s = cfg.n8_post.procedure
        assert (s.pay, s.item, s.cancel, s.confirm) == ("N8_JF", "N8_JFMX", "N8_CX", "N8_QR")
        assert (s.result, s.ok, s.already) == ("row", ("0",), ("1",))


def test_interface_needs_a_confirm_kind_for_a_two_phase_bank():
    iface = {"table": "JK", "pay_id": "A", "kind": "B", "kinds": {"pay": "1", "cancel": "2"}}
    bank = {"name": "x", "plugin": "ref-fixed", "bank_code": "105210",
            "listen": ["tcp:9101:interface=127.0.0.1"], "allow": ["127.0.0.0/8"],
            "two_phase": True}
    with pytest.raises(ConfigError) as e:
        parse_config({"n8": {"post": {"adapter": "interface", "interface": iface}},
                      "bank": [bank]}, "t.toml")
    assert e.value.key == "n8.post.interface.kinds.confirm" and "bank x" in e.value.problem


def test_the_docs_toml_blocks_parse():
    """The "Posting adapters" section's configuration blocks are valid as written."""
    text = (EXAMPLES.parent / "n8-mapping.rst").read_text(encoding="utf-8")
    section = text.split("\nPosting adapters\n", 1)[1].split("\nHow the mapping is tested\n")[0]
    blocks = re.findall(r"\.\. code-block:: toml\n\n((?:   .*\n|\n)+)", section)
    assert len(blocks) == 2
    adapters = [parse_config(tomllib.loads(textwrap.dedent(b)), "doc").n8_post.adapter
                for b in blocks]
    assert adapters == ["procedure", "interface"]
