"""The invoice (发票) as a PDF, with reportlab.

One invoice per file, A5 landscape: the utility (收款单位), invoice code and
number, the customer, each bill paid with its fee type, period, principal
and late fee, any excess kept as prepaid balance, the total in figures and in
Chinese capital numerals (大写金额), the bank paid at, the bank's serial and
the gateway's receipt number.  A reprint (补打) says so in its heading, with
the copy's number, and carries a "补打 COPY" watermark; a re-issue (重打)
names the void number it replaces.

Chinese text is set in the gateway's own CJK font, embedded as a subset
(``bankgate/domain/pdffonts.py``), so the invoice reads the same on a machine
without Chinese fonts.  Amounts are fen inside, yuan on paper.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import date, datetime

from bankgate.canon.money import chinese_capital
from bankgate.canon.money import grouped_yuan as yuan
from bankgate.domain.pdffonts import cjk_font_name


@dataclass
class InvoiceLine:
    fee_name: str
    period: str
    principal: int
    late_fee: int


@dataclass
class InvoiceDoc:
    payee: str
    invoice_no: str
    invoice_code: str
    invoice_number: str
    receipt_no: str
    bank_title: str
    serial: str
    trade_date: date
    customer_no: str
    customer_name: str
    address: str
    lines: list[InvoiceLine] = field(default_factory=list)
    prepaid_in: int = 0
    amount: int = 0
    printed_at: datetime | None = None
    actor: str = ""
    copy: int = 0  # 0 the original; n the n-th reprint (补打)
    voided: str = ""  # re-issue (重打): the void number this one replaces
    issuer: str = ""  # where the number came from when not the bank paid at (counter)


def _font() -> str:
    return cjk_font_name()


def _esc(text: str) -> str:
    return (text or "").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render(doc: InvoiceDoc) -> bytes:
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A5, landscape
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    font = _font()
    title = ParagraphStyle("t", fontName=font, fontSize=15, leading=19, alignment=1)
    sub = ParagraphStyle("s", fontName=font, fontSize=9, leading=12, alignment=1)
    mark = ParagraphStyle("m", fontName=font, fontSize=11, leading=14, alignment=1,
                          textColor=colors.Color(0.75, 0, 0))
    cell = ParagraphStyle("c", fontName=font, fontSize=8, leading=10)
    small = ParagraphStyle("f", fontName=font, fontSize=7.5, leading=10)

    buf = io.BytesIO()
    page = landscape(A5)
    pdf = SimpleDocTemplate(
        buf, pagesize=page, leftMargin=10 * mm, rightMargin=10 * mm, topMargin=8 * mm,
        bottomMargin=10 * mm, title=f"发票 {doc.invoice_no}", author="bankgate",
        subject=f"receipt {doc.receipt_no}",
        initialFontName=font,  # else each page names Helvetica, a font not embedded
    )
    width = page[0] - 20 * mm
    story = [Paragraph(f"{_esc(doc.payee)} 收费发票", title),
             Paragraph("INVOICE | 发票代码 Code " f"{_esc(doc.invoice_code) or '-'} | 发票号码 No."
                       f" <b>{_esc(doc.invoice_number)}</b>", sub)]
    if doc.copy:
        story.append(Paragraph(f"补打 REPRINT — 第 {doc.copy} 次补打 COPY {doc.copy}"
                               " | 原发票号码不变 same number", mark))
    if doc.voided:
        story.append(Paragraph(f"重打 RE-ISSUE — 原发票 {_esc(doc.voided)} 已作废"
                               f" replaces void invoice {_esc(doc.voided)}", mark))
    story.append(Spacer(1, 3 * mm))

    grid = [("FONTNAME", (0, 0), (-1, -1), font), ("FONTSIZE", (0, 0), (-1, -1), 8),
            ("GRID", (0, 0), (-1, -1), 0.4, colors.grey), ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ("TOPPADDING", (0, 0), (-1, -1), 2), ("BOTTOMPADDING", (0, 0), (-1, -1), 2)]
    label = colors.Color(0.93, 0.93, 0.93)
    head = Table([
        ["客户号 Customer", doc.customer_no, "收据号 Receipt", doc.receipt_no],
        ["客户名称 Name", Paragraph(_esc(doc.customer_name), cell), "缴费日期 Date",
         f"{doc.trade_date:%Y-%m-%d}"],
        ["地址 Address", Paragraph(_esc(doc.address), cell), "", ""],
        ["收款银行 Bank", Paragraph(_esc(doc.bank_title), cell), "银行流水号 Serial",
         doc.serial],
    ], colWidths=[27 * mm, width / 2 - 27 * mm, 27 * mm, width / 2 - 27 * mm])
    head.setStyle(TableStyle(grid + [
        ("SPAN", (1, 2), (3, 2)),
        ("BACKGROUND", (0, 0), (0, -1), label), ("BACKGROUND", (2, 0), (2, 1), label),
        ("BACKGROUND", (2, 3), (2, 3), label),
    ]))
    story += [head, Spacer(1, 2 * mm)]

    rows = [["费用类型 Fee", "所属期间 Period", "本金 Principal", "滞纳金 Late fee",
             "小计 Subtotal"]]
    for ln in doc.lines:
        rows.append([ln.fee_name, ln.period, yuan(ln.principal), yuan(ln.late_fee),
                     yuan(ln.principal + ln.late_fee)])
    if doc.prepaid_in:
        rows.append(["预存款 Prepaid", "", "", "", yuan(doc.prepaid_in)])
    principal = sum(ln.principal for ln in doc.lines)
    late = sum(ln.late_fee for ln in doc.lines)
    rows.append(["合计 Total", "", yuan(principal), yuan(late), yuan(doc.amount)])
    bills = Table(rows, colWidths=[width * 0.24, width * 0.2, width * 0.19, width * 0.17,
                                   width * 0.2], repeatRows=1)
    bills.setStyle(TableStyle(grid + [
        ("BACKGROUND", (0, 0), (-1, 0), label), ("ALIGN", (2, 1), (-1, -1), "RIGHT"),
        ("BACKGROUND", (0, -1), (-1, -1), label),
    ]))
    story += [bills, Spacer(1, 2 * mm)]

    total = Table([
        ["合计金额（小写）", f"￥{yuan(doc.amount)}"],
        ["合计金额（大写）", chinese_capital(doc.amount)],
    ], colWidths=[35 * mm, width - 35 * mm])
    total.setStyle(TableStyle(grid + [("FONTSIZE", (0, 0), (-1, -1), 10),
                                      ("BACKGROUND", (0, 0), (0, -1), label)]))
    story += [total, Spacer(1, 3 * mm)]

    when = f"{doc.printed_at:%Y-%m-%d %H:%M}" if doc.printed_at else ""
    issuer = f" | 开票点 Issued at {_esc(doc.issuer)}" if doc.issuer else ""
    story.append(Paragraph(
        f"收款单位（盖章）Payee: {_esc(doc.payee)} | 开票人 Operator: {_esc(doc.actor)} |"
        f" 开票时间 Printed: {when}{issuer}", small))

    def decorate(canvas, doc_):
        canvas.saveState()
        canvas.setFont(font, 6.5)
        canvas.drawString(10 * mm, 5 * mm, f"bankgate | 发票 {doc.invoice_no} | 收据"
                                           f" {doc.receipt_no}"
                                           + (f" | 补打 COPY {doc.copy}" if doc.copy else ""))
        if doc.copy:
            canvas.setFillColor(colors.Color(0.8, 0.1, 0.1, alpha=0.18))
            canvas.setFont(font, 54)
            canvas.translate(page[0] / 2, page[1] / 2)
            canvas.rotate(25)
            canvas.drawCentredString(0, -18, f"补打 COPY {doc.copy}")
        canvas.restoreState()

    pdf.build(story, onFirstPage=decorate, onLaterPages=decorate)
    return buf.getvalue()
