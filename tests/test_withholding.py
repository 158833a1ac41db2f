"""Withholding (代扣 / 托收): agreements, .PK batch files, .PKJG results.

The store parts run on every database of ``conftest.BACKENDS`` (SQLite plain
and under a renamed N8 mapping, PostgreSQL, MariaDB).  The files are checked
against lines written by hand from ref-delim §6, and the result files fed in
are written by hand too (not by the code under test).
"""

from __future__ import annotations

import json
from datetime import date, datetime

import pytest
import sqlalchemy as sa
from conftest import NOW, TODAY, seed_fixture
from ledger_helpers import bills

from bankgate.app.config import ConfigError, parse_config
from bankgate.app.options import parse_options, withholding_options
from bankgate.canon import messages as m
from bankgate.canon.messages import Outcome
from bankgate.codec.registry import load_codec
from bankgate.domain.ledger import Ledger
from bankgate.domain.withholding import (
    SOURCE,
    ResultFileRefused,
    Withholding,
    WithholdingError,
    report_text,
    write_report_csv,
)
from bankgate.store import model
from bankgate.store.db import StoreUnavailable

DELIM = load_codec("ref-delim")
FIXED = load_codec("ref-fixed")
CODECS = {"ref-delim": DELIM, "ref-fixed": FIXED}
ACCT1 = "6222020200012345678"
ACCT2 = "2101000011112222"
PK_NAME = "1032102026112701.PK"


def make_withholding(ledger, cfg, codecs=CODECS) -> Withholding:
    """The rules as the wiring builds them: the configured banks and their parsed options."""
    return Withholding(ledger, cfg.banks, codecs, withholding_options(cfg, codecs),
                       data_dir=cfg.data_dir)


def make_cfg(tmp_path, extra: dict | None = None):
    data = {
        "bank": [
            {"name": "dl", "plugin": "ref-delim", "bank_code": "103210", "policy": "partial",
             "exchange_dir": str(tmp_path / "ex"), "options": {"withholding": True}},
            {"name": "fx", "plugin": "ref-fixed", "bank_code": "105210"},
        ]
    }
    if extra:
        data["bank"][0]["options"].update(extra)
    return parse_config(data, "test.toml")


@pytest.fixture
def wh(store, tmp_path):
    seed_fixture(store)
    c = store.n8["customer"]
    with store.n8_engine.begin() as conn:
        conn.execute(c.update().where(c.c.customer_no == "100000200").values(large_customer=1))
        # a customer of another bank, and one with a blank account
        conn.execute(c.insert(), [
            {"customer_no": "100000500", "name": "赵六", "address": "", "customer_class": "R",
             "status": "A", "withholding_bank": "105210", "withholding_account": "62220000001"},
            {"customer_no": "100000600", "name": "钱七", "address": "", "customer_class": "R",
             "status": "A", "withholding_bank": "103210", "withholding_account": " "},
        ])
        b = store.n8["bill"]
        conn.execute(b.insert(), [
            {"bill_id": "B0050", "customer_no": "100000500", "fee_type": "02", "period": "2026-11",
             "amount": 9900, "paid_amount": 0, "late_fee_paid": 0, "due_date": date(2026, 12, 31)},
            {"bill_id": "B0060", "customer_no": "100000600", "fee_type": "02", "period": "2026-11",
             "amount": 9900, "paid_amount": 0, "late_fee_paid": 0, "due_date": date(2026, 12, 31)},
        ])
    cfg = make_cfg(tmp_path)
    ledger = Ledger(store, {b.name: b.policy_() for b in cfg.banks}, now=lambda: NOW)
    w = make_withholding(ledger, cfg)
    w.sign("100000123", "dl", ACCT1, "clerk1")
    w.sign("100000200", "dl", ACCT2, "clerk1")
    w.sign("100000300", "dl", "6222000000000300", "clerk1")  # suspended: never in a file
    return w


