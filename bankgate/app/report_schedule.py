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

E-mail (``email = [...]``) needs the console's SMTP channel, which does not exist yet:
the addresses are checked, and each run logs where the files are instead.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path

from twisted.internet import defer, task
from twisted.logger import Logger

from bankgate.app.startup import one_line
from bankgate.canon.files import write_atomic
from bankgate.domain import custom_reports
from bankgate.domain.reporting import export

log = Logger(namespace="bankgate.reports")


class ReportScheduler:
    """Runs the scheduled definitions of ``definitions_dir`` at their time of day."""

    interval = 60.0

    def __init__(self, *, reactor, now: Callable[[], datetime], store, definitions_dir,
                 output_dir, run_blocking: Callable[..., defer.Deferred]):
        self.reactor = reactor
        self.now = now
        self.store = store
        self.definitions_dir = Path(definitions_dir)
        self.output_dir = Path(output_dir)
        self.run_blocking = run_blocking  # fn, *args -> Deferred, on a worker thread
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
                   run_blocking=gw.store.call)

    # -- start and stop ------------------------------------------------------------

    def load(self) -> None:
        """Read and check every definition; log each problem of a broken one."""
        defs, self.errors = custom_reports.load_folder(self.definitions_dir)
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
            r = self.run_blocking(self.produce, d, day, catch_up)
            r.addCallback(self._report, d, day)
            r.addErrback(self._failed, d, day)
            r.addBoth(lambda files: done.callback(files))
            return r

        self._tail.addBoth(go)
        return done

    # -- what (on a worker thread) -------------------------------------------------

    def produce(self, d: custom_reports.ReportDefinition, day: date,
                catch_up: bool = False) -> tuple[list[tuple[Path, int]], bool]:
        """Run ``d`` for ``day`` and write its files: ``([(path, rows)], skipped)``.
        Runs on a worker thread; raises on failure (logged by the reactor thread)."""
        targets = d.output_paths(self.output_dir, day)
        if catch_up and targets and all(p.exists() for p in targets):
            return [], True
        table = custom_reports.run(d, self.store, today=day)
        rows = list(table.rows)  # one query, every format
        written = []
        with tempfile.TemporaryDirectory(prefix="bankgate-report-") as tmp:
            for fmt, target in zip(d.formats, targets, strict=True):
                table.rows = rows
                scratch = Path(tmp) / target.name
                n = export(table, fmt, scratch)
                write_atomic(target, scratch.read_bytes())
                written.append((target, n))
        return written, False

    def _report(self, result, d, day: date) -> list[Path]:
        written, skipped = result
        if skipped:
            log.info("report {name}: {day} already written", name=d.name, day=day)
            return []
        for path, n in written:
            log.info("report {name}: wrote {path} ({n} rows)", name=d.name, path=str(path), n=n)
        if d.email and written:
            log.warn("report {name}: e-mail not configured: the report is in {folder}"
                     " (not sent to {to})", name=d.name, folder=str(written[0][0].parent),
                     to=", ".join(d.email))
        self.history.append((d.name, day, [p for p, _ in written]))
        return [p for p, _ in written]

    def _failed(self, failure, d, day: date) -> list[Path]:
        why = one_line(failure.value)
        log.error("report {name}: {day} failed: {why}; next try tomorrow at {at}",
                  name=d.name, day=day, why=why, at=f"{d.schedule:%H:%M}")
        self.history.append((d.name, day, why))
        return []
