"""What a plugin declares about its banks, checked by the configuration: keys of
any kind (``KeyKind`` 3DES / SM4 / secret, ``[bank.keys]``), options
(``OptionSpec`` and the ``validate_options`` hook) and ``bank_defaults`` -- by
the service start and by ``bankgate config check`` alike."""

from __future__ import annotations

import base64
import itertools

import pytest

from bankgate.app import wiring
from bankgate.app.cli import main as cli
from bankgate.app.config import ConfigError, check_plugins, load_config
from bankgate.codec import capabilities as cap
from bankgate.codec.check import check_keys_and_options

KEY = "0123456789ABCDEFFEDCBA9876543210"  # the specs' test key: 3DES KCV 08D7B4, SM4 2677F4
SECRET = "hmac secret of the bank, 32 byte"  # 32 characters

PLUGIN = '''
from bankgate.codec.capabilities import ALWAYS, WITH_MAC, KeyKind, OptionSpec


class Codec:
    name = "{name}"
    key_kinds = ({kinds})
    option_specs = ({specs})
{extra}

CODEC = Codec()
'''

_serial = itertools.count()


def config(tmp_path, bank: str = "", *, kinds: str = "", specs: str = "", extra: str = "",
           gateway: str = ""):
    """A one-bank configuration whose bank uses a plugin declared here (a file
    of its own: a loaded plugin file is not reloaded)."""
    n = next(_serial)
    name = f"decl-{n}"
    folder = tmp_path / f"plugins{n}"
    folder.mkdir()
    (folder / f"decl_plugin_{n}.py").write_text(PLUGIN.format(
        name=name, kinds=kinds, specs=specs, extra=extra), encoding="utf-8")
    p = tmp_path / f"bankgate{n}.toml"
    p.write_text(f'[gateway]\nplugin_dirs = ["{folder.as_posix()}"]\n{gateway}\n'
                 f'[[bank]]\nname = "b1"\nplugin = "{name}"\nbank_code = "301210"\n{bank}\n',
                 encoding="utf-8")
    return p


def refused(path, key: str, expected: str) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        check_plugins(load_config(path))
    assert (e.value.key, e.value.source) == (key, str(path)), str(e.value)
    assert expected in e.value.problem, str(e.value)
    for secret in (KEY, KEY.lower(), SECRET, "2677F4", "08D7B4"):
        assert secret not in e.value.problem or secret in expected
    return e.value


SM4 = 'KeyKind("mac_key", algorithm="sm4", required=ALWAYS, description="SM4 MAC"),'
HMAC = 'KeyKind("sign_key", algorithm="secret", required=ALWAYS),'


# -- keys of any kind --------------------------------------------------------------------


def test_an_sm4_key_with_its_sm4_check_value(tmp_path):
    for bank in (f'mac_key = "{KEY}"\nmac_key_kcv = "2677f4"',
                 f'[bank.keys]\nmac_key = "{KEY}"\nmac_key_kcv = "2677F4"'):
        cfg = load_config(config(tmp_path, bank, kinds=SM4))
        check_plugins(cfg)
        assert cfg.bank("b1").profile().keys["mac_key"] == bytes.fromhex(KEY)
        assert KEY not in repr(cfg.bank("b1")) and KEY.lower() not in repr(cfg.bank("b1").profile())


def test_an_sm4_key_checked_against_the_3des_value_is_refused(tmp_path):
    # 08D7B4 is the 3DES check value of the same digits: the algorithm decides
    refused(config(tmp_path, f'mac_key = "{KEY}"\nmac_key_kcv = "08D7B4"', kinds=SM4),
            "bank.b1.mac_key_kcv", "does not match mac_key: the key is wrong or mistyped")
    refused(config(tmp_path, f'[bank.keys]\nmac_key = "{KEY}"\nmac_key_kcv = "08D7B5"',
                   kinds=SM4),
            "bank.b1.keys.mac_key_kcv", "does not match mac_key")
    refused(config(tmp_path, f'[bank.keys]\nmac_key = "{KEY}"', kinds=SM4),
            "bank.b1.keys.mac_key_kcv", "missing; expected the check value of mac_key"
            " (6 hex digits)")
    refused(config(tmp_path, f'mac_key = "{KEY[:16]}"\nmac_key_kcv = "2677F4"', kinds=SM4),
            "bank.b1.mac_key", "expected an SM4 key of 16 bytes (32 hex digits), got 8 bytes")
    refused(config(tmp_path, "", kinds=SM4), "bank.b1.mac_key", "missing; required by the"
            " bank's plugin")


