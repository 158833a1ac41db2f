"""``bankgate statement write`` and ``bankgate simulate ... statement`` go through
the plugin's statement format, the one the reconciliation reads with: what
they write for each reference plugin (and a plugin with only reader and writer
functions) reconciles BALANCED; a plugin that cannot write gets one line and
exit status 2, never a traceback."""

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
ROOT = Path(__file__).resolve().parent.parent

CONFIG = """
[gateway]
data_dir = "{data}"
plugin_dirs = ["{plugins}"]

[database]
url = "sqlite:///{data}/bg.db"

[n8]
create = true

[[bank]]
name = "fx"
plugin = "ref-fixed"
bank_code = "105210"

[[bank]]
name = "dl"
plugin = "ref-delim"
bank_code = "103210"

[[bank]]
name = "iso"
plugin = "ref-iso8583"
bank_code = "105211"
zmk = "0123456789ABCDEFFEDCBA9876543210"
zmk_kcv = "08D7B4"

[[bank]]
name = "xml"
plugin = "ref-xml"
bank_code = "301210"

[[bank]]
name = "rw"
plugin = "stmt-rw-{tag}"
bank_code = "105212"

[[bank]]
name = "ro"
plugin = "stmt-ro-{tag}"
bank_code = "105213"

[[bank]]
name = "none"
plugin = "stmt-none-{tag}"
bank_code = "105214"
"""

#: functions only, no statement_format: ``serial,YYYYMMDD,customer,fen`` lines
FUNCTIONS = '''

from datetime import date as _date


class _Codec(ExampleMiniCodec):
    name = "NAME"

    @staticmethod
    def statement_name(bank_code, d):
        return f"{bank_code}_{d:%Y%m%d}.stm"

    @staticmethod
    def read_statement(data):
        out = []
        for n, line in enumerate(data.decode().splitlines(), 1):
            try:
                s, d, c, a = line.split(",")
                day = _date(int(d[:4]), int(d[4:6]), int(d[6:]))
            except ValueError as e:
                raise ValueError(f"line {n}: {e}") from None
            out.append(dict(serial=s, trade_date=day, customer_no=c, amount=int(a)))
        return out
WRITER

CODEC = _Codec()
'''

WRITER = '''
    @staticmethod
    def write_statement(bank_code, d, records):
        return "".join(f"{r['serial']},{r['trade_date']:%Y%m%d},{r['customer_no']},"
                       f"{r['amount']}\\n" for r in records).encode()
'''

NOTHING = '''

class _Codec(ExampleMiniCodec):
    name = "NAME"


CODEC = _Codec()
'''

SERIALS = {"fx": "FX{:04d}", "dl": "DL{:04d}", "iso": "RR{:010d}", "xml": "XM{:04d}",
           "rw": "RW{:04d}", "ro": "RO{:04d}"}
HAS_XML = (ROOT / "plugins" / "ref_xml.py").is_file()


def _plugins(folder: Path, tag: str) -> None:
    mini = (ROOT / "docs" / "examples" / "plugins" / "example_mini.py").read_text(
        encoding="utf-8")
    for kind, tail in (("rw", FUNCTIONS.replace("WRITER", WRITER)),
                       ("ro", FUNCTIONS.replace("WRITER", "")), ("none", NOTHING)):
        text = mini.replace("CODEC = ExampleMiniCodec()",
                            tail.replace("NAME", f"stmt-{kind}-{tag}"))
        (folder / f"stmt_{kind}_{tag}.py").write_text(text, encoding="utf-8")


@pytest.fixture
def env(tmp_path):
    """A gateway with seven banks and three payments on each of the first six (the
    two-phase ``ref-xml`` bank's confirmed)."""
    data = tmp_path / "var"
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    tag = tmp_path.name.replace("-", "_").lower()
    _plugins(plugins, tag)
    cfg_path = tmp_path / "bankgate.toml"
    cfg_path.write_text(CONFIG.format(data=data.as_posix(), plugins=plugins.as_posix(),
                                      tag=tag), encoding="utf-8")
    assert cli(["-c", str(cfg_path), "demo", "seed", "--customers", "40"]) == 0
    cfg = load_config(cfg_path)
    store = Store(cfg.db_url, cfg.n8, threads=2)
    ledger = Ledger(store, {b.name: b.policy_() for b in cfg.banks})
    customers = store.run_sync(sql.customers_with_open_bills, (), 18)
    paid: dict[str, list] = {}
    for i, c in enumerate(customers):
        bank = list(SERIALS)[i % len(SERIALS)]
        o = m.Origin(bank, D, "101500")
        q = ledger.query(m.QueryRequest(o, c))
        serial = SERIALS[bank].format(i)
        r = ledger.pay(m.PaymentRequest(o, serial, c, q.total, two_phase=bank == "xml",
                                        content=m.fingerprint(c, q.total)))
        assert r.outcome is Outcome.OK
        if bank == "xml":
            done = ledger.confirm(m.ConfirmRequest(o, serial, D, serial=f"CF{i:04d}",
                                                   order_no=r.receipt_no))
            assert done.outcome is Outcome.OK
        paid.setdefault(bank, []).append((serial, c, q.total))
    yield cfg_path, data, paid
    store.stop()


