"""The reconciliation plugin (对账/平帐): a bank's statement against the ledger.

For one bank and settle date it

1. reads the statement through the statement format the bank's plugin
   declares (:class:`bankgate.codec.capabilities.StatementFormat`: ``ref-fixed``
   ``.txt``, ``ref-delim`` ``.DZ``, ``ref-iso8583`` ``.csv``; or, for a plugin
   that has only a ``read_statement`` returning records, a generic one), in
   chunks, into compact columns (:mod:`bankgate.codec.statement`);
2. takes the database lock on (bank, date) and closes the date (cut-off,
   reason ``recon``);
3. merges the statement, sorted by serial, with the gateway's payments of
   that bank and date streamed from the database in the same order
   (sort-merge: one pass, nothing per row but a comparison) and classifies
   every serial: ``MATCHED``, ``BANK_ONLY`` (单边账, missing at the utility),
   ``UTILITY_ONLY`` (missing at the bank), ``AMOUNT_DIFFERS`` (amount or
   customer), ``DATE_DIFFERS`` (the record's trade date is not the settle
   date) and ``TOTALS_DIFFER`` (the header's count/total disagree with the
   details);
4. balances (平帐) what the bank's policy allows -- the statement is the
   authority: a bank-only record is posted after the fact (补销,
   ``Ledger.pay(source="recon", run_id=...)``), a utility-only payment is
   reversed locally (抹账, ``Ledger.reverse_local``); everything else is an
   exception for an operator;
5. stores the run and its items, checks that the gateway's totals now equal
   the statement's or that the open exceptions explain the difference to the
   fen, and writes the report (text, CSV, PDF) and, where the format has one
   (:class:`~bankgate.codec.capabilities.StatementErrorFile`, e.g. ``ref-delim``
   ``.DZCW``), the error file.

A payment this reconciliation posted or reversed on an earlier run is
reported again in its category with action ``NONE`` ("balanced by run N"):
the same statement run twice gives the same items and the same error file,
and changes nothing the second time.  An exception an operator resolved
(``bankgate recon resolve``) that a later run of the same bank and date finds
again -- same category, serial and amounts -- stays ``RESOLVED`` in that run.
An operator resolves an exception (:func:`resolve_exception`) or posts a
bank-only record by hand (手工补账, :meth:`Reconciler.post_exception`): the
console's exceptions page and ``bankgate recon resolve|post`` call these.

Runs are numbered per bank (``run_no``: 1, 2, ... for each bank); the
database id stays the internal key.  A dry run takes no number, changes
nothing, and reports what the real run would end as.

Everything here is synchronous (it runs on the store's thread pool or in the
``bankgate reconcile`` command); SQL lives in :mod:`bankgate.store.recon`.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

from bankgate.canon import messages as m
from bankgate.canon.files import write_atomic
from bankgate.canon.messages import Outcome
from bankgate.canon.money import fen_to_yuan
from bankgate.codec import capabilities
from bankgate.codec.capabilities import StatementFormat, statement_error_file
from bankgate.codec.statement import (  # the statement's vocabulary, shared with the plugins
    AMOUNT_DIFFERS,
    BANK_ONLY,
    CATEGORIES,
    CHUNK,
    DATE_DIFFERS,
    MATCHED,
    TOTALS_DIFFER,
    UTILITY_ONLY,
    NoWriter,
    Records,
    Statement,
    StatementError,
    StatementRecord,
    can_write,
)
from bankgate.domain.leases import Lease, LeaseBusy, LeaseLost, Leases, default_holder
from bankgate.store import recon as sql
from bankgate.store.db import Retry
from bankgate.store.recon import (
    P_AMOUNT,
    P_CUSTOMER,
    P_ID,
    P_RUN,
    P_SOURCE,
    P_STATUS,
    P_UNDO,
    P_UNDO_RUN,
)
from bankgate.store.tx import Duplicate

log = logging.getLogger("bankgate.recon")

POSTED = "POSTED"  # posted after the fact (补销)
REVERSED = "REVERSED"  # reversed locally (抹账)
EXCEPTION = "EXCEPTION"  # for an operator
NONE = "NONE"  # nothing to do (matched, or balanced by an earlier run)
RESOLVED = "RESOLVED"  # an exception an operator (or a later run) closed

STANDING = ("POSTED", "PENDING")
RECON_CHANNEL = m.Channel.RECONCILIATION.value
ITEM_BATCH = 5_000
#: Test only: ``N:SECONDS`` makes a real run stop for SECONDS (default 600) on its
#: worker thread after balancing its Nth item, so that an end-to-end test can kill
#: the process half-way (tests/test_leases_e2e.py).  Never set it in production.
PAUSE_ENV = "BANKGATE_TEST_RECON_PAUSE"
INTERRUPTED = "interrupted: the process running it stopped before it finished"


class ReconBusy(RuntimeError):
    """Another run (this process or another) holds the lock on this bank and date."""


class ReconLockLost(LeaseLost):
    """The lock was taken over (this run was silent too long): the run stops."""


class _OrderError(Exception):
    """The database did not return serials in code point order."""


def _test_pause() -> tuple[int, float] | None:
    """``(after N items, for SECONDS)`` from :data:`PAUSE_ENV`, or ``None``."""
    spec = os.environ.get(PAUSE_ENV, "").strip()
    if not spec:
        return None
    after, _, seconds = spec.partition(":")
    try:
        return int(after), float(seconds or 600)
    except ValueError:
        log.warning("%s=%r ignored: expected N:SECONDS", PAUSE_ENV, spec)
        return None


# -- the statement, through the bank plugin's format ---------------------------------------


def statement_format(codec) -> StatementFormat:
    """The statement format of a bank plugin (its declared
    :class:`~bankgate.codec.capabilities.StatementFormat`, or one over its reader)."""
    fmt = capabilities.statement_format(codec)
    if fmt is None:
        raise StatementError(f"plugin {codec.name!r} has no statement reader:"
                             " its banks cannot be reconciled")
    return fmt


def read_statement(codec, data: bytes, bank_code: str, d: date,
                   chunk: int = CHUNK) -> Statement:
    """Read and check a statement: right bank, right date, no serial twice on
    one trade date.  Raises :class:`StatementError` naming the line."""
    return statement_format(codec).read(data, bank_code, d, chunk)


def sort_order(recs: Records) -> array:
    """Record indexes by serial (code point order; file order among equals)."""
    order = array("l", sorted(range(len(recs)), key=recs.serials.__getitem__))
    s, dt = recs.serials, recs.dates
    for a, b in zip(order, order[1:], strict=False):
        if s[a] == s[b] and dt[a] == dt[b]:
            raise StatementError(f"serial {s[a]!r} appears twice for trade date"
                                 f" {date.fromordinal(dt[a]):%Y-%m-%d}")
    return order


# -- matching --------------------------------------------------------------------------


class Item:
    """One discrepancy (or a matched record needing an action) of a run."""

    __slots__ = ("category", "serial", "customer_no", "bank_amount", "our_amount", "action",
                 "payment_id", "detail", "rec", "ours", "bank_side", "ours_side",
                 "resolved_by", "resolved_at", "resolved_note")

    def __init__(self, category, serial, customer_no, bank_amount, our_amount, action,
                 payment_id=None, detail="", rec=None, ours=None, bank_side=False,
                 ours_side=False):
        self.category = category
        self.serial = serial
        self.customer_no = customer_no
        self.bank_amount = bank_amount
        self.our_amount = our_amount
        self.action = action  # planned: POST / REVERSE / CONFIRM, then the outcome
        self.payment_id = payment_id
        self.detail = detail
        self.rec = rec  # StatementRecord (bank side)
        self.ours = ours  # payment tuple (see bankgate.store.recon.P_*)
        self.bank_side = bank_side  # the record counts in the statement's totals
        self.ours_side = ours_side  # the paired payment is standing on the settle date
        self.resolved_by = self.resolved_at = self.resolved_note = None  # carried over

    def row(self) -> tuple:
        return (self.category, self.serial, self.customer_no, self.bank_amount,
                self.our_amount, self.action, self.payment_id, self.detail)

    def resolution(self) -> tuple:
        return (self.resolved_by, self.resolved_at, self.resolved_note)

    def key(self) -> tuple:
        """What makes two runs' exceptions the same discrepancy."""
        return (self.category, self.serial, self.bank_amount or 0, self.our_amount or 0)

    def as_dict(self) -> dict:
        return dict(zip(sql.ITEM_COLUMNS + sql.RESOLUTION_COLUMNS,
                        self.row() + self.resolution(), strict=True))

    def __repr__(self) -> str:
        return (f"Item({self.category} {self.serial} {self.action} bank={self.bank_amount}"
                f" ours={self.our_amount} {self.detail!r})")


