"""Worker processes, in memory: the supervisor's pool (start, restart with back-off,
the stop in order), the worker's side (adopting the ports, the drain), the messages
between them, and the figures that add up across workers.

Processes are fakes here: a clock whose ``spawnProcess`` records what it was asked and
hands back a transport the test ends at will.  ``tests/test_workers_e2e.py`` runs the
real ones.
"""

from __future__ import annotations

import errno
import json
import socket
from datetime import date, datetime
from types import SimpleNamespace

import pytest
from console_helpers import Handler, bank_factory, connect, frame
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEventAsClassicLogText
from twisted.python.failure import Failure

from bankgate.app import workers as w
from bankgate.app.config import ConfigError, config_from_bytes, parse_config, with_workers
from bankgate.app.console.live import LiveFigures
from bankgate.app.console.metrics import LATENCY_BUCKETS, GatewayMetrics, RequestFigures
from bankgate.app.logs import json_line
from bankgate.canon import messages as m

T0 = datetime(2026, 11, 27, 9, 30).timestamp()


# -- fakes --------------------------------------------------------------------------------


class FakeProcess:
    """What ``spawnProcess`` returns: signals and standard input recorded."""

    def __init__(self, proto, pid, args, child_fds):
        self.proto, self.pid, self.args, self.child_fds = proto, pid, args, child_fds
        self.signals: list[str] = []
        self.stdin = b""
        self.ended = False

    def writeToChild(self, fd, data):  # noqa: N802
        assert fd == 0
        self.stdin += data

    def signalProcess(self, sig):  # noqa: N802
        from twisted.internet.error import ProcessExitedAlready

        if self.ended:
            raise ProcessExitedAlready()
        self.signals.append(sig)

    # -- the test plays the worker ----------------------------------------------------

    def say(self, kind, body):
        self.proto.childDataReceived(w.CHANNEL_FD, json.dumps({kind: body}).encode() + b"\n")

    def end(self, code=0, sig=None):
        self.ended = True
        reason = ProcessDone(0) if code == 0 and sig is None else ProcessTerminated(
            exitCode=None if sig else code, signal=sig)
        self.proto.processEnded(Failure(reason))


class ProcessClock(Clock):
    """A clock that spawns :class:`FakeProcess`\\ es."""

    def __init__(self):
        super().__init__()
        self.advance(T0)
        self.spawned: list[FakeProcess] = []
        self._pids = iter(range(1000, 100000))

    def spawnProcess(self, proto, executable, args, env=None, path=None, childFDs=None):  # noqa: N802
        p = FakeProcess(proto, next(self._pids), args, childFDs)
        self.spawned.append(p)
        proto.makeConnection(p)
        return p


class FakeSocket:
    def __init__(self, e, fd):
        self.e, self.fd, self.closed = e, fd, False

    def fileno(self):
        return self.fd

    def close(self):
        self.closed = True


class Binder:
    def __init__(self, fail_on=None):
        self.sockets: list[FakeSocket] = []
        self.fail_on = fail_on

    def __call__(self, e):
        if self.fail_on and self.fail_on in e.text:
            from twisted.internet.error import CannotListenError

            raise CannotListenError(e.interface, e.port, OSError(errno.EADDRINUSE, "in use"))
        s = FakeSocket(e, 50 + len(self.sockets))
        self.sockets.append(s)
        return s


class Published(list):
    def __call__(self, event):
        self.append(event)


def pool(count=2, endpoints=(("bank-a", "tcp:9101"), ("bank-b", "tcp:9102")), **kw):
    clock = ProcessClock()
    banks = sorted({b for b, _ in endpoints})
    factories = {b: w.RemoteFactory(b, None, sum(1 for x, _ in endpoints if x == b))
                 for b in banks}
    published = Published()
    binder = kw.pop("binder", None) or Binder()
    p = w.WorkerPool(clock, count, list(endpoints), factories,
                     argv=lambda spec: ["python", "twistd", "--worker-of", spec.arg()],
                     payload=w.config_payload("gw.toml", b"[gateway]\n"), publish=published,
                     binder=binder, **kw)
    return p, clock, published, binder


def started(count=2, **kw):
    """A started pool whose workers have all said ready."""
    p, clock, published, binder = pool(count, **kw)
    p.startService()
    for proc in clock.spawned:
        proc.say("ready", {"banks": ["bank-a"]})
    assert p.serving.called
    return p, clock, published, binder


def messages(published, namespace="bankgate.workers"):
    return [formatEventAsClassicLogText(e) for e in published
            if e.get("log_namespace") == namespace]


@pytest.fixture
def logged():
    """The events the supervisor logs itself (bankgate.workers)."""
    from twisted.logger import globalLogPublisher

    events: list = []
    observer = events.append
    globalLogPublisher.addObserver(observer)
    yield lambda: [formatEventAsClassicLogText(e) for e in events
                   if e.get("log_namespace") == "bankgate.workers"]
    globalLogPublisher.removeObserver(observer)


# -- what a worker is handed ----------------------------------------------------------------


bank_names = st.from_regex(r"[A-Za-z0-9_.-]{1,32}", fullmatch=True)


@given(st.integers(1, 64), st.lists(st.tuples(st.integers(3, 1000), bank_names,
                                              st.integers(0, 9)), max_size=6))
def test_a_worker_spec_reads_back_what_it_wrote(number, sockets):
    spec = w.WorkerSpec(number, tuple(sockets))
    assert w.WorkerSpec.parse(spec.arg()) == spec


