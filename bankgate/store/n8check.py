"""``bankgate n8 check``: prove the N8 mapping against N8 itself, before any bank does.

:func:`run_checks` connects to N8 and returns one :class:`Check` per thing it
proved or failed to prove (the command prints one line each; the service runs
the same checks at start and refuses to start on a failure):

1. every mapped table exists under the mapping's schema (a missing one names
   its ``[n8.tables]`` key and the similar names N8 has);
2. every logical column exists in its physical table with a type the gateway
   can use: money an integer or a decimal (per its value representation),
   dates a date (or ``CHAR(8)`` text when so mapped), text long enough for what
   the gateway writes (``payment.pay_id`` 20 characters, ``bank_serial`` 40);
3. the account's privileges, proven rather than assumed: a ``SELECT`` of every
   table the gateway reads, and the writes it makes -- ``UPDATE`` of the bills'
   paid amounts (``WHERE 1 = 0``) and their lock (``SELECT ... FOR UPDATE``), a probe
   row inserted into ``payment`` and ``payment_item`` -- each in a transaction that is
   **rolled back**; a refusal
   reads "missing grant: GRANT ... TO user" in the database's own syntax;
4. a sample (up to :data:`SAMPLE` rows each) of ``customer``, ``bill``, ``tariff``
   and ``payment`` read through the mapping: a value that does not convert, a
   code that is not one the gateway knows, is named with its row's key;
5. what the posting adapter adds: ``extra`` callables ``(conn) -> list[Check]``.

Reads go through SQLAlchemy's inspector and the mapped tables; nothing here is
written that is not rolled back.  The value representations and code maps of
the mapping (``mapping.values``, ``mapping.codes``) are read where the mapping
has them, so the checks run on a mapping that renames only.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

import sqlalchemy as sa

from bankgate.store.dialects import lock_rows
from bankgate.store.n8 import REFERENCE, N8Mapping, build_tables

SAMPLE = 100  # rows read of each sampled table

# what the gateway writes into a column, in characters: shorter is a failure
MIN_LENGTH = {("payment", "pay_id"): 20, ("payment_item", "pay_id"): 20,
              ("payment", "bank_serial"): 40, ("invoice", "pay_id"): 20}

# (table, privilege, columns, feature): what the gateway needs of N8.  A feature
# (``withholding``, ``invoice``, ``valve``; ``direct``: the direct posting adapter,
# which writes payments and bills itself) is needed only when it is in use.
READS = {"customer": None, "tariff": None, "bill": None, "payment": None,
         "payment_item": None, "invoice": "invoice", "valve": "valve"}
WRITES: list[tuple[str, str, tuple[str, ...], str | None]] = [
    ("bill", "UPDATE", ("paid_amount", "late_fee_paid"), "direct"),
    ("payment", "INSERT", (), "direct"),
    ("payment_item", "INSERT", (), "direct"),
    ("payment", "UPDATE", ("status",), "direct"),
    # SELECT ... FOR UPDATE: the bills a payment changes, N8's payment row on a replay
    ("bill", "LOCK", ("paid_amount", "late_fee_paid"), None),
    ("payment", "LOCK", ("status",), None),
    ("customer", "UPDATE", ("withholding_bank", "withholding_account"), "withholding"),
    ("invoice", "INSERT", (), "invoice"),
    ("invoice", "UPDATE", ("status", "pay_id", "customer_no", "amount", "issued_at"),
     "invoice"),
]
FEATURES = frozenset({"withholding", "invoice", "valve", "direct"})
WHY_FEATURE = {"withholding": "withholding (代扣) agreements",
               "invoice": "invoices", "direct": "the direct posting adapter",
               "valve": "[supply] source = \"n8\""}

# the codes the gateway knows, after the mapping's code map
# (code map key, the codes, a warning only): a class or fee type the gateway does not
# know prices no late fee; N8's own payments may have statuses the gateway never reads
KNOWN_CODES = {
    ("customer", "customer_class"): ("customer_class", ("R", "I", "C"), False),
    ("tariff", "customer_class"): ("customer_class", ("R", "I", "C"), False),
    ("bill", "fee_type"): ("fee_type", ("01", "02", "03", "04", "05"), False),
    ("tariff", "fee_type"): ("fee_type", ("01", "02", "03", "04", "05"), False),
    ("payment", "status"): ("payment_status", ("N", "P", "C"), True),
}
SAMPLED = ("customer", "bill", "tariff", "payment")


@dataclass(frozen=True)
class Check:
    """One line of the report: ``ok`` and not ``warn`` is OK; ``warn`` does not
    stop the gateway; not ``ok`` is a failure, with ``fix`` saying what to do."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    warn: bool = False

    @property
    def status(self) -> str:
        return "WARN" if self.warn else "OK" if self.ok else "FAIL"

    def line(self) -> str:
        text = f"{self.status} {self.name}: {self.detail}"
        return f"{text} -- {self.fix}" if self.fix else text


