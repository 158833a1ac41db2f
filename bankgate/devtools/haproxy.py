"""HAProxy in front of gateway nodes, for the end-to-end tests and benchmarks.

:func:`config` writes the configuration ``docs/nodes.rst`` shows: plain TCP
(``mode tcp``: HAProxy never reads a bank's message), one frontend per bank,
every node a server of that bank's backend, each node checked on its
``/healthz`` (the node's ``[console] metrics_listen`` port) every 200 ms --
out of the rotation after two failed checks, back after one good one -- and a
connection a node refuses tried again on another node (``option redispatch``).

:class:`HAProxyProcess` runs Debian's ``haproxy`` in the foreground (``-db``)
as a subprocess: it checks the configuration first (``haproxy -c``), waits
until every frontend accepts a connection (bounded; the only wait is on that
event), reads the servers' states from the admin socket, and stops it again.
Its log goes to a file, whose tail the errors quote.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bankgate.devtools.gateway import free_port

#: where Debian's package puts it (``apt-get install haproxy``)
HAPROXY = "/usr/sbin/haproxy"

#: the health check of every server: every 200 ms, down after 2 failures, up after 1 success
CHECK = "inter 200ms fall 2 rise 1"
BALANCES = ("roundrobin", "leastconn")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_DURATION = re.compile(r"[0-9]+(us|ms|s|m|h|d)?")


def find_haproxy() -> str | None:
    """The ``haproxy`` binary: on the PATH, else Debian's; None when neither is there."""
    found = shutil.which("haproxy")
    if found:
        return found
    return HAPROXY if os.access(HAPROXY, os.X_OK) else None


@dataclass(frozen=True)
class Node:
    """One gateway node as the balancer sees it."""

    name: str  # the server's name in HAProxy (its logs, its admin socket)
    ports: Mapping[str, int]  # bank name -> the node's listening port for that bank
    health_port: int  # the node's ``[console] metrics_listen`` port: ``GET /healthz``
    host: str = "127.0.0.1"


def _port(what: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError(f"{what}: expected a TCP port 1-65535, got {value!r}")
    return value


def _name(what: str, value) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"{what}: expected a name of letters, digits, '_', '.' and '-'"
                         f" (at most 64), got {value!r}")
    return value


def _check_args(frontends: Mapping[str, int], nodes: Sequence[Node], balance: str,
                idle: str) -> None:
    if not frontends:
        raise ValueError("frontends: expected at least one bank")
    if not nodes:
        raise ValueError("nodes: expected at least one node")
    if balance not in BALANCES:
        raise ValueError(f"balance: expected one of {', '.join(BALANCES)}, got {balance!r}")
    if not _DURATION.fullmatch(idle):
        raise ValueError(f"idle: expected an HAProxy duration like '5m', got {idle!r}")
    for bank, port in frontends.items():
        _port(f"frontends[{bank!r}]", port)
        _name("frontends", bank)
    seen = set()
    for i, node in enumerate(nodes):
        _name(f"nodes[{i}].name", node.name)
        if node.name in seen:
            raise ValueError(f"nodes[{i}].name: {node.name!r} twice")
        seen.add(node.name)
        _port(f"nodes[{i}].health_port", node.health_port)
        if not node.host or any(c.isspace() for c in node.host):
            raise ValueError(f"nodes[{i}].host: expected an address, got {node.host!r}")
        for bank in frontends:
            if bank not in node.ports:
                raise ValueError(f"nodes[{i}].ports: no port for bank {bank!r}")
            _port(f"nodes[{i}].ports[{bank!r}]", node.ports[bank])


def config(frontends: Mapping[str, int], nodes: Sequence[Node], *, bind: str = "127.0.0.1",
           admin: str | None = None, log: str | None = None, balance: str = "roundrobin",
           idle: str = "5m") -> str:
    """The HAProxy configuration for ``nodes`` behind one frontend per bank.

    ``frontends``: bank name -> the port the balancer listens on for it (on
    ``bind``).  ``admin``: the admin socket's address (a path, or
    ``ipv4@HOST:PORT``), None for none.  ``log``: where HAProxy logs each
    connection (``/dev/log local0``; ``stderr format raw local0`` under ``-db``),
    None for no log.  ``idle``: how long a quiet bank connection stays open (longer
    than the bank's echo interval and the gateway's own idle timeout).
    """
    _check_args(frontends, nodes, balance, idle)
    out = ["# HAProxy in front of bankgate nodes (docs/nodes.rst)"]
    glob = []
    if log:
        glob.append(f"    log {log}")
    if admin:
        glob.append(f"    stats socket {admin} mode 600 level admin")
    if glob:
        out += ["global", *glob]
    out += ["", "defaults", "    mode tcp"]
    if log:
        out += ["    log global", "    option tcplog"]
    out += [
        "    timeout connect 1s",
        f"    timeout client {idle}",
        f"    timeout server {idle}",
        "    timeout check 1s",
        "    retries 3",
        "    option redispatch 1",
    ]
    for bank, port in frontends.items():
        out += ["", f"frontend {bank}", f"    bind {bind}:{port}",
                f"    default_backend {bank}-nodes",
                "", f"backend {bank}-nodes", f"    balance {balance}",
                "    option httpchk GET /healthz", "    http-check expect status 200"]
        out += [f"    server {n.name} {n.host}:{n.ports[bank]} check port {n.health_port}"
                f" {CHECK}" for n in nodes]
    return "\n".join(out) + "\n"


