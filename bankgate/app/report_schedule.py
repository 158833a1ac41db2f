"""Scheduled custom reports: each definition with ``schedule = "HH:MM"`` runs daily.

The definitions are the ``*.toml`` files of ``[reports] dir`` (``docs/custom-reports.rst``),
read and checked when the service starts: a broken one is logged then, one line per
problem, and is not scheduled -- an operator learns of it at the restart, not at 06:30
the next morning.  At each definition's time (local, from the service's injected
clock) the report runs for that day's default range on a worker thread (the store's
pool: never the reactor thread) and each format lands in
``<output_dir>/<name>/<name>_<YYYY-MM-DD>.<ext>``, written whole or not at all
(:func:`bankgate.canon.files.write_atomic`).  One log line per file written; a run
that fails logs one line and the next try is the next day's.  A run whose time
passed while the service was down runs at start, unless today's files are there.

E-mail (``email = [...]``): once the files are written, a run of a definition with
addresses sends them, as attachments of one message, through the ``[mail]`` server
(:func:`bankgate.app.alert_channels.send_mail`, on the reactor: the files' bytes were
kept by the worker thread that wrote them, so nothing is read on the reactor thread).
A send that fails is logged (the server's answer, never the password) and tried again
after :attr:`ReportScheduler.mail_backoff` seconds, doubling, at most
:attr:`ReportScheduler.mail_retries` times; the queue of runs does not wait for it, and
the files stay in their folder whatever happens to the mail.  Without ``[mail]`` each
such run logs a warning saying where the files are and how to configure ``[mail]``.
A run skipped at start because its files are there is not mailed again.

Several processes or nodes on one database: each run holds the lease
``report:{name}:{date}`` (:mod:`bankgate.domain.leases`) and marks it finished
when its files are written, so a report runs once per date across them all -- on
the node that came first, into that node's ``[reports] output_dir`` (point every
node's at one shared folder to have the files in one place).  The others log who
wrote it and skip it.
"""

from __future__ import annotations

import socket
import tempfile
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from twisted.internet import defer, task
from twisted.logger import Logger

from bankgate.app.alert_channels import retrying, send_mail
from bankgate.app.report_catalogue import load_definitions
from bankgate.app.startup import one_line
from bankgate.canon.files import write_atomic
from bankgate.domain import custom_reports
from bankgate.domain.leases import LeaseBusy, Leases
from bankgate.domain.reporting import export

log = Logger(namespace="bankgate.reports")

#: the MIME type of each format's attachment
MIME_TYPES = {
    "csv": "text/csv",
    "json": "application/json",
    "pdf": "application/pdf",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}


@dataclass
class Written:
    """One file a run wrote: where, its rows, and its bytes when the run is mailed."""

    path: Path
    rows: int | None
    data: bytes | None = None


def mail_text(d: custom_reports.ReportDefinition, day: date, written: Sequence[Written],
              at: datetime | None = None, gateway: str | None = None) -> tuple[str, str]:
    """The subject and body of a run's e-mail: the report's title and period, what it
    is, which files are attached (with their rows) and where they are kept."""
    rng = d.date_range(day)
    period = f"{rng[0]} to {rng[1]}" if rng else f"as of {day} (all dates)"
    # one line of printable text, whatever the title (control characters, C1 included,
    # become spaces; runs of spaces one)
    title = "".join(" " if unicodedata.category(c)[0] in "CZ" else c for c in d.title)
    subject = " ".join(f"[bankgate] {title}: {period}".split())
    lines = [f"Scheduled report: {d.title} ({d.name})", f"Period:   {period}"]
    if at is not None:
        lines.append(f"Written:  {at:%Y-%m-%d %H:%M}")
    if d.description:
        lines += ["", d.description]
    lines += ["", "Attached:"]
    for w in written:
        rows = "" if w.rows is None else f" ({w.rows} row{'' if w.rows == 1 else 's'})"
        lines.append(f"  {w.path.name}{rows}")
    lines += ["", f"The files are kept on the gateway in {written[0].path.parent}.", "",
              "-- ", f"bankgate on {gateway or socket.gethostname()}"]
    return subject, "\n".join(lines) + "\n"


