"""Reconciliation (对账/平帐) against the ledger, on every database.

Every statement here is written by hand from the specs (ref-fixed §8,
ref-delim §5, ref-iso8583 §6) -- never by the plugins' writers -- and every
expected error file too.  Each test checks the books afterwards: what was
posted and reversed, with which run, what the run stored, and that the
gateway's totals equal the statement's or that the open exceptions explain
the difference to the fen.
"""

from __future__ import annotations

import threading
from datetime import date, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from ledger_helpers import TODAY, check_books, count, pay, rev

from bankgate.app.config import BankConfig, ReconPolicy
from bankgate.canon import messages as m
from bankgate.canon.messages import Outcome
from bankgate.codec.registry import load_codec
from bankgate.domain import reconcile as R
from bankgate.domain.ledger import Ledger
from bankgate.store import model
from bankgate.store import recon as sql

YESTERDAY = TODAY - timedelta(days=1)
FIXED = load_codec("ref-fixed")
DELIM = load_codec("ref-delim")
ISO = load_codec("ref-iso8583")


# -- statements by hand, from the specs ------------------------------------------------


def fixed_statement(code: str, recs, d: date = TODAY, count_: int | None = None,
                    total: int | None = None) -> bytes:
    """ref-fixed §8: H + settle_date N8 + bank_code X6 + count N8 + total N15, then
    D + serial X20 + trade_date N8 + trade_time N6 + customer X20 + amount N12 +
    channel X2; GBK, CRLF."""
    n = len(recs) if count_ is None else count_
    t = sum(r[3] for r in recs) if total is None else total
    lines = [f"H{d:%Y%m%d}{code:<6}{n:08d}{t:015d}"]
    for serial, td, cust, amount, *rest in recs:
        tt = rest[0] if rest else "093000"
        lines.append(f"D{serial:<20}{td:%Y%m%d}{tt}{cust:<20}{amount:012d}04")
    for ln in lines:
        assert len(ln.encode("gbk")) in (38, 69), ln
    return "".join(ln + "\r\n" for ln in lines).encode("gbk")


def yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def delim_statement(recs, d: date = TODAY, count_: int | None = None,
                    total: int | None = None) -> bytes:
    """ref-delim §5: serial|trade_datetime|customer|amount|channel|bill_ids| then
    0|settle_date|count|total|; yuan, GBK, LF."""
    lines = [f"{s}|{td:%Y%m%d}101500|{c}|{yuan(a)}|05|{','.join(bills)}|"
             for s, td, c, a, bills in recs]
    n = len(recs) if count_ is None else count_
    t = sum(r[3] for r in recs) if total is None else total
    lines.append(f"0|{d:%Y%m%d}|{n}|{yuan(t)}|")
    return "".join(ln + "\n" for ln in lines).encode("gbk")


def iso_statement(recs, d: date = TODAY) -> bytes:
    """ref-iso8583 §6: the literal header row, then one row per payment; fen; UTF-8."""
    rows = ["settle_date,rrn,stan,trade_date,trade_time,terminal_id,customer_no,amount,pan_masked"]
    for i, (rrn, td, c, a) in enumerate(recs):
        rows.append(f"{d:%Y%m%d},{rrn},{i + 1:06d},{td:%Y%m%d},101500,ATM00001,{c},{a},"
                    "622202******1234")
    return "".join(r + "\n" for r in rows).encode("utf-8")


# -- fixtures ---------------------------------------------------------------------------


def bank_cfg(name: str, plugin: str, code: str, tmp_path: Path, **policy) -> BankConfig:
    return BankConfig(name=name, plugin=plugin, bank_code=code,
                      exchange_dir=str(tmp_path / "exchange" / name),
                      reconcile=ReconPolicy(**{"pdf": False, **policy}))


def reconciler(ledger: Ledger, tmp_path: Path, name: str = "any", plugin: str = "ref-fixed",
               code: str = "106210", **policy):
    codec = {"ref-fixed": FIXED, "ref-delim": DELIM, "ref-iso8583": ISO}[plugin]
    return R.Reconciler(ledger, bank_cfg(name, plugin, code, tmp_path, **policy), codec,
                        data_dir=str(tmp_path))


