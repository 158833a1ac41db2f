"""Back-office actions on payments (后台操作): a payment taken at the utility's own
counter (柜台收费), a reversal on an operator's word (冲正), a refund (退单).

The console's action pages (``bankgate.app.console.payment_actions``) and the
``bankgate`` command (``bankgate.app.cli.backoffice``) are two thin faces over this
module: the same checks, the same look before doing, the same refusals.  The work
itself is the ledger's, which audits it in the transaction that does it (who, when,
what, before and after, the reason).  Each action goes in three steps:

- ``parse_*``: pure; bad input raises :class:`BadInput` naming the field;
- ``look_*``: read only, what will happen; :class:`Refused` when it cannot;
- the doing: :class:`Refused` when the ledger refuses -- then nothing was written.

The counter is a pseudo-bank (:data:`bankgate.domain.ledger.COUNTER`) every ledger
knows: its payments are posted by :meth:`Ledger.pay` with channel 01 (counter),
source ``counter``, the operator as teller and actor, and a serial of the counter's
own, ``counter-YYYYMMDD-NNNNNN``: the next number after the greatest the journal
holds for the day.  Two operators taking the same number at the same moment cannot
both post it (the journal's unique key); the one refused takes the next.

Synchronous: the console runs these on the store's pool (``store.call``), the
command line directly.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from bankgate.canon import messages as m
from bankgate.canon.messages import Channel, Outcome
from bankgate.canon.money import MAX_FEN, fen_to_yuan
from bankgate.domain import helpdesk
from bankgate.domain.ledger import COUNTER as COUNTER_POLICY
from bankgate.domain.ledger import MAX_CUSTOMER_NO, Ledger
from bankgate.store import backoffice as sql
from bankgate.store.db import StoreUnavailable

COUNTER = COUNTER_POLICY.name  # the pseudo-bank, and the invoice holder of its stock
SOURCE = "counter"  # bg_payment.source of a counter payment
SERIAL_DIGITS = 6  # counter-YYYYMMDD-NNNNNN: a million payments a day
SERIAL_ATTEMPTS = 20  # serials tried when other operators take them at the same moment
MAX_BILLS = 50
MAX_REASON = 500  # characters: the audit row keeps them all
MAX_ACTOR = 64  # bg_audit.actor

_YUAN = re.compile(r"(0|[1-9][0-9]{0,10})(?:\.([0-9]{1,2}))?")
_RECEIPT = re.compile(r"[0-9]{1,20}")


class BadInput(ValueError):
    """A value refused before anything is looked up: ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


class Refused(Exception):
    """The action cannot be done in the state things are in; nothing was written.
    ``field``, when given, is the input the message belongs to."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message, self.field = message, field


# -- parsing (pure) ----------------------------------------------------------------------


def parse_amount(text: str) -> int:
    """Yuan with up to two decimals (``120``, ``120.5``, ``120.50``) as fen, from
    0.01 to the gateway's maximum."""
    mo = _YUAN.fullmatch((text or "").strip())
    if not mo:
        raise BadInput("amount", "expected yuan with up to two decimals, e.g. 120 or 120.50")
    fen = int(mo.group(1)) * 100 + int((mo.group(2) or "0").ljust(2, "0"))
    if not 1 <= fen <= MAX_FEN:
        raise BadInput("amount", f"expected 0.01 to {fen_to_yuan(MAX_FEN)} yuan")
    return fen


def _identifier(field: str, text: str, width: int, what: str) -> str:
    value = (text or "").strip()
    if not value:
        raise BadInput(field, "required")
    if len(value) > width:
        raise BadInput(field, f"at most {width} characters")
    if not value.isprintable() or any(c.isspace() for c in value):
        raise BadInput(field, f"expected {what}, without spaces or control characters")
    return value


def parse_customer(text: str) -> str:
    return _identifier("customer", text, MAX_CUSTOMER_NO, "a customer number")


def parse_receipt(text: str) -> str:
    value = (text or "").strip()
    if not value:
        raise BadInput("receipt", "required")
    if not _RECEIPT.fullmatch(value):
        raise BadInput("receipt", "expected a receipt number: up to 20 digits")
    return value


def parse_bills(values: Iterable[str]) -> tuple[str, ...]:
    """Bill numbers, given as several values and/or separated by commas or spaces;
    none: the ledger's order (late fees first, then the oldest bill first)."""
    out: list[str] = []
    for v in values:
        for part in re.split(r"[,，\s]+", v or ""):
            if not part:
                continue
            bill = _identifier("bills", part, MAX_CUSTOMER_NO, "bill numbers")
            if bill in out:
                raise BadInput("bills", f"bill {bill} is named twice")
            out.append(bill)
    if len(out) > MAX_BILLS:
        raise BadInput("bills", f"at most {MAX_BILLS} bills")
    return tuple(out)


