"""``bankgate simulate``: play a bank against a running gateway, from the shell.

The arguments, the configuration (which bank, which address, which codec),
the screen output and the exit status; the simulator itself -- clients,
scenarios, the load runner -- is :mod:`bankgate.devtools.simulate`.
``docs/bank-it-guide.rst`` is its manual.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from twisted.internet import defer, task

from bankgate.app.cli.argtypes import date_arg as _date
from bankgate.canon.money import fen_to_yuan

# -- errors --------------------------------------------------------------------
from bankgate.devtools.simulate import (
    _AMOUNT_KEYS,
    Answer,
    BankClient,
    BankSimulator,
    LoadRunner,
    LoadStats,
    SerialGenerator,
    SimulateError,
    Target,
    configured_hosts,
    customers_with_open_bills,
    host_allowed,
    latency_summary,
    missing_ops,
    parse_customers,
    parse_mix,
    resolve_target,
    traits_for,
    unsupported,
)


def _fmt(key: str, value: Any) -> str:
    if key in _AMOUNT_KEYS and isinstance(value, int):
        return f"{fen_to_yuan(value)} ({value} fen)"
    if isinstance(value, date | datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def render_request(target: Target, answer_or_op: Answer | str, values: dict | None = None):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    op = answer_or_op.op if isinstance(answer_or_op, Answer) else answer_or_op
    values = answer_or_op.request if isinstance(answer_or_op, Answer) else (values or {})
    head = Text.assemble(("→ ", "dim"), (op, "bold"),
                         f"  {target.name} ({target.codec.name}) {target.host}:{target.port}")
    t = Table(show_header=False, box=None, padding=(0, 2))
    t.add_column(style="dim")
    t.add_column()
    if isinstance(answer_or_op, Answer) and answer_or_op.txn != op:
        t.add_row("transaction", answer_or_op.txn)
    for k, v in values.items():
        t.add_row(k, _fmt(k, v))
    return Group(head, t)


def render_answer(answer: Answer):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    style = "bold green" if answer.approved else "bold red"
    head = Text.assemble(
        ("← ", "dim"), (f"{answer.code}", style), f"  {answer.meaning}",
        (f"  {answer.message}" if answer.message else "", "italic"),
        (f"  ({answer.latency * 1000:.1f} ms)", "dim"),
    )
    parts: list[Any] = [head]
    fields = dict(answer.fields)
    mac_ok = fields.pop("mac_ok", None)
    if fields:
        t = Table(show_header=False, box=None, padding=(0, 2))
        t.add_column(style="dim")
        t.add_column()
        for k, v in fields.items():
            t.add_row(k, _fmt(k, v))
        if mac_ok is not None:
            t.add_row("MAC", "verified" if mac_ok else "[red]DOES NOT VERIFY[/red]")
        parts.append(t)
    if answer.bills:
        bt = Table(title="bills", title_justify="left")
        cols = list(dict.fromkeys(k for b in answer.bills for k in b))
        for c in cols:
            bt.add_column(c, justify="right" if c in _AMOUNT_KEYS else "left")
        for b in answer.bills:
            bt.add_row(*[fen_to_yuan(b[c]) if c in _AMOUNT_KEYS and isinstance(b.get(c), int)
                         else str(b.get(c, "")) for c in cols])
        parts.append(bt)
    return Group(*parts)


def render_summary(stats: LoadStats):
    from rich.table import Table

    s = stats.summary()
    lat = s["latency_ms"]
    t = Table(title=f"{stats.bank}: {s['sent']} sent, {s['answered']} answered in "
                    f"{s['elapsed_s']:.1f} s = {s['tps']:.1f} TPS; latency ms p50 "
                    f"{lat['p50']:.1f} p95 {lat['p95']:.1f} p99 {lat['p99']:.1f}",
              title_justify="left")
    for c in ("op", "sent", "answered by code", "errors", "p50 ms", "p95 ms", "p99 ms"):
        t.add_column(c, justify="left" if c in ("op", "answered by code", "errors") else "right")
    by_op = dict(s["by_op"])
    for k in s["errors"]:
        by_op.setdefault(k.split(":", 1)[0], {"sent": 0, "answered": {},
                                              "latency_ms": latency_summary([])})
    for op, o in by_op.items():
        codes = ", ".join(f"{c} {stats.meanings.get(c, '?')}: {n}"
                          for c, n in o["answered"].items())
        errs = ", ".join(f"{k.split(':', 1)[1]}: {n}" for k, n in s["errors"].items()
                         if k.startswith(op + ":"))
        lo = o["latency_ms"]
        t.add_row(op, str(o["sent"]), codes, errs, f"{lo['p50']:.1f}", f"{lo['p95']:.1f}",
                  f"{lo['p99']:.1f}")
    if s["unfinished"]:
        t.caption = f"{s['unfinished']} request(s) unanswered when the run ended"
    if s["mac_failures"]:
        t.caption = (t.caption or "") + f"  {s['mac_failures']} answer MAC(s) did not verify"
    return t


def render_progress(runners: list[LoadRunner]):
    from rich.table import Table

    t = Table(title="bankgate simulate: load", title_justify="left")
    for c in ("bank", "elapsed s", "sent", "answered", "errors", "in flight", "TPS"):
        t.add_column(c, justify="left" if c == "bank" else "right")
    for r in runners:
        st = r.stats
        el = r.elapsed() if not r.done.called else st.elapsed
        tps = st.total_answered / el if el > 0 else 0.0
        t.add_row(st.bank, f"{min(el, r.duration):.1f}/{r.duration:g}", str(st.total_sent),
                  str(st.total_answered), str(sum(st.errors.values())), str(r.in_flight),
                  f"{tps:.1f}")
    return t


# -- the command ----------------------------------------------------------------------------




def parse_amount(text: str) -> int:
    """Yuan as typed by a person (``123``, ``123.4``, ``123.45``) -> fen."""
    m = re.fullmatch(r"([0-9]{1,11})(?:\.([0-9]{1,2}))?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"expected an amount in yuan like 123.45, got {text!r}")
    return int(m.group(1)) * 100 + int((m.group(2) or "0").ljust(2, "0"))


def _positive(kind, what: str, upper: float | None = None):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}: expected a number, got {text!r}") from None
        if not v > 0 or (upper is not None and v > upper):
            limit = f" and at most {upper:g}" if upper is not None else ""
            raise argparse.ArgumentTypeError(f"{what}: expected more than 0{limit}, got {text}")
        return v

    return parse


def _rate(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"rate: expected a number, got {text!r}") from None
    if not math.isfinite(v) or v < 0 or v > 100_000:
        raise argparse.ArgumentTypeError("rate: expected 0 (unpaced) to 100000 per second")
    return v


MAX_DURATION = 3600.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bankgate simulate`` arguments."""
    parser.description = (
        "Play a bank against a running gateway over TCP: single transactions for\n"
        "integration tests, or paced load. It uses the plugin's own bank side and the\n"
        "bank's code and keys from the configuration; the transactions a bank has are\n"
        "those its plugin's simulator traits map. Options of simulate go before the\n"
        "transaction, the transaction's after it. Exit status 0 approved, 1 declined,\n"
        "2 usage error (or a transaction the bank does not have), 3 no answer.")
    parser.epilog = (
        "examples:\n"
        "  bankgate simulate --bank demo-fixed query 100000123\n"
        "  bankgate -c gw.toml simulate --bank icbc-shenyang pay 100000123 100.00\n"
        "  bankgate simulate --bank demo-xml prepay 100000123\n"
        "  bankgate simulate --bank demo-xml confirm SIM101500123000000001"
        " --order 20261205000000000001\n"
        "  bankgate simulate --bank demo-fixed load --rate 100 --duration 60")
    parser.add_argument("--config", "-c", default=argparse.SUPPRESS,
                        help="configuration file (default: the embedded default)")
    parser.add_argument("--bank", "-b", help="the configured bank to play")
    parser.add_argument("--host", help="gateway host (default: the bank's first listener)")
    parser.add_argument("--port", type=int, help="gateway port (default: the bank's listener)")
    parser.add_argument("--timeout", type=_positive(float, "timeout", 600), default=10.0,
                        help="seconds to wait for each answer (default 10)")
    parser.add_argument("--trade-date", type=_date, help="the bank's trade date (default today)")
    parser.add_argument("--no-signin", action="store_true",
                        help="do not sign in first (ISO 8583: see the gateway refuse)")
    sub = parser.add_subparsers(dest="sim_command", metavar="TRANSACTION")
    sub.required = True

    c = sub.add_parser(
        "query", help="bill query",
        description="Ask the gateway for a customer's bills, as the bank would.",
        epilog="examples:\n  bankgate simulate --bank demo-fixed query 100000123")
    c.add_argument("customer")
    c.add_argument("--serial", help="bank serial / RRN (default: a fresh one)")

    c = sub.add_parser(
        "pay", help="payment (no amount: query first and pay what is due)",
        description=("Pay a customer's bills, as the bank would; without an amount, query first\n"
                     "and pay what is due. On a two-phase bank (its plugin's traits say so) a\n"
                     "payment is a prepay and then the confirm of that prepay: both answers\n"
                     "are shown."),
        epilog=(
            "examples:\n"
            "  bankgate simulate --bank demo-fixed pay 100000123\n"
            "  bankgate simulate --bank demo-fixed pay 100000123 100.00 --serial BK001\n"
            "  bankgate simulate --bank demo-delim pay 100000125 --bills B0000000249"))
    c.add_argument("customer")
    c.add_argument("amount", nargs="?", type=parse_amount, help="yuan, e.g. 1234.50")
    c.add_argument("--bills", help="bill ids to pay, comma-separated (plugins that name bills)")
    c.add_argument("--serial", help="bank serial / RRN (default: a fresh one)")

    c = sub.add_parser(
        "prepay", help="two-phase: reserve a payment (pending until confirmed)",
        description=(
            "The first half of a two-phase payment (缴费预处理): the gateway reserves the\n"
            "amount as a pending payment and answers with its order number and deadline.\n"
            "Without an amount, query first and prepay what is due. Then send confirm or\n"
            "cancel with the prepay's serial and order number."),
        epilog=(
            "examples:\n"
            "  bankgate simulate --bank demo-xml prepay 100000123\n"
            "  bankgate simulate --bank demo-xml prepay 100000123 1371.06 --serial P0001"))
    c.add_argument("customer")
    c.add_argument("amount", nargs="?", type=parse_amount, help="yuan, e.g. 1234.50")
    c.add_argument("--bills", help="bill ids to pay, comma-separated (plugins that name bills)")
    c.add_argument("--serial", help="bank serial (default: a fresh one)")

    for name, what, text in (
            ("confirm", "make a prepay final (two-phase)",
             "Confirm (缴费确认) a pending prepay, named by its serial and trade date: the\n"
             "payment becomes final and the answer carries the receipt and invoice numbers."),
            ("cancel", "cancel a pending prepay (two-phase)",
             "Cancel (撤销) a pending prepay, named by its serial and trade date: the bills\n"
             "are open again.")):
        c = sub.add_parser(
            name, help=what, description=text,
            epilog=(
                "examples:\n"
                f"  bankgate simulate --bank demo-xml {name} P0001 --order 20261205000000000001\n"
                f"  bankgate simulate --bank demo-xml {name} P0001 --date 2026-12-05"
                " --serial C0001"))
        c.add_argument("orig_serial", help="the prepay's serial")
        c.add_argument("--order", dest="order_no",
                       help="the order number the prepay's answer gave (default: none sent)")
        c.add_argument("--date", dest="orig_date", type=_date,
                       help="the prepay's trade date (default: the trade date)")
        c.add_argument("--serial", help=f"the {name}'s own serial (default: a fresh one)")

    c = sub.add_parser(
        "reverse", help="reversal of a payment",
        description="Reverse (冲正) an earlier payment by its serial, customer and amount.",
        epilog=(
            "examples:\n"
            "  bankgate simulate --bank demo-fixed reverse BK001 100000123 100.00\n"
            "  bankgate simulate --bank demo-iso8583 reverse RRN 100000123 1371.06 --advice"))
    c.add_argument("orig_serial")
    c.add_argument("customer")
    c.add_argument("amount", type=parse_amount, help="yuan, the original amount")
    c.add_argument("--serial", help="the reversal's own serial (default: a fresh one)")
    c.add_argument("--advice", action="store_true", help="ISO 8583: send a 0420 repeat")
    c.add_argument("--orig-stan", help="ISO 8583: the original payment's STAN (field 90)")

    c = sub.add_parser(
        "status", help="payment status query",
        description="Ask the status of an earlier payment by its serial (ref-fixed).",
        epilog="examples:\n  bankgate simulate --bank demo-fixed status BK001 2026-11-28")
    c.add_argument("orig_serial")
    c.add_argument("date", nargs="?", type=_date, help="the original's trade date")

    sub.add_parser(
        "signin", help="sign-in with key exchange (ISO 8583)",
        description=("Sign in and receive a fresh MAC key under the ZMK (ref-iso8583; the\n"
                     "other transactions sign in by themselves)."),
        epilog="examples:\n  bankgate simulate --bank demo-iso8583 signin")
    sub.add_parser(
        "echo", help="echo / heartbeat",
        description="Send an echo (heartbeat): is the gateway answering this bank?",
        epilog="examples:\n  bankgate simulate --bank demo-fixed echo")

    c = sub.add_parser(
        "cutoff", help="declare a trade date closed (ref-delim 511)",
        description="Declare the bank's trade date closed, as the bank would (ref-delim 511).",
        epilog="examples:\n  bankgate simulate --bank demo-delim cutoff 2026-11-28")
    c.add_argument("date", type=_date)

    c = sub.add_parser(
        "notice", help="statement notice for a settlement date",
        description=("Tell the gateway the bank's statement for a date is ready (ref-fixed 1005,\n"
                     "ref-delim 510): the gateway closes the date and reconciles it at once."),
        epilog="examples:\n  bankgate simulate --bank demo-fixed notice 2026-11-28")
    c.add_argument("date", type=_date)
    c.add_argument("--file-name")
    c.add_argument("--count", type=int, default=0, help="records in the statement file")
    c.add_argument("--total", type=parse_amount, default=0, help="statement total, yuan")

    c = sub.add_parser(
        "statement", help="write the bank's statement file for a date from what was posted"
                          " (as the bank would), into the bank's exchange folder",
        description=(
            "Not a message: write the statement file the bank would send for a date, from\n"
            "what the gateway posted, into the bank's exchange folder (as bankgate\n"
            "statement write). Needs no running gateway; reads the database."),
        epilog=(
            "examples:\n"
            "  bankgate simulate --bank demo-fixed statement --date 2026-11-28 --perturb"))
    c.add_argument("--date", type=_date, required=True, help="the settle date")
    c.add_argument("--perturb", nargs="?", const="all", default=None,
                   help="add discrepancies: 'all' or a comma list of bank-only, utility-only,"
                        " amount, date, totals")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", default=None, help="folder (default: the bank's exchange folder)")

    c = sub.add_parser(
        "load", help="paced load with latency percentiles",
        description=(
            "Paced load against one or several banks: scenarios (query, pay, reverse) at a\n"
            "rate, over connections, with latency percentiles at the end. Exit status 1 on\n"
            "errors or unfinished scenarios."),
        epilog=(
            "examples:\n"
            "  bankgate simulate --bank demo-fixed load --customers 100000001-100001000"
            " --rate 100 --duration 60\n"
            "  bankgate simulate load --banks demo-fixed,demo-delim --customers-from-db"
            " --rate 0 --duration 30"))
    c.add_argument("--banks", help="several banks at once, comma-separated (instead of --bank)")
    c.add_argument("--rate", type=_rate, default=10.0,
                   help="scenarios started per second and bank (0: unpaced; default 10)")
    c.add_argument("--duration", type=_positive(float, "duration", MAX_DURATION), default=10.0,
                   help=f"seconds (default 10, at most {MAX_DURATION:g})")
    c.add_argument("--concurrency", type=_positive(int, "concurrency", 1000), default=4,
                   help="connections per bank (default 4)")
    c.add_argument("--in-flight", type=_positive(int, "in-flight", 256), default=1,
                   help="requests in flight per connection, pipelined plugins (default 1)")
    c.add_argument("--mix", type=_mix_arg, default="query=50,pay=40,reverse=10",
                   help="scenario weights (default query=50,pay=40,reverse=10)")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--customers", type=_customers_arg,
                   help="customer numbers: a range 100000001-100001000 and/or a list")
    g.add_argument("--customers-from-db", action="store_true",
                   help="active customers with open bills, from the configured database")
    c.add_argument("--max-customers", type=_positive(int, "max-customers"), default=10000)
    c.add_argument("--seed", type=int, help="random seed (repeatable customer choice)")
    c.add_argument("--json", dest="json_out", help="also write the summary to this file")
    c.add_argument("--no-progress", action="store_true", help="no live progress display")


