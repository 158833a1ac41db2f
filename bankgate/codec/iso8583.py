"""ISO 8583 for plugins: field types, bitmaps, and a packager built from a field table.

A plugin declares its spec's field table -- field number -> :class:`Fixed` or
:class:`LLVar`, each with its content class -- and hands it to
:class:`Packager`, which builds the rest from it once: the bitmap, the
scanner the gateway's hot path reads frames with, the assembler of answers,
the content checks and the whole message as one ``construct`` struct.  The
plugin itself holds only its spec, as jPOS's ``ISO87APackager`` is a field
table for ``ISOBasePackager``.

Fields
    =========================  ==========================================
    ``Fixed(length, kind)``    exactly ``length`` bytes
    ``LLVar(2, maxlen, kind)``  LLVAR: 2 ASCII digits counting the bytes, then
                               the bytes
    ``LLVar(3, maxlen, kind)``  LLLVAR: the same with 3 digits
    =========================  ==========================================

    ``kind`` is the content class: ``n``, ``an``, ``anp``, ``ans`` (see
    :data:`CONTENT`), ``b`` (binary, anything) or ``gbk`` (text valid in GBK,
    for private fields that carry Chinese).  Every value is raw ``bytes``;
    what the bytes mean (digits as an amount, text as a customer number) is
    the plugin's business.

Frames
    A frame is ``header`` (``header_length`` bytes the packager does not read,
    e.g. a TPDU: :func:`tpdu`), the 4-byte MTI, the primary bitmap, the
    secondary bitmap when bit 1 is set, then the fields in number order.
    The MAC fields 64 and 128 are recorded with their offsets, since what a
    MAC covers ends where they start.  A field the table does not define
    cannot be skipped (its length is unknown): scanning stops there.

MAC
    :meth:`Packager.assemble` appends the MAC field under a key with
    :func:`connection_x919` (ANSI X9.19, the key's ciphers kept with the
    connection), or another ``mac(state, key, data)`` given to the packager.

Everything here is generic ISO 8583:1987; no bank's codes or field meanings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from construct import (
    Computed,
    Const,
    Construct,
    If,
    IfThenElse,
    Int64ub,
    SizeofError,
    Struct,
    Tell,
    Terminated,
    this,
)
from construct.core import stream_write

from bankgate.codec.crypto import X919
from bankgate.codec.fields import ENCODING, FieldError

__all__ = [
    "CONTENT",
    "SECONDARY",
    "TPDU_LENGTH",
    "IsoField",
    "Fixed",
    "LLVar",
    "Scan",
    "Packager",
    "field_bit",
    "field_mask",
    "tpdu",
    "reply_tpdu",
    "connection_x919",
    "forget_x919",
]

#: The pattern of one byte of each ISO 8583 content class: ``n`` digits,
#: ``an`` letters and digits, ``anp`` letters, digits and pad (space)
#: characters, ``ans`` printable ASCII.  ``b`` (binary) and ``gbk`` (GBK
#: text) are checked without a pattern.
CONTENT = {
    "n": rb"[0-9]",
    "an": rb"[0-9A-Za-z]",
    "anp": rb"[0-9A-Za-z ]",
    "ans": rb"[\x20-\x7e]",
}
KINDS = (*CONTENT, "b", "gbk")

_ALL = (1 << 128) - 1
_LOW64 = (1 << 64) - 1
_ZERO_MAC = bytes(8)


def field_bit(n: int) -> int:
    """Field ``n``'s bit in the 128-bit bitmap (primary << 64 | secondary)."""
    return 1 << (128 - n)


def field_mask(nums) -> int:
    """The 128-bit bitmap of the fields ``nums``."""
    m = 0
    for n in nums:
        m |= 1 << (128 - n)
    return m


#: Bit 1: a secondary bitmap follows the primary one.
SECONDARY = field_bit(1)


def _word_bit(n: int) -> int:
    """Field ``n``'s bit in its own 64-bit bitmap word."""
    return 1 << (64 - ((n - 1) % 64) - 1)


def _gbk_ok(value: bytes) -> bool:
    try:
        value.decode(ENCODING)
    except UnicodeDecodeError:
        return False
    return True


def _pattern(kind: str) -> bytes:
    try:
        return CONTENT[kind]
    except KeyError:
        raise ValueError(f"content class {kind!r} is not one of {', '.join(KINDS)}") from None


# =============================================================================
# field types
# =============================================================================


