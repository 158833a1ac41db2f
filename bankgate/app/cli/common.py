"""What every ``bankgate`` command shares: the configuration with the global
``--data-dir`` applied, and the parts built by the one composition root
(:mod:`bankgate.app.wiring`) with their store migrated."""

from __future__ import annotations

from bankgate.app import wiring
from bankgate.app.config import Config, load_config

_DATA_DIR: str | None = None  # the global --data-dir, set by main()


def set_data_dir(data_dir: str | None) -> None:
    global _DATA_DIR
    _DATA_DIR = data_dir


def _load(path: str | None) -> Config:
    """The configuration, with the global ``--data-dir`` applied."""
    return load_config(path, data_dir=_DATA_DIR)


def _store(cfg: Config, create_n8: bool = False):
    """The configuration's store, migrated (and the reference N8 created if asked)."""
    store = wiring.store(cfg)
    store.create_gateway_tables()
    if create_n8 and not store.n8_exists():
        store.create_n8_tables()
    return store


def _parts(cfg: Config) -> wiring.Parts:
    """Every part, from the one composition root, its store migrated."""
    parts = wiring.build(cfg)
    parts.store.create_gateway_tables()
    return parts


def _ledger(cfg: Config):
    return _parts(cfg).ledger
