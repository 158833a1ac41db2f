"""Configuration: one TOML file, validated at start.

Every error names the file, the key and what was expected.  The file is found
by :func:`find_config`: ``--config``, then ``$BANKGATE_CONFIG``, then
:data:`SYSTEM_CONFIG`.  The embedded demo (:func:`default_config`: SQLite
under ``./var/``, the reference N8 schema seeded with demo customers, one demo
bank per reference plugin on loopback, invoices on demo-fixed, withholding on
demo-delim) runs when asked (``--demo``), or when no file is found, and then
the caller says so on standard error (:attr:`ConfigChoice.notice`): a
forgotten ``--config`` must never pass unnoticed.  ``docs/configuration.rst``
documents every key.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bankgate.codec.base import BankKeys, BankProfile
from bankgate.codec.capabilities import BANK_DEFAULT_TYPES
from bankgate.domain.alerts import ALL_DAY, BusinessHours
from bankgate.domain.ledger import COUNTER, POLICIES, BankPolicy
from bankgate.domain.supply import SupplySettings
from bankgate.store import n8adapters as na
from bankgate.store.n8 import REFERENCE, N8Mapping
from bankgate.store.n8adapters import PostSettings

DEFAULT_DATA_DIR = "var"
DEMO_MAC_KEY = "0123456789ABCDEFFEDCBA9876543210"  # the specs' test key: demo banks only


class ConfigError(ValueError):
    def __init__(self, source: str, key: str, problem: str):
        self.source, self.key, self.problem = source, key, problem
        super().__init__(f"{source}: {key}: {problem}")


RECON_BANK_ONLY = ("post", "exception")
RECON_UTILITY_ONLY = ("reverse", "exception")
RECON_TOTALS_DIFFER = ("hold", "balance")
STATEMENT_SCHEMES = ("file", "ftp", "sftp")


@dataclass
class ReconPolicy:
    """How a bank's nightly reconciliation balances (``[bank.reconcile]``).

    ``bank_only``: ``post`` a record only the bank has, after the fact (补销), or
    leave it as an ``exception``.  ``utility_only``: ``reverse`` a payment the
    statement lacks at the utility (抹账), or leave it as an ``exception``.
    ``totals_differ``: when the statement's header disagrees with its details,
    ``hold`` every automatic change (all become exceptions) or ``balance``
    anyway.  ``post_policy``: the payment policy for posts after the fact.
    """

    bank_only: str = "post"
    utility_only: str = "reverse"
    totals_differ: str = "hold"
    post_policy: str = "any"
    workers: int = 1  # ledger calls in parallel while balancing (by customer)
    store_matched: bool = True  # keep one bg_recon_item row per matched record
    error_file: bool = True  # write the .DZCW error file where the plugin has one
    report_dir: str = ""  # default: {data_dir}/reports/{bank}
    pdf: bool = True
    lock_stale: float = 1800.0  # seconds after which a silent run's lock may be taken


@dataclass
class BankConfig:
    name: str
    plugin: str
    bank_code: str
    listen: list[str] = field(default_factory=list)
    allow: list[str] = field(default_factory=list)
    policy: str = "exact"
    mac: bool = False
    mac_key: bytes | None = None
    zmk: bytes | None = None
    keys: dict[str, bytes] = field(default_factory=dict)  # [bank.keys]: other names
    # every key read from the file: name -> (its check value as written, or None;
    # where it was written: "" for [[bank]] itself, "keys." for [bank.keys])
    stated_keys: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    latest_only_reversal: bool = False
    two_phase: bool = False
    confirm_timeout: float = 300.0
    idle_timeout: float | None = None
    cutoff_time: time | None = None
    exchange_dir: str = ""
    options: dict = field(default_factory=dict)
    # reconciliation (对账): where the statement comes from, and when
    statement_source: str = ""  # "" = the exchange folder; file:// ftp:// sftp:// URL
    statement_password: str | None = None  # FTP / SFTP password (never logged)
    statement_key_file: str | None = None  # SFTP private key file
    statement_host_key: str | None = None  # SFTP host key fingerprint, "SHA256:..."
    statement_retry: float = 300.0  # first wait when the file is not there yet
    statement_retry_max: float = 3600.0  # the wait doubles up to this
    statement_wait: float = 43200.0  # give up (run FAILED) after this long
    reconcile_time: time | None = None  # local time the nightly run starts
    reconcile_days_back: int = 1  # at reconcile_time on day T, reconcile T - this
    reconcile: ReconPolicy = field(default_factory=ReconPolicy)
    # the entries of BANK_DEFAULT_TYPES the bank's table left out: the plugin's
    # bank_defaults fill them in (check_plugins); a bank built in code states all
    defaulted: frozenset[str] = frozenset()
    # alerts (docs/console.rst, *Alerts*): quiet for longer than quiet_after seconds
    # within business_hours (None: never quiet); the statement expected by this time
    # (None: by reconcile_time)
    quiet_after: float | None = None
    business_hours: BusinessHours = ALL_DAY
    statement_expected: time | None = None

    def all_keys(self) -> BankKeys:
        """Every configured key: ``mac_key``, ``zmk`` and those of ``[bank.keys]``."""
        return BankKeys({**self.keys, **{k: getattr(self, k) for k in KEY_ENTRIES
                                         if getattr(self, k) is not None}})

    def key_entry(self, name: str, check: bool = False) -> str:
        """The configuration key naming the key ``name`` (or its check value):
        ``bank.NAME.mac_key``, ``bank.NAME.keys.hmac_key_kcv``."""
        where = self.stated_keys.get(name, (None, "" if name in KEY_ENTRIES else "keys."))[1]
        return f"bank.{self.name}.{where}{name}{'_kcv' if check else ''}"

    def statement_dir(self, data_dir: str = DEFAULT_DATA_DIR) -> str:
        """The local drop folder: the exchange folder (or ``{data_dir}/exchange/{name}``)."""
        if self.statement_source.startswith("file://"):
            return self.statement_source[len("file://"):]
        return self.exchange_dir or str(Path(data_dir) / "exchange" / self.name)

    def profile(self) -> BankProfile:
        return BankProfile(
            name=self.name, plugin=self.plugin, bank_code=self.bank_code,
            keys=self.all_keys(), mac=self.mac,
            allow=tuple(self.allow), latest_only_reversal=self.latest_only_reversal,
            idle_timeout=self.idle_timeout, options=dict(self.options),
            two_phase=self.two_phase, confirm_timeout=self.confirm_timeout,
        )

    def policy_(self) -> BankPolicy:
        return BankPolicy(
            name=self.name, bank_code=self.bank_code, policy=self.policy,
            latest_only_reversal=self.latest_only_reversal, two_phase=self.two_phase,
            confirm_timeout=self.confirm_timeout,
        )

    def __repr__(self) -> str:  # never show keys
        return f"BankConfig(name={self.name!r}, plugin={self.plugin!r}, code={self.bank_code!r})"


#: log levels, lowest first (``twisted.logger`` names; ``warning`` is read as ``warn``)
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")
LOG_FORMATS = ("text", "json")
LOG_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}  # 10MB = 10 MiB


@dataclass
class LogConfig:
    """The ``[log]`` table: what is logged, in which form, where, and for how long.

    ``levels`` maps a namespace (``bankgate.engine``, ``bankgate.store``,
    ``twisted``) to its level; a namespace without an entry takes the level of
    its nearest configured parent, else ``level``.  ``file`` empty: the log goes
    where twistd's ``--logfile`` / ``--nodaemon`` says.  ``rotate``: ``daily``
    (at local midnight), ``size`` (every ``max_bytes``) or
    ``never``; ``keep`` rotated files are kept, older ones deleted.
    ``bankgate/app/logs.py`` applies it.
    """

    level: str = "info"
    levels: dict[str, str] = field(default_factory=dict)
    format: str = "text"
    file: str = ""
    rotate: str = "daily"
    max_bytes: int = 0  # with rotate == "size"
    keep: int = 14


@dataclass
class ReportsConfig:
    """The ``[reports]`` table: custom report definitions (``docs/custom-reports.rst``).

    ``dir``: the folder of definition files (``*.toml``) that ``bankgate report NAME``
    finds and the service schedules; default ``{data_dir}/reports.d``.  ``output_dir``:
    where scheduled runs write, ``<output_dir>/<name>/<name>_<date>.<ext>``; default
    ``{data_dir}/reports``.
    """

    dir: str = ""
    output_dir: str = ""

    def definitions_dir(self, data_dir: str) -> str:
        return self.dir or str(Path(data_dir) / "reports.d")

    def outputs_dir(self, data_dir: str) -> str:
        return self.output_dir or str(Path(data_dir) / "reports")


#: where the embedded demo serves the console (``make run``: http://127.0.0.1:9180/)
DEFAULT_CONSOLE_LISTEN = "tcp:9180:interface=127.0.0.1"
#: the largest request body the console reads (bytes): its forms are small
CONSOLE_MAX_BODY = 64 * 1024


@dataclass
class ConsoleConfig:
    """The ``[console]`` table (``docs/console.rst``): the operator console.

    A file without a ``[console]`` table runs no console (``enabled`` false); with
    the table, ``enabled`` defaults to true and ``listen`` to loopback port 9180.
    ``metrics_listen``: serve ``/healthz`` and ``/metrics`` on this endpoint instead
    (without signing in) and not on ``listen``.  Sessions end after
    ``session_idle`` seconds without a request, and after ``session_lifetime`` in
    any case.  A request body over ``max_body`` bytes is refused (413) as soon as
    its size is known, before it is read whole.
    """

    enabled: bool = False
    listen: str = DEFAULT_CONSOLE_LISTEN
    metrics_listen: str | None = None
    session_idle: float = 1800.0
    session_lifetime: float = 12 * 3600.0
    max_body: int = CONSOLE_MAX_BODY


@dataclass
class WebhookConfig:
    """``[alerts.webhook]``: each alert raised and resolved is POSTed as JSON to ``url``."""

    url: str
    timeout: float = 10.0
    retries: int = 3

    def __repr__(self) -> str:  # a webhook URL often holds its token: show the host only
        return f"WebhookConfig(url={safe_webhook_url(self.url)!r})"


@dataclass
class MailConfig:
    """The ``[mail]`` table: the one SMTP server all the gateway's mail goes through
    (alerts, scheduled reports).  ``password`` is never logged nor shown."""

    host: str
    sender: str  # the key "from"
    port: int = 25
    starttls: bool = False
    user: str | None = None
    password: str | None = None
    timeout: float = 30.0

    def __repr__(self) -> str:  # never the password
        return (f"MailConfig(host={self.host!r}, port={self.port}, sender={self.sender!r},"
                f" starttls={self.starttls}, user={self.user!r})")


@dataclass
class EmailConfig:
    """``[alerts.email]``: the addresses alerts are mailed to (through ``[mail]``)."""

    to: list[str] = field(default_factory=list)


@dataclass
class AlertsConfig:
    """The ``[alerts]`` table (``docs/console.rst``, *Alerts*): what is checked how
    often, and where alerts are sent besides the log and the console.

    Alerts run when the table is there or the console runs (``enabled`` defaults to
    true then); ``enabled = false`` turns them off.  ``statement_grace``: a statement
    is missing this long after its expected time; ``reversal_pending_after``: a
    card-debit reversal pending longer than this is an alert.
    """

    enabled: bool = False
    interval: float = 60.0
    statement_grace: float = 900.0
    reversal_pending_after: float = 600.0
    webhook: WebhookConfig | None = None
    email: EmailConfig | None = None


def safe_webhook_url(url: str) -> str:
    """``scheme://host[:port]`` of a webhook URL: its path and query may hold a token."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    host = u.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{u.port}" if u.port else ""
    except ValueError:
        port = ""
    return f"{u.scheme}://{host}{port}"


