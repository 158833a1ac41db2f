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
        assert sorted(first) == ["ref-delim", "ref-fixed", "ref-iso8583"]
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
