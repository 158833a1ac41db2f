"""The report catalogue: every report ``bankgate report`` and the console's report page
can run, found by name, each with the parameters it takes.

Three kinds of report:

- **standard** -- :data:`bankgate.domain.reports.CATALOGUE` (collections, arrears,
  collection-rate, recon, invoices, withholding);
- **supply** -- ``supplied-unpaid`` and ``paid-closed`` (:mod:`bankgate.domain.supply`);
- **custom** -- the TOML definitions of ``[reports] dir``
  (:mod:`bankgate.domain.custom_reports`); on the command line also a definition
  file's path (``--definition``), never from the console.

A name is looked up standard first, then custom, then supply: a definition named like
a standard report runs only by its file (``bankgate report check`` says so).  Each
entry declares its parameters (:class:`Param`: what the console's form shows), checks
what it was asked before any SQL runs (:meth:`check`, raising a :class:`FieldError`
that names the parameter), and runs synchronously on a store -- in the command, or on a
worker thread of the service: ``entry.run(store, params) -> ReportTable``.

It lives here, below both the command line (``app.cli``) and the console
(``app.console``), because the console may not import the command line.
``docs/reports.rst``, ``docs/custom-reports.rst`` and ``docs/supply.rst`` are the manuals.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from bankgate.domain import custom_reports, reports
from bankgate.domain.ledger import COUNTER
from bankgate.domain.reporting import ReportTable
from bankgate.domain.reports import ReportError
from bankgate.domain.supply import SupplyError, SupplySettings, WorkOrders, check_season, season_of

KINDS = ("standard", "supply", "custom")  # the order the console lists them in

#: the supply reports: name -> (title, summary for ``bankgate report list``, description
#: for the console's form, which asks for the season itself)
SUPPLY_REPORTS = {
    "supplied-unpaid": (
        "供暖未缴费 Supplied but unpaid",
        "households supplied (valve open) but unpaid for the season of --to, by district"
        " (--by customer: each household)",
        "households supplied (valve open) but unpaid for the season, by district or each"
        " household"),
    "paid-closed": (
        "已缴费未开栓 Paid but still closed",
        "households paid for the season of --to but still closed, by district"
        " (--by customer: each household)",
        "households paid for the season but still closed, by district or each household"),
}
MAX_DISTRICT = 40  # as the work-order page's district filter

_FLAG = re.compile(r"--(from|to|bank|by)\b")


class FieldError(ReportError):
    """What a report was asked is wrong; ``field`` names the parameter (a
    :class:`Param` name, or ``name`` for the report itself)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def field_of(error: Exception) -> str | None:
    """The parameter an error is about: a :class:`FieldError`'s field, else the first
    option the message names (the domain's messages say ``--from``, ``--bank``, ...);
    ``None`` when it names none (not a parameter's fault)."""
    if isinstance(error, FieldError):
        return error.field
    m = _FLAG.search(str(error))
    return m.group(1) if m else None


def _refused(error: Exception, default: str) -> FieldError:
    return FieldError(field_of(error) or default, str(error))


@dataclass(frozen=True)
class Param:
    """One parameter a report takes: the console shows it as a field of the form."""

    name: str  # the form's field and the key in params: from, to, bank, by, season, district
    label: str
    kind: str  # "date", "bank" (a configured bank, or every bank), "text" or "choice"
    help: str = ""  # what may be given, and the default
    choices: tuple[tuple[str, str], ...] = ()  # a choice's (value, label); "" = the default
    placeholder: str = ""
    max_length: int = 80


# -- the three kinds -------------------------------------------------------------------------


class StandardEntry:
    """A report of :data:`bankgate.domain.reports.CATALOGUE`, checked against the
    configured banks."""

    kind = "standard"

    def __init__(self, rep: reports.Report, banks: list[str], today: Callable[[], date]):
        self.rep, self.banks, self.today = rep, banks, today
        self.name, self.title, self.description = rep.name, rep.title, rep.summary

    @property
    def params(self) -> tuple[Param, ...]:
        rep = self.rep
        out = [Param("from", "From", "date",
                     "default: the first of To's month" if rep.needs_from
                     else "default: no lower limit", placeholder="YYYY-MM-DD", max_length=10),
               Param("to", "To", "date", "default: today", placeholder="YYYY-MM-DD",
                     max_length=10)]
        if rep.per_bank:
            out.append(Param("bank", "Bank", "bank", "default: every bank"))
        if rep.dims:
            out.append(Param("by", "By", "text",
                             f"{', '.join(rep.dims)}; comma-separated;"
                             f" default {','.join(rep.default_by)}",
                             placeholder=",".join(rep.default_by)))
        return tuple(out)

    def check(self, params: dict) -> dict:
        """The parameters checked and completed (``to`` defaults to today)."""
        try:
            return self.rep.validate({**params, "to": params.get("to") or self.today()},
                                     self.banks)
        except ReportError as e:
            raise _refused(e, "from") from None

    def run(self, store, params: dict) -> ReportTable:
        return self.rep.run(store, params, self.banks)


