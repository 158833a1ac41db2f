"""The simulated bank host (560/561 and .PKJG files), a real loopback run of
card debits against it, and the ``bankgate withholding`` commands."""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import make_store, seed_fixture
from ledger_helpers import bills
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from bankgate.app.carddebits import build
from bankgate.app.cli.withholding import add_cli
from bankgate.app.config import load_config, parse_config
from bankgate.app.options import withholding_options
from bankgate.codec.registry import load_codec
from bankgate.devtools.debithost import MODES, DebitHost, answer_pk
from bankgate.domain.ledger import Ledger
from bankgate.domain.withholding import Withholding
from bankgate.store import model
from bankgate.store.db import Store

DELIM = load_codec("ref-delim")
CODECS = {"ref-delim": DELIM, "ref-fixed": load_codec("ref-fixed")}
ACCT = "6222020200012345678"
ROOT = Path(__file__).resolve().parent.parent


def make_withholding(ledger, cfg, codecs=CODECS) -> Withholding:
    """The rules as the wiring builds them: the configured banks and their parsed options."""
    return Withholding(ledger, cfg.banks, codecs, withholding_options(cfg, codecs),
                       data_dir=cfg.data_dir)


def frame(text: str) -> bytes:
    body = text.encode("gbk")
    return b"%08d" % len(body) + body


def split_frames(data: bytes) -> list[str]:
    out = []
    while data:
        n = int(data[:8])
        out.append(data[8:8 + n].decode("gbk", errors="replace"))
        data = data[8 + n:]
    return out


REQ = f"560|HEAT01|20261127|093000|S1|100000123|{ACCT}|张三|2730.00|B0001|"
REV = "561|HEAT01|20261127|093100|RS1|S1|2730.00|"


class HostConn:
    def __init__(self, host):
        self.proto = host.factory().buildProtocol(None)
        self.t = StringTransport()
        self.proto.makeConnection(self.t)

    def send(self, text: str) -> list[str]:
        self.proto.dataReceived(frame(text))
        out = split_frames(self.t.value())
        self.t.clear()
        return out


@pytest.fixture
def host():
    clock = task.Clock()
    h = DebitHost(clock, codec=DELIM, now=lambda: datetime(2026, 11, 27, 9, 30),
                  rng=random.Random(7))
    h.tag = 42
    return h


# -- the host ------------------------------------------------------------------------


def test_host_debits_repeats_and_reverses(host):
    c = HostConn(host)
    assert c.send(REQ) == ["000|扣款成功|S1|KK09300004200000001|2730.00|"]
    assert c.send(REQ) == ["104|重复扣款|S1|KK09300004200000001|2730.00|"]
    assert host.standing()["S1"]["amount"] == 273000
    assert c.send(REV) == ["000|冲正成功|S1|"]
    assert c.send(REV) == ["008|已冲正|S1|"]
    assert c.send("561|HEAT01|20261127|093100|RS9|S9|1.00|") == ["006|原交易不存在|S9|"]
    assert host.standing() == {} and len(host.received) == 5
    assert not c.t.disconnecting


def test_host_refuses_accounts(host):
    host.refuse[ACCT] = "101"
    assert HostConn(host).send(REQ) == ["101|余额不足|"]
    assert host.debits == {}


@pytest.mark.parametrize("mode, answers, debited, closed", [
    ("normal", 1, True, False),
    ("silent", 0, True, False),
    ("ignore", 0, False, False),
    ("drop", 0, False, True),
    ("drop-after", 0, True, True),
    ("duplicate", 2, True, False),
    ("busy", 1, False, False),
    ("garbage", 1, True, False),
])
def test_host_modes(host, mode, answers, debited, closed):
    host.script.append(mode)
    c = HostConn(host)
    out = c.send(REQ)
    assert len(out) == answers and ("S1" in host.debits) is debited
    assert c.t.disconnecting is closed
    if mode == "busy":
        assert out == ["021|系统忙|"]
    # the script is consumed: the next request is answered normally
    assert len(c.send(REV)) == (0 if closed else 1)


def test_host_slow_and_one_per_connection(host):
    host.mode, host.delay, host.close_after_answer = "slow", 5.0, True
    c = HostConn(host)
    assert c.send(REQ) == []
    host.clock.advance(5)
    assert split_frames(c.t.value())[0].startswith("000|") and c.t.disconnecting
    assert "tcp" not in MODES and len(MODES) == 9
    with pytest.raises(ValueError):
        DebitHost(host.clock, codec=DELIM, mode="chaos")


