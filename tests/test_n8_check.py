"""``bankgate n8 check``: the N8 mapping proven against N8 before any bank finds a fault.

On SQLite: the reference schema passes every check; each kind of broken mapping
(a wrong table, a wrong column, money on a text column, a short ``pay_id``), a
value that does not convert and a code the gateway does not know are each one
FAIL line with its fix; the write probes are rolled back; the command prints one
line per check and exits 1; the gateway refuses to start, naming the table and
column.  On PostgreSQL and MariaDB: an account without ``UPDATE`` on the bills is
reported as the missing grant, in the database's syntax, and nothing is written.
"""

from __future__ import annotations

import os
import secrets

import pytest
import sqlalchemy as sa
from conftest import BACKENDS, RENAMED, make_store, seed_fixture, server_url

from bankgate.app.config import default_config
from bankgate.app.startup import StartupError, check_database
from bankgate.store.db import Store
from bankgate.store.n8 import N8Mapping
from bankgate.store.n8check import Check, failures, run_checks


def lines(checks: list[Check]) -> list[str]:
    return [c.line() for c in checks]


def named(checks: list[Check], name: str) -> Check:
    found = [c for c in checks if c.name == name]
    assert len(found) == 1, f"{name}: {lines(checks)}"
    return found[0]


@pytest.fixture
def reference(tmp_path):
    store = make_store("sqlite", tmp_path)
    seed_fixture(store)
    yield store
    store.stop()


def counts(engine: sa.Engine, n8: dict[str, sa.Table]) -> dict:
    """What the probes must not change: row counts and the bills' paid amounts."""
    with engine.connect() as c:
        out = {t: c.execute(sa.select(sa.func.count()).select_from(n8[t])).scalar()
               for t in ("payment", "payment_item", "bill", "invoice")}
        b = n8["bill"]
        out["paid"] = sorted(c.execute(sa.select(b.c.bill_id, b.c.paid_amount,
                                                 b.c.late_fee_paid)).all())
        out["withholding"] = sorted(c.execute(sa.select(n8["customer"].c.withholding_bank)
                                              ).all(), key=str)
    return out


# -- SQLite: the reference schema, and broken mappings ----------------------------------------


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.startswith("sqlite")])
def test_the_reference_schema_passes_every_check(backend, tmp_path):
    store = make_store(backend, tmp_path)  # renamed, converted, in a database of its own
    seed_fixture(store)
    n8_engine = getattr(store, "n8_engine", store.engine)
    before = counts(n8_engine, store.n8)
    checks = run_checks(n8_engine, store.mapping)
    assert [c.line() for c in checks if c.status != "OK"] == []
    names = {c.name for c in checks}
    # each kind of check is there: tables, columns, reads, writes, samples
    for name in ("table bill", "bill.amount", "payment.pay_id", "select valve",
                 "update bill (paid_amount, late_fee_paid)", "insert payment",
                 "insert payment_item", "update payment (status)", "sample customer",
                 "sample bill"):
        assert name in names
    assert named(checks, "sample bill").detail == "6 rows read and converted"
    # the write probes were rolled back
    assert counts(n8_engine, store.n8) == before
    store.stop()


def test_a_wrong_table_names_the_key_and_similar_tables(reference):
    checks = run_checks(reference.engine, N8Mapping(tables={"bill": "n8_bills"}))
    c = named(checks, "table bill")
    assert c.status == "FAIL"
    assert c.line().startswith("FAIL table bill: n8_bills missing -- map [n8.tables] bill"
                               " to one of the tables there: n8_bill, ")
    assert "bg_" not in c.fix  # the gateway's own tables are no candidates
    assert not any(c.name.startswith("bill.") for c in checks)  # nothing more of it
    assert [f.name for f in failures(checks)] == ["table bill"]


def test_a_wrong_column_names_the_key_and_the_columns_there(reference):
    checks = run_checks(reference.engine, N8Mapping(columns={"bill": {"amount": "amout"}}))
    assert [c.line() for c in failures(checks)] == [
        "FAIL bill.amount: column n8_bill.amout missing -- map [n8.columns.bill] amount"
        " to one of: amount, paid_amount, bill_id, customer_no, due_date, fee_type,"
        " late_fee_paid, period"]  # the close ones first
    assert named(checks, "bill.paid_amount").status == "OK"


