"""Withholding (代扣 / 托收): agreements, batch files and their results.

- **Agreements.**  A customer signs up for withholding with a bank and an
  account number; both live in N8's customer record (``withholding_bank``
  holds the bank's *code*, as N8 installations do, ``withholding_account``
  the account), written through the N8 mapping and audited.
- **Batch files** (ref-delim §6).  For a bank and a deduct date the gateway
  writes one ``.PK`` line per open bill of every active customer signed up
  with that bank -- large customers' collection orders (托收) included, see
  below -- into the bank's exchange folder, ``{code}{date}{seq:02}.PK`` with
  the sequence counting up per bank and day.  A bill already waiting in an
  earlier file, or in a card debit whose outcome is open, is left out.
- **Results.**  The bank's ``.PKJG`` is matched line by line against the
  batch (a file that does not match is refused whole, nothing changes);
  every debited line is posted with :meth:`Ledger.pay` under
  ``(bank, deduct_date, bank_serial)`` against exactly its bill, also on a
  date already closed.  The ledger's journal makes that exactly once: the
  same file processed twice posts nothing twice.  Failures are reported by
  reason for the operators.

**Large customers (托收).**  Large customers (N8 ``large_customer = 1``:
factories, institutions) do not pay at the counter; they settle by
collection order from the account in their supply contract.  Here that
account is their withholding account on file (``withholding sign`` like
anyone else), and their collection orders are lines of the same ``.PK``
file: one line per open bill, always the whole outstanding bill with its
late fee (never split).  They are included in every batch by default;
``--customers large`` writes a file of collection orders only (utilities
send them on their own schedule) and ``--customers households`` leaves
them out.  A refused collection order (拒付) comes back like any other
failure (result 1-4) and the bill stays open for the account manager; the
report marks large customers' lines.

**Several processes or nodes on one database.**  Writing a bank's batch file
holds the lease ``withholding-batch:{bank}`` -- per bank, not per date: a bill
waiting in any of the bank's files is left out of the next, so two files being
written at once could both take it -- and reading a result file holds
``withholding-result:{bank}:{deduct date}`` (:mod:`bankgate.domain.leases`).
Asked while another process holds one, the command refuses, naming the holder,
and changes nothing.

Real-time card debits (卡扣, ref-delim §7) are in :mod:`bankgate.domain.carddebit`.
Settings live in each bank's ``[bank.options]`` table; the application parses
them (:func:`bankgate.app.options.withholding_options`, ``docs/withholding.rst``)
and hands :class:`Withholding` the result.  This module knows no configuration
file, no command line and no socket: the operator's commands are
:mod:`bankgate.app.cli.withholding`.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Protocol

from bankgate.canon import messages as m
from bankgate.canon.files import write_atomic
from bankgate.canon.masking import mask_account
from bankgate.canon.messages import Outcome
from bankgate.canon.money import fen_to_yuan
from bankgate.domain.leases import Lease, LeaseBusy, LeaseLost, Leases
from bankgate.domain.ledger import Ledger, late_fee
from bankgate.store import withholding as sql
from bankgate.store.db import StoreUnavailable
from bankgate.store.tx import Tx

#: ``bg_payment.source`` of withholding payments.
SOURCE = "withholding"
CHANNEL = m.Channel.WITHHOLDING.value
ACCOUNT_RE = re.compile(r"[0-9A-Za-z-]{4,32}")
CUSTOMER_CHOICES = ("all", "large", "households")
#: seconds a batch or result file's lease holds without renewal (renewed between
#: steps): a process that dies while writing one blocks the bank's next for so long
LEASE_TTL = 600.0

#: .PKJG result codes (ref-delim §6) for codecs that do not name their own
RESULT_REASONS = {
    0: "debited (扣款成功)",
    1: "insufficient funds (余额不足)",
    2: "account and name do not match (户名不符)",
    3: "no such account (账户不存在)",
    4: "duplicate debit (重复扣款)",
}


class WithholdingError(ValueError):
    """An operator's request that cannot be done; the message says why."""


class ResultFileRefused(WithholdingError):
    """A result file that does not match its batch: nothing was changed."""

    def __init__(self, file_name: str, problems: list[str]):
        self.file_name, self.problems = file_name, problems
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        super().__init__(f"{file_name}: refused, nothing changed: "
                         + "; ".join(problems[:10]) + more)


