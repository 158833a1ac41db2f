"""The embedded demo: the parts of a gateway that come from :mod:`bankgate.devtools`.

``twistd bankgate`` (:mod:`bankgate.app.tap`) hands a :class:`Demo` to the
service; it acts only where the configuration asks -- ``n8.demo_customers``
seeds demo customers (and a demo invoice stock for invoicing banks) into a
reference N8 the gateway created, ``options.debit_host_simulate`` plays a
bank's card-debit host on loopback.  The production service itself never
imports a development tool: without a ``Demo`` it does neither.
"""

from __future__ import annotations

from bankgate.devtools.debithost import DebitHost
from bankgate.devtools.demo import seed


def simulated_host(reactor, codec):
    """The protocol factory of a simulated card-debit host speaking ``codec``."""
    return DebitHost(reactor, codec=codec).factory()


class Demo:
    """What a demo configuration gets on top of the gateway."""

    simulated_host = staticmethod(simulated_host)

    @staticmethod
    def seed(store, customers: int, invoices) -> list[str]:
        """Runs on the store's thread, into an empty reference N8: demo customers,
        bills and valve states, and 2,000 demo invoice numbers for each invoicing bank."""
        seed(store, customers, supply=True)  # with the season's valve states
        done = [f"{customers} demo customers seeded"]
        for name, settings in invoices.settings.items():
            if settings.enabled and not any(r["ranges"] for r in invoices.stock_report(name)):
                invoices.issue_stock(name, 1, 2000, code="DEMO", width=8, actor="demo")
                done.append(f"demo invoice stock DEMO00000001-DEMO00002000 issued to {name}")
        return done