def merge(recs: Records, order: array, ours: Iterator[tuple]
          ) -> Iterator[tuple[str, list[int], tuple | None]]:
    """Sort-merge: ``(serial, statement indexes, our payment or None)`` for
    every serial on either side, in serial order.  Raises :class:`_OrderError`
    when ``ours`` is not strictly ascending."""
    serials = recs.serials
    n = len(order)
    i = 0
    o = next(ours, None)
    last = None
    while i < n or o is not None:
        if o is not None:
            if last is not None and o[0] <= last:
                raise _OrderError(f"{o[0]!r} after {last!r}")
        s = serials[order[i]] if i < n else None
        if o is None or (s is not None and s < o[0]):
            j = i + 1
            while j < n and serials[order[j]] == s:
                j += 1
            yield s, list(order[i:j]), None
            i = j
        elif s is None or o[0] < s:
            yield o[0], [], o
            last = o[0]
            o = next(ours, None)
        else:
            j = i + 1
            while j < n and serials[order[j]] == s:
                j += 1
            yield s, list(order[i:j]), o
            i = j
            last = o[0]
            o = next(ours, None)


def _undone_by_recon(o: tuple) -> bool:
    return o[P_UNDO] == "RECON"


def classify(serial: str, idxs: list[int], o: tuple | None, recs: Records, d_ord: int,
             d: date, run_no: Callable[[int], object] = lambda run_id: run_id) -> list[Item]:
    """The items of one serial (the common plain match is handled by the
    caller without an :class:`Item`, for speed).  ``run_no`` names an earlier
    run (by its id) as an operator knows it."""
    out: list[Item] = []
    on_day = [i for i in idxs if recs.dates[i] == d_ord]
    other = [i for i in idxs if recs.dates[i] != d_ord]
    standing = o is not None and o[P_STATUS] in STANDING
    paired = False
    if on_day:
        i = on_day[0]
        r = recs.record(i)
        if o is None:
            out.append(Item(BANK_ONLY, serial, r.customer_no, r.amount, 0, "POST", rec=r,
                            bank_side=True))
        elif standing:
            paired = True
            if r.amount != o[P_AMOUNT] or r.customer_no != o[P_CUSTOMER]:
                what = []
                if r.amount != o[P_AMOUNT]:
                    what.append(f"amount: bank {fen_to_yuan(r.amount)},"
                                f" utility {fen_to_yuan(o[P_AMOUNT])}")
                if r.customer_no != o[P_CUSTOMER]:
                    what.append(f"customer: bank {r.customer_no}, utility {o[P_CUSTOMER]}")
                out.append(Item(AMOUNT_DIFFERS, serial, r.customer_no, r.amount, o[P_AMOUNT],
                                EXCEPTION, o[P_ID], "; ".join(what), rec=r, ours=o,
                                bank_side=True, ours_side=True))
            elif o[P_SOURCE] == "recon":
                out.append(Item(BANK_ONLY, serial, r.customer_no, r.amount, o[P_AMOUNT], NONE,
                                o[P_ID], f"posted after the fact by run {run_no(o[P_RUN])}",
                                rec=r,
                                ours=o, bank_side=True, ours_side=True))
            else:  # matched; a pending two-phase payment the bank settled is confirmed
                out.append(Item(MATCHED, serial, r.customer_no, r.amount, o[P_AMOUNT],
                                "CONFIRM" if o[P_STATUS] == "PENDING" else NONE, o[P_ID], "",
                                rec=r, ours=o, bank_side=True, ours_side=True))
        else:
            if _undone_by_recon(o):
                why = (f"reversed locally by run {run_no(o[P_UNDO_RUN])}, but this statement"
                       " lists it:"
                       " re-post it by hand if the bank collected it")
            else:
                why = (f"{o[P_STATUS].lower()} at the utility"
                       f" ({(o[P_UNDO] or 'undone').lower()}), but the bank lists it as standing")
            out.append(Item(BANK_ONLY, serial, r.customer_no, r.amount, o[P_AMOUNT], EXCEPTION,
                            o[P_ID], why, rec=r, ours=o, bank_side=True))
        for i in on_day[1:]:  # cannot happen: the reader refuses a serial twice a day
            r = recs.record(i)
            out.append(Item(BANK_ONLY, serial, r.customer_no, r.amount, 0, EXCEPTION,
                            detail="serial repeated", rec=r, bank_side=True))
    for i in other:
        r = recs.record(i)
        pair = standing and not paired
        out.append(Item(
            DATE_DIFFERS, serial, r.customer_no, r.amount, o[P_AMOUNT] if pair else 0, EXCEPTION,
            o[P_ID] if pair else None,
            f"trade date {r.trade_date:%Y-%m-%d} in the statement of {d:%Y-%m-%d}",
            rec=r, ours=o if pair else None, bank_side=True, ours_side=pair))
        paired = paired or pair
    if not idxs and o is not None:
        if standing:
            out.append(Item(UTILITY_ONLY, serial, o[P_CUSTOMER], 0, o[P_AMOUNT], "REVERSE",
                            o[P_ID], ours=o, ours_side=True))
        elif _undone_by_recon(o):
            out.append(Item(UTILITY_ONLY, serial, o[P_CUSTOMER], 0, o[P_AMOUNT], NONE, o[P_ID],
                            f"reversed locally by run {run_no(o[P_UNDO_RUN])}", ours=o))
    return out


# -- the run ---------------------------------------------------------------------------


