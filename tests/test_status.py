"""``bankgate status`` (each bank's day from the database) and how the commands name
a database (``config check``): the SQL on every database, the command on SQLite."""

from __future__ import annotations

import json
import logging
import re
from datetime import timedelta

import pytest
from conftest import BANKS, NOW, TODAY, FakeClock, make_store, seed_fixture
from ledger_helpers import pay, rev

from bankgate.app.cli import main as cli
from bankgate.app.cli.status import describe_database, render, report
from bankgate.app.config import load_config
from bankgate.canon.messages import Outcome
from bankgate.domain.ledger import Ledger
from bankgate.store import status as sql

YESTERDAY = TODAY - timedelta(days=1)


def _a_day(ledger: Ledger, clock: FakeClock) -> None:
    """fixed: two payments today, one reversed, and a late one for yesterday (the newest
    entry); partial: one payment yesterday, today closed by an operator."""
    def at(minutes):
        clock.now = NOW + timedelta(minutes=minutes)

    at(0)
    assert ledger.pay(pay("S1")).outcome is Outcome.OK  # 100000123, 5480.00
    at(5)
    assert ledger.pay(pay("S2", customer="100000200", amount=1000000)).outcome is Outcome.OK
    at(6)
    assert ledger.reverse(rev("R2", "S2", customer="100000200", amount=1000000)).outcome \
        is Outcome.OK
    at(7)
    assert ledger.pay(pay("P1", customer="100000200", amount=400000, bank="partial",
                          d=YESTERDAY)).outcome is Outcome.OK
    at(8)
    ledger.cutoff("partial", TODAY, reason="operator", actor="wang")
    at(9)
    assert ledger.pay(pay("S3", customer="100000200", amount=600000, d=YESTERDAY)).outcome \
        is Outcome.OK


def test_banks_status_on_every_database(ledger, store, clock):
    _a_day(ledger, clock)
    got = store.run_sync(sql.banks_status, ["fixed", "partial", "any"], TODAY, readonly=True)

    assert got["fixed"]["payments"] == {"POSTED": (1, 548000), "REVERSED": (1, 1000000)}
    assert got["fixed"]["cutoff"] is None
    # the newest entry is yesterday's late payment, not one of today's trade date
    assert got["fixed"]["last_at"] == NOW + timedelta(minutes=9)

    assert got["partial"]["payments"] == {}  # its payment is yesterday's
    cut = got["partial"]["cutoff"]
    assert (cut["reason"], cut["closed_at"], cut["count"]) == (
        "operator", NOW + timedelta(minutes=8), 0)
    assert got["partial"]["last_at"] == NOW + timedelta(minutes=7)

    assert got["any"] == {"payments": {}, "cutoff": None, "last_at": None}

    yesterday = store.run_sync(sql.day_payments, "partial", YESTERDAY, readonly=True)
    assert yesterday == {"POSTED": (1, 400000)}


CONFIG = """
[gateway]
data_dir = "{data}"

[database]
url = "{url}"

[[bank]]
name = "fixed"
plugin = "ref-fixed"
bank_code = "105210"
policy = "exact"
cutoff_time = "23:30"

[[bank]]
name = "partial"
plugin = "ref-delim"
bank_code = "103210"
policy = "partial"
"""


def _config(tmp_path, url: str):
    path = tmp_path / "bankgate.toml"
    path.write_text(CONFIG.format(data=tmp_path / "data", url=url), encoding="utf-8")
    return path


@pytest.fixture
def gateway_db(tmp_path):
    """A SQLite gateway database after :func:`_a_day`, and a configuration naming it."""
    store = make_store("sqlite", tmp_path)
    seed_fixture(store)
    clock = FakeClock()
    _a_day(Ledger(store, {"fixed": BANKS["fixed"], "partial": BANKS["partial"]}, now=clock),
           clock)
    store.stop()
    return _config(tmp_path, f"sqlite:///{tmp_path / 'bg.db'}")


