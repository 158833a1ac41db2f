"""Shared pieces of the console's health, metrics and live tests: a bank engine
driven over a StringTransport, and a store whose pool calls run at once."""

from __future__ import annotations

import queue
from dataclasses import dataclass
from datetime import datetime

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.test.requesthelper import DummyRequest

from bankgate.canon.messages import Outcome
from bankgate.codec.base import BankProfile, Close, Dispatch, Framing, Reply
from bankgate.wire.listener import BankFactory


@dataclass(frozen=True)
class Req:
    serial: str


@dataclass(frozen=True)
class Res:
    outcome: Outcome
    serial: str


class Codec:
    """``PAY <serial> [<outcome>]`` dispatch, ``ECHO`` reply, ``BYE`` close,
    ``BOOM`` raise."""

    name = "fake"
    framing = Framing("ascii4", 9999, idle_timeout=600.0)

    def decode(self, frame, session):
        cmd, *args = frame.decode().split()
        if cmd == "ECHO":
            return Reply(b"ECHO-OK", txname="echo", outcome=Outcome.OK)
        if cmd == "BYE":
            return Close("bye")
        if cmd == "BOOM":
            raise RuntimeError("codec bug")
        if cmd == "PAY":
            outcome = Outcome(args[1]) if len(args) > 1 else Outcome.OK
            return Dispatch(Req(args[0] + " " + outcome.value),
                            lambda r: f"{r.outcome.value} {r.serial}".encode(), txname="pay")
        return Close("garbage")


class Handler:
    """The ledger: answers when the test says so (``fire``) or at once."""

    def __init__(self, immediate: bool = True):
        self.immediate = immediate
        self.pending: list[tuple[Req, defer.Deferred]] = []

    def __call__(self, req):
        serial, outcome = req.serial.split()
        res = Res(Outcome(outcome), serial)
        if self.immediate:
            return defer.succeed(res)
        d: defer.Deferred = defer.Deferred()
        self.pending.append((res, d))
        return d

    def fire(self) -> None:
        res, d = self.pending.pop(0)
        d.callback(res)


def bank_factory(clock, name: str = "bank-a", handler=None, now=None) -> BankFactory:
    return BankFactory(Codec(), BankProfile(name, "fake", "001"), handler or Handler(), clock,
                       now=now or (lambda: datetime.fromtimestamp(clock.seconds())),
                       log=lambda event: None)


def connect(factory: BankFactory):
    proto = factory.buildProtocol(IPv4Address("TCP", "10.0.0.9", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.9", 40000))
    proto.makeConnection(transport)
    return proto, transport


def frame(text: str) -> bytes:
    return b"%04d" % len(text) + text.encode()


def synchronous(store):
    """``store`` with ``call`` running its function at once (no reactor thread)."""
    store.call = lambda fn, *a, **kw: defer.maybeDeferred(fn, *a, **kw)
    return store


def get(resource, path: bytes = b""):
    """A GET through ``resource``: the DummyRequest (rendered, maybe not finished)."""
    from twisted.web.server import NOT_DONE_YET

    request = DummyRequest([path] if path else [])
    request.method = b"GET"
    body = resource.render(request)
    if body is not NOT_DONE_YET:
        request.write(body)
        request.finish()
    return request


def body(request) -> bytes:
    return b"".join(request.written)


class ThreadedMemoryReactor(MemoryReactorClock):
    """A memory reactor that takes the store pool's callFromThread; the test
    pumps those calls as they arrive (an event, not a sleep)."""

    def __init__(self):
        super().__init__()
        self.thread_calls: queue.Queue = queue.Queue()

    def callFromThread(self, f, *args, **kw):  # noqa: N802
        self.thread_calls.put((f, args, kw))

    def pump_until(self, d, timeout=60):
        results = []
        d.addBoth(results.append)
        while not results:
            f, args, kw = self.thread_calls.get(timeout=timeout)
            f(*args, **kw)
        return results[0]
