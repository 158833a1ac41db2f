"""``python -m bankgate.devtools.screenshots OUTDIR``: the console's pages as PNGs.

The pictures of ``docs/console.rst`` (``docs/images/console-*.png``), made from the
running console rather than drawn: a demo gateway starts in a temporary folder
(:class:`~bankgate.devtools.console_browser.DemoConsole`), the bank simulator makes
a few payments at each bank so that the pages have figures, the first administrator
signs in in a headless Chromium, and each page is saved at 1280x800:

================================  ============================================
file                              page
================================  ============================================
``console-login.png``             the sign-in form
``console-overview.png``          the live overview, after the payments
``console-helpdesk.png``          the help desk, a customer found by name
``console-customer.png``          that customer's card
``console-payment.png``           one of the customer's payments
``console-reports.png``           the collections report of the month, by bank
``console-workorders.png``        the work orders
================================  ============================================

and, where this version of the console has them (a page that is not there is
left out, and said so): ``console-alerts.png``, ``console-exceptions.png``,
``console-users.png``, ``console-action.png`` (the confirmation page of a
reversal, of another customer's payment than the one shown, which is then
confirmed) and ``console-audit.png`` (with that reversal).  The browser needs
Playwright and Debian's Chromium, as the browser tests do.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

from bankgate.devtools.console_browser import (
    Chromium,
    CommandFailed,
    DemoConsole,
    Payment,
    browser_missing,
    sign_in,
)

#: the payments that give the pages their figures: (bank, how many)
PAYMENTS = (("demo-fixed", 3), ("demo-delim", 2), ("demo-iso8583", 1))
#: the pages that may not be there yet: (file name, path); the audit trail last, after
#: the reversal (``console-action.png``)
OPTIONAL = (("alerts", "/alerts"), ("exceptions", "/exceptions"), ("users", "/admin/users"),
            ("audit", "/audit"))
FIRST_CUSTOMER = 100_000_101  # the demo's customers from here on are paid


def make_payments(demo: DemoConsole, first: int = FIRST_CUSTOMER) -> list[Payment]:
    """The :data:`PAYMENTS`, each by the next customer with something due (a
    customer with nothing due is declined and skipped)."""
    made, customer = [], first
    for bank, n in PAYMENTS:
        for _ in range(n):
            for _tries in range(10):
                customer += 1
                try:
                    made.append(demo.pay(bank, str(customer)))
                    break
                except CommandFailed:
                    continue
            else:
                raise CommandFailed(f"no demo customer from {first} could pay at {bank}")
    return made


def shoot(browser: Chromium, demo: DemoConsole, outdir: Path, payments: list[Payment],
          say=print) -> list[Path]:
    """Sign in to ``demo``'s console as ``admin`` and save its pages into ``outdir``:
    the customer and the payment of ``payments[0]`` are shown, ``payments[-1]`` (of
    another customer) is reversed.  The files written."""
    payment, reversed_ = payments[0], payments[-1]
    outdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    ctx = browser.context(demo.url)
    try:
        page = ctx.new_page()

        def save(name: str) -> None:
            path = outdir / f"console-{name}.png"
            page.screenshot(path=str(path))
            written.append(path)
            say(f"{path}: {page.url.removeprefix(demo.url)}")

        page.goto("/login")
        page.fill("#name", "admin")
        save("login")
        answer = sign_in(page, "admin", demo.admin_password)
        if answer.status != 303:
            raise RuntimeError(f"admin could not sign in ({answer.status}):"
                               f" {page.locator('main').inner_text()}")

        page.goto("/")
        page.locator("#live-state").filter(has_text="Live:").wait_for()
        save("overview")

        page.goto(f"/helpdesk?q={payment.customer}")
        row = page.locator("table.customers tbody tr", has_text=payment.customer)
        name = row.locator("td").nth(1).inner_text().strip()
        page.goto(f"/helpdesk?q={quote(name)}")
        save("helpdesk")
        page.goto(f"/helpdesk/customer?no={payment.customer}")
        save("customer")
        page.get_by_role("link", name=payment.receipt, exact=True).first.click()
        page.wait_for_load_state()
        save("payment")

        page.goto("/reports?name=collections&by=bank")
        save("reports")
        page.goto("/workorders")
        save("workorders")

        answer = page.goto(f"/actions/reverse?receipt={reversed_.receipt}")
        if answer is not None and answer.status == 200:
            page.fill('textarea[name="reason"]', "银行已冲正 (the bank reversed it by telephone)")
            page.get_by_role("button", name="Continue").click()
            page.get_by_role("button", name="Confirm").wait_for()
            save("action")
            page.get_by_role("button", name="Confirm").click()
            page.wait_for_load_state()
        else:
            say(f"(/actions/reverse: {answer.status if answer else 'no answer'}, not saved)")

        for name, path in OPTIONAL:
            answer = page.goto(path)
            if answer is not None and answer.status == 200:
                save(name)
            else:
                say(f"({path}: {answer.status if answer else 'no answer'}, not saved)")
    finally:
        ctx.close()
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bankgate.devtools.screenshots",
        description="Save the console's pages as PNGs (1280x800) for docs/console.rst,"
                    " from a demo gateway started for the purpose.")
    p.add_argument("outdir", type=Path, help="where the PNGs go (docs/images)")
    args = p.parse_args(argv)
    why = browser_missing()
    if why:
        print(f"screenshots: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bankgate-screenshots-") as tmp:
        with DemoConsole(Path(tmp) / "gateway") as demo, Chromium() as browser:
            shoot(browser, demo, args.outdir, make_payments(demo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
