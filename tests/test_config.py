"""Configuration: every error names the file, the key and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from bankgate.app.cli import main as cli
from bankgate.app.config import ConfigError, check_plugins, default_config, load_config

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "bankgate.toml"
KEY = "0123456789ABCDEFFEDCBA9876543210"

BANK = f"""
[[bank]]
name = "b1"
plugin = "ref-fixed"
bank_code = "105210"
listen = "tcp:9101:interface=127.0.0.1"
mac = true
mac_key = "{KEY}"
mac_key_kcv = "08D7B4"
"""


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "bankgate.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_no_file_is_the_embedded_default():
    cfg = load_config(None)
    assert cfg.is_default and cfg.db_url.startswith("sqlite:///")
    assert [b.plugin for b in cfg.banks] == ["ref-fixed", "ref-delim", "ref-iso8583"]
    assert all(b.listen[0].endswith("interface=127.0.0.1") for b in cfg.banks)
    assert cfg.demo_customers > 0
    assert set(check_plugins(cfg)) >= {"ref-fixed", "ref-delim", "ref-iso8583"}


def test_the_shipped_example_is_valid():
    cfg = load_config(EXAMPLE)
    assert cfg.bank("icbc-shenyang").mac_key == bytes.fromhex(KEY)
    assert cfg.bank("boc-atm").cutoff_time.hour == 23
    check_plugins(cfg)


def test_a_good_file(tmp_path):
    cfg = load_config(write(tmp_path, '[database]\nurl = "sqlite:///x.db"\n' + BANK))
    b = cfg.bank("b1")
    assert (b.plugin, b.bank_code, b.listen, b.mac) == (
        "ref-fixed", "105210", ["tcp:9101:interface=127.0.0.1"], True)
    assert KEY not in repr(b) and KEY.lower() not in repr(cfg)


@pytest.mark.parametrize(
    "text, key, expected",
    [
        ("[database\n", "(syntax)", "Expected"),
        ("[gateway]\ntimezone = 'Mars/Base'\n", "gateway.timezone", "unknown time zone"),
        ("[gateway]\ncolour = 1\n", "gateway.colour", "unknown key"),
        ("[database]\nurl = 'nonsense'\n", "database.url", "SQLAlchemy URL"),
        ("[database]\nthreads = 'four'\n", "database.threads", "expected an integer"),
        ("[database]\nthreads = 0\n", "database.threads", "1 to 64"),
        ("[n8.tables]\nbills = 'X'\n", "n8.tables.bills", "unknown N8 table"),
        ("[n8.columns.bill]\namout = 'X'\n", "n8.columns.bill.amout", "unknown column"),
        ("[console]\nlisten = '9000'\n", "console.listen", "endpoint string"),
        (BANK.replace('"105210"', '"10 52"'), "bank.b1.bank_code", "letters or digits"),
        (BANK.replace('policy', 'x') + 'policy = "generous"\n', "bank.b1.policy",
         "exact, partial, overpay, any"),
        (BANK.replace("08D7B4", "08D7B5"), "bank.b1.mac_key_kcv", "does not match"),
        (BANK.replace(KEY, "XYZ"), "bank.b1.mac_key", "32 hex digits"),
        (BANK.replace('mac_key_kcv = "08D7B4"\n', ""), "bank.b1.mac_key_kcv", "missing"),
        (BANK + BANK, "bank[1].name", "configured twice"),
        (BANK + 'cutoff_time = "25:00"\n', "bank.b1.cutoff_time", "HH:MM"),
        (BANK + 'allow = ["10.0.0.0/33"]\n', "bank.b1.allow[0]", "CIDR"),
        (BANK.replace("tcp:9101", "9101"), "bank.b1.listen[0]", "endpoint string"),
        (BANK.replace("ref-fixed", "ref-iso8583"), "bank.b1.zmk", "zone master key"),
        ('[[bank]]\nname = "x"\n', "bank.x.plugin", "missing"),
    ],
)
def test_errors_name_file_key_and_expectation(tmp_path, text, key, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        # the file's own errors come from load_config; which keys a bank needs
        # is its plugin's declaration, checked once the plugins load
        check_plugins(load_config(path))
    assert e.value.source == str(path)
    assert e.value.key == key
    assert expected in e.value.problem
    assert str(e.value).startswith(f"{path}: {key}: ")
    assert KEY not in str(e.value)


def test_unknown_plugin_is_named(tmp_path):
    cfg = load_config(write(tmp_path, BANK.replace('"ref-fixed"', '"ref-fixd"')))
    with pytest.raises(ConfigError, match=r"bank.b1.plugin: no plugin named 'ref-fixd'"):
        check_plugins(cfg)


def test_config_check_command(tmp_path, capsys):
    good = write(tmp_path, BANK)
    assert cli(["config", "check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "bank b1: plugin ref-fixed" in out and KEY not in out
    bad = tmp_path / "bad.toml"
    bad.write_text(BANK.replace("08D7B4", "000000"))
    assert cli(["config", "check", str(bad)]) == 2
    assert "bank.b1.mac_key_kcv: does not match" in capsys.readouterr().err
    assert cli(["config", "check", str(tmp_path / "missing.toml")]) == 2


def test_default_config_paths_follow_the_data_dir(tmp_path):
    cfg = default_config(str(tmp_path / "v"))
    assert str(tmp_path / "v" / "bankgate.db") in cfg.db_url


def test_misspelt_bank_options_are_refused(tmp_path):
    from bankgate.app.options import check_options

    cfg = load_config(write(tmp_path, BANK + "[bank.options]\nwithholdng = true\n"))
    with pytest.raises(ConfigError, match=r"bank.b1.options.withholdng: unknown option"):
        check_options(cfg, check_plugins(cfg))
    ok = load_config(write(tmp_path, BANK + "[bank.options]\nwithholding = false\n"
                           "invoice = true\n"))
    check_options(ok, check_plugins(ok))
    iso = load_config(write(tmp_path, BANK.replace("ref-fixed", "ref-iso8583").replace(
        "mac_key", "zmk") + "[bank.options]\nchannel = \"04\"\n"))
    check_options(iso, check_plugins(iso))  # the plugin declares it reads 'channel'
