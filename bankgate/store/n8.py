"""The N8 billing schema, reached through a mapping.

The gateway names N8's tables and columns by *logical* names (``bill.amount``);
the configuration maps each onto the physical names of an existing N8
installation (``[n8.tables] bill = "HRB_ZD"``, ``[n8.columns.bill] amount =
"YSJE"``).  Anything not mapped keeps the reference name below, which is also
the schema the embedded default creates and seeds with demo data.

Every SQLAlchemy column is built with ``key=<logical name>``, so the store's
code always says ``t.c.amount`` while the SQL says whatever N8 calls it.  A column
whose values N8 stores otherwise (``[n8.values.bill] amount = "yuan"``, code maps
``[n8.codes.status]``) gets a converting type from :mod:`bankgate.store.n8values`, so
the store's code always sees integer fen, dates and the reference codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from bankgate.store import n8values

# logical table -> (reference table name, [(logical column, type, options)])
_Money = sa.BigInteger

REFERENCE: dict[str, tuple[str, list[tuple[str, object, dict]]]] = {
    "customer": (
        "n8_customer",
        [
            ("customer_no", sa.String(32), {"primary_key": True}),
            ("name", sa.String(100), {"nullable": False}),
            ("address", sa.String(200), {"nullable": True}),
            # R residential, I industrial, C commercial
            ("customer_class", sa.String(1), {"nullable": False}),
            ("district", sa.String(40), {"nullable": True}),
            ("heated_area", sa.Numeric(12, 2), {"nullable": False, "server_default": sa.text("0")}),
            # A active, S suspended (locked)
            ("status", sa.String(1), {"nullable": False, "server_default": "A"}),
            ("large_customer", sa.Integer, {"nullable": False, "server_default": sa.text("0")}),
            ("withholding_bank", sa.String(32), {"nullable": True}),
            ("withholding_account", sa.String(32), {"nullable": True}),
        ],
    ),
    "tariff": (
        "n8_tariff",
        [
            ("fee_type", sa.String(2), {"primary_key": True}),
            ("customer_class", sa.String(1), {"primary_key": True}),
            ("unit_price", _Money, {"nullable": False}),  # fen per unit (m², kWh, t)
            # late fee per day overdue, in parts per million of the outstanding
            # principal (万分之五 per day = 500)
            ("late_fee_ppm", sa.Integer, {"nullable": False, "server_default": sa.text("0")}),
        ],
    ),
    "bill": (
        "n8_bill",
        [
            ("bill_id", sa.String(32), {"primary_key": True}),
            ("customer_no", sa.String(32), {"nullable": False, "index": True}),
            ("fee_type", sa.String(2), {"nullable": False}),
            ("period", sa.String(16), {"nullable": False}),
            ("amount", _Money, {"nullable": False}),
            ("paid_amount", _Money, {"nullable": False, "server_default": sa.text("0")}),
            ("late_fee_paid", _Money, {"nullable": False, "server_default": sa.text("0")}),
            ("due_date", sa.Date, {"nullable": False}),
        ],
    ),
    # N8's own payment records: the gateway writes them in the same
    # transaction as its journal so N8 sees the payment at once.
    "payment": (
        "n8_payment",
        [
            ("pay_id", sa.String(20), {"primary_key": True}),  # = the receipt number
            ("customer_no", sa.String(32), {"nullable": False, "index": True}),
            ("amount", _Money, {"nullable": False}),
            ("pay_date", sa.Date, {"nullable": False}),
            ("bank_code", sa.String(32), {"nullable": False}),
            ("bank_serial", sa.String(40), {"nullable": False}),
            ("channel", sa.String(2), {"nullable": False}),
            # N normal, P pending (two-phase, not confirmed yet), C cancelled
            # (reversed, refunded, expired)
            ("status", sa.String(1), {"nullable": False, "server_default": "N"}),
            ("created_at", sa.DateTime, {"nullable": False}),
        ],
    ),
    "payment_item": (
        "n8_payment_item",
        [
            ("pay_id", sa.String(20), {"primary_key": True}),
            ("bill_id", sa.String(32), {"primary_key": True}),
            ("principal", _Money, {"nullable": False}),
            ("late_fee", _Money, {"nullable": False}),
        ],
    ),
    "invoice": (
        "n8_invoice",
        [
            ("invoice_no", sa.String(20), {"primary_key": True}),
            ("pay_id", sa.String(20), {"nullable": True}),
            ("customer_no", sa.String(32), {"nullable": True}),
            ("amount", _Money, {"nullable": False, "server_default": sa.text("0")}),
            # U unused, I issued (used), V void
            ("status", sa.String(1), {"nullable": False, "server_default": "U"}),
            ("issued_at", sa.DateTime, {"nullable": True}),
        ],
    ),
    # The valve (阀门) of each household per heating season, where N8 keeps it
    # (一户一阀): read by the supply hook and reports when [supply] source = "n8";
    # never written by the gateway.  No row for a household and season: closed.
    "valve": (
        "n8_valve",
        [
            ("season", sa.String(16), {"primary_key": True}),  # the heating bills' period
            ("customer_no", sa.String(32), {"primary_key": True}),
            ("state", sa.String(8), {"nullable": False}),  # open closed
            ("changed_at", sa.DateTime, {"nullable": True}),
        ],
    ),
}

LOGICAL_TABLES = tuple(REFERENCE)

# Indexes of the reference schema beyond its keys: what the reports read by
# (bankgate/store/reports.py).  Created with the reference schema only; a real N8
# is indexed by its DBA (docs/reports.rst lists what the reports need).
REFERENCE_INDEXES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "bill": [("fee_due", ("fee_type", "due_date")), ("due", ("due_date",)),
             # supply status: a season's heating bills per household (bankgate/store/supply.py)
             ("season", ("fee_type", "period", "customer_no"))],
    "customer": [("district", ("district", "customer_class"))],
}


class MappingError(ValueError):
    pass


@dataclass
class N8Mapping:
    """Logical → physical names for N8's tables and columns."""

    tables: dict[str, str] = field(default_factory=dict)
    columns: dict[str, dict[str, str]] = field(default_factory=dict)
    schema: str | None = None  # a database schema / owner, e.g. "N8"
    # logical table -> logical column -> representation ("yuan", "char8", "trim", ...;
    # bankgate.store.n8values.REPRESENTATIONS); not given: as the reference schema
    values: dict[str, dict[str, str]] = field(default_factory=dict)
    # code map ("status", "customer_class", "fee_type", "payment_status",
    # "invoice_status") -> logical code (for "status": "active", "locked") -> N8's codes,
    # the first of which is written
    codes: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @property
    def plain(self) -> bool:
        """No value is converted: N8 stores the reference units and codes."""
        if any(self.codes.values()):
            return False
        for t, cols in self.values.items():
            ref = {c[0]: c[1] for c in REFERENCE.get(t, ("", []))[1]}
            for c, rep in cols.items():
                if rep != n8values.DEFAULTS.get(n8values.kind_of(ref.get(c)) or "", rep):
                    return False
        return True

    def representation(self, table: str, column: str) -> str | None:
        return self.values.get(table, {}).get(column)

    def code_map(self, table: str, column: str) -> tuple[str | None, dict[str, list[str]]]:
        """(name, codes) of the code map that applies to ``table.column``, if any."""
        for name, cols in n8values.CODE_COLUMNS.items():
            if (table, column) in cols:
                return name, self.codes.get(name, {})
        return None, {}

    def validate(self) -> None:
        self._validate_names()
        for key, message in self.problems():
            raise MappingError(f"{key}: {message}")

    def problems(self) -> list[tuple[str, str]]:
        """What is wrong with the value representations and code maps, as (key,
        message) pairs; the configuration raises the first one on its key."""
        out: list[tuple[str, str]] = []
        for t, cols in self.values.items():
            if t not in REFERENCE:
                out.append((f"n8.values.{t}",
                            f"unknown N8 table (known: {', '.join(REFERENCE)})"))
                continue
            ref = {c[0]: c[1] for c in REFERENCE[t][1]}
            for c, rep in cols.items():
                key = f"n8.values.{t}.{c}"
                if c not in ref:
                    out.append((key, f"unknown column (known: {', '.join(ref)})"))
                    continue
                kind = n8values.kind_of(ref[c])
                if rep not in n8values.REPRESENTATIONS and rep not in n8values.DEFAULTS.values():
                    out.append((key, f"unknown representation {rep!r} (known: "
                                     f"{', '.join(n8values.REPRESENTATIONS)})"))
                elif rep == n8values.DEFAULTS.get(kind or ""):
                    continue
                elif n8values.REPRESENTATIONS.get(rep) != kind and not (
                        rep == "datetime" and kind == "timestamp"):
                    what = n8values.KIND_NAMES.get(kind or "", "a column with no representations")
                    out.append((key, f"{rep!r} does not fit {t}.{c}, {what}"))
        for name, codes in self.codes.items():
            key = f"n8.codes.{name}"
            if name not in n8values.CODE_COLUMNS:
                out.append((key, f"unknown code map (known: "
                                 f"{', '.join(n8values.CODE_COLUMNS)})"))
                continue
            known = n8values.LOGICAL_CODES[name]
            seen: dict[str, str] = {}
            for lg, phys in codes.items():
                if lg not in known:
                    out.append((f"{key}.{lg}", f"unknown code (known: {', '.join(known)})"))
                elif not phys or not all(isinstance(p, str) and p for p in phys):
                    out.append((f"{key}.{lg}", "expected a list of one or more codes "
                                               "(text), the first of which is written"))
                else:
                    for p in phys:
                        if p in seen and seen[p] != lg:
                            out.append((f"{key}.{lg}",
                                        f"code {p!r} is also listed for {seen[p]!r}"))
                        seen[p] = lg
            if name == "status" and codes and "active" not in codes:
                out.append((key, "expected the key 'active' (the codes of an active "
                                 "customer; any other reads as locked)"))
        return out

    def _validate_names(self) -> None:
        for t in self.tables:
            if t not in REFERENCE:
                raise MappingError(f"n8.tables.{t}: unknown table (known: {', '.join(REFERENCE)})")
        for t, cols in self.columns.items():
            if t not in REFERENCE:
                raise MappingError(f"n8.columns.{t}: unknown table")
            known = {c[0] for c in REFERENCE[t][1]}
            for c in cols:
                if c not in known:
                    raise MappingError(
                        f"n8.columns.{t}.{c}: unknown column (known: {', '.join(sorted(known))})"
                    )

    def table_name(self, logical: str) -> str:
        return self.tables.get(logical, REFERENCE[logical][0])

    def column_name(self, table: str, logical: str) -> str:
        return self.columns.get(table, {}).get(logical, logical)


