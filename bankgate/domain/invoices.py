"""Invoices (发票): stock, a number per payment, print, reprint, void, and N8.

The rules, over the SQL of :mod:`bankgate.store.invoices`; ``docs/invoices.rst``
tells the operator's side.

- **Stock (领用)**: numbered ranges -- an invoice code (``prefix``, up to 8
  capital letters or digits) and first/last number written with ``width``
  digits -- issued to a *holder*: a configured bank, or the utility's own
  counter (``counter`` or ``counter-<name>``).  A range that would share a
  single invoice number with any range of any holder is refused, and every
  number of a new range is written to N8's invoice table as unused (``U``), so
  N8's primary key refuses a range issued twice at the same moment.
- **开出**: banks with ``options.invoice = true`` get the next number of their
  oldest open range inside each payment's own transaction (the ledger's
  ``after_post`` hook); the stock row is locked, so concurrent payments get
  distinct numbers and a payment that rolls back gives its number back.  When
  the stock is exhausted the payment still posts, with no invoice number; a
  warning is logged and audited for that payment.
- **剩余**: remaining stock per holder; when a number taken leaves exactly
  ``invoice_low_water`` (or none) a warning is logged and audited -- once per
  crossing.  :meth:`Invoices.stock_report` and :meth:`Invoices.low_stock` are
  for the console.
- **打印 / 补打 / 重打 / 作废**: print marks the invoice PRINTED and the payment
  ``invoice_printed`` (the ledger then refuses a reversal or refund); reprint
  keeps the number, counts the print and marks the copy; re-issue voids the
  number with a reason and prints a new one; void takes the mark off the
  payment when no printed invoice remains, so the payment may be reversed
  again.  A reversal, refund, expiry or reconciliation 抹账 of a payment voids
  its standing invoice (``after_undo``).
- **N8**: every change is mirrored into N8's invoice table (through the
  mapping) in the same transaction; :meth:`Invoices.check` lists every
  difference, and every number taken from stock without a record.

Invoice settings live in each bank's ``[bank.options]`` table; the
application validates them (:func:`bankgate.app.options.invoice_settings`) and
hands this module the parsed :class:`InvoiceSettings`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from bankgate.store import invoices as sql
from bankgate.store.db import Retry, Store
from bankgate.store.tx import Tx

log = logging.getLogger("bankgate.invoices")

ISSUED, PRINTED, VOID = "ISSUED", "PRINTED", "VOID"
ACTIVE = (ISSUED, PRINTED)
COUNTER = "counter"
SYSTEM = "system"
DEFAULT_LOW_WATER = 50
DEFAULT_WIDTH = 8
MAX_NO_LENGTH = 20  # bg_invoice.invoice_no, N8's invoice_no, the specs' X(20)
MAX_RANGE = 100_000  # numbers per issue (each becomes an N8 row)
MAX_SKIPS = 10  # numbers N8 already owns skipped per payment before giving up
DEFAULT_PAYEE = "供热公司"
DEFAULT_SOURCES = ("online",)

FEE_NAMES = {"01": "采暖费", "02": "物业费", "03": "蒸汽费", "04": "电费", "05": "接口费"}

_CODE = re.compile(r"[0-9A-Z]{0,8}")
_NUMBER = re.compile(r"[0-9A-Z]{1,20}")  # an invoice number as written
_COUNTER = re.compile(r"counter([-_.][A-Za-z0-9_.-]{1,24})?")
SOURCE_RE = re.compile(r"[a-z][a-z0-9_-]{0,15}")  # bg_payment.source is 16 wide


class InvoiceError(ValueError):
    """An operator's request refused, with the reason (nothing was changed)."""


# -- settings ([bank.options]) ---------------------------------------------------------


@dataclass(frozen=True)
class InvoiceSettings:
    enabled: bool = False  # options.invoice: a number per payment
    low_water: int = DEFAULT_LOW_WATER  # options.invoice_low_water
    sources: tuple[str, ...] = DEFAULT_SOURCES  # options.invoice_sources
    payee: str = DEFAULT_PAYEE  # options.invoice_payee: 收款单位 on the invoice
    bank_title: str = ""  # options.invoice_bank_title: 收款银行 (default: name and code)
    fee_names: dict = field(default_factory=dict)  # options.invoice_fee_names


OPTION_KEYS = ("invoice", "invoice_low_water", "invoice_sources", "invoice_payee",
               "invoice_bank_title", "invoice_fee_names")


# -- numbers ---------------------------------------------------------------------------


def format_no(prefix: str, width: int, n: int) -> str:
    return f"{prefix or ''}{n:0{width}d}"


