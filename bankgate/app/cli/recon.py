"""``bankgate reconcile``, ``statement write`` and ``recon runs|exceptions|resolve`` (对账).

The operator's side of :mod:`bankgate.domain.reconcile`; ``docs/reconciliation.rst``
is its manual.  Exit statuses are part of the interface (scripts and cron
read them): see each command.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from bankgate.app.cli.actor import add_actor
from bankgate.app.cli.argtypes import date_arg as _date
from bankgate.app.cli.common import _load, _parts, _store
from bankgate.app.config import Config
from bankgate.domain.reconcile import (
    PERTURBATIONS,
    ReconBusy,
    StatementError,
    statement_from_journal,
)


def _reconciler(cfg: Config, bank_name: str):
    bank = cfg.bank(bank_name)
    rec = _parts(cfg).reconcilers().get(bank.name)
    if rec is None:
        raise StatementError(
            f"bank {bank.name!r}: plugin {bank.plugin!r} declares no statement format"
            " (neither statement_format nor statement_name and read_statement):"
            " its banks cannot be reconciled")
    return bank, rec


def _fetch_remote(src, name: str) -> bytes:
    """Fetch from an FTP/SFTP source on a reactor of this command's own."""
    from twisted.internet import reactor

    src.reactor = reactor  # the command's reactor, handed to the source
    out: dict = {}

    def go():
        d = src.fetch(name)
        d.addBoth(lambda r: out.setdefault("r", r))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run(installSignalHandlers=False)
    r = out.get("r")
    if hasattr(r, "raiseException"):
        r.raiseException()
    return r


def cmd_reconcile(args) -> int:
    """Exit status: 0 balanced, 1 exceptions left for an operator, 2 the file
    or the configuration is unusable, 4 another run holds this bank and date."""
    from bankgate.domain.recon_report import summary_text
    from bankgate.wire.statement_sources import StatementMissing, StatementSourceError, source_for

    cfg = _load(args.config)
    bank, rec = _reconciler(cfg, args.bank)
    if args.file:
        name = args.file.name
        source = str(args.file)
        data = args.file.read_bytes()
    else:
        src = source_for(bank, None, data_dir=cfg.data_dir)
        name = rec.file_name(args.date)
        source = src.where(name)
        try:
            data = src.read_sync(name) if hasattr(src, "read_sync") else _fetch_remote(src, name)
        except (StatementMissing, StatementSourceError) as e:
            print(f"bankgate: {e}", file=sys.stderr)
            return 2
    try:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )
    except ImportError:  # pragma: no cover
        progress = None
        bar = None
    else:
        bar = Progress(TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), transient=False)
        tasks: dict = {}
        labels = {"read": "reading statement", "match": "matching",
                  "balance": "balancing (平帐)", "store": "storing items"}

        def progress(phase: str, done: int, total: int | None) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(labels.get(phase, phase), total=total)
            bar.update(tasks[phase], completed=done, total=total)

    try:
        if bar is not None:
            with bar:
                rep = rec.reconcile(data, args.date, source=source, file_name=name,
                                    dry_run=args.dry_run, progress=progress, actor=args.actor)
        else:
            rep = rec.reconcile(data, args.date, source=source, file_name=name,
                                dry_run=args.dry_run, actor=args.actor)
    except StatementError as e:
        print(f"bankgate: statement refused: {e}", file=sys.stderr)
        return 2
    except ReconBusy as e:
        print(f"bankgate: {e}", file=sys.stderr)
        return 4
    print(summary_text(rep))
    for kind, path in sorted(rep.outputs.items()):
        print(f"  {kind}: {path}")
    return 0 if rep.status == "BALANCED" else 1


def cmd_statement_write(args) -> int:
    """Exit status: 0 written, 2 the bank's plugin cannot write statements (or
    has none), or the configuration is unusable.  Through the plugin's
    statement format, as the reconciliation reads it."""
    from bankgate.canon.files import write_atomic

    cfg = _load(args.config)
    perturb = []
    if args.perturb:
        perturb = list(PERTURBATIONS) if args.perturb == "all" else [
            p.strip() for p in args.perturb.split(",") if p.strip()]
    try:
        bank, rec = _reconciler(cfg, args.bank)
        name, data, notes = statement_from_journal(rec.ledger, bank, rec.codec, args.date,
                                                   perturb, seed=args.seed)
    except StatementError as e:
        print(f"bankgate: {e}", file=sys.stderr)
        return 2
    folder = Path(args.out) if args.out else rec.exchange_dir()
    path = write_atomic(folder / name, data)
    print(f"{path}: {len(data)} bytes")
    for n in notes:
        print(f"  {n}")
    return 0


