"""What a codec may offer besides the :class:`bankgate.codec.base.Codec` itself.

Every bank message spec has the online messages; some also have files and
more.  Each such *capability* is declared by the plugin, on its ``CODEC``,
and described here as a :class:`typing.Protocol`, so the core asks for a
capability instead of testing a plugin's name or its attribute names:

============================  ===============================  ==========================
capability                    on ``CODEC``                     the core asks with
============================  ===============================  ==========================
:class:`StatementFormat`      ``statement_format`` (an object) :func:`statement_format`
  its :class:`StatementErrorFile`  (the same object)          :func:`statement_error_file`
:class:`BatchFiles`           ``pk_name`` ... ``read_pkjg``    :func:`batch_files`
:class:`DebitClient`          ``encode_debit`` ...             :func:`debit_client`
:class:`SimulatorTraits`      ``simulator_traits``             :func:`simulator_traits`
:class:`KeyKind` (a tuple)    ``key_kinds``                    :func:`key_kinds`
:class:`OptionSpec` (a tuple) ``option_specs``,                :func:`option_specs`,
                              ``validate_options`` (optional)  :func:`option_problems`
defaults for its banks        ``bank_defaults`` (a dict)       :func:`bank_defaults`
============================  ===============================  ==========================

A plugin without ``statement_format`` but with ``statement_name`` and
``read_statement`` (:class:`StatementReader`) still gets a statement format:
:class:`bankgate.codec.statement.ReaderFormat` reads its files whole.
``bankgate plugins check`` (:mod:`bankgate.codec.check`) lists what a plugin
declares.  The reference plugins' declarations implement
``docs/specs/ref-fixed.rst`` §8, ``docs/specs/ref-delim.rst`` §5-§7 and
``docs/specs/ref-iso8583.rst`` §4, §6.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any, Protocol, runtime_checkable

from bankgate.codec.statement import CHUNK, ReaderFormat, Statement


class CapabilityError(TypeError):
    """A plugin declares a capability in a shape the gateway cannot use."""


# -- the statement file (reconciliation) ------------------------------------------------


@runtime_checkable
class StatementFormat(Protocol):
    """A bank's statement file (对账文件), read for the reconciler and written
    for the simulator and the tests.

    ``has_header``: the file declares its record count and total (a header or
    a trailer line), which :meth:`write` can be told to misstate.
    ``names_bills``: a record lists the bills it paid (``bill_ids``), so a
    payment the bank alone has pays one named bill rather than all that is due.
    """

    has_header: bool
    names_bills: bool

    def file_name(self, bank_code: str, d: date) -> str:
        """The statement's file name for this bank and settle date."""
        ...

    def read(self, data: bytes, bank_code: str, d: date, chunk: int = CHUNK) -> Statement:
        """The whole file, checked: right bank, right settle date, every line
        well formed.  Large files may be read ``chunk`` lines at a time.
        Raises :class:`bankgate.codec.statement.StatementError` naming the
        line of the file."""
        ...

    def write(self, bank_code: str, d: date, records: list[dict],
              declared: tuple[int, int] | None = None) -> bytes:
        """The file the bank would send for ``records`` (dicts with ``serial``,
        ``trade_date``, ``trade_time``, ``customer_no``, ``amount`` in fen,
        ``channel``, ``bill_ids``, and whatever else the journal knows:
        ``pan_masked``, ``terminal_id``).  ``declared``: ``(count, total)`` to
        state in the header instead of the true ones (a file whose totals
        differ); a format without a header raises ``ValueError`` for it."""
        ...


@runtime_checkable
class StatementErrorFile(Protocol):
    """A statement format that answers the bank with an error file (the
    reconciliation's discrepancies, e.g. ``ref-delim`` ``.DZCW``)."""

    def error_file(self, bank_code: str, d: date, items: Iterable[Any]) -> tuple[str, bytes]:
        """``(file name, bytes)`` for a run's items: each has ``category``
        (one of :data:`bankgate.codec.statement.CATEGORIES`) and ``serial``;
        the format picks the categories its bank wants to hear about."""
        ...


@runtime_checkable
class StatementReader(Protocol):
    """The least a plugin needs to be reconciled: a file name and a reader
    returning record dicts (alone, or with a header dict in a pair)."""

    def statement_name(self, bank_code: str, d: date) -> str: ...

    def read_statement(self, data: bytes) -> Any: ...


# -- batch withholding files ----------------------------------------------------------