@pytest.mark.parametrize("text", ["", "x", "0:4=a/0", "1:4=a", "1:4a/0", "1:=a/0", "-1:",
                                  "1:4=/0"])
def test_a_garbled_worker_spec_is_refused_by_name(text):
    with pytest.raises(ValueError, match="--worker-of"):
        w.WorkerSpec.parse(text)


@settings(max_examples=50)
@given(st.binary(max_size=3000), st.text(min_size=1, max_size=80), st.integers(1, 97))
def test_the_configuration_crosses_the_pipe_whole_in_any_pieces(raw, source, piece):
    data = w.config_payload(source, raw) + b"anything after it is not read"
    pos = 0

    def read(fd, n):
        nonlocal pos
        chunk = data[pos:pos + min(n, piece)]
        pos += len(chunk)
        return chunk

    assert w.read_config_payload(0, read) == (source, raw)


def test_a_configuration_cut_short_or_garbled_is_one_line():
    from bankgate.app.startup import StartupError

    for data, why in [(b"", "no configuration"), (b'{"source": "x", "size": 10}\nabc', "early"),
                      (b"not json\n", "garbled")]:
        chunks = [data, b""]
        with pytest.raises(StartupError, match=why):
            w.read_config_payload(0, lambda fd, n, c=chunks: c.pop(0) if c else b"")


def test_the_worker_command_line_is_twistd_bankgate_with_the_spec():
    spec = w.WorkerSpec(2, ((4, "demo-fixed", 0),))
    argv = w.worker_argv(spec, "var", python="/usr/bin/python3")
    assert argv[0] == "/usr/bin/python3" and argv[1] == "-c"
    assert argv[3:] == ["-n", "--pidfile=", "bankgate", "--worker-of", "2:4=demo-fixed/0",
                        "--data-dir", "var"]


@pytest.mark.parametrize("text,family,port,interface", [
    ("tcp:9101", socket.AF_INET, 9101, ""),
    ("tcp:9101:interface=127.0.0.1:backlog=7", socket.AF_INET, 9101, "127.0.0.1"),
    ("tcp6:9101:interface=\\:\\:1", socket.AF_INET6, 9101, "::1"),
])
def test_an_endpoint_is_read_as_the_socket_it_listens_on(text, family, port, interface):
    e = w.endpoint_of(text)
    assert (e.family, e.port, e.interface, e.tls) == (family, port, interface, None)
    if "backlog" in text:
        assert e.backlog == 7


def test_a_unix_endpoint_keeps_its_path_and_mode(tmp_path):
    e = w.endpoint_of(f"unix:{tmp_path}/bank.sock:mode=600")
    assert (e.family, e.path, e.mode) == (socket.AF_UNIX, f"{tmp_path}/bank.sock", 0o600)


def test_an_endpoint_workers_cannot_share_is_refused():
    with pytest.raises(ValueError, match="cannot listen on"):
        w.endpoint_of("nosuchkind:9101")
    with pytest.raises(ValueError, match="ssl"):
        w.endpoint_of("ssl:9101:privateKey=/no/such/key.pem")


# -- the configuration ----------------------------------------------------------------------


PG = {"database": {"url": "postgresql+psycopg://bankgate@db.example/bankgate"}}


def test_workers_is_a_gateway_key_from_1_to_64():
    assert parse_config(PG).workers == 1
    assert parse_config({**PG, "gateway": {"workers": 4}}).workers == 4
    for bad in (0, 65, "2", True):
        with pytest.raises(ConfigError, match="gateway.workers: expected"):
            parse_config({**PG, "gateway": {"workers": bad}})


@pytest.mark.parametrize("url", ["sqlite:///var/bankgate.db", "sqlite+pysqlite:///x.db",
                                 "SQLite:///x.db"])
def test_sqlite_keeps_one_writer_process(url):
    with pytest.raises(ConfigError) as e:
        parse_config({"gateway": {"workers": 2}, "database": {"url": url}})
    assert e.value.key == "gateway.workers"
    assert e.value.problem == ("SQLite keeps one writer process: workers = 1, or use a"
                               " database server")
    assert parse_config({"gateway": {"workers": 1}, "database": {"url": url}}).workers == 1


def test_twistd_workers_overrides_the_file_and_is_checked_the_same_way():
    cfg = parse_config({**PG, "gateway": {"workers": 2}})
    assert with_workers(cfg, 6).workers == 6
    with pytest.raises(ConfigError, match=r"\(twistd --workers\): expected 1 to 64"):
        with_workers(cfg, 0)
    lite = parse_config({})
    with pytest.raises(ConfigError, match="SQLite keeps one writer process"):
        with_workers(lite, 3)
    assert lite.workers == 1  # a refused value changes nothing


def test_a_worker_parses_the_bytes_the_supervisor_read():
    raw = b'[gateway]\nworkers = 3\n[database]\nurl = "postgresql+psycopg://u@h/db"\n'
    cfg = config_from_bytes(raw, "/etc/bankgate/bankgate.toml", data_dir="elsewhere")
    assert (cfg.workers, cfg.raw, cfg.data_dir) == (3, raw, "elsewhere")
    with pytest.raises(ConfigError, match="bankgate.toml: gateway.workers"):
        config_from_bytes(b"[gateway]\nworkers = 2\n", "bankgate.toml")


