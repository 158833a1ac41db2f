"""The store: one engine, a private thread pool, transactions as functions.

Every database call runs on the store's own thread pool (never the reactor
thread, never the reactor's shared pool).  Callers hand :meth:`Store.run` a
plain function ``fn(tx, *args)`` that does its work inside one transaction
through a :class:`bankgate.store.tx.Tx` and returns plain values; the store
commits, retries transient failures (deadlocks, lost connections) a few
times, and returns a Deferred.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from twisted.internet import threads
from twisted.python.threadpool import ThreadPool

from bankgate.store import model, n8outbox, pghot, splithot
from bankgate.store.dialects import create_engine, is_transient
from bankgate.store.errors import N8Unavailable, Retry, StoreUnavailable
from bankgate.store.n8 import N8Mapping, build_tables
from bankgate.store.n8write import DirectWriter
from bankgate.store.tx import HotStatements, Tx

__all__ = ["N8Unavailable", "Retry", "Store", "StoreUnavailable"]

T = TypeVar("T")
log = logging.getLogger("bankgate.store")

#: the names :meth:`Store.databases` gives the store's databases (in messages)
GATEWAY_DB = "the gateway's database"
N8_DB = "N8's database"




class Store:
    def __init__(
        self,
        url: str,
        mapping: N8Mapping | None = None,
        *,
        reactor=None,
        threads: int = 4,
        echo: bool = False,
        retries: int = 3,
        hot_path: bool = True,
        n8_url: str | None = None,
        writer=None,
    ):
        self.url = url
        self.mapping = mapping or N8Mapping()
        # two connections a thread: one for transactions, one kept for reads
        self.engine = create_engine(url, pool_size=2 * threads, echo=echo)
        # N8 in a database of its own ([n8.database]): its own engine, and every
        # N8 write also recorded in the gateway's outbox (bankgate.store.n8outbox)
        self.split = bool(n8_url) and n8_url != url
        self.n8_url = n8_url if self.split else url
        # (MariaDB: N8's writes of a payment in one text where splithot folds them, and
        # no ROLLBACK when a committed connection goes back to the pool; a thread keeps
        # its connection for transactions too: n8_writer)
        self.n8_engine = (create_engine(n8_url, pool_size=2 * threads, echo=echo,
                                        multi_statements=hot_path and self.mapping.plain,
                                        lazy_reset=True)
                          if self.split else self.engine)
        self._local = threading.local()
        self.dialect = self.engine.dialect.name
        self.n8_dialect = self.n8_engine.dialect.name
        # SELECT ... FOR UPDATE on the rows a payment changes; SQLite locks
        # the whole file at BEGIN IMMEDIATE instead (and ignores the clause).
        self.row_locks = self.dialect != "sqlite"
        self.n8_row_locks = self.n8_dialect != "sqlite"
        self.n8_metadata = sa.MetaData()
        self.n8 = build_tables(self.mapping, self.n8_metadata)
        # how N8's writes are made (bankgate.store.n8write): ``writer(n8 tables,
        # row locks)`` makes the posting adapter; the mapped tables themselves by default
        self.writer = (writer or DirectWriter)(self.n8, self.n8_row_locks)
        # outbox rows N8 has committed, deleted in batches (bankgate.store.n8outbox)
        self.outbox_done: collections.deque[int] = collections.deque()
        self.reactor = reactor
        self.retries = retries
        self.statements = HotStatements(self)
        # PostgreSQL: the ledger's queries and payments in folded statements on the
        # driver (bankgate.store.pghot); hot_path=False keeps the generic path (tests).
        # Only with N8 beside the gateway's tables and written directly.
        self.hot_path = (pghot.PgHotPath(self)
                         if hot_path and not self.split and self.writer.name == "direct"
                         and self.mapping.plain  # raw SQL: reference units and codes
                         and pghot.usable(self.engine) else None)
        # N8 apart: the same, folded on each side where the databases allow
        # (bankgate.store.splithot); None: the generic path
        self.split_hot = splithot.make(self, hot_path)
        self.pool = ThreadPool(minthreads=1, maxthreads=threads, name="bankgate-db")
        self._started = False

    # -- lifecycle (driven by the service) --------------------------------

    def start(self) -> None:
        if not self._started:
            self.pool.start()
            self._started = True

    def stop(self) -> None:
        if self.split and self.outbox_done:
            try:
                n8outbox.clear_done(self)
            except sa.exc.SQLAlchemyError as e:  # the repair applies them again: harmless
                log.warning("N8 outbox: %d applied rows not cleared: %s",
                            len(self.outbox_done), e)
        self.release_reader()
        if self._started:
            self.pool.stop()
            self._started = False
        self.engine.dispose()
        if self.split:
            self.n8_engine.dispose()

    def release_reader(self) -> None:
        """Give the calling thread's kept connections back to the pool (a thread
        that reads and writes no more, e.g. a benchmark's worker at its end): its
        read connections and, N8 apart, its connection to N8 for transactions."""
        for name in ("reader", "n8_reader", "n8_writer"):
            kept = getattr(self._local, name, None)
            if kept is not None:
                setattr(self._local, name, None)
                kept.close()

    def n8_writer(self) -> sa.Connection:
        """N8 apart: the calling thread's connection to N8 for its transactions, kept
        between them as its read connections are (no pool checkout and return
        around every payment); a closed or invalidated one is replaced."""
        return self._kept("n8_writer", self.n8_engine.connect)

    def drop_n8_writer(self, conn: sa.Connection) -> None:
        """Give ``conn`` back to the pool; when it is the thread's N8 connection (its
        transaction did not end cleanly), the thread's next transaction opens another."""
        if getattr(self._local, "n8_writer", None) is conn:
            self._local.n8_writer = None
        conn.close()

    # -- running work ------------------------------------------------------

    def run(self, fn: Callable[..., T], *args: Any, **kw: Any):
        """Run ``fn(tx, *args)`` in one transaction on the pool: a Deferred."""
        if self.reactor is None:
            raise RuntimeError("Store.run needs a reactor; use run_sync outside the service")
        return threads.deferToThreadPool(self.reactor, self.pool, self.run_sync, fn, *args, **kw)

    def call(self, fn: Callable[..., T], *args: Any, **kw: Any):
        """Run any ``fn(*args)`` on the store's pool (it may use run_sync): a Deferred."""
        if self.reactor is None:
            raise RuntimeError("Store.call needs a reactor")
        return threads.deferToThreadPool(self.reactor, self.pool, fn, *args, **kw)

    def run_sync(self, fn: Callable[..., T], *args: Any, readonly: bool = False,
                 **kw: Any) -> T:
        """The same, on the calling thread (CLI, tests, benchmarks).

        ``readonly`` transactions (queries) do not take SQLite's write lock.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                if readonly and self.dialect != "sqlite":
                    return self._read(fn, *args, **kw)
                with self.engine.connect() as conn:
                    if readonly:
                        conn = conn.execution_options(bankgate_readonly=True)
                    if self.split:
                        return n8outbox.run_split(self, conn, Tx, fn, args, kw, readonly)
                    with conn.begin():
                        return fn(Tx(conn, self), *args, **kw)
            except Retry:
                if attempt > self.retries + 5:
                    raise StoreUnavailable("transaction kept conflicting") from None
            except sa.exc.SQLAlchemyError as e:
                if not is_transient(e) or attempt > self.retries:
                    if isinstance(e, (sa.exc.OperationalError, sa.exc.InterfaceError)):
                        raise StoreUnavailable(str(e.orig if hasattr(e, "orig") else e)) from e
                    raise
                log.warning("transient database error, retrying (%d): %s", attempt, e.orig)
                time.sleep(min(0.05 * attempt, 0.5))

    def _read(self, fn, *args, **kw):
        """Reads on a server: each statement on its own (autocommit, no BEGIN or
        COMMIT round trips), on a connection this thread keeps for its reads."""
        conn = self._reader("reader", self.engine)
        n8conn = self._reader("n8_reader", self.n8_engine) if self.split else None
        try:
            return fn(Tx(conn, self, n8conn), *args, **kw)
        except sa.exc.SQLAlchemyError:
            for name in ("reader", "n8_reader"):
                c = getattr(self._local, name, None)
                setattr(self._local, name, None)
                if c is not None:
                    c.close()
            raise

    def _reader(self, name: str, engine: sa.Engine) -> sa.Connection:
        if engine.dialect.name == "sqlite":
            options = {"bankgate_readonly": True}
        else:
            options = {"isolation_level": "AUTOCOMMIT"}
        return self._kept(name, lambda: engine.connect().execution_options(**options))

    def _kept(self, name: str, connect: Callable[[], sa.Connection]) -> sa.Connection:
        """The calling thread's connection kept as ``name``; a closed or invalidated
        one is replaced by ``connect()``."""
        conn = getattr(self._local, name, None)
        if conn is None or conn.closed or conn.invalidated:
            conn = connect()
            setattr(self._local, name, conn)
        return conn

    def connect(self):
        """A plain connection for bulk work (demo seeding, reports)."""
        return self.engine.connect()

    def n8_connect(self):
        """A plain connection to N8's database (the gateway's own when N8 is in it)."""
        return self.n8_engine.connect()

    # -- schema ---------------------------------------------------------------

    def create_gateway_tables(self) -> None:
        """Create the gateway's tables through the migrations (``db upgrade``)."""
        from bankgate.store.migrations import upgrade

        upgrade(self.engine)

    def create_n8_tables(self) -> None:
        """Create the reference N8 schema (the embedded default and tests only)."""
        self.n8_metadata.create_all(self.n8_engine)

    def drop_all(self) -> None:
        """Tests only: drop everything the store knows of."""
        with self.engine.begin() as conn:
            model.metadata.drop_all(conn)
            conn.execute(sa.text("DROP TABLE IF EXISTS bg_alembic_version"))
        with self.n8_engine.begin() as conn:
            self.n8_metadata.drop_all(conn)

    def n8_exists(self) -> bool:
        insp = sa.inspect(self.n8_engine)
        return insp.has_table(self.n8["customer"].name, schema=self.mapping.schema)

    def databases(self) -> list[tuple[str, sa.Engine]]:
        """The store's databases by name: the gateway's (:data:`GATEWAY_DB`) and,
        when N8 is a database of its own, N8's (:data:`N8_DB`)."""
        return [(GATEWAY_DB, self.engine)] + ([(N8_DB, self.n8_engine)] if self.split else [])

    def autovacuum_off(self) -> list[str]:
        """Where PostgreSQL's autovacuum is turned off: the names of
        :meth:`databases` that are PostgreSQL's with it off, both or neither.
        Other databases clear dead rows by themselves; a setting that cannot be
        read counts as on."""
        where = []
        for name, engine in self.databases():
            if engine.dialect.name != "postgresql":
                continue
            try:
                with engine.connect() as conn:
                    if conn.exec_driver_sql("SHOW autovacuum").scalar() == "off":
                        where.append(name)
            except sa.exc.SQLAlchemyError:
                continue
        return where

    def customer_count(self) -> int:
        with self.n8_engine.connect() as conn:
            q = sa.select(sa.func.count()).select_from(self.n8["customer"])
            return conn.execute(q).scalar()