def cmd_recon_runs(args) -> int:
    from bankgate.store import recon as sql

    cfg = _load(args.config)
    store = _store(cfg)
    for r in store.run_sync(sql.runs, args.bank, args.date, args.limit):
        # the bank's run number; a dry run has none, and its status is what the
        # real run would have ended as
        if r["dry_run"]:
            name, status = "dry run ", f"would be {r['status']}"
        else:
            name, status = f"run {r['run_no'] if r['run_no'] is not None else '-':>4}", r["status"]
        print(f"{r['bank']:<16} {name} {r['settle_date']} {status:<19}"
              f" statement {r['bank_count']}/{r['bank_total'] / 100:.2f}"
              f" gateway {r['ours_count']}/{r['ours_total'] / 100:.2f}"
              f" {r['started_at']:%Y-%m-%d %H:%M} {r['summary'].get('actor', '')}"
              f" {r['summary'].get('error', '')}".rstrip())
    return 0


def cmd_recon_exceptions(args) -> int:
    from bankgate.store import recon as sql

    cfg = _load(args.config)
    store = _store(cfg)
    rows = store.run_sync(sql.open_exceptions, args.bank, args.date)
    for r in rows:
        print(f"item {r['id']:>8} {r['bank']:<16} {r['settle_date']} run {r['run_no']!s:<5}"
              f" {r['category']:<15} {r['serial'] or '-':<20} bank {r['bank_amount'] / 100:.2f}"
              f" utility {r['our_amount'] / 100:.2f}  {r['detail'] or ''}")
    print(f"{len(rows)} open exception(s)")
    return 1 if rows else 0


def cmd_recon_resolve(args) -> int:
    """Exit status: 0 resolved, 1 refused (not an open exception), 2 no such
    item, a dry run's, or no note."""
    from bankgate.domain.reconcile import ExceptionRefused, resolve_exception

    cfg = _load(args.config)
    if not args.note.strip():
        print("bankgate: --note must say what was done", file=sys.stderr)
        return 2
    store = _store(cfg)
    now = datetime.now(cfg.tz).replace(tzinfo=None)
    try:
        row = resolve_exception(store, args.item, actor=args.actor, note=args.note, now=now)
    except ExceptionRefused as e:
        print(f"bankgate: {e}", file=sys.stderr)
        return 2 if e.missing else 1
    print(f"item {args.item}: {row['action']}  {row['detail']}")
    return 0


def cmd_recon_post(args) -> int:
    """Exit status: 0 posted and resolved, 1 refused (nothing changed), 2 no such
    item, or its bank is not reconciled here."""
    from bankgate.canon.money import fen_to_yuan
    from bankgate.domain.reconcile import ExceptionRefused, exception_bank

    cfg = _load(args.config)
    parts = _parts(cfg)
    try:
        bank = exception_bank(parts.store, args.item)
        rec = parts.reconcilers().get(bank)
        if rec is None:
            print(f"bankgate: item {args.item} is of bank {bank!r}, which is not configured"
                  " with a statement format here", file=sys.stderr)
            return 2
        r = rec.post_exception(args.item, actor=args.actor, reason=args.reason,
                               customer_no=args.customer)
    except ExceptionRefused as e:
        print(f"bankgate: {e} -- nothing was changed", file=sys.stderr)
        return 2 if e.missing else 1
    print(f"item {r['item']}: posted by hand as receipt {r['receipt_no']}: {r['bank']}"
          f" {r['settle_date']} serial {r['serial']}, customer {r['customer_no']},"
          f" {fen_to_yuan(r['amount'])}; the exception is resolved")
    return 0


