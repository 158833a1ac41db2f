"""``bankgate n8``: N8, the billing system, as the gateway sees it through its mapping.

``bankgate n8 check`` proves the mapping against N8 (``bankgate/store/n8check.py``):
one line per check, exit status 1 on any failure.  More ``n8`` commands register
themselves in :func:`add_parsers`.
"""

from __future__ import annotations

import argparse

from bankgate.app import startup, wiring
from bankgate.app.cli.actor import add_actor
from bankgate.app.cli.common import _load
from bankgate.canon.money import fen_to_yuan
from bankgate.store import n8outbox


def cmd_check(args) -> int:
    cfg = _load(args.config)
    store = wiring.store(cfg)  # not migrated: the check writes nothing
    try:
        checks = startup.n8_checks(cfg, store)
    finally:
        store.stop()
    for c in checks:
        if not args.problems or c.status != "OK":
            print(c.line())
    failed = sum(1 for c in checks if not c.ok)
    warned = sum(1 for c in checks if c.warn)
    print(f"{len(checks)} checks: {len(checks) - failed - warned} OK, {warned} WARN,"
          f" {failed} FAIL")
    return 1 if failed else 0


def _split_store(args):
    """The configuration and its store, or None (printed why) when N8 is in the
    gateway's own database: then nothing is ever waiting."""
    cfg = _load(args.config)
    if not cfg.n8_db_url:
        print("N8 is in the gateway's own database (no [n8.database]): its writes commit"
              " with the gateway's, nothing waits")
        return cfg, None
    store = wiring.store(cfg)
    if not n8outbox.has_outbox(store.engine):  # not migrated yet: nothing was ever kept
        store.stop()
        print("the gateway's database has no outbox yet (the gateway migrates it at start):"
              " nothing waits")
        return cfg, None
    return cfg, store


def cmd_pending(args) -> int:
    cfg, store = _split_store(args)
    if store is None:
        return 0
    try:
        rows = n8outbox.pending(store.engine, limit=args.limit, older_than=args.older_than)
    finally:
        store.stop()
    if not rows:
        print("nothing waiting: N8 has every write the gateway made"
              + (f" (but those of the last {args.older_than:g} s, in flight)"
                 if args.older_than else ""))
        return 0
    now = n8outbox.utcnow()
    print(f"{'id':>8}  {'age':>9}  {'receipt':<20}  {'tries':>5}  operations"
          "  (last error)")
    for r in rows:
        age = now - r["created_at"]
        ops = ", ".join(_describe(op, a) for op, a in r["ops"])
        err = f"  ({r['last_error']})" if r["last_error"] else ""
        print(f"{r['id']:>8}  {_age(age.total_seconds()):>9}  {r['receipt_no'] or '-':<20}"
              f"  {r['attempts']:>5}  {ops}{err}")
    more = f" (the first {args.limit})" if len(rows) >= args.limit else ""
    print(f"{len(rows)} waiting{more}: the service applies them every"
          f" {cfg.n8_repair_every:g} s while N8 answers; `bankgate n8 repair` does it now")
    return 1


def cmd_repair(args) -> int:
    cfg, store = _split_store(args)
    if store is None:
        return 0
    try:
        done, waiting = n8outbox.repair(store, older_than=args.older_than)
        if done:  # who made N8 catch up, and when (the writes themselves are journaled)
            store.run_sync(lambda tx: tx.audit(wiring.wall_clock(cfg)(), args.actor,
                                               "n8-repair", "",
                                               {"applied": done, "waiting": waiting}))
    finally:
        store.stop()
    print(f"{done} applied to N8, {waiting} still waiting"
          + (" (N8 refuses: see `bankgate n8 pending` for the error)" if waiting else ""))
    return 1 if waiting else 0


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _describe(op: str, a: dict) -> str:
    """One operation as an operator reads it (no account numbers)."""
    if op == "post":
        p = a["pay"]
        return (f"post {p['pay_id']} customer {p['customer_no']} {fen_to_yuan(p['amount'])}"
                f" yuan, {len(a['items'])} bill(s)")
    if op == "undo":
        return f"undo {a['pay_id']} ({len(a['items'])} bill(s))"
    if op == "confirm":
        return f"confirm {a['pay_id']}"
    if op in ("invoice_use", "invoice_void"):
        return f"{op.replace('_', ' ')} {a['invoice_no']}"
    if op == "invoice_stock":
        return f"invoice stock {len(a['numbers'])} number(s)"
    if op == "agreement":
        return f"withholding agreement of {a['customer_no']}"
    return op


