"""A demo gateway with its console, and a headless Chromium to drive it.

For the console's browser tests (``tests/test_browser.py``) and the docs'
screenshots (:mod:`bankgate.devtools.screenshots`).  The gateway is ``twistd
bankgate`` in a subprocess (:class:`~bankgate.devtools.gateway.GatewayProcess`) on a
configuration like the embedded demo's (the same four banks, invoices on
demo-fixed, withholding and a simulated debit host on demo-delim) but on free
ports, with fewer customers and no schedule (no cut-off, no nightly
reconciliation: nothing depends on the hour).  Users and payments are made the way
an operator and a bank make them: ``bankgate user add`` and ``bankgate simulate``
against the running gateway.

The browser is Debian's Chromium (``apt-get install chromium``) driven by
Playwright (a test dependency: imported when a browser starts, never at import);
Playwright's own browser download is not used.  ``BANKGATE_CHROMIUM`` names
another binary.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bankgate.devtools.gateway import GatewayProcess, free_port

#: the specs' test key (docs/specs) and its check values: demo banks only
SPEC_KEY = "0123456789ABCDEFFEDCBA9876543210"
KCV_3DES = "08D7B4"
KCV_SM4 = "2677F4"
#: where the first start writes the first administrator's password, in the data
#: folder (``bankgate.app.console.auth.ADMIN_FILE``; a development tool does not
#: import the application)
ADMIN_FILE = "console-admin.txt"
#: the browser's window, and the screenshots' size
VIEWPORT = {"width": 1280, "height": 800}
PORT_NAMES = ("fixed", "delim", "iso", "xml", "host", "console")

CONFIG = """\
# The embedded demo (bankgate.app.config.default_config) on free ports, with {customers}
# customers and no schedule (tests/test_docs.py checks it against the demo).
[gateway]
data_dir = "{data}"
timezone = "Asia/Shanghai"

[database]
url = "sqlite:///{data}/bankgate.db"

[n8]
create = true
demo_customers = {customers}

[console]
listen = "tcp:{console}:interface=127.0.0.1"

[[bank]]
name = "demo-fixed"
plugin = "ref-fixed"
bank_code = "105210"
listen = "tcp:{fixed}:interface=127.0.0.1"
allow = ["127.0.0.0/8"]
policy = "exact"
mac = true
mac_key = "{key}"
mac_key_kcv = "{kcv_3des}"
exchange_dir = "{data}/exchange/demo-fixed"
[bank.options]
invoice = true
invoice_low_water = 50

[[bank]]
name = "demo-delim"
plugin = "ref-delim"
bank_code = "103210"
listen = "tcp:{delim}:interface=127.0.0.1"
allow = ["127.0.0.0/8"]
policy = "exact"
exchange_dir = "{data}/exchange/demo-delim"
[bank.options]
withholding = true
utility_code = "HEAT0001"
debit_host = "tcp:host=127.0.0.1:port={host}"
debit_host_simulate = true

[[bank]]
name = "demo-iso8583"
plugin = "ref-iso8583"
bank_code = "104210"
listen = "tcp:{iso}:interface=127.0.0.1"
allow = ["127.0.0.0/8"]
policy = "partial"
mac = true
zmk = "{key}"
zmk_kcv = "{kcv_3des}"
exchange_dir = "{data}/exchange/demo-iso8583"

[[bank]]
name = "demo-xml"
plugin = "ref-xml"
bank_code = "301210"
listen = "tcp:{xml}:interface=127.0.0.1"
allow = ["127.0.0.0/8"]
policy = "exact"
mac = true
mac_key = "{key}"
mac_key_kcv = "{kcv_sm4}"
two_phase = true
confirm_timeout = 600
exchange_dir = "{data}/exchange/demo-xml"
"""


class CommandFailed(RuntimeError):
    """A ``bankgate`` command exited with a status other than the expected one."""


@dataclass(frozen=True)
class Payment:
    """What the bank simulator was answered for a payment."""

    bank: str
    customer: str
    receipt: str
    amount: int  # fen
    output: str


def _answer(output: str) -> str:
    """The simulator's last answer (after its last ``←``): a ``pay`` without an
    amount first queries, and that answer comes before."""
    return output.rsplit("←", 1)[-1] if "←" in output else ""


def parse_payment(bank: str, customer: str, output: str) -> Payment:
    """The receipt number and the amount (fen) of the simulator's approved answer."""
    answer = _answer(output)
    receipt = re.search(r"^\s*receipt_no\s+(\S+)", answer, re.M)
    amount = re.search(r"^\s*amount\s+\S+ \((\d+) fen\)", answer, re.M)
    if receipt is None or amount is None:
        raise CommandFailed(f"no receipt_no and amount in the answer of {bank}'s payment"
                            f" for {customer}:\n{output}")
    return Payment(bank, customer, receipt.group(1), int(amount.group(1)), output)