@runtime_checkable
class BatchFiles(Protocol):
    """Batch withholding (批量代扣) by files: the gateway writes a ``.PK`` file
    of bills to debit, the bank answers with a ``.PKJG`` of results
    (``docs/specs/ref-delim.rst`` §6)."""

    def pk_name(self, bank_code: str, d: date, seq: int) -> str:
        """The request file's name for deduct date ``d``, sequence 0-99."""
        ...

    def pkjg_name(self, pk_file_name: str) -> str:
        """The name of the bank's answer to the request file ``pk_file_name``."""
        ...

    def write_pk(self, deduct_date: date, records: Iterable[Mapping],
                 generated_at: datetime) -> bytes:
        """The request file: one record per bill (``bill_id``, ``customer_no``,
        ``name``, ``account_no``, ``period``, ``amount``, ``late_fee``)."""
        ...

    def read_pkjg(self, data: bytes) -> tuple[list[dict], dict]:
        """The answer file: ``(records, trailer)``; ``ValueError`` names the line."""
        ...


# -- real-time debit, the gateway as client -------------------------------------------------


@runtime_checkable
class DebitClient(Protocol):
    """Real-time card debit (实时代扣) where the gateway is the client of the
    bank's host: a debit and its store-and-forward reversal
    (``docs/specs/ref-delim.rst`` §7).  Frames are without their length prefix."""

    def encode_debit(self, *, utility_code: str, trade_date: date,
                     trade_time: time | datetime | str, utility_serial: str,
                     customer_no: str, account_no: str, name: str, amount: int,
                     bill_ids: Iterable[str] | str) -> bytes: ...

    def decode_debit_response(self, frame: bytes) -> dict:
        """``code``, ``msg``, ``utility_serial``, ``bank_serial``, ``amount`` and
        ``debited``; ``ValueError`` when unreadable (the outcome is unknown)."""
        ...

    def encode_debit_reversal(self, *, utility_code: str, trade_date: date,
                              trade_time: time | datetime | str, utility_serial: str,
                              orig_utility_serial: str, amount: int) -> bytes: ...

    def decode_debit_reversal_response(self, frame: bytes) -> dict:
        """``code``, ``msg``, ``orig_utility_serial`` and ``done`` (stop resending)."""
        ...


# -- the bank side, for the simulator -----------------------------------------------------


@dataclass(frozen=True)
class SimulatorTraits:
    """Bank-side facts the simulator (``bankgate simulate``) needs and the
    codec's messages do not state.

    ``ops`` maps the simulator's operations (``query``, ``pay``, ``reverse``,
    ``status``, ``signin``, ``echo``, ``cutoff``, ``notice``, ...) onto the
    codec's ``client_encode`` transaction names.  ``serial_length``: the
    characters of a bank serial.  ``rrn``: the serial is ISO 8583 field 37
    (``rrn`` value, an12) and a reversal names its original by that field.
    ``signin``: the transaction to send first on every new connection.
    ``pay_names_bills``: a payment lists the bills it pays.  ``two_phase``:
    a payment is a prepay then a confirm (``simulate pay`` sends both; ``ops``
    maps ``prepay``, ``confirm`` and ``cancel``).
    """

    ops: Mapping[str, str]
    serial_length: int = 20
    rrn: bool = False
    signin: str | None = None
    pay_names_bills: bool = False
    two_phase: bool = False


# -- keys -------------------------------------------------------------------------------

ALWAYS = "always"  # every bank of the plugin needs the key
WITH_MAC = "mac"  # only a bank configured with ``mac = true``

#: the key algorithms a plugin may declare, with the key lengths (bytes) each takes
#: and the largest check value (bytes): ``secret`` (an HMAC secret) has none
KEY_ALGORITHMS = {"3des": ((16, 24), 8), "sm4": ((16,), 16), "secret": ((), 0)}
SECRET_LENGTHS = (16, 128)  # a secret's length when the plugin does not state one


