"""The administrator's pages: the users (``/admin/users``) and the audit trail (``/audit``).

**Users** (admins only).  The page lists every console user: name, role, enabled or
disabled, created, last sign-in.  Each change is a back-office action
(:mod:`bankgate.app.console.actions`, mounted for admins): add a user, change a role,
disable, enable, reset a password -- a form, a confirmation, a required reason.  Each
is done by :class:`~bankgate.app.console.auth.Accounts`, the same calls ``bankgate
user`` makes, which audit them and refuse what must not happen (a name taken, a short
password, the only enabled admin disabled or demoted).  A password is typed twice, or
left empty and generated: a generated one is shown once, on the page that answers the
confirmation -- never in a notice, never in the log, never stored but as its hash.

**Audit trail** (operators and admins).  ``bg_audit`` newest first, :data:`PAGE` rows
a page and an *Older* link, filtered by actor, action and subject (each exact) and a
range of days.  Each row: when, who, the action word, its subject (a receipt, a user,
``item 42``, ...), the reason, and the rest of the row's details as ``key: value``
lines (``before.role: viewer``), shown as text.  Every action of the gateway writes
there; the page shows whatever it finds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from urllib.parse import urlencode

from twisted.logger import Logger
from twisted.web import resource

from bankgate.app.console import actions, auth
from bankgate.app.console.reports import answer, arg
from bankgate.store import audit
from bankgate.store.db import StoreUnavailable

log = Logger(namespace="bankgate.console.admin")

USERS = "/admin/users"
PAGE = 200  # audit rows a page shows
#: the audit page's text filters and their columns' sizes (bg_audit)
FILTERS = {"actor": 64, "action": 32, "subject": 100}
ROLE_CHOICES = (("viewer", "viewer: sees everything"),
                ("operator", "operator: also acts (reversals, refunds, ...)"),
                ("admin", "admin: also manages users"))

NAME = actions.Field("name", "User name", max_length=64,
                     help="1-64 letters, digits, '.', '_', '@' or '-'")
ROLE = actions.Field("role", "Role", kind="select", choices=ROLE_CHOICES)
PASSWORD = actions.Field("password", "Password", kind="password", required=False,
                         max_length=auth.MAX_PASSWORD,
                         help=f"at least {auth.MIN_PASSWORD} characters; leave both password"
                              " fields empty to have one generated, shown once")
AGAIN = actions.Field("again", "Password again", kind="password", required=False,
                      max_length=auth.MAX_PASSWORD)


# -- users: the actions ------------------------------------------------------------------


@dataclass
class Shown(actions.Done):
    """What a user action did; ``password``: a generated password the answer shows once
    (kept out of the notice, the log and ``repr``)."""

    user: str = ""
    password: str | None = field(default=None, repr=False)


def _account_error(e: auth.AccountError) -> actions.ActionRefused:
    return actions.ActionRefused(str(e), e.field)


def _checked(check, *args) -> str:
    """``check(*args)`` of :mod:`auth` (pure), its refusal as a :class:`FieldError`."""
    try:
        return check(*args)
    except auth.AccountError as e:
        raise actions.FieldError(e.field, str(e)) from None


class UserAction(actions.Action):
    """An action on one console user, through :class:`~bankgate.app.console.auth.Accounts`."""

    role = "admin"

    def __init__(self, store, accounts: auth.Accounts):
        super().__init__(store)
        self.accounts = accounts

    def back(self, values):
        return USERS

    def user(self, name: str) -> dict:
        """On the pool: the user ``name`` (no hash); refused when there is none."""
        row = next((u for u in self.accounts.list() if u["name"] == name), None)
        if row is None:
            raise actions.ActionRefused(f"no user named {name!r}", "name")
        return row

    def last_admin(self, name: str, field: str) -> None:
        """On the pool: refuse to take the only enabled admin away (Accounts refuses
        it too; said here already, on the confirmation)."""
        if auth.is_last_admin(self.accounts.list(), name):
            raise actions.ActionRefused(f"{name!r} is the only enabled admin: make another"
                                        " user admin first", field)


def _password(values: dict[str, str], name: str) -> str:
    """The typed password (checked), or ``""``: generate one."""
    typed, again = values["password"], values["again"]
    if not typed and not again:
        return ""
    if typed != again:
        raise actions.FieldError("again", "the two passwords differ")
    return _checked(auth.check_password, typed, name)


class AddUser(UserAction):
    name, title, verb = "user-add", "Add a console user", "Add"
    fields = (NAME, ROLE, PASSWORD, AGAIN)

    def check(self, values):
        name = _checked(auth.check_name, values["name"])
        return {"name": name, "role": _checked(auth.check_role, values["role"]),
                "password": _password(values, name)}

    def preview(self, parsed):
        if any(u["name"] == parsed["name"] for u in self.accounts.list()):
            raise actions.ActionRefused(f"a user named {parsed['name']!r} exists already",
                                        "name")
        return [("User", parsed["name"]), ("Role", parsed["role"]),
                ("Password", "as typed (not shown)" if parsed["password"]
                 else "generated, shown once when you confirm")]

    def perform(self, parsed, actor, reason):
        name, role = parsed["name"], parsed["role"]
        password = parsed["password"] or auth.new_password()
        try:
            self.accounts.add(name, role, password, actor=actor, reason=reason)
        except auth.AccountError as e:
            raise _account_error(e) from None
        return Shown(f"user {name} added ({role})", USERS, name,
                     None if parsed["password"] else password)


class ChangeRole(UserAction):
    name, title, verb = "user-role", "Change a user's role", "Change"
    fields = (NAME, ROLE)
    warning = ("The user's open sessions end within 30 seconds; the new role applies from"
               " their next sign-in.")

    def check(self, values):
        return {"name": _checked(auth.check_name, values["name"]),
                "role": _checked(auth.check_role, values["role"])}

    def preview(self, parsed):
        row = self.user(parsed["name"])
        if row["role"] == parsed["role"]:
            raise actions.ActionRefused(f"{parsed['name']!r} is {row['role']} already", "role")
        if row["role"] == "admin":
            self.last_admin(parsed["name"], "role")
        return [("User", parsed["name"]), ("Role now", row["role"]),
                ("New role", parsed["role"])]

    def perform(self, parsed, actor, reason):
        try:
            self.accounts.set_role(parsed["name"], parsed["role"], actor=actor, reason=reason)
        except auth.AccountError as e:
            raise _account_error(e) from None
        return Shown(f"user {parsed['name']}: role {parsed['role']}", USERS, parsed["name"])


class SetDisabled(UserAction):
    """Disable (``disabled``) or enable a user."""

    fields = (NAME,)
    disabled = True

    def check(self, values):
        return {"name": _checked(auth.check_name, values["name"])}

    def preview(self, parsed):
        row = self.user(parsed["name"])
        if (row["disabled_at"] is not None) == self.disabled:
            state = "disabled" if self.disabled else "enabled"
            raise actions.ActionRefused(f"{parsed['name']!r} is {state} already", "name")
        if self.disabled:
            self.last_admin(parsed["name"], "name")
        return [("User", parsed["name"]), ("Role", row["role"])]

    def perform(self, parsed, actor, reason):
        try:
            self.accounts.set_disabled(parsed["name"], self.disabled, actor=actor,
                                       reason=reason)
        except auth.AccountError as e:
            raise _account_error(e) from None
        state = "disabled" if self.disabled else "enabled"
        return Shown(f"user {parsed['name']}: {state}", USERS, parsed["name"])


class DisableUser(SetDisabled):
    name, title, verb = "user-disable", "Disable a user", "Disable"
    warning = "The user can no longer sign in; their open sessions end within 30 seconds."


class EnableUser(SetDisabled):
    name, title, verb = "user-enable", "Enable a user", "Enable"
    disabled = False


class ResetPassword(UserAction):
    name, title, verb = "user-passwd", "Reset a user's password", "Reset"
    fields = (NAME, PASSWORD, AGAIN)
    warning = ("The old password stops working at once; the user's open sessions end"
               " within 30 seconds.")

    def check(self, values):
        name = _checked(auth.check_name, values["name"])
        return {"name": name, "password": _password(values, name)}

    def preview(self, parsed):
        row = self.user(parsed["name"])
        return [("User", parsed["name"]), ("Role", row["role"]),
                ("New password", "as typed (not shown)" if parsed["password"]
                 else "generated, shown once when you confirm")]

    def perform(self, parsed, actor, reason):
        password = parsed["password"] or auth.new_password()
        try:
            self.accounts.passwd(parsed["name"], password, actor=actor, reason=reason)
        except auth.AccountError as e:
            raise _account_error(e) from None
        return Shown(f"user {parsed['name']}: password changed", USERS, parsed["name"],
                     None if parsed["password"] else password)


class UserActionPage(actions.ActionPage):
    """A user action's page: as every action's, except that a password the action
    generated is shown on the page that answers the confirmation (200), once, instead
    of going back to the list with a notice (a notice is logged; a password never)."""

    def render_POST(self, request):
        for f in self.action.fields:  # the form would drop the spaces: refuse them instead
            raw = (request.args.get(f.name.encode()) or [b""])[0].decode("utf-8", "replace")
            if f.kind == "password" and raw != raw.strip():
                values, reason, errors = actions.read_form(self.action, request)
                errors.setdefault(f.name, "no spaces at the start or the end")
                return self._form(request, 400, values, reason, errors)
        return super().render_POST(request)

    def _do(self, request, values, parsed, reason):
        s = request.console_session
        d = self.action.store.call(self.action.perform, parsed, s.user, reason)

        def done(result: Shown):
            log.info("console: {user} did {action}: {notice}", user=s.user,
                     action=self.action.name, notice=result.notice)
            if result.password is None:
                self.console.notify(request, result.notice)
                request.setResponseCode(303)
                request.setHeader(b"location", result.location.encode("utf-8"))
                return b""
            return self.console.page(request, "user_password.html", 200,
                                     title=self.action.title, notice=result.notice,
                                     user=result.user, password=result.password,
                                     back=result.location)

        d.addCallback(done)
        d.addErrback(self._refused, request, values, reason)
        return actions._answer(request, d, self.console)


def user_link(action: str, name: str = "") -> str:
    """The form of a user action, filled with the user's name."""
    return f"/actions/{action}" + (f"?{urlencode({'name': name})}" if name else "")


