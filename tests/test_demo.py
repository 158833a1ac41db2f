"""bankgate.devtools.demo: demo tariffs, customers and bills in the (mapped) N8 tables."""

from __future__ import annotations

import os
import re
from collections import Counter
from datetime import date, datetime

import pytest
import sqlalchemy as sa

from bankgate.canon.messages import Origin, Outcome, PaymentRequest, QueryRequest
from bankgate.devtools import demo
from bankgate.domain.ledger import BankPolicy, Ledger
from bankgate.store.db import Store
from bankgate.store.n8 import N8Mapping

TODAY = date(2026, 11, 27)
N = 300

RENAMED = N8Mapping(
    tables={"customer": "HRB_KH", "tariff": "HRB_JG", "bill": "HRB_ZD", "payment": "HRB_JF",
            "payment_item": "HRB_JFMX", "invoice": "HRB_FP"},
    columns={
        "customer": {"customer_no": "KHBH", "name": "KHMC", "customer_class": "KHLB",
                     "heated_area": "GRMJ", "status": "ZT"},
        "bill": {"bill_id": "ZDBH", "customer_no": "KHBH", "amount": "YSJE",
                 "paid_amount": "SSJE", "due_date": "JZRQ", "period": "ZQ", "fee_type": "FYLX"},
        "tariff": {"unit_price": "DJ", "late_fee_ppm": "ZNJ_L"},
    },
)


def make(tmp_path, name="x.db", mapping=None) -> Store:
    store = Store("sqlite:///" + str(tmp_path / name), mapping)
    store.create_gateway_tables()
    store.create_n8_tables()
    return store


@pytest.fixture
def store(tmp_path):
    s = make(tmp_path)
    yield s
    s.stop()


def rows(store: Store, logical: str) -> list[tuple]:
    t = store.n8[logical]
    with store.n8_engine.connect() as c:
        return [tuple(r) for r in c.execute(sa.select(t).order_by(*t.primary_key.columns))]


def test_seed_counts_and_shape(store):
    calls = []
    stats = demo.seed(store, N, seed=7, today=TODAY, progress=lambda d, t: calls.append((d, t)))
    customers, bills, tariffs = rows(store, "customer"), rows(store, "bill"), rows(store, "tariff")

    assert stats["customers"] == len(customers) == N
    assert stats["bills"] == len(bills)
    assert stats["tariffs"] == len(tariffs) == 15
    assert calls[-1] == (N, N)
    assert {(t[0], t[1]) for t in tariffs} == {
        (f, k) for f in ("01", "02", "03", "04", "05") for k in "RIC"
    }
    assert all(t[2] > 0 and t[3] >= 0 for t in tariffs)

    nos = [c[0] for c in customers]
    assert nos == [str(100000001 + i) for i in range(N)]
    classes = Counter(c[3] for c in customers)
    assert set(classes) == {"R", "I", "C"}
    assert classes["R"] > classes["C"] > 0 and classes["I"] > 0
    assert stats["residential"] == classes["R"] and stats["industrial"] == classes["I"]
    assert {c[6] for c in customers} == {"A", "S"}  # ~1% suspended
    assert sum(c[6] == "S" for c in customers) == stats["suspended"] < N * 0.05
    assert all(c[5] > 0 for c in customers)  # heated area
    assert any(c[7] == 1 for c in customers)  # large customers
    with_account = [c for c in customers if c[8] is not None]
    assert with_account and all(c[9] and c[9].isdigit() for c in with_account)
    for c in customers:
        assert len(c[1].encode("gbk")) <= 60 and len(c[2].encode("gbk")) <= 80  # ref-fixed
        assert c[2].startswith("沈阳市" + c[4])
    assert any(c[1].endswith(("有限公司", "厂", "热力用户", "店", "中心"))
               for c in customers if c[3] != "R")

    # bills: 1-4 open per customer, across fee types and periods, some overdue
    per = Counter(b[1] for b in bills)
    assert set(per) == set(nos)
    assert all(1 <= n <= 4 for n in per.values())
    assert all(re.fullmatch(r"B\d+", b[0]) for b in bills)
    assert all(0 <= b[5] < b[4] and b[6] == 0 for b in bills)  # open: paid < amount
    assert {b[2] for b in bills} >= {"01", "02", "04"}
    assert {"2026-2027", "2026-10", "2026-11"} <= {b[3] for b in bills}
    overdue = [b for b in bills if b[7] < TODAY]
    assert 0 < len(overdue) < len(bills) and len(overdue) == stats["overdue_bills"]
    assert stats["amount_fen"] == sum(b[4] - b[5] for b in bills)
    for cust_bills in Counter((b[1], b[2], b[3]) for b in bills).values():
        assert cust_bills == 1  # one bill per customer, fee type and period

    # heating = tariff x heated area
    price = {(t[0], t[1]): t[2] for t in tariffs}
    cust = {c[0]: c for c in customers}
    for b in bills:
        if b[2] == "01":
            c = cust[b[1]]
            area_c = int(c[5] * 100)  # heated area in 1/100 m²
            assert b[4] == (price[("01", c[3])] * area_c + 50) // 100


