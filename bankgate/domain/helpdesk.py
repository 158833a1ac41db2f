"""The help desk (客服查询): find a customer, see everything about them, find a payment.

What an operator at the utility needs when a customer calls: the customer by number
or name; their bills (open and paid, with the late fee owed today), payments (bank,
serial, channel, receipt, invoice, state) with what undid them (a bank's reversal, a
refund, an expiry, a cancel, a reconciliation 抹账 -- who and why), the prepaid
balance, the withholding agreement and what each batch file did for them, their
invoices; and a payment by receipt, by a bank's serial or by invoice number.

Read only: nothing here changes anything.  Each function takes the store, runs one
read-only transaction with :meth:`Store.run_sync` and returns plain dicts; the
console runs it on the store's pool with ``store.call(fn, store, ...)``, never on the
reactor thread.  Bad input raises :class:`HelpdeskError` naming the field, before
any SQL.  Names and addresses come back exactly as stored: escaping them is the
page's job (the console's templates autoescape).  Account numbers are masked.
"""

from __future__ import annotations

from datetime import date

from bankgate.canon.masking import mask_account
from bankgate.domain.ledger import late_fee
from bankgate.domain.withholding import RESULT_REASONS
from bankgate.store import helpdesk as sql
from bankgate.store.db import Store
from bankgate.store.tx import Tx

SEARCH_LIMIT = 50
MAX_SEARCH = 100  # the N8 name is 100 wide
LIST_LIMIT = 200  # bills, payments, invoices, batch lines on one card
#: widths of what an operator may type (bg_payment's columns)
WIDTHS = {"search": MAX_SEARCH, "customer_no": 32, "receipt": 20, "serial": 40,
          "bank": 32, "invoice": 20}
UNDO_KINDS = {"REVERSAL": "reversed by the bank (冲正)", "REFUND": "refunded (退单)",
              "EXPIRY": "expired unconfirmed", "CANCEL": "cancelled by the bank",
              "RECON": "reversed by reconciliation (抹账)",
              "OPERATOR": "reversed by an operator (冲正)"}


