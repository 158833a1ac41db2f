"""What the end-to-end tests with real gateway processes share: waiting for a log
line, and a ref-fixed bank's one request on a connection of its own."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from datetime import datetime

from bankgate.codec.base import Session


def wait_log(text: Callable[[], str], tail: Callable[[int], str], pattern: str,
             timeout: float, after: int = 0) -> re.Match:
    """The first match of ``pattern`` in the log (``text()``) after character
    ``after``, polled until ``timeout`` seconds have passed; the log's tail
    (``tail(60)``) in the failure."""
    deadline = time.monotonic() + timeout
    while True:
        found = re.search(pattern, text()[after:])
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no {pattern!r} in the log after {timeout:g} s:\n"
                                 f"{tail(60)}")
        time.sleep(0.05)


def read_exactly(s: socket.socket, n: int) -> bytes:
    """``n`` bytes from ``s``; ``ConnectionError`` when the gateway closes first."""
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed by the gateway after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def ask_fixed(codec, profile, port: int, txn: str, values: dict,
              now: Callable[[], datetime], timeout: float) -> dict:
    """One ref-fixed request (``codec``: the plugin, ``profile``: the bank's) on a new
    connection to ``port``; ``OSError`` when no answer comes."""
    session = Session(bank=profile, now=now)
    frame = codec.client_encode(txn, values, session)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"%04d" % len(frame) + frame)
        n = int(read_exactly(s, 4))
        return codec.client_decode(read_exactly(s, n), session)