def parse_no(invoice_no: str, prefix: str, width: int) -> int | None:
    """The number of ``invoice_no`` in the format (prefix, width), or None."""
    prefix = prefix or ""
    if len(invoice_no) != len(prefix) + width or not invoice_no.startswith(prefix):
        return None
    tail = invoice_no[len(prefix):]
    return int(tail) if tail.isascii() and tail.isdigit() else None


def overlaps(a: dict, b: dict) -> bool:
    """Whether two ranges (prefix, width, first_no, last_no) share any
    invoice number *as written*: ``A1`` + 3 digits 023 and ``A10`` + 2 digits
    23 are both ``A1023``."""
    pa, pb = a["prefix"] or "", b["prefix"] or ""
    if len(pa) + a["width"] != len(pb) + b["width"]:
        return False
    if len(pa) > len(pb):
        a, b, pa, pb = b, a, pb, pa
    if not pb.startswith(pa):
        return False
    extra = pb[len(pa):]  # digits of a's number written by b's prefix
    if extra and not (extra.isascii() and extra.isdigit()):
        return False
    base = int(extra) * 10 ** b["width"] if extra else 0
    return base + b["first_no"] <= a["last_no"] and a["first_no"] <= base + b["last_no"]


def remaining(ranges: list[dict]) -> int:
    return sum(max(0, r["last_no"] - r["next_no"] + 1) for r in ranges)


# -- the work inside one transaction -----------------------------------------------------


def _take(tx: Tx, holder: str, low_water: int, now: datetime) -> tuple[str, dict] | None:
    """The next number of the holder's oldest open range (the ranges are
    locked until the transaction ends); warns once when the stock crosses the
    low-water mark and when it runs out."""
    open_ = sql.ranges(tx, holder, open_only=True, lock=True)
    if not open_:
        return None
    r = open_[0]
    n = r["next_no"]
    if not sql.range_advance(tx, r["id"], n):
        raise Retry()  # moved under us (cannot happen with row locks): run again
    left = remaining(open_) - 1
    if left == 0:
        log.warning("invoice stock of %s is exhausted: issue a new range"
                    " (bankgate invoice issue)", holder)
        tx.audit(now, SYSTEM, "invoice-exhausted", holder, {"last": format_no(
            r["prefix"], r["width"], n)})
    elif left == low_water:
        log.warning("invoice stock of %s is low: %d left (low water %d)", holder, left,
                    low_water)
        tx.audit(now, SYSTEM, "invoice-low-stock", holder,
                 {"remaining": left, "low_water": low_water})
    return format_no(r["prefix"], r["width"], n), r


def _issue_for_payment(tx: Tx, payment: dict, holder: str, low_water: int, now: datetime,
                       actor: str) -> str | None:
    """开出: a number for ``payment`` from the holder's stock, recorded in
    bg_invoice, on the payment and in N8.  None when there is no stock.

    A number N8 already has as used or void is not used: it is recorded VOID
    (reason given, audited) and the next one taken.
    """
    for _ in range(MAX_SKIPS):
        got = _take(tx, holder, low_water, now)
        if got is None:
            return None
        no, r = got
        n8_status = sql.n8_use(tx, no, payment["receipt_no"], payment["customer_no"],
                               payment["amount"], now)
        if n8_status is not None:
            reason = f"skipped: N8 already has this number as {n8_status}"
            log.warning("invoice %s of %s %s", no, holder, reason)
            sql.invoice_insert(tx, invoice_no=no, stock_id=r["id"], bank=holder,
                               payment_id=None, status=VOID, print_count=0, created_at=now,
                               voided_at=now, void_reason=reason, actor=actor)
            tx.audit(now, actor, "invoice-n8-conflict", no,
                     {"holder": holder, "n8_status": n8_status,
                      "receipt_no": payment["receipt_no"]})
            continue
        sql.invoice_insert(tx, invoice_no=no, stock_id=r["id"], bank=holder,
                           payment_id=payment["id"], status=ISSUED, print_count=0,
                           created_at=now, actor=actor)
        sql.payment_set_invoice(tx, payment["id"], no, 0)
        return no
    log.warning("invoice stock of %s: %d numbers in a row are N8's: giving up", holder,
                MAX_SKIPS)
    return None