def test_host_closes_on_a_bad_request(host):
    c = HostConn(host)
    assert c.send("999|x|") == [] and c.t.disconnecting


# -- .PKJG files ------------------------------------------------------------------------

PK = (
    "B0001|100000123|张三|6222020200012345678|2025-2026|2600.00|130.00|2730.00|\n"
    "B0010|100000200|沈阳重型机械厂|2101000011112222|2026-2027|10000.00|0.00|10000.00|\n"
    "B0020|100000300|李四|6222000000000300|2026-2027|500.00|0.00|500.00|\n"
    "0|3|13230.00|20261127|20261127093000|\n"
).encode("gbk")


def test_answer_pk_by_account_and_customer():
    data, counts = answer_pk(PK, DELIM, fail={"2101000011112222": 3, "100000300": "1"},
                             serial_prefix="PK01")
    assert data.decode("gbk") == (
        "B0001|100000123|6222020200012345678|2730.00|0|PK0111270000000001|\n"
        "B0010|100000200|2101000011112222|10000.00|3||\n"
        "B0020|100000300|6222000000000300|500.00|1||\n"
        "0|3|1|2730.00|\n")
    assert counts == {0: 1, 3: 1, 1: 1}
    recs, trailer = DELIM.read_pkjg(data)
    assert trailer["success_count"] == 1
    with pytest.raises(ValueError):
        answer_pk(PK, DELIM, fail={"100000300": 7})


def test_answer_pk_at_random_is_repeatable():
    a = answer_pk(PK, DELIM, fail_rate=0.5, seed=3)
    assert a == answer_pk(PK, DELIM, fail_rate=0.5, seed=3)
    assert sum(a[1].values()) == 3
    all_fail, counts = answer_pk(PK, DELIM, fail_rate=1.0, seed=1, reasons=(2,))
    assert counts == {2: 3}


# -- real loopback ----------------------------------------------------------------------


def _real_reactor():
    from twisted.internet.selectreactor import SelectReactor

    return SelectReactor()  # a private one: never the global reactor


def _run_until(reactor, fn, limit: float = 30.0):
    out = {}

    def go():
        d = defer.ensureDeferred(fn())
        d.addBoth(lambda r: out.setdefault("r", r))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.callLater(limit, lambda: (out.setdefault("r", TimeoutError("e2e took too long")),
                                      reactor.stop()))
    reactor.run(installSignalHandlers=False)
    r = out["r"]
    if hasattr(r, "raiseException"):
        r.raiseException()
    if isinstance(r, Exception):
        raise r
    return r


@pytest.mark.parametrize("one_per_connection", [True, False])
def test_card_debits_over_real_loopback(tmp_path, one_per_connection):
    reactor = _real_reactor()
    store = make_store("sqlite", tmp_path)
    store.reactor = reactor
    store.start()
    seed_fixture(store)
    host = DebitHost(reactor, codec=DELIM, close_after_answer=one_per_connection)
    port = reactor.listenTCP(0, host.factory(), interface="127.0.0.1")
    cfg = parse_config({"bank": [{
        "name": "dl", "plugin": "ref-delim", "bank_code": "103210",
        "exchange_dir": str(tmp_path / "ex"),
        "options": {"debit_host": f"tcp:host=127.0.0.1:port={port.getHost().port}",
                    "utility_code": "HEAT01", "debit_timeout": 1, "debit_retry": 1,
                    "debit_reconnect": 0.1, "debit_persistent": not one_per_connection}}]})

    def now():
        return datetime.fromtimestamp(reactor.seconds())

    ledger = Ledger(store, {"dl": cfg.banks[0].policy_()}, now=now)
    make_withholding(ledger, cfg).sign("100000123", "dl", ACCT, "clerk")
    debits = build(ledger, cfg, CODECS, reactor, now)
    debits.interval = 0.2
    link = debits.link("dl")

    def row(serial):
        return store.run_sync(lambda tx: dict(tx.conn.execute(sa.select(model.debit).where(
            model.debit.c.utility_serial == serial)).mappings().one()))

    async def scenario():
        link.service.startService()
        debits.start()
        r1 = await debits.debit("dl", "100000123", ("B0001",))
        assert r1.status == "DEBITED", r1
        host.script.append("silent")  # debits, never answers
        r2 = await debits.debit("dl", "100000123", ("B0002",))
        assert r2.status == "REVERSING", r2
        for _ in range(100):
            if row(r2.utility_serial)["status"] != "REVERSING":
                break
            await task.deferLater(reactor, 0.1, lambda: None)
        assert row(r2.utility_serial)["status"] == "REVERSED"
        host.script.append("drop")
        r3 = await debits.debit("dl", "100000123", ("B0003",))
        assert r3.status == "REVERSING", r3
        for _ in range(100):
            if row(r3.utility_serial)["status"] != "REVERSING":
                break
            await task.deferLater(reactor, 0.1, lambda: None)
        assert row(r3.utility_serial)["status"] == "NOT_DEBITED"
        debits.stop()
        await link.service.stopService()
        await port.stopListening()
        return r1

    r1 = _run_until(reactor, scenario)
    store.stop()
    assert list(host.standing()) == [r1.utility_serial]  # the silent debit was given back
    b = bills(store)
    assert b["B0001"][0] == 260000 and b["B0002"] == (0, 0) and b["B0003"] == (0, 0)
    assert [r["txcode"] for r in host.received] == ["560", "560", "561", "560", "561"]


