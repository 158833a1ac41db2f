"""construct helpers for the fixed-width fields of Chinese bank interfaces.

construct 2.10's ``PaddedString`` refuses ``"gbk"`` and pads with NUL; bank
fields are space padded GBK text (``X(n)``) and zero padded digits (``N(n)``).
Each helper here is a small :class:`construct.Adapter` over ``Bytes(n)``:

=============  =================================================  ==============
helper         wire                                               Python value
=============  =================================================  ==============
``GbkText(n)``  GBK, left aligned, right padded with spaces         ``str`` (padding
                                                                   stripped)
``Digits(n)``   ``0-9`` only, right aligned, left padded with ``0``  ``str`` (n digits)
``Number(n)``   as ``Digits``                                      ``int``
``Fen(n)``      as ``Digits``, an amount in fen                    ``int``
``DateN8()``    ``YYYYMMDD``                                       ``datetime.date``
=============  =================================================  ==============

Every failure, parsing or building, raises :class:`FieldError` -- a
:class:`construct.ValidationError` carrying the field's name (taken from
``"name" / GbkText(20)``, so it survives ``.compile()``, which loses paths)
and the reason.  Building never truncates: a text too long for its field is
an error.  Callers who want truncation use :func:`gbk_fit`, which never cuts
a GBK character in half.

All helpers compile (``Struct(...).compile()``): the generated code reads the
bytes inline and calls the adapter's decoder, and -- unlike compiled
``Bytes`` -- a short read is still an error.

A list preceded by its element count is :class:`Counted` (``Counted(Number(2),
BILL)``).  For a layout built on every answer, :func:`packer` gives a builder
equal to ``layout.build(value)`` without construct's per-call bookkeeping;
every helper here also has ``pack(value) -> bytes``.
"""

from __future__ import annotations

import copy
import re
from datetime import date

from construct import (
    Adapter,
    Bytes,
    Construct,
    ListContainer,
    Renamed,
    Struct,
    Terminated,
    ValidationError,
)

__all__ = [
    "FieldError",
    "GbkText",
    "Digits",
    "Number",
    "Fen",
    "DateN8",
    "Counted",
    "packer",
    "gbk_fit",
    "gbk_len",
]

ENCODING = "gbk"

_DIGITS = re.compile(rb"[0-9]*")
_DIGITS_STR = re.compile(r"[0-9]*")


class FieldError(ValidationError):
    """A field that cannot be parsed or built.

    ``field_name`` is the field's name in its Struct (``None`` for an unnamed
    field), ``reason`` a short English text.  ``str(error)`` is
    ``"<field_name>: <reason>"`` (plus construct's path when known).
    """

    def __init__(self, field_name: str | None, reason: str, path: str | None = None):
        self.field_name = field_name
        self.reason = reason
        super().__init__(f"{field_name or 'field'}: {reason}", path=path)


def gbk_len(text: str) -> int:
    """The GBK byte length of ``text`` (raises ``UnicodeEncodeError``)."""
    return len(text.encode(ENCODING))


def gbk_fit(text: str, n: int, errors: str = "strict") -> str:
    """The longest prefix of ``text`` whose GBK encoding fits in ``n`` bytes.

    Cuts between characters, never inside one.  ``errors`` is the codec's
    error handler for characters GBK cannot encode: ``"strict"`` raises
    :class:`UnicodeEncodeError`, ``"replace"`` turns them into ``?`` first.
    """
    if n < 0:
        raise ValueError("n must not be negative")
    raw = text.encode(ENCODING, errors)
    if errors != "strict":
        text = raw.decode(ENCODING)
    if len(raw) <= n:
        return text
    used = 0
    for i, ch in enumerate(text):
        size = len(ch.encode(ENCODING))
        if used + size > n:
            return text[:i]
        used += size
    return text  # pragma: no cover - unreachable: the whole text did not fit


