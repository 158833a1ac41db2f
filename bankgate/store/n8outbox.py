"""N8 in a database of its own: two transactions, one outcome, no distributed commit.

With ``[n8.database]`` a ledger transaction has two connections: the gateway's
(journal, payments, everything ``bg_*``) and N8's (customers, bills, N8's payment
records).  N8's rows are read -- and locked, for a payment -- in N8's
transaction; N8's writes are made there too, as named operations
(:mod:`bankgate.store.n8write`), and each operation is also written into the
gateway's outbox ``bg_n8_outbox`` in the gateway's transaction.  Then:

1. the gateway's transaction commits (journal, payment and outbox row together);
2. N8's transaction commits (its locks held until now: nothing changed the bills);
3. the outbox row is deleted.

A failure before 1 rolls both back: nothing anywhere.  A failure at 2 (N8 went
away, the process died) leaves the outbox row: the journal is the record, and the
repair (:func:`repair`, at start and in the background) applies the row's
operations to N8 -- each idempotent, keyed by the receipt or invoice number --
then deletes it.  Until then the request's answer is not given: the caller got
BUSY, and a repeat of the request finds the row and answers BUSY too
(:meth:`bankgate.store.tx.Tx.finish_n8`), or, once repaired, the first answer.
"""

from __future__ import annotations

import itertools
import logging
import os
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from bankgate.store import dialects, model
from bankgate.store.errors import N8Unavailable
from bankgate.store.n8write import decode, encode

log = logging.getLogger("bankgate.n8")

#: the fault tests' hook: with ``BANKGATE_TEST_N8_CRASH=N`` the process dies at once
#: (no clean-up, as ``kill -9`` would) after the Nth gateway commit that left N8
#: operations, before N8's commit -- the window the outbox exists for
CRASH_ENV = "BANKGATE_TEST_N8_CRASH"
_crash_after = int(os.environ.get(CRASH_ENV) or 0)
_commits = itertools.count(1)


def _close_quietly(trans, conn: sa.Connection | None = None) -> None:
    """Roll ``trans`` back if it is still open; ``conn``: N8's connection, which then
    goes back to the pool without another ROLLBACK."""
    try:
        if trans is not None and trans.is_active:
            trans.rollback()
            if conn is not None:
                dialects.transaction_ended(conn)
    except Exception:  # noqa: BLE001 - the connection may be gone already
        pass


def run_split(store, conn: sa.Connection, make_tx, fn, args, kw, readonly: bool):
    """Run ``fn(tx, *args, **kw)`` on the gateway's ``conn`` and, opened when
    first touched, a connection to N8 (see the module's text); ``make_tx(conn,
    store, n8conn)`` makes the transaction's :class:`~bankgate.store.tx.Tx`."""
    n8: dict = {}

    def open_n8() -> sa.Connection:
        try:
            if readonly:  # (an option that would stay with a kept connection)
                c = store.n8_engine.connect().execution_options(bankgate_readonly=True)
            else:  # the thread's, kept for its next transaction
                c = store.n8_writer()
            n8["conn"] = c
            n8["trans"] = c.begin()
        except sa.exc.SQLAlchemyError as e:
            raise N8Unavailable(_short(e)) from e
        return c

    gtrans = conn.begin()
    tx = make_tx(conn, store, None)
    tx._n8conn = None
    tx._n8_open = open_n8
    cleared = None
    try:
        try:
            result = fn(tx, *args, **kw)
            oid = None
            if tx.outbox_row is not None:  # written with the payment (bankgate.store.splithot)
                oid, written, cleared = tx.outbox_row
                if len(tx.n8_ops) > written:  # and N8 operations after it (hooks)
                    conn.execute(model.n8_outbox.update().where(model.n8_outbox.c.id == oid)
                                 .values(ops=encode(tx.n8_ops)))
            elif tx.n8_ops:
                cleared = _clear_done(store, conn)
                oid = conn.execute(model.n8_outbox.insert().values(
                    journal_id=tx.journal_id, receipt_no=tx.receipt_no,
                    created_at=utcnow(), ops=encode(tx.n8_ops),
                )).inserted_primary_key[0]
            gtrans.commit()
            if _crash_after and oid is not None and next(_commits) == _crash_after:
                log.critical("%s=%d: dying between the two commits", CRASH_ENV, _crash_after)
                os._exit(9)
        except BaseException:
            _close_quietly(gtrans)
            _close_quietly(n8.get("trans"), n8.get("conn") if readonly else None)
            if cleared is None and tx.outbox_row is not None:
                cleared = tx.outbox_row[2]
            if cleared:  # not deleted after all: the next transaction does it
                store.outbox_done.extend(cleared)
            raise
        if "trans" in n8:
            try:
                n8["trans"].commit()
                if readonly:  # nothing runs on it before it goes back to the pool
                    dialects.transaction_ended(n8["conn"])
            except sa.exc.SQLAlchemyError as e:
                # a connection whose commit failed is not trusted again
                n8["conn"].invalidate()
                if oid is None:
                    raise N8Unavailable(_short(e)) from e
                log.warning("N8's commit failed after the gateway's (outbox %s: the repair"
                            " job applies it): %s", oid, _short(e))
                raise N8Unavailable(_short(e)) from e
        if oid is not None:
            # deleted later, in a batch with others, by a transaction writing the outbox
            # anyway (or the repair job): a row applied but not deleted yet is only
            # applied again, which changes nothing
            store.outbox_done.append(oid)
        return result
    finally:
        c, trans = n8.get("conn"), n8.get("trans")
        # the thread's is kept unless its transaction did not end cleanly
        if c is not None and (readonly or c.invalidated or trans is None or trans.is_active):
            store.drop_n8_writer(c)