# Written by hand from ref-delim §6 and the fixture: B0001 is 100 days overdue at
# 500 ppm a day (2600.00 -> 130.00 late fee); the others are not due yet.
GOLDEN_PK = (
    "B0001|100000123|张三|6222020200012345678|2025-2026|2600.00|130.00|2730.00|\n"
    "B0002|100000123|张三|6222020200012345678|2026-11|150.00|0.00|150.00|\n"
    "B0003|100000123|张三|6222020200012345678|2026-2027|2600.00|0.00|2600.00|\n"
    "B0010|100000200|沈阳重型机械厂|2101000011112222|2026-2027|10000.00|0.00|10000.00|\n"
    "0|4|15480.00|20261127|20261127093000|\n"
).encode("gbk")

GOOD_PKJG = (
    "B0001|100000123|6222020200012345678|2730.00|0|PK1127010001|\n"
    "B0002|100000123|6222020200012345678|150.00|1||\n"
    "B0003|100000123|6222020200012345678|2600.00|0|PK1127010003|\n"
    "B0010|100000200|2101000011112222|10000.00|2||\n"
    "0|4|2|5330.00|\n"
).encode("gbk")


def payments(store) -> list[dict]:
    with store.engine.connect() as c:
        return [dict(r) for r in c.execute(sa.select(model.payment).order_by(model.payment.c.id))
                .mappings()]


# -- options -------------------------------------------------------------------------


@pytest.mark.parametrize("opts, key, words", [
    ({"debit_timeout": "30"}, "debit_timeout", "expected seconds between 1 and 600"),
    ({"debit_timeout": 0}, "debit_timeout", "expected seconds"),
    ({"debit_timeout": True}, "debit_timeout", "expected seconds"),
    ({"debit_host": "tcp:host=127.0.0.1:port=9202"}, "utility_code", "missing"),
    ({"debit_host": "127.0.0.1:9202", "utility_code": "U1"}, "debit_host", "endpoint"),
    ({"debit_host": "tcp:host=h:port=9202", "utility_code": "U1", "withholding": False},
     "withholding", "debit_host"),
    ({"withholding": "yes"}, "withholding", "true or false"),
    ({"utility_code": "a|b"}, "utility_code", "letters"),
    ({"debit_retry": 60, "debit_retry_max": 10}, "debit_retry_max", "at least debit_retry"),
    ({"debit_host_simulate": True}, "debit_host_simulate", "needs debit_host"),
    ({"debit_host": "unix:/tmp/x.sock", "utility_code": "U1", "debit_host_simulate": True},
     "debit_host_simulate", "tcp:host"),
])
def test_options_errors_name_the_key(tmp_path, opts, key, words):
    cfg = make_cfg(tmp_path, opts)
    with pytest.raises(ConfigError) as e:
        parse_options(cfg.banks[0], cfg.source)
    assert e.value.key == f"bank.dl.options.{key}"
    assert words in e.value.problem
    assert str(e.value).startswith("test.toml: bank.dl.options.")


def test_options_defaults_and_card_debit(tmp_path):
    cfg = make_cfg(tmp_path, {"debit_host": "tcp:host=127.0.0.1:port=9202",
                              "utility_code": "HEAT01", "debit_timeout": 12,
                              "other_part_key": "left alone"})
    o = parse_options(cfg.banks[0])
    assert o.enabled and o.card_debit and o.debit_timeout == 12.0 and o.utility_code == "HEAT01"
    assert not parse_options(cfg.banks[1]).enabled
    cfg.banks[0].options = {}
    assert not parse_options(cfg.banks[0]).enabled
    cfg.banks[0].options = {"debit_host": "tcp:host=h:port=1", "utility_code": "U"}
    assert parse_options(cfg.banks[0]).enabled  # by debit_host alone


