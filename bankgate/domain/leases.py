"""Leases: a job runs in one process at a time across the processes and nodes of
one database, and another process takes it over when its holder dies.

A lease is a row of ``bg_lease`` named after its job (SQL in
:mod:`bankgate.store.leases`).  A process takes it for ``ttl`` seconds, renews it
every ``ttl / 3`` seconds while the job runs and releases it when the job ends;
a holder that stops renewing (killed, frozen, cut off from the database) loses
it ``ttl`` seconds after its last renewal, and the next process that asks for it
takes it over -- logged, and audited with the silent holder's name.  The jobs
themselves stay idempotent (a cut-off of a closed date changes nothing, a
reconciliation run again balances nothing twice): the lease keeps two processes
from doing the same work at once, and says which process is doing it.

:class:`Leases` is one process's client: its holder id (``host:pid:id``, made
again in a forked child) and its clock -- the injected ``now`` the gateway writes
every timestamp with, not the database's (nodes keep their clocks in step).

- :meth:`Leases.run` (the service, on its reactor) takes the lease on the store's
  thread pool, runs the job (a Deferred), renews the lease from the clock every
  ``ttl / 3`` seconds while the job runs and releases it (or marks it finished)
  after; a renewal that finds the lease taken over marks it lost and tells the
  job (:meth:`Lease.on_lost`).
- :meth:`Leases.holding` (on a worker thread, for short jobs and the command
  line): take, yield, release.
- :meth:`Lease.check`, called by a long job between steps on its thread: raises
  :class:`LeaseLost` once the lease is lost -- the job gives up -- and renews it
  when a third of the ttl has passed since the last renewal.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from bankgate.store import leases as sql

log = Logger(namespace="bankgate.lease")

DEFAULT_TTL = 60.0  # seconds a silent holder keeps a lease


class LeaseBusy(RuntimeError):
    """Another process holds the lease -- or finished its job, for a job that runs
    once (``finished``).  ``row`` is the lease as it is."""

    def __init__(self, name: str, row: dict, message: str | None = None):
        self.name, self.row = name, row
        self.holder = row["holder"]
        self.finished = row.get("finished_at") is not None
        super().__init__(message or f"{name} {describe(row)}")


class LeaseLost(RuntimeError):
    """The lease was taken over (its holder was silent for longer than its ttl):
    the job stops where it is."""


def default_holder() -> str:
    """This process's holder id: ``host:pid:random`` (at most 58 characters)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def describe(row: dict) -> str:
    """Who has a lease, for a message: ``is held by H since T (until U)``, or
    ``was done by H at T``."""
    if row.get("finished_at") is not None:
        return f"was done by {row['holder']} at {row['finished_at']:%Y-%m-%d %H:%M:%S}"
    return (f"is held by {row['holder']} since {row['acquired_at']:%Y-%m-%d %H:%M:%S}"
            f" (until {row['expires_at']:%H:%M:%S} unless renewed)")


