"""The SQL of withholding (代扣 / 卡扣 / 托收): agreements in N8's customer
record, batch files and their lines, real-time card debits and their
store-and-forward reversals.

Every function takes a :class:`~bankgate.store.tx.Tx` as its first argument
(``store.run_sync(fn, ...)`` runs it in one transaction) and returns plain
values (dicts, lists, ints).  Nothing here decides anything: the rules are in
:mod:`bankgate.domain.withholding` and :mod:`bankgate.domain.carddebit`.

N8 is reached only through the mapped tables (``tx.n8``), so a renamed N8
schema works unchanged.  Oracle stores ``''`` as NULL: no statement compares
a text column with ``''``; blank values are filtered in Python.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import date, datetime

import sqlalchemy as sa

from bankgate.store import model
from bankgate.store.db import Retry
from bankgate.store.dialects import lock_rows
from bankgate.store.n8join import outer_join
from bankgate.store.tx import Tx, _dicts, _select

#: debit statuses that keep the bills busy (no second debit, no batch line)
DEBIT_BUSY = ("SENT", "REVERSING")
#: batch statuses whose lines still wait for the bank's answer
BATCH_OPEN = ("GENERATED",)
IN_CHUNK = 500


def _chunks(seq: list, n: int = IN_CHUNK):
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


# -- agreements (N8 customer record) ----------------------------------------------


def customer(tx: Tx, customer_no: str) -> dict | None:
    return tx.customer(customer_no)


def agreement_set(tx: Tx, customer_no: str, bank_code: str | None, account_no: str | None,
                  now: datetime, actor: str, action: str, detail: dict) -> dict | None:
    """Write (or clear, with ``None``) the customer's withholding bank and
    account in N8; audited.  Returns the customer as it was, ``None`` if unknown."""
    c = tx.n8["customer"]
    q = _select(c).where(c.c.customer_no == customer_no)
    if tx.n8lock:
        q = lock_rows(q, c)
    rows = _dicts(tx.n8conn.execute(q))
    if not rows:
        return None
    tx.n8_do("agreement", customer_no=customer_no, bank_code=bank_code, account_no=account_no)
    tx.audit(now, actor, action, customer_no, detail)
    return rows[0]


def agreements(tx: Tx, bank_codes: Iterable[str] | None = None, limit: int | None = None,
               customer_no: str | None = None) -> list[dict]:
    """Customers with a withholding account on file, by customer number."""
    c = tx.n8["customer"]
    q = (
        sa.select(c.c.customer_no.label("customer_no"), c.c.name.label("name"),
                  c.c.customer_class.label("customer_class"), c.c.status.label("status"),
                  c.c.large_customer.label("large_customer"),
                  c.c.withholding_bank.label("withholding_bank"),
                  c.c.withholding_account.label("withholding_account"))
        .where(c.c.withholding_account.is_not(None), c.c.withholding_bank.is_not(None))
        .order_by(c.c.customer_no)
    )
    if bank_codes is not None:
        q = q.where(c.c.withholding_bank.in_(list(bank_codes)))
    if customer_no is not None:
        q = q.where(c.c.customer_no == customer_no)
    if limit:
        q = q.limit(limit)
    return [r for r in _dicts(tx.n8conn.execute(q))
            if (r["withholding_account"] or "").strip() and (r["withholding_bank"] or "").strip()]


# -- what is busy ---------------------------------------------------------------------


def busy_bills(tx: Tx, bill_ids: Iterable[str] | None = None) -> dict[str, str]:
    """Bills that must not be debited again now, with why: a line of a batch
    file still waiting for its result, a debited line not posted yet, or a
    card debit whose outcome is open (sent, reversing, debited but not posted).

    With ``bill_ids`` only those are looked at (a card debit); without, all
    (a batch generation)."""
    out: dict[str, str] = {}
    ln, bt, db = model.wh_line, model.wh_batch, model.debit
    wanted = list(bill_ids) if bill_ids is not None else None

    def restrict(q, col, chunk):
        return q.where(col.in_(chunk)) if chunk is not None else q

    for chunk in (_chunks(wanted) if wanted is not None else [None]):
        q = (
            sa.select(ln.c.bill_id, bt.c.file_name)
            .select_from(ln.join(bt, bt.c.id == ln.c.batch_id))
            .where(bt.c.status.in_(BATCH_OPEN), ln.c.result.is_(None))
        )
        for bill_id, file_name in tx.conn.execute(restrict(q, ln.c.bill_id, chunk)):
            out.setdefault(bill_id, f"in batch file {file_name}, waiting for its result")
        q = (
            sa.select(ln.c.bill_id, bt.c.file_name, ln.c.bank_serial)
            .select_from(ln.join(bt, bt.c.id == ln.c.batch_id))
            .where(ln.c.result == "0", ln.c.payment_id.is_(None))
        )
        for bill_id, file_name, serial in tx.conn.execute(restrict(q, ln.c.bill_id, chunk)):
            out.setdefault(bill_id, f"debited in batch file {file_name} (bank serial {serial})"
                                    " but not posted: an operator must settle it")
    q = sa.select(db.c.bill_ids, db.c.utility_serial, db.c.status).where(
        sa.or_(db.c.status.in_(DEBIT_BUSY),
               sa.and_(db.c.status == "DEBITED", db.c.payment_id.is_(None)))
    )
    wanted_set = set(wanted) if wanted is not None else None
    for ids, serial, status in tx.conn.execute(q):
        for b in (ids or "").split(","):
            if b and (wanted_set is None or b in wanted_set):
                out.setdefault(b, f"card debit {serial} is {status.lower()}")
    return out


# -- batch generation -------------------------------------------------------------


def batch_candidates(tx: Tx, bank_code: str, large: bool | None = None) -> list[dict]:
    """Open bills of active customers whose withholding bank is ``bank_code``,
    by customer, then period and bill id (the ledger's oldest-first order).

    ``large``: ``True`` only large customers (托收), ``False`` only the others,
    ``None`` both."""
    c, b = tx.n8["customer"], tx.n8["bill"]
    q = (
        sa.select(
            c.c.customer_no.label("customer_no"), c.c.name.label("name"),
            c.c.customer_class.label("customer_class"),
            c.c.large_customer.label("large_customer"),
            c.c.withholding_account.label("account_no"),
            b.c.bill_id.label("bill_id"), b.c.fee_type.label("fee_type"),
            b.c.period.label("period"), b.c.amount.label("amount"),
            b.c.paid_amount.label("paid_amount"), b.c.late_fee_paid.label("late_fee_paid"),
            b.c.due_date.label("due_date"),
        )
        .select_from(c.join(b, b.c.customer_no == c.c.customer_no))
        .where(c.c.withholding_bank == bank_code, c.c.withholding_account.is_not(None),
               c.c.status == "A", b.c.paid_amount < b.c.amount)
        .order_by(c.c.customer_no, b.c.period, b.c.bill_id)
    )
    if large is True:
        q = q.where(c.c.large_customer == 1)
    elif large is False:
        q = q.where(sa.or_(c.c.large_customer.is_(None), c.c.large_customer != 1))
    return [r for r in _dicts(tx.n8conn.execute(q)) if (r["account_no"] or "").strip()]


def batch_create(tx: Tx, bank: str, deduct_date: date, name_for, lines: list[dict],
                 now: datetime, actor: str, detail: dict) -> dict:
    """Insert a batch with the next sequence number of (bank, date) and its
    lines; ``name_for(seq)`` gives the file name.  Returns the batch row."""
    bt = model.wh_batch
    seq = (tx.conn.execute(
        sa.select(sa.func.max(bt.c.seq)).where(bt.c.bank == bank, bt.c.deduct_date == deduct_date)
    ).scalar() or 0) + 1
    file_name = name_for(seq)  # ValueError past 99
    total = sum(ln["total"] for ln in lines)
    try:
        with tx.conn.begin_nested():
            r = tx.conn.execute(bt.insert().values(
                bank=bank, deduct_date=deduct_date, seq=seq, file_name=file_name,
                status="GENERATED", record_count=len(lines), total=total, generated_at=now,
                success_count=0, success_total=0,
            ))
    except sa.exc.IntegrityError:
        raise Retry() from None  # another process took this sequence number: again
    batch_id = r.inserted_primary_key[0]
    for chunk in _chunks(lines, 1000):
        tx.conn.execute(model.wh_line.insert(), [
            {"batch_id": batch_id, "line_no": ln["line_no"], "bill_id": ln["bill_id"],
             "customer_no": ln["customer_no"], "account_no": ln["account_no"],
             "amount": ln["amount"], "late_fee": ln["late_fee"], "total": ln["total"]}
            for ln in chunk
        ])
    tx.audit(now, actor, "withholding-batch", file_name,
             {"bank": bank, "records": len(lines), "total": total, **detail})
    return batch_get(tx, batch_id)


def batch_get(tx: Tx, batch_id: int) -> dict | None:
    bt = model.wh_batch
    rows = _dicts(tx.conn.execute(sa.select(bt).where(bt.c.id == batch_id)))
    return rows[0] if rows else None


def batch_by_file(tx: Tx, bank: str, file_name: str) -> dict | None:
    bt = model.wh_batch
    rows = _dicts(tx.conn.execute(
        sa.select(bt).where(bt.c.bank == bank, bt.c.file_name == file_name)
    ))
    return rows[0] if rows else None


def batches(tx: Tx, bank: str | None = None, deduct_date: date | None = None,
            status: str | None = None, limit: int = 50) -> list[dict]:
    bt = model.wh_batch
    q = sa.select(bt).order_by(bt.c.deduct_date.desc(), bt.c.bank, bt.c.seq.desc()).limit(limit)
    if bank is not None:
        q = q.where(bt.c.bank == bank)
    if deduct_date is not None:
        q = q.where(bt.c.deduct_date == deduct_date)
    if status is not None:
        q = q.where(bt.c.status == status)
    return _dicts(tx.conn.execute(q))


def batch_lines(tx: Tx, batch_id: int) -> list[dict]:
    """The lines of a batch with the customer's name and large flag and the
    bill's period from N8 (outer joins: a line survives a deleted bill)."""
    ln = model.wh_line
    c, b = tx.n8["customer"], tx.n8["bill"]
    if tx.split:  # N8 in a database of its own: the customers and bills of the lines
        rows = _dicts(tx.conn.execute(
            sa.select(ln).where(ln.c.batch_id == batch_id).order_by(ln.c.line_no)))
        outer_join(tx.n8conn, rows, "customer_no", c.c.customer_no,
                   {"name": c.c.name, "large_customer": c.c.large_customer})
        return outer_join(tx.n8conn, rows, "bill_id", b.c.bill_id, {"period": b.c.period})
    q = (
        sa.select(ln, c.c.name.label("name"), c.c.large_customer.label("large_customer"),
                  b.c.period.label("period"))
        .select_from(ln.outerjoin(c, c.c.customer_no == ln.c.customer_no)
                     .outerjoin(b, b.c.bill_id == ln.c.bill_id))
        .where(ln.c.batch_id == batch_id)
        .order_by(ln.c.line_no)
    )
    return _dicts(tx.conn.execute(q))


def batch_set_status(tx: Tx, batch_id: int, status: str, expect: str, now: datetime,
                     actor: str, action: str, detail: dict) -> bool:
    bt = model.wh_batch
    r = tx.conn.execute(bt.update().where(bt.c.id == batch_id, bt.c.status == expect)
                        .values(status=status))
    if r.rowcount != 1:
        return False
    row = batch_get(tx, batch_id)
    tx.audit(now, actor, action, row["file_name"], {"bank": row["bank"], **detail})
    return True


def batch_delete(tx: Tx, batch_id: int) -> None:
    """Undo a batch whose file could not be written (still GENERATED)."""
    bt = model.wh_batch
    r = tx.conn.execute(bt.delete().where(bt.c.id == batch_id, bt.c.status == "GENERATED"))
    if r.rowcount:
        tx.conn.execute(model.wh_line.delete().where(model.wh_line.c.batch_id == batch_id))


def record_results(tx: Tx, batch_id: int, results: list[tuple[int, str, str | None]],
                   now: datetime, actor: str, detail: dict) -> dict:
    """Store each line's result (``(line id, result, bank_serial)``) where
    none is stored yet; the batch becomes PROCESSED with its success count
    and total computed from the stored results.  Returns the batch."""
    ln, bt = model.wh_line, model.wh_batch
    batch = batch_get(tx, batch_id)
    if batch is None or batch["status"] not in ("GENERATED", "PROCESSED"):
        raise ValueError(f"batch {batch_id} is {batch and batch['status']}")
    if results:
        tx.conn.execute(
            ln.update()
            .where(ln.c.id == sa.bindparam("l_id"), ln.c.result.is_(None))
            .values(result=sa.bindparam("l_result"), bank_serial=sa.bindparam("l_serial")),
            [{"l_id": i, "l_result": res, "l_serial": serial} for i, res, serial in results],
        )
    count, total = tx.conn.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(ln.c.total), 0))
        .where(ln.c.batch_id == batch_id, ln.c.result == "0")
    ).first()
    values = {"status": "PROCESSED", "success_count": int(count), "success_total": int(total)}
    if batch["result_at"] is None:
        values["result_at"] = now
    tx.conn.execute(bt.update().where(bt.c.id == batch_id).values(**values))
    if results or batch["status"] != "PROCESSED":
        tx.audit(now, actor, "withholding-result", batch["file_name"],
                 {"bank": batch["bank"], "recorded": len(results), "success_count": int(count),
                  "success_total": int(total), **detail})
    return batch_get(tx, batch_id)


