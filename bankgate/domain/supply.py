"""Supply status (开栓/停栓): work orders (工单) from payments, and the two leaks.

With one valve per household (一户一阀) a household's heating is opened once the
season's heating fee is paid.  The rule (``[supply] rule``):

- ``full``: the household's heating bills of the season (fee type ``[supply]
  fee_type``, period = the season, e.g. ``2026-2027``) have no principal outstanding;
- ``share``: the principal paid is at least ``[supply] share`` of the principal billed.

A household with no heating bill for the season is not settled (there is nothing to
have paid).  :class:`SupplyHook` runs inside every payment's transaction: a payment
that pays heating principal of a season and leaves the household settled creates an
``open_valve`` order naming the payment, unless the valve is already open or an
open-valve order already stands (open, or done for a payment that still stands).
Seasons are the heating bills' periods (``2026-2027``); a payment of an earlier
season than today's (arrears of a season that has ended) opens nothing.
Undoing a payment (reversal, refund, expiry, a two-phase cancel, reconciliation's
抹账) cancels its open orders, and any open-valve order of a household the undo
leaves unsettled; where the valve was already opened (the order is done) it creates
a ``review`` order instead.  If the household is still settled after the cancel
(another payment paid enough), the order passes to that payment, so that every
settled household keeps an open valve or an order, and no open order names an
undone payment.

:class:`WorkOrders` is the operator's side (CLI, console): list, export, mark done,
the gateway-kept valve states, and the two reports as
:class:`~bankgate.domain.reporting.ReportTable`: households supplied but unpaid (the
leak) and households paid but still closed (the complaints).  ``docs/supply.rst`` is
the manual.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime

from bankgate.domain.reporting import Chart, Column, ReportTable
from bankgate.store import supply as sql
from bankgate.store.db import Store
from bankgate.store.tx import Tx

log = logging.getLogger("bankgate.supply")

SOURCES = ("n8", "gateway")
RULES = ("full", "share")
KINDS = ("open_valve", "review")
STATES = ("open", "done", "cancelled")
VALVE_STATES = (sql.OPEN, sql.CLOSED)
OPEN_VALVE, REVIEW = KINDS
OPEN, DONE, CANCELLED = STATES
SYSTEM = "system"
SEASON = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,15}")
MAX_NOTE = 400
TOTAL = "合计 total"  # as the standard reports label their totals
# what undid a payment (bg_undo.kind), as an operator reads it
UNDONE = {"REVERSAL": "reversed", "REFUND": "refunded", "EXPIRY": "expired unconfirmed",
          "CANCEL": "cancelled by the bank", "RECON": "reversed by reconciliation"}


class SupplyError(ValueError):
    """A refused operator action; the message says why.  Nothing was changed."""


@dataclass(frozen=True)
class SupplySettings:
    """The ``[supply]`` table, parsed (``bankgate/app/config.py``)."""

    enabled: bool = True
    source: str = "n8"  # where valve states are read: "n8" (mapped) or "gateway" (bg_valve)
    rule: str = "full"  # "full" | "share"
    share: float = 0.6  # with rule = "share": the part of the season's heating to pay
    fee_type: str = "01"  # the heating fee type (采暖费)

    @property
    def share_bp(self) -> int:
        """The rule as the paid share in basis points: 10000 is paid in full."""
        return sql.FULL_BP if self.rule == "full" else round(self.share * sql.FULL_BP)

    def settled(self, billed: int, paid: int) -> bool:
        """Whether (billed, paid) principal of a season settles it by the rule."""
        if billed <= 0:
            return False
        return paid * sql.FULL_BP >= billed * self.share_bp

    def describe(self) -> str:
        if self.rule == "full":
            return f"paid in full (fee type {self.fee_type})"
        return f"paid {self.share:.0%} or more (fee type {self.fee_type})"


def season_of(d: date) -> str:
    """The heating season a day falls in, named as the heating bills' period: a
    season starts in the autumn, so 2026-11-27 and 2027-03-01 are in ``2026-2027``."""
    s = d.year if d.month >= 7 else d.year - 1
    return f"{s}-{s + 1}"


def check_season(season: str) -> str:
    if not isinstance(season, str) or not SEASON.fullmatch(season):
        raise SupplyError(f"season {season!r}: expected a heating bills' period like"
                          " '2026-2027' (letters, digits, '-' and '_', at most 16)")
    return season


# -- the ledger hook ----------------------------------------------------------------------


class SupplyHook:
    """The ledger's hook: open-valve orders for payments that settle a season,
    cancelled (or reviewed) when their payment is undone."""

    def __init__(self, settings: SupplySettings):
        self.s = settings
        self._valves: bool | None = None  # is the valve table there (checked once)

    def _valve_source(self, tx: Tx) -> str | None:
        """The valve source, or None when its table is not there (checked once)."""
        if self._valves is None:
            self._valves = sql.valve_table_exists(tx, self.s.source)
            if not self._valves:
                log.error("[supply] source = \"n8\" but N8 has no valve table %r: every"
                          " valve reads as closed; map [n8.tables] valve, or set [supply]"
                          " source = \"gateway\"", tx.n8["valve"].name)
        return self.s.source if self._valves else None

    def after_post(self, tx: Tx, payment: dict, allocations: list[dict], now: datetime):
        fee = self.s.fee_type
        paid = [a for a in allocations if a.get("principal", 0) > 0]
        if all("fee_type" in a and "period" in a for a in paid):
            # the ledger's rows name their bill's fee type and period: no query, and
            # a payment of no heating bill costs nothing here
            seasons = sorted({a["period"] for a in paid if a["fee_type"] == fee})
        else:
            seasons = sql.heating_periods(tx, [a["bill_id"] for a in paid], fee)
        if not seasons:
            return None
        current = season_of(now.date())
        for season in seasons:
            if season >= current:  # a past season's arrears open no valve
                self.settle(tx, payment["customer_no"], season, payment["receipt_no"], now)
        return None

    def settle(self, tx: Tx, customer_no: str, season: str, receipt_no: str | None,
               now: datetime, note: str = "") -> int | None:
        """An open-valve order for the household if the season is settled and nothing
        stands for it yet; returns the new order's id.

        One round trip reads the season's totals and the valve (and, where the
        transaction holds the whole database -- SQLite -- the standing orders too);
        elsewhere the open-valve orders are read by a second query, under a row lock.
        """
        billed, paid, valve, standing = sql.season_state(
            tx, self._valve_source(tx), customer_no, season, self.s.fee_type,
            orders=not tx.lock)
        if not self.s.settled(billed, paid):
            return None
        if standing is None:
            orders = sql.orders(tx, customer_no=customer_no, season=season, kind=OPEN_VALVE,
                                lock=True)
            standing = any(o["state"] == OPEN for o in orders) or any(
                o["state"] == DONE and sql.payment_standing(tx, o["receipt_no"])
                for o in orders)
        if standing:
            return None  # an open order, or one done for a payment that still stands
        if valve == sql.OPEN:
            return None
        return sql.order_insert(
            tx, customer_no=customer_no, season=season, kind=OPEN_VALVE, state=OPEN,
            receipt_no=receipt_no, created_at=now,
            note=note or f"heating {season} settled ({self.s.describe()}): open the valve")

    def after_undo(self, tx: Tx, payment: dict, kind: str, now: datetime) -> None:
        receipt, customer = payment["receipt_no"], payment["customer_no"]
        what = UNDONE.get(kind, kind.lower())
        mine = sql.orders(tx, receipt_no=receipt, kind=OPEN_VALVE, lock=True)
        seasons = set(sql.paid_seasons(tx, payment["id"], self.s.fee_type))
        seasons |= {o["season"] for o in mine}
        for season in sorted(seasons):
            self._undone(tx, customer, season, receipt, what, now,
                         [o for o in mine if o["season"] == season])

    def _undone(self, tx: Tx, customer: str, season: str, receipt: str, what: str,
                now: datetime, mine: list[dict]) -> None:
        """One season of a household after one of its payments was undone."""
        billed, paid = sql.season_heating(tx, customer, season, self.s.fee_type)
        settled = self.s.settled(billed, paid)
        why = f"payment {receipt} {what}"
        if not settled:
            why += f"; heating {season} no longer {self.s.describe()}"
        orders = sql.orders(tx, customer_no=customer, season=season, lock=True)
        done_for = []
        for o in orders:
            if o["kind"] != OPEN_VALVE:
                continue
            if o["state"] == OPEN and (o["receipt_no"] == receipt or not settled):
                sql.order_set(tx, o["id"], state=CANCELLED, done_at=now, done_by=SYSTEM,
                              note=_note(o["note"], f"cancelled: {why}"))
            elif o["state"] == DONE and (o["receipt_no"] == receipt or not settled):
                done_for.append(o)
        if done_for and not any(o["kind"] == REVIEW and o["state"] == OPEN for o in orders):
            ids = ", ".join(str(o["id"]) for o in done_for)
            sql.order_insert(
                tx, customer_no=customer, season=season, kind=REVIEW, state=OPEN,
                receipt_no=receipt, created_at=now,
                note=(f"{why}, after the valve was opened (order {ids}): check the"
                      " household's valve"))
        if settled and any(o["state"] == OPEN for o in mine):
            # still settled by other payments (the share rule): the order passes to them
            other = sql.settling_receipt(tx, customer, season, self.s.fee_type)
            self.settle(tx, customer, season, other, now,
                        note=f"heating {season} still settled after {why}: open the valve")


def _note(old: str | None, add: str) -> str:
    text = f"{old}; {add}" if old else add
    return text[-MAX_NOTE:]


def make_hook(settings: SupplySettings | None) -> SupplyHook | None:
    """The hook for ``Ledger(hooks=[...])``; None when supply status is off."""
    if settings is None or not settings.enabled:
        return None
    return SupplyHook(settings)


# -- the operator's side ------------------------------------------------------------------

ORDER_COLUMNS = (
    Column("id", "工单号 order", "int"),
    Column("customer_no", "用户编号 customer", "text"),
    Column("name", "户名 name", "text"),
    Column("district", "片区 district", "text"),
    Column("address", "地址 address", "text"),
    Column("season", "采暖期 season", "text"),
    Column("kind", "类型 kind", "text"),
    Column("state", "状态 state", "text"),
    Column("receipt_no", "缴费流水 receipt", "text"),
    Column("created_at", "创建 created", "text"),
    Column("done_at", "完成 done", "text"),
    Column("done_by", "经办 by", "text"),
    Column("note", "备注 note", "text"),
)

UNPAID_COLUMNS = (
    Column("district", "片区 district", "text"),
    Column("households", "户数 households", "int"),
    Column("billed", "应收 billed", "fen"),
    Column("paid", "实收 paid", "fen"),
    Column("outstanding", "欠费 outstanding", "fen"),
)

CLOSED_COLUMNS = (
    Column("district", "片区 district", "text"),
    Column("households", "户数 households", "int"),
    Column("with_order", "有工单 with an open order", "int"),
    Column("without_order", "无工单 without an order", "int"),
    Column("paid", "实收 paid", "fen"),
)

HOUSEHOLD_COLUMNS = (
    Column("customer_no", "用户编号 customer", "text"),
    Column("name", "户名 name", "text"),
    Column("district", "片区 district", "text"),
    Column("address", "地址 address", "text"),
    Column("billed", "应收 billed", "fen"),
    Column("paid", "实收 paid", "fen"),
    Column("valve", "阀门 valve", "text"),
)


def _text(v) -> str:
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    return "" if v is None else str(v)


class WorkOrders:
    """Operator actions on work orders and valves, and the supply reports.  Each
    action is one transaction; a refusal raises :class:`SupplyError` and changes
    nothing."""

    def __init__(self, store: Store, settings: SupplySettings, now: Callable[[], datetime]):
        self.store = store
        self.s = settings
        self.now = now

    def season(self, season: str | None = None) -> str:
        return check_season(season) if season else season_of(self.now().date())

    # -- work orders ----------------------------------------------------------------------

    def list(self, *, state: str | None = OPEN, district: str | None = None,
             season: str | None = None, kind: str | None = None,
             limit: int | None = None) -> list[dict]:
        if state is not None and state not in STATES:
            raise SupplyError(f"state {state!r}: expected one of {', '.join(STATES)}")
        if kind is not None and kind not in KINDS:
            raise SupplyError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
        if season is not None:
            check_season(season)
        names = [c.name for c in ORDER_COLUMNS]
        return self.store.run_sync(lambda tx: [
            dict(zip(names, r, strict=True))
            for r in sql.order_list(tx, state=state, district=district, season=season,
                                    kind=kind, limit=limit)], readonly=True)

    def table(self, **filters) -> ReportTable:
        """The work orders as a report table (for export)."""
        rows = self.list(**filters)
        return ReportTable(
            name="workorders", title="工单 Work orders",
            params={k: v for k, v in filters.items() if v is not None},
            columns=ORDER_COLUMNS,
            rows=[tuple(_text(r[c.name]) if c.kind == "text" else r[c.name]
                        for c in ORDER_COLUMNS) for r in rows],
            notes=() if rows else ("empty: no work orders match",))

    def done(self, order_id: int, note: str, actor: str) -> dict:
        """Mark an open order done (who, when, what was done).  An open-valve order
        with ``source = "gateway"`` also records the valve as open."""
        note = (note or "").strip()
        if not note:
            raise SupplyError("a work order is marked done with a note saying what was done")
        if len(note) > 300:
            raise SupplyError(f"the note is {len(note)} characters; at most 300")
        return self.store.run_sync(self._done_tx, order_id, note, actor)

    def _done_tx(self, tx: Tx, order_id: int, note: str, actor: str) -> dict:
        o = sql.order_get(tx, order_id, lock=True)
        if o is None:
            raise SupplyError(f"no work order {order_id}")
        if o["state"] != OPEN:
            raise SupplyError(f"work order {order_id} is {o['state']}"
                              f" ({_text(o['done_at'])} by {o['done_by'] or '-'}): only an"
                              " open order can be marked done")
        now = self.now()
        sql.order_set(tx, order_id, state=DONE, done_at=now, done_by=actor,
                      note=_note(o["note"], note))
        if o["kind"] == OPEN_VALVE and self.s.source == "gateway":
            sql.valve_set(tx, o["customer_no"], o["season"], sql.OPEN, now, actor)
        tx.audit(now, actor, "workorder-done", str(order_id),
                 {"customer_no": o["customer_no"], "season": o["season"], "kind": o["kind"],
                  "receipt_no": o["receipt_no"], "note": note})
        return {**o, "state": DONE, "done_at": now, "done_by": actor,
                "note": _note(o["note"], note)}

    # -- valves kept by the gateway ----------------------------------------------------------

    def set_valve(self, customer_no: str, season: str, state: str, actor: str) -> str:
        """Record a valve opened or closed (``source = "gateway"`` only); returns the
        state it had.  Opening it completes nothing by itself: mark the order done."""
        if self.s.source != "gateway":
            raise SupplyError("[supply] source is \"n8\": valve states are N8's; change them"
                              " in N8 (the gateway only reads them)")
        if state not in VALVE_STATES:
            raise SupplyError(f"state {state!r}: expected open or closed")
        check_season(season)
        return self.store.run_sync(self._set_valve_tx, customer_no, season, state, actor)

    def _set_valve_tx(self, tx: Tx, customer_no: str, season: str, state: str,
                      actor: str) -> str:
        if tx.customer(customer_no) is None:
            raise SupplyError(f"no customer {customer_no!r} in N8")
        now = self.now()
        was = sql.valve_set(tx, customer_no, season, state, now, actor)
        tx.audit(now, actor, "valve-set", customer_no,
                 {"season": season, "state": state, "was": was})
        return was

    # -- reports ----------------------------------------------------------------------------

    def _params(self, season: str | None, district: str | None) -> dict:
        p = {"season": self.season(season), "rule": self.s.describe(),
             "source": self.s.source}
        if district:
            p["district"] = district
        return p

    def supplied_unpaid(self, season: str | None = None, *, detail: bool = False,
                        district: str | None = None) -> ReportTable:
        """Households supplied (valve open) but not paid by the rule: the leak."""
        params = self._params(season, district)
        return self._report("supplied-unpaid", "供暖未缴费 Supplied but unpaid", params,
                            sql.supplied_unpaid, UNPAID_COLUMNS, detail,
                            Chart("bar", "供暖未缴费户数 Supplied but unpaid, by district",
                                  "district", ("households",)))

    def paid_closed(self, season: str | None = None, *, detail: bool = False,
                    district: str | None = None) -> ReportTable:
        """Households paid by the rule whose valve is not open: the complaints."""
        params = self._params(season, district)
        return self._report("paid-closed", "已缴费未开栓 Paid but still closed", params,
                            sql.paid_closed, CLOSED_COLUMNS, detail,
                            Chart("stacked_bar", "已缴费未开栓 Paid but closed, by district",
                                  "district", ("with_order", "without_order")))

    def _report(self, name, title, params, by_district, columns, detail, chart):
        season, source, fee, bp = params["season"], self.s.source, self.s.fee_type, \
            self.s.share_bp
        district = params.get("district")

        def run(tx):
            if not sql.valve_table_exists(tx, source):
                raise SupplyError(f"N8 has no valve table {tx.n8['valve'].name!r}: map"
                                  " [n8.tables] valve, or set [supply] source = \"gateway\"")
            if detail:
                return list(sql.households(tx, source, season, fee, bp, name, district))
            return by_district(tx, source, season, fee, bp)

        rows = self.store.run_sync(run, readonly=True)
        notes = [f"season {season}; paid means {self.s.describe()}; valves from"
                 f" {'N8' if source == 'n8' else 'the gateway (bg_valve)'}"]
        if detail:
            if not rows:
                notes.append("empty: no household")
            return ReportTable(name=name, title=title, params={**params, "detail": True},
                               columns=HOUSEHOLD_COLUMNS, rows=rows, notes=tuple(notes))
        if district:
            rows = [r for r in rows if r[0] == district]
        if not rows:
            notes.append("empty: no household")
        totals = (TOTAL, *(sum(r[i] for r in rows) for i in range(1, len(columns)))) \
            if rows else None
        return ReportTable(name=name, title=title, params=params, columns=columns, rows=rows,
                           totals=totals, charts=(chart,) if rows else (),
                           notes=tuple(notes))
