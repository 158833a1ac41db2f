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
   - ``latency`` / ``payonly-latency``: 100 payment scenarios per second and
     bank (400 offered payments/s to the four banks) -> p50/p95/p99;

   with the CPU each party used (gateway reactor thread and database threads,
   PostgreSQL, simulators, everything else on the machine).

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
6. stops the gateway and prints a summary against the targets.

    .venv/bin/python bench/e2e.py --quick          # >= 20,000 customers, 5 s phases
    .venv/bin/python bench/e2e.py                  # 1,000,000 customers, 20 s phases
    .venv/bin/python bench/e2e.py --profile        # + py-spy of the gateway (saturation)

Experiments (the gateway itself is not changed): ``--db-threads``,
``--switch-interval`` (its ``sys.setswitchinterval``), ``--gc-stats`` /
``--gc-freeze`` (its garbage collections), ``--cprofile`` (twistd's profiler:
the reactor thread only), ``--phases``, ``--latency-rate``, ``--banks`` (e.g.
``demo-fixed,demo-delim,demo-iso8583``: the three banks of earlier runs).

The machine may be shared: before each phase the script waits (``--wait-idle``)
for other processes to leave the CPU, and prints what else ran meanwhile.

Targets (this 2-core machine, simulator included): >= 1,000 payments/s
aggregate, p99 <= 50 ms at 300 offered payments/s, codec ratio ours/pyiso8583
>= 1.0.  The latency target was set for three banks at 100/s each; with
four, ``--latency-rate 75`` offers the same 300/s in all (the default keeps
100/s per bank, 400/s in all).  Printed, not asserted: this is a
measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import timeit
from collections import Counter
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

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
TARGETS = {"payments_per_s": 1000.0, "p99_ms": 50.0, "codec_ratio": 1.0}
LATENCY_RATE = 100.0  # payment scenarios per second and bank in the latency phase
RATE_GUESS = 2500.0  # payments/s aggregate the customer pools are sized for
START_TIMEOUT = 120.0
#: saturation: query + payment scenarios as fast as possible; payonly: payments of a known
#: due without a query; queries: queries only; latency / payonly-latency: paced.
PHASES = ("saturation", "payonly", "queries", "latency", "payonly-latency")
CLK = os.sysconf("SC_CLK_TCK")

CONFIG = """\
[gateway]
data_dir = "{data}"
timezone = "{tz}"

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


# =============================================================================
# the gateway
# =============================================================================


class Gateway:
    """``twistd bankgate`` in a subprocess, as ``tests/test_e2e.py`` runs it."""

    def __init__(self, data: Path, url: str, threads: int, twistd_args: list[str],
                 switch_interval: float | None = None, gc_stats: bool = False,
                 gc_freeze: float | None = None):
        self.data = data
        self.ports = {b: free_port() for b in BANKS}
        self.config = data / "bankgate.toml"
        self.config.write_text(CONFIG.format(
            data=data.as_posix(), tz=TZ, url=url, threads=threads, key=KEY, kcv=KCV,
            sm4_kcv=SM4_KCV, p1=self.ports["demo-fixed"], p2=self.ports["demo-delim"],
            p3=self.ports["demo-iso8583"], p4=self.ports["demo-xml"]))
        self.log = data / "gateway.log"
        self.twistd_args = twistd_args
        self.switch_interval = switch_interval
        self.gc_stats = gc_stats or bool(gc_freeze)
        self.gc_freeze = gc_freeze
        self.process = GatewayProcess(
            self.config, list(self.ports.values()), self.log, cwd=data, runner=RUNNER,
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
        self.process.start()

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


def _postgres_ticks() -> dict[int, int]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/comm", "rb") as fh:
                    if fh.read().strip() != b"postgres":
                        continue
            except OSError:
                continue
            out[int(d)] = _ticks(int(d))
    return out


def _all_ticks() -> dict[int, tuple[str, int]]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as fh:
                    head, _, rest = fh.read().rpartition(b")")
                f = rest.split()
                out[int(d)] = (head.partition(b"(")[2].decode(errors="replace"),
                               int(f[11]) + int(f[12]))
            except (OSError, IndexError, ValueError):
                continue
    return out


def _machine() -> tuple[int, int]:
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:9]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v), v[5] + v[6]  # busy, total, irq + softirq


def machine_busy(seconds: float = 1.0) -> float:
    """Share of the machine's CPU busy over ``seconds`` (before we load it)."""
    a = _machine()
    time.sleep(seconds)
    b = _machine()
    return (b[0] - a[0]) / max(1, b[1] - a[1])


