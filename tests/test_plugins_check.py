"""``bankgate plugins check`` and ``plugins list`` for bank IT."""

from __future__ import annotations

from pathlib import Path

import pytest

from bankgate.app.cli import main as cli
from bankgate.codec.check import check_plugin_file
from bankgate.codec.registry import PluginError, discover, load_codec, shipped_dir


@pytest.mark.parametrize("name", ["ref_fixed", "ref_delim", "ref_iso8583"])
def test_shipped_plugins_pass(name):
    report = check_plugin_file(shipped_dir() / f"{name}.py")
    assert not [r for r in report if r.startswith("FAIL")], report
    assert any(r.startswith("ok    outcome codes total") for r in report)


def test_ref_fixed_layouts_round_trip():
    report = check_plugin_file(shipped_dir() / "ref_fixed.py")
    assert "ok    layout header: 123 bytes round-trip" in report
    assert "ok    layout statement.detail: 69 bytes round-trip" in report
    # a response with one bill: 187 fixed bytes + 62
    assert "ok    layout 1001.response: 249 bytes round-trip" in report


def test_ref_iso8583_field_layouts_round_trip():
    report = check_plugin_file(shipped_dir() / "ref_iso8583.py")
    assert "ok    layout field90: 42 bytes round-trip" in report
    # customer_no 20 + name 60 + count 2 + one bill 62
    assert "ok    layout field48.0110: 144 bytes round-trip" in report


BROKEN = '''
from bankgate.codec.base import Framing
from bankgate.canon.messages import Outcome
import construct as c

class Codec:
    name = "broken"
    framing = Framing(kind="ascii5", max_length=10)
    def decode(self, frame, session): ...
    def outcome_code(self, o):
        return {Outcome.OK: "00"}[o]
    def client_encode(self, *a): ...
    def client_decode(self, *a): ...
    def layouts(self):
        return {"bad": c.Struct("x" / c.ExprAdapter(c.Byte, lambda o, ctx: o + 1,
                                                     lambda o, ctx: o))}

CODEC = Codec()
'''


def test_a_broken_plugin_fails_with_reasons(tmp_path):
    f = tmp_path / "broken.py"
    f.write_text(BROKEN)
    report = check_plugin_file(f)
    fails = [r for r in report if r.startswith("FAIL")]
    assert any("framing" in r for r in fails)
    assert any("outcome codes not total" in r and "NOT_FOUND raises KeyError" in r
               for r in fails)
    assert any("layout bad" in r for r in fails)
    assert cli(["plugins", "check", str(f)]) == 1


def test_unloadable_files(tmp_path):
    f = tmp_path / "syntax.py"
    f.write_text("def (:\n")
    assert check_plugin_file(f)[0].startswith("FAIL")
    g = tmp_path / "nocodec.py"
    g.write_text("x = 1\n")
    assert check_plugin_file(g) == [f"FAIL  {g}: no module-level CODEC"]


def test_discovery_and_extra_folders(tmp_path, capsys):
    assert {"ref-fixed", "ref-delim", "ref-iso8583"} <= set(discover())
    extra = tmp_path / "plugins"
    extra.mkdir()
    (extra / "mybank.py").write_text(BROKEN.replace('"broken"', '"my-bank"'))
    (extra / "_helper.py").write_text("raise RuntimeError('not a plugin')\n")
    assert load_codec("my-bank", [extra]).name == "my-bank"
    with pytest.raises(PluginError, match="no plugin named 'nope'"):
        load_codec("nope")
    with pytest.raises(PluginError, match="does not exist"):
        discover([tmp_path / "missing"])
    assert cli(["plugins", "list"]) == 0
    out = capsys.readouterr().out
    assert "ref-iso8583" in out and "ref-fixed" in out


