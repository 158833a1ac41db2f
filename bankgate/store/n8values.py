"""N8's values in N8's own units and codes, converted at the column.

The mapping (:mod:`bankgate.store.n8`) may declare how an N8 stores a logical column
(``[n8.values.bill] amount = "yuan"``) and which codes it uses
(``[n8.codes.status] active = ["0", "Z"]``).  Each such column is built with one of
the :class:`~sqlalchemy.types.TypeDecorator`\\ s below, so every statement of the store
converts both ways without knowing it: bound parameters go in as N8 stores them, result
rows come back as the gateway's values (integer fen, :class:`~datetime.date`, the
reference codes).  A comparison of a code column with a literal matches every physical
code of that logical value (``status == "A"`` is ``status IN ('0', 'Z')``).

:func:`sql_fen` and :func:`sql_date` give the logical value *inside* SQL, for the few
statements that compute with it in the database (the arrears report's late fee).

A value that cannot be converted -- a yuan amount with three decimals, a date text that
is not ``YYYYMMDD`` -- raises :class:`ValueError` naming the column and the value: it is
a mapping fault, never something to round away.
"""

from __future__ import annotations

from datetime import date, datetime, time
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import operators

# -- what may be configured ------------------------------------------------------------

#: representation -> the kind of logical column it applies to; the first of each kind
#: is the default (what the reference schema stores)
REPRESENTATIONS: dict[str, str] = {
    "fen": "money", "yuan": "money",
    "date": "date", "datetime": "date", "char8": "date",
    # a timestamp column: "datetime" is its default, "char14" is 'YYYYMMDDHHMMSS'
    "char14": "timestamp",
    "trim": "string",
}
#: kind -> its default representation (what the reference schema stores)
DEFAULTS = {"money": "fen", "date": "date", "timestamp": "datetime", "string": "text"}
KIND_NAMES = {"money": "a money column (fen, yuan)",
              "date": "a date column (date, datetime, char8)",
              "timestamp": "a date-and-time column (datetime, char14)",
              "string": "a text column (text, trim)"}

#: code map -> the logical columns it applies to
CODE_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "status": (("customer", "status"),),
    "customer_class": (("customer", "customer_class"), ("tariff", "customer_class")),
    "fee_type": (("bill", "fee_type"), ("tariff", "fee_type")),
    "payment_status": (("payment", "status"),),
    "invoice_status": (("invoice", "status"),),
}
#: code map -> its logical codes (configuration key -> the gateway's value)
LOGICAL_CODES: dict[str, dict[str, str]] = {
    "status": {"active": "A", "locked": "S"},
    "customer_class": {"R": "R", "I": "I", "C": "C"},
    "fee_type": {f"0{i}": f"0{i}" for i in range(1, 6)},
    "payment_status": {"N": "N", "P": "P", "C": "C"},
    "invoice_status": {"U": "U", "I": "I", "V": "V"},
}
#: code map -> what an unlisted physical code reads as (None: itself, unchanged)
UNLISTED: dict[str, str | None] = {
    "status": "S", "customer_class": None, "fee_type": None, "payment_status": None,
    "invoice_status": None,
}

_CENT = Decimal("0.01")
#: how far (in fen) a driver's floating-point yuan may be from a whole fen
FLOAT_TOLERANCE = Decimal("0.001")


def kind_of(ctype) -> str | None:
    """The kind of a reference column's type: money, date, timestamp, string or None."""
    if isinstance(ctype, type):
        ctype = ctype()
    if isinstance(ctype, sa.BigInteger):
        return "money"
    if isinstance(ctype, sa.DateTime):
        return "timestamp"
    if isinstance(ctype, sa.Date):
        return "date"
    if isinstance(ctype, sa.String):
        return "string"
    return None


# -- money: yuan <-> fen ---------------------------------------------------------------


def fen_to_decimal(fen: int) -> Decimal:
    """Integer fen as yuan, exact: 12345 -> Decimal('123.45')."""
    return Decimal(fen).scaleb(-2).quantize(_CENT)


