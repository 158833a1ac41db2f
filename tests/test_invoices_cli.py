"""``bankgate invoice stock|issue|print|reprint|void|check``: on a parser of
the test's own, and composed into the real ``bankgate`` parser with a real
configuration file."""

from __future__ import annotations

import argparse

import pytest
from conftest import NOW, FakeClock, seed_fixture
from invoice_helpers import gw_invoices, n8_invoices, pdf_strings, setup
from ledger_helpers import pay

from bankgate.app.cli.invoices import add_cli
from bankgate.store.db import Store


@pytest.fixture
def world(tmp_path):
    from conftest import make_store

    store = make_store("sqlite", tmp_path)
    clock = FakeClock()
    cfg, ledger, inv, _ = setup(store, clock, tmp_path)
    p = argparse.ArgumentParser(prog="bankgate")
    p.add_argument("--config", "-c", default=None)
    sub = p.add_subparsers(dest="command", required=True)
    seen = []

    def load(path):
        seen.append(path)
        return cfg

    add_cli(sub, load, lambda c: ledger)

    def run(*argv):
        args = p.parse_args(["-c", "bg.toml", *argv])
        return args.func(args)

    yield run, ledger, store, cfg
    assert set(seen) <= {"bg.toml"}
    store.stop()


def test_a_day_with_invoices_from_the_command_line(world, capsys, tmp_path):
    run, ledger, store, cfg = world
    assert run("invoice", "issue", "--to", "fixed", "--code", "2100", "--first", "1",
               "--last", "5", "--actor", "ops1") == 0
    assert "issued 210000000001-210000000005 (5 numbers) to fixed, low water 3" in \
        capsys.readouterr().out
    # overlap refused, exit 1, the reason on stderr
    assert run("invoice", "issue", "--to", "counter", "--code", "2100", "--first", "5",
               "--last", "9", "--actor", "ops1") == 1
    assert "overlaps range 210000000001-210000000005 issued to fixed" in capsys.readouterr().err
    r1 = ledger.pay(pay("S1"))
    r2 = ledger.pay(pay("S2", customer="100000200", amount=1000000))
    assert (r1.invoice_no, r2.invoice_no) == ("210000000001", "210000000002")

    assert run("invoice", "stock") == 0
    out = capsys.readouterr().out
    assert "fixed" in out and "LOW" in out and "3 left" in out and "issued 2" in out
    assert "range    1 210000000001-210000000005  next 210000000003" in out

    assert run("invoice", "print", r1.receipt_no, "--actor", "ops1") == 0
    out = capsys.readouterr().out
    path = out.strip().rsplit(": ", 1)[1]
    assert path.endswith("invoices/fixed/210000000001.pdf")
    assert "张三" in pdf_strings(open(path, "rb").read())
    assert run("invoice", "print", "210000000001", "--actor", "ops1") == 1
    assert "printed already" in capsys.readouterr().err

    assert run("invoice", "reprint", "210000000001", "--actor", "ops2") == 0
    assert "copy 1 (补打)" in capsys.readouterr().out

    assert run("invoice", "print", "210000000001", "--reissue", "--actor", "ops1") == 1
    assert "a reason is required" in capsys.readouterr().err
    # a print's --reason goes into the audit row; a refused print records nothing
    assert run("invoice", "print", "210000000001", "--reason", "x", "--actor", "ops1") == 1
    assert "printed already" in capsys.readouterr().err
    assert run("invoice", "print", r1.receipt_no, "--reissue", "--reason", "torn",
               "--actor", "ops1", "--out", str(tmp_path / "out")) == 0
    out = capsys.readouterr().out
    assert "invoice 210000000001 void; re-issued as 210000000003" in out
    assert (tmp_path / "out" / "210000000003.pdf").exists()

    assert run("invoice", "void", "210000000002", "--reason", "wrong customer",
               "--actor", "ops2") == 0
    assert "invoice 210000000002 (issued)" in capsys.readouterr().out
    assert gw_invoices(store)["210000000002"]["void_reason"] == "wrong customer"

    assert run("invoice", "check") == 0
    assert "0 difference(s)" in capsys.readouterr().out
    t = store.n8["invoice"]
    with store.engine.begin() as c:
        c.execute(t.update().where(t.c.invoice_no == "210000000003").values(amount=7))
    assert run("invoice", "check") == 1
    out = capsys.readouterr().out
    assert "210000000003" in out and "payment differs" in out and "1 difference(s)" in out