@dataclass
class Config:
    source: str = "<embedded default>"
    data_dir: str = DEFAULT_DATA_DIR
    timezone: str = "Asia/Shanghai"
    plugin_dirs: list[str] = field(default_factory=list)
    db_url: str = ""
    db_threads: int = 4
    db_threads_given: bool = False  # [database] threads in the file
    db_echo: bool = False
    n8_create: bool = True  # create the reference N8 schema when it is missing
    demo_customers: int = 0  # seed this many demo customers into a new N8 schema
    n8: N8Mapping = field(default_factory=N8Mapping)
    # [n8.database]: N8 in a database of its own (None: in the gateway's, [database])
    n8_db_url: str | None = None
    n8_repair_every: float = 5.0  # seconds between the outbox repair job's runs
    # [n8.post]: how N8's writes are made (bankgate/store/n8adapters.py)
    n8_post: PostSettings = field(default_factory=PostSettings)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)  # [console]
    alerts: AlertsConfig = field(default_factory=AlertsConfig)  # [alerts]
    mail: MailConfig | None = None  # [mail]: the SMTP server; None: no mail is sent
    log_frames: bool = False  # raw frames (masked) in the debug log
    #: [gateway] workers: processes serving the banks (app/workers.py); 1: one process
    workers: int = 1
    #: [gateway] lease_ttl: seconds a scheduled job's lease lasts unrenewed (its holder
    #: dead) before another process takes the job over (domain/leases.py)
    lease_ttl: float = 60.0
    log: LogConfig = field(default_factory=LogConfig)
    supply: SupplySettings = field(default_factory=SupplySettings)  # [supply]
    reports: ReportsConfig = field(default_factory=ReportsConfig)  # [reports]
    banks: list[BankConfig] = field(default_factory=list)
    is_default: bool = False
    #: the file's bytes as read (load_config): the workers parse these, not the file again
    raw: bytes = field(default=b"", repr=False)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def bank(self, name: str) -> BankConfig:
        for b in self.banks:
            if b.name == name:
                return b
        raise KeyError(f"no bank named {name!r} (configured: {', '.join(self.bank_names())})")

    def bank_names(self) -> list[str]:
        return [b.name for b in self.banks]


# -- the embedded default ------------------------------------------------------

DEFAULT_PORTS = {"demo-fixed": 9101, "demo-delim": 9102, "demo-iso8583": 9103,
                 "demo-xml": 9104}


def default_config(data_dir: str = DEFAULT_DATA_DIR) -> Config:
    key = bytes.fromhex(DEMO_MAC_KEY)
    return Config(
        source="<embedded default>",
        data_dir=data_dir,
        db_url=f"sqlite:///{Path(data_dir) / 'bankgate.db'}",
        demo_customers=1000,
        is_default=True,
        console=ConsoleConfig(enabled=True, listen=DEFAULT_CONSOLE_LISTEN),
        alerts=AlertsConfig(enabled=True),  # shown in the console, sent nowhere
        banks=[
            BankConfig(
                name="demo-fixed", plugin="ref-fixed", bank_code="105210",
                listen=["tcp:9101:interface=127.0.0.1"], allow=["127.0.0.0/8"],
                policy="exact", mac=True, mac_key=key, cutoff_time=time(23, 30),
                exchange_dir=str(Path(data_dir) / "exchange" / "demo-fixed"),
                reconcile_time=time(2, 0),
                # invoices: a demo stock is issued on first start (service.py)
                options={"invoice": True, "invoice_low_water": 50},
            ),
            BankConfig(
                name="demo-delim", plugin="ref-delim", bank_code="103210",
                listen=["tcp:9102:interface=127.0.0.1"], allow=["127.0.0.0/8"],
                # policy: 540 pays exactly the bills it names; the policy never applies
                policy="exact", cutoff_time=time(23, 30),
                exchange_dir=str(Path(data_dir) / "exchange" / "demo-delim"),
                reconcile_time=time(2, 0),
                # withholding, and real-time card debits against a host the
                # gateway simulates itself on loopback (demo only)
                options={"withholding": True, "utility_code": "HEAT0001",
                         "debit_host": "tcp:host=127.0.0.1:port=9202",
                         "debit_host_simulate": True},
            ),
            BankConfig(
                name="demo-iso8583", plugin="ref-iso8583", bank_code="104210",
                listen=["tcp:9103:interface=127.0.0.1"], allow=["127.0.0.0/8"],
                # a payment may cover part of what is due (oldest first)
                policy="partial", mac=True, zmk=key, cutoff_time=time(23, 30),
                exchange_dir=str(Path(data_dir) / "exchange" / "demo-iso8583"),
                reconcile_time=time(2, 0),
            ),
            BankConfig(
                name="demo-xml", plugin="ref-xml", bank_code="301210",
                listen=["tcp:9104:interface=127.0.0.1"], allow=["127.0.0.0/8"],
                # two-phase: a prepay waits 600 s for its confirm; SM4 MAC, KCV 2677F4
                policy="exact", mac=True, mac_key=key, two_phase=True, confirm_timeout=600,
                cutoff_time=time(23, 30),
                exchange_dir=str(Path(data_dir) / "exchange" / "demo-xml"),
                reconcile_time=time(2, 0),
            ),
        ],
    )


