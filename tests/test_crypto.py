"""bankgate.codec.crypto against the specs' test vectors and an independent X9.19."""

from __future__ import annotations

import warnings

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.hazmat.primitives.ciphers.algorithms import SM4
from hypothesis import given, settings
from hypothesis import strategies as st

from bankgate.codec import crypto
from bankgate.codec.crypto import (
    X919,
    check_value,
    hmac_sha256,
    kcv,
    macs_equal,
    parse_hex_key,
    sm4_ecb_decrypt,
    sm4_ecb_encrypt,
    sm4_mac,
    tdes_ecb_decrypt,
    tdes_ecb_encrypt,
    unwrap_key,
    wrap_key,
    x919_mac,
)

try:
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES

KEY = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")  # ref-fixed MAC key = ref-iso ZMK
MAK = bytes.fromhex("89ABCDEF0123456776543210FEDCBA98")


@pytest.fixture(autouse=True)
def _no_warnings():
    """No deprecation (or any other) warning may come out of the module."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# -- an independent X9.19, block by block, as the standard writes it -----------


def _des_enc(k8: bytes, block: bytes) -> bytes:
    e = Cipher(TripleDES(k8 * 3), modes.ECB()).encryptor()
    return e.update(block) + e.finalize()


def _des_dec(k8: bytes, block: bytes) -> bytes:
    d = Cipher(TripleDES(k8 * 3), modes.ECB()).decryptor()
    return d.update(block) + d.finalize()


def reference_x919(key: bytes, data: bytes) -> bytes:
    k1, k2 = key[:8], key[8:]
    if not data or len(data) % 8:
        data = data + b"\0" * (8 - len(data) % 8)
    chain = b"\0" * 8
    for i in range(0, len(data), 8):
        block = bytes(a ^ b for a, b in zip(chain, data[i : i + 8], strict=True))
        chain = _des_enc(k1, block)
    return _des_enc(k1, _des_dec(k2, chain))


# -- vectors -------------------------------------------------------------------


def test_x919_spec_vector():
    assert x919_mac(KEY, b"Now is the time for all ").hex().upper() == "A1C72E74EA3FA9B6"


def test_zmk_check_value():
    assert kcv(KEY).hex().upper() == "08D7B4"
    assert len(kcv(KEY, 8)) == 8


def test_mak_wrapped_under_zmk_and_its_check_value():
    assert wrap_key(KEY, MAK).hex().upper() == "4230EF1CB268495597F4494DD23D8A72"
    assert kcv(MAK, 4).hex().upper() == "EB7A8DF9"
    assert unwrap_key(KEY, bytes.fromhex("4230EF1CB268495597F4494DD23D8A72")) == MAK


def test_ref_fixed_1001_vector():
    # header fields 1-10 then the body, spec ref-fixed §9 (spaces written out)
    header = (
        b"1001"
        + b"105210"
        + b"210100001"
        + b"T0000012"
        + b"01"
        + b"20261127"
        + b"093015"
        + b"BK2026112700000001  "
        + b"0000"
        + b" " * 40
    )
    body = b"100000123" + b" " * 11
    assert len(header) == 107 and len(body) == 20
    assert x919_mac(KEY, header + body).hex().upper() == "50E50B64338D6957"


def test_iso_0100_vector():
    frame = bytes.fromhex(
        "00736000030000303130302238000108C180013331303030303131323730393330313530"
        "3030303031303933303135313132373036313035323130424B3030303030303030303154"
        "303030303031323231303130303030312020202020203030393130303030303132333135"
        "363E37B66884C6EEB9"
    )
    message = frame[2 + 5 :]  # length, TPDU
    assert x919_mac(MAK, message[:-8]).hex().upper() == "3E37B66884C6EEB9"


def test_3des_is_two_key_ede():
    zero = bytes(8)
    expected = _des_enc(KEY[:8], _des_dec(KEY[8:], _des_enc(KEY[:8], zero)))
    assert tdes_ecb_encrypt(KEY, zero) == expected
    assert tdes_ecb_decrypt(KEY, expected) == zero
    # a 24-byte K1K2K1 key is the same key
    assert tdes_ecb_encrypt(KEY + KEY[:8], zero) == expected


# -- padding -------------------------------------------------------------------


def test_padding_rules():
    # empty data is one zero block
    assert x919_mac(KEY, b"") == x919_mac(KEY, bytes(8)) == tdes_ecb_encrypt(KEY, bytes(8))
    # zero padding to a multiple of 8, nothing added to a multiple of 8
    assert x919_mac(KEY, b"\x01") == x919_mac(KEY, b"\x01" + bytes(7))
    assert x919_mac(KEY, b"12345678") != x919_mac(KEY, b"12345678" + bytes(8))
    assert len(x919_mac(KEY, b"x" * 100)) == 8


@settings(max_examples=200)
@given(st.binary(min_size=16, max_size=16), st.binary(max_size=200))
def test_x919_matches_reference(key, data):
    assert x919_mac(key, data) == reference_x919(key, data)


@settings(max_examples=50)
@given(st.binary(min_size=16, max_size=16), st.lists(st.binary(max_size=80), max_size=8))
def test_reused_x919_object_equals_fresh(key, messages):
    m = X919(key)
    for data in messages:
        assert m.mac(data) == reference_x919(key, data)


def test_x919_repr_hides_the_key():
    assert MAK.hex() not in repr(X919(MAK)).lower()


# -- keys ------------------------------------------------------------------------


def test_wrap_unwrap_roundtrip():
    for key in (MAK, bytes(16), bytes(range(16))):
        assert unwrap_key(KEY, wrap_key(KEY, key)) == key


@pytest.mark.parametrize("bad", [b"", bytes(8), bytes(15), bytes(17)])
def test_wrong_key_lengths(bad):
    with pytest.raises(ValueError):
        x919_mac(bad, b"data")
    with pytest.raises(ValueError):
        wrap_key(KEY, bad)
    with pytest.raises(ValueError):
        unwrap_key(KEY, bad)
    if len(bad) not in (16, 24):
        with pytest.raises(ValueError):
            tdes_ecb_encrypt(bad, bytes(8))


def test_ecb_needs_whole_blocks():
    with pytest.raises(ValueError):
        tdes_ecb_encrypt(KEY, b"abc")
    with pytest.raises(ValueError):
        kcv(KEY, 9)


def test_parse_hex_key():
    assert parse_hex_key("0123456789ABCDEFFEDCBA9876543210", "zmk") == KEY
    assert parse_hex_key(" 0123456789abcdeffedcba9876543210\n", "zmk") == KEY


@pytest.mark.parametrize(
    "text",
    [
        "0123456789ABCDEFFEDCBA987654321",  # 31 digits
        "0123456789ABCDEFFEDCBA98765432100",  # 33
        "0123456789ABCDEFFEDCBA987654321G",  # not hex
        "0123456789ABCDEF FEDCBA9876543210",  # blank inside
        "",
    ],
)
def test_parse_hex_key_errors_name_the_key_never_echo_it(text):
    with pytest.raises(ValueError) as e:
        parse_hex_key(text, "banks.demo.zmk")
    msg = str(e.value)
    assert "banks.demo.zmk" in msg
    if text.strip():
        assert text.strip() not in msg
        assert text.strip()[:16] not in msg


def test_parse_hex_key_not_a_string():
    with pytest.raises(ValueError, match="banks.demo.mac_key"):
        parse_hex_key(None, "banks.demo.mac_key")  # type: ignore[arg-type]


def test_macs_equal():
    assert macs_equal(b"\x01" * 8, b"\x01" * 8)
    assert not macs_equal(b"\x01" * 8, b"\x01" * 7 + b"\x02")
    assert not macs_equal(b"\x01" * 8, b"\x01" * 7)


def test_public_api():
    for name in (
        "x919_mac",
        "tdes_ecb_encrypt",
        "tdes_ecb_decrypt",
        "kcv",
        "wrap_key",
        "unwrap_key",
        "parse_hex_key",
        "macs_equal",
    ):
        assert callable(getattr(crypto, name))


# -- SM4 (GB/T 32907) and its MAC (ISO/IEC 9797-1 algorithm 1), ref-xml §3 ------------

SM4_KEY = KEY  # ref-xml's test key is the same 32 hex digits


def test_sm4_standard_vector():
    # GB/T 32907-2016 appendix A: the key encrypting itself
    assert sm4_ecb_encrypt(SM4_KEY, SM4_KEY).hex().upper() == "681EDF34D206965E86B3E94F536E4246"
    assert sm4_ecb_decrypt(SM4_KEY, bytes.fromhex("681EDF34D206965E86B3E94F536E4246")) == SM4_KEY


def test_check_values_of_either_cipher():
    assert check_value("sm4", SM4_KEY).hex().upper() == "2677F4"
    assert check_value("3des", KEY).hex().upper() == "08D7B4" == kcv(KEY).hex().upper()
    assert check_value("sm4", SM4_KEY, 16) == sm4_ecb_encrypt(SM4_KEY, bytes(16))
    with pytest.raises(ValueError, match="algorithm 'aes'"):
        check_value("aes", SM4_KEY)
    with pytest.raises(ValueError):
        check_value("sm4", SM4_KEY, 17)


def test_sm4_mac_spec_vectors():
    assert sm4_mac(SM4_KEY, b"").hex().upper() == "8C338E5A27E349BE"
    assert sm4_mac(SM4_KEY, b"a" * 16).hex().upper() == "D14FB37E5215CC72"


def test_sm4_mac_of_the_ref_xml_request():
    frame = ('000259<?xml version="1.0" encoding="GBK"?><ROOT><HEAD><TxCode>3001</TxCode>'
             '<BankCode>301210</BankCode><TxDate>20261205</TxDate><TxTime>101500</TxTime>'
             '<BankSeq>X000000000000001</BankSeq></HEAD><BODY><CustNo>100000123</CustNo>'
             '</BODY><MAC>2865B1C9BB2107A1</MAC></ROOT>').encode("ascii")
    mab = frame[6:frame.index(b"<MAC>")]
    assert sm4_mac(SM4_KEY, mab).hex().upper() == "2865B1C9BB2107A1"


def _sm4_block(key: bytes, block: bytes) -> bytes:
    e = Cipher(SM4(key), modes.ECB()).encryptor()
    return e.update(block) + e.finalize()


def reference_sm4_mac(key: bytes, data: bytes) -> bytes:
    """ISO/IEC 9797-1 MAC algorithm 1, padding method 2, block by block."""
    padded = data + b"\x80" + b"\0" * ((15 - len(data)) % 16)
    chain = bytes(16)
    for i in range(0, len(padded), 16):
        chain = _sm4_block(key, bytes(a ^ b for a, b in zip(chain, padded[i:i + 16],
                                                            strict=True)))
    return chain[:8]


@settings(max_examples=200)
@given(st.binary(min_size=16, max_size=16), st.binary(max_size=200))
def test_sm4_mac_is_the_last_cbc_block(key, data):
    assert sm4_mac(key, data) == reference_sm4_mac(key, data)


@settings(max_examples=100)
@given(st.binary(min_size=16, max_size=16), st.binary(max_size=100))
def test_sm4_mac_padding_is_unambiguous(key, data):
    # method 2 always pads, so data and data + its own padding differ, and a
    # trailing zero byte is never confused with padding (unlike X9.19's zeros)
    assert sm4_mac(key, data) != sm4_mac(key, data + b"\x00")
    pad = b"\x80" + bytes(-(len(data) + 1) % 16)
    assert 1 <= len(pad) <= 16 and (len(data) + len(pad)) % 16 == 0
    assert sm4_mac(key, data) == _cbc_chain(key, data + pad)[:8]


def _cbc_chain(key: bytes, padded: bytes) -> bytes:
    e = Cipher(SM4(key), modes.CBC(bytes(16))).encryptor()
    return (e.update(padded) + e.finalize())[-16:]


@pytest.mark.parametrize("bad", [b"", bytes(8), bytes(15), bytes(17), bytes(24)])
def test_sm4_wrong_key_lengths(bad):
    with pytest.raises(ValueError, match="16 bytes"):
        sm4_mac(bad, b"data")
    with pytest.raises(ValueError):
        sm4_ecb_encrypt(bad, bytes(16))
    with pytest.raises(ValueError, match="multiple of 16"):
        sm4_ecb_encrypt(SM4_KEY, bytes(8))


# -- HMAC-SHA256 -------------------------------------------------------------------------


def test_hmac_sha256_rfc4231():
    # RFC 4231 test cases 1 and 2
    assert hmac_sha256(b"\x0b" * 20, b"Hi There").hex() == (
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
    assert hmac_sha256(b"Jefe", b"what do ya want for nothing?").hex() == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    with pytest.raises(TypeError):
        hmac_sha256("Jefe", b"x")  # type: ignore[arg-type]


def test_public_api_new():
    for name in ("sm4_ecb_encrypt", "sm4_mac", "check_value", "hmac_sha256"):
        assert name in crypto.__all__ and callable(getattr(crypto, name))