@dataclass
class RunReport:
    run_id: int | None  # the database's key of the run
    bank: str
    bank_code: str
    settle_date: date
    # BALANCED EXCEPTIONS FAILED; for a dry run, what the real run would end as
    status: str = "RUNNING"
    dry_run: bool = False
    run_no: int | None = None  # the bank's run number, as operators see it (None: dry run)
    actor: str = "recon"  # who started it: "recon" (the service) or an operator
    file_name: str = ""
    source: str = ""
    sha256: str = ""
    size: int = 0
    statement_id: int | None = None
    declared_count: int | None = None
    declared_total: int | None = None
    bank_count: int = 0  # the statement's details
    bank_total: int = 0
    ours_before: tuple[int, int] = (0, 0)
    ours_count: int = 0  # the gateway's standing payments after balancing
    ours_total: int = 0
    counts: dict = field(default_factory=dict)  # category -> items
    actions: dict = field(default_factory=dict)  # "CATEGORY/ACTION" -> [items, bank, ours]
    gap: tuple[int, int] = (0, 0)  # statement minus gateway: (count, amount)
    explained: tuple[int, int] = (0, 0)  # what the open exceptions account for
    accepted: tuple[int, int] = (0, 0)  # what exceptions resolved by an operator account for
    items: list = field(default_factory=list)  # every Item but the plain MATCHED ones
    error: str = ""
    timings: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)  # kind -> path
    resolved: int = 0  # earlier exceptions this run closed (it no longer has them)

    @property
    def label(self) -> str:
        """The run as an operator names it: ``run 3``, or ``dry run``."""
        if self.dry_run:
            return "dry run"
        return f"run {self.run_no if self.run_no is not None else '-'}"

    @property
    def exceptions(self) -> list:
        return [i for i in self.items if i.action == EXCEPTION]

    @property
    def changes(self) -> list:
        return [i for i in self.items if i.action in (POSTED, REVERSED)]

    @property
    def resolved_items(self) -> list:
        """Exceptions an operator resolved on an earlier run, found again."""
        return [i for i in self.items if i.action == RESOLVED]

    @property
    def balanced(self) -> bool:
        """Nothing left for an operator, and the gateway's totals equal the
        statement's but for what an operator resolved."""
        return self.gap == self.accepted and not self.exceptions

    @property
    def gap_explained(self) -> bool:
        return self.gap == (self.explained[0] + self.accepted[0],
                            self.explained[1] + self.accepted[1])

    def summary(self) -> dict:
        return {
            "file": self.file_name, "source": self.source, "sha256": self.sha256,
            "declared": [self.declared_count, self.declared_total],
            "counts": self.counts, "actions": self.actions,
            "ours_before": list(self.ours_before), "gap": list(self.gap),
            "explained": list(self.explained), "accepted": list(self.accepted),
            "error": self.error, "run_no": self.run_no, "actor": self.actor,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "resolved": self.resolved,
        }


