"""Ledger throughput: payments/s and queries/s, against a bare-driver baseline.

Measures :class:`bankgate.domain.ledger.Ledger` (``pay`` and ``query``, bank ``bench``
under the ``any`` policy) from N Python threads on distinct customers, then
the *same* SQL -- statement for statement what the ledger issues -- written by
hand on the raw DBAPI driver (psycopg or sqlite3, no SQLAlchemy) with the same
thread count, and prints ledger/baseline ratios.  On PostgreSQL the ledger takes
the store's hot path (``bankgate/store/pghot.py``: a query in one statement, a
payment in two) and the baseline runs those very statements (the text comes from
the store); ``--generic`` also times the generic path every other database takes
(a store with ``hot_path=False``, and its statements by hand) in the same run.
``--profile`` adds a single-threaded cProfile of a short ledger run (top 25 by
cumulative time, and own time summed by layer); ``--lean`` (PostgreSQL) also
times the hot path's statements pipelined (psycopg pipeline mode: BEGIN with the
first, COMMIT with the second -- two round trips) and a query reading only what
the answer shows -- the headroom left.  ``--rounds N`` runs every phase N times in
turn and compares the medians (on a shared machine a phase's rate comes and goes).
On Linux each phase also gets the machine's CPU per operation, split between this
process, the PostgreSQL and MariaDB servers and the rest (``/proc``; printed before
the summary).  ``--hooks`` builds the ledger as the service does
(``bankgate.app.wiring`` on the embedded default configuration, bank ``bench``
invoicing like ``demo-fixed``): the invoice-number and supply-status hooks run
inside every payment, as they do in production; without it the ledger has no hooks.

    .venv/bin/python bench/ledger.py                       # SQLite file under /tmp
    .venv/bin/python bench/ledger.py --threads 4 --seconds 10 \\
        --url postgresql+psycopg://postgres@127.0.0.1:5432/bankgate_bench --profile
    .venv/bin/python bench/ledger.py --threads 4 --seconds 10 --generic --lean --rounds 3 \\
        --url postgresql+psycopg://postgres@127.0.0.1:5432/bankgate_bench --pool 20000

A PostgreSQL database named in ``--url`` is created when missing; the demo
data is seeded (``bankgate.devtools.demo``) when it holds fewer than ``--customers``.
Targets, for the record (not asserted): >= 1,500 payments/s and >= 4,000
queries/s on PostgreSQL, ledger/baseline >= 0.6.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import json
import os
import pstats
import random
import sqlite3
import statistics
import sys
import threading
import time
from collections import Counter
from datetime import date, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import sqlalchemy as sa  # noqa: E402

from bankgate.canon.messages import (  # noqa: E402
    Origin,
    Outcome,
    PaymentRequest,
    QueryRequest,
    fingerprint,
)
from bankgate.devtools import demo  # noqa: E402
from bankgate.domain.ledger import BankPolicy, Ledger, _Bill, allocate, late_fee  # noqa: E402
from bankgate.store import n8outbox  # noqa: E402
from bankgate.store.db import Store  # noqa: E402
from bankgate.store.n8 import N8Mapping  # noqa: E402

DEFAULT_URL = "sqlite:////tmp/bankgate-bench.db"
BANK = BankPolicy("bench", "999999", policy="any")
#: the width of a phase's label in the printed tables
LABEL = 44
TARGETS = {"payments": 1500, "queries": 4000, "ratio": 0.6}
CPUS = os.cpu_count() or 1


# -- setup ------------------------------------------------------------------------------


def ensure_database(url: str) -> None:
    """Create the PostgreSQL or MariaDB database of ``url`` when it does not exist."""
    u = sa.engine.make_url(url)
    if u.get_backend_name() == "mysql" and u.database:
        admin = sa.create_engine(u.set(database="mysql"))
        try:
            with admin.begin() as c:
                c.exec_driver_sql(f"CREATE DATABASE IF NOT EXISTS `{u.database}`")
        finally:
            admin.dispose()
        return
    if u.get_backend_name() != "postgresql" or not u.database:
        return
    admin = sa.create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            there = c.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"),
                              {"d": u.database}).first()
            if there is None:
                c.exec_driver_sql(f'CREATE DATABASE "{u.database}"')
                print(f"created database {u.database}")
    finally:
        admin.dispose()


def prepare(url: str, customers: int, threads: int, reseed: bool = False,
            n8_url: str | None = None) -> tuple[Store, int]:
    """The store on ``url`` (N8 in ``n8_url`` when given: two databases), N8 seeded."""
    ensure_database(url)
    if n8_url:
        ensure_database(n8_url)
    store = Store(url, N8Mapping(), threads=threads, n8_url=n8_url)
    store.create_gateway_tables()
    if not store.n8_exists():
        store.create_n8_tables()
    have = store.customer_count()
    if have < customers or reseed:
        print(f"seeding {customers:,} demo customers (the database holds {have:,}) ...",
              flush=True)
        last = [0.0]

        def progress(done, total):
            if time.monotonic() - last[0] > 5 or done == total:
                last[0] = time.monotonic()
                print(f"  {done:,}/{total:,}", flush=True)

        stats = demo.seed(store, customers, replace=True, progress=progress)
        print(f"  seeded in {stats['seconds']} s ({stats['method']}): "
              f"{stats['customers']:,} customers, {stats['bills']:,} bills", flush=True)
        have = customers
    return store, have


def sample(store: Store, population: int, k: int, rng: random.Random,
           taken: set[str]) -> list[tuple[str, int]]:
    """Up to ``k`` random active demo customers with principal outstanding, none of
    ``taken`` (which grows by them): [(customer_no, outstanding principal)]."""
    c, b = store.n8["customer"], store.n8["bill"]
    order = rng.sample(range(population), population)
    out: list[tuple[str, int]] = []
    with store.n8_engine.connect() as conn:
        for at in range(0, population, 2000):
            if len(out) >= k:
                break
            picks = [str(demo.FIRST_CUSTOMER + i) for i in order[at:at + 2000]]
            picks = [p for p in picks if p not in taken]
            if not picks:
                continue
            q = (
                sa.select(b.c.customer_no, sa.func.sum(b.c.amount - b.c.paid_amount))
                .join(c, c.c.customer_no == b.c.customer_no)
                .where(b.c.customer_no.in_(picks), b.c.paid_amount < b.c.amount,
                       c.c.status == "A")
                .group_by(b.c.customer_no)
            )
            got = [(r[0], int(r[1])) for r in conn.execute(q)]
            for no, due in got:
                if len(out) < k:
                    taken.add(no)
                    out.append((no, due))
    rng.shuffle(out)
    return out


# -- the baseline: the ledger's statements, by hand, on the raw driver ------------------

_SQL = {
    "claim": "INSERT INTO bg_journal (bank, trade_date, serial, kind, content, outcome, "
             "created_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
    # the customer with the bank's closed flag and the prepaid balance, as the
    # store's customer_context issues it
    "customer": "SELECT customer_no, name, address, customer_class, district, heated_area, "
                "status, large_customer, withholding_bank, withholding_account, "
                "(SELECT bg_cutoff.bank FROM bg_cutoff WHERE bg_cutoff.bank = %s "
                "AND bg_cutoff.trade_date = %s), "
                "(SELECT bg_prepaid.balance FROM bg_prepaid "
                "WHERE bg_prepaid.customer_no = n8_customer.customer_no) "
                "FROM n8_customer WHERE customer_no = %s",
    "bills": "SELECT bill_id, customer_no, fee_type, period, amount, paid_amount, "
             "late_fee_paid, due_date FROM n8_bill WHERE customer_no = %s "
             "AND paid_amount < amount ORDER BY period, bill_id",
    "tariffs": "SELECT fee_type, customer_class, unit_price, late_fee_ppm FROM n8_tariff",
    "payment": "INSERT INTO bg_payment (bank, trade_date, serial, trade_time, customer_no, "
               "amount, principal, late_fee, prepaid_in, channel, branch, teller, "
               "pan_masked, receipt_no, status, source, run_id, created_at, expires_at) "
               "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
               "%s, %s, %s)",
    "alloc": "INSERT INTO bg_allocation (payment_id, bill_id, principal, late_fee) "
             "VALUES (%s, %s, %s, %s)",
    "apply": "UPDATE n8_bill SET paid_amount = paid_amount + %s, "
             "late_fee_paid = late_fee_paid + %s WHERE bill_id = %s",
    "n8pay": "INSERT INTO n8_payment (pay_id, customer_no, amount, pay_date, bank_code, "
             "bank_serial, channel, status, created_at) "
             "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
    "n8item": "INSERT INTO n8_payment_item (pay_id, bill_id, principal, late_fee) "
              "VALUES (%s, %s, %s, %s)",
    "finish": "UPDATE bg_journal SET outcome = %s, result = %s, payment_id = %s "
              "WHERE bg_journal.id = %s",
    "prepaid": "SELECT bg_prepaid.balance FROM bg_prepaid WHERE bg_prepaid.customer_no = %s",
}


# --lean (PostgreSQL): a payment is the hot path's two statements pipelined (BEGIN goes
# with the first, COMMIT with the second: two round trips); a query reads only what
# the answer shows (no closed flag), in one statement in autocommit.
_LEAN = {
    "query": "SELECT c.customer_no, c.name, c.address, c.customer_class, c.status, "
             "(SELECT p.balance FROM bg_prepaid p WHERE p.customer_no = c.customer_no), "
             "b.bill_id, b.fee_type, b.period, b.amount, b.paid_amount, b.late_fee_paid, "
             "b.due_date FROM n8_customer c LEFT JOIN n8_bill b "
             "ON b.customer_no = c.customer_no AND b.paid_amount < b.amount "
             "WHERE c.customer_no = %s ORDER BY b.period, b.bill_id",
}


class Raw:
    """One thread's bare DBAPI connection doing the ledger's transactions by hand:
    with ``hot`` (the store's :class:`bankgate.store.pghot.PgHotPath`, PostgreSQL) its
    folded statements, without it the generic path's statements."""

    def __init__(self, url: str, hot=None):
        u = sa.engine.make_url(url)
        self.pg = u.get_backend_name() == "postgresql"
        self.hot = hot if self.pg else None
        if self.pg:
            import psycopg
            from psycopg.types.numeric import Int8Dumper

            self.conn = psycopg.connect(
                u.set(drivername="postgresql").render_as_string(hide_password=False))
            self.conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION "
                              "ISOLATION LEVEL READ COMMITTED")
            self.conn.commit()
            if self.hot is not None:  # every integer as bigint, as the hot path sends them
                self.conn.adapters.register_dumper(int, Int8Dumper)
            self.sql = dict(_SQL)
            self.sql["claim"] += " RETURNING bg_journal.id"
            self.sql["payment"] += " RETURNING bg_payment.id"
            self.sql["bills_lock"] = self.sql["bills"] + " FOR UPDATE"
            self.unique = psycopg.errors.UniqueViolation
        else:
            self.conn = sqlite3.connect(u.database, isolation_level=None,
                                        check_same_thread=False, timeout=30)
            for p in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
                self.conn.execute("PRAGMA " + p)
            self.sql = {k: v.replace("%s", "?") for k, v in _SQL.items()}
            self.sql["bills_lock"] = self.sql["bills"]  # SQLite locks the file at BEGIN
            self.unique = sqlite3.IntegrityError
        self.cur = self.conn.cursor()
        if self.hot is not None:  # where the hot statements' rows hold what
            keys = self.hot.customer_keys
            self.nc, self.k_status, self.k_class = (len(keys), keys.index("status"),
                                                    keys.index("customer_class"))
        self.begin()
        self.cur.execute(self.sql["tariffs"])
        self.tariffs = {(r[0], r[1]): r[3] for r in self.cur.fetchall()}
        self.commit()

    # SQLite takes the write lock at BEGIN, as the store's engine does (BEGIN IMMEDIATE);
    # psycopg opens its transaction itself before the first statement.
    def begin(self):
        if not self.pg:
            self.cur.execute("BEGIN IMMEDIATE")

    def commit(self):
        if self.pg:
            self.conn.commit()
        else:
            self.cur.execute("COMMIT")

    def rollback(self):
        if self.pg:
            self.conn.rollback()
        else:
            self.cur.execute("ROLLBACK")

    def _d(self, v):  # dates and times as SQLAlchemy's SQLite types store them
        if self.pg:
            return v
        if isinstance(v, datetime):
            return v.strftime("%Y-%m-%d %H:%M:%S.%f")
        return v.isoformat()

    def _dues(self, cust: tuple, as_of: date, lock: bool) -> list[_Bill]:
        cur = self.cur
        cur.execute(self.sql["bills_lock" if lock else "bills"], (cust[0],))
        out = []
        cls = cust[3]
        for bill_id, _no, fee, period, amount, paid, late_paid, due in cur.fetchall():
            if not self.pg:
                due = date.fromisoformat(due)
            outstanding = amount - paid
            out.append(_Bill(bill_id, fee, period, outstanding,
                             late_fee(outstanding, due, as_of, self.tariffs.get((fee, cls), 0),
                                      late_paid)))
        return out

    def query(self, no: str, trade_date: date) -> Outcome:
        """As the ledger reads: two statements, in autocommit on PostgreSQL
        (no BEGIN/COMMIT), in a deferred transaction on SQLite."""
        cur, sql = self.cur, self.sql
        if self.pg:
            self.conn.autocommit = True
        else:
            cur.execute("BEGIN")
        try:
            if self.hot is not None:
                return self._query_hot(no, trade_date)
            cur.execute(sql["customer"], (BANK.name, self._d(trade_date), no))
            cust = cur.fetchone()
            if cust is None:
                return Outcome.NOT_FOUND
            if cust[6] != "A":
                return Outcome.ACCOUNT_LOCKED
            bills = self._dues(cust, trade_date, lock=False)
            total = sum(b.outstanding for b in bills) + sum(b.late for b in bills)
            _prepaid = int(cust[11] or 0)
            return Outcome.OK if total else Outcome.NOTHING_DUE
        finally:
            if self.pg:
                self.conn.autocommit = False
            else:
                cur.execute("COMMIT")

    def pay(self, *args) -> Outcome:
        try:
            return self._pay_hot(*args) if self.hot is not None else self._pay(*args)
        except BaseException:
            self.rollback()
            raise

    def _pay(self, bank: str, code: str, trade_date: date, trade_time: str, serial: str,
             no: str, amount: int, content: str) -> Outcome:
        cur, sql, d = self.cur, self.sql, self._d
        now = datetime.now()
        self.begin()
        try:
            cur.execute(sql["claim"], (bank, d(trade_date), serial, "PAY", content,
                                       "PROCESSING", d(now)))
        except self.unique:
            self.rollback()
            return Outcome.DUPLICATE_MISMATCH
        jid = cur.fetchone()[0] if self.pg else cur.lastrowid

        def finish(outcome: Outcome, pid=None, **fields):
            fields.setdefault("customer_no", no)
            cur.execute(sql["finish"], (outcome.value, json.dumps(fields, sort_keys=True),
                                        pid, jid))
            self.commit()
            return outcome

        cur.execute(sql["customer"], (bank, d(trade_date), no))
        cust = cur.fetchone()
        if cust is None:
            return finish(Outcome.NOT_FOUND)
        if cust[10] is not None:
            return finish(Outcome.DATE_CLOSED)
        if cust[6] != "A":
            return finish(Outcome.ACCOUNT_LOCKED)
        bills = self._dues(cust, trade_date, lock=True)
        total = sum(b.outstanding + b.late for b in bills)
        if total == 0:
            return finish(Outcome.NOTHING_DUE)
        rows, excess = allocate(bills, amount)
        receipt = f"{trade_date:%Y%m%d}{jid:012d}"
        principal = sum(r["principal"] for r in rows)
        late = sum(r["late_fee"] for r in rows)
        cur.execute(sql["payment"], (bank, d(trade_date), serial, trade_time, no, amount,
                                     principal, late, excess, "01", "", "", "", receipt,
                                     "POSTED", "online", None, d(now), None))
        pid = cur.fetchone()[0] if self.pg else cur.lastrowid
        if rows:
            cur.executemany(sql["alloc"], [(pid, r["bill_id"], r["principal"], r["late_fee"])
                                           for r in rows])
            cur.executemany(sql["apply"], [(r["principal"], r["late_fee"], r["bill_id"])
                                           for r in rows])
        if excess:  # never in this benchmark: amounts never exceed the principal due
            raise RuntimeError("the baseline does not keep prepaid balances")
        cur.execute(sql["n8pay"], (receipt, no, amount, d(trade_date), code, serial, "01",
                                   "N", d(now)))
        if rows:
            cur.executemany(sql["n8item"], [(receipt, r["bill_id"], r["principal"],
                                             r["late_fee"]) for r in rows])
        return finish(Outcome.OK, pid, amount=amount, receipt_no=receipt, invoice_no="",
                      remaining_due=total - (amount - excess))

    # -- the hot path's statements (PostgreSQL) -----------------------------------------

    def _hot_dues(self, rows: list[tuple], at: int, cls: str, as_of: date) -> list[_Bill]:
        """The open bills in the hot statements' rows (bill columns from ``at``)."""
        out = []
        for r in rows:
            if r[at] is None:
                continue
            bill_id, _no, fee, period, amount, paid, late_paid, due = r[at:at + 8]
            outstanding = amount - paid
            out.append(_Bill(bill_id, fee, period, outstanding,
                             late_fee(outstanding, due, as_of, self.tariffs.get((fee, cls), 0),
                                      late_paid)))
        return out

    def _query_hot(self, no: str, trade_date: date) -> Outcome:
        """As the ledger reads on PostgreSQL: one statement, in autocommit."""
        rows = self.cur.execute(self.hot.query_sql, {
            "customer_no": no, "bank": BANK.name, "trade_date": trade_date}).fetchall()
        if not rows:
            return Outcome.NOT_FOUND
        cust = rows[0]
        if cust[self.k_status] != "A":
            return Outcome.ACCOUNT_LOCKED
        bills = self._hot_dues(rows, self.nc + 2, cust[self.k_class], trade_date)
        total = sum(b.outstanding for b in bills) + sum(b.late for b in bills)
        _prepaid = int(cust[self.nc + 1] or 0)
        return Outcome.OK if total else Outcome.NOTHING_DUE

    def _pay_hot(self, bank: str, code: str, trade_date: date, trade_time: str, serial: str,
                 no: str, amount: int, content: str, lean: bool = False) -> Outcome:
        """As the ledger pays on PostgreSQL: claim + customer + bills locked, then the
        payment with its journal answer; ``lean``: each pipelined with BEGIN / COMMIT."""
        hot, conn, cur = self.hot, self.conn, self.cur
        now = datetime.now()
        claim = {"bank": bank, "trade_date": trade_date, "serial": serial, "kind": "PAY",
                 "content": content, "now": now, "customer_no": no}
        try:
            if lean:
                with conn.pipeline():
                    cur.execute(hot.claim_sql, claim)
            else:
                cur.execute(hot.claim_sql, claim)
            rows = cur.fetchall()
        except self.unique:
            conn.rollback()
            return Outcome.DUPLICATE_MISMATCH
        jid, cust, nc = rows[0][0], rows[0][1:], self.nc
        if cust[0] is None or cust[nc] is not None or cust[self.k_status] != "A":
            conn.rollback()  # never in this benchmark
            return Outcome.ERROR
        bills = self._hot_dues(rows, 1 + nc + 2, cust[self.k_class], trade_date)
        total = sum(b.outstanding + b.late for b in bills)
        alloc, excess = allocate(bills, amount)
        receipt = f"{trade_date:%Y%m%d}{jid:012d}"
        fields = {"customer_no": no, "amount": amount, "receipt_no": receipt, "invoice_no": "",
                  "remaining_due": total - (amount - excess)}
        payment = dict(bank=bank, trade_date=trade_date, serial=serial, trade_time=trade_time,
                       customer_no=no, amount=amount,
                       principal=sum(r["principal"] for r in alloc),
                       late_fee=sum(r["late_fee"] for r in alloc), prepaid_in=excess,
                       channel="01", branch="", teller="", pan_masked="", receipt_no=receipt,
                       status="POSTED", source="online", run_id=None, created_at=now,
                       expires_at=None)
        n8 = dict(pay_id=receipt, customer_no=no, amount=amount, pay_date=trade_date,
                  bank_code=code, bank_serial=serial, channel="01", status="N", now=now)
        params = hot.post_params(payment, alloc, n8, (jid, Outcome.OK.value,
                                                      json.dumps(fields, sort_keys=True)))
        if lean:
            with conn.pipeline():
                cur.execute(hot.post_finish_sql, params)
                conn.commit()
        else:
            cur.execute(hot.post_finish_sql, params)
            conn.commit()
        return Outcome.OK

    # -- the lean variants (PostgreSQL only) --------------------------------------------

    def query_lean(self, no: str, trade_date: date) -> Outcome:
        conn = self.conn
        if not conn.autocommit:
            conn.autocommit = True
        rows = conn.execute(_LEAN["query"], (no,)).fetchall()
        if not rows:
            return Outcome.NOT_FOUND
        cust = rows[0]
        if cust[4] != "A":
            return Outcome.ACCOUNT_LOCKED
        total = 0
        for r in rows:
            if r[6] is not None:
                o = r[9] - r[10]
                total += o + late_fee(o, r[12], trade_date,
                                      self.tariffs.get((r[7], cust[3]), 0), r[11])
        return Outcome.OK if total else Outcome.NOTHING_DUE

    def pay_lean(self, *args) -> Outcome:
        try:
            return self._pay_hot(*args, lean=True)
        except BaseException:
            self.rollback()
            raise

    def close(self):
        self.conn.close()


