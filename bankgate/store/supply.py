"""The SQL of supply status (开栓/停栓): valve states, heating bills per season,
work orders (工单), and the two supply reports.

Every function takes a :class:`~bankgate.store.tx.Tx` first (the ledger's hooks run
them inside a payment's own transaction; ``store.run_sync(fn, ...)`` runs them in a
transaction of their own) and returns plain values.  Nothing here decides anything:
:mod:`bankgate.domain.supply` does.

The valve table is N8's logical table ``valve`` (``tx.n8["valve"]``, through the
mapping) with ``source = "n8"``, or the gateway's ``bg_valve`` with ``source =
"gateway"``; both have the logical columns ``season customer_no state changed_at``.
A household without a row is closed.  "Settled" (the rule) is passed in as
``share_bp``: the paid share of the season's billed heating principal, in basis
points, that counts as paid -- 10000 is "paid in full".
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from datetime import datetime

import sqlalchemy as sa

from bankgate.store import model
from bankgate.store.dialects import lock_rows
from bankgate.store.n8join import lookup, outer_join
from bankgate.store.tx import Tx

OPEN, CLOSED = "open", "closed"
STANDING = ("POSTED", "PENDING")
FULL_BP = 10000
ORDER_FILTERS = ("customer_no", "season", "kind", "state", "receipt_no")


def _dicts(result) -> list[dict]:
    return [dict(r) for r in result.mappings()]


def _p(name: str) -> sa.BindParameter:
    return sa.bindparam(name)


class SupplyStatements:
    """The statements the ledger's hook runs inside every heating payment, built
    once per store (per N8 mapping) with bind parameters and executed with plain
    dicts, as :class:`~bankgate.store.tx.HotStatements` are: building a statement
    and its cache key costs more than SQLite takes to run it.  Variants (valve
    source, order filters) are built on first use."""

    def __init__(self, n8: dict[str, sa.Table]):
        self.n8 = n8
        b, a, p = n8["bill"], model.allocation, model.payment
        self.heating = (b.c.customer_no == _p("s_cust"), b.c.period == _p("s_season"),
                        b.c.fee_type == _p("s_fee"))
        self.season_heating = sa.select(
            sa.func.coalesce(sa.func.sum(b.c.amount), 0),
            sa.func.coalesce(sa.func.sum(b.c.paid_amount), 0),
        ).where(*self.heating)
        self.heating_periods = sa.select(b.c.period).distinct().where(
            b.c.bill_id.in_(sa.bindparam("s_bills", expanding=True)), b.c.fee_type == _p("s_fee"))
        # the seasons whose heating principal a payment paid, from its allocations
        self.paid_seasons = (
            sa.select(b.c.period).distinct()
            .select_from(a.join(b, b.c.bill_id == a.c.bill_id))
            .where(a.c.payment_id == _p("s_pid"), a.c.principal > 0,
                   b.c.fee_type == _p("s_fee")))
        self.payment_standing = sa.select(p.c.status).where(p.c.receipt_no == _p("s_receipt"))
        self.order_insert = model.work_order.insert()
        self._valve: dict[str, sa.Select] = {}
        self._season: dict[tuple, sa.Select] = {}
        self._orders: dict[tuple, sa.Select] = {}

    def valve_state(self, source: str) -> sa.Select:
        q = self._valve.get(source)
        if q is None:
            v = valve_table(self, source)
            q = self._valve.setdefault(source, sa.select(v.c.state).where(
                v.c.season == _p("s_season"), v.c.customer_no == _p("s_cust")))
        return q

    def season(self, source: str | None, orders: bool) -> sa.Select:
        """One row: the household's (billed, paid) heating principal of the season,
        its valve state (NULL: no row, or ``source`` None: no valve table) and, with
        ``orders``, how many open-valve orders stand (open, or done for a standing
        payment).  A derived table and scalar subqueries: one round trip on every
        database the store supports."""
        key = (source, orders)
        q = self._season.get(key)
        if q is None:
            q = self._season.setdefault(key, self._build_season(source, orders))
        return q

    def _build_season(self, source: str | None, orders: bool) -> sa.Select:
        b = self.n8["bill"]
        h = sa.select(
            sa.func.coalesce(sa.func.sum(b.c.amount), 0).label("billed"),
            sa.func.coalesce(sa.func.sum(b.c.paid_amount), 0).label("paid"),
        ).where(*self.heating).subquery("h")
        cols = [h.c.billed, h.c.paid]
        if source is not None:
            v = valve_table(self, source)
            # max(): one row however many the table holds (it is keyed by both)
            cols.append(sa.select(sa.func.max(v.c.state)).where(
                v.c.season == _p("s_season"), v.c.customer_no == _p("s_cust"))
                .scalar_subquery().label("valve"))
        else:
            cols.append(sa.null().label("valve"))
        if orders:
            cols.append(self.standing_orders.scalar_subquery().label("standing"))
        return sa.select(*cols).select_from(h)

    @functools.cached_property
    def standing_orders(self) -> sa.Select:
        """How many open-valve orders of the household and season stand (open, or
        done for a standing payment): the gateway's tables only."""
        w, p = model.work_order, model.payment
        # OR, not IN: an IN list of constants is expanded at every execution
        standing_payment = sa.exists().where(
            p.c.receipt_no == w.c.receipt_no, sa.or_(*[p.c.status == s for s in STANDING]))
        return sa.select(sa.func.count()).select_from(w).where(
            w.c.customer_no == _p("s_cust"), w.c.season == _p("s_season"),
            w.c.kind == "open_valve",
            sa.or_(w.c.state == "open", sa.and_(w.c.state == "done", standing_payment)))

    def orders(self, filters: tuple[str, ...], lock: bool) -> sa.Select:
        """Work orders matching ``filters`` (bound as ``w_<column>``), oldest first."""
        key = (filters, lock)
        q = self._orders.get(key)
        if q is None:
            w = model.work_order
            q = sa.select(w).where(*[w.c[f] == _p(f"w_{f}") for f in filters]).order_by(w.c.id)
            if lock:
                q = lock_rows(q, w)
            q = self._orders.setdefault(key, q)
        return q


