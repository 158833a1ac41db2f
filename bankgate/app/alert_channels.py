"""Where alerts go besides the log and the console: an HTTP webhook and e-mail.

Both work on the reactor they are given (never the global one) and never raise into
the alert service: :meth:`WebhookChannel.send` and :meth:`EmailChannel.send` return a
Deferred that fires with ``True`` (delivered) or ``False`` (given up), never an error.
A failed attempt is logged and tried again after ``backoff`` seconds, doubling, at
most ``retries`` times.

- **Webhook** (``[alerts.webhook]``): one ``POST`` of the event as JSON
  (:meth:`bankgate.domain.alerts.Event.as_dict`) to the URL, ``http`` or ``https``
  (the server's certificate is checked), given ``timeout`` seconds; any 2xx answer is
  delivered.  The URL's path and query are never logged: they often hold the token.
- **E-mail** (``[alerts.email] to``, through the ``[mail]`` server): :func:`send_mail`,
  plain SMTP with Twisted's ESMTP client, optionally ``STARTTLS`` (then required, and
  the certificate checked) and a login.  The password is never logged: Twisted's
  client keeps the dialogue for its error messages, this one does not (it would hold
  the ``AUTH`` line).

:func:`send_mail` is the gateway's one way of sending mail, through the one ``[mail]``
server; scheduled reports use it too (with ``attachments``, and :func:`retrying` with
their own log).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterable, Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from io import BytesIO
from typing import Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail.smtp import ESMTPSender, ESMTPSenderFactory, SMTPClientError
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from bankgate.app.config import safe_webhook_url
from bankgate.domain.alerts import ADVICE, RAISED, Event

log = Logger(namespace="bankgate.alerts")


def describe(failure) -> str:
    """One line saying why a send failed, naming no secret: an SMTP error by its
    code and the server's answer only (not the dialogue), else the error's text."""
    e = failure.value
    if isinstance(e, SMTPClientError):
        resp = e.resp.decode("utf-8", "replace") if isinstance(e.resp, bytes) else str(e.resp)
        text = f"{e.code} {resp}" if e.code > 0 else resp
    elif isinstance(e, defer.TimeoutError) or isinstance(e, defer.CancelledError):
        text = "no answer in time"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())[:300]


def retrying(reactor, attempt: Callable[[], defer.Deferred], *, retries: int, backoff: float,
             what: str, logger: Logger | None = None, prefix: str = "alerts") -> defer.Deferred:
    """Run ``attempt`` until it succeeds, at most ``1 + retries`` times, waiting
    ``backoff`` seconds before the first retry and twice as long each time after.
    A Deferred of ``True`` (delivered) or ``False`` (given up); it never fails.
    Each failure is logged on ``logger`` (``bankgate.alerts``) as ``prefix: what: ...``."""
    done: defer.Deferred = defer.Deferred()
    logger = logger or log

    def go(n: int) -> None:
        d = defer.maybeDeferred(attempt)

        def failed(f):
            why = describe(f)
            if n > retries:
                logger.error("{prefix}: {what}: not delivered after {n} attempt(s): {why}",
                             prefix=prefix, what=what, n=n, why=why)
                done.callback(False)
                return
            delay = backoff * 2 ** (n - 1)
            logger.warn("{prefix}: {what}: not delivered ({why}); trying again in {delay:g} s",
                        prefix=prefix, what=what, why=why, delay=delay)
            reactor.callLater(delay, go, n + 1)

        d.addCallbacks(lambda _: done.callback(True), failed)

    go(1)
    return done


# -- the webhook -------------------------------------------------------------------------


@implementer(IBodyProducer)
class _Body:
    """A request body already in memory (no cooperator, no global reactor)."""

    def __init__(self, data: bytes):
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer):  # noqa: N802
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self):  # noqa: N802
        pass

    def resumeProducing(self):  # noqa: N802
        pass

    def stopProducing(self):  # noqa: N802
        pass


class WebhookError(Exception):
    """The webhook answered, but not with 2xx."""


class WebhookChannel:
    """POSTs each event as JSON to ``url`` (``[alerts.webhook]``).  ``agent``: an
    ``IAgent`` (default: ``twisted.web.client.Agent`` on ``reactor``)."""

    name = "webhook"

    def __init__(self, reactor, url: str, *, timeout: float = 10.0, retries: int = 3,
                 backoff: float = 5.0, agent=None):
        self.reactor, self.url, self.timeout = reactor, url, timeout
        self.retries, self.backoff = retries, backoff
        self.agent = agent if agent is not None else Agent(reactor, connectTimeout=timeout)
        self.where = safe_webhook_url(url)

    def post(self, payload: dict) -> defer.Deferred:
        """One attempt: a Deferred of the answer's status, failing unless it is 2xx."""
        body = json.dumps(payload, ensure_ascii=False, sort_keys=True).encode("utf-8")
        headers = Headers({b"content-type": [b"application/json; charset=utf-8"],
                           b"user-agent": [b"bankgate-alerts"]})
        d = self.agent.request(b"POST", self.url.encode("ascii"), headers, _Body(body))

        def timed_out(result, timeout):  # whatever the cancelled request says
            raise defer.TimeoutError(f"no answer within {timeout:g} s")

        d.addTimeout(self.timeout, self.reactor, onTimeoutCancel=timed_out)

        def answered(response):
            drained = readBody(response)  # read it all, so the connection can close
            drained.addErrback(lambda f: None)  # only the status matters

            def checked(_):
                if not 200 <= response.code < 300:
                    raise WebhookError(f"HTTP {response.code}"
                                       f" {response.phrase.decode('latin-1')}")
                return response.code

            return drained.addCallback(checked)

        return d.addCallback(answered)

    def send(self, event: Event) -> defer.Deferred:
        what = f"webhook {self.where}: {event.alert.kind} {event.alert.subject} {event.state}"
        payload = event.as_dict()
        return retrying(self.reactor, lambda: self.post(payload), retries=self.retries,
                        backoff=self.backoff, what=what)


