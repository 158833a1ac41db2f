"""N8 in a database of its own: a query and a payment in fewer round trips.

With ``[n8.database]`` a payment is two transactions (:mod:`bankgate.store.n8outbox`):
the gateway's and N8's.  The generic path runs each of its reads and writes as a
statement of its own, on both sides.  Where the databases allow, this module
folds them, as :mod:`bankgate.store.pghot` does with N8 beside the gateway:

- the gateway on PostgreSQL (psycopg): the claim is one data-modifying CTE
  (the journal row, the date's ``bg_trade_day`` row ``FOR SHARE`` -- created
  for the date's first payment --, the cut-off row and the prepaid balance),
  and the post another (the payment, its allocations, the prepaid excess, the
  journal's answer when known, the outbox row with N8's operations and, every
  :data:`~bankgate.store.n8outbox.CLEAR_BATCH` payments, the deletion of the
  outbox rows N8 has committed).  On another gateway database the cut-off row
  and the prepaid balance are still read in one statement;
- N8 on MariaDB/MySQL (pymysql) or PostgreSQL (psycopg): the customer and its
  open bills in one statement, the bills locked for a payment (MariaDB: ``FOR
  UPDATE`` on the join locks the customer's row and its open bills; PostgreSQL
  cannot lock the nullable side of an outer join, so the bills are locked in a
  materialized CTE, oldest first); N8's payment, its items and the bills in one
  statement on PostgreSQL, three on MariaDB (the payment, one multi-row
  ``INSERT`` of the items, one ``UPDATE`` of the bills with a ``CASE`` per
  bill) sent as one text, one round trip, when N8's connections take multi
  statements (the store asks for it: :func:`run_script`).  Through mysqlclient
  that text is sent before the gateway's post and its answer read after it, so
  that N8 writes while the gateway posts (:meth:`N8Side.send_post`): a
  payment waits for the slower of the two, not for both.

Only with the reference units and codes (``mapping.plain``) and N8 written by
the direct adapter: the SQL text runs on the driver's own cursor, built once
(one text per number of bills on MariaDB), with plain dicts.  Any other case
keeps the generic path.  N8's operations are still recorded in the outbox
exactly as the generic path records them, and replayed by
:class:`bankgate.store.n8write.DirectWriter`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, datetime

import sqlalchemy as sa

from bankgate.store import model, n8outbox, pghot
from bankgate.store.dialects import MYSQL_DRIVERS, takes_scripts
from bankgate.store.n8write import encode

#: N8 drivers the folded statements run on (dialect name, driver): MariaDB's as
#: ``dialects.create_engine`` sets them up, under either back-end name, and psycopg
N8_DRIVERS = {(backend, driver) for backend in ("mysql", "mariadb") for driver in MYSQL_DRIVERS
              } | {("postgresql", "psycopg")}


def make(store, enabled: bool = True) -> SplitHot | None:
    """The store's folded statements with N8 apart, or None (the generic path)."""
    if not (enabled and store.split and store.writer.name == "direct" and store.mapping.plain):
        return None
    n8 = store.n8_engine.dialect
    if (n8.name, n8.driver) not in N8_DRIVERS:
        return None
    return SplitHot(store)