@dataclass(frozen=True)
class KeyKind:
    """A key the plugin's banks are configured with.

    ``name``: the key's configuration entry (``mac_key``), in the bank's
    ``[bank.keys]`` table (``mac_key`` and ``zmk`` also directly in
    ``[[bank]]``); its check value is the entry ``name + "_kcv"``.

    ``algorithm`` decides the length rule and the check value:

    - ``"3des"``: a double- (16 bytes, the default) or triple-length (24)
      3DES key; check value: 3DES-ECB of 8 zero bytes;
    - ``"sm4"``: a 16-byte SM4 key; check value: SM4-ECB of 16 zero bytes;
    - ``"secret"``: an HMAC (or other) secret of any length -- 16 to 128
      bytes unless ``length`` states one; no check value.

    ``length``: bytes (``None``: the algorithm's default).  ``check_length``:
    bytes of the check value the configuration states (``None``: 3; 0 for a
    secret).  ``required``: :data:`ALWAYS` or :data:`WITH_MAC`.
    ``description``: one line for ``bankgate config check`` and ``plugins
    check`` (what the key secures).  ``why``: the reason a bank without the
    key is refused (default: the ``required`` rule).

    The codec reads the key as ``session.bank.keys[name]`` (or ``.name``).
    """

    name: str
    algorithm: str = "3des"
    length: int | None = None
    check_length: int | None = None
    required: str = WITH_MAC
    description: str = ""
    why: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,30}", self.name) or self.name.endswith("_kcv"):
            raise CapabilityError(f"key name {self.name!r}: lower-case letters, digits and"
                                  " '_', not ending in '_kcv'")
        if self.algorithm not in KEY_ALGORITHMS:
            raise CapabilityError(f"key {self.name}: algorithm {self.algorithm!r} is not one of"
                                  f" {', '.join(KEY_ALGORITHMS)}")
        lengths, max_check = KEY_ALGORITHMS[self.algorithm]
        if self.algorithm == "secret":
            if self.length is not None and (isinstance(self.length, bool)
                                            or not 1 <= self.length <= 1024):
                raise CapabilityError(f"key {self.name}: a secret of {self.length} bytes"
                                      " (1-1024)")
            if self.check_length:
                raise CapabilityError(f"key {self.name}: a secret has no check value"
                                      " (leave check_length out)")
            object.__setattr__(self, "check_length", 0)
        else:
            length = lengths[0] if self.length is None else self.length
            if length not in lengths:
                what = "a 3DES" if self.algorithm == "3des" else "an SM4"
                raise CapabilityError(f"key {self.name}: {length} bytes is not {what} key"
                                      f" length ({', '.join(map(str, lengths))})")
            n = 3 if self.check_length is None else self.check_length
            if isinstance(n, bool) or not 1 <= n <= max_check:
                raise CapabilityError(f"key {self.name}: check value of {n} bytes"
                                      f" (1-{max_check})")
            object.__setattr__(self, "length", length)
            object.__setattr__(self, "check_length", n)
        if self.required not in (ALWAYS, WITH_MAC):
            raise CapabilityError(f"key {self.name}: required is {ALWAYS!r} or {WITH_MAC!r},"
                                  f" not {self.required!r}")

    @property
    def check_name(self) -> str:
        """The configuration entry of the key's check value."""
        return f"{self.name}_kcv"

    @property
    def has_check(self) -> bool:
        """Whether the configuration states a check value for the key."""
        return bool(self.check_length)

    @property
    def lengths(self) -> tuple[int, int]:
        """The smallest and largest key length (bytes) accepted."""
        if self.length is None:
            return SECRET_LENGTHS
        return (self.length, self.length)

    def needed(self, mac: bool) -> bool:
        """Whether a bank with ``mac`` on or off must have this key."""
        return self.required == ALWAYS or mac

    @property
    def missing(self) -> str:
        """The configuration error for a bank that needs the key and lacks it."""
        why = self.why or ("required when mac = true" if self.required == WITH_MAC
                           else "required by the bank's plugin")
        return f"missing; {why}"

    def length_problem(self, key: bytes) -> str | None:
        """What is wrong with the length of ``key`` (never its value), or ``None``."""
        low, high = self.lengths
        if low <= len(key) <= high:
            return None
        if low == high:
            return (f"expected {self._what} of {low} bytes ({2 * low} hex digits),"
                    f" got {len(key)} bytes")
        return f"expected {self._what} of {low} to {high} bytes, got {len(key)} bytes"

    @property
    def _what(self) -> str:
        return {"3des": "a 3DES key", "sm4": "an SM4 key", "secret": "a secret"}[self.algorithm]

    def summary(self) -> str:
        """One line for ``bankgate plugins check``."""
        when = "always required" if self.required == ALWAYS else "required when mac = true"
        low, high = self.lengths
        size = f"{low} bytes" if low == high else f"{low}-{high} bytes"
        check = (f"{self.check_length}-byte check value {self.check_name}" if self.has_check
                 else "no check value")
        text = f"{self.name}: {self._what} of {size}, {check}, {when}"
        return text + (f" ({self.description})" if self.description else "")


