"""The payment back-office actions (bankgate.domain.backoffice) and their command line:
a payment at the utility's counter (柜台收费), an operator's reversal (冲正), a refund
(退单) -- through the real Ledger with the invoice hook, on every database.  Each
refusal writes nothing; each action is audited with its actor, reason, before/after."""

from __future__ import annotations

import json
import re
import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from conftest import TODAY
from hypothesis import given
from hypothesis import strategies as st
from invoice_helpers import setup
from ledger_helpers import bills, check_books, count, pay, prepaid, rev

from bankgate.canon.messages import Outcome
from bankgate.canon.money import MAX_FEN, fen_to_yuan
from bankgate.domain import backoffice
from bankgate.domain.backoffice import (
    BackOffice,
    BadInput,
    Refused,
    parse_amount,
    parse_bills,
    parse_customer,
    parse_receipt,
)
from bankgate.store import model

FULL = 548000  # what 100000123 owes on TODAY, late fees included


@pytest.fixture
def office(store, clock, tmp_path):
    """The back office over a ledger wired as the service wires it (invoice hook)."""
    _cfg, ledger, invoices, _ = setup(store, clock, tmp_path)
    return BackOffice(ledger), ledger, invoices


def tables(store):
    """How many rows each table an action may write holds."""
    return {t.name: count(store, t) for t in (model.journal, model.payment, model.allocation,
                                               model.undo, model.audit, model.prepaid,
                                               model.invoice, store.n8["payment"])}


def audits(store, action: str) -> list[dict]:
    with store.engine.connect() as c:
        rows = c.execute(sa.select(model.audit).where(model.audit.c.action == action)
                         .order_by(model.audit.c.id)).mappings().all()
    return [{**r, "detail": json.loads(r["detail"])} for r in rows]


def payment_row(store, receipt: str) -> dict:
    with store.engine.connect() as c:
        return dict(c.execute(sa.select(model.payment).where(
            model.payment.c.receipt_no == receipt)).mappings().one())


# -- parsing ---------------------------------------------------------------------------


@given(st.integers(1, MAX_FEN))
def test_an_amount_in_yuan_is_read_back_as_the_same_fen(fen):
    assert parse_amount(fen_to_yuan(fen)) == fen
    whole, cents = divmod(fen, 100)
    if cents % 10 == 0:  # 12.5 and, for whole yuan, 12
        assert parse_amount(f"{whole}.{cents // 10}") == fen
    if cents == 0:
        assert parse_amount(str(whole)) == fen


@pytest.mark.parametrize("text", ["", "0", "0.00", "-1", "1.234", "1e3", "１２", "12,00",
                                  "100000000000.00", " . ", "01.00"])
def test_a_bad_amount_names_the_field(text):
    with pytest.raises(BadInput) as e:
        parse_amount(text)
    assert e.value.field == "amount"


def test_bills_customers_and_receipts_are_checked_before_any_lookup():
    assert parse_bills(["B0001, B0002", "B0003"]) == ("B0001", "B0002", "B0003")
    assert parse_bills([""]) == ()
    for bad, message in ((["B1,B1"], "named twice"), (["X" * 33], "at most 32"),
                         ([",".join(f"B{i}" for i in range(51))], "at most 50")):
        with pytest.raises(BadInput, match=message) as e:
            parse_bills(bad)
        assert e.value.field == "bills"
    assert parse_customer(" 100000123 ") == "100000123"
    for bad in ("", "1 2", "x" * 33, "12\x07"):
        with pytest.raises(BadInput) as e:
            parse_customer(bad)
        assert e.value.field == "customer"
    assert parse_receipt("20261127000000000001") == "20261127000000000001"
    for bad in ("", "2026112700000000000x", "1" * 21):
        with pytest.raises(BadInput) as e:
            parse_receipt(bad)
        assert e.value.field == "receipt"


# -- the counter (柜台收费) ---------------------------------------------------------------


def test_a_counter_payment_posts_under_the_counter_with_its_own_serial(office, store):
    bo, _, _ = office
    first = bo.counter_pay("100000123", 10000, (), actor="wang", reason="receipt book 12, 7")
    second = bo.counter_pay("100000123", 20000, (), actor="li", reason="slip 8")
    assert (first.serial, second.serial) == ("counter-20261127-000001",
                                             "counter-20261127-000002")
    assert first.receipt_no != second.receipt_no
    assert first.owed_after == FULL - 10000 and second.owed_after == FULL - 30000
    p = payment_row(store, first.receipt_no)
    assert (p["bank"], p["channel"], p["source"], p["teller"], p["status"], p["amount"]) == (
        "counter", "01", "counter", "wang", "POSTED", 10000)
    # late fees first (B0001's 130.00), then the oldest bill's principal
    assert bills(store)["B0001"] == (30000 - 13000, 13000)
    rows = audits(store, "counter-pay")
    assert [(a["actor"], a["subject"]) for a in rows] == [("wang", first.receipt_no),
                                                          ("li", second.receipt_no)]
    d = rows[0]["detail"]
    assert d["reason"] == "receipt book 12, 7" and d["bank"] == "counter"
    assert (d["due_before"], d["due_after"], d["amount"]) == (FULL, FULL - 10000, 10000)
    assert d["serial"] == first.serial and d["customer_no"] == "100000123"
    check_books(store)


