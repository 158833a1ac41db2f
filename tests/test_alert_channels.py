"""The alert channels (bankgate.app.alert_channels): the webhook over a fake agent and
over a memory reactor (what connectTCP got), e-mail through a scripted SMTP server over
a StringTransport and through Twisted's own ESMTP server over iosim.  No sockets, no
sleeps: the retries wait on a task.Clock."""

from __future__ import annotations

import base64
import email
import json
from dataclasses import dataclass, field
from datetime import datetime
from email import policy

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.mail import smtp
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.web.client import ResponseDone
from zope.interface import implementer

from bankgate.app.alert_channels import (
    EmailChannel,
    WebhookChannel,
    channels_for,
    describe,
    mail_text,
    send_mail,
)
from bankgate.app.config import parse_config
from bankgate.domain.alerts import CLEARED, CRITICAL, RAISED, RECON_FAILED, Alert, Event

RAISED_AT = datetime(2026, 11, 27, 2, 15)
ALERT = Alert(RECON_FAILED, "icbc 2026-11-26", CRITICAL,
              "reconciliation of icbc for 2026-11-26 failed (run 3): no statement",
              datetime(2026, 11, 27, 2, 14))
RAISE = Event(RAISED, ALERT, RAISED_AT, RAISED_AT)
CLEAR = Event(CLEARED, ALERT, datetime(2026, 11, 27, 9, 0), RAISED_AT)
TOKEN = "T000/B000/XXXXSECRETXXXX"
URL = f"https://hooks.example.com/services/{TOKEN}"
URL_PORT = f"https://hooks.example.com:8443/services/{TOKEN}"
PASSWORD = "correct horse battery"


@pytest.fixture
def logged():
    """The text of every event logged under ``bankgate.alerts`` during the test."""
    lines: list[str] = []

    def observe(event):
        if event.get("log_namespace") == "bankgate.alerts":
            from twisted.logger import formatEvent

            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


# -- the webhook -------------------------------------------------------------------------


class Collect:
    def __init__(self):
        self.data = b""

    def write(self, data):
        self.data += data


@dataclass
class FakeResponse:
    code: int
    phrase: bytes = b"OK"
    length: int = 2

    def deliverBody(self, protocol):  # noqa: N802
        protocol.dataReceived(b"ok")
        protocol.connectionLost(Failure(ResponseDone()))


@dataclass
class FakeAgent:
    """Answers each request with the next status of ``codes`` (a Deferred left
    unfired for ``None``)."""

    codes: list
    requests: list = field(default_factory=list)

    def request(self, method, uri, headers=None, bodyProducer=None):  # noqa: N803
        body = Collect()
        bodyProducer.startProducing(body)
        self.requests.append((method, uri, headers, body.data))
        code = self.codes.pop(0)
        return defer.Deferred() if code is None else defer.succeed(FakeResponse(code))


def test_webhook_posts_the_event_as_json():
    agent = FakeAgent([200, 204])
    hook = WebhookChannel(Clock(), URL, agent=agent)
    assert hook.send(RAISE).result is True
    assert hook.send(CLEAR).result is True
    (method, uri, headers, body), (_, _, _, cleared) = agent.requests
    assert (method, uri) == (b"POST", URL.encode())
    assert headers.getRawHeaders(b"content-type") == [b"application/json; charset=utf-8"]
    assert json.loads(body) == {
        "event": "raised", "kind": "recon-failed", "subject": "icbc 2026-11-26",
        "severity": "critical", "message": ALERT.message, "since": "2026-11-27T02:14:00",
        "raised_at": "2026-11-27T02:15:00", "at": "2026-11-27T02:15:00"}
    assert json.loads(cleared)["event"] == "resolved"
    assert json.loads(cleared)["at"] == "2026-11-27T09:00:00"


def test_webhook_retries_with_backoff_then_gives_up_without_raising(logged):
    clock = Clock()
    agent = FakeAgent([500, 503, 502, 500])
    hook = WebhookChannel(clock, URL, agent=agent, retries=3, backoff=5)
    d = hook.send(RAISE)
    assert len(agent.requests) == 1 and not d.called
    clock.advance(4.9)
    assert len(agent.requests) == 1
    clock.advance(0.1)  # 5 s
    assert len(agent.requests) == 2
    clock.advance(10)  # then 10 s
    assert len(agent.requests) == 3
    clock.advance(19.9)
    assert len(agent.requests) == 3
    clock.advance(0.1)  # then 20 s
    assert len(agent.requests) == 4 and d.result is False
    assert not clock.getDelayedCalls()
    assert sum("trying again" in x for x in logged) == 3
    assert "HTTP 502" in logged[2] and "after 4 attempt(s)" in logged[-1]
    assert all(TOKEN not in x and "hooks.example.com" in x for x in logged)


