"""A small streaming XLSX writer: the sheets' XML written as text straight into the zip.

A report of a million rows must export in well under the 90 seconds issue 11 allows and
in bounded memory.  openpyxl's write-only mode kept the memory flat but spent 150 s on
its per-cell objects and XML writer; this module writes what a spreadsheet needs and
nothing more -- a minimal SpreadsheetML package (content types, relationships, the
workbook, a style sheet of the few number formats reports use, one XML part per sheet)
with text as inline strings, so no shared-string table has to be held until the end.
Each sheet's rows are encoded in batches into its zip entry as they come
(``ZipFile.open(name, "w")``, zip64 so a sheet may pass 4 GB), so memory does not grow
with the rows.

A column's *kind* (``bankgate.domain.reporting.Column.kind``) chooses the number
format: ``fen`` (integer fen, written in yuan with ``#,##0.00``), ``ratio``
(``0.00%``), ``int`` and ``days`` (``0``); dates and datetimes are date serials shown
``yyyy-mm-dd`` (``hh:mm:ss``) whatever the kind; other values are text.
"""

from __future__ import annotations

import math
import re
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from decimal import Decimal
from itertools import repeat

from bankgate.canon.money import fen_to_yuan

_HEAD = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG_REL = "http://schemas.openxmlformats.org/package/2006/relationships"
_CT = "application/vnd.openxmlformats-officedocument.spreadsheetml"

# number formats: (numFmtId, custom format code or None for a built-in one); a cell's
# style index is 2 × the format's position + 1 if bold
_FORMATS = ((0, None), (164, "#,##0.00"), (10, None), (165, "yyyy-mm-dd"), (1, None),
            (166, "yyyy-mm-dd hh:mm:ss"))
_KIND_FORMAT = {"fen": 1, "ratio": 2, "int": 4, "days": 4}
_DATE, _DATETIME = 3, 5
_EPOCH = datetime(1899, 12, 30)  # Excel's day 0 (1900 date system, past its leap bug)
_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
MAX_TEXT = 32767  # the longest text a cell holds in Excel


def _text(v: str) -> str:
    """Text fit for an XML element: characters XML 1.0 cannot hold left out, escaped."""
    v = _ILLEGAL.sub("", v[:MAX_TEXT])
    return v.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _column(i: int) -> str:
    name = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        name = chr(65 + r) + name
    return name


def _cell(ref: str, kind: str | None, v, bold: int) -> str:
    """One ``<c>`` element; '' for an empty cell (its neighbours carry their own refs)."""
    if v is None:
        return f'<c r="{ref}" s="{bold}"/>' if bold else ""
    if isinstance(v, bool):
        return f'<c r="{ref}" s="{bold}" t="b"><v>{int(v)}</v></c>'
    if isinstance(v, int) or (isinstance(v, float) and math.isfinite(v)) or (
            isinstance(v, Decimal) and v.is_finite()):
        if kind == "fen" and isinstance(v, int):
            v = fen_to_yuan(v)
        return f'<c r="{ref}" s="{2 * _KIND_FORMAT.get(kind, 0) + bold}"><v>{v}</v></c>'
    if isinstance(v, datetime):
        serial = (v.replace(tzinfo=None) - _EPOCH).total_seconds() / 86400
        return f'<c r="{ref}" s="{2 * _DATETIME + bold}"><v>{serial!r}</v></c>'
    if isinstance(v, date):
        serial = v.toordinal() - _EPOCH.toordinal()
        return f'<c r="{ref}" s="{2 * _DATE + bold}"><v>{serial}</v></c>'
    t = _text(str(v))
    space = ' xml:space="preserve"' if t[:1].isspace() or t[-1:].isspace() else ""
    return f'<c r="{ref}" s="{bold}" t="inlineStr"><is><t{space}>{t}</t></is></c>'


