"""End to end: the gateway under ``twistd`` with PostgreSQL, all four plugins loaded at once.

What it does, in one bounded run (loopback only):

1. prepares the PostgreSQL database ``bankgate_bench_e2e`` (created when missing):
   the gateway schema and ``--customers`` demo customers (``bankgate.devtools.demo.seed``),
   reused across runs and re-seeded only when it holds too few customers or too
   few of them still owe something;
2. writes a TOML configuration with the four demo banks (``ref-fixed`` with
   MAC, ``ref-delim``, ``ref-iso8583`` with a ZMK, ``ref-xml`` with its SM4
   MAC and ``two_phase``), policy ``any``, on free loopback ports,
   ``--db-threads`` database threads;
3. starts ``twistd bankgate`` as a subprocess (as ``tests/test_e2e.py`` does)
   and waits for the four listeners;
4. drives the banks (``--banks``, default all four) at once with the
   simulator's :class:`LoadRunner`, one simulator *process per bank* (so that
   the load generator can use the second core), all started at the same
   instant, each customer paid once:

   - ``warmup`` (not counted);
   - ``saturation``: as fast as 16 workers per bank go for ``--duration``
     seconds; each scenario is a counter payment: a query, then the payment of
     exactly the due it shows (``pay_due``) -> payments/s, queries/s, p50/p99;
   - ``payonly``: the same, payments only (the due read beforehand from the
     ledger in this process, straight on the database);
   - ``queries``: queries only, for half the duration;
   - ``latency`` / ``payonly-latency``: 300 offered payments/s to the banks
     together (75 per second and bank for four) -> p50/p95/p99;
   - ``console``: does the console slow the bank path?  A pair of phases, back
     to back, the same in all but the console: ``paced``, ``--console-rate``
     (300) payments/s offered to the banks together, each after its query
     (``--console-flow payonly``: a known due, no query), then
     ``paced-console``, the same with ``--console-clients`` (20) console
     clients -> both phases' p50/p95/p99 and payments/s side by side, and the
     ratio p99 with / p99 without against its target (<= 1.10).  The
     configuration then has a ``[console]`` table on a free port, and the
     viewer account ``bench-viewer`` gets a new random password (never shown).
     The clients run in one process of their own (off the load generator's
     processes), each a browser tab on the overview as ``static/overview.js``
     makes one: signed in (GET /login for the form's token and its
     ``bg_login`` cookie, POST /login), the page ``/`` with its stylesheet and
     script, the live view ``/api/live/stream`` held open with every event
     read, and every ``--console-poll`` (10) seconds ``/api/overview`` (as the
     script polls it) and the page ``/`` again (a reload); they sign out at
     the end.  Printed beside: events/s per client (the stream sends one a
     second), the fetches and their latency, HTTP errors;
   - ``workers``: does a second worker process scale?  The ``saturation`` load
     twice, each on a gateway started for it on the same database with fresh
     customers: ``[gateway] workers = 1``, then (after a restart) ``workers =
     2`` -> both payments/s and their ratio against its target (>= 1.5), with
     the CPU split (gateway supervisor and workers, PostgreSQL, load
     generator) that shows which of them filled the two cores;

   with the CPU each party used (the gateway -- the ``twistd`` process and its
   worker processes, summed -- split into reactor threads and database threads,
   PostgreSQL, simulators, console clients, everything else on the machine).
   The other phases run on a gateway of ``--workers`` (default 1) processes.

   ``demo-xml`` is two-phase (its plugin's ``SimulatorTraits.two_phase``): one
   *payment* there is a prepay (3002), then the confirm (3003) of that prepay,
   each on its own short connection (``ref-xml`` takes one request per
   connection) -- so a counter payment is three round trips on three
   connections: the query, the prepay, the confirm.  It is counted once, when
   its confirm is approved ("0000"); its latency is the prepay's round trip
   plus the confirm's, each timed as every request is (frame sent to answer,
   connection set-up excluded, as for ``ref-delim``); the wall time of the
   pair with both connects, and each half alone, are printed beside.  The
   other banks' payment is one request, as before.  The tables mark
   two-phase banks with ``*`` and the summary ends with payments/s and p99
   per bank;
5. a codec micro-benchmark: ``ref-iso8583`` 0200 request and 0210 response,
   one operation = encode one message + decode one message (ours: the bank
   side's ``client_encode`` and the gateway's ``decode``, then the gateway's
   response ``encode`` and the bank's ``client_decode``, MACs included), side
   by side with ``pyiso8583`` encoding and decoding the same messages
   (timeit loops, best of 5);
6. ``--ledger``: ``bench/ledger.py`` on the same database (4 threads, 10 s
   phases) once the gateway has stopped, its output kept and its figures read
   for the summary (``--ledger-output FILE``: read them from a saved run of it
   instead);
7. counts the rows of every ``bg_*`` and ``n8_*`` table before the load and
   after it, and prints, per table, the rows each payment added and the bytes
   a row takes (``pg_total_relation_size``: indexes and TOAST included) -- the
   database's growth per payment;
8. stops the gateway and prints a summary: every target figure next to its
   target, met or not.

    .venv/bin/python bench/e2e.py --quick          # >= 20,000 customers, 5 s phases
    .venv/bin/python bench/e2e.py                  # 1,000,000 customers, 20 s phases
    .venv/bin/python bench/e2e.py --profile        # + py-spy of the gateway (saturation)
    .venv/bin/python bench/e2e.py --phases console --skip-codec   # the console pair only
    .venv/bin/python bench/e2e.py --phases workers --skip-codec   # 1 worker, then 2

Experiments (the gateway itself is not changed): ``--workers`` (its worker
processes for every phase but the ``workers`` pair), ``--db-threads``,
``--switch-interval`` (its ``sys.setswitchinterval``), ``--gc-stats`` /
``--gc-freeze`` (its garbage collections), ``--cprofile`` (twistd's profiler:
the reactor thread only) -- these four reach the supervisor only when there are
workers --, ``--phases``, ``--latency-rate``, ``--banks`` (e.g.
``demo-fixed,demo-delim,demo-iso8583``: the three banks of earlier runs).

The machine may be shared: before each phase the script waits (``--wait-idle``)
for other processes to leave the CPU, and prints what else ran meanwhile.

Targets (this 2-core machine, simulator included): >= 1,000 payments/s
aggregate, each after its query; p99 <= 50 ms at 300 offered payments/s, each
after its query; throughput with 2 workers / 1 worker >= 1.5; codec ratio
ours/pyiso8583 >= 1.0; p99 with 20 console clients <= 1.10 x the p99 without;
and ``bench/ledger.py``'s (4 threads): >= 1,500 payments/s, >= 4,000
queries/s, each >= 0.6 of its bare-driver baseline.  The latency phase offers
300 payments/s to the banks together (``--latency-rate``: per bank; 75 each
for four banks, 100 each for three).  Printed, not asserted: this is a
measurement, not a test.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import re
import secrets
import select
import shutil
import subprocess
import sys
import tempfile
import time
import timeit
import warnings
from collections import Counter
from datetime import date, datetime
from pathlib import Path
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from sqlalchemy.engine import make_url
from twisted.internet.protocol import Protocol

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

from bankgate.devtools.gateway import GatewayProcess, free_port  # noqa: E402
from bench.ledger import ensure_database  # noqa: E402

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/bankgate_bench_e2e"
KEY = "0123456789ABCDEFFEDCBA9876543210"  # the specs' test key
KCV = "08D7B4"  # its 3DES check value
SM4_KCV = "2677F4"  # its SM4 check value (ref-xml)
TZ = "Asia/Shanghai"
BANKS = ("demo-fixed", "demo-delim", "demo-iso8583", "demo-xml")
APPROVED = {"demo-fixed": "0000", "demo-delim": "000", "demo-iso8583": "00", "demo-xml": "0000"}
TARGETS = {"payments_per_s": 1000.0, "p99_ms": 50.0, "codec_ratio": 1.0,
           "console_p99_ratio": 1.10, "workers_ratio": 1.5,
           "ledger_payments_per_s": 1500.0, "ledger_queries_per_s": 4000.0,
           "ledger_ratio": 0.6}
LATENCY_OFFERED = 300.0  # payments/s offered to all the banks together in the latency phases
#: worker processes of the gateway the phases other than ``workers`` run on: one, as
#: docs/workers.rst advises for 2 cores shared with PostgreSQL (and the load generator)
WORKERS = 1
WORKERS_PAIR = (1, 2)  # the ``workers`` phase pair: the gateway's workers in each half
LEDGER_THREADS = 4  # bench/ledger.py --threads, as its targets are set
LEDGER_SECONDS = 10.0  # bench/ledger.py --seconds
CONSOLE_CLIENTS = 20  # console clients following the live view in the console phase pair
CONSOLE_RATE = 300.0  # payments/s offered to all the banks together in that pair
CONSOLE_POLL = 10.0  # seconds: overview.js fetches /api/overview this often (POLL_MS)
CONSOLE_USER = "bench-viewer"  # the viewer account the console clients sign in as
RATE_GUESS = 2500.0  # payments/s aggregate the customer pools are sized for
START_TIMEOUT = 120.0
#: the gateway's log line once every bank is served (with workers: by every worker)
READY = re.compile(r"\[bankgate#info\] bankgate: ready, ")
#: saturation: query + payment scenarios as fast as possible; payonly: payments of a known
#: due without a query; queries: queries only; latency / payonly-latency: paced.
#: console: the pair "paced" (no console client) then "paced-console" (the same with
#: ``--console-clients`` following the live view), back to back.  workers: the pair
#: "workers-1" and "workers-2", saturation on a gateway started with 1, then 2 workers.
PHASES = ("saturation", "payonly", "queries", "latency", "payonly-latency", "console",
          "workers")
CLK = os.sysconf("SC_CLK_TCK")

CONFIG = """\
[gateway]
data_dir = "{data}"
timezone = "{tz}"
workers = {workers}

[database]
url = "{url}"
threads = {threads}

[n8]
create = false

[[bank]]
name = "demo-fixed"
plugin = "ref-fixed"
bank_code = "105210"
listen = "tcp:{p1}:interface=127.0.0.1"
allow = ["127.0.0.0/8"]
policy = "any"
mac = true
mac_key = "{key}"
mac_key_kcv = "{kcv}"

[[bank]]
name = "demo-delim"
plugin = "ref-delim"
bank_code = "103210"
listen = "tcp:{p2}:interface=127.0.0.1"
allow = ["127.0.0.0/8"]
policy = "any"

[[bank]]
name = "demo-iso8583"
plugin = "ref-iso8583"
bank_code = "104210"
listen = "tcp:{p3}:interface=127.0.0.1"
allow = ["127.0.0.0/8"]
policy = "any"
mac = true
zmk = "{key}"
zmk_kcv = "{kcv}"

[[bank]]
name = "demo-xml"
plugin = "ref-xml"
bank_code = "301210"
listen = "tcp:{p4}:interface=127.0.0.1"
allow = ["127.0.0.0/8"]
policy = "any"
mac = true
mac_key = "{key}"
mac_key_kcv = "{sm4_kcv}"
two_phase = true
confirm_timeout = 600
"""

#: appended to :data:`CONFIG` when the console phase pair runs
CONSOLE_CONFIG = """
[console]
listen = "tcp:{port}:interface=127.0.0.1"
"""

RUNNER = (
    "import os, sys; from twisted.scripts.twistd import run; "
    "sys.setswitchinterval(float(os.environ.get('BENCH_SWITCH_INTERVAL') or 0.005)); "
    "os.environ.get('BENCH_GC_STATS') and __import__('bench_gc').install(); "
    "sys.argv = ['twistd', '-n', '--pidfile=', *sys.argv[2:], 'bankgate', "
    "'--config', sys.argv[1]]; run()"
)

#: ``--gc-stats``: a tiny module put on the gateway's path that times its garbage
#: collections and writes them (JSON) to the file named by ``BENCH_GC_STATS``.
GC_MODULE = """\
import gc, json, os, time
_t = [0.0]
_s = {}
def _cb(phase, info):
    if phase == "start":
        _t[0] = time.perf_counter()
        return
    d = time.perf_counter() - _t[0]
    g = _s.setdefault(str(info["generation"]), {"n": 0, "total_ms": 0.0, "max_ms": 0.0,
                                                "over_10ms": 0})
    g["n"] += 1
    g["total_ms"] += d * 1000
    g["max_ms"] = max(g["max_ms"], d * 1000)
    g["over_10ms"] += d > 0.01
    if info["generation"] == 2:
        _s.setdefault("gen2_at_s_ms", []).append([round(time.monotonic() - _t0, 1),
                                                  round(d * 1000, 1)])
    now = time.monotonic()
    if now - _w[0] > 1.0:  # twistd dies of its SIGTERM: no atexit, so write as we go
        _w[0] = now
        with open(os.environ["BENCH_GC_STATS"], "w") as fh:
            json.dump(_s, fh)
_w = [0.0]
_t0 = time.monotonic()
def install():
    gc.callbacks.append(_cb)
    if os.environ.get("BENCH_GC_FREEZE"):  # experiment: freeze the started heap
        import threading
        t = threading.Timer(float(os.environ["BENCH_GC_FREEZE"]), gc.freeze)
        t.daemon = True
        t.start()
