"""The SQL of custom reports (按用户要求定制的报表), built from plain query shapes.

A custom report definition (``bankgate/domain/custom_reports.py``, documented in
``docs/custom-reports.rst``) names logical N8 columns -- ``customer.district``,
``bill.amount`` -- never SQL.  The domain validates it against :data:`CATALOG` and
hands this module a :class:`Query` of catalog keys; here the keys become the
mapped physical tables and columns (:mod:`bankgate.store.n8`), joined along the
schema's declared keys, with every value a bound parameter.  A name that is not a
catalog key is a ``KeyError`` here, so no text of a definition ever reaches the SQL.

Joins only go from a *fact* table (what is counted: a customer, a bill, a payment,
a payment item) to the rows it belongs to (many to one: a bill's customer, an item's
payment and bill, a payment's gateway record), so a measure is never counted twice.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import date

import sqlalchemy as sa

from bankgate.store import model
from bankgate.store.dialects import is_db2
from bankgate.store.n8 import REFERENCE
from bankgate.store.n8values import sql_date, sql_fen
from bankgate.store.tx import Tx

# -- what may be reported on -------------------------------------------------------

KINDS = ("text", "int", "fen", "area", "date")
NUMERIC = ("int", "fen", "area")

FACTS = ("customer", "bill", "payment", "payment_item")
"""Tables a report may count, from the least detailed to the most."""

# table -> {parent table: (column of table, column of parent)}: many-to-one joins
PARENTS: dict[str, dict[str, tuple[str, str]]] = {
    "customer": {},
    "bill": {"customer": ("customer_no", "customer_no")},
    "payment": {"customer": ("customer_no", "customer_no"),
                "gateway_payment": ("pay_id", "receipt_no")},
    "payment_item": {"payment": ("pay_id", "pay_id"), "bill": ("bill_id", "bill_id")},
    "gateway_payment": {},
}

# columns not offered: an account number is not a report dimension; a payment's
# posting time is its pay_date for reports (dates group portably, times do not)
HIDDEN = {("customer", "withholding_account"), ("payment", "created_at")}

# the gateway's own record of a payment (bg_payment), one per N8 payment: what N8's
# payment row lacks (the principal / late-fee split, the configured bank name)
GATEWAY_PAYMENT = {
    "bank": "bank", "principal": "principal", "late_fee": "late_fee",
    "prepaid_in": "prepaid_in", "status": "status", "source": "source",
    "trade_date": "trade_date",
}

# computed columns: logical name -> (kind, the columns of its table it is made of)
VIRTUAL = {("bill", "outstanding"): ("fen", ("amount", "paid_amount"))}


def _kind(t: str, c: str, type_) -> str:
    if isinstance(type_, type):
        type_ = type_()
    if isinstance(type_, sa.BigInteger):
        return "fen"  # every BIGINT of N8 and bg_payment named here is money in fen
    if isinstance(type_, sa.Integer):
        return "int"
    if isinstance(type_, sa.Numeric):
        return "area"
    if isinstance(type_, sa.Date):
        return "date"
    return "text"


def _catalog() -> dict[str, str]:
    out: dict[str, str] = {}
    for t in ("customer", "bill", "payment", "payment_item"):
        for c, type_, _opts in REFERENCE[t][1]:
            if (t, c) not in HIDDEN:
                out[f"{t}.{c}"] = _kind(t, c, type_)
    for c, physical in GATEWAY_PAYMENT.items():
        out[f"gateway_payment.{c}"] = _kind("gateway_payment", c,
                                            model.payment.c[physical].type)
    for (t, c), (kind, _parts) in VIRTUAL.items():
        out[f"{t}.{c}"] = kind
    return out


CATALOG: dict[str, str] = _catalog()
"""Every reportable logical column, ``"table.column"`` -> its kind (:data:`KINDS`)."""


def reach(fact: str) -> list[str]:
    """The tables a report counting ``fact`` may read: the fact and, transitively,
    the rows each of its rows belongs to."""
    out = [fact]
    for t in out:
        for parent in PARENTS[t]:
            if parent not in out:
                out.append(parent)
    return out


def one_to_one(fact: str) -> set[str]:
    """Tables with exactly one row per row of ``fact`` (a measure over their
    columns counts each fact once)."""
    return {"gateway_payment"} if fact == "payment" else set()


# -- the query shape ---------------------------------------------------------------

GRAINS = ("day", "month", "year")
FUNCTIONS = ("count", "count_distinct", "sum", "avg", "min", "max")
OPERATORS = ("=", "!=", "<", "<=", ">", ">=", "in", "between", "like")


@dataclass(frozen=True)
class Dim:
    field: str  # a CATALOG key
    grain: str | None = None  # dates: "day" | "month" | "year"


@dataclass(frozen=True)
class Measure:
    fn: str  # FUNCTIONS
    field: str | None = None  # None: count the fact's rows


@dataclass(frozen=True)
class Cond:
    field: str
    op: str  # OPERATORS
    value: object  # checked by the domain: of the column's kind; a list for in / between


@dataclass(frozen=True)
class Query:
    fact: str
    dims: tuple[Dim, ...]
    measures: tuple[Measure, ...]
    conds: tuple[Cond, ...] = ()
    order: tuple[tuple[int, bool], ...] = ()  # (output column position, descending)
    limit: int | None = None


# -- building the SQL --------------------------------------------------------------

# date grains: (format per dialect); constants of this module, never a definition's text
_GRAIN_FORMATS = {
    "sqlite": ("strftime", {"month": "'%Y-%m'", "year": "'%Y'"}, True),
    "postgresql": ("to_char", {"month": "'YYYY-MM'", "year": "'YYYY'"}, False),
    "oracle": ("to_char", {"month": "'YYYY-MM'", "year": "'YYYY'"}, False),
    "mysql": ("date_format", {"month": "'%Y-%m'", "year": "'%Y'"}, False),
    "mariadb": ("date_format", {"month": "'%Y-%m'", "year": "'%Y'"}, False),
    "mssql": ("format", {"month": "'yyyy-MM'", "year": "'yyyy'"}, False),
}


def _grain(col, grain: str | None, dialect: str):
    if grain in (None, "day"):
        return col
    fn, formats, format_first = _GRAIN_FORMATS.get(dialect, _GRAIN_FORMATS["postgresql"])
    fmt = sa.literal_column(formats[grain])
    args = (fmt, col) if format_first else (col, fmt)
    return getattr(sa.func, fn)(*args, type_=sa.String)


class _Tables:
    """The physical tables of one query: N8's under the mapping, and bg_payment
    (or ``gateway``: its copy beside N8, when N8 is a database of its own)."""

    def __init__(self, n8: dict[str, sa.Table], gateway: sa.Table = model.payment):
        self.n8 = n8
        self.gateway = gateway

    def table(self, logical: str) -> sa.Table:
        return self.gateway if logical == "gateway_payment" else self.n8[logical]

    def column(self, field: str):
        if field not in CATALOG:
            raise KeyError(f"{field!r} is not a reportable column")
        t, c = field.split(".", 1)
        tab = self.table(t)
        if (t, c) in VIRTUAL:
            a, b = VIRTUAL[(t, c)][1]
            return sql_fen(tab.c[a]) - sql_fen(tab.c[b])
        if t == "gateway_payment":
            return tab.c[GATEWAY_PAYMENT[c]]
        # fen and SQL dates whatever N8 stores ([n8.values]): sums, averages and
        # grains compute on them
        return sql_date(sql_fen(tab.c[c]))


def _tables_of(q: Query) -> set[str]:
    fields = [d.field for d in q.dims] + [m.field for m in q.measures if m.field]
    fields += [c.field for c in q.conds]
    return {f.split(".", 1)[0] for f in fields}


def _paths(fact: str) -> dict[str, tuple[str, str, str]]:
    """How each table :func:`reach` finds from ``fact`` is joined: ``{table: (the
    table it is reached from, that table's column, this table's column)}`` (the
    first way found: a payment item's customer through its payment)."""
    via: dict[str, tuple[str, str, str]] = {}
    for t in reach(fact):
        for parent, (mine, theirs) in PARENTS[t].items():
            if parent != fact and parent not in via:
                via[parent] = (t, mine, theirs)
    return via


def _from_clause(tables: _Tables, fact: str, needed: set[str]):
    """The fact table outer-joined to each parent a column needs, in join order."""
    order = reach(fact)
    missing = needed - set(order)
    if missing:
        raise KeyError(f"a report counting {fact} rows cannot read {', '.join(sorted(missing))}")
    via = _paths(fact)
    wanted: set[str] = set()
    for t in needed:
        while t != fact and t not in wanted:
            wanted.add(t)
            t = via[t][0]
    frm = tables.table(fact)
    for t in order:  # parents after the tables they are reached from
        if t in wanted:
            child, mine, theirs = via[t]
            frm = frm.outerjoin(tables.table(t), tables.table(child).c[mine]
                                == tables.table(t).c[theirs])
    return frm


def _measure(tables: _Tables, fact: str, m: Measure):
    if m.fn == "count":
        return sa.func.count()
    col = tables.column(m.field)
    if m.fn == "count_distinct":
        return sa.func.count(sa.distinct(col))
    if m.fn == "sum":
        return sa.func.coalesce(sa.func.sum(col), 0)
    return getattr(sa.func, m.fn)(col)


def _condition(tables: _Tables, c: Cond):
    col = tables.column(c.field)
    v = c.value
    if c.op == "=":
        return col == v
    if c.op == "!=":
        return col != v
    if c.op == "<":
        return col < v
    if c.op == "<=":
        return col <= v
    if c.op == ">":
        return col > v
    if c.op == ">=":
        return col >= v
    if c.op == "in":
        return col.in_(list(v))
    if c.op == "between":
        lo, hi = v
        return col.between(lo, hi)
    if c.op == "like":
        return col.like(v)
    raise KeyError(f"unknown operator {c.op!r}")


def build(n8: dict[str, sa.Table], q: Query, dialect: str, *, grouped: bool = True,
          gateway: sa.Table = model.payment):
    """The SELECT of ``q`` over the mapped tables ``n8``: the dimensions then the
    measures, labelled ``d0.. m0..``; ``grouped=False`` gives the totals (no
    dimensions, no order, no limit)."""
    if q.fact not in FACTS:
        raise KeyError(f"{q.fact!r} is not a table a report can count")
    tables = _Tables(n8, gateway)
    frm = _from_clause(tables, q.fact, _tables_of(q))
    dims = [_grain(tables.column(d.field), d.grain, dialect).label(f"d{i}")
            for i, d in enumerate(q.dims)] if grouped else []
    measures = [_measure(tables, q.fact, m).label(f"m{i}") for i, m in enumerate(q.measures)]
    sel = sa.select(*dims, *measures).select_from(frm)
    conds = [_condition(tables, c) for c in q.conds]
    if conds:
        sel = sel.where(*conds)
    if not grouped:
        return sel
    if dims:
        sel = sel.group_by(*[d.element for d in dims])
    outputs = dims + measures
    order = [sa.desc(outputs[i]) if desc else sa.asc(outputs[i]) for i, desc in q.order]
    seen = {i for i, _ in q.order}
    order += [sa.asc(d) for i, d in enumerate(dims) if i not in seen]  # a stable order
    if order:
        sel = sel.order_by(*order)
    if q.limit is not None:
        sel = sel.limit(q.limit)
    return sel


def sql_shape(n8: dict[str, sa.Table], q: Query, dialect: sa.engine.Dialect) -> str:
    """The SQL of ``q`` as the database would get it, with placeholders where the
    values go (``report check`` prints it; no value is shown)."""
    stmt = build(n8, q, dialect.name)
    return str(stmt.compile(dialect=dialect, compile_kwargs={"render_postcompile": True}))


def _plain(v):
    """Database values as the report's: Decimal sums and averages as int, dates as date."""
    if v is None or isinstance(v, (int, str, date)):
        return v
    try:
        import decimal

        if isinstance(v, (decimal.Decimal, float)):
            return int(round(v))
    except (TypeError, ValueError):  # pragma: no cover
        pass
    return v


def run(tx: Tx, q: Query, totals: bool = False) -> tuple[list[tuple], tuple | None]:
    """The rows of ``q`` (and, with ``totals``, the one row of its measures over
    everything selected), as plain tuples.  With N8 in a database of its own the
    statement runs on N8's connection; one that reads ``gateway_payment`` reads it
    from a copy of the rows it needs, made beside N8 for the statement
    (:func:`_gateway_copy`)."""
    if not tx.split:
        return _run(tx.conn, tx.n8, q, totals)
    if "gateway_payment" not in _tables_of(q):
        return _run(tx.n8conn, tx.n8, q, totals)
    n8conn = tx.n8conn
    copy, drop = _gateway_copy(tx, n8conn, q)
    try:
        return _run(n8conn, tx.n8, q, totals, copy)
    finally:
        n8conn.execute(drop)


def _run(conn, n8, q: Query, totals: bool, gateway: sa.Table = model.payment):
    dialect = conn.dialect.name
    rows = [tuple(_plain(v) for v in r)
            for r in conn.execute(build(n8, q, dialect, gateway=gateway))]
    total = None
    if totals:
        r = conn.execute(build(n8, q, dialect, grouped=False, gateway=gateway)).one()
        total = tuple(_plain(v) for v in r)
    return rows, total


IN_CHUNK = 500  # keys per IN (...) list, and rows per insert


def _gateway_copy(tx: Tx, n8conn, q: Query) -> tuple[sa.Table, sa.Executable]:
    """A temporary table (:func:`copy_table`) on N8's connection holding the
    ``bg_payment`` rows (the receipt number and the columns ``q`` reads) of the
    payments ``q`` may count, and the statement that drops it, so that the one
    statement of :func:`build` runs there unchanged -- the same join, groups, order
    and limit as with one database.  The smaller side is read first: with a
    condition on ``gateway_payment`` the gateway's rows meeting it (a payment
    without one could not meet it either: the join is outer, the condition false on
    NULL); otherwise N8's payments meeting the report's other conditions, then their
    gateway rows, :data:`IN_CHUNK` receipts at a time."""
    p = model.payment
    fields = {d.field for d in q.dims} | {m.field for m in q.measures if m.field} \
        | {c.field for c in q.conds}
    physical = sorted({GATEWAY_PAYMENT[f.split(".", 1)[1]] for f in fields
                       if f.startswith("gateway_payment.")})
    copy = copy_table(n8conn.dialect.name, [
        sa.Column("receipt_no", p.c.receipt_no.type, primary_key=True),
        *[sa.Column(c, p.c[c].type) for c in physical]])
    create, drop = copy_ddl(copy, n8conn.dialect)
    n8conn.execute(create)
    try:
        cols = [p.c.receipt_no, *[p.c[c] for c in physical]]

        def put(rows) -> None:
            if rows:
                n8conn.execute(copy.insert(), [dict(zip(copy.c.keys(), r, strict=True))
                                               for r in rows])

        mine = [c for c in q.conds if c.field.startswith("gateway_payment.")]
        if mine:
            tables = _Tables(tx.n8)
            result = tx.conn.execute(
                sa.select(*cols).where(*[_condition(tables, c) for c in mine]))
            while chunk := result.fetchmany(IN_CHUNK):
                put(chunk)
        else:
            others = tuple(c for c in q.conds if not c.field.startswith("gateway_payment."))
            keys = Query(q.fact, (Dim("payment.pay_id"),), (), others)
            ids = [r[0] for r in n8conn.execute(build(tx.n8, keys, n8conn.dialect.name))
                   if r[0] is not None]
            for i in range(0, len(ids), IN_CHUNK):
                put(tx.conn.execute(sa.select(*cols).where(
                    p.c.receipt_no.in_(ids[i:i + IN_CHUNK]))).all())
    except BaseException:
        n8conn.execute(drop)
        raise
    return copy, drop


def copy_table(dialect_name: str, columns: list[sa.Column]) -> sa.Table:
    """The gateway's copy on N8's connection, a temporary table in the form N8's
    database takes: ``CREATE TEMPORARY TABLE`` (PostgreSQL, MariaDB/MySQL, SQLite);
    a ``#`` table (SQL Server); a private temporary table, ``ORA$PTT_`` named and
    without a primary key, which Oracle (18c and later) does not index; a declared
    global temporary table in ``SESSION``, without constraints (DB2, which needs a
    user temporary table space).  Each is seen by its connection only, and dropped
    when the report is done (:func:`copy_ddl`)."""
    name = f"bgtmp_gp_{secrets.token_hex(4)}"
    if dialect_name == "oracle" or is_db2(dialect_name):
        columns = [sa.Column(c.name, c.type) for c in columns]
    if dialect_name == "mssql":
        return sa.Table("#" + name, sa.MetaData(), *columns)
    if dialect_name == "oracle":
        return sa.Table("ora$ptt_" + name, sa.MetaData(), *columns,
                        prefixes=["PRIVATE TEMPORARY"], oracle_on_commit="PRESERVE DEFINITION")
    if is_db2(dialect_name):
        return sa.Table(name, sa.MetaData(), *columns,
                        schema=sa.sql.quoted_name("SESSION", quote=False))
    return sa.Table(name, sa.MetaData(), *columns, prefixes=["TEMPORARY"])


def copy_ddl(table: sa.Table, dialect: sa.Dialect) -> tuple:
    """(create, drop) of a :func:`copy_table` table, as statements to execute."""
    if is_db2(dialect.name):
        ddl = str(sa.schema.CreateTable(table).compile(dialect=dialect)).strip()
        body = ddl.removeprefix("CREATE TABLE ")
        if body == ddl:
            raise RuntimeError(f"not a CREATE TABLE: {ddl[:60]}")
        return (sa.text("DECLARE GLOBAL TEMPORARY TABLE " + body
                        + " ON COMMIT PRESERVE ROWS NOT LOGGED WITH REPLACE"),
                sa.schema.DropTable(table))
    return sa.schema.CreateTable(table), sa.schema.DropTable(table)
