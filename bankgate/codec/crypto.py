"""Bank-grade symmetric primitives: 3DES, ANSI X9.19 MAC, SM4 and its MAC,
HMAC-SHA256, key check values.

Every 3DES key here is a double-length (16-byte) DES key ``K1K2`` as banks write
them (32 hex digits).  ``cryptography`` deprecates two-key and single-key
TripleDES, so a key ``K1K2`` is expanded to the equivalent three-key form
``K1K2K1`` and the single-DES steps of X9.19 run as ``K1K1K1`` (EDE with
three equal keys is single DES).  No deprecated code path is ever taken, so
no warning is raised and none needs silencing.

SM4 (GB/T 32907, the Chinese national block cipher: 16-byte key, 16-byte
block) comes from ``cryptography`` too; :func:`sm4_mac` is ISO/IEC 9797-1 MAC
algorithm 1 with SM4, as Chinese bank specs use it.  :func:`check_value`
gives a key's check value for either cipher (the encryption of a zero block,
first ``n`` bytes).

Nothing in this module logs or formats a key; error messages name the key's
role, never its value.
"""

from __future__ import annotations

import hashlib
import hmac
import string

from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.hazmat.primitives.ciphers.algorithms import SM4

try:  # cryptography >= 43: TripleDES lives in the "decrepit" corner
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES

__all__ = [
    "x919_mac",
    "X919",
    "tdes_ecb_encrypt",
    "tdes_ecb_decrypt",
    "kcv",
    "wrap_key",
    "unwrap_key",
    "parse_hex_key",
    "macs_equal",
    "sm4_ecb_encrypt",
    "sm4_ecb_decrypt",
    "sm4_mac",
    "check_value",
    "hmac_sha256",
    "CHECK_ALGORITHMS",
]

BLOCK = 8
_ZERO_BLOCK = bytes(BLOCK)
_ZERO_IV = modes.CBC(_ZERO_BLOCK)
_ECB = modes.ECB()
_HEX = frozenset(string.hexdigits)


def _tdes(key: bytes) -> TripleDES:
    """The 3DES algorithm for a 16-byte (K1K2 -> K1K2K1) or 24-byte key."""
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError("a key must be bytes")
    n = len(key)
    if n == 16:
        return TripleDES(bytes(key) + bytes(key[:8]))
    if n == 24:
        return TripleDES(bytes(key))
    raise ValueError(f"a 3DES key must be 16 or 24 bytes, not {n}")


def _blocks(data: bytes, what: str = "data") -> bytes:
    if len(data) % BLOCK:
        raise ValueError(f"{what} must be a multiple of {BLOCK} bytes")
    return data


def tdes_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """3DES-ECB encrypt ``data`` (a multiple of 8 bytes) under ``key``."""
    enc = Cipher(_tdes(key), _ECB).encryptor()
    return enc.update(_blocks(data)) + enc.finalize()


def tdes_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    """3DES-ECB decrypt ``data`` (a multiple of 8 bytes) under ``key``."""
    dec = Cipher(_tdes(key), _ECB).decryptor()
    return dec.update(_blocks(data)) + dec.finalize()


def kcv(key: bytes, n: int = 3) -> bytes:
    """Key check value: the first ``n`` bytes of 3DES-ECB(key, 8 zero bytes)."""
    if not 1 <= n <= BLOCK:
        raise ValueError("a check value is 1 to 8 bytes")
    return tdes_ecb_encrypt(key, _ZERO_BLOCK)[:n]


def wrap_key(zmk: bytes, key: bytes) -> bytes:
    """Encrypt a working key under the zone master key (3DES-ECB)."""
    if len(key) not in (16, 24):
        raise ValueError("a working key must be 16 or 24 bytes")
    return tdes_ecb_encrypt(zmk, key)


def unwrap_key(zmk: bytes, wrapped: bytes) -> bytes:
    """Decrypt a working key sent under the zone master key (3DES-ECB)."""
    if len(wrapped) not in (16, 24):
        raise ValueError("a wrapped key must be 16 or 24 bytes")
    return tdes_ecb_decrypt(zmk, wrapped)


class X919:
    """An ANSI X9.19 MAC key with its ciphers set up once.

    For a connection that MACs many messages under one key (an ISO 8583 MAK):
    ``X919(key).mac(data) == x919_mac(key, data)``, a little faster.  Keep it
    with the key's owner (the connection), not in a global cache.
    """

    __slots__ = ("key", "_cbc", "_chain", "_last")

    def __init__(self, key: bytes):
        if not isinstance(key, (bytes, bytearray)) or len(key) != 16:
            raise ValueError("an X9.19 key must be 16 bytes")
        self.key = key = bytes(key)
        k1 = key[:8]
        # One long-lived CBC context (single DES, K1) chains across messages;
        # ``_chain`` is its last output block, XORed into the next message's
        # first block so that every message starts from a zero IV.
        self._cbc = Cipher(TripleDES(k1 + k1 + k1), _ZERO_IV).encryptor()
        self._chain = 0
        self._last = Cipher(TripleDES(key + k1), _ECB).encryptor()  # K1K2K1

    def mac(self, data: bytes) -> bytes:
        data = bytes(data)
        rem = len(data) % BLOCK
        if rem or not data:
            data += bytes(BLOCK - rem)
        last = int.from_bytes(data[-BLOCK:], "big")
        if len(data) > BLOCK:
            head = (int.from_bytes(data[:BLOCK], "big") ^ self._chain).to_bytes(BLOCK, "big")
            out = self._cbc.update(head + data[BLOCK:-BLOCK])
            self._chain = int.from_bytes(out[-BLOCK:], "big")
            last ^= self._chain
        return self._last.update(last.to_bytes(BLOCK, "big"))

    def __repr__(self):
        return "X919(<key>)"


