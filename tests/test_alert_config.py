"""``[alerts]``, ``[mail]`` and the banks' alert keys (bankgate.app.config): defaults,
every error naming its key, secrets never shown, and ``bankgate config check``'s
summary."""

from __future__ import annotations

from datetime import time

import pytest

from bankgate.app.cli import main as cli
from bankgate.app.config import ConfigError, default_config, parse_config
from bankgate.domain.alerts import ALL_DAY, BusinessHours

BANK = {"name": "icbc", "plugin": "ref-fixed", "bank_code": "105210"}
MAIL = {"host": "smtp.example.com", "from": "bankgate@example.com"}
EMAIL = {"to": ["ops@example.com"]}


def alerts(**table):
    return parse_config({"alerts": table, "mail": MAIL}).alerts


def test_defaults_follow_the_console():
    assert parse_config({}).alerts.enabled is False
    assert parse_config({"console": {}}).alerts.enabled is True
    assert parse_config({"alerts": {}}).alerts.enabled is True
    off = parse_config({"console": {}, "alerts": {"enabled": False}}).alerts
    assert off.enabled is False
    a = alerts()
    assert (a.interval, a.statement_grace, a.reversal_pending_after) == (60, 900, 600)
    assert a.webhook is None and a.email is None
    assert parse_config({}).mail is None
    demo = default_config()
    assert demo.alerts.enabled and demo.alerts.webhook is None and demo.alerts.email is None
    assert demo.mail is None


def test_mail():
    m = parse_config({"mail": {**MAIL, "starttls": True, "user": "gw",
                               "password": "s3cret-pass", "timeout": 12}}).mail
    assert (m.host, m.port, m.starttls, m.user, m.password, m.sender, m.timeout) == (
        "smtp.example.com", 587, True, "gw", "s3cret-pass", "bankgate@example.com", 12)
    assert "s3cret-pass" not in repr(m) and "smtp.example.com" in repr(m)
    plain = parse_config({"mail": MAIL}).mail
    assert (plain.port, plain.starttls, plain.user, plain.password, plain.timeout) == (
        25, False, None, None, 30)
    assert parse_config({"mail": {**MAIL, "port": 2525}}).mail.port == 2525
    assert parse_config({"mail": MAIL}).alerts.email is None  # mail alone mails no alert


def test_channels():
    cfg = parse_config({
        "alerts": {"interval": 30, "email": {"to": "ops@example.com"},
                   "webhook": {"url": "https://hooks.example.com/x/TOKEN", "retries": 0}},
        "mail": {**MAIL, "starttls": True, "user": "gw", "password": "s3cret-pass"}})
    a = cfg.alerts
    assert a.interval == 30 and a.webhook.retries == 0 and a.webhook.timeout == 10
    assert a.email.to == ["ops@example.com"]
    assert alerts(email={"to": ["a@example.com", "b@example.org"]}).email.to == [
        "a@example.com", "b@example.org"]
    assert "s3cret-pass" not in repr(cfg) and "TOKEN" not in repr(cfg)


def test_bank_keys():
    b = parse_config({"bank": [{**BANK, "quiet_after": 900, "business_hours": "22:00-06:00",
                                "statement_expected": "06:30"}]}).banks[0]
    assert (b.quiet_after, b.business_hours, b.statement_expected) == (
        900, BusinessHours(1320, 360), time(6, 30))
    plain = parse_config({"bank": [BANK]}).banks[0]
    assert (plain.quiet_after, plain.business_hours, plain.statement_expected) == (
        None, ALL_DAY, None)


@pytest.mark.parametrize("table, key, words", [
    ({"interval": 5}, "alerts.interval", "between 10 and 3600"),
    ({"intervall": 60}, "alerts.intervall", "unknown key"),
    ({"enabled": "yes"}, "alerts.enabled", "true or false"),
    ({"webhook": {}}, "alerts.webhook.url", "missing"),
    ({"webhook": {"url": "ftp://h/x"}}, "alerts.webhook.url", "http:// or https://"),
    ({"webhook": {"url": "https://h:99999/x"}}, "alerts.webhook.url", "port"),
    ({"webhook": {"url": "https://h/x", "retries": 11}}, "alerts.webhook.retries", "0 to 10"),
    ({"email": {}}, "alerts.email.to", "missing"),
    ({"email": {"to": []}}, "alerts.email.to", "at least one"),
    ({"email": {"to": ["ops@example.com", "nobody"]}}, "alerts.email.to[1]",
     "e-mail address"),
    ({"email": {**EMAIL, "cc": ["x@example.com"]}}, "alerts.email.cc", "unknown key"),
    # the SMTP server is [mail]'s alone
    ({"email": {**EMAIL, "host": "smtp.example.com"}}, "alerts.email.host", "unknown key"),
])
def test_errors_name_the_key(table, key, words):
    with pytest.raises(ConfigError) as e:
        parse_config({"alerts": table, "mail": MAIL}, "gw.toml")
    assert e.value.key == key and words in e.value.problem


