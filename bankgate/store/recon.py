"""The SQL of reconciliation (对账): runs, items, statements, the run lock,
and bulk reads of a bank's day.

Every function takes a :class:`~bankgate.store.tx.Tx` as its first argument
(``store.run_sync(fn, ...)`` runs it in one transaction) and returns plain
values: tuples for the bulk reads (a million rows must not become a million
dicts), dicts elsewhere.  Nothing here decides anything; the reconciler
(``bankgate/domain/reconcile.py``) does.

The lock on (bank, settle date) is the lease ``recon:{bank}:{date}``
(:mod:`bankgate.store.leases`, ``bg_lease``): inserting its row takes it (the
primary key makes a second insert fail, in this process or another one on the
same database), deleting it releases it, and a holder that has not renewed it
for ``stale`` seconds (a crashed process) is replaced by a compare-and-swap
update, audited as ``recon-lock-takeover``.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import date, datetime

import sqlalchemy as sa

from bankgate.store import leases, model
from bankgate.store.db import Retry
from bankgate.store.dialects import lock_rows
from bankgate.store.tx import Tx

STANDING = ("POSTED", "PENDING")
IN_CHUNK = 500  # bound parameters per IN (...) list
FINISHED = ("BALANCED", "EXCEPTIONS")

# Positions in the tuples :func:`payments_sorted` yields.
P_SERIAL, P_CUSTOMER, P_AMOUNT, P_STATUS, P_ID, P_SOURCE, P_RUN, P_UNDO, P_UNDO_RUN = range(9)


def _chunks(seq: list, n: int = IN_CHUNK) -> Iterator[list]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def binary_order(col: sa.ColumnElement, dialect: str) -> sa.ColumnElement:
    """``col`` sorted by code point, as Python sorts ``str`` (the merge needs
    both sides in one order).  SQLite's default collation already is."""
    if dialect == "postgresql":
        return col.collate("C")
    if dialect in ("mysql", "mariadb"):
        return col.collate("utf8mb4_bin")
    if dialect == "mssql":
        return col.collate("Latin1_General_BIN2")
    if dialect == "oracle":
        return sa.func.nlssort(col, "NLS_SORT=BINARY")
    return col


# -- the run lock: the lease recon:{bank}:{date} --------------------------------------


def lock_name(bank: str, d: date) -> str:
    """The name of the lease that is the run lock of (bank, d)."""
    return f"recon:{bank}:{d:%Y-%m-%d}"


def lock_parse(name: str) -> tuple[str, date] | None:
    """(bank, date) of a run lock's name, ``None`` for any other name."""
    kind, _, rest = name.partition(":")
    bank, _, day = rest.rpartition(":")
    if kind != "recon" or not bank:
        return None
    try:
        return bank, date.fromisoformat(day)
    except ValueError:
        return None


#: how a takeover of the run lock is audited: the action, and the subject of (bank, d)
TAKEOVER = "recon-lock-takeover"


def lock_subject(bank: str, d: date) -> str:
    return f"{bank} {d:%Y-%m-%d}"


def lock_acquire(tx: Tx, bank: str, d: date, holder: str, now: datetime,
                 stale: float) -> str | None:
    """Take the lock on (bank, d).  Returns ``None`` when taken, else the
    current holder (and since when) as text.  A holder silent for ``stale``
    seconds is replaced (audited as ``recon-lock-takeover``)."""
    got = leases.acquire(tx, lock_name(bank, d), holder, now, stale, action=TAKEOVER,
                         subject=lock_subject(bank, d))
    if got["ok"]:
        return None
    return held_by(got["row"])


def held_by(row: dict) -> str:
    """Who holds a lock, for a message: ``host:pid:id since 2026-11-27 02:00:05``."""
    return f"{row['holder']} since {row['acquired_at']:%Y-%m-%d %H:%M:%S}"


def lock_touch(tx: Tx, bank: str, d: date, holder: str, now: datetime,
               stale: float = 1800.0) -> bool:
    """Renew the lock for ``stale`` more seconds (a long run stays visibly
    alive); False if it was lost."""
    return leases.renew(tx, lock_name(bank, d), holder, now, stale)