def _mix_arg(text: str) -> dict[str, float]:
    try:
        return parse_mix(text)
    except SimulateError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _customers_arg(text: str) -> list[str]:
    try:
        return parse_customers(text)
    except SimulateError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


@dataclass
class Plan:
    """A checked ``simulate`` command: what :func:`main` runs on the reactor."""

    command: str
    targets: list[Target]
    cfg: Any
    args: argparse.Namespace
    customers: list[str] = field(default_factory=list)


def prepare(args: argparse.Namespace, cfg=None, codecs: dict | None = None) -> Plan:
    """Check the arguments against the configuration; raises :class:`SimulateError`."""
    from bankgate.app.config import ConfigError, check_plugins, load_config

    try:
        if cfg is None:
            cfg = load_config(getattr(args, "config", None),
                              data_dir=getattr(args, "data_dir", None))
        if codecs is None:
            codecs = check_plugins(cfg)
    except ConfigError as e:
        raise SimulateError(f"configuration error: {e}") from None
    command = args.sim_command
    banks = getattr(args, "banks", None)
    if command == "load" and banks:
        if args.bank:
            raise SimulateError("give --bank or --banks, not both")
        names = [n.strip() for n in banks.split(",") if n.strip()]
        if args.host or args.port:
            raise SimulateError("--host/--port need a single --bank")
    elif args.bank:
        names = [args.bank]
    else:
        raise SimulateError(f"which bank? give --bank (configured: "
                            f"{', '.join(cfg.bank_names()) or 'none'})")
    if len(set(names)) != len(names):
        raise SimulateError("a bank is named twice")
    targets = [resolve_target(cfg, codecs, n, args.host, args.port) for n in names]
    plan = Plan(command=command, targets=targets, cfg=cfg, args=args)
    op = None if command == "load" else command  # the command is the operation
    if command == "reverse" and args.advice:
        op = "advice"
    if command in ("prepay", "pay") and args.amount is None:
        op_needed = ("query", op)  # query first, then pay what is due
    else:
        op_needed = (op,) if op else ()
    for t in targets:
        traits = traits_for(t.codec)
        for o in op_needed:
            missing = missing_ops(traits, o)
            if missing:
                raise unsupported(t.name, t.codec, traits, missing[0])
    if command == "load":
        allowed = configured_hosts(cfg)
        for t in targets:
            if not host_allowed(t.host, allowed):
                raise SimulateError(f"load: {t.host} is neither loopback nor a configured "
                                    "listener; refusing to load it")
        if args.customers:
            plan.customers = list(args.customers)
        elif args.customers_from_db:
            plan.customers = _db_customers(cfg, args.max_customers)
            if not plan.customers:
                raise SimulateError("load: no active customer with open bills in the database")
        else:
            raise SimulateError("load: give --customers RANGE or --customers-from-db")
    return plan