class PgGateway:
    """The gateway's claim and post in one statement each (PostgreSQL, psycopg)."""

    def __init__(self, engine: sa.Engine):
        prep = engine.dialect.identifier_preparer
        g = pghot.GatewaySql(prep)
        ob = pghot._Names(model.n8_outbox, prep)
        self.claim_sql = (
            f"WITH {', '.join(g.claim_ctes)} "
            f"SELECT claim.id, {g.day_closed}, {g.prepaid('%(customer_no)s')} FROM claim"
        )
        outbox = [
            f"o AS (INSERT INTO {ob} ({ob.journal_id}, {ob.receipt_no}, {ob.created_at},"
            f" {ob.ops}) VALUES (%(o_journal)s, %(o_receipt)s, %(o_at)s, %(o_ops)s)"
            f" RETURNING {ob.id} AS id)",
            # the ids through a sub-select, as pghot.ROWS's arrays: with their count
            # in sight the planner plans every post afresh (a third of PostgreSQL's
            # CPU per payment here), without it the prepared plan is kept
            f"d AS (DELETE FROM {ob} WHERE {ob.id} = ANY((SELECT %(o_done)s::bigint[])"
            "::bigint[]))",
        ]
        post = [g.payment, g.rows, g.allocations, g.excess, *outbox]
        end = " SELECT (SELECT id FROM p), (SELECT id FROM o)"
        self.post_sql = "WITH " + ", ".join(post) + end
        self.post_finish_sql = "WITH " + ", ".join([*post, g.finish]) + end

    def claim(self, conn: sa.Connection, params: dict) -> tuple[int, str | None, int]:
        """``params``: bank trade_date serial kind content now customer_no.  The
        journal id, what the date's row says (``pghot.GatewaySql.day_closed``: not
        None is closed, ``"?"`` unseen) and the prepaid balance.  A duplicate key
        raises ``sqlalchemy.exc.IntegrityError``."""
        row = pghot.run_raw(conn, self.claim_sql, params, pghot.int8_cursor)[0]
        return row[0], row[1], int(row[2] or 0)

    def post(self, conn: sa.Connection, payment: dict, rows: list[dict],
             journal: tuple[int, str, str] | None, outbox: dict) -> tuple[int, int]:
        """The payment's id and the outbox row's; ``outbox``: o_journal o_receipt
        o_at o_ops o_done."""
        params = dict(payment)
        params["bill_ids"] = [r["bill_id"] for r in rows]
        params["principals"] = [r["principal"] for r in rows]
        params["late_fees"] = [r["late_fee"] for r in rows]
        params.update(outbox)
        sql = self.post_sql
        if journal is not None:
            params["j_id"], params["j_outcome"], params["j_result"] = journal
            sql = self.post_finish_sql
        row = pghot.run_raw(conn, sql, params, pghot.int8_cursor)[0]
        return row[0], row[1]