def yuan_value_to_fen(value, where: str) -> int:
    """A yuan value as a driver returns it (Decimal, int, float, text) -> integer fen.

    Exact or refused: a value that is not a whole number of fen raises ValueError."""
    try:
        if isinstance(value, float):
            # a float (SQLite's REAL, a sum of them) is never exact: accepted within
            # FLOAT_TOLERANCE fen of a whole fen
            fen = Decimal(repr(value)).scaleb(2)
            whole = fen.to_integral_value(ROUND_HALF_UP)
            exact = abs(fen - whole) <= FLOAT_TOLERANCE
            fen = whole
        else:
            fen = Decimal(value.strip() if isinstance(value, str) else value).scaleb(2)
            exact = fen == fen.to_integral_value()
    except (InvalidOperation, TypeError, ValueError):
        exact = False
    if not exact:
        raise ValueError(
            f"N8 {where}: {value} is not an amount in yuan to the fen (0.01); "
            f"check the column's type and [n8.values] for it")
    return int(fen)


class Yuan(sa.types.TypeDecorator):
    """Money stored as yuan ``DECIMAL(12,2)``; integer fen in the gateway."""

    impl = sa.Numeric
    cache_ok = True

    def __init__(self, where: str = ""):
        super().__init__(12, 2, asdecimal=True)
        self.where = where

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"N8 {self.where}: expected integer fen, got {value!r}")
        return fen_to_decimal(value)

    def result_processor(self, dialect, coltype):
        # the raw driver value, not the dialect's Numeric processing (which rounds
        # to the column's scale on some drivers and would hide a bad value)
        where = self.where

        def process(value):
            return None if value is None else yuan_value_to_fen(value, where)

        return process

    def coerce_compared_value(self, op, value):
        return self


# -- dates ------------------------------------------------------------------------------


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Char8Date(sa.types.TypeDecorator):
    """A date stored as ``CHAR(8)`` text ``YYYYMMDD``."""

    impl = sa.CHAR
    cache_ok = True

    def __init__(self, where: str = ""):
        super().__init__(8)
        self.where = where

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, datetime):
            value = value.date()
        if not isinstance(value, date):
            raise ValueError(f"N8 {self.where}: expected a date, got {value!r}")
        return f"{value.year:04d}{value.month:02d}{value.day:02d}"

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        text = _text(value).strip()
        try:
            if len(text) != 8 or not text.isdigit():
                raise ValueError
            return date(int(text[:4]), int(text[4:6]), int(text[6:]))
        except ValueError:
            raise ValueError(f"N8 {self.where}: {value!r} is not a date as YYYYMMDD "
                             f"(char8)") from None

    def coerce_compared_value(self, op, value):
        return self


class DateTimeDate(sa.types.TypeDecorator):
    """A date stored as a ``DATETIME`` (written at midnight; the time is ignored on read)."""

    impl = sa.DateTime
    cache_ok = True

    def __init__(self, where: str = ""):
        super().__init__()
        self.where = where

    def process_bind_param(self, value, dialect):
        if value is None or isinstance(value, datetime):
            return value
        if not isinstance(value, date):
            raise ValueError(f"N8 {self.where}: expected a date, got {value!r}")
        return datetime.combine(value, time())

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, datetime):
            return value.date()
        if isinstance(value, date):
            return value
        raise ValueError(f"N8 {self.where}: {value!r} is not a date and time (datetime)")

    def coerce_compared_value(self, op, value):
        return self


class Char14DateTime(sa.types.TypeDecorator):
    """A date and time stored as ``CHAR(14)`` text ``YYYYMMDDHHMMSS``."""

    impl = sa.CHAR
    cache_ok = True

    def __init__(self, where: str = ""):
        super().__init__(14)
        self.where = where

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise ValueError(f"N8 {self.where}: expected a date and time, got {value!r}")
        return value.strftime("%Y%m%d%H%M%S")

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        try:
            return datetime.strptime(_text(value).strip(), "%Y%m%d%H%M%S")
        except ValueError:
            raise ValueError(f"N8 {self.where}: {value!r} is not a date and time as "
                             f"YYYYMMDDHHMMSS (char14)") from None

    def coerce_compared_value(self, op, value):
        return self


# -- text and codes -----------------------------------------------------------------------


