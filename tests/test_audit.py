"""What the ``bankgate`` command does shows up: every back-office command takes
``--actor`` (default: the login name) and is recorded in ``bg_audit`` with it,
and the running service logs each new audit row as it sees it
(:mod:`bankgate.app.audit_tail`), on a ``task.Clock``."""

from __future__ import annotations

import argparse
import getpass
import re

import pytest
import sqlalchemy as sa
from conftest import NOW, make_store
from twisted.internet import defer, task
from twisted.logger import Logger, formatEvent

from bankgate.app.audit_tail import GAP_WAIT, AuditTail, describe
from bankgate.app.cli import build_parser
from bankgate.app.cli import main as cli
from bankgate.app.cli.actor import default_actor
from bankgate.canon import messages as m
from bankgate.canon.messages import Outcome
from bankgate.store import audit, model

CARD = "6222020200012345678"

# -- the tail, on a clock ------------------------------------------------------------------


class Tail:
    """An AuditTail over a real (SQLite) store, its store calls run at once, its
    log lines collected."""

    def __init__(self, store):
        self.store = store
        self.clock = task.Clock()
        self.events: list[dict] = []
        self.fail: Exception | None = None
        self.tail = AuditTail(store, self.clock, run=self._run,
                              log=Logger(namespace="test.audit", observer=self.events.append))

    def _run(self, fn, *args):
        if self.fail is not None:
            return defer.fail(self.fail)
        return defer.succeed(self.store.run_sync(fn, *args))

    def lines(self) -> list[str]:
        out = [formatEvent(e) for e in self.events]
        self.events.clear()
        return out

    def write(self, actor, action, subject="", detail=None):
        """What another process (the bankgate command) does: a row, committed."""
        self.store.run_sync(audit.record, NOW, actor, action, subject, detail)


@pytest.fixture
def tail(tmp_path):
    store = make_store("sqlite", tmp_path)
    t = Tail(store)
    yield t
    if t.tail.running:
        t.tail.stopService()
    store.stop()


def test_the_service_logs_each_new_audit_row_from_its_start_on(tail):
    tail.write("li", "invoice-print", "210000000001", {"receipt_no": "20261127000000000042"})
    tail.tail.startService()
    assert tail.lines() == [f"audit: following bg_audit after id {tail.tail.last}"]
    assert tail.tail.last == 1  # the history is not logged again
    tail.clock.advance(5)
    assert tail.lines() == []  # nothing new, nothing said
    tail.write("wang", "refund", "20261127000000000002",
               {"reason": "customer moved out", "amount": 12000, "bank": "fx"})
    tail.write("zhang", "invoice-void", "210000000002", {"reason": "spoilt", "was": "PRINTED"})
    tail.clock.advance(4.9)
    assert tail.lines() == []  # every few seconds, on the service's clock
    tail.clock.advance(0.1)
    assert tail.lines() == [
        "audit: wang refund 20261127000000000002: amount=12000, bank=fx,"
        " reason=customer moved out",
        "audit: zhang invoice-void 210000000002: reason=spoilt, was=PRINTED",
    ]
    tail.clock.advance(5)
    assert tail.lines() == []  # each row once
    tail.tail.stopService()
    assert tail.clock.getDelayedCalls() == []


def test_account_and_card_numbers_are_never_logged_in_full(tail):
    tail.tail.startService()
    tail.lines()
    tail.write("li", "withholding-sign", "100000123",
               {"account": CARD, "bank": "103210", "note": f"card {CARD} given at the counter",
                "previous_account": "6222********5678", "bills": ["B0001", "B0002"]})
    tail.clock.advance(5)
    (line,) = tail.lines()
    assert CARD not in line
    assert "account=622202*********5678" in line and "card 622202*********5678 given" in line
    assert "previous_account=6222********5678" in line  # masked already: left as it was
    assert 'bills=["B0001","B0002"]' in line