class N8Side:
    """N8's reads and writes of a query and a payment, folded (MariaDB via
    pymysql or mysqlclient, PostgreSQL via psycopg)."""

    def __init__(self, n8: dict[str, sa.Table], engine: sa.Engine):
        prep = engine.dialect.identifier_preparer
        self.pg = engine.dialect.name == "postgresql"
        self.setup = pghot.int8_cursor if self.pg else None
        s = pghot.N8Sql(n8, prep)
        cust, bill = s.cust, s.bill
        self.customer_keys, self.bill_keys = cust.keys, bill.keys
        self._ncust = len(cust.keys)
        self._bill_id = self._ncust + bill.keys.index("bill_id")  # None there: no open bill
        pick = f"SELECT {cust.columns('c')}, {bill.columns('b')}"
        where = f" WHERE c.{cust.customer_no} = %(customer_no)s ORDER BY {s.oldest_first}"
        self.query_sql = (
            f"{pick} FROM {cust} AS c LEFT JOIN {bill} AS b"
            f" ON b.{bill.customer_no} = c.{cust.customer_no} AND {s.open_bill}{where}"
        )
        if self.pg:
            self.lock_sql = f"WITH {s.locked} {pick} FROM {cust} AS c LEFT JOIN locked AS b" \
                            f" ON true{where}"
            self.post_sql = ("WITH " + ", ".join([pghot.ROWS, s.payment, s.items, s.bills])
                             + " SELECT 1")
        else:
            self.lock_sql = self.query_sql + " FOR UPDATE"
        n8p, n8i = pghot._Names(n8["payment"], prep), pghot._Names(n8["payment_item"], prep)
        self._bill, self._n8i = bill, n8i
        self.payment_sql = (
            f"INSERT INTO {n8p} ({', '.join(getattr(n8p, c) for c in pghot._N8_PAYMENT_COLUMNS)})"
            f" VALUES ({', '.join(f'%(rec_{c})s' for c in pghot._N8_PAYMENT_COLUMNS)})"
        )
        self._items_sql: dict[int, str] = {}
        self._bills_sql: dict[int, str] = {}
        self._scripts: dict[int, str] = {}
        #: N8's writes sent ahead of the gateway's post (:meth:`send_post`): where the
        #: driver can (mysqlclient); the benchmark turns it off to time the other order
        #: in the same run (``bench/ledger.py --n8-serial``)
        self.send_ahead = engine.dialect.driver == "mysqldb"

    def items_sql(self, n: int) -> str:
        """The items of a payment of ``n`` bills: one multi-row INSERT."""
        sql = self._items_sql.get(n)
        if sql is None:
            i = self._n8i
            sql = (f"INSERT INTO {i} ({i.pay_id}, {i.bill_id}, {i.principal}, {i.late_fee})"
                   " VALUES " + ", ".join(f"(%(rec_pay_id)s, %(b{k})s, %(p{k})s, %(l{k})s)"
                                          for k in range(n)))
            sql = self._items_sql.setdefault(n, sql)
        return sql

    def bills_sql(self, n: int) -> str:
        """``n`` bills' paid amounts raised in one UPDATE, a CASE per column."""
        sql = self._bills_sql.get(n)
        if sql is None:
            b = self._bill

            def case(v: str) -> str:
                return (f"CASE {b.bill_id} "
                        + " ".join(f"WHEN %(b{k})s THEN %({v}{k})s" for k in range(n)) + " END")

            sql = (f"UPDATE {b} SET {b.paid_amount} = {b.paid_amount} + {case('p')},"
                   f" {b.late_fee_paid} = {b.late_fee_paid} + {case('l')}"
                   f" WHERE {b.bill_id} IN ({', '.join(f'%(b{k})s' for k in range(n))})")
            sql = self._bills_sql.setdefault(n, sql)
        return sql

    def customer_bills(self, conn: sa.Connection, customer_no: str,
                       lock: bool) -> tuple[dict | None, list[dict]]:
        """The customer (None: no such customer) and its open bills, oldest first;
        ``lock``: the bills locked for the payment."""
        rows = pghot.run_raw(conn, self.lock_sql if lock else self.query_sql,
                             {"customer_no": customer_no}, self.setup)
        if not rows:
            return None, []
        n, keys, key = self._ncust, self.bill_keys, self._bill_id
        cust = dict(zip(self.customer_keys, rows[0][:n], strict=True))
        return cust, [dict(zip(keys, r[n:], strict=True)) for r in rows if r[key] is not None]

    def post(self, conn: sa.Connection, pay: dict, items: list[dict]) -> None:
        """What :meth:`bankgate.store.n8write.DirectWriter.post` writes (not a
        replay): N8's payment ``pay``, its ``items``, the bills."""
        if self.pg:
            params = {"rec_" + c: pay[c] for c in pghot._N8_PAYMENT_COLUMNS}
            params["bill_ids"] = [r["bill_id"] for r in items]
            params["principals"] = [r["principal"] for r in items]
            params["late_fees"] = [r["late_fee"] for r in items]
            pghot.run_raw(conn, self.post_sql, params, self.setup, rows=False)
            return
        params = self._script_params(pay, items)
        if not items:
            pghot.run_raw(conn, self.payment_sql, params, None, rows=False)
            return
        n = len(items)
        if takes_scripts(conn):  # the three in one text: one round trip
            run_script(conn, self.post_script(n), params)
            return
        pghot.run_raw(conn, self.payment_sql, params, None, rows=False)
        pghot.run_raw(conn, self.items_sql(n), params, None, rows=False)
        pghot.run_raw(conn, self.bills_sql(n), params, None, rows=False)

    def send_post(self, conn: sa.Connection, pay: dict,
                  items: list[dict]) -> Callable[[bool], None] | None:
        """MariaDB through mysqlclient: send what :meth:`post` writes, as one text,
        without waiting for N8's answer, so that N8 writes while the gateway
        posts; the function that reads the answer (raising N8's error as
        :meth:`post` would; ``quiet``: read it and raise nothing, before a
        rollback).  None where the driver cannot: :meth:`post` then."""
        if not (items and self.send_ahead and takes_scripts(conn)):
            return None
        params = self._script_params(pay, items)
        sql = self.post_script(len(items))
        cur = pghot.driver_cursor(conn)
        raw = conn.connection.driver_connection
        try:
            raw.send_query(cur.mogrify(sql, params).encode(raw.encoding))
        except conn.dialect.dbapi.Error as e:
            raise _driver_error(conn, cur, sql, params, e) from e

        def read(quiet: bool = False) -> None:
            try:
                raw.read_query_result()
                while raw.next_result() == 0:  # (the statements return no rows)
                    pass
            except conn.dialect.dbapi.Error as e:
                err = _driver_error(conn, cur, sql, params, e)
                if not quiet:
                    raise err from e
            except BaseException:
                # the answer not read to its end: the connection's next statement would
                # read it, in the same transaction; it is not used again
                conn.invalidate()
                raise
        return read

    @staticmethod
    def _script_params(pay: dict, items: list[dict]) -> dict:
        """MariaDB: the parameters of N8's payment ``pay`` and its ``items`` (k: b{k}
        the bill, p{k} the principal, l{k} the late fee)."""
        params = {"rec_" + c: pay[c] for c in pghot._N8_PAYMENT_COLUMNS}
        for k, r in enumerate(items):
            params[f"b{k}"], params[f"p{k}"], params[f"l{k}"] = (
                r["bill_id"], r["principal"], r["late_fee"])
        return params

    def post_script(self, n: int) -> str:
        """MariaDB: N8's payment, its ``n`` items and the bills, one text of three
        statements (connections with multi statements, :func:`run_script`)."""
        sql = self._scripts.get(n)
        if sql is None:
            sql = self._scripts.setdefault(
                n, ";\n".join([self.payment_sql, self.items_sql(n), self.bills_sql(n)]))
        return sql