def test_check_config_refuses_a_plugin_without_files(tmp_path):
    cfg = make_cfg(tmp_path)
    cfg.banks[1].options = {"withholding": True}
    with pytest.raises(ConfigError) as e:
        withholding_options(cfg, {"ref-delim": DELIM, "ref-fixed": FIXED})
    assert e.value.key == "bank.fx.options.withholding"
    cfg.banks[1].options = {"debit_host": "tcp:host=h:port=1", "utility_code": "U"}
    with pytest.raises(ConfigError) as e:
        withholding_options(cfg, {"ref-delim": DELIM, "ref-fixed": FIXED})
    assert e.value.key in ("bank.fx.options.withholding", "bank.fx.options.debit_host")


# -- agreements ------------------------------------------------------------------------


def test_sign_writes_n8_through_the_mapping_and_audits_masked(wh):
    store = wh.store
    c = store.n8["customer"]
    with store.n8_engine.connect() as conn:
        row = conn.execute(sa.select(c.c.withholding_bank, c.c.withholding_account)
                           .where(c.c.customer_no == "100000123")).first()
    with store.engine.connect() as conn:
        audits = conn.execute(sa.select(model.audit.c.action, model.audit.c.subject,
                                        model.audit.c.detail, model.audit.c.actor)
                              .where(model.audit.c.action == "withholding-sign")).all()
    assert tuple(row) == ("103210", ACCT1)
    assert len(audits) == 3 and audits[0].actor == "clerk1"
    for a in audits:
        assert ACCT1 not in a.detail and ACCT2 not in a.detail
    assert json.loads(audits[0].detail)["account"] == "622202*********5678"

    ch = wh.sign("100000123", "dl", "6222999988887777", "clerk2")
    assert any("replaces" in w for w in ch.warnings)
    assert ch.account == "622299******7777"
    ch = wh.sign("100000300", "dl", "6222000000000300", "clerk2")
    assert any("locked" in w for w in ch.warnings)


def test_sign_errors(wh):
    with pytest.raises(WithholdingError, match="no customer"):
        wh.sign("999999999", "dl", ACCT1, "clerk")
    with pytest.raises(WithholdingError, match="does not do withholding"):
        wh.sign("100000123", "fx", ACCT1, "clerk")
    with pytest.raises(WithholdingError, match="no bank named"):
        wh.sign("100000123", "nobank", ACCT1, "clerk")
    with pytest.raises(WithholdingError, match="account number"):
        wh.sign("100000123", "dl", "62|22", "clerk")
    with pytest.raises(WithholdingError, match="actor"):
        wh.sign("100000123", "dl", ACCT1, " ")


def test_cancel_and_list(wh):
    rows = wh.agreements("dl")
    assert [r["customer_no"] for r in rows] == ["100000123", "100000200", "100000300"]
    assert rows[0]["account"] == "622202*********5678" and rows[0]["banks"] == ["dl"]
    assert rows[1]["large_customer"] == 1
    assert [r["customer_no"] for r in wh.agreements()] == [
        "100000123", "100000200", "100000300", "100000500"]  # the blank account is no agreement
    ch = wh.cancel("100000123", "clerk3", "moved away")
    assert ch.previous_bank == "103210" and ch.bank_code is None
    assert [r["customer_no"] for r in wh.agreements("dl")] == ["100000200", "100000300"]
    with pytest.raises(WithholdingError, match="no withholding agreement"):
        wh.cancel("100000123", "clerk3")
    with pytest.raises(WithholdingError, match="no customer"):
        wh.cancel("999", "clerk3")


def test_cancel_warns_about_bills_in_a_waiting_file(wh):
    wh.generate_batch("dl", TODAY)
    ch = wh.cancel("100000123", "clerk3")
    assert len(ch.warnings) == 3 and "1032102026112701.PK" in ch.warnings[0]


# -- batch files ------------------------------------------------------------------------


def test_generate_writes_the_golden_file(wh, tmp_path):
    res = wh.generate_batch("dl", TODAY, actor="clerk1")
    assert res.path == tmp_path / "ex" / PK_NAME
    assert res.path.read_bytes() == GOLDEN_PK
    assert (res.count, res.total, res.large) == (4, 1548000, 1)
    assert res.batch["seq"] == 1 and res.batch["status"] == "GENERATED"
    assert not list((tmp_path / "ex").glob("*.tmp"))
    # the bank side reads it back as written
    recs, trailer = DELIM.read_pk(res.path.read_bytes())
    assert trailer["record_count"] == 4 and trailer["deduct_date"] == TODAY