def test_config_check_says_sqlite_keeps_one_writer_process(tmp_path, capsys):
    from bankgate.app.cli import main

    conf = tmp_path / "gw.toml"
    conf.write_text(f'[gateway]\ndata_dir = "{tmp_path}/var"\nworkers = 2\n')
    assert main(["config", "check", str(conf)]) == 2
    err = capsys.readouterr().err
    assert ("gw.toml: gateway.workers: SQLite keeps one writer process: workers = 1, or use"
            " a database server") in err


def test_twistd_workers_option_is_a_number(capsys):
    from twisted.python import usage

    from bankgate.app.tap import Options

    o = Options()
    o.parseOptions(["--config", "x.toml", "--workers", "3"])
    assert o["workers"] == 3
    with pytest.raises(usage.UsageError, match="--workers: expected a number"):
        Options().parseOptions(["--workers", "many"])


def test_twistd_workers_on_sqlite_exits_2_saying_why(tmp_path, capsys):
    from bankgate.app.tap import Options, makeService

    conf = tmp_path / "gw.toml"
    conf.write_text(f'[gateway]\ndata_dir = "{tmp_path}/var"\n')
    o = Options()
    o.parseOptions(["--config", str(conf), "--workers", "2"])
    with pytest.raises(SystemExit) as e:
        makeService(o)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "(twistd --workers): SQLite keeps one writer process" in err
    assert not (tmp_path / "var" / "bankgate.lock").exists()  # refused before the lock


# -- the supervisor: start ----------------------------------------------------------------


def test_the_supervisor_binds_every_port_and_hands_them_to_each_worker():
    p, clock, _, binder = pool(3)
    p.startService()
    assert [s.e.text for s in binder.sockets] == ["tcp:9101", "tcp:9102"]
    assert len(clock.spawned) == 3
    for n, proc in enumerate(clock.spawned, 1):
        assert proc.args[-1] == f"{n}:4=bank-a/0,5=bank-b/0"
        assert proc.child_fds == {0: "w", 1: "r", 2: "r", 3: "r", 4: 50, 5: 51}
        assert w.read_config_payload(0, _reader(proc.stdin)) == ("gw.toml", b"[gateway]\n")
        assert proc.signals == []
    assert not p.serving.called  # until each worker says it serves
    clock.spawned[0].say("ready", {"banks": ["bank-a", "bank-b"]})
    clock.spawned[1].say("ready", {"banks": ["bank-a", "bank-b"]})
    assert not p.serving.called
    clock.spawned[2].say("ready", {"banks": ["bank-a", "bank-b"]})
    assert p.serving.called
    assert [s["serving"] for s in p.status()] == [True, True, True]


def _reader(data: bytes):
    pos = 0

    def read(fd, n):
        nonlocal pos
        chunk = data[pos:pos + n]
        pos += len(chunk)
        return chunk

    return read


def test_a_port_that_cannot_be_had_fails_the_start_naming_bank_and_port():
    from bankgate.app.startup import StartupError

    p, clock, _, binder = pool(2, binder=Binder(fail_on="9102"))
    with pytest.raises(StartupError, match="bank bank-b: cannot listen on tcp:9102: port 9102"
                                           " is already in use"):
        p.startService()
    assert clock.spawned == [] and all(s.closed for s in binder.sockets)


def test_a_worker_that_dies_before_it_served_fails_the_start(logged):
    p, clock, _, _ = pool(2)
    p.startService()
    clock.spawned[0].say("ready", {})
    clock.spawned[1].end(code=1)
    failures = []
    p.serving.addErrback(failures.append)
    assert "worker 2 (pid 1001) exited with status 1 before it served" in str(failures[0].value)
    clock.advance(600)
    assert len(clock.spawned) == 2  # no restart: the gateway does not start


# -- the supervisor: a worker that dies --------------------------------------------------


def test_a_worker_killed_after_a_long_run_is_restarted_at_once_and_logged(logged):
    p, clock, _, _ = started(2)
    clock.advance(3600)
    killed, other = clock.spawned
    killed.end(sig=9)
    text = "\n".join(logged())
    assert "worker 1 (pid 1000) was killed by signal 9 (SIGKILL); restarting it in 0 s" in text
    assert other.signals == [] and not other.ended  # the other one serves on
    clock.advance(0)
    assert len(clock.spawned) == 3
    new = clock.spawned[2]
    assert new.args[-1].startswith("1:") and new.pid != killed.pid
    assert "worker 1 started (pid 1002)" in "\n".join(logged())
    status = p.status()[0]
    assert status["pid"] == 1002 and status["restarts"] == 1 and not status["serving"]
    assert status["last_exit"] == "was killed by signal 9 (SIGKILL)"
    new.say("ready", {"banks": ["bank-a"]})
    assert p.status()[0]["serving"]


def test_a_worker_that_keeps_dying_waits_longer_each_time_up_to_a_minute(logged):
    p, clock, _, _ = started(1)
    delays = []
    for _ in range(10):
        before = len(clock.spawned)
        clock.advance(5)  # it dies 5 s after each start: not a stable run
        clock.spawned[-1].end(code=1)
        waited = 0.0
        while len(clock.spawned) == before:
            clock.advance(0.5)
            waited += 0.5
        delays.append(waited)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]  # 0 s: next tick
    assert "worker 1 keeps dying: 3 times in a row within 30 s of its start" in "\n".join(
        logged())
    clock.advance(120)  # a run of two minutes...
    clock.spawned[-1].end(sig=11)
    before = len(clock.spawned)
    clock.advance(0)
    assert len(clock.spawned) == before + 1  # ...and the next death restarts it at once