def _ok(name, detail) -> Check:
    return Check(name, True, detail)


def _fail(name, detail, fix="") -> Check:
    return Check(name, False, detail, fix)


def _warn(name, detail, fix="") -> Check:
    return Check(name, True, detail, fix, warn=True)


def failures(checks: Iterable[Check]) -> list[Check]:
    return [c for c in checks if not c.ok]


# -- kinds of columns -----------------------------------------------------------------


def _ref_columns(table: str) -> list[tuple[str, object, dict]]:
    return REFERENCE[table][1]


def kind_of(ref_type) -> str:
    """``money``, ``integer``, ``numeric``, ``date``, ``datetime`` or ``text``."""
    if isinstance(ref_type, type):  # the reference names some types by their class
        ref_type = ref_type()
    if isinstance(ref_type, sa.BigInteger):
        return "money"
    if isinstance(ref_type, sa.Integer):
        return "integer"
    if isinstance(ref_type, sa.Numeric):
        return "numeric"
    if isinstance(ref_type, sa.DateTime):
        return "datetime"
    if isinstance(ref_type, sa.Date):
        return "date"
    return "text"


def _values(mapping: N8Mapping) -> dict:
    return getattr(mapping, "values", None) or {}


def _codes(mapping: N8Mapping) -> dict:
    return getattr(mapping, "codes", None) or {}


def representation(mapping: N8Mapping, table: str, column: str) -> str | None:
    return _values(mapping).get(table, {}).get(column)


def _physical_codes(mapping: N8Mapping, key: str) -> list[str]:
    """Every physical code a code map lists (``[n8.codes.KEY]``), as text."""
    out: list[str] = []
    for v in (_codes(mapping).get(key) or {}).values():
        out.extend(str(x) for x in (v if isinstance(v, (list, tuple)) else [v]))
    return out


def _code_key(table: str, column: str) -> str | None:
    if (table, column) in KNOWN_CODES:
        return KNOWN_CODES[(table, column)][0]
    if (table, column) == ("customer", "status"):
        return "status"
    if (table, column) == ("invoice", "status"):
        return "invoice_status"
    return None


def _type_text(t, dialect) -> str:
    try:
        return t.compile(dialect=dialect)
    except Exception:  # noqa: BLE001 - a reflected type the dialect cannot render
        return type(t).__name__


def _is_text(t) -> bool:
    return isinstance(t, (sa.String, sa.Enum))


def _is_float(t) -> bool:
    return isinstance(t, sa.Float)


def _is_date(t) -> bool:
    return isinstance(t, (sa.Date, sa.DateTime))


def _written(table: str, column: str) -> bool:
    return any(t == table and (not cols or column in cols)
               for t, priv, cols, _f in WRITES if priv in ("INSERT", "UPDATE"))  # not LOCK


