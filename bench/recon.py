"""Reconciliation benchmark: a 1,000,000-line statement against 1,000,000 payments.

1% of each category: of the gateway's payments 1% are missing from the
statement (utility-only: reversed locally), 1% have another amount and 1%
another trade date on the statement (exceptions); the statement has 1%
records the gateway never saw (bank-only: posted after the fact for
customers with open bills); the rest match.  So 1,000,000 lines,
1,000,000 payments, 970,000 matched, 10,000 posts and 10,000 reversals
through the ledger one by one, 20,000 exceptions.

Setup (a separate process, not measured): the database ``bankgate_bench_recon``
on the PostgreSQL server of ``--url`` is created afresh, the payments,
journal rows, customers and bills are loaded with COPY, and the statement
file (ref-fixed §8) is written to ``--dir``.  The run is another process,
so its peak memory (``resource.getrusage(...).ru_maxrss``) is the
reconciliation's own: read the file, sort-merge it with the payments
streamed from the database, write the items in batches, balance the
discrepancies, store the run, write the report (text, CSV, PDF).

    .venv/bin/python bench/recon.py                    # 1,000,000 lines, 4 workers
    .venv/bin/python bench/recon.py --lines 100000 --workers 2 --rerun

Targets (printed, not asserted): <= 60 s and <= 500 MB peak.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import sqlalchemy as sa  # noqa: E402

SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DB = "bankgate_bench_recon"
BANK, CODE = "bench", "105210"
D = date(2026, 11, 27)
TARGET_SECONDS, TARGET_MB = 60, 500


def db_url(server: str) -> str:
    return sa.engine.make_url(server).set(database=DB).render_as_string(hide_password=False)


def _copy(raw, table: str, cols: list[str], rows, chunk: int = 200_000) -> None:
    """COPY rows (tuples of text) into ``table``, a chunk of lines at a time."""
    with raw.cursor() as cur:
        with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as cp:
            buf = io.StringIO()
            n = 0
            for r in rows:
                buf.write("\t".join(r))
                buf.write("\n")
                n += 1
                if n % chunk == 0:
                    cp.write(buf.getvalue())
                    buf = io.StringIO()
            cp.write(buf.getvalue())


def setup(args) -> None:
    from bankgate.store.db import Store

    admin = sa.create_engine(args.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        c.execute(sa.text(f"CREATE DATABASE {DB}"))
    admin.dispose()
    store = Store(db_url(args.url), threads=2)
    store.create_gateway_tables()
    store.create_n8_tables()
    n = args.lines
    pct = n // 100
    t = time.perf_counter()
    now = datetime(2026, 11, 27, 22, 0).isoformat(sep=" ")
    day = D.isoformat()
    raw = store.engine.raw_connection()
    try:
        n8 = store.n8
        _copy(raw, n8["tariff"].name, ["fee_type", "customer_class", "unit_price",
                                       "late_fee_ppm"], [("01", "R", "2600", "0")])
        # the customers of the bank-only records, each with an open bill
        _copy(raw, n8["customer"].name, ["customer_no", "name", "customer_class", "status"],
              ((f"3{j:08d}", f"客户{j}", "R", "A") for j in range(pct)))
        _copy(raw, n8["bill"].name, ["bill_id", "customer_no", "fee_type", "period", "amount",
                                     "paid_amount", "late_fee_paid", "due_date"],
              ((f"BB{j:08d}", f"3{j:08d}", "01", "2026-2027", "500000", "0", "0", "2027-03-31")
               for j in range(pct)))
        # the gateway's day: n payments (and their journal rows)
        _copy(raw, "bg_payment", [
            "bank", "trade_date", "serial", "trade_time", "customer_no", "amount", "principal",
            "late_fee", "prepaid_in", "channel", "receipt_no", "status", "source", "created_at"],
            ((BANK, day, f"S{i:010d}", "101500", f"1{i % 200000:08d}", str(1000 + i % 99000),
              str(1000 + i % 99000), "0", "0", "01", f"R{i:019d}", "POSTED", "online", now)
             for i in range(n)))
        _copy(raw, "bg_journal", ["bank", "trade_date", "serial", "kind", "content", "outcome",
                                  "created_at"],
              ((BANK, day, f"S{i:010d}", "PAY", "x", "OK", now) for i in range(n)))
        raw.commit()
        with raw.cursor() as cur:
            cur.execute("ANALYZE")
        raw.commit()
    finally:
        raw.close()
    loaded = time.perf_counter() - t
    # the bank's statement, ref-fixed §8 (written here, not by the code under test)
    t = time.perf_counter()
    prev = (D - timedelta(days=1)).strftime("%Y%m%d")
    ymd = D.strftime("%Y%m%d")
    path = Path(args.dir) / f"{CODE}_{ymd}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    total = count = 0
    body = io.BytesIO()
    for i in range(n):
        k = i % 100
        if k == 0:
            continue  # utility-only
        amount = 1000 + i % 99000 + (1 if k == 1 else 0)  # amount differs
        td = prev if k == 2 else ymd  # date differs
        body.write(f"D{f'S{i:010d}':<20}{td}101500{f'1{i % 200000:08d}':<20}{amount:012d}01\r\n"
                   .encode())
        total += amount
        count += 1
    for j in range(pct):  # bank-only, for the customers with open bills
        amount = 10000 + j % 5000
        body.write(f"D{f'B{j:09d}':<20}{ymd}120000{f'3{j:08d}':<20}{amount:012d}04\r\n"
                   .encode())
        total += amount
        count += 1
    with path.open("wb") as f:
        f.write(f"H{ymd}{CODE:<6}{count:08d}{total:015d}\r\n".encode())
        f.write(body.getvalue())
    store.stop()
    print(json.dumps({"setup_load_s": round(loaded, 1), "statement_s":
                      round(time.perf_counter() - t, 1), "lines": count, "payments": n,
                      "file": str(path), "bytes": path.stat().st_size}))


def run(args) -> None:
    from bankgate.app.config import BankConfig, ReconPolicy
    from bankgate.codec.registry import load_codec
    from bankgate.domain import reconcile as rec_mod
    from bankgate.domain.ledger import BankPolicy, Ledger
    from bankgate.store.db import Store
    store = Store(db_url(args.url), threads=max(4, args.workers + 2))
    ledger = Ledger(store, {BANK: BankPolicy(BANK, CODE, policy="any")},
                    now=lambda: datetime(2026, 11, 28, 2, 0))
    bank = BankConfig(name=BANK, plugin="ref-fixed", bank_code=CODE, exchange_dir=args.dir,
                      reconcile=ReconPolicy(workers=args.workers, pdf=not args.no_pdf,
                                            report_dir=str(Path(args.dir) / "reports")))
    rec = rec_mod.Reconciler(ledger, bank, load_codec("ref-fixed"), data_dir=args.dir)
    path = Path(args.dir) / f"{CODE}_{D:%Y%m%d}.txt"
    marks: dict[str, float] = {}

    def progress(phase, done, total):
        marks.setdefault(phase, time.perf_counter())

    figures = []
    for _ in range(2 if args.rerun else 1):
        t = time.perf_counter()
        data = path.read_bytes()
        rep = rec.reconcile(data, D, source=str(path), progress=progress)
        del data
        wall = time.perf_counter() - t
        figures.append({
            "run": rep.run_id, "status": rep.status, "seconds": round(wall, 1),
            "phases_s": {k: round(v, 1) for k, v in rep.timings.items()},
            "counts": rep.counts,
            "actions": {k: v[0] for k, v in rep.actions.items()},
            "gap": rep.gap, "explained": rep.explained,
            "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "outputs": rep.outputs,
            "load": os.getloadavg()[0],
        })
    store.stop()
    print(json.dumps(figures))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=os.environ.get("BANKGATE_BENCH_POSTGRES", SERVER),
                   help="a PostgreSQL server URL (the bench database is created on it)")
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--workers", type=int, default=4, help="ledger workers while balancing")
    p.add_argument("--dir", default="/tmp/bankgate_bench_recon")
    p.add_argument("--rerun", action="store_true", help="reconcile the same file twice")
    p.add_argument("--no-pdf", action="store_true")
    p.add_argument("--wait-idle", type=int, default=0, metavar="SECONDS",
                   help="before the run, wait up to this long for a load average below 1")
    p.add_argument("--phase", choices=["setup", "run"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase == "setup":
        setup(args)
        return 0
    if args.phase == "run":
        run(args)
        return 0
    me = [sys.executable, __file__, "--url", args.url, "--lines", str(args.lines),
          "--workers", str(args.workers), "--dir", args.dir]
    me += ["--rerun"] * args.rerun + ["--no-pdf"] * args.no_pdf
    print(f"setting up {args.lines:,} payments and a {args.lines:,}-line statement"
          f" in {DB} ...", flush=True)
    out = subprocess.run(me + ["--phase", "setup"], check=True, capture_output=True, text=True)
    print("  " + out.stdout.strip().splitlines()[-1])
    if args.wait_idle:
        waited = 0
        while os.getloadavg()[0] > 1.0 and waited < args.wait_idle:
            time.sleep(5)
            waited += 5
        print(f"  load average {os.getloadavg()[0]:.2f} (waited {waited} s for a quiet machine)")
    print("reconciling ...", flush=True)
    out = subprocess.run(me + ["--phase", "run"], check=True, capture_output=True, text=True)
    for f in json.loads(out.stdout.strip().splitlines()[-1]):
        ok_t = "ok" if f["seconds"] <= TARGET_SECONDS else "OVER"
        ok_m = "ok" if f["peak_mb"] <= TARGET_MB else "OVER"
        print(f"run {f['run']}: {f['status']} in {f['seconds']} s (target {TARGET_SECONDS} s:"
              f" {ok_t}), peak {f['peak_mb']} MB (target {TARGET_MB} MB: {ok_m})")
        print(f"  phases: {f['phases_s']}")
        ops = sum(v for k, v in f["actions"].items() if k.endswith(("/POSTED", "/REVERSED")))
        bal = f["phases_s"].get("balance")
        if ops and bal:
            print(f"  balancing: {ops:,} ledger transactions, {ops / bal:.0f}/s with"
                  f" {args.workers} workers; everything else {f['phases_s']['total'] - bal:.1f} s")
        print(f"  load average after the run: {f['load']:.2f}")
        print(f"  categories: {f['counts']}")
        print(f"  actions: {f['actions']}")
        print(f"  statement minus gateway {f['gap']}, explained by exceptions {f['explained']}")
        print(f"  outputs: {', '.join(sorted(f['outputs']))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