def test_an_excess_is_kept_as_prepaid_balance(office, store):
    bo, _, _ = office
    plan = bo.look_counter("100000200", 1_050_000)
    assert (plan.excess, plan.owed_after) == (50000, 0)
    r = bo.counter_pay("100000200", 1_050_000, (), actor="wang", reason="slip 9")
    assert r.excess == 50000 and r.owed_after == 0
    assert prepaid(store)["100000200"] == 50000
    assert audits(store, "counter-pay")[0]["detail"]["prepaid_in"] == 50000
    check_books(store)


def test_named_bills_are_paid_exactly_or_refused(office, store):
    bo, _, _ = office
    before = tables(store)
    with pytest.raises(Refused, match="come to 150.00 yuan") as e:
        bo.counter_pay("100000123", 10000, ("B0002",), actor="wang", reason="x")
    assert e.value.field == "amount"
    with pytest.raises(Refused, match="B0010 is not an open bill") as e:
        bo.counter_pay("100000123", 1000000, ("B0010",), actor="wang", reason="x")
    assert e.value.field == "bills"
    assert tables(store) == before
    r = bo.counter_pay("100000123", 15000, ("B0002",), actor="wang", reason="property fee")
    assert bills(store)["B0002"] == (15000, 0) and bills(store)["B0001"] == (0, 0)
    assert r.owed_after == FULL - 15000
    check_books(store)


@pytest.mark.parametrize("customer, message", [
    ("999999999", "no customer 999999999 in N8"),
    ("100000300", "suspended"),
    ("100000400", "owes nothing"),
])
def test_a_refused_counter_payment_writes_nothing(office, store, customer, message):
    bo, _, _ = office
    before = tables(store)
    with pytest.raises(Refused, match=message) as e:
        bo.counter_pay(customer, 10000, (), actor="wang", reason="x")
    assert e.value.field == "customer"
    assert tables(store) == before


def test_no_counter_payment_once_the_counters_date_is_closed(office, store):
    bo, ledger, _ = office
    r = bo.counter_pay("100000123", 10000, (), actor="wang", reason="before")
    ledger.cutoff("counter", TODAY, reason="operator", actor="wang")
    before = tables(store)
    with pytest.raises(Refused, match="2026-11-27 was closed by hand"):
        bo.counter_pay("100000123", 10000, (), actor="wang", reason="after")
    with pytest.raises(Refused, match="closed: refund it instead"):
        bo.reverse(r.receipt_no, actor="wang", reason="after")
    assert tables(store) == before


def test_a_serial_taken_meanwhile_is_skipped(office, store, monkeypatch):
    """Another operator's payment took the number this one read: the journal's key
    refuses the second claim, and the payment takes the next number."""
    bo, _, _ = office
    bo.counter_pay("100000123", 10000, (), actor="li", reason="first")
    real = backoffice.sql.last_serial
    stale = iter([None])  # read before li's payment committed

    def last_serial(tx, *args):
        return next(stale, None) or real(tx, *args)

    monkeypatch.setattr(backoffice.sql, "last_serial", last_serial)
    r = bo.counter_pay("100000123", 20000, (), actor="wang", reason="second")
    assert r.serial == "counter-20261127-000002"
    assert count(store, model.payment) == 2
    assert [a["actor"] for a in audits(store, "counter-pay")] == ["li", "wang"]
    check_books(store)


def test_concurrent_counter_payments_never_share_a_serial(office, store):
    bo, _, _ = office
    n = 4 if store.dialect == "sqlite" else 8
    barrier = threading.Barrier(n)
    results, errors = [], []

    def go(i):
        barrier.wait()
        try:
            results.append(bo.counter_pay("100000200", 1000, (), actor=f"op{i}",
                                          reason="queue"))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({r.serial for r in results}) == n
    assert len({r.receipt_no for r in results}) == n
    assert count(store, model.payment) == n
    assert bills(store)["B0010"] == (n * 1000, 0)
    check_books(store)


def test_the_counter_takes_invoice_numbers_from_its_own_stock(office, store):
    bo, _, invoices = office
    assert bo.counter_pay("100000123", 10000, (), actor="wang", reason="a").invoice_no == ""
    invoices.issue_stock("counter", 1, 5, code="CT", actor="li")
    r = bo.counter_pay("100000123", 10000, (), actor="wang", reason="b")
    assert r.invoice_no == "CT00000001"
    assert payment_row(store, r.receipt_no)["invoice_no"] == "CT00000001"
    assert f"invoice {r.invoice_no}" in r.text()
    check_books(store)