@given(st.lists(st.floats(0, 100), min_size=1, max_size=30))
def test_backoff_is_never_negative_nor_over_the_maximum(runs):
    p, clock, _, _ = pool(1)
    worker = p.workers[0]
    for ran in runs:
        worker.started = clock.seconds()
        clock.advance(ran)
        delay = p.backoff(worker)
        assert 0.0 <= delay <= w.MAX_DELAY
        assert (delay == 0.0) == (worker.quick_deaths == 1)
        if ran >= w.STABLE_AFTER:
            assert delay == 0.0


def test_what_a_worker_prints_outside_its_log_is_logged_with_its_pid(logged):
    p, clock, _, _ = started(1)
    proc = clock.spawned[0]
    proc.proto.childDataReceived(2, b"Traceback (most recent call last):\n  File")
    proc.proto.childDataReceived(2, b' "x.py"\n')
    proc.end(code=1)
    text = "\n".join(logged())
    assert "worker 1 (pid 1000): Traceback (most recent call last):" in text
    assert 'worker 1 (pid 1000):   File "x.py"' in text


def test_a_garbled_or_unknown_message_is_logged_and_changes_nothing(logged):
    p, clock, published, _ = started(1)
    proc = clock.spawned[0]
    before = p.status()
    proc.proto.childDataReceived(w.CHANNEL_FD, b"{not json\n[1, 2]\n")
    proc.say("nonsense", {})
    assert p.status() == before and published == []
    text = "\n".join(logged())
    assert text.count("sent a garbled message") == 2 and "unknown message 'nonsense'" in text


def test_a_statement_notice_from_a_worker_reaches_the_scheduler():
    notices = []
    p, clock, _, _ = started(1, on_notice=lambda *a: notices.append(a))
    clock.spawned[0].say("notice", {"bank": "bank-a", "date": "2026-11-26", "file_name": None})
    clock.spawned[0].say("notice", {"bank": "bank-a", "date": "2026-11-27",
                                    "file_name": "105210_20261127.txt"})
    assert notices == [("bank-a", date(2026, 11, 26), None),
                       ("bank-a", date(2026, 11, 27), "105210_20261127.txt")]


# -- the supervisor: stop ----------------------------------------------------------------------


def test_stop_asks_each_worker_once_and_ends_when_all_have_ended(logged):
    p, clock, _, binder = started(2)
    clock.spawned[0].end(sig=9)  # dies; its restart is pending when the stop comes
    d = p.stopService()
    assert all(s.closed for s in binder.sockets)  # none listens once the workers stop
    assert clock.spawned[1].signals == ["TERM"]
    assert not d.called
    clock.spawned[1].end(code=0)
    assert d.called
    clock.advance(3600)
    assert len(clock.spawned) == 2  # the pending restart was cancelled
    assert "worker 2 (pid 1001) stopped (exited normally)" in "\n".join(logged())
    assert "killing" not in "\n".join(logged())


def test_a_worker_that_does_not_stop_in_time_is_killed_and_the_log_says_so(logged):
    p, clock, _, _ = started(2, stop_timeout=8.0)
    d = p.stopService()
    clock.spawned[0].end(code=0)
    clock.advance(7.9)
    assert clock.spawned[1].signals == ["TERM"] and not d.called
    clock.advance(0.1)
    assert clock.spawned[1].signals == ["TERM", "KILL"]
    assert "worker 2 (pid 1001) did not stop within 8 s: killing it (SIGKILL)" in "\n".join(
        logged())
    clock.spawned[1].end(sig=9)
    assert d.called


def test_stop_with_no_worker_running_is_done_at_once():
    p, clock, _, _ = started(1)
    clock.spawned[0].end(code=1)
    assert p.stopService().called


# -- the log: the worker's events in the supervisor's log ----------------------------------


def _event_through_the_pipe(emit, number=2, pid=4242):
    """What the supervisor publishes for an event a worker emitted with ``emit(log)``."""
    events: list = []
    emit(Logger(namespace="bankgate.engine", observer=events.append))
    [event] = events
    body = json.loads(json.dumps(w.event_for_supervisor(event), default=str))
    return w.event_from_worker(body, number, pid)


def test_a_worker_event_keeps_its_text_fields_and_level_and_names_the_worker():
    at = datetime(2026, 11, 27, 9, 5)
    event = _event_through_the_pipe(lambda log: log.warn(
        "{bank} pay serial={serial} in {ms:.1f} ms at {at:%H:%M}{_extra}", bank="demo-fixed",
        serial="S1", ms=3.14159, at=at, _extra=" (text only)"))
    text = formatEventAsClassicLogText(event)
    assert "[bankgate.engine#warn worker 2 pid 4242] demo-fixed pay serial=S1 in 3.1 ms" \
           " at 09:05 (text only)" in text
    line = json.loads(json_line(event))
    assert line["level"] == "warn" and line["namespace"] == "bankgate.engine"
    assert line["message"].startswith("demo-fixed pay serial=S1")
    assert (line["bank"], line["serial"], line["worker"], line["worker_pid"]) == (
        "demo-fixed", "S1", 2, 4242)
    assert line["at"] == str(at) and "_extra" not in line


