"""The reports and work-order pages (bankgate.app.console.reports, .workorders) on the
console's site, requests through the guard (DummyRequest); the store's pool calls run
at once (console_helpers.synchronous).  The figures are the help desk's hand-built day
(helpdesk_helpers.build_day) and the supply world (supply_helpers); the custom reports
are the examples of docs/examples/reports/."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from datetime import date, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import BANKS, TODAY, FakeClock, make_store
from console_helpers import synchronous
from helpdesk_helpers import build_day
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_helpers import pay
from supply_helpers import SEASON, all_orders, seed_supply, world
from test_console_helpdesk import html, request
from twisted.internet.task import Clock

from bankgate.app.console import auth, reports, workorders
from bankgate.app.console.server import Console
from bankgate.app.report_catalogue import Catalogue
from bankgate.canon.messages import Outcome
from bankgate.canon.money import fen_to_yuan
from bankgate.domain import reporting
from bankgate.domain.reports import ReportError
from bankgate.domain.supply import SupplySettings
from bankgate.store import model

DAY = {"name": "collections", "from": TODAY.isoformat(), "to": TODAY.isoformat(),
       "by": "bank"}
EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples" / "reports"
SITE_BANKS = ["fixed", "partial", "any", "overpay", "twophase"]


def account(name: str, role: str) -> auth.Account:
    return auth.Account(name, role, datetime(2026, 1, 1), False)


def definitions(folder: Path) -> Path:
    """The three shipped examples, one that does not check, one named like a standard
    report, and one that counts customers (no date: no parameters)."""
    folder.mkdir()
    for f in EXAMPLES.glob("*.toml"):
        shutil.copy(f, folder / f.name)
    (folder / "broken.toml").write_text('name = "broken"\n[[measures]]\nfn = "sum"\n'
                                        'column = "bill.amout"\n', encoding="utf-8")
    (folder / "arrears.toml").write_text('name = "arrears"\n[[measures]]\nfn = "count"\n',
                                         encoding="utf-8")
    (folder / "households.toml").write_text(
        'name = "households"\ntitle = "户数 Households"\ntable = "customer"\n'
        'dimensions = ["customer.district"]\n[[measures]]\nfn = "count"\n',
        encoding="utf-8")
    return folder


def mount_reports(console, store, folder: Path, banks=SITE_BANKS,
                  supply: SupplySettings | None = None) -> Catalogue:
    catalogue = Catalogue(banks=banks, definitions_dir=folder, now=FakeClock(),
                          supply=supply or SupplySettings(source="gateway"))
    reports.mount(console, store, catalogue)
    return catalogue


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    """One SQLite day (the pages only read it): the console, a viewer, the store."""
    tmp = tmp_path_factory.mktemp("reports")
    store = make_store("sqlite", tmp)
    build_day(store, FakeClock(), tmp)
    synchronous(store)
    console = Console(None, Clock(), run_blocking=store.call, wall=datetime.fromtimestamp)
    mount_reports(console, store, definitions(tmp / "reports.d"))
    viewer = console.sessions.create(account("vera", "viewer"))
    yield console, viewer, store
    store.stop()


@pytest.fixture
def site(day):
    console, viewer, _ = day
    return console, viewer


def cells(page: str, tag: str = "tbody") -> list[list[str]]:
    part = page.split(f"<{tag}>", 1)[1].split(f"</{tag}>", 1)[0]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
            for row in re.findall(r"<tr>(.*?)</tr>", part, re.S)]


def test_the_form_alone(site):
    console, viewer = site
    req = request(console, "/reports", session=viewer)
    page = html(req)
    assert req.responseCode in (None, 200)
    assert 'value="collections"' in page and 'value="withholding"' in page
    assert "<table" not in page


def test_collections_by_bank_with_known_figures(site):
    console, viewer = site
    req = request(console, "/reports", DAY, session=viewer)
    page = html(req)
    assert req.responseCode in (None, 200), page
    rows = {r[0]: r for r in cells(page)}
    # count, amount, principal, late fee, prepaid, reversed n/amount, refunded n/amount, net
    assert rows["fixed"][1:3] == ["2", "10960.00"]  # S001 (reversed) and S002
    assert rows["fixed"][6:8] == ["1", "5480.00"] and rows["fixed"][-1] == "5480.00"
    assert rows["any"][1:3] == ["1", "100.00"] and rows["any"][8:10] == ["1", "100.00"]
    assert rows["partial"][1:3] == ["1", "4000.00"]
    assert rows["overpay"][1:3] == ["1", "150.00"]
    assert "twophase" not in rows  # pending two-phase payments are left out
    [totals] = cells(page, "tfoot")
    assert totals[:3] == ["合计 total", "5", "15210.00"]
    assert "two-phase payments never confirmed" in page  # the notes
    assert "/reports/export?name=collections&amp;from=2026-11-27" in page
    assert "format=xlsx" in page


def test_csv_export(site):
    console, viewer = site
    req = request(console, "/reports/export", {**DAY, "format": "csv"}, session=viewer)
    assert req.responseCode in (None, 200)
    assert req.responseHeaders.getRawHeaders(b"content-type") == [b"text/csv; charset=utf-8"]
    [disp] = req.responseHeaders.getRawHeaders(b"content-disposition")
    assert disp == b'attachment; filename="collections_20261127_20261127.csv"'
    rows = list(csv.reader(io.StringIO(html(req))))
    assert rows[0][:3] == ["bank", "count", "amount"]
    by_bank = {r[0]: r for r in rows[1:]}
    assert set(by_bank) == {"any", "fixed", "overpay", "partial"}
    assert by_bank["fixed"][1:3] == ["2", "10960.00"]


def test_json_and_xlsx_exports_are_sent_whole_and_deleted(site, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    console, viewer = site
    req = request(console, "/reports/export", {**DAY, "format": "json"}, session=viewer)
    doc = json.loads(html(req))
    assert doc["totals"]["amount"] == 1521000 and len(doc["rows"]) == 4
    req = request(console, "/reports/export", {**DAY, "format": "xlsx"}, session=viewer)
    assert b"".join(req.written)[:2] == b"PK"  # a zip: the workbook
    assert list(tmp_path.iterdir()) == []  # the temporary files are gone


@pytest.mark.parametrize("path", ["/reports", "/reports/export"])
def test_a_bad_range_is_400_with_the_message(site, path):
    console, viewer = site
    req = request(console, path, {**DAY, "from": "2026-12-01", "to": "2026-11-01"},
                  session=viewer)
    assert req.responseCode == 400
    assert "--from 2026-12-01 is after --to 2026-11-01" in html(req)


def test_bad_fields_are_named_and_escaped(site):
    console, viewer = site
    req = request(console, "/reports", {**DAY, "bank": "<b>x</b>"}, session=viewer)
    assert req.responseCode == 400
    page = html(req)
    assert "not a configured bank" in page and "<b>x</b>" not in page
    req = request(console, "/reports", {**DAY, "from": "27.11.2026"}, session=viewer)
    assert req.responseCode == 400 and "from: expected a date" in html(req)
    req = request(console, "/reports", {**DAY, "name": "nope"}, session=viewer)
    assert req.responseCode == 400 and "no report &#39;nope&#39;" in html(req)
    req = request(console, "/reports/export", {**DAY, "format": "exe"}, session=viewer)
    assert req.responseCode == 400 and "format" in html(req)


def test_reports_need_sign_in(site):
    console, _ = site
    req = request(console, "/reports/export", {**DAY, "format": "csv"})
    assert req.responseCode == 303 and b"text/csv" not in b"".join(
        req.responseHeaders.getRawHeaders(b"content-type") or [])


# -- the whole catalogue: standard, supply, custom -------------------------------------


def field_error(page: str, name: str) -> str | None:
    """The refusal shown next to the field ``name``: the error that follows its input
    (and its help), before the next field's label; None when there is none."""
    m = re.search(rf'id="f-{name}"[^>]*>.*?(?=<label|<p class="buttons")', page, re.S)
    if m is None:
        return None
    err = re.search(rf'<span class="error" id="f-{name}-error" role="alert">(.*?)</span>',
                    m.group(0), re.S)
    return err.group(1) if err else None


