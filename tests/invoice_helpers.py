"""Helpers for the invoice tests: a configuration with invoice banks, the
ledger with the invoice hook, extra customers, and reading PDF text."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import zlib
from datetime import date

import sqlalchemy as sa
from conftest import BANKS, seed_fixture
from ledger_helpers import bills

from bankgate.app import wiring
from bankgate.app.config import BankConfig, Config
from bankgate.app.options import invoice_settings
from bankgate.domain.invoices import make_hook
from bankgate.domain.ledger import Ledger
from bankgate.store import model

LOW_WATER = 3


def invoice_config(tmp_path, **fixed_options) -> Config:
    """The ledger tests' banks: ``fixed`` and ``twophase`` take a number per
    payment; the others do not."""
    opts = {"invoice": True, "invoice_low_water": LOW_WATER, "invoice_payee": "沈阳供热有限公司"}
    opts.update(fixed_options)
    banks = []
    for name, pol in BANKS.items():
        options = dict(opts) if name in ("fixed", "twophase") else {}
        banks.append(BankConfig(name=name, plugin="ref-fixed", bank_code=pol.bank_code,
                                policy=pol.policy, options=options))
    return Config(source="test.toml", data_dir=str(tmp_path / "data"), banks=banks)


def extra_customers(store, n: int, amount: int = 10000) -> list[str]:
    """``n`` more customers, each with one open bill of ``amount`` (no late fee)."""
    n8 = store.n8
    nos = [f"2000{i:05d}" for i in range(n)]
    with store.engine.begin() as c:
        c.execute(n8["customer"].insert(), [
            {"customer_no": no, "name": f"客户{i}", "address": f"和平区{i}号",
             "customer_class": "R", "status": "A"} for i, no in enumerate(nos)])
        c.execute(n8["bill"].insert(), [
            {"bill_id": f"X{no}", "customer_no": no, "fee_type": "02", "period": "2026-11",
             "amount": amount, "paid_amount": 0, "late_fee_paid": 0,
             "due_date": date(2026, 12, 31)} for no in nos])
    return nos


def setup(store, clock, tmp_path, *, extra: int = 0, hooks_after=(), **fixed_options):
    seed_fixture(store)
    customers = extra_customers(store, extra) if extra else []
    store.initial_paid = bills(store)  # what N8 had paid before the gateway (check_books)
    cfg = invoice_config(tmp_path, **fixed_options)
    ledger = Ledger(store, dict(BANKS), now=clock,
                    hooks=[make_hook(invoice_settings(cfg)), *hooks_after])
    inv = wiring.invoices(cfg, store, clock)
    return cfg, ledger, inv, customers


def rows(store, table, *where) -> list[dict]:
    with store.engine.connect() as c:
        q = sa.select(*[col.label(col.key) for col in table.c])
        if where:
            q = q.where(*where)
        return [dict(r) for r in c.execute(q).mappings()]


def n8_invoices(store) -> dict[str, dict]:
    return {r["invoice_no"]: r for r in rows(store, store.n8["invoice"])}


def gw_invoices(store) -> dict[str, dict]:
    return {r["invoice_no"]: r for r in rows(store, model.invoice)}


def payment(store, receipt_no: str) -> dict:
    return rows(store, model.payment, model.payment.c.receipt_no == receipt_no)[0]


def audits(store, action: str) -> list[dict]:
    return rows(store, model.audit, model.audit.c.action == action)


# -- PDF text ------------------------------------------------------------------------


def _unescape(lit: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(lit):
        ch = lit[i]
        if ch != 0x5C:  # backslash
            out.append(ch)
            i += 1
            continue
        nxt = lit[i + 1:i + 2]
        if nxt.isdigit():
            m = re.match(rb"[0-7]{1,3}", lit[i + 1:i + 4])
            out.append(int(m.group(), 8) & 0xFF)
            i += 1 + len(m.group())
        else:
            out += {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}.get(
                nxt, nxt)
            i += 2
    return bytes(out)


def pdf_strings(data: bytes) -> str:
    """The text shown on the pages, read straight from the content streams
    (ASCII85 + Flate, as reportlab writes them; text in a CID font is
    UTF-16BE): independent of any PDF library."""
    cid = set()
    for m in re.finditer(rb"\d+ 0 obj\s*<<(.*?)\nendobj", data, re.S):
        if b"/Subtype /Type0" in m.group(1):
            name = re.search(rb"/Name /(F\d+)", m.group(1))
            if name:
                cid.add(name.group(1))
    texts = []
    for m in re.finditer(rb"<<([^<>]*)>>\s*stream\r?\n(.*?)endstream", data, re.S):
        body = m.group(2).strip()
        if b"ASCII85Decode" in m.group(1):
            body = base64.a85decode(body.removesuffix(b"~>"), adobe=False)
        if b"FlateDecode" in m.group(1):
            body = zlib.decompress(body)
        font = None
        for t in re.finditer(rb"/(F\d+)\s+[\d.]+\s+Tf|\(((?:\\.|[^\\)])*)\)\s*Tj", body,
                             re.S):
            if t.group(1):
                font = t.group(1)
                continue
            raw = _unescape(t.group(2))
            texts.append(raw.decode("utf-16-be") if font in cid else raw.decode("latin-1"))
    return "\n".join(texts)


def pdftotext(path) -> str | None:
    exe = shutil.which("pdftotext")
    if exe is None:
        return None
    return subprocess.run([exe, "-layout", str(path), "-"], capture_output=True, check=True,
                          text=True).stdout
