"""Real-time card debit (卡扣, ref-delim §7): the gateway as the bank's client.

Per bank with ``options.debit_host`` a link
(:class:`bankgate.wire.debitlink.DebitLink`, built and handed in by
:mod:`bankgate.app.carddebits`) keeps a connection to the bank's debit host
and runs one exchange at a time on it.  :class:`CardDebits` holds the rules:

- A ``560`` is only sent for open bills of an active customer signed up with
  that bank, none of them busy (in a batch file waiting for its result, or in
  another card debit whose outcome is open).  The debit is recorded
  (``bg_debit``, status SENT) *before* a byte goes out.
- Only a ``000`` answer (or ``104`` carrying the original ``bank_serial``)
  with our serial and amount posts the payment: :meth:`Ledger.pay` under
  ``(bank, trade_date, bank_serial)``, against exactly the named bills.
  Other answers (``101``-``103``, ``021`` ...) leave the bills open (FAILED).
- No answer within ``debit_timeout``, a connection lost while waiting, an
  answer that cannot be read, a ``104`` without a serial, a different amount,
  or a debit the ledger refuses to post (the bill was paid meanwhile): the
  outcome is unknown or unusable, so the row becomes REVERSING and a ``561``
  is sent for it, repeated with back-off (``debit_retry`` doubling up to
  ``debit_retry_max``) until the bank answers ``000``/``008`` (REVERSED) or
  ``006`` (NOT_DEBITED).  Never a second ``560`` with a new serial: the bills
  stay busy until the reversal is done.
- Everything is in the database: at start (and every ``interval`` seconds)
  pending reversals are sent again, SENT rows whose answer can no longer
  come are turned into reversals, and debited rows not yet posted (the
  database was away) are posted -- so a restart loses nothing.

A late or duplicated answer can never be taken for the answer to another
request: the link sees to that (``docs/withholding.rst``).

Several processes or nodes on one database: the queue's sweep of a bank (stale
SENT rows, unposted debits, due reversals) runs only in the process holding the
lease ``carddebit:{bank}`` (:mod:`bankgate.domain.leases`), so one process at a
time sends a bank's 561s; it keeps the lease while it runs (renewed at its
sweeps) and gives it up when it stops, and another process's sweep takes it over
once its holder stopped renewing it.  Every process still sends its own 560s.

Everything runs on an injected reactor/clock; database work goes through
``run_db`` (the store's thread pool in the service).  This module opens no
socket and reads no configuration: the service's composition
(:mod:`bankgate.app.carddebits`) builds the links, and the operator's
commands are in :mod:`bankgate.app.cli.withholding`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Protocol

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from bankgate.canon import messages as m
from bankgate.canon.masking import mask_account
from bankgate.canon.money import fen_to_yuan
from bankgate.domain.leases import Lease, LeaseBusy, LeaseLost, Leases
from bankgate.domain.ledger import Ledger
from bankgate.domain.withholding import (
    CHANNEL,
    SOURCE,
    WithholdingError,
    WithholdingOptions,
    dues,
)
from bankgate.store import withholding as sql
from bankgate.store.db import Retry, StoreUnavailable
from bankgate.store.tx import Tx

log = Logger(namespace="bankgate.carddebit")

MAX_SERIAL = 32
STALE_GRACE = 30.0  # seconds past two timeouts before a SENT row counts as unanswered


def utility_serial(trade_date: date, debit_id: int) -> str:
    """Our 560 serial: unique because the row id is (22 characters)."""
    return f"WH{trade_date:%Y%m%d}{debit_id:012d}"


def reversal_serial(orig: str) -> str:
    """The 561's own serial: the same for every resend of one reversal."""
    return ("R" + orig)[:MAX_SERIAL]


# -- the rules ---------------------------------------------------------------------


class Link(Protocol):
    """The link to one bank's debit host, handed in
    (:class:`bankgate.wire.debitlink.DebitLink`)."""

    def exchange(self, kind: str, frame: bytes, match: str, timeout: float) -> defer.Deferred:
        """Send ``frame`` (a ``560`` or ``561``) and wait for the answer carrying
        ``match``: a Deferred, never an error, of a reply with ``status``
        (``answer``, ``timeout``, ``lost``, ``malformed`` or ``unsent``),
        ``decoded`` (the codec's reading of the answer) and ``error``."""


