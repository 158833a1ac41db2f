"""Custom reports (bankgate/domain/custom_reports.py, bankgate/store/custom_reports.py).

Figures from a small hand-built N8 whose answers are worked out below, on every
database of tests/conftest.py (SQLite, SQLite under a renamed mapping, PostgreSQL,
MariaDB); every validation error with its line; injection attempts; the three
examples of docs/examples/reports/ on demo data; the CLI.
"""

from __future__ import annotations

import io
import textwrap
from datetime import date, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from bankgate.domain import custom_reports as cr
from bankgate.domain.reporting import write_csv
from bankgate.store import custom_reports as sql
from bankgate.store import model
from bankgate.store.db import Store

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples" / "reports"
TODAY = date(2026, 11, 27)

# -- the hand-built data set -----------------------------------------------------------
#
# customers        district  class
#   C1             和平区     R
#   C2             和平区     I
#   C3             铁西区     R
#   C4             铁西区     R
#   C5             (none)    C
#
# bills   customer fee  period      amount   paid    due          outstanding
#   B1    C1       01   2025-2026   100000       0   2026-03-31   100000
#   B2    C1       02   2026-10      20000   20000   2026-10-31        0
#   B3    C2       01   2026-2027   500000  200000   2026-12-31   300000
#   B4    C3       01   2026-2027    80000       0   2026-12-31    80000
#   B5    C4       01   2026-2027    80000   80000   2026-12-31        0
#   B6    C5       02   2026-11      10000       0   2026-11-30    10000
#
# payments customer amount  date        bank    channel status  items (bill principal late)
#   P1     C1        20000  2026-10-15  105210  01      N       B2 20000 0
#   P2     C2       200000  2026-10-20  103210  08      N       B3 200000 0
#   P3     C4        81000  2026-11-02  105210  08      N       B5 80000 1000
#   P4     C3         5000  2026-10-21  103210  01      C       B4 5000 0  (cancelled)

CUSTOMERS = [("C1", "和平区", "R"), ("C2", "和平区", "I"), ("C3", "铁西区", "R"),
             ("C4", "铁西区", "R"), ("C5", None, "C")]
BILLS = [
    ("B1", "C1", "01", "2025-2026", 100000, 0, date(2026, 3, 31)),
    ("B2", "C1", "02", "2026-10", 20000, 20000, date(2026, 10, 31)),
    ("B3", "C2", "01", "2026-2027", 500000, 200000, date(2026, 12, 31)),
    ("B4", "C3", "01", "2026-2027", 80000, 0, date(2026, 12, 31)),
    ("B5", "C4", "01", "2026-2027", 80000, 80000, date(2026, 12, 31)),
    ("B6", "C5", "02", "2026-11", 10000, 0, date(2026, 11, 30)),
]
PAYMENTS = [
    ("P1", "C1", 20000, date(2026, 10, 15), "105210", "01", "N", "B2", 20000, 0),
    ("P2", "C2", 200000, date(2026, 10, 20), "103210", "08", "N", "B3", 200000, 0),
    ("P3", "C4", 81000, date(2026, 11, 2), "105210", "08", "N", "B5", 80000, 1000),
    ("P4", "C3", 5000, date(2026, 10, 21), "103210", "01", "C", "B4", 5000, 0),
]


