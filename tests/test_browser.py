"""The operator console in a real browser: Debian's Chromium, driven by Playwright, over
``twistd bankgate`` on loopback (``tests/browser_helpers.py``).

What an operator does, as they do it: sign in, watch a payment the bank simulator
makes appear on the overview without reloading, look the customer up at the help
desk, reverse the payment with a reason and find it in the audit trail.  And what
the console refuses: a viewer reversing, a change without the form's token, a sixth
wrong password in a row.  Every wait is one of Playwright's expectations on the page
(bounded), never a sleep.

Reversal and the audit trail follow the back-office pages' contract: the payment page
``/helpdesk/payment?receipt=R`` has "Reverse" for operators, leading to
``/actions/reverse?receipt=R`` (a reason, "Continue", then "Confirm"), which ends on
the payment page with status REVERSED; ``/audit`` lists the newest entries first.
"""

from __future__ import annotations

import re
import struct

import pytest

from bankgate.canon.money import fen_to_yuan, yuan_to_fen
from bankgate.devtools import screenshots
from bankgate.devtools.console_browser import VIEWPORT, CommandFailed, parse_payment, sign_in

try:
    from playwright.sync_api import expect
except ImportError:  # the fixtures skip, or fail under BANKGATE_REQUIRE_SERVERS=1
    expect = None
else:
    expect.set_options(timeout=10_000)

pytest_plugins = ("browser_helpers",)
pytestmark = pytest.mark.e2e

#: the day's figures on the overview are fetched every 10 s
FIGURES_MS = 25_000
REASON = "客户重复缴费 (paid twice at the counter)"


def status_of(page, receipt: str) -> str:
    """The payment's status as the help desk lists it, read in another tab of the
    same browser context (same user)."""
    tab = page.context.new_page()
    try:
        tab.goto(f"/helpdesk?receipt={receipt}")
        heads = [t.strip() for t in tab.locator("table.payments thead th").all_inner_texts()]
        row = tab.locator("table.payments tbody tr", has_text=receipt)
        expect(row).to_have_count(1)
        return row.locator("td").nth(heads.index("Status")).inner_text().strip()
    finally:
        tab.close()


def status_field(page):
    """The Status line of a payment's page."""
    return page.locator("dt", has_text=re.compile(r"^\s*Status\s*$")).locator(
        "xpath=following-sibling::dd[1]")


# -- signing in ------------------------------------------------------------------------


def test_sign_in_leads_where_the_user_was_going(demo_console, browse):
    page = browse(demo_console)
    page.goto("/helpdesk")
    expect(page).to_have_url(re.compile(r"/login\?next=/helpdesk$"))
    user = demo_console.operator
    answer = sign_in(page, user, demo_console.passwords[user])
    assert answer.status == 303
    expect(page).to_have_url(demo_console.url + "/helpdesk")
    expect(page.locator("header form.who span")).to_have_text(f"{user} (operator)")
    page.get_by_role("link", name="Overview").click()
    expect(page.locator("h1")).to_have_text("Overview")
    for bank in ("demo-fixed", "demo-delim", "demo-iso8583", "demo-xml"):
        expect(page.locator(f'#links tr[data-bank="{bank}"]')).to_have_count(1)


# -- the overview ----------------------------------------------------------------------


def test_a_payment_appears_on_the_overview_without_a_reload(demo_console, browse):
    page = browse(demo_console, demo_console.operator)
    page.goto("/")
    expect(page.locator("#live-state")).to_contain_text("Live:", timeout=FIGURES_MS)
    row = page.locator('tbody[data-table="per_bank"] tr').filter(
        has=page.locator("td:first-child", has_text=re.compile(r"^demo-fixed$")))
    cells = row.locator("td")
    count, amount = int(cells.nth(1).inner_text()), yuan_to_fen(cells.nth(2).inner_text())
    page.evaluate("window.bankgateNotReloaded = true")

    paid = demo_console.pay("demo-fixed")

    expect(cells.nth(1)).to_have_text(str(count + 1), timeout=FIGURES_MS)
    expect(cells.nth(2)).to_have_text(fen_to_yuan(amount + paid.amount))
    per_minute = page.locator(
        '#links tr[data-bank="demo-fixed"] td[data-field="payments_per_minute"]')
    expect(per_minute).to_have_text(re.compile(r"^[1-9]\d*$"))
    assert page.evaluate("window.bankgateNotReloaded") is True, "the page was reloaded"