def test_status_prints_each_bank(gateway_db, capsys):
    assert cli(["-c", str(gateway_db), "status", "--date", "2026-11-27"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("database: sqlite (SQLite, driver pysqlite) at ")
    assert out[1].startswith("trade date 2026-11-27, now ")
    header = next(line for line in out if line.startswith("bank "))
    assert header.split() == ["bank", "payments", "amount", "pending", "undone", "trade",
                              "date", "last", "transaction"]
    fixed = next(line for line in out if line.startswith("fixed "))
    assert fixed.split()[:5] == ["fixed", "1", "5480.00", "0", "1"]
    assert "open, cut-off at 23:30" in fixed
    assert "2026-11-27 09:39:00 (" in fixed
    partial = next(line for line in out if line.startswith("partial "))
    assert partial.split()[:5] == ["partial", "0", "0.00", "0", "0"]
    assert "closed at 09:38:00 (operator)" in partial
    assert "2026-11-27 09:37:00 (" in partial


def test_status_json(gateway_db, capsys):
    assert cli(["-c", str(gateway_db), "status", "--date", "2026-11-27", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["trade_date"] == "2026-11-27" and rep["timezone"] == "Asia/Shanghai"
    fixed, partial = rep["banks"]
    assert {k: fixed[k] for k in ("bank", "payments", "amount", "amount_yuan", "undone",
                                  "undone_amount", "state", "cutoff_time",
                                  "last_transaction_at")} == {
        "bank": "fixed", "payments": 1, "amount": 548000, "amount_yuan": "5480.00",
        "undone": 1, "undone_amount": 1000000, "state": "open", "cutoff_time": "23:30",
        "last_transaction_at": "2026-11-27T09:39:00"}
    assert (partial["state"], partial["closed_at"], partial["closed_reason"]) == (
        "closed", "2026-11-27T09:38:00", "operator")
    # another date: yesterday's payments, both dates open
    assert cli(["-c", str(gateway_db), "status", "--date", "20261126", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert [(b["bank"], b["payments"], b["amount"], b["state"]) for b in rep["banks"]] == [
        ("fixed", 1, 600000, "open"), ("partial", 1, 400000, "open")]


def test_report_and_render_with_a_fixed_clock(tmp_path):
    cfg = load_config(_config(tmp_path, "sqlite:///bg.db"))
    figures = {
        "fixed": {"payments": {"POSTED": (3, 12345), "PENDING": (1, 500),
                               "EXPIRED": (2, 100)},
                  "cutoff": None, "last_at": NOW - timedelta(minutes=2, seconds=5)},
        "partial": {"payments": {}, "cutoff": {"reason": "scheduled", "count": 0, "total": 0,
                                               "closed_at": NOW + timedelta(days=1)},
                    "last_at": NOW - timedelta(days=3)},
    }
    rep = report(cfg, figures, TODAY, NOW)
    fixed = rep["banks"][0]
    assert (fixed["payments"], fixed["amount_yuan"], fixed["pending"], fixed["undone"],
            fixed["undone_amount"], fixed["last_transaction_age_seconds"]) == (
        3, "123.45", 1, 2, 100, 125)
    lines = render(rep)
    fixed_line = next(line for line in lines if line.startswith("fixed "))
    assert fixed_line.endswith("2026-11-27 09:27:55 (2 min ago)")
    partial_line = next(line for line in lines if line.startswith("partial "))
    # closed on another day than the trade date: the whole time is shown
    assert "closed at 2026-11-28 09:30:00 (scheduled)" in partial_line
    assert partial_line.endswith("(3 days ago)")


@pytest.mark.parametrize("content,expected", [
    (None, "no database file at"),
    (b"", "no such table: bg_payment"),
    (b"this is not a database, just some text" * 100, "file is not a database"),
])
def test_an_unreadable_database_is_one_line_and_exit_1(tmp_path, capsys, caplog, content,
                                                       expected):
    db = tmp_path / "gw.db"
    if content is not None:
        db.write_bytes(content)
    cfg = _config(tmp_path, f"sqlite:///{db}")
    with caplog.at_level(logging.DEBUG):
        assert cli(["-c", str(cfg), "status"]) == 1
    # no "retrying" warnings around the line: status tries once
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bankgate: status: ") and expected in err[0]
    assert db.exists() == (content is not None)  # a missing file is not created


@pytest.mark.parametrize("url,expected", [
    ("postgresql+psycopg://bankgate:s3cret@db1.example:5432/n8?sslmode=require",
     "postgresql+psycopg (PostgreSQL, driver psycopg) at db1.example:5432/n8 as bankgate"),
    ("mysql+pymysql://gw:s3cret@10.0.0.5/n8", "mysql+pymysql (MySQL/MariaDB, driver pymysql)"
                                               " at 10.0.0.5/n8 as gw"),
    ("sqlite:///var/bankgate.db", "sqlite (SQLite, driver pysqlite) at var/bankgate.db"),
])
def test_describe_database(url, expected):
    assert describe_database(url) == expected


def test_describe_database_names_the_default_driver():
    # no "+driver" in the URL: SQLAlchemy's default for the scheme is named
    # (psycopg2 before SQLAlchemy 2.1, psycopg since)
    assert re.fullmatch(r"postgresql \(PostgreSQL, driver psycopg2?\) at db1/n8",
                        describe_database("postgresql://db1/n8"))
    assert describe_database("not a url") == "(not a valid SQLAlchemy URL)"


def test_config_check_shows_scheme_and_driver_never_the_password(tmp_path, capsys):
    cfg = _config(tmp_path, "postgresql+psycopg://bankgate:s3cret@db1.example:5432/n8")
    assert cli(["config", "check", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert ("  database: postgresql+psycopg (PostgreSQL, driver psycopg) at"
            " db1.example:5432/n8 as bankgate\n") in out
    assert "s3cret" not in out