def seed(store: Store) -> None:
    n8 = store.n8
    with store.n8_engine.begin() as c:  # N8's rows in N8's database ([n8.database])
        c.execute(n8["customer"].insert(), [
            {"customer_no": no, "name": f"客户{no}", "customer_class": k, "district": d,
             "status": "A"} for no, d, k in CUSTOMERS])
        c.execute(n8["bill"].insert(), [
            {"bill_id": b, "customer_no": cu, "fee_type": f, "period": p, "amount": a,
             "paid_amount": paid, "late_fee_paid": 0, "due_date": due}
            for b, cu, f, p, a, paid, due in BILLS])
        c.execute(n8["payment"].insert(), [
            {"pay_id": p, "customer_no": cu, "amount": a, "pay_date": d, "bank_code": bank,
             "bank_serial": f"S{p}", "channel": ch, "status": st,
             "created_at": datetime.combine(d, datetime.min.time())}
            for p, cu, a, d, bank, ch, st, *_ in PAYMENTS])
        c.execute(n8["payment_item"].insert(), [
            {"pay_id": p, "bill_id": b, "principal": pr, "late_fee": lf}
            for p, *_, b, pr, lf in PAYMENTS])
    with store.engine.begin() as c:
        c.execute(model.payment.insert(), [
            {"bank": f"bank{bank}", "trade_date": d, "serial": f"S{p}", "customer_no": cu,
             "amount": a, "principal": pr, "late_fee": lf, "prepaid_in": 0, "channel": ch,
             "receipt_no": p, "status": "POSTED" if st == "N" else "REVERSED",
             "created_at": datetime.combine(d, datetime.min.time())}
            for p, cu, a, d, bank, ch, st, _b, pr, lf in PAYMENTS])


@pytest.fixture
def data(store):
    seed(store)
    return store


def definition(text: str, source: str = "reports/test.toml") -> cr.ReportDefinition:
    return cr.parse_definition(textwrap.dedent(text), source)


def rows_of(table) -> list[tuple]:
    return sorted(table.rows, key=lambda r: tuple("" if v is None else str(v) for v in r))


# -- figures ----------------------------------------------------------------------------


ARREARS = """\
    name = "arrears"
    title = "欠费"
    dimensions = ["customer.district", "customer.customer_class"]

    [[measures]]
    fn = "count"
    name = "bills"

    [[measures]]
    fn = "sum"
    column = "bill.outstanding"
    name = "outstanding"

    [[measures]]
    fn = "count_distinct"
    column = "bill.customer_no"
    name = "households"

    [[filters]]
    column = "bill.outstanding"
    op = ">"
    value = 0
"""


def test_arrears_by_district_and_class(data):
    d = definition(ARREARS)
    assert d.fact == "bill"
    t = cr.run(d, data, TODAY)
    assert [c.name for c in t.columns] == ["district", "customer_class", "bills",
                                           "outstanding", "households"]
    assert [c.kind for c in t.columns] == ["text", "text", "int", "fen", "int"]
    assert rows_of(t) == [
        (None, "C", 1, 10000, 1),
        ("和平区", "I", 1, 300000, 1),
        ("和平区", "R", 1, 100000, 1),
        ("铁西区", "R", 1, 80000, 1),
    ]
    assert t.totals == ("合计 total", None, 4, 490000, 4)


def test_collections_by_bank_and_month(data):
    d = definition("""\
        name = "coll"
        dimensions = ["payment.bank_code", { column = "payment.pay_date", grain = "month" }]
        default_range = "this_year"
        sort = ["pay_date_month", "-amount"]

        [[measures]]
        fn = "count"

        [[measures]]
        fn = "sum"
        column = "payment.amount"
        name = "amount"

        [[filters]]
        column = "payment.status"
        value = "N"
    """)
    t = cr.run(d, data, TODAY)
    # sorted by month, then by amount descending (the definition's sort)
    assert list(t.rows) == [("103210", "2026-10", 1, 200000), ("105210", "2026-10", 1, 20000),
                            ("105210", "2026-11", 1, 81000)]
    assert t.params["from"] == date(2026, 1, 1) and t.params["to"] == TODAY
    year = definition(d_text := """\
        name = "coll"
        dimensions = [{ column = "payment.pay_date", grain = "year" }]
        [[measures]]
        fn = "sum"
        column = "payment.amount"
    """)
    assert d_text and list(cr.run(year, data, TODAY).rows) == [("2026", 306000)]