class IsoField(Construct):
    """What every field type has: its content class and its wire form.

    ``scan(buf, pos)`` reads the field from ``buf`` at ``pos`` and returns
    ``(value, end)`` (raw bytes, content not checked); ``pack(value)``
    returns the field's wire bytes; ``valid(value)`` checks the content
    (content class, maximum length).  ``_parse`` / ``_build`` make it a
    regular construct, and compiled structs call ``read`` / ``write``
    directly.  Errors are :class:`bankgate.codec.fields.FieldError`.
    """

    kind = "b"
    maxlen = 0
    #: ``check(value) -> truthy`` for the content, ``None`` for binary fields
    check = None

    def valid(self, value: bytes) -> bool:
        return self.check is None or bool(self.check(value))

    def _parse(self, stream, context, path):
        return self.read(stream)

    def _build(self, obj, stream, context, path):
        data = self.pack(obj)
        stream_write(stream, data, len(data), path)
        return obj

    def write(self, obj, stream):
        stream.write(self.pack(obj))
        return obj

    def _emitparse(self, code):
        self._compileinstance(code)
        return f"linkedinstances[{id(self)}].read(io)"

    def _emitbuild(self, code):
        self._compileinstance(code)
        return f"linkedinstances[{id(self)}].write(obj, io)"


class Fixed(IsoField):
    """A fixed-length field: exactly ``length`` bytes of content class ``kind``."""

    def __init__(self, length: int, kind: str = "b"):
        super().__init__()
        self.length = self.maxlen = length
        self.kind = kind
        if kind == "n":
            self.check = bytes.isdigit
        elif kind == "gbk":
            self.check = _gbk_ok
        elif kind != "b":
            self.check = re.compile(_pattern(kind) + b"+").fullmatch

    def scan(self, buf: bytes, pos: int) -> tuple[bytes, int]:
        end = pos + self.length
        if end > len(buf):
            raise FieldError(None, f"{self.length} bytes expected")
        return buf[pos:end], end

    def read(self, stream) -> bytes:
        b = stream.read(self.length)
        if len(b) != self.length:
            raise FieldError(None, f"{self.length} bytes expected")
        return b

    def pack(self, value: bytes) -> bytes:
        if not isinstance(value, (bytes, bytearray)) or len(value) != self.length:
            raise FieldError(None, f"must be {self.length} bytes")
        return bytes(value)

    def _sizeof(self, context, path):
        return self.length

    def __repr__(self):
        return f"Fixed({self.length}, {self.kind!r})"


class LLVar(IsoField):
    """A variable-length field: LLVAR (``width`` 2) or LLLVAR (``width`` 3).

    ``width`` ASCII digits count the bytes that follow, at most ``maxlen``
    of content class ``kind``.  An empty value is valid only for ``b``.
    """

    def __init__(self, width: int, maxlen: int, kind: str = "ans"):
        super().__init__()
        self.width = width
        self.maxlen = maxlen
        self.kind = kind
        self._cap = 10**width - 1
        if kind == "b":
            self.check = self._short_enough
        elif kind == "gbk":
            self.check = self._gbk
        else:
            self.check = re.compile(_pattern(kind) + b"{1,%d}" % maxlen).fullmatch

    def _short_enough(self, value: bytes) -> bool:
        return len(value) <= self.maxlen

    def _gbk(self, value: bytes) -> bool:
        return 0 < len(value) <= self.maxlen and _gbk_ok(value)

    def scan(self, buf: bytes, pos: int) -> tuple[bytes, int]:
        w = self.width
        head = buf[pos : pos + w]
        if len(head) != w or not head.isdigit():
            raise FieldError(None, "bad length prefix")
        pos += w
        end = pos + int(head)
        if end > len(buf):
            raise FieldError(None, "shorter than its length prefix")
        return buf[pos:end], end

    def read(self, stream) -> bytes:
        head = stream.read(self.width)
        if len(head) != self.width or not head.isdigit():
            raise FieldError(None, "bad length prefix")
        n = int(head)
        b = stream.read(n)
        if len(b) != n:
            raise FieldError(None, "shorter than its length prefix")
        return b

    def pack(self, value: bytes) -> bytes:
        # The capacity of the prefix, not the field's maximum: an echoed field
        # is sent back as it came; maxima are checked by ``valid``.
        if not isinstance(value, (bytes, bytearray)) or len(value) > self._cap:
            raise FieldError(None, "too long for its length prefix")
        return b"%0*d" % (self.width, len(value)) + value

    def _sizeof(self, context, path):
        raise SizeofError("variable length field")

    def __repr__(self):
        return f"LLVar({self.width}, {self.maxlen}, {self.kind!r})"


