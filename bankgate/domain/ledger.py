"""The ledger: every business rule of the gateway, in plain Python.

It takes canonical requests (:mod:`bankgate.canon.messages`), applies the rules,
and asks the store to do the SQL, each money-changing request in exactly one
transaction: the journal row keyed by (bank, trade date, serial), the
payment, its allocations, the bill updates and N8's own payment records
commit together or not at all.  A retry reads the first answer back from the
journal.  See ``docs/ledger.rst`` for the rules in prose.

:class:`Ledger` is synchronous (it runs on the store's thread pool);
:class:`LedgerService` is its asynchronous face for the protocol engine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from bankgate.canon import messages as m
from bankgate.canon.messages import Outcome
from bankgate.canon.money import MAX_FEN
from bankgate.store.db import Retry, Store, StoreUnavailable
from bankgate.store.tx import Duplicate, Tx

log = logging.getLogger("bankgate.ledger")

POLICIES = ("exact", "partial", "overpay", "any")
MAX_CUSTOMER_NO = 32
MAX_SERIAL = 40
PPM = 1_000_000


@dataclass(frozen=True)
class BankPolicy:
    """The business side of one configured bank."""

    name: str
    bank_code: str
    policy: str = "exact"  # exact | partial | overpay | any
    latest_only_reversal: bool = False
    two_phase: bool = False
    confirm_timeout: float = 300.0  # seconds a two-phase payment may stay pending


#: the utility's own counter (柜台收费), a pseudo-bank every ledger knows: it takes any
#: amount from 0.01 (an excess is kept as prepaid balance); no [[bank]] may take its name
COUNTER = BankPolicy("counter", "counter", policy="any")


def late_fee(outstanding: int, due_date: date, as_of: date, ppm: int, paid: int) -> int:
    """Late fee still owed on a bill as of ``as_of``.

    Accrues on the outstanding principal, ``ppm`` parts per million per day
    overdue, rounded half up to the fen; late fees already paid are deducted.
    """
    days = (as_of - due_date).days
    if days <= 0 or outstanding <= 0 or ppm <= 0:
        return 0
    accrued = (outstanding * ppm * days + PPM // 2) // PPM
    return max(0, accrued - paid)


@dataclass
class _Bill:
    bill_id: str
    fee_type: str
    period: str
    outstanding: int
    late: int


def _row(b: _Bill) -> dict:
    return {"bill_id": b.bill_id, "fee_type": b.fee_type, "period": b.period, "principal": 0,
            "late_fee": 0}


def allocate(bills: list[_Bill], amount: int) -> tuple[list[dict], int]:
    """Late fees first (oldest bill first), then principal oldest first.

    Returns the allocation rows and the excess left over.  A row also carries its
    bill's ``fee_type`` and ``period``, for the hooks (the store takes only its columns).
    """
    rows: dict[str, dict] = {}
    left = amount
    for b in bills:
        take = min(left, b.late)
        if take:
            rows.setdefault(b.bill_id, _row(b))
            rows[b.bill_id]["late_fee"] += take
            left -= take
    for b in bills:
        take = min(left, b.outstanding)
        if take:
            rows.setdefault(b.bill_id, _row(b))
            rows[b.bill_id]["principal"] += take
            left -= take
    order = {b.bill_id: i for i, b in enumerate(bills)}
    return sorted(rows.values(), key=lambda r: order[r["bill_id"]]), left


class Ledger:
    def __init__(
        self,
        store: Store,
        banks: dict[str, BankPolicy],
        now: Callable[[], datetime] = datetime.now,
        tariff_ttl: float = 60.0,
        hooks: list | None = None,
    ):
        self.store = store
        # Objects with after_post(tx, payment, allocations, now) -> dict | None
        # and after_undo(tx, payment, kind, now), run inside the payment's own
        # transaction (invoices: a number per payment, voided on a reversal).
        # allocations are allocate()'s rows: bill_id, fee_type, period, principal, late_fee.
        self.hooks = list(hooks or ())
        self.banks = banks
        self.now = now
        self._tariffs: dict | None = None
        self._tariffs_at = 0.0
        self.tariff_ttl = tariff_ttl
        self._closed: set[tuple[str, date]] = set()  # closed dates never reopen

    # -- helpers -----------------------------------------------------------------

    def bank(self, name: str) -> BankPolicy:
        try:
            return self.banks[name]
        except KeyError:
            if name == COUNTER.name:
                return COUNTER
            raise ValueError(f"unknown bank {name!r}") from None

    def _tariff_map(self, tx: Tx) -> dict:
        if self._tariffs is None or time.monotonic() - self._tariffs_at > self.tariff_ttl:
            self._tariffs = tx.tariffs()
            self._tariffs_at = time.monotonic()
        return self._tariffs

    def known_closed(self, bank: str, d: date) -> bool:
        """Closed as far as this process knows (dates never reopen)."""
        return (bank, d) in self._closed

    def mark_closed(self, bank: str, d: date) -> None:
        self._closed.add((bank, d))

    def _closed_date(self, tx: Tx, bank: str, d: date, known: bool | None = None,
                     lock: bool = False) -> bool:
        """Is the bank's date closed?  ``known``: the answer already read with
        the customer (``customer_context``), saving the round trip.  ``lock``:
        and no cut-off may count the date until this transaction ends (a reversal
        changes what it counts: ``Tx.is_closed``)."""
        if (bank, d) in self._closed:
            return True
        if known if known is not None else tx.is_closed(bank, d, lock=lock):
            self._closed.add((bank, d))
            return True
        return False

    def _dues(self, tx: Tx, customer: dict, as_of: date, lock: bool = False,
              rows: list[dict] | None = None) -> list[_Bill]:
        """The customer's open bills with their late fees as of ``as_of``; ``rows``:
        the bills already read with the customer (``query_context``, ``claim_payment``)."""
        tariffs = self._tariff_map(tx)
        out = []
        if rows is None:
            rows = tx.open_bills(customer["customer_no"], lock=lock)
        for b in rows:
            t = tariffs.get((b["fee_type"], customer["customer_class"]))
            ppm = t["late_fee_ppm"] if t else 0
            outstanding = b["amount"] - b["paid_amount"]
            out.append(
                _Bill(
                    b["bill_id"], b["fee_type"], b["period"], outstanding,
                    late_fee(outstanding, b["due_date"], as_of, ppm, b["late_fee_paid"]),
                )
            )
        return out

    @staticmethod
    def _bad_identifier(text: str | None, limit: int) -> bool:
        if text is None:
            return False
        if not text or len(text) > limit:
            return True
        try:
            text.encode("gbk")
        except UnicodeEncodeError:
            return True
        return not text.isprintable()

    # -- dispatch ------------------------------------------------------------------

    def handle(self, req):
        """Run any canonical request synchronously; returns its result."""
        if isinstance(req, m.QueryRequest):
            return self.query(req)
        if isinstance(req, m.PaymentRequest):
            return self.pay(req)
        if isinstance(req, m.ReversalRequest):
            return self.reverse(req)
        if isinstance(req, m.StatusRequest):
            return self.status(req)
        if isinstance(req, m.ConfirmRequest):
            return self.confirm(req)
        if isinstance(req, m.CancelRequest):
            return self.cancel(req)
        if isinstance(req, m.CutoffRequest):
            return self.cutoff(req.origin.bank, req.settle_date, reason="bank")
        if isinstance(req, m.StatementNotice):
            return self.statement_notice(req)
        if isinstance(req, m.EchoRequest):
            return m.SimpleResult(Outcome.OK)
        raise TypeError(f"not a canonical request: {type(req).__name__}")

    # -- query -----------------------------------------------------------------------

    def query(self, req: m.QueryRequest) -> m.QueryResult:
        if self._bad_identifier(req.customer_no, MAX_CUSTOMER_NO):
            return m.QueryResult(Outcome.FORMAT_ERROR)
        return self.store.run_sync(self._query_tx, req, readonly=True)

    def _query_tx(self, tx: Tx, req: m.QueryRequest) -> m.QueryResult:
        o = req.origin
        cust, open_rows = tx.query_context(req.customer_no, o.bank, o.trade_date)
        if cust is None:
            return m.QueryResult(Outcome.NOT_FOUND, customer_no=req.customer_no)
        base = dict(
            customer_no=cust["customer_no"], name=cust["name"], address=cust["address"] or "",
            customer_class=cust["customer_class"],
        )
        if cust["status"] != "A":
            return m.QueryResult(Outcome.ACCOUNT_LOCKED, **base)
        bills = self._dues(tx, cust, req.origin.trade_date, rows=open_rows)
        total_due = sum(b.outstanding for b in bills)
        late = sum(b.late for b in bills)
        prepaid = cust["bg_prepaid"]
        if total_due + late == 0:
            return m.QueryResult(Outcome.NOTHING_DUE, prepaid_balance=prepaid, **base)
        return m.QueryResult(
            Outcome.OK,
            bills=tuple(m.BillDue(b.bill_id, b.fee_type, b.period, b.outstanding, b.late)
                        for b in bills),
            total_due=total_due, late_fee=late, prepaid_balance=prepaid, **base,
        )

    # -- payment -------------------------------------------------------------------------

    def pay(self, req: m.PaymentRequest, *, source: str = "online", run_id: int | None = None,
            actor: str = "", after_close: bool = False,
            policy: str | None = None, reason: str = "") -> m.PaymentResult:
        """Post a payment.  ``source``/``run_id``/``actor`` mark payments not made
        by a bank online (reconciliation 补销, withholding, an operator at the
        counter, whose ``reason`` goes into the audit row);
        ``after_close`` lets those post on a closed date and ``policy``
        overrides the bank's (reconciliation posts what the bank collected)."""
        self.bank(req.origin.bank)
        if self._bad_identifier(req.customer_no, MAX_CUSTOMER_NO) or self._bad_identifier(
            req.serial, MAX_SERIAL
        ) or any(self._bad_identifier(b, MAX_CUSTOMER_NO) for b in req.bill_ids):
            return m.PaymentResult(Outcome.FORMAT_ERROR, customer_no=req.customer_no)
        for _ in range(3):
            try:
                return self.store.run_sync(self._pay_tx, req, source, run_id, actor,
                                           after_close, policy, reason)
            except Duplicate:
                result = self.store.run_sync(self._repeat_tx, req, "PAY", readonly=True)
                if result is not None:
                    return result
        raise StoreUnavailable("journal key kept changing under a repeat")

    def _repeat_tx(self, tx: Tx, req, kind: str):
        o = req.origin
        row = tx.journal_get(o.bank, o.trade_date, req.serial)
        if row is None:  # the claim that beat ours rolled back: post afresh
            return None
        # N8 apart: its writes of the first answer must be committed before it is given
        tx.finish_n8(row["id"])
        result_type = _RESULT_OF_KIND[kind]
        if row["kind"] == "BLOCK":
            if kind == "PAY":
                return m.PaymentResult(Outcome.REVERSED_FIRST, customer_no=req.customer_no)
            return result_type(Outcome.DUPLICATE_MISMATCH)
        if row["kind"] != kind or (row["content"] or "") != req.content:
            return result_type(Outcome.DUPLICATE_MISMATCH)
        fields = row["result"]
        if fields.get("expires_at"):  # JSON keeps a prepay's deadline as ISO text
            fields["expires_at"] = datetime.fromisoformat(fields["expires_at"])
        return result_type(Outcome(row["outcome"]), retry=True, **fields)

    def _pay_tx(self, tx: Tx, req: m.PaymentRequest, source: str = "online", run_id=None,
                actor: str = "", after_close: bool = False, policy_name: str | None = None,
                reason: str = ""):
        o = req.origin
        policy = self.bank(o.bank)
        now = self.now()
        # the journal key claimed, the customer read and its open bills locked (read
        # even when a check below refuses the payment)
        jid, cust, open_rows = tx.claim_payment(o.bank, o.trade_date, req.serial, "PAY",
                                                req.content, now, req.customer_no)

        def answer(outcome: Outcome, expires_at=None,
                   **fields) -> tuple[dict, m.PaymentResult]:
            """The answer, and the journal's copy of it (what a repeat reads back)."""
            fields.setdefault("customer_no", req.customer_no)
            journaled = dict(fields)
            if expires_at is not None:
                journaled["expires_at"] = expires_at.isoformat()
            return journaled, m.PaymentResult(outcome, expires_at=expires_at, **fields)

        def finish(outcome: Outcome, payment_id=None, expires_at=None,
                   **fields) -> m.PaymentResult:
            journaled, result = answer(outcome, expires_at, **fields)
            tx.journal_finish(jid, outcome.value, journaled, payment_id)
            return result

        known = cust["bg_closed"] if cust is not None else None
        if not after_close and self._closed_date(tx, o.bank, o.trade_date, known):
            return finish(Outcome.DATE_CLOSED)
        if req.amount <= 0 or req.amount > MAX_FEN:
            return finish(Outcome.AMOUNT_REJECTED)
        if cust is None:
            return finish(Outcome.NOT_FOUND)
        if cust["status"] != "A":
            return finish(Outcome.ACCOUNT_LOCKED)
        bills = self._dues(tx, cust, o.trade_date, rows=open_rows)
        total = sum(b.outstanding + b.late for b in bills)
        if total == 0:
            return finish(Outcome.NOTHING_DUE)
        if req.bill_ids:
            by_id = {b.bill_id: b for b in bills}
            if len(set(req.bill_ids)) != len(req.bill_ids) or not all(
                i in by_id for i in req.bill_ids
            ):
                return finish(Outcome.AMOUNT_REJECTED)
            named = [b for b in bills if b.bill_id in set(req.bill_ids)]
            if req.amount != sum(b.outstanding + b.late for b in named):
                return finish(Outcome.AMOUNT_REJECTED)
            rows, excess = allocate(named, req.amount)
        else:
            p = policy_name or policy.policy
            if req.amount == total:
                pass
            elif req.amount < total and p in ("partial", "any"):
                pass
            elif req.amount > total and p in ("overpay", "any"):
                pass
            else:
                return finish(Outcome.AMOUNT_REJECTED)
            rows, excess = allocate(bills, req.amount)
        receipt_no = f"{o.trade_date:%Y%m%d}{jid:012d}"
        status = "PENDING" if req.two_phase or policy.two_phase else "POSTED"
        expires_at = (now + timedelta(seconds=policy.confirm_timeout)
                      if status == "PENDING" else None)
        principal = sum(r["principal"] for r in rows)
        late = sum(r["late_fee"] for r in rows)
        payment = dict(
            bank=o.bank, trade_date=o.trade_date, serial=req.serial, trade_time=o.trade_time,
            customer_no=req.customer_no, amount=req.amount, principal=principal, late_fee=late,
            prepaid_in=excess, channel=o.channel, branch=o.branch[:20], teller=o.teller[:20],
            pan_masked=req.pan_masked, receipt_no=receipt_no, status=status, source=source,
            run_id=run_id, created_at=now, expires_at=expires_at,
        )
        n8 = dict(pay_id=receipt_no, customer_no=req.customer_no, amount=req.amount,
                  pay_date=o.trade_date, bank_code=policy.bank_code, bank_serial=req.serial,
                  channel=o.channel, status="P" if status == "PENDING" else "N", now=now)
        fields = dict(amount=req.amount, receipt_no=receipt_no,
                      remaining_due=total - (req.amount - excess))
        # the payment, its allocations onto the bills, the excess onto the prepaid
        # balance and N8's payment records: one step
        pid, invoice_no, done = None, "", None
        if not self.hooks:  # nothing can change the answer now: journal it with the payment
            journaled, done = answer(Outcome.OK, expires_at, invoice_no="", **fields)
            tx.post_payment(payment, rows, n8, (jid, Outcome.OK.value, journaled))
        else:
            pid = tx.post_payment(payment, rows, n8)
            posted = {"id": pid, "bank": o.bank, "trade_date": o.trade_date, "serial": req.serial,
                      "customer_no": req.customer_no, "amount": req.amount,
                      "receipt_no": receipt_no, "source": source, "status": status}
            for hook in self.hooks:
                extra = hook.after_post(tx, posted, rows, now) or {}
                invoice_no = extra.get("invoice_no", invoice_no)
        if source != "online":
            tx.audit(now, actor or source, "counter-pay" if o.bank == COUNTER.name else "post",
                     receipt_no,
                     {"bank": o.bank, "serial": req.serial, "amount": req.amount,
                      "run_id": run_id, "customer_no": req.customer_no, "reason": reason,
                      "due_before": total, "due_after": total - (req.amount - excess),
                      "prepaid_in": excess})
        if done is not None:
            return done
        return finish(Outcome.OK, pid, expires_at, invoice_no=invoice_no, **fields)

    # -- reversal ---------------------------------------------------------------------------

    def reverse(self, req: m.ReversalRequest) -> m.ReversalResult:
        self.bank(req.origin.bank)
        if (
            self._bad_identifier(req.orig_serial, MAX_SERIAL)
            or self._bad_identifier(req.serial, MAX_SERIAL)
            or self._bad_identifier(req.customer_no, MAX_CUSTOMER_NO)
        ):
            return m.ReversalResult(Outcome.FORMAT_ERROR, orig_serial=req.orig_serial[:MAX_SERIAL])
        for _ in range(3):
            try:
                return self.store.run_sync(self._reverse_tx, req)
            except Duplicate:
                result = self.store.run_sync(self._repeat_tx, req, "REV", readonly=True)
                if result is not None:
                    return result
        raise StoreUnavailable("journal key kept changing under a repeat")

    def _reverse_tx(self, tx: Tx, req: m.ReversalRequest) -> m.ReversalResult:
        o = req.origin
        policy = self.bank(o.bank)
        now = self.now()
        jid = None
        if req.serial is not None:
            jid = tx.claim(o.bank, o.trade_date, req.serial, "REV", req.content, now)

        def finish(outcome: Outcome, message: str = "", **fields) -> m.ReversalResult:
            fields.setdefault("customer_no", req.customer_no or "")
            fields.setdefault("orig_serial", req.orig_serial)
            fields.setdefault("amount", req.amount)
            if jid is not None:
                tx.journal_finish(jid, outcome.value, fields)
            return m.ReversalResult(outcome, message=message, **fields)

        if self._closed_date(tx, o.bank, o.trade_date, lock=True):
            if jid is None:
                # reversals without a key of their own (ISO 8583) repeat by the
                # original's state: a repeat of one that was done answers as it did
                p = tx.payment_by_key(o.bank, o.trade_date, req.orig_serial)
                if p is not None and p["status"] == "REVERSED" and p["amount"] == req.amount:
                    return finish(Outcome.ALREADY_REVERSED, customer_no=p["customer_no"])
            return finish(Outcome.DATE_CLOSED, f"trade date {o.trade_date:%Y-%m-%d} is closed")
        p = tx.payment_by_key(o.bank, o.trade_date, req.orig_serial, lock=True)
        if p is None:
            if tx.journal_get(o.bank, o.trade_date, req.orig_serial) is None:
                if not tx.block(o.bank, o.trade_date, req.orig_serial, now):
                    raise Retry()  # its payment is being posted right now: look again
            return finish(Outcome.ORIGINAL_NOT_FOUND,
                          f"no payment {req.orig_serial} of {o.trade_date:%Y-%m-%d}")
        if (req.customer_no is not None and p["customer_no"] != req.customer_no) or (
            p["amount"] != req.amount
        ):
            return finish(Outcome.AMOUNT_REJECTED,
                          f"customer or amount differs from payment {p['receipt_no']}")
        if p["status"] == "PENDING" and self._past_deadline(p, now):
            p = self._expire(tx, p, now)  # as the sweeper would have: it is expired
        if req.confirmed_only and p["status"] != "POSTED":
            return finish(Outcome.STATE_NOT_ALLOWED,
                          f"payment {p['receipt_no']} is {p['status'].lower()}"
                          + (": cancel it, it is not confirmed" if p["status"] == "PENDING"
                             else ""),
                          customer_no=p["customer_no"])
        if p["status"] not in ("POSTED", "PENDING"):
            return finish(Outcome.ALREADY_REVERSED,
                          f"payment {p['receipt_no']} is {p['status'].lower()}",
                          customer_no=p["customer_no"])
        if p["invoice_printed"]:
            return finish(Outcome.REVERSAL_NOT_ALLOWED,
                          f"payment {p['receipt_no']}: its invoice {p['invoice_no'] or ''}"
                          " was printed; void the invoice first")
        if (req.latest_only or policy.latest_only_reversal) and (
            tx.latest_standing_payment_id(p["customer_no"]) != p["id"]
        ):
            return finish(Outcome.REVERSAL_NOT_ALLOWED,
                          f"payment {p['receipt_no']} is not the customer's latest payment"
                          " (latest-only reversal)")
        outcome = self._undo(tx, p, "REVERSAL", "REVERSED", now, serial=req.serial)
        return finish(outcome, customer_no=p["customer_no"])

    def _undo(self, tx: Tx, p: dict, kind: str, status: str, now: datetime, *,
              serial: str | None = None, actor: str = "", reason: str = "",
              run_id: int | None = None) -> Outcome:
        """Take a payment back: bills, late fees and prepaid balance exactly as before."""
        if p["prepaid_in"]:
            if tx.prepaid_get(p["customer_no"], lock=True) < p["prepaid_in"]:
                return Outcome.REVERSAL_NOT_ALLOWED  # the excess was drawn on since
            tx.prepaid_add(p["customer_no"], -p["prepaid_in"], now)
        tx.n8_undo(p["receipt_no"], tx.allocations(p["id"]), now)
        tx.payment_set_status(p["id"], status, now)
        tx.undo_insert(
            payment_id=p["id"], kind=kind, bank=p["bank"], trade_date=p["trade_date"],
            serial=serial, actor=actor, reason=reason[:200], run_id=run_id, created_at=now,
        )  # the reason whole is in the audit row; bg_undo keeps 200 characters
        for hook in self.hooks:
            hook.after_undo(tx, p, kind, now)
        return Outcome.OK

    def reverse_local(self, bank: str, trade_date: date, serial: str, *, run_id: int | None,
                      actor: str, reason: str) -> m.SimpleResult:
        """Reverse a payment at the utility (抹账), also on a closed date:
        reconciliation found it missing from the bank's statement."""
        return self.store.run_sync(self._reverse_local_tx, bank, trade_date, serial, run_id,
                                   actor, reason)

    def _reverse_local_tx(self, tx: Tx, bank, trade_date, serial, run_id, actor, reason):
        p = tx.payment_by_key(bank, trade_date, serial, lock=True)
        if p is None:
            return m.SimpleResult(Outcome.ORIGINAL_NOT_FOUND, f"no payment {serial}")
        if p["status"] not in ("POSTED", "PENDING"):
            return m.SimpleResult(Outcome.ALREADY_REVERSED, f"payment is {p['status'].lower()}")
        now = self.now()
        outcome = self._undo(tx, p, "RECON", "REVERSED", now, actor=actor, reason=reason,
                             run_id=run_id)
        if outcome is not Outcome.OK:
            return m.SimpleResult(outcome, "the prepaid excess of this payment was drawn on")
        tx.audit(now, actor, "reverse-local", p["receipt_no"],
                 {"bank": bank, "serial": serial, "run_id": run_id, "reason": reason})
        return m.SimpleResult(Outcome.OK, p["receipt_no"], {"payment_id": p["id"]})

    # -- status, two-phase (prepay, confirm, cancel), expiry ---------------------------

    def status(self, req: m.StatusRequest) -> m.StatusResult:
        if self._bad_identifier(req.orig_serial, MAX_SERIAL):
            return m.StatusResult(Outcome.OK)  # unknown serial: status "not found"
        return self.store.run_sync(self._status_tx, req, readonly=True)

    def _status_tx(self, tx: Tx, req: m.StatusRequest) -> m.StatusResult:
        p = tx.payment_by_key(req.origin.bank, req.orig_date, req.orig_serial)
        if p is None:
            return m.StatusResult(Outcome.OK, m.PaymentStatus.NOT_FOUND)
        status = p["status"]
        if status == "PENDING" and self._past_deadline(p, self.now()):
            status = "EXPIRED"  # no confirm can make it final any more
        return m.StatusResult(
            Outcome.OK, m.PaymentStatus(status), p["amount"], p["receipt_no"],
            p["customer_no"],
        )

    @staticmethod
    def _past_deadline(p: dict, now: datetime) -> bool:
        """A pending payment is expired from its deadline on, swept or not."""
        return p["expires_at"] is not None and now >= p["expires_at"]

    def _expire(self, tx: Tx, p: dict, now: datetime) -> dict:
        """Undo a pending payment whose confirmation never came (the sweeper,
        or a confirm / cancel / reversal that finds it past its deadline);
        returns the payment as it now stands."""
        if self._undo(tx, p, "EXPIRY", "EXPIRED", now, actor="system",
                      reason="not confirmed") is not Outcome.OK:
            return p  # its prepaid excess was drawn on: it stays, status says expired
        tx.audit(now, "system", "expire", p["receipt_no"], {"bank": p["bank"]})
        return {**p, "status": "EXPIRED", "undone_at": now}

    def confirm(self, req: m.ConfirmRequest) -> m.ConfirmResult:
        """Make a pending (two-phase) payment final; see ``docs/ledger.rst``."""
        return self._settle(req, "CONFIRM")

    def cancel(self, req: m.CancelRequest) -> m.CancelResult:
        """Undo a pending (two-phase) payment before it is confirmed."""
        return self._settle(req, "CANCEL")

    def _settle(self, req, kind: str):
        result_type = _RESULT_OF_KIND[kind]
        self.bank(req.origin.bank)
        if self._bad_identifier(req.orig_serial, MAX_SERIAL) or self._bad_identifier(
            req.serial, MAX_SERIAL
        ):
            return result_type(Outcome.FORMAT_ERROR, message="serial empty, too long or"
                               " not printable")
        for _ in range(3):
            try:
                return self.store.run_sync(self._settle_tx, req, kind)
            except Duplicate:
                result = self.store.run_sync(self._repeat_tx, req, kind, readonly=True)
                if result is not None:
                    return result
        raise StoreUnavailable("journal key kept changing under a repeat")

    def _settle_tx(self, tx: Tx, req, kind: str):
        """Confirm or cancel, in one transaction with its journal row (when the
        request has a serial of its own)."""
        o = req.origin
        now = self.now()
        jid = None
        if req.serial is not None:
            jid = tx.claim(o.bank, o.trade_date, req.serial, kind, req.content, now)
        result_type = _RESULT_OF_KIND[kind]

        def finish(outcome: Outcome, message: str = "", payment_id=None, **fields):
            if jid is not None:
                tx.journal_finish(jid, outcome.value, fields, payment_id)
            return result_type(outcome, message=message, **fields)

        p = tx.payment_by_key(o.bank, req.orig_date, req.orig_serial, lock=True)
        if p is None:
            return finish(Outcome.ORIGINAL_NOT_FOUND,
                          f"no payment {req.orig_serial} of {req.orig_date:%Y-%m-%d}")
        if req.order_no and req.order_no != p["receipt_no"]:
            return finish(Outcome.ORIGINAL_NOT_FOUND,
                          f"payment {req.orig_serial} of {req.orig_date:%Y-%m-%d} has another"
                          " order number")
        said = {"customer_no": p["customer_no"], "amount": p["amount"],
                "receipt_no": p["receipt_no"]}
        pid = p["id"]
        if p["status"] == "PENDING" and self._past_deadline(p, now):
            p = self._expire(tx, p, now)
            if p["status"] == "PENDING":  # could not be undone: still past its deadline
                p = {**p, "status": "EXPIRED"}
        status = p["status"]
        if status == "EXPIRED":
            return finish(Outcome.EXPIRED, f"payment {p['receipt_no']} expired unconfirmed",
                          pid, **said)
        if kind == "CONFIRM":
            if status == "PENDING":
                tx.payment_set_status(pid, "POSTED", expires_at=None)
                tx.n8_confirm(p["receipt_no"], now)
                status = "POSTED"
            if status == "POSTED":  # a confirm repeated under any serial answers the same
                return finish(Outcome.OK, "", pid, invoice_no=p["invoice_no"] or "", **said)
            return finish(Outcome.STATE_NOT_ALLOWED,
                          f"payment {p['receipt_no']} is {status.lower()}", pid, **said)
        if status == "PENDING":
            outcome = self._undo(tx, p, "CANCEL", "CANCELLED", now, serial=req.serial)
            if outcome is not Outcome.OK:
                return finish(Outcome.STATE_NOT_ALLOWED, f"payment {p['receipt_no']}: its"
                              " prepaid excess was drawn on since", pid, **said)
            status = "CANCELLED"
        if status == "CANCELLED":
            return finish(Outcome.OK, "", pid, **said)
        return finish(Outcome.STATE_NOT_ALLOWED,
                      f"payment {p['receipt_no']} is {status.lower()}"
                      + (": reverse it, it is confirmed" if status == "POSTED" else ""),
                      pid, **said)

    def expire_pending(self) -> int:
        """Undo two-phase payments whose confirmation never came; returns how many."""
        ids = self.store.run_sync(lambda tx: tx.expired_pending(self.now()))
        done = 0
        for pid in ids:
            done += self.store.run_sync(self._expire_tx, pid)
        return done

    def _expire_tx(self, tx: Tx, pid: int) -> int:
        p = tx.payment_by_id(pid, lock=True)
        if p is None or p["status"] != "PENDING":
            return 0
        return int(self._expire(tx, p, self.now())["status"] == "EXPIRED")

    # -- refund (退单), by an operator on a later date ------------------------------------

    def refund(self, receipt_no: str, reason: str, actor: str, *,
               check: bool = False) -> m.SimpleResult:
        """``check``: only say whether it may be refunded (OK or the refusal),
        changing nothing -- a confirmation page's look."""
        if not reason.strip():
            return m.SimpleResult(Outcome.FORMAT_ERROR, "a refund needs a reason")
        return self.store.run_sync(self._refund_tx, receipt_no, reason, actor, check,
                                   readonly=check)

    def _refund_tx(self, tx: Tx, receipt_no: str, reason: str, actor: str,
                   check: bool = False) -> m.SimpleResult:
        p = tx.payment_by_receipt(receipt_no)
        if p is None:
            return m.SimpleResult(Outcome.ORIGINAL_NOT_FOUND, f"no payment {receipt_no}")
        p = tx.payment_by_id(p["id"], lock=not check)
        if p["status"] != "POSTED":
            return m.SimpleResult(Outcome.ALREADY_REVERSED, f"payment is {p['status'].lower()}")
        if p["invoice_printed"]:
            return m.SimpleResult(Outcome.REVERSAL_NOT_ALLOWED, "invoice printed: void it first")
        if check:
            return self._undo_check(tx, p, f"may refund {receipt_no}")
        now = self.now()
        outcome = self._undo(tx, p, "REFUND", "REFUNDED", now, actor=actor, reason=reason)
        if outcome is Outcome.OK:
            tx.audit(now, actor, "refund", receipt_no,
                     {"reason": reason, "amount": p["amount"], "bank": p["bank"],
                      "customer_no": p["customer_no"], "before": "POSTED",
                      "after": "REFUNDED"})
            return m.SimpleResult(Outcome.OK, f"refunded {receipt_no}")
        return m.SimpleResult(outcome, "the prepaid excess of this payment was drawn on")

    @staticmethod
    def _undo_check(tx: Tx, p: dict, ok: str) -> m.SimpleResult:
        """What :meth:`_undo` would say of ``p``, without undoing it."""
        if p["prepaid_in"] and tx.prepaid_get(p["customer_no"]) < p["prepaid_in"]:
            return m.SimpleResult(Outcome.REVERSAL_NOT_ALLOWED,
                                  "the prepaid excess of this payment was drawn on")
        return m.SimpleResult(Outcome.OK, ok)

    # -- reversal by an operator (冲正 the bank asked for by telephone) -------------------

    def reverse_by_operator(self, receipt_no: str, reason: str, actor: str, *,
                            check: bool = False) -> m.SimpleResult:
        """Reverse a posted payment on an operator's word (the bank asked by
        telephone; its reversal message never came), recorded as kind OPERATOR
        with the actor and reason, audited as ``reverse``.  Only while its trade
        date is open (the counter's: the same day) and its invoice unprinted:
        later it is a refund.  ``check``: only say whether it may, changing nothing."""
        if not reason.strip():
            return m.SimpleResult(Outcome.FORMAT_ERROR, "a reversal needs a reason")
        return self.store.run_sync(self._reverse_by_operator_tx, receipt_no, reason, actor,
                                   check, readonly=check)

    def _reverse_by_operator_tx(self, tx: Tx, receipt_no: str, reason: str, actor: str,
                                check: bool) -> m.SimpleResult:
        p = tx.payment_by_receipt(receipt_no)
        if p is None:
            return m.SimpleResult(Outcome.ORIGINAL_NOT_FOUND, f"no payment {receipt_no}")
        p = tx.payment_by_id(p["id"], lock=not check)
        if p["status"] == "PENDING":
            return m.SimpleResult(Outcome.STATE_NOT_ALLOWED, "payment is pending (two-phase,"
                                  " not confirmed): the bank cancels it, or it expires")
        if p["status"] != "POSTED":
            return m.SimpleResult(Outcome.ALREADY_REVERSED, f"payment is {p['status'].lower()}")
        now = self.now()
        d = p["trade_date"]
        if self._closed_date(tx, p["bank"], d, lock=not check) or (p["bank"] == COUNTER.name
                                                   and d < now.date()):
            return m.SimpleResult(Outcome.DATE_CLOSED, f"trade date {d:%Y-%m-%d} of"
                                  f" {p['bank']} is closed: refund it instead")
        if p["invoice_printed"]:
            return m.SimpleResult(Outcome.REVERSAL_NOT_ALLOWED,
                                  f"its invoice {p['invoice_no'] or ''} was printed: void the"
                                  " invoice first")
        if check:
            return self._undo_check(tx, p, f"may reverse {receipt_no}")
        outcome = self._undo(tx, p, "OPERATOR", "REVERSED", now, actor=actor, reason=reason)
        if outcome is not Outcome.OK:
            return m.SimpleResult(outcome, "the prepaid excess of this payment was drawn on")
        tx.audit(now, actor, "reverse", receipt_no,
                 {"reason": reason, "amount": p["amount"], "bank": p["bank"],
                  "serial": p["serial"], "trade_date": f"{d:%Y-%m-%d}",
                  "customer_no": p["customer_no"], "before": "POSTED", "after": "REVERSED"})
        return m.SimpleResult(Outcome.OK, f"reversed {receipt_no}")

    # -- cut-off -------------------------------------------------------------------------

    def cutoff(self, bank: str, d: date, reason: str = "scheduled",
               actor: str = "system") -> m.CutoffResult:
        self.bank(bank)
        return self.store.run_sync(self._cutoff_tx, bank, d, reason, actor)

    def _cutoff_tx(self, tx: Tx, bank: str, d: date, reason: str, actor: str):
        # closed first: this waits for the payments and reversals of the date still
        # in flight (they hold its row), so the totals below count what they posted;
        # those arriving from now on wait for this commit and are refused
        tx.close_day(bank, d)
        row = tx.cutoff_get(bank, d)
        if row is None:
            count, total = tx.standing_totals(bank, d)
            now = self.now()
            if not tx.cutoff_insert(bank, d, reason, now, count, total):
                raise Retry()  # closed by another node meanwhile
            tx.audit(now, actor, "cutoff", f"{bank} {d:%Y-%m-%d}",
                     {"reason": reason, "count": count, "total": total})
            row = {"count": count, "total": total}
        self._closed.add((bank, d))
        return m.CutoffResult(Outcome.OK, d, row["count"], row["total"])

    def statement_notice(self, req: m.StatementNotice) -> m.SimpleResult:
        self.cutoff(req.origin.bank, req.settle_date, reason="notice")
        self.store.run_sync(
            lambda tx: tx.audit(self.now(), req.origin.bank, "statement-notice",
                                req.file_name[:100],
                                {"settle_date": req.settle_date.isoformat(),
                                 "records": req.record_count, "total": req.total_amount})
        )
        return m.SimpleResult(Outcome.OK)