class DemoConsole:
    """``twistd bankgate`` on the demo-like :data:`CONFIG` in ``folder`` (created),
    its console at :attr:`url`; a context manager that starts and stops it."""

    def __init__(self, folder: Path, *, customers: int = 200, start_timeout: float = 60.0):
        self.folder = Path(folder)
        self.data = self.folder / "var"
        self.config = self.folder / "bankgate.toml"
        self.ports = {name: free_port() for name in PORT_NAMES}
        self.customers = customers
        self.gateway = GatewayProcess(self.config, list(self.ports.values()),
                                      self.folder / "gateway.log", cwd=self.folder,
                                      start_timeout=start_timeout)
        self.admin_password = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['console']}"

    def start(self) -> DemoConsole:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config.write_text(CONFIG.format(
            data=self.data.as_posix(), customers=self.customers, key=SPEC_KEY,
            kcv_3des=KCV_3DES, kcv_sm4=KCV_SM4, **self.ports), encoding="utf-8")
        self.gateway.start()
        try:
            text = (self.data / ADMIN_FILE).read_text(encoding="utf-8")
            self.admin_password = re.search(r"^password: (\S+)", text, re.M).group(1)
        except (OSError, AttributeError):
            self.gateway.stop()
            raise RuntimeError(f"the first start wrote no password to {ADMIN_FILE}:\n"
                               f"{self.gateway.tail()}") from None
        return self

    def stop(self) -> None:
        self.gateway.stop()

    def __enter__(self) -> DemoConsole:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self) -> str:
        """The gateway's log so far."""
        return self.gateway.log.read_text(encoding="utf-8", errors="replace")

    # -- the bankgate command, as an operator runs it --------------------------------

    def bankgate(self, *args: str, stdin: str = "", expect: int = 0,
                 timeout: float = 60.0) -> str:
        """``bankgate --config FILE ARGS...`` from this source tree; its output
        (standard output and error), or :class:`CommandFailed` naming the command."""
        cmd = [sys.executable, "-m", "bankgate", "--config", str(self.config), *args]
        proc = subprocess.run(cmd, cwd=self.folder, env=self.gateway.env(), input=stdin,
                              capture_output=True, text=True, encoding="utf-8",
                              timeout=timeout)
        out = proc.stdout + proc.stderr
        if proc.returncode != expect:
            raise CommandFailed(f"bankgate {' '.join(args)}: exit status {proc.returncode},"
                                f" expected {expect}:\n{out}")
        return out

    def add_user(self, name: str, role: str, password: str) -> None:
        """A console user, added by the first administrator (the audit trail's actor)."""
        self.bankgate("user", "add", name, "--role", role, "--password-stdin",
                      "--actor", "admin", stdin=password + "\n")

    def pay(self, bank: str, customer: str) -> Payment:
        """The bank pays what ``customer`` owes (``bankgate simulate --bank BANK pay``)."""
        out = self.bankgate("simulate", "--bank", bank, "pay", customer)
        return parse_payment(bank, customer, out)


# -- the browser ---------------------------------------------------------------------


def chromium_path() -> str | None:
    """``BANKGATE_CHROMIUM``, else Debian's ``chromium`` (or ``chromium-browser``)."""
    return (os.environ.get("BANKGATE_CHROMIUM") or shutil.which("chromium")
            or shutil.which("chromium-browser"))


def browser_missing() -> str | None:
    """Why no browser can be started here, or ``None`` when one can."""
    try:
        import playwright.sync_api  # noqa: F401 - only whether it is there
    except ImportError:
        return "playwright is not installed (pip install playwright: the test extra has it)"
    path = chromium_path()
    if not path:
        return "no chromium on PATH (apt-get install chromium, or set BANKGATE_CHROMIUM)"
    if not os.access(path, os.X_OK):
        return f"chromium at {path} is not an executable file (BANKGATE_CHROMIUM?)"
    return None


class Chromium:
    """A headless Chromium under Playwright's synchronous API; a context manager.
    Each :meth:`context` is a fresh browser profile (cookies of its own) whose
    relative URLs go to ``base_url``."""

    def __init__(self, executable: str | None = None):
        self.executable = executable or chromium_path()
        self._playwright = None
        self.browser = None

    def start(self) -> Chromium:
        from playwright.sync_api import sync_playwright

        # as root (a container, CI) Chromium's sandbox cannot start
        args = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
        self._playwright = sync_playwright().start()
        try:
            self.browser = self._playwright.chromium.launch(
                executable_path=self.executable, headless=True, args=args)
        except Exception:
            self._playwright.stop()
            raise
        return self

    def context(self, base_url: str, **options):
        options.setdefault("viewport", VIEWPORT)
        return self.browser.new_context(base_url=base_url, **options)

    def stop(self) -> None:
        if self.browser is not None:
            self.browser.close()
            self.browser = None
        if self._playwright is not None:
            self._playwright.stop()
            self._playwright = None

    def __enter__(self) -> Chromium:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _is_login_post(response) -> bool:
    return response.request.method == "POST" and urlsplit(response.url).path == "/login"


def sign_in(page, name: str, password: str):
    """Fill in and send the sign-in form on ``page`` (opened first unless the page
    shows it: a page sent to sign in keeps where it was going); the answer to the
    POST (303 when signed in; 401, 429 ... with the form again when not)."""
    if urlsplit(page.url).path != "/login":
        page.goto("/login")
    page.fill("#name", name)
    page.fill("#password", password)
    with page.expect_response(_is_login_post) as answer:
        page.click("form.login button[type=submit]")
    page.wait_for_load_state()
    return answer.value