@dataclass
class DebitBank:
    name: str
    bank_code: str
    opts: WithholdingOptions
    codec: object
    link: Link


@dataclass
class DebitResult:
    """What a card debit came to.

    ``status``: DEBITED (posted: ``receipt_no``), FAILED (the bank said no:
    ``code``; or never sent: ``code`` empty), REVERSING (outcome unknown or
    not postable: a 561 is pending), REFUSED (the gateway did not send it:
    ``message``), or the stored status of an earlier debit with that serial
    (REVERSED, NOT_DEBITED, ABANDONED, SENT)."""

    status: str
    bank: str
    utility_serial: str = ""
    customer_no: str = ""
    amount: int = 0
    bill_ids: tuple[str, ...] = ()
    code: str = ""
    message: str = ""
    bank_serial: str = ""
    receipt_no: str = ""

    @classmethod
    def from_row(cls, row: dict, message: str = "", receipt_no: str = "") -> DebitResult:
        return cls(row["status"], row["bank"], row["utility_serial"], row["customer_no"],
                   row["amount"], tuple(b for b in (row["bill_ids"] or "").split(",") if b),
                   row["response_code"] or "", message, row["bank_serial"] or "", receipt_no)


class CardDebits:
    """Card debits and the store-and-forward reversal queue over all banks
    with a debit host."""

    interval = 5.0  # seconds between sweeps of the reversal queue
    sweep_limit = 50  # reversals taken per sweep

    def __init__(self, ledger: Ledger, banks: dict[str, DebitBank], clock,
                 now: Callable[[], datetime], run_db: Callable | None = None,
                 leases: Leases | None = None):
        self.ledger = ledger
        self.leases = leases  # None: this process sweeps every bank (the command line)
        self._held: dict[str, Lease] = {}  # bank -> its reversal lease, held here
        self._sender: dict[str, str] = {}  # bank -> the holder last seen sending its 561s
        self.store = ledger.store
        self.banks = banks
        self.clock = clock
        self.now = now
        self.run_db = run_db or self.store.call
        self.in_flight: set[int] = set()  # debit ids with an exchange on the wire here
        self.loop = task.LoopingCall(self.tick)
        self.loop.clock = clock
        self._running = False
        self._again = False
        self._resume_all = True  # the first sweep resends every pending reversal
        self._waiters: list[defer.Deferred] = []

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        if not self.loop.running:
            self._resume_all = True
            self.loop.start(self.interval, now=True).addErrback(
                lambda f: log.failure("card debit: reversal queue stopped", f))

    def stop(self) -> defer.Deferred:
        """Stop sweeping and give the reversal leases up: a Deferred."""
        if self.loop.running:
            self.loop.stop()
        held, self._held = list(self._held.values()), {}
        if not held:
            return defer.succeed(None)
        d = defer.maybeDeferred(self.run_db, lambda: [lease.release() for lease in held])
        d.addErrback(lambda f: log.warn("card debit: reversal leases not released ({why});"
                                        " they expire", why=f.getErrorMessage()[:200]))
        return d

    def lease_name(self, bank: str) -> str:
        return f"carddebit:{bank}"

    def _sweeping(self) -> list[str]:
        """On the store's thread: the banks this process sweeps -- those whose
        reversal lease it holds (renewed when due) or can take."""
        if self.leases is None:
            return list(self.banks)
        out = []
        for name in self.banks:
            lease = self._held.get(name)
            if lease is not None:
                try:
                    lease.check()
                    out.append(name)
                    continue
                except LeaseLost:
                    del self._held[name]
            try:
                self._held[name] = self.leases.acquire(
                    self.lease_name(name), job={"job": "card-debit reversals", "by": "service"})
            except LeaseBusy as e:
                if self._sender.get(name) != e.holder:
                    self._sender[name] = e.holder
                    log.info("card debit {bank}: reversals (561) are sent by {holder}",
                             bank=name, holder=e.holder)
                continue
            self._sender[name] = self.leases.holder
            log.info("card debit {bank}: this process ({holder}) sends the reversals (561)",
                     bank=name, holder=self.leases.holder)
            out.append(name)
        return out

    def link(self, bank: str) -> Link:
        return self._bank(bank).link

    def _bank(self, bank: str) -> DebitBank:
        try:
            return self.banks[bank]
        except KeyError:
            raise WithholdingError(f"bank {bank!r} has no debit host"
                                   f" (set bank.{bank}.options.debit_host)") from None

    # -- a debit ------------------------------------------------------------------

    def debit(self, bank: str, customer_no: str, bill_ids: tuple[str, ...] | None = None, *,
              serial: str | None = None, actor: str = "operator") -> defer.Deferred:
        """Debit ``bill_ids`` (default: the customer's oldest open bill) from the
        customer's account at ``bank``: a Deferred of :class:`DebitResult`."""
        try:
            b = self._bank(bank)
        except WithholdingError as e:
            return defer.succeed(DebitResult("REFUSED", bank, customer_no=customer_no,
                                             message=str(e)))
        if serial is not None and not (0 < len(serial) < MAX_SERIAL and serial.isalnum()):
            return defer.succeed(DebitResult(
                "REFUSED", bank, customer_no=customer_no,
                message=f"a serial is 1-{MAX_SERIAL - 1} letters or digits"))
        d = defer.maybeDeferred(self.run_db, self._prepare_sync, b, customer_no,
                                tuple(bill_ids or ()), serial, actor, self.now())
        d.addCallback(self._send_debit, b)
        d.addErrback(self._db_failed, bank, customer_no)
        return d

    def _db_failed(self, failure: Failure, bank: str, customer_no: str) -> DebitResult:
        if not failure.check(StoreUnavailable):
            log.failure("card debit {bank} {customer} failed", failure, bank=bank,
                        customer=customer_no)
        # nothing was written to the bank (a row recorded as SENT is reversed
        # by the queue once its answer can no longer come)
        what = "database unavailable" if failure.check(StoreUnavailable) else "failed"
        return DebitResult("REFUSED", bank, customer_no=customer_no,
                           message=f"not sent: {what}: {failure.getErrorMessage()[:100]}")

    def _prepare_sync(self, b: DebitBank, customer_no: str, bill_ids: tuple, serial: str | None,
                      actor: str, now: datetime):
        return self.store.run_sync(self._prepare_tx, b, customer_no, bill_ids, serial, actor, now)

    def _prepare_tx(self, tx: Tx, b: DebitBank, customer_no: str, bill_ids: tuple,
                    serial: str | None, actor: str, now: datetime):
        def refused(msg: str) -> DebitResult:
            return DebitResult("REFUSED", b.name, customer_no=customer_no, message=msg)

        if serial is not None:
            old = sql.debit_get(tx, b.name, serial)
            if old is not None:  # an earlier debit: its state, never a second 560
                if old["customer_no"] != customer_no:
                    return refused(f"serial {serial} belongs to another debit")
                return DebitResult.from_row(old, "an earlier debit with this serial")
        cust = tx.customer(customer_no)
        if cust is None:
            return refused(f"no customer {customer_no!r}")
        if cust["status"] != "A":
            return refused("the customer's account is locked")
        account = (cust["withholding_account"] or "").strip()
        if (cust["withholding_bank"] or "").strip() != b.bank_code or not account:
            return refused(f"customer {customer_no} has no withholding agreement with {b.name}")
        bills = tx.open_bills(customer_no, lock=True)
        if not bills:
            return refused("nothing to pay")
        by_id = {x["bill_id"]: x for x in bills}
        chosen = bill_ids or (bills[0]["bill_id"],)
        if len(set(chosen)) != len(chosen):
            return refused("a bill is named twice")
        for i in chosen:
            if i not in by_id:
                return refused(f"bill {i} is not an open bill of customer {customer_no}")
        busy = sql.busy_bills(tx, chosen)
        if busy:
            i = sorted(busy)[0]
            return refused(f"bill {i}: {busy[i]}")
        amount = sum(o + late for _b, o, late in
                     dues(tx, [by_id[i] for i in chosen], cust["customer_class"], now.date()))
        if amount <= 0:
            return refused("nothing to pay")
        try:
            row = sql.debit_insert(tx, bank=b.name, utility_serial=serial, trade_date=now.date(),
                                   customer_no=customer_no, account_no=account, bill_ids=chosen,
                                   amount=amount, now=now, actor=actor,
                                   serial_for=utility_serial)
        except KeyError as e:
            return refused(str(e.args[0]))
        return {"row": row, "name": cust["name"], "time": now}

    def _send_debit(self, plan, b: DebitBank):
        if isinstance(plan, DebitResult):
            return plan
        row = plan["row"]
        frame = b.codec.encode_debit(
            utility_code=b.opts.utility_code, trade_date=row["trade_date"],
            trade_time=plan["time"], utility_serial=row["utility_serial"],
            customer_no=row["customer_no"], account_no=row["account_no"], name=plan["name"],
            amount=row["amount"], bill_ids=row["bill_ids"].split(","))
        self.in_flight.add(row["id"])
        log.info("card debit {bank} {serial}: 560 for customer {customer} {amount}, account"
                 " {account}", bank=b.name, serial=row["utility_serial"],
                 customer=row["customer_no"], amount=fen_to_yuan(row["amount"]),
                 account=mask_account(row["account_no"]))
        d = b.link.exchange("560", frame, row["utility_serial"], b.opts.debit_timeout)
        d.addCallback(lambda reply: self.run_db(self._debit_answered_sync, b, row, reply,
                                                self.now()))
        d.addErrback(self._settle_failed, row)

        def done(result):
            self.in_flight.discard(row["id"])
            if isinstance(result, DebitResult) and result.status == "REVERSING":
                self.kick()
            return result

        d.addBoth(done)
        return d

    def _settle_failed(self, failure: Failure, row: dict) -> DebitResult:
        # the database went away while recording the answer: the row stays as it
        # was (SENT or DEBITED unposted) and the sweep settles it (reversal or post)
        log.failure("card debit {serial}: recording the answer failed; the queue will settle it",
                    failure, serial=row["utility_serial"])
        return DebitResult("REVERSING", row["bank"], row["utility_serial"], row["customer_no"],
                           row["amount"], message="the answer could not be recorded; the"
                           " reversal queue settles it")

    def _debit_answered_sync(self, b: DebitBank, row: dict, reply,
                             now: datetime) -> DebitResult:
        """On the store's thread: record what the 560 came to."""
        run = self.store.run_sync
        if reply.status == "unsent":
            new = run(sql.debit_transition, row["id"], ("SENT",), now,
                      ("card-debit", "card-debit-not-sent", {"why": reply.error}), status="FAILED")
            return DebitResult.from_row(new or row, f"not sent: {reply.error}")
        if reply.status != "answer":
            return self._to_reversing(row, ("SENT",), now, reply.error or reply.status)
        a = reply.decoded
        code = a["code"]
        if not a["debited"]:
            if code == "104":  # "already debited" without the serial: cannot post it
                return self._to_reversing(row, ("SENT",), now, "104 without bank_serial",
                                          response_code=code)
            new = run(sql.debit_transition, row["id"], ("SENT",), now, None, status="FAILED",
                      response_code=code)
            return DebitResult.from_row(new or row, a["msg"])
        if a["amount"] is not None and a["amount"] != row["amount"]:
            return self._to_reversing(
                row, ("SENT",), now, f"the bank debited {fen_to_yuan(a['amount'])}, we asked"
                f" for {fen_to_yuan(row['amount'])}", response_code=code,
                bank_serial=a["bank_serial"])
        new = run(sql.debit_transition, row["id"], ("SENT",), now,
                  ("card-debit", "card-debit-debited", {"bank_serial": a["bank_serial"]}),
                  status="DEBITED", response_code=code, bank_serial=a["bank_serial"])
        if new is None:  # taken over meanwhile (the queue found it stale): follow its state
            cur = run(sql.debit_by_id, row["id"])
            return DebitResult.from_row(cur, "the answer came too late")
        return self._post_sync(b.name, new, now)

    def _to_reversing(self, row: dict, expect: tuple, now: datetime, why: str,
                      **values) -> DebitResult:
        new = self.store.run_sync(
            sql.debit_transition, row["id"], expect, now,
            ("card-debit", "card-debit-unknown", {"why": why[:200]}),
            status="REVERSING", next_attempt_at=now, attempts=0, **values)
        log.warn("card debit {serial}: {why}: reversing (561)", serial=row["utility_serial"],
                 why=why)
        cur = new or self.store.run_sync(sql.debit_by_id, row["id"])
        return DebitResult.from_row(cur, f"{why}: a reversal (561) is pending")

    def _post_sync(self, bank: str, row: dict, now: datetime) -> DebitResult:
        """Post a DEBITED row (again after a failure: the journal keeps it once)."""
        req = m.PaymentRequest(
            m.Origin(bank=bank, trade_date=row["trade_date"],
                     trade_time=f"{row['created_at']:%H%M%S}", branch="", teller="card-debit",
                     channel=CHANNEL),
            row["bank_serial"], row["customer_no"], row["amount"],
            content=m.fingerprint("560", row["utility_serial"], row["customer_no"], row["amount"],
                                  row["bill_ids"]),
            bill_ids=tuple(row["bill_ids"].split(",")),
        )
        try:
            res = self.ledger.pay(req, source=SOURCE, actor="card-debit", after_close=True)
        except StoreUnavailable as e:
            return DebitResult.from_row(row, f"debited; posting waits for the database: {e}")
        p = self.store.run_sync(sql.standing_payment, bank, row["trade_date"], row["bank_serial"],
                                row["customer_no"], row["amount"])
        if p is not None:
            new = self.store.run_sync(sql.debit_transition, row["id"], ("DEBITED",), now, None,
                                      payment_id=p["id"])
            return DebitResult.from_row(new or row, receipt_no=p["receipt_no"])
        why = f"debited but the ledger refused to post it ({res.outcome.value})"
        return self._to_reversing(row, ("DEBITED",), now, why)

    # -- the reversal queue ----------------------------------------------------------

    def kick(self) -> defer.Deferred:
        """Sweep the queue now (also while a sweep runs: it runs again after)."""
        return self.tick()

    def tick(self) -> defer.Deferred:
        """One sweep: stale SENT rows become reversals, debited rows are posted,
        due reversals are sent.  Fires when all of it is done."""
        waiter: defer.Deferred = defer.Deferred()
        self._waiters.append(waiter)
        if self._running:
            self._again = True
        else:
            self._sweep()
        return waiter

    def _sweep(self) -> None:
        self._running = True
        self._again = False
        resume_all, self._resume_all = self._resume_all, False
        d = defer.maybeDeferred(self.run_db, self._sweep_sync, self.now(),
                                frozenset(self.in_flight), resume_all)
        d.addCallback(self._send_reversals)
        d.addErrback(lambda f: log.failure("card debit: sweep failed", f)
                     if not f.check(StoreUnavailable) else
                     log.warn("card debit: sweep skipped, database unavailable"))
        d.addBoth(self._swept)

    def _swept(self, _):
        self._running = False
        if self._again:
            self._sweep()
            return
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.callback(None)

    def _sweep_sync(self, now: datetime, in_flight: frozenset, resume_all: bool) -> list[dict]:
        run = self.store.run_sync
        names = self._sweeping()
        if not names:
            return []
        for name in names:
            b = self.banks[name]
            # a debit may wait a timeout for a connection, then a timeout for its answer
            before = now - timedelta(seconds=2 * b.opts.debit_timeout + STALE_GRACE)
            for row in run(sql.debits_stale_sent, before, [name], readonly=True):
                if row["id"] not in in_flight:
                    self._to_reversing(row, ("SENT",), now, "no answer recorded (restart?)")
        for row in run(sql.debits_unposted, names, readonly=True):
            if row["id"] not in in_flight:
                self._post_sync(row["bank"], row, now)
        claimed = []
        for row in run(sql.debits_due, None if resume_all else now, names, self.sweep_limit,
                       readonly=True):
            if row["id"] in in_flight:
                continue
            hold = now + timedelta(seconds=self.banks[row["bank"]].opts.debit_timeout * 2 + 60)
            got = run(sql.debit_claim, row["id"], row["attempts"], now, hold)
            if got is not None:
                claimed.append(got)
        return claimed

    def _send_reversals(self, rows: list[dict]) -> defer.Deferred:
        return defer.DeferredList([self._send_reversal(r) for r in rows], consumeErrors=True)

    def _send_reversal(self, row: dict) -> defer.Deferred:
        b = self.banks[row["bank"]]
        now = self.now()
        frame = b.codec.encode_debit_reversal(
            utility_code=b.opts.utility_code, trade_date=now.date(), trade_time=now,
            utility_serial=reversal_serial(row["utility_serial"]),
            orig_utility_serial=row["utility_serial"], amount=row["amount"])
        self.in_flight.add(row["id"])
        log.info("card debit {bank} {serial}: 561 reversal, attempt {n}", bank=b.name,
                 serial=row["utility_serial"], n=row["attempts"])
        d = b.link.exchange("561", frame, row["utility_serial"], b.opts.debit_timeout)
        d.addCallback(lambda reply: self.run_db(self._reversal_answered_sync, b, row, reply,
                                                self.now()))

        def done(result):
            self.in_flight.discard(row["id"])
            return result

        d.addBoth(done)
        return d

    def _reversal_answered_sync(self, b: DebitBank, row: dict, reply,
                                now: datetime) -> dict | None:
        run = self.store.run_sync
        a = reply.decoded if reply.status == "answer" else None
        if a is not None and a["done"]:
            status = "NOT_DEBITED" if a["code"] == "006" else "REVERSED"
            log.info("card debit {serial}: 561 answered {code}: {status}",
                     serial=row["utility_serial"], code=a["code"], status=status)
            return run(sql.debit_transition, row["id"], ("REVERSING",), now,
                       ("card-debit", "card-debit-reversed",
                        {"code": a["code"], "status": status, "attempts": row["attempts"]}),
                       status=status, next_attempt_at=None)
        why = f"561 answered {a['code']}" if a is not None else reply.error or reply.status
        delay = min(b.opts.debit_retry * 2 ** max(0, row["attempts"] - 1), b.opts.debit_retry_max)
        log.warn("card debit {serial}: reversal not done ({why}); again in {delay:.0f} s",
                 serial=row["utility_serial"], why=why, delay=delay)
        return run(sql.debit_transition, row["id"], ("REVERSING",), now, None,
                   next_attempt_at=now + timedelta(seconds=delay))

    # -- operators --------------------------------------------------------------------

    def pending(self, bank: str | None = None) -> list[dict]:
        """On the store's thread: pending reversals, SENT and unposted debits."""
        return self.store.run_sync(sql.debits, bank, ("SENT", "REVERSING"), 1000, True,
                                   readonly=True)