def test_the_date_range_and_its_override(data):
    d = definition("""\
        name = "by-channel"
        dimensions = ["payment.channel"]
        default_range = "last_month"

        [[measures]]
        fn = "count"

        [[measures]]
        fn = "sum"
        column = "payment.amount"

        [[measures]]
        fn = "sum"
        column = "gateway_payment.late_fee"
    """)
    # last month of 2026-11-27 is October: P1, P2, P4 (cancelled, no status filter here)
    assert rows_of(cr.run(d, data, TODAY)) == [("01", 2, 25000, 0), ("08", 1, 200000, 0)]
    # --from/--to: November only, where P3 paid a late fee of 10.00 through the gateway
    t = cr.run(d, data, TODAY, date(2026, 11, 1), date(2026, 11, 30))
    assert rows_of(t) == [("08", 1, 81000, 1000)]
    with pytest.raises(ValueError, match="longer than 10 years"):
        cr.run(d, data, TODAY, date(2010, 1, 1), date(2026, 11, 30))
    with pytest.raises(ValueError, match="ends before it starts"):
        cr.run(d, data, TODAY, date(2026, 12, 1), date(2026, 11, 30))


def test_payment_items_by_fee_type_and_bank(data):
    d = definition("""\
        name = "items"
        dimensions = ["bill.fee_type", "payment.bank_code"]
        [[measures]]
        fn = "sum"
        column = "payment_item.principal"
        name = "principal"
        [[measures]]
        fn = "sum"
        column = "payment_item.late_fee"
        name = "late_fee"
        [[filters]]
        column = "payment.status"
        op = "!="
        value = "C"
    """)
    assert d.fact == "payment_item"
    assert rows_of(cr.run(d, data, TODAY)) == [
        ("01", "103210", 200000, 0), ("01", "105210", 80000, 1000), ("02", "105210", 20000, 0)]


def test_counts_follow_the_counted_table(data):
    # by district alone: customers; with a bill column: bills; table = says which
    by_district = definition("""\
        name = "x"
        dimensions = ["customer.district"]
        [[measures]]
        fn = "count"
    """)
    assert by_district.fact == "customer"
    assert rows_of(cr.run(by_district, data, TODAY)) == [(None, 1), ("和平区", 2), ("铁西区", 2)]
    by_bills = definition("""\
        name = "x"
        table = "bill"
        dimensions = ["customer.district"]
        [[measures]]
        fn = "count"
    """)
    assert rows_of(cr.run(by_bills, data, TODAY)) == [(None, 1), ("和平区", 3), ("铁西区", 2)]


def test_filters_of_every_operator(data):
    def total(flt: str) -> tuple:
        d = definition(f"""\
            name = "x"
            table = "bill"
            [[measures]]
            fn = "count"
            [[measures]]
            fn = "sum"
            column = "bill.amount"
            [[filters]]
            {flt}
        """)
        return list(cr.run(d, data, TODAY).rows)[0]

    assert total('column = "bill.fee_type"\nop = "="\nvalue = "02"') == (2, 30000)
    assert total('column = "bill.fee_type"\nop = "!="\nvalue = "02"') == (4, 760000)
    assert total('column = "bill.amount"\nop = "<"\nvalue = 80000') == (2, 30000)
    assert total('column = "bill.amount"\nop = "<="\nvalue = 80000') == (4, 190000)
    assert total('column = "bill.amount"\nop = ">"\nvalue = 80000') == (2, 600000)
    assert total('column = "bill.amount"\nop = ">="\nvalue = 100000') == (2, 600000)
    assert total('column = "bill.bill_id"\nop = "in"\nvalue = ["B1", "B6"]') == (2, 110000)
    assert total('column = "bill.due_date"\nop = "between"\n'
                 'value = [2026-10-01, 2026-11-30]') == (2, 30000)
    assert total('column = "bill.period"\nop = "like"\nvalue = "2026-%"') == (5, 690000)
    assert total('column = "customer.district"\nop = "="\nvalue = "铁西区"') == (2, 160000)