class Reconciler:
    """Reconciles one configured bank (a :class:`bankgate.app.config.BankConfig`)."""

    def __init__(self, ledger, bank, codec, *, data_dir: str = "var",
                 now: Callable[[], datetime] | None = None, holder: str | None = None):
        self.ledger = ledger
        self.store = ledger.store
        self.bank = bank
        self.policy = bank.reconcile
        self.codec = codec
        self.format = statement_format(codec)
        self.data_dir = data_dir
        self.now = now or ledger.now
        self.holder = holder or default_holder()
        # the run lock is the lease recon:{bank}:{date} (bankgate.domain.leases)
        self.leases = Leases(self.store, now=self.now, holder=self.holder,
                             ttl=self.policy.lock_stale)
        self._lease: Lease | None = None  # the lock of the run at work

    @property
    def name(self) -> str:
        return self.bank.name

    def file_name(self, d: date) -> str:
        return self.format.file_name(self.bank.bank_code, d)

    def report_dir(self) -> Path:
        return Path(self.policy.report_dir or Path(self.data_dir) / "reports" / self.name)

    def exchange_dir(self) -> Path:
        return Path(self.bank.statement_dir(self.data_dir))

    # -- entry points ------------------------------------------------------------------

    def reconcile(self, data: bytes, settle_date: date, *, source: str = "",
                  file_name: str = "", dry_run: bool = False,
                  progress: Callable[[str, int, int | None], None] | None = None,
                  outputs: bool = True, actor: str = "recon",
                  lease: Lease | None = None) -> RunReport:
        """Reconcile ``data`` (the statement's bytes) for ``settle_date``.

        ``actor`` is who started it (an operator's name from ``bankgate
        reconcile``, ``recon`` for the service): the cut-off, the posts and
        reversals and the run are audited under it.  Raises
        :class:`StatementError` for an unusable file (a FAILED run is recorded)
        and :class:`ReconBusy` when another run holds the date.  ``lease``: the
        run lock (:func:`bankgate.store.recon.lock_name`), taken by the caller,
        who also releases it (the service's scheduler, which holds it from the
        statement's fetch on); without it a real run takes and releases its own.
        A real run marks the runs of its bank and date left RUNNING by a process
        that stopped half-way as FAILED (:data:`INTERRUPTED`) before it starts.
        """
        progress = progress or (lambda phase, done, total: None)
        t0 = time.perf_counter()
        rep = RunReport(None, self.name, self.bank.bank_code, settle_date, dry_run=dry_run,
                        file_name=file_name or self.file_name(settle_date), source=source,
                        sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                        actor=actor or "recon")
        progress("read", 0, None)
        try:
            st = self.format.read(data, self.bank.bank_code, settle_date)
            order = sort_order(st.records)
        except ValueError as e:  # StatementError, or a plugin's reader that raised its own
            rep.error = f"{rep.file_name}: {e}"
            self._record_failure(rep)
            raise StatementError(rep.error) from None
        del data
        rep.declared_count, rep.declared_total = st.declared_count, st.declared_total
        rep.bank_count, rep.bank_total = st.count, st.total
        rep.timings["read"] = time.perf_counter() - t0
        progress("read", st.count, st.count)
        if dry_run:
            return self._run(st, order, rep, progress, outputs)
        own = lease is None
        if own:
            lease = self._lock(settle_date, rep)
        elif lease.name != sql.lock_name(self.name, settle_date):
            raise ValueError(f"{lease.name} is not the run lock of {self.name} {settle_date}")
        self._lease = lease
        try:
            self._close_interrupted(settle_date, rep.actor)
            return self._run(st, order, rep, progress, outputs)
        finally:
            self._lease = None
            if own:
                lease.release()

    def record_failure(self, settle_date: date, error: str, *, source: str = "",
                       file_name: str = "", actor: str = "recon") -> RunReport:
        """Record a run that could not start (statement never appeared)."""
        rep = RunReport(None, self.name, self.bank.bank_code, settle_date, source=source,
                        file_name=file_name or self.file_name(settle_date), error=error,
                        actor=actor)
        self._record_failure(rep)
        return rep

    def _record_failure(self, rep: RunReport) -> None:
        rep.status = "FAILED"
        now = self.now()

        def tx_fn(tx):
            rid, no = sql.run_open(tx, self.name, rep.settle_date, None, now,
                                   dry_run=rep.dry_run, status="FAILED")
            rep.run_no = no
            sql.run_finish(tx, rid, "FAILED", now, summary=rep.summary())
            tx.audit(now, rep.actor, "reconcile-failed", f"{self.name} {rep.settle_date}",
                     {"run_id": rid, "run_no": no, "dry_run": rep.dry_run,
                      "error": rep.error[:300]})
            return rid, no

        rep.run_id, rep.run_no = self.store.run_sync(tx_fn)
        log.error("reconciliation %s %s failed (%s): %s", self.name, rep.settle_date,
                  rep.label, rep.error)

    # -- the lock ---------------------------------------------------------------------

    def _lock(self, d: date, rep: RunReport) -> Lease:
        try:
            return self.leases.acquire(
                sql.lock_name(self.name, d), ttl=self.policy.lock_stale,
                job={"job": "reconcile", "by": rep.actor, "file": rep.file_name},
                action=sql.TAKEOVER, subject=sql.lock_subject(self.name, d))
        except LeaseBusy as e:
            raise ReconBusy(f"{self.name} {d:%Y-%m-%d} is being reconciled by"
                            f" {sql.held_by(e.row)}") from None

    def _keepalive(self, d: date) -> None:
        """Between steps: renew the run lock when a third of ``lock_stale`` has
        passed; :class:`ReconLockLost` when another process took it over."""
        lease = self._lease
        if lease is None:
            return
        try:
            lease.check()
        except LeaseLost:
            raise ReconLockLost(f"{self.name} {d}: the run lock was taken over") from None

    def _close_interrupted(self, d: date, actor: str) -> None:
        """Under the lock: mark the runs a stopped process left RUNNING as FAILED."""
        now = self.now()

        def tx_fn(tx) -> list[int]:
            ids = sql.runs_interrupted(tx, self.name, d, now, INTERRUPTED)
            if ids:
                tx.audit(now, actor, "reconcile-interrupted", f"{self.name} {d}",
                         {"run_ids": ids, "error": INTERRUPTED})
            return ids

        ids = self.store.run_sync(tx_fn)
        if ids:
            log.warning("reconciliation %s %s: run(s) %s were left RUNNING by a process that"
                        " stopped: marked FAILED", self.name, d, ", ".join(map(str, ids)))

    # -- the phases ------------------------------------------------------------------------

    def _run(self, st: Statement, order: array, rep: RunReport, progress, outputs) -> RunReport:
        d = rep.settle_date
        dry = rep.dry_run
        now = self.now()
        rep.statement_id = self.store.run_sync(
            sql.statement_record, self.name, d, rep.source or rep.file_name, rep.sha256, rep.size,
            st.count, st.total, now)
        if not dry:
            self.ledger.cutoff(self.name, d, reason="recon", actor=rep.actor)
        rep.ours_before = self.store.run_sync(sql.standing_totals, self.name, d)
        rep.run_id, rep.run_no = self.store.run_sync(
            sql.run_open, self.name, d, rep.statement_id, now, dry_run=dry, bank_count=st.count,
            bank_total=st.total)
        try:
            t = time.perf_counter()
            items, matched = self._match(st, order, rep, progress)
            rep.timings["match"] = time.perf_counter() - t
            self._annotate(items, d)
            if st.totals_differ:
                items.insert(0, Item(
                    TOTALS_DIFFER, None, None, st.declared_total, st.total, EXCEPTION,
                    detail=f"header: {st.declared_count} records, {fen_to_yuan(st.declared_total)}"
                           f"; details: {st.count} records, {fen_to_yuan(st.total)}"))
            self._apply_policy(items, st)
            t = time.perf_counter()
            self._balance(items, rep, progress)
            rep.timings["balance"] = time.perf_counter() - t
            t = time.perf_counter()
            self._finish(items, matched, rep, progress)
            rep.timings["store"] = time.perf_counter() - t
        except BaseException as e:
            rep.status = "FAILED"
            rep.error = f"{type(e).__name__}: {e}"
            try:
                self.store.run_sync(sql.run_finish, rep.run_id, "FAILED", self.now(),
                                    summary=rep.summary())
            except Exception:  # noqa: BLE001 - the database may be what failed
                log.exception("cannot record the failure of %s (id %s)", rep.label, rep.run_id)
            raise
        if outputs:
            t = time.perf_counter()
            self.write_outputs(rep)
            rep.timings["outputs"] = time.perf_counter() - t
        rep.timings["total"] = sum(v for k, v in rep.timings.items() if k != "total")
        from bankgate.domain.recon_report import summary_text

        log.info("%s", summary_text(rep))
        return rep

    def _match(self, st: Statement, order: array, rep: RunReport, progress
               ) -> tuple[list[Item], tuple[int, int]]:
        """Merge the statement with the day's payments; MATCHED rows are written
        in batches as they come, everything else is returned."""
        d = rep.settle_date
        recs = st.records
        total = len(recs)
        store_matched = self.policy.store_matched
        run_id = rep.run_id
        numbers = self.store.run_sync(sql.run_numbers, self.name, d, readonly=True)

        def run_no(rid):
            no = numbers.get(rid)
            return no if no is not None else f"#{rid}"

        def match(sort_in_python: bool):
            items: list[Item] = []
            batch: list[tuple] = []
            matched = matched_total = 0
            seen = 0
            d_ord = d.toordinal()
            amounts, customers, dates = recs.amounts, recs.customers, recs.dates
            with sql.payments_stream(self.store, self.name, d,
                                     sort=not sort_in_python) as stream:
                ours = iter(sorted(stream)) if sort_in_python else stream
                for serial, idxs, o in merge(recs, order, ours):
                    if len(idxs) == 1 and o is not None:
                        i = idxs[0]
                        if (dates[i] == d_ord and o[P_STATUS] == "POSTED"
                                and o[P_SOURCE] != "recon" and amounts[i] == o[P_AMOUNT]
                                and customers[i] == o[P_CUSTOMER]):
                            matched += 1
                            matched_total += amounts[i]
                            seen += 1
                            if store_matched:
                                batch.append((MATCHED, serial, customers[i], amounts[i],
                                              amounts[i], NONE, o[P_ID], None))
                                if len(batch) >= ITEM_BATCH:
                                    self.store.run_sync(sql.items_insert, run_id, batch,
                                                        ITEM_BATCH)
                                    batch.clear()
                                    self._keepalive_or_dry(rep)
                                    progress("match", seen, total)
                            continue
                    seen += len(idxs)
                    items.extend(classify(serial, idxs, o, recs, d_ord, d, run_no))
            if batch:
                self.store.run_sync(sql.items_insert, run_id, batch, ITEM_BATCH)
            progress("match", total, total)
            return items, (matched, matched_total)

        try:
            return match(False)
        except _OrderError as e:
            log.warning("%s: the database does not sort serials by code point (%s);"
                        " sorting in Python", self.store.dialect, e)
            self.store.run_sync(sql.items_delete, run_id)
            return match(True)

    def _keepalive_or_dry(self, rep: RunReport) -> None:
        if not rep.dry_run:
            self._keepalive(rep.settle_date)

    def _annotate(self, items: list[Item], d: date) -> None:
        """Explain date-differs records (the gateway may hold them on their own
        date) and bank-only records the journal knows (refused online, or
        reversed before they arrived): those cannot be posted."""
        by_date: dict[date, list[Item]] = {}
        for it in items:
            if it.category == DATE_DIFFERS:
                by_date.setdefault(it.rec.trade_date, []).append(it)
        for day, its in by_date.items():
            found = self.store.run_sync(sql.payments_by_serials, self.name, day,
                                        [i.serial for i in its])
            for it in its:
                o = found.get(it.serial)
                if o is not None:
                    it.detail += (f"; the utility has it on {day:%Y-%m-%d}"
                                  f" ({o[P_STATUS].lower()}, {fen_to_yuan(o[P_AMOUNT])})")
                else:
                    it.detail += f"; the utility has no payment {it.serial} on {day:%Y-%m-%d}"
        posts = [it for it in items if it.action == "POST"]
        if posts:
            known = self.store.run_sync(sql.journal_by_serials, self.name, d,
                                        [i.serial for i in posts])
            for it in posts:
                j = known.get(it.serial)
                if j is None:
                    continue
                kind, outcome = j
                it.action = EXCEPTION
                if kind == "BLOCK":
                    it.detail = ("the bank reversed this serial before its payment arrived;"
                                 " the gateway refused the payment (reversal first)")
                elif kind == "PAY":
                    it.detail = f"the gateway refused this payment online ({outcome})"
                else:
                    it.detail = f"the serial is a {kind} in the gateway's journal ({outcome})"

    def _apply_policy(self, items: list[Item], st: Statement) -> None:
        hold = st.totals_differ and self.policy.totals_differ == "hold"
        for it in items:
            if it.action == "POST":
                if hold:
                    it.action, it.detail = EXCEPTION, "held: the header totals differ"
                elif self.policy.bank_only == "exception":
                    it.action, it.detail = EXCEPTION, "policy: bank-only records go to an operator"
            elif it.action == "REVERSE":
                if hold:
                    it.action, it.detail = EXCEPTION, "held: the header totals differ"
                elif self.policy.utility_only == "exception":
                    it.action = EXCEPTION
                    it.detail = "policy: utility-only payments go to an operator"

    # -- balancing (平帐) -----------------------------------------------------------------

    def _balance(self, items: list[Item], rep: RunReport, progress) -> None:
        todo = [it for it in items if it.action in ("POST", "REVERSE", "CONFIRM")]
        if rep.dry_run:
            would = {"POST": (POSTED, "dry run: would post after the fact"),
                     "REVERSE": (REVERSED, "dry run: would reverse locally"),
                     "CONFIRM": (NONE, "dry run: would confirm")}
            for it in todo:
                it.action, it.detail = would[it.action]
                # what the real run would leave standing (see _finish)
                it.ours_side = it.action == POSTED or (it.ours_side and it.action != REVERSED)
            return
        total = len(todo)
        progress("balance", 0, total)
        if not total:
            return
        workers = max(1, min(self.policy.workers, total))
        done = [0]
        lock = threading.Lock()
        pause = _test_pause()

        def work(part: list[Item]) -> None:
            for it in part:
                self._balance_one(it, rep)
                self._keepalive(rep.settle_date)
                with lock:
                    done[0] += 1
                    n = done[0]
                if n % 100 == 0 or n == total:
                    progress("balance", n, total)
                if pause and n == pause[0]:
                    log.warning("test hook %s: %s %s paused after %d of %d items for %g s",
                                PAUSE_ENV, self.name, rep.settle_date, n, total, pause[1])
                    time.sleep(pause[1])

        if workers == 1:
            work(todo)
            return
        # one customer's records stay in one worker, in serial order: the same
        # allocations whatever the number of workers
        parts: list[list[Item]] = [[] for _ in range(workers)]
        for it in todo:
            key = hashlib.blake2b((it.customer_no or "").encode(), digest_size=4).digest()
            parts[int.from_bytes(key, "big") % workers].append(it)
        with concurrent.futures.ThreadPoolExecutor(workers, "bankgate-recon") as ex:
            for f in [ex.submit(work, p) for p in parts if p]:
                f.result()

    def _balance_one(self, it: Item, rep: RunReport) -> None:
        d = rep.settle_date
        if it.action == "POST":
            r = it.rec
            origin = m.Origin(bank=self.name, trade_date=d, trade_time=r.trade_time,
                              branch="", teller="recon", channel=RECON_CHANNEL)
            req = m.PaymentRequest(
                origin, r.serial, r.customer_no, r.amount,
                content=m.fingerprint("RECON", r.customer_no, r.amount, ",".join(r.bill_ids)),
                bill_ids=r.bill_ids)
            res = self.ledger.pay(req, source="recon", run_id=rep.run_id, actor=rep.actor,
                                  after_close=True, policy=self.policy.post_policy)
            if res.outcome is Outcome.OK and not res.retry:
                it.action = POSTED
                it.ours_side = True
                it.our_amount = r.amount
                it.detail = (f"posted after the fact, receipt {res.receipt_no}"
                             f" (bank channel {r.channel})")
            else:
                it.action = EXCEPTION
                it.detail = self._post_refused(res, r)
        elif it.action == "REVERSE":
            res = self.ledger.reverse_local(
                self.name, d, it.serial, run_id=rep.run_id, actor=rep.actor,
                reason=f"not in the bank's statement ({rep.label})")
            if res.outcome is Outcome.OK:
                it.action = REVERSED
                it.ours_side = False
                it.detail = f"reversed locally, receipt {res.message}"
            elif res.outcome is Outcome.ALREADY_REVERSED:
                it.action = NONE
                it.ours_side = False
                it.detail = "already reversed"
            else:
                it.action = EXCEPTION
                it.detail = f"cannot reverse locally: {res.message or res.outcome.value}"
        elif it.action == "CONFIRM":
            req = m.ConfirmRequest(m.Origin(bank=self.name, trade_date=d, teller="recon"),
                                   it.serial, d)
            res = self.ledger.confirm(req)
            if res.outcome is Outcome.OK:
                it.action, it.detail = NONE, "two-phase payment confirmed by the statement"
                self.store.run_sync(lambda tx: tx.audit(
                    self.now(), rep.actor, "confirm", it.serial,
                    {"bank": self.name, "serial": it.serial, "run_id": rep.run_id,
                     "run_no": rep.run_no}))
            else:
                it.action = EXCEPTION
                it.detail = f"cannot confirm the pending payment: {res.outcome.value}"

    def _post_refused(self, res, r: StatementRecord) -> str:
        o = res.outcome
        if res.retry or o in (Outcome.DUPLICATE_MISMATCH, Outcome.REVERSED_FIRST):
            return f"the serial is already in the gateway's journal ({o.value})"
        return {
            Outcome.NOT_FOUND: f"customer {r.customer_no} not found at the utility",
            Outcome.ACCOUNT_LOCKED: f"customer {r.customer_no} is locked or suspended",
            Outcome.NOTHING_DUE: f"customer {r.customer_no} has nothing open to pay",
            Outcome.AMOUNT_REJECTED: (
                "a named bill is no longer open, or the amount is not what they owe"
                if r.bill_ids else
                f"amount not accepted under policy {self.policy.post_policy!r}"),
            Outcome.FORMAT_ERROR: "the record's customer or serial cannot be posted",
        }.get(o, f"refused: {o.value}")

    # -- storing and checking --------------------------------------------------------------

    def _finish(self, items: list[Item], matched_sum: tuple[int, int], rep: RunReport,
                progress) -> None:
        matched, matched_total = matched_sum
        d = rep.settle_date
        items.sort(key=lambda i: (i.category != TOTALS_DIFFER, i.serial or "", i.category))
        if any(it.action == POSTED for it in items) and not rep.dry_run:
            ids = self.store.run_sync(sql.payments_by_serials, self.name, d,
                                      [i.serial for i in items if i.action == POSTED])
            for it in items:
                if it.action == POSTED and it.serial in ids:
                    it.payment_id = ids[it.serial][P_ID]
        self._carry_resolutions(items, d)
        counts = {c: 0 for c in CATEGORIES}
        counts[MATCHED] = matched
        actions: dict[str, list[int]] = {}
        if matched:
            actions[f"{MATCHED}/{NONE}"] = [matched, matched_total, matched_total]
        gap_c = gap_a = 0
        ok_c = ok_a = 0
        for it in items:
            counts[it.category] += 1
            a = actions.setdefault(f"{it.category}/{it.action}", [0, 0, 0])
            a[0] += 1
            a[1] += it.bank_amount or 0
            a[2] += it.our_amount or 0
            if it.category == TOTALS_DIFFER:
                continue
            side_c = int(it.bank_side) - int(it.ours_side)
            side_a = (it.bank_amount if it.bank_side else 0) - (
                it.our_amount if it.ours_side else 0)
            if it.action == EXCEPTION:
                gap_c, gap_a = gap_c + side_c, gap_a + side_a
            elif it.action == RESOLVED:
                ok_c, ok_a = ok_c + side_c, ok_a + side_a
        rep.counts = {k: v for k, v in counts.items() if v}
        rep.actions = actions
        rep.explained = (gap_c, gap_a)
        rep.accepted = (ok_c, ok_a)
        rep.items = items
        note = f"no longer an exception in {rep.label}"

        def tx_fn(tx):
            sql.items_insert(tx, rep.run_id, (it.row() + it.resolution() for it in items),
                             ITEM_BATCH, resolutions=True)
            count, total = sql.standing_totals(tx, self.name, d)
            resolved = 0 if rep.dry_run else sql.resolve_superseded(tx, self.name, d,
                                                                    rep.run_id, note)
            return count, total, resolved

        progress("store", 0, len(items))
        rep.ours_count, rep.ours_total, rep.resolved = self.store.run_sync(tx_fn)
        if rep.dry_run:
            # nothing was changed: the gateway as the real run would leave it
            posts = [i for i in items if i.action == POSTED]
            revs = [i for i in items if i.action == REVERSED]
            rep.ours_count += len(posts) - len(revs)
            rep.ours_total += (sum(i.bank_amount or 0 for i in posts)
                               - sum(i.our_amount or 0 for i in revs))
        rep.gap = (rep.bank_count - rep.ours_count, rep.bank_total - rep.ours_total)
        rep.status = "BALANCED" if rep.balanced else "EXCEPTIONS"
        if not rep.gap_explained and not rep.dry_run:
            rep.error = (f"unexplained difference: statement minus gateway {rep.gap},"
                         f" open exceptions account for {rep.explained}"
                         + (f", resolved ones for {rep.accepted}" if rep.accepted != (0, 0)
                            else ""))
            log.error("%s %s %s: %s", self.name, d, rep.label, rep.error)
        summary = rep.summary()

        def fin(tx):
            sql.run_finish(tx, rep.run_id, rep.status, self.now(), ours_count=rep.ours_count,
                           ours_total=rep.ours_total, summary=summary)
            tx.audit(self.now(), rep.actor,
                     "reconcile-dry-run" if rep.dry_run else "reconcile",
                     f"{self.name} {d:%Y-%m-%d}",
                     {"run_id": rep.run_id, "run_no": rep.run_no, "status": rep.status,
                      "counts": rep.counts,
                      "posted": len([i for i in items if i.action == POSTED]),
                      "reversed": len([i for i in items if i.action == REVERSED]),
                      "exceptions": len(rep.exceptions),
                      "resolved_before": len(rep.resolved_items), "sha256": rep.sha256})

        self.store.run_sync(fin)
        progress("store", len(items), len(items))

    def _carry_resolutions(self, items: list[Item], d: date) -> None:
        """An exception an operator resolved on an earlier run of this bank and
        date, found again (same category, serial and amounts): RESOLVED here too,
        with who resolved it, when and why -- a statement sent again must not
        reopen what was closed."""
        if not any(it.action == EXCEPTION for it in items):
            return
        earlier: dict[tuple, dict] = {}
        for r in self.store.run_sync(sql.resolutions, self.name, d, readonly=True):
            earlier.setdefault((r["category"], r["serial"], r["bank_amount"] or 0,
                                r["our_amount"] or 0), r)
        for it in items:
            r = earlier.get(it.key()) if it.action == EXCEPTION else None
            if r is None:
                continue
            it.action = RESOLVED
            it.resolved_by, it.resolved_at, it.resolved_note = (
                r["resolved_by"], r["resolved_at"], r["resolved_note"])
            when = f" on {r['resolved_at']:%Y-%m-%d}" if r["resolved_at"] else ""
            it.detail = (f"resolved by {r['resolved_by']}{when} (run {r['run_no']}):"
                         f" {r['resolved_note'] or ''} | {it.detail}")

    # -- by hand: posting a bank-only record (手工补账) ------------------------------------

    def preview_post(self, item_id: int, customer_no: str | None = None) -> dict:
        """What :meth:`post_exception` would post (read only): the item, the
        customer with what they owe, the amount.  Raises :class:`ExceptionRefused`
        when it would be refused for the item's state or the customer."""
        row, plan = self.store.run_sync(self._plan_tx, item_id, customer_no, readonly=True)
        q = self.ledger.query(m.QueryRequest(plan["origin"], plan["customer_no"]))
        if q.outcome is not Outcome.OK:
            raise ExceptionRefused(*self._hand_refused(q.outcome, plan["customer_no"], row))
        due = q.total_due + q.late_fee
        p, amount = self.policy.post_policy, row["bank_amount"]
        if not (amount == due or (amount < due and p in ("partial", "any"))
                or (amount > due and p in ("overpay", "any"))):
            raise ExceptionRefused(*self._hand_refused(Outcome.AMOUNT_REJECTED,
                                                       plan["customer_no"], row))
        return {**plan, "item": row, "name": q.name, "due": due,
                "prepaid_in": max(0, amount - due)}

    def post_exception(self, item_id: int, *, actor: str, reason: str,
                       customer_no: str | None = None) -> dict:
        """Post an exception's bank-only record by hand (手工补账), to the bank's
        customer or to ``customer_no`` (a corrected number), and resolve the
        exception with ``reason`` -- in one transaction: the ledger's post
        (source ``recon``, the item's run, after the close, under the bank's
        reconciliation policy ``post_policy``, journal key (bank, settle date,
        the bank's serial)) and the resolution audited as ``recon-post``.

        A refusal raises :class:`ExceptionRefused` and changes nothing: the item
        is not an open bank-only exception, the serial is posted already (or the
        bank reversed it first), the customer is unknown or locked, the ledger
        refuses the amount.  A key whose journal row only records a refusal (the
        online payment, or this reconciliation's own post, refused) is claimed
        again -- the row it replaces is in the audit row.  Posting twice cannot
        post twice: the second finds the item resolved and the key taken."""
        reason = _note(reason, "reason")
        for _ in range(3):
            try:
                return self.store.run_sync(self._post_tx, item_id, actor, reason, customer_no)
            except Duplicate:
                continue  # the key was claimed meanwhile: the next look refuses it
        raise ExceptionRefused("the bank's serial keeps being claimed meanwhile: try again")

    def _plan_tx(self, tx, item_id: int, customer_no: str | None,
                 lock: bool = False) -> tuple[dict, dict]:
        row = sql.item_get(tx, item_id, lock=lock)
        _check_open(row, item_id)
        if row["bank"] != self.name:
            raise ValueError(f"item {item_id} is of bank {row['bank']}, not {self.name}")
        if row["category"] != BANK_ONLY or not row["serial"] or not row["bank_amount"]:
            raise ExceptionRefused(
                f"item {item_id} is {row['category']}: only a record the bank has and the"
                " gateway does not (BANK_ONLY) can be posted by hand; resolve it with a note",
                "exception")
        d, serial = row["settle_date"], row["serial"]
        held = sql.lock_get(tx, self.name, d)
        if held is not None and held["finished_at"] is None and held["expires_at"] >= self.now():
            raise ExceptionRefused(f"{self.name} {d:%Y-%m-%d} is being reconciled right now"
                                   f" ({held['holder']}): try again when the run is done")
        if row["pay_status"] in STANDING:
            raise ExceptionRefused(f"serial {serial} is posted already, as receipt"
                                   f" {row['pay_receipt_no']}", "exception")
        j = sql.journal_key(tx, self.name, d, serial)
        if j is not None and not (j["kind"] == "PAY" and j["payment_id"] is None
                                  and j["outcome"] not in ("OK", "PROCESSING")):
            raise ExceptionRefused(_taken(serial, j), "exception")
        cust = row["customer_no"] if customer_no is None else customer_number(customer_no)
        if not cust:
            raise ExceptionRefused("the bank's record names no customer: give the customer"
                                   " number to post it to", "customer")
        origin = m.Origin(bank=self.name, trade_date=d, teller="recon", channel=RECON_CHANNEL)
        req = m.PaymentRequest(origin, serial, cust, row["bank_amount"],
                               content=m.fingerprint("RECON", cust, row["bank_amount"], ""))
        return row, {"origin": origin, "request": req, "customer_no": cust, "journal": j,
                     "amount": row["bank_amount"], "serial": serial, "settle_date": d,
                     "bank": self.name, "policy": self.policy.post_policy}

    def _post_tx(self, tx, item_id: int, actor: str, reason: str, customer_no: str | None):
        row, plan = self._plan_tx(tx, item_id, customer_no, lock=True)
        replaced = None
        j = plan["journal"]
        if j is not None:  # a refused claim of the key: claimed again below
            if not sql.journal_release(tx, j["id"]):
                raise Retry()
            replaced = {"kind": j["kind"], "outcome": j["outcome"],
                        "created_at": f"{j['created_at']:%Y-%m-%d %H:%M:%S}"}
        # the ledger's own transaction body, in this transaction: the post and the
        # resolution commit together or not at all
        res = self.ledger._pay_tx(tx, plan["request"], "recon", row["run_id"], actor, True,
                                  self.policy.post_policy)
        cust = plan["customer_no"]
        if res.outcome is not Outcome.OK:
            raise ExceptionRefused(*self._hand_refused(res.outcome, cust, row))
        pay = tx.payment_by_receipt(res.receipt_no)
        to = "" if cust == row["customer_no"] else f" to customer {cust}"
        note = f"posted by hand as receipt {res.receipt_no}{to}: {reason}"
        sql.item_resolve(tx, item_id, actor, note, self.now(), action="recon-post",
                         payment_id=pay["id"],
                         detail={"reason": reason, "receipt_no": res.receipt_no,
                                 "customer_no": cust, "bank_customer_no": row["customer_no"],
                                 "amount": row["bank_amount"], "replaced": replaced})
        return {"item": item_id, "receipt_no": res.receipt_no, "payment_id": pay["id"],
                "customer_no": cust, "amount": row["bank_amount"], "bank": self.name,
                "settle_date": row["settle_date"], "serial": row["serial"],
                "run_no": row["run_no"], "replaced": replaced}

    def _hand_refused(self, o: Outcome, cust: str, row: dict) -> tuple[str, str | None]:
        """(message, field) for an outcome refusing a post by hand."""
        if o is Outcome.AMOUNT_REJECTED:
            return (f"amount {fen_to_yuan(row['bank_amount'])} not accepted for customer"
                    f" {cust} under the bank's post_policy {self.policy.post_policy!r}", None)
        return {
            Outcome.NOT_FOUND: (f"customer {cust} not found at the utility", "customer"),
            Outcome.ACCOUNT_LOCKED: (f"customer {cust} is locked or suspended", "customer"),
            Outcome.NOTHING_DUE: (f"customer {cust} has nothing open to pay", "customer"),
            Outcome.FORMAT_ERROR: (f"customer {cust!r} cannot be posted to", "customer"),
        }.get(o, (f"the ledger refused it: {o.value}", None))

    # -- outputs ------------------------------------------------------------------------

    def write_outputs(self, rep: RunReport) -> dict:
        """The report (text, CSV, PDF) and, for plugins that have one, the error
        file written back to the exchange folder."""
        from bankgate.domain import recon_report

        out_dir = self.report_dir()
        try:
            rep.outputs.update(recon_report.write_reports(rep, out_dir, pdf=self.policy.pdf))
            errors = statement_error_file(self.format)
            if self.policy.error_file and not rep.dry_run and errors is not None:
                name, data = errors.error_file(self.bank.bank_code, rep.settle_date, rep.items)
                rep.outputs["error_file"] = str(
                    write_atomic(self.exchange_dir() / name, data))
        except OSError as e:
            log.error("%s %s %s: cannot write the outputs: %s", self.name, rep.settle_date,
                      rep.label, e)
            rep.outputs["error"] = str(e)
        return rep.outputs


