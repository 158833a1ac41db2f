"""Statement sources: a local folder with back-off on a Clock, and real FTP and
SFTP servers from Twisted itself on loopback.

The FTP and SFTP tests are the only ones outside the e2e suite with real
sockets: an in-process ``twisted.protocols.ftp.FTPFactory`` serving a
temporary folder through the filesystem realm (FTPRealm / FTPShell), and a
Conch SSH server with an in-memory host key whose avatar serves SFTP from a
temporary folder.  They run on the reactor under ``twisted.trial`` (the
client code is given that reactor; nothing imports it at module level).
"""

from __future__ import annotations

import hashlib
import tempfile
from datetime import date
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.avatar import ConchUser
from twisted.conch.checkers import InMemorySSHKeyDB, SSHPublicKeyChecker
from twisted.conch.interfaces import ISFTPFile, ISFTPServer
from twisted.conch.ssh import filetransfer, keys, session
from twisted.conch.ssh.factory import SSHFactory
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, task
from twisted.protocols import ftp
from twisted.trial import unittest
from zope.interface import implementer

from bankgate.app.config import BankConfig
from bankgate.wire.statement_sources import (
    Fetch,
    FTPSource,
    HostKeyMismatch,
    LocalSource,
    SFTPSource,
    StatementGaveUp,
    StatementMissing,
    StatementSourceError,
    fetch_with_retry,
    source_for,
)

STATEMENT = ("H" "20261127" "105210" "00000001" "000000000015000" "\r\n"
             "D" "S001                " "20261127" "093000" "100000123           "
             "000000015000" "01" "\r\n").encode("gbk")
NAME = "105210_20261127.txt"


# -- local folder and back-off (no sockets, a Clock) ----------------------------------------


def test_local_folder_waits_with_back_off_until_the_file_appears(tmp_path):
    clock = task.Clock()
    retries = []
    fetch = Fetch(LocalSource(tmp_path), NAME, clock, first=60, factor=2, most=200,
                  give_up=3600, on_retry=lambda err, delay, n: retries.append(delay))
    got = []
    fetch.result.addCallback(got.append)
    assert retries == [60] and not got  # the first try found nothing
    clock.advance(60)
    clock.advance(120)
    clock.advance(200)
    assert retries == [60, 120, 200, 200] and fetch.attempts == 4
    (tmp_path / NAME).write_bytes(STATEMENT)
    clock.advance(199)
    assert not got
    clock.advance(1)
    assert got and got[0].data == STATEMENT and fetch.attempts == 5
    assert got[0].sha256 == hashlib.sha256(STATEMENT).hexdigest()
    assert got[0].source == str(tmp_path / NAME)
    assert clock.getDelayedCalls() == []


def test_local_folder_gives_up_after_the_configured_wait(tmp_path):
    clock = task.Clock()
    d = fetch_with_retry(LocalSource(tmp_path), NAME, clock, first=100, most=100, give_up=250)
    failures = []
    d.addErrback(failures.append)
    clock.advance(100)
    clock.advance(100)
    assert failures and failures[0].check(StatementGaveUp)
    assert "3 attempt(s)" in failures[0].getErrorMessage()
    assert clock.getDelayedCalls() == []


def test_cancelling_stops_the_waiting(tmp_path):
    clock = task.Clock()
    d = fetch_with_retry(LocalSource(tmp_path), NAME, clock, first=100)
    d.addErrback(lambda f: f.trap(defer.CancelledError))
    d.cancel()
    assert clock.getDelayedCalls() == []


def test_a_notice_cannot_point_outside_the_folder(tmp_path):
    with pytest.raises(ValueError):
        LocalSource(tmp_path).where("..")
    assert LocalSource(tmp_path).where("../../etc/passwd") == str(tmp_path / "passwd")


def test_source_for_each_kind_of_configuration(tmp_path):
    b = BankConfig(name="b", plugin="ref-fixed", bank_code="1", exchange_dir=str(tmp_path))
    assert isinstance(source_for(b, None), LocalSource)
    b.statement_source = "ftp://bank@ftp.example:2121/out"
    b.statement_password = "s3cret"
    s = source_for(b, None)
    assert isinstance(s, FTPSource) and (s.host, s.port, s.user, s.folder) == (
        "ftp.example", 2121, "bank", "/out")
    assert "s3cret" not in s.where(NAME)
    b.statement_source = "sftp://bank@sftp.example/home/bank/out"
    b.statement_host_key = "SHA256:" + "A" * 43
    s = source_for(b, None)
    assert isinstance(s, SFTPSource) and (s.port, s.folder) == (22, "/home/bank/out")