def _st(tx: Tx) -> SupplyStatements:
    return tx.sql.more(SupplyStatements)


def valve_table(tx_or_store, source: str) -> sa.Table:
    """The valve table of ``source``: N8's (mapped) or the gateway's ``bg_valve``."""
    return tx_or_store.n8["valve"] if source == "n8" else model.valve


def _valve_conn(tx: Tx, source: str) -> sa.Connection:
    """The connection the valve table of ``source`` is read on."""
    return tx.n8conn if source == "n8" else tx.conn


def valve_table_exists(tx: Tx, source: str) -> bool:
    """Whether the valve table is there (N8's may not be, in an N8 the gateway did
    not create, or in a reference N8 created before the table existed)."""
    if source != "n8":
        return True
    t = tx.n8["valve"]
    return sa.inspect(tx.n8conn).has_table(t.name, schema=t.schema)


# -- valve state ------------------------------------------------------------------------


def valve_state(tx: Tx, source: str, customer_no: str, season: str) -> str:
    row = _valve_conn(tx, source).execute(_st(tx).valve_state(source),
                                          {"s_season": season, "s_cust": customer_no}).first()
    return row[0] if row is not None and row[0] else CLOSED


def valve_set(tx: Tx, customer_no: str, season: str, state: str, now: datetime,
              actor: str) -> str:
    """Set the gateway's valve state (``bg_valve``); returns the state it had."""
    v = model.valve
    q = sa.select(v.c.state).where(v.c.season == season, v.c.customer_no == customer_no)
    if tx.lock:
        q = lock_rows(q, v)
    row = tx.conn.execute(q).first()
    if row is None:
        tx.conn.execute(v.insert().values(season=season, customer_no=customer_no, state=state,
                                          changed_at=now, changed_by=actor))
        return CLOSED
    tx.conn.execute(v.update().where(v.c.season == season, v.c.customer_no == customer_no)
                    .values(state=state, changed_at=now, changed_by=actor))
    return row[0]


# -- heating bills ----------------------------------------------------------------------


