"""Versioned migrations of the gateway's own tables (Alembic).

``bankgate db upgrade`` runs :func:`upgrade`; the service runs it at start
too, so a new release brings its schema along.  The version is kept in
``bg_alembic_version`` so it never collides with an Alembic table of N8's.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.ddl.impl import DefaultImpl
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

VERSION_TABLE = "bg_alembic_version"


class DB2Impl(DefaultImpl):
    """Alembic knows no DB2; ibm_db_sa's DDL compiler does the work, this only
    registers the dialect name with Alembic (defining the class registers it)."""

    __dialect__ = "ibm_db_sa"
    transactional_ddl = True
HERE = Path(__file__).resolve().parent


def _config(conn: sa.Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = conn
    return cfg


def upgrade(engine: sa.Engine, revision: str = "head") -> str | None:
    with engine.begin() as conn:
        command.upgrade(_config(conn), revision)
    return current(engine)


def offline_sql(dialect_name: str) -> str:
    """The migrations as SQL text for a dialect, for a DBA to review and run."""
    import io

    buf = io.StringIO()
    cfg = _config()
    cfg.attributes["dialect_name"] = dialect_name
    cfg.attributes["buffer"] = buf
    command.upgrade(cfg, "head", sql=True)
    return buf.getvalue()


def current(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return ctx.get_current_revision()


def head() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head()
