"""N8's own units and codes ([n8.values], [n8.codes]): converted at the column, both
ways, in every statement -- and refused, naming the column, when a value does not fit."""

from __future__ import annotations

import re
import textwrap
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import BANKS, LEGACY, FakeClock, make_store, seed_fixture
from hypothesis import given
from hypothesis import strategies as st
from ledger_helpers import pay, query
from sqlalchemy.dialects import mssql, oracle, registry

from bankgate.app.config import ConfigError, load_config
from bankgate.canon.money import MAX_FEN
from bankgate.domain.ledger import Ledger
from bankgate.store import n8values
from bankgate.store.db import Store
from bankgate.store.n8 import MappingError, N8Mapping, build_tables
from bankgate.store.n8values import Char8Date, Char14DateTime, DateTimeDate, Yuan

YUAN = Yuan("bill.amount")
SQLITE = sa.create_engine("sqlite://").dialect

# -- money --------------------------------------------------------------------------------


def _read(t, value):
    return t.result_processor(SQLITE, None)(value)


@given(st.integers(min_value=-MAX_FEN, max_value=MAX_FEN))
def test_fen_to_yuan_to_fen_is_identity(fen):
    yuan = YUAN.process_bind_param(fen, SQLITE)
    assert isinstance(yuan, Decimal) and yuan.as_tuple().exponent == -2
    assert yuan == Decimal(fen) / 100
    # as each driver may hand it back: Decimal, text, float (SQLite's REAL), int
    assert _read(YUAN, yuan) == fen
    assert _read(YUAN, str(yuan)) == fen
    assert _read(YUAN, float(yuan)) == fen
    if fen % 100 == 0:
        assert _read(YUAN, fen // 100) == fen


@pytest.mark.parametrize("bad", [Decimal("12.345"), "0.001", 12.345, "abc"])
def test_a_yuan_value_finer_than_a_fen_is_refused_naming_the_column(bad):
    with pytest.raises(ValueError, match=r"^N8 bill\.amount: .* is not an amount in yuan "
                                         r"to the fen \(0\.01\)"):
        _read(YUAN, bad)


def test_a_float_sum_is_read_to_the_nearest_fen():
    assert _read(YUAN, 0.1 + 0.2) == 30  # 0.30000000000000004 from SQLite's SUM
    assert _read(YUAN, None) is None


@pytest.mark.parametrize("bad", [1.5, Decimal("1.50"), "150", True])
def test_only_integer_fen_is_written(bad):
    with pytest.raises(ValueError, match="bill.amount: expected integer fen"):
        YUAN.process_bind_param(bad, SQLITE)


# -- dates ---------------------------------------------------------------------------------


@given(st.dates(min_value=date(1900, 1, 1)))
def test_char8_and_datetime_dates_round_trip(d):
    c8 = Char8Date("bill.due_date")
    assert c8.process_bind_param(d, None) == d.strftime("%Y%m%d")
    assert c8.process_result_value(d.strftime("%Y%m%d"), None) == d
    dt = DateTimeDate("bill.due_date")
    assert dt.process_bind_param(d, None) == datetime(d.year, d.month, d.day)
    assert dt.process_result_value(datetime(d.year, d.month, d.day), None) == d


@given(st.datetimes(min_value=datetime(1900, 1, 1)).map(lambda t: t.replace(microsecond=0)))
def test_char14_round_trips(t):
    c14 = Char14DateTime("payment.created_at")
    assert c14.process_result_value(c14.process_bind_param(t, None), None) == t


@pytest.mark.parametrize("bad", ["2026-11-27", "20261332", "        ", "2026112"])
def test_a_bad_char8_date_is_refused_naming_the_column(bad):
    with pytest.raises(ValueError, match=r"^N8 bill\.due_date: .* is not a date as YYYYMMDD"):
        Char8Date("bill.due_date").process_result_value(bad, None)


# -- codes ---------------------------------------------------------------------------------

TABLES = build_tables(LEGACY)


def _sql(stmt, dialect=None) -> str:
    return str(stmt.compile(dialect=dialect or SQLITE, compile_kwargs={"literal_binds": True}))


def test_a_code_compares_with_every_physical_code_of_the_logical_one():
    c = TABLES["customer"]
    where = _sql(sa.select(c.c.customer_no).where(c.c.status == "A"))
    assert '"ZT" IN (\'0\', \'Z\')' in where
    assert '"ZT" NOT IN (\'0\', \'Z\')' in _sql(sa.select(c.c.name).where(c.c.status == "S"))
    assert '"ZT" NOT IN (\'0\', \'Z\')' in _sql(sa.select(c.c.name).where(c.c.status != "A"))
    b = TABLES["bill"]
    assert '"FYLX" IN (\'RL\', \'WY\')' in _sql(
        sa.select(b.c.bill_id).where(b.c.fee_type.in_(["01", "02"])))
    assert '"FYLX" = \'RL\'' in _sql(sa.select(b.c.bill_id).where(b.c.fee_type == "01"))
    # a bound parameter: the value is converted when it is bound
    stmt = sa.select(b.c.bill_id).where(b.c.fee_type == sa.bindparam("f"))
    compiled = stmt.compile(dialect=SQLITE)
    assert compiled.binds["f"].type.process_bind_param("02", None) == "WY"


def test_a_bound_parameter_against_several_codes_compares_logical_values():
    c = TABLES["customer"]
    sql = _sql(sa.select(c.c.name).where(c.c.status == sa.bindparam("s", "A")))
    assert "CASE WHEN" in sql and "ELSE 'S' END = 'A'" in sql


def test_codes_read_and_write():
    status = TABLES["customer"].c.status.type
    assert [status.process_result_value(v, None) for v in ("0", "Z", "1", "7")] == [
        "A", "A", "S", "S"]  # anything not active reads as locked
    assert status.process_bind_param("A", None) == "0"  # the first code is written
    fee = TABLES["bill"].c.fee_type.type
    assert fee.process_result_value("RL", None) == "01"
    assert fee.process_result_value("QT", None) == "QT"  # unlisted: unchanged
    no_locked = build_tables(N8Mapping(codes={"status": {"active": ["0"]}}))
    with pytest.raises(ValueError, match=r"customer\.status: no physical code for 'S'"):
        no_locked["customer"].c.status.type.process_bind_param("S", None)


# -- the mapping and its configuration ------------------------------------------------------


def test_plain_means_no_conversion():
    assert N8Mapping().plain
    assert N8Mapping(values={"bill": {"amount": "fen", "due_date": "date"}}).plain
    assert not N8Mapping(values={"bill": {"amount": "yuan"}}).plain
    assert not N8Mapping(codes={"fee_type": {"01": ["RL"]}}).plain
    assert not LEGACY.plain


@pytest.mark.parametrize("mapping, message", [
    (N8Mapping(values={"bil": {"amount": "yuan"}}), "n8.values.bil: unknown N8 table"),
    (N8Mapping(values={"bill": {"amout": "yuan"}}), "n8.values.bill.amout: unknown column"),
    (N8Mapping(values={"bill": {"amount": "cents"}}),
     "n8.values.bill.amount: unknown representation 'cents'"),
    (N8Mapping(values={"bill": {"due_date": "yuan"}}),
     "n8.values.bill.due_date: 'yuan' does not fit bill.due_date, a date column"),
    (N8Mapping(values={"bill": {"amount": "trim"}}),
     "n8.values.bill.amount: 'trim' does not fit bill.amount, a money column"),
    (N8Mapping(values={"tariff": {"late_fee_ppm": "yuan"}}),
     "n8.values.tariff.late_fee_ppm: 'yuan' does not fit tariff.late_fee_ppm, a column "
     "with no representations"),
    (N8Mapping(codes={"colour": {"R": ["1"]}}), "n8.codes.colour: unknown code map"),
    (N8Mapping(codes={"fee_type": {"06": ["X"]}}), "n8.codes.fee_type.06: unknown code"),
    (N8Mapping(codes={"fee_type": {"01": ["X"], "02": ["X"]}}),
     "n8.codes.fee_type.02: code 'X' is also listed for '01'"),
    (N8Mapping(codes={"status": {"locked": ["1"]}}), "n8.codes.status: expected the key"),
])
def test_a_bad_mapping_names_the_key(mapping, message):
    with pytest.raises(MappingError, match="^" + message.replace("(", r"\(").replace(
            ".", r"\.")):
        build_tables(mapping)


def _config(tmp_path, text):
    p = tmp_path / "bankgate.toml"
    p.write_text(text, encoding="utf-8")
    return load_config(p)


def test_the_configuration_reads_values_and_codes(tmp_path):
    cfg = _config(tmp_path, """
[n8.values.bill]
amount = "yuan"
due_date = "char8"
bill_id = "trim"
[n8.codes.status]
active = ["0", "Z"]
[n8.codes.payment_status]
N = "0"
C = ["9"]
""")
    assert cfg.n8.values == {"bill": {"amount": "yuan", "due_date": "char8", "bill_id": "trim"}}
    assert cfg.n8.codes == {"status": {"active": ["0", "Z"]},
                            "payment_status": {"N": ["0"], "C": ["9"]}}
    assert not cfg.n8.plain


@pytest.mark.parametrize("text, key, problem", [
    ('[n8.values.bill]\ndue_date = "yuan"\n', "n8.values.bill.due_date", "does not fit"),
    ('[n8.values.bill]\namount = 2\n', "n8.values.bill.amount", "expected a string"),
    ('[n8.codes.status]\nactive = []\n', "n8.codes.status.active", "one or more codes"),
    ('[n8.codes.status]\nactive = [0]\n', "n8.codes.status.active", "one or more codes"),
    ('[n8.codes.customer_class]\nX = ["1"]\n', "n8.codes.customer_class.X", "unknown code"),
    ('[n8.valus.bill]\namount = "yuan"\n', "n8.valus", "unknown key"),
])
def test_a_bad_configuration_names_the_key(tmp_path, text, key, problem):
    with pytest.raises(ConfigError) as e:
        _config(tmp_path, text)
    assert e.value.key == key and problem in e.value.problem


# -- the legacy schema: what the mapped metadata creates ------------------------------------


def test_the_legacy_ddl_is_n8_shaped():
    from sqlalchemy.schema import CreateTable

    ddl = {k: str(CreateTable(t).compile(dialect=SQLITE)) for k, t in TABLES.items()}
    assert '"YSJE" NUMERIC(12, 2) NOT NULL' in ddl["bill"]
    assert '"JZRQ" CHAR(8) NOT NULL' in ddl["bill"]
    assert '"ZDBH" CHAR(32) NOT NULL' in ddl["bill"]
    assert '"CZSJ" CHAR(14) NOT NULL' in ddl["payment"]
    assert "\"ZT\" VARCHAR(1) DEFAULT '0' NOT NULL" in ddl["customer"]  # "A" as N8 writes it
    ref = {k: str(CreateTable(t).compile(dialect=SQLITE))
           for k, t in build_tables(N8Mapping()).items()}
    assert "amount BIGINT NOT NULL" in ref["bill"] and "due_date DATE NOT NULL" in ref["bill"]


# -- through a database ------------------------------------------------------------------------

DB_BACKENDS = ["sqlite-legacy", "postgres-legacy", "mariadb-legacy"]


@pytest.fixture(params=DB_BACKENDS)
def legacy(request, tmp_path):
    s = make_store(request.param, tmp_path)
    seed_fixture(s)
    yield s
    if s.dialect != "sqlite":
        s.drop_all()
    s.stop()


def _raw(store, sql):
    with store.engine.connect() as c:
        return c.exec_driver_sql(sql).all()


def test_a_payment_is_stored_in_n8s_units_and_codes(legacy):
    ledger = Ledger(legacy, dict(BANKS), now=FakeClock())
    assert ledger.query(query()).outcome.name == "OK"
    r = ledger.pay(pay("S1"))
    assert r.outcome.name == "OK" and r.amount == 548000
    rows = {row[0].rstrip(): row[1:] for row in _raw(
        legacy, 'SELECT "ZDBH", "SSJE", "ZNJ_SS" FROM "HRB_ZD" ORDER BY "ZDBH"'
        if legacy.dialect != "mysql" else
        "SELECT ZDBH, SSJE, ZNJ_SS FROM HRB_ZD ORDER BY ZDBH")}
    assert [Decimal(str(v)) for v in rows["B0001"]] == [Decimal("2600"), Decimal("130")]
    q = ('SELECT "JE", "JFRQ", "ZT", "CZSJ" FROM "HRB_JF"' if legacy.dialect != "mysql"
         else "SELECT JE, JFRQ, ZT, CZSJ FROM HRB_JF")
    ((amount, pay_date, status, created),) = _raw(legacy, q)
    assert Decimal(str(amount)) == Decimal("5480") and pay_date == "20261127"
    assert status == "0" and created == "20261127093000"
    # and the gateway reads them back as fen, dates, its own codes
    b = legacy.n8["bill"]
    with legacy.engine.connect() as c:
        row = c.execute(sa.select(b.c.paid_amount, b.c.late_fee_paid, b.c.due_date,
                                  b.c.fee_type).where(b.c.bill_id == "B0001")).one()
    assert tuple(row) == (260000, 13000, date(2026, 8, 19), "01")


def test_sums_come_back_in_fen(legacy):
    b, c = legacy.n8["bill"], legacy.n8["customer"]
    q = sa.select(
        sa.func.sum(b.c.amount), sa.func.coalesce(sa.func.sum(b.c.paid_amount), 0),
        sa.func.sum(sa.case((b.c.fee_type == "01", b.c.amount), else_=0)),
        sa.func.sum(b.c.amount - b.c.paid_amount), sa.func.max(b.c.due_date),
        sa.func.sum(n8values.sql_fen(b.c.amount)),
    ).select_from(b.join(c, c.c.customer_no == b.c.customer_no)).where(c.c.status == "A")
    with legacy.engine.connect() as conn:
        got = tuple(conn.execute(q).one())
    # the active customers' bills (100000300 is locked: its 50000 is left out)
    amounts = 260000 + 15000 + 260000 + 1000000 + 50000
    assert got == (amounts, 50000, amounts - 15000, amounts - 50000, date(2026, 12, 31),
                   amounts)
    assert all(type(v) is int for v in got[:4])  # noqa: E721 - not a Decimal


def test_a_yuan_value_with_three_decimals_is_refused_on_read(legacy):
    # what the driver hands back for a DECIMAL with a third decimal
    three = sa.type_coerce(sa.literal_column("CAST(12.345 AS DECIMAL(12,3))"),
                           legacy.n8["bill"].c.amount.type)
    with legacy.engine.connect() as c, pytest.raises(
            ValueError, match=r"N8 bill\.amount: .*12\.345.* is not an amount in yuan"):
        c.execute(sa.select(three)).all()
    two = sa.type_coerce(sa.literal_column("CAST(12.34 AS DECIMAL(12,2))"),
                         legacy.n8["bill"].c.amount.type)
    with legacy.engine.connect() as c:
        assert c.execute(sa.select(two)).scalar() == 1234


def test_a_status_code_not_in_the_map_reads_as_locked(legacy):
    q = ('UPDATE "HRB_KH" SET "ZT" = \'X\' WHERE "KHBH" = \'100000123\''
         if legacy.dialect != "mysql" else
         "UPDATE HRB_KH SET ZT = 'X' WHERE KHBH = '100000123'")
    with legacy.engine.begin() as c:
        c.exec_driver_sql(q)
    ledger = Ledger(legacy, dict(BANKS), now=FakeClock())
    assert ledger.query(query()).outcome.name == "ACCOUNT_LOCKED"
    active = legacy.run_sync(lambda tx: tx.customers_with_open_bills(10))
    assert active == ["100000200"]  # status IN ('0', 'Z'): neither X nor 1


def test_the_postgres_hot_path_is_only_for_a_plain_mapping(tmp_path):
    from conftest import server_url

    url = server_url("postgres")
    plain, legacy = Store(url, N8Mapping()), Store(url, LEGACY)
    try:
        assert plain.hot_path is not None
        assert legacy.hot_path is None
    finally:
        plain.stop()
        legacy.stop()


def test_demo_seeding_writes_n8s_units(tmp_path):
    from bankgate.devtools import demo

    store = make_store("sqlite-legacy", tmp_path)
    try:
        stats = demo.seed(store, 30, today=date(2026, 11, 27))
        assert stats["method"] == "core"
        with pytest.raises(ValueError, match="cannot convert values"):
            demo.seed(store, 1, replace=True, method="executemany")
        raw = _raw(store, 'SELECT "YSJE", "JZRQ", "FYLX" FROM "HRB_ZD"')
        assert raw and all(len(d) == 8 and d.isdigit() for _a, d, _f in raw)
        assert {f for _a, _d, f in raw} <= {"RL", "WY", "ZQ", "DF", "JK"}
        b = store.n8["bill"]
        with store.engine.connect() as c:
            total = c.execute(sa.select(sa.func.sum(b.c.amount))).scalar()
        assert total == sum(int(Decimal(str(a)) * 100) for a, _d, _f in raw)
    finally:
        store.stop()


# -- other databases: compiled -------------------------------------------------------------

DIALECTS = {"mssql": mssql.dialect(), "oracle": oracle.dialect(),
            "db2": registry.load("ibm_db_sa")()}


@pytest.mark.parametrize("name", DIALECTS)
def test_converted_statements_compile_with_converted_values(name):
    d = DIALECTS[name]
    b, p, c = TABLES["bill"], TABLES["payment"], TABLES["customer"]
    upd = b.update().where(b.c.bill_id == "B1").values(
        paid_amount=b.c.paid_amount + sa.bindparam("b_p", 12345, type_=b.c.paid_amount.type))
    sql = _sql(upd, d)
    assert "123.45" in sql and "SSJE" in sql
    ins = p.insert().values(pay_id="P1", customer_no="C1", amount=548000,
                            pay_date=date(2026, 11, 27), bank_code="105210",
                            bank_serial="S1", channel="01", status="N",
                            created_at=datetime(2026, 11, 27, 9, 30))
    sql = _sql(ins, d)
    assert "5480.00" in sql and "'20261127'" in sql and "'20261127093000'" in sql
    assert "'0'" in sql  # payment status N
    sel = sa.select(c.c.customer_no).where(c.c.status == "A", c.c.customer_class == "I")
    sql = _sql(sel, d)
    assert "IN ('0', 'Z')" in sql and "= '2'" in sql
    # bound, not rendered: the processors give the converted values
    compiled = upd.compile(dialect=d)
    params = compiled.construct_params()
    proc = compiled._bind_processors
    value = proc["b_p"](params["b_p"]) if "b_p" in proc else params["b_p"]
    assert Decimal(str(value)) == Decimal("123.45")


# -- the documentation ------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_the_example_mapping_is_the_legacy_copy_the_suite_runs_under():
    assert load_config(DOCS / "examples" / "n8-mapping.toml").n8 == LEGACY


def _value_mapping_blocks() -> list[str]:
    text = (DOCS / "n8-mapping.rst").read_text(encoding="utf-8")
    section = text.split("\nValue mapping\n=============\n", 1)[1]
    section = re.split(r"\n\S[^\n]*\n=+\n", section, maxsplit=1)[0]  # to the next title
    blocks = re.findall(r"\.\. code-block:: (\w+)\n\n((?:   .*\n|\n)+)", section)
    return [(lang, textwrap.dedent(body)) for lang, body in blocks]


def test_the_docs_value_mapping_examples_parse_and_show_real_errors(tmp_path):
    blocks = _value_mapping_blocks()
    tomls = [b for lang, b in blocks if lang == "toml"]
    assert tomls
    for body in tomls:
        cfg = _config(tmp_path, body)
        assert not cfg.n8.plain
    texts = "\n".join(b for lang, b in blocks if lang == "text")
    # the error the page shows is the one the code gives
    with pytest.raises(ValueError) as e:
        _read(Yuan("bill.amount"), Decimal("12.345"))
    assert str(e.value) in texts
    with pytest.raises(ConfigError) as e:
        _config(tmp_path, '[n8.values.bill]\ndue_date = "yuan"\n')
    assert f"{e.value.key}: {e.value.problem}" in texts


def test_a_days_work_under_the_legacy_mapping_compiles_for_each_dialect(tmp_path):
    from ledger_helpers import TODAY, rev

    store = Store(f"sqlite:///{tmp_path / 'x.db'}", LEGACY)
    store.row_locks = True  # the locking reads other databases get
    store.create_gateway_tables()
    store.create_n8_tables()
    seed_fixture(store)
    statements = []

    @sa.event.listens_for(store.engine, "before_execute")
    def capture(conn, clause, multiparams, params, execution_options):
        if isinstance(clause, sa.sql.ClauseElement):
            statements.append(clause)

    try:
        ledger = Ledger(store, dict(BANKS), now=FakeClock())
        ledger.query(query())
        assert ledger.pay(pay("S1")).outcome.name == "OK"
        assert ledger.reverse(rev("R1", "S1")).outcome.name == "OK"
        ledger.pay(pay("S2", amount=20000, bank="overpay"))
        ledger.pay(pay("T1", customer="100000200", amount=1000000, bank="twophase"))
        ledger.expire_pending()
        ledger.cutoff("fixed", TODAY)
    finally:
        store.stop()
    touched = [s for s in statements if any(n in str(s) for n in ("HRB_ZD", "HRB_KH",
                                                                   "HRB_JF", "HRB_JG"))]
    assert len(touched) >= 5
    assert any(type(s).__name__ == "Update" and "SSJE" in str(s) for s in touched)
    for d in DIALECTS.values():
        for stmt in touched:
            sql = str(stmt.compile(dialect=d, compile_kwargs={"render_postcompile": True}))
            assert "n8_bill" not in sql and "n8_customer" not in sql
