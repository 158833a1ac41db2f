"""``bankgate report``: the standard reports (报表统计) as CSV, XLSX, JSON or PDF.

``bankgate report NAME --from D --to D [--bank B] [--by ...] [--format ...] [--out PATH]``
runs one report of the catalogue (:mod:`bankgate.domain.reports`) and writes it with the
exporters of :mod:`bankgate.domain.reporting`; ``bankgate report list`` lists them.
What was asked is checked before any SQL runs (dates in order, at most ten years, a
configured bank, the report's own dimensions).  Reports only read: no --actor.

:func:`find_report` is the one place a name becomes a report: it asks the catalogue
(:mod:`bankgate.app.report_catalogue`, the console's too), which also finds the custom
reports (TOML definitions) and the supply reports.  ``docs/reports.rst`` is the manual.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from bankgate.app import wiring
from bankgate.app.cli import custom_report
from bankgate.app.cli.argtypes import date_arg
from bankgate.app.cli.common import _load, _store
from bankgate.app.report_catalogue import SUPPLY_REPORTS, Catalogue
from bankgate.domain import reporting, reports


def catalogue(cfg) -> Catalogue:
    """The configuration's reports, on the configuration's clock: "today" is the
    date in its time zone, as the gateway's trade dates are (just after midnight in
    Shanghai, a machine on UTC is still on yesterday)."""
    now = wiring.wall_clock(cfg)
    return Catalogue.for_config(cfg, now=now, today=lambda: now().date())


def find_report(name: str, cfg) -> Callable:
    """A runner ``fn(store, params) -> ReportTable`` for ``name``: a standard report
    (checked against the configuration's banks), a custom report (``name`` is the
    file's path when ``--definition`` was given) or a supply report.
    Raises :class:`~bankgate.domain.reports.ReportError`."""
    return catalogue(cfg).find(name, files=True).run


def check_report(name: str, cfg, params: dict) -> None:
    """Validate ``params`` for a standard report before opening the database."""
    if name in reports.CATALOGUE:
        catalogue(cfg).find(name).check(params)


def default_path(cfg, name: str, fmt: str, params: dict) -> Path:
    """``<reports output dir>/<name>_<from>_<to>_<time>.<fmt>`` (default ``var/reports``)."""
    folder = (cfg.reports.outputs_dir(cfg.data_dir) if hasattr(cfg, "reports")
              else str(Path(cfg.data_dir) / "reports"))
    span = "_".join(f"{d:%Y%m%d}" for d in (params.get("from"), params.get("to")) if d)
    stamp = f"{datetime.now():%H%M%S}"
    return Path(folder) / f"{name}_{span}_{stamp}.{fmt}"


def cmd_report(args) -> int:
    cfg = _load(args.config)
    params = {"from": args.date_from, "to": args.date_to or wiring.wall_clock(cfg)().date(),
              "bank": args.bank,
              "by": args.by}
    check_report(args.name, cfg, params)  # bad input: refused before the database opens
    runner = find_report(args.name, cfg)
    store = _store(cfg, create_n8=cfg.n8_create)  # as the service starts it
    try:
        table = runner(store, params)
        out = args.out
        if out is None and args.format in ("xlsx", "pdf"):
            out = default_path(cfg, table.name, args.format, table.params)
        try:
            n = reporting.export(table, args.format, sys.stdout if out is None else out)
        except BrokenPipeError:  # `| head`: the reader has what it wanted
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so the exit flush is quiet
            return 0
    finally:
        store.stop()
    if out is not None:
        print(f"{out}: {n} rows")
    return 0


def cmd_report_list(args) -> int:
    for rep in reports.CATALOGUE.values():
        by = f"  [--by {','.join(rep.dims)}; default {','.join(rep.default_by)}]" if (
            rep.dims) else ""
        print(f"{rep.name:16} {rep.title}: {rep.summary}{by}")
    for name, (_, summary, _) in SUPPLY_REPORTS.items():  # supply status (开栓/停栓)
        print(f"{name:16} {summary}")
    return 0


DESCRIPTION = """\
Run a report (报表) over the gateway's database and N8 and write it as CSV (to
standard output unless --out), XLSX, JSON or PDF (with charts). The figures are
summed by the database; nothing is changed. `bankgate report list` names the
reports; docs/reports.rst describes each one and its columns.

--from and --to are dates (YYYY-MM-DD), at most ten years apart; --to defaults
to today, --from to the first of --to's month (arrears and collection-rate: no
lower limit). --bank must be a configured bank. XLSX and PDF go to --out, or
into the reports folder ([reports] output_dir, default <data dir>/reports), and
the path is printed. Exit status 0 written; 2 with one line naming the problem
when asked something wrong; 1 when the database cannot be read."""


def add_cli(sub) -> None:
    """Register ``bankgate report`` on the ``bankgate`` parser."""
    c = sub.add_parser(
        "report", help="reports: collections, arrears, collection rate, recon, invoices, ...",
        description=DESCRIPTION,
        epilog=(
            "examples:\n"
            "  bankgate report list\n"
            "  bankgate report collections --from 2026-11-01 --to 2026-11-30\n"
            "  bankgate report collections --from 2026-11-01 --to 2026-11-30"
            " --by day,bank,channel --format xlsx --out nov.xlsx\n"
            "  bankgate report arrears --to 2026-11-30 --format pdf\n"
            "  bankgate report collection-rate --from 2026-07-01 --to 2027-06-30"
            " --format json\n"
            "  bankgate report recon --from 2026-11-01 --to 2026-11-30 --bank demo-delim\n"
            "  bankgate report --definition docs/examples/reports/payments-by-channel.toml\n"
            "  bankgate report check docs/examples/reports/arrears-by-district.toml\n"
            "  bankgate report arrears-by-district --format xlsx   # a name in [reports] dir"))
    c.add_argument("name", nargs="?", default=None,
                   help="a report (see `bankgate report list`), or `list`")
    c.add_argument("--definition", type=Path, default=None,
                   help="a custom report's definition file (.toml) instead of NAME")
    c.add_argument("--from", dest="date_from", type=date_arg, default=None,
                   help="first date, YYYY-MM-DD (default: the first of --to's month)")
    c.add_argument("--to", dest="date_to", type=date_arg, default=None,
                   help="last date, YYYY-MM-DD (default: today)")
    c.add_argument("--bank", default=None, help="only this configured bank")
    c.add_argument("--by", default=None,
                   help="collections: dimensions, comma-separated, from day, bank, channel,"
                        " fee_type, district, customer_class (default day,bank);"
                        " arrears: district (default) or customer (one row each)")
    c.add_argument("--format", choices=reporting.FORMATS, default="csv",
                   help="csv (default), xlsx, json or pdf")
    c.add_argument("--out", type=Path, default=None,
                   help="the file to write (default: CSV/JSON to standard output,"
                        " XLSX/PDF into the reports folder)")
    c.set_defaults(func=_dispatch)
    custom_report.add_arguments(c)  # check FILE


def _dispatch(args) -> int:
    if args.name == "check":  # a custom report definition: validate, show the SQL's shape
        return custom_report.cmd_check(args)
    if args.definition is not None:
        if args.name is not None:
            raise ValueError("give a report NAME or --definition FILE, not both")
        args.name = str(args.definition)  # custom reports' finder takes the path
    if args.name is None:
        raise ValueError("name a report (bankgate report list) or give --definition FILE")
    if args.name == "list":
        return cmd_report_list(args)
    return cmd_report(args)
