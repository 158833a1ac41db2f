"""A hand-built day for the help desk and overview tests, whose figures are known.

The payments go through the real Ledger (with the invoice hook), so bills,
allocations, undo rows, prepaid balances and invoice numbers are what the gateway
writes; the withholding batches and reconciliation runs are inserted by hand (the
help desk and the overview only read them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from conftest import TODAY
from invoice_helpers import setup

from bankgate.app.options import invoice_settings
from bankgate.canon import messages as m
from bankgate.canon.messages import Outcome
from bankgate.store import model

YESTERDAY = TODAY - timedelta(days=1)
SCRIPT = "<script>alert(1)</script>"
ADDRESS_HTML = '<img src=x onerror="alert(2)">'
ACCOUNT = "6222021234567890123"


def pay(ledger, bank: str, serial: str, customer: str, amount: int, channel: str = "01"):
    origin = m.Origin(bank=bank, trade_date=TODAY, trade_time="093000", branch="210100001",
                      teller="T0000012", channel=channel)
    req = m.PaymentRequest(origin, serial, customer, amount,
                           content=m.fingerprint("PAY", customer, amount, ""))
    r = ledger.pay(req)
    assert r.outcome in (Outcome.OK,), (serial, r)
    return r


@dataclass
class Day:
    store: object
    ledger: object
    invoices: object
    settings: dict
    receipts: dict = field(default_factory=dict)
    invoice_nos: dict = field(default_factory=dict)


def extra_customers(store) -> None:
    n8 = store.n8
    with store.n8_engine.begin() as c:
        c.execute(n8["customer"].insert(), [
            {"customer_no": "100000500", "name": "50%_off!折扣店", "address": "和平区1号",
             "customer_class": "R", "status": "A"},
            {"customer_no": "100000501", "name": "50x offa", "address": "和平区2号",
             "customer_class": "R", "status": "A"},
            {"customer_no": "100000502", "name": SCRIPT, "address": ADDRESS_HTML,
             "customer_class": "R", "status": "A"},
        ])
        c.execute(n8["bill"].insert(), [
            {"bill_id": f"E{no}", "customer_no": no, "fee_type": "02", "period": "2026-11",
             "amount": amount, "paid_amount": 0, "late_fee_paid": 0,
             "due_date": date(2026, 12, 31)}
            for no, amount in (("100000500", 10000), ("100000501", 20000),
                               ("100000502", 10000))])
        c.execute(n8["customer"].update()
                  .where(n8["customer"].c.customer_no == "100000200")
                  .values(withholding_bank="103210", withholding_account=ACCOUNT))


def withholding_batches(store) -> None:
    """Two batch files for 100000200 at bank ``partial``: yesterday's came back
    "insufficient funds", today's waits for its result."""
    now = datetime.combine(TODAY, datetime.min.time())
    with store.engine.begin() as c:
        for seq, (d, status, result) in enumerate(
                ((YESTERDAY, "PROCESSED", "1"), (TODAY, "GENERATED", None)), start=1):
            bid = c.execute(model.wh_batch.insert().values(
                bank="partial", deduct_date=d, seq=seq, file_name=f"10321020261127{seq:02d}.PK",
                status=status, record_count=1, total=1000000, generated_at=now,
                result_at=now if result else None)).inserted_primary_key[0]
            c.execute(model.wh_line.insert().values(
                batch_id=bid, line_no=1, bill_id="B0010", customer_no="100000200",
                account_no=ACCOUNT, amount=1000000, late_fee=0, total=1000000, result=result))


def recon_runs(store) -> None:
    """fixed: a balanced run, then an EXCEPTIONS run with two open exceptions and one
    resolved, then a dry run (ignored); partial: a failed run."""
    t = datetime.combine(TODAY, datetime.min.time()) + timedelta(hours=2)
    with store.engine.begin() as c:
        def run(bank, no, status, dry=0):
            return c.execute(model.recon_run.insert().values(
                bank=bank, run_no=no, settle_date=YESTERDAY, started_at=t, finished_at=t,
                status=status, dry_run=dry, bank_count=3, bank_total=30000, ours_count=2,
                ours_total=20000)).inserted_primary_key[0]
        run("fixed", 1, "BALANCED")
        rid = run("fixed", 2, "EXCEPTIONS")
        c.execute(model.recon_item.insert(), [
            {"run_id": rid, "category": cat, "action": action, "bank_amount": 0,
             "our_amount": 0}
            for cat, action in (("BANK_ONLY", "EXCEPTION"), ("AMOUNT_DIFFERS", "EXCEPTION"),
                                ("BANK_ONLY", "RESOLVED"), ("MATCHED", "NONE"))])
        run("fixed", None, "BALANCED", dry=1)
        run("partial", 1, "FAILED")


def build_day(store, clock, tmp_path) -> Day:
    """The day (every figure below is asserted by the tests):

    - fixed S001: 100000123 pays 548,000 at the counter (01), invoice 00000001; the
      bank reverses it (R001): invoice voided;
    - fixed S002: 100000123 pays 548,000 again, online (05): invoice 00000002;
    - partial S001 (the same serial at another bank): 100000200 pays 400,000 by debit
      card (02);
    - any A001: 100000500 pays 10,000; alice refunds it ("paid twice");
    - overpay O001: 100000502 (named ``<script>``) pays 15,000 for a 10,000 bill:
      5,000 kept as prepaid;
    - twophase T001: 100000501 prepays 20,000, pending;
    - fixed's yesterday and partial's today are cut off.
    """
    cfg, ledger, inv, _ = setup(store, clock, tmp_path)
    extra_customers(store)
    from ledger_helpers import bills

    store.initial_paid = bills(store)
    inv.issue_stock("fixed", 1, 10, width=8, actor="test")
    inv.issue_stock("counter", 100, 101, code="C", width=6, low_water=5, actor="test")
    day = Day(store, ledger, inv, invoice_settings(cfg))
    r = pay(ledger, "fixed", "S001", "100000123", 548000, "01")
    day.receipts["S001"], day.invoice_nos["S001"] = r.receipt_no, r.invoice_no
    origin = m.Origin(bank="fixed", trade_date=TODAY, channel="01")
    rv = ledger.reverse(m.ReversalRequest(origin, "S001", "100000123", 548000, serial="R001",
                                          content=m.fingerprint("REV", "S001")))
    assert rv.outcome is Outcome.OK, rv
    r = pay(ledger, "fixed", "S002", "100000123", 548000, "05")
    day.receipts["S002"], day.invoice_nos["S002"] = r.receipt_no, r.invoice_no
    day.receipts["partial-S001"] = pay(ledger, "partial", "S001", "100000200", 400000,
                                       "02").receipt_no
    day.receipts["A001"] = pay(ledger, "any", "A001", "100000500", 10000).receipt_no
    assert ledger.refund(day.receipts["A001"], "paid twice", "alice").outcome is Outcome.OK
    day.receipts["O001"] = pay(ledger, "overpay", "O001", "100000502", 15000).receipt_no
    day.receipts["T001"] = pay(ledger, "twophase", "T001", "100000501", 20000).receipt_no
    assert ledger.cutoff("fixed", YESTERDAY).outcome is Outcome.OK
    assert ledger.cutoff("partial", TODAY).outcome is Outcome.OK
    withholding_batches(store)
    recon_runs(store)
    return day
