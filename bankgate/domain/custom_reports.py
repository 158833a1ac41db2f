"""Custom reports (按用户要求定制): a TOML definition instead of code.

A utility's accountant asks for "arrears by district and customer class" or
"collections by bank and month"; the definition file says so in logical N8
names (``customer.district``, ``bill.amount``) and the store builds the SQL
through the N8 mapping (:mod:`bankgate.store.custom_reports`).  Everything is
checked here, before any SQL: unknown keys, columns that do not exist (with the
nearest name as a suggestion), a measure over a text column, a filter value of
the wrong type, a date range longer than :data:`MAX_RANGE_YEARS` years.  Each
error names the file, the line and the field, e.g.::

    reports/arrears.toml:12: measures[1].column: 'bill.amout' is not a column;
    did you mean 'bill.amount'?

``tomllib`` keeps no positions, so :func:`locate` reads the text once more for the
line of every key and array element.  ``docs/custom-reports.rst`` is the reference
of every key.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field
from datetime import date, time, timedelta
from pathlib import Path

from bankgate.domain.reporting import FORMATS, Chart, Column, ReportTable
from bankgate.store import custom_reports as sql

MAX_RANGE_YEARS = 10
MAX_LIMIT = 1_000_000
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
OUTPUT_RE = re.compile(r"[a-z_][a-z0-9_]{0,39}")
EMAIL_RE = re.compile(r"[^@\s<>,;\"']+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")

TOP_KEYS = ("name", "title", "description", "table", "dimensions", "measures", "filters",
            "date_column", "default_range", "sort", "limit", "chart", "schedule", "formats",
            "email")
DIM_KEYS = ("column", "grain", "name", "label")
MEASURE_KEYS = ("fn", "column", "name", "label")
FILTER_KEYS = ("column", "op", "value")
CHART_KEYS = ("kind", "title", "x", "y", "series")
RANGE_KEYS = ("from", "to")
CHART_KINDS = ("bar", "line", "stacked_bar")

# the column each fact's date range applies to, unless date_column says otherwise
DEFAULT_DATE_COLUMN = {"bill": "bill.due_date", "payment": "payment.pay_date",
                       "payment_item": "payment.pay_date", "customer": None}

RANGES = ("all", "today", "yesterday", "this_month", "last_month", "this_year", "last_year",
          "this_season", "last_season", "last_N_days")
SEASON_START_MONTH = 7  # a heating season "2026-2027" runs from 1 July 2026 to 30 June 2027

LABELS = {
    "customer.customer_no": "用户编号 customer",
    "customer.name": "用户名称 name",
    "customer.district": "片区 district",
    "customer.customer_class": "用户类别 class",
    "customer.heated_area": "供热面积 heated area m²",
    "customer.status": "状态 status",
    "customer.withholding_bank": "代扣银行 withholding bank",
    "bill.fee_type": "费用类型 fee type",
    "bill.period": "账期 period",
    "bill.amount": "应收 billed",
    "bill.paid_amount": "实收 paid",
    "bill.late_fee_paid": "滞纳金 late fees",
    "bill.outstanding": "欠费 outstanding",
    "bill.due_date": "缴费期限 due date",
    "payment.amount": "金额 amount",
    "payment.pay_date": "缴费日期 pay date",
    "payment.bank_code": "银行 bank",
    "payment.channel": "渠道 channel",
    "payment.status": "状态 status",
    "payment_item.principal": "本金 principal",
    "payment_item.late_fee": "滞纳金 late fee",
    "gateway_payment.bank": "银行 bank",
    "gateway_payment.late_fee": "滞纳金 late fee",
    "gateway_payment.principal": "本金 principal",
}
FN_LABELS = {"count": "笔数 count", "count_distinct": "户数 distinct", "sum": "合计 sum",
             "avg": "平均 avg", "min": "最小 min", "max": "最大 max"}


# -- errors, with lines ------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    line: int | None
    field: str  # "measures[1].column"
    message: str

    def text(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        return f"{where}: {self.field}: {self.message}" if self.field else (
            f"{where}: {self.message}")


class DefinitionError(ValueError):
    """A definition that cannot run: every problem found, each with its line."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source, self.problems = source, list(problems)
        super().__init__("\n".join(p.text(source) for p in self.problems))


