"""The ``[bank.options]`` tables, validated into the settings each part takes.

A bank's options table is shared: invoices (``invoice*``), withholding and
card debits (``withholding``, ``utility_code``, ``debit_*``), and the bank's
plugin (its declared ``option_specs``, checked with its ``validate_options`` hook
by :func:`bankgate.app.config.check_plugins`).  This module turns it into the parsed objects
the domain is handed -- :class:`~bankgate.domain.invoices.InvoiceSettings`,
:class:`~bankgate.domain.withholding.WithholdingOptions` -- and refuses a key
nobody reads.  Every error is a :class:`~bankgate.app.config.ConfigError`
naming the file and the key.
"""

from __future__ import annotations

import re

from bankgate.app.config import BankConfig, Config, ConfigError, check_bank_options
from bankgate.codec.capabilities import batch_files, debit_client
from bankgate.domain.invoices import (
    DEFAULT_LOW_WATER,
    DEFAULT_PAYEE,
    DEFAULT_SOURCES,
    MAX_RANGE,
    SOURCE_RE,
    InvoiceSettings,
)
from bankgate.domain.invoices import OPTION_KEYS as INVOICE_KEYS
from bankgate.domain.withholding import WithholdingOptions

# -- every key is read by someone --------------------------------------------------


def check_options(cfg: Config, codecs: dict) -> None:
    """Every ``[bank.options]`` key is one that something reads: invoices,
    withholding, or the bank's plugin (``CODEC.option_specs``).  A misspelt key
    would otherwise switch nothing on, silently.  (:func:`check_plugins` runs
    the same check; this is for a caller holding codecs already.)"""
    for b in cfg.banks:
        if b.plugin in codecs:
            check_bank_options(cfg, b, codecs[b.plugin])


# -- invoices ----------------------------------------------------------------------


def invoice_settings(cfg: Config) -> dict[str, InvoiceSettings]:
    """Every bank's invoice settings, validated; errors name the key."""
    out = {}
    for b in cfg.banks:
        opts = b.options or {}

        def err(k: str, problem: str, b=b) -> ConfigError:
            return ConfigError(cfg.source, f"bank.{b.name}.options.{k}", problem)

        for k in opts:
            if k.startswith("invoice") and k not in INVOICE_KEYS:
                raise err(k, f"unknown invoice option (known: {', '.join(INVOICE_KEYS)})")
        enabled = opts.get("invoice", False)
        if not isinstance(enabled, bool):
            raise err("invoice", f"expected true or false, got {enabled!r}")
        low = opts.get("invoice_low_water", DEFAULT_LOW_WATER)
        if isinstance(low, bool) or not isinstance(low, int) or not 0 <= low <= MAX_RANGE:
            raise err("invoice_low_water",
                      f"expected a whole number of invoices from 0 to {MAX_RANGE}, got {low!r}")
        sources = opts.get("invoice_sources", list(DEFAULT_SOURCES))
        if not isinstance(sources, list) or not sources or not all(
                isinstance(s, str) and SOURCE_RE.fullmatch(s) for s in sources):
            raise err("invoice_sources",
                      "expected a list of payment sources like [\"online\", \"recon\"],"
                      f" got {sources!r}")
        payee = opts.get("invoice_payee", DEFAULT_PAYEE)
        if not isinstance(payee, str) or not 0 < len(payee.strip()) <= 60:
            raise err("invoice_payee", f"expected the utility's name (1-60 characters), got"
                                       f" {payee!r}")
        title = opts.get("invoice_bank_title", "")
        if not isinstance(title, str) or len(title) > 60:
            raise err("invoice_bank_title", f"expected a name of up to 60 characters, got"
                                            f" {title!r}")
        names = opts.get("invoice_fee_names", {})
        if not isinstance(names, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and 0 < len(v) <= 20
                for k, v in names.items()):
            raise err("invoice_fee_names",
                      "expected a table of fee type = name, like { \"01\" = \"采暖费\" }")
        out[b.name] = InvoiceSettings(enabled, low, tuple(sources), payee.strip(), title,
                                      dict(names))
    return out


# -- withholding and card debits ---------------------------------------------------------


