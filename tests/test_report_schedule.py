"""Scheduled custom reports (bankgate/app/report_schedule.py), on twisted's Clock.

The clock is turned, never slept on: at the definition's time the files appear in
``<output>/<name>/<name>_<date>.<ext>``; a broken definition is logged at start; a
failing run logs one line and the next day's run is the next try; a time missed while
the service was down runs at start unless the day's files are there.  A definition
with ``email`` sends its files through ``[mail]``: to a recording stand-in for
``send_mail`` (retries on the clock) and to Twisted's own ESMTP server in memory.
"""

from __future__ import annotations

import csv
import dataclasses
import email
import json
import textwrap
from datetime import date, datetime, timedelta
from email import policy
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_alert_channels import Mailbox, connect
from test_custom_reports import seed
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.mail import smtp

from bankgate.app.alert_channels import build_message
from bankgate.app.config import MailConfig
from bankgate.app.report_schedule import ReportScheduler, Written, mail_text
from bankgate.domain.custom_reports import parse_definition
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

    def make(start: datetime = START, **kw) -> ReportScheduler:
        clock.advance((start - START).total_seconds() - clock.seconds())
        return ReportScheduler(
            reactor=clock, now=lambda: START + timedelta(seconds=clock.seconds()), store=store,
            definitions_dir=folder, output_dir=tmp_path / "out", run_blocking=synchronously,
            **kw)

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
    with store.n8_engine.begin() as c:  # N8's bill table is gone (renamed) for the day
        c.exec_driver_sql(f"ALTER TABLE {bill.name} RENAME TO n8_bill_away")
    s = make()
    s.start()
    clock.advance(31 * 60)
    errors = lines(events, "error")
    assert len(errors) == 1
    assert errors[0].startswith("report owed: 2026-11-27 failed: ")
    assert errors[0].endswith("; next try tomorrow at 06:30")
    assert not (out / "owed").exists()
    with store.n8_engine.begin() as c:
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


def test_without_mail_the_warning_says_where_the_files_are_and_what_to_set(setup, events):
    store, folder, clock, make, out = setup
    (folder / "owed.toml").write_text(GOOD.replace(
        'formats = ["csv", "json"]', 'formats = ["csv"]\nemail = ["finance@example.com"]'),
        encoding="utf-8")
    sent = Outbox()
    s = make(send=sent)  # no [mail]
    s.start()
    clock.advance(31 * 60)
    warned = lines(events, "warn")
    assert warned == [f"report owed: e-mail not configured: the report is in {out / 'owed'}"
                      " (not sent to finance@example.com); to send it, add a [mail] table"
                      " with the SMTP server's host and a from address to the configuration"]
    assert sent.calls == [] and (out / "owed" / "owed_2026-11-27.csv").exists()
    s.stop()


# -- e-mail ------------------------------------------------------------------------------

PASSWORD = "correct horse battery"
MAIL = MailConfig(host="smtp.example.com", sender="bankgate@example.com", port=587,
                  starttls=True, user="gw", password=PASSWORD)
MAILED = GOOD.replace('formats = ["csv", "json"]', 'formats = ["csv", "json"]\n'
                      'email = ["finance@example.com", "boss@example.com"]')


