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

Real-time card debits (卡扣, ref-delim §7) are in :mod:`bankgate.domain.carddebit`.
Settings live in each bank's ``[bank.options]`` table; see
:func:`parse_options` and ``docs/withholding.rst``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import os
import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from bankgate.app.cli.argtypes import date_arg as _date
from bankgate.app.config import BankConfig, Config, ConfigError
from bankgate.canon import messages as m
from bankgate.canon.files import write_atomic
from bankgate.canon.masking import mask_account
from bankgate.canon.messages import Outcome
from bankgate.canon.money import fen_to_yuan
from bankgate.domain.ledger import Ledger, late_fee
from bankgate.store import withholding as sql
from bankgate.store.db import StoreUnavailable
from bankgate.store.tx import Tx

#: ``bg_payment.source`` of withholding payments.
SOURCE = "withholding"
CHANNEL = m.Channel.WITHHOLDING.value
ACCOUNT_RE = re.compile(r"[0-9A-Za-z-]{4,32}")
CUSTOMER_CHOICES = ("all", "large", "households")

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
    """A bank's withholding settings (``[bank.options]``; see docs/withholding.rst)."""

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


OPTION_KEYS = ("withholding", "utility_code", "debit_host", "debit_timeout", "debit_persistent",
               "debit_retry", "debit_retry_max", "debit_reconnect", "debit_reconnect_max",
               "debit_idle", "debit_host_simulate")


