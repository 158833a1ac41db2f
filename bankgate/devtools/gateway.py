"""``twistd bankgate`` in a subprocess, for the end-to-end tests and benchmarks.

Starts the gateway from this source tree (so the in-tree twistd plugin is
found, installed or not), waits until every named port accepts a connection
(bounded; the only wait is on that event), and stops it again.  Its log goes
to a file, whose tail the errors quote.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: ``python -c RUNNER CONFIG [twistd options...]``
RUNNER = (
    "import sys; from twisted.scripts.twistd import run; "
    "sys.argv = ['twistd', '-n', '--pidfile=', *sys.argv[2:], 'bankgate', "
    "'--config', sys.argv[1]]; run()"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatewayProcess:
    def __init__(self, config: Path, ports: list[int], log: Path, *, cwd: Path = ROOT,
                 runner: str = RUNNER, twistd_args: tuple[str, ...] = (),
                 env: dict | None = None, start_timeout: float = 30.0,
                 stop_timeout: float = 10.0):
        self.config, self.ports, self.log = config, list(ports), log
        self.cwd, self.runner, self.twistd_args = cwd, runner, tuple(twistd_args)
        self.extra_env = dict(env or {})
        self.start_timeout, self.stop_timeout = start_timeout, stop_timeout
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict:
        env = dict(os.environ)
        env.update(self.extra_env)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (self.extra_env.get("PYTHONPATH"), str(ROOT),
                        os.environ.get("PYTHONPATH")) if p)
        return env

    def start(self) -> None:
        with self.log.open("wb") as log:  # the child keeps its own copy of the file
            self.proc = subprocess.Popen(
                [sys.executable, "-c", self.runner, str(self.config), *self.twistd_args],
                cwd=self.cwd, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self.start_timeout
        waiting = set(self.ports)
        while waiting:  # an event wait: each listener accepting, bounded
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited ({self.proc.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway not listening after {self.start_timeout:g} s:\n"
                                   f"{self.tail()}")
            for port in list(waiting):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    waiting.discard(port)
                except OSError:
                    time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"