# -- settings: [bank.options] --------------------------------------------------------


@dataclass(frozen=True)
class WithholdingOptions:
    """A bank's withholding settings (``[bank.options]``; see docs/withholding.rst),
    parsed and validated by :func:`bankgate.app.options.parse_options`."""

    enabled: bool = False  # withholding = true: agreements and batch files
    utility_code: str = ""  # our code at the bank, in every 560/561
    debit_host: str | None = None  # client endpoint of the bank's debit host
    debit_timeout: float = 30.0  # seconds to wait for a 560/561 answer
    debit_persistent: bool = False  # the host takes several requests per connection
    debit_retry: float = 30.0  # first wait before a 561 is sent again
    debit_retry_max: float = 900.0  # the wait doubles up to this
    debit_reconnect: float = 1.0  # first wait before reconnecting
    debit_reconnect_max: float = 60.0  # the wait doubles up to this
    debit_idle: float = 60.0  # close an idle connection after this (0: never)
    debit_host_simulate: bool = False  # demo: also run the simulated bank host

    @property
    def card_debit(self) -> bool:
        return self.debit_host is not None


#: the ``[bank.options]`` keys :class:`WithholdingOptions` is read from
OPTION_KEYS = ("withholding", "utility_code", "debit_host", "debit_timeout", "debit_persistent",
               "debit_retry", "debit_retry_max", "debit_reconnect", "debit_reconnect_max",
               "debit_idle", "debit_host_simulate")


class Bank(Protocol):
    """A configured bank as the rules see it (``bankgate.app.config.BankConfig``)."""

    name: str
    plugin: str
    bank_code: str
    exchange_dir: str | None


def exchange_dir(bank: Bank, data_dir: str) -> Path:
    """The bank's file folder: ``exchange_dir`` or ``{data_dir}/exchange/{name}``."""
    return Path(bank.exchange_dir) if bank.exchange_dir else Path(data_dir) / "exchange" / bank.name


def dues(tx: Tx, bills: list[dict], customer_class: str, as_of: date,
         tariffs: dict | None = None) -> list[tuple[dict, int, int]]:
    """``(bill, outstanding principal, late fee as of as_of)`` the way the
    ledger computes them, so the amounts asked for are the amounts it posts."""
    tariffs = tariffs if tariffs is not None else tx.tariffs()
    out = []
    for b in bills:
        t = tariffs.get((b["fee_type"], customer_class))
        outstanding = b["amount"] - b["paid_amount"]
        late = late_fee(outstanding, b["due_date"], as_of, t["late_fee_ppm"] if t else 0,
                        b["late_fee_paid"])
        out.append((b, outstanding, late))
    return out


# -- results ------------------------------------------------------------------------------


@dataclass
class AgreementChange:
    customer_no: str
    name: str
    bank_code: str | None
    account: str  # masked
    previous_bank: str | None
    previous_account: str  # masked
    warnings: list[str] = field(default_factory=list)


@dataclass
class BatchResult:
    batch: dict | None  # None: nothing to collect, no file written
    path: Path | None
    skipped: dict[str, int]
    large: int = 0  # lines of large customers (collection orders)

    @property
    def count(self) -> int:
        return self.batch["record_count"] if self.batch else 0

    @property
    def total(self) -> int:
        return self.batch["total"] if self.batch else 0


@dataclass
class LineIssue:
    line_no: int
    bill_id: str
    customer_no: str
    name: str
    account: str  # masked
    total: int
    result: int | None
    reason: str
    large: bool
    bank_serial: str = ""


@dataclass
class BatchReport:
    bank: str
    file_name: str
    deduct_date: date
    status: str
    record_count: int
    total: int
    debited: int = 0
    debited_total: int = 0
    posted: int = 0
    posted_total: int = 0
    waiting: int = 0  # lines without a result yet
    large: int = 0
    failed: dict[str, tuple[int, int]] = field(default_factory=dict)  # reason -> count, total
    failures: list[LineIssue] = field(default_factory=list)
    unposted: list[LineIssue] = field(default_factory=list)  # debited, not in the books
    posted_now: int = 0  # posted by this processing run

    @property
    def attention(self) -> bool:
        """Something an operator must look at: failed or unposted lines."""
        return bool(self.failures or self.unposted)


