"""Money is integer fen inside the gateway; banks send yuan text or fen digits."""

from __future__ import annotations

import re

MAX_FEN = 10**13 - 1  # 99,999,999,999.99 yuan: above any real utility bill

_YUAN = re.compile(r"(0|[1-9][0-9]{0,10})\.([0-9]{2})")


def yuan_to_fen(text: str) -> int:
    """Parse ``123.45`` (exactly two decimals, no sign, no spaces) into fen.

    Raises ``ValueError`` naming what is wrong.
    """
    m = _YUAN.fullmatch(text)
    if not m:
        raise ValueError(f"amount {text[:20]!r} is not yuan with two decimals")
    return int(m.group(1)) * 100 + int(m.group(2))


def fen_to_yuan(fen: int) -> str:
    if fen < 0:
        return "-" + fen_to_yuan(-fen)
    return f"{fen // 100}.{fen % 100:02d}"


def grouped_yuan(fen: int) -> str:
    """Yuan as people read them, thousands grouped: ``1234567`` -> ``12,345.67``."""
    whole, cents = divmod(abs(fen), 100)
    return f"{'-' if fen < 0 else ''}{whole:,}.{cents:02d}"


_DIGITS = "零壹贰叁肆伍陆柒捌玖"
_SMALL = ("", "拾", "佰", "仟")
CAPITAL_LIMIT = 10**18  # fen: up to 9999万亿 yuan, far above MAX_FEN


def _section(n: int) -> tuple[str, bool]:
    """One section below 10000: its capitals, and whether it has a gap of
    zeros at its top (so a preceding section must be followed by 零)."""
    out = ""
    pending = False
    for k in (3, 2, 1, 0):
        d = n // 10**k % 10
        if d == 0:
            pending = bool(out)
            continue
        if pending:
            out += "零"
            pending = False
        out += _DIGITS[d] + _SMALL[k]
    return out, n < 1000


def _integer(n: int) -> str:
    """1 <= n < 10**16 in capitals: 亿 counts itself in 万 sections."""
    if n >= 10**8:
        high, low = divmod(n, 10**8)
        out = _integer(high) + "亿"
        if low:
            out += ("零" if low < 10**7 or high % 10 == 0 else "") + _integer(low)
        return out
    high, low = divmod(n, 10**4)
    if not high:
        return _section(low)[0]
    out = _section(high)[0] + "万"
    if low:
        text, gap = _section(low)
        out += ("零" if gap or high % 10 == 0 else "") + text
    return out


def chinese_capital(fen: int) -> str:
    """大写金额, as cheques and invoices write it: 1234.50 -> 壹仟贰佰叁拾肆元伍角整.

    Follows the rules of 《正确填写票据和结算凭证的基本规定》 where they leave a
    choice, always the same way: ``壹拾`` for a leading ten; one ``零`` for any
    run of zeros between two non-zero digits, also across 万 and 亿
    (壹拾万零壹仟元整); no ``零`` after 元 when the 元 digit is zero but 角 is
    not (壹仟陆佰捌拾元叁角贰分), but ``元零`` before 分 when 角 is zero
    (叁佰贰拾伍元零肆分); ``整`` after 元 or 角, never after 分; no 零元 before a
    fraction of a yuan (伍角整); 零元整 for nothing.  Above 亿 the count of 亿
    is itself written in 万 sections (壹万零壹亿元整).
    """
    if isinstance(fen, bool) or not isinstance(fen, int):
        raise TypeError(f"amount must be integer fen, got {type(fen).__name__}")
    if fen < 0:
        raise ValueError("negative amount")
    if fen >= CAPITAL_LIMIT:
        raise ValueError("amount too large for capital numerals")
    yuan, jiao, f = fen // 100, fen // 10 % 10, fen % 10
    out = _integer(yuan) + "元" if yuan else ""
    if jiao == 0 and f == 0:
        return (out or "零元") + "整"
    if jiao:
        out += _DIGITS[jiao] + "角"
    elif yuan:
        out += "零"
    return out + (_DIGITS[f] + "分" if f else "整")