def ok(result):
    assert result.outcome is Outcome.OK, result
    return result


def payment(store, bank: str, serial: str, d: date = TODAY) -> dict | None:
    p = model.payment
    with store.engine.connect() as c:
        rows = c.execute(sa.select(p).where(p.c.bank == bank, p.c.trade_date == d,
                                            p.c.serial == serial)).mappings().all()
    return dict(rows[0]) if rows else None


def snapshot(store) -> tuple:
    """Everything balancing may change: payments, undo rows, journal, bills."""
    with store.engine.connect() as c:
        pays = sorted(tuple(r) for r in c.execute(sa.select(
            model.payment.c.id, model.payment.c.status, model.payment.c.amount,
            model.payment.c.source, model.payment.c.run_id)))
        undos = sorted(tuple(r) for r in c.execute(sa.select(
            model.undo.c.payment_id, model.undo.c.kind, model.undo.c.run_id)))
        journal = c.execute(sa.select(sa.func.count()).select_from(model.journal)).scalar()
    with store.n8_engine.connect() as c:
        b = store.n8["bill"]
        bills = sorted(tuple(r) for r in c.execute(sa.select(b.c.bill_id, b.c.paid_amount,
                                                             b.c.late_fee_paid)))
    return pays, undos, journal, bills


def by_serial(rep) -> dict[str, object]:
    return {i.serial: i for i in rep.items if i.serial}


# -- the categories, on every database -----------------------------------------------------


def online_day(ledger):
    """The gateway's day for bank 'any': four payments and a reversed fifth."""
    ok(ledger.pay(pay("S001", "100000123", 15000, bank="any")))
    ok(ledger.pay(pay("S002", "100000200", 20000, bank="any")))
    ok(ledger.pay(pay("S003", "100000200", 30000, bank="any")))
    ok(ledger.pay(pay("S004", "100000123", 10000, bank="any")))
    ok(ledger.pay(pay("S008", "100000123", 5000, bank="any")))
    ok(ledger.reverse(rev("R008", "S008", "100000123", 5000, bank="any")))


BANK_FILE = [
    ("S001", TODAY, "100000123", 15000),  # matched
    ("S003", TODAY, "100000200", 30100),  # amount differs
    ("S004", YESTERDAY, "100000123", 10000),  # date differs
    ("S005", TODAY, "100000200", 50000),  # bank only: posted after the fact
    ("S006", TODAY, "999999999", 10000),  # bank only: no such customer
    ("S007", TODAY, "100000300", 10000),  # bank only: customer suspended
]