def field_names(page: str) -> list[str]:
    form = page.split('class="action report-params"', 1)[1].split("</form>", 1)[0]
    return re.findall(r'<(?:input|select) id="f-([a-z]+)" name="\1"', form)


def test_the_list_names_every_report_with_its_title_and_description(site):
    console, viewer = site
    page = html(request(console, "/reports", session=viewer))
    for name in ("collections", "arrears", "withholding", "supplied-unpaid", "paid-closed",
                 "arrears-by-district", "collections-by-bank-month", "payments-by-channel",
                 "households"):
        assert f'<option value="{name}"' in page, name
        assert f'href="/reports?name={name}&amp;choose=1"' in page, name
    assert "渠道统计 Payments by channel, last month" in page  # a definition's title
    assert "Open bills (outstanding &gt; 0) of every period." in page  # its description
    assert "已缴费未开栓 Paid but still closed" in page
    assert page.index("Standard reports") < page.index("Supply status") < page.index(
        "Custom reports")
    # the broken definition is not offered, and the page says so; the one named like a
    # standard report is not offered either (the standard one runs)
    assert 'value="broken"' not in page
    assert "broken.toml: not listed: the definition does not check" in page
    assert page.count('<option value="arrears"') == 1
    assert "arrears.toml: &#39;arrears&#39; is a standard report&#39;s name" in page


