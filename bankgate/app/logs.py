"""The gateway's log: levels per namespace, text or JSON lines, rotation with retention.

Why this exists: ``twistd``'s own log observer writes every event, debug included
(one line per bank connection opened and closed), and its log file keeps every 1 MB
rotated piece forever.  The ``[log]`` table (:class:`bankgate.app.config.LogConfig`,
``docs/configuration.rst``) says instead

- which events are written: a level for everything (``level``, default ``info``) and
  levels per namespace (``[log.levels]``, e.g. ``"bankgate.engine" = "debug"``); a
  namespace takes the level of its nearest configured parent.  Python ``logging``
  (ledger, store, reconciler, plugins) gets the same levels, by logger name;
- in which form: ``text`` (twistd's classic lines) or ``json`` (one JSON object per
  line, for log shippers: ``time``, ``level``, ``namespace``, ``message``, and the
  event's own fields, such as ``bank``, ``serial`` and ``outcome``);
- where: ``file``, or else where twistd's ``--logfile`` / ``--nodaemon`` point;
- for how long: rotated ``daily`` (at midnight) or by size, the
  newest ``keep`` rotated files kept and older ones deleted.

Times in the log, and the midnight of daily rotation, are the machine's local time,
as in twistd's own log (each line's offset says which zone that is).

How it takes twistd's place: ``twistd`` asks its application for an ``ILogObserver``
before it builds its own from ``--logfile``.  :func:`configure` (called by
``tap.makeService`` once the configuration is loaded) answers that question with the
observer built here, so the one log is the configured one.  Where the operator chose
twistd's ``--logger`` or ``--syslog``, twistd's choice stays the main log, unfiltered,
and a configured ``file`` is written in addition.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from datetime import date, datetime, tzinfo
from enum import Enum
from pathlib import Path
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    formatEventAsClassicLogText,
    globalLogPublisher,
)
from twisted.python import components, threadable
from twisted.python.logfile import DailyLogFile, LogFile

from bankgate.app.config import Config, ConfigError, LogConfig

#: Python ``logging`` levels for the configured names
_PY_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
              "error": logging.ERROR, "critical": logging.CRITICAL}
#: a log file may hold customer numbers: readable by the owner and the group only
FILE_MODE = 0o640


# -- what is written ------------------------------------------------------------------


#: levels that apply unless ``level`` is ``debug`` or ``[log.levels]`` names the
#: namespace or a parent of it.  Twisted's ``ClientService`` (the card-debit links)
#: says "Scheduling retry 1 to connect <... object at 0x...> in 1.06 seconds." at
#: info after every idle close, once a minute; the link logs what matters itself
#: (``wire/debitlink.py``).
QUIET = {"twisted.application._client_service.ClientService": "warn"}


def levels(lc: LogConfig) -> dict[str, str]:
    """The level of each named namespace: :data:`QUIET`, then the configuration."""
    out = {ns: level for ns, level in QUIET.items() if lc.level != "debug"
           and not any(ns == c or ns.startswith(c + ".") for c in lc.levels)}
    out.update(lc.levels)
    return out


def level_filter(lc: LogConfig) -> LogLevelFilterPredicate:
    """Events below their namespace's level (the nearest named parent's, else
    ``level``) are dropped."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(lc.level))
    for namespace, level in levels(lc).items():
        predicate.setLogLevelForNamespace(namespace, LogLevel.levelWithName(level))
    return predicate


def set_python_levels(lc: LogConfig, root: logging.Logger | None = None) -> None:
    """Python ``logging`` records reach twistd's log only at the configured levels.

    The root logger takes ``level``; each ``[log.levels]`` name its own (a Python
    logger below it inherits it, as a namespace does).
    """
    root = root or logging.getLogger()
    root.setLevel(_PY_LEVELS[lc.level])
    for name, level in lc.levels.items():
        logging.getLogger(name).setLevel(_PY_LEVELS[level])


# -- in which form --------------------------------------------------------------------

#: keys a JSON line sets itself; an event's own key of the same name is left out
_JSON_OWN = ("time", "level", "namespace", "message", "failure")
#: keys of legacy ``twisted.python.log`` events that the message already renders
_LEGACY = ("format", "isError", "why", "message")