def run_script(conn: sa.Connection, sql: str, params: dict) -> None:
    """Run a text of several statements (MariaDB, multi statements; parameters bound
    on the client, as for one) on the connection's driver cursor, reading every
    statement's result: the first statement that fails raises as
    :func:`bankgate.store.pghot.run_raw` does, and the ones after it do not run."""
    pghot.run_raw(conn, sql, params, None, rows=False)
    cur = conn.connection.info["bankgate_pg_cursor"]
    try:
        while cur.nextset():
            pass
    except conn.dialect.dbapi.Error as e:
        raise _driver_error(conn, cur, sql, params, e) from e


def _driver_error(conn: sa.Connection, cur, sql: str, params: dict,
                  e: Exception) -> sa.exc.DBAPIError:
    """The driver's error ``e`` as SQLAlchemy's, as :func:`bankgate.store.pghot.run_raw`
    gives it: a dead connection is invalidated first (the store retries on a fresh one)."""
    dialect = conn.dialect
    gone = dialect.is_disconnect(e, conn.connection, cur)
    if gone:
        conn.connection.info.pop("bankgate_pg_cursor", None)
        conn.invalidate(e)
    return sa.exc.DBAPIError.instance(sql, params, e, dialect.dbapi.Error,
                                      connection_invalidated=gone, dialect=dialect)


