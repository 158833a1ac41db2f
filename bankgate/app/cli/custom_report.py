"""``bankgate report`` for custom reports: ``--definition FILE.toml``, a name found in
``[reports] dir``, and ``bankgate report check FILE`` (validate only, print the SQL's
shape).  The standard command (``bankgate/app/cli/report.py``) parses, runs and writes;
the catalogue (:mod:`bankgate.app.report_catalogue`) finds and runs definitions; this
module checks one (``docs/custom-reports.rst``)."""

from __future__ import annotations

import sys

from bankgate.app import wiring
from bankgate.app.cli.common import _load
from bankgate.app.report_catalogue import Catalogue
from bankgate.domain import custom_reports, reports


def add_arguments(c) -> None:
    """The custom-report arguments of the ``report`` parser (``--definition`` is the
    standard command's)."""
    c.add_argument("definition_file", nargs="?", default=None, metavar="FILE",
                   help="with `check`: a definition file, or a name in [reports] dir")


def _definition(ref: str, cfg) -> custom_reports.ReportDefinition:
    """A file path, or a name in the configured folder."""
    defn = Catalogue.for_config(cfg, now=wiring.wall_clock(cfg)).definition(ref, files=True)
    if defn is None:
        raise ValueError(f"no report definition {ref!r} in"
                         f" {cfg.reports.definitions_dir(cfg.data_dir)}")
    return defn


def cmd_check(args) -> int:
    ref = args.definition_file or (str(args.definition) if args.definition else None)
    if not ref:
        print("bankgate report check: name the definition file", file=sys.stderr)
        return 2
    cfg = _load(args.config)
    defn = _definition(ref, cfg)
    store = wiring.store(cfg)  # the mapping and the dialect: no connection is made
    try:
        # the SQL runs on N8's database (its own with [n8.database]): in its dialect
        print(custom_reports.describe(defn, store.n8, store.n8_engine.dialect))
    finally:
        store.engine.dispose()
        store.n8_engine.dispose()
    if defn.name in reports.CATALOGUE:
        print(f"  note: {defn.name!r} is a standard report's name: `bankgate report"
              f" {defn.name}` runs the standard one; run this one with --definition,"
              " or rename it")
    return 0