class SupplyEntry:
    """``supplied-unpaid`` or ``paid-closed``: for the season ``season`` names, else
    the one ``to`` falls in (the command's ``--to``), else today's; by district, or each
    household (``by = customer``); one district or all."""

    kind = "supply"
    params = (
        Param("season", "Season", "text",
              "a heating season, as the heating bills' period; default: today's",
              placeholder="2026-2027", max_length=16),
        Param("district", "District", "text", "default: every district",
              max_length=MAX_DISTRICT),
        Param("by", "By", "choice", "by district, or one row per household",
              choices=(("", "district"), ("customer", "customer (each household)"))),
    )

    def __init__(self, name: str, settings: SupplySettings, now: Callable[[], datetime]):
        self.name, self.settings, self.now = name, settings, now
        self.title, _, self.description = SUPPLY_REPORTS[name]

    def check(self, params: dict) -> dict:
        if params.get("bank"):
            raise FieldError("bank", f"report {self.name} is not per bank: leave out --bank")
        by = params.get("by") or ""
        if by not in ("", "district", "customer"):
            raise FieldError("by", f"--by {by!r}: report {self.name} groups by district"
                                   " (default) or lists each customer (--by customer)")
        season = params.get("season") or None
        if season is not None:
            try:
                check_season(season)
            except SupplyError as e:
                raise FieldError("season", str(e)) from None
        district = params.get("district") or None
        if district is not None and len(district) > MAX_DISTRICT:
            raise FieldError("district", f"district: at most {MAX_DISTRICT} characters")
        return {**params, "by": by or None, "season": season, "district": district}

    def run(self, store, params: dict) -> ReportTable:
        params = self.check(params)  # no SQL on bad input
        season = params["season"] or (season_of(params["to"]) if params.get("to") else None)
        orders = WorkOrders(store, self.settings, self.now)
        build = orders.supplied_unpaid if self.name == "supplied-unpaid" else orders.paid_closed
        return build(season, detail=params["by"] == "customer", district=params["district"])


def range_text(spec, today: date) -> str:
    """A definition's default range as the form says it: ``last_month (2026-10-01 to
    2026-10-31)``, or ``all dates``."""
    rng = custom_reports.resolve_range(spec, today)
    if rng is None:
        return "all dates"
    named = f"{spec} " if isinstance(spec, str) else ""
    return f"{named}({rng[0]} to {rng[1]})"


class CustomEntry:
    """A custom report definition: ``from`` and ``to`` replace its default range (when
    it counts rows that have a date); nothing else."""

    kind = "custom"

    def __init__(self, defn: custom_reports.ReportDefinition, today: Callable[[], date]):
        self.defn, self.today = defn, today
        self.name, self.title, self.description = defn.name, defn.title, defn.description

    @property
    def params(self) -> tuple[Param, ...]:
        if self.defn.date_column is None:
            return ()
        default = range_text(self.defn.default_range, self.today())
        return (Param("from", "From", "date", f"default: {default}", placeholder="YYYY-MM-DD",
                      max_length=10),
                Param("to", "To", "date", "with From; default: today",
                      placeholder="YYYY-MM-DD", max_length=10))

    def check(self, params: dict) -> dict:
        date_from, date_to = params.get("from"), params.get("to")
        if date_to is not None and date_from is None:
            raise FieldError("from", f"{self.name}: --to needs --from (or neither: the"
                                     " definition's default range)")
        try:
            self.defn.date_range(self.today(), date_from, date_to)
        except ValueError as e:
            raise _refused(e, "from") from None
        return {"from": date_from, "to": date_to}

    def run(self, store, params: dict) -> ReportTable:
        """As ``bankgate report`` asks: ``to`` alone, when it is today (the command's
        default), means the definition's default range."""
        date_from, date_to = params.get("from"), params.get("to")
        today = self.today()
        if date_from is None:
            if date_to not in (None, today):
                raise ValueError(f"{self.defn.name}: --to needs --from (or neither: the"
                                 " definition's default range)")
            date_to = None
        return custom_reports.run(self.defn, store, today, date_from, date_to)


Entry = StandardEntry | SupplyEntry | CustomEntry