def test_serials_file_names_and_receipts_are_not_taken_for_card_numbers():
    line = describe({"actor": "li", "action": "withholding-batch",
                     "subject": "1032102026112701.PK",
                     "detail": {"serial": "PK0111270000000001", "receipt": "20261127000000000007",
                                "note": "paid by 6222020200012345678, see 1032102026112701.PKJG"}})
    assert line.startswith("li withholding-batch 1032102026112701.PK:")
    assert "serial=PK0111270000000001" in line and "receipt=20261127000000000007" in line
    assert "paid by 622202*********5678, see 1032102026112701.PKJG" in line


def test_long_details_are_cut_to_one_short_line():
    line = describe({"actor": "recon", "action": "reconcile", "subject": "fx 2026-11-27",
                     "detail": {"sha256": "ab" * 32, "note": "x\ny " * 200, "empty": ""}})
    assert "\n" not in line and len(line) < 300 and "empty" not in line
    assert line.startswith("recon reconcile fx 2026-11-27: sha256=abababab")


def test_a_database_outage_is_said_once_and_the_tail_goes_on(tail):
    tail.tail.startService()
    tail.lines()
    tail.fail = RuntimeError("database is locked")
    tail.clock.advance(5)
    tail.clock.advance(5)
    assert tail.lines() == ["audit: cannot read bg_audit (database is locked); trying again"
                            " every 5 s"]
    tail.fail = None
    tail.write("wang", "cutoff", "fx 2026-11-27", {"reason": "operator"})
    tail.clock.advance(5)
    assert tail.lines() == ["audit: bg_audit readable again",
                            "audit: wang cutoff fx 2026-11-27: reason=operator"]


def test_a_look_still_at_work_is_not_started_twice(tail):
    pending: list[defer.Deferred] = []
    tail.tail.run = lambda fn, *a: pending.append(defer.Deferred()) or pending[-1]
    tail.tail.startService()
    tail.clock.advance(5)
    tail.clock.advance(5)
    assert len(pending) == 1
    pending[0].callback(7)
    assert tail.tail.last == 7
    tail.clock.advance(5)
    assert len(pending) == 2


def test_an_id_committed_late_is_still_logged(tail):
    """Server databases hand out ids before commit: a row may appear after a
    newer one.  The ids skipped are looked for again for a minute."""
    t = tail.tail
    t.last = 10
    t.show([{"id": 12, "actor": "a", "action": "refund", "subject": "R12", "detail": {}}])
    assert t.last == 12 and set(t.gaps) == {11}
    t.show([{"id": 11, "actor": "b", "action": "refund", "subject": "R11", "detail": {}}])
    assert t.gaps == {} and t.last == 12
    assert tail.lines() == ["audit: a refund R12", "audit: b refund R11"]
    t.show([{"id": 14, "actor": "c", "action": "cutoff", "subject": "", "detail": {}}])
    assert set(t.gaps) == {13}
    tail.clock.advance(GAP_WAIT + 1)
    t.show([])
    assert t.gaps == {}  # a rolled-back transaction's id: given up after a minute


def test_the_tail_reads_late_ids_from_the_database(tail):
    for i in range(3):
        tail.write("x", "refund", f"R{i}")
    rows = tail.store.run_sync(audit.after, 1, 500, [1])
    assert [r["id"] for r in rows] == [1, 2, 3]
    assert tail.store.run_sync(audit.after, 3) == []
    assert tail.store.run_sync(audit.newest_id) == 3


# -- --actor on every back-office command ----------------------------------------------------

# Commands that change nothing the audit trail records: reading, checking,
# listing, creating the schema, demo data, and playing the bank for demos.
NOT_BACK_OFFICE = {
    "config check", "db upgrade", "demo seed", "statement write", "recon runs",
    "recon exceptions", "plugins list", "plugins check", "invoice stock", "invoice check",
    "withholding list", "withholding simulate-host", "withholding simulate-result",
    "status", "backup", "report", "workorders list", "workorders export", "user list",
    "n8 check", "n8 pending",
}


