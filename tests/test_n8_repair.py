"""N8 in a database of its own: the repair job, the start's repair, and
``bankgate n8 pending`` / ``n8 repair``.

A transaction whose N8 commit is lost leaves its operations in the outbox
(bankgate/store/n8outbox.py); these tests lose one the way tests/test_n8_split.py
does, then let the service's job (on a test clock), the start, or the command
apply it, and check it was applied once.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from conftest import BANKS, NOW, close_store, make_store, seed_fixture
from ledger_helpers import bills, check_books, count, pay
from test_n8_split import _FailingCommit
from twisted.internet.task import Clock

from bankgate.app.cli import main
from bankgate.app.n8repair import N8Repair, repair_at_start
from bankgate.canon.messages import Outcome
from bankgate.domain.leases import Leases
from bankgate.domain.ledger import Ledger
from bankgate.store import model, n8outbox
from bankgate.store.errors import N8Unavailable


@pytest.fixture
def split(tmp_path, clock):
    store = make_store("sqlite+sqlite", tmp_path)
    seed_fixture(store)
    store.initial_paid = bills(store)
    yield store, Ledger(store, dict(BANKS), now=clock)
    store.stop()


def _lose_one(store, ledger, serial: str = "S1") -> None:
    """A payment whose N8 commit fails after the gateway's."""
    with _FailingCommit(store):
        with pytest.raises(N8Unavailable):
            ledger.pay(pay(serial))
    assert count(store, model.n8_outbox) == 1


def _job(store) -> N8Repair:
    clock = Clock()
    gw = SimpleNamespace(store=store, reactor=clock)
    job = N8Repair(gw, Leases(store, now=lambda: NOW, clock=clock), interval=5)
    job.min_age = 0  # the rows here are a moment old
    return job


def test_the_job_applies_a_lost_commit_once(split):
    store, ledger = split
    _lose_one(store, ledger)
    job = _job(store)
    assert job.run() == (1, 0)
    assert count(store, model.n8_outbox) == 0
    assert count(store, store.n8["payment"]) == 1
    assert job.run() == (0, 0)  # nothing left: nothing done twice
    assert count(store, store.n8["payment"]) == 1
    check_books(store)


def test_the_job_keeps_a_row_n8_refuses_and_catches_up_later(split, caplog):
    store, ledger = split
    _lose_one(store, ledger)
    job = _job(store)
    with _FailingCommit(store, times=1):
        assert job.run() == (0, 1)
    assert job.waiting == 1
    (row,) = n8outbox.pending(store.engine)
    assert row["attempts"] == 1 and "N8 went away" in row["last_error"]
    assert count(store, store.n8["payment"]) == 0
    assert job.run() == (1, 0)
    assert job.waiting == 0
    check_books(store)


def test_the_job_runs_on_its_clock(split):
    store, ledger = split
    _lose_one(store, ledger)
    job = _job(store)
    ran = []
    job.tick = lambda: ran.append(job.run())
    job.loop.f = job.tick
    job.start()
    assert ran == []  # not at once: the start's own repair ran before
    job.loop.clock.advance(5)
    assert ran == [(1, 0)]
    job.stop()
    assert not job.loop.running


def test_the_start_applies_every_row(split):
    store, ledger = split
    _lose_one(store, ledger)
    assert repair_at_start(store) == "N8 outbox: 1 applied"
    assert repair_at_start(store) == "N8 outbox empty"
    check_books(store)


def _config(tmp_path) -> str:
    path = tmp_path / "bankgate.toml"
    path.write_text(
        f'[gateway]\ndata_dir = "{tmp_path.as_posix()}"\n'
        f'[database]\nurl = "sqlite:///{(tmp_path / "bg.db").as_posix()}"\n'
        f'[n8]\ncreate = false\n'
        f'[n8.database]\nurl = "sqlite:///{(tmp_path / "n8.db").as_posix()}"\n'
        f'repair_every = 2\n')
    return str(path)