def type_problem(mapping: N8Mapping, table: str, column: str, ref_type, found,
                 dialect) -> Check | None:
    """The failure or warning of a physical column's type ``found`` for the logical
    ``table.column`` (``None``: fine)."""
    kind = kind_of(ref_type)
    rep = representation(mapping, table, column)
    name = f"{table}.{column}"
    shown = _type_text(found, dialect)
    where = f"[n8.values.{table}] {column}"
    if isinstance(found, sa.types.NullType):
        return _warn(name, f"type {shown or 'unknown'} not recognised, not checked")
    if kind == "money":
        if rep == "yuan":
            if isinstance(found, sa.Integer):
                return _fail(name, f"{shown} is an integer but mapped as yuan",
                             f"map {where} = \"fen\" (integer fen), or use a DECIMAL(n,2)"
                             " column")
            if isinstance(found, sa.Numeric) and not _is_float(found):
                if found.scale is not None and found.scale < 2:
                    return _fail(name, f"{shown} cannot hold fen as yuan (scale"
                                 f" {found.scale})", "a yuan column needs 2 decimal places")
                return None
        else:
            if isinstance(found, sa.Integer):
                return None
            if isinstance(found, sa.Numeric) and not _is_float(found):
                if found.scale:
                    return _warn(name, f"{shown} has {found.scale} decimal places; the"
                                 " gateway reads integer fen here",
                                 f"if it holds yuan, map {where} = \"yuan\"")
                return None
        return _fail(name, f"{shown} is not a money column (integer fen or decimal yuan)",
                     f"map [n8.columns.{table}] {column} onto a numeric column")
    if kind in ("integer", "numeric"):
        if isinstance(found, (sa.Integer, sa.Numeric)):
            return None
        return _warn(name, f"{shown} is not numeric")
    if kind in ("date", "datetime"):
        if rep in ("char8", "char14"):
            need = 8 if rep == "char8" else 14
            if _is_text(found) and (found.length is None or found.length >= need):
                return None
            return _fail(name, f"{shown} cannot hold {need}-character dates ({rep})",
                         f"map {where} to the column's kind: \"date\" or \"datetime\"")
        if _is_date(found):
            if kind == "datetime" and not isinstance(found, sa.DateTime):
                return _warn(name, f"{shown} keeps no time of day; the gateway writes one")
            return None
        if _is_text(found):
            fix = (f"map {where} = \"char8\" ('YYYYMMDD' text)" if kind == "date"
                   else f"map {where} = \"char14\" ('YYYYMMDDHHMMSS' text)")
            return _fail(name, f"{shown} is text, not a date", fix)
        return _fail(name, f"{shown} is not a date",
                     f"map [n8.columns.{table}] {column} onto a date column")
    # text
    if not _is_text(found):
        written = _written(table, column) or _code_key(table, column) is not None
        if written or any(o.get("primary_key") for c, _t, o in _ref_columns(table)
                          if c == column):
            return _fail(name, f"{shown} is not text; the gateway reads and writes it as"
                         " text", f"map [n8.columns.{table}] {column} onto a character"
                         " column (or a view that casts it)")
        return _warn(name, f"{shown} is not text")
    length = found.length
    if length is None:
        return None
    need = MIN_LENGTH.get((table, column))
    if need and length < need:
        return _fail(name, f"{shown} is shorter than the {need} characters the gateway"
                     " writes", f"map [n8.columns.{table}] {column} onto a column of at"
                     f" least {need} characters (ALTER it, or use another)")
    if _written(table, column):
        codes = _physical_codes(mapping, _code_key(table, column) or "")
        want = max((len(c) for c in codes), default=getattr(ref_type, "length", 0) or 0)
        if want and length < want:
            return _warn(name, f"{shown} is shorter than the {want} characters the"
                         " gateway may write")
    return None


# -- privileges -----------------------------------------------------------------------


def is_permission_error(e: BaseException) -> bool:
    """The database refused the account (not a missing object, not bad SQL)."""
    orig = getattr(e, "orig", e)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code == "42501":  # PostgreSQL, DB2
        return True
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in (1142, 1143, 1044, 1227):
        return True  # MariaDB / MySQL: command or column command denied
    text = str(orig).lower()
    return any(s in text for s in ("permission denied", "permission was denied",
                                   "insufficient privileges", "ora-01031", "sql0551n",
                                   "command denied"))


def grantee(conn: sa.Connection) -> str:
    """The account as a GRANT names it."""
    name = conn.dialect.name
    q = {"postgresql": "SELECT current_user", "mysql": "SELECT CURRENT_USER()",
         "mariadb": "SELECT CURRENT_USER()", "mssql": "SELECT USER_NAME()",
         "oracle": "SELECT USER FROM DUAL",
         "ibm_db_sa": "SELECT CURRENT USER FROM SYSIBM.SYSDUMMY1",
         "db2": "SELECT CURRENT USER FROM SYSIBM.SYSDUMMY1"}.get(name)
    user = None
    if q:
        try:
            user = conn.execute(sa.text(q)).scalar()
        except sa.exc.DBAPIError:
            conn.rollback()
    if user and name in ("mysql", "mariadb") and "@" in str(user):
        u, host = str(user).rsplit("@", 1)
        return f"'{u}'@'{host}'"
    return str(user or conn.engine.url.username or "<user>").strip()


