"""Reads that join the gateway's tables with N8's, when N8 is a database of its own.

With ``[n8.database]`` (``tx.split``) no statement can join a ``bg_*`` table with
one of N8's: the read modules then run the two sides as two queries and join them
here, in Python.  One side's rows come first (in the order the report gives them);
the other side is fetched by the keys found, in ``IN`` lists of at most
:data:`CHUNK` keys, and its columns are added to each row -- ``None`` where it has
no row, as a ``LEFT OUTER JOIN`` gives.  The other side is always looked up by its
key (a primary key, or one with the rest of the key fixed by ``where``), so a row
never turns into two.

Without ``[n8.database]`` the read modules keep their one-statement SQL; these
functions are for the split path only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import sqlalchemy as sa

#: keys per ``IN`` list (well under every supported database's parameter limit)
CHUNK = 500


def chunks(items: list, size: int = CHUNK) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def lookup(conn: sa.Connection, key: sa.ColumnElement, columns: dict[str, sa.ColumnElement],
           keys: Iterable, *where) -> dict:
    """``{key value: {name: value}}`` of the rows whose ``key`` is one of ``keys``
    (and that match ``where``), read on ``conn`` in chunks of :data:`CHUNK`."""
    wanted = sorted({k for k in keys if k is not None})
    out: dict = {}
    for part in chunks(wanted):
        q = sa.select(key.label("_k"), *[c.label(n) for n, c in columns.items()]).where(
            key.in_(part), *where)
        for r in conn.execute(q).mappings():
            out[r["_k"]] = {n: r[n] for n in columns}
    return out


def fill(rows: list[dict], key: str, found: dict, names: Iterable[str]) -> list[dict]:
    """Add ``names`` to each of ``rows`` from ``found`` (a :func:`lookup`) by the
    row's ``key``; ``None`` where nothing was found (an outer join)."""
    names = list(names)
    for r in rows:
        hit = found.get(r[key])
        for n in names:
            r[n] = hit[n] if hit is not None else None
    return rows


def outer_join(conn: sa.Connection, rows: list[dict], key: str, other_key: sa.ColumnElement,
               columns: dict[str, sa.ColumnElement], *where) -> list[dict]:
    """:func:`lookup` and :func:`fill` in one: ``rows`` LEFT JOIN the table of
    ``other_key`` (read on ``conn``) ON ``row[key] = other_key``."""
    found = lookup(conn, other_key, columns, (r[key] for r in rows), *where)
    return fill(rows, key, found, columns)