def test_bills_waiting_in_a_file_are_not_asked_for_twice(wh, tmp_path):
    wh.generate_batch("dl", TODAY)
    again = wh.generate_batch("dl", TODAY)
    assert again.batch is None and again.path is None
    assert again.skipped == {"already waiting in a file or a card debit": 4}
    assert sorted(p.name for p in (tmp_path / "ex").iterdir()) == [PK_NAME]


def test_customers_large_or_households(wh):
    large = wh.generate_batch("dl", TODAY, customers="large")
    assert large.batch["file_name"] == PK_NAME and large.count == 1 and large.large == 1
    assert b"B0010|100000200|" in large.path.read_bytes()
    homes = wh.generate_batch("dl", TODAY, customers="households")
    assert homes.batch["file_name"] == "1032102026112702.PK" and homes.count == 3
    assert homes.large == 0 and b"B0010" not in homes.path.read_bytes()
    with pytest.raises(WithholdingError):
        wh.generate_batch("dl", TODAY, customers="some")


def test_rewrite_and_cancel_a_batch(wh, tmp_path):
    res = wh.generate_batch("dl", TODAY)
    res.path.write_bytes(b"damaged")
    assert wh.rewrite_batch("dl", PK_NAME).read_bytes() == GOLDEN_PK
    with pytest.raises(WithholdingError, match="reason"):
        wh.cancel_batch("dl", PK_NAME, "clerk", " ")
    row = wh.cancel_batch("dl", PK_NAME, "clerk", "bank refused the whole file")
    assert row["status"] == "CANCELLED"
    assert not res.path.exists() and (tmp_path / "ex" / (PK_NAME + ".cancelled")).exists()
    with pytest.raises(WithholdingError, match="cancelled"):
        wh.rewrite_batch("dl", PK_NAME)
    # its bills go into the next file
    nxt = wh.generate_batch("dl", TODAY)
    assert nxt.batch["seq"] == 2 and nxt.count == 4
    with pytest.raises(ResultFileRefused, match="cancelled"):
        wh.process_result("dl", GOOD_PKJG, "1032102026112701.PKJG")


def test_a_file_that_cannot_be_written_keeps_no_batch(wh, tmp_path):
    (tmp_path / "ex").write_text("not a folder")
    with pytest.raises(WithholdingError, match="not kept"):
        wh.generate_batch("dl", TODAY)
    assert wh.batches("dl") == []


# -- results ---------------------------------------------------------------------------------


def test_result_posts_debited_lines_once_also_processed_twice(wh):
    store = wh.store
    wh.generate_batch("dl", TODAY)
    before = bills(store)
    rep = wh.process_result("dl", GOOD_PKJG, "1032102026112701.PKJG", actor="clerk1")
    assert (rep.debited, rep.debited_total, rep.posted, rep.posted_total) == (2, 533000, 2, 533000)
    assert rep.posted_now == 2 and rep.status == "PROCESSED" and rep.waiting == 0
    assert rep.failed == {"insufficient funds (余额不足)": (1, 15000),
                          "account and name do not match (户名不符)": (1, 1000000)}
    assert [(f.bill_id, f.result, f.large) for f in rep.failures] == [
        ("B0002", 1, False), ("B0010", 2, True)]
    assert rep.failures[1].account == "210100******2222"
    assert rep.attention and not rep.unposted
    after = bills(store)
    assert after["B0001"] == (260000, 13000) and after["B0003"] == (260000, 0)
    assert after["B0002"] == before["B0002"] and after["B0010"] == before["B0010"]
    pays = payments(store)
    assert [(p["serial"], p["amount"], p["source"], p["channel"], p["trade_date"])
            for p in pays] == [("PK1127010001", 273000, SOURCE, "90", TODAY),
                               ("PK1127010003", 260000, SOURCE, "90", TODAY)]

    again = wh.process_result("dl", GOOD_PKJG, "1032102026112701.PKJG")
    assert again.posted == 2 and again.posted_now == 0
    assert bills(store) == after and len(payments(store)) == 2
    text = report_text(again)
    assert "insufficient funds" in text and "B0010" in text and "[托收]" in text
    assert ACCT2 not in text


