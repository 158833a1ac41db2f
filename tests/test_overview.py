"""The overview's database figures (bankgate.domain.overview) on every database, over
the hand-built day of tests/helpdesk_helpers.py, whose figures are known."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import TODAY
from helpdesk_helpers import YESTERDAY, build_day

from bankgate.domain import overview

BANKS = ["fixed", "partial", "overpay", "any", "latest", "twophase"]
ZERO = dict.fromkeys(("count", "amount", "principal", "late_fee", "prepaid", "reversed_count",
                      "reversed_amount", "refunded_count", "refunded_amount", "net"), 0)


def row(**kw) -> dict:
    return {**ZERO, **kw}


@pytest.fixture
def day(store, clock, tmp_path):
    return build_day(store, clock, tmp_path)


def test_today_per_bank_and_channel(day):
    f = overview.day_figures(day.store, TODAY, BANKS)
    assert f["by_channel"] == [
        row(bank="any", channel="01", count=1, amount=10000, principal=10000,
            refunded_count=1, refunded_amount=10000),
        row(bank="fixed", channel="01", count=1, amount=548000, principal=535000,
            late_fee=13000, reversed_count=1, reversed_amount=548000),
        row(bank="fixed", channel="05", count=1, amount=548000, principal=535000,
            late_fee=13000, net=548000),
        row(bank="overpay", channel="01", count=1, amount=15000, principal=10000,
            prepaid=5000, net=15000),
        row(bank="partial", channel="02", count=1, amount=400000, principal=400000,
            net=400000),
    ]


def test_today_per_bank_and_fee_type(day):
    f = overview.day_figures(day.store, TODAY, BANKS)
    assert f["by_fee_type"] == [
        row(bank="any", fee_type="02", count=1, amount=10000, principal=10000,
            refunded_count=1, refunded_amount=10000),
        # S001 and S002 each paid B0001 (260,000 + 13,000 late fee) and B0003 (260,000)
        row(bank="fixed", fee_type="01", count=2, amount=1066000, principal=1040000,
            late_fee=26000, reversed_count=1, reversed_amount=533000, net=533000),
        row(bank="fixed", fee_type="02", count=2, amount=30000, principal=30000,
            reversed_count=1, reversed_amount=15000, net=15000),
        # the excess kept as prepaid balance is fee type ""
        row(bank="overpay", fee_type="", count=1, amount=5000, prepaid=5000, net=5000),
        row(bank="overpay", fee_type="02", count=1, amount=10000, principal=10000, net=10000),
        row(bank="partial", fee_type="01", count=1, amount=400000, principal=400000,
            net=400000),
    ]


def test_today_per_bank_totals_and_pending(day):
    f = overview.day_figures(day.store, TODAY, BANKS)
    assert f["banks"] == BANKS  # every configured bank, also without a payment
    per = f["per_bank"]
    assert per["fixed"] == {"count": 2, "amount": 1096000, "reversed_count": 1,
                            "reversed_amount": 548000, "refunded_count": 0,
                            "refunded_amount": 0, "net": 548000, "pending_count": 0,
                            "pending_amount": 0}
    assert per["any"]["net"] == 0 and per["any"]["refunded_amount"] == 10000
    assert per["latest"]["count"] == 0 and per["latest"]["net"] == 0
    assert (per["twophase"]["count"], per["twophase"]["pending_count"],
            per["twophase"]["pending_amount"]) == (0, 1, 20000)
    t = f["totals"]
    assert (t["count"], t["amount"], t["net"], t["reversed_amount"], t["refunded_amount"],
            t["pending_count"], t["pending_amount"]) == (5, 1521000, 963000, 548000, 10000,
                                                         1, 20000)


def test_another_day_is_empty(day):
    f = overview.day_figures(day.store, YESTERDAY, ["fixed"])
    assert f["by_channel"] == [] and f["by_fee_type"] == []
    assert f["per_bank"]["fixed"]["count"] == 0 and f["totals"]["amount"] == 0


def test_cutoff_and_reconciliation_per_bank(day):
    states = {s["bank"]: s for s in overview.bank_states(day.store, TODAY, BANKS)}
    assert list(states) == BANKS
    fixed = states["fixed"]
    assert not fixed["closed"] and fixed["cutoff"] is None
    assert fixed["last_closed"] == YESTERDAY
    # the latest run that is not a dry run: the second, with two exceptions still open
    r = fixed["recon"]
    assert (r["run_no"], r["status"], r["settle_date"], r["open_exceptions"]) == (
        2, "EXCEPTIONS", YESTERDAY, 2)
    assert (r["bank_count"], r["bank_total"], r["ours_count"], r["ours_total"]) == (
        3, 30000, 2, 20000)
    assert fixed["recon_ok"] is False
    partial = states["partial"]
    assert partial["closed"] and partial["last_closed"] == TODAY
    assert partial["cutoff"]["reason"] == "scheduled"
    assert (partial["cutoff"]["count"], partial["cutoff"]["total"]) == (1, 400000)
    assert partial["recon"]["status"] == "FAILED" and partial["recon"]["open_exceptions"] == 0
    assert states["any"] == {"bank": "any", "cutoff": None, "closed": False,
                             "last_closed": None, "recon": None, "recon_ok": False}


def test_invoice_stock_per_holder(day):
    stock = overview.invoice_stock(day.store, day.settings)
    assert stock == [
        # 1..10, numbers 1 (voided with the reversal) and 2 used; mark from the options
        {"holder": "fixed", "ranges": 1, "remaining": 8, "low_water": 3, "state": "OK",
         "invoice": True},
        {"holder": "twophase", "ranges": 0, "remaining": 0, "low_water": 3,
         "state": "EMPTY", "invoice": True},
        # the counter has no bank options: the mark of its range
        {"holder": "counter", "ranges": 1, "remaining": 2, "low_water": 5, "state": "LOW",
         "invoice": False},
    ]
    # the same rule as the invoice commands' stock report (bankgate invoice stock)
    report = {r["holder"]: (r["remaining"], r["low_water"], r["state"])
              for r in day.invoices.stock_report()}
    assert {s["holder"]: (s["remaining"], s["low_water"], s["state"]) for s in stock} == report


def test_invoice_stock_at_the_mark_is_low(day):
    settings = dict(day.settings)
    settings["fixed"] = dataclasses.replace(settings["fixed"], low_water=8)
    [fixed] = [s for s in overview.invoice_stock(day.store, settings) if s["holder"] == "fixed"]
    assert (fixed["remaining"], fixed["low_water"], fixed["state"]) == (8, 8, "LOW")
    # without settings every holder with stock is listed, with its range's mark
    assert [(s["holder"], s["low_water"]) for s in overview.invoice_stock(day.store)] == [
        ("counter", 5), ("fixed", 3)]


def test_everything_in_one_read(day):
    o = overview.overview(day.store, TODAY, BANKS, day.settings)
    assert o["date"] == TODAY
    assert o["figures"]["totals"]["net"] == 963000
    assert [b["bank"] for b in o["banks"]] == BANKS
    assert [s["holder"] for s in o["invoices"]] == ["fixed", "twophase", "counter"]
