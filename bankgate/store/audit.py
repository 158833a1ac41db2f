"""The audit trail (``bg_audit``) read and written outside a domain transaction.

Each domain writes its own audit rows with :meth:`bankgate.store.tx.Tx.audit`,
in the transaction of what it records.  This module is for the rest: a
back-office command that records an action no domain call audits (rewriting a
batch file, resending reversals), and the running service, which follows the
rows other processes (the ``bankgate`` command) write so that its log shows
them (:mod:`bankgate.app.audit_tail`), and the console's audit trail page
(:func:`page`).  Plain functions over a transaction, returning plain values.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime

import sqlalchemy as sa

from bankgate.store import model
from bankgate.store.tx import Tx


def record(tx: Tx, now: datetime, actor: str, action: str, subject: str = "",
           detail: dict | None = None) -> None:
    """One audit row (actor, action and subject cut to their columns' sizes)."""
    tx.audit(now, actor[:64], action[:32], subject[:100], detail)


def newest_id(tx: Tx) -> int:
    """The id of the newest row, 0 when there is none: where a follower starts."""
    a = model.audit
    return int(tx.conn.execute(sa.select(sa.func.max(a.c.id))).scalar() or 0)


def after(tx: Tx, last_id: int, limit: int = 500, also: Iterable[int] = ()) -> list[dict]:
    """Rows with an id above ``last_id`` -- and those of the ids in ``also``
    (at most 500: ids a follower saw skipped, whose transaction may commit
    late) -- oldest first, at most ``limit``; ``detail`` decoded from JSON (a
    dict; text that is not JSON as ``{"text": ...}``)."""
    a = model.audit
    cond = a.c.id > last_id
    also = sorted(set(also))[:500]
    if also:
        cond = sa.or_(cond, a.c.id.in_(also))
    rows = tx.conn.execute(sa.select(a).where(cond).order_by(a.c.id).limit(limit)).mappings()
    return [_decoded(r) for r in rows]


def page(tx: Tx, *, actor: str | None = None, action: str | None = None,
         subject: str | None = None, since: datetime | None = None,
         until: datetime | None = None, before: int | None = None,
         limit: int = 200) -> list[dict]:
    """The console's audit trail page: rows newest first (by id), at most ``limit``,
    each filter exact when given -- ``actor``, ``action``, ``subject`` -- and ``at``
    from ``since`` (inclusive) to ``until`` (exclusive); ``before``: only rows with a
    smaller id (the next, older page).  ``detail`` decoded as in :func:`after`."""
    a = model.audit
    cond = [c for c in (
        a.c.actor == actor if actor else None,
        a.c.action == action if action else None,
        a.c.subject == subject if subject else None,
        a.c.at >= since if since is not None else None,
        a.c.at < until if until is not None else None,
        a.c.id < before if before is not None else None,
    ) if c is not None]
    q = sa.select(a).where(*cond).order_by(a.c.id.desc()).limit(limit)
    return [_decoded(r) for r in tx.conn.execute(q).mappings()]


def _decoded(r) -> dict:
    """A row as a dict, ``detail`` decoded from JSON (a dict; text that is not JSON
    as ``{"text": ...}``, another JSON value as ``{"value": ...}``)."""
    row = dict(r)
    raw = row["detail"]
    try:
        row["detail"] = json.loads(raw) if raw else {}
    except ValueError:
        row["detail"] = {"text": raw}
    if not isinstance(row["detail"], dict):
        row["detail"] = {"value": row["detail"]}
    return row