def heating_periods(tx: Tx, bill_ids: list[str], fee_type: str) -> list[str]:
    """The periods (seasons) of those of ``bill_ids`` that are heating bills."""
    if not bill_ids:
        return []
    rows = tx.n8conn.execute(_st(tx).heating_periods,
                             {"s_bills": list(bill_ids), "s_fee": fee_type}).all()
    return sorted(r[0] for r in rows)


def paid_seasons(tx: Tx, payment_id: int, fee_type: str) -> list[str]:
    """The periods (seasons) of the heating bills whose principal the payment paid,
    from its allocations (one round trip)."""
    if tx.split:  # N8 in a database of its own: the bills allocated, then their seasons
        a = model.allocation
        ids = [r[0] for r in tx.conn.execute(sa.select(a.c.bill_id).distinct().where(
            a.c.payment_id == payment_id, a.c.principal > 0))]
        return heating_periods(tx, ids, fee_type)
    rows = tx.conn.execute(_st(tx).paid_seasons, {"s_pid": payment_id, "s_fee": fee_type}).all()
    return sorted(r[0] for r in rows)


def season_heating(tx: Tx, customer_no: str, season: str, fee_type: str) -> tuple[int, int]:
    """(billed, paid) heating principal of a household in a season, as it stands
    in this transaction; (0, 0) when it has no heating bill for the season."""
    row = tx.n8conn.execute(_st(tx).season_heating,
                            {"s_cust": customer_no, "s_season": season, "s_fee": fee_type}).first()
    return int(row[0]), int(row[1])


def season_state(tx: Tx, source: str | None, customer_no: str, season: str, fee_type: str,
                 orders: bool) -> tuple[int, int, str, int | None]:
    """What settling a season needs to know, in one round trip: (billed, paid) as
    :func:`season_heating`, the valve state as :func:`valve_state` (closed when
    ``source`` is None: no valve table), and with ``orders`` the number of
    open-valve orders that stand (open, or done for a payment that still stands;
    None without ``orders``).  The orders are read without a row lock: for a
    database that locks the whole file per transaction (SQLite); elsewhere read
    them with :func:`orders` (``lock=True``)."""
    if tx.split:  # N8 in a database of its own: each part on its own database
        billed, paid = season_heating(tx, customer_no, season, fee_type)
        valve = valve_state(tx, source, customer_no, season) if source is not None else CLOSED
        standing = (int(tx.conn.execute(_st(tx).standing_orders,
                                        {"s_cust": customer_no, "s_season": season}).scalar())
                    if orders else None)
        return billed, paid, valve, standing
    row = tx.conn.execute(_st(tx).season(source, orders),
                          {"s_cust": customer_no, "s_season": season, "s_fee": fee_type}).first()
    return (int(row[0]), int(row[1]), row[2] or CLOSED,
            int(row[3]) if orders else None)


def settling_receipt(tx: Tx, customer_no: str, season: str, fee_type: str) -> str | None:
    """The latest standing payment of the household that paid heating principal of
    the season, by its receipt number: the payment a new open-valve order names."""
    p, a, b = model.payment, model.allocation, tx.n8["bill"]
    heating = sa.select(b.c.bill_id).where(
        b.c.customer_no == customer_no, b.c.period == season, b.c.fee_type == fee_type)
    if tx.split:  # N8 in a database of its own: the household's few heating bills first
        heating = [r[0] for r in tx.n8conn.execute(heating)]
        if not heating:
            return None
    q = (sa.select(p.c.receipt_no)
         .join(a, a.c.payment_id == p.c.id)
         .where(p.c.customer_no == customer_no, p.c.status.in_(STANDING),
                a.c.principal > 0, a.c.bill_id.in_(heating))
         .order_by(p.c.id.desc()).limit(1))
    row = tx.conn.execute(q).first()
    return row[0] if row is not None else None


def payment_standing(tx: Tx, receipt_no: str | None) -> bool:
    if not receipt_no:
        return False
    row = tx.conn.execute(_st(tx).payment_standing, {"s_receipt": receipt_no}).first()
    return row is not None and row[0] in STANDING


# -- work orders --------------------------------------------------------------------------