def test_result_after_the_date_was_closed(wh):
    wh.generate_batch("dl", TODAY)
    wh.ledger.cutoff("dl", TODAY)
    rep = wh.process_result("dl", GOOD_PKJG, "1032102026112701.PKJG")
    assert rep.posted == 2
    assert wh.ledger.cutoff("dl", TODAY).count == 0  # the cut-off's totals stay as closed


def test_result_with_crlf_and_a_renamed_file(wh):
    wh.generate_batch("dl", TODAY)
    data = GOOD_PKJG.replace(b"\n", b"\r\n")
    with pytest.raises(ResultFileRefused, match="no batch file"):
        wh.process_result("dl", data, "result.txt")
    rep = wh.process_result("dl", data, "result.txt", batch_file=PK_NAME)
    assert rep.posted == 2


@pytest.mark.parametrize("text, words", [
    # an unknown bill
    ("B0001|100000123|x|2730.00|0|S1|\nB0002|100000123|x|150.00|1||\n"
     "B0003|100000123|x|2600.00|0|S3|\nB0099|100000200|x|10000.00|2||\n0|4|2|5330.00|\n",
     "B0099 is not in the batch"),
    # a line missing
    ("B0001|100000123|x|2730.00|0|S1|\nB0002|100000123|x|150.00|1||\n"
     "B0003|100000123|x|2600.00|0|S3|\n0|3|2|5330.00|\n", "1 line(s) of the batch have no"),
    # another amount
    ("B0001|100000123|x|2730.01|0|S1|\nB0002|100000123|x|150.00|1||\n"
     "B0003|100000123|x|2600.00|0|S3|\nB0010|100000200|x|10000.00|2||\n0|4|2|5330.01|\n",
     "total 2730.01, the batch asked for 2730.00"),
    # another customer
    ("B0001|100000200|x|2730.00|0|S1|\nB0002|100000123|x|150.00|1||\n"
     "B0003|100000123|x|2600.00|0|S3|\nB0010|100000200|x|10000.00|2||\n0|4|2|5330.00|\n",
     "is customer 100000123, not 100000200"),
    # a bill twice
    ("B0001|100000123|x|2730.00|0|S1|\nB0001|100000123|x|2730.00|1||\n"
     "B0003|100000123|x|2600.00|0|S3|\nB0010|100000200|x|10000.00|2||\n0|4|2|5330.00|\n",
     "answered twice"),
    # the trailer disagrees (the codec's reader)
    ("B0001|100000123|x|2730.00|0|S1|\n0|1|1|1.00|\n", "success_total"),
    ("garbage", "does not end with"),
])
def test_a_result_file_that_does_not_match_changes_nothing(wh, text, words):
    wh.generate_batch("dl", TODAY)
    before = bills(wh.store)
    with pytest.raises(ResultFileRefused) as e:
        wh.process_result("dl", text.encode("gbk"), "1032102026112701.PKJG")
    assert words in str(e.value)
    assert bills(wh.store) == before and payments(wh.store) == []
    assert wh.batch("dl", PK_NAME)["status"] == "GENERATED"


def test_a_second_file_contradicting_the_first_is_refused(wh):
    wh.generate_batch("dl", TODAY)
    wh.process_result("dl", GOOD_PKJG, "1032102026112701.PKJG")
    after = bills(wh.store)
    other = GOOD_PKJG.replace(b"150.00|1||", b"150.00|0|PK1127010002|").replace(
        b"0|4|2|5330.00|", b"0|4|3|5480.00|")
    with pytest.raises(ResultFileRefused, match="already answered 1"):
        wh.process_result("dl", other, "1032102026112701.PKJG")
    other = GOOD_PKJG.replace(b"PK1127010003", b"PK1127019999")
    with pytest.raises(ResultFileRefused, match="serial PK1127010003"):
        wh.process_result("dl", other, "1032102026112701.PKJG")
    assert bills(wh.store) == after and len(payments(wh.store)) == 2


