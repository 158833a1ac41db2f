"""The canonical vocabulary every bank codec translates to and from.

Banks differ in bytes, not in meaning.  A codec decodes its bank's frame into
one of the request types below and encodes the ledger's result back into its
own format, mapping :class:`Outcome` to the spec's response codes.  Nothing in
this module knows any bank format, and nothing here knows SQL.

Money is integer fen everywhere.  Dates are :class:`datetime.date`.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from datetime import date, datetime


class Outcome(enum.StrEnum):
    """What happened to a request, independent of any bank's codes."""

    OK = "OK"
    NOT_FOUND = "NOT_FOUND"  # customer unknown
    NOTHING_DUE = "NOTHING_DUE"  # customer has nothing open
    AMOUNT_REJECTED = "AMOUNT_REJECTED"  # amount / bill list outside the policy
    ACCOUNT_LOCKED = "ACCOUNT_LOCKED"  # customer suspended
    DUPLICATE_MISMATCH = "DUPLICATE_MISMATCH"  # same key, other content
    ORIGINAL_NOT_FOUND = "ORIGINAL_NOT_FOUND"  # reversal of an unknown payment
    REVERSAL_NOT_ALLOWED = "REVERSAL_NOT_ALLOWED"  # invoice printed, not latest, drawn
    ALREADY_REVERSED = "ALREADY_REVERSED"
    REVERSED_FIRST = "REVERSED_FIRST"  # payment refused: its reversal came first
    EXPIRED = "EXPIRED"  # two-phase: the pending payment is past its deadline (undone)
    # the payment's state does not allow this: confirm of a cancelled one, cancel of a
    # confirmed one, a confirmed-only reversal of a pending one
    STATE_NOT_ALLOWED = "STATE_NOT_ALLOWED"
    DATE_CLOSED = "DATE_CLOSED"
    FORMAT_ERROR = "FORMAT_ERROR"
    MAC_ERROR = "MAC_ERROR"
    UNKNOWN_TRANSACTION = "UNKNOWN_TRANSACTION"
    NOT_AUTHORISED = "NOT_AUTHORISED"
    NOT_SIGNED_IN = "NOT_SIGNED_IN"
    BUSY = "BUSY"  # database down / timed out: try again, nothing recorded
    ERROR = "ERROR"  # anything else

    @property
    def remembered(self) -> bool:
        """Whether a journaled transaction keeps this answer for its retries.

        Outcomes decided before the repeat check (format, MAC, authorisation)
        or by an infrastructure failure are never recorded; the same request
        sent again is processed afresh.
        """
        return self not in _NOT_REMEMBERED


_NOT_REMEMBERED = frozenset(
    {
        Outcome.FORMAT_ERROR,
        Outcome.MAC_ERROR,
        Outcome.UNKNOWN_TRANSACTION,
        Outcome.NOT_AUTHORISED,
        Outcome.NOT_SIGNED_IN,
        Outcome.BUSY,
        Outcome.ERROR,
    }
)


class Channel(enum.StrEnum):
    COUNTER = "01"
    DEBIT_CARD = "02"
    PASSBOOK = "03"
    ATM = "04"
    ONLINE = "05"
    PHONE = "06"
    CREDIT_CARD = "07"
    MOBILE = "08"
    WITHHOLDING = "90"  # batch withholding (代扣) and real-time card debit
    RECONCILIATION = "91"  # posted after the fact by reconciliation (补销)
    OPERATOR = "92"  # manual post by an operator


class FeeType(enum.StrEnum):
    HEATING = "01"
    PROPERTY = "02"
    STEAM = "03"
    ELECTRICITY = "04"
    CONNECTION = "05"


class PaymentStatus(enum.StrEnum):
    POSTED = "POSTED"
    PENDING = "PENDING"  # two-phase: waiting for confirmation
    REVERSED = "REVERSED"
    REFUNDED = "REFUNDED"
    EXPIRED = "EXPIRED"  # two-phase: never confirmed, undone at its deadline
    CANCELLED = "CANCELLED"  # two-phase: the bank cancelled it while pending, undone
    NOT_FOUND = "NOT_FOUND"


# -- common request context ------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Who sent a request: filled by the codec from the bank's header."""

    bank: str  # the configured bank name (not the bank's code)
    trade_date: date
    trade_time: str = ""  # HHMMSS, local time, as the bank sent it
    branch: str = ""
    teller: str = ""
    channel: str = Channel.COUNTER.value


def fingerprint(*parts: object) -> str:
    """A short stable digest of a request's content, for the repeat check.

    Codecs pass the parts the spec says must be equal for a retry (e.g. the
    transaction code and the body bytes).
    """
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, bytes):
            b = p
        else:
            b = str(p).encode("utf-8")
        h.update(len(b).to_bytes(4, "big"))
        h.update(b)
    return h.hexdigest()[:32]


# -- requests --------------------------------------------------------------


@dataclass(frozen=True)
class QueryRequest:
    origin: Origin
    customer_no: str


@dataclass(frozen=True)
class PaymentRequest:
    """Pay ``amount`` fen for ``customer_no``.

    ``bill_ids`` names the bills to settle exactly (ref-delim 540); when empty
    the bank's policy applies and the payment settles late fees first, oldest
    bill first.  ``serial`` is the bank's serial, unique per bank and trade
    date; ``content`` is the fingerprint compared on a repeat.
    """

    origin: Origin
    serial: str
    customer_no: str
    amount: int
    content: str = ""
    bill_ids: tuple[str, ...] = ()
    pan_masked: str = ""
    two_phase: bool = False  # post as PENDING; confirm or let it expire


