"""The console's payment actions (后台操作): a payment taken at the utility's own
counter (``/actions/counter``, 柜台收费), a reversal on an operator's word
(``/actions/reverse``, 冲正) and a refund (``/actions/refund``, 退单).

Each is an :class:`~bankgate.app.console.actions.Action` over
:class:`bankgate.domain.backoffice.BackOffice` -- the functions ``bankgate counter
pay``, ``bankgate reverse`` and ``bankgate refund`` call too: the form's values are
parsed there (a bad one is named next to its field), the confirmation page shows
what the domain looked up (or why it cannot be done), and the doing is the ledger's,
audited in its own transaction with the signed-in user and the reason.  Operators
find the links on the help desk's payment page (*Reverse*, *Refund*, while the
payment is posted and its invoice unprinted) and customer page (*Take a payment at
the counter*): ``actions_payment.html`` and ``actions_customer.html``.
"""

from __future__ import annotations

from urllib.parse import urlencode

from bankgate.app.console import actions, auth
from bankgate.app.console.actions import ActionRefused, Done, Field, FieldError
from bankgate.canon.money import fen_to_yuan
from bankgate.domain.backoffice import (
    BackOffice,
    BadInput,
    Refused,
    parse_amount,
    parse_bills,
    parse_customer,
    parse_receipt,
)


def _field_error(e: BadInput) -> FieldError:
    return FieldError(e.field, e.message)


def _refused(e: Refused) -> ActionRefused:
    return ActionRefused(e.message, e.field)


def payment_page(receipt_no: str) -> str:
    """The help desk's page of a payment, where an action on it returns."""
    return "/helpdesk/payment?" + urlencode({"receipt": receipt_no})


class _PaymentAction(actions.Action):
    """Shared by the two actions on one payment, named by its receipt number."""

    fields = (Field("receipt", "Receipt number", max_length=20,
                    help="the receipt number the bank printed (20 digits)"),)
    after = ""  # the payment's status once done

    def __init__(self, store, office: BackOffice):
        super().__init__(store)
        self.office = office

    def check(self, values):
        try:
            return {"receipt": parse_receipt(values["receipt"])}
        except BadInput as e:
            raise _field_error(e) from None

    def preview(self, parsed):
        try:
            p = self.office.look_payment(parsed["receipt"], self.name)
        except Refused as e:
            raise _refused(e) from None
        return [
            ("Receipt", p["receipt_no"]),
            ("Customer", f"{p['customer_no']} {p.get('customer_name') or ''}".strip()),
            ("Bank", p["bank"]),
            ("Trade date", f"{p['trade_date']:%Y-%m-%d} {p['trade_time'] or ''}".strip()),
            ("Bank serial", p["serial"]),
            ("Amount", f"{fen_to_yuan(p['amount'])} (kept as prepaid"
                       f" {fen_to_yuan(p['prepaid_in'])})"),
            ("Invoice", f"{p['invoice_no']} (made void)" if p["invoice_no"] else "none"),
            ("Status", f"{p['status']} → {self.after}"),
        ]

    def back(self, values):
        receipt = values.get("receipt", "")
        return payment_page(receipt) if receipt.isascii() and receipt.isdigit() else "/helpdesk"

    def perform(self, parsed, actor, reason):
        """The office's function of this action's name (``reverse``, ``refund``)."""
        try:
            getattr(self.office, self.name)(parsed["receipt"], actor=actor, reason=reason)
        except (BadInput, Refused) as e:
            raise ActionRefused(e.message, e.field) from None
        return Done(f"Payment {parsed['receipt']} {self.after.lower()}.",
                    payment_page(parsed["receipt"]))


class Reverse(_PaymentAction):
    name, title, verb, after = "reverse", "Reverse a payment (冲正)", "Reverse", "REVERSED"
    warning = ("The payment is taken back: its bills are open again, its prepaid excess"
               " is taken off the balance and its invoice number is made void. Only for a"
               " payment the bank has reversed too (it asked by telephone), on a trade date"
               " not yet closed.")


class Refund(_PaymentAction):
    name, title, verb, after = "refund", "Refund a payment (退单)", "Refund", "REFUNDED"
    warning = ("The payment is undone in the books and in N8: its bills are open again,"
               " its prepaid excess is taken off the balance and its invoice number is made"
               " void. Give the customer the money back at the counter.")


class CounterPay(actions.Action):
    name, title, verb = "counter", "Take a payment at the counter (柜台收费)", "Take payment"
    fields = (
        Field("customer", "Customer number", max_length=32),
        Field("amount", "Amount (yuan)", kind="money", max_length=20),
        Field("bills", "Bills", required=False,
              help="bill numbers, separated by commas; none: late fees first, then the"
                   " oldest bill first, and an excess is kept as prepaid balance"),
    )
    warning = ("The payment is posted at once, with a receipt number (and an invoice number"
               " from the counter's stock, when it has one). The same day it can be"
               " reversed; later only refunded.")

    def __init__(self, store, office: BackOffice):
        super().__init__(store)
        self.office = office

    def check(self, values):
        try:
            return {"customer": parse_customer(values["customer"]),
                    "amount": parse_amount(values["amount"]),
                    "bills": parse_bills([values["bills"]])}
        except BadInput as e:
            raise _field_error(e) from None

    def preview(self, parsed):
        try:
            plan = self.office.look_counter(parsed["customer"], parsed["amount"],
                                            parsed["bills"])
        except Refused as e:
            raise _refused(e) from None
        owed = plan.owed + plan.late_fee
        return [
            ("Customer", f"{plan.customer_no} {plan.name}"),
            ("Address", plan.address),
            ("Owed now", f"{fen_to_yuan(owed)} (late fees {fen_to_yuan(plan.late_fee)})"
                         f" in {len(plan.bills)} open bill(s)"),
            ("Bills paid", ", ".join(plan.named) if plan.named
             else "late fees first, then the oldest bill first"),
            ("Amount taken", fen_to_yuan(plan.amount)),
            ("Kept as prepaid", fen_to_yuan(plan.excess)),
            ("Owed after", fen_to_yuan(plan.owed_after)),
            ("Prepaid balance", f"{fen_to_yuan(plan.prepaid)} → "
                                f"{fen_to_yuan(plan.prepaid + plan.excess)}"),
        ]

    def perform(self, parsed, actor, reason):
        try:
            r = self.office.counter_pay(parsed["customer"], parsed["amount"], parsed["bills"],
                                        actor=actor, reason=reason)
        except (BadInput, Refused) as e:
            raise ActionRefused(e.message, e.field) from None
        return Done("Payment taken at the counter: " + r.text() + ".",
                    payment_page(r.receipt_no))

    def back(self, values):
        no = values.get("customer", "")
        return "/helpdesk/customer?" + urlencode({"no": no}) if no else "/helpdesk"


def add(console, office: BackOffice) -> dict:
    """Mount the three actions over ``office`` at ``/actions/...``, for operators;
    the help desk's templates then show operators their links (``allows``)."""
    console.templates.globals.setdefault("allows", auth.allows)
    store = office.store
    return actions.mount(console, [CounterPay(store, office), Reverse(store, office),
                                   Refund(store, office)])


def mount(console, gw) -> None:
    """Mount this module's pages on ``console`` for the gateway ``gw``."""
    add(console, BackOffice(gw.parts.ledger))