# -- the operator's reversal (冲正) and the refund (退单) -------------------------------------


def test_an_operator_reverses_a_payment_the_bank_reversed(office, store):
    bo, ledger, _ = office
    before = bills(store)
    p = ledger.pay(pay("S1"))
    assert bo.look_payment(p.receipt_no, "reverse")["status"] == "POSTED"
    assert bo.reverse(p.receipt_no, actor="wang", reason="bank called: 0420 lost") \
        == f"reversed {p.receipt_no}"
    assert bills(store) == before
    row = payment_row(store, p.receipt_no)
    assert row["status"] == "REVERSED" and row["invoice_no"] is None
    with store.engine.connect() as c:
        undo = c.execute(sa.select(model.undo)).mappings().one()
    with store.n8_engine.connect() as c:
        n8 = c.execute(sa.select(store.n8["payment"].c.status)).scalar()
    assert (undo["kind"], undo["actor"], undo["reason"]) == ("OPERATOR", "wang",
                                                             "bank called: 0420 lost")
    assert n8 == "C"
    [a] = audits(store, "reverse")
    assert (a["actor"], a["subject"]) == ("wang", p.receipt_no)
    assert a["detail"]["reason"] == "bank called: 0420 lost"
    assert (a["detail"]["before"], a["detail"]["after"]) == ("POSTED", "REVERSED")
    assert a["detail"]["serial"] == "S1" and a["detail"]["amount"] == FULL
    # the bank's own reversal coming late finds it reversed
    assert ledger.reverse(rev("R1", "S1")).outcome is Outcome.ALREADY_REVERSED
    check_books(store)


def test_a_long_reason_is_kept_whole_in_the_audit_trail(office, store):
    bo, ledger, _ = office
    p = ledger.pay(pay("S1"))
    reason = "电话 " * 150  # 450 characters: bg_undo keeps 200
    bo.reverse(p.receipt_no, actor="wang", reason=reason)
    assert audits(store, "reverse")[0]["detail"]["reason"] == reason.strip()
    with store.engine.connect() as c:
        assert c.execute(sa.select(model.undo.c.reason)).scalar() == reason.strip()[:200]


def _closed(ledger, clock, store):
    p = ledger.pay(pay("S1"))
    ledger.cutoff("fixed", TODAY)
    return p.receipt_no, "closed: refund it instead"


def _printed(ledger, clock, store):
    p = ledger.pay(pay("S1"))
    with store.engine.begin() as c:
        c.execute(model.payment.update().where(model.payment.c.receipt_no == p.receipt_no)
                  .values(invoice_printed=1, invoice_no="00000001"))
    return p.receipt_no, "invoice 00000001 was printed: void the invoice first"


def _reversed(ledger, clock, store):
    p = ledger.pay(pay("S1"))
    assert ledger.reverse(rev("R1", "S1")).outcome is Outcome.OK
    return p.receipt_no, "payment is reversed"


def _pending(ledger, clock, store):
    p = ledger.pay(pay("T1", customer="100000200", amount=1000000, bank="twophase"))
    return p.receipt_no, "pending"


def _counter_yesterday(ledger, clock, store):
    r = BackOffice(ledger).counter_pay("100000123", 10000, (), actor="li", reason="x")
    clock.now += timedelta(days=1)
    return r.receipt_no, "trade date 2026-11-27 of counter is closed: refund it instead"


@pytest.mark.parametrize("case", [_closed, _printed, _reversed, _pending, _counter_yesterday])
def test_a_reversal_that_may_not_be_done_writes_nothing(office, store, clock, case):
    bo, ledger, _ = office
    receipt, message = case(ledger, clock, store)
    before = tables(store)
    with pytest.raises(Refused, match=re.escape(message)):
        bo.look_payment(receipt, "reverse")
    with pytest.raises(Refused, match=re.escape(message)):
        bo.reverse(receipt, actor="wang", reason="bank called")
    assert tables(store) == before


def test_an_unknown_receipt_is_refused_on_its_field(office, store):
    bo, _, _ = office
    for look in (lambda: bo.look_payment("20261127999999999999", "refund"),
                 lambda: bo.reverse("20261127999999999999", actor="w", reason="x")):
        with pytest.raises(Refused, match="no payment 20261127999999999999") as e:
            look()
        assert e.value.field == "receipt"


def test_a_counter_payment_is_reversed_the_same_day(office, store):
    bo, _, _ = office
    before = bills(store)
    r = bo.counter_pay("100000123", 10000, (), actor="li", reason="slip")
    bo.reverse(r.receipt_no, actor="li", reason="wrong customer")
    assert bills(store) == before
    check_books(store)


