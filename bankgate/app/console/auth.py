"""Console accounts and safety: roles, password hashes, sessions, the sign-in throttle.

- **Roles** are ordered: ``viewer`` < ``operator`` < ``admin``; a page mounted for a
  role is open to that role and the ones above it.
- **Passwords** are hashed with scrypt (memory-hard, in the standard library;
  n=2**14, r=8, p=1, a 16-byte salt), stored as ``scrypt$n$r$p$salt$hash`` (base64),
  and checked with :func:`hmac.compare_digest`.  Hashing takes tens of milliseconds
  of CPU and 16 MiB: :class:`Accounts` runs on the store's thread pool in the
  service (``store.call``), never on the reactor.
- **Sessions** (:class:`Sessions`) live in the console's memory: a random 32-byte
  id, a CSRF token, an idle timeout and an absolute lifetime on the injected clock.
  A restart signs everyone out, which is the safe side; nothing about a session
  is ever written to the database, so reading a page costs no database call.
- **The throttle** (:class:`LoginThrottle`): after 5 failed sign-ins for a user name
  or from an address, each further attempt must wait 2**k seconds (k = failures
  beyond 4, at most :data:`MAX_WAIT`); an attempt made too early is refused without
  looking at the password.

Every change to an account and every sign-in is audited (``bg_audit``: who, when,
what, before/after, reason).  A password never goes into the audit trail or the log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bankgate.store import audit
from bankgate.store import console as sql

ROLES = ("viewer", "operator", "admin")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024  # scrypt of a megabyte is still cheap, but no one types that
FIRST_ADMIN = "admin"
ADMIN_FILE = "console-admin.txt"

SCRYPT_N, SCRYPT_R, SCRYPT_P, SALT_BYTES = 2 ** 14, 8, 1, 16


def allows(role: str, needed: str) -> bool:
    """Whether ``role`` may open what ``needed`` guards (unknown roles may nothing)."""
    if role not in ROLES or needed not in ROLES:
        return False
    return ROLES.index(role) >= ROLES.index(needed)


# -- password hashes ---------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """The stored form of ``password``: ``scrypt$n$r$p$salt_b64$hash_b64``."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R,
                            p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``; a malformed ``stored`` never matches.
    The parameters are read from ``stored``, so hashes made with other costs keep
    working after a change of the defaults."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        n_, r_, p_ = int(n), int(r), int(p)
        if not (2 ** 10 <= n_ <= 2 ** 20 and 1 <= r_ <= 32 and 1 <= p_ <= 16):
            return False
        want = base64.b64decode(digest, validate=True)
        got = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt, validate=True),
                             n=n_, r=r_, p=p_, dklen=len(want), maxmem=256 * r_ * n_ * p_ + 2 ** 20)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


#: checked against when the user does not exist, so that a wrong name costs as much
#: time as a wrong password (a sign-in's timing does not say which names exist)
_DUMMY = hash_password("no such user", salt=b"\0" * SALT_BYTES)


# -- validation ------------------------------------------------------------------