class Lease:
    """One lease this process holds."""

    def __init__(self, client: Leases, name: str, ttl: float, row: dict,
                 previous: dict | None):
        self.client, self.name, self.ttl = client, name, ttl
        self.holder: str = row["holder"]
        self.acquired_at: datetime = row["acquired_at"]
        self.renewed_at: datetime = row["renewed_at"]
        self.job: dict = row.get("job") or {}
        self.previous = previous  # the silent holder's row this lease replaced, or None
        self.lost = False  # not ours any more: released, finished or taken over
        self.taken = False  # taken over by another process (found by a renewal)
        self._lock = threading.Lock()
        self._on_lost: list[Callable[[], object]] = []
        self._renewing = False

    @property
    def took_over(self) -> str | None:
        """The holder this lease was taken from, or ``None``."""
        return self.previous["holder"] if self.previous else None

    # -- on a worker thread ----------------------------------------------------------

    def check(self) -> None:
        """Between steps of a job: :class:`LeaseLost` once the lease is lost; a
        renewal when a third of the ttl has passed since the last one."""
        if self.lost:
            raise LeaseLost(f"{self.name}: the lease was taken over; giving up")
        if self.client.now() - self.renewed_at >= timedelta(seconds=self.ttl / 3):
            if not self.renew():
                raise LeaseLost(f"{self.name}: the lease was taken over; giving up")

    def renew(self) -> bool:
        """Extend the lease by its ttl from now; False (and :attr:`lost`) when
        another process has it."""
        with self._lock:
            if self.lost:
                return False
            now = self.client.now()
            store = self.client.store
            if store.run_sync(sql.renew, self.name, self.holder, now, self.ttl):
                self.renewed_at = now
                return True
            self.lost = self.taken = True
            row = store.run_sync(sql.get, self.name, readonly=True)
        who = f"taken over by {row['holder']}" if row else "released by someone else"
        log.warn("lease {name}: lost ({who}); this process ({holder}) gives its job up",
                 name=self.name, who=who, holder=self.holder)
        return False

    def release(self) -> bool:
        """Give the lease up; False if it was not ours any more."""
        with self._lock:
            if self.lost:
                return False
            self.lost = True  # from now on, never renewed again
            return self.client.store.run_sync(sql.release, self.name, self.holder)

    def finish(self) -> bool:
        """Mark the job done for good (a job that runs once): no process takes the
        lease again.  False if it was not ours any more."""
        with self._lock:
            if self.lost:
                return False
            self.lost = True
            return self.client.store.run_sync(sql.finish, self.name, self.holder,
                                              self.client.now())

    # -- on the reactor --------------------------------------------------------------

    def raise_if_lost(self) -> None:
        """:class:`LeaseLost` when the lease is known lost (no database call)."""
        if self.lost:
            raise LeaseLost(f"{self.name}: the lease was taken over; giving up")

    def on_lost(self, fn: Callable[[], object]) -> None:
        """Call ``fn`` (on the reactor) when a renewal from the clock finds the
        lease lost -- e.g. to cancel what the job waits for."""
        self._on_lost.append(fn)

    def _fire_lost(self) -> None:
        fns, self._on_lost = self._on_lost, []  # once
        for fn in fns:
            try:
                fn()
            except Exception:  # noqa: BLE001 - one bad callback must not stop the others
                log.failure("lease {name}: giving up the job failed", name=self.name)