class LedgerService:
    """The ledger's asynchronous face: ``handle(request) -> Deferred[result]``.

    Runs the synchronous ledger on the store's thread pool.  A database that
    is down or keeps failing gives the request's result type with
    ``Outcome.BUSY``: nothing was recorded, the bank may send it again.
    """

    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        self.store = ledger.store
        self.listeners: list[Callable] = []  # called with (request, result)

    def handle(self, req):
        d = self.store.call(self.ledger.handle, req)
        d.addErrback(self._failed, req)
        d.addCallback(self._notify, req)
        return d

    def _notify(self, result, req):
        for f in self.listeners:
            try:
                f(req, result)
            except Exception:
                log.exception("listener failed")
        return result

    @staticmethod
    def _failed(failure, req):
        busy = failure.check(StoreUnavailable) is not None
        if busy:
            log.warning("database unavailable: %s", failure.getErrorMessage())
        else:
            log.error("ledger failed on %s: %s", type(req).__name__, failure.getTraceback())
        return busy_result(req, Outcome.BUSY if busy else Outcome.ERROR)


_RESULT_OF_KIND = {
    "PAY": m.PaymentResult,
    "REV": m.ReversalResult,
    "CONFIRM": m.ConfirmResult,
    "CANCEL": m.CancelResult,
}


def busy_result(req, outcome: Outcome = Outcome.BUSY):
    kind = {
        m.QueryRequest: m.QueryResult,
        m.PaymentRequest: m.PaymentResult,
        m.ReversalRequest: m.ReversalResult,
        m.StatusRequest: m.StatusResult,
        m.ConfirmRequest: m.ConfirmResult,
        m.CancelRequest: m.CancelResult,
        m.CutoffRequest: m.CutoffResult,
    }.get(type(req), m.SimpleResult)
    return kind(outcome)