class _Field(Adapter):
    """An adapter over ``Bytes(width)`` that knows its field name."""

    def __init__(self, width: int):
        if not isinstance(width, int) or width <= 0:
            raise ValueError(f"field width must be a positive int, not {width!r}")
        super().__init__(Bytes(width))
        self.width = width
        self.field_name: str | None = None

    # ``"name" / Field(n)``: remember the name on (a copy of) the adapter, so
    # errors carry it in compiled code too, where construct has no paths.
    def __rtruediv__(self, name):
        named = copy.copy(self)
        named.field_name = name
        return super(_Field, named).__rtruediv__(name)

    __rdiv__ = __rtruediv__

    def _fail(self, reason: str, path: str | None = None) -> FieldError:
        name = self.field_name
        if name is None and path and "->" in path:
            name = path.rsplit("->", 1)[1].strip()
        return FieldError(name, reason, path=path if path != "(???)" else None)

    def _decode(self, obj, context, path):
        if len(obj) != self.width:
            raise self._fail(f"{len(obj)} bytes where {self.width} are expected", path)
        return self._from_bytes(obj, path)

    def _encode(self, obj, context, path):
        return self.pack(obj, path)

    def _from_bytes(self, raw: bytes, path):  # pragma: no cover - abstract
        raise NotImplementedError

    def pack(self, value, path: str | None = None) -> bytes:  # pragma: no cover - abstract
        """The field's bytes for ``value``: ``build(value)`` without construct's
        context (what :func:`packer` calls)."""
        raise NotImplementedError

    # -- compiler support --------------------------------------------------

    def _emitparse(self, code):
        self._compileinstance(code)
        return f"linkedinstances[{id(self)}]._decode(io.read({self.width}), this, '(???)')"

    def _emitbuild(self, code):
        self._compileinstance(code)
        return (
            f"(io.write(linkedinstances[{id(self)}]._encode(obj, this, '(???)')), obj)[1]"
        )

    def __repr__(self):
        name = f"{self.field_name!r} / " if self.field_name else ""
        return f"{name}{type(self).__name__}({self.width})"


class GbkText(_Field):
    """``X(n)``: GBK text, left aligned, right padded with spaces to ``n`` bytes.

    Parses into the text without its trailing spaces; invalid GBK (including
    a double-byte character cut in half by the field's end) is an error.
    Builds from a ``str`` whose GBK encoding fits in ``n`` bytes; a longer
    text or one GBK cannot encode is an error, never silently cut.
    """

    def _from_bytes(self, raw, path):
        try:
            text = raw.decode(ENCODING)
        except UnicodeDecodeError as e:
            raise self._fail(f"invalid GBK at byte {e.start}", path) from None
        # 0x20 is never the second byte of a GBK character (0x40-0xFE), so
        # stripping decoded spaces strips exactly the padding bytes.
        return text.rstrip(" ")

    def pack(self, value, path=None):
        if not isinstance(value, str):
            raise self._fail(f"text expected, not {type(value).__name__}", path)
        try:
            raw = value.encode(ENCODING)
        except UnicodeEncodeError as e:
            raise self._fail(f"character {value[e.start]!r} is not GBK", path) from None
        width = self.width
        if len(raw) > width:
            raise self._fail(f"text is {len(raw)} bytes, the field holds {width}", path)
        return raw.ljust(width, b" ")


class Digits(_Field):
    """``N(n)`` as text: ``0-9`` only, left padded with ``0``; parses into the
    ``n``-digit ``str``.  Builds from a digit string of at most ``n`` digits
    or a non-negative ``int`` that fits."""

    def _check(self, raw: bytes, path):
        # ``raw`` is the field's n > 0 bytes: ``isdigit`` is exactly ``0-9``
        if not raw.isdigit():
            raise self._fail("not all digits", path)

    def _from_bytes(self, raw, path):
        self._check(raw, path)
        return raw.decode("ascii")

    def _digits(self, value, path) -> str:
        if isinstance(value, bool):
            raise self._fail("digits expected, not bool", path)
        if isinstance(value, int):
            if value < 0:
                raise self._fail("negative number", path)
            text = str(value)
        elif isinstance(value, str):
            if _DIGITS_STR.fullmatch(value) is None:
                raise self._fail("not all digits", path)
            text = value
        else:
            raise self._fail(f"digits expected, not {type(value).__name__}", path)
        if len(text) > self.width:
            raise self._fail(f"{len(text)} digits, the field holds {self.width}", path)
        return text

    def pack(self, value, path=None):
        return self._digits(value, path).zfill(self.width).encode("ascii")