class Outbox:
    """A stand-in for ``send_mail`` that records each call and answers with the next
    of ``answers`` (an exception: that failure; ``None``: a Deferred left unfired);
    when they run out, every address is accepted."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls: list[SimpleNamespace] = []

    def __call__(self, reactor, settings, to, subject, body, attachments=()):
        self.calls.append(SimpleNamespace(settings=settings, to=list(to), subject=subject,
                                          body=body, attachments=list(attachments)))
        answer = self.answers.pop(0) if self.answers else len(to)
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.Deferred() if answer is None else defer.succeed(answer)


def test_the_files_are_mailed_as_attachments(setup, events):
    store, folder, clock, make, out = setup
    (folder / "owed.toml").write_text(MAILED, encoding="utf-8")
    sent = Outbox()
    s = make(mail=MAIL, send=sent, gateway="gw1")
    s.start()
    clock.advance(29 * 60)
    assert sent.calls == []
    clock.advance(2 * 60)  # 06:31
    [call] = sent.calls
    csv_file = out / "owed" / "owed_2026-11-27.csv"
    json_file = out / "owed" / "owed_2026-11-27.json"
    assert call.settings is MAIL
    assert call.to == ["finance@example.com", "boss@example.com"]
    assert call.subject == "[bankgate] 欠费: as of 2026-11-27 (all dates)"
    assert call.attachments == [
        ("owed_2026-11-27.csv", csv_file.read_bytes(), "text/csv"),
        ("owed_2026-11-27.json", json_file.read_bytes(), "application/json")]
    assert "Scheduled report: 欠费 (owed)" in call.body
    assert "  owed_2026-11-27.csv (3 rows)\n  owed_2026-11-27.json (3 rows)" in call.body
    assert f"kept on the gateway in {out / 'owed'}." in call.body
    assert call.body.endswith("bankgate on gw1\n")
    assert ("report owed: e-mailed owed_2026-11-27.csv, owed_2026-11-27.json to"
            " finance@example.com, boss@example.com") in lines(events, "info")
    assert lines(events, "warn") == [] and lines(events, "error") == []
    clock.advance(24 * 3600)  # the next day's run, mailed again
    assert [c.subject for c in sent.calls] == [
        "[bankgate] 欠费: as of 2026-11-27 (all dates)",
        "[bankgate] 欠费: as of 2026-11-28 (all dates)"]
    s.stop()


def test_a_failed_send_is_retried_with_backoff_and_the_password_never_logged(setup, events):
    store, folder, clock, make, out = setup
    (folder / "owed.toml").write_text(MAILED, encoding="utf-8")
    refused = smtp.SMTPClientError(535, b"5.7.8 authentication failed")
    sent = Outbox(refused, smtp.SMTPConnectError(-1, b"Unable to connect to server"), 1)
    s = make(mail=MAIL, send=sent)
    s.start()
    clock.advance(31 * 60)
    assert len(sent.calls) == 1
    clock.advance(s.mail_backoff - 1)
    assert len(sent.calls) == 1
    clock.advance(1)  # 2 minutes after the first
    assert len(sent.calls) == 2
    clock.advance(2 * s.mail_backoff)  # then 4
    assert len(sent.calls) == 3
    warned = lines(events, "warn")
    assert warned == [
        "report owed: e-mail to finance@example.com, boss@example.com via smtp.example.com:587:"
        " not delivered (535 5.7.8 authentication failed); trying again in 120 s",
        "report owed: e-mail to finance@example.com, boss@example.com via smtp.example.com:587:"
        " not delivered (Unable to connect to server); trying again in 240 s"]
    assert ("report owed: e-mailed owed_2026-11-27.csv, owed_2026-11-27.json to"
            " finance@example.com, boss@example.com (1 of 2 addresses accepted)"
            in lines(events, "info"))
    assert sent.calls[0].attachments == sent.calls[2].attachments  # the same message again
    assert all(PASSWORD not in line for line in lines(events))
    s.stop()


def test_a_send_given_up_leaves_the_files_and_logs_why(setup, events):
    store, folder, clock, make, out = setup
    (folder / "owed.toml").write_text(MAILED, encoding="utf-8")
    down = smtp.SMTPConnectError(-1, b"Unable to connect to server")
    sent = Outbox(*[down] * 10)
    s = make(mail=MAIL, send=sent)
    s.start()
    clock.advance(31 * 60)
    for wait in (120, 240, 480):
        clock.advance(wait)
    assert len(sent.calls) == 1 + s.mail_retries
    errors = lines(events, "error")
    assert errors == ["report owed: e-mail to finance@example.com, boss@example.com via"
                      " smtp.example.com:587: not delivered after 4 attempt(s): Unable to"
                      " connect to server"]
    assert (out / "owed" / "owed_2026-11-27.csv").exists()
    assert (out / "owed" / "owed_2026-11-27.json").exists()
    clock.advance(3600)  # given up: nothing more until tomorrow's run
    assert len(sent.calls) == 1 + s.mail_retries
    s.stop()


def test_a_slow_mail_does_not_hold_up_the_next_run(setup):
    store, folder, clock, make, out = setup
    (folder / "owed.toml").write_text(MAILED, encoding="utf-8")
    (folder / "plain.toml").write_text(GOOD.replace('name = "owed"', 'name = "plain"'),
                                       encoding="utf-8")
    sent = Outbox(None)  # the server never answers (send_mail's own timeout aside)
    s = make(mail=MAIL, send=sent)
    s.start()
    clock.advance(31 * 60)
    assert len(sent.calls) == 1
    assert (out / "plain" / "plain_2026-11-27.csv").exists()
    s.stop()


def test_a_run_skipped_at_start_is_not_mailed_again(setup):
    store, folder, clock, make, out = setup
    (folder / "owed.toml").write_text(MAILED, encoding="utf-8")
    sent = Outbox()
    s = make(datetime(2026, 11, 27, 9, 0), mail=MAIL, send=sent)
    s.start()  # missed at 06:30: runs and mails now
    assert len(sent.calls) == 1
    s.stop()
    again = make(datetime(2026, 11, 27, 9, 30), mail=MAIL, send=sent)
    again.start()  # a restart: today's files are there
    assert len(sent.calls) == 1
    again.stop()


def test_the_mail_arrives_at_an_esmtp_server(tmp_path):
    """send_mail itself, over Twisted's ESMTP server in memory: the recipients, the
    subject and each attachment's bytes as the server received them."""
    store = Store(f"sqlite:///{tmp_path / 'bg.db'}")
    store.create_gateway_tables()
    store.create_n8_tables()
    seed(store)
    folder = tmp_path / "reports.d"
    folder.mkdir()
    (folder / "owed.toml").write_text(MAILED, encoding="utf-8")
    reactor = MemoryReactorClock()
    plain = MailConfig(host="smtp.example.com", sender="bankgate@example.com")
    s = ReportScheduler(reactor=reactor, store=store, definitions_dir=folder,
                        now=lambda: START + timedelta(seconds=reactor.seconds()),
                        output_dir=tmp_path / "out", run_blocking=synchronously, mail=plain)
    s.start()
    reactor.advance(31 * 60)
    host, port, factory, _timeout, _ = reactor.tcpClients[0]
    assert (host, port) == ("smtp.example.com", 25)
    box = Mailbox()
    connect(factory, box)
    assert box.recipients == ["finance@example.com", "boss@example.com"]
    raw, same = box.messages  # one message, delivered to each mailbox
    assert raw == same
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg["Subject"] == "[bankgate] 欠费: as of 2026-11-27 (all dates)"
    assert msg["From"] == "bankgate@example.com"
    parts = list(msg.iter_attachments())
    assert [p.get_filename() for p in parts] == ["owed_2026-11-27.csv", "owed_2026-11-27.json"]
    folder_out = tmp_path / "out" / "owed"
    for part, name in zip(parts, ("owed_2026-11-27.csv", "owed_2026-11-27.json"), strict=True):
        assert part.get_payload(decode=True) == (folder_out / name).read_bytes()
    assert parts[0].get_content_type() == "text/csv"
    assert "和平区,4000.00" in parts[0].get_content()  # said to be UTF-8, read as UTF-8
    s.stop()
    store.stop()


