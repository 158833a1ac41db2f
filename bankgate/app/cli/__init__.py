"""The ``bankgate`` command: operator and bank-IT tools beside ``twistd bankgate``."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from bankgate.app.cli.argtypes import date_arg as _date
from bankgate.app.config import Config, ConfigError, check_options, check_plugins, load_config
from bankgate.codec.registry import PluginError
from bankgate.domain import invoices, withholding

_DATA_DIR: str | None = None  # the global --data-dir, set by main()


def _load(path: str | None) -> Config:
    """The configuration, with the global ``--data-dir`` applied."""
    return load_config(path, data_dir=_DATA_DIR)


def _store(cfg: Config, create_n8: bool = False):
    from bankgate.store.db import Store

    store = Store(cfg.db_url, cfg.n8, threads=cfg.db_threads)
    store.create_gateway_tables()
    if create_n8 and not store.n8_exists():
        store.create_n8_tables()
    return store


def _ledger(cfg: Config):
    from bankgate.domain.ledger import Ledger

    return Ledger(_store(cfg), {b.name: b.policy_() for b in cfg.banks},
                  now=lambda: datetime.now(cfg.tz).replace(tzinfo=None),
                  hooks=list(filter(None, [invoices.make_hook(cfg)])))


def _mac_text(b) -> str:
    if b.plugin == "ref-iso8583":
        return "on (MAK from sign-in under the ZMK)"
    return "on" if b.mac else "off"


def cmd_config_check(args) -> int:
    cfg = load_config(args.file)
    codecs = check_plugins(cfg)
    check_options(cfg, codecs)
    withholding.check_config(cfg, codecs)
    invoices.settings_for(cfg)
    print(f"{args.file}: OK")
    print(f"  database: {cfg.db_url.split('@')[-1]}")
    for b in cfg.banks:
        print(f"  bank {b.name}: plugin {b.plugin}, code {b.bank_code}, policy {b.policy},"
              f" listen {', '.join(b.listen) or '-'}, MAC {_mac_text(b)}")
    return 0


def cmd_db_upgrade(args) -> int:
    from bankgate.store.migrations import current, head

    cfg = _load(args.config)
    store = _store(cfg, create_n8=args.create_n8 or cfg.n8_create)
    print(f"gateway schema at revision {current(store.engine)} (head {head()})")
    return 0


def cmd_demo_seed(args) -> int:
    from bankgate.devtools.demo import seed

    cfg = _load(args.config)
    if not cfg.n8_create:
        print(f"bankgate: {cfg.source}: n8.create is false: demo data goes only into a"
              " reference N8 schema the gateway created, never into a real N8",
              file=sys.stderr)
        return 2
    store = _store(cfg, create_n8=True)
    try:
        from rich.progress import Progress
    except ImportError:  # pragma: no cover
        stats = seed(store, args.customers, replace=args.replace)
    else:
        with Progress() as progress:
            task = progress.add_task("seeding customers", total=args.customers)
            stats = seed(store, args.customers, replace=args.replace,
                         progress=lambda done, total: progress.update(task, completed=done))
    print(", ".join(f"{k}: {v}" for k, v in stats.items()))
    return 0


def cmd_cutoff(args) -> int:
    cfg = _load(args.config)
    r = _ledger(cfg).cutoff(args.bank, args.date, reason="operator", actor=args.actor)
    print(f"{args.bank} {args.date}: closed; {r.count} standing payments, {r.total / 100:.2f}")
    return 0


def cmd_refund(args) -> int:
    cfg = _load(args.config)
    r = _ledger(cfg).refund(args.receipt, args.reason, args.actor)
    print(f"{r.outcome.value}: {r.message}")
    return 0 if r.outcome.value == "OK" else 1


def cmd_plugins_list(args) -> int:
    from bankgate.codec.registry import discover

    cfg = _load(args.config)
    for name, codec in sorted(discover(cfg.plugin_dirs).items()):
        print(f"{name:16} {getattr(codec, 'description', '')}")
    return 0


def cmd_plugins_check(args) -> int:
    from bankgate.codec.check import check_plugin_file

    problems = check_plugin_file(args.file)
    for p in problems:
        print(p)
    return 1 if any(p.startswith("FAIL") for p in problems) else 0


def cmd_simulate(args) -> int:
    from bankgate.devtools.simulate import main as simulate_main

    if getattr(args, "sim_command", None) == "statement":
        if not args.bank:
            print("bankgate simulate statement: --bank is required", file=sys.stderr)
            return 2
        return cmd_statement_write(args)

    return simulate_main(args)


# -- reconciliation (对账) ----------------------------------------------------------


def _reconciler(cfg: Config, bank_name: str):
    from bankgate.domain import reconcile

    bank = cfg.bank(bank_name)
    codecs = check_plugins(cfg)
    mod = reconcile
    ledger = _ledger(cfg)
    return mod, bank, mod.Reconciler(ledger, bank, codecs[bank.plugin], data_dir=cfg.data_dir,
                                     now=ledger.now)


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
    mod, bank, rec = _reconciler(cfg, args.bank)
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
    except mod.StatementError as e:
        print(f"bankgate: statement refused: {e}", file=sys.stderr)
        return 2
    except mod.ReconBusy as e:
        print(f"bankgate: {e}", file=sys.stderr)
        return 4
    print(summary_text(rep))
    for kind, path in sorted(rep.outputs.items()):
        print(f"  {kind}: {path}")
    return 0 if rep.status == "BALANCED" else 1


def cmd_statement_write(args) -> int:
    from bankgate.canon.files import write_atomic

    cfg = _load(args.config)
    mod, bank, rec = _reconciler(cfg, args.bank)
    perturb = []
    if args.perturb:
        perturb = list(mod.PERTURBATIONS) if args.perturb == "all" else [
            p.strip() for p in args.perturb.split(",") if p.strip()]
    name, data, notes = mod.statement_from_journal(rec.ledger, bank, rec.codec, args.date,
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bankgate", description=__doc__)
    p.add_argument("--config", "-c", default=None,
                   help="configuration file (default: the embedded default)")
    p.add_argument("--data-dir", "-d", default=None,
                   help="the data folder, as given to twistd bankgate --data-dir")
    sub = p.add_subparsers(dest="command", required=True)

    cfg = sub.add_parser("config", help="configuration")
    cs = cfg.add_subparsers(dest="sub", required=True)
    c = cs.add_parser("check", help="validate a configuration file")
    c.add_argument("file")
    c.set_defaults(func=cmd_config_check)

    db = sub.add_parser("db", help="database schema")
    ds = db.add_subparsers(dest="sub", required=True)
    c = ds.add_parser("upgrade", help="create or upgrade the gateway's tables")
    c.add_argument("--create-n8", action="store_true",
                   help="also create the reference N8 schema if missing")
    c.set_defaults(func=cmd_db_upgrade)

    demo = sub.add_parser("demo", help="demo data")
    dms = demo.add_subparsers(dest="sub", required=True)
    c = dms.add_parser("seed", help="generate demo customers and bills")
    c.add_argument("--customers", type=int, default=1000)
    c.add_argument("--replace", action="store_true", help="delete existing demo data first")
    c.set_defaults(func=cmd_demo_seed)

    c = sub.add_parser("cutoff", help="close a bank's trade date")
    c.add_argument("--bank", required=True)
    c.add_argument("--date", type=_date, required=True)
    c.add_argument("--actor", default="operator")
    c.set_defaults(func=cmd_cutoff)

    c = sub.add_parser("refund", help="refund (退单) a payment by its receipt number")
    c.add_argument("receipt")
    c.add_argument("--reason", required=True)
    c.add_argument("--actor", required=True)
    c.set_defaults(func=cmd_refund)

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

    pl = sub.add_parser("plugins", help="bank message plugins")
    pls = pl.add_subparsers(dest="sub", required=True)
    c = pls.add_parser("list", help="list the plugins found")
    c.set_defaults(func=cmd_plugins_list)
    c = pls.add_parser("check", help="load a plugin file and check its layouts and codes")
    c.add_argument("file")
    c.set_defaults(func=cmd_plugins_check)

    sim = sub.add_parser("simulate", help="play a bank against a running gateway")
    try:
        from bankgate.devtools.simulate import add_arguments
    except ImportError:
        pass
    else:
        add_arguments(sim)
    sim.set_defaults(func=cmd_simulate)

    invoices.add_cli(sub, _load, _ledger)
    withholding.add_cli(sub, _load, _ledger)
    return p


def main(argv: list[str] | None = None) -> int:
    global _DATA_DIR
    args = build_parser().parse_args(argv)
    _DATA_DIR = args.data_dir
    try:
        return args.func(args)
    except PluginError as e:
        print(f"bankgate: plugin error: {e}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"bankgate: configuration error: {e}", file=sys.stderr)
        return 2
    except (KeyError, ValueError) as e:
        print(f"bankgate: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