def test_spec_customer_exists_and_the_ledger_serves_it(store):
    demo.seed(store, 200, today=TODAY)
    c = store.n8["customer"]
    with store.n8_engine.connect() as conn:
        row = conn.execute(sa.select(c).where(c.c.customer_no == "100000123")).mappings().one()
    assert row["status"] == "A"

    ledger = Ledger(store, {"b": BankPolicy("b", "105210", policy="any")},
                    now=lambda: datetime(2026, 11, 27, 9, 30))
    origin = Origin("b", TODAY, "093015")
    q = ledger.query(QueryRequest(origin, "100000123"))
    assert q.outcome is Outcome.OK and q.bills and q.total_due > 0
    assert any(b.fee_type == "01" for b in q.bills)
    p = ledger.pay(PaymentRequest(origin, "S1", "100000123", q.total, content="x"))
    assert p.outcome is Outcome.OK and p.remaining_due == 0

    # late fees accrue somewhere: some active customer is overdue as of today
    lates = [ledger.query(QueryRequest(origin, str(100000001 + i))) for i in range(40)]
    assert any(r.late_fee > 0 for r in lates)
    assert {r.outcome for r in lates} <= {Outcome.OK, Outcome.ACCOUNT_LOCKED}


def test_small_count(store):
    stats = demo.seed(store, 5, today=TODAY)
    assert [c[0] for c in rows(store, "customer")] == [f"10000000{i}" for i in range(1, 6)]
    assert stats["customers"] == 5 and 5 <= stats["bills"] <= 20


def test_deterministic(tmp_path):
    a, b, c = make(tmp_path, "a.db"), make(tmp_path, "b.db"), make(tmp_path, "c.db")
    sa_ = demo.seed(a, N, seed=3, today=TODAY)
    sb = demo.seed(b, N, seed=3, today=TODAY)
    demo.seed(c, N, seed=4, today=TODAY)
    for k in ("customers", "bills", "amount_fen", "overdue_bills", "suspended"):
        assert sa_[k] == sb[k]
    for t in ("customer", "bill", "tariff"):
        assert rows(a, t) == rows(b, t)
    assert rows(a, "customer") != rows(c, "customer")
    assert rows(a, "bill") != rows(c, "bill")
    for s in (a, b, c):
        s.stop()


def test_core_path_writes_the_same_rows(tmp_path):
    fast, core = make(tmp_path, "fast.db"), make(tmp_path, "core.db")
    s1 = demo.seed(fast, 150, seed=5, today=TODAY)
    s2 = demo.seed(core, 150, seed=5, today=TODAY, method="core")
    assert (s1["method"], s2["method"]) == ("sqlite-executemany", "core")
    for t in ("customer", "bill", "tariff"):
        assert rows(fast, t) == rows(core, t)
    other = make(tmp_path, "other.db")
    with pytest.raises(ValueError, match="unknown method"):
        demo.seed(other, 1, method="bogus")
    with pytest.raises(ValueError, match="needs postgresql"):
        demo.seed(other, 1, method="copy")
    assert rows(other, "customer") == []
    other.stop()
    fast.stop()
    core.stop()


def test_refuses_without_replace(store):
    demo.seed(store, 100, today=TODAY)
    before = rows(store, "bill")
    with pytest.raises(ValueError, match="already holds 100 customers.*replace"):
        demo.seed(store, 50, today=TODAY)
    assert rows(store, "bill") == before  # nothing touched

    stats = demo.seed(store, 50, seed=2, today=TODAY, replace=True)
    customers, bills = rows(store, "customer"), rows(store, "bill")
    assert len(customers) == stats["customers"] == 50
    assert len(bills) == stats["bills"]
    assert {b[1] for b in bills} == {c[0] for c in customers}
    assert len(rows(store, "tariff")) == 15


def test_replace_keeps_other_customers_and_drops_demo_payments(store):
    demo.seed(store, 30, today=TODAY)
    n8 = store.n8
    with store.n8_engine.begin() as c:
        c.execute(n8["customer"].insert().values(
            customer_no="K0001", name="真实用户", customer_class="R"))
        c.execute(n8["bill"].insert().values(
            bill_id="Z1", customer_no="K0001", fee_type="01", period="2026-2027",
            amount=100, due_date=TODAY))
        c.execute(n8["payment"].insert().values(
            pay_id="P1", customer_no="100000005", amount=1, pay_date=TODAY, bank_code="x",
            bank_serial="s", channel="01", created_at=datetime(2026, 11, 27)))
        c.execute(n8["payment_item"].insert().values(
            pay_id="P1", bill_id="B0000000001", principal=1, late_fee=0))
    demo.seed(store, 10, today=TODAY, replace=True)
    nos = [c[0] for c in rows(store, "customer")]
    assert "K0001" in nos and len(nos) == 11
    assert ("Z1", "K0001") in {(b[0], b[1]) for b in rows(store, "bill")}
    assert rows(store, "payment") == [] and rows(store, "payment_item") == []


