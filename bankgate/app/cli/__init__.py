"""The ``bankgate`` command: operator and bank-IT tools beside ``twistd bankgate``."""

from __future__ import annotations

import argparse
import sys

from bankgate.app import startup, wiring
from bankgate.app.cli import (
    backoffice,
    backup,
    common,
    invoices,
    n8,
    recon,
    status,
    withholding,
    workorders,
)
from bankgate.app.cli import report as report_cli
from bankgate.app.cli import user as user_cli
from bankgate.app.cli.actor import add_actor
from bankgate.app.cli.argtypes import date_arg as _date
from bankgate.app.cli.common import _ledger, _load, _store  # noqa: F401 - the commands' own
from bankgate.app.cli.status import describe_database
from bankgate.app.config import ConfigError, load_config
from bankgate.codec.capabilities import statement_format
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
    # as twistd bankgate reads it: the global --data-dir wins over [gateway] data_dir
    cfg = load_config(args.file, data_dir=common.data_dir())
    codecs, _, _ = wiring.check(cfg)
    print(f"{args.file}: OK")
    print(f"  data folder: {cfg.data_dir}")
    print(f"  database: {describe_database(cfg.db_url)}")
    print(f"  workers: {cfg.workers} ("
          + ("a supervisor and its worker processes" if cfg.workers > 1 else "one process")
          + ")")
    for b in cfg.banks:
        print(f"  bank {b.name}: plugin {b.plugin}, code {b.bank_code}, policy {b.policy},"
              f" listen {', '.join(b.listen) or '-'}, MAC {_mac_text(b, codecs[b.plugin])}"
              + (f", two-phase (confirm within {b.confirm_timeout:g} s)" if b.two_phase else ""))
    print(f"  mail: {_mail_text(cfg.mail)}")
    print(f"  alerts: {_alerts_text(cfg)}")
    for b in cfg.banks:
        watch = _bank_alerts_text(b, statement_format(codecs[b.plugin]) is not None)
        if watch:
            print(f"  alerts for bank {b.name}: {watch}")
    return 0


def _mail_text(mail) -> str:
    """``[mail]`` in one line: the SMTP server, how, and the sender -- never the
    password."""
    if mail is None:
        return "not configured (no [mail] table: nothing is mailed)"
    how = ", ".join(filter(None, ["STARTTLS" if mail.starttls else "",
                                  f"login {mail.user}" if mail.user else ""]))
    return (f"{mail.host}:{mail.port}" + (f" ({how})" if how else "")
            + f", from {mail.sender}")


def _alerts_text(cfg) -> str:
    """``[alerts]`` in one line: how often, where to (no secret: a webhook's host
    only)."""
    from bankgate.app.config import safe_webhook_url

    a = cfg.alerts
    if not a.enabled:
        return "off"
    where = []
    if a.webhook is not None:
        where.append(f"webhook {safe_webhook_url(a.webhook.url)}")
    if a.email is not None:  # through [mail], without which it is a configuration error
        where.append(f"e-mail to {', '.join(a.email.to)}")
    return (f"every {a.interval:g} s, to the log and the console"
            + "".join(f", {w}" for w in where))


def _bank_alerts_text(b, reconcilable: bool) -> str:
    """A bank's alert watches: quiet window and hours, when its statement is due."""
    out = []
    if b.quiet_after is not None:
        out.append(f"quiet after {b.quiet_after:g} s within {b.business_hours}")
    expected = b.statement_expected or b.reconcile_time
    if reconcilable and expected is not None:
        out.append(f"statement expected by {expected:%H:%M}")
    return ", ".join(out)


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
        stats = seed(store, args.customers, replace=args.replace, supply=True)
    else:
        with Progress() as progress:
            task = progress.add_task("seeding customers", total=args.customers)
            stats = seed(store, args.customers, replace=args.replace, supply=True,
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

    args.config = common.config_path(getattr(args, "config", None))  # found as every command
    return simulate_main(args)


class _Parser(argparse.ArgumentParser):
    """Every ``bankgate`` parser (sub-parsers inherit the class): descriptions and
    "examples:" epilogs are printed as written, line by line."""

    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kw)