def test_every_category_is_found_and_balanced(ledger, store, tmp_path):
    online_day(ledger)
    rec = reconciler(ledger, tmp_path)
    rep = rec.reconcile(fixed_statement("106210", BANK_FILE), TODAY, source="hand")
    items = by_serial(rep)
    assert {s: (i.category, i.action) for s, i in items.items()} == {
        "S002": ("UTILITY_ONLY", "REVERSED"),
        "S003": ("AMOUNT_DIFFERS", "EXCEPTION"),
        "S004": ("DATE_DIFFERS", "EXCEPTION"),
        "S005": ("BANK_ONLY", "POSTED"),
        "S006": ("BANK_ONLY", "EXCEPTION"),
        "S007": ("BANK_ONLY", "EXCEPTION"),
    }
    assert rep.counts == {"MATCHED": 1, "BANK_ONLY": 3, "UTILITY_ONLY": 1,
                          "AMOUNT_DIFFERS": 1, "DATE_DIFFERS": 1}
    assert "not found" in items["S006"].detail and "suspended" in items["S007"].detail
    assert "bank 301.00, utility 300.00" in items["S003"].detail
    assert "2026-11-26" in items["S004"].detail
    # the automatic changes are journal entries of this run
    s002 = payment(store, "any", "S002")
    assert s002["status"] == "REVERSED"
    s005 = payment(store, "any", "S005")
    assert (s005["status"], s005["source"], s005["run_id"], s005["amount"]) == (
        "POSTED", "recon", rep.run_id, 50000)
    assert s005["channel"] == m.Channel.RECONCILIATION.value
    with store.engine.connect() as c:
        undo = c.execute(sa.select(model.undo).where(
            model.undo.c.payment_id == s002["id"])).mappings().one()
        assert (undo["kind"], undo["run_id"]) == ("RECON", rep.run_id)
        actions = {r[0] for r in c.execute(sa.select(model.audit.c.action))}
    assert {"post", "reverse-local", "cutoff", "reconcile"} <= actions
    # exceptions and the rest untouched
    assert payment(store, "any", "S003")["amount"] == 30000
    assert payment(store, "any", "S006") is None
    # totals: statement 6 / 1251.00; gateway S001 S003 S004 S005 = 4 / 1050.00
    assert (rep.bank_count, rep.bank_total) == (6, 125100)
    assert (rep.ours_count, rep.ours_total) == (4, 105000)
    assert rep.gap == rep.explained == (2, 20100)
    assert rep.status == "EXCEPTIONS"
    # the date is closed (reason recon) and a status query shows what happened
    assert ledger.pay(pay("S099", bank="any", amount=100)).outcome is Outcome.DATE_CLOSED
    st = ledger.status(m.StatusRequest(m.Origin("any", TODAY), "S005", TODAY))
    assert st.status is m.PaymentStatus.POSTED
    st = ledger.status(m.StatusRequest(m.Origin("any", TODAY), "S002", TODAY))
    assert st.status is m.PaymentStatus.REVERSED
    check_books(store)
    # the run and its items are stored
    run = store.run_sync(sql.run_get, rep.run_id)
    assert run["status"] == "EXCEPTIONS" and run["dry_run"] == 0
    assert (run["bank_count"], run["bank_total"], run["ours_count"], run["ours_total"]) == (
        6, 125100, 4, 105000)
    stored = store.run_sync(sql.items, rep.run_id, matched=True)
    assert sorted((i["serial"], i["category"], i["action"]) for i in stored) == sorted(
        [("S001", "MATCHED", "NONE")] + [(s, i.category, i.action) for s, i in items.items()])
    assert store.run_sync(sql.open_exceptions, "any") and all(
        e["action"] == "EXCEPTION" for e in store.run_sync(sql.open_exceptions, "any"))
    with store.engine.connect() as c:
        cut = c.execute(sa.select(model.cutoff)).mappings().one()
    assert cut["reason"] == "recon"


def test_the_same_file_again_changes_nothing(ledger, store, tmp_path):
    online_day(ledger)
    rec = reconciler(ledger, tmp_path)
    data = fixed_statement("106210", BANK_FILE)
    first = rec.reconcile(data, TODAY)
    before = snapshot(store)
    again = rec.reconcile(data, TODAY)
    assert snapshot(store) == before
    assert {s: i.category for s, i in by_serial(again).items()} == {
        s: i.category for s, i in by_serial(first).items()}
    items = by_serial(again)
    assert items["S002"].action == "NONE" and f"run {first.run_no}" in items["S002"].detail
    assert items["S005"].action == "NONE" and f"run {first.run_no}" in items["S005"].detail
    assert not again.changes
    assert again.gap == again.explained == first.gap
    # one statement row for the same bytes
    assert count(store, model.statement) == 1 and count(store, model.recon_run) == 2
    check_books(store)


def test_a_corrected_file_changes_only_what_differs(ledger, store, tmp_path):
    online_day(ledger)
    rec = reconciler(ledger, tmp_path)
    first = rec.reconcile(fixed_statement("106210", BANK_FILE), TODAY)
    # the bank corrects S003's amount and S004's date, withdraws S006 and S007,
    # and after all did not collect S005 (which the first run posted)
    corrected = [("S001", TODAY, "100000123", 15000), ("S003", TODAY, "100000200", 30000),
                 ("S004", TODAY, "100000123", 10000)]
    before = snapshot(store)
    rep = rec.reconcile(fixed_statement("106210", corrected), TODAY)
    items = by_serial(rep)
    assert {s: (i.category, i.action) for s, i in items.items()} == {
        "S002": ("UTILITY_ONLY", "NONE"),  # reversed by the first run
        "S005": ("UTILITY_ONLY", "REVERSED"),  # the only change
    }
    assert rep.counts["MATCHED"] == 3
    after = snapshot(store)
    changed = {p[0] for p in set(after[0]) ^ set(before[0])}
    assert changed == {payment(store, "any", "S005")["id"]}
    assert rep.status == "BALANCED" and rep.gap == (0, 0)
    assert (rep.ours_count, rep.ours_total) == (3, 55000)
    # the first run's exceptions are resolved by this one
    assert rep.resolved == 4
    old = store.run_sync(sql.items, first.run_id)
    assert {i["serial"]: i["action"] for i in old if i["category"] != "MATCHED"}["S003"] == (
        "RESOLVED")
    assert store.run_sync(sql.open_exceptions, "any") == []
    check_books(store)