def parse_reason(text: str) -> str:
    value = (text or "").strip()
    if not value:
        raise BadInput("reason", "say why (it goes into the audit trail)")
    if len(value) > MAX_REASON:
        raise BadInput("reason", f"at most {MAX_REASON} characters")
    return value


def parse_actor(text: str) -> str:
    value = (text or "").strip()
    if not value or len(value) > MAX_ACTOR:
        raise BadInput("actor", f"expected who does this, 1 to {MAX_ACTOR} characters")
    return value


# -- what the pages and the command show ---------------------------------------------------


@dataclass(frozen=True)
class CounterPlan:
    """What a counter payment will do (the confirmation page's lines)."""

    customer_no: str
    name: str
    address: str
    owed: int  # principal of the open bills
    late_fee: int  # late fees owed today
    prepaid: int  # the prepaid balance before
    bills: tuple[m.BillDue, ...]  # the open bills, oldest first
    named: tuple[str, ...]  # the bills the payment settles; () the ledger's order
    amount: int
    excess: int  # kept as prepaid balance

    @property
    def owed_after(self) -> int:
        return self.owed + self.late_fee - (self.amount - self.excess)


@dataclass(frozen=True)
class CounterReceipt:
    """A counter payment posted: what the customer's receipt says."""

    receipt_no: str
    invoice_no: str  # "" when the counter has no invoice stock
    serial: str
    trade_date: date
    customer_no: str
    name: str
    amount: int
    excess: int
    owed_after: int

    def text(self) -> str:
        return (f"receipt {self.receipt_no}: {fen_to_yuan(self.amount)} yuan from"
                f" {self.customer_no} {self.name} at the counter, serial {self.serial},"
                f" invoice {self.invoice_no or 'none'}"
                + (f", {fen_to_yuan(self.excess)} kept as prepaid" if self.excess else "")
                + f"; still owed {fen_to_yuan(self.owed_after)}")


#: the ledger's refusal of a counter payment, as the operator reads it
_PAY_REFUSED = {
    Outcome.NOT_FOUND: ("no such customer in N8", "customer"),
    Outcome.ACCOUNT_LOCKED: ("the customer's account is suspended", "customer"),
    Outcome.NOTHING_DUE: ("the customer owes nothing", "customer"),
    Outcome.AMOUNT_REJECTED: ("the amount does not match the bills named", "amount"),
    Outcome.DATE_CLOSED: ("the counter's trade date is closed", None),
    Outcome.FORMAT_ERROR: ("a customer or bill number the ledger cannot take", "customer"),
}


