"""Several processes serving the banks: the supervisor and its workers.

One Python process answers as many payments as one core allows (the GIL).  With
``[gateway] workers = N`` (or ``twistd bankgate --workers N``) the ``twistd`` process
becomes the *supervisor* (:class:`WorkerPool`, a child of the
:class:`~bankgate.app.service.GatewayService`):

- it binds every bank's listening port itself (:func:`bind`), once the database is
  migrated, and starts N worker processes (``reactor.spawnProcess``: the same Python,
  ``twistd -n bankgate --worker-of SPEC``) that inherit those sockets as file
  descriptors 4, 5, ... (:class:`WorkerSpec`); each worker adopts them
  (``reactor.adoptStreamPort``, :func:`adopt`) and serves the banks, and the kernel
  hands each new connection to one of them;
- it hands each worker the configuration file's bytes as it read them, on the worker's
  standard input (:func:`config_payload`), so that the workers never run on a file
  changed since; that input stays open: a worker whose supervisor is gone sees it close
  and stops;
- it keeps everything that is not the bank path: the console, the schedulers (cut-off,
  reconciliation, reports), the alerts, the card-debit links;
- a worker writes one JSON object per line to file descriptor 3 (:class:`Channel`):
  its log events (formatted there, :func:`event_for_supervisor`; the supervisor writes
  them into the one log, tagged ``worker N pid P``), its figures once a second
  (:class:`WorkerFigures`; summed per bank by :class:`RemoteFactory`, which has the
  shape of a :class:`~bankgate.wire.listener.BankFactory`, so the console's pages and
  ``/metrics`` read them unchanged), and the statement notices its ledger accepted
  (the supervisor's reconciliation scheduler queues them);
- a worker that exits unexpectedly is logged (pid, exit status or signal) and
  restarted: at once after a run of :data:`STABLE_AFTER` seconds or more, and after
  1, 2, 4 ... :data:`MAX_DELAY` seconds while it keeps dying sooner; the others keep
  serving.  A worker that dies before it ever served fails the gateway's start;
- on stop, the supervisor sends each worker ``SIGTERM``; a worker stops listening,
  lets the requests it is answering finish and their answers be written
  (:data:`DRAIN_TIMEOUT`), closes its connections and exits.  A worker still there
  after :data:`STOP_TIMEOUT` seconds is killed, and the log says so.

``docs/workers.rst`` is the operator's side of this.
"""

from __future__ import annotations

import gc
import json
import math
import os
import signal
import socket
import sys
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime

from twisted.application import service
from twisted.internet import defer, endpoints, protocol, task
from twisted.internet.error import CannotListenError, ProcessDone, ProcessExitedAlready
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    formatEvent,
    globalLogPublisher,
)

from bankgate.app import startup
from bankgate.app.console.metrics import LATENCY_BUCKETS
from bankgate.app.logs import install_main, level_filter, set_python_levels
from bankgate.canon import messages as m
from bankgate.codec.capabilities import simulator_traits
from bankgate.wire.listener import BankStats

log = Logger(namespace="bankgate.workers")

#: the worker's file descriptor for its messages to the supervisor (JSON lines)
CHANNEL_FD = 3
#: the worker's first inherited listening socket; the others follow
FIRST_SOCKET_FD = 4
#: a worker that ran at least this long before it died is restarted at once
STABLE_AFTER = 30.0
#: the longest wait before restarting a worker that keeps dying
MAX_DELAY = 60.0
#: seconds a stopping worker waits for the requests it is answering
DRAIN_TIMEOUT = 5.0
#: seconds a stopping worker waits for its connections to close
CLOSE_TIMEOUT = 1.0
#: seconds the supervisor gives its workers to stop before it kills them
STOP_TIMEOUT = 8.0
#: the pipe a worker writes its messages into is widened to this many bytes (Linux)
PIPE_SIZE = 1024 * 1024
#: how often a worker sends its figures (seconds)
REPORT_INTERVAL = 1.0
#: the longest message line the supervisor reads from a worker (bytes)
MAX_LINE = 4 * 1024 * 1024
#: log events of a worker's ``twistd`` itself ("starting up", the reactor class):
#: the supervisor logs the worker's start and end in its own words
_TWISTD_NAMESPACES = ("twisted.application.app.", "twisted.scripts.")

#: ``python -c RUNNER ARGS...``: twistd in the worker, as ``twistd ARGS...``
WORKER_RUNNER = "from twisted.scripts.twistd import run; run()"


# -- what a worker is handed ---------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    """Which worker a process is, and which inherited descriptor is which bank port.

    Written on the worker's command line as ``N:FD=BANK/I,FD=BANK/I`` (``--worker-of``):
    worker ``N``; descriptor ``FD`` listens for endpoint ``I`` (from 0) of bank
    ``BANK``'s ``listen``.
    """

    number: int
    sockets: tuple[tuple[int, str, int], ...] = ()

    def arg(self) -> str:
        return f"{self.number}:" + ",".join(f"{fd}={bank}/{i}" for fd, bank, i in self.sockets)

    @classmethod
    def parse(cls, text: str) -> WorkerSpec:
        """The spec of ``--worker-of``; :class:`ValueError` saying what is wrong."""
        head, sep, rest = text.partition(":")
        if not sep or not head.isdigit() or int(head) < 1:
            raise ValueError(f"--worker-of {text!r}: expected N:FD=BANK/I,... (set by the"
                             " gateway for its worker processes, not by hand)")
        sockets = []
        for item in filter(None, rest.split(",")):
            fd, eq, where = item.partition("=")
            bank, slash, index = where.rpartition("/")
            if not (eq and slash and bank and fd.isdigit() and index.isdigit()):
                raise ValueError(f"--worker-of {text!r}: {item!r} is not FD=BANK/I")
            sockets.append((int(fd), bank, int(index)))
        return cls(int(head), tuple(sockets))


def config_payload(source: str, raw: bytes) -> bytes:
    """What the supervisor writes on a worker's standard input: one JSON line
    (``source``, ``size``), then the configuration file's bytes."""
    head = json.dumps({"source": source, "size": len(raw)}).encode()
    return head + b"\n" + raw


