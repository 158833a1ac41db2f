"""The help desk look-ups (bankgate.domain.helpdesk) on every database, over a day
made through the real Ledger (tests/helpdesk_helpers.py)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from conftest import TODAY, make_store
from helpdesk_helpers import ACCOUNT, ADDRESS_HTML, SCRIPT, YESTERDAY, build_day

from bankgate.domain import helpdesk
from bankgate.domain.helpdesk import HelpdeskError
from bankgate.store import helpdesk as sql
from bankgate.store import model


@pytest.fixture
def day(store, clock, tmp_path):
    return build_day(store, clock, tmp_path)


def nos(found: dict) -> list[str]:
    return [c["customer_no"] for c in found["customers"]]


# -- finding a customer ----------------------------------------------------------------


def test_find_by_number_exact_first_then_prefix(day):
    assert nos(helpdesk.find_customers(day.store, "100000200")) == ["100000200"]
    found = helpdesk.find_customers(day.store, "1000005")
    assert nos(found) == ["100000500", "100000501", "100000502"]
    assert found["more"] is False
    # limit: one more than asked tells the page there are more
    found = helpdesk.find_customers(day.store, "10000", limit=2)
    assert nos(found) == ["100000123", "100000200"] and found["more"] is True


def test_find_by_part_of_the_name(day):
    assert nos(helpdesk.find_customers(day.store, "重型")) == ["100000200"]
    assert nos(helpdesk.find_customers(day.store, "  张三 ")) == ["100000123"]
    assert helpdesk.find_customers(day.store, "nobody")["customers"] == []


@pytest.mark.parametrize("text,expected", [
    ("%", ["100000500"]),            # not every customer: % is a character
    ("_", ["100000500"]),            # not every customer with a name
    ("50%", ["100000500"]),          # "50x offa" does not match
    ("50_", []),                     # unescaped, it would match both 50… names
    ("50x", ["100000501"]),
    ("!", ["100000500"]),            # the escape character itself
    ("%_off!", ["100000500"]),
    ("0%_o", ["100000500"]),
    ("5_x", []),                     # _ does not stand for "0"
    ("<script>", ["100000502"]),
])
def test_wildcards_in_the_input_match_literally(day, text, expected):
    assert nos(helpdesk.find_customers(day.store, text)) == expected


def test_like_escape():
    assert sql.like_escape("a%b_c!d") == "a!%b!_c!!d"
    assert sql.like_escape("张三") == "张三"


@pytest.mark.parametrize("text,field,words", [
    ("", "search", "required"),
    ("   ", "search", "required"),
    ("x" * 101, "search", "at most 100"),
    ("a\x00b", "search", "control"),
])
def test_bad_search_is_refused_before_any_sql(store, text, field, words):
    with pytest.raises(HelpdeskError) as e:
        helpdesk.find_customers(store, text)
    assert e.value.field == field and words in str(e.value)


def test_a_quote_is_a_bound_value_not_sql(day):
    assert helpdesk.find_customers(day.store, "' OR 1=1 --")["customers"] == []


def test_script_in_a_name_comes_back_as_stored(day):
    [c] = helpdesk.find_customers(day.store, SCRIPT)["customers"]
    assert c["name"] == SCRIPT and c["address"] == ADDRESS_HTML
    card = helpdesk.customer_card(day.store, "100000502", TODAY)
    assert card["customer"]["name"] == SCRIPT


# -- a customer's card -------------------------------------------------------------------


def test_card_bills_payments_undo_and_invoices(day):
    card = helpdesk.customer_card(day.store, "100000123", TODAY)
    cust = card["customer"]
    assert (cust["name"], cust["prepaid"], cust["withholding_account"]) == ("张三", 0, "")
    bills = {b["bill_id"]: b for b in card["bills"]}
    assert set(bills) == {"B0001", "B0002", "B0003"}
    assert [b["period"] for b in card["bills"]] == ["2026-2027", "2026-11", "2025-2026"]
    assert bills["B0001"]["state"] == "paid" and bills["B0001"]["late_fee_paid"] == 13000
    assert all(b["outstanding"] == 0 and b["late_fee_owed"] == 0 for b in bills.values())
    assert card["totals"] == {"outstanding": 0, "late_fee_owed": 0, "open_bills": 0,
                              "prepaid": 0}

    s2, s1 = card["payments"]  # newest first
    assert (s2["serial"], s2["bank"], s2["channel"], s2["status"], s2["amount"]) == (
        "S002", "fixed", "05", "POSTED", 548000)
    assert s2["receipt_no"] == day.receipts["S002"] and s2["undo"] is None
    assert s2["invoice_no"] == day.invoice_nos["S002"] == "00000002"
    assert (s1["serial"], s1["status"], s1["channel"]) == ("S001", "REVERSED", "01")
    assert s1["undo"]["kind"] == "REVERSAL" and s1["undo"]["serial"] == "R001"
    assert s1["undo"]["trade_date"] == TODAY

    invoices = {i["invoice_no"]: i for i in card["invoices"]}
    assert invoices["00000001"]["status"] == "VOID"
    assert invoices["00000001"]["receipt_no"] == day.receipts["S001"]
    assert invoices["00000002"]["status"] == "ISSUED"
    assert invoices["00000002"]["amount"] == 548000


def test_card_open_bill_with_late_fee_owed(day):
    card = helpdesk.customer_card(day.store, "100000300", TODAY)
    [b] = card["bills"]
    assert (b["state"], b["outstanding"], b["late_fee_owed"]) == ("open", 50000, 0)
    # the same customer 100 days after the due date: 50,000 x 500 ppm x 100 days
    later = helpdesk.customer_card(day.store, "100000300", TODAY.replace(year=2027, month=4,
                                                                             day=10))
    assert later["bills"][0]["late_fee_owed"] == 2500
    assert later["totals"]["late_fee_owed"] == 2500 and later["totals"]["open_bills"] == 1


def test_card_refund_with_actor_and_reason(day):
    card = helpdesk.customer_card(day.store, "100000500", TODAY)
    [p] = card["payments"]
    assert (p["status"], p["bank"], p["amount"]) == ("REFUNDED", "any", 10000)
    assert p["undo"]["kind"] == "REFUND"
    assert (p["undo"]["actor"], p["undo"]["reason"]) == ("alice", "paid twice")
    assert card["bills"][0]["state"] == "open"  # the refund reopened the bill


def test_card_prepaid_balance(day):
    card = helpdesk.customer_card(day.store, "100000502", TODAY)
    assert card["customer"]["prepaid"] == 5000 == card["totals"]["prepaid"]
    [p] = card["payments"]
    assert (p["amount"], p["principal"], p["prepaid_in"]) == (15000, 10000, 5000)


def test_card_withholding_agreement_and_results_masked(day):
    card = helpdesk.customer_card(day.store, "100000200", TODAY)
    wh = card["withholding"]
    assert wh["signed"] and wh["bank"] == "103210"
    assert wh["account"] == "622202*********0123" and ACCOUNT not in repr(card)
    today, yesterday = wh["lines"]  # newest batch first
    assert (today["deduct_date"], today["result"], today["batch_status"]) == (
        TODAY, None, "GENERATED")
    assert "waiting" in today["result_text"]
    assert (yesterday["deduct_date"], yesterday["result"]) == (YESTERDAY, "1")
    assert "insufficient" in yesterday["result_text"]
    assert yesterday["bill_id"] == "B0010" and yesterday["total"] == 1000000


def test_card_of_an_unknown_customer_is_none(day):
    assert helpdesk.customer_card(day.store, "999999999", TODAY) is None
    with pytest.raises(HelpdeskError, match="customer_no"):
        helpdesk.customer_card(day.store, "", TODAY)


def test_card_lists_are_limited(day):
    card = helpdesk.customer_card(day.store, "100000123", TODAY, limit=1)
    assert [p["serial"] for p in card["payments"]] == ["S002"]
    assert len(card["bills"]) == 1 and len(card["invoices"]) == 1


def test_card_through_a_renamed_n8(clock, tmp_path):
    """The look-ups name N8 by logical names only: the renamed mapping works."""
    store = make_store("sqlite-renamed", tmp_path)
    try:
        assert store.mapping.tables.get("customer") == "HRB_KH"
        build_day(store, clock, tmp_path)
        assert nos(helpdesk.find_customers(store, "张")) == ["100000123"]
        assert len(helpdesk.customer_card(store, "100000123", TODAY)["payments"]) == 2
    finally:
        store.stop()


# -- finding a payment -------------------------------------------------------------------


def test_payment_by_receipt(day):
    [p] = helpdesk.find_payments(day.store, receipt=day.receipts["partial-S001"])
    assert (p["bank"], p["serial"], p["customer_no"], p["customer_name"], p["channel"]) == (
        "partial", "S001", "100000200", "沈阳重型机械厂", "02")
    assert helpdesk.find_payments(day.store, receipt="NOPE") == []


def test_payment_by_bank_serial(day):
    both = helpdesk.find_payments(day.store, serial="S001")
    assert sorted(p["bank"] for p in both) == ["fixed", "partial"]
    [p] = helpdesk.find_payments(day.store, serial="S001", bank="fixed", trade_date=TODAY)
    assert p["status"] == "REVERSED" and p["undo"]["serial"] == "R001"
    assert helpdesk.find_payments(day.store, serial="S001", bank="fixed",
                                  trade_date=YESTERDAY) == []


def test_payment_by_invoice_number_also_a_voided_one(day):
    [p] = helpdesk.find_payments(day.store, invoice="00000002")
    assert p["serial"] == "S002"
    [p] = helpdesk.find_payments(day.store, invoice="00000001")  # voided by the reversal
    assert (p["serial"], p["status"], p["invoice_no"]) == ("S001", "REVERSED", "")
    assert helpdesk.find_payments(day.store, invoice="00000003") == []


def test_payment_detail_allocations_and_invoices(day):
    [p] = helpdesk.find_payments(day.store, receipt=day.receipts["S002"])
    d = helpdesk.payment_detail(day.store, p["id"])
    assert [(a["bill_id"], a["fee_type"], a["principal"], a["late_fee"])
            for a in d["allocations"]] == [("B0001", "01", 260000, 13000),
                                           ("B0002", "02", 15000, 0),
                                           ("B0003", "01", 260000, 0)]
    assert [i["invoice_no"] for i in d["invoices"]] == ["00000002"]
    assert helpdesk.payment_detail(day.store, 10 ** 9) is None


@pytest.mark.parametrize("kw,field", [
    ({}, "receipt"),
    ({"receipt": "1", "serial": "2"}, "serial"),
    ({"receipt": "1", "bank": "fixed"}, "bank"),
    ({"serial": "x" * 41}, "serial"),
    ({"invoice": "I" * 21}, "invoice"),
])
def test_bad_payment_search_names_the_field(store, kw, field):
    with pytest.raises(HelpdeskError) as e:
        helpdesk.find_payments(store, **kw)
    assert e.value.field == field


def test_look_ups_change_nothing(day):
    def snapshot():
        with day.store.engine.connect() as c:
            return {t.name: c.execute(sa.select(sa.func.count()).select_from(t)).scalar()
                    for t in (model.payment, model.audit, model.undo, model.invoice)}

    before = snapshot()
    helpdesk.find_customers(day.store, "1")
    helpdesk.customer_card(day.store, "100000123", TODAY)
    helpdesk.find_payments(day.store, serial="S001")
    assert snapshot() == before