def result_reasons(codec) -> dict[int, str]:
    """The ``.PKJG`` result codes of ``codec`` and what they mean."""
    return getattr(codec, "pkjg_results", None) or RESULT_REASONS


def report_text(rep: BatchReport) -> str:
    """The report as an operator reads it on a terminal."""
    out = [
        f"{rep.file_name}  bank {rep.bank}  deduct date {rep.deduct_date}  {rep.status}",
        f"  lines {rep.record_count} ({fen_to_yuan(rep.total)})"
        f"{f', of which {rep.large} collection order(s) (托收)' if rep.large else ''}",
        f"  debited {rep.debited} ({fen_to_yuan(rep.debited_total)}),"
        f" posted {rep.posted} ({fen_to_yuan(rep.posted_total)})"
        + (f", {rep.posted_now} just now" if rep.posted_now else ""),
    ]
    if rep.waiting:
        out.append(f"  waiting for the bank's result: {rep.waiting} line(s)")
    if rep.failed:
        out.append("  failed by reason:")
        for reason, (n, total) in sorted(rep.failed.items()):
            out.append(f"    {reason:<44} {n:>6}  {fen_to_yuan(total):>14}")
    if rep.unposted:
        out.append(f"  DEBITED BUT NOT POSTED ({len(rep.unposted)}): the bank took the money,"
                   " the books do not show it -- an operator must settle each:")
        for i in rep.unposted:
            out.append(f"    line {i.line_no:>5} bill {i.bill_id} customer {i.customer_no}"
                       f" {fen_to_yuan(i.total)} serial {i.bank_serial}: {i.reason}")
    if rep.failures:
        out.append(f"  failed lines ({len(rep.failures)}):")
        for i in rep.failures:
            tag = " [托收]" if i.large else ""
            out.append(f"    line {i.line_no:>5} {i.customer_no} {i.name}{tag} account"
                       f" {i.account} bill {i.bill_id} {fen_to_yuan(i.total)}: {i.reason}")
    return "\n".join(out)