def test_bank_only_record_of_a_serial_reversed_earlier_goes_to_an_operator(
        ledger, store, tmp_path):
    ok(ledger.pay(pay("S001", "100000123", 15000, bank="any")))
    ok(ledger.pay(pay("S002", "100000123", 15000, bank="any")))
    ok(ledger.reverse(rev("R002", "S002", "100000123", 15000, bank="any")))
    # the bank reversed S003 before its payment ever arrived (reversal first)
    assert ledger.reverse(rev("R003", "S003", "100000123", 100, bank="any")).outcome is (
        Outcome.ORIGINAL_NOT_FOUND)
    # and the gateway refused S004 online
    assert ledger.pay(pay("S004", "999999999", 100, bank="any")).outcome is Outcome.NOT_FOUND
    rec = reconciler(ledger, tmp_path)
    recs = [("S001", TODAY, "100000123", 15000), ("S002", TODAY, "100000123", 15000),
            ("S003", TODAY, "100000123", 100), ("S004", TODAY, "100000123", 100)]
    rep = rec.reconcile(fixed_statement("106210", recs), TODAY)
    items = by_serial(rep)
    assert {s: (i.category, i.action) for s, i in items.items()} == {
        "S002": ("BANK_ONLY", "EXCEPTION"), "S003": ("BANK_ONLY", "EXCEPTION"),
        "S004": ("BANK_ONLY", "EXCEPTION")}
    assert "reversed at the utility" in items["S002"].detail
    assert "reversal first" in items["S003"].detail
    assert "refused this payment online (NOT_FOUND)" in items["S004"].detail
    assert rep.gap == rep.explained == (3, 15200)
    check_books(store)


def test_two_phase_payment_the_bank_lists_is_confirmed(ledger, store, tmp_path):
    ok(ledger.pay(pay("T001", "100000123", 548000, bank="twophase")))  # exact policy
    ok(ledger.pay(pay("T002", "100000200", 1000000, bank="twophase")))
    assert payment(store, "twophase", "T001")["status"] == "PENDING"
    rec = reconciler(ledger, tmp_path, name="twophase", code="108210")
    rep = rec.reconcile(fixed_statement("108210", [("T001", TODAY, "100000123", 548000)]),
                        TODAY)
    assert payment(store, "twophase", "T001")["status"] == "POSTED"
    assert payment(store, "twophase", "T002")["status"] == "REVERSED"
    assert rep.status == "BALANCED" and rep.counts == {"MATCHED": 1, "UTILITY_ONLY": 1}
    check_books(store)


# -- policies ----------------------------------------------------------------------------


def test_policy_exceptions_instead_of_automatic_changes(ledger, store, tmp_path):
    online_day(ledger)
    rec = reconciler(ledger, tmp_path, bank_only="exception", utility_only="exception")
    before = snapshot(store)
    rep = rec.reconcile(fixed_statement("106210", BANK_FILE), TODAY)
    assert snapshot(store)[1:] == before[1:] and not rep.changes
    items = by_serial(rep)
    assert items["S005"].action == items["S002"].action == "EXCEPTION"
    assert "policy" in items["S005"].detail and "policy" in items["S002"].detail
    assert rep.gap == rep.explained