def field_name(path: tuple) -> str:
    """``("measures", 1, "column")`` -> ``measures[1].column``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


_TOKEN = re.compile(r'''
    (?P<nl>\n) | (?P<ws>[ \t\r]+) | (?P<comment>\#[^\n]*)
  | (?P<mlb>"""(?:[^"\\]|\\.|"(?!""))*""""{0,2}) | (?P<mll>\'\'\'(?:[^']|'(?!''))*\'\'\''{0,2})
  | (?P<str>"(?:[^"\\\n]|\\.)*" | '[^'\n]*')
  | (?P<punct>[\[\]{},=.])
  | (?P<bare>[^\s\[\]{},=.\#"']+)
''', re.X | re.S)


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out, line, pos = [], 1, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:  # not TOML (tomllib said so first): stop quietly
            break
        kind, value = m.lastgroup, m.group()
        if kind in ("mlb", "mll", "str"):
            out.append(("str", value, line))
        elif kind == "punct":
            out.append((value, value, line))
        elif kind in ("nl", "bare"):
            out.append((kind, value, line))
        line += value.count("\n")
        pos = m.end()
    return out


class _Locator:
    """The line of every key, table header and array element of a TOML text:
    ``{("measures", 1, "column"): 12}``.  Run only on text tomllib accepted."""

    def __init__(self, text: str):
        self.toks = _tokens(text)
        self.i = 0
        self.lines: dict[tuple, int] = {}
        self.tables: dict[tuple, int] = {}

    def peek(self, k: int = 0):
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else ("end", "", 0)

    def take(self):
        t = self.peek()
        self.i += 1
        return t

    def skip_nl(self):
        while self.peek()[0] == "nl":
            self.i += 1

    def key(self) -> tuple:
        parts = []
        while True:
            kind, value, _ = self.take()
            if kind == "str":
                value = value[1:-1]
            parts.append(value)
            if self.peek()[0] != ".":
                return tuple(parts)
            self.i += 1

    def document(self) -> dict[tuple, int]:
        prefix: tuple = ()
        while self.peek()[0] != "end":
            kind, _, line = self.peek()
            if kind == "nl":
                self.i += 1
            elif kind == "[":
                self.i += 1
                many = self.peek()[0] == "["
                if many:
                    self.i += 1
                path = self.key()
                self.i += 2 if many else 1
                if many:
                    n = self.tables.get(path, -1) + 1
                    self.tables[path] = n
                    self.lines.setdefault(path, line)
                    path = path + (n,)
                prefix = path
                self.lines.setdefault(prefix, line)
            else:
                self.keyval(prefix)
        return self.lines

    def keyval(self, prefix: tuple) -> None:
        line = self.peek()[2]
        path = prefix + self.key()
        self.lines.setdefault(path, line)
        self.i += 1  # "="
        self.value(path)

    def value(self, path: tuple) -> None:
        kind = self.peek()[0]
        if kind == "[":
            self.i += 1
            n = 0
            while True:
                self.skip_nl()
                if self.peek()[0] in ("]", "end"):
                    self.i += 1
                    return
                self.lines.setdefault(path + (n,), self.peek()[2])
                self.value(path + (n,))
                self.skip_nl()
                if self.peek()[0] == ",":
                    self.i += 1
                    n += 1
        elif kind == "{":
            self.i += 1
            while self.peek()[0] not in ("}", "end"):
                if self.peek()[0] == ",":
                    self.i += 1
                    continue
                self.keyval(path)
            self.i += 1
        else:
            while self.peek()[0] not in (",", "]", "}", "nl", "end"):
                self.i += 1


def locate(text: str) -> dict[tuple, int]:
    """Line numbers of the keys of ``text`` (see :class:`_Locator`)."""
    loc = _Locator(text)
    try:
        return loc.document()
    except (IndexError, ValueError):  # a text the scanner did not follow: lines so far
        return loc.lines


class _Checker:
    """Collects problems, each located by its path."""

    def __init__(self, lines: dict[tuple, int]):
        self.lines = lines
        self.problems: list[Problem] = []

    def line(self, path: tuple) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None

    def add(self, path: tuple, message: str) -> None:
        self.problems.append(Problem(self.line(path), field_name(path), message))

    def keys(self, data: dict, known: tuple, path: tuple = ()) -> None:
        for k in data:
            if k not in known:
                self.add(path + (k,), f"unknown field{_did_you_mean(k, known)}"
                         f" (known: {', '.join(known)})")

    def text(self, data: dict, k: str, path: tuple, default=None, required=False):
        if k not in data:
            if required:
                self.add(path + (k,), "missing")
            return default
        v = data[k]
        if not isinstance(v, str) or not v.strip():
            self.add(path + (k,), f"expected text in quotes, got {_show(v)}")
            return default
        return v

    def column(self, data: dict, path: tuple, required: bool = True) -> str | None:
        name = self.text(data, "column", path, required=required)
        if name is None:
            return None
        if name not in sql.CATALOG:
            self.add(path + ("column",), f"{name!r} is not a column"
                     f"{_did_you_mean(name, tuple(sql.CATALOG))}")
            return None
        return name


def _did_you_mean(name: str, known) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _show(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return repr(v)
    return f"{type(v).__name__} {v!r}"


# -- the definition ----------------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    """One column of the result: a dimension or a measure."""

    name: str
    label: str
    kind: str  # a reporting.Column kind
    numeric: bool = False


@dataclass
class ReportDefinition:
    name: str
    title: str
    source: str
    fact: str
    dims: tuple[sql.Dim, ...]
    measures: tuple[sql.Measure, ...]
    filters: tuple[sql.Cond, ...]
    outputs: tuple[Output, ...]
    date_column: str | None
    default_range: object  # "last_month", ("between", from, to), or None: everything
    order: tuple[tuple[int, bool], ...] = ()
    limit: int | None = None
    chart: Chart | None = None
    description: str = ""
    schedule: time | None = None
    formats: tuple[str, ...] = ()
    email: tuple[str, ...] = ()
    lines: dict = field(default_factory=dict, repr=False)

    def columns(self) -> tuple[Column, ...]:
        return tuple(Column(o.name, o.label, o.kind) for o in self.outputs)

    def date_range(self, today: date, date_from: date | None = None,
                   date_to: date | None = None) -> tuple[date, date] | None:
        """The range a run reads: ``date_from`` / ``date_to`` (the command line's) or
        the definition's default, relative to ``today``.  ``ValueError`` for a range
        the definition cannot take (no date column, upside down, over ten years)."""
        if date_from is not None or date_to is not None:
            if self.date_column is None:
                raise ValueError(f"{self.source}: {self.name} counts {self.fact} rows, which"
                                 " have no date: --from/--to do not apply (set date_column)")
            if date_from is None:
                raise ValueError("--to needs --from")
            rng = (date_from, date_to or today)
        else:
            rng = resolve_range(self.default_range, today)
        if rng is not None:
            problem = range_problem(*rng)
            if problem:
                raise ValueError(f"{self.name}: {problem}")
        return rng

    def query(self, rng: tuple[date, date] | None) -> sql.Query:
        conds = self.filters
        if rng is not None and self.date_column:
            conds = conds + (sql.Cond(self.date_column, "between", rng),)
        return sql.Query(self.fact, self.dims, self.measures, conds, self.order, self.limit)

    def output_paths(self, folder: Path, day: date) -> list[Path]:
        """Where a scheduled run of ``day`` writes: ``folder/<name>/<name>_<day>.<ext>``."""
        return [folder / self.name / f"{self.name}_{day:%Y-%m-%d}.{fmt}" for fmt in self.formats]


# -- date ranges ------------------------------------------------------------------------------


def _month_start(d: date) -> date:
    return d.replace(day=1)


def _add_years(d: date, n: int) -> date:
    try:
        return d.replace(year=d.year + n)
    except ValueError:  # 29 February
        return d.replace(year=d.year + n, day=28)


def range_problem(date_from: date, date_to: date) -> str | None:
    if date_from > date_to:
        return f"the range {date_from} to {date_to} ends before it starts"
    if date_to > _add_years(date_from, MAX_RANGE_YEARS):
        return (f"the range {date_from} to {date_to} is longer than {MAX_RANGE_YEARS} years;"
                " ask for less")
    return None


def resolve_range(spec, today: date) -> tuple[date, date] | None:
    """A range name (:data:`RANGES`) or ``("between", from, to)`` as dates; ``None``
    for ``all`` (no date condition)."""
    if spec is None or spec == "all":
        return None
    if isinstance(spec, tuple):
        return spec[1], spec[2]
    if spec == "today":
        return today, today
    if spec == "yesterday":
        y = today - timedelta(days=1)
        return y, y
    if spec == "this_month":
        return _month_start(today), today
    if spec == "last_month":
        end = _month_start(today) - timedelta(days=1)
        return _month_start(end), end
    if spec == "this_year":
        return date(today.year, 1, 1), today
    if spec == "last_year":
        return date(today.year - 1, 1, 1), date(today.year - 1, 12, 31)
    if spec in ("this_season", "last_season"):
        s = today.year if today.month >= SEASON_START_MONTH else today.year - 1
        if spec == "last_season":
            s -= 1
        start = date(s, SEASON_START_MONTH, 1)
        return start, _add_years(start, 1) - timedelta(days=1)
    m = re.fullmatch(r"last_([0-9]{1,4})_days", spec)
    if m:
        return today - timedelta(days=int(m.group(1)) - 1), today
    raise ValueError(f"unknown range {spec!r}")


def _check_range(ck: _Checker, v, path: tuple):
    if isinstance(v, str):
        try:
            resolve_range(v, date(2000, 1, 1))
        except ValueError:
            ck.add(path, f"unknown range {v!r}{_did_you_mean(v, RANGES)} (known: "
                   f"{', '.join(RANGES)}, or a table {{ from = 2026-01-01, to = 2026-03-31 }})")
            return None
        return v
    if isinstance(v, dict):
        ck.keys(v, RANGE_KEYS, path)
        ends = []
        for k in RANGE_KEYS:
            d = _date_value(v.get(k))
            if d is None:
                ck.add(path + (k,), f"expected a date like 2026-01-01, got {_show(v.get(k))}"
                       if k in v else "missing")
            ends.append(d)
        if None in ends:
            return None
        problem = range_problem(*ends)
        if problem:
            ck.add(path, problem)
            return None
        return ("between", ends[0], ends[1])
    ck.add(path, f"expected a range name like 'last_month' or a table {{ from = ..., to = ..."
           f" }}, got {_show(v)}")
    return None


def _date_value(v) -> date | None:
    if isinstance(v, date) and not hasattr(v, "hour"):
        return v
    if isinstance(v, str) and re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", v):
        try:
            return date.fromisoformat(v)
        except ValueError:
            return None
    return None


# -- values of filters -----------------------------------------------------------------


def _typed(ck: _Checker, kind: str, v, path: tuple, column: str):
    """``v`` as a value of a ``kind`` column, or None (with a problem added)."""
    if kind == "text":
        if isinstance(v, str):
            return v
        ck.add(path, f"{column} is text: expected a value in quotes, got {_show(v)}")
    elif kind in ("int", "fen"):
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        hint = " (money is integer fen (分): 1200.00 yuan is 120000)" if kind == "fen" else ""
        ck.add(path, f"{column} is {'money' if kind == 'fen' else 'a whole number'}:"
               f" expected an integer{hint}, got {_show(v)}")
    elif kind == "area":
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return v
        ck.add(path, f"{column} is a number: expected a number, got {_show(v)}")
    elif kind == "date":
        d = _date_value(v)
        if d is not None:
            return d
        ck.add(path, f"{column} is a date: expected a date like 2026-11-01, got {_show(v)}")
    return None


def _filter(ck: _Checker, f, path: tuple) -> sql.Cond | None:
    if not isinstance(f, dict):
        ck.add(path, f"expected a table {{ column = ..., op = ..., value = ... }}, got {_show(f)}")
        return None
    ck.keys(f, FILTER_KEYS, path)
    column = ck.column(f, path)
    op = ck.text(f, "op", path, default="=")
    if op not in sql.OPERATORS:
        ck.add(path + ("op",), f"unknown operator {op!r} (known: {' '.join(sql.OPERATORS)})")
        return None
    if "value" not in f:
        ck.add(path + ("value",), "missing")
        return None
    if column is None:
        return None
    kind, v, vpath = sql.CATALOG[column], f["value"], path + ("value",)
    if op == "like":
        if kind != "text":
            ck.add(path + ("op",), f"like compares text; {column} is {kind}")
            return None
        value = _typed(ck, kind, v, vpath, column)
    elif op in ("in", "between"):
        if not isinstance(v, list) or not v or (op == "between" and len(v) != 2):
            want = "a list of two values [low, high]" if op == "between" else "a list of values"
            ck.add(vpath, f"{op} takes {want}, got {_show(v)}")
            return None
        before = len(ck.problems)
        items = [_typed(ck, kind, x, vpath + (i,), column) for i, x in enumerate(v)]
        if len(ck.problems) > before:
            return None
        value = tuple(items)
        if op == "between" and kind == "date":
            problem = range_problem(*value)
            if problem:
                ck.add(vpath, problem)
                return None
    else:
        value = _typed(ck, kind, v, vpath, column)
    if value is None:
        return None
    return sql.Cond(column, op, value)


# -- parsing -------------------------------------------------------------------------------


def _items(ck: _Checker, data: dict, k: str, required: bool = False) -> list:
    v = data.get(k, [])
    if not isinstance(v, list):
        ck.add((k,), f"expected a list ([...] or [[{k}]] tables), got {_show(v)}")
        return []
    if required and not v:
        ck.add((k,), "missing: at least one is needed")
    return v


def _dimension(ck: _Checker, d, path: tuple) -> tuple[sql.Dim, Output] | None:
    spec = {"column": d} if isinstance(d, str) else d
    if not isinstance(spec, dict):
        ck.add(path, f"expected a column name or a table {{ column = ..., grain = ... }},"
               f" got {_show(d)}")
        return None
    ck.keys(spec, DIM_KEYS, path)
    column = ck.column(spec, path) if isinstance(d, dict) else None
    if isinstance(d, str):
        column = d if d in sql.CATALOG else None
        if column is None:
            ck.add(path, f"{d!r} is not a column{_did_you_mean(d, tuple(sql.CATALOG))}")
    grain = ck.text(spec, "grain", path)
    if column is None:
        return None
    kind = sql.CATALOG[column]
    if grain is not None:
        if kind != "date":
            ck.add(path + ("grain",), f"{column} is {kind}, not a date: grain does not apply")
            return None
        if grain not in sql.GRAINS:
            ck.add(path + ("grain",), f"unknown grain {grain!r} (known: {', '.join(sql.GRAINS)})")
            return None
    name = ck.text(spec, "name", path) or column.split(".", 1)[1]
    if grain in ("month", "year"):
        name = ck.text(spec, "name", path) or f"{name}_{grain}"
    label = ck.text(spec, "label", path) or LABELS.get(column, column)
    out_kind = "text" if grain in ("month", "year") else ("int" if kind == "area" else kind)
    return sql.Dim(column, grain), Output(name, label, out_kind)


def _measure(ck: _Checker, m, path: tuple) -> tuple[sql.Measure, Output] | None:
    if not isinstance(m, dict):
        ck.add(path, f"expected a table {{ fn = ..., column = ... }}, got {_show(m)}")
        return None
    ck.keys(m, MEASURE_KEYS, path)
    fn = ck.text(m, "fn", path, required=True)
    if fn is None:
        return None
    if fn not in sql.FUNCTIONS:
        ck.add(path + ("fn",), f"unknown function {fn!r}{_did_you_mean(fn, sql.FUNCTIONS)}"
               f" (known: {', '.join(sql.FUNCTIONS)})")
        return None
    if fn == "count":
        if "column" in m:
            ck.add(path + ("column",), "count counts the rows and takes no column"
                   " (count_distinct counts the different values of one)")
            return None
        column = None
        out_kind = "int"
    else:
        column = ck.column(m, path)
        if column is None:
            return None
        kind = sql.CATALOG[column]
        if fn == "count_distinct":
            out_kind = "int"
        elif kind == "text":
            ck.add(path + ("column",), f"{fn} needs a numeric column; {column} is text")
            return None
        elif kind == "date" and fn in ("sum", "avg"):
            ck.add(path + ("column",), f"{fn} needs a numeric column; {column} is a date")
            return None
        else:
            out_kind = {"fen": "fen", "date": "date"}.get(kind, "int")
    default = fn if column is None else f"{fn}_{column.split('.', 1)[1]}"
    name = ck.text(m, "name", path) or default
    label = ck.text(m, "label", path) or (
        FN_LABELS[fn] if column is None else f"{LABELS.get(column, column)} ({fn})")
    return sql.Measure(fn, column), Output(name, label, out_kind, numeric=out_kind != "date")


def _fact(ck: _Checker, data: dict, dims, measures, filters, date_column) -> str | None:
    """The table whose rows are counted: ``table``, or the one the measures and
    dimensions imply (see ``docs/custom-reports.rst``)."""
    used = [(p + ("column",), d.field) for p, d in dims]
    used += [(p + ("column",), m.field) for p, m in measures if m.field]
    used += [(p + ("column",), c.field) for p, c in filters]
    if date_column:
        used.append((("date_column",), date_column))
    tables = {f.split(".", 1)[0] for _, f in used}
    measured = {m.field.split(".", 1)[0] for _, m in measures if m.field}
    fact = ck.text(data, "table", ())
    if fact is not None and fact not in sql.FACTS:
        ck.add(("table",), f"unknown table {fact!r}{_did_you_mean(fact, sql.FACTS)}"
               f" (a report counts rows of: {', '.join(sql.FACTS)})")
        return None
    if fact is None:
        fits = [f for f in sql.FACTS
                if tables <= set(sql.reach(f)) and measured <= {f} | sql.one_to_one(f)]
        if not fits:
            ck.add(("table",) if "table" in data else ("measures",),
                   "no one table can be counted for these columns: "
                   f"{', '.join(sorted(tables))} (measures over bill and payment columns"
                   " need two reports, or payment_item columns)")
            return None
        fact = fits[0]
    reach = set(sql.reach(fact))
    for p, f in used:
        t = f.split(".", 1)[0]
        if t not in reach:
            ck.add(p, f"{f}: a report counting {fact} rows cannot read {t} columns"
                   f" (it reads {', '.join(sql.reach(fact))})")
    for p, m in measures:
        if m.field and m.fn != "count_distinct":
            t = m.field.split(".", 1)[0]
            if t in reach and t not in {fact} | sql.one_to_one(fact):
                ck.add(p + ("column",), f"{m.field} would be counted once per {fact} row;"
                       f" measure {fact} columns, or set table = {t!r}")
    return fact


def parse_definition(text: str, source: str = "<definition>") -> ReportDefinition:
    """Check a definition and return it; :class:`DefinitionError` lists every problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line ([0-9]+), column [0-9]+\)", str(e))
        msg = re.sub(r" \(at line .*\)$", "", str(e))
        raise DefinitionError(source, [Problem(int(m.group(1)) if m else None, "",
                                               f"not TOML: {msg}")]) from None
    lines = locate(text)
    ck = _Checker(lines)
    ck.keys(data, TOP_KEYS)
    stem = Path(source).stem
    name = ck.text(data, "name", (), default=stem if NAME_RE.fullmatch(stem) else None,
                   required=not NAME_RE.fullmatch(stem))
    if name is not None and not NAME_RE.fullmatch(name):
        ck.add(("name",), f"expected lower-case letters, digits, - and _ (it names files),"
               f" got {name!r}")
    title = ck.text(data, "title", (), default=name or "")
    description = ck.text(data, "description", (), default="")

    dims = [(("dimensions", i), r) for i, d in enumerate(_items(ck, data, "dimensions"))
            if (r := _dimension(ck, d, ("dimensions", i))) is not None]
    measures = [(("measures", i), r) for i, m in enumerate(_items(ck, data, "measures", True))
                if (r := _measure(ck, m, ("measures", i))) is not None]
    filters = [(("filters", i), c) for i, f in enumerate(_items(ck, data, "filters"))
               if (c := _filter(ck, f, ("filters", i))) is not None]

    date_column = ck.text(data, "date_column", ())
    if date_column is not None:
        if date_column not in sql.CATALOG:
            ck.add(("date_column",), f"{date_column!r} is not a column"
                   f"{_did_you_mean(date_column, tuple(sql.CATALOG))}")
            date_column = None
        elif sql.CATALOG[date_column] != "date":
            ck.add(("date_column",), f"{date_column} is {sql.CATALOG[date_column]}, not a date")
            date_column = None
    fact = _fact(ck, data, [(p, d) for p, (d, _) in dims], [(p, m) for p, (m, _) in measures],
                 filters, date_column)
    if date_column is None and fact is not None and "date_column" not in data:
        date_column = DEFAULT_DATE_COLUMN[fact]
    default_range = None
    if "default_range" in data:
        default_range = _check_range(ck, data["default_range"], ("default_range",))
        if default_range not in (None, "all") and date_column is None and fact is not None:
            ck.add(("default_range",), f"a report counting {fact} rows has no date: set"
                   " date_column, or remove default_range")

    outputs = [o for _, (_, o) in dims] + [o for _, (_, o) in measures]
    names = [o.name for o in outputs]
    for (p, _), o in zip(dims + measures, outputs, strict=True):
        if not OUTPUT_RE.fullmatch(o.name):
            ck.add(p + ("name",), f"expected a name of lower-case letters, digits and _,"
                   f" got {o.name!r}")
        elif names.count(o.name) > 1:
            ck.add(p + ("name",), f"two columns are named {o.name!r}: give one a name")
    order = _sort(ck, data, names, len(dims))
    limit = data.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                              or not 1 <= limit <= MAX_LIMIT):
        ck.add(("limit",), f"expected a whole number from 1 to {MAX_LIMIT}, got {_show(limit)}")
        limit = None
    chart = _chart(ck, data, outputs, title)
    schedule, formats, email = _schedule(ck, data)
    if ck.problems:
        raise DefinitionError(source, sorted(ck.problems, key=lambda p: p.line or 0))
    return ReportDefinition(
        name=name, title=title, source=source, fact=fact,
        dims=tuple(d for _, (d, _) in dims), measures=tuple(m for _, (m, _) in measures),
        filters=tuple(c for _, c in filters), outputs=tuple(outputs),
        date_column=date_column, default_range=default_range, order=order, limit=limit,
        chart=chart, description=description, schedule=schedule, formats=formats,
        email=email, lines=lines)