def _void(tx: Tx, inv: dict, payment: dict | None, reason: str, actor: str,
          now: datetime, action: str = "invoice-void") -> None:
    no = inv["invoice_no"]
    sql.invoice_set(tx, no, status=VOID, voided_at=now, void_reason=reason[:200], actor=actor)
    if payment is not None:
        sql.n8_void(tx, no, pay_id=payment["receipt_no"], customer_no=payment["customer_no"],
                    amount=payment["amount"])
        others = [i for i in sql.invoices_of_payment(tx, payment["id"], active=True)
                  if i["invoice_no"] != no]
        standing = others[-1]["invoice_no"] if others else None
        sql.payment_set_invoice(tx, payment["id"], standing,
                                int(any(i["status"] == PRINTED for i in others)))
    else:
        sql.n8_void(tx, no)
    tx.audit(now, actor, action, no,
             {"reason": reason, "was": inv["status"], "print_count": inv["print_count"],
              "receipt_no": payment["receipt_no"] if payment else None})


# -- the ledger hook ---------------------------------------------------------------------


class InvoiceHook:
    """The ledger's hook: a number per payment for banks with
    ``options.invoice = true``; the standing invoice voided when a payment is
    reversed, refunded, cancelled (two-phase), expires or is reversed by
    reconciliation."""

    def __init__(self, settings: dict[str, InvoiceSettings]):
        self.settings = settings

    def after_post(self, tx: Tx, payment: dict, allocations: list[dict], now: datetime):
        if payment["bank"] == COUNTER:  # taken at the utility's counter: its stock, if any
            ranges = sql.ranges(tx, COUNTER)
            if not ranges:
                return None
            no = _issue_for_payment(tx, payment, COUNTER, ranges[-1]["low_water"], now, SYSTEM)
            return {"invoice_no": no or ""}
        s = self.settings.get(payment["bank"])
        if s is None or not s.enabled or payment.get("source", "online") not in s.sources:
            return None
        no = _issue_for_payment(tx, payment, payment["bank"], s.low_water, now, SYSTEM)
        if no is None:
            log.warning("payment %s of %s posted WITHOUT an invoice: no invoice stock",
                        payment["receipt_no"], payment["bank"])
            tx.audit(now, SYSTEM, "invoice-none", payment["receipt_no"],
                     {"bank": payment["bank"], "amount": payment["amount"],
                      "reason": "no invoice stock"})
            return {"invoice_no": ""}
        return {"invoice_no": no}

    def after_undo(self, tx: Tx, payment: dict, kind: str, now: datetime) -> None:
        if not payment.get("invoice_no") and not payment.get("invoice_printed"):
            return
        for inv in sql.invoices_of_payment(tx, payment["id"], active=True, lock=True):
            if inv["status"] == PRINTED:
                log.warning("payment %s undone (%s) after its invoice %s was printed: the"
                            " invoice is void, recover the paper", payment["receipt_no"],
                            kind, inv["invoice_no"])
            _void(tx, inv, payment, f"payment undone: {kind.lower()}", SYSTEM, now)


def make_hook(settings: dict[str, InvoiceSettings]) -> InvoiceHook | None:
    """The hook for ``Ledger(hooks=[...])``, from every bank's validated
    settings (:func:`bankgate.app.options.invoice_settings`).

    None when no bank is configured.  Otherwise a hook even if no bank takes
    numbers per payment: invoices printed on demand must still be voided when
    their payment is undone.
    """
    if not settings:
        return None
    return InvoiceHook(settings)


# -- the operator's side ------------------------------------------------------------------


@dataclass
class Printed:
    invoice_no: str
    receipt_no: str
    path: str
    copy: int = 0  # 0 the original, n the n-th reprint (补打)
    voided: str = ""  # 重打: the number this one replaces
    payment_id: int | None = None


@dataclass
class Difference:
    invoice_no: str
    problem: str
    ours: str = ""
    n8: str = ""

    def __str__(self) -> str:
        return f"{self.invoice_no:<20} {self.problem:<22} gateway: {self.ours or '-':<34}" \
               f" N8: {self.n8 or '-'}"


