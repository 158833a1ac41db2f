"""Bank statements (对账文件): the contract a plugin's statement format keeps,
and the machinery it is built from.

The contract
============

A bank plugin that can be reconciled declares ``CODEC.statement_format``, an
object with the members of :class:`bankgate.codec.capabilities.StatementFormat`.
Everything that touches a statement goes through it and through nothing else:
the nightly reconciliation and ``bankgate reconcile`` (:meth:`read`),
``bankgate statement write`` and ``bankgate simulate ... statement``
(:meth:`write`, from the gateway's own journal), ``bankgate plugins check``
(a one-record ``write`` then ``read``) and the error file back to the bank.
``docs/reconciliation.rst`` ("The statement contract for a plugin") is the
same contract for bank IT.

``has_header``
    The file states its record count and total amount (a header or a trailer
    line).  :meth:`write` can then be told to misstate them (a
    ``TOTALS_DIFFER`` file for tests).
``names_bills``
    A record lists the bills it paid (``bill_ids``): a payment the bank alone
    has is posted against those bills, not against everything due.
``file_name(bank_code, d) -> str``
    The file's exact name for a bank code and settle date: what the statement
    source fetches and what a statement notice must name.
``read(data, bank_code, d, chunk=CHUNK) -> Statement``
    ``data`` is the whole file as fetched.  It must check, and refuse with a
    :class:`StatementError` whose text names the line of the *whole file*
    (``"line 1234: amount 'x' is not a number"``):

    - that the file is this bank's (where it names a bank) and this settle
      date's (where it names one; a record naming another settle date too):
      :func:`check_head`;
    - that every line is well formed, in the file's encoding.

    It must *not* refuse a file because the header's or trailer's count or
    total disagrees with the details: it returns them as
    ``Statement.declared_count`` / ``declared_total`` (``None`` where the
    format has no totals) and the reconciliation reports ``TOTALS_DIFFER``.
    Nor does it look for a serial listed twice, sort, or touch the database:
    the reconciliation does that.  It returns a :class:`Statement` for
    settle date ``d`` whose :class:`Records` hold per detail line the bank's
    serial of the payment (for a two-phase payment: the prepay's), its own
    trade date (another day than ``d`` is a ``DATE_DIFFERS`` case, not an
    error), customer number, amount in fen, channel, ``HHMMSS`` trade time
    and, with ``names_bills``, the bill ids.  Anything else it raises is a
    bug of the plugin; the reconciliation treats a ``ValueError`` as a
    refused file.

    Large files (a million records) are read ``chunk`` lines at a time: read
    the header with :func:`first_line`, cut the rest with :func:`blocks`,
    parse each block with the plugin's own line reader, add its records to
    the compact columns (:meth:`Records.extend`, :func:`add_record`; about
    200 bytes a record) and move a block's line number to the file's with
    :func:`renumber`.  Never build the whole file's records as dicts.
``write(bank_code, d, records, declared=None) -> bytes``
    The file the bank would send.  ``records`` are dicts in serial order,
    one per payment the gateway holds as standing for that bank and date:
    ``serial``, ``trade_date``, ``trade_time`` (``HHMMSS``), ``customer_no``,
    ``amount`` (fen), ``channel``, ``bill_ids`` (a tuple), ``receipt_no`` (the
    gateway's receipt number: a two-phase payment's order number),
    ``status`` (``POSTED`` or ``PENDING``), ``pan_masked`` and
    ``terminal_id``; a format uses what its file has and ignores the rest.
    ``declared``: ``(count, total)`` to state instead of the true totals; a
    format without totals raises ``ValueError`` for it.  What :meth:`write`
    writes, :meth:`read` must read back to the same serial, trade date,
    customer and amount.  A format that cannot write raises
    ``NotImplementedError``: the commands that write then say so in one line
    (:class:`NoWriter`).
``error_file(bank_code, d, items) -> (name, bytes)`` (optional)
    The error file back to the bank
    (:class:`bankgate.codec.capabilities.StatementErrorFile`): ``items`` are the
    run's items, each with ``category`` (one of :data:`CATEGORIES`) and
    ``serial``; the format picks the categories its bank wants.

A plugin that declares no ``statement_format`` but has ``statement_name(bank_code,
d)`` and ``read_statement(data)`` -- and, to be written, ``write_statement(bank_code,
d, records)`` -- gets :class:`ReaderFormat`: the whole file to its reader at once,
no totals, no error file.

What is here
============

- the normalised statement: :class:`Statement` over compact columns
  (:class:`Records`, one :class:`StatementRecord` per detail line), and
  :class:`StatementError` naming the line of an unusable file;
- the reconciliation categories an error file reports back to the bank
  (:data:`BANK_ONLY`, :data:`AMOUNT_DIFFERS`, ...);
- helpers for reading a large file in chunks with the plugin's own reader
  and still naming the line of the whole file (:func:`first_line`,
  :func:`blocks`, :func:`renumber`), checking a header (:func:`check_head`),
  adding a reader's record dict (:func:`add_record`) and finding a field in
  a fixed-width layout (:func:`field_slice`);
- :class:`ReaderFormat`, the format of a plugin with only the reader
  functions, and :func:`can_write`.

The reference plugins keep only their spec's rules on top of this
(``docs/specs/ref-fixed.rst`` §8, ``docs/specs/ref-delim.rst`` §5,
``docs/specs/ref-iso8583.rst`` §6).  Standard library only (and the plugin's
own layouts): nothing here knows a bank or a database.
"""

