"""The console's web site: a ``twisted.web`` resource tree in the gateway's reactor.

Plain ``twisted.web`` resources, no framework on top: the tree is a handful of
mount points, each guarded by a role, and the guard (sign-in, role, CSRF) is one
object every mount passes through -- a routing library would add a second
dispatch without removing the guard.  Other modules hand their pages to
:meth:`Console.mount`.

What the site promises (``docs/console.rst``):

- nothing is served without signing in, except the sign-in page, its stylesheet
  and what is mounted ``public`` (``/healthz``, ``/metrics``; with ``[console]
  metrics_listen`` those two are served only there);
- the session cookie ``bg_session`` is ``HttpOnly``, ``SameSite=Strict``, and
  ``Secure`` when the request came over TLS;
- every request that may change something (any method but GET and HEAD) carries
  the session's CSRF token (form field ``csrf`` or header ``X-CSRF-Token``), else
  it is refused with 403 before any page sees it; the sign-in form carries its own
  token (a double-submit cookie), since there is no session yet;
- sign-ins are throttled (:class:`~bankgate.app.console.auth.LoginThrottle`) and
  audited; the password is checked on the store's thread pool, never the reactor;
- sessions expire on the injected clock, and end when their account is disabled or
  changed (checked every :data:`REFRESH` seconds, also on the store's pool).
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from urllib.parse import quote, urlsplit

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from twisted.application import service, strports
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.web import pages, resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from bankgate.app.config import CONSOLE_MAX_BODY
from bankgate.app.console import auth
from bankgate.app.console.overview import OverviewPage

log = Logger(namespace="bankgate.console")

SESSION_COOKIE = b"bg_session"
LOGIN_COOKIE = b"bg_login"
CSRF_FIELD = b"csrf"
LOGIN_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
CSRF_HEADER = b"x-csrf-token"
SAFE_METHODS = (b"GET", b"HEAD")
REFRESH = 30.0  # seconds between checks of the accounts (disabled, changed)
STATIC = Path(__file__).parent / "static"

#: every response: no framing, no sniffing, nothing from elsewhere, nothing cached
SECURITY_HEADERS = {
    b"content-security-policy": b"default-src 'self'; frame-ancestors 'none';"
                                b" form-action 'self'; base-uri 'none'",
    b"x-frame-options": b"DENY",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"same-origin",
    b"cache-control": b"no-store",
}


def templates() -> Environment:
    """The console's Jinja2 templates: autoescaped, and an unknown name is an error."""
    return Environment(loader=PackageLoader("bankgate.app.console", "templates"),
                       autoescape=select_autoescape(default=True, default_for_string=True),
                       undefined=StrictUndefined)


def current(request) -> auth.Session | None:
    """The session of a request that passed a mount's guard (``None`` on a public
    mount): who is asking, with which role, and the CSRF token for its forms."""
    return getattr(request, "console_session", None)


def client_address(request) -> str:
    addr = request.getClientAddress()
    return getattr(addr, "host", None) or str(addr)


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site, never another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


def _arg(request, name: bytes) -> str:
    values = request.args.get(name) or [b""]
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        return ""


