"""bankgate.app.logs and the [log] table: levels per namespace, JSON lines, rotation
with retention, taking twistd's place; the quiet card-debit link.  No sockets, no
sleeps: files in tmp_path, time on a Clock."""

from __future__ import annotations

import collections
import io
import json
import logging
import os
import signal
from datetime import datetime

import pytest
from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, Logger, LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure

from bankgate.app import logs
from bankgate.app.config import ConfigError, LogConfig, parse_config
from bankgate.codec.base import BankProfile
from bankgate.codec.registry import load_codec
from bankgate.domain.withholding import WithholdingOptions
from bankgate.wire.debitlink import DebitLink
from bankgate.wire.listener import BankFactory

DAY = 86400.0


def log_config(**table) -> LogConfig:
    return parse_config({"log": table}, "gw.toml").log


def written(lc: LogConfig, *emits) -> str:
    """What the configured observer writes for ``(namespace, level, format)`` events."""
    out = io.StringIO()
    observer = logs.observer_for(lc, out)
    for namespace, level, text in emits:
        Logger(namespace=namespace, observer=observer).emit(level, text)
    return out.getvalue()


@pytest.fixture
def python_root():
    """Python logging's levels as they were: configure() sets them."""
    root = logging.getLogger()
    saved = root.level, {n: logging.getLogger(n).level for n in ("bankgate.store", "x")}
    yield root
    root.setLevel(saved[0])
    for n, level in saved[1].items():
        logging.getLogger(n).setLevel(level)


@pytest.fixture
def no_main():
    yield
    logs.install_main(None)


# -- the [log] table ---------------------------------------------------------------------


def test_defaults_nothing_at_debug_daily_rotation_two_weeks():
    lc = parse_config({}, "gw.toml").log
    assert (lc.level, lc.levels, lc.format, lc.file) == ("info", {}, "text", "")
    assert (lc.rotate, lc.keep) == ("daily", 14)


def test_a_full_table():
    lc = log_config(level="warning", levels={"bankgate.engine": "DEBUG", "twisted": "error"},
                    format="json", file="var/log/bankgate.log", rotate="10MB", keep=5)
    assert lc.level == "warn"
    assert lc.levels == {"bankgate.engine": "debug", "twisted": "error"}
    assert (lc.format, lc.file, lc.rotate, lc.max_bytes, lc.keep) == (
        "json", "var/log/bankgate.log", "size", 10 * 1024 * 1024, 5)
    assert log_config(rotate="512 KB").max_bytes == 512 * 1024
    assert log_config(rotate=4096).max_bytes == 4096
    assert log_config(rotate="never").rotate == "never"


@pytest.mark.parametrize("table, key, words", [
    ({"level": "loud"}, "log.level", "expected one of debug, info, warn, error, critical"),
    ({"level": 3}, "log.level", "expected a string"),
    ({"levels": {"bankgate.engine": "chatty"}}, 'log.levels."bankgate.engine"', "'chatty'"),
    ({"levels": {"bankgate..engine": "info"}}, 'log.levels."bankgate..engine"', "namespace"),
    ({"levels": "debug"}, "log.levels", "a table"),
    ({"format": "xml"}, "log.format", "expected one of text, json"),
    ({"rotate": "10XB"}, "log.rotate", "a size from 1KB to 1024GB"),
    ({"rotate": "100"}, "log.rotate", "a size from 1KB"),
    ({"rotate": True}, "log.rotate", "'daily', 'never' or a size"),
    ({"keep": 0}, "log.keep", "expected 1 to 3650"),
    ({"file": "var/"}, "log.file", "a file name"),
    ({"rotation": "daily"}, "log.rotation", "unknown key"),
])
def test_bad_values_name_the_key(table, key, words):
    with pytest.raises(ConfigError) as e:
        parse_config({"log": table}, "gw.toml")
    assert e.value.key == key and e.value.source == "gw.toml"
    assert words in e.value.problem