def test_webhook_recovers_on_a_retry():
    clock = Clock()
    agent = FakeAgent([500, 200])
    d = WebhookChannel(clock, URL, agent=agent, backoff=1).send(RAISE)
    clock.advance(1)
    assert d.result is True and len(agent.requests) == 2


def test_webhook_over_a_memory_reactor_connects_to_the_url_and_times_out(logged):
    reactor = MemoryReactorClock()
    hook = WebhookChannel(reactor, URL_PORT, timeout=10, retries=1, backoff=30)
    d = hook.send(RAISE)
    _host, port, _factory, timeout, _ = reactor.tcpClients[0]  # (its resolver's address)
    assert (port, timeout) == (8443, 10)
    reactor.advance(10)  # no answer: the request is given up, a retry waits 30 s
    assert not d.called and len(reactor.tcpClients) == 1
    assert "no answer in time" in logged[0]
    reactor.advance(30)
    assert len(reactor.tcpClients) == 2
    reactor.advance(10)
    assert d.result is False
    assert all(TOKEN not in x and "https://hooks.example.com:8443" in x for x in logged)


def test_channels_from_the_configuration():
    cfg = parse_config({
        "alerts": {"webhook": {"url": URL, "timeout": 3, "retries": 1},
                   "email": {"to": ["ops@example.com"]}},
        "mail": {"host": "smtp.example.com", "from": "gw@example.com", "port": 2525}})
    hook, mail = channels_for(Clock(), cfg.alerts, cfg.mail)
    assert (hook.name, hook.url, hook.timeout, hook.retries) == ("webhook", URL, 3, 1)
    assert (mail.name, mail.smtp.host, mail.smtp.port, mail.smtp.sender, mail.to) == (
        "email", "smtp.example.com", 2525, "gw@example.com", ["ops@example.com"])
    assert mail.smtp is cfg.mail  # the one [mail] server
    assert channels_for(Clock(), parse_config({}).alerts) == []
    # [mail] without [alerts.email]: reports may be mailed, alerts are not
    only_mail = parse_config({"alerts": {}, "mail": {"host": "smtp.example.com",
                                                     "from": "gw@example.com"}})
    assert channels_for(Clock(), only_mail.alerts, only_mail.mail) == []


# -- e-mail: the text ----------------------------------------------------------------------


def test_mail_text_of_a_raise_and_a_resolve():
    subject, body = mail_text(RAISE, gateway="gw1")
    assert subject == "[bankgate] CRITICAL recon-failed: icbc 2026-11-26"
    assert "Alert raised: recon-failed" in body and ALERT.message in body
    assert "Since:    2026-11-27 02:14:00" in body and "What to do:" in body
    assert body.endswith("bankgate on gw1\n")
    subject, body = mail_text(CLEAR, gateway="gw1")
    assert subject == "[bankgate] resolved: recon-failed: icbc 2026-11-26"
    assert "Resolved: 2026-11-27 09:00:00" in body and "What to do" not in body


# -- e-mail: an SMTP server played line by line --------------------------------------------


TO = ["ops@example.com", "duty@example.com"]


@dataclass
class Smtp:
    """What ``[mail]`` holds (bankgate.app.config.MailConfig)."""

    host: str = "smtp.example.com"
    port: int = 25
    starttls: bool = False
    user: str | None = None
    password: str | None = None
    sender: str = "bankgate@example.com"
    timeout: float = 30.0


class TLSStringTransport(StringTransport):
    tls = None

    def startTLS(self, context):  # noqa: N802 - records what STARTTLS would use
        self.tls = context


class Dialogue:
    """The client of one :func:`send_mail` on a StringTransport; :meth:`say` is the
    server's line(s), answered with what the client sent back."""

    def __init__(self, settings: Smtp, *, subject="Hello", body="Body text\n.\nend",
                 attachments=()):
        self.reactor = MemoryReactorClock()
        self.result = send_mail(self.reactor, settings, TO, subject, body, attachments)
        self.host, self.port, factory, self.timeout, _ = self.reactor.tcpClients[0]
        self.proto = factory.buildProtocol(IPv4Address("TCP", "192.0.2.25", 25))
        self.transport = TLSStringTransport()
        self.proto.makeConnection(self.transport)
        self.sent: list[bytes] = []

    def say(self, *lines: str) -> list[bytes]:
        self.proto.dataReceived("".join(line + "\r\n" for line in lines).encode())
        while self.transport.producer is not None:  # the message, as the file sender sends it
            self.transport.producer.resumeProducing()
        out = self.transport.value()
        self.transport.clear()
        got = out.split(b"\r\n")[:-1] if out else []
        self.sent.extend(got)
        return got