class Console(resource.Resource):
    """The site's root: mount points, the guard, sign-in and sign-out.

    ``accounts`` is an :class:`~bankgate.app.console.auth.Accounts` (synchronous:
    it is called through ``run_blocking``, the store's ``call`` in the service);
    ``clock`` times sessions and the throttle; ``wall`` turns clock seconds into the
    local time the database records (for :meth:`Sessions.accounts_changed`).
    """

    def __init__(self, accounts: auth.Accounts, clock, *, run_blocking: Callable,
                 wall: Callable[[float], datetime], banks: list | None = None,
                 session_idle: float = 1800.0, session_lifetime: float = 12 * 3600.0):
        super().__init__()
        self.accounts = accounts
        self.clock = clock
        self.run_blocking = run_blocking
        self.wall = wall
        self.banks = list(banks or [])
        self.sessions = auth.Sessions(clock, idle=session_idle, lifetime=session_lifetime)
        self.throttle = auth.LoginThrottle(clock)
        self.templates = templates()
        self.public: dict[str, resource.Resource] = {}  # path -> resource (healthz, metrics)
        self.putChild(b"login", LoginPage(self))
        self.putChild(b"static", _Static(STATIC))
        # browsers ask for it on every page, signed in or not: no redirect to sign in
        self.putChild(b"favicon.ico", pages.notFound())
        self.overview = OverviewPage(self)  # the service gives it the live and day figures
        self.mount("", self.overview, role="viewer")
        self.mount("logout", LogoutPage(self), role="viewer")

    # -- mounting ------------------------------------------------------------------

    def mount(self, path: str, page: resource.Resource, *, role: str | None = None,
              public: bool = False) -> None:
        """Serve ``page`` at ``/path`` (``a/b`` nests).  ``role``: the least role that
        may open it (``None``: any signed-in user, a viewer).  ``public``: no sign-in
        at all -- only for what a load balancer or Prometheus reads."""
        role = role or "viewer"
        auth.check_role(role)
        segments = [s.encode("utf-8") for s in path.strip("/").split("/")] if path else [b""]
        if public:
            self.public[path.strip("/")] = page
        parent: resource.Resource = self
        for seg in segments[:-1]:
            node = parent.children.get(seg)
            if node is None:  # an intermediate folder: signed-in users only
                node = _Guard(self, resource.Resource(), "viewer")
                parent.putChild(seg, node)
            parent = node.inner if isinstance(node, _Guard) else node
        parent.putChild(segments[-1], page if public else _Guard(self, page, role))

    def unmount_public(self) -> dict[str, resource.Resource]:
        """Take the public mounts off this site (they go to ``metrics_listen``)."""
        out = dict(self.public)
        for path in out:
            self.children.pop(path.encode("utf-8"), None)
        self.public.clear()
        return out

    def getChild(self, name, request):
        """A path nothing is mounted at: not found -- for a signed-in user; anyone
        else is sent to sign in, so the paths that exist are not told to strangers."""
        return self.admit(request, "viewer") or pages.notFound()

    # -- the guard -------------------------------------------------------------------

    def admit(self, request, role: str) -> resource.Resource | None:
        """``None`` when ``request`` may reach a page guarded by ``role`` (its session
        is then :func:`current`), else the resource that answers instead."""
        s = self.session_of(request)
        if s is None:
            path = request.path.decode("utf-8", "replace")
            if request.method in SAFE_METHODS and not path.startswith("/api/"):
                return _Redirect("/login?next=" + quote(path, safe="/"))
            return Refusal(401, "not signed in", "Sign in first.", self)
        if not auth.allows(s.role, role):
            return Refusal(403, "not allowed",
                           f"Your role ({s.role}) cannot open this page: it needs {role}.", self)
        if request.method not in SAFE_METHODS and not self.csrf_ok(request, s.csrf):
            log.warn("console: {method} {path} by {user} refused: no valid CSRF token",
                     method=request.method.decode("ascii", "replace"),
                     path=request.path.decode("utf-8", "replace"), user=s.user)
            return Refusal(403, "refused",
                           "The form's security token is missing or out of date: nothing was"
                           " changed. Reload the page and try again.", self)
        request.console_session = s
        return None

    def session_of(self, request) -> auth.Session | None:
        sid = request.getCookie(SESSION_COOKIE)
        return self.sessions.get(sid.decode("ascii", "replace")) if sid else None

    @staticmethod
    def csrf_ok(request, token: str) -> bool:
        header = request.getHeader(CSRF_HEADER)
        sent = header.decode("utf-8", "replace") if header else _arg(request, CSRF_FIELD)
        return bool(sent) and hmac.compare_digest(sent.encode("utf-8"), token.encode("utf-8"))

    # -- cookies and pages ---------------------------------------------------------

    @staticmethod
    def set_cookie(request, name: bytes, value: str, *, path: bytes = b"/",
                   max_age: int | None = None) -> None:
        request.addCookie(name, value.encode("ascii"), path=path, httpOnly=True,
                          sameSite="strict", secure=request.isSecure() or None,
                          max_age=None if max_age is None else str(max_age).encode())

    def page(self, request, template: str, status: int = 200, **context) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        s = current(request)
        context.setdefault("session", s)
        context.setdefault("csrf", s.csrf if s else "")
        context.setdefault("title", "bankgate")
        context.setdefault("notices", s.notices[:] if s else [])
        if s is not None:
            s.notices.clear()  # each notice is shown once
        return self.templates.get_template(template).render(**context).encode("utf-8")

    @staticmethod
    def notify(request, text: str) -> None:
        """Say ``text`` once, on the next page the request's session opens (what
        an action did, shown on the page it redirects to)."""
        s = current(request)
        if s is not None:
            s.notices.append(text)

    # -- the accounts behind the sessions ------------------------------------------------

    def refresh(self) -> defer.Deferred:
        """Forget expired sessions and throttle entries; end the sessions of accounts
        disabled, removed or changed since they began (a database read on the pool)."""
        self.sessions.expire()
        if not len(self.sessions):
            return defer.succeed(0)
        d = self.run_blocking(self.accounts.snapshot)
        d.addCallback(self.sessions.accounts_changed, self.wall)

        def ended(n):
            if n:
                log.info("console: {n} session(s) ended: their account changed", n=n)
            return n

        d.addCallback(ended)
        return d