class Leases:
    """One process's lease client over ``store``.

    :param now: the clock leases are written with (the gateway's ``now``).
    :param ttl: the default ttl, seconds.
    :param clock: an ``IReactorTime`` for :meth:`run`'s renewals (``None``: only
        the synchronous methods).
    :param holder: a fixed holder id (tests); default :func:`default_holder`,
        made again when the process forks.
    """

    def __init__(self, store, *, now: Callable[[], datetime], ttl: float = DEFAULT_TTL,
                 clock=None, holder: str | None = None):
        self.store, self.now, self.ttl, self.clock = store, now, ttl, clock
        self._fixed = holder
        self._holder = holder or default_holder()
        self._pid = os.getpid()

    @classmethod
    def shared(cls, owner, store, *, now: Callable[[], datetime], clock,
               ttl: float = DEFAULT_TTL) -> Leases:
        """The one client of ``owner`` (the gateway service), made on first use and
        kept as ``owner.leases``: every scheduler of a process holds its leases
        under one holder id."""
        leases = getattr(owner, "leases", None)
        if not isinstance(leases, cls):
            leases = cls(store, now=now, ttl=ttl, clock=clock)
            owner.leases = leases
        return leases

    @property
    def holder(self) -> str:
        if self._fixed is None and self._pid != os.getpid():  # a forked worker: its own id
            self._holder, self._pid = default_holder(), os.getpid()
        return self._holder

    # -- synchronous (on a worker thread) --------------------------------------------

    def acquire(self, name: str, *, ttl: float | None = None, job: dict | None = None,
                action: str = "lease-takeover", subject: str | None = None) -> Lease:
        """Take the lease ``name`` (or renew it, when this process holds it):
        a :class:`Lease`, or :class:`LeaseBusy`.  A takeover from a silent holder
        is logged and audited (``action`` on ``subject``)."""
        ttl = ttl or self.ttl
        got = self.store.run_sync(sql.acquire, name, self.holder, self.now(), ttl, job=job,
                                  action=action, subject=subject)
        if not got["ok"]:
            raise LeaseBusy(name, got["row"])
        prev = got["previous"]
        if prev is not None:
            log.warn("lease {name}: taken over from {old}, silent since {renewed}"
                     " (expired {expired}); now held by {holder}", name=name,
                     old=prev["holder"], renewed=f"{prev['renewed_at']:%Y-%m-%d %H:%M:%S}",
                     expired=f"{prev['expires_at']:%H:%M:%S}", holder=self.holder)
        return Lease(self, name, ttl, got["row"], prev)

    @contextmanager
    def holding(self, name: str, *, busy: Callable[[dict], None] | None = None,
                **kw) -> Iterator[Lease | None]:
        """``with leases.holding(name) as lease:`` -- the lease, or ``None`` when
        another process holds it (``busy`` is called with the holder's row then);
        released at the end of the block."""
        try:
            lease = self.acquire(name, **kw)
        except LeaseBusy as e:
            if busy is not None:
                busy(e.row)
            yield None
            return
        try:
            yield lease
        finally:
            try:
                lease.release()
            except Exception as e:  # noqa: BLE001 - the database away: it expires on its own
                log.warn("lease {name}: not released ({why}); it expires in {ttl:g} s",
                         name=name, why=str(e)[:200], ttl=lease.ttl)

    def expired(self, prefix: str) -> list[dict]:
        """Leases named ``prefix...`` whose holder went silent without releasing
        them: the jobs of a process that died."""
        return self.store.run_sync(sql.expired, prefix, self.now(), readonly=True)

    def get(self, name: str) -> dict | None:
        return self.store.run_sync(sql.get, name, readonly=True)

    def purge(self, before: datetime) -> int:
        """Delete the rows of jobs finished, and of leases expired, before ``before``."""
        return self.store.run_sync(sql.purge, before)

    # -- asynchronous (on the reactor) -----------------------------------------------

    def run(self, name: str, job: Callable[[Lease], object], *, ttl: float | None = None,
            what: dict | None = None, finish: bool = False, action: str = "lease-takeover",
            subject: str | None = None) -> defer.Deferred:
        """Run ``job(lease)`` (a value or a Deferred) under the lease ``name``,
        renewing it every ``ttl / 3`` seconds on the clock while the job runs.

        A Deferred of the job's result; it fails with :class:`LeaseBusy` (nothing
        ran) when another process holds the lease.  At the end the lease is
        released -- or, with ``finish``, marked done when the job succeeded, so
        that no process runs it again.  A renewal that finds the lease taken over
        marks it lost (:meth:`Lease.check` then raises) and calls the job's
        :meth:`Lease.on_lost` callbacks."""
        if self.clock is None:
            raise RuntimeError("Leases.run needs a clock")
        ttl = ttl or self.ttl
        d = self.store.call(self.acquire, name, ttl=ttl, job=what, action=action,
                            subject=subject)

        def got(lease: Lease):
            loop = task.LoopingCall(self._renew, lease)
            loop.clock = self.clock
            loop.start(ttl / 3, now=False)
            work = defer.maybeDeferred(job, lease)

            def ended(result):
                if loop.running:
                    loop.stop()
                if lease.lost:
                    return result
                done = finish and not isinstance(result, Failure)
                end = self.store.call(lease.finish if done else lease.release)
                end.addErrback(lambda f: log.warn(
                    "lease {name}: not released ({why}); it expires in {ttl:g} s",
                    name=name, why=f.getErrorMessage()[:200], ttl=ttl))
                return end.addBoth(lambda _: result)

            return work.addBoth(ended)

        return d.addCallback(got)

    def _renew(self, lease: Lease) -> None:
        """From the clock: renew on the store's pool, one renewal at a time."""
        if lease.lost or lease._renewing:
            return
        lease._renewing = True

        def done(ok):
            lease._renewing = False
            if not ok and lease.taken:
                lease._fire_lost()

        def failed(f):
            lease._renewing = False
            log.warn("lease {name}: not renewed ({why}); trying again in {s:g} s",
                     name=lease.name, why=f.getErrorMessage()[:200], s=lease.ttl / 3)

        self.store.call(lease.renew).addCallbacks(done, failed)