def abandon(store, debit_id: int, actor: str, note: str, now: datetime) -> dict | None:
    """An operator closes a pending reversal by hand (the bank confirmed the
    outcome some other way).  Audited; the bills become free again."""
    return store.run_sync(sql.debit_transition, debit_id, ("REVERSING", "SENT"), now,
                          (actor, "card-debit-abandon", {"note": note[:200]}),
                          status="ABANDONED", next_attempt_at=None)


# -- the queue for an operator: what is pending, and sending it again now (重发卡扣) ------

QUEUE_LIMIT = 500  # rows the console lists


def queue(store, bank: str | None = None, limit: int = QUEUE_LIMIT) -> list[dict]:
    """On the store's thread: the card debits whose outcome is open -- pending
    reversals (REVERSING), debits whose answer has not come (SENT) and debited
    rows not yet posted -- newest first, as ``bankgate withholding queue`` lists
    them; the account number masked, ``unposted`` set for a debited row."""
    rows = store.run_sync(sql.debits, bank, ("SENT", "REVERSING"), limit, True, readonly=True)
    for r in rows:
        r["account_no"] = mask_account(r["account_no"])
        r["unposted"] = r["status"] == "DEBITED" and r["payment_id"] is None
    return rows


def resend(store, debit_id: int, *, actor: str, reason: str, now: datetime,
           options: dict[str, WithholdingOptions]) -> dict:
    """重发卡扣: have a pending card debit sent again now, audited
    (``card-debit-resend``: who, the reason, the row before and after), in one
    transaction.  What "again" means depends on the row:

    - REVERSING: its 561 is due now (the next attempt was later, by back-off);
    - SENT whose answer can no longer come (two of the bank's ``debit_timeout``
      and a grace since it went out, as the queue's own rule): it becomes a
      reversal due now -- never a second 560;
    - DEBITED, not posted: posted again at the queue's next sweep.

    The queue sends it: in the gateway's process at once when asked
    (:meth:`CardDebits.kick`), from another process (``bankgate withholding
    resend``) at the running gateway's next sweep (every
    :attr:`CardDebits.interval` seconds).  Returns ``{"row", "what"}``; raises
    :class:`WithholdingError` (nothing changed) for anything else."""
    reason = (reason or "").strip()
    if not reason:
        raise WithholdingError("say why (it goes into the audit trail)")
    return store.run_sync(_resend_tx, debit_id, actor, reason, now, options)