# -- running a phase -------------------------------------------------------------------


class Phase:
    """N threads, each working through its own list of items until the time is up."""

    def __init__(self, label: str, threads: int, seconds: float, warmup: float):
        self.label, self.threads, self.seconds, self.warmup = label, threads, seconds, warmup
        self.ops = 0
        self.outcomes: Counter = Counter()
        self.lat: list[float] = []
        self.elapsed = 0.0
        self.cpu = 0.0  # this process's CPU seconds (every thread) over the measured window
        self.split: dict[str, float] | None = None  # the machine's CPU seconds, by whom
        self.ran_out = False
        self.errors: list[str] = []

    def run(self, make_worker, items: list, cycle: bool = False) -> Phase:
        """``make_worker(tid)`` returns ``(work(item) -> Outcome, close())``; ``cycle``
        goes round the items again when they run out (queries change nothing)."""
        parts = [items[i::self.threads] for i in range(self.threads)]
        if cycle:
            parts = [itertools.cycle(p) if p else p for p in parts]
        ready = threading.Barrier(self.threads + 1)
        measured = threading.Event()  # the window's CPU read: connections may close now
        clock = {}
        results = []
        lock = threading.Lock()

        def body(tid):
            try:
                work, close = make_worker(tid)
            except BaseException as e:  # noqa: BLE001
                self.errors.append(f"setup: {type(e).__name__}: {e}")
                ready.wait()
                return
            ops, lat, outcomes = 0, [], Counter()
            ran_out = True
            last = 0.0
            ready.wait()
            start, end = clock["start"], clock["end"]
            pc = time.perf_counter
            try:
                for item in parts[tid]:
                    t = pc()
                    if t >= end:
                        ran_out = False
                        break
                    o = work(item)
                    last = pc()
                    if t >= start:
                        ops += 1
                        lat.append(last - t)
                        outcomes[o.value if isinstance(o, Outcome) else str(o)] += 1
            except BaseException as e:  # noqa: BLE001
                self.errors.append(f"{type(e).__name__}: {e}")
            finally:
                # a server process of a connection closed before the window's end was
                # read would be lost to "the rest" (the raw baseline's own connections)
                measured.wait()
                close()
            with lock:
                results.append((ops, lat, outcomes, ran_out, last))

        ts = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(self.threads)]
        for t in ts:
            t.start()
        now = time.perf_counter()
        clock["start"] = now + self.warmup + 0.05
        clock["end"] = clock["start"] + self.seconds
        ready.wait()
        time.sleep(max(0.0, clock["start"] - time.perf_counter()))
        cpu0, where0 = time.process_time(), cpu_where()
        time.sleep(max(0.0, clock["end"] - time.perf_counter()))
        try:
            where1 = cpu_where()  # the window, before the workers close their connections
        finally:
            measured.set()
        if where0 and where1:
            self.split = cpu_spent(where0, where1)
        for t in ts:
            t.join()
        self.cpu = time.process_time() - cpu0
        finish = max((r[4] for r in results), default=clock["end"])
        self.elapsed = max(1e-9, min(finish, clock["end"] + 5) - clock["start"])
        for ops, lat, outcomes, ran_out, _ in results:
            self.ops += ops
            self.lat.extend(lat)
            self.outcomes.update(outcomes)
            self.ran_out |= ran_out
        return self

    @property
    def rate(self) -> float:
        return self.ops / self.elapsed

    def pct(self, p: float) -> float:
        if not self.lat:
            return 0.0
        s = sorted(self.lat)
        return 1000 * s[min(len(s) - 1, int(p * len(s)))]

    def line(self) -> str:
        oc = ", ".join(f"{k} {v}" for k, v in self.outcomes.most_common())
        flags = " (ran out of customers: raise --pool)" if self.ran_out else ""
        errs = f"  ERRORS: {self.errors[:3]}" if self.errors else ""
        cpu = 1000 * self.cpu / self.ops if self.ops else 0.0
        return (f"{self.label:<{LABEL}} {self.ops:>8,} {self.rate:>9,.0f} {self.pct(0.5):>8.2f} "
                f"{self.pct(0.99):>8.2f} {cpu:>8.3f}  {oc}{flags}{errs}")


