"""PDFs that render anywhere: every PDF the gateway writes embeds its CJK font.

A PDF that only names a CJK font shows no Chinese on a machine without one.
Here poppler's ``pdffonts`` must list every font as embedded (and none of them
the old, referenced ``STSong-Light``), and ``pdftotext`` must read back the
customer name and the amount in words (大写) -- poppler gets the text from the
embedded font's own map, not from fonts installed here.  Without poppler-utils
the tests skip with the reason; under ``BANKGATE_REQUIRE_SERVERS=1`` (CI) they
fail instead, as the server-backed tests do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from datetime import date, datetime

import pytest

from bankgate.canon.money import chinese_capital
from bankgate.domain import pdffonts
from bankgate.domain.invoice_pdf import InvoiceDoc, InvoiceLine, render
from bankgate.domain.recon_report import pdf_bytes
from bankgate.domain.reconcile import EXCEPTION, POSTED, Item, RunReport

NAME = "欧阳秀英"
AMOUNT = 137106  # fen
CAPITAL = "壹仟叁佰柒拾壹元零陆分"
# every 大写 numeral and unit chinese_capital may write
NUMERALS = "零壹贰叁肆伍陆柒捌玖拾佰仟万亿元圆角分整"


def tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        msg = f"{name} not installed (apt-get install poppler-utils)"
        if os.environ.get("BANKGATE_REQUIRE_SERVERS") == "1":
            pytest.fail(msg + " (BANKGATE_REQUIRE_SERVERS=1: the PDF tools are required here)")
        pytest.skip(msg)
    return exe


def fonts_of(path) -> list[dict]:
    """pdffonts' table as dicts; the columns are cut by the header's dashes."""
    out = subprocess.run([tool("pdffonts"), str(path)], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    head, dashes, rows = out[0], out[1], out[2:]
    spans, start = [], 0
    for part in dashes.split(" "):
        spans.append((start, start + len(part)))
        start += len(part) + 1
    keys = [head[a:b].strip() for a, b in spans]
    return [{k: row[a:b].strip() for k, (a, b) in zip(keys, spans, strict=True)}
            for row in rows if row]


def text_of(path) -> str:
    return subprocess.run([tool("pdftotext"), "-layout", str(path), "-"], capture_output=True,
                          text=True, check=True).stdout


def assert_all_embedded(path):
    fonts = fonts_of(path)
    assert fonts, "no fonts listed: the text would not show"
    for f in fonts:
        assert f["emb"] == "yes" and f["sub"] == "yes" and f["uni"] == "yes", f
        assert "STSong" not in f["name"], f
        assert pdffonts.FONT_NAME in f["name"], f


def invoice(**kw) -> InvoiceDoc:
    base = dict(
        payee="沈阳供热有限公司", invoice_no="210000000042", invoice_code="2100",
        invoice_number="00000042", receipt_no="20261127000000000042",
        bank_title="工商银行沈阳分行 (105210)", serial="S42", trade_date=date(2026, 11, 27),
        customer_no="100000042", customer_name=NAME, address="沈阳市皇姑区龘鑫小区3号楼",
        lines=[InvoiceLine("采暖费", "2025-2026", 130000, 7106)], amount=AMOUNT,
        printed_at=datetime(2026, 11, 27, 9, 30), actor="ops1")
    base.update(kw)
    return InvoiceDoc(**base)


def run_report() -> RunReport:
    rep = RunReport(run_id=1, bank="icbc", bank_code="105210", settle_date=date(2026, 11, 27),
                    status="EXCEPTIONS", run_no=3, file_name="ICBC_20261127.txt", size=120,
                    sha256="0" * 64, bank_count=2, bank_total=AMOUNT + 100,
                    ours_before=(1, AMOUNT), ours_count=2, ours_total=AMOUNT + 100,
                    gap=(0, 0))
    rep.actions = {"BANK_ONLY/POSTED": [1, 100, 100], "AMOUNT_DIFFERS/EXCEPTION": [1, 300, 301]}
    rep.items = [Item("BANK_ONLY", "S7", "100000042", 100, 100, POSTED, detail="补销 posted"),
                 Item("AMOUNT_DIFFERS", "S8", "100000043", 300, 301, EXCEPTION,
                      detail=f"{NAME} 对账差错 amounts differ")]
    return rep


# -- the font itself ------------------------------------------------------------------------


def test_font_comes_from_the_install_and_covers_gb2312():
    """The file is the package's (not the machine's), and every GB2312 hanzi,
    every 大写 numeral and ASCII has a glyph: no customer name falls back to
    a blank box."""
    from reportlab.pdfbase import pdfmetrics

    path = pdffonts.cjk_font_path()
    assert path.is_file() and "paperang_p2_fonts_cjk" in path.parts
    face = pdfmetrics.getFont(pdffonts.cjk_font_name()).face
    missing = []
    for b1 in range(0xB0, 0xF8):  # GB2312 levels 1 and 2 (6,763 hanzi)
        for b2 in range(0xA1, 0xFF):
            try:
                ch = bytes((b1, b2)).decode("gb2312")
            except UnicodeDecodeError:
                continue
            if ord(ch) not in face.charToGlyph:
                missing.append(ch)
    missing += [c for c in NUMERALS + "（）￥" if ord(c) not in face.charToGlyph]
    missing += [chr(c) for c in range(0x21, 0x7F) if c not in face.charToGlyph]
    assert missing == []
    assert set(chinese_capital(AMOUNT)) <= set(NUMERALS)


def test_registers_once_from_many_threads(monkeypatch):
    """PDFs are rendered on worker threads: eight first calls at once load the
    font file once, and all get the same name."""
    from reportlab.pdfbase import pdfmetrics, ttfonts

    pdffonts.cjk_font_name()
    monkeypatch.setattr(pdffonts, "_registered", False)
    monkeypatch.delitem(pdfmetrics._fonts, pdffonts.FONT_NAME)
    loads = []
    real = ttfonts.TTFont

    def counting(*a, **kw):
        loads.append(a)
        return real(*a, **kw)

    monkeypatch.setattr(ttfonts, "TTFont", counting)
    names, errors = [], []
    start = threading.Barrier(8)

    def go():
        start.wait()
        try:
            names.append(pdffonts.cjk_font_name())
        except Exception as ex:  # noqa: BLE001 - reported below
            errors.append(ex)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and names == [pdffonts.FONT_NAME] * 8
    assert len(loads) == 1
    assert pdfmetrics.getFont(pdffonts.FONT_NAME).face.filename == str(pdffonts.cjk_font_path())


def test_missing_package_is_named(monkeypatch):
    pdffonts.cjk_font_path.cache_clear()
    monkeypatch.setattr(pdffonts, "_FONT_MODULE", "no_such_font_package_here")
    try:
        with pytest.raises(pdffonts.FontMissing, match="paperang-p2-fonts-cjk"):
            pdffonts.cjk_font_path()
    finally:
        pdffonts.cjk_font_path.cache_clear()
    monkeypatch.undo()
    monkeypatch.setattr(pdffonts, "_FONT_FILE", "fonts/gone.ttc")
    try:
        with pytest.raises(pdffonts.FontMissing, match="pip install paperang-p2-fonts-cjk"):
            pdffonts.cjk_font_path()
    finally:
        pdffonts.cjk_font_path.cache_clear()
    monkeypatch.undo()
    assert pdffonts.cjk_font_path().is_file()


def test_matplotlib_finds_the_glyphs(recwarn):
    """Charts (report PDFs) use the same file through matplotlib: a name in
    Chinese renders without a missing-glyph warning."""
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties

    fig = Figure(figsize=(2, 1))
    fig.text(0, 0.5, f"{NAME} {CAPITAL}", fontproperties=FontProperties(
        fname=str(pdffonts.cjk_font_path())))
    fig.canvas.draw()
    assert not [w for w in recwarn if "missing from font" in str(w.message)]


# -- the PDFs --------------------------------------------------------------------------------


def test_invoice_embeds_its_font_and_reads_back(tmp_path):
    path = tmp_path / "invoice.pdf"
    path.write_bytes(render(invoice()))
    assert_all_embedded(path)
    text = text_of(path)
    assert chinese_capital(AMOUNT) == CAPITAL
    for want in (NAME, CAPITAL, "沈阳供热有限公司 收费发票", "采暖费", "龘鑫小区",
                 "工商银行沈阳分行", "￥1,371.06", "00000042"):
        assert want in text, want


def test_reprint_watermark_is_embedded_too(tmp_path):
    path = tmp_path / "copy.pdf"
    path.write_bytes(render(invoice(copy=2)))
    assert_all_embedded(path)
    text = text_of(path)
    assert "补打 COPY 2" in text and NAME in text and CAPITAL in text


def test_recon_report_embeds_its_font_and_reads_back(tmp_path):
    path = tmp_path / "recon.pdf"
    path.write_bytes(pdf_bytes(run_report(), generated_at=datetime(2026, 11, 28, 2, 0)))
    assert_all_embedded(path)
    text = text_of(path)
    for want in ("对账报告", "一、总额 Totals", "会计主管", "金额不符", "对账差错", NAME,
                 "1,372.06"):
        assert want in text, want


def test_report_export_embeds_its_font(tmp_path):
    """The report exports (reporting.write_pdf), charts and all, are set in the same font."""
    from bankgate.domain.reporting import Chart, Column, ReportTable, write_pdf

    table = ReportTable(
        name="collections", title="收费统计 Collections",
        params={"from": date(2026, 11, 1), "to": date(2026, 11, 30)},
        columns=(Column("customer", "客户 customer", "text"),
                 Column("amount", "金额 amount", "fen")),
        rows=iter([(NAME, AMOUNT), ("张伟", 2500)]), totals=("合计", AMOUNT + 2500),
        charts=(Chart("bar", "客户缴费 by customer", x="customer", y=("amount",)),))
    path = tmp_path / "report.pdf"
    try:
        write_pdf(table, path)
    except NotImplementedError:
        pytest.skip("reporting.write_pdf not written yet")
    assert_all_embedded(path)
    text = text_of(path)
    assert NAME in text and "收费统计" in text
