"""Every table the gateway owns, declared in one place.

The billing tables belong to N8 and are reached only through the mapping in
:mod:`bankgate.store.n8`.  Money columns are integer fen (BigInteger).
Migrations (``bankgate/migrations``) create and upgrade these tables; a test
compares the migrated schema with this module so the two never drift.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()


def _id() -> sa.Column:
    return sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        sa.Identity(),
        primary_key=True,
    )


def _money(name: str, **kw) -> sa.Column:
    return sa.Column(name, sa.BigInteger, nullable=False, server_default=sa.text("0"), **kw)


BANK = 32
SERIAL = 40

# The transaction journal: one row per money-changing request key.  The
# unique key (bank, trade_date, serial) is what makes exactly-once hold; a
# retry reads ``outcome`` and ``result`` back instead of posting again.
# kind: PAY, REV, CONFIRM or CANCEL (two-phase, under the confirm's or cancel's own
# serial), or BLOCK (a reversal arrived before this serial's payment).
journal = sa.Table(
    "bg_journal",
    metadata,
    _id(),
    sa.Column("bank", sa.String(BANK), nullable=False),
    sa.Column("trade_date", sa.Date, nullable=False),
    sa.Column("serial", sa.String(SERIAL), nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("content", sa.String(64), nullable=True),  # empty for BLOCK
    sa.Column("outcome", sa.String(24), nullable=False),
    sa.Column("result", sa.Text, nullable=True),
    sa.Column("payment_id", sa.BigInteger, nullable=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("bank", "trade_date", "serial", name="uq_bg_journal_key"),
)

payment = sa.Table(
    "bg_payment",
    metadata,
    _id(),
    sa.Column("bank", sa.String(BANK), nullable=False),
    sa.Column("trade_date", sa.Date, nullable=False),
    sa.Column("serial", sa.String(SERIAL), nullable=False),
    sa.Column("trade_time", sa.String(6), nullable=True),
    sa.Column("customer_no", sa.String(32), nullable=False),
    _money("amount"),
    _money("principal"),
    _money("late_fee"),
    _money("prepaid_in"),  # excess kept as prepaid balance
    sa.Column("channel", sa.String(2), nullable=False, server_default="01"),
    sa.Column("branch", sa.String(20), nullable=True),
    sa.Column("teller", sa.String(20), nullable=True),
    sa.Column("pan_masked", sa.String(19), nullable=True),
    sa.Column("receipt_no", sa.String(20), nullable=False),
    sa.Column("invoice_no", sa.String(20), nullable=True),
    sa.Column("invoice_printed", sa.Integer, nullable=False, server_default=sa.text("0")),
    # POSTED, PENDING (two-phase, until expires_at), REVERSED, REFUNDED, EXPIRED, CANCELLED
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("source", sa.String(16), nullable=False, server_default="online"),
    sa.Column("run_id", sa.BigInteger, nullable=True),  # reconciliation run that posted it
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("expires_at", sa.DateTime, nullable=True),  # two-phase: pending until
    sa.Column("undone_at", sa.DateTime, nullable=True),
    sa.UniqueConstraint("bank", "trade_date", "serial", name="uq_bg_payment_key"),
    sa.UniqueConstraint("receipt_no", name="uq_bg_payment_receipt"),
    sa.Index("ix_bg_payment_customer", "customer_no", "id"),
    sa.Index("ix_bg_payment_status", "status", "expires_at"),
    # reports over a range of trade dates, every bank (0006_report_indexes)
    sa.Index("ix_bg_payment_date", "trade_date", "bank", "channel", "status"),
)

allocation = sa.Table(
    "bg_allocation",
    metadata,
    _id(),
    sa.Column("payment_id", sa.BigInteger, nullable=False),
    sa.Column("bill_id", sa.String(32), nullable=False),
    _money("principal"),
    _money("late_fee"),
    sa.Index("ix_bg_allocation_payment", "payment_id"),
    sa.Index("ix_bg_allocation_bill", "bill_id"),
)

# Oracle stores an empty string as NULL: every text column that may be empty
# is nullable and the code reads NULL as "".
# Everything that undid a payment: a bank's reversal, an operator's refund,
# the expiry of an unconfirmed two-phase payment, a bank's cancel of a pending
# one, a reconciliation 抹账.
undo = sa.Table(
    "bg_undo",
    metadata,
    _id(),
    sa.Column("payment_id", sa.BigInteger, nullable=False),
    # REVERSAL REFUND EXPIRY RECON CANCEL OPERATOR
    sa.Column("kind", sa.String(10), nullable=False),
    sa.Column("bank", sa.String(BANK), nullable=False),
    sa.Column("trade_date", sa.Date, nullable=False),
    sa.Column("serial", sa.String(SERIAL), nullable=True),
    sa.Column("actor", sa.String(64), nullable=True),
    sa.Column("reason", sa.String(200), nullable=True),
    sa.Column("run_id", sa.BigInteger, nullable=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("payment_id", name="uq_bg_undo_payment"),
)

# Prepaid balances (overpay policy): the excess of a payment, drawn on later.
prepaid = sa.Table(
    "bg_prepaid",
    metadata,
    sa.Column("customer_no", sa.String(32), primary_key=True),
    _money("balance"),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)

cutoff = sa.Table(
    "bg_cutoff",
    metadata,
    sa.Column("bank", sa.String(BANK), primary_key=True),
    sa.Column("trade_date", sa.Date, primary_key=True),
    sa.Column("reason", sa.String(20), nullable=False),  # scheduled bank notice recon operator
    sa.Column("closed_at", sa.DateTime, nullable=False),
    sa.Column("count", sa.Integer, nullable=False, server_default=sa.text("0")),
    _money("total"),
)

# One row per bank and trade date that a payment or a cut-off has touched: what
# orders the two on a database server.  A payment reads its date's row FOR SHARE
# (the first payment of the date creates it, open) and holds it until it commits;
# the cut-off sets ``closed`` before it counts, so it waits for every payment in
# flight, and a payment arriving meanwhile waits and then reads "closed".
trade_day = sa.Table(
    "bg_trade_day",
    metadata,
    sa.Column("bank", sa.String(BANK), primary_key=True),
    sa.Column("trade_date", sa.Date, primary_key=True),
    sa.Column("closed", sa.Boolean, nullable=False, server_default=sa.false()),
)

audit = sa.Table(
    "bg_audit",
    metadata,
    _id(),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("subject", sa.String(100), nullable=True),
    sa.Column("detail", sa.Text, nullable=True),
    sa.Index("ix_bg_audit_at", "at"),
)

# -- reconciliation (对账) ----------------------------------------------------

# One row per statement file fetched: what was read, and its checksum.
statement = sa.Table(
    "bg_statement",
    metadata,
    _id(),
    sa.Column("bank", sa.String(BANK), nullable=False),
    sa.Column("settle_date", sa.Date, nullable=False),
    sa.Column("source", sa.String(200), nullable=False),  # path or URL, no password
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("record_count", sa.Integer, nullable=False),
    _money("total_amount"),
    sa.Column("fetched_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("bank", "settle_date", "sha256", name="uq_bg_statement_file"),
)

# One row per reconciliation run of a bank and settle date.  The lease
# ``recon:{bank}:{settle_date}`` in bg_lease keeps two gateway processes from
# reconciling the same bank and date at once.  ``id`` is the internal key (items,
# payments and undo rows point at it); ``run_no`` is the number an operator sees,
# counted per bank from 1 (bg_recon_counter); a dry run takes none (NULL).
recon_run = sa.Table(
    "bg_recon_run",
    metadata,
    _id(),
    sa.Column("bank", sa.String(BANK), nullable=False),
    sa.Column("run_no", sa.Integer, nullable=True),
    sa.Column("settle_date", sa.Date, nullable=False),
    sa.Column("statement_id", sa.BigInteger, nullable=True),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime, nullable=True),
    sa.Column("status", sa.String(12), nullable=False),  # RUNNING BALANCED EXCEPTIONS FAILED
    sa.Column("dry_run", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("bank_count", sa.Integer, nullable=False, server_default=sa.text("0")),
    _money("bank_total"),
    sa.Column("ours_count", sa.Integer, nullable=False, server_default=sa.text("0")),
    _money("ours_total"),
    sa.Column("summary", sa.Text, nullable=True),  # JSON: counts per category
    sa.Index("ix_bg_recon_run_bank_date", "bank", "settle_date"),
    sa.Index("ix_bg_recon_run_no", "bank", "run_no"),
)

# The last run number given per bank: the next run takes last_no + 1 under this
# row's lock, in the transaction that inserts the run (two runs of one bank on
# different dates may start at once; the run lock is per bank and date).
recon_counter = sa.Table(
    "bg_recon_counter",
    metadata,
    sa.Column("bank", sa.String(BANK), primary_key=True),
    sa.Column("last_no", sa.Integer, nullable=False),
)

recon_item = sa.Table(
    "bg_recon_item",
    metadata,
    _id(),
    sa.Column("run_id", sa.BigInteger, nullable=False),
    # MATCHED BANK_ONLY UTILITY_ONLY AMOUNT_DIFFERS DATE_DIFFERS TOTALS_DIFFER
    sa.Column("category", sa.String(16), nullable=False),
    sa.Column("serial", sa.String(SERIAL), nullable=True),
    sa.Column("customer_no", sa.String(32), nullable=True),
    _money("bank_amount"),
    _money("our_amount"),
    # POSTED (补销) REVERSED (抹账) EXCEPTION (for an operator) NONE RESOLVED
    sa.Column("action", sa.String(10), nullable=False),
    sa.Column("payment_id", sa.BigInteger, nullable=True),
    sa.Column("detail", sa.String(200), nullable=True),
    # an exception an operator closed (bankgate recon resolve): who, when, what was
    # done; a later run of the same bank and date that finds the same discrepancy
    # again carries it over (RESOLVED, not reopened)
    sa.Column("resolved_by", sa.String(64), nullable=True),
    sa.Column("resolved_at", sa.DateTime, nullable=True),
    sa.Column("resolved_note", sa.String(200), nullable=True),
    sa.Index("ix_bg_recon_item_run", "run_id", "category"),
)

# Retired: the reconciliation's run lock before bg_lease (migration 0008).  Nothing
# reads or writes it any more; it stays until a migration drops it.
recon_lock = sa.Table(
    "bg_recon_lock",
    metadata,
    sa.Column("bank", sa.String(BANK), primary_key=True),
    sa.Column("settle_date", sa.Date, primary_key=True),
    sa.Column("holder", sa.String(64), nullable=False),
    sa.Column("since", sa.DateTime, nullable=False),
)

# N8's writes not yet known to be committed there, when N8 is a database of its own
# ([n8.database]; bankgate/store/n8outbox.py): written in the gateway's transaction
# with the journal, deleted once N8 has committed them; the repair job applies what is
# left (each operation is idempotent, keyed by the receipt or invoice number).
n8_outbox = sa.Table(
    "bg_n8_outbox",
    metadata,
    _id(),
    sa.Column("journal_id", sa.BigInteger, nullable=True, index=True),
    sa.Column("receipt_no", sa.String(20), nullable=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("ops", sa.Text, nullable=False),  # JSON: [[operation, {arguments}], ...]
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("tried_at", sa.DateTime, nullable=True),
    sa.Column("last_error", sa.String(200), nullable=True),
)

# One row per lease (bankgate/store/leases.py): the job it guards by name
# (``recon:{bank}:{date}``, ``cutoff:{bank}:{date}``, ``expiry`` ...), the process
# holding it and until when; a job that runs once keeps its row, finished.
lease = sa.Table(
    "bg_lease",
    metadata,
    sa.Column("name", sa.String(160), primary_key=True),
    sa.Column("holder", sa.String(64), nullable=False),  # host:pid:id
    sa.Column("acquired_at", sa.DateTime, nullable=False),
    sa.Column("renewed_at", sa.DateTime, nullable=False),
    sa.Column("expires_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime, nullable=True),
    sa.Column("job", sa.String(200), nullable=True),  # JSON: what, started by whom
)

# -- invoices (发票) --------------------------------------------------------------

# A range of invoice numbers issued to a bank (领用): numbers are
# prefix + the number zero-padded to ``width`` digits, ``next_no`` the next to use.
invoice_stock = sa.Table(
    "bg_invoice_stock",
    metadata,
    _id(),
    sa.Column("bank", sa.String(BANK), nullable=False),
    sa.Column("prefix", sa.String(8), nullable=True),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("first_no", sa.BigInteger, nullable=False),
    sa.Column("last_no", sa.BigInteger, nullable=False),
    sa.Column("next_no", sa.BigInteger, nullable=False),
    sa.Column("low_water", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("issued_at", sa.DateTime, nullable=False),
    sa.Column("issued_by", sa.String(64), nullable=False),
    sa.Index("ix_bg_invoice_stock_bank", "bank", "id"),
)

# Every invoice number used (开出): ISSUED with a payment, PRINTED (打印, with a
# count of reprints 补打), VOID (作废, with the reason).
invoice = sa.Table(
    "bg_invoice",
    metadata,
    sa.Column("invoice_no", sa.String(20), primary_key=True),
    sa.Column("stock_id", sa.BigInteger, nullable=False),
    sa.Column("bank", sa.String(BANK), nullable=False),
    sa.Column("payment_id", sa.BigInteger, nullable=True),
    sa.Column("status", sa.String(8), nullable=False),
    sa.Column("print_count", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("printed_at", sa.DateTime, nullable=True),
    sa.Column("voided_at", sa.DateTime, nullable=True),
    sa.Column("void_reason", sa.String(200), nullable=True),
    sa.Column("actor", sa.String(64), nullable=True),
    sa.Index("ix_bg_invoice_payment", "payment_id"),
    sa.Index("ix_bg_invoice_created", "created_at"),  # invoice usage report (0007)
)

# -- withholding (代扣 / 卡扣) ---------------------------------------------------------

# A batch file of bills to debit (.PK) and what came back for it (.PKJG).
wh_batch = sa.Table(
    "bg_wh_batch",
    metadata,
    _id(),
    sa.Column("bank", sa.String(BANK), nullable=False),
    sa.Column("deduct_date", sa.Date, nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("file_name", sa.String(80), nullable=False),
    sa.Column("status", sa.String(12), nullable=False),  # GENERATED PROCESSED
    sa.Column("record_count", sa.Integer, nullable=False),
    _money("total"),
    sa.Column("generated_at", sa.DateTime, nullable=False),
    sa.Column("result_at", sa.DateTime, nullable=True),
    sa.Column("success_count", sa.Integer, nullable=False, server_default=sa.text("0")),
    _money("success_total"),
    sa.UniqueConstraint("bank", "deduct_date", "seq", name="uq_bg_wh_batch_seq"),
    sa.Index("ix_bg_wh_batch_date", "deduct_date"),  # withholding report (0007)
)

wh_line = sa.Table(
    "bg_wh_line",
    metadata,
    _id(),
    sa.Column("batch_id", sa.BigInteger, nullable=False),
    sa.Column("line_no", sa.Integer, nullable=False),
    sa.Column("bill_id", sa.String(32), nullable=False),
    sa.Column("customer_no", sa.String(32), nullable=False),
    sa.Column("account_no", sa.String(32), nullable=False),
    _money("amount"),
    _money("late_fee"),
    _money("total"),
    sa.Column("result", sa.String(2), nullable=True),  # 0 debited, 1-4 failures
    sa.Column("bank_serial", sa.String(SERIAL), nullable=True),
    sa.Column("payment_id", sa.BigInteger, nullable=True),
    sa.UniqueConstraint("batch_id", "line_no", name="uq_bg_wh_line"),
)

# Real-time card debits (卡扣, the gateway as the client) and their
# store-and-forward reversals: a debit with no answer is REVERSING until the
# bank answers its 561, across restarts.
debit = sa.Table(
    "bg_debit",
    metadata,
    _id(),
    sa.Column("bank", sa.String(BANK), nullable=False),
    sa.Column("utility_serial", sa.String(SERIAL), nullable=False),
    sa.Column("trade_date", sa.Date, nullable=False),
    sa.Column("customer_no", sa.String(32), nullable=False),
    sa.Column("account_no", sa.String(32), nullable=False),
    sa.Column("bill_ids", sa.String(400), nullable=False),
    _money("amount"),
    # SENT DEBITED FAILED REVERSING REVERSED NOT_DEBITED
    sa.Column("status", sa.String(12), nullable=False),
    sa.Column("response_code", sa.String(4), nullable=True),
    sa.Column("bank_serial", sa.String(SERIAL), nullable=True),
    sa.Column("payment_id", sa.BigInteger, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("next_attempt_at", sa.DateTime, nullable=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("bank", "utility_serial", name="uq_bg_debit_serial"),
    sa.Index("ix_bg_debit_status", "status", "next_attempt_at"),
)

# -- supply status (开栓/停栓) and work orders (工单) -------------------------------------

# The valve state of each household per heating season, where the gateway keeps it
# (``[supply] source = "gateway"``: N8 has no valve table).  A household without a
# row is closed.  The same shape as N8's logical table ``valve`` (bankgate/store/n8.py).
valve = sa.Table(
    "bg_valve",
    metadata,
    sa.Column("season", sa.String(16), primary_key=True),
    sa.Column("customer_no", sa.String(32), primary_key=True),
    sa.Column("state", sa.String(8), nullable=False),  # open closed
    sa.Column("changed_at", sa.DateTime, nullable=True),
    sa.Column("changed_by", sa.String(64), nullable=True),
    sa.Index("ix_bg_valve_state", "season", "state"),
)

# Work orders for the service team: open the valve of a household whose payment
# settled the season's heating fee (open_valve), or look again at one whose payment
# was undone after its valve was opened (review).  ``receipt_no`` is the payment's.
work_order = sa.Table(
    "bg_work_order",
    metadata,
    _id(),
    sa.Column("customer_no", sa.String(32), nullable=False),
    sa.Column("season", sa.String(16), nullable=False),
    sa.Column("kind", sa.String(12), nullable=False),  # open_valve review
    sa.Column("state", sa.String(10), nullable=False),  # open done cancelled
    sa.Column("receipt_no", sa.String(20), nullable=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("done_at", sa.DateTime, nullable=True),  # done or cancelled
    sa.Column("done_by", sa.String(64), nullable=True),
    sa.Column("note", sa.String(400), nullable=True),
    sa.Index("ix_bg_work_order_household", "customer_no", "season", "kind", "state"),
    sa.Index("ix_bg_work_order_receipt", "receipt_no"),
    sa.Index("ix_bg_work_order_state", "state", "season", "id"),
)

# -- the operator console (docs/console.rst) --------------------------------------------

# Console accounts.  ``password`` is an scrypt hash ("scrypt$n$r$p$salt$hash",
# bankgate/app/console/auth.py), never the password; ``disabled_at`` set: cannot sign
# in.  ``changed_at``: the last change of role, password or state, so that the running
# console ends the sessions it started before.  Sessions live in the console's memory.
console_user = sa.Table(
    "bg_console_user",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("role", sa.String(10), nullable=False),  # viewer operator admin
    sa.Column("password", sa.String(200), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("changed_at", sa.DateTime, nullable=False),
    sa.Column("disabled_at", sa.DateTime, nullable=True),
    sa.Column("last_login_at", sa.DateTime, nullable=True),
)

GATEWAY_TABLES = [t.name for t in metadata.sorted_tables]