def test_an_empty_result_has_its_headings(data):
    d = definition("""\
        name = "none"
        dimensions = ["payment.channel"]
        default_range = { from = 2020-01-01, to = 2020-12-31 }
        [[measures]]
        fn = "sum"
        column = "payment.amount"
    """)
    t = cr.run(d, data, TODAY)
    assert list(t.rows) == [] and t.totals is None
    assert [c.name for c in t.columns] == ["channel", "sum_amount"]
    assert any(n.startswith("empty") for n in t.notes)
    out = io.StringIO()
    assert write_csv(t, out) == 0
    assert out.getvalue() == "channel,sum_amount\n"


def test_sort_and_limit(data):
    d = definition("""\
        name = "top"
        dimensions = ["bill.customer_no"]
        sort = ["-outstanding"]
        limit = 2
        [[measures]]
        fn = "sum"
        column = "bill.outstanding"
        name = "outstanding"
    """)
    t = cr.run(d, data, TODAY)
    assert list(t.rows) == [("C2", 300000), ("C1", 100000)]
    assert t.totals is None  # a top-N has no total of everything


# -- injection ----------------------------------------------------------------------------


def test_values_are_bound_never_joined_into_the_sql(data):
    evil = "x'; DROP TABLE n8_bill; --"
    d = definition(f"""\
        name = "evil"
        table = "bill"
        dimensions = ["customer.district"]
        [[measures]]
        fn = "count"
        [[filters]]
        column = "customer.district"
        op = "in"
        value = ["{evil}", "和平区"]
        [[filters]]
        column = "bill.period"
        op = "like"
        value = "%' OR '1'='1"
    """)
    shape = cr.describe(d, data.n8, data.n8_engine.dialect)
    assert "DROP" not in shape and "OR '1'" not in shape
    assert list(cr.run(d, data, TODAY).rows) == []  # the quote matched nothing
    with data.n8_engine.connect() as c:  # and the bills are still there
        assert c.execute(sa.select(sa.func.count()).select_from(data.n8["bill"])).scalar() == 6


@pytest.mark.parametrize("name", [
    "bill.amount; drop table n8_bill", "bill.amount) --", "n8_bill.amount", "bill.*",
    "customer.withholding_account", "payment.created_at",
])
def test_a_column_name_that_is_not_a_catalog_key_is_refused(name):
    with pytest.raises(cr.DefinitionError, match="is not a column") as e:
        definition(f"""\
            name = "x"
            [[measures]]
            fn = "sum"
            column = "{name}"
        """)
    assert e.value.problems[0].line == 4
    with pytest.raises(KeyError):  # and the store would not take it either
        sql.build({}, sql.Query("bill", (), (sql.Measure("sum", name),)), "sqlite")


# -- validation: every error names its line and field -------------------------------------


def problems(text: str) -> list[str]:
    with pytest.raises(cr.DefinitionError) as e:
        definition(text)
    return str(e.value).splitlines()


def test_misspelt_column_with_the_suggestion():
    assert problems("""\
        name = "arrears"
        title = "欠费"
        dimensions = ["customer.district"]

        [[measures]]
        fn = "count"

        [[measures]]
        fn = "sum"
        column = "bill.amout"
    """) == ["reports/test.toml:10: measures[1].column: 'bill.amout' is not a column;"
             " did you mean 'bill.amount'?"]


