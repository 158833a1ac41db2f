"""Configuration: every error names the file, the key and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from bankgate.app.cli import main as cli
from bankgate.app.config import (
    ConfigError,
    check_plugins,
    default_config,
    load_config,
    with_workers,
)

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
    assert [b.plugin for b in cfg.banks] == ["ref-fixed", "ref-delim", "ref-iso8583",
                                            "ref-xml"]
    assert all(b.listen[0].endswith("interface=127.0.0.1") for b in cfg.banks)
    assert cfg.demo_customers > 0
    assert set(check_plugins(cfg)) >= {"ref-fixed", "ref-delim", "ref-iso8583", "ref-xml"}
    xml = cfg.bank("demo-xml")  # the SM4 key set in code: its length checked, no KCV to compare
    assert (xml.two_phase, xml.confirm_timeout, len(xml.profile().keys.mac_key)) == (True, 600, 16)


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


# -- finding the configuration (--config, $BANKGATE_CONFIG, the system path, the demo) ------


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """No $BANKGATE_CONFIG, and a system path that does not exist (never this machine's
    /etc); the working folder is an empty one."""
    from bankgate.app import config

    monkeypatch.delenv(config.CONFIG_ENV, raising=False)
    monkeypatch.setattr(config, "SYSTEM_CONFIG", tmp_path / "etc" / "bankgate.toml")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return config


def test_config_is_found_in_order_option_env_system(nowhere, tmp_path, monkeypatch):
    from bankgate.app.config import find_config

    system = nowhere.SYSTEM_CONFIG
    system.parent.mkdir()
    system.write_text(BANK)
    env = write(tmp_path, BANK)
    given = tmp_path / "given.toml"
    given.write_text(BANK)
    assert find_config(None) == nowhere.ConfigChoice(system, str(system))
    monkeypatch.setenv("BANKGATE_CONFIG", str(env))
    assert find_config(None) == nowhere.ConfigChoice(env, "$BANKGATE_CONFIG")
    assert find_config(str(given)) == nowhere.ConfigChoice(given, "--config")
    assert find_config(None, demo=True) == nowhere.ConfigChoice(None, "--demo")
    for found in (find_config(None), find_config(str(given)), find_config(None, demo=True)):
        assert found.notice() is None  # a file, or the demo asked for: nothing to warn of
    with pytest.raises(ConfigError, match="not both"):
        find_config(str(given), demo=True)


def test_nothing_found_is_the_demo_said_loudly(nowhere):
    from bankgate.app.config import find_config

    found = find_config(None)
    assert found.is_demo and found.how == ""
    notice = found.notice("v")
    assert "\n" not in notice
    assert notice.startswith("bankgate: WARNING: no configuration")
    assert "DEMO" in notice and "--demo" in notice and "v/" in notice
    assert str(nowhere.SYSTEM_CONFIG) in notice and "$BANKGATE_CONFIG" in notice


def test_a_file_named_by_the_environment_must_exist(nowhere, tmp_path, monkeypatch):
    from bankgate.app.config import find_config

    monkeypatch.setenv("BANKGATE_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError) as e:
        find_config(None)
    assert str(e.value) == f"{tmp_path / 'gone.toml'}: (file): no such file (named by" \
                           " $BANKGATE_CONFIG)"


def test_a_command_without_config_runs_the_demo_and_says_so(nowhere, capsys):
    assert cli(["recon", "exceptions"]) == 0
    out, err = capsys.readouterr()
    assert "0 open exception(s)" in out
    [line] = err.splitlines()  # one line, once
    assert line.startswith("bankgate: WARNING: no configuration") and "DEMO" in line
    assert (Path("var") / "bankgate.db").exists()
    assert cli(["--demo", "recon", "exceptions"]) == 0  # asked for: no warning
    out, err = capsys.readouterr()
    assert "0 open exception(s)" in out and err == ""


def test_commands_find_the_config_in_the_environment_and_the_system_path(
        nowhere, tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[database]\nthreads = 0\n")
    monkeypatch.setenv("BANKGATE_CONFIG", str(bad))
    assert cli(["recon", "exceptions"]) == 2
    assert f"{bad}: database.threads: expected 1 to 64" in capsys.readouterr().err
    monkeypatch.delenv("BANKGATE_CONFIG")
    nowhere.SYSTEM_CONFIG.parent.mkdir()
    nowhere.SYSTEM_CONFIG.write_text(BANK)
    # simulate too: the system file's bank, not the demo's
    assert cli(["simulate", "--bank", "demo-fixed", "echo"]) == 2
    err = capsys.readouterr().err
    assert "no bank named 'demo-fixed'" in err and "b1" in err and "WARNING" not in err
    assert not Path("var").exists()  # nothing of the demo was made


def test_demo_and_config_together_are_refused(nowhere, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli(["--demo", "--config", str(write(tmp_path, BANK)), "recon", "exceptions"])
    assert e.value.code == 2
    assert "give --config or --demo, not both" in capsys.readouterr().err


# -- the database URL: the spelling SQLAlchemy and the installed drivers accept ----------


@pytest.mark.parametrize("url, expected", [
    ("postgres://bg@db.local/n8",
     "'postgres' is not a database SQLAlchemy knows: write 'postgresql+psycopg://"),
    ("sqllite:///var/x.db", "write 'sqlite:///"),
    ("informix://bg@db/n8", "'informix' is not a database SQLAlchemy knows (write one of"
                            " 'sqlite://', 'postgresql+psycopg://', 'mysql+pymysql://'"),
    ("mysql://bg@db.local/n8",
     "'mysql' needs the driver 'MySQLdb', which is not installed: write 'mysql+pymysql://"),
    ("mysql+mysqldb://bg:secret@db.local/n8",
     "write 'mysql+pymysql://user@host/database', or install MariaDB's C driver: pip install"
     " 'bankgate[mysqlclient]' (it builds against libmariadb-dev)"),
])
def test_database_url_spelling_is_checked_with_the_right_one_suggested(
        tmp_path, monkeypatch, url, expected):
    import sys

    monkeypatch.setitem(sys.modules, "MySQLdb", None)  # not installed, on any machine
    path = write(tmp_path, f'[database]\nurl = "{url}"\n')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert (e.value.source, e.value.key) == (str(path), "database.url")
    assert expected in e.value.problem
    assert "secret" not in str(e.value)


@pytest.mark.parametrize("url", ["postgresql+psycopg://bg@db.local/n8",
                                 "mysql+pymysql://bg@db.local/n8", "sqlite:///var/x.db"])
def test_database_urls_the_gateway_runs_on_are_accepted(tmp_path, url):
    assert load_config(write(tmp_path, f'[database]\nurl = "{url}"\n')).db_url == url


def test_a_url_without_a_driver_is_fine_when_sqlalchemy_has_its_driver(tmp_path, monkeypatch):
    import sys

    from sqlalchemy.engine import make_url

    monkeypatch.setitem(sys.modules, "psycopg2", None)  # not installed, on any machine
    path = write(tmp_path, '[database]\nurl = "postgresql://bg@db.local/n8"\n')
    if make_url("postgresql://").get_dialect().driver == "psycopg":  # SQLAlchemy 2.1's default
        assert load_config(path).db_url == "postgresql://bg@db.local/n8"
    else:  # 2.0's default is psycopg2
        with pytest.raises(ConfigError, match="write 'postgresql\\+psycopg://"):
            load_config(path)


def test_config_check_catches_a_misspelt_database(tmp_path, capsys):
    path = write(tmp_path, '[database]\nurl = "postgres://bg@db.local/n8"\n' + BANK)
    assert cli(["config", "check", str(path)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == (f"bankgate: configuration error: {path}: database.url: 'postgres' is not"
                    " a database SQLAlchemy knows: write"
                    " 'postgresql+psycopg://user@host/database'")


# -- --data-dir and [gateway] data_dir ------------------------------------------------------


def test_data_dir_from_the_file_the_flag_or_both(tmp_path, capsys, monkeypatch):
    """The flag wins over the file; with both, neither the service start nor
    ``config check`` refuses the file (it once said ``gateway.data_dir: unknown
    key`` at start while ``config check`` said OK)."""
    from bankgate.app import tap

    in_file, on_flag = (tmp_path / "from-file").as_posix(), (tmp_path / "from-flag").as_posix()
    both = write(tmp_path, f'[gateway]\ndata_dir = "{in_file}"\n' + BANK)
    assert load_config(both).data_dir == in_file  # the file only
    assert str(Path(in_file) / "bankgate.db") in load_config(both).db_url
    cfg = load_config(both, data_dir=on_flag)  # both: the flag wins
    assert cfg.data_dir == on_flag and str(Path(on_flag) / "bankgate.db") in cfg.db_url
    plain = tmp_path / "plain.toml"
    plain.write_text(BANK, encoding="utf-8")
    assert load_config(plain, data_dir=on_flag).data_dir == on_flag  # the flag only
    # a wrong data_dir in the file is still refused, flag or not
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway]\ndata_dir = 3\n" + BANK, encoding="utf-8")
    for flag in (None, on_flag):
        with pytest.raises(ConfigError, match="gateway.data_dir: expected a string"):
            load_config(bad, data_dir=flag)

    # bankgate config check and twistd bankgate agree, in every combination
    for path, flag, want in ((both, None, in_file), (both, on_flag, on_flag),
                             (plain, on_flag, on_flag)):
        argv = ["-d", flag] if flag else []
        assert cli([*argv, "config", "check", str(path)]) == 0
        assert f"  data folder: {want}\n" in capsys.readouterr().out
        seen = []

        def gateway(cfg, reactor, seen=seen):
            seen.append(cfg.data_dir)
            raise RuntimeError("stop here: the configuration was accepted")

        monkeypatch.setattr(tap, "gateway", gateway)
        opts = tap.Options()
        opts.parseOptions(["--config", str(path), *(["--data-dir", flag] if flag else [])])
        with pytest.raises(SystemExit):
            tap.makeService(opts)
        assert seen == [want], capsys.readouterr().err
        assert "the configuration was accepted" in capsys.readouterr().err


GATEWAY_DB = "url = 'postgresql+psycopg://db-host/bankgate'\n"
APART = "[n8.database]\nurl = 'postgresql+psycopg://n8-host/n8'\n"


@pytest.mark.parametrize(("database", "n8", "threads", "two_workers"), [
    ("", "", 4, 4),
    ("threads = 6\n", "", 6, 6),
    # N8 apart, one process: a request holds its thread while it waits for two servers
    ("", APART, 8, 4),
    ("threads = 3\n", APART, 3, 3),
    ("threads = 8\n", APART, 8, 8),
    # the gateway's own URL again: one database, as without the section
    ("", "[n8.database]\n" + GATEWAY_DB, 4, 4),
])
def test_database_threads_default_to_twice_as_many_with_n8_apart_in_one_process(
        tmp_path, database, n8, threads, two_workers):
    """Twice the threads with N8 apart and one worker; with several workers (in the
    file or twistd's --workers) the processes give that, so 4 each; a number in the
    file is kept either way.  (A worker process: tests/test_workers.py.)"""
    text = "[database]\n" + GATEWAY_DB + database + n8
    assert load_config(write(tmp_path, text)).db_threads == threads
    assert with_workers(load_config(write(tmp_path, text)), 2).db_threads == two_workers
    two = write(tmp_path, "[gateway]\nworkers = 2\n" + text)
    assert load_config(two).db_threads == two_workers
