"""Invoices (发票) on every database (see conftest.BACKENDS): stock, a number
per payment, low stock, print / reprint / re-issue / void, automatic voids
when a payment is undone, N8 consistency, concurrency."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import pytest
from invoice_helpers import (
    LOW_WATER,
    audits,
    gw_invoices,
    n8_invoices,
    payment,
    pdf_strings,
    rows,
    setup,
)
from ledger_helpers import TODAY, check_books, pay, rev

from bankgate.canon import messages as m
from bankgate.canon.messages import Outcome
from bankgate.domain.invoices import InvoiceError
from bankgate.store import model

FULL = 260000 + 15000 + 260000 + 13000  # customer 100000123, all bills (test_ledger)


@pytest.fixture
def env(store, clock, tmp_path):
    cfg, ledger, inv, _ = setup(store, clock, tmp_path)
    return ledger, inv


def stock(inv, holder="fixed", first=1, last=10, code="2100", width=8, actor="ops1"):
    return inv.issue_stock(holder, first, last, code=code, width=width, actor=actor)


def no(n: int, code: str = "2100", width: int = 8) -> str:
    return f"{code}{n:0{width}d}"


# -- stock (领用) ---------------------------------------------------------------------


def test_issue_stock_mirrors_unused_numbers_into_n8_and_audits(env, store):
    ledger, inv = env
    r = stock(inv, first=1, last=5)
    assert (r["first"], r["last"], r["count"], r["low_water"]) == (no(1), no(5), 5, LOW_WATER)
    n8 = n8_invoices(store)
    assert sorted(n8) == [no(i) for i in range(1, 6)]
    assert {x["status"] for x in n8.values()} == {"U"}
    assert all(x["pay_id"] is None for x in n8.values())
    a = audits(store, "invoice-stock-issue")
    assert len(a) == 1 and a[0]["actor"] == "ops1" and a[0]["subject"] == "fixed"
    rep = {x["holder"]: x for x in inv.stock_report()}
    assert rep["fixed"]["remaining"] == 5 and rep["fixed"]["state"] == "OK"
    assert rep["twophase"]["remaining"] == 0 and rep["twophase"]["state"] == "EMPTY"
    assert inv.check() == []


@pytest.mark.parametrize("holder,first,last,code,width", [
    ("fixed", 5, 5, "2100", 8),  # the same bank, one number in common
    ("partial", 1, 100, "2100", 8),  # another bank
    ("counter", 10, 12, "2100", 8),  # the counter, touching the end
    ("fixed", 0, 99, "21000", 7),  # another code and width, same numbers as written
    ("fixed", 210000000005, 210000000005, "", 12),  # no code at all, same number
])
def test_overlapping_ranges_are_refused(env, store, holder, first, last, code, width):
    _, inv = env
    stock(inv, first=1, last=10)
    with pytest.raises(InvoiceError, match="overlaps range 210000000001-210000000010"):
        inv.issue_stock(holder, first, last, code=code, width=width, actor="ops1")
    assert len(rows(store, model.invoice_stock)) == 1
    assert len(n8_invoices(store)) == 10


def test_adjacent_ranges_and_other_codes_are_fine(env, store):
    _, inv = env
    stock(inv, first=1, last=10)
    stock(inv, holder="partial", first=11, last=20)
    stock(inv, holder="counter", first=1, last=10, code="2101")
    stock(inv, holder="counter-hall2", first=21, last=30, code="21000", width=7)
    stock(inv, holder="counter", first=2100000, last=2100003, code="", width=8)  # shorter
    assert len(rows(store, model.invoice_stock)) == 5


def test_issue_refuses_numbers_n8_already_has(env, store):
    _, inv = env
    with store.n8_engine.begin() as c:
        c.execute(store.n8["invoice"].insert().values(invoice_no=no(7), status="I",
                                                      pay_id="N8OWN", amount=5))
    with pytest.raises(InvoiceError, match="N8 already has 1 number"):
        stock(inv, first=1, last=10)
    assert rows(store, model.invoice_stock) == []


@pytest.mark.parametrize("kw,message", [
    ({"holder": "nobank"}, "unknown holder"),
    ({"code": "ab"}, "invoice code"),
    ({"width": 17}, "width 17"),
    ({"first": 5, "last": 4}, "range 5-4"),
    ({"first": 0, "last": 100_000}, "at most 100000"),
    ({"actor": " "}, "actor"),
])
def test_issue_validation(env, kw, message):
    _, inv = env
    with pytest.raises(InvoiceError, match=message):
        stock(inv, **kw)


def test_concurrent_overlapping_issues_one_wins(env, store):
    _, inv = env
    n = 4
    barrier = threading.Barrier(n)
    results = []

    def go(i):
        barrier.wait()
        try:
            results.append(inv.issue_stock("fixed", 1 + i, 500 + i, code="2100",
                                           actor=f"ops{i}"))
        except InvoiceError as e:
            results.append(e)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(r, dict) for r in results) == 1, results
    assert len(rows(store, model.invoice_stock)) == 1
    assert len(n8_invoices(store)) == 500


# -- a number per payment (开出) ----------------------------------------------------------


def test_payment_takes_the_next_number_in_its_own_transaction(env, store):
    ledger, inv = env
    stock(inv, first=1, last=10)
    r = ledger.pay(pay("S1"))
    assert r.outcome is Outcome.OK and r.invoice_no == no(1)
    p = payment(store, r.receipt_no)
    assert (p["invoice_no"], p["invoice_printed"]) == (no(1), 0)
    g = gw_invoices(store)[no(1)]
    assert (g["status"], g["payment_id"], g["bank"], g["print_count"]) == (
        "ISSUED", p["id"], "fixed", 0)
    n8 = n8_invoices(store)[no(1)]
    assert (n8["status"], n8["pay_id"], n8["customer_no"], n8["amount"]) == (
        "I", r.receipt_no, "100000123", FULL)
    assert n8_invoices(store)[no(2)]["status"] == "U"
    # a retry answers the same number and takes none
    again = ledger.pay(pay("S1"))
    assert again.retry and again.invoice_no == no(1)
    # refused payments take nothing
    assert ledger.pay(pay("S2", customer="100000200", amount=1)).outcome is \
        Outcome.AMOUNT_REJECTED
    r2 = ledger.pay(pay("S3", customer="100000200", amount=1000000))
    assert r2.invoice_no == no(2)
    assert inv.check() == []
    check_books(store)


def test_banks_without_invoice_option_and_other_sources_take_none(env, store):
    ledger, inv = env
    stock(inv, first=1, last=10)
    stock(inv, holder="partial", first=11, last=20)
    assert ledger.pay(pay("P1", amount=20000, bank="partial")).invoice_no == ""
    r = ledger.pay(pay("R1", customer="100000200", amount=1000000), source="recon",
                   actor="recon")
    assert r.outcome is Outcome.OK and r.invoice_no == ""
    assert gw_invoices(store) == {}


def test_invoice_sources_option(store, clock, tmp_path):
    _, ledger, inv, _ = setup(store, clock, tmp_path, invoice_sources=["online", "recon"])
    stock(inv, first=1, last=10)
    r = ledger.pay(pay("R1", customer="100000200", amount=1000000), source="recon",
                   actor="recon")
    assert r.invoice_no == no(1)


def test_exhausted_stock_posts_without_invoice_and_says_so(env, store, caplog):
    ledger, inv = env
    stock(inv, first=1, last=1)
    assert ledger.pay(pay("S1", customer="100000200", amount=1000000)).invoice_no == no(1)
    with caplog.at_level(logging.WARNING, logger="bankgate.domain.invoices"):
        r = ledger.pay(pay("S2"))
    assert r.outcome is Outcome.OK and r.invoice_no == ""
    assert payment(store, r.receipt_no)["invoice_no"] is None
    assert "WITHOUT an invoice" in caplog.text
    none = audits(store, "invoice-none")
    assert [a["subject"] for a in none] == [r.receipt_no]
    assert len(audits(store, "invoice-exhausted")) == 1
    check_books(store)


def test_low_stock_warns_once_per_crossing(store, clock, tmp_path, caplog):
    _, ledger, inv, customers = setup(store, clock, tmp_path, extra=12)
    stock(inv, first=1, last=5)  # low water 3
    with caplog.at_level(logging.WARNING, logger="bankgate.domain.invoices"):
        for i, c in enumerate(customers[:2]):
            ledger.pay(pay(f"L{i}", customer=c, amount=10000))
    assert len(audits(store, "invoice-low-stock")) == 1  # 5 -> 4 -> 3: crossed
    assert "is low: 3 left" in caplog.text
    ledger.pay(pay("L2", customer=customers[2], amount=10000))  # 2 left: no second warning
    assert len(audits(store, "invoice-low-stock")) == 1
    assert [r["holder"] for r in inv.low_stock()] == ["fixed", "twophase"]
    stock(inv, first=6, last=8)  # back above: 5 left
    assert inv.stock_report("fixed")[0]["state"] == "OK"
    for i, c in enumerate(customers[3:5]):
        ledger.pay(pay(f"M{i}", customer=c, amount=10000))
    assert len(audits(store, "invoice-low-stock")) == 2  # crossed again
    assert inv.stock_report("fixed")[0]["state"] == "LOW"


def test_number_n8_already_used_is_skipped_and_recorded(env, store, caplog):
    ledger, inv = env
    stock(inv, first=1, last=10)
    t = store.n8["invoice"]
    with store.n8_engine.begin() as c:  # N8's own counter used number 1 meanwhile
        c.execute(t.update().where(t.c.invoice_no == no(1)).values(status="I", pay_id="N8X"))
    with caplog.at_level(logging.WARNING, logger="bankgate.domain.invoices"):
        r = ledger.pay(pay("S1"))
    assert r.invoice_no == no(2)
    g = gw_invoices(store)[no(1)]
    assert (g["status"], g["payment_id"]) == ("VOID", None)
    assert "N8 already has this number as I" in g["void_reason"]
    assert n8_invoices(store)[no(1)]["pay_id"] == "N8X"  # N8's record untouched
    assert len(audits(store, "invoice-n8-conflict")) == 1
    assert inv.check() == []


def test_ten_numbers_owned_by_n8_in_a_row_post_without_invoice(env, store):
    ledger, inv = env
    stock(inv, first=1, last=12)
    t = store.n8["invoice"]
    with store.n8_engine.begin() as c:
        c.execute(t.update().where(t.c.invoice_no <= no(10)).values(status="V"))
    r = ledger.pay(pay("S1"))
    assert r.outcome is Outcome.OK and r.invoice_no == ""
    assert sorted(gw_invoices(store)) == [no(i) for i in range(1, 11)]
    assert [a["subject"] for a in audits(store, "invoice-none")] == [r.receipt_no]
    assert ledger.pay(pay("S2", customer="100000200", amount=1000000)).invoice_no == no(11)
    assert inv.check() == []


def test_n8_without_unused_rows_gets_the_row_inserted(env, store):
    ledger, inv = env
    stock(inv, first=1, last=3)
    with store.n8_engine.begin() as c:
        c.execute(store.n8["invoice"].delete())
    r = ledger.pay(pay("S1"))
    assert n8_invoices(store)[r.invoice_no]["status"] == "I"


# -- concurrency ---------------------------------------------------------------------------


def test_concurrent_payments_get_distinct_numbers_without_gaps(store, clock, tmp_path):
    n = 4 if store.dialect == "sqlite" else 8
    per = 3
    _, ledger, inv, customers = setup(store, clock, tmp_path, extra=n * per)
    stock(inv, first=1, last=1000)
    barrier = threading.Barrier(n)
    results = []

    def go(i):
        barrier.wait()
        for k in range(per):
            results.append(ledger.pay(pay(f"C{i}-{k}", customer=customers[i * per + k],
                                          amount=10000)))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {r.outcome for r in results} == {Outcome.OK}
    got = sorted(r.invoice_no for r in results)
    assert got == [no(i) for i in range(1, n * per + 1)]  # distinct, no gaps
    assert inv.stock_report("fixed")[0]["remaining"] == 1000 - n * per
    assert inv.check() == []
    check_books(store)


class Boom:
    """A later hook that fails some payments after the invoice hook ran."""

    def __init__(self):
        self.fail = set()

    def after_post(self, tx, payment, allocations, now):
        if payment["serial"] in self.fail:
            raise RuntimeError("boom")

    def after_undo(self, tx, payment, kind, now):
        pass


def test_a_payment_that_rolls_back_gives_its_number_back(store, clock, tmp_path):
    boom = Boom()
    _, ledger, inv, customers = setup(store, clock, tmp_path, extra=3, hooks_after=[boom])
    stock(inv, first=1, last=10)
    assert ledger.pay(pay("A", customer=customers[0], amount=10000)).invoice_no == no(1)
    boom.fail.add("B")
    with pytest.raises(RuntimeError):
        ledger.pay(pay("B", customer=customers[1], amount=10000))
    assert ledger.pay(pay("C", customer=customers[2], amount=10000)).invoice_no == no(2)
    assert sorted(gw_invoices(store)) == [no(1), no(2)]
    assert inv.check() == []


# -- print, reprint, re-issue, void ----------------------------------------------------------


def test_print_marks_printed_and_blocks_reversal_until_void(env, store, tmp_path):
    ledger, inv = env
    stock(inv, first=1, last=10)
    r = ledger.pay(pay("S1"))
    out = inv.print(r.receipt_no, actor="ops1")
    assert out.invoice_no == no(1) and out.copy == 0
    data = open(out.path, "rb").read()
    assert data.startswith(b"%PDF-") and b"%%EOF" in data[-32:]
    text = pdf_strings(data)
    for want in ("沈阳供热有限公司", "张三", "采暖费", "物业费", "2025-2026", "130.00",
                 "伍仟肆佰捌拾元整", no(1)[4:], r.receipt_no, "fixed (105210)", "S1"):
        assert want in text, want
    assert "补打" not in text
    g = gw_invoices(store)[no(1)]
    assert (g["status"], g["print_count"], g["actor"]) == ("PRINTED", 1, "ops1")
    assert payment(store, r.receipt_no)["invoice_printed"] == 1
    assert n8_invoices(store)[no(1)]["status"] == "I"
    # the ledger's rules: no reversal, no refund of a printed invoice's payment
    refused = ledger.reverse(rev("R1", "S1"))
    assert refused.outcome is Outcome.REVERSAL_NOT_ALLOWED
    assert refused.message == (f"payment {r.receipt_no}: its invoice {r.invoice_no} was printed;"
                               " void the invoice first")  # the log line says why
    assert ledger.refund(r.receipt_no, "moved", "ops1").outcome is Outcome.REVERSAL_NOT_ALLOWED
    with pytest.raises(InvoiceError, match="printed already"):
        inv.print(no(1), actor="ops1")
    # void (作废): the payment may be reversed again
    v = inv.void(no(1), reason="customer refused", actor="ops2")
    assert v == {"invoice_no": no(1), "receipt_no": r.receipt_no, "was": "PRINTED"}
    g = gw_invoices(store)[no(1)]
    assert (g["status"], g["void_reason"], g["actor"]) == ("VOID", "customer refused", "ops2")
    p = payment(store, r.receipt_no)
    assert (p["invoice_no"], p["invoice_printed"]) == (None, 0)
    assert n8_invoices(store)[no(1)]["status"] == "V"
    with pytest.raises(InvoiceError, match="no standing invoice"):
        inv.void(r.receipt_no, reason="again", actor="ops2")
    with pytest.raises(InvoiceError, match="is void already"):
        inv.void(no(1), reason="again", actor="ops2")
    assert ledger.reverse(rev("R2", "S1")).outcome is Outcome.OK
    assert [a["action"] for a in rows(store, model.audit)
            if a["action"].startswith("invoice-") and a["actor"] != "system"] == [
        "invoice-stock-issue", "invoice-print", "invoice-void"]
    assert inv.check() == []
    check_books(store)


def test_reprint_keeps_the_number_counts_and_marks_the_copy(env, store, tmp_path):
    ledger, inv = env
    stock(inv, first=1, last=10)
    r = ledger.pay(pay("S1"))
    with pytest.raises(InvoiceError, match="only a printed invoice"):
        inv.reprint(no(1), actor="ops1")
    inv.print(no(1), actor="ops1")
    c1 = inv.reprint(no(1), actor="ops1")
    c2 = inv.reprint(r.receipt_no, actor="ops2", out_dir=str(tmp_path / "elsewhere"))
    assert (c1.invoice_no, c1.copy, c2.copy) == (no(1), 1, 2)
    assert c1.path.endswith(f"{no(1)}-copy1.pdf") and "elsewhere" in c2.path
    text = pdf_strings(open(c2.path, "rb").read())
    assert "补打 REPRINT" in text and "COPY 2" in text and "张三" in text
    g = gw_invoices(store)[no(1)]
    assert (g["status"], g["print_count"], g["actor"]) == ("PRINTED", 3, "ops2")
    assert len(audits(store, "invoice-reprint")) == 2
    assert sorted(gw_invoices(store)) == [no(1)]  # no number taken


def test_reissue_voids_the_old_number_and_prints_a_new_one(env, store):
    ledger, inv = env
    stock(inv, first=1, last=2)
    r = ledger.pay(pay("S1"))
    inv.print(r.receipt_no, actor="ops1")
    with pytest.raises(InvoiceError, match="a reason is required"):
        inv.reissue(no(1), reason="", actor="ops1")
    out = inv.reissue(no(1), reason="printer jammed", actor="ops1")
    assert (out.invoice_no, out.voided) == (no(2), no(1))
    text = pdf_strings(open(out.path, "rb").read())
    assert "重打 RE-ISSUE" in text and no(1) in text
    g = gw_invoices(store)
    assert (g[no(1)]["status"], g[no(2)]["status"], g[no(2)]["print_count"]) == (
        "VOID", "PRINTED", 1)
    assert "printer jammed" in g[no(1)]["void_reason"]
    p = payment(store, r.receipt_no)
    assert (p["invoice_no"], p["invoice_printed"]) == (no(2), 1)
    n8 = n8_invoices(store)
    assert (n8[no(1)]["status"], n8[no(2)]["status"], n8[no(2)]["pay_id"]) == (
        "V", "I", r.receipt_no)
    # no stock left: refused, nothing changed
    with pytest.raises(InvoiceError, match="no invoice stock left for fixed"):
        inv.reissue(r.receipt_no, reason="again", actor="ops1")
    assert gw_invoices(store)[no(2)]["status"] == "PRINTED"
    assert payment(store, r.receipt_no)["invoice_no"] == no(2)
    assert len(audits(store, "invoice-reissue")) == 1
    assert inv.check() == []


def test_print_gives_a_number_to_a_payment_without_one(env, store):
    ledger, inv = env
    r = ledger.pay(pay("P1", amount=20000, bank="partial"))  # partial: no invoice option
    with pytest.raises(InvoiceError, match="no invoice stock left for partial"):
        inv.print(r.receipt_no, actor="ops1")
    stock(inv, holder="counter", first=1, last=5, code="9900")
    out = inv.print(r.receipt_no, actor="ops1", holder="counter")
    assert out.invoice_no == "990000000001" and "/counter/" in out.path
    text = pdf_strings(open(out.path, "rb").read())
    assert "Issued at counter" in text
    g = gw_invoices(store)["990000000001"]
    assert (g["bank"], g["status"]) == ("counter", "PRINTED")
    with pytest.raises(InvoiceError, match="unknown holder"):
        inv.print(r.receipt_no, actor="ops1", holder="counterfeit")
    assert inv.check() == []


def test_print_refusals(env, store, clock):
    ledger, inv = env
    stock(inv, first=1, last=10)
    stock(inv, holder="twophase", first=11, last=20)
    with pytest.raises(InvoiceError, match="no invoice and no payment"):
        inv.print("nope", actor="ops1")
    t = ledger.pay(pay("T1", bank="twophase"))
    assert t.invoice_no == no(11)
    with pytest.raises(InvoiceError, match="not confirmed yet"):
        inv.print(t.invoice_no, actor="ops1")
    r = ledger.pay(pay("S1", customer="100000200", amount=1000000))
    inv.void(r.invoice_no, reason="wrong", actor="ops1")
    with pytest.raises(InvoiceError, match="is void"):
        inv.print(r.invoice_no, actor="ops1")
    assert ledger.reverse(rev("R1", "S1", customer="100000200", amount=1000000)).outcome is \
        Outcome.OK
    with pytest.raises(InvoiceError, match="is reversed"):
        inv.print(r.receipt_no, actor="ops1")
    with pytest.raises(InvoiceError, match="actor"):
        inv.print(r.receipt_no, actor="")


# -- a payment undone voids its invoice ------------------------------------------------------


def test_reversal_of_an_unprinted_invoice_voids_it(env, store):
    ledger, inv = env
    stock(inv, first=1, last=10)
    r = ledger.pay(pay("S1"))
    assert ledger.reverse(rev("R1", "S1")).outcome is Outcome.OK
    g = gw_invoices(store)[no(1)]
    assert (g["status"], g["void_reason"], g["actor"]) == (
        "VOID", "payment undone: reversal", "system")
    assert n8_invoices(store)[no(1)]["status"] == "V"
    assert payment(store, r.receipt_no)["invoice_no"] is None
    # the next payment takes the next number: voids are the only gaps
    assert ledger.pay(pay("S2")).invoice_no == no(2)
    assert inv.check() == []
    check_books(store)


def test_refund_and_expiry_void_the_invoice(env, store, clock):
    ledger, inv = env
    stock(inv, first=1, last=10)
    stock(inv, holder="twophase", first=11, last=20)
    r = ledger.pay(pay("S1"))
    assert ledger.refund(r.receipt_no, "moved out", "ops1").outcome is Outcome.OK
    t = ledger.pay(pay("T1", customer="100000200", amount=1000000, bank="twophase"))
    clock.now += timedelta(seconds=61)
    assert ledger.expire_pending() == 1
    g = gw_invoices(store)
    assert (g[no(1)]["status"], g[no(1)]["void_reason"]) == ("VOID", "payment undone: refund")
    assert (g[t.invoice_no]["status"], g[t.invoice_no]["void_reason"]) == (
        "VOID", "payment undone: expiry")
    assert inv.check() == []


def test_reconciliation_reversal_voids_even_a_printed_invoice(env, store, caplog):
    ledger, inv = env
    stock(inv, first=1, last=10)
    r = ledger.pay(pay("S1"))
    inv.print(r.receipt_no, actor="ops1")
    with caplog.at_level(logging.WARNING, logger="bankgate.domain.invoices"):
        x = ledger.reverse_local("fixed", TODAY, "S1", run_id=None, actor="recon",
                                 reason="not on the statement")
    assert x.outcome is Outcome.OK
    assert "recover the paper" in caplog.text
    assert gw_invoices(store)[no(1)]["status"] == "VOID"
    assert payment(store, r.receipt_no)["invoice_printed"] == 0
    assert inv.check() == []


def test_status_of_a_reversed_payment_is_unchanged_by_the_hook(env, store):
    ledger, inv = env
    stock(inv, first=1, last=10)
    ledger.pay(pay("S1"))
    ledger.reverse(rev("R1", "S1"))
    st = ledger.status(m.StatusRequest(rev(None, "S1").origin, "S1", TODAY))
    assert st.status is m.PaymentStatus.REVERSED


# -- N8 consistency (check) ------------------------------------------------------------------


def test_check_finds_every_kind_of_difference(env, store):
    ledger, inv = env
    stock(inv, first=1, last=6)
    r1 = ledger.pay(pay("S1"))
    r2 = ledger.pay(pay("S2", customer="100000200", amount=1000000))
    inv.print(r2.receipt_no, actor="ops1")
    assert inv.check() == []
    t = store.n8["invoice"]
    with store.n8_engine.begin() as c:
        c.execute(t.update().where(t.c.invoice_no == r1.invoice_no).values(amount=1))
        c.execute(t.update().where(t.c.invoice_no == r2.invoice_no).values(status="V"))
        c.execute(t.delete().where(t.c.invoice_no == no(4)))
        c.execute(t.update().where(t.c.invoice_no == no(5)).values(status="I", pay_id="N8X"))
        c.execute(t.insert().values(invoice_no="ELSEWHERE1", pay_id=r1.receipt_no,
                                    status="I", amount=FULL))
    with store.engine.begin() as c:
        s = model.invoice_stock
        c.execute(s.update().values(next_no=s.c.next_no + 1))  # number 3 taken silently
        c.execute(model.payment.update().where(model.payment.c.receipt_no == r1.receipt_no)
                  .values(invoice_printed=1))
    found = {(d.invoice_no, d.problem) for d in inv.check()}
    assert found == {
        (r1.invoice_no, "payment differs"),
        (r2.invoice_no, "status differs"),
        (no(3), "taken, no record"),
        (no(4), "missing in N8"),
        (no(5), "N8 used it"),
        ("ELSEWHERE1", "N8 only"),
        (r1.invoice_no, "printed mark wrong"),
    }
    text = "\n".join(str(d) for d in inv.check())
    assert "amt 1" in text and f"amt {FULL}" in text


def test_check_sees_a_tampered_gateway_record_too(env, store):
    ledger, inv = env
    stock(inv, first=1, last=3)
    r = ledger.pay(pay("S1"))
    with store.engine.begin() as c:
        c.execute(model.invoice.update().values(status="VOID"))
    problems = {d.problem for d in inv.check()}
    assert problems == {"status differs", "payment names it"}
    with store.engine.begin() as c:
        c.execute(model.invoice.update().values(status="ISSUED"))
        c.execute(model.payment.update().where(model.payment.c.receipt_no == r.receipt_no)
                  .values(status="REVERSED"))
    assert {d.problem for d in inv.check()} == {"payment undone"}