def test_a_secret_of_any_length_in_any_spelling(tmp_path):
    raw = SECRET.encode()
    for value in (raw.hex(), f"text:{SECRET}", "base64:" + base64.b64encode(raw).decode()):
        cfg = load_config(config(tmp_path, f'[bank.keys]\nsign_key = "{value}"', kinds=HMAC))
        check_plugins(cfg)
        assert cfg.bank("b1").profile().keys.sign_key == raw
    refused(config(tmp_path, '[bank.keys]\nsign_key = "text:short"', kinds=HMAC),
            "bank.b1.keys.sign_key", "expected a secret of 16 to 128 bytes, got 5 bytes")
    refused(config(tmp_path, f'[bank.keys]\nsign_key = "text:{SECRET}"\n'
                             'sign_key_kcv = "123456"', kinds=HMAC),
            "bank.b1.keys.sign_key_kcv", "has no check value")
    fixed = 'KeyKind("sign_key", algorithm="secret", length=20),'
    refused(config(tmp_path, f'mac = true\n[bank.keys]\nsign_key = "text:{SECRET}"',
                   kinds=fixed),
            "bank.b1.keys.sign_key", "expected a secret of 20 bytes (40 hex digits), got 32")
    refused(config(tmp_path, "mac = true", kinds=fixed), "bank.b1.keys.sign_key",
            "missing; required when mac = true")


@pytest.mark.parametrize("bank, key, expected", [
    ('[bank.keys]\nsign_key = "XYZ"', "bank.b1.keys.sign_key", "hex digits"),
    ('[bank.keys]\nsign_key = "base64:!!"', "bank.b1.keys.sign_key", "not valid base64"),
    ('[bank.keys]\nsign_key = "text:"', "bank.b1.keys.sign_key", "empty"),
    ('[bank.keys]\nsign_key = 12', "bank.b1.keys.sign_key", "expected a string"),
    ('[bank.keys]\nsign_key_kcv = "123456"', "bank.b1.keys.sign_key_kcv", "without sign_key"),
    ('[bank.keys]\nSign-Key = "00"', "bank.b1.keys.Sign-Key", "key name"),
    (f'mac_key = "{KEY}"\n[bank.keys]\nmac_key = "{KEY}"', "bank.b1.keys.mac_key", "twice"),
    ('mac_key_kcv = "2677F4"', "bank.b1.mac_key_kcv", "given without mac_key"),
    ('[bank.keys]\nsign_key = "00"\nsign_key_kcv = "not hex"', "bank.b1.keys.sign_key_kcv",
     "hex digits"),
])
def test_key_spelling_is_checked_when_the_file_is_read(tmp_path, bank, key, expected):
    path = config(tmp_path, bank, kinds=HMAC)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert (e.value.key, expected in e.value.problem) == (key, True), str(e.value)
    assert SECRET not in str(e.value) and KEY not in str(e.value)


def test_a_key_the_plugin_does_not_declare(tmp_path):
    refused(config(tmp_path, f'[bank.keys]\npin_key = "{KEY}"', kinds=HMAC),
            "bank.b1.keys.pin_key", "plugin 'decl-")
    e = refused(config(tmp_path, f'[bank.keys]\npin_key = "{KEY}"'), "bank.b1.keys.pin_key",
                "declares no key 'pin_key' (it declares: none)")
    assert KEY not in str(e)
    # mac_key / zmk directly in [[bank]] may be left for a plugin that ignores them:
    # checked as the 3DES keys they always were
    check_plugins(load_config(config(tmp_path, f'zmk = "{KEY}"\nzmk_kcv = "08D7B4"')))
    refused(config(tmp_path, f'zmk = "{KEY}"\nzmk_kcv = "2677F4"'), "bank.b1.zmk_kcv",
            "does not match zmk")


def test_a_triple_length_3des_key(tmp_path):
    key24 = KEY + KEY[:16]  # K1K2K1: the same key as K1K2, the same check value
    kinds = 'KeyKind("zmk", length=24, required=ALWAYS),'
    check_plugins(load_config(config(tmp_path, f'zmk = "{key24}"\nzmk_kcv = "08D7B4"',
                                     kinds=kinds)))
    refused(config(tmp_path, f'zmk = "{KEY}"\nzmk_kcv = "08D7B4"', kinds=kinds), "bank.b1.zmk",
            "expected a 3DES key of 24 bytes (48 hex digits), got 16 bytes")


