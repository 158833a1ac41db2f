"""Reconciliation as an accountant reads it, on every database: run numbers per
bank, dry runs that use no number and say what the real run would end as,
resolved exceptions that stay resolved, reports that list what was done --
and migration 0004 numbering the runs of an existing database."""

from __future__ import annotations

import threading
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import NOW, make_store
from ledger_helpers import TODAY, check_books, pay
from test_recon import (
    BANK_FILE,
    by_serial,
    fixed_statement,
    ok,
    online_day,
    reconciler,
    snapshot,
)

from bankgate.domain import recon_report
from bankgate.store import migrations, model
from bankgate.store import recon as sql
from bankgate.store.db import Store
from bankgate.store.n8 import N8Mapping

# the gateway's day for 'any' minus S002 (which the bank never collected) plus S005
# (which the gateway never saw): the real run posts one and reverses one -> BALANCED
BALANCING = [("S001", TODAY, "100000123", 15000), ("S003", TODAY, "100000200", 30000),
             ("S004", TODAY, "100000123", 10000), ("S005", TODAY, "100000200", 50000)]


def test_a_dry_run_takes_no_number_and_says_what_the_real_run_would_end_as(
        ledger, store, tmp_path):
    online_day(ledger)
    rec = reconciler(ledger, tmp_path)
    data = fixed_statement("106210", BALANCING)
    before = snapshot(store)
    dry = rec.reconcile(data, TODAY, dry_run=True)
    assert snapshot(store) == before  # nothing changed
    assert dry.run_no is None and dry.label == "dry run"
    # what the real run would end as, not EXCEPTIONS
    assert dry.status == "BALANCED" and dry.gap == (0, 0) and not dry.exceptions
    assert (dry.ours_count, dry.ours_total) == (4, 105000)  # as the real run leaves it
    text = recon_report.summary_text(dry)
    assert text.splitlines()[0] == "DRY RUN — nothing was changed"
    assert "(dry run): would post 1, would reverse 1 → BALANCED" in text
    assert "would post after the fact (补销): 1" in text and "S005" in text
    assert "would reverse locally (抹账): 1" in text and "S002" in text
    # the reports: named _dryrun, marked in their content
    base = tmp_path / "reports" / "any" / "any_20261127_dryrun"
    assert dry.outputs == {"text": f"{base}.txt", "csv": f"{base}.csv"}
    assert Path(dry.outputs["text"]).read_text("utf-8").startswith(
        "DRY RUN — nothing was changed\n")
    rows = Path(dry.outputs["csv"]).read_text("utf-8-sig").splitlines()
    assert rows[0].endswith(",run_no") and len(rows) == 3
    assert all(r.endswith(",DRY RUN") for r in rows[1:])
    assert not list((tmp_path / "reports" / "any").glob("*_run*"))
    stored = store.run_sync(sql.run_get, dry.run_id)
    assert (stored["dry_run"], stored["run_no"], stored["status"]) == (1, None, "BALANCED")

    # the real run is run 1 of its bank, and ends as the dry run said
    real = rec.reconcile(data, TODAY)
    assert real.run_no == 1 and real.status == "BALANCED"
    assert real.run_id != dry.run_id
    assert {i.serial: i.action for i in real.changes} == {"S002": "REVERSED", "S005": "POSTED"}
    assert Path(real.outputs["text"]).name == "any_20261127_run1.txt"
    check_books(store)


def test_the_pdf_of_a_dry_run_says_so_on_every_page(ledger, store, tmp_path):
    from invoice_helpers import pdf_strings

    online_day(ledger)
    rec = reconciler(ledger, tmp_path, pdf=True)
    dry = rec.reconcile(fixed_statement("106210", BALANCING), TODAY, dry_run=True)
    assert Path(dry.outputs["pdf"]).name == "any_20261127_dryrun.pdf"
    text = " ".join(pdf_strings(Path(dry.outputs["pdf"]).read_bytes()).split())
    assert "DRY RUN — nothing was changed" in text
    assert "would post 1, would reverse 1 → BALANCED" in text
    assert "What the real run would change (nothing was changed)" in text
    assert "将补销 would post (dry run)" in text and "Gateway after the real run" in text
    assert "Run " not in text.replace("Dry run", "")  # no run number on a dry run
    real = rec.reconcile(fixed_statement("106210", BALANCING), TODAY)
    text = pdf_strings(Path(real.outputs["pdf"]).read_bytes())
    assert "运行号 Run 1" in text and "run 1" in text and "DRY RUN" not in text