def test_required_arguments(world, capsys):
    run, *_ = world
    for argv in (["invoice"], ["invoice", "void", "X", "--actor", "a"],
                 ["invoice", "issue", "--to", "fixed", "--first", "1", "--actor", "a"]):
        with pytest.raises(SystemExit):
            run(*argv)
    capsys.readouterr()


def test_composes_into_the_real_parser(tmp_path, capsys):
    """The lead's one line in bankgate/app/cli/__init__.py: the real ``load_config`` and
    ledger factory, a real configuration file."""
    from bankgate.app import cli

    db = tmp_path / "bg.db"
    conf = tmp_path / "bg.toml"
    conf.write_text(f"""
[gateway]
data_dir = "{tmp_path / 'data'}"
[database]
url = "sqlite:///{db}"
[[bank]]
name = "icbc"
plugin = "ref-fixed"
bank_code = "105210"
[bank.options]
invoice = true
invoice_low_water = 1
invoice_payee = "沈阳供热有限公司"
""", encoding="utf-8")
    assert cli.main(["-c", str(conf), "db", "upgrade", "--create-n8"]) == 0
    store = Store(f"sqlite:///{db}")
    seed_fixture(store)
    p = cli.build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    if "invoice" not in sub.choices:  # until the lead adds the line
        add_cli(sub, cli.load_config, cli._ledger)
    capsys.readouterr()

    def run(*argv):
        args = p.parse_args(["-c", str(conf), *argv])
        return args.func(args)

    assert run("invoice", "issue", "--to", "icbc", "--first", "1", "--last", "2",
               "--actor", "ops1") == 0
    from bankgate.app.config import load_config
    from bankgate.app.options import invoice_settings
    from bankgate.domain.invoices import make_hook
    from bankgate.domain.ledger import Ledger

    cfg = load_config(conf)
    ledger = Ledger(store, {b.name: b.policy_() for b in cfg.banks}, now=lambda: NOW,
                    hooks=[make_hook(invoice_settings(cfg))])
    r = ledger.pay(pay("S1", bank="icbc"))
    assert r.invoice_no == "00000001"
    assert n8_invoices(store)["00000001"]["pay_id"] == r.receipt_no
    assert run("invoice", "print", r.receipt_no, "--actor", "ops1") == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "data" / "invoices" / "icbc" / "00000001.pdf") in out
    assert run("invoice", "stock") == 0
    assert "icbc             LOW          1 left (low water 1)" in capsys.readouterr().out
    assert run("invoice", "check") == 0
    store.stop()


def test_without_actor_the_login_name_is_recorded(tmp_path, capsys, monkeypatch):
    import getpass

    import sqlalchemy as sa

    from bankgate.store import model

    monkeypatch.setattr(getpass, "getuser", lambda: "ops.os")
    monkeypatch.delenv("SUDO_USER", raising=False)
    from conftest import make_store

    store = make_store("sqlite", tmp_path)
    cfg, ledger, _inv, _ = setup(store, FakeClock(), tmp_path)
    p = argparse.ArgumentParser(prog="bankgate")
    p.add_argument("--config", "-c", default=None)
    add_cli(p.add_subparsers(dest="command", required=True), lambda path: cfg,
            lambda c: ledger)  # built after getuser is replaced: the default is "ops.os"

    def run(*argv):
        args = p.parse_args(argv)
        return args.func(args)

    assert run("invoice", "issue", "--to", "fixed", "--code", "2100", "--first", "1",
               "--last", "5") == 0
    r = ledger.pay(pay("S1"))
    assert run("invoice", "print", r.receipt_no) == 0
    assert run("invoice", "void", r.invoice_no, "--reason", "spoilt", "--actor", "ops1") == 0
    with store.engine.connect() as c:
        done = [(a.action, a.actor) for a in c.execute(
            sa.select(model.audit.c.action, model.audit.c.actor).order_by(model.audit.c.id))]
    assert ("invoice-stock-issue", "ops.os") in done and ("invoice-print", "ops.os") in done
    assert ("invoice-void", "ops1") in done
    capsys.readouterr()
    store.stop()
