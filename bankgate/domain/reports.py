"""The standard reports (报表统计): their catalogue, parameters and columns.

``bankgate report NAME`` (and, later, the console) looks a report up in :data:`CATALOGUE`,
checks what it was asked with :func:`validate` -- before any SQL runs: dates in order, at
most ten years, a bank that is configured, dimensions the report has -- and calls it with
the store: ``REPORT.run(store, params) -> ReportTable``.  The figures are summed by the
database (:mod:`bankgate.store.reports`); this module names the columns, turns database
numbers into plain ints, labels the ageing buckets, computes ratios of the sums, and
declares the charts a PDF shows.  ``docs/reports.rst`` is the operator's description.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from bankgate.domain.reporting import Chart, Column, ReportTable
from bankgate.domain.withholding import RESULT_REASONS
from bankgate.store import reports as sql

MAX_YEARS = 10
HEATING_FEE_TYPE = "01"  # 采暖费: one bill per household and season, period "2026-2027"
TOTAL_LABEL = "合计 total"
BUCKET_LABELS = {0: "not yet due 未到期", 1: "1-30", 2: "31-90", 3: "91-180",
                 4: "over 180 180天以上"}
FEE_TYPE_PREPAID = "prepaid 预存"


class ReportError(ValueError):
    """What a report was asked is wrong: the message names the parameter."""


# -- parameters ----------------------------------------------------------------------


def _years_later(d: date, years: int) -> date:
    try:
        return d.replace(year=d.year + years)
    except ValueError:  # 29 February
        return d.replace(year=d.year + years, day=28)


def check_range(d_from: date | None, d_to: date) -> None:
    """``from`` not after ``to``, and at most :data:`MAX_YEARS` years apart."""
    if d_from is None:
        return
    if d_from > d_to:
        raise ReportError(f"--from {d_from} is after --to {d_to}")
    if d_to > _years_later(d_from, MAX_YEARS):
        raise ReportError(f"--from {d_from} --to {d_to}: the range is longer than {MAX_YEARS}"
                          " years; ask for a shorter one")


@dataclass(frozen=True)
class Report:
    name: str
    title: str
    summary: str  # one line for ``bankgate report list``
    build: Callable[..., ReportTable]
    dims: tuple[str, ...] = ()  # the dimensions --by may name
    default_by: tuple[str, ...] = ()
    per_bank: bool = True  # --bank means something
    needs_from: bool = True  # False: --from is optional (a snapshot as of --to)
    charts: tuple[Chart, ...] = field(default=())

    def validate(self, params: dict, banks: Iterable[str] | None = None) -> dict:
        """The parameters, checked and completed: ``from`` (date or None), ``to``,
        ``bank`` (None: every bank), ``by`` (a tuple).  Raises :class:`ReportError`."""
        p = dict(params)
        d_to = p.get("to") or date.today()
        d_from = p.get("from")
        if d_from is None and self.needs_from:
            d_from = d_to.replace(day=1)
        for key, d in (("from", d_from), ("to", d_to)):
            if d is not None and not isinstance(d, date):
                raise ReportError(f"--{key}: expected a date, got {d!r}")
        check_range(d_from, d_to)
        bank = p.get("bank") or None
        if bank is not None:
            if not self.per_bank:
                raise ReportError(f"report {self.name} is not per bank: leave out --bank")
            known = sorted(banks) if banks is not None else None
            if known is not None and bank not in known:
                raise ReportError(f"--bank {bank!r}: not a configured bank"
                                  f" (configured: {', '.join(known) or 'none'})")
        by = p.get("by") or self.default_by
        if isinstance(by, str):
            by = tuple(x.strip() for x in by.split(",") if x.strip())
        by = tuple(by)
        if by and not self.dims:
            raise ReportError(f"report {self.name} has no --by dimensions")
        for d in by:
            if d not in self.dims:
                raise ReportError(f"--by {d!r}: report {self.name} groups by"
                                  f" {', '.join(self.dims)}")
        if len(set(by)) != len(by):
            raise ReportError(f"--by {','.join(by)}: a dimension is named twice")
        if self.dims and not by:
            raise ReportError(f"--by: name at least one of {', '.join(self.dims)}")
        return {"from": d_from, "to": d_to, "bank": bank, "by": by}

    def run(self, store, params: dict, banks: Iterable[str] | None = None) -> ReportTable:
        """Validate ``params`` (no SQL runs on bad ones), then build the table."""
        return self.build(store, self.validate(params, banks), self)


# -- helpers -------------------------------------------------------------------------


def _int(v) -> int:
    return 0 if v is None else int(v)


def _ratio(part, whole) -> float | None:
    whole = _int(whole)
    return None if whole == 0 else float(Decimal(_int(part)) / Decimal(whole))


def _totals(n_keys: int, values: tuple | None) -> tuple:
    keys = (TOTAL_LABEL,) + (None,) * (n_keys - 1) if n_keys else ()
    return keys + tuple(_int(v) for v in (values or ()))


def _table(rep: Report, params: dict, columns, rows, totals, notes=(), charts=None):
    return ReportTable(name=rep.name, title=rep.title, params=params, columns=tuple(columns),
                       rows=rows, totals=totals,
                       charts=rep.charts if charts is None else charts, notes=tuple(notes))


# -- collections ---------------------------------------------------------------------

DIM_COLUMNS = {
    "day": Column("day", "日期 day", "date"),
    "bank": Column("bank", "银行 bank", "text"),
    "channel": Column("channel", "渠道 channel", "text"),
    "fee_type": Column("fee_type", "费种 fee type", "text"),
    "district": Column("district", "区域 district", "text"),
    "customer_class": Column("customer_class", "用户类别 class", "text"),
}
COLLECTION_MEASURES = (
    Column("count", "笔数 payments", "int"),
    Column("amount", "金额 amount", "fen"),
    Column("principal", "本金 principal", "fen"),
    Column("late_fee", "滞纳金 late fees", "fen"),
    Column("prepaid", "预存 prepaid", "fen"),
    Column("reversed_count", "冲正笔数 reversed", "int"),
    Column("reversed_amount", "冲正金额 reversed amount", "fen"),
    Column("refunded_count", "退单笔数 refunded", "int"),
    Column("refunded_amount", "退单金额 refunded amount", "fen"),
    Column("net_amount", "净收 net", "fen"),
)


def _collections(store, params: dict, rep: Report) -> ReportTable:
    by = params["by"]
    rows_q, totals_q = sql.collections_queries(store, params["from"], params["to"], by,
                                               params["bank"])
    totals = sql.one_row(store, totals_q)
    fee_at = by.index("fee_type") if "fee_type" in by else None

    def rows() -> Iterator[tuple]:
        for r in sql.iter_rows(store, rows_q):
            keys = list(r[:len(by)])
            if fee_at is not None and keys[fee_at] == sql.PREPAID_FEE_TYPE:
                keys[fee_at] = FEE_TYPE_PREPAID
            yield tuple(keys) + tuple(_int(v) for v in r[len(by):])

    notes = ["payments by trade date that took money (two-phase payments never confirmed"
             " are left out); reversed and refunded ones are counted in the amount and"
             " again in their own columns; net = still standing"]
    if fee_at is not None:
        notes.append("by fee type: a payment over several fee types counts once in each")
    if not _int(totals[0] if totals else 0):
        notes.append("empty: no payments in the range")
    charts = ()
    if by[0] in ("day", "bank", "district", "channel", "fee_type", "customer_class"):
        series = by[1] if len(by) > 1 else None
        kind = "line" if by[0] == "day" else ("stacked_bar" if series else "bar")
        charts = (Chart(kind, "收费 Collections"
                        + (" per " + series if series else "") + " by " + by[0],
                        x=by[0], y=("amount",), series=series),)
    return _table(rep, params, [DIM_COLUMNS[d] for d in by] + list(COLLECTION_MEASURES),
                  rows(), _totals(len(by), totals), notes, charts)


# -- arrears and collection rate -----------------------------------------------------

ARREARS_COLUMNS = (
    DIM_COLUMNS["district"], DIM_COLUMNS["customer_class"],
    Column("bucket", "账龄 ageing (days past due)", "text"),
    Column("bills", "账单数 bills", "int"),
    Column("principal", "欠费本金 outstanding", "fen"),
    Column("late_fee", "滞纳金 late fees", "fen"),
)


ARREARS_CUSTOMER_COLUMNS = (
    Column("customer_no", "户号 customer", "text"),
    Column("name", "户名 name", "text"),
    DIM_COLUMNS["district"], DIM_COLUMNS["customer_class"],
    Column("bills", "账单数 bills", "int"),
    Column("oldest_due", "最早到期 oldest due", "date"),
    Column("bucket", "账龄 ageing (days past due)", "text"),
    Column("principal", "欠费本金 outstanding", "fen"),
    Column("late_fee", "滞纳金 late fees", "fen"),
)


def _arrears_by_customer(store, params: dict, rep: Report) -> ReportTable:
    """``--by customer``: the arrears list, one row per customer (a million rows on a
    large N8: streamed, no chart)."""
    rows_q, totals_q = sql.arrears_customer_queries(store, params["to"], params["from"])
    totals = sql.one_row(store, totals_q) or (0, 0, 0, 0)

    def rows():
        for no, name, district, klass, n, oldest, bucket, *vals in sql.iter_rows(store,
                                                                                 rows_q):
            yield (no, name, district, klass, _int(n), oldest, BUCKET_LABELS[int(bucket)],
                   *(_int(v) for v in vals))

    customers, bills, principal, late = (_int(v) for v in totals)
    notes = [f"as of {params['to']}: one row per customer with principal outstanding;"
             " ageing of the oldest bill; late fees counted to that date"]
    if params["from"] is not None:
        notes.append(f"bills due on or after {params['from']}")
    if not customers:
        notes.append("empty: no arrears")
    return _table(rep, params, ARREARS_CUSTOMER_COLUMNS, rows(),
                  (TOTAL_LABEL, f"{customers} 户 customers", None, None, bills, None, None,
                   principal, late),
                  notes, charts=())


def _arrears(store, params: dict, rep: Report) -> ReportTable:
    if "customer" in params["by"]:
        if len(params["by"]) > 1:
            raise ReportError("--by customer lists each customer: name it alone")
        return _arrears_by_customer(store, params, rep)
    # a few hundred rows (districts x classes x buckets): read whole, and the totals --
    # every measure adds up -- summed here rather than by a second pass over the bills
    rows = [(district, klass, BUCKET_LABELS[int(bucket)], *(_int(v) for v in vals))
            for district, klass, bucket, *vals in sql.iter_rows(
                store, sql.arrears_query(store, params["to"], params["from"]))]
    totals = tuple(sum(r[i] for r in rows) for i in range(3, len(ARREARS_COLUMNS)))
    notes = [f"as of {params['to']}: ageing and late fees counted to that date over the"
             " bills' outstanding principal now"]
    if params["from"] is not None:
        notes.append(f"bills due on or after {params['from']}")
    if not rows:
        notes.append("empty: no arrears")
    return _table(rep, params, ARREARS_COLUMNS, rows, (TOTAL_LABEL, None, None, *totals),
                  notes)


RATE_COLUMNS = (
    Column("season", "采暖季 season", "text"),
    DIM_COLUMNS["district"],
    Column("bills", "账单数 bills", "int"),
    Column("billed", "应收 billed", "fen"),
    Column("paid", "实收 paid", "fen"),
    Column("paid_in_full", "缴清户 paid in full", "int"),
    Column("rate", "收费率 collection rate", "ratio"),
)


def _collection_rate(store, params: dict, rep: Report) -> ReportTable:
    rows_q, totals_q = sql.collection_rate_queries(store, HEATING_FEE_TYPE, params["from"],
                                                   params["to"])
    totals = sql.one_row(store, totals_q) or (0, 0, 0, 0)

    def rows():
        for season, district, n, billed, paid, full in sql.iter_rows(store, rows_q):
            yield (season, district, _int(n), _int(billed), _int(paid), _int(full),
                   _ratio(paid, billed))

    n, billed, paid, full = (_int(v) for v in totals)
    notes = [f"heating bills (fee type {HEATING_FEE_TYPE}) due"
             + (f" from {params['from']}" if params["from"] else "") + f" to {params['to']};"
             " rate = paid principal / billed, as the bills stand now"]
    if not n:
        notes.append("empty: no heating bills in the range")
    return _table(rep, params, RATE_COLUMNS, rows(),
                  (TOTAL_LABEL, None, n, billed, paid, full, _ratio(paid, billed)), notes)


# -- reconciliation, invoices, withholding -------------------------------------------

RECON_COLUMNS = (
    Column("bank", "银行 bank", "text"),
    Column("run_no", "批次 run", "int"),
    Column("settle_date", "对账日 settle date", "date"),
    Column("status", "结果 status", "text"),
    Column("bank_count", "银行笔数 bank count", "int"),
    Column("bank_total", "银行金额 bank total", "fen"),
    Column("ours_count", "我方笔数 our count", "int"),
    Column("ours_total", "我方金额 our total", "fen"),
    *(Column(c.lower(), label, "int") for c, label in (
        ("MATCHED", "相符 matched"), ("BANK_ONLY", "银行单边 bank only"),
        ("UTILITY_ONLY", "我方单边 utility only"), ("AMOUNT_DIFFERS", "金额不符 amount differs"),
        ("DATE_DIFFERS", "日期不符 date differs"), ("TOTALS_DIFFER", "汇总不符 totals differ"))),
    Column("exceptions", "异常 exceptions", "int"),
    Column("open_exceptions", "未处理 open", "int"),
)


def _recon(store, params: dict, rep: Report) -> ReportTable:
    rows_q, totals_q = sql.recon_queries(params["from"], params["to"], params["bank"])
    runs, *t = sql.one_row(store, totals_q)

    def rows():
        for bank, run_no, d, status, *vals in sql.iter_rows(store, rows_q):
            yield (bank, run_no, d, status, *(_int(v) for v in vals))

    notes = ["one row per reconciliation run (dry runs left out); open = exceptions of the"
             " latest run of its bank and date not yet resolved"]
    if not _int(runs):
        notes.append("empty: no reconciliation runs in the range")
    return _table(rep, params, RECON_COLUMNS, rows(),
                  (TOTAL_LABEL, _int(runs), None, None, *(_int(v) for v in t)), notes)


INVOICE_COLUMNS = (
    Column("holder", "领用单位 holder", "text"),
    Column("received", "领用 received", "int"),
    Column("used", "开出 issued", "int"),
    Column("voided", "作废 void", "int"),
    Column("left", "剩余 left", "int"),
)


def _invoices(store, params: dict, rep: Report) -> ReportTable:
    rows_q, totals_q = sql.invoice_queries(params["from"], params["to"], params["bank"])
    totals = sql.one_row(store, totals_q)
    rows = ((h, *(_int(v) for v in vals)) for h, *vals in sql.iter_rows(store, rows_q))
    notes = ["received, issued and void: in the range; left: unused numbers now"]
    return _table(rep, params, INVOICE_COLUMNS, rows, _totals(1, totals), notes)


WH_REASON_CODES = tuple(str(k) for k in sorted(RESULT_REASONS) if k)
WH_COLUMNS = (
    Column("bank", "银行 bank", "text"),
    Column("batches", "批次 batches", "int"),
    Column("lines", "笔数 lines", "int"),
    Column("amount", "金额 amount", "fen"),
    Column("debited", "成功 debited", "int"),
    Column("debited_amount", "成功金额 debited amount", "fen"),
    Column("failed", "失败 failed", "int"),
    Column("failed_amount", "失败金额 failed amount", "fen"),
    Column("no_result", "未回盘 no result yet", "int"),
    Column("success_rate", "成功率 success rate", "ratio"),
    *(Column(f"failed_{c}", f"{c}: {RESULT_REASONS[int(c)]}", "int") for c in WH_REASON_CODES),
    Column("failed_other", "其他 other reasons", "int"),
)


def _withholding(store, params: dict, rep: Report) -> ReportTable:
    rows_q, totals_q = sql.withholding_queries(params["from"], params["to"], params["bank"],
                                               WH_REASON_CODES)
    totals = [_int(v) for v in sql.one_row(store, totals_q)]

    def shaped(vals):
        vals = [_int(v) for v in vals]
        batches, lines, amount, ok, ok_amt, bad, bad_amt, none, *reasons = vals
        return (batches, lines, amount, ok, ok_amt, bad, bad_amt, none,
                _ratio(ok, ok + bad), *reasons)

    rows = ((bank, *shaped(vals)) for bank, *vals in sql.iter_rows(store, rows_q))
    notes = ["batches by deduct date; success rate = debited / lines with a result"]
    if not totals[0]:
        notes.append("empty: no withholding batches in the range")
    return _table(rep, params, WH_COLUMNS, rows, (TOTAL_LABEL, *shaped(totals)), notes)


# -- the catalogue -------------------------------------------------------------------

CATALOGUE: dict[str, Report] = {r.name: r for r in (
    Report("collections", "收费统计 Collections",
           "payments by day / bank / channel / fee type / district / class (--by)",
           _collections, dims=sql.COLLECTION_DIMS, default_by=("day", "bank")),
    Report("arrears", "欠费统计 Arrears",
           "outstanding principal and late fees by district, class and ageing, as of --to"
           " (--by customer: one row per customer)",
           _arrears, dims=("district", "customer"), default_by=("district",),
           per_bank=False, needs_from=False,
           charts=(Chart("stacked_bar", "欠费账龄 Arrears ageing by district", x="district",
                         y=("principal",), series="bucket"),)),
    Report("collection-rate", "收费率 Heating collection rate",
           "each heating season's paid / billed per district (bills due in the range)",
           _collection_rate, per_bank=False, needs_from=False,
           charts=(Chart("bar", "收费率 Collection rate per district", x="district",
                         y=("rate",), series="season"),)),
    Report("recon", "对账历史 Reconciliation history",
           "reconciliation runs per bank: categories, exceptions, open exceptions",
           _recon),
    Report("invoices", "发票使用 Invoice usage",
           "invoice numbers per holder: received, issued, void, left", _invoices),
    Report("withholding", "代扣统计 Withholding",
           "withholding batches per bank: success rate, failures by reason", _withholding),
)}


def find(name: str) -> Report:
    try:
        return CATALOGUE[name]
    except KeyError:
        raise ReportError(f"no report {name!r} (reports: {', '.join(CATALOGUE)})") from None
