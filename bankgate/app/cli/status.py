"""``bankgate status``: each bank's day at a glance, from the database.

For the phone at 3 a.m. and for monitoring scripts: per configured bank, the
trade date's payments (count and amount), whether the date is open or closed at
cut-off, and when the bank last sent a transaction.  It reads the database the
gateway writes (:mod:`bankgate.store.status`), so it answers the same whether the
gateway runs or not, and changes nothing: it does not even migrate.

Exit status 0, or 1 with one line on standard error when the database cannot be
read (server down, wrong URL, driver missing, tables not created yet).
``docs/operator-guide.rst`` (*Status at a glance*) is its manual.

:func:`describe_database` is here too: the one way the commands name a database
(``config check``, ``status``, ``backup``), scheme and driver, never the password.
"""

from __future__ import annotations

import json
import sys
from datetime import date, datetime
from pathlib import Path

from bankgate.app import wiring
from bankgate.app.cli.argtypes import date_arg
from bankgate.app.cli.common import _load
from bankgate.app.config import Config
from bankgate.canon.money import fen_to_yuan
from bankgate.store import status as sql

BACKEND_NAMES = {
    "sqlite": "SQLite", "postgresql": "PostgreSQL", "mysql": "MySQL/MariaDB",
    "mariadb": "MariaDB", "oracle": "Oracle", "mssql": "SQL Server", "ibm_db_sa": "DB2",
    "db2": "DB2",
}
UNDONE = ("REVERSED", "REFUNDED", "EXPIRED", "CANCELLED")


class Unreadable(Exception):
    """The database could not be read; the message says why, in one line."""


def describe_database(url: str) -> str:
    """``postgresql+psycopg (PostgreSQL, driver psycopg) at host:5432/db as user``:
    the scheme, what it means and where, never the password or the query string."""
    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
    except Exception:  # noqa: BLE001 - any parse failure: say so, show no secret
        return "(not a valid SQLAlchemy URL)"
    backend = u.get_backend_name()
    try:
        driver = u.get_driver_name()
    except Exception:  # noqa: BLE001 - the dialect is not installed
        driver = "not installed"
    name = BACKEND_NAMES.get(backend, backend)
    if backend == "sqlite":
        where = u.database if u.database and u.database != ":memory:" else "(in memory)"
        return f"{u.drivername} ({name}, driver {driver}) at {where}"
    host = u.host or "localhost"
    if u.port:
        host = f"{host}:{u.port}"
    who = f" as {u.username}" if u.username else ""
    return f"{u.drivername} ({name}, driver {driver}) at {host}/{u.database or ''}{who}"


def _first_line(e: BaseException) -> str:
    orig = getattr(e, "orig", None) or e
    text = str(orig).strip() or type(orig).__name__
    return text.splitlines()[0]


