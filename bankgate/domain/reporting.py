"""The shape every report has, and the exporters that write it (报表导出).

A report -- standard (``bankgate/domain/reports.py``), custom (a TOML definition) or
the supply-status lists -- is a :class:`ReportTable`: typed columns, rows that may be a
generator (a million-row export streams: consume once), optional totals, and the
charts that should accompany it on paper.  Exporters take a table and write CSV,
XLSX, JSON or PDF; none of them knows which report it is writing.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from bankgate.canon.files import fsync_dir
from bankgate.canon.money import fen_to_yuan, grouped_yuan
from bankgate.domain import xlsx

COLUMN_KINDS = ("text", "int", "fen", "date", "ratio", "days")
CHART_KINDS = ("bar", "line", "stacked_bar")
FORMATS = ("csv", "xlsx", "json", "pdf")


@dataclass(frozen=True)
class Column:
    name: str  # machine name, used in CSV/JSON headers: "bank", "count", "amount"
    label: str  # heading for people (Chinese + English ok): "银行 bank"
    kind: str  # "text" | "int" | "fen" (integer fen, shown as yuan 0.00) | "date"
    #            | "ratio" (0..1, shown as a percentage) | "days"


@dataclass(frozen=True)
class Chart:
    kind: str  # "bar" | "line" | "stacked_bar"
    title: str
    x: str  # column name on the x axis
    y: tuple[str, ...]  # column names plotted
    series: str | None = None  # a column whose values split the data into series


@dataclass
class ReportTable:
    name: str  # "collections"
    title: str  # "收费统计 Collections"
    params: dict  # what it was asked: {"from": date, "to": date, "bank": ..., ...}
    columns: tuple[Column, ...]
    rows: Iterable[tuple]  # may be a generator (large exports stream): consume once
    totals: tuple | None = None  # one row of totals where it makes sense
    charts: tuple[Chart, ...] = ()
    notes: tuple[str, ...] = field(default=())  # e.g. "DRY RUN", "empty: no payments"


# -- values --------------------------------------------------------------------------

PDF_MAX_ROWS = 2000  # rows the PDF's table shows; CSV, XLSX and JSON always have all
CHART_MAX_CATEGORIES = 40  # bars a bar chart shows (the largest); a line shows every point


def _text(kind: str, v) -> str:
    """A value as CSV and the PDF write it: money in yuan (0.00), ratios as 0.0000."""
    if v is None:
        return ""
    if kind == "fen" and isinstance(v, int):
        return fen_to_yuan(v)
    if kind == "ratio" and isinstance(v, (int, float)):
        return f"{v:.4f}"
    if isinstance(v, (date, datetime)):
        return v.isoformat()
    return str(v)


def _shown(kind: str, v) -> str:
    """A value as people read it (PDF): thousands grouped, ratios as percentages."""
    if v is None:
        return ""
    if kind == "fen" and isinstance(v, int):
        return grouped_yuan(v)
    if kind == "ratio" and isinstance(v, (int, float)):
        return f"{v * 100:.2f}%"
    if kind in ("int", "days") and isinstance(v, int):
        return f"{v:,}"
    return _text(kind, v)


def _json_value(kind: str, v):
    if isinstance(v, (date, datetime)):
        return v.isoformat()
    if kind == "ratio" and isinstance(v, float):
        return round(v, 6)
    return v


def _param_text(params: dict) -> str:
    parts = []
    for k, v in params.items():
        if v is None or v == () or v == "":
            continue
        if isinstance(v, (tuple, list)):
            v = ",".join(map(str, v))
        parts.append(f"{k}={v}")
    return "  ".join(parts)


@contextmanager
def _atomic(path) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed over it once written whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


# -- CSV and JSON (streaming to a text file object) ------------------------------------


def write_csv(table: ReportTable, fileobj) -> int:
    """The rows as CSV (header: the column names; money in yuan, 0.00), streamed.
    Totals and notes are not written: a CSV is data for another program.  Returns the
    number of rows."""
    w = csv.writer(fileobj, lineterminator="\n")
    w.writerow([c.name for c in table.columns])
    kinds = [c.kind for c in table.columns]
    n = 0
    for row in table.rows:
        w.writerow([_text(k, v) for k, v in zip(kinds, row, strict=True)])
        n += 1
    return n


def write_json(table: ReportTable, fileobj) -> int:
    """One JSON object: name, title, params, columns, rows (objects keyed by column
    name; money in integer fen, ratios 0..1), totals, notes.  Rows are written one by one
    (streamed).  Returns the number of rows."""
    names = [c.name for c in table.columns]
    kinds = [c.kind for c in table.columns]

    def obj(row):
        return {n: _json_value(k, v) for n, k, v in zip(names, kinds, row, strict=True)}

    def dump(v) -> str:
        return json.dumps(v, ensure_ascii=False, default=str)

    params = {k: _json_value("", list(v) if isinstance(v, tuple) else v)
              for k, v in table.params.items()}
    fileobj.write("{" + f'"name": {dump(table.name)}, "title": {dump(table.title)}, '
                  f'"params": {dump(params)},\n "columns": '
                  + dump([{"name": c.name, "label": c.label, "kind": c.kind}
                          for c in table.columns]) + ',\n "rows": [')
    n = 0
    for row in table.rows:
        fileobj.write(("\n  " if n == 0 else ",\n  ") + dump(obj(row)))
        n += 1
    totals = None if table.totals is None else obj(table.totals)
    fileobj.write(("\n ]" if n else "]") + f',\n "totals": {dump(totals)},'
                  f'\n "notes": {dump(list(table.notes))}\n' + "}\n")
    return n


# -- XLSX (bankgate.domain.xlsx: the sheet's XML streamed into the zip) ----------------


def write_xlsx(table: ReportTable, path) -> int:
    """A workbook: sheet ``report`` with the headings (labels, bold), the rows (money as
    numbers in yuan with a ``#,##0.00`` format, ratios as percentages, dates as dates)
    and the totals (bold); sheet ``about`` with the title, parameters, notes and the row
    count.  Rows are written as they come (:mod:`bankgate.domain.xlsx`), so memory stays
    flat however many; atomically.  Returns the number of rows."""
    kinds = [c.kind for c in table.columns]
    n = 0
    with _atomic(path) as tmp, xlsx.Book(tmp) as book:
        with book.sheet("report") as ws:
            ws.row([c.label for c in table.columns], bold=True)
            for row in table.rows:
                ws.row(row, kinds)
                n += 1
            if table.totals is not None:
                ws.row(table.totals, kinds, bold=True)
        with book.sheet("about") as about:
            about.row([table.title], bold=True)
            about.row(["report", table.name])
            for k, v in table.params.items():
                about.row([k, _text("", ",".join(map(str, v)) if isinstance(v, (tuple, list))
                                    else v)])
            for note in table.notes:
                about.row(["note", note])
            about.row(["rows", n])
    return n


# -- PDF (reportlab, with the charts drawn by matplotlib) ------------------------------


@dataclass
class _ChartData:
    """What a chart needs, gathered while the rows stream past: y per (x, series)."""

    chart: Chart
    ix: int
    iy: tuple[int, ...]
    iseries: int | None
    kinds: tuple[str, ...]
    values: dict = field(default_factory=dict)  # (x, series) -> [y...]

    def add(self, row) -> None:
        x = row[self.ix]
        s = row[self.iseries] if self.iseries is not None else None
        ys = [row[i] for i in self.iy]
        key = (x, s)
        if key not in self.values:
            self.values[key] = [0 if v is None else v for v in ys]
        else:  # rows of the same point (e.g. several classes of one district) add up
            old = self.values[key]
            for j, v in enumerate(ys):
                if v is not None:
                    old[j] = (v if self.kinds[j] == "ratio" else old[j] + v)


def _chart_data(table: ReportTable) -> list[_ChartData]:
    index = {c.name: i for i, c in enumerate(table.columns)}
    out = []
    for ch in table.charts:
        if ch.x not in index or any(y not in index for y in ch.y) or (
                ch.series is not None and ch.series not in index):
            continue  # a chart over a column the table lacks: nothing to draw
        out.append(_ChartData(ch, index[ch.x], tuple(index[y] for y in ch.y),
                              None if ch.series is None else index[ch.series],
                              tuple(table.columns[index[y]].kind for y in ch.y)))
    return out


def _font_properties():
    """matplotlib's font for CJK labels: the gateway's own (bankgate.domain.pdffonts);
    None (matplotlib's default, CJK shown as boxes) if it is missing."""
    try:
        from matplotlib.font_manager import FontProperties

        from bankgate.domain.pdffonts import cjk_font_path

        return FontProperties(fname=str(cjk_font_path()))
    except Exception:  # noqa: BLE001 - a chart without CJK glyphs beats no report
        return None


def render_chart(data: _ChartData, fmt: str = "png", dpi: int = 150) -> bytes:
    """One chart as PNG (or SVG) bytes, drawn with matplotlib's Agg canvas (no pyplot,
    no display, safe in a worker thread)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    ch = data.chart
    fp = _font_properties()
    fkw = {"fontproperties": fp} if fp is not None else {}
    fig = Figure(figsize=(9, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = list(dict.fromkeys(k[0] for k in data.values))
    series = list(dict.fromkeys(k[1] for k in data.values))
    ratio = data.kinds[0] == "ratio"

    def y(x, s, j=0):
        v = data.values.get((x, s), [0] * len(data.iy))[j]
        if data.kinds[j] == "fen":
            return v / 100
        return v * 100 if ratio else v

    if ch.kind != "line" and len(xs) > CHART_MAX_CATEGORIES:
        total = {x: sum(abs(y(x, s)) for s in series) for x in xs}
        xs = sorted(xs, key=lambda x: -total[x])[:CHART_MAX_CATEGORIES]
    labels = [_text("", x) for x in xs]
    pos = list(range(len(xs)))
    names = [s if s is not None else ch.y[0] for s in series]
    if ch.kind == "line":
        for s, name in zip(series, names, strict=True):
            ax.plot(pos, [y(x, s) for x in xs], marker="o" if len(xs) < 40 else None,
                    label=str(name))
    elif ch.kind == "stacked_bar":
        bottom = [0.0] * len(xs)
        for s, name in zip(series, names, strict=True):
            h = [y(x, s) for x in xs]
            ax.bar(pos, h, bottom=bottom, label=str(name))
            bottom = [b + v for b, v in zip(bottom, h, strict=True)]
    else:
        width = 0.8 / max(1, len(series))
        for j, (s, name) in enumerate(zip(series, names, strict=True)):
            ax.bar([p + (j - (len(series) - 1) / 2) * width for p in pos],
                   [y(x, s) for x in xs], width, label=str(name))
    step = max(1, len(xs) // 20)
    ax.set_xticks(pos[::step])
    ax.set_xticklabels(labels[::step], rotation=45 if len(xs) > 6 else 0, ha="right"
                       if len(xs) > 6 else "center", **fkw)
    unit = "%" if ratio else ("yuan 元" if data.kinds[0] == "fen" else "")
    ax.set_ylabel(unit, **fkw)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}" if abs(v) >= 10
                                               else f"{v:,.2f}"))
    ax.set_title(ch.title, **fkw)
    if len(series) > 1 or series[:1] != [None]:
        ax.legend(prop=fp, fontsize="small") if fp is not None else ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi)
    return buf.getvalue()


def _pdf_font() -> str:
    """The embedded CJK font (bankgate.domain.pdffonts); reportlab's built-in CID font
    ``STSong-Light`` (named, not embedded) if that module or its font is missing."""
    try:
        from bankgate.domain.pdffonts import cjk_font_name

        return cjk_font_name()
    except Exception:  # noqa: BLE001 - fall back rather than fail the export
        from reportlab.pdfbase import pdfmetrics
        from reportlab.pdfbase.cidfonts import UnicodeCIDFont

        pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
        return "STSong-Light"


def write_pdf(table: ReportTable, path, *, max_rows: int = PDF_MAX_ROWS) -> int:
    """A landscape A4 PDF: title, parameters, notes, the charts, then the table (its
    headings repeated on every page, totals in bold).  The table shows the first
    ``max_rows`` rows (the charts are drawn over all of them; a note says how many were
    left out).  CJK text in the gateway's embedded font.  Returns the number of rows."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import mm
    from reportlab.platypus import (
        Image,
        LongTable,
        Paragraph,
        SimpleDocTemplate,
        Spacer,
        TableStyle,
    )

    font = _pdf_font()
    kinds = [c.kind for c in table.columns]
    charts = _chart_data(table)
    shown, n = [], 0
    for row in table.rows:
        for cd in charts:
            cd.add(row)
        if n < max_rows:
            shown.append([_shown(k, v) for k, v in zip(kinds, row, strict=True)])
        n += 1
    title = ParagraphStyle("t", fontName=font, fontSize=15, leading=19, spaceAfter=4)
    small = ParagraphStyle("s", fontName=font, fontSize=8, leading=10)
    cell = ParagraphStyle("c", fontName=font, fontSize=7, leading=8.5)
    story = [Paragraph(_esc(table.title), title), Paragraph(_esc(_param_text(table.params)),
                                                           small)]
    notes = list(table.notes)
    if n > max_rows:
        notes.append(f"the table shows the first {max_rows:,} of {n:,} rows;"
                     " the CSV / XLSX export has every row")
    for note in notes:
        story.append(Paragraph(_esc(note), small))
    story.append(Spacer(1, 4 * mm))
    page_w = landscape(A4)[0] - 30 * mm
    for cd in charts:
        if cd.values:
            png = render_chart(cd)
            story.append(Image(io.BytesIO(png), width=page_w * 0.8, height=page_w * 0.32))
            story.append(Spacer(1, 3 * mm))
    head = [Paragraph(_esc(c.label), cell) for c in table.columns]
    body = [head, *shown]
    if table.totals is not None:
        body.append([_shown(k, v) for k, v in zip(kinds, table.totals, strict=True)])
    t = LongTable(body, repeatRows=1, colWidths=[page_w / len(table.columns)]
                  * len(table.columns))
    style = [
        ("FONTNAME", (0, 0), (-1, -1), font), ("FONTSIZE", (0, 0), (-1, -1), 7),
        ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8e8e8")),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
    ]
    for i, k in enumerate(kinds):
        if k in ("int", "fen", "ratio", "days"):
            style.append(("ALIGN", (i, 1), (i, -1), "RIGHT"))
    if table.totals is not None:
        style.append(("BACKGROUND", (0, -1), (-1, -1), colors.HexColor("#f4f4f4")))
    t.setStyle(TableStyle(style))
    story.append(t)
    with _atomic(path) as tmp:
        doc = SimpleDocTemplate(str(tmp), pagesize=landscape(A4), leftMargin=15 * mm,
                                rightMargin=15 * mm, topMargin=12 * mm, bottomMargin=12 * mm,
                                title=table.title,
                                initialFontName=font)  # else pages name Helvetica, unembedded
        doc.build(story)
    return n


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- choosing one ----------------------------------------------------------------------


def export(table: ReportTable, fmt: str, path_or_stdout) -> int:
    """Write ``table`` as ``fmt`` (:data:`FORMATS`) to a path, or -- CSV and JSON only --
    to a text file object such as ``sys.stdout``.  Returns the number of rows."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (formats: {', '.join(FORMATS)})")
    if fmt in ("xlsx", "pdf"):
        if not isinstance(path_or_stdout, (str, os.PathLike)):
            raise ValueError(f"{fmt} is written to a file: give a path")
        return (write_xlsx if fmt == "xlsx" else write_pdf)(table, path_or_stdout)
    writer = write_csv if fmt == "csv" else write_json
    if isinstance(path_or_stdout, (str, os.PathLike)):
        with _atomic(path_or_stdout) as tmp:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                n = writer(table, f)
        return n
    return writer(table, path_or_stdout)