# -- the exceptions, for an operator ----------------------------------------------------

LIST_LIMIT = 500  # open exceptions a page lists
RESOLVED_DAYS = 62  # resolutions of settle dates this recent are listed
RESOLVED_LIMIT = 50
MAX_NOTE = 500


class ExceptionRefused(ValueError):
    """An operator's action on an exception refused: nothing was changed.
    ``field`` names the input the message belongs to (``exception``,
    ``customer``, ``reason``), when one does; ``missing``: there is no such
    item to act on (none, or a dry run's), rather than one whose state refuses."""

    def __init__(self, message: str, field: str | None = None, *, missing: bool = False):
        super().__init__(message)
        self.message, self.field, self.missing = message, field, missing


def _note(text: str, field: str) -> str:
    text = (text or "").strip()
    if not text:
        raise ExceptionRefused("say what was done and why (it goes into the audit trail)",
                               field)
    if len(text) > MAX_NOTE:
        raise ExceptionRefused(f"at most {MAX_NOTE} characters", field)
    return text


def customer_number(text: str) -> str:
    """A corrected customer number: 1 to 32 printable characters N8 can store."""
    text = (text or "").strip()
    ok = 0 < len(text) <= 32 and text.isprintable() and " " not in text
    try:
        text.encode("gbk")
    except UnicodeEncodeError:
        ok = False
    if not ok:
        raise ExceptionRefused("expected a customer number (1 to 32 characters, no spaces)",
                               "customer")
    return text