class _Guard(resource.Resource):
    """A mount point: the console's :meth:`Console.admit` before ``inner`` sees the
    request (once, on the way down the tree)."""

    def __init__(self, console: Console, inner: resource.Resource, role: str):
        super().__init__()
        self.console, self.inner, self.role = console, inner, role
        self.isLeaf = inner.isLeaf

    def getChildWithDefault(self, name, request):
        refusal = self.console.admit(request, self.role)
        return refusal if refusal is not None else self.inner.getChildWithDefault(name, request)

    def render(self, request):
        refusal = self.console.admit(request, self.role)
        return (refusal if refusal is not None else self.inner).render(request)


class Refusal(resource.Resource):
    """A refused request: the status and a short page saying why."""

    isLeaf = True

    def __init__(self, status: int, title: str, message: str, console: Console):
        super().__init__()
        self.status, self.title, self.message, self.console = status, title, message, console

    def render(self, request):
        return self.console.page(request, "refused.html", self.status, title=self.title,
                                 message=self.message)


class _Redirect(resource.Resource):
    isLeaf = True

    def __init__(self, to: str):
        super().__init__()
        self.to = to

    def render(self, request):
        request.setResponseCode(303)
        request.setHeader(b"location", self.to.encode("utf-8"))
        return b""


class _Static(resource.Resource):
    """The console's stylesheet and scripts, read once at start (small files shipped
    with the package): no file system access per request, no folder listings."""

    TYPES = {".css": b"text/css; charset=utf-8", ".js": b"text/javascript; charset=utf-8",
             ".svg": b"image/svg+xml", ".png": b"image/png"}

    def __init__(self, folder: Path):
        super().__init__()
        self.files = {p.name.encode("utf-8"): (p.read_bytes(), self.TYPES[p.suffix])
                      for p in sorted(folder.iterdir())
                      if p.is_file() and p.suffix in self.TYPES}

    def getChild(self, name, request):
        if name not in self.files or request.postpath:
            return pages.notFound()
        return _Bytes(*self.files[name])


class _Bytes(resource.Resource):
    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes):
        super().__init__()
        self.body, self.content_type = body, content_type

    def render_GET(self, request):
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"cache-control", b"max-age=3600")
        return self.body


# -- pages --------------------------------------------------------------------------


