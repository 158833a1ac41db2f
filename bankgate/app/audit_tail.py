"""The running service shows in its log what the ``bankgate`` command did.

Back-office commands -- refunds, cut-offs by hand, invoice prints and voids,
withholding batches and results, card debits, manual reconciliations and
resolutions -- run in processes of their own and record what they did in the
audit trail (``bg_audit``, with the actor).  The service never hears of them.
:class:`AuditTail` follows the trail: every few seconds on the service's clock
it reads, on the store's thread pool, the rows added since it last looked and
logs one line per row::

    audit: wang refund 20261128000000000002: reason=customer moved out, amount=12000, ...

It starts at the newest row present at start-up (the history is in the table,
not re-logged).  Account and card numbers are never logged in full: values
under an account or card key, and any other number of 13 to 19 digits standing
alone (not inside a serial or a file name), are masked by
:func:`bankgate.canon.masking.mask_pan`.  Rows the service writes itself
(cut-offs, reconciliation posts, expiries) are logged too: the log then holds
the whole trail.  ``docs/operator-guide.rst`` ("The audit trail") is the manual.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from bankgate.canon.masking import mask_account, mask_pan
from bankgate.store import audit

INTERVAL = 5.0  # seconds between looks
BATCH = 500  # rows per look at most; a longer backlog is read on the next looks
GAP_WAIT = 60.0  # seconds a skipped id is looked for again (a transaction committing late)
MAX_GAPS = 500
VALUE_MAX = 60  # characters of one detail value in the log line
DETAIL_MAX = 240  # characters of the whole detail

_SECRET_KEY = re.compile(r"account|pan\b|pan_|card_no|card_number|acct", re.I)
# a card or account number standing alone (not part of a serial like PK0111270000000001,
# nor a file name like 1032102026112701.PK)
_LONG_DIGITS = re.compile(r"(?<![\w*])\d{13,19}(?![\w*]|\.[A-Za-z])")


def _mask_digits(text: str) -> str:
    return _LONG_DIGITS.sub(lambda mo: mask_pan(mo.group(0)), text)


def _value(key: str, v) -> str:
    if isinstance(v, str):
        text = v
    else:
        text = json.dumps(v, ensure_ascii=False, separators=(",", ":"), default=str)
    if _SECRET_KEY.search(key) and "*" not in text:
        text = mask_account(text)
    text = " ".join(_mask_digits(text).split())  # one line
    return text if len(text) <= VALUE_MAX else text[:VALUE_MAX - 1] + "…"


def describe(row: dict) -> str:
    """One row as one log line's text: ``actor action subject: key=value, ...``."""
    detail = row.get("detail") or {}
    parts = [f"{k}={_value(str(k), v)}" for k, v in detail.items()
             if v not in (None, "", [], {})]
    text = ", ".join(parts)
    if len(text) > DETAIL_MAX:
        text = text[:DETAIL_MAX - 1] + "…"
    subject = _mask_digits(row.get("subject") or "")
    head = " ".join(x for x in (row.get("actor") or "?", row.get("action") or "?", subject) if x)
    return f"{head}: {text}" if text else head


class AuditTail(service.Service):
    """Logs the audit rows other processes write, as it sees them.

    ``run(fn, *args)`` runs a store function in a transaction off the reactor
    and returns a Deferred (default: the store's pool); ``clock`` is the
    service's reactor.
    """

    name = "audit-tail"

    def __init__(self, store, clock, *, interval: float = INTERVAL,
                 run: Callable[..., defer.Deferred] | None = None, log: Logger | None = None):
        self.clock = clock
        self.interval = interval
        self.run = run or (lambda fn, *a: store.call(store.run_sync, fn, *a, readonly=True))
        self.log = log or Logger(namespace="bankgate.audit")
        self.last: int | None = None  # the newest id seen; None until start-up read it
        self.gaps: dict[int, float] = {}  # ids skipped -> when first missed
        self._busy = False
        self._failing = False
        self._loop: task.LoopingCall | None = None

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return super().stopService()

    def tick(self) -> defer.Deferred | None:
        if self._busy:  # the previous look is still at work
            return None
        self._busy = True
        if self.last is None:
            d = self.run(audit.newest_id)
            d.addCallback(self._ok)
            d.addCallback(self._started)
        else:
            d = self.run(audit.after, self.last, BATCH, list(self.gaps))
            d.addCallback(self._ok)
            d.addCallback(self.show)
        d.addErrback(self._failed)
        d.addBoth(self._idle)
        return d

    def _started(self, newest: int) -> None:
        self.last = newest
        self.log.info("audit: following bg_audit after id {id}", id=newest)

    def show(self, rows: list[dict]) -> int:
        """Log each row and move past it; returns how many were logged."""
        now = self.clock.seconds()
        for row in rows:
            self.log.info("audit: {line}", line=describe(row), audit_id=row["id"],
                          actor=row.get("actor"), action=row.get("action"))
            rid = int(row["id"])
            self.gaps.pop(rid, None)
            if rid > self.last:
                for missing in range(self.last + 1, min(rid, self.last + 1 + MAX_GAPS)):
                    self.gaps[missing] = now
                self.last = rid
        for rid, since in list(self.gaps.items()):
            if now - since > GAP_WAIT:
                del self.gaps[rid]  # a rolled-back transaction: that id never comes
        while len(self.gaps) > MAX_GAPS:
            del self.gaps[min(self.gaps)]
        return len(rows)

    def _ok(self, result):
        if self._failing:
            self._failing = False
            self.log.info("audit: bg_audit readable again")
        return result

    def _failed(self, failure) -> None:
        if not self._failing:  # once per outage, not every few seconds
            self._failing = True
            self.log.warn("audit: cannot read bg_audit ({error}); trying again every"
                          " {interval:.0f} s", error=failure.getErrorMessage(),
                          interval=self.interval)

    def _idle(self, result):
        self._busy = False
        return None