def _db_customers(cfg, limit: int) -> list[str]:
    from bankgate.app import wiring

    store = wiring.store(cfg)
    try:
        return customers_with_open_bills(store, limit)
    except Exception as e:  # noqa: BLE001 -- reported as a usage problem
        raise SimulateError(f"load: cannot read customers from the database: {e}") from None
    finally:
        store.stop()


def _local_now(reactor, tz) -> Callable[[], datetime]:
    return lambda: datetime.fromtimestamp(reactor.seconds(), tz).replace(tzinfo=None)


def main(args: argparse.Namespace) -> int:
    """``bankgate simulate``: run the reactor until the command is done."""
    from rich.console import Console

    console = Console()
    err = Console(stderr=True)
    try:
        plan = prepare(args)
    except SimulateError as e:
        err.print(f"bankgate simulate: {e}", markup=False, highlight=False)
        return 2
    try:
        task.react(_react_main, (plan, console))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0  # pragma: no cover -- react always exits


async def _react_main(reactor, plan: Plan, console) -> None:
    code = await run_plan(reactor, plan, console)
    raise SystemExit(code)


def _client(reactor, plan: Plan, t: Target, serials: SerialGenerator) -> BankClient:
    return BankClient(reactor, t.codec, t.profile, t.host, t.port,
                      now=_local_now(reactor, plan.cfg.tz), timeout=plan.args.timeout,
                      signin=False if plan.args.no_signin else None, serials=serials)


