"""The deployment files (``deploy/``) and ``bankgate backup`` with its restore.

The systemd unit is read the way systemd reads it (an INI file) and its keys that
matter are asserted; where ``systemd-analyze`` exists it verifies the unit too. The
backup is made of a SQLite store with rows, compared table by table with the
original, and restored into place the way ``docs/operator-guide.rst`` says. The
commands printed for database servers are run against the test servers when their
tools are installed (end-to-end: they run subprocesses).
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import BANKS, NOW, FakeClock, make_store, seed_fixture, server_url
from ledger_helpers import pay, rev

from bankgate.app.cli import main as cli
from bankgate.canon.messages import Outcome
from bankgate.domain.ledger import Ledger
from bankgate.store.db import Store
from bankgate.store.model import GATEWAY_TABLES

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "bankgate.service"
LOGROTATE = ROOT / "deploy" / "logrotate.d" / "bankgate"


def _unit() -> configparser.ConfigParser:
    # systemd's unit syntax: INI, keys case-sensitive, "#" comments, a key may repeat
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    cp.read_string(UNIT.read_text(encoding="utf-8"))
    return cp


# -- the systemd unit ---------------------------------------------------------------------


def test_the_unit_runs_twistd_in_the_foreground_without_a_pid_file():
    svc = _unit()["Service"]
    argv = shlex.split(svc["ExecStart"])
    assert Path(argv[0]).name == "twistd" and Path(argv[0]).is_absolute()
    app = argv.index("bankgate")
    # twistd's options come before the application's name, the gateway's after it
    assert "--nodaemon" in argv[:app] and "--pidfile=" in argv[:app]
    assert not any(a.startswith(("--logfile", "-l")) for a in argv)  # the journal logs
    assert argv[app + 1:] == ["--config", "/etc/bankgate/bankgate.toml"]
    assert svc["Type"] in ("exec", "simple")


def test_the_unit_restarts_runs_as_its_user_and_has_limits():
    unit = _unit()
    svc = unit["Service"]
    assert svc["Restart"] in ("on-failure", "always")
    assert int(svc["RestartSec"].removesuffix("s")) >= 1
    # a configuration error (twistd bankgate exits 2) fails the same way every time
    assert "2" in svc["RestartPreventExitStatus"].split()
    assert svc["User"] and svc["User"] != "root" and svc["Group"] == svc["User"]
    # the working directory is the state directory systemd creates for that user
    assert svc["WorkingDirectory"] == "/var/lib/" + svc["StateDirectory"]
    assert int(svc["LimitNOFILE"]) >= 4096
    assert svc["StandardOutput"] == "journal"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in unit["Unit"]["After"].split()


def _logrotate_block() -> tuple[str, list[str]]:
    text = "\n".join(line for line in LOGROTATE.read_text(encoding="utf-8").splitlines()
                     if not line.lstrip().startswith("#"))
    m = re.search(r"^(\S+)\s*\{(.*?)^\}", text, re.S | re.M)
    assert m, "no 'PATH { ... }' block"
    return m.group(1), [line.strip() for line in m.group(2).splitlines() if line.strip()]


def test_logrotate_rotates_the_units_file_log_in_place():
    path, directives = _logrotate_block()
    # the file the unit's commented alternative appends to
    alt = re.search(r"^#StandardOutput=append:(\S+)$", UNIT.read_text(encoding="utf-8"), re.M)
    assert alt and alt.group(1) == path
    # twistd writes to its standard output and cannot reopen it: copy and truncate
    assert "copytruncate" in directives
    assert any(re.fullmatch(r"rotate \d+", d) for d in directives)
    assert "compress" in directives and "missingok" in directives


@pytest.mark.e2e
def test_systemd_analyze_verifies_the_unit(tmp_path):
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed here")
    twistd = Path(sys.executable).with_name("twistd")
    # verify checks that ExecStart's program exists: point it at this checkout's
    text = UNIT.read_text(encoding="utf-8").replace("/opt/bankgate/.venv/bin/twistd",
                                                    str(twistd))
    unit = tmp_path / "bankgate.service"
    unit.write_text(text, encoding="utf-8")
    r = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "bankgate.service" not in r.stderr, r.stderr  # no warning about our unit


@pytest.mark.e2e
def test_logrotate_accepts_the_snippet(tmp_path):
    exe = shutil.which("logrotate")
    if exe is None:
        pytest.skip("logrotate is not installed here")
    conf = tmp_path / "bankgate.conf"
    conf.write_text(LOGROTATE.read_text(encoding="utf-8").replace(
        "/var/log/bankgate", str(tmp_path)), encoding="utf-8")
    (tmp_path / "bankgate.log").write_text("a line\n", encoding="utf-8")
    r = subprocess.run([exe, "--debug", "--state", str(tmp_path / "state"), str(conf)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "error" not in (r.stdout + r.stderr).lower()
    assert f"rotating pattern: {tmp_path}/bankgate.log" in r.stdout + r.stderr


# -- bankgate backup (SQLite) and the restore ---------------------------------------------------

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
"""


