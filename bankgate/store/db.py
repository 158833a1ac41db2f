"""The store: one engine, a private thread pool, transactions as functions.

Every database call runs on the store's own thread pool (never the reactor
thread, never the reactor's shared pool).  Callers hand :meth:`Store.run` a
plain function ``fn(tx, *args)`` that does its work inside one transaction
through a :class:`bankgate.store.tx.Tx` and returns plain values; the store
commits, retries transient failures (deadlocks, lost connections) a few
times, and returns a Deferred.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from twisted.internet import threads
from twisted.python.threadpool import ThreadPool

from bankgate.store import model, pghot
from bankgate.store.dialects import create_engine, is_transient
from bankgate.store.n8 import N8Mapping, build_tables
from bankgate.store.tx import HotStatements, Tx

T = TypeVar("T")
log = logging.getLogger("bankgate.store")


class StoreUnavailable(Exception):
    """The database could not be reached or kept failing: answer BUSY."""


class Retry(Exception):
    """Raised inside a transaction to run it again from the start."""


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
    ):
        self.url = url
        self.mapping = mapping or N8Mapping()
        # two connections a thread: one for transactions, one kept for reads
        self.engine = create_engine(url, pool_size=2 * threads, echo=echo)
        self._local = threading.local()
        self.dialect = self.engine.dialect.name
        # SELECT ... FOR UPDATE on the rows a payment changes; SQLite locks
        # the whole file at BEGIN IMMEDIATE instead (and ignores the clause).
        self.row_locks = self.dialect != "sqlite"
        self.n8_metadata = sa.MetaData()
        self.n8 = build_tables(self.mapping, self.n8_metadata)
        self.reactor = reactor
        self.retries = retries
        self.statements = HotStatements(self)
        # PostgreSQL: the ledger's queries and payments in folded statements on the
        # driver (bankgate.store.pghot); hot_path=False keeps the generic path (tests)
        self.hot_path = pghot.PgHotPath(self) if hot_path and pghot.usable(self.engine) else None
        self.pool = ThreadPool(minthreads=1, maxthreads=threads, name="bankgate-db")
        self._started = False

    # -- lifecycle (driven by the service) --------------------------------

    def start(self) -> None:
        if not self._started:
            self.pool.start()
            self._started = True

    def stop(self) -> None:
        self.release_reader()
        if self._started:
            self.pool.stop()
            self._started = False
        self.engine.dispose()

    def release_reader(self) -> None:
        """Give the calling thread's kept read connection back to the pool (a
        thread that reads no more, e.g. a benchmark's worker at its end)."""
        reader = getattr(self._local, "reader", None)
        if reader is not None:
            self._local.reader = None
            reader.close()

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
        conn = getattr(self._local, "reader", None)
        if conn is None or conn.closed or conn.invalidated:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._local.reader = conn
        try:
            return fn(Tx(conn, self), *args, **kw)
        except sa.exc.SQLAlchemyError:
            self._local.reader = None
            conn.close()
            raise

    def connect(self):
        """A plain connection for bulk work (demo seeding, reports)."""
        return self.engine.connect()

    # -- schema ---------------------------------------------------------------

    def create_gateway_tables(self) -> None:
        """Create the gateway's tables through the migrations (``db upgrade``)."""
        from bankgate.store.migrations import upgrade

        upgrade(self.engine)

    def create_n8_tables(self) -> None:
        """Create the reference N8 schema (the embedded default and tests only)."""
        self.n8_metadata.create_all(self.engine)

    def drop_all(self) -> None:
        """Tests only: drop everything the store knows of."""
        with self.engine.begin() as conn:
            model.metadata.drop_all(conn)
            self.n8_metadata.drop_all(conn)
            conn.execute(sa.text("DROP TABLE IF EXISTS bg_alembic_version"))

    def n8_exists(self) -> bool:
        insp = sa.inspect(self.engine)
        return insp.has_table(self.n8["customer"].name, schema=self.mapping.schema)

    def customer_count(self) -> int:
        with self.engine.connect() as conn:
            q = sa.select(sa.func.count()).select_from(self.n8["customer"])
            return conn.execute(q).scalar()
