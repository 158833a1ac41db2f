"""Creating engines, with every dialect quirk in this one place."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.compiler import compiles


def create_engine(url: str, *, pool_size: int = 4, echo: bool = False,
                  multi_statements: bool = False, lazy_reset: bool = False) -> sa.Engine:
    """On MariaDB/MySQL through pymysql or mysqlclient (:data:`MYSQL_DRIVERS`;
    elsewhere both are ignored): ``multi_statements``, connections that take
    several statements in one text (N8 in a database of its own: N8's writes of a
    payment in one round trip, :mod:`bankgate.store.splithot`; without it they take
    one statement a text on both drivers, although mysqlclient's default is several);
    ``lazy_reset``, a connection going back to the pool is rolled back only when a
    transaction may be open on it (no ROLLBACK round trip after every commit:
    :func:`transaction_ended`)."""
    u = make_url(url)
    backend = u.get_backend_name()
    kw: dict = {"echo": echo, "future": True}
    if backend == "sqlite":
        db = u.database
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        kw["connect_args"] = {"check_same_thread": False, "timeout": 30}
        if not db or db == ":memory:":
            kw["poolclass"] = sa.pool.StaticPool
        engine = sa.create_engine(u, **kw)
        _sqlite_quirks(engine)
        return engine
    kw["pool_size"] = pool_size
    kw["max_overflow"] = 2
    # no pre-ping (a round trip per transaction): a connection found dead
    # fails its transaction, which Store.run_sync retries on a fresh one
    if backend in ("mysql", "mariadb"):
        kw["isolation_level"] = "READ COMMITTED"
        kw["pool_recycle"] = 3600
    elif backend == "postgresql":
        kw["isolation_level"] = "READ COMMITTED"
    driver = u.get_driver_name() if backend in ("mysql", "mariadb") else None
    mysql = driver in MYSQL_DRIVERS
    if lazy_reset and mysql:
        kw["pool_reset_on_return"] = None  # _lazy_rollback below does it
    engine = sa.create_engine(u, **kw)
    if driver == "pymysql" and multi_statements:
        from pymysql.constants import CLIENT  # the mysql extra: only here

        @sa.event.listens_for(engine, "do_connect")
        def _multi(_dialect, _record, _cargs, cparams):
            # added to the dialect's flags (FOUND_ROWS), which connect_args would replace
            cparams["client_flag"] = cparams.get("client_flag", 0) | CLIENT.MULTI_STATEMENTS
    elif driver == "mysqldb":
        @sa.event.listens_for(engine, "do_connect")
        def _multi(_dialect, _record, _cargs, cparams):
            cparams["multi_statements"] = multi_statements  # mysqlclient's default: on

    if multi_statements and mysql:
        @sa.event.listens_for(engine, "connect")
        def _mark(_dbapi_conn, record):
            record.info[MULTI_STATEMENTS] = True

    if lazy_reset and mysql:
        sa.event.listen(engine, "reset", _lazy_rollback)
    return engine


#: the MariaDB/MySQL drivers whose connections :func:`create_engine` sets up for N8's
#: folded statements (``splithot``): pymysql (pure Python, the default of the
#: ``mysql`` extra) and mysqlclient (``MySQLdb``, the C driver: the ``mysqlclient``
#: extra, built against MariaDB's client library)
MYSQL_DRIVERS = ("pymysql", "mysqldb")

#: a connection record's info key: its connection takes several statements in one text
MULTI_STATEMENTS = "bankgate_multi_statements"
#: a connection record's info key: its last command ended its transaction
_ENDED = "bankgate_transaction_ended"


def takes_scripts(conn: sa.Connection) -> bool:
    """Does this connection take several statements in one text
    (``create_engine(multi_statements=True)`` on MariaDB/MySQL)?"""
    return bool(conn.connection.info.get(MULTI_STATEMENTS))


def transaction_ended(conn: sa.Connection) -> None:
    """Say that ``conn``'s transaction has just been committed or rolled back and that
    nothing will run on it before it goes back to the pool: with ``lazy_reset`` the
    pool then sends no ROLLBACK (mysqlclient cannot tell whether a transaction is
    open; pymysql can).  An invalidated connection is left alone: reading its pool
    record would connect afresh."""
    if not (conn.invalidated or conn.closed):
        conn.connection.info[_ENDED] = True


def is_db2(dialect_name: str) -> bool:
    """Is this SQLAlchemy dialect name DB2's (``ibm_db_sa`` names it ``ibm_db_sa``,
    ``ibm_db`` or ``db2`` by version)?"""
    return dialect_name.startswith("ibm_db") or dialect_name == "db2"


def _lazy_rollback(dbapi_conn, record, state) -> None:
    """The pool's reset of a MariaDB/MySQL connection: a ROLLBACK unless its last
    command ended its transaction (:func:`transaction_ended`), or, on pymysql, was
    one answered by an OK packet (a COMMIT, a ROLLBACK: pymysql then holds no
    result) whose server status says no transaction is open."""
    done = record is not None and record.info.pop(_ENDED, False)
    if not state.asyncio_safe or state.transaction_was_reset or done:
        return
    if hasattr(dbapi_conn, "server_status"):  # pymysql
        from pymysql.constants import SERVER_STATUS  # the mysql extra: only here

        if (getattr(dbapi_conn, "_result", True) is None
                and not (dbapi_conn.server_status or 0)
                & SERVER_STATUS.SERVER_STATUS_IN_TRANS):
            return
    dbapi_conn.rollback()


def _sqlite_quirks(engine: sa.Engine) -> None:
    """SQLite: WAL, foreign keys, and BEGIN IMMEDIATE so writers queue.

    pysqlite's own transaction handling defers BEGIN and starts transactions
    as DEFERRED, which makes two writers deadlock on the upgrade from a read
    lock; every transaction here takes the write lock at BEGIN, and SQLite's
    busy timeout makes the next writer wait for it.
    """

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn):
        if conn.get_execution_options().get("bankgate_readonly"):
            conn.exec_driver_sql("BEGIN")  # readers never wait for the writer (WAL)
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def _patch_ibm_db_sa() -> None:
    """ibm_db_sa 0.4 reads ``select.for_update``, which SQLAlchemy 2 removed,
    so every locking read fails to compile on DB2.  Render the same clause it
    meant to from SQLAlchemy 2's ``_for_update_arg``."""
    try:
        from ibm_db_sa import base
    except ImportError:  # the db2 extra is not installed
        return

    def for_update_clause(self, select, **kw):
        arg = select._for_update_arg
        if arg is None:
            return ""
        return " WITH RS USE AND KEEP SHARE LOCKS" if arg.read else (
            " WITH RS USE AND KEEP UPDATE LOCKS")

    base.DB2Compiler.for_update_clause = for_update_clause