def test_header_totals_differ_hold_every_change(ledger, store, tmp_path):
    online_day(ledger)
    rec = reconciler(ledger, tmp_path)
    data = fixed_statement("106210", BANK_FILE, count_=7, total=999999)
    before = snapshot(store)
    rep = rec.reconcile(data, TODAY)
    assert snapshot(store)[1:] == before[1:]
    tot = [i for i in rep.items if i.category == "TOTALS_DIFFER"]
    assert len(tot) == 1 and tot[0].action == "EXCEPTION"
    assert (tot[0].bank_amount, tot[0].our_amount) == (999999, 125100)
    assert "7 records" in tot[0].detail and "6 records" in tot[0].detail
    assert all(i.action in ("EXCEPTION", "NONE") for i in rep.items)
    assert rep.gap == rep.explained
    # with totals_differ = "balance" the same file is balanced anyway
    rec2 = reconciler(ledger, tmp_path, totals_differ="balance")
    rep2 = rec2.reconcile(data, TODAY)
    assert {i.serial for i in rep2.changes} == {"S002", "S005"}
    assert rep2.status == "EXCEPTIONS" and rep2.gap == rep2.explained


def test_dry_run_changes_nothing_and_leaves_the_date_open(ledger, store, tmp_path):
    online_day(ledger)
    rec = reconciler(ledger, tmp_path)
    before = snapshot(store)
    rep = rec.reconcile(fixed_statement("106210", BANK_FILE), TODAY, dry_run=True)
    assert snapshot(store) == before
    assert count(store, model.cutoff) == 0
    items = by_serial(rep)
    assert items["S005"].detail.startswith("dry run: would post")
    assert items["S002"].detail.startswith("dry run: would reverse")
    assert store.run_sync(sql.run_get, rep.run_id)["dry_run"] == 1
    assert store.run_sync(sql.reconciled_dates, "any", TODAY) == set()
    ok(ledger.pay(pay("S100", "100000123", 100, bank="any")))


# -- the other two formats -------------------------------------------------------------------


def test_ref_delim_posts_against_the_named_bills_and_writes_the_error_file(
        ledger, store, tmp_path):
    # bank "partial" speaks ref-delim; B0002 (150.00, not yet due) and B0010 are open
    ok(ledger.pay(pay("D001", "100000123", 15000, bank="partial", bill_ids=("B0002",))))
    ok(ledger.pay(pay("D002", "100000200", 40000, bank="partial", bill_ids=())))
    ok(ledger.pay(pay("D003", "100000200", 1000, bank="partial")))
    rec = reconciler(ledger, tmp_path, name="partial", plugin="ref-delim", code="103210")
    recs = [
        ("D001", TODAY, "100000123", 15000, ("B0002",)),  # matched
        ("D002", TODAY, "100000200", 40100, ()),  # amount differs
        ("D004", TODAY, "100000123", 260000, ("B0003",)),  # bank only: B0003 open, posted
        ("D005", TODAY, "100000123", 15000, ("B0002",)),  # bank only: B0002 paid by D001
        ("D006", YESTERDAY, "100000200", 500, ()),  # date differs
    ]
    rep = rec.reconcile(delim_statement(recs), TODAY)
    items = by_serial(rep)
    assert {s: (i.category, i.action) for s, i in items.items()} == {
        "D002": ("AMOUNT_DIFFERS", "EXCEPTION"), "D003": ("UTILITY_ONLY", "REVERSED"),
        "D004": ("BANK_ONLY", "POSTED"), "D005": ("BANK_ONLY", "EXCEPTION"),
        "D006": ("DATE_DIFFERS", "EXCEPTION")}
    assert "no longer open" in items["D005"].detail
    b = store.n8["bill"]
    d004 = payment(store, "partial", "D004")["id"]
    with store.n8_engine.connect() as c:
        paid = dict(c.execute(sa.select(b.c.bill_id, b.c.paid_amount)).all())
    with store.engine.connect() as c:
        alloc = c.execute(sa.select(model.allocation.c.bill_id).where(
            model.allocation.c.payment_id == d004)).all()
    assert paid["B0003"] == 260000 and [a[0] for a in alloc] == ["B0003"]
    # §5: every discrepancy, balanced or not, by serial, then -1|count|
    expected = (b"04|D002|20261127|\n03|D003|20261127|\n02|D004|20261127|\n"
                b"02|D005|20261127|\n01|D006|20261127|\n-1|5|\n")
    path = Path(rep.outputs["error_file"])
    assert path == tmp_path / "exchange" / "partial" / "10321020261127.DZCW"
    assert path.read_bytes() == expected
    # the same statement again: the same error file, nothing else changes
    path.unlink()
    before = snapshot(store)
    again = rec.reconcile(delim_statement(recs), TODAY)
    assert snapshot(store) == before
    assert Path(again.outputs["error_file"]).read_bytes() == expected
    check_books(store)