class LoginPage(resource.Resource):
    """``/login``: the form (GET) and the sign-in (POST), throttled and audited."""

    isLeaf = True

    def __init__(self, console: Console):
        super().__init__()
        self.console = console

    def _form(self, request, status: int = 200, *, name: str = "", errors=None,
              message: str = "") -> bytes:
        # the form's token is the browser's: a second form (another tab, a redirect
        # to sign in for /favicon.ico) must not make the first one out of date
        token = (request.getCookie(LOGIN_COOKIE) or b"").decode("ascii", "replace")
        if not LOGIN_TOKEN.fullmatch(token):
            token = secrets.token_urlsafe(32)
        self.console.set_cookie(request, LOGIN_COOKIE, token, path=b"/login")
        return self.console.page(
            request, "login.html", status, title="Sign in", login_csrf=token, name=name,
            errors=errors or {}, message=message,
            next=safe_next(_arg(request, b"next")))

    def render_GET(self, request):
        if self.console.session_of(request) is not None:
            return _Redirect(safe_next(_arg(request, b"next"))).render(request)
        return self._form(request)

    def render_POST(self, request):
        c = self.console
        cookie = (request.getCookie(LOGIN_COOKIE) or b"").decode("ascii", "replace")
        sent = _arg(request, CSRF_FIELD)
        if not cookie or not sent or not hmac.compare_digest(cookie.encode(), sent.encode()):
            return self._form(request, 403, message="The sign-in form was out of date"
                              " (or cookies are off): please try again.")
        name, password = _arg(request, b"name").strip(), _arg(request, b"password")
        errors = {}
        if not name:
            errors["name"] = "Enter your user name."
        if not password:
            errors["password"] = "Enter your password."
        if errors:
            return self._form(request, 400, name=name, errors=errors)
        address = client_address(request)
        keys = c.throttle.keys(name, address)
        wait = c.throttle.wait(keys)
        if wait > 0:
            request.setHeader(b"retry-after", str(int(wait + 0.999)).encode())
            return self._form(request, 429, name=name, message=(
                f"Too many failed sign-ins for this user or from this address: wait"
                f" {wait:.0f} s before trying again."))
        c.throttle.begin(keys)
        d = c.run_blocking(c.accounts.sign_in, name, password, address)
        del password
        finished = []
        request.notifyFinish().addBoth(finished.append)

        def answered(account):
            c.throttle.end(keys, account is not None)
            if account is None:
                for k in keys:
                    if c.throttle.failures(k) == c.throttle.free:
                        log.warn("console: {n} failed sign-ins for {what} {who}: further"
                                 " attempts are slowed down", n=c.throttle.free, what=k[0],
                                 who=k[1] if k[0] == "address" else name)
                return self._form(request, 401, name=name,
                                  message="Wrong user name or password (or the account is"
                                          " disabled).")
            s = c.sessions.create(account)
            c.set_cookie(request, SESSION_COOKIE, s.id)
            request.setResponseCode(303)
            request.setHeader(b"location", safe_next(_arg(request, b"next")).encode("utf-8"))
            log.info("console: {user} signed in from {address}", user=account.name,
                     address=address)
            return b""

        def failed(f):
            c.throttle.end(keys, None)
            log.failure("console: sign-in could not be checked", f)
            return self._form(request, 503, name=name, message=(
                "The database does not answer, so the sign-in cannot be checked: try again"
                " in a moment."))

        def write(body):
            if not finished:
                request.write(body)
                request.finish()

        d.addCallbacks(answered, failed).addCallback(write)
        return NOT_DONE_YET


class LogoutPage(resource.Resource):
    """``/logout``: a button (GET) and the sign-out (POST, with the CSRF token)."""

    isLeaf = True

    def __init__(self, console: Console):
        super().__init__()
        self.console = console

    def render_GET(self, request):
        return self.console.page(request, "logout.html", title="Sign out")

    def render_POST(self, request):
        s = current(request)
        self.console.sessions.drop(s.id)
        self.console.set_cookie(request, SESSION_COOKIE, "", max_age=0)
        log.info("console: {user} signed out", user=s.user)
        request.setResponseCode(303)
        request.setHeader(b"location", b"/login")
        return b""


# -- the site and the service ------------------------------------------------------


