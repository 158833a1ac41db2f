"""Shared fixtures: stores on every database this machine has.

The store and ledger tests run on SQLite (plain and under a renamed N8
mapping), PostgreSQL and MariaDB.  The server URLs come from
``BANKGATE_TEST_POSTGRES`` / ``BANKGATE_TEST_MARIADB`` (defaulting to the
local servers); a server that cannot be reached skips its tests with the
reason -- unless ``BANKGATE_REQUIRE_SERVERS=1`` (CI), where it fails them.  The
folded N8 statements also run on MariaDB through mysqlclient, its C driver
(:func:`mysqlclient_url`): missing, it skips or fails the same way.
"""

from __future__ import annotations

import atexit
import os
from datetime import date, datetime

import pytest
import sqlalchemy as sa
from hypothesis import settings

from bankgate.domain.ledger import BankPolicy, Ledger
from bankgate.store.db import Store
from bankgate.store.n8 import N8Mapping

# Property tests assert properties, not speed (bench/ measures speed): no per-example
# deadline, which on a loaded CI machine fails an example for being slow, not wrong.
settings.register_profile("bankgate", deadline=None)
settings.load_profile("bankgate")

SERVERS = {
    "postgres": os.environ.get(
        "BANKGATE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ),
    "mariadb": os.environ.get(
        "BANKGATE_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/test"
    ),
}

# A copy of the reference schema under other names, as a real N8 might have.
RENAMED = N8Mapping(
    tables={
        "customer": "HRB_KH", "tariff": "HRB_JG", "bill": "HRB_ZD", "payment": "HRB_JF",
        "payment_item": "HRB_JFMX", "invoice": "HRB_FP",
    },
    columns={
        "customer": {"customer_no": "KHBH", "name": "KHMC", "address": "DZ",
                     "customer_class": "KHLB", "status": "ZT"},
        "bill": {"bill_id": "ZDBH", "customer_no": "KHBH", "amount": "YSJE",
                 "paid_amount": "SSJE", "late_fee_paid": "ZNJ_SS", "due_date": "JZRQ",
                 "period": "ZQ", "fee_type": "FYLX"},
        "tariff": {"late_fee_ppm": "ZNJ_L", "unit_price": "DJ"},
        "payment": {"pay_id": "JFBH", "amount": "JE", "status": "ZT"},
        "payment_item": {"pay_id": "JFBH", "bill_id": "ZDBH"},
    },
)

# An N8 in its own units and codes (docs/n8-mapping.rst, "Value mapping"): money in
# yuan DECIMAL(12,2), dates as CHAR(8) text, keys in CHAR(n), its own codes; created
# from the mapping, so the whole suite runs against a legacy-shaped schema.
LEGACY = N8Mapping(
    tables=dict(RENAMED.tables),
    columns={
        **RENAMED.columns,
        "payment": {**RENAMED.columns["payment"], "pay_date": "JFRQ", "created_at": "CZSJ"},
        "payment_item": {**RENAMED.columns["payment_item"], "principal": "BJ",
                         "late_fee": "ZNJ"},
        "invoice": {"invoice_no": "FPH", "amount": "JE", "status": "ZT"},
    },
    values={
        "bill": {"amount": "yuan", "paid_amount": "yuan", "late_fee_paid": "yuan",
                 "due_date": "char8", "bill_id": "trim", "customer_no": "trim"},
        "payment": {"amount": "yuan", "pay_date": "char8", "created_at": "char14",
                    "customer_no": "trim"},
        "payment_item": {"principal": "yuan", "late_fee": "yuan", "bill_id": "trim"},
        "invoice": {"amount": "yuan"},
        "tariff": {"unit_price": "yuan"},
        "customer": {"customer_no": "trim"},
    },
    codes={
        "status": {"active": ["0", "Z"], "locked": ["1"]},
        "customer_class": {"R": ["1"], "I": ["2"], "C": ["3"]},
        "fee_type": {"01": ["RL"], "02": ["WY"], "03": ["ZQ"], "04": ["DF"], "05": ["JK"]},
        "payment_status": {"N": ["0"], "P": ["1"], "C": ["9"]},
        "invoice_status": {"U": ["0"], "I": ["1"], "V": ["2"]},
    },
)

BACKENDS = ["sqlite", "sqlite-renamed", "sqlite-legacy", "postgres", "mariadb", "sqlite+sqlite"]
TODAY = date(2026, 11, 27)
NOW = datetime(2026, 11, 27, 9, 30, 0)


def _reachable(url: str) -> str | None:
    try:
        e = sa.create_engine(url)
        with e.connect() as c:
            c.execute(sa.text("SELECT 1"))
        e.dispose()
        return None
    except Exception as ex:  # noqa: BLE001 - any failure means "not here"
        return f"{type(ex).__name__}: {str(ex).splitlines()[0][:120]}"


_private: dict[str, str] = {}


def _private_database(url: str, suffix: str = "") -> str:
    """A database of this test run's own on the server at ``url``.

    Several test runs may share one server (developers, CI); each works in
    ``bgtest_<pid>`` (``bgtest_<pid>_<suffix>`` for a second one, such as N8's
    beside the gateway's), created here and dropped at exit.
    """
    name = f"bgtest_{os.getpid()}" + (f"_{suffix}" if suffix else "")
    u = sa.engine.make_url(url)
    admin = sa.create_engine(u, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        c.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()

    def drop():
        e = sa.create_engine(u, isolation_level="AUTOCOMMIT")
        try:
            with e.connect() as c:
                if u.get_backend_name() == "postgresql":
                    c.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                else:
                    c.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        finally:
            e.dispose()

    atexit.register(drop)
    return u.set(database=name).render_as_string(hide_password=False)


def _missing(msg: str, what: str = "servers are") -> None:
    """Skip with ``msg``; fail under ``BANKGATE_REQUIRE_SERVERS=1`` (CI)."""
    if os.environ.get("BANKGATE_REQUIRE_SERVERS") == "1":
        pytest.fail(f"{msg} (BANKGATE_REQUIRE_SERVERS=1: {what} required here)")
    pytest.skip(msg)


def mysqlclient_url() -> str:
    """The MariaDB server's URL through mysqlclient (``MySQLdb``, the C driver of the
    ``mysqlclient`` extra), which ``make`` builds where Debian's ``libmariadb-dev`` and
    ``pkg-config`` are installed (``.ci/run`` installs them)."""
    try:
        import MySQLdb  # noqa: F401
    except ImportError:
        _missing("mysqlclient (MySQLdb, MariaDB's C driver) is not installed: install Debian's "
                 "libmariadb-dev and pkg-config, then `.venv/bin/pip install 'mysqlclient>=2.3'`"
                 " (or `make clean test`)", "the C driver is")
    u = sa.engine.make_url(SERVERS["mariadb"])
    return u.set(drivername=f"{u.get_backend_name()}+mysqldb").update_query_dict(
        {"charset": "utf8mb4"}).render_as_string(hide_password=False)


def server_url(kind: str, suffix: str = "") -> str:
    """This run's private database on server ``kind`` (a second one with ``suffix``);
    ``mysqlclient`` is the MariaDB server through the C driver, in databases of its own."""
    if kind == "mysqlclient":
        url, suffix = mysqlclient_url(), "c" + suffix
    else:
        url = SERVERS[kind]
    if (url, suffix) not in _private:
        why = _reachable(url)
        if why:
            _missing(f"{kind} server not reachable at {url}: {why}")
        _private[url, suffix] = _private_database(url, suffix)
    return _private[url, suffix]


def make_store(backend: str, tmp_path) -> Store:
    """``backend``: sqlite, sqlite-renamed, postgres, mariadb; or a pair
    "GATEWAY+N8" (``sqlite+sqlite``, ``postgres+mariadb``, ``postgres+mysqlclient``
    ...): N8 in a database of its own ([n8.database])."""
    mapping = (RENAMED if backend.endswith("-renamed")
               else LEGACY if backend.endswith("-legacy") else N8Mapping())
    kind = backend.removesuffix("-renamed").removesuffix("-legacy")
    kind, _, n8_kind = kind.partition("+")
    url = f"sqlite:///{tmp_path / 'bg.db'}" if kind == "sqlite" else server_url(kind)
    n8_url = None
    if n8_kind:  # on the gateway's server: a second database (postgres+postgres)
        n8_url = (f"sqlite:///{tmp_path / 'n8.db'}" if n8_kind == "sqlite"
                  else server_url(n8_kind, "n8" if n8_kind == kind else ""))
    store = Store(url, mapping, threads=4, n8_url=n8_url)
    if kind != "sqlite" or (n8_kind and n8_kind != "sqlite"):
        store.drop_all()
    store.create_gateway_tables()
    store.create_n8_tables()
    return store


def close_store(s: Store) -> None:
    """Drop what a server holds of ``s`` (SQLite files go with tmp_path), stop it."""
    if s.dialect != "sqlite" or s.n8_dialect != "sqlite":
        s.drop_all()
    s.stop()


def store_fixture(backends: list[str]):
    """A ``store`` fixture over ``backends``.  A test module assigns one to the name
    ``store`` to run on more back-ends than :data:`BACKENDS` (its ``ledger`` fixture
    follows): ``store = store_fixture(BACKENDS + LEDGER_PAIRS)``."""

    @pytest.fixture(params=backends, name="store")
    def _store(request, tmp_path):
        s = make_store(request.param, tmp_path)
        yield s
        close_store(s)

    return _store


store = store_fixture(BACKENDS)

# N8 in a database of its own on real servers, in N8's legacy shape: the ledger suite
# and the property tests run on these too (not every store test: see store_fixture)
LEDGER_PAIRS = ["sqlite+mariadb-legacy", "postgres+postgres-legacy"]


BANKS = {
    "fixed": BankPolicy("fixed", "105210", policy="exact"),
    "partial": BankPolicy("partial", "103210", policy="partial"),
    "overpay": BankPolicy("overpay", "104210", policy="overpay"),
    "any": BankPolicy("any", "106210", policy="any"),
    "latest": BankPolicy("latest", "107210", policy="any", latest_only_reversal=True),
    "twophase": BankPolicy("twophase", "108210", policy="exact", two_phase=True,
                           confirm_timeout=60),
}


class FakeClock:
    def __init__(self, now: datetime = NOW):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def seed_fixture(store: Store) -> None:
    """A small hand-built N8: every case the ledger tests need."""
    n8 = store.n8
    with store.n8_engine.begin() as c:
        c.execute(n8["tariff"].insert(), [
            {"fee_type": "01", "customer_class": "R", "unit_price": 2600, "late_fee_ppm": 500},
            {"fee_type": "01", "customer_class": "I", "unit_price": 3200, "late_fee_ppm": 1000},
            {"fee_type": "02", "customer_class": "R", "unit_price": 150, "late_fee_ppm": 0},
        ])
        c.execute(n8["customer"].insert(), [
            {"customer_no": "100000123", "name": "张三", "address": "沈阳市和平区幸福小区1号楼",
             "customer_class": "R", "status": "A"},
            {"customer_no": "100000200", "name": "沈阳重型机械厂", "address": "铁西区",
             "customer_class": "I", "status": "A"},
            {"customer_no": "100000300", "name": "李四", "address": "皇姑区",
             "customer_class": "R", "status": "S"},
            {"customer_no": "100000400", "name": "王五", "address": "大东区",
             "customer_class": "R", "status": "A"},
        ])
        c.execute(n8["bill"].insert(), [
            # 100000123: an overdue heating bill (100 days late) and a property bill
            {"bill_id": "B0001", "customer_no": "100000123", "fee_type": "01",
             "period": "2025-2026", "amount": 260000, "paid_amount": 0, "late_fee_paid": 0,
             "due_date": date(2026, 8, 19)},
            {"bill_id": "B0002", "customer_no": "100000123", "fee_type": "02",
             "period": "2026-11", "amount": 15000, "paid_amount": 0, "late_fee_paid": 0,
             "due_date": date(2026, 12, 31)},
            {"bill_id": "B0003", "customer_no": "100000123", "fee_type": "01",
             "period": "2026-2027", "amount": 260000, "paid_amount": 0, "late_fee_paid": 0,
             "due_date": date(2026, 12, 31)},
            # 100000200: industrial, one bill
            {"bill_id": "B0010", "customer_no": "100000200", "fee_type": "01",
             "period": "2026-2027", "amount": 1000000, "paid_amount": 0, "late_fee_paid": 0,
             "due_date": date(2026, 12, 31)},
            # 100000300: suspended
            {"bill_id": "B0020", "customer_no": "100000300", "fee_type": "01",
             "period": "2026-2027", "amount": 50000, "paid_amount": 0, "late_fee_paid": 0,
             "due_date": date(2026, 12, 31)},
            # 100000400: everything paid
            {"bill_id": "B0030", "customer_no": "100000400", "fee_type": "01",
             "period": "2025-2026", "amount": 50000, "paid_amount": 50000, "late_fee_paid": 0,
             "due_date": date(2026, 1, 31)},
        ])


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def ledger(store, clock):
    seed_fixture(store)
    from ledger_helpers import bills

    store.initial_paid = bills(store)  # what N8 had paid before the gateway
    return Ledger(store, dict(BANKS), now=clock)