class Invoices:
    """Operator actions (CLI, console): stock, print, reprint, re-issue,
    void, check.  Each action is one transaction; a refusal raises
    :class:`InvoiceError` and changes nothing."""

    def __init__(self, store: Store, settings: dict[str, InvoiceSettings], *,
                 bank_codes: dict[str, str] | None = None, now: Callable[[], datetime],
                 data_dir: str):
        self.store = store
        self.settings = settings
        self.bank_codes = bank_codes or {}  # bank name -> bank code, for 收款银行
        self.now = now
        self.data_dir = data_dir

    # -- holders, thresholds ------------------------------------------------------------

    def check_holder(self, holder: str) -> str:
        if holder in self.settings or _COUNTER.fullmatch(holder):
            return holder
        raise InvoiceError(
            f"unknown holder {holder!r}: a configured bank ({', '.join(self.settings) or '-'})"
            f" or the utility's counter ('{COUNTER}' or '{COUNTER}-NAME')")

    def _low_water(self, holder: str, ranges: list[dict]) -> int:
        if holder in self.settings:
            return self.settings[holder].low_water
        return ranges[-1]["low_water"] if ranges else DEFAULT_LOW_WATER

    def _low_water_tx(self, tx: Tx, holder: str) -> int:
        if holder in self.settings:
            return self.settings[holder].low_water
        return self._low_water(holder, sql.ranges(tx, holder))

    # -- stock (领用, 剩余) ----------------------------------------------------------------

    def issue_stock(self, holder: str, first: int, last: int, *, code: str = "",
                    width: int = DEFAULT_WIDTH, low_water: int | None = None,
                    actor: str) -> dict:
        """领用: give ``holder`` the numbers first..last of invoice code ``code``."""
        self.check_holder(holder)
        code = code or ""
        if not _CODE.fullmatch(code):
            raise InvoiceError(f"invoice code {code!r}: expected up to 8 capital letters or"
                               " digits")
        if not 1 <= width <= MAX_NO_LENGTH - len(code):
            raise InvoiceError(f"width {width}: expected 1 to {MAX_NO_LENGTH - len(code)}"
                               f" digits (code and number together at most {MAX_NO_LENGTH})")
        if not 0 <= first <= last < 10 ** width:
            raise InvoiceError(f"range {first}-{last}: expected 0 <= first <= last <"
                               f" {10 ** width} ({width} digits)")
        if last - first + 1 > MAX_RANGE:
            raise InvoiceError(f"{last - first + 1} numbers at once: at most {MAX_RANGE};"
                               " issue the range in parts")
        if low_water is not None and not 0 <= low_water <= MAX_RANGE:
            raise InvoiceError(f"low water {low_water}: expected 0 to {MAX_RANGE}")
        if not actor.strip():
            raise InvoiceError("an actor is required")
        new = {"prefix": code, "width": width, "first_no": first, "last_no": last}
        for attempt in (1, 2):
            try:
                return self.store.run_sync(self._issue_tx, holder, new, low_water, actor)
            except sa.exc.IntegrityError:
                # another range with these numbers committed meanwhile (N8's key
                # refused ours): the second look names it
                if attempt == 2:
                    raise InvoiceError(
                        "N8's invoice table refused the new numbers: some are in N8"
                        " already") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _issue_tx(self, tx: Tx, holder: str, new: dict, low_water: int | None, actor: str):
        now = self.now()
        for r in sql.ranges(tx):
            if overlaps(new, r):
                raise InvoiceError(
                    f"overlaps range {_range_text(r)} issued to {r['bank']} on"
                    f" {r['issued_at']:%Y-%m-%d}")
        lo = format_no(new["prefix"], new["width"], new["first_no"])
        hi = format_no(new["prefix"], new["width"], new["last_no"])
        clash = sorted(
            row["invoice_no"] for row in sql.n8_between(tx, lo, hi)
            if (n := parse_no(row["invoice_no"], new["prefix"], new["width"])) is not None
            and new["first_no"] <= n <= new["last_no"]
        )
        if clash:
            raise InvoiceError(f"N8 already has {len(clash)} number(s) of this range, e.g."
                               f" {', '.join(clash[:3])}")
        lw = low_water if low_water is not None else self._low_water_tx(tx, holder)
        sid = sql.range_insert(tx, bank=holder, next_no=new["first_no"], low_water=lw,
                               issued_at=now, issued_by=actor, **new)
        sql.n8_insert_unused(tx, [format_no(new["prefix"], new["width"], n)
                                  for n in range(new["first_no"], new["last_no"] + 1)])
        count = new["last_no"] - new["first_no"] + 1
        tx.audit(now, actor, "invoice-stock-issue", holder,
                 {"range": f"{lo}-{hi}", "count": count, "stock_id": sid})
        return {"id": sid, "holder": holder, "first": lo, "last": hi, "count": count,
                "low_water": lw}

    def stock_report(self, holder: str | None = None) -> list[dict]:
        """剩余: per holder, the numbers left, the low-water mark, the state
        (OK, LOW at or below the mark, EMPTY), the ranges and how many numbers
        were issued, printed and voided."""
        ranges, usage = self.store.run_sync(
            lambda tx: (sql.ranges(tx), sql.usage(tx)), readonly=True)
        holders = [b for b, s in self.settings.items() if s.enabled]
        holders += sorted({r["bank"] for r in ranges} - set(holders))
        if holder is not None:
            holders = [holder]
        out = []
        for h in holders:
            mine = [r for r in ranges if r["bank"] == h]
            left = remaining(mine)
            low = self._low_water(h, mine)
            out.append({
                "holder": h, "remaining": left, "low_water": low,
                "state": "EMPTY" if left == 0 else ("LOW" if left <= low else "OK"),
                "invoice": h in self.settings and self.settings[h].enabled,
                "ranges": [{"id": r["id"], "first": format_no(r["prefix"], r["width"],
                                                               r["first_no"]),
                            "last": format_no(r["prefix"], r["width"], r["last_no"]),
                            "next": format_no(r["prefix"], r["width"], r["next_no"])
                            if r["next_no"] <= r["last_no"] else "",
                            "remaining": max(0, r["last_no"] - r["next_no"] + 1),
                            "issued_at": r["issued_at"], "issued_by": r["issued_by"]}
                           for r in mine],
                "used": usage.get(h, {}),
            })
        return out

    def low_stock(self) -> list[dict]:
        """The holders at or below their low-water mark (each logged as a
        warning): for the console and the service's start."""
        low = [r for r in self.stock_report() if r["state"] != "OK" and (
            r["invoice"] or r["ranges"])]
        for r in low:
            log.warning("invoice stock of %s: %d left (low water %d)%s", r["holder"],
                        r["remaining"], r["low_water"],
                        " -- EXHAUSTED" if r["state"] == "EMPTY" else "")
        return low

    # -- print, reprint, re-issue, void ---------------------------------------------------

    def _resolve(self, tx: Tx, number: str, lock: bool = True) -> tuple[dict, dict | None]:
        """(payment locked, its invoice) for an invoice number or a receipt number
        (``lock`` false: read only, nothing locked)."""
        inv = sql.invoice_get(tx, number)
        pay = tx.payment_by_receipt(number)
        if inv is not None and pay is not None and inv["payment_id"] != pay["id"]:
            raise InvoiceError(f"{number} is both an invoice number and another payment's"
                               " receipt number")
        if inv is None and pay is None:
            raise InvoiceError(f"no invoice and no payment numbered {number!r}")
        if inv is not None and inv["payment_id"] is None:
            raise InvoiceError(f"invoice {number} was never used for a payment:"
                               f" {inv['void_reason'] or inv['status']}")
        payment = tx.payment_by_id(inv["payment_id"] if inv else pay["id"], lock=lock)
        if payment is None:
            raise InvoiceError(f"invoice {number}: its payment is missing")
        if inv is None:
            inv = sql.invoice_get(tx, payment["invoice_no"], lock=lock) \
                if payment["invoice_no"] else None
        else:
            inv = sql.invoice_get(tx, number, lock=lock)
        return payment, inv

    @staticmethod
    def _standing(payment: dict) -> None:
        if payment["status"] == "PENDING":
            raise InvoiceError(f"payment {payment['receipt_no']} is not confirmed yet")
        if payment["status"] != "POSTED":
            raise InvoiceError(f"payment {payment['receipt_no']} is"
                               f" {payment['status'].lower()}: nothing to invoice")

    def _out(self, out_dir: str | None, holder: str) -> Path:
        return Path(out_dir) if out_dir else Path(self.data_dir) / "invoices" / holder

    def _render(self, tx: Tx, inv_no: str, holder: str, payment: dict, now: datetime,
                actor: str, copy: int = 0, voided: str = "") -> bytes:
        from bankgate.domain import invoice_pdf

        data = sql.print_data(tx, payment["id"])
        s = self.settings.get(payment["bank"], InvoiceSettings())
        names = {**FEE_NAMES, **s.fee_names}
        bank_code = self.bank_codes.get(payment["bank"])
        bank_title = s.bank_title or (f"{payment['bank']} ({bank_code})"
                                      if bank_code is not None else payment["bank"])
        r = sql.range_get(tx, sql.invoice_get(tx, inv_no)["stock_id"])
        code = r["prefix"] if r else ""
        doc = invoice_pdf.InvoiceDoc(
            payee=s.payee, invoice_no=inv_no, invoice_code=code,
            invoice_number=inv_no[len(code):], receipt_no=payment["receipt_no"],
            bank_title=bank_title, serial=payment["serial"], trade_date=payment["trade_date"],
            customer_no=payment["customer_no"], customer_name=data["customer"]["name"],
            address=data["customer"]["address"],
            lines=[invoice_pdf.InvoiceLine(names.get(x["fee_type"], x["fee_type"] or "-"),
                                           x["period"], x["principal"], x["late_fee"])
                   for x in data["lines"]],
            prepaid_in=int(payment["prepaid_in"] or 0), amount=int(payment["amount"]),
            printed_at=now, actor=actor, copy=copy, voided=voided,
            issuer=holder if holder != payment["bank"] else "",
        )
        return invoice_pdf.render(doc)

    def print(self, number: str, *, actor: str, holder: str | None = None,
              out_dir: str | None = None, reason: str = "") -> Printed:
        """打印: print a payment's invoice (a receipt number) or an issued
        invoice (its number).  A payment without an invoice gets a number now
        from ``holder``'s stock (default: the bank it paid at).  ``reason``, when
        given, is recorded in the audit row."""
        _need(actor, "an actor")
        if holder is not None:
            self.check_holder(holder)
        return self.store.run_sync(self._print_tx, number, actor, holder, out_dir, reason)

    @staticmethod
    def _may_print(payment: dict, inv: dict | None) -> None:
        Invoices._standing(payment)
        if inv is not None and inv["status"] == VOID:
            raise InvoiceError(f"invoice {inv['invoice_no']} is void ({inv['void_reason']});"
                               f" print receipt {payment['receipt_no']} for a new number")
        if inv is not None and inv["status"] == PRINTED:
            raise InvoiceError(
                f"invoice {inv['invoice_no']} was printed already ({inv['print_count']}x,"
                f" last {inv['printed_at']:%Y-%m-%d %H:%M}): use reprint (补打) for a copy or"
                " print --reissue (重打) for a new number")

    @staticmethod
    def _may_reprint(number: str, payment: dict, inv: dict | None) -> None:
        if inv is None or inv["status"] != PRINTED:
            state = "has no invoice" if inv is None else f"is {inv['status'].lower()}"
            raise InvoiceError(f"{number} {state}: only a printed invoice can be reprinted"
                               " (补打); use print")
        Invoices._standing(payment)

    @staticmethod
    def _may_void(number: str, inv: dict | None) -> None:
        if inv is None or inv["status"] not in ACTIVE:
            state = "has no standing invoice" if inv is None else "is void already"
            raise InvoiceError(f"{number} {state}")

    def _print_tx(self, tx: Tx, number: str, actor: str, holder: str | None, out_dir,
                  reason: str = ""):
        from bankgate.canon.files import write_atomic

        now = self.now()
        payment, inv = self._resolve(tx, number)
        self._may_print(payment, inv)
        if inv is None:
            h = holder or payment["bank"]
            no = _issue_for_payment(tx, payment, h, self._low_water_tx(tx, h), now, actor)
            if no is None:
                raise InvoiceError(f"no invoice stock left for {h}: issue a range (bankgate"
                                   " invoice issue) or print with --holder counter")
        else:
            no, h = inv["invoice_no"], inv["bank"]
        sql.invoice_set(tx, no, status=PRINTED, print_count=1, printed_at=now, actor=actor)
        sql.payment_set_invoice(tx, payment["id"], no, 1)
        pdf = self._render(tx, no, h, payment, now, actor)
        path = write_atomic(self._out(out_dir, h) / f"{no}.pdf", pdf)
        tx.audit(now, actor, "invoice-print", no,
                 {"receipt_no": payment["receipt_no"], "holder": h, "file": str(path),
                  "before": inv["status"] if inv is not None else None, "after": PRINTED,
                  **({"reason": reason} if reason else {})})
        return Printed(no, payment["receipt_no"], str(path), payment_id=payment["id"])

    def reprint(self, number: str, *, actor: str, out_dir: str | None = None,
                reason: str = "") -> Printed:
        """补打: another print of a printed invoice, same number, marked as a copy.
        ``reason``, when given, is recorded in the audit row."""
        _need(actor, "an actor")
        return self.store.run_sync(self._reprint_tx, number, actor, out_dir, reason)

    def _reprint_tx(self, tx: Tx, number: str, actor: str, out_dir, reason: str = ""):
        from bankgate.canon.files import write_atomic

        now = self.now()
        payment, inv = self._resolve(tx, number)
        self._may_reprint(number, payment, inv)
        no = inv["invoice_no"]
        count = sql.invoice_bump_print(tx, no, now, actor)
        pdf = self._render(tx, no, inv["bank"], payment, now, actor, copy=count - 1)
        path = write_atomic(self._out(out_dir, inv["bank"]) / f"{no}-copy{count - 1}.pdf", pdf)
        tx.audit(now, actor, "invoice-reprint", no,
                 {"receipt_no": payment["receipt_no"], "copy": count - 1, "file": str(path),
                  "before": {"print_count": inv["print_count"]},
                  "after": {"print_count": count},
                  **({"reason": reason} if reason else {})})
        return Printed(no, payment["receipt_no"], str(path), copy=count - 1,
                       payment_id=payment["id"])

    def reissue(self, number: str, *, reason: str, actor: str, holder: str | None = None,
                out_dir: str | None = None) -> Printed:
        """重打: void the payment's standing invoice (with the reason) and print
        a new number (from ``holder``, default the old number's holder)."""
        _need(actor, "an actor")
        _need(reason, "a reason")
        if holder is not None:
            self.check_holder(holder)
        return self.store.run_sync(self._reissue_tx, number, reason, actor, holder, out_dir)

    def _reissue_tx(self, tx: Tx, number: str, reason: str, actor: str, holder, out_dir):
        from bankgate.canon.files import write_atomic

        now = self.now()
        payment, inv = self._resolve(tx, number)
        self._standing(payment)
        if inv is None or inv["status"] not in ACTIVE:
            raise InvoiceError(f"{number}: no standing invoice to re-issue; use print")
        old = inv["invoice_no"]
        _void(tx, inv, payment, f"re-issued (重打): {reason}", actor, now)
        h = holder or inv["bank"]
        no = _issue_for_payment(tx, payment, h, self._low_water_tx(tx, h), now, actor)
        if no is None:
            raise InvoiceError(f"no invoice stock left for {h}: nothing was changed")
        sql.invoice_set(tx, no, status=PRINTED, print_count=1, printed_at=now, actor=actor)
        sql.payment_set_invoice(tx, payment["id"], no, 1)
        pdf = self._render(tx, no, h, payment, now, actor, voided=old)
        path = write_atomic(self._out(out_dir, h) / f"{no}.pdf", pdf)
        tx.audit(now, actor, "invoice-reissue", no,
                 {"receipt_no": payment["receipt_no"], "voided": old, "reason": reason,
                  "file": str(path)})
        return Printed(no, payment["receipt_no"], str(path), voided=old)

    def void(self, number: str, *, reason: str, actor: str) -> dict:
        """作废: void an invoice (or a payment's standing invoice) with a reason."""
        _need(actor, "an actor")
        _need(reason, "a reason")
        return self.store.run_sync(self._void_tx, number, reason, actor)

    def _void_tx(self, tx: Tx, number: str, reason: str, actor: str) -> dict:
        now = self.now()
        payment, inv = self._resolve(tx, number)
        self._may_void(number, inv)
        _void(tx, inv, payment, reason, actor, now)
        return {"invoice_no": inv["invoice_no"], "receipt_no": payment["receipt_no"],
                "was": inv["status"]}

    # -- for the console: what an action would do, and the printed files ------------------

    def preview(self, action: str, number: str) -> dict:
        """What ``print``, ``reprint`` or ``void`` of ``number`` would act on (read
        only, nothing locked): the payment, its invoice (``None``: a new number is
        taken), the customer's name.  Raises :class:`InvoiceError` as the action
        itself would for the invoice's state."""
        if action not in ("print", "reprint", "void"):
            raise ValueError(f"unknown invoice action {action!r}")
        return self.store.run_sync(self._preview_tx, action, number, readonly=True)

    def _preview_tx(self, tx: Tx, action: str, number: str) -> dict:
        payment, inv = self._resolve(tx, number, lock=False)
        if action == "print":
            self._may_print(payment, inv)
        elif action == "reprint":
            self._may_reprint(number, payment, inv)
        else:
            self._may_void(number, inv)
        data = sql.print_data(tx, payment["id"])
        return {"payment": payment, "invoice": inv, "name": data["customer"]["name"]}

    def pdf(self, invoice_no: str, copy: int | None = None) -> tuple[str, bytes]:
        """The PDF a print of ``invoice_no`` wrote in the data folder: the newest
        (the original, or the last copy 补打) or copy ``copy`` (0: the original).
        ``(file name, bytes)``; raises :class:`InvoiceError` when the invoice was
        never printed or its file is not in the data folder (printed with
        ``--out`` elsewhere, or removed).  The name is built from the database's
        values and checked to stay inside ``DATA_DIR/invoices``."""
        if not _NUMBER.fullmatch(invoice_no or ""):
            raise InvoiceError("expected an invoice number (capital letters and digits)")
        inv = self.store.run_sync(sql.invoice_get, invoice_no, readonly=True)
        if inv is None or not inv["print_count"]:
            raise InvoiceError(f"invoice {invoice_no} was never printed")
        last = inv["print_count"] - 1
        if copy is None:
            copy = last
        if not 0 <= copy <= last:
            raise InvoiceError(f"invoice {invoice_no} has copies 0 to {last}")
        name = f"{invoice_no}.pdf" if copy == 0 else f"{invoice_no}-copy{copy}.pdf"
        base = (Path(self.data_dir) / "invoices").resolve()
        path = (base / inv["bank"] / name).resolve()
        if not path.is_relative_to(base) or not path.is_file():
            raise InvoiceError(f"the PDF of invoice {invoice_no}"
                               + (f" (copy {copy})" if copy else "")
                               + " is not in the data folder (printed with --out elsewhere?)")
        return name, path.read_bytes()

    # -- N8 consistency -------------------------------------------------------------------

    def check(self) -> list[Difference]:
        """Every difference between the gateway's invoice records and N8's,
        and every inconsistency inside the gateway's own (a number taken from
        stock with no record, a payment pointing at the wrong invoice)."""
        return self.store.run_sync(_check_tx, readonly=True)


