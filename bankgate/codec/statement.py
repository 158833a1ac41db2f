"""Bank statements (对账文件) as the reconciler sees them, and the machinery a
plugin's statement format is built from.

A bank plugin declares its statement file as a
:class:`bankgate.codec.capabilities.StatementFormat`; this module holds what
every such format shares, so the reference plugins keep only their spec's
rules (``docs/specs/ref-fixed.rst`` §8, ``docs/specs/ref-delim.rst`` §5,
``docs/specs/ref-iso8583.rst`` §6):

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
- :class:`ReaderFormat`: the format of a plugin that declares no
  ``statement_format`` but has ``statement_name`` and ``read_statement``
  (a third party's plugin, say): read whole, never written.

Standard library only (and the plugin's own layouts): nothing here knows a
bank or a database.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterator
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


class ReaderFormat:
    """The statement format of a plugin that has only ``statement_name`` and
    ``read_statement`` (:class:`bankgate.codec.capabilities.StatementReader`).

    The whole file goes to the plugin's reader at once, whatever its shape:
    a list of records, or ``(header, records)`` / ``(records, header)`` where
    the header dict may hold ``settle_date``, ``bank_code``, ``record_count``
    and ``total_amount``.  Such a format cannot write statements.
    """

    has_header = False
    names_bills = False

    def __init__(self, codec: Any):
        self.codec = codec

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
        raise NotImplementedError(f"{self.codec.name}: writing statements is not supported")