# -- real servers on loopback ------------------------------------------------------------------


class LoopbackFTP(ftp.FTP):
    """The FTP server protocol, its passive data port on loopback too."""

    def listenFactory(self, port, factory, interface="", **kw):  # noqa: N802 - Twisted's
        from twisted.internet import reactor

        return reactor.listenTCP(port, factory, interface="127.0.0.1", **kw)


def ftp_server(reactor, root: Path):
    home = root / "homes"
    (home / "bank").mkdir(parents=True)
    realm = ftp.FTPRealm(anonymousRoot=str(root / "anon"), userHome=str(home))
    (root / "anon").mkdir()
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    checker.addUser("bank", "s3cret")  # the FTP server hands over text
    factory = ftp.FTPFactory(Portal(realm, [checker]))
    factory.protocol = LoopbackFTP
    factory.allowAnonymous = False
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    return port, home / "bank"


@implementer(ISFTPFile)
class MemoryFile:
    def __init__(self, data: bytes):
        self.data = data

    def readChunk(self, offset, length):  # noqa: N802
        if offset >= len(self.data):
            raise EOFError()
        return self.data[offset:offset + length]

    def writeChunk(self, offset, data):  # noqa: N802
        raise NotImplementedError

    def getAttrs(self):  # noqa: N802
        return {"size": len(self.data)}

    def setAttrs(self, attrs):  # noqa: N802
        raise NotImplementedError

    def close(self):
        pass