@pytest.mark.parametrize("text, expected", [
    # an unknown field, at the top and in a table
    ('name = "x"\ncolour = "red"\n[[measures]]\nfn = "count"\n',
     "reports/test.toml:2: colour: unknown field"),
    ('name = "x"\n[[measures]]\nfn = "count"\nlabell = "n"\n',
     "reports/test.toml:4: measures[0].labell: unknown field; did you mean 'label'?"),
    ('name = "x"\n[[measures]]\nfn = "count"\n[chart]\nkind = "bar"\nzoom = 2\n',
     "reports/test.toml:6: chart.zoom: unknown field"),
    # a measure over a text column
    ('name = "x"\n[[measures]]\nfn = "sum"\ncolumn = "customer.district"\n',
     "reports/test.toml:4: measures[0].column: sum needs a numeric column;"
     " customer.district is text"),
    ('name = "x"\n\n[[measures]]\nfn = "avg"\ncolumn = "bill.due_date"\n',
     "reports/test.toml:5: measures[0].column: avg needs a numeric column;"
     " bill.due_date is a date"),
    # filters of the wrong type
    ('name = "x"\n[[measures]]\nfn = "count"\n[[filters]]\ncolumn = "payment.channel"\n'
     'value = 1\n', "reports/test.toml:6: filters[0].value: payment.channel is text:"
     " expected a value in quotes, got int 1"),
    ('name = "x"\n[[measures]]\nfn = "count"\n[[filters]]\ncolumn = "bill.amount"\n'
     'op = ">"\nvalue = 12.5\n', "reports/test.toml:7: filters[0].value: bill.amount is"
     " money: expected an integer (money is integer fen (分): 1200.00 yuan is 120000),"
     " got float 12.5"),
    ('name = "x"\n[[measures]]\nfn = "count"\n[[filters]]\ncolumn = "bill.due_date"\n'
     'op = "<"\nvalue = "yesterday"\n', "reports/test.toml:7: filters[0].value:"
     " bill.due_date is a date: expected a date like 2026-11-01, got 'yesterday'"),
    ('name = "x"\nfilters = [\n  { column = "bill.amount", op = "=", value = 1 },\n'
     '  { column = "bill.amount", op = "in", value = [1, "2"] },\n]\n[[measures]]\n'
     'fn = "count"\n', "reports/test.toml:4: filters[1].value[1]:"
     " bill.amount is money: expected an integer"),
    ('name = "x"\n[[measures]]\nfn = "count"\n[[filters]]\ncolumn = "bill.amount"\n'
     'op = "like"\nvalue = "1%"\n', "reports/test.toml:6: filters[0].op: like compares"
     " text; bill.amount is fen"),
    ('name = "x"\n[[measures]]\nfn = "count"\n[[filters]]\ncolumn = "bill.amount"\n'
     'op = "=~"\nvalue = 1\n', "reports/test.toml:6: filters[0].op: unknown operator '=~'"),
    ('name = "x"\n[[measures]]\nfn = "count"\n[[filters]]\ncolumn = "bill.amount"\n'
     'op = "between"\nvalue = [1]\n', "reports/test.toml:7: filters[0].value: between"
     " takes a list of two values"),
    # date ranges past ten years
    ('name = "x"\ndefault_range = { from = 2010-01-01, to = 2026-01-01 }\n[[measures]]\n'
     'fn = "count"\ncolumn_ = 1\n', "reports/test.toml:2: default_range: the range"
     " 2010-01-01 to 2026-01-01 is longer than 10 years"),
    ('name = "x"\n[[measures]]\nfn = "count"\n[[filters]]\ncolumn = "payment.pay_date"\n'
     'op = "between"\nvalue = [2000-01-01, 2020-01-01]\n', "reports/test.toml:7:"
     " filters[0].value: the range 2000-01-01 to 2020-01-01 is longer than 10 years"),
    ('name = "x"\ndefault_range = "last_quarter"\n[[measures]]\nfn = "count"\n',
     "reports/test.toml:2: default_range: unknown range 'last_quarter'"),
    ('name = "x"\ntable = "customer"\ndefault_range = "last_month"\n[[measures]]\n'
     'fn = "count"\n', "reports/test.toml:3: default_range: a report counting customer"
     " rows has no date"),
    # dimensions, measures, names
    ('name = "x"\ndimensions = [\n  "customer.district",\n  { column = "bill.amount",'
     ' grain = "month" },\n]\n[[measures]]\nfn = "count"\n',
     "reports/test.toml:4: dimensions[1].grain: bill.amount is fen, not a date"),
    ('name = "x"\ndimensions = [{ column = "payment.pay_date", grain = "week" }]\n'
     '[[measures]]\nfn = "count"\n', "reports/test.toml:2: dimensions[0].grain: unknown"
     " grain 'week'"),
    ('name = "x"\n[[measures]]\nfn = "total"\n', "reports/test.toml:3: measures[0].fn:"
     " unknown function 'total'"),
    ('name = "x"\n[[measures]]\nfn = "count"\ncolumn = "bill.amount"\n',
     "reports/test.toml:4: measures[0].column: count counts the rows and takes no column"),
    ('name = "x"\n', "reports/test.toml: measures: missing: at least one is needed"),
    ('name = "../../etc/x"\n[[measures]]\nfn = "count"\n',
     "reports/test.toml:1: name: expected lower-case letters, digits, - and _"),
    ('name = "x"\n[[measures]]\nfn = "count"\n[[measures]]\nfn = "count"\n',
     "reports/test.toml:4: measures[1].name: two columns are named 'count'"),
    ('name = "x"\nsort = ["-amount"]\n[[measures]]\nfn = "count"\n',
     "reports/test.toml:2: sort[0]: '-amount' is not a column of the report"),
    ('name = "x"\nlimit = 0\n[[measures]]\nfn = "count"\n',
     "reports/test.toml:2: limit: expected a whole number from 1 to 1000000"),
    # tables that cannot be counted together
    ('name = "x"\n[[measures]]\nfn = "sum"\ncolumn = "bill.amount"\n[[measures]]\n'
     'fn = "sum"\ncolumn = "payment.amount"\n', "reports/test.toml:2: measures: no one"
     " table can be counted"),
    ('name = "x"\ntable = "bill"\n[[measures]]\nfn = "sum"\ncolumn = "payment.amount"\n',
     "reports/test.toml:5: measures[0].column: payment.amount: a report counting bill rows"
     " cannot read payment columns"),
    ('name = "x"\ntable = "bill"\n[[measures]]\nfn = "sum"\n'
     'column = "customer.heated_area"\n', "reports/test.toml:5: measures[0].column:"
     " customer.heated_area would be counted once per bill row"),
    # charts, schedules, e-mail
    ('name = "x"\n[[measures]]\nfn = "count"\n[chart]\ny = ["amount"]\n',
     "reports/test.toml:5: chart.y[0]: 'amount' is not a measure of the report"),
    ('name = "x"\nschedule = "6.30"\n[[measures]]\nfn = "count"\n',
     "reports/test.toml:2: schedule: expected a local time \"HH:MM\""),
    ('name = "x"\nschedule = "06:30"\nformats = ["xlsx", "docx"]\n[[measures]]\n'
     'fn = "count"\n', "reports/test.toml:3: formats[1]: unknown format 'docx'"),
    ('name = "x"\nschedule = "06:30"\nemail = [\n  "finance@example.com",\n  "not an'
     ' address",\n]\n[[measures]]\nfn = "count"\n', "reports/test.toml:5: email[1]:"
     " expected an e-mail address"),
    ('name = "x"\nemail = ["a@example.com"]\n[[measures]]\nfn = "count"\n',
     "reports/test.toml:2: email: e-mail goes with scheduled runs"),
    # not TOML at all
    ('name = "x"\n[[measures]]\nfn = count\n', "reports/test.toml:3: not TOML: "),
])
def test_each_error_names_its_line_and_field(text, expected):
    found = problems(text)
    assert any(line.startswith(expected) for line in found), found