def _commands(p: argparse.ArgumentParser, path=()):
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(path), p
    for a in subs:
        for name, sp in a.choices.items():
            yield from _commands(sp, (*path, name))


def test_every_back_office_command_takes_an_actor_defaulting_to_the_login_name(monkeypatch):
    monkeypatch.setattr(getpass, "getuser", lambda: "li.si")
    monkeypatch.delenv("SUDO_USER", raising=False)
    checked = []
    for name, parser in _commands(build_parser()):
        if name in NOT_BACK_OFFICE or name.startswith("simulate "):
            continue
        actor = [a for a in parser._actions if "--actor" in a.option_strings]
        assert actor, f"bankgate {name}: a back-office command without --actor"
        assert actor[0].default == "li.si" and not actor[0].required, name
        checked.append(name)
    assert {"refund", "cutoff", "reconcile", "recon resolve", "invoice print", "invoice void",
            "withholding batch", "withholding result", "withholding debit", "counter pay",
            "reverse", "recon post", "invoice reprint", "withholding resend"} <= set(checked)


def test_the_login_name_under_sudo_is_the_caller(monkeypatch):
    monkeypatch.setattr(getpass, "getuser", lambda: "root")
    monkeypatch.setenv("SUDO_USER", "wang")
    assert default_actor() == "wang"

    def nobody():
        raise KeyError("getpwuid(): uid not found: 1234")

    monkeypatch.setattr(getpass, "getuser", nobody)
    assert re.fullmatch(r"uid-\d+", default_actor())


# -- the commands, end to end on one database -----------------------------------------------

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

[bank.options]
invoice = true

[bank.reconcile]
pdf = false

[[bank]]
name = "dl"
plugin = "ref-delim"
bank_code = "103210"
policy = "partial"