_patch_ibm_db_sa()


def lock_rows(query: sa.Select, table: sa.Table) -> sa.Select:
    """SELECT ... FOR UPDATE on every dialect.

    SQL Server has no FOR UPDATE on plain selects (SQLAlchemy renders
    nothing): it takes a table hint instead.
    """
    return query.with_for_update().with_hint(table, "WITH (UPDLOCK, ROWLOCK)", "mssql")


def is_unique_violation(exc: BaseException) -> bool:
    return isinstance(exc, sa.exc.IntegrityError)


def is_transient(exc: BaseException) -> bool:
    """A failure worth retrying the whole transaction for: deadlock, lost
    connection, serialisation failure, lock timeout."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa.exc.OperationalError):
        return True
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code in ("40001", "40P01")


class days_between(sa.sql.functions.FunctionElement):
    """Whole days from the date ``start`` to the date ``end`` (``end - start``, an
    integer; negative when ``end`` is earlier), rendered for each dialect: the reports'
    ageing and late fees, computed in the database."""

    type = sa.Integer()
    inherit_cache = True
    name = "days_between"


@compiles(days_between)
def _days_default(element, compiler, **kw):  # PostgreSQL, Oracle: date - date
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"(CAST({end} AS DATE) - CAST({start} AS DATE))"


@compiles(days_between, "sqlite")
def _days_sqlite(element, compiler, **kw):
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"CAST(julianday({end}) - julianday({start}) AS INTEGER)"


@compiles(days_between, "mysql")
@compiles(days_between, "mariadb")
def _days_mysql(element, compiler, **kw):
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"DATEDIFF({end}, {start})"


@compiles(days_between, "mssql")
def _days_mssql(element, compiler, **kw):
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"DATEDIFF(day, {start}, {end})"


@compiles(days_between, "ibm_db_sa")
def _days_db2(element, compiler, **kw):
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"(DAYS({end}) - DAYS({start}))"