class CpuMeter:
    """CPU seconds used by the gateway and PostgreSQL, and the machine's busy share."""

    def __init__(self, gateway_pid: int, exclude: set[int] = frozenset()):
        self.pid = gateway_pid
        self.exclude = {gateway_pid, os.getpid(), *exclude}

    def snapshot(self):
        return (time.monotonic(), _ticks(self.pid), _postgres_ticks(), _machine(),
                _ticks(self.pid, self.pid), _all_ticks())

    def delta(self, a, b) -> dict:
        wall = b[0] - a[0]
        pg = sum(t - a[2].get(pid, 0) for pid, t in b[2].items())
        busy = b[3][0] - a[3][0]
        total = b[3][1] - a[3][1]
        # everybody else: processes that are neither the gateway, PostgreSQL, this
        # benchmark nor its simulators (the machine may be shared)
        ours = {*self.exclude, *b[2]}
        others: Counter = Counter()
        for pid, (comm, t) in b[5].items():
            if pid in ours or comm in ("postgres", "py-spy"):
                continue
            if pid in a[5] and a[5][pid][0] == comm:
                t -= a[5][pid][1]
            elif pid not in a[5]:
                pass  # started during the phase (our workers start before the snapshot)
            others[comm] += t
        return {
            "others": {k: v / CLK / wall for k, v in others.most_common(4) if v > 0},
            "wall_s": wall,
            "gateway_cpu_s": (b[1] - a[1]) / CLK,
            # the main thread runs the reactor: network, framing, codecs, logging;
            # the others are the store's database threads (ledger, SQLAlchemy, psycopg)
            "reactor_cpu_s": (b[4] - a[4]) / CLK,
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
              dues: dict | None = None) -> dict:
    """Run one load phase on all banks of ``customers`` at once; returns the aggregated
    figures."""
    busy_before = wait_idle(wait, f"the {name} phase") if wait > 0 else None
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
    meter = CpuMeter(gw.proc.pid, {p.pid for p in procs})
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
             "--gil", "--nonblocking", "-o", profile],
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
    ph["busy_before"] = busy_before
    # a simulator that imported slowly (a busy machine) starts after start_at: its load
    # then falls partly outside the CPU meter's window (its own figures are its own run's)
    ph["late_start_s"] = max(0.0, *(r["wall_start"] - start_at for r in results.values()))
    ph["direct"] = bool(dues)
    return ph


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
        - c["simulators"]
    say(f"CPU (cores): gateway {c['gateway']:.2f} (reactor thread {c['gateway_reactor']:.2f}, "
        f"database threads {c['gateway'] - c['gateway_reactor']:.2f}), "
        f"postgres {c['postgres']:.2f}, "
        f"simulators {c['simulators']:.2f}, the rest (kernel softirq, other processes) "
        f"{max(other, 0.0):.2f}; machine busy {c['machine_busy'] * 100:.0f}% of "
        f"{os.cpu_count()} cores")
    if ph.get("late_start_s", 0.0) > 0.5:
        say(f"WARNING: a simulator started {ph['late_start_s']:.1f} s late (busy machine): "
            "the CPU figures above cover part of the load only")
    if c.get("others"):
        say(f"of the rest: interrupts/softirq {c.get('softirq', 0.0):.2f}; other processes "
            "(cores): " + ", ".join(f"{k} {v:.2f}" for k, v in c["others"].items()))
    if ph["errors"] or ph["unfinished"]:
        say(f"errors: {ph['errors']}, unfinished: {ph['unfinished']}")


# =============================================================================
# profile of the gateway (py-spy raw output)
# =============================================================================