from __future__ import annotations

import inspect
import re
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, NamedTuple

# -- the reconciliation categories (what an error file reports) ----------------------

MATCHED = "MATCHED"
BANK_ONLY = "BANK_ONLY"  # 单边账: the bank has it, the utility does not
UTILITY_ONLY = "UTILITY_ONLY"  # the utility has it, the bank does not
AMOUNT_DIFFERS = "AMOUNT_DIFFERS"  # amount or customer
DATE_DIFFERS = "DATE_DIFFERS"  # the record's trade date is not the settle date
TOTALS_DIFFER = "TOTALS_DIFFER"  # the header's count/total disagree with the details
CATEGORIES = (MATCHED, BANK_ONLY, UTILITY_ONLY, AMOUNT_DIFFERS, DATE_DIFFERS, TOTALS_DIFFER)

CHUNK = 50_000  # statement lines handed to the plugin's reader at once


class StatementError(ValueError):
    """The statement file cannot be used (malformed, wrong bank or date)."""


class NoWriter(StatementError):
    """The plugin's statement format cannot write files (it only reads them)."""


# -- the statement, normalised --------------------------------------------------------


class StatementRecord(NamedTuple):
    serial: str
    trade_date: date
    customer_no: str
    amount: int
    channel: str = "01"
    trade_time: str = "000000"
    bill_ids: tuple[str, ...] = ()


class Records:
    """Statement records in columns: a million of them fit in ~200 MB."""

    __slots__ = ("serials", "customers", "amounts", "dates", "times", "channels", "bill_ids",
                 "_intern")

    def __init__(self):
        self.serials: list[str] = []
        self.customers: list[str] = []
        self.amounts = array("q")
        self.dates = array("l")  # proleptic ordinals
        self.times: list[str] = []
        self.channels: list[str] = []
        self.bill_ids: list[tuple] = []
        self._intern: dict = {}

    def _i(self, v):
        return self._intern.setdefault(v, v)

    def add(self, serial: str, trade_date: date, customer_no: str, amount: int,
            channel: str = "01", trade_time: str = "000000", bill_ids: tuple = ()) -> None:
        self.serials.append(serial)
        self.customers.append(customer_no)
        self.amounts.append(amount)
        self.dates.append(trade_date.toordinal())
        self.times.append(self._i(trade_time or "000000"))
        self.channels.append(self._i(channel or "01"))
        self.bill_ids.append(self._i(tuple(bill_ids)) if bill_ids else ())

    def extend(self, recs: list[dict], time_of=None) -> None:
        """Append the plugin reader's record dicts (``serial``, ``trade_date``,
        ``customer_no``, ``amount``, ``channel``, ``trade_time``/``time_of(r)``,
        ``bill_ids``)."""
        intern = self._intern.setdefault
        sa, ca, aa, da = (self.serials.append, self.customers.append, self.amounts.append,
                          self.dates.append)
        ta, cha, ba = self.times.append, self.channels.append, self.bill_ids.append
        for r in recs:
            sa(r["serial"])
            ca(r["customer_no"])
            aa(r["amount"])
            da(r["trade_date"].toordinal())
            t = time_of(r) if time_of is not None else r["trade_time"]
            ta(intern(t, t))
            ch = r.get("channel") or "01"
            cha(intern(ch, ch))
            b = r.get("bill_ids")
            ba(intern(b, b) if b else ())

    def __len__(self) -> int:
        return len(self.serials)

    def record(self, i: int) -> StatementRecord:
        return StatementRecord(self.serials[i], date.fromordinal(self.dates[i]),
                               self.customers[i], self.amounts[i], self.channels[i],
                               self.times[i], self.bill_ids[i])

    def __iter__(self) -> Iterator[StatementRecord]:
        return (self.record(i) for i in range(len(self)))

    def total(self) -> int:
        return sum(self.amounts)


