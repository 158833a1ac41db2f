"""``twistd bankgate``: the options and the service maker.

The only place that touches the global reactor: it hands it to the service.
"""

from __future__ import annotations

import logging
import sys

from twisted.logger import Logger, LogLevel
from twisted.python import usage

from bankgate.app.config import ConfigError, load_config


class Options(usage.Options):
    synopsis = "[--config FILE] [--data-dir DIR]"
    longdesc = (
        "Run the bankgate collection gateway.  Without --config it runs the embedded "
        "default: SQLite under ./var/, demo customers, one demo bank per reference plugin "
        "on loopback."
    )
    optParameters = [
        ["config", "c", None, "the TOML configuration file"],
        ["data-dir", "d", None, "the data folder (default ./var or [gateway] data_dir)"],
    ]


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


def makeService(options):
    from twisted.internet import reactor

    route_python_logging()

    try:
        cfg = load_config(options["config"], data_dir=options["data-dir"])
        return gateway(cfg, reactor)
    except ConfigError as e:
        sys.stderr.write(f"bankgate: configuration error: {e}\n")
        raise SystemExit(2) from None
    except Exception as e:  # noqa: BLE001 - e.g. an unreadable TLS certificate
        sys.stderr.write(f"bankgate: cannot start: {type(e).__name__}: {e}\n")
        raise SystemExit(1) from None