def test_bad_counts(store):
    with pytest.raises(ValueError):
        demo.seed(store, -1)
    assert demo.seed(store, 0, today=TODAY)["customers"] == 0
    assert rows(store, "customer") == []


def test_seeds_n8_in_a_database_of_its_own(tmp_path):
    """[n8.database]: the demo writes N8's database only; the gateway's holds no N8
    table, and the ledger serves a demo customer across the two."""
    store = Store("sqlite:///" + str(tmp_path / "bg.db"), n8_url="sqlite:///"
                  + str(tmp_path / "n8.db"))
    try:
        store.create_gateway_tables()
        store.create_n8_tables()
        stats = demo.seed(store, 50, today=TODAY, supply=True)
        assert store.split and store.customer_count() == 50 == stats["customers"]
        assert not {t for t in sa.inspect(store.engine).get_table_names()
                    if t.startswith("n8_")}
        assert {"n8_customer", "n8_bill", "n8_valve"} <= set(
            sa.inspect(store.n8_engine).get_table_names())
        ledger = Ledger(store, {"b": BankPolicy("b", "105210", policy="any")},
                        now=lambda: datetime(2026, 11, 27, 10, 0))
        q = ledger.query(QueryRequest(Origin("b", TODAY, "100000"), "100000001"))
        assert q.outcome is Outcome.OK and q.name and q.bills
    finally:
        store.stop()


def test_goes_through_the_mapping(tmp_path):
    store = make(tmp_path, "renamed.db", RENAMED)
    stats = demo.seed(store, 150, today=TODAY)
    insp = sa.inspect(store.engine)
    tables = set(insp.get_table_names())
    assert {"HRB_KH", "HRB_ZD", "HRB_JG"} <= tables
    assert not tables & {"n8_customer", "n8_bill", "n8_tariff"}
    with store.engine.connect() as c:
        x = c.exec_driver_sql
        assert x("SELECT count(*) FROM HRB_KH").scalar() == 150
        assert x("SELECT count(*) FROM HRB_ZD").scalar() == stats["bills"]
        assert x("SELECT sum(YSJE - SSJE) FROM HRB_ZD").scalar() == stats["amount_fen"]
        assert x("SELECT count(*) FROM HRB_ZD WHERE JZRQ < '2026-11-27'").scalar() == (
            stats["overdue_bills"])
        assert x("SELECT count(*) FROM HRB_JG WHERE DJ > 0").scalar() == 15
        assert x("SELECT KHLB FROM HRB_KH WHERE KHBH = '100000123'").scalar() in "RIC"
        assert x("SELECT count(*) FROM HRB_KH WHERE GRMJ > 0").scalar() == 150
    # the same data as under the reference names
    plain = make(tmp_path, "plain.db")
    demo.seed(plain, 150, today=TODAY)
    for t in ("customer", "bill", "tariff"):
        assert rows(store, t) == rows(plain, t)
    with pytest.raises(ValueError, match="HRB_KH"):
        demo.seed(store, 1, today=TODAY)
    store.stop()
    plain.stop()


def _postgres_url() -> str:
    url = os.environ.get("BANKGATE_TEST_POSTGRES",
                         "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    try:
        e = sa.create_engine(url)
        with e.connect() as c:
            c.execute(sa.text("SELECT 1"))
        e.dispose()
    except Exception as ex:  # noqa: BLE001 - any failure means "not here"
        if os.environ.get("BANKGATE_REQUIRE_SERVERS") == "1":
            pytest.fail(f"postgres not reachable at {url}: {ex}")
        pytest.skip(f"postgres not reachable at {url}: {type(ex).__name__}")
    return url


def test_postgres_copy_writes_the_same_rows(tmp_path):
    """COPY into a private schema (never the tables other tests use), under renamed
    tables and columns, gives exactly the rows of the SQLite path."""
    url = _postgres_url()
    schema = f"bg_demo_{os.getpid()}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        mapping = N8Mapping(tables=RENAMED.tables, columns=RENAMED.columns, schema=schema)
        pg = Store(url, mapping)
        pg.create_n8_tables()
        stats = demo.seed(pg, 400, seed=9, today=TODAY)
        assert stats["method"] == "postgresql-copy"
        lite = make(tmp_path, "lite.db")
        demo.seed(lite, 400, seed=9, today=TODAY)
        for t in ("customer", "bill", "tariff"):
            assert rows(pg, t) == rows(lite, t)
        with pytest.raises(ValueError, match="already holds 400"):
            demo.seed(pg, 10, today=TODAY)
        again = demo.seed(pg, 20, seed=9, today=TODAY, replace=True)  # TRUNCATE path
        assert len(rows(pg, "customer")) == 20 and len(rows(pg, "bill")) == again["bills"]
        core = demo.seed(pg, 400, seed=9, today=TODAY, replace=True, method="core")
        assert core["method"] == "core"
        assert rows(pg, "bill") == rows(lite, "bill")
        pg.stop()
        lite.stop()
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()