def build_tables(mapping: N8Mapping, metadata: sa.MetaData | None = None) -> dict[str, sa.Table]:
    """SQLAlchemy tables for N8 under ``mapping``, keyed by logical name.

    A column with a representation or a code map gets a converting type whose DDL is
    the physical one (``DECIMAL(12,2)`` for yuan, ``CHAR(8)`` for char8 ...): creating
    the mapped tables makes an N8-shaped schema (the tests' legacy copy)."""
    mapping.validate()
    md = metadata if metadata is not None else sa.MetaData()
    out = {}
    for logical, (_ref, cols) in REFERENCE.items():
        columns = []
        for cname, ctype, opts in cols:
            opts = dict(opts)
            rep = mapping.representation(logical, cname)
            code_name, codes = mapping.code_map(logical, cname)
            if rep is not None or codes:
                ref_type = ctype() if isinstance(ctype, type) else ctype
                ctype = n8values.column_type(logical, cname, ref_type, rep, codes, code_name)
                default = opts.get("server_default")
                if codes and isinstance(default, str):  # the physical code of "A", "N", "U"
                    opts["server_default"] = ctype.process_bind_param(default, None)
            columns.append(
                sa.Column(mapping.column_name(logical, cname), ctype, key=cname, **opts)
            )
        out[logical] = sa.Table(
            mapping.table_name(logical), md, *columns, schema=mapping.schema
        )
        for suffix, keys in REFERENCE_INDEXES.get(logical, ()):
            sa.Index(f"ix_{mapping.table_name(logical).lower()}_{suffix}",
                     *[out[logical].c[k] for k in keys])
    return out
