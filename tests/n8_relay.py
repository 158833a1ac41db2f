"""A TCP relay between the gateway and N8's MariaDB, for the N8 fault tests.

    python tests/n8_relay.py LISTEN_PORT TARGET_HOST TARGET_PORT

Relays bytes both ways, one pair of threads per connection, and prints
``relay: listening on PORT`` once it accepts.  It stands for the network to N8:
killing the process cuts every connection through it at once, as a failed link
or a restarted proxy does.

``SIGUSR1`` arms the one fault a proxy killed at random would hit only by chance:
the next ``COMMIT`` a client sends (MySQL's ``COM_QUERY``) is not passed on, and
the relay dies at once (``os._exit``: the kernel closes every socket).  N8 then
rolls that transaction back, while the gateway has already committed its own --
the window between the two commits that the outbox and the repair exist for.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

COMMIT = b"\x03COMMIT"  # COM_QUERY "COMMIT", after the 4-byte packet header
armed = threading.Event()


def pump(src: socket.socket, dst: socket.socket, watch: bool) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if watch and armed.is_set() and data[4:4 + len(COMMIT)] == COMMIT:
                print("relay: COMMIT cut, dying", flush=True)
                os._exit(0)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(listen_port: int, host: str, port: int) -> None:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen_port))
    server.listen(64)
    print(f"relay: listening on {listen_port}", flush=True)
    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection((host, port), timeout=10)
            upstream.settimeout(None)
        except OSError:
            client.close()
            continue
        threading.Thread(target=pump, args=(client, upstream, True), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client, False), daemon=True).start()


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, lambda *_: armed.set())
    serve(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