class AccountError(ValueError):
    """A refused account action: ``field`` names the input at fault (a form shows
    the message next to it; the CLI prints it)."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


def check_name(name: str) -> str:
    if not NAME.fullmatch(name or ""):
        raise AccountError("name", "a user name is 1-64 letters, digits, '.', '_', '@' or '-',"
                                   " starting with a letter or digit")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError("role", f"expected one of {', '.join(ROLES)}, got {role!r}")
    return role


def check_password(password: str, name: str = "") -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError("password", f"a password has at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError("password", f"a password has at most {MAX_PASSWORD} characters")
    if name and password.strip().lower() == name.lower():
        raise AccountError("password", "the password must not be the user name")
    return password


def new_password() -> str:
    """A random password (a first admin's, one the console generates): 20 characters
    of ``token_urlsafe``."""
    return secrets.token_urlsafe(15)


def is_last_admin(users: list[dict], name: str) -> bool:
    """Whether ``name`` is the only enabled admin among ``users`` (rows of
    :meth:`Accounts.list`): disabling or demoting it would leave no one who may
    manage the users from the console."""
    admins = [u["name"] for u in users if u["role"] == "admin" and u["disabled_at"] is None]
    return admins == [name]


# -- accounts --------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    """A user as the console sees it (no hash)."""

    name: str
    role: str
    changed_at: datetime
    disabled: bool


class Accounts:
    """The account actions over a store, each one transaction, each audited.

    Synchronous: the CLI calls them directly, the service on the store's thread pool
    (``store.call(accounts.sign_in, ...)``): each hashes or checks a password first,
    outside the transaction, then reads and writes.  The only enabled admin is never
    disabled nor given another role (:func:`is_last_admin`): someone must be left
    who may manage the users.
    """

    def __init__(self, store, now: Callable[[], datetime]):
        self.store, self.now = store, now

    def _audit(self, tx, actor: str, action: str, name: str, **detail) -> None:
        audit.record(tx, self.now(), actor, action, name,
                     {k: v for k, v in detail.items() if v not in (None, "")})

    def add(self, name: str, role: str, password: str, *, actor: str, reason: str = "") -> None:
        check_name(name)
        check_role(role)
        hashed = hash_password(check_password(password, name))

        def tx_fn(tx):
            if not sql.insert(tx, name, role, hashed, self.now()):
                raise AccountError("name", f"a user named {name!r} exists already")
            self._audit(tx, actor, "user add", name, after={"role": role}, reason=reason)

        self.store.run_sync(tx_fn)

    def _change(self, name: str, actor: str, action: str, reason: str, change) -> None:
        def tx_fn(tx):
            row = sql.user(tx, name)
            if row is None:
                raise AccountError("name", f"no user named {name!r} (bankgate user list)")
            values, before, after = change(row)
            if not values:
                raise AccountError("name", f"{name!r}: nothing to change ({after})")
            takes_admin = (values.get("disabled_at") is not None
                           or values.get("role", "admin") != "admin")
            if takes_admin and is_last_admin(sql.users(tx), name):
                raise AccountError("role" if "role" in values else "name",
                                   f"{name!r} is the only enabled admin: make another user"
                                   " admin first")
            sql.update(tx, name, self.now(), **values)
            self._audit(tx, actor, action, name, before=before, after=after, reason=reason)

        self.store.run_sync(tx_fn)

    def passwd(self, name: str, password: str, *, actor: str, reason: str = "") -> None:
        check_name(name)
        hashed = hash_password(check_password(password, name))
        self._change(name, actor, "user passwd", reason,
                     lambda row: ({"password": hashed}, None, "password changed"))

    def set_disabled(self, name: str, disabled: bool, *, actor: str, reason: str = "") -> None:
        check_name(name)
        now = self.now()

        def change(row):
            was = row["disabled_at"] is not None
            state = {True: "disabled", False: "enabled"}
            if was == disabled:
                return {}, None, f"already {state[disabled]}"
            return ({"disabled_at": now if disabled else None},
                    {"state": state[was]}, {"state": state[disabled]})

        self._change(name, actor, "user disable" if disabled else "user enable", reason, change)

    def set_role(self, name: str, role: str, *, actor: str, reason: str = "") -> None:
        check_name(name)
        check_role(role)

        def change(row):
            if row["role"] == role:
                return {}, None, f"already {role}"
            return {"role": role}, {"role": row["role"]}, {"role": role}

        self._change(name, actor, "user role", reason, change)

    def list(self) -> list[dict]:
        return self.store.run_sync(sql.users, readonly=True)

    def snapshot(self) -> dict[str, Account]:
        """Every account (for the console's session check): name -> :class:`Account`."""
        return {u["name"]: Account(u["name"], u["role"], u["changed_at"],
                                   u["disabled_at"] is not None) for u in self.list()}

    def sign_in(self, name: str, password: str, address: str) -> Account | None:
        """The account when ``name`` / ``password`` are right and it is enabled, else
        ``None``.  Both outcomes are audited; a name that is no user is recorded as
        ``(unknown)``, never as typed (it may be a password typed in the wrong box)."""
        row = self.store.run_sync(sql.user, name, readonly=True) if NAME.fullmatch(name) else None
        ok = verify_password(password, row["password"] if row else _DUMMY) and row is not None
        ok = ok and row["disabled_at"] is None

        def tx_fn(tx):
            if ok:
                sql.signed_in(tx, name, self.now())
                self._audit(tx, name, "console sign-in", name, address=address)
            else:
                why = ("disabled" if row is not None and row["disabled_at"] is not None
                       else "wrong password" if row is not None else "no such user")
                who = name if row is not None else "(unknown)"
                self._audit(tx, who, "console sign-in refused", who, address=address,
                            reason=why)

        self.store.run_sync(tx_fn)
        if not ok:
            return None
        return Account(row["name"], row["role"], row["changed_at"], False)

    def first_admin(self, data_dir: str) -> str | None:
        """On a console's first start (no user at all): create ``admin`` with a random
        password, write it to ``{data_dir}/console-admin.txt`` (mode 0600, created
        new: an existing file is never overwritten) and return it; ``None`` (nothing
        done) once any user exists."""
        if self.store.run_sync(sql.count, readonly=True):
            return None
        password = new_password()
        path = Path(data_dir) / ADMIN_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        self.add(FIRST_ADMIN, "admin", password, actor="bankgate",
                 reason="first start of the console")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o600)  # an older file of another mode keeps no wider mode
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"# the console's first administrator; change the password with\n"
                    f"#   bankgate user passwd {FIRST_ADMIN}\n"
                    f"# and delete this file\n"
                    f"user: {FIRST_ADMIN}\npassword: {password}\n")
        return password


# -- sessions ---------------------------------------------------------------------


