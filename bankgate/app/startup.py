"""Start-up checks: what stops a gateway from starting, found before it starts.

``twistd`` builds the service (``tap.makeService``), then -- without
``--nodaemon`` -- forks, and only then starts it and runs the reactor.  What
can be checked synchronously is therefore checked in ``makeService``, before
the fork, by :func:`preflight`; each problem is one line on standard error and
exit status 1, and no pid file is written:

- the data folder's lock (:class:`DataLock`): one gateway per data folder,
  held for the life of the process;
- every address the gateway will listen on is free (each bank's, and a
  simulated debit host's), before any database work;
- the database answers with the configured user, and N8 is there (or may be
  created) and fits its mapping: ``bankgate n8 check``'s checks (:func:`check_n8`).

What can only fail later -- the migrations, demo seeding, a port taken in the
meantime -- is reported by ``GatewayService._start_failed`` as one line in the
log (:func:`describe_failure`); :class:`StartReport` then removes the pid file
and answers twistd's waiting first process, so ``twistd`` in daemon mode exits
0 only for a gateway that serves.

The ``bankgate`` command shares :func:`database_problem` and
:func:`is_database_error`: a database that cannot be reached is one line there too.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path

from twisted.internet import endpoints
from twisted.internet.error import CannotListenError

LOCK_NAME = "bankgate.lock"


class StartupError(Exception):
    """Why the gateway cannot start, in one line for the operator."""


# -- one gateway per data folder --------------------------------------------------------


class DataLock:
    """An exclusive ``flock`` on ``{data_dir}/bankgate.lock``.

    The kernel drops it when the process ends, however it ends; the file keeps
    the pid of the last holder, for the message a second copy prints.  The
    open file is inherited by twistd's daemon across its fork, so the lock
    taken before the fork is the daemon's (:meth:`note_pid` rewrites the pid).
    """

    def __init__(self, data_dir: str | Path):
        self.path = Path(data_dir) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> DataLock:
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StartupError(f"cannot use the data folder {self.path.parent}:"
                               f" {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_pid(fd)
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise StartupError(f"cannot lock {self.path}: {e.strerror}") from None
            pid = f", pid {holder}" if holder else ""
            raise StartupError(
                f"a gateway is already running on this data ({self.path} is locked{pid});"
                " stop it first, or give this one its own --data-dir") from None
        self._fd = fd
        self.note_pid()
        return self

    def note_pid(self) -> None:
        """Write this process's pid into the lock file (again after a fork)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


# -- listening addresses ----------------------------------------------------------------


class _Address:
    """A stand-in reactor: the address a server endpoint string would listen on."""

    def __init__(self):
        self.kind: str | None = None
        self.port: int | None = None
        self.interface = ""
        self.path: str | None = None

    def listenTCP(self, port, factory, backlog=50, interface=""):  # noqa: N802
        self.kind, self.port, self.interface = "tcp", port, interface
        return self

    def listenSSL(self, port, factory, context, backlog=50, interface=""):  # noqa: N802
        self.kind, self.port, self.interface = "tcp", port, interface
        return self

    def listenUNIX(self, address, factory, backlog=50, mode=0o666, wantPID=0):  # noqa: N802
        self.kind, self.path = "unix", address
        return self


def address_of(endpoint: str) -> _Address:
    """Where the server endpoint string ``endpoint`` listens (parsed by Twisted)."""
    addr = _Address()
    d = endpoints.serverFromString(addr, endpoint).listen(None)
    failures: list = []
    d.addErrback(failures.append)
    if failures:
        failures[0].raiseException()
    return addr


