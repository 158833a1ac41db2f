"""PostgreSQL's hot path: a query in one statement, a payment in two.

On every other database the ledger's transactions are a handful of small
statements built once with bind parameters (:class:`bankgate.store.tx.HotStatements`)
and run through SQLAlchemy.  On PostgreSQL (psycopg 3) the statements a query or
a payment issues are folded together and run straight on the driver's cursor,
inside the same transaction as everything else the :class:`~bankgate.store.tx.Tx`
does (SQLAlchemy and this module share one connection):

- a query: the customer, the closed flag of the bank's date, the prepaid balance
  and the open bills, oldest first, in one ``SELECT``;
- a payment's first statement claims the journal key, reads its trade date's
  ``bg_trade_day`` row ``FOR SHARE`` (inserting it for the date's first payment),
  and reads the customer and its open bills, locked ``FOR UPDATE`` in
  ``period, bill_id`` order (as the generic path locks them) -- one
  data-modifying CTE;
- its second writes the payment, its allocations, the bills, the prepaid
  excess, N8's payment and its items (and the journal's answer when the ledger
  knows it already) -- another, after the ledger has allocated the money.

Round trips: a query is one (reads run in autocommit); a payment is four --
BEGIN, the two statements, COMMIT.  psycopg's pipeline mode would send BEGIN
with the first statement and COMMIT with the second, but on the benchmark's
two cores it cost more CPU (about 0.1 ms a payment) than the two round trips
saved, and posted fewer payments a second (``bench/README.md``).

The SQL text is generated here, once per store, from the N8 mapping and the
gateway's tables (names quoted as SQLAlchemy quotes them), never hard-coded;
psycopg prepares it on the server after a few uses.  Errors come back as
SQLAlchemy's exceptions (a duplicate key is an ``IntegrityError``, a lost
connection invalidates the connection), so :meth:`bankgate.store.db.Store.run_sync`
retries and rolls back exactly as it does for everything else.
"""

from __future__ import annotations

from datetime import date

import sqlalchemy as sa

from bankgate.store import model


class _Names:
    """A table's names as they go into SQL text: ``str()`` is the table (with
    its schema), attributes are its columns by logical key, each quoted as
    SQLAlchemy quotes them for this dialect."""

    def __init__(self, table: sa.Table, preparer):
        self._table = preparer.format_table(table)
        self._columns = {c.key: preparer.quote(c.name) for c in table.c}
        self.keys = [c.key for c in table.c]

    def __str__(self) -> str:
        return self._table

    def __getattr__(self, key: str) -> str:
        try:
            return self.__dict__["_columns"][key]
        except KeyError:
            raise AttributeError(key) from None

    def columns(self, alias: str) -> str:
        """Every column, qualified by ``alias``, in table order."""
        return ", ".join(f"{alias}.{self._columns[k]}" for k in self.keys)


_PAYMENT_COLUMNS = ("bank", "trade_date", "serial", "trade_time", "customer_no", "amount",
                    "principal", "late_fee", "prepaid_in", "channel", "branch", "teller",
                    "pan_masked", "receipt_no", "status", "source", "run_id", "created_at",
                    "expires_at")
_N8_PAYMENT_COLUMNS = ("pay_id", "customer_no", "amount", "pay_date", "bank_code",
                       "bank_serial", "channel", "status", "created_at")


def usable(engine: sa.Engine) -> bool:
    """The hot path needs PostgreSQL through psycopg 3 (its cursor, its array
    adaptation); any other driver keeps the generic path."""
    return engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"


# One row per allocation, in the ledger's order (x.n), feeding the allocations,
# the bills and N8's items (parameters bill_ids, principals, late_fees).  The
# arrays come through a sub-select so that the planner cannot count them: with a
# count it plans every execution afresh (its plan for a known count always looks
# cheaper than the prepared one), without it the prepared plan is kept.
ROWS = (
    "x AS (SELECT * FROM unnest((SELECT %(bill_ids)s::varchar[]),"
    " (SELECT %(principals)s::bigint[]), (SELECT %(late_fees)s::bigint[]))"
    " WITH ORDINALITY AS x(bill_id, principal, late_fee, n))"
)


