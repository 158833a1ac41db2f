"""``bankgate plugins check FILE``: what bank IT runs on a plugin before going live.

Loads the file, checks that it declares a codec with everything the engine
and the simulator need, that its response-code mapping covers every
canonical outcome, and round-trips every construct layout it declares
(build a sample, parse it back, build again: the bytes must be equal).
Then it lists the optional capabilities the plugin declares
(:mod:`bankgate.codec.capabilities`): its statement file (written and read
back), its error file, batch files, real-time debit, simulator traits,
keys, ``[bank.options]`` and bank defaults; a capability declared in part is
a failure.
Each line of the report starts with ``ok``, ``skip`` or ``FAIL``.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import construct as c

from bankgate.canon.messages import Outcome
from bankgate.codec import capabilities as cap
from bankgate.codec import fields
from bankgate.codec.base import Framing
from bankgate.codec.registry import PluginError, load_file
from bankgate.codec.statement import CATEGORIES, ReaderFormat, StatementError, can_write

REQUIRED = ("name", "framing", "decode", "outcome_code", "client_encode", "client_decode",
            "layouts")
FRAMINGS = ("ascii4", "ascii8", "ascii6", "tpdu2")


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
    return out + check_capabilities(codec)


# -- the optional capabilities ----------------------------------------------------------

SAMPLE_BANK = "105210"
SAMPLE_DATE = date(2026, 11, 27)
SAMPLE_RECORD = dict(serial="S00000000001", trade_date=SAMPLE_DATE, trade_time="101500",
                     customer_no="100000123", amount=12345, channel="01", bill_ids=("B1",),
                     receipt_no="20261127000000000001", status="POSTED",
                     pan_masked="622202******1234", terminal_id="ATM00001")


class _Item:  # a reconciliation item, as an error file is given them
    def __init__(self, category: str, serial: str):
        self.category, self.serial = category, serial


def _members(proto) -> list[str]:
    """The methods and attributes a capability Protocol asks for."""
    names = {n for n in vars(proto) if not n.startswith("_")}
    return sorted(names | set(getattr(proto, "__annotations__", {})))


def _partial(codec, proto) -> str | None:
    """A FAIL line for a codec that has some of ``proto``'s members but not all."""
    have = [n for n in _members(proto) if hasattr(codec, n)]
    if have and len(have) < len(_members(proto)):
        missing = [n for n in _members(proto) if n not in have]
        return (f"FAIL  {proto.__name__}: has {', '.join(have)} but not {', '.join(missing)}")
    return None


def check_capabilities(codec) -> list[str]:
    """One line (or a few) per optional capability: declared, or not."""
    out = check_statement(codec)
    partial = _partial(codec, cap.BatchFiles)
    if partial:
        out.append(partial)
    elif cap.batch_files(codec) is not None:
        out.append(_try("batch files", lambda: (
            f"withholding request {codec.pk_name(SAMPLE_BANK, SAMPLE_DATE, 1)}, answered by"
            f" {codec.pkjg_name(codec.pk_name(SAMPLE_BANK, SAMPLE_DATE, 1))}")))
    else:
        out.append("skip  batch files: not declared (no withholding by files)")
    partial = _partial(codec, cap.DebitClient)
    if partial:
        out.append(partial)
    elif cap.debit_client(codec) is not None:
        out.append("ok    debit client: real-time debit and its reversal, the gateway as client")
    else:
        out.append("skip  debit client: not declared (no real-time debit)")
    try:
        traits = cap.simulator_traits(codec)
    except cap.CapabilityError as e:
        out.append(f"FAIL  simulator traits: {e}")
    else:
        if traits is None:
            out.append("skip  simulator traits: not declared (the simulator guesses from the"
                       " transaction names)")
        else:
            out.append("ok    simulator traits: " + _traits_text(traits))
    return out + check_keys_and_options(codec)


def check_keys_and_options(codec) -> list[str]:
    """The keys, the ``[bank.options]`` and the ``bank_defaults`` the plugin
    declares, one line each; the ``validate_options`` hook is run on the
    declared defaults (a hook that refuses them, or raises, fails)."""
    out = []
    try:
        kinds = cap.key_kinds(codec)
    except cap.CapabilityError as e:
        out.append(f"FAIL  keys: {e}")
    else:
        out.extend(f"ok    key {k.summary()}" for k in kinds)
        if not kinds:
            out.append("skip  keys: none declared (its banks are configured without keys)")
    try:
        specs = cap.option_specs(codec)
    except cap.CapabilityError as e:
        out.append(f"FAIL  options: {e}")
    else:
        out.extend(f"ok    option {o.summary()}" for o in specs)
        hook = getattr(codec, "validate_options", None) is not None
        if hook:
            defaults = {o.name: o.default for o in specs if o.default is not None}
            problems = cap.option_problems(codec, defaults)
            out.append(f"FAIL  validate_options refuses the declared defaults: {problems[0]}"
                       if problems else "ok    validate_options: accepts the declared defaults")
        if not specs and not hook:
            out.append("skip  options: none declared ([bank.options] holds only the"
                       " gateway's invoice and withholding keys)")
    try:
        defaults = cap.bank_defaults(codec)
    except cap.CapabilityError as e:
        out.append(f"FAIL  bank defaults: {e}")
    else:
        if defaults:
            out.append("ok    bank defaults (where the [[bank]] table is silent): "
                       + ", ".join(f"{k} = {_toml(v)}" for k, v in defaults.items()))
    return out


def _toml(v) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else f"{v:g}"