def test_money_on_a_text_column_and_a_short_pay_id_each_fail(reference):
    with reference.engine.begin() as c:
        c.execute(sa.text("ALTER TABLE n8_bill ADD COLUMN amount_text VARCHAR(20)"))
        c.execute(sa.text("ALTER TABLE n8_payment ADD COLUMN short_id VARCHAR(12)"))
        c.execute(sa.text("ALTER TABLE n8_payment ADD COLUMN serial30 VARCHAR(30)"))
    mapping = N8Mapping(columns={"bill": {"amount": "amount_text"},
                                 "payment": {"pay_id": "short_id", "bank_serial": "serial30"}})
    checks = run_checks(reference.engine, mapping)
    assert named(checks, "bill.amount").line() == (
        "FAIL bill.amount: VARCHAR(20) is not a money column (integer fen or decimal yuan)"
        " -- map [n8.columns.bill] amount onto a numeric column")
    assert named(checks, "payment.pay_id").line() == (
        "FAIL payment.pay_id: VARCHAR(12) is shorter than the 20 characters the gateway"
        " writes -- map [n8.columns.payment] pay_id onto a column of at least 20 characters"
        " (ALTER it, or use another)")
    assert named(checks, "payment.bank_serial").status == "FAIL"
    assert "40 characters" in named(checks, "payment.bank_serial").detail
    # the columns that are right stay OK
    assert named(checks, "bill.paid_amount").status == "OK"
    assert named(checks, "payment.customer_no").status == "OK"


def test_a_date_mapped_onto_text_says_char8(reference):
    with reference.engine.begin() as c:
        c.execute(sa.text("ALTER TABLE n8_bill ADD COLUMN due8 CHAR(8)"))
    checks = run_checks(reference.engine, N8Mapping(columns={"bill": {"due_date": "due8"}}))
    c = named(checks, "bill.due_date")
    assert (c.status, c.fix) == ("FAIL", 'map [n8.values.bill] due_date = "char8"'
                                         " ('YYYYMMDD' text)")


def test_values_that_do_not_convert_are_named_by_their_row(reference):
    with reference.engine.begin() as c:
        c.execute(sa.text(
            "INSERT INTO n8_bill (bill_id, customer_no, fee_type, period, amount, paid_amount,"
            " late_fee_paid, due_date) VALUES ('B0099', '100000123', '07', '2026-11', 12.5, 0,"
            " 0, '20261231')"))
        c.execute(sa.text("UPDATE n8_customer SET customer_class = 'X'"
                          " WHERE customer_no = '100000200'"))
    checks = run_checks(reference.engine, reference.mapping)
    bad = {c.name: c.line() for c in failures(checks)}
    assert bad == {
        "sample bill.fee_type": "FAIL sample bill.fee_type: code not one of 01, 02, 03, 04,"
                                " 05; 1 of 7 rows, first bill_id='B0099': '07' -- map it in"
                                " [n8.codes.fee_type]",
        "sample bill.amount": "FAIL sample bill.amount: is not whole fen; 1 of 7 rows, first"
                              " bill_id='B0099': 12.5 -- if it holds yuan, map"
                              ' [n8.values.bill] amount = "yuan"',
        "sample bill.due_date": bad.get("sample bill.due_date", "missing"),
        "sample customer.customer_class": "FAIL sample customer.customer_class: code not one"
                                          " of R, I, C; 1 of 4 rows, first"
                                          " customer_no='100000200': 'X' -- map it in"
                                          " [n8.codes.customer_class]",
    }
    due = bad["sample bill.due_date"]
    assert due.startswith("FAIL sample bill.due_date: does not convert (")
    assert "first bill_id='B0099': 20261231" in due  # SQLite: a DATE column's number


def test_under_a_value_mapping_unmapped_codes_and_inexact_yuan_are_named(tmp_path):
    store = make_store("sqlite-legacy", tmp_path)  # yuan, CHAR(8) dates, N8's own codes
    seed_fixture(store)
    engine = getattr(store, "n8_engine", store.engine)
    with engine.begin() as c:
        c.execute(sa.text("UPDATE HRB_ZD SET FYLX = 'SH' WHERE ZDBH = 'B0002'"))
        c.execute(sa.text("UPDATE HRB_ZD SET YSJE = 1.005 WHERE ZDBH = 'B0003'"))
        c.execute(sa.text("UPDATE HRB_KH SET ZT = '7' WHERE KHBH = '100000400'"))
    checks = run_checks(engine, store.mapping)
    assert named(checks, "sample bill.fee_type").line() == (
        "FAIL sample bill.fee_type: code not one of 01, 02, 03, 04, 05; 1 of 6 rows, first"
        " bill_id='B0002': 'SH' -- map it in [n8.codes.fee_type]")
    amount = named(checks, "sample bill.amount")
    assert amount.status == "FAIL" and amount.detail.startswith("does not convert (")
    assert "first bill_id='B0003'" in amount.detail and "1.005" in amount.detail
    status = named(checks, "sample customer.status")
    assert status.status == "WARN" and "customer_no='100000400': '7'" in status.detail
    assert {c.name for c in failures(checks)} == {"sample bill.fee_type", "sample bill.amount"}
    store.stop()