def test_installed_plugins_load_under_one_name(monkeypatch):
    """Installed (no source tree beside the package): the shipped plugins are the
    ``bankgate_plugins`` package, found again and again, each file one module."""
    import sys

    from bankgate.codec import registry

    saved = {k: v for k, v in sys.modules.items()
             if k == registry.PACKAGE or k.startswith(registry.PACKAGE + ".")}
    for k in saved:
        monkeypatch.delitem(sys.modules, k)
    monkeypatch.setattr(registry, "_source_plugins", lambda: None)
    try:
        first = discover()
        again = discover()  # a second look must not trip over the first
        assert sorted(first) == ["ref-delim", "ref-fixed", "ref-iso8583", "ref-xml"]
        assert first["ref-fixed"] is again["ref-fixed"]
        module = sys.modules[type(first["ref-fixed"]).__module__]
        assert module.__name__ == "bankgate_plugins.ref_fixed"
        assert shipped_dir() == Path(sys.modules["bankgate_plugins"].__path__[0]).resolve()
        assert Path(module.__file__).parent == shipped_dir()
    finally:
        for k in [k for k in sys.modules if k == registry.PACKAGE
                  or k.startswith(registry.PACKAGE + ".")]:
            del sys.modules[k]
        sys.modules.update(saved)


def test_a_plugin_file_has_one_module_name(tmp_path):
    from bankgate.codec.registry import load_file, module_name

    module = load_file(shipped_dir() / "ref_delim.py")
    assert module.__name__ == module_name(shipped_dir() / "ref_delim.py") == \
        "bankgate_plugins.ref_delim"
    assert load_file(shipped_dir() / "ref_delim.py") is module
    import importlib

    assert importlib.import_module("bankgate_plugins.ref_delim") is module


# -- the statement contract (bankgate/codec/statement.py) ------------------------------------


@pytest.mark.parametrize("name,header", [("ref_fixed", True), ("ref_delim", True),
                                         ("ref_iso8583", False)])
def test_shipped_statement_formats_keep_the_whole_contract(name, header):
    report = check_plugin_file(shipped_dir() / f"{name}.py")
    [line] = [r for r in report if r.startswith("ok    statement write and read")]
    assert "another date's file refused" in line
    assert ("misstated totals read as declared" in line) is header


STATEMENT_PLUGIN = '''

from datetime import date as _date

from bankgate.codec.statement import CHUNK, Records, Statement, StatementError, check_head


def _line(r):
    return f"{r['serial']},{r['trade_date']:%Y%m%d},{r['customer_no']},{r['amount']}\\n"


def _records(data):
    out = []
    for n, line in enumerate(data.decode().splitlines(), 1):
        try:
            s, d, c, a = line.split(",")
            out.append(dict(serial=s, trade_date=_date(int(d[:4]), int(d[4:6]), int(d[6:])),
                            customer_no=c, amount=int(a)))
        except ValueError as e:
            raise ValueError(f"line {n}: {e}") from None
    return out


class Fmt:
    has_header = True
    names_bills = False
    checks_date = True
    reads_misstated = True
    writes = True

    def file_name(self, bank_code, d):
        return f"{bank_code}_{d:%Y%m%d}.stm"

    def read(self, data, bank_code, d, chunk=CHUNK):
        head, _, rest = data.partition(b"\\n")
        settle, count, total = head.decode().split(",")
        settle = _date.fromisoformat(settle)
        if self.checks_date:
            check_head(settle, d, None, bank_code, 1)
        st = Statement(d, Records(), None, int(count), int(total))
        st.records.extend(_records(rest), lambda r: "000000")
        if not self.reads_misstated and st.totals_differ:
            raise StatementError("line 1: the totals differ")
        return st

    def write(self, bank_code, d, records, declared=None):
        if not self.writes:
            raise NotImplementedError
        count, total = declared or (len(records), sum(r["amount"] for r in records))
        return f"{d},{count},{total}\\n".encode() + "".join(map(_line, records)).encode()


class _Codec(ExampleMiniCodec):
    statement_format = Fmt()
    SETTINGS


CODEC = _Codec()
'''

