"""``bankgate plugins check FILE``: what bank IT runs on a plugin before going live.

Loads the file, checks that it declares a codec with everything the engine
and the simulator need, that its response-code mapping covers every
canonical outcome, and round-trips every construct layout it declares
(build a sample, parse it back, build again: the bytes must be equal).
Each line of the report starts with ``ok``, ``skip`` or ``FAIL``.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import construct as c

from bankgate.canon.messages import Outcome
from bankgate.codec import fields
from bankgate.codec.base import Framing
from bankgate.codec.registry import PluginError, load_file

REQUIRED = ("name", "framing", "decode", "outcome_code", "client_encode", "client_decode",
            "layouts")
FRAMINGS = ("ascii4", "ascii8", "tpdu2")


class NoSample(Exception):
    pass


def sample(con: c.Construct):
    """A plain value that ``con`` can build, for the layouts bank fields use."""
    if isinstance(con, c.Renamed):
        return sample(con.subcon)
    if isinstance(con, fields.DateN8):
        return date(2026, 11, 27)
    if isinstance(con, fields.Number):  # Fen too
        return 1
    if isinstance(con, fields.Digits):
        return "1" * con.width
    if isinstance(con, fields.GbkText):
        return "热" * (con.width // 2)
    if isinstance(con, c.Struct):
        return {sc.name: sample(sc) for sc in con.subcons if sc.name and not _computed(sc)}
    if isinstance(con, c.Const):
        return None
    if isinstance(con, c.Bytes) and isinstance(con.length, int):
        return b"\x00" * con.length
    if isinstance(con, (c.Compiled,)):
        return sample(con.defersubcon)
    if isinstance(con, c.Array) or (
            hasattr(con, "subcon") and hasattr(con, "count") and not isinstance(con, c.Renamed)):
        # a count taken from the context (``this.bill_count``) is a number
        # field, whose sample is 1: one element keeps the two consistent
        n = con.count if isinstance(con.count, int) else 1
        return [sample(con.subcon) for _ in range(n)]
    return _try_candidates(con)


def _try_candidates(con: c.Construct):
    """A plugin's own field adapter: try the usual shapes of a field value."""
    n = next((v for v in (getattr(con, a, None) for a in ("length", "width", "maxlen"))
              if isinstance(v, int) and v > 0), 1)
    for value in ("1" * n, b"1" * n, 1, "1", b"1", date(2026, 11, 27)):
        try:
            raw = con.build(value)
            con.parse(raw)
        except Exception:  # noqa: BLE001, S112 - not this shape; try the next
            continue
        return value
    raise NoSample(type(con).__name__)


def _computed(sc) -> bool:
    inner = sc.subcon if isinstance(sc, c.Renamed) else sc
    return isinstance(inner, (c.Computed, c.Const, c.Rebuild, c.Checksum))


def check_layout(name: str, layout) -> str:
    if not isinstance(layout, c.Construct):
        return f"ok    layout {name}: {type(layout).__name__} (not a construct layout)"
    try:
        value = sample(layout)
    except NoSample as e:
        return f"skip  layout {name}: no sample value for {e}"
    try:
        raw = layout.build(value)
        again = layout.build(layout.parse(raw))
    except Exception as e:  # noqa: BLE001 - report whatever the plugin raises
        return f"FAIL  layout {name}: {type(e).__name__}: {e}"
    if raw != again:
        return f"FAIL  layout {name}: build(parse(build(x))) differs from build(x)"
    return f"ok    layout {name}: {len(raw)} bytes round-trip"


def check_codec(codec) -> list[str]:
    out = []
    missing = [a for a in REQUIRED if not hasattr(codec, a)]
    if missing:
        return [f"FAIL  CODEC lacks {', '.join(missing)}"]
    out.append(f"ok    codec {codec.name!r}: {getattr(codec, 'description', '')}".rstrip(": "))
    fr = codec.framing
    if not isinstance(fr, Framing) or fr.kind not in FRAMINGS:
        out.append(f"FAIL  framing: expected a Framing with kind in {FRAMINGS}, got {fr!r}")
    else:
        out.append(f"ok    framing {fr.kind}, at most {fr.max_length} bytes, idle "
                   f"{fr.idle_timeout:g} s" + (", pipelined" if fr.pipelined else "")
                   + (", one request per connection" if fr.one_per_connection else ""))
    bad = []
    codes = {}
    for o in Outcome:
        try:
            code = codec.outcome_code(o)
        except Exception as e:  # noqa: BLE001
            bad.append(f"{o.value} raises {type(e).__name__}")
            continue
        if not isinstance(code, str) or not code:
            bad.append(f"{o.value} -> {code!r}")
        codes[o.value] = code
    if bad:
        out.append("FAIL  outcome codes not total: " + "; ".join(bad))
    else:
        out.append("ok    outcome codes total: "
                   + ", ".join(f"{k}={v}" for k, v in codes.items()))
    try:
        layouts = codec.layouts()
    except Exception as e:  # noqa: BLE001
        return out + [f"FAIL  layouts() raises {type(e).__name__}: {e}"]
    for name, layout in layouts.items():
        out.append(check_layout(name, layout))
    for extra in ("read_statement", "write_statement"):
        out.append(("ok    " if hasattr(codec, extra) else "skip  ") + f"{extra}"
                   + ("" if hasattr(codec, extra) else ": not provided (no reconciliation)"))
    return out


def check_plugin_file(path: str | Path) -> list[str]:
    try:
        module = load_file(Path(path))
    except PluginError as e:
        return [f"FAIL  {e}"]
    codec = getattr(module, "CODEC", None)
    if codec is None:
        return [f"FAIL  {path}: no module-level CODEC"]
    return check_codec(codec)