def test_every_problem_is_reported_at_once():
    found = problems("""\
        name = "x"
        dimensions = ["customer.distrct"]

        [[measures]]
        fn = "sum"
        column = "customer.name"

        [[filters]]
        column = "bill.amount"
        value = "100"
    """)
    assert [line.split(":")[1] for line in found] == ["2", "6", "10"]


def test_the_locator_finds_keys_in_every_toml_form():
    text = textwrap.dedent('''\
        # a comment with = and [brackets]
        name = "x"
        "title" = """a
        multi-line ] { title"""
        dimensions = [
            "customer.district",  # a comment
            { column = "payment.pay_date", grain = "month" },
        ]
        [[measures]]
        fn = "count"
        [[measures]]
        fn = 'sum'
        column = "bill.amount"
        [chart]
        y = ["a", "b"]
    ''')
    lines = cr.locate(text)
    assert lines[("name",)] == 2 and lines[("title",)] == 3
    assert lines[("dimensions", 0)] == 6 and lines[("dimensions", 1, "grain")] == 7
    assert lines[("measures", 1, "column")] == 13 and lines[("chart", "y", 1)] == 15


# -- ranges -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, expected", [
    ("today", (TODAY, TODAY)),
    ("yesterday", (date(2026, 11, 26), date(2026, 11, 26))),
    ("this_month", (date(2026, 11, 1), TODAY)),
    ("last_month", (date(2026, 10, 1), date(2026, 10, 31))),
    ("this_year", (date(2026, 1, 1), TODAY)),
    ("last_year", (date(2025, 1, 1), date(2025, 12, 31))),
    ("this_season", (date(2026, 7, 1), date(2027, 6, 30))),
    ("last_season", (date(2025, 7, 1), date(2026, 6, 30))),
    ("last_7_days", (date(2026, 11, 21), TODAY)),
    ("all", None),
])
def test_named_ranges(spec, expected):
    assert cr.resolve_range(spec, TODAY) == expected