def _bind(family: int, address: tuple) -> None:
    """Bind a socket the way Twisted's listening port does (SO_REUSEADDR), then close."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(address)


def unix_in_use(path: str) -> bool:
    """Something listens on the Unix socket ``path``."""
    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


_WILDCARDS = ("", "0.0.0.0", "::")


def check_ports(listens: Iterable[tuple[str, str]],
                bind: Callable[[int, tuple], None] | None = None) -> None:
    """Each ``(who, endpoint)`` can listen: the port is free, the interface is
    this machine's, no two listeners share a port.  Raises :class:`StartupError`
    naming who and the port.  ``bind(family, address)`` is the probe (default
    :func:`_bind`; tests give their own)."""
    bind = bind or _bind
    seen: dict[tuple, tuple[str, str]] = {}
    for who, ep in listens:
        try:
            a = address_of(ep)
        except Exception as e:  # noqa: BLE001 - e.g. an ssl: key file that is not there
            raise StartupError(f"{who}: cannot listen on {ep}: {one_line(e)}") from None
        if a.kind == "unix":
            if unix_in_use(a.path):
                raise StartupError(f"{who}: cannot listen on {ep}: the socket {a.path}"
                                   " is in use")
            continue
        if a.kind != "tcp" or not a.port:
            continue  # port 0 (any free port) or an endpoint type without a port
        for (port, iface), (other, other_ep) in seen.items():
            if port == a.port and (iface == a.interface or iface in _WILDCARDS
                                   or a.interface in _WILDCARDS):
                raise StartupError(f"{who}: cannot listen on {ep}: port {a.port} is also"
                                   f" {other}'s ({other_ep})")
        seen[(a.port, a.interface)] = (who, ep)
        family = socket.AF_INET6 if ":" in a.interface else socket.AF_INET
        try:
            bind(family, (a.interface, a.port))
        except OSError as e:
            raise StartupError(f"{who}: cannot listen on {ep}:"
                               f" {_bind_problem(e, a.port, a.interface)}") from None


def _bind_problem(e: OSError, port: int, interface: str) -> str:
    if e.errno == errno.EADDRINUSE:
        return f"port {port} is already in use (see: ss -ltnp 'sport = :{port}')"
    if e.errno == errno.EACCES:
        return f"port {port}: permission denied (ports below 1024 need privileges)"
    if e.errno == errno.EADDRNOTAVAIL:
        return f"{interface} is not an address of this machine"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the interface {interface!r}"
    return f"port {port}: {e.strerror or e}"


# -- the database ---------------------------------------------------------------------


def safe_url(url: str) -> str:
    """The URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL make_url refuses has no password to hide
        return url.split("@")[-1]


def one_line(e: BaseException | str) -> str:
    text = str(e)
    return "; ".join(" ".join(line.split()) for line in text.splitlines() if line.strip())


def is_database_error(e: BaseException) -> bool:
    """A database that cannot be reached or refuses the user (not a bug in SQL)."""
    import sqlalchemy as sa

    from bankgate.store.db import StoreUnavailable

    return isinstance(e, (sa.exc.OperationalError, sa.exc.InterfaceError, StoreUnavailable))


def database_problem(url: str | None, e: BaseException) -> str:
    """One line: which database (no password), and what its driver said."""
    orig = getattr(e, "orig", None)  # the driver's own error inside SQLAlchemy's
    where = f"database {safe_url(url)}" if url else "database"
    return f"{where}: {one_line(orig if orig is not None else e)}"


def check_database(cfg, store) -> None:
    """Connect once with the configured URL and user, and see that N8 is there
    (or that the gateway may create it).  Raises :class:`StartupError`."""
    import sqlalchemy as sa

    try:
        with store.engine.connect():
            pass
        exists = store.n8_exists()
        if not cfg.n8_create and not exists:
            raise StartupError(n8_missing(cfg, store))
        if exists:  # else the gateway creates the reference schema: nothing to prove
            check_n8(cfg, store)
    except sa.exc.SQLAlchemyError as e:  # unreachable, no such database or user, ...
        raise StartupError(database_problem(cfg.db_url, e)) from None
    finally:
        # no connection crosses twistd's fork: the daemon opens its own
        store.engine.dispose()
        n8_engine = getattr(store, "n8_engine", store.engine)
        if n8_engine is not store.engine:
            n8_engine.dispose()


def n8_missing(cfg, store) -> str:
    return (f"{cfg.source}: n8: the N8 table {store.n8['customer'].name!r} does not exist in"
            f" {safe_url(cfg.db_url)}; map [n8.tables] onto your N8 schema or set"
            " n8.create = true")


def n8_uses(cfg) -> set[str]:
    """The optional parts of N8 this configuration uses (``bankgate.store.n8check``)."""
    uses = set()
    if any((b.options or {}).get("invoice") is True for b in cfg.banks):
        uses.add("invoice")
    if any((b.options or {}).get("withholding") for b in cfg.banks):
        uses.add("withholding")
    if getattr(getattr(cfg, "supply", None), "source", "n8") == "n8":
        uses.add("valve")
    if getattr(getattr(cfg, "n8_post", None), "adapter", "direct") == "direct":
        uses.add("direct")  # N8's procedure or job writes payments and bills otherwise
    return uses