# -- the help desk ---------------------------------------------------------------------


def test_the_help_desk_finds_the_customer_by_number_and_name(demo_console, browse):
    paid = demo_console.pay("demo-fixed")
    page = browse(demo_console, demo_console.viewer)
    page.goto("/helpdesk")
    page.fill("#q", paid.customer)
    page.locator("#q").press("Enter")
    found = page.locator("table.customers tbody tr", has_text=paid.customer)
    expect(found).to_have_count(1)
    name = found.locator("td").nth(1).inner_text().strip()
    assert re.fullmatch(r"[\u4e00-\u9fff]{2,}", name), f"a demo customer's name: {name!r}"

    found.get_by_role("link", name=paid.customer).click()
    expect(page.locator("h1")).to_have_text(f"{paid.customer} · {name}")
    payment = page.locator("table.payments tbody tr", has_text=paid.receipt)
    expect(payment).to_have_count(1)
    expect(payment).to_contain_text(fen_to_yuan(paid.amount))

    page.goto("/helpdesk")
    page.fill("#q", name)
    page.locator("#q").press("Enter")
    expect(page.locator("table.customers tbody")).to_contain_text(paid.customer)

    page.fill("#receipt", paid.receipt)
    page.locator("#receipt").press("Enter")
    listed = page.locator("table.payments tbody tr", has_text=paid.receipt)
    expect(listed).to_have_count(1)
    expect(listed).to_contain_text(paid.customer)


# -- reversal and the audit trail (the back-office pages) ------------------------------


def test_an_operator_reverses_a_payment_and_the_audit_trail_shows_it(demo_console, browse):
    paid = demo_console.pay("demo-delim")
    page = browse(demo_console, demo_console.operator)
    page.goto(f"/helpdesk/payment?receipt={paid.receipt}")
    expect(page.locator("h1")).to_have_text(f"Payment {paid.receipt}")
    before = status_field(page).inner_text()
    assert "REVERSED" not in before

    page.get_by_role("link", name="Reverse", exact=True).or_(
        page.get_by_role("button", name="Reverse", exact=True)).click()
    expect(page).to_have_url(re.compile(rf"/actions/reverse\?receipt={paid.receipt}$"))
    page.fill('textarea[name="reason"]', REASON)
    page.get_by_role("button", name="Continue").click()
    confirm = page.get_by_role("button", name="Confirm")
    expect(confirm).to_be_visible()
    assert status_of(page, paid.receipt) != "REVERSED", "reversed before the confirmation"

    with page.expect_response(lambda r: r.request.method == "POST"
                              and "/actions/reverse" in r.url) as answer:
        confirm.click()
    assert answer.value.status == 303
    expect(page).to_have_url(re.compile(r"/helpdesk/payment\?"))
    expect(status_field(page)).to_contain_text("REVERSED")
    assert status_of(page, paid.receipt) == "REVERSED"

    page.goto("/audit")
    user = demo_console.operator
    rows = page.locator("tr")
    reversal = rows.filter(has_text=paid.receipt).filter(has_text="reverse")
    expect(reversal.first).to_contain_text(user)
    expect(reversal.first).to_contain_text(REASON)
    texts = rows.all_inner_texts()
    newest = next(i for i, t in enumerate(texts) if paid.receipt in t and "reverse" in t)
    signed_in = [i for i, t in enumerate(texts) if "sign-in" in t and user in t]
    assert signed_in, "the operator's sign-in is in the audit trail"
    assert newest < signed_in[0], "newest first: the reversal above the sign-in before it"


def test_a_viewer_cannot_reverse(demo_console, browse):
    paid = demo_console.pay("demo-fixed")
    page = browse(demo_console, demo_console.viewer)
    page.goto(f"/helpdesk/payment?receipt={paid.receipt}")
    expect(page.locator("h1")).to_have_text(f"Payment {paid.receipt}")
    expect(page.get_by_role("link", name="Reverse", exact=True)).to_have_count(0)
    expect(page.get_by_role("button", name="Reverse", exact=True)).to_have_count(0)
    before = status_of(page, paid.receipt)

    answer = page.goto(f"/actions/reverse?receipt={paid.receipt}")
    assert answer.status == 403
    expect(page.locator("main")).to_contain_text("viewer")
    # with the session's own token: refused for the role, not for the token
    token = page.locator('input[name="csrf"]').first.get_attribute("value")
    posted = page.request.post("/actions/reverse", form={
        "csrf": token, "receipt": paid.receipt, "reason": REASON, "confirm": "yes"})
    assert posted.status == 403
    assert "viewer" in posted.text() and "security token" not in posted.text()
    assert status_of(page, paid.receipt) == before != "REVERSED"