"""


def say(text: str = "") -> None:
    print(text, flush=True)


# =============================================================================
# the database
# =============================================================================


def seed(store, customers: int) -> None:
    from bankgate.devtools import demo

    say(f"seeding {customers:,} demo customers ...")
    last = [time.monotonic()]

    def progress(done, total):
        if time.monotonic() - last[0] > 10 or done == total:
            last[0] = time.monotonic()
            say(f"  {done:,}/{total:,}")

    st = demo.seed(store, customers, replace=True, progress=progress)
    say(f"  seeded in {st['seconds']} s ({st['method']}): {st['customers']:,} customers, "
        f"{st['bills']:,} bills")


def prepare_database(url: str, customers: int):
    """The store, with the gateway schema and at least ``customers`` demo customers."""
    from bankgate.store.db import Store
    from bankgate.store.n8 import N8Mapping

    ensure_database(url)
    store = Store(url, N8Mapping(), threads=1)
    store.create_gateway_tables()
    if not store.n8_exists():
        store.create_n8_tables()
    have = store.customer_count()
    if have < customers:
        say(f"the database holds {have:,} customers, {customers:,} wanted")
        seed(store, customers)
    else:
        say(f"reusing {have:,} customers in the database")
    return store


def open_customers(store, population: int, k: int, rng: random.Random) -> list[str]:
    """``k`` random distinct active demo customers with an open bill, or fewer
    when the first ``population`` customers do not have that many."""
    import sqlalchemy as sa

    from bankgate.devtools import demo

    c, b = store.n8["customer"], store.n8["bill"]
    order = list(range(population))
    rng.shuffle(order)
    out: list[str] = []
    with store.engine.connect() as conn:
        for i in range(0, population, 5000):
            if len(out) >= k:
                break
            picks = [str(demo.FIRST_CUSTOMER + j) for j in order[i:i + 5000]]
            q = (
                sa.select(c.c.customer_no)
                .where(c.c.customer_no.in_(picks), c.c.status == "A",
                       sa.select(b.c.bill_id)
                       .where(b.c.customer_no == c.c.customer_no,
                              b.c.paid_amount < b.c.amount).exists())
            )
            got = [r[0] for r in conn.execute(q)]
            rng.shuffle(got)
            out.extend(got)
            if i == 0 and len(got) * population / min(5000, population) < 0.5 * min(k, population):
                break  # mostly paid off by earlier runs: the caller re-seeds
    return out[:k]


def compute_dues(store, customers: list[str]) -> dict[str, list]:
    """What each customer owes today, from the ledger itself (in this process, straight
    on the database): ``{customer: [amount in fen, [bill ids]]}``, for payments sent
    without a query first."""
    from bankgate.canon import messages as m
    from bankgate.domain.ledger import Ledger

    tz = ZoneInfo(TZ)
    ledger = Ledger(store, {}, now=lambda: datetime.now(tz).replace(tzinfo=None))
    origin = m.Origin(bank="bench", trade_date=datetime.now(tz).date())
    out: dict[str, list] = {}
    for c in customers:
        q = ledger.query(m.QueryRequest(origin=origin, customer_no=c))
        if q.outcome is m.Outcome.OK and q.total_due + q.late_fee > 0:
            out[c] = [q.total_due + q.late_fee, [b.bill_id for b in q.bills]]
    return out


def table_footprint(engine) -> dict[str, tuple[int, int]]:
    """Every ``bg_*`` and ``n8_*`` table of the PostgreSQL database: ``{table: (rows,
    bytes)}``, the rows counted exactly and the bytes by ``pg_total_relation_size``
    (the table with its indexes and TOAST)."""
    import sqlalchemy as sa

    out = {}
    with engine.connect() as conn:
        names = [r[0] for r in conn.execute(sa.text(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
            "AND (tablename LIKE 'bg\\_%' OR tablename LIKE 'n8\\_%') ORDER BY tablename"))]
        for name in names:
            quoted = '"' + name.replace('"', '""') + '"'
            rows = conn.execute(sa.text(f"SELECT count(*) FROM {quoted}")).scalar_one()
            size = conn.execute(sa.text("SELECT pg_total_relation_size(CAST(:t AS regclass))"),
                                {"t": quoted}).scalar_one()
            out[name] = (int(rows), int(size))
    return out


def footprint_delta(before: dict[str, tuple[int, int]], url: str) -> dict:
    """What the load added to each table (``before``: :func:`table_footprint` taken
    before it): rows per payment (the rows ``bg_payment`` gained), bytes per row
    after it, and their product summed: the bytes a payment adds."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        after = table_footprint(engine)
        with engine.connect() as conn:
            server = conn.execute(sa.text("SHOW server_version")).scalar_one()
    finally:
        engine.dispose()
    payments = after.get("bg_payment", (0, 0))[0] - before.get("bg_payment", (0, 0))[0]
    tables = {}
    for name, (rows, size) in after.items():
        rows0, size0 = before.get(name, (0, 0))
        tables[name] = {
            "rows": rows, "bytes": size, "rows_added": rows - rows0,
            "bytes_added": size - size0,
            "bytes_per_row": size / rows if rows else 0.0,
            "rows_per_payment": (rows - rows0) / payments if payments else 0.0,
        }
    per_payment = sum(t["rows_per_payment"] * t["bytes_per_row"] for t in tables.values()
                      if t["rows_added"] > 0)
    customers = after.get("n8_customer", (0, 0))[0]
    base = sum(t["bytes"] for n, t in tables.items() if n in ("n8_customer", "n8_bill"))
    return {"server_version": server, "payments": payments, "tables": tables,
            "bytes_per_payment": per_payment, "customers": customers,
            "n8_base_bytes_per_customer": base / customers if customers else 0.0,
            "bills_per_customer": (after.get("n8_bill", (0, 0))[0] / customers
                                   if customers else 0.0)}


def print_footprint(d: dict) -> None:
    say(f"\n== database growth (PostgreSQL {d['server_version']}): {d['payments']:,} payments "
        "(bg_payment rows) added by this run; bytes per row = pg_total_relation_size "
        "(indexes and TOAST included) / rows, after the run")
    say(f"{'table':<22}{'rows':>13}{'added':>11}{'per payment':>13}{'bytes/row':>11}"
        f"{'total MB':>10}")
    for name, t in d["tables"].items():
        if t["rows_added"] or name in ("n8_customer", "n8_bill"):
            say(f"{name:<22}{t['rows']:>13,}{t['rows_added']:>11,}{t['rows_per_payment']:>13.2f}"
                f"{t['bytes_per_row']:>11.0f}{t['bytes'] / 1e6:>10.1f}")
    say(f"bytes a payment adds (rows per payment x bytes per row, summed): "
        f"{d['bytes_per_payment']:,.0f}; N8's customers and bills: "
        f"{d['n8_base_bytes_per_customer']:,.0f} bytes per customer "
        f"({d['bills_per_customer']:.2f} bills each)")


# =============================================================================
# the gateway
# =============================================================================