def cpu_where() -> dict | None:
    """CPU seconds used so far (Linux's /proc; None elsewhere): the machine's busy
    ones, this process's, and each PostgreSQL and MariaDB server process's."""
    if not os.path.exists("/proc/stat"):
        return None
    from e2e import CLK, all_ticks, machine_ticks  # bench/, beside this script

    servers = {pid: (comm, ticks / CLK) for pid, (comm, ticks, _) in all_ticks().items()
               if comm in ("postgres", "mariadbd", "mysqld")}
    return {"machine": machine_ticks()[0] / CLK, "bench": time.process_time(),
            "servers": servers}


def cpu_spent(a: dict, b: dict) -> dict[str, float]:
    """CPU seconds from snapshot ``a`` to ``b`` (:func:`cpu_where`), by whom: a server
    process that ended in between is lost to "the rest" (the benchmark's own
    connections live through the window)."""
    out = {"machine": b["machine"] - a["machine"], "bench": b["bench"] - a["bench"],
           "postgres": 0.0, "mariadb": 0.0}
    for pid, (comm, t) in b["servers"].items():
        was = a["servers"].get(pid)
        out["postgres" if comm == "postgres" else "mariadb"] += (
            t - was[1] if was and was[0] == comm else t)
    return out


def cpu_line(label: str, phases: list[Phase]) -> str | None:
    """Where the machine's CPU went per operation, summed over ``phases`` (the rounds)."""
    got = [p.split for p in phases if p.split]
    ops = sum(p.ops for p in phases if p.split)
    if not got or not ops:
        return None
    tot = {k: sum(g[k] for g in got) for k in got[0]}
    wall = sum(p.seconds for p in phases if p.split)  # the CPU's window: start to end
    rest = tot["machine"] - tot["bench"] - tot["postgres"] - tot["mariadb"]
    ms = {k: 1000 * v / ops for k, v in tot.items()}
    return (f"  {label:<{LABEL}} {ms['machine']:6.2f} ms: this process {ms['bench']:.2f}, "
            f"PostgreSQL {ms['postgres']:.2f}, MariaDB {ms['mariadb']:.2f}, the rest "
            f"{1000 * rest / ops:.2f}   (machine {100 * tot['machine'] / wall / CPUS:.0f}% busy)")


