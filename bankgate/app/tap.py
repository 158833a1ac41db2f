"""``twistd bankgate``: the options and the service maker.

The only place that touches the global reactor: it hands it to the service.
It finds the configuration as the ``bankgate`` command does
(:func:`~bankgate.app.config.find_config`: ``--config``, ``$BANKGATE_CONFIG``,
``/etc/bankgate/bankgate.toml``; the demo only with ``--demo`` or, said loudly
on standard error, when there is none), and checks what can be checked before
twistd forks (:func:`~bankgate.app.startup.preflight`: the data folder's lock,
the ports, the database), so that each failure is one line and exit status 1.

With ``--workers N`` (or ``[gateway] workers = N``) this process supervises N worker
processes serving the banks (``app/workers.py``); each of them is ``twistd bankgate
--worker-of ...``, started by the supervisor, never by hand (:func:`worker`).
"""

from __future__ import annotations

import logging
import sys

from twisted.logger import Logger, LogLevel
from twisted.python import usage

from bankgate.app import startup
from bankgate.app.config import (
    MAX_WORKERS,
    ConfigError,
    config_from_bytes,
    default_db_threads,
    find_config,
    load_config,
    with_workers,
)
from bankgate.app.logs import configure as configure_logging


class Options(usage.Options):
    synopsis = "[--config FILE | --demo] [--data-dir DIR] [--workers N]"
    longdesc = (
        "Run the bankgate collection gateway.  The configuration is --config, else "
        "$BANKGATE_CONFIG, else /etc/bankgate/bankgate.toml.  --demo runs the embedded "
        "demo: SQLite under ./var/, demo customers, one demo bank per reference plugin "
        "on loopback (it also runs, with a warning, when no configuration is found)."
    )
    optFlags = [
        ["demo", None, "run the embedded demo configuration"],
    ]
    optParameters = [
        ["config", "c", None,
         "the TOML configuration file (default: $BANKGATE_CONFIG, /etc/bankgate/bankgate.toml)"],
        ["data-dir", "d", None, "the data folder (default ./var or [gateway] data_dir)"],
        ["workers", None, None,
         f"processes serving the banks, 1 to {MAX_WORKERS} (default [gateway] workers, 1);"
         " more than 1 needs a database server"],
        ["worker-of", None, None,
         "internal: set by the gateway on its own worker processes, never by hand"],
    ]

    def postOptions(self):
        if self["demo"] and self["config"]:
            raise usage.UsageError("give --config or --demo, not both")
        if self["workers"] is not None:
            try:
                self["workers"] = int(self["workers"])
            except ValueError:
                raise usage.UsageError(f"--workers: expected a number of processes, 1 to"
                                       f" {MAX_WORKERS}, got {self['workers']!r}") from None


class _ToTwistedLog(logging.Handler):
    """Python ``logging`` records (ledger, store, plugins) into twistd's log."""

    _levels = {logging.DEBUG: LogLevel.debug, logging.INFO: LogLevel.info,
               logging.WARNING: LogLevel.warn, logging.ERROR: LogLevel.error,
               logging.CRITICAL: LogLevel.critical}

    def emit(self, record: logging.LogRecord) -> None:
        level = self._levels.get(record.levelno, LogLevel.info)
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 - a bad log call must not stop the service
            text = repr(record.msg)
        Logger(namespace=record.name).emit(level, "{text}", text=text)


def route_python_logging(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if not any(isinstance(h, _ToTwistedLog) for h in root.handlers):
        root.addHandler(_ToTwistedLog())
    root.setLevel(level)
    for noisy in ("ibm_db_sa", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def gateway(cfg, reactor):
    """The gateway service for ``cfg``, with the demo's parts where it asks for them."""
    from bankgate.app.demo import Demo
    from bankgate.app.service import GatewayService

    return GatewayService(cfg, reactor, demo=Demo())


def worker(options, reactor):
    """One worker process of a supervisor (``--worker-of``, ``app/workers.py``): the
    configuration is the bytes the supervisor read, sent on standard input; the log
    goes back to the supervisor; no lock and no port check (the supervisor holds them)."""
    from bankgate.app import workers
    from bankgate.app.service import GatewayService

    try:
        spec = workers.WorkerSpec.parse(options["worker-of"])
        side, source, raw = workers.WorkerSide.from_stdio(spec, reactor)
        cfg = config_from_bytes(raw, source, data_dir=options["data-dir"])
        if not cfg.db_threads_given:  # one of several, whatever the file's workers say
            cfg.db_threads = default_db_threads(cfg, one_process=False)
        workers.worker_logging(side.channel, cfg)
        return GatewayService(cfg, reactor, worker=side)
    except (ConfigError, ValueError, startup.StartupError) as e:
        sys.stderr.write(f"bankgate: worker cannot start: {e}\n")
        raise SystemExit(1) from None


def makeService(options):
    from twisted.internet import reactor

    route_python_logging()
    if options["worker-of"]:
        return worker(options, reactor)

    try:
        choice = find_config(options["config"], demo=options["demo"])
        notice = choice.notice(options["data-dir"])
        if notice:
            sys.stderr.write(notice + "\n")
        cfg = load_config(choice.path, data_dir=options["data-dir"])
        if options["workers"] is not None:  # wins over [gateway] workers
            with_workers(cfg, options["workers"])
        configure_logging(cfg, options)  # [log]: levels, form, file, rotation (app/logs.py)
        gw = gateway(cfg, reactor)
        # before twistd forks: the lock, the ports, the database -- one line each
        gw.lock = startup.preflight(cfg, gw.store, gw.listen_endpoints())
        gw.report = startup.StartReport(getattr(options, "parent", None))
        return gw
    except ConfigError as e:
        sys.stderr.write(f"bankgate: configuration error: {e}\n")
        raise SystemExit(2) from None
    except startup.StartupError as e:
        sys.stderr.write(f"bankgate: cannot start: {e}\n")
        raise SystemExit(1) from None
    except Exception as e:  # noqa: BLE001 - e.g. a data folder that cannot be created
        sys.stderr.write(f"bankgate: cannot start: {type(e).__name__}: {e}\n")
        raise SystemExit(1) from None