def utcnow() -> datetime:
    """The outbox's clock: UTC without a zone, the same on every node whatever
    the gateway's configured time zone."""
    return datetime.now(UTC).replace(tzinfo=None)


def _made_before(seconds: float) -> datetime:
    """The outbox's time ``seconds`` ago: rows made before it are that old."""
    return utcnow() - timedelta(seconds=seconds)


def oldest_waiting(conn: sa.Connection, older_than: float = 0.0) -> tuple[int, float]:
    """How many outbox rows older than ``older_than`` seconds there are, and the age
    of the oldest in seconds (0: none), on the gateway's connection ``conn``."""
    o = model.n8_outbox
    cutoff = _made_before(older_than)
    n, oldest = conn.execute(sa.select(sa.func.count(), sa.func.min(o.c.created_at))
                             .where(o.c.created_at <= cutoff)).one()
    return int(n), (utcnow() - oldest).total_seconds() if oldest is not None else 0.0


#: applied rows are deleted in batches of this many (fewer by the repair job and at stop)
CLEAR_BATCH = 32


def take_done(store, least: int = CLEAR_BATCH) -> list[int]:
    """The outbox rows this process has seen N8 commit, taken for deletion once
    there are ``least`` of them (else none); a caller whose delete fails puts them
    back (``store.outbox_done.extend``)."""
    done = store.outbox_done
    if len(done) < max(1, least):
        return []
    ids = []
    try:
        while True:
            ids.append(done.popleft())
    except IndexError:  # another thread took the rest
        pass
    return ids


def _clear_done(store, conn: sa.Connection, least: int = CLEAR_BATCH) -> list[int] | None:
    """Delete, in the transaction of ``conn``, the outbox rows this process has
    seen N8 commit, once there are ``least`` of them; the ids deleted."""
    ids = take_done(store, least)
    if not ids:
        return None
    o = model.n8_outbox
    conn.execute(o.delete().where(o.c.id.in_(ids)))
    return ids


def clear_done(store) -> int:
    """Delete every outbox row this process has seen applied (the repair job, the
    store's stop); how many.  Nothing seen: no transaction."""
    if not store.outbox_done:
        return 0
    with store.engine.begin() as c:
        ids = _clear_done(store, c, least=1)
    return len(ids or ())


#: PostgreSQL: the repair job vacuums the outbox once PostgreSQL counts this many dead
#: rows in it (:func:`vacuum`)
VACUUM_AFTER = 1000


def vacuum(store, least: int | None = None) -> bool:
    """On PostgreSQL, ``VACUUM`` the outbox once PostgreSQL's statistics count
    ``least`` dead rows in it (default :data:`VACUUM_AFTER`); True: it ran.

    The outbox is a queue: every payment inserts a row and a later batch deletes
    it, so it holds a few live rows and, until a vacuum, every dead one.  Those
    make each insert, delete and count on it dearer.  Autovacuum gets to a table
    about once a minute at best (``autovacuum_naptime``), and never where a DBA
    turned it off; at full load that is tens of thousands of dead rows.  The
    count is the database's (``pg_stat_user_tables.n_dead_tup``), so it covers
    every worker and node; this vacuum takes a few milliseconds, does not block
    the payments' inserts and deletes, and skips the table while another process
    vacuums it (PostgreSQL 12 and later).  Other databases clear deleted rows by
    themselves.  A failure is logged, and the next run tries again."""
    if store.dialect != "postgresql":
        return False
    least = VACUUM_AFTER if least is None else least
    version = store.engine.dialect.server_version_info or (0,)
    skip = "(SKIP_LOCKED) " if version >= (12,) else ""
    try:  # VACUUM runs outside a transaction
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            dead = c.execute(sa.text("SELECT n_dead_tup FROM pg_stat_user_tables"
                                     " WHERE relid = to_regclass(:t)"),
                             {"t": model.n8_outbox.name}).scalar()
            if (dead or 0) < least:
                return False
            c.exec_driver_sql(f"VACUUM {skip}{model.n8_outbox.name}")
    except sa.exc.SQLAlchemyError as e:
        log.warning("N8 outbox not vacuumed: %s", _short(e))
        return False
    return True