def print_profile(path: str, top: int = 25) -> dict:
    """Top functions by own and by inclusive samples from py-spy's collapsed stacks."""
    own: Counter = Counter()
    incl: Counter = Counter()
    threads: Counter = Counter()
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
    p.add_argument("--db-threads", type=int, default=8, help="gateway database threads (8)")
    p.add_argument("--concurrency", type=int, default=16,
                   help="requests in flight per bank at saturation (default 16)")
    p.add_argument("--in-flight", type=int, default=4,
                   help="ref-iso8583: requests pipelined per connection (default 4)")
    p.add_argument("--warmup", type=float, help="seconds of unmeasured load first (default 3)")
    p.add_argument("--latency-rate", type=float, default=LATENCY_RATE,
                   help="latency phase: payment scenarios per second and bank (default 100, "
                        "i.e. 400 payments/s offered to the four banks)")
    p.add_argument("--banks", default=",".join(BANKS),
                   help=f"the banks to drive (default {','.join(BANKS)}); the gateway "
                        "listens for all four either way")
    p.add_argument("--phases", default=",".join(PHASES),
                   help=f"load phases to run, in order (default {','.join(PHASES)})")
    p.add_argument("--skip-load", action="store_true", help="the codec benchmark only")
    p.add_argument("--skip-codec", action="store_true", help="no codec benchmark")
    p.add_argument("--profile", action="store_true",
                   help="py-spy the gateway during saturation (pip install py-spy)")
    p.add_argument("--cprofile", action="store_true",
                   help="run the gateway under twistd's cProfile (slower; stats printed)")
    p.add_argument("--switch-interval", type=float,
                   help="experiment: the gateway's sys.setswitchinterval (default Python's "
                        "0.005 s)")
    p.add_argument("--gc-stats", action="store_true",
                   help="experiment: time the gateway's garbage collections")
    p.add_argument("--gc-freeze", type=float, metavar="SECONDS",
                   help="experiment: gc.freeze() in the gateway this long after it starts "
                        "(implies --gc-stats)")
    p.add_argument("--wait-idle", type=float, default=60.0,
                   help="before each phase, wait up to this many seconds for other processes "
                        "to leave the CPU (default 60; the machine may be shared)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (config, logs)")
    p.add_argument("--json", help="also write all figures to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker_main(a.worker)
        return 0
    customers = a.customers or (20_000 if a.quick else 1_000_000)
    duration = a.duration or (5.0 if a.quick else 20.0)
    warmup = a.warmup if a.warmup is not None else (2.0 if a.quick else 3.0)
    banks = tuple(dict.fromkeys(x.strip() for x in a.banks.split(",") if x.strip()))
    if not banks or set(banks) - set(BANKS):
        p.error(f"--banks: unknown bank(s) {', '.join(sorted(set(banks) - set(BANKS)))} "
                f"(known: {', '.join(BANKS)})")
    report: dict = {"customers": customers, "duration_s": duration, "db_threads": a.db_threads,
                    "concurrency": a.concurrency, "cpus": os.cpu_count(),
                    "date": date.today().isoformat(), "banks": list(banks)}
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="bankgate-bench-e2e-"))
    phases: dict[str, dict] = {}
    gw = None
    died = False
    try:
        if not a.skip_load:
            store = prepare_database(a.url, customers)
            rng = random.Random(int(time.time()))
            wanted = [x.strip() for x in a.phases.split(",") if x.strip()]
            unknown = set(wanted) - set(PHASES)
            if unknown:
                p.error(f"unknown phase(s) {', '.join(sorted(unknown))} "
                        f"(known: {', '.join(PHASES)})")
            # fresh customers per phase and bank, each paid once (a payment clears what the
            # customer owes); pools sized for RATE_GUESS payments/s at saturation
            lat_n = int(a.latency_rate * duration * 1.2)
            per_bank = RATE_GUESS / len(banks)
            sat_n = int(per_bank * duration)
            need = {"latency": lat_n, "payonly-latency": lat_n,
                    "warmup": int(per_bank * warmup),
                    "saturation": sat_n, "payonly": sat_n, "queries": 2000}
            need = {k: n for k, n in need.items() if k == "warmup" or k in wanted}
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
            if direct:
                t1 = time.monotonic()
                for ph in direct:
                    for b in banks:
                        dues.update(compute_dues(store, cust[ph][b]))
                say(f"dues of {len(dues):,} customers read for the payment-only phases "
                    f"({time.monotonic() - t1:.1f} s)")
            store.stop()
            twistd_args = []
            if a.cprofile:
                twistd_args = [f"--profile={work / 'gateway.pstats'}", "--profiler=cprofile",
                               "--savestats"]
            gw = Gateway(work, a.url, a.db_threads, twistd_args, a.switch_interval,
                         a.gc_stats, a.gc_freeze)
            gw.start()
            say(f"gateway pid {gw.proc.pid} listening: "
                + ", ".join(f"{b} {port}" for b, port in gw.ports.items()))
            load = dict(concurrency=a.concurrency, in_flight=a.in_flight, wait=a.wait_idle)
            pay = {"pay": 1.0}
            if warmup > 0:
                run_phase(gw, work, "warmup", cust["warmup"], rate=0, duration=warmup, mix=pay,
                          seed=1, **load)
            spy = str(work / "gateway.pyspy.txt") if a.profile else None
            for ph in wanted:
                if ph in ("saturation", "payonly"):
                    r = run_phase(gw, work, ph, cust[ph], rate=0, duration=duration, mix=pay,
                                  seed=2, profile=spy if ph == "saturation" else None,
                                  dues=dues if ph == "payonly" else None, **load)
                elif ph == "queries":
                    r = run_phase(gw, work, ph, cust["queries"], rate=0,
                                  duration=max(2.0, duration / 2), mix={"query": 1.0}, seed=3,
                                  **load)
                else:  # latency, payonly-latency
                    r = run_phase(gw, work, ph, cust[ph], rate=a.latency_rate,
                                  duration=duration, mix=pay, seed=4,
                                  dues=dues if ph == "payonly-latency" else None, **load)
                phases[ph] = r
                print_phase(r)
                if ph == "saturation" and spy:
                    report["profile"] = print_profile(spy)
            died = gw.proc.poll() is not None
            gw.stop()
            if gw.gc_stats:
                report["gateway_gc"] = gw.gc_stats_line()
                say(f"\ngateway garbage collections (generation: count, total ms, max ms, "
                    f"over 10 ms): {report['gateway_gc']}")
            if a.cprofile:
                print_cprofile(work / "gateway.pstats")
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