def _sort(ck: _Checker, data: dict, names: list[str], n_dims: int):
    v = data.get("sort", [])
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list):
        ck.add(("sort",), f"expected a list of column names (-name: descending), got {_show(v)}")
        return ()
    order = []
    for i, s in enumerate(v):
        if not isinstance(s, str) or s.lstrip("-") not in names:
            ck.add(("sort", i), f"{_show(s)} is not a column of the report"
                   f"{_did_you_mean(str(s).lstrip('-'), names)} (columns: {', '.join(names)})")
            continue
        order.append((names.index(s.lstrip("-")), s.startswith("-")))
    return tuple(order)


def _chart(ck: _Checker, data: dict, outputs: list[Output], title: str) -> Chart | None:
    c = data.get("chart")
    if c is None:
        return None
    if not isinstance(c, dict):
        ck.add(("chart",), f"expected a table [chart], got {_show(c)}")
        return None
    ck.keys(c, CHART_KEYS, ("chart",))
    names = [o.name for o in outputs]
    numeric = [o.name for o in outputs if o.numeric and o.kind != "text"]
    kind = ck.text(c, "kind", ("chart",), default="bar")
    if kind not in CHART_KINDS:
        ck.add(("chart", "kind"), f"unknown chart {kind!r} (known: {', '.join(CHART_KINDS)})")
    x = ck.text(c, "x", ("chart",), default=names[0] if names else None)
    if x is not None and x not in names:
        ck.add(("chart", "x"), f"{x!r} is not a column of the report"
               f"{_did_you_mean(x, names)}")
    y = c.get("y", [o.name for o in outputs if o.numeric][:1])
    y = [y] if isinstance(y, str) else y
    if not isinstance(y, list) or not y:
        ck.add(("chart", "y"), f"expected a measure's name or a list of them, got {_show(y)}")
        y = []
    for i, name in enumerate(y):
        if name not in numeric:
            ck.add(("chart", "y", i) if isinstance(c.get("y"), list) else ("chart", "y"),
                   f"{_show(name)} is not a measure of the report (measures: "
                   f"{', '.join(numeric)})")
    series = ck.text(c, "series", ("chart",))
    if series is not None and series not in names:
        ck.add(("chart", "series"), f"{series!r} is not a column of the report")
    return Chart(kind, ck.text(c, "title", ("chart",), default=title), x or "", tuple(y),
                 series)