class ReportScheduler:
    """Runs the scheduled definitions of ``definitions_dir`` at their time of day.

    :param mail: the ``[mail]`` settings (:class:`bankgate.app.config.MailConfig`), or
        ``None``: nothing is mailed.
    :param send: :func:`~bankgate.app.alert_channels.send_mail` or one like it.
    :param leases: the process's :class:`~bankgate.domain.leases.Leases` (with a
        clock): each run under the lease ``report:{name}:{date}``, once across
        processes and nodes; ``None``: no lease (one process).
    """

    interval = 60.0
    mail_retries = 3  # attempts after the first ...
    mail_backoff = 120.0  # ... 2, 4 and 8 minutes apart

    def __init__(self, *, reactor, now: Callable[[], datetime], store, definitions_dir,
                 output_dir, run_blocking: Callable[..., defer.Deferred], mail=None,
                 send: Callable[..., defer.Deferred] = send_mail, gateway: str | None = None,
                 leases: Leases | None = None):
        self.reactor = reactor
        self.leases = leases
        self.now = now
        self.store = store
        self.definitions_dir = Path(definitions_dir)
        self.output_dir = Path(output_dir)
        self.run_blocking = run_blocking  # fn, *args -> Deferred, on a worker thread
        self.mail = mail
        self.send = send
        self.gateway = gateway  # the name the mail is signed with (default: the host's)
        self.definitions: list[custom_reports.ReportDefinition] = []
        self.errors: list[custom_reports.DefinitionError] = []
        self.loop = task.LoopingCall(self.tick)
        self.loop.clock = reactor
        self._last: datetime | None = None
        self._tail: defer.Deferred = defer.succeed(None)  # runs one after another
        self.history: list[tuple[str, date, list[Path] | str]] = []  # (name, day, files|error)

    @classmethod
    def for_service(cls, gw) -> ReportScheduler:
        cfg = gw.cfg
        return cls(reactor=gw.reactor, now=gw.now, store=gw.store,
                   definitions_dir=cfg.reports.definitions_dir(cfg.data_dir),
                   output_dir=cfg.reports.outputs_dir(cfg.data_dir),
                   run_blocking=gw.store.call, mail=cfg.mail,
                   leases=Leases.shared(gw, gw.store, now=gw.now, clock=gw.reactor,
                                        ttl=cfg.lease_ttl))

    # -- start and stop ------------------------------------------------------------

    def load(self) -> None:
        """Read and check every definition; log each problem of a broken one."""
        defs, self.errors = load_definitions(self.definitions_dir)  # as the console lists
        for e in self.errors:
            for line in str(e).splitlines():
                log.error("report definition not scheduled: {problem}", problem=line)
        self.definitions = [d for d in defs if d.schedule is not None]
        for d in self.definitions:
            log.info("report {name}: scheduled daily at {at} ({formats})", name=d.name,
                     at=f"{d.schedule:%H:%M}", formats=", ".join(d.formats))

    def start(self) -> None:
        self.load()
        self._last = None
        if self.definitions:
            self.loop.start(self.interval, now=True).addErrback(
                lambda f: log.failure("report scheduler stopped", f))

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()

    # -- when ------------------------------------------------------------------------

    def tick(self) -> None:
        now = self.now()
        for d in self.definitions:
            fire = datetime.combine(now.date(), d.schedule)
            if self._last is None:
                if fire <= now:  # missed while the service was down: unless done
                    self.enqueue(d, now.date(), catch_up=True)
            elif self._last < fire <= now:
                self.enqueue(d, now.date())
        self._last = now

    def enqueue(self, d: custom_reports.ReportDefinition, day: date,
                catch_up: bool = False) -> defer.Deferred:
        """Run ``d`` for ``day`` after the runs already queued: a Deferred of the
        files written (``[]`` when skipped or failed)."""
        done: defer.Deferred = defer.Deferred()

        def go(_):
            if self.leases is None:
                r = self.run_blocking(self.produce, d, day, catch_up)
            else:  # once per report and date across processes and nodes
                r = self.leases.run(
                    f"report:{d.name}:{day:%Y-%m-%d}",
                    lambda lease: self.run_blocking(self.produce, d, day, catch_up),
                    what={"job": "report", "by": "service"}, finish=True)
            r.addCallback(self._report, d, day)
            r.addErrback(self._elsewhere, d, day)
            r.addErrback(self._failed, d, day)
            r.addBoth(lambda files: done.callback(files))
            return r

        self._tail.addBoth(go)
        return done

    # -- what (on a worker thread) -------------------------------------------------

    def produce(self, d: custom_reports.ReportDefinition, day: date,
                catch_up: bool = False) -> tuple[list[Written], bool]:
        """Run ``d`` for ``day`` and write its files: ``([Written], skipped)``, with
        each file's bytes when they are to be mailed.  Runs on a worker thread;
        raises on failure (logged by the reactor thread)."""
        targets = d.output_paths(self.output_dir, day)
        if catch_up and targets and all(p.exists() for p in targets):
            return [], True
        keep = bool(d.email) and self.mail is not None
        table = custom_reports.run(d, self.store, today=day)
        rows = list(table.rows)  # one query, every format
        written = []
        with tempfile.TemporaryDirectory(prefix="bankgate-report-") as tmp:
            for fmt, target in zip(d.formats, targets, strict=True):
                table.rows = rows
                scratch = Path(tmp) / target.name
                n = export(table, fmt, scratch)
                data = scratch.read_bytes()
                write_atomic(target, data)
                written.append(Written(target, n, data if keep else None))
        return written, False

    def _report(self, result, d, day: date) -> list[Path]:
        written, skipped = result
        if skipped:
            log.info("report {name}: {day} already written", name=d.name, day=day)
            return []
        for w in written:
            log.info("report {name}: wrote {path} ({n} rows)", name=d.name, path=str(w.path),
                     n=w.rows)
        if d.email and written:
            self.mail_files(d, day, written)  # on its own: the next run does not wait
        self.history.append((d.name, day, [w.path for w in written]))
        return [w.path for w in written]

    def _elsewhere(self, failure, d, day: date) -> list[Path]:
        failure.trap(LeaseBusy)
        e = failure.value
        if e.finished:
            log.info("report {name}: {day} already written by {holder}"
                     " (in that process's output folder)", name=d.name, day=day,
                     holder=e.holder)
        else:
            log.info("report {name}: {day} is being written by {holder}", name=d.name,
                     day=day, holder=e.holder)
        return []

    def _failed(self, failure, d, day: date) -> list[Path]:
        why = one_line(failure.value)
        log.error("report {name}: {day} failed: {why}; next try tomorrow at {at}",
                  name=d.name, day=day, why=why, at=f"{d.schedule:%H:%M}")
        self.history.append((d.name, day, why))
        return []

    # -- e-mail (on the reactor) ---------------------------------------------------

    def mail_files(self, d: custom_reports.ReportDefinition, day: date,
                   written: Sequence[Written]) -> defer.Deferred:
        """Send ``written`` to ``d.email`` through ``[mail]``, retrying: a Deferred of
        ``True`` (sent) or ``False`` (not configured, or given up); it never fails."""
        folder, to = written[0].path.parent, ", ".join(d.email)
        if self.mail is None:
            log.warn("report {name}: e-mail not configured: the report is in {folder}"
                     " (not sent to {to}); to send it, add a [mail] table with the SMTP"
                     " server's host and a from address to the configuration",
                     name=d.name, folder=str(folder), to=to)
            return defer.succeed(False)
        subject, body = mail_text(d, day, written, at=self.now(), gateway=self.gateway)
        attachments = [(w.path.name, w.data or b"",
                        MIME_TYPES.get(w.path.suffix.lstrip("."), "application/octet-stream"))
                       for w in written]
        accepted: list[int] = []

        def attempt() -> defer.Deferred:
            sent = self.send(self.reactor, self.mail, list(d.email), subject, body,
                             attachments)
            return sent.addCallback(accepted.append)

        done = retrying(self.reactor, attempt, retries=self.mail_retries,
                        backoff=self.mail_backoff, logger=log, prefix=f"report {d.name}",
                        what=f"e-mail to {to} via {self.mail.host}:{self.mail.port}")

        def logged(ok: bool) -> bool:  # a give-up is logged by retrying, with its reason
            if ok:
                n = accepted[-1] if accepted else None
                some = (f" ({n} of {len(d.email)} addresses accepted)"
                        if isinstance(n, int) and n < len(d.email) else "")
                log.info("report {name}: e-mailed {files} to {to}{some}", name=d.name,
                         files=", ".join(w.path.name for w in written), to=to, some=some)
            return ok

        return done.addCallback(logged)
