"""PostgreSQL's autovacuum turned off: the store says where, and the start warns.

The outbox's own vacuum is in tests/test_n8_repair.py; this is the rest of the
gateway's tables, which only autovacuum (or a DBA's schedule) clears.
"""

from __future__ import annotations

import sqlalchemy as sa
from conftest import close_store, make_store
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from bankgate.app import wiring
from bankgate.app.config import default_config
from bankgate.app.service import prepare_database


def _setting(engine: sa.Engine) -> str:
    """The server's autovacuum, read another way than the store does."""
    with engine.connect() as c:
        return c.execute(sa.text("SELECT setting FROM pg_settings"
                                 " WHERE name = 'autovacuum'")).scalar()


def test_the_store_says_on_which_postgresql_database_autovacuum_is_off(tmp_path):
    lite = make_store("sqlite", tmp_path / "a")
    assert lite.autovacuum_off() == []  # SQLite clears dead rows itself
    close_store(lite)
    for kind, where in (("postgres", "the gateway's database"),
                        ("sqlite+postgres", "N8's database")):  # N8 apart, on PostgreSQL
        store = make_store(kind, tmp_path / kind)
        try:
            off = _setting(store.n8_engine if store.split else store.engine) == "off"
            assert store.autovacuum_off() == ([where] if off else [])
        finally:
            close_store(store)


def _start_warnings(tmp_path, monkeypatch, off: list[str]) -> list[str]:
    parts = wiring.build(default_config(str(tmp_path)))
    monkeypatch.setattr(parts.store, "autovacuum_off", lambda: off)
    seen: list[str] = []

    def observe(event):
        if event.get("log_level") == LogLevel.warn:
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        summary = prepare_database(parts)
    finally:
        globalLogPublisher.removeObserver(observe)
        parts.store.stop()
    assert "gateway schema up to date" in summary  # the start went on
    return [w for w in seen if "autovacuum" in w]


def test_the_start_warns_when_autovacuum_is_off_and_says_what_to_do(tmp_path, monkeypatch):
    (warning,) = _start_warnings(tmp_path / "a", monkeypatch, ["the gateway's database"])
    assert "autovacuum is off on the gateway's database" in warning
    assert "autovacuum = on" in warning and "docs/database.rst" in warning
    assert _start_warnings(tmp_path / "b", monkeypatch, []) == []
