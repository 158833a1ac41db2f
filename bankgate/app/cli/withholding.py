"""``bankgate withholding ...``: the operator's side of withholding and card debits.

Agreements (``sign``, ``cancel``, ``list``), batch files (``batch``), their
results (``result``) -- :mod:`bankgate.domain.withholding` -- and real-time
card debits with their reversal queue (``debit``, ``queue``) --
:mod:`bankgate.domain.carddebit`: arguments in, the domain's calls, lines for
an operator out.  ``simulate-result`` and ``simulate-host`` play the bank for
demos and tests (:mod:`bankgate.devtools.debithost`).  ``docs/withholding.rst``
is the manual.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from twisted.internet import defer
from twisted.python.failure import Failure

from bankgate.app import wiring
from bankgate.app.carddebits import build
from bankgate.app.cli.actor import add_actor
from bankgate.app.cli.argtypes import date_arg as _date
from bankgate.app.config import check_plugins
from bankgate.app.options import parse_options, simulated_listen, withholding_options
from bankgate.canon.money import fen_to_yuan
from bankgate.domain.carddebit import CardDebits, DebitResult, abandon, resend
from bankgate.domain.withholding import (
    CUSTOMER_CHOICES,
    ResultFileRefused,
    WithholdingError,
    exchange_dir,
    report_text,
    result_reasons,
    write_report_csv,
)
from bankgate.store import audit
from bankgate.store import withholding as sql

# -- withholding: agreements, batch files, results -------------------------------------------


def _pairs(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(","):
        if not part.strip():
            continue
        k, sep, v = part.partition("=")
        if not sep or not k.strip() or not v.strip():
            raise argparse.ArgumentTypeError(f"expected ACCOUNT=CODE[,...], got {text!r}")
        out[k.strip()] = v.strip()
    return out


@dataclass
class _Cli:
    load_config: Callable
    make_ledger: Callable
    make_reactor: Callable | None = None  # tests inject; default a private reactor

    def context(self, args):
        cfg = self.load_config(args.config)
        codecs = check_plugins(cfg)
        ledger = self.make_ledger(cfg)
        wh = wiring.withholding(cfg, ledger, codecs)
        return cfg, codecs, ledger, wh

    def reactor(self):
        if self.make_reactor is not None:
            return self.make_reactor()
        from twisted.internet.selectreactor import SelectReactor

        return SelectReactor()  # this command's own, never the global one


def _fail(msg: str, code: int = 2) -> int:
    print(f"bankgate: {msg}", file=sys.stderr)
    return code


def cmd_sign(ctx: _Cli, args) -> int:
    _cfg, _c, _l, wh = ctx.context(args)
    try:
        ch = wh.sign(args.customer, args.bank, args.account, args.actor)
    except WithholdingError as e:
        return _fail(str(e))
    print(f"customer {ch.customer_no} {ch.name}: withholding with bank code {ch.bank_code}"
          f" ({args.bank}) account {ch.account}")
    for w in ch.warnings:
        print(f"  note: {w}")
    return 0


def cmd_cancel(ctx: _Cli, args) -> int:
    _cfg, _c, _l, wh = ctx.context(args)
    try:
        ch = wh.cancel(args.customer, args.actor, args.reason or "")
    except WithholdingError as e:
        return _fail(str(e))
    print(f"customer {ch.customer_no} {ch.name}: withholding cancelled (was bank code"
          f" {ch.previous_bank} account {ch.previous_account})")
    for w in ch.warnings:
        print(f"  note: {w}")
    return 0


def cmd_list(ctx: _Cli, args) -> int:
    _cfg, _c, _l, wh = ctx.context(args)
    try:
        rows = wh.agreements(args.bank, args.limit)
    except WithholdingError as e:
        return _fail(str(e))
    for r in rows:
        flags = ("托收 " if r["large_customer"] == 1 else "") + (
            "LOCKED " if r["status"] != "A" else "")
        print(f"{r['customer_no']:<12} {r['name'][:20]:<20} bank {r['withholding_bank']:<8}"
              f" ({','.join(r['banks']) or 'not configured'}) account {r['account']} {flags}")
    print(f"{len(rows)} agreement(s)")
    return 0


def cmd_batch(ctx: _Cli, args) -> int:
    cfg, _c, ledger, wh = ctx.context(args)
    try:
        if args.list:
            for r in wh.batches(args.bank, args.date, args.limit):
                print(f"{r['file_name']:<24} {r['status']:<10} lines {r['record_count']:>6}"
                      f" {fen_to_yuan(r['total']):>14}  debited {r['success_count']:>6}"
                      f" {fen_to_yuan(r['success_total']):>14}")
            return 0
        if args.rewrite:
            path = wh.rewrite_batch(args.bank, args.rewrite)
            ledger.store.run_sync(audit.record, ledger.now(), args.actor,
                                  "withholding-batch-rewrite", path.name, {"bank": args.bank})
            print(f"{path}: written again")
            return 0
        if args.cancel:
            row = wh.cancel_batch(args.bank, args.cancel, args.actor, args.reason or "")
            print(f"{row['file_name']}: cancelled; its bills go into the next file")
            return 0
        d = args.date or ledger.now().date()
        res = wh.generate_batch(args.bank, d, args.customers, args.actor)
    except WithholdingError as e:
        return _fail(str(e))
    if res.batch is None:
        print(f"{args.bank} {d}: nothing to collect, no file written")
    else:
        print(f"{res.path}: {res.count} line(s), {fen_to_yuan(res.total)}"
              + (f", {res.large} collection order(s) (托收)" if res.large else ""))
    for why, n in sorted(res.skipped.items()):
        print(f"  left out: {n} bill(s): {why}")
    return 0


def cmd_result(ctx: _Cli, args) -> int:
    cfg, _c, _l, wh = ctx.context(args)
    refused = False
    try:
        if args.report:
            reps = [wh.report(args.bank, args.report)]
        else:
            if args.files:
                todo = [(p, None) for p in args.files]
            else:
                todo = [(p, row["file_name"]) for row, p in wh.result_files(args.bank)]
                if not todo:
                    print(f"{args.bank}: no result file waiting in"
                          f" {exchange_dir(cfg.bank(args.bank), cfg.data_dir)}")
                    return 0
            reps = []
            for path, batch_file in todo:
                try:
                    data = Path(path).read_bytes()
                except OSError as e:
                    refused = True
                    _fail(f"{path}: {e.strerror}")
                    continue
                try:
                    reps.append(wh.process_result(args.bank, data, Path(path).name,
                                                  args.batch or batch_file, args.actor))
                except ResultFileRefused as e:
                    refused = True
                    _fail(str(e))
            if refused and not reps:
                return 2
    except WithholdingError as e:
        return _fail(str(e))
    for rep in reps:
        print(report_text(rep))
        if args.csv:
            path = Path(args.csv)
            if len(reps) > 1:
                path = path.with_name(f"{path.stem}-{Path(rep.file_name).stem}{path.suffix}")
            print(f"  failures: {write_report_csv(rep, path)}")
    if refused:
        return 2
    return 1 if any(r.attention for r in reps) else 0


def cmd_simulate_result(ctx: _Cli, args) -> int:
    from bankgate.devtools.debithost import answer_pk_file

    cfg = ctx.load_config(args.config)
    codecs = check_plugins(cfg)
    try:
        b = cfg.bank(args.bank)
    except KeyError as e:
        return _fail(e.args[0])
    path = Path(args.file)
    if not path.is_absolute() and not path.exists():
        path = exchange_dir(b, cfg.data_dir) / path
    try:
        out, counts = answer_pk_file(
            path, codecs[b.plugin], fail=args.fail or {}, fail_rate=args.fail_rate,
            seed=args.seed, out_dir=Path(args.out) if args.out else None)
    except (OSError, ValueError) as e:
        return _fail(f"{path}: {e}")
    print(f"{out}: " + ", ".join(f"{result_reasons(codecs[b.plugin]).get(k, k)}: {n}"
                                 for k, n in sorted(counts.items())))
    return 0


# -- card debits (卡扣) ----------------------------------------------------------------------


def _run(ctx, args, work) -> int:
    """Run ``work(debits, reactor) -> Deferred[int]`` on a reactor of this
    command's own, with the store's pool reporting through it."""
    cfg, codecs, ledger, _wh = ctx.context(args)
    reactor = ctx.reactor()
    store = ledger.store
    store.reactor = reactor
    store.start()
    try:
        debits = build(ledger, cfg, codecs, reactor,
                       lambda: datetime.fromtimestamp(reactor.seconds(), cfg.tz).replace(
                           tzinfo=None),
                       banks=[args.bank] if getattr(args, "bank", None) else None)
    except Exception:
        store.stop()
        raise
    out: dict = {}

    def go():
        for b in debits.banks.values():
            b.link.service.startService()
        d = defer.maybeDeferred(work, debits, reactor)

        def stop(result):
            out["r"] = result
            ds = [defer.maybeDeferred(b.link.service.stopService) for b in debits.banks.values()]
            return defer.DeferredList(ds)

        d.addBoth(stop)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run(installSignalHandlers=False)
    store.stop()
    r = out.get("r")
    if isinstance(r, Failure):
        r.raiseException()
    return r


def _print_result(r: DebitResult) -> int:
    what = {
        "DEBITED": "debited and posted",
        "FAILED": "not debited",
        "REVERSING": "OUTCOME UNKNOWN: a reversal (561) is pending in the queue",
        "REFUSED": "not sent",
        "REVERSED": "reversed",
        "NOT_DEBITED": "never debited",
    }.get(r.status, r.status.lower())
    if r.utility_serial:
        print(f"{r.bank} {r.utility_serial} customer {r.customer_no} bills {','.join(r.bill_ids)}"
              f" {fen_to_yuan(r.amount)}: {r.status} -- {what}")
    else:
        print(f"{r.bank} customer {r.customer_no}: {r.status} -- {what}")
    if r.code:
        print(f"  bank answer {r.code}" + (f", bank serial {r.bank_serial}" if r.bank_serial
                                           else ""))
    if r.receipt_no:
        print(f"  receipt {r.receipt_no}")
    if r.message:
        print(f"  {r.message}")
    return {"DEBITED": 0, "REVERSING": 3, "SENT": 3}.get(r.status, 1)


def cmd_debit(ctx, args) -> int:
    bills = tuple(x.strip() for x in args.bills.split(",")) if args.bills else None

    def work(debits: CardDebits, reactor):
        if args.bank not in debits.banks:
            print(f"bankgate: bank {args.bank!r} has no debit host"
                  f" (bank.{args.bank}.options.debit_host)", file=sys.stderr)
            return 2
        d = debits.debit(args.bank, args.customer, bills, serial=args.serial, actor=args.actor)

        def answered(r: DebitResult):
            if r.status != "REVERSING":
                return r
            # try the reversal once now; the gateway's queue repeats it if needed
            return debits.tick().addCallback(lambda _: debits.run_db(
                debits.store.run_sync, sql.debit_get, args.bank, r.utility_serial)).addCallback(
                lambda row: DebitResult.from_row(row, r.message) if row else r)

        return d.addCallback(answered).addCallback(_print_result)

    return _run(ctx, args, work)


def cmd_queue(ctx, args) -> int:
    cfg, _codecs, ledger, _wh = ctx.context(args)
    store = ledger.store
    if args.abandon is not None:
        if not args.note.strip() or not args.actor.strip():
            print("bankgate: --abandon needs --note and --actor", file=sys.stderr)
            return 2
        row = abandon(store, args.abandon, args.actor, args.note,
                      datetime.now(cfg.tz).replace(tzinfo=None))
        if row is None:
            print(f"bankgate: debit {args.abandon} is not pending", file=sys.stderr)
            return 2
        print(f"debit {row['id']} {row['utility_serial']}: abandoned")
        return 0
    if args.resend:
        def work(debits: CardDebits, reactor):
            debits._resume_all = True
            return debits.tick().addCallback(lambda _: 0)

        store.run_sync(audit.record, datetime.now(cfg.tz).replace(tzinfo=None), args.actor,
                       "card-debit-resend", args.bank or "all banks", {"bank": args.bank})
        _run(ctx, args, work)
    if args.all:
        rows = store.run_sync(sql.debits, args.bank, None, args.limit, readonly=True)
    else:
        rows = store.run_sync(sql.debits, args.bank, ("SENT", "REVERSING"), args.limit, True,
                              readonly=True)
    for r in rows:
        nxt = f" next {r['next_attempt_at']:%Y-%m-%d %H:%M:%S}" if r["next_attempt_at"] else ""
        posted = "" if r["status"] != "DEBITED" else (
            " posted" if r["payment_id"] else " NOT POSTED")
        print(f"{r['id']:>8} {r['bank']:<14} {r['utility_serial']:<24} {r['status']:<11}{posted}"
              f" customer {r['customer_no']} {fen_to_yuan(r['amount']):>12} code"
              f" {r['response_code'] or '-'} attempts {r['attempts']}{nxt}")
    pending = [r for r in rows if r["status"] in ("SENT", "REVERSING")
               or (r["status"] == "DEBITED" and r["payment_id"] is None)]
    print(f"{len(pending)} pending")
    return 1 if pending else 0


def cmd_resend(ctx, args) -> int:
    """Exit status: 0 marked to be sent again (the running gateway sends it), 1
    refused (nothing changed), 2 no reason."""
    cfg, codecs, ledger, _wh = ctx.context(args)
    if not args.reason.strip():
        print("bankgate: --reason must say why", file=sys.stderr)
        return 2
    try:
        r = resend(ledger.store, args.id, actor=args.actor, reason=args.reason,
                   now=datetime.now(cfg.tz).replace(tzinfo=None),
                   options=withholding_options(cfg, codecs))
    except WithholdingError as e:
        print(f"bankgate: {e} -- nothing was changed", file=sys.stderr)
        return 1
    row = r["row"]
    print(f"debit {row['id']} {row['bank']} {row['utility_serial']} customer"
          f" {row['customer_no']} {fen_to_yuan(row['amount'])}: {r['what']}")
    print(f"  the running gateway sends it at its next check (every"
          f" {CardDebits.interval:g} s); bankgate withholding queue shows the answer")
    return 0


def cmd_simulate_host(ctx, args) -> int:
    from twisted.application import strports

    from bankgate.devtools.debithost import MODES, DebitHost

    cfg = ctx.load_config(args.config)
    codecs = check_plugins(cfg)
    b = cfg.bank(args.bank)
    listen = args.listen
    if listen is None:
        opts = parse_options(b, cfg.source)
        if opts.debit_host is None:
            print(f"bankgate: bank {b.name} has no debit_host; give --listen", file=sys.stderr)
            return 2
        listen = simulated_listen(opts)
    if args.mode not in MODES:
        print(f"bankgate: --mode: one of {', '.join(MODES)}", file=sys.stderr)
        return 2
    reactor = ctx.reactor()
    host = DebitHost(reactor, codec=codecs[b.plugin], mode=args.mode, delay=args.delay,
                     refuse=args.refuse or {}, close_after_answer=args.one_per_connection)
    svc = strports.service(listen, host.factory(), reactor=reactor)
    reactor.callWhenRunning(svc.startService)
    print(f"simulated debit host of {b.name} on {listen}, mode {args.mode} (Ctrl-C stops)")
    sys.stdout.flush()
    reactor.run()
    return 0


def add_card_debit_commands(ws, ctx: _Cli) -> None:
    """``debit``, ``queue`` and ``simulate-host`` under ``bankgate withholding``."""
    c = ws.add_parser(
        "debit", help="real-time card debit (卡扣) of a customer's bill(s)",
        description=(
            "Debit a signed-up customer's bill(s) now over the bank's debit host (560), and\n"
            "post the payment. Exit status 0 DEBITED; 1 FAILED or REFUSED (the bill stays\n"
            "open); 3 REVERSING: the outcome is unknown, a 561 reversal is pending and the\n"
            "gateway repeats it -- never send the debit again. --serial S shows an earlier\n"
            "debit's state and never sends a second 560."),
        epilog=(
            "examples:\n"
            "  bankgate withholding debit --bank ccb-shenyang --customer 100000123\n"
            "  bankgate withholding debit --bank ccb-shenyang --customer 100000123"
            " --bills B0002,B0003"))
    c.add_argument("--bank", required=True)
    c.add_argument("--customer", required=True)
    c.add_argument("--bills", default=None,
                   help="comma-separated bill ids (default: the oldest open bill)")
    c.add_argument("--serial", default=None,
                   help="our serial (default: a fresh one); an existing one shows its state")
    add_actor(c)
    c.set_defaults(func=functools.partial(cmd_debit, ctx))

    c = ws.add_parser(
        "queue", help="pending card debit reversals (561) and unposted debits",
        description=(
            "The card debits whose outcome is open: pending 561 reversals, unanswered and\n"
            "unposted debits. Exit status 1 while anything is pending. --resend sends the\n"
            "pending reversals now; --abandon closes one by hand, only with the bank's\n"
            "confirmation."),
        epilog=(
            "examples:\n"
            "  bankgate withholding queue\n"
            "  bankgate withholding queue --all\n"
            "  bankgate withholding queue --resend\n"
            "  bankgate withholding queue --abandon 42 --note \"bank confirmed reversal by"
            " phone\" --actor wang.fang"))
    c.add_argument("--bank", default=None)
    c.add_argument("--all", action="store_true", help="recent debits of every status")
    c.add_argument("--limit", type=int, default=100)
    c.add_argument("--resend", action="store_true", help="send the pending reversals now")
    c.add_argument("--abandon", type=int, metavar="ID", default=None,
                   help="close a pending reversal by hand (needs --note and --actor)")
    c.add_argument("--note", default="")
    add_actor(c)
    c.set_defaults(func=functools.partial(cmd_queue, ctx))

    c = ws.add_parser(
        "resend", help="send one pending card debit again now (重发卡扣)",
        description=(
            "Send one pending card debit again now (重发卡扣), audited with the reason\n"
            "(card-debit-resend): a pending reversal (561) is due now instead of at its\n"
            "back-off; a debit whose answer can no longer come (sent more than twice\n"
            "debit_timeout and 30 s ago) becomes a reversal due now -- never a second 560;\n"
            "a debited, unposted row is posted again. This command only marks the row in\n"
            "the database: the running gateway's queue sends it at its next check (every\n"
            "5 s). Exit status 1 when refused (nothing changed)."),
        epilog=(
            "examples:\n"
            "  bankgate withholding resend 42 --reason \"bank host back after maintenance\""
            " --actor wang.fang"))
    c.add_argument("id", type=int, help="the debit's number (withholding queue)")
    c.add_argument("--reason", required=True, help="why (recorded in bg_audit)")
    add_actor(c)
    c.set_defaults(func=functools.partial(cmd_resend, ctx))

    c = ws.add_parser(
        "simulate-host", help="play a bank's debit host (560/561) for demos",
        description=(
            "Play a bank's card-debit host (560 debits, 561 reversals) for demos and tests,\n"
            "in the foreground until Ctrl-C; --mode makes it misbehave on purpose."),
        epilog=(
            "examples:\n"
            "  bankgate withholding simulate-host --bank demo-delim\n"
            "  bankgate withholding simulate-host --bank demo-delim --mode slow --delay 20\n"
            "  bankgate withholding simulate-host --bank demo-delim --refuse"
            " 6222020200012345678=101"))
    c.add_argument("--bank", required=True)
    c.add_argument("--listen", default=None,
                   help="server endpoint (default: from the bank's debit_host)")
    c.add_argument("--mode", default="normal", help="normal, slow, silent, ignore, drop,"
                   " drop-after, duplicate, busy, garbage")
    c.add_argument("--delay", type=float, default=5.0, help="seconds, for --mode slow")
    c.add_argument("--refuse", type=_pairs, default=None,
                   help="ACCOUNT=CODE,... answer 101/102/103 for these accounts")
    c.add_argument("--one-per-connection", action="store_true",
                   help="close the connection after each answer")
    c.set_defaults(func=functools.partial(cmd_simulate_host, ctx))


# -- the commands ------------------------------------------------------------------------------


def add_cli(subparsers, load_config: Callable, make_ledger: Callable,
            make_reactor: Callable | None = None) -> argparse.ArgumentParser:
    """Register ``bankgate withholding sign|cancel|list|batch|result|debit|queue``
    (and the bank side for demos: ``simulate-result``, ``simulate-host``).

    ``load_config(path) -> Config`` and ``make_ledger(cfg) -> Ledger`` are the
    CLI's own; commands read ``args.config``."""
    ctx = _Cli(load_config, make_ledger, make_reactor)
    wp = subparsers.add_parser(
        "withholding", help="withholding (代扣/卡扣/托收): agreements, batch files, card debits",
        description=(
            "Withholding (代扣/托收/卡扣): customers' agreements, the .PK batch files and the\n"
            "bank's .PKJG results, real-time card debits and their reversal queue.\n"
            "docs/withholding.rst is the manual."),
        epilog=(
            "examples:\n"
            "  bankgate withholding batch --bank ccb-shenyang\n"
            "  bankgate withholding result --bank ccb-shenyang\n"
            "  bankgate withholding queue"))
    ws = wp.add_subparsers(dest="sub", required=True)

    c = ws.add_parser(
        "sign", help="sign a customer up for withholding (writes N8; audited)",
        description=(
            "Sign a customer up for withholding with a bank and an account, in N8's\n"
            "customer record; replaces an agreement with another bank (and says so).\n"
            "Audited with the actor."),
        epilog=(
            "examples:\n"
            "  bankgate withholding sign 100000123 --bank ccb-shenyang"
            " --account 6222020200012345678 --actor li.ming"))
    c.add_argument("customer")
    c.add_argument("--bank", required=True, help="the configured bank")
    c.add_argument("--account", required=True, help="the customer's account number")
    add_actor(c)
    c.set_defaults(func=functools.partial(cmd_sign, ctx))

    c = ws.add_parser(
        "cancel", help="end a customer's withholding agreement (audited)",
        description=(
            "End a customer's withholding agreement; says which bills still wait in a\n"
            "file or a card debit (they are settled when the bank answers). Audited."),
        epilog=(
            "examples:\n"
            "  bankgate withholding cancel 100000123 --actor li.ming --reason \"moved away\""))
    c.add_argument("customer")
    add_actor(c)
    c.add_argument("--reason", default="")
    c.set_defaults(func=functools.partial(cmd_cancel, ctx))

    c = ws.add_parser(
        "list", help="list withholding agreements (accounts masked)",
        description="List the customers signed up for withholding, account numbers masked.",
        epilog=(
            "examples:\n"
            "  bankgate withholding list\n"
            "  bankgate withholding list --bank ccb-shenyang"))
    c.add_argument("--bank", default=None)
    c.add_argument("--limit", type=int, default=None)
    c.set_defaults(func=functools.partial(cmd_list, ctx))

    c = ws.add_parser(
        "batch", help="write a bank's .PK batch file for a date (default today);"
                      " --list, --rewrite or --cancel a batch",
        description=(
            "Write a bank's .PK batch file into its exchange folder: one line per open bill\n"
            "of its active signed-up customers, not those already waiting elsewhere. Prints\n"
            "the lines and total; writes nothing when there is nothing to collect.\n"
            "--list shows the batches, --rewrite writes a waiting batch's file again,\n"
            "--cancel withdraws one the bank will not process."),
        epilog=(
            "examples:\n"
            "  bankgate withholding batch --bank ccb-shenyang\n"
            "  bankgate withholding batch --bank ccb-shenyang --date 2026-11-27"
            " --customers large\n"
            "  bankgate withholding batch --bank ccb-shenyang --list"))
    c.add_argument("--bank", required=True)
    c.add_argument("--date", type=_date, default=None, help="the deduct date")
    c.add_argument("--customers", choices=CUSTOMER_CHOICES, default="all",
                   help="large: collection orders (托收) only; households: without them")
    add_actor(c)
    g = c.add_mutually_exclusive_group()
    g.add_argument("--list", action="store_true", help="list the bank's batches")
    g.add_argument("--rewrite", metavar="FILE", help="write a waiting batch's file again")
    g.add_argument("--cancel", metavar="FILE", help="withdraw a batch the bank will not process")
    c.add_argument("--reason", default="", help="why a batch is cancelled")
    c.add_argument("--limit", type=int, default=50)
    c.set_defaults(func=functools.partial(cmd_batch, ctx))

    c = ws.add_parser(
        "result", help="process .PKJG result files (default: every one waiting"
                       " in the exchange folder) and report failures by reason",
        description=(
            "Process the bank's .PKJG result files: post every debited line, report the\n"
            "failures by reason. A file that does not match its batch is refused whole.\n"
            "Processing a file again is safe. Exit status 0 all posted, 1 failed or\n"
            "unposted lines for an operator, 2 a file refused or unusable arguments."),
        epilog=(
            "examples:\n"
            "  bankgate withholding result --bank ccb-shenyang\n"
            "  bankgate withholding result --bank ccb-shenyang --csv failures.csv\n"
            "  bankgate withholding result --bank ccb-shenyang --report 1032102026112701.PK"))
    c.add_argument("--bank", required=True)
    c.add_argument("files", nargs="*", help=".PKJG files")
    c.add_argument("--batch", default=None, help="the .PK a result file answers (if renamed)")
    c.add_argument("--report", metavar="FILE", default=None,
                   help="only show the report of a batch (its .PK name)")
    c.add_argument("--csv", default=None, help="also write failed and unposted lines as CSV")
    add_actor(c)
    c.set_defaults(func=functools.partial(cmd_result, ctx))

    add_card_debit_commands(ws, ctx)

    c = ws.add_parser(
        "simulate-result",
        help="play the bank: write the .PKJG result for a .PK file (demo, tests)",
        description=(
            "Play the bank: write the .PKJG result file for a .PK batch file, for demos and\n"
            "tests, with chosen or random failures."),
        epilog=(
            "examples:\n"
            "  bankgate withholding simulate-result --bank demo-delim 1032102026112701.PK\n"
            "  bankgate withholding simulate-result --bank demo-delim 1032102026112701.PK"
            " --fail-rate 0.1 --seed 1"))
    c.add_argument("--bank", required=True)
    c.add_argument("file", help="the .PK file (a name in the exchange folder, or a path)")
    c.add_argument("--fail", type=_pairs, default=None,
                   help="ACCOUNT_OR_CUSTOMER=RESULT,... fixed failures (result 1-4)")
    c.add_argument("--fail-rate", type=float, default=0.0,
                   help="share of the other lines failing with a random reason 1-3")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", default=None, help="folder (default: next to the .PK)")
    c.set_defaults(func=functools.partial(cmd_simulate_result, ctx))
    return wp