def test_mail_text_of_a_dated_report():
    d = parse_definition(textwrap.dedent("""\
        name = "last-month"
        title = "上月收费 Collections"
        description = "Payments by channel."
        dimensions = ["payment.channel"]
        default_range = "last_month"
        schedule = "06:30"
        formats = ["xlsx", "pdf"]
        email = ["finance@example.com"]
        [[measures]]
        fn = "count"
    """))
    written = [Written(Path("out/last-month/last-month_2026-12-01.xlsx"), 1),
               Written(Path("out/last-month/last-month_2026-12-01.pdf"), None)]
    subject, body = mail_text(d, date(2026, 12, 1), written, at=datetime(2026, 12, 1, 6, 30),
                              gateway="gw1")
    assert subject == "[bankgate] 上月收费 Collections: 2026-11-01 to 2026-11-30"
    assert body.splitlines()[:5] == [
        "Scheduled report: 上月收费 Collections (last-month)",
        "Period:   2026-11-01 to 2026-11-30", "Written:  2026-12-01 06:30", "",
        "Payments by channel."]
    assert "  last-month_2026-12-01.xlsx (1 row)\n  last-month_2026-12-01.pdf\n" in body


@given(st.text(min_size=1, max_size=80))
def test_any_title_makes_a_one_line_subject_that_survives_the_message(title):
    d = parse_definition('name = "r"\nschedule = "06:30"\n[[measures]]\nfn = "count"\n')
    d = dataclasses.replace(d, title=title)
    subject, _ = mail_text(d, date(2026, 11, 27), [Written(Path("r/r_2026-11-27.xlsx"), 0)])
    assert "\n" not in subject and "\r" not in subject
    assert subject.startswith("[bankgate] ")
    raw = build_message("bankgate@example.com", ["a@example.com"], subject, "body")
    got = email.message_from_bytes(raw, policy=policy.default)["Subject"]
    # every character arrives; a space between two encoded words may not (RFC 2047
    # ignores whitespace between adjacent encoded words, and the library splits there)
    assert "".join(got.split()) == "".join(subject.split())


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
    assert gw.reports.mail is None
    mailed = parse_config({"gateway": {"data_dir": str(tmp_path / "m")},
                           "mail": {"host": "smtp.example.com", "from": "gw@example.com"}},
                          "t.toml")
    assert GatewayService(mailed, Clock()).reports.mail is mailed.mail


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
