"""The console's overview from the database: today's figures, each bank's day and its
latest reconciliation, invoice stock per holder.

The live link figures (listening, peers, requests per minute) are not here: they come
from the running service (``bankgate.app.console.live``).  What is here is what the
database knows, read in one read-only transaction by :func:`overview` (run it on the
store's pool: ``store.call(overview, store, ...)``), as plain dicts:

- ``figures``: payments of today's trade date that took money, per bank and channel
  and per bank and fee type -- the collections report's own figures (count, amount,
  reversed, refunded, net: ``docs/reports.rst``) -- with totals per bank, and the
  two-phase payments still pending;
- ``banks``: per bank, whether today is cut off (日切: when, why, count and total) and
  the latest closed date, and the latest reconciliation run (status, settle date,
  exceptions still open);
- ``invoices``: per holder, the numbers left and the low-water mark: the bank's
  ``invoice_low_water`` option, else the mark of its newest range; state ``OK``,
  ``LOW`` (at or below the mark) or ``EMPTY`` -- the rule of
  :meth:`bankgate.domain.invoices.Invoices.stock_report`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date

from bankgate.domain.invoices import DEFAULT_LOW_WATER, InvoiceSettings
from bankgate.store import overview as sql
from bankgate.store.db import Store
from bankgate.store.tx import Tx

TOTALS = ("count", "amount", "reversed_count", "reversed_amount", "refunded_count",
          "refunded_amount", "net")


def overview(store: Store, today: date, banks: Iterable[str] = (),
             invoice_settings: Mapping[str, InvoiceSettings] | None = None, *,
             by_fee_type: bool = True) -> dict:
    """Everything the overview shows from the database.  ``banks``: the configured
    banks, listed even on a day without data (a bank found only in the data is
    listed after them).  ``by_fee_type`` false leaves out the figures per fee type
    (``None``): they join every allocation of the day to its bill, the dearest read."""
    return store.run_sync(_overview_tx, today, list(banks), dict(invoice_settings or {}),
                          by_fee_type, readonly=True)


def _overview_tx(tx: Tx, today: date, banks: list[str],
                 settings: dict[str, InvoiceSettings], by_fee_type: bool = True) -> dict:
    figures = day_figures_tx(tx, today, banks, by_fee_type)
    return {"date": today, "figures": figures,
            "banks": bank_states_tx(tx, today, figures["banks"]),
            "invoices": invoice_stock_tx(tx, settings)}


def day_figures(store: Store, today: date, banks: Iterable[str] = ()) -> dict:
    return store.run_sync(day_figures_tx, today, list(banks), readonly=True)


def day_figures_tx(tx: Tx, today: date, banks: list[str], by_fee_type: bool = True) -> dict:
    by_channel = sql.collections(tx, today, ("bank", "channel"))
    by_fee = sql.collections(tx, today, ("bank", "fee_type")) if by_fee_type else None
    pending = {r["bank"]: r for r in sql.pending(tx, today)}
    names = list(dict.fromkeys([*banks, *sorted({r["bank"] for r in by_channel}),
                                *sorted(pending)]))
    per_bank = {}
    for b in names:
        mine = [r for r in by_channel if r["bank"] == b]
        row = {k: sum(r[k] for r in mine) for k in TOTALS}
        p = pending.get(b, {})
        row["pending_count"], row["pending_amount"] = p.get("count", 0), p.get("amount", 0)
        per_bank[b] = row
    totals = {k: sum(r[k] for r in per_bank.values()) for k in (*TOTALS, "pending_count",
                                                               "pending_amount")}
    return {"date": today, "by_channel": by_channel, "by_fee_type": by_fee,
            "per_bank": per_bank, "banks": names, "totals": totals}


def bank_states(store: Store, today: date, banks: Iterable[str] = ()) -> list[dict]:
    return store.run_sync(bank_states_tx, today, list(banks), readonly=True)


def bank_states_tx(tx: Tx, today: date, banks: list[str]) -> list[dict]:
    """Per bank: today's cut-off (``None`` while open) and the latest closed date,
    and its latest reconciliation run (``None`` before the first)."""
    cut = sql.cutoffs(tx, today)
    recon = sql.latest_recon(tx)
    names = list(dict.fromkeys([*banks, *sorted(cut), *sorted(recon)]))
    out = []
    for b in names:
        c = cut.get(b, {})
        r = recon.get(b)
        out.append({"bank": b, "cutoff": c.get("today"), "closed": c.get("today") is not None,
                    "last_closed": c.get("last_closed"), "recon": r,
                    "recon_ok": r is not None and r["status"] == "BALANCED"})
    return out


def invoice_stock(store: Store, settings: Mapping[str, InvoiceSettings] | None = None,
                  ) -> list[dict]:
    return store.run_sync(invoice_stock_tx, dict(settings or {}), readonly=True)


def invoice_stock_tx(tx: Tx, settings: dict[str, InvoiceSettings]) -> list[dict]:
    """Per holder (banks that issue invoices first, then any holder with stock): the
    numbers left, the low-water mark and the state."""
    rows = {r["holder"]: r for r in sql.invoice_stock(tx)}
    holders = [b for b, s in settings.items() if s.enabled]
    holders += sorted(set(rows) - set(holders))
    out = []
    for h in holders:
        r = rows.get(h, {"ranges": 0, "remaining": 0, "range_low_water": None})
        if h in settings:
            low = settings[h].low_water
        elif r["range_low_water"] is not None:
            low = r["range_low_water"]
        else:
            low = DEFAULT_LOW_WATER
        left = r["remaining"]
        out.append({"holder": h, "ranges": r["ranges"], "remaining": left, "low_water": low,
                    "state": "EMPTY" if left == 0 else ("LOW" if left <= low else "OK"),
                    "invoice": h in settings and settings[h].enabled})
    return out