def user_actions(store, accounts: auth.Accounts) -> list[UserAction]:
    return [cls(store, accounts) for cls in
            (AddUser, ChangeRole, DisableUser, EnableUser, ResetPassword)]


# -- users: the list ------------------------------------------------------------------------


class UsersPage(resource.Resource):
    """``/admin/users``: every user, with links to the actions on each."""

    isLeaf = True

    def __init__(self, console, store, accounts: auth.Accounts):
        super().__init__()
        self.console, self.store, self.accounts = console, store, accounts

    def render_GET(self, request):
        d = self.store.call(self.accounts.list)

        def shown(users):
            return self.console.page(request, "users.html", 200, title="Users", users=users,
                                     link=user_link)

        d.addCallback(shown).addErrback(failed, self.console, request)
        return answer(request, d)


def failed(failure, console, request) -> bytes:
    """A page that cannot be read: 503 when the database does not answer, else 500
    (logged with its traceback)."""
    if failure.check(StoreUnavailable):
        return console.page(request, "refused.html", 503, title="Database unavailable",
                            message=f"The database does not answer ({failure.value}): try"
                                    " again in a moment.")
    log.failure("console: an admin page failed", failure)
    return console.page(request, "refused.html", 500, title="Error",
                        message="The page failed; the gateway's log says why.")