def test_a_debited_line_the_ledger_refuses_is_reported_for_an_operator(wh):
    wh.generate_batch("dl", TODAY)
    # the customer paid B0001 at a counter before the bank's result came back
    o = m.Origin("dl", TODAY, "101500")
    r = wh.ledger.pay(m.PaymentRequest(o, "CNT1", "100000123", 273000, content="c",
                                       bill_ids=("B0001",)))
    assert r.outcome is Outcome.OK
    rep = wh.process_result("dl", GOOD_PKJG, "1032102026112701.PKJG")
    assert rep.posted == 1 and len(rep.unposted) == 1
    assert rep.unposted[0].bill_id == "B0001"
    assert "AMOUNT_REJECTED" in rep.unposted[0].reason
    assert "DEBITED BUT NOT POSTED" in report_text(rep)
    # the bill stays out of the next file until an operator settles it
    nxt = wh.generate_batch("dl", TODAY)
    assert nxt.batch["seq"] == 2 and b"B0001" not in nxt.path.read_bytes()
    assert b"B0002" in nxt.path.read_bytes()


def test_a_line_reconciliation_posted_first_is_linked_not_posted_again(wh):
    wh.generate_batch("dl", TODAY)
    o = m.Origin("dl", TODAY, "000000", channel="91")
    r = wh.ledger.pay(m.PaymentRequest(o, "PK1127010001", "100000123", 273000, content="recon",
                                       bill_ids=("B0001",)), source="recon", after_close=True)
    assert r.outcome is Outcome.OK
    rep = wh.process_result("dl", GOOD_PKJG, "1032102026112701.PKJG")
    assert rep.posted == 2 and not rep.unposted and rep.posted_now == 1
    assert len(payments(wh.store)) == 2


def test_posting_interrupted_by_the_database_is_finished_by_processing_again(wh, monkeypatch):
    wh.generate_batch("dl", TODAY)
    real = wh.ledger.pay
    calls = []

    def flaky(req, **kw):
        calls.append(req.serial)
        if len(calls) == 1:
            raise StoreUnavailable("connection lost")
        return real(req, **kw)

    monkeypatch.setattr(wh.ledger, "pay", flaky)
    rep = wh.process_result("dl", GOOD_PKJG, "1032102026112701.PKJG")
    assert rep.posted == 1 and len(rep.unposted) == 1
    assert "process the file again" in rep.unposted[0].reason
    rep = wh.process_result("dl", GOOD_PKJG, "1032102026112701.PKJG")
    assert rep.posted == 2 and not rep.unposted and rep.posted_now == 1
    assert len(payments(wh.store)) == 2


def test_failed_bills_go_into_the_next_file(wh, tmp_path):
    wh.generate_batch("dl", TODAY)
    wh.process_result("dl", GOOD_PKJG, "1032102026112701.PKJG")
    nxt = wh.generate_batch("dl", date(2026, 11, 28))
    assert nxt.path.name == "1032102026112801.PK"
    data = nxt.path.read_bytes().decode("gbk").splitlines()
    assert [ln.split("|")[0] for ln in data[:-1]] == ["B0002", "B0010"]
    assert data[-1].startswith("0|2|10150.00|20261128|")


def test_report_and_csv(wh, tmp_path):
    wh.generate_batch("dl", TODAY)
    rep = wh.report("dl", PK_NAME)
    assert rep.waiting == 4 and rep.debited == 0 and not rep.attention
    rep = wh.process_result("dl", GOOD_PKJG, "1032102026112701.PKJG")
    path = write_report_csv(rep, tmp_path / "r" / "failures.csv")
    text = path.read_text(encoding="utf-8-sig")
    assert text.splitlines()[0].startswith("file,line,kind,customer_no")
    assert "B0010" in text and "沈阳重型机械厂" in text and ACCT2 not in text
    assert len(text.splitlines()) == 3