class GatewaySql:
    """The gateway's side of the folded statements, as SQL text pieces: what
    :class:`PgHotPath` (N8 in the same database) and
    :class:`bankgate.store.splithot.PgGateway` (N8 in a database of its own)
    assemble their statements from."""

    def __init__(self, prep):
        self.j = j = _Names(model.journal, prep)
        self.cut = cut = _Names(model.cutoff, prep)
        self.day = day = _Names(model.trade_day, prep)
        self.pp = pp = _Names(model.prepaid, prep)
        self.pay = pay = _Names(model.payment, prep)
        al = _Names(model.allocation, prep)
        # is the bank's date closed (its cut-off row's bank, or NULL)
        self.closed = (f"(SELECT k.{cut.bank} FROM {cut} AS k WHERE k.{cut.bank} = %(bank)s"
                       f" AND k.{cut.trade_date} = %(trade_date)s)")
        # The claim's CTEs (claim: the journal row's id): a duplicate key fails the
        # whole statement (and the transaction), as the generic claim does.  The
        # date's bg_trade_day row is read FOR SHARE (Tx.lock_day): a locking read
        # returns the row as last committed, after waiting for a cut-off closing it,
        # although the statement's snapshot is older.  The first payment of a date
        # inserts it (open, and its own until it commits).
        self.claim_ctes = [
            f"claim AS ("
            f"INSERT INTO {j} ({j.bank}, {j.trade_date}, {j.serial}, {j.kind}, {j.content},"
            f" {j.outcome}, {j.created_at})"
            f" VALUES (%(bank)s, %(trade_date)s, %(serial)s, %(kind)s, %(content)s,"
            f" 'PROCESSING', %(now)s) RETURNING {j.id} AS id)",
            f"new_day AS (INSERT INTO {day} ({day.bank}, {day.trade_date}, {day.closed})"
            f" VALUES (%(bank)s, %(trade_date)s, false)"
            f" ON CONFLICT ({day.bank}, {day.trade_date}) DO NOTHING RETURNING {day.closed})",
            f"tday AS MATERIALIZED (SELECT t.{day.closed} AS closed FROM {day} AS t"
            f" WHERE t.{day.bank} = %(bank)s AND t.{day.trade_date} = %(trade_date)s"
            f" FOR SHARE)",
        ]
        # what the claim says of the date: the cut-off's bank (closed), 'closed',
        # NULL (open), or '?' when the row was committed by another transaction
        # after this statement's snapshot (not a bank name: bank names are letters,
        # digits, "_", "." and "-"), which Tx.claim_payment then locks in a
        # statement of its own
        self.day_closed = (
            f"COALESCE({self.closed}, (SELECT CASE WHEN bool_or(d.closed) THEN 'closed'"
            f" WHEN count(*) = 0 AND NOT EXISTS (SELECT FROM new_day) THEN '?' END"
            f" FROM tday AS d))"
        )
        self.rows = ROWS
        self.payment = (
            f"p AS (INSERT INTO {pay} ({', '.join(getattr(pay, c) for c in _PAYMENT_COLUMNS)})"
            f" VALUES ({', '.join(f'%({c})s' for c in _PAYMENT_COLUMNS)})"
            f" RETURNING {pay.id} AS id)"
        )
        self.allocations = (
            f"a AS (INSERT INTO {al} ({al.payment_id}, {al.bill_id}, {al.principal},"
            f" {al.late_fee}) SELECT p.id, x.bill_id, x.principal, x.late_fee FROM p, x"
            f" ORDER BY x.n)"
        )
        # the excess onto the prepaid balance (the generic path's update, or
        # insert when the customer has none)
        self.excess = (
            f"e AS (INSERT INTO {pp} AS v ({pp.customer_no}, {pp.balance}, {pp.updated_at})"
            f" SELECT %(customer_no)s, %(prepaid_in)s, %(created_at)s WHERE %(prepaid_in)s > 0"
            f" ON CONFLICT ({pp.customer_no}) DO UPDATE SET {pp.balance} = v.{pp.balance} +"
            f" EXCLUDED.{pp.balance}, {pp.updated_at} = EXCLUDED.{pp.updated_at})"
        )
        # ... and the journal's answer, when the ledger knows it before the post
        self.finish = (f"f AS (UPDATE {j} SET {j.outcome} = %(j_outcome)s,"
                       f" {j.result} = %(j_result)s,"
                       f" {j.payment_id} = (SELECT id FROM p) WHERE {j.id} = %(j_id)s)")
        self.finish_sql = (
            f"UPDATE {j} SET {j.outcome} = %(j_outcome)s, {j.result} = %(j_result)s,"
            f" {j.payment_id} = %(j_pid)s WHERE {j.id} = %(j_id)s"
        )

    def prepaid(self, customer_no: str) -> str:
        """The prepaid balance of ``customer_no`` (an SQL expression)."""
        pp = self.pp
        return (f"(SELECT v.{pp.balance} FROM {pp} AS v"
                f" WHERE v.{pp.customer_no} = {customer_no})")


