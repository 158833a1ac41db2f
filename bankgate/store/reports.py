"""The SQL of the standard reports (报表): every figure summed by the database.

Each report is one or two statements that GROUP BY in the database -- never a Python
loop over payments or bills -- so a month of a million customers' payments comes back as
a few hundred rows.  N8 is read through the mapping (``store.n8``: logical names), the
gateway's own tables through :mod:`bankgate.store.model`; every value a caller gives is a
bound parameter.

A report's rows come from :func:`iter_rows`, a generator that streams from a server-side
cursor (the connection is held while the caller consumes them, released when the
generator ends or is closed), so an export never holds more than a batch in memory.
Totals are one row read at once by :func:`one_row`.

Money is integer fen.  The rules behind each figure are in ``docs/reports.rst``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import date, datetime, time, timedelta

import sqlalchemy as sa

from bankgate.store import model
from bankgate.store.dialects import days_between
from bankgate.store.n8values import sql_date, sql_fen

#: Payment statuses that took money at some time (a two-phase payment that was never
#: confirmed -- PENDING, EXPIRED, CANCELLED -- did not).
RECEIVED = ("POSTED", "REVERSED", "REFUNDED")
PPM = 1_000_000
#: Ageing buckets of the arrears report: (index, lowest days past due, highest or None)
BUCKETS = ((0, None, 0), (1, 1, 30), (2, 31, 90), (3, 91, 180), (4, 181, None))
COLLECTION_DIMS = ("day", "bank", "channel", "fee_type", "district", "customer_class")
PREPAID_FEE_TYPE = ""  # the fee type of the excess kept as prepaid balance
STREAM_BATCH = 2000


def side(store, query) -> str:
    """Which database ``query`` reads: ``"n8"`` (N8's tables only), ``"gateway"``
    (the gateway's only) or ``"both"`` (a join across; one database only)."""
    n8 = store.n8_metadata
    kinds = {"n8" if t.metadata is n8 else "gateway"
             for t in sa.sql.visitors.iterate(query) if isinstance(t, sa.Table)}
    return kinds.pop() if len(kinds) == 1 else "both" if kinds else "gateway"


def _pick(store, query, gateway, n8):
    """``gateway`` (the gateway's connection or engine) or ``n8`` (N8's, or a
    function giving it) for ``query``; a join across the two with N8 apart is a
    fault of the caller (it goes through :class:`Joined`)."""
    if not store.split:
        return gateway
    where = side(store, query)
    if where == "both":
        raise RuntimeError("a report statement joins the gateway's tables with N8's,"
                           " which is a database of its own ([n8.database])")
    if where == "n8":
        return n8() if callable(n8) else n8
    return gateway


def iter_rows(store, query, batch: int = STREAM_BATCH) -> Iterator[tuple]:
    """The rows of ``query`` as plain tuples, streamed ``batch`` at a time, from
    the database holding its tables (a :class:`Joined` reads both)."""
    if isinstance(query, Joined):
        with store.engine.connect() as conn, store.n8_engine.connect() as n8conn:
            yield from query.rows(conn, n8conn)
        return
    with _pick(store, query, store.engine, store.n8_engine).connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=batch).execute(query)
        for row in result:
            yield tuple(row)


def execute(tx, query) -> list[tuple]:
    """The rows of ``query`` in the transaction ``tx``: on N8's connection when it
    reads only N8, joined in Python (:class:`Joined`) across two databases."""
    if isinstance(query, Joined):
        return list(query.rows(tx.conn, tx.n8conn))
    conn = _pick(tx.store, query, tx.conn, lambda: tx.n8conn)
    return [tuple(r) for r in conn.execute(query)]


def one_row(store, query) -> tuple | None:
    def read(tx):
        if isinstance(query, Joined):
            return query.total(tx.conn, tx.n8conn)
        row = _pick(store, query, tx.conn, lambda: tx.n8conn).execute(query).first()
        return None if row is None else tuple(row)

    return store.run_sync(read, readonly=True)


# -- N8 apart: a join done in Python ----------------------------------------------------

IN_CHUNK = 500  # keys per IN (...) list


def n8_lookup(n8conn: sa.Connection, table: sa.Table, key: str, columns: Sequence[str],
              keys, found: dict) -> None:
    """Add to ``found`` ``{key: (columns...)}`` of N8's ``table`` for ``keys`` not in
    it yet, :data:`IN_CHUNK` keys per statement (a key N8 lacks stays out)."""
    want = sorted({k for k in keys if k is not None and k not in found})
    k = table.c[key]
    cols = [table.c[c] for c in columns]
    for i in range(0, len(want), IN_CHUNK):
        for r in n8conn.execute(sa.select(k, *cols).where(k.in_(want[i:i + IN_CHUNK]))):
            found[r[0]] = tuple(r[1:])


def _order_key(values: tuple) -> tuple:
    # NULL first, as SQLite and MariaDB order it
    return tuple((v is not None, v) for v in values)


class Joined:
    """A statement of one database (N8 apart: ``store.split``) done as two:
    ``compute(conn, n8conn) -> (rows, totals)``, computed once and kept; the
    rows already grouped and in the one-database statement's order."""

    def __init__(self, compute, part: str = "rows", shared: dict | None = None):
        self.compute, self.part = compute, part
        self.shared = {} if shared is None else shared

    def totals_part(self) -> Joined:
        return Joined(self.compute, "totals", self.shared)

    def _result(self, conn, n8conn):
        if "result" not in self.shared:
            self.shared["result"] = self.compute(conn, n8conn)
        return self.shared["result"]

    def rows(self, conn, n8conn) -> Iterator[tuple]:
        yield from self._result(conn, n8conn)[0]

    def total(self, conn, n8conn) -> tuple | None:
        return self._result(conn, n8conn)[1]


def _sum(expr) -> sa.ColumnElement:
    return sa.func.coalesce(sa.func.sum(expr), 0)


def _when(cond, value) -> sa.ColumnElement:
    return sa.case((cond, value), else_=0)


def _day_span(d_from: date | None, d_to: date):
    """Datetimes from the start of ``d_from`` to the start of the day after ``d_to``."""
    start = None if d_from is None else datetime.combine(d_from, time())
    return start, datetime.combine(d_to + timedelta(days=1), time())


# -- collections (收费统计) ---------------------------------------------------------


def _collection_facts(store, d_from: date, d_to: date, bank: str | None, by_fee: bool,
                      apart: bool = False):
    """One row per payment -- or, by fee type, one per allocation to a bill plus one per
    excess kept as prepaid -- with the payment's keys and its money.  ``apart`` (N8 in
    a database of its own): the allocation's ``bill_id`` instead of its bill's fee type
    (``None`` for the excess), the bill not joined."""
    p = model.payment
    keys = [p.c.id.label("pid"), p.c.bank, p.c.trade_date, p.c.channel, p.c.customer_no,
            p.c.status]
    where = [p.c.trade_date >= d_from, p.c.trade_date <= d_to, p.c.status.in_(RECEIVED)]
    if bank is not None:
        where.append(p.c.bank == bank)
    if not by_fee:
        return sa.select(*keys, sa.literal(PREPAID_FEE_TYPE).label("fee_type"),
                         p.c.amount, p.c.principal, p.c.late_fee,
                         p.c.prepaid_in.label("prepaid")).where(*where).subquery("facts")
    a, b = model.allocation, store.n8["bill"]
    fee = a.c.bill_id.label("bill_id") if apart else b.c.fee_type.label("fee_type")
    joined = a.join(p, p.c.id == a.c.payment_id)
    if not apart:
        joined = joined.join(b, b.c.bill_id == a.c.bill_id)
    allocated = (
        sa.select(*keys, fee,
                  (a.c.principal + a.c.late_fee).label("amount"),
                  a.c.principal.label("principal"), a.c.late_fee.label("late_fee"),
                  sa.literal(0, sa.BigInteger).label("prepaid"))
        .select_from(joined)
        .where(*where)
    )
    excess_fee = (sa.null().label("bill_id") if apart
                  else sa.literal(PREPAID_FEE_TYPE).label("fee_type"))
    excess = (
        sa.select(*keys, excess_fee,
                  p.c.prepaid_in.label("amount"), sa.literal(0, sa.BigInteger).label("principal"),
                  sa.literal(0, sa.BigInteger).label("late_fee"),
                  p.c.prepaid_in.label("prepaid"))
        .where(*where, p.c.prepaid_in > 0)
    )
    return sa.union_all(allocated, excess).subquery("facts")


def collections_queries(store, d_from: date, d_to: date, by: Sequence[str],
                        bank: str | None = None) -> tuple[sa.Select, sa.Select]:
    """(rows, totals) of the collections report grouped by ``by`` (names from
    :data:`COLLECTION_DIMS`).  Measures, each over payments whose trade date is in the
    range and that took money: count, amount, principal, late fee, prepaid excess;
    of them reversed (incl. 抹账) and refunded, count and amount; net (still standing)."""
    unknown = [d for d in by if d not in COLLECTION_DIMS]
    if unknown:
        raise ValueError(f"unknown dimension {unknown[0]!r}")
    by_fee = "fee_type" in by
    if store.split and set(by) & set(N8_DIMS):
        rows = Joined(lambda conn, n8conn: _collections_apart(
            store, conn, n8conn, d_from, d_to, list(by), bank))
        return rows, rows.totals_part()
    f = _collection_facts(store, d_from, d_to, bank, by_fee)
    source = f
    c = store.n8["customer"]
    if "district" in by or "customer_class" in by:
        source = f.outerjoin(c, c.c.customer_no == f.c.customer_no)
    dims = {
        "day": f.c.trade_date, "bank": f.c.bank, "channel": f.c.channel,
        "fee_type": f.c.fee_type,
        "district": sa.func.coalesce(c.c.district, ""),
        "customer_class": sa.func.coalesce(c.c.customer_class, ""),
    }

    def count(cond=None):
        if by_fee:  # a payment spread over several bills counts once
            return sa.func.count(sa.distinct(f.c.pid if cond is None
                                             else sa.case((cond, f.c.pid))))
        return sa.func.count() if cond is None else _sum(_when(cond, 1))

    reversed_, refunded = f.c.status == "REVERSED", f.c.status == "REFUNDED"
    measures = [
        count(), _sum(f.c.amount), _sum(f.c.principal), _sum(f.c.late_fee), _sum(f.c.prepaid),
        count(reversed_), _sum(_when(reversed_, f.c.amount)),
        count(refunded), _sum(_when(refunded, f.c.amount)),
        _sum(_when(f.c.status == "POSTED", f.c.amount)),
    ]
    keys = [dims[d].label(d) for d in by]
    rows = (sa.select(*keys, *measures).select_from(source)
            .group_by(*[dims[d] for d in by]).order_by(*[dims[d] for d in by]))
    totals = sa.select(*measures).select_from(source)
    return rows, totals


#: the collections' dimensions that are N8's (a bill's fee type, a customer's district
#: and class); the others are the payment's own
N8_DIMS = ("fee_type", "district", "customer_class")
_MEASURES = 10  # count amount principal late_fee prepaid rev_n rev_amt ref_n ref_amt net


def _collections_apart(store, conn, n8conn, d_from, d_to, by: list[str], bank):
    """:func:`collections_queries`' rows and totals with N8 in a database of its own:
    the payments' facts from the gateway (by fee type one per allocation, in payment
    order, so that a payment counts once per group), their bills' fee types and
    customers' district and class from N8, :data:`IN_CHUNK` keys at a time, summed
    here.  The same rows, totals and order as the one-database statement: a bill N8
    lacks drops its allocation (a join), a customer N8 lacks is district and class
    ``""`` (an outer join)."""
    by_fee = "fee_type" in by
    want_customer = "district" in by or "customer_class" in by
    f = _collection_facts(store, d_from, d_to, bank, by_fee, apart=True)
    own = {"day": f.c.trade_date, "bank": f.c.bank, "channel": f.c.channel}
    gw_dims = [d for d in by if d in own]
    if by_fee:  # each fact, in payment order
        q = (sa.select(f.c.pid, f.c.status, *[own[d] for d in gw_dims], f.c.customer_no,
                       f.c.bill_id, f.c.amount, f.c.principal, f.c.late_fee, f.c.prepaid)
             .order_by(f.c.pid))
    else:  # summed per payment dimensions and customer: the measures all add up
        keys = [*[own[d] for d in gw_dims], f.c.customer_no]
        st = f.c.status
        rev, ref = st == "REVERSED", st == "REFUNDED"
        q = (sa.select(sa.null(), sa.null(), *keys, sa.null(), sa.func.count(),
                       _sum(f.c.amount), _sum(f.c.principal), _sum(f.c.late_fee),
                       _sum(f.c.prepaid), _sum(_when(rev, 1)), _sum(_when(rev, f.c.amount)),
                       _sum(_when(ref, 1)), _sum(_when(ref, f.c.amount)),
                       _sum(_when(st == "POSTED", f.c.amount)))
             .group_by(*keys))
    n8 = store.n8
    customers: dict = {}
    fees: dict = {}
    groups: dict[tuple, list] = {}
    total = [0] * _MEASURES + [None]  # the measures, then the last payment counted
    n_own = len(gw_dims)
    if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
        # a server-side cursor (PostgreSQL's needs a transaction: a server's
        # autocommit reader reads the facts whole)
        conn = conn.execution_options(stream_results=True, yield_per=STREAM_BATCH)
    result = conn.execute(q)
    while chunk := result.fetchmany(IN_CHUNK):
        if want_customer:
            n8_lookup(n8conn, n8["customer"], "customer_no", ("district", "customer_class"),
                      (r[2 + n_own] for r in chunk), customers)
        if by_fee:
            n8_lookup(n8conn, n8["bill"], "bill_id", ("fee_type",),
                      (r[3 + n_own] for r in chunk), fees)
        for r in chunk:
            mine = dict(zip(gw_dims, r[2:2 + n_own], strict=True))
            customer, bill = r[2 + n_own], r[3 + n_own]
            if want_customer:
                district, klass = customers.get(customer, (None, None))
                mine["district"], mine["customer_class"] = district or "", klass or ""
            if by_fee:
                if bill is None:
                    mine["fee_type"] = PREPAID_FEE_TYPE
                elif bill in fees:
                    mine["fee_type"] = fees[bill][0]
                else:
                    continue  # the allocation's bill is not in N8: the join drops it
            key = tuple(mine[d] for d in by)
            acc = groups.setdefault(key, [0] * _MEASURES + [None])
            for a in (acc, total):
                if by_fee:
                    _add_fact(a, r[0], r[1], r[-4:])
                else:
                    for i, v in enumerate(r[-_MEASURES:]):
                        a[i] += int(v or 0)
    rows = [key + tuple(acc[:_MEASURES])
            for key, acc in sorted(groups.items(), key=lambda kv: _order_key(kv[0]))]
    return rows, tuple(total[:_MEASURES])


def _add_fact(acc: list, pid, status, money) -> None:
    """Add one fact (by fee type) to a group's measures: money always, counts once
    per payment (the facts come in payment order)."""
    amount, principal, late, prepaid = (int(v or 0) for v in money)
    new = int(acc[_MEASURES] != pid)
    acc[_MEASURES] = pid
    acc[0] += new
    acc[1] += amount
    acc[2] += principal
    acc[3] += late
    acc[4] += prepaid
    if status == "REVERSED":
        acc[5] += new
        acc[6] += amount
    elif status == "REFUNDED":
        acc[7] += new
        acc[8] += amount
    elif status == "POSTED":
        acc[9] += amount


# -- arrears (欠费统计) and the collection rate (收费率) -------------------------------------


def _bucket(due: sa.ColumnElement, as_of: date) -> sa.ColumnElement:
    """The ageing bucket index of a bill due on ``due``, as of ``as_of`` (date compares:
    no date arithmetic in SQL)."""
    whens = []
    for idx, _low, high in BUCKETS[:-1]:
        # days past due <= high  <=>  due >= as_of - high
        whens.append((due >= as_of - timedelta(days=high), idx))
    return sa.case(*whens, else_=BUCKETS[-1][0])


def _arrears_facts(store, as_of: date, due_from: date | None):
    """(source, where, outstanding, late fee owed) over the bills with principal
    outstanding, joined to their customer and tariff: what both arrears reports sum."""
    b, c, t = store.n8["bill"], store.n8["customer"], store.n8["tariff"]
    # fen and dates in SQL, whatever N8 stores ([n8.values]: yuan, char8 ...)
    outstanding = sql_fen(b.c.amount) - sql_fen(b.c.paid_amount)
    days = days_between(sql_date(b.c.due_date), sa.literal(as_of, sa.Date))
    ppm = sa.func.coalesce(t.c.late_fee_ppm, 0)
    accrued = (outstanding * ppm * days + PPM // 2) // PPM
    late_paid = sql_fen(b.c.late_fee_paid)
    late = sa.case(
        (sa.and_(days > 0, ppm > 0, accrued > late_paid), accrued - late_paid),
        else_=0)
    source = b.join(c, c.c.customer_no == b.c.customer_no).outerjoin(
        t, sa.and_(t.c.fee_type == b.c.fee_type, t.c.customer_class == c.c.customer_class))
    where = [outstanding > 0]
    if due_from is not None:
        where.append(b.c.due_date >= due_from)
    return source, where, outstanding, late


def arrears_query(store, as_of: date, due_from: date | None = None) -> sa.Select:
    """The rows: bills with principal outstanding, by district, customer class and ageing
    bucket as of ``as_of``: bills, outstanding principal, late fees owed.  One statement
    and no totals query: the report is a few hundred rows whose columns all add up, so
    the caller sums them.  (No count of distinct customers per group: on PostgreSQL it
    sorts every unpaid bill -- two million on a large N8 -- and took more than the report's
    five seconds by itself; households are what ``arrears --by customer`` lists.)

    The late fee is the ledger's (:func:`bankgate.domain.ledger.late_fee`), per bill in
    SQL: ``(outstanding × ppm × days + 500000) div 1000000`` less the late fee paid, never
    below 0, with ``days`` the whole days from the due date to ``as_of`` and ``ppm`` the
    tariff's rate for the bill's fee type and its customer's class (no tariff: 0).
    """
    b, c = store.n8["bill"], store.n8["customer"]
    source, where, outstanding, late = _arrears_facts(store, as_of, due_from)
    bucket = _bucket(b.c.due_date, as_of)
    district = sa.func.coalesce(c.c.district, "")
    return (sa.select(district.label("district"), c.c.customer_class.label("customer_class"),
                      bucket.label("bucket"), sa.func.count(), _sum(outstanding), _sum(late))
            .select_from(source).where(*where)
            .group_by(district, c.c.customer_class, bucket)
            .order_by(district, c.c.customer_class, bucket))


def arrears_customer_queries(store, as_of: date, due_from: date | None = None,
                             ) -> tuple[sa.Select, sa.Select]:
    """(rows, totals): the arrears list (欠费明细), one row per customer with principal
    outstanding, by district then customer number: customer number, name, district,
    class, bills, the oldest due date and its ageing bucket as of ``as_of``,
    outstanding principal, late fees owed (as :func:`arrears_query` counts them).
    Totals: customers, bills, principal, late fees."""
    b, c = store.n8["bill"], store.n8["customer"]
    source, where, outstanding, late = _arrears_facts(store, as_of, due_from)
    district = sa.func.coalesce(c.c.district, "")
    oldest = sa.func.min(b.c.due_date)
    keys = [c.c.customer_no, c.c.name, district, c.c.customer_class]
    rows = (sa.select(c.c.customer_no.label("customer_no"), c.c.name.label("name"),
                      district.label("district"), c.c.customer_class.label("customer_class"),
                      sa.func.count().label("bills"), oldest.label("oldest_due"),
                      _bucket(oldest, as_of).label("bucket"),
                      _sum(outstanding).label("principal"), _sum(late).label("late_fee"))
            .select_from(source).where(*where)
            .group_by(*keys).order_by(district, c.c.customer_no))
    totals = sa.select(sa.func.count(sa.distinct(b.c.customer_no)), sa.func.count(),
                       _sum(outstanding), _sum(late)).select_from(source).where(*where)
    return rows, totals


def collection_rate_queries(store, fee_type: str, due_from: date | None, due_to: date,
                            ) -> tuple[sa.Select, sa.Select]:
    """(rows, totals): bills of ``fee_type`` (heating: one bill per household and season,
    ``period`` = the season, e.g. ``2026-2027``) due in the range, by season and district:
    bills, billed, paid, bills paid in full."""
    b, c = store.n8["bill"], store.n8["customer"]
    district = sa.func.coalesce(c.c.district, "")
    where = [b.c.fee_type == fee_type, b.c.due_date <= due_to]
    if due_from is not None:
        where.append(b.c.due_date >= due_from)
    measures = [sa.func.count(), _sum(b.c.amount), _sum(b.c.paid_amount),
                _sum(_when(b.c.paid_amount >= b.c.amount, 1))]
    source = b.outerjoin(c, c.c.customer_no == b.c.customer_no)
    rows = (sa.select(b.c.period.label("season"), district.label("district"), *measures)
            .select_from(source).where(*where)
            .group_by(b.c.period, district).order_by(b.c.period, district))
    totals = sa.select(*measures).select_from(source).where(*where)
    return rows, totals


# -- reconciliation history (对账) -------------------------------------------------------

RECON_CATEGORIES = ("MATCHED", "BANK_ONLY", "UTILITY_ONLY", "AMOUNT_DIFFERS", "DATE_DIFFERS",
                    "TOTALS_DIFFER")


def recon_queries(d_from: date, d_to: date, bank: str | None = None,
                  ) -> tuple[sa.Select, sa.Select]:
    """(rows, totals): one row per reconciliation run (not dry runs) of a settle date in
    the range: its figures, items per category, exceptions, and exceptions still open (an
    EXCEPTION item of the latest finished run of its bank and date)."""
    rr, it = model.recon_run, model.recon_item
    items = (
        sa.select(it.c.run_id,
                  *[_sum(_when(it.c.category == cat, 1)).label(cat.lower())
                    for cat in RECON_CATEGORIES],
                  _sum(_when(it.c.action.in_(("EXCEPTION", "RESOLVED")), 1)).label("exc"),
                  _sum(_when(it.c.action == "EXCEPTION", 1)).label("open"))
        .group_by(it.c.run_id).subquery("items")
    )
    latest = (sa.select(sa.func.max(rr.c.id).label("id"))
              .where(rr.c.dry_run == 0, rr.c.status.in_(("BALANCED", "EXCEPTIONS")))
              .group_by(rr.c.bank, rr.c.settle_date).subquery("latest"))
    where = [rr.c.dry_run == 0, rr.c.settle_date >= d_from, rr.c.settle_date <= d_to]
    if bank is not None:
        where.append(rr.c.bank == bank)
    source = rr.outerjoin(items, items.c.run_id == rr.c.id).outerjoin(
        latest, latest.c.id == rr.c.id)
    cats = [sa.func.coalesce(items.c[cat.lower()], 0) for cat in RECON_CATEGORIES]
    exc = sa.func.coalesce(items.c.exc, 0)
    open_ = sa.case((latest.c.id.is_not(None), sa.func.coalesce(items.c.open, 0)), else_=0)
    rows = (sa.select(rr.c.bank, rr.c.run_no, rr.c.settle_date, rr.c.status,
                      rr.c.bank_count, rr.c.bank_total, rr.c.ours_count, rr.c.ours_total,
                      *cats, exc, open_)
            .select_from(source).where(*where)
            .order_by(rr.c.bank, rr.c.settle_date, rr.c.run_no))
    totals = (sa.select(sa.func.count(), _sum(rr.c.bank_count), _sum(rr.c.bank_total),
                        _sum(rr.c.ours_count), _sum(rr.c.ours_total),
                        *[_sum(x) for x in cats], _sum(exc), _sum(open_))
              .select_from(source).where(*where))
    return rows, totals


# -- invoice usage (发票领用 / 开出 / 作废 / 剩余) -------------------------------------------


def invoice_queries(d_from: date, d_to: date, holder: str | None = None,
                    ) -> tuple[sa.Select, sa.Select]:
    """(rows, totals) per holder: numbers received (领用: ranges issued to it in the
    range), used (开出: numbers issued with a payment in the range, still valid), voided
    (作废: of those, voided), and left unused now (剩余: in all its ranges)."""
    s, i = model.invoice_stock, model.invoice
    start, end = _day_span(d_from, d_to)
    zero = sa.literal(0, sa.BigInteger)
    received = (sa.select(s.c.bank.label("holder"),
                          (s.c.last_no - s.c.first_no + 1).label("received"),
                          zero.label("used"), zero.label("voided"), zero.label("left"))
                .where(s.c.issued_at >= start, s.c.issued_at < end))
    left = (sa.select(s.c.bank, zero, zero, zero,
                      sa.case((s.c.next_no <= s.c.last_no, s.c.last_no - s.c.next_no + 1),
                              else_=0)))
    used = (sa.select(i.c.bank, zero, _when(i.c.status != "VOID", 1),
                      _when(i.c.status == "VOID", 1), zero)
            .where(i.c.created_at >= start, i.c.created_at < end))
    if holder is not None:
        received = received.where(s.c.bank == holder)
        left = left.where(s.c.bank == holder)
        used = used.where(i.c.bank == holder)
    u = sa.union_all(received, left, used).subquery("usage")
    measures = [_sum(u.c.received), _sum(u.c.used), _sum(u.c.voided), _sum(u.c.left)]
    rows = sa.select(u.c.holder, *measures).group_by(u.c.holder).order_by(u.c.holder)
    return rows, sa.select(*measures)


# -- withholding (代扣) ---------------------------------------------------------------


def withholding_queries(d_from: date, d_to: date, bank: str | None,
                        reasons: Sequence[str]) -> tuple[sa.Select, sa.Select]:
    """(rows, totals) per bank over batches of a deduct date in the range: batches,
    lines, amount; debited (result 0) lines and amount; failed lines and amount; lines
    without a result yet; failed lines per result code in ``reasons`` and any other."""
    bt, ln = model.wh_batch, model.wh_line
    ok = ln.c.result == "0"
    failed = sa.and_(ln.c.result.is_not(None), ln.c.result != "0")
    measures = [
        sa.func.count(sa.distinct(bt.c.id)), sa.func.count(ln.c.id), _sum(ln.c.total),
        _sum(_when(ok, 1)), _sum(_when(ok, ln.c.total)),
        _sum(_when(failed, 1)), _sum(_when(failed, ln.c.total)),
        _sum(_when(sa.and_(ln.c.id.is_not(None), ln.c.result.is_(None)), 1)),
        *[_sum(_when(ln.c.result == code, 1)) for code in reasons],
        _sum(_when(sa.and_(failed, ln.c.result.not_in(list(reasons) or ["0"])), 1)),
    ]
    where = [bt.c.deduct_date >= d_from, bt.c.deduct_date <= d_to]
    if bank is not None:
        where.append(bt.c.bank == bank)
    source = bt.outerjoin(ln, ln.c.batch_id == bt.c.id)
    rows = (sa.select(bt.c.bank, *measures).select_from(source).where(*where)
            .group_by(bt.c.bank).order_by(bt.c.bank))
    return rows, sa.select(*measures).select_from(source).where(*where)