@dataclass(frozen=True)
class ConfirmRequest:
    """Make the pending (two-phase) payment ``orig_serial`` of ``orig_date`` final.

    ``serial`` is the confirm's own serial when the spec journals it under its
    own key (a retry answers the first answer; other content under the same
    key is ``DUPLICATE_MISMATCH``); ``None`` when it is idempotent by the
    original alone.  ``order_no`` is the prepay's receipt number as the bank
    names it: ``""`` is not checked, anything else must equal it or the answer
    is ``ORIGINAL_NOT_FOUND``.  ``content`` is the repeat check's fingerprint.
    """

    origin: Origin
    orig_serial: str
    orig_date: date
    serial: str | None = None
    order_no: str = ""
    content: str = ""


@dataclass(frozen=True)
class CancelRequest:
    """Undo the pending (two-phase) payment ``orig_serial`` of ``orig_date``
    before it is confirmed: the bank's customer walked away.  The fields mean
    what they mean in :class:`ConfirmRequest`."""

    origin: Origin
    orig_serial: str
    orig_date: date
    serial: str | None = None
    order_no: str = ""
    content: str = ""


@dataclass(frozen=True)
class ReversalRequest:
    """Reverse the payment ``orig_serial`` of this bank on ``origin.trade_date``.

    ``serial`` is the reversal's own serial when the spec journals reversals
    under their own key (ref-fixed, ref-delim); ``None`` when reversals are
    idempotent by the original's key alone (ref-iso8583).
    """

    origin: Origin
    orig_serial: str
    customer_no: str | None
    amount: int
    serial: str | None = None
    content: str = ""
    latest_only: bool = False  # only the customer's latest standing payment
    # only a confirmed (posted) payment may be reversed: a pending one is
    # STATE_NOT_ALLOWED (the bank must cancel it), and so is one cancelled,
    # expired, reversed or refunded.  False: the older specs' rules, unchanged.
    confirmed_only: bool = False


@dataclass(frozen=True)
class StatusRequest:
    origin: Origin
    orig_serial: str
    orig_date: date


@dataclass(frozen=True)
class CutoffRequest:
    """Close ``settle_date`` for the bank; answers its standing totals."""

    origin: Origin
    settle_date: date


@dataclass(frozen=True)
class StatementNotice:
    origin: Origin
    settle_date: date
    file_name: str
    record_count: int
    total_amount: int


@dataclass(frozen=True)
class EchoRequest:
    origin: Origin


# -- results ---------------------------------------------------------------


@dataclass(frozen=True)
class BillDue:
    bill_id: str
    fee_type: str
    period: str
    amount: int  # outstanding principal
    late_fee: int  # late fee as of the trade date


@dataclass(frozen=True)
class QueryResult:
    outcome: Outcome
    customer_no: str = ""
    name: str = ""
    address: str = ""
    customer_class: str = ""  # R / I / C
    bills: tuple[BillDue, ...] = ()
    total_due: int = 0  # outstanding principal of all open bills
    late_fee: int = 0
    prepaid_balance: int = 0

    @property
    def total(self) -> int:
        return self.total_due + self.late_fee


@dataclass(frozen=True)
class PaymentResult:
    outcome: Outcome
    customer_no: str = ""
    amount: int = 0
    receipt_no: str = ""
    invoice_no: str = ""
    remaining_due: int = 0
    retry: bool = False  # this answer repeats the first one
    expires_at: datetime | None = None  # a prepay's deadline (gateway local time)


@dataclass(frozen=True)
class ConfirmResult:
    outcome: Outcome
    customer_no: str = ""
    amount: int = 0
    receipt_no: str = ""  # the prepay's receipt number (its order number)
    invoice_no: str = ""  # the invoice number taken for the payment, "" if none
    retry: bool = False
    message: str = ""  # why refused, for the log (not sent, not journaled)


@dataclass(frozen=True)
class CancelResult:
    outcome: Outcome
    customer_no: str = ""
    amount: int = 0
    receipt_no: str = ""
    retry: bool = False
    message: str = ""  # why refused, for the log (not sent, not journaled)


@dataclass(frozen=True)
class ReversalResult:
    outcome: Outcome
    customer_no: str = ""
    orig_serial: str = ""
    amount: int = 0
    retry: bool = False
    message: str = ""  # why a reversal was refused, for the log (not sent, not journaled)


@dataclass(frozen=True)
class StatusResult:
    """A payment's state.  A pending payment past its deadline is ``EXPIRED``
    even before the sweeper has undone it: it can no longer be confirmed."""

    outcome: Outcome
    status: PaymentStatus = PaymentStatus.NOT_FOUND
    amount: int = 0
    receipt_no: str = ""
    customer_no: str = ""


@dataclass(frozen=True)
class CutoffResult:
    outcome: Outcome
    settle_date: date | None = None
    count: int = 0
    total: int = 0


@dataclass(frozen=True)
class SimpleResult:
    outcome: Outcome
    message: str = ""
    details: dict = field(default_factory=dict)


Request = (
    QueryRequest
    | PaymentRequest
    | ConfirmRequest
    | CancelRequest
    | ReversalRequest
    | StatusRequest
    | CutoffRequest
    | StatementNotice
    | EchoRequest
)