class ConsoleRequest(Request):
    """A request whose body may be at most its site's ``max_body`` bytes.  A larger one
    is refused with 413 and the connection closed as soon as that is known -- at once
    from its ``Content-Length``, or when a chunked body's chunks pass the limit --
    without reading it whole, and no page sees the request."""

    too_large = False

    def gotLength(self, length):
        self.body_limit, self.body_read = self.channel.site.max_body, 0
        if length is not None and length > self.body_limit:
            self.requestHeaders.removeHeader(b"expect")  # no "100 Continue" after the 413
            super().gotLength(0)
            self._refuse()
            return
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self.too_large:
            return
        self.body_read += len(data)
        if self.body_read > self.body_limit:
            self._refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command, path, version):
        if not self.too_large:  # else answered already, and the connection is closing
            super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        self.too_large = True
        body = f"Request body too large: at most {self.body_limit} bytes.\n".encode()
        head = [b"HTTP/1.1 413 Content Too Large", b"content-type: text/plain; charset=utf-8",
                b"content-length: %d" % len(body), b"connection: close",
                *(k + b": " + v for k, v in SECURITY_HEADERS.items())]
        self.channel.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.channel.loseConnection()
        log.warn("console: a request body over {limit} bytes from {address} refused (413)",
                 limit=self.body_limit, address=client_address(self))


class ConsoleSite(Site):
    """A ``Site`` adding the security headers to every response; no tracebacks shown;
    request bodies of at most ``max_body`` bytes (:class:`ConsoleRequest`)."""

    displayTracebacks = False
    noisy = False
    requestFactory = ConsoleRequest

    def __init__(self, root: resource.Resource, *, max_body: int = CONSOLE_MAX_BODY, **kw):
        super().__init__(root, **kw)
        self.console = root if isinstance(root, Console) else None
        self.max_body = max_body

    def mount(self, path: str, page: resource.Resource, **kw) -> None:
        self.console.mount(path, page, **kw)

    def getResourceFor(self, request):
        for k, v in SECURITY_HEADERS.items():
            request.setHeader(k, v)
        return super().getResourceFor(request)

    def log(self, request):  # the audit trail records actions; no per-request log lines
        pass


def console_site(parts, cfg, reactor, clock) -> ConsoleSite:
    """The console's site for a gateway built from ``cfg`` (``parts``: its
    :class:`~bankgate.app.wiring.Parts`): accounts over the store, sessions and the
    throttle on ``clock``, password checks on the store's pool; ``reactor`` times the
    HTTP connections (never the global one)."""
    def wall(seconds: float) -> datetime:
        return datetime.fromtimestamp(seconds, cfg.tz).replace(tzinfo=None)

    c = cfg.console
    root = Console(auth.Accounts(parts.store, parts.now), clock,
                   run_blocking=parts.store.call, wall=wall, banks=cfg.banks,
                   session_idle=c.session_idle, session_lifetime=c.session_lifetime)
    return ConsoleSite(root, reactor=reactor, max_body=c.max_body)


class ConsoleService(service.MultiService):
    """The console in the gateway's service tree: the site on ``[console] listen``
    (and ``/healthz`` + ``/metrics`` on ``metrics_listen`` when given), and the
    periodic session check.  Built before the start, so that an ``ssl:`` endpoint's
    missing certificate fails the start with its name."""

    def __init__(self, site: ConsoleSite, listen: str, reactor, clock,
                 metrics_listen: str | None = None):
        super().__init__()
        self.site, self.clock, self.listen = site, clock, listen
        self.setName("console")
        svc = strports.service(listen, site, reactor=reactor)
        svc.setName(f"console@{listen}")
        svc.setServiceParent(self)
        self.metrics_site: Site | None = None
        if metrics_listen:
            root = resource.Resource()
            for path, page in site.console.unmount_public().items():
                root.putChild(path.encode("utf-8"), page)
            self.metrics_site = ConsoleSite(root, reactor=reactor)
            svc = strports.service(metrics_listen, self.metrics_site, reactor=reactor)
            svc.setName(f"console-metrics@{metrics_listen}")
            svc.setServiceParent(self)
        self.loop = task.LoopingCall(self._refresh)
        self.loop.clock = clock

    def _refresh(self):
        d = self.site.console.refresh()
        d.addErrback(lambda f: log.failure("console: cannot check the accounts", f))

    def startService(self):
        super().startService()
        self.loop.start(REFRESH, now=False)

    def stopService(self):
        if self.loop.running:
            self.loop.stop()
        return super().stopService()