class SplitHot:
    """The folded statements of one store whose N8 is a database of its own, and
    the steps of :class:`bankgate.store.tx.Tx` that use them."""

    def __init__(self, store):
        self.store = store
        self.gw = PgGateway(store.engine) if pghot.usable(store.engine) else None
        self.n8 = N8Side(store.n8, store.n8_engine)
        # any gateway database: the date's cut-off row and the prepaid balance at once
        c, pp = model.cutoff, model.prepaid
        closed = sa.select(c.c.bank).where(c.c.bank == sa.bindparam("k_bank"),
                                           c.c.trade_date == sa.bindparam("k_date"))
        balance = sa.select(pp.c.balance).where(pp.c.customer_no == sa.bindparam("k_cust"))
        self.context_st = sa.select(closed.scalar_subquery().label("bg_closed"),
                                    balance.scalar_subquery().label("bg_prepaid"))

    def context(self, conn: sa.Connection, customer_no: str, bank: str,
                trade_date: date) -> tuple[bool, int]:
        """(is the bank's date closed, the customer's prepaid balance): one statement."""
        row = conn.execute(self.context_st, {"k_bank": bank, "k_date": trade_date,
                                             "k_cust": customer_no}).first()
        return row[0] is not None, int(row[1] or 0)

    # -- Tx's steps ----------------------------------------------------------------------

    def query(self, tx, customer_no: str, bank: str,
              trade_date: date) -> tuple[dict | None, list[dict]]:
        cust, bills = self.n8.customer_bills(tx.n8conn, customer_no, lock=False)
        if cust is not None:
            cust["bg_closed"], cust["bg_prepaid"] = self.context(tx.conn, customer_no, bank,
                                                                 trade_date)
        return cust, bills

    def claim(self, tx, bank: str, trade_date: date, serial: str, kind: str, content: str,
              now: datetime, customer_no: str) -> tuple[int, dict | None, list[dict]]:
        """As :meth:`bankgate.store.tx.Tx.claim_payment`; a duplicate key raises
        ``sqlalchemy.exc.IntegrityError``."""
        if self.gw is not None:
            jid, day, prepaid = self.gw.claim(tx.conn, {
                "bank": bank, "trade_date": trade_date, "serial": serial, "kind": kind,
                "content": content, "now": now, "customer_no": customer_no})
            tx.journal_id = jid
            # "?": the date's row was committed after the claim's snapshot was taken
            # (another first payment of the date): lock it in a statement of its own
            closed = tx.lock_day(bank, trade_date) if day == "?" else day is not None
        else:
            jid = tx.claim(bank, trade_date, serial, kind, content, now)
            # the date's row before the bills: a payment never waits for a cut-off holding bills
            closed = tx.lock_day(bank, trade_date) if tx.lock else False
            was, prepaid = self.context(tx.conn, customer_no, bank, trade_date)
            closed = closed or was
        cust, bills = self.n8.customer_bills(tx.n8conn, customer_no, lock=tx.n8lock)
        if cust is None:
            return jid, None, []
        cust["bg_closed"], cust["bg_prepaid"] = closed, prepaid
        return jid, cust, bills

    def post(self, tx, payment: dict, rows: list[dict], n8: dict,
             journal: tuple[int, str, dict] | None) -> int:
        """As :meth:`bankgate.store.tx.Tx.post_payment`."""
        pay = {c: n8["now" if c == "created_at" else c] for c in pghot._N8_PAYMENT_COLUMNS}
        items = [{"bill_id": r["bill_id"], "principal": r["principal"],
                  "late_fee": r["late_fee"]} for r in rows]
        tx.receipt_no = pay["pay_id"]
        tx.n8_ops.append(("post", {"pay": pay, "items": items}))
        # N8's writes sent first where the driver can, and their answer read after
        # the gateway's: the two databases work at the same time
        pending = self.n8.send_post(tx.n8conn, pay, items)
        try:
            pid = self._post_gateway(tx, payment, rows, journal)
        except BaseException:
            if pending is not None:
                pending(True)  # N8's answer read: its connection is fit to roll back
            raise
        if pending is not None:
            pending(False)
        else:
            self.n8.post(tx.n8conn, pay, items)
        if self.gw is None and journal is not None:
            tx.journal_finish(journal[0], journal[1], journal[2], pid)
        return pid

    def _post_gateway(self, tx, payment: dict, rows: list[dict],
                      journal: tuple[int, str, dict] | None) -> int:
        """The gateway's side of :meth:`post`: the payment, its allocations and the
        prepaid excess; on PostgreSQL the journal's answer and the outbox row too."""
        if self.gw is not None:
            done = n8outbox.take_done(self.store)
            if journal is not None:
                journal = (journal[0], journal[1], json.dumps(journal[2], sort_keys=True))
            try:
                pid, oid = self.gw.post(tx.conn, payment, rows, journal, {
                    "o_journal": tx.journal_id, "o_receipt": tx.receipt_no,
                    "o_at": n8outbox.utcnow(), "o_ops": encode(tx.n8_ops), "o_done": done})
            except BaseException:
                self.store.outbox_done.extend(done)  # not deleted: a later batch does it
                raise
            # n8outbox.run_split: the outbox row is written (with these operations)
            tx.outbox_row = (oid, len(tx.n8_ops), done)
        else:
            pid = tx.payment_insert(**payment)
            tx.allocations_insert(pid, rows)
            if payment["prepaid_in"]:
                tx.prepaid_add(payment["customer_no"], payment["prepaid_in"],
                               payment["created_at"])
        return pid
