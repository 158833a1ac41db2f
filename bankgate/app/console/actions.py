"""Back-office actions (后台操作): each a form, a confirmation and a reason.

An action is a page at ``/actions/<name>``, mounted for the role it needs
(operators, unless it says otherwise), so the guard refuses a viewer and a post
without the CSRF token (403) before this module sees the request.  Every action
goes the same three steps:

1. ``GET``: the form, filled from the query string (``/actions/reverse?receipt=R``
   from the payment page's *Reverse* link), with a required **reason**;
2. ``POST``: the fields are checked on the server -- a bad field is shown next to
   the field (400) and nothing is done -- then the **confirmation** page says what
   will happen (looked up on the store's pool: the payment, its amount, its
   customer) with the reason, and a *Confirm* button;
3. ``POST`` with ``confirm=yes``: the fields are checked again (the confirmation
   carries them as hidden fields; nothing is trusted from the first step), and the
   action runs on the store's pool with the signed-in user as the actor and the
   reason.  The domain audits it (who, when, what, before and after, reason) in the
   transaction that does it.  Then ``303`` to the page that shows the result, with a
   notice saying what was done.

A refusal by the domain (the payment is already reversed, its invoice was printed,
the date is closed, ...) is shown with its message and the form again (409): the
action wrote nothing.  A database that does not answer is a 503 with the message.

An action is a small object (:class:`Action`): its fields, :meth:`Action.check`
(parse; on the reactor, so pure), :meth:`Action.preview` and
:meth:`Action.perform` (on the pool).  :func:`mount` puts each at its path.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource
from twisted.web.server import NOT_DONE_YET

from bankgate.store.db import StoreUnavailable

log = Logger(namespace="bankgate.console.actions")

MAX_REASON = 500  # characters of a reason (the audit row keeps them all)
MAX_FIELD = 200  # characters of any other field


class FieldError(ValueError):
    """A field's value is refused: shown next to ``field``; nothing was done."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