@dataclass
class Statement:
    settle_date: date
    records: Records
    bank_code: str | None = None
    declared_count: int | None = None  # the header's / trailer's, where the format has one
    declared_total: int | None = None

    @property
    def count(self) -> int:
        return len(self.records)

    @property
    def total(self) -> int:
        return self.records.total()

    @property
    def totals_differ(self) -> bool:
        return self.declared_count is not None and (
            self.declared_count != self.count or self.declared_total != self.total)


# -- reading in chunks ---------------------------------------------------------------


def first_line(data: bytes) -> tuple[bytes, int]:
    """The first line (without CR LF) and where the rest begins."""
    end = data.find(b"\n")
    if end < 0:
        end = len(data)
    line = data[:end]
    return (line[:-1] if line.endswith(b"\r") else line), end + 1


def blocks(data: bytes, start: int, end: int, size: int) -> Iterator[tuple[int, bytes]]:
    """``(lines before it, block)``: ``data[start:end]`` cut after every
    ``size``-th line end (searching in C, copying each block once)."""
    find = data.find
    pos, done = start, 0
    while pos < end:
        p = pos
        n = 0
        while n < size:
            nl = find(b"\n", p, end)
            if nl < 0:
                p = end
                n += 1
                break
            p = nl + 1
            n += 1
        yield done, data[pos:p]
        done += n
        pos = p


_LINE = re.compile(r"line (\d+)")


def renumber(e: Exception, shift: int) -> str:
    """The reader's error with its line number moved from the chunk to the file."""
    return _LINE.sub(lambda mt: f"line {int(mt.group(1)) + shift}", str(e), count=1)


def check_head(settle: date | None, d: date, code: str | None, bank_code: str,
               line: int) -> None:
    """A header (or trailer) names this settle date and this bank, where it names them."""
    if settle is not None and settle != d:
        raise StatementError(f"line {line}: the statement is for settle date {settle:%Y-%m-%d},"
                             f" not {d:%Y-%m-%d}")
    if code is not None and code.strip() != bank_code:
        raise StatementError(f"line {line}: the statement is bank {code.strip()!r}'s,"
                             f" not {bank_code!r}'s")


def add_record(recs: Records, r: dict, d: date) -> None:
    """Add one record dict of any reader's shape (``serial``/``bank_serial``/``rrn``,
    ``trade_date`` or ``trade_datetime``, ...) to ``recs``; a record naming another
    ``settle_date`` than ``d`` is a :class:`StatementError`."""
    serial = r.get("serial") or r.get("bank_serial") or r.get("rrn")
    td = r.get("trade_date")
    when = r.get("trade_datetime")
    if td is None and isinstance(when, datetime):
        td = when.date()
    if isinstance(td, datetime):
        td = td.date()
    ttime = r.get("trade_time")
    if not ttime and isinstance(when, datetime):
        ttime = f"{when:%H%M%S}"
    if "settle_date" in r and r["settle_date"] not in (None, d):
        raise StatementError(f"record {serial}: settle_date {r['settle_date']} is not {d}:"
                             " not this date's statement")
    recs.add(str(serial), td or d, str(r["customer_no"]), int(r["amount"]),
             str(r.get("channel") or "01"), str(ttime or "000000"),
             tuple(r.get("bill_ids") or ()))