def resend_preview(store, debit_id: int, *, now: datetime,
                   options: dict[str, WithholdingOptions]) -> dict:
    """What :func:`resend` would do (read only): ``{"row", "what"}``, or
    :class:`WithholdingError` as it would refuse."""
    row = store.run_sync(sql.debit_by_id, debit_id, readonly=True)
    what = _resend_plan(row, debit_id, now, options)
    row = dict(row)
    row["account_no"] = mask_account(row["account_no"])
    return {"row": row, "what": what}


def _resend_plan(row: dict | None, debit_id: int, now: datetime,
                 options: dict[str, WithholdingOptions]) -> str:
    """What sending ``row`` again means, or :class:`WithholdingError`."""
    if row is None:
        raise WithholdingError(f"no card debit {debit_id}")
    st = row["status"]
    if st == "REVERSING":
        return "its reversal (561) is sent now"
    if st == "SENT":
        opts = options.get(row["bank"])
        wait = 2 * (opts.debit_timeout if opts else 0) + STALE_GRACE
        until = row["updated_at"] + timedelta(seconds=wait)
        if now < until:
            raise WithholdingError(
                f"card debit {debit_id} went out at {row['updated_at']:%H:%M:%S}: its answer"
                f" may still come until {until:%H:%M:%S}; send it again after that")
        return "its answer never came: a reversal (561) is sent now"
    if st == "DEBITED" and row["payment_id"] is None:
        return "debited, not posted: posted at the queue's next sweep"
    done = " and posted" if st == "DEBITED" else ""
    raise WithholdingError(f"card debit {debit_id} is {st}{done}: nothing to send")