def lock_release(tx: Tx, bank: str, d: date, holder: str) -> None:
    leases.release(tx, lock_name(bank, d), holder)


def lock_get(tx: Tx, bank: str, d: date) -> dict | None:
    """The lock's lease row (``holder``, ``acquired_at``, ``expires_at`` ...) with
    ``since`` (when it was taken), or ``None``."""
    row = leases.get(tx, lock_name(bank, d))
    if row is not None:
        row["since"] = row["acquired_at"]
    return row


def runs_interrupted(tx: Tx, bank: str, d: date, now: datetime, why: str) -> list[int]:
    """Mark the runs of (bank, d) still RUNNING (not dry) as FAILED with ``why``:
    called under the lock, where no other run can be at work, so they are runs
    whose process stopped half-way.  Returns their ids."""
    rr = model.recon_run
    ids = [int(r[0]) for r in tx.conn.execute(sa.select(rr.c.id).where(
        rr.c.bank == bank, rr.c.settle_date == d, rr.c.dry_run == 0,
        rr.c.status == "RUNNING"))]
    for rid in ids:
        tx.conn.execute(rr.update().where(rr.c.id == rid, rr.c.status == "RUNNING").values(
            status="FAILED", finished_at=now,
            summary=json.dumps({"error": why[:300]}, ensure_ascii=False)))
    return ids


def finished_since(tx: Tx, bank: str, d: date, since: datetime) -> bool:
    """Has a (not dry) run of (bank, d) that started at or after ``since`` finished?"""
    rr = model.recon_run
    return tx.conn.execute(sa.select(rr.c.id).where(
        rr.c.bank == bank, rr.c.settle_date == d, rr.c.dry_run == 0,
        rr.c.status.in_(FINISHED), rr.c.started_at >= since).limit(1)).first() is not None


# -- statements and runs -----------------------------------------------------------


def statement_record(tx: Tx, bank: str, d: date, source: str, sha256: str, size: int,
                     count: int, total: int, now: datetime) -> int:
    """The ``bg_statement`` row of this file (the same bytes again: the same row)."""
    st = model.statement
    q = sa.select(st.c.id).where(st.c.bank == bank, st.c.settle_date == d,
                                 st.c.sha256 == sha256)
    found = tx.conn.execute(q).scalar()
    if found is not None:
        return int(found)
    try:
        with tx.conn.begin_nested():
            r = tx.conn.execute(st.insert().values(
                bank=bank, settle_date=d, source=source[:200], sha256=sha256, size=size,
                record_count=count, total_amount=total, fetched_at=now,
            ))
            return int(r.inserted_primary_key[0])
    except sa.exc.IntegrityError:
        return int(tx.conn.execute(q).scalar())


def statement_get(tx: Tx, statement_id: int) -> dict | None:
    st = model.statement
    rows = tx.conn.execute(sa.select(st).where(st.c.id == statement_id)).mappings().all()
    return dict(rows[0]) if rows else None


def next_run_no(tx: Tx, bank: str) -> int:
    """The bank's next run number (1, 2, ...), taken from its ``bg_recon_counter``
    row: the update locks the row until this transaction ends, so two runs of one
    bank (two dates, two processes) never get the same number."""
    c, rr = model.recon_counter, model.recon_run
    if tx.conn.execute(c.update().where(c.c.bank == bank)
                       .values(last_no=c.c.last_no + 1)).rowcount != 1:
        last = tx.conn.execute(sa.select(sa.func.max(rr.c.run_no))
                               .where(rr.c.bank == bank)).scalar()
        try:
            with tx.conn.begin_nested():
                tx.conn.execute(c.insert().values(bank=bank, last_no=(last or 0) + 1))
        except sa.exc.IntegrityError:
            raise Retry() from None  # another run created the row meanwhile: again
    return int(tx.conn.execute(sa.select(c.c.last_no).where(c.c.bank == bank)).scalar())