def _schedule(ck: _Checker, data: dict):
    schedule = None
    s = data.get("schedule")
    if s is not None:
        m = re.fullmatch(r"([01]?[0-9]|2[0-3]):([0-5][0-9])", s) if isinstance(s, str) else None
        if m is None:
            ck.add(("schedule",), f"expected a local time \"HH:MM\" like \"06:30\", got {_show(s)}")
        else:
            schedule = time(int(m.group(1)), int(m.group(2)))
    formats = data.get("formats", ["xlsx"] if s is not None else [])
    if isinstance(formats, str):
        formats = [formats]
    if not isinstance(formats, list):
        ck.add(("formats",), f"expected a list like [\"xlsx\", \"pdf\"], got {_show(formats)}")
        formats = []
    for i, f in enumerate(formats):
        if f not in FORMATS:
            ck.add(("formats", i), f"unknown format {_show(f)} (known: {', '.join(FORMATS)})")
    if "formats" in data and s is None:
        ck.add(("formats",), "formats are for scheduled runs: set schedule = \"HH:MM\" too")
    if len(set(formats)) != len(formats):
        ck.add(("formats",), "a format is named twice")
    email = data.get("email", [])
    if isinstance(email, str):
        email = [email]
    if not isinstance(email, list):
        ck.add(("email",), f"expected a list of addresses, got {_show(email)}")
        email = []
    for i, a in enumerate(email):
        if not isinstance(a, str) or not EMAIL_RE.fullmatch(a.strip()):
            ck.add(("email", i), f"expected an e-mail address like 'finance@example.com',"
                   f" got {_show(a)}")
    if email and s is None:
        ck.add(("email",), "e-mail goes with scheduled runs: set schedule = \"HH:MM\" too")
    return schedule, tuple(formats), tuple(a.strip() for a in email if isinstance(a, str))