@pytest.mark.parametrize("kwargs, message", [
    (dict(algorithm="aes"), "algorithm 'aes'"),
    (dict(algorithm="sm4", length=24), "not an SM4 key length (16)"),
    (dict(algorithm="3des", length=8), "not a 3DES key length (16, 24)"),
    (dict(algorithm="sm4", check_length=17), "check value of 17 bytes (1-16)"),
    (dict(algorithm="secret", check_length=3), "a secret has no check value"),
    (dict(algorithm="secret", length=0), "a secret of 0 bytes"),
])
def test_key_kinds_refuse_what_their_algorithm_cannot_be(kwargs, message):
    with pytest.raises(cap.CapabilityError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cap.KeyKind("k", **kwargs)


def test_key_kind_defaults_and_summaries():
    sm4 = cap.KeyKind("mac_key", algorithm="sm4")
    assert (sm4.length, sm4.check_length, sm4.has_check) == (16, 3, True)
    secret = cap.KeyKind("sign_key", algorithm="secret", required=cap.ALWAYS)
    assert (secret.length, secret.check_length, secret.lengths) == (None, 0, (16, 128))
    assert sm4.summary() == ("mac_key: an SM4 key of 16 bytes, 3-byte check value mac_key_kcv,"
                             " required when mac = true")
    assert secret.summary() == "sign_key: a secret of 16-128 bytes, no check value, always required"


# -- options -----------------------------------------------------------------------------

SPECS = ('OptionSpec("format", str, "json", "the wire format", choices=("json", "xml")),'
         ' OptionSpec("timeout", float, 30, "seconds to wait", minimum=1, maximum=600),'
         ' OptionSpec("strict", bool, False, "refuse unknown fields"),')
HOOK = '''
    def validate_options(self, options):
        if options.get("format") == "xml" and not options.get("strict"):
            return ["strict: must be true with format = 'xml'", "format: a second problem"]
        if options.get("timeout") == 42:
            raise RuntimeError("the plugin's own bug")
        return []
'''


def test_declared_options_are_typed_and_get_their_defaults(tmp_path):
    cfg = load_config(config(tmp_path, '[bank.options]\ntimeout = 5\ninvoice = false',
                             specs=SPECS, extra=HOOK))
    check_plugins(cfg)
    # the bank's profile holds the declared defaults; 5 stays an integer a float accepts
    assert cfg.bank("b1").profile().options == {"timeout": 5, "invoice": False,
                                                "format": "json", "strict": False}
    check_plugins(cfg)  # twice: nothing changes
    assert cfg.bank("b1").options["format"] == "json"


@pytest.mark.parametrize("options, key, expected", [
    ('timout = 5', "bank.b1.options.timout",
     "unknown option (misspelt?); plugin 'decl-"),
    ('format = "yaml"', "bank.b1.options.format", "expected one of 'json', 'xml', got 'yaml'"),
    ('timeout = "5"', "bank.b1.options.timeout", "expected a number, got '5'"),
    ('timeout = 0.5', "bank.b1.options.timeout", "expected at least 1, got 0.5"),
    ('strict = 1', "bank.b1.options.strict", "expected true or false, got 1"),
    ('format = "xml"', "bank.b1.options.strict", "must be true with format = 'xml' (and 1 more)"),
    ('timeout = 42', "bank.b1.options", "validate_options raised RuntimeError: the plugin's own"),
])
def test_options_are_refused_naming_the_key(tmp_path, options, key, expected):
    e = refused(config(tmp_path, f"[bank.options]\n{options}", specs=SPECS, extra=HOOK),
                key, expected)
    if "unknown" in expected:
        assert "reads: format, timeout, strict" in e.problem
        assert "invoice" in e.problem and "withholding" in e.problem


def test_config_check_and_the_service_start_run_the_same_checks(tmp_path, capsys, monkeypatch):
    from bankgate.app import tap

    path = config(tmp_path, '[bank.options]\nformat = "xml"', specs=SPECS, extra=HOOK)
    assert cli(["config", "check", str(path)]) == 2
    assert "bank.b1.options.strict: must be true with format = 'xml'" in capsys.readouterr().err
    opts = tap.Options()
    opts.parseOptions(["--config", str(path)])
    with pytest.raises(SystemExit) as e:
        tap.makeService(opts)
    assert e.value.code == 2
    assert "bank.b1.options.strict: must be true" in capsys.readouterr().err
    # and wiring.check (under both) refuses it too, for the commands that build parts
    with pytest.raises(ConfigError, match="options.strict"):
        wiring.check(load_config(path))


def test_option_keys_is_no_longer_read(tmp_path):
    refused(config(tmp_path, "", extra='    option_keys = ("channel",)'),
            "bank.b1.plugin", "option_keys is no longer read; declare option_specs")


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="Bad-Name"), "lower-case"),
    (dict(name="x", type=bytes), "type"),
    (dict(name="x", type=int, default="3"), "default '3'"),
    (dict(name="x", type=str, choices=("a", 1)), "choice 1"),
])
def test_option_specs_refuse_what_no_toml_can_hold(kwargs, message):
    with pytest.raises(cap.CapabilityError, match=message):
        cap.OptionSpec(**kwargs)