def orders(tx: Tx, *, customer_no: str | None = None, season: str | None = None,
           kind: str | None = None, state: str | None = None, receipt_no: str | None = None,
           lock: bool = False) -> list[dict]:
    """Work orders matching every given filter, oldest first."""
    given = {f: v for f, v in zip(ORDER_FILTERS, (customer_no, season, kind, state, receipt_no),
                                  strict=True) if v is not None}
    q = _st(tx).orders(tuple(given), bool(lock and tx.lock))
    return _dicts(tx.conn.execute(q, {f"w_{f}": v for f, v in given.items()}))


def order_get(tx: Tx, order_id: int, lock: bool = False) -> dict | None:
    w = model.work_order
    q = sa.select(w).where(w.c.id == order_id)
    if lock and tx.lock:
        q = lock_rows(q, w)
    rows = _dicts(tx.conn.execute(q))
    return rows[0] if rows else None


def order_insert(tx: Tx, **values) -> int:
    r = tx.conn.execute(_st(tx).order_insert, values)
    return r.inserted_primary_key[0]


def order_set(tx: Tx, order_id: int, **values) -> None:
    w = model.work_order
    tx.conn.execute(w.update().where(w.c.id == order_id).values(**values))


def order_list(tx: Tx, *, state: str | None = None, district: str | None = None,
               season: str | None = None, kind: str | None = None,
               limit: int | None = None) -> Iterator[tuple]:
    """Work orders with the household's name, address and district (from N8),
    newest first: (id, customer_no, name, district, address, season, kind, state,
    receipt_no, created_at, done_at, done_by, note)."""
    w, c = model.work_order, tx.n8["customer"]
    if tx.split:  # N8 in a database of its own
        yield from _order_list_split(tx, state, district, season, kind, limit)
        return
    q = (sa.select(w.c.id, w.c.customer_no, c.c.name, c.c.district, c.c.address, w.c.season,
                   w.c.kind, w.c.state, w.c.receipt_no, w.c.created_at, w.c.done_at,
                   w.c.done_by, w.c.note)
         .select_from(w.outerjoin(c, c.c.customer_no == w.c.customer_no)))
    if state is not None:
        q = q.where(w.c.state == state)
    if season is not None:
        q = q.where(w.c.season == season)
    if kind is not None:
        q = q.where(w.c.kind == kind)
    if district is not None:
        q = q.where(c.c.district == district)
    q = q.order_by(w.c.id.desc())
    if limit is not None:
        q = q.limit(limit)
    for r in tx.conn.execute(q):
        yield tuple(r)


def _order_list_split(tx: Tx, state, district, season, kind, limit) -> Iterator[tuple]:
    """:func:`order_list` with N8 apart: the orders from the gateway's database, the
    households from N8's by the customers found; a district filter takes N8's
    households of the district first."""
    w, c = model.work_order, tx.n8["customer"]
    q = sa.select(w.c.id, w.c.customer_no, w.c.season, w.c.kind, w.c.state, w.c.receipt_no,
                  w.c.created_at, w.c.done_at, w.c.done_by, w.c.note)
    for col, value in ((w.c.state, state), (w.c.season, season), (w.c.kind, kind)):
        if value is not None:
            q = q.where(col == value)
    q = q.order_by(w.c.id.desc())
    if district is None:
        rows = _dicts(tx.conn.execute(q if limit is None else q.limit(limit)))
    else:
        keys = {r[0] for r in tx.n8conn.execute(
            sa.select(c.c.customer_no).where(c.c.district == district))}
        rows = []
        result = tx.conn.execute(q)
        try:
            for r in result.mappings():
                if limit is not None and len(rows) >= limit:
                    break
                if r["customer_no"] in keys:
                    rows.append(dict(r))
        finally:
            result.close()
    outer_join(tx.n8conn, rows, "customer_no", c.c.customer_no,
               {"name": c.c.name, "district": c.c.district, "address": c.c.address})
    for r in rows:
        yield (r["id"], r["customer_no"], r["name"], r["district"], r["address"], r["season"],
               r["kind"], r["state"], r["receipt_no"], r["created_at"], r["done_at"],
               r["done_by"], r["note"])


# -- reports ------------------------------------------------------------------------------


