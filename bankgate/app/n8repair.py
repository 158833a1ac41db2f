"""The N8 repair job: what a crash or an N8 outage left in the outbox, applied.

With N8 in a database of its own (``[n8.database]``), a transaction whose N8
commit was lost leaves its N8 operations in the gateway's outbox
(:mod:`bankgate.store.n8outbox`).  This job applies them every
``[n8.database] repair_every`` seconds (rows older than :attr:`N8Repair.min_age`:
younger ones are still in flight) under the lease ``n8-repair``, so one process
of a gateway's workers and nodes does it at a time.  The start applies every row
before the banks are served (:func:`repair_at_start`).
"""

from __future__ import annotations

from twisted.internet import task
from twisted.logger import Logger

from bankgate.store import n8outbox

log = Logger(namespace="bankgate")


def repair_at_start(store) -> str:
    """Runs on the store's thread before the banks are served: every outbox row
    applied (a row N8 still refuses stays for the job).  A summary for the log."""
    done, waiting = n8outbox.repair(store, older_than=0)
    if waiting:
        return (f"N8 outbox: {done} applied, {waiting} waiting (N8 refuses;"
                " see `bankgate n8 pending`)")
    return f"N8 outbox: {done} applied" if done else "N8 outbox empty"


class N8Repair:
    """Applies the outbox's rows left behind, on the injected clock."""

    min_age = 10.0  # seconds: a younger row may belong to a transaction in flight

    def __init__(self, gw, leases, interval: float):
        self.gw = gw
        self.store = gw.store
        self.leases = leases
        self.loop = task.LoopingCall(self.tick)
        self.loop.clock = gw.reactor
        self.interval = interval
        self._running = None
        self.waiting = 0  # rows N8 refused at the last run (0: all applied)

    def start(self) -> None:
        self.loop.start(self.interval, now=False).addErrback(
            lambda f: log.failure("N8 repair stopped", f))

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()

    def tick(self):
        if self._running is not None:
            return None
        self._running = self.store.call(self.run)
        self._running.addErrback(lambda f: log.failure("N8 repair failed", f))
        self._running.addBoth(self._done)
        return None

    def _done(self, result):
        self._running = None
        return result

    def run(self) -> tuple[int, int]:
        """On the store's thread: one pass under the lease; (applied, waiting)."""
        n8outbox.clear_done(self.store)  # what this process saw N8 commit
        n8outbox.vacuum(self.store)  # PostgreSQL: once it holds VACUUM_AFTER dead rows
        if not n8outbox.waiting(self.store.engine, self.min_age):
            self.waiting = 0
            return 0, 0
        with self.leases.holding("n8-repair", job={"job": "N8 repair", "by": "service"}) as lease:
            if lease is None:
                return 0, 0
            done, waiting = n8outbox.repair(self.store, older_than=self.min_age)
        if done:
            log.info("bankgate: N8 repair: {done} applied, {waiting} waiting", done=done,
                     waiting=waiting)
        if waiting and not self.waiting:
            log.warn("bankgate: N8 repair: {waiting} waiting, N8 refuses (see `bankgate n8"
                     " pending`)", waiting=waiting)
        self.waiting = waiting
        return done, waiting
