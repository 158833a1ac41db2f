"""The interface a bank codec plugin implements.

A codec is one object per message specification (``ref-fixed``, ...).  The
framing protocol (``bankgate.wire.framing``) cuts the byte stream into frames and
hands each to :meth:`Codec.decode` together with the connection's
:class:`Session`.  ``decode`` answers with one of three *actions*:

- :class:`Close` -- close the connection without answering (the spec's
  "not answered" cases: truncated headers, bad length prefixes, garbage);
- :class:`Reply` -- answer these bytes at once without touching the ledger
  (format errors, MAC errors, not authorised, echo, sign-in);
- :class:`Dispatch` -- pass ``request`` (a canonical message from
  :mod:`bankgate.canon.messages`) to the ledger; when its result arrives the
  engine calls ``encode(result)`` and writes the bytes it returns.

A codec never touches the database and never blocks.  Per-connection state
(an ISO 8583 MAC key after sign-in, say) lives in ``session.state``.

The bank side of every codec (used by the simulator and the tests) is
:meth:`Codec.client_encode` / :meth:`Codec.client_decode`: build a request
frame from plain values and parse a response frame into a dict.

What a codec may offer besides (a statement file, batch files, a debit
client, simulator traits, the keys its banks need) it declares as described
in :mod:`bankgate.codec.capabilities`.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from bankgate.canon.messages import Outcome

# -- actions ---------------------------------------------------------------


@dataclass(frozen=True)
class Close:
    reason: str = ""


@dataclass(frozen=True)
class Reply:
    frame: bytes
    outcome: Outcome = Outcome.OK
    txname: str = ""  # for the transaction log line
    log: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Dispatch:
    request: Any
    encode: Callable[[Any], bytes]
    txname: str = ""
    log: dict = field(default_factory=dict)  # masked fields for the log line


Action = Close | Reply | Dispatch


# -- framing declaration ---------------------------------------------------


@dataclass(frozen=True)
class Framing:
    """How a codec's frames travel.

    ``kind``: ``"ascii4"`` (4-digit length), ``"ascii8"`` (8-digit length),
    ``"ascii6"`` (6-digit length, idle timeout counted from the connection's
    start) or ``"tpdu2"`` (2-byte binary length; the codec handles the TPDU itself).
    """

    kind: str
    max_length: int
    one_per_connection: bool = False  # close after writing the response
    pipelined: bool = False  # answer as each completes, in any order
    idle_timeout: float = 60.0
    keepalive_empty: bool = False  # an empty frame is a keep-alive


# -- bank configuration as the codec sees it -------------------------------


class BankKeys(Mapping[str, bytes]):
    """A bank's configured keys: key name -> key bytes, read-only.

    The names are those the bank's plugin declares
    (:class:`bankgate.codec.capabilities.KeyKind`); a key that is not
    configured is absent.  A codec reads ``keys["mac_key"]``, ``keys.get(...)``
    or, for short, the attribute ``keys.mac_key`` (``None`` when absent).
    The ``repr`` shows names and lengths, never key bytes.
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: Mapping[str, bytes | None] | None = None, /,
                 **named: bytes | None):
        given = {**(keys or {}), **named}
        object.__setattr__(self, "_keys", {k: bytes(v) for k, v in given.items()
                                           if v is not None})

    def __getitem__(self, name: str) -> bytes:
        return self._keys[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __getattr__(self, name: str) -> bytes | None:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._keys.get(name)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("BankKeys is read-only")

    def __hash__(self) -> int:
        return hash(frozenset(self._keys.items()))

    def __reduce__(self):  # copy and pickle through the constructor
        return BankKeys, (dict(self._keys),)

    def __repr__(self) -> str:
        return "BankKeys(" + ", ".join(f"{k}=<{len(v)} bytes>" for k, v in self._keys.items()) + ")"


@dataclass(frozen=True)
class BankProfile:
    """The parts of a bank's configuration a codec needs.

    ``two_phase``: the bank's payments are prepays (pending until confirmed);
    ``confirm_timeout``: seconds a prepay waits for its confirm.  Both are the
    effective values: the bank's table, else the plugin's ``bank_defaults``.
    ``options``: the bank's ``[bank.options]``, with the defaults of the
    plugin's ``option_specs`` filled in.
    """

    name: str
    plugin: str
    bank_code: str
    keys: BankKeys = BankKeys()
    mac: bool = False
    allow: tuple[str, ...] = ()  # CIDR networks; empty means anyone
    latest_only_reversal: bool = False
    idle_timeout: float | None = None
    options: dict = field(default_factory=dict)
    two_phase: bool = False
    confirm_timeout: float = 300.0

    def address_allowed(self, host: str | None) -> bool:
        if not self.allow:
            return True
        if host is None:
            return False
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in net for net in _networks(self.allow))


@functools.lru_cache(maxsize=256)
def _networks(allow: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(n, strict=False) for n in allow)


@dataclass
class Session:
    """One bank connection, as the codec sees it."""

    bank: BankProfile
    peer_host: str | None = None
    now: Callable[[], datetime] = datetime.now  # local (Asia/Shanghai) time
    random_bytes: Callable[[int], bytes] | None = None
    state: dict = field(default_factory=dict)

    @property
    def address_allowed(self) -> bool:
        """Checked once per connection: the peer does not change."""
        allowed = self.state.get("_address_allowed")
        if allowed is None:
            allowed = self.state["_address_allowed"] = self.bank.address_allowed(self.peer_host)
        return allowed

    def today(self) -> date:
        return self.now().date()

    def trade_date_ok(self, d: date) -> bool:
        """The specs' rule: at most one day from the calendar date."""
        return abs(d - self.today()) <= timedelta(days=1)


# -- the codec ---------------------------------------------------------------


class Codec(Protocol):
    name: str
    framing: Framing
    description: str

    def decode(self, frame: bytes, session: Session) -> Action: ...

    def outcome_code(self, outcome: Outcome) -> str:
        """The spec's response code for a canonical outcome (total)."""
        ...

    # bank side, for the simulator and tests
    def client_encode(self, txn: str, values: dict, session: Session) -> bytes: ...

    def client_decode(self, frame: bytes, session: Session) -> dict: ...

    def layouts(self) -> dict:
        """name -> construct layout, for ``bankgate plugins check``."""
        ...
