"""Console accounts and safety: hashes, roles, accounts and their audit, the first
administrator, sessions and the sign-in throttle on a Clock, the ``[console]`` keys,
and ``bankgate user``."""

from __future__ import annotations

import io
import json
import os
import stat
import tomllib
from datetime import datetime, timedelta

import pytest
from twisted.internet.task import Clock

from bankgate.app.config import ConfigError, default_config, parse_config
from bankgate.app.console import auth
from bankgate.store.db import Store

NOW = datetime(2026, 11, 27, 9, 30)


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'gw.db'}")
    s.create_gateway_tables()
    yield s
    s.stop()


@pytest.fixture
def accounts(store):
    clock = {"now": NOW}
    a = auth.Accounts(store, lambda: clock["now"])
    a.clock = clock
    return a


def audit_rows(store) -> list[dict]:
    rows = store.run_sync(lambda tx: tx.audit_list(100))
    return list(reversed(rows))


# -- hashes and roles -----------------------------------------------------------------


def test_a_hash_round_trips_and_refuses_a_wrong_password():
    h = auth.hash_password("correct horse battery")
    scheme, n, r, p, salt, digest = h.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert "correct horse" not in h
    assert auth.verify_password("correct horse battery", h)
    assert not auth.verify_password("correct horse batterY", h)
    assert not auth.verify_password("", h)
    # a new salt each time: the same password never gives the same hash
    assert auth.hash_password("correct horse battery") != h


@pytest.mark.parametrize("stored", ["", "plain", "md5$1$2$3$YQ==$YQ==",
                                    "scrypt$16384$8$1$not base64$YQ==",
                                    "scrypt$2$8$1$YQ==$YQ==", "scrypt$16384$8$1$YQ=="])
def test_a_malformed_hash_never_matches(stored):
    assert not auth.verify_password("anything at all", stored)


def test_roles_are_ordered():
    assert auth.allows("admin", "operator") and auth.allows("operator", "operator")
    assert auth.allows("operator", "viewer")
    assert not auth.allows("viewer", "operator") and not auth.allows("operator", "admin")
    assert not auth.allows("root", "viewer") and not auth.allows("admin", "root")


# -- accounts -------------------------------------------------------------------------


def test_add_passwd_disable_each_audited_without_the_password(accounts, store):
    accounts.add("zhao", "operator", "first password", actor="li", reason="new hire")
    assert accounts.sign_in("zhao", "first password", "10.0.0.1").role == "operator"
    accounts.passwd("zhao", "second password", actor="li")
    assert accounts.sign_in("zhao", "first password", "10.0.0.1") is None
    assert accounts.sign_in("zhao", "second password", "10.0.0.1") is not None
    accounts.set_disabled("zhao", True, actor="li", reason="left")
    assert accounts.sign_in("zhao", "second password", "10.0.0.1") is None
    accounts.set_disabled("zhao", False, actor="li")
    accounts.set_role("zhao", "viewer", actor="li", reason="read only now")
    assert accounts.sign_in("zhao", "second password", "10.0.0.1").role == "viewer"
    rows = audit_rows(store)
    assert [r["action"] for r in rows] == [
        "user add", "console sign-in", "user passwd", "console sign-in refused",
        "console sign-in", "user disable", "console sign-in refused", "user enable",
        "user role", "console sign-in"]
    add, disable, role = rows[0], rows[5], rows[8]
    assert (add["actor"], add["subject"]) == ("li", "zhao")
    assert json.loads(add["detail"]) == {"after": {"role": "operator"}, "reason": "new hire"}
    assert json.loads(disable["detail"]) == {"before": {"state": "enabled"},
                                             "after": {"state": "disabled"}, "reason": "left"}
    assert json.loads(role["detail"])["before"] == {"role": "operator"}
    assert json.loads(rows[6]["detail"])["reason"] == "disabled"
    text = json.dumps([dict(r, at=str(r["at"])) for r in rows])
    assert "first password" not in text and "second password" not in text
    stored = store.run_sync(lambda tx: tx.conn.exec_driver_sql(
        "select password from bg_console_user").scalar())
    assert stored.startswith("scrypt$") and "second" not in stored


def test_a_refused_sign_in_never_records_an_unknown_name_as_typed(accounts, store):
    accounts.add("zhao", "viewer", "first password", actor="li")
    assert accounts.sign_in("my secret password", "x" * 12, "10.0.0.9") is None
    assert accounts.sign_in("nobody", "x" * 12, "10.0.0.9") is None
    rows = audit_rows(store)[1:]
    assert [(r["actor"], r["subject"]) for r in rows] == [("(unknown)", "(unknown)")] * 2
    assert all("secret" not in (r["detail"] or "") for r in rows)