def _season_heating(tx: Tx, season: str, fee_type: str) -> sa.Subquery:
    """Per household: the season's billed and paid heating principal."""
    b = tx.n8["bill"]
    return (sa.select(b.c.customer_no.label("customer_no"),
                      sa.func.sum(b.c.amount).label("billed"),
                      sa.func.sum(b.c.paid_amount).label("paid"))
            .where(b.c.fee_type == fee_type, b.c.period == season)
            .group_by(b.c.customer_no)
            .subquery("h"))


def _settled(h, share_bp: int):
    """The rule in SQL: paid in full, or paid share >= share (integers only)."""
    if share_bp >= FULL_BP:
        return h.c.paid >= h.c.billed
    return h.c.paid * FULL_BP >= h.c.billed * share_bp


def _split_households(tx: Tx, source: str, season: str, fee_type: str, share_bp: int,
                      which: str, district: str | None, coalesced: bool) -> list[dict]:
    """The households behind a report with N8 apart, in the report's order (by
    district -- ``coalesced``: NULL as "" -- then customer): the season's heating
    totals, settled or not by the rule, and the customers from N8 (with N8's valve
    table in the same statement); the gateway's valve states (``source =
    "gateway"``) by the households found.  Dicts: customer_no name district address
    billed paid valve."""
    h, c = _season_heating(tx, season, fee_type), tx.n8["customer"]
    settled = _settled(h, share_bp)
    where = [sa.not_(settled) if which == "supplied-unpaid" else settled]
    cols = [h.c.customer_no.label("customer_no"), c.c.name.label("name"),
            c.c.district.label("district"), c.c.address.label("address"),
            h.c.billed.label("billed"), h.c.paid.label("paid")]
    joined = h.outerjoin(c, c.c.customer_no == h.c.customer_no)
    if source == "n8":
        v = valve_table(tx, source)
        joined = joined.outerjoin(v, sa.and_(v.c.customer_no == h.c.customer_no,
                                             v.c.season == season))
        cols.append(v.c.state.label("valve"))
        where.append(v.c.state == OPEN if which == "supplied-unpaid"
                     else sa.or_(v.c.state.is_(None), v.c.state != OPEN))
    if district is not None:
        where.append(c.c.district == district)
    order = sa.func.coalesce(c.c.district, "") if coalesced else c.c.district
    rows = _dicts(tx.n8conn.execute(
        sa.select(*cols).select_from(joined).where(*where).order_by(order, h.c.customer_no)))
    if source != "n8":
        v = valve_table(tx, source)
        outer_join(tx.conn, rows, "customer_no", v.c.customer_no, {"valve": v.c.state},
                   v.c.season == season)
        rows = [r for r in rows if (r["valve"] == OPEN) == (which == "supplied-unpaid")]
    return rows


def _by_district(rows: list[dict]) -> Iterator[tuple[str, list[dict]]]:
    """``rows`` (in district order) by district, NULL as ""."""
    for d, group in itertools.groupby(rows, key=lambda r: r["district"] or ""):
        yield d, list(group)


def supplied_unpaid(tx: Tx, source: str, season: str, fee_type: str,
                    share_bp: int) -> list[tuple]:
    """The leak, by district: households whose valve is open for the season but whose
    heating bills of the season are not settled by the rule.  Rows: (district,
    households, billed, paid, outstanding), by district."""
    if tx.split:  # N8 in a database of its own
        return [(d, len(g), sum(int(r["billed"] or 0) for r in g),
                 sum(int(r["paid"] or 0) for r in g),
                 sum(int(r["billed"] or 0) - int(r["paid"] or 0) for r in g))
                for d, g in _by_district(_split_households(
                    tx, source, season, fee_type, share_bp, "supplied-unpaid", None, True))]
    h, v, c = _season_heating(tx, season, fee_type), valve_table(tx, source), tx.n8["customer"]
    district = sa.func.coalesce(c.c.district, "")
    q = (sa.select(district.label("district"), sa.func.count().label("households"),
                   sa.func.sum(h.c.billed), sa.func.sum(h.c.paid),
                   sa.func.sum(h.c.billed - h.c.paid))
         .select_from(h.join(v, sa.and_(v.c.customer_no == h.c.customer_no,
                                        v.c.season == season))
                      .outerjoin(c, c.c.customer_no == h.c.customer_no))
         .where(v.c.state == OPEN, sa.not_(_settled(h, share_bp)))
         .group_by(district).order_by(district))
    return [(r[0], int(r[1]), int(r[2] or 0), int(r[3] or 0), int(r[4] or 0))
            for r in tx.conn.execute(q)]