class Gateway:
    """``twistd bankgate`` in a subprocess, as ``tests/test_e2e.py`` runs it, with
    ``workers`` worker processes (``[gateway] workers``; 1: one process).  ``data``
    is its data folder (created), which also holds its configuration and log."""

    def __init__(self, data: Path, url: str, threads: int, twistd_args: list[str],
                 switch_interval: float | None = None, gc_stats: bool = False,
                 gc_freeze: float | None = None, console: bool = False, workers: int = 1,
                 label: str = ""):
        data.mkdir(parents=True, exist_ok=True)
        self.data = data
        self.workers = workers
        self.label = label  # which start of the gateway this is (the benchmark's name)
        u = make_url(url)
        self.database = u.database if u.get_backend_name() == "postgresql" else None
        self.ports = {b: free_port() for b in BANKS}
        self.config = data / "bankgate.toml"
        text = CONFIG.format(
            data=data.as_posix(), tz=TZ, url=url, threads=threads, key=KEY, kcv=KCV,
            sm4_kcv=SM4_KCV, p1=self.ports["demo-fixed"], p2=self.ports["demo-delim"],
            p3=self.ports["demo-iso8583"], p4=self.ports["demo-xml"], workers=workers)
        # the console (``[console]`` on a free port) when the console phase pair runs;
        # the start then waits for it to listen too
        self.console_port = free_port() if console else None
        if self.console_port:
            text += CONSOLE_CONFIG.format(port=self.console_port)
        self.config.write_text(text)
        self.log = data / "gateway.log"
        self.twistd_args = twistd_args
        self.switch_interval = switch_interval
        self.gc_stats = gc_stats or bool(gc_freeze)
        self.gc_freeze = gc_freeze
        listeners = [*self.ports.values(), *([self.console_port] if self.console_port else [])]
        self.process = GatewayProcess(
            self.config, listeners, self.log, cwd=data, runner=RUNNER,
            twistd_args=tuple(twistd_args), env=self.extra_env(),
            start_timeout=START_TIMEOUT, stop_timeout=30)

    @property
    def proc(self):
        return self.process.proc

    def extra_env(self) -> dict:
        env = {}
        if self.switch_interval:
            env["BENCH_SWITCH_INTERVAL"] = str(self.switch_interval)
        if self.gc_stats:
            (self.data / "bench_gc.py").write_text(GC_MODULE)
            env["PYTHONPATH"] = str(self.data)
            env["BENCH_GC_STATS"] = str(self.data / "gc-stats.json")
            if self.gc_freeze:
                env["BENCH_GC_FREEZE"] = str(self.gc_freeze)
        return env

    def gc_stats_line(self) -> dict | None:
        try:
            return json.loads((self.data / "gc-stats.json").read_text())
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        """Start it and wait (bounded) for its "ready" line: with workers, the
        supervisor listens on the bank ports before its workers serve them."""
        self.process.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not READY.search(self.log.read_text(errors="replace")):
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited ({self.proc.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway not ready after {START_TIMEOUT:g} s:\n"
                                   f"{self.tail()}")
            time.sleep(0.1)

    def worker_pids(self) -> list[int]:
        """The worker processes now (children of the ``twistd`` process)."""
        return [pid for pid, (_, _, ppid) in all_ticks().items() if ppid == self.proc.pid]

    def stop(self) -> None:
        self.process.stop()

    def tail(self, n: int = 30) -> str:
        return self.process.tail(n)


# =============================================================================
# CPU accounting (/proc)
# =============================================================================


def _ticks(pid: int, tid: int | None = None) -> int:
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        with open(path, "rb") as fh:
            rest = fh.read().rsplit(b")", 1)[1].split()
        return int(rest[11]) + int(rest[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0


#: a PostgreSQL client backend's process title: "postgres: 15/main: USER DATABASE HOST(PORT) ..."
_BACKEND = re.compile(rb"^postgres: \S+: \S+ (\S+) (?:\d[\d.:a-f]*\(\d+\)|\[local\])")


def _postgres_ticks(database: str | None = None) -> tuple[dict[int, int], dict[int, int]]:
    """CPU ticks of the PostgreSQL server's processes: ``(ours, others)``, where
    *others* are the client backends of databases other than ``database`` (the
    machine may be shared) and *ours* everything else -- our backends and the
    server's own processes (WAL writer, checkpointer, autovacuum)."""
    ours, others = {}, {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/comm", "rb") as fh:
                    if fh.read().strip() != b"postgres":
                        continue
                with open(f"/proc/{d}/cmdline", "rb") as fh:
                    title = fh.read().split(b"\0")[0]
            except OSError:
                continue
            backend = _BACKEND.match(title)
            other = (database is not None and backend is not None
                     and backend.group(1).decode(errors="replace") != database)
            (others if other else ours)[int(d)] = _ticks(int(d))
    return ours, others


def all_ticks() -> dict[int, tuple[str, int, int]]:
    """Every process: ``{pid: (command, CPU ticks, parent pid)}``."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as fh:
                    head, _, rest = fh.read().rpartition(b")")
                f = rest.split()
                out[int(d)] = (head.partition(b"(")[2].decode(errors="replace"),
                               int(f[11]) + int(f[12]), int(f[1]))
            except (OSError, IndexError, ValueError):
                continue
    return out


def machine_ticks() -> tuple[int, int, int]:
    """The machine's CPU ticks since boot: (busy, all, irq + softirq)."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:9]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v), v[5] + v[6]  # busy, total, irq + softirq


def machine_busy(seconds: float = 1.0) -> float:
    """Share of the machine's CPU busy over ``seconds`` (before we load it)."""
    a = machine_ticks()
    time.sleep(seconds)
    b = machine_ticks()
    return (b[0] - a[0]) / max(1, b[1] - a[1])


class CpuMeter:
    """CPU seconds used by the gateway and PostgreSQL, and the machine's busy share.

    The gateway is the ``twistd`` process and its children, the worker processes
    when it runs with ``workers`` > 1 (the supervisor then keeps the console and the
    schedulers, the workers serve the banks).  In each of them the main thread runs
    the reactor (network, framing, codecs, logging) and the others are the store's
    database threads (ledger, SQLAlchemy, psycopg).  A worker started during the
    phase (a restart) counts from zero; one that ended during it is lost, and
    :meth:`delta` says how many did."""

    def __init__(self, gateway_pid: int, exclude: set[int] = frozenset(),
                 database: str | None = None):
        self.pid = gateway_pid
        self.exclude = {gateway_pid, os.getpid(), *exclude}
        self.database = database  # PostgreSQL: the backends of other databases are others'

    def snapshot(self):
        procs = all_ticks()
        children = {pid: (t, _ticks(pid, pid)) for pid, (_, t, ppid) in procs.items()
                    if ppid == self.pid}
        pg, pg_others = _postgres_ticks(self.database)
        return (time.monotonic(), _ticks(self.pid), pg, machine_ticks(),
                _ticks(self.pid, self.pid), procs, children, pg_others)

    def delta(self, a, b) -> dict:
        wall = b[0] - a[0]
        pg = sum(t - a[2].get(pid, 0) for pid, t in b[2].items())
        busy = b[3][0] - a[3][0]
        total = b[3][1] - a[3][1]
        kids_a, kids_b = a[6], b[6]
        workers = sum(t - kids_a.get(pid, (0, 0))[0] for pid, (t, _) in kids_b.items())
        workers_main = sum(m - kids_a.get(pid, (0, 0))[1] for pid, (_, m) in kids_b.items())
        supervisor = b[1] - a[1]
        # everybody else: processes that are neither the gateway, PostgreSQL, this
        # benchmark nor its simulators (the machine may be shared)
        ours = {*self.exclude, *b[2], *kids_a, *kids_b}
        others: Counter = Counter()
        for pid, (comm, t, _) in b[5].items():
            if pid in ours or comm in ("postgres", "py-spy"):
                continue
            if pid in a[5] and a[5][pid][0] == comm:
                t -= a[5][pid][1]
            elif pid not in a[5]:
                pass  # started during the phase (our workers start before the snapshot)
            others[comm] += t
        pg_others = sum(t - a[7].get(pid, 0) for pid, t in b[7].items())
        if pg_others > 0:
            others["postgres, other databases"] += pg_others
        return {
            "others": {k: v / CLK / wall for k, v in others.most_common(4) if v > 0},
            "wall_s": wall,
            "gateway_cpu_s": (supervisor + workers) / CLK,
            "supervisor_cpu_s": supervisor / CLK,
            "workers": len(kids_b),
            "workers_ended": len(set(kids_a) - set(kids_b)),
            "workers_cpu_s": workers / CLK,
            "each_worker_cpu_s": sorted((t - kids_a.get(pid, (0, 0))[0]) / CLK
                                        for pid, (t, _) in kids_b.items()),
            # the reactor threads that serve the banks: the workers' when there are
            # workers, else the one process's
            "reactor_cpu_s": (workers_main if kids_b else b[4] - a[4]) / CLK,
            "postgres_cpu_s": pg / CLK,
            "machine_busy": busy / total if total else 0.0,
            "softirq": (b[3][2] - a[3][2]) / total if total else 0.0,
        }


# =============================================================================
# the load: one simulator process per bank
# =============================================================================


class FreshCustomers:
    """A customer list that ``rng.choice`` walks through: each draw is the next
    customer (cycling), so every payment scenario finds a bill still open."""

    def __init__(self, customers: list[str]):
        self.customers = customers
        self.i = -1

    def __len__(self) -> int:
        return len(self.customers)

    def __getitem__(self, _index: int) -> str:
        self.i = (self.i + 1) % len(self.customers)
        return self.customers[self.i]


async def _due_shown(sim, customer: str) -> tuple[int, tuple[str, ...]] | None:
    """Query ``customer``; what the answer shows due and the bills to name, as
    :meth:`BankSimulator.pay_due` reads it (``None``: declined or nothing due)."""
    q = await sim.query(customer)
    if not q.approved:
        return None
    if sim.traits.pay_names_bills:
        ids = tuple(str(b.get("bill_id")) for b in q.bills)
        due = sum(int(b.get("amount", 0)) + int(b.get("late_fee", 0)) for b in q.bills)
    else:
        ids, due = (), q.total
    return (due, ids) if due > 0 else None


def _bench_runner(base):
    """A :class:`LoadRunner` with the benchmark's payment scenario.

    ``dues`` (from :func:`compute_dues`): pay a known due straight away, no query
    first.  ``two_phase``: the bank's payment is a prepay then the confirm of that
    prepay (:meth:`BankSimulator.settle`; ``sim.pay`` would send the prepay alone).
    The simulator times each request on its own, so the runner keeps, per payment,
    ``pairs``: the prepay's round trip plus the confirm's (each from its frame sent
    to its answer, connection set-up excluded, as for every request) and ``walls``:
    from the prepay's connect to the confirm's answer (both connections included).
    """

    class BenchRunner(base):
        def __init__(self, *args, dues: dict | None = None, two_phase: bool = False, **kw):
            super().__init__(*args, **kw)
            self.dues = dues or {}
            self.two_phase = two_phase
            self.pairs: list[float] = []
            self.walls: list[float] = []

        async def _scenario(self, sim, op):
            if op != "pay" or not (self.dues or self.two_phase):
                return await super()._scenario(sim, op)
            customer = self.rng.choice(self.customers)
            due = self.dues.get(customer)
            if due is None and not self.two_phase:  # not known: as a counter does,
                await sim.pay_due(customer)  # query first
                return None
            if due is None:
                due = await _due_shown(sim, customer)
                if due is None:
                    return None
            amount, bills = due
            if not self.two_phase:
                await sim.pay(customer, amount, bills)
                return None
            started = self.reactor.seconds()
            answers = await sim.settle(customer, amount, bills)  # [prepay] or [prepay, confirm]
            if len(answers) == 2:
                self.walls.append(self.reactor.seconds() - started)
                self.pairs.append(answers[0].latency + answers[1].latency)
            return None

    return BenchRunner


def worker_main(spec_path: str) -> None:
    """``bench/e2e.py --worker SPEC``: one bank's load, results to ``spec["out"]``."""
    from twisted.internet import task

    spec = json.loads(Path(spec_path).read_text())
    task.react(lambda reactor: _worker(reactor, spec))


async def _worker(reactor, spec: dict) -> None:
    from twisted.internet import defer, task

    from bankgate.app.config import check_plugins, load_config
    from bankgate.devtools.simulate import (
        BankClient,
        BankSimulator,
        LoadRunner,
        SerialGenerator,
        resolve_target,
        traits_for,
    )

    cfg = load_config(spec["config"])
    target = resolve_target(cfg, check_plugins(cfg), spec["bank"])
    tz = cfg.tz

    def now() -> datetime:
        return datetime.fromtimestamp(reactor.seconds(), tz).replace(tzinfo=None)

    rng = random.Random(spec["seed"])
    serials = SerialGenerator(now, rng=random.Random(rng.random()))
    pipelined = bool(target.codec.framing.pipelined)
    depth = spec["in_flight"] if pipelined else 1
    conns = max(1, spec["concurrency"] // depth)
    sims = [
        BankSimulator(BankClient(reactor, target.codec, target.profile, target.host, target.port,
                                 now=now, timeout=spec["timeout"], serials=serials), serials)
        for _ in range(conns)
    ]
    extra = {}
    cls = LoadRunner
    two_phase = traits_for(target.codec).two_phase
    if spec.get("dues") or two_phase:
        cls = _bench_runner(LoadRunner)
        extra = {"dues": spec.get("dues"), "two_phase": two_phase}
    runner = cls(reactor, sims, FreshCustomers(spec["customers"]), spec["mix"],
                 rate=spec["rate"], duration=spec["duration"], depth=depth,
                 drain=spec["timeout"] + 1.0, rng=random.Random(rng.random()), **extra)
    await task.deferLater(reactor, max(0.0, spec["start_at"] - time.time()), lambda: None)
    cpu0, wall0 = time.process_time(), time.time()
    stats = await runner.start()
    cpu = time.process_time() - cpu0
    await defer.gatherResults([s.client.close() for s in sims], consumeErrors=True)
    nothing_due = sum(n for (op, code), n in stats.answered.items()
                      if op == "query" and code != APPROVED[spec["bank"]])
    latencies = {op: v for op, v in stats.latencies.items()}
    if two_phase:  # a payment: the prepay's round trip + the confirm's
        latencies["pay"] = runner.pairs
        latencies["pay_wall"] = runner.walls
    out = {
        "bank": spec["bank"],
        "two_phase": two_phase,
        "summary": stats.summary(),
        "answered": [[op, code, n] for (op, code), n in stats.answered.items()],
        "latencies": latencies,
        "elapsed": stats.elapsed,
        "wall_start": wall0,
        "cpu_s": cpu,
        "connections": sum(s.client.connections for s in sims),
        "queries_not_approved": nothing_due,
        "workers": conns * depth,
    }
    Path(spec["out"]).write_text(json.dumps(out))


# =============================================================================
# the console clients: one process, each client a signed-in browser tab on the overview
# =============================================================================


def console_account(store) -> str:
    """The viewer account :data:`CONSOLE_USER` the console clients sign in as, with a
    new random password (the account is created, or its password replaced: the bench
    database is reused).  Returns the password, which is never printed nor written to
    a file: the console clients' process reads it on its standard input."""
    from bankgate.app.console.auth import AccountError, Accounts

    tz = ZoneInfo(TZ)
    accounts = Accounts(store, lambda: datetime.now(tz).replace(tzinfo=None))
    password = secrets.token_urlsafe(24)
    why = "bench/e2e.py: the console clients of the console phase"
    try:
        accounts.add(CONSOLE_USER, "viewer", password, actor="bench", reason=why)
    except AccountError:  # there from an earlier run
        accounts.passwd(CONSOLE_USER, password, actor="bench", reason=why)
        try:
            accounts.set_disabled(CONSOLE_USER, False, actor="bench", reason=why)
        except AccountError:
            pass  # enabled already (the usual case)
    return password


class ConsoleFailure(Exception):
    """A console client could not sign in or open the live view."""


_CSRF = re.compile(rb'name="csrf" value="([^"]+)"')


class _EventStream(Protocol):
    """The body of ``/api/live/stream``: server-sent events, each handed to the
    client as the text of its ``data:`` lines (as ``EventSource`` does)."""

    def __init__(self, client: ConsoleClient):
        from twisted.internet import defer

        self.client = client
        self.buffer = b""
        self.closed = False
        self.done = defer.Deferred()  # fires when the stream has ended

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        *blocks, self.buffer = (self.buffer + data).split(b"\n\n")
        for block in blocks:
            lines = [line[5:].removeprefix(b" ") for line in block.split(b"\n")
                     if line.startswith(b"data:")]
            if lines:  # the first block is "retry: 5000", no event
                self.client.on_event(b"\n".join(lines))

    def connectionLost(self, reason) -> None:  # noqa: N802
        self.closed = True
        self.client.on_stream_end()
        self.done.callback(None)


class ConsoleClient:
    """One browser tab on the console's overview (``static/overview.js``): signed in
    (GET /login for the form's token and its ``bg_login`` cookie, POST /login), the
    page ``/`` with its stylesheet and script, the live view ``/api/live/stream``
    held open and every event read, and while the phase lasts, every ``poll``
    seconds, ``/api/overview`` (as the script polls it) and, half a period later, the
    page ``/`` again (an operator pressing reload; the stream stays open).  One
    request at a time besides the stream, on its own connection pool, as a tab has.

    Counts the events and fetches of the phase's window (``window``: wall-clock
    seconds) and every error: a refused or failed request, an unreadable event, a
    stream the gateway closed."""

    def __init__(self, reactor, base: str):
        from twisted.web.client import Agent, HTTPConnectionPool

        self.reactor, self.base = reactor, base
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.agent = Agent(reactor, pool=self.pool, connectTimeout=10)
        self.cookies: dict[str, str] = {}
        self.csrf = ""
        self.window = (math.inf, math.inf)
        self.events = 0  # in the window
        self.events_all = 0
        self.errors: Counter = Counter()
        self.fetches: dict[str, list[float]] = {}  # in the window: what -> seconds
        self.stream: _EventStream | None = None
        self.stopping = False
        self.payments_per_minute = 0  # the most the events showed, the banks together

    def _headers(self, accept: bytes):
        from twisted.web.http_headers import Headers

        h = Headers({b"accept": [accept]})
        if self.cookies:
            h.addRawHeader(b"cookie", "; ".join(f"{k}={v}" for k, v in
                                                self.cookies.items()).encode("ascii"))
        return h

    def _keep_cookies(self, response) -> None:
        for raw in response.headers.getRawHeaders(b"set-cookie", []):
            name, _, value = raw.decode("ascii", "replace").split(";", 1)[0].partition("=")
            if value:
                self.cookies[name.strip()] = value.strip()
            else:  # cleared (signed out)
                self.cookies.pop(name.strip(), None)

    async def fetch(self, method: bytes, path: str, what: str, *, form: dict | None = None,
                    expect: int = 200, accept: bytes = b"text/html") -> bytes | None:
        """One request; its body, or ``None`` (counted as an error) when it failed or
        answered anything but ``expect``."""
        from twisted.web.client import FileBodyProducer, readBody

        headers = self._headers(accept)
        body = None
        if form is not None:
            headers.addRawHeader(b"content-type", b"application/x-www-form-urlencoded")
            body = FileBodyProducer(io.BytesIO(urlencode(form).encode("utf-8")))
        started = time.time()
        try:
            response = await self.agent.request(method, (self.base + path).encode("ascii"),
                                                headers, body)
            data = await readBody(response)
        except Exception as e:  # a request that failed is a figure here, not a crash
            self.errors[f"{what}: {type(e).__name__}"] += 1
            return None
        self._keep_cookies(response)
        if response.code != expect:
            self.errors[f"{what}: HTTP {response.code}"] += 1
            return None
        if self.window[0] <= started <= self.window[1]:
            self.fetches.setdefault(what, []).append(time.time() - started)
        return data

    async def sign_in(self, user: str, password: str) -> None:
        form = await self.fetch(b"GET", "/login", "sign-in")
        token = _CSRF.search(form or b"")
        if token is None:
            raise ConsoleFailure(f"no sign-in form at /login ({dict(self.errors)})")
        done = await self.fetch(b"POST", "/login", "sign-in", expect=303, form={
            "csrf": token.group(1).decode("ascii"), "name": user, "password": password,
            "next": "/"})
        if done is None or "bg_session" not in self.cookies:
            raise ConsoleFailure(f"sign-in as {user!r} refused ({dict(self.errors)}): the "
                                 "gateway log says why")
        self.cookies.pop("bg_login", None)
        await self.open_page()
        for asset in ("/static/console.css", "/static/overview.js"):  # then cached
            await self.fetch(b"GET", asset, "static", accept=b"*/*")

    async def open_page(self) -> None:
        page = await self.fetch(b"GET", "/", "/")
        token = _CSRF.search(page or b"")
        if token is not None:
            self.csrf = token.group(1).decode("ascii")  # the sign-out form's

    async def open_stream(self) -> None:
        from twisted.web.client import readBody

        try:
            response = await self.agent.request(
                b"GET", (self.base + "/api/live/stream").encode("ascii"),
                self._headers(b"text/event-stream"))
        except Exception as e:
            raise ConsoleFailure(f"/api/live/stream: {type(e).__name__}: {e}") from None
        if response.code != 200:
            await readBody(response)
            raise ConsoleFailure(f"/api/live/stream answered HTTP {response.code}")
        self.stream = _EventStream(self)
        response.deliverBody(self.stream)

    def on_event(self, data: bytes) -> None:
        self.events_all += 1
        try:
            snapshot = json.loads(data)
            per_minute = sum(int(b["payments_per_minute"]) for b in snapshot["banks"])
        except (ValueError, KeyError, TypeError):
            self.errors["live event: not the live figures"] += 1
            return
        if self.window[0] <= time.time() <= self.window[1]:
            self.events += 1
            self.payments_per_minute = max(self.payments_per_minute, per_minute)

    def on_stream_end(self) -> None:
        if not self.stopping:
            self.errors["live view: closed by the gateway"] += 1

    async def follow(self, run: _Following, poll: float, offset: float) -> None:
        """The phase: the page and, half a period later, the figures, every ``poll``
        seconds from ``offset`` seconds after its start (the tabs were not opened all
        at once), until it stops."""
        t = run.start + offset
        while await run.until(t):
            await self.open_page()
            if not await run.until(t + poll / 2):
                break
            await self.fetch(b"GET", "/api/overview", "/api/overview",
                             accept=b"application/json")
            t += poll

    async def close(self) -> None:
        """Stop following and sign out."""
        from twisted.internet import defer

        self.stopping = True
        if self.stream is not None and not self.stream.closed and self.stream.transport:
            self.stream.transport.stopProducing()
            try:
                await self.stream.done.addTimeout(5, self.reactor)
            except defer.TimeoutError:
                self.errors["live view: would not close"] += 1
        if self.csrf:
            await self.fetch(b"POST", "/logout", "sign-out", form={"csrf": self.csrf},
                             expect=303)
        await self.pool.closeCachedConnections()

    def figures(self) -> dict:
        return {"events": self.events, "events_all": self.events_all,
                "errors": dict(self.errors), "fetches": self.fetches,
                "payments_per_minute_seen": self.payments_per_minute}


class _Following:
    """When the console clients follow the phase: from ``start`` (wall-clock
    seconds) until :meth:`stop` -- when the bank load is over, however late a busy
    machine started it.  Its sleeps end at the stop."""

    def __init__(self, reactor, start: float):
        self.reactor, self.start = reactor, start
        self.end: float | None = None
        self.sleeps: set = set()

    async def until(self, t: float) -> bool:
        """Sleep until wall-clock second ``t``; ``False`` when stopped first."""
        from twisted.internet import defer, task

        if self.end is not None:
            return False
        d = task.deferLater(self.reactor, max(0.0, t - time.time()), lambda: None)
        self.sleeps.add(d)
        try:
            await d
        except defer.CancelledError:
            return False
        finally:
            self.sleeps.discard(d)
        return self.end is None

    def stop(self, _=None) -> None:
        self.end = time.time()
        for d in list(self.sleeps):
            d.cancel()


def console_worker_main(spec_path: str) -> None:
    """``bench/e2e.py --console-worker SPEC``: the console clients, results to
    ``spec["out"]``.  Standard input: the password, then (once this process has
    printed ``ready``) the phase's start in wall-clock seconds; its end is the end
    of the input."""
    from twisted.internet import task

    # twisted.web's own response transport has no abortConnection, so every readBody
    # warns of it (and this module is __main__ here, where such warnings show)
    warnings.filterwarnings("ignore", "Using readBody with a transport",
                            DeprecationWarning)
    spec = json.loads(Path(spec_path).read_text())
    password = sys.stdin.readline().rstrip("\n")
    task.react(lambda reactor: _console_worker(reactor, spec, password))


async def _console_worker(reactor, spec: dict, password: str) -> None:
    from twisted.internet import defer, threads

    clients = [ConsoleClient(reactor, spec["base"]) for _ in range(spec["clients"])]
    try:
        for c in clients:  # one after the other: parallel sign-ins would meet the throttle
            await c.sign_in(spec["user"], password)
            await c.open_stream()
    except ConsoleFailure as e:
        print(f"failed: {e}", flush=True)
        return
    del password
    print("ready", flush=True)
    line = await threads.deferToThread(sys.stdin.readline)
    if not line.strip():  # the benchmark gave up before the phase
        await defer.gatherResults([defer.ensureDeferred(c.close()) for c in clients])
        return
    run = _Following(reactor, float(line))
    threads.deferToThread(sys.stdin.readline).addBoth(run.stop)  # its end: the phase's
    n, poll = len(clients), spec["poll"]
    for c in clients:
        c.window = (run.start, math.inf)
    await run.until(run.start)
    cpu0 = time.process_time()
    await defer.gatherResults([defer.ensureDeferred(c.follow(run, poll, i * poll / n))
                               for i, c in enumerate(clients)])
    cpu = time.process_time() - cpu0
    for c in clients:
        c.window = (run.start, run.end)
    await defer.gatherResults([defer.ensureDeferred(c.close()) for c in clients])
    Path(spec["out"]).write_text(json.dumps({
        "clients": [c.figures() for c in clients], "window_s": run.end - run.start,
        "poll_s": poll, "cpu_s": cpu}))


class ConsoleClients:
    """The console clients' process, from the benchmark's side: started and signed in
    before a phase (:meth:`ready`), told the phase's window (:meth:`follow`), its
    stopped when the bank load is over (:meth:`stop`), its figures read after
    (:meth:`figures`)."""

    def __init__(self, gw: Gateway, work: Path, name: str, *, clients: int, poll: float,
                 password: str):
        spec = {"base": f"http://127.0.0.1:{gw.console_port}", "user": CONSOLE_USER,
                "clients": clients, "poll": poll, "out": str(work / f"{name}-console.json")}
        path = work / f"{name}-console.spec.json"
        path.write_text(json.dumps(spec))
        self.out = Path(spec["out"])
        self.out.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--console-worker", str(path)], cwd=ROOT,
            env=gw.process.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.proc.stdin.write(password + "\n")
        self.proc.stdin.flush()

    def ready(self, timeout: float) -> None:
        """Wait (bounded) until every client is signed in and follows the live view."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise RuntimeError(f"the console clients were not signed in after {timeout:g} s")
            if select.select([self.proc.stdout], [], [], left)[0]:
                line = self.proc.stdout.readline().strip()
                if line == "ready":
                    return
                self.kill()
                raise RuntimeError(f"console clients: {line or 'exited'} "
                                   f"(exit {self.proc.returncode})")

    def follow(self, start: float) -> None:
        """Follow from wall-clock second ``start`` until :meth:`stop`."""
        self.proc.stdin.write(f"{start!r}\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if not self.proc.stdin.closed:
            self.proc.stdin.close()

    def figures(self, timeout: float) -> dict:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        if not self.out.exists():
            raise RuntimeError(f"the console clients wrote no result (exit "
                               f"{self.proc.returncode})")
        return json.loads(self.out.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def console_figures(raw: dict) -> dict:
    """What the console clients did in the phase: events per second and client (the
    stream sends one a second), fetches and their latency, errors."""
    clients = raw["clients"]
    seconds = raw["window_s"] or 1.0
    rates = sorted(c["events"] / seconds for c in clients)
    errors: Counter = Counter()
    fetches: dict[str, list[float]] = {}
    for c in clients:
        errors.update(c["errors"])
        for what, times in c["fetches"].items():
            fetches.setdefault(what, []).extend(times)
    return {
        "clients": len(clients), "poll_s": raw["poll_s"], "window_s": seconds,
        "events": sum(c["events"] for c in clients),
        "events_per_s_per_client": {"min": rates[0] if rates else 0.0,
                                    "mean": sum(rates) / len(rates) if rates else 0.0,
                                    "max": rates[-1] if rates else 0.0},
        "fetches": {what: _lat(times) for what, times in sorted(fetches.items())},
        "http_errors": sum(errors.values()), "errors": dict(errors),
        "payments_per_minute_seen": max((c["payments_per_minute_seen"] for c in clients),
                                        default=0),
        "cpu_s": raw["cpu_s"],
    }


def wait_idle(limit: float, what: str) -> float:
    """Wait up to ``limit`` seconds for other processes to leave the CPU (< 15% busy).

    The machine may be shared; returns the busy share seen last (before our load)."""
    deadline = time.monotonic() + limit
    busy = machine_busy(0.5)
    while busy > 0.15 and time.monotonic() < deadline:
        busy = machine_busy(1.0)
    if busy > 0.15:
        say(f"WARNING: the machine is {busy * 100:.0f}% busy before {what} (other processes): "
            "the figures share the CPU with them")
    return busy


def run_phase(gw: Gateway, work: Path, name: str, customers: dict[str, list[str]], *,
              rate: float, duration: float, concurrency: int, in_flight: int, mix: dict,
              seed: int, profile: str | None = None, wait: float = 0.0,
              dues: dict | None = None, console: dict | None = None) -> dict:
    """Run one load phase on all banks of ``customers`` at once; returns the aggregated
    figures.  ``console``: also the console clients (``clients``, ``poll``,
    ``password``: :class:`ConsoleClients`), signed in before the phase and following
    the live view throughout it."""
    busy_before = wait_idle(wait, f"the {name} phase") if wait > 0 else None
    clients = None
    if console:
        clients = ConsoleClients(gw, work, name, **console)
        clients.ready(START_TIMEOUT)
    procs = []
    outs = {}
    start_at = time.time() + 2.0  # every worker imported and connected-ready by then
    for i, bank in enumerate(customers):
        spec = {
            "config": str(gw.config), "bank": bank, "rate": rate, "duration": duration,
            "concurrency": concurrency, "in_flight": in_flight, "mix": mix,
            "customers": customers[bank], "seed": seed * 10 + i, "timeout": 5.0,
            "start_at": start_at, "out": str(work / f"{name}-{bank}.json"),
            "dues": {c: dues[c] for c in customers[bank] if c in dues} if dues else None,
        }
        path = work / f"{name}-{bank}.spec.json"
        path.write_text(json.dumps(spec))
        outs[bank] = Path(spec["out"])
        outs[bank].unlink(missing_ok=True)
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", str(path)],
                                      cwd=ROOT, env=gw.process.env()))
    if clients is not None:
        clients.follow(start_at)  # until the bank load is over, however late it starts
    meter = CpuMeter(gw.proc.pid, {p.pid for p in procs}
                     | ({clients.proc.pid} if clients is not None else set()), gw.database)
    time.sleep(max(0.0, start_at - time.time()))
    spy = None
    spy_bin = shutil.which("py-spy", path=str(Path(sys.executable).parent)) \
        or shutil.which("py-spy")
    if profile and not spy_bin:
        say("no py-spy: .venv/bin/pip install py-spy (profile skipped)")
    elif profile:
        spy = subprocess.Popen(
            [spy_bin, "record", "--pid", str(gw.proc.pid),
             "--duration", str(max(1, int(duration) - 1)), "--rate", "200", "--format", "raw",
             "--gil", "--nonblocking", "-o", profile,
             *(["--subprocesses"] if gw.workers > 1 else [])],  # the workers too
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    a = meter.snapshot()
    time.sleep(duration)
    b = meter.snapshot()
    for p in procs:
        try:
            p.wait(duration + 30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    # from the start until the last simulator is done: all the work of the phase, however
    # late a simulator started (a busy machine), for the CPU each payment took
    whole = meter.delta(a, meter.snapshot())
    if clients is not None:
        clients.stop()
    if spy is not None:
        try:
            _, err = spy.communicate(timeout=30)
            if spy.returncode:
                say(f"py-spy failed: {err.decode(errors='replace').strip()}")
        except subprocess.TimeoutExpired:
            spy.kill()
    cpu = meter.delta(a, b)
    results = {}
    for bank, path in outs.items():
        if not path.exists():
            raise RuntimeError(f"{name}: the {bank} simulator wrote no result "
                               f"(exit {[p.returncode for p in procs]}); gateway log:\n"
                               f"{gw.tail()}")
        results[bank] = json.loads(path.read_text())
    ph = aggregate(name, results, cpu, rate, duration)
    ph["cpu_ms"] = cpu_per_request(ph, whole)
    ph["busy_before"] = busy_before
    # a simulator that imported slowly (a busy machine) starts after start_at: its load
    # then falls partly outside the CPU meter's window (its own figures are its own run's)
    ph["late_start_s"] = max(0.0, *(r["wall_start"] - start_at for r in results.values()))
    ph["direct"] = bool(dues)
    if clients is not None:
        ph["console"] = console_figures(clients.figures(30.0))
        ph["cpu"]["console_clients"] = ph["console"]["cpu_s"] / ph["console"]["window_s"]
    return ph


def cpu_per_request(ph: dict, whole: dict) -> dict | None:
    """CPU milliseconds each payment (a query and its payment in the counter flow), or
    each query in a queries-only phase, took of the gateway, PostgreSQL and the load
    generator: the CPU from the phase's start until its last simulator ended
    (``whole``: :meth:`CpuMeter.delta`), over every answer of the phase."""
    paid = sum(b["payments_ok"] for b in ph["banks"].values())
    per, n = ("payment", paid) if paid else ("query", sum(b["queries"]
                                                          for b in ph["banks"].values()))
    if not n:
        return None
    sims = sum(b["sim_cpu_s"] for b in ph["banks"].values())
    return {"per": per, "count": n, "gateway": whole["gateway_cpu_s"] * 1000 / n,
            "postgres": whole["postgres_cpu_s"] * 1000 / n, "simulators": sims * 1000 / n}


def _pct(sorted_ms: list[float], p: float) -> float:
    if not sorted_ms:
        return 0.0
    return sorted_ms[max(1, math.ceil(p / 100 * len(sorted_ms))) - 1]


def _lat(seconds: list[float]) -> dict:
    ms = sorted(s * 1000 for s in seconds)
    return {"count": len(ms), "p50": _pct(ms, 50), "p95": _pct(ms, 95), "p99": _pct(ms, 99),
            "max": ms[-1] if ms else 0.0, "mean": sum(ms) / len(ms) if ms else 0.0}


def aggregate(name: str, results: dict, cpu: dict, rate: float, duration: float) -> dict:
    banks = {}
    all_pay: list[float] = []
    all_query: list[float] = []
    pay_rate = query_rate = 0.0
    errors = Counter()
    unfinished = 0
    sim_cpu = 0.0
    for bank, r in results.items():
        ok = APPROVED[bank]
        answered = Counter()
        by_op = Counter()  # answers per operation, whatever the code
        for op, code, n in r["answered"]:
            answered[(op, code)] += n
            by_op[op] += n
        two_phase = r.get("two_phase", False)
        unconfirmed = 0
        if two_phase:  # a payment is a prepay then its confirm: count the confirms
            paid = answered[("confirm", ok)]
            pay_answers = by_op["prepay"] + by_op["confirm"] - answered[("prepay", ok)]
            unconfirmed = answered[("prepay", ok)] - by_op["confirm"]  # left pending
        else:
            paid = answered[("pay", ok)]
            pay_answers = by_op["pay"]
        queries = by_op["query"]
        el = r["elapsed"] or duration
        lat_pay = r["latencies"].get("pay", [])
        lat_query = r["latencies"].get("query", [])
        all_pay += lat_pay
        all_query += lat_query
        pay_rate += paid / el
        query_rate += queries / el
        for k, n in r["summary"]["errors"].items():
            errors[f"{bank}:{k}"] += n
        unfinished += r["summary"]["unfinished"]
        sim_cpu += r["cpu_s"]
        banks[bank] = {
            "elapsed_s": el, "scenarios": r["summary"]["scenarios"],
            "payments_ok": paid, "payments_declined": pay_answers - paid,
            "queries": queries, "queries_not_approved": r["queries_not_approved"],
            "payments_per_s": paid / el, "queries_per_s": queries / el,
            "pay_ms": _lat(lat_pay), "query_ms": _lat(lat_query),
            "codes": {f"{op}:{code}": n for (op, code), n in sorted(answered.items())},
            "workers": r["workers"], "connections": r["connections"], "sim_cpu_s": r["cpu_s"],
            "two_phase": two_phase,
        }
        if two_phase:
            banks[bank].update({
                "prepay_ms": _lat(r["latencies"].get("prepay", [])),
                "confirm_ms": _lat(r["latencies"].get("confirm", [])),
                "pay_wall_ms": _lat(r["latencies"].get("pay_wall", [])),
                "prepays_unconfirmed": unconfirmed,
            })
    wall = cpu["wall_s"] or duration
    return {
        "phase": name, "rate_per_bank": rate, "duration_s": duration, "banks": banks,
        "payments_per_s": pay_rate, "queries_per_s": query_rate,
        "pay_ms": _lat(all_pay), "query_ms": _lat(all_query),
        "errors": dict(errors), "unfinished": unfinished,
        "cpu": {
            "gateway": cpu["gateway_cpu_s"] / wall,
            "gateway_reactor": cpu["reactor_cpu_s"] / wall,
            "supervisor": cpu["supervisor_cpu_s"] / wall,
            "workers": cpu["workers"],
            "workers_ended": cpu["workers_ended"],
            "each_worker": [t / wall for t in cpu["each_worker_cpu_s"]],
            "postgres": cpu["postgres_cpu_s"] / wall,
            "simulators": sim_cpu / wall,
            "machine_busy": cpu["machine_busy"],
            "others": cpu["others"],
            "softirq": cpu["softirq"] * (os.cpu_count() or 1),
        },
    }


def print_phase(ph: dict) -> None:
    offered = ("as fast as possible" if ph["rate_per_bank"] <= 0
               else f"{ph['rate_per_bank']:g} scenarios/s per bank offered")
    kind = ("payments of a known due, no query first" if ph.get("direct")
            else "queries only" if ph["phase"] == "queries"
            else "each payment after its query (counter flow)")
    say(f"\n== {ph['phase']}: {ph['duration_s']:g} s, {offered}; {kind}")
    say(f"{'bank':<14}{'workers':>8}{'pay/s':>9}{'query/s':>9}{'pay p50':>9}{'p95':>8}"
        f"{'p99':>8}{'max':>8}{'query p50':>10}{'p99':>8}  declined/not-due")
    for bank, b in ph["banks"].items():
        p, q = b["pay_ms"], b["query_ms"]
        bank = f"{bank}*" if b.get("two_phase") else bank
        say(f"{bank:<14}{b['workers']:>8}{b['payments_per_s']:>9.1f}{b['queries_per_s']:>9.1f}"
            f"{p['p50']:>9.1f}{p['p95']:>8.1f}{p['p99']:>8.1f}{p['max']:>8.1f}"
            f"{q['p50']:>10.1f}{q['p99']:>8.1f}  "
            f"{b['payments_declined']}/{b['queries_not_approved']}")
    p, q = ph["pay_ms"], ph["query_ms"]
    say(f"{'all':<14}{'':>8}{ph['payments_per_s']:>9.1f}{ph['queries_per_s']:>9.1f}"
        f"{p['p50']:>9.1f}{p['p95']:>8.1f}{p['p99']:>8.1f}{p['max']:>8.1f}"
        f"{q['p50']:>10.1f}{q['p99']:>8.1f}   (latencies in ms)")
    for bank, b in ph["banks"].items():
        if b.get("two_phase") and not b["pay_ms"]["count"]:
            say(f"* {bank} is two-phase: a payment = prepay + confirm (none in this phase)")
        elif b.get("two_phase"):
            pp, cf, w = b["prepay_ms"], b["confirm_ms"], b["pay_wall_ms"]
            say(f"* {bank} is two-phase: a payment = prepay + confirm (two short connections); "
                f"pay/s counts confirmed payments, pay latency = the prepay's round trip + the "
                f"confirm's. prepay p50/p99 {pp['p50']:.1f}/{pp['p99']:.1f}, confirm "
                f"{cf['p50']:.1f}/{cf['p99']:.1f}, whole payment with both connects "
                f"{w['p50']:.1f}/{w['p99']:.1f} ms; prepays left unconfirmed: "
                f"{b['prepays_unconfirmed']}")
    c = ph["cpu"]
    other = c["machine_busy"] * (os.cpu_count() or 1) - c["gateway"] - c["postgres"] \
        - c["simulators"] - c.get("console_clients", 0.0)
    workers = c.get("workers", 0)
    if workers:
        served = c["gateway"] - c["supervisor"]
        each = "+".join(f"{x:.2f}" for x in c.get("each_worker", []))
        split = (f"supervisor {c['supervisor']:.2f}; {workers} workers {served:.2f} = {each}: "
                 f"reactor threads {c['gateway_reactor']:.2f}, database threads "
                 f"{served - c['gateway_reactor']:.2f}")
    else:
        split = (f"reactor thread {c['gateway_reactor']:.2f}, database threads "
                 f"{c['gateway'] - c['gateway_reactor']:.2f}")
    say(f"CPU (cores): gateway {c['gateway']:.2f} ({split}), "
        f"postgres {c['postgres']:.2f}, "
        f"simulators {c['simulators']:.2f}, "
        + (f"console clients {c['console_clients']:.2f}, " if "console_clients" in c else "")
        + "the rest (kernel softirq, other processes) "
        f"{max(other, 0.0):.2f}; machine busy {c['machine_busy'] * 100:.0f}% of "
        f"{os.cpu_count()} cores")
    ms = ph.get("cpu_ms")
    if ms:
        say(f"CPU per {ms['per']} (ms, the whole phase over its {ms['count']:,} answers): gateway "
            f"{ms['gateway']:.2f}, postgres {ms['postgres']:.2f}, simulators "
            f"{ms['simulators']:.2f}")
    if c.get("workers_ended"):
        say(f"WARNING: {c['workers_ended']} worker(s) ended during the phase (the gateway log "
            "says why): their CPU is missing above")
    if ph.get("late_start_s", 0.0) > 0.5:
        say(f"WARNING: a simulator started {ph['late_start_s']:.1f} s late (busy machine): "
            "the CPU figures above cover part of the load only")
    if c.get("others"):
        say(f"of the rest: interrupts/softirq {c.get('softirq', 0.0):.2f}; other processes "
            "(cores): " + ", ".join(f"{k} {v:.2f}" for k, v in c["others"].items()))
    if ph["errors"] or ph["unfinished"]:
        say(f"errors: {ph['errors']}, unfinished: {ph['unfinished']}")
    if ph.get("console"):
        print_console_clients(ph["console"])


def print_console_clients(c: dict) -> None:
    ev = c["events_per_s_per_client"]
    say(f"console clients: {c['clients']} signed in (one process), each following "
        f"/api/live/stream: live events/s per client min {ev['min']:.2f}, mean "
        f"{ev['mean']:.2f}, max {ev['max']:.2f} (the stream sends one a second); "
        f"{c['events']:,} events in {c['window_s']:.1f} s; the most payments/min they showed "
        f"{c['payments_per_minute_seen']:,}")
    say("  and every " + f"{c['poll_s']:g} s each: "
        + ", ".join(f"{what} x {f['count']} (p50 {f['p50']:.1f}, p99 {f['p99']:.1f} ms)"
                    for what, f in c["fetches"].items())
        + f"; HTTP errors {c['http_errors']}"
        + (f": {c['errors']}" if c["errors"] else ""))


# =============================================================================
# profile of the gateway (py-spy raw output)
# =============================================================================


def print_profile(path: str, top: int = 25) -> dict:
    """Top functions by own and by inclusive samples from py-spy's collapsed stacks."""
    own: Counter = Counter()
    incl: Counter = Counter()
    threads: Counter = Counter()
    processes: Counter = Counter()  # with workers (py-spy --subprocesses)
    total = 0
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        say(f"no profile at {path}")
        return {}
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        n = int(n)
        # --subprocesses: 'process PID:"COMMAND LINE";' for the supervisor, then for the
        # worker when the sample is a worker's (a command line may hold ";")
        head = ""
        while stack.startswith("process "):
            head, sep, stack = stack.partition('";')
        if head:
            processes["workers" if "--worker-of" in head else "supervisor"] += n
        frames = stack.split(";")
        if frames and frames[0].startswith(("process ", "thread ")):
            frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        short = [_short(f) for f in frames]
        own[short[-1]] += n
        # py-spy --nonblocking sometimes returns a generator's frames without their callers
        # (psycopg's): those are database threads too
        threads["reactor thread" if any(f.startswith("ReactorBase.mainLoop") for f in short)
                else "database threads" if any(f.startswith("Store.run_sync")
                                               or "(psycopg/" in f or "(sqlalchemy/" in f
                                               or "(engine/" in f for f in short)
                else "other (truncated stacks)"] += n
        for f in set(short):
            if not f.endswith(_PLUMBING):
                incl[f] += n
    if not total:
        say("profile: no samples")
        return {}
    say(f"\n== gateway profile (py-spy --gil: {total} samples of the thread holding the GIL, "
        "i.e. where the gateway's Python CPU goes)")
    if processes:
        say("by process: " + ", ".join(f"{k} {v / total * 100:.0f}%"
                                       for k, v in processes.most_common()))
    say("by thread: " + ", ".join(f"{k} {v / total * 100:.0f}%" for k, v in threads.items()))
    say("own time (the function itself):")
    for f, n in own.most_common(top):
        say(f"  {n / total * 100:5.1f}%  {f}")
    say("inclusive (the function and what it calls; thread and reactor plumbing left out):")
    for f, n in incl.most_common(top):
        say(f"  {n / total * 100:5.1f}%  {f}")
    return {"samples": total,
            "own": [[f, n / total] for f, n in own.most_common(top)],
            "inclusive": [[f, n / total] for f, n in incl.most_common(top)]}


_PLUMBING = ("(threading.py)", "(_threads/_threadworker.py)", "(_threads/_team.py)",
             "(python/context.py)", "(python/threadpool.py)", "(application/app.py)",
             "(scripts/twistd.py)", "(scripts/_twistd_unix.py)", "(<string>)")


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    parts = Path(file).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else file
    return f"{name} ({short})"


# =============================================================================
# bench/ledger.py, run from here or read from a saved run
# =============================================================================

_LEDGER_ROW = re.compile(r"^(payments|queries)\s+ledger\s+([\d,]+)/s\s+baseline\s+([\d,]+)/s"
                         r"\s+ledger/baseline\s+([\d.]+)", re.MULTILINE)


def parse_ledger(text: str) -> dict | None:
    """The figures of ``bench/ledger.py``'s printed summary (its lines ``payments
    ledger 1,251/s   baseline 1,761/s   ledger/baseline 0.71``, and ``queries``
    alike), with its thread count and database; ``None`` when it has none."""
    out: dict = {}
    for kind, ledger, baseline, ratio in _LEDGER_ROW.findall(text):
        out[kind] = {"ledger": float(ledger.replace(",", "")),
                     "baseline": float(baseline.replace(",", "")), "ratio": float(ratio)}
    if not out:
        return None
    threads = re.search(r"(\d+) threads", text)
    db = re.search(r"bankgate ledger benchmark: (\w+)", text)
    out["threads"] = int(threads.group(1)) if threads else None
    out["database"] = db.group(1) if db else None
    return out


def run_ledger(url: str, customers: int, work: Path, seconds: float = LEDGER_SECONDS) -> str:
    """``bench/ledger.py`` on this database (the gateway stopped), ``seconds`` per phase:
    its output, kept in the work folder and printed."""
    import sqlalchemy as sa

    args = ["--customers", str(customers), "--threads", str(LEDGER_THREADS),
            "--seconds", f"{seconds:g}"]
    shown = sa.engine.make_url(url).render_as_string(hide_password=True)
    say(f"\n== bench/ledger.py --url {shown} {' '.join(args)}")
    out = work / "ledger.txt"
    with out.open("w") as fh:
        try:
            done = subprocess.run([sys.executable, str(ROOT / "bench" / "ledger.py"),
                                   "--url", url, *args], cwd=ROOT, stdout=fh,
                                  stderr=subprocess.STDOUT, timeout=900)
            status = f"exit {done.returncode}"
        except subprocess.TimeoutExpired:
            status = "stopped after 900 s"
    text = out.read_text(errors="replace")
    say(text.rstrip())
    say(f"(bench/ledger.py: {status})")
    return text


def machine_line() -> str:
    """The processor, cores, memory and system, for the record of a run."""
    model = "unknown processor"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text()
                  .splitlines() if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError):
        kb = 0
    return (f"{model}, {os.cpu_count()} cores, {kb / 1024 / 1024:.0f} GB, "
            f"Linux {os.uname().release}, Python {sys.version.split()[0]}")


# =============================================================================
# codec micro-benchmark: ref-iso8583 against pyiso8583
# =============================================================================


def _iso_spec() -> dict:
    def f(enc, len_type, max_len, desc, len_enc="ascii"):
        return {"data_enc": enc, "len_enc": len_enc, "len_type": len_type, "max_len": max_len,
                "desc": desc, "len_count": "bytes"}

    return {
        "h": f("b", 0, 5, "TPDU"),
        "t": f("ascii", 0, 4, "MTI"),
        "p": f("b", 0, 8, "Primary bitmap"),
        "1": f("b", 0, 8, "Secondary bitmap"),
        "2": f("ascii", 2, 19, "PAN"),
        "3": f("ascii", 0, 6, "Processing code"),
        "4": f("ascii", 0, 12, "Amount"),
        "7": f("ascii", 0, 10, "Transmission date and time"),
        "11": f("ascii", 0, 6, "STAN"),
        "12": f("ascii", 0, 6, "Local time"),
        "13": f("ascii", 0, 4, "Local date"),
        "15": f("ascii", 0, 4, "Settlement date"),
        "32": f("ascii", 2, 11, "Acquiring institution"),
        "37": f("ascii", 0, 12, "RRN"),
        "38": f("ascii", 0, 6, "Authorisation id"),
        "39": f("ascii", 0, 2, "Response code"),
        "41": f("ascii", 0, 8, "Terminal id"),
        "42": f("ascii", 0, 15, "Card acceptor id"),
        "48": f("gbk", 3, 999, "Private data"),
        "49": f("ascii", 0, 3, "Currency"),
        "60": f("ascii", 3, 999, "Network management code"),
        "62": f("b", 3, 999, "Working key"),
        "64": f("b", 0, 8, "MAC"),
        "90": f("ascii", 0, 42, "Original data elements"),
        "128": f("b", 0, 8, "MAC"),
    }


def _best(fn, repeat: int = 5) -> float:
    """Seconds per call: timeit's autorange loop count, best of ``repeat``."""
    t = timeit.Timer(fn)
    number, _ = t.autorange()
    number = max(number, 1)
    return min(t.repeat(repeat, number)) / number


def codec_bench(repeat: int = 5) -> dict:
    import iso8583

    from bankgate.canon.messages import Outcome, PaymentResult
    from bankgate.codec.base import BankKeys, BankProfile, Dispatch, Session
    from bankgate.codec.crypto import X919, macs_equal
    from bankgate.codec.registry import load_codec

    codec = load_codec("ref-iso8583")
    mod = sys.modules[type(codec).__module__]
    tz = ZoneInfo(TZ)
    fixed_now = datetime.now(tz).replace(tzinfo=None, microsecond=0)
    profile = BankProfile(name="demo-iso8583", plugin="ref-iso8583", bank_code="104210",
                          keys=BankKeys(zmk=bytes.fromhex(KEY)), mac=True,
                          allow=("127.0.0.0/8",))
    mak = bytes.fromhex("89ABCDEF0123456776543210FEDCBA98")
    bank = Session(bank=profile, now=lambda: fixed_now)
    gw = Session(bank=profile, peer_host="127.0.0.1", now=lambda: fixed_now)
    bank.state["mak"] = gw.state["mak"] = mak
    values = {
        "stan": 123, "transmission": fixed_now.strftime("%m%d%H%M%S"),
        "trade_time": fixed_now.strftime("%H%M%S"), "trade_date": fixed_now.date(),
        "rrn": "104210000123", "customer_no": "100000123", "amount": 1234567,
        "terminal_id": "T0000001", "branch": "000000000",
    }
    result = PaymentResult(Outcome.OK, customer_no="100000123", amount=1234567,
                           receipt_no="20240101000000012345", invoice_no="", remaining_due=0)

    # -- ours: the same calls the simulator and the gateway make -------------------
    req = codec.client_encode("pay", values, bank)
    action = codec.decode(req, gw)
    if not isinstance(action, Dispatch):
        raise RuntimeError(f"codec benchmark: the 0200 was not dispatched: {action!r}")
    resp = action.encode(result)
    answer = codec.client_decode(resp, bank)
    if answer["response_code"] != "00" or answer["mac_ok"] is not True:
        raise RuntimeError(f"codec benchmark: bad 0210: {answer!r}")

    def ours_req():
        codec.decode(codec.client_encode("pay", values, bank), gw)

    def ours_resp():
        codec.client_decode(action.encode(result), bank)

    # the layouts alone (no MAC, no checks): assemble + the gateway's scan
    req_fields = mod._scan(req).fields
    resp_fields = mod._scan(resp).fields
    tpdu = req[:5]

    def layout_req():
        f = dict(req_fields)
        mod._scan(mod.assemble(tpdu, b"0200", {k: v for k, v in f.items() if k != 64}, 64))

    def layout_resp():
        f = dict(resp_fields)
        mod._scan(mod.assemble(tpdu, b"0210", {k: v for k, v in f.items() if k != 64}, 64))

    # -- pyiso8583: the same two messages -----------------------------------------------
    spec = _iso_spec()

    def as_doc(frame: bytes, mti: str) -> dict:
        doc = {"h": frame[:5].hex().upper(), "t": mti}
        for n, v in mod._scan(frame).fields.items():
            doc[str(n)] = v.hex().upper() if n in (62, 64, 128) else (
                v.decode("gbk") if n == 48 else v.decode("ascii"))
        return doc

    doc_req = as_doc(req, "0200")
    doc_resp = as_doc(resp, "0210")
    for doc, frame in ((doc_req, req), (doc_resp, resp)):
        raw, _ = iso8583.encode(dict(doc), spec)
        if bytes(raw) != frame:
            raise RuntimeError("codec benchmark: pyiso8583 does not build the same bytes")

    def py_req():
        raw, _ = iso8583.encode(dict(doc_req), spec)
        iso8583.decode(raw, spec)

    def py_resp():
        raw, _ = iso8583.encode(dict(doc_resp), spec)
        iso8583.decode(raw, spec)

    # pyiso8583 with the same X9.19 MAC computed on encode and checked on decode
    x919 = X919(mak)

    def py_mac(doc):
        d = dict(doc)
        d["64"] = "0000000000000000"
        raw, _ = iso8583.encode(d, spec)
        raw[-8:] = x919.mac(bytes(raw[5:-8]))
        dec, _ = iso8583.decode(bytes(raw), spec)
        if not macs_equal(x919.mac(bytes(raw[5:-8])), bytes.fromhex(dec["64"])):
            raise AssertionError("MAC")

    rows = {
        "0200 ours (client_encode + gateway decode)": _best(ours_req, repeat),
        "0210 ours (gateway encode + client_decode)": _best(ours_resp, repeat),
        "0200 pyiso8583 (encode + decode)": _best(py_req, repeat),
        "0210 pyiso8583 (encode + decode)": _best(py_resp, repeat),
        "0200 pyiso8583 + X9.19 MAC": _best(lambda: py_mac(doc_req), repeat),
        "0210 pyiso8583 + X9.19 MAC": _best(lambda: py_mac(doc_resp), repeat),
        "0200 ours, layout only (assemble + scan)": _best(layout_req, repeat),
        "0210 ours, layout only (assemble + scan)": _best(layout_resp, repeat),
    }
    ops = {k: 1.0 / v for k, v in rows.items()}

    def pair(a: str, b: str) -> float:  # ops/s over a 0200 and a 0210
        return 2.0 / (rows[a] + rows[b])

    ours = pair("0200 ours (client_encode + gateway decode)",
                "0210 ours (gateway encode + client_decode)")
    py = pair("0200 pyiso8583 (encode + decode)", "0210 pyiso8583 (encode + decode)")
    py_mac_ops = pair("0200 pyiso8583 + X9.19 MAC", "0210 pyiso8583 + X9.19 MAC")
    layout = pair("0200 ours, layout only (assemble + scan)",
                  "0210 ours, layout only (assemble + scan)")
    return {"ops": ops, "ours": ours, "pyiso8583": py, "pyiso8583_mac": py_mac_ops,
            "layout": layout, "ratio": ours / py, "ratio_mac": ours / py_mac_ops,
            "ratio_layout": layout / py, "frame_bytes": {"0200": len(req), "0210": len(resp)}}


def print_codec(c: dict) -> None:
    say(f"\n== codec: ref-iso8583 0200 ({c['frame_bytes']['0200']} bytes) and 0210 "
        f"({c['frame_bytes']['0210']} bytes); one op = encode one message + decode one "
        "message; best of 5")
    for k, v in c["ops"].items():
        say(f"  {k:<46}{v:>12,.0f} ops/s")
    say(f"  0200+0210 ours {c['ours']:,.0f} ops/s, pyiso8583 {c['pyiso8583']:,.0f} ops/s: "
        f"ratio {c['ratio']:.2f}")
    say(f"  like for like (pyiso8583 with the same MAC): {c['pyiso8583_mac']:,.0f} ops/s, "
        f"ratio {c['ratio_mac']:.2f}; our layout alone {c['layout']:,.0f} ops/s, "
        f"ratio {c['ratio_layout']:.2f}")


# =============================================================================
# main
# =============================================================================


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=DEFAULT_URL, help=f"database (default {DEFAULT_URL})")
    p.add_argument("--customers", type=int, help="demo customers (default 1,000,000)")
    p.add_argument("--duration", type=float, help="seconds of saturation and latency load "
                                                   "(default 20)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 20,000 customers (a larger database is reused), 5 s")
    p.add_argument("--workers", type=int, default=WORKERS,
                   help="worker processes of the gateway for every phase but the workers "
                        f"pair ([gateway] workers; default {WORKERS}; 1: one process)")
    p.add_argument("--db-threads", type=int, default=8,
                   help="gateway database threads, per worker process (8)")
    p.add_argument("--concurrency", type=int, default=16,
                   help="requests in flight per bank at saturation (default 16)")
    p.add_argument("--in-flight", type=int, default=4,
                   help="ref-iso8583: requests pipelined per connection (default 4)")
    p.add_argument("--warmup", type=float,
                   help="seconds of unmeasured load after each start of the gateway (default 3)")
    p.add_argument("--latency-rate", type=float,
                   help="latency phases: payment scenarios per second and bank (default "
                        f"{LATENCY_OFFERED:g} / the number of banks: 75 each for four)")
    p.add_argument("--console-clients", type=int, default=CONSOLE_CLIENTS,
                   help="console phase pair: console clients following the live view in its "
                        f"second phase (default {CONSOLE_CLIENTS}; 0 leaves the pair out)")
    p.add_argument("--console-rate", type=float, default=CONSOLE_RATE,
                   help="console phase pair: payments/s offered to the banks together, each "
                        f"after its query (default {CONSOLE_RATE:g})")
    p.add_argument("--console-flow", choices=("counter", "payonly"), default="counter",
                   help="console phase pair: each payment after its query (counter, the "
                        "default, as the latency phase) or payments of a known due only "
                        "(payonly, as payonly-latency)")
    p.add_argument("--console-poll", type=float, default=CONSOLE_POLL,
                   help="console clients: seconds between two fetches of /api/overview, and "
                        f"of the page / (default {CONSOLE_POLL:g}, as overview.js)")
    p.add_argument("--banks", default=",".join(BANKS),
                   help=f"the banks to drive (default {','.join(BANKS)}); the gateway "
                        "listens for all four either way")
    p.add_argument("--phases", default=",".join(PHASES),
                   help=f"load phases to run, in order (default {','.join(PHASES)})")
    p.add_argument("--skip-load", action="store_true", help="the codec benchmark only")
    p.add_argument("--skip-codec", action="store_true", help="no codec benchmark")
    p.add_argument("--ledger", action="store_true",
                   help=f"also run bench/ledger.py on the same database ({LEDGER_THREADS} "
                        f"threads, {LEDGER_SECONDS:g} s phases, 3 s with --quick) once the "
                        "gateway has stopped; its figures go into the summary")
    p.add_argument("--ledger-output", metavar="FILE",
                   help="read the ledger's figures for the summary from this saved output of "
                        "bench/ledger.py instead")
    p.add_argument("--profile", action="store_true",
                   help="py-spy the gateway, its workers included, during saturation "
                        "(pip install py-spy)")
    p.add_argument("--cprofile", action="store_true",
                   help="run the gateway under twistd's cProfile (slower; stats printed; "
                        "with workers, the supervisor only)")
    p.add_argument("--switch-interval", type=float,
                   help="experiment: the gateway's sys.setswitchinterval (default Python's "
                        "0.005 s; with workers, the supervisor's only)")
    p.add_argument("--gc-stats", action="store_true",
                   help="experiment: time the gateway's garbage collections (with workers, "
                        "the supervisor's only)")
    p.add_argument("--gc-freeze", type=float, metavar="SECONDS",
                   help="experiment: gc.freeze() in the gateway this long after it starts "
                        "(implies --gc-stats)")
    p.add_argument("--wait-idle", type=float, default=60.0,
                   help="before each phase, wait up to this many seconds for other processes "
                        "to leave the CPU (default 60; the machine may be shared)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (config, logs)")
    p.add_argument("--json", help="also write all figures to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--console-worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker_main(a.worker)
        return 0
    if a.console_worker:
        console_worker_main(a.console_worker)
        return 0
    if a.console_clients < 0 or a.console_rate <= 0 or a.console_poll < 1:
        p.error("--console-clients: 0 or more; --console-rate: above 0; "
                "--console-poll: 1 s or more")
    if not 1 <= a.workers <= 64:
        p.error(f"--workers: 1 to 64, got {a.workers}")
    if a.ledger and a.ledger_output:
        p.error("--ledger runs bench/ledger.py, --ledger-output reads a saved run: one of them")
    ledger_text = None
    if a.ledger_output:
        try:
            ledger_text = Path(a.ledger_output).read_text(errors="replace")
        except OSError as e:
            p.error(f"--ledger-output: cannot read {a.ledger_output}: {e.strerror}")
        if parse_ledger(ledger_text) is None:
            p.error(f"--ledger-output: {a.ledger_output} holds no summary of bench/ledger.py "
                    "(its 'payments  ledger .../s   baseline .../s' lines)")
    customers = a.customers or (20_000 if a.quick else 1_000_000)
    duration = a.duration or (5.0 if a.quick else 20.0)
    warmup = a.warmup if a.warmup is not None else (2.0 if a.quick else 3.0)
    banks = tuple(dict.fromkeys(x.strip() for x in a.banks.split(",") if x.strip()))
    if not banks or set(banks) - set(BANKS):
        p.error(f"--banks: unknown bank(s) {', '.join(sorted(set(banks) - set(BANKS)))} "
                f"(known: {', '.join(BANKS)})")
    latency_rate = a.latency_rate or LATENCY_OFFERED / len(banks)
    wanted = [x.strip() for x in a.phases.split(",") if x.strip()]
    unknown = set(wanted) - set(PHASES)
    if unknown:
        p.error(f"unknown phase(s) {', '.join(sorted(unknown))} (known: {', '.join(PHASES)})")
    report: dict = {"customers": customers, "duration_s": duration, "db_threads": a.db_threads,
                    "workers": a.workers, "concurrency": a.concurrency,
                    "cpus": os.cpu_count(), "date": date.today().isoformat(),
                    "machine": machine_line(), "banks": list(banks)}
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="bankgate-bench-e2e-"))
    phases: dict[str, dict] = {}
    gw = None
    died = False
    try:
        if not a.skip_load:
            store = prepare_database(a.url, customers)
            rng = random.Random(int(time.time()))
            if "console" in wanted and not a.console_clients:
                say("--console-clients 0: the console phase pair is left out")
                wanted.remove("console")
            console_rate = a.console_rate / len(banks)  # scenarios/s per bank
            # fresh customers per phase and bank, each paid once (a payment clears what the
            # customer owes); pools sized for RATE_GUESS payments/s at saturation; each start
            # of the gateway is warmed up with customers of its own
            lat_n = int(latency_rate * duration * 1.2)
            per_bank = RATE_GUESS / len(banks)
            sat_n = int(per_bank * duration)
            con_n = int(console_rate * duration * 1.2)
            starts = (["main"] if set(wanted) - {"workers"} else []) \
                + ([f"w{n}" for n in WORKERS_PAIR] if "workers" in wanted else [])
            need = {f"warmup-{g}": int(per_bank * warmup) for g in starts}
            need.update({"latency": lat_n, "payonly-latency": lat_n,
                         "saturation": sat_n, "payonly": sat_n, "queries": 2000,
                         "paced": con_n, "paced-console": con_n,
                         **{f"workers-{n}": sat_n for n in WORKERS_PAIR}})
            pair = {"paced": "console", "paced-console": "console",
                    **{f"workers-{n}": "workers" for n in WORKERS_PAIR}}
            need = {k: n for k, n in need.items()
                    if k.startswith("warmup-") or pair.get(k, k) in wanted}
            want = len(banks) * sum(need.values())
            population = store.customer_count()
            report["customers"] = population
            picked = open_customers(store, population, want, rng)
            if len(picked) < min(want, population) // 2:
                say(f"only {len(picked):,} customers still owe something: re-seeding")
                seed(store, max(customers, population))
                report["customers"] = store.customer_count()
                picked = open_customers(store, report["customers"], want, rng)
            if len(picked) < want:
                say(f"{len(picked):,} fresh customers for {want:,} wanted: payment scenarios "
                    "may meet customers already paid (shown as not-due)")
            cust: dict[str, dict[str, list[str]]] = {}
            scale = min(1.0, len(picked) / want) if want else 1.0
            for i, b in enumerate(banks):
                pool, at = picked[i::len(banks)], 0
                for ph, n in need.items():
                    n = max(1, int(n * scale))
                    cust.setdefault(ph, {})[b] = pool[at:at + n] or pool
                    at += n
            dues: dict[str, list] = {}
            direct = [ph for ph in ("payonly", "payonly-latency") if ph in wanted]
            if "console" in wanted and a.console_flow == "payonly":
                direct += ["paced", "paced-console"]
            if direct:
                t1 = time.monotonic()
                for ph in direct:
                    for b in banks:
                        dues.update(compute_dues(store, cust[ph][b]))
                say(f"dues of {len(dues):,} customers read for the payment-only phases "
                    f"({time.monotonic() - t1:.1f} s)")
            password = console_account(store) if "console" in wanted else None
            footprint = table_footprint(store.engine) if store.dialect == "postgresql" else None
            store.stop()
            twistd_args = []
            if a.cprofile:
                twistd_args = [f"--profile={work / 'gateway.pstats'}", "--profiler=cprofile",
                               "--savestats"]
            load = dict(concurrency=a.concurrency, in_flight=a.in_flight, wait=a.wait_idle)
            pay = {"pay": 1.0}

            def start(label: str, workers: int, console: bool = False) -> Gateway:
                """A gateway of ``workers`` processes started (the one before it stopped)
                and warmed up: the load of ``warmup-LABEL``, not counted."""
                nonlocal gw, died
                if gw is not None:
                    died = died or gw.proc.poll() is not None
                    gw.stop()
                gw = Gateway(work / f"gateway-{label}", a.url, a.db_threads, twistd_args,
                             a.switch_interval, a.gc_stats, a.gc_freeze, console=console,
                             workers=workers, label=label)
                gw.start()
                say(f"\ngateway pid {gw.proc.pid}, "
                    + (f"{workers} workers (pids {', '.join(map(str, gw.worker_pids()))}), "
                       if workers > 1 else "one process, ")
                    + "listening: " + ", ".join(f"{b} {port}" for b, port in gw.ports.items())
                    + (f", console {gw.console_port}" if gw.console_port else ""))
                if warmup > 0:
                    run_phase(gw, work, f"warmup-{label}", cust[f"warmup-{label}"], rate=0,
                              duration=warmup, mix=pay, seed=1, **load)
                return gw

            spy = str(work / "gateway.pyspy.txt") if a.profile else None
            for ph in wanted:
                if ph == "workers":  # the pair: a gateway of its own for each half
                    for n in WORKERS_PAIR:
                        start(f"w{n}", n)
                        key = f"workers-{n}"
                        phases[key] = run_phase(
                            gw, work, key, cust[key], rate=0, duration=duration, mix=pay,
                            seed=6, profile=spy if (key == "workers-2" and "saturation"
                                                     not in wanted) else None, **load)
                        print_phase(phases[key])
                    report["workers_pair"] = workers_compare(
                        *(phases[f"workers-{n}"] for n in WORKERS_PAIR))
                    print_workers_compare(report["workers_pair"])
                    if spy and "saturation" not in wanted:
                        report["profile"] = print_profile(spy)
                    continue
                if gw is None or gw.label != "main":
                    start("main", a.workers, console=password is not None)
                if ph in ("saturation", "payonly"):
                    r = run_phase(gw, work, ph, cust[ph], rate=0, duration=duration, mix=pay,
                                  seed=2, profile=spy if ph == "saturation" else None,
                                  dues=dues if ph == "payonly" else None, **load)
                elif ph == "queries":
                    r = run_phase(gw, work, ph, cust["queries"], rate=0,
                                  duration=max(2.0, duration / 2), mix={"query": 1.0}, seed=3,
                                  **load)
                elif ph == "console":  # the pair, back to back: without, then with
                    for key, console in (("paced", None), ("paced-console", {
                            "clients": a.console_clients, "poll": a.console_poll,
                            "password": password})):
                        phases[key] = run_phase(
                            gw, work, key, cust[key], rate=console_rate, duration=duration,
                            mix=pay, seed=5, console=console,
                            dues=dues if a.console_flow == "payonly" else None, **load)
                        print_phase(phases[key])
                    report["console"] = console_compare(phases["paced"],
                                                        phases["paced-console"])
                    print_console_compare(report["console"])
                    continue
                else:  # latency, payonly-latency
                    r = run_phase(gw, work, ph, cust[ph], rate=latency_rate,
                                  duration=duration, mix=pay, seed=4,
                                  dues=dues if ph == "payonly-latency" else None, **load)
                phases[ph] = r
                print_phase(r)
                if ph == "saturation" and spy:
                    report["profile"] = print_profile(spy)
            if gw is not None:
                died = died or gw.proc.poll() is not None
                gw.stop()
            if footprint is not None:
                report["database"] = footprint_delta(footprint, a.url)
                print_footprint(report["database"])
            if gw is not None and gw.gc_stats:
                report["gateway_gc"] = gw.gc_stats_line()
                say(f"\ngateway garbage collections (generation: count, total ms, max ms, "
                    f"over 10 ms): {report['gateway_gc']}")
            if a.cprofile:
                print_cprofile(work / "gateway.pstats")
        if a.ledger:
            wait_idle(a.wait_idle, "bench/ledger.py")
            ledger_text = run_ledger(a.url, report["customers"], work,
                                     seconds=3.0 if a.quick else LEDGER_SECONDS)
        if ledger_text is not None:
            report["ledger"] = parse_ledger(ledger_text)
            if report["ledger"] is None:
                say("\nbench/ledger.py printed no summary this script understands: its "
                    "figures are left out of the summary")
        if not a.skip_codec:
            wait_idle(a.wait_idle, "the codec benchmark")
            report["codec"] = codec_bench()
            print_codec(report["codec"])
    except BaseException:
        died = True  # keep the work folder (configuration, gateway log) to look at
        raise
    finally:
        if gw is not None:
            gw.stop()
        if a.keep or died:
            say(f"\nwork folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report["phases"] = phases
    report["latency_offered"] = latency_rate * len(banks)
    report["seconds"] = round(time.monotonic() - t0, 1)
    summary(report)
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


def print_cprofile(path: Path, top: int = 30) -> None:
    import pstats

    if not path.exists():
        say(f"no cProfile statistics at {path}")
        return
    say("\n== gateway cProfile (twistd --profiler=cprofile), top by own time")
    st = pstats.Stats(str(path))
    st.sort_stats("tottime").print_stats(top)


def console_compare(without: dict, with_: dict) -> dict:
    """The console phase pair side by side: does following the live view slow the
    bank path?  The p99 of the payments with the console clients over the p99
    without, against :data:`TARGETS` ``console_p99_ratio``."""

    def side(ph: dict) -> dict:
        return {"payments_per_s": ph["payments_per_s"], "p50": ph["pay_ms"]["p50"],
                "p95": ph["pay_ms"]["p95"], "p99": ph["pay_ms"]["p99"],
                "payments": ph["pay_ms"]["count"], "gateway_cpu": ph["cpu"]["gateway"],
                "machine_busy": ph["cpu"]["machine_busy"], "busy_before": ph["busy_before"]}

    a, b = side(without), side(with_)
    ratio = b["p99"] / a["p99"] if a["p99"] else math.inf
    target = TARGETS["console_p99_ratio"]
    offered = without["rate_per_bank"] * len(without["banks"])
    return {"offered_per_s": offered, "duration_s": without["duration_s"],
            "banks": list(without["banks"]), "direct": without.get("direct", False),
            "without": a, "with": b, "p99_ratio": ratio, "target": target,
            "met": ratio <= target, "clients": with_["console"],
            # fewer payments than offered: the gateway did not keep up, and the
            # latencies are queueing at saturation, not the latency at that rate
            "kept_up": min(a["payments_per_s"], b["payments_per_s"]) >= 0.95 * offered}


def print_console_compare(c: dict) -> None:
    a, b, cl = c["without"], c["with"], c["clients"]
    n = len(c["banks"])
    say(f"\n== console: the bank path without and with {cl['clients']} console clients "
        f"(same run, back to back): {c['offered_per_s']:g} payments/s offered "
        f"({c['offered_per_s'] / n:g}/s to each of {n} banks, "
        f"{'a known due, no query first' if c['direct'] else 'each after its query'}), "
        f"{c['duration_s']:g} s each")
    say(f"{'':<34}{'without':>12}{'with':>12}")
    for label, key, fmt in (("payments/s reached", "payments_per_s", ".1f"),
                            ("payment p50 ms", "p50", ".1f"), ("payment p95 ms", "p95", ".1f"),
                            ("payment p99 ms", "p99", ".1f"),
                            ("payments timed", "payments", ",d"),
                            ("gateway CPU (cores)", "gateway_cpu", ".2f")):
        say(f"{label:<34}{a[key]:>12{fmt}}{b[key]:>12{fmt}}")
    say(f"p99 with / without: {c['p99_ratio']:.2f} (target <= {c['target']:.2f}): "
        f"{'met' if c['met'] else 'NOT met'}")
    if not c["kept_up"]:
        say(f"WARNING: the banks got fewer than the {c['offered_per_s']:g} payments/s offered: "
            "the gateway did not keep up, so these latencies are queueing at its saturation, "
            "not the latency at that rate ("
            + ("" if c["direct"] else "--console-flow payonly or ")
            + "a lower --console-rate measures where it keeps up)")
    say(f"the gateway, PostgreSQL, the bank load generator (one process per bank) and the "
        f"console clients (one more process) share this machine's {os.cpu_count()} cores: "
        f"machine busy {a['machine_busy'] * 100:.0f}% without, {b['machine_busy'] * 100:.0f}% "
        f"with (before the phases: "
        + ", ".join("-" if x is None else f"{x * 100:.0f}%"
                    for x in (a["busy_before"], b["busy_before"]))
        + "); a busy machine makes the p99 noisy, so read the ratio with that")


def workers_compare(one: dict, two: dict) -> dict:
    """The ``workers`` pair side by side: payments/s with 2 workers over 1, against
    :data:`TARGETS` ``workers_ratio``, and where the CPU went in each."""

    def side(ph: dict) -> dict:
        c, pps = ph["cpu"], ph["payments_per_s"]
        cores = os.cpu_count() or 1
        busy = c["machine_busy"] * cores
        rest = max(0.0, busy - c["gateway"] - c["postgres"] - c["simulators"])
        ms = ph.get("cpu_ms") or {}
        return {"payments_per_s": pps, "p50": ph["pay_ms"]["p50"], "p99": ph["pay_ms"]["p99"],
                "queries_per_s": ph["queries_per_s"], "workers": c.get("workers", 0),
                "gateway": c["gateway"], "supervisor": c["supervisor"],
                "reactor": c["gateway_reactor"], "postgres": c["postgres"],
                "simulators": c["simulators"], "rest": rest, "busy": c["machine_busy"],
                "busy_before": ph["busy_before"],
                # CPU per payment (a query and its payment), ms: the capacity model's inputs
                "ms_gateway": ms.get("gateway", 0.0), "ms_postgres": ms.get("postgres", 0.0),
                "ms_simulators": ms.get("simulators", 0.0)}

    a, b = side(one), side(two)
    ratio = b["payments_per_s"] / a["payments_per_s"] if a["payments_per_s"] else math.inf
    return {"duration_s": one["duration_s"], "banks": list(one["banks"]),
            "one": a, "two": b, "ratio": ratio, "target": TARGETS["workers_ratio"],
            "met": ratio >= TARGETS["workers_ratio"]}


def print_workers_compare(c: dict) -> None:
    a, b = c["one"], c["two"]
    cores = os.cpu_count() or 1
    say(f"\n== workers: saturation, each payment after its query, {c['duration_s']:g} s on "
        f"{len(c['banks'])} banks, on a gateway of 1 worker, then (restarted) of 2; the same "
        "database and load, fresh customers")
    say(f"{'':<44}{'1 worker':>12}{'2 workers':>12}")

    def row(label: str, key: str, fmt: str = ".2f") -> None:
        say(f"{label:<44}{a[key]:>12{fmt}}{b[key]:>12{fmt}}")

    row("payments/s", "payments_per_s", ",.1f")
    row("payment p50 ms", "p50", ".1f")
    row("payment p99 ms", "p99", ".1f")
    say("CPU, cores:")
    row("  gateway, all its processes", "gateway")
    say(f"{'    of it the supervisor (console, schedulers)':<44}{'-':>12}"
        f"{b['supervisor']:>12.2f}")
    row("    of it the reactor threads", "reactor")
    row("  PostgreSQL", "postgres")
    row("  load generator (one process per bank)", "simulators")
    row("  the rest (kernel softirq, other processes)", "rest")
    say(f"{'  machine busy, % of ' + str(cores) + ' cores':<44}{a['busy'] * 100:>12.0f}"
        f"{b['busy'] * 100:>12.0f}")
    say("CPU per payment (query + pay), ms:")
    row("  gateway", "ms_gateway")
    row("  PostgreSQL", "ms_postgres")
    row("  load generator", "ms_simulators")
    say(f"payments/s with 2 workers / 1 worker: {c['ratio']:.2f} (target >= {c['target']:g}): "
        f"{'met' if c['met'] else 'NOT met'}")
    if b["busy"] >= 0.9:
        say(f"with 2 workers the machine's {cores} cores were full: the gateway got "
            f"{b['gateway']:.2f} of them, PostgreSQL {b['postgres']:.2f}, the load generator "
            f"{b['simulators']:.2f}, the rest {b['rest']:.2f} -- a second worker gains only "
            "what PostgreSQL and the load generator leave it")
    else:
        say(f"with 2 workers the machine was {b['busy'] * 100:.0f}% busy, not full: the "
            "ceiling is not the CPU (look at the load generator's --concurrency and the "
            "database's locks)")


def summary(r: dict) -> None:
    """Every target next to its figure, met or not ("not run" when this run did not
    measure it), with the figures around them."""
    rows = []
    ph = r["phases"]
    codec = r.get("codec")
    missing = "not run"

    def target(name: str, figure: str | None, goal: str, met: bool | None,
               hint: str = "") -> None:
        rows.append((name, figure if figure is not None else missing, goal,
                     met if figure is not None else hint or "-"))

    def info(name: str, figure: str) -> None:
        rows.append((name, figure, "", None))

    sat = ph.get("saturation")
    workers = r.get("workers", 1)
    if sat is None and r.get("workers_pair"):  # the pair's halves are saturation too
        workers, sat = max(((n, ph[f"workers-{n}"]) for n in WORKERS_PAIR),
                           key=lambda x: x[1]["payments_per_s"])
    target(f"payments/s aggregate, each after its query ({workers} worker"
           f"{'s' if workers > 1 else ''})",
           f"{sat['payments_per_s']:,.0f}" if sat else None,
           f">= {TARGETS['payments_per_s']:,.0f}",
           sat and sat["payments_per_s"] >= TARGETS["payments_per_s"])
    if sat:
        info("  payment p50 / p99 ms at saturation",
             f"{sat['pay_ms']['p50']:.1f} / {sat['pay_ms']['p99']:.1f}")
        info("  queries/s alongside (one before each payment)",
             f"{sat['queries_per_s']:,.0f}")
    lat = ph.get("latency")
    at_target = lat is not None and abs(lat["rate_per_bank"] * len(lat["banks"])
                                        - LATENCY_OFFERED) < 0.5
    target(f"payment p99 ms at {LATENCY_OFFERED:g}/s offered, each after its query",
           f"{lat['pay_ms']['p99']:.1f}" if at_target else None,
           f"<= {TARGETS['p99_ms']:g}", at_target and lat["pay_ms"]["p99"] <= TARGETS["p99_ms"])
    if lat:
        offered = lat["rate_per_bank"] * len(lat["banks"])
        if not at_target:
            info(f"  payment p99 ms at {offered:g}/s offered (not the target's rate)",
                 f"{lat['pay_ms']['p99']:.1f}")
        info("  p50 / p95 ms; payments/s reached",
             f"{lat['pay_ms']['p50']:.1f} / {lat['pay_ms']['p95']:.1f}; "
             f"{lat['payments_per_s']:,.0f}")
    pair = r.get("workers_pair")
    target("payments/s with 2 workers / 1 worker (saturation)",
           f"{pair['ratio']:.2f}" if pair else None, f">= {TARGETS['workers_ratio']:g}",
           pair and pair["met"])
    if pair:
        info("  payments/s with 1 worker / 2 workers",
             f"{pair['one']['payments_per_s']:,.0f} / {pair['two']['payments_per_s']:,.0f}")
        info("  2 workers: CPU cores gateway / PostgreSQL / load gen.",
             f"{pair['two']['gateway']:.2f} / {pair['two']['postgres']:.2f} / "
             f"{pair['two']['simulators']:.2f}")
    led = r.get("ledger") or {}
    hint = "run bench/ledger.py (or --ledger)"
    threads = f"{led['threads']} threads" if led.get("threads") else "bench/ledger.py"
    for kind, goal in (("payments", TARGETS["ledger_payments_per_s"]),
                       ("queries", TARGETS["ledger_queries_per_s"])):
        x = led.get(kind)
        target(f"ledger {kind}/s ({threads})", f"{x['ledger']:,.0f}" if x else None,
               f">= {goal:,.0f}", x and x["ledger"] >= goal, hint)
        target(f"  ledger {kind}: ratio to the bare-driver baseline",
               f"{x['ratio']:.2f}" if x else None, f">= {TARGETS['ledger_ratio']:g}",
               x and x["ratio"] >= TARGETS["ledger_ratio"], hint)
    if led and led.get("database") != "postgresql":
        info("  (the ledger's targets are for PostgreSQL; this run was on)",
             str(led.get("database")))
    con = r.get("console")
    target("payment p99 with console clients / without",
           f"{con['p99_ratio']:.2f}" if con else None, f"<= {TARGETS['console_p99_ratio']:.2f}",
           con and con["met"])
    if con:
        w, o, n = con["with"], con["without"], con["clients"]["clients"]
        info(f"  p99 ms at {con['offered_per_s']:g}/s offered: without / with {n} clients",
             f"{o['p99']:.1f} / {w['p99']:.1f}")
        info("  payments/s reached without / with (of the offered)",
             f"{o['payments_per_s']:,.0f} / {w['payments_per_s']:,.0f} "
             f"({con['offered_per_s']:g})")
        ev = con["clients"]["events_per_s_per_client"]
        info("  console: live events/s per client, min; HTTP errors",
             f"{ev['min']:.2f}; {con['clients']['http_errors']}")
    target("codec ratio ours / pyiso8583 (0200 + 0210)",
           f"{codec['ratio']:.2f}" if codec else None, f">= {TARGETS['codec_ratio']:g}",
           codec and codec["ratio"] >= TARGETS["codec_ratio"])
    if codec:
        info("  ops/s ours / pyiso8583", f"{codec['ours']:,.0f} / {codec['pyiso8583']:,.0f}")
    po = ph.get("payonly")
    if po:
        info("payments/s aggregate, payments only (no query)", f"{po['payments_per_s']:,.0f}")
    pl = ph.get("payonly-latency")
    if pl:
        info(f"payment p99 ms at {pl['rate_per_bank'] * len(pl['banks']):g}/s, payments only",
             f"{pl['pay_ms']['p99']:.1f}")
    q = ph.get("queries")
    if q:
        info("queries/s aggregate (queries only); p99 ms",
             f"{q['queries_per_s']:,.0f}; {q['query_ms']['p99']:.1f}")
    db = r.get("database")
    if db and db["payments"]:
        info("database: bytes a payment adds (bg_* and n8_*)", f"{db['bytes_per_payment']:,.0f}")
    say(f"\n== summary: {r['customers']:,} customers, {r['duration_s']:g} s phases, "
        f"{r['db_threads']} database threads per process, {r['cpus']} cores, "
        f"{r['seconds']} s in all; {r['date']}, {r['machine']}")
    say(f"{'':<58}{'reached':>18}{'target':>10}  met")
    for name, val, goal, ok in rows:
        mark = "" if ok is None else ok if isinstance(ok, str) else ("yes" if ok else "NO")
        say(f"{name:<58}{val:>18}{goal:>10}  {mark}")
    capacity_inputs(r)
    missed = [name.strip() for name, val, goal, ok in rows if ok is False]
    if missed and "profile" not in r:
        say("missed: " + "; ".join(missed) + ". --profile shows where the gateway's time goes "
            "(py-spy, its workers included)")
    per_bank(ph)


def capacity_inputs(r: dict) -> dict:
    """The figures of the table in ``docs/capacity.rst``, under its names, from this
    run (printed, and kept in the report as ``capacity``): CPU per payment and
    payments/s with one worker and with two (the ``workers`` pair, or the saturation
    phase), the ledger's payments/s, the bytes a payment adds, table by table."""
    ph = r["phases"]
    one = ph.get("workers-1") or (ph.get("saturation") if r.get("workers") == 1 else None)
    two = ph.get("workers-2") or (ph.get("saturation") if r.get("workers") == 2 else None)
    out: dict = {}
    rows = []
    if one and one.get("cpu_ms") and one["cpu_ms"]["per"] == "payment":
        ms = one["cpu_ms"]
        out.update(C_gw=ms["gateway"], C_db=ms["postgres"], C_lg=ms["simulators"],
                   X_1=one["payments_per_s"])
        rows += [("C_gw", f"{ms['gateway']:.2f}", "gateway CPU per payment, one worker, ms"),
                 ("C_db", f"{ms['postgres']:.2f}", "PostgreSQL CPU per payment, ms"),
                 ("C_lg", f"{ms['simulators']:.2f}", "load generator CPU per payment, ms"),
                 ("X_1", f"{one['payments_per_s']:,.0f}", "payments/s, one worker, saturation")]
    if two and two.get("cpu_ms") and two["cpu_ms"]["per"] == "payment":
        out.update(C_gw2=two["cpu_ms"]["gateway"], X_2=two["payments_per_s"])
        rows += [("C_gw2", f"{two['cpu_ms']['gateway']:.2f}",
                  "gateway CPU per payment, 2 workers, ms"),
                 ("X_2", f"{two['payments_per_s']:,.0f}", "payments/s, 2 workers, saturation")]
    led = (r.get("ledger") or {}).get("payments")
    if led:
        out["L_p"] = led["ledger"]
        rows.append(("L_p", f"{led['ledger']:,.0f}", "ledger payments/s, bench/ledger.py"))
    db = r.get("database")
    if db and db["payments"]:
        out.update(B_p=db["bytes_per_payment"], B_c=db["n8_base_bytes_per_customer"])
        rows.append(("B_p", f"{db['bytes_per_payment']:,.0f}", "bytes a payment adds:"))
        for name, t in db["tables"].items():
            if t["rows_added"] > 0:
                part = t["rows_per_payment"] * t["bytes_per_row"]
                rows.append(("", f"{part:,.0f}", f"  {name}: {t['rows_per_payment']:.2f} rows x "
                                                 f"{t['bytes_per_row']:,.0f} bytes"))
        rows.append(("B_c", f"{db['n8_base_bytes_per_customer']:,.0f}",
                     f"bytes per household in n8_customer and n8_bill "
                     f"({db['bills_per_customer']:.2f} bills each)"))
    if rows:
        say("\ncapacity inputs (the table of docs/capacity.rst):")
        for name, val, what in rows:
            say(f"  {name:<7}{val:>9}  {what}")
    r["capacity"] = out
    return out


def per_bank(ph: dict) -> None:
    """Payments/s and payment p99 of each bank in each payment phase, side by side."""
    cols = [k for k in ("saturation", "payonly", "latency", "payonly-latency") if ph.get(k)]
    if not cols:
        return
    banks = list(dict.fromkeys(b for k in cols for b in ph[k]["banks"]))
    two = [b for b in banks if any(ph[k]["banks"].get(b, {}).get("two_phase") for k in cols)]
    say("\nper bank: payments/s and payment p99 ms (after its query in saturation and "
        "latency; no query first in the payonly phases)")
    say(f"{'':<16}" + "".join(f"{k:>22}" for k in cols))
    for b in banks:
        cells = []
        for k in cols:
            x = ph[k]["banks"].get(b)
            cells.append(f"{x['payments_per_s']:>12.1f}{x['pay_ms']['p99']:>10.1f}" if x
                         else f"{'-':>22}")
        say(f"{b + ('*' if b in two else ''):<16}" + "".join(cells))
    if two:
        say(f"* two-phase ({', '.join(two)}): a payment = prepay + confirm, two round trips "
            "on two short connections; counted once when its confirm is approved; its "
            "latency = the two round trips")
    else:
        say("two-phase banks: none driven")


if __name__ == "__main__":
    sys.exit(main())