# -- which events are written ----------------------------------------------------------


def test_nothing_at_debug_by_default():
    out = written(log_config(), ("bankgate.engine", LogLevel.debug, "bank: connection from x"),
                  ("bankgate.engine", LogLevel.info, "bank pay outcome=OK"))
    assert "connection from" not in out and "bank pay outcome=OK" in out


def test_a_namespace_and_its_children_take_their_level():
    lc = log_config(level="warn", levels={"bankgate.engine": "debug", "bankgate": "error"})
    out = written(lc, ("bankgate.engine", LogLevel.debug, "engine-debug"),
                  ("bankgate.engine.sub", LogLevel.debug, "child-debug"),
                  ("bankgate.carddebit", LogLevel.warn, "carddebit-warn"),
                  ("bankgate.carddebit", LogLevel.error, "carddebit-error"),
                  ("twisted.internet", LogLevel.info, "twisted-info"),
                  ("twisted.internet", LogLevel.warn, "twisted-warn"))
    assert "engine-debug" in out and "child-debug" in out
    assert "carddebit-warn" not in out and "carddebit-error" in out  # nearest parent: error
    assert "twisted-info" not in out and "twisted-warn" in out  # the default: warn


def test_the_listeners_connection_lines_are_off_unless_asked():
    codec = load_codec("ref-fixed")

    def connect_once(lc):
        out = io.StringIO()
        f = BankFactory(codec, BankProfile("bank-a", "ref-fixed", "105210"),
                        lambda req: defer.succeed(None), task.Clock(),
                        log=logs.observer_for(lc, out))
        p = f.buildProtocol(None)
        p.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 4)))
        p.connectionLost(Failure(ConnectionDone()))
        return out.getvalue()

    assert connect_once(log_config()) == ""
    asked = connect_once(log_config(levels={"bankgate.engine": "debug"}))
    assert "[bankgate.engine#debug] bank-a: connection from 10.1.2.3" in asked
    assert "[bankgate.engine#debug] bank-a: connection closed" in asked


def test_python_logging_takes_the_same_levels(python_root):
    logs.set_python_levels(log_config(level="warn", levels={"bankgate.store": "debug"}))
    assert python_root.level == logging.WARNING
    assert logging.getLogger("bankgate.store").isEnabledFor(logging.DEBUG)
    assert logging.getLogger("bankgate.store.db").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("bankgate.ledger").isEnabledFor(logging.INFO)


# -- the card-debit link: quiet when idle, one warning when the host is away -----------


class Transport(StringTransport):
    """A close reaches the protocol on the clock, as a real one does."""

    def __init__(self, clock, protocol):
        super().__init__()
        self.clock, self.protocol = clock, protocol

    def loseConnection(self):  # noqa: N802
        if not self.disconnecting:
            super().loseConnection()
            self.clock.callLater(0, self.protocol.connectionLost, Failure(ConnectionDone()))


class Endpoint:
    def __init__(self):
        self.pending = collections.deque()

    def connect(self, factory):
        d = defer.Deferred()
        self.pending.append((factory, d))
        return d


def debit_link():
    clock, ep = task.Clock(), Endpoint()
    opts = WithholdingOptions(enabled=True, debit_idle=60, debit_reconnect=1,
                              debit_reconnect_max=60)
    link = DebitLink("demo-delim", ep, clock, load_codec("ref-delim"), opts,
                     jitter=lambda: 0.0)

    def accept():
        factory, d = ep.pending.popleft()
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9202))
        proto.makeConnection(Transport(clock, proto))
        d.callback(proto)

    def refuse():
        ep.pending.popleft()[1].errback(ConnectionRefusedError("Connection refused"))

    return link, clock, accept, refuse


