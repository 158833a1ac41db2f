"""Card debits (卡扣, ref-delim §7) put together: links, rules and their services.

The rules (:class:`bankgate.domain.carddebit.CardDebits`) and the link to a
bank's debit host (:class:`bankgate.wire.debitlink.DebitLink`) know nothing
of each other's construction; this module builds, for every bank with
``options.debit_host``, its client endpoint and link, hands the links to the
rules, and gives the service the Twisted services to run: a
``ClientService`` per bank (reconnecting with back-off) and the reversal
queue's sweep.  The operator's ``bankgate withholding debit|queue`` builds
its debits here too.

In the service the queue sweeps a bank only while this process holds the
bank's lease ``carddebit:{bank}`` (one process at a time sends a bank's 561s,
across processes and nodes on one database: :mod:`bankgate.domain.carddebit`);
the operator's commands sweep without one (the rows' own claims keep a reversal
from going out twice).

The simulated bank host a demo configuration asks for
(``debit_host_simulate``) is a development tool: it is injected
(``simulated_host``, from :mod:`bankgate.app.demo`), never imported here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from twisted.application import service, strports
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger

from bankgate.app.config import Config
from bankgate.app.options import simulated_listen, withholding_options
from bankgate.domain.carddebit import CardDebits, DebitBank
from bankgate.domain.leases import Leases
from bankgate.domain.ledger import Ledger
from bankgate.wire.debitlink import DebitLink

log = Logger(namespace="bankgate.carddebit")

#: ``(reactor, codec) -> protocol factory`` of a simulated debit host (demo only)
SimulatedHost = Callable[[object, object], IProtocolFactory]


def build(ledger: Ledger, cfg: Config, codecs: dict, clock, now: Callable[[], datetime],
          run_db: Callable | None = None, endpoint_for: Callable | None = None,
          banks: list[str] | None = None, leases: Leases | None = None) -> CardDebits:
    """CardDebits for every bank with ``options.debit_host`` (or those named),
    each with its link.  ``endpoint_for(name, opts)`` replaces the client
    endpoint of ``debit_host`` (tests); ``leases``: the process's lease client
    (the queue then sweeps only the banks whose reversal lease it holds)."""
    options = withholding_options(cfg, codecs)
    out = {}
    for b in cfg.banks:
        opts = options[b.name]
        if not opts.card_debit or (banks is not None and b.name not in banks):
            continue
        ep = endpoint_for(b.name, opts) if endpoint_for else clientFromString(clock,
                                                                              opts.debit_host)
        link = DebitLink(b.name, ep, clock, codecs[b.plugin], opts)
        out[b.name] = DebitBank(b.name, b.bank_code, opts, codecs[b.plugin], link)
    return CardDebits(ledger, out, clock, now, run_db, leases=leases)


class ReversalQueueService(service.Service):
    """Runs the sweep of :class:`CardDebits` on its clock while started."""

    def __init__(self, debits: CardDebits):
        self.debits = debits
        self.setName("card-debit-queue")

    def startService(self):  # noqa: N802
        super().startService()
        self.debits.start()

    def stopService(self):  # noqa: N802
        released = self.debits.stop()  # its reversal leases given up, for another process
        super().stopService()
        return released


def make_services(gateway_service, simulated_host: SimulatedHost | None = None
                  ) -> tuple[CardDebits | None, list[service.IService]]:
    """The card debits of a running gateway and their services: a
    ClientService per bank with ``options.debit_host``, then the reversal
    queue's LoopingCall.  ``(None, [])`` when no bank has a debit host.

    For a bank with ``debit_host_simulate`` (demo only) a simulated bank host
    built by ``simulated_host(reactor, codec)`` listens first, on the address
    of ``debit_host``; without ``simulated_host`` none is started (a warning
    says so).  Add the services after the database is ready; the debits are
    also on the last service's ``.debits``."""
    gw = gateway_service
    leases = Leases.shared(gw, gw.store, now=gw.now, clock=gw.reactor,
                           ttl=gw.cfg.lease_ttl)
    debits = build(gw.ledger, gw.cfg, gw.codecs, gw.reactor, gw.now, run_db=gw.store.call,
                   leases=leases)
    if not debits.banks:
        return None, []
    out: list[service.IService] = []
    for name, b in debits.banks.items():
        if b.opts.debit_host_simulate:
            if simulated_host is None:
                log.warn("bank {bank}: debit_host_simulate is set, but this process has no"
                         " simulated debit host (only the demo provides one): not started",
                         bank=name)
            else:
                host = simulated_host(gw.reactor, b.codec)
                svc = strports.service(simulated_listen(b.opts), host, reactor=gw.reactor)
                svc.setName(f"{name}-simulated-debit-host")
                out.append(svc)
        out.append(b.link.service)
    out.append(ReversalQueueService(debits))
    return debits, out