# -- plugin options ([bank.options]) -------------------------------------------------------

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "a list", dict: "a table"}


@dataclass(frozen=True)
class OptionSpec:
    """One ``[bank.options]`` key the plugin reads.

    ``type``: ``str``, ``int``, ``float`` (an integer is accepted), ``bool``,
    ``list`` or ``dict``.  ``default``: the value a bank that does not state
    the option gets (``None``: absent).  ``description``: one line for
    ``bankgate plugins check`` and the docs.  ``choices``: the values allowed
    (``None``: any of the type).  ``minimum`` / ``maximum``: bounds of a
    number.  A plugin's ``validate_options(options)`` hook checks what the
    declaration cannot say (one option against another).
    """

    name: str
    type: type = str
    default: Any = None
    description: str = ""
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,40}", self.name):
            raise CapabilityError(f"option name {self.name!r}: lower-case letters, digits"
                                  " and '_'")
        if self.type not in _TYPE_NAMES:
            raise CapabilityError(f"option {self.name}: type {self.type!r} is not one of"
                                  " str, int, float, bool, list, dict")
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
            for c in self.choices:
                if self.problem(c, check_choices=False):
                    raise CapabilityError(f"option {self.name}: choice {c!r} is not"
                                          f" {self.type_name}")
        if self.default is not None and self.problem(self.default):
            raise CapabilityError(f"option {self.name}: default {self.default!r}:"
                                  f" {self.problem(self.default)}")

    @property
    def type_name(self) -> str:
        return _TYPE_NAMES[self.type]

    def problem(self, value: Any, check_choices: bool = True) -> str | None:
        """What is wrong with ``value`` for this option, or ``None``."""
        t = self.type
        ok = (isinstance(value, bool) if t is bool
              else not isinstance(value, bool) and isinstance(value, (int, float) if t is float
                                                              else t))
        if not ok:
            return f"expected {self.type_name}, got {value!r}"
        if check_choices and self.choices is not None and value not in self.choices:
            return f"expected one of {', '.join(map(repr, self.choices))}, got {value!r}"
        if self.minimum is not None and value < self.minimum:
            return f"expected at least {self.minimum:g}, got {value!r}"
        if self.maximum is not None and value > self.maximum:
            return f"expected at most {self.maximum:g}, got {value!r}"
        return None

    def summary(self) -> str:
        """One line for ``bankgate plugins check``."""
        text = f"{self.name}: {self.type_name}"
        if self.choices is not None:
            text += f", one of {', '.join(map(repr, self.choices))}"
        if self.minimum is not None or self.maximum is not None:
            low = "" if self.minimum is None else f"{self.minimum:g}"
            high = "" if self.maximum is None else f"{self.maximum:g}"
            text += f", {low}..{high}"
        text += ", no default" if self.default is None else f", default {self.default!r}"
        return text + (f" -- {self.description}" if self.description else "")


# -- a plugin's defaults for its banks ----------------------------------------------------------

#: the ``[[bank]]`` entries a plugin's ``bank_defaults`` may set, with their types
BANK_DEFAULT_TYPES = {"two_phase": (bool,), "confirm_timeout": (int, float),
                      "latest_only_reversal": (bool,), "idle_timeout": (int, float)}


# -- what the core calls ---------------------------------------------------------------------


def statement_format(codec: Any) -> StatementFormat | None:
    """The codec's statement format: the one it declares, else a
    :class:`~bankgate.codec.statement.ReaderFormat` over its reader, else
    ``None`` (its banks cannot be reconciled)."""
    fmt = getattr(codec, "statement_format", None)
    if fmt is not None:
        if not isinstance(fmt, StatementFormat):
            raise CapabilityError(f"{_name(codec)}: statement_format is not a StatementFormat"
                                  " (has_header, names_bills, file_name, read, write)")
        return fmt
    if isinstance(codec, StatementReader):
        return ReaderFormat(codec)
    return None


def statement_error_file(fmt: Any) -> StatementErrorFile | None:
    """The error file of a statement format, where it has one."""
    return fmt if isinstance(fmt, StatementErrorFile) else None


def batch_files(codec: Any) -> BatchFiles | None:
    """The codec as :class:`BatchFiles`, or ``None`` (no withholding files)."""
    return codec if isinstance(codec, BatchFiles) else None


def debit_client(codec: Any) -> DebitClient | None:
    """The codec as :class:`DebitClient`, or ``None`` (no real-time debit)."""
    return codec if isinstance(codec, DebitClient) else None