def read_config_payload(fd: int = 0, read: Callable[[int, int], bytes] = os.read
                        ) -> tuple[str, bytes]:
    """``(source, bytes)`` of :func:`config_payload`, read from ``fd`` (blocking: the
    worker reads it before its reactor runs)."""
    buf = b""
    while b"\n" not in buf:
        chunk = read(fd, 65536)
        if not chunk:
            raise startup.StartupError("the supervisor sent no configuration")
        buf += chunk
        if len(buf) > 65536 and b"\n" not in buf:
            raise startup.StartupError("the supervisor's configuration header is garbled")
    head, _, raw = buf.partition(b"\n")
    try:
        meta = json.loads(head)
        source, size = str(meta["source"]), int(meta["size"])
    except (ValueError, KeyError, TypeError):
        raise startup.StartupError("the supervisor's configuration header is garbled") from None
    while len(raw) < size:
        chunk = read(fd, size - len(raw))
        if not chunk:
            raise startup.StartupError("the supervisor's configuration ended early")
        raw += chunk
    return source, raw[:size]


def worker_argv(spec: WorkerSpec, data_dir: str, python: str | None = None) -> list[str]:
    """The command line of a worker: this Python running ``twistd -n bankgate``."""
    return [python or sys.executable, "-c", WORKER_RUNNER, "-n", "--pidfile=", "bankgate",
            "--worker-of", spec.arg(), "--data-dir", data_dir]


# -- listening endpoints, bound here and adopted there ------------------------------------


@dataclass
class Endpoint:
    """Where a server endpoint string listens, as a socket: what :func:`bind` binds and
    :func:`adopt` serves (``tls``: the ``ssl:`` endpoint's context factory)."""

    text: str
    family: int = socket.AF_INET
    port: int = 0
    interface: str = ""
    path: str | None = None
    backlog: int = 50
    mode: int = 0o666
    tls: object | None = None


class _Capture:
    """A stand-in reactor that notes what an endpoint would listen on."""

    def __init__(self, e: Endpoint):
        self.e = e

    def listenTCP(self, port, factory, backlog=50, interface=""):  # noqa: N802
        e = self.e
        e.port, e.backlog, e.interface = port, backlog, interface
        e.family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        return self

    def listenSSL(self, port, factory, contextFactory, backlog=50, interface=""):  # noqa: N802
        self.e.tls = contextFactory
        return self.listenTCP(port, factory, backlog, interface)

    def listenUNIX(self, address, factory, backlog=50, mode=0o666, wantPID=0):  # noqa: N802
        e = self.e
        e.family, e.path, e.backlog, e.mode = socket.AF_UNIX, address, backlog, mode
        return self


def endpoint_of(text: str) -> Endpoint:
    """The socket a server endpoint string (``tcp:``, ``tcp6:``, ``ssl:``, ``unix:``)
    listens on; :class:`ValueError` for another kind, which workers cannot share."""
    e = Endpoint(text)
    failures: list = []
    try:
        d = endpoints.serverFromString(_Capture(e), text).listen(None)
    except Exception as ex:  # noqa: BLE001 - e.g. an ssl: key file that is not there
        raise ValueError(f"cannot listen on {text}: {startup.one_line(ex)}") from None
    d.addErrback(failures.append)
    if failures:
        if failures[0].check(AttributeError):
            raise ValueError(f"{text}: workers share tcp:, tcp6:, ssl: and unix: endpoints"
                             " only")
        raise ValueError(f"cannot listen on {text}: {failures[0].getErrorMessage()}")
    return e


def bind(e: Endpoint) -> socket.socket:
    """A listening, non-blocking socket for ``e``, bound as Twisted's own ports bind
    (``SO_REUSEADDR``); :class:`~twisted.internet.error.CannotListenError` when the
    address cannot be had."""
    s = socket.socket(e.family, socket.SOCK_STREAM)
    try:
        if e.family == socket.AF_UNIX:
            if os.path.exists(e.path) and not startup.unix_in_use(e.path):
                os.unlink(e.path)  # a stale socket file: a listener that did not clean up
            s.bind(e.path)
            os.chmod(e.path, e.mode)
        else:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((e.interface, e.port))
        s.listen(e.backlog)
        s.setblocking(False)
    except OSError as err:
        s.close()
        raise CannotListenError(e.interface or e.path, e.port, err) from None
    return s


def adopt(reactor, fd: int, e: Endpoint, factory):
    """Serve ``factory`` on the inherited listening socket ``fd`` (TLS for ``ssl:``);
    the port holds its own duplicate, so ``fd`` is closed."""
    if e.tls is not None:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        factory = TLSMemoryBIOFactory(e.tls, False, factory)
    port = reactor.adoptStreamPort(fd, e.family, factory)
    os.close(fd)
    return port