def test_ref_delim_with_nothing_to_report_writes_the_empty_error_file(ledger, store, tmp_path):
    ok(ledger.pay(pay("D001", "100000123", 15000, bank="partial", bill_ids=("B0002",))))
    rec = reconciler(ledger, tmp_path, name="partial", plugin="ref-delim", code="103210")
    rep = rec.reconcile(delim_statement([("D001", TODAY, "100000123", 15000, ("B0002",))]),
                        TODAY)
    assert rep.status == "BALANCED"
    assert Path(rep.outputs["error_file"]).read_bytes() == b"-1|0|\n"


def test_ref_delim_trailer_disagreeing_is_totals_differ(ledger, store, tmp_path):
    ok(ledger.pay(pay("D001", "100000123", 15000, bank="partial", bill_ids=("B0002",))))
    rec = reconciler(ledger, tmp_path, name="partial", plugin="ref-delim", code="103210")
    data = delim_statement([("D001", TODAY, "100000123", 15000, ("B0002",))], count_=2,
                           total=30000)
    rep = rec.reconcile(data, TODAY)
    assert rep.counts == {"MATCHED": 1, "TOTALS_DIFFER": 1}
    assert rep.status == "EXCEPTIONS" and rep.gap == rep.explained == (0, 0)


def test_ref_iso8583_statement(ledger, store, tmp_path):
    ok(ledger.pay(pay("000000000001", "100000123", 15000, bank="any")))
    ok(ledger.pay(pay("000000000002", "100000200", 25000, bank="any")))
    rec = reconciler(ledger, tmp_path, name="any", plugin="ref-iso8583", code="106210")
    recs = [("000000000001", TODAY, "100000123", 15000),
            ("000000000003", TODAY, "100000200", 35000)]
    rep = rec.reconcile(iso_statement(recs), TODAY)
    assert {s: (i.category, i.action) for s, i in by_serial(rep).items()} == {
        "000000000002": ("UTILITY_ONLY", "REVERSED"), "000000000003": ("BANK_ONLY", "POSTED")}
    assert rep.status == "BALANCED" and (rep.ours_count, rep.ours_total) == (2, 50000)
    assert "error_file" not in rep.outputs
    check_books(store)


# -- bad files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("data, message", [
    (b"", "line 1"),
    (b"H20261127106210000000010000000000001000\r\nDshort\r\n", "line 2"),
    (fixed_statement("105210", [("S1", TODAY, "100000123", 1)]), "105210"),
    (fixed_statement("106210", [("S1", TODAY, "100000123", 1)], d=YESTERDAY), "2026-11-26"),
    (fixed_statement("106210", [("S1", TODAY, "100000123", 1), ("S1", TODAY, "100000123", 2)]),
     "S1"),
])
def test_an_unusable_statement_is_a_failed_run_and_changes_nothing(ledger, store, tmp_path,
                                                                   data, message):
    ok(ledger.pay(pay("S001", "100000123", 15000, bank="any")))
    rec = reconciler(ledger, tmp_path)
    before = snapshot(store)
    with pytest.raises(R.StatementError, match=message):
        rec.reconcile(data, TODAY)
    assert snapshot(store) == before and count(store, model.cutoff) == 0
    runs = store.run_sync(sql.runs, "any")
    assert [r["status"] for r in runs] == ["FAILED"] and message in runs[0]["summary"]["error"]
    assert store.run_sync(sql.lock_get, "any", TODAY) is None


