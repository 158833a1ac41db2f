"""The alert rules and the episode tracker (bankgate.domain.alerts): plain inputs, no
database, no reactor."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bankgate.domain import alerts as a
from bankgate.domain.alerts import (
    ALL_DAY,
    CLEARED,
    CRITICAL,
    RAISED,
    WARNING,
    Alert,
    BusinessHours,
    EpisodeTracker,
    PendingReversals,
    QuietWatch,
    ReconState,
    StatementWatch,
)

NOW = datetime(2026, 11, 27, 10, 0, 0)


# -- business hours ---------------------------------------------------------------------


@pytest.mark.parametrize("text, start, end", [
    ("08:00-20:00", 480, 1200), ("22:00-06:00", 1320, 360), ("00:00-24:00", 0, 1440),
    (" 07:30-23:59 ", 450, 1439)])
def test_business_hours_parse(text, start, end):
    h = BusinessHours.parse(text)
    assert (h.start, h.end) == (start, end)
    assert str(BusinessHours.parse(str(h))) == str(h)


@pytest.mark.parametrize("text", ["8:00-20:00", "08:00", "08:00-24:01", "24:00-08:00",
                                  "08:00-08:00", "00:00-00:00", "ab", 800])
def test_business_hours_refused(text):
    with pytest.raises(ValueError, match="HH:MM|same time"):
        BusinessHours.parse(text)


def test_business_hours_opened():
    day = BusinessHours.parse("08:00-20:00")
    assert day.opened(datetime(2026, 11, 27, 7, 59, 59)) is None
    assert day.opened(datetime(2026, 11, 27, 8, 0)) == datetime(2026, 11, 27, 8, 0)
    assert day.opened(datetime(2026, 11, 27, 19, 59)) == datetime(2026, 11, 27, 8, 0)
    assert day.opened(datetime(2026, 11, 27, 20, 0)) is None
    night = BusinessHours.parse("22:00-06:00")
    assert night.opened(datetime(2026, 11, 27, 23, 0)) == datetime(2026, 11, 27, 22, 0)
    assert night.opened(datetime(2026, 11, 28, 5, 59)) == datetime(2026, 11, 27, 22, 0)
    assert night.opened(datetime(2026, 11, 28, 6, 0)) is None
    assert night.opened(datetime(2026, 11, 28, 12, 0)) is None
    assert ALL_DAY.opened(datetime(2026, 11, 27, 0, 0)) == datetime(2026, 11, 27, 0, 0)
    assert ALL_DAY.opened(datetime(2026, 11, 27, 23, 59, 59)) == datetime(2026, 11, 27, 0, 0)


hours = st.tuples(st.integers(0, 1439), st.integers(1, 1440)).filter(
    lambda p: p[0] != p[1]).map(lambda p: BusinessHours(*p))
moments = st.datetimes(min_value=datetime(2026, 1, 2), max_value=datetime(2026, 12, 30))


@given(hours, moments)
def test_opened_is_the_latest_start_and_inside_means_inside(h, now):
    """Inside the hours: ``opened`` is the latest start at or before ``now`` and the
    hours have not ended since.  Outside: ``None``."""
    minute = now.hour * 60 + now.minute + now.second / 60 + now.microsecond / 6e7
    inside = (h.start <= minute < h.end) if h.start < h.end else (
        minute >= h.start or minute < h.end)
    got = h.opened(now)
    assert (got is not None) == inside
    if got is not None:
        assert got <= now < got + timedelta(days=1)
        assert got.hour * 60 + got.minute == h.start and got.second == 0
        length = (h.end - h.start) % 1440 or 1440
        assert now - got < timedelta(minutes=length)


# -- the rules ------------------------------------------------------------------------------


def test_a_bank_quiet_longer_than_its_window_in_business_hours():
    w = QuietWatch("icbc", 900, BusinessHours.parse("08:00-20:00"))
    started = datetime(2026, 11, 27, 6, 0)
    heard = {"icbc": datetime(2026, 11, 27, 9, 40)}
    [alert] = a.quiet_banks([w], heard, started, NOW)  # 20 minutes quiet
    assert (alert.kind, alert.subject, alert.severity) == (a.BANK_QUIET, "icbc", WARNING)
    assert alert.since == heard["icbc"]
    assert "since 2026-11-27 09:40:00 (its last message)" in alert.message
    assert "900 s" in alert.message and "08:00-20:00" in alert.message
    # 15 minutes exactly is not longer than the window; 14 is within it
    assert a.quiet_banks([w], {"icbc": NOW - timedelta(seconds=900)}, started, NOW) == []
    assert a.quiet_banks([w], {"icbc": NOW - timedelta(minutes=14)}, started, NOW) == []
    # outside business hours no bank is quiet
    assert a.quiet_banks([w], heard, started, datetime(2026, 11, 27, 21, 0)) == []


def test_quiet_is_counted_from_the_opening_or_the_start_when_later():
    w = QuietWatch("icbc", 900, BusinessHours.parse("08:00-20:00"))
    yesterday = {"icbc": datetime(2026, 11, 26, 19, 55)}
    started = datetime(2026, 11, 26, 6, 0)
    assert a.quiet_banks([w], yesterday, started, datetime(2026, 11, 27, 8, 10)) == []
    [alert] = a.quiet_banks([w], yesterday, started, datetime(2026, 11, 27, 8, 16))
    assert alert.since == datetime(2026, 11, 27, 8, 0) and "business hours began" in alert.message
    # never heard of, gateway started at 09:50: not quiet until 10:05
    late = datetime(2026, 11, 27, 9, 50)
    assert a.quiet_banks([w], {}, late, NOW) == []
    [alert] = a.quiet_banks([w], {"icbc": None}, late, NOW + timedelta(minutes=16))
    assert alert.since == late and "the gateway started" in alert.message


def test_recon_states():
    d = date(2026, 11, 26)
    states = [
        ReconState("icbc", d, 3, "FAILED", NOW, 0, "statement ICBC.txt never appeared"),
        ReconState("boc", d, 7, "EXCEPTIONS", NOW, 2, ""),
        ReconState("ccb", d, 2, "EXCEPTIONS", NOW, 0, ""),  # every exception resolved
        ReconState("abc", d, 4, "EXCEPTIONS", NOW, 0, "unexplained difference: (1, 100)"),
        ReconState("cmb", d, 5, "BALANCED", NOW, 0, ""),
    ]
    got = {(x.kind, x.subject): x for x in a.recon_alerts(states)}
    assert set(got) == {(a.RECON_FAILED, "icbc 2026-11-26"),
                        (a.RECON_UNBALANCED, "boc 2026-11-26"),
                        (a.RECON_UNBALANCED, "abc 2026-11-26")}
    failed = got[(a.RECON_FAILED, "icbc 2026-11-26")]
    assert failed.severity == CRITICAL and "run 3" in failed.message
    assert "never appeared" in failed.message
    assert "2 open exception(s)" in got[(a.RECON_UNBALANCED, "boc 2026-11-26")].message
    assert "unexplained" in got[(a.RECON_UNBALANCED, "abc 2026-11-26")].message


def test_the_statement_due_and_missing():
    w = StatementWatch("icbc", time(6, 0), days_back=1)
    # before 06:15 (grace 900 s) the statement due is the one of two days back
    assert a.statement_due(w, datetime(2026, 11, 27, 6, 14), 900) == (
        date(2026, 11, 25), datetime(2026, 11, 26, 6, 0))
    assert a.statement_due(w, datetime(2026, 11, 27, 6, 15), 900) == (
        date(2026, 11, 26), datetime(2026, 11, 27, 6, 0))
    assert a.statement_due(StatementWatch("x", time(6, 0), 0), datetime(2026, 11, 27, 7), 0)[0] \
        == date(2026, 11, 27)
    at = datetime(2026, 11, 27, 7, 0)
    first = {"icbc": date(2026, 11, 1)}
    [alert] = a.statement_alerts([w], at, 900, set(), first)
    assert (alert.kind, alert.subject) == (a.STATEMENT_MISSING, "icbc")
    assert "for 2026-11-26" in alert.message and "2026-11-27 06:00:00" in alert.message
    assert a.statement_alerts([w], at, 900, {("icbc", date(2026, 11, 26))}, first) == []
    # a bank with no transaction yet, or its first one after the date, is not reconciled
    assert a.statement_alerts([w], at, 900, set(), {"icbc": None}) == []
    assert a.statement_alerts([w], at, 900, set(), {"icbc": date(2026, 11, 27)}) == []
    assert a.statement_alerts([w], at, 900, set(), {"icbc": date(2026, 11, 26)}) != []


def test_invoice_stock():
    rows = [{"holder": "icbc", "remaining": 10, "low_water": 50, "state": "LOW",
             "invoice": True, "ranges": 1},
            {"holder": "boc", "remaining": 0, "low_water": 50, "state": "EMPTY",
             "invoice": True, "ranges": 1},
            {"holder": "ccb", "remaining": 500, "low_water": 50, "state": "OK",
             "invoice": True, "ranges": 1},
            {"holder": "abc", "remaining": 0, "low_water": 50, "state": "EMPTY",
             "invoice": False, "ranges": 0}]  # issues no invoices, has no stock
    got = {x.subject: x for x in a.stock_alerts(rows)}
    assert set(got) == {"icbc", "boc"}
    assert got["icbc"].severity == WARNING and "10 number(s) left" in got["icbc"].message
    assert got["boc"].severity == CRITICAL and "no invoice number" in got["boc"].message


def test_reversals_pending_longer_than_allowed():
    old = PendingReversals("ccb", 2, NOW - timedelta(seconds=601))
    young = PendingReversals("boc", 1, NOW - timedelta(seconds=600))
    [alert] = a.reversal_alerts([old, young], 600, NOW)
    assert (alert.kind, alert.subject, alert.severity) == (a.REVERSAL_PENDING, "ccb", CRITICAL)
    assert "2 card-debit reversal(s)" in alert.message and alert.since == old.oldest


def test_database():
    assert a.database_alert(None, NOW) == []
    [alert] = a.database_alert("database: no answer within 10 s", NOW)
    assert (alert.kind, alert.subject, alert.since) == (a.DATABASE_UNREACHABLE, "database", NOW)


def test_every_kind_has_advice_and_a_severity_order():
    assert set(a.ADVICE) == set(a.KINDS)
    assert a.FROM_DATABASE < set(a.KINDS)


# -- episodes --------------------------------------------------------------------------------


def alert(subject="icbc", kind=a.BANK_QUIET, message="quiet", since=None) -> Alert:
    return Alert(kind, subject, WARNING, message, since)


def at(minute: int) -> datetime:
    return NOW + timedelta(minutes=minute)


def test_raised_once_kept_cleared_and_raised_again():
    t = EpisodeTracker()
    [e] = t.update([alert(since=at(-5))], at(0))
    assert (e.state, e.alert.subject, e.at, e.raised_at) == (RAISED, "icbc", at(0), at(0))
    assert t.update([alert(message="still quiet", since=at(-4))], at(1)) == []
    [ep] = t.open_alerts()
    assert ep.alert.message == "still quiet"  # the text follows the condition ...
    assert ep.alert.since == at(-5)  # ... when it began does not
    [e] = t.update([], at(2))
    assert (e.state, e.raised_at, e.at) == (CLEARED, at(0), at(2))
    assert t.open_alerts() == [] and t.update([], at(3)) == []
    [e] = t.update([alert()], at(4))
    assert e.state == RAISED
    assert [(x.raised_at, x.cleared_at) for x in t.episodes()] == [(at(4), None),
                                                                    (at(0), at(2))]


def test_kinds_not_checked_keep_their_open_alerts():
    t = EpisodeTracker()
    recon = alert("icbc 2026-11-26", a.RECON_FAILED)
    t.update([recon, alert()], at(0))
    # the database did not answer: only the kinds that need none are judged
    events = t.update([], at(1), checked={a.BANK_QUIET, a.DATABASE_UNREACHABLE})
    assert [(e.state, e.alert.kind) for e in events] == [(CLEARED, a.BANK_QUIET)]
    assert [e.alert.key for e in t.open_alerts()] == [recon.key]
    assert t.update([recon], at(2)) == []  # back: still open, not raised again
    with pytest.raises(ValueError, match="not checked"):
        t.update([recon], at(3), checked={a.BANK_QUIET})


def test_open_by_kind_names_every_kind_and_the_history_is_bounded():
    t = EpisodeTracker(history=3)
    assert t.open_by_kind() == dict.fromkeys(a.KINDS, 0)
    for i in range(5):
        t.update([alert(f"b{i}")], at(i))
        t.update([], at(i), checked={a.DATABASE_UNREACHABLE})
    assert t.open_by_kind()[a.BANK_QUIET] == 1  # the newest; the others were cleared
    assert [e.alert.subject for e in t.episodes()] == ["b4", "b3", "b2"]


def test_critical_first_then_oldest():
    t = EpisodeTracker()
    t.update([alert("b")], at(0))
    t.update([alert("b"), alert("a"), Alert(a.DATABASE_UNREACHABLE, "database", CRITICAL,
                                            "down")], at(1))
    assert [e.alert.subject for e in t.open_alerts()] == ["database", "b", "a"]


# rounds: each a mapping subject -> None (kind not checked) or whether it holds
rounds = st.lists(st.dictionaries(st.sampled_from(["a", "b", "c"]),
                                  st.one_of(st.none(), st.booleans()), min_size=3, max_size=3),
                  max_size=30)


@given(rounds)
def test_any_sequence_gives_alternating_raise_and_clear(seq):
    """Per alert: events alternate, starting with a raise, never two raises in a row;
    it is open after a round exactly when it held in the last round it was judged;
    it is raised once per run of rounds where it holds."""
    kinds = {"a": a.BANK_QUIET, "b": a.RECON_FAILED, "c": a.STATEMENT_MISSING}
    t = EpisodeTracker()
    events: dict[str, list[str]] = {s: [] for s in kinds}
    last: dict[str, bool] = {s: False for s in kinds}
    raises = dict.fromkeys(kinds, 0)
    for i, r in enumerate(seq):
        checked = {kinds[s] for s, v in r.items() if v is not None}
        holds = [alert(s, kinds[s]) for s, v in r.items() if v]
        for e in t.update(holds, at(i), checked):
            events[e.alert.subject].append(e.state)
        for s, v in r.items():
            if v is not None:
                if v and not last[s]:
                    raises[s] += 1
                last[s] = v
        assert {e.alert.subject for e in t.open_alerts()} == {s for s in kinds if last[s]}
    for s, states in events.items():
        assert states == [RAISED, CLEARED] * (len(states) // 2) + [RAISED] * (len(states) % 2)
        assert states.count(RAISED) == raises[s]