def test_a_customer_status_not_in_the_code_map_is_a_warning(reference):
    mapping = N8Mapping()
    mapping.codes = {"status": {"active": ["A"], "locked": ["S"]}}  # the value mapping's
    with reference.engine.begin() as c:
        c.execute(sa.text("UPDATE n8_customer SET status = 'Q' WHERE customer_no = '100000400'"))
    checks = run_checks(reference.engine, mapping)
    c = named(checks, "sample customer.status")
    assert c.status == "WARN"
    assert c.detail == ("code not in [n8.codes.status] (reads as locked); 1 of 4 rows,"
                        " first customer_no='100000400': 'Q'")
    assert failures(checks) == []


def test_unused_parts_are_not_checked_and_the_adapter_adds_its_own(reference):
    with reference.engine.begin() as c:
        c.execute(sa.text("DROP TABLE n8_valve"))
    seen = []

    def adapter(conn):
        seen.append(conn.execute(sa.text("SELECT 1")).scalar())
        return [Check("adapter procedure", False, "N8_POST missing", "create it")]

    def broken(conn):
        raise RuntimeError("no such package")

    checks = run_checks(reference.engine, reference.mapping, [adapter, broken],
                        uses={"invoice"})
    assert seen == [1]
    assert named(checks, "table valve").status == "OK"
    assert "not used here" in named(checks, "table valve").detail
    assert not any(c.name.startswith("update customer") for c in checks)  # no withholding
    assert named(checks, "insert invoice").status == "OK"
    assert [c.line() for c in failures(checks)] == [
        "FAIL adapter procedure: N8_POST missing -- create it",
        "FAIL adapter test_unused_parts_are_not_checked_and_the_adapter_adds_its_own."
        "<locals>.broken: its check failed: no such package"]
    assert named(checks, "table valve").line() != ""
    # with every part in use, the missing valve table is a failure
    assert named(run_checks(reference.engine, reference.mapping), "table valve").status == "FAIL"


# -- the command and the start -------------------------------------------------------------


def _config(tmp_path, mapping_toml: str) -> str:
    path = tmp_path / "bankgate.toml"
    path.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "bg.db"}"\n\n'
                    f'[gateway]\ndata_dir = "{tmp_path / "var"}"\n\n'
                    f'[n8]\ncreate = false\n{mapping_toml}')
    return str(path)