@pytest.mark.parametrize("name, fields", [
    ("collections", ["from", "to", "bank", "by"]),
    ("arrears", ["from", "to", "by"]),
    ("collection-rate", ["from", "to"]),
    ("supplied-unpaid", ["season", "district", "by"]),
    ("payments-by-channel", ["from", "to"]),
    ("arrears-by-district", ["from", "to"]),
    ("households", []),
])
def test_choosing_a_report_shows_its_own_parameters_and_runs_nothing(day, name, fields):
    console, viewer, store = day
    asked = []
    call = store.call
    store.call = lambda fn, *a, **kw: asked.append(fn) or call(fn, *a, **kw)
    try:
        req = request(console, "/reports", {"name": name, "choose": "1", "bank": "fixed"},
                      session=viewer)
    finally:
        store.call = call
    page = html(req)
    assert req.responseCode in (None, 200), page
    assert field_names(page) == fields
    assert 'class="report"' not in page  # nothing was run: no table
    assert len(asked) == 1  # the listing (the definitions folder), no report
    assert f'<input type="hidden" name="name" value="{name}">' in page
    if not fields:
        assert "This report takes no parameters." in page


def test_a_custom_reports_form_says_its_default_range(site):
    console, viewer = site
    page = html(request(console, "/reports", {"name": "payments-by-channel", "choose": "1"},
                        session=viewer))
    assert "default: last_month (2026-10-01 to 2026-10-31)" in page  # TODAY is 2026-11-27
    page = html(request(console, "/reports", {"name": "arrears-by-district", "choose": "1"},
                        session=viewer))
    assert "default: all dates" in page


def by_channel(store, first: date, last: date) -> dict[str, tuple[int, int]]:
    """The oracle: payments standing or pending (N, P) per channel, straight from N8."""
    p = store.n8["payment"]
    with store.n8_engine.connect() as c:
        return {ch: (n, int(amount)) for ch, n, amount in c.execute(
            sa.select(p.c.channel, sa.func.count(), sa.func.sum(p.c.amount))
            .where(p.c.status.in_(("N", "P")), p.c.pay_date.between(first, last))
            .group_by(p.c.channel))}


def test_a_custom_report_is_shown_with_the_figures_of_n8(day):
    console, viewer, store = day
    want = by_channel(store, TODAY, TODAY)
    assert want  # the day has payments
    ask = {"name": "payments-by-channel", "from": TODAY.isoformat(), "to": TODAY.isoformat()}
    req = request(console, "/reports", ask, session=viewer)
    page = html(req)
    assert req.responseCode in (None, 200), page
    assert "渠道统计 Payments by channel, last month" in page
    rows = {r[0]: r for r in cells(page)}
    assert {ch: (int(r[1]), r[2]) for ch, r in rows.items()} == {
        ch: (n, fen_to_yuan(amount)) for ch, (n, amount) in want.items()}
    [totals] = cells(page, "tfoot")
    assert totals[1] == str(sum(n for n, _ in want.values()))
    assert "payment rows, 2026-11-27 to 2026-11-27" in page  # the definition's note
    for fmt in reporting.FORMATS:  # every format bankgate report writes
        assert (f"/reports/export?name=payments-by-channel&amp;from=2026-11-27&amp;"
                f"to=2026-11-27&amp;format={fmt}") in page
    # without dates: the definition's default range (last month: no payment then)
    page = html(request(console, "/reports", {"name": "payments-by-channel"},
                        session=viewer))
    assert "payment rows, 2026-10-01 to 2026-10-31" in page and "No rows." in page
    assert by_channel(store, date(2026, 10, 1), date(2026, 10, 31)) == {}