def test_an_idle_links_reconnect_every_minute_writes_nothing():
    link, clock, accept, _ = debit_link()
    out = io.StringIO()
    observer = logs.observer_for(log_config(), out)
    with capturedLogs() as events:
        link.service.startService()
        accept()
        first = out.getvalue()
        for _ in range(5):  # five idle closes, five reconnects
            clock.advance(60)
            clock.advance(1)
            accept()
        link.service.stopService()
    for e in events:
        observer(e)
    assert link.connects == 6
    # twisted's own line is there, under the namespace the default levels quiet ...
    retries = [e for e in events if "Scheduling retry" in formatEvent(e)]
    assert len(retries) == 5
    assert {e["log_namespace"] for e in retries} == set(logs.QUIET)
    assert not [e for e in events if "Starting factory" in formatEvent(e)]  # noisy = False
    # ... and of it all, only the first connection is written
    lines = out.getvalue().splitlines()
    assert first == "" and len(lines) == 1
    assert lines[0].endswith("[bankgate.carddebit#info] debit host demo-delim: connected")


def test_with_level_debug_the_reconnects_are_there():
    link, clock, accept, _ = debit_link()
    out = io.StringIO()
    observer = logs.observer_for(log_config(level="debug"), out)
    with capturedLogs() as events:
        link.service.startService()
        accept()
        clock.advance(60)
        clock.advance(1)
        accept()
        link.service.stopService()
    for e in events:
        observer(e)
    text = out.getvalue()
    assert "Scheduling retry 1" in text and "debit host demo-delim: connection closed" in text


def test_a_host_away_is_one_warning_and_its_return_one_line():
    link, clock, accept, refuse = debit_link()
    out = io.StringIO()
    observer = logs.observer_for(log_config(), out)
    with capturedLogs() as events:
        link.service.startService()
        for wait in (1, 2, 4):  # back-off: refused four times
            refuse()
            clock.advance(wait)
        refuse()
        clock.advance(8)
        accept()
        link.service.stopService()
    for e in events:
        observer(e)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert "[bankgate.carddebit#warn] debit host demo-delim: cannot connect (" in lines[0]
    assert "Connection refused" in lines[0] and "attempt 1" in lines[0]
    assert lines[1].endswith("debit host demo-delim: connected again after 4 failed attempt(s)")
    assert link.failures == 0


# -- JSON lines -------------------------------------------------------------------------


def test_json_is_one_object_per_line_with_the_events_fields():
    out = io.StringIO()
    observer = logs.observer_for(log_config(format="json"), out)
    log = Logger(namespace="bankgate.engine", observer=observer)
    log.info("{bank} reversal orig_serial={orig_serial} {_extra}", bank="demo-fixed",
             orig_serial="BK9", outcome="ORIGINAL_NOT_FOUND", fields={"mti": "0400"},
             _extra="mti=0400", when=datetime(2026, 12, 5, 9, 30), frame=b"\x01secret",
             txn=True)
    log.debug("not written")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.failure("it broke")
    lines = out.getvalue().split("\n")
    assert lines[-1] == "" and len(lines) == 3  # two events, each ending in one newline
    first, second = (json.loads(x) for x in lines[:2])
    assert first["level"] == "info" and first["namespace"] == "bankgate.engine"
    assert first["message"] == "demo-fixed reversal orig_serial=BK9 mti=0400"
    assert (first["bank"], first["orig_serial"], first["outcome"]) == (
        "demo-fixed", "BK9", "ORIGINAL_NOT_FOUND")
    assert first["fields"] == {"mti": "0400"} and first["txn"] is True
    assert first["when"] == "2026-12-05T09:30:00"
    assert first["frame"] == "<7 bytes>"  # never a frame's bytes
    assert "_extra" not in first and not [k for k in first if k.startswith("log_")]
    assert datetime.fromisoformat(first["time"]).tzinfo is not None
    assert second["level"] == "critical" and "ZeroDivisionError" in second["failure"]


# -- rotation and retention ---------------------------------------------------------------