def _resend_tx(tx: Tx, debit_id: int, actor: str, reason: str, now: datetime,
               options: dict[str, WithholdingOptions]) -> dict:
    row = sql.debit_by_id(tx, debit_id)
    what = _resend_plan(row, debit_id, now, options)
    st = row["status"]
    detail = {"reason": reason, "what": what,
              "before": {"status": st, "attempts": row["attempts"],
                         "next_attempt_at": _iso(row["next_attempt_at"])},
              "after": {"status": "REVERSING", "next_attempt_at": _iso(now)}}
    if st == "REVERSING":
        new = sql.debit_transition(tx, debit_id, ("REVERSING",), now,
                                   (actor, "card-debit-resend", detail), next_attempt_at=now)
    elif st == "SENT":
        new = sql.debit_transition(tx, debit_id, ("SENT",), now,
                                   (actor, "card-debit-resend", detail),
                                   status="REVERSING", next_attempt_at=now, attempts=0)
    else:  # debited, not posted: the sweep posts it; nothing in the row changes
        detail["after"] = {"status": st, "payment_id": None}
        tx.audit(now, actor, "card-debit-resend", row["utility_serial"],
                 {"bank": row["bank"], **detail})
        new = row
    if new is None:  # its state changed meanwhile (an answer came): look again
        raise Retry()
    new = dict(new)
    new["account_no"] = mask_account(new["account_no"])
    return {"row": new, "what": what}


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat(sep=" ", timespec="seconds")
