"""``bankgate reconcile``, ``bankgate statement write`` and ``bankgate recon``."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from bankgate.app.cli import main as cli
from bankgate.app.config import load_config
from bankgate.canon import messages as m
from bankgate.canon.messages import Outcome
from bankgate.domain.ledger import Ledger
from bankgate.store import recon as sql
from bankgate.store.db import Store

D = date(2026, 11, 27)

CONFIG = """
[gateway]
data_dir = "{data}"

[database]
url = "sqlite:///{data}/bg.db"

[n8]
create = true

[[bank]]
name = "fx"
plugin = "ref-fixed"
bank_code = "105210"
policy = "exact"

[bank.reconcile]
pdf = false

[[bank]]
name = "dl"
plugin = "ref-delim"
bank_code = "103210"
policy = "partial"
"""


@pytest.fixture
def env(tmp_path):
    data = tmp_path / "var"
    cfg_path = tmp_path / "bankgate.toml"
    cfg_path.write_text(CONFIG.format(data=data), encoding="utf-8")
    assert cli(["-c", str(cfg_path), "demo", "seed", "--customers", "40"]) == 0
    cfg = load_config(cfg_path)
    store = Store(cfg.db_url, cfg.n8, threads=2)
    ledger = Ledger(store, {b.name: b.policy_() for b in cfg.banks})
    paid = []
    for i, c in enumerate(store.run_sync(sql.customers_with_open_bills, (), 6)):
        o = m.Origin("fx", D, "101500")
        q = ledger.query(m.QueryRequest(o, c))
        r = ledger.pay(m.PaymentRequest(o, f"FX{i:04d}", c, q.total,
                                        content=m.fingerprint(c, q.total)))
        assert r.outcome is Outcome.OK
        paid.append((f"FX{i:04d}", c, q.total))
    yield cfg_path, cfg, store, paid, data
    store.stop()


def test_statement_write_then_reconcile_balanced(env, capsys):
    cfg_path, cfg, store, paid, data = env
    assert cli(["-c", str(cfg_path), "statement", "write", "--bank", "fx", "--date",
                "2026-11-27"]) == 0
    path = data / "exchange" / "fx" / "105210_20261127.txt"
    text = path.read_bytes()
    assert text.startswith(b"H20261127105210" + b"%08d" % len(paid))
    assert cli(["-c", str(cfg_path), "reconcile", "--bank", "fx", "--date", "20261127"]) == 0
    out = capsys.readouterr().out
    assert "BALANCED" in out and "matched 6" in out and "csv:" in out


def test_perturbed_statement_dry_run_then_real_run_then_resolve(env, capsys):
    cfg_path, cfg, store, paid, data = env
    assert cli(["-c", str(cfg_path), "statement", "write", "--bank", "fx", "--date",
                "2026-11-27", "--perturb"]) == 0
    out = capsys.readouterr().out
    for word in ("bank-only: added", "utility-only: left out", "amount differs",
                 "date differs", "totals differ"):
        assert word in out
    # header totals differ -> with the default policy every change is held
    assert cli(["-c", str(cfg_path), "reconcile", "--bank", "fx", "--date", "2026-11-27",
                "--dry-run"]) == 1
    assert "(dry run)" in capsys.readouterr().out
    assert store.run_sync(sql.reconciled_dates, "fx", D) == set()
    # the bank sends the right header: bank-only posted, utility-only reversed
    assert cli(["-c", str(cfg_path), "statement", "write", "--bank", "fx", "--date",
                "2026-11-27", "--perturb", "bank-only,utility-only,amount,date"]) == 0
    assert cli(["-c", str(cfg_path), "reconcile", "--bank", "fx", "--date", "2026-11-27"]) == 1
    out = capsys.readouterr().out
    assert "posted 1" in out and "reversed 1" in out and "explained by 2 open" in out
    assert cli(["-c", str(cfg_path), "recon", "exceptions", "--bank", "fx"]) == 1
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("item")]
    assert len(lines) == 2
    item = int(lines[0].split()[1])
    assert cli(["-c", str(cfg_path), "recon", "resolve", str(item), "--actor", "zhang",
                "--note", "bank confirmed the utility's amount by phone"]) == 0
    assert "RESOLVED" in capsys.readouterr().out
    assert len(store.run_sync(sql.open_exceptions, "fx")) == 1
    assert cli(["-c", str(cfg_path), "recon", "runs", "--bank", "fx"]) == 0
    assert "EXCEPTIONS" in capsys.readouterr().out


def test_reconcile_a_given_file_and_refuse_a_bad_one(env, tmp_path, capsys):
    cfg_path, cfg, store, paid, data = env
    lines = [f"H20261127105210{len(paid):08d}{sum(a for *_, a in paid):015d}"]
    lines += [f"D{s:<20}20261127101500{c:<20}{a:012d}01" for s, c, a in paid]
    good = tmp_path / "given.txt"
    good.write_bytes("".join(ln + "\r\n" for ln in lines).encode("gbk"))
    assert cli(["-c", str(cfg_path), "reconcile", "--bank", "fx", "--date", "2026-11-27",
                "--file", str(good)]) == 0
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"H2026112710521\r\n")
    assert cli(["-c", str(cfg_path), "reconcile", "--bank", "fx", "--date", "2026-11-27",
                "--file", str(bad)]) == 2
    assert "statement refused" in capsys.readouterr().err
    missing = ["-c", str(cfg_path), "reconcile", "--bank", "dl", "--date", "2026-11-27"]
    assert cli(missing) == 2
    assert "not there yet" in capsys.readouterr().err


def test_ref_delim_error_file_is_written_back(env, capsys):
    cfg_path, cfg, store, paid, data = env
    assert cli(["-c", str(cfg_path), "statement", "write", "--bank", "dl", "--date",
                "2026-11-27", "--perturb", "bank-only"]) == 0
    assert cli(["-c", str(cfg_path), "reconcile", "--bank", "dl", "--date", "2026-11-27"]) == 0
    dzcw = data / "exchange" / "dl" / "10321020261127.DZCW"
    body = dzcw.read_bytes().decode("gbk").splitlines()
    assert body[-1] == "-1|1|" and body[0].startswith("02|SIM20261127")
    assert Path(data / "reports" / "dl").is_dir()


def test_runs_are_numbered_per_bank_and_a_dry_run_takes_no_number(env, capsys, monkeypatch):
    import getpass

    import sqlalchemy as sa

    from bankgate.store import model

    cfg_path, cfg, store, paid, data = env
    monkeypatch.setattr(getpass, "getuser", lambda: "li.si")
    monkeypatch.delenv("SUDO_USER", raising=False)
    c = ["-c", str(cfg_path)]
    assert cli([*c, "statement", "write", "--bank", "fx", "--date", "2026-11-27",
                "--perturb", "bank-only,utility-only"]) == 0
    capsys.readouterr()
    # the dry run: exit 0, it would balance; it says so and changes nothing
    assert cli([*c, "reconcile", "--bank", "fx", "--date", "2026-11-27", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "\nDRY RUN — nothing was changed\n" in out  # after the progress bars
    assert "(dry run): would post 1, would reverse 1 → BALANCED" in out
    assert (data / "reports" / "fx" / "fx_20261127_dryrun.txt").exists()
    # the real run is run 1, by the operator named
    assert cli([*c, "reconcile", "--bank", "fx", "--date", "2026-11-27", "--actor", "wang"]) == 0
    out = capsys.readouterr().out
    assert "reconciliation fx 2026-11-27 run 1: BALANCED" in out
    assert "posted after the fact (补销): 1" in out and "reversed locally (抹账): 1" in out
    assert (data / "reports" / "fx" / "fx_20261127_run1.txt").exists()
    # another bank counts from 1 too
    assert cli([*c, "statement", "write", "--bank", "dl", "--date", "2026-11-27"]) == 0
    assert cli([*c, "reconcile", "--bank", "dl", "--date", "2026-11-27"]) == 0
    assert "reconciliation dl 2026-11-27 run 1: BALANCED" in capsys.readouterr().out
    assert cli([*c, "recon", "runs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[:3] for ln in lines] == [
        ["dl", "run", "1"], ["fx", "run", "1"], ["fx", "dry", "run"]]
    assert "would be BALANCED" in lines[2] and "li.si" in lines[2] and "wang" in lines[1]
    # who did it is in the audit trail: the operator named, else the login name
    with store.engine.connect() as conn:
        rows = {(r.action, r.actor) for r in conn.execute(
            sa.select(model.audit.c.action, model.audit.c.actor))}
    assert {("reconcile-dry-run", "li.si"), ("reconcile", "wang"), ("post", "wang"),
            ("reverse-local", "wang"), ("cutoff", "wang"), ("reconcile", "li.si")} <= rows


def test_exceptions_name_the_run_number_and_resolve_records_the_login_name(
        env, capsys, monkeypatch):
    import getpass

    cfg_path, cfg, store, paid, data = env
    monkeypatch.setattr(getpass, "getuser", lambda: "zhao.liu")
    monkeypatch.delenv("SUDO_USER", raising=False)
    c = ["-c", str(cfg_path)]
    assert cli([*c, "statement", "write", "--bank", "fx", "--date", "2026-11-27",
                "--perturb", "amount"]) == 0
    assert cli([*c, "reconcile", "--bank", "fx", "--date", "2026-11-27", "--dry-run"]) == 1
    assert cli([*c, "reconcile", "--bank", "fx", "--date", "2026-11-27"]) == 1
    capsys.readouterr()
    assert cli([*c, "recon", "exceptions", "--bank", "fx"]) == 1
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("item")]
    assert len(lines) == 1 and " run 1 " in lines[0]  # run 1: the dry run took no number
    item = lines[0].split()[1]
    assert cli([*c, "recon", "resolve", item, "--note", "bank confirmed our amount"]) == 0
    assert "resolved by zhao.liu" in capsys.readouterr().out
    # the bank sends the same statement again: still resolved, nothing to do
    assert cli([*c, "reconcile", "--bank", "fx", "--date", "2026-11-27"]) == 0
    out = capsys.readouterr().out
    assert "run 2: BALANCED" in out and "resolved by an operator on an earlier run: 1" in out
    assert cli([*c, "recon", "exceptions", "--bank", "fx"]) == 0
    assert "0 open exception(s)" in capsys.readouterr().out
    assert cli([*c, "recon", "resolve", item, "--note", " "]) == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli([*c, "recon", "resolve", item, "--note", "x", "--actor", " "])
    assert exc.value.code == 2
    assert "argument --actor: must name who does this" in capsys.readouterr().err