def parse_options(bank: BankConfig, source: str = "<config>") -> WithholdingOptions:
    """Validate the withholding keys of ``bank.options``; errors name the key
    (``bank.NAME.options.debit_timeout: expected ...``).  Other keys of the
    table belong to other parts of the gateway and are left alone."""
    o = bank.options or {}

    def err(key: str, problem: str) -> ConfigError:
        return ConfigError(source, f"bank.{bank.name}.options.{key}", problem)

    def boolean(key: str, default: bool | None) -> bool | None:
        if key not in o:
            return default
        if not isinstance(o[key], bool):
            raise err(key, f"expected true or false, got {o[key]!r}")
        return o[key]

    def seconds(key: str, default: float, low: float, high: float) -> float:
        if key not in o:
            return default
        v = o[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high:
            raise err(key, f"expected seconds between {low:g} and {high:g}, got {v!r}")
        return float(v)

    host = o.get("debit_host")
    if host is not None:
        if not isinstance(host, str) or not re.match(r"^(tcp|ssl|tcp6|unix):", host):
            raise err("debit_host", "expected a Twisted client endpoint string like"
                                    f" 'tcp:host=127.0.0.1:port=9202', got {host!r}")
        try:
            from twisted.internet.endpoints import clientFromString

            clientFromString(object(), host)
        except Exception as e:  # noqa: BLE001 - any parse failure is the operator's typo
            raise err("debit_host", f"not a usable client endpoint {host!r}: {e}") from None
    enabled = boolean("withholding", None)
    if enabled is None:
        enabled = host is not None
    if host is not None and not enabled:
        raise err("withholding", "is false while debit_host is set (card debits need it)")
    code = o.get("utility_code", "")
    if not isinstance(code, str) or (code and not re.fullmatch(r"[0-9A-Za-z_-]{1,20}", code)):
        raise err("utility_code", f"expected 1-20 letters, digits, '-' or '_', got {code!r}")
    if host is not None and not code:
        raise err("utility_code", "missing; required with debit_host (our code at the bank)")
    opts = WithholdingOptions(
        enabled=enabled, utility_code=code, debit_host=host,
        debit_timeout=seconds("debit_timeout", 30.0, 1, 600),
        debit_persistent=bool(boolean("debit_persistent", False)),
        debit_retry=seconds("debit_retry", 30.0, 1, 86400),
        debit_retry_max=seconds("debit_retry_max", 900.0, 1, 7 * 86400),
        debit_reconnect=seconds("debit_reconnect", 1.0, 0.1, 3600),
        debit_reconnect_max=seconds("debit_reconnect_max", 60.0, 0.1, 86400),
        debit_idle=seconds("debit_idle", 60.0, 0, 86400),
        debit_host_simulate=bool(boolean("debit_host_simulate", False)),
    )
    if opts.debit_retry_max < opts.debit_retry:
        raise err("debit_retry_max", f"expected at least debit_retry ({opts.debit_retry:g})")
    if opts.debit_reconnect_max < opts.debit_reconnect:
        raise err("debit_reconnect_max",
                  f"expected at least debit_reconnect ({opts.debit_reconnect:g})")
    if opts.debit_host_simulate:
        if host is None:
            raise err("debit_host_simulate", "needs debit_host (the address to play the host on)")
        simulated_listen(opts, lambda p: err("debit_host_simulate", p))
    return opts


def simulated_listen(opts: WithholdingOptions, err=None) -> str:
    """The server endpoint a simulated host listens on for ``debit_host``."""
    mt = re.match(r"^tcp:(?:host=)?([^:]+):(?:port=)?([0-9]+)(?::|$)", opts.debit_host or "")
    if not mt:
        problem = "the simulated host needs a tcp:host=...:port=... debit_host"
        raise (err(problem) if err else ValueError(problem))
    return f"tcp:{mt.group(2)}:interface={mt.group(1)}"


BATCH_API = ("pk_name", "pkjg_name", "write_pk", "read_pkjg")
DEBIT_API = ("encode_debit", "decode_debit_response", "encode_debit_reversal",
             "decode_debit_reversal_response")


def check_config(cfg: Config, codecs: dict | None = None) -> dict[str, WithholdingOptions]:
    """Every bank's withholding options, validated (also against its plugin
    when ``codecs`` is given).  Raises :class:`ConfigError` naming the key."""
    out = {}
    for b in cfg.banks:
        opts = parse_options(b, cfg.source)
        if codecs is not None and b.plugin in codecs:
            codec = codecs[b.plugin]
            if opts.enabled and not all(hasattr(codec, a) for a in BATCH_API):
                raise ConfigError(cfg.source, f"bank.{b.name}.options.withholding",
                                  f"plugin {b.plugin!r} has no withholding files (.PK/.PKJG)")
            if opts.card_debit and not all(hasattr(codec, a) for a in DEBIT_API):
                raise ConfigError(cfg.source, f"bank.{b.name}.options.debit_host",
                                  f"plugin {b.plugin!r} has no real-time debit (560/561)")
        out[b.name] = opts
    return out


def exchange_dir(bank: BankConfig, data_dir: str) -> Path:
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


def _reasons(codec) -> dict[int, str]:
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
    call it from the CLI or on the store's thread pool)."""

    def __init__(self, ledger: Ledger, cfg: Config, codecs: dict,
                 now: Callable[[], datetime] | None = None):
        self.ledger = ledger
        self.store = ledger.store
        self.cfg = cfg
        self.codecs = codecs
        self.now = now or ledger.now
        self.options = check_config(cfg, codecs)

    # -- banks -------------------------------------------------------------------

    def bank(self, name: str) -> tuple[BankConfig, WithholdingOptions, object]:
        """A configured bank with withholding enabled."""
        try:
            b = self.cfg.bank(name)
        except KeyError as e:
            raise WithholdingError(e.args[0]) from None
        opts = self.options[b.name]
        if not opts.enabled:
            raise WithholdingError(f"bank {name!r} does not do withholding"
                                   f" (set bank.{name}.options.withholding = true)")
        return b, opts, self.codecs[b.plugin]

    def banks_by_code(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for b in self.cfg.banks:
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
            try:
                codes = [self.cfg.bank(bank_name).bank_code]
            except KeyError as e:
                raise WithholdingError(e.args[0]) from None
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
        batch, skipped, n_large = self.store.run_sync(
            self._generate_tx, b, codec, deduct_date, large, customers, actor, self.now())
        if batch is None:
            return BatchResult(None, None, skipped)
        try:
            path = self._write_batch_file(b, codec, batch)
        except OSError as e:
            self.store.run_sync(sql.batch_delete, batch["id"])
            raise WithholdingError(f"cannot write {batch['file_name']} into"
                                   f" {exchange_dir(b, self.cfg.data_dir)}: {e.strerror};"
                                   " the batch was not kept") from None
        return BatchResult(batch, path, skipped, n_large)

    def _generate_tx(self, tx: Tx, b: BankConfig, codec, d: date, large, customers: str,
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

    def _write_batch_file(self, b: BankConfig, codec, batch: dict) -> Path:
        lines = self.store.run_sync(sql.batch_lines, batch["id"], readonly=True)
        records = [{"bill_id": ln["bill_id"], "customer_no": ln["customer_no"],
                    "name": ln["name"] or "", "account_no": ln["account_no"],
                    "period": ln["period"] or "", "amount": ln["amount"],
                    "late_fee": ln["late_fee"], "total": ln["total"]} for ln in lines]
        data = codec.write_pk(batch["deduct_date"], records, batch["generated_at"])
        return write_atomic(exchange_dir(b, self.cfg.data_dir) / batch["file_name"], data)

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
        path = exchange_dir(b, self.cfg.data_dir) / row["file_name"]
        if path.exists():
            os.replace(path, path.with_name(path.name + ".cancelled"))
        return self.store.run_sync(sql.batch_get, row["id"], readonly=True)

    # -- results --------------------------------------------------------------------

    def result_files(self, bank_name: str) -> list[tuple[dict, Path]]:
        """Result files in the exchange folder for batches waiting for one."""
        b, _o, codec = self.bank(bank_name)
        folder = exchange_dir(b, self.cfg.data_dir)
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
        lines = self.store.run_sync(sql.batch_lines, row["id"], readonly=True)
        updates = self._match(name, lines, records)
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

    def _post_lines(self, b: BankConfig, batch: dict, actor: str) -> int:
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
        reasons = _reasons(codec)
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


# -- the command line ------------------------------------------------------------------------




def _pairs(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(","):
        if not part.strip():
            continue
        k, sep, v = part.partition("=")
        if not sep or not k.strip() or not v.strip():
            raise argparse.ArgumentTypeError(f"expected ACCOUNT=CODE[,...], got {text!r}")
        out[k.strip()] = v.strip()
    return out


@dataclass
class _Cli:
    load_config: Callable
    make_ledger: Callable
    make_reactor: Callable | None = None  # tests inject; default a private reactor

    def context(self, args):
        from bankgate.app.config import check_plugins

        cfg = self.load_config(args.config)
        codecs = check_plugins(cfg)
        ledger = self.make_ledger(cfg)
        return cfg, codecs, ledger, Withholding(ledger, cfg, codecs)

    def reactor(self):
        if self.make_reactor is not None:
            return self.make_reactor()
        from twisted.internet.selectreactor import SelectReactor

        return SelectReactor()  # this command's own, never the global one


def _fail(msg: str, code: int = 2) -> int:
    print(f"bankgate: {msg}", file=sys.stderr)
    return code


def cmd_sign(ctx: _Cli, args) -> int:
    _cfg, _c, _l, wh = ctx.context(args)
    try:
        ch = wh.sign(args.customer, args.bank, args.account, args.actor)
    except WithholdingError as e:
        return _fail(str(e))
    print(f"customer {ch.customer_no} {ch.name}: withholding with bank code {ch.bank_code}"
          f" ({args.bank}) account {ch.account}")
    for w in ch.warnings:
        print(f"  note: {w}")
    return 0


def cmd_cancel(ctx: _Cli, args) -> int:
    _cfg, _c, _l, wh = ctx.context(args)
    try:
        ch = wh.cancel(args.customer, args.actor, args.reason or "")
    except WithholdingError as e:
        return _fail(str(e))
    print(f"customer {ch.customer_no} {ch.name}: withholding cancelled (was bank code"
          f" {ch.previous_bank} account {ch.previous_account})")
    for w in ch.warnings:
        print(f"  note: {w}")
    return 0


def cmd_list(ctx: _Cli, args) -> int:
    _cfg, _c, _l, wh = ctx.context(args)
    try:
        rows = wh.agreements(args.bank, args.limit)
    except WithholdingError as e:
        return _fail(str(e))
    for r in rows:
        flags = ("托收 " if r["large_customer"] == 1 else "") + (
            "LOCKED " if r["status"] != "A" else "")
        print(f"{r['customer_no']:<12} {r['name'][:20]:<20} bank {r['withholding_bank']:<8}"
              f" ({','.join(r['banks']) or 'not configured'}) account {r['account']} {flags}")
    print(f"{len(rows)} agreement(s)")
    return 0


def cmd_batch(ctx: _Cli, args) -> int:
    cfg, _c, ledger, wh = ctx.context(args)
    try:
        if args.list:
            for r in wh.batches(args.bank, args.date, args.limit):
                print(f"{r['file_name']:<24} {r['status']:<10} lines {r['record_count']:>6}"
                      f" {fen_to_yuan(r['total']):>14}  debited {r['success_count']:>6}"
                      f" {fen_to_yuan(r['success_total']):>14}")
            return 0
        if args.rewrite:
            print(f"{wh.rewrite_batch(args.bank, args.rewrite)}: written again")
            return 0
        if args.cancel:
            row = wh.cancel_batch(args.bank, args.cancel, args.actor, args.reason or "")
            print(f"{row['file_name']}: cancelled; its bills go into the next file")
            return 0
        d = args.date or ledger.now().date()
        res = wh.generate_batch(args.bank, d, args.customers, args.actor)
    except WithholdingError as e:
        return _fail(str(e))
    if res.batch is None:
        print(f"{args.bank} {d}: nothing to collect, no file written")
    else:
        print(f"{res.path}: {res.count} line(s), {fen_to_yuan(res.total)}"
              + (f", {res.large} collection order(s) (托收)" if res.large else ""))
    for why, n in sorted(res.skipped.items()):
        print(f"  left out: {n} bill(s): {why}")
    return 0


def cmd_result(ctx: _Cli, args) -> int:
    cfg, _c, _l, wh = ctx.context(args)
    refused = False
    try:
        if args.report:
            reps = [wh.report(args.bank, args.report)]
        else:
            if args.files:
                todo = [(p, None) for p in args.files]
            else:
                todo = [(p, row["file_name"]) for row, p in wh.result_files(args.bank)]
                if not todo:
                    print(f"{args.bank}: no result file waiting in"
                          f" {exchange_dir(cfg.bank(args.bank), cfg.data_dir)}")
                    return 0
            reps = []
            for path, batch_file in todo:
                try:
                    data = Path(path).read_bytes()
                except OSError as e:
                    refused = True
                    _fail(f"{path}: {e.strerror}")
                    continue
                try:
                    reps.append(wh.process_result(args.bank, data, Path(path).name,
                                                  args.batch or batch_file, args.actor))
                except ResultFileRefused as e:
                    refused = True
                    _fail(str(e))
            if refused and not reps:
                return 2
    except WithholdingError as e:
        return _fail(str(e))
    for rep in reps:
        print(report_text(rep))
        if args.csv:
            path = Path(args.csv)
            if len(reps) > 1:
                path = path.with_name(f"{path.stem}-{Path(rep.file_name).stem}{path.suffix}")
            print(f"  failures: {write_report_csv(rep, path)}")
    if refused:
        return 2
    return 1 if any(r.attention for r in reps) else 0


def cmd_simulate_result(ctx: _Cli, args) -> int:
    from bankgate.devtools.debithost import answer_pk_file

    cfg = ctx.load_config(args.config)
    from bankgate.app.config import check_plugins

    codecs = check_plugins(cfg)
    try:
        b = cfg.bank(args.bank)
    except KeyError as e:
        return _fail(e.args[0])
    path = Path(args.file)
    if not path.is_absolute() and not path.exists():
        path = exchange_dir(b, cfg.data_dir) / path
    try:
        out, counts = answer_pk_file(
            path, codecs[b.plugin], fail=args.fail or {}, fail_rate=args.fail_rate,
            seed=args.seed, out_dir=Path(args.out) if args.out else None)
    except (OSError, ValueError) as e:
        return _fail(f"{path}: {e}")
    print(f"{out}: " + ", ".join(f"{_reasons(codecs[b.plugin]).get(k, k)}: {n}"
                                 for k, n in sorted(counts.items())))
    return 0


def add_cli(subparsers, load_config: Callable, make_ledger: Callable,
            make_reactor: Callable | None = None) -> argparse.ArgumentParser:
    """Register ``bankgate withholding sign|cancel|list|batch|result|debit|queue``
    (and the bank side for demos: ``simulate-result``, ``simulate-host``).

    ``load_config(path) -> Config`` and ``make_ledger(cfg) -> Ledger`` are the
    CLI's own; commands read ``args.config``."""
    ctx = _Cli(load_config, make_ledger, make_reactor)
    wp = subparsers.add_parser(
        "withholding", help="withholding (代扣/卡扣/托收): agreements, batch files, card debits")
    ws = wp.add_subparsers(dest="sub", required=True)

    c = ws.add_parser("sign", help="sign a customer up for withholding (writes N8; audited)")
    c.add_argument("customer")
    c.add_argument("--bank", required=True, help="the configured bank")
    c.add_argument("--account", required=True, help="the customer's account number")
    c.add_argument("--actor", required=True)
    c.set_defaults(func=functools.partial(cmd_sign, ctx))

    c = ws.add_parser("cancel", help="end a customer's withholding agreement (audited)")
    c.add_argument("customer")
    c.add_argument("--actor", required=True)
    c.add_argument("--reason", default="")
    c.set_defaults(func=functools.partial(cmd_cancel, ctx))

    c = ws.add_parser("list", help="list withholding agreements (accounts masked)")
    c.add_argument("--bank", default=None)
    c.add_argument("--limit", type=int, default=None)
    c.set_defaults(func=functools.partial(cmd_list, ctx))

    c = ws.add_parser("batch", help="write a bank's .PK batch file for a date (default today);"
                                    " --list, --rewrite or --cancel a batch")
    c.add_argument("--bank", required=True)
    c.add_argument("--date", type=_date, default=None, help="the deduct date")
    c.add_argument("--customers", choices=CUSTOMER_CHOICES, default="all",
                   help="large: collection orders (托收) only; households: without them")
    c.add_argument("--actor", default="operator")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--list", action="store_true", help="list the bank's batches")
    g.add_argument("--rewrite", metavar="FILE", help="write a waiting batch's file again")
    g.add_argument("--cancel", metavar="FILE", help="withdraw a batch the bank will not process")
    c.add_argument("--reason", default="", help="why a batch is cancelled")
    c.add_argument("--limit", type=int, default=50)
    c.set_defaults(func=functools.partial(cmd_batch, ctx))

    c = ws.add_parser("result", help="process .PKJG result files (default: every one waiting"
                                     " in the exchange folder) and report failures by reason")
    c.add_argument("--bank", required=True)
    c.add_argument("files", nargs="*", help=".PKJG files")
    c.add_argument("--batch", default=None, help="the .PK a result file answers (if renamed)")
    c.add_argument("--report", metavar="FILE", default=None,
                   help="only show the report of a batch (its .PK name)")
    c.add_argument("--csv", default=None, help="also write failed and unposted lines as CSV")
    c.add_argument("--actor", default="withholding")
    c.set_defaults(func=functools.partial(cmd_result, ctx))

    from bankgate.domain import carddebit

    carddebit.add_cli_commands(ws, ctx)

    c = ws.add_parser("simulate-result",
                      help="play the bank: write the .PKJG result for a .PK file (demo, tests)")
    c.add_argument("--bank", required=True)
    c.add_argument("file", help="the .PK file (a name in the exchange folder, or a path)")
    c.add_argument("--fail", type=_pairs, default=None,
                   help="ACCOUNT_OR_CUSTOMER=RESULT,... fixed failures (result 1-4)")
    c.add_argument("--fail-rate", type=float, default=0.0,
                   help="share of the other lines failing with a random reason 1-3")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", default=None, help="folder (default: next to the .PK)")
    c.set_defaults(func=functools.partial(cmd_simulate_result, ctx))
    return wp