def line_link_payment(tx: Tx, line_id: int, bank: str, trade_date: date, serial: str,
                      customer_no: str, amount: int) -> dict | None:
    """Link a debited line to the standing payment under its key, if it is
    the same customer and amount (posted by us now, earlier, or by
    reconciliation).  Returns the payment or ``None``."""
    p = standing_payment(tx, bank, trade_date, serial, customer_no, amount)
    if p is not None:
        ln = model.wh_line
        tx.conn.execute(ln.update().where(ln.c.id == line_id).values(payment_id=p["id"]))
    return p


def standing_payment(tx: Tx, bank: str, trade_date: date, serial: str, customer_no: str,
                     amount: int) -> dict | None:
    p = tx.payment_by_key(bank, trade_date, serial)
    if (p is None or p["customer_no"] != customer_no or p["amount"] != amount
            or p["status"] not in ("POSTED", "PENDING")):
        return None
    return p


def journal_outcome(tx: Tx, bank: str, trade_date: date, serial: str) -> dict | None:
    row = tx.journal_get(bank, trade_date, serial)
    if row is None:
        return None
    return {"kind": row["kind"], "outcome": row["outcome"], "result": row["result"]}


def journal_outcomes(tx: Tx, bank: str, trade_date: date, serials: list[str]) -> dict[str, str]:
    j = model.journal
    out: dict[str, str] = {}
    for chunk in _chunks(serials):
        for serial, kind, outcome in tx.conn.execute(
            sa.select(j.c.serial, j.c.kind, j.c.outcome).where(
                j.c.bank == bank, j.c.trade_date == trade_date, j.c.serial.in_(chunk))
        ):
            out[serial] = outcome if kind == "PAY" else f"{kind} {outcome}"
    return out