def run_open(tx: Tx, bank: str, d: date, statement_id: int | None, now: datetime, *,
             dry_run: bool, bank_count: int = 0, bank_total: int = 0,
             status: str = "RUNNING") -> tuple[int, int | None]:
    """Insert a run: ``(id, run_no)``.  A dry run takes no number (``None``)."""
    run_no = None if dry_run else next_run_no(tx, bank)
    r = tx.conn.execute(model.recon_run.insert().values(
        bank=bank, run_no=run_no, settle_date=d, statement_id=statement_id, started_at=now,
        status=status, dry_run=1 if dry_run else 0, bank_count=bank_count,
        bank_total=bank_total,
    ))
    return int(r.inserted_primary_key[0]), run_no


def run_insert(tx: Tx, bank: str, d: date, statement_id: int | None, now: datetime, *,
               dry_run: bool, bank_count: int = 0, bank_total: int = 0,
               status: str = "RUNNING") -> int:
    """:func:`run_open`, returning only the id."""
    return run_open(tx, bank, d, statement_id, now, dry_run=dry_run, bank_count=bank_count,
                    bank_total=bank_total, status=status)[0]


def run_numbers(tx: Tx, bank: str, d: date) -> dict[int, int | None]:
    """id -> run_no of the runs of (bank, d)."""
    rr = model.recon_run
    return {int(r[0]): r[1] for r in tx.conn.execute(
        sa.select(rr.c.id, rr.c.run_no).where(rr.c.bank == bank, rr.c.settle_date == d))}


def run_finish(tx: Tx, run_id: int, status: str, now: datetime, *, ours_count: int = 0,
               ours_total: int = 0, summary: dict | None = None) -> None:
    rr = model.recon_run
    tx.conn.execute(rr.update().where(rr.c.id == run_id).values(
        status=status, finished_at=now, ours_count=ours_count, ours_total=ours_total,
        summary=json.dumps(summary, ensure_ascii=False, sort_keys=True, default=str)
        if summary is not None else None,
    ))


def run_get(tx: Tx, run_id: int) -> dict | None:
    rr = model.recon_run
    rows = tx.conn.execute(sa.select(rr).where(rr.c.id == run_id)).mappings().all()
    if not rows:
        return None
    row = dict(rows[0])
    row["summary"] = json.loads(row["summary"]) if row["summary"] else {}
    return row


def runs(tx: Tx, bank: str | None = None, d: date | None = None, limit: int = 100) -> list[dict]:
    rr = model.recon_run
    q = sa.select(rr).order_by(rr.c.id.desc()).limit(limit)
    if bank is not None:
        q = q.where(rr.c.bank == bank)
    if d is not None:
        q = q.where(rr.c.settle_date == d)
    out = []
    for r in tx.conn.execute(q).mappings():
        row = dict(r)
        row["summary"] = json.loads(row["summary"]) if row["summary"] else {}
        out.append(row)
    return out


def reconciled_dates(tx: Tx, bank: str, since: date) -> set[date]:
    """Dates on/after ``since`` with a finished (not dry) run: nothing to catch up."""
    rr = model.recon_run
    q = sa.select(rr.c.settle_date).distinct().where(
        rr.c.bank == bank, rr.c.settle_date >= since, rr.c.dry_run == 0,
        rr.c.status.in_(FINISHED),
    )
    return {r[0] for r in tx.conn.execute(q)}


def first_activity(tx: Tx, bank: str) -> date | None:
    """The first trade date this bank sent a money-changing request for."""
    j = model.journal
    return tx.conn.execute(sa.select(sa.func.min(j.c.trade_date)).where(j.c.bank == bank)).scalar()


# -- items ---------------------------------------------------------------------------

ITEM_COLUMNS = ("category", "serial", "customer_no", "bank_amount", "our_amount", "action",
                "payment_id", "detail")
RESOLUTION_COLUMNS = ("resolved_by", "resolved_at", "resolved_note")