def _need(text: str, what: str) -> None:
    if not text or not text.strip():
        raise InvoiceError(f"{what} is required")


def _range_text(r: dict) -> str:
    return (f"{format_no(r['prefix'], r['width'], r['first_no'])}-"
            f"{format_no(r['prefix'], r['width'], r['last_no'])}")


def _row_text(status, pay_id, customer_no, amount) -> str:
    return f"{status} pay {pay_id or '-'} cust {customer_no or '-'} amt {amount}"


def _check_tx(tx: Tx) -> list[Difference]:
    out: list[Difference] = []
    for r in sql.ranges(tx):
        p, w = r["prefix"], r["width"]
        used = {i["invoice_no"]: i for i in sql.invoices_of_range(tx, r["id"])}
        n8 = {row["invoice_no"]: row for row in sql.n8_between(
            tx, format_no(p, w, r["first_no"]), format_no(p, w, r["last_no"]))
            if (n := parse_no(row["invoice_no"], p, w)) is not None
            and r["first_no"] <= n <= r["last_no"]}
        for n in range(r["first_no"], r["last_no"] + 1):
            no = format_no(p, w, n)
            mine, theirs = used.get(no), n8.get(no)
            there = (_row_text(theirs["status"], theirs["pay_id"], theirs["customer_no"],
                               theirs["amount"]) if theirs else "")
            if mine is None:
                if n < r["next_no"]:
                    out.append(Difference(no, "taken, no record",
                                          f"range {r['id']} of {r['bank']} is past it", there))
                elif theirs is None:
                    out.append(Difference(no, "missing in N8", "U unused"))
                elif theirs["status"] != "U" or theirs["pay_id"]:
                    out.append(Difference(no, "N8 used it", "U unused", there))
                continue
            if mine["payment_id"] is None:  # skipped: N8 owned it when we came to it
                if theirs is None or theirs["status"] == "U":
                    out.append(Difference(no, "skipped, N8 unused",
                                          f"V {mine['void_reason']}", there or "missing"))
                continue
            status = "V" if mine["status"] == VOID else "I"
            ours = _row_text(status, mine["receipt_no"], mine["customer_no"], mine["amount"])
            if theirs is None:
                out.append(Difference(no, "missing in N8", ours))
            elif theirs["status"] != status:
                out.append(Difference(no, "status differs", ours, there))
            elif (theirs["pay_id"], theirs["customer_no"], theirs["amount"]) != (
                    mine["receipt_no"], mine["customer_no"], mine["amount"]):
                out.append(Difference(no, "payment differs", ours, there))
            if mine["status"] in ACTIVE and mine["payment_status"] not in ("POSTED", "PENDING"):
                out.append(Difference(no, "payment undone",
                                      f"{mine['status']} for {mine['payment_status']} payment",
                                      there))
    for row in sql.n8_rows_of_gateway_payments(tx):
        out.append(Difference(row["invoice_no"], "N8 only", "",
                              _row_text(row["status"], row["pay_id"], row["customer_no"],
                                        row["amount"])))
    for row in sql.unknown_invoice_numbers(tx):
        out.append(Difference(row["invoice_no"], "no stock range", f"stock {row['stock_id']}"))
    for pay in sql.payments_with_invoice_marks(tx):
        inv = sql.invoice_get(tx, pay["invoice_no"]) if pay["invoice_no"] else None
        printed = int(inv is not None and inv["status"] == PRINTED)
        if pay["invoice_no"] and (inv is None or inv["payment_id"] != pay["id"]
                                  or inv["status"] not in ACTIVE):
            out.append(Difference(pay["invoice_no"], "payment names it",
                                  f"receipt {pay['receipt_no']} but invoice is"
                                  f" {inv['status'] if inv else 'unknown'}"))
        elif bool(pay["invoice_printed"]) != bool(printed):
            out.append(Difference(pay["invoice_no"] or "-", "printed mark wrong",
                                  f"receipt {pay['receipt_no']} invoice_printed="
                                  f"{pay['invoice_printed']}"))
    return out
