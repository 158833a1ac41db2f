"""The reconciliation keys of a bank: every error names the key."""

from __future__ import annotations

from datetime import time

import pytest

from bankgate.app.config import ConfigError, default_config, load_config

KEY = "0123456789ABCDEFFEDCBA9876543210"
HOST_KEY = "SHA256:" + "x" * 43

BANK = f"""
[[bank]]
name = "b1"
plugin = "ref-fixed"
bank_code = "105210"
mac = true
mac_key = "{KEY}"
mac_key_kcv = "08D7B4"
"""


def load(tmp_path, extra: str, after: str = ""):
    p = tmp_path / "bankgate.toml"
    p.write_text(BANK + extra + after, encoding="utf-8")
    return load_config(p)


def test_defaults(tmp_path):
    b = load(tmp_path, "").bank("b1")
    assert b.statement_source == "" and b.reconcile_time is None
    assert b.statement_dir("var") == "var/exchange/b1"
    p = b.reconcile
    assert (p.bank_only, p.utility_only, p.totals_differ, p.post_policy, p.workers) == (
        "post", "reverse", "hold", "any", 1)
    assert all(x.reconcile_time == time(2, 0) for x in default_config().banks)


def test_everything_set(tmp_path):
    b = load(tmp_path, f"""
statement_source = "sftp://bank@10.0.0.5:2222/outbox"
statement_password = "pw"
statement_host_key = "{HOST_KEY}"
statement_retry = 60
statement_retry_max = 600
statement_wait = 7200
reconcile_time = "03:15"
reconcile_days_back = 0
exchange_dir = "/srv/x"
""", """
[bank.reconcile]
bank_only = "exception"
utility_only = "exception"
totals_differ = "balance"
post_policy = "partial"
workers = 4
store_matched = false
pdf = false
report_dir = "/srv/reports"
""").bank("b1")
    assert b.reconcile_time == time(3, 15) and b.reconcile_days_back == 0
    assert (b.statement_retry, b.statement_retry_max, b.statement_wait) == (60, 600, 7200)
    assert b.reconcile.workers == 4 and not b.reconcile.store_matched
    assert b.reconcile.report_dir == "/srv/reports"
    assert "pw" not in repr(b)


def test_a_file_url_is_the_drop_folder(tmp_path):
    b = load(tmp_path, 'statement_source = "file:///srv/bank/in"\n').bank("b1")
    assert b.statement_dir("var") == "/srv/bank/in"


@pytest.mark.parametrize("extra, key, words", [
    ('reconcile_time = "2:00"\n', "bank.b1.reconcile_time", "HH:MM"),
    ('reconcile_time = "24:00"\n', "bank.b1.reconcile_time", "HH:MM"),
    ("reconcile_days_back = 9\n", "bank.b1.reconcile_days_back", "0 to 7"),
    ('statement_source = "http://x/y"\n', "bank.b1.statement_source", "ftp://"),
    ('statement_source = "ftp:///out"\n', "bank.b1.statement_source", "user@host"),
    ('statement_source = "ftp://u:pw@h/out"\n', "bank.b1.statement_source",
     "statement_password"),
    ('statement_source = "ftp://u@h:99999/out"\n', "bank.b1.statement_source", "port"),
    ('statement_source = "sftp://u@h/out"\nstatement_password = "x"\n',
     "bank.b1.statement_host_key", "fingerprint"),
    (f'statement_source = "sftp://u@h/out"\nstatement_host_key = "{HOST_KEY}"\n',
     "bank.b1.statement_password", "statement_key_file"),
    ('statement_source = "sftp://u@h/out"\nstatement_host_key = "nope"\n'
     'statement_password = "x"\n', "bank.b1.statement_host_key", "SHA256"),
    ('statement_password = "x"\n', "bank.b1.statement_password", "only for"),
    ('statement_source = "ftp://u@h/o"\nstatement_key_file = "/etc/hostname"\n',
     "bank.b1.statement_key_file", "only for sftp"),
    ('statement_key_file = "/no/such/key"\n', "bank.b1.statement_key_file", "no such file"),
    ("statement_retry = 0\n", "bank.b1.statement_retry", "between"),
    ("statement_retry = 600\nstatement_retry_max = 60\n", "bank.b1.statement_retry_max",
     "at least"),
    ('statement_wait = "long"\n', "bank.b1.statement_wait", "a number"),
])
def test_errors_name_the_key(tmp_path, extra, key, words):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, extra)
    assert e.value.key == key and words in e.value.problem


@pytest.mark.parametrize("table, key, words", [
    ('bank_only = "ignore"', "bank.b1.reconcile.bank_only", "post, exception"),
    ('utility_only = "keep"', "bank.b1.reconcile.utility_only", "reverse, exception"),
    ('totals_differ = "stop"', "bank.b1.reconcile.totals_differ", "hold, balance"),
    ('post_policy = "free"', "bank.b1.reconcile.post_policy", "exact"),
    ("workers = 0", "bank.b1.reconcile.workers", "1 to 32"),
    ('store_matched = "yes"', "bank.b1.reconcile.store_matched", "true or false"),
    ("lock_stale = 5", "bank.b1.reconcile.lock_stale", "between"),
    ("bank_onyl = 1", "bank.b1.reconcile.bank_onyl", "unknown key"),
])
def test_policy_errors_name_the_key(tmp_path, table, key, words):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, "", f"\n[bank.reconcile]\n{table}\n")
    assert e.value.key == key and words in e.value.problem