class Trimmed(sa.types.TypeDecorator):
    """Fixed-width ``CHAR(n)`` text: trailing blanks stripped on read."""

    impl = sa.CHAR
    cache_ok = True

    def __init__(self, length: int | None = None, where: str = ""):
        super().__init__(length)
        self.length = length
        self.where = where

    def process_result_value(self, value, dialect):
        return None if value is None else _text(value).rstrip(" ")

    def coerce_compared_value(self, op, value):
        return self


class _CodeComparator(sa.types.TypeDecorator.Comparator, sa.String.Comparator):
    """Comparisons of a coded column with logical values, in physical codes."""

    def operate(self, op, *other, **kw):
        t: Coded = self.expr.type
        if op in (operators.eq, operators.ne) and len(other) == 1 and isinstance(other[0], str):
            cond = t.reads_as(self.expr, [other[0]])
            return cond if op is operators.eq else sa.not_(cond)
        if op in (operators.in_op, operators.not_in_op) and len(other) == 1 and isinstance(
                other[0], (list, tuple, set, frozenset)) and all(
                isinstance(v, str) for v in other[0]):
            cond = t.reads_as(self.expr, list(other[0]))
            return cond if op is operators.in_op else sa.not_(cond)
        if op in (operators.eq, operators.ne) and len(other) == 1 and not t.one_to_one:
            # a bound parameter or another column: compare logical values (the index
            # on the column is not used; literals above are)
            rhs = other[0]
            if isinstance(rhs, sa.ColumnElement) and isinstance(rhs.type, Coded):
                rhs = rhs.type.logical(rhs)
            elif isinstance(rhs, sa.BindParameter):
                rhs = sa.type_coerce(rhs, sa.String())
            return op(t.logical(self.expr), rhs)
        return super().operate(op, *other, **kw)


class Coded(sa.types.TypeDecorator):
    """A code column: logical codes in the gateway, N8's codes in the table.

    ``codes`` is ``((logical, (physical, ...)), ...)``; the first physical code of a
    logical one is written.  An unlisted physical code reads as ``unlisted`` (customer
    status: ``S``, locked) or, when that is None, as itself."""

    impl = sa.String
    cache_ok = True
    comparator_factory = _CodeComparator

    def __init__(self, length: int | None = None, where: str = "",
                 codes: tuple = (), unlisted: str | None = None, trim: bool = False):
        super().__init__(length)
        self.length = length
        self.where = where
        self.codes = codes
        self.unlisted = unlisted
        self.trim = trim
        self._write = {lg: phys[0] for lg, phys in codes}
        self._read = {}
        for lg, phys in codes:
            for p in phys:
                self._read.setdefault(p, lg)

    @property
    def one_to_one(self) -> bool:
        """Every logical code has one physical code and nothing reads as a default."""
        return self.unlisted is None and all(len(p) == 1 for _lg, p in self.codes)

    def load_dialect_impl(self, dialect):
        return dialect.type_descriptor(sa.CHAR(self.length) if self.trim
                                       else sa.String(self.length))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        phys = self._write.get(value)
        if phys is not None:
            return phys
        if self.unlisted is not None or value in self._read:
            # a status map writes only what it lists; a logical value that is some
            # other value's physical code would read back as that other value
            raise ValueError(f"N8 {self.where}: no physical code for {value!r} in the "
                             f"code map (add it to [n8.codes])")
        return value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        text = _text(value)
        if self.trim:
            text = text.rstrip(" ")
        lg = self._read.get(text)
        if lg is not None:
            return lg
        return self.unlisted if self.unlisted is not None else text

    def coerce_compared_value(self, op, value):
        return self

    def _physical(self, expr):
        return sa.type_coerce(expr, sa.String(self.length))

    def reads_as(self, expr, values: list[str]) -> sa.ColumnElement:
        """SQL: the column reads as one of ``values`` (logical codes)."""
        phys = self._physical(expr)
        listed: list[str] = []
        default = False
        for v in values:
            if v == self.unlisted:
                default = True
            elif v in self._write:
                listed.extend(p for lg, ps in self.codes if lg == v for p in ps)
            elif self.unlisted is None and v not in self._read:
                listed.append(v)
        conds = []
        if len(listed) == 1:
            conds.append(phys == listed[0])
        elif listed:
            conds.append(phys.in_(listed))
        if default:  # anything but the codes of the other logical values
            others = [p for lg, ps in self.codes if lg != self.unlisted for p in ps]
            conds.append(phys.not_in(others) if others else sa.true())
        if not conds:
            return sa.false()
        return conds[0] if len(conds) == 1 else sa.or_(*conds)

    def logical(self, expr) -> sa.ColumnElement:
        """SQL: the column's logical value (a CASE over the code map)."""
        phys = self._physical(expr)
        whens = [(phys.in_(list(ps)), sa.literal(lg, sa.String())) for lg, ps in self.codes
                 if lg != self.unlisted]
        default = phys if self.unlisted is None else sa.literal(self.unlisted, sa.String())
        if not whens:
            return default
        return sa.case(*whens, else_=default)


