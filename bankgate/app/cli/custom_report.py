"""``bankgate report`` for custom reports: ``--definition FILE.toml``, a name found in
``[reports] dir``, and ``bankgate report check FILE`` (validate only, print the SQL's
shape).  The standard command (``bankgate/app/cli/report.py``) parses and writes; this
module finds, checks and runs definitions (``docs/custom-reports.rst``)."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

from bankgate.app import wiring
from bankgate.app.cli.common import _load
from bankgate.domain import custom_reports, reports


def add_arguments(c) -> None:
    """The custom-report arguments of the ``report`` parser (``--definition`` is the
    standard command's)."""
    c.add_argument("definition_file", nargs="?", default=None, metavar="FILE",
                   help="with `check`: a definition file, or a name in [reports] dir")


def _is_file(ref: str) -> bool:
    return ref.endswith(".toml") or "/" in ref or "\\" in ref or Path(ref).is_file()


def _definition(ref: str, cfg) -> custom_reports.ReportDefinition:
    """A file path, or a name in the configured folder."""
    if _is_file(ref):
        return custom_reports.load_definition(ref)
    folder = cfg.reports.definitions_dir(cfg.data_dir)
    defn = custom_reports.find_definition(folder, ref)
    if defn is None:
        raise ValueError(f"no report definition {ref!r} in {folder}")
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
        print(custom_reports.describe(defn, store.n8, store.engine.dialect))
    finally:
        store.engine.dispose()
    if defn.name in reports.CATALOGUE:
        print(f"  note: {defn.name!r} is a standard report's name: `bankgate report"
              f" {defn.name}` runs the standard one; run this one with --definition,"
              " or rename it")
    return 0


def finder(name: str, cfg):
    """A :data:`bankgate.app.cli.report.FINDERS` entry: the runner of the custom
    report ``name``: a file (``--definition``), or a name found in ``[reports] dir``.
    A file's problems raise :class:`~bankgate.domain.custom_reports.DefinitionError`."""
    if _is_file(name):
        defn = custom_reports.load_definition(name)
    else:
        defn = custom_reports.find_definition(cfg.reports.definitions_dir(cfg.data_dir), name)
    if defn is None:
        return None

    def runner(store, params):
        date_from, date_to = params.get("from"), params.get("to")
        today = date.today()
        if date_from is None:
            if date_to not in (None, today):
                raise ValueError(f"{defn.name}: --to needs --from (or neither: the"
                                 " definition's default range)")
            date_to = None
        return custom_reports.run(defn, store, today, date_from, date_to)

    return runner
