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
    ``pay_names_bills``: a payment lists the bills it pays.
    """

    ops: Mapping[str, str]
    serial_length: int = 20
    rrn: bool = False
    signin: str | None = None
    pay_names_bills: bool = False


# -- keys -------------------------------------------------------------------------------

ALWAYS = "always"  # every bank of the plugin needs the key
WITH_MAC = "mac"  # only a bank configured with ``mac = true``


@dataclass(frozen=True)
class KeyKind:
    """A key the plugin's banks are configured with.

    ``name``: the entry of the ``[[bank]]`` table holding it (``mac_key``);
    its check value is the entry ``name + "_kcv"``.  ``length``: bytes
    (16: a double-length 3DES key).  ``check_length``: bytes of the check
    value (KCV, 3DES of zeros) the configuration states.  ``required``:
    :data:`ALWAYS` or :data:`WITH_MAC`.  ``description``: one line for
    ``bankgate config check`` (what the key secures).  ``why``: the reason a
    bank without the key is refused (default: the ``required`` rule).

    The codec reads the key as ``session.bank.keys[name]`` (or ``.name``).
    """

    name: str
    length: int = 16
    check_length: int = 3
    required: str = WITH_MAC
    description: str = ""
    why: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,30}", self.name) or self.name.endswith("_kcv"):
            raise CapabilityError(f"key name {self.name!r}: lower-case letters, digits and"
                                  " '_', not ending in '_kcv'")
        if self.length not in (8, 16, 24):
            raise CapabilityError(f"key {self.name}: {self.length} bytes is not a DES key length"
                                  " (8, 16, 24)")
        if not 1 <= self.check_length <= 8:
            raise CapabilityError(f"key {self.name}: check value of {self.check_length} bytes"
                                  " (1-8)")
        if self.required not in (ALWAYS, WITH_MAC):
            raise CapabilityError(f"key {self.name}: required is {ALWAYS!r} or {WITH_MAC!r},"
                                  f" not {self.required!r}")

    @property
    def check_name(self) -> str:
        """The configuration entry of the key's check value."""
        return f"{self.name}_kcv"

    def needed(self, mac: bool) -> bool:
        """Whether a bank with ``mac`` on or off must have this key."""
        return self.required == ALWAYS or mac

    @property
    def missing(self) -> str:
        """The configuration error for a bank that needs the key and lacks it."""
        why = self.why or ("required when mac = true" if self.required == WITH_MAC
                           else "required by the bank's plugin")
        return f"missing; {why}"

    def summary(self) -> str:
        """One line for ``bankgate plugins check``."""
        when = "always required" if self.required == ALWAYS else "required when mac = true"
        text = (f"{self.name}: {self.length} bytes, {self.check_length}-byte check value"
                f" {self.check_name}, {when}")
        return text + (f" ({self.description})" if self.description else "")


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


def _name(codec: Any) -> str:
    return f"plugin {getattr(codec, 'name', type(codec).__name__)!r}"


__all__ = [
    "ALWAYS", "WITH_MAC", "BatchFiles", "CapabilityError", "DebitClient", "KeyKind",
    "SimulatorTraits", "StatementErrorFile", "StatementFormat", "StatementReader",
    "batch_files", "debit_client", "key_kinds", "simulator_traits", "statement_error_file",
    "statement_format",
]