# -- card debits (卡扣) ------------------------------------------------------------------


def debit_insert(tx: Tx, *, bank: str, utility_serial: str | None, trade_date: date,
                 customer_no: str, account_no: str, bill_ids: tuple[str, ...], amount: int,
                 now: datetime, actor: str, serial_for) -> dict:
    """A debit about to be sent, status SENT.  Without ``utility_serial`` the
    serial is ``serial_for(trade_date, id)`` (unique: the id is).  A taken
    serial raises :class:`KeyError`."""
    db = model.debit
    temp = utility_serial or uuid.uuid4().hex
    try:
        with tx.conn.begin_nested():
            r = tx.conn.execute(db.insert().values(
                bank=bank, utility_serial=temp, trade_date=trade_date, customer_no=customer_no,
                account_no=account_no, bill_ids=",".join(bill_ids), amount=amount,
                status="SENT", attempts=0, created_at=now, updated_at=now,
            ))
    except sa.exc.IntegrityError:
        raise KeyError(f"utility serial {utility_serial!r} is taken") from None
    debit_id = r.inserted_primary_key[0]
    if utility_serial is None:
        tx.conn.execute(db.update().where(db.c.id == debit_id)
                        .values(utility_serial=serial_for(trade_date, debit_id)))
    row = debit_by_id(tx, debit_id)
    tx.audit(now, actor, "card-debit", row["utility_serial"],
             {"bank": bank, "customer_no": customer_no, "bills": list(bill_ids),
              "amount": amount})
    return row