def items_insert(tx: Tx, run_id: int, rows: Iterable[tuple], batch: int = 5000, *,
                 resolutions: bool = False) -> int:
    """Insert items (tuples in :data:`ITEM_COLUMNS` order, followed by the
    :data:`RESOLUTION_COLUMNS` when ``resolutions``) with executemany in
    batches; returns how many."""
    if tx.store.dialect == "postgresql":
        return _items_copy(tx, run_id, rows, resolutions)
    stmt = model.recon_item.insert()
    n = 0
    buf: list[dict] = []
    for r in rows:
        row = {"run_id": run_id, "category": r[0], "serial": r[1], "customer_no": r[2],
               "bank_amount": r[3], "our_amount": r[4], "action": r[5],
               "payment_id": r[6], "detail": (r[7] or None) and r[7][:200]}
        if resolutions:
            row.update(resolved_by=r[8], resolved_at=r[9],
                       resolved_note=(r[10] or None) and r[10][:200])
        buf.append(row)
        if len(buf) >= batch:
            tx.conn.execute(stmt, buf)
            n += len(buf)
            buf = []
    if buf:
        tx.conn.execute(stmt, buf)
        n += len(buf)
    return n


def _items_copy(tx: Tx, run_id: int, rows: Iterable[tuple], resolutions: bool) -> int:
    """PostgreSQL: the same rows through COPY, in this transaction (a million
    matched items in seconds, not minutes)."""
    cols = ("run_id",) + ITEM_COLUMNS + (RESOLUTION_COLUMNS if resolutions else ())
    dbapi = tx.conn.connection.driver_connection
    n = 0
    with dbapi.cursor() as cur:
        with cur.copy(f"COPY {model.recon_item.name} ({', '.join(cols)}) FROM STDIN") as cp:
            write = cp.write_row
            for r in rows:
                detail = r[7]
                row = (run_id, r[0], r[1], r[2], r[3], r[4], r[5], r[6],
                       detail[:200] if detail else None)
                if resolutions:
                    row += (r[8], r[9], r[10][:200] if r[10] else None)
                write(row)
                n += 1
    return n


def items(tx: Tx, run_id: int, *, matched: bool = False, limit: int | None = None) -> list[dict]:
    """A run's items in serial order (``matched`` includes the MATCHED ones)."""
    it = model.recon_item
    q = sa.select(it).where(it.c.run_id == run_id).order_by(it.c.serial, it.c.id)
    if not matched:
        q = q.where(it.c.category != "MATCHED")
    if limit is not None:
        q = q.limit(limit)
    return [dict(r) for r in tx.conn.execute(q).mappings()]


def item_counts(tx: Tx, run_id: int) -> dict[tuple[str, str], tuple[int, int, int]]:
    """(category, action) -> (items, bank amount, our amount)."""
    it = model.recon_item
    q = sa.select(it.c.category, it.c.action, sa.func.count(),
                  sa.func.coalesce(sa.func.sum(it.c.bank_amount), 0),
                  sa.func.coalesce(sa.func.sum(it.c.our_amount), 0)).where(
        it.c.run_id == run_id).group_by(it.c.category, it.c.action)
    return {(r[0], r[1]): (int(r[2]), int(r[3]), int(r[4])) for r in tx.conn.execute(q)}