# -- e-mail ------------------------------------------------------------------------------


class SmtpSettings(Protocol):
    """What :func:`send_mail` needs of its settings (``[mail]``,
    :class:`bankgate.app.config.MailConfig`, has them)."""

    host: str
    port: int
    starttls: bool
    user: str | None
    password: str | None
    sender: str
    timeout: float


class _Sender(ESMTPSender):
    debug = False  # keep no dialogue: it would hold the AUTH line, the password in base64


class _SenderFactory(ESMTPSenderFactory):
    protocol = _Sender


def build_message(sender: str, to: Sequence[str], subject: str, body: str,
                  attachments: Iterable[tuple[str, bytes, str]] = ()) -> bytes:
    """The message: UTF-8 text, and each attachment ``(file name, data, MIME type)``,
    base64-encoded; a ``text/*`` attachment is said to be UTF-8 (the gateway's files
    are)."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    msg.set_content(body)
    for name, data, mime in attachments:
        maintype, _, subtype = (mime or "application/octet-stream").partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream",
                           filename=name,
                           params={"charset": "utf-8"} if maintype == "text" else None)
    return msg.as_bytes()


def send_mail(reactor, smtp: SmtpSettings, to: Sequence[str], subject: str, body: str,
              attachments: Iterable[tuple[str, bytes, str]] = ()) -> defer.Deferred:
    """Send one message through ``smtp``'s server, on ``reactor``.

    ``attachments``: ``(file name, data, MIME type)``.  With ``smtp.starttls`` the
    connection must be upgraded (the server's certificate checked against
    ``smtp.host``) before anything else is sent; with ``smtp.user`` the server must
    accept the login.  The whole exchange is given ``smtp.timeout`` seconds.  A
    Deferred of the number of addresses the server accepted; it fails with the
    server's refusal (:class:`twisted.mail.smtp.SMTPClientError`) or the connection's
    error -- :func:`describe` words it without the password.
    """
    to = list(to)
    data = build_message(smtp.sender, to, subject, body, attachments)
    result: defer.Deferred = defer.Deferred()
    context = None
    if smtp.starttls:
        from twisted.internet.ssl import optionsForClientTLS

        context = optionsForClientTLS(smtp.host)
    user = smtp.user.encode("utf-8") if smtp.user else None
    secret = smtp.password.encode("utf-8") if smtp.password else None
    factory = _SenderFactory(
        user, secret, smtp.sender, to, BytesIO(data), result, retries=0, timeout=None,
        contextFactory=context, heloFallback=not (smtp.starttls or user),
        requireAuthentication=user is not None, requireTransportSecurity=smtp.starttls)
    factory.noisy = False
    connector = reactor.connectTCP(smtp.host, smtp.port, factory, timeout=smtp.timeout)

    def stop(d):  # the time is up: no retry, drop the connection
        factory.sendFinished = True
        proto = factory.currentProtocol
        if proto is not None and proto.transport is not None:
            proto.transport.abortConnection()
        else:
            connector.disconnect()

    out: defer.Deferred = defer.Deferred(stop)
    result.addCallbacks(lambda r: out.callback(r[0]) if not out.called else None,
                        lambda f: out.errback(f) if not out.called else None)
    out.addTimeout(smtp.timeout, reactor)
    return out


def mail_text(event: Event, gateway: str | None = None) -> tuple[str, str]:
    """The subject and body of an event's e-mail."""
    a = event.alert
    if event.state == RAISED:
        subject = f"[bankgate] {a.severity.upper()} {a.kind}: {a.subject}"
        head = f"Alert raised: {a.kind}"
    else:
        subject = f"[bankgate] resolved: {a.kind}: {a.subject}"
        head = f"Alert resolved: {a.kind}"
    lines = [head, "", f"Subject:  {a.subject}", f"Severity: {a.severity}"]
    if a.since is not None:
        lines.append(f"Since:    {a.since:%Y-%m-%d %H:%M:%S}")
    lines.append(f"Raised:   {event.raised_at:%Y-%m-%d %H:%M:%S}")
    if event.state != RAISED:
        lines.append(f"Resolved: {event.at:%Y-%m-%d %H:%M:%S}")
    lines += ["", a.message, ""]
    if event.state == RAISED and a.kind in ADVICE:
        lines += [f"What to do: {ADVICE[a.kind]}", ""]
    lines += ["-- ", f"bankgate on {gateway or socket.gethostname()}"]
    return subject, "\n".join(lines) + "\n"


