"""Where a bank's statement file comes from: a local drop folder, FTP or SFTP.

Every source has ``fetch(name) -> Deferred[bytes]`` and fails with
:class:`StatementMissing` while the file is not there yet, or with
:class:`StatementSourceError` when the server cannot be reached or refuses
the login.  :func:`fetch_with_retry` keeps asking, with back-off on the
injected clock, until the file appears or ``give_up`` seconds have passed,
and returns a :class:`Fetched` with the bytes and their SHA-256.

- :class:`LocalSource` reads ``{folder}/{name}``; the read runs through
  ``run_blocking`` (the service passes ``store.call``: the store's thread pool,
  never the reactor thread).
- :class:`FTPSource` uses Twisted's FTP client (passive mode, binary).
- :class:`SFTPSource` uses Twisted Conch: the server's host key must match
  the configured fingerprint; password or private-key login.

No module-level reactor: each remote source is given one.  Passwords are
never logged or shown (:meth:`where` leaves them out).
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

log = logging.getLogger("bankgate.statements")


class StatementMissing(Exception):
    """The statement file is not there (yet)."""


class StatementSourceError(Exception):
    """The source cannot be reached, refused the login, or failed midway."""


class StatementGaveUp(Exception):
    """The file did not appear within the configured wait."""


@dataclass(frozen=True)
class Fetched:
    name: str
    source: str  # where it was read from, without any password
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        return len(self.data)


def _safe_name(name: str) -> str:
    """A plain file name: a notice cannot point the gateway elsewhere."""
    base = posixpath.basename(name.replace("\\", "/")).strip()
    if not base or base in (".", "..") or "\0" in base:
        raise ValueError(f"not a file name: {name!r}")
    return base


class LocalSource:
    """``{folder}/{name}`` on this machine (the bank's exchange folder)."""

    def __init__(self, folder: str | Path,
                 run_blocking: Callable[..., defer.Deferred] | None = None):
        self.folder = Path(folder)
        self.run_blocking = run_blocking

    def where(self, name: str) -> str:
        return str(self.folder / _safe_name(name))

    def read_sync(self, name: str) -> bytes:
        path = self.folder / _safe_name(name)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise StatementMissing(f"{path}: not there yet") from None
        except OSError as e:
            raise StatementSourceError(f"{path}: {e.strerror}") from None

    def fetch(self, name: str) -> defer.Deferred:
        if self.run_blocking is None:
            return defer.maybeDeferred(self.read_sync, name)
        return self.run_blocking(self.read_sync, name)


class _Collect(protocol.Protocol):
    def __init__(self, limit: int):
        self.parts: list[bytes] = []
        self.size = 0
        self.limit = limit

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self.transport.loseConnection()
            return
        self.parts.append(data)


MAX_SIZE = 2 << 30  # a statement larger than 2 GiB is refused


class FTPSource:
    """A file in ``folder`` on an FTP server (passive mode, binary)."""

    def __init__(self, reactor, host: str, port: int = 21, user: str = "anonymous",
                 password: str | None = "", folder: str = "/", *, timeout: float = 120.0,
                 max_size: int = MAX_SIZE):
        self.reactor = reactor
        self.host, self.port, self.user = host, port, user
        self.password = password
        self.folder = folder or "/"
        self.timeout = timeout
        self.max_size = max_size

    def where(self, name: str) -> str:
        return (f"ftp://{self.user}@{self.host}:{self.port}"
                f"{posixpath.join(self.folder, _safe_name(name))}")

    def fetch(self, name: str) -> defer.Deferred:
        from twisted.protocols.ftp import CommandFailed, FTPClient
        from twisted.protocols.ftp import ConnectionLost as FTPConnectionLost
        from twisted.python.failure import Failure

        path = posixpath.join(self.folder, _safe_name(name))
        client = FTPClient(self.user, self.password if self.password is not None else "",
                           passive=1)
        client.connectFactory = self.reactor.connectTCP  # the injected reactor, not the global
        sink = _Collect(self.max_size)
        ep = TCP4ClientEndpoint(self.reactor, self.host, self.port, timeout=self.timeout)
        d = connectProtocol(ep, client)
        d.addCallback(lambda c: c.retrieveFile(path, sink))

        def done(_):
            if sink.size > self.max_size:
                raise StatementSourceError(f"{self.where(name)}: larger than {self.max_size}")
            return b"".join(sink.parts)

        def failed(f):
            if f.check(FTPConnectionLost) and len(f.value.args) > 1 and isinstance(
                    f.value.args[1], Failure):
                f = f.value.args[1]  # the command that failed and closed the connection
            if f.check(CommandFailed):
                lines = f.value.args[0] if f.value.args else []
                text = " ".join(str(x) for x in lines) if isinstance(lines, list) else str(lines)
                if text.startswith(("550", "450")):
                    raise StatementMissing(f"{self.where(name)}: {text}")
                raise StatementSourceError(f"{self.where(name)}: {text}")
            if f.check(defer.TimeoutError):
                raise StatementSourceError(f"{self.where(name)}: timed out")
            raise StatementSourceError(f"{self.where(name)}: {f.getErrorMessage()}")

        def close(result):
            if client.transport is not None and client.transport.connected:
                client.transport.loseConnection()
            return result

        d.addCallbacks(done, failed)
        d.addBoth(close)
        d.addTimeout(self.timeout, self.reactor,
                     onTimeoutCancel=lambda r, t: _timed_out(self.where(name), t))
        return d


def _timed_out(where: str, timeout: float):
    raise StatementSourceError(f"{where}: no answer within {timeout:g} s")


class HostKeyMismatch(StatementSourceError):
    pass


class SFTPSource:
    """A file in ``folder`` on an SFTP server (Twisted Conch).

    ``host_key`` is the server's key fingerprint as ``ssh-keygen -l`` prints
    it (``SHA256:...``) or as 16 hex pairs (MD5); any other key is refused.
    Login with ``password`` or ``private_key`` (a
    :class:`twisted.conch.ssh.keys.Key`, or the path of a key file).
    """

    def __init__(self, reactor, host: str, port: int = 22, user: str = "", *,
                 host_key: str, password: str | None = None, private_key=None,
                 folder: str = ".", timeout: float = 120.0, max_size: int = MAX_SIZE):
        self.reactor = reactor
        self.host, self.port, self.user = host, port, user
        self.host_key = host_key
        self.password = password
        self.private_key = private_key
        self.folder = folder or "."
        self.timeout = timeout
        self.max_size = max_size

    def where(self, name: str) -> str:
        return (f"sftp://{self.user}@{self.host}:{self.port}"
                f"{posixpath.join(self.folder, _safe_name(name))}")

    def _key(self):
        from twisted.conch.ssh import keys

        k = self.private_key
        if k is None or isinstance(k, keys.Key):
            return k
        return keys.Key.fromFile(str(k))

    def fetch(self, name: str) -> defer.Deferred:
        path = posixpath.join(self.folder, _safe_name(name))
        result: defer.Deferred = defer.Deferred()
        factory = _sftp_factory(self, path, result)
        ep = TCP4ClientEndpoint(self.reactor, self.host, self.port, timeout=self.timeout)
        connected = ep.connect(factory)

        def no_connection(f):
            if not result.called:
                result.errback(StatementSourceError(f"{self.where(name)}:"
                                                    f" {f.getErrorMessage()}"))

        connected.addErrback(no_connection)

        def wrap(f):
            if f.check(StatementMissing, StatementSourceError):
                return f
            raise StatementSourceError(f"{self.where(name)}: {f.getErrorMessage()}")

        result.addErrback(wrap)
        result.addTimeout(self.timeout, self.reactor,
                          onTimeoutCancel=lambda r, t: _timed_out(self.where(name), t))

        def close(r):
            if connected.called:
                connected.addCallback(lambda proto: proto.transport.loseConnection()
                                      if proto.transport else None)
                connected.addErrback(lambda _f: None)
            return r

        result.addBoth(close)
        return result


def _sftp_factory(src: SFTPSource, path: str, result: defer.Deferred):
    """The Conch client stack: transport (host key check) -> user auth ->
    connection -> a session channel running the ``sftp`` subsystem."""
    from twisted.conch.ssh import (
        channel,
        common,
        connection,
        filetransfer,
        keys,
        transport,
        userauth,
    )

    where = src.where(posixpath.basename(path))
    expected = src.host_key
    key = src._key()

    def fail(exc: Exception) -> None:
        if not result.called:
            result.errback(exc)

    state = {"authed": False}

    def norm(fp: str) -> str:
        fp = fp.strip()
        if fp.upper().startswith("SHA256:"):
            fp = fp[7:]
        return fp.rstrip("=") if ":" not in fp else fp.lower()

    class Transport(transport.SSHClientTransport):
        def verifyHostKey(self, pubKey, fingerprint):
            k = keys.Key.fromString(pubKey)
            sha = k.fingerprint(keys.FingerprintFormats.SHA256_BASE64)
            if norm(expected) in (norm(sha), norm(k.fingerprint())):
                return defer.succeed(True)
            fail(HostKeyMismatch(f"{where}: the server's host key SHA256:{sha.rstrip('=')} is"
                                 f" not the configured {expected}"))
            return defer.fail(HostKeyMismatch("host key mismatch"))

        def connectionSecure(self):
            self.requestService(Auth(src.user.encode(), Connection()))

        def connectionLost(self, reason):
            transport.SSHClientTransport.connectionLost(self, reason)
            why = "" if state["authed"] else " (login refused?)"
            fail(StatementSourceError(f"{where}: connection closed{why}:"
                                      f" {reason.getErrorMessage()}"))

    class Auth(userauth.SSHUserAuthClient):
        def getPassword(self, prompt=None):
            if src.password is None or getattr(self, "_password_offered", False):
                return None  # once: a refused password is not tried again and again
            self._password_offered = True
            return defer.succeed(src.password.encode())

        def getPublicKey(self):
            if key is None or getattr(self, "_key_offered", False):
                return None
            self._key_offered = True
            return key.public()

        def getPrivateKey(self):
            return defer.succeed(key)

    class Connection(connection.SSHConnection):
        def serviceStarted(self):
            state["authed"] = True
            self.openChannel(Session(conn=self))

    class Session(channel.SSHChannel):
        name = b"session"

        def openFailed(self, reason):
            fail(StatementSourceError(f"{where}: session refused: {reason}"))

        def channelOpen(self, data):
            d = self.conn.sendRequest(self, b"subsystem", common.NS(b"sftp"), wantReply=True)
            d.addCallbacks(self._sftp, lambda f: fail(
                StatementSourceError(f"{where}: no sftp subsystem")))

        def _sftp(self, _):
            client = filetransfer.FileTransferClient()
            client.makeConnection(self)
            self.dataReceived = client.dataReceived
            d = client.openFile(path.encode(), filetransfer.FXF_READ, {})
            d.addCallback(self._read, [], 0)
            d.addErrback(self._failed)

        def _read(self, f, parts, offset):
            d = f.readChunk(offset, 32768)

            def got(data):
                parts.append(data)
                if offset + len(data) > src.max_size:
                    raise StatementSourceError(f"{where}: larger than {src.max_size}")
                return self._read(f, parts, offset + len(data))

            def eof(fl):
                fl.trap(EOFError)
                f.close()
                if not result.called:
                    result.callback(b"".join(parts))

            d.addCallbacks(got, eof)
            return d

        def _failed(self, f):
            if f.check(filetransfer.SFTPError) and f.value.code == filetransfer.FX_NO_SUCH_FILE:
                fail(StatementMissing(f"{where}: not there yet"))
            elif f.check(StatementSourceError):
                fail(f.value)
            else:
                fail(StatementSourceError(f"{where}: {f.getErrorMessage()}"))

    class Factory(protocol.ClientFactory):
        protocol = Transport

    return Factory()


def source_for(bank, reactor, *, data_dir: str = "var",
               run_blocking: Callable[..., defer.Deferred] | None = None):
    """The source a :class:`bankgate.app.config.BankConfig` names."""
    src = bank.statement_source
    if not src or src.startswith("file://"):
        return LocalSource(bank.statement_dir(data_dir), run_blocking)
    u = urlsplit(src)
    folder = unquote(u.path) or ("/" if u.scheme == "ftp" else ".")
    user = unquote(u.username or "")
    if u.scheme == "ftp":
        return FTPSource(reactor, u.hostname, u.port or 21, user or "anonymous",
                         bank.statement_password if bank.statement_password is not None else "",
                         folder)
    return SFTPSource(reactor, u.hostname, u.port or 22, user, host_key=bank.statement_host_key,
                      password=bank.statement_password, private_key=bank.statement_key_file,
                      folder=folder)


class Fetch:
    """One statement being waited for: ``result`` fires with a :class:`Fetched`
    (or :class:`StatementGaveUp`); :meth:`cancel` stops the waiting."""

    def __init__(self, source, name: str, clock, *, first: float = 300.0, factor: float = 2.0,
                 most: float = 3600.0, give_up: float = 43200.0,
                 on_retry: Callable[[str, float, int], None] | None = None):
        self.source = source
        self.name = _safe_name(name)
        self.clock = clock
        self.delay = first
        self.factor = factor
        self.most = most
        self.give_up = give_up
        self.on_retry = on_retry
        self.started = clock.seconds()
        self.attempts = 0
        self.last_error = ""
        self._call = None
        self._pending: defer.Deferred | None = None
        self.result: defer.Deferred = defer.Deferred(lambda _d: self.cancel())
        self._attempt()

    def _attempt(self) -> None:
        self._call = None
        self.attempts += 1
        self._pending = defer.maybeDeferred(self.source.fetch, self.name)
        self._pending.addCallbacks(self._got, self._failed)

    def _got(self, data: bytes) -> None:
        self._pending = None
        if not self.result.called:
            self.result.callback(Fetched(self.name, self.source.where(self.name), data))

    def _failed(self, f) -> None:
        self._pending = None
        if self.result.called:
            return
        if f.check(defer.CancelledError):
            return
        self.last_error = f.getErrorMessage()
        if not f.check(StatementMissing, StatementSourceError):
            log.error("statement %s: unexpected failure: %s", self.name, f.getTraceback())
        waited = self.clock.seconds() - self.started
        if waited + self.delay > self.give_up:
            self.result.errback(StatementGaveUp(
                f"{self.source.where(self.name)}: not read after {self.attempts} attempt(s) over"
                f" {waited:.0f} s: {self.last_error}"))
            return
        if self.on_retry is not None:
            self.on_retry(self.last_error, self.delay, self.attempts)
        self._call = self.clock.callLater(self.delay, self._attempt)
        self.delay = min(self.delay * self.factor, self.most)

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._pending is not None:
            self._pending.cancel()


def fetch_with_retry(source, name: str, clock, **kw) -> defer.Deferred:
    """Fetch ``name``, retrying with back-off; a Deferred of :class:`Fetched`."""
    return Fetch(source, name, clock, **kw).result