def address(listen: str) -> str:
    """The URL an operator opens for an endpoint string (``tcp:9180:interface=
    127.0.0.1`` -> ``http://127.0.0.1:9180/``); ``ssl:`` gives ``https``."""
    kind, _, rest = listen.partition(":")
    fields = [f.replace("\\:", ":") for f in re.split(r"(?<!\\):", rest)]
    port, host = "", "localhost"
    for f in fields:
        key, eq, value = f.partition("=")
        if not eq and not port:
            port = key
        elif key == "port":
            port = value
        elif key == "interface":
            host = value or host
    if host in ("0.0.0.0", "::", ""):
        host = "localhost"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if kind == "ssl" else "http"
    return f"{scheme}://{host}:{port}/"


def console_service(gw) -> ConsoleService:
    """The console of a :class:`~bankgate.app.service.GatewayService`: the site with
    the monitoring endpoints (public) and the live figures mounted, ready to be
    started once the database is."""
    from bankgate.app.console.health import health_resource
    from bankgate.app.console.live import live_resource
    from bankgate.app.console.metrics import metrics_resource

    c = gw.cfg.console
    site = console_site(gw.parts, gw.cfg, gw.reactor, gw.reactor)
    site.mount("healthz", health_resource(gw), public=True)
    site.mount("metrics", metrics_resource(gw), public=True)
    site.mount("api/live", live_resource(gw), role="viewer")
    from bankgate.app.console import helpdesk  # W3: the help desk pages, for viewers

    helpdesk.mount(site.console, gw.parts.store, lambda: gw.parts.now().date())
    from bankgate.app.console import figures  # W3: the day's figures from the database

    day = figures.mount(site.console, gw.parts.store, lambda: gw.parts.now().date(),
                        [b.name for b in gw.cfg.banks], gw.parts.invoice_settings,
                        clock=gw.reactor)
    from bankgate.app.console import reports, workorders  # W5: reports and work orders
    from bankgate.app.report_catalogue import Catalogue  # standard, supply and custom
    from bankgate.domain.supply import WorkOrders

    reports.mount(site.console, gw.parts.store, Catalogue.for_config(gw.cfg, gw.parts.now))
    workorders.mount(site.console, WorkOrders(gw.parts.store, gw.cfg.supply, gw.parts.now))
    from bankgate.app.console import alerts  # the alert service's open alerts and episodes

    alerts.mount(site.console, getattr(gw, "alerts", None))
    from bankgate.app.console import admin, payment_actions, recon_actions  # back office

    payment_actions.mount(site.console, gw)  # counter payment, reversal, refund
    recon_actions.mount(site.console, gw)  # exceptions, invoices, card debits
    admin.mount(site.console, gw)  # users, the audit trail
    from bankgate.app.console.live import live_for

    site.console.overview.live = live_for(gw).snapshot  # the overview page, rendered first
    site.console.overview.figures = day.fetch
    return ConsoleService(site, c.listen, gw.reactor, gw.reactor, metrics_listen=c.metrics_listen)


def first_start(gw) -> defer.Deferred:
    """On the store's pool: the first administrator when the console has no user at
    all; logs its password once (and where the file is).  A Deferred of ``None``."""
    accounts = gw.console.site.console.accounts
    d = gw.store.call(accounts.first_admin, gw.cfg.data_dir)

    def created(password):
        if password is not None:
            where = Path(gw.cfg.data_dir) / auth.ADMIN_FILE
            log.warn("console: first start: user {user!r} created with password {password}"
                     " (also in {where}, mode 0600; change it: bankgate user passwd {user})",
                     user=auth.FIRST_ADMIN, password=password, where=str(where))

    return d.addCallback(created)