CHECK_DESCRIPTION = """\
Connect to N8 with the configured database account and prove the [n8] mapping
before a bank does: every mapped table and column exists with a usable type
(money, dates, text long enough for what the gateway writes); the account may
SELECT what the gateway reads and UPDATE and INSERT what it writes (each write
is tried in a transaction that is rolled back); and up to 100 rows of customer,
bill, tariff and payment convert under the mapping. One line per check: OK,
WARN or FAIL, what was checked and, for a failure, what to change. The gateway
runs the same checks at start and refuses to start on a FAIL.
Exit status 0 when nothing failed (warnings allowed), 1 otherwise."""


def add_parsers(sub) -> None:
    """Register the ``bankgate n8`` group and its commands on the ``bankgate`` parser."""
    n8 = sub.add_parser(
        "n8", help="N8, the billing system: check the mapping, writes waiting",
        description=(
            "N8, the utility's billing system, as the gateway reaches it through the\n"
            "[n8] mapping (docs/n8-mapping.rst)."),
        epilog="examples:\n  bankgate -c /etc/bankgate/bankgate.toml n8 check")
    commands = n8.add_subparsers(dest="sub", required=True)
    add_check(commands)
    add_pending(commands)


def add_pending(commands) -> None:
    p = commands.add_parser(
        "pending", help="N8's writes waiting in the outbox ([n8.database] only)",
        description=(
            "With N8 in a database of its own ([n8.database]), list the writes the\n"
            "gateway has made (its journal says so) that N8 has not been seen to commit:\n"
            "a crash between the two commits, or N8 unreachable. The service applies\n"
            "them by itself every [n8.database] repair_every seconds while N8 answers.\n"
            "Exit status 0 when nothing waits, 1 otherwise."),
        epilog="examples:\n  bankgate -c /etc/bankgate/bankgate.toml n8 pending")
    p.add_argument("--config", "-c", default=argparse.SUPPRESS,
                   help="configuration file (the same as the global --config)")
    p.add_argument("--limit", type=int, default=200, help="list at most this many (200)")
    p.add_argument("--older-than", type=float, default=10.0, metavar="SECONDS",
                   help="only rows older than this (10: a younger one is in flight, or"
                        " applied and deleted with its batch)")
    p.set_defaults(func=cmd_pending)
    r = commands.add_parser(
        "repair", help="apply N8's waiting writes now ([n8.database] only)",
        description=(
            "Apply to N8 the writes waiting in the outbox (see `bankgate n8 pending`),\n"
            "each once: applying one N8 already has changes nothing. Safe while the\n"
            "service runs. Exit status 0 when nothing is left waiting."),
        epilog="examples:\n  bankgate -c /etc/bankgate/bankgate.toml n8 repair")
    r.add_argument("--config", "-c", default=argparse.SUPPRESS,
                   help="configuration file (the same as the global --config)")
    r.add_argument("--older-than", type=float, default=10.0, metavar="SECONDS",
                   help="only rows older than this (10: younger ones may be in flight)")
    add_actor(r)
    r.set_defaults(func=cmd_repair)


def add_check(commands) -> None:
    c = commands.add_parser(
        "check", help="prove the N8 mapping against N8 (tables, columns, grants, data)",
        description=CHECK_DESCRIPTION,
        epilog=(
            "examples:\n"
            "  bankgate -c /etc/bankgate/bankgate.toml n8 check\n"
            "  bankgate n8 check -c bankgate.toml.new --problems"))
    c.add_argument("--config", "-c", default=argparse.SUPPRESS,
                   help="configuration file (the same as the global --config)")
    c.add_argument("--problems", action="store_true",
                   help="print only the WARN and FAIL lines (and the count)")
    c.set_defaults(func=cmd_check)