class Sheet:
    """Rows appended one by one, encoded into the sheet's zip entry in batches."""

    BATCH = 1000

    def __init__(self, out) -> None:
        self._out, self._buf, self._n, self._refs = out, [], 0, []
        out.write(f'{_HEAD}<worksheet xmlns="{_MAIN}"><sheetData>'.encode())

    def row(self, values: Sequence, kinds: Sequence[str | None] = (), bold: bool = False,
            ) -> None:
        """Append a row; ``kinds`` (per column, as the report's columns) chooses the
        number formats, ``bold`` the font (headings and totals)."""
        if kinds and len(kinds) != len(values):
            raise ValueError(f"a row of {len(values)} values for {len(kinds)} columns")
        self._n += 1
        n, b = self._n, int(bold)
        while len(self._refs) < len(values):
            self._refs.append(_column(len(self._refs)))
        cells = zip(self._refs, kinds or repeat(None), values, strict=False)  # refs: longer
        self._buf.append(f'<row r="{n}">' + "".join(_cell(f"{ref}{n}", k, v, b)
                                                     for ref, k, v in cells) + "</row>")
        if len(self._buf) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        self._out.write("".join(self._buf).encode("utf-8"))
        self._buf.clear()

    def close(self) -> None:
        self._flush()
        self._out.write(b"</sheetData></worksheet>")


class Book:
    """A workbook written to ``path`` (a new file): sheets one after the other, then, on
    :meth:`close`, the parts that name them."""

    def __init__(self, path) -> None:
        self._zip = zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1)
        self._names: list[str] = []

    def __enter__(self) -> Book:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:  # the caller removes the half-written file
            self._zip.close()

    @contextmanager
    def sheet(self, name: str) -> Iterator[Sheet]:
        self._names.append(name)
        part = f"xl/worksheets/sheet{len(self._names)}.xml"
        with self._zip.open(part, "w", force_zip64=True) as out:
            sheet = Sheet(out)
            yield sheet
            sheet.close()

    def close(self) -> None:
        sheets = range(1, len(self._names) + 1)
        parts = {
            "[Content_Types].xml": (
                '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
                '<Default Extension="rels" ContentType="application/vnd.openxmlformats-'
                'package.relationships+xml"/><Default Extension="xml" ContentType='
                f'"application/xml"/><Override PartName="/xl/workbook.xml" ContentType='
                f'"{_CT}.sheet.main+xml"/><Override PartName="/xl/styles.xml" ContentType='
                f'"{_CT}.styles+xml"/>' + "".join(
                    f'<Override PartName="/xl/worksheets/sheet{i}.xml" ContentType='
                    f'"{_CT}.worksheet+xml"/>' for i in sheets) + "</Types>"),
            "_rels/.rels": (
                f'<Relationships xmlns="{_PKG_REL}"><Relationship Id="rId1" Type='
                f'"{_REL}/officeDocument" Target="xl/workbook.xml"/></Relationships>'),
            "xl/workbook.xml": (
                f'<workbook xmlns="{_MAIN}" xmlns:r="{_REL}"><sheets>' + "".join(
                    f'<sheet name="{_text(name)}" sheetId="{i}" r:id="rId{i}"/>'
                    for i, name in enumerate(self._names, 1)) + "</sheets></workbook>"),
            "xl/_rels/workbook.xml.rels": (
                f'<Relationships xmlns="{_PKG_REL}">' + "".join(
                    f'<Relationship Id="rId{i}" Type="{_REL}/worksheet" '
                    f'Target="worksheets/sheet{i}.xml"/>' for i in sheets)
                + f'<Relationship Id="rId{len(sheets) + 1}" Type="{_REL}/styles" '
                'Target="styles.xml"/></Relationships>'),
            "xl/styles.xml": _styles(),
        }
        for name, text in parts.items():
            self._zip.writestr(name, _HEAD + text)
        self._zip.close()


def _styles() -> str:
    custom = [(i, code) for i, code in _FORMATS if code]
    xfs = "".join(f'<xf numFmtId="{i}" fontId="{bold}" fillId="0" borderId="0" xfId="0"'
                  f' applyNumberFormat="1" applyFont="1"/>'
                  for i, _code in _FORMATS for bold in (0, 1))
    return (f'<styleSheet xmlns="{_MAIN}"><numFmts count="{len(custom)}">'
            + "".join(f'<numFmt numFmtId="{i}" formatCode="{code}"/>' for i, code in custom)
            + '</numFmts><fonts count="2"><font><sz val="11"/><name val="Calibri"/></font>'
            '<font><b/><sz val="11"/><name val="Calibri"/></font></fonts>'
            '<fills count="2"><fill><patternFill patternType="none"/></fill>'
            '<fill><patternFill patternType="gray125"/></fill></fills>'
            '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border>'
            '</borders><cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0"'
            f' borderId="0"/></cellStyleXfs><cellXfs count="{2 * len(_FORMATS)}">{xfs}'
            '</cellXfs><cellStyles count="1"><cellStyle name="Normal" xfId="0"'
            ' builtinId="0"/></cellStyles></styleSheet>')