def test_pending_lists_and_repair_applies(split, tmp_path, capsys):
    store, ledger = split
    _lose_one(store, ledger)
    path = _config(tmp_path)
    assert main(["-c", path, "n8", "pending", "--older-than", "0"]) == 1
    out = capsys.readouterr().out
    receipt = n8outbox.pending(store.engine)[0]["receipt_no"]
    assert receipt in out
    assert "post " + receipt + " customer 100000123 5480.00 yuan, 3 bill(s)" in out
    assert "1 waiting" in out and "every 2 s" in out
    assert main(["-c", path, "n8", "repair", "--older-than", "0", "--actor", "wang.wu"]) == 0
    assert "1 applied to N8, 0 still waiting" in capsys.readouterr().out
    with store.engine.connect() as c:
        (row,) = c.execute(sa.select(model.audit).where(model.audit.c.action == "n8-repair")
                           ).mappings().all()
    assert row["actor"] == "wang.wu" and '"applied": 1' in row["detail"]
    assert main(["-c", path, "n8", "pending", "--older-than", "0"]) == 0
    assert "nothing waiting" in capsys.readouterr().out
    check_books(store)
    # the bank's repeat now gets its first answer
    r = ledger.pay(pay("S1"))
    assert r.outcome is Outcome.OK and r.retry


def test_pending_without_a_database_of_its_own_says_so(tmp_path, capsys):
    path = tmp_path / "bankgate.toml"
    path.write_text(f'[gateway]\ndata_dir = "{tmp_path.as_posix()}"\n')
    assert main(["-c", str(path), "n8", "pending"]) == 0
    assert "no [n8.database]" in capsys.readouterr().out


@pytest.mark.parametrize("body, problem", [
    ('url = "mysql://root@host/n8"', "n8.database.url"),
    ('url = "n8.db"', "expected an SQLAlchemy URL"),
    ('url = "sqlite:///n8.db"\nrepair_every = 0', "n8.database.repair_every"),
    ('url = "sqlite:///n8.db"\nport = 1', "port"),
    ('repair_every = 5', "url"),
])
def test_n8_database_configuration_errors_name_the_key(tmp_path, monkeypatch, body, problem):
    import sys

    from bankgate.app.config import ConfigError
    from bankgate.app.config import load_config as load

    monkeypatch.setitem(sys.modules, "MySQLdb", None)  # mysql:// needs it: not installed
    path = tmp_path / "bankgate.toml"
    path.write_text(f'[gateway]\ndata_dir = "{tmp_path.as_posix()}"\n[n8.database]\n{body}\n')
    with pytest.raises(ConfigError, match=problem.replace(".", r"\.")):
        load(str(path))


def test_n8_database_the_same_as_the_gateways_is_one_database(tmp_path):
    from bankgate.app.config import load_config as load

    url = f"sqlite:///{(tmp_path / 'bg.db').as_posix()}"
    path = tmp_path / "bankgate.toml"
    path.write_text(f'[gateway]\ndata_dir = "{tmp_path.as_posix()}"\n[database]\nurl = "{url}"\n'
                    f'[n8.database]\nurl = "{url}"\n')
    assert load(str(path)).n8_db_url is None
    path.write_text(f'[gateway]\ndata_dir = "{tmp_path.as_posix()}"\n[database]\nurl = "{url}"\n'
                    f'[n8.database]\nurl = "{url[:-5]}n8.db"\n')
    assert load(str(path)).n8_db_url.endswith("n8.db")


def test_writes_waiting_over_a_minute_raise_an_alert(split):
    from bankgate.app.alerts import read_inputs
    from bankgate.domain import alerts as rules

    store, ledger = split
    now = NOW
    assert rules.n8_alerts(0, 0.0, now) == []
    assert rules.n8_alerts(3, 59.0, now) == []
    (a,) = rules.n8_alerts(3, 600.0, now)
    assert (a.kind, a.subject, a.severity) == (rules.N8_WAITING, "n8", rules.CRITICAL)
    assert "3 write(s)" in a.message and "10 min old" in a.message
    assert rules.N8_WAITING in rules.FROM_DATABASE  # the outbox is in the gateway's database
    # the input is read from the gateway's outbox
    inputs = store.run_sync(read_inputs, [], {}, readonly=True)
    assert inputs.n8_waiting == (0, 0.0)
    _lose_one(store, ledger)
    n, age = store.run_sync(read_inputs, [], {}, readonly=True).n8_waiting
    assert n == 1 and 0 <= age < 60