@dataclass
class Session:
    id: str
    user: str
    role: str
    csrf: str
    created: float  # clock seconds
    seen: float
    # what an action did, shown once on the next page (the page it redirected to)
    notices: list[str] = field(default_factory=list)


class Sessions:
    """Signed-in sessions in memory, timed by the injected clock.

    A session ends after ``idle`` seconds without a request, after ``lifetime``
    seconds in any case, when its user signs out, or when :meth:`accounts_changed`
    finds its account disabled, gone, or changed (password, role) after it began.
    """

    def __init__(self, clock, *, idle: float = 1800.0, lifetime: float = 12 * 3600.0):
        self.clock, self.idle, self.lifetime = clock, idle, lifetime
        self._by_id: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def create(self, account: Account) -> Session:
        now = self.clock.seconds()
        s = Session(secrets.token_urlsafe(32), account.name, account.role,
                    secrets.token_urlsafe(32), now, now)
        self._by_id[s.id] = s
        return s

    def get(self, sid: str | None) -> Session | None:
        """The live session of ``sid`` (its idle time restarts), or ``None``."""
        s = self._by_id.get(sid or "")
        if s is None:
            return None
        now = self.clock.seconds()
        if now - s.seen > self.idle or now - s.created > self.lifetime:
            del self._by_id[s.id]
            return None
        s.seen = now
        return s

    def drop(self, sid: str) -> None:
        self._by_id.pop(sid, None)

    def expire(self) -> int:
        """Forget the sessions past their time; how many."""
        now = self.clock.seconds()
        old = [k for k, s in self._by_id.items()
               if now - s.seen > self.idle or now - s.created > self.lifetime]
        for k in old:
            del self._by_id[k]
        return len(old)

    def accounts_changed(self, accounts: dict[str, Account], wall: Callable[[], datetime],
                         ) -> int:
        """End the sessions whose account is gone, disabled, or changed since the
        session began (``changed_at`` in wall-clock time, compared with the session's
        start converted by ``wall``); a role change ends the session too, so the new
        role applies from the next sign-in.  How many ended."""
        ended = 0
        for k, s in list(self._by_id.items()):
            a = accounts.get(s.user)
            began = wall(s.created)
            if a is None or a.disabled or a.role != s.role or a.changed_at > began:
                del self._by_id[k]
                ended += 1
        return ended


# -- the sign-in throttle ------------------------------------------------------------

FREE_FAILURES = 5
MAX_WAIT = 900.0  # seconds: an attacker is slowed, an operator is never locked out for long
FORGET_AFTER = 3600.0  # a key without a failure for this long starts again from zero
MAX_KEYS = 10000  # addresses remembered at most (the oldest are forgotten first)


@dataclass
class _Count:
    failures: int = 0
    last: float = 0.0
    pending: int = 0  # attempts being checked now (so parallel guesses count too)


@dataclass
class LoginThrottle:
    """Failed sign-ins per user name and per address, on the injected clock."""

    clock: object
    free: int = FREE_FAILURES
    most: float = MAX_WAIT
    _counts: dict[tuple[str, str], _Count] = field(default_factory=dict)

    @staticmethod
    def keys(name: str, address: str) -> list[tuple[str, str]]:
        return [("user", name.lower()[:64]), ("address", address)]

    def wait(self, keys: list[tuple[str, str]]) -> float:
        """Seconds to wait before an attempt for ``keys`` is looked at (0: go on)."""
        now = self.clock.seconds()
        longest = 0.0
        for k in keys:
            c = self._counts.get(k)
            if c is None:
                continue
            if c.pending == 0 and now - c.last > FORGET_AFTER:
                del self._counts[k]
                continue
            seen = c.failures + c.pending
            if seen >= self.free:
                delay = min(self.most, 2.0 ** (seen - self.free + 1))
                longest = max(longest, c.last + delay - now)
        return max(0.0, longest)

    def begin(self, keys) -> None:
        now = self.clock.seconds()
        for k in keys:
            c = self._counts.setdefault(k, _Count(last=now))
            c.pending += 1
        if len(self._counts) > MAX_KEYS:
            for k, _ in sorted(self._counts.items(), key=lambda kv: kv[1].last)[
                    :len(self._counts) - MAX_KEYS]:
                del self._counts[k]

    def end(self, keys, ok: bool | None) -> None:
        """The attempt :meth:`begin` counted is over: ``ok`` right, ``False`` wrong,
        ``None`` not decided (the database did not answer: no failure counted)."""
        now = self.clock.seconds()
        for k in keys:
            c = self._counts.get(k)
            if c is None:
                continue
            c.pending = max(0, c.pending - 1)
            if ok is None:
                continue
            if ok and k[0] == "user":  # the address keeps its count: one good
                del self._counts[k]     # account must not clear an address's guesses
            elif not ok:
                c.failures += 1
                c.last = now

    def failures(self, key: tuple[str, str]) -> int:
        c = self._counts.get(key)
        return c.failures if c else 0