def _check_open(row: dict | None, item_id: int) -> None:
    """Refuse an item that is missing, of a dry run, or no longer an exception."""
    if row is None:
        raise ExceptionRefused(f"no reconciliation item {item_id}", "exception", missing=True)
    if row["dry_run"]:
        raise ExceptionRefused(f"item {item_id} belongs to a dry run of {row['bank']}"
                               f" {row['settle_date']}: a dry run leaves nothing to do",
                               "exception", missing=True)
    if row["action"] != EXCEPTION:
        who = ""
        if row.get("resolved_by"):
            when = (f" on {row['resolved_at']:%Y-%m-%d %H:%M}" if row.get("resolved_at")
                    else "")
            who = f" by {row['resolved_by']}{when}: {row.get('resolved_note') or ''}"
        raise ExceptionRefused(f"item {item_id} is not an open exception: it is"
                               f" {row['action']}{who}", "exception")


def _taken(serial: str, j: dict) -> str:
    """Why a journal key taken by more than a refusal cannot be posted again."""
    if j["kind"] == "BLOCK":
        return (f"the bank reversed serial {serial} before its payment arrived (reversal"
                " first): ask the bank, then resolve the exception with a note")
    if j["kind"] == "PAY" and j["pay_receipt_no"]:
        if j["pay_status"] in STANDING:
            return f"serial {serial} is posted already, as receipt {j['pay_receipt_no']}"
        return (f"serial {serial} was posted as receipt {j['pay_receipt_no']}, now"
                f" {j['pay_status'].lower()}: the bank's serial cannot be posted twice; take"
                " the payment at the counter and resolve the exception with a note")
    return (f"serial {serial} is taken in the gateway's journal ({j['kind']},"
            f" {j['outcome']}): it cannot be posted under it")


