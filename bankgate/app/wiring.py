"""The one composition root: the store, the ledger and its hooks, built once.

Both ``twistd bankgate`` (:class:`bankgate.app.service.GatewayService`) and the
``bankgate`` command build their parts here, from a validated
:class:`~bankgate.app.config.Config`, so the two can never disagree on how a
payment is posted (which hooks run, which policies apply).  The domain is
handed parsed objects -- policies, invoice settings, withholding options,
codecs -- never the configuration itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from bankgate.app.config import Config, check_plugins
from bankgate.app.options import check_options, invoice_settings, withholding_options
from bankgate.codec.capabilities import statement_format
from bankgate.domain.invoices import Invoices, InvoiceSettings, make_hook
from bankgate.domain.ledger import Ledger
from bankgate.domain.reconcile import Reconciler
from bankgate.domain.supply import make_hook as make_supply_hook
from bankgate.domain.withholding import Withholding, WithholdingOptions
from bankgate.store.db import Store


def wall_clock(cfg: Config) -> Callable[[], datetime]:
    """Local time in the configured zone, from the system clock (the CLI's)."""
    return lambda: datetime.now(cfg.tz).replace(tzinfo=None)


@dataclass
class Parts:
    """What a configuration builds.  ``store`` is not started: the service
    starts it with the reactor, the CLI uses it synchronously."""

    cfg: Config
    codecs: dict
    invoice_settings: dict[str, InvoiceSettings]
    withholding_options: dict[str, WithholdingOptions]
    store: Store
    ledger: Ledger
    now: Callable[[], datetime]

    def invoices(self) -> Invoices:
        return invoices(self.cfg, self.store, self.now, self.invoice_settings)

    def withholding(self, now: Callable[[], datetime] | None = None) -> Withholding:
        return withholding(self.cfg, self.ledger, self.codecs, self.withholding_options,
                           now=now)

    def reconcilers(self) -> dict[str, Reconciler]:
        """A reconciler per bank whose plugin declares a statement format."""
        return {b.name: Reconciler(self.ledger, b, self.codecs[b.plugin],
                                   data_dir=self.cfg.data_dir, now=self.now)
                for b in self.cfg.banks if statement_format(self.codecs[b.plugin]) is not None}


def store(cfg: Config, *, reactor=None) -> Store:
    """The configuration's store (not started, not migrated)."""
    return Store(cfg.db_url, cfg.n8, reactor=reactor, threads=cfg.db_threads, echo=cfg.db_echo,
                 n8_url=cfg.n8_db_url, writer=cfg.n8_post.factory())


def invoices(cfg: Config, store: Store, now: Callable[[], datetime],
             settings: dict[str, InvoiceSettings] | None = None) -> Invoices:
    """The operator's invoice actions over ``store``."""
    return Invoices(store, invoice_settings(cfg) if settings is None else settings,
                    bank_codes={b.name: b.bank_code for b in cfg.banks},
                    now=now, data_dir=cfg.data_dir)


def withholding(cfg: Config, ledger: Ledger, codecs: dict,
                options: dict[str, WithholdingOptions] | None = None,
                now: Callable[[], datetime] | None = None) -> Withholding:
    """Agreements, batch files and results over ``ledger``."""
    if options is None:
        options = withholding_options(cfg, codecs)
    return Withholding(ledger, cfg.banks, codecs, options, data_dir=cfg.data_dir, now=now)


def check(cfg: Config) -> tuple[dict, dict[str, InvoiceSettings], dict[str, WithholdingOptions]]:
    """Load the plugins the banks name and validate every bank's options
    against them; raises :class:`~bankgate.app.config.ConfigError` naming the key."""
    codecs = check_plugins(cfg)
    check_options(cfg, codecs)
    wh = withholding_options(cfg, codecs)
    inv = invoice_settings(cfg)
    return codecs, inv, wh


def build(cfg: Config, *, reactor=None, now: Callable[[], datetime] | None = None) -> Parts:
    """Every part of a gateway for ``cfg``.  ``reactor`` is the service's (the
    store's Deferreds fire on it); ``now`` its local clock (default: the wall clock)."""
    codecs, inv, wh = check(cfg)
    now = now or wall_clock(cfg)
    db = store(cfg, reactor=reactor)
    ledger = Ledger(db, {b.name: b.policy_() for b in cfg.banks}, now=now,
                    hooks=list(filter(None, [make_hook(inv), make_supply_hook(cfg.supply)])))
    return Parts(cfg, codecs, inv, wh, db, ledger, now)