def n8_checks(cfg, store) -> list:
    """``bankgate n8 check``'s report: the mapping proven against N8's database,
    with the posting adapter's own checks (:func:`bankgate.store.n8check.run_checks`)."""
    from bankgate.store.n8check import run_checks

    adapter = getattr(getattr(store, "writer", None), "checks", None)
    return run_checks(getattr(store, "n8_engine", store.engine), store.mapping,
                      [adapter] if adapter is not None else [], uses=n8_uses(cfg))


N8_SHOWN = 3  # failing lines in the start-up error


def check_n8(cfg, store) -> None:
    """The same checks as ``bankgate n8 check`` (a few hundredths of a second on
    SQLite): a failure refuses the start, naming the first failing tables and
    columns; warnings go to the log."""
    import logging

    checks = n8_checks(cfg, store)
    failed = [c for c in checks if not c.ok]
    for c in checks:
        if c.warn:
            logging.getLogger("bankgate.startup").warning("n8 check: %s", c.line())
    if failed:
        shown = "; ".join(c.line() for c in failed[:N8_SHOWN])
        more = f" (and {len(failed) - N8_SHOWN} more)" if len(failed) > N8_SHOWN else ""
        raise StartupError(f"{cfg.source}: n8: the mapping does not fit N8:"
                           f" {shown}{more}; run `bankgate n8 check` for the full report")


def preflight(cfg, store, listens: Iterable[tuple[str, str]],
              bind: Callable[[int, tuple], None] | None = None) -> DataLock:
    """Before the fork: the data folder's lock, the ports, the database.

    Returns the lock, held (the service releases it when it stops); raises
    :class:`StartupError` -- with nothing held -- on the first problem."""
    lock = DataLock(cfg.data_dir).acquire()
    try:
        check_ports(listens, bind=bind)
        check_database(cfg, store)
    except BaseException:
        lock.release()
        raise
    return lock


# -- after the fork -------------------------------------------------------------------


def describe_failure(e: BaseException, db_url: str) -> str | None:
    """One line for a start-up failure the operator can act on; ``None`` for a bug."""
    if isinstance(e, StartupError):
        return str(e)
    if isinstance(e, CannotListenError):
        return f"cannot listen: {listen_problem(e)}"
    if is_database_error(e):
        return database_problem(db_url, e)
    try:
        from alembic.util.exc import CommandError
    except ImportError:  # pragma: no cover
        return None
    if isinstance(e, CommandError):
        return f"database {safe_url(db_url)}: the gateway's schema: {one_line(e)}"
    return None


def listen_problem(e: CannotListenError) -> str:
    """What Twisted's ``CannotListenError`` means, naming the port."""
    if isinstance(e.socketError, OSError):
        return _bind_problem(e.socketError, e.port, e.interface)
    return f"port {e.port}: {e.socketError}"


class StartReport:
    """Tells whoever started the process how the start ended.

    ``twistd`` without ``--nodaemon`` forks, and its first process waits on a
    pipe for the word that the daemon started (its exit status follows it).
    twistd itself says "started" as soon as ``startService`` returns -- before
    the database is even open.  :meth:`take` (from ``startService``) takes
    that pipe from twistd's options (``statusPipe``), and the gateway answers
    itself: :meth:`ready` once it serves, :meth:`failed` with the reason
    otherwise, after removing the pid file.  Without twistd's options (tests,
    ``--nodaemon``) there is no pipe, and only the pid file is looked after.
    """

    def __init__(self, twistd_options=None):
        self.options = twistd_options
        self.pipe: int | None = None

    @property
    def pidfile(self) -> str | None:
        try:
            return (self.options or {}).get("pidfile") or None
        except AttributeError:
            return None

    def take(self) -> None:
        if self.options is not None and self.pipe is None:
            try:
                self.pipe = self.options.pop("statusPipe", None)
            except (AttributeError, TypeError):
                self.pipe = None

    def ready(self) -> None:
        self._say(b"0")

    def failed(self, why: str) -> None:
        pidfile = self.pidfile
        if pidfile:
            try:
                os.unlink(pidfile)
            except OSError:
                pass  # gone already, or not ours to remove: the log has the reason
        # twistd's first process reads at most 100 bytes: "1 " and the reason
        self._say(b"1 " + why.encode("ascii", "backslashreplace")[:98])

    def _say(self, data: bytes) -> None:
        if self.pipe is None:
            return
        pipe, self.pipe = self.pipe, None
        try:
            os.write(pipe, data)
            os.close(pipe)
        except OSError:
            pass  # the first process is gone: nobody to tell