def test_errors_name_the_line_of_the_file_across_chunks(ledger, tmp_path):
    recs = [(f"S{i:04d}", TODAY, "100000123", 100) for i in range(25)]
    lines = fixed_statement("106210", recs).split(b"\r\n")
    lines[17] = lines[17][:40]  # line 18 of the file
    fmt = R.statement_format(FIXED)
    with pytest.raises(R.StatementError, match="line 18"):
        fmt.read(b"\r\n".join(lines), "106210", TODAY, chunk=7)
    rows = delim_statement([(f"D{i:03d}", TODAY, "100000123", 100, ()) for i in range(25)]
                           ).split(b"\n")
    rows[11] = b"D011|2026112710|100000123|1.00|05||"
    with pytest.raises(R.StatementError, match="line 12"):
        R.statement_format(DELIM).read(b"\n".join(rows), "103210", TODAY, chunk=5)


def test_chunked_reading_gives_what_the_plugin_reader_gives(tmp_path):
    recs = [(f"S{i:05d}", TODAY if i % 7 else YESTERDAY, f"1000{i:05d}", 100 + i)
            for i in range(1000)]
    data = fixed_statement("106210", recs)
    st = R.statement_format(FIXED).read(data, "106210", TODAY, chunk=37)
    _, whole = FIXED.read_statement(data)
    assert [(r.serial, r.trade_date, r.customer_no, r.amount) for r in st.records] == [
        (r["serial"], r["trade_date"], r["customer_no"], r["amount"]) for r in whole]
    assert (st.declared_count, st.declared_total, st.totals_differ) == (1000, st.total, False)
    drecs = [(s, td, c, a, ("B1", "B2") if a % 2 else ()) for s, td, c, a in recs]
    st = R.statement_format(DELIM).read(delim_statement(drecs), "103210", TODAY, chunk=41)
    whole, _ = DELIM.read_statement(delim_statement(drecs))
    assert [(r.serial, r.amount, r.bill_ids) for r in st.records] == [
        (r["serial"], r["amount"], r["bill_ids"]) for r in whole]
    st = R.statement_format(ISO).read(iso_statement(recs), "104210", TODAY, chunk=53)
    assert [(r.serial, r.trade_date, r.amount) for r in st.records] == [
        (s, td, a) for s, td, _, a in recs]


# -- the lock: one run per bank and date, also across processes ------------------------------


def second_store(store, tmp_path):
    """Another Store on the same database: a second gateway process."""
    from bankgate.store.db import Store

    return Store(store.url, store.mapping, threads=4, n8_url=store.n8_url)


def test_one_run_per_bank_and_date_across_two_processes(ledger, store, tmp_path):
    from conftest import BANKS, FakeClock

    online_day(ledger)
    other = second_store(store, tmp_path)
    try:
        ledger2 = Ledger(other, dict(BANKS), now=FakeClock())
        a = reconciler(ledger, tmp_path)
        b = reconciler(ledger2, tmp_path)
        data = fixed_statement("106210", BANK_FILE)
        inside = threading.Event()
        go_on = threading.Event()
        results: dict = {}

        def hold(phase, done, total):
            if phase == "match" and not inside.is_set():
                inside.set()
                assert go_on.wait(60)

        def run_a():
            results["a"] = a.reconcile(data, TODAY, progress=hold)

        t = threading.Thread(target=run_a)
        t.start()
        assert inside.wait(60)
        with pytest.raises(R.ReconBusy, match="being reconciled by"):
            b.reconcile(data, TODAY)
        go_on.set()
        t.join(60)
        assert results["a"].status == "EXCEPTIONS"
        # once the first is done the second may run: a re-run, changing nothing
        before = snapshot(store)
        rep = b.reconcile(data, TODAY)
        assert snapshot(store) == before and not rep.changes
        assert store.run_sync(sql.lock_get, "any", TODAY) is None
    finally:
        other.stop()