# -- the commands -----------------------------------------------------------------------

CONFIG = """
[gateway]
data_dir = "{data}"

[database]
url = "sqlite:///{data}/bg.db"

[[bank]]
name = "dl"
plugin = "ref-delim"
bank_code = "103210"
policy = "partial"

[bank.options]
withholding = true
debit_host = "tcp:host=127.0.0.1:port={port}"
utility_code = "HEAT01"
debit_timeout = 2
debit_retry = 1
debit_reconnect = 0.1

[[bank]]
name = "fx"
plugin = "ref-fixed"
bank_code = "105210"
"""


@pytest.fixture
def cli_env(tmp_path):
    data = tmp_path / "var"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "bankgate.toml"
    path.write_text(CONFIG.format(data=data, port=port), encoding="utf-8")
    cfg = load_config(path)
    store = Store(cfg.db_url, cfg.n8, threads=2)
    store.create_gateway_tables()
    store.create_n8_tables()
    seed_fixture(store)
    store.stop()
    reactors = []

    def make_reactor():
        r = _real_reactor()
        host = DebitHost(r, codec=DELIM)
        r.listenTCP(port, host.factory(), interface="127.0.0.1")
        reactors.append((r, host))
        return r

    def run(*argv) -> int:
        from bankgate.app.cli import _ledger

        p = argparse.ArgumentParser(prog="bankgate")
        p.add_argument("--config", "-c", default=None)
        sub = p.add_subparsers(dest="command", required=True)
        add_cli(sub, load_config, _ledger, make_reactor=make_reactor)
        args = p.parse_args(["-c", str(path), *argv])
        return args.func(args)

    return run, data, reactors, port, path


def test_cli_agreements_batch_and_result(cli_env, capsys):
    run, data, _r, _p, _path = cli_env
    assert run("withholding", "sign", "100000123", "--bank", "dl", "--account", ACCT,
               "--actor", "clerk") == 0
    assert run("withholding", "sign", "100000200", "--bank", "dl", "--account",
               "2101000011112222", "--actor", "clerk") == 0
    assert run("withholding", "sign", "100000123", "--bank", "fx", "--account", ACCT,
               "--actor", "clerk") == 2
    out = capsys.readouterr()
    assert "account 622202*********5678" in out.out and "does not do withholding" in out.err
    assert ACCT not in out.out
    assert run("withholding", "list", "--bank", "dl") == 0
    out = capsys.readouterr().out
    assert "2 agreement(s)" in out and ACCT not in out

    assert run("withholding", "batch", "--bank", "dl", "--date", "2026-11-27") == 0
    out = capsys.readouterr().out
    pk = data / "exchange" / "dl" / "1032102026112701.PK"
    assert f"{pk}: 4 line(s), 15480.00" in out and pk.exists()
    assert run("withholding", "result", "--bank", "dl") == 0
    assert "no result file waiting" in capsys.readouterr().out

    assert run("withholding", "simulate-result", "--bank", "dl", pk.name,
               "--fail", "2101000011112222=2") == 0
    capsys.readouterr()
    csv_path = data / "failures.csv"
    assert run("withholding", "result", "--bank", "dl", "--csv", str(csv_path)) == 1
    out = capsys.readouterr().out
    assert "debited 3 (5480.00), posted 3 (5480.00), 3 just now" in out
    assert "account and name do not match" in out and csv_path.exists()
    # processing again: nothing posted twice
    pkjg = pk.with_name("1032102026112701.PKJG")
    assert run("withholding", "result", "--bank", "dl", str(pkjg)) == 1
    out = capsys.readouterr().out
    assert "posted 3 (5480.00)" in out and "just now" not in out
    assert run("withholding", "result", "--bank", "dl", "--report", pk.name) == 1
    assert run("withholding", "batch", "--bank", "dl", "--list") == 0
    assert "PROCESSED" in capsys.readouterr().out
    bad = data / "bad.PKJG"
    bad.write_bytes(b"nonsense|\n")
    assert run("withholding", "result", "--bank", "dl", str(bad), "--batch", pk.name) == 2
    assert "refused, nothing changed" in capsys.readouterr().err