def find_exception(store, item_id: int) -> dict:
    """One open exception with its run and the gateway's payment it names (read
    only); raises :class:`ExceptionRefused` for any other item."""
    row = store.run_sync(sql.item_get, item_id, readonly=True)
    _check_open(row, item_id)
    return row


def exception_bank(store, item_id: int) -> str:
    """The bank of a reconciliation item (any state); :class:`ExceptionRefused`
    when there is none."""
    row = store.run_sync(sql.item_get, item_id, readonly=True)
    if row is None:
        raise ExceptionRefused(f"no reconciliation item {item_id}", "exception", missing=True)
    return row["bank"]


def resolve_exception(store, item_id: int, *, actor: str, note: str,
                      now: datetime) -> dict:
    """Close an open exception after handling it by hand: RESOLVED with who, when
    and ``note`` (the reason), audited ``recon-resolve`` with the item before and
    after, in one transaction.  A later run of the same statement keeps it
    resolved.  Raises :class:`ExceptionRefused` (nothing changed) for an item
    that is missing, of a dry run or not an open exception."""
    note = _note(note, "reason")

    def tx_fn(tx):
        _check_open(sql.item_get(tx, item_id, lock=True), item_id)
        return sql.item_resolve(tx, item_id, actor, note, now)

    return store.run_sync(tx_fn)