def test_a_worker_failure_keeps_its_traceback():
    def emit(log):
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            log.failure("ledger failed on {txn}", txn="pay")

    event = _event_through_the_pipe(emit)
    assert event["log_level"] is LogLevel.critical
    text = formatEventAsClassicLogText(event)
    assert "ledger failed on pay" in text and "ZeroDivisionError" in text
    assert "ZeroDivisionError" in json.loads(json_line(event))["failure"]


def test_the_workers_twistd_banner_is_left_out():
    body = {"namespace": "twisted.scripts._twistd_unix.UnixAppLogger", "level": "info",
            "text": "twistd 26.10.0 starting up.", "fields": {}}
    assert w.event_from_worker(body, 1, 10) is None


def test_the_supervisor_publishes_what_its_worker_logged():
    p, clock, published, _ = started(1)
    clock.spawned[0].say("log", {"time": T0, "level": "info", "namespace": "bankgate.engine",
                                 "text": "demo-fixed query serial=S2 outcome=OK",
                                 "fields": {"serial": "S2"}})
    [event] = published
    assert event["worker_pid"] == 1000 and event["log_time"] == T0
    assert "worker 1 pid 1000] demo-fixed query serial=S2" in formatEventAsClassicLogText(event)


# -- the channel ---------------------------------------------------------------------------


def test_the_channel_writes_whole_lines_through_short_writes():
    written = bytearray()

    def write(fd, data):
        n = max(1, len(data) // 3)  # a pipe takes a part at a time
        written.extend(bytes(data[:n]))
        return n

    ch = w.Channel(3, write=write)
    ch.send("figures", {"bank-a": {"payments": 3}})
    ch.send("ready", {"banks": ["bank-a"]})
    lines = bytes(written).split(b"\n")
    assert [json.loads(x) for x in lines[:-1]] == [{"figures": {"bank-a": {"payments": 3}}},
                                                   {"ready": {"banks": ["bank-a"]}}]
    assert lines[-1] == b""


def test_a_channel_whose_supervisor_is_gone_says_so_once_and_drops_the_rest():
    lost, calls = [], []

    def write(fd, data):
        calls.append(bytes(data))
        raise BrokenPipeError(errno.EPIPE, "broken pipe")

    ch = w.Channel(3, on_lost=lambda: lost.append(1), write=write)
    ch.send("log", {"text": "one"})
    ch.send("log", {"text": "two"})
    assert lost == [1] and len(calls) == 1 and not ch.open
    ch.childConnectionLost("stdin", None)  # standard input's end says the same
    assert lost == [1, 1]


# -- the figures add up across workers -----------------------------------------------------


observation = st.tuples(
    st.sampled_from(["bank-a", "bank-b"]), st.sampled_from(["pay", "query", ""]),
    st.sampled_from(["OK", "NOT_FOUND", "BUSY", "REJECTED", "ERROR"]),
    st.one_of(st.none(), st.sampled_from(LATENCY_BUCKETS), st.floats(0, 40)))


class StubFactory:
    """Enough of a BankFactory for WorkerFigures."""

    def __init__(self):
        from bankgate.wire.listener import BankStats

        self.observers, self.stats, self.numPorts, self.connections = [], BankStats(), 1, set()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), observation, st.booleans()), max_size=80))
def test_requests_replayed_from_workers_count_as_one_process_counts_them(steps):
    """The invariant: per (bank, txn, outcome) counts, per-bucket latency counts and
    latency sums seen through two workers' reports equal those seen in one process."""
    direct = RequestFigures()
    through = RequestFigures()
    remote = {b: w.RemoteFactory(b, None, 1) for b in ("bank-a", "bank-b")}
    for f in remote.values():
        f.observers.append(through.observe)
    figures = [w.WorkerFigures({b: StubFactory() for b in remote}) for _ in range(2)]
    for worker, (bank, txn, outcome, seconds), report_now in steps:
        direct.observe(bank, txn, outcome, seconds)
        figures[worker].observe(bank, txn, outcome, seconds)
        if report_now:  # reports come whenever a second has passed
            for bank_, r in json.loads(json.dumps(figures[worker].report())).items():
                remote[bank_].update(worker, r)
    for worker in (0, 1):
        for bank_, r in json.loads(json.dumps(figures[worker].report())).items():
            remote[bank_].update(worker, r)
    assert through.counts == direct.counts
    assert through.latency.keys() == direct.latency.keys()
    for k, h in direct.latency.items():
        assert through.latency[k][:-1] == h[:-1]
        assert through.latency[k][-1] == pytest.approx(h[-1], rel=1e-9, abs=1e-9)


def _report(**stats):
    base = {"connections_open": 0, "connections_total": 0, "in_flight": 0, "transactions": 0,
            "rejected": 0, "errors": 0, "unanswered": 0, "outcomes": {}, "last_message": None,
            "last_signin": None}
    base.update(stats)
    return {"stats": base, "listening": 1, "signed_in": [], "requests": [], "payments": 0,
            "last_payment": None}