class _Median:
    """A phase's rounds, read as one: the median ops/s."""

    def __init__(self, phases: list[Phase]):
        self.rate = statistics.median(p.rate for p in phases)
        self._p99 = statistics.median(p.pct(0.99) for p in phases)

    def pct(self, p: float) -> float:
        assert p == 0.99, "the median of the rounds' p99 only"
        return self._p99


def hooked_ledger(url: str, threads: int, tag: str, stock: int) -> tuple[Store, Ledger]:
    """The store and ledger as ``bankgate.app.wiring.build`` makes them for the
    embedded default configuration on ``url``, with one bank ``bench`` (policy
    ``any``) that takes an invoice number per payment like ``demo-fixed``; issues
    it ``stock`` fresh invoice numbers (code ``B`` + the run's tag), so that no
    payment goes without one."""
    import dataclasses
    import tempfile

    from bankgate.app import wiring
    from bankgate.app.config import default_config

    cfg = default_config(tempfile.mkdtemp(prefix="bankgate-bench-"))
    demo_bank = next(b for b in cfg.banks if b.options.get("invoice"))
    bench = dataclasses.replace(demo_bank, name=BANK.name, bank_code=BANK.bank_code,
                                policy=BANK.policy, listen=[])
    cfg = dataclasses.replace(cfg, db_url=url, db_threads=threads, banks=[bench])
    parts = wiring.build(cfg)
    code = f"B{tag[:7].upper()}"
    for first in range(1, stock + 1, 100_000):
        parts.invoices().issue_stock(BANK.name, first, min(stock, first + 99_999), code=code,
                                     width=8, actor="bench")
    return parts.store, parts.ledger


