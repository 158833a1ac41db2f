"""The report of a reconciliation run: text for the log, CSV, and a PDF for
the accountant to sign off (对账报告).

Input is a :class:`RunReport` of ``bankgate/domain/reconcile.py`` (duck-typed: this
module does not import the plugin).  Amounts are fen inside and yuan on
paper.  A run is named by its bank's run number (``run 3``); a dry run has
none: its files are ``{bank}_{date}_dryrun.*`` and every one of them says
``DRY RUN — nothing was changed``.  The PDF is set in the gateway's own CJK
font, embedded as a subset (``bankgate/domain/pdffonts.py``), so it reads the
same on a machine without Chinese fonts.
Files are written atomically (a temporary file, then renamed), so a reader
never sees half a report.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from bankgate.canon.files import write_atomic
from bankgate.canon.money import fen_to_yuan

PDF_MAX_ROWS = 400  # rows per table in the PDF; the CSV always has every item

CATEGORY_NAMES = {
    "MATCHED": ("matched", "相符"),
    "BANK_ONLY": ("bank only", "银行单边(我方无)"),
    "UTILITY_ONLY": ("utility only", "我方单边(银行无)"),
    "AMOUNT_DIFFERS": ("amount differs", "金额不符"),
    "DATE_DIFFERS": ("date differs", "日期不符"),
    "TOTALS_DIFFER": ("header totals differ", "汇总不符"),
}
ACTION_NAMES = {
    "POSTED": ("posted after the fact", "补销"),
    "REVERSED": ("reversed locally", "抹账"),
    "EXCEPTION": ("exception, for an operator", "待人工处理"),
    "NONE": ("nothing to do", "无需处理"),
    "RESOLVED": ("resolved", "已处理"),
}
WOULD_NAMES = {"POSTED": "would post", "REVERSED": "would reverse"}  # a dry run's actions
ORDER = list(CATEGORY_NAMES)
DRY_RUN = "DRY RUN — nothing was changed"


def _y(fen) -> str:
    if fen is None:
        return "-"
    y = fen_to_yuan(int(fen))
    whole, _, cents = y.lstrip("-").partition(".")
    grouped = f"{int(whole):,}"
    return ("-" if y.startswith("-") else "") + f"{grouped}.{cents}"


def base_name(rep) -> str:
    """``{bank}_{YYYYMMDD}_run{N}`` (N the bank's run number), or ``..._dryrun``."""
    if rep.dry_run:
        return f"{rep.bank}_{rep.settle_date:%Y%m%d}_dryrun"
    no = rep.run_no if rep.run_no is not None else rep.run_id
    return f"{rep.bank}_{rep.settle_date:%Y%m%d}_run{no}"


def _action_names(rep, act: str) -> tuple[str, str]:
    """(English, Chinese) of an action; a dry run's changes are what it would do."""
    if rep.dry_run and act in WOULD_NAMES:
        en, zh = ACTION_NAMES[act]
        return f"{WOULD_NAMES[act]} (dry run)", f"将{zh}"
    return ACTION_NAMES.get(act, (act, act))


def _act(rep, act: str) -> str:
    if rep.dry_run and act in WOULD_NAMES:
        return WOULD_NAMES[act]
    return act.lower()


# -- text -----------------------------------------------------------------------


def _count_line(rep) -> str:
    parts = []
    for cat in ORDER:
        n = rep.counts.get(cat, 0)
        if not n and cat != "MATCHED":
            continue
        acts = []
        for key, v in sorted(rep.actions.items()):
            c, act = key.split("/")
            if c == cat and (cat, act) != ("MATCHED", "NONE"):
                acts.append(f"{_act(rep, act)} {v[0]}")
        parts.append(f"{CATEGORY_NAMES[cat][0]} {n}" + (f" ({', '.join(acts)})" if acts else ""))
    return "; ".join(parts)


def _item_line(it) -> str:
    return (f"    {it.category:<14} {it.serial or '-':<20} {it.customer_no or '-':<12}"
            f" bank {_y(it.bank_amount)} utility {_y(it.our_amount)}  {it.detail}")


def _dry_verdict(rep) -> str:
    """What the real run would do and end as: ``would post 1, would reverse 1 →
    BALANCED``."""
    n = {a: len([i for i in rep.items if i.action == a]) for a in ("POSTED", "REVERSED")}
    parts = [f"would post {n['POSTED']}"] if n["POSTED"] else []
    if n["REVERSED"]:
        parts.append(f"would reverse {n['REVERSED']}")
    if rep.exceptions:
        parts.append(f"{len(rep.exceptions)} exception(s) would be left for an operator")
    return f"{', '.join(parts) or 'nothing to change'} → {rep.status}"


def summary_text(rep, max_lines: int = 20) -> str:
    """A few lines for the log: what was read, what was found, what was done
    (each post and reversal, each open exception, each exception an operator
    had resolved); a dry run says so first, and what the real run would do."""
    if rep.dry_run:
        head = f"reconciliation {rep.bank} {rep.settle_date:%Y-%m-%d} (dry run): " + (
            _dry_verdict(rep) if rep.status != "FAILED" else rep.status)
        lines = [DRY_RUN, head]
    else:
        lines = [f"reconciliation {rep.bank} {rep.settle_date:%Y-%m-%d} {rep.label}:"
                 f" {rep.status}"]
    if rep.status == "FAILED" and not rep.counts:
        lines.append(f"  {rep.error}")
        return "\n".join(lines)
    declared = ""
    if rep.declared_count is not None:
        declared = f"; header {rep.declared_count} / {_y(rep.declared_total)}"
    lines.append(f"  statement {rep.file_name} (sha256 {rep.sha256[:12]}…): {rep.bank_count}"
                 f" records, {_y(rep.bank_total)}{declared}")
    after = "after the real run would balance" if rep.dry_run else "after"
    lines.append(f"  gateway: {rep.ours_before[0]} payments, {_y(rep.ours_before[1])} before;"
                 f" {rep.ours_count}, {_y(rep.ours_total)} {after}")
    lines.append(f"  {_count_line(rep)}")
    resolved = list(getattr(rep, "resolved_items", []))
    accepted = getattr(rep, "accepted", (0, 0))
    if rep.gap == (0, 0) and not rep.exceptions:
        lines.append("  the gateway's totals equal the statement's")
    else:
        ok = ("explained by" if rep.gap == (rep.explained[0] + accepted[0],
                                            rep.explained[1] + accepted[1])
              else "NOT explained by")
        also = f" and {len(resolved)} resolved by an operator" if resolved else ""
        lines.append(f"  statement minus gateway: {rep.gap[0]} records, {_y(rep.gap[1])};"
                     f" {ok} {len(rep.exceptions)} open exception(s){also}")

    def listing(items, title: str, first: bool = False) -> None:
        if not items:
            return
        if not first:
            lines.append(f"  {title}: {len(items)}")
        lines.extend(_item_line(it) for it in items[:max_lines])
        if len(items) > max_lines:
            lines.append(f"    ... {len(items) - max_lines} more in the report")

    listing(rep.exceptions, "open exceptions", first=True)
    posted = [i for i in rep.items if i.action == "POSTED"]
    reversed_ = [i for i in rep.items if i.action == "REVERSED"]
    if rep.dry_run:
        listing(posted, "would post after the fact (补销)")
        listing(reversed_, "would reverse locally (抹账)")
    else:
        listing(posted, "posted after the fact (补销)")
        listing(reversed_, "reversed locally (抹账)")
    listing(resolved, "resolved by an operator on an earlier run")
    if rep.error:
        lines.append(f"  error: {rep.error}")
    return "\n".join(lines)


# -- CSV ------------------------------------------------------------------------

CSV_COLUMNS = ("run_id", "bank", "settle_date", "category", "serial", "customer_no",
               "bank_amount", "our_amount", "action", "payment_id", "detail", "run_no")


def csv_bytes(rep) -> bytes:
    """Every item but the plain matches, in serial order (UTF-8 with a BOM, so
    spreadsheet programs show the Chinese text).  ``run_id`` is the database's
    key of the run, ``run_no`` the bank's run number -- ``DRY RUN`` on every
    row of a dry run (its POSTED and REVERSED are what the real run would do)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    no = "DRY RUN" if rep.dry_run else ("" if rep.run_no is None else rep.run_no)
    for it in rep.items:
        if it.category == "MATCHED" and it.action == "NONE" and not it.detail:
            continue
        w.writerow([rep.run_id, rep.bank, f"{rep.settle_date:%Y-%m-%d}", it.category,
                    it.serial or "", it.customer_no or "", fen_to_yuan(it.bank_amount or 0),
                    fen_to_yuan(it.our_amount or 0), it.action, it.payment_id or "",
                    it.detail or "", no])
    return ("\ufeff" + buf.getvalue()).encode("utf-8")


# -- PDF ------------------------------------------------------------------------

def _font() -> str:
    from bankgate.domain.pdffonts import cjk_font_name

    return cjk_font_name()


def pdf_bytes(rep, generated_at=None) -> bytes:
    """The report an accountant signs: totals both sides, every category with
    what was done, the open exceptions, the automatic changes, signatures."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    font = _font()
    title = ParagraphStyle("t", fontName=font, fontSize=15, leading=20, spaceAfter=4)
    h2 = ParagraphStyle("h2", fontName=font, fontSize=11, leading=15, spaceBefore=8,
                        spaceAfter=4)
    body = ParagraphStyle("b", fontName=font, fontSize=8.5, leading=11)
    cell = ParagraphStyle("c", fontName=font, fontSize=7.5, leading=9)
    buf = io.BytesIO()
    doc = SimpleDocTemplate(
        buf, pagesize=landscape(A4), leftMargin=12 * mm, rightMargin=12 * mm,
        topMargin=12 * mm, bottomMargin=12 * mm,
        title=f"对账报告 {rep.bank} {rep.settle_date:%Y-%m-%d}", author="bankgate",
        initialFontName=font,  # else each page names Helvetica, a font not embedded
    )
    grid = TableStyle([
        ("FONTNAME", (0, 0), (-1, -1), font), ("FONTSIZE", (0, 0), (-1, -1), 8),
        ("GRID", (0, 0), (-1, -1), 0.4, colors.grey),
        ("BACKGROUND", (0, 0), (-1, 0), colors.Color(0.9, 0.9, 0.9)),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
    ])
    money_right = ("ALIGN", (1, 1), (-1, -1), "RIGHT")
    story = [Paragraph(f"对账报告 Reconciliation report — {rep.bank}"
                       f" ({rep.bank_code}) {rep.settle_date:%Y-%m-%d}", title)]
    if rep.dry_run:
        story.append(Paragraph(
            f"<font color='#b00000'><b>试运行，未作任何更改 {DRY_RUN}.</b></font>"
            f" 真实运行将 The real run would: {_dry_verdict(rep)}", title))
    when = f"{generated_at:%Y-%m-%d %H:%M}" if generated_at else ""
    status_zh = {"BALANCED": "平衡", "EXCEPTIONS": "有差错待处理", "FAILED": "失败"}.get(
        rep.status, rep.status)
    run_text = ("试运行 Dry run (无运行号 no run number)" if rep.dry_run else
                f"运行号 Run {rep.run_no if rep.run_no is not None else '-'}")
    story.append(Paragraph(
        f"{run_text} · 结果 Status{' (would be)' if rep.dry_run else ''}:"
        f" <b>{rep.status}</b> {status_zh} · 生成 Generated {when}", body))
    story.append(Paragraph(
        f"对账文件 Statement: {rep.file_name} · 来源 source {rep.source or '-'} ·"
        f" {rep.size:,} bytes · SHA-256 {rep.sha256}", body))
    story.append(Spacer(1, 4))

    story.append(Paragraph("一、总额 Totals", h2))
    rows = [["", "笔数 Count", "金额 Amount (元)"],
            ["银行对账单明细 Statement details", f"{rep.bank_count:,}", _y(rep.bank_total)]]
    if rep.declared_count is not None:
        rows.append(["对账单汇总行 Statement header", f"{rep.declared_count:,}",
                     _y(rep.declared_total)])
    rows += [
        ["我方对账前 Gateway before", f"{rep.ours_before[0]:,}", _y(rep.ours_before[1])],
        ["真实运行平帐后 Gateway after the real run" if rep.dry_run else
         "我方平帐后 Gateway after", f"{rep.ours_count:,}", _y(rep.ours_total)],
        ["差额(银行-我方) Difference", f"{rep.gap[0]:,}", _y(rep.gap[1])],
        ["待处理差错合计 Open exceptions account for", f"{rep.explained[0]:,}",
         _y(rep.explained[1])],
    ]
    t = Table(rows, colWidths=[95 * mm, 40 * mm, 50 * mm])
    t.setStyle(grid)
    t.setStyle(TableStyle([money_right]))
    story.append(t)
    verdict = ("我方总额与银行对账单一致。 The gateway's totals equal the statement's."
               if rep.gap == (0, 0) and not rep.exceptions else
               ("差额由下列待处理差错完全解释。 The difference is exactly the open exceptions"
                " listed below." if rep.gap == rep.explained else
                "差额未能由差错解释，请联系技术人员。 The difference is NOT explained: call IT."))
    story.append(Spacer(1, 3))
    story.append(Paragraph(verdict, body))

    story.append(Paragraph("二、分类 Categories", h2))
    rows = [["类别 Category", "处理 Action", "笔数 Items", "银行金额 Bank", "我方金额 Utility"]]
    for key, (n, bank_amt, our_amt) in sorted(
            rep.actions.items(), key=lambda kv: (ORDER.index(kv[0].split("/")[0]), kv[0])):
        cat, act = key.split("/")
        zh, en = _action_names(rep, act)[::-1]
        if act == "NONE" and cat != "MATCHED":
            zh, en = "已平帐(前次)", "balanced by an earlier run"
        rows.append([f"{CATEGORY_NAMES[cat][1]} {CATEGORY_NAMES[cat][0]}", f"{zh} {en}",
                     f"{n:,}", _y(bank_amt), _y(our_amt)])
    t = Table(rows, colWidths=[70 * mm, 70 * mm, 25 * mm, 40 * mm, 40 * mm])
    t.setStyle(grid)
    t.setStyle(TableStyle([("ALIGN", (2, 1), (-1, -1), "RIGHT")]))
    story.append(t)

    def item_table(items, heading):
        story.append(Paragraph(heading, h2))
        if not items:
            story.append(Paragraph("无 None.", body))
            return
        rows = [["流水号 Serial", "类别 Category", "客户号 Customer", "银行 Bank", "我方 Utility",
                 "处理 Action", "说明 Detail"]]
        for it in items[:PDF_MAX_ROWS]:
            rows.append([it.serial or "-", CATEGORY_NAMES[it.category][1], it.customer_no or "-",
                         _y(it.bank_amount), _y(it.our_amount),
                         _action_names(rep, it.action)[1],
                         Paragraph(it.detail or "", cell)])
        t = Table(rows, colWidths=[38 * mm, 28 * mm, 30 * mm, 25 * mm, 25 * mm, 22 * mm,
                                   105 * mm], repeatRows=1)
        t.setStyle(grid)
        t.setStyle(TableStyle([("ALIGN", (3, 1), (4, -1), "RIGHT")]))
        story.append(t)
        if len(items) > PDF_MAX_ROWS:
            story.append(Paragraph(f"……另有 {len(items) - PDF_MAX_ROWS:,} 笔，见 CSV。"
                                   f" {len(items) - PDF_MAX_ROWS:,} more in the CSV report.",
                                   body))

    item_table(rep.exceptions, "三、待人工处理的差错 Open exceptions (for an operator)")
    if rep.dry_run:
        item_table(rep.changes, "四、真实运行将自动平帐 What the real run would change"
                                " (nothing was changed)")
    else:
        item_table(rep.changes, "四、自动平帐 Automatic changes (journal entries of this run)")
    resolved = list(getattr(rep, "resolved_items", []))
    if resolved:
        item_table(resolved, "五、前次已人工处理 Resolved by an operator on an earlier run")
    if rep.error:
        story.append(Paragraph(f"错误 Error: {rep.error}", body))

    story.append(Spacer(1, 14))
    sign = Table([["制表 Prepared by", "复核 Checked by", "会计主管 Chief accountant",
                   "日期 Date"], ["", "", "", ""]],
                 colWidths=[60 * mm] * 4, rowHeights=[7 * mm, 14 * mm])
    sign.setStyle(TableStyle([("FONTNAME", (0, 0), (-1, -1), font),
                              ("FONTSIZE", (0, 0), (-1, -1), 9),
                              ("LINEBELOW", (0, 1), (-1, 1), 0.6, colors.black)]))
    story.append(sign)

    def footer(canvas, doc_):
        canvas.saveState()
        canvas.setFont(font, 7)
        canvas.drawString(12 * mm, 7 * mm, f"bankgate · {rep.bank} {rep.settle_date:%Y-%m-%d}"
                          f" · {'DRY RUN — nothing was changed' if rep.dry_run else rep.label}"
                          f" · 第 {doc_.page} 页 page {doc_.page}")
        canvas.restoreState()

    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buf.getvalue()


def write_reports(rep, out_dir: Path, *, pdf: bool = True) -> dict[str, str]:
    """Write ``{bank}_{date}_run{N}.txt/.csv/.pdf`` (``_dryrun`` for a dry run)
    into ``out_dir``."""
    from datetime import datetime

    out_dir = Path(out_dir)
    name = base_name(rep)
    out = {
        "text": str(write_atomic(out_dir / f"{name}.txt",
                                 (summary_text(rep, max_lines=10**9) + "\n").encode("utf-8"))),
        "csv": str(write_atomic(out_dir / f"{name}.csv", csv_bytes(rep))),
    }
    if pdf:
        out["pdf"] = str(write_atomic(out_dir / f"{name}.pdf",
                                      pdf_bytes(rep, generated_at=datetime.now())))
    return out