def test_last_month_in_january():
    assert cr.resolve_range("last_month", date(2027, 1, 5)) == (date(2026, 12, 1),
                                                                date(2026, 12, 31))


# -- the examples, on demo data -------------------------------------------------------------


@pytest.fixture
def demo_store(tmp_path):
    from bankgate.devtools import demo

    s = Store(f"sqlite:///{tmp_path / 'demo.db'}")
    s.create_gateway_tables()
    s.create_n8_tables()
    demo.seed(s, 300, today=TODAY)
    seed_payments = [  # the demo has bills but no payments yet: two of last month
        {"pay_id": "D1", "customer_no": "100000001", "amount": 12345,
         "pay_date": date(2026, 10, 3), "bank_code": "105210", "bank_serial": "1",
         "channel": "01", "status": "N", "created_at": datetime(2026, 10, 3, 9)},
        {"pay_id": "D2", "customer_no": "100000002", "amount": 20000,
         "pay_date": date(2026, 10, 9), "bank_code": "103210", "bank_serial": "2",
         "channel": "08", "status": "N", "created_at": datetime(2026, 10, 9, 9)},
    ]
    with s.engine.begin() as c:
        c.execute(s.n8["payment"].insert(), seed_payments)
    yield s
    s.stop()


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.toml")))
def test_the_examples_check_and_run_on_demo_data(example, demo_store):
    d = cr.load_definition(EXAMPLES / example)
    assert d.name == example.removesuffix(".toml")
    t = cr.run(d, demo_store, TODAY)
    rows = list(t.rows)
    assert rows, f"{example}: no rows on demo data"
    assert all(len(r) == len(t.columns) for r in rows)
    if d.chart:
        names = [c.name for c in t.columns]
        assert d.chart.x in names and set(d.chart.y) <= set(names)


def test_three_examples_ship():
    names = sorted(p.stem for p in EXAMPLES.glob("*.toml"))
    assert names == ["arrears-by-district", "collections-by-bank-month", "payments-by-channel"]


def test_the_arrears_example_agrees_with_the_bills(demo_store):
    t = cr.run(cr.load_definition(EXAMPLES / "arrears-by-district.toml"), demo_store, TODAY)
    b = demo_store.n8["bill"]
    with demo_store.engine.connect() as c:
        owed = c.execute(sa.select(sa.func.sum(b.c.amount - b.c.paid_amount))
                         .where(b.c.amount > b.c.paid_amount)).scalar()
    assert sum(r[4] for r in t.rows) == owed == t.totals[4]


# -- the command ------------------------------------------------------------------------------