def field_slice(layout, name: str) -> slice:
    """Where field ``name`` sits in a line of the fixed-width ``construct`` Struct ``layout``."""
    pos = 0
    for sc in layout.subcons:
        size = sc.sizeof()
        if getattr(sc, "name", None) == name:
            return slice(pos, pos + size)
        pos += size
    raise KeyError(name)


# -- the generic format -----------------------------------------------------------------


def _plugin(codec: Any) -> str:
    return f"plugin {getattr(codec, 'name', type(codec).__name__)!r}"


def _writer_call(writer: Any) -> Callable[[str, date, list], Any]:
    """``write_statement`` called the documented way, ``(bank_code, settle_date,
    records)``; the shorter ``(settle_date, records)`` and ``(records)`` of
    older plugins are taken too (the reference plugins' module functions)."""
    try:
        params = [p for p in inspect.signature(writer).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):  # no signature to see: call it the documented way
        params = [None, None, None]
    n = len(params)
    if n >= 3:
        return lambda code, d, recs: writer(code, d, recs)
    if n == 2:
        return lambda code, d, recs: writer(d, recs)
    if n == 1:
        return lambda code, d, recs: writer(recs)
    raise TypeError("write_statement takes (bank_code, settle_date, records)")


class ReaderFormat:
    """The statement format of a plugin that has only ``statement_name`` and
    ``read_statement`` (:class:`bankgate.codec.capabilities.StatementReader`),
    and maybe ``write_statement``.

    The whole file goes to the plugin's reader at once, whatever its shape:
    a list of records, or ``(header, records)`` / ``(records, header)`` where
    the header dict may hold ``settle_date``, ``bank_code``, ``record_count``
    and ``total_amount``.  It writes with the plugin's ``write_statement``
    (bytes for the records, see the module's contract); without one it
    cannot write (:class:`NoWriter`).
    """

    has_header = False
    names_bills = False

    def __init__(self, codec: Any):
        self.codec = codec

    @property
    def can_write(self) -> bool:
        return callable(getattr(self.codec, "write_statement", None))

    def file_name(self, bank_code: str, d: date) -> str:
        return self.codec.statement_name(bank_code, d)

    def read(self, data: bytes, bank_code: str, d: date, chunk: int = CHUNK) -> Statement:
        """The plugin's reader on the whole file, any of its shapes."""
        try:
            out = self.codec.read_statement(data)
        except ValueError as e:
            raise StatementError(str(e)) from None
        head: dict = {}
        if isinstance(out, tuple) and len(out) == 2:
            a, b = out
            head, recs = (a, b) if isinstance(a, dict) else (b, a)
        else:
            recs = out
        st = Statement(d, Records(), head.get("bank_code"), head.get("record_count"),
                       head.get("total_amount"))
        check_head(head.get("settle_date"), d, head.get("bank_code"), bank_code, 1)
        for r in recs:
            add_record(st.records, r, d)
        return st

    def write(self, bank_code: str, d: date, records: list[dict],
              declared: tuple[int, int] | None = None) -> bytes:
        """The plugin's ``write_statement`` for ``records``; :class:`NoWriter`
        when it has none, ``ValueError`` for ``declared`` (no totals to misstate)."""
        if not self.can_write:
            raise NoWriter(f"{_plugin(self.codec)} cannot write statements: it has"
                           " statement_name and read_statement but no write_statement"
                           " (nor a statement_format)")
        if declared is not None:
            raise ValueError(f"{_plugin(self.codec)}: its statements state no totals to"
                             " misstate")
        data = _writer_call(self.codec.write_statement)(bank_code, d, list(records))
        if not isinstance(data, bytes | bytearray):
            raise StatementError(f"{_plugin(self.codec)}: write_statement returned"
                                 f" {type(data).__name__}, not bytes")
        return bytes(data)


def can_write(fmt: Any) -> bool:
    """Whether a statement format says it can write (a declared format is
    taken at its word until its ``write`` raises ``NotImplementedError``)."""
    return bool(getattr(fmt, "can_write", True))