class N8Sql:
    """N8's side of the folded statements, as SQL text pieces (PostgreSQL; the
    customer's reads in any SQL)."""

    def __init__(self, n8: dict[str, sa.Table], prep):
        self.cust = _Names(n8["customer"], prep)
        self.bill = bill = _Names(n8["bill"], prep)
        n8p = _Names(n8["payment"], prep)
        n8i = _Names(n8["payment_item"], prep)
        self.open_bill = f"b.{bill.paid_amount} < b.{bill.amount}"
        self.oldest_first = f"b.{bill.period}, b.{bill.bill_id}"
        # the customer's open bills, locked in the generic path's order, oldest first
        self.locked = (
            f"locked AS MATERIALIZED (SELECT {bill.columns('b')} FROM {bill} AS b"
            f" WHERE b.{bill.customer_no} = %(customer_no)s AND {self.open_bill}"
            f" ORDER BY {self.oldest_first} FOR UPDATE)"
        )
        self.bills = (
            f"u AS (UPDATE {bill} AS b SET {bill.paid_amount} = b.{bill.paid_amount} +"
            f" x.principal, {bill.late_fee_paid} = b.{bill.late_fee_paid} + x.late_fee"
            f" FROM x WHERE b.{bill.bill_id} = x.bill_id)"
        )
        self.payment = (
            f"n AS (INSERT INTO {n8p} ({', '.join(getattr(n8p, c) for c in _N8_PAYMENT_COLUMNS)})"
            f" VALUES ({', '.join(f'%(rec_{c})s' for c in _N8_PAYMENT_COLUMNS)}))"
        )
        self.items = (
            f"i AS (INSERT INTO {n8i} ({n8i.pay_id}, {n8i.bill_id}, {n8i.principal},"
            f" {n8i.late_fee}) SELECT %(rec_pay_id)s, x.bill_id, x.principal, x.late_fee FROM x"
            f" ORDER BY x.n)"
        )


def run_raw(conn: sa.Connection, sql: str, params: dict, setup=None,
            rows: bool = True) -> list[tuple]:
    """Execute ``sql`` (``%(name)s`` parameters) on the connection's own driver
    cursor, in its transaction (``setup(cursor)`` once per cursor); a driver
    error comes back as SQLAlchemy's (and a dead connection is invalidated, so
    the store retries on a fresh one)."""
    dbapi_conn = conn.connection
    cur = driver_cursor(conn, setup)
    dialect = conn.dialect
    try:
        cur.execute(sql, params)
        return cur.fetchall() if rows else []  # (cursor.description costs more)
    except dialect.dbapi.Error as e:
        gone = dialect.is_disconnect(e, dbapi_conn, cur)
        if gone:
            dbapi_conn.info.pop("bankgate_pg_cursor", None)
            conn.invalidate(e)
        raise sa.exc.DBAPIError.instance(
            sql, params, e, dialect.dbapi.Error, connection_invalidated=gone,
            dialect=dialect) from e


def driver_cursor(conn: sa.Connection, setup=None):
    """The connection's own driver cursor, kept with the connection (``setup(cursor)``
    once, when it is made)."""
    dbapi_conn = conn.connection
    cur = dbapi_conn.info.get("bankgate_pg_cursor")
    if cur is None or getattr(cur, "closed", False) or getattr(cur, "connection", 1) is None:
        cur = dbapi_conn.info["bankgate_pg_cursor"] = dbapi_conn.driver_connection.cursor()
        if setup is not None:
            setup(cur)
    return cur


def int8_cursor(cur) -> None:
    """Every integer sent as bigint: psycopg would pick int2/int4/int8 by value,
    and each combination of types is a statement the server prepares afresh."""
    from psycopg.types.numeric import Int8Dumper  # the postgres extra: only here

    cur.adapters.register_dumper(int, Int8Dumper)