class BackOffice:
    """The payment actions over one ledger (its store and clock)."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        self.store = ledger.store
        self.now = ledger.now

    # -- a payment at the counter (柜台收费) ---------------------------------------------

    def look_counter(self, customer_no: str, amount: int,
                     bills: tuple[str, ...] = ()) -> CounterPlan:
        """What a counter payment of ``amount`` fen will pay; :class:`Refused` when
        the ledger would refuse it (so that a refusal writes nothing at all)."""
        today = self.now().date()
        if self.store.run_sync(lambda tx: tx.is_closed(COUNTER, today), readonly=True):
            raise Refused(f"the counter's trade date {today:%Y-%m-%d} was closed by hand"
                          " (bankgate cutoff): no more counter payments today")
        q = self.ledger.query(m.QueryRequest(self._origin(today), customer_no))
        if q.outcome is Outcome.NOT_FOUND:
            raise Refused(f"no customer {customer_no} in N8", "customer")
        if q.outcome is Outcome.ACCOUNT_LOCKED:
            raise Refused(f"customer {customer_no}'s account is suspended: no payment can"
                          " be taken", "customer")
        if q.outcome is Outcome.NOTHING_DUE:
            raise Refused(f"customer {customer_no} owes nothing: a counter payment pays open"
                          " bills (an excess beside them is kept as prepaid)", "customer")
        if q.outcome is not Outcome.OK:
            raise Refused(f"customer {customer_no}: {q.outcome.value}", "customer")
        excess = max(0, amount - q.total)
        if bills:
            by_id = {b.bill_id: b for b in q.bills}
            for b in bills:
                if b not in by_id:
                    raise Refused(f"bill {b} is not an open bill of customer {customer_no}",
                                  "bills")
            named = sum(by_id[b].amount + by_id[b].late_fee for b in bills)
            if amount != named:
                raise Refused(f"the bills named come to {fen_to_yuan(named)} yuan with their"
                              " late fees: take exactly that, or name no bill", "amount")
            excess = 0
        return CounterPlan(customer_no, q.name, q.address, q.total_due, q.late_fee,
                           q.prepaid_balance, q.bills, bills, amount, excess)

    def counter_pay(self, customer_no: str, amount: int, bills: tuple[str, ...], *,
                    actor: str, reason: str) -> CounterReceipt:
        """Post a payment taken at the counter; its receipt.  Audited by the ledger
        (``counter-pay``: actor, reason, what was owed before and after)."""
        actor, reason = parse_actor(actor), parse_reason(reason)
        plan = self.look_counter(customer_no, amount, bills)
        for _ in range(SERIAL_ATTEMPTS):
            now = self.now()
            serial = self._next_serial(now.date())
            req = m.PaymentRequest(
                self._origin(now.date(), f"{now:%H%M%S}", actor), serial, customer_no, amount,
                # unique: a serial taken meanwhile answers DUPLICATE_MISMATCH, never
                # another operator's payment as if it were this one
                content=m.fingerprint("counter", serial, customer_no, amount,
                                      ",".join(bills), uuid.uuid4().hex),
                bill_ids=bills)
            r = self.ledger.pay(req, source=SOURCE, actor=actor, reason=reason)
            if r.outcome is Outcome.DUPLICATE_MISMATCH:
                continue  # another counter payment took this serial: the next one
            if r.outcome is not Outcome.OK:
                message, field = _PAY_REFUSED.get(r.outcome, (r.outcome.value, None))
                raise Refused(message, field)
            return CounterReceipt(r.receipt_no, r.invoice_no, serial, now.date(), customer_no,
                                  plan.name, amount, plan.excess, r.remaining_due)
        raise StoreUnavailable("the counter's serial numbers kept being taken: try again")

    def _origin(self, d: date, time: str = "", teller: str = "") -> m.Origin:
        return m.Origin(bank=COUNTER, trade_date=d, trade_time=time, teller=teller,
                        channel=Channel.COUNTER.value)

    def _next_serial(self, d: date) -> str:
        prefix = f"{COUNTER}-{d:%Y%m%d}-"
        last = self.store.run_sync(sql.last_serial, COUNTER, d, prefix, readonly=True)
        tail = (last or "")[len(prefix):]
        n = int(tail) + 1 if tail.isascii() and tail.isdigit() else 1
        if n >= 10 ** SERIAL_DIGITS:
            raise Refused(f"the counter has used every serial number of {d:%Y-%m-%d}")
        return f"{prefix}{n:0{SERIAL_DIGITS}d}"

    # -- reversal (冲正) and refund (退单) ---------------------------------------------------

    def look_payment(self, receipt_no: str, action: str) -> dict:
        """The payment ``action`` (``reverse`` or ``refund``) would undo, as the help
        desk shows it; :class:`Refused` with the ledger's reason when it may not."""
        rows = helpdesk.find_payments(self.store, receipt=receipt_no)
        if not rows:
            raise Refused(f"no payment {receipt_no}", "receipt")
        self._result(self._undo(action, receipt_no, "(looking)", "-", check=True))
        return rows[0]

    def reverse(self, receipt_no: str, *, actor: str, reason: str) -> str:
        """Reverse a posted payment (the bank asked by telephone); the ledger's
        words for what it did.  Audited as ``reverse``."""
        actor, reason = parse_actor(actor), parse_reason(reason)
        return self._result(self._undo("reverse", receipt_no, reason, actor))

    def refund(self, receipt_no: str, *, actor: str, reason: str) -> str:
        """Refund (退单) a posted payment at the counter.  Audited as ``refund``."""
        actor, reason = parse_actor(actor), parse_reason(reason)
        return self._result(self._undo("refund", receipt_no, reason, actor))

    def _undo(self, action: str, receipt_no: str, reason: str, actor: str,
              check: bool = False) -> m.SimpleResult:
        do = {"reverse": self.ledger.reverse_by_operator, "refund": self.ledger.refund}[action]
        return do(receipt_no, reason, actor, check=check)

    @staticmethod
    def _result(r: m.SimpleResult) -> str:
        if r.outcome is Outcome.OK:
            return r.message
        raise Refused(r.message, "receipt" if r.outcome is Outcome.ORIGINAL_NOT_FOUND
                      else None)