# =============================================================================
# the TPDU header
# =============================================================================

#: A TPDU: an id byte, then the destination and the source address (2 bytes each).
TPDU_LENGTH = 5


def tpdu(ident: int) -> Struct:
    """The layout of a TPDU whose id byte is ``ident``: ``id``, ``dst``, ``src``."""
    return Struct("id" / Const(bytes([ident])), "dst" / Fixed(2), "src" / Fixed(2))


def reply_tpdu(frame: bytes) -> bytes:
    """The TPDU of the answer to ``frame``: its id, destination and source swapped."""
    return frame[0:1] + frame[3:5] + frame[1:3]


# =============================================================================
# the MAC context of a connection
# =============================================================================

#: Where :func:`connection_x919` keeps the key's ciphers in a connection's state.
MAC_STATE = "_x919"


def connection_x919(state: dict, key: bytes, data: bytes) -> bytes:
    """ANSI X9.19 of ``data`` under ``key``, the key's ciphers kept in ``state``.

    ``state`` is the connection's state dict (``Session.state``): the ciphers
    (:class:`bankgate.codec.crypto.X919`) are set up once per key and end
    with the connection, like the key itself; a new key replaces them.
    """
    m = state.get(MAC_STATE)
    if m is None or m.key != key:
        m = state[MAC_STATE] = X919(key)
    return m.mac(data)


def forget_x919(state: dict) -> None:
    """Drop the ciphers :func:`connection_x919` keeps (when the key is dropped)."""
    state.pop(MAC_STATE, None)


# =============================================================================
# the packager
# =============================================================================


@dataclass(slots=True)
class Scan:
    """What :meth:`Packager.scan` read from a frame."""

    fields: dict  # number -> raw bytes, every field that could be read
    present: int  # 128-bit bitmap (bit 1 = secondary bitmap)
    secondary: bool
    complete: bool  # every field read, nothing left over
    broken: bool  # a field could not be read (the MAC's place is unknown)
    undefined: bool  # the bitmap names a field the table does not define
    mac_at: dict  # 64 / 128 -> offset of that field in the frame


