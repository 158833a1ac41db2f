"""A simulated bank host for withholding: the bank's side of ref-delim §6-§7.

- :class:`DebitHost` answers ``560`` debits and ``561`` reversals over TCP
  (8-digit length prefix, as the codec's framing says).  It keeps the
  accounts' debits in memory: a ``560`` repeating a serial gets ``104`` with
  the original ``bank_serial``; a ``561`` gets ``000`` (reversed), ``008``
  (already reversed) or ``006`` (never debited).  ``refuse`` maps account
  numbers to ``101``/``102``/``103``.

  How it behaves is set per request (``script``, consumed first) or for all
  (``mode``), so tests and demos can make it misbehave:

  ========== ==============================================================
  normal     answer at once
  slow       do it, answer after ``delay`` seconds
  silent     do it, never answer (the worst case: the money is gone)
  ignore     neither do it nor answer
  drop       close the connection without doing anything
  drop-after do it, then close without answering
  duplicate  do it, answer twice
  busy       answer ``021`` without doing anything
  garbage    do it, answer bytes that are no answer
  ========== ==============================================================

- :func:`answer_pk` / :func:`answer_pk_file` write the ``.PKJG`` result for
  a ``.PK`` file, with failure reasons chosen by account or customer number
  (``fail``) or at random (``fail_rate``, seeded).

Everything runs on the clock given; the module never touches the global
reactor.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

from twisted.internet import protocol

from bankgate.wire.framing import FrameReceiver, receiver_options

MODES = ("normal", "slow", "silent", "ignore", "drop", "drop-after", "duplicate", "busy",
         "garbage")


def _codec(codec):
    """The bank's codec: the host speaks whatever format the bank's plugin declares."""
    if codec is None:
        raise TypeError("a simulated debit host needs the bank's codec")
    return codec


class _HostConnection(FrameReceiver):
    def __init__(self, host: DebitHost, **options):
        super().__init__(host.clock, **options)
        self.host = host

    def connectionMade(self) -> None:  # noqa: N802
        super().connectionMade()
        self.host.connections += 1
        self.host.open.add(self)

    def connectionLost(self, reason=None) -> None:  # noqa: N802
        super().connectionLost(reason)
        self.host.open.discard(self)

    def frameReceived(self, frame: bytes) -> None:  # noqa: N802
        self.host.handle(self, frame)


class _HostFactory(protocol.Factory):
    noisy = False

    def __init__(self, host: DebitHost):
        self.host = host

    def buildProtocol(self, addr):  # noqa: N802
        opts = receiver_options(self.host.codec.framing, idle_timeout=self.host.idle_timeout)
        p = _HostConnection(self.host, **opts)
        p.factory = self
        return p


class DebitHost:
    """The bank's debit host (560/561), in memory."""

    def __init__(self, clock, *, codec=None, mode: str = "normal", delay: float = 5.0,
                 refuse: Mapping[str, str] | None = None, close_after_answer: bool = False,
                 serial_prefix: str = "KK", now: Callable[[], datetime] | None = None,
                 idle_timeout: float = 300.0, rng: random.Random | None = None):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: one of {', '.join(MODES)}")
        self.clock = clock
        self.codec = _codec(codec)
        self.mode = mode
        self.delay = delay
        self.script: deque[str] = deque()
        self.refuse = dict(refuse or {})
        self.close_after_answer = close_after_answer
        self.serial_prefix = serial_prefix
        self.now = now or (lambda: datetime.fromtimestamp(clock.seconds()))
        self.idle_timeout = idle_timeout
        self.tag = (rng or random.Random()).randrange(1000)
        self.count = 0
        self.debits: dict[str, dict] = {}  # utility_serial -> debit
        self.received: list[dict] = []  # every request decoded, in order
        self.answers: list[bytes] = []  # every answer written
        self.connections = 0
        self.open: set = set()

    def factory(self) -> protocol.Factory:
        return _HostFactory(self)

    def bank_serial(self) -> str:
        self.count += 1
        return f"{self.serial_prefix}{self.now():%H%M%S}{self.tag:03d}{self.count:08d}"

    # -- behaviour ---------------------------------------------------------------

    def handle(self, conn: _HostConnection, frame: bytes) -> None:
        mode = self.script.popleft() if self.script else self.mode
        try:
            req = self.codec.host_decode(frame)
        except ValueError:
            conn.closeConnection()
            return
        self.received.append(req)
        if mode == "drop":
            conn.closeConnection()
            return
        if mode == "ignore":
            return
        if mode == "busy":
            self._send(conn, self.codec.host_encode(req["txcode"], {"code": "021", "short": True}))
            return
        answer = self.process(req)
        if mode == "silent":
            return
        if mode == "drop-after":
            conn.closeConnection()
            return
        if mode == "garbage":
            self._send(conn, b"\xff\xfe|not an answer")
            return
        if mode == "slow":
            self.clock.callLater(self.delay, self._send, conn, answer)
            return
        self._send(conn, answer)
        if mode == "duplicate":
            self._send(conn, answer)

    def _send(self, conn: _HostConnection, answer: bytes) -> None:
        if conn.closing:
            return
        self.answers.append(answer)
        conn.sendFrame(answer)
        if self.close_after_answer:
            conn.closeConnection()

    def process(self, req: dict) -> bytes:
        """Do what a request asks; the answer's bytes (without the prefix)."""
        enc = self.codec.host_encode
        if req["txcode"] == "560":
            serial = req["utility_serial"]
            old = self.debits.get(serial)
            if old is not None:
                return enc("560", {"code": "104", "utility_serial": serial,
                                   "bank_serial": old["bank_serial"], "amount": old["amount"]})
            code = self.refuse.get(req["account_no"])
            if code is not None:
                return enc("560", {"code": code, "short": True})
            d = {"bank_serial": self.bank_serial(), "amount": req["amount"],
                 "account_no": req["account_no"], "customer_no": req["customer_no"],
                 "bill_ids": req["bill_ids"], "reversed": False}
            self.debits[serial] = d
            return enc("560", {"code": "000", "utility_serial": serial,
                               "bank_serial": d["bank_serial"], "amount": d["amount"]})
        orig = req["orig_utility_serial"]
        d = self.debits.get(orig)
        if d is None:
            code = "006"
        elif d["reversed"]:
            code = "008"
        else:
            d["reversed"] = True
            code = "000"
        return enc("561", {"code": code, "orig_utility_serial": orig})

    def standing(self) -> dict[str, dict]:
        """Debits not reversed: what the customers' accounts lost."""
        return {k: v for k, v in self.debits.items() if not v["reversed"]}