class EmailChannel:
    """Mails each event to ``to`` (``[alerts.email]``) through ``smtp`` (``[mail]``)
    with :func:`send_mail`."""

    name = "email"

    def __init__(self, reactor, smtp: SmtpSettings, to: Sequence[str], *, retries: int = 2,
                 backoff: float = 60.0, send: Callable[..., defer.Deferred] = send_mail,
                 gateway: str | None = None):
        self.reactor, self.smtp, self.to = reactor, smtp, list(to)
        self.retries, self.backoff = retries, backoff
        self._send = send
        self.gateway = gateway

    def send(self, event: Event) -> defer.Deferred:
        subject, body = mail_text(event, self.gateway)
        what = (f"e-mail via {self.smtp.host}:{self.smtp.port}: {event.alert.kind}"
                f" {event.alert.subject} {event.state}")
        return retrying(self.reactor,
                        lambda: self._send(self.reactor, self.smtp, self.to, subject, body),
                        retries=self.retries, backoff=self.backoff, what=what)


def channels_for(reactor, alerts_config, mail=None) -> list:
    """The channels ``[alerts]`` configures (none: the log and the console only); its
    e-mail goes through ``mail`` (``[mail]``), without which there is none."""
    out: list = []
    if alerts_config.webhook is not None:
        w = alerts_config.webhook
        out.append(WebhookChannel(reactor, w.url, timeout=w.timeout, retries=w.retries))
    if alerts_config.email is not None and mail is not None:
        out.append(EmailChannel(reactor, mail, alerts_config.email.to))
    return out