def grant_text(dialect: sa.Dialect, privilege: str, table: sa.Table, columns: Iterable[str],
               user: str) -> str:
    """``GRANT privilege [(columns)] ON table TO user`` in ``dialect``'s own syntax."""
    prep = dialect.identifier_preparer
    where = prep.format_table(table)
    cols = [prep.quote(table.c[c].name) for c in columns]
    cols_sql = f" ({', '.join(cols)})" if cols else ""
    if dialect.name == "mssql":  # GRANT UPDATE ON s.t (a, b) TO u
        return f"GRANT {privilege} ON {where}{cols_sql} TO {user}"
    if dialect.name in ("ibm_db_sa", "db2"):
        return f"GRANT {privilege}{cols_sql} ON TABLE {where} TO USER {user}"
    return f"GRANT {privilege}{cols_sql} ON {where} TO {user}"


def _one_line(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e)
    return "; ".join(" ".join(x.split()) for x in text.splitlines() if x.strip())[:300]


# -- the checks -----------------------------------------------------------------------


class _Run:
    def __init__(self, engine: sa.Engine, mapping: N8Mapping, uses: frozenset[str]):
        self.engine = engine
        self.mapping = mapping
        self.uses = uses
        self.n8 = build_tables(mapping, sa.MetaData())
        self.out: list[Check] = []
        self.present: dict[str, dict[str, dict]] = {}  # table -> logical column -> reflected
        self.samples: dict[str, list[dict]] = {}
        self.user = "<user>"

    def add(self, check: Check | None) -> None:
        if check is not None:
            self.out.append(check)

    def where(self, table: str) -> str:
        s = self.mapping.schema
        return f"{s}.{self.mapping.table_name(table)}" if s else self.mapping.table_name(table)

    def used(self, table: str) -> bool:
        feature = READS.get(table)
        return feature is None or feature in self.uses

    # 1 and 2
    def structure(self, conn: sa.Connection) -> None:
        insp = sa.inspect(conn)
        schema = self.mapping.schema
        names: list[str] | None = None
        normalises = getattr(conn.dialect, "requires_name_normalize", False)
        for table in REFERENCE:
            if not self.used(table):
                self.add(_ok(f"table {table}", f"not used here (needed only for"
                             f" {WHY_FEATURE[READS[table]]}), not checked"))
                continue
            physical = self.mapping.table_name(table)
            if not insp.has_table(physical, schema=schema):
                if names is None:  # N8's, not the gateway's own bg_ tables
                    names = sorted(n for n in set(insp.get_table_names(schema=schema))
                                   | set(insp.get_view_names(schema=schema))
                                   if not n.lower().startswith("bg_"))
                self.add(_fail(f"table {table}", f"{self.where(table)} missing"
                               + (f" in schema {schema}" if schema else ""),
                               f"map [n8.tables] {table} to "
                               + _choices(physical, names, "one of the tables there")))
                continue
            cols = {c["name"]: c for c in insp.get_columns(physical, schema=schema)}
            lower = {n.lower(): n for n in cols}
            self.add(_ok(f"table {table}", f"{self.where(table)} found"))
            self.present[table] = {}
            for cname, ref_type, _opts in _ref_columns(table):
                col = self.mapping.column_name(table, cname)
                name = f"{table}.{cname}"
                hit = cols.get(col)
                if hit is None and col.lower() in lower:
                    other = lower[col.lower()]
                    if normalises:
                        hit = cols[other]
                    else:
                        self.add(_fail(name, f"column {physical}.{col} missing (there is"
                                       f" {other!r}: the case differs)",
                                       f"map [n8.columns.{table}] {cname} = \"{other}\""))
                        continue
                if hit is None:
                    self.add(_fail(name, f"column {physical}.{col} missing",
                                   f"map [n8.columns.{table}] {cname} to "
                                   + _choices(col, list(cols), "one of")))
                    continue
                self.present[table][cname] = hit
                problem = type_problem(self.mapping, table, cname, ref_type, hit["type"],
                                       conn.dialect)
                if problem is not None:
                    self.add(problem)
                else:
                    rep = representation(self.mapping, table, cname)
                    self.add(_ok(name, f"{physical}.{col}"
                                 f" {_type_text(hit['type'], conn.dialect)}"
                                 + (f" ({rep})" if rep else "")))
        conn.rollback()

    def columns(self, table: str) -> list[sa.Column]:
        t = self.n8[table]
        return [t.c[c] for c in self.present.get(table, {})]

    # 3: reads
    def selects(self, conn: sa.Connection) -> None:
        for table in READS:
            if table not in self.present or not self.used(table):
                continue
            t = self.n8[table]
            name = f"select {table}"
            try:
                conn.execute(sa.select(*self.columns(table)).where(sa.false())).all()
            except sa.exc.DBAPIError as e:
                conn.rollback()
                self.add(self._refused(name, e, "SELECT", t, ()))
                self.present.pop(table, None)  # nothing more to read there
                continue
            self.add(_ok(name, f"{self.where(table)} readable"))
        conn.rollback()

    def _refused(self, name: str, e: BaseException, privilege: str, t: sa.Table,
                 cols: tuple[str, ...]) -> Check:
        if is_permission_error(e):
            return _fail(name, "missing grant",
                         grant_text(self.engine.dialect, privilege, t, cols, self.user))
        return _fail(name, f"{privilege} failed: {_one_line(e)}")

    # 4: samples (before the write probes: they use a real customer and bill)
    def sample(self, conn: sa.Connection) -> None:
        for table in SAMPLED:
            if table not in self.present:
                continue
            self.add_all(self._sample(conn, table))
        conn.rollback()

    def add_all(self, checks: Iterable[Check]) -> None:
        self.out.extend(checks)

    def _sample(self, conn: sa.Connection, table: str) -> list[Check]:
        t = self.n8[table]
        logical = list(self.present[table])
        # the physical values, unconverted: each is then converted as the mapping does
        raw = sa.select(*[sa.literal_column(conn.dialect.identifier_preparer.quote(
            t.c[c].name)) for c in logical]).select_from(
            sa.table(t.name, schema=t.schema)).limit(SAMPLE)
        try:
            result = conn.execute(raw)
            described = [d[1] for d in (result.cursor.description or [])]
            rows = result.all()
        except sa.exc.DBAPIError as e:
            conn.rollback()
            return [_fail(f"sample {table}", f"cannot read: {_one_line(e)}")]
        keys = [c for c, _t, o in _ref_columns(table) if o.get("primary_key")]
        procs = {c: _processor(t.c[c].type, conn.dialect, code)
                 for c, code in zip(logical, described or [None] * len(logical), strict=True)}
        problems: dict[tuple[str, str], list] = {}  # (column, what) -> [count, key, value, fix]
        converted: list[dict] = []
        ref = {c: (ty, o) for c, ty, o in _ref_columns(table)}

        def note(col, what, key, value, fix="", warn=False):
            p = problems.setdefault((col, what), [0, key, value, fix, warn])
            p[0] += 1

        for row in rows:
            values = dict(zip(logical, row, strict=True))
            out = {}
            key = ", ".join(f"{k}={values.get(k)!r}" for k in keys if k in values)
            for c in logical:
                v = values[c]
                try:
                    out[c] = procs[c](v) if procs[c] and v is not None else v
                except Exception as e:  # noqa: BLE001 - any conversion error is the finding
                    note(c, f"does not convert ({_one_line(e)})", key, v,
                         _conversion_fix(table, c, kind_of(ref[c][0])))
                    out[c] = None
                    continue
                self._value(table, c, ref[c], v, out[c], key, note)
            converted.append(out)
        if (table == "customer" and "status" in logical and converted
                and not _physical_codes(self.mapping, "status")
                and not any(r.get("status") == "A" for r in converted)):
            note("status", "no customer in the sample is active ('A')", "", None,
                 "map N8's active code: [n8.codes.status]", warn=True)
        self.samples[table] = converted
        lines = []
        for (col, what), (count, key, value, fix, warn) in problems.items():
            at = f"{count} of {len(rows)} rows, first {key}: {value!r}" if key else ""
            make = _warn if warn else _fail
            lines.append(make(f"sample {table}.{col}", f"{what}" + (f"; {at}" if at else ""),
                              fix))
        if not any(not c.warn for c in lines):
            lines.insert(0, _ok(f"sample {table}", f"{len(rows)} rows read and converted"))
        return lines

    def _value(self, table, c, ref, raw, v, key, note) -> None:
        ref_type, opts = ref
        kind = kind_of(ref_type)
        if v is None:
            if kind in ("money", "date") or opts.get("primary_key"):
                note(c, "is NULL", key, raw)
            return
        if kind == "money":
            if isinstance(v, bool) or not isinstance(v, (int, Decimal)) or v != int(v):
                note(c, "is not whole fen", key, raw,
                     f"if it holds yuan, map [n8.values.{table}] {c} = \"yuan\"")
        elif kind == "date" and not isinstance(v, date):
            note(c, "is not a date", key, raw,
                 f"map [n8.values.{table}] {c} = \"char8\" for 'YYYYMMDD' text")
        elif kind == "datetime" and not isinstance(v, datetime):
            note(c, "is not a date and time", key, raw)
        known = KNOWN_CODES.get((table, c))
        if known is not None:
            code_key, allowed, warn = known
            if str(v).strip() not in allowed:
                note(c, f"code not one of {', '.join(allowed)}", key, raw,
                     f"map it in [n8.codes.{code_key}]", warn=warn)
        elif (table, c) == ("customer", "status"):
            listed = _physical_codes(self.mapping, "status")
            if listed and str(raw).strip() not in [x.strip() for x in listed]:
                note(c, "code not in [n8.codes.status] (reads as locked)", key, raw,
                     "list it in [n8.codes.status] if such customers may pay", warn=True)

    # 3: writes, each rolled back
    def writes(self, conn: sa.Connection) -> None:
        for table, privilege, cols, feature in WRITES:
            if feature is not None and feature not in self.uses:
                continue
            if table not in self.present:
                continue  # reported already: missing, or not readable
            # a column reported missing: the probe would only fail again on it
            needs = {table: cols or [c for c, _t, _o in _ref_columns(table)]}
            if table == "payment_item" and privilege == "INSERT":
                needs["payment"] = [c for c, _t, _o in _ref_columns("payment")]
            if any(c not in self.present.get(tb, {}) for tb, cs in needs.items() for c in cs):
                continue
            t = self.n8[table]
            if privilege == "LOCK":  # its grant is the UPDATE of those columns
                name, privilege = f"lock {table} (select for update)", "UPDATE"
                probe = "LOCK"
            else:
                name = f"{privilege.lower()} {table}" + (f" ({', '.join(cols)})" if cols else "")
                probe = privilege
            blocker = self._not_transactional(conn, t)
            if blocker:
                self.add(_fail(name, blocker, "ALTER TABLE ... ENGINE = InnoDB"))
                continue
            try:
                for st in self._statements(table, probe, cols):
                    conn.execute(*st)
            except sa.exc.DBAPIError as e:
                conn.rollback()
                self.add(self._refused(name, e, privilege, t, cols))
                continue
            except Exception as e:  # noqa: BLE001 - a value the mapping cannot convert
                conn.rollback()
                self.add(_fail(name, f"the probe row does not convert: {_one_line(e)}"))
                continue
            conn.rollback()
            self.add(_ok(name, f"{self.where(table)} accepts it (rolled back)"))

    def _statements(self, table: str, privilege: str, cols: tuple[str, ...]):
        t = self.n8[table]
        if privilege == "UPDATE":
            return [(t.update().where(sa.false()).values({t.c[c]: t.c[c] for c in cols}),)]
        if privilege == "LOCK":
            return [(lock_rows(sa.select(t.c[cols[0]]).where(sa.false()), t),)]
        pay_id = "N8CHECK" + "0" * 13  # 20 characters, as the gateway's receipts
        customer = (self.samples.get("customer") or [{}])[0].get("customer_no") or "N8CHECK"
        bill = (self.samples.get("bill") or [{}])[0].get("bill_id") or "N8CHECK"
        now = datetime.now().replace(microsecond=0)
        payment = {"pay_id": pay_id, "customer_no": customer, "amount": 0,
                   "pay_date": now.date(), "bank_code": "N8CHECK", "bank_serial": "9" * 40,
                   "channel": "01", "status": "N", "created_at": now}
        if table == "payment":
            return [(t.insert(), payment)]
        if table == "payment_item":
            item = {"pay_id": pay_id, "bill_id": bill, "principal": 0, "late_fee": 0}
            return [(self.n8["payment"].insert(), payment), (t.insert(), item)]
        if table == "invoice":
            return [(t.insert(), {"invoice_no": "N8CHECK" + "0" * 13, "pay_id": pay_id,
                                  "customer_no": customer, "amount": 0, "status": "V",
                                  "issued_at": now})]
        raise ValueError(f"no probe for {privilege} {table}")

    def _not_transactional(self, conn: sa.Connection, t: sa.Table) -> str | None:
        """MariaDB/MySQL: a table whose engine cannot roll back (MyISAM) -- the probe
        would stay written, and so would half a payment."""
        if conn.dialect.name not in ("mysql", "mariadb"):
            return None
        engine = conn.execute(sa.text(
            "SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA ="
            " COALESCE(:s, DATABASE()) AND TABLE_NAME = :t"),
            {"s": t.schema, "t": t.name}).scalar()
        conn.rollback()
        if engine and engine.upper() not in ("INNODB", "XTRADB", "ROCKSDB", "TOKUDB"):
            return (f"{t.name} is {engine}, which cannot roll back: the gateway posts"
                    " each payment in one transaction (not probed)")
        return None