def resolve_superseded(tx: Tx, bank: str, d: date, run_id: int, note: str) -> int:
    """Exceptions of earlier (not dry) runs of this bank and date that the run
    ``run_id`` no longer has: marked RESOLVED.  Returns how many."""
    it, rr = model.recon_item, model.recon_run
    earlier = sa.select(rr.c.id).where(rr.c.bank == bank, rr.c.settle_date == d,
                                       rr.c.id < run_id, rr.c.dry_run == 0)
    still = sa.select(it.c.serial).where(it.c.run_id == run_id, it.c.action == "EXCEPTION",
                                         it.c.serial.is_not(None))
    q = it.update().where(
        it.c.run_id.in_(earlier), it.c.action == "EXCEPTION",
        sa.or_(it.c.serial.is_(None), it.c.serial.not_in(still)),
    ).values(action="RESOLVED", detail=sa.func.substr(
        sa.func.coalesce(it.c.detail, "") + sa.literal(f" | {note}"), 1, 200))
    if tx.store.dialect in ("mysql", "mariadb"):  # no + on strings, no self-subquery
        ids = [r[0] for r in tx.conn.execute(sa.select(it.c.id).where(
            it.c.run_id.in_(earlier), it.c.action == "EXCEPTION",
            sa.or_(it.c.serial.is_(None), it.c.serial.not_in(still))))]
        for chunk in _chunks(ids):
            tx.conn.execute(it.update().where(it.c.id.in_(chunk)).values(
                action="RESOLVED",
                detail=sa.func.substr(sa.func.concat(sa.func.coalesce(it.c.detail, ""),
                                                     f" | {note}"), 1, 200)))
        return len(ids)
    return tx.conn.execute(q).rowcount


class DryRunItem(ValueError):
    """An item of a dry run: nothing to resolve (a dry run leaves no exception)."""


def item_resolve(tx: Tx, item_id: int, actor: str, note: str, now: datetime, *,
                 action: str = "recon-resolve", detail: dict | None = None,
                 payment_id: int | None = None) -> dict | None:
    """An operator closes one exception (after fixing it by hand): RESOLVED, with
    who, when and the note in its own columns (a later run of the same statement
    keeps it resolved), audited as ``action`` with the item's state before and
    after, the note as the reason and ``detail`` (a post by hand: the payment,
    whose id ``payment_id`` the item then names).  Raises :class:`DryRunItem` for
    a dry run's item; an item that is not an exception is returned unchanged."""
    row = item_get(tx, item_id, lock=True)
    if row is None:
        return None
    if row["dry_run"]:
        raise DryRunItem(f"item {item_id} belongs to a dry run of {row['bank']}"
                         f" {row['settle_date']}: a dry run changes nothing, nothing to resolve")
    if row["action"] != "EXCEPTION":
        return row
    text = f"{row['detail'] or ''} | resolved by {actor}: {note}"[:200]
    values = {"action": "RESOLVED", "detail": text, "resolved_by": actor[:64],
              "resolved_at": now, "resolved_note": note[:200]}
    if payment_id is not None:
        values["payment_id"] = payment_id
    it = model.recon_item
    tx.conn.execute(it.update().where(it.c.id == item_id).values(**values))
    tx.audit(now, actor, action, f"item {item_id}",
             {"run_id": row["run_id"], "run_no": row["run_no"], "bank": row["bank"],
              "settle_date": f"{row['settle_date']}", "serial": row["serial"],
              "category": row["category"], "note": note, "reason": note,
              "before": {"action": row["action"], "detail": row["detail"],
                         "payment_id": row["payment_id"]},
              "after": {"action": "RESOLVED", "detail": text,
                        "payment_id": values.get("payment_id", row["payment_id"])},
              **(detail or {})})
    row.update(values)
    return row


def item_get(tx: Tx, item_id: int, *, lock: bool = False) -> dict | None:
    """One item with its run (bank, settle date, run number, dry run) and the
    gateway's payment it names, if any (receipt, customer, amount, status as
    ``pay_*``); ``lock``: the item's row is locked until the transaction ends."""
    it = model.recon_item
    if lock and tx.lock:  # the item alone: FOR UPDATE refuses the outer join's side
        tx.conn.execute(lock_rows(sa.select(it.c.id).where(it.c.id == item_id), it)).all()
    rows = tx.conn.execute(
        _item_select().select_from(_item_from()).where(it.c.id == item_id)).mappings().all()
    return dict(rows[0]) if rows else None


def _item_from():
    it, rr, p = model.recon_item, model.recon_run, model.payment
    return it.join(rr, rr.c.id == it.c.run_id).outerjoin(p, p.c.id == it.c.payment_id)