def _one_line_error(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("bankgate: ")
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize("bank,name", [
    ("fx", "105210_20261127.txt"), ("dl", "10321020261127.DZ"),
    ("iso", "105211_20261127.csv"), ("rw", "105212_20261127.stm"),
    pytest.param("xml", "301210_20261127.xml",
                 marks=pytest.mark.skipif(not HAS_XML, reason="no ref-xml plugin"))])
def test_statement_write_then_the_reconciler_reads_it_back(env, capsys, bank, name):
    cfg_path, data, paid = env
    assert cli(["-c", str(cfg_path), "statement", "write", "--bank", bank,
                "--date", "2026-11-27"]) == 0
    path = data / "exchange" / bank / name
    assert capsys.readouterr().out.startswith(f"{path}: ")
    assert path.is_file()
    assert cli(["-c", str(cfg_path), "reconcile", "--bank", bank, "--date", "2026-11-27"]) == 0
    out = capsys.readouterr().out
    assert "BALANCED" in out and f"matched {len(paid[bank])}" in out, out


@pytest.mark.parametrize("bank", ["fx", "rw"])
def test_simulate_statement_writes_the_same_file(env, tmp_path, capsys, bank):
    cfg_path, data, paid = env
    out_dir = tmp_path / "sim"
    assert cli(["-c", str(cfg_path), "simulate", "--bank", bank, "statement",
                "--date", "2026-11-27", "--out", str(out_dir)]) == 0
    assert cli(["-c", str(cfg_path), "statement", "write", "--bank", bank,
                "--date", "2026-11-27"]) == 0
    [written] = out_dir.iterdir()
    assert written.read_bytes() == (data / "exchange" / bank / written.name).read_bytes()
    capsys.readouterr()
    assert cli(["-c", str(cfg_path), "reconcile", "--bank", bank, "--date", "2026-11-27",
                "--file", str(written)]) == 0
    assert "BALANCED" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["statement", "write", "--bank", "ro", "--date", "2026-11-27"],
    ["simulate", "--bank", "ro", "statement", "--date", "2026-11-27"],
    ["statement", "write", "--bank", "ro", "--date", "2026-11-27", "--perturb"],
])
def test_a_plugin_with_only_a_reader_gets_one_line_not_a_traceback(env, capsys, argv):
    cfg_path, data, paid = env
    assert cli(["-c", str(cfg_path), *argv]) == 2
    cap = capsys.readouterr()
    _one_line_error(cap.err, "bank 'ro'", "plugin 'stmt-ro-", "cannot write statements",
                    "no write_statement")
    assert not (data / "exchange" / "ro").exists() or not any(
        (data / "exchange" / "ro").iterdir())


def test_the_reader_only_plugin_is_still_reconciled(env, tmp_path, capsys):
    cfg_path, data, paid = env
    f = tmp_path / "105213_20261127.stm"
    f.write_text("".join(f"{s},20261127,{c},{a}\n" for s, c, a in paid["ro"]))
    assert cli(["-c", str(cfg_path), "reconcile", "--bank", "ro", "--date", "2026-11-27",
                "--file", str(f)]) == 0
    assert f"matched {len(paid['ro'])}" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["statement", "write"], ["reconcile"]])
def test_a_plugin_without_statements_gets_one_line(env, capsys, command):
    cfg_path, data, paid = env
    assert cli(["-c", str(cfg_path), *command, "--bank", "none", "--date", "2026-11-27"]) == 2
    _one_line_error(capsys.readouterr().err, "bank 'none'", "declares no statement format",
                    "statement_name and read_statement")