def test_a_custom_report_is_exported_in_every_format(day, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    console, viewer, store = day
    want = by_channel(store, TODAY, TODAY)
    ask = {"name": "payments-by-channel", "from": TODAY.isoformat(), "to": TODAY.isoformat()}
    bodies = {}
    for fmt in reporting.FORMATS:
        req = request(console, "/reports/export", {**ask, "format": fmt}, session=viewer)
        assert req.responseCode in (None, 200), fmt
        [disp] = req.responseHeaders.getRawHeaders(b"content-disposition")
        assert disp == (f'attachment; filename="payments-by-channel_20261127_20261127.{fmt}"'
                        .encode())
        assert req.responseHeaders.getRawHeaders(b"content-type") == [
            reports.CONTENT_TYPES[fmt]]
        bodies[fmt] = b"".join(req.written)
    rows = list(csv.reader(io.StringIO(bodies["csv"].decode("utf-8"))))
    assert rows[0] == ["channel", "payments", "amount", "late_fees"]
    assert {r[0]: (int(r[1]), r[2]) for r in rows[1:]} == {
        ch: (n, fen_to_yuan(amount)) for ch, (n, amount) in want.items()}
    doc = json.loads(bodies["json"])
    assert doc["name"] == "payments-by-channel"
    assert sum(r["amount"] for r in doc["rows"]) == sum(a for _, a in want.values())
    assert bodies["xlsx"][:2] == b"PK" and bodies["pdf"][:5] == b"%PDF-"
    assert list(tmp_path.iterdir()) == []  # the temporary files are gone


def test_the_console_never_reads_a_definition_file_it_is_named(site, tmp_path):
    console, viewer = site
    outside = tmp_path / "secret.toml"
    outside.write_text('name = "secret"\n[[measures]]\nfn = "count"\n', encoding="utf-8")
    for name in (str(outside), "../secret.toml", "secret"):
        for path in ("/reports", "/reports/export"):
            req = request(console, path, {"name": name, "format": "csv"}, session=viewer)
            assert req.responseCode == 400, (name, path)
            assert req.responseHeaders.getRawHeaders(b"content-disposition") is None
            assert "no report" in html(req)


def test_an_unreadable_definitions_folder_leaves_the_other_reports(site, monkeypatch):
    from bankgate.app import report_catalogue

    def unreadable(folder):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(report_catalogue, "load_definitions", unreadable)
    console, viewer = site
    req = request(console, "/reports", session=viewer)
    page = html(req)
    assert req.responseCode in (None, 200)
    assert 'value="collections"' in page and 'value="paid-closed"' in page
    assert 'value="payments-by-channel"' not in page
    assert "the definitions folder cannot be read: Permission denied" in page


# -- the supply reports ------------------------------------------------------------------


@pytest.fixture
def supply_site(tmp_path):
    """The supply world on the gateway's valves, 200000001 having paid its season."""
    store = make_store("sqlite", tmp_path)
    seed_supply(store, "gateway")
    w = world(store, source="gateway")
    r = w.ledger.pay(pay("S1", "200000001", 100000, bank="fixed", bill_ids=("H1",)))
    assert r.outcome is Outcome.OK, r
    synchronous(store)
    console = Console(None, Clock(), run_blocking=store.call, wall=datetime.fromtimestamp)
    mount_reports(console, store, tmp_path / "no-definitions", banks=list(BANKS),
                  supply=w.settings)
    yield console, console.sessions.create(account("vera", "viewer"))
    store.stop()


def test_supplied_unpaid_by_district_by_household_and_for_one_district(supply_site):
    console, viewer = supply_site
    req = request(console, "/reports", {"name": "supplied-unpaid"}, session=viewer)
    page = html(req)
    assert req.responseCode in (None, 200), page
    assert "供暖未缴费 Supplied but unpaid" in page and f"season {SEASON}" in page
    # 200000004 (nothing paid) and 200000005 (70% paid): valves open in 沈河区
    assert cells(page) == [["沈河区", "2", "2000.00", "700.00", "1300.00"]]
    page = html(request(console, "/reports", {"name": "supplied-unpaid", "by": "customer",
                                              "season": SEASON}, session=viewer))
    assert [r[0] for r in cells(page)] == ["200000004", "200000005"]
    page = html(request(console, "/reports", {"name": "supplied-unpaid", "district": "和平区"},
                        session=viewer))
    assert "No rows." in page
    # no season that far back: nothing, said so
    page = html(request(console, "/reports", {"name": "supplied-unpaid",
                                              "season": "2020-2021"}, session=viewer))
    assert "season 2020-2021" in page and "No rows." in page


def test_paid_closed_is_exported(supply_site):
    console, viewer = supply_site
    ask = {"name": "paid-closed", "by": "customer", "season": SEASON}
    page = html(request(console, "/reports", ask, session=viewer))
    # 200000001 paid through the gateway (an open order), 200000003 in N8 before (none)
    assert [r[0] for r in cells(page)] == ["200000001", "200000003"]
    assert "/reports/export?name=paid-closed&amp;season=2026-2027&amp;by=customer" in page
    req = request(console, "/reports/export", {**ask, "format": "csv"}, session=viewer)
    [disp] = req.responseHeaders.getRawHeaders(b"content-disposition")
    assert disp == b'attachment; filename="paid-closed_2026-2027.csv"'
    rows = list(csv.reader(io.StringIO(html(req))))
    assert rows[0][:3] == ["customer_no", "name", "district"]
    assert [r[0] for r in rows[1:]] == ["200000001", "200000003"]
    req = request(console, "/reports/export", {"name": "paid-closed", "format": "json"},
                  session=viewer)
    doc = json.loads(html(req))
    assert {r["district"]: r["households"] for r in doc["rows"]} == {"和平区": 1, "沈河区": 1}


def test_the_command_lines_parameters_give_the_same_supply_reports(tmp_path):
    """``bankgate report supplied-unpaid --to D`` goes through the same catalogue: the
    season is the one --to falls in, and --bank or a wrong --by is refused."""
    store = make_store("sqlite", tmp_path)
    try:
        seed_supply(store, "n8")
        w = world(store, source="n8")
        cat = Catalogue(banks=list(BANKS), definitions_dir=tmp_path / "none",
                        supply=w.settings, now=w.clock)
        run = cat.find("supplied-unpaid").run
        t = run(store, {"from": None, "to": date(2027, 1, 15), "bank": None, "by": None})
        assert t.params["season"] == SEASON
        assert list(t.rows) == [("沈河区", 2, 200000, 70000, 130000)]
        t = cat.find("paid-closed").run(store, {"to": date(2026, 12, 1), "by": "customer"})
        assert [r[0] for r in t.rows] == ["200000003"]
        t = run(store, {"to": date(2027, 9, 1), "by": None})  # the next season: none
        assert t.params["season"] == "2027-2028" and list(t.rows) == []
        with pytest.raises(ReportError, match="not per bank: leave out --bank"):
            run(store, {"to": date(2027, 1, 15), "bank": "fixed"})
        with pytest.raises(ReportError, match="--by 'bank'"):
            run(store, {"to": date(2027, 1, 15), "by": "bank"})
    finally:
        store.stop()


def test_a_name_is_found_as_the_command_line_finds_it(tmp_path):
    folder = definitions(tmp_path / "reports.d")
    cat = Catalogue(banks=SITE_BANKS, definitions_dir=folder, now=FakeClock(),
                    supply=SupplySettings())
    listing = cat.listing()
    for name in ("arrears", "collections", "payments-by-channel", "households",
                 "supplied-unpaid"):
        assert cat.find(name).kind == listing.find(name).kind, name
    assert cat.find("arrears").kind == "standard"  # arrears.toml does not replace it
    outside = tmp_path / "elsewhere.toml"
    outside.write_text('name = "elsewhere"\n[[measures]]\nfn = "count"\n', encoding="utf-8")
    assert cat.find(str(outside), files=True).name == "elsewhere"  # --definition FILE
    for files in (False, True):
        with pytest.raises(ReportError, match="no report 'nosuch'"):
            cat.find("nosuch", files=files)
    with pytest.raises(ReportError, match="no report"):
        cat.find(str(outside))  # the console's way: names only


# -- refusals: next to the field, nothing run, nothing exported ---------------------------


BAD = [  # the report, the field refused, what was typed, what the page says next to it
    ("collections", "bank", {"bank": "nowhere"}, "not a configured bank"),
    ("collections", "from", {"from": "27.11.2026"}, "from: expected a date as YYYY-MM-DD"),
    ("collections", "from", {"from": "2026-12-01", "to": "2026-11-01"},
     "--from 2026-12-01 is after --to 2026-11-01"),
    ("collections", "by", {"by": "day,colour"},
     "--by &#39;colour&#39;: report collections groups by"),
    ("arrears", "by", {"by": "district,customer"}, "--by customer lists each customer"),
    ("supplied-unpaid", "season", {"season": "2026/2027"},
     "season &#39;2026/2027&#39;: expected"),
    ("supplied-unpaid", "by", {"by": "bank"},
     "--by &#39;bank&#39;: report supplied-unpaid groups"),
    ("supplied-unpaid", "district", {"district": "区" * 41}, "district: at most 40 characters"),
    ("payments-by-channel", "from", {"to": "2026-11-27"}, "--to needs --from"),
    ("payments-by-channel", "from", {"from": "1999-01-01", "to": "2026-11-27"},
     "longer than 10 years"),
    ("payments-by-channel", "to", {"from": "2026-11-27", "to": "tomorrow"},
     "to: expected a date as YYYY-MM-DD"),
]


@pytest.mark.parametrize("path", ["/reports", "/reports/export"])
@pytest.mark.parametrize("name, field, typed, message", BAD)
def test_a_bad_parameter_is_named_next_to_its_field_and_nothing_is_exported(
        day, tmp_path, monkeypatch, path, name, field, typed, message):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    console, viewer, store = day
    ask = {"name": name, **typed, "format": "csv"}
    asked = []
    call = store.call
    store.call = lambda fn, *a, **kw: asked.append(fn) or call(fn, *a, **kw)
    try:
        req = request(console, path, ask, session=viewer)
    finally:
        store.call = call
    page = html(req)
    assert req.responseCode == 400
    assert message in (field_error(page, field) or ""), page
    assert f'id="f-{field}" name="{field}"' in page  # the form is there to correct it
    assert req.responseHeaders.getRawHeaders(b"content-disposition") is None
    assert list(tmp_path.iterdir()) == []  # no file was written
    if name != "arrears":  # arrears refuses that --by as it runs, before any SQL
        assert len(asked) == 1  # the listing only: the report never ran


def test_the_other_fields_keep_what_was_typed(site):
    console, viewer = site
    page = html(request(console, "/reports", {**DAY, "bank": "nowhere", "by": "channel"},
                        session=viewer))
    assert 'value="channel"' in page and 'value="2026-11-27"' in page
    assert '<option value="nowhere" selected>nowhere</option>' in page
    assert field_error(page, "from") is None and field_error(page, "by") is None


@pytest.fixture(scope="module")
def listing(tmp_path_factory):
    folder = definitions(tmp_path_factory.mktemp("listing") / "reports.d")
    return Catalogue(banks=SITE_BANKS, definitions_dir=folder, now=FakeClock(),
                     supply=SupplySettings()).listing()


TEXT = st.one_of(st.just(""), st.text(max_size=30),
                 st.dates(date(1990, 1, 1), date(2040, 12, 31)).map(date.isoformat),
                 st.sampled_from(["day", "bank,channel", "customer", "district", SEASON,
                                  "fixed", "和平区"]))


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["collections", "arrears", "collection-rate", "recon",
                             "invoices", "withholding", "supplied-unpaid", "paid-closed",
                             "payments-by-channel", "arrears-by-district",
                             "collections-by-bank-month", "households"]),
       texts=st.fixed_dictionaries({k: TEXT for k in reports.FIELDS}))
