"""N8's writes through N8's own stored procedures, or through an interface table.

Two posting adapters beside :class:`~bankgate.store.n8write.DirectWriter` (the
mapped tables written directly), chosen by ``[n8.post] adapter``:

``procedure`` (:class:`ProcedureWriter`)
    Each payment is one call of N8's payment procedure (and one call of an item
    procedure per settled bill, when configured); a reversal, refund or expiry one
    call of the cancel procedure; a two-phase confirm one call of the confirm
    procedure.  The call is emitted in the N8 database's own syntax
    (:meth:`ProcedureWriter.statement`), each parameter bound with the type of its
    mapped column, so the value mapping (yuan, ``CHAR(8)`` dates, code maps)
    applies to it as to a direct write.  With ``result = "row"`` the call returns a
    row whose first column is a code: one of ``ok`` is done, one of ``already`` is
    "N8 had it" (a replay), anything else raises :class:`N8Refused` and the whole
    transaction rolls back.

``interface`` (:class:`InterfaceWriter`)
    One row per operation in an interface table that N8's own job consumes (and one
    row per settled bill in an optional item table); the gateway writes nothing else.

Replays (``replay=True``, the outbox repair after a crash) are guarded: the
procedure adapter looks the payment up in N8's mapped ``payment`` table (which N8's
procedure is expected to write) and skips a payment N8 has (``post``), has
cancelled (``undo``) or has not pending (``confirm``); the interface adapter skips
an operation whose row (same receipt, same kind) is there.  The invoice and
withholding-agreement operations stay direct writes of the mapped tables in both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

import sqlalchemy as sa

from bankgate.store.dialects import is_db2
from bankgate.store.n8check import Check
from bankgate.store.n8write import DirectWriter

ADAPTERS = ("direct", "procedure", "interface")

#: what a payment's procedure may be passed (N8's payment record, logical names)
PAY_FIELDS = ("pay_id", "customer_no", "amount", "pay_date", "bank_code", "bank_serial",
              "channel", "status", "created_at")
ITEM_ONLY = ("bill_id", "principal", "late_fee")
#: routine -> the parameters it may be passed
PARAMS: dict[str, tuple[str, ...]] = {
    "pay": PAY_FIELDS,
    "item": PAY_FIELDS + ITEM_ONLY,  # the payment's fields, and the bill's
    "cancel": ("pay_id",),
    "confirm": ("pay_id",),
}
ROUTINES = tuple(PARAMS)

#: a routine or table name: letters, digits and ``_``, with one optional schema dot
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
#: a column name of the interface table
COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: the interface table's logical fields (what each row may carry)
INTERFACE_FIELDS = PAY_FIELDS + ("kind", "state")
INTERFACE_REQUIRED = ("pay_id", "kind")
INTERFACE_ITEM_FIELDS = ("pay_id", "bill_id", "principal", "late_fee")
INTERFACE_KINDS = ("pay", "cancel", "confirm")


class N8Refused(Exception):
    """N8's procedure answered a code that is neither done nor "had it already"
    (or no code at all): the transaction rolls back and the bank gets an error."""


@dataclass(frozen=True)
class ProcedureSettings:
    """``[n8.post.procedure]``: N8's routines and what they are passed."""

    pay: str
    cancel: str
    pay_params: tuple[str, ...] = PAY_FIELDS
    cancel_params: tuple[str, ...] = ("pay_id",)
    item: str | None = None
    item_params: tuple[str, ...] = ("pay_id", "bill_id", "principal", "late_fee")
    confirm: str | None = None
    confirm_params: tuple[str, ...] = ("pay_id",)
    kind: str = "procedure"  # or "function"
    result: str = "none"  # or "row"
    ok: tuple[str, ...] = ("0",)
    already: tuple[str, ...] = ()

    def routines(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """(routine, name, parameters) of each configured routine."""
        out = []
        for r in ROUTINES:
            name = getattr(self, r)
            if name:
                out.append((r, name, getattr(self, f"{r}_params")))
        return out


@dataclass(frozen=True)
class InterfaceSettings:
    """``[n8.post.interface]``: N8's interface table and its column names."""

    table: str
    columns: dict[str, str]  # logical field -> physical column (pay_id and kind at least)
    kinds: dict[str, str]  # pay, cancel, [confirm] -> the kind column's value
    new_state: str | None = None  # the state column's value on a new row
    item_table: str | None = None
    item_columns: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PostSettings:
    """``[n8.post]``: which posting adapter writes N8."""

    adapter: str = "direct"
    procedure: ProcedureSettings | None = None
    interface: InterfaceSettings | None = None

    def factory(self):
        """The ``writer=`` for :class:`~bankgate.store.db.Store` (None: direct)."""
        if self.adapter == "procedure":
            return partial(ProcedureWriter, settings=self.procedure)
        if self.adapter == "interface":
            return partial(InterfaceWriter, settings=self.interface)
        return None


def procedure_problem(dialect: str, s: ProcedureSettings) -> tuple[str, str] | None:
    """(key, problem) when ``s`` cannot be called on ``dialect``, else None."""
    if dialect == "oracle" and s.kind == "procedure" and s.result == "row":
        return ("result", "an Oracle procedure returns no row: use result = \"none\", or "
                          "kind = \"function\" for a function returning the code")
    if dialect == "sqlite":
        return ("adapter", "SQLite has no stored procedures")
    return None


def _quoted(dialect: sa.Dialect, name: str, schema: str | None) -> str:
    prep = dialect.identifier_preparer
    parts = name.split(".")
    if len(parts) == 1 and schema:
        parts = schema.split(".") + parts
    return ".".join(prep.quote(p) for p in parts)


def _split(name: str, schema: str | None) -> tuple[str | None, str]:
    if "." in name:
        sch, _, base = name.rpartition(".")
        return sch, base
    return schema, name


def _stored_name(dialect: sa.Dialect, name: str) -> str:
    """How the database keeps ``name`` in its catalogue: as written when it must be
    quoted, else folded (lower case on PostgreSQL)."""
    prep = dialect.identifier_preparer
    if prep.quote(name) != name:
        return name
    return name.lower() if dialect.name == "postgresql" else name


class ProcedureWriter(DirectWriter):
    """N8's own stored procedures (``[n8.post] adapter = "procedure"``)."""

    name = "procedure"

    def __init__(self, n8: dict[str, sa.Table], row_locks: bool = True, *,
                 settings: ProcedureSettings):
        super().__init__(n8, row_locks)
        self.settings = settings
        self.schema = n8["payment"].schema
        p, i = n8["payment"].c, n8["payment_item"].c
        # each parameter bound with its mapped column's type: the value mapping applies
        self.types = {f: p[f].type for f in PAY_FIELDS}
        self.types.update({f: i[f].type for f in ITEM_ONLY})
        self._statements: dict[tuple[str, str], sa.TextClause] = {}

    def statement(self, dialect: sa.Dialect, routine: str) -> sa.TextClause:
        """The call of ``routine`` (pay, item, cancel, confirm) in ``dialect``'s syntax,
        with typed bind parameters named as the logical fields."""
        key = (dialect.name, routine)
        stmt = self._statements.get(key)
        if stmt is not None:
            return stmt
        s = self.settings
        name, params = getattr(s, routine), getattr(s, f"{routine}_params")
        problem = procedure_problem(dialect.name, s)
        if problem is not None:
            raise N8Refused(f"[n8.post.procedure] {problem[0]}: {problem[1]}")
        q = _quoted(dialect, name, self.schema)
        args = ", ".join(f":{p}" for p in params)
        d = dialect.name
        if s.kind == "function":
            if d == "postgresql":
                sql = f"SELECT * FROM {q}({args})"
            elif d == "oracle":
                sql = f"SELECT {q}({args}) FROM DUAL"
            elif is_db2(d):
                sql = f"VALUES {q}({args})"
            else:
                sql = f"SELECT {q}({args})"
        elif d == "mssql":
            sql = f"EXEC {q} {args}".rstrip()
        elif d == "oracle":
            sql = f"BEGIN {q}({args}); END;"
        elif d == "postgresql" and s.result == "row":
            # the code comes back in the procedure's last (INOUT) parameter
            sql = f"CALL {q}({args + ', ' if args else ''}NULL)"
        else:
            sql = f"CALL {q}({args})"
        stmt = sa.text(sql).bindparams(*[sa.bindparam(p, type_=self.types[p])
                                         for p in dict.fromkeys(params)])
        self._statements[key] = stmt
        return stmt

    def _call(self, conn: sa.Connection, routine: str, values: dict) -> bool:
        """Call ``routine``; True: done, False: N8 had it already."""
        s = self.settings
        params = getattr(s, f"{routine}_params")
        r = conn.execute(self.statement(conn.dialect, routine),
                         {p: values[p] for p in params})
        if s.result == "none":
            r.close()
            return True
        row = r.first()
        name = getattr(s, routine)
        what = f"N8 procedure {name} ({routine}, receipt {values.get('pay_id', '?')})"
        if row is None:
            raise N8Refused(f"{what}: returned no row; [n8.post.procedure] result = \"row\" "
                            f"expects one row whose first column is a code")
        code = "" if row[0] is None else str(row[0]).strip()
        if code in s.ok:
            return True
        if code in s.already:
            return False
        raise N8Refused(f"{what} answered code {code!r}: not one of ok = {list(s.ok)} or "
                        f"already = {list(s.already)} in [n8.post.procedure]")

    def post(self, conn, *, pay: dict, items: list[dict], replay: bool = False) -> bool:
        if replay and self._status(conn, pay["pay_id"], lock=True) is not None:
            return False
        if not self._call(conn, "pay", pay):
            return False
        if self.settings.item:
            for it in items:
                self._call(conn, "item", {**pay, **it})
        return True

    def undo(self, conn, *, pay_id: str, items: list[dict], replay: bool = False,
             at: datetime | None = None) -> bool:
        if replay and self._status(conn, pay_id, lock=True) in (None, "C"):
            return False
        return self._call(conn, "cancel", {"pay_id": pay_id})

    def confirm(self, conn, *, pay_id: str, replay: bool = False,
                at: datetime | None = None) -> bool:
        if not self.settings.confirm:  # no confirm routine: N8's payment row itself
            return super().confirm(conn, pay_id=pay_id, replay=replay)
        if replay and self._status(conn, pay_id, lock=True) != "P":
            return False
        return self._call(conn, "confirm", {"pay_id": pay_id})

    def checks(self, conn) -> list[Check]:
        """Each configured routine exists with the declared number of parameters
        (PostgreSQL, MariaDB/MySQL; elsewhere a warning)."""
        s = self.settings
        d = conn.dialect.name
        problem = procedure_problem(d, s)
        if problem is not None:
            return [Check("post.procedure", False, problem[1],
                          fix=f"set [n8.post.procedure] {problem[0]}" if problem[0] != "adapter"
                          else "use [n8.post] adapter = \"direct\" or \"interface\"")]
        out = []
        for routine, name, params in s.routines():
            label = f"post.procedure.{routine}"
            want = len(params) + (1 if d == "postgresql" and s.kind == "procedure"
                                  and s.result == "row" else 0)
            what = "function" if s.kind == "function" else "procedure"
            schema, base = _split(name, self.schema)
            if d == "postgresql":
                found = self._pg_routine(conn, _stored_name(conn.dialect, base),
                                         None if schema is None
                                         else _stored_name(conn.dialect, schema))
            elif d in ("mysql", "mariadb"):
                found = self._my_routine(conn, base, schema)
            else:
                out.append(Check(label, True, f"{name}: not checked on {d}", warn=True,
                                 fix=f"make sure N8's {what} {name} takes {want} "
                                     f"parameter(s) and the account may run it"))
                continue
            fix = (f"create N8's {what} {name} with {want} parameter(s), or correct "
                   f"[n8.post.procedure] {routine} / {routine}_params")
            if not found:
                out.append(Check(label, False, f"{what} {name} not found", fix=fix))
                continue
            kinds = {k for k, _ in found}
            counts = sorted({n for _, n in found})
            if what not in kinds:
                out.append(Check(label, False, f"{name} is a {'/'.join(sorted(kinds))}, "
                                                f"not a {what}",
                                 fix=f"set [n8.post.procedure] kind = "
                                     f"\"{sorted(kinds)[0]}\""))
            elif want not in counts:
                out.append(Check(label, False, f"{what} {name} takes "
                                                f"{'/'.join(map(str, counts))} parameter(s), "
                                                f"{want} are passed ({', '.join(params)})",
                                 fix=fix))
            else:
                out.append(Check(label, True, f"{what} {name}, {want} parameter(s)"))
        return out

    @staticmethod
    def _pg_routine(conn, name: str, schema: str | None) -> list[tuple[str, int]]:
        rows = conn.execute(sa.text(
            "SELECT p.prokind, p.pronargs FROM pg_catalog.pg_proc p "
            "JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
            "WHERE p.proname = :name AND (n.nspname = :schema OR "
            "(CAST(:schema AS text) IS NULL AND pg_catalog.pg_function_is_visible(p.oid)))"),
            {"name": name, "schema": schema}).all()
        return [("procedure" if k == "p" else "function", int(n)) for k, n in rows]

    @staticmethod
    def _my_routine(conn, name: str, schema: str | None) -> list[tuple[str, int]]:
        rows = conn.execute(sa.text(
            "SELECT r.ROUTINE_TYPE, (SELECT COUNT(*) FROM information_schema.PARAMETERS p "
            " WHERE p.SPECIFIC_SCHEMA = r.ROUTINE_SCHEMA AND p.SPECIFIC_NAME = r.ROUTINE_NAME"
            " AND p.ORDINAL_POSITION > 0) "
            "FROM information_schema.ROUTINES r "
            "WHERE r.ROUTINE_SCHEMA = COALESCE(:schema, DATABASE()) AND r.ROUTINE_NAME = :name"),
            {"name": name, "schema": schema}).all()
        return [(str(t).lower(), int(n)) for t, n in rows]


class InterfaceWriter(DirectWriter):
    """Rows in N8's interface table (``[n8.post] adapter = "interface"``)."""

    name = "interface"

    def __init__(self, n8: dict[str, sa.Table], row_locks: bool = True, *,
                 settings: InterfaceSettings):
        super().__init__(n8, row_locks)
        self.settings = settings
        p, i = n8["payment"].c, n8["payment_item"].c
        md = sa.MetaData()
        schema, name = _split(settings.table, n8["payment"].schema)
        # money, dates and codes typed as the mapped payment's: the value mapping applies
        types = {f: p[f].type for f in PAY_FIELDS}
        types.update(kind=sa.String(16), state=sa.String(16))
        self.table = sa.Table(name, md, *[
            sa.Column(col, types[f], key=f) for f, col in settings.columns.items()],
            schema=schema)
        self.item_table = None
        if settings.item_table:
            ischema, iname = _split(settings.item_table, n8["payment"].schema)
            self.item_table = sa.Table(iname, md, *[
                sa.Column(settings.item_columns.get(f, f), i[f].type, key=f)
                for f in INTERFACE_ITEM_FIELDS], schema=ischema)

    def _kind(self, op: str) -> str:
        k = self.settings.kinds.get(op)
        if k is None:
            raise N8Refused(f"[n8.post.interface] kinds.{op} is not set: N8's interface "
                            f"table has no kind for a {op}")
        return k

    def _has(self, conn, pay_id: str, kind: str) -> bool:
        t = self.table
        return conn.execute(sa.select(t.c.pay_id).where(
            t.c.pay_id == pay_id, t.c.kind == kind).limit(1)).first() is not None

    def _row(self, kind: str, values: dict) -> dict:
        row = {f: values[f] for f in self.table.c.keys() if f in values}
        row["kind"] = kind
        if "state" in self.table.c and self.settings.new_state is not None:
            row["state"] = self.settings.new_state
        return row

    def post(self, conn, *, pay: dict, items: list[dict], replay: bool = False) -> bool:
        kind = self._kind("pay")
        if replay and self._has(conn, pay["pay_id"], kind):
            return False
        conn.execute(self.table.insert(), self._row(kind, pay))
        if self.item_table is not None and items:
            conn.execute(self.item_table.insert(), [
                {"pay_id": pay["pay_id"], "bill_id": r["bill_id"], "principal": r["principal"],
                 "late_fee": r["late_fee"]} for r in items])
        return True

    def _payment(self, conn, pay_id: str) -> dict | None:
        """The payment's fields, from its own interface row (or N8's payment
        record, once N8's job has consumed and removed that row)."""
        t = self.table
        fields = [c for c in t.c if c.key in PAY_FIELDS]
        row = conn.execute(sa.select(*[c.label(c.key) for c in fields]).where(
            t.c.pay_id == pay_id, t.c.kind == self._kind("pay")).limit(1)).mappings().first()
        if row is None:
            p = self.n8["payment"]
            row = conn.execute(sa.select(*[p.c[c.key].label(c.key) for c in fields])
                               .where(p.c.pay_id == pay_id)).mappings().first()
        return None if row is None else dict(row)

    def _follow_up(self, conn, op: str, pay_id: str, replay: bool, status: str,
                   at: datetime | None) -> bool:
        """A cancel or confirm row; ``at``: when the gateway did it (its clock, as the
        payment's own row has; an outbox row written before it was kept: now)."""
        kind = self._kind(op)
        if replay and self._has(conn, pay_id, kind):
            return False
        pay = self._payment(conn, pay_id)
        if pay is None:
            if replay:  # never reached N8: nothing to follow up
                return False
            pay = {"pay_id": pay_id}
        pay.update(status=status, created_at=at or datetime.now())
        conn.execute(self.table.insert(), self._row(kind, pay))
        return True

    def undo(self, conn, *, pay_id: str, items: list[dict], replay: bool = False,
             at: datetime | None = None) -> bool:
        return self._follow_up(conn, "cancel", pay_id, replay, "C", at)

    def confirm(self, conn, *, pay_id: str, replay: bool = False,
                at: datetime | None = None) -> bool:
        return self._follow_up(conn, "confirm", pay_id, replay, "N", at)

    def checks(self, conn) -> list[Check]:
        """The interface table (and item table) exist with every configured column."""
        out = [self._table_check(conn, "post.interface.table", self.table,
                                 "[n8.post.interface] table", "[n8.post.interface]")]
        if self.item_table is not None:
            out.append(self._table_check(conn, "post.interface.item_table", self.item_table,
                                         "[n8.post.interface] item_table",
                                         "[n8.post.interface.item_columns]"))
        return out

    @staticmethod
    def _table_check(conn, label: str, t: sa.Table, table_key: str, col_key: str) -> Check:
        insp = sa.inspect(conn)
        shown = f"{t.schema}.{t.name}" if t.schema else t.name
        if not insp.has_table(t.name, schema=t.schema):
            return Check(label, False, f"table {shown} not found",
                         fix=f"create it in N8, or correct {table_key}")
        have = {c["name"].lower() for c in insp.get_columns(t.name, schema=t.schema)}
        missing = [f"{c.key} ({c.name})" for c in t.c if c.name.lower() not in have]
        if missing:
            return Check(label, False, f"table {shown} lacks column(s) {', '.join(missing)}",
                         fix=f"correct {col_key} (N8 has: {', '.join(sorted(have))})")
        return Check(label, True, f"table {shown}, {len(t.c)} column(s)")