# -- finding the file ------------------------------------------------------------------

#: the variable naming the configuration file when ``--config`` is not given
CONFIG_ENV = "BANKGATE_CONFIG"
#: where the configuration is looked for last; tests point this elsewhere, so they
#: never depend on the machine's /etc
SYSTEM_CONFIG = Path("/etc/bankgate/bankgate.toml")


@dataclass(frozen=True)
class ConfigChoice:
    """Which configuration a process runs on, and why.

    ``path`` is the file to load, ``None`` for the embedded demo; ``how`` says
    where it came from: ``--config``, ``$BANKGATE_CONFIG``, the system path,
    ``--demo``, or ``""`` (nothing found: the demo, unasked).
    """

    path: Path | None
    how: str

    @property
    def is_demo(self) -> bool:
        return self.path is None

    def notice(self, data_dir: str | None = None) -> str | None:
        """The one line to print on standard error when the demo runs unasked."""
        if self.path is not None or self.how == "--demo":
            return None
        where = Path(data_dir or DEFAULT_DATA_DIR)
        return (f"bankgate: WARNING: no configuration (no --config, no ${CONFIG_ENV}, no"
                f" {SYSTEM_CONFIG}): running the embedded DEMO configuration, data in"
                f" {where}/ (pass --demo to mean it)")


def find_config(path: str | Path | None = None, *, demo: bool = False,
                environ: dict | None = None) -> ConfigChoice:
    """The configuration to run on: ``path`` (``--config``), else
    ``$BANKGATE_CONFIG``, else :data:`SYSTEM_CONFIG` if it exists, else the
    embedded demo.  ``demo`` (``--demo``) asks for the demo and excludes ``path``.

    A file named by ``--config`` or ``$BANKGATE_CONFIG`` is never skipped: if
    it cannot be read, loading it says so (no quiet fall-back to the demo).
    """
    if demo:
        if path is not None:
            raise ConfigError(str(path), "(--demo)",
                              "give --config or --demo, not both")
        return ConfigChoice(None, "--demo")
    if path is not None:
        return ConfigChoice(Path(path), "--config")
    env = (os.environ if environ is None else environ).get(CONFIG_ENV, "")
    if env:
        if not Path(env).is_file():
            raise ConfigError(env, "(file)", f"no such file (named by ${CONFIG_ENV})")
        return ConfigChoice(Path(env), f"${CONFIG_ENV}")
    if SYSTEM_CONFIG.exists():
        return ConfigChoice(SYSTEM_CONFIG, str(SYSTEM_CONFIG))
    return ConfigChoice(None, "")


# -- loading and validation ----------------------------------------------------------


class _Section:
    """A TOML table with typed getters that name the key on error."""

    def __init__(self, source: str, prefix: str, data: dict):
        self.source, self.prefix, self.data = source, prefix, data
        self.used: set[str] = set()

    def key(self, k: str) -> str:
        return f"{self.prefix}{k}"

    def err(self, k: str, problem: str) -> ConfigError:
        return ConfigError(self.source, self.key(k), problem)

    def get(self, k, types, default=None, required=False, what=None):
        self.used.add(k)
        if k not in self.data:
            if required:
                raise self.err(k, f"missing; expected {what or _names(types)}")
            return default
        v = self.data[k]
        if isinstance(v, bool) and bool not in _tuple(types):
            raise self.err(k, f"expected {what or _names(types)}, got {v!r}")
        if not isinstance(v, types):
            raise self.err(k, f"expected {what or _names(types)}, got {type(v).__name__} {v!r}")
        return v

    def section(self, k: str) -> _Section:
        v = self.get(k, dict, default={}, what="a table")
        return _Section(self.source, self.key(k) + ".", v)

    def finish(self) -> None:
        extra = sorted(set(self.data) - self.used)
        if extra:
            raise self.err(extra[0], "unknown key (misspelt?)")


def _tuple(t):
    return t if isinstance(t, tuple) else (t,)


def _names(types) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "a list", dict: "a table"}
    return " or ".join(names.get(t, t.__name__) for t in _tuple(types))


#: the entries a key may be written under directly in ``[[bank]]`` (as before
#: ``[bank.keys]`` existed), each with its check value ``<entry>_kcv``.  Any other
#: key a plugin declares goes in ``[bank.keys]``.  Which keys a bank needs, their
#: lengths and check values are its plugin's declaration (``KeyKind``), checked by
#: :func:`check_plugins` once the plugins are loaded; parsing checks the spelling.
KEY_ENTRIES = ("mac_key", "zmk")
KEY_NAME = re.compile(r"[a-z][a-z0-9_]{0,30}")
_KEY_TEXT = ("hex digits (32 hex digits for a double-length 3DES or an SM4 key), 'text:...'"
             " or 'base64:...'")


def _key_value(sec: _Section, k: str) -> bytes | None:
    """A key as written: hex digits, ``text:`` + UTF-8 text, or ``base64:`` +
    base64.  The error never repeats what was written (it may be a real key)."""
    v = sec.get(k, str, what="a string of " + _KEY_TEXT)
    if v is None:
        return None
    if v.startswith("text:"):
        if len(v) == 5:
            raise sec.err(k, "empty after 'text:'")
        return v[5:].encode("utf-8")
    if v.startswith("base64:"):
        import base64
        import binascii

        try:
            out = base64.b64decode(v[7:].strip(), validate=True)
        except (binascii.Error, ValueError):
            raise sec.err(k, "not valid base64 after 'base64:'") from None
        if not out:
            raise sec.err(k, "empty after 'base64:'")
        return out
    t = v.strip()
    if not t or len(t) % 2 or not re.fullmatch(r"[0-9A-Fa-f]+", t):
        raise sec.err(k, "expected " + _KEY_TEXT)
    return bytes.fromhex(t)


def _check_text(sec: _Section, k: str) -> str | None:
    v = sec.get(k, str)
    if v is not None and not re.fullmatch(r"[0-9A-Fa-f]{2,32}", v.strip()):
        raise sec.err(k, "expected the key's check value in hex digits (like '08D7B4')")
    return v


def _parse_keys(sec: _Section, b: BankConfig) -> None:
    """``mac_key`` / ``zmk`` in ``[[bank]]`` and any name in ``[bank.keys]``,
    each with its ``_kcv``: the spelling only (see :func:`check_plugins`)."""
    for k in KEY_ENTRIES:
        key, check = _key_value(sec, k), _check_text(sec, k + "_kcv")
        if key is None and check is not None:
            raise sec.err(k + "_kcv", f"given without {k}")
        if key is not None:
            setattr(b, k, key)
            b.stated_keys[k] = (check, "")
    ks = sec.section("keys")
    for k in ks.data:
        if k.endswith("_kcv"):
            continue
        if not KEY_NAME.fullmatch(k):
            raise ks.err(k, "expected a key name: lower-case letters, digits and '_'")
        if k in b.stated_keys:
            raise ks.err(k, f"given twice: as bank.{b.name}.{k} and in [bank.keys]")
        key, check = _key_value(ks, k), _check_text(ks, k + "_kcv")
        if k in KEY_ENTRIES:
            setattr(b, k, key)
        else:
            b.keys[k] = key
        b.stated_keys[k] = (check, "keys.")
    for k in ks.data:
        if k.endswith("_kcv") and k[:-4] not in ks.data:
            raise ks.err(k, f"given without {k[:-4]}")
    ks.finish()


def _endpoint(sec: _Section, k: str, v: str) -> str:
    if not re.match(r"^(tcp|ssl|tcp6|unix):", v):
        raise sec.err(k, f"expected a Twisted endpoint string like 'tcp:9101:interface=127.0.0.1',"
                         f" got {v!r}")
    return v


#: the most worker processes ``[gateway] workers`` (or ``twistd bankgate --workers``) asks for
MAX_WORKERS = 64


def workers_problem(db_url: str, workers: int, what: str = "") -> str | None:
    """Why ``workers`` processes cannot run on ``db_url`` (``what``: which database, when
    not the gateway's own), or ``None``: SQLite takes one writer at a time, and a second
    process would wait on its lock (or fail) while the first posts."""
    backend = db_url.split(":", 1)[0].split("+", 1)[0].lower()
    if workers > 1 and _DB_ALIASES.get(backend, backend) == "sqlite":
        return ("SQLite keeps one writer process: workers = 1, or use a database server"
                + (f" for {what}" if what else ""))
    return None