def load_definition(path: str | Path) -> ReportDefinition:
    """Read and check the definition file ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DefinitionError(str(path), [Problem(None, "", f"cannot read: {e}")]) from None
    return parse_definition(text, str(path))


def load_folder(folder: str | Path) -> tuple[list[ReportDefinition], list[DefinitionError]]:
    """Every ``*.toml`` definition of ``folder`` (sorted by file name), and the
    errors of those that do not check.  A missing folder holds none."""
    defs, errors, names = [], [], {}
    p = Path(folder)
    for f in sorted(p.glob("*.toml")) if p.is_dir() else []:
        try:
            d = load_definition(f)
        except DefinitionError as e:
            errors.append(e)
            continue
        if d.name in names:
            errors.append(DefinitionError(str(f), [Problem(d.lines.get(("name",)), "name",
                          f"{d.name!r} is also the name of {names[d.name]}")]))
            continue
        names[d.name] = str(f)
        defs.append(d)
    return defs, errors


def find_definition(folder: str | Path, name: str) -> ReportDefinition | None:
    """The definition named ``name`` in ``folder``: ``<name>.toml`` first, else the
    file whose ``name`` says so.  ``None``: no such report."""
    p = Path(folder)
    if not NAME_RE.fullmatch(name) or not p.is_dir():
        return None
    direct = p / f"{name}.toml"
    if direct.is_file():
        return load_definition(direct)
    for f in sorted(p.glob("*.toml")):
        try:
            d = load_definition(f)
        except DefinitionError:
            continue
        if d.name == name:
            return d
    return None


# -- running -------------------------------------------------------------------------------


def run(defn: ReportDefinition, store, today: date, date_from: date | None = None,
        date_to: date | None = None) -> ReportTable:
    """Run ``defn`` on ``store`` (synchronously: the CLI, or a worker thread of the
    service) and return its table.  An empty result is a table with its headings."""
    rng = defn.date_range(today, date_from, date_to)
    q = defn.query(rng)
    want_totals = bool(defn.dims) and defn.limit is None
    rows, totals = store.run_sync(sql.run, q, want_totals, readonly=True)
    total_row = None
    if want_totals and rows:
        total_row = ("合计 total",) + (None,) * (len(defn.dims) - 1) + tuple(totals)
    params = {"definition": defn.source, "from": rng[0] if rng else None,
              "to": rng[1] if rng else None}
    notes = []
    if defn.description:
        notes.append(defn.description)
    where = f"{rng[0]} to {rng[1]}" if rng else "all dates"
    notes.append(f"{defn.fact} rows, {where}" + (f" by {defn.date_column}" if rng else ""))
    if not rows:
        notes.append("empty: no rows match")
    return ReportTable(name=defn.name, title=defn.title, params=params, columns=defn.columns(),
                       rows=rows, totals=total_row,
                       charts=(defn.chart,) if defn.chart else (), notes=tuple(notes))


def describe(defn: ReportDefinition, store_n8, dialect) -> str:
    """What ``report check`` prints: the columns, what is counted, the range, the
    schedule, and the SQL with placeholders (no value)."""
    lines = [f"{defn.source}: OK: {defn.name} ({defn.title})",
             f"  counts: {defn.fact} rows",
             "  columns: " + ", ".join(f"{o.name} ({o.kind})" for o in defn.outputs)]
    if defn.date_column:
        rng = defn.default_range
        if rng in (None, "all"):
            lines.append(f"  date range: all dates (--from/--to on {defn.date_column})")
        else:
            shown = rng if isinstance(rng, str) else f"{rng[1]} to {rng[2]}"
            lines.append(f"  date range: {shown} on {defn.date_column}")
    if defn.schedule:
        lines.append(f"  schedule: {defn.schedule:%H:%M} daily, {', '.join(defn.formats)}"
                     + (f", e-mail to {', '.join(defn.email)}" if defn.email else ""))
    # the range's dates only fill placeholders: the SQL shown has none of them
    rng = resolve_range(defn.default_range, date(2000, 1, 1)) if defn.date_column else None
    shape = sql.sql_shape(store_n8, defn.query(rng), dialect)
    lines.append("  SQL:")
    lines.extend("    " + ln.rstrip() for ln in shape.splitlines())
    return "\n".join(lines)