def test_a_bank_sums_its_workers_and_keeps_the_counts_of_one_that_ended():
    f = w.RemoteFactory("bank-a", None, endpoints=2)
    assert f.numPorts == 0 and f.stats.connections_open == 0
    f.update(1, _report(connections_open=3, connections_total=10, in_flight=1,
                        transactions=40, errors=2, outcomes={"OK": 38, "BUSY": 2},
                        last_message="2026-11-27T09:30:05"))
    r2 = _report(connections_open=2, connections_total=4, transactions=7,
                 outcomes={"OK": 7}, last_message="2026-11-27T09:30:09",
                 last_signin="2026-11-27T08:00:00")
    r2["signed_in"] = ["2026-11-27T08:00:00"]
    f.update(2, r2)
    s = f.stats
    assert (s.connections_open, s.connections_total, s.in_flight, s.transactions,
            s.errors) == (5, 14, 1, 47, 2)
    assert s.outcomes == {"OK": 45, "BUSY": 2}
    assert s.last_message == datetime(2026, 11, 27, 9, 30, 9)
    assert f.numPorts == 2
    assert [c.signed_in_at for c in f.connections] == [datetime(2026, 11, 27, 8, 0)]
    f.worker_ended(2)  # killed: its connections are gone, what it counted stays
    s = f.stats
    assert (s.connections_open, s.connections_total, s.transactions) == (3, 14, 47)
    assert s.last_message == datetime(2026, 11, 27, 9, 30, 9)
    assert s.last_signin == datetime(2026, 11, 27, 8, 0) and f.connections == []
    f.worker_ended(1)
    assert f.numPorts == 0 and f.stats.transactions == 47 and f.stats.connections_open == 0


def test_the_live_view_adds_up_requests_errors_and_payments_across_workers():
    clock = Clock()
    clock.advance(T0)
    now = lambda: datetime.fromtimestamp(clock.seconds())  # noqa: E731
    f = w.RemoteFactory("bank-a", None, 1)
    pool_status = [{"worker": 1, "pid": 11, "serving": True}]
    live = LiveFigures(clock, now, [("bank-a", f, ["tcp:9101"])], workers=lambda: pool_status)
    one = w.WorkerFigures({"bank-a": StubFactory()})
    two = w.WorkerFigures({"bank-a": StubFactory()})
    for _ in range(6):
        one.observe("bank-a", "pay", "OK", 0.004)
    one.observe("bank-a", "pay", "BUSY", 0.002)
    for _ in range(3):
        two.observe("bank-a", "query", "OK", 0.001)
    two.observe("bank-a", "", "REJECTED", None)
    one.paid("bank-a", datetime(2026, 11, 27, 9, 29, 58))
    two.paid("bank-a", datetime(2026, 11, 27, 9, 29, 59))
    two.paid("bank-a", datetime(2026, 11, 27, 9, 29, 57))
    f.update(1, json.loads(json.dumps(one.report()))["bank-a"])  # as the pipe carries it
    f.update(2, json.loads(json.dumps(two.report()))["bank-a"])
    snap = live.snapshot()
    [b] = snap["banks"]
    # BUSY is an error, REJECTED (a refused frame) too, NOT_FOUND would not be
    assert (b["requests_per_minute"], b["errors_5m"], b["payments_per_minute"]) == (11, 2, 3)
    assert b["error_rate_5m"] == round(2 / 11, 4)
    assert b["last_payment"] == "2026-11-27T09:29:59"  # the latest of both workers'
    assert snap["workers"] == pool_status


def test_metrics_show_each_worker_up_and_its_restarts(tmp_path):
    from console_helpers import synchronous

    from bankgate.store.db import Store

    store = synchronous(Store(f"sqlite:///{tmp_path / 'm.db'}"))
    p, clock, _, _ = started(2)
    clock.spawned[0].end(sig=9)
    metrics = GatewayMetrics(store, clock, banks=p.factories, workers=p.status)
    text = metrics.exposition().decode()
    assert 'bankgate_worker_up{worker="1"} 0.0' in text
    assert 'bankgate_worker_up{worker="2"} 1.0' in text
    assert 'bankgate_worker_restarts_total{worker="1"} 1.0' in text
    assert 'bankgate_worker_restarts_total{worker="2"} 0.0' in text
    store.stop()


# -- the worker's side ----------------------------------------------------------------------


class FakeChannel:
    def __init__(self):
        self.sent: list[tuple[str, object]] = []

    def send(self, kind, body):
        self.sent.append((kind, json.loads(json.dumps(body, default=str))))


class FakePort:
    def __init__(self, factory):
        self.factory, self.listening = factory, True
        factory.doStart()

    def stopListening(self):  # noqa: N802
        self.listening = False
        self.factory.doStop()
        return defer.succeed(None)


class FakeGateway:
    """What WorkerSide reads of its GatewayService."""

    def __init__(self, clock, handler):
        from bankgate.domain.ledger import LedgerService

        self.reactor = clock
        self.cfg = parse_config({**PG, "bank": [
            {"name": "bank-a", "plugin": "ref-delim", "bank_code": "103210",
             "listen": ["tcp:9101", "tcp:9111"]}]})
        self.factories = {"bank-a": bank_factory(clock, "bank-a", handler)}
        self.ledger_service = LedgerService.__new__(LedgerService)
        self.ledger_service.listeners = []
        self.now = lambda: datetime.fromtimestamp(clock.seconds())


def side(handler=None, sockets=((4, "bank-a", 0), (5, "bank-a", 1))):
    from twisted.internet.testing import MemoryReactorClock

    clock = MemoryReactorClock()
    clock.advance(T0)
    adopted = []

    def adopter(reactor, fd, e, factory):
        adopted.append((fd, e.port))
        return FakePort(factory)

    channel = FakeChannel()
    s = w.WorkerSide(w.WorkerSpec(2, tuple(sockets)), clock, channel, adopter=adopter)
    gw = FakeGateway(clock, handler or Handler())
    s.start(gw)
    return s, gw, clock, channel, adopted