# -- CSRF ------------------------------------------------------------------------------


def test_a_change_without_the_forms_token_is_refused(demo_console, browse):
    paid = demo_console.pay("demo-fixed")
    user = demo_console.operator
    page = browse(demo_console, user)
    page.goto("/")
    before = status_of(page, paid.receipt)

    posted = page.request.post("/actions/reverse", form={
        "receipt": paid.receipt, "reason": REASON, "confirm": "yes"})
    assert posted.status == 403
    assert "security token" in posted.text()
    assert status_of(page, paid.receipt) == before

    # signing out is a change too: refused without the token, the session goes on
    assert page.request.post("/logout").status == 403
    page.goto("/")
    expect(page.locator("header form.who span")).to_have_text(f"{user} (operator)")
    assert f"/logout by {user} refused: no valid CSRF token" in demo_console.demo.log()
    # the same request with the page's token is what the button sends
    token = page.locator('header input[name="csrf"]').get_attribute("value")
    assert page.request.post("/logout", headers={"X-CSRF-Token": token}).ok
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login\?next=/$"))


# -- the sign-in throttle --------------------------------------------------------------


def test_five_wrong_passwords_slow_the_next_sign_in_down(fresh_console, browse):
    page = browse(fresh_console)
    wrong = [f"not the password {i}" for i in range(5)]
    for password in wrong:
        assert sign_in(page, "admin", password).status == 401
        expect(page.locator("p.message")).to_contain_text("Wrong user name or password")

    # the sixth, even with the right password, must wait (2 s after the fifth failure)
    answer = sign_in(page, "admin", fresh_console.passwords["admin"])
    assert answer.status == 429
    assert int(answer.headers["retry-after"]) >= 1
    expect(page.locator("p.message")).to_contain_text(re.compile(
        r"Too many failed sign-ins .*: wait \d+ s before trying again"))
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login\?next=/$"))  # not signed in

    log = fresh_console.demo.log()
    assert "5 failed sign-ins for user admin" in log
    assert not any(password in log for password in wrong)


# -- the docs' screenshots -------------------------------------------------------------


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_the_docs_screenshots_are_taken_of_every_page(demo_console, chromium, tmp_path):
    paid = [demo_console.pay("demo-fixed"), demo_console.pay("demo-delim")]
    said = []
    files = screenshots.shoot(chromium, demo_console.demo, tmp_path, paid, say=said.append)
    names = {f.name for f in files}
    for page in ("login", "overview", "helpdesk", "customer", "payment", "reports",
                 "workorders"):
        assert f"console-{page}.png" in names
    for f in files:
        assert png_size(f.read_bytes()) == (VIEWPORT["width"], VIEWPORT["height"]), f.name
    assert sorted(tmp_path.iterdir()) == sorted(files)
    # each file is named as it is written; a page not there yet is said to be left out
    for f in files:
        assert any(line.startswith(f"{f}: /") for line in said), f.name
    for name, path in screenshots.OPTIONAL:
        assert f"console-{name}.png" in names or f"({path}: 404, not saved)" in said


SIMULATOR_OUTPUT = """\
→ query  demo-fixed (ref-fixed) 127.0.0.1:9101
  customer_no    100000123
← 0000  approved  交易成功  (5.8 ms)
  total_due         1369.62 (136962 fen)
  amount            9.99 (999 fen)
→ pay  demo-fixed (ref-fixed) 127.0.0.1:9101
  amount         1370.21 (137021 fen)
← 0000  approved  交易成功  (12.6 ms)
  amount           1370.21 (137021 fen)
  receipt_no       20261206000000000001
"""


def test_the_payment_is_read_from_the_simulators_last_answer():
    paid = parse_payment("demo-fixed", "100000123", SIMULATOR_OUTPUT)
    assert (paid.receipt, paid.amount) == ("20261206000000000001", 137021)
    declined = SIMULATOR_OUTPUT.rsplit("←", 1)[0] + "← 1003  amount wrong\n"
    with pytest.raises(CommandFailed, match="no receipt_no"):
        parse_payment("demo-fixed", "100000123", declined)