def test_every_refusal_names_a_field_the_form_shows(listing, name, texts):
    """Whatever is typed: the answer is parameters to run or refusals, and each refusal
    belongs to a field of that report's form (so it is shown next to it)."""
    asked = reports.ask(listing, {"name": name, **texts})
    shown_fields = {p.name for p in asked.entry.params}
    assert set(asked.errors) <= shown_fields
    if not asked.errors:
        for k in ("from", "to"):
            if k in shown_fields and texts[k]:
                assert asked.params[k] == date.fromisoformat(texts[k])


# -- work orders ---------------------------------------------------------------------


@pytest.fixture
def orders(tmp_path):
    """The supply world with one open order (200000001 paid its heating fee)."""
    store = make_store("sqlite", tmp_path)
    seed_supply(store, "gateway")
    w = world(store, source="gateway")
    r = w.ledger.pay(pay("S1", "200000001", 100000, bank="fixed", bill_ids=("H1",)))
    assert r.outcome is Outcome.OK, r
    synchronous(store)
    console = Console(None, Clock(), run_blocking=store.call, wall=datetime.fromtimestamp)
    workorders.mount(console, w.orders)
    yield console, store
    store.stop()


def audited(store) -> list[dict]:
    with store.engine.connect() as c:
        return [dict(r) for r in c.execute(
            sa.select(model.audit).where(model.audit.c.action == "workorder-done")).mappings()]


