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
from ledger_helpers import bills, engine_of

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
    with store.n8_engine.begin() as c:
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
    with engine_of(store, table).connect() as c:
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


def _stream(body: bytes, head: bytes) -> bytes:
    body = body.strip()
    if b"ASCII85Decode" in head:
        body = base64.a85decode(body.removesuffix(b"~>"), adobe=False)
    if b"FlateDecode" in head:
        body = zlib.decompress(body)
    return body


def _to_unicode(cmap: bytes) -> dict[int, str]:
    """A ToUnicode CMap (bfchar and bfrange sections) as code -> text."""
    def text(hexs: bytes) -> str:
        return bytes.fromhex(hexs.decode()).decode("utf-16-be")

    out = {}
    for sec in re.finditer(rb"beginbfchar(.*?)endbfchar", cmap, re.S):
        for src, dst in re.findall(rb"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>", sec.group(1)):
            out[int(src, 16)] = text(dst)
    for sec in re.finditer(rb"beginbfrange(.*?)endbfrange", cmap, re.S):
        for lo, hi, dst in re.findall(rb"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>\s*"
                                      rb"(<[0-9A-Fa-f]+>|\[[^\]]*\])", sec.group(1)):
            lo, hi = int(lo, 16), int(hi, 16)
            if dst.startswith(b"["):
                for i, d in enumerate(re.findall(rb"<([0-9A-Fa-f]+)>", dst)):
                    out[lo + i] = text(d)
            else:
                first = text(dst[1:-1])
                for i in range(hi - lo + 1):
                    out[lo + i] = first[:-1] + chr(ord(first[-1]) + i)
    return out


def pdf_strings(data: bytes) -> str:
    """The text shown on the pages, read straight from the content streams
    (ASCII85 + Flate, as reportlab writes them; text in a CID font is
    UTF-16BE, text in an embedded TrueType subset goes through the font's
    ToUnicode map): independent of any PDF library."""
    streams, objs = {}, {}
    for m in re.finditer(rb"(\d+) 0 obj\s*<<(.*?)\nendobj", data, re.S):
        objs[m.group(1)] = m.group(2)
        st = re.match(rb"(.*?)>>\s*stream\r?\n(.*?)endstream", m.group(2), re.S)
        if st:
            streams[m.group(1)] = _stream(st.group(2), st.group(1))
    cid, maps = set(), {}
    for body in objs.values():
        name = re.search(rb"/Name /(F[\d+]+)", body)
        if name is None or b"/Type /Font" not in body:
            continue
        if b"/Subtype /Type0" in body:
            cid.add(name.group(1))
        tu = re.search(rb"/ToUnicode (\d+) 0 R", body)
        if tu and tu.group(1) in streams:
            maps[name.group(1)] = _to_unicode(streams[tu.group(1)])
    texts = []
    for m in re.finditer(rb"<<([^<>]*)>>\s*stream\r?\n(.*?)endstream", data, re.S):
        body = _stream(m.group(2), m.group(1))
        font = None
        for t in re.finditer(rb"/(F[\d+]+)\s+[\d.]+\s+Tf|\(((?:\\.|[^\\)])*)\)\s*Tj", body,
                             re.S):
            if t.group(1):
                font = t.group(1)
                continue
            raw = _unescape(t.group(2))
            if font in cid:
                texts.append(raw.decode("utf-16-be"))
            elif font in maps:
                texts.append("".join(maps[font].get(b, chr(b)) for b in raw))
            else:
                texts.append(raw.decode("latin-1"))
    return "\n".join(texts)


def pdftotext(path) -> str | None:
    exe = shutil.which("pdftotext")
    if exe is None:
        return None
    return subprocess.run([exe, "-layout", str(path), "-"], capture_output=True, check=True,
                          text=True).stdout
