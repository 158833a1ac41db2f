"""bankgate.codec.fields: the X(n) / N(n) adapters, plain and compiled; Counted and packer."""

from __future__ import annotations

from datetime import date

import pytest
from construct import Array, Bytes, ConstructError, Struct, Terminated, ValidationError, this
from hypothesis import given
from hypothesis import strategies as st

from bankgate.codec.fields import (
    Counted,
    DateN8,
    Digits,
    Fen,
    FieldError,
    GbkText,
    Number,
    gbk_fit,
    gbk_len,
    packer,
)

ZHONG = "中".encode("gbk")  # b"\xd6\xd0"
WEN = "文".encode("gbk")


def both(*subcons):
    """The same Struct plain and compiled: every behaviour must match."""
    s = Struct(*subcons)
    return [s, s.compile()]


# -- GbkText ---------------------------------------------------------------


def test_gbk_text_pads_with_spaces_and_strips_them():
    for s in both("t" / GbkText(8)):
        assert s.build({"t": "ab"}) == b"ab      "
        assert s.build({"t": "中文"}) == ZHONG + WEN + b"    "
        assert s.parse(ZHONG + WEN + b"    ").t == "中文"
        assert s.parse(b"  ab    ").t == "  ab"  # leading blanks are content
        assert s.build({"t": ""}) == b" " * 8
        assert s.parse(b" " * 8).t == ""


def test_gbk_text_exact_fit():
    for s in both("t" / GbkText(4)):
        assert s.build({"t": "中文"}) == ZHONG + WEN


def test_gbk_text_too_long_raises_never_truncates():
    for s in both("name" / GbkText(3)):
        with pytest.raises(FieldError) as ei:
            s.build({"name": "中文"})  # 4 bytes
        assert ei.value.field_name == "name"
        assert "4 bytes" in ei.value.reason
        with pytest.raises(FieldError):
            s.build({"name": "abcd"})


def test_gbk_text_refuses_characters_outside_gbk_and_non_text():
    for s in both("t" / GbkText(8)):
        with pytest.raises(FieldError, match="not GBK"):
            s.build({"t": "€"})
        with pytest.raises(FieldError, match="text expected"):
            s.build({"t": 12})
        with pytest.raises(FieldError):
            s.build({"t": b"ab"})


def test_gbk_text_half_character_is_a_parse_error():
    # a lead byte as the field's last byte: a character cut in half
    for s in both("t" / GbkText(3)):
        with pytest.raises(FieldError) as ei:
            s.parse(b"a" + ZHONG[:1] + b" ")
        assert ei.value.field_name == "t"
        with pytest.raises(FieldError):
            s.parse(b"ab" + ZHONG[:1])
        with pytest.raises(FieldError, match="invalid GBK"):
            s.parse(b"\xff\xff\xff")


# -- gbk_fit -----------------------------------------------------------------


def test_gbk_fit_cuts_on_character_boundary():
    assert gbk_fit("中文字", 6) == "中文字"
    assert gbk_fit("中文字", 5) == "中文"
    assert gbk_fit("a中文", 4) == "a中"
    assert gbk_fit("a中文", 2) == "a"
    assert gbk_fit("abc", 0) == ""
    assert gbk_fit("", 5) == ""


def test_gbk_fit_unencodable():
    with pytest.raises(UnicodeEncodeError):
        gbk_fit("a€b", 10)
    assert gbk_fit("a€b", 10, errors="replace") == "a?b"
    with pytest.raises(ValueError):
        gbk_fit("a", -1)


@given(st.text(alphabet=st.characters(codec="gbk")), st.integers(0, 40))
def test_gbk_fit_property(text, n):
    out = gbk_fit(text, n)
    assert text.startswith(out)
    assert gbk_len(out) <= n
    # maximal: the next character would not fit
    if out != text:
        assert gbk_len(text[: len(out) + 1]) > n
    # and what it returns always builds into the field
    if n:
        assert len(GbkText(n).build(out)) == n


# -- Digits / Number / Fen ----------------------------------------------------


