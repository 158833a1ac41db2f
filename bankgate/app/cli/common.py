"""What every ``bankgate`` command shares: the configuration -- found as
``twistd bankgate`` finds it (:func:`~bankgate.app.config.find_config`), with the
global ``--data-dir`` and ``--demo`` applied -- and the parts built by the one
composition root (:mod:`bankgate.app.wiring`) with their store migrated."""

from __future__ import annotations

import sys

from bankgate.app import wiring
from bankgate.app.config import Config, find_config, load_config

_DATA_DIR: str | None = None  # the global --data-dir, set by main()
_DEMO = False  # the global --demo, set by main()
_WARNED = False  # the demo's warning is printed once per command
_DB_URL: str | None = None  # the database of the configuration loaded last (for messages)


def set_data_dir(data_dir: str | None) -> None:
    global _DATA_DIR
    _DATA_DIR = data_dir


def data_dir() -> str | None:
    """The global ``--data-dir`` (``None``: the configuration's ``[gateway] data_dir``)."""
    return _DATA_DIR


def set_demo(demo: bool) -> None:
    """The global ``--demo``; also starts a new command (nothing warned, nothing loaded)."""
    global _DEMO, _WARNED, _DB_URL
    _DEMO, _WARNED, _DB_URL = bool(demo), False, None


def config_path(path: str | None) -> str | None:
    """The file a command runs on (``None``: the embedded demo), found from
    ``path`` (``--config``), ``$BANKGATE_CONFIG`` or the system path.  The demo
    unasked (no ``--demo``) says so on standard error, once."""
    global _WARNED
    choice = find_config(path, demo=_DEMO)
    notice = choice.notice(_DATA_DIR)
    if notice and not _WARNED:
        print(notice, file=sys.stderr)
        _WARNED = True
    return None if choice.path is None else str(choice.path)


def _load(path: str | None) -> Config:
    """The configuration (:func:`config_path`), with the global ``--data-dir`` applied."""
    global _DB_URL
    cfg = load_config(config_path(path), data_dir=_DATA_DIR)
    _DB_URL = cfg.db_url
    return cfg


def database_url() -> str | None:
    """The database URL of the configuration the command loaded, if any."""
    return _DB_URL


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