def test_pending_on_a_database_not_migrated_yet_changes_nothing(tmp_path, capsys):
    path = _config(tmp_path)  # bg.db does not exist yet
    assert main(["-c", path, "n8", "pending"]) == 0
    assert "no outbox yet" in capsys.readouterr().out
    assert main(["-c", path, "n8", "repair"]) == 0
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'bg.db'}")
    assert sa.inspect(engine).get_table_names() == []  # not migrated by a look
    engine.dispose()


def test_n8_on_sqlite_keeps_one_worker(tmp_path):
    from bankgate.app.config import ConfigError, with_workers
    from bankgate.app.config import load_config as load

    path = tmp_path / "bankgate.toml"
    body = (f'[gateway]\ndata_dir = "{tmp_path.as_posix()}"\nworkers = WORKERS\n'
            '[database]\nurl = "postgresql+psycopg://u@h/gw"\n'
            f'[n8.database]\nurl = "sqlite:///{(tmp_path / "n8.db").as_posix()}"\n')
    path.write_text(body.replace("WORKERS", "2"))
    with pytest.raises(ConfigError, match=r"n8\.database\.url: SQLite keeps one writer"
                                          r".* for N8's database"):
        load(str(path))
    path.write_text(body.replace("WORKERS", "1"))
    with pytest.raises(ConfigError, match="N8's database"):
        with_workers(load(str(path)), 2)


# -- the outbox's vacuum (PostgreSQL) -------------------------------------------------------


def _vacuums(store) -> int:
    """How many times the outbox was vacuumed by hand (PostgreSQL's own count)."""
    with store.engine.connect() as c:  # a fresh transaction: a fresh view of the statistics
        return c.execute(sa.text("SELECT vacuum_count FROM pg_stat_user_tables"
                                 " WHERE relname = :t"), {"t": model.n8_outbox.name}).scalar()


def test_the_job_vacuums_the_outbox_on_postgresql_once_it_holds_enough_dead_rows(
        tmp_path, clock, monkeypatch):
    store = make_store("postgres+mariadb", tmp_path)
    try:
        seed_fixture(store)
        ledger = Ledger(store, dict(BANKS), now=clock)
        for serial in ("V1", "V2"):
            assert ledger.pay(pay(serial, customer="100000200", amount=1000,
                                  bank="any")).outcome == Outcome.OK
        job = _job(store)
        before = _vacuums(store)
        monkeypatch.setattr(n8outbox, "VACUUM_AFTER", 10**9)
        assert job.run() == (0, 0)
        assert count(store, model.n8_outbox) == 0  # the job deleted what was applied
        assert _vacuums(store) == before  # too few dead rows
        monkeypatch.setattr(n8outbox, "VACUUM_AFTER", 0)
        assert job.run() == (0, 0)
        assert _vacuums(store) == before + 1
        # the count is PostgreSQL's: five rows inserted and deleted are five dead ones
        if store.engine.dialect.server_version_info < (15,):
            pytest.skip("pg_stat_force_next_flush(): PostgreSQL 15 and later")
        o = model.n8_outbox
        with store.engine.connect() as c:
            with c.begin():
                c.execute(o.insert(), [{"created_at": NOW, "ops": "[]"} for _ in range(5)])
                c.execute(o.delete())
            c.exec_driver_sql("SELECT pg_stat_force_next_flush()")  # at this transaction's end
            c.commit()
        assert n8outbox.vacuum(store, least=5) is True
        assert _vacuums(store) == before + 2
        assert n8outbox.vacuum(store, least=5) is False  # none left
    finally:
        store.outbox_done.clear()
        close_store(store)


def test_the_outbox_is_vacuumed_on_postgresql_only_and_a_failure_is_logged(split, caplog):
    store, _ = split
    assert n8outbox.vacuum(store, least=0) is False  # SQLite clears deleted rows itself
    down = sa.create_engine("postgresql+psycopg://nobody@127.0.0.1:9/none")  # nothing there
    gone = SimpleNamespace(dialect="postgresql", engine=down)
    with caplog.at_level("WARNING", logger="bankgate.n8"):
        assert n8outbox.vacuum(gone, least=0) is False
    assert "N8 outbox not vacuumed" in caplog.text
    down.dispose()
