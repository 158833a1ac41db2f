"""A small hand-built world for the supply-status tests: households in three
districts with heating bills of the season, and valve states, on either valve source."""

from __future__ import annotations

import dataclasses
from datetime import date

import sqlalchemy as sa
from conftest import BANKS, FakeClock
from ledger_helpers import engine_of

from bankgate.domain.ledger import Ledger
from bankgate.domain.supply import SupplyHook, SupplySettings, WorkOrders
from bankgate.store import model

SEASON = "2026-2027"
DUE = date(2026, 12, 31)  # after the tests' today: no late fees

# customer -> (district, [(bill_id, fee_type, period, amount, paid)], valve state or None)
HOUSEHOLDS = {
    # unpaid, closed: pays in the tests
    "200000001": ("和平区", [("H1", "01", SEASON, 100000, 0), ("H1P", "02", "2026-11", 5000, 0)],
                  "closed"),
    # two heating bills of the season, no valve row (closed)
    "200000002": ("和平区", [("H2A", "01", SEASON, 60000, 0), ("H2B", "01", SEASON, 40000, 0)],
                  None),
    # paid in N8 before the gateway, valve closed: a complaint without an order
    "200000003": ("沈河区", [("H3", "01", SEASON, 100000, 100000)], "closed"),
    # unpaid, valve open: the leak
    "200000004": ("沈河区", [("H4", "01", SEASON, 100000, 0)], "open"),
    # 70% paid, valve open: a leak under "full", paid under "share" 0.6
    "200000005": ("沈河区", [("H5", "01", SEASON, 100000, 70000)], "open"),
    # no heating bill, valve open: in neither report
    "200000006": ("和平区", [("H6", "02", "2026-11", 5000, 0)], "open"),
    # only last season's heating, valve open this season: in neither report
    "200000007": ("大东区", [("H7", "01", "2025-2026", 80000, 0)], "open"),
    # paid, valve open: as it should be
    "200000008": ("大东区", [("H8", "01", SEASON, 50000, 50000)], "open"),
}


def valve_table(store, source: str) -> sa.Table:
    return store.n8["valve"] if source == "n8" else model.valve


def seed_supply(store, source: str) -> None:
    n8 = store.n8
    v = valve_table(store, source)
    valves = []
    with store.n8_engine.begin() as c:
        c.execute(n8["tariff"].insert(), [
            {"fee_type": "01", "customer_class": "R", "unit_price": 2600, "late_fee_ppm": 500},
            {"fee_type": "02", "customer_class": "R", "unit_price": 150, "late_fee_ppm": 0},
        ])
        for no, (district, bills, valve) in HOUSEHOLDS.items():
            c.execute(n8["customer"].insert().values(
                customer_no=no, name=f"户{no[-1]}", address=f"{district}{no[-1]}号",
                customer_class="R", district=district, status="A"))
            for bill_id, fee, period, amount, paid in bills:
                c.execute(n8["bill"].insert().values(
                    bill_id=bill_id, customer_no=no, fee_type=fee, period=period,
                    amount=amount, paid_amount=paid, late_fee_paid=0, due_date=DUE))
            if valve is not None:
                valves.append({"season": SEASON, "customer_no": no, "state": valve})
    if valves:
        with engine_of(store, v).begin() as c:
            c.execute(v.insert(), valves)


@dataclasses.dataclass
class World:
    store: object
    settings: SupplySettings
    clock: FakeClock
    ledger: Ledger
    orders: WorkOrders


def world(store, source: str = "n8", rule: str = "full", share: float = 0.6) -> World:
    settings = SupplySettings(source=source, rule=rule, share=share)
    clock = FakeClock()
    ledger = Ledger(store, BANKS, now=clock, hooks=[SupplyHook(settings)])
    return World(store, settings, clock, ledger, WorkOrders(store, settings, clock))


def all_orders(store) -> list[dict]:
    w = model.work_order
    with store.engine.connect() as c:
        return [dict(r) for r in c.execute(sa.select(w).order_by(w.c.id)).mappings()]


def valve_states(store, source: str) -> dict[str, str]:
    v = valve_table(store, source)
    with engine_of(store, v).connect() as c:
        return {r.customer_no: r.state
                for r in c.execute(sa.select(v.c.customer_no, v.c.state)
                                   .where(v.c.season == SEASON))}
