"""``bankgate backup``: a consistent copy of the SQLite database, gateway running or not.

Copying ``bankgate.db`` with ``cp`` while the gateway writes can catch a page
half-written, and misses whatever still sits in ``bankgate.db-wal``.  SQLite's
online backup API (:meth:`sqlite3.Connection.backup`) copies a consistent
snapshot instead; WAL lets the gateway go on posting meanwhile.  The copy is
checked (``PRAGMA quick_check``), switched out of WAL so it is one
self-contained file, written under a temporary name and renamed into place, and
named with the date and time: ``bankgate-20261127-093000.db``.

A server database (PostgreSQL, MariaDB, …) is the server's tool's to back up:
the command refuses, and prints the ``pg_dump`` / ``mariadb-dump`` command for
the gateway's tables and the one that restores them (exit status 2).
``docs/operator-guide.rst`` (*Backup and restore*) is its manual, with the
restore steps.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from datetime import datetime
from pathlib import Path

from bankgate.app import wiring
from bankgate.app.cli.common import _load
from bankgate.app.cli.status import describe_database
from bankgate.canon.files import fsync_dir
from bankgate.store.model import GATEWAY_TABLES

MIGRATIONS_TABLE = "bg_alembic_version"
SHOWN = ("bg_payment", "bg_journal")  # the row counts printed after a backup


class BackupError(Exception):
    """The backup could not be made; the message says why."""


def backup_name(source: Path, now: datetime) -> str:
    """``bankgate-20261127-093000.db`` for ``bankgate.db`` at that local time."""
    return f"{source.stem}-{now:%Y%m%d-%H%M%S}{source.suffix or '.db'}"


def _counts(conn: sqlite3.Connection) -> dict[str, int]:
    names = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " ORDER BY name")]
    return {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}


def backup_sqlite(source: Path, out_dir: Path, now: datetime) -> tuple[Path, dict[str, int]]:
    """Copy the SQLite database ``source`` into ``out_dir``; returns the new file and
    the row count of each of its tables.  Never writes to ``source``."""
    if not source.is_file():
        raise BackupError(f"no database file at {source}")
    target = out_dir / backup_name(source, now)
    if target.exists():
        raise BackupError(f"{target} exists already")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BackupError(f"cannot create {out_dir}: {e.strerror}") from None
    partial = out_dir / f".{target.name}.partial"
    partial.unlink(missing_ok=True)
    try:
        src = sqlite3.connect(source.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            dst = sqlite3.connect(partial)
            try:
                src.backup(dst)  # one step: one consistent snapshot
                dst.execute("PRAGMA journal_mode=DELETE")  # one file, no -wal beside it
                check = dst.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise BackupError(f"the copy fails PRAGMA quick_check: {check}")
                counts = _counts(dst)
            finally:
                dst.close()
        finally:
            src.close()
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, target)
    except sqlite3.Error as e:
        partial.unlink(missing_ok=True)
        raise BackupError(f"{source}: {e}") from None
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise BackupError(f"{e.filename or target}: {e.strerror}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    fsync_dir(out_dir)
    return target, counts


def server_commands(url: str, now: datetime) -> list[str] | None:
    """The commands that back up and restore the gateway's tables on a database server,
    as comment-and-command lines; None for a server this page knows no tool for."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    backend = u.get_backend_name()
    tables = [*GATEWAY_TABLES, MIGRATIONS_TABLE]
    db = u.database or "DATABASE"
    stamp = f"{now:%Y%m%d-%H%M%S}"
    if backend == "postgresql":
        conn = f"--host={u.host or 'localhost'} --port={u.port or 5432}" + (
            f" --username={u.username}" if u.username else "")
        dump = f"bankgate-{stamp}.dump"
        return [
            "# back up the gateway's tables (bg_*), consistent, in pg_dump's custom format"
            " (the password: ~/.pgpass, or pg_dump asks):",
            f"pg_dump {conn} --format=custom --table='bg_*' --file={dump} {db}",
            "# restore them (gateway stopped): drops and recreates each bg_* table",
            f"pg_restore {conn} --dbname={db} --clean --if-exists --single-transaction {dump}",
        ]
    if backend in ("mysql", "mariadb"):
        conn = f"--host={u.host or 'localhost'} --port={u.port or 3306}" + (
            f" --user={u.username}" if u.username else "")
        dump = f"bankgate-{stamp}.sql"
        return [
            "# back up the gateway's tables, consistent (one transaction); mysqldump on"
            " MySQL; add --password to be asked for it, or keep it in ~/.my.cnf:",
            f"mariadb-dump {conn} --single-transaction {db} {' '.join(tables)} > {dump}",
            "# restore them (gateway stopped): drops and recreates each table; mysql on MySQL",
            f"mariadb {conn} {db} < {dump}",
        ]
    return None


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def cmd_backup(args) -> int:
    from sqlalchemy.engine import make_url

    cfg = _load(args.config)
    now = wiring.wall_clock(cfg)()
    try:
        u = make_url(cfg.db_url)
    except Exception:  # noqa: BLE001 - any parse failure
        print(f"bankgate: backup: {cfg.source}: database.url is not a valid SQLAlchemy URL",
              file=sys.stderr)
        return 2
    if u.get_backend_name() != "sqlite":
        what = describe_database(cfg.db_url)
        commands = server_commands(cfg.db_url, now)
        print(f"bankgate: backup: copies SQLite files only; the database is {what}:"
              " back it up with the server's own tool" + (", as below" if commands else ""),
              file=sys.stderr)
        for line in commands or []:
            print(line)
        return 2
    if not u.database or u.database == ":memory:":
        print("bankgate: backup: the database is in memory: nothing to back up",
              file=sys.stderr)
        return 2
    source = Path(u.database)
    out_dir = Path(args.out) if args.out else Path(cfg.data_dir) / "backups"
    try:
        target, counts = backup_sqlite(source, out_dir, now)
    except BackupError as e:
        print(f"bankgate: backup: {e}", file=sys.stderr)
        return 1
    shown = ", ".join(f"{t} {counts[t]} rows" for t in SHOWN if t in counts)
    print(f"{target}: {_size(target.stat().st_size)}, {len(counts)} tables, quick_check ok"
          + (f"; {shown}" if shown else ""))
    return 0


def add_cli(sub) -> None:
    """Register ``bankgate backup`` on the ``bankgate`` parser."""
    c = sub.add_parser(
        "backup", help="copy the SQLite database, safely while the gateway runs",
        description=(
            "Copy the SQLite database with SQLite's online backup API: a consistent\n"
            "snapshot, taken while the gateway runs, checked (quick_check) and named with\n"
            "the date and time (bankgate-YYYYMMDD-HHMMSS.db). Prints the new file.\n"
            "For PostgreSQL or MariaDB it refuses (exit status 2) and prints the pg_dump /\n"
            "mariadb-dump command for the gateway's tables, and the one that restores them.\n"
            "Restoring: docs/operator-guide.rst, 'Backup and restore'."),
        epilog=(
            "examples:\n"
            "  bankgate -c /etc/bankgate/bankgate.toml backup\n"
            "  bankgate -c /etc/bankgate/bankgate.toml backup --out /mnt/backup/bankgate"))
    c.add_argument("--out", default=None, metavar="DIR",
                   help="folder for the copy (default: DATA_DIR/backups); better on another"
                        " disk")
    c.set_defaults(func=cmd_backup)