# -- the definitions of [reports] dir ------------------------------------------------------


def is_file(ref: str) -> bool:
    """Does ``ref`` name a definition file rather than a report?"""
    return ref.endswith(".toml") or "/" in ref or "\\" in ref or Path(ref).is_file()


def load_definitions(folder) -> tuple[list[custom_reports.ReportDefinition],
                                      list[custom_reports.DefinitionError]]:
    """Every definition of ``folder`` that checks, and the errors of those that do not
    (the console lists the first, the scheduler runs those with a schedule)."""
    return custom_reports.load_folder(folder)


@dataclass
class Listing:
    """The whole catalogue as it stands: each name once (as :meth:`Catalogue.find`
    would find it), and why a definition is not there."""

    entries: list = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def find(self, name: str) -> Entry:
        for e in self.entries:
            if e.name == name:
                return e
        raise FieldError("name", f"no report {name!r} (reports:"
                                 f" {', '.join(e.name for e in self.entries)})")

    def groups(self) -> list[tuple[str, list]]:
        """``[(kind, entries)]`` in :data:`KINDS` order, kinds without any left out."""
        return [(k, es) for k in KINDS if (es := [e for e in self.entries if e.kind == k])]


class Catalogue:
    """The reports of one configuration: its banks, its ``[supply]`` settings, its
    definitions folder; ``now`` / ``today`` are the caller's clock."""

    def __init__(self, *, banks: Iterable[str], definitions_dir, supply: SupplySettings,
                 now: Callable[[], datetime], today: Callable[[], date] | None = None):
        self.banks = list(banks)
        self.definitions_dir = Path(definitions_dir)
        self.supply = supply
        self.now = now
        self.today = today or (lambda: now().date())

    @classmethod
    def for_config(cls, cfg, now: Callable[[], datetime],
                   today: Callable[[], date] | None = None) -> Catalogue:
        # the utility's own counter collects too (its payments' bank is ``counter``)
        return cls(banks=[*(b.name for b in cfg.banks), COUNTER.name],
                   definitions_dir=cfg.reports.definitions_dir(cfg.data_dir),
                   supply=cfg.supply, now=now, today=today)

    def standard(self) -> list[StandardEntry]:
        return [StandardEntry(r, self.banks, self.today) for r in reports.CATALOGUE.values()]

    def supply_reports(self) -> list[SupplyEntry]:
        return [SupplyEntry(n, self.supply, self.now) for n in SUPPLY_REPORTS]

    def definition(self, ref: str, files: bool = False) -> custom_reports.ReportDefinition | None:
        """The definition ``ref`` names: a file's path when ``files`` (the command line
        only: the console never reads a file it is named), else a name in the
        definitions folder; ``None``: there is none.  A broken file raises
        :class:`~bankgate.domain.custom_reports.DefinitionError`."""
        if files and is_file(ref):
            return custom_reports.load_definition(ref)
        return custom_reports.find_definition(self.definitions_dir, ref)

    def find(self, name: str, files: bool = False) -> Entry:
        """The report ``name``: standard, else a definition (its path too, when
        ``files``), else a supply report.  Raises :class:`ReportError` naming the
        standard reports when there is none."""
        if name in reports.CATALOGUE:
            return StandardEntry(reports.CATALOGUE[name], self.banks, self.today)
        defn = self.definition(name, files)
        if defn is not None:
            return CustomEntry(defn, self.today)
        if name in SUPPLY_REPORTS:
            return SupplyEntry(name, self.supply, self.now)
        raise ReportError(f"no report {name!r} (reports: {', '.join(reports.CATALOGUE)})")

    def listing(self) -> Listing:
        """Every report, reading the definitions folder (blocking: on a worker thread
        in the service).  A definition that does not check, or is named like a
        standard report, is left out and said why."""
        standard = self.standard()
        taken = {e.name for e in standard}
        custom, problems = [], []
        try:
            defs, errors = load_definitions(self.definitions_dir)
        except OSError as e:  # the standard and supply reports still run
            defs, errors = [], []
            problems.append(f"the definitions folder cannot be read: {e.strerror or e}")
        for e in errors:
            problems.append(f"{Path(e.source).name}: not listed: the definition does not"
                            " check (bankgate report check names its problems)")
        for d in defs:
            if d.name in taken:
                problems.append(f"{Path(d.source).name}: {d.name!r} is a standard report's"
                                " name: the standard one runs here")
                continue
            custom.append(CustomEntry(d, self.today))
            taken.add(d.name)
        supply = [e for e in self.supply_reports() if e.name not in taken]
        return Listing(standard + supply + custom, problems)