def test_a_viewer_sees_the_orders_without_forms(orders):
    console, store = orders
    viewer = console.sessions.create(account("vera", "viewer"))
    (o,) = all_orders(store)
    page = html(request(console, "/workorders", session=viewer))
    assert "200000001" in page and "open_valve" in page
    assert "/workorders/done" not in page
    page = html(request(console, "/workorders", {"state": "done"}, session=viewer))
    assert "200000001" not in page and "No work orders match." in page
    req = request(console, "/workorders", {"state": "bogus"}, session=viewer)
    assert req.responseCode == 400


def test_a_viewer_cannot_mark_an_order_done(orders):
    console, store = orders
    viewer = console.sessions.create(account("vera", "viewer"))
    (o,) = all_orders(store)
    req = request(console, "/workorders/done", {"id": str(o["id"]), "note": "opened"},
                  session=viewer, method=b"POST", csrf=viewer.csrf)
    assert req.responseCode == 403
    assert all_orders(store)[0]["state"] == "open" and audited(store) == []


def test_an_operator_needs_the_csrf_token_then_marks_it_done(orders):
    console, store = orders
    op = console.sessions.create(account("olga", "operator"))
    (o,) = all_orders(store)
    page = html(request(console, "/workorders", session=op))
    assert "/workorders/done" in page and f'value="{op.csrf}"' in page
    form = {"id": str(o["id"]), "note": "valve opened, seal 0815",
            "back": "/workorders?state=open"}
    req = request(console, "/workorders/done", form, session=op, method=b"POST")
    assert req.responseCode == 403
    req = request(console, "/workorders/done", form, session=op, method=b"POST",
                  csrf="not-the-token")
    assert req.responseCode == 403
    assert all_orders(store)[0]["state"] == "open" and audited(store) == []

    req = request(console, "/workorders/done", {**form, "note": "  "}, session=op,
                  method=b"POST", csrf=op.csrf)
    assert req.responseCode == 400 and "with a note" in html(req)
    assert all_orders(store)[0]["state"] == "open"

    req = request(console, "/workorders/done", form, session=op, method=b"POST",
                  csrf=op.csrf)
    assert req.responseCode == 303
    assert req.responseHeaders.getRawHeaders(b"location") == [b"/workorders?state=open"]
    (done,) = all_orders(store)
    assert (done["state"], done["done_by"]) == ("done", "olga")
    (a,) = audited(store)
    assert (a["actor"], a["subject"]) == ("olga", str(o["id"]))
    assert "valve opened, seal 0815" in a["detail"]

    req = request(console, "/workorders/done", form, session=op, method=b"POST",
                  csrf=op.csrf)
    assert req.responseCode == 400 and "only an open order" in html(req)
    assert len(audited(store)) == 1


def test_the_counter_is_a_bank_of_the_reports():
    """Payments taken at the utility's counter have the bank ``counter``: a report may
    be asked for it, from the console and the command line alike."""
    from bankgate.app.config import default_config

    cfg = default_config()
    cat = Catalogue.for_config(cfg, datetime.now)
    assert cat.banks == [*(b.name for b in cfg.banks), "counter"]
    entry = cat.find("collections")
    assert entry.check({"from": None, "to": None, "bank": "counter", "by": ""})["bank"] \
        == "counter"
    with pytest.raises(Exception, match="no-such-bank"):
        entry.check({"from": None, "to": None, "bank": "no-such-bank", "by": ""})
