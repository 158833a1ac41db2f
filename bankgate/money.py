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


_DIGITS = "零壹贰叁肆伍陆柒捌玖"


def chinese_capital(fen: int) -> str:
    """大写金额: 1234.50 -> 壹仟贰佰叁拾肆元伍角整."""
    if fen < 0:
        raise ValueError("negative amount")
    yuan, jiao, f = fen // 100, (fen // 10) % 10, fen % 10
    units = ["", "拾", "佰", "仟"]
    big = ["", "万", "亿", "万亿"]
    out = ""
    if yuan:
        groups = []
        n = yuan
        while n:
            groups.append(n % 10000)
            n //= 10000
        parts = []
        zero_pending = False
        for gi in range(len(groups) - 1, -1, -1):
            g = groups[gi]
            if g == 0:
                zero_pending = True
                continue
            s = ""
            digits = [(g // 10**k) % 10 for k in range(3, -1, -1)]
            started = bool(parts)
            for k, d in enumerate(digits):
                if d == 0:
                    if started:
                        zero_pending = True
                    continue
                if zero_pending:
                    s += "零"
                    zero_pending = False
                s += _DIGITS[d] + units[3 - k]
                started = True
            parts.append(s + big[gi])
            zero_pending = g % 10 == 0 or zero_pending and False
            if g % 10 == 0:
                zero_pending = True
        out = "".join(parts) + "元"
    if jiao == 0 and f == 0:
        return (out or "零元") + "整"
    if jiao:
        out += _DIGITS[jiao] + "角"
    elif yuan:
        out += "零"
    if f:
        out += _DIGITS[f] + "分"
    else:
        out += "整"
    return out
