"""bankgate.codec.iso8583: field types, bitmaps and the packager, on a toy field table.

Expected frames are written out by hand (bitmaps in hex); MACs come from
``bankgate.codec.crypto.x919_mac``, which tests/test_crypto.py pins to the
specs' vectors.
"""

from __future__ import annotations

import io

import pytest
from construct import ConstructError, SizeofError, Struct
from hypothesis import given
from hypothesis import strategies as st

from bankgate.codec.crypto import X919, x919_mac
from bankgate.codec.fields import FieldError
from bankgate.codec.iso8583 import (
    MAC_STATE,
    SECONDARY,
    TPDU_LENGTH,
    Fixed,
    LLVar,
    Packager,
    connection_x919,
    field_bit,
    field_mask,
    forget_x919,
    reply_tpdu,
    tpdu,
)

KEY = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
KEY2 = bytes.fromhex("89ABCDEF0123456776543210FEDCBA98")
HEADER = bytes.fromhex("6000010002")

#: a toy table: one field of every shape, MACs in 64 and 128
TABLE = {
    2: LLVar(2, 19, "n"),
    3: Fixed(6, "n"),
    10: Fixed(4, "an"),
    11: Fixed(4, "anp"),
    12: Fixed(5, "ans"),
    20: LLVar(3, 30, "gbk"),
    21: LLVar(3, 40, "b"),
    22: LLVar(2, 10, "ans"),
    64: Fixed(8, "b"),
    70: Fixed(3, "n"),
    128: Fixed(8, "b"),
}
P = Packager(TABLE, header_length=TPDU_LENGTH)


def bitmap_hex(nums) -> bytes:
    """The bitmap(s) of ``nums``, by hand."""
    nums = set(nums)
    if any(n > 64 for n in nums):
        nums.add(1)
    b = bytearray(16 if 1 in nums else 8)
    for n in nums:
        b[(n - 1) // 8] |= 0x80 >> ((n - 1) % 8)
    return bytes(b)


# -- field types ------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, good, bad",
    [
        (Fixed(4, "n"), [b"0123"], [b"012a", b"01 3", b"-123"]),
        (Fixed(4, "an"), [b"aZ09"], [b"aZ 9", b"aZ-9"]),
        (Fixed(4, "anp"), [b"aZ09", b"AB  ", b"    "], [b"aZ-9", b"aZ\x009"]),
        (Fixed(4, "ans"), [b"a -~", b"    "], [b"a\x7f  ", b"\x1f   ", "中文".encode("gbk")]),
        (Fixed(4, "b"), [b"\x00\xff\x01\x02"], []),
        (Fixed(4, "gbk"), ["中文".encode("gbk"), b"ab  "], [b"a\xd6  "[:3] + b"\xff"]),
        (LLVar(2, 3, "n"), [b"1", b"123"], [b"", b"1234", b"12a"]),
        (LLVar(3, 4, "gbk"), ["中文".encode("gbk"), b"a"], [b"", b"abcde", b"\xff\xfe"]),
        (LLVar(3, 2, "b"), [b"", b"\x00\x01"], [b"abc"]),
    ],
)
def test_content_classes(field, good, bad):
    for v in good:
        assert field.valid(v), v
    for v in bad:
        assert not field.valid(v), v


def test_unknown_content_class():
    with pytest.raises(ValueError, match="content class"):
        Fixed(2, "x")
    with pytest.raises(ValueError, match="content class"):
        LLVar(2, 5, "z")


def test_fixed_scan_read_pack():
    f = Fixed(3, "n")
    assert f.scan(b"xx123yy", 2) == (b"123", 5)
    with pytest.raises(FieldError):
        f.scan(b"xx12", 2)
    assert f.read(io.BytesIO(b"1234")) == b"123"
    with pytest.raises(FieldError):
        f.read(io.BytesIO(b"12"))
    assert f.pack(b"123") == b"123"
    assert f.pack(bytearray(b"123")) == b"123"
    for bad in (b"12", b"1234", "123", 123):
        with pytest.raises(FieldError):
            f.pack(bad)
    assert f.sizeof() == 3