# -- the logical value inside SQL --------------------------------------------------------


class _yyyymmdd_date(sa.sql.functions.FunctionElement):
    """CHAR(8) 'YYYYMMDD' text as a date, for each dialect."""

    type = sa.Date()
    inherit_cache = True
    name = "yyyymmdd_date"


@compiles(_yyyymmdd_date)
def _ymd_default(element, compiler, **kw):  # PostgreSQL, Oracle, DB2
    (arg,) = (compiler.process(c, **kw) for c in element.clauses)
    return f"TO_DATE({arg}, 'YYYYMMDD')"


@compiles(_yyyymmdd_date, "sqlite")
def _ymd_sqlite(element, compiler, **kw):
    (arg,) = (compiler.process(c, **kw) for c in element.clauses)
    return (f"date(substr({arg}, 1, 4) || '-' || substr({arg}, 5, 2) || '-' || "
            f"substr({arg}, 7, 2))")


@compiles(_yyyymmdd_date, "mysql")
@compiles(_yyyymmdd_date, "mariadb")
def _ymd_mysql(element, compiler, **kw):
    (arg,) = (compiler.process(c, **kw) for c in element.clauses)
    return f"CAST({arg} AS DATE)"


@compiles(_yyyymmdd_date, "mssql")
def _ymd_mssql(element, compiler, **kw):
    (arg,) = (compiler.process(c, **kw) for c in element.clauses)
    return f"CONVERT(date, {arg}, 112)"


def sql_fen(col) -> sa.ColumnElement:
    """SQL: a money column's value in integer fen, whatever N8 stores."""
    if isinstance(col.type, Yuan):
        return sa.cast(sa.func.round(sa.type_coerce(col, sa.Numeric(12, 2)) * 100, 0),
                       sa.BigInteger)
    return col


def sql_date(col) -> sa.ColumnElement:
    """SQL: a date column's value as an SQL date, whatever N8 stores."""
    if isinstance(col.type, Char8Date):
        return _yyyymmdd_date(sa.type_coerce(col, sa.String(8)))
    if isinstance(col.type, DateTimeDate):
        return sa.cast(sa.type_coerce(col, sa.DateTime()), sa.Date)
    return col


# -- building a column's type -----------------------------------------------------------


def column_type(table: str, column: str, ref_type, representation: str | None,
                codes: dict[str, list[str]] | None, code_map: str | None):
    """The SQLAlchemy type of logical ``table.column`` under its representation and
    code map (both already validated); the reference type when neither is given."""
    where = f"{table}.{column}"
    if codes:
        length = max([ref_type.length or 1] + [len(p) for ps in codes.values() for p in ps])
        names = LOGICAL_CODES[code_map]
        return Coded(length, where,
                     tuple((names[k], tuple(v)) for k, v in codes.items()),
                     UNLISTED[code_map], trim=representation == "trim")
    if representation in (None, "fen", "date", "text") or (
            representation == "datetime" and kind_of(ref_type) == "timestamp"):
        return ref_type
    if representation == "yuan":
        return Yuan(where)
    if representation == "char8":
        return Char8Date(where)
    if representation == "datetime":
        return DateTimeDate(where)
    if representation == "char14":
        return Char14DateTime(where)
    if representation == "trim":
        return Trimmed(ref_type.length, where)
    raise ValueError(f"{where}: unknown representation {representation!r}")