@pytest.fixture
def cli_config(tmp_path):
    """A configuration over a SQLite file holding the hand-built data, with a reports
    folder holding one definition."""
    db = tmp_path / "bg.db"
    s = Store(f"sqlite:///{db}")
    s.create_gateway_tables()
    s.create_n8_tables()
    seed(s)
    s.stop()
    folder = tmp_path / "reports.d"
    folder.mkdir()
    (folder / "owed.toml").write_text(textwrap.dedent(ARREARS).replace('"arrears"', '"owed"'),
                                      encoding="utf-8")
    cfg = tmp_path / "bankgate.toml"
    cfg.write_text(textwrap.dedent(f"""\
        [gateway]
        data_dir = "{tmp_path / 'var'}"
        [database]
        url = "sqlite:///{db}"
        [n8]
        create = true
        [reports]
        dir = "{folder}"
    """), encoding="utf-8")
    return cfg


def bankgate(*argv) -> int:
    from bankgate.app.cli import main

    return main(list(argv))


def test_cli_runs_a_definition_file(cli_config, tmp_path, capsys):
    f = tmp_path / "by-channel.toml"
    f.write_text('name = "by-channel"\ndimensions = ["payment.channel"]\n'
                 '[[measures]]\nfn = "count"\n', encoding="utf-8")
    assert bankgate("-c", str(cli_config), "report", "--definition", str(f)) == 0
    assert capsys.readouterr().out.splitlines() == ["channel,count", "01,2", "08,2"]
    assert bankgate("-c", str(cli_config), "report", "--definition", str(f),
                    "--from", "2026-11-01", "--to", "2026-11-30") == 0
    assert capsys.readouterr().out.splitlines() == ["channel,count", "08,1"]


def test_cli_runs_a_name_from_the_reports_folder(cli_config, tmp_path, capsys):
    out = tmp_path / "a.json"
    assert bankgate("-c", str(cli_config), "report", "owed", "--format", "json",
                    "--out", str(out)) == 0
    import json

    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["name"] == "owed" and len(doc["rows"]) == 4
    assert doc["totals"]["outstanding"] == 490000


def test_cli_check_prints_the_sql_shape_without_values(cli_config, tmp_path, capsys):
    f = tmp_path / "evil.toml"
    f.write_text('name = "evil"\ntable = "bill"\n[[measures]]\nfn = "count"\n'
                 '[[filters]]\ncolumn = "customer.name"\nvalue = "张三\'; DROP TABLE x"\n',
                 encoding="utf-8")
    assert bankgate("-c", str(cli_config), "report", "check", str(f)) == 0
    out = capsys.readouterr().out
    assert "OK: evil" in out and "counts: bill rows" in out and "SELECT count(*)" in out
    assert "张三" not in out and "DROP" not in out
    assert bankgate("-c", str(cli_config), "report", "check", "owed") == 0
    assert "LEFT OUTER JOIN n8_customer" in capsys.readouterr().out
    # a definition named like a standard report is run by --definition only: check says so
    f.write_text('name = "arrears"\n[[measures]]\nfn = "count"\n', encoding="utf-8")
    assert bankgate("-c", str(cli_config), "report", "check", str(f)) == 0
    assert "a standard report's name" in capsys.readouterr().out


def test_cli_refuses_a_bad_definition_before_any_sql(cli_config, tmp_path, capsys):
    f = tmp_path / "bad.toml"
    f.write_text('name = "bad"\n\n[[measures]]\nfn = "sum"\ncolumn = "bill.amout"\n',
                 encoding="utf-8")
    for argv in (("report", "check", str(f)), ("report", "--definition", str(f))):
        assert bankgate("-c", str(cli_config), *argv) == 2
        err = capsys.readouterr().err
        assert f"{f}:5: measures[0].column: 'bill.amout' is not a column; did you mean" in err
    assert bankgate("-c", str(cli_config), "report", "--definition", str(f.with_name("no.toml"))
                    ) == 2
    assert "cannot read" in capsys.readouterr().err
    ok = tmp_path / "ok.toml"
    ok.write_text('name = "ok"\ndimensions = ["payment.channel"]\n[[measures]]\nfn = "count"\n',
                  encoding="utf-8")
    assert bankgate("-c", str(cli_config), "report", "--definition", str(ok),
                    "--from", "2000-01-01", "--to", "2026-01-01") == 2
    assert "longer than 10 years" in capsys.readouterr().err
