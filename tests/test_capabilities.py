"""A codec's optional capabilities (``bankgate.codec.capabilities``): what each
shipped plugin declares, how the core asks for it, and what happens for a
plugin that declares nothing, part of a capability, or a malformed one."""

from __future__ import annotations

import pickle
from datetime import date
from pathlib import Path

import pytest

from bankgate.app.config import ConfigError, check_plugins, load_config
from bankgate.codec import capabilities as cap
from bankgate.codec.base import BankKeys, BankProfile
from bankgate.codec.check import check_plugin_file
from bankgate.codec.registry import load_codec, load_file
from bankgate.codec.statement import BANK_ONLY, MATCHED, ReaderFormat, StatementError
from bankgate.devtools.simulate import traits_for
from bankgate.domain import reconcile as R

FIXED = load_codec("ref-fixed")
DELIM = load_codec("ref-delim")
ISO = load_codec("ref-iso8583")
MINI = load_file(Path(__file__).resolve().parent.parent / "docs" / "examples" / "plugins"
                 / "example_mini.py").CODEC
D = date(2026, 11, 27)
KEY = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")


# -- what the shipped plugins declare ------------------------------------------------------


def test_each_shipped_plugin_declares_its_statement_format():
    for codec, name, header, bills in ((FIXED, "105210_20261127.txt", True, False),
                                       (DELIM, "10521020261127.DZ", True, True),
                                       (ISO, "105210_20261127.csv", False, False)):
        fmt = cap.statement_format(codec)
        assert fmt is codec.statement_format and isinstance(fmt, cap.StatementFormat)
        assert R.statement_format(codec) is fmt
        assert fmt.file_name("105210", D) == name
        assert (fmt.has_header, fmt.names_bills) == (header, bills)
    assert cap.statement_error_file(cap.statement_format(DELIM)) is not None
    assert cap.statement_error_file(cap.statement_format(FIXED)) is None
    assert cap.statement_error_file(cap.statement_format(ISO)) is None


@pytest.mark.parametrize("codec", [FIXED, DELIM, ISO], ids=lambda c: c.name)
def test_each_format_reads_back_what_it_writes(codec):
    fmt = cap.statement_format(codec)
    recs = [dict(serial=f"S{i:011d}", trade_date=D, trade_time="101500", customer_no="100000123",
                 amount=100 + i, channel="04", bill_ids=(f"B{i}",)) for i in range(3)]
    st = fmt.read(fmt.write("105210", D, recs), "105210", D)
    assert [(r.serial, r.amount) for r in st.records] == [(r["serial"], r["amount"]) for r in recs]
    assert not st.totals_differ
    if fmt.has_header:
        st = fmt.read(fmt.write("105210", D, recs, (4, 9999)), "105210", D)
        assert st.totals_differ and (st.declared_count, st.declared_total) == (4, 9999)
    else:
        with pytest.raises(ValueError):
            fmt.write("105210", D, recs, (4, 9999))


def test_the_error_file_reports_the_categories_its_bank_wants():
    class Item:
        def __init__(self, category, serial):
            self.category, self.serial = category, serial

    name, data = cap.statement_format(DELIM).error_file(
        "103210", D, [Item(MATCHED, "S1"), Item(BANK_ONLY, "S2"), Item(BANK_ONLY, None)])
    assert (name, data) == ("10321020261127.DZCW", b"02|S2|20261127|\n-1|1|\n")


def test_batch_files_and_debit_client_are_ref_delim_s():
    assert cap.batch_files(DELIM) is DELIM and cap.debit_client(DELIM) is DELIM
    for codec in (FIXED, ISO, MINI):
        assert cap.batch_files(codec) is None and cap.debit_client(codec) is None


def test_simulator_traits_are_declared_and_a_plugin_without_gets_a_guess():
    assert traits_for(FIXED) is FIXED.simulator_traits
    assert traits_for(DELIM).pay_names_bills
    iso = traits_for(ISO)
    assert (iso.rrn, iso.serial_length, iso.signin, iso.ops["advice"]) == (
        True, 12, "signin", "reversal_advice")
    assert cap.simulator_traits(MINI) is None
    assert set(traits_for(MINI).ops) >= {"query", "pay"}


def test_key_kinds_are_declared():
    assert [(k.name, k.length, k.check_length, k.required) for k in cap.key_kinds(FIXED)] == [
        ("mac_key", 16, 3, cap.WITH_MAC)]
    assert [(k.name, k.required) for k in cap.key_kinds(DELIM)] == [("mac_key", cap.WITH_MAC)]
    (zmk,) = cap.key_kinds(ISO)
    assert (zmk.name, zmk.required, zmk.check_name) == ("zmk", cap.ALWAYS, "zmk_kcv")
    assert zmk.missing == "missing; ref-iso8583 banks sign in with a zone master key"
    assert cap.key_kinds(MINI) == ()


# -- the generic fallbacks, and malformed declarations ----------------------------------------


