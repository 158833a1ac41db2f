"""The standard reports: each figure from a small hand-built data set whose answer is
known (on SQLite, SQLite under a renamed N8, PostgreSQL and MariaDB), the refusals
before any SQL, the exporters' exact output, and an XLSX export in bounded memory."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from datetime import date, datetime

import pytest
import sqlalchemy as sa

from bankgate.app.cli import main as cli
from bankgate.domain import reporting, reports
from bankgate.domain.ledger import late_fee
from bankgate.domain.reporting import Chart, Column, ReportTable
from bankgate.store import model

AS_OF = date(2026, 11, 30)
NOV = {"from": date(2026, 11, 1), "to": AS_OF}
AT = datetime(2026, 11, 5, 10, 0)
HP, TX = "和平区", "铁西区"


# -- the hand-built data set ---------------------------------------------------------


def _bill(bill_id, customer, fee, period, amount, paid, due, late_paid=0):
    return {"bill_id": bill_id, "customer_no": customer, "fee_type": fee, "period": period,
            "amount": amount, "paid_amount": paid, "late_fee_paid": late_paid, "due_date": due}


def _payment(pid, bank, d, channel, customer, amount, principal, late, prepaid, status):
    return {"id": pid, "bank": bank, "trade_date": d, "serial": f"S{pid}", "trade_time": "100000",
            "customer_no": customer, "amount": amount, "principal": principal,
            "late_fee": late, "prepaid_in": prepaid, "channel": channel,
            "receipt_no": f"R{pid:06d}", "status": status, "source": "online",
            "created_at": AT}


def seed(store) -> None:
    n8 = store.n8
    with store.n8_engine.begin() as c:  # N8's rows in N8's database ([n8.database])
        c.execute(n8["tariff"].insert(), [
            {"fee_type": "01", "customer_class": "R", "unit_price": 2600, "late_fee_ppm": 500},
            {"fee_type": "01", "customer_class": "I", "unit_price": 3200, "late_fee_ppm": 1000},
            {"fee_type": "02", "customer_class": "R", "unit_price": 150, "late_fee_ppm": 0},
        ])
        c.execute(n8["customer"].insert(), [
            {"customer_no": "C1", "name": "张三", "customer_class": "R", "district": HP,
             "status": "A"},
            {"customer_no": "C2", "name": "沈阳重型机械厂", "customer_class": "I",
             "district": HP, "status": "A"},
            {"customer_no": "C3", "name": "李四", "customer_class": "R", "district": TX,
             "status": "A"},
        ])
        c.execute(n8["bill"].insert(), [
            # 103 days overdue on 30 Nov: 100000 x 500 ppm x 103 = 5150.0 fen
            _bill("B1", "C1", "01", "2025-2026", 100000, 0, date(2026, 8, 19)),
            _bill("B2", "C1", "02", "2026-11", 15000, 0, date(2026, 12, 20)),  # not yet due
            # 20 days: 600000 x 1000 x 20 = 12000, less 1000 paid = 11000
            _bill("B3", "C2", "01", "2026-2027", 1000000, 400000, date(2026, 11, 10), 1000),
            _bill("B4", "C3", "01", "2026-2027", 50000, 50000, date(2026, 10, 31)),  # paid
            # 395 days: 80000 x 500 x 395 = 15800.0
            _bill("B5", "C3", "01", "2025-2026", 80000, 0, date(2025, 10, 31)),
            # 1 day: 1000 x 500 x 1 = 0.5 fen, rounded half up to 1
            _bill("B6", "C1", "01", "2024-2025", 1000, 0, date(2026, 11, 29)),
        ])
    with store.engine.begin() as c:
        c.execute(model.payment.insert(), [
            _payment(1, "fixed", date(2026, 11, 2), "01", "C1", 105150, 100000, 5150, 0,
                     "POSTED"),
            _payment(2, "fixed", date(2026, 11, 2), "05", "C2", 30000, 30000, 0, 0, "POSTED"),
            _payment(3, "partial", date(2026, 11, 3), "01", "C1", 20000, 15000, 0, 5000,
                     "POSTED"),
            _payment(4, "partial", date(2026, 11, 3), "01", "C3", 50000, 50000, 0, 0,
                     "REVERSED"),
            _payment(5, "fixed", date(2026, 11, 3), "01", "C3", 7000, 7000, 0, 0, "REFUNDED"),
            _payment(6, "fixed", date(2026, 11, 3), "01", "C3", 9999, 9999, 0, 0, "PENDING"),
            _payment(7, "fixed", date(2026, 10, 31), "01", "C3", 1234, 1234, 0, 0, "POSTED"),
        ])
        c.execute(model.allocation.insert(), [
            {"payment_id": 1, "bill_id": "B1", "principal": 100000, "late_fee": 5150},
            {"payment_id": 2, "bill_id": "B3", "principal": 30000, "late_fee": 0},
            {"payment_id": 3, "bill_id": "B2", "principal": 15000, "late_fee": 0},
            {"payment_id": 4, "bill_id": "B4", "principal": 50000, "late_fee": 0},
            {"payment_id": 5, "bill_id": "B5", "principal": 7000, "late_fee": 0},
            {"payment_id": 6, "bill_id": "B5", "principal": 9999, "late_fee": 0},
            {"payment_id": 7, "bill_id": "B5", "principal": 1234, "late_fee": 0},
        ])
        run = {"bank": "fixed", "started_at": AT, "finished_at": AT, "dry_run": 0,
               "bank_count": 3, "bank_total": 300, "ours_count": 2, "ours_total": 200}
        c.execute(model.recon_run.insert(), [
            {**run, "id": 1, "run_no": 1, "settle_date": date(2026, 11, 2),
             "status": "EXCEPTIONS"},
            {**run, "id": 2, "run_no": 2, "settle_date": date(2026, 11, 2),
             "status": "BALANCED"},
            {**run, "id": 3, "run_no": 3, "settle_date": date(2026, 11, 3),
             "status": "EXCEPTIONS"},
            {**run, "id": 4, "run_no": None, "settle_date": date(2026, 11, 3),
             "status": "EXCEPTIONS", "dry_run": 1},
            {**run, "id": 5, "run_no": 4, "settle_date": date(2026, 10, 30),
             "status": "BALANCED"},
        ])

        def item(run_id, category, action):
            return {"run_id": run_id, "category": category, "action": action,
                    "bank_amount": 100, "our_amount": 100}

        c.execute(model.recon_item.insert(), [
            item(1, "MATCHED", "NONE"), item(1, "MATCHED", "NONE"),
            item(1, "BANK_ONLY", "EXCEPTION"),
            item(2, "MATCHED", "NONE"), item(2, "MATCHED", "NONE"),
            item(2, "BANK_ONLY", "RESOLVED"),
            item(3, "MATCHED", "NONE"), item(3, "AMOUNT_DIFFERS", "EXCEPTION"),
            item(4, "BANK_ONLY", "EXCEPTION"), item(5, "MATCHED", "NONE"),
        ])
        c.execute(model.invoice_stock.insert(), [
            {"id": 1, "bank": "fixed", "width": 8, "first_no": 1, "last_no": 100, "next_no": 4,
             "issued_at": datetime(2026, 11, 1, 9), "issued_by": "wang"},
            {"id": 2, "bank": "partial", "width": 8, "first_no": 1, "last_no": 50,
             "next_no": 1, "issued_at": datetime(2026, 10, 1, 9), "issued_by": "wang"},
        ])
        c.execute(model.invoice.insert(), [
            {"invoice_no": f"0000000{n}", "stock_id": 1, "bank": "fixed", "status": s,
             "created_at": AT} for n, s in ((1, "ISSUED"), (2, "PRINTED"), (3, "VOID"))
        ])

        def batch(bid, bank, d):
            return {"id": bid, "bank": bank, "deduct_date": d, "seq": 1,
                    "file_name": f"{bank}.PK", "status": "PROCESSED", "record_count": 1,
                    "generated_at": AT}

        c.execute(model.wh_batch.insert(), [batch(1, "fixed", date(2026, 11, 5)),
                                            batch(2, "partial", date(2026, 11, 6)),
                                            batch(3, "fixed", date(2026, 12, 5))])

        def line(bid, no, total, result):
            return {"batch_id": bid, "line_no": no, "bill_id": "B1", "customer_no": "C1",
                    "account_no": "6222", "amount": total, "total": total, "result": result}

        c.execute(model.wh_line.insert(), [
            line(1, 1, 1000, "0"), line(1, 2, 2000, "0"), line(1, 3, 500, "1"),
            line(1, 4, 700, "3"), line(1, 5, 300, None),
            line(2, 1, 100, "0"), line(2, 2, 50, "9"), line(3, 1, 999, "0"),
        ])


@pytest.fixture
def data(store):
    seed(store)
    return store


def run(store, name, **params):
    t = reports.find(name).run(store, params, banks=["fixed", "partial"])
    return t, list(t.rows)


# -- collections ---------------------------------------------------------------------


def test_collections_by_day_and_bank(data):
    t, rows = run(data, "collections", **NOV)
    assert [c.name for c in t.columns][:3] == ["day", "bank", "count"]
    assert rows == [
        # day, bank, count, amount, principal, late, prepaid, rev n/amt, ref n/amt, net
        (date(2026, 11, 2), "fixed", 2, 135150, 130000, 5150, 0, 0, 0, 0, 0, 135150),
        (date(2026, 11, 3), "fixed", 1, 7000, 7000, 0, 0, 0, 0, 1, 7000, 0),
        (date(2026, 11, 3), "partial", 2, 70000, 65000, 0, 5000, 1, 50000, 0, 0, 20000),
    ]
    assert t.totals == ("合计 total", None, 5, 212150, 202000, 5150, 5000, 1, 50000, 1, 7000,
                        155150)
    assert t.charts and t.charts[0].x == "day" and t.charts[0].series == "bank"


def test_collections_by_fee_type_counts_a_payment_once_per_fee_type(data):
    t, rows = run(data, "collections", by="fee_type", **NOV)
    assert sorted(rows) == sorted([
        ("01", 4, 192150, 187000, 5150, 0, 1, 50000, 1, 7000, 135150),
        ("02", 1, 15000, 15000, 0, 0, 0, 0, 0, 0, 15000),
        (reports.FEE_TYPE_PREPAID, 1, 5000, 0, 0, 5000, 0, 0, 0, 0, 5000),
    ])
    # the totals count payments, not allocations; the money adds up to the same
    assert t.totals == ("合计 total", 5, 212150, 202000, 5150, 5000, 1, 50000, 1, 7000, 155150)


def test_collections_by_district_class_channel_and_one_bank(data):
    _, rows = run(data, "collections", by="district,customer_class", **NOV)
    assert {r[:4] for r in rows} == {(HP, "R", 2, 125150), (HP, "I", 1, 30000),
                                     (TX, "R", 2, 57000)}
    _, rows = run(data, "collections", by=("channel",), bank="partial", **NOV)
    assert rows == [("01", 2, 70000, 65000, 0, 5000, 1, 50000, 0, 0, 20000)]


# -- arrears and collection rate -----------------------------------------------------


def test_arrears_by_district_class_and_ageing(data):
    t, rows = run(data, "arrears", to=AS_OF)
    got = {(r[0], r[1], r[2]): r[3:] for r in rows}
    b = reports.BUCKET_LABELS
    assert got == {
        (HP, "I", b[1]): (1, 600000, 11000),
        (HP, "R", b[0]): (1, 15000, 0),
        (HP, "R", b[1]): (1, 1000, 1),  # 0.5 fen rounded half up
        (HP, "R", b[3]): (1, 100000, 5150),
        (TX, "R", b[4]): (1, 80000, 15800),
    }
    assert [c.name for c in t.columns] == ["district", "customer_class", "bucket", "bills",
                                       "principal", "late_fee"]
    assert t.totals == ("合计 total", None, None, 5, 796000, 31951)  # summed from the rows
    # the same late fees as the ledger charges
    assert (late_fee(100000, date(2026, 8, 19), AS_OF, 500, 0),
            late_fee(600000, date(2026, 11, 10), AS_OF, 1000, 1000),
            late_fee(80000, date(2025, 10, 31), AS_OF, 500, 0),
            late_fee(1000, date(2026, 11, 29), AS_OF, 500, 0)) == (5150, 11000, 15800, 1)


def test_arrears_from_limits_the_due_dates(data):
    t, rows = run(data, "arrears", **{"from": date(2026, 11, 1), "to": AS_OF})
    assert t.totals[3:] == (3, 616000, 11001)  # B2, B3, B6


def test_arrears_by_customer_lists_each_customer(data):
    t, rows = run(data, "arrears", to=AS_OF, by="customer")
    b = reports.BUCKET_LABELS
    assert [c.name for c in t.columns][:2] == ["customer_no", "name"]
    assert rows == [  # by district, then customer number; ageing of the oldest bill
        ("C1", "张三", HP, "R", 3, date(2026, 8, 19), b[3], 116000, 5151),  # B1, B2, B6
        ("C2", "沈阳重型机械厂", HP, "I", 1, date(2026, 11, 10), b[1], 600000, 11000),
        ("C3", "李四", TX, "R", 1, date(2025, 10, 31), b[4], 80000, 15800),  # B4 is paid
    ]
    # the same sums as the report by district, class and ageing
    assert t.totals == ("合计 total", "3 户 customers", None, None, 5, None, None, 796000,
                        31951)
    assert t.charts == ()
    with pytest.raises(reports.ReportError, match="customer"):
        reports.find("arrears").run(None, {"to": AS_OF, "by": "district,customer"})
    with pytest.raises(reports.ReportError, match="groups by district, customer"):
        reports.find("arrears").run(None, {"to": AS_OF, "by": "bank"})


def test_collection_rate_per_season_and_district(data):
    t, rows = run(data, "collection-rate", to=AS_OF)
    assert sorted(rows) == [
        ("2024-2025", HP, 1, 1000, 0, 0, 0.0),
        ("2025-2026", HP, 1, 100000, 0, 0, 0.0),
        ("2025-2026", TX, 1, 80000, 0, 0, 0.0),
        ("2026-2027", HP, 1, 1000000, 400000, 0, 0.4),
        ("2026-2027", TX, 1, 50000, 50000, 1, 1.0),
    ]
    assert t.totals[:6] == ("合计 total", None, 5, 1231000, 450000, 1)
    assert t.totals[6] == pytest.approx(450000 / 1231000, rel=1e-15)


# -- reconciliation, invoices, withholding -------------------------------------------


def test_recon_history(data):
    t, rows = run(data, "recon", **NOV)
    cats = slice(8, 14)
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("fixed", 1, date(2026, 11, 2), "EXCEPTIONS"),
        ("fixed", 2, date(2026, 11, 2), "BALANCED"),
        ("fixed", 3, date(2026, 11, 3), "EXCEPTIONS"),
    ]
    assert [r[4:8] for r in rows] == [(3, 300, 2, 200)] * 3
    assert [r[cats] for r in rows] == [(2, 1, 0, 0, 0, 0), (2, 1, 0, 0, 0, 0),
                                       (1, 0, 0, 1, 0, 0)]
    # exceptions, and those still open (run 1's was carried to run 2 and resolved there)
    assert [r[14:] for r in rows] == [(1, 0), (1, 0), (1, 1)]
    assert t.totals == ("合计 total", 3, None, None, 9, 900, 6, 600, 5, 2, 0, 1, 0, 0, 3, 1)


def test_invoice_usage_per_holder(data):
    t, rows = run(data, "invoices", **NOV)
    assert rows == [("fixed", 100, 2, 1, 97), ("partial", 0, 0, 0, 50)]
    assert t.totals == ("合计 total", 100, 2, 1, 147)
    _, rows = run(data, "invoices", bank="partial", **NOV)
    assert rows == [("partial", 0, 0, 0, 50)]


def test_withholding_success_rate_and_failures_by_reason(data):
    t, rows = run(data, "withholding", **NOV)
    names = [c.name for c in t.columns]
    assert names[9:] == ["success_rate", "failed_1", "failed_2", "failed_3", "failed_4",
                         "failed_other"]
    assert rows == [
        ("fixed", 1, 5, 4500, 2, 3000, 2, 1200, 1, 0.5, 1, 0, 1, 0, 0),
        ("partial", 1, 2, 150, 1, 100, 1, 50, 0, 0.5, 0, 0, 0, 0, 1),
    ]
    assert t.totals == ("合计 total", 2, 7, 4650, 3, 3100, 3, 1250, 1, 0.5, 1, 0, 1, 0, 1)


# -- empty, and bad input ------------------------------------------------------------


def test_an_empty_database_gives_the_headings(store):
    for name, rep in reports.CATALOGUE.items():
        t = rep.run(store, {"from": date(2026, 11, 1), "to": AS_OF})
        buf = io.StringIO()
        assert reporting.write_csv(t, buf) == 0, name
        assert buf.getvalue() == ",".join(c.name for c in t.columns) + "\n"
        assert any(n.startswith("empty") for n in t.notes) or name == "invoices", name


def test_a_range_without_payments_gives_the_headings(data):
    t, rows = run(data, "collections", **{"from": date(2001, 1, 1), "to": date(2001, 1, 31)})
    assert rows == [] and t.totals[2:] == (0,) * 10
    assert "empty: no payments in the range" in t.notes


@pytest.mark.parametrize("params, message", [
    ({"from": date(2010, 1, 1), "to": date(2020, 1, 2)}, "longer than 10 years"),
    ({"from": date(2026, 12, 1), "to": date(2026, 11, 1)}, "is after --to"),
    ({"to": AS_OF, "bank": "nosuch"}, "--bank 'nosuch': not a configured bank"),
    ({"to": AS_OF, "by": "day,weather"}, "--by 'weather'"),
    ({"to": AS_OF, "by": "day,day"}, "named twice"),
])
def test_bad_input_is_refused_before_any_sql(params, message):
    with pytest.raises(reports.ReportError, match=message):
        # no store at all: any SQL would fail with AttributeError, not ReportError
        reports.find("collections").run(None, params, banks=["fixed"])


def test_ten_years_exactly_is_allowed_and_bank_only_where_it_means_something():
    rep = reports.find("collections")
    assert rep.validate({"from": date(2016, 2, 29), "to": date(2026, 2, 28)})["by"] == (
        "day", "bank")
    with pytest.raises(reports.ReportError, match="not per bank"):
        reports.find("arrears").run(None, {"to": AS_OF, "bank": "fixed"}, banks=["fixed"])
    with pytest.raises(reports.ReportError, match="no report 'nosuch'"):
        reports.find("nosuch")


# -- exporters -----------------------------------------------------------------------

COLUMNS = (Column("district", "区域 district", "text"), Column("day", "日期 day", "date"),
           Column("count", "笔数 count", "int"), Column("amount", "金额 amount", "fen"),
           Column("rate", "收费率 rate", "ratio"))


def _table(rows=None):
    rows = rows if rows is not None else [(HP, date(2026, 11, 2), 2, 123456, 0.5),
                                          (TX, date(2026, 11, 3), 1, -5, None)]
    return ReportTable("demo", "收费统计 Collections", {"from": date(2026, 11, 1),
                                                    "to": AS_OF, "by": ("district",)},
                       COLUMNS, iter(rows), totals=("合计 total", None, 3, 123451, 0.25),
                       charts=(Chart("bar", "收费 by district", x="district", y=("amount",)),),
                       notes=("a note",))


def test_csv_exact():
    buf = io.StringIO()
    assert reporting.write_csv(_table(), buf) == 2
    assert buf.getvalue() == ("district,day,count,amount,rate\n"
                              "和平区,2026-11-02,2,1234.56,0.5000\n"
                              "铁西区,2026-11-03,1,-0.05,\n")


def test_json_exact():
    buf = io.StringIO()
    reporting.write_json(_table(), buf)
    doc = json.loads(buf.getvalue())
    assert doc == {
        "name": "demo", "title": "收费统计 Collections",
        "params": {"from": "2026-11-01", "to": "2026-11-30", "by": ["district"]},
        "columns": [{"name": c.name, "label": c.label, "kind": c.kind} for c in COLUMNS],
        "rows": [{"district": HP, "day": "2026-11-02", "count": 2, "amount": 123456,
                  "rate": 0.5},
                 {"district": TX, "day": "2026-11-03", "count": 1, "amount": -5,
                  "rate": None}],
        "totals": {"district": "合计 total", "day": None, "count": 3, "amount": 123451,
                   "rate": 0.25},
        "notes": ["a note"],
    }
    empty = io.StringIO()
    reporting.write_json(_table([]), empty)
    assert json.loads(empty.getvalue())["rows"] == []


def test_xlsx_read_back(tmp_path):
    from openpyxl import load_workbook

    path = tmp_path / "r.xlsx"
    assert reporting.export(_table(), "xlsx", path) == 2
    ws = load_workbook(path)["report"]
    rows = list(ws.iter_rows(values_only=True))
    assert rows[0] == tuple(c.label for c in COLUMNS)
    assert rows[1][0] == HP and rows[1][1].date() == date(2026, 11, 2)
    assert rows[1][2:] == (2, 1234.56, 0.5)
    assert rows[2][3] == -0.05 and rows[2][4] is None
    assert rows[3] == ("合计 total", None, 3, 1234.51, 0.25)
    cells = list(ws.iter_rows(min_row=2, max_row=2))[0]
    assert cells[3].number_format == "#,##0.00" and cells[4].number_format == "0.00%"
    assert cells[1].number_format == "yyyy-mm-dd" and cells[2].number_format == "0"
    heading, _, _, totals = ws.iter_rows()
    assert all(c.font.b for c in heading) and not any(c.font.b for c in cells)
    assert all(c.font.b for c in totals) and totals[3].number_format == "#,##0.00"
    about = list(load_workbook(path)["about"].iter_rows(values_only=True))
    assert about == [("收费统计 Collections", None), ("report", "demo"),
                     ("from", "2026-11-01"), ("to", "2026-11-30"), ("by", "district"),
                     ("note", "a note"), ("rows", 2)]
    assert list(path.parent.glob(".r.xlsx.*")) == []  # no temporary file left


def _xml_parts(path) -> dict:
    """Every part of the package, parsed by the standard library's XML parser (a reader
    other than openpyxl: each part must be well-formed XML)."""
    import zipfile
    from xml.etree import ElementTree

    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        return {name: ElementTree.fromstring(z.read(name)) for name in z.namelist()}


def test_xlsx_text_is_escaped_and_round_trips(tmp_path):
    from openpyxl import load_workbook

    nasty = "a<b & c>d \"q\" 'x' 和平区 供热\x00\x01\x1f\x7f\ufffe end\ttab\nline"
    kept = "a<b & c>d \"q\" 'x' 和平区 供热\x7f end\ttab\nline"  # XML 1.0 cannot hold the rest
    t = ReportTable("x&y", "标题 <title> & more", {"name": nasty}, COLUMNS,
                    [(nasty, date(2026, 11, 2), 1, 1, 0.1), ("  spaced  ", None, None, None,
                                                            None)], notes=(nasty,))
    path = tmp_path / "nasty.xlsx"
    assert reporting.write_xlsx(t, path) == 2
    parts = _xml_parts(path)
    assert {"[Content_Types].xml", "_rels/.rels", "xl/workbook.xml", "xl/styles.xml",
            "xl/_rels/workbook.xml.rels", "xl/worksheets/sheet1.xml",
            "xl/worksheets/sheet2.xml"} <= set(parts)
    ns = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
    texts = [e.text for e in parts["xl/worksheets/sheet1.xml"].iter(ns + "t")]
    assert kept in texts and "  spaced  " in texts
    wb = load_workbook(path)
    assert wb.sheetnames == ["report", "about"]
    rows = list(wb["report"].iter_rows(values_only=True))
    assert rows[1][0] == kept and rows[2] == ("  spaced  ", None, None, None, None)
    about = list(wb["about"].iter_rows(values_only=True))
    assert about[0][0] == "标题 <title> & more" and ("name", kept) in about
    assert ("note", kept) in about and ("report", "x&y") in about


def test_xlsx_of_an_empty_report_has_its_headings(tmp_path, store):
    from openpyxl import load_workbook

    path = tmp_path / "empty.xlsx"
    assert reporting.write_xlsx(_table([]), path) == 0
    _xml_parts(path)
    rows = list(load_workbook(path)["report"].iter_rows(values_only=True))
    assert rows == [tuple(c.label for c in COLUMNS), ("合计 total", None, 3, 1234.51, 0.25)]
    t = reports.find("arrears").run(store, {"to": AS_OF})  # an empty database
    assert reporting.write_xlsx(t, path) == 0
    rows = list(load_workbook(path)["report"].iter_rows(values_only=True))
    assert rows == [tuple(c.label for c in t.columns), ("合计 total", None, None, 0, 0, 0)]


def test_export_refuses_a_binary_format_to_a_stream():
    with pytest.raises(ValueError, match="xlsx is written to a file"):
        reporting.export(_table(), "xlsx", io.StringIO())
    with pytest.raises(ValueError, match="unknown format"):
        reporting.export(_table(), "doc", io.StringIO())


@pytest.mark.skipif(not shutil.which("pdftotext") or not shutil.which("pdffonts"),
                    reason="poppler-utils (pdftotext, pdffonts) not installed")
def test_pdf_text_fonts_and_chart(data, tmp_path):
    t = reports.find("arrears").run(data, {"to": AS_OF})
    path = tmp_path / "arrears.pdf"
    assert reporting.export(t, "pdf", path) == 5
    text = subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True,
                          text=True, check=True).stdout
    for words in ("欠费统计 Arrears", HP, TX, "over 180", "1,000.00", "800.00", "合计 total",
                  "7,960.00", "319.51"):
        assert words in text, words
    fonts = subprocess.run(["pdffonts", str(path)], capture_output=True, text=True,
                           check=True).stdout.splitlines()[2:]
    assert fonts and all(line.split()[-5] == "yes" for line in fonts), fonts  # embedded
    images = subprocess.run(["pdfimages", "-list", str(path)], capture_output=True,
                            text=True).stdout.splitlines()[2:] if shutil.which(
                                "pdfimages") else ["(no pdfimages)"]
    assert images, "the ageing chart is in the PDF"


def test_pdf_caps_the_table_not_the_charts(tmp_path):
    rows = [(f"d{i % 7}", date(2026, 11, 1), 1, 100, 0.1) for i in range(50)]
    path = tmp_path / "capped.pdf"
    assert reporting.write_pdf(_table(rows), path, max_rows=10) == 50
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", str(path), "-"], capture_output=True,
                              text=True).stdout
        assert "first 10 of 50 rows" in text


def test_chart_renders_every_kind():
    rows = [(d, date(2026, 11, i + 1), i, 1000 * i, i / 10) for i, d in
            enumerate([HP, TX, HP, TX])]
    for kind, series in (("bar", None), ("line", "district"), ("stacked_bar", "district")):
        t = _table(rows)
        t.charts = (Chart(kind, "图 chart", x="day", y=("amount",), series=series),)
        (cd,) = reporting._chart_data(t)
        for r in rows:
            cd.add(r)
        png = reporting.render_chart(cd)
        assert png.startswith(b"\x89PNG")


# -- large exports stream ------------------------------------------------------------

ROWS = 200_000
GROWTH_BOUND_MB = 40  # peak RSS growth while writing; holding the rows alone takes more
BIG = """
import resource, sys
from datetime import date
from bankgate.domain.reporting import Column, ReportTable, write_xlsx

def mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

cols = (Column("district", "区域", "text"), Column("n", "n", "int"),
        Column("amount", "金额", "fen"))
def table(n):
    rows = ((f"district {i % 13}", i, i * 7) for i in range(n))
    return ReportTable("big", "big", {}, cols, rows)
write_xlsx(table(2000), sys.argv[1])  # everything imported and warmed up
base = mb()
n = write_xlsx(table(int(sys.argv[2])), sys.argv[1])
print(base, mb(), n)
"""


def test_xlsx_of_200k_rows_in_bounded_memory(tmp_path):
    """Peak memory (RSS, in a process of its own) grows by less than the bound while
    200,000 rows stream into an XLSX file."""
    import sys

    path = tmp_path / "big.xlsx"
    out = subprocess.run([sys.executable, "-c", BIG, str(path), str(ROWS)],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    base, peak, n = map(float, out.split())
    assert n == ROWS and path.stat().st_size > 1_000_000
    assert peak - base < GROWTH_BOUND_MB, f"grew {peak - base:.1f} MB"


def test_csv_streams_rows_from_the_database(data):
    t = reports.find("collections").run(data, dict(NOV))
    assert not isinstance(t.rows, (list, tuple))  # a generator over the cursor
    assert [r[0] for r in t.rows][0] == date(2026, 11, 2)


# -- the command ---------------------------------------------------------------------


def test_cli_report_csv_and_refusal(tmp_path, capsys):
    assert cli(["--demo", "-d", str(tmp_path), "report", "collections", "--from",
                "2026-11-01", "--to", "2026-11-30", "--by", "day,bank,channel"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "day,bank,channel,count,amount,principal,late_fee,prepaid,reversed_count,"
        "reversed_amount,refunded_count,refunded_amount,net_amount"]
    assert cli(["--demo", "-d", str(tmp_path), "report", "arrears", "--to", "2026-11-30",
                "--format", "xlsx"]) == 0
    written = capsys.readouterr().out.strip()
    assert written.endswith(": 0 rows") and "/reports/arrears_20261130_" in written
    assert cli(["--demo", "-d", str(tmp_path / "other"), "report", "collections", "--from",
                "2000-01-01", "--to", "2026-11-30"]) == 2
    assert "longer than 10 years" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()  # refused before the database was opened


def test_cli_report_list(tmp_path, capsys):
    assert cli(["--demo", "-d", str(tmp_path), "report", "list"]) == 0
    out = capsys.readouterr().out
    for name in reports.CATALOGUE:
        assert name in out


def test_indexes_exist(data):
    insp = sa.inspect(data.engine)
    names = {ix["name"] for ix in insp.get_indexes("bg_payment")}
    assert "ix_bg_payment_date" in names
    bill = data.n8["bill"]
    names = {ix["name"] for ix in sa.inspect(data.n8_engine).get_indexes(bill.name)}
    assert f"ix_{bill.name.lower()}_fee_due" in names