def _config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "bankgate.toml"
    path.write_text(CONFIG.format(data=tmp_path / "data", url=url), encoding="utf-8")
    return path


def _payments(store: Store) -> Ledger:
    clock = FakeClock()
    ledger = Ledger(store, {"fixed": BANKS["fixed"]}, now=clock)
    assert ledger.pay(pay("S1")).outcome is Outcome.OK
    clock.now = NOW + timedelta(minutes=1)
    assert ledger.pay(pay("S2", customer="100000200", amount=1000000)).outcome is Outcome.OK
    assert ledger.reverse(rev("R2", "S2", customer="100000200", amount=1000000)).outcome \
        is Outcome.OK
    return ledger


def _counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}
    finally:
        conn.close()


@pytest.fixture
def sqlite_gateway(tmp_path):
    store = make_store("sqlite", tmp_path)
    seed_fixture(store)
    ledger = _payments(store)
    yield store, ledger, _config(tmp_path, f"sqlite:///{tmp_path / 'bg.db'}")
    store.stop()


def _backup(cfg: Path, capsys, *extra: str) -> Path:
    assert cli(["-c", str(cfg), "backup", *extra]) == 0
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0
    m = re.fullmatch(r"(\S+): [\d.]+ (bytes|KB|MB), (\d+) tables, quick_check ok;"
                     r" bg_payment (\d+) rows, bg_journal (\d+) rows", out)
    assert m, out
    return Path(m.group(1))


def test_backup_copies_every_row_into_a_dated_file(sqlite_gateway, tmp_path, capsys):
    store, _, cfg = sqlite_gateway
    copy = _backup(cfg, capsys, "--out", str(tmp_path / "backups"))
    assert copy.parent == tmp_path / "backups"
    assert re.fullmatch(r"bg-\d{8}-\d{6}\.db", copy.name)
    original, copied = _counts(tmp_path / "bg.db"), _counts(copy)
    assert copied == original
    assert set(GATEWAY_TABLES) <= set(copied)
    assert copied["bg_payment"] == 2 and copied["bg_journal"] == 3
    # one self-contained file: not in WAL mode, nothing beside it, no half-written copy
    conn = sqlite3.connect(copy)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()
    assert sorted(p.name for p in copy.parent.iterdir()) == [copy.name]


def test_backup_is_a_snapshot_while_a_writer_holds_a_transaction(sqlite_gateway, tmp_path,
                                                                  capsys):
    """The gateway may be in the middle of a payment: the copy waits for nothing and
    holds only what was committed."""
    store, _, cfg = sqlite_gateway
    before = _counts(tmp_path / "bg.db")
    writer = sqlite3.connect(tmp_path / "bg.db", isolation_level=None, timeout=0)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO bg_audit (at, actor, action) VALUES ('2026-11-27', 'x', 'y')")
    try:
        copy = _backup(cfg, capsys, "--out", str(tmp_path / "backups"))
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert _counts(copy) == before


def test_backup_goes_to_the_data_folder_by_default(sqlite_gateway, tmp_path, capsys):
    _, _, cfg = sqlite_gateway
    copy = _backup(cfg, capsys)
    assert copy.parent == tmp_path / "data" / "backups"