def x919_mac(key: bytes, data: bytes) -> bytes:
    """ANSI X9.19 retail MAC (ISO 9797-1 MAC algorithm 3, DES), 8 bytes.

    ``data`` is padded with 0x00 to a multiple of 8 (nothing is added when it
    already is one; empty data is one zero block).  Single-DES CBC with K1 over
    every block but the last; the last block (XORed with the chain) goes
    through 3DES K1K2K1, which equals the standard's final "decrypt with K2,
    encrypt with K1" step on the last single-DES output.
    """
    return X919(key).mac(data)


# -- SM4 ---------------------------------------------------------------------

SM4_BLOCK = 16
_SM4_ZERO = bytes(SM4_BLOCK)
_SM4_ZERO_IV = modes.CBC(_SM4_ZERO)


def _sm4(key: bytes) -> SM4:
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError("a key must be bytes")
    if len(key) != SM4_BLOCK:
        raise ValueError(f"an SM4 key must be 16 bytes, not {len(key)}")
    return SM4(bytes(key))


def sm4_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """SM4-ECB encrypt ``data`` (a multiple of 16 bytes) under the 16-byte ``key``."""
    if len(data) % SM4_BLOCK:
        raise ValueError(f"data must be a multiple of {SM4_BLOCK} bytes")
    enc = Cipher(_sm4(key), _ECB).encryptor()
    return enc.update(bytes(data)) + enc.finalize()


def sm4_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    """SM4-ECB decrypt ``data`` (a multiple of 16 bytes) under the 16-byte ``key``."""
    if len(data) % SM4_BLOCK:
        raise ValueError(f"data must be a multiple of {SM4_BLOCK} bytes")
    dec = Cipher(_sm4(key), _ECB).decryptor()
    return dec.update(bytes(data)) + dec.finalize()


def sm4_mac(key: bytes, data: bytes) -> bytes:
    """ISO/IEC 9797-1 MAC algorithm 1 with SM4, 8 bytes.

    Padding method 2: one ``0x80`` byte, then ``0x00`` bytes up to a multiple
    of 16 (always added, so empty data is one block ``80 00 ... 00``); SM4-CBC
    with a zero IV; the MAC is the first 8 bytes of the last cipher block.
    """
    data = bytes(data) + b"\x80"
    data += bytes(-len(data) % SM4_BLOCK)
    enc = Cipher(_sm4(key), _SM4_ZERO_IV).encryptor()
    out = enc.update(data) + enc.finalize()
    return out[-SM4_BLOCK:][:8]


# -- check values and HMAC ---------------------------------------------------------

#: the ciphers :func:`check_value` knows, with their key lengths in bytes
CHECK_ALGORITHMS = {"3des": (16, 24), "sm4": (16,)}


def check_value(algorithm: str, key: bytes, n: int = 3) -> bytes:
    """A key's check value: the first ``n`` bytes of the key's encryption of a
    zero block (``"3des"``: 8 bytes, the classic KCV; ``"sm4"``: 16 bytes)."""
    if algorithm == "3des":
        return kcv(key, n)
    if algorithm == "sm4":
        if not 1 <= n <= SM4_BLOCK:
            raise ValueError("an SM4 check value is 1 to 16 bytes")
        return sm4_ecb_encrypt(key, _SM4_ZERO)[:n]
    raise ValueError(f"no check value for algorithm {algorithm!r} (known: 3des, sm4)")


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 of ``data`` under ``key`` (any length), 32 bytes."""
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError("a key must be bytes")
    return hmac.new(bytes(key), bytes(data), hashlib.sha256).digest()


def parse_hex_key(text: str, what: str) -> bytes:
    """32 hex digits (either case, surrounding blanks ignored) -> 16 bytes.

    The ``ValueError`` names ``what`` (e.g. ``"banks.icbc.zmk"``) and never
    repeats the text, which may be a real key.
    """
    if not isinstance(text, str):
        raise ValueError(f"{what}: a key must be written as 32 hex digits")
    t = text.strip()
    if len(t) != 32 or not _HEX.issuperset(t):
        raise ValueError(f"{what}: a key must be exactly 32 hex digits")
    return bytes.fromhex(t)


def macs_equal(a: bytes, b: bytes) -> bool:
    """Compare two MACs in constant time."""
    return hmac.compare_digest(bytes(a), bytes(b))
