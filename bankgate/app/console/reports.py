"""The reports page (报表统计): ``/reports`` and its downloads ``/reports/export``.

A form names a report of the catalogue (:data:`bankgate.domain.reports.CATALOGUE`)
and what it is asked (from, to, bank, by); the page shows the first :data:`SHOWN`
rows as a table, with the totals and the notes, money in yuan.  The downloads run the
same report and send it as CSV, XLSX, JSON or PDF.  GET only: a report reads, it
changes nothing.

Every report runs on the store's pool (``store.call``), never on the reactor thread:
the table is built and its rows consumed there, and an export is written there to a
temporary file, which the reactor then sends (``FileSender``) and deletes.  What the
report was asked is checked by the report itself (:meth:`Report.validate`) before any
SQL runs; a refusal is shown next to the form (400).  Templates autoescape.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from datetime import date, datetime
from itertools import islice

from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.web import resource
from twisted.web.server import NOT_DONE_YET

from bankgate.canon.money import fen_to_yuan
from bankgate.domain import reporting, reports
from bankgate.domain.reports import ReportError
from bankgate.store.db import StoreUnavailable

log = Logger(namespace="bankgate.console.reports")

SHOWN = 500  # rows the page shows; the downloads have every row
FIELDS = ("name", "from", "to", "bank", "by")
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


def _date(field: str, text: str) -> date | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise ReportError(f"{field}: expected a date as YYYY-MM-DD, got {text!r}") from None


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


class ReportPages(resource.Resource):
    """``/reports`` (the form and the table); ``/reports/export`` is mounted beneath."""

    def __init__(self, console, store, banks: Iterable[str], today: Callable[[], date]):
        super().__init__()
        self.console, self.store, self.banks, self.today = console, store, list(banks), today

    # -- what was asked ---------------------------------------------------------------

    def params(self, request) -> tuple[dict, reports.Report | None, dict]:
        """The form's fields, the report they name (None: the form alone) and its
        parameters.  Raises :class:`ReportError` naming a bad field."""
        form = {k: arg(request, k) for k in FIELDS}
        if not form["name"]:
            return form, None, {}
        rep = reports.find(form["name"])
        params = {"from": _date("from", form["from"]),
                  "to": _date("to", form["to"]) or self.today(),
                  "bank": form["bank"] or None, "by": form["by"] or None}
        rep.validate(params, self.banks)  # bad input: refused before the pool is asked
        return form, rep, params

    def run(self, rep: reports.Report, params: dict) -> reporting.ReportTable:
        """On the pool: the report's table (rows not yet read)."""
        return rep.run(self.store, params, self.banks)

    # -- /reports ---------------------------------------------------------------------

    def render_GET(self, request):
        ctx = {"reports": list(reports.CATALOGUE.values()), "banks": self.banks,
               "error": "", "table": None, "query": ""}
        try:
            form, rep, params = self.params(request)
        except ReportError as e:
            form = {k: arg(request, k) for k in FIELDS}
            return self._page(request, 400, form=form, **{**ctx, "error": str(e)})
        ctx["form"] = form
        if rep is None:
            return self._page(request, 200, **ctx)
        ctx["query"] = "&".join(f"{k}={_quote(form[k])}" for k in FIELDS if form[k])
        d = self.store.call(lambda: shown(self.run(rep, params)))

        def ok(table):
            return self._page(request, 200, **{**ctx, "table": table})

        def refused(f):
            f.trap(ReportError, ValueError)
            return self._page(request, 400, **{**ctx, "error": str(f.value)})

        d.addCallbacks(ok, refused).addErrback(failed_page, self.console, request)
        return answer(request, d)

    def _page(self, request, status: int, **ctx) -> bytes:
        return self.console.page(request, "reports.html", status, title="Reports", **ctx)


class ReportExport(resource.Resource):
    """``/reports/export?name=…&format=csv|xlsx|json|pdf``: the report as a download."""

    isLeaf = True

    def __init__(self, pages: ReportPages):
        super().__init__()
        self.pages = pages

    def render_GET(self, request):
        console = self.pages.console
        fmt = arg(request, "format") or "csv"
        try:
            if fmt not in reporting.FORMATS:
                raise ReportError(f"format {fmt!r}: expected one of"
                                  f" {', '.join(reporting.FORMATS)}")
            form, rep, params = self.pages.params(request)
            if rep is None:
                raise ReportError("name: choose a report")
        except ReportError as e:
            return console.page(request, "refused.html", 400, title="Bad request",
                                message=str(e))
        d = self.pages.store.call(self._write, rep, params, fmt)

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

        def refused(f):
            f.trap(ReportError, ValueError)
            return console.page(request, "refused.html", 400, title="Bad request",
                                message=str(f.value))

        d.addCallbacks(send, refused).addErrback(failed_page, console, request)
        d.addCallback(lambda body: _write_body(request, body))
        return NOT_DONE_YET

    def _write(self, rep: reports.Report, params: dict, fmt: str) -> tuple[str, str]:
        """On the pool: the report written to a temporary file; its path and the name
        the browser saves it as."""
        table = self.pages.run(rep, params)
        fd, path = tempfile.mkstemp(prefix="bankgate-report-", suffix="." + fmt)
        os.close(fd)
        try:
            reporting.export(table, fmt, path)
        except BaseException:
            _unlink(path)
            raise
        span = "_".join(f"{d:%Y%m%d}" for d in (params.get("from"), params.get("to")) if d)
        return path, f"{rep.name}_{span}.{fmt}"


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


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


def mount(console, store, banks: Iterable[str], today: Callable[[], date]) -> ReportPages:
    """Mount ``/reports`` and ``/reports/export`` for viewers on ``console``."""
    pages = ReportPages(console, store, banks, today)
    console.mount("reports", pages, role="viewer")
    console.mount("reports/export", ReportExport(pages), role="viewer")
    return pages