def _item_select() -> sa.Select:
    it, rr, p = model.recon_item, model.recon_run, model.payment
    return sa.select(it, rr.c.bank, rr.c.settle_date, rr.c.run_no, rr.c.dry_run,
                     p.c.receipt_no.label("pay_receipt_no"),
                     p.c.customer_no.label("pay_customer_no"),
                     p.c.amount.label("pay_amount"), p.c.status.label("pay_status"),
                     p.c.source.label("pay_source"))


def resolutions(tx: Tx, bank: str, d: date) -> list[dict]:
    """The exceptions an operator resolved in earlier (not dry) runs of (bank, d),
    oldest first (the run where the operator acted, then the runs that carried
    it): category, serial, amounts, who, when, the note and the run."""
    it, rr = model.recon_item, model.recon_run
    q = (
        sa.select(it.c.category, it.c.serial, it.c.bank_amount, it.c.our_amount,
                  it.c.resolved_by, it.c.resolved_at, it.c.resolved_note, rr.c.run_no)
        .join(rr, rr.c.id == it.c.run_id)
        .where(rr.c.bank == bank, rr.c.settle_date == d, rr.c.dry_run == 0,
               it.c.action == "RESOLVED", it.c.resolved_by.is_not(None))
        .order_by(it.c.id)
    )
    return [dict(r) for r in tx.conn.execute(q).mappings()]


def open_exceptions(tx: Tx, bank: str | None = None, d: date | None = None) -> list[dict]:
    """EXCEPTION items of each (bank, date)'s latest finished, not dry, run."""
    it, rr = model.recon_item, model.recon_run
    latest = (
        sa.select(sa.func.max(rr.c.id).label("id"))
        .where(rr.c.dry_run == 0, rr.c.status.in_(FINISHED))
        .group_by(rr.c.bank, rr.c.settle_date)
    )
    if bank is not None:
        latest = latest.where(rr.c.bank == bank)
    if d is not None:
        latest = latest.where(rr.c.settle_date == d)
    q = (
        sa.select(it, rr.c.bank, rr.c.settle_date, rr.c.run_no)
        .join(rr, rr.c.id == it.c.run_id)
        .where(it.c.run_id.in_(latest), it.c.action == "EXCEPTION")
        .order_by(rr.c.bank, rr.c.settle_date, it.c.serial)
    )
    return [dict(r) for r in tx.conn.execute(q).mappings()]


def _latest_runs() -> sa.Select:
    rr = model.recon_run
    return (sa.select(sa.func.max(rr.c.id).label("id"))
            .where(rr.c.dry_run == 0, rr.c.status.in_(FINISHED))
            .group_by(rr.c.bank, rr.c.settle_date))


def exceptions_open(tx: Tx, limit: int) -> list[dict]:
    """The open exceptions (those of :func:`open_exceptions`) with their run, the
    gateway's payment each names (``pay_*``) and the journal's row of the serial
    (``journal_kind``, ``journal_outcome``, ``journal_payment_id``): the newest
    settle date first, then by bank and serial; at most ``limit``."""
    it, rr, j = model.recon_item, model.recon_run, model.journal
    q = (_item_select()
         .add_columns(j.c.kind.label("journal_kind"), j.c.outcome.label("journal_outcome"),
                      j.c.payment_id.label("journal_payment_id"))
         .select_from(_item_from().outerjoin(j, sa.and_(
             j.c.bank == rr.c.bank, j.c.trade_date == rr.c.settle_date,
             j.c.serial == it.c.serial)))
         .where(it.c.run_id.in_(_latest_runs()), it.c.action == "EXCEPTION")
         .order_by(rr.c.settle_date.desc(), rr.c.bank, it.c.serial, it.c.id)
         .limit(limit))
    return [dict(r) for r in tx.conn.execute(q).mappings()]


