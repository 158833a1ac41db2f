"""JSON messages for bank specs: one canonical form, and HMAC-SHA256 signatures over it.

A JSON spec signs "the message without its signature"; two programs agree on
those bytes only if they serialise alike.  The rule here, which a spec states
so the bank can follow it:

- keys sorted (by code point), at every level;
- no whitespace: separators ``,`` and ``:``;
- UTF-8, non-ASCII written as itself (not ``\\uXXXX``, ``ensure_ascii=False``);
- numbers are integers (amounts in fen); a float, ``NaN`` or ``Infinity`` has no
  canonical form, so a message holding one cannot be signed or verified.

:func:`loads` is the strict reader: UTF-8 without BOM, a key may not repeat in
an object (the signed bytes would be ambiguous), no ``NaN``/``Infinity``, and
no nesting deep enough to exhaust the stack -- each a :class:`JSONError`.

The signature is lower-case hex of HMAC-SHA256 (:func:`bankgate.codec.crypto.hmac_sha256`)
over the canonical form of the object without its signature field; :func:`verify`
compares in constant time.  Nothing here logs, formats or repeats a key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from bankgate.codec.crypto import hmac_sha256, macs_equal

__all__ = ["JSONError", "canonical", "loads", "sign", "signed", "verify"]

SIGN = "sign"  # the usual name of the signature field
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


class JSONError(ValueError):
    """Bytes that are not one strict JSON value, or a value with no canonical form."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise JSONError(f"key {k!r} repeats in an object")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise JSONError(f"{name} is not a JSON number")


def loads(data: bytes) -> Any:
    """The JSON value in ``data`` (UTF-8), strictly; :class:`JSONError` otherwise."""
    if data[:3] == b"\xef\xbb\xbf":
        raise JSONError("a byte-order mark before the JSON")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise JSONError(f"not UTF-8 at byte {e.start}") from None
    try:
        return json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
    except JSONError:
        raise
    except RecursionError:
        raise JSONError("nested too deeply") from None
    except ValueError as e:  # json.JSONDecodeError
        raise JSONError(f"not JSON: {e}") from None


def _check(value: Any) -> None:
    """Refuse what has no canonical form (floats); iterative, any depth."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float):
            raise JSONError("a non-integer number has no canonical form")
        if isinstance(v, Mapping):
            if not all(isinstance(k, str) for k in v):
                raise JSONError("object keys must be strings")
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
        elif not (v is None or isinstance(v, (str, int, bool))):
            raise JSONError(f"{type(v).__name__} is not a JSON value")


def canonical(value: Any) -> bytes:
    """The canonical bytes of ``value`` (the rule in the module docstring)."""
    _check(value)
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except RecursionError:
        raise JSONError("nested too deeply") from None
    return text.encode("utf-8")


def _unsigned(message: Mapping, field: str) -> dict:
    if not isinstance(message, Mapping):
        raise JSONError("only an object can be signed")
    return {k: v for k, v in message.items() if k != field}


def sign(key: bytes, message: Mapping, field: str = SIGN) -> str:
    """Lower-case hex HMAC-SHA256 of the canonical ``message`` without ``field``."""
    return hmac_sha256(key, canonical(_unsigned(message, field))).hex()


def signed(key: bytes, message: Mapping, field: str = SIGN) -> dict:
    """``message`` with its signature in ``field`` (any old one replaced)."""
    out = _unsigned(message, field)
    out[field] = sign(key, out, field)
    return out


def verify(key: bytes | None, message: Any, field: str = SIGN) -> bool:
    """Whether ``message[field]`` is the signature of the rest (hex, either case).

    False, never an exception, for a missing key, a missing or malformed
    signature, or a message with no canonical form.  The comparison of the
    signature bytes takes the same time wherever they differ.
    """
    if not key or not isinstance(message, Mapping):
        return False
    given = message.get(field)
    if not isinstance(given, str) or _HEX64.fullmatch(given) is None:
        return False
    try:
        expected = hmac_sha256(key, canonical(_unsigned(message, field)))
    except JSONError:
        return False
    return macs_equal(expected, bytes.fromhex(given))