def test_a_worker_serves_the_ports_it_was_handed_and_says_so():
    s, gw, clock, channel, adopted = side()
    assert adopted == [(4, 9101), (5, 9111)]
    assert gw.factories["bank-a"].numPorts == 2
    [(first, figures), ready] = channel.sent
    assert first == "figures" and figures["bank-a"]["listening"] == 2
    assert ready == ("ready", {"banks": ["bank-a"]})
    proto, transport = connect(gw.factories["bank-a"])
    proto.dataReceived(frame("PAY 1"))
    clock.advance(1)
    [(kind, report)] = channel.sent[2:]
    assert kind == "figures"
    r = report["bank-a"]
    assert r["listening"] == 2 and r["stats"]["connections_open"] == 1
    assert [x[:2] + x[3:4] for x in r["requests"]] == [["pay", "OK", 1]]


def test_a_descriptor_for_a_bank_the_configuration_lacks_fails_the_start():
    from bankgate.app.startup import StartupError

    with pytest.raises(StartupError, match="descriptor 4: bank bank-z has no endpoint 0"):
        side(sockets=((4, "bank-z", 0),))


def test_accepted_payments_count_and_notices_go_to_the_supervisor():
    s, gw, clock, channel, _ = side()
    origin = m.Origin(bank="bank-a", trade_date=date(2026, 11, 27))
    pay = m.PaymentRequest(origin, "S1", "100000001", 100)
    s.on_request(pay, m.PaymentResult(m.Outcome.OK, receipt_no="R1"))
    s.on_request(pay, m.PaymentResult(m.Outcome.NOT_FOUND))  # refused: not counted
    notice = m.StatementNotice(origin, date(2026, 11, 26), "", 3, 300)
    s.on_request(notice, m.SimpleResult(m.Outcome.OK))
    s.on_request(m.StatementNotice(origin, date(2026, 11, 25), "", 0, 0),
                 m.SimpleResult(m.Outcome.FORMAT_ERROR))  # refused: not handed up
    assert [x for x in channel.sent if x[0] == "notice"] == [
        ("notice", {"bank": "bank-a", "date": "2026-11-26", "file_name": None})]
    s.report()
    assert channel.sent[-1][1]["bank-a"]["payments"] == 1
    assert channel.sent[-1][1]["bank-a"]["last_payment"] == "2026-11-27T09:30:00"


def test_stop_answers_what_is_in_flight_then_closes_and_reports_last():
    handler = Handler(immediate=False)
    s, gw, clock, channel, _ = side(handler)
    factory = gw.factories["bank-a"]
    proto, transport = connect(factory)
    proto.dataReceived(frame("PAY 7"))  # in flight when the stop comes
    idle, idle_transport = connect(factory)
    d = s.stop()
    assert factory.numPorts == 0  # stopped listening
    assert ("stopping", {}) in channel.sent
    assert transport.producerState == "paused" and idle_transport.producerState == "paused"
    clock.advance(1)
    assert not d.called and not transport.disconnecting  # still waiting for the ledger
    handler.fire()
    assert transport.value().endswith(b"OK 7")  # the answer is written...
    clock.advance(0.05)
    assert transport.disconnecting and idle_transport.disconnecting  # ...then they close
    proto.connectionLost(None)
    idle.connectionLost(None)
    clock.advance(0.05)
    assert d.called
    kind, last = channel.sent[-1]
    assert kind == "figures" and last["bank-a"]["stats"]["transactions"] == 1


def test_stop_gives_up_waiting_for_the_ledger_after_the_drain_timeout():
    handler = Handler(immediate=False)
    s, gw, clock, channel, _ = side(handler)
    proto, transport = connect(gw.factories["bank-a"])
    proto.dataReceived(frame("PAY 8"))
    d = s.stop()
    clock.advance(w.DRAIN_TIMEOUT - 0.1)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting  # closed unanswered: the ledger commits, a retry reads it
    clock.advance(w.CLOSE_TIMEOUT + 0.1)
    assert d.called


def test_describe_exit_says_status_or_signal():
    assert w.describe_exit(Failure(ProcessDone(0))) == "exited normally"
    assert w.describe_exit(Failure(ProcessTerminated(exitCode=3))) == "exited with status 3"
    assert w.describe_exit(Failure(ProcessTerminated(signal=15))) == \
        "was killed by signal 15 (SIGTERM)"


# -- the service in each mode ---------------------------------------------------------------


class ProcessMemoryReactor:
    """test_service's threaded memory reactor, spawning :class:`FakeProcess`\\ es."""

    def __new__(cls):
        from console_helpers import ThreadedMemoryReactor

        class Reactor(ThreadedMemoryReactor):
            spawnProcess = ProcessClock.spawnProcess  # noqa: N815

            def __init__(self):
                super().__init__()
                self.spawned, self._pids = [], iter(range(2000, 100000))

            def pump_while(self, busy, timeout=60):
                while busy():
                    f, args, kw = self.thread_calls.get(timeout=timeout)
                    f(*args, **kw)

        return Reactor()