def parse_options(bank: BankConfig, source: str = "<config>") -> WithholdingOptions:
    """Validate the withholding keys of ``bank.options``; errors name the key
    (``bank.NAME.options.debit_timeout: expected ...``).  Other keys of the
    table belong to other parts of the gateway and are left alone."""
    o = bank.options or {}

    def err(key: str, problem: str) -> ConfigError:
        return ConfigError(source, f"bank.{bank.name}.options.{key}", problem)

    def boolean(key: str, default: bool | None) -> bool | None:
        if key not in o:
            return default
        if not isinstance(o[key], bool):
            raise err(key, f"expected true or false, got {o[key]!r}")
        return o[key]

    def seconds(key: str, default: float, low: float, high: float) -> float:
        if key not in o:
            return default
        v = o[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high:
            raise err(key, f"expected seconds between {low:g} and {high:g}, got {v!r}")
        return float(v)

    host = o.get("debit_host")
    if host is not None:
        if not isinstance(host, str) or not re.match(r"^(tcp|ssl|tcp6|unix):", host):
            raise err("debit_host", "expected a Twisted client endpoint string like"
                                    f" 'tcp:host=127.0.0.1:port=9202', got {host!r}")
        try:
            from twisted.internet.endpoints import clientFromString

            clientFromString(object(), host)
        except Exception as e:  # noqa: BLE001 - any parse failure is the operator's typo
            raise err("debit_host", f"not a usable client endpoint {host!r}: {e}") from None
    enabled = boolean("withholding", None)
    if enabled is None:
        enabled = host is not None
    if host is not None and not enabled:
        raise err("withholding", "is false while debit_host is set (card debits need it)")
    code = o.get("utility_code", "")
    if not isinstance(code, str) or (code and not re.fullmatch(r"[0-9A-Za-z_-]{1,20}", code)):
        raise err("utility_code", f"expected 1-20 letters, digits, '-' or '_', got {code!r}")
    if host is not None and not code:
        raise err("utility_code", "missing; required with debit_host (our code at the bank)")
    opts = WithholdingOptions(
        enabled=enabled, utility_code=code, debit_host=host,
        debit_timeout=seconds("debit_timeout", 30.0, 1, 600),
        debit_persistent=bool(boolean("debit_persistent", False)),
        debit_retry=seconds("debit_retry", 30.0, 1, 86400),
        debit_retry_max=seconds("debit_retry_max", 900.0, 1, 7 * 86400),
        debit_reconnect=seconds("debit_reconnect", 1.0, 0.1, 3600),
        debit_reconnect_max=seconds("debit_reconnect_max", 60.0, 0.1, 86400),
        debit_idle=seconds("debit_idle", 60.0, 0, 86400),
        debit_host_simulate=bool(boolean("debit_host_simulate", False)),
    )
    if opts.debit_retry_max < opts.debit_retry:
        raise err("debit_retry_max", f"expected at least debit_retry ({opts.debit_retry:g})")
    if opts.debit_reconnect_max < opts.debit_reconnect:
        raise err("debit_reconnect_max",
                  f"expected at least debit_reconnect ({opts.debit_reconnect:g})")
    if opts.debit_host_simulate:
        if host is None:
            raise err("debit_host_simulate", "needs debit_host (the address to play the host on)")
        simulated_listen(opts, lambda p: err("debit_host_simulate", p))
    return opts


def simulated_listen(opts: WithholdingOptions, err=None) -> str:
    """The server endpoint a simulated host listens on for ``debit_host``."""
    mt = re.match(r"^tcp:(?:host=)?([^:]+):(?:port=)?([0-9]+)(?::|$)", opts.debit_host or "")
    if not mt:
        problem = "the simulated host needs a tcp:host=...:port=... debit_host"
        raise (err(problem) if err else ValueError(problem))
    return f"tcp:{mt.group(2)}:interface={mt.group(1)}"


def withholding_options(cfg: Config, codecs: dict | None = None) -> dict[str, WithholdingOptions]:
    """Every bank's withholding options, validated (also against its plugin
    when ``codecs`` is given: withholding needs the plugin's batch files, a
    ``debit_host`` its real-time debit).  Raises :class:`ConfigError` naming the key."""
    out = {}
    for b in cfg.banks:
        opts = parse_options(b, cfg.source)
        if codecs is not None and b.plugin in codecs:
            codec = codecs[b.plugin]
            if opts.enabled and batch_files(codec) is None:
                raise ConfigError(cfg.source, f"bank.{b.name}.options.withholding",
                                  f"plugin {b.plugin!r} has no withholding files (.PK/.PKJG)")
            if opts.card_debit and debit_client(codec) is None:
                raise ConfigError(cfg.source, f"bank.{b.name}.options.debit_host",
                                  f"plugin {b.plugin!r} has no real-time debit (560/561)")
        out[b.name] = opts
    return out
