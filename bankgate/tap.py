"""``twistd bankgate``: the options and the service maker.

The only place that touches the global reactor: it hands it to the service.
"""

from __future__ import annotations

import sys

from twisted.python import usage

from bankgate.config import ConfigError, load_config


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


def makeService(options):
    from twisted.internet import reactor

    from bankgate.service import GatewayService

    try:
        cfg = load_config(options["config"], data_dir=options["data-dir"])
        return GatewayService(cfg, reactor)
    except ConfigError as e:
        sys.stderr.write(f"bankgate: configuration error: {e}\n")
        raise SystemExit(2) from None