def test_the_supervisor_serves_no_bank_itself_and_is_ready_once_its_workers_are(tmp_path):
    from bankgate.app.config import default_config
    from bankgate.app.console.live import live_for
    from bankgate.app.tap import gateway as build_gateway

    cfg = default_config(str(tmp_path / "var"))
    cfg.demo_customers = 20
    cfg.workers = 2  # the supervisor's wiring only: these "processes" are fakes
    reactor = ProcessMemoryReactor()
    gw = build_gateway(cfg, reactor)
    assert isinstance(gw.pool, w.WorkerPool) and gw.factories is gw.pool.factories
    gw.pool.binder = binder = Binder()
    console_ports = len(reactor.tcpServers)
    gw.startService()
    reactor.pump_while(lambda: not gw.pool.running and gw.failure_reason is None)
    assert gw.failure_reason is None
    assert [s.e.text for s in binder.sockets] == [ep for b in cfg.banks for ep in b.listen]
    bank_ports = {int(ep.split(":")[1]) for b in cfg.banks for ep in b.listen}
    assert not bank_ports & {p[0] for p in reactor.tcpServers[console_ports:]}  # not here
    assert len(reactor.spawned) == 2 and not gw.ready.called
    for proc in reactor.spawned:
        proc.say("ready", {"banks": cfg.bank_names()})
    assert gw.ready.called
    live = live_for(gw)
    report = _report(connections_open=2, transactions=5, last_message="2026-11-27T09:30:00")
    report["requests"] = [["pay", "OK", 3, 5, 0.02]]
    reactor.spawned[0].say("figures", {"demo-fixed": report})
    reactor.spawned[1].say("figures", {"demo-fixed": report})
    bank = next(b for b in live.snapshot()["banks"] if b["bank"] == "demo-fixed")
    assert (bank["peers"], bank["requests_per_minute"], bank["listening"]) == (4, 10, 1)
    assert [x["pid"] for x in live.snapshot()["workers"]] == [2000, 2001]
    d = gw.stopService()
    assert [p.signals for p in reactor.spawned] == [["TERM"], ["TERM"]]
    for proc in reactor.spawned:
        proc.end(code=0)
    reactor.pump_until(d)
    assert not gw.running


def test_a_worker_service_is_the_bank_path_only(tmp_path):
    from bankgate.app.config import default_config
    from bankgate.app.service import GatewayService

    cfg = default_config(str(tmp_path / "var"))
    reactor = ProcessMemoryReactor()
    endpoints = [(b.name, i) for b in cfg.banks for i in range(len(b.listen))]
    spec = w.WorkerSpec(1, tuple((4 + k, bank, i) for k, (bank, i) in enumerate(endpoints)))
    adopted = []

    def adopter(r, fd, e, factory):
        adopted.append((fd, factory.profile.name, e.port))
        return FakePort(factory)

    channel = FakeChannel()
    gw = GatewayService(cfg, reactor, worker=w.WorkerSide(spec, reactor, channel,
                                                          adopter=adopter))
    assert gw.pool is None and gw.console is None and gw.alerts is None
    assert gw.recon.on_request not in gw.ledger_service.listeners  # notices go up instead
    gw.startService()
    assert gw.ready.called and gw.lock is None
    assert [(fd, bank) for fd, bank, _ in adopted] == [(4 + k, b) for k, (b, _) in
                                                       enumerate(endpoints)]
    assert not gw.scheduler.loop.running and not gw.recon.loop.running
    assert not (tmp_path / "var" / "bankgate.db").exists()  # the supervisor migrates, not it
    assert channel.sent[1] == ("ready", {"banks": cfg.bank_names()})
    reactor.pump_until(gw.stopService())
    assert all(f.numPorts == 0 for f in gw.factories.values())
    assert ("stopping", {}) in channel.sent


def test_a_worker_that_cannot_be_spawned_fails_the_start_or_is_tried_again_later(logged):
    p, clock, _, _ = started(1)
    real = clock.spawnProcess

    def no_fork(*a, **kw):
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    clock.spawnProcess = no_fork
    clock.advance(100)
    clock.spawned[0].end(sig=9)
    clock.advance(0)  # the restart finds no process to be had...
    assert "worker 1 cannot be started: [Errno 11] Resource temporarily unavailable" in \
        "\n".join(logged())
    clock.spawnProcess = real
    clock.advance(1)  # ...and is tried again after a while
    assert len(clock.spawned) == 2
    fresh, clock2, _, _ = pool(1)
    clock2.spawnProcess = no_fork
    fresh.startService()
    failures = []
    fresh.serving.addErrback(failures.append)
    assert "worker 1 cannot be started" in str(failures[0].value)


def test_a_worker_process_keeps_four_database_threads_with_n8_apart(monkeypatch, tmp_path):
    """N8 apart gives one process 8 database threads; a worker is one of several
    (the supervisor may have been given --workers while the file says nothing), so
    it keeps 4, unless the file says how many."""
    from bankgate.app import service, tap

    n8_apart = (b"[database]\nurl = 'postgresql+psycopg://db-host/bankgate'\n"
                b"[n8.database]\nurl = 'postgresql+psycopg://n8-host/n8'\n")
    got = []
    monkeypatch.setattr(w, "worker_logging", lambda channel, cfg: None)
    monkeypatch.setattr(service, "GatewayService",
                        lambda cfg, reactor, worker: got.append(cfg.db_threads))
    for text in (n8_apart, n8_apart.replace(b"[n8", b"threads = 6\n[n8")):
        monkeypatch.setattr(w.WorkerSide, "from_stdio", staticmethod(
            lambda spec, reactor, text=text: (SimpleNamespace(channel=None), "bankgate.toml",
                                              text)))
        tap.worker({"worker-of": "1:", "data-dir": str(tmp_path)}, None)
    assert got == [4, 6]