class Number(Digits):
    """``N(n)`` as a non-negative ``int`` below ``10**n``."""

    def _from_bytes(self, raw, path):
        self._check(raw, path)
        return int(raw)

    def pack(self, value, path=None):
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(f"int expected, not {type(value).__name__}", path)
        if value < 0:
            raise self._fail("negative number", path)
        width = self.width
        raw = b"%0*d" % (width, value)
        if len(raw) > width:
            raise self._fail(f"{len(raw)} digits, the field holds {width}", path)
        return raw


class Fen(Number):
    """``N(n)`` amount in fen (分): ``000000012345`` is 123.45 yuan."""

    def __init__(self, width: int = 12):
        super().__init__(width)


class DateN8(_Field):
    """``N(8)`` ``YYYYMMDD`` as :class:`datetime.date`; a date that is not a
    date (``20261131``, ``00000000``) is an error."""

    def __init__(self):
        super().__init__(8)

    def _from_bytes(self, raw, path):
        if _DIGITS.fullmatch(raw) is None:
            raise self._fail("date is not all digits", path)
        try:
            return date(int(raw[:4]), int(raw[4:6]), int(raw[6:]))
        except ValueError:
            raise self._fail(f"{raw.decode('ascii')} is not a date", path) from None

    def pack(self, value, path=None):
        if not isinstance(value, date):
            raise self._fail(f"date expected, not {type(value).__name__}", path)
        return f"{value.year:04d}{value.month:02d}{value.day:02d}".encode("ascii")

    def __repr__(self):
        name = f"{self.field_name!r} / " if self.field_name else ""
        return f"{name}DateN8()"


class Counted(Construct):
    """A list preceded by its element count: ``Counted(Number(2), BILL)``.

    The count is written from the list's length, so nothing has to be kept in
    step with it; parsing reads the count, then that many elements.  The same
    bytes as ``"n" / Number(2), "bills" / Array(this.n, BILL)``, for a layout
    whose count is not a value of its own.
    """

    def __init__(self, count: Construct, subcon: Construct):
        super().__init__()
        self.count = count
        self.subcon = subcon

    def _parse(self, stream, context, path):
        n = self.count._parsereport(stream, context, path)
        return ListContainer(self.subcon._parsereport(stream, context, path) for _ in range(n))

    def _build(self, obj, stream, context, path):
        self.count._build(len(obj), stream, context, path)
        for item in obj:
            self.subcon._build(item, stream, context, path)
        return obj


def packer(con: Construct):
    """A fast ``value -> bytes`` builder for ``con``, equal to ``con.build(value)``.

    For a layout built on every answer (a bank's private field): a ``Struct``
    of named members (``Terminated`` is allowed and builds nothing),
    :class:`Counted` lists, and any construct with a ``pack(value) -> bytes``
    method (the helpers here, the ISO 8583 fields of
    :mod:`bankgate.codec.iso8583`), without construct's per-call context
    bookkeeping.  Anything else is a ``TypeError`` when the builder is made.
    """
    if isinstance(con, Renamed):
        return packer(con.subcon)
    if isinstance(con, Counted):
        count, item = packer(con.count), packer(con.subcon)
        return lambda obj: count(len(obj)) + b"".join([item(x) for x in obj])
    if isinstance(con, Struct):
        members = []
        for sc in con.subcons:
            if sc.name:
                members.append((sc.name, packer(sc)))
            elif sc is not Terminated:
                raise TypeError(f"packer: unnamed {sc!r} not supported")
        return lambda obj: b"".join([p(obj[name]) for name, p in members])
    pack = getattr(con, "pack", None)
    if pack is None:
        raise TypeError(f"packer: {con!r} not supported")
    return pack