def simulator_traits(codec: Any) -> SimulatorTraits | None:
    """The simulator traits the codec declares, or ``None`` (the simulator guesses)."""
    traits = getattr(codec, "simulator_traits", None)
    if traits is not None and not isinstance(traits, SimulatorTraits):
        raise CapabilityError(f"{_name(codec)}: simulator_traits is not a SimulatorTraits")
    return traits


def key_kinds(codec: Any) -> tuple[KeyKind, ...]:
    """The keys the codec's banks are configured with (none declared: none)."""
    kinds = tuple(getattr(codec, "key_kinds", None) or ())
    bad = [k for k in kinds if not isinstance(k, KeyKind)]
    if bad:
        raise CapabilityError(f"{_name(codec)}: key_kinds holds {bad[0]!r}, not a KeyKind")
    names = [k.name for k in kinds]
    if len(set(names)) != len(names):
        raise CapabilityError(f"{_name(codec)}: key_kinds names a key twice")
    return kinds


def option_specs(codec: Any) -> tuple[OptionSpec, ...]:
    """The ``[bank.options]`` keys the codec declares it reads (none: none)."""
    if getattr(codec, "option_keys", None):  # the undocumented attribute before OptionSpec
        raise CapabilityError(f"{_name(codec)}: option_keys is no longer read; declare"
                              " option_specs = (OptionSpec(name, type, default,"
                              " description), ...)")
    specs = tuple(getattr(codec, "option_specs", None) or ())
    bad = [o for o in specs if not isinstance(o, OptionSpec)]
    if bad:
        raise CapabilityError(f"{_name(codec)}: option_specs holds {bad[0]!r}, not an OptionSpec")
    names = [o.name for o in specs]
    if len(set(names)) != len(names):
        raise CapabilityError(f"{_name(codec)}: option_specs names an option twice")
    hook = getattr(codec, "validate_options", None)
    if hook is not None and not callable(hook):
        raise CapabilityError(f"{_name(codec)}: validate_options is not callable")
    return specs


def option_problems(codec: Any, options: Mapping[str, Any]) -> list[str]:
    """The codec's ``validate_options(options)`` problems (each ``"key: problem"``),
    ``[]`` when it has no hook.  A hook that raises is itself the problem."""
    hook = getattr(codec, "validate_options", None)
    if hook is None:
        return []
    try:
        problems = hook(dict(options))
    except Exception as e:  # noqa: BLE001 - a plugin's bug must not become a traceback
        return [f"validate_options raised {type(e).__name__}: {e}"]
    if problems is None:
        return []
    if isinstance(problems, str):
        return [problems]
    return [str(p) for p in problems]


def bank_defaults(codec: Any) -> dict[str, Any]:
    """The ``[[bank]]`` values the codec declares for banks that do not state
    them (``bank_defaults = {"two_phase": True, "confirm_timeout": 600}``)."""
    declared = getattr(codec, "bank_defaults", None) or {}
    if not isinstance(declared, Mapping):
        raise CapabilityError(f"{_name(codec)}: bank_defaults is not a dict")
    out = {}
    for k, v in declared.items():
        types = BANK_DEFAULT_TYPES.get(k)
        if types is None:
            raise CapabilityError(f"{_name(codec)}: bank_defaults names {k!r}; a plugin may"
                                  f" set {', '.join(BANK_DEFAULT_TYPES)}")
        if (isinstance(v, bool) and bool not in types) or not isinstance(v, types):
            raise CapabilityError(f"{_name(codec)}: bank_defaults[{k!r}] = {v!r} is not"
                                  f" {'true or false' if bool in types else 'a number'}")
        if k in ("confirm_timeout", "idle_timeout") and not 1 <= v <= 7 * 86400:
            raise CapabilityError(f"{_name(codec)}: bank_defaults[{k!r}] = {v!r}: expected"
                                  " seconds between 1 and 604800")
        out[k] = float(v) if k.endswith("_timeout") else v
    return out


def _name(codec: Any) -> str:
    return f"plugin {getattr(codec, 'name', type(codec).__name__)!r}"


__all__ = [
    "ALWAYS", "BANK_DEFAULT_TYPES", "KEY_ALGORITHMS", "WITH_MAC", "BatchFiles",
    "CapabilityError", "DebitClient", "KeyKind", "OptionSpec", "SimulatorTraits",
    "StatementErrorFile", "StatementFormat", "StatementReader", "bank_defaults", "batch_files",
    "debit_client", "key_kinds", "option_problems", "option_specs", "simulator_traits",
    "statement_error_file", "statement_format",
]