def summary(r: dict) -> None:
    rows = []
    ph = r["phases"]
    codec = r.get("codec")
    for key, label in (("saturation", "query + pay"), ("payonly", "payments only")):
        sat = ph.get(key)
        if sat:
            rows.append((f"payments/s aggregate, saturation ({label})",
                         f"{sat['payments_per_s']:,.0f}", f">= {TARGETS['payments_per_s']:,.0f}",
                         sat["payments_per_s"] >= TARGETS["payments_per_s"]))
            rows.append((f"  payment p50 / p99 ms at saturation ({label})",
                         f"{sat['pay_ms']['p50']:.1f} / {sat['pay_ms']['p99']:.1f}", "", None))
    if ph.get("saturation"):
        rows.append(("  queries/s alongside (one before each payment)",
                     f"{ph['saturation']['queries_per_s']:,.0f}", "", None))
    q = ph.get("queries")
    if q:
        rows.append(("queries/s aggregate (queries only)", f"{q['queries_per_s']:,.0f}", "",
                     None))
        rows.append(("  query p50 / p99 ms (queries only)",
                     f"{q['query_ms']['p50']:.1f} / {q['query_ms']['p99']:.1f}", "", None))
    for key, label in (("latency", "query + pay"), ("payonly-latency", "payments only")):
        lat = ph.get(key)
        if lat:
            offered = f"{lat['rate_per_bank'] * len(lat['banks']):g}/s offered"
            rows.append((f"payment p99 ms at {offered} ({label})",
                         f"{lat['pay_ms']['p99']:.1f}", f"<= {TARGETS['p99_ms']:g}",
                         lat["pay_ms"]["p99"] <= TARGETS["p99_ms"]))
            rows.append(("  p50 / p95 ms; payments/s reached",
                         f"{lat['pay_ms']['p50']:.1f} / {lat['pay_ms']['p95']:.1f}; "
                         f"{lat['payments_per_s']:,.0f}", "", None))
    if codec:
        rows.append(("codec ratio ours / pyiso8583 (0200 + 0210)", f"{codec['ratio']:.2f}",
                     f">= {TARGETS['codec_ratio']:g}", codec["ratio"] >= TARGETS["codec_ratio"]))
        rows.append(("  ops/s ours / pyiso8583",
                     f"{codec['ours']:,.0f} / {codec['pyiso8583']:,.0f}", "", None))
    say(f"\n== summary: {r['customers']:,} customers, {r['duration_s']:g} s phases, "
        f"{r['db_threads']} database threads, {r['cpus']} cores, {r['seconds']} s in all")
    say(f"{'':<52}{'reached':>20}{'target':>10}  met")
    for name, val, target, ok in rows:
        mark = "" if ok is None else ("yes" if ok else "NO")
        say(f"{name:<52}{val:>20}{target:>10}  {mark}")
    per_bank(ph)


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