def debit_by_id(tx: Tx, debit_id: int) -> dict | None:
    db = model.debit
    rows = _dicts(tx.conn.execute(sa.select(db).where(db.c.id == debit_id)))
    return rows[0] if rows else None


def debit_get(tx: Tx, bank: str, utility_serial: str) -> dict | None:
    db = model.debit
    rows = _dicts(tx.conn.execute(
        sa.select(db).where(db.c.bank == bank, db.c.utility_serial == utility_serial)))
    return rows[0] if rows else None


def debit_transition(tx: Tx, debit_id: int, expect: tuple[str, ...], now: datetime,
                     audit: tuple[str, str, dict] | None = None, **values) -> dict | None:
    """Compare-and-set: change the debit only while its status is one of
    ``expect``.  Returns the changed row, ``None`` when it was not."""
    db = model.debit
    r = tx.conn.execute(
        db.update().where(db.c.id == debit_id, db.c.status.in_(expect))
        .values(updated_at=now, **values)
    )
    if r.rowcount != 1:
        return None
    row = debit_by_id(tx, debit_id)
    if audit is not None:
        actor, action, detail = audit
        tx.audit(now, actor, action, row["utility_serial"], {"bank": row["bank"], **detail})
    return row


def debit_claim(tx: Tx, debit_id: int, attempts: int, now: datetime,
                hold_until: datetime) -> dict | None:
    """Take a pending reversal for one send: counts the attempt and holds
    the row until ``hold_until`` (another process, or this one after a crash,
    takes it again after that).  ``None`` when someone else took it."""
    db = model.debit
    r = tx.conn.execute(
        db.update().where(db.c.id == debit_id, db.c.status == "REVERSING",
                          db.c.attempts == attempts)
        .values(attempts=attempts + 1, next_attempt_at=hold_until, updated_at=now)
    )
    return debit_by_id(tx, debit_id) if r.rowcount == 1 else None