class ActionRefused(Exception):
    """The domain refused the action (its state does not allow it): nothing was
    done.  ``field``, when given, is the field the message belongs next to."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message, self.field = message, field


@dataclass(frozen=True)
class Field:
    """One input of an action's form.  ``kind``: ``text``, ``money`` (yuan with up
    to two decimals), ``date`` (YYYY-MM-DD), ``select`` (one of ``choices``),
    ``textarea``, ``password`` (not echoed, never refilled when the form comes back)."""

    name: str
    label: str
    kind: str = "text"
    required: bool = True
    choices: tuple[tuple[str, str], ...] = ()  # (value, label)
    help: str = ""
    max_length: int = MAX_FIELD


@dataclass
class Done:
    """What :meth:`Action.perform` did: the notice to show and where to show it."""

    notice: str
    location: str


class Action:
    """One back-office action.  Subclasses set the class attributes and override
    :meth:`check`, :meth:`preview` and :meth:`perform`."""

    name: str = ""  # the path under /actions/, and the word in the log
    title: str = ""  # the page's heading: "Reverse a payment"
    verb: str = ""  # the confirm button's word: "Reverse"
    role: str = "operator"
    fields: tuple[Field, ...] = ()
    warning: str = ""  # said on the confirmation page: what cannot be undone

    def __init__(self, store):
        self.store = store

    def check(self, values: dict[str, str]) -> dict:
        """Parse the form's text values (on the reactor: no I/O).  Return what
        :meth:`preview` and :meth:`perform` take; raise :class:`FieldError`.  The
        default checks that required fields are given and keeps the text."""
        return dict(values)

    def preview(self, parsed: dict) -> list[tuple[str, str]]:
        """On the store's pool: what will happen, as (label, value) lines for the
        confirmation page.  Raise :class:`ActionRefused` when it cannot happen."""
        return [(f.label, str(parsed.get(f.name, ""))) for f in self.fields]

    def perform(self, parsed: dict, actor: str, reason: str) -> Done:
        """On the store's pool: do it, audited by the domain, in one transaction.
        Raise :class:`ActionRefused` when refused (then nothing was written)."""
        raise NotImplementedError

    def back(self, values: dict[str, str]) -> str:
        """Where *Cancel* goes (a path on this site)."""
        return "/helpdesk"


def _arg(request, name: str) -> str:
    values = request.args.get(name.encode()) or [b""]
    try:
        return values[0].decode("utf-8").strip()
    except UnicodeDecodeError:
        return "\ufffd"


def read_form(action: Action, request) -> tuple[dict[str, str], str, dict[str, str]]:
    """The form's text values, the reason, and the errors of the generic checks
    (missing, too long, undecodable) by field."""
    values, errors = {}, {}
    for f in action.fields:
        v = _arg(request, f.name)
        values[f.name] = v
        if v == "\ufffd":
            errors[f.name] = "not valid UTF-8 text"
        elif len(v) > f.max_length:
            errors[f.name] = f"at most {f.max_length} characters"
        elif f.required and not v:
            errors[f.name] = "required"
        elif f.kind == "select" and v and v not in {c for c, _ in f.choices}:
            errors[f.name] = "choose one of the list"
    reason = _arg(request, "reason")
    if reason == "\ufffd":
        errors["reason"] = "not valid UTF-8 text"
    elif len(reason) > MAX_REASON:
        errors["reason"] = f"at most {MAX_REASON} characters"
    elif not reason:
        errors["reason"] = "say why (it goes into the audit trail)"
    return values, reason, errors


class ActionPage(resource.Resource):
    """``/actions/<name>``: the form, the confirmation and the doing of one action."""

    isLeaf = True

    def __init__(self, console, action: Action):
        super().__init__()
        self.console, self.action = console, action

    def render_GET(self, request):
        values = {f.name: _arg(request, f.name) for f in self.action.fields}
        return self._form(request, 200, values, "", {})

    def render_POST(self, request):
        values, reason, errors = read_form(self.action, request)
        parsed = None
        if not errors:
            try:
                parsed = self.action.check(values)
            except FieldError as e:
                errors[e.field] = e.message
        if errors:
            return self._form(request, 400, values, reason, errors)
        if _arg(request, "confirm") == "yes":
            return self._do(request, values, parsed, reason)
        return self._confirm(request, values, parsed, reason)

    # -- the steps ------------------------------------------------------------------

    def _confirm(self, request, values, parsed, reason):
        d = self.action.store.call(self.action.preview, parsed)

        def shown(lines):
            return self.console.page(request, "action.html", 200, title=self.action.title,
                                     action=self.action, step="confirm", values=values,
                                     reason=reason, lines=lines, errors={}, message="",
                                     back=self.action.back(values))

        d.addCallback(shown)
        d.addErrback(self._refused, request, values, reason)
        return _answer(request, d, self.console)

    def _do(self, request, values, parsed, reason):
        s = request.console_session
        d = self.action.store.call(self.action.perform, parsed, s.user, reason)

        def done(result: Done):
            log.info("console: {user} did {action}: {notice}", user=s.user,
                     action=self.action.name, notice=result.notice)
            self.console.notify(request, result.notice)
            request.setResponseCode(303)
            request.setHeader(b"location", result.location.encode("utf-8"))
            return b""

        d.addCallback(done)
        d.addErrback(self._refused, request, values, reason)
        return _answer(request, d, self.console)

    def _refused(self, failure, request, values, reason):
        failure.trap(ActionRefused)
        e = failure.value
        errors = {e.field: e.message} if e.field else {}
        return self._form(request, 409, values, reason, errors,
                          message=e.message + " -- nothing was changed.")

    def _form(self, request, status, values, reason, errors, message=""):
        return self.console.page(request, "action.html", status, title=self.action.title,
                                 action=self.action, step="form", values=values,
                                 reason=reason, errors=errors, message=message, lines=[],
                                 back=self.action.back(values))


def _answer(request, d: defer.Deferred, console):
    """Write what ``d`` gives (bytes) when it fires; a database that does not answer
    is a 503 with its message, anything else a 500 logged with its traceback."""

    def unavailable(f):
        f.trap(StoreUnavailable)
        return console.page(request, "refused.html", 503, title="Database unavailable",
                            message=f"The database does not answer ({f.value}): nothing was"
                                    " changed. Try again when it is back.")

    def broken(f):
        log.failure("console: an action failed", f)
        return console.page(request, "refused.html", 500, title="Failed",
                            message="The action failed; the gateway's log has the details."
                                    " Nothing was changed.")

    def write(body):
        if not request.finished and not getattr(request, "_disconnected", False):
            request.write(body)
            request.finish()

    d.addErrback(unavailable).addErrback(broken).addCallback(write)
    d.addErrback(lambda f: log.failure("console: cannot answer", f))
    return NOT_DONE_YET


def link(name: str, **query: str) -> str:
    """The address of an action's form, filled: ``link("reverse", receipt=R)``."""
    return f"/actions/{name}" + ("?" + urlencode(query) if query else "")


def mount(console, actions: list[Action]) -> dict[str, ActionPage]:
    """Mount every action at ``/actions/<name>`` for its role."""
    pages = {}
    for a in actions:
        pages[a.name] = ActionPage(console, a)
        console.mount(f"actions/{a.name}", pages[a.name], role=a.role)
    return pages