async def run_plan(reactor, plan: Plan, console) -> int:
    """Run a prepared command on ``reactor``; returns the exit status.

    0: answered and approved (load: everything answered); 1: answered but
    declined (load: errors or unanswered requests); 3: no answer (connection
    refused, timeout, unreadable answer).
    """
    if plan.command == "load":
        return await run_load(reactor, plan, console)
    t = plan.targets[0]
    a = plan.args
    now = _local_now(reactor, plan.cfg.tz)
    serials = SerialGenerator(now)
    client = _client(reactor, plan, t, serials)
    sim = BankSimulator(client, serials, trade_date=a.trade_date)
    shown: list[Answer] = []

    def show(answer: Answer) -> None:
        console.print(render_request(t, answer))
        console.print(render_answer(answer))
        shown.append(answer)

    try:
        if plan.command == "query":
            show(await sim.query(a.customer, serial=a.serial))
        elif plan.command in ("pay", "prepay"):
            await _pay(sim, a, show, shown, console, prepay=plan.command == "prepay")
        elif plan.command in ("confirm", "cancel"):
            run = sim.confirm if plan.command == "confirm" else sim.cancel
            show(await run(a.orig_serial, a.orig_date, a.order_no, serial=a.serial))
        elif plan.command == "reverse":
            show(await sim.reverse(a.orig_serial, a.customer, a.amount, advice=a.advice,
                                   serial=a.serial, orig_stan=a.orig_stan))
        elif plan.command == "status":
            show(await sim.status(a.orig_serial, a.date))
        elif plan.command == "signin":
            client.signin_txn = None  # this is the sign-in
            show(await sim.signin())
        elif plan.command == "echo":
            show(await sim.echo())
        elif plan.command == "cutoff":
            show(await sim.cutoff(a.date))
        elif plan.command == "notice":
            show(await sim.notice(a.date, file_name=a.file_name, record_count=a.count,
                                  total_amount=a.total))
    except SimulateError as e:
        console.print(f"[red]{e}[/red]")
        return 2
    except Exception as e:  # noqa: BLE001 -- report any failure to reach the gateway
        console.print(f"[red]no answer from {t.name} at {t.host}:{t.port}: "
                      f"{type(e).__name__}: {e}[/red]")
        return 3
    finally:
        await client.close()
    return 0 if shown and shown[-1].approved else 1