class _ReaderOnly:
    name = "reader-only"

    @staticmethod
    def statement_name(bank_code, d):
        return f"{bank_code}.stm"

    @staticmethod
    def read_statement(data):
        return [dict(serial="S1", customer_no="1", amount=1)]


def test_a_plugin_with_only_a_reader_gets_the_generic_format():
    fmt = cap.statement_format(_ReaderOnly())
    assert isinstance(fmt, ReaderFormat)
    assert [r.serial for r in R.read_statement(_ReaderOnly(), b"", "105210", D).records] == ["S1"]


def test_a_plugin_without_statements_cannot_be_reconciled():
    assert cap.statement_format(MINI) is None
    with pytest.raises(StatementError, match="'example-mini' has no statement reader"):
        R.statement_format(MINI)


def test_malformed_declarations_are_named():
    class Bad:
        name = "bad"
        statement_format = object()
        simulator_traits = {"ops": {}}
        key_kinds = ("mac_key",)

    with pytest.raises(cap.CapabilityError, match="'bad': statement_format"):
        cap.statement_format(Bad())
    with pytest.raises(cap.CapabilityError, match="simulator_traits"):
        cap.simulator_traits(Bad())
    with pytest.raises(cap.CapabilityError, match="not a KeyKind"):
        cap.key_kinds(Bad())
    Bad.key_kinds = (cap.KeyKind("k"), cap.KeyKind("k"))
    with pytest.raises(cap.CapabilityError, match="twice"):
        cap.key_kinds(Bad())


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="Mac-Key"), "lower-case"),
    (dict(name="mac_kcv"), "_kcv"),
    (dict(name="k", length=10), "3DES key length"),
    (dict(name="k", algorithm="sm4", length=24), "SM4 key length"),
    (dict(name="k", algorithm="rsa"), "algorithm"),
    (dict(name="k", check_length=9), "check value"),
    (dict(name="k", required="sometimes"), "required"),
])
def test_key_kind_refuses_what_no_configuration_can_hold(kwargs, message):
    with pytest.raises(cap.CapabilityError, match=message):
        cap.KeyKind(**kwargs)


def test_key_kind_missing_text_defaults_to_its_rule():
    assert cap.KeyKind("k").missing == "missing; required when mac = true"
    assert cap.KeyKind("k", required=cap.ALWAYS).missing == "missing; required by the bank's plugin"
    assert cap.KeyKind("k").needed(True) and not cap.KeyKind("k").needed(False)
    assert cap.KeyKind("k", required=cap.ALWAYS).needed(False)


# -- the keys as a codec sees them -------------------------------------------------------------


def test_bank_keys_are_a_read_only_mapping_that_never_shows_a_key():
    keys = BankKeys({"zmk": KEY, "mac_key": None}, pin_key=KEY[:8])
    assert dict(keys) == {"zmk": KEY, "pin_key": KEY[:8]} and len(keys) == 2
    assert keys.zmk == KEY and keys["pin_key"] == KEY[:8] and keys.mac_key is None
    assert "mac_key" not in keys and keys.get("mac_key") is None
    assert repr(keys) == "BankKeys(zmk=<16 bytes>, pin_key=<8 bytes>)"
    assert KEY.hex() not in repr(keys).lower()
    with pytest.raises(AttributeError):
        keys.zmk = b"x"
    assert keys == BankKeys(zmk=KEY, pin_key=KEY[:8]) and hash(keys) == hash(BankKeys(dict(keys)))
    assert pickle.loads(pickle.dumps(keys)) == keys
    assert BankProfile("b", "p", "1").keys == {} and BankProfile("b", "p", "1").keys.zmk is None


# -- the configuration validates what the plugin declares ---------------------------------------

BANK = """
[[bank]]
name = "b1"
plugin = "{plugin}"
bank_code = "105210"
{extra}
"""
KEYED = '''
from bankgate.codec.capabilities import ALWAYS, KeyKind


class Codec:
    name = "keyed"
    key_kinds = ({kinds},)


CODEC = Codec()
'''


def config(tmp_path, plugin: str, extra: str = "", kinds: str | None = None):
    """A one-bank configuration; ``kinds``: the key kinds of a plugin "keyed",
    written to a folder (and file name: a loaded plugin file is not reloaded)
    of its own."""
    head = ""
    if kinds is not None:
        n = len(list(tmp_path.glob("plugins*")))
        folder = tmp_path / f"plugins{n}"
        folder.mkdir()
        (folder / f"keyed_test_plugin_{tmp_path.name}_{n}.py").write_text(KEYED.format(kinds=kinds))
        head = f'[gateway]\nplugin_dirs = ["{folder.as_posix()}"]\n'
    p = tmp_path / "bankgate.toml"
    p.write_text(head + BANK.format(plugin=plugin, extra=extra), encoding="utf-8")
    return load_config(p)


@pytest.mark.parametrize("plugin", ["ref-fixed", "ref-delim"])
def test_mac_true_needs_the_mac_key_the_plugin_declares(tmp_path, plugin):
    cfg = config(tmp_path, plugin, "mac = true")  # the file itself is fine
    with pytest.raises(ConfigError) as e:
        check_plugins(cfg)
    assert e.value.key == "bank.b1.mac_key"
    assert e.value.problem == "missing; required when mac = true"
    check_plugins(config(tmp_path, plugin, "mac = false"))


