"""``bankgate invoice stock|issue|print|reprint|void|check`` (发票).

The operator's side of :mod:`bankgate.domain.invoices`: arguments in, one
domain call, a line per result out.  ``docs/invoices.rst`` is its manual.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from bankgate.app import wiring
from bankgate.app.cli.actor import add_actor
from bankgate.domain.invoices import (
    DEFAULT_WIDTH,
    ISSUED,
    PRINTED,
    VOID,
    InvoiceError,
    Invoices,
)


def add_cli(subparsers, load_config: Callable, make_ledger: Callable) -> None:
    """Register ``bankgate invoice stock|issue|print|reprint|void|check``.

    ``load_config(path) -> Config`` and ``make_ledger(cfg) -> Ledger`` are
    the command's own (``bankgate.app.cli``); the store and clock come from the
    ledger.  Each command returns its exit status: 0 done, 1 refused or (for
    check) differences found.
    """

    def run(action):
        def func(args) -> int:
            cfg = load_config(args.config)
            ledger = make_ledger(cfg)
            inv = wiring.invoices(cfg, ledger.store, ledger.now)
            try:
                return action(inv, args)
            except InvoiceError as e:
                print(f"bankgate: invoice: {e}", file=sys.stderr)
                return 1
        return func

    p = subparsers.add_parser(
        "invoice", help="invoices (发票): stock, print, reprint, void, check against N8",
        description=(
            "Invoices (发票): the stock each bank and the counter hold, printing, reprints,\n"
            "re-issues and voids, and a check against N8's invoice table.\n"
            "docs/invoices.rst is the manual."),
        epilog=(
            "examples:\n"
            "  bankgate invoice stock\n"
            "  bankgate invoice print 20261127000000000042 --actor li\n"
            "  bankgate invoice check"))
    sub = p.add_subparsers(dest="sub", required=True)

    c = sub.add_parser(
        "stock", help="remaining stock per holder (剩余)",
        description=(
            "Show each holder's (bank's or counter's) invoice numbers left: OK, LOW (at or\n"
            "below its low-water mark) or EMPTY, the numbers issued, printed and void, and\n"
            "each range with its next number."),
        epilog=(
            "examples:\n"
            "  bankgate -c /etc/bankgate/bankgate.toml invoice stock\n"
            "  bankgate invoice stock --holder icbc-shenyang"))
    c.add_argument("--holder", default=None, help="one bank or counter only")
    c.set_defaults(func=run(_cmd_stock))

    c = sub.add_parser(
        "issue", help="issue a range of invoice numbers to a bank or the counter (领用)",
        description=(
            "Issue a range of invoice numbers to a bank or the counter (领用), and write\n"
            "every number to N8's invoice table as unused, in one transaction. A range\n"
            "sharing any number with an existing one, or with N8's table, is refused.\n"
            "At most 100,000 numbers per command."),
        epilog=(
            "examples:\n"
            "  bankgate invoice issue --to icbc-shenyang --code 2100 --first 1001"
            " --last 2000 --actor zhang\n"
            "  bankgate invoice issue --to counter --first 1 --last 500 --low-water 50"
            " --actor li"))
    c.add_argument("--to", required=True, dest="holder",
                   help="a configured bank, or 'counter' / 'counter-NAME'")
    c.add_argument("--code", default="", help="invoice code (发票代码), up to 8 capitals/digits")
    c.add_argument("--first", type=int, required=True, help="first number of the range")
    c.add_argument("--last", type=int, required=True, help="last number of the range")
    c.add_argument("--width", type=int, default=DEFAULT_WIDTH,
                   help=f"digits of the number (default {DEFAULT_WIDTH})")
    c.add_argument("--low-water", type=int, default=None,
                   help="warn at this many left (banks: options.invoice_low_water)")
    add_actor(c)
    c.set_defaults(func=run(_cmd_issue))

    c = sub.add_parser(
        "print", help="print a payment's invoice to PDF (打印), or re-issue it with a new"
                      " number (重打)",
        description=(
            "Print a payment's invoice to a PDF (打印) and mark it printed: from then on the\n"
            "bank's reversal and a refund are refused. A payment without an invoice gets a\n"
            "number now. --reissue (重打) voids a spoilt printed invoice and prints the next\n"
            "number in its place. --reason is recorded in bg_audit (required with\n"
            "--reissue)."),
        epilog=(
            "examples:\n"
            "  bankgate invoice print 20261127000000000042 --actor li\n"
            "  bankgate invoice print 20261127000000000042 --holder counter --actor li\n"
            "  bankgate invoice print 20261127000000000042 --reason \"customer asked at the"
            " counter\" --actor li\n"
            "  bankgate invoice print 210000000189 --reissue --reason \"printer jam\""
            " --actor li"))
    c.add_argument("number", help="an invoice number or a payment's receipt number")
    add_actor(c)
    c.add_argument("--holder", default=None,
                   help="take a new number from this holder's stock (default: the bank"
                        " paid at; re-issue: the old number's holder)")
    c.add_argument("--reissue", action="store_true",
                   help="重打: void the standing invoice and print a new number")
    c.add_argument("--reason", default="",
                   help="why, recorded in bg_audit (required with --reissue)")
    c.add_argument("--out", default=None, help="folder (default: DATA_DIR/invoices/HOLDER)")
    c.set_defaults(func=run(_cmd_print))

    c = sub.add_parser(
        "reprint", help="print a copy of a printed invoice, same number (补打)",
        description=(
            "Print a copy of a printed invoice with the same number (补打), marked as copy N\n"
            "in its heading, footer and watermark. Every copy is audited, with --reason\n"
            "when given."),
        epilog=(
            "examples:\n"
            "  bankgate invoice reprint 210000000189 --actor li\n"
            "  bankgate invoice reprint 210000000189 --reason \"customer lost the original\""
            " --actor li"))
    c.add_argument("number", help="an invoice number or a payment's receipt number")
    add_actor(c)
    c.add_argument("--reason", default="", help="why, recorded in bg_audit")
    c.add_argument("--out", default=None)
    c.set_defaults(func=run(_cmd_reprint))

    c = sub.add_parser(
        "void", help="void an invoice (作废)",
        description=(
            "Void an invoice (作废), in the gateway and in N8, with the reason. The payment\n"
            "then has no invoice, and may be reversed or refunded again: collect the\n"
            "paper, void, then refund."),
        epilog=(
            "examples:\n"
            "  bankgate invoice void 210000000190 --reason \"customer returned it\""
            " --actor wang"))
    c.add_argument("number", help="an invoice number or a payment's receipt number")
    c.add_argument("--reason", required=True)
    add_actor(c)
    c.set_defaults(func=run(_cmd_void))

    c = sub.add_parser(
        "check", help="compare the gateway's invoices with N8's (exit 1 on any difference)",
        description=(
            "Compare every number of every range with N8's invoice table; one line per\n"
            "difference. Exit status 0 when everything agrees, 1 when something differs:\n"
            "run it after manual work in N8 and nightly."),
        epilog="examples:\n  bankgate -c /etc/bankgate/bankgate.toml invoice check")
    c.set_defaults(func=run(_cmd_check))


def _cmd_stock(inv: Invoices, args) -> int:
    rows = inv.stock_report(args.holder)
    if not rows:
        print("no invoice stock issued, and no bank takes invoice numbers per payment")
    for r in rows:
        used = r["used"]
        off = "" if r["invoice"] or r["holder"] not in inv.settings else "  [options.invoice off]"
        print(f"{r['holder']:<16} {r['state']:<5} {r['remaining']:>8} left (low water"
              f" {r['low_water']})  issued {used.get(ISSUED, 0)}, printed"
              f" {used.get(PRINTED, 0)}, void {used.get(VOID, 0)}{off}")
        for g in r["ranges"]:
            print(f"    range {g['id']:>4} {g['first']}-{g['last']}  next {g['next'] or '-':<20}"
                  f" {g['remaining']:>8} left  issued {g['issued_at']:%Y-%m-%d} by"
                  f" {g['issued_by']}")
    return 0


def _cmd_issue(inv: Invoices, args) -> int:
    r = inv.issue_stock(args.holder, args.first, args.last, code=args.code, width=args.width,
                        low_water=args.low_water, actor=args.actor)
    print(f"issued {r['first']}-{r['last']} ({r['count']} numbers) to {r['holder']},"
          f" low water {r['low_water']}")
    return 0


def _cmd_print(inv: Invoices, args) -> int:
    if args.reissue:
        r = inv.reissue(args.number, reason=args.reason, actor=args.actor, holder=args.holder,
                        out_dir=args.out)
        print(f"invoice {r.voided} void; re-issued as {r.invoice_no} for receipt"
              f" {r.receipt_no}: {r.path}")
        return 0
    r = inv.print(args.number, actor=args.actor, holder=args.holder, out_dir=args.out,
                  reason=args.reason.strip())
    print(f"invoice {r.invoice_no} for receipt {r.receipt_no}: {r.path}")
    return 0


def _cmd_reprint(inv: Invoices, args) -> int:
    r = inv.reprint(args.number, actor=args.actor, out_dir=args.out,
                    reason=args.reason.strip())
    print(f"invoice {r.invoice_no} copy {r.copy} (补打) for receipt {r.receipt_no}: {r.path}")
    return 0


def _cmd_void(inv: Invoices, args) -> int:
    r = inv.void(args.number, reason=args.reason, actor=args.actor)
    print(f"invoice {r['invoice_no']} ({r['was'].lower()}) of receipt {r['receipt_no']} is void")
    return 0


def _cmd_check(inv: Invoices, args) -> int:
    diffs = inv.check()
    for d in diffs:
        print(d)
    print(f"{len(diffs)} difference(s) between the gateway's invoices and N8's")
    return 1 if diffs else 0