def test_size_rotation_keeps_the_newest_n(tmp_path):
    path = tmp_path / "log" / "bankgate.log"  # the folder is created
    f = logs.open_file(str(path), log_config(rotate="1KB", keep=3))
    for i in range(40):
        f.write(f"line {i:03d} " + "x" * 190 + "\n")
    f.close()
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["bankgate.log", "bankgate.log.1", "bankgate.log.2", "bankgate.log.3"]
    assert "line 039" in path.read_text()
    assert all(p.stat().st_size <= 1024 + 200 for p in path.parent.iterdir())
    assert oct(path.stat().st_mode & 0o777) == oct(logs.FILE_MODE & ~current_umask())


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_daily_rotation_deletes_what_is_older_than_keep(tmp_path):
    clock = task.Clock()
    clock.advance(datetime(2026, 12, 1, 12, 0).timestamp())
    for old in ("2026_11_1", "2026_11_20", "2026_9_30"):  # from earlier runs
        (tmp_path / f"bankgate.log.{old}").write_text("old\n")
    (tmp_path / "bankgate.log.txt").write_text("not a rotated log\n")
    f = logs.open_file(str(tmp_path / "bankgate.log"), log_config(keep=2), now=clock.seconds)
    assert rotated(tmp_path) == ["bankgate.log.2026_11_1", "bankgate.log.2026_11_20"]
    for day in range(5):  # Dec 1 .. Dec 5, one line a day
        f.write(f"day {day}\n")
        clock.advance(DAY)
    f.write("day 5\n")
    f.close()
    # each day's lines in a file named by that day; the two newest kept
    assert rotated(tmp_path) == ["bankgate.log.2026_12_4", "bankgate.log.2026_12_5"]
    assert (tmp_path / "bankgate.log.2026_12_4").read_text() == "day 3\n"
    assert (tmp_path / "bankgate.log.2026_12_5").read_text() == "day 4\n"
    assert (tmp_path / "bankgate.log").read_text() == "day 5\n"
    assert (tmp_path / "bankgate.log.txt").exists()  # not one of ours: left alone


def rotated(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()
                  if p.name.startswith("bankgate.log.") and p.name[13:14].isdigit())


def test_a_log_file_that_cannot_be_opened_is_a_configuration_error(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigError) as e:
        logs.open_file(str(tmp_path / "afile" / "bankgate.log"), log_config(file="x.log"),
                       source="gw.toml")
    assert (e.value.source, e.value.key) == ("gw.toml", "log.file")
    assert "cannot open" in e.value.problem


# -- taking twistd's place ----------------------------------------------------------------


class TwistdOptions(dict):
    """``twistd bankgate``'s options: ``parent`` holds twistd's own."""

    def __init__(self, **twistd):
        super().__init__(config=None)
        self.parent = twistd


def test_twistd_target_follows_twistds_own_options():
    assert logs.twistd_target({"nodaemon": True}) == "-"
    assert logs.twistd_target({"logfile": "-"}) == "-"
    assert logs.twistd_target({}) == "twistd.log"
    assert logs.twistd_target({"logfile": "/x/gw.log", "nodaemon": True}) == "/x/gw.log"
    assert logs.twistd_target({"logger": "my.observer"}) is None
    assert logs.twistd_target({"syslog": True, "logfile": "x"}) is None


def test_the_configured_file_becomes_twistds_log(tmp_path, python_root, no_main):
    cfg = parse_config({"log": {"file": str(tmp_path / "gw.log"), "rotate": "1MB"}}, "gw.toml")
    observer = logs.configure(cfg, TwistdOptions(nodaemon=True),
                              publisher=pytest.fail)  # nothing added beside twistd's
    # twistd asks its application for the log observer before building its own
    assert service.Application("bankgate").getComponent(ILogObserver) is observer
    Logger(namespace="bankgate", observer=observer).info("bankgate: ready, 3 bank(s)")
    Logger(namespace="bankgate.engine", observer=observer).debug("bank: connection from x")
    text = (tmp_path / "gw.log").read_text()
    assert "[bankgate#info] bankgate: ready, 3 bank(s)" in text
    assert "connection from" not in text


