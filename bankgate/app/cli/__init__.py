"""The ``bankgate`` command: operator and bank-IT tools beside ``twistd bankgate``."""

from __future__ import annotations

import argparse
import sys

from bankgate.app import wiring
from bankgate.app.cli import common, invoices, recon, withholding
from bankgate.app.cli.argtypes import date_arg as _date
from bankgate.app.cli.common import _ledger, _load, _store  # noqa: F401 - the commands' own
from bankgate.app.config import ConfigError, load_config
from bankgate.codec.registry import PluginError


def _mac_text(b, codec) -> str:
    """The bank's MAC as its plugin declares it: a key every bank of the plugin
    needs (``KeyKind`` required always) means on whatever ``mac`` says."""
    from bankgate.codec.capabilities import ALWAYS, key_kinds

    always = [k.description or k.name for k in key_kinds(codec) if k.required == ALWAYS]
    if always:
        return f"on ({'; '.join(always)})"
    return "on" if b.mac else "off"


def cmd_config_check(args) -> int:
    cfg = load_config(args.file)
    codecs, _, _ = wiring.check(cfg)
    print(f"{args.file}: OK")
    print(f"  database: {cfg.db_url.split('@')[-1]}")
    for b in cfg.banks:
        print(f"  bank {b.name}: plugin {b.plugin}, code {b.bank_code}, policy {b.policy},"
              f" listen {', '.join(b.listen) or '-'}, MAC {_mac_text(b, codecs[b.plugin])}")
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
    from bankgate.app.cli.simulate import main as simulate_main

    if getattr(args, "sim_command", None) == "statement":
        if not args.bank:
            print("bankgate simulate statement: --bank is required", file=sys.stderr)
            return 2
        return recon.cmd_statement_write(args)

    return simulate_main(args)


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

    recon.add_cli(sub)

    pl = sub.add_parser("plugins", help="bank message plugins")
    pls = pl.add_subparsers(dest="sub", required=True)
    c = pls.add_parser("list", help="list the plugins found")
    c.set_defaults(func=cmd_plugins_list)
    c = pls.add_parser("check", help="load a plugin file and check its layouts and codes")
    c.add_argument("file")
    c.set_defaults(func=cmd_plugins_check)

    sim = sub.add_parser("simulate", help="play a bank against a running gateway")
    try:
        from bankgate.app.cli.simulate import add_arguments
    except ImportError:
        pass
    else:
        add_arguments(sim)
    sim.set_defaults(func=cmd_simulate)

    invoices.add_cli(sub, _load, _ledger)
    withholding.add_cli(sub, _load, _ledger)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common.set_data_dir(args.data_dir)
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