def _plain(value: Any) -> Any:
    """``value`` as JSON can hold it: containers walked, anything else as text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Enum):
        return _plain(value.value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"  # never a frame's content
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - a log line must never fail
        return f"<unprintable {type(value).__name__}>"


def json_line(event: dict, tz: tzinfo | None = None) -> str:
    """One event as one line of JSON (no newline inside, one at the end).

    The event's own keys follow ``time``, ``level``, ``namespace``, ``message`` (and
    ``failure``), except twisted's ``log_*`` and keys starting with ``_``: those are
    renderings for the text line only (the transaction line's ``_extra``).
    """
    level = event.get("log_level")
    when = datetime.fromtimestamp(event.get("log_time", time.time()), tz)
    out: dict[str, Any] = {
        "time": (when if tz else when.astimezone()).isoformat(timespec="milliseconds"),
        "level": getattr(level, "name", str(level)),
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            out["failure"] = failure.getTraceback()
        except Exception:  # noqa: BLE001 - a log line must never fail
            out["failure"] = repr(failure)
    for key, value in event.items():
        if key.startswith(("log_", "_")) or key in _JSON_OWN or key in _LEGACY:
            continue
        out[key] = _plain(value)
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")) + "\n"


def text_line(event: dict) -> str | None:
    """One event as twistd writes it: ``TIME [namespace#level] message``."""
    return formatEventAsClassicLogText(event)


def observer_for(lc: LogConfig, out: IO, tz: tzinfo | None = None) -> ILogObserver:
    """An observer writing ``out`` in the configured form, at the configured levels."""
    if lc.format == "json":
        writer = FileLogObserver(out, lambda event: json_line(event, tz))
    else:
        writer = FileLogObserver(out, text_line)
    return FilteringLogObserver(writer, [level_filter(lc)])


# -- where, and for how long ----------------------------------------------------------


class DailyFile(DailyLogFile):
    """A log file renamed to ``NAME.YYYY_M_D`` at midnight in ``tz`` (``None``: the
    machine's zone); of those, the newest ``keep`` are kept and older ones deleted
    (at each rotation and at start).

    ``now`` is the clock (seconds since the epoch), so a test can turn it.
    """

    _SUFFIX = re.compile(r"\.(\d{4})_(\d{1,2})_(\d{1,2})\Z")
    synchronized = ["rotate"]  # under the file's lock, as DailyLogFile's write is

    def __init__(self, name: str, directory: str, *, tz: tzinfo | None, keep: int,
                 now: Callable[[], float] = time.time, defaultMode: int | None = None):
        self.tz, self.keep, self.now = tz, keep, now
        super().__init__(name, directory, defaultMode=defaultMode)
        self.prune()

    def toDate(self, *args):  # noqa: N802 - DailyLogFile's name
        stamp = args[0] if args else self.now()
        return datetime.fromtimestamp(stamp, self.tz).timetuple()[:3]

    def _openFile(self) -> None:  # noqa: N802 - DailyLogFile's name
        super()._openFile()
        # the day the file is of: its last change, never later than the clock says
        self.lastDate = self.toDate(min(os.stat(self.path).st_mtime, self.now()))

    def rotate(self) -> None:
        super().rotate()
        self.prune()

    def rotated(self) -> list[Path]:
        """The rotated files of this log, oldest first."""
        found = []
        for p in Path(self.directory).glob(f"{_glob_escape(self.name)}.*"):
            m = self._SUFFIX.search(p.name)
            if m and p.name == f"{self.name}{m.group(0)}":
                found.append((tuple(int(x) for x in m.groups()), p))
        return [p for _, p in sorted(found)]

    def prune(self) -> None:
        for p in self.rotated()[:-self.keep]:
            try:
                p.unlink()
            except OSError:
                pass  # gone already, or not ours to delete: it stays


threadable.synchronize(DailyFile)


def _glob_escape(name: str) -> str:
    """``name`` as a glob pattern that matches only itself."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def open_file(path: str, lc: LogConfig, tz: tzinfo | None = None,
              now: Callable[[], float] = time.time, source: str = "<config>") -> LogFile:
    """The log file at ``path`` (its folder created), rotating as ``lc`` says.

    Raises :class:`ConfigError` naming ``source`` and ``log.file`` when it cannot be
    opened.
    """
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        if lc.rotate == "daily":
            return DailyFile(p.name, str(p.parent), tz=tz, keep=lc.keep, now=now,
                             defaultMode=FILE_MODE)
        return LogFile(p.name, str(p.parent),
                       rotateLength=lc.max_bytes if lc.rotate == "size" else None,
                       maxRotatedFiles=lc.keep, defaultMode=FILE_MODE)
    except OSError as e:
        key = "log.file" if lc.file else "(twistd --logfile)"
        raise ConfigError(source, key, f"cannot open {path!r}: {e.strerror}") from None


def twistd_target(twistd: dict) -> str | None:
    """Where twistd would log, by its own options: ``"-"`` for standard output, a file
    name, or ``None`` when the operator gave twistd ``--logger`` or ``--syslog``."""
    if twistd.get("logger") or twistd.get("syslog"):
        return None
    logfile = twistd.get("logfile") or ""
    if logfile == "-" or (not logfile and twistd.get("nodaemon")):
        return "-"
    return logfile or "twistd.log"


# -- taking twistd's place ----------------------------------------------------------------


class _Main:
    """The observer twistd is to use as its log (set by :func:`configure`)."""

    observer: ILogObserver | None = None
    registered = False

    @classmethod
    def for_application(cls, application) -> ILogObserver | None:
        return cls.observer


def rotate_on_sigusr1(logfile: LogFile, call: Callable | None = None) -> bool:
    """``kill -USR1`` rotates ``logfile`` now, as it does twistd's own log file (and
    no longer ends the process, which an unhandled SIGUSR1 would).  Left alone when
    something else handles the signal already; ``call`` runs the rotation on the
    reactor (default: ``reactor.callFromThread``)."""
    if not hasattr(signal, "SIGUSR1") or signal.getsignal(signal.SIGUSR1) not in (
            signal.SIG_DFL, None):
        return False

    def rotate(signum, frame):
        if call is not None:
            call(logfile.rotate)
        else:
            from twisted.internet import reactor

            reactor.callFromThread(logfile.rotate)

    signal.signal(signal.SIGUSR1, rotate)
    return True


def install_main(observer: ILogObserver | None) -> None:
    """Make ``observer`` the application's log observer, which twistd uses in place of
    the one it would build from ``--logfile`` (``twisted.application.app.AppLogger``)."""
    if not _Main.registered:
        components.registerAdapter(_Main.for_application, components.Componentized,
                                   ILogObserver)
        _Main.registered = True
    _Main.observer = observer


def configure(cfg: Config, options: Any = None, *,
              publisher: Callable[[ILogObserver], None] | None = None,
              stdout: IO | None = None) -> ILogObserver | None:
    """Set up the gateway's log from ``cfg.log``; returns the observer it built.

    ``options`` are the ``twistd bankgate`` options: their ``parent`` holds twistd's
    own (``--logfile``, ``--nodaemon``, ``--logger``, ``--syslog``); without them (not
    run by twistd) the log would go to standard output.  ``publisher`` adds an extra
    observer (default: the global log publisher).
    """
    lc = cfg.log
    set_python_levels(lc)
    twistd = getattr(options, "parent", None)
    target = "-" if twistd is None else twistd_target(twistd)
    path = lc.file or target
    if path is None:
        return None  # --logger / --syslog without [log] file: twistd's choice alone
    if path == "-" and twistd is not None and not twistd.get("nodaemon"):
        # twistd's own check, which its observer no longer makes: the log would be lost
        raise ConfigError(cfg.source, "(twistd --logfile -)",
                          "a daemon cannot log to standard output: add --nodaemon, or"
                          " give a file (--logfile FILE or [log] file)")
    if path == "-":
        out = stdout or sys.stdout
    else:
        out = open_file(path, lc, source=cfg.source)
        if twistd is not None:
            rotate_on_sigusr1(out)
    observer = observer_for(lc, out)
    if target is None:  # twistd logs as told; the configured file in addition
        (publisher or globalLogPublisher.addObserver)(observer)
    else:
        install_main(observer)
    return observer