def test_concurrent_runs_from_two_processes_never_double_post(ledger, store, tmp_path):
    from conftest import BANKS, FakeClock

    online_day(ledger)
    other = second_store(store, tmp_path)
    try:
        recs = [reconciler(ledger, tmp_path),
                reconciler(Ledger(other, dict(BANKS), now=FakeClock()), tmp_path)]
        data = fixed_statement("106210", BANK_FILE)
        barrier = threading.Barrier(2)
        out: list = []

        def run(r):
            barrier.wait()
            try:
                out.append(r.reconcile(data, TODAY).status)
            except R.ReconBusy:
                out.append("busy")

        threads = [threading.Thread(target=run, args=(r,)) for r in recs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(out) in (["EXCEPTIONS", "EXCEPTIONS"], ["EXCEPTIONS", "busy"])
        with store.engine.connect() as c:
            posted = c.execute(sa.select(sa.func.count()).select_from(model.payment).where(
                model.payment.c.source == "recon")).scalar()
        assert posted == 1
        check_books(store)
    finally:
        other.stop()


def test_a_stale_lock_of_a_crashed_process_is_taken_over(ledger, store, tmp_path, clock):
    online_day(ledger)
    store.run_sync(sql.lock_acquire, "any", TODAY, "dead-host:123:x", clock.now - timedelta(
        hours=2), 1800)
    rec = reconciler(ledger, tmp_path)
    rep = rec.reconcile(fixed_statement("106210", BANK_FILE), TODAY)
    assert rep.status == "EXCEPTIONS"
    with store.engine.connect() as c:
        actions = [r[0] for r in c.execute(sa.select(model.audit.c.action))]
    assert "recon-lock-takeover" in actions
    # a fresh lock is respected
    store.run_sync(sql.lock_acquire, "any", TODAY, "live-host:1:y", clock.now, 1800)
    with pytest.raises(R.ReconBusy, match="live-host"):
        rec.reconcile(fixed_statement("106210", BANK_FILE), TODAY)


# -- bulk matching with several workers ------------------------------------------------------


def test_parallel_balancing_gives_the_same_books(store, tmp_path, clock):
    from conftest import BANKS, seed_fixture
    from ledger_helpers import bills

    seed_fixture(store)
    store.initial_paid = bills(store)
    ledger = Ledger(store, dict(BANKS), now=clock)
    for i in range(30):
        ok(ledger.pay(pay(f"S{i:03d}", "100000200", 1000 + i, bank="any")))
    recs = [(f"S{i:03d}", TODAY, "100000200", 1000 + i) for i in range(0, 30, 2)]
    recs += [(f"X{i:03d}", TODAY, c, 500 + i) for i, c in enumerate(
        ["100000123", "100000200"] * 10)]
    rec = reconciler(ledger, tmp_path, workers=4)
    rep = rec.reconcile(fixed_statement("106210", recs), TODAY)
    assert len([i for i in rep.changes if i.action == "POSTED"]) == 20
    assert len([i for i in rep.changes if i.action == "REVERSED"]) == 15
    assert rep.status == "BALANCED" and rep.gap == (0, 0)
    check_books(store)


# -- outputs ----------------------------------------------------------------------------------


def test_reports_on_disk(ledger, store, tmp_path):
    online_day(ledger)
    rec = reconciler(ledger, tmp_path, pdf=True)
    rep = rec.reconcile(fixed_statement("106210", BANK_FILE), TODAY, source="hand")
    out = rep.outputs
    base = tmp_path / "reports" / "any" / f"any_20261127_run{rep.run_no}"
    assert out == {"text": f"{base}.txt", "csv": f"{base}.csv", "pdf": f"{base}.pdf"}
    text = Path(out["text"]).read_text("utf-8")
    assert "EXCEPTIONS" in text and "explained by 4 open exception(s)" in text
    rows = Path(out["csv"]).read_text("utf-8-sig").splitlines()
    assert rows[0].startswith("run_id,bank,settle_date,category,serial")
    assert any(",S003,100000200,301.00,300.00,EXCEPTION," in r for r in rows)
    assert len(rows) == 1 + 6
    pdf = Path(out["pdf"]).read_bytes()
    assert pdf.startswith(b"%PDF") and b"+WenQuanYiMicroHei" in pdf  # embedded, not named


def test_merge_refuses_a_database_that_does_not_sort_by_code_point():
    recs = R.Records()
    for s in ("a", "b"):
        recs.add(s, TODAY, "1", 1)
    order = R.sort_order(recs)
    ours = iter([("b", "1", 1, "POSTED", 1, "online", None, None, None),
                 ("a", "1", 1, "POSTED", 2, "online", None, None, None)])
    with pytest.raises(R._OrderError):
        list(R.merge(recs, order, ours))