@pytest.mark.parametrize("call, field", [
    (lambda a: a.add("zhao", "viewer", "short", actor="li"), "password"),
    (lambda a: a.add("zhao", "root", "long enough pw", actor="li"), "role"),
    (lambda a: a.add("<b>", "viewer", "long enough pw", actor="li"), "name"),
    (lambda a: a.add("zhao", "viewer", "ZHAO", actor="li"), "password"),
    (lambda a: a.passwd("ghost", "long enough pw", actor="li"), "name"),
    (lambda a: a.set_disabled("ghost", True, actor="li"), "name"),
])
def test_refused_account_changes_name_the_field_and_change_nothing(accounts, store, call,
                                                                   field):
    with pytest.raises(auth.AccountError) as e:
        call(accounts)
    assert e.value.field == field
    assert accounts.list() == [] and audit_rows(store) == []


def test_a_name_is_added_once(accounts):
    accounts.add("zhao", "viewer", "long enough pw", actor="li")
    with pytest.raises(auth.AccountError, match="exists already"):
        accounts.add("zhao", "admin", "another long pw", actor="li")
    assert [(u["name"], u["role"]) for u in accounts.list()] == [("zhao", "viewer")]


def test_the_first_admin_is_created_once_with_a_private_file(accounts, tmp_path):
    data = tmp_path / "var"
    password = accounts.first_admin(str(data))
    path = data / auth.ADMIN_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert f"password: {password}\n" in path.read_text()
    assert len(password) >= 20
    assert accounts.sign_in("admin", password, "127.0.0.1").role == "admin"
    before = path.read_text()
    assert accounts.first_admin(str(data)) is None  # users exist: never again
    assert path.read_text() == before
    path.unlink()
    assert accounts.first_admin(str(data)) is None and not path.exists()


# -- sessions and the throttle ----------------------------------------------------------


def _account(name="zhao", role="operator", changed=NOW - timedelta(days=1)):
    return auth.Account(name, role, changed, False)


def test_a_session_ends_after_its_idle_time_and_its_lifetime():
    clock = Clock()
    sessions = auth.Sessions(clock, idle=600, lifetime=3600)
    s = sessions.create(_account())
    assert len(s.id) >= 43 and len(s.csrf) >= 43 and s.id != s.csrf
    clock.advance(599)
    assert sessions.get(s.id) is s  # seen: the idle time starts again
    clock.advance(599)
    assert sessions.get(s.id) is s
    clock.advance(601)
    assert sessions.get(s.id) is None and len(sessions) == 0
    s = sessions.create(_account())
    for _ in range(7):
        clock.advance(500)
        assert sessions.get(s.id) is s  # 3500 s, each step within the idle time
    clock.advance(500)
    assert sessions.get(s.id) is None  # 4000 s: past the lifetime of 3600
    assert sessions.get("guess") is None and sessions.get(None) is None


def test_a_changed_or_disabled_account_ends_its_sessions():
    clock = Clock()
    clock.advance(NOW.timestamp())
    sessions = auth.Sessions(clock)
    a, b, c = (sessions.create(_account(n)) for n in ("a", "b", "c"))
    wall = datetime.fromtimestamp
    later = NOW + timedelta(minutes=5)
    n = sessions.accounts_changed({
        "a": _account("a"),  # unchanged
        "b": auth.Account("b", "operator", later, False),  # password changed since
        # c: removed
    }, wall)
    assert n == 2 and sessions.get(a.id) is a and sessions.get(b.id) is None
    assert sessions.accounts_changed({"a": auth.Account("a", "operator", NOW, True)}, wall) == 1


def test_five_failures_then_each_attempt_waits_longer():
    clock = Clock()
    t = auth.LoginThrottle(clock)
    keys = t.keys("Zhao", "10.0.0.1")
    for _ in range(5):
        assert t.wait(keys) == 0
        t.begin(keys)
        t.end(keys, False)
    assert t.wait(keys) == 2.0  # the sixth attempt must wait
    clock.advance(1.5)
    assert t.wait(keys) == 0.5
    clock.advance(0.5)
    assert t.wait(keys) == 0
    t.begin(keys)
    t.end(keys, False)
    assert t.wait(keys) == 4.0
    # the user name counts whatever its case, from any address
    assert t.wait(t.keys("zhao", "10.9.9.9")) == 4.0
    # the address counts for any user name
    assert t.wait(t.keys("li", "10.0.0.1")) == 4.0
    clock.advance(4)
    t.begin(keys)
    t.end(keys, True)  # a success clears the user, not the address
    assert t.wait(t.keys("zhao", "10.9.9.9")) == 0
    assert t.failures(("address", "10.0.0.1")) == 6