def test_the_text_report_of_a_balanced_run_lists_what_was_posted_and_reversed(
        ledger, store, tmp_path):
    online_day(ledger)
    rep = reconciler(ledger, tmp_path).reconcile(fixed_statement("106210", BALANCING), TODAY)
    assert rep.status == "BALANCED"
    text = Path(rep.outputs["text"]).read_text("utf-8")
    assert text.startswith("reconciliation any 2026-11-27 run 1: BALANCED\n")
    assert "the gateway's totals equal the statement's" in text
    lines = text.splitlines()
    posted = lines.index("  posted after the fact (补销): 1")
    assert lines[posted + 1].split()[:3] == ["BANK_ONLY", "S005", "100000200"]
    assert "bank 500.00" in lines[posted + 1] and "receipt" in lines[posted + 1]
    reversed_ = lines.index("  reversed locally (抹账): 1")
    assert lines[reversed_ + 1].split()[:3] == ["UTILITY_ONLY", "S002", "100000200"]
    assert "utility 200.00" in lines[reversed_ + 1]
    csv_rows = Path(rep.outputs["csv"]).read_text("utf-8-sig").splitlines()
    assert all(r.endswith(",1") for r in csv_rows[1:])  # the bank's run number


def test_run_numbers_are_per_bank(ledger, store, tmp_path):
    online_day(ledger)
    ok(ledger.pay(pay("F001", "100000123", 15000, bank="latest")))
    any_ = reconciler(ledger, tmp_path)
    fixed = reconciler(ledger, tmp_path, name="latest", code="107210")
    a1 = any_.reconcile(fixed_statement("106210", BANK_FILE), TODAY)
    f1 = fixed.reconcile(fixed_statement("107210", [("F001", TODAY, "100000123", 15000)]),
                         TODAY)
    a2 = any_.reconcile(fixed_statement("106210", BANK_FILE), TODAY)
    failed = fixed.record_failure(date(2026, 11, 28), "never came")
    assert [(r.bank, r.run_no) for r in (a1, f1, a2, failed)] == [
        ("any", 1), ("latest", 1), ("any", 2), ("latest", 2)]
    assert len({r.run_id for r in (a1, f1, a2, failed)}) == 4  # the internal key stays global
    assert f1.status == "BALANCED"
    assert Path(f1.outputs["text"]).name == "latest_20261127_run1.txt"
    assert Path(a2.outputs["text"]).name == "any_20261127_run2.txt"
    assert "reconciliation any 2026-11-27 run 2:" in Path(a2.outputs["text"]).read_text("utf-8")
    # what an earlier run did is named by its number
    assert "posted after the fact by run 1" in by_serial(a2)["S005"].detail
    assert {r["run_no"] for r in store.run_sync(sql.runs, "latest")} == {1, 2}
    opened = store.run_sync(sql.open_exceptions, "any")
    assert opened and {r["run_no"] for r in opened} == {2}


def test_run_numbers_stay_unique_when_runs_of_one_bank_start_at_once(store):
    """Two dates of one bank may be reconciled at once (the run lock is per
    date): the counter row, not the lock, keeps their numbers apart."""
    now = NOW
    n = 8
    got: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def one(k: int) -> None:
        try:
            start.wait()
            got.append(store.run_sync(sql.run_open, "any", date(2026, 11, k + 1), None,
                                      now, dry_run=False)[1])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(got) == list(range(1, n + 1))


def test_a_resolved_exception_stays_resolved_when_the_statement_comes_again(
        ledger, store, tmp_path):
    online_day(ledger)
    rec = reconciler(ledger, tmp_path)
    data = fixed_statement("106210", BANK_FILE)
    first = rec.reconcile(data, TODAY)
    s003 = next(e for e in store.run_sync(sql.open_exceptions, "any") if e["serial"] == "S003")
    row = store.run_sync(sql.item_resolve, s003["id"], "zhang", "bank confirmed 300.00",
                         ledger.now())
    assert (row["action"], row["resolved_by"]) == ("RESOLVED", "zhang")
    # the bank sends its notice again: the same statement, run 2
    again = rec.reconcile(data, TODAY)
    assert again.run_no == 2
    item = by_serial(again)["S003"]
    assert item.action == "RESOLVED" and item.resolved_by == "zhang"
    assert item.detail.startswith("resolved by zhang on 2026-11-27 (run 1): bank confirmed")
    open_now = {e["serial"] for e in store.run_sync(sql.open_exceptions, "any")}
    assert "S003" not in open_now and open_now == {"S004", "S006", "S007"}
    assert len(again.exceptions) == len(first.exceptions) - 1
    # the difference it makes is accounted for: resolved, not unexplained
    assert again.accepted == (0, 100) and again.gap_explained and not again.error
    stored = {i["serial"]: i for i in store.run_sync(sql.items, again.run_id)}
    assert (stored["S003"]["action"], stored["S003"]["resolved_by"]) == ("RESOLVED", "zhang")
    assert stored["S003"]["resolved_note"] == "bank confirmed 300.00"
    text = recon_report.summary_text(again)
    assert "and 1 resolved by an operator" in text
    assert "resolved by an operator on an earlier run: 1" in text
    # a third run keeps it resolved too (carried from run 2)
    third = rec.reconcile(data, TODAY)
    assert by_serial(third)["S003"].action == "RESOLVED"


