"""Scheduled custom reports (bankgate/app/report_schedule.py), on twisted's Clock.

The clock is turned, never slept on: at the definition's time the files appear in
``<output>/<name>/<name>_<date>.<ext>``; a broken definition is logged at start; a
failing run logs one line and the next day's run is the next try; a time missed while
the service was down runs at start unless the day's files are there.
"""

from __future__ import annotations

import csv
import json
import textwrap
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from test_custom_reports import seed
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from bankgate.app.report_schedule import ReportScheduler
from bankgate.store.db import Store

START = datetime(2026, 11, 27, 6, 0)

GOOD = """\
name = "owed"
title = "欠费"
dimensions = ["customer.district"]
schedule = "06:30"
formats = ["csv", "json"]

[[measures]]
fn = "sum"
column = "bill.outstanding"
name = "outstanding"
"""


def synchronously(fn, *args):
    """``run_blocking`` for tests: the worker thread's work, at once."""
    return defer.maybeDeferred(fn, *args)


@pytest.fixture
def events():
    got: list[dict] = []
    globalLogPublisher.addObserver(got.append)
    yield got
    globalLogPublisher.removeObserver(got.append)


def lines(events, level=None) -> list[str]:
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events if e.get("log_namespace") == "bankgate.reports"
            and (level is None or e["log_level"].name == level)]


@pytest.fixture
def setup(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'bg.db'}")
    store.create_gateway_tables()
    store.create_n8_tables()
    seed(store)
    folder = tmp_path / "reports.d"
    folder.mkdir()
    clock = Clock()

    def make(start: datetime = START) -> ReportScheduler:
        clock.advance((start - START).total_seconds() - clock.seconds())
        return ReportScheduler(
            reactor=clock, now=lambda: START + timedelta(seconds=clock.seconds()), store=store,
            definitions_dir=folder, output_dir=tmp_path / "out", run_blocking=synchronously)

    yield store, folder, clock, make, tmp_path / "out"
    store.stop()


def test_the_files_appear_when_the_clock_passes_the_time(setup, events):
    store, folder, clock, make, out = setup
    (folder / "owed.toml").write_text(GOOD, encoding="utf-8")
    s = make()
    s.start()
    clock.advance(29 * 60)  # 06:29
    assert not out.exists()
    clock.advance(2 * 60)  # 06:31
    csv_file = out / "owed" / "owed_2026-11-27.csv"
    json_file = out / "owed" / "owed_2026-11-27.json"
    assert csv_file.exists() and json_file.exists()
    rows = list(csv.reader(csv_file.open(encoding="utf-8")))
    assert rows[0] == ["district", "outstanding"]
    assert sorted(rows[1:], key=str) == sorted([["", "100.00"], ["和平区", "4000.00"],
                                                ["铁西区", "800.00"]], key=str)
    assert json.loads(json_file.read_text(encoding="utf-8"))["totals"]["outstanding"] == 490000
    wrote = [ln for ln in lines(events) if "wrote" in ln]
    assert wrote == [f"report owed: wrote {csv_file} (3 rows)",
                     f"report owed: wrote {json_file} (3 rows)"]
    # no second run the same day; the next day's at 06:30 again
    clock.advance(3600)
    assert len([ln for ln in lines(events) if "wrote" in ln]) == 2
    clock.advance(24 * 3600)
    assert (out / "owed" / "owed_2026-11-28.csv").exists()
    s.stop()


def test_no_temporary_file_is_left(setup):
    store, folder, clock, make, out = setup
    (folder / "owed.toml").write_text(GOOD, encoding="utf-8")
    s = make()
    s.start()
    clock.advance(31 * 60)
    assert sorted(p.name for p in (out / "owed").iterdir()) == [
        "owed_2026-11-27.csv", "owed_2026-11-27.json"]
    s.stop()


def test_a_broken_definition_is_reported_at_start(setup, events):
    store, folder, clock, make, out = setup
    (folder / "owed.toml").write_text(GOOD, encoding="utf-8")
    (folder / "broken.toml").write_text(
        'name = "broken"\nschedule = "06:30"\n\n[[measures]]\nfn = "sum"\n'
        'column = "bill.amout"\n', encoding="utf-8")
    s = make()
    s.start()  # 06:00: nothing is due, yet the broken one is already in the log
    errors = lines(events, "error")
    assert errors == [f"report definition not scheduled: {folder / 'broken.toml'}:6:"
                      " measures[0].column: 'bill.amout' is not a column; did you mean"
                      " 'bill.amount'?"]
    assert [d.name for d in s.definitions] == ["owed"]
    clock.advance(31 * 60)
    assert (out / "owed" / "owed_2026-11-27.csv").exists()
    assert not (out / "broken").exists()
    assert lines(events, "error") == errors  # nothing more at 06:30
    s.stop()