def test_llvar_scan_read_pack():
    f = LLVar(2, 5, "ans")
    assert f.scan(b"..03abcZ", 2) == (b"abc", 7)
    assert f.scan(b"00", 0) == (b"", 2)
    for buf in (b"0", b"a3abc", b" 3abc", b"04abc"):
        with pytest.raises(FieldError):
            f.scan(buf, 0)
    assert f.read(io.BytesIO(b"03abcd")) == b"abc"
    for buf in (b"0", b"x3abc", b"05abc"):
        with pytest.raises(FieldError):
            f.read(io.BytesIO(buf))
    assert f.pack(b"abc") == b"03abc"
    assert LLVar(3, 999, "b").pack(b"\x00" * 12) == b"012" + b"\x00" * 12
    # the prefix's capacity, not the maximum: an echoed field goes back as it came
    assert f.pack(b"x" * 99) == b"99" + b"x" * 99
    with pytest.raises(FieldError):
        f.pack(b"x" * 100)
    with pytest.raises(FieldError):
        f.pack("abc")
    with pytest.raises(SizeofError):
        f.sizeof()


def test_fields_are_constructs_plain_and_compiled():
    s = Struct("a" / Fixed(2, "n"), "b" / LLVar(3, 10, "ans"), "c" / Fixed(1))
    data = b"12" + b"004abcd" + b"\x07"
    for layout in (s, s.compile()):
        v = layout.parse(data)
        assert (v.a, v.b, v.c) == (b"12", b"abcd", b"\x07")
        assert layout.build({"a": b"12", "b": b"abcd", "c": b"\x07"}) == data
        with pytest.raises(ConstructError):
            layout.parse(data[:5])
    assert repr(Fixed(2, "n")) == "Fixed(2, 'n')"
    assert repr(LLVar(3, 10, "ans")) == "LLVar(3, 10, 'ans')"


# -- bitmaps, TPDU --------------------------------------------------------------------


def test_field_bits():
    assert field_bit(1) == SECONDARY == 1 << 127
    assert field_bit(64) == 1 << 64 and field_bit(65) == 1 << 63 and field_bit(128) == 1
    assert field_mask([2, 128]) == field_bit(2) | field_bit(128)
    assert field_mask([]) == 0


def test_tpdu():
    layout = tpdu(0x60)
    assert layout.parse(HEADER) == {"id": b"\x60", "dst": b"\x00\x01", "src": b"\x00\x02"} | {
        "_io": layout.parse(HEADER)._io}
    with pytest.raises(ConstructError):
        layout.parse(b"\x61" + HEADER[1:])
    assert reply_tpdu(HEADER + b"0200") == bytes.fromhex("6000020001")


def test_packager_refuses_a_bad_table():
    with pytest.raises(ValueError):
        Packager({1: Fixed(8)})
    with pytest.raises(ValueError):
        Packager({129: Fixed(8)})
    with pytest.raises(TypeError):
        Packager({2: Struct()})


# -- assemble ------------------------------------------------------------------------


def test_assemble_primary_bitmap_only():
    frame = P.assemble(HEADER, b"0200", {3: b"310000", 2: b"6222"})
    assert frame == HEADER + b"0200" + bitmap_hex([2, 3]) + b"046222" + b"310000"
    assert bitmap_hex([2, 3]) == bytes.fromhex("6000000000000000")


def test_assemble_secondary_bitmap_only_above_64():
    frame = P.assemble(HEADER, b"0400", {70: b"001", 3: b"000000"})
    assert frame[9:25] == bytes.fromhex("A000000000000000" "0400000000000000")
    assert frame == HEADER + b"0400" + frame[9:25] + b"000000" + b"001"