def _processor(type_, dialect: sa.Dialect, code) -> Callable | None:
    """How a result value of ``type_`` is converted (the driver's type ``code``)."""
    try:
        return type_.dialect_impl(dialect).result_processor(dialect, code)
    except Exception:  # noqa: BLE001 - a driver type code the dialect does not expect
        return type_.dialect_impl(dialect).result_processor(dialect, None)


def _choices(name: str, names: list[str], lead: str) -> str:
    """``lead`` the names close to ``name`` first, then the others (at most 12)."""
    if not names:
        return f"{lead} ... (none found)"
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
    close += difflib.get_close_matches(name.lower(), [n.lower() for n in names], n=5,
                                       cutoff=0.4)
    lowered = {n.lower(): n for n in names}
    ordered = []
    for n in close + sorted(names):
        n = lowered.get(n.lower(), n)
        if n not in ordered:
            ordered.append(n)
    more = ", ..." if len(ordered) > 12 else ""
    return f"{lead}: {', '.join(ordered[:12])}{more}"


def _conversion_fix(table: str, column: str, kind: str) -> str:
    if kind == "money":
        return f"check [n8.values.{table}] {column} (\"fen\" or \"yuan\")"
    if kind in ("date", "datetime"):
        return f"check [n8.values.{table}] {column} (\"date\", \"datetime\" or \"char8\")"
    return f"check [n8.values.{table}] {column}"


