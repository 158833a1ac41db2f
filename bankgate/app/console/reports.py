"""The reports page (报表统计): ``/reports`` and its downloads ``/reports/export``.

Every report of the catalogue (:mod:`bankgate.app.report_catalogue`): the standard
reports, the supply reports (supplied-unpaid, paid-closed) and the custom reports of
``[reports] dir`` -- read again for each request, on the store's pool, so a new
definition shows without a restart.  Without a report named the page lists them all,
with their titles and descriptions; ``?name=X&choose=1`` shows the form of X, with the
parameters X takes (dates, bank and dimensions; season and district; a custom
report's dates when it has any).  Run, the page shows the first :data:`SHOWN`
rows as a table, with the totals and the notes, money in yuan; the downloads run the
same report and send it in every format ``bankgate report`` writes (CSV, XLSX, JSON,
PDF).  GET only: a report reads, it changes nothing.

What was asked is checked before any SQL runs: each date is parsed, then the report
checks the rest (``entry.check``); every refusal is shown next to its field (400), a
download asked wrongly gets the same page and no file.  Fields the report does not
take are ignored (another report's form may have sent them).  Every report runs on the
store's pool (``store.call``), never on the reactor thread: the table is built and its
rows consumed there, and an export is written there to a temporary file, which the
reactor then sends (``FileSender``) and deletes.  Templates autoescape.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from datetime import date, datetime
from itertools import islice
from urllib.parse import urlencode

from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.web import resource
from twisted.web.server import NOT_DONE_YET

from bankgate.app.report_catalogue import Catalogue, Entry, FieldError, Listing, field_of
from bankgate.canon.money import fen_to_yuan
from bankgate.domain import reporting
from bankgate.domain.reports import ReportError
from bankgate.store.db import StoreUnavailable

log = Logger(namespace="bankgate.console.reports")

SHOWN = 500  # rows the page shows; the downloads have every row
FIELDS = ("from", "to", "bank", "by", "season", "district")  # every parameter there is
KIND_TITLES = {"standard": "Standard reports", "supply": "Supply status (开栓/停栓)",
               "custom": "Custom reports"}
CONTENT_TYPES = {
    "csv": b"text/csv; charset=utf-8",
    "json": b"application/json; charset=utf-8",
    "xlsx": b"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pdf": b"application/pdf",
}


def arg(request, name: str) -> str:
    values = request.args.get(name.encode()) or [b""]
    try:
        return values[0].decode("utf-8").strip()
    except UnicodeDecodeError:
        return "\ufffd"


def _date(name: str, text: str) -> date | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise FieldError(name, f"{name}: expected a date as YYYY-MM-DD, got {text!r}") from None


@dataclass
class Asked:
    """What a request asks: the fields as typed, the report they name (None: the list
    alone), its parameters as checked, and the refusals by field (``""``: none)."""

    form: dict[str, str]
    entry: Entry | None = None
    params: dict = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def query(self) -> str:
        """The query string that asks the same again (the downloads' links)."""
        if self.entry is None:
            return ""
        pairs = [("name", self.entry.name)] + [
            (p.name, self.form[p.name]) for p in self.entry.params if self.form.get(p.name)]
        return urlencode(pairs)

    def general(self) -> list[str]:
        """The refusals that belong to no field the page shows."""
        shown_fields = {"name", *(p.name for p in self.entry.params)} if self.entry else {
            "name"}
        return [m for f, m in self.errors.items() if f not in shown_fields]


def read_form(request) -> dict[str, str]:
    return {k: arg(request, k) for k in ("name", *FIELDS)}


def ask(listing: Listing, form: dict[str, str], run: bool = True) -> Asked:
    """Find the report ``form`` names and, when ``run``, parse and check its own
    parameters: every date, then the report's check.  No SQL."""
    asked = Asked(form)
    if not form["name"]:
        return asked
    try:
        asked.entry = listing.find(form["name"])
    except FieldError as e:
        asked.errors[e.field] = str(e)
        return asked
    if not run:
        return asked
    for p in asked.entry.params:
        text = form.get(p.name, "")
        try:
            asked.params[p.name] = _date(p.name, text) if p.kind == "date" else text or None
        except FieldError as e:
            asked.errors[e.field] = str(e)
    if not asked.errors:
        try:
            asked.params = asked.entry.check(asked.params)
        except ReportError as e:
            asked.errors[field_of(e) or ""] = str(e)
    return asked


def cell(kind: str, v) -> str:
    """A value as the page shows it: money in yuan (0.00), ratios as percentages."""
    if v is None:
        return ""
    if kind == "fen" and isinstance(v, int):
        return fen_to_yuan(v)
    if kind == "ratio" and isinstance(v, (int, float)):
        return f"{v * 100:.2f}%"
    if isinstance(v, (date, datetime)):
        return v.isoformat()
    return str(v)


def shown(table: reporting.ReportTable, limit: int = SHOWN) -> dict:
    """What the page needs of ``table`` (on the pool: consumes its rows): the headings,
    the first ``limit`` rows as text, whether there were more, the totals, the notes."""
    kinds = [c.kind for c in table.columns]
    rows = list(islice(iter(table.rows), limit + 1))
    more = len(rows) > limit
    return {
        "title": table.title,
        "columns": [(c.label, c.kind) for c in table.columns],
        "rows": [[cell(k, v) for k, v in zip(kinds, r, strict=True)] for r in rows[:limit]],
        "more": more,
        "totals": None if table.totals is None
        else [cell(k, v) for k, v in zip(kinds, table.totals, strict=True)],
        "notes": list(table.notes),
    }


def file_name(table: reporting.ReportTable, fmt: str) -> str:
    """The name a download is saved as: the report, its dates (or season), the format."""
    p = table.params
    span = [f"{d:%Y%m%d}" for d in (p.get("from"), p.get("to")) if isinstance(d, date)]
    if not span and p.get("season"):
        span = [str(p["season"])]
    return "_".join([table.name, *span]) + "." + fmt


class ReportPages(resource.Resource):
    """``/reports`` (the list, a report's form and its table); ``/reports/export`` is
    mounted beneath."""

    def __init__(self, console, store, catalogue: Catalogue):
        super().__init__()
        self.console, self.store, self.catalogue = console, store, catalogue

    def listing(self) -> defer.Deferred:
        """On the pool (it reads the definitions folder): the catalogue's listing."""
        return self.store.call(self.catalogue.listing)

    def run(self, entry: Entry, params: dict) -> reporting.ReportTable:
        """On the pool: the report's table (rows not yet read)."""
        return entry.run(self.store, params)

    # -- /reports ---------------------------------------------------------------------

    def render_GET(self, request):
        form = read_form(request)
        choose = bool(arg(request, "choose"))
        if choose:  # another report's form: start from its defaults
            form = {k: (v if k == "name" else "") for k, v in form.items()}

        def asked(listing: Listing):
            a = ask(listing, form, run=not choose)
            if a.errors:
                return self.page(request, 400, listing, a)
            if a.entry is None or choose:
                return self.page(request, 200, listing, a)
            d = self.store.call(lambda: shown(self.run(a.entry, a.params)))
            d.addCallbacks(lambda table: self.page(request, 200, listing, a, table),
                           refused, errbackArgs=(listing, a))
            return d

        def refused(f, listing, a):
            f.trap(ReportError, ValueError)
            a.errors[field_of(f.value) or ""] = str(f.value)
            return self.page(request, 400, listing, a)

        d = self.listing()
        d.addCallback(asked).addErrback(failed_page, self.console, request)
        return answer(request, d)

    def page(self, request, status: int, listing: Listing, asked: Asked,
             table: dict | None = None) -> bytes:
        return self.console.page(
            request, "reports.html", status, title="Reports", listing=listing,
            kinds=KIND_TITLES, asked=asked, form=asked.form, entry=asked.entry,
            errors=asked.errors, general=asked.general(), banks=self.catalogue.banks,
            table=table, query=asked.query(), formats=reporting.FORMATS)


class ReportExport(resource.Resource):
    """``/reports/export?name=…&format=csv|xlsx|json|pdf``: the report as a download."""

    isLeaf = True

    def __init__(self, pages: ReportPages):
        super().__init__()
        self.pages = pages

    def render_GET(self, request):
        pages = self.pages
        form = read_form(request)
        fmt = arg(request, "format") or "csv"

        def asked(listing: Listing):
            a = ask(listing, form)
            if fmt not in reporting.FORMATS:
                a.errors.setdefault("format", f"format {fmt!r}: expected one of"
                                              f" {', '.join(reporting.FORMATS)}")
            if a.entry is None and not a.errors:
                a.errors["name"] = "name: choose a report"
            if a.errors:
                return pages.page(request, 400, listing, a)
            d = pages.store.call(self._write, a.entry, a.params, fmt)
            d.addCallbacks(send, refused, errbackArgs=(listing, a))
            return d

        def send(path_name):
            path, name = path_name
            request.setHeader(b"content-type", CONTENT_TYPES[fmt])
            request.setHeader(b"content-disposition",
                              f'attachment; filename="{name}"'.encode("ascii"))
            request.setHeader(b"content-length", str(os.path.getsize(path)).encode())
            f = open(path, "rb")  # noqa: SIM115 - closed once sent
            sent = FileSender().beginFileTransfer(f, request)

            def done(_):
                f.close()
                _unlink(path)
                if not request.finished and not getattr(request, "_disconnected", False):
                    request.finish()

            sent.addBoth(done)
            return None

        def refused(f, listing, a):
            f.trap(ReportError, ValueError)
            a.errors[field_of(f.value) or ""] = str(f.value)
            return pages.page(request, 400, listing, a)

        d = pages.listing()
        d.addCallback(asked).addErrback(failed_page, pages.console, request)
        d.addCallback(lambda body: _write_body(request, body))
        return NOT_DONE_YET

    def _write(self, entry: Entry, params: dict, fmt: str) -> tuple[str, str]:
        """On the pool: the report written to a temporary file; its path and the name
        the browser saves it as."""
        table = self.pages.run(entry, params)
        fd, path = tempfile.mkstemp(prefix="bankgate-report-", suffix="." + fmt)
        os.close(fd)
        try:
            reporting.export(table, fmt, path)
        except BaseException:
            _unlink(path)
            raise
        return path, file_name(table, fmt)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def failed_page(failure, console, request) -> bytes:
    if failure.check(StoreUnavailable):
        return console.page(request, "refused.html", 503, title="Database unavailable",
                            message="The database does not answer: the report cannot be"
                                    " run now. Try again in a moment.")
    log.failure("console: a report failed", failure)
    return console.page(request, "refused.html", 500, title="Error",
                        message="The report failed; the gateway's log says why.")


def _write_body(request, body) -> None:
    if body is not None and not request.finished:
        request.write(body)
        request.finish()


def answer(request, d: defer.Deferred):
    finished: list = []
    request.notifyFinish().addBoth(finished.append)

    def write(body):
        if not finished:
            request.write(body)
            request.finish()

    d.addCallback(write)
    return NOT_DONE_YET


def mount(console, store, catalogue: Catalogue) -> ReportPages:
    """Mount ``/reports`` and ``/reports/export`` for viewers on ``console``: the
    reports of ``catalogue`` (its banks, supply settings, definitions and clock)."""
    pages = ReportPages(console, store, catalogue)
    console.mount("reports", pages, role="viewer")
    console.mount("reports/export", ReportExport(pages), role="viewer")
    return pages