def test_a_refund_records_before_and_after(office, store, clock):
    bo, ledger, _ = office
    p = ledger.pay(pay("S1"))
    ledger.cutoff("fixed", TODAY)
    clock.now += timedelta(days=3)
    before = tables(store)
    assert bo.look_payment(p.receipt_no, "refund")["amount"] == FULL
    assert tables(store) == before  # looking changes nothing
    assert bo.refund(p.receipt_no, actor="wang", reason="moved out") \
        == f"refunded {p.receipt_no}"
    [a] = audits(store, "refund")
    assert (a["actor"], a["subject"], a["detail"]["reason"]) == ("wang", p.receipt_no,
                                                                 "moved out")
    assert (a["detail"]["before"], a["detail"]["after"]) == ("POSTED", "REFUNDED")
    with pytest.raises(Refused, match="payment is refunded"):
        bo.refund(p.receipt_no, actor="wang", reason="again")
    check_books(store)


def test_an_action_needs_a_reason_and_an_actor(office, store):
    bo, ledger, _ = office
    p = ledger.pay(pay("S1"))
    before = tables(store)
    for kw, field in (({"actor": "wang", "reason": " "}, "reason"),
                      ({"actor": "", "reason": "x"}, "actor"),
                      ({"actor": "wang", "reason": "x" * 501}, "reason")):
        with pytest.raises(BadInput) as e:
            bo.reverse(p.receipt_no, **kw)
        assert e.value.field == field
        with pytest.raises(BadInput):
            bo.counter_pay("100000123", 100, (), **kw)
    assert tables(store) == before


# -- configuration and the command line ------------------------------------------------------


def test_a_bank_named_counter_is_refused(tmp_path):
    from bankgate.app.config import ConfigError, load_config

    path = tmp_path / "bankgate.toml"
    path.write_text('[[bank]]\nname = "counter"\nplugin = "ref-fixed"\nbank_code = "1"\n',
                    encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert e.value.key == "bank[0].name"
    assert "reserved for the utility's own counter" in e.value.problem


CONFIG = """
[gateway]
data_dir = "{data}"

[database]
url = "sqlite:///{data}/bg.db"

[n8]
create = true

[[bank]]
name = "fx"
plugin = "ref-fixed"
bank_code = "105210"
"""


def test_the_commands_take_reverse_and_report_a_counter_payment(tmp_path, capsys):
    from bankgate.app.cli import main as cli
    from bankgate.app.config import load_config
    from bankgate.store import recon as rsql
    from bankgate.store.db import Store

    data = tmp_path / "var"
    path = tmp_path / "bankgate.toml"
    path.write_text(CONFIG.format(data=data), encoding="utf-8")
    c = ["-c", str(path)]
    assert cli([*c, "demo", "seed", "--customers", "20"]) == 0
    store = Store(load_config(path).db_url, threads=1)
    customer = store.run_sync(rsql.customers_with_open_bills, (), 1)[0]
    capsys.readouterr()

    assert cli([*c, "counter", "pay", customer, "12.5", "--reason", "slip 7",
                "--actor", "wang"]) == 0
    out = capsys.readouterr().out
    receipt = re.match(r"receipt (\d{20}): 12\.50 yuan from " + customer, out).group(1)
    assert "serial counter-" in out

    assert cli([*c, "report", "collections", "--by", "bank", "--format", "csv"]) == 0
    counter_row = [ln for ln in capsys.readouterr().out.splitlines()
                   if ln.startswith("counter,")]
    assert len(counter_row) == 1 and ",1,12.50," in counter_row[0]

    assert cli([*c, "counter", "pay", customer, "12.505", "--reason", "x"]) == 2
    assert "counter pay: amount: expected yuan" in capsys.readouterr().err
    assert cli([*c, "counter", "pay", "999999999", "1", "--reason", "x"]) == 1
    assert "refused: no customer 999999999 in N8" in capsys.readouterr().err

    assert cli([*c, "reverse", receipt, "--reason", "wrong customer", "--actor", "li"]) == 0
    assert capsys.readouterr().out.strip() == f"OK: reversed {receipt}"
    assert cli([*c, "reverse", receipt, "--reason", "again", "--actor", "li"]) == 1
    assert "refused: payment is reversed (nothing was changed)" in capsys.readouterr().err
    with store.engine.connect() as conn:
        done = [(r.action, r.actor, r.subject) for r in conn.execute(
            sa.select(model.audit).where(model.audit.c.action.in_(("counter-pay", "reverse")))
            .order_by(model.audit.c.id))]
    assert done == [("counter-pay", "wang", receipt), ("reverse", "li", receipt)]
    store.stop()