def add_cli(sub) -> None:
    """Register the reconciliation commands on the ``bankgate`` parser."""
    c = sub.add_parser(
        "reconcile", help="reconcile a bank's statement for a date (对账)",
        description=(
            "Reconcile a bank's statement for a settle date (对账) by hand, as the nightly\n"
            "run does: match it against the gateway's payments, balance what the rules\n"
            "allow (补销, 抹账), leave the rest as exceptions, write the reports.\n"
            "Exit status 0 balanced, 1 exceptions left for an operator, 2 the file or the\n"
            "configuration is unusable, 4 another run holds this bank and date."),
        epilog=(
            "examples:\n"
            "  bankgate reconcile --bank icbc-shenyang --date 2026-11-27\n"
            "  bankgate reconcile --bank icbc-shenyang --date 2026-11-27 --dry-run\n"
            "  bankgate reconcile --bank icbc-shenyang --date 2026-11-27"
            " --file 10521020261127.DZ"))
    c.add_argument("--bank", required=True, help="a configured bank")
    c.add_argument("--date", type=_date, required=True, help="the settle date")
    c.add_argument("--file", type=Path, default=None,
                   help="the statement file (default: fetch it from the bank's statement source)")
    c.add_argument("--dry-run", action="store_true",
                   help="classify and report, change nothing (no posting, reversing or cut-off)")
    add_actor(c)
    c.set_defaults(func=cmd_reconcile)

    st = sub.add_parser(
        "statement", help="statement files",
        description="Bank statement files, for demos and tests.",
        epilog="examples:\n  bankgate statement write --bank demo-delim --date 2026-11-27")
    sts = st.add_subparsers(dest="sub", required=True)
    c = sts.add_parser(
        "write", help="write a bank's statement from the gateway's own journal",
        description=(
            "Write the statement file a bank would send for a date, from the gateway's own\n"
            "payments, into the bank's exchange folder (demos, tests). --perturb adds\n"
            "discrepancies for reconciliation to find. It is written by the bank plugin's\n"
            "statement format, the one the reconciliation reads. Exit status 0 written,\n"
            "2 the plugin cannot write statements or the configuration is unusable."),
        epilog=(
            "examples:\n"
            "  bankgate statement write --bank demo-delim --date 2026-11-27\n"
            "  bankgate statement write --bank demo-delim --date 2026-11-27"
            " --perturb bank-only,amount"))
    c.add_argument("--bank", required=True, help="a configured bank")
    c.add_argument("--date", type=_date, required=True, help="the settle date")
    c.add_argument("--perturb", nargs="?", const="all", default=None,
                   help="add discrepancies: 'all' or a comma list of bank-only, utility-only,"
                        " amount, date, totals")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", default=None, help="folder (default: the bank's exchange folder)")
    c.set_defaults(func=cmd_statement_write)

    rc = sub.add_parser(
        "recon", help="reconciliation runs and exceptions",
        description="The reconciliation runs, their exceptions, and closing an exception.",
        epilog=(
            "examples:\n"
            "  bankgate recon runs --bank icbc-shenyang\n"
            "  bankgate recon exceptions"))
    rcs = rc.add_subparsers(dest="sub", required=True)
    c = rcs.add_parser(
        "runs", help="list reconciliation runs",
        description=(
            "List reconciliation runs, newest first: status (BALANCED, EXCEPTIONS, FAILED,\n"
            "RUNNING), the statement's and the gateway's count and total, and the error of\n"
            "a failed run."),
        epilog=(
            "examples:\n"
            "  bankgate recon runs\n"
            "  bankgate recon runs --bank icbc-shenyang --date 2026-11-27"))
    c.add_argument("--bank", default=None)
    c.add_argument("--date", type=_date, default=None)
    c.add_argument("--limit", type=int, default=30)
    c.set_defaults(func=cmd_recon_runs)
    c = rcs.add_parser(
        "exceptions", help="the open exceptions (latest run of each date)",
        description=(
            "The exceptions left for an operator by the latest run of each bank and date.\n"
            "Exit status 1 when there are any (for cron), 0 when none."),
        epilog=(
            "examples:\n"
            "  bankgate recon exceptions\n"
            "  bankgate recon exceptions --bank icbc-shenyang --date 2026-11-27"))
    c.add_argument("--bank", default=None)
    c.add_argument("--date", type=_date, default=None)
    c.set_defaults(func=cmd_recon_exceptions)
    c = rcs.add_parser(
        "resolve", help="close an exception after handling it by hand",
        description=(
            "Close an exception after handling it by hand, saying what was done; recorded\n"
            "with the actor and the note (the reason) in bg_audit (recon-resolve). Exit\n"
            "status 1 when the item is not an open exception (resolved already), 2 when\n"
            "there is no such item."),
        epilog=(
            "examples:\n"
            "  bankgate recon resolve 1234 --actor wang --note \"posted by hand in N8, ticket"
            " 5678\"\n"
            "  bankgate recon resolve 1234 --reason \"bank confirmed our amount\""))
    c.add_argument("item", type=int, help="the item number (recon exceptions)")
    c.add_argument("--note", "--reason", dest="note", required=True,
                   help="what was done and why (the reason in the audit trail)")
    add_actor(c)
    c.set_defaults(func=cmd_recon_resolve)
    c = rcs.add_parser(
        "post", help="post an exception's bank-only record by hand (手工补账)",
        description=(
            "Post an exception's bank-only record by hand (手工补账): the payment the bank's\n"
            "statement lists and the gateway does not, under the bank's serial and the\n"
            "settle date, to the bank's customer or --customer (a corrected number), as\n"
            "the nightly run posts (补销, the bank's post_policy); the exception is\n"
            "resolved with the reason in the same transaction (recon-post in bg_audit).\n"
            "Refused, changing nothing (exit status 1): not an open BANK_ONLY exception,\n"
            "the serial posted already or reversed first by the bank, the customer\n"
            "unknown or locked, the amount not accepted. Exit status 2: no such item."),
        epilog=(
            "examples:\n"
            "  bankgate recon post 1234 --reason \"bank confirmed the payment\" --actor wang\n"
            "  bankgate recon post 1234 --customer 100000123 --reason \"the bank's customer"
            " number was mistyped, see ticket 5678\" --actor wang"))
    c.add_argument("item", type=int, help="the item number (recon exceptions)")
    c.add_argument("--reason", required=True, help="why (recorded in bg_audit)")
    c.add_argument("--customer", default=None,
                   help="post to this customer number instead of the bank's")
    add_actor(c)
    c.set_defaults(func=cmd_recon_post)