def version_text() -> str:
    """``bankgate --version``: the gateway's version, then what it runs on."""
    import platform

    import sqlalchemy

    import twisted
    from bankgate import __version__

    return (f"bankgate {__version__} (Python {platform.python_version()},"
            f" Twisted {twisted.__version__}, SQLAlchemy {sqlalchemy.__version__})")


DESCRIPTION = """\
The bankgate command: operator and bank-IT tools beside `twistd bankgate`.

Give it the same --config (and --data-dir) as the running gateway, before the
command. `bankgate COMMAND --help` describes each command, with examples;
docs/operator-guide.rst is the manual."""


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bankgate", description=DESCRIPTION, epilog=(
        "examples:\n"
        "  bankgate -c /etc/bankgate/bankgate.toml status\n"
        "  bankgate config check /etc/bankgate/bankgate.toml\n"
        "  bankgate -c /etc/bankgate/bankgate.toml backup\n"
        "  bankgate invoice --help"))
    p.add_argument("--version", action="version", version=version_text(),
                   help="print the version (and Python's, Twisted's, SQLAlchemy's) and exit")
    p.add_argument("--config", "-c", default=None,
                   help="configuration file (default: $BANKGATE_CONFIG, else"
                        " /etc/bankgate/bankgate.toml)")
    p.add_argument("--demo", action="store_true",
                   help="run on the embedded demo configuration (as twistd bankgate --demo)")
    p.add_argument("--data-dir", "-d", default=None,
                   help="the data folder, as given to twistd bankgate --data-dir")
    sub = p.add_subparsers(dest="command", required=True)

    cfg = sub.add_parser(
        "config", help="configuration",
        description="Check a configuration file before the gateway reads it.",
        epilog="examples:\n  bankgate config check /etc/bankgate/bankgate.toml")
    cs = cfg.add_subparsers(dest="sub", required=True)
    c = cs.add_parser(
        "check", help="validate a configuration file",
        description=(
            "Read a configuration file as the gateway would at start: its keys, the\n"
            "plugins its banks name, every bank's options. Print the database (scheme,\n"
            "driver and where; never the password) and each bank's plugin, code, policy,\n"
            "listeners and MAC. Exit status 0 when valid; 2, naming the file, the key and\n"
            "the problem, when not. The configuration is read at start only: check, then\n"
            "restart."),
        epilog=(
            "examples:\n"
            "  bankgate config check /etc/bankgate/bankgate.toml\n"
            "  bankgate config check bankgate.toml.new && sudo systemctl restart bankgate"))
    c.add_argument("file", help="the TOML configuration file to check")
    c.set_defaults(func=cmd_config_check)

    db = sub.add_parser(
        "db", help="database schema",
        description="The gateway's own tables (bg_*), created and upgraded by its migrations.",
        epilog="examples:\n  bankgate -c /etc/bankgate/bankgate.toml db upgrade")
    ds = db.add_subparsers(dest="sub", required=True)
    c = ds.add_parser(
        "upgrade", help="create or upgrade the gateway's tables",
        description=(
            "Run the migrations: create the gateway's tables, or bring them to the current\n"
            "revision, and print the revision. The gateway does the same at every start;\n"
            "run it by hand to prepare a new database (with a role that may create tables)."),
        epilog=(
            "examples:\n"
            "  bankgate -c /etc/bankgate/bankgate.toml db upgrade\n"
            "  bankgate --demo db upgrade --create-n8   # the demo: also the reference N8"))
    c.add_argument("--create-n8", action="store_true",
                   help="also create the reference N8 schema if missing")
    c.set_defaults(func=cmd_db_upgrade)

    demo = sub.add_parser(
        "demo", help="demo data",
        description="Demo data in the reference N8 schema the gateway created (never a real N8).",
        epilog="examples:\n  bankgate demo seed --customers 10000")
    dms = demo.add_subparsers(dest="sub", required=True)
    c = dms.add_parser(
        "seed", help="generate demo customers and bills",
        description=(
            "Generate demo customers (numbered from 100000001) with open bills, some\n"
            "overdue, and the tariffs; and the current heating season's valve states\n"
            "(开栓/停栓), most paid households open, a few unpaid ones open (the leak)\n"
            "and a few paid ones closed. The same count gives the same data. Only into a\n"
            "reference N8 schema the gateway created (n8.create = true); refused when N8's\n"
            "customer table is not empty, unless --replace."),
        epilog=(
            "examples:\n"
            "  bankgate demo seed --customers 100000\n"
            "  bankgate -c demo.toml demo seed --customers 1000000 --replace"))
    c.add_argument("--customers", type=int, default=1000,
                   help="how many customers (default 1000)")
    c.add_argument("--replace", action="store_true", help="delete existing demo data first")
    c.set_defaults(func=cmd_demo_seed)

    c = sub.add_parser(
        "cutoff", help="close a bank's trade date",
        description=(
            "Close a bank's trade date now (扎帐), as its cut-off time would, and print the\n"
            "count and total of its standing payments. Payments and reversals for a closed\n"
            "date are refused; a closed date cannot be reopened; closing it again prints\n"
            "its figures again. Safe while the gateway runs."),
        epilog=(
            "examples:\n"
            "  bankgate -c /etc/bankgate/bankgate.toml cutoff --bank icbc-shenyang"
            " --date 2026-11-27 --actor wang"))
    c.add_argument("--bank", required=True, help="a configured bank")
    c.add_argument("--date", type=_date, required=True, help="the trade date, YYYY-MM-DD")
    add_actor(c)
    c.set_defaults(func=cmd_cutoff)

    c = sub.add_parser(
        "refund", help="refund (退单) a payment by its receipt number",
        description=(
            "Refund (退单) a posted payment at the utility's counter: undo it in N8 like a\n"
            "reversal and record the actor and reason in bg_audit. Refused (exit status 1)\n"
            "when the payment is no longer posted, or its invoice was printed (void the\n"
            "invoice first: bankgate invoice void)."),
        epilog=(
            "examples:\n"
            "  bankgate -c /etc/bankgate/bankgate.toml refund 20261128000000000002"
            " --reason \"customer moved out\" --actor wang"))
    c.add_argument("receipt", help="the receipt number the bank printed")
    c.add_argument("--reason", required=True, help="why (recorded in bg_audit)")
    add_actor(c)
    c.set_defaults(func=cmd_refund)
    backoffice.add_cli(sub, _load, _ledger)  # counter pay, reverse

    recon.add_cli(sub)

    pl = sub.add_parser(
        "plugins", help="bank message plugins",
        description="The bank message plugins the gateway finds, and a checker for a new one.",
        epilog="examples:\n  bankgate plugins list\n  bankgate plugins check my_bank.py")
    pls = pl.add_subparsers(dest="sub", required=True)
    c = pls.add_parser(
        "list", help="list the plugins found",
        description=("List the plugins found in plugins/ and in gateway.plugin_dirs, with\n"
                     "their descriptions: the names a bank's `plugin` key may take."),
        epilog="examples:\n  bankgate -c /etc/bankgate/bankgate.toml plugins list")
    c.set_defaults(func=cmd_plugins_list)
    c = pls.add_parser(
        "check", help="load a plugin file and check its layouts and codes",
        description=(
            "Load one plugin file and check it against the SDK: its declarations, message\n"
            "layouts, response codes and declared capabilities. One line per finding;\n"
            "exit status 1 if any line is a FAIL."),
        epilog="examples:\n  bankgate plugins check /etc/bankgate/plugins/my_bank.py")
    c.add_argument("file", help="the plugin's .py file")
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
    workorders.add_cli(sub, _load, _ledger)
    status.add_cli(sub)
    backup.add_cli(sub)
    report_cli.add_cli(sub)
    user_cli.add_cli(sub, _load, _store)
    n8.add_parsers(sub)  # bankgate n8 check, ...
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.demo and getattr(args, "config", None):
        parser.error("give --config or --demo, not both")
    common.set_data_dir(args.data_dir)
    common.set_demo(args.demo)
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
    except Exception as e:
        # a database that cannot be reached, or refuses the user: one line, not a traceback
        if not startup.is_database_error(e):
            raise
        print(f"bankgate: {startup.database_problem(common.database_url(), e)}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