def test_without_a_file_the_log_goes_where_twistd_says(tmp_path, python_root, no_main):
    cfg = parse_config({"log": {"format": "json"}}, "gw.toml")
    stdout = io.StringIO()
    observer = logs.configure(cfg, TwistdOptions(nodaemon=True), stdout=stdout)
    Logger(namespace="bankgate", observer=observer).info("hello {who}", who="operator")
    assert json.loads(stdout.getvalue())["message"] == "hello operator"
    twistd_file = tmp_path / "twistd-given.log"
    observer = logs.configure(cfg, TwistdOptions(logfile=str(twistd_file)))
    assert service.Application("bankgate").getComponent(ILogObserver) is observer
    Logger(namespace="bankgate", observer=observer).info("into the file")
    assert json.loads(twistd_file.read_text())["message"] == "into the file"


def test_a_daemon_cannot_log_to_standard_output(python_root, no_main):
    with pytest.raises(ConfigError) as e:
        logs.configure(parse_config({}, "gw.toml"), TwistdOptions(logfile="-"))
    assert e.value.key == "(twistd --logfile -)" and "add --nodaemon" in e.value.problem
    assert service.Application("bankgate").getComponent(ILogObserver, None) is None


def test_with_syslog_the_file_is_written_beside_it(tmp_path, python_root, no_main):
    cfg = parse_config({"log": {"file": str(tmp_path / "gw.log")}}, "gw.toml")
    added = []
    observer = logs.configure(cfg, TwistdOptions(syslog=True), publisher=added.append)
    assert added == [observer]
    assert service.Application("bankgate").getComponent(ILogObserver, None) is None
    # twistd's choice alone when no file is configured
    assert logs.configure(parse_config({}, "gw.toml"), TwistdOptions(logger="x.y"),
                          publisher=pytest.fail) is None


def test_configure_sets_python_levels(python_root, no_main):
    cfg = parse_config({"log": {"level": "error", "levels": {"x": "debug"}}}, "gw.toml")
    logs.configure(cfg, stdout=io.StringIO())
    assert python_root.level == logging.ERROR
    assert logging.getLogger("x").level == logging.DEBUG


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 here")
def test_sigusr1_rotates_the_file_now(tmp_path):
    f = logs.open_file(str(tmp_path / "gw.log"), log_config(rotate="1MB"))
    f.write("before\n")
    previous = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    try:
        assert logs.rotate_on_sigusr1(f, call=lambda fn: fn())
        signal.raise_signal(signal.SIGUSR1)
        assert not logs.rotate_on_sigusr1(f, call=lambda fn: fn())  # handled already
    finally:
        signal.signal(signal.SIGUSR1, previous)
    f.write("after\n")
    f.close()
    assert (tmp_path / "gw.log.1").read_text() == "before\n"
    assert (tmp_path / "gw.log").read_text() == "after\n"


def test_makeservice_configures_the_log_from_the_loaded_file(monkeypatch, tmp_path, capsys):
    from bankgate.app import tap

    seen = []

    def configure(cfg, options):
        seen.append((cfg.log.level, options))
        raise ConfigError(cfg.source, "log.file", "cannot open 'x': Permission denied")

    monkeypatch.setattr(tap, "configure_logging", configure)
    conf = tmp_path / "gw.toml"
    conf.write_text('[log]\nlevel = "warn"\n')
    opts = tap.Options()
    opts.parseOptions(["--config", str(conf)])
    with pytest.raises(SystemExit) as e:
        tap.makeService(opts)
    assert seen == [("warn", opts)]
    # a log file that cannot be opened stops the start as a configuration error
    assert e.value.code == 2
    assert "configuration error: " in capsys.readouterr().err