def test_assemble_mac_zero_without_a_key_and_x919_with_one():
    zero = P.assemble(HEADER, b"0100", {3: b"310000"}, 64)
    body = b"0100" + bitmap_hex([3, 64]) + b"310000"
    assert zero == HEADER + body + bytes(8)
    keyed = P.assemble(HEADER, b"0100", {3: b"310000"}, 64, KEY)
    assert keyed == HEADER + body + x919_mac(KEY, body)
    body = b"0410" + bitmap_hex([3, 128]) + b"310000"
    assert P.assemble(b"", b"0410", {3: b"310000"}, 128, KEY) == body + x919_mac(KEY, body)


def test_assemble_keeps_the_mac_context_in_the_state():
    state: dict = {}
    a = P.assemble(HEADER, b"0100", {3: b"310000"}, 64, KEY, state)
    ctx = state[MAC_STATE]
    assert P.assemble(HEADER, b"0100", {3: b"310000"}, 64, KEY, state) == a
    assert state[MAC_STATE] is ctx
    b = P.assemble(HEADER, b"0100", {3: b"310000"}, 64, KEY2, state)
    assert state[MAC_STATE] is not ctx and state[MAC_STATE].key == KEY2
    assert b[-8:] == x919_mac(KEY2, b[5:-8])


def test_another_mac_algorithm():
    seen = []

    def mac(state, key, data):
        seen.append((key, data))
        return b"MACMAC!!"

    p = Packager(TABLE, mac=mac)
    frame = p.assemble(b"", b"0100", {3: b"310000"}, 64, b"k")
    assert frame.endswith(b"MACMAC!!") and seen == [(b"k", frame[:-8])]


def test_assemble_refuses_what_a_field_cannot_hold():
    with pytest.raises(FieldError):
        P.assemble(HEADER, b"0100", {3: b"31000"})
    with pytest.raises(KeyError):
        P.assemble(HEADER, b"0100", {4: b"000000000001"})  # not in the table


# -- scan -------------------------------------------------------------------------------


def test_scan_a_whole_frame():
    fields = {2: b"6222", 3: b"310000", 11: b"AB  ", 20: "中文".encode("gbk"), 70: b"001"}
    frame = P.assemble(HEADER, b"0200", fields, 128, KEY)
    s = P.scan(frame)
    assert s.fields == {**fields, 128: frame[-8:]}
    assert s.present == field_mask([*fields, 128]) | SECONDARY
    assert (s.secondary, s.complete, s.broken, s.undefined) == (True, True, False, False)
    assert s.mac_at == {128: len(frame) - 8}


def test_scan_primary_only_with_mac_64():
    frame = P.assemble(HEADER, b"0100", {3: b"310000"}, 64)
    s = P.scan(frame)
    assert not s.secondary and s.complete and s.mac_at == {64: len(frame) - 8}


def test_scan_unreadable_bitmaps():
    frame = P.assemble(HEADER, b"0400", {70: b"001"})
    assert P.scan(frame[:16]) is None  # primary bitmap cut
    assert P.scan(frame[:24]) is None  # secondary bitmap cut
    assert P.scan(frame[:25]) is not None


def test_scan_keeps_what_was_read_before_a_broken_field():
    frame = P.assemble(HEADER, b"0200", {3: b"310000", 21: b"abc", 22: b"xy"})
    i = frame.index(b"003abc")
    s = P.scan(frame[:i] + b"0x3abc" + frame[i + 6 :])  # bad LLL prefix
    assert s.fields == {3: b"310000"} and s.broken and not s.complete and not s.undefined
    s = P.scan(frame[:-1])  # field 22 cut short
    assert s.fields == {3: b"310000", 21: b"abc"} and s.broken and not s.complete
    s = P.scan(frame + b"\x00")  # left-over byte
    assert len(s.fields) == 3 and not s.broken and not s.complete


def test_scan_stops_at_an_undefined_field():
    # field 5 (4 bytes, not in the table) after field 3: 3 is read, nothing after
    frame = HEADER + b"0200" + bitmap_hex([3, 5, 11]) + b"310000" + b"abcd" + b"AB  "
    s = P.scan(frame)
    assert s.fields == {3: b"310000"}
    assert s.undefined and s.broken and not s.complete
    assert s.present & P.undefined == field_bit(5)


