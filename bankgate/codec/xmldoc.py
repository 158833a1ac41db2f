"""XML for bank interfaces: parse safely, read in a declared order, build in one.

Banks' XML interfaces (``docs/specs/ref-xml.rst``) are rigid documents: a
declared encoding (usually GBK, which expat itself cannot decode), elements
in a fixed order, text values, no attributes.  This module is what any plugin
with such a spec uses, so the plugin keeps only its declarations:

- :func:`parse` -- a whole (online) document, through ``defusedxml``: a
  DOCTYPE or an entity declaration raises :class:`XmlRefused` and is never
  expanded, external entities are never fetched; a document that is not
  well-formed (or not in its declared encoding) raises :class:`XmlMalformed`.
  Comments and processing instructions are kept in :attr:`Document.extras`
  for the plugin to refuse.
- :func:`read_fields` -- an element's children in a declared order, each
  checked by its own validator (:class:`Field`), text trimmed of ASCII
  spaces; :class:`XmlFormatError` names the element that is wrong.
- text formats for those validators: :func:`pattern`, :func:`printable`,
  :func:`yyyymmdd`, :func:`hhmmss`, :func:`yuan_to_fen` / :func:`fen_to_yuan`;
- :func:`render` / :func:`declaration` / :func:`build` -- a document in a
  declared element order, escaped, in any encoding.
- :func:`rows` -- a streaming reader for large files (a statement of a
  million records): a ``defusedxml`` parser fed in chunks with a target that
  keeps no tree, yielding each element whose children are text-only as one
  :class:`Row` with its line number.  Memory stays bounded by the nesting
  depth and the longest text, not by the file.

Standard library, ``defusedxml`` and the canonical money helpers; nothing here knows a
bank.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, BinaryIO
from xml.etree.ElementTree import Element, ParseError, TreeBuilder
from xml.parsers.expat import ExpatError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from bankgate.canon import money
from bankgate.canon.money import MAX_FEN

__all__ = [
    "Document", "Field", "Row", "XmlError", "XmlFormatError", "XmlMalformed", "XmlRefused",
    "build", "declaration", "escape", "fen_to_yuan", "hhmmss", "parse", "pattern",
    "printable", "read_fields", "render", "rows", "text_of", "trim", "yuan_to_fen", "yyyymmdd",
]

WHITESPACE = " \t\r\n"  # XML's S: allowed between elements


class XmlError(ValueError):
    """A document the parser cannot use."""


class XmlMalformed(XmlError):
    """Not well-formed XML (or not in the encoding it declares)."""


class XmlRefused(XmlError):
    """A DOCTYPE, an entity declaration or an external reference: refused
    before anything in it is expanded or fetched."""


class XmlFormatError(ValueError):
    """A well-formed document that breaks the spec's shape.

    ``element`` is the offending element's name ("" for the document),
    ``reason`` a short English text.
    """

    def __init__(self, element: str, reason: str):
        self.element = element
        self.reason = reason
        super().__init__(f"{element}: {reason}" if element else reason)


# -- the XML declaration and the encoding -----------------------------------------------

_DECL = re.compile(
    rb"<\?xml[ \t\r\n]+version[ \t\r\n]*=[ \t\r\n]*([\"'])([0-9.]+)\1"
    rb"(?:[ \t\r\n]+encoding[ \t\r\n]*=[ \t\r\n]*([\"'])([A-Za-z][A-Za-z0-9._-]*)\3)?"
    rb"(?:[ \t\r\n]+standalone[ \t\r\n]*=[ \t\r\n]*([\"'])(yes|no)\5)?[ \t\r\n]*\?>"
)


@dataclass(frozen=True)
class Prolog:
    """What the document's first bytes say: ``encoding`` to decode with,
    ``declared`` the encoding its XML declaration names (``None``: no
    declaration; ``""``: a declaration without an encoding), ``version``."""

    encoding: str
    declared: str | None
    version: str | None


def prolog(head: bytes) -> Prolog:
    """Read the XML declaration (or the byte order mark) at the start of ``head``.

    Raises :class:`XmlMalformed` for a declaration that is not one, or an
    encoding Python does not know.
    """
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return Prolog("utf-16", None, None)
    if head.startswith(codecs.BOM_UTF8):
        return Prolog("utf-8-sig", None, None)
    if not re.match(rb"<\?xml[ \t\r\n]", head):
        return Prolog("utf-8", None, None)
    m = _DECL.match(head)
    if m is None:
        raise XmlMalformed("malformed XML declaration")
    name = (m.group(4) or b"").decode("ascii")
    try:
        encoding = codecs.lookup(name or "utf-8").name
    except LookupError:
        raise XmlMalformed(f"unknown encoding {name!r}") from None
    return Prolog(encoding, name, m.group(2).decode("ascii"))


def _safe_parser(target: Any) -> DefusedXMLParser:
    return DefusedXMLParser(target=target, forbid_dtd=True, forbid_entities=True,
                            forbid_external=True)


def _xml_error(e: Exception) -> XmlError:
    if isinstance(e, DefusedXmlException):
        return XmlRefused(f"{type(e).__name__}: DOCTYPE and entity declarations are refused")
    if isinstance(e, UnicodeDecodeError):
        return XmlMalformed(f"not {e.encoding}: invalid byte at {e.start}")
    if isinstance(e, ParseError | ExpatError):
        return XmlMalformed(f"not well-formed: {e}")
    return XmlMalformed(f"not well-formed: {type(e).__name__}")


# -- whole documents ------------------------------------------------------------------


class _Builder(TreeBuilder):
    """A tree builder that notes comments and processing instructions anywhere
    (the plain one drops those outside the root element)."""

    def __init__(self):
        super().__init__()
        self.extras: list[str] = []

    def comment(self, text):
        self.extras.append("comment")

    def pi(self, target, text=None):
        self.extras.append(f"processing instruction {target!r}")


@dataclass(frozen=True)
class Document:
    root: Element
    prolog: Prolog
    extras: tuple[str, ...] = ()  # comments and processing instructions found


def parse(data: bytes) -> Document:
    """Parse a whole document safely (see the module's docstring).

    The bytes are decoded with the encoding the declaration names (expat
    knows few encodings; Python knows GBK), then parsed with ``defusedxml``.
    """
    pro = prolog(data[:200])
    builder = _Builder()
    parser = _safe_parser(builder)
    try:
        text = data.decode(pro.encoding)
        parser.feed(text)
        root = parser.close()
    except (DefusedXmlException, ParseError, UnicodeDecodeError) as e:
        raise _xml_error(e) from None
    return Document(root, pro, tuple(builder.extras))


# -- reading in a declared order ------------------------------------------------------


def trim(text: str | None) -> str:
    """Text without its leading and trailing ASCII spaces (only ``0x20``)."""
    return (text or "").strip(" ")


def _blank(text: str | None) -> bool:
    return not text or not text.strip(WHITESPACE)


def text_of(elem: Element) -> str:
    """A text-only element's trimmed text; :class:`XmlFormatError` for an
    element with attributes or children."""
    if elem.attrib:
        raise XmlFormatError(elem.tag, "attributes are not allowed")
    if len(elem):
        raise XmlFormatError(elem.tag, "text expected, not elements")
    return trim(elem.text)


def children(elem: Element) -> list[Element]:
    """``elem``'s child elements; :class:`XmlFormatError` for attributes or
    text (other than whitespace) between them."""
    if elem.attrib:
        raise XmlFormatError(elem.tag, "attributes are not allowed")
    if not _blank(elem.text) or any(not _blank(c.tail) for c in elem):
        raise XmlFormatError(elem.tag, "text between elements")
    return list(elem)


@dataclass(frozen=True)
class Field:
    """One element of a declared sequence.

    ``check(text) -> value`` raises ``ValueError`` with the reason (``None``:
    the trimmed text is the value).  ``optional``: may be absent.
    ``nested``: the element holds elements, returned as they are.
    """

    name: str
    check: Callable[[str], Any] | None = None
    optional: bool = False
    nested: bool = False


def read_fields(parent: Element, fields: Sequence[Field]) -> dict[str, Any]:
    """``parent``'s children, exactly ``fields`` in that order, checked.

    Returns name -> value.  Raises :class:`XmlFormatError` naming the first
    element that is missing, extra, out of order or invalid.
    """
    kids = children(parent)
    out: dict[str, Any] = {}
    i = 0
    for f in fields:
        if i < len(kids) and kids[i].tag == f.name:
            elem = kids[i]
            i += 1
        elif f.optional:
            continue
        else:
            found = f"<{kids[i].tag}> found" if i < len(kids) else "missing"
            raise XmlFormatError(f.name, f"expected here, {found}")
        if f.nested:
            out[f.name] = elem
            continue
        text = text_of(elem)
        if f.check is None:
            out[f.name] = text
            continue
        try:
            out[f.name] = f.check(text)
        except ValueError as e:
            raise XmlFormatError(f.name, str(e) or "invalid") from None
    if i < len(kids):
        raise XmlFormatError(kids[i].tag, f"not expected in <{parent.tag}>")
    return out


# -- text formats: validators for Field.check ------------------------------------------

def pattern(regex: str, rule: str) -> Callable[[str], str]:
    """A check that the whole text matches ``regex`` (``rule`` names it)."""
    rx = re.compile(regex)

    def check(text: str) -> str:
        if rx.fullmatch(text) is None:
            raise ValueError(f"{text[:40]!r} is not {rule}")
        return text
    return check


def printable(low: int, high: int) -> Callable[[str], str]:
    """A check for ``low``..``high`` printable characters."""
    def check(text: str) -> str:
        if not low <= len(text) <= high or not text.isprintable():
            raise ValueError(f"{low}-{high} printable characters expected")
        return text
    return check


def yyyymmdd(text: str) -> date:
    if re.fullmatch(r"[0-9]{8}", text) is None:
        raise ValueError(f"{text[:40]!r} is not YYYYMMDD")
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise ValueError(f"{text} is not a date") from None


def hhmmss(text: str) -> str:
    if re.fullmatch(r"([01][0-9]|2[0-3])[0-5][0-9][0-5][0-9]", text) is None:
        raise ValueError(f"{text[:40]!r} is not HHMMSS")
    return text


def yuan_to_fen(text: str) -> int:
    """Yuan as digits, a point and exactly two decimals (``1371.06``, ``0.50``,
    ``007.01``) -> fen; at most 13 digits before the point."""
    if re.fullmatch(r"[0-9]{1,13}\.[0-9]{2}", text) is None:
        raise ValueError(f"{text[:40]!r} is not yuan with two decimals")
    fen = int(text.replace(".", ""))
    if fen > MAX_FEN:
        raise ValueError(f"{text} is too large")
    return fen


def fen_to_yuan(fen: int) -> str:
    """Fen as yuan with two decimals: ``137106`` -> ``1371.06``."""
    if isinstance(fen, bool) or not isinstance(fen, int) or fen < 0:
        raise ValueError(f"an amount in fen expected, not {fen!r}")
    return money.fen_to_yuan(fen)


# -- building ---------------------------------------------------------------------------

_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_ESCAPE = re.compile("[&<>]")


def escape(text: str) -> str:
    """Element text escaped (``&``, ``<``, ``>``)."""
    if _ESCAPE.search(text) is None:
        return text
    return _ESCAPE.sub(lambda m: _ESCAPES[m.group()], text)


Content = str | Sequence[tuple[str, Any]]


def render(items: Iterable[tuple[str, Any]]) -> str:
    """Elements in the given order: ``(name, text)`` or ``(name, [(child,
    ...), ...])``; an empty text is ``<X></X>``, never ``<X/>``."""
    out = []
    for name, value in items:
        if isinstance(value, str):
            out.append(f"<{name}>{escape(value)}</{name}>")
        else:
            out.append(f"<{name}>{render(value)}</{name}>")
    return "".join(out)


def declaration(encoding: str = "GBK") -> str:
    return f'<?xml version="1.0" encoding="{encoding}"?>'


def build(root: str, items: Iterable[tuple[str, Any]], encoding: str = "GBK") -> bytes:
    """A whole document: declaration, ``<root>``, ``items`` in order.
    ``UnicodeEncodeError`` for text the encoding cannot carry."""
    text = declaration(encoding) + render([(root, list(items))])
    return text.encode(encoding)


# -- streaming --------------------------------------------------------------------------


@dataclass
class Row:
    """An element whose children are all text-only: ``path`` its ancestors and
    itself from the root, ``fields`` its children's ``(name, trimmed text)``
    in document order, ``line`` where it starts."""

    path: tuple[str, ...]
    line: int
    fields: list[tuple[str, str]] = field(default_factory=list)

    @property
    def tag(self) -> str:
        return self.path[-1]


class _RowReader:
    """Expat handlers keeping no tree, only the open elements (a stack of
    ``[tag, line, fields, nested, text]``): a finished text-only element
    becomes a field of its parent, a finished element with fields a
    :class:`Row`.  The handlers sit directly on ``defusedxml``'s expat parser
    (whose DOCTYPE and entity handlers stay in place): a million records
    are some six million elements, and every call saved counts."""

    def __init__(self, expat, max_text: int, max_depth: int):
        self.expat = expat
        self.max_text = max_text
        self.max_depth = max_depth
        self.stack: list[list] = []
        self.ready: list[Row] = []
        self.error: str | None = None
        expat.buffer_text = True  # one data call per text, not per line or chunk
        expat.buffer_size = 1 << 16
        expat.StartElementHandler = self.start
        expat.EndElementHandler = self.end
        expat.CharacterDataHandler = self.data
        expat.CommentHandler = self.comment
        expat.ProcessingInstructionHandler = self.pi

    def _fail(self, reason: str) -> None:
        if self.error is None:
            self.error = f"line {self.expat.CurrentLineNumber}: {reason}"

    def start(self, tag, attrib):
        stack = self.stack
        if attrib:
            self._fail(f"<{tag}>: attributes are not allowed")
        if stack:
            parent = stack[-1]
            if parent[4]:
                if parent[4].strip(WHITESPACE):
                    self._fail(f"<{parent[0]}>: text between elements")
                parent[4] = ""
            parent[3] = True
            if len(stack) >= self.max_depth:
                self._fail(f"<{tag}>: nested deeper than {self.max_depth}")
        stack.append([tag, self.expat.CurrentLineNumber, [], False, ""])

    def data(self, text):
        top = self.stack[-1] if self.stack else None
        if top is not None:
            top[4] += text
            if len(top[4]) > self.max_text:
                self._fail(f"<{top[0]}>: text longer than {self.max_text} characters")
                top[4] = ""

    def end(self, tag):
        stack = self.stack
        tag, line, fields, nested, text = stack.pop()
        if not nested:  # text-only: a field of its parent
            if stack:
                stack[-1][2].append((tag, text.strip(" ")))
            return
        if text and text.strip(WHITESPACE):
            self._fail(f"<{tag}>: text between elements")
        if fields:
            path = tuple([o[0] for o in stack]) + (tag,)
            self.ready.append(Row(path, line, fields))

    def comment(self, text):
        self._fail("comments are not allowed")

    def pi(self, target, text=None):
        self._fail(f"processing instruction {target!r} not allowed")


def rows(source: BinaryIO | bytes, chunk: int = 1 << 16, max_text: int = 1024,
         max_depth: int = 16) -> Iterator[Row]:
    """Stream ``source`` (a binary file or bytes), yielding each :class:`Row`
    as its end tag is read.

    The document is decoded in the encoding its declaration names and parsed
    with ``defusedxml``'s expat parser in chunks of ``chunk`` bytes; no tree
    is kept.  Raises :class:`XmlRefused` (DOCTYPE, entities),
    :class:`XmlMalformed` (not well-formed, not in its encoding) or
    :class:`XmlFormatError` for attributes, comments, processing
    instructions, text between elements, a text over ``max_text`` characters
    or nesting over ``max_depth`` -- each message names the line.
    """
    read = source.read if hasattr(source, "read") else _BytesReader(source).read
    first = read(chunk)
    while 0 < len(first) < 200:  # enough for the declaration
        more = read(chunk)
        if not more:
            break
        first += more
    pro = prolog(first[:200])
    decoder = codecs.getincrementaldecoder(pro.encoding)()
    expat = _safe_parser(TreeBuilder()).parser
    reader = _RowReader(expat, max_text, max_depth)
    data = first
    try:
        while True:
            final = not data
            expat.Parse(decoder.decode(data, final=final), final)
            if reader.error:
                raise XmlFormatError("", reader.error)
            if reader.ready:
                yield from reader.ready
                reader.ready.clear()
            if final:
                break
            data = read(chunk)
    except (DefusedXmlException, ExpatError, UnicodeDecodeError) as e:
        err = _xml_error(e)
        raise type(err)(f"line {expat.CurrentLineNumber}: {err}") from None


class _BytesReader:
    def __init__(self, data: bytes):
        self.view = memoryview(data)
        self.pos = 0

    def read(self, n: int) -> bytes:
        out = bytes(self.view[self.pos:self.pos + n])
        self.pos += len(out)
        return out