def test_digits():
    for s in both("d" / Digits(6)):
        assert s.build({"d": "93015"}) == b"093015"
        assert s.build({"d": 7}) == b"000007"
        assert s.parse(b"093015").d == "093015"
        for bad in (b"09301 ", b" 93015", b"-93015", b"+93015", b"0930a5"):
            with pytest.raises(FieldError) as ei:
                s.parse(bad)
            assert ei.value.field_name == "d"
        for bad in ("1234567", "12a", "١٢", -1, True, 1.5, None):
            with pytest.raises(FieldError):
                s.build({"d": bad})


def test_number_and_fen():
    for s in both("n" / Number(2), "amount" / Fen(12)):
        b = s.build({"n": 3, "amount": 12345})
        assert b == b"03" + b"000000012345"
        v = s.parse(b)
        assert (v.n, v.amount) == (3, 12345)
        assert type(v.amount) is int
        with pytest.raises(FieldError) as ei:
            s.build({"n": 3, "amount": 10**12})
        assert ei.value.field_name == "amount"
        for bad in ("12", True, -1, 1.0):
            with pytest.raises(FieldError):
                s.build({"n": 1, "amount": bad})
        with pytest.raises(FieldError) as ei:
            s.parse(b"03" + b"00000001234 ")
        assert ei.value.field_name == "amount"
    assert Fen().sizeof() == 12


# -- DateN8 ------------------------------------------------------------------


def test_date_n8():
    for s in both("d" / DateN8()):
        assert s.build({"d": date(2026, 11, 27)}) == b"20261127"
        assert s.parse(b"20261127").d == date(2026, 11, 27)
        assert s.parse(b"20240229").d == date(2024, 2, 29)
        for bad in (b"20261131", b"20250229", b"00000000", b"20261300", b"2026112 ", b"2026-1-1"):
            with pytest.raises(FieldError) as ei:
                s.parse(bad)
            assert ei.value.field_name == "d"
        for bad in ("20261127", 20261127, None):
            with pytest.raises(FieldError):
                s.build({"d": bad})


# -- errors ---------------------------------------------------------------------


def test_field_error_is_a_construct_validation_error():
    e = FieldError("amount", "not all digits")
    assert isinstance(e, ValidationError)
    assert isinstance(e, ConstructError)
    assert str(e) == "amount: not all digits"


def test_short_input_is_an_error_compiled_too():
    # compiled Bytes does not check short reads; the adapters do
    for s in both("a" / GbkText(4), "b" / Digits(4)):
        with pytest.raises(ConstructError):
            s.parse(b"abcd12")


def test_unnamed_field_names_from_path():
    with pytest.raises(FieldError) as ei:
        Struct("x" / Struct("inner" / Digits(2))).parse(b"ab")
    assert ei.value.field_name == "inner"


def test_naming_does_not_alter_a_shared_instance():
    d = Digits(2)
    a = "a" / d
    b = "b" / d
    assert d.field_name is None
    with pytest.raises(FieldError) as ei:
        Struct(a, b).compile().parse(b"12x3")
    assert ei.value.field_name == "b"


def test_bad_width():
    with pytest.raises(ValueError):
        GbkText(0)


# -- round trips -----------------------------------------------------------------

gbk_chars = st.characters(codec="gbk")
RECORD = Struct(
    "text" / GbkText(20),
    "digits" / Digits(6),
    "number" / Number(4),
    "fen" / Fen(12),
    "day" / DateN8(),
)
COMPILED = RECORD.compile()


@given(
    text=st.text(alphabet=gbk_chars, max_size=20).filter(lambda t: gbk_len(t) <= 20),
    digits=st.text(alphabet="0123456789", max_size=6),
    number=st.integers(0, 9999),
    fen=st.integers(0, 10**12 - 1),
    day=st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31)),
)
def test_round_trip(text, digits, number, fen, day):
    values = dict(text=text, digits=digits, number=number, fen=fen, day=day)
    raw = RECORD.build(values)
    assert len(raw) == RECORD.sizeof() == 50
    assert COMPILED.build(values) == raw
    for s in (RECORD, COMPILED):
        v = s.parse(raw)
        assert v.text == text.rstrip(" ")
        assert v.digits == digits.zfill(6)
        assert (v.number, v.fen, v.day) == (number, fen, day)