def resolved_recently(tx: Tx, since: date, limit: int) -> list[dict]:
    """Exceptions an operator resolved (``resolved_by`` set) in runs of settle
    dates from ``since`` on, the newest resolution first; a resolution a later
    run carried over is listed once, as the operator made it.  At most
    ``limit``."""
    it, rr = model.recon_item, model.recon_run
    runs = sa.select(rr.c.id).where(rr.c.settle_date >= since, rr.c.dry_run == 0)
    q = (_item_select().select_from(_item_from())
         .where(it.c.run_id.in_(runs), it.c.category != "MATCHED",
                it.c.action == "RESOLVED", it.c.resolved_by.is_not(None))
         .order_by(it.c.resolved_at.desc(), it.c.id)
         .limit(4 * limit))
    out, seen = [], set()
    for r in tx.conn.execute(q).mappings():
        key = (r["bank"], r["settle_date"], r["category"], r["serial"], r["resolved_by"],
               r["resolved_at"])
        if key in seen:
            continue
        seen.add(key)
        out.append(dict(r))
    return out[:limit]


def journal_key(tx: Tx, bank: str, d: date, serial: str) -> dict | None:
    """The journal row of (bank, d, serial) with the payment it names (``pay_*``),
    or ``None``."""
    j, p = model.journal, model.payment
    rows = tx.conn.execute(
        sa.select(j.c.id, j.c.kind, j.c.outcome, j.c.content, j.c.payment_id, j.c.created_at,
                  p.c.receipt_no.label("pay_receipt_no"), p.c.status.label("pay_status"),
                  p.c.customer_no.label("pay_customer_no"), p.c.amount.label("pay_amount"))
        .select_from(j.outerjoin(p, p.c.id == j.c.payment_id))
        .where(j.c.bank == bank, j.c.trade_date == d, j.c.serial == serial)
    ).mappings().all()
    return dict(rows[0]) if rows else None


def journal_release(tx: Tx, journal_id: int) -> bool:
    """Delete a journal row that recorded a refused payment (no payment, an
    outcome other than OK): its key may then be claimed again in this
    transaction.  False when the row is not such a row (nothing deleted)."""
    j = model.journal
    r = tx.conn.execute(j.delete().where(
        j.c.id == journal_id, j.c.kind == "PAY", j.c.payment_id.is_(None),
        j.c.outcome.not_in(("OK", "PROCESSING"))))
    return r.rowcount == 1


# -- the gateway's side of the day ------------------------------------------------------


def _payments_query(tx: Tx | None, bank: str, d: date) -> sa.Select:
    p, u = model.payment, model.undo
    return (
        sa.select(p.c.serial, p.c.customer_no, p.c.amount, p.c.status, p.c.id, p.c.source,
                  p.c.run_id, u.c.kind, u.c.run_id)
        .select_from(p.outerjoin(u, u.c.payment_id == p.c.id))
        .where(p.c.bank == bank, p.c.trade_date == d)
    )


_readers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _sqlite_reader(store) -> sa.Engine:
    """SQLite: an engine that reads without BEGIN IMMEDIATE.  A plain SELECT in
    autocommit mode reads one WAL snapshot and takes no write lock, so the
    ledger (and the run's own item batches) keep writing while it streams."""
    eng = _readers.get(store)
    if eng is None:
        eng = sa.create_engine(store.url, poolclass=sa.pool.NullPool,
                               connect_args={"check_same_thread": False, "timeout": 30})
        _readers[store] = eng
    return eng


@contextmanager
def payments_stream(store, bank: str, d: date, *, sort: bool = True,
                    batch: int = 20000) -> Iterator[Iterator[tuple]]:
    """Every payment of (bank, d), any status, as tuples (see ``P_*``), in
    binary serial order when ``sort`` (the caller checks), streamed on a
    connection of its own (a server-side cursor on PostgreSQL) that holds no
    lock: write the items meanwhile in transactions of their own."""
    q = _payments_query(None, bank, d)
    if sort:
        q = q.order_by(binary_order(model.payment.c.serial, store.dialect))
    conn = (_sqlite_reader(store) if store.dialect == "sqlite" else store.engine).connect()
    try:
        if store.dialect == "postgresql":
            # a named (server-side) cursor on the driver: plain tuples, no Row
            # objects -- a million rows in a second or two
            compiled = q.compile(dialect=store.engine.dialect)
            dbapi = conn.connection.driver_connection
            with dbapi.cursor(name=f"bg_recon_{bank[:20]}_{d:%Y%m%d}") as cur:
                cur.itersize = batch
                cur.execute(str(compiled), compiled.params)

                def pg_rows() -> Iterator[tuple]:
                    while True:
                        part = cur.fetchmany(batch)
                        if not part:
                            return
                        yield from part

                yield pg_rows()
            return
        result = conn.execute(q)

        def rows() -> Iterator[tuple]:
            while True:
                part = result.fetchmany(batch)
                if not part:
                    return
                yield from (tuple(r) for r in part)

        yield rows()
    finally:
        conn.close()