def paid_closed(tx: Tx, source: str, season: str, fee_type: str,
                share_bp: int) -> list[tuple]:
    """The complaints, by district: households whose heating bills of the season are
    settled by the rule but whose valve is not open.  Rows: (district, households,
    with an open open-valve order, without one, paid)."""
    w = model.work_order
    if tx.split:  # N8 in a database of its own: the open orders by the households found
        rows = _split_households(tx, source, season, fee_type, share_bp, "paid-closed",
                                 None, True)
        ordered = lookup(tx.conn, w.c.customer_no, {}, (r["customer_no"] for r in rows),
                         w.c.season == season, w.c.kind == "open_valve", w.c.state == "open")
        out = []
        for d, g in _by_district(rows):
            with_order = sum(1 for r in g if r["customer_no"] in ordered)
            out.append((d, len(g), with_order, len(g) - with_order,
                        sum(int(r["paid"] or 0) for r in g)))
        return out
    h, v, c = _season_heating(tx, season, fee_type), valve_table(tx, source), tx.n8["customer"]
    ordered = (sa.select(w.c.customer_no).where(
        w.c.season == season, w.c.kind == "open_valve", w.c.state == "open")
        .distinct().subquery("o"))
    district = sa.func.coalesce(c.c.district, "")
    has_order = sa.case((ordered.c.customer_no.is_not(None), 1), else_=0)
    q = (sa.select(district.label("district"), sa.func.count().label("households"),
                   sa.func.sum(has_order), sa.func.sum(1 - has_order), sa.func.sum(h.c.paid))
         .select_from(h.outerjoin(v, sa.and_(v.c.customer_no == h.c.customer_no,
                                             v.c.season == season))
                      .outerjoin(ordered, ordered.c.customer_no == h.c.customer_no)
                      .outerjoin(c, c.c.customer_no == h.c.customer_no))
         .where(_settled(h, share_bp), sa.or_(v.c.state.is_(None), v.c.state != OPEN))
         .group_by(district).order_by(district))
    return [(r[0], int(r[1]), int(r[2] or 0), int(r[3] or 0), int(r[4] or 0))
            for r in tx.conn.execute(q)]


def households(tx: Tx, source: str, season: str, fee_type: str, share_bp: int,
               which: str, district: str | None = None) -> Iterator[tuple]:
    """The households behind either report (``which``: "supplied-unpaid" or
    "paid-closed"): (customer_no, name, district, address, billed, paid, valve)."""
    if tx.split:  # N8 in a database of its own
        for r in _split_households(tx, source, season, fee_type, share_bp, which, district,
                                   False):
            yield (r["customer_no"], r["name"] or "", r["district"] or "", r["address"] or "",
                   int(r["billed"] or 0), int(r["paid"] or 0),
                   r["valve"] if r["valve"] is not None else CLOSED)
        return
    h, v, c = _season_heating(tx, season, fee_type), valve_table(tx, source), tx.n8["customer"]
    state = sa.func.coalesce(v.c.state, CLOSED)
    q = (sa.select(h.c.customer_no, c.c.name, c.c.district, c.c.address, h.c.billed,
                   h.c.paid, state)
         .select_from(h.outerjoin(v, sa.and_(v.c.customer_no == h.c.customer_no,
                                             v.c.season == season))
                      .outerjoin(c, c.c.customer_no == h.c.customer_no)))
    if which == "supplied-unpaid":
        q = q.where(v.c.state == OPEN, sa.not_(_settled(h, share_bp)))
    else:
        q = q.where(_settled(h, share_bp), sa.or_(v.c.state.is_(None), v.c.state != OPEN))
    if district is not None:
        q = q.where(c.c.district == district)
    for r in tx.conn.execute(q.order_by(c.c.district, h.c.customer_no)):
        yield (r[0], r[1] or "", r[2] or "", r[3] or "", int(r[4] or 0), int(r[5] or 0), r[6])