@given(st.binary(min_size=50, max_size=50))
def test_parse_random_bytes_only_construct_errors(raw):
    results = []
    for s in (RECORD, COMPILED):
        try:
            results.append(dict(s.parse(raw)))
        except ConstructError as e:
            results.append(type(e))
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} if isinstance(r, dict)
             else r for r in results]
    assert clean[0] == clean[1]


@given(st.text(alphabet=gbk_chars, min_size=1, max_size=30), st.integers(1, 30))
def test_gbk_text_build_parse_or_refuse(text, n):
    f = GbkText(n)
    if gbk_len(text) > n:
        with pytest.raises(FieldError):
            f.build(text)
        fitted = gbk_fit(text, n)
        assert f.parse(f.build(fitted)) == fitted.rstrip(" ")
    else:
        assert f.parse(f.build(text)) == text.rstrip(" ")


# -- Counted ------------------------------------------------------------------------

ITEM = Struct("id" / GbkText(3), "amount" / Fen(4))
LIST = Struct("who" / GbkText(4), "bills" / Counted(Number(2), ITEM), Terminated)


def test_counted_writes_the_count_from_the_list():
    value = {"who": "中", "bills": [{"id": "a", "amount": 1}, {"id": "文", "amount": 22}]}
    raw = "中".encode("gbk") + b"  " + b"02" + b"a  0001" + WEN + b" 0022"
    for s in both(*LIST.subcons):
        assert s.build(value) == raw
        v = s.parse(raw)
        assert v.who == "中" and [(i.id, i.amount) for i in v.bills] == [("a", 1), ("文", 22)]
        assert s.build({"who": "", "bills": []}) == b"    00"
        assert s.parse(b"    00").bills == []
        with pytest.raises(ConstructError):
            s.parse(raw[:-1])  # the last item cut
        with pytest.raises(ConstructError):
            s.parse(raw + b"x")  # more than the count
        with pytest.raises(FieldError):
            s.build({"who": "", "bills": [{"id": "", "amount": 0}] * 100})  # count > 99


def test_counted_is_the_bytes_of_a_count_field_and_an_array():
    value = {"bills": [{"id": "x", "amount": 5}] * 3}
    counted = Struct("bills" / Counted(Number(2), ITEM))
    array = Struct("n" / Number(2), "bills" / Array(this.n, ITEM))
    assert counted.build(value) == array.build({"n": 3, **value})


# -- packer ----------------------------------------------------------------------------


def test_packer_equals_build():
    value = {"who": "文", "bills": [{"id": "b1", "amount": 9}] * 2}
    assert packer(LIST)(value) == LIST.build(value) == LIST.compile().build(value)
    day = Struct("d" / DateN8(), "n" / Digits(3), "raw" / GbkText(2))
    v = {"d": date(2026, 11, 27), "n": "7", "raw": "ab"}
    assert packer(day)(v) == day.build(v) == b"20261127007ab"


def test_packer_errors_name_the_field():
    with pytest.raises(FieldError) as ei:
        packer(LIST)({"who": "toolong", "bills": []})
    assert ei.value.field_name == "who"
    with pytest.raises(FieldError) as ei:
        packer(LIST)({"who": "", "bills": [{"id": "", "amount": -1}]})
    assert ei.value.field_name == "amount"


def test_packer_refuses_what_it_cannot_build_at_once():
    with pytest.raises(TypeError, match="not supported"):
        packer(Struct("x" / Bytes(2)))
    with pytest.raises(TypeError, match="unnamed"):
        packer(Struct(GbkText(2)))


def test_pack_is_build():
    for f, v in ((GbkText(4), "中"), (Digits(3), 5), (Number(3), 5), (Fen(), 12345),
                 (DateN8(), date(2026, 1, 2))):
        assert f.pack(v) == f.build(v)
    with pytest.raises(FieldError):
        Number(2).pack(100)