READER_ONLY = '''

from datetime import date as _date


class _Codec(ExampleMiniCodec):
    @staticmethod
    def statement_name(bank_code, d):
        return f"{bank_code}_{d:%Y%m%d}.stm"

    @staticmethod
    def read_statement(data):
        out = []
        for line in data.decode().splitlines():
            s, d, c, a = line.split(",")
            out.append(dict(serial=s, trade_date=_date(int(d[:4]), int(d[4:6]), int(d[6:])),
                            customer_no=c, amount=int(a)))
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


def _mini_with(tmp_path, stem: str, tail: str):
    text = (Path(__file__).resolve().parent.parent / "docs" / "examples" / "plugins"
            / "example_mini.py").read_text(encoding="utf-8")
    f = tmp_path / f"{stem}_{tmp_path.name}.py"
    f.write_text(text.replace("CODEC = ExampleMiniCodec()", tail), encoding="utf-8")
    return [r for r in check_plugin_file(f) if "statement" in r]


def test_a_reader_only_plugin_is_told_the_truth_about_writing(tmp_path):
    lines = _mini_with(tmp_path, "reader_only", READER_ONLY.replace("WRITER", ""))
    assert lines == [
        "ok    statement file 105210_20261127.stm: no totals line",
        "ok    statement read: read_statement, the whole file at once (no statement_format"
        " declared)",
        "skip  statement write: no write_statement (nor a statement_format): reconciliation"
        " reads its files, but `statement write` and `simulate ... statement` refuse its banks",
        "skip  statement error file: not declared"]


def test_a_reader_and_writer_plugin_is_written_and_read_back(tmp_path):
    lines = _mini_with(tmp_path, "reader_writer", READER_ONLY.replace("WRITER", WRITER))
    assert "ok    statement write and read: one record, 38 bytes" in lines
    bad = WRITER.replace("r['amount']", "r['amount'] + 1")  # writes what it does not read
    lines = _mini_with(tmp_path, "bad_writer", READER_ONLY.replace("WRITER", bad))
    assert any(r.startswith("FAIL  statement write and read: wrote ('S00000000001',") and
               "12346" in r for r in lines), lines


@pytest.mark.parametrize("settings,expect", [
    ("", "ok    statement write and read: one record, 57 bytes; another date's file refused;"
         " misstated totals read as declared"),
    ("statement_format.writes = False",
     "skip  statement write: its statement_format's write raises NotImplementedError"),
    ("statement_format.checks_date = False",
     "FAIL  statement read: the file for 2026-11-27 was read as 2026-11-28's"),
    ("statement_format.reads_misstated = False",
     "FAIL  statement totals: a file whose totals differ raises StatementError"),
])
def test_plugins_check_exercises_the_statement_contract(tmp_path, settings, expect):
    stem = "fmt_" + (settings.split(".")[-1].split(" ")[0] if settings else "good")
    tail = STATEMENT_PLUGIN.replace("    SETTINGS\n", "")
    tail = tail.replace("CODEC = _Codec()", "CODEC = _Codec()\nCODEC." + settings
                        if settings else "CODEC = _Codec()")
    lines = _mini_with(tmp_path, stem, tail)
    assert any(r.startswith(expect) for r in lines), lines
    assert lines[0] == "ok    statement file 105210_20261127.stm: totals in a header or trailer"


def test_plugins_check_lists_keys_and_options_with_descriptions():
    iso = check_plugin_file(shipped_dir() / "ref_iso8583.py")
    assert ("ok    option channel: a string, one of '01', '02', '03', '04', '05', '06', '07',"
            " '08', default '02' -- channel code recorded for the bank's payments (02 debit"
            " card)") in iso
    assert any(r.startswith("ok    key zmk: a 3DES key of 16 bytes") for r in iso)
    fixed = check_plugin_file(shipped_dir() / "ref_fixed.py")
    assert any(r.startswith("skip  options: none declared") for r in fixed)
