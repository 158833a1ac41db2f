"""Start-up failures are clear and early: one line each, before twistd forks.

The checks themselves (the data folder's lock, the ports, the database) run
in-process, with the port probe injected; ``twistd bankgate`` finds its
configuration like the ``bankgate`` command.  The end-to-end tests at the
bottom run ``twistd`` in daemon mode in a subprocess (real ports, a temporary
data folder): a start that fails exits non-zero, says why in one line and
leaves no pid file; a start that works returns once the gateway listens.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bankgate.app import config, startup
from bankgate.app.config import default_config, load_config
from bankgate.app.startup import DataLock, StartupError, check_database, check_ports
from bankgate.app.tap import Options, makeService
from bankgate.devtools.gateway import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """No $BANKGATE_CONFIG and no system file (never this machine's /etc); an empty
    working folder."""
    monkeypatch.delenv(config.CONFIG_ENV, raising=False)
    monkeypatch.setattr(config, "SYSTEM_CONFIG", tmp_path / "etc" / "bankgate.toml")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def refuse(*ports: int, code: int = errno.EADDRINUSE):
    """A port probe: these ports are taken, every other one is free."""
    probed = []

    def bind(family, address):
        probed.append(address)
        if address[1] in ports:
            raise OSError(code, os.strerror(code))

    bind.probed = probed
    return bind


# -- one gateway per data folder ---------------------------------------------------------


def test_a_second_lock_on_the_data_folder_says_a_gateway_is_running(tmp_path):
    first = DataLock(tmp_path / "data").acquire()
    assert (tmp_path / "data" / "bankgate.lock").read_text() == f"{os.getpid()}\n"
    with pytest.raises(StartupError) as e:
        DataLock(tmp_path / "data").acquire()
    assert str(e.value) == (
        f"a gateway is already running on this data ({tmp_path}/data/bankgate.lock is locked,"
        f" pid {os.getpid()}); stop it first, or give this one its own --data-dir")
    first.release()
    DataLock(tmp_path / "data").acquire().release()  # free again once released


# -- the ports ---------------------------------------------------------------------------


def test_a_port_in_use_names_the_bank_and_the_port():
    bind = refuse(9102)
    with pytest.raises(StartupError) as e:
        check_ports([("bank a", "tcp:9101:interface=127.0.0.1"),
                     ("bank b", "tcp:port=9102:interface=127.0.0.1")], bind=bind)
    assert str(e.value) == ("bank b: cannot listen on tcp:port=9102:interface=127.0.0.1: port"
                            " 9102 is already in use (see: ss -ltnp 'sport = :9102')")
    assert bind.probed == [("127.0.0.1", 9101), ("127.0.0.1", 9102)]


@pytest.mark.parametrize("code, problem", [
    (errno.EACCES, "port 101: permission denied (ports below 1024 need privileges)"),
    (errno.EADDRNOTAVAIL, "10.9.9.9 is not an address of this machine"),
])
def test_other_reasons_a_port_cannot_be_had(code, problem):
    with pytest.raises(StartupError) as e:
        check_ports([("bank a", "tcp:101:interface=10.9.9.9")], bind=refuse(101, code=code))
    assert str(e.value) == f"bank a: cannot listen on tcp:101:interface=10.9.9.9: {problem}"


def test_two_listeners_on_one_port_are_refused_before_probing():
    bind = refuse()
    with pytest.raises(StartupError, match=r"^bank b: cannot listen on tcp:9101: port 9101 is"
                                           r" also bank a's \(tcp:9101:interface=127.0.0.1\)$"):
        check_ports([("bank a", "tcp:9101:interface=127.0.0.1"), ("bank b", "tcp:9101")],
                    bind=bind)
    check_ports([("bank a", "tcp:9101:interface=127.0.0.1"),
                 ("bank b", "tcp:9101:interface=127.0.0.2"), ("bank c", "tcp:0")], bind=bind)
    assert bind.probed[-2:] == [("127.0.0.1", 9101), ("127.0.0.2", 9101)]  # port 0: any


# -- the database ----------------------------------------------------------------------


def test_a_database_that_cannot_be_opened_is_one_line(tmp_path):
    from bankgate.app import wiring

    cfg = default_config(str(tmp_path / "var"))
    cfg.db_url = f"sqlite:///{tmp_path}"  # a folder, not a database file
    with pytest.raises(StartupError) as e:
        check_database(cfg, wiring.store(cfg))
    assert str(e.value) == f"database sqlite:///{tmp_path}: unable to open database file"


def test_a_missing_n8_is_found_before_the_start(tmp_path):
    from bankgate.app import wiring

    cfg = default_config(str(tmp_path / "var"))
    cfg.n8_create = False
    with pytest.raises(StartupError, match=r"n8: the N8 table 'n8_customer' does not exist"):
        check_database(cfg, wiring.store(cfg))
    cfg.n8_create = True
    check_database(cfg, wiring.store(cfg))  # may be created: fine


def test_a_database_error_in_a_command_is_one_line(tmp_path, capsys):
    from bankgate.app.cli import main

    path = tmp_path / "bankgate.toml"
    path.write_text(f'[database]\nurl = "sqlite:///{tmp_path}"\n')
    assert main(["-c", str(path), "recon", "exceptions"]) == 1
    assert capsys.readouterr().err == (
        f"bankgate: database sqlite:///{tmp_path}: unable to open database file\n")


# -- twistd bankgate: the same search, the checks before the fork -----------------------


def make(argv: list[str]):
    opts = Options()
    opts.parseOptions(argv)
    return makeService(opts)


def test_twistd_finds_the_config_in_the_environment_and_the_system_path(
        nowhere, tmp_path, monkeypatch, capsys):
    bad = tmp_path / "env.toml"
    bad.write_text("[database]\nthreads = 0\n")
    monkeypatch.setenv("BANKGATE_CONFIG", str(bad))
    with pytest.raises(SystemExit) as e:
        make([])
    assert e.value.code == 2
    assert f"{bad}: database.threads: expected 1 to 64" in capsys.readouterr().err
    monkeypatch.delenv("BANKGATE_CONFIG")
    config.SYSTEM_CONFIG.parent.mkdir()
    config.SYSTEM_CONFIG.write_text("[gateway]\ncolour = 1\n")
    with pytest.raises(SystemExit) as e:
        make([])
    assert e.value.code == 2
    assert f"{config.SYSTEM_CONFIG}: gateway.colour: unknown key" in capsys.readouterr().err


def test_twistd_without_any_config_says_it_runs_the_demo(nowhere, capsys):
    held = DataLock(nowhere / "var").acquire()  # stops it right after the warning
    try:
        with pytest.raises(SystemExit) as e:
            make([])
    finally:
        held.release()
    assert e.value.code == 1
    warning, stop = capsys.readouterr().err.splitlines()
    assert warning.startswith("bankgate: WARNING: no configuration") and "DEMO" in warning
    assert stop.startswith("bankgate: cannot start: a gateway is already running on this data")


def test_twistd_refuses_demo_with_config():
    from twisted.python import usage

    with pytest.raises(usage.UsageError, match="give --config or --demo, not both"):
        Options().parseOptions(["--demo", "--config", "x.toml"])


def test_twistd_checks_the_ports_before_any_database_work(nowhere, monkeypatch, capsys):
    monkeypatch.setattr(startup, "_bind", refuse(9101))
    with pytest.raises(SystemExit) as e:
        make(["--demo"])
    assert e.value.code == 1
    assert capsys.readouterr().err == (
        "bankgate: cannot start: bank demo-fixed: cannot listen on"
        " tcp:9101:interface=127.0.0.1: port 9101 is already in use (see: ss -ltnp"
        " 'sport = :9101')\n")
    assert not (nowhere / "var" / "bankgate.db").exists()  # the database was not touched
    DataLock(nowhere / "var").acquire().release()  # and the lock was let go


def test_an_unreadable_tls_key_names_the_bank_in_one_line(nowhere, tmp_path, capsys):
    path = tmp_path / "tls.toml"
    path.write_text(f'[gateway]\ndata_dir = "{tmp_path}/data"\n[[bank]]\nname = "b1"\n'
                    'plugin = "ref-delim"\nbank_code = "103210"\n'
                    f'listen = "ssl:9443:privateKey={tmp_path}/gone.pem"\n')
    with pytest.raises(SystemExit) as e:
        make(["--config", str(path)])
    assert e.value.code == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"bankgate: cannot start: bank b1: cannot listen on ssl:9443:"
                           f"privateKey={tmp_path}/gone.pem: ")


def test_twistd_holds_the_lock_and_hands_the_service_twistd_options(nowhere, monkeypatch,
                                                                    capsys):
    from twisted.scripts.twistd import ServerOptions

    monkeypatch.setattr(startup, "_bind", refuse())
    server = ServerOptions()
    server.parseOptions(["--pidfile", "x.pid", "bankgate", "--demo"])
    gw = makeService(server.subOptions)
    try:
        assert capsys.readouterr().err == ""  # the demo, asked for: no warning
        assert gw.cfg.is_default and gw.lock.held
        assert gw.report.pidfile == str(nowhere / "x.pid")  # twistd makes it absolute
        with pytest.raises(StartupError, match="already running"):
            DataLock(nowhere / "var").acquire()
    finally:
        gw.lock.release()


# -- end to end: twistd in daemon mode, in a subprocess ------------------------------------

DAEMON = ("import sys; from twisted.scripts.twistd import run; "
          "sys.argv = ['twistd', *sys.argv[1:]]; run()")

CONFIG = """\
[gateway]
data_dir = "{data}"

[database]
url = "{url}"

[n8]
create = true

[[bank]]
name = "delim"
plugin = "ref-delim"
bank_code = "103210"
listen = "tcp:{port}:interface=127.0.0.1"
"""


class Daemon:
    """``twistd --pidfile P --logfile L bankgate --config C`` (no --nodaemon)."""

    def __init__(self, folder: Path, port: int | None = None, data: Path | None = None,
                 url: str | None = None):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.data = data or folder / "data"
        self.config = folder / "bankgate.toml"
        url = url or f"sqlite:///{self.data.as_posix()}/bankgate.db"
        self.config.write_text(CONFIG.format(data=self.data.as_posix(), port=self.port, url=url))
        self.pidfile = folder / "twistd.pid"
        self.log = folder / "twistd.log"
        # this source tree's bankgate and twistd plugin, installed or not
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))

    def run(self) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", DAEMON, "--pidfile", str(self.pidfile), "--logfile",
             str(self.log), "bankgate", "--config", str(self.config)],
            cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=60)

    def run_expecting_failure(self) -> subprocess.CompletedProcess:
        """``run``; a daemon that started all the same is stopped (by its pid file)."""
        r = self.run()
        if r.returncode == 0 and self.pidfile.exists():
            os.kill(int(self.pidfile.read_text()), signal.SIGTERM)
        return r


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.e2e
def test_daemon_with_its_port_taken_exits_1_in_one_line_and_leaves_no_pid_file(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        d = Daemon(tmp_path, port=taken.getsockname()[1])
        r = d.run_expecting_failure()
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr == (f"bankgate: cannot start: bank delim: cannot listen on"
                        f" tcp:{d.port}:interface=127.0.0.1: port {d.port} is already in use"
                        f" (see: ss -ltnp 'sport = :{d.port}')\n")
    assert not d.pidfile.exists()
    assert not (d.data / "bankgate.db").exists()  # found before any database work


@pytest.mark.e2e
def test_daemon_without_its_database_exits_1_in_one_line_and_leaves_no_pid_file(tmp_path):
    db_port = free_port()  # nothing listens there
    d = Daemon(tmp_path, url=f"postgresql+psycopg://bg:secret@127.0.0.1:{db_port}/n8")
    r = d.run_expecting_failure()
    assert r.returncode == 1, r.stdout + r.stderr
    [line] = r.stderr.splitlines()
    assert line.startswith(f"bankgate: cannot start: database postgresql+psycopg://bg:***@"
                           f"127.0.0.1:{db_port}/n8: connection failed: ")
    assert "Connection refused" in line and "secret" not in line
    assert not d.pidfile.exists()


@pytest.mark.e2e
def test_daemon_failing_after_the_fork_exits_1_and_leaves_no_pid_file(tmp_path):
    d = Daemon(tmp_path)
    d.data.mkdir()
    with sqlite3.connect(d.data / "bankgate.db") as db:  # a schema from no known version
        db.execute("CREATE TABLE bg_alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        db.execute("INSERT INTO bg_alembic_version VALUES ('f00f00f00f00')")
    r = d.run_expecting_failure()
    assert r.returncode == 1, r.stdout + r.stderr
    # twistd's first process prints what the daemon told it (its first 98 bytes)
    assert "An error has occurred" in r.stderr and f"database sqlite:///{d.data}" in r.stderr
    assert not d.pidfile.exists()
    [line] = [x for x in d.log.read_text().splitlines() if "cannot start" in x]
    assert line.endswith(f"bankgate: cannot start: database sqlite:///{d.data}/bankgate.db:"
                         " the gateway's schema: Can't locate revision identified by"
                         " 'f00f00f00f00'")
    assert "Traceback" not in d.log.read_text()


@pytest.mark.e2e
def test_daemon_returns_once_listening_and_a_second_copy_is_refused(tmp_path):
    first = Daemon(tmp_path / "one")
    r = first.run()
    assert r.returncode == 0, r.stdout + r.stderr + first.log.read_text()
    pid = int(first.pidfile.read_text())
    try:
        assert _alive(pid)
        socket.create_connection(("127.0.0.1", first.port), timeout=5).close()  # at once
        assert (first.data / "bankgate.lock").read_text() == f"{pid}\n"  # the daemon's pid
        second = Daemon(tmp_path / "two", data=first.data)  # the same data, another port
        r = second.run_expecting_failure()
        assert r.returncode == 1
        assert r.stderr == (f"bankgate: cannot start: a gateway is already running on this"
                            f" data ({first.data}/bankgate.lock is locked, pid {pid}); stop it"
                            f" first, or give this one its own --data-dir\n")
        assert not second.pidfile.exists()
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while _alive(pid) or first.pidfile.exists():  # an event wait, bounded
        assert time.monotonic() < deadline, first.log.read_text()
        time.sleep(0.05)
    DataLock(first.data).acquire().release()  # the lock went with the process


@pytest.mark.e2e
def test_a_database_that_cannot_be_reached_is_one_line_for_a_command(tmp_path, capsys):
    from bankgate.app.cli import main

    port = free_port()  # nothing listens there
    path = tmp_path / "bankgate.toml"
    path.write_text(f'[database]\nurl = "postgresql+psycopg://bg:secret@127.0.0.1:{port}/n8"\n')
    assert load_config(path)  # well spelt
    assert main(["-c", str(path), "recon", "exceptions"]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"bankgate: database postgresql+psycopg://bg:***@127.0.0.1:{port}/n8:")
    assert "Connection refused" in line and "secret" not in line