class HAProxyProcess:
    """``haproxy -db`` in front of ``nodes``: one frontend per bank on a free
    loopback port (``ports``), its admin socket on another, its log in ``folder``."""

    def __init__(self, folder: Path, banks: Sequence[str], nodes: Sequence[Node], *,
                 binary: str | None = None, balance: str = "roundrobin",
                 start_timeout: float = 10.0, stop_timeout: float = 10.0):
        self.folder = Path(folder)
        self.binary = binary or find_haproxy()
        if self.binary is None:
            raise FileNotFoundError(f"haproxy is not installed (expected {HAPROXY}:"
                                    " apt-get install haproxy)")
        self.ports = {bank: free_port() for bank in banks}
        self.admin_port = free_port()
        self.nodes = list(nodes)
        self.text = config(self.ports, self.nodes, admin=f"ipv4@127.0.0.1:{self.admin_port}",
                           log="stderr format raw local0", balance=balance)
        self.path = self.folder / "haproxy.cfg"
        self.log = self.folder / "haproxy.log"
        self.start_timeout, self.stop_timeout = start_timeout, stop_timeout
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path.write_text(self.text)
        check = subprocess.run([self.binary, "-c", "-q", "-f", str(self.path)],
                               capture_output=True, text=True, timeout=self.start_timeout)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused {self.path}:\n{check.stdout}{check.stderr}")
        with self.log.open("wb") as log:  # the child keeps its own copy of the file
            self.proc = subprocess.Popen([self.binary, "-db", "-f", str(self.path)],
                                         stdout=log, stderr=subprocess.STDOUT)
        self._wait(lambda: all(_accepts(p) for p in self.ports.values()),
                   "frontends not accepting")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    # -- the servers' states (admin socket) -------------------------------------------

    def stats(self) -> list[dict]:
        """``show stat``: one dict per frontend, backend and server (``pxname``,
        ``svname``, ``status``, ``check_status``, ``lbtot``, ...)."""
        with socket.create_connection(("127.0.0.1", self.admin_port), timeout=5) as s:
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        text = data.decode("utf-8", "replace").lstrip("# ")
        return [row for row in csv.DictReader(io.StringIO(text)) if row.get("pxname")]

    def servers(self) -> dict[tuple[str, str], dict]:
        """(backend, server) -> its ``show stat`` row."""
        return {(r["pxname"], r["svname"]): r for r in self.stats()
                if r["svname"] not in ("FRONTEND", "BACKEND")}

    def wait_servers(self, want: Callable[[dict[tuple[str, str], dict]], bool],
                     what: str, timeout: float = 10.0) -> dict:
        """Wait (bounded) until ``want(self.servers())`` holds; returns the states."""
        seen: dict = {}

        def holds() -> bool:
            seen.clear()
            seen.update(self.servers())
            return want(seen)

        self._wait(holds, what, timeout, lambda: _states(seen))
        return seen

    def wait_node(self, node: str, up: bool, timeout: float = 10.0) -> dict:
        """Wait until every bank's backend has ``node`` UP with its last check passed
        (``up``), or DOWN (not ``up``)."""
        def state(servers) -> bool:
            mine = [r for (_, sv), r in servers.items() if sv == node]
            if up:
                return bool(mine) and all(r["status"] == "UP" and r["check_status"] == "L7OK"
                                          for r in mine)
            return bool(mine) and all(r["status"].startswith("DOWN") for r in mine)

        return self.wait_servers(state, f"node {node} not {'up' if up else 'down'}", timeout)

    # -- helpers ----------------------------------------------------------------------------

    def _wait(self, ready: Callable[[], bool], what: str, timeout: float | None = None,
              detail: Callable[[], str] = str) -> None:
        timeout = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:  # an event wait, bounded
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeError(f"haproxy exited ({code}):\n{self.tail()}")
            try:
                if ready():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"haproxy: {what} after {timeout:g} s {detail()}\n"
                                   f"{self.tail()}")
            time.sleep(0.05)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _states(servers: dict) -> str:
    return "; ".join(f"{px}/{sv} {r['status']} {r['check_status']}"
                     for (px, sv), r in sorted(servers.items()))