def write_report_csv(rep: BatchReport, path: Path) -> Path:
    """Failed and unposted lines as CSV (UTF-8 with BOM, for spreadsheets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "line", "kind", "customer_no", "name", "large_customer", "account",
                    "bill_id", "total_yuan", "result", "reason", "bank_serial"])
        for kind, items in (("unposted", rep.unposted), ("failed", rep.failures)):
            for i in items:
                w.writerow([rep.file_name, i.line_no, kind, i.customer_no, i.name,
                            int(i.large), i.account, i.bill_id, fen_to_yuan(i.total),
                            "" if i.result is None else i.result, i.reason, i.bank_serial])
    return path


# -- the service ---------------------------------------------------------------------


class Withholding:
    """Agreements, batch files and results over one ledger (synchronous:
    call it from the CLI or on the store's thread pool).

    ``banks`` are the configured banks (:class:`Bank`), ``codecs`` their
    plugins by name, ``options`` every bank's settings, already validated
    (:func:`bankgate.app.options.withholding_options`); files go under
    ``data_dir`` unless a bank names its ``exchange_dir``."""

    def __init__(self, ledger: Ledger, banks: Iterable[Bank], codecs: dict,
                 options: dict[str, WithholdingOptions], *, data_dir: str,
                 now: Callable[[], datetime] | None = None, leases: Leases | None = None):
        self.ledger = ledger
        self.store = ledger.store
        self.banks = list(banks)
        self.codecs = codecs
        self.options = options
        self.data_dir = data_dir
        self.now = now or ledger.now
        self.leases = leases or Leases(self.store, now=self.now, ttl=LEASE_TTL)

    @contextmanager
    def _exclusive(self, name: str, what: str, actor: str) -> Iterator[Lease]:
        """Hold the lease ``name`` for the block; :class:`WithholdingError`
        (nothing done) while another process holds it."""
        try:
            lease = self.leases.acquire(name, ttl=LEASE_TTL, job={"job": what, "by": actor})
        except LeaseBusy as e:
            raise WithholdingError(
                f"{what}: being done by {e.holder} since {e.row['acquired_at']:%H:%M:%S};"
                " try again when it is done (nothing was changed)") from None
        try:
            yield lease
        except LeaseLost as e:
            raise WithholdingError(f"{what}: {e} (run it again)") from None
        finally:
            lease.release()

    # -- banks -------------------------------------------------------------------

    def _configured(self, name: str) -> Bank:
        for b in self.banks:
            if b.name == name:
                return b
        raise WithholdingError(f"no bank named {name!r}"
                               f" (configured: {', '.join(b.name for b in self.banks)})")

    def bank(self, name: str) -> tuple[Bank, WithholdingOptions, object]:
        """A configured bank with withholding enabled."""
        b = self._configured(name)
        opts = self.options[b.name]
        if not opts.enabled:
            raise WithholdingError(f"bank {name!r} does not do withholding"
                                   f" (set bank.{name}.options.withholding = true)")
        return b, opts, self.codecs[b.plugin]

    def banks_by_code(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for b in self.banks:
            out.setdefault(b.bank_code, []).append(b.name)
        return out

    # -- agreements ----------------------------------------------------------------

    def sign(self, customer_no: str, bank_name: str, account_no: str,
             actor: str) -> AgreementChange:
        b, _opts, _codec = self.bank(bank_name)
        account_no = account_no.strip()
        if not ACCOUNT_RE.fullmatch(account_no):
            raise WithholdingError("account number: expected 4-32 letters, digits or '-'")
        if not actor.strip():
            raise WithholdingError("an agreement change needs an actor")
        detail = {"bank": b.bank_code, "bank_name": b.name, "account": mask_account(account_no)}
        old = self.store.run_sync(sql.agreement_set, customer_no, b.bank_code, account_no,
                                  self.now(), actor, "withholding-sign", detail)
        if old is None:
            raise WithholdingError(f"no customer {customer_no!r}")
        warnings = []
        if old["status"] != "A":
            warnings.append("the customer's account is locked (status "
                            f"{old['status']}): nothing is debited until it is active")
        if old["withholding_bank"] and (old["withholding_bank"] != b.bank_code
                                        or old["withholding_account"] != account_no):
            warnings.append(f"replaces the agreement with bank code {old['withholding_bank']}"
                            f" account {mask_account(old['withholding_account'])}")
        return AgreementChange(customer_no, old["name"], b.bank_code, mask_account(account_no),
                               old["withholding_bank"], mask_account(old["withholding_account"]),
                               warnings)

    def cancel(self, customer_no: str, actor: str, reason: str = "") -> AgreementChange:
        if not actor.strip():
            raise WithholdingError("an agreement change needs an actor")
        cur = self.store.run_sync(sql.customer, customer_no, readonly=True)
        if cur is None:
            raise WithholdingError(f"no customer {customer_no!r}")
        if not (cur["withholding_account"] or "").strip():
            raise WithholdingError(f"customer {customer_no} has no withholding agreement")
        detail = {"previous_bank": cur["withholding_bank"],
                  "previous_account": mask_account(cur["withholding_account"]),
                  "reason": reason}
        old = self.store.run_sync(sql.agreement_set, customer_no, None, None, self.now(), actor,
                                  "withholding-cancel", detail)
        busy = self.store.run_sync(self._busy_of, customer_no, readonly=True)
        warnings = [f"bill {b}: {why} (still settled when it comes back)"
                    for b, why in sorted(busy.items())]
        return AgreementChange(customer_no, old["name"], None, "", old["withholding_bank"],
                               mask_account(old["withholding_account"]), warnings)

    @staticmethod
    def _busy_of(tx: Tx, customer_no: str) -> dict[str, str]:
        ids = [b["bill_id"] for b in tx.open_bills(customer_no)]
        return sql.busy_bills(tx, ids) if ids else {}

    def agreements(self, bank_name: str | None = None, limit: int | None = None) -> list[dict]:
        codes = None
        if bank_name is not None:
            codes = [self._configured(bank_name).bank_code]
        rows = self.store.run_sync(sql.agreements, codes, limit, readonly=True)
        names = self.banks_by_code()
        for r in rows:
            r["banks"] = names.get(r["withholding_bank"], [])
            r["account"] = mask_account(r.pop("withholding_account"))
        return rows

    # -- batch files ----------------------------------------------------------------

    def generate_batch(self, bank_name: str, deduct_date: date, customers: str = "all",
                       actor: str = "operator") -> BatchResult:
        """Write the ``.PK`` file of ``bank_name`` for ``deduct_date``."""
        b, _opts, codec = self.bank(bank_name)
        if customers not in CUSTOMER_CHOICES:
            raise WithholdingError(f"customers: expected one of {', '.join(CUSTOMER_CHOICES)}")
        large = {"all": None, "large": True, "households": False}[customers]
        with self._exclusive(f"withholding-batch:{b.name}", f"{b.name}: a batch file",
                             actor) as lease:
            batch, skipped, n_large = self.store.run_sync(
                self._generate_tx, b, codec, deduct_date, large, customers, actor, self.now())
            if batch is None:
                return BatchResult(None, None, skipped)
            try:
                lease.check()
                path = self._write_batch_file(b, codec, batch)
            except LeaseLost:
                self.store.run_sync(sql.batch_delete, batch["id"])
                raise WithholdingError(f"{batch['file_name']}: another process took the"
                                       " batch file's lease over meanwhile; the batch was"
                                       " not kept") from None
            except OSError as e:
                self.store.run_sync(sql.batch_delete, batch["id"])
                raise WithholdingError(f"cannot write {batch['file_name']} into"
                                       f" {exchange_dir(b, self.data_dir)}: {e.strerror};"
                                       " the batch was not kept") from None
        return BatchResult(batch, path, skipped, n_large)

    def _generate_tx(self, tx: Tx, b: Bank, codec, d: date, large, customers: str,
                     actor: str, now: datetime):
        rows = sql.batch_candidates(tx, b.bank_code, large)
        busy = sql.busy_bills(tx) if rows else {}
        tariffs = tx.tariffs()
        lines: list[dict] = []
        skipped: Counter = Counter()
        n_large = 0
        for r in rows:
            if r["bill_id"] in busy:
                skipped["already waiting in a file or a card debit"] += 1
                continue
            account = r["account_no"].strip()
            if not ACCOUNT_RE.fullmatch(account):
                skipped["account number on file is not usable"] += 1
                continue
            (_b, outstanding, late), = dues(tx, [r], r["customer_class"], d, tariffs)
            if outstanding + late <= 0:
                continue
            n_large += r["large_customer"] == 1
            lines.append({"line_no": len(lines) + 1, "bill_id": r["bill_id"],
                          "customer_no": r["customer_no"], "account_no": account,
                          "amount": outstanding, "late_fee": late, "total": outstanding + late})
        if not lines:
            return None, dict(skipped), 0
        try:
            batch = sql.batch_create(
                tx, b.name, d, lambda seq: codec.pk_name(b.bank_code, d, seq), lines, now, actor,
                {"customers": customers, "large": n_large, "skipped": dict(skipped)})
        except ValueError as e:  # the 99th file of the day
            raise WithholdingError(f"{b.name} {d}: {e}") from None
        return batch, dict(skipped), n_large

    def _write_batch_file(self, b: Bank, codec, batch: dict) -> Path:
        lines = self.store.run_sync(sql.batch_lines, batch["id"], readonly=True)
        records = [{"bill_id": ln["bill_id"], "customer_no": ln["customer_no"],
                    "name": ln["name"] or "", "account_no": ln["account_no"],
                    "period": ln["period"] or "", "amount": ln["amount"],
                    "late_fee": ln["late_fee"], "total": ln["total"]} for ln in lines]
        data = codec.write_pk(batch["deduct_date"], records, batch["generated_at"])
        return write_atomic(exchange_dir(b, self.data_dir) / batch["file_name"], data)

    def batch(self, bank_name: str, file_name: str) -> dict:
        b, _o, _c = self.bank(bank_name)
        row = self.store.run_sync(sql.batch_by_file, b.name, Path(file_name).name,
                                  readonly=True)
        if row is None:
            raise WithholdingError(f"{bank_name} has no batch file {file_name!r}")
        return row

    def batches(self, bank_name: str | None = None, deduct_date: date | None = None,
                limit: int = 50) -> list[dict]:
        return self.store.run_sync(sql.batches, bank_name, deduct_date, None, limit,
                                   readonly=True)

    def rewrite_batch(self, bank_name: str, file_name: str) -> Path:
        """Write a GENERATED batch's file again (lost or damaged in the folder)."""
        b, _o, codec = self.bank(bank_name)
        row = self.batch(bank_name, file_name)
        if row["status"] != "GENERATED":
            raise WithholdingError(f"{row['file_name']} is {row['status'].lower()}: not rewritten")
        return self._write_batch_file(b, codec, row)

    def cancel_batch(self, bank_name: str, file_name: str, actor: str, reason: str) -> dict:
        """Withdraw a batch the bank will not process: its bills become free
        for the next file.  Only before a result came back."""
        if not reason.strip():
            raise WithholdingError("cancelling a batch needs a reason")
        b, _o, _c = self.bank(bank_name)
        row = self.batch(bank_name, file_name)
        if not self.store.run_sync(sql.batch_set_status, row["id"], "CANCELLED", "GENERATED",
                                   self.now(), actor, "withholding-batch-cancel",
                                   {"reason": reason}):
            raise WithholdingError(f"{row['file_name']} is {row['status'].lower()}:"
                                   " only a batch without a result can be cancelled")
        path = exchange_dir(b, self.data_dir) / row["file_name"]
        if path.exists():
            os.replace(path, path.with_name(path.name + ".cancelled"))
        return self.store.run_sync(sql.batch_get, row["id"], readonly=True)

    # -- results --------------------------------------------------------------------

    def result_files(self, bank_name: str) -> list[tuple[dict, Path]]:
        """Result files in the exchange folder for batches waiting for one."""
        b, _o, codec = self.bank(bank_name)
        folder = exchange_dir(b, self.data_dir)
        out = []
        for row in self.store.run_sync(sql.batches, b.name, None, "GENERATED", 1000,
                                       readonly=True):
            p = folder / codec.pkjg_name(row["file_name"])
            if p.is_file():
                out.append((row, p))
        return sorted(out, key=lambda x: x[0]["file_name"])

    def process_result(self, bank_name: str, data: bytes, file_name: str,
                       batch_file: str | None = None, actor: str = "withholding") -> BatchReport:
        """Read a ``.PKJG`` and post its debited lines (exactly once).

        Raises :class:`ResultFileRefused` (nothing changed) when the file
        cannot be read or does not match its batch line for line."""
        b, _o, codec = self.bank(bank_name)
        name = Path(file_name).name
        if batch_file is None:
            stem = name[:-5] if name.upper().endswith(".PKJG") else name
            row = None
            for c in (stem + ".PK", stem + ".pk"):
                row = self.store.run_sync(sql.batch_by_file, b.name, c, readonly=True)
                if row is not None:
                    break
        else:
            row = self.store.run_sync(sql.batch_by_file, b.name, Path(batch_file).name,
                                      readonly=True)
        if row is None:
            raise ResultFileRefused(name, [f"no batch file of {b.name} answers to it"
                                           " (name it after its .PK, or give --batch)"])
        if row["status"] == "CANCELLED":
            raise ResultFileRefused(name, [f"batch {row['file_name']} was cancelled"])
        try:
            records, _trailer = codec.read_pkjg(data)
        except ValueError as e:
            raise ResultFileRefused(name, [str(e)]) from None
        with self._exclusive(f"withholding-result:{b.name}:{row['deduct_date']:%Y-%m-%d}",
                             f"{b.name} {row['deduct_date']:%Y-%m-%d}: a result file",
                             actor) as lease:
            lines = self.store.run_sync(sql.batch_lines, row["id"], readonly=True)
            updates = self._match(name, lines, records)
            lease.check()
            self.store.run_sync(sql.record_results, row["id"], updates, self.now(), actor,
                                {"file": name})
            posted_now = self._post_lines(b, row, actor)
        rep = self.report(bank_name, row["file_name"])
        rep.posted_now = posted_now
        return rep

    @staticmethod
    def _match(name: str, lines: list[dict], records: list[dict]) -> list[tuple]:
        by_bill = {ln["bill_id"]: ln for ln in lines}
        problems: list[str] = []
        seen: set[str] = set()
        updates = []
        for r in records:
            where = f"line {r['line']}"
            ln = by_bill.get(r["bill_id"])
            if ln is None:
                problems.append(f"{where}: bill {r['bill_id']} is not in the batch")
                continue
            if r["bill_id"] in seen:
                problems.append(f"{where}: bill {r['bill_id']} answered twice")
                continue
            seen.add(r["bill_id"])
            if r["customer_no"] != ln["customer_no"]:
                problems.append(f"{where}: bill {r['bill_id']} is customer {ln['customer_no']},"
                                f" not {r['customer_no']}")
            if r["total"] != ln["total"]:
                problems.append(f"{where}: bill {r['bill_id']} total {fen_to_yuan(r['total'])},"
                                f" the batch asked for {fen_to_yuan(ln['total'])}")
            result = str(r["result"])
            serial = r["bank_serial"] or None
            if ln["result"] is not None:
                if ln["result"] != result or (result == "0" and ln["bank_serial"] != serial):
                    problems.append(f"{where}: bill {r['bill_id']} was already answered"
                                    f" {ln['result']} (serial {ln['bank_serial'] or '-'}),"
                                    f" this file says {result} (serial {serial or '-'})")
                continue
            updates.append((ln["id"], result, serial))
        missing = [ln["bill_id"] for ln in lines if ln["bill_id"] not in seen]
        if missing:
            problems.append(f"{len(missing)} line(s) of the batch have no result"
                            f" (first: bill {missing[0]})")
        if problems:
            raise ResultFileRefused(name, problems)
        return updates

    def _post_lines(self, b: Bank, batch: dict, actor: str) -> int:
        posted = 0
        d = batch["deduct_date"]
        for ln in self.store.run_sync(sql.batch_lines, batch["id"], readonly=True):
            if ln["result"] != "0" or ln["payment_id"] is not None:
                continue
            req = m.PaymentRequest(
                m.Origin(bank=b.name, trade_date=d, trade_time="000000", branch="",
                         teller="withholding", channel=CHANNEL),
                ln["bank_serial"], ln["customer_no"], ln["total"],
                content=m.fingerprint("PK", ln["customer_no"], ln["total"], ln["bill_id"]),
                bill_ids=(ln["bill_id"],),
            )
            try:
                res = self.ledger.pay(req, source=SOURCE, actor=actor, after_close=True)
            except StoreUnavailable:
                continue  # left unposted; processing the file again posts it
            p = self.store.run_sync(sql.line_link_payment, ln["id"], b.name, d,
                                    ln["bank_serial"], ln["customer_no"], ln["total"])
            if res.outcome is Outcome.OK and not res.retry and p is not None:
                posted += 1
        return posted

    # -- reports ------------------------------------------------------------------------

    def report(self, bank_name: str, file_name: str) -> BatchReport:
        b, _o, codec = self.bank(bank_name)
        row = self.batch(bank_name, file_name)
        lines = self.store.run_sync(sql.batch_lines, row["id"], readonly=True)
        reasons = result_reasons(codec)
        rep = BatchReport(b.name, row["file_name"], row["deduct_date"], row["status"],
                          row["record_count"], row["total"])
        unposted_serials = [ln["bank_serial"] for ln in lines
                            if ln["result"] == "0" and ln["payment_id"] is None]
        outcomes = self.store.run_sync(sql.journal_outcomes, b.name, row["deduct_date"],
                                       unposted_serials, readonly=True) if unposted_serials else {}
        for ln in lines:
            large = ln["large_customer"] == 1
            rep.large += large

            def issue(reason: str, ln=ln, large=large) -> LineIssue:
                return LineIssue(ln["line_no"], ln["bill_id"], ln["customer_no"],
                                 ln["name"] or "", mask_account(ln["account_no"]), ln["total"],
                                 None if ln["result"] is None else int(ln["result"]), reason,
                                 large, ln["bank_serial"] or "")

            if ln["result"] is None:
                rep.waiting += 1
            elif ln["result"] == "0":
                rep.debited += 1
                rep.debited_total += ln["total"]
                if ln["payment_id"] is not None:
                    rep.posted += 1
                    rep.posted_total += ln["total"]
                else:
                    oc = outcomes.get(ln["bank_serial"])
                    why = (f"the ledger refused it: {oc}" if oc else
                           "not posted yet (the database was unavailable): process the file"
                           " again")
                    rep.unposted.append(issue(why))
            else:
                reason = reasons.get(int(ln["result"]), f"result {ln['result']}")
                n, t = rep.failed.get(reason, (0, 0))
                rep.failed[reason] = (n + 1, t + ln["total"])
                rep.failures.append(issue(reason))
        return rep