def test_result_files_waiting_in_the_folder(wh, tmp_path):
    wh.generate_batch("dl", TODAY)
    assert wh.result_files("dl") == []
    (tmp_path / "ex" / "1032102026112701.PKJG").write_bytes(GOOD_PKJG)
    (row, path), = wh.result_files("dl")
    assert row["file_name"] == PK_NAME and path.name == "1032102026112701.PKJG"
    wh.process_result("dl", path.read_bytes(), path.name)
    assert wh.result_files("dl") == []


def test_the_simulated_bank_answers_a_generated_file(wh):
    from bankgate.devtools.debithost import answer_pk_file

    res = wh.generate_batch("dl", TODAY)
    out, counts = answer_pk_file(res.path, DELIM, fail={ACCT2: 3})
    assert out.name == "1032102026112701.PKJG" and counts == {0: 3, 3: 1}
    rep = wh.process_result("dl", out.read_bytes(), out.name)
    assert rep.posted == 3 and rep.failed == {"no such account (账户不存在)": (1, 1000000)}


def test_when_the_clock_says_so(wh):
    assert wh.now() == datetime(2026, 11, 27, 9, 30)


# -- other dialects --------------------------------------------------------------------


def test_every_statement_compiles_for_sql_server_oracle_and_db2(tmp_path):
    """SQL Server, Oracle and DB2 cannot run here: the statements the
    withholding code issues through a day's work are compiled for them."""
    from conftest import RENAMED
    from sqlalchemy.dialects import mssql, oracle, registry
    from twisted.internet import defer

    from bankgate.app.carddebits import build
    from bankgate.store.db import Store

    store = Store(f"sqlite:///{tmp_path / 'x.db'}", RENAMED)
    store.row_locks = True  # issue the locking reads the other databases get
    store.create_gateway_tables()
    store.create_n8_tables()
    seed_fixture(store)
    statements = []

    @sa.event.listens_for(store.engine, "before_execute")
    def capture(conn, clause, multiparams, params, execution_options):
        if isinstance(clause, sa.sql.ClauseElement):
            statements.append(clause)

    cfg = make_cfg(tmp_path, {"debit_host": "tcp:host=127.0.0.1:port=1", "utility_code": "U1"})
    ledger = Ledger(store, {b.name: b.policy_() for b in cfg.banks}, now=lambda: NOW)
    w = make_withholding(ledger, cfg)
    w.sign("100000123", "dl", ACCT1, "clerk")
    w.sign("100000200", "dl", ACCT2, "clerk")
    w.agreements("dl")
    w.generate_batch("dl", TODAY)
    w.process_result("dl", GOOD_PKJG, "1032102026112701.PKJG")
    w.report("dl", PK_NAME)
    w.batches("dl")
    w.cancel("100000200", "clerk")
    debits = build(ledger, cfg, {"ref-delim": DELIM, "ref-fixed": FIXED}, None, lambda: NOW,
                   run_db=lambda f, *a, **k: defer.maybeDeferred(f, *a, **k),
                   endpoint_for=lambda n, o: None)
    plan = debits._prepare_sync(debits.banks["dl"], "100000123", ("B0002",), None, "clerk", NOW)
    row = plan["row"]
    debits._to_reversing(row, ("SENT",), NOW, "test")
    for r in debits._sweep_sync(NOW, frozenset(), True):
        debits._reversal_answered_sync(debits.banks["dl"], r, type(
            "R", (), {"status": "timeout", "decoded": None, "error": "x"})(), NOW)
    debits.pending()
    dialects = {"mssql": mssql.dialect(), "oracle": oracle.dialect(),
                "db2": registry.load("ibm_db_sa")()}
    assert len(statements) > 40
    for name, dialect in dialects.items():
        for st in statements:
            sql = str(st.compile(dialect=dialect))
            assert sql, name
    store.stop()