class Packager:
    """An ISO 8583 message format, made from its field table.

    ``fields`` maps field numbers (2 to 128) to :class:`Fixed` / :class:`LLVar`;
    ``header_length`` is the number of bytes before the MTI (a TPDU's 5);
    ``mac(state, key, data) -> 8 bytes`` computes the MAC field
    (:func:`connection_x919` unless given).

    - :meth:`scan` reads a frame's bitmap(s) and fields: the decoder's hot
      path, a loop over the table flattened once;
    - :meth:`assemble` builds a frame from raw field values, bitmap and MAC;
    - :meth:`invalid` finds the first field whose content its type refuses;
    - :meth:`message` is the whole frame as one ``construct`` Struct.
    """

    def __init__(self, fields: dict, header_length: int = 0, mac=connection_x919):
        for n, f in fields.items():
            if not isinstance(n, int) or not 2 <= n <= 128:
                raise ValueError(f"field number {n!r}: fields are 2 to 128 (1 is the bitmap)")
            if not isinstance(f, IsoField):
                raise TypeError(f"field {n}: {f!r} is not an IsoField")
        self.fields = dict(sorted(fields.items()))
        self.header_length = header_length
        self.mac = mac
        self.defined = field_mask(self.fields) | SECONDARY
        self.undefined = ~self.defined & _ALL
        self.checks = tuple((n, f.check) for n, f in self.fields.items() if f.check is not None)
        self._pack = {n: f.pack for n, f in self.fields.items()}
        self.scan = self._scanner()

    def _scanner(self):
        # (number, bitmap bit, fixed length, length-prefix width): the field
        # table flattened for the loop (the same lengths as the field types').
        table = tuple(
            (num, 1 << (128 - num), getattr(f, "length", 0), getattr(f, "width", 0))
            for num, f in self.fields.items()
        )
        undefined_mask = self.undefined
        at1 = self.header_length + 4  # the primary bitmap, after the MTI
        at2 = at1 + 8  # the secondary bitmap, or the first field
        end2 = at2 + 8

        def scan(frame: bytes) -> Scan | None:
            """Read the bitmap and the fields; ``None`` when the bitmap is unreadable.

            Equivalent to each field type's ``scan`` field after field, inlined.
            """
            n = len(frame)
            if n < at2:
                return None
            bm = int.from_bytes(frame[at1:at2], "big") << 64
            pos = at2
            secondary = bool(bm >> 127)
            if secondary:
                if n < end2:
                    return None
                bm |= int.from_bytes(frame[at2:end2], "big")
                pos = end2
            unknown = bm & undefined_mask
            stop = 129 - unknown.bit_length() if unknown else 129  # first undefined field
            fields = {}
            mac_at = {}
            broken = undefined = bool(unknown)
            for num, bit, length, width in table:
                if num >= stop:
                    break
                if bm & bit:
                    if width:
                        head = frame[pos : pos + width]
                        if len(head) != width or not head.isdigit():
                            broken = True
                            break
                        pos += width
                        length = int(head)
                    elif num == 64 or num == 128:
                        mac_at[num] = pos
                    end = pos + length
                    if end > n:
                        broken = True
                        break
                    fields[num] = frame[pos:end]
                    pos = end
            return Scan(fields, bm, secondary, not broken and pos == n, broken, undefined, mac_at)

        return scan

    def assemble(
        self,
        header: bytes,
        mti: bytes,
        fields: dict,
        mac_field: int | None = None,
        mac_key: bytes | None = None,
        state: dict | None = None,
    ) -> bytes:
        """``header`` + MTI + bitmap(s) + fields, then the MAC field when asked for.

        ``fields`` maps field numbers to raw bytes (without the MAC).  The
        MAC field comes last (64 when no field above 64 is present, else 128)
        and covers the MTI up to the byte before it: ``mac(state, mac_key,
        ...)``, or eight zero bytes when ``mac_key`` is ``None``.  ``state``:
        the connection's state dict, where the MAC key's ciphers are kept
        between messages.  A secondary bitmap is sent only when a field above
        64 is present.
        """
        nums = sorted(fields)
        bm = 0
        for k in nums:
            bm |= 1 << (128 - k)
        if mac_field:
            bm |= 1 << (128 - mac_field)
        if bm & _LOW64:
            bitmap = (bm | SECONDARY).to_bytes(16, "big")
        else:
            bitmap = (bm >> 64).to_bytes(8, "big")
        pack = self._pack
        parts = [mti, bitmap]
        for k in nums:
            parts.append(pack[k](fields[k]))
        body = b"".join(parts)
        if mac_field:
            body += (
                _ZERO_MAC
                if mac_key is None
                else self.mac({} if state is None else state, mac_key, body)
            )
        return header + body

    def invalid(self, fields: dict) -> int | None:
        """The first field, in number order, whose content its type refuses."""
        for num, check in self.checks:
            value = fields.get(num)
            if value is not None and not check(value):
                return num
        return None

    def message(self, header: Construct | None = None) -> Struct:
        """The whole frame as one ``construct`` Struct (for layouts and the bank side).

        Members: ``header`` (a named construct, e.g. ``"tpdu" / tpdu(0x60)``),
        ``mti``, ``bitmap``, ``bitmap2`` (0 without a secondary bitmap),
        ``known`` (no field outside the table), ``f2`` ... ``f128`` (``None``
        when absent) and ``mac_at`` / ``mac2_at``, the offsets of fields 64
        and 128; nothing may follow the last field.
        """
        known1 = known2 = 0
        for n in self.fields:
            if n <= 64:
                known1 |= _word_bit(n)
            else:
                known2 |= _word_bit(n)
        unknown1 = ~(known1 | _word_bit(1)) & _LOW64
        unknown2 = ~known2 & _LOW64
        members = [] if header is None else [header]
        members += [
            "mti" / Fixed(4, "n"),
            "bitmap" / Int64ub,
            "bitmap2" / IfThenElse(this.bitmap & _word_bit(1), Int64ub, Computed(0)),
            # a field the table does not define cannot be skipped
            "known" / Computed(((this.bitmap & unknown1) == 0) & ((this.bitmap2 & unknown2) == 0)),
        ]
        for n, f in self.fields.items():
            if n == 64:
                members.append("mac_at" / Tell)
            if n == 128:
                members.append("mac2_at" / Tell)
            word = this.bitmap if n <= 64 else this.bitmap2
            members.append(f"f{n}" / If(word & _word_bit(n), f))
        members.append(Terminated)
        return Struct(*members)