class HelpdeskError(ValueError):
    """A look-up refused before any SQL: ``field`` names the input that is wrong."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _text(field: str, value: str | None, *, required: bool = True) -> str | None:
    """``value`` stripped, checked for length and control characters."""
    value = (value or "").strip()
    if not value:
        if required:
            raise HelpdeskError(field, "required")
        return None
    if len(value) > WIDTHS[field]:
        raise HelpdeskError(field, f"at most {WIDTHS[field]} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise HelpdeskError(field, "control characters are not allowed")
    return value


def _limit(limit: int, most: int) -> int:
    if not 1 <= limit <= most:
        raise HelpdeskError("limit", f"expected 1 to {most}")
    return limit


# -- customers ------------------------------------------------------------------------


def find_customers(store: Store, text: str, limit: int = SEARCH_LIMIT) -> dict:
    """Customers whose number is or starts with ``text``, or whose name contains it
    (``%`` and ``_`` match themselves).  ``{"query", "customers", "more"}``: ``more``
    when there were more than ``limit``."""
    text = _text("search", text)
    limit = _limit(limit, 500)
    rows = store.run_sync(sql.find_customers, text, limit + 1, readonly=True)
    return {"query": text, "customers": [_customer(r) for r in rows[:limit]],
            "more": len(rows) > limit}


def _customer(row: dict) -> dict:
    out = dict(row)
    out["withholding_account"] = mask_account(row.get("withholding_account"))
    out["withholding_bank"] = (row.get("withholding_bank") or "").strip()
    return out


def customer_card(store: Store, customer_no: str, today: date, limit: int = LIST_LIMIT,
                  ) -> dict | None:
    """Everything about one customer, read in one transaction, or ``None`` if N8
    does not know them.  Lists are newest first and at most ``limit`` long each."""
    customer_no = _text("customer_no", customer_no)
    limit = _limit(limit, 1000)
    return store.run_sync(_card_tx, customer_no, today, limit, readonly=True)


def _card_tx(tx: Tx, customer_no: str, today: date, limit: int) -> dict | None:
    row = sql.customer(tx, customer_no)
    if row is None:
        return None
    cust = _customer(row)
    cust["prepaid"] = int(row["prepaid"] or 0)
    bills = [_bill(b, today) for b in sql.bills(tx, customer_no, limit)]
    payments = [_payment(p) for p in sql.payments_of_customer(tx, customer_no, limit)]
    lines = [_wh_line(x) for x in sql.withholding_lines(tx, customer_no, limit)]
    return {
        "customer": cust,
        "bills": bills,
        "payments": payments,
        "invoices": sql.invoices_of_customer(tx, customer_no, limit),
        "withholding": {"bank": cust["withholding_bank"],
                        "account": cust["withholding_account"],
                        "signed": bool(cust["withholding_bank"]
                                       and cust["withholding_account"]),
                        "lines": lines},
        "totals": {"outstanding": sum(b["outstanding"] for b in bills),
                   "late_fee_owed": sum(b["late_fee_owed"] for b in bills),
                   "open_bills": sum(1 for b in bills if b["state"] == "open"),
                   "prepaid": cust["prepaid"]},
        "limit": limit,
    }


def _bill(row: dict, today: date) -> dict:
    out = dict(row)
    for k in ("amount", "paid_amount", "late_fee_paid", "late_fee_ppm"):
        out[k] = int(row[k] or 0)
    outstanding = max(0, out["amount"] - out["paid_amount"])
    out["outstanding"] = outstanding
    out["late_fee_owed"] = late_fee(outstanding, row["due_date"], today, out["late_fee_ppm"],
                                    out["late_fee_paid"])
    out["state"] = "open" if outstanding > 0 else "paid"
    return out


def _payment(row: dict) -> dict:
    """A payment row with what undid it as one ``undo`` dict (or None)."""
    out = {k: v for k, v in row.items() if not k.startswith("undo_")}
    for k in ("amount", "principal", "late_fee", "prepaid_in"):
        out[k] = int(row[k] or 0)
    out["invoice_no"] = row["invoice_no"] or ""
    out["invoice_printed"] = bool(row["invoice_printed"])
    kind = row.get("undo_kind")
    out["undo"] = None if kind is None else {
        "kind": kind, "what": UNDO_KINDS.get(kind, kind.lower()),
        "serial": row["undo_serial"] or "", "trade_date": row["undo_trade_date"],
        "actor": row["undo_actor"] or "", "reason": row["undo_reason"] or "",
        "at": row["undo_at"],
    }
    return out


def _wh_line(row: dict) -> dict:
    out = dict(row)
    out["account_no"] = mask_account(row["account_no"])
    result = row["result"]
    if result is None:
        out["result_text"] = "waiting for the bank's result"
    else:
        code = int(result) if result.isdigit() else None
        out["result_text"] = RESULT_REASONS.get(code, f"result {result}")
    return out


# -- payments -------------------------------------------------------------------------


def find_payments(store: Store, *, receipt: str | None = None, serial: str | None = None,
                  bank: str | None = None, trade_date: date | None = None,
                  invoice: str | None = None, limit: int = SEARCH_LIMIT) -> list[dict]:
    """Payments by receipt number, by a bank's serial (with its bank and trade date
    the one payment of that key; the serial alone lists every bank's and date's), or
    by invoice number (also one the payment carried before it was voided).  Exactly
    one of receipt, serial and invoice."""
    receipt = _text("receipt", receipt, required=False)
    serial = _text("serial", serial, required=False)
    invoice = _text("invoice", invoice, required=False)
    bank = _text("bank", bank, required=False)
    limit = _limit(limit, 500)
    given = [name for name, v in (("receipt", receipt), ("serial", serial),
                                  ("invoice", invoice)) if v]
    if len(given) != 1:
        raise HelpdeskError("receipt" if not given else given[1],
                            "give exactly one of receipt, serial and invoice")
    if (bank or trade_date) and not serial:
        raise HelpdeskError("bank" if bank else "trade_date",
                            "a bank or trade date narrows a serial search only")
    if receipt:
        rows = store.run_sync(sql.payments_by_receipt, receipt, readonly=True)
    elif serial:
        rows = store.run_sync(sql.payments_by_serial, serial, bank, trade_date, limit,
                              readonly=True)
    else:
        rows = store.run_sync(sql.payments_by_invoice, invoice, limit, readonly=True)
    return [_payment(r) for r in rows]


def payment_detail(store: Store, payment_id: int) -> dict | None:
    """One payment with the bills it paid and its invoice numbers, or ``None``."""
    if not isinstance(payment_id, int) or payment_id < 1:
        raise HelpdeskError("payment", "expected a payment id")
    return store.run_sync(_detail_tx, payment_id, readonly=True)


def _detail_tx(tx: Tx, payment_id: int) -> dict | None:
    row = sql.payment_by_id(tx, payment_id)
    if row is None:
        return None
    out = _payment(row)
    out["allocations"] = [
        {**a, "principal": int(a["principal"]), "late_fee": int(a["late_fee"])}
        for a in sql.allocations(tx, payment_id)]
    out["invoices"] = sql.invoices_of_payment(tx, payment_id)
    return out
