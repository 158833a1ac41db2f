"""``bankgate workorders list|export|done`` (工单) and ``bankgate supply set`` (开栓/停栓).

The operator's side of :mod:`bankgate.domain.supply`: arguments in, one domain
call, a line per result out.  ``docs/supply.rst`` is its manual.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from bankgate.app.cli.actor import add_actor
from bankgate.domain.supply import KINDS, STATES, VALVE_STATES, SupplyError, WorkOrders

LIST_LIMIT = 1000  # lines `workorders list` prints unless --limit says otherwise


def add_cli(subparsers, load_config: Callable, make_ledger: Callable) -> None:
    """Register ``bankgate workorders list|export|done`` and ``bankgate supply set``.

    ``load_config(path) -> Config`` and ``make_ledger(cfg) -> Ledger`` are the
    command's own (``bankgate.app.cli``); the store and clock come from the ledger.
    Each command returns its exit status: 0 done, 1 refused.
    """

    def run(action):
        def func(args) -> int:
            cfg = load_config(args.config)
            ledger = make_ledger(cfg)
            orders = WorkOrders(ledger.store, cfg.supply, ledger.now)
            try:
                return action(orders, args)
            except SupplyError as e:
                print(f"bankgate: {args.command}: {e}", file=sys.stderr)
                return 1
        return func

    p = subparsers.add_parser(
        "workorders", help="work orders (工单): valves to open for paid households",
        description=(
            "Work orders (工单) for the service team. A payment that settles a household's\n"
            "heating fee of the season (by [supply] rule) creates an open_valve order; a\n"
            "reversal, refund or expiry of that payment cancels it, or, once the valve was\n"
            "opened, creates a review order. docs/supply.rst is the manual."),
        epilog=(
            "examples:\n"
            "  bankgate workorders list\n"
            "  bankgate workorders list --district 和平区 --season 2026-2027\n"
            "  bankgate workorders export --format csv --out orders.csv\n"
            "  bankgate workorders done 42 --note \"valve opened, seal 0815\" --actor zhao"))
    sub = p.add_subparsers(dest="sub", required=True)

    def filters(c):
        c.add_argument("--state", choices=(*STATES, "all"), default="open",
                       help="orders in this state (default: open)")
        c.add_argument("--kind", choices=KINDS, default=None,
                       help="open_valve or review (default: both)")
        c.add_argument("--district", default=None, help="the households' district (片区)")
        c.add_argument("--season", default=None,
                       help="the heating season, as the bills' period: 2026-2027")

    c = sub.add_parser(
        "list", help="list work orders, newest first",
        description=(
            "List work orders, newest first: number, customer, name, district, season,\n"
            "kind, state, the payment's receipt number, when created, and for orders done\n"
            "or cancelled, when and by whom. Open orders unless --state says otherwise."),
        epilog=(
            "examples:\n"
            "  bankgate workorders list\n"
            "  bankgate workorders list --state done --season 2026-2027\n"
            "  bankgate workorders list --kind review --district 沈河区"))
    filters(c)
    c.add_argument("--limit", type=int, default=LIST_LIMIT,
                   help=f"at most this many lines (default {LIST_LIMIT}; 0: all)")
    c.set_defaults(func=run(_cmd_list))

    c = sub.add_parser(
        "export", help="export work orders as CSV or Excel (XLSX)",
        description=(
            "Write the work orders (the same filters as list) as CSV or Excel (XLSX), one\n"
            "row per order with the household's name, district and address, for the\n"
            "service team's rounds. CSV goes to standard output unless --out names a file;\n"
            "XLSX needs --out."),
        epilog=(
            "examples:\n"
            "  bankgate workorders export --format csv --state all\n"
            "  bankgate workorders export --format xlsx --district 和平区 --out orders.xlsx"))
    filters(c)
    c.add_argument("--format", choices=("csv", "xlsx"), default="csv",
                   help="csv (default) or xlsx")
    c.add_argument("--out", default=None, help="the file to write (default for csv: stdout)")
    c.set_defaults(func=run(_cmd_export))

    c = sub.add_parser(
        "done", help="mark a work order done (who, when, what was done)",
        description=(
            "Mark an open work order done, with a note saying what was done; recorded with\n"
            "the actor and the time in the order and in the audit trail (bg_audit). With\n"
            "[supply] source = \"gateway\" an open_valve order done also records the valve\n"
            "as open. An order already done or cancelled is refused (exit status 1)."),
        epilog=(
            "examples:\n"
            "  bankgate workorders done 42 --note \"valve opened\" --actor zhao\n"
            "  bankgate -c /etc/bankgate/bankgate.toml workorders done 43"
            " --note \"household away, card left\" --actor zhao"))
    c.add_argument("id", type=int, help="the work order's number (workorders list)")
    c.add_argument("--note", required=True, help="what was done (at most 300 characters)")
    add_actor(c)
    c.set_defaults(func=run(_cmd_done))

    p = subparsers.add_parser(
        "supply", help="valve states (开栓/停栓) kept by the gateway",
        description=(
            "Valve states (开栓/停栓) where the gateway keeps them ([supply] source =\n"
            "\"gateway\": N8 has no valve table). With source = \"n8\" the states are N8's\n"
            "and these commands are refused. docs/supply.rst is the manual."),
        epilog=(
            "examples:\n"
            "  bankgate supply set 100000123 --season 2026-2027 open --actor zhao"))
    sub = p.add_subparsers(dest="sub", required=True)
    c = sub.add_parser(
        "set", help="record a household's valve opened or closed",
        description=(
            "Record that a household's valve was opened or closed for a heating season\n"
            "(source = \"gateway\" only), with the actor, in bg_valve and the audit trail.\n"
            "Opening a valve does not close its work order: mark the order done."),
        epilog=(
            "examples:\n"
            "  bankgate supply set 100000123 --season 2026-2027 open --actor zhao\n"
            "  bankgate supply set 100000123 --season 2026-2027 closed --actor zhao"))
    c.add_argument("customer", help="the customer number (用户编号)")
    c.add_argument("--season", required=True, help="the heating season: 2026-2027")
    c.add_argument("state", choices=VALVE_STATES, help="open or closed")
    add_actor(c)
    c.set_defaults(func=run(_cmd_supply_set))


def _filters(args) -> dict:
    return {"state": None if args.state == "all" else args.state, "kind": args.kind,
            "district": args.district, "season": args.season}


def _when(v) -> str:
    return v.strftime("%Y-%m-%d %H:%M") if v else "-"


def _cmd_list(orders: WorkOrders, args) -> int:
    if args.limit < 0:
        raise SupplyError("--limit: expected 0 (all) or more")
    rows = orders.list(**_filters(args), limit=args.limit or None)
    for r in rows:
        line = (f"{r['id']:>8} {r['customer_no']:<12} {(r['name'] or '-')[:12]:<12}"
                f" {(r['district'] or '-'):<8} {r['season']:<10} {r['kind']:<10}"
                f" {r['state']:<9} {r['receipt_no'] or '-':<20} {_when(r['created_at'])}")
        if r["state"] != "open":
            line += f"  {r['state']} {_when(r['done_at'])} by {r['done_by'] or '-'}"
        print(line)
    if args.limit and len(rows) == args.limit:
        print(f"(first {args.limit}; --limit 0 lists all, or export)")
    print(f"{len(rows)} work order{'s' if len(rows) != 1 else ''}")
    return 0


def _cmd_export(orders: WorkOrders, args) -> int:
    from bankgate.domain import reporting

    table = orders.table(**_filters(args))
    if args.format == "xlsx" and not args.out:
        raise SupplyError("--format xlsx needs --out FILE.xlsx")
    if args.out:
        n = reporting.export(table, args.format, args.out)
        print(f"{args.out}: {n} work orders")
    else:
        reporting.export(table, args.format, sys.stdout)
    return 0


def _cmd_done(orders: WorkOrders, args) -> int:
    o = orders.done(args.id, args.note, args.actor)
    print(f"work order {o['id']} ({o['kind']}, {o['customer_no']}, {o['season']}): done"
          f" {_when(o['done_at'])} by {o['done_by']}")
    return 0


def _cmd_supply_set(orders: WorkOrders, args) -> int:
    was = orders.set_valve(args.customer, args.season, args.state, args.actor)
    print(f"{args.customer} {args.season}: valve {args.state} (was {was})")
    return 0
