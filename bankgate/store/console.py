"""The operator console's accounts (``bg_console_user``): plain SQL, plain values.

Who may sign in, with which role, and the password's hash.  The rules (which
roles exist, how a password is hashed, what is audited) are the console's own
(:mod:`bankgate.app.console.auth`); these functions only read and write rows, inside
the caller's transaction.  The hash is stored as given and never returned by
:func:`users` (only :func:`user` hands it out, for checking a password).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from bankgate.store import model
from bankgate.store.tx import Tx

_U = model.console_user
#: the columns anyone may see: everything but the hash
PUBLIC = ("name", "role", "created_at", "changed_at", "disabled_at", "last_login_at")


def user(tx: Tx, name: str) -> dict | None:
    """The user ``name`` with its password hash, or ``None``."""
    row = tx.conn.execute(sa.select(_U).where(_U.c.name == name)).mappings().first()
    return dict(row) if row is not None else None


def users(tx: Tx) -> list[dict]:
    """Every user, by name, without the hash."""
    cols = [_U.c[c] for c in PUBLIC]
    return [dict(r) for r in tx.conn.execute(sa.select(*cols).order_by(_U.c.name)).mappings()]


def count(tx: Tx) -> int:
    return int(tx.conn.execute(sa.select(sa.func.count()).select_from(_U)).scalar() or 0)


def insert(tx: Tx, name: str, role: str, password_hash: str, now: datetime) -> bool:
    """Add a user; ``False`` when the name is taken (nothing written)."""
    if user(tx, name) is not None:
        return False
    tx.conn.execute(_U.insert().values(name=name, role=role, password=password_hash,
                                       created_at=now, changed_at=now))
    return True


def update(tx: Tx, name: str, now: datetime, **values) -> bool:
    """Change ``role``, ``password`` or ``disabled_at`` of ``name`` (and its
    ``changed_at``); ``False`` when there is no such user."""
    allowed = {"role", "password", "disabled_at"}
    unknown = set(values) - allowed
    if unknown:
        raise ValueError(f"not a column to change: {', '.join(sorted(unknown))}")
    r = tx.conn.execute(_U.update().where(_U.c.name == name).values(changed_at=now, **values))
    return r.rowcount == 1


def signed_in(tx: Tx, name: str, now: datetime) -> None:
    """Record a successful sign-in (not a change: ``changed_at`` stays)."""
    tx.conn.execute(_U.update().where(_U.c.name == name).values(last_login_at=now))