def test_option_spec_types():
    assert cap.OptionSpec("n", int).problem(True) == "expected an integer, got True"
    assert cap.OptionSpec("n", float).problem(3) is None
    assert cap.OptionSpec("l", list).problem(["a"]) is None
    assert cap.OptionSpec("t", dict).problem([]) == "expected a table, got []"


# -- bank defaults -----------------------------------------------------------------------

DEFAULTS = '    bank_defaults = {"two_phase": True, "confirm_timeout": 600}'


def test_bank_defaults_fill_what_the_bank_does_not_state(tmp_path):
    cfg = load_config(config(tmp_path, "", extra=DEFAULTS))
    b = cfg.bank("b1")
    assert (b.two_phase, b.confirm_timeout) == (False, 300.0)  # before the plugins load
    check_plugins(cfg)
    assert (b.two_phase, b.confirm_timeout) == (True, 600.0)
    profile, policy = b.profile(), b.policy_()
    assert (profile.two_phase, profile.confirm_timeout) == (True, 600.0)
    assert (policy.two_phase, policy.confirm_timeout) == (True, 600.0)
    stated = load_config(config(tmp_path, "two_phase = false\nconfirm_timeout = 60",
                                extra=DEFAULTS))
    check_plugins(stated)
    assert (stated.bank("b1").two_phase, stated.bank("b1").profile().confirm_timeout) == (
        False, 60.0)


def test_the_ledger_gets_the_effective_policy(tmp_path):
    path = config(tmp_path, "", extra=DEFAULTS,
                  gateway=f'[database]\nurl = "sqlite:///{(tmp_path / "g.db").as_posix()}"')
    policy = wiring.build(load_config(path)).ledger.bank("b1")
    assert (policy.two_phase, policy.confirm_timeout) == (True, 600.0)


@pytest.mark.parametrize("defaults, message", [
    ('{"policy": "any"}', "bank_defaults names 'policy'"),
    ('{"two_phase": "yes"}', "is not true or false"),
    ('{"confirm_timeout": 0}', "seconds between 1 and 604800"),
    ('["two_phase"]', "bank_defaults is not a dict"),
])
def test_bank_defaults_are_checked(tmp_path, defaults, message):
    refused(config(tmp_path, "", extra=f"    bank_defaults = {defaults}"), "bank.b1.plugin",
            message)


# -- bankgate plugins check: keys, options, defaults -------------------------------------------


def test_plugins_check_lists_keys_options_and_defaults(tmp_path):
    class Codec:
        name = "listed"
        key_kinds = (cap.KeyKind("mac_key", algorithm="sm4", required=cap.ALWAYS),
                     cap.KeyKind("sign_key", algorithm="secret"))
        option_specs = (cap.OptionSpec("format", str, "json", "the wire format",
                                       choices=("json", "xml")),
                        cap.OptionSpec("timeout", float, None, "seconds", minimum=1))
        bank_defaults = {"two_phase": True, "confirm_timeout": 600}

        def validate_options(self, options):
            return [] if options.get("format") == "json" else ["format: not json"]

    assert check_keys_and_options(Codec()) == [
        "ok    key mac_key: an SM4 key of 16 bytes, 3-byte check value mac_key_kcv,"
        " always required",
        "ok    key sign_key: a secret of 16-128 bytes, no check value, required when mac = true",
        "ok    option format: a string, one of 'json', 'xml', default 'json' -- the wire format",
        "ok    option timeout: a number, 1.., no default -- seconds",
        "ok    validate_options: accepts the declared defaults",
        "ok    bank defaults (where the [[bank]] table is silent): two_phase = true,"
        " confirm_timeout = 600",
    ]

    class Broken:
        name = "broken"
        option_keys = ("x",)
        bank_defaults = {"colour": 1}

        def validate_options(self, options):
            return ["x: always wrong"]

    lines = check_keys_and_options(Broken())
    assert "skip  keys: none declared (its banks are configured without keys)" in lines
    assert any(r.startswith("FAIL  options: plugin 'broken': option_keys") for r in lines)
    assert any(r.startswith("FAIL  bank defaults: plugin 'broken': bank_defaults names 'colour'")
               for r in lines)