@st.composite
def field_values(draw):
    """Values every field of the toy table can carry (content not checked)."""
    out = {}
    for n in draw(st.sets(st.sampled_from(sorted(TABLE)), max_size=len(TABLE))):
        f = TABLE[n]
        if isinstance(f, Fixed):
            out[n] = draw(st.binary(min_size=f.length, max_size=f.length))
        else:
            out[n] = draw(st.binary(max_size=f.maxlen))
    return out


@given(field_values(), st.sampled_from([None, 64, 128]), st.booleans())
def test_scan_reads_back_what_assemble_wrote(values, mac_field, keyed):
    # the MAC is the last field: 64 only when no field above 64 is present
    top = 64 if mac_field == 64 else 127
    values = {n: v for n, v in values.items() if n < top and n != 64}
    frame = P.assemble(HEADER, b"0200", values, mac_field, KEY if keyed else None)
    s = P.scan(frame)
    assert s.complete and not s.broken
    got = dict(s.fields)
    if mac_field:
        mac = got.pop(mac_field)
        at = s.mac_at[mac_field]
        assert mac == (x919_mac(KEY, frame[5:at]) if keyed else bytes(8))
    assert got == values
    # the message struct reads the same, plain and compiled, and builds it back
    msg = P.message("tpdu" / tpdu(0x60))
    for layout in (msg, msg.compile()):
        v = layout.parse(frame)
        assert v.known
        for n in TABLE:
            assert v[f"f{n}"] == s.fields.get(n)
        assert layout.build(dict(v)) == frame


@given(st.binary(max_size=120))
def test_scan_equals_the_field_types_scan_field_after_field(body):
    frame = HEADER + b"0200" + body
    s = P.scan(frame)
    if len(frame) < 17:
        assert s is None
        return
    if s is None:  # a secondary bitmap announced but cut
        assert frame[9] & 0x80 and len(frame) < 25
        return
    pos = 25 if s.secondary else 17
    fields = {}
    broken = False
    for n in range(2, 129):
        if not s.present & field_bit(n):
            continue
        if n not in TABLE:
            broken = True
            break
        try:
            fields[n], pos = TABLE[n].scan(frame, pos)
        except FieldError:
            broken = True
            break
    assert s.fields == fields
    assert s.broken == broken
    assert s.complete == (not broken and pos == len(frame))


def test_invalid_names_the_first_refused_field():
    assert P.invalid({3: b"310000", 11: b"AB  ", 22: b"x"}) is None
    assert P.invalid({3: b"31000x", 11: b"A-  ", 22: b""}) == 3
    assert P.invalid({3: b"310000", 11: b"A-  ", 22: b""}) == 11
    assert P.invalid({22: b""}) == 22
    assert P.invalid({21: b"", 64: b"\xff" * 8}) is None  # binary


def test_message_refuses_undefined_fields_and_left_overs():
    msg = P.message()
    frame = P.assemble(b"", b"0200", {3: b"310000"})
    assert msg.parse(frame).f3 == b"310000"
    with pytest.raises(ConstructError):
        msg.parse(frame + b"\x00")
    odd = b"0200" + bitmap_hex([3, 5]) + b"310000" + b"abcd"
    assert not msg.parse(odd[:-4]).known


# -- the MAC context of a connection ---------------------------------------------------------


def test_connection_x919():
    state: dict = {}
    assert connection_x919(state, KEY, b"12345678abc") == x919_mac(KEY, b"12345678abc")
    ctx = state[MAC_STATE]
    assert isinstance(ctx, X919)
    assert connection_x919(state, KEY, b"") == x919_mac(KEY, b"")
    assert state[MAC_STATE] is ctx
    assert connection_x919(state, KEY2, b"abc") == x919_mac(KEY2, b"abc")
    assert state[MAC_STATE] is not ctx
    forget_x919(state)
    assert MAC_STATE not in state
    forget_x919(state)  # nothing to forget: no error