def test_a_different_discrepancy_on_a_resolved_serial_is_a_new_exception(
        ledger, store, tmp_path):
    online_day(ledger)
    rec = reconciler(ledger, tmp_path)
    rec.reconcile(fixed_statement("106210", BANK_FILE), TODAY)
    s003 = next(e for e in store.run_sync(sql.open_exceptions, "any") if e["serial"] == "S003")
    store.run_sync(sql.item_resolve, s003["id"], "zhang", "phoned", ledger.now())
    other = [r if r[0] != "S003" else ("S003", TODAY, "100000200", 30200) for r in BANK_FILE]
    rep = rec.reconcile(fixed_statement("106210", other), TODAY)
    assert by_serial(rep)["S003"].action == "EXCEPTION"  # 302.00 is not what was resolved


def test_a_balanced_rerun_with_only_resolved_differences_is_balanced(ledger, store, tmp_path):
    online_day(ledger)
    rec = reconciler(ledger, tmp_path)
    data = fixed_statement("106210", BALANCING[:1] + [("S003", TODAY, "100000200", 30100)]
                           + BALANCING[2:])
    first = rec.reconcile(data, TODAY)
    assert [i.serial for i in first.exceptions] == ["S003"] and first.status == "EXCEPTIONS"
    item = store.run_sync(sql.open_exceptions, "any")[0]
    store.run_sync(sql.item_resolve, item["id"], "zhang", "bank corrects it by letter",
                   ledger.now())
    again = rec.reconcile(data, TODAY)
    assert again.status == "BALANCED" and not again.exceptions
    assert again.gap == again.accepted == (0, 100)


def test_a_dry_run_item_cannot_be_resolved(ledger, store, tmp_path):
    online_day(ledger)
    dry = reconciler(ledger, tmp_path).reconcile(fixed_statement("106210", BANK_FILE), TODAY,
                                                 dry_run=True)
    item = next(i for i in store.run_sync(sql.items, dry.run_id) if i["action"] == "EXCEPTION")
    with pytest.raises(sql.DryRunItem, match="dry run"):
        store.run_sync(sql.item_resolve, item["id"], "zhang", "x", ledger.now())


# -- migration 0004 on a database with runs ---------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mariadb"])
def test_migration_0004_numbers_the_existing_runs_per_bank(backend, tmp_path):
    if backend == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'old.db'}", N8Mapping(), threads=2)
    else:
        s = make_store(backend, tmp_path)
        s.drop_all()
    try:
        migrations.upgrade(s.engine, "0003")
        runs = sa.table("bg_recon_run", sa.column("id"), sa.column("bank"),
                        sa.column("settle_date"), sa.column("started_at"), sa.column("status"),
                        sa.column("dry_run"))
        made = [("any", 0), ("fixed", 0), ("any", 1), ("any", 0), ("fixed", 0), ("any", 0)]
        with s.engine.begin() as c:
            for bank, dry in made:
                c.execute(runs.insert().values(bank=bank, settle_date=TODAY, started_at=NOW,
                                               status="BALANCED", dry_run=dry))
        assert migrations.upgrade(s.engine, "0004") == "0004"
        rr = model.recon_run
        with s.engine.connect() as c:
            got = [tuple(r) for r in c.execute(
                sa.select(rr.c.bank, rr.c.dry_run, rr.c.run_no).order_by(rr.c.id))]
            counters = dict(tuple(r) for r in c.execute(sa.select(model.recon_counter)))
        assert got == [("any", 0, 1), ("fixed", 0, 1), ("any", 1, None), ("any", 0, 2),
                       ("fixed", 0, 2), ("any", 0, 3)]
        assert counters == {"any": 3, "fixed": 2}
        # the next run goes on from there
        assert s.run_sync(sql.next_run_no, "any") == 4
        assert s.run_sync(sql.next_run_no, "new-bank") == 1
    finally:
        if s.dialect != "sqlite":
            s.drop_all()
        s.stop()


def test_a_bank_reconciled_before_the_counter_existed_goes_on_from_its_last_number(store):
    """A counter row lost (or a bank numbered by hand): the next number follows
    the bank's highest run number, never repeats it."""
    with store.engine.begin() as c:
        c.execute(model.recon_run.insert().values(bank="any", run_no=41, settle_date=TODAY,
                                                  started_at=NOW, status="BALANCED",
                                                  dry_run=0))
    assert store.run_sync(sql.next_run_no, "any") == 42
    assert store.run_sync(sql.next_run_no, "any") == 43
