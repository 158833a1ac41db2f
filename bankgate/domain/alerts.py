"""Alerts: what an operator must act on, and the episodes of each alert.

The rules are plain functions over plain inputs -- the time, the last message of each
bank, the latest reconciliation runs, the statements read, the invoice stock, the
card-debit reversals still pending, whether the database answered -- each returning the
:class:`Alert`\\ s that hold now.  Nothing here reads the database or the clock:
:mod:`bankgate.app.alerts` gathers the inputs (on the store's pool) and runs the rules
every ``[alerts] interval`` seconds.

An alert is one *kind* about one *subject* (a bank, a bank and settle date, an invoice
holder, the database).  :class:`EpisodeTracker` turns the alerts of each check into
events: an alert is RAISED when it first holds, kept while it holds (no repeat), and
CLEARED when a check no longer finds it; when it holds again later, that is a new
episode, raised again.  A kind the check could not judge (its inputs are in the
database and the database did not answer) keeps its open alerts as they are: not
knowing is not a clearing.

``docs/console.rst`` (*Alerts*) says what each kind means and what the operator does.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta

WARNING = "warning"
CRITICAL = "critical"
SEVERITIES = (CRITICAL, WARNING)  # most urgent first

BANK_QUIET = "bank-quiet"
RECON_FAILED = "recon-failed"
RECON_UNBALANCED = "recon-unbalanced"
STATEMENT_MISSING = "statement-missing"
INVOICE_STOCK_LOW = "invoice-stock-low"
REVERSAL_PENDING = "card-debit-reversal-pending"
DATABASE_UNREACHABLE = "database-unreachable"
N8_WAITING = "n8-writes-waiting"

KINDS = (BANK_QUIET, RECON_FAILED, RECON_UNBALANCED, STATEMENT_MISSING, INVOICE_STOCK_LOW,
         REVERSAL_PENDING, DATABASE_UNREACHABLE, N8_WAITING)

#: the subject of database-unreachable for N8's own database ([n8.database])
N8_DATABASE = "n8 database"

#: seconds an N8 write may wait in the outbox before n8-writes-waiting is raised
N8_WAITING_AFTER = 60.0

#: what the operator does about each kind (the console and the e-mail show it;
#: ``docs/console.rst``, *Alerts*, says more)
ADVICE = {
    BANK_QUIET: "check the bank's link (the overview's bank links): is the bank's side up,"
                " does the firewall let it through, did its address change?",
    RECON_FAILED: "read the run's error (bankgate recon runs --bank BANK), fix the cause"
                  " (the statement file, its source) and reconcile the date again"
                  " (bankgate reconcile --bank BANK --date DATE).",
    RECON_UNBALANCED: "work through the open exceptions (bankgate recon exceptions), then"
                      " resolve each one (bankgate recon resolve) or reconcile the date"
                      " again.",
    STATEMENT_MISSING: "ask the bank for the statement, or check its source (the exchange"
                       " folder, the FTP or SFTP server); the run retries until"
                       " statement_wait and then fails.",
    INVOICE_STOCK_LOW: "issue the holder new invoice numbers (bankgate invoice issue"
                       " --to HOLDER ...).",
    REVERSAL_PENDING: "check the outbound card-debit link and the bank's debit host; the"
                      " reversal is sent again until the bank answers (bankgate"
                      " withholding queue).",
    DATABASE_UNREACHABLE: "check the database server and the network to it (the subject"
                          " says which: the gateway's database, or N8's own); payments"
                          " are answered BUSY until it is back.",
    N8_WAITING: "N8's own database does not take the gateway's writes: check it and the"
                " network to it (bankgate n8 pending shows the error); the repair job"
                " applies them once it answers.",
}

#: the kinds whose inputs are read from the database: not judged in a check the
#: database did not answer (their open alerts stay open, none is raised)
FROM_DATABASE = frozenset({RECON_FAILED, RECON_UNBALANCED, STATEMENT_MISSING,
                           INVOICE_STOCK_LOW, REVERSAL_PENDING, N8_WAITING})

RAISED = "raised"
CLEARED = "cleared"


@dataclass(frozen=True)
class Alert:
    """One condition that holds: ``kind`` about ``subject``.  ``since``: when the
    condition began, as far as the inputs tell (the last message of a quiet bank,
    the run that failed); the tracker keeps the first one of an episode."""

    kind: str
    subject: str
    severity: str
    message: str
    since: datetime | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.subject)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "subject": self.subject, "severity": self.severity,
                "message": self.message, "since": _iso(self.since)}


@dataclass(frozen=True)
class Event:
    """An alert raised or cleared at ``at``; ``raised_at``: when its episode began."""

    state: str  # RAISED or CLEARED
    alert: Alert
    at: datetime
    raised_at: datetime

    def as_dict(self) -> dict:
        return {"event": "raised" if self.state == RAISED else "resolved",
                **self.alert.as_dict(), "raised_at": _iso(self.raised_at),
                "at": _iso(self.at)}


def _iso(t: datetime | None) -> str | None:
    return t.isoformat(timespec="seconds") if t is not None else None


def _at(t: datetime) -> str:
    return f"{t:%Y-%m-%d %H:%M:%S}"


# -- business hours ---------------------------------------------------------------------

_HOURS = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])-(([01][0-9]|2[0-3]):([0-5][0-9])|24:00)")


@dataclass(frozen=True)
class BusinessHours:
    """A bank's business hours each day, in minutes after local midnight: from
    ``start`` (0-1439) to ``end`` (1-1440).  An ``end`` before ``start`` runs past
    midnight (``22:00-06:00``)."""

    start: int = 0
    end: int = 1440

    @classmethod
    def parse(cls, text: str) -> BusinessHours:
        """``"08:00-20:00"``, ``"22:00-06:00"``, ``"00:00-24:00"`` (all day).
        Raises ``ValueError`` saying what is expected."""
        m = _HOURS.fullmatch(text.strip()) if isinstance(text, str) else None
        if not m:
            raise ValueError(f"expected \"HH:MM-HH:MM\" (24-hour local time, like"
                             f" \"08:00-20:00\"), got {text!r}")
        start = int(m.group(1)) * 60 + int(m.group(2))
        end = 1440 if m.group(3) == "24:00" else int(m.group(4)) * 60 + int(m.group(5))
        if start == end:
            raise ValueError(f"{text!r} starts and ends at the same time: write"
                             " \"00:00-24:00\" for all day")
        return cls(start, end)

    def __str__(self) -> str:
        def hhmm(m: int) -> str:
            return f"{m // 60:02d}:{m % 60:02d}"

        return f"{hhmm(self.start)}-{hhmm(self.end)}"

    def opened(self, now: datetime) -> datetime | None:
        """When the business hours around ``now`` began; ``None`` outside them."""
        midnight = datetime.combine(now.date(), time())
        minutes = (now - midnight) / timedelta(minutes=1)
        start = midnight + timedelta(minutes=self.start)
        if self.start < self.end:
            return start if self.start <= minutes < self.end else None
        if minutes >= self.start:
            return start
        if minutes < self.end:
            return start - timedelta(days=1)
        return None


ALL_DAY = BusinessHours()


# -- the rules ----------------------------------------------------------------------------


@dataclass(frozen=True)
class QuietWatch:
    """A bank that must not stay quiet longer than ``quiet_after`` seconds within
    its business ``hours`` (``[[bank]] quiet_after``, ``business_hours``)."""

    bank: str
    quiet_after: float
    hours: BusinessHours = ALL_DAY


def quiet_banks(watches: Iterable[QuietWatch], last_message: Mapping[str, datetime | None],
                watching_since: datetime, now: datetime) -> list[Alert]:
    """bank-quiet: no message from the bank for longer than its window, counted from
    its last message, or from the start of today's business hours, or from
    ``watching_since`` (the gateway's start), whichever is latest.  Outside business
    hours no bank is quiet."""
    out = []
    for w in watches:
        opened = w.hours.opened(now)
        if opened is None:
            continue
        heard = last_message.get(w.bank)
        since, what = max(((heard, "its last message"), (opened, "business hours began"),
                           (watching_since, "the gateway started")),
                          key=lambda p: p[0] or datetime.min)
        if (now - since).total_seconds() > w.quiet_after:
            out.append(Alert(
                BANK_QUIET, w.bank, WARNING,
                f"no message from {w.bank} since {_at(since)} ({what}); it may be quiet"
                f" {w.quiet_after:g} s in its business hours {w.hours}", since))
    return out


@dataclass(frozen=True)
class ReconState:
    """The latest finished (or failed) run of a bank and settle date."""

    bank: str
    settle_date: date
    run_no: int | None
    status: str  # BALANCED EXCEPTIONS FAILED
    finished_at: datetime | None
    open_exceptions: int = 0
    error: str = ""


def recon_alerts(states: Iterable[ReconState]) -> list[Alert]:
    """recon-failed: the latest run of a (bank, settle date) FAILED.  recon-unbalanced:
    it ended with EXCEPTIONS and has exceptions still open, or a difference the
    exceptions do not explain.  A later run that balances, or the operator resolving
    the last exception, clears it."""
    out = []
    for s in states:
        subject = f"{s.bank} {s.settle_date:%Y-%m-%d}"
        run = f"run {s.run_no}" if s.run_no is not None else "a run"
        if s.status == "FAILED":
            out.append(Alert(RECON_FAILED, subject, CRITICAL,
                             f"reconciliation of {s.bank} for {s.settle_date:%Y-%m-%d} failed"
                             f" ({run}): {s.error or 'no reason recorded'}", s.finished_at))
        elif s.status == "EXCEPTIONS" and (s.open_exceptions or s.error):
            what = [f"{s.open_exceptions} open exception(s)"] if s.open_exceptions else []
            if s.error:
                what.append(s.error)
            out.append(Alert(RECON_UNBALANCED, subject, WARNING,
                             f"reconciliation of {s.bank} for {s.settle_date:%Y-%m-%d} does not"
                             f" balance ({run}): {'; '.join(what)}", s.finished_at))
    return out


@dataclass(frozen=True)
class StatementWatch:
    """A bank whose statement of settle date D is expected by ``expected`` (local time)
    on day D + ``days_back`` (``statement_expected``, else ``reconcile_time``, and
    ``reconcile_days_back``)."""

    bank: str
    expected: time
    days_back: int = 1


def statement_due(w: StatementWatch, now: datetime, grace: float) -> tuple[date, datetime]:
    """The settle date whose statement should have been read ``grace`` seconds after
    its expected time, as of ``now``, and that expected time."""
    t = now - timedelta(seconds=grace)
    day = t.date() if t.time() >= w.expected else t.date() - timedelta(days=1)
    return day - timedelta(days=w.days_back), datetime.combine(day, w.expected)


def statement_alerts(watches: Iterable[StatementWatch], now: datetime, grace: float,
                     read: Collection[tuple[str, date]],
                     first_activity: Mapping[str, date | None]) -> list[Alert]:
    """statement-missing: the statement of the latest settle date due (see
    :func:`statement_due`) has not been read.  A bank without a transaction on or
    before that date is not reconciled, so nothing is missing for it."""
    out = []
    for w in watches:
        settle, expected = statement_due(w, now, grace)
        first = first_activity.get(w.bank)
        if first is None or first > settle or (w.bank, settle) in read:
            continue
        out.append(Alert(STATEMENT_MISSING, w.bank, WARNING,
                         f"the statement of {w.bank} for {settle:%Y-%m-%d} was expected by"
                         f" {_at(expected)} and has not been read", expected))
    return out


def stock_alerts(stock: Iterable[Mapping]) -> list[Alert]:
    """invoice-stock-low: a holder at or below its low-water mark (critical when no
    number is left), for holders that issue invoices or have stock.  ``stock``: the
    rows of :func:`bankgate.domain.overview.invoice_stock_tx`."""
    out = []
    for s in stock:
        if s["state"] == "OK" or not (s.get("invoice") or s.get("ranges")):
            continue
        empty = s["state"] == "EMPTY"
        out.append(Alert(INVOICE_STOCK_LOW, s["holder"], CRITICAL if empty else WARNING,
                         f"invoice stock of {s['holder']}: {s['remaining']} number(s) left"
                         f" (low-water mark {s['low_water']})"
                         + ("; payments get no invoice number" if empty else "")))
    return out


@dataclass(frozen=True)
class PendingReversals:
    """A bank's card-debit reversals (561) the bank has not confirmed yet."""

    bank: str
    count: int
    oldest: datetime  # when the oldest of them was made


def reversal_alerts(pending: Iterable[PendingReversals], older_than: float,
                    now: datetime) -> list[Alert]:
    """card-debit-reversal-pending: a bank has a reversal pending for longer than
    ``older_than`` seconds."""
    return [Alert(REVERSAL_PENDING, p.bank, CRITICAL,
                  f"{p.count} card-debit reversal(s) (561) of {p.bank} not confirmed by the"
                  f" bank, the oldest since {_at(p.oldest)}", p.oldest)
            for p in pending if (now - p.oldest).total_seconds() > older_than]


def n8_alerts(waiting: int, oldest_age: float, now: datetime,
              older_than: float = N8_WAITING_AFTER) -> list[Alert]:
    """n8-writes-waiting: with N8 in a database of its own, writes the gateway made
    have waited in its outbox longer than ``older_than`` seconds (``oldest_age``:
    the oldest's age) -- N8 is away or refuses them."""
    if not waiting or oldest_age <= older_than:
        return []
    return [Alert(N8_WAITING, "n8", CRITICAL,
                  f"{waiting} write(s) of the gateway not in N8 yet, the oldest"
                  f" {oldest_age / 60:.0f} min old (bankgate n8 pending)",
                  now - timedelta(seconds=oldest_age))]


def database_alert(reason: str | None, now: datetime,
                   subject: str = "database") -> list[Alert]:
    """database-unreachable: the database did not answer (``reason`` says how);
    ``subject`` :data:`N8_DATABASE`: N8's, when it is a database of its own."""
    if reason is None:
        return []
    return [Alert(DATABASE_UNREACHABLE, subject, CRITICAL, reason, now)]


# -- episodes -----------------------------------------------------------------------------


@dataclass
class Episode:
    """One alert from its raise to its clearing (``cleared_at`` ``None``: open)."""

    alert: Alert
    raised_at: datetime
    cleared_at: datetime | None = None

    @property
    def open(self) -> bool:
        return self.cleared_at is None

    def as_dict(self) -> dict:
        return {**self.alert.as_dict(), "raised_at": _iso(self.raised_at),
                "cleared_at": _iso(self.cleared_at)}


@dataclass
class EpisodeTracker:
    """The open alerts and the recent episodes (the last ``history``), in memory."""

    history: int = 200
    open: dict[tuple[str, str], Episode] = field(default_factory=dict)
    recent: deque = field(default_factory=deque)

    def update(self, current: Iterable[Alert], now: datetime,
               checked: Collection[str] = KINDS) -> list[Event]:
        """The events of one check: ``current`` are the alerts that hold now among
        the ``checked`` kinds.  Open alerts of other kinds are left as they are."""
        found: dict[tuple[str, str], Alert] = {}
        for a in current:
            if a.kind not in checked:
                raise ValueError(f"alert {a.kind} given, but its kind was not checked")
            found.setdefault(a.key, a)
        events = []
        for key, ep in list(self.open.items()):
            if ep.alert.kind not in checked:
                continue
            a = found.pop(key, None)
            if a is None:
                ep.cleared_at = now
                del self.open[key]
                events.append(Event(CLEARED, ep.alert, now, ep.raised_at))
            else:  # still holds: its text may change, not when it began
                ep.alert = replace(a, since=ep.alert.since or a.since)
        for key, a in found.items():
            ep = Episode(a, now)
            self.open[key] = ep
            self.recent.append(ep)
            events.append(Event(RAISED, a, now, now))
        while len(self.recent) > self.history:
            self.recent.popleft()
        return events

    def open_alerts(self) -> list[Episode]:
        """Open episodes, critical first, then oldest first."""
        return sorted(self.open.values(),
                      key=lambda e: (SEVERITIES.index(e.alert.severity)
                                     if e.alert.severity in SEVERITIES else len(SEVERITIES),
                                     e.raised_at, e.alert.kind, e.alert.subject))

    def episodes(self) -> list[Episode]:
        """The recent episodes, newest first (open ones included)."""
        return list(reversed(self.recent))

    def open_by_kind(self) -> dict[str, int]:
        """Open alerts per kind, every kind named (0 for none)."""
        out = dict.fromkeys(KINDS, 0)
        for ep in self.open.values():
            out[ep.alert.kind] = out.get(ep.alert.kind, 0) + 1
        return out