def with_workers(cfg: Config, workers: int, key: str = "(twistd --workers)") -> Config:
    """``cfg`` with ``workers`` processes (``twistd bankgate --workers N``, which wins
    over ``[gateway] workers``); raises :class:`ConfigError` naming ``key``."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(cfg.source, key, f"expected 1 to {MAX_WORKERS}, got {workers!r}")
    problem = workers_problem(cfg.db_url, workers) or (
        cfg.n8_db_url and workers_problem(cfg.n8_db_url, workers, "N8's database"))
    if problem:
        raise ConfigError(cfg.source, key, problem)
    cfg.workers = workers
    if not cfg.db_threads_given:
        cfg.db_threads = default_db_threads(cfg)
    return cfg


def default_db_threads(cfg: Config, one_process: bool | None = None) -> int:
    """``[database] threads`` when the file does not say: 4; 8 when N8 is in a
    database of its own and one process serves (``one_process``; default: one
    worker).  A request then holds its thread while it waits for two servers, and
    twice the threads keep both busy (docs/n8-databases.rst, "Speed"); with several
    workers the processes give that, and each would open twice the connections."""
    one = cfg.workers == 1 if one_process is None else one_process
    return 8 if cfg.n8_db_url is not None and one else 4


def load_config(path: str | Path | None, *, data_dir: str | None = None) -> Config:
    """Load and validate ``path``; ``None`` gives the embedded default.

    Which path a process loads is :func:`find_config`'s answer.  Besides the
    keys, the database URL is checked here: a dialect SQLAlchemy does not know
    or a driver that is not installed is a ``database.url`` error, with the
    spelling to use (:func:`check_db_url`)."""
    if path is None:
        return default_config(data_dir or DEFAULT_DATA_DIR)
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(source, "(file)", f"cannot read: {e.strerror}") from None
    return config_from_bytes(raw, source, data_dir=data_dir)


def config_from_bytes(raw: bytes, source: str, *, data_dir: str | None = None) -> Config:
    """The configuration in ``raw`` (a file's bytes, named ``source`` in errors),
    checked as :func:`load_config` checks a file.  A worker process (``app/workers.py``)
    parses the bytes its supervisor read, so both run on the same configuration."""
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(source, "(file)", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, "(syntax)", str(e)) from None
    cfg = parse_config(data, source, data_dir=data_dir)
    problem = check_db_url(cfg.db_url)
    if problem:
        raise ConfigError(source, "database.url", problem)
    cfg.raw = raw
    return cfg


#: the URL spelling the gateway is tested or documented with, per database:
#: (scheme to write, its driver's module, the ``bankgate[extra]`` installing it)
DB_SPELLINGS = {
    "sqlite": ("sqlite", "sqlite3", None),
    "postgresql": ("postgresql+psycopg", "psycopg", "postgres"),
    "mysql": ("mysql+pymysql", "pymysql", "mysql"),
    "mariadb": ("mariadb+pymysql", "pymysql", "mysql"),
    "mssql": ("mssql+pyodbc", "pyodbc", "mssql"),
    "oracle": ("oracle+oracledb", "oracledb", "oracle"),
    "db2": ("db2+ibm_db", "ibm_db", "db2"),
}
#: names people write for those databases that SQLAlchemy does not know
_DB_ALIASES = {
    "postgres": "postgresql", "pg": "postgresql", "pgsql": "postgresql",
    "psql": "postgresql", "postgre": "postgresql", "sqlite3": "sqlite",
    "sqllite": "sqlite", "sqlserver": "mssql", "sqlsrv": "mssql", "ibm_db_sa": "db2",
    "ibmdb2": "db2", "oracledb": "oracle",
}


def check_db_url(url: str) -> str | None:
    """What is wrong with ``url`` before connecting, or ``None``.

    Catches a database name SQLAlchemy does not know (``postgres://``), and a
    driver that is not installed (``mysql://`` means MySQLdb; this gateway
    installs PyMySQL), each with the spelling to write instead.  Whether the
    server answers is checked at start (:mod:`bankgate.app.startup`).
    """
    import logging

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        u = make_url(url)
    except ArgumentError:
        return "expected an SQLAlchemy URL like 'postgresql+psycopg://user@host/db'"
    name = u.drivername
    backend = name.split("+", 1)[0]
    known = _DB_ALIASES.get(backend.lower(), backend.lower())
    try:
        dialect = u.get_dialect()
    except NoSuchModuleError:
        if known in DB_SPELLINGS:
            return f"{name!r} is not a database SQLAlchemy knows: write {_spelling(known)}"
        return (f"{name!r} is not a database SQLAlchemy knows (write one of "
                f"{', '.join(repr(s + '://') for s, _, _ in DB_SPELLINGS.values())})")
    # some dialects (ibm_db_sa) log a traceback of their own when the driver is missing
    root = dialect.__module__.split(".")[0]
    quiet = logging.getLogger(root if root != "sqlalchemy" else "bankgate.no-such-logger")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL + 1)
    try:
        dialect.import_dbapi()
    except ImportError as e:
        missing = getattr(e, "name", None) or str(e)
        spell, module, _ = DB_SPELLINGS.get(known, (None, None, None))
        if spell and spell != name and _importable(module):
            # mysql:// and mysql+mysqldb:// mean mysqlclient, the C driver: an extra
            c_driver = (", or install MariaDB's C driver: pip install 'bankgate[mysqlclient]'"
                        " (it builds against libmariadb-dev)" if missing == "MySQLdb" else "")
            return (f"{name!r} needs the driver {missing!r}, which is not installed:"
                    f" write {_spelling(known)}{c_driver}")
        extra = DB_SPELLINGS.get(known, (None, None, None))[2]
        how = f" (pip install 'bankgate[{extra}]')" if extra else ""
        return f"{name!r} needs the driver {missing!r}, which is not installed{how}"
    finally:
        quiet.setLevel(level)
    return None


def _spelling(backend: str) -> str:
    spell, module, extra = DB_SPELLINGS[backend]
    rest = ":///path/to/file.db" if backend == "sqlite" else "://user@host/database"
    text = f"'{spell}{rest}'"
    if not _importable(module):
        text += f" and pip install 'bankgate[{extra}]'"
    return text


def _importable(module: str) -> bool:
    from importlib.util import find_spec

    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def parse_config(data: dict, source: str = "<config>", *, data_dir: str | None = None) -> Config:
    top = _Section(source, "", data)
    cfg = Config(source=source)

    g = top.section("gateway")
    # --data-dir (``data_dir``) wins over the file's; the file's is still read and checked
    cfg.data_dir = data_dir or g.get("data_dir", str, DEFAULT_DATA_DIR)
    if data_dir:
        g.get("data_dir", str)
    cfg.timezone = g.get("timezone", str, "Asia/Shanghai")
    try:
        ZoneInfo(cfg.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise g.err("timezone", f"unknown time zone {cfg.timezone!r}") from None
    cfg.plugin_dirs = g.get("plugin_dirs", list, [])
    for i, d in enumerate(cfg.plugin_dirs):
        if not isinstance(d, str) or not Path(d).is_dir():
            raise g.err(f"plugin_dirs[{i}]", f"expected an existing folder, got {d!r}")
    cfg.log_frames = g.get("log_frames", bool, False)
    cfg.workers = g.get("workers", int, 1)
    cfg.lease_ttl = _seconds(g, "lease_ttl", 60, 10, 3600)
    if not 1 <= cfg.workers <= MAX_WORKERS:
        raise g.err("workers", f"expected 1 to {MAX_WORKERS}, got {cfg.workers!r}")
    g.finish()

    db = top.section("database")
    cfg.db_url = db.get("url", str, f"sqlite:///{Path(cfg.data_dir) / 'bankgate.db'}")
    if "://" not in cfg.db_url:
        raise db.err("url", "expected an SQLAlchemy URL like 'postgresql+psycopg://user@host/db'")
    threads = db.get("threads", int)  # default: once N8's database is known
    if threads is not None and not 1 <= threads <= 64:
        raise db.err("threads", "expected 1 to 64")
    cfg.db_echo = db.get("echo", bool, False)
    db.finish()
    problem = workers_problem(cfg.db_url, cfg.workers)
    if problem:
        raise g.err("workers", problem)

    n8 = top.section("n8")
    cfg.n8_create = n8.get("create", bool, False)
    cfg.demo_customers = n8.get("demo_customers", int, 0)
    if cfg.demo_customers < 0:
        raise n8.err("demo_customers", "expected 0 or more")
    schema = n8.get("schema", str)
    tables = n8.section("tables")
    for k in tables.data:
        tables.get(k, str)
        if k not in REFERENCE:
            raise tables.err(k, f"unknown N8 table (known: {', '.join(REFERENCE)})")
    tables.finish()
    columns = n8.section("columns")
    colmap: dict[str, dict[str, str]] = {}
    for t in columns.data:
        if t not in REFERENCE:
            raise columns.err(t, f"unknown N8 table (known: {', '.join(REFERENCE)})")
        sec = columns.section(t)
        known = [c[0] for c in REFERENCE[t][1]]
        for c in sec.data:
            sec.get(c, str)
            if c not in known:
                raise sec.err(c, f"unknown column (known: {', '.join(known)})")
        sec.finish()
        colmap[t] = dict(sec.data)
    columns.finish()
    # value representations and code maps (docs/n8-mapping.rst, "Value mapping")
    values_sec = n8.section("values")
    values: dict[str, dict[str, str]] = {}
    for t in values_sec.data:
        sec = values_sec.section(t)
        values[t] = {c: sec.get(c, str) for c in sec.data}
    codes_sec = n8.section("codes")
    codes: dict[str, dict[str, list[str]]] = {}
    for name in codes_sec.data:
        sec = codes_sec.section(name)
        codes[name] = {}
        for lg in sec.data:
            v = sec.get(lg, (str, list), what="a code or a list of codes")
            v = [v] if isinstance(v, str) else v
            if not v or not all(isinstance(x, str) and x for x in v):
                raise sec.err(lg, f"expected a list of one or more codes (text), got {v!r}")
            codes[name][lg] = v
    _parse_n8_database(cfg, n8)
    cfg.db_threads_given = threads is not None
    cfg.db_threads = threads or default_db_threads(cfg)
    cfg.n8_post = _parse_n8_post(n8, cfg.n8_db_url or cfg.db_url)
    n8.finish()
    cfg.n8 = N8Mapping(tables=dict(tables.data), columns=colmap, schema=schema,
                       values=values, codes=codes)
    for key, problem in cfg.n8.problems():
        raise ConfigError(source, key, problem)

    cfg.console = _parse_console(top, "console" in data)
    cfg.mail = _parse_mail(top) if "mail" in data else None
    cfg.alerts = _parse_alerts(top, "alerts" in data, cfg.console.enabled, cfg.mail)

    cfg.log = _parse_log(top.section("log"))
    cfg.supply = _parse_supply(top.section("supply"), cfg.n8_create)
    rep = top.section("reports")
    cfg.reports = ReportsConfig(dir=rep.get("dir", str, ""),
                                output_dir=rep.get("output_dir", str, ""))
    rep.finish()

    banks = top.get("bank", list, [], what="an array of tables ([[bank]])")
    names: set[str] = set()
    for i, b in enumerate(banks):
        if not isinstance(b, dict):
            raise ConfigError(source, f"bank[{i}]", "expected a table")
        cfg.banks.append(_parse_bank(_Section(source, f"bank[{i}].", b), names))
    iface = cfg.n8_post.interface
    two_phase = [b.name for b in cfg.banks if b.two_phase]
    if iface is not None and two_phase and "confirm" not in iface.kinds:
        raise ConfigError(source, "n8.post.interface.kinds.confirm",
                          f"missing; bank {two_phase[0]} is two-phase (its confirms)")
    top.finish()
    return cfg


def _parse_bank(sec: _Section, names: set[str]) -> BankConfig:
    name = sec.get("name", str, required=True)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", name):
        raise sec.err("name", "expected 1-32 letters, digits, '-', '_' or '.'")
    if name.lower() == COUNTER.name:
        raise sec.err("name", f"{name!r} is reserved for the utility's own counter (柜台收费):"
                              " give the bank another name")
    if name in names:
        raise sec.err("name", f"bank {name!r} is configured twice")
    names.add(name)
    sec.prefix = f"bank.{name}."
    b = BankConfig(
        name=name,
        plugin=sec.get("plugin", str, required=True),
        bank_code=sec.get("bank_code", str, required=True),
    )
    if not re.fullmatch(r"[0-9A-Za-z]{1,11}", b.bank_code):
        raise sec.err("bank_code", "expected 1-11 letters or digits")
    listen = sec.get("listen", (str, list), [])
    b.listen = [listen] if isinstance(listen, str) else list(listen)
    for i, ep in enumerate(b.listen):
        if not isinstance(ep, str):
            raise sec.err(f"listen[{i}]", "expected an endpoint string")
        _endpoint(sec, f"listen[{i}]", ep)
    b.allow = sec.get("allow", list, [])
    import ipaddress

    for i, net in enumerate(b.allow):
        try:
            ipaddress.ip_network(str(net), strict=False)
        except ValueError:
            raise sec.err(f"allow[{i}]", f"expected an address or CIDR network, got {net!r}") \
                from None
    b.policy = sec.get("policy", str, "exact")
    if b.policy not in POLICIES:
        raise sec.err("policy", f"expected one of {', '.join(POLICIES)}, got {b.policy!r}")
    b.mac = sec.get("mac", bool, False)
    _parse_keys(sec, b)  # which of them the bank needs: check_plugins, from its plugin
    b.defaulted = frozenset(k for k in BANK_DEFAULT_TYPES if k not in sec.data)
    b.latest_only_reversal = sec.get("latest_only_reversal", bool, False)
    b.two_phase = sec.get("two_phase", bool, False)
    b.confirm_timeout = _seconds(sec, "confirm_timeout", 300, 1, 7 * 86400)
    idle = sec.get("idle_timeout", (int, float))
    if idle is not None and not 1 <= idle <= 86400:
        raise sec.err("idle_timeout", "expected seconds between 1 and 86400")
    b.idle_timeout = float(idle) if idle is not None else None
    cut = sec.get("cutoff_time", str)
    if cut is not None:
        m = re.fullmatch(r"([01][0-9]|2[0-3]):([0-5][0-9])", cut)
        if not m:
            raise sec.err("cutoff_time", f"expected HH:MM (24-hour local time), got {cut!r}")
        b.cutoff_time = time(int(m.group(1)), int(m.group(2)))
    b.exchange_dir = sec.get("exchange_dir", str, "")
    b.options = sec.get("options", dict, {})
    _parse_reconcile(sec, b)
    _parse_bank_alerts(sec, b)
    sec.finish()
    return b


def _hhmm(sec: _Section, k: str) -> time | None:
    v = sec.get(k, str)
    if v is None:
        return None
    m = re.fullmatch(r"([01][0-9]|2[0-3]):([0-5][0-9])", v)
    if not m:
        raise sec.err(k, f"expected HH:MM (24-hour local time), got {v!r}")
    return time(int(m.group(1)), int(m.group(2)))


def _seconds(sec: _Section, k: str, default: float, low: float, high: float) -> float:
    v = sec.get(k, (int, float), default)
    if not low <= v <= high:
        raise sec.err(k, f"expected seconds between {low:g} and {high:g}, got {v!r}")
    return float(v)


def _choice(sec: _Section, k: str, choices: tuple, default: str) -> str:
    v = sec.get(k, str, default)
    if v not in choices:
        raise sec.err(k, f"expected one of {', '.join(choices)}, got {v!r}")
    return v


def _parse_reconcile(sec: _Section, b: BankConfig) -> None:
    """The reconciliation keys of one bank: statement source, schedule, policy."""
    from urllib.parse import urlsplit

    src = sec.get("statement_source", str, "")
    if src:
        u = urlsplit(src)
        if u.scheme not in STATEMENT_SCHEMES:
            raise sec.err("statement_source",
                          f"expected a file://, ftp:// or sftp:// URL, got {src!r}")
        if u.scheme == "file":
            if not u.path:
                raise sec.err("statement_source", "expected file:///a/folder")
        else:
            if not u.hostname:
                raise sec.err("statement_source", f"expected {u.scheme}://user@host[:port]/folder")
            try:
                u.port  # noqa: B018 - validates the port
            except ValueError:
                raise sec.err("statement_source", "the port is not a number 1-65535") from None
            if u.password:
                raise sec.err("statement_source",
                              "put the password in statement_password, not in the URL")
    b.statement_source = src
    b.statement_password = sec.get("statement_password", str)
    b.statement_key_file = sec.get("statement_key_file", str)
    if b.statement_key_file is not None and not Path(b.statement_key_file).is_file():
        raise sec.err("statement_key_file", f"no such file {b.statement_key_file!r}")
    b.statement_host_key = sec.get("statement_host_key", str)
    if b.statement_host_key is not None and not re.fullmatch(
        r"SHA256:[A-Za-z0-9+/]{43}=?|([0-9a-fA-F]{2}:){15}[0-9a-fA-F]{2}", b.statement_host_key
    ):
        raise sec.err("statement_host_key",
                      "expected a host key fingerprint like 'SHA256:...' (ssh-keygen -l -f)"
                      " or 16 hex pairs 'aa:bb:...'")
    if src.startswith("sftp://"):
        if b.statement_host_key is None:
            raise sec.err("statement_host_key",
                          "missing; required with an sftp:// statement_source (the server's"
                          " host key fingerprint, so a man in the middle is refused)")
        if b.statement_password is None and b.statement_key_file is None:
            raise sec.err("statement_password",
                          "missing; an sftp:// source needs statement_password or"
                          " statement_key_file")
    elif src.startswith("ftp://"):
        if b.statement_key_file is not None or b.statement_host_key is not None:
            key = "statement_key_file" if b.statement_key_file else "statement_host_key"
            raise sec.err(key, "only for sftp:// sources")
    elif b.statement_password or b.statement_key_file or b.statement_host_key:
        key = next(k for k in ("statement_password", "statement_key_file",
                               "statement_host_key") if getattr(b, k))
        raise sec.err(key, "only for ftp:// or sftp:// statement sources")
    b.statement_retry = _seconds(sec, "statement_retry", 300, 1, 86400)
    b.statement_retry_max = _seconds(sec, "statement_retry_max", 3600, 1, 86400)
    if b.statement_retry_max < b.statement_retry:
        raise sec.err("statement_retry_max", "expected at least statement_retry")
    b.statement_wait = _seconds(sec, "statement_wait", 43200, 0, 7 * 86400)
    b.reconcile_time = _hhmm(sec, "reconcile_time")
    days = sec.get("reconcile_days_back", int, 1)
    if not 0 <= days <= 7:
        raise sec.err("reconcile_days_back", f"expected 0 to 7, got {days!r}")
    b.reconcile_days_back = days
    r = sec.section("reconcile")
    p = ReconPolicy()
    p.bank_only = _choice(r, "bank_only", RECON_BANK_ONLY, p.bank_only)
    p.utility_only = _choice(r, "utility_only", RECON_UTILITY_ONLY, p.utility_only)
    p.totals_differ = _choice(r, "totals_differ", RECON_TOTALS_DIFFER, p.totals_differ)
    p.post_policy = _choice(r, "post_policy", POLICIES, p.post_policy)
    p.workers = r.get("workers", int, p.workers)
    if not 1 <= p.workers <= 32:
        raise r.err("workers", f"expected 1 to 32, got {p.workers!r}")
    p.store_matched = r.get("store_matched", bool, p.store_matched)
    p.error_file = r.get("error_file", bool, p.error_file)
    p.report_dir = r.get("report_dir", str, p.report_dir)
    p.pdf = r.get("pdf", bool, p.pdf)
    p.lock_stale = _seconds(r, "lock_stale", p.lock_stale, 60, 86400)
    r.finish()
    b.reconcile = p


def _log_level(sec: _Section, k: str, v, key: str | None = None) -> str:
    level = v.lower().replace("warning", "warn") if isinstance(v, str) else None
    if level not in LOG_LEVELS:
        raise ConfigError(sec.source, key or sec.key(k),
                          f"expected one of {', '.join(LOG_LEVELS)}, got {v!r}")
    return level


def _parse_log(sec: _Section) -> LogConfig:
    """The ``[log]`` table (``docs/configuration.rst``, *[log]*)."""
    lc = LogConfig()
    lc.level = _log_level(sec, "level", sec.get("level", str, lc.level))
    levels = sec.section("levels")
    for ns, v in levels.data.items():
        levels.used.add(ns)
        key = f'log.levels."{ns}"'
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*", ns):
            raise ConfigError(sec.source, key, "expected a namespace like 'bankgate.engine'")
        lc.levels[ns] = _log_level(levels, ns, v, key)
    lc.format = _choice(sec, "format", LOG_FORMATS, lc.format)
    lc.file = sec.get("file", str, "")
    if lc.file and (lc.file.endswith(("/", "\\")) or Path(lc.file).is_dir()):
        raise sec.err("file", f"expected a file name, got the folder {lc.file!r}")
    rotate = sec.get("rotate", (str, int), lc.rotate, what="'daily', 'never' or a size")
    if rotate in ("daily", "never"):
        lc.rotate = rotate
    else:
        m = re.fullmatch(r"([0-9]+) ?([KMG]?)B?", str(rotate).strip().upper())
        size = int(m.group(1)) * LOG_SIZE_UNITS[m.group(2)] if m else 0
        if not 1024 <= size <= 1024 ** 4:
            raise sec.err("rotate", "expected 'daily', 'never' or a size from 1KB to 1024GB"
                                    f" like '10MB', got {rotate!r}")
        lc.rotate, lc.max_bytes = "size", size
    lc.keep = sec.get("keep", int, lc.keep)
    if not 1 <= lc.keep <= 3650:
        raise sec.err("keep", f"expected 1 to 3650 rotated files, got {lc.keep!r}")
    sec.finish()
    return lc


def _parse_console(top: _Section, present: bool) -> ConsoleConfig:
    """The ``[console]`` table (``docs/console.rst``); absent: no console."""
    sec = top.section("console")
    c = ConsoleConfig(enabled=present)
    c.enabled = sec.get("enabled", bool, c.enabled)
    c.listen = _endpoint(sec, "listen", sec.get("listen", str, c.listen))
    metrics = sec.get("metrics_listen", str)
    c.metrics_listen = _endpoint(sec, "metrics_listen", metrics) if metrics else None
    if c.metrics_listen is not None and c.metrics_listen == c.listen:
        raise sec.err("metrics_listen", "the same endpoint as listen: give another one, or"
                                        " leave it out to serve /healthz and /metrics there")
    c.session_idle = _seconds(sec, "session_idle", c.session_idle, 60, 86400)
    c.session_lifetime = _seconds(sec, "session_lifetime", c.session_lifetime, 300, 7 * 86400)
    if c.session_lifetime < c.session_idle:
        raise sec.err("session_lifetime", "expected at least session_idle")
    c.max_body = sec.get("max_body", int, c.max_body)
    if not 1024 <= c.max_body <= 16 * 1024 * 1024:
        raise sec.err("max_body", f"expected bytes between 1024 and 16777216, got"
                                  f" {c.max_body!r}")
    sec.finish()
    return c


EMAIL_ADDRESS = re.compile(r"[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+")


def _parse_mail(top: _Section) -> MailConfig:
    """The ``[mail]`` table (``docs/configuration.rst``, *[mail]*): the SMTP server.
    No error repeats the password."""
    m = top.section("mail")
    host = m.get("host", str, required=True, what="the SMTP server's name or address")
    if not re.fullmatch(r"[A-Za-z0-9.:_-]{1,253}", host):
        raise m.err("host", f"expected a host name or address, got {host!r}")
    sender = m.get("from", str, required=True, what="the sender's address")
    if not EMAIL_ADDRESS.fullmatch(sender):
        raise m.err("from", f"expected an e-mail address like 'bankgate@example.com',"
                            f" got {sender!r}")
    starttls = m.get("starttls", bool, False)
    port = m.get("port", int, 587 if starttls else 25)
    if not 1 <= port <= 65535:
        raise m.err("port", f"expected 1 to 65535, got {port!r}")
    user = m.get("user", str)
    if "password" in m.data and not isinstance(m.data["password"], str):
        raise m.err("password", "expected a string (in quotes)")  # never what was written
    password = m.get("password", str)
    if (user is None) != (password is None):
        raise m.err("password" if user is not None else "user",
                    "missing; user and password go together (or leave both out)")
    if password is not None and not starttls:
        raise m.err("password", "given without starttls = true: the password would"
                                " cross the network in clear text")
    mail = MailConfig(host=host, sender=sender, port=port, starttls=starttls, user=user,
                      password=password, timeout=_seconds(m, "timeout", 30, 1, 300))
    m.finish()
    return mail


def _parse_alerts(top: _Section, present: bool, console: bool,
                  mail: MailConfig | None = None) -> AlertsConfig:
    """The ``[alerts]`` table (``docs/configuration.rst``, *[alerts]*); absent: alerts
    run with the console, sent nowhere but the log and the console.  ``[alerts.email]
    to`` needs ``mail``, the ``[mail]`` table its messages go through."""
    from urllib.parse import urlsplit

    sec = top.section("alerts")
    a = AlertsConfig(enabled=present or console)
    a.enabled = sec.get("enabled", bool, a.enabled)
    a.interval = _seconds(sec, "interval", a.interval, 10, 3600)
    a.statement_grace = _seconds(sec, "statement_grace", a.statement_grace, 0, 86400)
    a.reversal_pending_after = _seconds(sec, "reversal_pending_after",
                                        a.reversal_pending_after, 0, 7 * 86400)
    if "webhook" in sec.data:
        w = sec.section("webhook")
        url = w.get("url", str, required=True, what="an http:// or https:// URL")
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise w.err("url", "expected an http:// or https:// URL like"
                               " 'https://hooks.example.com/bankgate'")
        try:
            u.port  # noqa: B018 - validates the port
        except ValueError:
            raise w.err("url", "the port is not a number 1-65535") from None
        retries = w.get("retries", int, 3)
        if not 0 <= retries <= 10:
            raise w.err("retries", f"expected 0 to 10, got {retries!r}")
        a.webhook = WebhookConfig(url=url, timeout=_seconds(w, "timeout", 10, 1, 300),
                                  retries=retries)
        w.finish()
    if "email" in sec.data:
        e = sec.section("email")
        to = e.get("to", (str, list), required=True, what="a list of e-mail addresses")
        to = [to] if isinstance(to, str) else list(to)
        if not to:
            raise e.err("to", "expected at least one e-mail address")
        for i, addr in enumerate(to):
            if not isinstance(addr, str) or not EMAIL_ADDRESS.fullmatch(addr):
                raise e.err(f"to[{i}]", f"expected an e-mail address like"
                                        f" 'ops@example.com', got {addr!r}")
        if mail is None:
            raise e.err("to", "alerts are mailed through the SMTP server of [mail], which is"
                              " not configured: add a [mail] table with host and from"
                              " (or leave [alerts.email] out)")
        a.email = EmailConfig(to=to)
        e.finish()
    sec.finish()
    return a


def _parse_bank_alerts(sec: _Section, b: BankConfig) -> None:
    """A bank's alert keys: ``quiet_after``, ``business_hours``, ``statement_expected``."""
    if "quiet_after" in sec.data:
        b.quiet_after = _seconds(sec, "quiet_after", 900, 60, 7 * 86400)
    hours = sec.get("business_hours", str)
    if hours is not None:
        if b.quiet_after is None:
            raise sec.err("business_hours", "given without quiet_after: set quiet_after"
                                            " (seconds) to watch the bank in these hours")
        try:
            b.business_hours = BusinessHours.parse(hours)
        except ValueError as e:
            raise sec.err("business_hours", str(e)) from None
    b.statement_expected = _hhmm(sec, "statement_expected")


def _parse_n8_database(cfg: Config, n8: _Section) -> None:
    """``[n8.database]``: N8's own database, apart from the gateway's ``[database]``
    (docs/n8-databases.rst).  Absent: N8's tables are in the gateway's database."""
    if "database" not in n8.data:
        return
    sec = n8.section("database")
    url = sec.get("url", str, required=True)
    if "://" not in url:
        raise sec.err("url", "expected an SQLAlchemy URL like 'mysql+pymysql://user@host/n8'")
    problem = check_db_url(url)
    if problem:
        raise sec.err("url", problem)
    cfg.n8_repair_every = _seconds(sec, "repair_every", 5, 1, 3600)
    sec.finish()
    if url != cfg.db_url:
        cfg.n8_db_url = url
        problem = workers_problem(url, cfg.workers, "N8's database")
        if problem:
            raise sec.err("url", problem)


def _parse_n8_post(n8: _Section, n8_url: str) -> PostSettings:
    """``[n8.post]``: the posting adapter that writes N8 (docs/n8-mapping.rst,
    "Posting adapters"); ``n8_url`` is N8's database, for what its dialect allows."""
    if "post" not in n8.data:
        return PostSettings()
    sec = n8.section("post")
    adapter = _choice(sec, "adapter", na.ADAPTERS, "direct")
    for other in ("procedure", "interface"):
        if other in sec.data and other != adapter:
            raise sec.err(other, f"given, but adapter = {adapter!r}: set adapter = "
                                 f"{other!r} or remove [n8.post.{other}]")
    if adapter != "direct" and adapter not in sec.data:
        raise sec.err(adapter, f"missing; adapter = {adapter!r} needs [n8.post.{adapter}]")
    out = PostSettings()
    if adapter == "procedure":
        dialect = n8_url.split("://", 1)[0].split("+", 1)[0]
        if dialect == "sqlite":
            raise sec.err("adapter", "SQLite has no stored procedures: N8's database "
                                     "must be PostgreSQL, MariaDB/MySQL, SQL Server, "
                                     "Oracle or DB2 for adapter = \"procedure\"")
        out = PostSettings(adapter, procedure=_parse_n8_procedure(sec.section("procedure"),
                                                                  dialect))
    elif adapter == "interface":
        out = PostSettings(adapter, interface=_parse_n8_interface(sec.section("interface")))
    sec.finish()
    return out


def _n8_name(sec: _Section, k: str, required: bool = False, column: bool = False):
    v = sec.get(k, str, required=required, what="a column name" if column else "a name")
    if v is not None and not (na.COLUMN if column else na.NAME).fullmatch(v):
        raise sec.err(k, "expected letters, digits and _" + (
            "" if column else ", with one optional schema dot (like \"N8.N8_JF\")")
            + f", got {v!r}")
    return v


def _parse_n8_procedure(p: _Section, dialect: str):
    names = {r: _n8_name(p, r, required=r in ("pay", "cancel")) for r in na.ROUTINES}
    params = {}
    for r in na.ROUTINES:
        k = f"{r}_params"
        default = list(getattr(na.ProcedureSettings, k))
        v = p.get(k, list, default, what="a list of parameter names")
        known = na.PARAMS[r]
        for x in v:
            if x not in known:
                raise p.err(k, f"unknown parameter {x!r} (known: {', '.join(known)})")
        if len(set(v)) != len(v):
            raise p.err(k, "a parameter is listed twice")
        if k in p.data and not names[r]:
            raise p.err(k, f"given without {r} (the routine's name)")
        params[k] = tuple(v)
    kind = _choice(p, "kind", ("procedure", "function"), "procedure")
    result = _choice(p, "result", ("none", "row"), "none")
    codes = {}
    for k, default in (("ok", ["0"]), ("already", [])):
        v = p.get(k, list, default, what="a list of codes (text)")
        if not all(isinstance(x, str) and x for x in v):
            raise p.err(k, f"expected a list of codes (text, like \"0\"), got {v!r}")
        if k in p.data and result == "none":
            raise p.err(k, "read only with result = \"row\" (the call returns its code)")
        codes[k] = tuple(v)
    if result == "row" and not codes["ok"]:
        raise p.err("ok", "expected at least one code meaning done")
    both = set(codes["ok"]) & set(codes["already"])
    if both:
        raise p.err("already", f"code {sorted(both)[0]!r} is also in ok")
    s = na.ProcedureSettings(pay=names["pay"], cancel=names["cancel"], item=names["item"],
                             confirm=names["confirm"], kind=kind, result=result, **params,
                             **codes)
    problem = na.procedure_problem(dialect, s)
    if problem is not None:
        raise p.err(problem[0], problem[1])
    p.finish()
    return s


def _parse_n8_interface(t: _Section):
    table = _n8_name(t, "table", required=True)
    columns = {}
    for f in na.INTERFACE_FIELDS:
        v = _n8_name(t, f, required=f in na.INTERFACE_REQUIRED, column=True)
        if v is not None:
            columns[f] = v
    seen: dict[str, str] = {}
    for f, c in columns.items():
        if c.lower() in seen:
            raise t.err(f, f"column {c!r} is also given for {seen[c.lower()]}")
        seen[c.lower()] = f
    ks = t.section("kinds")
    kinds = {k: ks.get(k, str, required=k != "confirm", what="the kind column's value")
             for k in na.INTERFACE_KINDS}
    kinds = {k: v for k, v in kinds.items() if v is not None}
    if len(set(kinds.values())) != len(kinds):
        raise t.err("kinds", f"expected a different value for each kind, got {kinds!r}")
    ks.finish()
    new_state = t.get("new_state", str)
    if new_state is not None and "state" not in columns:
        raise t.err("new_state", "given without state (the state column's name)")
    item_table = _n8_name(t, "item_table")
    ic = t.section("item_columns")
    item_columns = {}
    for f in ic.data:
        if f not in na.INTERFACE_ITEM_FIELDS:
            raise ic.err(f, f"unknown field (known: {', '.join(na.INTERFACE_ITEM_FIELDS)})")
        item_columns[f] = _n8_name(ic, f, column=True)
    ic.finish()
    if item_columns and not item_table:
        raise t.err("item_columns", "given without item_table")
    t.finish()
    return na.InterfaceSettings(table=table, columns=columns, kinds=kinds,
                                new_state=new_state, item_table=item_table,
                                item_columns=item_columns)


def _parse_supply(sec: _Section, n8_create: bool) -> SupplySettings:
    """The ``[supply]`` table (``docs/supply.rst``): where valve states are read, and
    the rule by which a payment settles the season's heating fee.  ``source``
    defaults to ``n8`` where the gateway creates the reference N8 (it has the valve
    table), to ``gateway`` against a real N8 (which may have none)."""
    from bankgate.domain.supply import RULES, SOURCES

    enabled = sec.get("enabled", bool, True)
    source = _choice(sec, "source", SOURCES, "n8" if n8_create else "gateway")
    rule = _choice(sec, "rule", RULES, "full")
    share = sec.get("share", (int, float), 0.6)
    if not 0 < share <= 1:
        raise sec.err("share", f"expected a part of the season's heating fee above 0 and at"
                               f" most 1 (0.6 = 60%), got {share!r}")
    if "share" in sec.data and rule != "share":
        raise sec.err("share", "given with rule = \"full\"; set rule = \"share\" to use it")
    fee_type = sec.get("fee_type", str, "01")
    if not re.fullmatch(r"[0-9A-Za-z]{1,2}", fee_type):
        raise sec.err("fee_type", f"expected N8's heating fee type like '01', got {fee_type!r}")
    sec.finish()
    return SupplySettings(enabled=enabled, source=source, rule=rule, share=float(share),
                          fee_type=fee_type)


def check_plugins(cfg: Config) -> dict:
    """Load the plugins the banks name; returns name -> codec.  Errors name the key.

    What each bank's plugin declares (:mod:`bankgate.codec.capabilities`) is
    checked here, once the plugins are loaded, and settled into the bank:

    - its keys (``KeyKind``): each needed key is there, each configured key is
      one the plugin declares (or ``mac_key`` / ``zmk``, which a plugin may
      ignore), of the declared length, with the right check value;
    - its ``bank_defaults``: the values of entries the bank's table left out;
    - its options (``OptionSpec``): every ``[bank.options]`` key is known (to
      the plugin, invoices or withholding), of the declared type, the
      plugin's ``validate_options`` hook finds no problem, and an option the
      bank does not state takes its declared default.

    Both the service start and ``bankgate config check`` call this (through
    :func:`bankgate.app.wiring.check`).  Running it twice changes nothing more.
    """
    from bankgate.codec.capabilities import CapabilityError
    from bankgate.codec.registry import PluginError, discover

    try:
        codecs = discover(cfg.plugin_dirs)
    except PluginError as e:
        raise ConfigError(cfg.source, "gateway.plugin_dirs", str(e)) from None
    for b in cfg.banks:
        if b.plugin not in codecs:
            raise ConfigError(
                cfg.source, f"bank.{b.name}.plugin",
                f"no plugin named {b.plugin!r} (found: {', '.join(sorted(codecs))})",
            )
        codec = codecs[b.plugin]
        try:
            _check_keys(cfg, b, codec)
            _apply_bank_defaults(b, codec)
            check_bank_options(cfg, b, codec)
        except CapabilityError as e:
            raise ConfigError(cfg.source, f"bank.{b.name}.plugin", str(e)) from None
    return codecs


def _check_keys(cfg: Config, b: BankConfig, codec) -> None:
    """The bank's keys against its plugin's ``KeyKind`` declarations.  No
    message holds a key or its right check value."""
    from bankgate.codec.capabilities import KeyKind, key_kinds

    kinds = {k.name: k for k in key_kinds(codec)}
    keys = b.all_keys()
    for name in keys:
        kind = kinds.get(name)
        if kind is None:
            if name not in KEY_ENTRIES:
                declared = ", ".join(kinds) or "none"
                raise ConfigError(cfg.source, b.key_entry(name),
                                  f"plugin {b.plugin!r} declares no key {name!r}"
                                  f" (it declares: {declared})")
            kind = KeyKind(name)  # mac_key / zmk the plugin ignores: checked as before
        problem = kind.length_problem(keys[name])
        if problem:
            raise ConfigError(cfg.source, b.key_entry(name), problem)
        if name in b.stated_keys:  # a key set in code has no check value to compare
            check = b.stated_keys[name][0]
            if check is not None and not kind.has_check:
                raise ConfigError(cfg.source, b.key_entry(name, check=True),
                                  f"{name} is a secret and has no check value (remove it)")
            problem = _check_problem(kind, keys[name], check)
            if problem:
                raise ConfigError(cfg.source, b.key_entry(name, check=True), problem)
    for kind in kinds.values():
        if kind.needed(b.mac) and kind.name not in keys:
            raise ConfigError(cfg.source, b.key_entry(kind.name), kind.missing)


def _check_problem(kind, key: bytes, check: str | None) -> str | None:
    """What is wrong with the stated check value ``check`` of ``key``, or
    ``None``; the text names neither the key nor the right check value."""
    from bankgate.codec.crypto import check_value

    if not kind.has_check:
        return None
    if check is None:
        return (f"missing; expected the check value of {kind.name}"
                f" ({2 * kind.check_length} hex digits)")
    if check.strip().upper() != check_value(kind.algorithm, key, kind.check_length).hex().upper():
        return f"does not match {kind.name}: the key is wrong or mistyped"
    return None


def _apply_bank_defaults(b: BankConfig, codec) -> None:
    """The plugin's ``bank_defaults`` for the entries the bank's table left out."""
    from bankgate.codec.capabilities import bank_defaults

    for k, v in bank_defaults(codec).items():
        if k in b.defaulted:
            setattr(b, k, v)


def plugin_option_names(codec) -> tuple[str, ...]:
    """The ``[bank.options]`` keys a plugin reads (its ``option_specs``)."""
    from bankgate.codec.capabilities import option_specs

    return tuple(o.name for o in option_specs(codec))


def check_bank_options(cfg: Config, b: BankConfig, codec) -> None:
    """One bank's ``[bank.options]`` against what reads it: the plugin's
    declaration and hook, invoices and withholding (their values are checked
    by :mod:`bankgate.app.options`).  Fills in the plugin's defaults."""
    from bankgate.codec.capabilities import option_problems, option_specs
    from bankgate.domain.invoices import OPTION_KEYS as INVOICE_KEYS
    from bankgate.domain.withholding import OPTION_KEYS as WITHHOLDING_KEYS

    specs = {o.name: o for o in option_specs(codec)}
    mine = plugin_option_names(codec)
    known = {*INVOICE_KEYS, *WITHHOLDING_KEYS, *mine}

    def err(key: str, problem: str) -> ConfigError:
        return ConfigError(cfg.source, f"bank.{b.name}.options{'.' + key if key else ''}",
                           problem)

    for key in b.options:
        if key not in known:
            own = f"; plugin {b.plugin!r} reads: {', '.join(mine)}" if mine else ""
            raise err(key, f"unknown option (misspelt?){own}; the gateway reads:"
                           f" {', '.join(sorted({*INVOICE_KEYS, *WITHHOLDING_KEYS}))}")
        spec = specs.get(key)
        problem = spec.problem(b.options[key]) if spec else None
        if problem:
            raise err(key, problem)
    for spec in specs.values():
        if spec.default is not None and spec.name not in b.options:
            b.options[spec.name] = spec.default
    problems = option_problems(codec, {k: b.options[k] for k in mine if k in b.options})
    if problems:
        first = problems[0]
        head, sep, rest = first.partition(": ")
        key, problem = (head, rest) if sep and head in known else ("", first)
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise err(key, f"{problem}{more}")