def read(cfg: Config, day: date) -> dict[str, dict]:
    """Each configured bank's figures for ``day`` (:func:`bankgate.store.status.banks_status`);
    raises :class:`Unreadable` with the reason."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from bankgate.store.db import StoreUnavailable

    where = describe_database(cfg.db_url)
    try:
        u = make_url(cfg.db_url)
    except sa.exc.ArgumentError:
        raise Unreadable(f"database.url is not a valid SQLAlchemy URL ({cfg.source})") from None
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        if not Path(u.database).is_file():
            # opening it would create an empty one: say what is missing instead
            raise Unreadable(f"no database file at {u.database} (wrong --config or --data-dir?)")
    try:
        store = wiring.store(cfg)
    except (ImportError, sa.exc.SQLAlchemyError) as e:
        raise Unreadable(f"cannot open {where}: {_first_line(e)}") from None
    store.retries = 0  # one try, and no "retrying" warnings: a status answers at once
    try:
        return store.run_sync(sql.banks_status, [b.name for b in cfg.banks], day,
                              readonly=True)
    except (StoreUnavailable, sa.exc.SQLAlchemyError) as e:
        raise Unreadable(f"cannot read {where}: {_first_line(e)}") from None
    finally:
        store.stop()


def _iso(v: datetime | None) -> str | None:
    """Local time to the second, ISO format."""
    return v.replace(microsecond=0).isoformat() if v is not None else None


def report(cfg: Config, figures: dict[str, dict], day: date, now: datetime) -> dict:
    """The status as plain data (what ``--json`` prints); ``now`` is local time."""
    banks = []
    for b in cfg.banks:
        f = figures.get(b.name) or {"payments": {}, "cutoff": None, "last_at": None}
        by_status = f["payments"]
        posted = by_status.get("POSTED", (0, 0))
        pending = by_status.get("PENDING", (0, 0))
        undone = (sum(by_status.get(s, (0, 0))[0] for s in UNDONE),
                  sum(by_status.get(s, (0, 0))[1] for s in UNDONE))
        cut = f["cutoff"]
        last = f["last_at"]
        banks.append({
            "bank": b.name,
            "payments": posted[0],
            "amount": posted[1],
            "amount_yuan": fen_to_yuan(posted[1]),
            "pending": pending[0],
            "pending_amount": pending[1],
            "undone": undone[0],
            "undone_amount": undone[1],
            "state": "closed" if cut else "open",
            "cutoff_time": b.cutoff_time.strftime("%H:%M") if b.cutoff_time else None,
            "closed_at": _iso(cut["closed_at"]) if cut else None,
            "closed_reason": cut["reason"] if cut else None,
            "last_transaction_at": _iso(last),
            "last_transaction_age_seconds":
                int((now - last).total_seconds()) if last is not None else None,
        })
    return {"trade_date": day.isoformat(), "now": now.replace(microsecond=0).isoformat(),
            "timezone": cfg.timezone, "database": describe_database(cfg.db_url),
            "banks": banks}


def _age(seconds: int) -> str:
    if seconds < 0:
        return "in the future: check the clocks"
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min ago"
    return f"{seconds // 86400} days ago"


def _state_text(b: dict, day: date) -> str:
    if b["state"] == "open":
        return f"open, cut-off at {b['cutoff_time']}" if b["cutoff_time"] else "open"
    closed = datetime.fromisoformat(b["closed_at"])
    at = f"{closed:%H:%M:%S}" if closed.date() == day else f"{closed:%Y-%m-%d %H:%M:%S}"
    return f"closed at {at} ({b['closed_reason']})"


def render(rep: dict) -> list[str]:
    """The text lines of the status."""
    day = date.fromisoformat(rep["trade_date"])
    now = rep["now"].replace("T", " ")
    lines = [f"database: {rep['database']}",
             f"trade date {rep['trade_date']}, now {now} {rep['timezone']}"]
    if not rep["banks"]:
        return [*lines, "no banks configured"]
    rows = [("bank", "payments", "amount", "pending", "undone", "trade date",
             "last transaction")]
    for b in rep["banks"]:
        last = "none"
        if b["last_transaction_at"]:
            last = (f"{b['last_transaction_at'].replace('T', ' ')}"
                    f" ({_age(b['last_transaction_age_seconds'])})")
        rows.append((b["bank"], str(b["payments"]), b["amount_yuan"], str(b["pending"]),
                     str(b["undone"]), _state_text(b, day), last))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    right = (False, True, True, True, True, False)
    lines.append("")
    for r in rows:
        cells = [c.rjust(w) if rj else c.ljust(w)
                 for c, w, rj in zip(r[:-1], widths, right, strict=True)]
        lines.append("  ".join([*cells, r[-1]]).rstrip())
    return lines


def cmd_status(args) -> int:
    cfg = _load(args.config)
    now = wiring.wall_clock(cfg)()
    day = args.date or now.date()
    try:
        figures = read(cfg, day)
    except Unreadable as e:
        print(f"bankgate: status: {e}", file=sys.stderr)
        return 1
    rep = report(cfg, figures, day, now)
    if args.json:
        print(json.dumps(rep, ensure_ascii=False, indent=2))
    else:
        print("\n".join(render(rep)))
    return 0


def add_cli(sub) -> None:
    """Register ``bankgate status`` on the ``bankgate`` parser."""
    c = sub.add_parser(
        "status", help="each bank's payments today, its trade date, its last transaction",
        description=(
            "Per configured bank: the trade date's standing payments (count and amount in\n"
            "yuan; pending two-phase and undone ones apart), whether the date is open or\n"
            "closed at cut-off, and when the bank last sent a payment or reversal.\n"
            "Read from the database; works whether the gateway runs or not.\n"
            "Exit status 0, or 1 when the database cannot be read."),
        epilog=(
            "examples:\n"
            "  bankgate -c /etc/bankgate/bankgate.toml status\n"
            "  bankgate status --date 2026-11-27\n"
            "  bankgate status --json | jq '.banks[] | {bank, payments, state}'"))
    c.add_argument("--date", type=date_arg, default=None,
                   help="the trade date to show (default: today in gateway.timezone)")
    c.add_argument("--json", action="store_true",
                   help="print JSON (amounts in fen, times in local ISO format)")
    c.set_defaults(func=cmd_status)