def test_the_command_prints_one_line_per_check_and_exits_1(reference, tmp_path, capsys):
    from bankgate.app.cli import main

    path = _config(tmp_path, '[n8.columns.bill]\namount = "YSJE"\n')
    assert main(["n8", "check", "-c", path]) == 1
    out = capsys.readouterr().out.splitlines()
    *checks, summary = out
    assert all(line.split(" ", 1)[0] in ("OK", "WARN", "FAIL") for line in checks)
    assert ("FAIL bill.amount: column n8_bill.YSJE missing -- map [n8.columns.bill] amount"
            " to one of: amount, ") in "\n".join(checks)
    assert len([line for line in checks if line.startswith("FAIL")]) == 1
    assert summary == f"{len(checks)} checks: {len(checks) - 1} OK, 0 WARN, 1 FAIL"

    good = _config(tmp_path, "")
    assert main(["-c", good, "n8", "check", "--problems"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(" 0 WARN, 0 FAIL")


def test_the_gateway_refuses_to_start_naming_table_and_column(reference, tmp_path):
    cfg = default_config(str(tmp_path / "var"))
    cfg.db_url = reference.url
    cfg.n8_create = False
    cfg.n8 = N8Mapping(columns={"bill": {"amount": "YSJE"}, "payment": {"channel": "QD"}})
    with pytest.raises(StartupError) as e:
        check_database(cfg, Store(cfg.db_url, cfg.n8))
    text = str(e.value)
    assert "n8: the mapping does not fit N8: FAIL bill.amount: column n8_bill.YSJE missing" in text
    assert "FAIL payment.channel: column n8_payment.QD missing" in text
    assert text.endswith("; run `bankgate n8 check` for the full report")
    assert "\n" not in text
    cfg.n8 = N8Mapping()
    check_database(cfg, Store(cfg.db_url, cfg.n8))  # the reference schema starts


def test_a_reference_schema_still_to_be_created_is_not_checked(tmp_path):
    cfg = default_config(str(tmp_path / "var"))
    cfg.db_url = f"sqlite:///{tmp_path / 'new.db'}"
    cfg.n8_create = True
    cfg.n8 = RENAMED  # nothing there yet: the gateway creates it at start
    check_database(cfg, Store(cfg.db_url, cfg.n8))


# -- PostgreSQL and MariaDB: an account without the grant to update the bills -----------------


def _grant_all_but_bill_update(c, dialect: str, schema: str, user: str) -> None:
    def q(name: str) -> str:
        return f"{schema}.{name}"

    if dialect == "postgresql":
        c.execute(sa.text(f"GRANT USAGE ON SCHEMA {schema} TO {user}"))
        c.execute(sa.text(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {user}"))
    else:
        c.execute(sa.text(f"GRANT SELECT ON {schema}.* TO {user}"))
    for stmt in (f"GRANT INSERT ON {q('n8_payment')} TO {user}",
                 f"GRANT INSERT ON {q('n8_payment_item')} TO {user}",
                 f"GRANT UPDATE (status) ON {q('n8_payment')} TO {user}",
                 f"GRANT UPDATE (withholding_bank, withholding_account) ON"
                 f" {q('n8_customer')} TO {user}",
                 f"GRANT INSERT, UPDATE ON {q('n8_invoice')} TO {user}"):
        c.execute(sa.text(stmt))


@pytest.mark.parametrize("kind", ["postgres", "mariadb"])
def test_a_missing_grant_is_reported_and_nothing_is_written(kind):
    admin_url = sa.engine.make_url(server_url(kind))  # skips when the server is absent
    pid = os.getpid()
    schema, role = f"n8chk_{pid}", f"bg_check_{pid}"
    password = secrets.token_hex(8)
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    pg = kind == "postgres"
    user = role if pg else f"'{role}'@'%'"
    with admin.connect() as c:
        if pg:
            c.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            c.execute(sa.text(f"CREATE SCHEMA {schema}"))
            c.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))
            c.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
        else:
            c.execute(sa.text(f"DROP DATABASE IF EXISTS {schema}"))
            c.execute(sa.text(f"CREATE DATABASE {schema}"))
            c.execute(sa.text(f"DROP USER IF EXISTS {user}"))
            c.execute(sa.text(f"CREATE USER {user} IDENTIFIED BY '{password}'"))
    mapping = N8Mapping(schema=schema)
    owner = Store(admin_url.render_as_string(hide_password=False), mapping)
    restricted = None
    try:
        owner.create_n8_tables()
        seed_fixture(owner)
        with admin.connect() as c:
            _grant_all_but_bill_update(c, admin.dialect.name, schema, user)
        before = counts(owner.engine, owner.n8)
        url = admin_url.set(username=role, password=None if pg else password,
                            database=admin_url.database if pg else schema)
        restricted = sa.create_engine(url)
        checks = run_checks(restricted, mapping)
        bad = failures(checks)
        expected = ["update bill (paid_amount, late_fee_paid)"]
        if pg:  # PostgreSQL's FOR UPDATE needs UPDATE on a column too; MariaDB's does not
            expected.append("lock bill (select for update)")
        assert [c.name for c in bad] == expected, lines(checks)
        if pg:
            grant = (f"GRANT UPDATE (paid_amount, late_fee_paid) ON {schema}.n8_bill"
                     f" TO {role}")
        else:
            grant = (f"GRANT UPDATE (paid_amount, late_fee_paid) ON {schema}.n8_bill"
                     f" TO '{role}'@'%'")
        assert bad[0].line() == (f"FAIL update bill (paid_amount, late_fee_paid): missing"
                                 f" grant -- {grant}")
        assert all(c.fix == grant for c in bad)
        # the probes that were allowed wrote nothing: they were rolled back
        for name in ("insert payment", "insert payment_item", "update payment (status)",
                     "lock payment (select for update)"):
            assert named(checks, name).status == "OK"
        assert counts(owner.engine, owner.n8) == before
        assert password not in "\n".join(lines(checks))
        # the grant it asks for is the one that was missing
        with admin.connect() as c:
            c.execute(sa.text(grant))
        restricted.dispose()
        assert failures(run_checks(restricted, mapping)) == []
        assert counts(owner.engine, owner.n8) == before
    finally:
        if restricted is not None:
            restricted.dispose()
        owner.stop()
        with admin.connect() as c:
            if pg:
                c.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
                c.execute(sa.text(f"DROP OWNED BY {role}"))
                c.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))
            else:
                c.execute(sa.text(f"DROP USER IF EXISTS {user}"))
                c.execute(sa.text(f"DROP DATABASE IF EXISTS {schema}"))
        admin.dispose()