def run_checks(engine: sa.Engine, mapping: N8Mapping,
               extra: Iterable[Callable[[sa.Connection], list[Check]]] = (), *,
               uses: Iterable[str] | None = None) -> list[Check]:
    """Every check of N8 under ``mapping`` through ``engine`` (N8's), in order.

    ``uses``: the optional features in use (``withholding``, ``invoice``,
    ``valve``); ``None`` checks everything.  ``extra``: the posting adapter's own
    checks, each ``(conn) -> list[Check]``, called after these.  Raises only
    when the database cannot be reached at all."""
    run = _Run(engine, mapping, FEATURES if uses is None else frozenset(uses))
    with engine.connect() as reader:
        if reader.dialect.name == "sqlite":  # no write lock for the reads
            reader = reader.execution_options(bankgate_readonly=True)
        run.user = grantee(reader)
        run.structure(reader)
        run.selects(reader)
        run.sample(reader)
    with engine.connect() as conn:
        run.writes(conn)
        for fn in extra:
            try:
                run.add_all(fn(conn) or [])
            except Exception as e:  # noqa: BLE001 - the adapter's check failed to run
                run.add(_fail(f"adapter {getattr(fn, '__qualname__', fn)}",
                              f"its check failed: {_one_line(e)}"))
            finally:
                conn.rollback()
    return run.out