def can_post(row: dict) -> bool:
    """Whether an open exception (a row of :func:`exceptions_page`) may be offered
    for a post by hand: a bank-only record with a serial and an amount, naming no
    standing payment, whose serial the journal has not or only as a refusal."""
    kind = row.get("journal_kind")
    journal_free = kind is None or (kind == "PAY" and row["journal_payment_id"] is None
                                    and row["journal_outcome"] not in ("OK", "PROCESSING"))
    return (row["category"] == BANK_ONLY and bool(row["serial"])
            and bool(row["bank_amount"]) and row["pay_status"] not in STANDING
            and journal_free)


def exceptions_page(store, today: date) -> dict:
    """What the console's exceptions page shows (read only): the open exceptions
    of each bank's and date's latest run, newest date first (at most
    :data:`LIST_LIMIT`, ``more`` when there are more), each with ``postable``;
    and the resolutions of the last :data:`RESOLVED_DAYS` days, newest first."""
    rows = store.run_sync(sql.exceptions_open, LIST_LIMIT + 1, readonly=True)
    for r in rows:
        r["postable"] = can_post(r)
    resolved = store.run_sync(sql.resolved_recently, today - timedelta(days=RESOLVED_DAYS),
                              RESOLVED_LIMIT, readonly=True)
    return {"open": rows[:LIST_LIMIT], "more": len(rows) > LIST_LIMIT, "resolved": resolved}


# -- statements from the gateway's own journal (simulation, tests) ---------------------


PERTURBATIONS = ("bank-only", "utility-only", "amount", "date", "totals")


def statement_from_journal(ledger, bank, codec, d: date, perturb: Iterable[str] = (),
                           seed: int = 0) -> tuple[str, bytes, list[str]]:
    """The statement the bank would send for ``d`` if it agreed with the
    gateway, optionally with one record of each perturbation in ``perturb``
    (see :data:`PERTURBATIONS`).  Returns ``(file name, bytes, notes)``."""
    import random

    rng = random.Random(seed)
    store = ledger.store
    fmt = statement_format(codec)
    if not can_write(fmt):  # say so before reading anything: NoWriter, naming what it lacks
        write_statement(fmt, codec, bank, d, [])
    rows = store.run_sync(sql.standing_for_statement, bank.name, d)
    recs = [dict(serial=r["serial"], trade_date=r["trade_date"],
                 trade_time=r["trade_time"] or "000000", customer_no=r["customer_no"],
                 amount=r["amount"], channel=r["channel"] or "01", bill_ids=r["bill_ids"],
                 receipt_no=r.get("receipt_no") or "", status=r.get("status") or "POSTED",
                 pan_masked=r["pan_masked"] or "", terminal_id=(r["teller"] or "")[:8])
            for r in rows]
    notes: list[str] = []
    wanted = set(perturb)
    unknown = wanted - set(PERTURBATIONS)
    if unknown:
        raise ValueError(f"unknown perturbation(s) {', '.join(sorted(unknown))}"
                         f" (known: {', '.join(PERTURBATIONS)})")
    pool = list(range(len(recs)))
    rng.shuffle(pool)

    def take(what: str) -> dict | None:
        if not pool:
            notes.append(f"{what}: no payment left to perturb")
            return None
        return recs[pool.pop()]

    if "utility-only" in wanted and (r := take("utility-only")) is not None:
        r["drop"] = True
        notes.append(f"utility-only: left out {r['serial']} ({fen_to_yuan(r['amount'])})")
    if "amount" in wanted and (r := take("amount")) is not None:
        r["amount"] += 100
        notes.append(f"amount differs: {r['serial']} now {fen_to_yuan(r['amount'])}")
    if "date" in wanted and (r := take("date")) is not None:
        r["trade_date"] = d - timedelta(days=1)
        notes.append(f"date differs: {r['serial']} dated {r['trade_date']:%Y-%m-%d}")
    if "bank-only" in wanted:
        used = {r["customer_no"] for r in recs}
        for cust in store.run_sync(sql.customers_with_open_bills, used, 20):
            q = ledger.query(m.QueryRequest(m.Origin(bank=bank.name, trade_date=d), cust))
            if q.outcome is not Outcome.OK or not q.bills:
                continue
            b = q.bills[0]
            serial = f"SIM{d:%Y%m%d}{rng.randrange(10**8):08d}"
            # a statement naming bills pays one bill, else all that is due
            amount = b.amount + b.late_fee if fmt.names_bills else q.total_due + q.late_fee
            recs.append(dict(serial=serial, trade_date=d, trade_time="120000", customer_no=cust,
                             amount=amount, channel="04",
                             bill_ids=(b.bill_id,) if fmt.names_bills else ()))
            notes.append(f"bank-only: added {serial} for {cust} ({fen_to_yuan(amount)})")
            break
        else:
            notes.append("bank-only: no customer with open bills to add a record for")
    recs = [r for r in recs if not r.get("drop")]
    declared = None
    if "totals" in wanted:
        if fmt.has_header:
            declared = (len(recs) + 1, sum(r["amount"] for r in recs) + 100)
            notes.append(f"totals differ: header says {declared[0]} records,"
                         f" {fen_to_yuan(declared[1])}")
        else:
            notes.append("totals: this format has no header to perturb")
    recs.sort(key=lambda r: r["serial"])
    return fmt.file_name(bank.bank_code, d), write_statement(fmt, codec, bank, d, recs,
                                                              declared), notes


def write_statement(fmt: StatementFormat, codec, bank, d: date, records: list[dict],
                    declared: tuple[int, int] | None = None) -> bytes:
    """``fmt.write`` for ``bank``: a format that cannot write, or a writer that
    fails, is a :class:`StatementError` of one line naming the bank and plugin."""
    who = f"bank {bank.name!r} (plugin {codec.name!r})"
    try:
        return fmt.write(bank.bank_code, d, records, declared)
    except NotImplementedError:
        raise NoWriter(f"{who}: its statement_format cannot write statements (write raises"
                       " NotImplementedError)") from None
    except StatementError as e:
        raise type(e)(f"bank {bank.name!r}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a plugin's bug, said in one line
        raise StatementError(f"{who}: writing the statement failed:"
                             f" {type(e).__name__}: {e}") from None