# -- a worker's figures, summed in the supervisor ------------------------------------


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def _from_iso(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


#: BankStats fields that count up (kept from workers that ended) and that are gauges
_COUNTERS = ("connections_total", "transactions", "rejected", "errors", "unanswered")
_GAUGES = ("connections_open", "in_flight")


def stats_dict(stats: BankStats) -> dict:
    """A listener's :class:`~bankgate.wire.listener.BankStats` as JSON can hold it."""
    out = {k: getattr(stats, k) for k in (*_COUNTERS, *_GAUGES)}
    out["outcomes"] = dict(stats.outcomes)
    out["last_message"] = _iso(stats.last_message)
    out["last_signin"] = _iso(stats.last_signin)
    return out


class WorkerFigures:
    """A worker's figures per bank, sent to the supervisor every second.

    Requests are grouped by (transaction, outcome, latency bucket of
    :data:`~bankgate.app.console.metrics.LATENCY_BUCKETS`) with their count and
    summed seconds: the supervisor replays each group to its observers at the
    group's mean latency, which lies in the same bucket, so the request counts, the
    error rate and the latency histogram come out as one process would have counted
    them.  Accepted payments are counted with the time of the last one.
    """

    def __init__(self, factories: dict, bounds: Iterable[float] = LATENCY_BUCKETS):
        self.factories = factories
        self.bounds = tuple(sorted(bounds))
        self.requests: dict[str, dict[tuple, list]] = {b: {} for b in factories}
        self.payments: dict[str, int] = dict.fromkeys(factories, 0)
        self.last_payment: dict[str, datetime | None] = dict.fromkeys(factories)
        for f in factories.values():
            f.observers.append(self.observe)

    def observe(self, bank: str, txname: str, outcome: str, seconds: float | None) -> None:
        """A listener observer: one request answered, refused or failed."""
        groups = self.requests.get(bank)
        if groups is None:
            return
        bucket = -1 if seconds is None else bisect_left(self.bounds, seconds)
        g = groups.get((txname, outcome, bucket))
        if g is None:
            g = groups[(txname, outcome, bucket)] = [0, 0.0]
        g[0] += 1
        g[1] += seconds or 0.0

    def paid(self, bank: str, when: datetime) -> None:
        if bank in self.payments:
            self.payments[bank] += 1
            self.last_payment[bank] = _latest(self.last_payment[bank], when)

    def report(self) -> dict:
        """Every bank's figures now (the requests and payments since the last report)."""
        out = {}
        for bank, f in self.factories.items():
            out[bank] = {
                "stats": stats_dict(f.stats),
                "listening": f.numPorts,
                "signed_in": [_iso(p.signed_in_at) for p in f.connections
                              if getattr(p, "signed_in_at", None) is not None],
                "requests": [[t, o, b, n, s] for (t, o, b), (n, s)
                             in self.requests[bank].items()],
                "payments": self.payments[bank],
                "last_payment": _iso(self.last_payment[bank]),
            }
            self.requests[bank] = {}
            self.payments[bank] = 0
        return out


@dataclass
class _Peer:
    """A signed-in connection of some worker, as the console reads it."""

    signed_in_at: datetime | None


class RemoteFactory:
    """One bank's figures over every worker, in the shape the console reads of a
    :class:`~bankgate.wire.listener.BankFactory`: ``stats``, ``numPorts``,
    ``connections`` (the signed-in ones), ``signin_txn``, ``observers``.

    Connections open and requests in flight are those of the running workers; counts
    add up, those of a worker that ended included; the last message and sign-in are
    the latest of any.  ``observers`` are called as a listener calls them, when a
    worker's report arrives; ``payment_observers`` with ``(count, last time)``.
    """

    def __init__(self, name: str, codec, endpoints: int, bounds: Iterable[float] = LATENCY_BUCKETS):
        self.name = name
        self.endpoints = endpoints
        self.bounds = tuple(sorted(bounds))
        traits = simulator_traits(codec) if codec is not None else None
        self.signin_txn = traits.signin if traits is not None else None
        self.signout_txn = traits.ops.get("signout") if self.signin_txn else None
        self.observers: list[Callable[[str, str, str, float | None], None]] = []
        self.payment_observers: list[Callable[[int, datetime | None], None]] = []
        self.reports: dict[int, dict] = {}  # running worker -> its last report
        self.ended = BankStats()  # what workers that ended counted

    # -- from the workers --------------------------------------------------------------

    def update(self, worker: int, report: dict) -> None:
        """A worker's report (:meth:`WorkerFigures.report` for this bank)."""
        self.reports[worker] = report
        for txname, outcome, bucket, count, total in report.get("requests", ()):
            seconds = None if bucket < 0 else self._within(bucket, total / count)
            for _ in range(count):
                for f in self.observers:
                    f(self.name, txname, outcome, seconds)
        paid = report.get("payments", 0)
        if paid:
            last = _from_iso(report.get("last_payment"))
            for f in self.payment_observers:
                f(paid, last)

    def _within(self, bucket: int, seconds: float) -> float:
        """``seconds`` kept inside its bucket against float rounding of the mean."""
        if bucket < len(self.bounds):
            seconds = min(seconds, self.bounds[bucket])
        if bucket > 0:
            seconds = max(seconds, math.nextafter(self.bounds[bucket - 1], math.inf))
        return seconds

    def worker_ended(self, worker: int) -> None:
        """A worker exited: its counts stay, its connections are gone."""
        report = self.reports.pop(worker, None)
        if report is None:
            return
        st = report.get("stats", {})
        for k in _COUNTERS:
            setattr(self.ended, k, getattr(self.ended, k) + int(st.get(k, 0)))
        self.ended.outcomes.update(st.get("outcomes", {}))
        self.ended.last_message = _latest(self.ended.last_message,
                                          _from_iso(st.get("last_message")))
        self.ended.last_signin = _latest(self.ended.last_signin,
                                         _from_iso(st.get("last_signin")))

    # -- what the console reads --------------------------------------------------------

    @property
    def stats(self) -> BankStats:
        out = BankStats(outcomes=self.ended.outcomes.copy(),
                        last_message=self.ended.last_message,
                        last_signin=self.ended.last_signin)
        for k in _COUNTERS:
            setattr(out, k, getattr(self.ended, k))
        for report in self.reports.values():
            st = report.get("stats", {})
            for k in (*_COUNTERS, *_GAUGES):
                setattr(out, k, getattr(out, k) + int(st.get(k, 0)))
            out.outcomes.update(st.get("outcomes", {}))
            out.last_message = _latest(out.last_message, _from_iso(st.get("last_message")))
            out.last_signin = _latest(out.last_signin, _from_iso(st.get("last_signin")))
        return out

    @property
    def numPorts(self) -> int:  # noqa: N802 - Factory's name
        """The endpoints listening: all of them while a worker serves them, else 0."""
        serving = any(r.get("listening", 0) for r in self.reports.values())
        return self.endpoints if serving else 0

    @property
    def connections(self) -> list[_Peer]:
        return [_Peer(_from_iso(t)) for r in self.reports.values()
                for t in r.get("signed_in", ())]


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


# -- the supervisor ---------------------------------------------------------------------


@dataclass
class Worker:
    """One worker slot: its number stays, its process changes with each restart."""

    number: int
    pid: int | None = None
    transport: object | None = None
    started: float = 0.0
    serving: bool = False  # said ready, and has not ended since
    served: bool = False  # has ever said ready
    restarts: int = 0
    quick_deaths: int = 0  # deaths in a row, each before STABLE_AFTER seconds of running
    last_exit: str | None = None
    restart_call: object | None = None


def describe_exit(reason) -> str:
    """How a process ended, for the log: ``exited with status 1``, ``was killed by
    signal 9 (SIGKILL)``, ``exited normally``."""
    value = getattr(reason, "value", reason)
    if isinstance(value, ProcessDone):
        return "exited normally"
    sig = getattr(value, "signal", None)
    if sig:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "?"
        return f"was killed by signal {sig} ({name})"
    code = getattr(value, "exitCode", None)
    return f"exited with status {code}" if code is not None else f"ended ({value})"


class _WorkerProtocol(protocol.ProcessProtocol):
    """The supervisor's end of one worker process: its messages (descriptor 3), its
    standard output and error (logged as they come), its end."""

    def __init__(self, pool: WorkerPool, worker: Worker, payload: bytes):
        self.pool, self.worker, self.payload = pool, worker, payload
        self.buffers: dict[int, bytes] = {}

    def connectionMade(self):  # noqa: N802
        self.transport.writeToChild(0, self.payload)  # standard input stays open

    def childDataReceived(self, fd, data):  # noqa: N802
        buf = self.buffers.get(fd, b"") + data
        *lines, rest = buf.split(b"\n")
        if len(rest) > MAX_LINE:
            log.warn("bankgate: worker {n}: a line of over {max} bytes dropped",
                     n=self.worker.number, max=MAX_LINE)
            rest = b""
        self.buffers[fd] = rest
        for line in lines:
            if fd == CHANNEL_FD:
                self.pool.message(self.worker, line)
            elif line.strip():
                self.pool.output(self.worker, line)

    def processEnded(self, reason):  # noqa: N802
        for fd, rest in self.buffers.items():
            if rest.strip() and fd != CHANNEL_FD:
                self.pool.output(self.worker, rest)
        self.buffers.clear()
        self.pool.ended(self.worker, reason)


class WorkerPool(service.Service):
    """The supervisor's workers (module docstring).

    :param reactor: spawns processes, and its clock times restarts and the stop.
    :param count: how many workers.
    :param endpoints: ``[(bank, endpoint string)]`` in configuration order.
    :param factories: ``{bank: RemoteFactory}``: the figures the console reads.
    :param argv: ``argv(spec) -> [executable, args...]`` of a worker.
    :param payload: what each worker reads on its standard input
        (:func:`config_payload`).
    :param on_notice: ``on_notice(bank, settle_date, file_name)`` for a statement
        notice a worker's ledger accepted.
    :param publish: where the workers' log events go (the global log publisher).
    :param binder: ``binder(Endpoint) -> socket`` (default :func:`bind`; tests give
        their own).
    :param env: the workers' environment; ``path``: their folder (default: this
        process's, at the time each starts -- after twistd's ``--rundir``).
    """

    name = "workers"

    def __init__(self, reactor, count: int, endpoints: list[tuple[str, str]],
                 factories: dict[str, RemoteFactory], *, argv: Callable[[WorkerSpec], list[str]],
                 payload: bytes = b"", on_notice: Callable | None = None,
                 publish: Callable[[dict], None] | None = None,
                 binder: Callable[[Endpoint], socket.socket] | None = None,
                 env: dict | None = None, path: str | None = None,
                 stop_timeout: float = STOP_TIMEOUT):
        self.reactor = reactor
        self.count = count
        self.endpoints = list(endpoints)
        self.factories = factories
        self.argv = argv
        self.payload = payload
        self.on_notice = on_notice
        self.publish = publish if publish is not None else globalLogPublisher
        self.binder = binder or bind
        self.env = env
        self.path = path
        self.stop_timeout = stop_timeout
        self.workers = [Worker(n) for n in range(1, count + 1)]
        self.sockets: list[tuple[int, str, int, socket.socket]] = []  # fd in the worker, ...
        self.serving: defer.Deferred = defer.Deferred()  # every worker served once
        self.stopping = False
        self.failed = False  # a worker died before it ever served: the start failed
        self._stopped: defer.Deferred | None = None
        self._kill_call = None

    @classmethod
    def for_service(cls, gw) -> WorkerPool:
        """The pool of a :class:`~bankgate.app.service.GatewayService` whose
        configuration asks for workers."""
        cfg = gw.cfg
        factories = {b.name: RemoteFactory(b.name, gw.codecs[b.plugin], len(b.listen))
                     for b in cfg.banks}

        def notice(bank: str, day: date, file_name: str | None) -> None:
            if bank in gw.recon.reconcilers:
                gw.recon.enqueue(bank, day, file_name=file_name,
                                 why="notice").addErrback(lambda f: None)

        return cls(gw.reactor, cfg.workers, [(b.name, ep) for b in cfg.banks for ep in b.listen],
                   factories, argv=lambda spec: worker_argv(spec, cfg.data_dir),
                   payload=config_payload(cfg.source, cfg.raw), on_notice=notice,
                   env=dict(os.environ))

    # -- start ----------------------------------------------------------------------

    def startService(self):  # noqa: N802
        super().startService()
        self.stopping = False
        self._bind_all()
        log.info("bankgate: starting {n} workers on {ports} port(s)", n=self.count,
                 ports=len(self.sockets))
        for w in self.workers:
            self._spawn(w)

    def _bind_all(self) -> None:
        seen: dict[str, int] = {}
        for bank, text in self.endpoints:
            index = seen.get(bank, 0)
            seen[bank] = index + 1
            try:
                s = self.binder(endpoint_of(text))
            except ValueError as e:
                self._close_sockets()
                raise startup.StartupError(f"bank {bank}: {e}") from None
            except CannotListenError as e:
                self._close_sockets()
                raise startup.StartupError(f"bank {bank}: cannot listen on {text}:"
                                           f" {startup.listen_problem(e)}") from None
            self.sockets.append((FIRST_SOCKET_FD + len(self.sockets), bank, index, s))

    def _close_sockets(self) -> None:
        for *_, s in self.sockets:
            s.close()
        self.sockets = []

    def spec(self, w: Worker) -> WorkerSpec:
        return WorkerSpec(w.number, tuple((fd, bank, i) for fd, bank, i, _ in self.sockets))

    def _spawn(self, w: Worker) -> None:
        w.restart_call = None
        spec = self.spec(w)
        fds: dict[int, object] = {0: "w", 1: "r", 2: "r", CHANNEL_FD: "r"}
        fds.update({fd: s.fileno() for fd, _, _, s in self.sockets})
        args = self.argv(spec)
        w.serving = False
        w.started = self.reactor.seconds()
        try:
            w.transport = self.reactor.spawnProcess(
                _WorkerProtocol(self, w, self.payload), args[0], args, env=self.env,
                path=self.path, childFDs=fds)
        except OSError as e:  # no process at all (out of processes or memory)
            w.transport = None
            why = f"worker {w.number} cannot be started: {startup.one_line(e)}"
            if not w.served and not self.serving.called:
                self.failed = True
                self.serving.errback(startup.StartupError(why))
                return
            log.error("bankgate: {why}", why=why)
            self._schedule_restart(w)
            return
        w.pid = w.transport.pid
        log.info("bankgate: worker {n} started (pid {pid})", n=w.number, pid=w.pid)

    # -- what a worker says -----------------------------------------------------------

    def message(self, w: Worker, line: bytes) -> None:
        try:
            msg = json.loads(line)
            [(kind, body)] = msg.items()
        except (ValueError, AttributeError):
            log.warn("bankgate: worker {n} (pid {pid}) sent a garbled message ({size} bytes)",
                     n=w.number, pid=w.pid, size=len(line))
            return
        handler = getattr(self, f"_on_{kind}", None)
        if handler is None:
            log.warn("bankgate: worker {n} sent an unknown message {kind!r}", n=w.number,
                     kind=kind)
            return
        try:
            handler(w, body)
        except Exception:  # noqa: BLE001 - a bad message must not stop the supervisor
            log.failure("bankgate: worker {n}'s {kind} message failed", n=w.number, kind=kind)

    def _on_log(self, w: Worker, body: dict) -> None:
        event = event_from_worker(body, w.number, w.pid)
        if event is not None:
            self.publish(event)

    def _on_ready(self, w: Worker, body: dict) -> None:
        w.serving = w.served = True
        log.info("bankgate: worker {n} (pid {pid}) serving {banks}", n=w.number, pid=w.pid,
                 banks=", ".join(body.get("banks", ())) or "no bank")
        if not self.serving.called and all(x.served for x in self.workers):
            self.serving.callback(None)

    def _on_figures(self, w: Worker, banks: dict) -> None:
        for bank, report in banks.items():
            f = self.factories.get(bank)
            if f is not None:
                f.update(w.number, report)

    def _on_notice(self, w: Worker, body: dict) -> None:
        if self.on_notice is not None:
            self.on_notice(body["bank"], date.fromisoformat(body["date"]),
                           body.get("file_name") or None)

    def _on_stopping(self, w: Worker, body: dict) -> None:
        w.serving = False

    def output(self, w: Worker, line: bytes) -> None:
        """A line on a worker's standard output or error: what Python prints when it
        fails before the log is set up, or a library's own print."""
        log.warn("bankgate: worker {n} (pid {pid}): {line}", n=w.number, pid=w.pid,
                 line=line.decode("utf-8", "replace").rstrip())

    # -- a worker's end -----------------------------------------------------------------

    def ended(self, w: Worker, reason) -> None:
        how = describe_exit(reason)
        pid, w.transport, w.serving = w.pid, None, False
        w.last_exit = how
        for f in self.factories.values():
            f.worker_ended(w.number)
        if self.stopping:
            log.info("bankgate: worker {n} (pid {pid}) stopped ({how})", n=w.number, pid=pid,
                     how=how)
            self._maybe_stopped()
            return
        if self.failed:
            return
        if not w.served and not self.serving.called:  # the start fails
            self.failed = True
            self.serving.errback(startup.StartupError(
                f"worker {w.number} (pid {pid}) {how} before it served (its lines above say"
                " why)"))
            return
        self._schedule_restart(w, pid, how)

    def _schedule_restart(self, w: Worker, pid: int | None = None, how: str = "") -> None:
        delay = self.backoff(w)
        w.restarts += 1
        if pid is not None:
            log.error("bankgate: worker {n} (pid {pid}) {how}; restarting it in {delay:g} s",
                      n=w.number, pid=pid, how=how, delay=delay)
        if w.quick_deaths >= 3:
            log.warn("bankgate: worker {n} keeps dying: {k} times in a row within {stable:g} s"
                     " of its start; see its last lines above", n=w.number, k=w.quick_deaths,
                     stable=STABLE_AFTER)
        w.restart_call = self.reactor.callLater(delay, self._spawn, w)

    def backoff(self, w: Worker) -> float:
        """Seconds before ``w`` starts again: none after a run of :data:`STABLE_AFTER`
        seconds or more; 1, 2, 4 ... :data:`MAX_DELAY` while it keeps dying sooner."""
        ran = self.reactor.seconds() - w.started
        w.quick_deaths = w.quick_deaths + 1 if ran < STABLE_AFTER else 1
        if w.quick_deaths == 1:
            return 0.0
        return min(MAX_DELAY, 2.0 ** (w.quick_deaths - 2))

    # -- stop ---------------------------------------------------------------------------

    def stopService(self):  # noqa: N802
        super().stopService()
        self.stopping = True
        for w in self.workers:
            if w.restart_call is not None and w.restart_call.active():
                w.restart_call.cancel()
            w.restart_call = None
        self._close_sockets()  # the workers hold their own; none listens once they stop
        alive = [w for w in self.workers if w.transport is not None]
        if not alive:
            return defer.succeed(None)
        log.info("bankgate: stopping {n} worker(s)", n=len(alive))
        for w in alive:
            _signal(w, "TERM")
        self._stopped = defer.Deferred()
        self._kill_call = self.reactor.callLater(self.stop_timeout, self._kill_stragglers)
        return self._stopped

    def _kill_stragglers(self) -> None:
        self._kill_call = None
        for w in self.workers:
            if w.transport is not None:
                log.warn("bankgate: worker {n} (pid {pid}) did not stop within {t:g} s:"
                         " killing it (SIGKILL)", n=w.number, pid=w.pid, t=self.stop_timeout)
                _signal(w, "KILL")

    def _maybe_stopped(self) -> None:
        if self._stopped is None or any(w.transport is not None for w in self.workers):
            return
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        self._kill_call = None
        d, self._stopped = self._stopped, None
        d.callback(None)

    # -- what the console shows ----------------------------------------------------------

    def status(self) -> list[dict]:
        """Each worker: number, pid, serving or not, restarts, how the last one ended,
        and its connections open and transactions answered (all banks)."""
        now = self.reactor.seconds()
        out = []
        for w in self.workers:
            conns = txns = 0
            for f in self.factories.values():
                st = f.reports.get(w.number, {}).get("stats", {})
                conns += int(st.get("connections_open", 0))
                txns += int(st.get("transactions", 0))
            out.append({"worker": w.number, "pid": w.pid if w.transport is not None else None,
                        "serving": w.serving, "up_seconds": round(now - w.started)
                        if w.transport is not None else None,
                        "restarts": w.restarts, "last_exit": w.last_exit,
                        "connections": conns, "transactions": txns})
        return out


def _signal(w: Worker, sig: str) -> None:
    try:
        w.transport.signalProcess(sig)
    except (ProcessExitedAlready, OSError):
        pass  # gone already: its end is on its way


# -- the worker ---------------------------------------------------------------------------


class Channel:
    """The worker's end of the supervisor's pipes: JSON lines written to descriptor
    :data:`CHANNEL_FD`, and standard input watched for its end (the supervisor is gone).

    A line is written at once, whole, under a lock: :meth:`send` may be called from any
    thread (a store thread's log record), nothing is held back in memory, and the last
    lines before the worker exits reach the supervisor.  A supervisor that reads too
    slowly makes the worker wait (the pipe is widened to :data:`PIPE_SIZE` first); one
    that is gone makes the writes fail, and the worker stops (:attr:`on_lost`).
    """

    def __init__(self, fd: int = CHANNEL_FD, on_lost: Callable[[], None] | None = None,
                 write: Callable[[int, bytes], int] = os.write):
        self.fd = fd
        self.on_lost = on_lost
        self.write = write
        self.open = True
        self.lock = threading.Lock()

    def send(self, kind: str, body) -> None:
        line = json.dumps({kind: body}, ensure_ascii=False, separators=(",", ":"),
                          default=str).encode() + b"\n"
        with self.lock:
            if not self.open:
                return
            try:
                view = memoryview(line)
                while view:
                    view = view[self.write(self.fd, view):]
            except OSError:  # EPIPE: the supervisor is gone
                self.open = False
                lost = True
            else:
                lost = False
        if lost and self.on_lost is not None:
            self.on_lost()

    def watch(self, reactor, stdin: int = 0) -> None:
        """Read standard input on ``reactor``: its end means the supervisor is gone."""
        from twisted.internet.process import ProcessReader

        ProcessReader(reactor, self, "stdin", stdin)

    # -- as ProcessReader's "process" -------------------------------------------------

    def childDataReceived(self, name, data):  # noqa: N802
        pass  # nothing more is said on standard input

    def childConnectionLost(self, name, reason):  # noqa: N802
        self.open = False
        if self.on_lost is not None:
            self.on_lost()


def channel_observer(channel: Channel, predicate) -> FilteringLogObserver:
    """A log observer sending each event the configured levels let through to the
    supervisor (:func:`event_for_supervisor`)."""

    def send(event: dict) -> None:
        try:
            channel.send("log", event_for_supervisor(event))
        except Exception:  # noqa: BLE001, S110 - a log line must never fail the worker
            pass

    return FilteringLogObserver(send, [predicate])


#: field values a log line carries as they are (a subclass -- an enum, a bool-like --
#: goes through JSON's own rendering)
_JSON_PLAIN = frozenset({str, int, float, bool})


def event_for_supervisor(event: dict) -> dict:
    """A log event as a worker sends it: its message formatted here (format specs and
    all), its traceback as text, and its own fields as JSON holds them (for the JSON
    log form; ``_`` fields are renderings for the text only)."""
    level = event.get("log_level")
    failure = event.get("log_failure")
    fields = {}
    for k, v in event.items():
        if k.startswith(("log_", "_")):
            continue
        if v is None or type(v) in _JSON_PLAIN:  # as JSON holds it already (most fields)
            fields[k] = v
            continue
        try:
            fields[k] = json.loads(json.dumps(v, default=str))
        except (TypeError, ValueError):
            fields[k] = str(v)
    out = {"time": event.get("log_time"), "level": getattr(level, "name", "info"),
           "namespace": event.get("log_namespace") or "-", "text": formatEvent(event),
           "fields": fields}
    if event.get("log_system"):
        out["system"] = event["log_system"]
    if failure is not None:
        try:
            out["failure"] = failure.getTraceback()
        except Exception:  # noqa: BLE001 - a log line must never fail
            out["failure"] = repr(failure)
    return out


class _Traceback:
    """A worker's traceback, as the supervisor's log observers read a failure."""

    def __init__(self, text: str):
        self.text = text

    def getTraceback(self) -> str:  # noqa: N802 - Failure's name
        return self.text


def event_from_worker(body: dict, number: int, pid: int | None) -> dict | None:
    """The supervisor's log event for what worker ``number`` sent
    (:func:`event_for_supervisor`), tagged ``worker N pid P`` in the text form and with
    ``worker`` and ``worker_pid`` fields in the JSON form; ``None`` for ``twistd``'s
    own lines."""
    namespace = str(body.get("namespace") or "-")
    if namespace.startswith(_TWISTD_NAMESPACES):
        return None
    try:
        level = LogLevel.levelWithName(str(body.get("level")))
    except Exception:  # noqa: BLE001 - InvalidLogLevelError: a garbled level
        level = LogLevel.info
    event = dict(body.get("fields") or {})
    system = body.get("system") or f"{namespace}#{level.name}"
    event.update(log_time=body.get("time"), log_level=level, log_namespace=namespace,
                 log_format="{log_text}", log_text=str(body.get("text", "")),
                 log_system=f"{system} worker {number} pid {pid}",
                 worker=number, worker_pid=pid)
    if event["log_time"] is None:
        event["log_time"] = time.time()
    if body.get("failure"):
        event["log_failure"] = _Traceback(str(body["failure"]))
    return event


class WorkerSide:
    """The bank path of one worker process, in its
    :class:`~bankgate.app.service.GatewayService`: adopts the ports it was handed,
    reports its figures, hands notices up, and drains on stop.

    :param spec: its :class:`WorkerSpec`.
    :param reactor: adopts ports; its clock times the reports and the drain.
    :param channel: the :class:`Channel` to the supervisor.
    """

    poll = 0.02  # seconds between looks while draining

    def __init__(self, spec: WorkerSpec, reactor, channel: Channel, *,
                 drain_timeout: float = DRAIN_TIMEOUT, close_timeout: float = CLOSE_TIMEOUT,
                 report_interval: float = REPORT_INTERVAL,
                 adopter: Callable | None = None):
        self.spec = spec
        self.reactor = reactor
        self.channel = channel
        self.drain_timeout = drain_timeout
        self.close_timeout = close_timeout
        self.report_interval = report_interval
        self.adopter = adopter or adopt
        self.gw = None
        self.figures: WorkerFigures | None = None
        self.ports: list = []
        self.loop: task.LoopingCall | None = None
        self.stopping = False

    @classmethod
    def from_stdio(cls, spec: WorkerSpec, reactor) -> tuple[WorkerSide, str, bytes]:
        """A worker's side as ``twistd bankgate --worker-of`` builds it: the
        configuration read from standard input, the channel on descriptors 0 and 3.
        Returns ``(side, source, configuration bytes)``."""
        source, raw = read_config_payload(0)
        os.set_blocking(CHANNEL_FD, True)
        _widen_pipe(CHANNEL_FD)
        channel = Channel(CHANNEL_FD)
        side = cls(spec, reactor, channel)
        channel.on_lost = side.supervisor_gone
        channel.watch(reactor, 0)
        return side, source, raw

    # -- start ------------------------------------------------------------------------

    def start(self, gw) -> None:
        """Serve the ports handed over; say so to the supervisor."""
        self.gw = gw
        self.figures = WorkerFigures(gw.factories)
        gw.ledger_service.listeners.append(self.on_request)
        served = []
        for fd, bank, index in self.spec.sockets:
            try:
                text = gw.cfg.bank(bank).listen[index]
            except (KeyError, IndexError):
                raise startup.StartupError(f"worker {self.spec.number}: descriptor {fd}:"
                                           f" bank {bank} has no endpoint {index}") from None
            try:
                e = endpoint_of(text)
            except ValueError as err:
                raise startup.StartupError(f"bank {bank}: {err}") from None
            self.ports.append(self.adopter(self.reactor, fd, e, gw.factories[bank]))
            if bank not in served:
                served.append(bank)
        self.loop = task.LoopingCall(self.report)
        self.loop.clock = self.reactor
        self.loop.start(self.report_interval, now=False).addErrback(
            lambda f: log.failure("bankgate: the worker's figures stopped", f))
        self.reactor.callWhenRunning(self._running)
        self.report()  # the console counts its ports from the first moment it serves
        self.channel.send("ready", {"banks": served})  # the supervisor logs it

    def _running(self) -> None:
        self._own_signals()
        # everything loaded so far lives as long as the process: keep it out of the
        # collector's full passes (their pauses show in the latency tail)
        gc.collect()
        gc.freeze()

    def _own_signals(self) -> None:
        """A worker stops when its supervisor says so (``SIGTERM``, once) or is gone --
        not on the terminal's ``Ctrl-C``, which reaches the supervisor too and which it
        passes on; ``SIGUSR1`` (rotate the log) is the supervisor's, which writes it."""

        def term(signum, frame):
            self.reactor.callFromThread(self._stop_once)

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if hasattr(signal, "SIGUSR1"):
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, term)

    def _stop_once(self) -> None:
        if not self.stopping and getattr(self.reactor, "running", False):
            self.stopping = True
            self.reactor.stop()

    def supervisor_gone(self) -> None:
        """Standard input closed: the supervisor ended without stopping this worker."""
        if not self.stopping:
            log.warn("bankgate: worker {n}: the supervisor is gone; stopping",
                     n=self.spec.number)
            self.reactor.callFromThread(self._stop_once)

    # -- while serving ----------------------------------------------------------------

    def report(self) -> None:
        if self.figures is not None:
            self.channel.send("figures", self.figures.report())

    def on_request(self, req, result) -> None:
        """A LedgerService listener: accepted payments count; an accepted statement
        notice goes to the supervisor, whose scheduler reconciles."""
        if getattr(result, "outcome", None) is not m.Outcome.OK:
            return
        if isinstance(req, m.PaymentRequest) and self.figures is not None:
            self.figures.paid(req.origin.bank, self.gw.now())
        elif isinstance(req, m.StatementNotice):
            self.channel.send("notice", {"bank": req.origin.bank,
                                         "date": req.settle_date.isoformat(),
                                         "file_name": req.file_name or None})

    # -- stop ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def stop(self):
        """Stop listening, let the requests in flight be answered (at most
        :attr:`drain_timeout` seconds), close the connections (at most
        :attr:`close_timeout` seconds for their last answers to leave), send the last
        figures."""
        self.stopping = True
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        self.channel.send("stopping", {})
        ports, self.ports = self.ports, []
        yield defer.DeferredList([defer.maybeDeferred(p.stopListening) for p in ports],
                                 consumeErrors=True)
        factories = list(self.gw.factories.values()) if self.gw is not None else []
        for p in _connections(factories):
            p.transport.pauseProducing()  # no new request: only those in flight finish
        idle = yield self._until(lambda: not any(f.stats.in_flight for f in factories),
                                 self.drain_timeout)
        if not idle:
            log.warn("bankgate: worker {n}: {k} request(s) still unanswered after {t:g} s;"
                     " closing their connections (the ledger finishes them; a retry reads"
                     " the answer)", n=self.spec.number,
                     k=sum(f.stats.in_flight for f in factories), t=self.drain_timeout)
        for p in _connections(factories):
            p.closeConnection()
        yield self._until(lambda: not any(f.connections for f in factories),
                          self.close_timeout)
        self.report()
        log.info("bankgate: worker {n} stopped serving", n=self.spec.number)

    def _until(self, done: Callable[[], bool], timeout: float) -> defer.Deferred:
        """Fires ``True`` once ``done()`` holds (looked at every :attr:`poll`
        seconds), ``False`` after ``timeout`` seconds."""
        if done():
            return defer.succeed(True)
        result: defer.Deferred = defer.Deferred()
        deadline = self.reactor.seconds() + timeout

        def look():
            if done() or self.reactor.seconds() >= deadline:
                loop.stop()
                result.callback(done())

        loop = task.LoopingCall(look)
        loop.clock = self.reactor
        loop.start(self.poll, now=False)
        return result


def _widen_pipe(fd: int) -> None:
    """Room for a burst of log lines while the supervisor is busy (Linux only; the
    system's ``fs.pipe-max-size`` may allow less)."""
    import fcntl

    setsize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsize is None:
        return
    try:
        fcntl.fcntl(fd, setsize, PIPE_SIZE)
    except OSError:
        pass  # a smaller pipe works too, with less room


def _connections(factories) -> list:
    return [p for f in factories for p in list(getattr(f, "connections", ()))]


def worker_logging(channel: Channel, cfg) -> None:
    """The worker's log: the configured levels (``[log]``), sent to the supervisor,
    which writes the one log (``twistd`` takes this observer as its own)."""
    set_python_levels(cfg.log)
    install_main(channel_observer(channel, level_filter(cfg.log)))

