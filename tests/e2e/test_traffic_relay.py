"""Connect attempts and half-close through a real node: max_connect_attempts over dead
backends, no retry once a client's bytes went to a backend, and half_close_timeout both
ways."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter
from contextlib import ExitStack

from tests.e2e.conftest import create_route
from tests.e2e.peers import (
    Backend,
    Client,
    Handler,
    Tagged,
    attach,
    backend_of,
    elapsed_since,
    log_count,
    logged_clients,
    patch_route,
    refusing_port,
    served_by,
)
from tests.helpers import Node

HALF_CLOSE = 0.5


def test_max_connect_attempts(node: Node) -> None:
    # Passive health off: the dead backends must stay candidates for the whole test.
    route = create_route(node, "att", balance="round_robin", max_connect_attempts=2, passive_fall=0)
    with ExitStack() as stack:
        for _ in range(5):
            attach(node, "att", 1, stack.enter_context(refusing_port()))
        live = stack.enter_context(Backend(Tagged("live")))
        attach(node, "att", 1, live.port)

        # Round robin walks 1 2 | 3 4 | 5 6 | 1 2 ...: one client in three reaches 6.
        two = Counter(served_by(route["port"]) for _ in range(30))
        print("5 dead + 1 live, 2 attempts, 30 clients:", dict(two))
        assert two == {"live": 10, None: 20}
        logged_clients(node, "att", 30)
        assert log_count(node, "connect failed app=att ") == 50  # 2 per client, less 10

        patch_route(node, "att", 1, max_connect_attempts=6)
        six = Counter(served_by(route["port"]) for _ in range(30))
        print("6 attempts, 30 clients:", dict(six))
        assert six == {"live": 30}
        for backend in range(1, 7):
            assert backend_of(node, "att", 1, backend)["health"] == "unknown"


def read_then_reset(seen: list[bytes]) -> Handler:
    def handle(conn: socket.socket) -> None:
        seen.append(conn.recv(4096))
        # Linger 0: close() sends a reset, not a FIN.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    return handle


def test_no_retry_once_bytes_were_forwarded(node: Node) -> None:
    port = create_route(node, "once", balance="round_robin", max_connect_attempts=3)["port"]
    seen: list[bytes] = []
    other = Tagged("other")
    with Backend(read_then_reset(seen)) as resetter, Backend(other) as second:
        attach(node, "once", 1, resetter.port)
        attach(node, "once", 1, second.port)
        outcomes = []
        for i in range(6):
            with Client(port) as client:
                try:
                    outcomes.append(client.ask(f"secret-{i}"))
                except ConnectionResetError:
                    outcomes.append("reset")
        print("accept, read, reset vs echo, alternating:", outcomes)
        assert outcomes == ["reset", "other"] * 3
        assert seen == [b"secret-0\n", b"secret-2\n", b"secret-4\n"]
        # Not one byte of a reset client reached the other backend.
        assert other.lines == [b"secret-1", b"secret-3", b"secret-5"]


def test_half_close_timeout_client_side(node: Node) -> None:
    """The client sends its FIN; the backend answers once, then neither sends nor closes."""
    port = create_route(node, "hc", half_close_timeout=HALF_CLOSE)["port"]
    release = threading.Event()

    def answer_after_eof_then_hang(conn: socket.socket) -> None:
        while conn.recv(4096):
            pass
        conn.sendall(b"after your FIN\n")
        release.wait(10)

    with Backend(answer_after_eof_then_hang) as backend:
        attach(node, "hc", 1, backend.port)
        try:
            with Client(port) as client:
                client.sock.sendall(b"request\n")
                client.sock.shutdown(socket.SHUT_WR)
                started = time.monotonic()
                # The direction still open keeps flowing.
                assert client.sock.recv(64) == b"after your FIN\n"
                assert client.closed()
                closed_after = elapsed_since(started)
        finally:
            release.set()
    print(f"client half-closed: closed after {closed_after:.3f}s (timeout {HALF_CLOSE}s)")
    assert HALF_CLOSE - 0.05 <= closed_after < HALF_CLOSE + 0.5
    node.wait_for_line("end=half_close_timeout", timeout=5)


def test_half_close_timeout_backend_side(node: Node) -> None:
    """The backend sends its FIN; the client neither sends nor closes."""
    port = create_route(node, "hb", half_close_timeout=HALF_CLOSE)["port"]
    done = threading.Event()
    timing: list[float] = []

    def say_bye_and_half_close(conn: socket.socket) -> None:
        conn.sendall(b"bye\n")
        conn.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        try:
            while conn.recv(4096):
                pass
        except ConnectionResetError:
            pass
        timing.append(elapsed_since(started))
        done.set()

    with Backend(say_bye_and_half_close) as backend:
        attach(node, "hb", 1, backend.port)
        with Client(port) as client:
            assert client.sock.recv(64) == b"bye\n"
            assert client.sock.recv(64) == b""  # the FIN, forwarded
            assert done.wait(5), "backend side never closed"
    print(f"backend half-closed: closed after {timing[0]:.3f}s (timeout {HALF_CLOSE}s)")
    assert HALF_CLOSE - 0.05 <= timing[0] < HALF_CLOSE + 0.5