# -- the audit trail --------------------------------------------------------------------------


class BadFilter(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def _day(field: str, text: str) -> date | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise BadFilter(field, f"expected a date as YYYY-MM-DD, got {text!r}") from None


def audit_filters(request) -> tuple[dict[str, str], dict]:
    """The form's text and the query it asks for (:func:`bankgate.store.audit.page`'s
    arguments).  Raises :class:`BadFilter` naming the field; nothing is queried then."""
    form = {k: arg(request, k) for k in (*FILTERS, "from", "to", "before")}
    for k, v in form.items():
        if v == "\ufffd":
            raise BadFilter(k, "not valid UTF-8 text")
    for k, size in FILTERS.items():
        if len(form[k]) > size:
            raise BadFilter(k, f"at most {size} characters")
    since, until = _day("from", form["from"]), _day("to", form["to"])
    if since and until and since > until:
        raise BadFilter("from", f"{since} is after to {until}")
    before = form["before"]
    if before and (not before.isascii() or not before.isdigit() or len(before) > 18):
        raise BadFilter("before", "expected a row number")
    query = {k: form[k] or None for k in FILTERS}
    query.update(since=datetime.combine(since, time()) if since else None,
                 until=datetime.combine(until + timedelta(days=1), time()) if until else None,
                 before=int(before) if before else None)
    return form, query


def _text(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False, sort_keys=True)
    return str(v)


def detail_lines(detail: dict) -> list[str]:
    """A row's details (but its reason) as ``key: value`` lines: ``before`` and
    ``after`` first, a dict's keys one level down as ``before.role: viewer``."""
    keys = [k for k in ("before", "after") if k in detail]
    keys += sorted(k for k in detail if k not in ("before", "after", "reason"))
    lines = []
    for k in keys:
        v = detail[k]
        if isinstance(v, dict) and v:
            lines += [f"{k}.{sub}: {_text(v[sub])}" for sub in sorted(v)]
        else:
            lines.append(f"{k}: {_text(v)}")
    return lines


def audit_row(r: dict) -> dict:
    """One row as the page shows it."""
    reason = r["detail"].get("reason")
    return {"id": r["id"], "at": f"{r['at']:%Y-%m-%d %H:%M:%S}", "actor": r["actor"],
            "action": r["action"], "subject": r["subject"] or "",
            "reason": "" if reason is None else _text(reason),
            "lines": detail_lines(r["detail"])}


class AuditPage(resource.Resource):
    """``/audit``: the audit trail, newest first, filtered, a page at a time."""

    isLeaf = True

    def __init__(self, console, store):
        super().__init__()
        self.console, self.store = console, store

    def render_GET(self, request):
        try:
            form, query = audit_filters(request)
        except BadFilter as e:
            form = {k: arg(request, k) for k in (*FILTERS, "from", "to")}
            return self._page(request, 400, form, [], error=e)
        d = self.store.call(self.rows, query)

        def shown(rows):
            kept = {k: form[k] for k in (*FILTERS, "from", "to") if form[k]}
            older = (f"/audit?{urlencode({**kept, 'before': rows[PAGE - 1]['id']})}"
                     if len(rows) > PAGE else "")
            newest = f"/audit?{urlencode(kept)}" if form["before"] else ""
            return self._page(request, 200, form, [audit_row(r) for r in rows[:PAGE]],
                              older=older, newest=newest)

        d.addCallback(shown).addErrback(failed, self.console, request)
        return answer(request, d)

    def rows(self, query: dict) -> list[dict]:
        """On the pool: one page of rows, and one more (is there an older page?)."""
        return self.store.run_sync(audit.page, readonly=True, limit=PAGE + 1, **query)

    def _page(self, request, status, form, rows, *, error=None, older="", newest=""):
        return self.console.page(request, "audit.html", status, title="Audit trail",
                                 form=form, rows=rows, errors={error.field: error.message}
                                 if error else {}, older=older, newest=newest, page=PAGE)


# -- mounting --------------------------------------------------------------------------------


def mount_pages(console, store, accounts: auth.Accounts) -> None:
    """``/admin/users`` and the user actions for admins, ``/audit`` for operators."""
    console.mount("admin/users", UsersPage(console, store, accounts), role="admin")
    for a in user_actions(store, accounts):
        console.mount(f"actions/{a.name}", UserActionPage(console, a), role=a.role)
    console.mount("audit", AuditPage(console, store), role="operator")


def mount(console, gw) -> None:
    """Mount this module's pages on ``console`` for the gateway ``gw``."""
    mount_pages(console, gw.parts.store, console.accounts)