def debits_due(tx: Tx, now: datetime | None, banks: Iterable[str], limit: int = 100) -> list[dict]:
    """Pending reversals whose next attempt is due (all of them with ``now``
    ``None``), oldest first."""
    db = model.debit
    q = (sa.select(db).where(db.c.status == "REVERSING", db.c.bank.in_(list(banks)))
         .order_by(db.c.next_attempt_at, db.c.id).limit(limit))
    if now is not None:
        q = q.where(sa.or_(db.c.next_attempt_at.is_(None), db.c.next_attempt_at <= now))
    return _dicts(tx.conn.execute(q))


def debits_stale_sent(tx: Tx, before: datetime, banks: Iterable[str] | None = None
                      ) -> list[dict]:
    """Debits still SENT since before ``before``: their answer never came."""
    db = model.debit
    q = sa.select(db).where(db.c.status == "SENT", db.c.updated_at < before).order_by(db.c.id)
    if banks is not None:
        q = q.where(db.c.bank.in_(list(banks)))
    return _dicts(tx.conn.execute(q))


def debits_unposted(tx: Tx, banks: Iterable[str] | None = None) -> list[dict]:
    """Debited at the bank, not (yet) in the books."""
    db = model.debit
    q = (sa.select(db).where(db.c.status == "DEBITED", db.c.payment_id.is_(None))
         .order_by(db.c.id))
    if banks is not None:
        q = q.where(db.c.bank.in_(list(banks)))
    return _dicts(tx.conn.execute(q))


def debits(tx: Tx, bank: str | None = None, statuses: Iterable[str] | None = None,
           limit: int = 100, unposted: bool = False) -> list[dict]:
    db = model.debit
    conds = []
    if bank is not None:
        conds.append(db.c.bank == bank)
    if statuses is not None:
        st = list(statuses)
        if unposted:
            conds.append(sa.or_(db.c.status.in_(st),
                                sa.and_(db.c.status == "DEBITED", db.c.payment_id.is_(None))))
        else:
            conds.append(db.c.status.in_(st))
    q = sa.select(db).where(*conds).order_by(db.c.id.desc()).limit(limit)
    return _dicts(tx.conn.execute(q))


def audit_detail(row: dict) -> dict:
    """An audit row's detail as a dict."""
    d = row.get("detail")
    return json.loads(d) if d else {}
