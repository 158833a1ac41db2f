"""Invoices without a database: 大写金额 against an independent reference,
the invoice PDF, number formats and range overlap, the invoice options."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from invoice_helpers import pdf_strings, pdftotext

from bankgate.app.config import BankConfig, Config, ConfigError
from bankgate.app.options import invoice_settings as settings_for
from bankgate.canon.money import MAX_FEN, chinese_capital
from bankgate.domain.invoice_pdf import InvoiceDoc, InvoiceLine, render
from bankgate.domain.invoices import InvoiceSettings, format_no, overlaps, parse_no

# -- 大写金额 ------------------------------------------------------------------------

_D = "零壹贰叁肆伍陆柒捌玖"


def reference_capital(fen: int) -> str:
    """Written from the rules, digit by digit over the decimal string (the
    code under test works in 4-digit sections): a nonzero digit gets its
    unit (拾佰仟 by position within 4); a run of zeros between two nonzero
    digits is one 零; 万 follows position 4 (and 12) when that 4-digit block
    has a nonzero digit; 亿 follows position 8 when anything at or above it
    is nonzero; then 元, and 角/分 with 元零 when 角 is zero but 分 is not,
    整 when nothing follows 元 or 角."""
    yuan, jiao, f = fen // 100, fen // 10 % 10, fen % 10
    s = str(yuan)
    n = len(s)
    out = []
    zeros = False
    for i, ch in enumerate(s):
        pos = n - 1 - i
        if ch != "0":
            if zeros:
                out.append("零")
                zeros = False
            out.append(_D[int(ch)] + ("", "拾", "佰", "仟")[pos % 4])
        elif yuan:
            zeros = True
        if pos in (4, 12) and s[max(0, n - pos - 4):n - pos].strip("0"):
            out.append("万")
        if pos == 8 and s[:n - 8].strip("0"):
            out.append("亿")
    text = "".join(out) + ("元" if yuan else "")
    if jiao == 0 and f == 0:
        return (text or "零元") + "整"
    if jiao:
        text += _D[jiao] + "角"
    elif yuan:
        text += "零"
    return text + (_D[f] + "分" if f else "整")


# the examples of 《正确填写票据和结算凭证的基本规定》 and the docstring
KNOWN = {
    0: "零元整",
    5: "伍分",
    50: "伍角整",
    100: "壹元整",
    1000: "壹拾元整",
    1500: "壹拾伍元整",
    123450: "壹仟贰佰叁拾肆元伍角整",
    140950: "壹仟肆佰零玖元伍角整",
    600714: "陆仟零柒元壹角肆分",
    168032: "壹仟陆佰捌拾元叁角贰分",
    10700053: "壹拾万零柒仟元伍角叁分",
    1640902: "壹万陆仟肆佰零玖元零贰分",
    32504: "叁佰贰拾伍元零肆分",
    100000100: "壹佰万零壹元整",
    10001000000: "壹亿零壹万元整",
    548000: "伍仟肆佰捌拾元整",
    MAX_FEN: "玖佰玖拾玖亿玖仟玖佰玖拾玖万玖仟玖佰玖拾玖元玖角玖分",
    # above 亿, the count of 亿 is written in 万 sections (the old code said 壹万亿零壹亿)
    1_0001_0000_0000_00: "壹万零壹亿元整",
    12_3456_0000_0000_00: "壹拾贰万叁仟肆佰伍拾陆亿元整",
    1_0000_0000_0000_00: "壹万亿元整",
}


@pytest.mark.parametrize("fen,text", sorted(KNOWN.items()))
def test_known_capitals(fen, text):
    assert chinese_capital(fen) == text
    assert reference_capital(fen) == text


def _digits_with_zeros():
    """Amounts rich in zeros, where the 零 rules matter."""
    return st.lists(st.sampled_from("0000000123456789"), min_size=1, max_size=18).map(
        lambda ds: int("".join(ds)))


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.integers(0, MAX_FEN), _digits_with_zeros()))
@example(10 ** 18 - 1)
def test_capital_matches_the_reference(fen):
    assert chinese_capital(fen) == reference_capital(fen)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, MAX_FEN))
def test_capital_shape(fen):
    text = chinese_capital(fen)
    assert set(text) <= set(_D + "拾佰仟万亿元角分整")
    assert "零零" not in text and not text.startswith("零") or text == "零元整"
    assert text.endswith("分") != text.endswith("整")
    assert ("元" in text) == (fen >= 100 or fen == 0)


@pytest.mark.parametrize("bad,exc", [(-1, ValueError), (10 ** 18, ValueError),
                                     (True, TypeError), (12.5, TypeError), ("100", TypeError)])
def test_capital_refuses(bad, exc):
    with pytest.raises(exc):
        chinese_capital(bad)


# -- numbers and ranges ---------------------------------------------------------------


def test_format_and_parse():
    assert format_no("2100", 8, 42) == "210000000042"
    assert format_no("", 3, 7) == "007"
    assert parse_no("210000000042", "2100", 8) == 42
    assert parse_no("21000000004", "2100", 8) is None
    assert parse_no("2101000000042", "2100", 8) is None
    assert parse_no("2100０0000042", "2100", 8) is None  # a full-width digit


_ranges = st.builds(
    lambda prefix, width, a, n: {"prefix": prefix, "width": width, "first_no": a % 10 ** width,
                                 "last_no": min(a % 10 ** width + n, 10 ** width - 1)},
    st.sampled_from(["", "1", "2", "12", "A", "A1", "A12", "21", "210"]),
    st.integers(1, 4), st.integers(0, 9999), st.integers(0, 40))


@settings(max_examples=2000, deadline=None)
@given(_ranges, _ranges)
def test_overlap_is_exactly_a_shared_number(a, b):
    def written(r):
        return {format_no(r["prefix"], r["width"], n) for n in range(r["first_no"],
                                                                      r["last_no"] + 1)}

    assume(a["first_no"] <= a["last_no"] and b["first_no"] <= b["last_no"])
    assert overlaps(a, b) == bool(written(a) & written(b))
    assert overlaps(a, b) == overlaps(b, a)


# -- options ---------------------------------------------------------------------------


def _cfg(**options) -> Config:
    return Config(source="bg.toml", banks=[BankConfig("icbc", "ref-fixed", "102", options=options)])


def test_settings_defaults_and_values():
    assert settings_for(_cfg())["icbc"] == InvoiceSettings()
    s = settings_for(_cfg(invoice=True, invoice_low_water=20, invoice_sources=["online", "recon"],
                          invoice_payee="沈阳供热", invoice_fee_names={"06": "热水费"},
                          channel="07"))["icbc"]
    assert (s.enabled, s.low_water, s.sources, s.payee, s.fee_names) == (
        True, 20, ("online", "recon"), "沈阳供热", {"06": "热水费"})


@pytest.mark.parametrize("options,key", [
    ({"invoice": "yes"}, "invoice"),
    ({"invoice_low_water": -1}, "invoice_low_water"),
    ({"invoice_low_water": True}, "invoice_low_water"),
    ({"invoice_low_water": "50"}, "invoice_low_water"),
    ({"invoice_sources": "online"}, "invoice_sources"),
    ({"invoice_sources": ["Online!"]}, "invoice_sources"),
    ({"invoice_payee": ""}, "invoice_payee"),
    ({"invoice_fee_names": {"01": 5}}, "invoice_fee_names"),
    ({"invoice_lowwater": 5}, "invoice_lowwater"),
])
def test_settings_errors_name_the_key(options, key):
    with pytest.raises(ConfigError) as e:
        settings_for(_cfg(**options))
    assert e.value.key == f"bank.icbc.options.{key}"
    assert str(e.value).startswith(f"bg.toml: bank.icbc.options.{key}: ")


# -- the PDF -----------------------------------------------------------------------------


def _doc(**kw) -> InvoiceDoc:
    base = dict(
        payee="沈阳供热有限公司", invoice_no="210000000007", invoice_code="2100",
        invoice_number="00000007", receipt_no="20261127000000000001",
        bank_title="工商银行沈阳分行 (105210)", serial="S1", trade_date=date(2026, 11, 27),
        customer_no="100000123", customer_name="张三 <&> 李", address="沈阳市和平区幸福小区1号楼",
        lines=[InvoiceLine("采暖费", "2025-2026", 260000, 13000),
               InvoiceLine("物业费", "2026-11", 15000, 0)],
        prepaid_in=500, amount=288500, printed_at=datetime(2026, 11, 27, 9, 30), actor="ops1")
    base.update(kw)
    return InvoiceDoc(**base)


def test_pdf_shows_everything_an_invoice_must():
    data = render(_doc())
    assert data.startswith(b"%PDF-") and b"%%EOF" in data[-32:]
    assert b"/FontFile2" in data and b"STSong-Light" not in data  # the CJK font embedded
    text = pdf_strings(data).replace("\n", "")  # a paragraph may come in pieces
    for want in ("沈阳供热有限公司 收费发票", "发票代码 Code 2100", "00000007",
                 "20261127000000000001", "工商银行沈阳分行 (105210)", "S1", "100000123",
                 "张三 <&> 李", "沈阳市和平区幸福小区1号楼", "采暖费", "2025-2026", "2,600.00",
                 "130.00", "2,730.00", "物业费", "预存款 Prepaid", "5.00", "2,885.00",
                 "￥2,885.00", "贰仟捌佰捌拾伍元整", "2026-11-27", "ops1"):
        assert want in text, want
    assert "补打" not in text and "重打" not in text


def test_pdf_copy_and_reissue_marks():
    text = pdf_strings(render(_doc(copy=3)))
    assert "补打 REPRINT" in text and "第 3 次补打 COPY 3" in text
    assert text.count("COPY 3") >= 3  # heading, watermark, footer
    text = pdf_strings(render(_doc(voided="210000000006")))
    assert "重打 RE-ISSUE" in text and "210000000006" in text


def test_pdf_many_bills_flow_onto_more_pages():
    lines = [InvoiceLine("采暖费", f"20{i:02d}", 100, 0) for i in range(60)]
    data = render(_doc(lines=lines, amount=6000, prepaid_in=0))
    assert data.count(b"/Type /Page\n") + data.count(b"/Type /Page ") >= 2
    assert "陆拾元整" in pdf_strings(data)


def test_pdf_text_for_poppler(tmp_path):
    """When poppler's pdftotext is installed, it reads the same text (it
    needs poppler-data and a CJK font to show the Chinese)."""
    path = tmp_path / "i.pdf"
    path.write_bytes(render(_doc(copy=1)))
    text = pdftotext(path)
    if text is None:
        pytest.skip("pdftotext not installed (apt-get install poppler-utils)")
    for want in ("00000007", "20261127000000000001", "2,885.00", "REPRINT", "COPY 1"):
        assert want in text
    if "贰仟" not in text:
        pytest.skip("pdftotext has no Adobe-GB1 font here (apt-get install poppler-data)")
    assert "贰仟捌佰捌拾伍元整" in text and "张三" in text