def message_of(lines: list[bytes]) -> email.message.EmailMessage:
    data = b"".join((x[1:] if x.startswith(b"..") else x) + b"\n" for x in lines[:-1])
    return email.message_from_bytes(data, policy=policy.default)


def deliver(s: Dialogue, *, ehlo=("250-smtp.example.com", "250 8BITMIME")) -> list[bytes]:
    """From the greeting to the message sent; the lines of the message."""
    assert s.say("220 smtp.example.com ESMTP")[0].startswith(b"EHLO ")
    assert s.say(*ehlo) == [b"MAIL FROM:<bankgate@example.com>"]
    return finish(s)


def finish(s: Dialogue) -> list[bytes]:
    assert s.say("250 sender ok") == [b"RCPT TO:<ops@example.com>"]
    assert s.say("250 ok") == [b"RCPT TO:<duty@example.com>"]
    assert s.say("250 ok") == [b"DATA"]
    message = s.say("354 go ahead")
    assert message[-1] == b"."
    assert s.say("250 queued as 42") == [b"RSET"]
    assert s.say("250 ok") == [b"QUIT"]
    return message


def test_a_message_over_plain_smtp():
    s = Dialogue(Smtp())
    assert (s.host, s.port, s.timeout) == ("smtp.example.com", 25, 30.0)
    msg = message_of(deliver(s))
    assert s.result.result == 2  # both addresses accepted
    assert msg["Subject"] == "Hello" and msg["From"] == "bankgate@example.com"
    assert msg["To"] == "ops@example.com, duty@example.com"
    assert msg.get_content() == "Body text\n.\nend\n"  # a lone dot survives the dialogue
    assert not any(line.startswith((b"AUTH", b"STARTTLS")) for line in s.sent)


def test_attachments_arrive_with_their_names():
    s = Dialogue(Smtp(), subject="报表 2026-11-27", body="见附件",
                 attachments=[("collections.csv", b"bank,amount\nicbc,100\n", "text/csv"),
                              ("r.pdf", b"%PDF-1.4 \x00\x01", "application/pdf")])
    msg = message_of(deliver(s))
    assert msg["Subject"] == "报表 2026-11-27"
    parts = list(msg.iter_attachments())
    assert [(p.get_filename(), p.get_content_type()) for p in parts] == [
        ("collections.csv", "text/csv"), ("r.pdf", "application/pdf")]
    assert parts[1].get_content() == b"%PDF-1.4 \x00\x01"
    assert msg.get_body(("plain",)).get_content() == "见附件\n"


def test_starttls_then_login_and_the_password_is_never_shown(logged):
    s = Dialogue(Smtp(port=587, starttls=True, user="gw", password=PASSWORD))
    assert s.say("220 smtp.example.com ESMTP")[0].startswith(b"EHLO ")
    assert s.say("250-smtp.example.com", "250-STARTTLS", "250 AUTH PLAIN") == [b"STARTTLS"]
    assert s.say("220 go ahead")[0].startswith(b"EHLO ") and s.transport.tls is not None
    [auth] = s.say("250-smtp.example.com", "250 AUTH PLAIN")
    assert auth.startswith(b"AUTH PLAIN ")
    assert base64.b64decode(auth.split()[-1]) == b"gw\0gw\0" + PASSWORD.encode()
    assert s.say("235 2.7.0 authenticated") == [b"MAIL FROM:<bankgate@example.com>"]
    msg = message_of(finish(s))
    assert msg["Subject"] == "Hello" and s.result.result == 2


def test_a_refused_login_says_why_without_the_password(logged):
    s = Dialogue(Smtp(port=587, starttls=True, user="gw", password=PASSWORD))
    s.say("220 smtp.example.com ESMTP")
    s.say("250-smtp.example.com", "250-STARTTLS", "250 AUTH PLAIN")
    s.say("220 go ahead")
    [auth] = s.say("250-smtp.example.com", "250 AUTH PLAIN")
    [again] = s.say("535 5.7.8 authentication failed")  # Twisted tries the other form
    s.say("535 5.7.8 authentication failed")
    failure = s.result.result
    s.result.addErrback(lambda f: None)
    why = describe(failure)
    assert why.startswith("535 5.7.8 authentication failed")
    secrets = [auth.split()[-1].decode(), again.split()[-1].decode(), PASSWORD]
    for text in (why, str(failure.value), failure.getTraceback(), *logged):
        assert not any(x in text for x in secrets)