def test_a_key_the_plugin_always_needs(tmp_path):
    cfg = config(tmp_path, "keyed", kinds='KeyKind("zmk", required=ALWAYS, why="keyed banks'
                 ' always sign in")')
    with pytest.raises(ConfigError, match=r"bank.b1.zmk: missing; keyed banks always sign in"):
        check_plugins(cfg)
    ok = config(tmp_path, "keyed", f'zmk = "{KEY.hex()}"\nzmk_kcv = "08D7B4"',
                kinds='KeyKind("zmk", required=ALWAYS)')
    check_plugins(ok)
    assert ok.bank("b1").profile().keys == {"zmk": KEY}


def test_any_key_the_plugin_declares_goes_in_bank_keys(tmp_path):
    # a name other than mac_key / zmk is configured in [bank.keys] (no longer refused)
    cfg = config(tmp_path, "keyed", kinds='KeyKind("pin_key", required=ALWAYS)')
    with pytest.raises(ConfigError, match=r"bank.b1.keys.pin_key: missing; required by the"):
        check_plugins(cfg)
    ok = config(tmp_path, "keyed", f'[bank.keys]\npin_key = "{KEY.hex()}"\npin_key_kcv = "08D7B4"',
                kinds='KeyKind("pin_key", required=ALWAYS)')
    check_plugins(ok)
    assert ok.bank("b1").profile().keys.pin_key == KEY
    cfg = config(tmp_path, "keyed", f'zmk = "{KEY.hex()}"\nzmk_kcv = "08D7B4"',
                 kinds='KeyKind("zmk", length=24)')
    with pytest.raises(ConfigError, match="bank.b1.zmk: expected a 3DES key of 24 bytes"):
        check_plugins(cfg)


def test_config_check_shows_the_mac_the_plugin_declares(tmp_path):
    from bankgate.app.cli import _mac_text

    cfg = load_config(None)
    codecs = check_plugins(cfg)
    assert {b.plugin: _mac_text(b, codecs[b.plugin]) for b in cfg.banks} == {
        "ref-fixed": "on", "ref-delim": "off", "ref-iso8583": "on (MAK from sign-in under the ZMK)",
        "ref-xml": "on"}
    keyed = config(tmp_path, "keyed", kinds='KeyKind("zmk", required=ALWAYS, description="the'
                   ' session key")')
    codec = load_file(next((tmp_path / "plugins0").glob("*.py"))).CODEC
    assert _mac_text(keyed.bank("b1"), codec) == "on (the session key)"


# -- bankgate plugins check ---------------------------------------------------------------------


def test_plugins_check_lists_the_declared_capabilities():
    root = Path(__file__).resolve().parent.parent
    delim = check_plugin_file(root / "plugins" / "ref_delim.py")
    assert "ok    statement file 10521020261127.DZ: totals in a header or trailer, records" \
           " name their bills" in delim
    assert "ok    statement error file: 10521020261127.DZCW" in delim
    assert any(r.startswith("ok    statement write and read: one record") for r in delim)
    assert "ok    batch files: withholding request 1052102026112701.PK, answered by" \
           " 1052102026112701.PKJG" in delim
    assert any(r.startswith("ok    debit client") for r in delim)
    assert any(r.startswith("ok    key mac_key: a 3DES key of 16 bytes") for r in delim)
    iso = check_plugin_file(root / "plugins" / "ref_iso8583.py")
    assert any(r.startswith("ok    key zmk: a 3DES key of 16 bytes, 3-byte check value zmk_kcv,"
                            " always")
               for r in iso)
    assert any("signs in with 'signin' first" in r for r in iso)
    mini = check_plugin_file(root / "docs" / "examples" / "plugins" / "example_mini.py")
    assert not [r for r in mini if r.startswith("FAIL")]
    assert "skip  statement file: not declared (its banks cannot be reconciled)" in mini
    assert any(r.startswith("skip  simulator traits") for r in mini)


def test_plugins_check_fails_a_capability_declared_in_part(tmp_path):
    text = (Path(__file__).resolve().parent.parent / "docs" / "examples" / "plugins"
            / "example_mini.py").read_text(encoding="utf-8")
    text = text.replace("CODEC = ExampleMiniCodec()", (
        "class _Codec(ExampleMiniCodec):\n"
        "    def pk_name(self, bank_code, d, seq):\n"
        "        return 'x.PK'\n\n"
        "    def read_statement(self, data):\n"
        "        return []\n\n\n"
        "CODEC = _Codec()"))
    f = tmp_path / "half_mini.py"
    f.write_text(text, encoding="utf-8")
    fails = [r for r in check_plugin_file(f) if r.startswith("FAIL")]
    assert "FAIL  BatchFiles: has pk_name but not pkjg_name, read_pkjg, write_pk" in fails
    assert "FAIL  StatementReader: has read_statement but not statement_name" in fails
