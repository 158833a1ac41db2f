"""``bankgate reconcile``, ``statement write`` and ``recon runs|exceptions|resolve`` (对账).

The operator's side of :mod:`bankgate.domain.reconcile`; ``docs/reconciliation.rst``
is its manual.  Exit statuses are part of the interface (scripts and cron
read them): see each command.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

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
            f"bank {bank.name!r}: plugin {bank.plugin!r} declares no statement format:"
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
                                    dry_run=args.dry_run, progress=progress)
        else:
            rep = rec.reconcile(data, args.date, source=source, file_name=name,
                                dry_run=args.dry_run)
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
    from bankgate.canon.files import write_atomic

    cfg = _load(args.config)
    bank, rec = _reconciler(cfg, args.bank)
    perturb = []
    if args.perturb:
        perturb = list(PERTURBATIONS) if args.perturb == "all" else [
            p.strip() for p in args.perturb.split(",") if p.strip()]
    name, data, notes = statement_from_journal(rec.ledger, bank, rec.codec, args.date,
                                               perturb, seed=args.seed)
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
        print(f"run {r['id']:>6} {r['bank']:<16} {r['settle_date']} {r['status']:<10}"
              f"{' dry' if r['dry_run'] else '    '} statement {r['bank_count']}/"
              f"{r['bank_total'] / 100:.2f} gateway {r['ours_count']}/{r['ours_total'] / 100:.2f}"
              f" {r['summary'].get('error', '')}")
    return 0


def cmd_recon_exceptions(args) -> int:
    from bankgate.store import recon as sql

    cfg = _load(args.config)
    store = _store(cfg)
    rows = store.run_sync(sql.open_exceptions, args.bank, args.date)
    for r in rows:
        print(f"item {r['id']:>8} {r['bank']:<16} {r['settle_date']} run {r['run_id']:<6}"
              f" {r['category']:<15} {r['serial'] or '-':<20} bank {r['bank_amount'] / 100:.2f}"
              f" utility {r['our_amount'] / 100:.2f}  {r['detail'] or ''}")
    print(f"{len(rows)} open exception(s)")
    return 1 if rows else 0


def cmd_recon_resolve(args) -> int:
    from bankgate.store import recon as sql

    cfg = _load(args.config)
    if not args.note.strip():
        print("bankgate: --note must say what was done", file=sys.stderr)
        return 2
    store = _store(cfg)
    now = datetime.now(cfg.tz).replace(tzinfo=None)
    row = store.run_sync(sql.item_resolve, args.item, args.actor, args.note, now)
    if row is None:
        print(f"bankgate: no reconciliation item {args.item}", file=sys.stderr)
        return 2
    print(f"item {args.item}: {row['action']}  {row['detail']}")
    return 0


def add_cli(sub) -> None:
    """Register the reconciliation commands on the ``bankgate`` parser."""
    c = sub.add_parser("reconcile", help="reconcile a bank's statement for a date (对账)")
    c.add_argument("--bank", required=True)
    c.add_argument("--date", type=_date, required=True, help="the settle date")
    c.add_argument("--file", type=Path, default=None,
                   help="the statement file (default: fetch it from the bank's statement source)")
    c.add_argument("--dry-run", action="store_true",
                   help="classify and report, change nothing (no posting, reversing or cut-off)")
    c.set_defaults(func=cmd_reconcile)

    st = sub.add_parser("statement", help="statement files")
    sts = st.add_subparsers(dest="sub", required=True)
    c = sts.add_parser("write", help="write a bank's statement from the gateway's own journal")
    c.add_argument("--bank", required=True)
    c.add_argument("--date", type=_date, required=True)
    c.add_argument("--perturb", nargs="?", const="all", default=None,
                   help="add discrepancies: 'all' or a comma list of bank-only, utility-only,"
                        " amount, date, totals")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", default=None, help="folder (default: the bank's exchange folder)")
    c.set_defaults(func=cmd_statement_write)

    rc = sub.add_parser("recon", help="reconciliation runs and exceptions")
    rcs = rc.add_subparsers(dest="sub", required=True)
    c = rcs.add_parser("runs", help="list reconciliation runs")
    c.add_argument("--bank", default=None)
    c.add_argument("--date", type=_date, default=None)
    c.add_argument("--limit", type=int, default=30)
    c.set_defaults(func=cmd_recon_runs)
    c = rcs.add_parser("exceptions", help="the open exceptions (latest run of each date)")
    c.add_argument("--bank", default=None)
    c.add_argument("--date", type=_date, default=None)
    c.set_defaults(func=cmd_recon_exceptions)
    c = rcs.add_parser("resolve", help="close an exception after handling it by hand")
    c.add_argument("item", type=int)
    c.add_argument("--note", required=True)
    c.add_argument("--actor", required=True)
    c.set_defaults(func=cmd_recon_resolve)
