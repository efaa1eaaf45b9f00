"""Backend choice through the real server: a dead backend is skipped, and a route with no
backend (or only dead ones) closes its clients at once."""

from __future__ import annotations

import time

from tests.e2e.conftest import add_backend, create_route
from tests.e2e.peers import Backend, closed_by_peer, connect, echo, refusing_port, round_trip
from tests.helpers import Node

AT_ONCE = 1.0  # seconds; the connect timeout (5 s) is what "not at once" would look like


def closed_within(port: int, send: bytes = b"") -> float:
    """Seconds until restcp closes a fresh client (EOF or reset)."""
    start = time.monotonic()
    with connect(port, timeout=10) as sock:
        if send:
            sock.sendall(send)
        assert closed_by_peer(sock)
    return time.monotonic() - start


def test_dead_backends_are_skipped(node: Node) -> None:
    with (
        Backend(echo) as live,
        refusing_port() as dead1,
        refusing_port() as dead2,
        refusing_port() as dead3,
    ):
        # Round robin: every client meets the dead backend first and must fail over.
        rr = create_route(node, "rr", balance="round_robin")["port"]
        add_backend(node, "rr", 1, dead1)
        add_backend(node, "rr", 1, live.port)
        # Random: three dead to one live, so most clients fail over more than once.
        # Enough attempts to walk past all three dead ones (the default is 3).
        rnd = create_route(node, "rnd", max_connect_attempts=4)["port"]
        for port in (dead1, dead2, live.port, dead3):
            add_backend(node, "rnd", 1, port)

        for i in range(10):
            message = f"client {i}\n".encode()
            assert round_trip(rr, message) == message
            assert round_trip(rnd, message) == message
        assert live.accepted == 20
        node.wait_for_line(f"connect failed app=rr route=1 backend=1 addr=127.0.0.1:{dead1}")


def test_no_backend_closes_the_client_at_once(node: Node) -> None:
    with refusing_port() as dead1, refusing_port() as dead2:
        empty = create_route(node, "empty")["port"]
        gone = create_route(node, "gone")["port"]
        add_backend(node, "gone", 1, dead1)
        add_backend(node, "gone", 1, dead2)
        for port in (empty, gone):
            assert closed_within(port) < AT_ONCE
            assert closed_within(port, send=b"hello?\n") < AT_ONCE

        # A backend removed live: new clients of the route now find none.
        with Backend(echo) as live:
            ok = create_route(node, "ok")["port"]
            add_backend(node, "ok", 1, live.port)
            assert round_trip(ok, b"up\n") == b"up\n"
            assert node.call("DELETE", "/apps/ok/routes/1/backends/1").status == 204
            assert closed_within(ok) < AT_ONCE
            assert live.accepted == 1