# -- the benchmark ------------------------------------------------------------------------


def pay_items(sampled: list[tuple[str, int]], start: int = 0) -> list[tuple[str, int, int]]:
    """(customer, amount, n): every other payment settles half of the principal due;
    ``n`` (from ``start``) makes the payment's serial."""
    return [(no, due if i % 2 == 0 else max(1, due // 2), start + i) for i, (no, due) in
            enumerate(sampled)]


def checkpoint(*stores: Store) -> None:
    """Start each write phase from a clean checkpoint of every database the
    benchmark writes (each once), so no phase pays for another's; on a PostgreSQL
    server whose autovacuum is off, from a vacuumed database too (autovacuum's
    work, done between the phases: otherwise every phase pays for the dead rows of
    all the phases before it); on MariaDB with InnoDB's dirty pages written out
    (:func:`_innodb_flush`: otherwise a phase after a two-database one shares the
    machine with MariaDB writing that phase's pages)."""
    seen: set[str] = set()
    for store in stores:
        off = store.autovacuum_off()
        for where, engine in store.databases():
            key = _database_of(engine.url.render_as_string(hide_password=False))
            if key in seen:
                continue
            seen.add(key)
            raw = engine.raw_connection()  # outside any transaction
            try:
                cur = raw.cursor()
                if engine.dialect.name == "postgresql":
                    raw.driver_connection.autocommit = True
                    if where in off:
                        _say_once(f"(autovacuum is off on {engine.url.database}: the "
                                  "benchmark vacuums it before each write phase)")
                        cur.execute("VACUUM")
                    cur.execute("CHECKPOINT")
                    raw.driver_connection.autocommit = False
                elif engine.dialect.name == "sqlite":
                    cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                elif engine.dialect.name in ("mysql", "mariadb"):
                    _innodb_flush(cur)
                cur.close()
            except Exception as e:  # noqa: BLE001 - a missing checkpoint only adds noise
                print(f"(no checkpoint: {e})")
            finally:
                raw.close()


def _innodb_flush(cur, wait: float = 60.0) -> None:
    """InnoDB's counterpart of PostgreSQL's CHECKPOINT: the buffer pool's dirty pages
    written out, by lowering InnoDB's dirty page limit to 0 until they are (at most
    ``wait`` seconds), then putting it back (a global setting: SUPER or
    SYSTEM_VARIABLES_ADMIN)."""
    cur.execute("SELECT @@GLOBAL.innodb_max_dirty_pages_pct")
    limit = float(cur.fetchone()[0])
    cur.execute("SET GLOBAL innodb_max_dirty_pages_pct = 0")
    try:
        end = time.monotonic() + wait
        while time.monotonic() < end:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'")
            if int(cur.fetchone()[1]) <= 16:
                break
            time.sleep(0.1)
        else:
            _say_once(f"(InnoDB still had dirty pages after {wait:g} s: a phase may pay"
                      " for the one before it)")
    finally:
        cur.execute(f"SET GLOBAL innodb_max_dirty_pages_pct = {limit!r}")


_said: set[str] = set()


def _database_of(url: str) -> str:
    """A database URL without its driver: two --n8-url through two drivers to one
    database share its customers."""
    u = sa.engine.make_url(url)
    return f"{u.get_backend_name()}://{u.host}:{u.port}/{u.database}"


def _say_once(text: str) -> None:
    if text not in _said:
        _said.add(text)
        print(text, flush=True)


def _vacuum_outbox(store: Store, stop: threading.Event, every: float = 5.0) -> None:
    while not stop.wait(every):
        n8outbox.vacuum(store)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default=DEFAULT_URL,
                    help=f"database URL (default {DEFAULT_URL}; e.g. "
                         "postgresql+psycopg://postgres@127.0.0.1:5432/bankgate_bench)")
    ap.add_argument("--customers", type=int, default=1_000_000,
                    help="demo customers wanted (seeded when the database has fewer)")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per phase")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per phase")
    ap.add_argument("--pool", type=int, default=0,
                    help="customers sampled per payment phase (default: enough for "
                         "6,000 payments/s, 10,000 on SQLite)")
    ap.add_argument("--only", choices=("all", "pay", "query"), default="all")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every phase this many times, in turn, and compare the medians "
                         "(a shared machine's load comes and goes)")
    ap.add_argument("--reseed", action="store_true",
                    help="seed the demo data afresh (replace) even when enough customers exist")
    ap.add_argument("--lean", action="store_true",
                    help="PostgreSQL: also time the hot path's statements pipelined (a "
                         "payment in 2 round trips) and a query of what the answer shows")
    ap.add_argument("--generic", action="store_true",
                    help="PostgreSQL: also time the generic path (the ledger on a store with "
                         "hot_path=False, and its statements by hand) in the same run")
    ap.add_argument("--profile", action="store_true",
                    help="also cProfile a short single-threaded ledger run")
    ap.add_argument("--profile-seconds", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    ap.add_argument("--hooks", action="store_true",
                    help="build the ledger as the service does (bankgate.app.wiring): with "
                         "its invoice and supply-status hooks")
    ap.add_argument("--n8-url", action="append", default=[],
                    help="also time the two-database case: the gateway on --url, N8 in this "
                         "database ([n8.database]; e.g. mysql+pymysql://root@127.0.0.1/"
                         "bankgate_bench_n8), seeded like --url; its ledger phases run beside "
                         "the one-database ledger's, and the ratio is printed (target >= 0.6)."
                         " Given more than once (the same N8 through another driver, e.g. "
                         "mysql+mysqldb://...?charset=utf8mb4), each is a phase of its own")
    ap.add_argument("--n8-serial", action="store_true",
                    help="with --n8-url: also time each two-database case with N8's writes "
                         "made after the gateway's post instead of sent ahead of it (what "
                         "mysqlclient allows, splithot.N8Side.send_post): the same run's "
                         "baseline for that overlap")
    a = ap.parse_args(argv)

    store, population = prepare(a.url, a.customers, a.threads, a.reseed)
    pg = store.dialect == "postgresql"
    lean, generic = a.lean and pg, a.generic and pg
    for flag, on in (("--lean", a.lean), ("--generic", a.generic)):
        if on and not pg:
            print(f"({flag} is for PostgreSQL only: skipped)")
    trade_date = date.today()
    rng = random.Random(a.seed)
    tag = f"{rng.randrange(36**6):06x}{int(time.time()) % 100000:05d}"
    origin = Origin("bench", trade_date, datetime.now().strftime("%H%M%S"))
    # enough customers for the fastest phase (SQLite's baseline passes 4,000/s)
    per_phase = a.pool or int((a.seconds + a.warmup) * (10000 if store.dialect == "sqlite"
                                                         else 6000))
    if a.hooks:
        store.stop()
        store, ledger = hooked_ledger(a.url, a.threads, tag, stock=per_phase * max(
            1, a.rounds) * (2 if generic else 1) + int(a.profile_seconds * 3000) * a.profile)
    else:
        ledger = Ledger(store, {"bench": BANK})
    generic_store = Store(a.url, N8Mapping(), threads=a.threads, hot_path=False) if generic \
        else None
    # the two-database cases: the same gateway database, N8 in each --n8-url (label ->
    # store); a phase per URL, named by its driver when there are several
    splits: dict[str, Store] = {}
    seeded: set[str] = set()
    for u in a.n8_url:
        n8db = _database_of(u)
        label = "two-db ledger" + (f" ({sa.engine.make_url(u).get_driver_name()})"
                                   if len(a.n8_url) > 1 else "")
        while label in splits:
            label += "'"
        splits[label] = prepare(a.url, a.customers, a.threads, a.reseed and n8db not in seeded,
                                n8_url=u)[0]
        seeded.add(n8db)
        if a.n8_serial and splits[label].split_hot is not None \
                and splits[label].split_hot.n8.send_ahead:  # (mysqlclient: N8Side.send_post)
            serial = prepare(a.url, a.customers, a.threads, n8_url=u)[0]
            serial.split_hot.n8.send_ahead = False
            splits[f"{label}, N8 after"] = serial
    split_ledgers = {label: Ledger(s, ledger.banks, hooks=ledger.hooks)
                     for label, s in splits.items()}
    # what the service's N8 repair job does every repair_every (5 s): the outbox vacuumed
    # once PostgreSQL counts n8outbox.VACUUM_AFTER dead rows in it
    repair_stop = threading.Event()
    if splits:  # (one gateway database: one job)
        threading.Thread(target=_vacuum_outbox, args=(next(iter(splits.values())), repair_stop),
                         daemon=True).start()
    generic_ledger = (Ledger(generic_store, ledger.banks, hooks=ledger.hooks)
                      if generic_store is not None else None)
    taken: set[str] = set()

    print(f"\nbankgate ledger benchmark: {store.engine.url.render_as_string()}"
          + (f", hooks: {', '.join(type(h).__name__ for h in ledger.hooks)}" if a.hooks
             else ", no hooks")
          + (", ledger on the PostgreSQL hot path (bankgate/store/pghot.py)"
             if store.hot_path is not None else ", ledger on the generic path"))
    print(f"  {population:,} customers, {a.threads} threads, {a.seconds:g} s per phase "
          f"(+{a.warmup:g} s warm-up), trade date {trade_date}, python "
          f"{sys.version.split()[0]}, sqlalchemy {sa.__version__}, {os.cpu_count()} CPUs")

    def ledger_pay_worker(led, prefix):
        def make(_tid):
            def work(item):
                no, amount, n = item
                req = PaymentRequest(origin, f"{prefix}{tag}{n:08d}", no, amount,
                                     content=fingerprint("pay", no, amount))
                return led.pay(req).outcome
            return work, lambda: None
        return make

    def ledger_query_worker(led):
        def make(_tid):  # the thread's kept read connection goes back when it ends
            return ((lambda item: led.query(QueryRequest(origin, item[0])).outcome),
                    led.store.release_reader)
        return make

    def raw_pay_worker(hot, prefix, lean_=False):
        def make(_tid):
            raw = Raw(a.url, hot)
            pay_ = raw.pay_lean if lean_ else raw.pay

            def work(item):
                no, amount, n = item
                return pay_("bench", BANK.bank_code, trade_date, origin.trade_time,
                            f"{prefix}{tag}{n:08d}", no, amount, fingerprint("pay", no, amount))
            return work, raw.close
        return make

    def raw_query_worker(hot, lean_=False):
        def make(_tid):
            raw = Raw(a.url, hot)
            query_ = raw.query_lean if lean_ else raw.query
            return (lambda item: query_(item[0], trade_date)), raw.close
        return make

    # (label, payment worker, query worker): the ledger and the same SQL by hand, then
    # the generic path's pair, then the lean variant
    plan = [("ledger", ledger_pay_worker(ledger, "L"), ledger_query_worker(ledger)),
            ("baseline", raw_pay_worker(store.hot_path, "R"), raw_query_worker(store.hot_path))]
    if generic:
        plan += [("generic ledger", ledger_pay_worker(generic_ledger, "G"),
                  ledger_query_worker(generic_ledger)),
                 ("generic baseline", raw_pay_worker(None, "H"), raw_query_worker(None))]
    if lean:
        plan.append(("lean", raw_pay_worker(store.hot_path, "N", lean_=True),
                     raw_query_worker(store.hot_path, lean_=True)))
    for k, (label, led) in enumerate(split_ledgers.items()):
        plan.append((label, ledger_pay_worker(led, f"T{k}"), ledger_query_worker(led)))
    # where each phase's customers are sampled from (a two-database N8 is its own)
    home = {label: splits.get(label, store) for label, _, _ in plan}

    runs: dict[str, list[Phase]] = {}  # label -> one Phase per round
    header = (f"\n{'phase':<{LABEL}} {'ops':>8} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'CPU ms':>8}  outcomes    (CPU ms: this process's CPU per operation)")

    def run(label: str, make, items, cycle: bool = False) -> None:
        p = Phase(label, a.threads, a.seconds, a.warmup).run(make, items, cycle=cycle)
        runs.setdefault(label, []).append(p)
        print(p.line(), flush=True)

    print(header.lstrip("\n"))
    rounds = max(1, a.rounds)
    if a.only in ("all", "pay"):
        print(f"sampling {rounds * len(plan) * per_phase:,} customers with dues ...",
              flush=True)
        # each N8 database's own customers: the same numbers, other rows
        n8_taken = {_database_of(s.n8_url): set() for s in splits.values()}
        items = [[pay_items(sample(home[label], population, per_phase, rng,
                                   n8_taken[_database_of(home[label].n8_url)]
                                   if label in splits else taken),
                            r * per_phase)
                  for label, _, _ in plan] for r in range(rounds)]
        for r in range(rounds):
            for (label, pay_worker, _), its in zip(plan, items[r], strict=True):
                checkpoint(home[label], *splits.values())
                run(f"{label} payments", pay_worker, its)
    if a.only in ("all", "query"):
        n = min(50_000, int((a.seconds + a.warmup) * 5000))
        print(f"sampling {2 * n:,} customers to query ...", flush=True)
        seen: set[str] = set()
        lq, bq = sample(store, population, n, rng, seen), sample(store, population, n, rng, seen)
        tq = {label: sample(s, population, n, rng, seen) for label, s in splits.items()}
        for _ in range(rounds):
            for i, (label, _, query_worker) in enumerate(plan):
                run(f"{label} queries", query_worker,
                    tq[label] if label in splits else lq if i % 2 == 0 else bq, cycle=True)

    print(header)
    for ps in runs.values():
        for p in ps:
            print(p.line())
    print()
    if rounds > 1:
        print(f"ops/s below: the median of {rounds} rounds; each round's, in order:")
        for label, ps in runs.items():
            print(f"  {label:<{LABEL}} " + "  ".join(f"{p.rate:,.0f}" for p in ps))
        print()
    lines = [line for label, ps in runs.items() if (line := cpu_line(label, ps))]
    if lines:
        print("the machine's CPU per operation (every round), and who used it:")
        print("\n".join(lines))
        print()
    phases = {label: _Median(ps) for label, ps in runs.items()}
    for kind in ("payments", "queries"):
        for prefix in ("", "generic "):
            lp_, bp_ = phases.get(f"{prefix}ledger {kind}"), phases.get(f"{prefix}baseline {kind}")
            if lp_ and bp_:
                ratio = lp_.rate / bp_.rate if bp_.rate else 0.0
                print(f"{kind:<9} {prefix}ledger {lp_.rate:>8,.0f}/s   {prefix}baseline "
                      f"{bp_.rate:>8,.0f}/s   ledger/baseline {ratio:.2f}"
                      + (f"   (targets: ledger >= {TARGETS[kind]:,}/s on PostgreSQL, ratio >= "
                         f"{TARGETS['ratio']})" if not prefix else ""))
        lp_, gl = phases.get(f"ledger {kind}"), phases.get(f"generic ledger {kind}")
        gb = phases.get(f"generic baseline {kind}")
        if lp_ and gl and gl.rate and gb and gb.rate:
            print(f"{'':<9} hot path vs generic path: ledger {lp_.rate / gl.rate:.2f}x, "
                  f"ledger/generic baseline {lp_.rate / gb.rate:.2f}")
        ln = phases.get(f"lean {kind}")
        bp_ = phases.get(f"baseline {kind}")
        if lp_ and bp_ and ln and ln.rate:
            print(f"{'':<9} lean   {ln.rate:>8,.0f}/s   ledger/lean {lp_.rate / ln.rate:.2f}   "
                  f"baseline/lean {bp_.rate / ln.rate:.2f}")

        ol = phases.get(f"ledger {kind}")
        for label in splits:
            tl = phases.get(f"{label} {kind}")
            if tl and ol and ol.rate:
                print(f"{'':<9} two databases{label.removeprefix('two-db ledger')} "
                      f"{tl.rate:>8,.0f}/s (p99 {tl.pct(0.99):.1f} ms)   one database "
                      f"{ol.rate:,.0f}/s (p99 {ol.pct(0.99):.1f} ms)   two/one "
                      f"{tl.rate / ol.rate:.2f}   (target >= 0.6)")
            after = phases.get(f"{label}, N8 after {kind}")
            if tl and after and after.rate:
                print(f"{'':<9} {label.removeprefix('two-db ledger ')}: N8's writes sent ahead"
                      f" {tl.rate:,.0f}/s, after the gateway's post {after.rate:,.0f}/s: "
                      f"{tl.rate / after.rate:.2f}x")

    repair_stop.set()
    if a.profile:
        profile(ledger, store, population, rng, taken, origin, tag, a.profile_seconds)
    for extra in (generic_store, *splits.values()):
        if extra is not None:
            extra.stop()
    store.stop()
    return 0


def profile(ledger, store, population, rng, taken, origin, tag, seconds) -> None:
    """cProfile a single-threaded ledger run: payments, then queries."""
    items = pay_items(sample(store, population, int(seconds * 3000), rng, taken))
    queries = sample(store, population, int(seconds * 6000), rng, set())
    for label, unit, run in (
        ("payments", "payment", lambda: [
            ledger.pay(PaymentRequest(origin, f"P{tag}{n:08d}", no, amount,
                                      content=fingerprint("pay", no, amount)))
            for no, amount, n in _until(items, seconds)]),
        ("queries", "query", lambda: [ledger.query(QueryRequest(origin, no))
                             for no, _ in _until(queries, seconds)]),
    ):
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        done = run()
        prof.disable()
        dt = time.perf_counter() - t0
        print(f"\n-- cProfile, ledger {label}, 1 thread: {len(done):,} in {dt:.1f} s "
              f"({len(done) / dt:,.0f}/s, {1000 * dt / max(1, len(done)):.2f} ms each; "
              "profiler overhead included) --")
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out)
        stats.sort_stats("cumulative").print_stats(25)
        print("\n".join(line for line in out.getvalue().splitlines()
                        if line.strip() and "Ordered by" not in line))
        print(f"   own time by layer, ms per {unit} (profiled):")
        for layer, t in by_layer(stats):
            print(f"   {1000 * t / max(1, len(done)):7.3f}  {layer}")