@implementer(ISFTPServer)
class FolderAvatar(ConchUser):
    """An SSH user whose SFTP subsystem serves (read-only) one folder."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root
        self.channelLookup[b"session"] = session.SSHSession
        self.subsystemLookup[b"sftp"] = filetransfer.FileTransferServer

    def _path(self, name: bytes) -> Path:
        return self.root / name.decode().lstrip("/")

    def gotVersion(self, otherVersion, extData):  # noqa: N802
        return {}

    def openFile(self, filename, flags, attrs):  # noqa: N802
        p = self._path(filename)
        if not p.is_file():
            raise filetransfer.SFTPError(filetransfer.FX_NO_SUCH_FILE, "no such file")
        return MemoryFile(p.read_bytes())

    def realPath(self, path):  # noqa: N802
        return path

    def getAttrs(self, path, followLinks):  # noqa: N802
        p = self._path(path)
        if not p.exists():
            raise filetransfer.SFTPError(filetransfer.FX_NO_SUCH_FILE, "no such file")
        return {"size": p.stat().st_size}

    def __getattr__(self, name):
        if name in ("removeFile", "renameFile", "makeDirectory", "removeDirectory",
                    "openDirectory", "setAttrs", "readLink", "makeLink", "extendedRequest"):
            def refuse(*a, **kw):
                raise NotImplementedError(name)
            return refuse
        raise AttributeError(name)


@implementer(IRealm)
class FolderRealm:
    def __init__(self, root: Path):
        self.root = root

    def requestAvatar(self, avatarId, mind, *interfaces):  # noqa: N802
        return interfaces[0], FolderAvatar(self.root), lambda: None


def sftp_server(reactor, root: Path, user_key: keys.Key):
    host_key = keys.Key(ed25519.Ed25519PrivateKey.generate())
    factory = SSHFactory()
    passwords = InMemoryUsernamePasswordDatabaseDontUse()
    passwords.addUser(b"bank", b"s3cret")
    factory.portal = Portal(FolderRealm(root), [
        passwords,
        SSHPublicKeyChecker(InMemorySSHKeyDB({b"bank": [user_key.public()]})),
    ])
    factory.publicKeys = {b"ssh-ed25519": host_key.public()}
    factory.privateKeys = {b"ssh-ed25519": host_key}
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    fingerprint = "SHA256:" + host_key.fingerprint(keys.FingerprintFormats.SHA256_BASE64)
    return port, fingerprint.rstrip("=")


class RemoteSources(unittest.TestCase):
    timeout = 30

    def setUp(self):
        from twisted.internet import reactor

        self.reactor = reactor
        self.root = Path(tempfile.mkdtemp(prefix="bankgate-recon-"))

    # FTP

    def ftp(self, password="s3cret", folder="/"):
        port, home = ftp_server(self.reactor, self.root)
        self.addCleanup(port.stopListening)
        return FTPSource(self.reactor, "127.0.0.1", port.getHost().port, "bank", password,
                         folder), home

    @defer.inlineCallbacks
    def test_ftp_reads_the_file(self):
        src, home = self.ftp()
        (home / "out").mkdir()
        (home / "out" / NAME).write_bytes(STATEMENT)
        src.folder = "/out"
        data = yield src.fetch(NAME)
        self.assertEqual(data, STATEMENT)
        self.assertNotIn("s3cret", src.where(NAME))

    @defer.inlineCallbacks
    def test_ftp_missing_file_is_missing(self):
        src, _ = self.ftp()
        with self.assertRaises(StatementMissing):
            yield src.fetch(NAME)

    @defer.inlineCallbacks
    def test_ftp_wrong_password_is_a_source_error(self):
        src, home = self.ftp(password="wrong")
        (home / NAME).write_bytes(STATEMENT)
        with self.assertRaises(StatementSourceError) as e:
            yield src.fetch(NAME)
        self.assertNotIsInstance(e.exception, StatementMissing)

    @defer.inlineCallbacks
    def test_ftp_through_fetch_with_retry_keeps_the_checksum(self):
        """The path the service takes: wait for the file on FTP, read it, hash it."""
        src, home = self.ftp()
        (home / NAME).write_bytes(STATEMENT)
        fetched = yield fetch_with_retry(src, NAME, self.reactor, first=5)
        self.assertEqual(fetched.data, STATEMENT)
        self.assertEqual(fetched.sha256, hashlib.sha256(STATEMENT).hexdigest())
        self.assertTrue(fetched.source.startswith("ftp://bank@127.0.0.1:"))

    # SFTP

    def sftp(self, **kw):
        user_key = keys.Key(ed25519.Ed25519PrivateKey.generate())
        port, fp = sftp_server(self.reactor, self.root, user_key)
        self.addCleanup(port.stopListening)
        args = dict(host_key=fp, password="s3cret", folder="/")
        args.update(kw)
        if args.get("private_key") == "user":
            args["private_key"] = user_key
        return SFTPSource(self.reactor, "127.0.0.1", port.getHost().port, "bank", **args)

    @defer.inlineCallbacks
    def test_sftp_reads_the_file_with_a_password(self):
        (self.root / "out").mkdir()
        (self.root / "out" / NAME).write_bytes(STATEMENT * 3000)  # several chunks
        src = self.sftp(folder="/out")
        data = yield src.fetch(NAME)
        self.assertEqual(data, STATEMENT * 3000)

    @defer.inlineCallbacks
    def test_sftp_reads_the_file_with_a_key(self):
        (self.root / NAME).write_bytes(STATEMENT)
        src = self.sftp(password=None, private_key="user")
        data = yield src.fetch(NAME)
        self.assertEqual(data, STATEMENT)

    @defer.inlineCallbacks
    def test_sftp_missing_file_is_missing(self):
        src = self.sftp()
        with self.assertRaises(StatementMissing):
            yield src.fetch(NAME)

    @defer.inlineCallbacks
    def test_sftp_refuses_a_server_with_another_host_key(self):
        (self.root / NAME).write_bytes(STATEMENT)
        src = self.sftp(host_key="SHA256:" + "A" * 43)
        with self.assertRaises(HostKeyMismatch):
            yield src.fetch(NAME)

    @defer.inlineCallbacks
    def test_sftp_wrong_password_is_a_source_error(self):
        (self.root / NAME).write_bytes(STATEMENT)
        src = self.sftp(password="wrong")
        with self.assertRaises(StatementSourceError) as e:
            yield src.fetch(NAME)
        self.assertNotIsInstance(e.exception, StatementMissing)


def test_statement_constant_is_a_valid_ref_fixed_file():
    from bankgate.codec.registry import load_codec

    head, recs = load_codec("ref-fixed").read_statement(STATEMENT)
    assert head["settle_date"] == date(2026, 11, 27) and recs[0]["amount"] == 15000
