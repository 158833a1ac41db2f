"""Property test of two-phase payments: random prepay / confirm / cancel / reverse /
clock / expiry-sweep / restart sequences (a hypothesis state machine) on SQLite and
PostgreSQL, and with N8 in a database of its own (conftest.LEDGER_PAIRS).  After every
step the money is conserved, every payment moved only along an allowed transition, the
database holds what a plain model of the rules expects, and at the end every journaled
confirm, cancel and reversal sent again answers what it answered first."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
import sqlalchemy as sa
from conftest import BANKS, LEDGER_PAIRS, NOW, FakeClock, close_store, make_store, seed_fixture
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from ledger_helpers import TODAY, bills, check_books, clear, origin, pay, rev

from bankgate.canon import messages as m
from bankgate.canon.messages import Outcome
from bankgate.domain.ledger import Ledger
from bankgate.store import model

BANK = "twophase"
TIMEOUT = timedelta(seconds=BANKS[BANK].confirm_timeout)
DUE = {"100000123": 260000 + 15000 + 260000 + 13000, "100000200": 1000000}
T_SERIALS = [f"T{i}" for i in range(3)]  # prepays
C_SERIALS = [f"C{i}" for i in range(4)]  # confirms and cancels (one journal)
R_SERIALS = [f"R{i}" for i in range(3)]  # reversals
ALLOWED = {
    "PENDING": {"POSTED", "CANCELLED", "EXPIRED", "REVERSED"},  # REVERSED: not confirmed-only
    "POSTED": {"REVERSED", "REFUNDED"},
}
EXAMPLES = {"sqlite": 80, "postgres": 20, **dict.fromkeys(LEDGER_PAIRS, 20)}


@pytest.fixture(scope="module", params=["sqlite", "postgres", *LEDGER_PAIRS])
def world(request, tmp_path_factory):
    store = make_store(request.param, tmp_path_factory.mktemp("twophase-prop"))
    yield request.param, store
    close_store(store)


def reset(store) -> None:
    clear(store)
    seed_fixture(store)
    store.initial_paid = bills(store)


def same(a, b) -> bool:
    """Equal answers, but for the retry mark and the log message."""
    drop = {"retry", "message"}
    return ({k: v for k, v in dataclasses.asdict(a).items() if k not in drop}
            == {k: v for k, v in dataclasses.asdict(b).items() if k not in drop})


@dataclasses.dataclass
class Payment:
    customer: str
    amount: int
    receipt_no: str
    deadline: object
    status: str = "PENDING"  # as the database holds it (an unswept one stays PENDING)


class TwoPhaseMachine(RuleBasedStateMachine):
    STORE = None  # set per backend by the test

    def __init__(self):
        super().__init__()
        self.store = self.STORE
        reset(self.store)
        self.clock = FakeClock(NOW)
        self.ledger = Ledger(self.store, dict(BANKS), now=self.clock)
        self.payments: dict[str, Payment] = {}
        self.journal: dict[str, tuple] = {}  # serial -> (kind, request, first answer)
        self.blocked: set[str] = set()
        self.seen: dict[str, str] = {}  # serial -> status after the previous step

    # -- the model's reading of the rules --------------------------------------------

    def now(self):
        return self.clock.now

    def standing(self, customer: str) -> bool:
        return any(p.customer == customer and p.status in ("PENDING", "POSTED")
                   for p in self.payments.values())

    def due_expiry(self, p: Payment) -> str:
        """A pending payment met past its deadline is undone as expired first."""
        if p.status == "PENDING" and self.now() >= p.deadline:
            p.status = "EXPIRED"
        return p.status

    def repeat(self, serial: str | None, kind: str, req, r) -> bool:
        """A request under a journaled serial: the first answer or a mismatch."""
        if serial is None or serial not in self.journal:
            return False
        k, first_req, first = self.journal[serial]
        if k == kind and first_req.content == req.content:
            assert r.retry and r.outcome is first.outcome and same(r, first), (r, first)
        else:
            assert r.outcome is Outcome.DUPLICATE_MISMATCH and not r.retry, r
        return True

    # -- rules -------------------------------------------------------------------------

    @rule(serial=st.sampled_from(T_SERIALS), customer=st.sampled_from(sorted(DUE)),
          right=st.booleans())
    def prepay(self, serial, customer, right):
        req = pay(serial, customer, DUE[customer] if right else 1, bank=BANK)
        r = self.ledger.pay(req)
        if serial in self.blocked:
            assert r.outcome is Outcome.REVERSED_FIRST
            return
        if self.repeat(serial, "PAY", req, r):
            return
        if self.standing(customer):
            expected = Outcome.NOTHING_DUE
        else:
            expected = Outcome.OK if right else Outcome.AMOUNT_REJECTED
        assert r.outcome is expected and not r.retry, (r, expected)
        self.journal[serial] = ("PAY", req, r)
        if expected is Outcome.OK:
            assert r.expires_at == self.now() + TIMEOUT
            self.payments[serial] = Payment(customer, req.amount, r.receipt_no, r.expires_at)

    @rule(kind=st.sampled_from(["CONFIRM", "CANCEL"]), orig=st.sampled_from(T_SERIALS),
          serial=st.one_of(st.none(), st.sampled_from(C_SERIALS)),
          order=st.sampled_from(["good", "good", "none", "bad"]), salt=st.booleans())
    def settle(self, kind, orig, serial, order, salt):
        p = self.payments.get(orig)
        order_no = {"good": p.receipt_no if p else "", "none": "",
                    "bad": "20991231999999999999"}[order]
        cls = m.ConfirmRequest if kind == "CONFIRM" else m.CancelRequest
        content = m.fingerprint(kind, orig, order_no, salt) if serial else ""
        req = cls(origin(BANK), orig, TODAY, serial=serial, order_no=order_no, content=content)
        r = self.ledger.handle(req)
        assert isinstance(r, m.ConfirmResult if kind == "CONFIRM" else m.CancelResult)
        if self.repeat(serial, kind, req, r):
            return
        assert not r.retry
        if p is None or (order_no and order_no != p.receipt_no):
            expected = Outcome.ORIGINAL_NOT_FOUND
        else:
            status = self.due_expiry(p)
            if status == "EXPIRED":
                expected = Outcome.EXPIRED
            elif kind == "CONFIRM" and status in ("PENDING", "POSTED"):
                expected, p.status = Outcome.OK, "POSTED"
            elif kind == "CANCEL" and status in ("PENDING", "CANCELLED"):
                expected, p.status = Outcome.OK, "CANCELLED"
            else:
                expected = Outcome.STATE_NOT_ALLOWED
            if expected is Outcome.OK:
                assert r.receipt_no == p.receipt_no and r.amount == p.amount
        assert r.outcome is expected, (r, expected, p)
        if serial is not None:
            self.journal[serial] = (kind, req, r)

    @rule(orig=st.sampled_from(T_SERIALS), serial=st.one_of(st.none(), st.sampled_from(R_SERIALS)),
          confirmed_only=st.booleans())
    def reverse(self, orig, serial, confirmed_only):
        p = self.payments.get(orig)
        base = rev(serial, orig, customer=None, amount=p.amount if p else 1, bank=BANK)
        req = dataclasses.replace(base, confirmed_only=confirmed_only,
                                  content=m.fingerprint(base.content, confirmed_only))
        r = self.ledger.reverse(req)
        if self.repeat(serial, "REV", req, r):
            return
        if p is None:
            expected = Outcome.ORIGINAL_NOT_FOUND
            if orig not in self.journal:
                self.blocked.add(orig)  # a prepay with this serial now comes second
        else:
            status = self.due_expiry(p)
            if status == "POSTED" or (status == "PENDING" and not confirmed_only):
                expected, p.status = Outcome.OK, "REVERSED"
            elif confirmed_only:
                expected = Outcome.STATE_NOT_ALLOWED
            else:
                expected = Outcome.ALREADY_REVERSED
        assert r.outcome is expected, (r, expected, p)
        if serial is not None:
            self.journal[serial] = ("REV", req, r)

    @rule(seconds=st.integers(1, 90))
    def advance_clock(self, seconds):
        self.clock.now += timedelta(seconds=seconds)

    @rule(serial=st.sampled_from(T_SERIALS), offset=st.sampled_from([-1, 0]))
    def to_deadline(self, serial, offset):
        """Right onto a deadline, or the second before it: where the rules turn."""
        p = self.payments.get(serial)
        if p is not None and p.deadline + timedelta(seconds=offset) > self.now():
            self.clock.now = p.deadline + timedelta(seconds=offset)

    @rule()
    def sweep(self):
        due = [p for p in self.payments.values()
               if p.status == "PENDING" and self.now() >= p.deadline]
        assert self.ledger.expire_pending() == len(due)
        for p in due:
            p.status = "EXPIRED"

    @rule()
    def restart(self):
        """A new process: nothing but the database carries over."""
        self.ledger = Ledger(self.store, dict(BANKS), now=self.clock)

    @rule(serial=st.sampled_from(C_SERIALS + R_SERIALS))
    def resend(self, serial):
        if serial in self.journal:
            kind, req, first = self.journal[serial]
            r = self.ledger.handle(req)
            assert r.retry and same(r, first), (r, first)

    # -- after every step ----------------------------------------------------------------

    @invariant()
    def money_is_conserved(self):
        check_books(self.store)
        b, a, p = self.store.n8["bill"], model.allocation, model.payment
        with self.store.n8_engine.connect() as n:  # N8's own database, when it has one
            billed, outstanding = n.execute(sa.select(
                sa.func.sum(b.c.amount), sa.func.sum(b.c.amount - b.c.paid_amount))).one()
        with self.store.engine.connect() as c:
            allocated = c.execute(
                sa.select(sa.func.coalesce(sa.func.sum(a.c.principal), 0))
                .join(p, p.c.id == a.c.payment_id)
                .where(p.c.status.in_(("POSTED", "PENDING")))).scalar()
            negative = c.execute(sa.select(sa.func.count()).select_from(model.prepaid)
                                 .where(model.prepaid.c.balance < 0)).scalar()
        before = sum(x for x, _ in self.store.initial_paid.values())
        assert int(outstanding) + int(allocated) + before == int(billed)
        assert negative == 0

    @invariant()
    def statuses_are_the_models_and_moved_only_forward(self):
        p = model.payment
        with self.store.engine.connect() as c:
            db = dict(c.execute(sa.select(p.c.serial, p.c.status).where(p.c.bank == BANK)).all())
        assert db == {s: x.status for s, x in self.payments.items()}
        for serial, now in db.items():
            was = self.seen.get(serial, now)
            assert was == now or now in ALLOWED.get(was, ()), (serial, was, now)
        self.seen = db
        for serial in T_SERIALS:
            got = self.ledger.status(m.StatusRequest(origin(BANK), serial, TODAY)).status
            x = self.payments.get(serial)
            want = "NOT_FOUND" if x is None else (
                "EXPIRED" if x.status == "PENDING" and self.now() >= x.deadline else x.status)
            assert got.value == want, (serial, got, want)

    def teardown(self):
        for kind, req, first in self.journal.values():
            if kind in ("CONFIRM", "CANCEL", "REV"):
                r = self.ledger.handle(req)
                assert r.retry and same(r, first), (r, first)


def test_two_phase_sequences(world):
    backend, store = world
    machine = type("Machine", (TwoPhaseMachine,), {"STORE": store})
    run_state_machine_as_test(machine, settings=settings(
        max_examples=EXAMPLES[backend], stateful_step_count=30, deadline=None,
        suppress_health_check=list(HealthCheck)))
