"""``bankgate counter pay`` (柜台收费) and ``bankgate reverse`` (冲正 by an operator).

The command-line face of :mod:`bankgate.domain.backoffice`, the functions the
console's action pages call too: arguments in, one domain call, one line out.
``bankgate refund`` (退单) is registered with the other commands in
:mod:`bankgate.app.cli`.  ``docs/operator-guide.rst`` is the manual.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from bankgate.app.cli.actor import add_actor
from bankgate.domain.backoffice import (
    BackOffice,
    BadInput,
    Refused,
    parse_amount,
    parse_bills,
    parse_customer,
    parse_receipt,
)


def add_cli(subparsers, load_config: Callable, make_ledger: Callable) -> None:
    """Register ``bankgate counter pay`` and ``bankgate reverse``.

    ``load_config(path) -> Config`` and ``make_ledger(cfg) -> Ledger`` are the
    command's own (``bankgate.app.cli``).  Exit status: 0 done, 1 refused (nothing
    was written), 2 a bad argument.
    """

    def run(action, name: str):
        def func(args) -> int:
            try:
                parsed = action.parse(args)
            except BadInput as e:
                print(f"bankgate {name}: {e.field}: {e.message}", file=sys.stderr)
                return 2
            office = BackOffice(make_ledger(load_config(args.config)))
            try:
                print(action.do(office, parsed, args))
            except BadInput as e:
                print(f"bankgate {name}: {e.field}: {e.message}", file=sys.stderr)
                return 2
            except Refused as e:
                print(f"bankgate {name}: refused: {e.message} (nothing was changed)",
                      file=sys.stderr)
                return 1
            return 0
        return func

    p = subparsers.add_parser(
        "counter", help="payments taken at the utility's own counter (柜台收费)",
        description=(
            "Payments taken at the utility's own counter (柜台收费), posted like a bank's\n"
            "under the pseudo-bank \"counter\": the reports and the help desk list them\n"
            "under that bank. docs/operator-guide.rst is the manual."),
        epilog=(
            "examples:\n"
            "  bankgate counter pay 100000123 5480.00 --reason \"receipt book 12, slip 7\""
            " --actor wang"))
    sub = p.add_subparsers(dest="sub", required=True)
    c = sub.add_parser(
        "pay", help="take a customer's payment at the counter and print its receipt",
        description=(
            "Post a payment a customer made at the utility's counter and print its\n"
            "receipt number (and invoice number, from the counter's stock when it has\n"
            "one). AMOUNT is in yuan (120 or 120.50). Without --bill it pays late fees\n"
            "first, then the oldest bills, and keeps an excess as prepaid balance; with\n"
            "--bill it pays exactly those bills, and AMOUNT must be their total with late\n"
            "fees. Recorded in the audit trail (counter-pay) with the actor, the reason\n"
            "and what was owed before and after. Refused (exit status 1, nothing written)\n"
            "for an unknown or suspended customer, one who owes nothing, or a bill that\n"
            "is not theirs and open. The same day it can be reversed (bankgate reverse),\n"
            "later refunded (bankgate refund)."),
        epilog=(
            "examples:\n"
            "  bankgate counter pay 100000123 5480.00 --reason \"receipt book 12, slip 7\""
            " --actor wang\n"
            "  bankgate counter pay 100000123 150.00 --bill B0002 --reason \"paid in cash\""
            " --actor wang"))
    c.add_argument("customer", help="the customer number (用户编号)")
    c.add_argument("amount", help="the amount taken, in yuan: 120 or 120.50")
    c.add_argument("--bill", action="append", default=[], metavar="ID",
                   help="a bill to pay (repeat for several; default: oldest first)")
    c.add_argument("--reason", required=True,
                   help="the receipt note or why (recorded in the audit trail)")
    add_actor(c)
    c.set_defaults(func=run(_CounterPay, "counter pay"))

    c = subparsers.add_parser(
        "reverse", help="reverse (冲正) a payment the bank reversed, by its receipt number",
        description=(
            "Reverse (冲正) a posted payment at the bank's word -- it asked by telephone,\n"
            "its reversal message never came: its bills are open again, N8 has it\n"
            "cancelled, its unprinted invoice is void. Recorded as reversed by an\n"
            "operator, with the actor and the reason, in the audit trail (reverse).\n"
            "Refused (exit status 1) when the payment is not posted, its trade date is\n"
            "closed (refund it instead: bankgate refund), its invoice was printed (void\n"
            "the invoice first) or its prepaid excess was spent since."),
        epilog=(
            "examples:\n"
            "  bankgate -c /etc/bankgate/bankgate.toml reverse 20261127000000000042"
            " --reason \"bank called: their reversal failed\" --actor wang"))
    c.add_argument("receipt", help="the payment's receipt number")
    c.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
    add_actor(c)
    c.set_defaults(func=run(_Reverse, "reverse"))


class _CounterPay:
    @staticmethod
    def parse(args) -> dict:
        return {"customer": parse_customer(args.customer), "amount": parse_amount(args.amount),
                "bills": parse_bills(args.bill)}

    @staticmethod
    def do(office: BackOffice, parsed: dict, args) -> str:
        r = office.counter_pay(parsed["customer"], parsed["amount"], parsed["bills"],
                               actor=args.actor, reason=args.reason)
        return r.text()


class _Reverse:
    @staticmethod
    def parse(args) -> dict:
        return {"receipt": parse_receipt(args.receipt)}

    @staticmethod
    def do(office: BackOffice, parsed: dict, args) -> str:
        return "OK: " + office.reverse(parsed["receipt"], actor=args.actor, reason=args.reason)