class PgHotPath:
    """The folded statements of one store (one N8 mapping), and how to run them."""

    def __init__(self, store):
        prep = store.engine.dialect.identifier_preparer
        g = GatewaySql(prep)
        n = N8Sql(store.n8, prep)
        cust, bill = n.cust, n.bill
        self.customer_keys = cust.keys
        self.bill_keys = bill.keys
        self._customer_no = cust.keys.index("customer_no")  # None there: no such customer
        self._bill_id = bill.keys.index("bill_id")  # None there: no open bill

        # the customer's row, then what a transaction needs beside it: is the
        # bank's date closed, the prepaid balance
        def context(closed: str) -> str:
            return f"{cust.columns('c')}, {closed}, {g.prepaid(f'c.{cust.customer_no}')}"

        self.query_sql = (
            f"SELECT {context(g.closed)}, {bill.columns('b')}"
            f" FROM {cust} AS c LEFT JOIN {bill} AS b"
            f" ON b.{bill.customer_no} = c.{cust.customer_no} AND {n.open_bill}"
            f" WHERE c.{cust.customer_no} = %(customer_no)s"
            f" ORDER BY {n.oldest_first}"
        )

        # The claim (GatewaySql.claim_ctes), with the customer's open bills locked
        # in the CTE in the generic path's order, oldest first.
        self.claim_sql = (
            f"WITH {', '.join(g.claim_ctes)}, {n.locked} "
            f"SELECT claim.id, {context(g.day_closed)}, {bill.columns('b')}"
            f" FROM claim LEFT JOIN {cust} AS c ON c.{cust.customer_no} = %(customer_no)s"
            f" LEFT JOIN locked AS b ON c.{cust.customer_no} IS NOT NULL"
            f" ORDER BY {n.oldest_first}"
        )

        post = [g.payment, g.rows, g.allocations, n.bills, g.excess, n.payment, n.items]
        self.post_sql = "WITH " + ", ".join(post) + " SELECT id FROM p"
        self.post_finish_sql = "WITH " + ", ".join([*post, g.finish]) + " SELECT id FROM p"
        self.finish_sql = g.finish_sql

    # -- running ------------------------------------------------------------------

    def _run(self, conn: sa.Connection, sql: str, params: dict,
             rows: bool = True) -> list[tuple]:
        return run_raw(conn, sql, params, int8_cursor, rows)

    def _context(self, row: tuple, at: int) -> dict | None:
        """The customer dict (``bg_closed``, ``bg_prepaid`` beside its columns)
        from ``row`` starting at ``at``; None when there is no such customer."""
        keys = self.customer_keys
        if row[at + self._customer_no] is None:
            return None
        cust = dict(zip(keys, row[at:at + len(keys)], strict=True))
        cust["bg_closed"] = row[at + len(keys)] is not None
        cust["bg_prepaid"] = int(row[at + len(keys) + 1] or 0)
        return cust

    def _bills(self, rows: list[tuple], at: int) -> list[dict]:
        keys, key = self.bill_keys, at + self._bill_id
        return [dict(zip(keys, r[at:], strict=True)) for r in rows if r[key] is not None]

    # -- the statements ------------------------------------------------------------

    def query(self, conn: sa.Connection, customer_no: str, bank: str,
              trade_date: date) -> tuple[dict | None, list[dict]]:
        rows = self._run(conn, self.query_sql, {
            "customer_no": customer_no, "bank": bank, "trade_date": trade_date})
        if not rows:
            return None, []
        at = len(self.customer_keys) + 2
        return self._context(rows[0], 0), self._bills(rows, at)

    def claim(self, conn: sa.Connection, params: dict) -> tuple[int, dict | None, list[dict]]:
        """``params``: bank trade_date serial kind content now customer_no.
        A duplicate key raises ``sqlalchemy.exc.IntegrityError``.  The customer's
        ``bg_closed`` is None when the date's row was not seen (see ``claim_sql``)."""
        rows = self._run(conn, self.claim_sql, params)
        cust = self._context(rows[0], 1)
        if cust is not None and rows[0][1 + len(self.customer_keys)] == "?":
            cust["bg_closed"] = None
        at = 1 + len(self.customer_keys) + 2
        return rows[0][0], cust, self._bills(rows, at) if cust is not None else []

    @staticmethod
    def post_params(payment: dict, rows: list[dict], n8: dict,
                    journal: tuple[int, str, str] | None = None) -> dict:
        """The parameters of ``post_sql`` (``post_finish_sql`` with ``journal`` =
        (journal id, outcome, result as JSON text)); the arguments as
        :meth:`bankgate.store.tx.Tx.post_payment` takes them."""
        params = dict(payment)
        params["bill_ids"] = [r["bill_id"] for r in rows]
        params["principals"] = [r["principal"] for r in rows]
        params["late_fees"] = [r["late_fee"] for r in rows]
        for c in _N8_PAYMENT_COLUMNS:  # n8: the arguments of Tx.n8_payment_insert
            params["rec_" + c] = n8["now" if c == "created_at" else c]
        if journal is not None:
            params["j_id"], params["j_outcome"], params["j_result"] = journal
        return params

    def post(self, conn: sa.Connection, payment: dict, rows: list[dict], n8: dict,
             journal: tuple[int, str, str] | None) -> int:
        sql = self.post_sql if journal is None else self.post_finish_sql
        return self._run(conn, sql, self.post_params(payment, rows, n8, journal))[0][0]

    def finish(self, conn: sa.Connection, journal_id: int, outcome: str, result: str,
               payment_id: int | None) -> None:
        self._run(conn, self.finish_sql, {"j_id": journal_id, "j_outcome": outcome,
                                          "j_result": result, "j_pid": payment_id},
                  rows=False)