[bank.options]
withholding = true
"""


def test_what_the_command_does_is_audited_with_its_actor_and_logged_by_the_service(
        tmp_path, capsys, monkeypatch):
    from bankgate.app.config import load_config
    from bankgate.domain.ledger import Ledger
    from bankgate.store import recon as rsql
    from bankgate.store.db import Store

    monkeypatch.setattr(getpass, "getuser", lambda: "wang.os")
    monkeypatch.delenv("SUDO_USER", raising=False)
    data = tmp_path / "var"
    path = tmp_path / "bankgate.toml"
    path.write_text(CONFIG.format(data=data), encoding="utf-8")
    c = ["-c", str(path)]
    assert cli([*c, "demo", "seed", "--customers", "40"]) == 0
    cfg = load_config(path)
    store = Store(cfg.db_url, cfg.n8, threads=2)
    watcher = Tail(store)  # the running service, started before the commands
    watcher.tail.startService()
    ledger = Ledger(store, {b.name: b.policy_() for b in cfg.banks})
    d = "2026-11-27"
    receipts, customers = [], store.run_sync(rsql.customers_with_open_bills, (), 3)
    for i, cust in enumerate(customers):
        o = m.Origin("fx", NOW.date(), "101500")
        q = ledger.query(m.QueryRequest(o, cust))
        r = ledger.pay(m.PaymentRequest(o, f"FX{i:04d}", cust, q.total,
                                        content=m.fingerprint(cust, q.total)))
        assert r.outcome is Outcome.OK
        receipts.append(r.receipt_no)
    capsys.readouterr()

    assert cli([*c, "invoice", "issue", "--to", "fx", "--code", "2100", "--first", "1",
                "--last", "20", "--actor", "zhang"]) == 0
    assert cli([*c, "invoice", "print", receipts[0], "--actor", "li"]) == 0
    inv_no = re.search(r"invoice (\d+) for receipt", capsys.readouterr().out).group(1)
    assert cli([*c, "invoice", "void", inv_no, "--reason", "spoilt"]) == 0
    assert cli([*c, "refund", receipts[1], "--reason", "customer moved out"]) == 0
    assert cli([*c, "cutoff", "--bank", "fx", "--date", d, "--actor", "zhao"]) == 0
    assert cli([*c, "withholding", "sign", customers[2], "--bank", "dl", "--account", CARD,
                "--actor", "li"]) == 0
    assert cli([*c, "withholding", "batch", "--bank", "dl", "--date", d]) == 0
    pk = re.search(r"(\S+\.PK): ", capsys.readouterr().out).group(1)
    assert cli([*c, "withholding", "batch", "--bank", "dl", "--rewrite", pk]) == 0
    assert cli([*c, "withholding", "simulate-result", "--bank", "dl", pk]) == 0
    assert cli([*c, "withholding", "result", "--bank", "dl", "--actor", "li"]) == 0
    assert cli([*c, "statement", "write", "--bank", "fx", "--date", d,
                "--perturb", "amount"]) == 0
    assert cli([*c, "reconcile", "--bank", "fx", "--date", d, "--actor", "qian"]) == 1
    capsys.readouterr()
    assert cli([*c, "recon", "exceptions", "--bank", "fx"]) == 1
    item = re.search(r"^item\s+(\d+)", capsys.readouterr().out, re.M).group(1)
    assert cli([*c, "recon", "resolve", item, "--note", "bank confirmed"]) == 0

    with store.engine.connect() as conn:
        done = {(r.action, r.actor) for r in conn.execute(
            sa.select(model.audit.c.action, model.audit.c.actor))}
    expected = {
        ("invoice-stock-issue", "zhang"), ("invoice-print", "li"),
        ("invoice-void", "wang.os"), ("refund", "wang.os"), ("cutoff", "zhao"),
        ("withholding-sign", "li"), ("withholding-batch", "wang.os"),
        ("withholding-batch-rewrite", "wang.os"), ("withholding-result", "li"),
        ("reconcile", "qian"), ("recon-resolve", "wang.os"),
    }
    assert expected <= done, expected - done
    # the running service saw each of them, with the actor, in its log
    watcher.clock.advance(5)
    logged = watcher.lines()
    for action, actor in expected:
        assert any(ln.startswith(f"audit: {actor} {action} ") for ln in logged), (action, logged)
    assert not any(CARD in ln for ln in logged)
    watcher.tail.stopService()
    store.stop()


def test_the_gateway_service_follows_the_trail_while_it_runs(tmp_path):
    from datetime import datetime

    from test_service import ThreadedMemoryReactor, tz_now
    from twisted.logger import globalLogPublisher

    from bankgate.app.config import default_config
    from bankgate.app.tap import gateway as build_gateway

    cfg = default_config(str(tmp_path / "var"))
    reactor = ThreadedMemoryReactor()
    tz_now(reactor, datetime(2026, 11, 27, 9, 30))
    gw = build_gateway(cfg, reactor)
    seen: list[str] = []

    def observe(event):
        if event.get("log_namespace") == "bankgate.audit":
            seen.append(formatEvent(event))

    def pump_while(busy):
        while busy():
            f, args, kw = reactor.thread_calls.get(timeout=60)
            f(*args, **kw)

    globalLogPublisher.addObserver(observe)
    try:
        gw.startService()
        reactor.pump_until(gw.ready)
        tail = gw.getServiceNamed("audit-tail")
        assert tail.running
        pump_while(lambda: tail.last is None)
        gw.store.run_sync(audit.record, NOW, "wang", "refund", "20261127000000000002",
                          {"reason": "customer moved out"})
        reactor.advance(5)
        pump_while(lambda: not any("wang refund" in s for s in seen))
        # once, in its own words (the start's catch-up cut-offs may be logged around it)
        assert seen.count("audit: wang refund 20261127000000000002:"
                          " reason=customer moved out") == 1
        reactor.pump_until(gw.stopService())
        assert not tail.running
    finally:
        globalLogPublisher.removeObserver(observe)