def test_cli_card_debit_and_queue(cli_env, capsys):
    run, _data, reactors, _port, _path = cli_env
    assert run("withholding", "sign", "100000123", "--bank", "dl", "--account", ACCT,
               "--actor", "clerk") == 0
    assert run("withholding", "debit", "--bank", "dl", "--customer", "100000123") == 0
    out = capsys.readouterr().out
    assert "DEBITED -- debited and posted" in out and "receipt" in out
    _r, host = reactors[-1]
    assert len(host.standing()) == 1
    assert run("withholding", "queue") == 0
    assert "0 pending" in capsys.readouterr().out
    assert run("withholding", "queue", "--all") == 0
    assert "DEBITED     posted" in capsys.readouterr().out


def test_cli_debit_and_resend_are_audited_with_the_login_name(cli_env, capsys, monkeypatch):
    import getpass

    monkeypatch.setattr(getpass, "getuser", lambda: "clerk.os")
    monkeypatch.delenv("SUDO_USER", raising=False)
    run, data, _r, _p, _path = cli_env
    assert run("withholding", "sign", "100000123", "--bank", "dl", "--account", ACCT,
               "--actor", "clerk") == 0
    assert run("withholding", "debit", "--bank", "dl", "--customer", "100000123") == 0
    assert run("withholding", "queue", "--resend") == 0
    capsys.readouterr()
    eng = sa.create_engine(f"sqlite:///{data / 'bg.db'}")
    with eng.connect() as c:
        done = {(r.action, r.actor) for r in c.execute(
            sa.select(model.audit.c.action, model.audit.c.actor))}
    eng.dispose()
    assert {("withholding-sign", "clerk"), ("card-debit", "clerk.os"),
            ("card-debit-resend", "clerk.os")} <= done


def test_cli_debit_unknown_outcome_is_reversed(cli_env, capsys, monkeypatch):
    run, _data, reactors, port, path = cli_env
    assert run("withholding", "sign", "100000123", "--bank", "dl", "--account", ACCT,
               "--actor", "clerk") == 0
    import bankgate.devtools.debithost as dh

    real_init = dh.DebitHost.__init__

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        self.script.append("silent")

    monkeypatch.setattr(dh.DebitHost, "__init__", init)
    code = run("withholding", "debit", "--bank", "dl", "--customer", "100000123",
               "--bills", "B0002")
    out = capsys.readouterr().out
    assert code == 1 and "REVERSED" in out, out
    _r, host = reactors[-1]
    assert host.standing() == {} and [r["txcode"] for r in host.received] == ["560", "561"]
    assert run("withholding", "queue", "--all") == 0
    assert "REVERSED" in capsys.readouterr().out
    assert run("withholding", "debit", "--bank", "fx", "--customer", "100000123") == 2


def test_cli_simulate_host_in_a_process(cli_env):
    _run, _data, _r, port, path = cli_env
    script = ("import argparse,sys\n"
              "from bankgate.app.config import load_config\n"
              "from bankgate.app.cli import _ledger\n"
              "from bankgate.app.cli.withholding import add_cli\n"
              "p=argparse.ArgumentParser(); p.add_argument('--config','-c')\n"
              "s=p.add_subparsers(dest='command', required=True)\n"
              "add_cli(s, load_config, _ledger)\n"
              "a=p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", script, "-c", str(path), "withholding",
                             "simulate-host", "--bank", "dl"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(proc.stderr.read().decode()) from None
                time.sleep(0.1)
        with s:
            s.sendall(frame(REQ))
            head = s.recv(8)
            body = b""
            while len(body) < int(head):
                body += s.recv(4096)
        assert body.decode("gbk").startswith("000|扣款成功|S1|KK")
    finally:
        proc.terminate()
        proc.wait(10)