def test_starttls_required_but_not_offered_sends_nothing():
    s = Dialogue(Smtp(port=587, starttls=True, user="gw", password=PASSWORD))
    s.say("220 smtp.example.com ESMTP")
    s.say("250-smtp.example.com", "250 AUTH PLAIN")
    assert isinstance(s.result.result.value, smtp.TLSRequiredError)
    s.result.addErrback(lambda f: None)
    assert not any(line.startswith((b"AUTH", b"MAIL")) for line in s.sent)


def test_a_server_that_does_not_answer_times_out_on_the_clock():
    s = Dialogue(Smtp(timeout=20))
    s.reactor.advance(19)
    assert not s.result.called
    s.reactor.advance(1)
    failure = s.result.result
    s.result.addErrback(lambda f: None)
    assert describe(failure) == "no answer in time"
    assert s.transport.disconnecting  # the connection was dropped


def test_email_channel_retries_then_gives_up(logged):
    clock = Clock()
    calls = []

    def fake_send(reactor, smtp_settings, to, subject, body):
        calls.append((to, subject, body))
        return defer.fail(smtp.SMTPConnectError(-1, b"Unable to connect to SMTP server"))

    ch = EmailChannel(clock, Smtp(), TO, send=fake_send, retries=2, backoff=60)
    d = ch.send(RAISE)
    clock.advance(60)
    clock.advance(120)
    assert d.result is False and len(calls) == 3
    assert calls[0][0] == ["ops@example.com", "duty@example.com"]
    assert calls[0][1] == "[bankgate] CRITICAL recon-failed: icbc 2026-11-26"
    assert "Unable to connect" in logged[-1] and "smtp.example.com:25" in logged[-1]


# -- e-mail: Twisted's own ESMTP server, in memory ----------------------------------------------


@implementer(smtp.IMessage)
class Received:
    def __init__(self, box: list):
        self.box, self.lines = box, []

    def lineReceived(self, line):  # noqa: N802
        self.lines.append(line)

    def eomReceived(self):  # noqa: N802
        self.box.append(b"\n".join(self.lines))
        return defer.succeed(None)

    def connectionLost(self):  # noqa: N802
        pass


@implementer(smtp.IMessageDelivery)
class Mailbox:
    def __init__(self):
        self.messages: list[bytes] = []
        self.recipients: list[str] = []

    def receivedHeader(self, helo, origin, recipients):  # noqa: N802
        return b"Received: in memory"

    def validateFrom(self, helo, origin):  # noqa: N802
        return origin

    def validateTo(self, user):  # noqa: N802
        self.recipients.append(str(user.dest))
        return lambda: Received(self.messages)


def connect(factory, box: Mailbox) -> None:
    """The client ``factory`` talks to an ESMTP server delivering to ``box``."""
    def server():
        s = smtp.ESMTP()
        s.delivery, s.timeout, s.host = box, None, b"smtp.example.com"
        return s

    server_address, client_address = (IPv4Address("TCP", "192.0.2.25", 25),
                                      IPv4Address("TCP", "192.0.2.9", 40000))
    _client, _server, pump = iosim.connectedServerAndClient(
        server, lambda: factory.buildProtocol(server_address),
        clientTransportFactory=lambda p: iosim.FakeTransport(
            p, False, hostAddress=client_address, peerAddress=server_address),
        serverTransportFactory=lambda p: iosim.FakeTransport(
            p, True, hostAddress=server_address, peerAddress=client_address))
    pump.flush()


def test_the_message_arrives_at_an_esmtp_server():
    box = Mailbox()
    reactor = MemoryReactorClock()
    mail, text = mail_text(RAISE, gateway="gw1")
    d = send_mail(reactor, Smtp(), ["ops@example.com"], mail, text)
    connect(reactor.tcpClients[0][2], box)
    assert d.result == 1 and box.recipients == ["ops@example.com"]
    [raw] = box.messages
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg["Subject"] == "[bankgate] CRITICAL recon-failed: icbc 2026-11-26"
    assert ALERT.message in msg.get_content()
