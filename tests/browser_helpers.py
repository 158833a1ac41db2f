"""Fixtures of the browser tests (``tests/test_browser.py``): a running gateway with
its console and users, and Debian's Chromium under Playwright.

The gateway and the browser are started once per module (they take a second or two
each); every test opens its own browser context, so cookies and sessions never carry
from one test to the next.  Without playwright or chromium the tests skip, saying
which is missing -- except under ``BANKGATE_REQUIRE_SERVERS=1`` (CI), where they fail.

A test module uses them with ``pytest_plugins = ("browser_helpers",)``:
``demo_console`` (the module's gateway), ``fresh_console`` (a test's own),
``browse`` (pages), ``chromium`` (the browser).
"""

from __future__ import annotations

import itertools
import os

import pytest

from bankgate.devtools.console_browser import (
    Chromium,
    CommandFailed,
    DemoConsole,
    Payment,
    browser_missing,
    sign_in,
)

#: the console users the fixture adds (the first administrator, ``admin``, is the
#: gateway's own)
OPERATOR, VIEWER = "zhao", "wang"
PASSWORDS = {OPERATOR: "operator passphrase 7", VIEWER: "viewer passphrase 8"}
#: how long a page action waits for its element
WAIT_MS = 10_000


def require_browser() -> None:
    why = browser_missing()
    if why:
        if os.environ.get("BANKGATE_REQUIRE_SERVERS") == "1":
            pytest.fail(why + " (BANKGATE_REQUIRE_SERVERS=1: the browser is required here)")
        pytest.skip(why)


class Console:
    """The module's gateway (:attr:`demo`, a
    :class:`~bankgate.devtools.console_browser.DemoConsole`) with its users, and
    payments made at its banks by the simulator."""

    operator, viewer = OPERATOR, VIEWER

    def __init__(self, demo: DemoConsole):
        self.demo = demo
        self.url = demo.url
        self.passwords = {"admin": demo.admin_password, **PASSWORDS}
        # the demo's customers in order; each payment takes customers nobody paid yet
        self._customers = (str(n) for n in itertools.count(100_000_101))

    def pay(self, bank: str = "demo-fixed") -> Payment:
        """A payment of everything due by a customer nobody has paid for yet (a
        customer with nothing due is declined, and the next one is tried)."""
        tried = []
        for _ in range(10):
            customer = next(self._customers)
            try:
                return self.demo.pay(bank, customer)
            except CommandFailed as e:
                tried.append(str(e))
        raise AssertionError("no customer could pay:\n" + "\n".join(tried))


@pytest.fixture(scope="module")
def chromium():
    require_browser()
    with Chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def demo_console(chromium, tmp_path_factory):
    """The module's gateway, with an operator and a viewer besides ``admin``."""
    demo = DemoConsole(tmp_path_factory.mktemp("console") / "gateway")
    with demo:
        for name, role in ((OPERATOR, "operator"), (VIEWER, "viewer")):
            demo.add_user(name, role, PASSWORDS[name])
        yield Console(demo)


@pytest.fixture
def fresh_console(chromium, tmp_path):
    """A gateway of the test's own, with ``admin`` only: for a test that leaves a
    mark the others must not see (the sign-in throttle counts failures per address,
    and every test signs in from 127.0.0.1)."""
    with DemoConsole(tmp_path / "gateway", customers=20) as demo:
        yield Console(demo)


@pytest.fixture
def browse(chromium):
    """``browse(console, user=None)``: a page in a fresh browser context on the
    console at ``console.url`` -- signed in as ``user`` when given (the sign-in is
    checked), else a stranger's.  The contexts are closed after the test."""
    contexts = []

    def open_page(console, user: str | None = None):
        ctx = chromium.context(console.url)
        contexts.append(ctx)
        ctx.set_default_timeout(WAIT_MS)
        page = ctx.new_page()
        if user is not None:
            answer = sign_in(page, user, console.passwords[user])
            if answer.status != 303:
                said = page.locator("main").inner_text()
                raise AssertionError(f"{user} could not sign in: {answer.status}: {said}")
        return page

    yield open_page
    for ctx in contexts:
        ctx.close()