# -- batch result files (.PKJG) ---------------------------------------------------------


def answer_pk(pk_data: bytes, codec=None, *, fail: Mapping[str, int | str] | None = None,
              fail_rate: float = 0.0, seed: int = 0, serial_prefix: str = "PK",
              reasons: tuple[int, ...] = (1, 2, 3)) -> tuple[bytes, Counter]:
    """The bank's ``.PKJG`` for a ``.PK``: every line debited (result 0 with a
    fresh serial) unless ``fail`` names its account or customer number (with
    the result 1-4 to give) or it falls in ``fail_rate`` (a reason drawn from
    ``reasons``, seeded).  Returns the bytes and the count per result."""
    codec = _codec(codec)
    records, trailer = codec.read_pk(pk_data)
    rng = random.Random(seed)
    fail = {k: int(v) for k, v in (fail or {}).items()}
    for v in fail.values():
        if v not in (1, 2, 3, 4):
            raise ValueError(f"result {v}: a failure is 1-4")
    d = trailer["deduct_date"]
    out = []
    counts: Counter = Counter()
    for i, r in enumerate(records, 1):
        result = fail.get(r["account_no"], fail.get(r["customer_no"]))
        if result is None and fail_rate > 0 and rng.random() < fail_rate:
            result = rng.choice(reasons)
        result = result or 0
        counts[result] += 1
        out.append({"bill_id": r["bill_id"], "customer_no": r["customer_no"],
                    "account_no": r["account_no"], "total": r["total"], "result": result,
                    "bank_serial": f"{serial_prefix}{d:%m%d}{seed % 100:02d}{i:08d}"
                    if result == 0 else ""})
    return codec.write_pkjg(out), counts


def answer_pk_file(pk_path: Path, codec=None, *, out_dir: Path | None = None,
                   **kw) -> tuple[Path, Counter]:
    """Write the ``.PKJG`` next to the ``.PK`` (or into ``out_dir``)."""
    from bankgate.canon.files import write_atomic

    codec = _codec(codec)
    pk_path = Path(pk_path)
    data, counts = answer_pk(pk_path.read_bytes(), codec,
                             serial_prefix=kw.pop("serial_prefix", _serial_prefix(pk_path)),
                             **kw)
    out = (out_dir or pk_path.parent) / codec.pkjg_name(pk_path.name)
    return write_atomic(out, data), counts


def _serial_prefix(pk_path: Path) -> str:
    """``PK`` + the file's two-digit sequence: serials of two files of one
    day never collide."""
    stem = pk_path.name.split(".")[0]
    return "PK" + (stem[-2:] if stem[-2:].isdigit() else "00")