def test_a_failure_logs_one_line_and_the_next_day_tries_again(setup, events):
    store, folder, clock, make, out = setup
    (folder / "owed.toml").write_text(GOOD, encoding="utf-8")
    bill = store.n8["bill"]
    with store.engine.begin() as c:  # N8's bill table is gone (renamed) for the day
        c.exec_driver_sql(f"ALTER TABLE {bill.name} RENAME TO n8_bill_away")
    s = make()
    s.start()
    clock.advance(31 * 60)
    errors = lines(events, "error")
    assert len(errors) == 1
    assert errors[0].startswith("report owed: 2026-11-27 failed: ")
    assert errors[0].endswith("; next try tomorrow at 06:30")
    assert not (out / "owed").exists()
    with store.engine.begin() as c:
        c.exec_driver_sql(f"ALTER TABLE n8_bill_away RENAME TO {bill.name}")
    clock.advance(3600)  # no retry the same day
    assert len(lines(events, "error")) == 1 and not (out / "owed").exists()
    clock.advance(24 * 3600)
    assert (out / "owed" / "owed_2026-11-28.csv").exists()
    s.stop()


def test_a_time_missed_while_down_runs_at_start_once(setup, events):
    store, folder, clock, make, out = setup
    (folder / "owed.toml").write_text(GOOD, encoding="utf-8")
    s = make(datetime(2026, 11, 27, 9, 0))
    s.start()
    f = out / "owed" / "owed_2026-11-27.csv"
    assert f.exists()
    s.stop()
    stamp = f.stat().st_mtime_ns
    again = make(datetime(2026, 11, 27, 9, 30))  # a restart: today's files are there
    again.start()
    assert f.stat().st_mtime_ns == stamp
    assert "report owed: 2026-11-27 already written" in lines(events)
    again.stop()


def test_email_is_checked_and_says_where_the_files_are(setup, events):
    store, folder, clock, make, out = setup
    (folder / "owed.toml").write_text(GOOD.replace(
        'formats = ["csv", "json"]', 'formats = ["csv"]\nemail = ["finance@example.com"]'),
        encoding="utf-8")
    s = make()
    s.start()
    clock.advance(31 * 60)
    warned = lines(events, "warn")
    assert warned == [f"report owed: e-mail not configured: the report is in {out / 'owed'}"
                      " (not sent to finance@example.com)"]
    s.stop()


def test_the_default_range_is_the_run_days(setup):
    store, folder, clock, make, out = setup
    (folder / "oct.toml").write_text(textwrap.dedent("""\
        name = "last-month"
        dimensions = ["payment.channel"]
        default_range = "last_month"
        schedule = "06:30"
        formats = ["json"]
        [[measures]]
        fn = "count"
    """), encoding="utf-8")
    s = make()
    s.start()
    clock.advance(31 * 60)
    doc = json.loads((out / "last-month" / "last-month_2026-11-27.json").read_text("utf-8"))
    assert doc["params"]["from"] == "2026-10-01" and doc["params"]["to"] == "2026-10-31"
    assert {r["channel"]: r["count"] for r in doc["rows"]} == {"01": 2, "08": 1}
    s.stop()


def test_nothing_scheduled_runs_no_loop(setup):
    store, folder, clock, make, out = setup
    (folder / "plain.toml").write_text('name = "plain"\n[[measures]]\nfn = "count"\n',
                                       encoding="utf-8")
    s = make()
    s.start()
    assert s.definitions == [] and not s.loop.running
    assert clock.getDelayedCalls() == []
    s.stop()


def test_the_service_builds_and_stops_the_scheduler(tmp_path):
    """The wiring: GatewayService holds a ReportScheduler over [reports] dir."""
    from bankgate.app.config import parse_config
    from bankgate.app.service import GatewayService

    cfg = parse_config({"gateway": {"data_dir": str(tmp_path)},
                        "reports": {"dir": str(tmp_path / "defs")}}, "t.toml")
    gw = GatewayService(cfg, Clock())
    assert gw.reports.definitions_dir == tmp_path / "defs"
    assert gw.reports.output_dir == tmp_path / "reports"
    assert gw.reports.run_blocking == gw.store.call


def test_the_arrears_example_as_a_workbook_and_a_pdf(setup):
    """The shipped example's formats (xlsx, pdf, with its stacked bar chart), written
    whole by a scheduled run; a district of None (a customer without one) included."""
    store, folder, clock, make, out = setup
    example = Path(__file__).resolve().parent.parent / "docs/examples/reports"
    (folder / "arrears-by-district.toml").write_text(
        (example / "arrears-by-district.toml").read_text("utf-8"), encoding="utf-8")
    s = make()
    s.start()
    clock.advance(31 * 60)
    base = out / "arrears-by-district" / "arrears-by-district_2026-11-27"
    assert base.with_suffix(".xlsx").read_bytes()[:2] == b"PK"
    assert base.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    s.stop()