def _traits_text(t: cap.SimulatorTraits) -> str:
    ops = ", ".join(op if op == txn else f"{op}={txn}" for op, txn in t.ops.items())
    text = f"operations {ops}; serials of {t.serial_length} characters"
    if t.rrn:
        text += " (ISO 8583 rrn)"
    if t.signin:
        text += f"; signs in with {t.signin!r} first"
    if t.pay_names_bills:
        text += "; a payment names its bills"
    if t.two_phase:
        text += "; two-phase: `simulate pay` prepays, then confirms"
    return text


def check_statement(codec) -> list[str]:
    """The statement format: its file name, a one-record file written and read
    back, and its error file."""
    try:
        fmt = cap.statement_format(codec)
    except cap.CapabilityError as e:
        return [f"FAIL  statement file: {e}"]
    if fmt is None:
        partial = _partial(codec, cap.StatementReader)
        return [partial or "skip  statement file: not declared (its banks cannot be reconciled)"]
    try:
        name = fmt.file_name(SAMPLE_BANK, SAMPLE_DATE)
    except Exception as e:  # noqa: BLE001 - report whatever the plugin raises
        return [f"FAIL  statement file: file_name raises {type(e).__name__}: {e}"]
    what = "totals in a header or trailer" if fmt.has_header else "no totals line"
    if fmt.names_bills:
        what += ", records name their bills"
    out = [f"ok    statement file {name}: {what}"]
    if isinstance(fmt, ReaderFormat):
        out.append("ok    statement read: read_statement, the whole file at once"
                   " (no statement_format declared)")
    if can_write(fmt):
        out.append(_round_trip(fmt))
    else:
        out.append("skip  statement write: no write_statement (nor a statement_format):"
                   " reconciliation reads its files, but `statement write` and `simulate"
                   " ... statement` refuse its banks")
    errors = cap.statement_error_file(fmt)
    if errors is None:
        out.append("skip  statement error file: not declared")
    else:
        out.append(_try("statement error file", lambda: (
            errors.error_file(SAMPLE_BANK, SAMPLE_DATE,
                              [_Item(c, "S00000000001") for c in CATEGORIES])[0])))
    return out


def _round_trip(fmt) -> str:
    """Write one record and read it back (the same serial, date, customer and
    amount); read it for another settle date (refused); with totals, write them
    misstated and read them back as declared (not refused)."""
    try:
        data = fmt.write(SAMPLE_BANK, SAMPLE_DATE, [dict(SAMPLE_RECORD)])
    except NotImplementedError:
        return ("skip  statement write: its statement_format's write raises"
                " NotImplementedError: reconciliation reads its files, but `statement"
                " write` and `simulate ... statement` refuse its banks")
    except Exception as e:  # noqa: BLE001 - report whatever the plugin raises
        return f"FAIL  statement write: {type(e).__name__}: {e}"
    try:
        st = fmt.read(data, SAMPLE_BANK, SAMPLE_DATE)
    except Exception as e:  # noqa: BLE001 - report whatever the plugin raises
        return f"FAIL  statement write and read: reading back raises {type(e).__name__}: {e}"
    recs = list(st.records)
    want = (SAMPLE_RECORD["serial"], SAMPLE_DATE, SAMPLE_RECORD["customer_no"],
            SAMPLE_RECORD["amount"])
    if len(recs) != 1 or (recs[0].serial, recs[0].trade_date, recs[0].customer_no,
                          recs[0].amount) != want:
        return f"FAIL  statement write and read: wrote {want}, read back {recs}"
    text = f"ok    statement write and read: one record, {len(data)} bytes"
    if not isinstance(fmt, ReaderFormat):
        problem = _other_date(fmt, data)
        if problem:
            return problem
        text += "; another date's file refused"
    if fmt.has_header:
        problem = _misstated(fmt)
        if problem:
            return problem
        text += "; misstated totals read as declared"
    return text


def _other_date(fmt, data: bytes) -> str | None:
    """A FAIL line unless reading the sample for another settle date is refused."""
    other = SAMPLE_DATE.replace(day=SAMPLE_DATE.day + 1)
    try:
        fmt.read(data, SAMPLE_BANK, other)
    except StatementError:
        return None
    except Exception as e:  # noqa: BLE001 - report whatever the plugin raises
        return (f"FAIL  statement read: another date's file raises {type(e).__name__}: {e}"
                " (a StatementError naming the line is expected)")
    return (f"FAIL  statement read: the file for {SAMPLE_DATE} was read as {other}'s"
            " (read must check the settle date)")


def _misstated(fmt) -> str | None:
    """A FAIL line unless totals written misstated read back as declared."""
    declared = (2, SAMPLE_RECORD["amount"] + 1)
    try:
        st = fmt.read(fmt.write(SAMPLE_BANK, SAMPLE_DATE, [dict(SAMPLE_RECORD)], declared),
                      SAMPLE_BANK, SAMPLE_DATE)
    except Exception as e:  # noqa: BLE001 - report whatever the plugin raises
        return (f"FAIL  statement totals: a file whose totals differ raises"
                f" {type(e).__name__}: {e} (read returns them as declared_count and"
                " declared_total; reconciliation reports TOTALS_DIFFER)")
    if (st.declared_count, st.declared_total) != declared or not st.totals_differ:
        return (f"FAIL  statement totals: wrote {declared} as the totals, read back"
                f" {(st.declared_count, st.declared_total)}")
    return None


def _try(what: str, text) -> str:
    try:
        return f"ok    {what}: {text()}"
    except Exception as e:  # noqa: BLE001 - report whatever the plugin raises
        return f"FAIL  {what}: {type(e).__name__}: {e}"


def check_plugin_file(path: str | Path) -> list[str]:
    try:
        module = load_file(Path(path))
    except PluginError as e:
        return [f"FAIL  {e}"]
    codec = getattr(module, "CODEC", None)
    if codec is None:
        return [f"FAIL  {path}: no module-level CODEC"]
    return check_codec(codec)
