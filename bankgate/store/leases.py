"""The SQL of leases (``bg_lease``): which process does a job now, across the
processes and nodes of one database.

A lease is a row named after the job it guards (``cutoff:demo-fixed:2026-11-27``,
``recon:demo-fixed:2026-11-27``, ``expiry`` ...), with its holder
(``host:pid:id``, :func:`bankgate.domain.leases.default_holder`), when that holder
took it and last renewed it, until when it holds (``expires_at``), what the job is
(``job``: a small JSON object, for operators and for a process that takes the job
over) and, for a job that is to run once, when it was finished (``finished_at``:
the row stays, and no one takes the lease again).

Every time here is the caller's clock -- the gateway's ``now``, the local wall
time of the configured zone that every other timestamp of the gateway is written
in -- never the database's: the tests drive it, and the reconciliation's run lock
always worked so.  Nodes on one database must keep their clocks in step (NTP): a
node whose clock runs ``s`` seconds ahead takes a silent holder's lease ``s``
seconds early, so keep ``s`` well under a third of the ttl.

Every function takes a :class:`~bankgate.store.tx.Tx` first and works in the
caller's transaction.  :func:`acquire` is atomic on every database without a lock
held between statements:

1. an ``INSERT`` in a savepoint: of two processes inserting at once, the primary
   key lets exactly one in;
2. otherwise the row is read: held by the caller -- renewed; expired -- taken with
   ``UPDATE ... WHERE name = ? AND holder = <the holder read> AND expires_at < now``,
   which of two racing takers only one matches (the other's finds the new holder or
   the new expiry), with an audit row naming the silent holder;
3. otherwise it is held by someone else (or finished): the row says by whom.

Renewing and releasing match the holder, so a holder that lost its lease can
neither extend nor drop the new holder's.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import sqlalchemy as sa

from bankgate.store import model
from bankgate.store.db import Retry
from bankgate.store.tx import Tx

NAME = 160  # the length of a lease's name
JOB = 200  # of its job's description (JSON)
HOLDER = 64


def _row(r) -> dict:
    row = dict(r)
    try:
        row["job"] = json.loads(row["job"]) if row["job"] else {}
    except ValueError:  # written by hand: keep it as text
        row["job"] = {"text": row["job"]}
    return row


def _job_text(job: dict | None) -> str | None:
    if not job:
        return None
    text = json.dumps(job, ensure_ascii=False, sort_keys=True, default=str)
    while len(text) > JOB and job:  # drop the longest values until it fits
        key = max(job, key=lambda k: len(str(job[k])))
        job = {k: v for k, v in job.items() if k != key}
        text = json.dumps(job, ensure_ascii=False, sort_keys=True, default=str)
    return text if job else None


def get(tx: Tx, name: str) -> dict | None:
    """The lease row of ``name`` (``job`` decoded), or ``None``."""
    ls = model.lease
    rows = tx.conn.execute(sa.select(ls).where(ls.c.name == name)).mappings().all()
    return _row(rows[0]) if rows else None


def acquire(tx: Tx, name: str, holder: str, now: datetime, ttl: float, *,
            job: dict | None = None, action: str = "lease-takeover",
            subject: str | None = None) -> dict:
    """Take (or renew, for its holder) the lease ``name`` for ``ttl`` seconds.

    Returns ``{"ok": bool, "row": the lease as it now is, "previous": the silent
    holder's row that was replaced, or None}``.  A takeover is audited as
    ``action`` on ``subject`` (default: the lease's name) with the silent holder
    (``stale_holder``), since when it held (``since``) and until when
    (``expired_at``)."""
    if len(name) > NAME:
        raise ValueError(f"lease name longer than {NAME} characters: {name[:40]}...")
    ls = model.lease
    until = now + timedelta(seconds=ttl)
    text = _job_text(job)
    for _ in range(3):
        try:
            with tx.conn.begin_nested():
                tx.conn.execute(ls.insert().values(
                    name=name, holder=holder[:HOLDER], acquired_at=now, renewed_at=now,
                    expires_at=until, job=text))
            return {"ok": True, "row": get(tx, name), "previous": None}
        except sa.exc.IntegrityError:
            pass
        row = get(tx, name)
        if row is None:  # released meanwhile: insert again
            continue
        if row["finished_at"] is not None:
            return {"ok": False, "row": row, "previous": None}
        if row["holder"] == holder[:HOLDER]:
            if renew(tx, name, holder, now, ttl):
                return {"ok": True, "row": get(tx, name), "previous": None}
            continue  # taken over between the read and the renewal: look again
        if row["expires_at"] >= now:
            return {"ok": False, "row": row, "previous": None}
        r = tx.conn.execute(
            ls.update()
            .where(ls.c.name == name, ls.c.holder == row["holder"], ls.c.expires_at < now,
                   ls.c.finished_at.is_(None))
            .values(holder=holder[:HOLDER], acquired_at=now, renewed_at=now, expires_at=until,
                    job=text))
        if r.rowcount == 1:
            tx.audit(now, holder[:HOLDER], action, (subject or name)[:100],
                     {"lease": name, "stale_holder": row["holder"],
                      "since": row["acquired_at"].isoformat(),
                      "expired_at": row["expires_at"].isoformat()})
            return {"ok": True, "row": get(tx, name), "previous": row}
        # another process renewed or took it between the read and the update: look again
    raise Retry()


def renew(tx: Tx, name: str, holder: str, now: datetime, ttl: float) -> bool:
    """Extend the lease of ``holder`` to ``now + ttl``; False if it is not (any
    longer) theirs -- taken over, released or finished."""
    ls = model.lease
    r = tx.conn.execute(
        ls.update()
        .where(ls.c.name == name, ls.c.holder == holder[:HOLDER], ls.c.finished_at.is_(None))
        .values(renewed_at=now, expires_at=now + timedelta(seconds=ttl)))
    return r.rowcount == 1


def release(tx: Tx, name: str, holder: str) -> bool:
    """Give the lease up (the job is done or given up); False if it was not
    ``holder``'s."""
    ls = model.lease
    r = tx.conn.execute(ls.delete().where(ls.c.name == name, ls.c.holder == holder[:HOLDER],
                                          ls.c.finished_at.is_(None)))
    return r.rowcount == 1


def finish(tx: Tx, name: str, holder: str, now: datetime) -> bool:
    """Mark the job of a lease done for good: the row stays, with ``finished_at``,
    and :func:`acquire` refuses it from now on.  False if it was not ``holder``'s."""
    ls = model.lease
    r = tx.conn.execute(
        ls.update()
        .where(ls.c.name == name, ls.c.holder == holder[:HOLDER], ls.c.finished_at.is_(None))
        .values(finished_at=now, renewed_at=now, expires_at=now))
    return r.rowcount == 1


def _like(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def expired(tx: Tx, prefix: str, now: datetime) -> list[dict]:
    """Unfinished leases whose name starts with ``prefix`` and whose holder has
    not renewed them in time (a process that stopped without releasing them):
    jobs to take over.  Oldest first."""
    ls = model.lease
    q = (sa.select(ls)
         .where(ls.c.name.like(_like(prefix), escape="\\"), ls.c.expires_at < now,
                ls.c.finished_at.is_(None))
         .order_by(ls.c.acquired_at, ls.c.name))
    return [_row(r) for r in tx.conn.execute(q).mappings()]


def held(tx: Tx, prefix: str = "") -> list[dict]:
    """Every lease (finished ones too) whose name starts with ``prefix``, by name."""
    ls = model.lease
    q = sa.select(ls).order_by(ls.c.name)
    if prefix:
        q = q.where(ls.c.name.like(_like(prefix), escape="\\"))
    return [_row(r) for r in tx.conn.execute(q).mappings()]


def purge(tx: Tx, before: datetime) -> int:
    """Delete the rows of jobs finished, and of leases expired, before ``before``
    (a month's history is plenty): how many."""
    ls = model.lease
    r = tx.conn.execute(ls.delete().where(sa.or_(ls.c.finished_at < before,
                                                 ls.c.expires_at < before)))
    return r.rowcount or 0