_LAYERS = (
    ("psycopg/connection.py", "wait", "waiting for the server (psycopg Connection.wait)"),
    ("psycopg", "", "psycopg (sending, adapting, results)"),
    ("sqlite3", "", "sqlite3 driver"),
    ("sqlalchemy/sql/", "", "sqlalchemy.sql: building statements, coercion, cache keys"),
    ("sqlalchemy/engine/", "", "sqlalchemy.engine: execute, contexts, results"),
    ("sqlalchemy/pool/", "", "sqlalchemy.pool: checkout, pre-ping, return"),
    ("sqlalchemy/", "", "sqlalchemy: other (util, events, dialects)"),
    ("bankgate/store/", "", "bankgate.store (Tx, Store.run_sync, the hot path)"),
    ("bankgate/domain/", "", "bankgate.domain (the ledger's rules, hooks)"),
)


def by_layer(stats: pstats.Stats) -> list[tuple[str, float]]:
    """Each function's own time, summed by the layer it lives in."""
    acc: Counter = Counter()
    for (fn, _line, name), (_cc, _nc, tt, _ct, _callers) in stats.stats.items():
        acc[_layer(fn, name)] += tt
    return acc.most_common()


def _layer(fn: str, name: str) -> str:
    for path, func, layer in _LAYERS:
        if path in fn and (not func or func == name):
            return layer
    if fn == "~" and ("sqlite3.Cursor" in name or "sqlite3.Connection" in name):
        return "sqlite3 driver"
    return "other (builtins, stdlib, the benchmark)"


def _until(items, seconds):
    end = time.perf_counter() + seconds
    for it in items:
        if time.perf_counter() >= end:
            return
        yield it


if __name__ == "__main__":
    sys.exit(main())