def items_delete(tx: Tx, run_id: int) -> None:
    tx.conn.execute(model.recon_item.delete().where(model.recon_item.c.run_id == run_id))


def payments_by_serials(tx: Tx, bank: str, d: date, serials: list[str]) -> dict[str, tuple]:
    """serial -> payment tuple (see ``P_*``) for those of ``serials`` on (bank, d)."""
    p = model.payment
    out = {}
    for chunk in _chunks(sorted(set(serials))):
        for r in tx.conn.execute(_payments_query(tx, bank, d).where(p.c.serial.in_(chunk))):
            out[r[0]] = tuple(r)
    return out


def journal_by_serials(tx: Tx, bank: str, d: date, serials: list[str]) -> dict[str, tuple]:
    """serial -> (kind, outcome) of the journal rows of those keys."""
    j = model.journal
    out = {}
    for chunk in _chunks(sorted(set(serials))):
        q = sa.select(j.c.serial, j.c.kind, j.c.outcome).where(
            j.c.bank == bank, j.c.trade_date == d, j.c.serial.in_(chunk))
        for r in tx.conn.execute(q):
            out[r[0]] = (r[1], r[2])
    return out


def standing_totals(tx: Tx, bank: str, d: date) -> tuple[int, int]:
    """Count and sum of (bank, d)'s standing payments (posted or pending)."""
    p = model.payment
    row = tx.conn.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(p.c.amount), 0)).where(
            p.c.bank == bank, p.c.trade_date == d, p.c.status.in_(STANDING))
    ).first()
    return int(row[0]), int(row[1])


def standing_for_statement(tx: Tx, bank: str, d: date) -> list[dict]:
    """The standing payments of (bank, d) as a statement lists them (with the
    bills each one settled), in serial order: for writing a statement from the
    gateway's own journal."""
    p, a = model.payment, model.allocation
    rows = [dict(r) for r in tx.conn.execute(
        sa.select(p.c.id, p.c.serial, p.c.trade_date, p.c.trade_time, p.c.customer_no,
                  p.c.amount, p.c.channel, p.c.pan_masked, p.c.teller, p.c.branch,
                  p.c.receipt_no, p.c.status)
        .where(p.c.bank == bank, p.c.trade_date == d, p.c.status.in_(STANDING))
        .order_by(p.c.serial)
    ).mappings()]
    bills: dict[int, list[str]] = {}
    for chunk in _chunks([r["id"] for r in rows]):
        for r in tx.conn.execute(sa.select(a.c.payment_id, a.c.bill_id)
                                 .where(a.c.payment_id.in_(chunk)).order_by(a.c.id)):
            bills.setdefault(r[0], []).append(r[1])
    for r in rows:
        r["bill_ids"] = tuple(bills.get(r["id"], ()))
    return rows


def customers_with_open_bills(tx: Tx, exclude: Iterable[str] = (), limit: int = 20) -> list[str]:
    b = tx.n8["bill"]
    q = (sa.select(b.c.customer_no).distinct()
         .where(b.c.paid_amount < b.c.amount).order_by(b.c.customer_no).limit(limit + 50))
    skip = set(exclude)
    return [r[0] for r in tx.n8conn.execute(q) if r[0] not in skip][:limit]