def _short(e: BaseException) -> str:
    orig = getattr(e, "orig", None) or e
    return str(orig).splitlines()[0][:200] if str(orig) else type(orig).__name__


# -- the repair: what a crash or an outage left --------------------------------------


def pending(engine: sa.Engine, limit: int = 1000, older_than: float = 0.0) -> list[dict]:
    """The outbox rows older than ``older_than`` seconds, oldest first, with their
    operations decoded.  (A younger row may be in flight, or applied and about to be
    deleted with its batch.)"""
    o = model.n8_outbox
    cutoff = _made_before(older_than)
    with engine.connect() as c:
        rows = [dict(r) for r in c.execute(
            sa.select(o).where(o.c.created_at <= cutoff).order_by(o.c.id).limit(limit)
        ).mappings()]
    for r in rows:
        r["ops"] = decode(r["ops"])
    return rows


def has_outbox(engine: sa.Engine) -> bool:
    """Is the gateway's database migrated to the outbox (migration 0010)?"""
    return sa.inspect(engine).has_table(model.n8_outbox.name)


def waiting(engine: sa.Engine, older_than: float = 0.0) -> int:
    """How many outbox rows older than ``older_than`` seconds wait."""
    o = model.n8_outbox
    cutoff = _made_before(older_than)
    with engine.connect() as c:
        return int(c.execute(sa.select(sa.func.count()).select_from(o)
                             .where(o.c.created_at <= cutoff)).scalar())


def apply_row(store, row_id: int) -> bool | None:
    """Apply one outbox row's operations to N8 (each idempotent) in one N8
    transaction, then delete the row.  True: N8 lacked something and has it now;
    False: N8 had it all already (its commit was not lost after all, or another
    process applied it); None: the row is gone.  Raises :class:`N8Unavailable`
    when N8 cannot be reached."""
    o = model.n8_outbox
    with store.engine.connect() as gc:
        row = gc.execute(sa.select(o).where(o.c.id == row_id)).mappings().first()
    if row is None:
        return None
    wrote = False
    try:
        with store.n8_engine.begin() as nc:
            for op, args in decode(row["ops"]):
                wrote |= store.writer.apply(nc, op, args, replay=True) is not False
    except sa.exc.SQLAlchemyError as e:
        with store.engine.begin() as gc:
            gc.execute(o.update().where(o.c.id == row_id).values(
                attempts=o.c.attempts + 1, tried_at=utcnow(),
                last_error=_short(e)[:200]))
        raise N8Unavailable(_short(e)) from e
    with store.engine.begin() as gc:
        gc.execute(o.delete().where(o.c.id == row_id))
    if wrote:
        log.info("N8 repaired: outbox %s (receipt %s) applied", row_id,
                 row["receipt_no"] or "-")
    return wrote


def repair(store, older_than: float = 0.0, limit: int = 500) -> tuple[int, int]:
    """Apply every outbox row older than ``older_than`` seconds (0: all; at start
    nothing is in flight).  Returns (applied: rows N8 lacked, still waiting); a row
    N8 had already is only deleted.  Stops at the first row N8 refuses (it is down:
    the next run goes on)."""
    o = model.n8_outbox
    clear_done(store)
    cutoff = _made_before(older_than)
    with store.engine.connect() as c:
        ids = [r[0] for r in c.execute(sa.select(o.c.id).where(o.c.created_at <= cutoff)
                                       .order_by(o.c.id).limit(limit))]
    done = 0
    for i, row_id in enumerate(ids):
        try:
            done += bool(apply_row(store, row_id))
        except N8Unavailable as e:
            log.warning("N8 repair: %d waiting, N8 refuses: %s", len(ids) - i, e)
            return done, len(ids) - i
    return done, 0