async def _pay(sim: BankSimulator, a, show, shown: list, console, *, prepay: bool) -> None:
    """``pay`` (a prepay and its confirm on a two-phase bank) or ``prepay``;
    without an amount (or bills to name) query first and pay what is due."""
    bills = [b.strip() for b in (a.bills or "").split(",") if b.strip()]
    if a.amount is not None and (bills or not sim.traits.pay_names_bills):
        answers = ([await sim.prepay(a.customer, a.amount, bills, serial=a.serial)] if prepay
                   else await sim.settle(a.customer, a.amount, bills, serial=a.serial))
    else:
        answers = await sim.pay_due(a.customer, a.amount, bills, prepay_only=prepay,
                                    serial=a.serial)
    for ans in answers:
        show(ans)
    if shown and shown[-1].op == "query" and shown[-1].approved:
        console.print("nothing due: no payment sent")


async def run_load(reactor, plan: Plan, console) -> int:
    a = plan.args
    rng = random.Random(a.seed)
    runners: list[LoadRunner] = []
    clients: list[BankClient] = []
    for t in plan.targets:
        now = _local_now(reactor, plan.cfg.tz)
        serials = SerialGenerator(now, rng=random.Random(rng.random()))
        sims = []
        for _ in range(a.concurrency):
            client = _client(reactor, plan, t, serials)
            clients.append(client)
            sims.append(BankSimulator(client, serials, trade_date=a.trade_date))
        depth = a.in_flight if sims[0].client.pipelined else 1
        runners.append(LoadRunner(reactor, sims, plan.customers, a.mix, rate=a.rate,
                                  duration=a.duration, depth=depth,
                                  rng=random.Random(rng.random())))

    def interrupt():
        for r in runners:
            r.interrupt()

    trigger = reactor.addSystemEventTrigger("before", "shutdown", interrupt)
    live = None
    refresher = None
    if not a.no_progress and console.is_terminal:
        from rich.live import Live

        live = Live(render_progress(runners), console=console, auto_refresh=False)
        live.start()
        refresher = task.LoopingCall(lambda: live.update(render_progress(runners),
                                                         refresh=True))
        refresher.clock = reactor
        refresher.start(0.5, now=False)
    try:
        results = await defer.gatherResults([r.start() for r in runners], consumeErrors=True)
    finally:
        if refresher is not None and refresher.running:
            refresher.stop()
        if live is not None:
            live.update(render_progress(runners), refresh=True)
            live.stop()
        try:
            reactor.removeSystemEventTrigger(trigger)
        except (KeyError, ValueError):  # already fired (Ctrl-C)
            pass
        await defer.gatherResults([c.close() for c in clients], consumeErrors=True)
    for st in results:
        console.print(render_summary(st))
    summary = {"banks": [st.summary() for st in results],
               "rate": a.rate, "duration": a.duration, "concurrency": a.concurrency,
               "mix": a.mix}
    if a.json_out:
        with open(a.json_out, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2, ensure_ascii=False, default=str)
    bad = any(st.errors or st.unfinished for st in results)
    return 1 if bad else 0


def run_cli(argv: list[str] | None = None) -> int:
    """``python -m bankgate.app.cli.simulate ...`` (the same as ``bankgate simulate ...``)."""
    p = argparse.ArgumentParser(prog="bankgate simulate")
    add_arguments(p)
    args = p.parse_args(argv)
    if not hasattr(args, "config"):
        args.config = None
    if args.sim_command == "statement":  # not a message: the bank's file, as `bankgate` does
        from bankgate.app.cli.recon import cmd_statement_write

        if not args.bank:
            print("bankgate simulate statement: --bank is required", file=sys.stderr)
            return 2
        return cmd_statement_write(args)
    return main(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_cli())