def test_the_wait_has_a_ceiling_and_is_forgotten_after_an_hour():
    clock = Clock()
    t = auth.LoginThrottle(clock)
    keys = t.keys("zhao", "10.0.0.1")
    for _ in range(40):
        t.begin(keys)
        t.end(keys, False)
    assert t.wait(keys) == auth.MAX_WAIT
    clock.advance(auth.FORGET_AFTER + 1)
    assert t.wait(keys) == 0 and t.failures(keys[0]) == 0


def test_parallel_attempts_count_before_they_are_answered():
    t = auth.LoginThrottle(Clock())
    keys = t.keys("zhao", "10.0.0.1")
    for _ in range(5):
        t.begin(keys)
    assert t.wait(keys) > 0
    for _ in range(5):
        t.end(keys, None)  # not decided (the database did not answer): no failure
    assert t.wait(keys) == 0 and t.failures(keys[0]) == 0


# -- [console] ------------------------------------------------------------------------


def _parse(text: str):
    return parse_config(tomllib.loads(text), "gw.toml")


def test_console_keys():
    assert not _parse("").console.enabled  # no table: no console
    c = _parse("[console]\n").console
    assert c.enabled and c.listen == "tcp:9180:interface=127.0.0.1" and c.metrics_listen is None
    c = _parse('[console]\nlisten = "ssl:9443:privateKey=k.pem:certKey=c.pem"\n'
               'metrics_listen = "tcp:9181"\nsession_idle = 600\n').console
    assert c.listen.startswith("ssl:") and c.metrics_listen == "tcp:9181"
    assert c.session_idle == 600
    assert not _parse("[console]\nenabled = false\n").console.enabled
    demo = default_config().console
    assert demo.enabled and demo.listen == "tcp:9180:interface=127.0.0.1"


@pytest.mark.parametrize("text, key", [
    ('listen = "9180"', "console.listen"),
    ("listen = 9180", "console.listen"),
    ('metrics_listen = "http://x"', "console.metrics_listen"),
    ('listen = "tcp:9180"\nmetrics_listen = "tcp:9180"', "console.metrics_listen"),
    ("enabled = 1", "console.enabled"),
    ("session_idle = 5", "console.session_idle"),
    ("session_idle = 7200\nsession_lifetime = 3600", "console.session_lifetime"),
    ("port = 9180", "console.port"),
])
def test_console_key_errors_name_the_key(text, key):
    with pytest.raises(ConfigError) as e:
        _parse("[console]\n" + text + "\n")
    assert e.value.key == key and e.value.source == "gw.toml"


# -- bankgate user ----------------------------------------------------------------------


def test_the_user_commands(tmp_path, monkeypatch, capsys):
    from bankgate.app import cli

    conf = tmp_path / "gw.toml"
    conf.write_text(f'[gateway]\ndata_dir = "{tmp_path}"\n[n8]\ncreate = true\n')

    def run(*argv, stdin=""):
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        return cli.main(["-c", str(conf), "user", *argv])

    assert run("add", "zhao", "--role", "operator", "--password-stdin", "--actor", "li",
               stdin="first password\n") == 0
    assert run("add", "zhao", "--role", "viewer", "--password-stdin",
               stdin="first password\n") == 1
    assert "bankgate user add: name: a user named 'zhao' exists already" in \
        capsys.readouterr().err
    assert run("passwd", "zhao", "--password-stdin", stdin="short\n") == 1
    assert "at least 10 characters" in capsys.readouterr().err
    # no terminal and no --password-stdin: refused, never a hang
    assert run("passwd", "zhao", stdin="second password\n") == 1
    assert "--password-stdin" in capsys.readouterr().err
    assert run("passwd", "zhao", "--password-stdin", "--actor", "li",
               stdin="second password\n") == 0
    assert run("disable", "zhao", "--reason", "left", "--actor", "li") == 0
    assert run("list") == 0
    out = capsys.readouterr().out
    assert "zhao                 operator  disabled" in out
    store = Store(f"sqlite:///{tmp_path / 'bankgate.db'}")
    accounts = auth.Accounts(store, datetime.now)
    assert accounts.sign_in("zhao", "second password", "127.0.0.1") is None  # disabled
    assert run("enable", "zhao", "--actor", "li") == 0
    assert accounts.sign_in("zhao", "second password", "127.0.0.1").role == "operator"
    actions = [(r["actor"], r["action"]) for r in audit_rows(store)]
    assert actions[:4] == [("li", "user add"), ("li", "user passwd"), ("li", "user disable"),
                           ("zhao", "console sign-in refused")]
    store.stop()