@pytest.mark.parametrize("table, key, words", [
    ({"from": "bankgate@example.com"}, "mail.host", "missing"),
    ({"host": "smtp.example.com"}, "mail.from", "missing"),
    ({**MAIL, "host": "smtp example"}, "mail.host", "host name"),
    ({**MAIL, "from": "bankgate"}, "mail.from", "e-mail address"),
    ({**MAIL, "port": 0}, "mail.port", "1 to 65535"),
    ({**MAIL, "port": "25"}, "mail.port", "an integer"),
    ({**MAIL, "starttls": "yes"}, "mail.starttls", "true or false"),
    ({**MAIL, "timeout": 0.5}, "mail.timeout", "between 1 and 300"),
    ({**MAIL, "user": "gw"}, "mail.password", "go together"),
    ({**MAIL, "password": "pw"}, "mail.user", "go together"),
    ({**MAIL, "user": "gw", "password": "pw"}, "mail.password", "clear text"),
    ({**MAIL, "starttls": True, "user": "gw", "password": 424242}, "mail.password",
     "a string"),
    ({**MAIL, "tls": True}, "mail.tls", "unknown key"),
    ({**MAIL, "to": ["ops@example.com"]}, "mail.to", "unknown key"),
])
def test_mail_errors_name_the_key_and_never_the_password(table, key, words):
    with pytest.raises(ConfigError) as e:
        parse_config({"mail": table}, "gw.toml")
    assert e.value.key == key and words in e.value.problem
    assert "pw" not in str(e.value).replace("password", "") and "424242" not in str(e.value)


def test_alert_mail_without_mail_names_both_keys():
    with pytest.raises(ConfigError) as e:
        parse_config({"alerts": {"email": EMAIL}}, "gw.toml")
    assert e.value.key == "alerts.email.to"
    assert "[mail]" in e.value.problem and "host" in e.value.problem
    assert str(e.value).startswith("gw.toml: alerts.email.to: ")


@pytest.mark.parametrize("extra, key, words", [
    ({"quiet_after": 30}, "bank.icbc.quiet_after", "between 60"),
    ({"business_hours": "08:00-20:00"}, "bank.icbc.business_hours", "without quiet_after"),
    ({"quiet_after": 900, "business_hours": "8-20"}, "bank.icbc.business_hours", "HH:MM-HH:MM"),
    ({"quiet_after": 900, "business_hours": "08:00-08:00"}, "bank.icbc.business_hours",
     "same time"),
    ({"statement_expected": "6:00"}, "bank.icbc.statement_expected", "HH:MM"),
])
def test_bank_errors_name_the_key(extra, key, words):
    with pytest.raises(ConfigError) as e:
        parse_config({"bank": [{**BANK, **extra}]}, "gw.toml")
    assert e.value.key == key and words in e.value.problem


def test_config_check_summarises_without_secrets(tmp_path, capsys):
    path = tmp_path / "gw.toml"
    path.write_text(f"""
[database]
url = "sqlite:///{tmp_path / 'gw.db'}"
[alerts]
interval = 30
[alerts.webhook]
url = "https://hooks.example.com/services/TOKEN123"
[alerts.email]
to = ["ops@example.com", "duty@example.com"]
[mail]
host = "smtp.example.com"
starttls = true
user = "gw"
password = "s3cret-pass"
from = "bankgate@example.com"
[[bank]]
name = "delim"
plugin = "ref-delim"
bank_code = "103210"
quiet_after = 900
business_hours = "08:00-20:00"
reconcile_time = "02:00"
statement_expected = "06:00"
[[bank]]
name = "fixed"
plugin = "ref-fixed"
bank_code = "105210"
""", encoding="utf-8")
    assert cli(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert ("  mail: smtp.example.com:587 (STARTTLS, login gw), from bankgate@example.com\n"
            "  alerts: every 30 s, to the log and the console, webhook"
            " https://hooks.example.com, e-mail to ops@example.com, duty@example.com\n") in out
    assert ("  alerts for bank delim: quiet after 900 s within 08:00-20:00, statement"
            " expected by 06:00\n") in out
    assert "alerts for bank fixed" not in out
    assert "TOKEN123" not in out and "s3cret-pass" not in out
    path.write_text(path.read_text().replace("interval = 30", "enabled = false"))
    assert cli(["config", "check", str(path)]) == 0
    assert "  alerts: off\n" in capsys.readouterr().out
    text = path.read_text()
    path.write_text(text[:text.index("[alerts]")] + text[text.index("[[bank]]"):])
    assert cli(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "  mail: not configured (no [mail] table: nothing is mailed)\n" in out
    assert "  alerts: off\n" in out