def test_restore_the_copy_into_place(sqlite_gateway, tmp_path, capsys):
    """docs/operator-guide.rst, "Restoring SQLite": stop, move the database and its
    -wal and -shm aside, copy the backup into place, start."""
    store, ledger, cfg = sqlite_gateway
    copy = _backup(cfg, capsys, "--out", str(tmp_path / "backups"))
    at_backup = _counts(copy)
    # after the backup: another payment, which the restore will take back
    assert ledger.pay(pay("S3", customer="100000200", amount=1000000)).outcome is Outcome.OK
    assert _counts(tmp_path / "bg.db")["bg_payment"] == 3

    store.stop()  # stop the gateway
    db = tmp_path / "bg.db"
    aside = tmp_path / "broken"
    aside.mkdir()
    for suffix in ("", "-wal", "-shm"):
        p = Path(f"{db}{suffix}")
        if p.exists():
            p.rename(aside / p.name)
    shutil.copy2(copy, db)

    assert _counts(db) == at_backup
    assert cli(["-c", str(cfg), "status", "--date", "2026-11-27", "--json"]) == 0
    assert '"payments": 1' in capsys.readouterr().out  # S1 stands, S2 reversed, no S3
    # the gateway works on it: S3 is unknown to the restored journal, so it posts again
    again = Store(f"sqlite:///{db}", store.mapping)
    try:
        ledger = Ledger(again, {"fixed": BANKS["fixed"]}, now=FakeClock())
        r = ledger.pay(pay("S3", customer="100000200", amount=1000000))
        assert r.outcome is Outcome.OK and not r.retry
    finally:
        again.stop()


def test_backup_of_a_missing_database_changes_nothing(tmp_path, capsys):
    cfg = _config(tmp_path, f"sqlite:///{tmp_path / 'nowhere.db'}")
    assert cli(["-c", str(cfg), "backup", "--out", str(tmp_path / "backups")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bankgate: backup: no database file at ") and err.count("\n") == 1
    assert not (tmp_path / "backups").exists() and not (tmp_path / "nowhere.db").exists()


@pytest.mark.parametrize("url,tool,restore", [
    ("postgresql+psycopg://bankgate:s3cret@db1.example:5432/n8", "pg_dump", "pg_restore"),
    ("mysql+pymysql://bankgate:s3cret@db1.example/n8", "mariadb-dump", "mariadb"),
])
def test_backup_refuses_a_server_and_prints_its_tool(tmp_path, capsys, url, tool, restore):
    cfg = _config(tmp_path, url)
    assert cli(["-c", str(cfg), "backup"]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "copies SQLite files only" in err
    assert "s3cret" not in out + err
    commands = [line for line in out.splitlines() if not line.startswith("#")]
    assert [c.split()[0] for c in commands] == [tool, restore]
    backup_cmd = commands[0]
    assert "--host=db1.example" in backup_cmd and "--user" in backup_cmd  # --username too
    if tool == "pg_dump":
        assert "--table='bg_*'" in backup_cmd and backup_cmd.endswith(" n8")
    else:
        assert all(f" {t} " in backup_cmd + " " for t in GATEWAY_TABLES)
        assert " bg_alembic_version " in backup_cmd and "--single-transaction" in backup_cmd


# -- the printed server commands, run for real -------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("kind,tool", [("postgres", "pg_dump"), ("mariadb", "mariadb-dump")])
def test_the_printed_server_commands_back_up_and_restore(kind, tool, tmp_path, capsys):
    import sqlalchemy as sa

    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed here")
    url = server_url(kind)
    store = make_store(kind, tmp_path)
    try:
        seed_fixture(store)
        _payments(store)

        def counts():
            with store.engine.connect() as c:
                return {t: c.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar()
                        for t in GATEWAY_TABLES}

        before = counts()
        assert before["bg_payment"] == 2
        cfg = _config(tmp_path, url)
        assert cli(["-c", str(cfg), "backup"]) == 2
        backup_cmd, restore_cmd = [line for line in capsys.readouterr().out.splitlines()
                                   if not line.startswith("#")]
        u = sa.engine.make_url(url)
        env = dict(os.environ, PGPASSWORD=u.password or "", MYSQL_PWD=u.password or "")
        subprocess.run(backup_cmd, shell=True, cwd=tmp_path, env=env, check=True, timeout=120)
        with store.engine.begin() as c:  # the disaster
            c.execute(sa.text("DELETE FROM bg_payment"))
            c.execute(sa.text("DELETE FROM bg_journal"))
        assert counts()["bg_payment"] == 0
        store.engine.dispose()  # the gateway is stopped for a restore
        subprocess.run(restore_cmd, shell=True, cwd=tmp_path, env=env, check=True, timeout=120)
        assert counts() == before
    finally:
        store.drop_all()
        store.stop()
